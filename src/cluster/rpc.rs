//! Cluster RPCs between peers (on the libp2p host's RPC protocol): identity and
//! this peer's view of pins, gathered into the global status.

use serde::{Deserialize, Serialize};

use crate::types::{Cid, ClusterId, Metric, PinInfoShort};

/// A request to another peer.
#[derive(Debug, Serialize, Deserialize)]
pub enum ClusterRpc {
    /// Its `ID`.
    Id,
    /// Its status of one CID.
    Status(Cid),
    /// Its status of each of these CIDs.
    StatusMany(Vec<Cid>),
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
