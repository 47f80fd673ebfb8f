//! Multi-peer clusters: Raft over libp2p between peer processes, each in front of
//! its own real IPFS daemon. Pins are identity CIDs (the data is inside the CID),
//! so every daemon can pin them without fetching blocks from another.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use serde_json::Value;

fn raft_info(p: &PeerProc) -> Option<Value> {
    http()
        .get(format!("{}/raft", p.rest()))
        .timeout(Duration::from_secs(2))
        .send()
        .ok()?
        .json()
        .ok()
}

/// The index (in `peers`) of the leader all running peers agree on.
fn wait_leader(c: &mut Cluster, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let ids: Vec<String> = c.peers.iter().map(|p| p.peer_id()).collect();
        for p in c.peers.iter_mut() {
            if !p.is_running() {
                continue;
            }
            if let Some(v) = raft_info(p) {
                let l = v["leader"].as_str().unwrap_or_default().to_string();
                if let Some(i) = ids.iter().position(|id| *id == l) {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn post(url: &str) -> (u16, Value) {
    let r = http().post(url).send().expect("request");
    let status = r.status().as_u16();
    let text = r.text().unwrap_or_default();
    (
        status,
        serde_json::from_str(text.trim()).unwrap_or(Value::String(text)),
    )
}

fn proxy_pins(p: &PeerProc) -> Vec<String> {
    let (_, v) = post(&format!("{}/pin/ls", p.proxy()));
    let mut k: Vec<String> = v["Keys"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

fn daemon_pins(d: &Daemon) -> Vec<cid::Cid> {
    let (_, v) = post(&format!("{}/pin/ls?type=recursive", d.api()));
    v["Keys"]
        .as_object()
        .map(|m| {
            m.keys()
                .filter_map(|k| cid::Cid::try_from(k.as_str()).ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn three_peers_replicate_pins_everywhere() {
    let mut c = start_cluster(3);
    let cids: Vec<String> = (0..100).map(id_cid).collect();
    for (i, cid) in cids.iter().enumerate() {
        let p = &c.peers[(i * 7 + 1) % 3];
        let (st, v) = post(&format!("{}/pin/add?arg={cid}", p.proxy()));
        assert_eq!(st, 200, "{v}");
    }
    let mut want = cids.clone();
    want.sort();
    for p in &c.peers {
        wait_until(
            "every peer's pin ls to show all pins",
            Duration::from_secs(10),
            || proxy_pins(p) == want,
        );
    }
    let want_cids: std::collections::BTreeSet<cid::Cid> = cids
        .iter()
        .map(|c| cid::Cid::try_from(c.as_str()).unwrap())
        .collect();
    for d in &c.daemons {
        wait_until(
            "every daemon to pin everything",
            Duration::from_secs(30),
            || {
                daemon_pins(d)
                    .into_iter()
                    .collect::<std::collections::BTreeSet<_>>()
                    == want_cids
            },
        );
    }
    // Global status gathers every peer.
    let g: Value = get_json(&format!("{}/pins/{}", c.peers[0].rest(), cids[0]));
    let statuses: Vec<&str> = g["peer_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["pinned"; 3], "{g}");
    let peers: Vec<Value> = http()
        .get(format!("{}/peers", c.peers[1].rest()))
        .send()
        .unwrap()
        .text()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(peers.len(), 3);
    assert!(
        peers
            .iter()
            .all(|p| p["error"] == "" && p["cluster_peers"].as_array().unwrap().len() == 3)
    );

    for (i, cid) in cids.iter().enumerate() {
        let p = &c.peers[(i * 5 + 2) % 3];
        let (st, v) = post(&format!("{}/pin/rm?arg={cid}", p.proxy()));
        assert_eq!(st, 200, "{v}");
    }
    for p in &c.peers {
        wait_until("pinsets to empty", Duration::from_secs(10), || {
            proxy_pins(p).is_empty()
        });
    }
    for d in &c.daemons {
        wait_until("daemons to unpin", Duration::from_secs(30), || {
            daemon_pins(d).is_empty()
        });
    }
    for (i, cid) in cids.iter().take(10).enumerate() {
        let p = &c.peers[i % 3];
        let (st, v) = post(&format!("{}/pin/rm?arg={cid}", p.proxy()));
        assert_eq!(
            (st, v["Message"].as_str()),
            (500, Some("not pinned or pinned indirectly"))
        );
        let r = http()
            .delete(format!("{}/pins/{cid}", p.rest()))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 404);
    }

    // health graph: every peer reports its links to the two others and its daemon.
    let g: Value = get_json(&format!("{}/health/graph", c.peers[2].rest()));
    assert_eq!(g["cluster_id"], c.peers[2].peer_id());
    let ids: Vec<String> = c.peers.iter().map(|p| p.peer_id()).collect();
    for id in &ids {
        let links: Vec<&str> = g["cluster_links"][id]
            .as_array()
            .unwrap_or_else(|| panic!("{g}"))
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        assert!(
            ids.iter()
                .filter(|o| *o != id)
                .all(|o| links.contains(&o.as_str())),
            "{g}"
        );
        assert!(g["cluster_to_ipfs"][id].is_string(), "{g}");
    }
    let out = std::process::Command::new(ctl_bin())
        .args(["--host", &c.peers[0].rest_multiaddr(), "health", "graph"])
        .output()
        .unwrap();
    let dot = String::from_utf8_lossy(&out.stdout);
    assert!(
        dot.starts_with("digraph cluster {") && dot.contains("C0 -> C1"),
        "{dot}"
    );
    assert_eq!(dot.matches(" -> I").count(), 3, "{dot}");
    // health bandwidth: the peers have talked Raft and cluster RPC (the graph).
    let out = std::process::Command::new(ctl_bin())
        .args([
            "--host",
            &c.peers[0].rest_multiaddr(),
            "health",
            "bandwidth",
        ])
        .output()
        .unwrap();
    let bw = String::from_utf8_lossy(&out.stdout);
    for proto in ["/ipfs-cluster-rs/raft/1.0.0", "/ipfs-cluster-rs/rpc/1.0.0"] {
        assert!(bw.contains(&format!("{proto}: In: ")), "{bw}");
    }
    for p in c.peers.iter_mut() {
        p.stop();
    }
}

#[test]
fn leader_killed_during_writes_loses_no_acknowledged_pin() {
    let mut c = start_cluster(3);
    let t0 = Instant::now();
    let leader = wait_leader(&mut c, Duration::from_secs(10));
    eprintln!("leader known {:?} after the peers were ready", t0.elapsed());
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();

    let mut acked = Vec::new();
    let mut killed_at = None;
    let mut first_ok_after_kill = None;
    for n in 0..60 {
        if n == 20 {
            c.peers[leader].kill9();
            killed_at = Some(Instant::now());
        }
        let target = &c.peers[survivors[n % 2]];
        let cid = id_cid(1000 + n);
        let (st, _) = post(&format!("{}/pin/add?arg={cid}", target.proxy()));
        if st == 200 {
            if killed_at.is_some() && first_ok_after_kill.is_none() {
                first_ok_after_kill = killed_at.map(|k| k.elapsed());
            }
            acked.push(cid);
        }
    }
    let unavailable = first_ok_after_kill.expect("writes resumed after the leader was killed");
    eprintln!("write unavailability after killing the leader: {unavailable:?}");
    assert!(
        acked.len() >= 50,
        "only {} of 60 writes succeeded",
        acked.len()
    );
    for i in &survivors {
        let pins = proxy_pins(&c.peers[*i]);
        for a in &acked {
            assert!(
                pins.contains(a),
                "acknowledged pin {a} missing on a survivor"
            );
        }
    }
    // The killed peer comes back and catches up.
    c.peers[leader].start();
    let want = proxy_pins(&c.peers[survivors[0]]);
    wait_until(
        "the restarted peer to catch up",
        Duration::from_secs(15),
        || proxy_pins(&c.peers[leader]) == want,
    );
    for p in c.peers.iter_mut() {
        p.stop();
    }
}

#[test]
fn a_peer_joins_through_bootstrap_by_snapshot_and_is_removed() {
    let mut c = start_cluster(3);
    // More entries than snapshot_threshold + trailing_logs, so the log is compacted
    // and the newcomer must receive a snapshot.
    for n in 0..80 {
        let (st, _) = post(&format!(
            "{}/pin/add?arg={}",
            c.peers[n % 3].proxy(),
            id_cid(2000 + n)
        ));
        assert_eq!(st, 200);
    }
    let leader = wait_leader(&mut c, Duration::from_secs(5));
    wait_until("a snapshot and a purge", Duration::from_secs(10), || {
        raft_info(&c.peers[leader]).is_some_and(|v| v["purged_index"].as_u64().unwrap_or(0) > 0)
    });

    let daemon = start_daemons(1).pop().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut newcomer = PeerProc::init(dir.path(), &daemon.multiaddr());
    let secret = secret_of(&c.peers[0]);
    // The store is each peer's own business: the newcomer installs the
    // snapshot into sled while the others keep redb (the default).
    newcomer.edit_config(|v| {
        v["cluster"]["secret"] = secret;
        v["consensus"]["raft"]["datastore"] = "sled".into();
        fast_raft(v);
    });
    newcomer.extra_args = vec!["--bootstrap".into(), c.peers[1].cluster_multiaddr()];
    newcomer.start();
    let want = proxy_pins(&c.peers[0]);
    assert_eq!(want.len(), 80);
    wait_until(
        "the newcomer to receive the state",
        Duration::from_secs(15),
        || proxy_pins(&newcomer) == want,
    );
    let info = raft_info(&newcomer).unwrap();
    assert_eq!(info["voters"].as_array().unwrap().len(), 4, "{info}");
    assert!(
        info["snapshot_index"].as_u64().is_some(),
        "no snapshot installed: {info}"
    );
    assert!(newcomer.dir.join("raft/conf").is_file());
    assert!(!newcomer.dir.join("raft/store.fjall").exists());
    assert!(c.peers[0].dir.join("raft/store.fjall").is_dir());

    // A pin held only by the newcomer moves to another peer when it is removed.
    let only_newcomer = id_cid(2500);
    wait_until("the newcomer's metrics", Duration::from_secs(20), || {
        http()
            .get(format!("{}/monitor/metrics/freespace", c.peers[0].rest()))
            .send()
            .ok()
            .and_then(|r| r.json::<Vec<Value>>().ok())
            .is_some_and(|m| m.iter().any(|x| x["peer"] == newcomer.peer_id()))
    });
    let (st, _) = rest_pin(
        &c.peers[0],
        &only_newcomer,
        &format!("replication=1&user-allocations={}", newcomer.peer_id()),
    );
    assert_eq!(st, 200);
    assert_eq!(
        allocations(&c.peers[0], &only_newcomer),
        vec![newcomer.peer_id()]
    );

    // peers rm: the newcomer leaves the peerset and shuts itself down.
    let r = http()
        .delete(format!(
            "{}/peers/{}",
            c.peers[2].rest(),
            newcomer.peer_id()
        ))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        newcomer.wait_exit(Duration::from_secs(15)),
        Some(true),
        "removed peer did not stop"
    );
    assert!(
        newcomer.dir.join("raft.old.0").exists(),
        "raft folder was not moved aside"
    );
    let moved = allocations(&c.peers[0], &only_newcomer);
    assert_eq!(moved.len(), 1);
    assert_ne!(
        moved[0],
        newcomer.peer_id(),
        "the removed peer kept its pin"
    );
    let (st, _) = post(&format!(
        "{}/pin/add?arg={}",
        c.peers[0].proxy(),
        id_cid(2999)
    ));
    assert_eq!(st, 200);
    let info = raft_info(&c.peers[0]).unwrap();
    assert_eq!(info["voters"].as_array().unwrap().len(), 3);

    // A peer started with --leave removes itself on a clean shutdown.
    let dir2 = tempfile::tempdir().unwrap();
    let mut leaver = PeerProc::init(dir2.path(), &daemon.multiaddr());
    let secret2 = secret_of(&c.peers[0]);
    leaver.edit_config(|v| {
        v["cluster"]["secret"] = secret2;
        fast_raft(v);
    });
    leaver.extra_args = vec![
        "--bootstrap".into(),
        c.peers[0].cluster_multiaddr(),
        "--leave".into(),
    ];
    leaver.start();
    assert_eq!(
        raft_info(&c.peers[0]).unwrap()["voters"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    leaver.stop();
    wait_until(
        "the leaver to be out of the peerset",
        Duration::from_secs(10),
        || {
            raft_info(&c.peers[0])
                .is_some_and(|v| v["voters"].as_array().is_some_and(|a| a.len() == 3))
        },
    );
    assert!(leaver.dir.join("raft.old.0").exists());
    for p in c.peers.iter_mut() {
        p.stop();
    }
}

#[test]
fn majority_down_fails_cleanly_then_recovers() {
    let mut c = start_cluster(3);
    let (st, _) = post(&format!(
        "{}/pin/add?arg={}",
        c.peers[0].proxy(),
        id_cid(3000)
    ));
    assert_eq!(st, 200);
    c.peers[1].kill9();
    c.peers[2].kill9();
    let t = Instant::now();
    let cid = id_cid(3001);
    let (st, v) = post(&format!("{}/pin/add?arg={cid}", c.peers[0].proxy()));
    let took = t.elapsed();
    assert_eq!(st, 500, "{v}");
    let msg = v["Message"].as_str().unwrap_or_default();
    assert!(msg.contains("no leader") || msg.contains("quorum"), "{msg}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(!proxy_pins(&c.peers[0]).contains(&cid), "half-written pin");

    c.peers[1].start();
    let (st, v) = post(&format!("{}/pin/add?arg={cid}", c.peers[0].proxy()));
    assert_eq!(st, 200, "{v}");
    for i in [0, 1] {
        assert!(proxy_pins(&c.peers[i]).contains(&cid));
    }
    c.peers[2].start();
    for p in c.peers.iter_mut() {
        p.stop();
    }
}

#[test]
fn wrong_secret_cannot_join_and_restart_all_keeps_pinset() {
    // One peer keeps its Raft data in sled, one in redb, one in fjall (the
    // default); 50 pins take every log past a snapshot, so the restart reads
    // snapshot and log back from each store.
    let mut c = start_cluster_with(3, |i, v| {
        if i == 2 {
            v["consensus"]["raft"]["datastore"] = "sled".into();
        }
        if i == 1 {
            v["consensus"]["raft"]["datastore"] = "redb".into();
        }
    });
    for n in 0..50 {
        let (st, _) = post(&format!(
            "{}/pin/add?arg={}",
            c.peers[n % 3].proxy(),
            id_cid(4000 + n)
        ));
        assert_eq!(st, 200);
    }
    let want = proxy_pins(&c.peers[0]);

    let dir = tempfile::tempdir().unwrap();
    let dead = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let mut intruder = PeerProc::init(dir.path(), &dead);
    intruder.edit_config(fast_raft);
    intruder.extra_args = vec!["--bootstrap".into(), c.peers[0].cluster_multiaddr()];
    intruder.spawn();
    assert_eq!(
        intruder.wait_exit(Duration::from_secs(30)),
        Some(false),
        "a peer with another secret joined"
    );
    let info = raft_info(&c.peers[0]).unwrap();
    assert_eq!(info["voters"].as_array().unwrap().len(), 3);

    // A peer with Raft state of its own cluster refuses to --bootstrap into another.
    let dir = tempfile::tempdir().unwrap();
    let mut other = PeerProc::init(dir.path(), &dead);
    let secret = secret_of(&c.peers[0]);
    other.edit_config(|v| {
        v["cluster"]["secret"] = secret;
        fast_raft(v);
    });
    other.start();
    other.stop();
    other.extra_args = vec!["--bootstrap".into(), c.peers[0].cluster_multiaddr()];
    let out = other.command().output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already has Raft state from another cluster"),
        "{err}"
    );

    for p in c.peers.iter_mut() {
        p.stop();
    }
    for p in c.peers.iter_mut() {
        p.spawn();
    }
    for p in c.peers.iter_mut() {
        p.wait_ready();
    }
    wait_leader(&mut c, Duration::from_secs(10));
    for p in &c.peers {
        assert_eq!(proxy_pins(p), want);
    }
    assert!(c.peers[2].dir.join("raft/conf").is_file());
    assert!(c.peers[1].dir.join("raft/store.redb").is_file());
    assert!(c.peers[0].dir.join("raft/store.fjall").is_dir());
    let info = raft_info(&c.peers[2]).unwrap();
    assert!(info["snapshot_index"].as_u64().is_some(), "{info}");
    for p in c.peers.iter_mut() {
        p.stop();
    }
}

/// Metrics that expire in 2 s, pings every second, checks every second.
fn fast_metrics(v: &mut Value) {
    v["cluster"]["monitor_ping_interval"] = "1s".into();
    v["monitor"]["pubsubmon"]["check_interval"] = "1s".into();
    for informer in ["disk", "tags", "pinqueue"] {
        v["informer"][informer]["metric_ttl"] = "2s".into();
    }
}

fn wait_metrics(c: &Cluster, name: &str) {
    let n = c.peers.len();
    for p in &c.peers {
        wait_until("every peer's metrics", Duration::from_secs(15), || {
            http()
                .get(format!("{}/monitor/metrics/{name}", p.rest()))
                .send()
                .ok()
                .and_then(|r| r.json::<Vec<Value>>().ok())
                .is_some_and(|m| m.len() == n)
        });
    }
}

fn rest_pin(p: &PeerProc, cid: &str, query: &str) -> (u16, Value) {
    let r = http()
        .post(format!("{}/pins/{cid}?{query}", p.rest()))
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

fn allocations(p: &PeerProc, cid: &str) -> Vec<String> {
    let v: Value = get_json(&format!("{}/allocations/{cid}", p.rest()));
    let mut a: Vec<String> = v["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    a.sort();
    a
}

fn statuses(p: &PeerProc, cid: &str) -> Vec<(String, String)> {
    let g: Value = get_json(&format!("{}/pins/{cid}", p.rest()));
    let mut v: Vec<(String, String)> = g["peer_map"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, i)| (k.clone(), i["status"].as_str().unwrap().to_string()))
        .collect();
    v.sort();
    v
}

#[test]
fn replication_factors_place_pins_between_min_and_max() {
    let mut c = start_cluster_with(4, |_, v| fast_metrics(v));
    wait_metrics(&c, "freespace");
    let p = &c.peers[0];

    // rmax peers get it when enough are available; the others see it as remote.
    let cid = id_cid(5000);
    let (st, pin) = rest_pin(p, &cid, "replication-min=1&replication-max=3");
    assert_eq!(st, 200, "{pin}");
    let first = allocations(p, &cid);
    assert_eq!(first.len(), 3);
    wait_until("3 pinned and 1 remote", Duration::from_secs(15), || {
        let s = statuses(p, &cid);
        s.iter().filter(|(_, st)| st == "pinned").count() == 3
            && s.iter().filter(|(_, st)| st == "remote").count() == 1
    });
    for (peer, st) in statuses(p, &cid) {
        assert_eq!(st == "pinned", first.contains(&peer));
    }

    // Re-pinning with a lower max trims the allocations.
    let (st, _) = rest_pin(p, &cid, "replication-min=1&replication-max=2");
    assert_eq!(st, 200);
    let trimmed = allocations(p, &cid);
    assert_eq!(trimmed.len(), 2);
    assert!(trimmed.iter().all(|a| first.contains(a)));

    // More than the candidates: upstream's error.
    let (st, e) = rest_pin(p, &id_cid(5001), "replication-min=5&replication-max=6");
    assert_eq!(st, 500, "{e}");
    assert_eq!(
        e["message"],
        "not enough peers to allocate CID. Needed at least: 5. Wanted at most: 6. \
         Available candidates: 4. See logs for more info."
    );
    let r = http()
        .get(format!("{}/allocations/{}", p.rest(), id_cid(5001)))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404, "a failed allocation left a pin");

    // -1 is everywhere (no allocations listed), also the default through the proxy.
    let (st, _) = rest_pin(p, &id_cid(5002), "replication=-1");
    assert_eq!(st, 200);
    assert!(allocations(p, &id_cid(5002)).is_empty());
    let (st, _) = post(&format!(
        "{}/pin/add?arg={}",
        c.peers[1].proxy(),
        id_cid(5003)
    ));
    assert_eq!(st, 200);
    assert!(allocations(p, &id_cid(5003)).is_empty());

    // ctl: -r 2 --wait returns once two peers pinned; pin ls shows the factor.
    let out = std::process::Command::new(ctl_bin())
        .args([
            "--host",
            &c.peers[2].rest_multiaddr(),
            "pin",
            "add",
            &id_cid(5004),
            "-r",
            "2",
            "--wait",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches(": PINNED").count(), 2, "{text}");
    let out = std::process::Command::new(ctl_bin())
        .args([
            "--host",
            &c.peers[2].rest_multiaddr(),
            "pin",
            "ls",
            &id_cid(5004),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Repl. Factor: 2--2 | Allocations: ["),
        "{text}"
    );
    let out = std::process::Command::new(ctl_bin())
        .args([
            "--host",
            &c.peers[2].rest_multiaddr(),
            "health",
            "metrics",
            "freespace",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("| freespace: ") && l.contains("| Expires in: "))
            .count(),
        4,
        "{text}"
    );
    for p in c.peers.iter_mut() {
        p.stop();
    }
}

#[test]
fn a_dead_peers_pins_move_only_below_their_minimum() {
    let mut c = start_cluster_with(4, |_, v| {
        fast_metrics(v);
        v["cluster"]["disable_repinning"] = false.into();
    });
    wait_metrics(&c, "freespace");
    let ids: Vec<String> = c.peers.iter().map(|p| p.peer_id()).collect();
    // Both pins include the victim; the second can lose it and stay above its minimum.
    let (victim, other) = (ids[3].clone(), ids[2].clone());
    let strict = id_cid(6000);
    let (st, _) = rest_pin(
        &c.peers[0],
        &strict,
        &format!("replication=2&user-allocations={victim},{other}"),
    );
    assert_eq!(st, 200);
    let lenient = id_cid(6001);
    let (st, _) = rest_pin(
        &c.peers[0],
        &lenient,
        &format!("replication-min=1&replication-max=2&user-allocations={victim},{other}"),
    );
    assert_eq!(st, 200);
    assert!(allocations(&c.peers[0], &strict).contains(&victim));
    let before_lenient = allocations(&c.peers[0], &lenient);
    assert!(before_lenient.contains(&victim));

    c.peers[3].kill9();
    let killed = Instant::now();
    wait_until(
        "the strict pin to leave the dead peer",
        Duration::from_secs(20),
        || {
            let a = allocations(&c.peers[0], &strict);
            a.len() == 2 && !a.contains(&victim)
        },
    );
    let moved_after = killed.elapsed();
    eprintln!(
        "re-allocated {moved_after:?} after the peer was killed (ping TTL 2 s, check every 1 s)"
    );
    // 2 × TTL + one check interval, plus the commit.
    assert!(moved_after < Duration::from_secs(7), "took {moved_after:?}");
    assert_eq!(
        allocations(&c.peers[0], &lenient),
        before_lenient,
        "a pin above its minimum moved"
    );
    // Each peer checks pings on its own clock: peers[1] may raise its alert up to
    // a check interval after the peer that moved the pin.
    wait_until(
        "peers[1] to raise the alert",
        Duration::from_secs(5),
        || {
            let alerts: Vec<Value> = get_json(&format!("{}/health/alerts", c.peers[1].rest()));
            alerts
                .iter()
                .any(|a| a["peer"] == victim && a["name"] == "ping")
        },
    );
    wait_until(
        "the new allocation to be pinned",
        Duration::from_secs(15),
        || {
            let now = allocations(&c.peers[0], &strict);
            statuses(&c.peers[0], &strict)
                .iter()
                .filter(|(p, st)| now.contains(p) && st == "pinned")
                .count()
                == 2
        },
    );
    for (i, p) in c.peers.iter_mut().enumerate() {
        if i != 3 {
            p.stop();
        }
    }
}

#[test]
fn with_repinning_disabled_a_dead_peer_keeps_its_pins() {
    let mut c = start_cluster_with(3, |_, v| fast_metrics(v));
    wait_metrics(&c, "freespace");
    let ids: Vec<String> = c.peers.iter().map(|p| p.peer_id()).collect();
    let cid = id_cid(7000);
    let (st, _) = rest_pin(
        &c.peers[0],
        &cid,
        &format!("replication=2&user-allocations={},{}", ids[2], ids[1]),
    );
    assert_eq!(st, 200);
    let before = allocations(&c.peers[0], &cid);
    c.peers[2].kill9();
    wait_until(
        "an alert for the dead peer",
        Duration::from_secs(10),
        || {
            http()
                .get(format!("{}/health/alerts", c.peers[0].rest()))
                .send()
                .ok()
                .and_then(|r| r.json::<Vec<Value>>().ok())
                .is_some_and(|a| a.iter().any(|x| x["peer"] == ids[2]))
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(allocations(&c.peers[0], &cid), before);
    for p in c.peers.iter_mut().take(2) {
        p.stop();
    }
}

#[test]
fn tags_spread_replicas_across_groups() {
    let mut c = start_cluster_with(4, |i, v| {
        fast_metrics(v);
        v["informer"]["tags"]["tags"]["group"] = (if i < 2 { "a" } else { "b" }).into();
    });
    wait_metrics(&c, "tag:group");
    let ids: Vec<String> = c.peers.iter().map(|p| p.peer_id()).collect();
    for n in 0..10 {
        let cid = id_cid(8000 + n);
        let (st, e) = rest_pin(&c.peers[n % 4], &cid, "replication=2");
        assert_eq!(st, 200, "{e}");
        let a = allocations(&c.peers[n % 4], &cid);
        let groups: Vec<bool> = a.iter().map(|p| ids[..2].contains(p)).collect();
        assert_eq!(a.len(), 2);
        assert!(
            groups.contains(&true) && groups.contains(&false),
            "{cid}: both replicas in one group: {a:?}"
        );
    }
    for p in c.peers.iter_mut() {
        p.stop();
    }
}

#[test]
fn pin_errors_are_recovered_and_expired_pins_unpinned() {
    let mut c = start_cluster_with(1, |_, v| {
        fast_metrics(v);
        v["ipfs_connector"]["ipfshttp"]["pin_timeout"] = "2s".into();
        v["cluster"]["state_sync_interval"] = "1s".into();
    });
    let p = &c.peers[0];
    // A CID whose block the (offline) daemon does not have: its pin stalls.
    let data = b"not there yet\n".to_vec();
    let part = reqwest::blocking::multipart::Part::bytes(data.clone())
        .file_name("later.txt")
        .mime_str("application/octet-stream")
        .unwrap();
    let text = http()
        .post(format!(
            "{}/add?only-hash=true&pin=false",
            c.daemons[0].api()
        ))
        .multipart(reqwest::blocking::multipart::Form::new().part("file", part))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let line: Value =
        serde_json::from_str(text.lines().rfind(|l| !l.trim().is_empty()).unwrap()).unwrap();
    let cid = line["Hash"].as_str().unwrap().to_string();
    let (st, _) = rest_pin(p, &cid, "");
    assert_eq!(st, 200);
    wait_until("pin_error", Duration::from_secs(15), || {
        statuses(p, &cid).iter().any(|(_, s)| s == "pin_error")
    });
    let g: Value = get_json(&format!("{}/pins/{cid}", p.rest()));
    let info = g["peer_map"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    assert!(
        info["error"].as_str().unwrap().contains("made no progress"),
        "{info}"
    );
    let out = std::process::Command::new(ctl_bin())
        .args(["--host", &p.rest_multiaddr(), "status", "--filter", "error"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("PIN_ERROR"));

    // Fixed: the content is there now; recover brings the pin to pinned.
    add_bytes(&c.daemons[0].api(), "later.txt", data);
    let out = std::process::Command::new(ctl_bin())
        .args(["--host", &p.rest_multiaddr(), "recover", &cid])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("pinned after recover", Duration::from_secs(15), || {
        statuses(p, &cid).iter().all(|(_, s)| s == "pinned")
    });
    let r = http()
        .post(format!("{}/pins/recover", p.rest()))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204, "nothing left to recover");
    let local: Value = get_json(&format!("{}/pins/{cid}?local=true", p.rest()));
    assert_eq!(local["peer_map"].as_object().unwrap().len(), 1);

    // An expiring pin is unpinned by the state sync.
    let exp = id_cid(9000);
    let (st, pin) = rest_pin(p, &exp, "expire-in=2s");
    assert_eq!(st, 200);
    assert_ne!(pin["expire_at"], "0001-01-01T00:00:00Z");
    wait_until("the expired pin to go", Duration::from_secs(10), || {
        http()
            .get(format!("{}/allocations/{exp}", p.rest()))
            .send()
            .unwrap()
            .status()
            .as_u16()
            == 404
    });
    for p in c.peers.iter_mut() {
        p.stop();
    }
}

#[test]
fn composite_clusters_pin_through_two_and_three_levels() {
    let mut a = start_cluster(3);
    let proxy_of = |p: &PeerProc| format!("/ip4/127.0.0.1/tcp/{}", p.proxy_port);
    let a_proxies: Vec<String> = a.peers[..2].iter().map(proxy_of).collect();
    let mut b = start_cluster_on(&a_proxies, |_, v| fast_raft(v));

    // A pin through B's proxy is committed in B, then (through B's connectors) in A,
    // and pinned on A's daemons.
    let cid = id_cid(10_000);
    let (st, v) = post(&format!("{}/pin/add?arg={cid}", b.peers[0].proxy()));
    assert_eq!(st, 200, "{v}");
    for p in &b.peers {
        wait_until("B's pinset", Duration::from_secs(10), || {
            proxy_pins(p).contains(&cid)
        });
    }
    for p in &a.peers {
        wait_until("A's pinset", Duration::from_secs(15), || {
            proxy_pins(p).contains(&cid)
        });
    }
    let want = cid::Cid::try_from(cid.as_str()).unwrap();
    for d in &a.daemons {
        wait_until("A's daemons", Duration::from_secs(15), || {
            daemon_pins(d).contains(&want)
        });
    }
    wait_until("B to report pinned", Duration::from_secs(15), || {
        statuses(&b.peers[1], &cid)
            .iter()
            .all(|(_, s)| s == "pinned")
    });
    assert!(
        statuses(&a.peers[2], &cid)
            .iter()
            .all(|(_, s)| s == "pinned")
    );

    // Direct pins stay direct below; free space is the lower cluster's sum.
    let direct = id_cid(10_001);
    let (st, _) = post(&format!(
        "{}/pin/add?arg={direct}&recursive=false",
        b.peers[1].proxy()
    ));
    assert_eq!(st, 200);
    wait_until("the direct pin in A", Duration::from_secs(15), || {
        http()
            .get(format!("{}/allocations/{direct}", a.peers[0].rest()))
            .send()
            .ok()
            .and_then(|r| r.json::<Value>().ok())
            .is_some_and(|p| p["mode"] == "direct")
    });
    // A pin B places on one of its peers: the other sees it as remote and, as A's
    // one pinset serves both, must leave it there, also when asked to recover it.
    let single = id_cid(10_002);
    let (st, v) = rest_pin(&b.peers[0], &single, "replication=1");
    assert_eq!(st, 200, "{v}");
    let seen = wait_for(
        "one pinned and one remote in B",
        Duration::from_secs(15),
        // The whole peer map, so that a timeout shows each peer's error too.
        || get_json::<Value>(&format!("{}/pins/{single}", b.peers[0].rest()))["peer_map"].clone(),
        |m| {
            let has = |want: &str| {
                m.as_object()
                    .is_some_and(|m| m.values().any(|i| i["status"] == want))
            };
            has("pinned") && has("remote")
        },
    );
    let remote_id = seen
        .as_object()
        .and_then(|m| m.iter().find(|(_, i)| i["status"] == "remote"))
        .map(|(p, _)| p.clone())
        .unwrap();
    let r = b
        .peers
        .iter()
        .position(|p| p.peer_id() == remote_id)
        .unwrap();
    let resp = http()
        .post(format!(
            "{}/pins/{single}/recover?local=true",
            b.peers[r].rest()
        ))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    std::thread::sleep(Duration::from_secs(3));
    assert!(proxy_pins(&a.peers[0]).contains(&single), "A lost B's pin");
    assert!(
        statuses(&b.peers[0], &single)
            .iter()
            .any(|(_, st)| st == "pinned")
    );
    let (_, a_stat) = post(&format!("{}/repo/stat", a.peers[0].proxy()));
    let (_, b_stat) = post(&format!("{}/repo/stat", b.peers[0].proxy()));
    assert!(a_stat["StorageMax"].as_u64().unwrap() > 0);
    assert_eq!(
        b_stat["StorageMax"].as_u64().unwrap(),
        2 * a_stat["StorageMax"].as_u64().unwrap(),
        "each of B's 2 peers sees all of A"
    );

    // A third level: C -> B -> A.
    let mut c = start_cluster_on(&[proxy_of(&b.peers[0])], |_, v| fast_raft(v));
    let deep = id_cid(10_003);
    let (st, v) = post(&format!("{}/pin/add?arg={deep}", c.peers[0].proxy()));
    assert_eq!(st, 200, "{v}");
    for p in b.peers.iter().chain(&a.peers) {
        wait_until("B's and A's pinsets", Duration::from_secs(20), || {
            proxy_pins(p).contains(&deep)
        });
    }
    let want_deep = cid::Cid::try_from(deep.as_str()).unwrap();
    for d in &a.daemons {
        wait_until(
            "A's daemons, three levels down",
            Duration::from_secs(20),
            || daemon_pins(d).contains(&want_deep),
        );
    }

    // Unpin through B: gone everywhere below.
    let (st, _) = post(&format!("{}/pin/rm?arg={cid}", b.peers[1].proxy()));
    assert_eq!(st, 200);
    for p in b.peers.iter().chain(&a.peers) {
        wait_until("the unpin everywhere", Duration::from_secs(20), || {
            !proxy_pins(p).contains(&cid)
        });
    }
    for d in &a.daemons {
        wait_until("A's daemons to unpin", Duration::from_secs(20), || {
            !daemon_pins(d).contains(&want)
        });
    }
    for p in c
        .peers
        .iter_mut()
        .chain(b.peers.iter_mut())
        .chain(a.peers.iter_mut())
    {
        p.stop();
    }
}

#[test]
fn basic_auth_on_the_proxy_and_the_connector() {
    let mut a = start_cluster_with(1, |_, v| {
        v["api"]["ipfsproxy"]["basic_auth_credentials"] = serde_json::json!({"lower": "s3cret"});
    });
    let lower = &a.peers[0];
    // Without credentials: kubo-shaped 401; with them: served.
    let r = http().post(format!("{}/id", lower.proxy())).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let e: Value = r.json().unwrap();
    assert_eq!(e["Type"], "error");
    let r = http()
        .post(format!("{}/id", lower.proxy()))
        .basic_auth("lower", Some("wrong"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = http()
        .post(format!("{}/id", lower.proxy()))
        .basic_auth("lower", Some("s3cret"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // An upper cluster whose connector has the credentials pins through it.
    let node = format!("/ip4/127.0.0.1/tcp/{}", lower.proxy_port);
    let mut b = start_cluster_on(&[node], |_, v| {
        fast_raft(v);
        v["ipfs_connector"]["ipfshttp"]["basic_auth_credentials"] = "lower:s3cret".into();
    });
    // Calls it does not intercept reach the lower proxy with those credentials too.
    let (st, v) = post(&format!("{}/id", b.peers[0].proxy()));
    assert_eq!(st, 200, "{v}");
    assert!(v["ID"].is_string(), "{v}");
    let cid = id_cid(11_000);
    let (st, v) = post(&format!("{}/pin/add?arg={cid}", b.peers[0].proxy()));
    assert_eq!(st, 200, "{v}");
    wait_until(
        "the pin in the lower cluster",
        Duration::from_secs(15),
        || {
            http()
                .get(format!("{}/allocations/{cid}", lower.rest()))
                .send()
                .is_ok_and(|r| r.status().as_u16() == 200)
        },
    );
    wait_until(
        "the upper peer to report pinned",
        Duration::from_secs(15),
        || {
            statuses(&b.peers[0], &cid)
                .iter()
                .all(|(_, s)| s == "pinned")
        },
    );
    for p in b.peers.iter_mut().chain(a.peers.iter_mut()) {
        p.stop();
    }
}

/// A `state import` killed (kill -9) while it sorts and writes leaves the raft
/// folder as it was: the peer starts with its old pinset, and the next import
/// starts over and completes.
#[test]
fn a_state_import_killed_midway_changes_nothing() {
    let mut c = start_cluster(1);
    let old: Vec<String> = (0..5).map(|n| id_cid(9300 + n)).collect();
    for cid in &old {
        let (st, v) = post(&format!("{}/pin/add?arg={cid}", c.peers[0].proxy()));
        assert_eq!(st, 200, "{v}");
    }
    c.peers[0].stop();
    // Several MiB of pins through a pipe that stays open: the import reads
    // and sorts them and then waits for more, until it is killed.
    let mut child = std::process::Command::new(service_bin())
        .args(["--config", &c.peers[0].dir.to_string_lossy()])
        .args(["state", "import", "-f"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut input = String::new();
    for n in 0..40_000 {
        input.push_str(&format!(
            "{{\"cid\": \"{}\", \"name\": \"bulk\"}}\n",
            id_cid(100_000 + n)
        ));
    }
    {
        use std::io::Write;
        let stdin = child.stdin.as_mut().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
    let staging = c.peers[0].dir.join("raft.import");
    wait_until(
        "the import to start writing",
        Duration::from_secs(20),
        || staging.is_dir(),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the import ended early"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!c.peers[0].dir.join("raft.old.0").exists());

    c.peers[0].start();
    let mut want = old.clone();
    want.sort();
    assert_eq!(proxy_pins(&c.peers[0]), want);
    c.peers[0].stop();

    // A new import replaces the leftovers and the pinset.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pins.json");
    let half: String = input
        .lines()
        .take(20_000)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, half).unwrap();
    let out = state_cmd(&c.peers[0], &["import", "-f", &file.to_string_lossy()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("imported 20000 pins"));
    assert!(!staging.exists());
    c.peers[0].start();
    assert_eq!(proxy_pins(&c.peers[0]).len(), 20_000);
    c.peers[0].stop();
}

/// A peer killed (kill -9) while it installs the snapshot it joins with redoes
/// the install at its next start and ends with the cluster's whole pinset.
#[test]
fn a_snapshot_install_killed_midway_is_redone_at_restart() {
    let mut c = start_cluster(1);
    c.peers[0].stop();
    // Enough pins for the install to take a while.
    let n = 30_000;
    import_pins_allocated_elsewhere(&c.peers[0], 400_000..400_000 + n);
    c.peers[0].start();
    let secret = secret_of(&c.peers[0]);
    let daemon = start_daemons(1).pop().unwrap();
    let mut interrupted = false;
    for attempt in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let mut newcomer = PeerProc::init(dir.path(), &daemon.multiaddr());
        newcomer.edit_config(|v| {
            v["cluster"]["secret"] = secret.clone();
            fast_raft(v);
            // A debug build moves a snapshot slowly: time to receive it.
            v["consensus"]["raft"]["wait_for_leader_timeout"] = "60s".into();
        });
        newcomer.extra_args = vec!["--bootstrap".into(), c.peers[0].cluster_multiaddr()];
        let log = dir.path().join("peer.log");
        newcomer.spawn_logging_to("info,openraft=off", &log);
        // A received snapshot is published as a `.snap` file, then installed.
        let snaps = newcomer.dir.join("raft/snapshots");
        wait_until("the snapshot to arrive", Duration::from_secs(60), || {
            if !newcomer.is_running() {
                panic!("{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            std::fs::read_dir(&snaps).is_ok_and(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".snap"))
            })
        });
        newcomer.kill9();
        let log = dir.path().join("restart.log");
        newcomer.spawn_logging_to("info,openraft=off", &log);
        wait_until("the newcomer to restart", Duration::from_secs(120), || {
            if !newcomer.is_running() {
                panic!("{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            std::net::TcpStream::connect(("127.0.0.1", newcomer.rest_port)).is_ok()
        });
        wait_until(
            "the newcomer to hold the whole pinset",
            Duration::from_secs(60),
            || {
                http()
                    .get(format!("{}/allocations", newcomer.rest()))
                    .send()
                    .ok()
                    .and_then(|r| r.text().ok())
                    .is_some_and(|t| t.lines().filter(|l| l.contains("\"cid\"")).count() == n)
            },
        );
        interrupted = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("a snapshot install was interrupted");
        if interrupted {
            newcomer.stop();
            break;
        }
        eprintln!("attempt {attempt}: the kill came outside the install; again");
        // Out of the peerset (it stops itself) before the next one joins.
        let r = http()
            .delete(format!(
                "{}/peers/{}",
                c.peers[0].rest(),
                newcomer.peer_id()
            ))
            .send()
            .unwrap();
        assert!(r.status().is_success());
        newcomer.wait_exit(Duration::from_secs(15));
        newcomer.stop();
    }
    assert!(interrupted, "no kill landed during an install");
    c.peers[0].stop();
}

/// A peer killed (kill -9) while it compacts its log (building a snapshot, or
/// just after publishing one, while it purges the log) restarts with every
/// acknowledged pin, the same pinset it had, and no file of the cut build left.
#[test]
fn a_peer_killed_while_compacting_restarts_with_a_consistent_state() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let mut c = start_cluster(1);
    c.peers[0].stop();
    // Enough pins for each snapshot to take a while to build; fast_raft
    // compacts every 40 entries.
    let base = 30_000;
    import_pins_allocated_elsewhere(&c.peers[0], 600_000..600_000 + base);
    c.peers[0].start();

    let snaps = c.peers[0].dir.join("raft/snapshots");
    let files = |suffix: &str| -> Vec<String> {
        std::fs::read_dir(&snaps)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.ends_with(suffix))
                    .collect()
            })
            .unwrap_or_default()
    };
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut next = 700_000;
    let (mut cut_builds, mut cut_purges) = (0, 0);
    for attempt in 0..12 {
        if cut_builds > 0 && cut_purges > 0 {
            break;
        }
        // One client pinning new CIDs one after another until the kill.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (stop, acked, rest) = (stop.clone(), acked.clone(), c.peers[0].rest());
            let first = next;
            std::thread::spawn(move || {
                let client = http();
                for n in first.. {
                    if stop.load(Ordering::SeqCst) {
                        return n;
                    }
                    let cid = id_cid(n);
                    match client.post(format!("{rest}/pins/{cid}")).send() {
                        Ok(r) if r.status().is_success() => acked.lock().unwrap().push(cid),
                        // The peer is gone: only the kill does that here.
                        _ => return n + 1,
                    }
                }
                unreachable!()
            })
        };
        // Even attempts cut a build short; odd ones kill as a new snapshot is
        // published, while the log before it is being purged.
        let cut_build = attempt % 2 == 0;
        let published = files(".snap");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "no compaction within 30 s");
            let hit = if cut_build {
                !files(".tmp").is_empty()
            } else {
                files(".snap") != published && !published.is_empty()
            };
            if hit {
                c.peers[0].kill9();
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        stop.store(true, Ordering::SeqCst);
        next = writer.join().unwrap();
        let left = files(".tmp");
        if cut_build && !left.is_empty() {
            cut_builds += 1;
        } else if !cut_build {
            cut_purges += 1;
        }

        c.peers[0].start();
        let acked_now = acked.lock().unwrap().clone();
        let held: std::collections::HashSet<String> = http()
            .get(format!("{}/allocations", c.peers[0].rest()))
            .send()
            .unwrap()
            .text()
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["cid"].as_str().map(str::to_string))
            .collect();
        let lost: Vec<&String> = acked_now.iter().filter(|c| !held.contains(*c)).collect();
        assert!(
            lost.is_empty(),
            "attempt {attempt}: acknowledged pins lost: {lost:?}"
        );
        // Every pin is an imported one, an acknowledged one or one of the
        // writes in flight at each kill (at most one per attempt).
        let extra = held.len().saturating_sub(base + acked_now.len());
        assert!(
            held.len() >= base + acked_now.len() && extra <= attempt + 1,
            "attempt {attempt}: {} pins held, {base} imported, {} acknowledged",
            held.len(),
            acked_now.len()
        );
        assert!(
            files(".tmp").iter().all(|f| !left.contains(f)),
            "attempt {attempt}: a cut build's file is still there: {left:?}"
        );
    }
    eprintln!(
        "{cut_builds} builds and {cut_purges} publications cut; {} pins acknowledged",
        acked.lock().unwrap().len()
    );
    assert!(cut_builds > 0, "no kill landed during a snapshot build");
    assert!(cut_purges > 0, "no kill landed as a snapshot was published");
    // Still compacting and taking writes after all that.
    let published = files(".snap");
    for n in 0..60 {
        let r = http()
            .post(format!("{}/pins/{}", c.peers[0].rest(), id_cid(next + n)))
            .send()
            .unwrap();
        assert!(r.status().is_success());
    }
    wait_until("a new snapshot", Duration::from_secs(30), || {
        let now = files(".snap");
        !now.is_empty() && now != published
    });
    c.peers[0].stop();
}

/// `state import` into the stopped peer `p` of the pins `id_cid(i)` for `ids`,
/// allocated to a peer outside the cluster, so that no daemon has to pin them.
fn import_pins_allocated_elsewhere(p: &PeerProc, ids: std::ops::Range<usize>) {
    let elsewhere = tempfile::tempdir().unwrap();
    let absent = PeerProc::init(elsewhere.path(), "/ip4/127.0.0.1/tcp/1").peer_id();
    let input: String = ids
        .map(|i| format!("{{\"cid\": \"{}\"}}\n", id_cid(i)))
        .collect();
    let file = elsewhere.path().join("pins.json");
    std::fs::write(&file, input).unwrap();
    let file = file.to_string_lossy();
    let out = state_cmd(p, &["import", "-f", "--allocations", &absent, &file]);
    assert!(out.status.success(), "{out:?}");
}

/// `ipfs-cluster-service state …` on the peer in `p`'s folder.
fn state_cmd(p: &PeerProc, args: &[&str]) -> std::process::Output {
    std::process::Command::new(service_bin())
        .args(["--config", &p.dir.to_string_lossy(), "state"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn state_export_import_and_cleanup_on_a_stopped_cluster() {
    let mut c = start_cluster(3);
    for n in 0..30 {
        let (st, v) = post(&format!(
            "{}/pin/add?arg={}",
            c.peers[n % 3].proxy(),
            id_cid(9000 + n)
        ));
        assert_eq!(st, 200, "{v}");
    }
    // A running peer's state is not touched.
    let out = state_cmd(&c.peers[0], &["export"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lock"));
    for p in c.peers.iter_mut() {
        p.stop();
    }

    let dir = tempfile::tempdir().unwrap();
    let exported = dir.path().join("export.json");
    let out = state_cmd(&c.peers[0], &["export", "-f", &exported.to_string_lossy()]);
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&exported).unwrap();
    let pins: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(pins.len(), 30);
    assert!(
        pins.iter()
            .all(|p| p["type"] == "pin" && p["cid"].is_string())
    );

    // Keep 20 of them and add one partial, pretty-printed object.
    let kept: Vec<String> = pins[..20]
        .iter()
        .map(|p| p["cid"].as_str().unwrap().to_string())
        .collect();
    let extra = id_cid(9100);
    let mut input: String = text.lines().take(20).map(|l| format!("{l}\n")).collect();
    input.push_str(&format!(
        "{{\n  \"cid\": \"{extra}\",\n  \"name\": \"imported\"\n}}\n"
    ));
    // A CID named twice is one pin.
    input.push_str(text.lines().next().unwrap());
    input.push('\n');
    let import = dir.path().join("import.json");
    std::fs::write(&import, &input).unwrap();

    // A bad input changes nothing.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, format!("{input}{{\"cid\": \"notacid\"}}\n")).unwrap();
    let out = state_cmd(&c.peers[0], &["import", "-f", &bad.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pin 23 of the input"), "{err}");
    let again = dir.path().join("again.json");
    let out = state_cmd(&c.peers[0], &["export", "-f", &again.to_string_lossy()]);
    assert!(out.status.success());
    assert_eq!(std::fs::read_to_string(&again).unwrap(), text);

    // Every peer imports the same file, with every pin on two peers.
    for p in &c.peers {
        let out = state_cmd(
            p,
            &[
                "import",
                "-f",
                "--rmin",
                "2",
                "--rmax",
                "2",
                &import.to_string_lossy(),
            ],
        );
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("imported 21 pins"));
        assert!(p.dir.join("raft.old.0").is_dir());
    }
    for p in c.peers.iter_mut() {
        p.spawn();
    }
    for p in c.peers.iter_mut() {
        p.wait_ready();
    }
    wait_leader(&mut c, Duration::from_secs(10));
    let mut want = kept.clone();
    want.push(extra.clone());
    want.sort();
    for p in &c.peers {
        assert_eq!(proxy_pins(p), want);
    }
    let pin: Value = get_json(&format!("{}/allocations/{extra}", c.peers[1].rest()));
    assert_eq!(pin["name"], "imported");
    assert_eq!(pin["replication_factor_min"], 2);
    // The imported cluster takes new writes, and its peers' daemons follow it.
    let (st, v) = post(&format!(
        "{}/pin/add?arg={}",
        c.peers[2].proxy(),
        id_cid(9200)
    ));
    assert_eq!(st, 200, "{v}");
    let extra_cid = cid::Cid::try_from(extra.as_str()).unwrap();
    for d in &c.daemons {
        wait_until(
            "the imported pin on every daemon",
            Duration::from_secs(20),
            || daemon_pins(d).contains(&extra_cid),
        );
    }
    for p in c.peers.iter_mut() {
        p.stop();
    }

    // Cleanup: the raft folder moves aside; the peer starts as a new one.
    let out = state_cmd(&c.peers[0], &["cleanup", "-f"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!c.peers[0].dir.join("raft").exists());
    let out = state_cmd(&c.peers[0], &["export"]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
}

/// Runs `n` requests made by `make(i)` at once (threads released together) and
/// returns their status codes in order.
fn at_once(n: usize, make: impl Fn(usize) -> reqwest::blocking::RequestBuilder) -> Vec<u16> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let req = make(i);
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                req.send().expect("request").status().as_u16()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// The pin of `cid` once every peer reads the same one (`None`: unpinned everywhere).
fn agreed_pin(c: &Cluster, cid: &str) -> Option<Value> {
    let mut last = None;
    wait_until("peers to agree on a pin", Duration::from_secs(10), || {
        let seen: Vec<Option<Value>> = c
            .peers
            .iter()
            .map(|p| {
                let r = http()
                    .get(format!("{}/allocations/{cid}", p.rest()))
                    .send()
                    .unwrap();
                (r.status().as_u16() == 200).then(|| r.json().unwrap())
            })
            .collect();
        let same = seen.windows(2).all(|w| w[0] == w[1]);
        last = seen.into_iter().next().flatten();
        same
    });
    last
}

/// Concurrent clients on different peers writing the same pin get answers and
/// leave a state that one serial order of their writes explains: a direct pin
/// never replaces a recursive one (it is refused once the recursive pin is
/// there), and of several unpins of one pin exactly one succeeds.
#[test]
fn concurrent_conflicting_writers_see_a_serial_order() {
    let c = start_cluster(3);
    let rest: Vec<String> = c.peers.iter().map(|p| p.rest()).collect();
    for round in 0..6 {
        let cid = id_cid(9000 + round);
        // One recursive pin and four direct ones, on every peer at once.
        let codes = at_once(5, |i| {
            let mode = if i == 0 { "recursive" } else { "direct" };
            http().post(format!("{}/pins/{cid}?mode={mode}", rest[(i + round) % 3]))
        });
        assert_eq!(codes[0], 200, "round {round}: {codes:?}");
        assert!(
            codes[1..].iter().all(|s| *s == 200 || *s == 400),
            "round {round}: {codes:?}"
        );
        // Every write answered: wait until each peer applied them all.
        std::thread::sleep(Duration::from_millis(300));
        let pin = agreed_pin(&c, &cid).expect("pinned");
        assert_eq!(pin["mode"], "recursive", "round {round}: {codes:?} {pin}");

        // Six unpins of it at once: one succeeds, the others find it gone.
        let codes = at_once(6, |i| {
            http().delete(format!("{}/pins/{cid}", rest[(i + round) % 3]))
        });
        let ok = codes.iter().filter(|s| **s == 200).count();
        assert!(
            ok == 1 && codes.iter().all(|s| *s == 200 || *s == 404),
            "round {round}: {codes:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(agreed_pin(&c, &cid), None, "round {round}");
    }
}
