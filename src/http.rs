//! HTTP plumbing shared by the proxy and the REST API: body types, JSON and
//! streamed responses, and a server loop with graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Errors carried inside bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response we produce.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// A response with a JSON body.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_else(|e| {
        format!("{{\"Message\":\"encoding response: {e}\",\"Code\":0,\"Type\":\"error\"}}")
            .into_bytes()
    });
    bytes.push(b'\n');
    let mut r = Response::new(full(bytes));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The sending half of a streamed body: data chunks, then optional trailers.
pub struct BodySender {
    tx: mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
}

impl BodySender {
    /// Sends a chunk; `false` when the client went away.
    pub async fn send(&self, chunk: impl Into<Bytes>) -> bool {
        self.tx.send(Ok(Frame::data(chunk.into()))).await.is_ok()
    }

    /// Sends one JSON value followed by a newline.
    pub async fn send_json<T: Serialize>(&self, v: &T) -> bool {
        match serde_json::to_vec(v) {
            Ok(mut b) => {
                b.push(b'\n');
                self.send(b).await
            }
            Err(_) => false,
        }
    }

    /// Ends the body with trailers.
    pub async fn trailers(self, trailers: HeaderMap) {
        let _ = self.tx.send(Ok(Frame::trailers(trailers))).await;
    }

    /// Sends a chunk from a blocking thread (never from async code); `false` when
    /// the client went away.
    pub fn blocking_send(&self, chunk: impl Into<Bytes>) -> bool {
        self.tx.blocking_send(Ok(Frame::data(chunk.into()))).is_ok()
    }

    /// Ends the body with trailers, from a blocking thread.
    pub fn blocking_trailers(self, trailers: HeaderMap) {
        let _ = self.tx.blocking_send(Ok(Frame::trailers(trailers)));
    }

    /// True when the receiving side was dropped (client disconnected).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A streamed body and its sender; the buffer holds a few chunks, so a slow client
/// slows the producer instead of growing memory.
pub fn channel_body() -> (BodySender, Body) {
    let (tx, rx) = mpsc::channel(16);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (BodySender { tx }, StreamBody::new(stream).boxed_unsync())
}

/// How large a frame batched writers fill before sending it.
pub const FRAME_BYTES: usize = 64 * 1024;

/// Collects many small writes into frames of about [`FRAME_BYTES`], sent from a
/// blocking thread: one frame per batch of items, never one per item.
pub struct FrameWriter {
    tx: BodySender,
    buf: Vec<u8>,
}

impl FrameWriter {
    /// Writes into `tx`.
    pub fn new(tx: BodySender) -> Self {
        FrameWriter {
            tx,
            buf: Vec::with_capacity(FRAME_BYTES + 4096),
        }
    }

    /// The buffer to append to; call [`FrameWriter::flush_if_full`] after.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Sends the buffer when it reached the frame size; `false` when the client went away.
    pub fn flush_if_full(&mut self) -> bool {
        if self.buf.len() < FRAME_BYTES {
            return true;
        }
        self.flush()
    }

    /// Sends what is buffered; `false` when the client went away.
    pub fn flush(&mut self) -> bool {
        if self.buf.is_empty() {
            return !self.tx.is_closed();
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(FRAME_BYTES + 4096));
        self.tx.blocking_send(chunk)
    }

    /// Sends what is buffered, then the trailers.
    pub fn finish(mut self, trailers: HeaderMap) {
        if self.flush() {
            self.tx.blocking_trailers(trailers);
        }
    }
}

/// Makes ring the process's rustls crypto provider. reqwest is built without one
/// (its default, aws-lc-rs, needs a C toolchain) and panics when a client is built
/// before a provider is installed, even for plain HTTP: call this first.
pub fn install_crypto_provider() {
    // An error only says a provider is already installed, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A reqwest client builder for plain-HTTP peers (the daemon's RPC API): the
/// crypto provider installed, and no TLS roots, which spares loading the system's
/// certificate store (tens of milliseconds at every start) for nothing.
pub fn plain_http_client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder().tls_certs_only(std::iter::empty())
}

/// Server limits.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Time to read a request's headers.
    pub header_read_timeout: Duration,
    /// Largest request head accepted (larger: 431).
    pub max_header_bytes: usize,
}

/// Binds each `/ip4|ip6/.../tcp/...` listen address.
pub async fn bind(addrs: &[String]) -> Result<Vec<TcpListener>, std::io::Error> {
    let mut out = Vec::new();
    for a in addrs {
        let sock = crate::multiaddr::TcpMultiaddr::parse(a)
            .and_then(|m| m.socket_addr())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let l = TcpListener::bind(sock)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("listening on {a}: {e}")))?;
        out.push(l);
    }
    Ok(out)
}

/// Connections each listener serves at once; further clients wait in the
/// kernel's accept queue until one closes. Go's server (and so upstream) has no
/// such bound: this keeps a flood of idle or slow connections from using every
/// file descriptor the peer has (Raft, the daemon and the store need some too).
pub const MAX_CONNECTIONS_PER_LISTENER: usize = 4096;

/// Serves `handler` on `listeners` until `cancel`, then lets open requests finish
/// for a short grace period. Every task is spawned on `tasks`. Returns the
/// addresses served (with the real ports of listeners bound to port 0).
pub fn serve<H, F>(
    name: &'static str,
    listeners: Vec<TcpListener>,
    handler: H,
    opts: ServerOptions,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> Vec<SocketAddr>
where
    H: Fn(http::Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    serve_capped(
        name,
        listeners,
        handler,
        opts,
        MAX_CONNECTIONS_PER_LISTENER,
        tasks,
        cancel,
    )
}

/// Like [`serve`], with at most `max_connections` connections per listener.
pub fn serve_capped<H, F>(
    name: &'static str,
    listeners: Vec<TcpListener>,
    handler: H,
    opts: ServerOptions,
    max_connections: usize,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> Vec<SocketAddr>
where
    H: Fn(http::Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    serve_handler(
        name,
        listeners,
        Accepting {
            tls: None,
            max_connections,
            first: None,
        },
        handler,
        opts,
        tasks,
        cancel,
    )
}

/// As [`serve`], over TLS when `tls` is given: each connection's handshake runs in
/// its own task, so a slow or failed handshake holds up no other client.
pub fn serve_tls<H, F>(
    name: &'static str,
    listeners: Vec<TcpListener>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handler: H,
    opts: ServerOptions,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> Vec<SocketAddr>
where
    H: Fn(http::Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    serve_handler(
        name,
        listeners,
        Accepting {
            tls,
            max_connections: MAX_CONNECTIONS_PER_LISTENER,
            first: None,
        },
        handler,
        opts,
        tasks,
        cancel,
    )
}

/// [`serve_inner`] with one handler shared by every connection, told the client's address.
fn serve_handler<H, F>(
    name: &'static str,
    listeners: Vec<TcpListener>,
    accepting: Accepting,
    handler: H,
    opts: ServerOptions,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> Vec<SocketAddr>
where
    H: Fn(http::Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let handler = Arc::new(handler);
    serve_inner(
        name,
        listeners,
        accepting,
        move |remote| {
            let h = handler.clone();
            move |req| h(req, remote)
        },
        opts,
        tasks,
        cancel,
    )
}

/// As [`serve`], with a request handler made for each connection (so that it may
/// keep state between the connection's requests), any response body type, and
/// an optional first pass over each connection.
pub fn serve_connections<M, S, F, B>(
    name: &'static str,
    listeners: Vec<TcpListener>,
    make: M,
    first: Option<FirstPass>,
    opts: ServerOptions,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> Vec<SocketAddr>
where
    M: Fn(SocketAddr) -> S + Send + Sync + 'static,
    S: Fn(http::Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + From<Body> + Send + 'static,
    B::Error: Into<BoxError>,
{
    serve_inner(
        name,
        listeners,
        Accepting {
            tls: None,
            max_connections: MAX_CONNECTIONS_PER_LISTENER,
            first,
        },
        make,
        opts,
        tasks,
        cancel,
    )
}

/// How a listener takes connections: over TLS or not, how many at once, and
/// whether a first pass serves plain connections before hyper.
struct Accepting {
    tls: Option<tokio_rustls::TlsAcceptor>,
    max_connections: usize,
    first: Option<FirstPass>,
}

/// A connection a [`FirstPass`] hands to hyper: the stream and the bytes it
/// read from it without serving them.
pub struct Handoff {
    /// Read from `stream`, not served.
    pub read: Bytes,
    /// The client connection.
    pub stream: tokio::net::TcpStream,
}

/// Serves a plain connection's calls before hyper does (the proxy's fast path);
/// returns the connection for hyper at the first call it leaves to it, `None`
/// once the connection is done. Told the client's address and the server's
/// shutdown signal.
pub type FirstPass = Arc<
    dyn Fn(
            tokio::net::TcpStream,
            SocketAddr,
            CancellationToken,
        ) -> std::pin::Pin<Box<dyn Future<Output = Option<Handoff>> + Send>>
        + Send
        + Sync,
>;

/// A handed-over connection: the bytes already read come first.
struct Prefixed(Handoff);

impl tokio::io::AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let read = &mut self.0.read;
        if !read.is_empty() {
            let n = read.len().min(buf.remaining());
            buf.put_slice(&read.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.0.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0.stream).poll_shutdown(cx)
    }
}

/// The accept loop behind [`serve_tls`] and [`serve_connections`].
fn serve_inner<M, S, F, B>(
    name: &'static str,
    listeners: Vec<TcpListener>,
    Accepting {
        tls,
        max_connections,
        first,
    }: Accepting,
    make: M,
    opts: ServerOptions,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> Vec<SocketAddr>
where
    M: Fn(SocketAddr) -> S + Send + Sync + 'static,
    S: Fn(http::Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + From<Body> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let make = Arc::new(make);
    let addrs = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    for listener in listeners {
        let (make, opts, cancel, conn_tasks, tls, first) = (
            make.clone(),
            opts.clone(),
            cancel.clone(),
            tasks.clone(),
            tls.clone(),
            first.clone(),
        );
        tasks.spawn(async move {
            let graceful = hyper_util::server::graceful::GracefulShutdown::new();
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(opts.header_read_timeout)
                .max_buf_size(opts.max_header_bytes.max(8192));
            let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
            loop {
                let permit = tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = cancel.cancelled() => break,
                };
                let (stream, remote) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!("{name}: accept: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = cancel.cancelled() => break,
                };
                let _ = stream.set_nodelay(true);
                let h = make(remote);
                let max_header = opts.max_header_bytes;
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    // As Go's server (and upstream): headers over the limit get a 431.
                    let too_large = header_bytes(&req) > max_header;
                    // The access log (upstream's restapilog/ipfsproxylog), when enabled.
                    let logged =
                        tracing::enabled!(target: "ipfs_cluster::access", tracing::Level::DEBUG)
                            .then(|| (format!("{} {}", req.method(), req.uri()), Instant::now()));
                    let fut = (!too_large).then(|| h(req));
                    async move {
                        let resp = match fut {
                            Some(f) => f.await,
                            None => {
                                let mut r = Response::new(B::from(full(
                                    "431 Request Header Fields Too Large",
                                )));
                                *r.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
                                r
                            }
                        };
                        // Logged when the answer starts, as its body may stream for long.
                        if let Some((line, started)) = logged {
                            tracing::debug!(
                                target: "ipfs_cluster::access",
                                "{name}: {remote} \"{line}\" {} {:?}",
                                resp.status().as_u16(),
                                started.elapsed()
                            );
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                if let (None, Some(first)) = (&tls, &first) {
                    let (first, watcher, builder) =
                        (first.clone(), graceful.watcher(), builder.clone());
                    let cancel = cancel.clone();
                    conn_tasks.spawn(async move {
                        let _permit = permit;
                        let Some(handoff) = first(stream, remote, cancel).await else {
                            return;
                        };
                        let io = TokioIo::new(Prefixed(handoff));
                        if let Err(e) = watcher.watch(builder.serve_connection(io, svc)).await {
                            tracing::debug!("{name}: connection from {remote}: {e}");
                        }
                    });
                    continue;
                }
                let Some(tls) = tls.clone() else {
                    let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
                    conn_tasks.spawn(async move {
                        let _permit = permit;
                        if let Err(e) = conn.await {
                            tracing::debug!("{name}: connection from {remote}: {e}");
                        }
                    });
                    continue;
                };
                let watcher = graceful.watcher();
                let timeout = opts.header_read_timeout;
                let builder = builder.clone();
                conn_tasks.spawn(async move {
                    let _permit = permit;
                    // The handshake shares the header read timeout: both are what a
                    // client must send before it is served.
                    let stream = match tokio::time::timeout(timeout, tls.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!("{name}: TLS handshake with {remote}: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("{name}: TLS handshake with {remote} timed out");
                            return;
                        }
                    };
                    let conn = watcher.watch(builder.serve_connection(TokioIo::new(stream), svc));
                    if let Err(e) = conn.await {
                        tracing::debug!("{name}: connection from {remote}: {e}");
                    }
                });
            }
            if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("{name}: connections still open after 5s; closing them");
            }
        });
    }
    addrs
}

/// The size of a request's head, counted as Go's `MaxHeaderBytes` does (roughly:
/// the request line and every header line).
fn header_bytes(req: &http::Request<Incoming>) -> usize {
    let uri = req.uri();
    // The URI's length as written, without writing it.
    let uri_len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    let line = req.method().as_str().len() + uri_len + 12;
    req.headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
}

/// True when `creds` is `None` (no auth configured) or the request carries HTTP
/// Basic credentials matching an entry.
pub fn basic_auth_ok(
    headers: &http::HeaderMap,
    creds: Option<&std::collections::BTreeMap<String, String>>,
) -> bool {
    creds.is_none_or(|c| basic_user(headers, c).is_some())
}

/// The user whose HTTP Basic credentials the request carries, if they match.
pub fn basic_user(
    headers: &http::HeaderMap,
    creds: &std::collections::BTreeMap<String, String>,
) -> Option<String> {
    use base64::Engine;
    let basic = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(basic.trim())
        .ok()?;
    let decoded = String::from_utf8_lossy(&decoded);
    let (user, pass) = decoded.split_once(':').unwrap_or((&decoded, ""));
    (creds.get(user)? == pass).then(|| user.to_string())
}

/// `true`/`false` query flags as Go's `strconv.ParseBool` reads them.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// The decoded query string of `uri` as ordered pairs.
pub fn query_pairs(uri: &http::Uri) -> Vec<(String, String)> {
    uri.query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

/// The value of an `X-Stream-Error` trailer: the bare message, as kubo's
/// go-ipfs-cmds writes it (`err.Error()`) and its clients read it back
/// (`errors.New(trailer)`), with line breaks and other control characters,
/// which a header value cannot carry, turned into spaces.
pub fn stream_error_value(message: &str) -> HeaderValue {
    let clean: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    // Without control characters every byte is one a header value may hold.
    HeaderValue::from_bytes(clean.as_bytes()).unwrap_or(HeaderValue::from_static("error"))
}

/// Trailers holding only an `X-Stream-Error` with `message` (empty when all
/// went well: upstream sends it so for JS clients).
pub fn stream_error_trailer(message: &str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("x-stream-error", stream_error_value(message));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_for_a_free_slot() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listeners = bind(&["/ip4/127.0.0.1/tcp/0".to_string()]).await.unwrap();
        let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
        let addr = serve_capped(
            "capped",
            listeners,
            |_req, _remote| async { Response::new(full("ok")) },
            ServerOptions {
                header_read_timeout: Duration::from_secs(30),
                max_header_bytes: 8192,
            },
            2,
            &tasks,
            cancel.clone(),
        )[0];
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        async fn answered(s: &mut tokio::net::TcpStream, wait: Duration) -> bool {
            let mut buf = [0u8; 256];
            matches!(tokio::time::timeout(wait, s.read(&mut buf)).await, Ok(Ok(n)) if n > 0)
        }
        // Two idle keep-alive connections take both slots.
        let mut a = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut b = tokio::net::TcpStream::connect(addr).await.unwrap();
        a.write_all(get).await.unwrap();
        b.write_all(get).await.unwrap();
        assert!(answered(&mut a, Duration::from_secs(5)).await);
        assert!(answered(&mut b, Duration::from_secs(5)).await);
        // A third connects (the kernel queues it) but is not served...
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(get).await.unwrap();
        assert!(!answered(&mut c, Duration::from_millis(500)).await);
        // ...until one of the others closes.
        drop(a);
        assert!(answered(&mut c, Duration::from_secs(5)).await);
        cancel.cancel();
    }

    #[test]
    fn stream_error_trailers_carry_the_bare_message_on_one_line() {
        assert_eq!(stream_error_value("pin failed: boom"), "pin failed: boom");
        assert_eq!(stream_error_value("a\nb\r\tc"), "a b  c");
        assert_eq!(
            stream_error_value("nœud absent").as_bytes(),
            "nœud absent".as_bytes()
        );
    }
}
