//! Removal follows from the committed membership: a `Removed` notice from a peer
//! that is not the leader, or from the leader while the membership still holds
//! the peer, is ignored; a real `peers rm` still makes the removed peer leave.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use ipfs_cluster::config::Identity;
use ipfs_cluster::p2p::{P2p, P2pConfig, Protocol};
use ipfs_cluster::raft::{RaftRpc, encode_payload};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn raft_info(p: &PeerProc) -> Option<Value> {
    http()
        .get(format!("{}/raft", p.rest()))
        .timeout(Duration::from_secs(2))
        .send()
        .ok()?
        .json()
        .ok()
}

fn voters(p: &PeerProc) -> usize {
    raft_info(p)
        .and_then(|v| v["voters"].as_array().map(|a| a.len()))
        .unwrap_or(0)
}

/// Sends a `Removed` notice to `to` as the holder of `identity` (a member's
/// identity, or a stranger's with the cluster secret): what a compromised or
/// buggy peer could send.
fn send_removed(
    rt: &tokio::runtime::Runtime,
    identity: Option<&Identity>,
    secret: [u8; 32],
    to: &str,
) {
    rt.block_on(async {
        let keypair = match identity {
            Some(i) => i.keypair.clone(),
            None => libp2p_identity::Keypair::generate_ed25519(),
        };
        let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
        let (p2p, _inbound) = P2p::start(
            P2pConfig {
                keypair,
                secret: Some(secret),
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
                request_timeout: Duration::from_secs(5),
                peerstore: None,
                pipes: true,
            },
            &tasks,
            cancel.clone(),
        )
        .await
        .expect("a libp2p host");
        let peer = p2p.connect(to.parse().unwrap()).await.expect("connect");
        let r = p2p
            .request(peer, Protocol::Raft, encode_payload(&RaftRpc::Removed))
            .await;
        assert!(r.is_ok(), "the notice was not delivered: {r:?}");
        cancel.cancel();
        tasks.close();
        tasks.wait().await;
    });
}

#[test]
fn spoofed_removal_notices_do_not_stop_a_peer() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // No daemons: consensus and removal do not need them.
    let nodes: Vec<String> = (0..3)
        .map(|_| format!("/ip4/127.0.0.1/tcp/{}", free_port()))
        .collect();
    let mut c = start_cluster_on(&nodes, |_, _| {});
    let ids: Vec<String> = c.peers.iter().map(|p| p.peer_id()).collect();
    let mut leader = None;
    wait_until("a leader", Duration::from_secs(20), || {
        leader = raft_info(&c.peers[0])
            .and_then(|v| v["leader"].as_str().map(str::to_string))
            .and_then(|l| ids.iter().position(|id| *id == l));
        leader.is_some()
    });
    let leader = leader.unwrap();
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (target, other) = (followers[0], followers[1]);
    let secret: [u8; 32] = hex::decode(secret_of(&c.peers[0]).as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let identity = |i: usize| Identity::load(&c.peers[i].dir.join("identity.json")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // A follower (a member, but not the leader) tells another it was removed.
    send_removed(
        &rt,
        Some(&identity(other)),
        secret,
        &c.peers[target].cluster_multiaddr(),
    );
    // A stranger with the secret tells the leader.
    send_removed(&rt, None, secret, &c.peers[leader].cluster_multiaddr());
    // The leader's own identity, while the membership still holds the target.
    send_removed(
        &rt,
        Some(&identity(leader)),
        secret,
        &c.peers[target].cluster_multiaddr(),
    );

    std::thread::sleep(Duration::from_secs(2));
    for (i, p) in c.peers.iter_mut().enumerate() {
        assert!(p.is_running(), "peer {i} stopped on a spoofed notice");
        assert_eq!(voters(p), 3, "peer {i}");
        assert!(p.dir.join("raft").is_dir(), "peer {i}'s raft folder moved");
    }
    let pin = id_cid(4242);
    let r = http()
        .post(format!("{}/pins/{pin}", c.peers[target].rest()))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "the target still writes");

    // A real removal, committed by the leader, still makes the peer leave.
    let r = http()
        .delete(format!("{}/peers/{}", c.peers[leader].rest(), ids[target]))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert!(
        c.peers[target].wait_exit(Duration::from_secs(20)).is_some(),
        "the removed peer kept running"
    );
    wait_until("two voters", Duration::from_secs(10), || {
        voters(&c.peers[other]) == 2
    });
}
