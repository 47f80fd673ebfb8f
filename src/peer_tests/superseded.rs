//! An operation superseded while its daemon call is in progress: the daemon
//! may carry that call out after the client left (a lower cluster's proxy
//! does), so the operation that superseded it must reach the daemon after it,
//! not race it.

use std::path::Path;
use std::time::Duration;

use super::{start_peer_with, wait_for};
use crate::cluster::tracker::Phase;
use crate::config::Config;
use crate::ipfs::fake::FakeDaemon;
use crate::peer::Peer;
use crate::types::{Cid, PinOptions};

/// A peer with one pin worker before `daemon`, with pin `cid(0)` in a call the
/// daemon holds and then pins 1 to 3 queued behind it: released, each taking
/// `delay` in the daemon, those three go in one call.
async fn three_pins_in_one_call(
    daemon: &FakeDaemon,
    dir: &Path,
    cid: impl Fn(usize) -> Cid,
    delay: Duration,
) -> Peer {
    let secret = Config::generate().cluster.secret;
    let peer = start_peer_with(daemon, dir, &secret, Vec::new(), |cfg| {
        cfg.pin_tracker.stateless.concurrent_pins = 1;
    })
    .await;
    let cluster = peer.cluster();
    let tracker = cluster.tracker().clone();
    daemon.state.lock().unwrap().hang_pins = true;
    cluster.pin(cid(0), PinOptions::default()).await.unwrap();
    wait_for("the first call to be sent", Duration::from_secs(10), || {
        tracker
            .operation(&cid(0))
            .is_some_and(|op| op.phase == Phase::InProgress)
    })
    .await;
    for n in 1..=3 {
        cluster.pin(cid(n), PinOptions::default()).await.unwrap();
    }
    {
        let mut st = daemon.state.lock().unwrap();
        st.pin_delay = delay;
        st.hang_pins = false;
    }
    wait_for("the group call", Duration::from_secs(10), || {
        daemon.state.lock().unwrap().pin_args >= 4
    })
    .await;
    peer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_unpinned_while_its_group_call_runs_ends_unpinned() {
    let daemon = FakeDaemon::start().await;
    daemon.state.lock().unwrap().finish_abandoned_pins = true;
    let dir = tempfile::tempdir().unwrap();
    let cid = |n| super::cid("superseded", n);
    let peer = three_pins_in_one_call(&daemon, dir.path(), cid, Duration::from_millis(300)).await;
    let cluster = peer.cluster().clone();
    let tracker = cluster.tracker().clone();
    // One of the three is unpinned while their call runs.
    cluster.unpin(cid(2)).await.unwrap();

    wait_for("the tracker to settle", Duration::from_secs(30), || {
        (0..=3).all(|n| tracker.operation(&cid(n)).is_none())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    {
        let st = daemon.state.lock().unwrap();
        let held = |n| st.pins.contains_key(&cid(n).to_string());
        assert!(!held(2), "the unpinned CID is still pinned on the daemon");
        assert!(held(0) && held(1) && held(3), "{:?}", st.pins.keys());
    }
    peer.shutdown().await;
    daemon.stop().await;
}

/// A group call is not given up for a superseded operation, but a shutdown
/// still cuts it short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_call_in_progress_ends_at_shutdown() {
    let daemon = FakeDaemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cid = |n| super::cid("shutdown", n);
    // A call that would take 15 s.
    let peer = three_pins_in_one_call(&daemon, dir.path(), cid, Duration::from_secs(5)).await;
    let t = std::time::Instant::now();
    peer.shutdown().await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?} for the call",
        t.elapsed()
    );
    daemon.stop().await;
}
