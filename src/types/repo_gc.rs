//! Upstream's `GlobalRepoGC`: what each peer's daemon removed on `ipfs gc`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One removed block, or an error in its place (upstream's `IPFSRepoGC`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepoGcKey {
    /// The removed CID (empty for an error).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// What went wrong instead.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// One peer's garbage collection (upstream's `RepoGC`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepoGc {
    /// The peer's ID.
    pub peer: String,
    /// The peer's name.
    #[serde(default)]
    pub peername: String,
    /// The removed blocks and the errors met on the way.
    #[serde(default)]
    pub keys: Vec<RepoGcKey>,
    /// Why the peer could not collect at all.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// Every peer's garbage collection, by peer ID.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GlobalRepoGc {
    /// Peer ID → its collection.
    pub peer_map: BTreeMap<String, RepoGc>,
}
