//! End-to-end tests against a real IPFS daemon (see scripts/ipfs-daemon.sh), with the
//! peer run as a process of the real binary.

mod common;

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn post(url: &str) -> (u16, Value) {
    let r = http().post(url).send().expect("request");
    let status = r.status().as_u16();
    let text = r.text().expect("body");
    let v = serde_json::from_str(text.trim()).unwrap_or(Value::String(text));
    (status, v)
}

fn daemon_pins(d: &Daemon) -> Vec<String> {
    let (_, v) = post(&format!("{}/pin/ls?type=recursive", d.api()));
    v["Keys"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn cluster_pins(p: &PeerProc) -> Vec<String> {
    let (_, v) = post(&format!("{}/pin/ls", p.proxy()));
    let mut keys: Vec<String> = v["Keys"]
        .as_object()
        .expect("Keys")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

fn rest_allocations(p: &PeerProc) -> Vec<String> {
    let r = http()
        .get(format!("{}/allocations", p.rest()))
        .send()
        .expect("allocations");
    if r.status().as_u16() == 204 {
        return vec![];
    }
    let mut v: Vec<String> = r
        .text()
        .expect("body")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("pin")["cid"]
                .as_str()
                .expect("cid")
                .to_string()
        })
        .collect();
    v.sort();
    v
}

fn rest_status(p: &PeerProc, cid: &str) -> String {
    let v: Value = http()
        .get(format!("{}/pins/{cid}", p.rest()))
        .send()
        .expect("status")
        .json()
        .expect("json");
    let (_, info) = v["peer_map"]
        .as_object()
        .expect("peer_map")
        .iter()
        .next()
        .expect("one peer");
    info["status"].as_str().expect("status").to_string()
}

#[test]
fn pin_lifecycle_through_proxy_survives_restart() {
    let d = Daemon::start();
    let cfg = tempfile::tempdir().unwrap();
    let mut peer = PeerProc::init(cfg.path(), &d.multiaddr());
    peer.start();

    // add is passed through to the daemon, unpinned.
    let cid = add_bytes(&peer.proxy(), "hello.txt", b"hello cluster\n".to_vec());
    let keep = add_bytes(
        &peer.proxy(),
        "keep.txt",
        b"kept across restarts\n".to_vec(),
    );
    assert!(!daemon_pins(&d).contains(&cid));

    let (st, v) = post(&format!("{}/pin/add?arg={cid}", peer.proxy()));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, serde_json::json!({ "Pins": [cid] }));
    let (st, _) = post(&format!("{}/pin/add/{keep}", peer.proxy()));
    assert_eq!(st, 200);

    let mut want = vec![cid.clone(), keep.clone()];
    want.sort();
    assert_eq!(cluster_pins(&peer), want);
    assert_eq!(rest_allocations(&peer), want);
    let on_daemon = daemon_pins(&d);
    assert!(
        on_daemon.contains(&cid) && on_daemon.contains(&keep),
        "{on_daemon:?}"
    );
    assert_eq!(rest_status(&peer, &cid), "pinned");

    // Unpinned behind the cluster's back: the tracker notices.
    let (st, _) = post(&format!("{}/pin/rm?arg={keep}", d.api()));
    assert_eq!(st, 200);
    assert_eq!(rest_status(&peer, &keep), "unexpectedly_unpinned");
    let (st, _) = post(&format!("{}/pin/add?arg={keep}", d.api()));
    assert_eq!(st, 200);

    // ctl shows it too, in upstream's text form.
    let out = Command::new(ctl_bin())
        .args(["--host", &peer.rest_multiaddr(), "status", &cid])
        .output()
        .expect("ctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(": PINNED |"),
        "{text}"
    );

    let (st, v) = post(&format!("{}/pin/rm?arg={cid}", peer.proxy()));
    assert_eq!((st, v), (200, serde_json::json!({ "Pins": [cid] })));
    assert_eq!(cluster_pins(&peer), vec![keep.clone()]);
    assert!(!daemon_pins(&d).contains(&cid));
    assert_eq!(rest_status(&peer, &cid), "unpinned");

    peer.stop();
    peer.start();
    assert_eq!(cluster_pins(&peer), vec![keep.clone()]);
    assert_eq!(rest_allocations(&peer), vec![keep.clone()]);
    assert_eq!(rest_status(&peer, &keep), "pinned");
    peer.stop();
}

#[test]
fn errors_have_kubo_shapes() {
    let d = Daemon::start();
    let cfg = tempfile::tempdir().unwrap();
    let mut peer = PeerProc::init(cfg.path(), &d.multiaddr());
    peer.start();
    let p = peer.proxy();

    // Unknown endpoints reach the daemon and come back exactly as it answered.
    let direct = http()
        .post(format!("{}/nonexistent", d.api()))
        .send()
        .unwrap();
    let proxied = http().post(format!("{p}/nonexistent")).send().unwrap();
    assert_eq!(direct.status(), proxied.status());
    assert_eq!(direct.text().unwrap(), proxied.text().unwrap());

    for cmd in ["pin/add", "pin/rm"] {
        let (st, v) = post(&format!("{p}/{cmd}"));
        assert_eq!(st, 400);
        assert_eq!(
            v,
            serde_json::json!({"Message": "argument \"ipfs-path\" is required", "Code": 1, "Type": "error"})
        );
        let (st, v) = post(&format!("{p}/{cmd}?arg=notacid"));
        assert_eq!(st, 500);
        assert_eq!(
            v,
            serde_json::json!({"Message": "invalid path \"notacid\": path does not have enough components", "Code": 0, "Type": "error"})
        );
    }
    let absent = add_bytes(&p, "absent.txt", b"never pinned\n".to_vec());
    let (st, v) = post(&format!("{p}/pin/rm?arg={absent}"));
    assert_eq!(st, 500);
    assert_eq!(v["Message"], "not pinned or pinned indirectly");
    let (st, v) = post(&format!("{p}/pin/ls?arg={absent}"));
    assert_eq!(st, 500);
    assert_eq!(v["Message"], format!("path '{absent}' is not pinned"));
    assert_eq!(v["Type"], "error");
    peer.stop();
}

#[test]
fn browsers_get_the_daemons_cors_answers_and_its_refusals() {
    const ALLOWED: &str = "http://allowed.example";
    const OTHER: &str = "http://other.example";
    let d = Daemon::start_with_env(&[("CORS_ORIGINS", ALLOWED)]);
    let cfg = tempfile::tempdir().unwrap();
    let mut peer = PeerProc::init(cfg.path(), &d.multiaddr());
    peer.start();
    let p = peer.proxy();
    let cid = add_bytes(&p, "cors.txt", b"cors\n".to_vec());
    let (st, v) = post(&format!("{p}/pin/add?arg={cid}"));
    assert_eq!(st, 200, "{v}");
    let acao = |r: &reqwest::blocking::Response| {
        r.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_string())
    };

    // An allowed origin: the cluster's own answer carries the daemon's CORS
    // headers for it, as a passed-through call does.
    let direct = http()
        .post(format!("{}/version", d.api()))
        .header("origin", ALLOWED)
        .send()
        .unwrap();
    assert_eq!(acao(&direct).as_deref(), Some(ALLOWED));
    let r = http()
        .post(format!("{p}/pin/ls?arg={cid}"))
        .header("origin", ALLOWED)
        .send()
        .unwrap();
    assert_eq!(acao(&r).as_deref(), Some(ALLOWED));
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().unwrap());

    // Another origin, or a browser that sends none: refused before anything
    // happens, with the daemon's own answer.
    let other = id_cid(77);
    for path in [
        format!("pin/rm?arg={cid}"),
        format!("pin/add?arg={other}"),
        format!("pin/ls?arg={cid}"),
        "repo/gc".to_string(),
        "repo/stat".to_string(),
    ] {
        let direct = http()
            .post(format!("{}/{path}", d.api()))
            .header("origin", OTHER)
            .send()
            .unwrap();
        assert_eq!(direct.status().as_u16(), 403, "{path}");
        let direct = direct.text().unwrap();
        let r = http()
            .post(format!("{p}/{path}"))
            .header("origin", OTHER)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{path}");
        assert_eq!(acao(&r), None);
        assert_eq!(r.text().unwrap(), direct, "{path}");
        let r = http()
            .post(format!("{p}/{path}"))
            .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{path}");
    }
    assert_eq!(cluster_pins(&peer), vec![cid.clone()]);
    assert!(daemon_pins(&d).contains(&cid));
    assert!(!daemon_pins(&d).contains(&other));
    // Other clients (no Origin, Referer or browser agent) are not asked about.
    let (st, v) = post(&format!("{p}/pin/ls?arg={cid}"));
    assert_eq!(st, 200, "{v}");
    peer.stop();
}

#[test]
fn unreachable_daemon_gets_kubo_error_not_a_hang() {
    let cfg = tempfile::tempdir().unwrap();
    let mut peer = PeerProc::before_dead_daemon(cfg.path());
    let (st, v) = post(&format!("{}/id", peer.proxy()));
    assert_eq!(st, 502);
    assert_eq!(v["Type"], "error");
    assert_eq!(v["Code"], 0);
    assert!(
        v["Message"]
            .as_str()
            .unwrap()
            .contains("cannot reach the IPFS daemon"),
        "{v}"
    );

    let cid = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG";
    let (st, v) = post(&format!("{}/pin/add?arg={cid}", peer.proxy()));
    assert_eq!(st, 500);
    assert!(
        v["Message"].as_str().unwrap().contains("unreachable"),
        "{v}"
    );
    // The pin is in the cluster pinset, in error on this peer until recovered.
    assert_eq!(rest_status(&peer, cid), "pin_error");
    peer.stop();
}

#[test]
fn cat_of_100mib_streams_byte_identical_with_flat_memory() {
    let d = Daemon::start();
    let cfg = tempfile::tempdir().unwrap();
    let mut peer = PeerProc::init(cfg.path(), &d.multiaddr());
    peer.start();

    let mut data = vec![0u8; 100 * 1024 * 1024];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for chunk in data.chunks_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
    }
    let cid = add_bytes(&d.api(), "big.bin", data.clone());

    let rss_before = proc_kb(peer.pid(), "VmRSS");
    let mut proxied = http()
        .post(format!("{}/cat?arg={cid}", peer.proxy()))
        .send()
        .unwrap();
    assert_eq!(proxied.status().as_u16(), 200);
    let mut got = Vec::with_capacity(data.len());
    proxied.read_to_end(&mut got).unwrap();
    let peak = proc_kb(peer.pid(), "VmHWM");
    assert!(
        got == data,
        "proxied cat differs from the file ({} bytes)",
        got.len()
    );

    let mut direct = Vec::new();
    http()
        .post(format!("{}/cat?arg={cid}", d.api()))
        .send()
        .unwrap()
        .read_to_end(&mut direct)
        .unwrap();
    assert!(direct == got, "proxied cat differs from direct cat");

    let growth_kb = peak.saturating_sub(rss_before);
    eprintln!(
        "cat 100 MiB: peer RSS before {rss_before} kB, peak {peak} kB, growth {growth_kb} kB"
    );
    assert!(
        growth_kb < 32 * 1024,
        "peer RSS grew by {growth_kb} kB during a 100 MiB cat"
    );
    peer.stop();
}

#[test]
fn second_daemon_on_same_config_fails_fast_and_bad_config_names_the_key() {
    let cfg = tempfile::tempdir().unwrap();
    let mut peer = PeerProc::before_dead_daemon(cfg.path());
    let out = peer.command().output().expect("second daemon");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another ipfs-cluster-service is running"),
        "{err}"
    );
    peer.stop();

    let path = cfg.path().join("service.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["cluster"]["pin_recover_interval"] = Value::String("twelve minutes".into());
    std::fs::write(&path, v.to_string()).unwrap();
    let out = peer.command().output().expect("daemon with bad config");
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cluster.pin_recover_interval"), "{err}");
    v["cluster"]["pin_recover_interval"] = Value::String("12m".into());
    v["consensus"]["raft"]["datastore"] = Value::String("leveldb".into());
    std::fs::write(&path, v.to_string()).unwrap();
    let err = String::from_utf8_lossy(&peer.command().output().unwrap().stderr).to_string();
    assert!(err.contains("consensus.raft.datastore"), "{err}");

    // Upstream's init flags: --consensus raft is accepted, crdt refused; random ports.
    let fresh = tempfile::tempdir().unwrap();
    let init = |args: &[&str]| {
        Command::new(service_bin())
            .args(["--config", &fresh.path().to_string_lossy(), "init", "-f"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = init(&["--consensus", "crdt"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--consensus raft"));
    let out = init(&["--consensus", "raft", "--randomports"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(fresh.path().join("service.json")).unwrap())
            .unwrap();
    for (addr, default) in [
        (&v["cluster"]["listen_multiaddress"], "9096"),
        (&v["api"]["restapi"]["http_listen_multiaddress"], "9094"),
        (&v["api"]["ipfsproxy"]["listen_multiaddress"], "9095"),
    ] {
        let a = addr.as_str().or_else(|| addr[0].as_str()).unwrap();
        assert!(a.contains("/tcp/") && !a.ends_with(default), "{a}");
    }

    // fjall is the default; `init --datastore sled` picks another store, and
    // the folder then refuses the others. A config without the key (upstream's,
    // or written by hand) opens the store the folder holds.
    assert_eq!(v["consensus"]["raft"]["datastore"], "fjall");
    let other = tempfile::tempdir().unwrap();
    let mut peer = PeerProc::before_dead_daemon_with(other.path(), &["--datastore", "sled"]);
    assert!(other.path().join("raft/conf").is_file());
    assert!(!other.path().join("raft/store.fjall").exists());
    peer.stop();
    let path = other.path().join("service.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["consensus"]["raft"]["datastore"], "sled");
    v["consensus"]["raft"]["datastore"] = Value::String("redb".into());
    std::fs::write(&path, v.to_string()).unwrap();
    let out = peer.command().output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds a sled store"), "{err}");
    v["consensus"]["raft"]
        .as_object_mut()
        .unwrap()
        .remove("datastore");
    std::fs::write(&path, v.to_string()).unwrap();
    peer.start();
    peer.stop();
    assert!(!other.path().join("raft/store.fjall").exists());
}

#[test]
fn direct_pins_progress_filters_rest_and_ctl() {
    let d = Daemon::start();
    let cfg = tempfile::tempdir().unwrap();
    let mut peer = PeerProc::init(cfg.path(), &d.multiaddr());
    peer.start();
    let p = peer.proxy();
    let rec = add_bytes(&p, "rec.txt", b"recursive pin\n".to_vec());
    let dir = add_bytes(&p, "direct.txt", b"direct pin\n".to_vec());

    // progress=true streams kubo's shape and ends with the Pins object.
    let r = http()
        .post(format!("{p}/pin/add?arg={rec}&progress=true"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-chunked-output"], "1");
    let text = r.text().unwrap();
    let last: Value =
        serde_json::from_str(text.lines().rfind(|l| !l.trim().is_empty()).unwrap()).unwrap();
    assert_eq!(last, serde_json::json!({ "Pins": [rec] }));

    let (st, _) = post(&format!("{p}/pin/add?arg=/ipfs/{dir}&recursive=false"));
    assert_eq!(st, 200);
    let (_, v) = post(&format!("{}/pin/ls?type=direct", d.api()));
    assert!(
        v["Keys"].get(&dir).is_some(),
        "daemon has no direct pin: {v}"
    );

    let (_, v) = post(&format!("{p}/pin/ls?type=direct"));
    assert_eq!(
        v,
        serde_json::json!({ "Keys": { dir.clone(): { "Type": "direct" } } })
    );
    let (_, v) = post(&format!("{p}/pin/ls?type=recursive"));
    assert_eq!(
        v,
        serde_json::json!({ "Keys": { rec.clone(): { "Type": "recursive" } } })
    );
    let (_, v) = post(&format!("{p}/pin/ls?type=indirect"));
    assert_eq!(v, serde_json::json!({ "Keys": {} }));
    let (st, v) = post(&format!("{p}/pin/ls?type=bogus"));
    assert_eq!((st, &v["Type"]), (500, &Value::from("error")));
    let text = http()
        .post(format!("{p}/pin/ls?stream=true&arg={dir}"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(text.trim()).unwrap(),
        serde_json::json!({ "Cid": dir, "Type": "direct" })
    );

    // A sub-path is resolved through the daemon and its target pinned.
    let a = reqwest::blocking::multipart::Part::bytes(b"inside a directory\n".to_vec())
        .file_name("a.txt")
        .mime_str("application/octet-stream")
        .unwrap();
    let form = reqwest::blocking::multipart::Form::new().part("file", a);
    let text = http()
        .post(format!("{p}/add?pin=false&wrap-with-directory=true"))
        .multipart(form)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let entries: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let file = entries.iter().find(|e| e["Name"] == "a.txt").unwrap()["Hash"]
        .as_str()
        .unwrap()
        .to_string();
    let wrap = entries.iter().find(|e| e["Name"] == "").unwrap()["Hash"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, v) = post(&format!("{p}/pin/add?arg=/ipfs/{wrap}/a.txt"));
    assert_eq!((st, v), (200, serde_json::json!({ "Pins": [file] })));
    let (st, _) = post(&format!("{p}/pin/rm?arg=/ipfs/{wrap}/a.txt"));
    assert_eq!(st, 200);

    // REST API: upstream's JSON and error codes.
    let extra = add_bytes(&p, "extra.txt", b"pinned via REST\n".to_vec());
    let pin: Value = http()
        .post(format!(
            "{}/pins/{extra}?name=viarest&replication=-1",
            peer.rest()
        ))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        (pin["cid"].as_str(), pin["name"].as_str()),
        (Some(extra.as_str()), Some("viarest"))
    );
    let r = http()
        .delete(format!("{}/pins/{extra}", peer.rest()))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = http()
        .delete(format!("{}/pins/{extra}", peer.rest()))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let pin: Value = get_json(&format!("{}/allocations/{dir}", peer.rest()));
    assert_eq!(
        (pin["mode"].as_str(), pin["max_depth"].as_i64()),
        (Some("direct"), Some(0))
    );
    let r = http()
        .get(format!(
            "{}/allocations/{}",
            peer.rest(),
            add_bytes(&p, "x", b"x".to_vec())
        ))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let e: Value = r.json().unwrap();
    assert_eq!(e["code"], 404);
    let r = http()
        .get(format!("{}/pins/notacid", peer.rest()))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = http()
        .get(format!("{}/pins?filter=bogus", peer.rest()))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(
        http()
            .get(format!("{}/health", peer.rest()))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        204
    );

    // ctl: pin add with options and --wait, json output, pin ls text, pin rm.
    let ctl = |args: &[&str]| {
        let out = Command::new(ctl_bin())
            .args(["--host", &peer.rest_multiaddr()])
            .args(args)
            .output()
            .expect("ctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let third = add_bytes(&p, "third.txt", b"third\n".to_vec());
    let (ok, out, err) = ctl(&[
        "pin",
        "add",
        &third,
        "--name",
        "n3",
        "--metadata",
        "k=v",
        "--wait",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("{third} | n3:")) && out.contains("PINNED"),
        "{out}"
    );
    let (ok, out, _) = ctl(&["--enc", "json", "pin", "ls", &third]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["name"].as_str(), v["metadata"]["k"].as_str()),
        (Some("n3"), Some("v"))
    );
    let (ok, out, _) = ctl(&["pin", "ls"]);
    assert!(ok && out.lines().count() == 3, "{out}");
    assert!(
        out.contains(&format!(
            "{dir} |  | PIN-DIRECT | Repl. Factor: -1 | Allocations: [everywhere] | Direct"
        )),
        "{out}"
    );
    let (ok, out, _) = ctl(&["--enc", "json", "version"]);
    assert!(ok && out.contains(ipfs_cluster::VERSION));
    let (ok, out, err) = ctl(&["pin", "rm", &third, "--wait"]);
    assert!(ok && out.contains("UNPINNED"), "{out}{err}");
    // API errors: upstream's block on stdout.
    let (ok, out, err) = ctl(&["pin", "rm", &third]);
    assert!(
        !ok && out.starts_with("An error occurred:\n  Code: 404\n  Message: ") && err.is_empty(),
        "{out}{err}"
    );
    let (ok, out, _) = ctl(&["pin", "add", "notacid"]);
    assert!(!ok && out.starts_with("An error occurred:\n"), "{out}");

    // pin update: the new pin takes the old one's options; the old one stays.
    let old = add_bytes(&p, "old.txt", b"old\n".to_vec());
    let new = add_bytes(&p, "new.txt", b"new\n".to_vec());
    let (ok, out, err) = ctl(&[
        "pin",
        "add",
        &old,
        "--name",
        "keep",
        "--metadata",
        "a=b",
        "--wait",
        "--wl",
        "1",
    ]);
    assert!(ok && out.contains("PINNED"), "{out}{err}");
    let (ok, out, err) = ctl(&["pin", "update", &old, &new, "--wait"]);
    assert!(ok && out.contains(&format!("{new} | keep:")), "{out}{err}");
    let pinned: Value = get_json(&format!("{}/allocations/{new}", peer.rest()));
    assert_eq!(pinned["metadata"]["a"], "b");
    assert_eq!(
        status(http().get(format!("{}/allocations/{old}", peer.rest()))),
        200
    );
    let (ok, out, err) = ctl(&["pin", "update", &third, &old]);
    assert!(!ok && out.contains("not recursively pinned"), "{out}{err}");

    // ipfs gc: what the daemon removed, by peer; the pins stay.
    let (ok, _, err) = ctl(&["pin", "rm", &old]);
    assert!(ok, "{err}");
    wait_until("the daemon to unpin", Duration::from_secs(10), || {
        !daemon_pins(&d).contains(&old)
    });
    let (ok, out, err) = ctl(&["--enc", "json", "ipfs", "gc", "--local"]);
    assert!(ok, "{err}");
    let gc: Value = serde_json::from_str(&out).unwrap();
    let mine = &gc["peer_map"][peer.peer_id()];
    // Daemons may report blocks under another CID version: compare multihashes.
    let hash = |c: &str| cid::Cid::try_from(c).unwrap().hash().to_bytes();
    let removed: Vec<Vec<u8>> = mine["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["key"].as_str())
        .map(hash)
        .collect();
    assert!(removed.contains(&hash(&old)), "{gc}");
    assert!(!removed.contains(&hash(&new)), "{gc}");
    let (ok, out, _) = ctl(&["ipfs", "gc"]);
    assert!(ok && out.contains("  > CIDs:"), "{out}");
    assert!(daemon_pins(&d).contains(&new));
    peer.stop();
}

fn multipart_post(url: &str, name: &str, data: Vec<u8>) -> (u16, String) {
    let part = reqwest::blocking::multipart::Part::bytes(data)
        .file_name(name.to_string())
        .mime_str("application/octet-stream")
        .unwrap();
    let r = http()
        .post(url)
        .multipart(reqwest::blocking::multipart::Form::new().part("file", part))
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

fn last_json(text: &str) -> Value {
    serde_json::from_str(text.lines().rfind(|l| !l.trim().is_empty()).unwrap()).unwrap()
}

#[test]
fn add_block_dag_update_and_repo_stat_through_the_proxy() {
    let d = Daemon::start();
    let cfg = tempfile::tempdir().unwrap();
    let mut peer = PeerProc::init(cfg.path(), &d.multiaddr());
    peer.start();
    let p = peer.proxy();

    // add: the daemon's answer comes through; the root becomes a cluster pin with
    // the cluster options given in the query.
    let (st, text) = multipart_post(
        &format!("{p}/add?name=added&meta-k=v"),
        "a.txt",
        b"added through the proxy\n".to_vec(),
    );
    assert_eq!(st, 200, "{text}");
    let root = last_json(&text)["Hash"].as_str().unwrap().to_string();
    assert!(cluster_pins(&peer).contains(&root));
    let pin: Value = get_json(&format!("{}/allocations/{root}", peer.rest()));
    assert_eq!(
        (pin["name"].as_str(), pin["metadata"]["k"].as_str()),
        (Some("added"), Some("v"))
    );
    // pin=false: added, not pinned.
    let (_, text) = multipart_post(
        &format!("{p}/add?pin=false"),
        "b.txt",
        b"not pinned\n".to_vec(),
    );
    let unpinned = last_json(&text)["Hash"].as_str().unwrap().to_string();
    assert!(!cluster_pins(&peer).contains(&unpinned));

    // block/put and dag/put with pin=true become cluster pins.
    let (st, text) = multipart_post(
        &format!("{p}/block/put?pin=true&format=raw&cid-codec=raw"),
        "blk",
        b"a raw block".to_vec(),
    );
    assert_eq!(st, 200, "{text}");
    let key = last_json(&text)["Key"].as_str().unwrap().to_string();
    let key_cid = cid::Cid::try_from(key.as_str()).unwrap();
    let keys: Vec<cid::Cid> = cluster_pins(&peer)
        .iter()
        .filter_map(|c| cid::Cid::try_from(c.as_str()).ok())
        .collect();
    assert!(keys.contains(&key_cid), "{key} not pinned in the cluster");
    let (st, text) = multipart_post(
        &format!("{p}/dag/put?pin=true"),
        "node.json",
        br#"{"hello":"cluster"}"#.to_vec(),
    );
    assert_eq!(st, 200, "{text}");
    let dag = last_json(&text)["Cid"]["/"].as_str().unwrap().to_string();
    let dag_cid = cid::Cid::try_from(dag.as_str()).unwrap();
    let keys: Vec<cid::Cid> = cluster_pins(&peer)
        .iter()
        .filter_map(|c| cid::Cid::try_from(c.as_str()).ok())
        .collect();
    assert!(keys.contains(&dag_cid), "{dag} not pinned in the cluster");

    // pin/update: the new CID takes over; kubo's errors for missing arguments.
    let (st, v) = post(&format!("{p}/pin/update?arg={root}&arg={unpinned}"));
    assert_eq!(
        (st, v),
        (200, serde_json::json!({ "Pins": [root, unpinned] }))
    );
    let pins = cluster_pins(&peer);
    assert!(pins.contains(&unpinned) && !pins.contains(&root));
    let moved: Value = get_json(&format!("{}/allocations/{unpinned}", peer.rest()));
    assert_eq!(moved["name"], "added", "options were not carried over");
    let (st, v) = post(&format!("{p}/pin/update"));
    assert_eq!(
        (st, v["Message"].as_str()),
        (400, Some("argument \"from-path\" is required"))
    );
    let (st, v) = post(&format!("{p}/pin/update?arg={root}"));
    assert_eq!(
        (st, v["Message"].as_str()),
        (400, Some("argument \"to-path\" is required"))
    );

    // repo/stat: numbers, as kubo sends them (js-ipfs sends strings).
    let (st, v) = post(&format!("{p}/repo/stat?size-only=true"));
    assert_eq!(st, 200);
    assert!(
        v["RepoSize"].as_u64().is_some() && v["StorageMax"].as_u64().is_some(),
        "{v}"
    );
    peer.stop();
}

#[test]
fn oversized_headers_get_431() {
    let cfg = tempfile::tempdir().unwrap();
    let mut peer = PeerProc::before_dead_daemon(cfg.path());
    let big = "x".repeat(5000);
    let r = http()
        .post(format!("{}/id", peer.proxy()))
        .header("x-big", &big)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 431);
    let r = http()
        .get(format!("{}/id", peer.rest()))
        .header("x-big", &big)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 431);
    assert_eq!(
        status(
            http()
                .get(format!("{}/id", peer.rest()))
                .header("x-small", "y")
        ),
        200
    );
    peer.stop();
}

#[test]
fn intercepted_endpoints_with_bad_input_a_dead_daemon_and_dropped_clients() {
    // A dead daemon: every intercepted call answers (no hang), errors kubo-shaped.
    let cfg = tempfile::tempdir().unwrap();
    let mut peer = PeerProc::before_dead_daemon(cfg.path());
    let p = peer.proxy();
    let cid = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG";
    for path in [
        format!("/pin/add?arg={cid}"),
        format!("/pin/update?arg={cid}&arg={cid}"),
        "/repo/gc".to_string(),
        "/add".to_string(),
        "/block/put?pin=true".to_string(),
        "/dag/put?pin=true".to_string(),
    ] {
        let (st, v) = post(&format!("{p}{path}"));
        assert!(st >= 400 || path == "/repo/gc", "{path}: {st} {v}");
        if st >= 400 {
            assert_eq!(v["Type"], "error", "{path}: {v}");
        }
    }
    let (st, v) = post(&format!("{p}/repo/stat"));
    assert_eq!(
        (st, &v["RepoSize"]),
        (200, &Value::from(0)),
        "peers that fail are left out"
    );
    let (st, _) = post(&format!("{p}/pin/ls"));
    assert_eq!(st, 200, "pin/ls reads the cluster, not the daemon");

    // Bad CIDs and missing arguments on every intercepted call that takes one.
    for cmd in ["pin/add", "pin/rm", "pin/ls"] {
        let (st, v) = post(&format!("{p}/{cmd}?arg=notacid"));
        assert_eq!((st, v["Code"].as_u64()), (500, Some(0)), "{cmd}: {v}");
        assert!(
            v["Message"].as_str().unwrap().starts_with("invalid path"),
            "{cmd}: {v}"
        );
    }
    let (st, v) = post(&format!("{p}/pin/update?arg=notacid&arg={cid}"));
    assert_eq!(st, 500);
    assert!(
        v["Message"]
            .as_str()
            .unwrap()
            .starts_with("error parsing \"from-path\""),
        "{v}"
    );
    for (cmd, arg) in [
        ("pin/add", "ipfs-path"),
        ("pin/rm", "ipfs-path"),
        ("pin/update", "from-path"),
    ] {
        let (st, v) = post(&format!("{p}/{cmd}"));
        assert_eq!((st, v["Code"].as_u64()), (400, Some(1)), "{cmd}");
        assert_eq!(v["Message"], format!("argument \"{arg}\" is required"));
    }
    peer.stop();

    // Clients that hang up mid-stream: an upload cut halfway, a listing dropped
    // after the first bytes. The peer keeps serving and stops cleanly.
    let d = Daemon::start();
    let cfg = tempfile::tempdir().unwrap();
    let mut peer = PeerProc::init(cfg.path(), &d.multiaddr());
    peer.start();
    for n in 0..50 {
        let c = add_bytes(&peer.proxy(), "f", format!("listing {n}").into_bytes());
        let (st, _) = post(&format!("{}/pin/add?arg={c}", peer.proxy()));
        assert_eq!(st, 200);
    }
    use std::io::{Read, Write};
    let addr = ("127.0.0.1", peer.proxy_port);
    for path in [
        "/api/v0/pin/ls?stream=true",
        "/api/v0/pin/ls",
        "/api/v0/repo/gc",
    ] {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        drop(s);
    }
    // Last, because js-ipfs itself never releases its repo lock after an upload
    // cut short (a repo/gc straight to it then hangs too): the proxy must not care.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let boundary = "b0undary";
    write!(
        s,
        "POST /api/v0/add HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n\
         Content-Length: 10000000\r\n\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
         filename=\"cut.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .unwrap();
    s.write_all(&vec![7u8; 100_000]).unwrap();
    drop(s);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (st, _) = post(&format!("{}/id", peer.proxy()));
    assert_eq!(st, 200, "the proxy stopped serving after dropped clients");
    assert_eq!(cluster_pins(&peer).len(), 50);
    peer.stop();
}

#[test]
fn ctl_add_uploads_files_and_folders_and_pins_the_root() {
    let d = Daemon::start();
    let cfg = tempfile::tempdir().unwrap();
    let mut peer = PeerProc::init(cfg.path(), &d.multiaddr());
    peer.start();
    let files = tempfile::tempdir().unwrap();
    let f = files.path();
    std::fs::write(f.join("a.txt"), b"hello from ctl add\n").unwrap();
    std::fs::create_dir_all(f.join("docs/sub")).unwrap();
    std::fs::write(f.join("docs/x.txt"), b"x\n").unwrap();
    std::fs::write(f.join("docs/sub/y.txt"), b"y\n").unwrap();
    std::fs::write(f.join("docs/.hidden"), b"h\n").unwrap();
    // A link goes as a link: one that loops must not hang the upload.
    std::os::unix::fs::symlink("..", f.join("docs/up")).unwrap();
    let ctl = |args: &[&str]| {
        let out = Command::new(ctl_bin())
            .args(["--host", &peer.rest_multiaddr()])
            .args(args)
            .current_dir(f)
            .output()
            .expect("ctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    // A file: the CID the daemon gives the same bytes, pinned with the options.
    let (ok, out, err) = ctl(&["add", "a.txt", "--name", "greeting", "--wait"]);
    assert!(ok, "{err}");
    let direct = add_bytes(&d.api(), "a.txt", b"hello from ctl add\n".to_vec());
    assert_eq!(out.trim(), format!("added {direct} a.txt"));
    let pin: Value = get_json(&format!("{}/allocations/{direct}", peer.rest()));
    assert_eq!(pin["name"], "greeting");
    assert!(daemon_pins(&d).contains(&direct));

    // A folder needs -r; with it, every entry is listed and the folder is the root.
    // (js-ipfs 0.66 drops one-character names of folder parts: hence "docs".)
    let (ok, _, err) = ctl(&["add", "docs"]);
    assert!(!ok && err.contains("is a directory"), "{err}");
    let (ok, out, err) = ctl(&["add", "-r", "docs"]);
    assert!(ok, "{err}");
    // The daemon decides the order of entries; the root comes last.
    let mut names: Vec<&str> = out.lines().map(|l| l.rsplit(' ').next().unwrap()).collect();
    assert_eq!(names.last(), Some(&"docs"), "{out}");
    names.sort();
    // js-ipfs 0.66 skips symlink parts (kubo adds them): the link may be absent.
    names.retain(|n| *n != "docs/up");
    assert_eq!(
        names,
        ["docs", "docs/sub", "docs/sub/y.txt", "docs/x.txt"],
        "{out}"
    );
    let root = out.lines().last().unwrap().split(' ').nth(1).unwrap();
    let (st, ls) = post(&format!("{}/ls?arg={root}", d.api()));
    assert_eq!(st, 200);
    let links: Vec<&str> = ls["Objects"][0]["Links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["Name"].as_str().unwrap())
        .collect();
    let links: Vec<&str> = links.into_iter().filter(|l| *l != "up").collect();
    assert_eq!(links, ["sub", "x.txt"]);
    assert_eq!(
        status(http().get(format!("{}/allocations/{root}", peer.rest()))),
        200
    );
    // --no-stream (one list at the end) and --local give the same outputs.
    let (ok, again, err) = ctl(&["add", "--no-stream", "--local", "a.txt"]);
    assert!(ok, "{err}");
    assert_eq!(again.trim(), format!("added {direct} a.txt"));
    // -Q prints the root only; --no-pin leaves the pinset alone; options reach
    // the daemon (CIDv1).
    let (ok, out, err) = ctl(&["add", "-Q", "--no-pin", "--cid-version", "1", "a.txt"]);
    assert!(ok, "{err}");
    let v1 = out.trim();
    assert!(v1.starts_with("bafk"), "{out}");
    assert_eq!(
        status(http().get(format!("{}/allocations/{v1}", peer.rest()))),
        404
    );

    // The REST route refuses what it cannot read.
    let r = http()
        .post(format!("{}/add", peer.rest()))
        .body("not multipart")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let e: Value = r.json().unwrap();
    assert_eq!(e["code"], 400);
    peer.stop();
}

#[test]
fn ctl_gives_up_after_its_timeout_with_upstreams_exit_code() {
    // A listener that never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let started = std::time::Instant::now();
    let out = Command::new(ctl_bin())
        .args(["--host", &format!("/ip4/127.0.0.1/tcp/{port}")])
        .args(["--timeout", "1", "id"])
        .output()
        .expect("ctl");
    assert_eq!(out.status.code(), Some(62), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed out"));
}

#[test]
fn rest_api_basic_auth_tokens_and_cors() {
    let cfg = tempfile::tempdir().unwrap();
    let dead = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let mut peer = PeerProc::init(cfg.path(), &dead);
    peer.edit_config(|v| {
        let r = &mut v["api"]["restapi"];
        r["basic_auth_credentials"] = serde_json::json!({"alice": "s3cret"});
        r["cors_allowed_origins"] = serde_json::json!(["http://app.example"]);
        r["cors_allowed_methods"] = serde_json::json!(["GET", "POST"]);
        r["cors_allowed_headers"] = serde_json::json!(["Authorization"]);
    });
    peer.start();
    let rest = peer.rest();

    let r = http().get(format!("{rest}/version")).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let realms: Vec<&str> = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(realms.len(), 2, "{realms:?}");
    assert_eq!(status(http().get(format!("{rest}/health"))), 204);
    let basic = || {
        http()
            .get(format!("{rest}/version"))
            .basic_auth("alice", Some("s3cret"))
    };
    assert_eq!(status(basic()), 200);

    // A token for alice works in place of her password, and only as issued.
    let t: Value = http()
        .post(format!("{rest}/token"))
        .basic_auth("alice", Some("s3cret"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let token = t["token"].as_str().unwrap().to_string();
    assert_eq!(
        status(http().get(format!("{rest}/version")).bearer_auth(&token)),
        200
    );
    let tampered = format!("{token}x");
    assert_eq!(
        status(http().get(format!("{rest}/version")).bearer_auth(&tampered)),
        401
    );
    let out = Command::new(ctl_bin())
        .args([
            "--host",
            &peer.rest_multiaddr(),
            "--basic-auth",
            "alice:s3cret",
            // Credentials imply HTTPS, as upstream; this API is plain HTTP.
            "--force-http",
            "version",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // CORS: the preflight needs no credentials; allowed origins get the headers.
    let r = http()
        .request(reqwest::Method::OPTIONS, format!("{rest}/pins"))
        .header("origin", "http://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    assert_eq!(r.headers()["access-control-allow-methods"], "POST");
    let r = basic()
        .header("origin", "http://app.example")
        .send()
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    assert!(r.headers().contains_key("access-control-expose-headers"));
    let r = basic()
        .header("origin", "http://evil.example")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    peer.stop();
}

#[test]
fn prometheus_metrics_with_stats() {
    let d = Daemon::start();
    let cfg = tempfile::tempdir().unwrap();
    let mut peer = PeerProc::init(cfg.path(), &d.multiaddr());
    let port = free_port();
    peer.edit_config(|v| {
        v["observations"]["metrics"]["prometheus_endpoint"] =
            format!("/ip4/127.0.0.1/tcp/{port}").into();
    });
    peer.extra_args = vec!["--stats".into()];
    peer.start();
    let cid = add_bytes(&peer.proxy(), "m.txt", b"metrics\n".to_vec());
    let (st, v) = post(&format!("{}/pin/add?arg={cid}", peer.proxy()));
    assert_eq!(st, 200, "{v}");
    let url = format!("http://127.0.0.1:{port}/metrics");
    let r = http().get(&url).send().unwrap();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().unwrap();
    let value = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("ipfscluster_{name} ")))
            .and_then(|v| v.parse().ok())
    };
    assert_eq!(value("pins"), Some(1), "{text}");
    assert_eq!(value("pins_pin_add"), Some(1), "{text}");
    assert_eq!(value("pins_pin_queued"), Some(0), "{text}");
    assert_eq!(value("peers"), Some(1), "{text}");
    // The daemon's pin list is cached for a few seconds.
    wait_until(
        "the daemon's pins in the metrics",
        Duration::from_secs(10),
        || {
            http()
                .get(&url)
                .send()
                .and_then(|r| r.text())
                .is_ok_and(|t| t.contains("ipfscluster_pins_ipfs_pins 1\n"))
        },
    );
    assert!(
        text.contains("# TYPE ipfscluster_pins_pin_add counter"),
        "{text}"
    );
    assert_eq!(
        status(http().get(format!("http://127.0.0.1:{port}/other"))),
        404
    );
    peer.stop();
}

#[test]
fn access_log_at_debug_level() {
    let cfg = tempfile::tempdir().unwrap();
    let dead = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let mut peer = PeerProc::init(cfg.path(), &dead);
    let log = cfg.path().join("peer.log");
    peer.start_logging_to("warn,ipfs_cluster::access=debug", &log);
    assert_eq!(status(http().get(format!("{}/id", peer.rest()))), 200);
    assert_eq!(
        status(http().post(format!("{}/version", peer.proxy()))),
        502
    );
    peer.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("rest api: 127.0.0.1:") && l.contains("\"GET /id\" 200")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("ipfs proxy:") && l.contains("\"POST /api/v0/version\" 502")),
        "{text}"
    );
}
