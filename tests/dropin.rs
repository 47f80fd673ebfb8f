//! A Go ipfs-cluster user's files and habits: upstream's sample configs with
//! their RSA identity, upstream-form `init_peerset`, upstream's default listen
//! addresses (QUIC), the crdt refusal, and daemons connected through the cluster
//! (`connect_swarms`, pin origins) with real IPFS daemons.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use serde_json::Value;

const UPSTREAM_ID: &str = "QmdEtBsfumeH2V6dnx1fgn8zuW7XYjWdgJF4NEYpEBcTsg";

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/upstream")
        .join(name)
}

/// A peer whose config folder holds upstream's sample `name` (files copied
/// unchanged), before a daemon that is not there; listeners are moved to free
/// ports by the harness's environment overrides.
fn upstream_sample_peer(name: &str, dir: &std::path::Path) -> PeerProc {
    let dead = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let peer = PeerProc::init(dir, &dead);
    for f in std::fs::read_dir(fixture(name)).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
    }
    peer
}

#[test]
fn upstream_sample_configs_start_with_their_rsa_identity() {
    for name in ["basic_auth", "ssl", "ssl-basic_auth"] {
        let dir = tempfile::tempdir().unwrap();
        let mut peer = upstream_sample_peer(name, dir.path());
        let log = dir.path().join("peer.log");
        peer.start_logging_to("info", &log);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains(&format!("/p2p/{UPSTREAM_ID}")),
            "{name}: the RSA identity is not the peer's: {text}"
        );
        if name == "basic_auth" {
            // Served over plain HTTP, with upstream's credentials.
            let id: Value = http()
                .get(format!("{}/id", peer.rest()))
                .basic_auth("testuser", Some("testpass"))
                .send()
                .unwrap()
                .json()
                .unwrap();
            assert_eq!(id["id"], UPSTREAM_ID);
            assert_eq!(id["peername"], "testname");
            assert_eq!(status(http().get(format!("{}/id", peer.rest()))), 401);
        } else {
            // Served over TLS with upstream's certificate (self-signed: not verified
            // here; tests/ctl.rs checks verification).
            ipfs_cluster::http::install_crypto_provider();
            let tls = reqwest::blocking::Client::builder()
                .tls_danger_accept_invalid_certs(true)
                .build()
                .unwrap();
            let url = format!("https://127.0.0.1:{}/id", peer.rest_port);
            let mut req = tls.get(&url);
            if name == "ssl-basic_auth" {
                assert_eq!(status(tls.get(&url)), 401);
                req = req.basic_auth("testuser", Some("testpass"));
            }
            let id: Value = req.send().unwrap().json().unwrap();
            assert_eq!(id["id"], UPSTREAM_ID, "{name}");
        }
        peer.stop();
    }
}

#[test]
fn three_peers_from_upstream_form_init_peerset_form_one_cluster() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dead: Vec<String> = (0..3)
        .map(|_| format!("/ip4/127.0.0.1/tcp/{}", free_port()))
        .collect();
    let c = start_cluster_on(&dead, |_, v| {
        // `init --peers` wrote upstream's form: bare peer IDs, addresses in the
        // peerstore file.
        for e in v["consensus"]["raft"]["init_peerset"].as_array().unwrap() {
            let e = e.as_str().unwrap();
            assert!(!e.contains('/'), "not a bare peer ID: {e}");
        }
    });
    let mut want: Vec<String> = c.peers.iter().map(|p| p.peer_id()).collect();
    want.sort();
    for p in &c.peers {
        wait_until("a peerset of three", Duration::from_secs(20), || {
            let id: Value = get_json(&format!("{}/id", p.rest()));
            let mut got: Vec<String> = id["cluster_peers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(String::from))
                .collect();
            got.sort();
            got == want
        });
    }
    // One cluster: a pin made through one peer is in every peer's pinset.
    let cid = id_cid(77);
    let r = http()
        .post(format!("{}/pins/{cid}", c.peers[0].rest()))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    for p in &c.peers {
        wait_until("the pin everywhere", Duration::from_secs(20), || {
            http()
                .get(format!("{}/allocations/{cid}", p.rest()))
                .send()
                .is_ok_and(|r| r.status().is_success())
        });
    }
}

#[test]
fn upstream_default_listen_addresses_start_with_one_quic_warning() {
    let dir = tempfile::tempdir().unwrap();
    let dead = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let peer = PeerProc::init(dir.path(), &dead);
    let port = peer.cluster_port;
    // Upstream's defaults (`/ip4/0.0.0.0/tcp/9096`, `/ip4/0.0.0.0/udp/9096/quic`),
    // on loopback and a free port, plus the quic-v1 spelling.
    peer.edit_config(|v| {
        v["cluster"]["listen_multiaddress"] = serde_json::json!([
            format!("/ip4/127.0.0.1/tcp/{port}"),
            format!("/ip4/127.0.0.1/udp/{port}/quic"),
            format!("/ip4/127.0.0.1/udp/{port}/quic-v1"),
        ]);
    });
    let log = dir.path().join("peer.log");
    let mut cmd = peer.command();
    cmd.env_remove("CLUSTER_LISTENMULTIADDRESS")
        .env("IPFS_CLUSTER_LOG_LEVEL", "info")
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", peer.rest_port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "peer exited");
        assert!(Instant::now() < deadline, "peer did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("not listening on").count(), 1, "{text}");
    assert!(
        text.contains("quic-v1") && text.contains("private network"),
        "{text}"
    );
}

#[test]
fn a_crdt_config_is_refused_with_the_way_over() {
    let dir = tempfile::tempdir().unwrap();
    let peer = PeerProc::init(dir.path(), "/ip4/127.0.0.1/tcp/1");
    peer.edit_config(|v| {
        v["consensus"] = serde_json::json!({
            "crdt": {"cluster_name": "ipfs-cluster", "trusted_peers": ["*"]}
        });
    });
    let out = peer.command().stderr(Stdio::piped()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for part in [
        "crdt",
        "ipfs-cluster-service state export",
        "\"raft\"",
        "ipfs-cluster-service state import",
    ] {
        assert!(err.contains(part), "{part:?} missing: {err}");
    }
}

#[test]
fn sd_notify_ready_once_the_peer_serves() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let peer = PeerProc::init(&dir.path().join("cfg"), "/ip4/127.0.0.1/tcp/1");
    let mut child = peer
        .command()
        .env("NOTIFY_SOCKET", &sock_path)
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("a notification");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means serving.
    assert!(std::net::TcpStream::connect(("127.0.0.1", peer.rest_port)).is_ok());
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
}

/// Daemons with their swarm on (`IPFS_OFFLINE=0`) that know nothing of each
/// other: no bootstrap peers, no mDNS.
fn online_daemons(n: usize) -> Vec<Daemon> {
    let handles: Vec<_> = (0..n)
        .map(|_| std::thread::spawn(|| Daemon::start_with_env(&[("IPFS_OFFLINE", "0")])))
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn swarm_peers(d: &Daemon) -> Vec<String> {
    let v: Value = http()
        .post(format!("{}/swarm/peers", d.api()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["Peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["Peer"].as_str().map(String::from))
        .collect()
}

fn daemon_id(d: &Daemon) -> Value {
    http()
        .post(format!("{}/id", d.api()))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

fn fast_metrics(v: &mut Value) {
    v["cluster"]["monitor_ping_interval"] = "1s".into();
    v["cluster"]["peer_watch_interval"] = "1s".into();
    v["monitor"]["pubsubmon"]["check_interval"] = "1s".into();
    for informer in ["disk", "tags", "pinqueue"] {
        v["informer"][informer]["metric_ttl"] = "2s".into();
    }
}

/// Adds unique content on `d` (not pinned), pins it through `via` allocated to
/// `to` only, and waits until `to` reports it pinned.
fn pin_content_elsewhere(d: &Daemon, via: &PeerProc, to: &PeerProc, query: &str, tag: &str) {
    let data = format!("connect-swarms content {tag} {:?}", Instant::now()).into_bytes();
    let cid = add_bytes(&d.api(), "c.txt", data);
    let r = http()
        .post(format!(
            "{}/pins/{cid}?replication-min=1&replication-max=1&user-allocations={}{query}",
            via.rest(),
            to.peer_id()
        ))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().unwrap_or_default());
    let target = to.peer_id();
    wait_until(
        "the pin to end pinned on the allocated peer",
        Duration::from_secs(90),
        || {
            let g: Value = get_json(&format!("{}/pins/{cid}", to.rest()));
            g["peer_map"][&target]["status"] == "pinned"
        },
    );
}

#[test]
fn connect_swarms_lets_an_allocated_peer_fetch_content_added_elsewhere() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let daemons = online_daemons(2);
    assert!(swarm_peers(&daemons[0]).is_empty() && swarm_peers(&daemons[1]).is_empty());
    let nodes: Vec<String> = daemons.iter().map(|d| d.multiaddr()).collect();
    let c = start_cluster_on(&nodes, |_, v| {
        fast_metrics(v);
        v["ipfs_connector"]["ipfshttp"]["connect_swarms_delay"] = "2s".into();
    });
    let other = daemon_id(&daemons[0])["ID"].as_str().unwrap().to_string();
    wait_until(
        "the daemons to be connected through the cluster",
        Duration::from_secs(30),
        || swarm_peers(&daemons[1]).contains(&other),
    );
    pin_content_elsewhere(&daemons[0], &c.peers[0], &c.peers[1], "", "swarms");
}

#[test]
fn pin_origins_are_dialled_before_pinning() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let daemons = online_daemons(2);
    let nodes: Vec<String> = daemons.iter().map(|d| d.multiaddr()).collect();
    // connect_swarms off (0, as upstream): only the origins can bring the daemons together.
    let c = start_cluster_on(&nodes, |_, v| {
        fast_metrics(v);
        v["ipfs_connector"]["ipfshttp"]["connect_swarms_delay"] = "0s".into();
    });
    let id = daemon_id(&daemons[0]);
    let origin = id["Addresses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .find(|a| a.starts_with("/ip4/127.0.0.1/tcp/"))
        .expect("a loopback TCP address of the daemon")
        .to_string();
    let origin = if origin.contains("/p2p/") {
        origin
    } else {
        format!("{origin}/p2p/{}", id["ID"].as_str().unwrap())
    };
    std::thread::sleep(Duration::from_secs(2));
    assert!(swarm_peers(&daemons[1]).is_empty());
    pin_content_elsewhere(
        &daemons[0],
        &c.peers[0],
        &c.peers[1],
        &format!("&origins={origin}"),
        "origins",
    );
}

/// What `contrib/docker/docker-compose.yml` does: two peers configured only by
/// upstream's variables — identity (`CLUSTER_ID`, `CLUSTER_PRIVATEKEY`), secret,
/// `CLUSTER_RAFT_INITPEERSET` of peer IDs and `CLUSTER_PEERADDRESSES` — form one
/// cluster.
#[test]
fn peers_configured_by_environment_only_form_a_cluster() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let idents: Vec<Value> = (0..2)
        .map(|_| {
            let d = tempfile::tempdir().unwrap();
            PeerProc::init(d.path(), "/ip4/127.0.0.1/tcp/1");
            serde_json::from_str(&std::fs::read_to_string(d.path().join("identity.json")).unwrap())
                .unwrap()
        })
        .collect();
    let ids: Vec<String> = idents
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    let mut peers: Vec<PeerProc> = dirs
        .iter()
        .map(|d| PeerProc::init(d.path(), &format!("/ip4/127.0.0.1/tcp/{}", free_port())))
        .collect();
    let secret = "2588b80d5cb05374fa142aed6cbb047d1f4ef8ef15e37eba68c65b9d30df67ed";
    let mut children = Vec::new();
    for i in 0..2 {
        let other = 1 - i;
        let mut cmd = peers[i].command();
        cmd.env("CLUSTER_SECRET", secret)
            .env("CLUSTER_ID", &ids[i])
            .env(
                "CLUSTER_PRIVATEKEY",
                idents[i]["private_key"].as_str().unwrap(),
            )
            .env("CLUSTER_RAFT_INITPEERSET", ids.join(","))
            .env(
                "CLUSTER_PEERADDRESSES",
                format!(
                    "/ip4/127.0.0.1/tcp/{}/p2p/{}",
                    peers[other].cluster_port, ids[other]
                ),
            )
            .env("CLUSTER_RAFT_HEARTBEATTIMEOUT", "100ms")
            .env("CLUSTER_RAFT_ELECTIONTIMEOUT", "500ms");
        children.push(cmd.spawn().unwrap());
    }
    let want: Vec<String> = {
        let mut w = ids.clone();
        w.sort();
        w
    };
    for p in peers.iter_mut() {
        wait_until("the peer to serve", Duration::from_secs(60), || {
            std::net::TcpStream::connect(("127.0.0.1", p.rest_port)).is_ok()
        });
        let id: Value = get_json(&format!("{}/id", p.rest()));
        assert!(ids.contains(&id["id"].as_str().unwrap().to_string()));
        let mut got: Vec<String> = id["cluster_peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        got.sort();
        assert_eq!(got, want);
    }
    for mut c in children {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        assert!(c.wait().unwrap().success());
    }
}

/// Without a cluster secret (upstream's empty `secret`: an unprotected network)
/// QUIC v1 is served: a second peer joins through the first one's QUIC address
/// only. Upstream's draft-29 `/quic` is skipped with one warning.
#[test]
fn without_a_secret_a_peer_joins_over_quic() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let dead = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let mut peers: Vec<PeerProc> = dirs
        .iter()
        .map(|d| PeerProc::init(d.path(), &dead))
        .collect();
    let udp = free_port();
    let quic = format!("/ip4/127.0.0.1/udp/{udp}/quic-v1");
    let a_listen = format!(
        "/ip4/127.0.0.1/tcp/{},{quic},/ip4/127.0.0.1/udp/{udp}/quic",
        peers[0].cluster_port
    );
    let log = dirs[0].path().join("a.log");
    let mut a = peers[0].command();
    a.env("CLUSTER_SECRET", "")
        .env("CLUSTER_LISTENMULTIADDRESS", &a_listen)
        .env("IPFS_CLUSTER_LOG_LEVEL", "info")
        .stderr(std::fs::File::create(&log).unwrap());
    let mut a = a.spawn().unwrap();
    wait_until("peer A to serve", Duration::from_secs(60), || {
        std::net::TcpStream::connect(("127.0.0.1", peers[0].rest_port)).is_ok()
    });
    let a_id = peers[0].peer_id();
    peers[1].extra_args = vec!["--bootstrap".into(), format!("{quic}/p2p/{a_id}")];
    let mut b = peers[1].command();
    b.env("CLUSTER_SECRET", "");
    let mut b = b.spawn().unwrap();
    wait_until("peer B to join and serve", Duration::from_secs(60), || {
        std::net::TcpStream::connect(("127.0.0.1", peers[1].rest_port)).is_ok()
    });
    let id: Value = get_json(&format!("{}/id", peers[1].rest()));
    let members: Vec<&str> = id["cluster_peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x.as_str())
        .collect();
    assert!(
        members.contains(&a_id.as_str()) && members.len() == 2,
        "{id}"
    );
    let a_id_json: Value = get_json(&format!("{}/id", peers[0].rest()));
    assert!(
        a_id_json["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x.as_str().is_some_and(|s| s.contains("/quic-v1/"))),
        "{a_id_json}"
    );
    for c in [&mut b, &mut a] {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        assert!(c.wait().unwrap().success());
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("not listening on").count(), 1, "{text}");
    assert!(
        text.contains("draft-29") && text.contains("unprotected network"),
        "{text}"
    );
}
