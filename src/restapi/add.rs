//! `POST /add`: a multipart upload streamed through this peer's daemon (told
//! not to pin), its output turned into upstream's `AddedOutput` objects as it
//! flows, and the root then pinned in the cluster with the request's options.

use futures::TryStreamExt;
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyDataStream;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::{RestApi, cluster_error, error, ndjson_response};
use crate::http::{Body, channel_body, parse_bool, stream_error_trailer};
use crate::types::{Cid, PinOptions};

/// Upstream's `AddedOutput`: one added file or directory, or progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AddedOutput {
    /// The file's name (path inside the upload).
    pub name: String,
    /// Its CID, once added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<Cid>,
    /// Bytes read so far (progress objects only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes: u64,
    /// The DAG's size.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// The peers the root was allocated to (on the root, once pinned).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocations: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One object of kubo's `add` output.
#[derive(Deserialize)]
struct KuboAdded {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Hash", default)]
    hash: Option<String>,
    #[serde(rename = "Bytes", default)]
    bytes: u64,
    /// kubo sends a string; js-ipfs a number.
    #[serde(rename = "Size", default)]
    size: Option<serde_json::Value>,
}

impl KuboAdded {
    fn output(self) -> Result<AddedOutput, String> {
        let cid = match self.hash {
            Some(h) => Some(
                h.parse::<Cid>()
                    .map_err(|e| format!("daemon output: {e}"))?,
            ),
            None => None,
        };
        Ok(AddedOutput {
            name: self.name,
            cid,
            bytes: self.bytes,
            size: match self.size {
                Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0),
                Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
                _ => 0,
            },
            allocations: Vec::new(),
        })
    }
}

/// Upstream's add parameters, as kubo's `add` names them (`format=car` goes to
/// `dag/import` instead). Sharding is refused rather than silently ignored.
fn daemon_query(q: &[(String, String)]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (k, v) in q {
        match k.as_str() {
            "layout" => match v.as_str() {
                "" | "balanced" => {}
                "trickle" => out.push(("trickle".into(), "true".into())),
                other => return Err(format!("unknown layout {other:?}")),
            },
            "format" if !matches!(v.as_str(), "" | "unixfs" | "car") => {
                return Err(format!("format {v:?} is not supported by this peer"));
            }
            "shard" if parse_bool(v).unwrap_or(false) => {
                return Err("sharding is not supported".into());
            }
            "chunker"
            | "raw-leaves"
            | "cid-version"
            | "hash"
            | "wrap-with-directory"
            | "hidden"
            | "progress"
            | "nocopy"
            | "trickle" => out.push((k.clone(), v.clone())),
            _ => {}
        }
    }
    Ok(out)
}

impl RestApi {
    /// `POST /add`.
    pub(super) async fn add(
        &self,
        req: Request<Incoming>,
        q: &[(String, String)],
    ) -> Response<Body> {
        let flag = |k: &str| {
            q.iter()
                .any(|(key, v)| key == k && parse_bool(v).unwrap_or(v.is_empty()))
        };
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !content_type.starts_with("multipart/form-data") {
            return error(
                StatusCode::BAD_REQUEST,
                "error reading request: the request is not multipart/form-data",
            );
        }
        let daemon_q = match daemon_query(q) {
            Ok(d) => d,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        let mut opts = match PinOptions::from_query(q) {
            Ok(o) => o,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        // The blocks land on this peer's daemon: with `local`, as upstream, this
        // peer is the first choice for the pin too.
        if flag("local") {
            let me = self.cluster.peer_id().to_string();
            opts.user_allocations.retain(|p| *p != me);
            opts.user_allocations.insert(0, me);
        }
        let pin = !flag("no-pin");
        let streaming = q
            .iter()
            .find(|(k, _)| k == "stream-channels")
            .is_none_or(|(_, v)| parse_bool(v).unwrap_or(true));
        if q.iter().any(|(k, v)| k == "format" && v == "car") {
            if flag("wrap-with-directory") {
                return error(StatusCode::BAD_REQUEST, "cannot wrap a CAR file upload");
            }
            return self.add_car(req, &content_type, opts, pin, streaming).await;
        }
        let upload = reqwest::Body::wrap_stream(
            BodyDataStream::new(req.into_body()).map_err(std::io::Error::other),
        );
        let mut reader = match self
            .cluster
            .ipfs()
            .add(&daemon_q, &content_type, upload)
            .await
        {
            Ok(r) => r,
            Err(e) => return cluster_error(e.into()),
        };
        let (tx, body) = channel_body();
        let (cluster, cancel) = (self.cluster.clone(), self.cancel.clone());
        let task = async move {
            // The root is the last object with a CID: each such object waits
            // until the next arrives, and the last one until its pin is done.
            let mut pending: Option<AddedOutput> = None;
            let mut all = Vec::new();
            let mut err = String::new();
            loop {
                let next = tokio::select! {
                    n = reader.next_line() => n,
                    _ = cancel.cancelled() => {
                        err = "the peer is shutting down".into();
                        break;
                    }
                };
                let line = match next {
                    Ok(Some(l)) => l,
                    Ok(None) => break,
                    Err(e) => {
                        err = format!("reading the daemon's answer: {e}");
                        break;
                    }
                };
                let out = match serde_json::from_slice::<KuboAdded>(&line)
                    .map_err(|e| format!("daemon output: {e}"))
                    .and_then(KuboAdded::output)
                {
                    Ok(o) => o,
                    Err(e) => {
                        err = e;
                        break;
                    }
                };
                let ready = if out.cid.is_some() {
                    pending.replace(out)
                } else {
                    Some(out)
                };
                if let Some(o) = ready {
                    if !streaming {
                        all.push(o);
                    } else if !tx.send_json(&o).await {
                        return;
                    }
                }
            }
            if let Some(mut root) = pending.take() {
                if err.is_empty()
                    && pin
                    && let Some(cid) = root.cid
                {
                    match cluster.pin(cid, opts).await {
                        Ok((p, _)) => root.allocations = p.allocations,
                        Err(e) => err = format!("cluster pin of {cid}: {e}"),
                    }
                }
                if !streaming {
                    all.push(root);
                } else if !tx.send_json(&root).await {
                    return;
                }
            }
            if !streaming && !tx.send_json(&all).await {
                return;
            }
            tx.trailers(stream_error_trailer(&err)).await;
        };
        self.tasks.spawn(task);
        if streaming {
            ndjson_response(body)
        } else {
            let mut r = Response::new(body);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::pairs;

    #[test]
    fn upstream_add_parameters_become_kubos() {
        let q = daemon_query(&pairs(&[
            ("layout", "trickle"),
            ("cid-version", "1"),
            ("raw-leaves", "true"),
            ("name", "pinname"),
            ("replication-min", "2"),
            ("wrap-with-directory", "true"),
        ]))
        .unwrap();
        assert_eq!(
            q,
            pairs(&[
                ("trickle", "true"),
                ("cid-version", "1"),
                ("raw-leaves", "true"),
                ("wrap-with-directory", "true"),
            ])
        );
        assert!(daemon_query(&pairs(&[("format", "tar")])).is_err());
        assert!(daemon_query(&pairs(&[("shard", "true")])).is_err());
        assert!(daemon_query(&pairs(&[("layout", "zigzag")])).is_err());
    }

    #[test]
    fn kubo_objects_become_added_outputs() {
        let k: KuboAdded = serde_json::from_str(
            r#"{"Name":"a.txt","Hash":"QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG","Size":"12"}"#,
        )
        .unwrap();
        let v = serde_json::to_value(k.output().unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"name":"a.txt","cid":"QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG","size":12})
        );
        let k: KuboAdded = serde_json::from_str(r#"{"Name":"a.txt","Size":12}"#).unwrap();
        assert_eq!(k.output().unwrap().size, 12);
        let k: KuboAdded = serde_json::from_str(r#"{"Name":"a.txt","Bytes":262144}"#).unwrap();
        let v = serde_json::to_value(k.output().unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"name":"a.txt","bytes":262144}));
    }
}
