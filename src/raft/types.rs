//! The Raft type configuration: what a log entry carries and how peers are named.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::types::{Cid, Pin};

/// A Raft node ID, derived from the peer's libp2p ID (see [`node_id_of`]).
pub type NodeId = u64;

/// What Raft knows of a member: its libp2p peer ID and an address to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// The libp2p peer ID.
    pub peer_id: String,
    /// A multiaddr of the peer, ending in `/p2p/<id>` (may be empty when unknown).
    pub addr: String,
    /// The peer's name, for status of peers that do not answer.
    #[serde(default)]
    pub name: String,
}

impl fmt::Display for ClusterNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.peer_id, self.addr)
    }
}

/// A pinset change, the payload of a Raft log entry (upstream's `LogOp`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LogOp {
    /// Add or replace a pin.
    Pin(Box<Pin>),
    /// Remove a pin.
    Unpin(Cid),
}

/// What applying a [`LogOp`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    /// Whether the CID was in the pinset before.
    pub existed: bool,
}

openraft::declare_raft_types!(
    /// openraft's type configuration for the cluster's pinset log.
    pub TypeConfig:
        D = LogOp,
        R = ApplyResult,
        NodeId = NodeId,
        Node = ClusterNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A stable Raft node ID for a libp2p peer ID: the last 8 bytes of its multihash.
///
/// Ed25519 peer IDs embed the public key, so these bytes are as random as the key.
pub fn node_id_of(peer: &libp2p_identity::PeerId) -> NodeId {
    let b = peer.to_bytes();
    let mut id = [0u8; 8];
    let tail = &b[b.len().saturating_sub(8)..];
    id[8 - tail.len()..].copy_from_slice(tail);
    u64::from_be_bytes(id)
}
