//! Raft requests over pipes, end to end: real hosts on 127.0.0.1.

use std::sync::Arc;

use super::*;

/// Answers Raft requests after a delay that varies per request, so that answers
/// come back out of order; `raft:` + the request.
fn serve_shuffled(host: &mut Host) {
    let mut inbound = host.inbound.take().unwrap();
    host.tasks.spawn(async move {
        while let Some(req) = inbound.recv().await {
            tokio::spawn(async move {
                let wait = u64::from(req.payload.last().copied().unwrap_or(0) % 7);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                let _ = req.reply.send([b"raft:", &req.payload[..]].concat());
            });
        }
    });
}

/// The Raft protocol's counted bytes (out, in) at `host`.
fn raft_bytes(host: &Host) -> (i64, i64) {
    let raft = Protocol::Raft.stream_protocol().to_string();
    host.p2p
        .bandwidth()
        .get(&raft)
        .map_or((0, 0), |s| (s.total_out, s.total_in))
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_raft_requests_share_a_pipe_and_each_gets_its_own_answer() {
    let a = Host::start(Keypair::generate_ed25519(), SECRET, None).await;
    let mut b = Host::start(Keypair::generate_ed25519(), SECRET, None).await;
    serve_shuffled(&mut b);
    let b_id = b.p2p.peer_id();
    within(a.p2p.connect(b.addr().await)).await.unwrap();

    // Below the per-peer bound of requests in flight (100).
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..90u32 {
        let p2p = a.p2p.clone();
        calls.spawn(async move {
            let req = format!("append-{i}").into_bytes();
            let r = p2p.request(b_id, Protocol::Raft, req.clone()).await;
            (req, r)
        });
    }
    let mut sent = 0i64;
    while let Some(r) = within(calls.join_next()).await {
        let (req, answer) = r.unwrap();
        assert_eq!(answer.unwrap(), [b"raft:", &req[..]].concat());
        sent += req.len() as i64;
    }
    // Every message counted once with the pipe's 14-byte frame header (a
    // stream of its own would count 9 bytes of CBOR header): all went over
    // the pipe. The answer is 5 bytes longer than its request.
    assert_eq!(raft_bytes(&a), (sent + 90 * 14, sent + 90 * (14 + 5)));

    // A request over the pipe's size takes a stream of its own.
    let big = vec![3u8; 300 * 1024];
    let r = within(a.p2p.request(b_id, Protocol::Raft, big.clone())).await;
    assert_eq!(r.unwrap().len(), big.len() + 5);
    a.stop().await;
    b.stop().await;
}

/// A peer that does not serve pipes (an earlier version) is reached as before;
/// not even the first request fails.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_without_pipes_gets_raft_requests_on_streams_of_their_own() {
    let a = Host::start(Keypair::generate_ed25519(), SECRET, None).await;
    let mut b = Host::start_with(
        Keypair::generate_ed25519(),
        Some(SECRET),
        &["/ip4/127.0.0.1/tcp/0"],
        None,
        false,
    )
    .await
    .unwrap();
    serve_shuffled(&mut b);
    let b_id = b.p2p.peer_id();
    within(a.p2p.connect(b.addr().await)).await.unwrap();
    for i in 0..5u8 {
        let r = within(a.p2p.request(b_id, Protocol::Raft, vec![b'v', i])).await;
        assert_eq!(r.unwrap(), [b"raft:v".to_vec(), vec![i]].concat());
    }
    // The first went out on a pipe (2 + 14 bytes), which B closed unanswered;
    // then each on a stream of its own: 2 + 9 out, 7 + 9 back.
    assert_eq!(raft_bytes(&a), (16 + 5 * 11, 5 * 16));
    a.stop().await;
    b.stop().await;
}

/// On a pipe, one connection can carry more requests than libp2p's stream
/// bound: the per-peer bound refuses the one over it as busy, and serves the
/// peer again once its requests are answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_pipe_over_the_bound_is_told_busy() {
    let a = Host::start(Keypair::generate_ed25519(), SECRET, None).await;
    let mut b = Host::start(Keypair::generate_ed25519(), SECRET, None).await;
    let b_id = b.p2p.peer_id();
    let held: Arc<std::sync::Mutex<Vec<Inbound>>> = Arc::default();
    let mut inbound = b.inbound.take().unwrap();
    let h = held.clone();
    b.tasks.spawn(async move {
        while let Some(req) = inbound.recv().await {
            h.lock().unwrap().push(req);
        }
    });
    within(a.p2p.connect(b.addr().await)).await.unwrap();

    let max = crate::p2p::inflight::MAX_INFLIGHT_PER_PEER;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..max {
        let p2p = a.p2p.clone();
        calls.spawn(async move { p2p.request(b_id, Protocol::Raft, vec![i as u8]).await });
    }
    let deadline = Instant::now() + STEP;
    while held.lock().unwrap().len() < max {
        assert!(Instant::now() < deadline, "the requests never all arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = within(a.p2p.request(b_id, Protocol::Raft, b"over".to_vec())).await;
    assert!(matches!(r, Err(P2pError::Busy(_))), "{r:?}");

    // Answered, and one dropped unanswered: an error at once, not a timeout.
    let mut reqs: Vec<Inbound> = held.lock().unwrap().drain(..).collect();
    let dropped = reqs.pop().unwrap();
    for req in reqs {
        let answer = req.payload.clone();
        let _ = req.reply.send(answer);
    }
    drop(dropped);
    let (mut ok, mut remote) = (0, 0);
    while let Some(r) = within(calls.join_next()).await {
        match r.unwrap() {
            Ok(_) => ok += 1,
            Err(P2pError::Remote(_)) => remote += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((ok, remote), (max - 1, 1));
    a.stop().await;
    b.stop().await;
}
