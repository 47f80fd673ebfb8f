//! `service.json`: the peer's configuration, compatible in shape with upstream
//! ipfs-cluster (same sections, keys and Go-style durations), plus `identity.json`
//! and the config folder's location and execution lock.

mod duration;
pub mod env;
mod identity;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use duration::{GoDuration, format as format_duration, parse as parse_duration};
pub use identity::{IDENTITY_FILE, Identity};

use crate::multiaddr::TcpMultiaddr;

/// The config file name inside the config folder.
pub const CONFIG_FILE: &str = "service.json";
/// The execution lock file inside the config folder.
pub const LOCK_FILE: &str = "cluster.lock";
/// The folder (inside the config folder) holding Raft's log and the state.
pub const RAFT_DIR: &str = "raft";
/// The file (inside the config folder) keeping known peer addresses.
pub const PEERSTORE_FILE: &str = "peerstore";

/// Why the configuration could not be read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not valid JSON or a key has the wrong type.
    #[error("{path}: key {key:?}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// Dotted path of the offending key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A key has a value that cannot be used.
    #[error("{path}: key {key:?}: {reason}")]
    Invalid {
        /// Dotted path of the offending key.
        key: String,
        /// The file (or environment variable).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Another daemon holds the config folder.
    #[error(
        "another ipfs-cluster-service is running with the config folder {0} (lock held on {LOCK_FILE})"
    )]
    Locked(String),
}

impl ConfigError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        ConfigError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

fn from_json_slice<T: serde::de::DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
) -> Result<T, ConfigError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::Parse {
            path: path.display().to_string(),
            key: if key == "." { "(root)".into() } else { key },
            reason: e.into_inner().to_string(),
        }
    })
}

fn from_value<T: serde::de::DeserializeOwned>(
    path: &Path,
    tree: serde_json::Value,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(tree).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::Parse {
            path: path.display().to_string(),
            key: if key == "." { "(root)".into() } else { key },
            reason: e.into_inner().to_string(),
        }
    })
}

/// Upstream's default consensus, crdt, has no implementation here: a config
/// holding only its section would start a different, empty cluster, so it is
/// refused with the way over. Both sections present is refused as upstream does.
fn check_consensus(tree: &serde_json::Value, path: &Path) -> Result<(), ConfigError> {
    let Some(consensus) = tree.get("consensus").and_then(|c| c.as_object()) else {
        return Ok(());
    };
    let (raft, crdt) = (
        consensus.contains_key("raft"),
        consensus.contains_key("crdt"),
    );
    let reason = match (raft, crdt) {
        (false, true) => {
            "this peer was configured for the crdt consensus, which this implementation does \
             not provide (it runs raft). To move the cluster's pinset over: with the Go peer \
             (stopped), run `ipfs-cluster-service state export -f pins.json`; replace the \
             `crdt` section of service.json with a `raft` one (`\"consensus\": {\"raft\": {}}` \
             takes the defaults; set `init_peerset` to the other peers' IDs), then run \
             `ipfs-cluster-service state import pins.json` here on every peer before starting"
        }
        (true, true) => "both raft and crdt sections are present: keep only `raft`",
        _ => return Ok(()),
    };
    Err(ConfigError::Invalid {
        key: "consensus.crdt".into(),
        path: path.display().to_string(),
        reason: reason.into(),
    })
}

/// Upstream writes `""` for "no file".
fn empty_path_is_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(Option::<String>::deserialize(d)?
        .filter(|s| !s.trim().is_empty())
        .map(PathBuf::from))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| ConfigError::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.write_all(b"\n"))
        .and_then(|_| f.sync_all())
        .map_err(|e| ConfigError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ConfigError::io(path, e))
}

/// One multiaddr or a list of them; upstream accepts both spellings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Multiaddrs(pub Vec<String>);

impl Serialize for Multiaddrs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Multiaddrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => Multiaddrs(vec![s]),
            OneOrMany::Many(v) => Multiaddrs(v),
        })
    }
}

impl Multiaddrs {
    fn one(s: &str) -> Self {
        Multiaddrs(vec![s.to_string()])
    }
}

/// The `cluster` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// Human name of this peer (defaults to the host name).
    pub peername: String,
    /// 32-byte hex secret keying the private network.
    pub secret: String,
    /// Remove this peer from the peerset on clean shutdown.
    pub leave_on_shutdown: bool,
    /// libp2p listen addresses.
    pub listen_multiaddress: Multiaddrs,
    /// How often the expired pins are unpinned.
    pub state_sync_interval: GoDuration,
    /// How often failed operations are retried.
    pub pin_recover_interval: GoDuration,
    /// Default minimum replication (-1: everywhere).
    pub replication_factor_min: i32,
    /// Default maximum replication (-1: everywhere).
    pub replication_factor_max: i32,
    /// Interval of the `ping` metric.
    pub monitor_ping_interval: GoDuration,
    /// Interval of peerset watching.
    pub peer_watch_interval: GoDuration,
    /// Timeout dialing other peers.
    pub dial_peer_timeout: GoDuration,
    /// Do not re-allocate the pins of peers that went down.
    pub disable_repinning: bool,
    /// Extra known peer addresses.
    pub peer_addresses: Vec<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            peername: default_peername(),
            secret: String::new(),
            leave_on_shutdown: false,
            listen_multiaddress: Multiaddrs::one("/ip4/0.0.0.0/tcp/9096"),
            state_sync_interval: GoDuration::secs(5 * 60),
            pin_recover_interval: GoDuration::secs(12 * 60),
            replication_factor_min: -1,
            replication_factor_max: -1,
            monitor_ping_interval: GoDuration::secs(15),
            peer_watch_interval: GoDuration::secs(5),
            dial_peer_timeout: GoDuration::secs(3),
            disable_repinning: true,
            peer_addresses: Vec::new(),
        }
    }
}

fn default_peername() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "ipfs-cluster-peer".into())
}

/// `consensus.raft`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RaftConfig {
    /// Peers forming the initial peerset: peer IDs (upstream's form, addresses in
    /// the `peerstore` file) or multiaddrs ending in `/p2p/<id>`.
    pub init_peerset: Vec<String>,
    /// How long a write waits for a leader.
    pub wait_for_leader_timeout: GoDuration,
    /// Timeout of Raft network operations.
    pub network_timeout: GoDuration,
    /// Retries of a failed commit.
    pub commit_retries: u32,
    /// Delay between commit retries.
    pub commit_retry_delay: GoDuration,
    /// Backups of the raft folder kept on cleanup.
    pub backups_rotate: u32,
    /// Heartbeat interval.
    pub heartbeat_timeout: GoDuration,
    /// Election timeout (lower bound; the upper bound is twice it).
    pub election_timeout: GoDuration,
    /// How often a snapshot is considered (with as much again at random, as
    /// hashicorp raft): at most one snapshot per interval however fast writes come.
    pub snapshot_interval: GoDuration,
    /// Log entries since the last snapshot that make one due at the next check.
    pub snapshot_threshold: u64,
    /// Log entries kept after a snapshot.
    pub trailing_logs: u64,
    /// The embedded store of the pinset: `fjall`, `redb` or `sled` (`init`
    /// writes it; absent, the store the raft folder holds, else fjall).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore: Option<crate::store::Backend>,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            init_peerset: Vec::new(),
            wait_for_leader_timeout: GoDuration::secs(15),
            network_timeout: GoDuration::secs(10),
            commit_retries: 1,
            commit_retry_delay: GoDuration::millis(200),
            backups_rotate: 6,
            heartbeat_timeout: GoDuration::millis(250),
            election_timeout: GoDuration::secs(1),
            snapshot_interval: GoDuration::secs(120),
            snapshot_threshold: 8192,
            trailing_logs: 10240,
            datastore: None,
        }
    }
}

impl RaftConfig {
    /// `init_peerset` with every entry as a multiaddr ending in `/p2p/<id>`.
    /// Upstream's form lists bare peer IDs, their addresses being in the
    /// `peerstore` file (`peerstore`, its text): such an entry gets the first
    /// address found there, or stays `/p2p/<id>` (dialled through addresses
    /// learnt later). The multiaddr form is kept as written.
    pub fn init_peerset_addrs(&self, peerstore: &str) -> Result<Vec<String>, ConfigError> {
        use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
        let invalid = |entry: &str, reason: String| ConfigError::Invalid {
            key: "consensus.raft.init_peerset".into(),
            path: CONFIG_FILE.into(),
            reason: format!("{entry:?}: {reason}"),
        };
        let known: Vec<(PeerId, Multiaddr)> = peerstore
            .lines()
            .filter_map(|l| l.trim().parse::<Multiaddr>().ok())
            .filter_map(|mut a| match a.pop() {
                Some(Protocol::P2p(id)) if !a.is_empty() => Some((id, a)),
                _ => None,
            })
            .collect();
        self.init_peerset
            .iter()
            .map(|entry| {
                let entry = entry.trim();
                if entry.starts_with('/') {
                    let mut a: Multiaddr =
                        entry.parse().map_err(|e| invalid(entry, format!("{e}")))?;
                    return match a.pop() {
                        Some(Protocol::P2p(_)) => Ok(entry.to_string()),
                        _ => Err(invalid(
                            entry,
                            "a multiaddr must end in /p2p/<peer id>".into(),
                        )),
                    };
                }
                let id: PeerId = entry.parse().map_err(|e| {
                    invalid(entry, format!("neither a peer ID nor a multiaddr: {e}"))
                })?;
                Ok(match known.iter().find(|(p, _)| *p == id) {
                    Some((_, addr)) => format!("{addr}/p2p/{id}"),
                    None => format!("/p2p/{id}"),
                })
            })
            .collect()
    }
}

/// The `consensus` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsensusConfig {
    /// Raft, the only consensus implemented.
    pub raft: RaftConfig,
}

/// `api.ipfsproxy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyConfig {
    /// Where the proxy listens.
    pub listen_multiaddress: Multiaddrs,
    /// The IPFS daemon behind it.
    pub node_multiaddress: String,
    /// Time to read request headers.
    pub read_header_timeout: GoDuration,
    /// Keep-alive idle timeout.
    pub idle_timeout: GoDuration,
    /// Upper bound on request header size (at least 4096).
    pub max_header_bytes: usize,
    /// Users and passwords; `null` disables auth (upstream's proxy has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth_credentials: Option<BTreeMap<String, String>>,
    /// Daemon headers copied onto intercepted answers, besides
    /// `Access-Control-Expose-Headers`.
    pub extract_headers_extra: Vec<String>,
    /// The daemon call whose answer the headers are taken from.
    pub extract_headers_path: String,
    /// How long extracted headers are reused (0: forever).
    pub extract_headers_ttl: GoDuration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen_multiaddress: Multiaddrs::one("/ip4/127.0.0.1/tcp/9095"),
            node_multiaddress: "/ip4/127.0.0.1/tcp/5001".into(),
            read_header_timeout: GoDuration::secs(5),
            idle_timeout: GoDuration::secs(60),
            max_header_bytes: 4096,
            basic_auth_credentials: None,
            extract_headers_extra: Vec::new(),
            extract_headers_path: "/api/v0/version".into(),
            extract_headers_ttl: GoDuration::secs(5 * 60),
        }
    }
}

/// `api.restapi`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RestApiConfig {
    /// Where the REST API listens.
    pub http_listen_multiaddress: Multiaddrs,
    /// Time to read request headers.
    pub read_header_timeout: GoDuration,
    /// Keep-alive idle timeout.
    pub idle_timeout: GoDuration,
    /// Upper bound on request header size.
    pub max_header_bytes: usize,
    /// Users and passwords; `null` disables auth.
    pub basic_auth_credentials: Option<BTreeMap<String, String>>,
    /// TLS certificate (PEM); relative paths are resolved against the config
    /// folder when loaded. With `ssl_key_file`, the API serves HTTPS.
    #[serde(
        default,
        deserialize_with = "empty_path_is_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub ssl_cert_file: Option<PathBuf>,
    /// TLS private key (PEM) of `ssl_cert_file`, resolved the same way.
    #[serde(
        default,
        deserialize_with = "empty_path_is_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub ssl_key_file: Option<PathBuf>,
    /// Origins browsers may call from (`*`: any).
    pub cors_allowed_origins: Vec<String>,
    /// Methods browsers may use.
    pub cors_allowed_methods: Vec<String>,
    /// Request headers browsers may send (`Origin` always; `*`: any).
    pub cors_allowed_headers: Vec<String>,
    /// Response headers browsers may read.
    pub cors_exposed_headers: Vec<String>,
    /// Whether browsers may send credentials.
    pub cors_allow_credentials: bool,
    /// How long browsers may cache a preflight answer (0: not said).
    pub cors_max_age: GoDuration,
}

impl Default for RestApiConfig {
    fn default() -> Self {
        RestApiConfig {
            http_listen_multiaddress: Multiaddrs::one("/ip4/127.0.0.1/tcp/9094"),
            read_header_timeout: GoDuration::secs(5),
            idle_timeout: GoDuration::secs(120),
            max_header_bytes: 4096,
            basic_auth_credentials: None,
            ssl_cert_file: None,
            ssl_key_file: None,
            // Upstream's (rs/cors) defaults.
            cors_allowed_origins: vec!["*".into()],
            cors_allowed_methods: vec!["GET".into()],
            cors_allowed_headers: Vec::new(),
            cors_exposed_headers: [
                "Content-Type",
                "X-Stream-Output",
                "X-Chunked-Output",
                "X-Content-Length",
            ]
            .map(String::from)
            .to_vec(),
            cors_allow_credentials: true,
            cors_max_age: GoDuration::secs(0),
        }
    }
}

/// `observations.metrics`: Prometheus metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsConfig {
    /// Serve metrics (also `daemon --stats`).
    pub enable_stats: bool,
    /// Where `/metrics` is served.
    pub prometheus_endpoint: String,
    /// Kept for upstream's configs: metrics are computed when scraped.
    pub reporting_interval: GoDuration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enable_stats: false,
            prometheus_endpoint: "/ip4/127.0.0.1/tcp/8888".into(),
            reporting_interval: GoDuration::secs(2),
        }
    }
}

/// The `observations` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ObservationsConfig {
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// Subsections this version does not use (`tracing`), kept as written.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// The `api` section; an absent API is not started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiConfig {
    /// The kubo-compatible proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipfsproxy: Option<ProxyConfig>,
    /// The native REST API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restapi: Option<RestApiConfig>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            ipfsproxy: Some(ProxyConfig::default()),
            restapi: Some(RestApiConfig::default()),
        }
    }
}

/// `ipfs_connector.ipfshttp`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct IpfsHttpConfig {
    /// The daemon's RPC API address.
    pub node_multiaddress: String,
    /// How long after start the daemon is connected to the other peers' daemons
    /// (0: never).
    pub connect_swarms_delay: GoDuration,
    /// Timeout of ordinary requests.
    pub ipfs_request_timeout: GoDuration,
    /// A pin fails when its progress stalls for this long.
    pub pin_timeout: GoDuration,
    /// Timeout of an unpin.
    pub unpin_timeout: GoDuration,
    /// `user:password` for a daemon (or a lower cluster's proxy) that wants HTTP
    /// Basic auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth_credentials: Option<String>,
}

impl Default for IpfsHttpConfig {
    fn default() -> Self {
        IpfsHttpConfig {
            node_multiaddress: "/ip4/127.0.0.1/tcp/5001".into(),
            connect_swarms_delay: GoDuration::secs(30),
            ipfs_request_timeout: GoDuration::secs(5 * 60),
            pin_timeout: GoDuration::secs(2 * 60),
            unpin_timeout: GoDuration::secs(3 * 3600),
            basic_auth_credentials: None,
        }
    }
}

/// The `ipfs_connector` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectorConfig {
    /// The HTTP connector to a kubo RPC API.
    pub ipfshttp: IpfsHttpConfig,
}

/// `pin_tracker.stateless`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TrackerConfig {
    /// Pins run in parallel.
    pub concurrent_pins: usize,
    /// Operations that may wait in the queue.
    pub max_pin_queue_size: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            concurrent_pins: 10,
            max_pin_queue_size: 1_000_000,
        }
    }
}

/// The `pin_tracker` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PinTrackerConfig {
    /// The tracker.
    pub stateless: TrackerConfig,
}

/// `monitor.pubsubmon`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PubsubMonConfig {
    /// How often peers' ping metrics are checked for expiry.
    pub check_interval: GoDuration,
}

impl Default for PubsubMonConfig {
    fn default() -> Self {
        PubsubMonConfig {
            check_interval: GoDuration::secs(15),
        }
    }
}

/// The `monitor` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MonitorConfig {
    /// The peer monitor.
    pub pubsubmon: PubsubMonConfig,
}

/// `allocator.balanced`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BalancedConfig {
    /// Metrics that order candidates: partitionable ones (tags) first.
    pub allocate_by: Vec<String>,
}

impl Default for BalancedConfig {
    fn default() -> Self {
        BalancedConfig {
            allocate_by: vec!["tag:group".into(), "freespace".into()],
        }
    }
}

/// The `allocator` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AllocatorConfig {
    /// The balanced allocator.
    pub balanced: BalancedConfig,
}

/// `informer.disk`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DiskInformerConfig {
    /// How long its metrics are valid.
    pub metric_ttl: GoDuration,
    /// `freespace` or `reposize`.
    pub metric_type: String,
}

impl Default for DiskInformerConfig {
    fn default() -> Self {
        DiskInformerConfig {
            metric_ttl: GoDuration::secs(30),
            metric_type: "freespace".into(),
        }
    }
}

/// `informer.tags`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TagsInformerConfig {
    /// How long its metrics are valid.
    pub metric_ttl: GoDuration,
    /// Tag name → value, each sent as a `tag:<name>` metric.
    pub tags: BTreeMap<String, String>,
}

impl Default for TagsInformerConfig {
    fn default() -> Self {
        TagsInformerConfig {
            metric_ttl: GoDuration::secs(30),
            tags: BTreeMap::from([("group".to_string(), "default".to_string())]),
        }
    }
}

/// `informer.pinqueue`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PinQueueInformerConfig {
    /// How long its metrics are valid.
    pub metric_ttl: GoDuration,
    /// Queue lengths within one bucket weigh the same.
    pub weight_bucket_size: u64,
}

impl Default for PinQueueInformerConfig {
    fn default() -> Self {
        PinQueueInformerConfig {
            metric_ttl: GoDuration::secs(30),
            weight_bucket_size: 100_000,
        }
    }
}

/// The `informer` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct InformerConfig {
    /// Free space / repo size.
    pub disk: DiskInformerConfig,
    /// Tags.
    pub tags: TagsInformerConfig,
    /// Queued operations.
    pub pinqueue: PinQueueInformerConfig,
}

/// The whole of `service.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `cluster`.
    pub cluster: ClusterConfig,
    /// `consensus`.
    pub consensus: ConsensusConfig,
    /// `api`.
    pub api: ApiConfig,
    /// `ipfs_connector`.
    pub ipfs_connector: ConnectorConfig,
    /// `pin_tracker`.
    pub pin_tracker: PinTrackerConfig,
    /// `monitor`.
    pub monitor: MonitorConfig,
    /// `allocator`.
    pub allocator: AllocatorConfig,
    /// `informer`.
    pub informer: InformerConfig,
    /// `observations`.
    pub observations: ObservationsConfig,
    /// Sections this version does not use (datastore, …), kept as
    /// written so a config shared with upstream peers survives a rewrite.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl Config {
    /// A new configuration with a random secret (or `CLUSTER_SECRET`'s).
    pub fn generate() -> Self {
        let mut c = Config::default();
        c.cluster.secret = hex::encode(rand::random::<[u8; 32]>());
        c
    }

    /// Reads `service.json`, applies the environment overrides and validates.
    /// Relative TLS file paths are resolved against the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, |k| std::env::var(k).ok())
    }

    /// [`Config::load`] with the environment given by `get`.
    pub fn load_with_env(
        path: &Path,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let bytes = std::fs::read(path).map_err(|e| ConfigError::io(path, e))?;
        let mut tree: serde_json::Value = from_json_slice(path, &bytes)?;
        check_consensus(&tree, path)?;
        env::apply(&mut tree, &get)?;
        let mut c: Config = from_value(path, tree)?;
        if let Some(dir) = path.parent()
            && let Some(r) = c.api.restapi.as_mut()
        {
            for f in [&mut r.ssl_cert_file, &mut r.ssl_key_file] {
                if let Some(p) = f.as_mut()
                    && p.is_relative()
                {
                    *p = dir.join(&*p);
                }
            }
        }
        c.validate(&path.display().to_string())?;
        Ok(c)
    }

    /// Moves every listener (cluster, REST API, proxy) to a free TCP port
    /// (`init --randomports`), keeping its address.
    pub fn randomize_ports(&mut self) -> std::io::Result<()> {
        let mut lists: Vec<&mut Multiaddrs> = vec![&mut self.cluster.listen_multiaddress];
        if let Some(r) = self.api.restapi.as_mut() {
            lists.push(&mut r.http_listen_multiaddress);
        }
        if let Some(p) = self.api.ipfsproxy.as_mut() {
            lists.push(&mut p.listen_multiaddress);
        }
        for list in lists {
            for addr in list.0.iter_mut() {
                let parts: Vec<&str> = addr.split('/').collect();
                if let Some(i) = parts.iter().position(|p| *p == "tcp")
                    && i + 1 < parts.len()
                {
                    let port = std::net::TcpListener::bind("127.0.0.1:0")?
                        .local_addr()?
                        .port()
                        .to_string();
                    let mut parts: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
                    parts[i + 1] = port;
                    *addr = parts.join("/");
                }
            }
        }
        Ok(())
    }

    /// Writes `service.json` (mode 0600: it holds the secret).
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| ConfigError::io(path, e.into()))?;
        write_private(path, text.as_bytes())
    }

    /// Upstream's environment overrides (see [`env`]): every key of every
    /// section, by its `CLUSTER_…` variable.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let env_path = Path::new("environment");
        let mut tree = serde_json::to_value(&*self).map_err(|e| ConfigError::Parse {
            path: "environment".into(),
            key: "(root)".into(),
            reason: e.to_string(),
        })?;
        env::apply(&mut tree, &get)?;
        *self = from_value(env_path, tree)?;
        Ok(())
    }

    /// Checks the values that the types alone do not.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: key.into(),
            path: path.into(),
            reason,
        };
        self.secret_bytes()
            .map_err(|r| invalid("cluster.secret", r))?;
        let (min, max) = (
            self.cluster.replication_factor_min,
            self.cluster.replication_factor_max,
        );
        if let Err(r) = check_replication(min, max) {
            return Err(invalid("cluster.replication_factor_min", r));
        }
        let check_addrs = |key: &str, addrs: &Multiaddrs, listen: bool| {
            if addrs.0.is_empty() {
                return Err(invalid(key, "no address given".into()));
            }
            for a in &addrs.0 {
                let m = TcpMultiaddr::parse(a).map_err(|e| invalid(key, e.to_string()))?;
                if listen {
                    m.socket_addr().map_err(|e| invalid(key, e.to_string()))?;
                }
            }
            Ok(())
        };
        if let Some(p) = &self.api.ipfsproxy {
            check_addrs(
                "api.ipfsproxy.listen_multiaddress",
                &p.listen_multiaddress,
                true,
            )?;
            check_addrs(
                "api.ipfsproxy.node_multiaddress",
                &Multiaddrs::one(&p.node_multiaddress),
                false,
            )?;
            if p.max_header_bytes < 4096 {
                return Err(invalid(
                    "api.ipfsproxy.max_header_bytes",
                    "must be at least 4096".into(),
                ));
            }
        }
        if let Some(r) = &self.api.restapi {
            check_addrs(
                "api.restapi.http_listen_multiaddress",
                &r.http_listen_multiaddress,
                true,
            )?;
            if r.basic_auth_credentials
                .as_ref()
                .is_some_and(|m| m.is_empty())
            {
                return Err(invalid(
                    "api.restapi.basic_auth_credentials",
                    "an empty map is not allowed: use null to disable auth".into(),
                ));
            }
            if r.ssl_cert_file.is_none() != r.ssl_key_file.is_none() {
                return Err(invalid(
                    "api.restapi.ssl_cert_file",
                    "TLS needs both ssl_cert_file and ssl_key_file".into(),
                ));
            }
        }
        check_addrs(
            "ipfs_connector.ipfshttp.node_multiaddress",
            &Multiaddrs::one(&self.ipfs_connector.ipfshttp.node_multiaddress),
            false,
        )?;
        // hashicorp raft's own lower bound, which upstream enforces at start.
        if self.consensus.raft.snapshot_interval.0 < std::time::Duration::from_millis(5) {
            return Err(invalid(
                "consensus.raft.snapshot_interval",
                "must be at least 5ms".into(),
            ));
        }
        if self.pin_tracker.stateless.concurrent_pins == 0 {
            return Err(invalid(
                "pin_tracker.stateless.concurrent_pins",
                "must be at least 1".into(),
            ));
        }
        if self.pin_tracker.stateless.max_pin_queue_size == 0 {
            return Err(invalid(
                "pin_tracker.stateless.max_pin_queue_size",
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The 32 secret bytes keying the private network; `None` for an empty
    /// secret, which upstream accepts as an unprotected network.
    pub fn secret_bytes(&self) -> Result<Option<[u8; 32]>, String> {
        let raw =
            hex::decode(self.cluster.secret.trim()).map_err(|e| format!("not hexadecimal: {e}"))?;
        if raw.is_empty() {
            return Ok(None);
        }
        raw.try_into()
            .map(Some)
            .map_err(|v: Vec<u8>| format!("must be 32 bytes (64 hex digits), got {}", v.len()))
    }
}

/// Upstream's replication factor rule: -1/-1 or 0 < min <= max (0 = the default).
pub fn check_replication(min: i32, max: i32) -> Result<(), String> {
    match (min, max) {
        (-1, -1) | (0, 0) => Ok(()),
        (min, max) if min < -1 || max < -1 => Err("replication factors must be >= -1".into()),
        (-1, _) | (_, -1) => Err("replication factors must both be -1 or both be positive".into()),
        (min, max) if min > max && max != 0 => Err(format!(
            "replication_factor_min ({min}) is larger than replication_factor_max ({max})"
        )),
        _ => Ok(()),
    }
}

/// The non-empty, trimmed items of a comma-separated list.
pub fn comma_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Where the config folder is: `--config`, else `$IPFS_CLUSTER_PATH`, else `~/.ipfs-cluster`.
pub fn config_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("IPFS_CLUSTER_PATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".ipfs-cluster")
}

/// Writes a new `service.json`, `identity.json` and `peerstore`; refuses to
/// overwrite unless `force`. `peers` (multiaddrs ending in `/p2p/<id>`) seed the
/// initial Raft peerset (their IDs) and the peerstore (their addresses), as
/// upstream's `init --peers`.
pub fn init(
    dir: &Path,
    force: bool,
    peers: &[String],
    datastore: crate::store::Backend,
) -> Result<(Config, Identity), ConfigError> {
    let cfg_path = dir.join(CONFIG_FILE);
    let id_path = dir.join(IDENTITY_FILE);
    if !force && (cfg_path.exists() || id_path.exists()) {
        return Err(ConfigError::Invalid {
            key: "(file)".into(),
            path: cfg_path.display().to_string(),
            reason: "configuration already exists: use --force to overwrite".into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| ConfigError::io(dir, e))?;
    let mut cfg = Config::generate();
    // Only the secret and peer name come from the environment at init time:
    // addresses given by env stay overrides rather than being baked into the file.
    if let Ok(s) = std::env::var("CLUSTER_SECRET") {
        cfg.cluster.secret = s;
    }
    if let Ok(s) = std::env::var("CLUSTER_PEERNAME") {
        cfg.cluster.peername = s;
    }
    // Upstream's form: the IDs in init_peerset, the addresses in the peerstore.
    let mut ids = Vec::new();
    for p in peers {
        let id = p
            .parse::<libp2p::Multiaddr>()
            .ok()
            .and_then(|mut a| match a.pop() {
                Some(libp2p::multiaddr::Protocol::P2p(id)) => Some(id),
                _ => None,
            })
            .ok_or_else(|| ConfigError::Invalid {
                key: "--peers".into(),
                path: "command line".into(),
                reason: format!("{p:?} is not a multiaddr ending in /p2p/<peer id>"),
            })?;
        ids.push(id.to_string());
    }
    cfg.consensus.raft.init_peerset = ids;
    cfg.consensus.raft.datastore = Some(datastore);
    cfg.validate("environment")?;
    let identity = Identity::generate();
    cfg.save(&cfg_path)?;
    identity.save(&id_path)?;
    let peerstore = dir.join(PEERSTORE_FILE);
    let mut text = peers.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    std::fs::write(&peerstore, text).map_err(|e| ConfigError::io(&peerstore, e))?;
    Ok((cfg, identity))
}

/// Holds the config folder for one daemon; released when dropped.
#[derive(Debug)]
pub struct ExecutionLock {
    _file: File,
}

impl ExecutionLock {
    /// Takes the lock or fails at once if another process holds it.
    pub fn acquire(dir: &Path) -> Result<Self, ConfigError> {
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| ConfigError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(ExecutionLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(ConfigError::Locked(dir.display().to_string()))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(ConfigError::io(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip() {
        let c = Config::generate();
        let text = serde_json::to_string_pretty(&c).unwrap();
        assert!(text.contains("\"pin_recover_interval\": \"12m0s\""));
        assert!(text.contains("\"listen_multiaddress\": \"/ip4/127.0.0.1/tcp/9095\""));
        let back: Config = serde_json::from_str(&text).unwrap();
        back.validate("x").unwrap();
        assert_eq!(back.cluster.secret, c.cluster.secret);
        assert_eq!(back.informer.tags.tags["group"], "default");
        assert_eq!(
            back.allocator.balanced.allocate_by,
            vec!["tag:group", "freespace"]
        );
    }

    #[test]
    fn bad_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("service.json");
        std::fs::write(&p, r#"{"cluster": {"replication_factor_min": "two"}}"#).unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("cluster.replication_factor_min"), "{e}");
        std::fs::write(&p, r#"{"cluster": {"pin_recover_interval": "12 minutes"}}"#).unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("cluster.pin_recover_interval"), "{e}");
    }

    #[test]
    fn env_overrides() {
        let mut c = Config::generate();
        c.apply_env(|k| match k {
            "CLUSTER_PEERNAME" => Some("p1".into()),
            "CLUSTER_IPFSPROXY_LISTENMULTIADDRESS" => Some("/ip4/127.0.0.1/tcp/1".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.cluster.peername, "p1");
        assert_eq!(
            c.api.ipfsproxy.unwrap().listen_multiaddress.0,
            vec!["/ip4/127.0.0.1/tcp/1"]
        );
    }

    #[test]
    fn replication_rules() {
        assert!(check_replication(-1, -1).is_ok());
        assert!(check_replication(2, 3).is_ok());
        assert!(check_replication(3, 2).is_err());
        assert!(check_replication(-1, 2).is_err());
    }

    #[test]
    fn identity_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("identity.json");
        let id = Identity::generate();
        id.save(&p).unwrap();
        assert_eq!(Identity::load(&p).unwrap().peer_id, id.peer_id);
    }

    /// A sample value of `kind` for the env table test, and its JSON form.
    fn sample(
        key: &str,
        kind: env::Kind,
        current: Option<&serde_json::Value>,
    ) -> (String, serde_json::Value) {
        use env::Kind::*;
        use serde_json::json;
        match kind {
            Str if key == "datastore" => ("redb".into(), json!("redb")),
            Str => ("x-value".into(), json!("x-value")),
            Duration => ("1m30s".into(), json!("1m30s")),
            Bool => {
                let v = !current.and_then(|v| v.as_bool()).unwrap_or(false);
                (v.to_string(), json!(v))
            }
            Int => ("7".into(), json!(7)),
            Float => ("0.5".into(), json!(0.5)),
            List => (
                "/ip4/127.0.0.1/tcp/1, b".into(),
                json!(["/ip4/127.0.0.1/tcp/1", "b"]),
            ),
            Map => ("u:p,u2:p:2".into(), json!({"u": "p", "u2": "p:2"})),
            MapList => ("X-A:1".into(), json!({"X-A": ["1"]})),
        }
    }

    fn at<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a serde_json::Value> {
        path.iter().try_fold(v, |v, k| v.get(*k))
    }

    /// Every key of every typed section, with optional keys filled in.
    fn full_config() -> Config {
        let mut c = Config::generate();
        c.ipfs_connector.ipfshttp.basic_auth_credentials = Some("u:p".into());
        let p = c.api.ipfsproxy.as_mut().unwrap();
        p.basic_auth_credentials = Some(BTreeMap::from([("u".into(), "p".into())]));
        let r = c.api.restapi.as_mut().unwrap();
        r.ssl_cert_file = Some("c".into());
        r.ssl_key_file = Some("k".into());
        c
    }

    #[test]
    fn env_table_covers_every_key() {
        let typed = serde_json::to_value(full_config()).unwrap();
        let mut applied = 0;
        for section in env::SECTIONS {
            // Each typed section's keys all have their variable.
            if let Some(obj) = at(&typed, section.path).and_then(|v| v.as_object()) {
                for key in obj.keys() {
                    let nested = obj[key].is_object()
                        && env::SECTIONS
                            .iter()
                            .any(|s| s.path.last() == Some(&key.as_str()));
                    assert!(
                        nested || section.fields.iter().any(|(k, _)| k == key),
                        "{}.{key} has no environment variable",
                        section.path.join(".")
                    );
                }
            }
            for (key, kind) in section.fields {
                let var = env::var_name(section.prefix, key);
                let current = at(&typed, section.path).and_then(|s| s.get(*key));
                let (raw, want) = sample(key, *kind, current);
                let get = |k: &str| (k == var).then(|| raw.clone());
                // Upstream's keys land in the tree, also in sections kept as written.
                let mut tree = typed.clone();
                let mut parent = &mut tree;
                for k in section.path {
                    if parent.get(*k).is_none() {
                        parent[*k] = serde_json::json!({});
                    }
                    parent = &mut parent[*k];
                }
                env::apply(&mut tree, &get).unwrap();
                assert_eq!(at(&tree, section.path).unwrap()[*key], want, "{var}");
                applied += 1;
                // Keys this implementation has reach the typed config.
                if current.is_some() {
                    let mut c = full_config();
                    c.apply_env(get).unwrap_or_else(|e| panic!("{var}: {e}"));
                    let back = serde_json::to_value(&c).unwrap();
                    assert_eq!(at(&back, section.path).unwrap()[*key], want, "{var}");
                }
            }
        }
        assert!(applied >= 140, "{applied}");
        // A few by name, as upstream's docs and docker-compose spell them.
        let mut c = Config::generate();
        c.apply_env(|k| match k {
            "CLUSTER_MONITORPINGINTERVAL" => Some("2s".into()),
            "CLUSTER_RESTAPI_BASICAUTHCREDENTIALS" => Some("a:b,c:d".into()),
            "CLUSTER_RAFT_INITPEERSET" => Some("12D3KooWA,12D3KooWB".into()),
            "CLUSTER_STATELESS_CONCURRENTPINS" => Some("3".into()),
            "CLUSTER_CRDT_TRUSTEDPEERS" => Some("*".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.cluster.monitor_ping_interval, GoDuration::secs(2));
        assert_eq!(
            c.api
                .restapi
                .as_ref()
                .unwrap()
                .basic_auth_credentials
                .as_ref()
                .unwrap()["c"],
            "d"
        );
        assert_eq!(
            c.consensus.raft.init_peerset,
            vec!["12D3KooWA", "12D3KooWB"]
        );
        assert_eq!(c.pin_tracker.stateless.concurrent_pins, 3);
        // Bad values name their variable.
        let e = Config::generate()
            .apply_env(|k| (k == "CLUSTER_LEAVEONSHUTDOWN").then(|| "maybe".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("CLUSTER_LEAVEONSHUTDOWN"), "{e}");
    }

    #[test]
    fn env_creates_only_the_sections_run_here() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("service.json");
        let mut c = Config::generate();
        c.api.restapi = None;
        c.save(&p).unwrap();
        let c = Config::load_with_env(&p, |k| match k {
            "CLUSTER_RESTAPI_HTTPLISTENMULTIADDRESS" => Some("/ip4/127.0.0.1/tcp/4".into()),
            "CLUSTER_CRDT_TRUSTEDPEERS" => Some("*".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            c.api.restapi.unwrap().http_listen_multiaddress.0,
            vec!["/ip4/127.0.0.1/tcp/4"]
        );
        assert!(!c.other.contains_key("crdt"));
    }

    #[test]
    fn crdt_only_consensus_is_refused_with_the_way_over() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("service.json");
        let mut v = serde_json::to_value(Config::generate()).unwrap();
        v["consensus"] =
            serde_json::json!({"crdt": {"cluster_name": "ipfs-cluster", "trusted_peers": ["*"]}});
        std::fs::write(&p, v.to_string()).unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        for part in ["crdt", "state export", "raft", "state import"] {
            assert!(e.contains(part), "{part} missing in: {e}");
        }
        v["consensus"]["raft"] = serde_json::json!({});
        std::fs::write(&p, v.to_string()).unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("keep only"), "{e}");
        v["consensus"] = serde_json::json!({"raft": {}});
        std::fs::write(&p, v.to_string()).unwrap();
        Config::load(&p).unwrap();
    }

    #[test]
    fn init_peerset_of_peer_ids_takes_addresses_from_the_peerstore() {
        let (a, b, c) = (
            Identity::generate().peer_id,
            Identity::generate().peer_id,
            Identity::generate().peer_id,
        );
        let raft = RaftConfig {
            init_peerset: vec![
                a.to_string(),
                format!("/ip4/10.0.0.2/tcp/9096/p2p/{b}"),
                c.to_string(),
            ],
            ..Default::default()
        };
        let peerstore = format!(
            "/ip4/10.0.0.1/tcp/9096/p2p/{a}\n/dns4/x.example/tcp/9096/p2p/{a}\n/ip4/10.0.0.9/tcp/1/p2p/{b}\n"
        );
        assert_eq!(
            raft.init_peerset_addrs(&peerstore).unwrap(),
            vec![
                format!("/ip4/10.0.0.1/tcp/9096/p2p/{a}"),
                format!("/ip4/10.0.0.2/tcp/9096/p2p/{b}"),
                format!("/p2p/{c}"),
            ]
        );
        for bad in ["not-a-peer", "/ip4/10.0.0.1/tcp/9096"] {
            let raft = RaftConfig {
                init_peerset: vec![bad.into()],
                ..Default::default()
            };
            let e = raft.init_peerset_addrs("").unwrap_err().to_string();
            assert!(e.contains("init_peerset") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn init_writes_ids_in_init_peerset_and_addresses_in_the_peerstore() {
        let dir = tempfile::tempdir().unwrap();
        let other = Identity::generate().peer_id;
        let addr = format!("/ip4/127.0.0.1/tcp/9096/p2p/{other}");
        let (cfg, _) = init(
            dir.path(),
            false,
            std::slice::from_ref(&addr),
            Default::default(),
        )
        .unwrap();
        assert_eq!(cfg.consensus.raft.init_peerset, vec![other.to_string()]);
        let saved = Config::load(&dir.path().join(CONFIG_FILE)).unwrap();
        assert_eq!(saved.consensus.raft.init_peerset, vec![other.to_string()]);
        let ps = std::fs::read_to_string(dir.path().join(PEERSTORE_FILE)).unwrap();
        assert_eq!(ps.trim(), addr);
        assert!(
            init(
                dir.path(),
                true,
                &["/ip4/127.0.0.1/tcp/1".into()],
                Default::default()
            )
            .is_err()
        );
    }

    #[test]
    fn upstream_sample_configs_load_with_their_rsa_identity() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upstream");
        for name in ["basic_auth", "ssl", "ssl-basic_auth"] {
            let dir = root.join(name);
            let c = Config::load_with_env(&dir.join(CONFIG_FILE), |_| None)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let id =
                Identity::load(&dir.join(IDENTITY_FILE)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                id.peer_id.to_string(),
                "QmdEtBsfumeH2V6dnx1fgn8zuW7XYjWdgJF4NEYpEBcTsg"
            );
            assert_eq!(id.keypair.key_type(), libp2p_identity::KeyType::RSA);
            assert_eq!(c.ipfs_connector.ipfshttp.pin_timeout, GoDuration::secs(120));
            let r = c.api.restapi.unwrap();
            if name.starts_with("ssl") {
                assert_eq!(r.ssl_cert_file, Some(dir.join("server.crt")), "{name}");
                assert_eq!(r.ssl_key_file, Some(dir.join("server.key")), "{name}");
            } else {
                assert_eq!((r.ssl_cert_file, r.ssl_key_file), (None, None));
            }
            assert_eq!(
                r.basic_auth_credentials.map(|m| m.contains_key("testuser")),
                (name != "ssl").then_some(true)
            );
        }
    }

    #[test]
    fn secp256k1_and_ed25519_identities_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(IDENTITY_FILE);
        for keypair in [
            libp2p_identity::Keypair::generate_secp256k1(),
            libp2p_identity::Keypair::generate_ed25519(),
        ] {
            let id = Identity {
                peer_id: keypair.public().to_peer_id(),
                keypair,
            };
            id.save(&p).unwrap();
            assert_eq!(Identity::load(&p).unwrap().peer_id, id.peer_id);
        }
    }

    #[test]
    fn identity_env_overrides_and_replaces_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(IDENTITY_FILE);
        let id = Identity::generate();
        id.save(&p).unwrap();
        let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        std::fs::remove_file(&p).unwrap();
        let env = |k: &str| match k {
            "CLUSTER_ID" => j["id"].as_str().map(String::from),
            "CLUSTER_PRIVATEKEY" => j["private_key"].as_str().map(String::from),
            _ => None,
        };
        assert_eq!(
            Identity::load_with_env(&p, env).unwrap().peer_id,
            id.peer_id
        );
        assert!(Identity::load(&p).is_err());
    }

    #[test]
    fn an_empty_secret_is_an_unprotected_network() {
        let mut c = Config::generate();
        assert!(c.secret_bytes().unwrap().is_some());
        c.cluster.secret = String::new();
        c.validate("x").unwrap();
        assert_eq!(c.secret_bytes().unwrap(), None);
        c.cluster.secret = "abcd".into();
        let e = c.validate("x").unwrap_err().to_string();
        assert!(
            e.contains("cluster.secret") && e.contains("32 bytes"),
            "{e}"
        );
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let _l = ExecutionLock::acquire(dir.path()).unwrap();
        assert!(matches!(
            ExecutionLock::acquire(dir.path()),
            Err(ConfigError::Locked(_))
        ));
    }
}
