//! Real clients that applications use — the Python `ipfshttpclient`, the JS
//! `kubo-rpc-client` and curl — run their own add → pin → ls → rm flows through the
//! proxy, unmodified (compat-tests/clients/). scripts/compat-clients.sh installs them.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn client_paths() -> (PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/compat-clients.sh"))
        .arg("install")
        .status()
        .expect("install the client libraries");
    assert!(out.success(), "scripts/compat-clients.sh install failed");
    let out = Command::new("bash")
        .arg(root.join("scripts/compat-clients.sh"))
        .arg("paths")
        .output()
        .expect("paths");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(PathBuf::from)
            .expect("path")
    };
    (get("NODE_DIR"), get("PYTHON"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run the client flow");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && stdout.starts_with("ok "),
        "client flow failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn python_js_and_curl_clients_work_through_the_proxy_unmodified() {
    let (node_dir, python) = client_paths();
    let d = Daemon::start();
    let cfg = tempfile::tempdir().unwrap();
    let mut peer = PeerProc::init(cfg.path(), &d.multiaddr());
    peer.start();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("compat-tests/clients");

    let out = run(Command::new(&python)
        .arg(root.join("flow.py"))
        .arg(format!("/ip4/127.0.0.1/tcp/{}/http", peer.proxy_port)));
    eprintln!("ipfshttpclient: {out}");

    let out = run(Command::new("bash")
        .arg(root.join("flow.sh"))
        .arg(format!("http://127.0.0.1:{}/api/v0", peer.proxy_port)));
    eprintln!("curl: {out}");

    // ESM resolves packages next to the script: run a copy beside node_modules.
    let script = node_dir.join("flow.mjs");
    std::fs::copy(root.join("flow.mjs"), &script).unwrap();
    let out = run(Command::new("node")
        .arg(&script)
        .arg(format!("http://127.0.0.1:{}/api/v0", peer.proxy_port)));
    eprintln!("kubo-rpc-client: {out}");
    peer.stop();
}
