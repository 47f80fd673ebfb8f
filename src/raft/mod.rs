//! Consensus: the shared pinset replicated through Raft (openraft), with the log and
//! state in the embedded store under the peer's config folder.

// openraft's trait signatures fix `StorageError` as the error type of the storage
// layer; boxing it in our helpers would only add conversions at every call.
#![allow(clippy::result_large_err)]

mod log_store;
mod network;
mod state_machine;
mod types;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{Raft, SnapshotPolicy};
use tokio::sync::mpsc;

pub use state_machine::StateEvent;
pub use types::{ApplyResult, ClusterNode, LogOp, NodeId, TypeConfig, node_id_of};

use crate::config::RaftConfig;
use crate::state::PinState;
use crate::store::{self, StoreError};
use log_store::LogStore;
use network::LocalOnlyNetwork;
use state_machine::StateMachine;

/// Why a consensus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No leader appeared within the wait.
    #[error("no leader found after waiting {0:?}: the cluster has no quorum")]
    NoLeader(Duration),
    /// This peer is not the leader and cannot forward the write.
    #[error("this peer is not the raft leader (leader: {0})")]
    NotLeader(String),
    /// Raft itself failed.
    #[error("raft: {0}")]
    Raft(String),
}

/// The outcome of a committed [`LogOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Whether the CID was in the pinset before the operation.
    pub existed: bool,
    /// The log index of the operation (events about it carry the same index).
    pub index: u64,
}

/// A peer's consensus component.
#[derive(Clone)]
pub struct Consensus {
    raft: Raft<TypeConfig>,
    state: PinState,
    node_id: NodeId,
    wait_for_leader: Duration,
}

impl Consensus {
    /// Opens the store in `dir`, starts Raft and, on first start, bootstraps a
    /// single-voter cluster of this peer. State changes are sent to `events`.
    pub async fn start(
        dir: &Path,
        peer_id: &libp2p_identity::PeerId,
        cfg: &RaftConfig,
        events: mpsc::Sender<StateEvent>,
    ) -> Result<Self, ConsensusError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError(format!("{}: {e}", dir.display())))?;
        let db = store::open(dir)?;
        let log = LogStore::new(db.tree("raft_log")?);
        let state = PinState::new(db.tree("state")?);
        let sm = StateMachine::new(state.clone(), db.tree("snapshot")?, events);

        let heartbeat = cfg.heartbeat_timeout.0.as_millis().max(10) as u64;
        let election = cfg
            .election_timeout
            .0
            .as_millis()
            .max(heartbeat as u128 * 3) as u64;
        let raft_cfg = openraft::Config {
            cluster_name: "ipfs-cluster".into(),
            heartbeat_interval: heartbeat,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_threshold.max(1)),
            max_in_snapshot_log_to_keep: cfg.trailing_logs,
            install_snapshot_timeout: cfg.network_timeout.0.as_millis() as u64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ConsensusError::Raft(e.to_string()))?;

        let node_id = node_id_of(peer_id);
        let raft = Raft::new(node_id, Arc::new(raft_cfg), LocalOnlyNetwork, log, sm)
            .await
            .map_err(|e| ConsensusError::Raft(e.to_string()))?;

        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        if !initialized {
            let mut members = BTreeMap::new();
            members.insert(
                node_id,
                ClusterNode {
                    peer_id: peer_id.to_string(),
                    addr: String::new(),
                },
            );
            raft.initialize(members)
                .await
                .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        }
        Ok(Consensus {
            raft,
            state,
            node_id,
            wait_for_leader: cfg.wait_for_leader_timeout.0,
        })
    }

    /// The pinset as applied on this peer.
    pub fn state(&self) -> &PinState {
        &self.state
    }

    /// Waits until a leader is known, up to `wait_for_leader_timeout`.
    pub async fn wait_for_leader(&self) -> Result<NodeId, ConsensusError> {
        let m = self
            .raft
            .wait(Some(self.wait_for_leader))
            .metrics(|m| m.current_leader.is_some(), "a raft leader")
            .await
            .map_err(|_| ConsensusError::NoLeader(self.wait_for_leader))?;
        m.current_leader
            .ok_or(ConsensusError::NoLeader(self.wait_for_leader))
    }

    /// Waits until a leader exists and this peer has applied everything committed.
    pub async fn wait_ready(&self) -> Result<(), ConsensusError> {
        self.wait_for_leader().await?;
        let committed = self.raft.metrics().borrow().last_log_index;
        if let Some(idx) = committed {
            self.raft
                .wait(Some(self.wait_for_leader))
                .applied_index_at_least(Some(idx), "log applied")
                .await
                .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        }
        Ok(())
    }

    /// Commits `op` and returns once it is applied on this peer.
    pub async fn commit(&self, op: LogOp) -> Result<Committed, ConsensusError> {
        self.wait_for_leader().await?;
        match self.raft.client_write(op).await {
            Ok(resp) => Ok(Committed {
                existed: resp.data.existed,
                index: resp.log_id.index,
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ConsensusError::NotLeader(
                    f.leader_node
                        .map(|n| n.peer_id)
                        .unwrap_or_else(|| "unknown".into()),
                ))
            }
            Err(e) => Err(ConsensusError::Raft(e.to_string())),
        }
    }

    /// The peer IDs of the current voters, sorted.
    pub fn peers(&self) -> Vec<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let mut peers: Vec<String> = m
            .membership()
            .nodes()
            .map(|(_, n)| n.peer_id.clone())
            .collect();
        peers.sort();
        peers
    }

    /// This peer's Raft node ID.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Stops Raft; the store is flushed on every write, so nothing is lost.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }
}
