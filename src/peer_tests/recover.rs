//! Recovering every failed pin answers each with the pin as the pinset holds it
//! (their pins read at once, off the runtime's workers), and a pin update
//! starts from the pin as it is.

use std::time::Duration;

use super::{start_peer, wait_for};
use crate::cluster::ClusterError;
use crate::config::Config;
use crate::ipfs::fake::FakeDaemon;
use crate::types::{PinOptions, TrackerStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_all_answers_each_pin_with_its_options() {
    let daemon = FakeDaemon::start().await;
    daemon.state.lock().unwrap().fail_pins = Some("no route to the content".into());
    let dir = tempfile::tempdir().unwrap();
    let secret = Config::generate().cluster.secret;
    let peer = start_peer(&daemon, dir.path(), &secret, Vec::new()).await;
    let cluster = peer.cluster();
    let cids: Vec<_> = (0..3).map(|n| super::cid("recover", n)).collect();
    for (n, cid) in cids.iter().enumerate() {
        let options = PinOptions {
            name: format!("failing {n}"),
            ..Default::default()
        };
        cluster
            .pin(*cid, options)
            .await
            .expect("pinned in the pinset");
    }
    for cid in &cids {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while cluster.status_local(cid).await.status != TrackerStatus::PinError {
            assert!(tokio::time::Instant::now() < deadline, "{cid} never failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    daemon.state.lock().unwrap().fail_pins = None;
    let items = cluster.recover_all(false).await.expect("recover all");
    let mut want = cids.clone();
    want.sort();
    assert_eq!(items.iter().map(|g| g.cid).collect::<Vec<_>>(), want);
    for g in &items {
        let n = cids.iter().position(|c| *c == g.cid).unwrap();
        assert_eq!(g.name, format!("failing {n}"));
        assert_eq!(g.peer_map.len(), 1, "{:?}", g.peer_map);
        assert!(g.peer_map.contains_key(cluster.peer_id()));
    }
    let pinned = || {
        let st = daemon.state.lock().unwrap();
        cids.iter().all(|c| st.pins.contains_key(&c.to_string()))
    };
    wait_for(
        "the recovered pins on the daemon",
        Duration::from_secs(20),
        pinned,
    )
    .await;

    // An update starts from the pin as it is now: its options carry over...
    let to = super::cid("recover-to", 0);
    let (pin, _) = cluster
        .pin_update(cids[1], to, PinOptions::default(), false)
        .await
        .expect("pin update");
    assert_eq!(pin.options.name, "failing 1");
    assert_eq!(pin.options.pin_update, Some(cids[1]));
    // ... and there is nothing to update from a CID that is not pinned.
    let missing = super::cid("recover-missing", 0);
    let err = cluster
        .pin_update(
            missing,
            super::cid("recover-to", 1),
            PinOptions::default(),
            false,
        )
        .await
        .expect_err("nothing to update from");
    assert!(matches!(err, ClusterError::InvalidArgument(_)), "{err:?}");
    peer.shutdown().await;
    daemon.stop().await;
}
