//! The reverse proxy for every call the cluster does not intercept: request and
//! response bodies stream through untouched, trailers included.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::error::{ErrorCode, kubo_error};
use crate::http::Body;

/// A pooled HTTP/1 client to the daemon.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Incoming>,
    authority: String,
    multiaddr: String,
    auth: UpstreamAuth,
}

/// What `Authorization` the daemon gets on forwarded requests.
#[derive(Clone, Debug, Default)]
pub struct UpstreamAuth {
    /// The daemon's own credentials (the IPFS connector's, for the same node),
    /// sent in place of the client's.
    pub daemon: Option<HeaderValue>,
    /// The proxy checked the client's credentials itself: they were meant for
    /// the proxy and go no further.
    pub drop_client: bool,
}

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named.iter().chain(HOP_BY_HOP.iter()) {
        h.remove(n);
    }
}

/// How long a connection to the daemon may take to open (as the connector's).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The connector to the daemon: no Nagle delay, and a bounded connect, as a
/// daemon host that drops SYNs would otherwise hold each call for the kernel's
/// full SYN retry time (minutes).
fn daemon_connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector
}

impl Upstream {
    /// A client of the daemon at `authority` (`host:port`), named `multiaddr` in errors.
    pub fn new(authority: String, multiaddr: String, auth: UpstreamAuth) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .pool_max_idle_per_host(32)
            .build(daemon_connector());
        Upstream {
            client,
            authority,
            multiaddr,
            auth,
        }
    }

    /// The daemon's `host:port`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Forwards `req` to the daemon and streams its answer back.
    pub async fn forward(&self, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
        self.forward_with(req, remote, None).await
    }

    /// Forwards `req` with its path and query replaced by `pq`, when given.
    pub async fn forward_with(
        &self,
        mut req: Request<Incoming>,
        remote: SocketAddr,
        pq: Option<String>,
    ) -> Response<Body> {
        let pq = pq.unwrap_or_else(|| {
            req.uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .to_string()
        });
        let uri: Uri = match format!("http://{}{pq}", self.authority).parse() {
            Ok(u) => u,
            Err(e) => {
                return kubo_error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::Client,
                    &format!("invalid request URI: {e}"),
                );
            }
        };
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        if let Some(a) = &self.auth.daemon {
            headers.insert(header::AUTHORIZATION, a.clone());
        } else if self.auth.drop_client {
            headers.remove(header::AUTHORIZATION);
        }
        if let Ok(v) = HeaderValue::from_str(&self.authority) {
            headers.insert(header::HOST, v);
        }
        // Without `TE: trailers` upstream, hyper would drop the daemon's
        // X-Stream-Error trailer when relaying to clients that asked for it.
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {}", remote.ip()),
            None => remote.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
        match self.client.request(req).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                let trailer_decl = parts.headers.get(header::TRAILER).cloned();
                strip_hop_by_hop(&mut parts.headers);
                // The declaration of trailers is end-to-end information for clients
                // that read `X-Stream-Error`: keep it.
                if let Some(t) = trailer_decl {
                    parts.headers.insert(header::TRAILER, t);
                }
                Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
            }
            Err(e) => {
                let reason = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.to_string());
                kubo_error(
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::Normal,
                    &format!(
                        "cannot reach the IPFS daemon at {}: {reason}",
                        self.multiaddr
                    ),
                )
            }
        }
    }
}

#[cfg(test)]
mod connect_timeout_tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn a_daemon_that_never_accepts_fails_after_the_connect_timeout() {
        // A listener whose accept queue is full and never drained: the kernel
        // drops further SYNs, as a blackholed host does.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = sock.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        loop {
            match tokio::time::timeout(
                Duration::from_millis(300),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                Ok(Ok(s)) => held.push(s),
                _ => break,
            }
            assert!(held.len() < 64, "the accept queue never filled");
        }
        let client = Client::builder(TokioExecutor::new())
            .build::<_, http_body_util::Empty<bytes::Bytes>>(daemon_connector());
        let started = Instant::now();
        let req = Request::post(format!("http://{addr}/api/v0/version"))
            .body(http_body_util::Empty::new())
            .unwrap();
        let r = tokio::time::timeout(CONNECT_TIMEOUT * 4, client.request(req)).await;
        let elapsed = started.elapsed();
        let err = r
            .expect("no answer within 4x the connect timeout")
            .unwrap_err();
        assert!(err.is_connect(), "{err:?}");
        assert!(
            elapsed >= CONNECT_TIMEOUT - Duration::from_millis(100)
                && elapsed < CONNECT_TIMEOUT * 2,
            "{elapsed:?}"
        );
        drop(listener);
    }
}
