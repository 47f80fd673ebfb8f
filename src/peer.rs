//! One running cluster peer: starts the components in order, owns every
//! background task, and stops them all on shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{Cluster, PinTracker};
use crate::config::{Config, ConfigError, ExecutionLock, Identity, RAFT_DIR};
use crate::ipfs::IpfsConnector;
use crate::proxy::{Proxy, ProxyError};
use crate::raft::{Consensus, ConsensusError};
use crate::restapi::{RestApi, RestApiError};

/// Why a peer could not start.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Configuration or lock.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Consensus.
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    /// The proxy.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// The REST API.
    #[error(transparent)]
    RestApi(#[from] RestApiError),
    /// A bad address.
    #[error(transparent)]
    Multiaddr(#[from] crate::multiaddr::MultiaddrError),
}

/// A running peer.
pub struct Peer {
    cluster: Cluster,
    proxy_addrs: Vec<SocketAddr>,
    rest_addrs: Vec<SocketAddr>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    _lock: ExecutionLock,
}

impl Peer {
    /// Starts a peer from the config folder `dir`.
    pub async fn start(dir: &Path, cfg: Config, identity: Identity) -> Result<Peer, PeerError> {
        let lock = ExecutionLock::acquire(dir)?;
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let peer_id = identity.peer_id.to_string();

        let (events_tx, events_rx) = mpsc::channel(1024);
        let consensus = Consensus::start(
            &dir.join(RAFT_DIR),
            &identity.peer_id,
            &cfg.consensus.raft,
            events_tx,
        )
        .await?;
        let ipfs = IpfsConnector::new(&cfg.ipfs_connector.ipfshttp)?;
        let tracker = PinTracker::start(
            &cfg.pin_tracker.stateless,
            ipfs.clone(),
            consensus.state().clone(),
            peer_id.clone(),
            events_rx,
            &tasks,
            cancel.child_token(),
        );
        let cluster = Cluster::new(
            peer_id,
            Vec::new(),
            cfg.cluster.clone(),
            consensus.clone(),
            tracker.clone(),
            ipfs,
        );
        if let Err(e) = consensus.wait_ready().await {
            cancel.cancel();
            consensus.shutdown().await;
            return Err(e.into());
        }
        tracing::info!("consensus ready; leader elected and log applied");
        spawn_recover_loop(
            &tasks,
            tracker,
            cfg.cluster.pin_recover_interval.0,
            cancel.child_token(),
        );

        let started = async {
            let rest_addrs = match &cfg.api.restapi {
                Some(r) => RestApi::start(r, cluster.clone(), &tasks, cancel.child_token()).await?,
                None => Vec::new(),
            };
            let proxy_addrs = match &cfg.api.ipfsproxy {
                Some(p) => Proxy::start(p, cluster.clone(), &tasks, cancel.child_token()).await?,
                None => Vec::new(),
            };
            Ok::<_, PeerError>((rest_addrs, proxy_addrs))
        }
        .await;
        let (rest_addrs, proxy_addrs) = match started {
            Ok(a) => a,
            Err(e) => {
                cancel.cancel();
                tasks.close();
                tasks.wait().await;
                consensus.shutdown().await;
                return Err(e);
            }
        };
        for a in &rest_addrs {
            tracing::info!("REST API listening on {a}");
        }
        for a in &proxy_addrs {
            tracing::info!("IPFS proxy listening on {a}");
        }
        tracing::info!("** IPFS Cluster is READY **");
        Ok(Peer {
            cluster,
            proxy_addrs,
            rest_addrs,
            tasks,
            cancel,
            _lock: lock,
        })
    }

    /// The cluster component.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Where the proxy listens.
    pub fn proxy_addrs(&self) -> &[SocketAddr] {
        &self.proxy_addrs
    }

    /// Where the REST API listens.
    pub fn rest_addrs(&self) -> &[SocketAddr] {
        &self.rest_addrs
    }

    /// Stops accepting requests, cancels the tracker's operations, waits for every
    /// task, then stops Raft. The store is durable at every commit.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        self.cancel.cancel();
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not stop within 10s");
        }
        self.cluster.consensus().shutdown().await;
        tracing::info!("shutdown complete");
    }
}

/// Re-queues failed and missing pins at start and every `interval`.
fn spawn_recover_loop(
    tasks: &TaskTracker,
    tracker: PinTracker,
    interval: Duration,
    cancel: CancellationToken,
) {
    tasks.spawn(async move {
        let interval = if interval.is_zero() {
            Duration::from_secs(720)
        } else {
            interval
        };
        loop {
            match tracker.recover_all().await {
                Ok(c) if !c.is_empty() => tracing::info!("recover: re-queued {} items", c.len()),
                Ok(_) => {}
                Err(e) => tracing::warn!("recover: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = cancel.cancelled() => break,
            }
        }
    });
}
