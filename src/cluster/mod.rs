//! The cluster component: turns API calls into consensus operations and gathers
//! status, tying the consensus, the pin tracker and the IPFS connector together.

mod path;
pub mod tracker;

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::OnceCell;

pub use path::{InvalidPath, PinArg, parse_pin_arg};
pub use tracker::{LocalStatus, OpKind, OpState, Phase, PinTracker};

use crate::config::{ClusterConfig, check_replication};
use crate::ipfs::{IpfsConnector, IpfsError};
use crate::raft::{Committed, Consensus, ConsensusError, LogOp};
use crate::state::StateError;
use crate::types::{
    Cid, ClusterId, GlobalPinInfo, IpfsId, Pin, PinInfoShort, PinOptions, TrackerStatusFilter,
};

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
    /// Consensus failed.
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    /// The daemon failed.
    #[error(transparent)]
    Ipfs(#[from] IpfsError),
    /// The state could not be read.
    #[error(transparent)]
    State(#[from] StateError),
}

/// A peer's cluster component.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    peer_id: String,
    addresses: Vec<String>,
    cfg: ClusterConfig,
    consensus: Consensus,
    tracker: PinTracker,
    ipfs: IpfsConnector,
    ipfs_id: OnceCell<IpfsId>,
}

impl Cluster {
    /// Assembles the component from the running parts.
    pub fn new(
        peer_id: String,
        addresses: Vec<String>,
        cfg: ClusterConfig,
        consensus: Consensus,
        tracker: PinTracker,
        ipfs: IpfsConnector,
    ) -> Self {
        Cluster {
            inner: Arc::new(Inner {
                peer_id,
                addresses,
                cfg,
                consensus,
                tracker,
                ipfs,
                ipfs_id: OnceCell::new(),
            }),
        }
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
        if let Some(existing) = self.inner.consensus.state().get(&cid)?
            && existing.mode() == crate::types::PinMode::Recursive
            && pin.mode() == crate::types::PinMode::Direct
        {
            return Err(ClusterError::InvalidArgument(format!(
                "cannot pin {cid} as direct: it is already pinned recursively"
            )));
        }
        // Every peer holds every pin until the allocator places them: an empty
        // allocation list means "everywhere", as upstream encodes -1/-1.
        pin.allocations = Vec::new();
        let committed = self
            .inner
            .consensus
            .commit(LogOp::Pin(Box::new(pin.clone())))
            .await?;
        Ok((pin, committed))
    }

    /// Unpins `cid`; fails with [`ClusterError::NotFound`] when it is not in the pinset.
    pub async fn unpin(&self, cid: Cid) -> Result<(Pin, Committed), ClusterError> {
        let pin = self
            .inner
            .consensus
            .state()
            .get(&cid)?
            .ok_or(ClusterError::NotFound)?;
        let committed = self.inner.consensus.commit(LogOp::Unpin(cid)).await?;
        if !committed.existed {
            // Someone else unpinned it between our read and our write.
            return Err(ClusterError::NotFound);
        }
        Ok((pin, committed))
    }

    /// The pin for `cid`.
    pub fn pin_get(&self, cid: &Cid) -> Result<Pin, ClusterError> {
        self.inner
            .consensus
            .state()
            .get(cid)?
            .ok_or(ClusterError::NotFound)
    }

    /// Every pin, read lazily.
    pub fn pins(&self) -> impl Iterator<Item = Result<Pin, StateError>> + Send + 'static {
        self.inner.consensus.state().list()
    }

    async fn ipfs_id(&self) -> IpfsId {
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
        ClusterId {
            id: self.inner.peer_id.clone(),
            addresses: self.inner.addresses.clone(),
            cluster_peers: self.inner.consensus.peers(),
            cluster_peers_addresses: Vec::new(),
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

    fn global(&self, cid: Cid, pin: Option<&Pin>, short: PinInfoShort) -> GlobalPinInfo {
        let mut g = GlobalPinInfo::new(
            cid,
            pin.map(|p| (&p.options, p.allocations.as_slice(), p.timestamp)),
        );
        g.peer_map.insert(self.inner.peer_id.clone(), short);
        g
    }

    /// The status of `cid` on every peer.
    pub async fn status(&self, cid: &Cid) -> Result<GlobalPinInfo, ClusterError> {
        let pin = self.inner.consensus.state().get(cid)?;
        let st = self.inner.tracker.status(cid).await;
        let short = self.short(st).await;
        Ok(self.global(*cid, pin.as_ref(), short))
    }

    /// The status of every CID, filtered.
    pub async fn status_all(
        &self,
        filter: TrackerStatusFilter,
    ) -> Result<Vec<GlobalPinInfo>, ClusterError> {
        let all = self
            .inner
            .tracker
            .status_all()
            .await
            .map_err(|e| ClusterError::InvalidArgument(e.to_string()))?;
        let mut out = Vec::new();
        for (cid, pin, st) in all {
            if filter.matches(st.status) {
                let short = self.short(st).await;
                out.push(self.global(cid, pin.as_ref(), short));
            }
        }
        Ok(out)
    }
}
