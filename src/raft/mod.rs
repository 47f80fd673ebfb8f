//! Consensus: the shared pinset replicated through Raft (openraft) between the
//! cluster's peers over libp2p, with the log and state in the embedded store under
//! the peer's config folder. Writes made on a follower are forwarded to the leader.

// openraft's trait signatures fix `StorageError` as the error type of the storage
// layer; boxing it in our helpers would only add conversions at every call.
#![allow(clippy::result_large_err)]

mod apply_waiters;
mod batcher;
mod codec;
mod log_file;
mod log_store;
mod log_writer;
mod network;
pub mod offline;
#[cfg(test)]
mod sim;
mod state_machine;
#[cfg(test)]
mod suite_tests;
mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft, SnapshotPolicy};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use network::{
    CommittedV1, ForwardError, ForwardOp, ForwardReply, RaftRpc, decode as decode_payload,
    encode as encode_payload,
};
pub use state_machine::StateEvent;
pub use types::{
    ApplyResult, ClusterNode, Committed, Expect, LogBatch, LogOp, NodeId, Outcome, Prior, Request,
    RequestId, TypeConfig, node_id_of,
};

use crate::config::RaftConfig;
use crate::p2p::{Multiaddr, P2p, PeerId, Protocol, split_p2p};
use crate::state::PinState;
use crate::store::{self, StoreError};
use batcher::Batcher;
use log_store::LogStore;
use network::{P2pNetwork, RaftReply, decode, encode, node_peer};
use state_machine::StateMachine;

/// Why a consensus operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConsensusError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No leader could be reached within the wait.
    #[error(
        "no leader found after waiting {0:?}: the cluster has no quorum or this peer cannot reach it"
    )]
    NoLeader(Duration),
    /// Raft itself failed.
    #[error("raft: {0}")]
    Raft(String),
    /// The configuration cannot be used.
    #[error("{0}")]
    Config(String),
    /// The peer is shutting down; the write may or may not have been committed.
    #[error("consensus is shutting down")]
    ShuttingDown,
    /// The leader did not answer within the wait: the operation may still take
    /// effect (a retry carrying the same request ID would learn its outcome).
    #[error(
        "no answer from the leader within {wait:?} ({last}): the operation may or may not take effect"
    )]
    Unanswered {
        /// How long it was retried.
        wait: Duration,
        /// The last failure.
        last: String,
    },
    /// The write is committed, but this peer did not apply the log that far
    /// within the wait: reads here may not show it yet.
    #[error("this peer has not applied the log up to index {index} after {wait:?}")]
    NotApplied {
        /// The index waited for.
        index: u64,
        /// How long it waited.
        wait: Duration,
    },
}

/// This peer's view of Raft (`GET /raft`, an addition to upstream's API).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RaftInfo {
    /// The leader's peer ID (empty when unknown).
    pub leader: String,
    /// The current term.
    pub term: u64,
    /// The last applied log index.
    pub applied_index: u64,
    /// The last log index in the latest snapshot.
    pub snapshot_index: Option<u64>,
    /// The last purged log index.
    pub purged_index: Option<u64>,
    /// The voters' peer IDs.
    pub voters: Vec<String>,
}

/// What a consensus component starts from.
pub struct ConsensusOptions<'a> {
    /// The Raft folder.
    pub dir: &'a Path,
    /// The libp2p host.
    pub p2p: P2p,
    /// This peer as a Raft member.
    pub node: ClusterNode,
    /// Raft settings, including the initial peerset.
    pub cfg: &'a RaftConfig,
    /// Peers to join through (`daemon --bootstrap`).
    pub bootstrap: &'a [Multiaddr],
    /// Where pinset changes are announced.
    pub events: tokio::sync::broadcast::Sender<StateEvent>,
}

/// A peer's consensus component.
#[derive(Clone)]
pub struct Consensus {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft<TypeConfig>,
    state: PinState,
    node_id: NodeId,
    node: ClusterNode,
    p2p: P2p,
    wait_for_leader: Duration,
    removed: CancellationToken,
    batcher: Batcher,
    snapshot_progress: state_machine::SnapshotProgress,
    /// How far the state machine has written the log into the state.
    applied: tokio::sync::watch::Receiver<types::Applied>,
    /// Where this peer's writes wait for their outcomes from the apply here.
    waiters: Arc<apply_waiters::ApplyWaiters>,
    /// Test hook: replies to forwarded commits to drop (the leader applied them,
    /// this peer hears nothing), as a lost reply on the network would.
    #[cfg(test)]
    drop_commit_replies: std::sync::atomic::AtomicUsize,
    /// Test hook: this peer's writes wait for the leader's reply alone, not
    /// for their own apply here too.
    #[cfg(test)]
    only_leader_replies: std::sync::atomic::AtomicBool,
}

/// The folder of snapshot files inside the raft folder.
pub(crate) const SNAPSHOT_DIR: &str = "snapshots";

/// Batches in flight at once per peer: one may fill while the other is on its
/// way. More splits the same writes into smaller entries, each paying a
/// forward, an append, a replication round and an fsync: with 3 peers on 2
/// cores and 64 clients, 4 cost 656 us of CPU a pin against 559 for 2 and 494
/// for 1 (`scripts/bench.sh scale-ingest`).
const BATCHES_IN_FLIGHT: usize = 2;
/// The least time a snapshot chunk (the last one: received and installed) may
/// take before the leader gives up and sends the snapshot again.
const MIN_INSTALL_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Requests per batch (about 100 bytes each): bounds an entry to a few hundred KiB.
const MAX_BATCH: usize = 4096;

impl Consensus {
    /// Opens the store, starts Raft and, on a first start without `--bootstrap`,
    /// bootstraps the cluster from `init_peerset` (or as a single voter).
    pub async fn start(opts: ConsensusOptions<'_>) -> Result<Self, ConsensusError> {
        let ConsensusOptions {
            dir,
            p2p,
            node,
            cfg,
            bootstrap,
            events,
        } = opts;
        // Opening reads the store's files, scans the log's and may count the
        // pinset (a store of an earlier version): off the async workers.
        let (mut log, state, sm) = {
            let (dir, datastore) = (dir.to_path_buf(), cfg.datastore);
            tokio::task::spawn_blocking(move || -> Result<_, ConsensusError> {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| StoreError(format!("{}: {e}", dir.display())))?;
                let db = store::open(&dir, store::choose(&dir, datastore))?;
                let log = LogStore::open(db.tree("raft_log")?, &dir)
                    .map_err(|e| ConsensusError::Raft(e.to_string()))?;
                let state = PinState::new(db.tree("state")?);
                let sm = StateMachine::new(
                    state.clone(),
                    db.tree("snapshot")?,
                    dir.join(SNAPSHOT_DIR),
                    events,
                );
                Ok((log, state, sm))
            })
            .await
            .map_err(|e| ConsensusError::Raft(format!("opening the store: {e}")))??
        };
        log.purge_only_applied(sm.applied());
        // Before Raft starts applying (see PinState::build_filter_in_background).
        state.build_filter_in_background();
        let snapshot_progress = sm.progress();
        let applied = sm.applied();
        let waiters = sm.waiters();

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
            // Snapshots are made by `schedule_snapshots`, at most once per
            // `snapshot_interval`: openraft's own policy would write the whole
            // pinset out every `snapshot_threshold` entries, which for a pinset
            // of millions under steady writes means every few seconds.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: cfg.trailing_logs,
            // The last chunk's answer waits for the whole install: a pinset of
            // millions takes far longer than one network exchange, and a
            // timeout would send the snapshot again from the start, forever.
            install_snapshot_timeout: cfg
                .network_timeout
                .0
                .max(MIN_INSTALL_SNAPSHOT_TIMEOUT)
                .as_millis() as u64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ConsensusError::Raft(e.to_string()))?;

        let node_id = node_id_of_str(&node.peer_id)?;
        let raft = Raft::new(
            node_id,
            Arc::new(raft_cfg),
            P2pNetwork::new(p2p.clone()),
            log,
            sm,
        )
        .await
        .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let weak = weak.clone();
            // Weak: the batcher's task must not keep the component alive.
            let submit: batcher::SubmitFn = Arc::new(move |ops: Vec<Request>| {
                let weak = weak.clone();
                Box::pin(async move {
                    let inner = weak.upgrade().ok_or(ConsensusError::ShuttingDown)?;
                    Consensus { inner }.submit_batch(ops).await
                })
            });
            Inner {
                raft,
                state,
                node_id,
                node,
                p2p,
                wait_for_leader: cfg.wait_for_leader_timeout.0,
                removed: CancellationToken::new(),
                batcher: Batcher::start(submit, BATCHES_IN_FLIGHT, MAX_BATCH),
                snapshot_progress,
                applied,
                waiters,
                #[cfg(test)]
                drop_commit_replies: Default::default(),
                #[cfg(test)]
                only_leader_replies: Default::default(),
            }
        });
        let c = Consensus { inner };

        let initialized = c
            .inner
            .raft
            .is_initialized()
            .await
            .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        if initialized {
            c.check_existing_state(cfg, bootstrap)?;
        } else if bootstrap.is_empty() {
            let members = initial_members(&c.inner.node, &cfg.init_peerset)?;
            tracing::info!("bootstrapping a new cluster with {} peer(s)", members.len());
            if let Err(e) = c.inner.raft.initialize(members).await {
                return Err(ConsensusError::Raft(e.to_string()));
            }
        }
        Ok(c)
    }

    /// Upstream's rule: an existing Raft state wins over the configured peerset,
    /// and a peer may only `--bootstrap` into the cluster its state belongs to.
    fn check_existing_state(
        &self,
        cfg: &RaftConfig,
        bootstrap: &[Multiaddr],
    ) -> Result<(), ConsensusError> {
        let known: BTreeSet<String> = self.peer_nodes().into_iter().map(|n| n.peer_id).collect();
        if !bootstrap.is_empty() {
            let joins_own = bootstrap
                .iter()
                .filter_map(split_p2p)
                .any(|(p, _)| known.contains(&p.to_string()));
            if !joins_own {
                return Err(ConsensusError::Config(format!(
                    "this peer already has Raft state from another cluster (peers: {}); to join \
                     through --bootstrap, stop it and move its raft folder away (it is kept as a \
                     backup if you run `ipfs-cluster-service state cleanup`), then start it again",
                    known.into_iter().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        let configured: BTreeSet<String> = cfg
            .init_peerset
            .iter()
            .filter_map(|a| a.parse::<Multiaddr>().ok())
            .filter_map(|a| split_p2p(&a).map(|(p, _)| p.to_string()))
            .collect();
        if !configured.is_empty() && !configured.is_subset(&known) {
            tracing::warn!(
                "consensus.raft.init_peerset lists peers that are not in this peer's Raft \
                 peerset; the Raft log is authoritative and init_peerset only bootstraps new \
                 clusters. Current peerset: {known:?}"
            );
        }
        Ok(())
    }

    /// Asks the cluster (through the `bootstrap` peers) to add this peer as a voter.
    pub async fn join(&self, bootstrap: &[Multiaddr]) -> Result<(), ConsensusError> {
        // Reaching a bootstrap peer gets `wait_for_leader_timeout`; once one answers,
        // catching up (possibly through a snapshot) is part of joining: allow for it.
        let started = Instant::now();
        let mut deadline = started + self.inner.wait_for_leader;
        let op = ForwardOp::AddPeer(self.inner.node_id, self.inner.node.clone());
        let mut last = String::from("no bootstrap peer given");
        loop {
            for addr in bootstrap {
                let peer = match self.inner.p2p.connect(addr.clone()).await {
                    Ok(p) => p,
                    Err(e) => {
                        last = format!("{addr}: {e}");
                        continue;
                    }
                };
                deadline = deadline.max(started + Duration::from_secs(60));
                match self.forward_to(peer, op.clone()).await {
                    Ok(_) => {
                        tracing::info!("joined the cluster through {addr}");
                        return Ok(());
                    }
                    Err(e) => last = format!("{addr}: {e}"),
                }
            }
            if Instant::now() >= deadline {
                return Err(ConsensusError::Raft(format!(
                    "could not join the cluster: {last}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The pinset as applied on this peer.
    pub fn state(&self) -> &PinState {
        &self.inner.state
    }

    /// This peer's Raft node ID.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The current leader, if known.
    pub fn leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// A summary of this peer's Raft view.
    pub fn info(&self) -> RaftInfo {
        let m = self.inner.raft.metrics().borrow().clone();
        let leader = m
            .current_leader
            .and_then(|l| m.membership_config.membership().get_node(&l).cloned())
            .map(|n| n.peer_id)
            .unwrap_or_default();
        RaftInfo {
            leader,
            term: m.current_term,
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            voters: self.peers(),
        }
    }

    /// Waits until a leader is known, up to `wait_for_leader_timeout`.
    pub async fn wait_for_leader(&self) -> Result<NodeId, ConsensusError> {
        // Every write asks: a known leader is read in place, without openraft's
        // wait (a copy of all its metrics and a timer).
        if let Some(leader) = self.leader() {
            return Ok(leader);
        }
        let wait = self.inner.wait_for_leader;
        let m = self
            .inner
            .raft
            .wait(Some(wait))
            .metrics(|m| m.current_leader.is_some(), "a raft leader")
            .await
            .map_err(|_| ConsensusError::NoLeader(wait))?;
        m.current_leader.ok_or(ConsensusError::NoLeader(wait))
    }

    /// Waits until a leader exists and this peer has applied everything the leader
    /// had committed when asked (upstream's `WaitForSync`).
    pub async fn wait_ready(&self) -> Result<(), ConsensusError> {
        let index = match self.submit(ForwardOp::ReadIndex).await? {
            ForwardReply::ReadIndex(i) => i,
            other => return Err(ConsensusError::Raft(format!("unexpected reply {other:?}"))),
        };
        self.wait_applied(index).await
    }

    /// [`Self::wait_ready`] at start: a peer that is still receiving or
    /// installing a snapshot (a new peer catching up with a large pinset) hears
    /// nothing from the leader meanwhile; it waits on while the transfer makes
    /// progress, and fails only after `wait_for_leader_timeout` without any.
    pub async fn wait_ready_at_start(&self) -> Result<(), ConsensusError> {
        let mut seen = self.inner.snapshot_progress.value();
        loop {
            let err = match self.wait_ready().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let now = self.inner.snapshot_progress.value();
            if now == seen {
                return Err(err);
            }
            tracing::info!("a snapshot is still arriving or being installed; waiting on ({err})");
            seen = now;
        }
    }

    /// Waits until this peer has applied the log up to `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<(), ConsensusError> {
        if index == 0 {
            return Ok(());
        }
        // Mostly true by now (a leader answers a write once applied): no
        // timer, no condition for openraft to format.
        if self.inner.applied.borrow().covers(index) {
            return Ok(());
        }
        // The state machine's own view, published from the apply's thread:
        // openraft's metrics learn it two hand-offs later.
        let wait = self.inner.wait_for_leader;
        let mut applied = self.inner.applied.clone();
        match tokio::time::timeout(wait, applied.wait_for(|a| a.covers(index))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ConsensusError::ShuttingDown),
            Err(_) => Err(ConsensusError::NotApplied { index, wait }),
        }
    }

    /// Reads the index of the newest entry this peer's state holds, if any;
    /// it holds the state machine's view only, not the component.
    pub fn applied_index_reader(&self) -> impl Fn() -> Option<u64> + Send + Sync + 'static {
        let applied = self.inner.applied.clone();
        move || match *applied.borrow() {
            types::Applied::Upto(i) => i,
            _ => None,
        }
    }

    /// Commits `op` (through the leader, together with other writes arriving at
    /// the same time) and returns once it is committed and applied here, so that
    /// this peer reads its own writes.
    pub async fn commit(&self, op: LogOp) -> Result<Committed, ConsensusError> {
        self.commit_request(Request::new(op)).await
    }

    /// [`Self::commit`] of a request whose ID the caller chose.
    pub async fn commit_request(&self, req: Request) -> Result<Committed, ConsensusError> {
        let c = self
            .inner
            .batcher
            .commit(vec![req])
            .await?
            .pop()
            .ok_or_else(|| ConsensusError::Raft("a write got no result".into()))?;
        self.wait_applied(c.index).await?;
        Ok(c)
    }

    /// Commits one batch through the leader: one Raft entry.
    ///
    /// The entry's apply on this peer answers as well as the leader's reply
    /// does (an applied entry is committed, and the apply computes the same
    /// outcomes everywhere), whichever comes first: on a follower the own
    /// apply mostly comes before the reply, and a reply lost on the way needs
    /// no retry.
    async fn submit_batch(&self, ops: Vec<Request>) -> Result<Vec<Committed>, ConsensusError> {
        let n = ops.len();
        let batch = LogBatch(ops);
        let early = self.apply_waiter(&batch);
        let reply = self.submit(ForwardOp::Commit(batch));
        let reply = match early {
            None => reply.await?,
            Some(mut early) => {
                tokio::pin!(reply);
                tokio::select! {
                    biased;
                    r = &mut early.rx => match r {
                        Ok(result) => ForwardReply::Outcomes(result.outcomes),
                        // The apply failed: the leader's (or openraft's) answer says how.
                        Err(_) => reply.await?,
                    },
                    r = &mut reply => r?,
                }
            }
        };
        match reply {
            ForwardReply::Outcomes(c) if c.len() == n => Ok(c),
            ForwardReply::Committed(c) if c.len() == n => {
                Ok(c.into_iter().map(Into::into).collect())
            }
            other => Err(ConsensusError::Raft(format!(
                "unexpected reply to a batch of {n}: {other:?}"
            ))),
        }
    }

    /// A place to wait for `batch`'s outcomes from its apply here.
    fn apply_waiter(&self, batch: &LogBatch) -> Option<apply_waiters::Registration> {
        #[cfg(test)]
        if self
            .inner
            .only_leader_replies
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return None;
        }
        self.inner.waiters.register(batch)
    }

    /// Adds a peer as a voter.
    pub async fn add_peer(&self, node: ClusterNode) -> Result<(), ConsensusError> {
        let id = node_id_of_str(&node.peer_id)?;
        self.submit(ForwardOp::AddPeer(id, node)).await.map(|_| ())
    }

    /// Removes a peer from the peerset.
    pub async fn remove_peer(&self, peer_id: &str) -> Result<(), ConsensusError> {
        let id = node_id_of_str(peer_id)?;
        if !self.peer_nodes().iter().any(|n| n.peer_id == peer_id) {
            return Err(ConsensusError::Config(format!(
                "{peer_id} is not a cluster peer"
            )));
        }
        self.submit(ForwardOp::RemovePeer(id)).await.map(|_| ())
    }

    /// Runs `op` on the leader, wherever it is, retrying through leader changes
    /// until `wait_for_leader_timeout`.
    pub async fn submit(&self, op: ForwardOp) -> Result<ForwardReply, ConsensusError> {
        let wait = self.inner.wait_for_leader;
        let deadline = Instant::now() + wait;
        loop {
            let leader = tokio::time::timeout_at(deadline.into(), self.wait_for_leader())
                .await
                .map_err(|_| ConsensusError::NoLeader(wait))??;
            let attempt = async {
                if leader == self.inner.node_id {
                    self.on_leader(op.clone()).await
                } else {
                    match self.leader_peer(leader) {
                        Some(peer) => self.forward_to(peer, op.clone()).await,
                        None => Err(ForwardError::NotLeader),
                    }
                }
            };
            // A leader that lost its quorum does not know it yet: bound every attempt.
            let res = tokio::time::timeout_at(deadline.into(), attempt)
                .await
                .unwrap_or(Err(ForwardError::NotLeader));
            match res {
                Ok(r) => return Ok(r),
                Err(ForwardError::Failed(m)) => return Err(ConsensusError::Raft(m)),
                // The same op again: its requests keep their IDs, so a write
                // whose first attempt was applied is answered, not applied twice.
                Err(ForwardError::NotLeader | ForwardError::Unreachable(_))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(ForwardError::NotLeader) => return Err(ConsensusError::NoLeader(wait)),
                Err(ForwardError::Unreachable(last)) => {
                    return Err(ConsensusError::Unanswered { wait, last });
                }
            }
        }
    }

    fn leader_peer(&self, leader: NodeId) -> Option<PeerId> {
        let m = self.inner.raft.metrics().borrow().membership_config.clone();
        m.membership()
            .get_node(&leader)
            .and_then(node_peer)
            .map(|(p, _)| p)
    }

    async fn forward_to(&self, peer: PeerId, op: ForwardOp) -> Result<ForwardReply, ForwardError> {
        #[cfg(test)]
        let is_commit = matches!(op, ForwardOp::Commit(_));
        let bytes = self
            .inner
            .p2p
            .request(peer, Protocol::Raft, encode(&RaftRpc::Forward(op)))
            .await
            .map_err(|e| ForwardError::Unreachable(format!("{peer}: {e}")))?;
        #[cfg(test)]
        if is_commit
            && self
                .inner
                .drop_commit_replies
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .is_ok()
        {
            return Err(ForwardError::Unreachable("reply dropped by a test".into()));
        }
        match decode::<RaftReply>(&bytes) {
            Ok(RaftReply::Forward(r)) => r,
            Ok(other) => Err(ForwardError::Failed(format!("unexpected reply {other:?}"))),
            Err(e) => Err(ForwardError::Failed(format!("bad reply from {peer}: {e}"))),
        }
    }

    /// Appends `batch` as one entry and waits until it is committed and applied
    /// here. No separate quorum check first: the commit itself proves the quorum.
    /// (The batch's writer also waits for the apply's own answer: see
    /// [`Self::submit_batch`].)
    async fn write(&self, batch: LogBatch) -> Result<ForwardReply, ForwardError> {
        let n = batch.0.len();
        let result = self
            .inner
            .raft
            .client_write(batch)
            .await
            .map_err(write_error)?
            .data;
        if result.outcomes.len() != n {
            return Err(ForwardError::Failed(format!(
                "applying a batch of {n} gave {} results",
                result.outcomes.len()
            )));
        }
        Ok(ForwardReply::Outcomes(result.outcomes))
    }

    /// Runs `op` here, as the leader.
    async fn on_leader(&self, op: ForwardOp) -> Result<ForwardReply, ForwardError> {
        let raft = &self.inner.raft;
        match op {
            ForwardOp::Commit(batch) => self.write(batch).await,
            ForwardOp::AddPeer(id, node) => {
                let is_voter = raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == id);
                if is_voter {
                    return Ok(ForwardReply::Done);
                }
                if let Some((peer, Some(addr))) = node_peer(&node) {
                    self.inner.p2p.add_address(peer, addr).await;
                }
                raft.add_learner(id, node, true)
                    .await
                    .map_err(write_error)?;
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(write_error)?;
                Ok(ForwardReply::Done)
            }
            ForwardOp::RemovePeer(id) => {
                let target = raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .get_node(&id)
                    .and_then(node_peer);
                raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                    .await
                    .map_err(write_error)?;
                if let Some((peer, _)) = target {
                    if id == self.inner.node_id {
                        self.inner.removed.cancel();
                    } else if let Err(e) = self
                        .inner
                        .p2p
                        .request(peer, Protocol::Raft, encode(&RaftRpc::Removed))
                        .await
                    {
                        // It is out of the peerset either way; it just keeps running.
                        tracing::warn!("could not tell {peer} it was removed: {e}");
                    }
                }
                Ok(ForwardReply::Done)
            }
            ForwardOp::ReadIndex => match raft.ensure_linearizable().await {
                Ok(log_id) => Ok(ForwardReply::ReadIndex(
                    log_id.map(|l| l.index).unwrap_or(0),
                )),
                // A quorum that does not answer in time (peers busy starting, a
                // partition) may answer on the next try: retried like a missing
                // leader until `wait_for_leader_timeout`, never fatal at once.
                Err(RaftError::APIError(
                    CheckIsLeaderError::ForwardToLeader(_) | CheckIsLeaderError::QuorumNotEnough(_),
                )) => Err(ForwardError::NotLeader),
                Err(e) => Err(ForwardError::Failed(e.to_string())),
            },
        }
    }

    /// Answers a Raft-protocol request from another peer.
    /// `sender` is the peer the request came from, as authenticated by libp2p.
    pub async fn handle_rpc(&self, sender: &PeerId, payload: &[u8]) -> Vec<u8> {
        let reply = match decode::<RaftRpc>(payload) {
            Err(e) => RaftReply::BadRequest(e),
            Ok(RaftRpc::Append(r)) => RaftReply::Append(self.inner.raft.append_entries(r).await),
            Ok(RaftRpc::Vote(r)) => RaftReply::Vote(self.inner.raft.vote(r).await),
            Ok(RaftRpc::Snapshot(r)) => {
                RaftReply::Snapshot(self.inner.raft.install_snapshot(r).await)
            }
            Ok(RaftRpc::Removed) => {
                self.removal_notice(sender);
                RaftReply::Ack
            }
            Ok(RaftRpc::Forward(op)) => {
                let res = match op {
                    // A follower's batch joins this peer's own queue, to share an
                    // entry with the writes arriving here.
                    ForwardOp::Commit(batch) => self
                        .inner
                        .batcher
                        .commit_forwarded(batch.0)
                        .await
                        .map(ForwardReply::Outcomes),
                    // A peer that is joining does not know the leader yet: pass it on.
                    op => self.submit(op).await,
                };
                RaftReply::Forward(res.map_err(|e| match e {
                    // The sender asks the (next) leader again, with the same IDs.
                    ConsensusError::NoLeader(_)
                    | ConsensusError::ShuttingDown
                    | ConsensusError::Unanswered { .. } => ForwardError::NotLeader,
                    other => ForwardError::Failed(other.to_string()),
                }))
            }
        };
        encode(&reply)
    }

    /// The voters, sorted by peer ID.
    pub fn peer_nodes(&self) -> Vec<ClusterNode> {
        let m = self.inner.raft.metrics().borrow().membership_config.clone();
        let membership = m.membership();
        let mut nodes: Vec<ClusterNode> = membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).cloned())
            .collect();
        nodes.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        nodes
    }

    /// The peer IDs of the voters, sorted.
    pub fn peers(&self) -> Vec<String> {
        self.peer_nodes().into_iter().map(|n| n.peer_id).collect()
    }

    /// Keeps the libp2p address book in step with the members' addresses, so that
    /// any peer (not only the leader, which dials them for Raft) can reach any other.
    pub fn watch_member_addresses(&self, tasks: &TaskTracker, cancel: CancellationToken) {
        // The server metrics change with the membership, the leader and the
        // vote; the whole metrics with every entry.
        let mut server = self.inner.raft.server_metrics();
        let p2p = self.inner.p2p.clone();
        tasks.spawn(async move {
            let mut known: BTreeSet<String> = BTreeSet::new();
            loop {
                let new: Vec<ClusterNode> = server
                    .borrow_and_update()
                    .membership_config
                    .membership()
                    .nodes()
                    .filter(|(_, n)| !known.contains(&n.addr))
                    .map(|(_, n)| n.clone())
                    .collect();
                for n in new {
                    known.insert(n.addr.clone());
                    if let Some((peer, Some(addr))) = node_peer(&n) {
                        p2p.add_address(peer, addr).await;
                    }
                }
                tokio::select! {
                    r = server.changed() => if r.is_err() { return },
                    _ = cancel.cancelled() => return,
                }
            }
        });
    }

    /// Obeys a notice that this peer was removed only when it comes from the
    /// current leader and this peer's own log has a membership change that
    /// leaves it out (the leader sends the notice once the change is committed;
    /// a peer cut off from replication may never see the final entry). Any other notice, from a
    /// peer that is not the leader or while the membership still holds this peer,
    /// is logged and ignored: removal follows from the membership, never from a
    /// message alone.
    fn removal_notice(&self, sender: &PeerId) {
        let m = self.inner.raft.metrics().borrow().clone();
        let leader = m.current_leader.and_then(|l| self.leader_peer(l));
        // The configuration the membership is moving to: in a joint one (a
        // change under way, its first step committed) the last set.
        let held = m
            .membership_config
            .membership()
            .get_joint_config()
            .last()
            .is_none_or(|target| target.contains(&self.inner.node_id));
        if leader.as_ref() != Some(sender) {
            tracing::warn!(
                %sender,
                leader = ?leader.map(|l| l.to_string()),
                "ignored a removal notice from a peer that is not the leader"
            );
        } else if held {
            tracing::warn!(
                %sender,
                "ignored a removal notice: the membership still holds this peer"
            );
        } else {
            tracing::warn!("the leader removed this peer from the cluster");
            self.inner.removed.cancel();
        }
    }

    /// Fires once this peer was removed from the cluster.
    pub fn removed(&self) -> CancellationToken {
        self.inner.removed.clone()
    }

    /// Fires [`Self::removed`] also when this peer, having been a member, sees
    /// itself leave the membership and that membership is committed (applied
    /// here): an appended change may still be undone by a new leader.
    pub fn watch_removal(&self, tasks: &TaskTracker, cancel: CancellationToken) {
        let removed = self.inner.removed.clone();
        // The server metrics change with the membership, the vote and the
        // leader only; the data metrics (every apply) are watched only while
        // a change that excludes this peer waits to be applied, so that the
        // watch does not wake on every write.
        let mut server = self.inner.raft.server_metrics();
        let mut data = self.inner.raft.data_metrics();
        let id = self.inner.node_id;
        tasks.spawn(async move {
            let mut was_member = false;
            loop {
                let (member, at) = {
                    let m = server.borrow_and_update();
                    (
                        m.membership_config.membership().get_node(&id).is_some(),
                        m.membership_config.log_id().map(|l| l.index),
                    )
                };
                was_member |= member;
                let left = was_member && !member;
                if left
                    && at.is_none_or(|at| {
                        data.borrow_and_update()
                            .last_applied
                            .is_some_and(|applied| applied.index >= at)
                    })
                {
                    tracing::warn!("this peer was removed from the cluster; shutting down");
                    removed.cancel();
                    return;
                }
                tokio::select! {
                    r = server.changed() => if r.is_err() { return },
                    r = data.changed(), if left => if r.is_err() { return },
                    _ = cancel.cancelled() => return,
                }
            }
        });
    }

    /// Builds a snapshot (compacting the log) when at least `threshold` entries
    /// were applied since the last one, looked at every `interval` plus up to as
    /// much again at random so that peers do not all build at once: hashicorp
    /// raft's `snapshot_interval` and `snapshot_threshold`, as upstream uses them.
    pub fn schedule_snapshots(
        &self,
        interval: Duration,
        threshold: u64,
        tasks: &TaskTracker,
        cancel: CancellationToken,
    ) {
        let raft = self.inner.raft.clone();
        let metrics = self.inner.raft.metrics();
        tasks.spawn(async move {
            loop {
                let jitter = interval.mul_f64(rand::random::<f64>());
                tokio::select! {
                    _ = tokio::time::sleep(interval + jitter) => {}
                    _ = cancel.cancelled() => return,
                }
                let due = {
                    let m = metrics.borrow();
                    let applied = m.last_applied.map_or(0, |l| l.index + 1);
                    let snapshot = m.snapshot.map_or(0, |l| l.index + 1);
                    applied >= snapshot + threshold.max(1)
                };
                // A build already under way makes this a no-op.
                if due && let Err(e) = raft.trigger().snapshot().await {
                    tracing::warn!("raft: could not start a snapshot: {e}");
                    return;
                }
            }
        });
    }

    /// Stops Raft; the store is flushed on every write, so nothing is lost.
    pub async fn shutdown(&self) {
        self.inner.batcher.stop();
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }
}

/// Sorts a failed leader-side write: retry elsewhere (not, or no longer, the
/// leader; a membership change under way) or give up.
fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, ClusterNode>>) -> ForwardError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_))
        | RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_),
        )) => ForwardError::NotLeader,
        other => ForwardError::Failed(other.to_string()),
    }
}

fn node_id_of_str(peer_id: &str) -> Result<NodeId, ConsensusError> {
    peer_id
        .parse::<PeerId>()
        .map(|p| node_id_of(&p))
        .map_err(|e| ConsensusError::Config(format!("invalid peer ID {peer_id:?}: {e}")))
}

/// The voters of a new cluster: `me` and the peers of `init_peerset`.
fn initial_members(
    me: &ClusterNode,
    peerset: &[String],
) -> Result<BTreeMap<NodeId, ClusterNode>, ConsensusError> {
    let mut members = BTreeMap::new();
    members.insert(node_id_of_str(&me.peer_id)?, me.clone());
    for a in peerset {
        let addr: Multiaddr = a.parse().map_err(|e| {
            ConsensusError::Config(format!("consensus.raft.init_peerset: {a:?}: {e}"))
        })?;
        let (peer, _) = split_p2p(&addr).ok_or_else(|| {
            ConsensusError::Config(format!(
                "consensus.raft.init_peerset: {a:?} does not end in /p2p/<peer id>"
            ))
        })?;
        if peer.to_string() == me.peer_id {
            continue;
        }
        members.insert(
            node_id_of(&peer),
            ClusterNode {
                peer_id: peer.to_string(),
                addr: a.clone(),
                name: String::new(),
            },
        );
    }
    Ok(members)
}

/// The state machine's apply, timed outside the daemon (`benches/apply.rs`).
#[cfg(feature = "fake-daemon")]
#[doc(hidden)]
pub mod bench {
    use super::*;
    use crate::types::{Cid, Pin, PinOptions};
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    /// What the requests of a run carry.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Kind {
        /// No request ID: nothing recorded (the cost before request IDs counted).
        NoId,
        /// A random request ID each, recorded (a record each) and looked up.
        Id,
        /// A request ID and a condition on the pin (absent), as the cluster
        /// sends: the entry's IDs consecutive, as a peer's batcher numbers
        /// them (one record for the entry).
        IdAndCondition,
    }

    /// Applies `calls` apply calls of `entries` entries of `per_entry` new pins
    /// each to a new state machine in `dir`, keeping request records for
    /// `window` requests; returns the time the calls took.
    pub async fn apply(
        dir: &Path,
        backend: store::Backend,
        kind: Kind,
        window: u64,
        calls: u64,
        entries: u64,
        per_entry: u64,
    ) -> Result<Duration, String> {
        let db = store::open(dir, backend).map_err(|e| e.to_string())?;
        let (tx, _) = tokio::sync::broadcast::channel(16);
        let mut sm = StateMachine::new(
            PinState::new(db.tree("state").map_err(|e| e.to_string())?),
            db.tree("snapshot").map_err(|e| e.to_string())?,
            dir.join("snapshots"),
            tx,
        );
        sm.set_window(window);
        let mut n = 0u64;
        let mut index = 0u64;
        let mut total = Duration::ZERO;
        for _ in 0..calls {
            let mut batch = Vec::with_capacity(entries as usize);
            for _ in 0..entries {
                index += 1;
                let mut reqs = (0..per_entry)
                    .map(|_| {
                        n += 1;
                        let cid = Cid(cid::Cid::new_v1(
                            0x55,
                            // Random keys, as real CIDs are.
                            cid::multihash::Multihash::wrap(
                                0x12,
                                &<sha2::Sha256 as sha2::Digest>::digest(n.to_be_bytes()),
                            )
                            .map_err(|e| e.to_string())?,
                        ));
                        let op = LogOp::Pin(Box::new(Pin::new(cid, PinOptions::default())));
                        Ok(match kind {
                            Kind::NoId => Request {
                                id: None,
                                op,
                                expect: Vec::new(),
                            },
                            Kind::Id => Request::new(op),
                            Kind::IdAndCondition => Request::conditional(
                                op,
                                vec![Expect {
                                    cid,
                                    prior: Prior::Absent,
                                }],
                            ),
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                if kind == Kind::IdAndCondition {
                    let base = types::new_run_base();
                    for (r, k) in reqs.iter_mut().zip(0u128..) {
                        r.id = Some(base + k);
                    }
                }
                batch.push(Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                    payload: EntryPayload::Normal(LogBatch(reqs)),
                });
            }
            let t = Instant::now();
            sm.apply(batch).await.map_err(|e| e.to_string())?;
            total += t.elapsed();
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GoDuration;
    use crate::p2p::P2pConfig;
    use crate::types::{Cid, Pin, PinOptions};
    use std::sync::atomic::Ordering;

    /// One in-process peer: its host, its consensus, and what it owns.
    struct Node {
        consensus: Consensus,
        events: tokio::sync::broadcast::Receiver<StateEvent>,
        tasks: TaskTracker,
        cancel: CancellationToken,
        _dir: tempfile::TempDir,
    }

    /// `n` peers over libp2p on 127.0.0.1, bootstrapped together.
    async fn start_peers(n: usize) -> Vec<Node> {
        let mut hosts = Vec::new();
        for _ in 0..n {
            let tasks = TaskTracker::new();
            let cancel = CancellationToken::new();
            let (p2p, inbound) = P2p::start(
                P2pConfig {
                    keypair: libp2p_identity::Keypair::generate_ed25519(),
                    secret: Some([7; 32]),
                    listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
                    request_timeout: Duration::from_secs(10),
                    peerstore: None,
                    pipes: true,
                },
                &tasks,
                cancel.clone(),
            )
            .await
            .unwrap();
            let addr = p2p.listen_addrs().await[0].to_string();
            hosts.push((p2p, inbound, tasks, cancel, addr));
        }
        let full: Vec<String> = hosts
            .iter()
            .map(|(p, _, _, _, a)| format!("{a}/p2p/{}", p.peer_id()))
            .collect();
        let mut nodes = Vec::new();
        for (i, (p2p, mut inbound, tasks, cancel, addr)) in hosts.into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let cfg = RaftConfig {
                init_peerset: full.clone(),
                heartbeat_timeout: GoDuration(Duration::from_millis(100)),
                election_timeout: GoDuration(Duration::from_millis(500)),
                wait_for_leader_timeout: GoDuration(Duration::from_secs(10)),
                network_timeout: GoDuration(Duration::from_secs(2)),
                // Small, so that a snapshot openraft made on its own would show.
                snapshot_threshold: 10,
                ..Default::default()
            };
            for (j, a) in full.iter().enumerate() {
                if let (true, Some((peer, addr))) = (j != i, split_p2p(&a.parse().unwrap())) {
                    p2p.add_address(peer, addr).await;
                }
            }
            let (tx, events) = tokio::sync::broadcast::channel(1024);
            let consensus = Consensus::start(ConsensusOptions {
                dir: &dir.path().join("raft"),
                p2p: p2p.clone(),
                node: ClusterNode {
                    peer_id: p2p.peer_id().to_string(),
                    addr,
                    name: format!("peer{i}"),
                },
                cfg: &cfg,
                bootstrap: &[],
                events: tx,
            })
            .await
            .unwrap();
            let (c, stop, t) = (consensus.clone(), cancel.clone(), tasks.clone());
            tasks.spawn(async move {
                loop {
                    let req = tokio::select! {
                        r = inbound.recv() => r,
                        _ = stop.cancelled() => None,
                    };
                    let Some(req) = req else { break };
                    let c = c.clone();
                    t.spawn(async move {
                        let _ = req.reply.send(c.handle_rpc(&req.peer, &req.payload).await);
                    });
                }
            });
            nodes.push(Node {
                consensus,
                events,
                tasks,
                cancel,
                _dir: dir,
            });
        }
        nodes
    }

    async fn stop(nodes: Vec<Node>) {
        for n in nodes {
            n.consensus.shutdown().await;
            n.cancel.cancel();
            n.tasks.close();
            let _ = tokio::time::timeout(Duration::from_secs(10), n.tasks.wait()).await;
        }
    }

    fn cid(n: u64) -> Cid {
        Cid(cid::Cid::new_v1(
            0x55,
            cid::multihash::Multihash::wrap(0x00, &n.to_be_bytes()).unwrap(),
        ))
    }

    /// Snapshots come from `schedule_snapshots` only: none while its check has
    /// not run, one once it runs with enough entries applied, none again until
    /// `threshold` more are.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshots_are_made_on_the_schedule_and_past_the_threshold() {
        let nodes = start_peers(1).await;
        let c = nodes[0].consensus.clone();
        c.wait_ready().await.unwrap();
        let snapshot = || c.inner.raft.metrics().borrow().snapshot.map(|l| l.index);
        let pin = |n: u64| LogOp::Pin(Box::new(Pin::new(cid(n), PinOptions::default())));
        for n in 0..20 {
            c.commit(pin(n)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(snapshot(), None, "a snapshot before any scheduled check");

        let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
        c.schedule_snapshots(Duration::from_millis(20), 10, &tasks, cancel.clone());
        let applied = c.info().applied_index;
        let deadline = Instant::now() + Duration::from_secs(10);
        while snapshot().is_none_or(|i| i < applied) {
            assert!(Instant::now() < deadline, "no snapshot: {:?}", snapshot());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let first = snapshot();
        for n in 100..105 {
            c.commit(pin(n)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            snapshot(),
            first,
            "a snapshot with fewer new entries than the threshold"
        );
        cancel.cancel();
        tasks.close();
        tasks.wait().await;
        stop(nodes).await;
    }

    /// Three peers, each ready, and one that does not lead.
    async fn three_ready_with_a_follower() -> (Vec<Node>, Consensus) {
        let nodes = start_peers(3).await;
        let leader = nodes[0].consensus.wait_for_leader().await.unwrap();
        for n in &nodes {
            n.consensus.wait_ready().await.unwrap();
        }
        let follower = nodes
            .iter()
            .find(|n| n.consensus.node_id() != leader)
            .unwrap()
            .consensus
            .clone();
        (nodes, follower)
    }

    /// A leader that applies a membership without itself (`peers rm` of its
    /// own ID) stops: `removed` fires with no notice from anyone; its writes
    /// before that, each a change of the metrics, do not fire it. (A removed
    /// follower may never learn that the change is committed: the leader's
    /// notice covers it, see `removal_notice`.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_that_applies_a_membership_without_itself_stops() {
        let (nodes, follower) = three_ready_with_a_follower().await;
        let leader_id = follower.wait_for_leader().await.unwrap();
        let leader = nodes
            .iter()
            .find(|n| n.consensus.node_id() == leader_id)
            .unwrap()
            .consensus
            .clone();
        let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
        leader.watch_removal(&tasks, cancel.clone());
        let removed = leader.removed();
        for n in 0..5 {
            let pin = Pin::new(cid(100 + n), PinOptions::default());
            leader.commit(LogOp::Pin(Box::new(pin))).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!removed.is_cancelled(), "fired while a member");

        // Straight through openraft: `remove_peer` would also send notices.
        leader
            .inner
            .raft
            .change_membership(
                openraft::ChangeMembers::RemoveVoters(BTreeSet::from([leader_id])),
                false,
            )
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), removed.cancelled())
            .await
            .expect("the removed leader did not see its removal");
        cancel.cancel();
        tasks.close();
        tasks.wait().await;
        stop(nodes).await;
    }

    /// The duplicate-reply test: a follower's forwarded write is committed by
    /// the leader, its reply is lost, and the follower sends it again with the
    /// same request ID. It is applied once and the retry gets the first result.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_forwarded_write_whose_reply_is_lost_is_applied_once() {
        let (mut nodes, follower) = three_ready_with_a_follower().await;
        let drops = &follower.inner.drop_commit_replies;
        // The retry is the subject here: the follower's own apply must not
        // answer first.
        follower
            .inner
            .only_leader_replies
            .store(true, Ordering::SeqCst);

        // A pin whose reply is lost: the retry answers "did not exist" (the
        // first application's result), not "existed" (its own).
        drops.store(1, Ordering::SeqCst);
        let pin = Pin::new(cid(1), PinOptions::default());
        let c = follower.commit(LogOp::Pin(Box::new(pin))).await.unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 0, "no reply was dropped");
        assert_eq!(c.outcome, Outcome::Applied { existed: false }, "{c:?}");
        let first_pin = c.index;

        // An unpin whose reply is lost: the retry answers "existed".
        drops.store(1, Ordering::SeqCst);
        let c = follower.commit(LogOp::Unpin(cid(1))).await.unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        assert_eq!(c.outcome, Outcome::Applied { existed: true }, "{c:?}");

        // Both retries made entries of their own after the first ones, and
        // every peer applied them: each change is seen once, on every peer.
        follower.wait_ready().await.unwrap();
        let applied = follower.info().applied_index;
        assert!(applied > c.index, "the retries were not committed");
        for n in nodes.iter_mut() {
            n.consensus.wait_applied(applied).await.unwrap();
            assert!(!n.consensus.state().has(&cid(1)).unwrap());
            let mut pinned = 0;
            let mut unpinned = 0;
            while let Ok(e) = n.events.try_recv() {
                match e {
                    StateEvent::Pinned { pin, .. } if pin.cid == cid(1) => pinned += 1,
                    StateEvent::Unpinned(c) if c == cid(1) => unpinned += 1,
                    _ => {}
                }
            }
            assert_eq!((pinned, unpinned), (1, 1), "changes seen on a peer");
        }
        assert!(first_pin < c.index);
        stop(nodes).await;
    }

    /// A follower's write is answered by its own apply of the entry: with the
    /// leader's reply lost, it is answered without a retry (a retry would make
    /// a second entry) and with the outcome the leader computed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_is_answered_by_its_own_apply() {
        let (nodes, follower) = three_ready_with_a_follower().await;
        let before = follower.info().applied_index;
        follower
            .inner
            .drop_commit_replies
            .store(1, Ordering::SeqCst);
        let pin = Pin::new(cid(2), PinOptions::default());
        let c = follower.commit(LogOp::Pin(Box::new(pin))).await.unwrap();
        assert_eq!(c.outcome, Outcome::Applied { existed: false }, "{c:?}");
        assert!(follower.state().has(&cid(2)).unwrap());
        // Its reply lost or not, the write made one entry: nothing was retried.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            follower.info().applied_index,
            c.index,
            "a retry made an entry"
        );
        assert!(c.index > before);

        let c = follower.commit(LogOp::Unpin(cid(2))).await.unwrap();
        assert_eq!(c.outcome, Outcome::Applied { existed: true }, "{c:?}");
        stop(nodes).await;
    }
}
