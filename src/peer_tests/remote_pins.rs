//! A pin allocated to other peers leaves this peer's daemon alone unless this
//! peer held it: the daemon may hold it for someone else (a user, or, in a
//! composite cluster, a sibling peer sharing the lower cluster's pinset).

use std::time::Duration;

use super::{start_peer, wait_for};
use crate::config::Config;
use crate::ipfs::fake::FakeDaemon;
use crate::peer::Peer;
use crate::raft::LogOp;
use crate::types::{Cid, Pin, PinOptions};

fn on(daemon: &FakeDaemon, cid: &Cid) -> bool {
    daemon
        .state
        .lock()
        .unwrap()
        .pins
        .contains_key(&cid.to_string())
}

/// Commits `cid` allocated to `peer` alone, as an allocation or a
/// re-allocation would, through `via`; returns once both peers' trackers have
/// seen it and ended what it started.
async fn pin_on(via: &Peer, other: &Peer, cid: Cid, peer: &Peer) {
    let mut pin = Pin::new(cid, PinOptions::default());
    pin.allocations = vec![peer.cluster().peer_id().to_string()];
    let c = via
        .cluster()
        .consensus()
        .commit(LogOp::Pin(Box::new(pin)))
        .await
        .unwrap();
    for p in [via, other] {
        let op = p.cluster().tracker().wait_operation(&cid, c.index).await;
        assert!(op.as_ref().is_none_or(|o| o.error.is_empty()), "{op:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_pin_is_unpinned_only_where_it_was_held() {
    let (da, db) = (FakeDaemon::start().await, FakeDaemon::start().await);
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let secret = Config::generate().cluster.secret;
    let a = start_peer(&da, dirs.0.path(), &secret, Vec::new()).await;
    let a_addr = a.cluster_addrs().await[0].to_string();
    let b = start_peer(&db, dirs.1.path(), &secret, vec![a_addr]).await;
    wait_for("B in the peerset", Duration::from_secs(20), || {
        a.cluster().consensus().info().voters.len() == 2
    })
    .await;

    // B's daemon holds X for someone else; the cluster pins X on A only.
    let x = super::cid("remote", 1);
    db.state
        .lock()
        .unwrap()
        .pins
        .insert(x.to_string(), "recursive".into());
    pin_on(&a, &b, x, &a).await;
    assert!(on(&da, &x));
    assert!(on(&db, &x), "B unpinned a pin it never held");

    // Y pinned on B, then moved to A: B held it, so B unpins it.
    let y = super::cid("remote", 2);
    pin_on(&a, &b, y, &b).await;
    assert!(on(&db, &y) && !on(&da, &y));
    pin_on(&b, &a, y, &a).await;
    assert!(on(&da, &y));
    assert!(!on(&db, &y), "B kept a pin moved away from it");

    b.shutdown().await;
    a.shutdown().await;
    da.stop().await;
    db.stop().await;
}
