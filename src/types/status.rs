//! Tracker statuses and the per-peer / global pin status shapes.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Cid, PinOptions};

/// The state of a CID on one peer, as upstream's `TrackerStatus` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackerStatus {
    /// No status.
    Undefined,
    /// The peer did not answer.
    ClusterError,
    /// Pinning failed.
    PinError,
    /// Unpinning failed.
    UnpinError,
    /// Pinned on the daemon.
    Pinned,
    /// Being pinned.
    Pinning,
    /// Being unpinned.
    Unpinning,
    /// Not pinned and not in the pinset.
    Unpinned,
    /// Allocated to other peers.
    Remote,
    /// Waiting to be pinned.
    PinQueued,
    /// Waiting to be unpinned.
    UnpinQueued,
    /// A sharded meta pin.
    Sharded,
    /// In the pinset and allocated here, but not pinned on the daemon.
    UnexpectedlyUnpinned,
}

const ALL: [TrackerStatus; 13] = [
    TrackerStatus::Undefined,
    TrackerStatus::ClusterError,
    TrackerStatus::PinError,
    TrackerStatus::UnpinError,
    TrackerStatus::Pinned,
    TrackerStatus::Pinning,
    TrackerStatus::Unpinning,
    TrackerStatus::Unpinned,
    TrackerStatus::Remote,
    TrackerStatus::PinQueued,
    TrackerStatus::UnpinQueued,
    TrackerStatus::Sharded,
    TrackerStatus::UnexpectedlyUnpinned,
];

impl TrackerStatus {
    /// The snake_case name used in JSON and filters.
    pub fn as_str(self) -> &'static str {
        match self {
            TrackerStatus::Undefined => "undefined",
            TrackerStatus::ClusterError => "cluster_error",
            TrackerStatus::PinError => "pin_error",
            TrackerStatus::UnpinError => "unpin_error",
            TrackerStatus::Pinned => "pinned",
            TrackerStatus::Pinning => "pinning",
            TrackerStatus::Unpinning => "unpinning",
            TrackerStatus::Unpinned => "unpinned",
            TrackerStatus::Remote => "remote",
            TrackerStatus::PinQueued => "pin_queued",
            TrackerStatus::UnpinQueued => "unpin_queued",
            TrackerStatus::Sharded => "sharded",
            TrackerStatus::UnexpectedlyUnpinned => "unexpectedly_unpinned",
        }
    }

    fn bit(self) -> u32 {
        match self {
            TrackerStatus::Undefined => 0,
            other => 1 << (ALL.iter().position(|s| *s == other).unwrap_or(0) as u32),
        }
    }

    /// True for the error statuses.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            TrackerStatus::ClusterError | TrackerStatus::PinError | TrackerStatus::UnpinError
        )
    }
}

impl fmt::Display for TrackerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of statuses to filter by (`?filter=pinned,error`); empty matches all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackerStatusFilter(u32);

impl TrackerStatusFilter {
    /// True if `s` passes the filter.
    pub fn matches(self, s: TrackerStatus) -> bool {
        self.0 == 0 || self.0 & s.bit() != 0
    }
    /// True if the filter lets everything through.
    pub fn is_all(self) -> bool {
        self.0 == 0
    }
}

impl FromStr for TrackerStatusFilter {
    type Err = String;
    /// Like upstream: unknown names are ignored, but a non-empty filter that names
    /// nothing known is an error.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut bits = 0;
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            bits |= match name {
                "error" => {
                    TrackerStatus::ClusterError.bit()
                        | TrackerStatus::PinError.bit()
                        | TrackerStatus::UnpinError.bit()
                }
                "queued" => TrackerStatus::PinQueued.bit() | TrackerStatus::UnpinQueued.bit(),
                other => ALL
                    .iter()
                    .find(|st| st.as_str() == other)
                    .map(|st| st.bit())
                    .unwrap_or(0),
            };
        }
        if bits == 0 && !s.trim().is_empty() {
            return Err(format!("invalid filter value: {s}"));
        }
        Ok(TrackerStatusFilter(bits))
    }
}

/// One peer's view of a CID (upstream's `PinInfoShort`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PinInfoShort {
    /// The peer's name.
    pub peername: String,
    /// The peer's IPFS daemon ID.
    pub ipfs_peer_id: String,
    /// The daemon's addresses.
    #[serde(default)]
    pub ipfs_peer_addresses: Vec<String>,
    /// Status on that peer.
    pub status: TrackerStatus,
    /// When the status was last set.
    pub timestamp: DateTime<Utc>,
    /// Error text, for error statuses.
    #[serde(default)]
    pub error: String,
    /// Attempts made so far.
    #[serde(default)]
    pub attempt_count: u32,
    /// Whether the operation is prioritised.
    #[serde(default)]
    pub priority_pin: bool,
}

/// A CID's status on every peer (upstream's `GlobalPinInfo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlobalPinInfo {
    /// The CID.
    pub cid: Cid,
    /// Its pin name.
    #[serde(default)]
    pub name: String,
    /// Allocations (empty: everywhere).
    #[serde(default)]
    pub allocations: Vec<String>,
    /// Origins.
    #[serde(default)]
    pub origins: Vec<String>,
    /// When it was pinned.
    pub created: DateTime<Utc>,
    /// Pin metadata.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Peer ID → status.
    pub peer_map: BTreeMap<String, PinInfoShort>,
}

impl GlobalPinInfo {
    /// An empty map for `cid` carrying the pin's options, if it is pinned.
    pub fn new(cid: Cid, pin: Option<(&PinOptions, &[String], DateTime<Utc>)>) -> Self {
        let (name, allocations, origins, created, metadata) = match pin {
            Some((o, alloc, ts)) => (
                o.name.clone(),
                alloc.to_vec(),
                o.origins.clone(),
                ts,
                (!o.metadata.is_empty()).then(|| o.metadata.clone()),
            ),
            None => (
                String::new(),
                vec![],
                vec![],
                DateTime::<Utc>::UNIX_EPOCH,
                None,
            ),
        };
        GlobalPinInfo {
            cid,
            name,
            allocations,
            origins,
            created,
            metadata,
            peer_map: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let f: TrackerStatusFilter = "pinned,error".parse().unwrap();
        assert!(f.matches(TrackerStatus::Pinned));
        assert!(f.matches(TrackerStatus::PinError));
        assert!(!f.matches(TrackerStatus::Pinning));
        let q: TrackerStatusFilter = "queued".parse().unwrap();
        assert!(q.matches(TrackerStatus::PinQueued) && q.matches(TrackerStatus::UnpinQueued));
        assert!("bogus".parse::<TrackerStatusFilter>().is_err());
        assert!("".parse::<TrackerStatusFilter>().unwrap().is_all());
        assert_eq!(
            serde_json::to_string(&TrackerStatus::UnexpectedlyUnpinned).unwrap(),
            "\"unexpectedly_unpinned\""
        );
    }
}
