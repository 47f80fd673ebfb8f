//! The native REST API (upstream's `/id`, `/version`, `/allocations`, `/pins`, …),
//! with upstream's JSON, NDJSON streams and `{"code","message"}` errors.

mod add;
mod auth;
mod car;
pub mod client;
mod cors;
pub mod tls;
pub mod upload;

pub use add::AddedOutput;

use std::net::SocketAddr;

use futures::StreamExt;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{Cluster, ClusterError};
use crate::config::RestApiConfig;
use crate::http::{
    Body, ServerOptions, channel_body, empty, json, query_pairs, stream_error_trailer,
};
use crate::types::{ApiError, Cid, GlobalRepoGc, PinOptions, TrackerStatusFilter, Version};

/// Why the REST API could not start.
#[derive(Debug, thiserror::Error)]
pub enum RestApiError {
    /// A listener could not be bound.
    #[error("rest api: {0}")]
    Io(#[from] std::io::Error),
    /// `ssl_cert_file`/`ssl_key_file` could not be used.
    #[error("rest api: {0}")]
    Tls(#[from] tls::TlsError),
}

/// The REST API's request state.
#[derive(Clone)]
pub struct RestApi {
    cluster: Cluster,
    credentials: Option<std::sync::Arc<auth::Credentials>>,
    cors: std::sync::Arc<cors::Cors>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json(
        status,
        &ApiError {
            code: status.as_u16(),
            message: message.into(),
        },
    )
}

fn cluster_error(e: ClusterError) -> Response<Body> {
    let status = match &e {
        ClusterError::NotFound => StatusCode::NOT_FOUND,
        ClusterError::InvalidArgument(_) | ClusterError::InvalidPath(_) => StatusCode::BAD_REQUEST,
        ClusterError::Conflict { .. } => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// A CID from a route; a bad one is a 400 whose message is returned.
fn parse_cid(s: &str) -> Result<Cid, String> {
    s.parse::<Cid>()
        .map_err(|e| format!("error decoding Cid: {e}"))
}

fn bad_request(message: String) -> Response<Body> {
    error(StatusCode::BAD_REQUEST, message)
}

impl RestApi {
    /// Binds the listeners and serves until `cancel`, over TLS when the config
    /// names a certificate (its files relative to `config_dir`).
    pub async fn start(
        cfg: &RestApiConfig,
        config_dir: &std::path::Path,
        cluster: Cluster,
        tasks: &TaskTracker,
        cancel: CancellationToken,
    ) -> Result<Vec<SocketAddr>, RestApiError> {
        // The config checks that both files or neither are given.
        let tls = match (&cfg.ssl_cert_file, &cfg.ssl_key_file) {
            (Some(cert), Some(key)) => {
                let cert = tls::resolve(config_dir, cert);
                let key = tls::resolve(config_dir, key);
                Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
                    &cert, &key,
                )?))
            }
            _ => None,
        };
        let listeners = crate::http::bind(&cfg.http_listen_multiaddress.0).await?;
        let api = RestApi {
            cluster,
            credentials: cfg.basic_auth_credentials.clone().map(std::sync::Arc::new),
            cors: std::sync::Arc::new(cors::Cors::new(cfg)),
            tasks: tasks.clone(),
            cancel: cancel.clone(),
        };
        let opts = ServerOptions {
            header_read_timeout: cfg.read_header_timeout.0,
            max_header_bytes: cfg.max_header_bytes,
        };
        let addrs = crate::http::serve_tls(
            "rest api",
            listeners,
            tls,
            move |req, _remote| {
                let a = api.clone();
                async move { a.handle(req).await }
            },
            opts,
            tasks,
            cancel,
        );
        Ok(addrs)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        // Preflights carry no credentials: answered before authentication.
        if let Some(r) = self.cors.preflight(req.method(), req.headers()) {
            return r;
        }
        let (method, origin) = (
            req.method().clone(),
            req.headers().get(header::ORIGIN).cloned(),
        );
        let mut resp = self.route(req).await;
        self.cors
            .decorate(&method, origin.as_ref(), resp.headers_mut());
        resp
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let open_route = method == Method::GET && path == "/health";
        let user = match &self.credentials {
            Some(creds) => auth::user(req.headers(), creds),
            None => None,
        };
        if !open_route && self.credentials.is_some() && user.is_none() {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized: invalid credentials",
            );
            for realm in ["Basic", "Bearer"] {
                if let Ok(v) =
                    HeaderValue::from_str(&format!("{realm} realm=\"Restricted IPFS Cluster API\""))
                {
                    r.headers_mut().append(header::WWW_AUTHENTICATE, v);
                }
            }
            return r;
        }
        let q = query_pairs(req.uri());
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (&method, segs.as_slice()) {
            (&Method::GET, ["id"]) => json(StatusCode::OK, &self.cluster.id().await),
            (&Method::GET, ["version"]) => json(
                StatusCode::OK,
                &Version {
                    version: crate::VERSION.into(),
                },
            ),
            (&Method::GET, ["health"]) => no_content(),
            (&Method::GET, ["monitor", "metrics"]) => {
                json(StatusCode::OK, &self.cluster.monitor().names())
            }
            (&Method::GET, ["monitor", "metrics", name]) => {
                json(StatusCode::OK, &self.cluster.monitor().latest(name))
            }
            (&Method::GET, ["health", "graph"]) => {
                json(StatusCode::OK, &self.cluster.connect_graph().await)
            }
            (&Method::GET, ["health", "alerts"]) => {
                json(StatusCode::OK, &self.cluster.monitor().alerts())
            }
            (&Method::POST, ["add"]) => self.add(req, &q).await,
            (&Method::POST, ["token"]) => self.token(user.as_deref()),
            (&Method::POST, ["ipfs", "gc"]) => {
                let peer_map = self
                    .cluster
                    .repo_gc(is_local(&q))
                    .await
                    .into_iter()
                    .map(|gc| (gc.peer.clone(), gc))
                    .collect();
                json(StatusCode::OK, &GlobalRepoGc { peer_map })
            }
            (&Method::GET, ["raft"]) => json(StatusCode::OK, &self.cluster.consensus().info()),
            (&Method::GET, ["peers"]) => {
                let peers = self.cluster.peers().await;
                stream_ndjson(
                    &self.tasks,
                    futures::stream::iter(peers.into_iter().map(Ok)),
                )
            }
            (&Method::DELETE, ["peers", peer]) => match self.cluster.peer_remove(peer).await {
                Ok(()) => no_content(),
                Err(e) => cluster_error(e),
            },
            (&Method::GET, ["allocations"]) => match pin_type_filter(&q) {
                Ok(true) => self.allocations().await,
                Ok(false) => no_content(),
                Err(m) => bad_request(m),
            },
            (&Method::GET, ["health", "bandwidth"]) => {
                json(StatusCode::OK, &self.cluster.bandwidth())
            }
            (&Method::GET, ["allocations", cid]) => match parse_cid(cid) {
                Ok(c) => match self.cluster.pin_get(&c).await {
                    Ok(p) => json(StatusCode::OK, &p),
                    Err(e) => cluster_error(e),
                },
                Err(m) => bad_request(m),
            },
            (&Method::GET, ["pins"]) => self.status_all(&q).await,
            (&Method::GET, ["pins", cid]) => match parse_cid(cid) {
                Ok(c) => {
                    let res = self.cluster.status(&c, is_local(&q)).await;
                    match res {
                        Ok(g) => json(StatusCode::OK, &g),
                        Err(e) => cluster_error(e),
                    }
                }
                Err(m) => bad_request(m),
            },
            (&Method::POST, ["pins", "recover"]) => {
                match self.cluster.recover_all(is_local(&q)).await {
                    Ok(v) if v.is_empty() => no_content(),
                    Ok(v) => {
                        stream_ndjson(&self.tasks, futures::stream::iter(v.into_iter().map(Ok)))
                    }
                    Err(e) => cluster_error(e),
                }
            }
            (&Method::POST, ["pins", cid, "recover"]) => match parse_cid(cid) {
                Ok(c) => match self.cluster.recover(&c, is_local(&q)).await {
                    Ok(g) => json(StatusCode::OK, &g),
                    Err(e) => cluster_error(e),
                },
                Err(m) => bad_request(m),
            },
            (&Method::POST, ["pins", ns @ ("ipfs" | "ipns" | "ipld"), rest @ ..])
                if !rest.is_empty() =>
            {
                let p = format!("/{ns}/{}", rest.join("/"));
                match self.cluster.resolve(&p).await {
                    Ok(c) => self.pin(c, &q).await,
                    Err(e) => cluster_error(e),
                }
            }
            (&Method::POST, ["pins", cid]) => match parse_cid(cid) {
                Ok(c) => self.pin(c, &q).await,
                Err(m) => bad_request(m),
            },
            (&Method::DELETE, ["pins", ns @ ("ipfs" | "ipns" | "ipld"), rest @ ..])
                if !rest.is_empty() =>
            {
                let p = format!("/{ns}/{}", rest.join("/"));
                match self.cluster.resolve(&p).await {
                    Ok(c) => self.unpin(c).await,
                    Err(e) => cluster_error(e),
                }
            }
            (&Method::DELETE, ["pins", cid]) => match parse_cid(cid) {
                Ok(c) => self.unpin(c).await,
                Err(m) => bad_request(m),
            },
            _ => error(StatusCode::NOT_FOUND, "not found"),
        }
    }

    /// `POST /token`: a bearer token for the authenticated user.
    fn token(&self, user: Option<&str>) -> Response<Body> {
        #[derive(Serialize)]
        struct Token {
            token: String,
        }
        let (Some(user), Some(creds)) = (user, &self.credentials) else {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized: tokens need basic_auth_credentials to be configured",
            );
        };
        match creds.get(user).and_then(|pass| auth::issue(user, pass)) {
            Some(token) => json(StatusCode::OK, &Token { token }),
            None => error(StatusCode::INTERNAL_SERVER_ERROR, "could not sign a token"),
        }
    }

    async fn pin(&self, cid: Cid, q: &[(String, String)]) -> Response<Body> {
        let opts = match PinOptions::from_query(q) {
            Ok(o) => o,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        match self.cluster.pin(cid, opts).await {
            Ok((pin, _)) => json(StatusCode::OK, &pin),
            Err(e) => cluster_error(e),
        }
    }

    async fn unpin(&self, cid: Cid) -> Response<Body> {
        match self.cluster.unpin(cid).await {
            Ok((pin, _)) => json(StatusCode::OK, &pin),
            Err(e) => cluster_error(e),
        }
    }

    /// `GET /allocations`: the pinset as NDJSON, read in batches and written in
    /// large frames.
    async fn allocations(&self) -> Response<Body> {
        let state = self.cluster.consensus().state();
        match crate::listing::any_pin(state).await {
            Ok(true) => {}
            Ok(false) => return no_content(),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
        let body = crate::listing::write_scan(
            &self.tasks,
            self.cancel.clone(),
            state,
            b"",
            b"",
            crate::listing::Trailer::Always,
            crate::listing::pin_line,
        );
        ndjson_response(body)
    }

    async fn status_all(&self, q: &[(String, String)]) -> Response<Body> {
        let get = |k: &str| q.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        let filter: TrackerStatusFilter = match get("filter").unwrap_or("").parse() {
            Ok(f) => f,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        if let Some(cids) = get("cids").filter(|c| !c.is_empty()) {
            let mut out = Vec::new();
            for c in cids.split(',') {
                let cid = match parse_cid(c.trim()) {
                    Ok(c) => c,
                    Err(m) => return bad_request(m),
                };
                let res = self.cluster.status(&cid, is_local(q)).await;
                match res {
                    Ok(g) => {
                        if g.peer_map.values().any(|p| filter.matches(p.status)) {
                            out.push(Ok(g));
                        }
                    }
                    Err(e) => return cluster_error(e),
                }
            }
            if out.is_empty() {
                return no_content();
            }
            return stream_ndjson(&self.tasks, futures::stream::iter(out));
        }
        // Chunks are rendered as they come; the answer starts with the first line
        // that passes the filter (none at all: 204).
        let mut rx = self.cluster.status_pages(is_local(q), &self.tasks);
        let mut first = Vec::new();
        while first.is_empty() {
            match rx.recv().await {
                None => return no_content(),
                Some(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
                Some(Ok(chunk)) => chunk.render(filter, &mut first),
            }
        }
        let (tx, body) = channel_body();
        self.tasks.spawn(async move {
            let mut buf = first;
            let mut err = String::new();
            loop {
                if buf.len() >= crate::http::FRAME_BYTES {
                    let frame = std::mem::take(&mut buf);
                    if !tx.send(frame).await {
                        return;
                    }
                }
                match rx.recv().await {
                    None => break,
                    Some(Ok(chunk)) => chunk.render(filter, &mut buf),
                    Some(Err(e)) => {
                        err = e;
                        break;
                    }
                }
            }
            if !buf.is_empty() && !tx.send(buf).await {
                return;
            }
            tx.trailers(stream_error_trailer(&err)).await;
        });
        ndjson_response(body)
    }
}

/// Whether `?filter=` (upstream's comma-separated pin types) takes in data pins,
/// the only type this peer makes; a filter of nothing but unknown names is a 400.
fn pin_type_filter(q: &[(String, String)]) -> Result<bool, String> {
    let Some((_, f)) = q.iter().find(|(k, _)| k == "filter") else {
        return Ok(true);
    };
    let (mut data, mut known) = (false, false);
    for t in f.split(',') {
        match t {
            "" | "all" | "pin" => (data, known) = (true, true),
            "meta-pin" | "clusterdag-pin" | "shard-pin" => known = true,
            _ => {}
        }
    }
    if known {
        Ok(data)
    } else {
        Err("invalid filter value".into())
    }
}

/// `?local=true`.
fn is_local(q: &[(String, String)]) -> bool {
    q.iter()
        .any(|(k, v)| k == "local" && crate::http::parse_bool(v).unwrap_or(false))
}

fn no_content() -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// Streams items as NDJSON; an error after the first item goes into the
/// `X-Stream-Error` trailer, as upstream does.
fn stream_ndjson<T, S>(tasks: &TaskTracker, items: S) -> Response<Body>
where
    T: Serialize + Send + Sync + 'static,
    S: futures::Stream<Item = Result<T, String>> + Send + 'static,
{
    let (tx, body) = channel_body();
    tasks.spawn(async move {
        let mut err = String::new();
        let mut items = std::pin::pin!(items);
        while let Some(item) = items.next().await {
            match item {
                Ok(v) => {
                    if !tx.send_json(&v).await {
                        return;
                    }
                }
                Err(e) => {
                    err = e;
                    break;
                }
            }
        }
        tx.trailers(stream_error_trailer(&err)).await;
    });
    ndjson_response(body)
}

fn ndjson_response(body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::TRAILER, HeaderValue::from_static("X-Stream-Error"));
    r
}
