//! `numpin` lists every pin the daemon holds, so a peer sends it only when
//! its allocator weighs peers by it.

use std::time::Duration;

use super::{start_peer_with, wait_for};
use crate::config::Config;
use crate::ipfs::fake::FakeDaemon;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numpin_is_sent_only_when_the_allocator_uses_it() {
    for uses_numpin in [false, true] {
        let daemon = FakeDaemon::start().await;
        {
            let mut st = daemon.state.lock().unwrap();
            for n in 0..3 {
                let cid = super::cid("numpin", n).to_string();
                st.pins.insert(cid, "recursive".into());
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let secret = Config::generate().cluster.secret;
        let peer = start_peer_with(&daemon, dir.path(), &secret, Vec::new(), |cfg| {
            if uses_numpin {
                cfg.allocator.balanced.allocate_by = vec!["numpin".into()];
            }
        })
        .await;
        let monitor = peer.cluster().monitor();
        wait_for("this peer's metrics", Duration::from_secs(20), || {
            !monitor.latest("freespace").is_empty()
        })
        .await;
        let numpin = monitor.latest("numpin");
        if uses_numpin {
            assert_eq!(numpin.len(), 1, "{numpin:?}");
            assert_eq!(numpin[0].value, "3");
        } else {
            assert!(numpin.is_empty(), "{numpin:?}");
        }
        peer.shutdown().await;
        daemon.stop().await;
    }
}
