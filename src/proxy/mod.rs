//! The kubo RPC reverse proxy, the peer's front door: `pin/add`, `pin/rm` and
//! `pin/ls` become cluster operations; every other call streams through to the
//! daemon untouched.

mod error;
mod fastpath;
mod headers;
mod passthrough;
mod pin;
mod relay;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::{ErrorCode, kubo_error};
pub use passthrough::{ClientConn, DaemonBody, ProxyBody, Upstream, UpstreamAuth};

use crate::cluster::Cluster;
use crate::config::{IpfsHttpConfig, ProxyConfig};
use crate::http::{ServerOptions, query_pairs};
use crate::multiaddr::{MultiaddrError, TcpMultiaddr};
use crate::types::PinOptions;
use pin::Query;
use relay::PinWhat;

/// The `Server` header of answers the cluster gives itself, as upstream.
pub fn server_header() -> String {
    format!("ipfs-cluster/ipfsproxy/{}", crate::VERSION)
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A bad address in the config.
    #[error(transparent)]
    Multiaddr(#[from] MultiaddrError),
    /// Listening failed.
    #[error("ipfs proxy: {0}")]
    Listen(#[from] std::io::Error),
}

/// The proxy's shared request state.
#[derive(Clone)]
pub struct Proxy {
    cluster: Cluster,
    credentials: Option<Arc<std::collections::BTreeMap<String, String>>>,
    upstream: Upstream,
    daemon_headers: headers::DaemonHeaders,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

/// An intercepted pin command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PinCommand {
    Add,
    Rm,
    Ls,
}

/// An intercepted kubo command.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hijack {
    /// `pin/add|rm|ls`, with the `/pin/<cmd>/<arg>` path argument if any.
    Pin(PinCommand, Option<String>),
    PinUpdate,
    Add,
    RepoStat,
    RepoGc,
    BlockPut,
    DagPut,
}

/// Which calls the cluster answers: POST/GET/PUT on the pin commands, also in the
/// undocumented `/pin/<cmd>/<arg>` form (whose arg is returned). OPTIONS and HEAD
/// always reach the daemon, so it answers CORS preflights itself. Every call
/// goes through here, so it matches bytes and allocates only for an intercepted
/// call's path argument.
fn route(method: &Method, path: &str) -> Option<Hijack> {
    if !matches!(*method, Method::POST | Method::GET | Method::PUT) {
        return None;
    }
    let cmd = path.as_bytes().strip_prefix(b"/api/v0/")?;
    let hijack = match cmd {
        b"pin/update" => Hijack::PinUpdate,
        b"add" => Hijack::Add,
        b"repo/stat" => Hijack::RepoStat,
        b"repo/gc" => Hijack::RepoGc,
        b"block/put" => Hijack::BlockPut,
        b"dag/put" => Hijack::DagPut,
        _ => {
            let rest = cmd.strip_prefix(b"pin/")?;
            let (cmd, arg) = match rest.iter().position(|b| *b == b'/') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b""[..]),
            };
            let c = match cmd {
                b"add" => PinCommand::Add,
                b"rm" => PinCommand::Rm,
                b"ls" => PinCommand::Ls,
                _ => return None,
            };
            // `path` is a str and `arg` follows an ASCII '/': still UTF-8.
            let arg = (!arg.is_empty()).then(|| String::from_utf8_lossy(arg).into_owned());
            Hijack::Pin(c, arg)
        }
    };
    Some(hijack)
}

/// `Authorization: Basic …` from the connector's `user:password`, when the
/// connector talks to the proxy's node: a lower cluster's proxy (or a daemon)
/// that wants credentials wants them on forwarded calls too.
fn daemon_authorization(node: &TcpMultiaddr, connector: &IpfsHttpConfig) -> Option<HeaderValue> {
    use base64::Engine;
    let creds = connector.basic_auth_credentials.as_deref()?;
    let same_node = TcpMultiaddr::parse(&connector.node_multiaddress)
        .is_ok_and(|c| c.authority() == node.authority());
    if !same_node {
        return None;
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(creds);
    HeaderValue::from_str(&format!("Basic {encoded}")).ok()
}

impl Proxy {
    /// Binds the listeners and serves until `cancel`. `connector` lends its
    /// credentials when it names the same node as the proxy.
    pub async fn start(
        cfg: &ProxyConfig,
        connector: &IpfsHttpConfig,
        cluster: Cluster,
        tasks: &TaskTracker,
        cancel: CancellationToken,
    ) -> Result<Vec<SocketAddr>, ProxyError> {
        let node = TcpMultiaddr::parse(&cfg.node_multiaddress)?;
        let listeners = crate::http::bind(&cfg.listen_multiaddress.0).await?;
        let auth = UpstreamAuth {
            daemon: daemon_authorization(&node, connector),
            drop_client: cfg.basic_auth_credentials.is_some(),
        };
        let fast_auth = auth
            .daemon
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let proxy = Arc::new(Proxy {
            cluster,
            credentials: cfg.basic_auth_credentials.clone().map(Arc::new),
            daemon_headers: headers::DaemonHeaders::new(cfg, &node, auth.daemon.clone()),
            upstream: Upstream::new(node.authority(), node.to_string(), auth, tasks.clone()),
            tasks: tasks.clone(),
            cancel: cancel.clone(),
        });
        let opts = ServerOptions {
            header_read_timeout: cfg.read_header_timeout.0,
            max_header_bytes: cfg.max_header_bytes,
        };
        // The fast path relays plain calls at the byte level (with the
        // proxy's credentials, those that carry one exactly). Daemons named by
        // host name take the general path only.
        let daemon_addr = node.authority().parse::<SocketAddr>().ok();
        let first = match daemon_addr {
            Some(addr) => {
                let fast = Arc::new(fastpath::FastPath::new(
                    addr,
                    fast_auth,
                    proxy.credentials.as_deref(),
                    (cfg.read_header_timeout.0, cfg.idle_timeout.0),
                    cfg.max_header_bytes,
                    |m, p| route(m, p).is_some(),
                ));
                let first: crate::http::FirstPass = Arc::new(move |stream, remote, cancel| {
                    Box::pin(fast.clone().serve(stream, remote, cancel))
                });
                Some(first)
            }
            _ => None,
        };
        let addrs = crate::http::serve_connections(
            "ipfs proxy",
            listeners,
            move |remote| {
                let (proxy, client) = (proxy.clone(), ClientConn::new(&proxy.upstream, remote));
                move |req| handle(proxy.clone(), client.clone(), req)
            },
            first,
            opts,
            tasks,
            cancel,
        );
        Ok(addrs)
    }

    /// An intercepted call: answered by the cluster, with the daemon's headers.
    async fn intercept(
        &self,
        hijack: Hijack,
        req: Request<Incoming>,
        client: &Arc<ClientConn>,
    ) -> Response<ProxyBody> {
        if let Some(refused) = self.daemon_headers.refusal(req.headers()).await {
            return refused.map(ProxyBody::Local);
        }
        let mut pairs = query_pairs(req.uri());
        tracing::debug!(?hijack, "intercepted");
        let flag = |pairs: &[(String, String)], k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| crate::http::parse_bool(v).unwrap_or(v.is_empty()))
        };
        let (origin_method, path) = (req.method().clone(), req.uri().path().to_string());
        let origin = req.headers().get(http::header::ORIGIN).cloned();
        let mut resp = match hijack {
            Hijack::Pin(cmd, path_arg) => {
                if let Some(a) = path_arg {
                    tracing::warn!(
                        "a client used the undocumented /pin/<cmd>/<arg> form of the IPFS API; use ?arg="
                    );
                    pairs.retain(|(k, _)| k != "arg");
                    pairs.insert(0, ("arg".into(), a));
                }
                let q = Query::new(pairs);
                match cmd {
                    PinCommand::Add => self.pin_add(q).await,
                    PinCommand::Rm => self.pin_rm(q).await,
                    PinCommand::Ls => self.pin_ls(q).await,
                }
                .map(ProxyBody::Local)
            }
            Hijack::PinUpdate => self
                .pin_update(Query::new(pairs))
                .await
                .map(ProxyBody::Local),
            Hijack::RepoStat => self.repo_stat().await.map(ProxyBody::Local),
            Hijack::RepoGc => self.repo_gc(Query::new(pairs)).await.map(ProxyBody::Local),
            Hijack::Add => {
                // kubo pins by default; `only-hash` stores (and so pins) nothing.
                let pin = flag(&pairs, "pin").unwrap_or(true)
                    && !flag(&pairs, "only-hash").unwrap_or(false);
                let opts = match PinOptions::from_query(&pairs) {
                    Ok(o) => o,
                    Err(e) => {
                        return error::kubo_error(
                            http::StatusCode::BAD_REQUEST,
                            ErrorCode::Client,
                            &e,
                        )
                        .map(ProxyBody::Local);
                    }
                };
                self.relay_and_pin(req, client, pairs, PinWhat::LastHash, pin.then_some(opts))
                    .await
            }
            Hijack::BlockPut | Hijack::DagPut => {
                // Without pin=true these are plain daemon calls.
                if !flag(&pairs, "pin").unwrap_or(false) {
                    return self.upstream.forward(req, client).await;
                }
                let what = if hijack == Hijack::BlockPut {
                    PinWhat::EveryKey
                } else {
                    PinWhat::EveryCidLink
                };
                self.relay_and_pin(req, client, pairs, what, Some(PinOptions::default()))
                    .await
            }
        };
        // As upstream: the daemon's CORS answer for this origin and method, and the
        // headers it always sends, so browsers see the cluster as the daemon.
        let extra = self
            .daemon_headers
            .for_answer(&path, &origin_method, origin.as_ref())
            .await;
        resp.headers_mut().extend(extra);
        if let Ok(v) = HeaderValue::from_str(&server_header()) {
            resp.headers_mut().insert(http::header::SERVER, v);
        }
        resp
    }
}

/// One call to the proxy. The pass-through is the hot path: it is checked for
/// credentials (when configured) and routed, and goes to the daemon with nothing
/// else done; an intercepted call's larger future lives in a box of its own.
async fn handle(
    proxy: Arc<Proxy>,
    client: Arc<ClientConn>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    // CORS preflights carry no credentials: they reach the daemon as they are.
    if proxy.credentials.is_some()
        && req.method() != Method::OPTIONS
        && !crate::http::basic_auth_ok(req.headers(), proxy.credentials.as_deref())
    {
        let mut r = error::kubo_error(
            http::StatusCode::UNAUTHORIZED,
            ErrorCode::Normal,
            "unauthorized: invalid credentials",
        );
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"IPFS Cluster proxy\""),
        );
        return r.map(ProxyBody::Local);
    }
    match route(req.method(), req.uri().path()) {
        None => proxy.upstream.forward(req, &client).await,
        Some(hijack) => Box::pin(proxy.intercept(hijack, req, &client)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connectors_credentials_go_only_to_its_own_node() {
        let connector = IpfsHttpConfig {
            node_multiaddress: "/ip4/127.0.0.1/tcp/9095".into(),
            basic_auth_credentials: Some("lower:s3cret".into()),
            ..Default::default()
        };
        let same = TcpMultiaddr::parse("/ip4/127.0.0.1/tcp/9095").unwrap();
        assert_eq!(
            daemon_authorization(&same, &connector).unwrap(),
            "Basic bG93ZXI6czNjcmV0"
        );
        let other = TcpMultiaddr::parse("/ip4/127.0.0.1/tcp/5001").unwrap();
        assert!(daemon_authorization(&other, &connector).is_none());
        let anonymous = IpfsHttpConfig {
            basic_auth_credentials: None,
            ..connector
        };
        assert!(daemon_authorization(&same, &anonymous).is_none());
    }

    #[test]
    fn routes() {
        assert_eq!(
            route(&Method::POST, "/api/v0/pin/add"),
            Some(Hijack::Pin(PinCommand::Add, None))
        );
        assert_eq!(
            route(&Method::POST, "/api/v0/pin/rm/Qm1"),
            Some(Hijack::Pin(PinCommand::Rm, Some("Qm1".into())))
        );
        assert_eq!(
            route(&Method::GET, "/api/v0/pin/ls"),
            Some(Hijack::Pin(PinCommand::Ls, None))
        );
        assert_eq!(route(&Method::POST, "/api/v0/add"), Some(Hijack::Add));
        assert_eq!(
            route(&Method::POST, "/api/v0/pin/update"),
            Some(Hijack::PinUpdate)
        );
        assert_eq!(
            route(&Method::POST, "/api/v0/repo/stat"),
            Some(Hijack::RepoStat)
        );
        assert_eq!(
            route(&Method::POST, "/api/v0/dag/put"),
            Some(Hijack::DagPut)
        );
        assert_eq!(route(&Method::OPTIONS, "/api/v0/pin/add"), None);
        assert_eq!(route(&Method::HEAD, "/api/v0/pin/ls"), None);
        assert_eq!(route(&Method::POST, "/api/v0/pin/verify"), None);
        assert_eq!(route(&Method::POST, "/api/v0/cat"), None);
    }
}
