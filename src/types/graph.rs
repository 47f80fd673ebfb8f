//! Upstream's `ConnectGraph`: who is connected to whom, among the cluster's
//! peers and their IPFS daemons (`GET /health/graph`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The connections seen by every peer that answered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectGraph {
    /// The peer that gathered the graph.
    pub cluster_id: String,
    /// Peer ID → peer name.
    #[serde(default)]
    pub id_to_peername: BTreeMap<String, String>,
    /// IPFS daemon ID → the daemons it is connected to.
    #[serde(default)]
    pub ipfs_links: BTreeMap<String, Vec<String>>,
    /// Cluster peer ID → the cluster peers it is connected to.
    #[serde(default)]
    pub cluster_links: BTreeMap<String, Vec<String>>,
    /// Cluster peer ID → whether it is trusted (always, with Raft).
    #[serde(default)]
    pub cluster_trust_links: BTreeMap<String, bool>,
    /// Cluster peer ID → the ID of its IPFS daemon.
    #[serde(default)]
    pub cluster_to_ipfs: BTreeMap<String, String>,
}
