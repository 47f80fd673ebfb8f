//! `POST /add?format=car`: one CAR (v1) file with a single root, imported through
//! the daemon's `dag/import` (told not to pin) and its root pinned in the cluster,
//! as upstream's CAR adder does block by block.
//!
//! The daemon reports roots only when it pins them, so the root comes from the
//! CAR header, read from the start of the upload before it is passed on.

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::BodyDataStream;
use hyper::body::Incoming;
use serde::Deserialize;

use super::{AddedOutput, RestApi, cluster_error, error};
use crate::http::{Body, json};
use crate::types::{Cid, PinOptions};

/// How much of the upload may be read to find the file's name and CAR header.
const MAX_PREFIX: usize = 64 * 1024;

/// What the start of the upload says.
#[derive(Debug, PartialEq)]
struct CarStart {
    /// The file's name in the upload.
    name: String,
    /// The CAR's single root.
    root: Cid,
}

/// The first part's file name and CAR root from the start of a multipart body;
/// `Ok(None)` when more bytes are needed.
fn parse_start(prefix: &[u8], boundary: &str) -> Result<Option<CarStart>, String> {
    let delim = format!("--{boundary}");
    let Some(start) = find(prefix, delim.as_bytes()) else {
        return Ok(None);
    };
    let rest = &prefix[start + delim.len()..];
    let Some(head_end) = find(rest, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&rest[..head_end]);
    let name = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
        .and_then(|l| {
            let i = l.find("filename=\"")? + "filename=\"".len();
            let end = l[i..].find('"')?;
            Some(l[i..i + end].to_string())
        })
        .map(|n| {
            // kubo's clients escape names as URL path segments.
            url::form_urlencoded::parse(format!("n={}", n.replace('+', "%2B")).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or(n)
        })
        .unwrap_or_default();
    let car = &rest[head_end + 4..];
    match car_root(car)? {
        Some(root) => Ok(Some(CarStart { name, root })),
        None => Ok(None),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The single root of a CAR v1 header (a varint length, then dag-cbor
/// `{"roots": [CID], "version": 1}`); `Ok(None)` when `car` is cut short.
fn car_root(car: &[u8]) -> Result<Option<Cid>, String> {
    let mut len: u64 = 0;
    let mut at = 0;
    loop {
        let Some(b) = car.get(at) else {
            return Ok(None);
        };
        len |= u64::from(b & 0x7f) << (7 * at);
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        if at >= 9 {
            return Err("not a CAR file: bad header length".into());
        }
    }
    let len = usize::try_from(len).map_err(|_| "not a CAR file: header too long")?;
    if len > MAX_PREFIX {
        return Err("not a CAR file: header too long".into());
    }
    let Some(header) = car.get(at..at + len) else {
        return Ok(None);
    };
    let v: ciborium::Value =
        ciborium::from_reader(header).map_err(|e| format!("not a CAR file: header: {e}"))?;
    let field = |k: &str| {
        v.as_map()?
            .iter()
            .find(|(key, _)| key.as_text() == Some(k))
            .map(|(_, v)| v)
    };
    // go-car v0, which upstream reads CARs with, knows version 1 only.
    if field("version").and_then(|v| v.as_integer()) != Some(1u8.into()) {
        return Err("only CAR version 1 files are supported".into());
    }
    let roots = field("roots")
        .and_then(|r| r.as_array())
        .ok_or("not a CAR file: no roots")?;
    let [root] = roots.as_slice() else {
        return Err("only CAR files with a single root are supported".into());
    };
    // A dag-cbor link: tag 42 over the CID bytes behind a 0x00 prefix.
    let bytes = match root {
        ciborium::Value::Tag(42, b) => b.as_bytes(),
        _ => None,
    }
    .and_then(|b| b.strip_prefix(&[0u8]))
    .ok_or("not a CAR file: a root is not a CID")?;
    Cid::from_bytes(bytes)
        .map(Some)
        .map_err(|e| format!("not a CAR file: root: {e}"))
}

/// The daemon's `dag/import` objects this reads: kubo's block statistics.
#[derive(Deserialize)]
struct ImportLine {
    #[serde(rename = "Stats")]
    stats: Option<ImportStats>,
}

#[derive(Deserialize)]
struct ImportStats {
    #[serde(rename = "BlockBytesCount", default)]
    block_bytes: u64,
}

impl RestApi {
    /// `POST /add?format=car`.
    pub(super) async fn add_car(
        &self,
        req: Request<Incoming>,
        content_type: &str,
        opts: PinOptions,
        pin: bool,
        streaming: bool,
    ) -> Response<Body> {
        let Some(boundary) = content_type
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("boundary="))
            .map(|b| b.trim_matches('"').to_string())
            .next()
        else {
            return error(
                StatusCode::BAD_REQUEST,
                "error reading request: no multipart boundary",
            );
        };
        let mut body = BodyDataStream::new(req.into_body());
        let mut prefix = BytesMut::new();
        let start = loop {
            match parse_start(&prefix, &boundary) {
                Ok(Some(s)) => break s,
                Ok(None) if prefix.len() < MAX_PREFIX => {}
                Ok(None) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "not a CAR file: no CAR header at the start of the upload",
                    );
                }
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            }
            match body.next().await {
                Some(Ok(chunk)) => prefix.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("error reading request: {e}"),
                    );
                }
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "not a CAR file: the upload ends before the CAR header",
                    );
                }
            }
        };
        let first: Bytes = prefix.freeze();
        let upload = reqwest::Body::wrap_stream(
            futures::stream::once(async move { Ok::<_, std::io::Error>(first) })
                .chain(body.map_err(std::io::Error::other)),
        );
        let mut reader = match self.cluster.ipfs().dag_import(content_type, upload).await {
            Ok(r) => r,
            Err(e) => return cluster_error(e.into()),
        };
        // One output only: the import and the pin run before the answer, so that
        // their errors are answers with a status, not a trailer.
        let mut out = AddedOutput {
            name: start.name,
            cid: Some(start.root),
            ..Default::default()
        };
        loop {
            let next = tokio::select! {
                n = reader.next_line() => n,
                _ = self.cancel.cancelled() => {
                    return error(StatusCode::SERVICE_UNAVAILABLE, "the peer is shutting down");
                }
            };
            match next {
                Ok(Some(line)) => {
                    if let Ok(ImportLine { stats: Some(s) }) = serde_json::from_slice(&line) {
                        out.bytes = s.block_bytes;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("importing the CAR file: {e}"),
                    );
                }
            }
        }
        if pin {
            match self.cluster.pin(start.root, opts).await {
                Ok((p, _)) => out.allocations = p.allocations,
                Err(e) => return cluster_error(e),
            }
        }
        if streaming {
            json(StatusCode::OK, &out)
        } else {
            json(StatusCode::OK, &[&out])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CAR v1 header with `roots`, as go-car writes it.
    fn header(roots: &[&cid::Cid], version: u8) -> Vec<u8> {
        let roots = roots
            .iter()
            .map(|c| {
                let mut b = vec![0u8];
                b.extend(c.to_bytes());
                ciborium::Value::Tag(42, Box::new(ciborium::Value::Bytes(b)))
            })
            .collect();
        let v = ciborium::Value::Map(vec![
            ("roots".into(), ciborium::Value::Array(roots)),
            ("version".into(), ciborium::Value::Integer(version.into())),
        ]);
        let mut h = Vec::new();
        ciborium::into_writer(&v, &mut h).unwrap();
        let mut out = vec![u8::try_from(h.len()).unwrap()];
        out.extend(h);
        out
    }

    fn upload(car: &[u8]) -> Vec<u8> {
        let mut b = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"my%20dag.car\"\r\n\
            Content-Type: application/octet-stream\r\n\r\n"
            .to_vec();
        b.extend_from_slice(car);
        b.extend_from_slice(b"blocks...");
        b
    }

    #[test]
    fn the_root_and_name_come_from_the_start_of_the_upload() {
        let root: cid::Cid = "bafkqablqnfxc2mi".parse().unwrap();
        let body = upload(&header(&[&root], 1));
        let want = CarStart {
            name: "my dag.car".into(),
            root: Cid(root),
        };
        assert_eq!(parse_start(&body, "XyZ").unwrap(), Some(want));
        // Cut anywhere before the header ends: more bytes are needed.
        for cut in [0, 10, body.len() - 12] {
            assert_eq!(parse_start(&body[..cut], "XyZ").unwrap(), None, "{cut}");
        }
    }

    #[test]
    fn cars_upstream_cannot_add_are_refused() {
        let a: cid::Cid = "bafkqablqnfxc2mi".parse().unwrap();
        let b: cid::Cid = "bafkqablqnfxc2mq".parse().unwrap();
        let two = upload(&header(&[&a, &b], 1));
        assert_eq!(
            parse_start(&two, "XyZ").unwrap_err(),
            "only CAR files with a single root are supported"
        );
        let v2 = upload(&header(&[&a], 2));
        assert!(parse_start(&v2, "XyZ").unwrap_err().contains("version 1"));
        let junk = upload(&[5, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert!(
            parse_start(&junk, "XyZ")
                .unwrap_err()
                .starts_with("not a CAR file")
        );
    }
}
