//! The kubo RPC reverse proxy, the peer's front door: `pin/add`, `pin/rm` and
//! `pin/ls` become cluster operations; every other call streams through to the
//! daemon untouched.

mod error;
mod passthrough;
mod pin;

use std::net::SocketAddr;

use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::{ErrorCode, kubo_error};
pub use passthrough::Upstream;

use crate::cluster::Cluster;
use crate::config::ProxyConfig;
use crate::http::{Body, ServerOptions, query_pairs};
use crate::multiaddr::{MultiaddrError, TcpMultiaddr};
use pin::Query;

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
    upstream: Upstream,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

/// An intercepted kubo command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PinCommand {
    Add,
    Rm,
    Ls,
}

/// Which calls the cluster answers: POST/GET/PUT on the pin commands, also in the
/// undocumented `/pin/<cmd>/<arg>` form (whose arg is returned). OPTIONS and HEAD
/// always reach the daemon, so it answers CORS preflights itself.
fn route(method: &Method, path: &str) -> Option<(PinCommand, Option<String>)> {
    if !matches!(*method, Method::POST | Method::GET | Method::PUT) {
        return None;
    }
    let rest = path.strip_prefix("/api/v0/pin/")?;
    let (cmd, arg) = match rest.split_once('/') {
        Some((cmd, arg)) if !arg.is_empty() => (cmd, Some(arg.to_string())),
        Some((cmd, _)) => (cmd, None),
        None => (rest, None),
    };
    let h = match cmd {
        "add" => PinCommand::Add,
        "rm" => PinCommand::Rm,
        "ls" => PinCommand::Ls,
        _ => return None,
    };
    Some((h, arg))
}

impl Proxy {
    /// Binds the listeners and serves until `cancel`.
    pub async fn start(
        cfg: &ProxyConfig,
        cluster: Cluster,
        tasks: &TaskTracker,
        cancel: CancellationToken,
    ) -> Result<Vec<SocketAddr>, ProxyError> {
        let node = TcpMultiaddr::parse(&cfg.node_multiaddress)?;
        let listeners = crate::http::bind(&cfg.listen_multiaddress.0).await?;
        let addrs = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        let proxy = Proxy {
            cluster,
            upstream: Upstream::new(node.authority(), node.to_string()),
            tasks: tasks.clone(),
            cancel: cancel.clone(),
        };
        let opts = ServerOptions {
            header_read_timeout: cfg.read_header_timeout.0,
            max_header_bytes: cfg.max_header_bytes,
        };
        crate::http::serve(
            "ipfs proxy",
            listeners,
            move |req, remote| {
                let p = proxy.clone();
                async move { p.handle(req, remote).await }
            },
            opts,
            tasks,
            cancel,
        );
        Ok(addrs)
    }

    async fn handle(&self, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
        let Some((cmd, path_arg)) = route(req.method(), req.uri().path()) else {
            return self.upstream.forward(req, remote).await;
        };
        let mut pairs = query_pairs(req.uri());
        if let Some(a) = path_arg {
            tracing::warn!(
                "a client used the undocumented /pin/<cmd>/<arg> form of the IPFS API; use ?arg="
            );
            pairs.retain(|(k, _)| k != "arg");
            pairs.insert(0, ("arg".into(), a));
        }
        let q = Query::new(pairs);
        tracing::debug!(?cmd, "intercepted");
        let mut resp = match cmd {
            PinCommand::Add => self.pin_add(q).await,
            PinCommand::Rm => self.pin_rm(q).await,
            PinCommand::Ls => self.pin_ls(q).await,
        };
        if let Ok(v) = HeaderValue::from_str(&server_header()) {
            resp.headers_mut().insert(http::header::SERVER, v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(&Method::POST, "/api/v0/pin/add"),
            Some((PinCommand::Add, None))
        );
        assert_eq!(
            route(&Method::POST, "/api/v0/pin/rm/Qm1"),
            Some((PinCommand::Rm, Some("Qm1".into())))
        );
        assert_eq!(
            route(&Method::GET, "/api/v0/pin/ls"),
            Some((PinCommand::Ls, None))
        );
        assert_eq!(route(&Method::OPTIONS, "/api/v0/pin/add"), None);
        assert_eq!(route(&Method::HEAD, "/api/v0/pin/ls"), None);
        assert_eq!(route(&Method::POST, "/api/v0/pin/verify"), None);
        assert_eq!(route(&Method::POST, "/api/v0/cat"), None);
    }
}
