//! The per-peer bound on inbound requests, end to end: real hosts on 127.0.0.1.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::p2p::behaviour::{Payload, Refusal, Response};

/// Two hosts with one identity stand for one peer with two connections (as
/// a peer has after a redial while its old connection lives, or over TCP and
/// QUIC): libp2p bounds streams per connection at the same 100, so only a
/// peer with several connections meets the per-peer bound.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_over_its_bound_is_told_busy_while_another_is_served() {
    let a_key = Keypair::generate_ed25519();
    let a1 = Host::start(a_key.clone(), SECRET, None).await;
    let a2 = Host::start(a_key, SECRET, None).await;
    let c = Host::start(Keypair::generate_ed25519(), SECRET, None).await;
    let mut b = Host::start(Keypair::generate_ed25519(), SECRET, None).await;
    let (a_id, b_id) = (a1.p2p.peer_id(), b.p2p.peer_id());
    assert_eq!(a_id, a2.p2p.peer_id());

    // B holds A's requests until released; it answers everyone else at once.
    let held: Arc<std::sync::Mutex<Vec<Inbound>>> = Arc::default();
    let released = Arc::new(AtomicBool::new(false));
    let mut inbound = b.inbound.take().unwrap();
    let (h, r) = (held.clone(), released.clone());
    b.tasks.spawn(async move {
        while let Some(req) = inbound.recv().await {
            if req.peer == a_id && !r.load(Ordering::SeqCst) {
                h.lock().unwrap().push(req);
            } else {
                let answer = [b"ok:", &req.payload[..]].concat();
                let _ = req.reply.send(answer);
            }
        }
    });
    let b_addr = b.addr().await;
    for host in [&a1, &a2, &c] {
        within(host.p2p.connect(b_addr.clone())).await.unwrap();
    }

    // 100 requests from A over its first connection: all reach B and wait there.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..MAX_INFLIGHT {
        let p2p = a1.p2p.clone();
        calls.spawn(async move { p2p.request(b_id, Protocol::Rpc, vec![i as u8]).await });
    }
    let deadline = Instant::now() + STEP;
    while held.lock().unwrap().len() < MAX_INFLIGHT {
        assert!(
            Instant::now() < deadline,
            "A's requests never all reached B"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The 101st, over A's other connection: refused as busy, at once.
    let started = Instant::now();
    let r = within(a2.p2p.request(b_id, Protocol::Rpc, b"101st".to_vec())).await;
    assert!(matches!(r, Err(P2pError::Busy(_))), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Another peer is served meanwhile, and so is A on the other protocol.
    let r = within(c.p2p.request(b_id, Protocol::Rpc, b"c".to_vec())).await;
    assert_eq!(r.unwrap(), b"ok:c");
    released.store(true, Ordering::SeqCst);
    let r = within(a2.p2p.request(b_id, Protocol::Raft, b"raft".to_vec())).await;
    assert_eq!(r.unwrap(), b"ok:raft");

    // Once answered, A's places come back.
    for req in held.lock().unwrap().drain(..) {
        let answer = [b"ok:", &req.payload[..]].concat();
        let _ = req.reply.send(answer);
    }
    let mut answered = 0;
    while let Some(r) = within(calls.join_next()).await {
        r.unwrap().unwrap();
        answered += 1;
    }
    assert_eq!(answered, MAX_INFLIGHT);
    let r = within(a2.p2p.request(b_id, Protocol::Rpc, b"again".to_vec())).await;
    assert_eq!(r.unwrap(), b"ok:again");

    for h in [a1, a2, c, b] {
        h.stop().await;
    }
}

const MAX_INFLIGHT: usize = crate::p2p::inflight::MAX_INFLIGHT_PER_PEER;

/// A reply's bytes stay the byte string earlier versions sent and read; a
/// refusal is a map, which an earlier version's decoder rejects.
#[test]
fn replies_keep_their_wire_form_and_refusals_are_distinct() {
    let mut old = Vec::new();
    ciborium::into_writer(&Payload::new(b"abc".to_vec()), &mut old).unwrap();
    let mut new = Vec::new();
    ciborium::into_writer(&Response::Data(Payload::new(b"abc".to_vec())), &mut new).unwrap();
    assert_eq!(old, new);
    match ciborium::from_reader::<Response, _>(&old[..]).unwrap() {
        Response::Data(p) => assert_eq!(p.into_vec(), b"abc"),
        other => panic!("{other:?}"),
    }
    // Past ciborium's scratch buffer: read as an owned buffer.
    let big = vec![5u8; 10_000];
    let mut enc = Vec::new();
    ciborium::into_writer(&Payload::new(big.clone()), &mut enc).unwrap();
    match ciborium::from_reader::<Response, _>(&enc[..]).unwrap() {
        Response::Data(p) => assert_eq!(p.into_vec(), big),
        other => panic!("{other:?}"),
    }
    let mut busy = Vec::new();
    ciborium::into_writer(&Response::Refused(Refusal::busy(100)), &mut busy).unwrap();
    match ciborium::from_reader::<Response, _>(&busy[..]).unwrap() {
        Response::Refused(r) => assert_eq!(r, Refusal::busy(100)),
        other => panic!("{other:?}"),
    }
    assert!(ciborium::from_reader::<Payload, _>(&busy[..]).is_err());
}
