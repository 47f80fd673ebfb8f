//! The reverse proxy for every call the cluster does not intercept: request and
//! response bodies stream through untouched, trailers included.
//!
//! This is the proxy's hot path, so it carries no general-purpose HTTP client:
//! each client connection keeps one daemon connection of its own (HTTP/1 has one
//! call in flight per connection, so one is always enough), and that daemon
//! connection is driven inline by whoever polls the call — the client
//! connection's task — instead of by a task of its own. A call then costs no
//! pool lock, no task spawn and no cross-task wake-up. Large transfers are the
//! exception: there a task of its own drives the daemon connection, so that
//! reading from one side and writing to the other run on both cores at once.
//! When the client goes away its daemon connection goes to a small shared pool
//! for the next client.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

use super::error::{ErrorCode, kubo_error};
use crate::http::{Body, BoxError};

/// Idle daemon connections kept for new clients (as nginx's `keepalive 64`).
const MAX_IDLE: usize = 64;
/// How long an idle daemon connection is kept for new clients.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bodies up to this size are relayed by the client connection's task alone;
/// past it (or of unknown length, for requests) the daemon connection gets a
/// task of its own.
const INLINE_MAX: u64 = 256 * 1024;

/// The daemon: where forwarded calls go, and its idle connections.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    authority: String,
    /// The daemon's socket address when `authority` is an IP (no lookup per connect).
    addr: Option<SocketAddr>,
    host: Option<HeaderValue>,
    multiaddr: String,
    auth: UpstreamAuth,
    builder: http1::Builder,
    idle: Mutex<Vec<(Instant, Box<DaemonConn>)>>,
    tasks: TaskTracker,
}

/// How long a connection to the daemon may take to open: a daemon host that
/// drops SYNs would otherwise hold each call for the kernel's SYN retries (minutes).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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

/// One HTTP/1 connection to the daemon: its request handle and the connection
/// itself, polled by whoever waits on it. Boxed where it is kept, as it moves
/// between client connections, calls and bodies.
struct DaemonConn {
    send: SendRequest<Incoming>,
    conn: Connection<TokioIo<TcpStream>, Incoming>,
    /// The connection future completed (it must not be polled again).
    ended: bool,
}

/// A client connection's side of the proxy: who it is (for `X-Forwarded-For`)
/// and the daemon connection it keeps between its calls.
pub struct ClientConn {
    remote: SocketAddr,
    forwarded_for: Option<HeaderValue>,
    kept: Mutex<Option<Box<DaemonConn>>>,
    upstream: Upstream,
}

impl ClientConn {
    /// The state of a new connection from `remote`.
    pub fn new(upstream: &Upstream, remote: SocketAddr) -> Arc<Self> {
        Arc::new(ClientConn {
            remote,
            forwarded_for: HeaderValue::from_str(&remote.ip().to_string()).ok(),
            kept: Mutex::new(None),
            upstream: upstream.clone(),
        })
    }

    /// The client's address.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    fn take(&self) -> Option<Box<DaemonConn>> {
        crate::sync::lock(&self.kept).take()
    }

    fn keep(&self, c: Box<DaemonConn>) {
        let old = crate::sync::lock(&self.kept).replace(c);
        if let Some(old) = old {
            self.upstream.inner.release(old);
        }
    }
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        if let Some(c) = self.take() {
            self.upstream.inner.release(c);
        }
    }
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
/// Most messages carry none: one pass over the headers finds that out.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    if !h.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
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

/// Why a daemon connection could not be had.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

impl Inner {
    /// Returns an idle connection to the shared pool (or closes it when full).
    fn release(&self, c: Box<DaemonConn>) {
        if c.ended || c.send.is_closed() {
            return;
        }
        let mut idle = crate::sync::lock(&self.idle);
        idle.retain(|(at, _)| at.elapsed() < IDLE_TIMEOUT);
        if idle.len() < MAX_IDLE {
            idle.push((Instant::now(), c));
        }
    }

    /// Gives a connection whose call is over back to `owner`, or to the pool.
    fn give_back(&self, c: Box<DaemonConn>, owner: Option<&ClientConn>) {
        match owner {
            Some(owner) => owner.keep(c),
            None => self.release(c),
        }
    }

    /// Lets a task of its own drive `c` through the rest of its call, then give
    /// it back.
    fn drive_apart(self: &Arc<Self>, mut c: Box<DaemonConn>, owner: Option<Arc<ClientConn>>) {
        let inner = self.clone();
        self.tasks.spawn(async move {
            if c.ready().await {
                inner.give_back(c, owner.as_deref());
            }
        });
    }

    fn pop_idle(&self) -> Option<Box<DaemonConn>> {
        let mut idle = crate::sync::lock(&self.idle);
        while let Some((at, c)) = idle.pop() {
            if at.elapsed() < IDLE_TIMEOUT {
                return Some(c);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Box<DaemonConn>, ConnectError> {
        let connecting = async {
            match self.addr {
                Some(a) => TcpStream::connect(a).await,
                None => TcpStream::connect(self.authority.as_str()).await,
            }
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {CONNECT_TIMEOUT:?}"),
                )
            })??;
        stream.set_nodelay(true)?;
        let (send, conn) = self.builder.handshake(TokioIo::new(stream)).await?;
        Ok(Box::new(DaemonConn {
            send,
            conn,
            ended: false,
        }))
    }

    /// A daemon connection ready for a request: the client connection's own,
    /// else an idle one, else a new one.
    async fn checkout(&self, client: Option<&ClientConn>) -> Result<Box<DaemonConn>, ConnectError> {
        let mut candidate = client.and_then(ClientConn::take);
        loop {
            let Some(mut c) = candidate.or_else(|| self.pop_idle()) else {
                return self.connect().await;
            };
            if c.ready().await {
                return Ok(c);
            }
            candidate = None;
        }
    }
}

impl DaemonConn {
    /// Drives the connection; true once it has ended.
    fn poll_conn(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.ended
            && let Poll::Ready(r) = Pin::new(&mut self.conn).poll(cx)
        {
            self.ended = true;
            if let Err(e) = r {
                tracing::debug!("daemon connection: {e}");
            }
        }
        self.ended
    }

    /// Drives the connection until it can take a request; false when it closed
    /// (the daemon ends idle connections when it likes).
    async fn ready(&mut self) -> bool {
        std::future::poll_fn(|cx| {
            if self.poll_conn(cx) {
                return Poll::Ready(false);
            }
            self.send.poll_ready(cx).map(|r| r.is_ok())
        })
        .await
    }

    /// Waits for the answer to a sent request while driving the connection;
    /// `None` if the connection ended without settling it.
    async fn drive<F: Future>(&mut self, sent: F) -> Option<F::Output> {
        let mut sent = std::pin::pin!(sent);
        std::future::poll_fn(|cx| {
            let ended = self.poll_conn(cx);
            match sent.as_mut().poll(cx) {
                Poll::Ready(t) => Poll::Ready(Some(t)),
                // hyper settles every request of a connection before it ends.
                Poll::Pending if ended => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

/// A body the proxy answers with: the daemon's streamed through, or the cluster's own.
pub enum ProxyBody {
    /// The daemon's answer, streamed through.
    Daemon(DaemonBody),
    /// An answer of the cluster's own.
    Local(Body),
}

impl From<Body> for ProxyBody {
    fn from(b: Body) -> Self {
        ProxyBody::Local(b)
    }
}

impl hyper::body::Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Daemon(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Local(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Daemon(b) => b.is_end_stream(),
            ProxyBody::Local(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Daemon(b) => b.size_hint(),
            ProxyBody::Local(b) => b.size_hint(),
        }
    }
}

/// The daemon's answer body, which also drives its connection; once read to the
/// end, the connection goes back to the client connection (or the pool) for the
/// next call. Dropped before its end, it closes the connection.
pub struct DaemonBody {
    body: Incoming,
    /// The connection, while this body drives it.
    conn: Option<Box<DaemonConn>>,
    owner: Option<Arc<ClientConn>>,
    upstream: Upstream,
    /// Bytes relayed so far.
    relayed: u64,
}

impl DaemonBody {
    fn finish(&mut self) {
        if let Some(c) = self.conn.take() {
            self.upstream.inner.give_back(c, self.owner.as_deref());
        }
    }

    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(None) => {
                self.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.conn = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.relayed += d.len() as u64;
                    if self.relayed > INLINE_MAX
                        && let Some(c) = self.conn.take()
                    {
                        self.upstream.inner.drive_apart(c, self.owner.clone());
                    }
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::body::Body for DaemonBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(f) = this.poll_body(cx) {
            return Poll::Ready(f);
        }
        // The body waits for the connection: drive it, then look again.
        if let Some(c) = &mut this.conn
            && c.poll_conn(cx)
        {
            // The connection ended: the body now has its end or its error.
            this.conn = None;
        }
        this.poll_body(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for DaemonBody {
    fn drop(&mut self) {
        // hyper's server stops reading a body whose announced length is reached.
        if self.body.is_end_stream() {
            self.finish();
        }
    }
}

impl Upstream {
    /// The daemon at `authority` (`host:port`), named `multiaddr` in errors; the
    /// tasks that drive large transfers are spawned on `tasks`.
    pub fn new(
        authority: String,
        multiaddr: String,
        auth: UpstreamAuth,
        tasks: TaskTracker,
    ) -> Self {
        let mut builder = http1::Builder::new();
        // The daemon's answers may be large: read them in large pieces.
        builder.max_buf_size(1024 * 1024);
        Upstream {
            inner: Arc::new(Inner {
                addr: authority.parse().ok(),
                host: HeaderValue::from_str(&authority).ok(),
                authority,
                multiaddr,
                auth,
                builder,
                idle: Mutex::new(Vec::new()),
                tasks,
            }),
        }
    }

    /// The daemon's `host:port`.
    pub fn authority(&self) -> &str {
        &self.inner.authority
    }

    /// Forwards `req` to the daemon and streams its answer back, on the client
    /// connection's own daemon connection.
    pub async fn forward(
        &self,
        req: Request<Incoming>,
        client: &Arc<ClientConn>,
    ) -> Response<ProxyBody> {
        self.forward_with(req, client, None).await
    }

    /// Forwards `req` with its path and query replaced by `pq`, when given.
    pub async fn forward_with(
        &self,
        mut req: Request<Incoming>,
        client: &Arc<ClientConn>,
        pq: Option<String>,
    ) -> Response<ProxyBody> {
        let pq = match pq {
            Some(pq) => Some(PathAndQuery::try_from(pq)),
            // Requests in absolute form reach the daemon in origin form.
            None if req.uri().scheme().is_some() || req.uri().authority().is_some() => {
                Some(Ok(req
                    .uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/"))))
            }
            None => None,
        };
        if let Some(pq) = pq {
            match pq {
                Ok(pq) => *req.uri_mut() = Uri::from(pq),
                Err(e) => {
                    return local(kubo_error(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::Client,
                        &format!("invalid request URI: {e}"),
                    ));
                }
            }
        }
        let inner = &self.inner;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        if let Some(a) = &inner.auth.daemon {
            headers.insert(header::AUTHORIZATION, a.clone());
        } else if inner.auth.drop_client {
            headers.remove(header::AUTHORIZATION);
        }
        if let Some(h) = &inner.host {
            headers.insert(header::HOST, h.clone());
        }
        // Without `TE: trailers` upstream, hyper would drop the daemon's
        // X-Stream-Error trailer when relaying to clients that asked for it.
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
        let xff = match headers.get(&XFF).and_then(|v| v.to_str().ok()) {
            Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", client.remote.ip())).ok(),
            None => client.forwarded_for.clone(),
        };
        if let Some(v) = xff {
            headers.insert(XFF, v);
        }
        // A kept connection the daemon closed meanwhile gives the request back
        // unsent: it is sent once more on a new connection.
        let upload = !req.body().is_end_stream()
            && req
                .body()
                .size_hint()
                .exact()
                .is_none_or(|n| n > INLINE_MAX);
        for _ in 0..2 {
            let mut c = match inner.checkout(Some(client)).await {
                Ok(c) => c,
                Err(e) => return self.unreachable(&e),
            };
            let sent = c.send.try_send_request(req);
            let (answer, c) = if upload {
                inner.drive_apart(c, Some(client.clone()));
                (Some(sent.await), None)
            } else {
                (c.drive(sent).await, Some(c))
            };
            match answer {
                Some(Ok(resp)) => return self.answer(resp, c, Some(client.clone())),
                Some(Err(mut e)) => match e.take_message() {
                    Some(r) => req = r,
                    None => return self.unreachable(&e.into_error()),
                },
                None => return self.unreachable(&"the daemon closed the connection"),
            }
        }
        self.unreachable(&"the daemon closed the connection")
    }

    fn answer(
        &self,
        resp: Response<Incoming>,
        c: Option<Box<DaemonConn>>,
        owner: Option<Arc<ClientConn>>,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = resp.into_parts();
        if parts.headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
            let trailer_decl = parts.headers.get(header::TRAILER).cloned();
            strip_hop_by_hop(&mut parts.headers);
            // The declaration of trailers is end-to-end information for clients
            // that read `X-Stream-Error`: keep it.
            if let Some(t) = trailer_decl {
                parts.headers.insert(header::TRAILER, t);
            }
        }
        let mut body = DaemonBody {
            body,
            conn: c,
            owner,
            upstream: self.clone(),
            relayed: 0,
        };
        if hyper::body::Body::is_end_stream(&body) {
            body.finish();
        }
        Response::from_parts(parts, ProxyBody::Daemon(body))
    }

    fn unreachable(&self, reason: &dyn std::fmt::Display) -> Response<ProxyBody> {
        local(kubo_error(
            StatusCode::BAD_GATEWAY,
            ErrorCode::Normal,
            &format!(
                "cannot reach the IPFS daemon at {}: {reason}",
                self.inner.multiaddr
            ),
        ))
    }
}

fn local(r: Response<Body>) -> Response<ProxyBody> {
    r.map(ProxyBody::Local)
}

#[cfg(test)]
mod connect_timeout_tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_daemon_that_never_accepts_fails_after_the_connect_timeout() {
        // A listener whose accept queue is full and never drained: the kernel
        // drops further SYNs, as a blackholed host does.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = sock.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        while let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await
        {
            held.push(s);
            assert!(held.len() < 64, "the accept queue never filled");
        }
        let upstream = Upstream::new(
            addr.to_string(),
            addr.to_string(),
            UpstreamAuth::default(),
            tokio_util::task::TaskTracker::new(),
        );
        let started = Instant::now();
        let r = tokio::time::timeout(CONNECT_TIMEOUT * 4, upstream.inner.connect()).await;
        let elapsed = started.elapsed();
        assert!(
            matches!(r, Ok(Err(ConnectError::Io(_)))),
            "no error in time"
        );
        assert!(
            elapsed >= CONNECT_TIMEOUT - Duration::from_millis(100)
                && elapsed < CONNECT_TIMEOUT * 2,
            "{elapsed:?}"
        );
        drop(listener);
    }
}
