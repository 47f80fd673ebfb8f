//! Hosts talking over real TCP on 127.0.0.1.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use libp2p_identity::Keypair;

use super::*;

/// Bounds every test step: a hang is a failure, not a stuck CI job. Generous: the
/// 8 MiB request alone takes ~19 s in a debug build on a loaded 2-core machine.
const STEP: Duration = Duration::from_secs(60);

struct Host {
    p2p: P2p,
    inbound: Option<mpsc::Receiver<Inbound>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Host {
    async fn start(keypair: Keypair, secret: [u8; 32], peerstore: Option<PathBuf>) -> Host {
        Self::start_on(keypair, Some(secret), &["/ip4/127.0.0.1/tcp/0"], peerstore)
            .await
            .unwrap()
    }

    async fn start_on(
        keypair: Keypair,
        secret: Option<[u8; 32]>,
        listen: &[&str],
        peerstore: Option<PathBuf>,
    ) -> Result<Host, P2pError> {
        Self::start_with(keypair, secret, listen, peerstore, true).await
    }

    /// A host that serves and uses pipes or, like earlier versions, not.
    async fn start_with(
        keypair: Keypair,
        secret: Option<[u8; 32]>,
        listen: &[&str],
        peerstore: Option<PathBuf>,
        pipes: bool,
    ) -> Result<Host, P2pError> {
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        let cfg = P2pConfig {
            keypair,
            secret,
            listen: listen.iter().map(|a| a.parse().unwrap()).collect(),
            request_timeout: Duration::from_secs(45),
            peerstore,
            pipes,
        };
        let (p2p, inbound) = P2p::start(cfg, &tasks, cancel.clone()).await?;
        Ok(Host {
            p2p,
            inbound: Some(inbound),
            tasks,
            cancel,
        })
    }

    async fn addr(&self) -> Multiaddr {
        let addrs = self.p2p.listen_addrs().await;
        assert_eq!(addrs.len(), 1, "{addrs:?}");
        addrs[0].clone()
    }

    /// Answers every request with `<protocol>:` + the request.
    fn serve_echo(&mut self) {
        let mut inbound = self.inbound.take().unwrap();
        self.tasks.spawn(async move {
            while let Some(req) = inbound.recv().await {
                let prefix: &[u8] = match req.protocol {
                    Protocol::Raft => b"raft:",
                    Protocol::Rpc => b"rpc:",
                };
                let _ = req.reply.send([prefix, &req.payload].concat());
            }
        });
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.tasks.close();
        tokio::time::timeout(STEP, self.tasks.wait()).await.unwrap();
    }
}

async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut).await.expect("step hung")
}

const SECRET: [u8; 32] = [7; 32];

#[tokio::test(flavor = "multi_thread")]
async fn same_secret_raft_and_rpc_round_trip() {
    let a = Host::start(Keypair::generate_ed25519(), SECRET, None).await;
    let mut b = Host::start(Keypair::generate_ed25519(), SECRET, None).await;
    b.serve_echo();
    let b_id = b.p2p.peer_id();
    let b_addr = b.addr().await;
    assert!(b_addr.to_string().ends_with(&format!("/p2p/{b_id}")));

    assert_eq!(within(a.p2p.connect(b_addr)).await.unwrap(), b_id);
    assert!(a.p2p.connected_peers().await.contains(&b_id));

    let r = within(a.p2p.request(b_id, Protocol::Raft, b"vote".to_vec())).await;
    assert_eq!(r.unwrap(), b"raft:vote");
    let r = within(a.p2p.request(b_id, Protocol::Rpc, b"status".to_vec())).await;
    assert_eq!(r.unwrap(), b"rpc:status");

    // Above the codec's 1 MiB / 10 MiB defaults, as a snapshot chunk may be.
    let big: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let r = within(a.p2p.request(b_id, Protocol::Raft, big.clone()))
        .await
        .unwrap();
    assert_eq!(r.len(), big.len() + 5);
    assert!(r[5..] == big[..]);

    // B learnt A's listen address through identify, so it can call back.
    let a_id = a.p2p.peer_id();
    let deadline = Instant::now() + STEP;
    while b.p2p.addresses_of(a_id).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "identify never fed B's address book"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Over the protocol's limit: refused locally, nothing sent.
    let huge = vec![0u8; 16 * 1024 * 1024];
    assert!(matches!(
        a.p2p.request(b_id, Protocol::Rpc, huge).await,
        Err(P2pError::TooLarge { .. })
    ));

    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn different_secret_cannot_connect() {
    let mut b = Host::start(Keypair::generate_ed25519(), SECRET, None).await;
    let c = Host::start(Keypair::generate_ed25519(), [8; 32], None).await;
    let b_id = b.p2p.peer_id();
    let b_addr = b.addr().await;

    // With the wrong key each side decrypts the other's first bytes into noise;
    // often both then wait for bytes that never come, and only the connection
    // timeout (15 s) ends it. So both attempts run at once.
    c.p2p.add_address(b_id, b_addr.clone()).await;
    let (connected, answered) = within(async {
        tokio::join!(
            c.p2p.connect(b_addr),
            c.p2p.request(b_id, Protocol::Rpc, b"x".to_vec())
        )
    })
    .await;
    assert!(
        connected.is_err(),
        "connected without the secret: {connected:?}"
    );
    assert!(
        matches!(
            answered,
            Err(P2pError::Unreachable(_) | P2pError::Transport(_))
        ),
        "{answered:?}"
    );
    assert!(!c.p2p.connected_peers().await.contains(&b_id));
    // Nothing reached B's application.
    let mut inbound = b.inbound.take().unwrap();
    assert!(inbound.try_recv().is_err());

    b.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn peerstore_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("peerstore");
    let a_key = Keypair::generate_ed25519();
    let mut b = Host::start(Keypair::generate_ed25519(), SECRET, None).await;
    b.serve_echo();
    let b_id = b.p2p.peer_id();

    let a = Host::start(a_key.clone(), SECRET, Some(store.clone())).await;
    within(a.p2p.connect(b.addr().await)).await.unwrap();
    let handle = a.p2p.clone();
    a.stop().await;
    // The handle outlives the task and says so.
    assert!(matches!(
        handle.request(b_id, Protocol::Rpc, vec![]).await,
        Err(P2pError::Shutdown)
    ));
    let text = std::fs::read_to_string(&store).unwrap();
    assert!(text.contains(&format!("/p2p/{b_id}")), "{text}");

    let a = Host::start(a_key, SECRET, Some(store.clone())).await;
    assert!(!a.p2p.addresses_of(b_id).await.is_empty());
    let r = within(a.p2p.request(b_id, Protocol::Rpc, b"again".to_vec())).await;
    assert_eq!(r.unwrap(), b"rpc:again");

    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_reply_is_an_error_not_a_hang() {
    let a = Host::start(Keypair::generate_ed25519(), SECRET, None).await;
    let mut b = Host::start(Keypair::generate_ed25519(), SECRET, None).await;
    let b_id = b.p2p.peer_id();
    let mut inbound = b.inbound.take().unwrap();
    b.tasks.spawn(async move {
        while let Some(req) = inbound.recv().await {
            drop(req.reply);
        }
    });
    within(a.p2p.connect(b.addr().await)).await.unwrap();

    let started = Instant::now();
    let r = within(a.p2p.request(b_id, Protocol::Raft, b"x".to_vec())).await;
    assert!(matches!(r, Err(P2pError::Remote(_))), "{r:?}");
    // Well under the 45 s request timeout: the closed stream is noticed at once.
    assert!(started.elapsed() < Duration::from_secs(10));

    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_peer_and_bad_addresses_fail_fast() {
    let a = Host::start(Keypair::generate_ed25519(), SECRET, None).await;
    let stranger = Keypair::generate_ed25519().public().to_peer_id();
    let r = within(a.p2p.request(stranger, Protocol::Rpc, vec![1])).await;
    assert!(matches!(r, Err(P2pError::Unreachable(_))), "{r:?}");

    let no_id: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
    assert!(matches!(
        a.p2p.connect(no_id).await,
        Err(P2pError::InvalidAddress(_))
    ));
    // Nothing listens on port 1: refused.
    let refused = "/ip4/127.0.0.1/tcp/1"
        .parse::<Multiaddr>()
        .unwrap()
        .with(MaProtocol::P2p(stranger));
    let r = within(a.p2p.connect(refused)).await;
    assert!(matches!(r, Err(P2pError::Unreachable(_))), "{r:?}");
    a.stop().await;
}

#[test]
fn split_p2p_parses_trailing_peer_id() {
    let id = Keypair::generate_ed25519().public().to_peer_id();
    let full: Multiaddr = format!("/ip4/1.2.3.4/tcp/9096/p2p/{id}").parse().unwrap();
    let (peer, base) = split_p2p(&full).unwrap();
    assert_eq!(peer, id);
    assert_eq!(base.to_string(), "/ip4/1.2.3.4/tcp/9096");
    assert!(split_p2p(&"/ip4/1.2.3.4/tcp/9096".parse().unwrap()).is_none());
    let bare: Multiaddr = format!("/p2p/{id}").parse().unwrap();
    assert_eq!(split_p2p(&bare), Some((id, Multiaddr::empty())));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_secret_quic_v1_carries_requests() {
    let mut a = Host::start_on(
        Keypair::generate_ed25519(),
        None,
        &["/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/udp/0/quic"],
        None,
    )
    .await
    .unwrap();
    a.serve_echo();
    let b = Host::start_on(
        Keypair::generate_ed25519(),
        None,
        &["/ip4/127.0.0.1/tcp/0"],
        None,
    )
    .await
    .unwrap();
    // Only the QUIC v1 listener: draft-29 `/quic` is skipped.
    let a_addr = a.addr().await;
    assert!(a_addr.to_string().contains("/udp/") && a_addr.to_string().contains("/quic-v1/"));
    let a_id = within(b.p2p.connect(a_addr)).await.unwrap();
    let r = within(b.p2p.request(a_id, Protocol::Raft, b"vote".to_vec())).await;
    assert_eq!(r.unwrap(), b"raft:vote");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_network_serves_tcp_only() {
    let h = Host::start_on(
        Keypair::generate_ed25519(),
        Some(SECRET),
        &[
            "/ip4/127.0.0.1/tcp/0",
            "/ip4/127.0.0.1/udp/0/quic",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ],
        None,
    )
    .await
    .unwrap();
    let addr = h.addr().await.to_string();
    assert!(addr.contains("/tcp/"), "{addr}");
    h.stop().await;
    let e = Host::start_on(
        Keypair::generate_ed25519(),
        Some(SECRET),
        &["/ip4/127.0.0.1/udp/0/quic-v1"],
        None,
    )
    .await
    .err()
    .expect("no TCP address must be refused");
    assert!(e.to_string().contains("needs TCP"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bandwidth_counts_each_protocols_messages_both_ways() {
    let a = Host::start(Keypair::generate_ed25519(), SECRET, None).await;
    let mut b = Host::start(Keypair::generate_ed25519(), SECRET, None).await;
    b.serve_echo();
    let b_id = b.p2p.peer_id();
    within(a.p2p.connect(b.addr().await)).await.unwrap();
    let r = within(a.p2p.request(b_id, Protocol::Rpc, b"status".to_vec())).await;
    assert_eq!(r.unwrap(), b"rpc:status");

    // Each message counts with its CBOR header: 6 + 9 out, 10 + 9 back.
    let rpc = Protocol::Rpc.stream_protocol().to_string();
    let seen = a.p2p.bandwidth();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((seen[&rpc].total_out, seen[&rpc].total_in), (15, 19));
    // B counts its answer once written, which may be after A has read it.
    let mut b_seen = (0, 0);
    for _ in 0..100 {
        let seen = b.p2p.bandwidth();
        b_seen = seen.get(&rpc).map_or((0, 0), |s| (s.total_in, s.total_out));
        if b_seen == (15, 19) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(b_seen, (15, 19));
    a.stop().await;
    b.stop().await;
}

#[path = "busy_tests.rs"]
mod busy;

#[path = "pipe_tests.rs"]
mod pipe;
