//! The API types shared by the REST API, the state and ctl, with upstream's JSON shapes.

mod bandwidth;
mod graph;
mod metric;
mod query;
mod repo_gc;
mod status;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use bandwidth::{BandwidthByProtocol, BandwidthStats};
pub use graph::ConnectGraph;
pub use metric::{Alert, Metric};
#[cfg(test)]
pub(crate) use query::pairs;
pub use repo_gc::{GlobalRepoGc, RepoGc, RepoGcKey};
pub use status::{GlobalPinInfo, PinInfoShort, TrackerStatus, TrackerStatusFilter};

/// A content identifier; JSON is the plain CID string, as upstream's `api.Cid`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cid(pub cid::Cid);

/// Why a string is not a CID.
#[derive(Debug, thiserror::Error)]
#[error("invalid cid: {0}")]
pub struct CidError(String);

impl Cid {
    /// The raw CID bytes (a stable key for the state).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes()
    }
    /// Appends the raw CID bytes to `out` (no allocation of their own: this
    /// runs once per pin when a large pinset is loaded).
    pub fn write_bytes_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.0.encoded_len());
        if self.0.write_bytes(&mut *out).is_err() {
            // Writing into a Vec does not fail; kept correct all the same.
            out.extend_from_slice(&self.0.to_bytes());
        }
    }
    /// Parses raw CID bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self, CidError> {
        cid::Cid::try_from(b)
            .map(Cid)
            .map_err(|e| CidError(e.to_string()))
    }
}

impl FromStr for Cid {
    type Err = CidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // cid's parser also strips an `/ipfs/` prefix; a CID argument must be bare.
        if s.contains('/') {
            return Err(CidError(format!("{s:?} is not a CID")));
        }
        cid::Cid::try_from(s)
            .map(Cid)
            .map_err(|e| CidError(e.to_string()))
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cid({})", self.0)
    }
}

impl Serialize for Cid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Cid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Accept both upstream's plain string and the `{"/": "..."}` link form,
        // read straight from the input: an untagged enum would buffer every
        // value first, which dominated parsing a large export.
        struct CidVisitor;
        impl<'de> serde::de::Visitor<'de> for CidVisitor {
            type Value = Cid;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CID string or a {\"/\": \"<cid>\"} link")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Cid, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Cid, A::Error> {
                let mut link: Option<String> = None;
                while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    if k == "/" {
                        link = Some(m.next_value()?);
                    } else {
                        m.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                let link = link.ok_or_else(|| serde::de::Error::missing_field("/"))?;
                link.parse().map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_any(CidVisitor)
    }
}

/// Recursive or direct pinning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PinMode {
    /// The whole DAG.
    #[default]
    Recursive,
    /// Only the root block.
    Direct,
}

impl PinMode {
    /// Upstream's `max_depth` for the mode.
    pub fn max_depth(self) -> i32 {
        match self {
            PinMode::Recursive => -1,
            PinMode::Direct => 0,
        }
    }
    /// kubo's pin type name.
    pub fn as_str(self) -> &'static str {
        match self {
            PinMode::Recursive => "recursive",
            PinMode::Direct => "direct",
        }
    }
}

impl FromStr for PinMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "recursive" => Ok(PinMode::Recursive),
            "direct" => Ok(PinMode::Direct),
            other => Err(format!(
                "invalid pin mode {other:?}: use recursive or direct"
            )),
        }
    }
}

/// What a pin is for; only data pins exist without sharding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PinType {
    /// A regular data pin.
    #[default]
    #[serde(rename = "pin")]
    Data,
    /// A sharded DAG's meta pin.
    #[serde(rename = "meta-pin")]
    Meta,
    /// A sharded DAG's cluster DAG.
    #[serde(rename = "clusterdag-pin")]
    ClusterDag,
    /// One shard.
    #[serde(rename = "shard-pin")]
    Shard,
}

/// Upstream's zero `time.Time`, meaning "never".
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

mod opt_time {
    use super::*;
    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(&t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
            None => s.serialize_str(ZERO_TIME),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s.as_deref() {
            None | Some("") | Some(ZERO_TIME) => Ok(None),
            Some(s) => DateTime::parse_from_rfc3339(s)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(serde::de::Error::custom),
        }
    }
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Upstream's `PinOptions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PinOptions {
    /// Minimum replication (0: cluster default, -1: everywhere).
    pub replication_factor_min: i32,
    /// Maximum replication (0: cluster default, -1: everywhere).
    pub replication_factor_max: i32,
    /// Free-form name.
    pub name: String,
    /// Recursive or direct.
    pub mode: PinMode,
    /// Shard size for sharded adds.
    pub shard_size: u64,
    /// Peers to allocate first.
    #[serde(deserialize_with = "null_as_default")]
    pub user_allocations: Vec<String>,
    /// When the pin expires; `None` is never.
    #[serde(with = "opt_time")]
    pub expire_at: Option<DateTime<Utc>>,
    /// Free-form key/values.
    #[serde(deserialize_with = "null_as_default")]
    pub metadata: BTreeMap<String, String>,
    /// Existing pin whose options this pin copies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_update: Option<Cid>,
    /// Multiaddrs of providers.
    #[serde(deserialize_with = "null_as_default")]
    pub origins: Vec<String>,
}

impl Default for PinOptions {
    fn default() -> Self {
        PinOptions {
            replication_factor_min: 0,
            replication_factor_max: 0,
            name: String::new(),
            mode: PinMode::Recursive,
            shard_size: 0,
            user_allocations: Vec::new(),
            expire_at: None,
            metadata: BTreeMap::new(),
            pin_update: None,
            origins: Vec::new(),
        }
    }
}

/// Upstream's `Pin`: an item of the shared pinset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pin {
    /// Options the pin was made with.
    #[serde(flatten)]
    pub options: PinOptions,
    /// What to pin.
    pub cid: Cid,
    /// Pin type.
    #[serde(rename = "type")]
    pub pin_type: PinType,
    /// Peers that should pin it; empty means every peer.
    pub allocations: Vec<String>,
    /// -1 recursive, 0 direct.
    pub max_depth: i32,
    /// For sharded pins: the related pin.
    pub reference: Option<Cid>,
    /// When the pin was (last) made.
    pub timestamp: DateTime<Utc>,
}

/// The keys of a pin object (its options' and its own, flattened as upstream).
enum PinKey {
    ReplicationFactorMin,
    ReplicationFactorMax,
    Name,
    Mode,
    ShardSize,
    UserAllocations,
    ExpireAt,
    Metadata,
    PinUpdate,
    Origins,
    Cid,
    Type,
    Allocations,
    MaxDepth,
    Reference,
    Timestamp,
    Other,
}

impl<'de> Deserialize<'de> for PinKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = PinKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a pin field name")
            }
            fn visit_str<E: serde::de::Error>(self, k: &str) -> Result<PinKey, E> {
                Ok(match k {
                    "replication_factor_min" => PinKey::ReplicationFactorMin,
                    "replication_factor_max" => PinKey::ReplicationFactorMax,
                    "name" => PinKey::Name,
                    "mode" => PinKey::Mode,
                    "shard_size" => PinKey::ShardSize,
                    "user_allocations" => PinKey::UserAllocations,
                    "expire_at" => PinKey::ExpireAt,
                    "metadata" => PinKey::Metadata,
                    "pin_update" => PinKey::PinUpdate,
                    "origins" => PinKey::Origins,
                    "cid" => PinKey::Cid,
                    "type" => PinKey::Type,
                    "allocations" => PinKey::Allocations,
                    "max_depth" => PinKey::MaxDepth,
                    "reference" => PinKey::Reference,
                    "timestamp" => PinKey::Timestamp,
                    _ => PinKey::Other,
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

/// `expire_at` read as [`opt_time`] does, as a value of its own.
struct OptTime(Option<DateTime<Utc>>);

impl<'de> Deserialize<'de> for OptTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        opt_time::deserialize(d).map(OptTime)
    }
}

impl<'de> Deserialize<'de> for Pin {
    /// The same fields, defaults and nulls as a derive with the options
    /// flattened would take, read in one pass: serde's `flatten` buffers every
    /// value before deserialising it, several times slower on a large export.
    /// Unknown keys are ignored; of a key given twice the last counts (as Go's
    /// encoding/json).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PinVisitor;
        impl<'de> serde::de::Visitor<'de> for PinVisitor {
            type Value = Pin;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a pin object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Pin, A::Error> {
                let mut o = PinOptions::default();
                let mut cid: Option<Cid> = None;
                let mut pin_type = PinType::default();
                let mut allocations = Vec::new();
                let mut max_depth = recursive_depth();
                let mut reference = None;
                let mut timestamp = None;
                while let Some(k) = m.next_key::<PinKey>()? {
                    match k {
                        PinKey::ReplicationFactorMin => {
                            o.replication_factor_min = m.next_value()?
                        }
                        PinKey::ReplicationFactorMax => {
                            o.replication_factor_max = m.next_value()?
                        }
                        PinKey::Name => o.name = m.next_value()?,
                        PinKey::Mode => o.mode = m.next_value()?,
                        PinKey::ShardSize => o.shard_size = m.next_value()?,
                        PinKey::UserAllocations => {
                            o.user_allocations = m.next_value::<Option<_>>()?.unwrap_or_default()
                        }
                        PinKey::ExpireAt => o.expire_at = m.next_value::<OptTime>()?.0,
                        PinKey::Metadata => {
                            o.metadata = m.next_value::<Option<_>>()?.unwrap_or_default()
                        }
                        PinKey::PinUpdate => o.pin_update = m.next_value()?,
                        PinKey::Origins => {
                            o.origins = m.next_value::<Option<_>>()?.unwrap_or_default()
                        }
                        PinKey::Cid => cid = Some(m.next_value()?),
                        PinKey::Type => pin_type = m.next_value()?,
                        PinKey::Allocations => {
                            allocations = m.next_value::<Option<_>>()?.unwrap_or_default()
                        }
                        PinKey::MaxDepth => max_depth = m.next_value()?,
                        PinKey::Reference => reference = m.next_value()?,
                        PinKey::Timestamp => timestamp = Some(m.next_value()?),
                        PinKey::Other => {
                            m.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(Pin {
                    options: o,
                    cid: cid.ok_or_else(|| serde::de::Error::missing_field("cid"))?,
                    pin_type,
                    allocations,
                    max_depth,
                    reference,
                    timestamp: timestamp.unwrap_or_else(Utc::now),
                })
            }
        }
        d.deserialize_map(PinVisitor)
    }
}

fn recursive_depth() -> i32 {
    -1
}

impl Pin {
    /// A new data pin made now.
    pub fn new(cid: Cid, options: PinOptions) -> Self {
        Pin {
            max_depth: options.mode.max_depth(),
            options,
            cid,
            pin_type: PinType::Data,
            allocations: Vec::new(),
            reference: None,
            timestamp: Utc::now(),
        }
    }

    /// The pin's mode, derived from `max_depth` as upstream does.
    pub fn mode(&self) -> PinMode {
        if self.max_depth == 0 {
            PinMode::Direct
        } else {
            PinMode::Recursive
        }
    }

    /// True when `peer` should hold the pin.
    pub fn is_allocated_to(&self, peer: &str) -> bool {
        self.allocations.is_empty() || self.allocations.iter().any(|a| a == peer)
    }
}

/// Upstream's `api.IPFSID`, the daemon's identity as seen by a peer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IpfsId {
    /// The daemon's peer ID.
    pub id: String,
    /// Its swarm addresses.
    pub addresses: Vec<String>,
    /// Why it could not be reached.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// Upstream's `api.ID`: a peer's identity and view of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterId {
    /// The cluster peer ID.
    pub id: String,
    /// Its libp2p addresses.
    pub addresses: Vec<String>,
    /// Peers in the peerset.
    pub cluster_peers: Vec<String>,
    /// Their addresses.
    pub cluster_peers_addresses: Vec<String>,
    /// Software version.
    pub version: String,
    /// Build commit.
    pub commit: String,
    /// Inter-peer RPC protocol.
    pub rpc_protocol_version: String,
    /// An error building the ID.
    pub error: String,
    /// The IPFS daemon.
    pub ipfs: IpfsId,
    /// Peer name.
    pub peername: String,
}

/// `/version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// The version string.
    pub version: String,
}

/// The REST API's error body, `{"code":N,"message":"…"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// What went wrong.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const V0: &str = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG";

    /// The derive the hand-written `Pin` deserialiser replaces (options
    /// flattened), kept here as the reference it must agree with.
    #[derive(Debug, Deserialize)]
    struct DerivedPin {
        #[serde(flatten)]
        options: PinOptions,
        cid: Cid,
        #[serde(rename = "type", default)]
        pin_type: PinType,
        #[serde(default, deserialize_with = "null_as_default")]
        allocations: Vec<String>,
        #[serde(default = "recursive_depth")]
        max_depth: i32,
        #[serde(default)]
        reference: Option<Cid>,
        #[serde(default)]
        timestamp: Option<DateTime<Utc>>,
    }

    #[test]
    fn pin_deserialises_as_the_flattened_derive_did() {
        let full = serde_json::to_string_pretty(&Pin {
            options: PinOptions {
                replication_factor_min: 2,
                replication_factor_max: 3,
                name: "n\u{e9}\"q".into(),
                mode: PinMode::Direct,
                shard_size: 7,
                user_allocations: vec!["a".into()],
                expire_at: Some("2030-01-02T03:04:05Z".parse().unwrap()),
                metadata: [("k".to_string(), "v".to_string())].into(),
                pin_update: Some(V0.parse().unwrap()),
                origins: vec!["/ip4/1.2.3.4/tcp/1".into()],
            },
            cid: V0.parse().unwrap(),
            pin_type: PinType::Meta,
            allocations: vec!["p1".into(), "p2".into()],
            max_depth: 0,
            reference: Some(V0.parse().unwrap()),
            timestamp: "2026-01-01T00:00:00.5Z".parse().unwrap(),
        })
        .unwrap();
        let good = [
            full.clone(),
            format!(r#"{{"cid":"{V0}"}}"#),
            format!(r#"{{"cid":{{"/":"{V0}","x":1}},"reference":null,"allocations":null}}"#),
            format!(
                r#"{{"user_allocations":null,"metadata":null,"origins":null,"expire_at":"0001-01-01T00:00:00Z","cid":"{V0}","unknown":[1,{{"a":2}}],"max_depth":5,"type":"shard-pin"}}"#
            ),
            format!(
                r#"{{"expire_at":null,"mode":"direct","name":"x","cid":"{V0}","pin_update":null}}"#
            ),
        ];
        for input in &good {
            let mine: Pin = serde_json::from_str(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            let derived: DerivedPin = serde_json::from_str(input).unwrap();
            assert_eq!(mine.options, derived.options, "{input}");
            assert_eq!(mine.cid, derived.cid);
            assert_eq!(mine.pin_type, derived.pin_type);
            assert_eq!(mine.allocations, derived.allocations);
            assert_eq!(mine.max_depth, derived.max_depth);
            assert_eq!(mine.reference, derived.reference);
            if let Some(t) = derived.timestamp {
                assert_eq!(mine.timestamp, t);
            }
        }
        let back: Pin = serde_json::from_str(&full).unwrap();
        assert_eq!(serde_json::to_string_pretty(&back).unwrap(), full);
        // Both refuse these.
        let bad = [
            "{}".to_string(),
            "[]".to_string(),
            r#"{"cid":5}"#.to_string(),
            r#"{"cid":{"x":"y"}}"#.to_string(),
            r#"{"cid":"not a cid"}"#.to_string(),
            format!(r#"{{"cid":"{V0}","name":null}}"#),
            format!(r#"{{"cid":"{V0}","mode":"deep"}}"#),
            format!(r#"{{"cid":"{V0}","max_depth":"x"}}"#),
            format!(r#"{{"cid":"{V0}","timestamp":"yesterday"}}"#),
            format!(r#"{{"cid":"{V0}","expire_at":"soon"}}"#),
            format!(r#"{{"cid":"{V0}","type":"other"}}"#),
        ];
        for input in &bad {
            assert!(serde_json::from_str::<Pin>(input).is_err(), "{input}");
            assert!(
                serde_json::from_str::<DerivedPin>(input).is_err(),
                "{input}"
            );
        }
        // The last of a repeated key counts.
        let twice: Pin =
            serde_json::from_str(&format!(r#"{{"cid":"{V0}","name":"a","name":"b"}}"#)).unwrap();
        assert_eq!(twice.options.name, "b");
    }

    #[test]
    fn cid_json_is_plain_string() {
        let c: Cid = V0.parse().unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{V0}\""));
        let back: Cid = serde_json::from_str(&format!("{{\"/\":\"{V0}\"}}")).unwrap();
        assert_eq!(back, c);
        assert!("/ipfs/x".parse::<Cid>().is_err());
        assert!("notacid".parse::<Cid>().is_err());
    }

    #[test]
    fn pin_json_matches_upstream_keys() {
        let p = Pin::new(V0.parse().unwrap(), PinOptions::default());
        let v = serde_json::to_value(&p).unwrap();
        for key in [
            "replication_factor_min",
            "replication_factor_max",
            "name",
            "mode",
            "shard_size",
            "user_allocations",
            "expire_at",
            "metadata",
            "cid",
            "type",
            "allocations",
            "max_depth",
            "reference",
            "timestamp",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["expire_at"], ZERO_TIME);
        assert_eq!(v["type"], "pin");
        assert_eq!(v["max_depth"], -1);
        let back: Pin = serde_json::from_value(v).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn partial_pin_json_parses() {
        let p: Pin = serde_json::from_str(&format!(
            r#"{{"cid":"{V0}","name":"a","replication_factor_min":1,"replication_factor_max":2,"metadata":null}}"#
        ))
        .unwrap();
        assert_eq!(p.options.name, "a");
        assert_eq!(p.max_depth, -1);
        // A line of upstream's `state export`.
        let p: Pin = serde_json::from_str(&format!(
            r#"{{"replication_factor_min":-1,"replication_factor_max":-1,"name":"","mode":"direct","shard_size":0,"user_allocations":null,"expire_at":"0001-01-01T00:00:00Z","metadata":null,"cid":"{V0}","type":"pin","allocations":[],"max_depth":0,"reference":null,"timestamp":"2024-05-01T10:00:00Z"}}"#
        ))
        .unwrap();
        assert_eq!(p.mode(), PinMode::Direct);
        assert_eq!(p.options.expire_at, None);
        assert!(p.options.user_allocations.is_empty() && p.options.metadata.is_empty());
    }
}
