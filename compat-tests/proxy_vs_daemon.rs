//! Compatibility: the same requests sent to the real daemon directly and through
//! the proxy must get the same status, content type and body, normalised only where
//! the values must differ (each normalisation says why).

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;

struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

fn send(base: &str, path: &str) -> Answer {
    let r = http()
        .post(format!("{base}{path}"))
        .send()
        .expect("request");
    Answer {
        status: r.status().as_u16(),
        content_type: r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body: r.text().expect("body"),
    }
}

/// Parses JSON bodies so that key order and a trailing newline do not count.
fn normalise(body: &str) -> serde_json::Value {
    let lines: Vec<serde_json::Value> = body
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|_| serde_json::Value::String(l.to_string()))
        })
        .collect();
    serde_json::Value::Array(lines)
}

fn assert_same(label: &str, direct: &Answer, proxied: &Answer) {
    assert_eq!(direct.status, proxied.status, "{label}: status");
    // kubo and js-ipfs send `application/json; charset=utf-8` or `application/json`;
    // only the media type matters to clients.
    let media = |c: &str| c.split(';').next().unwrap_or_default().trim().to_string();
    assert_eq!(
        media(&direct.content_type),
        media(&proxied.content_type),
        "{label}: content type"
    );
    assert_eq!(
        normalise(&direct.body),
        normalise(&proxied.body),
        "{label}: body"
    );
}

#[test]
fn proxy_answers_like_the_daemon() {
    let d = Daemon::start();
    let cfg = tempfile::tempdir().unwrap();
    let mut peer = PeerProc::init(cfg.path(), &d.multiaddr());
    peer.start();
    let (direct, proxy) = (d.api(), peer.proxy());

    let cid = add_bytes(&direct, "compat.txt", b"compatibility\n".to_vec());
    // Pass-through calls: byte-for-byte the daemon's answers.
    for path in [
        "/id".to_string(),
        "/version".to_string(),
        format!("/cat?arg={cid}"),
        format!("/block/stat?arg={cid}"),
        format!("/block/get?arg={cid}"),
        "/nonexistent".to_string(),
        "/cat?arg=notacid".to_string(),
        "/swarm/peers".to_string(),
    ] {
        let a = send(&direct, &path);
        let b = send(&proxy, &path);
        assert_eq!(a.body, b.body, "{path}: body must be byte-identical");
        assert_same(&path, &a, &b);
    }

    // Intercepted calls: the cluster pins, then the daemon's and the cluster's
    // pin lists must agree. pin/add goes first through the proxy (which pins on the
    // daemon too), so both sides answer about the same pinset.
    let add_proxy = send(&proxy, &format!("/pin/add?arg={cid}"));
    let add_direct = send(&direct, &format!("/pin/add?arg={cid}"));
    assert_same("pin/add", &add_direct, &add_proxy);
    for path in [
        "/pin/ls?type=recursive".to_string(),
        format!("/pin/ls?arg={cid}"),
        format!("/pin/ls?arg={cid}&stream=true"),
        "/pin/ls?type=direct".to_string(),
    ] {
        assert_same(&path, &send(&direct, &path), &send(&proxy, &path));
    }
    let rm_proxy = send(&proxy, &format!("/pin/rm?arg={cid}"));
    assert_eq!(rm_proxy.status, 200);
    assert_eq!(
        normalise(&rm_proxy.body),
        normalise(&format!("{{\"Pins\":[\"{cid}\"]}}"))
    );
    // After the proxy's pin/rm the daemon no longer has the pin either.
    assert_same(
        "pin/ls after rm",
        &send(&direct, "/pin/ls?type=recursive"),
        &send(&proxy, "/pin/ls?type=recursive"),
    );
    peer.stop();
}
