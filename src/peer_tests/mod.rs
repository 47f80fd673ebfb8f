//! In-process peers before fake daemons: consensus and the tracker seen
//! together, without processes or a real daemon.

mod hung_daemon;
mod informer;
mod recover;
mod remote_pins;
mod superseded;

use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::{Config, GoDuration, Identity, Multiaddrs};
use crate::ipfs::fake::FakeDaemon;
use crate::peer::{Peer, StartOptions};
use crate::types::Cid;

/// An identity CID, distinct for each `tag` and `n`.
fn cid(tag: &str, n: usize) -> Cid {
    let data = format!("{tag}-{n}");
    let mut bytes = vec![0x01, 0x55, 0x00, data.len() as u8];
    bytes.extend_from_slice(data.as_bytes());
    Cid::from_bytes(&bytes).expect("an identity CID")
}

/// A peer before `daemon` with small snapshots and fast elections; no proxy or
/// REST API (this is about consensus and the tracker).
async fn start_peer(daemon: &FakeDaemon, dir: &Path, secret: &str, bootstrap: Vec<String>) -> Peer {
    start_peer_with(daemon, dir, secret, bootstrap, |_| {}).await
}

/// [`start_peer`] with the configuration changed by `edit` last.
async fn start_peer_with(
    daemon: &FakeDaemon,
    dir: &Path,
    secret: &str,
    bootstrap: Vec<String>,
    edit: impl FnOnce(&mut Config),
) -> Peer {
    let mut cfg = Config::generate();
    cfg.cluster.secret = secret.to_string();
    cfg.cluster.listen_multiaddress = Multiaddrs(vec!["/ip4/127.0.0.1/tcp/0".into()]);
    cfg.ipfs_connector.ipfshttp.node_multiaddress = daemon.multiaddr();
    cfg.api.ipfsproxy = None;
    cfg.api.restapi = None;
    let r = &mut cfg.consensus.raft;
    r.heartbeat_timeout = GoDuration::millis(100);
    r.election_timeout = GoDuration::millis(500);
    r.wait_for_leader_timeout = GoDuration::secs(10);
    r.network_timeout = GoDuration::secs(5);
    r.snapshot_interval = GoDuration::millis(20);
    r.snapshot_threshold = 40;
    r.trailing_logs = 10;
    edit(&mut cfg);
    Peer::start(dir, cfg, Identity::generate(), StartOptions { bootstrap })
        .await
        .expect("peer starts")
}

/// Polls `ok` every 50 ms; fails the test after `within`.
async fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
