//! Environment overrides by upstream's mechanical rule (kelseyhightower/envconfig
//! over each component's JSON config): `CLUSTER_<FIELD>` for the `cluster` section,
//! `CLUSTER_<COMPONENT>_<FIELD>` for the others, where FIELD is the JSON key
//! upper-cased without underscores (`monitor_ping_interval` →
//! `CLUSTER_MONITORPINGINTERVAL`, `api.restapi.basic_auth_credentials` →
//! `CLUSTER_RESTAPI_BASICAUTHCREDENTIALS`). Values use envconfig's syntax: lists
//! `a,b`, maps `k:v,k2:v2`, booleans as Go's `strconv.ParseBool`, durations as Go
//! duration strings.
//!
//! Overrides are applied to the JSON tree before it is typed, so every key of
//! upstream's configs can be set, including those this implementation keeps but
//! does not use.

use serde_json::{Map, Value};

use super::ConfigError;

/// How envconfig reads a field's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Taken as is.
    Str,
    /// A Go duration string, checked here.
    Duration,
    /// `strconv.ParseBool`.
    Bool,
    /// A (signed) integer.
    Int,
    /// A floating-point number.
    Float,
    /// Comma-separated items.
    List,
    /// `k:v,k2:v2`.
    Map,
    /// `k:v,k2:v2`, each value a one-item list (restapi `headers`).
    MapList,
}

/// One component's configuration: where it sits in `service.json` and its
/// envconfig prefix.
pub struct Section {
    /// JSON path of the section, e.g. `["api", "restapi"]`.
    pub path: &'static [&'static str],
    /// envconfig prefix, e.g. `CLUSTER_RESTAPI`.
    pub prefix: &'static str,
    /// Whether an absent section is created when one of its variables is set
    /// (sections this implementation runs); other sections are only changed
    /// when written in the file.
    pub create: bool,
    /// JSON keys and how their values are read.
    pub fields: &'static [(&'static str, Kind)],
}

use Kind::*;

const API_COMMON: &[(&str, Kind)] = &[
    ("http_listen_multiaddress", List),
    ("ssl_cert_file", Str),
    ("ssl_key_file", Str),
    ("read_timeout", Duration),
    ("read_header_timeout", Duration),
    ("write_timeout", Duration),
    ("idle_timeout", Duration),
    ("max_header_bytes", Int),
    ("libp2p_listen_multiaddress", List),
    ("id", Str),
    ("private_key", Str),
    ("basic_auth_credentials", Map),
    ("http_log_file", Str),
    ("headers", MapList),
    ("cors_allowed_origins", List),
    ("cors_allowed_methods", List),
    ("cors_allowed_headers", List),
    ("cors_exposed_headers", List),
    ("cors_allow_credentials", Bool),
    ("cors_max_age", Duration),
];

/// Every section upstream v1.1.x reads from the environment, with every key of
/// its JSON config (plus this implementation's own keys: `consensus.raft.datastore`,
/// the ipfshttp connector's and the proxy's `basic_auth_credentials`).
/// The datastore sections (pebble, badger, leveldb) are not listed: no
/// datastore of upstream's is used here.
pub const SECTIONS: &[Section] = &[
    Section {
        path: &["cluster"],
        prefix: "CLUSTER",
        create: true,
        fields: &[
            ("peername", Str),
            ("secret", Str),
            ("leave_on_shutdown", Bool),
            ("listen_multiaddress", List),
            ("announce_multiaddress", List),
            ("no_announce_multiaddress", List),
            ("enable_relay_hop", Bool),
            ("dial_peer_timeout", Duration),
            ("state_sync_interval", Duration),
            ("pin_recover_interval", Duration),
            ("replication_factor_min", Int),
            ("replication_factor_max", Int),
            ("monitor_ping_interval", Duration),
            ("peer_watch_interval", Duration),
            ("mdns_interval", Duration),
            ("pin_only_on_trusted_peers", Bool),
            ("pin_only_on_untrusted_peers", Bool),
            ("disable_repinning", Bool),
            ("follower_mode", Bool),
            ("peerstore_file", Str),
            ("peer_addresses", List),
        ],
    },
    Section {
        path: &["cluster", "connection_manager"],
        prefix: "CLUSTER_CONNECTIONMANAGER",
        create: false,
        fields: &[
            ("high_water", Int),
            ("low_water", Int),
            ("grace_period", Duration),
        ],
    },
    Section {
        path: &["cluster", "resource_manager"],
        prefix: "CLUSTER_RESOURCEMANAGER",
        create: false,
        fields: &[
            ("enabled", Bool),
            ("memory_limit_bytes", Int),
            ("file_descriptors_limit", Int),
        ],
    },
    Section {
        path: &["cluster", "pubsub"],
        prefix: "CLUSTER_PUBSUB",
        create: false,
        fields: &[
            ("seen_messages_ttl", Duration),
            ("heartbeat_interval", Duration),
            ("d_factor", Int),
            ("history_gossip", Int),
            ("history_length", Int),
            ("flood_publish", Bool),
        ],
    },
    Section {
        path: &["consensus", "raft"],
        prefix: "CLUSTER_RAFT",
        create: true,
        fields: &[
            ("data_folder", Str),
            ("init_peerset", List),
            ("wait_for_leader_timeout", Duration),
            ("network_timeout", Duration),
            ("commit_retries", Int),
            ("commit_retry_delay", Duration),
            ("backups_rotate", Int),
            ("datastore_namespace", Str),
            ("heartbeat_timeout", Duration),
            ("election_timeout", Duration),
            ("commit_timeout", Duration),
            ("max_append_entries", Int),
            ("trailing_logs", Int),
            ("snapshot_interval", Duration),
            ("snapshot_threshold", Int),
            ("leader_lease_timeout", Duration),
            ("datastore", Str),
        ],
    },
    // crdt is refused at start; its variables (upstream's docker-compose sets
    // CLUSTER_CRDT_TRUSTEDPEERS) must not create the section.
    Section {
        path: &["consensus", "crdt"],
        prefix: "CLUSTER_CRDT",
        create: false,
        fields: &[
            ("cluster_name", Str),
            ("trusted_peers", List),
            ("repair_interval", Duration),
            ("rebroadcast_interval", Duration),
            ("peerset_metric", Str),
            ("datastore_namespace", Str),
        ],
    },
    Section {
        path: &["consensus", "crdt", "batching"],
        prefix: "CLUSTER_CRDT_BATCHING",
        create: false,
        fields: &[
            ("max_batch_size", Int),
            ("max_batch_age", Duration),
            ("max_queue_size", Int),
        ],
    },
    Section {
        path: &["api", "restapi"],
        prefix: "CLUSTER_RESTAPI",
        create: true,
        fields: API_COMMON,
    },
    Section {
        path: &["api", "pinsvcapi"],
        prefix: "CLUSTER_PINSVCAPI",
        create: false,
        fields: API_COMMON,
    },
    Section {
        path: &["api", "ipfsproxy"],
        prefix: "CLUSTER_IPFSPROXY",
        create: true,
        fields: &[
            ("listen_multiaddress", List),
            ("node_multiaddress", Str),
            ("node_https", Bool),
            ("log_file", Str),
            ("read_timeout", Duration),
            ("read_header_timeout", Duration),
            ("write_timeout", Duration),
            ("idle_timeout", Duration),
            ("max_header_bytes", Int),
            ("extract_headers_extra", List),
            ("extract_headers_path", Str),
            ("extract_headers_ttl", Duration),
            ("basic_auth_credentials", Map),
        ],
    },
    Section {
        path: &["ipfs_connector", "ipfshttp"],
        prefix: "CLUSTER_IPFSHTTP",
        create: true,
        fields: &[
            ("node_multiaddress", Str),
            ("connect_swarms_delay", Duration),
            ("ipfs_request_timeout", Duration),
            ("pin_timeout", Duration),
            ("unpin_timeout", Duration),
            ("repogc_timeout", Duration),
            ("informer_trigger_interval", Int),
            ("unpin_disable", Bool),
            ("basic_auth_credentials", Str),
        ],
    },
    Section {
        path: &["pin_tracker", "stateless"],
        prefix: "CLUSTER_STATELESS",
        create: true,
        fields: &[
            ("max_pin_queue_size", Int),
            ("concurrent_pins", Int),
            ("priority_pin_max_age", Duration),
            ("priority_pin_max_retries", Int),
        ],
    },
    Section {
        path: &["monitor", "pubsubmon"],
        prefix: "CLUSTER_PUBSUBMON",
        create: true,
        fields: &[("check_interval", Duration)],
    },
    Section {
        path: &["allocator", "balanced"],
        prefix: "CLUSTER_BALANCED",
        create: true,
        fields: &[("allocate_by", List)],
    },
    Section {
        path: &["informer", "disk"],
        prefix: "CLUSTER_DISK",
        create: true,
        fields: &[("metric_ttl", Duration), ("metric_type", Str)],
    },
    Section {
        path: &["informer", "tags"],
        prefix: "CLUSTER_TAGS",
        create: true,
        fields: &[("metric_ttl", Duration), ("tags", Map)],
    },
    Section {
        path: &["informer", "pinqueue"],
        prefix: "CLUSTER_PINQUEUE",
        create: true,
        fields: &[("metric_ttl", Duration), ("weight_bucket_size", Int)],
    },
    Section {
        path: &["informer", "numpin"],
        prefix: "CLUSTER_NUMPIN",
        create: false,
        fields: &[("metric_ttl", Duration)],
    },
    Section {
        path: &["observations", "metrics"],
        prefix: "CLUSTER_METRICS",
        create: true,
        fields: &[
            ("enable_stats", Bool),
            ("prometheus_endpoint", Str),
            ("reporting_interval", Duration),
        ],
    },
    Section {
        path: &["observations", "tracing"],
        prefix: "CLUSTER_TRACING",
        create: false,
        fields: &[
            ("enable_tracing", Bool),
            ("jaeger_agent_endpoint", Str),
            ("sampling_prob", Float),
            ("service_name", Str),
        ],
    },
];

/// The variable of `key` in a section with `prefix`: envconfig upper-cases the Go
/// field name, which is the JSON key in CamelCase.
pub fn var_name(prefix: &str, key: &str) -> String {
    format!("{prefix}_{}", key.replace('_', "").to_ascii_uppercase())
}

/// Parses `raw` as envconfig would for a field of `kind`.
pub fn parse_value(var: &str, kind: Kind, raw: &str) -> Result<Value, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        key: var.into(),
        path: "environment".into(),
        reason,
    };
    let pairs = |raw: &str| -> Result<Vec<(String, String)>, ConfigError> {
        raw.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                p.split_once(':')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| invalid(format!("invalid map item {p:?}: expected key:value")))
            })
            .collect()
    };
    Ok(match kind {
        Str => Value::String(raw.to_string()),
        Duration => {
            super::parse_duration(raw.trim()).map_err(invalid)?;
            Value::String(raw.trim().to_string())
        }
        Bool => Value::Bool(match raw.trim() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
            "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
            other => return Err(invalid(format!("not a boolean: {other:?}"))),
        }),
        Int => Value::from(
            parse_int(raw.trim())
                .ok_or_else(|| invalid(format!("not an integer: {:?}", raw.trim())))?,
        ),
        Float => {
            let f: f64 = raw
                .trim()
                .parse()
                .map_err(|_| invalid(format!("not a number: {:?}", raw.trim())))?;
            serde_json::Number::from_f64(f)
                .map(Value::Number)
                .ok_or_else(|| invalid(format!("not a finite number: {f}")))?
        }
        List => Value::Array(
            super::comma_list(raw)
                .into_iter()
                .map(Value::String)
                .collect(),
        ),
        Map => Value::Object(
            pairs(raw)?
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        ),
        MapList => Value::Object(
            pairs(raw)?
                .into_iter()
                .map(|(k, v)| (k, Value::Array(vec![Value::String(v)])))
                .collect(),
        ),
    })
}

/// Go's `strconv.ParseInt(s, 0, 64)`: decimal, or `0x`/`0o`/`0b` prefixed.
fn parse_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let body = body.replace('_', "");
    let lower = body.to_ascii_lowercase();
    let v = if let Some(h) = lower.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()?
    } else if let Some(o) = lower.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()?
    } else if let Some(b) = lower.strip_prefix("0b") {
        i64::from_str_radix(b, 2).ok()?
    } else {
        body.parse().ok()?
    };
    Some(if neg { -v } else { v })
}

/// Applies every set variable of [`SECTIONS`] to the JSON tree of `service.json`.
pub fn apply(root: &mut Value, get: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    for section in SECTIONS {
        let mut set = Vec::new();
        for (key, kind) in section.fields {
            let var = var_name(section.prefix, key);
            if let Some(raw) = get(&var) {
                set.push((*key, parse_value(&var, *kind, &raw)?));
            }
        }
        if set.is_empty() {
            continue;
        }
        let Some(obj) = section_mut(root, section.path, section.create) else {
            continue;
        };
        for (key, value) in set {
            obj.insert(key.to_string(), value);
        }
    }
    Ok(())
}

/// The object at `path`, created (as `{}`, which the typed config fills with
/// defaults) when `create`; `None` when absent and not created.
fn section_mut<'a>(
    root: &'a mut Value,
    path: &[&str],
    create: bool,
) -> Option<&'a mut Map<String, Value>> {
    let mut cur = root;
    for key in path {
        let obj = cur.as_object_mut()?;
        let present = obj.get(*key).is_some_and(Value::is_object);
        if !present {
            if !create {
                return None;
            }
            obj.insert(key.to_string(), Value::Object(Map::new()));
        }
        cur = obj.get_mut(*key)?;
    }
    cur.as_object_mut()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_envconfig() {
        assert_eq!(
            var_name("CLUSTER", "monitor_ping_interval"),
            "CLUSTER_MONITORPINGINTERVAL"
        );
        assert_eq!(
            var_name("CLUSTER_RESTAPI", "basic_auth_credentials"),
            "CLUSTER_RESTAPI_BASICAUTHCREDENTIALS"
        );
        assert_eq!(
            var_name("CLUSTER_IPFSHTTP", "ipfs_request_timeout"),
            "CLUSTER_IPFSHTTP_IPFSREQUESTTIMEOUT"
        );
    }

    #[test]
    fn values_parse_as_envconfig() {
        let p = |k, s| parse_value("X", k, s);
        assert_eq!(p(Bool, "T").unwrap(), Value::Bool(true));
        assert!(p(Bool, "yes").is_err());
        assert_eq!(p(Int, "0x10").unwrap(), Value::from(16));
        assert_eq!(p(Int, "-1").unwrap(), Value::from(-1));
        assert!(p(Int, "ten").is_err());
        assert_eq!(
            p(Map, "a:b,c:d:e").unwrap(),
            serde_json::json!({"a": "b", "c": "d:e"})
        );
        let e = p(Map, "a:b,c").unwrap_err().to_string();
        assert!(e.contains("X") && e.contains("invalid map item"), "{e}");
        assert_eq!(p(List, "x, y,").unwrap(), serde_json::json!(["x", "y"]));
        assert!(p(Duration, "15 seconds").is_err());
        assert_eq!(p(Duration, "1m30s").unwrap(), Value::from("1m30s"));
    }
}
