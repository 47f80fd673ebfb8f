//! One running cluster peer: starts the components in order, owns every
//! background task, and stops them all on shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{Cluster, Informer, PinTracker};
use crate::config::{Config, ConfigError, ExecutionLock, Identity, PEERSTORE_FILE, RAFT_DIR};
use crate::ipfs::IpfsConnector;
use crate::observations;
use crate::p2p::{Multiaddr, P2p, P2pConfig, P2pError, Protocol, split_p2p};
use crate::proxy::{Proxy, ProxyError};
use crate::raft::{ClusterNode, Consensus, ConsensusError, ConsensusOptions};
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
    /// The libp2p host.
    #[error(transparent)]
    P2p(#[from] P2pError),
    /// The proxy.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// The REST API.
    #[error(transparent)]
    RestApi(#[from] RestApiError),
    /// The metrics endpoint failed to start.
    #[error(transparent)]
    Metrics(#[from] observations::ObservationsError),
    /// A bad address.
    #[error(transparent)]
    Multiaddr(#[from] crate::multiaddr::MultiaddrError),
    /// A bad libp2p address.
    #[error("{0}")]
    Address(String),
}

/// How a peer starts besides its configuration.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Join a running cluster through these peers (`daemon --bootstrap`).
    pub bootstrap: Vec<String>,
}

/// A running peer.
pub struct Peer {
    cluster: Cluster,
    p2p: P2p,
    proxy_addrs: Vec<SocketAddr>,
    rest_addrs: Vec<SocketAddr>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    removed: CancellationToken,
    leave_on_shutdown: bool,
    _lock: ExecutionLock,
}

fn parse_multiaddrs(key: &str, addrs: &[String]) -> Result<Vec<Multiaddr>, PeerError> {
    addrs
        .iter()
        .map(|a| {
            a.parse::<Multiaddr>()
                .map_err(|e| PeerError::Address(format!("{key}: {a:?}: {e}")))
        })
        .collect()
}

/// The address other peers should dial: a routable one if any, else loopback.
fn advertised(addrs: &[Multiaddr]) -> String {
    let is_loopback = |a: &&Multiaddr| {
        a.to_string().starts_with("/ip4/127.") || a.to_string().starts_with("/ip6/::1/")
    };
    addrs
        .iter()
        .find(|a| !is_loopback(a))
        .or_else(|| addrs.first())
        .map(|a| a.to_string())
        .unwrap_or_default()
}

impl Peer {
    /// Starts a peer from the config folder `dir`.
    pub async fn start(
        dir: &Path,
        cfg: Config,
        identity: Identity,
        opts: StartOptions,
    ) -> Result<Peer, PeerError> {
        let lock = ExecutionLock::acquire(dir)?;
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let res = Self::start_components(dir, &cfg, identity, opts, &tasks, &cancel).await;
        match res {
            Ok((cluster, p2p, removed)) => {
                let started = async {
                    let rest_addrs = match &cfg.api.restapi {
                        Some(r) => {
                            RestApi::start(r, dir, cluster.clone(), &tasks, cancel.child_token())
                                .await?
                        }
                        None => Vec::new(),
                    };
                    let proxy_addrs = match &cfg.api.ipfsproxy {
                        Some(p) => {
                            Proxy::start(
                                p,
                                &cfg.ipfs_connector.ipfshttp,
                                cluster.clone(),
                                &tasks,
                                cancel.child_token(),
                            )
                            .await?
                        }
                        None => Vec::new(),
                    };
                    let metrics = &cfg.observations.metrics;
                    if metrics.enable_stats {
                        let cancel = cancel.child_token();
                        for a in
                            observations::start(metrics, cluster.clone(), &tasks, cancel).await?
                        {
                            tracing::info!("metrics served on http://{a}/metrics");
                        }
                    }
                    Ok::<_, PeerError>((rest_addrs, proxy_addrs))
                }
                .await;
                let peer = Peer {
                    cluster,
                    p2p,
                    proxy_addrs: Vec::new(),
                    rest_addrs: Vec::new(),
                    tasks,
                    cancel,
                    removed,
                    leave_on_shutdown: cfg.cluster.leave_on_shutdown,
                    _lock: lock,
                };
                match started {
                    Ok((rest_addrs, proxy_addrs)) => {
                        for a in &rest_addrs {
                            tracing::info!("REST API listening on {a}");
                        }
                        for a in &proxy_addrs {
                            tracing::info!("IPFS proxy listening on {a}");
                        }
                        tracing::info!("** IPFS Cluster is READY **");
                        Ok(Peer {
                            rest_addrs,
                            proxy_addrs,
                            ..peer
                        })
                    }
                    Err(e) => {
                        peer.stop(false).await;
                        Err(e)
                    }
                }
            }
            Err(e) => {
                cancel.cancel();
                tasks.close();
                tasks.wait().await;
                Err(e)
            }
        }
    }

    async fn start_components(
        dir: &Path,
        cfg: &Config,
        identity: Identity,
        opts: StartOptions,
        tasks: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Result<(Cluster, P2p, CancellationToken), PeerError> {
        let secret = cfg.secret_bytes().map_err(|r| ConfigError::Invalid {
            key: "cluster.secret".into(),
            path: "service.json".into(),
            reason: r,
        })?;
        if secret.is_none() {
            // Upstream's words for the same choice.
            tracing::warn!(
                "Cluster secret is empty, cluster will start on unprotected network: any \
                 peer that can reach the cluster port can join"
            );
        }
        let raft_cfg =
            &init_peerset_resolved(dir, &cfg.consensus.raft, &cfg.cluster.peer_addresses).await?;
        let (p2p, mut inbound) = P2p::start(
            P2pConfig {
                keypair: identity.keypair.clone(),
                secret,
                listen: parse_multiaddrs(
                    "cluster.listen_multiaddress",
                    &cfg.cluster.listen_multiaddress.0,
                )?,
                // Forwarded writes wait for the leader's commit: give them as long
                // as a write may wait for a leader.
                request_timeout: raft_cfg
                    .network_timeout
                    .0
                    .max(raft_cfg.wait_for_leader_timeout.0)
                    .max(Duration::from_secs(1)),
                peerstore: Some(dir.join(PEERSTORE_FILE)),
                pipes: true,
            },
            tasks,
            cancel.child_token(),
        )
        .await?;
        for a in parse_multiaddrs("cluster.peer_addresses", &cfg.cluster.peer_addresses)? {
            if let Some((peer, addr)) = split_p2p(&a) {
                p2p.add_address(peer, addr).await;
            }
        }
        let listen = p2p.listen_addrs().await;
        for a in &listen {
            tracing::info!("cluster peer listening on {a}");
        }
        let bootstrap = parse_multiaddrs("--bootstrap", &opts.bootstrap)?;

        let (events_tx, events_rx) =
            tokio::sync::broadcast::channel(crate::cluster::tracker::EVENTS_CAPACITY);
        let consensus = Consensus::start(ConsensusOptions {
            dir: &dir.join(RAFT_DIR),
            p2p: p2p.clone(),
            node: ClusterNode {
                peer_id: identity.peer_id.to_string(),
                addr: advertised(&listen),
                name: cfg.cluster.peername.clone(),
            },
            cfg: raft_cfg,
            bootstrap: &bootstrap,
            events: events_tx,
        })
        .await;
        let consensus = match consensus {
            Ok(c) => c,
            Err(e) => return Err(e.into()),
        };
        let ipfs = IpfsConnector::new(&cfg.ipfs_connector.ipfshttp)?;
        let applied = std::sync::Arc::new(consensus.applied_index_reader());
        let tracker = PinTracker::start(
            &cfg.pin_tracker.stateless,
            ipfs.clone(),
            consensus.state().clone(),
            applied,
            identity.peer_id.to_string(),
            events_rx,
            tasks,
            cancel.child_token(),
        );
        let cluster = Cluster::new(
            p2p.clone(),
            cfg.cluster.clone(),
            cfg.allocator.balanced.allocate_by.clone(),
            consensus.clone(),
            tracker.clone(),
            ipfs.clone(),
        );
        let informer = Informer::new(
            cfg.informer.clone(),
            ipfs,
            tracker.clone(),
            identity.peer_id.to_string(),
            cfg.allocator
                .balanced
                .allocate_by
                .iter()
                .any(|m| m == "numpin"),
        );

        // Requests from other peers: each answered in its own task so a slow one
        // (a snapshot install, a status of many pins) does not hold up heartbeats.
        let (c, cl, t, stop) = (
            consensus.clone(),
            cluster.clone(),
            tasks.clone(),
            cancel.child_token(),
        );
        tasks.spawn(async move {
            loop {
                let req = tokio::select! {
                    r = inbound.recv() => r,
                    _ = stop.cancelled() => None,
                };
                let Some(req) = req else { break };
                let (c, cl) = (c.clone(), cl.clone());
                t.spawn(async move {
                    let reply = match req.protocol {
                        Protocol::Raft => c.handle_rpc(&req.peer, &req.payload).await,
                        Protocol::Rpc => cl.handle_rpc(&req.peer, &req.payload).await,
                    };
                    let _ = req.reply.send(reply);
                });
            }
        });

        consensus.watch_member_addresses(tasks, cancel.child_token());
        consensus.schedule_snapshots(
            cfg.consensus.raft.snapshot_interval.0,
            cfg.consensus.raft.snapshot_threshold,
            tasks,
            cancel.child_token(),
        );
        let ready = async {
            let is_member = consensus.peers().contains(&identity.peer_id.to_string());
            if !bootstrap.is_empty() && !is_member {
                consensus.join(&bootstrap).await?;
            }
            consensus.wait_ready_at_start().await
        };
        if let Err(e) = ready.await {
            consensus.shutdown().await;
            return Err(e.into());
        }
        tracing::info!("consensus ready; leader elected and log applied");
        let removed = consensus.removed();
        consensus.watch_removal(tasks, cancel.child_token());
        spawn_recover_loop(
            tasks,
            tracker,
            cfg.cluster.pin_recover_interval.0,
            cancel.child_token(),
        );
        spawn_metric_loops(tasks, &cluster, informer, cfg, cancel.child_token());
        crate::cluster::swarm::spawn(
            tasks,
            cluster.clone(),
            cfg.ipfs_connector.ipfshttp.connect_swarms_delay.0,
            cfg.cluster.peer_watch_interval.0,
            cancel.child_token(),
        );
        spawn_state_sync(
            tasks,
            cluster.clone(),
            cfg.cluster.state_sync_interval.0,
            cancel.child_token(),
        );
        Ok((cluster, p2p, removed))
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

    /// Where the cluster peer listens for other peers.
    pub async fn cluster_addrs(&self) -> Vec<Multiaddr> {
        self.p2p.listen_addrs().await
    }

    /// Fires when this peer was removed from the cluster and should stop.
    pub fn removed(&self) -> CancellationToken {
        self.removed.clone()
    }

    /// Leaves the peerset when `leave_on_shutdown` is set, then stops everything.
    /// Returns true when the peer was removed from (or left) the cluster.
    pub async fn shutdown(self) -> bool {
        let removed = self.removed.clone();
        let leave = self.leave_on_shutdown && !removed.is_cancelled();
        self.stop(leave).await;
        // A peer that left is out of the peerset too: its old state must not come back.
        removed.is_cancelled()
    }

    async fn stop(self, leave: bool) {
        tracing::info!("shutting down");
        if leave {
            let me = self.cluster.peer_id().to_string();
            match self.cluster.consensus().remove_peer(&me).await {
                Ok(()) => tracing::info!("left the cluster"),
                Err(e) => tracing::warn!("could not leave the cluster: {e}"),
            }
        }
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

/// The Raft config with `init_peerset` in the multiaddr form, upstream's
/// peer-ID entries completed from the peerstore file or `peer_addresses`.
async fn init_peerset_resolved(
    dir: &Path,
    raft: &crate::config::RaftConfig,
    peer_addresses: &[String],
) -> Result<crate::config::RaftConfig, ConfigError> {
    let path = dir.join(PEERSTORE_FILE);
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(ConfigError::Io {
                path: path.display().to_string(),
                source: e,
            });
        }
    };
    // `cluster.peer_addresses` name peers' addresses too (env-only setups).
    let text = format!("{text}\n{}", peer_addresses.join("\n"));
    let mut raft = raft.clone();
    raft.init_peerset = raft.init_peerset_addrs(&text)?;
    Ok(raft)
}

/// Sends this peer's metrics every half TTL and its ping every ping interval, and
/// checks other peers' pings, re-allocating the pins of those that went down.
fn spawn_metric_loops(
    tasks: &TaskTracker,
    cluster: &Cluster,
    informer: Informer,
    cfg: &Config,
    cancel: CancellationToken,
) {
    let every = |d: Duration| {
        let mut t = tokio::time::interval(d.max(Duration::from_millis(100)));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    };
    let (c, inf, stop) = (cluster.clone(), informer.clone(), cancel.clone());
    tasks.spawn(async move {
        let mut tick = every(inf.interval());
        loop {
            tokio::select! {
                _ = tick.tick() => c.publish_metrics(inf.metrics().await).await,
                _ = stop.cancelled() => break,
            }
        }
    });
    let ping_every = cfg
        .cluster
        .monitor_ping_interval
        .0
        .max(Duration::from_millis(100));
    let (c, stop, name) = (
        cluster.clone(),
        cancel.clone(),
        cfg.cluster.peername.clone(),
    );
    tasks.spawn(async move {
        let mut tick = every(ping_every);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let ipfs = c.ipfs_id().await;
                    c.publish_metrics(vec![informer.ping(&name, &ipfs, ping_every)]).await
                }
                _ = stop.cancelled() => break,
            }
        }
    });
    let (c, stop) = (cluster.clone(), cancel);
    let check_every = cfg.monitor.pubsubmon.check_interval.0;
    let repin = !cfg.cluster.disable_repinning;
    tasks.spawn(async move {
        let mut tick = every(check_every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            let me = c.peer_id().to_string();
            let others: Vec<String> = c
                .consensus()
                .peers()
                .into_iter()
                .filter(|p| *p != me)
                .collect();
            for alert in c.monitor().check(&others) {
                tracing::warn!("peer {} is down: its ping expired", alert.metric.peer);
                if repin {
                    c.repin_from(&alert.metric.peer).await;
                }
            }
        }
    });
}

/// Unpins expired pins every `state_sync_interval`.
fn spawn_state_sync(
    tasks: &TaskTracker,
    cluster: Cluster,
    interval: Duration,
    cancel: CancellationToken,
) {
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(interval.max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = cancel.cancelled() => break,
            }
            let done = cluster.sync_expired().await;
            if !done.is_empty() {
                tracing::info!("state sync: unpinned {} expired pins", done.len());
            }
        }
    });
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
            // In the background and paged: the pinset is never held in memory.
            match tracker.reconcile(false).await {
                Ok((n, _)) if n > 0 => tracing::info!("recover: re-queued {n} items"),
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
    use crate::ipfs::fake::FakeDaemon;
    use crate::types::{PinOptions, TrackerStatus};

    const CID: &str = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG";

    async fn peer_before(fake: &FakeDaemon, dir: &Path) -> Peer {
        start_before_fake(fake, dir, true, true).await
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
            out.contains("x-stream-error: boom: it broke"),
            "trailer lost: {out}"
        );
        // Without `TE: trailers` the call takes the fast path, which relays the
        // daemon's chunks byte for byte: the trailer arrives as the daemon sent
        // it (kubo sends it to every client).
        let out = tokio::task::spawn_blocking(move || raw_post(proxy, "/api/v0/trailers", false))
            .await
            .unwrap();
        assert!(
            out.contains("{\"part\":1}") && out.contains("x-stream-error: boom: it broke"),
            "{out}"
        );
        peer.shutdown().await;
        fake.stop().await;
    }
}

/// A peer before `fake` for the in-process tests: every listener on a free
/// loopback port, with the proxy and the REST API only when asked for.
#[cfg(test)]
async fn start_before_fake(
    fake: &crate::ipfs::fake::FakeDaemon,
    dir: &Path,
    proxy: bool,
    rest: bool,
) -> Peer {
    let mut cfg = Config::generate();
    let any = crate::config::Multiaddrs(vec!["/ip4/127.0.0.1/tcp/0".into()]);
    cfg.cluster.listen_multiaddress = any.clone();
    cfg.ipfs_connector.ipfshttp.node_multiaddress = fake.multiaddr();
    match cfg.api.ipfsproxy.as_mut() {
        Some(p) if proxy => {
            p.node_multiaddress = fake.multiaddr();
            p.listen_multiaddress = any.clone();
        }
        _ => cfg.api.ipfsproxy = None,
    }
    match cfg.api.restapi.as_mut() {
        Some(r) if rest => r.http_listen_multiaddress = any,
        _ => cfg.api.restapi = None,
    }
    let peer = Peer::start(dir, cfg, Identity::generate(), StartOptions::default())
        .await
        .expect("peer starts");
    // The reconciliation at start would otherwise race the test's first pins: a
    // late one retries a pin that just failed, an extra daemon call and attempt.
    peer.cluster().tracker().wait_reconciled(1).await;
    peer
}

/// A field of /proc/self/status in kB (VmRSS, VmHWM), for the memory tests.
#[cfg(test)]
fn proc_kb(field: &str) -> u64 {
    crate::procfs::status_kb(None, field).unwrap_or(0)
}

#[cfg(test)]
mod queue_tests {
    use std::time::{Duration, Instant};

    use crate::cluster::Phase;
    use crate::ipfs::fake::FakeDaemon;
    use crate::types::{Cid, PinOptions, TrackerStatus, TrackerStatusFilter};

    fn id_cid(n: usize) -> Cid {
        let data = format!("queued-{n}");
        let mut bytes = vec![0x01, 0x55, 0x00, data.len() as u8];
        bytes.extend_from_slice(data.as_bytes());
        Cid::from_bytes(&bytes).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_thousand_queued_pins_drain_and_unpins_cancel_them() {
        const N: usize = 10_000;
        const CANCEL: usize = 1_000;
        let fake = FakeDaemon::start().await;
        // Slow pins while committing, so that a queue builds up.
        fake.state.lock().unwrap().pin_delay = Duration::from_millis(50);
        let dir = tempfile::tempdir().unwrap();
        let peer = super::start_before_fake(&fake, dir.path(), false, false).await;
        let rss_before = super::proc_kb("VmRSS");
        let started = Instant::now();
        // Commit concurrently, as many clients would: Raft batches the entries.
        let cluster = peer.cluster().clone();
        let mut set = tokio::task::JoinSet::new();
        for chunk in (0..N).collect::<Vec<_>>().chunks(N / 50) {
            let (c, chunk) = (cluster.clone(), chunk.to_vec());
            set.spawn(async move {
                for n in chunk {
                    c.pin(id_cid(n), PinOptions::default()).await.unwrap();
                }
            });
        }
        while set.join_next().await.is_some() {}
        let committed = started.elapsed();

        // While draining, `queued` lists exactly the operations still waiting: the
        // queue only shrinks once the tracker has read every committed change
        // (a write is answered once applied, which may be before the tracker
        // reads it), so the listing falls between two counts taken before and
        // after it.
        cluster.tracker().catch_up().await;
        let queued: TrackerStatusFilter = "queued".parse().unwrap();
        let before = cluster.tracker().queued();
        let listed = cluster.status_all(queued, true).await.unwrap().len();
        let after = cluster.tracker().queued();
        eprintln!(
            "{N} pins committed in {committed:?}; queued: {before} >= listed {listed} >= {after}"
        );
        assert!(after > CANCEL, "no queue built up ({after} queued)");
        assert!(
            after <= listed && listed <= before,
            "queued filter listed {listed}"
        );

        // Unpin the last 1,000 (most of them still queued): they must end unpinned.
        for n in N - CANCEL..N {
            cluster.unpin(id_cid(n)).await.unwrap();
        }
        fake.state.lock().unwrap().pin_delay = Duration::from_millis(1);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let pinned = fake.state.lock().unwrap().pins.len();
            if pinned == N - CANCEL && cluster.tracker().queued() == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "did not drain: {pinned} pinned");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let rss_after = super::proc_kb("VmRSS");
        eprintln!(
            "drained in {:?}; RSS {rss_before} kB -> {rss_after} kB",
            started.elapsed()
        );
        let all = cluster
            .status_all(TrackerStatusFilter::default(), true)
            .await
            .unwrap();
        assert_eq!(all.len(), N - CANCEL);
        assert!(all.iter().all(|g| {
            g.peer_map
                .values()
                .all(|p| p.status == TrackerStatus::Pinned)
        }));
        let fake_pins = fake.state.lock().unwrap().pins.clone();
        for n in N - CANCEL..N {
            assert!(
                !fake_pins.contains_key(&id_cid(n).to_string()),
                "cancelled pin {n} is pinned"
            );
        }
        peer.shutdown().await;
        fake.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_pins_share_daemon_calls_and_each_failure_stays_its_own() {
        const N: usize = 40;
        let fake = FakeDaemon::start().await;
        let cids: Vec<Cid> = (0..N).map(id_cid).collect();
        let bad = cids[N - 5];
        let dir = tempfile::tempdir().unwrap();
        let peer = super::start_before_fake(&fake, dir.path(), false, false).await;
        {
            let mut st = fake.state.lock().unwrap();
            st.fail_cids
                .insert(bad.to_string(), "block not found".into());
            // The workers' first calls hang, so that the next pins queue up.
            st.hang_pins = true;
        }
        let cluster = peer.cluster().clone();
        let mut last = 0;
        for c in &cids {
            last = cluster
                .pin(*c, PinOptions::default())
                .await
                .unwrap()
                .1
                .index;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster.tracker().queued() < N / 2 {
            assert!(Instant::now() < deadline, "no queue built up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        fake.state.lock().unwrap().hang_pins = false;
        for c in &cids {
            let op = cluster.tracker().wait_operation(c, last).await;
            if *c == bad {
                let op = op.expect("the failed pin keeps its operation");
                assert_eq!(op.phase, Phase::Error);
                assert_eq!(op.error, "block not found");
                assert_eq!(op.attempts, 1);
            } else {
                assert!(
                    op.as_ref().is_none_or(|op| op.phase == Phase::Done),
                    "{c}: {op:?}"
                );
            }
        }
        {
            let st = fake.state.lock().unwrap();
            assert_eq!(st.pins.len(), N - 1);
            assert!(!st.pins.contains_key(&bad.to_string()));
            // Fewer calls than pins: the queued ones went together.
            assert!(
                st.pin_args > st.pin_calls,
                "{} calls for {} CIDs",
                st.pin_calls,
                st.pin_args
            );
        }

        // Unpins together too; the one never pinned fails its group call
        // (kubo's "not pinned"), and on its own counts as unpinned.
        let calls_before = fake.state.lock().unwrap().pin_calls;
        for c in &cids {
            cluster.unpin(*c).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = fake.state.lock().unwrap().pins.len();
            if left == 0
                && cids
                    .iter()
                    .all(|c| cluster.tracker().operation(c).is_none())
            {
                break;
            }
            assert!(Instant::now() < deadline, "{left} still pinned");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(fake.state.lock().unwrap().pin_calls - calls_before <= (N as u64) + 1);
        peer.shutdown().await;
        fake.stop().await;
    }
}

#[cfg(test)]
mod status_memory {
    use std::time::{Duration, Instant};

    use futures::StreamExt;

    use crate::ipfs::fake::FakeDaemon;
    use crate::types::{Cid, PinOptions};

    /// A memory benchmark (run by scripts/bench.sh): `GET /pins` over 100,000 pins
    /// must stream without growing the peer's RSS by more than 64 MiB.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark: scripts/bench.sh"]
    async fn status_of_100k_pins_streams_in_flat_memory() {
        const N: usize = 100_000;
        let fake = FakeDaemon::start().await;
        let dir = tempfile::tempdir().unwrap();
        let peer = super::start_before_fake(&fake, dir.path(), false, true).await;
        let started = Instant::now();
        let cluster = peer.cluster().clone();
        let mut set = tokio::task::JoinSet::new();
        for w in 0..64 {
            let c = cluster.clone();
            set.spawn(async move {
                for n in (w..N).step_by(64) {
                    let data = format!("status-{n}");
                    let mut bytes = vec![0x01, 0x55, 0x00, data.len() as u8];
                    bytes.extend_from_slice(data.as_bytes());
                    let cid = Cid::from_bytes(&bytes).unwrap();
                    c.pin(cid, PinOptions::default()).await.unwrap();
                }
            });
        }
        while set.join_next().await.is_some() {}
        while cluster.tracker().queued() > 0 || fake.state.lock().unwrap().pins.len() < N {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("{N} pins committed and pinned in {:?}", started.elapsed());

        // Reset the peak RSS, then stream the whole status through the REST API.
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let rss_before = super::proc_kb("VmRSS");
        let t = Instant::now();
        let resp = crate::http::plain_http_client_builder()
            .build()
            .unwrap()
            .get(format!("http://{}/pins", peer.rest_addrs()[0]))
            .send()
            .await
            .unwrap();
        let mut stream = resp.bytes_stream();
        let (mut lines, mut pinned) = (0usize, 0usize);
        let mut carry = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            carry.extend_from_slice(&chunk);
            while let Some(pos) = carry.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = carry.drain(..=pos).collect();
                lines += 1;
                let pat: &[u8] = b"\"status\":\"pinned\"";
                pinned += usize::from(line.windows(pat.len()).any(|w| w == pat));
            }
        }
        let peak = super::proc_kb("VmHWM");
        let growth_mib = peak.saturating_sub(rss_before) as f64 / 1024.0;
        eprintln!(
            "status of {lines} pins ({pinned} pinned) streamed in {:?}: RSS {rss_before} kB, \
             peak {peak} kB, growth {growth_mib:.1} MiB",
            t.elapsed()
        );
        assert_eq!((lines, pinned), (N, N));
        assert!(growth_mib < 64.0, "RSS grew by {growth_mib:.1} MiB");
        peer.shutdown().await;
        fake.stop().await;
    }
}
