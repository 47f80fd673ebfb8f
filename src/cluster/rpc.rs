//! Cluster RPCs between peers (on the libp2p host's RPC protocol): identity and
//! this peer's view of pins, gathered into the global status.

use serde::{Deserialize, Serialize};

use chrono::{DateTime, Utc};

use crate::types::{Cid, ClusterId, Metric, PinInfoShort, TrackerStatus};

/// A request to another peer.
#[derive(Debug, Serialize, Deserialize)]
pub enum ClusterRpc {
    /// Its `ID`.
    Id,
    /// Its status of one CID.
    Status(Cid),
    /// Its status of each of these CIDs.
    StatusMany(Vec<Cid>),
    /// Its status of a page of the pinset (CIDs in key order), answered compactly.
    StatusPage(Vec<Cid>),
    /// Its operations on CIDs outside the pinset.
    Orphans,
    /// The sender's latest metrics.
    Metrics(Vec<Metric>),
    /// Recover one CID there.
    Recover(Cid),
    /// Recover everything there; answers with the items re-queued.
    RecoverAll,
    /// Its daemon's repository size and capacity.
    RepoStat,
    /// Garbage-collect its daemon.
    RepoGc,
    /// Its connections: cluster peers, its daemon's ID and swarm peers.
    Connections,
}

/// The answer to a [`ClusterRpc`].
#[derive(Debug, Serialize, Deserialize)]
pub enum ClusterRpcReply {
    /// To `Id`.
    Id(Box<ClusterId>),
    /// To `Status`.
    Status(Box<PinInfoShort>),
    /// To `StatusMany`, in the same order.
    Statuses(Vec<PinInfoShort>),
    /// To `StatusPage`.
    StatusPage(PeerStatusPage),
    /// CIDs with their status (to `Orphans`, `RecoverAll`).
    Items(Vec<(Cid, PinInfoShort)>),
    /// Received.
    Ack,
    /// To `RepoStat`: repository size and capacity in bytes.
    RepoStat(u64, u64),
    /// To `RepoGc`: removed CIDs and errors.
    RepoGc(Vec<String>, Vec<String>),
    /// To `Connections`.
    Connections(PeerConnections),
    /// The request failed.
    Error(String),
}

/// One peer's connections, for the connectivity graph.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerConnections {
    /// Cluster peers it is connected to.
    pub cluster_peers: Vec<String>,
    /// Its daemon's peer ID (empty when the daemon did not answer).
    pub ipfs_id: String,
    /// The peers its daemon is connected to.
    pub ipfs_peers: Vec<String>,
}

/// One peer's status of a page of CIDs: what every item shares is sent once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatusPage {
    /// The peer's name.
    pub peername: String,
    /// Its daemon's ID.
    pub ipfs_peer_id: String,
    /// Its daemon's addresses.
    pub ipfs_peer_addresses: Vec<String>,
    /// When the statuses were computed (the time of items without their own).
    pub at: DateTime<Utc>,
    /// One per CID asked about, in order.
    pub items: Vec<PageItem>,
}

/// A status in a [`PeerStatusPage`]: status, attempts, its own time when it has
/// one (an operation's), and its error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageItem(
    pub TrackerStatus,
    pub u32,
    pub Option<DateTime<Utc>>,
    pub String,
);

impl PeerStatusPage {
    /// The item `i` as upstream's `PinInfoShort`.
    pub fn info(&self, i: usize) -> Option<PinInfoShort> {
        let PageItem(status, attempts, ts, error) = self.items.get(i)?;
        Some(PinInfoShort {
            peername: self.peername.clone(),
            ipfs_peer_id: self.ipfs_peer_id.clone(),
            ipfs_peer_addresses: self.ipfs_peer_addresses.clone(),
            status: *status,
            timestamp: ts.unwrap_or(self.at),
            error: error.clone(),
            attempt_count: *attempts,
            priority_pin: false,
        })
    }

    /// A page from full statuses (an older peer's answer to `StatusMany`).
    pub fn from_infos(infos: Vec<PinInfoShort>) -> Self {
        let at = Utc::now();
        let first = infos.first();
        PeerStatusPage {
            peername: first.map(|i| i.peername.clone()).unwrap_or_default(),
            ipfs_peer_id: first.map(|i| i.ipfs_peer_id.clone()).unwrap_or_default(),
            ipfs_peer_addresses: first
                .map(|i| i.ipfs_peer_addresses.clone())
                .unwrap_or_default(),
            at,
            items: infos
                .into_iter()
                .map(|i| PageItem(i.status, i.attempt_count, Some(i.timestamp), i.error))
                .collect(),
        }
    }
}
