//! `ipfs-cluster-ctl` as upstream's users script it: TLS with basic auth on the
//! REST API (upstream's sample certificate, through curl and ctl), `--host`
//! failover, upstream's error block and exit codes, its command set and help.
//! Peers run before a daemon that is not there: these commands only need the
//! cluster side.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

/// Runs ctl: (exit code, stdout, stderr).
fn ctl(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(ctl_bin()).args(args).output().expect("ctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Runs curl: (exit code, body).
fn curl(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

fn fixtures(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/upstream")
        .join(name)
}

/// A server that answers every request with a 500 API error saying `message`.
fn failing_api(message: &'static str) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = format!("{{\"code\":500,\"message\":\"{message}\"}}");
            let _ = write!(
                s,
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn tls_rest_api_with_basic_auth_through_curl_and_ctl() {
    let cfg = tempfile::tempdir().unwrap();
    let dead = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let mut peer = PeerProc::init(cfg.path(), &dead);
    // Upstream's ssl-basic_auth sample: its certificate and key, its users, and
    // the files named relative to the config folder.
    for f in ["server.crt", "server.key"] {
        std::fs::copy(fixtures("ssl-basic_auth").join(f), cfg.path().join(f)).unwrap();
    }
    peer.edit_config(|v| {
        let r = &mut v["api"]["restapi"];
        r["ssl_cert_file"] = "server.crt".into();
        r["ssl_key_file"] = "server.key".into();
        r["basic_auth_credentials"] =
            serde_json::json!({"testuser": "testpass", "userwithoutpass": ""});
    });
    peer.start();
    let https = format!("https://127.0.0.1:{}", peer.rest_port);
    let host = peer.rest_multiaddr();

    // curl: the certificate is self-signed, so -k; credentials as configured.
    let (code, body) = curl(&["-k", "-u", "testuser:testpass", &format!("{https}/version")]);
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["version"], ipfs_cluster::VERSION);
    let (code, body) = curl(&["-k", "-u", "userwithoutpass:", &format!("{https}/id")]);
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["id"],
        peer.peer_id()
    );
    let (_, body) = curl(&["-k", &format!("{https}/version")]);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["code"],
        401,
        "{body}"
    );
    // Without -k curl refuses the certificate (60); plain HTTP gets no answer.
    let (code, _) = curl(&["-u", "testuser:testpass", &format!("{https}/version")]);
    assert_eq!(code, Some(60));
    let (code, _) = curl(&[
        "-u",
        "testuser:testpass",
        &format!("http://127.0.0.1:{}/version", peer.rest_port),
    ]);
    assert_ne!(code, Some(0));

    // ctl: credentials imply HTTPS, as upstream.
    let (code, out, err) = ctl(&[
        "--host",
        &host,
        "--basic-auth",
        "testuser:testpass",
        "--no-check-certificate",
        "version",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out, format!("{}\n", ipfs_cluster::VERSION));
    // The same with --https said explicitly, and through the environment.
    let out = Command::new(ctl_bin())
        .args(["--host", &host, "-s", "--no-check-certificate", "id"])
        .env("CLUSTER_CREDENTIALS", "testuser:testpass")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&peer.peer_id()));
    // The certificate is checked unless told otherwise: no answer, exit 1.
    let (code, out, _) = ctl(&["--host", &host, "--basic-auth", "testuser:testpass", "id"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.starts_with("An error occurred:\n  Code: 0\n  Message: "),
        "{out}"
    );
    assert!(out.contains("certificate"), "{out}");
    // --force-http speaks plain HTTP to a TLS port: no answer either.
    let (code, out, _) = ctl(&[
        "--host",
        &host,
        "--basic-auth",
        "testuser:testpass",
        "--force-http",
        "version",
    ]);
    assert_eq!(code, Some(1), "{out}");
    // Wrong credentials are an answer: the API's 401 in upstream's block, exit 2.
    let (code, out, _) = ctl(&[
        "--host",
        &host,
        "--https",
        "--no-check-certificate",
        "--basic-auth",
        "testuser:wrong",
        "version",
    ]);
    assert_eq!(code, Some(2), "{out}");
    assert_eq!(
        out,
        "An error occurred:\n  Code: 401\n  Message: unauthorized: invalid credentials\n"
    );

    // Failover: the first host is down, the second serves.
    let dead_api = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let (code, out, err) = ctl(&[
        "--host",
        &format!("{dead_api},{host}"),
        "--basic-auth",
        "testuser:testpass",
        "--no-check-certificate",
        "version",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out, format!("{}\n", ipfs_cluster::VERSION));
    peer.stop();
}

#[test]
fn a_bad_certificate_stops_the_peer_with_a_clear_error() {
    let cfg = tempfile::tempdir().unwrap();
    let dead = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let peer = PeerProc::init(cfg.path(), &dead);
    std::fs::write(cfg.path().join("server.crt"), "not a certificate").unwrap();
    peer.edit_config(|v| {
        let r = &mut v["api"]["restapi"];
        r["ssl_cert_file"] = "server.crt".into();
        r["ssl_key_file"] = "missing.key".into();
    });
    let out = peer.command().output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error loading TLS certificate/key") && err.contains("server.crt"),
        "{err}"
    );
    // Only one of the two is a config error.
    peer.edit_config(|v| v["api"]["restapi"]["ssl_key_file"] = "".into());
    let out = peer.command().output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("api.restapi.ssl_cert_file"), "{err}");
}

#[test]
fn ctl_answers_and_errors_as_upstreams_ctl() {
    let cfg = tempfile::tempdir().unwrap();
    let mut peer = PeerProc::before_dead_daemon(cfg.path());
    let host = peer.rest_multiaddr();
    let c = |args: &[&str]| {
        let mut all = vec!["--host", &host];
        all.extend_from_slice(args);
        ctl(&all)
    };

    // pin add --no-status prints the pin, in upstream's pin line.
    let cid = id_cid(1);
    let (code, out, err) = c(&["pin", "add", &cid, "--name", "n1", "--no-status"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with(&format!("{cid} | n1 | PIN | Repl. Factor: -1 | Allocations: [everywhere] | Recursive | Metadata: no | Exp: ∞ | Added: ")),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1, "{out}");
    let (code, out, _) = c(&["--enc", "json", "pin", "add", &id_cid(2), "--no-status"]);
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["cid"], id_cid(2));
    // JSON as upstream's ctl prints it: four-space indentation.
    assert!(out.starts_with("{\n    \""), "{out}");

    // pin ls --filter: data pins are "pin"; sharding types list nothing here.
    let (code, out, _) = c(&["pin", "ls", "--filter", "pin"]);
    assert_eq!((code, out.lines().count()), (Some(0), 2), "{out}");
    let (code, out, _) = c(&["pin", "ls", "--filter", "meta-pin,shard-pin"]);
    assert_eq!((code, out.as_str()), (Some(0), ""));
    let (code, out, _) = c(&["pin", "ls", "--filter", "nonsense"]);
    assert_eq!(code, Some(2));
    assert_eq!(
        out,
        "An error occurred:\n  Code: 400\n  Message: invalid filter value\n"
    );

    // API errors: the block on stdout (or its JSON), exit 2.
    let missing = id_cid(3);
    let (code, out, err) = c(&["pin", "ls", &missing]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        out.starts_with("An error occurred:\n  Code: 404\n  Message: "),
        "{out}"
    );
    assert!(err.is_empty(), "{err}");
    let (code, out, _) = c(&["--enc", "json", "pin", "ls", &missing]);
    assert_eq!(code, Some(2));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["code"], 404);
    assert!(
        out.starts_with("{\n    \"code\": 404,\n    \"message\": "),
        "{out}"
    );
    // Errors of the command line itself: stderr, exit 1.
    let (code, out, err) = c(&["status", "notacid"]);
    assert_eq!((code, out.as_str()), (Some(1), ""));
    assert!(err.starts_with("error parsing cid"), "{err}");
    let (code, _, err) = c(&["status", "--filter", "bogus"]);
    assert_eq!(code, Some(1));
    assert_eq!(err, "error parsing filter flag: invalid filter name\n");

    // health bandwidth: the REST route and ctl agree (one peer: nothing sent).
    let bw: Value = get_json(&format!("{}/health/bandwidth", peer.rest()));
    assert!(bw.is_object(), "{bw}");
    let (code, out, _) = c(&["--enc", "json", "health", "bandwidth"]);
    assert_eq!(code, Some(0));
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), bw);

    // health metrics: upstream's line per metric.
    let (code, out, _) = c(&["health", "metrics", "ping"]);
    assert_eq!(code, Some(0));
    for line in out.lines() {
        assert!(
            line.starts_with(&format!("{} | ping: ", peer.peer_id()))
                && line.contains(" | Expires in: ")
                && line.ends_with("from now"),
            "{out}"
        );
    }
    peer.stop();
}

#[test]
fn ctl_fails_over_only_when_a_host_does_not_answer() {
    let dead = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let failing = format!("/ip4/127.0.0.1/tcp/{}", failing_api("first says no"));
    // Nothing answers: upstream's block with code 0, exit 1.
    let (code, out, _) = ctl(&["--host", &dead, "id"]);
    assert_eq!(code, Some(1));
    assert!(
        out.starts_with("An error occurred:\n  Code: 0\n  Message: "),
        "{out}"
    );
    let (code, out, _) = ctl(&["--enc", "json", "--host", &dead, "id"]);
    assert_eq!(code, Some(1));
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["code"], 0);
    // An unreachable host is skipped; an answer, even an error, is final.
    let (code, out, _) = ctl(&["--host", &format!("{dead},{failing}"), "version"]);
    assert_eq!(code, Some(2), "{out}");
    assert_eq!(
        out,
        "An error occurred:\n  Code: 500\n  Message: first says no\n"
    );
    // A host that is no API address: the command line's error, exit 1.
    let (code, out, err) = ctl(&["--host", "/ip4/127.0.0.1/udp/9094", "id"]);
    assert_eq!((code, out.as_str()), (Some(1), ""));
    assert!(err.starts_with("error creating API client: "), "{err}");
    // Upstream's libp2p-http endpoint is not spoken: said so, exit 1.
    let (code, _, err) = ctl(&["--host", &dead, "--secret", "ab", "id"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("libp2p-http"), "{err}");
    let (code, out, _) = ctl(&["--host", &format!("{failing},{dead}"), "version"]);
    assert_eq!(
        (code, out.contains("first says no")),
        (Some(2), true),
        "{out}"
    );
}

#[test]
fn ctl_lists_upstreams_commands_and_keeps_help_narrow() {
    let (code, out, _) = ctl(&["commands"]);
    assert_eq!(code, Some(0));
    let want = [
        "id",
        "peers",
        "peers ls",
        "peers rm",
        "add",
        "pin",
        "pin add",
        "pin rm",
        "pin update",
        "pin ls",
        "status",
        "recover",
        "version",
        "health",
        "health graph",
        "health metrics",
        "health alerts",
        "health bandwidth",
        "ipfs",
        "ipfs gc",
        "commands",
        "help, h",
    ]
    .map(|c| format!("ipfs-cluster-ctl {c}\n"))
    .concat();
    assert_eq!(out, want);
    // `h` is help; every command's help fits in 120 columns.
    let (code, out, _) = ctl(&["h", "pin", "add"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("Usage: ipfs-cluster-ctl pin add"), "{out}");
    let (code, _, err) = ctl(&["help", "nosuchcommand"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("nosuchcommand"), "{err}");
    // Usage errors exit 1 too: 2 is kept for the API's errors.
    let (code, _, err) = ctl(&["pin", "add"]);
    assert_eq!(code, Some(1), "{err}");
    let (code, out, _) = ctl(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("Usage: ipfs-cluster-ctl"), "{out}");
    for line in want.lines().filter(|l| !l.contains(", h")) {
        let path: Vec<&str> = line.split(' ').skip(1).collect();
        let mut args = vec!["help"];
        args.extend(path);
        let (code, out, err) = ctl(&args);
        assert_eq!(code, Some(0), "{line}: {err}");
        for l in out.lines() {
            assert!(l.chars().count() <= 120, "{line}: {l}");
        }
    }
}

#[test]
fn add_format_car_imports_through_the_daemon_and_pins_the_root() {
    // A CAR exported by one daemon, added through a peer in front of another:
    // that daemon is offline, so it can pin the root only if the import worked.
    let source = Daemon::start();
    let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    let root = add_bytes(&source.api(), "big.bin", data);
    let car = http()
        .post(format!("{}/dag/export?arg={root}", source.api()))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert!(car.len() > 600_000, "{}", car.len());
    let files = tempfile::tempdir().unwrap();
    let car_path = files.path().join("big.car");
    std::fs::write(&car_path, &car).unwrap();
    let car_arg = car_path.to_string_lossy().to_string();

    let target = Daemon::start();
    let cfg = tempfile::tempdir().unwrap();
    let mut peer = PeerProc::init(cfg.path(), &target.multiaddr());
    peer.start();
    let host = peer.rest_multiaddr();

    // Wrapping a CAR is refused by ctl, as upstream's.
    let (code, _, err) = ctl(&["--host", &host, "add", "--format", "car", "-w", &car_arg]);
    assert_eq!(code, Some(1));
    assert!(err.contains("only a single CAR file can be added"), "{err}");
    // Not a CAR: the API says why.
    let not_car = files.path().join("plain.txt");
    std::fs::write(&not_car, b"hello").unwrap();
    let (code, out, _) = ctl(&[
        "--host",
        &host,
        "add",
        "--format",
        "car",
        &not_car.to_string_lossy(),
    ]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("Code: 400") && out.contains("not a CAR file"),
        "{out}"
    );

    let (code, out, err) = ctl(&[
        "--host",
        &host,
        "add",
        "--format",
        "car",
        "--name",
        "from-car",
        "--wait",
        "--wait-timeout",
        "60s",
        &car_arg,
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    // The root under the root's CID version as the daemon exported it.
    let cid = out
        .strip_prefix("added ")
        .and_then(|l| l.strip_suffix(" big.car\n"))
        .unwrap_or_else(|| panic!("{out}"));
    let same = |a: &str, b: &str| {
        cid::Cid::try_from(a).unwrap().hash() == cid::Cid::try_from(b).unwrap().hash()
    };
    assert!(same(cid, &root), "{cid} vs {root}");
    let pin: Value = get_json(&format!("{}/allocations/{cid}", peer.rest()));
    assert_eq!(pin["name"], "from-car");

    // On a terminal, a plain add shows its upload progress on stderr, and the
    // output line still arrives whole.
    let big = files.path().join("big.bin");
    let data: Vec<u8> = (0..20_000_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(&big, data).unwrap();
    let cmd = format!("{} --host {host} add {}", ctl_bin(), big.display());
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(tty.contains("% ") && tty.contains(" / 20 MB"), "{tty:?}");
    // The bar is redrawn after a carriage return and an erase-line sequence.
    assert!(
        tty.split(['\r', '\n'])
            .map(|l| l.trim_start_matches("\u{1b}[2K"))
            .any(|l| l.starts_with("added ") && l.ends_with(" big.bin")),
        "{tty:?}"
    );
    let ls: Value = http()
        .post(format!("{}/pin/ls?arg={cid}&type=recursive", target.api()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        ls["Keys"].as_object().is_some_and(|k| !k.is_empty()),
        "{ls}"
    );
    peer.stop();
}
