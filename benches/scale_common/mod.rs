//! What the scale benchmarks share: the pins they use and a kubo-shaped fake
//! daemon that holds them all.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use ipfs_cluster::http::{Body, ServerOptions, channel_body, full, query_pairs};
use std::io::Write;
use std::path::Path;

use ipfs_cluster::types::{Cid, Pin, PinOptions};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Runs `ipfs-cluster-service` (`bin`) with `args` to its end; how long it
/// took. Panics with its stderr when it fails.
pub fn run(bin: impl AsRef<Path>, args: &[&str]) -> Duration {
    let bin = bin.as_ref();
    let t = std::time::Instant::now();
    let out = std::process::Command::new(bin)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run ipfs-cluster-service");
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

/// The CID of pin `i`: CIDv1, raw, sha2-256, the digest carrying `i`.
pub fn cid_of(i: u64) -> Cid {
    let mut b = vec![0x01, 0x55, 0x12, 0x20];
    b.extend_from_slice(&i.to_be_bytes());
    b.extend_from_slice(&[0xab; 24]);
    Cid::from_bytes(&b).expect("a valid CID")
}

/// The index of a CID made by [`cid_of`].
pub fn index_of(cid: &Cid) -> Option<u64> {
    let b = cid.to_bytes();
    if b.len() != 36 || b[..4] != [0x01, 0x55, 0x12, 0x20] || b[12..] != [0xab; 24] {
        return None;
    }
    Some(u64::from_be_bytes(b[4..12].try_into().ok()?))
}

fn json_response(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

/// A kubo-shaped daemon holding pins 0..n (recursive), answering at once.
pub async fn fake_daemon(
    n: u64,
    port: u16,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> std::net::SocketAddr {
    let listeners = ipfs_cluster::http::bind(&[format!("/ip4/127.0.0.1/tcp/{port}")])
        .await
        .expect("bind the fake daemon");
    let spawner = tasks.clone();
    ipfs_cluster::http::serve(
        "fake daemon",
        listeners,
        move |req, _| {
            let path = req.uri().path().to_string();
            let q = query_pairs(req.uri());
            let spawner = spawner.clone();
            async move {
                let get = |k: &str| q.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
                match path.as_str() {
                    "/api/v0/id" => json_response(
                        StatusCode::OK,
                        r#"{"ID":"12D3KooWScaleFakeDaemon","Addresses":["/ip4/127.0.0.1/tcp/4001"]}"#
                            .into(),
                    ),
                    "/api/v0/version" => {
                        json_response(StatusCode::OK, r#"{"Version":"0.30.0"}"#.into())
                    }
                    "/api/v0/repo/stat" => json_response(
                        StatusCode::OK,
                        r#"{"RepoSize":1000000,"StorageMax":100000000000}"#.into(),
                    ),
                    "/api/v0/swarm/peers" => json_response(StatusCode::OK, r#"{"Peers":[]}"#.into()),
                    "/api/v0/pin/add" | "/api/v0/pin/rm" => {
                        let arg = get("arg").unwrap_or_default();
                        json_response(StatusCode::OK, format!(r#"{{"Pins":["{arg}"]}}"#))
                    }
                    "/api/v0/pin/ls" => {
                        if let Some(arg) = get("arg") {
                            let held = arg
                                .parse::<Cid>()
                                .ok()
                                .and_then(|c| index_of(&c))
                                .is_some_and(|i| i < n);
                            return if held {
                                json_response(
                                    StatusCode::OK,
                                    format!(r#"{{"Keys":{{"{arg}":{{"Type":"recursive"}}}}}}"#),
                                )
                            } else {
                                json_response(
                                    StatusCode::INTERNAL_SERVER_ERROR,
                                    format!(
                                        r#"{{"Message":"path '{arg}' is not pinned","Code":0,"Type":"error"}}"#
                                    ),
                                )
                            };
                        }
                        let count = match get("type").as_deref() {
                            Some("direct") | Some("indirect") => 0,
                            _ => n,
                        };
                        let (tx, body) = channel_body();
                        spawner.spawn(async move {
                            let mut buf = String::with_capacity(70_000);
                            for i in 0..count {
                                buf.push_str(r#"{"Cid":""#);
                                buf.push_str(&cid_of(i).to_string());
                                buf.push_str("\",\"Type\":\"recursive\"}\n");
                                if buf.len() > 64 * 1024
                                    && !tx.send(Bytes::from(std::mem::take(&mut buf))).await
                                {
                                    return;
                                }
                            }
                            if !buf.is_empty() {
                                tx.send(Bytes::from(buf)).await;
                            }
                        });
                        let mut r = Response::new(body);
                        r.headers_mut()
                            .insert("content-type", HeaderValue::from_static("application/json"));
                        r.headers_mut()
                            .insert("x-chunked-output", HeaderValue::from_static("1"));
                        r
                    }
                    _ => json_response(
                        StatusCode::NOT_FOUND,
                        r#"{"Message":"Not Found","Code":3,"Type":"error"}"#.into(),
                    ),
                }
            }
        },
        ServerOptions {
            header_read_timeout: Duration::from_secs(5),
            max_header_bytes: 16 * 1024,
        },
        tasks,
        cancel,
    )
    .pop()
    .expect("the fake daemon listens")
}

/// Writes an upstream-format export (one pin JSON object a line) of pins 0..n.
pub fn write_export(file: &Path, n: u64) {
    let mut w = std::io::BufWriter::new(std::fs::File::create(file).expect("export file"));
    let ts = chrono::DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
        .expect("a date")
        .with_timezone(&chrono::Utc);
    for i in 0..n {
        let mut pin = Pin::new(cid_of(i), PinOptions::default());
        pin.options.replication_factor_min = -1;
        pin.options.replication_factor_max = -1;
        pin.timestamp = ts;
        serde_json::to_writer(&mut w, &pin).expect("write the export");
        w.write_all(b"\n").expect("write the export");
    }
    w.flush().expect("write the export");
}
