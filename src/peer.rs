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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use super::*;
    use crate::cluster::Phase;
    use crate::config::Multiaddrs;
    use crate::ipfs::fake::FakeDaemon;
    use crate::types::{PinOptions, TrackerStatus};

    const CID: &str = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG";

    async fn peer_before(fake: &FakeDaemon, dir: &Path) -> Peer {
        let mut cfg = Config::generate();
        let any = Multiaddrs(vec!["/ip4/127.0.0.1/tcp/0".into()]);
        cfg.ipfs_connector.ipfshttp.node_multiaddress = fake.multiaddr();
        if let Some(p) = cfg.api.ipfsproxy.as_mut() {
            p.node_multiaddress = fake.multiaddr();
            p.listen_multiaddress = any.clone();
        }
        if let Some(r) = cfg.api.restapi.as_mut() {
            r.http_listen_multiaddress = any;
        }
        Peer::start(dir, cfg, Identity::generate())
            .await
            .expect("peer starts")
    }

    async fn wait_status(peer: &Peer, want: TrackerStatus) -> crate::cluster::LocalStatus {
        let cid = CID.parse().unwrap();
        for _ in 0..100 {
            let st = peer.cluster().tracker().status(&cid).await;
            if st.status == want {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("status never became {want}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn opposing_unpin_cancels_the_pin_in_flight() {
        let fake = FakeDaemon::start().await;
        fake.state.lock().unwrap().pin_delay = Duration::from_secs(30);
        let dir = tempfile::tempdir().unwrap();
        let peer = peer_before(&fake, dir.path()).await;
        let cid = CID.parse().unwrap();
        peer.cluster()
            .pin(cid, PinOptions::default())
            .await
            .unwrap();
        wait_status(&peer, TrackerStatus::Pinning).await;

        let (_, c) = peer.cluster().unpin(cid).await.unwrap();
        let op = peer.cluster().tracker().wait_operation(&cid, c.index).await;
        assert!(
            op.as_ref().is_none_or(|op| op.phase == Phase::Done),
            "{op:?}"
        );
        assert!(peer.cluster().tracker().operation(&cid).is_none());
        assert_eq!(
            peer.cluster().tracker().status(&cid).await.status,
            TrackerStatus::Unpinned
        );
        peer.shutdown().await;
        fake.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn daemon_errors_show_as_pin_error_until_recovered() {
        let fake = FakeDaemon::start().await;
        fake.state.lock().unwrap().fail_pins = Some("block not found".into());
        let dir = tempfile::tempdir().unwrap();
        let peer = peer_before(&fake, dir.path()).await;
        let cid = CID.parse().unwrap();
        let (_, c) = peer
            .cluster()
            .pin(cid, PinOptions::default())
            .await
            .unwrap();
        let op = peer
            .cluster()
            .tracker()
            .wait_operation(&cid, c.index)
            .await
            .unwrap();
        assert_eq!(op.phase, Phase::Error);
        let st = wait_status(&peer, TrackerStatus::PinError).await;
        assert_eq!(st.error, "block not found");
        assert_eq!(st.attempt_count, 1);

        fake.state.lock().unwrap().fail_pins = None;
        let requeued = peer.cluster().tracker().recover_all().await.unwrap();
        assert_eq!(requeued, vec![cid]);
        wait_status(&peer, TrackerStatus::Pinned).await;
        assert_eq!(fake.state.lock().unwrap().pins[CID], "recursive");
        peer.shutdown().await;
        fake.stop().await;
    }

    fn raw_post(addr: SocketAddr, path: &str, te_trailers: bool) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let te = if te_trailers { "TE: trailers\r\n" } else { "" };
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\n{te}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passthrough_relays_stream_error_trailers() {
        let fake = FakeDaemon::start().await;
        let dir = tempfile::tempdir().unwrap();
        let peer = peer_before(&fake, dir.path()).await;
        let proxy = peer.proxy_addrs()[0];
        let out = tokio::task::spawn_blocking(move || raw_post(proxy, "/api/v0/trailers", true))
            .await
            .unwrap();
        assert!(out.contains("{\"part\":1}"), "{out}");
        assert!(
            out.to_ascii_lowercase().contains("trailer: x-stream-error"),
            "{out}"
        );
        assert!(
            out.contains("x-stream-error: {\"Message\":\"boom\",\"Code\":0}"),
            "trailer lost: {out}"
        );
        // hyper only writes trailers to clients that asked for them (TE: trailers).
        let out = tokio::task::spawn_blocking(move || raw_post(proxy, "/api/v0/trailers", false))
            .await
            .unwrap();
        assert!(
            out.contains("{\"part\":1}") && !out.contains("boom"),
            "{out}"
        );
        peer.shutdown().await;
        fake.stop().await;
    }
}
