//! The cluster component: turns API calls into consensus operations and gathers
//! status, tying the consensus, the pin tracker and the IPFS connector together.

pub mod allocator;
pub mod informer;
pub mod monitor;
mod path;
pub mod rpc;
pub mod status;
pub mod swarm;
pub mod tracker;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::OnceCell;

pub use informer::Informer;
pub use monitor::PeerMonitor;
pub use path::{InvalidPath, PinArg, parse_pin_arg};
pub use tracker::{LocalStatus, OpKind, OpState, Phase, PinTracker, TrackerCounts};

use crate::config::{ClusterConfig, check_replication};
use crate::ipfs::{IpfsConnector, IpfsError};
use crate::p2p::{P2p, PeerId, Protocol};
use crate::raft::{
    ClusterNode, Committed, Consensus, ConsensusError, Expect, LogOp, Outcome, Prior, Request,
};
use crate::state::PageFrom;
use crate::state::StateError;
use crate::types::TrackerStatus;
use crate::types::{
    Cid, ClusterId, ConnectGraph, GlobalPinInfo, IpfsId, Metric, Pin, PinInfoShort, PinOptions,
    RepoGc, RepoGcKey, TrackerStatusFilter,
};
use rpc::{ClusterRpc, ClusterRpcReply, PageItem, PeerConnections, PeerStatusPage};
pub use status::StatusChunk;

/// The RPC protocol name reported in `/id`.
pub const RPC_PROTOCOL: &str = "/ipfscluster/rs/0.1/rpc";

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The CID is not in the pinset (upstream's `state.ErrNotFound`).
    #[error("pin is not part of the pinset")]
    NotFound,
    /// A bad argument.
    #[error("{0}")]
    InvalidArgument(String),
    /// A bad path.
    #[error(transparent)]
    InvalidPath(#[from] InvalidPath),
    /// Not enough peers to place the pin.
    #[error(transparent)]
    Allocation(#[from] allocator::AllocationError),
    /// Consensus failed.
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    /// The daemon failed.
    #[error(transparent)]
    Ipfs(#[from] IpfsError),
    /// The state could not be read.
    #[error(transparent)]
    State(#[from] StateError),
    /// Other writes to the same pins kept changing them between this write's
    /// decision and its commit; nothing was changed by it.
    #[error("{cid} changed under {attempts} attempts to write it: try again")]
    Conflict {
        /// The pin written.
        cid: Cid,
        /// How many times the write was decided and committed.
        attempts: usize,
    },
}

/// How many times a conditional write is decided again after a conflict (another
/// write to the same pin committed first) before the caller is told.
const CONFLICT_ATTEMPTS: usize = 10;

/// What a pin write decides on the pin as it is: its options and any further
/// conditions, or `None` to write nothing.
type PinDecision = Option<(PinOptions, Vec<Expect>)>;

/// A peer's cluster component.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    peer_id: String,
    p2p: P2p,
    cfg: ClusterConfig,
    allocate_by: Vec<String>,
    monitor: PeerMonitor,
    consensus: Consensus,
    tracker: PinTracker,
    ipfs: IpfsConnector,
    ipfs_id: OnceCell<IpfsId>,
}

impl Cluster {
    /// Assembles the component from the running parts.
    pub fn new(
        p2p: P2p,
        cfg: ClusterConfig,
        allocate_by: Vec<String>,
        consensus: Consensus,
        tracker: PinTracker,
        ipfs: IpfsConnector,
    ) -> Self {
        Cluster {
            inner: Arc::new(Inner {
                peer_id: p2p.peer_id().to_string(),
                p2p,
                allocate_by,
                monitor: PeerMonitor::default(),
                cfg,
                consensus,
                tracker,
                ipfs,
                ipfs_id: OnceCell::new(),
            }),
        }
    }

    /// Bytes this peer's cluster protocols sent and received, per protocol.
    pub fn bandwidth(&self) -> crate::types::BandwidthByProtocol {
        self.inner.p2p.bandwidth()
    }

    /// This peer's ID.
    pub fn peer_id(&self) -> &str {
        &self.inner.peer_id
    }

    /// The pin tracker.
    pub fn tracker(&self) -> &PinTracker {
        &self.inner.tracker
    }

    /// The consensus component.
    pub fn consensus(&self) -> &Consensus {
        &self.inner.consensus
    }

    /// The IPFS connector.
    pub fn ipfs(&self) -> &IpfsConnector {
        &self.inner.ipfs
    }

    /// The peer monitor.
    pub fn monitor(&self) -> &PeerMonitor {
        &self.inner.monitor
    }

    /// The `cluster` configuration section.
    pub fn config(&self) -> &ClusterConfig {
        &self.inner.cfg
    }

    /// Resolves a pin argument (CID or path) to a CID, asking the daemon for paths.
    pub async fn resolve(&self, arg: &str) -> Result<Cid, ClusterError> {
        match parse_pin_arg(arg)? {
            PinArg::Cid(c) => Ok(c),
            PinArg::Path(p) => Ok(self.inner.ipfs.resolve(&p).await?),
        }
    }

    /// Pins `cid` in the cluster with `options`; returns the pin as committed.
    pub async fn pin(
        &self,
        cid: Cid,
        options: PinOptions,
    ) -> Result<(Pin, Committed), ClusterError> {
        match options.pin_update {
            // Upstream's `pin-update` option: a pin update that keeps the old pin.
            Some(from) if from != cid => self.pin_update(from, cid, options, false).await,
            _ => self.pin_excluding(cid, options, &[], false).await,
        }
    }

    /// The allocations within `min..=max` of a pin allocated to `current`, never
    /// new ones on `exclude`; with `evict`, excluded peers also lose the
    /// allocations they have.
    fn allocations(
        &self,
        current: &[String],
        options: &PinOptions,
        (min, max): (i32, i32),
        exclude: &[String],
        evict: bool,
    ) -> Result<Vec<String>, ClusterError> {
        if min == -1 {
            return Ok(Vec::new());
        }
        let current = current.to_vec();
        let peers: Vec<String> = self
            .inner
            .consensus
            .peers()
            .into_iter()
            .filter(|p| !exclude.contains(p))
            .collect();
        let metrics = self
            .inner
            .monitor
            .peer_metrics(&peers, &self.inner.allocate_by);
        // Excluded peers have no metrics here, so they count as unhealthy: they keep
        // their place while enough healthy replicas remain, as upstream.
        let current: Vec<String> = if evict {
            current
                .into_iter()
                .filter(|p| !exclude.contains(p))
                .collect()
        } else {
            current
        };
        Ok(allocator::allocate(&allocator::Request {
            current: &current,
            priority: &options.user_allocations,
            min: usize::try_from(min).unwrap_or(0),
            max: usize::try_from(max).unwrap_or(0),
            allocate_by: &self.inner.allocate_by,
            metrics: &metrics,
        })?)
    }

    async fn pin_excluding(
        &self,
        cid: Cid,
        options: PinOptions,
        exclude: &[String],
        evict: bool,
    ) -> Result<(Pin, Committed), ClusterError> {
        self.pin_decided(cid, exclude, evict, |_| {
            Ok(Some((options.clone(), Vec::new())))
        })
        .await?
        .ok_or(ClusterError::NotFound)
    }

    /// Re-places the pin of `cid` as it is now, with its own options; `None`
    /// when it is no longer pinned.
    async fn repin_current(
        &self,
        cid: Cid,
        exclude: &[String],
        evict: bool,
    ) -> Result<Option<(Pin, Committed)>, ClusterError> {
        self.pin_decided(cid, exclude, evict, |cur| {
            Ok(cur.map(|p| (p.options.clone(), Vec::new())))
        })
        .await
    }

    /// Pins `cid` as `decide` says from the pin as it is, conditional on the
    /// pin (and whatever `decide` adds) being unchanged when the entry is
    /// applied; decided again on the newer state after a conflict.
    async fn pin_decided(
        &self,
        cid: Cid,
        exclude: &[String],
        evict: bool,
        mut decide: impl FnMut(Option<&Pin>) -> Result<PinDecision, ClusterError>,
    ) -> Result<Option<(Pin, Committed)>, ClusterError> {
        for _ in 0..CONFLICT_ATTEMPTS {
            // A point read, here on the runtime's worker: through a blocking
            // thread (each pin's own hand-off, 64 clients at once) it cost
            // 1.16x the CPU a pin at 64 connections (scale_ingest, one run).
            let current = self.inner.consensus.state().get_with_digest(&cid)?;
            let existing = current.as_ref().map(|(p, _)| p);
            let Some((options, mut expect)) = decide(existing)? else {
                return Ok(None);
            };
            let pin = self.prepare_pin(cid, options, existing, exclude, evict)?;
            expect.push(Expect {
                cid,
                prior: current.map_or(Prior::Absent, |(_, d)| Prior::Digest(d)),
            });
            let committed = self
                .inner
                .consensus
                .commit_request(Request::conditional(
                    LogOp::Pin(Box::new(pin.clone())),
                    expect,
                ))
                .await?;
            match committed.outcome {
                Outcome::Applied { .. } => return Ok(Some((pin, committed))),
                // The commit returned once the conflicting entry was applied
                // here: the next read sees what changed.
                Outcome::Conflict => {}
            }
        }
        Err(ClusterError::Conflict {
            cid,
            attempts: CONFLICT_ATTEMPTS,
        })
    }

    /// The pin to write for `cid` with `options`, over the pin `existing`.
    fn prepare_pin(
        &self,
        cid: Cid,
        options: PinOptions,
        existing: Option<&Pin>,
        exclude: &[String],
        evict: bool,
    ) -> Result<Pin, ClusterError> {
        let (mut min, mut max) = (
            options.replication_factor_min,
            options.replication_factor_max,
        );
        if min == 0 {
            min = self.inner.cfg.replication_factor_min;
        }
        if max == 0 {
            max = self.inner.cfg.replication_factor_max;
        }
        check_replication(min, max).map_err(ClusterError::InvalidArgument)?;
        if let Some(t) = options.expire_at
            && t <= Utc::now()
        {
            return Err(ClusterError::InvalidArgument(
                "expiration date is in the past".into(),
            ));
        }
        let mut pin = Pin::new(cid, options);
        pin.options.replication_factor_min = min;
        pin.options.replication_factor_max = max;
        if let Some(existing) = existing
            && existing.mode() == crate::types::PinMode::Recursive
            && pin.mode() == crate::types::PinMode::Direct
        {
            return Err(ClusterError::InvalidArgument(format!(
                "cannot pin {cid} as direct: it is already pinned recursively"
            )));
        }
        let current = existing.map(|p| p.allocations.as_slice()).unwrap_or(&[]);
        // An empty allocation list means "everywhere", as upstream encodes -1/-1.
        pin.allocations = self.allocations(current, &pin.options, (min, max), exclude, evict)?;
        // User allocations are a preference for this allocation only (upstream does
        // not persist them).
        pin.options.user_allocations.clear();
        Ok(pin)
    }

    /// Unpins `cid`; fails with [`ClusterError::NotFound`] when it is not in the
    /// pinset. Linearizable: the unpin applies only to the pin this peer read
    /// (else it is decided again), and "not found" is answered from a state at
    /// least as recent as the leader's commit index when the call began.
    pub async fn unpin(&self, cid: Cid) -> Result<(Pin, Committed), ClusterError> {
        // Whether the local state is known to be as recent as a commit made
        // during this call.
        let mut fresh = false;
        for _ in 0..CONFLICT_ATTEMPTS {
            match self.inner.consensus.state().get_with_digest(&cid)? {
                Some((pin, digest)) => {
                    let committed = self
                        .inner
                        .consensus
                        .commit_request(Request::conditional(
                            LogOp::Unpin(cid),
                            vec![Expect {
                                cid,
                                prior: Prior::Digest(digest),
                            }],
                        ))
                        .await?;
                    match committed.outcome {
                        Outcome::Applied { .. } => return Ok((pin, committed)),
                        // Changed or removed by another write, applied here now.
                        Outcome::Conflict => fresh = true,
                    }
                }
                None if fresh => return Err(ClusterError::NotFound),
                // This peer may lag behind: read again once it applied what the
                // leader had committed.
                None => {
                    self.inner.consensus.wait_ready().await?;
                    fresh = true;
                }
            }
        }
        Err(ClusterError::Conflict {
            cid,
            attempts: CONFLICT_ATTEMPTS,
        })
    }

    /// The pin for `cid`.
    pub async fn pin_get(&self, cid: &Cid) -> Result<Pin, ClusterError> {
        self.inner
            .consensus
            .state()
            .get_blocking(cid)
            .await?
            .ok_or(ClusterError::NotFound)
    }

    /// The daemon's identity (cached once known).
    pub async fn ipfs_id(&self) -> IpfsId {
        if let Some(id) = self.inner.ipfs_id.get() {
            return id.clone();
        }
        match self.inner.ipfs.id().await {
            Ok(id) => self
                .inner
                .ipfs_id
                .get_or_init(|| async { id })
                .await
                .clone(),
            Err(e) => IpfsId {
                error: e.to_string(),
                ..Default::default()
            },
        }
    }

    /// Upstream's `ID` of this peer.
    pub async fn id(&self) -> ClusterId {
        let nodes = self.inner.consensus.peer_nodes();
        ClusterId {
            id: self.inner.peer_id.clone(),
            addresses: self
                .inner
                .p2p
                .listen_addrs()
                .await
                .iter()
                .map(|a| a.to_string())
                .collect(),
            cluster_peers: nodes.iter().map(|n| n.peer_id.clone()).collect(),
            cluster_peers_addresses: nodes
                .iter()
                .filter(|n| n.peer_id != self.inner.peer_id && !n.addr.is_empty())
                .map(|n| n.addr.clone())
                .collect(),
            version: crate::VERSION.to_string(),
            commit: String::new(),
            rpc_protocol_version: RPC_PROTOCOL.into(),
            error: String::new(),
            ipfs: self.ipfs_id().await,
            peername: self.inner.cfg.peername.clone(),
        }
    }

    async fn short(&self, st: LocalStatus) -> PinInfoShort {
        let ipfs = self.ipfs_id().await;
        PinInfoShort {
            peername: self.inner.cfg.peername.clone(),
            ipfs_peer_id: ipfs.id,
            ipfs_peer_addresses: ipfs.addresses,
            status: st.status,
            timestamp: st.timestamp,
            error: st.error,
            attempt_count: st.attempt_count,
            priority_pin: false,
        }
    }

    async fn rpc(&self, peer: &str, req: &ClusterRpc) -> Result<ClusterRpcReply, String> {
        let pid: PeerId = peer.parse().map_err(|e| format!("invalid peer ID: {e}"))?;
        let bytes = self
            .inner
            .p2p
            .request(pid, Protocol::Rpc, crate::raft::encode_payload(req))
            .await
            .map_err(|e| e.to_string())?;
        crate::raft::decode_payload(&bytes)
    }

    /// `req` on `peer`, answered with the reply `pick` accepts; an error reply, or
    /// a reply of another kind, is an error.
    async fn rpc_as<T>(
        &self,
        peer: &str,
        req: &ClusterRpc,
        pick: impl FnOnce(ClusterRpcReply) -> Result<T, ClusterRpcReply>,
    ) -> Result<T, String> {
        match self.rpc(peer, req).await? {
            ClusterRpcReply::Error(e) => Err(e),
            reply => pick(reply).map_err(|other| format!("unexpected reply {other:?}")),
        }
    }

    fn unreachable(node: &ClusterNode, error: String) -> PinInfoShort {
        PinInfoShort {
            peername: if node.name.is_empty() {
                node.peer_id.clone()
            } else {
                node.name.clone()
            },
            ipfs_peer_id: String::new(),
            ipfs_peer_addresses: Vec::new(),
            status: TrackerStatus::ClusterError,
            timestamp: Utc::now(),
            error,
            attempt_count: 0,
            priority_pin: false,
        }
    }

    /// This peer's status of `cid` (what other peers ask for).
    pub async fn status_local(&self, cid: &Cid) -> PinInfoShort {
        let st = self.inner.tracker.status(cid).await;
        self.short(st).await
    }

    /// The status of `cid` on every peer (or only here, with `local`).
    pub async fn status(&self, cid: &Cid, local: bool) -> Result<GlobalPinInfo, ClusterError> {
        self.ask_about(cid, local, ClusterRpc::Status(*cid), || {
            self.status_local(cid)
        })
        .await
    }

    /// Asks each peer (or only this one) about `cid`: `here` answers for this peer,
    /// `req` for the others; a peer that does not answer shows `cluster_error`.
    async fn ask_about<'a, F, Fut>(
        &'a self,
        cid: &Cid,
        local: bool,
        req: ClusterRpc,
        here: F,
    ) -> Result<GlobalPinInfo, ClusterError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = PinInfoShort> + 'a,
    {
        let pin = self.inner.consensus.state().get_blocking(cid).await?;
        let mut g = GlobalPinInfo::new(
            *cid,
            pin.as_ref()
                .map(|p| (&p.options, p.allocations.as_slice(), p.timestamp)),
        );
        let nodes = self.local_or_all(local);
        let (req, here) = (&req, &here);
        let asks = nodes.iter().map(|node| async move {
            let info = if node.peer_id == self.inner.peer_id {
                here().await
            } else {
                let status = self.rpc_as(&node.peer_id, req, |r| match r {
                    ClusterRpcReply::Status(s) => Ok(*s),
                    other => Err(other),
                });
                status.await.unwrap_or_else(|e| Self::unreachable(node, e))
            };
            (node.peer_id.clone(), info)
        });
        g.peer_map = futures::future::join_all(asks).await.into_iter().collect();
        Ok(g)
    }

    /// This peer's status of each of `cids` (what other peers ask for).
    pub async fn status_many_local(&self, cids: &[Cid]) -> Vec<PinInfoShort> {
        let mut out = Vec::with_capacity(cids.len());
        for st in self.inner.tracker.status_many(cids).await {
            out.push(self.short(st).await);
        }
        out
    }

    /// This peer's operations on CIDs outside the pinset.
    pub async fn orphans_local(&self) -> Vec<(Cid, PinInfoShort)> {
        let mut out = Vec::new();
        for (cid, st) in self.inner.tracker.orphans() {
            out.push((cid, self.short(st).await));
        }
        out
    }

    async fn status_many_on(&self, node: &ClusterNode, cids: &[Cid]) -> Vec<PinInfoShort> {
        if node.peer_id == self.inner.peer_id {
            return self.status_many_local(cids).await;
        }
        let failed = |e: String| vec![Self::unreachable(node, e); cids.len()];
        let req = ClusterRpc::StatusMany(cids.to_vec());
        self.rpc_as(&node.peer_id, &req, |r| match r {
            ClusterRpcReply::Statuses(v) if v.len() == cids.len() => Ok(v),
            other => Err(other),
        })
        .await
        .unwrap_or_else(failed)
    }

    /// This peer's status of a page of CIDs, compactly (what other peers ask for).
    pub async fn status_page_local(&self, cids: &[Cid]) -> PeerStatusPage {
        let at = Utc::now();
        let statuses = self.inner.tracker.status_many(cids).await;
        self.page_of(at, statuses).await
    }

    async fn page_of(
        &self,
        at: chrono::DateTime<Utc>,
        statuses: Vec<LocalStatus>,
    ) -> PeerStatusPage {
        let ipfs = self.ipfs_id().await;
        PeerStatusPage {
            peername: self.inner.cfg.peername.clone(),
            ipfs_peer_id: ipfs.id,
            ipfs_peer_addresses: ipfs.addresses,
            at,
            items: statuses
                .into_iter()
                .map(|st| {
                    // Statuses computed now take the page's time; an operation keeps its own.
                    let ts = (st.timestamp < at).then_some(st.timestamp);
                    PageItem(st.status, st.attempt_count, ts, st.error)
                })
                .collect(),
        }
    }

    /// `node`'s status of a page; an error when it did not answer.
    async fn status_page_on(
        &self,
        node: &ClusterNode,
        pins: &[Pin],
        cids: &[Cid],
    ) -> Result<PeerStatusPage, String> {
        if node.peer_id == self.inner.peer_id {
            // The page was just read here: no second read of the same pins.
            let at = Utc::now();
            let found: Vec<Option<&Pin>> = pins.iter().map(Some).collect();
            let statuses = self.inner.tracker.status_of(cids, &found).await;
            return Ok(self.page_of(at, statuses).await);
        }
        let req = ClusterRpc::StatusPage(cids.to_vec());
        match self.rpc(&node.peer_id, &req).await {
            Ok(ClusterRpcReply::StatusPage(p)) if p.items.len() == cids.len() => Ok(p),
            // A peer that answered, but not with a compact page (an older peer),
            // is asked for the full form; one that did not answer is not asked again.
            Ok(_) => Ok(PeerStatusPage::from_infos(
                self.status_many_on(node, cids).await,
            )),
            Err(e) => Err(e),
        }
    }

    fn unreachable_page(node: &ClusterNode, error: String, n: usize) -> PeerStatusPage {
        PeerStatusPage::from_infos(vec![Self::unreachable(node, error); n])
    }

    /// The status of every CID on every peer (or only here), as chunks in order:
    /// the pinset is read a page at a time (one read view each, off the async
    /// threads) and every peer answers for that page while the previous one is
    /// written, so memory stays flat however many pins there are. Filtering is
    /// left to the reader of the chunks. The stream ends early if the receiver goes away.
    pub fn status_pages(
        &self,
        local: bool,
        tasks: &tokio_util::task::TaskTracker,
    ) -> tokio::sync::mpsc::Receiver<Result<StatusChunk, String>> {
        use futures::StreamExt;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let this = self.clone();
        tasks.spawn(async move {
            let mut nodes = this.local_or_all(local);
            nodes.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
            let state = this.inner.consensus.state().clone();
            let pages = futures::stream::unfold(Some(PageFrom::start()), move |from| {
                let state = state.clone();
                async move {
                    let f = from?;
                    let read = state
                        .blocking(move |state| state.page(&f, tracker::STATUS_PAGE))
                        .await;
                    match read {
                        Ok((pins, _)) if pins.is_empty() => None,
                        Ok((pins, next)) => Some((Ok(pins), next)),
                        Err(e) => Some((Err(e.to_string()), None)),
                    }
                }
            });
            let (this2, nodes2) = (this.clone(), nodes.clone());
            // Peers that did not answer a page, and why: later pages are not asked
            // of them (one timeout per listing, not one per page), as upstream's
            // one stream per peer fails once.
            let down: Arc<std::sync::Mutex<HashMap<String, String>>> = Arc::default();
            let chunks = pages
                .map(move |page| {
                    let (this, nodes, down) = (this2.clone(), nodes2.clone(), down.clone());
                    async move {
                        let pins = page?;
                        let cids: Vec<Cid> = pins.iter().map(|p| p.cid).collect();
                        let answers = futures::future::join_all(nodes.iter().map(|n| {
                            let known = crate::sync::lock(&down).get(&n.peer_id).cloned();
                            let (this, pins, cids, down) = (&this, &pins, &cids, &down);
                            async move {
                                if let Some(e) = known {
                                    return Self::unreachable_page(n, e, cids.len());
                                }
                                match this.status_page_on(n, pins, cids).await {
                                    Ok(page) => page,
                                    Err(e) => {
                                        crate::sync::lock(down)
                                            .insert(n.peer_id.clone(), e.clone());
                                        Self::unreachable_page(n, e, cids.len())
                                    }
                                }
                            }
                        }))
                        .await;
                        let peers = nodes.iter().map(|n| n.peer_id.clone()).zip(answers);
                        Ok(StatusChunk::Page {
                            pins,
                            peers: peers.collect(),
                        })
                    }
                })
                .buffered(2);
            let mut chunks = std::pin::pin!(chunks);
            while let Some(chunk) = chunks.next().await {
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
            // Operations on CIDs no longer in the pinset (unpins) come last.
            let mut orphans: BTreeMap<Cid, GlobalPinInfo> = BTreeMap::new();
            for node in &nodes {
                let items = if node.peer_id == this.inner.peer_id {
                    this.orphans_local().await
                } else {
                    match this.rpc(&node.peer_id, &ClusterRpc::Orphans).await {
                        Ok(ClusterRpcReply::Items(v)) => v,
                        _ => Vec::new(),
                    }
                };
                for (cid, info) in items {
                    orphans
                        .entry(cid)
                        .or_insert_with(|| GlobalPinInfo::new(cid, None))
                        .peer_map
                        .insert(node.peer_id.clone(), info);
                }
            }
            if !orphans.is_empty() {
                let _ = tx
                    .send(Ok(StatusChunk::Orphans(orphans.into_values().collect())))
                    .await;
            }
        });
        rx
    }

    /// The status of every CID, collected (for callers that want a list).
    pub async fn status_all(
        &self,
        filter: TrackerStatusFilter,
        local: bool,
    ) -> Result<Vec<GlobalPinInfo>, ClusterError> {
        let tasks = tokio_util::task::TaskTracker::new();
        let mut rx = self.status_pages(local, &tasks);
        let mut out = Vec::new();
        while let Some(chunk) = rx.recv().await {
            out.extend(
                chunk
                    .map_err(ClusterError::InvalidArgument)?
                    .into_infos(filter),
            );
        }
        tasks.close();
        tasks.wait().await;
        Ok(out)
    }

    /// `ID` of every peer; one that does not answer carries its error.
    pub async fn peers(&self) -> Vec<ClusterId> {
        let nodes = self.inner.consensus.peer_nodes();
        let asks = nodes.iter().map(|node| async move {
            if node.peer_id == self.inner.peer_id {
                return self.id().await;
            }
            let id = self.rpc_as(&node.peer_id, &ClusterRpc::Id, |r| match r {
                ClusterRpcReply::Id(id) => Ok(*id),
                other => Err(other),
            });
            id.await.unwrap_or_else(|e| ClusterId {
                id: node.peer_id.clone(),
                peername: node.name.clone(),
                error: e,
                ..Default::default()
            })
        });
        futures::future::join_all(asks).await
    }

    /// Removes `peer_id` from the cluster.
    pub async fn peer_remove(&self, peer_id: &str) -> Result<(), ClusterError> {
        if peer_id.parse::<PeerId>().is_err() {
            return Err(ClusterError::InvalidArgument(format!(
                "invalid peer ID {peer_id:?}"
            )));
        }
        // As upstream, the pins allocated to the peer move to others first.
        let exclude = vec![peer_id.to_string()];
        let mut from = Some(PageFrom::start());
        while let Some(f) = from {
            let (cids, next) = self.allocated_page(f, peer_id).await?;
            from = next;
            for cid in cids {
                if let Err(e) = self.repin_current(cid, &exclude, true).await {
                    tracing::warn!(%cid, "moving a pin off {peer_id}: {e}");
                }
            }
        }
        Ok(self.inner.consensus.remove_peer(peer_id).await?)
    }

    /// The pins allocated to `peer` in a page of the pinset from `from`, read
    /// on a blocking thread (only each pin's allocations), and where the next
    /// page starts: callers walk the pinset a page at a time, never holding it.
    async fn allocated_page(
        &self,
        from: PageFrom,
        peer: &str,
    ) -> Result<(Vec<Cid>, Option<PageFrom>), StateError> {
        let peer = peer.to_string();
        self.inner
            .consensus
            .state()
            .blocking(move |state| state.allocated_to(&from, &peer))
            .await
    }

    /// Re-allocates the pins of a peer whose ping expired, when this peer is the live
    /// peer XOR-closest to the CID (so exactly one peer does it) and the pin's healthy
    /// allocations fell below its minimum. Returns the CIDs re-pinned.
    pub async fn repin_from(&self, dead: &str) -> Vec<Cid> {
        let me = self.inner.peer_id.clone();
        let live: Vec<String> = self
            .live_peers()
            .into_iter()
            .filter(|p| p != dead)
            .collect();
        let exclude = vec![dead.to_string()];
        let mut repinned = Vec::new();
        let mut from = Some(PageFrom::start());
        while let Some(f) = from {
            let (cids, next) = match self.allocated_page(f, dead).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!("listing the pins of {dead}: {e}");
                    break;
                }
            };
            from = next;
            for cid in cids {
                if closest(&cid, &live).as_deref() != Some(me.as_str()) {
                    continue;
                }
                // As it is now: the page was read a while ago.
                match self.inner.consensus.state().get_blocking(&cid).await {
                    Ok(Some(pin)) if pin.allocations.iter().any(|a| a == dead) => {
                        if let Some(c) = self.repin_if_below(&pin, &exclude).await {
                            repinned.push(c);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(%cid, "reading the pin: {e}"),
                }
            }
        }
        if !repinned.is_empty() {
            tracing::info!("re-allocated {} pins of {dead}", repinned.len());
        }
        repinned
    }

    /// Re-pins `pin` away from the peers in `exclude` when its allocation would
    /// change; the CID when it was re-pinned.
    async fn repin_if_below(&self, pin: &Pin, exclude: &[String]) -> Option<Cid> {
        let (min, max) = (
            pin.options.replication_factor_min,
            pin.options.replication_factor_max,
        );
        match self.allocations(&pin.allocations, &pin.options, (min, max), exclude, false) {
            Ok(a) if a == pin.allocations => return None,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(cid = %pin.cid, "cannot re-allocate: {e}");
                return None;
            }
        }
        match self.repin_current(pin.cid, exclude, false).await {
            Ok(Some(_)) => Some(pin.cid),
            // Unpinned meanwhile.
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(cid = %pin.cid, "re-pin failed: {e}");
                None
            }
        }
    }

    /// Records metrics and sends them to every other peer.
    pub async fn publish_metrics(&self, metrics: Vec<Metric>) {
        for m in &metrics {
            self.inner.monitor.record(m.clone());
        }
        let req = ClusterRpc::Metrics(metrics);
        let me = self.inner.peer_id.clone();
        let sends = self
            .inner
            .consensus
            .peers()
            .into_iter()
            .filter(|p| *p != me)
            .map(|p| {
                let req = &req;
                async move {
                    if let Err(e) = self.rpc(&p, req).await {
                        tracing::debug!("metrics to {p}: {e}");
                    }
                }
            })
            .collect::<Vec<_>>();
        futures::future::join_all(sends).await;
    }

    /// This peer's recovery of `cid`.
    pub async fn recover_local(&self, cid: &Cid) -> PinInfoShort {
        let st = self.inner.tracker.recover(cid).await;
        self.short(st).await
    }

    /// This peer's recovery of everything: the items re-queued, with their status.
    pub async fn recover_all_local(&self) -> Result<Vec<(Cid, PinInfoShort)>, ClusterError> {
        let cids = self
            .inner
            .tracker
            .recover_all()
            .await
            .map_err(|e| ClusterError::InvalidArgument(e.to_string()))?;
        let mut out = Vec::with_capacity(cids.len());
        for cid in cids {
            out.push((cid, self.status_local(&cid).await));
        }
        Ok(out)
    }

    /// Recovers `cid` on every peer (or only here, with `local`).
    pub async fn recover(&self, cid: &Cid, local: bool) -> Result<GlobalPinInfo, ClusterError> {
        self.ask_about(cid, local, ClusterRpc::Recover(*cid), || {
            self.recover_local(cid)
        })
        .await
    }

    /// Recovers everything on every peer (or only here); lists the items re-queued.
    pub async fn recover_all(&self, local: bool) -> Result<Vec<GlobalPinInfo>, ClusterError> {
        let nodes = self.local_or_all(local);
        let asks = nodes.iter().map(|node| async move {
            if node.peer_id == self.inner.peer_id {
                return (
                    node,
                    self.recover_all_local().await.map_err(|e| e.to_string()),
                );
            }
            let r = self.rpc_as(&node.peer_id, &ClusterRpc::RecoverAll, |r| match r {
                ClusterRpcReply::Items(v) => Ok(v),
                other => Err(other),
            });
            let r = r.await;
            (node, r)
        });
        let mut by_cid: BTreeMap<Cid, Vec<(String, PinInfoShort)>> = BTreeMap::new();
        for (node, answer) in futures::future::join_all(asks).await {
            match answer {
                Ok(items) => {
                    for (cid, info) in items {
                        by_cid
                            .entry(cid)
                            .or_default()
                            .push((node.peer_id.clone(), info));
                    }
                }
                Err(e) => tracing::warn!("recover on {}: {e}", node.peer_id),
            }
        }
        let cids: Vec<Cid> = by_cid.keys().copied().collect();
        let pins = self
            .inner
            .consensus
            .state()
            .blocking(move |state| state.get_many(&cids))
            .await?;
        Ok(by_cid
            .into_iter()
            .zip(pins)
            .map(|((cid, infos), pin)| {
                let mut g = GlobalPinInfo::new(
                    cid,
                    pin.as_ref()
                        .map(|p| (&p.options, p.allocations.as_slice(), p.timestamp)),
                );
                g.peer_map.extend(infos);
                g
            })
            .collect())
    }

    fn local_or_all(&self, local: bool) -> Vec<ClusterNode> {
        let nodes = self.inner.consensus.peer_nodes();
        if local {
            nodes
                .into_iter()
                .filter(|n| n.peer_id == self.inner.peer_id)
                .collect()
        } else {
            nodes
        }
    }

    /// This peer and the peers whose ping has not expired.
    fn live_peers(&self) -> Vec<String> {
        let me = &self.inner.peer_id;
        self.inner
            .consensus
            .peers()
            .into_iter()
            .filter(|p| p == me || self.inner.monitor.is_alive(p))
            .collect()
    }

    /// Unpins the pins whose `expire_at` has passed. Only the live peer XOR-closest
    /// to each CID does it, so peers do not race each other.
    pub async fn sync_expired(&self) -> Vec<Cid> {
        let now = Utc::now();
        let me = self.inner.peer_id.clone();
        let live = self.live_peers();
        // A walk of the whole pinset: on a blocking thread, reading only
        // each pin's expire_at.
        let state = self.inner.consensus.state();
        let expired = match state.blocking(move |state| state.expired(now)).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("listing expired pins: {e}");
                return Vec::new();
            }
        };
        let expired: Vec<Cid> = expired
            .into_iter()
            .filter(|c| closest(c, &live).as_deref() == Some(me.as_str()))
            .collect();
        let mut done = Vec::new();
        for cid in expired {
            match self.unpin(cid).await {
                Ok(_) => done.push(cid),
                Err(e) => tracing::warn!(%cid, "unpinning expired pin: {e}"),
            }
        }
        done
    }

    /// The repository size and capacity summed over every peer's daemon; peers that
    /// fail are left out, as upstream does.
    pub async fn repo_stat(&self) -> (u64, u64) {
        let nodes = self.inner.consensus.peer_nodes();
        let asks = nodes.iter().map(|node| async move {
            if node.peer_id == self.inner.peer_id {
                return self.inner.ipfs.repo_stat().await.map_err(|e| e.to_string());
            }
            self.rpc_as(&node.peer_id, &ClusterRpc::RepoStat, |r| match r {
                ClusterRpcReply::RepoStat(size, max) => Ok((size, max)),
                other => Err(other),
            })
            .await
        });
        let mut total = (0u64, 0u64);
        for (node, r) in nodes.iter().zip(futures::future::join_all(asks).await) {
            match r {
                Ok((size, max)) => {
                    total.0 = total.0.saturating_add(size);
                    total.1 = total.1.saturating_add(max);
                }
                Err(e) => tracing::warn!("repo/stat on {}: {e}", node.peer_id),
            }
        }
        total
    }

    /// Garbage-collects every peer's daemon (only this peer's with `local`).
    pub async fn repo_gc(&self, local: bool) -> Vec<RepoGc> {
        let nodes: Vec<ClusterNode> = self
            .inner
            .consensus
            .peer_nodes()
            .into_iter()
            .filter(|n| !local || n.peer_id == self.inner.peer_id)
            .collect();
        let asks = nodes.iter().map(|node| async move {
            let r = if node.peer_id == self.inner.peer_id {
                self.inner.ipfs.repo_gc().await.map_err(|e| e.to_string())
            } else {
                self.rpc_as(&node.peer_id, &ClusterRpc::RepoGc, |r| match r {
                    ClusterRpcReply::RepoGc(k, e) => Ok((k, e)),
                    other => Err(other),
                })
                .await
            };
            let mut gc = RepoGc {
                peer: node.peer_id.clone(),
                peername: node.name.clone(),
                ..Default::default()
            };
            match r {
                Ok((keys, errors)) => {
                    let keys = keys.into_iter().map(|key| RepoGcKey {
                        key,
                        error: String::new(),
                    });
                    let errors = errors.into_iter().map(|error| RepoGcKey {
                        key: String::new(),
                        error,
                    });
                    gc.keys = keys.chain(errors).collect();
                }
                Err(e) => gc.error = e,
            }
            gc
        });
        futures::future::join_all(asks).await
    }

    /// This peer's connections (cluster peers, its daemon and the daemon's peers).
    pub async fn connections_local(&self) -> PeerConnections {
        let ipfs = self.ipfs_id().await;
        PeerConnections {
            cluster_peers: self
                .inner
                .p2p
                .connected_peers()
                .await
                .into_iter()
                .map(|p| p.to_string())
                .collect(),
            ipfs_id: ipfs.id,
            // An offline daemon has no swarm: it simply has no links.
            ipfs_peers: self.inner.ipfs.swarm_peers().await.unwrap_or_default(),
        }
    }

    /// Who is connected to whom, as every reachable peer sees it (`health graph`).
    pub async fn connect_graph(&self) -> ConnectGraph {
        let nodes = self.inner.consensus.peer_nodes();
        let asks = nodes.iter().map(|node| async move {
            let c = if node.peer_id == self.inner.peer_id {
                Ok(self.connections_local().await)
            } else {
                self.rpc_as(&node.peer_id, &ClusterRpc::Connections, |r| match r {
                    ClusterRpcReply::Connections(c) => Ok(c),
                    other => Err(other),
                })
                .await
            };
            (node, c)
        });
        let mut g = ConnectGraph {
            cluster_id: self.inner.peer_id.clone(),
            ..Default::default()
        };
        for (node, c) in futures::future::join_all(asks).await {
            g.id_to_peername
                .insert(node.peer_id.clone(), node.name.clone());
            g.cluster_trust_links.insert(node.peer_id.clone(), true);
            let c = match c {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("health graph: {}: {e}", node.peer_id);
                    continue;
                }
            };
            g.cluster_links
                .insert(node.peer_id.clone(), c.cluster_peers);
            if !c.ipfs_id.is_empty() {
                g.cluster_to_ipfs
                    .insert(node.peer_id.clone(), c.ipfs_id.clone());
                g.ipfs_links.insert(c.ipfs_id, c.ipfs_peers);
            }
        }
        g
    }

    /// Pins `to` with the options and allocations of the existing pin `from`
    /// (a name or a future expiry in `overrides` replace its own, as upstream),
    /// then unpins `from` when `unpin` (kubo's `pin update`).
    pub async fn pin_update(
        &self,
        from: Cid,
        to: Cid,
        overrides: PinOptions,
        unpin: bool,
    ) -> Result<(Pin, Committed), ClusterError> {
        let state = self.inner.consensus.state().clone();
        // Decided on `from` as it is, and applied only if it still is.
        let decide = |_: Option<&Pin>| {
            let (existing, digest) = state.get_with_digest(&from)?.ok_or_else(|| {
                ClusterError::InvalidArgument(
                    "'from' cid was not recursively pinned already".into(),
                )
            })?;
            let mut options = existing.options.clone();
            options.pin_update = Some(from);
            if !overrides.name.is_empty() {
                options.name = overrides.name.clone();
            }
            if let Some(at) = overrides.expire_at.filter(|at| *at > chrono::Utc::now()) {
                options.expire_at = Some(at);
            }
            // The allocations move with the pin: they are the first choice for `to`.
            options.user_allocations = existing.allocations.clone();
            let expect = vec![Expect {
                cid: from,
                prior: Prior::Digest(digest),
            }];
            Ok(Some((options, expect)))
        };
        let pinned = self
            .pin_decided(to, &[], false, decide)
            .await?
            .ok_or(ClusterError::NotFound)?;
        if unpin && from != to {
            self.unpin(from).await?;
        }
        Ok(pinned)
    }

    /// Answers a cluster RPC from another peer.
    /// `sender` is the peer the request came from, as authenticated by libp2p.
    pub async fn handle_rpc(&self, sender: &PeerId, payload: &[u8]) -> Vec<u8> {
        let reply = match crate::raft::decode_payload::<ClusterRpc>(payload) {
            Err(e) => ClusterRpcReply::Error(e),
            Ok(ClusterRpc::Id) => ClusterRpcReply::Id(Box::new(self.id().await)),
            Ok(ClusterRpc::Status(cid)) => {
                ClusterRpcReply::Status(Box::new(self.status_local(&cid).await))
            }
            Ok(ClusterRpc::Metrics(metrics)) => {
                self.inner.monitor.record_from(&sender.to_string(), metrics);
                ClusterRpcReply::Ack
            }
            Ok(ClusterRpc::Recover(cid)) => {
                ClusterRpcReply::Status(Box::new(self.recover_local(&cid).await))
            }
            Ok(ClusterRpc::RecoverAll) => match self.recover_all_local().await {
                Ok(v) => ClusterRpcReply::Items(v),
                Err(e) => ClusterRpcReply::Error(e.to_string()),
            },
            Ok(ClusterRpc::Connections) => {
                ClusterRpcReply::Connections(self.connections_local().await)
            }
            Ok(ClusterRpc::RepoGc) => match self.inner.ipfs.repo_gc().await {
                Ok((keys, errors)) => ClusterRpcReply::RepoGc(keys, errors),
                Err(e) => ClusterRpcReply::Error(e.to_string()),
            },
            Ok(ClusterRpc::RepoStat) => match self.inner.ipfs.repo_stat().await {
                Ok((size, max)) => ClusterRpcReply::RepoStat(size, max),
                Err(e) => ClusterRpcReply::Error(e.to_string()),
            },
            Ok(ClusterRpc::StatusPage(cids)) => {
                ClusterRpcReply::StatusPage(self.status_page_local(&cids).await)
            }
            Ok(ClusterRpc::StatusMany(cids)) => {
                ClusterRpcReply::Statuses(self.status_many_local(&cids).await)
            }
            Ok(ClusterRpc::Orphans) => ClusterRpcReply::Items(self.orphans_local().await),
        };
        crate::raft::encode_payload(&reply)
    }
}

/// The peer of `peers` whose ID is XOR-closest to the CID's hash digest.
fn closest(cid: &Cid, peers: &[String]) -> Option<String> {
    let tail = |b: &[u8]| {
        let mut x = [0u8; 8];
        let t = &b[b.len().saturating_sub(8)..];
        x[8 - t.len()..].copy_from_slice(t);
        u64::from_be_bytes(x)
    };
    let key = tail(cid.0.hash().digest());
    peers
        .iter()
        .filter_map(|p| {
            p.parse::<PeerId>()
                .ok()
                .map(|id| (tail(&id.to_bytes()) ^ key, p))
        })
        .min()
        .map(|(_, p)| p.clone())
}
