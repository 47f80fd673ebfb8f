//! `pin/add`, `pin/rm` and `pin/ls` answered from the cluster, in kubo's shapes.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde::Serialize;

use super::Proxy;
use super::error::{ErrorCode, internal, kubo_error, missing_argument};
use crate::cluster::{ClusterError, OpState, Phase};
use crate::http::{Body, channel_body, parse_bool, stream_error_trailer};
use crate::types::{Cid, Pin, PinMode, PinOptions, RepoGcKey};

/// kubo's not-pinned answer to `pin/rm`; composite clusters rely on it.
const NOT_PINNED: &str = "not pinned or pinned indirectly";
/// kubo's progress interval for `pin/add?progress=true`.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// The decoded query of a kubo call.
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Wraps decoded pairs.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Query { pairs }
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
    fn all(&self, k: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .collect()
    }
    /// A boolean option; a value Go cannot parse is an error as in kubo.
    fn flag(&self, k: &str, default: bool) -> Result<bool, BadOption> {
        match self.get(k) {
            None => Ok(default),
            Some("") => Ok(true),
            Some(v) => parse_bool(v).ok_or_else(|| {
                BadOption(format!(
                    "invalid value {v:?} for option {k:?}: not a boolean"
                ))
            }),
        }
    }
}

/// An option value kubo would refuse.
struct BadOption(String);

impl BadOption {
    fn response(&self) -> Response<Body> {
        kubo_error(StatusCode::BAD_REQUEST, ErrorCode::Client, &self.0)
    }
}

#[derive(Serialize)]
struct PinsOutput<'a> {
    #[serde(rename = "Pins")]
    pins: &'a [String],
}

#[derive(Serialize, Default)]
struct ProgressOutput {
    #[serde(rename = "Progress", skip_serializing_if = "is_zero")]
    progress: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn cluster_error(e: &ClusterError) -> Response<Body> {
    internal(&e.to_string())
}

fn op_failed(op: &OpState) -> Option<String> {
    (op.phase == Phase::Error).then(|| op.error.clone())
}

impl Proxy {
    /// Waits for this peer's operations started by the committed entries; the
    /// first failure becomes the answer.
    async fn wait_here(&self, committed: &[(Cid, u64)], verb: &str) -> Option<Response<Body>> {
        for (cid, index) in committed {
            let op = self.cluster.tracker().wait_operation(cid, *index).await;
            if let Some(err) = op.as_ref().and_then(op_failed) {
                return Some(internal(&format!("{verb} {cid}: {err}")));
            }
        }
        None
    }

    /// Resolves every `arg`, kubo-style; the first failure is the answer.
    async fn cids(&self, args: &[String]) -> Result<Vec<Cid>, Response<Body>> {
        let mut out = Vec::with_capacity(args.len());
        for a in args {
            out.push(
                self.cluster
                    .resolve(a)
                    .await
                    .map_err(|e| cluster_error(&e))?,
            );
        }
        Ok(out)
    }

    /// `pin/add`: commit the pins, then answer once this peer has pinned them.
    pub async fn pin_add(&self, q: Query) -> Response<Body> {
        let args = q.all("arg");
        if args.is_empty() {
            return missing_argument("ipfs-path");
        }
        let (recursive, progress) = match (q.flag("recursive", true), q.flag("progress", false)) {
            (Ok(r), Ok(p)) => (r, p),
            (Err(e), _) | (_, Err(e)) => return e.response(),
        };
        let mode = if !recursive || q.get("type") == Some("direct") {
            PinMode::Direct
        } else {
            PinMode::Recursive
        };
        let cids = match self.cids(&args).await {
            Ok(c) => c,
            Err(resp) => return resp,
        };
        let mut committed = Vec::with_capacity(cids.len());
        for cid in &cids {
            let opts = PinOptions {
                mode,
                name: q.get("name").unwrap_or_default().to_string(),
                ..Default::default()
            };
            match self.cluster.pin(*cid, opts).await {
                // Only this peer's own pin is waited for: a pin allocated elsewhere
                // is answered once committed, as upstream does.
                Ok((pin, c)) if pin.is_allocated_to(self.cluster.peer_id()) => {
                    committed.push((*cid, c.index))
                }
                Ok(_) => {}
                Err(e) => return cluster_error(&e),
            }
        }
        let pins: Vec<String> = cids.iter().map(|c| c.to_string()).collect();
        if !progress {
            if let Some(failed) = self.wait_here(&committed, "pin").await {
                return failed;
            }
            return crate::http::json(StatusCode::OK, &PinsOutput { pins: &pins });
        }
        let (tx, body) = channel_body();
        let this = self.clone();
        self.tasks.spawn(async move {
            let tracker = this.cluster.tracker().clone();
            let wait_all = async {
                for (cid, index) in &committed {
                    if let Some(err) = tracker
                        .wait_operation(cid, *index)
                        .await
                        .as_ref()
                        .and_then(op_failed)
                    {
                        return Err(format!("pin {cid}: {err}"));
                    }
                }
                Ok(())
            };
            tokio::pin!(wait_all);
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            let result = loop {
                tokio::select! {
                    r = &mut wait_all => break r,
                    _ = tick.tick() => {
                        let progress = committed
                            .iter()
                            .filter_map(|(c, _)| tracker.operation(c))
                            .map(|op| op.progress)
                            .sum();
                        if !tx.send_json(&ProgressOutput { progress }).await {
                            return; // the client went away; the pin goes on in the cluster
                        }
                    }
                    _ = this.cancel.cancelled() => break Err("the peer is shutting down".into()),
                }
            };
            match result {
                Ok(()) => {
                    tx.send_json(&PinsOutput { pins: &pins }).await;
                }
                Err(msg) => {
                    tx.trailers(stream_error_trailer(&msg)).await;
                }
            }
        });
        streaming(body)
    }

    /// `pin/update`: the new pin takes the old one's options and allocations.
    pub async fn pin_update(&self, q: Query) -> Response<Body> {
        let args = q.all("arg");
        match args.len() {
            0 => return missing_argument("from-path"),
            1 => return missing_argument("to-path"),
            _ => {}
        }
        let unpin = match q.flag("unpin", true) {
            Ok(u) => u,
            Err(e) => return e.response(),
        };
        let mut cids = Vec::with_capacity(2);
        for (name, a) in [("from-path", &args[0]), ("to-path", &args[1])] {
            match self.cluster.resolve(a).await {
                Ok(c) => cids.push(c),
                Err(e) => return internal(&format!("error parsing \"{name}\" argument: {e}")),
            }
        }
        let (from, to) = (cids[0], cids[1]);
        let committed = match self
            .cluster
            .pin_update(from, to, PinOptions::default(), unpin)
            .await
        {
            Ok((pin, c)) if pin.is_allocated_to(self.cluster.peer_id()) => vec![(to, c.index)],
            Ok(_) => Vec::new(),
            Err(e) => return cluster_error(&e),
        };
        if let Some(failed) = self.wait_here(&committed, "pin").await {
            return failed;
        }
        let pins = [from.to_string(), to.to_string()];
        crate::http::json(StatusCode::OK, &PinsOutput { pins: &pins })
    }

    /// `repo/gc`: every peer's daemon collects; the removed keys stream as kubo
    /// sends them, errors inline with `stream-errors=true`, else joined in the trailer.
    pub async fn repo_gc(&self, q: Query) -> Response<Body> {
        let stream_errors = match q.flag("stream-errors", false) {
            Ok(s) => s,
            Err(e) => return e.response(),
        };
        let quiet = q.flag("quiet", false).unwrap_or(false);
        let results = self.cluster.repo_gc(false).await;
        let (tx, body) = channel_body();
        self.tasks.spawn(async move {
            let mut trailer_errors = String::new();
            for gc in results {
                let (removed, mut errors): (Vec<_>, Vec<_>) =
                    gc.keys.into_iter().partition(|k| k.error.is_empty());
                if !quiet {
                    for k in removed {
                        let line = serde_json::json!({ "Key": { "/": k.key } });
                        if !tx.send_json(&line).await {
                            return;
                        }
                    }
                }
                if !gc.error.is_empty() {
                    errors.push(RepoGcKey {
                        key: String::new(),
                        error: gc.error,
                    });
                }
                for e in errors {
                    let msg = format!("{}: {}", gc.peer, e.error);
                    if stream_errors {
                        if !tx.send_json(&serde_json::json!({ "Error": msg })).await {
                            return;
                        }
                    } else {
                        trailer_errors.push_str(&msg);
                        trailer_errors.push_str("; ");
                    }
                }
            }
            let t = if trailer_errors.is_empty() {
                HeaderMap::new()
            } else {
                stream_error_trailer(&trailer_errors)
            };
            tx.trailers(t).await;
        });
        streaming(body)
    }

    /// `repo/stat`: the repositories of every peer's daemon, summed.
    pub async fn repo_stat(&self) -> Response<Body> {
        #[derive(Serialize)]
        struct RepoStat {
            #[serde(rename = "RepoSize")]
            repo_size: u64,
            #[serde(rename = "StorageMax")]
            storage_max: u64,
        }
        let (repo_size, storage_max) = self.cluster.repo_stat().await;
        crate::http::json(
            StatusCode::OK,
            &RepoStat {
                repo_size,
                storage_max,
            },
        )
    }

    /// `pin/rm`: unpin from the cluster; a CID not in the pinset gets kubo's answer.
    pub async fn pin_rm(&self, q: Query) -> Response<Body> {
        let args = q.all("arg");
        if args.is_empty() {
            return missing_argument("ipfs-path");
        }
        let cids = match self.cids(&args).await {
            Ok(c) => c,
            Err(resp) => return resp,
        };
        let mut committed = Vec::with_capacity(cids.len());
        for cid in &cids {
            match self.cluster.unpin(*cid).await {
                Ok((_, c)) => committed.push((*cid, c.index)),
                Err(ClusterError::NotFound) => return internal(NOT_PINNED),
                Err(e) => return cluster_error(&e),
            }
        }
        if let Some(failed) = self.wait_here(&committed, "unpin").await {
            return failed;
        }
        let pins: Vec<String> = cids.iter().map(|c| c.to_string()).collect();
        crate::http::json(StatusCode::OK, &PinsOutput { pins: &pins })
    }

    /// `pin/ls`: the cluster pinset, as kubo lists pins.
    pub async fn pin_ls(&self, q: Query) -> Response<Body> {
        let type_filter = q.get("type").unwrap_or("all").to_string();
        if !matches!(
            type_filter.as_str(),
            "all" | "direct" | "indirect" | "recursive"
        ) {
            return internal(&format!(
                "invalid type '{type_filter}', must be one of {{direct, indirect, recursive, all}}"
            ));
        }
        let (stream, names) = match (q.flag("stream", false), q.flag("names", false)) {
            (Ok(s), Ok(n)) => (s, n),
            (Err(e), _) | (_, Err(e)) => return e.response(),
        };
        let scan_filter = type_filter.clone();
        let wanted = move |p: &Pin| type_filter == "all" || type_filter == p.mode().as_str();
        let args = q.all("arg");
        let ls = PinLsWriter {
            stream,
            names,
            first: true,
        };
        let (head, tail): (&[u8], &[u8]) = if stream {
            (b"", b"")
        } else {
            (b"{\"Keys\":{", b"}}\n")
        };
        if !args.is_empty() {
            let mut found = Vec::with_capacity(args.len());
            for a in &args {
                let cid = match self.cluster.resolve(a).await {
                    Ok(c) => c,
                    Err(e) => return cluster_error(&e),
                };
                match self.cluster.pin_get(&cid).await {
                    Ok(p) if wanted(&p) => found.push(p),
                    Ok(_) | Err(ClusterError::NotFound) => {
                        return internal(&format!("path '{a}' is not pinned"));
                    }
                    Err(e) => return cluster_error(&e),
                }
            }
            let mut ls = ls;
            let mut out = head.to_vec();
            for p in &found {
                ls.render(p, &mut out);
            }
            out.extend_from_slice(tail);
            let (tx, body) = channel_body();
            self.tasks.spawn(async move {
                if tx.send(out).await {
                    tx.trailers(HeaderMap::new()).await;
                }
            });
            return streaming(body);
        }
        let state = self.cluster.consensus().state();
        if let Err(e) = crate::listing::any_pin(state).await {
            return internal(&e);
        }
        let mut ls = ls;
        let body = crate::listing::write_scan(
            &self.tasks,
            self.cancel.clone(),
            state,
            head,
            tail,
            crate::listing::Trailer::OnError,
            move |cid, value, out| {
                let (depth, name) = crate::state::codec::read_depth_and_name(value)
                    .map_err(|e| crate::state::StateError::Corrupt(e.to_string()))?;
                let mode = if depth == 0 {
                    PinMode::Direct
                } else {
                    PinMode::Recursive
                };
                if scan_filter == "all" || scan_filter == mode.as_str() {
                    ls.render_raw(cid, &name, mode, out)
                        .map_err(|e| crate::state::StateError::Corrupt(e.to_string()))?;
                }
                Ok(())
            },
        );
        streaming(body)
    }
}

/// Renders pins as kubo's `pin/ls` does.
struct PinLsWriter {
    stream: bool,
    names: bool,
    /// No entry written yet (the non-stream form separates entries with commas).
    first: bool,
}

impl PinLsWriter {
    /// Appends `pin` as one `pin/ls` entry.
    fn render(&mut self, pin: &Pin, out: &mut Vec<u8>) {
        // A CID's own bytes always print.
        let _ = self.render_raw(&pin.cid.to_bytes(), &pin.options.name, pin.mode(), out);
    }

    /// Appends one `pin/ls` entry from the CID's binary form: `{"Cid":…,"Name":…,
    /// "Type":…}` a line when streaming, else `"cid":{"Name":…,"Type":…}` entries
    /// of one object, commas between (Name only with `names` and when not empty).
    fn render_raw(
        &mut self,
        cid: &[u8],
        name: &str,
        mode: PinMode,
        out: &mut Vec<u8>,
    ) -> Result<(), crate::types::CidError> {
        use crate::listing::json;
        if self.stream {
            out.extend_from_slice(b"{\"Cid\":\"");
            json::cid_text(out, cid)?;
            out.extend_from_slice(b"\",");
        } else {
            if !self.first {
                out.push(b',');
            }
            out.push(b'"');
            json::cid_text(out, cid)?;
            out.extend_from_slice(b"\":{");
        }
        if self.names && !name.is_empty() {
            out.extend_from_slice(b"\"Name\":");
            json::str(out, name);
            out.push(b',');
        }
        out.extend_from_slice(b"\"Type\":\"");
        out.extend_from_slice(mode.as_str().as_bytes());
        out.extend_from_slice(if self.stream { b"\"}\n" } else { b"\"}" });
        self.first = false;
        Ok(())
    }
}

/// A 200 response streaming `body`, with kubo's streaming headers.
fn streaming(body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("x-chunked-output", HeaderValue::from_static("1"));
    h.insert("trailer", HeaderValue::from_static("X-Stream-Error"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pin/ls` entries are kubo's shapes, as serde_json writes them: one object a
    /// line when streaming, one `Keys` object otherwise; Name only when asked for
    /// and set (escaped); CIDv0 and CIDv1 printed as `cid` prints them.
    #[test]
    fn pin_ls_entries_have_kubos_shapes() {
        let v0: Cid = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"
            .parse()
            .unwrap();
        let v1: Cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
            .parse()
            .unwrap();
        let mut a = Pin::new(v0, PinOptions::default());
        a.options.name = "a \"name\"\n".into();
        let mut b = Pin::new(v1, PinOptions::default());
        b.max_depth = 0;
        for (stream, names) in [(true, true), (true, false), (false, true), (false, false)] {
            let mut ls = PinLsWriter {
                stream,
                names,
                first: true,
            };
            let mut out = Vec::new();
            for p in [&a, &b] {
                ls.render(p, &mut out);
            }
            let entry = |p: &Pin| {
                let mut m = serde_json::Map::new();
                if names && !p.options.name.is_empty() {
                    m.insert("Name".into(), p.options.name.clone().into());
                }
                m.insert("Type".into(), p.mode().as_str().into());
                m
            };
            let want = if stream {
                let mut s = String::new();
                for p in [&a, &b] {
                    let mut m = serde_json::Map::new();
                    m.insert("Cid".into(), p.cid.to_string().into());
                    m.extend(entry(p));
                    s.push_str(&serde_json::to_string(&m).unwrap());
                    s.push('\n');
                }
                s
            } else {
                let mut s = String::new();
                for (i, p) in [&a, &b].iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    s.push_str(&serde_json::to_string(&p.cid.to_string()).unwrap());
                    s.push(':');
                    s.push_str(&serde_json::to_string(&entry(p)).unwrap());
                }
                s
            };
            assert_eq!(String::from_utf8(out).unwrap(), want, "{stream} {names}");
        }
    }
}
