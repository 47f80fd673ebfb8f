//! A peer whose IPFS daemon hangs keeps following consensus: it joins a
//! cluster whose log was compacted, so it catches up by installing a snapshot,
//! then keeps applying entries and serving writes, while every `pin/ls` and
//! `pin/add` its tracker sends the daemon waits unanswered. Raft apply never
//! waits on the tracker, and the tracker never holds apply up on the daemon.

use std::time::Duration;

use super::{start_peer, wait_for};
use crate::config::Config;
use crate::ipfs::fake::FakeDaemon;
use crate::types::{Cid, PinOptions};

fn cid(n: usize) -> Cid {
    super::cid("hung", n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_daemon_hangs_installs_a_snapshot_and_keeps_applying() {
    const FIRST: usize = 120;
    const MORE: usize = 60;
    let good = FakeDaemon::start().await;
    let hung = FakeDaemon::start().await;
    hung.state.lock().unwrap().hang_pins = true;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let secret = Config::generate().cluster.secret;

    let a = start_peer(&good, dirs.0.path(), &secret, Vec::new()).await;
    for n in 0..FIRST {
        a.cluster()
            .pin(cid(n), PinOptions::default())
            .await
            .unwrap();
    }
    // The log was compacted: a newcomer can only catch up by snapshot.
    wait_for(
        "a snapshot and a purge on A",
        Duration::from_secs(20),
        || a.cluster().consensus().info().purged_index.unwrap_or(0) > 0,
    )
    .await;

    let a_addr = a.cluster_addrs().await[0].to_string();
    let b = tokio::time::timeout(
        Duration::from_secs(60),
        start_peer(&hung, dirs.1.path(), &secret, vec![a_addr]),
    )
    .await
    .expect("the peer before a hung daemon joined in time");
    let info = b.cluster().consensus().info();
    assert!(
        info.snapshot_index.is_some(),
        "no snapshot installed: {info:?}"
    );
    assert_eq!(info.voters.len(), 2, "{info:?}");
    assert_eq!(
        b.cluster().consensus().state().count().unwrap(),
        FIRST as u64
    );
    // Its tracker did reach the daemon, which hangs: the snapshot's
    // reconciliation (pin/ls) or the pins themselves (pin/add) wait there.
    wait_for(
        "the tracker to call the hung daemon",
        Duration::from_secs(20),
        || hung.state.lock().unwrap().hung_calls > 0,
    )
    .await;

    // Consensus goes on through B: entries committed by A are applied on B,
    // and B's own writes (applied on B before they are acknowledged) succeed.
    for n in FIRST..FIRST + MORE {
        let via = if n % 2 == 0 { &a } else { &b };
        tokio::time::timeout(
            Duration::from_secs(20),
            via.cluster().pin(cid(n), PinOptions::default()),
        )
        .await
        .expect("a write while B's daemon hangs")
        .unwrap();
    }
    let index = a.cluster().consensus().info().applied_index;
    tokio::time::timeout(
        Duration::from_secs(20),
        b.cluster().consensus().wait_applied(index),
    )
    .await
    .expect("B applies while its daemon hangs")
    .unwrap();
    assert_eq!(
        b.cluster().consensus().state().count().unwrap(),
        (FIRST + MORE) as u64
    );
    assert!(hung.state.lock().unwrap().pins.is_empty());

    // Released, the daemon answers and B's tracker catches up on every pin.
    hung.state.lock().unwrap().hang_pins = false;
    wait_for(
        "B's daemon to hold every pin",
        Duration::from_secs(60),
        || hung.state.lock().unwrap().pins.len() == FIRST + MORE,
    )
    .await;

    b.shutdown().await;
    a.shutdown().await;
    good.stop().await;
    hung.stop().await;
}
