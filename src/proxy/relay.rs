//! `add`, `block/put` and `dag/put`: the request streams through to the daemon
//! (told not to pin), its answer streams back unchanged while the CIDs it reports
//! are noted, and once it ends those CIDs are pinned in the cluster. A pin failure
//! after the answer began goes into the `X-Stream-Error` trailer.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use super::{ClientConn, Proxy, ProxyBody};
use crate::http::{channel_body, stream_error_value};
use crate::types::{Cid, PinOptions};

/// Which CIDs of the daemon's answer become cluster pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinWhat {
    /// The root: the last entry that has a `Hash` (`add`).
    LastHash,
    /// Every `Key` (`block/put`).
    EveryKey,
    /// Every `Cid` link (`dag/put`).
    EveryCidLink,
}

/// A daemon's answer line that names a CID for `what`.
fn cid_of(line: &[u8], what: PinWhat) -> Option<String> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let s = match what {
        PinWhat::LastHash => v.get("Hash")?.as_str()?,
        PinWhat::EveryKey => v.get("Key")?.as_str()?,
        PinWhat::EveryCidLink => v.get("Cid")?.get("/")?.as_str()?,
    };
    Some(s.to_string())
}

/// Lines longer than this are not answer objects (nothing to note in them).
const MAX_LINE: usize = 64 * 1024;

/// Replaces (or adds) `pin=false` in a path-and-query.
pub fn without_pin(path: &str, pairs: &[(String, String)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(k, _)| k != "pin") {
        q.append_pair(k, v);
    }
    q.append_pair("pin", "false");
    format!("{path}?{}", q.finish())
}

impl Proxy {
    /// Relays `req` to the daemon without pinning there, then pins in the cluster.
    pub async fn relay_and_pin(
        &self,
        req: Request<Incoming>,
        client: &Arc<ClientConn>,
        pairs: Vec<(String, String)>,
        what: PinWhat,
        pin: Option<PinOptions>,
    ) -> Response<ProxyBody> {
        let path = req.uri().path().to_string();
        let resp = self
            .upstream
            .forward_with(req, client, Some(without_pin(&path, &pairs)))
            .await;
        let Some(opts) = pin else { return resp };
        if !resp.status().is_success() {
            return resp;
        }
        let (mut parts, mut body) = resp.into_parts();
        // Our pin errors arrive after the body: declare the trailer, and send the
        // body chunked (not with the daemon's length), so that it ends only once
        // the pins are committed.
        parts
            .headers
            .insert("trailer", HeaderValue::from_static("X-Stream-Error"));
        parts.headers.remove(http::header::CONTENT_LENGTH);
        let (tx, out) = channel_body();
        let (cluster, cancel) = (self.cluster.clone(), self.cancel.clone());
        self.tasks.spawn(async move {
            let mut line = Vec::new();
            let mut cids: Vec<String> = Vec::new();
            let mut trailers = HeaderMap::new();
            let mut failed = None;
            let note = |line: &[u8], cids: &mut Vec<String>| {
                if let Some(c) = cid_of(line, what) {
                    if what == PinWhat::LastHash {
                        cids.clear();
                    }
                    cids.push(c);
                }
            };
            loop {
                let frame = tokio::select! {
                    f = body.frame() => f,
                    _ = cancel.cancelled() => {
                        failed = Some("the peer is shutting down".to_string());
                        break;
                    }
                };
                let frame = match frame {
                    None => break,
                    Some(Err(e)) => {
                        failed = Some(format!("reading the daemon's answer: {e}"));
                        break;
                    }
                    Some(Ok(f)) => f,
                };
                let data = match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            trailers.extend(t);
                        }
                        continue;
                    }
                };
                for chunk in data_lines(&data) {
                    match chunk {
                        Piece::Part(p) => {
                            if line.len() + p.len() <= MAX_LINE {
                                line.extend_from_slice(p);
                            }
                        }
                        Piece::End => {
                            note(&line, &mut cids);
                            line.clear();
                        }
                    }
                }
                if !tx.send(data).await {
                    return; // the client went away; nothing is pinned then
                }
            }
            note(&line, &mut cids);
            let daemon_failed = trailers
                .get("x-stream-error")
                .is_some_and(|v| !v.is_empty());
            if failed.is_none() && !daemon_failed {
                for c in &cids {
                    let res = match c.parse::<Cid>() {
                        Ok(cid) => cluster
                            .pin(cid, opts.clone())
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(e) = res {
                        failed = Some(format!("cluster pin of {c}: {e}"));
                        break;
                    }
                }
            }
            if let Some(msg) = failed {
                trailers.insert("x-stream-error", stream_error_value(&msg));
            }
            tx.trailers(trailers).await;
        });
        Response::from_parts(parts, ProxyBody::Local(out))
    }
}

enum Piece<'a> {
    Part(&'a [u8]),
    End,
}

/// Splits a chunk into line parts and line ends.
fn data_lines(data: &Bytes) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest: &[u8] = data;
    while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
        out.push(Piece::Part(&rest[..pos]));
        out.push(Piece::End);
        rest = &rest[pos + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Part(rest));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_the_right_cids() {
        let add =
            br#"{"Name":"a","Hash":"QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG","Size":"4"}"#;
        assert!(cid_of(add, PinWhat::LastHash).is_some());
        assert!(cid_of(br#"{"Name":"a","Bytes":262144}"#, PinWhat::LastHash).is_none());
        assert!(cid_of(br#"{"Key":"bafkqaaa","Size":0}"#, PinWhat::EveryKey).is_some());
        assert!(cid_of(br#"{"Cid":{"/":"bafyabc"}}"#, PinWhat::EveryCidLink).is_some());
        assert_eq!(
            without_pin(
                "/api/v0/add",
                &[
                    ("pin".into(), "true".into()),
                    ("wrap-with-directory".into(), "true".into())
                ]
            ),
            "/api/v0/add?wrap-with-directory=true&pin=false"
        );
    }
}
