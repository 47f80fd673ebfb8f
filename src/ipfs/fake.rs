//! An in-process fake daemon for unit tests and the cluster-side benchmarks
//! (feature `fake-daemon`): just enough of the kubo RPC API (`id`, `version`,
//! `repo/stat`, `swarm/peers`, `pin/add`, `pin/rm`, `pin/ls`, and a streaming
//! `trailers` call) to drive the tracker and the proxy without a real daemon.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::{Body, ServerOptions, channel_body, json, query_pairs};

/// Shared, inspectable state of the fake daemon.
#[derive(Default)]
pub struct FakeState {
    /// CID → "recursive" | "direct".
    pub pins: HashMap<String, String>,
    /// When set, `pin/add` fails with this message.
    pub fail_pins: Option<String>,
    /// CID → message: `pin/add` of that CID fails with it (the whole call,
    /// after the arguments before it were pinned, as kubo's `pin/add` does).
    pub fail_cids: HashMap<String, String>,
    /// How long `pin/add` takes, for each CID.
    pub pin_delay: Duration,
    /// When set, a `pin/add` whose client left goes on to the end, as a
    /// lower cluster's proxy does once it has submitted the pin (by default,
    /// as kubo, the call stops with its client).
    pub finish_abandoned_pins: bool,
    /// `pin/add` and `pin/rm` calls answered, and CIDs they carried.
    pub pin_calls: u64,
    /// CIDs carried by `pin/add` and `pin/rm` calls.
    pub pin_args: u64,
    /// While set, `pin/add`, `pin/rm` and `pin/ls` never answer: a daemon that
    /// hangs. Cleared, the calls waiting go on.
    pub hang_pins: bool,
    /// Calls that met `hang_pins`.
    pub hung_calls: u64,
    /// `pin/ls` calls about one CID (`arg`).
    pub pin_ls_arg_calls: u64,
}

/// A running fake daemon.
pub struct FakeDaemon {
    /// Its address.
    pub addr: SocketAddr,
    /// Its state.
    pub state: Arc<Mutex<FakeState>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl FakeDaemon {
    /// Starts on a free loopback port.
    pub async fn start() -> FakeDaemon {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let listeners = crate::http::bind(&["/ip4/127.0.0.1/tcp/0".to_string()])
            .await
            .expect("bind fake daemon");
        let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
        let st = state.clone();
        // Work a call leaves running (an abandoned pin, a trailer) is tracked
        // with the connections, so that `stop` waits for it too.
        let spawned = tasks.clone();
        let addr = crate::http::serve(
            "fake daemon",
            listeners,
            move |req, _| {
                let (st, spawned) = (st.clone(), spawned.clone());
                async move { handle(st, &spawned, req.uri().path(), query_pairs(req.uri())).await }
            },
            ServerOptions {
                header_read_timeout: Duration::from_secs(5),
                max_header_bytes: 8192,
            },
            &tasks,
            cancel.clone(),
        )
        .pop()
        .expect("the fake daemon listens");
        FakeDaemon {
            addr,
            state,
            cancel,
            tasks,
        }
    }

    /// `/ip4/127.0.0.1/tcp/<port>`.
    pub fn multiaddr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}", self.addr.port())
    }

    /// Stops serving.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

fn err(msg: &str) -> Response<Body> {
    json(
        StatusCode::INTERNAL_SERVER_ERROR,
        &serde_json::json!({"Message": msg, "Code": 0, "Type": "error"}),
    )
}

fn bad_request(msg: &str) -> Response<Body> {
    json(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({"Message": msg, "Code": 1, "Type": "error"}),
    )
}

/// Every `arg` of a call, in order.
fn all_args(q: &[(String, String)]) -> Vec<String> {
    q.iter()
        .filter(|(k, _)| k == "arg")
        .map(|(_, v)| v.clone())
        .collect()
}

async fn handle(
    st: Arc<Mutex<FakeState>>,
    tasks: &TaskTracker,
    path: &str,
    q: Vec<(String, String)>,
) -> Response<Body> {
    let arg = q
        .iter()
        .find(|(k, _)| k == "arg")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let get = |k: &str| q.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let lock = || crate::sync::lock(&st);
    if matches!(
        path,
        "/api/v0/pin/add" | "/api/v0/pin/rm" | "/api/v0/pin/ls"
    ) && lock().hang_pins
    {
        lock().hung_calls += 1;
        while lock().hang_pins {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    match path {
        "/api/v0/id" => json(
            StatusCode::OK,
            &serde_json::json!({"ID": "12D3KooFakeDaemon", "Addresses": []}),
        ),
        "/api/v0/version" => json(
            StatusCode::OK,
            &serde_json::json!({"Version": "0.30.0", "Commit": "fake", "Repo": "16",
                "System": "amd64/linux", "Golang": "go1.22"}),
        ),
        "/api/v0/repo/stat" => {
            let n = lock().pins.len() as u64;
            json(
                StatusCode::OK,
                &serde_json::json!({"RepoSize": n * 1024, "StorageMax": 1u64 << 40,
                    "NumObjects": n, "RepoPath": "/fake", "Version": "fs-repo@16"}),
            )
        }
        "/api/v0/swarm/peers" => json(StatusCode::OK, &serde_json::json!({"Peers": []})),
        // kubo pins (or unpins) the arguments one after the other and fails
        // the whole call at the first that fails, keeping those done before.
        "/api/v0/pin/add" => {
            let args = all_args(&q);
            let t = if get("recursive") == Some("false") {
                "direct"
            } else {
                "recursive"
            };
            {
                let mut s = lock();
                s.pin_calls += 1;
                s.pin_args += args.len() as u64;
            }
            if args.is_empty() {
                return bad_request("argument \"ipfs-path\" is required");
            }
            let st2 = st.clone();
            let work = async move {
                for a in &args {
                    let (delay, fail) = {
                        let s = crate::sync::lock(&st2);
                        let fail = s.fail_pins.clone().or_else(|| s.fail_cids.get(a).cloned());
                        (s.pin_delay, fail)
                    };
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    if let Some(m) = fail {
                        return err(&m);
                    }
                    crate::sync::lock(&st2).pins.insert(a.clone(), t.into());
                }
                json(StatusCode::OK, &serde_json::json!({"Pins": args}))
            };
            if lock().finish_abandoned_pins {
                tasks
                    .spawn(work)
                    .await
                    .unwrap_or_else(|e| err(&format!("pin/add: {e}")))
            } else {
                work.await
            }
        }
        "/api/v0/pin/rm" => {
            let args = all_args(&q);
            let mut s = lock();
            s.pin_calls += 1;
            s.pin_args += args.len() as u64;
            if args.is_empty() {
                return bad_request("argument \"ipfs-path\" is required");
            }
            for a in &args {
                if s.pins.remove(a).is_none() {
                    return err("not pinned or pinned indirectly");
                }
            }
            json(StatusCode::OK, &serde_json::json!({"Pins": args}))
        }
        "/api/v0/pin/ls" => {
            let mut s = lock();
            if !arg.is_empty() {
                s.pin_ls_arg_calls += 1;
                return match s.pins.get(&arg) {
                    Some(t) => json(
                        StatusCode::OK,
                        &serde_json::json!({"Keys": {arg.clone(): {"Type": t}}}),
                    ),
                    None => err(&format!("path '{arg}' is not pinned")),
                };
            }
            let want = get("type").unwrap_or("all");
            let mut out = String::new();
            for (c, t) in s
                .pins
                .iter()
                .filter(|(_, t)| want == "all" || want == t.as_str())
            {
                out.push_str(&serde_json::json!({"Cid": c, "Type": t}).to_string());
                out.push('\n');
            }
            let mut r = Response::new(crate::http::full(out));
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            r
        }
        "/api/v0/trailers" => {
            let (tx, body) = channel_body();
            tasks.spawn(async move {
                tx.send(Bytes::from_static(b"{\"part\":1}\n")).await;
                let mut t = HeaderMap::new();
                // go-ipfs-cmds writes the bare `err.Error()`.
                t.insert("x-stream-error", HeaderValue::from_static("boom: it broke"));
                tx.trailers(t).await;
            });
            let mut r = Response::new(body);
            r.headers_mut()
                .insert("trailer", HeaderValue::from_static("X-Stream-Error"));
            r.headers_mut()
                .insert("x-chunked-output", HeaderValue::from_static("1"));
            r
        }
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"Message": "Not Found", "Code": 3, "Type": "error"}),
        ),
    }
}
