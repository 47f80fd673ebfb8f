//! A cluster of peer processes formed as users do (`init --peers`), for the
//! multi-peer and compatibility tests.

use std::time::Instant;

use serde_json::Value;

use super::*;

/// Peers (and the daemons they stand before, when this cluster started them).
pub struct Cluster {
    pub daemons: Vec<Daemon>,
    pub peers: Vec<PeerProc>,
    pub _dirs: Vec<tempfile::TempDir>,
    pub _serial: Option<std::sync::MutexGuard<'static, ()>>,
}

/// One cluster at a time: each runs several daemons and peers, and on a small
/// machine their elections would otherwise compete for the CPU.
pub static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Raft timings for tests: fast elections, small snapshots.
pub fn fast_raft(v: &mut Value) {
    let r = &mut v["consensus"]["raft"];
    r["heartbeat_timeout"] = "100ms".into();
    r["election_timeout"] = "500ms".into();
    r["wait_for_leader_timeout"] = "6s".into();
    r["network_timeout"] = "2s".into();
    r["snapshot_interval"] = "20ms".into();
    r["snapshot_threshold"] = 40.into();
    r["trailing_logs"] = 10.into();
}

pub fn start_daemons(n: usize) -> Vec<Daemon> {
    let handles: Vec<_> = (0..n).map(|_| std::thread::spawn(Daemon::start)).collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("daemon thread"))
        .collect()
}

/// `n` peers initialised with one `--peers` list, started together.
pub fn start_cluster(n: usize) -> Cluster {
    start_cluster_with(n, |_, _| {})
}

/// Like `start_cluster`, with each peer's service.json changed by `customize`.
pub fn start_cluster_with(n: usize, customize: impl Fn(usize, &mut Value)) -> Cluster {
    let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let daemons = start_daemons(n);
    let nodes: Vec<String> = daemons.iter().map(|d| d.multiaddr()).collect();
    let mut c = start_cluster_on(&nodes, customize);
    c.daemons = daemons;
    c._serial = Some(serial);
    c
}

/// A cluster whose peers' IPFS connectors point at `nodes` (daemons, or another
/// cluster's proxies), one peer each. The caller holds the serial lock.
pub fn start_cluster_on(nodes: &[String], customize: impl Fn(usize, &mut Value)) -> Cluster {
    let n = nodes.len();
    let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    // Identities first: the peer list needs every peer's ID and port.
    let mut peers: Vec<PeerProc> = dirs
        .iter()
        .zip(nodes)
        .map(|(d, node)| PeerProc::init(d.path(), node))
        .collect();
    let addrs: Vec<String> = peers.iter().map(|p| p.cluster_multiaddr()).collect();
    let secret = {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(peers[0].dir.join("service.json")).unwrap(),
        )
        .unwrap();
        v["cluster"]["secret"].clone()
    };
    for (i, p) in peers.iter().enumerate() {
        // `init --peers` as a user runs it, with the other peers' addresses; the
        // identity made by the first init is kept, as the list names it.
        let others: Vec<String> = addrs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, a)| a.clone())
            .collect();
        let identity = std::fs::read(p.dir.join("identity.json")).unwrap();
        let st = std::process::Command::new(service_bin())
            .args([
                "--config",
                &p.dir.to_string_lossy(),
                "init",
                "--force",
                "--peers",
            ])
            .arg(others.join(","))
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::write(p.dir.join("identity.json"), identity).unwrap();
        let peerstore = std::fs::read_to_string(p.dir.join("peerstore")).unwrap();
        assert_eq!(peerstore.lines().count(), n - 1, "{peerstore}");
        let secret = secret.clone();
        p.edit_config(|v| {
            assert_eq!(
                v["consensus"]["raft"]["init_peerset"]
                    .as_array()
                    .unwrap()
                    .len(),
                n - 1
            );
            v["cluster"]["secret"] = secret;
            fast_raft(v);
            customize(i, v);
        });
    }
    let t0 = Instant::now();
    for p in peers.iter_mut() {
        p.spawn();
    }
    for p in peers.iter_mut() {
        p.wait_ready();
    }
    // A peer serves its APIs only once a leader is elected and it applied the log.
    eprintln!(
        "{n} peers started, leader elected and ready in {:?}",
        t0.elapsed()
    );
    Cluster {
        daemons: Vec::new(),
        peers,
        _dirs: dirs,
        _serial: None,
    }
}

pub fn secret_of(p: &PeerProc) -> Value {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(p.dir.join("service.json")).unwrap())
            .unwrap();
    v["cluster"]["secret"].clone()
}
