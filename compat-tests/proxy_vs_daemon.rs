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
    answer(
        http()
            .post(format!("{base}{path}"))
            .send()
            .expect("request"),
    )
}

fn answer(r: reqwest::blocking::Response) -> Answer {
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
/// Sends a multipart upload of `files` (name, bytes) to `path`.
fn upload(base: &str, path: &str, files: &[(&str, &[u8])]) -> Answer {
    let mut form = reqwest::blocking::multipart::Form::new();
    for (name, data) in files {
        let part = reqwest::blocking::multipart::Part::bytes(data.to_vec())
            .file_name(name.to_string())
            .mime_str("application/octet-stream")
            .unwrap();
        form = form.part("file", part);
    }
    answer(
        http()
            .post(format!("{base}{path}"))
            .multipart(form)
            .send()
            .expect("upload"),
    )
}

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
    // A 3-peer cluster, each peer before its own daemon; the comparison is with
    // the daemon behind the first peer.
    let mut c = cluster::start_cluster(3);
    let (direct, proxy) = (c.daemons[0].api(), c.peers[0].proxy());

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
        let mut a = send(&direct, &path);
        let mut b = send(&proxy, &path);
        if path.starts_with("/get?") {
            // js-ipfs stamps a file without an mtime with the time of the call:
            // two calls a second apart differ there (and in the header checksum).
            for body in [&mut a.body, &mut b.body] {
                let mut bytes = std::mem::take(body).into_bytes();
                clear_tar_times(&mut bytes);
                *body = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
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
    // add, in the forms applications use: the daemon's output comes through the
    // proxy unchanged (the proxy adds with pin=false and pins in the cluster).
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    for path in [
        "/add",
        "/add?progress=true",
        "/add?raw-leaves=true",
        "/add?cid-version=1",
        "/add?trickle=true",
        "/add?wrap-with-directory=true",
        "/add?pin=false",
    ] {
        let files: [(&str, &[u8]); 2] = [("one.bin", &big), ("two.txt", b"two\n")];
        let files = if path.contains("wrap") {
            &files[..]
        } else {
            &files[..1]
        };
        let a = upload(&direct, path, files);
        let b = upload(&proxy, path, files);
        assert_same(path, &a, &b);
    }
    // Reads of what was added, and other pass-through calls.
    let wrapped = upload(
        &direct,
        "/add?wrap-with-directory=true",
        &[("inner.txt", b"inner\n")],
    );
    let dir = normalise(&wrapped.body).as_array().unwrap().last().unwrap()["Hash"]
        .as_str()
        .unwrap()
        .to_string();
    let dag = upload(&direct, "/dag/put", &[("node.json", br#"{"compat":true}"#)]);
    let dag_cid = normalise(&dag.body)[0]["Cid"]["/"]
        .as_str()
        .unwrap()
        .to_string();
    for path in [
        format!("/get?arg={cid}"),
        format!("/ls?arg={dir}"),
        format!("/refs?arg={dir}&recursive=true"),
        format!("/dag/get?arg={dag_cid}"),
        format!("/block/stat?arg={dag_cid}"),
    ] {
        let mut a = send(&direct, &path);
        let mut b = send(&proxy, &path);
        if path.starts_with("/get?") {
            // js-ipfs stamps a file without an mtime with the time of the call:
            // two calls a second apart differ there (and in the header checksum).
            for body in [&mut a.body, &mut b.body] {
                let mut bytes = std::mem::take(body).into_bytes();
                clear_tar_times(&mut bytes);
                *body = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        assert_eq!(a.body, b.body, "{path}: body must be byte-identical");
        assert_same(&path, &a, &b);
    }
    for (path, data) in [
        ("/block/put?format=raw", &b"compat block"[..]),
        ("/dag/put", &br#"{"compat":"again"}"#[..]),
    ] {
        assert_same(
            path,
            &upload(&direct, path, &[("x", data)]),
            &upload(&proxy, path, &[("x", data)]),
        );
    }
    // The path forms of pin/add and pin/ls, and direct pins.
    let f = add_bytes(&direct, "f.txt", b"path forms\n".to_vec());
    assert_same(
        "pin/add/<arg>",
        &send(&direct, &format!("/pin/add?arg={f}")),
        &send(&proxy, &format!("/pin/add/{f}")),
    );
    assert_same(
        "pin/ls/<arg>",
        &send(&direct, &format!("/pin/ls?arg={f}")),
        &send(&proxy, &format!("/pin/ls/{f}")),
    );
    let d = add_bytes(&direct, "d.txt", b"direct\n".to_vec());
    assert_same(
        "pin/add direct",
        &send(&direct, &format!("/pin/add?arg={d}&recursive=false")),
        &send(&proxy, &format!("/pin/add?arg={d}&recursive=false")),
    );
    assert_same(
        "pin/ls type=direct",
        &send(&direct, "/pin/ls?type=direct"),
        &send(&proxy, "/pin/ls?type=direct"),
    );
    // Errors: a missing pin.
    let absent = add_bytes(&direct, "absent.txt", b"absent\n".to_vec());
    assert_same(
        "pin/ls of an unpinned CID",
        &send(&direct, &format!("/pin/ls?arg={absent}")),
        &send(&proxy, &format!("/pin/ls?arg={absent}")),
    );

    let rm_proxy = send(&proxy, &format!("/pin/rm?arg={cid}"));
    assert_eq!(rm_proxy.status, 200);
    assert_eq!(
        normalise(&rm_proxy.body),
        normalise(&format!("{{\"Pins\":[\"{cid}\"]}}"))
    );
    // After the proxy's pin/rm neither lists the pin. (The full lists differ by now:
    // adds made directly pinned on the daemon only, and js-ipfs prints CIDv1 in
    // base58btc where kubo and the cluster use base32.)
    for base in [&direct, &proxy] {
        let ls = send(base, "/pin/ls?type=recursive");
        assert!(!ls.body.contains(&cid), "{base}: {cid} still listed");
    }
    assert_same(
        "pin/ls of the removed pin",
        &send(&direct, &format!("/pin/ls?arg={cid}")),
        &send(&proxy, &format!("/pin/ls?arg={cid}")),
    );
    // Intentional differences: the proxy answers as kubo, the test daemon is js-ipfs.
    let differences = [
        ("pin/rm of an unpinned CID", format!("/pin/rm?arg={absent}")),
        ("pin/add of a bad path", "/pin/add?arg=notacid".to_string()),
        ("pin/add without arg", "/pin/add".to_string()),
        ("repo/stat", "/repo/stat?size-only=true".to_string()),
        ("pin/update", format!("/pin/update?arg={f}&arg={d}")),
    ];
    eprintln!("intentional differences (proxy answers as kubo; see compat-tests/README.md):");
    for (what, path) in differences {
        let a = send(&direct, &path);
        let b = send(&proxy, &path);
        eprintln!(
            "  {what}: daemon {} {} | proxy {} {}",
            a.status,
            a.body.trim(),
            b.status,
            b.body.trim()
        );
        assert_eq!(b.content_type, "application/json", "{what}");
    }
    // Headers over the limit: 431 from the proxy (js-ipfs accepts them).
    let big_header = "x".repeat(5000);
    assert_eq!(
        status(
            http()
                .post(format!("{proxy}/version"))
                .header("x-big", &big_header)
        ),
        431
    );
    // repo/gc through the proxy streams kubo's key objects.
    let gc = send(&proxy, "/repo/gc");
    assert_eq!(gc.status, 200);
    for line in normalise(&gc.body).as_array().unwrap() {
        assert!(line["Key"]["/"].is_string(), "{line}");
    }
    for p in c.peers.iter_mut() {
        p.stop();
    }
}

/// Zeroes the mtime and checksum fields of every header of a tar stream whose
/// entries are at most one block long (the one file `/get` returns here).
fn clear_tar_times(tar: &mut [u8]) {
    const BLOCK: usize = 512;
    let mut at = 0;
    while at + BLOCK <= tar.len() {
        let header = &mut tar[at..at + BLOCK];
        if header.iter().all(|b| *b == 0) {
            break;
        }
        // The entry's size, octal, at bytes 124..136.
        let size = std::str::from_utf8(&header[124..136])
            .ok()
            .and_then(|s| {
                u64::from_str_radix(s.trim_matches(|c: char| c == '\0' || c == ' '), 8).ok()
            })
            .unwrap_or(0) as usize;
        header[136..156].fill(0);
        at += BLOCK + size.div_ceil(BLOCK) * BLOCK;
    }
}
