//! The pass-through's fast path: plain calls relayed at the byte level, as
//! nginx's `proxy_pass` does, without building HTTP messages on either side.
//!
//! A client connection starts here. Each request head is parsed in place
//! (httparse) and, when it is a plain call this path knows how to relay, its head
//! is rewritten into the daemon connection's buffer (hop-by-hop headers out,
//! `Host`, credentials and `X-Forwarded-For` as the pass-through sets them) and
//! the daemon's answer is copied back with its own framing (`Content-Length`,
//! chunks and trailers byte for byte). Anything else — an intercepted command,
//! credentials to check, an upgrade, `Expect`, a chunked or large upload, an
//! oversized head, an unreachable daemon — hands the connection, with the bytes
//! already read, to the hyper server for the rest of its life, where every
//! behaviour lives. So this path only ever does less than the general one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::error::kubo_error_body;
use super::passthrough::CONNECT_TIMEOUT;
use crate::http::Handoff;

/// Request bodies up to this size are relayed here (read whole first, so that a
/// call on a kept connection the daemon closed meanwhile can be sent again).
const BODY_MAX: usize = 64 * 1024;
/// Headers a head may have here; more go to the general path.
const MAX_HEADERS: usize = 64;
/// The daemon's answer head may be this large.
const RESPONSE_HEAD_MAX: usize = 64 * 1024;
/// First read size for answers being relayed.
const COPY_BUF: usize = 64 * 1024;
/// Read size a large body's relay grows to, doubling from `COPY_BUF` each time
/// a read fills the buffer. One read and one write of up to this much per
/// round moved a 1 GiB stream 1.1–1.4× as fast as splicing it through a pipe
/// and 1.2× as fast as 256 KiB (`scripts/bench.sh proxy`'s backend, by hand):
/// the cost is per system call, not per byte copied. It is held only while a
/// body is relayed.
const COPY_BUF_MAX: usize = 1024 * 1024;
/// Room for an answer's head (and a small body with it); a connection keeps
/// no larger answer buffer between calls, so thousands of kept-alive clients
/// that once fetched something large do not each hold up to `COPY_BUF_MAX`.
const HEAD_BUF: usize = 16 * 1024;
/// Idle daemon connections kept for new clients.
const MAX_IDLE: usize = 64;
/// How long an idle daemon connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a call in progress may go on once the proxy is shutting down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the fast path needs to know of the proxy.
pub struct FastPath {
    /// The daemon's socket address (the fast path is off for a host name).
    pub daemon: SocketAddr,
    /// The `daemon` as `host:port`, sent as `Host`.
    pub host: String,
    /// The daemon's own `Authorization`, sent in place of the client's.
    pub daemon_auth: Option<String>,
    /// With proxy credentials configured: the `Authorization` values that pass
    /// here (`Basic` and each user's encoded pair, byte for byte). Anything
    /// else goes to the general path, which checks it in full and answers 401.
    accepted_auth: Option<Vec<Vec<u8>>>,
    /// The server's header read timeout.
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may wait for its next call.
    pub idle_timeout: Duration,
    /// Largest request head (counted as Go does); larger go to the general path (431).
    pub max_header_bytes: usize,
    /// Calls that go to the general path.
    pub intercepted: fn(&Method, &str) -> bool,
    /// Idle daemon connections.
    idle: Mutex<Vec<(Instant, TcpStream)>>,
}

/// Why a call could not be finished here.
enum Failed {
    /// The call is not for this path: hand the connection over, unconsumed.
    Handoff,
    /// The connection cannot go on (an I/O error, a malformed answer): close it.
    Close,
}

/// One client connection's state on the fast path.
struct Conn {
    client: TcpStream,
    remote: SocketAddr,
    /// Bytes read from the client and not yet relayed.
    rbuf: BytesMut,
    daemon: Option<TcpStream>,
    /// Scratch buffers: the daemon-bound head, the answer being relayed.
    out: Vec<u8>,
    dbuf: Vec<u8>,
    /// The client's IP, formatted once, for `X-Forwarded-For`.
    ip: String,
}

impl FastPath {
    /// A fast path to the daemon at `daemon`; `credentials` are the proxy's own
    /// users and passwords, when it has any.
    pub fn new(
        daemon: SocketAddr,
        daemon_auth: Option<String>,
        credentials: Option<&BTreeMap<String, String>>,
        (header_read_timeout, idle_timeout): (Duration, Duration),
        max_header_bytes: usize,
        intercepted: fn(&Method, &str) -> bool,
    ) -> Self {
        use base64::Engine;
        // A user name with a colon could never pass the general check (the pair
        // splits at the first colon), so it is not accepted here either.
        let accepted_auth = credentials.map(|c| {
            c.iter()
                .filter(|(user, _)| !user.contains(':'))
                .map(|(user, pass)| {
                    let pair =
                        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                    format!("Basic {pair}").into_bytes()
                })
                .collect()
        });
        FastPath {
            daemon,
            host: daemon.to_string(),
            daemon_auth,
            accepted_auth,
            header_read_timeout,
            idle_timeout,
            max_header_bytes,
            intercepted,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Serves the calls of `client` it can; returns the connection for the
    /// general path at the first call it cannot relay, `None` once it is closed.
    pub async fn serve(
        self: Arc<Self>,
        client: TcpStream,
        remote: SocketAddr,
        cancel: CancellationToken,
    ) -> Option<Handoff> {
        let mut c = Conn {
            client,
            remote,
            rbuf: BytesMut::with_capacity(8 * 1024),
            daemon: None,
            out: Vec::with_capacity(1024),
            dbuf: Vec::new(),
            ip: remote.ip().to_string(),
        };
        // One wait for shutdown for the connection's life, not one per call.
        let mut cancelled = std::pin::pin!(cancel.cancelled());
        loop {
            // Between calls: the next head, unless the proxy is shutting down.
            let head = tokio::select! {
                h = self.read_head(&mut c) => h,
                _ = &mut cancelled => None,
            };
            let Some(head_len) = head else {
                self.release(c.daemon.take());
                return None;
            };
            let grace = async {
                (&mut cancelled).await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            };
            let r = tokio::select! {
                r = self.relay(&mut c, head_len) => r,
                _ = grace => Err(Failed::Close),
            };
            match r {
                Ok(true) => {}
                Ok(false) | Err(Failed::Close) => return None,
                Err(Failed::Handoff) => {
                    self.release(c.daemon.take());
                    return Some(Handoff {
                        read: c.rbuf.freeze(),
                        stream: c.client,
                    });
                }
            }
        }
    }

    /// Reads until `rbuf` holds a whole request head; its length, or `None` when
    /// the client is gone or too slow. A head too large for this path is
    /// reported as complete, for `relay` to hand over.
    async fn read_head(&self, c: &mut Conn) -> Option<usize> {
        // As Go's server: a kept-alive connection waits for its next call up to
        // the idle timeout; once a head has begun it must arrive within the
        // header read timeout.
        let now = tokio::time::Instant::now();
        let idle_until = now + self.idle_timeout;
        let head_until = now + self.header_read_timeout;
        loop {
            if let Some(n) = head_end(&c.rbuf) {
                return Some(n);
            }
            if c.rbuf.len() > self.max_header_bytes.max(8192) {
                // Let the general path answer it (431).
                return Some(c.rbuf.len());
            }
            c.rbuf.reserve(4096);
            let at = if c.rbuf.is_empty() {
                idle_until
            } else {
                head_until
            };
            match tokio::time::timeout_at(at, c.client.read_buf(&mut c.rbuf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// Relays the call whose head is the first `head_len` bytes of `rbuf`; true
    /// when the connection may serve another.
    async fn relay(&self, c: &mut Conn, head_len: usize) -> Result<bool, Failed> {
        let started = access_log_enabled().then(Instant::now);
        let plan = self.plan(c, head_len)?;
        // The whole body first (small, see BODY_MAX): the call can then be sent
        // again on a new connection when a kept one turns out closed.
        let total = head_len + plan.body_len;
        while c.rbuf.len() < total {
            c.rbuf.reserve(total - c.rbuf.len());
            match c.client.read_buf(&mut c.rbuf).await {
                Ok(0) | Err(_) => return Err(Failed::Close),
                Ok(_) => {}
            }
        }
        // The head is in `out`: the body joins it, for one write.
        c.out.extend_from_slice(&c.rbuf[head_len..total]);
        let mut answer = None;
        for attempt in 0..2 {
            // A kept connection first, then (again) a new one.
            let kept = if attempt == 0 {
                c.daemon.take().or_else(|| self.pop_idle())
            } else {
                None
            };
            let reused = kept.is_some();
            let mut daemon = match kept {
                Some(d) => d,
                None => match self.connect().await {
                    Ok(d) => d,
                    // The general path answers with the daemon's address and why
                    // (nothing was sent yet).
                    Err(_) if attempt == 0 => return Err(Failed::Handoff),
                    Err(e) => {
                        write_bad_gateway(c, &e.to_string()).await;
                        return Ok(false);
                    }
                },
            };
            let head = match daemon.write_all(&c.out).await {
                Ok(()) => read_response_head(&mut daemon, &mut c.dbuf).await,
                Err(e) => Err(e),
            };
            match head {
                Ok(h) => {
                    answer = Some((daemon, h));
                    break;
                }
                // A kept connection the daemon closed before reading the call
                // (its idle timeout): sent once more on a new one.
                Err(_) if reused && c.dbuf.is_empty() => continue,
                Err(e) => {
                    write_bad_gateway(c, &e.to_string()).await;
                    return Ok(false);
                }
            }
        }
        let Some((mut daemon, head_end)) = answer else {
            write_bad_gateway(c, "the daemon closed the connection").await;
            return Ok(false);
        };
        c.rbuf.advance(total);
        let status = relay_answer(c, &mut daemon, head_end, &plan).await?;
        if c.dbuf.capacity() > HEAD_BUF {
            c.dbuf = Vec::new();
        }
        if let Some(started) = started {
            tracing::debug!(
                target: "ipfs_cluster::access",
                "ipfs proxy: {} \"{}\" {status} {:?}",
                c.remote,
                plan.line,
                started.elapsed()
            );
        }
        if status.keep_daemon {
            c.daemon = Some(daemon);
        }
        Ok(!status.close_client)
    }

    /// Checks that the call is one for this path and writes its daemon-bound head
    /// into `c.out`.
    fn plan(&self, c: &mut Conn, head_len: usize) -> Result<Plan, Failed> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&c.rbuf[..head_len]) {
            Ok(httparse::Status::Complete(n)) if n == head_len => {}
            _ => return Err(Failed::Handoff),
        }
        let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
            return Err(Failed::Handoff);
        };
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| Failed::Handoff)?;
        if !target.starts_with('/') || method == Method::CONNECT {
            return Err(Failed::Handoff);
        }
        let path = target.split('?').next().unwrap_or(target);
        if (self.intercepted)(&method, path) {
            return Err(Failed::Handoff);
        }
        // Go's MaxHeaderBytes count, as the general path's 431 check.
        let mut go_size = method.as_str().len() + target.len() + 12;
        let mut body_len = 0usize;
        let mut seen_length = false;
        let mut close = false;
        let mut xff: Option<&[u8]> = None;
        let mut authorization: Option<&[u8]> = None;
        for h in req.headers.iter() {
            go_size += h.name.len() + h.value.len() + 4;
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = parse_length(h.value).ok_or(Failed::Handoff)?;
                if seen_length || n > BODY_MAX {
                    return Err(Failed::Handoff);
                }
                seen_length = true;
                body_len = n;
            } else if name.eq_ignore_ascii_case(b"connection") {
                for t in connection_options(h.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else {
                        // Headers named hop-by-hop by the client: the general path.
                        return Err(Failed::Handoff);
                    }
                }
            } else if name.eq_ignore_ascii_case(b"x-forwarded-for") {
                if xff.is_some() {
                    return Err(Failed::Handoff);
                }
                xff = Some(h.value);
            } else if name.eq_ignore_ascii_case(b"authorization") {
                if authorization.is_some() {
                    return Err(Failed::Handoff);
                }
                authorization = Some(h.value);
            } else if [
                &b"transfer-encoding"[..],
                b"te",
                b"trailer",
                b"upgrade",
                b"expect",
                b"proxy-authorization",
                b"proxy-authenticate",
            ]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
            {
                return Err(Failed::Handoff);
            }
        }
        if go_size > self.max_header_bytes {
            return Err(Failed::Handoff);
        }
        if let Some(accepted) = &self.accepted_auth {
            let given = authorization.unwrap_or(b"");
            // Every value compared in full, so the time taken does not tell how
            // much of a guess was right.
            let ok = accepted
                .iter()
                .fold(false, |ok, a| ok | constant_time_eq(a, given));
            if !ok {
                return Err(Failed::Handoff);
            }
        }
        // The proxy's own credentials, or the daemon's in place of the client's,
        // never the client's to the daemon when either is configured.
        let drop_client_auth = self.daemon_auth.is_some() || self.accepted_auth.is_some();
        let out = &mut c.out;
        out.clear();
        out.extend_from_slice(method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(self.host.as_bytes());
        out.extend_from_slice(b"\r\n");
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"host")
                || name.eq_ignore_ascii_case(b"connection")
                || name.eq_ignore_ascii_case(b"keep-alive")
                || name.eq_ignore_ascii_case(b"x-forwarded-for")
                || (name.eq_ignore_ascii_case(b"authorization") && drop_client_auth)
            {
                continue;
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(a) = &self.daemon_auth {
            out.extend_from_slice(b"authorization: ");
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        // As the general path: the daemon may send its X-Stream-Error trailer.
        out.extend_from_slice(b"te: trailers\r\nx-forwarded-for: ");
        if let Some(prev) = xff {
            out.extend_from_slice(prev);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(c.ip.as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        let line = if access_log_enabled() {
            format!("{method} {target}")
        } else {
            String::new()
        };
        Ok(Plan {
            head: method == Method::HEAD,
            body_len,
            close,
            line,
        })
    }

    fn pop_idle(&self) -> Option<TcpStream> {
        let mut idle = crate::sync::lock(&self.idle);
        while let Some((at, d)) = idle.pop() {
            if at.elapsed() < IDLE_TIMEOUT {
                return Some(d);
            }
        }
        None
    }

    /// Keeps a daemon connection whose client left for the next client.
    fn release(&self, d: Option<TcpStream>) {
        let Some(d) = d else { return };
        let mut idle = crate::sync::lock(&self.idle);
        idle.retain(|(at, _)| at.elapsed() < IDLE_TIMEOUT);
        if idle.len() < MAX_IDLE {
            idle.push((Instant::now(), d));
        }
    }

    async fn connect(&self) -> std::io::Result<TcpStream> {
        let d = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.daemon))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        d.set_nodelay(true)?;
        Ok(d)
    }
}

/// What a relayed call needs beyond its head.
struct Plan {
    /// A HEAD request: the answer has no body whatever its headers say.
    head: bool,
    body_len: usize,
    /// The client asked to close after this call.
    close: bool,
    /// `METHOD target` for the access log (empty when the log is off).
    line: String,
}

/// How a relayed answer ended.
struct Relayed {
    code: u16,
    keep_daemon: bool,
    close_client: bool,
}

impl std::fmt::Display for Relayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.code)
    }
}

/// The end of the request head in `buf` (after its blank line), if complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// A `Connection` header's options other than `keep-alive` (which HTTP/1.1
/// implies): `close`, or names of headers made hop-by-hop.
fn connection_options(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case(b"keep-alive"))
}

fn parse_length(v: &[u8]) -> Option<usize> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Reads the daemon's answer head into `buf` (cleared first, keeping what
/// follows it); the head's length.
async fn read_response_head(d: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.clear();
    loop {
        if let Some(n) = head_end(buf) {
            return Ok(n);
        }
        if buf.len() > RESPONSE_HEAD_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the daemon's answer head is too large",
            ));
        }
        buf.reserve(HEAD_BUF);
        if d.read_buf(buf).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the daemon closed the connection",
            ));
        }
    }
}

/// Whether calls are logged (and so timed and named).
fn access_log_enabled() -> bool {
    tracing::enabled!(target: "ipfs_cluster::access", tracing::Level::DEBUG)
}

/// Whether `a` and `b` are equal, in a time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// How an answer's body is framed.
enum Framing {
    None,
    Length(u64),
    Chunked(ChunkScanner),
    UntilClose,
}

/// Relays the answer whose head is the first `head_len` bytes of `c.dbuf`
/// (interim 1xx answers included), then its body.
async fn relay_answer(
    c: &mut Conn,
    daemon: &mut TcpStream,
    mut head_len: usize,
    plan: &Plan,
) -> Result<Relayed, Failed> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&c.dbuf[..head_len]) {
            Ok(httparse::Status::Complete(n)) if n == head_len => {}
            _ => return Err(Failed::Close),
        }
        let code = resp.code.ok_or(Failed::Close)?;
        if code == 101 {
            // Never asked for (no Upgrade is relayed here).
            return Err(Failed::Close);
        }
        let interim = (100..200).contains(&code);
        let mut framing = if plan.head || interim || code == 204 || code == 304 {
            Framing::None
        } else {
            Framing::UntilClose
        };
        let mut daemon_close = false;
        let mut named: Vec<&[u8]> = Vec::new();
        for h in resp.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"connection") {
                for t in connection_options(h.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        daemon_close = true;
                    } else {
                        named.push(t);
                    }
                }
            } else if matches!(framing, Framing::None) {
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                let last = h.value.rsplit(|b| *b == b',').next().unwrap_or(b"");
                if !last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Err(Failed::Close);
                }
                framing = Framing::Chunked(ChunkScanner::default());
            } else if name.eq_ignore_ascii_case(b"content-length")
                && !matches!(framing, Framing::Chunked(_))
            {
                let n = parse_length(h.value).ok_or(Failed::Close)?;
                framing = Framing::Length(n as u64);
            }
        }
        let until_close = matches!(framing, Framing::UntilClose);
        let close_client = plan.close || until_close;
        let out = &mut c.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(code.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for h in resp.headers.iter() {
            let name = h.name.as_bytes();
            let hop = [
                &b"connection"[..],
                b"keep-alive",
                b"proxy-authenticate",
                b"proxy-authorization",
                b"te",
                b"upgrade",
            ]
            .iter()
            .chain(named.iter())
            .any(|n| name.eq_ignore_ascii_case(n));
            if hop {
                continue;
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        if close_client && !interim {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        // What of the body came with the head goes out in the same write.
        let after = &c.dbuf[head_len..];
        let (body_part, rest_of_message) = match &mut framing {
            Framing::None => (0, true),
            Framing::Length(n) => {
                let take = (*n).min(after.len() as u64) as usize;
                *n -= take as u64;
                (take, *n == 0)
            }
            Framing::Chunked(s) => {
                let take = s.feed(after).map_err(|_| Failed::Close)?;
                (take, s.done())
            }
            Framing::UntilClose => (after.len(), false),
        };
        out.extend_from_slice(&after[..body_part]);
        let extra = after.len() - body_part;
        if c.client.write_all(out).await.is_err() {
            return Err(Failed::Close);
        }
        if interim {
            // The final answer follows: its head may already be here.
            c.dbuf.drain(..head_len);
            head_len = loop {
                if let Some(n) = head_end(&c.dbuf) {
                    break n;
                }
                if c.dbuf.len() > RESPONSE_HEAD_MAX {
                    return Err(Failed::Close);
                }
                c.dbuf.reserve(COPY_BUF);
                match daemon.read_buf(&mut c.dbuf).await {
                    Ok(0) | Err(_) => return Err(Failed::Close),
                    Ok(_) => {}
                }
            };
            continue;
        }
        let mut clean = extra == 0;
        if !rest_of_message {
            clean &= copy_body(c, daemon, &mut framing).await?;
        }
        return Ok(Relayed {
            code,
            keep_daemon: clean && !daemon_close && !until_close,
            close_client,
        });
    }
}

/// Copies the rest of a body from the daemon to the client; false when the
/// daemon sent more than the message (its connection is not reused). Bytes are
/// relayed as read, framing included, each read in one write.
async fn copy_body(
    c: &mut Conn,
    daemon: &mut TcpStream,
    framing: &mut Framing,
) -> Result<bool, Failed> {
    let buf = &mut c.dbuf;
    buf.clear();
    buf.resize(COPY_BUF, 0);
    loop {
        let n = match daemon.read(buf).await {
            Ok(0) if matches!(framing, Framing::UntilClose) => return Ok(false),
            Ok(0) | Err(_) => return Err(Failed::Close),
            Ok(n) => n,
        };
        let (take, end) = match framing {
            Framing::None => (0, true),
            Framing::Length(left) => {
                let take = (*left).min(n as u64) as usize;
                *left -= take as u64;
                (take, *left == 0)
            }
            Framing::Chunked(s) => {
                let take = s.feed(&buf[..n]).map_err(|_| Failed::Close)?;
                (take, s.done())
            }
            Framing::UntilClose => (n, false),
        };
        if c.client.write_all(&buf[..take]).await.is_err() {
            return Err(Failed::Close);
        }
        if end {
            return Ok(take == n);
        }
        if n == buf.len() && buf.len() < COPY_BUF_MAX {
            buf.resize((buf.len() * 2).min(COPY_BUF_MAX), 0);
        }
    }
}

/// Answers 502 in kubo's shape, then the connection closes.
async fn write_bad_gateway(c: &mut Conn, reason: &str) {
    let body = kubo_error_body(
        super::ErrorCode::Normal,
        &format!("cannot reach the IPFS daemon: {reason}"),
    );
    let mut out = format!(
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    let _ = c.client.write_all(&out).await;
}

/// Follows a chunked body's framing without changing it, to find its end.
#[derive(Default)]
struct ChunkScanner {
    state: ChunkState,
    size: u64,
    digits: u8,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// A chunked body that is not one.
#[derive(Debug)]
struct BadChunk;

impl ChunkScanner {
    /// Scans `buf`; how many of its bytes belong to the body.
    fn feed(&mut self, buf: &[u8]) -> Result<usize, BadChunk> {
        use ChunkState::*;
        let mut i = 0;
        while i < buf.len() && self.state != Done {
            if self.state == Data {
                let take = self.size.min((buf.len() - i) as u64);
                self.size -= take;
                i += take as usize;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = buf[i];
            i += 1;
            self.state = match (self.state, b) {
                (Size, b) if b.is_ascii_hexdigit() => {
                    if self.digits >= 15 {
                        return Err(BadChunk);
                    }
                    self.digits += 1;
                    self.size = self.size * 16 + u64::from((b as char).to_digit(16).unwrap_or(0));
                    Size
                }
                (Size, b';' | b' ' | b'\t') if self.digits > 0 => Ext,
                (Size, b'\r') if self.digits > 0 => SizeLf,
                (Ext, b'\r') => SizeLf,
                (Ext, _) => Ext,
                (SizeLf, b'\n') => {
                    self.digits = 0;
                    if self.size == 0 { TrailerStart } else { Data }
                }
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Size,
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart, _) | (TrailerLine, _) if b != b'\r' => TrailerLine,
                (TrailerLine, b'\r') => TrailerLf,
                (TrailerLf, b'\n') => TrailerStart,
                (EndLf, b'\n') => Done,
                _ => return Err(BadChunk),
            };
        }
        Ok(i)
    }

    fn done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Reads from `s` until `buf` holds a whole request head; its length, or
    /// `None` once the connection ends.
    async fn read_request_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
        loop {
            if let Some(n) = head_end(buf) {
                return Some(n);
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
    }

    /// A scripted daemon: answers each call with its head echoed back as the
    /// body, framed as the call's path says (`/chunked`: chunks and a trailer;
    /// else Content-Length), and closes the first connection after its first
    /// answer (as a daemon's idle timeout would, while the proxy keeps it).
    async fn scripted_daemon() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut first = true;
            while let Ok((mut s, _)) = l.accept().await {
                let close_after_one = std::mem::replace(&mut first, false);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(n) = read_request_head(&mut s, &mut buf).await else {
                            return;
                        };
                        let head: Vec<u8> = buf.drain(..n).collect();
                        let text = String::from_utf8_lossy(&head).to_string();
                        let answer = if text.starts_with("POST /chunked") {
                            format!(
                                "HTTP/1.1 200 OK\r\nTrailer: X-Stream-Error\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{text}\r\n0\r\nX-Stream-Error: boom\r\n\r\n",
                                text.len()
                            )
                        } else {
                            format!(
                                "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: {}\r\n\r\n{}",
                                text.len(),
                                if text.starts_with("HEAD") { "" } else { &text }
                            )
                        };
                        if s.write_all(answer.as_bytes()).await.is_err() || close_after_one {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// A proxy's fast path before `daemon`, serving one client connection; the
    /// client's end and the handoff, if any.
    async fn fast_conn(
        daemon: SocketAddr,
    ) -> (TcpStream, tokio::task::JoinHandle<Option<Handoff>>) {
        fast_conn_with(daemon, None).await
    }

    /// As `fast_conn`, for a proxy with `credentials`.
    async fn fast_conn_with(
        daemon: SocketAddr,
        credentials: Option<&BTreeMap<String, String>>,
    ) -> (TcpStream, tokio::task::JoinHandle<Option<Handoff>>) {
        let fast = Arc::new(FastPath::new(
            daemon,
            None,
            credentials,
            (Duration::from_secs(5), Duration::from_secs(60)),
            8192,
            |_, p| p == "/api/v0/pin/ls",
        ));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, remote) = l.accept().await.unwrap();
        let served = tokio::spawn(fast.serve(server, remote, CancellationToken::new()));
        (client, served)
    }

    /// Reads one answer with a Content-Length body; its head and body.
    async fn read_answer(c: &mut TcpStream, buf: &mut Vec<u8>) -> (String, String) {
        loop {
            if let Some(n) = head_end(buf) {
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length: ")
                            .or(l.strip_prefix("Content-Length: "))
                    })
                    .map_or(0, |v| v.trim().parse().unwrap());
                let len = if head.contains("HEAD-ANSWER") { 0 } else { len };
                if buf.len() >= n + len {
                    let body = String::from_utf8_lossy(&buf[n..n + len]).to_string();
                    buf.drain(..n + len);
                    return (head, body);
                }
            }
            let mut chunk = [0u8; 4096];
            let k = c.read(&mut chunk).await.unwrap();
            assert!(
                k > 0,
                "connection closed; read so far: {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..k]);
        }
    }

    #[tokio::test]
    async fn relays_pipelined_calls_and_sends_again_on_a_kept_connection_the_daemon_closed() {
        let daemon = scripted_daemon().await;
        let (mut c, _served) = fast_conn(daemon).await;
        // Two calls in one write; the daemon closes its connection after the first.
        c.write_all(
            b"POST /api/v0/id HTTP/1.1\r\nHost: proxy\r\nConnection: keep-alive\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n\
              POST /api/v0/version?x=1 HTTP/1.1\r\nHost: proxy\r\nContent-Length: 3\r\n\r\nabc",
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        let (head, body) = read_answer(&mut c, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection"),
            "hop-by-hop relayed: {head}"
        );
        assert!(
            body.starts_with("POST /api/v0/id HTTP/1.1\r\nhost: 127.0.0.1:"),
            "{body}"
        );
        assert!(
            body.contains("x-forwarded-for: 10.0.0.1, 127.0.0.1\r\n"),
            "{body}"
        );
        assert!(!body.to_ascii_lowercase().contains("connection"), "{body}");
        // The second went on a new connection (the kept one was closed), body and all.
        let (_, body) = read_answer(&mut c, &mut buf).await;
        assert!(
            body.starts_with("POST /api/v0/version?x=1 HTTP/1.1\r\n"),
            "{body}"
        );
        assert!(body.contains("Content-Length: 3\r\n"), "{body}");
        // HEAD: the announced length has no body behind it.
        c.write_all(b"HEAD /api/v0/version HTTP/1.1\r\nHost: p\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let k = c.read(&mut chunk).await.unwrap();
            head.extend_from_slice(&chunk[..k]);
            if head_end(&head).is_some() {
                break;
            }
        }
        assert_eq!(
            head_end(&head),
            Some(head.len()),
            "a body after a HEAD answer"
        );
        // Chunks and trailer byte for byte, then the connection goes on.
        c.write_all(b"POST /chunked HTTP/1.1\r\nHost: p\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"X-Stream-Error: boom\r\n\r\n") {
            let mut chunk = [0u8; 4096];
            let k = c.read(&mut chunk).await.unwrap();
            assert!(k > 0);
            got.extend_from_slice(&chunk[..k]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.contains("Trailer: X-Stream-Error\r\nTransfer-Encoding: chunked\r\n"),
            "{text}"
        );
        c.write_all(b"POST /api/v0/id HTTP/1.1\r\nHost: p\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let (_, body) = read_answer(&mut c, &mut buf).await;
        assert!(body.starts_with("POST /api/v0/id "), "{body}");
    }

    #[tokio::test]
    async fn hands_over_what_it_does_not_relay_with_the_bytes_read() {
        let daemon = scripted_daemon().await;
        for call in [
            &b"POST /api/v0/pin/ls?arg=x HTTP/1.1\r\nHost: p\r\n\r\n"[..],
            b"POST /api/v0/id HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST /api/v0/id HTTP/1.1\r\nHost: p\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"POST /api/v0/id HTTP/1.1\r\nHost: p\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n",
            b"GET /api/v0/id HTTP/1.0\r\n\r\n",
            b"POST http://elsewhere/api/v0/id HTTP/1.1\r\nHost: p\r\n\r\n",
        ] {
            let (mut c, served) = fast_conn(daemon).await;
            c.write_all(call).await.unwrap();
            let handoff = served.await.unwrap().expect("a handoff");
            assert_eq!(&handoff.read[..], call, "{}", String::from_utf8_lossy(call));
        }
        // A head over the limit: handed over too (the general path answers 431).
        let (mut c, served) = fast_conn(daemon).await;
        let big = format!(
            "POST /api/v0/id HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(9000)
        );
        c.write_all(big.as_bytes()).await.unwrap();
        assert!(served.await.unwrap().is_some());
    }

    #[tokio::test]
    async fn with_proxy_credentials_relays_only_calls_that_carry_one_exactly() {
        use base64::Engine;
        let daemon = scripted_daemon().await;
        let creds: BTreeMap<String, String> = [
            ("alice".to_string(), "s3cret".to_string()),
            ("bo:b".to_string(), "x".to_string()),
        ]
        .into();
        let basic = |pair: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        };
        // Twice on one connection (the second on a new daemon connection:
        // `scripted_daemon` closes its first after one answer).
        let (mut c, _served) = fast_conn_with(daemon, Some(&creds)).await;
        let mut buf = Vec::new();
        for _ in 0..2 {
            let call = format!(
                "POST /api/v0/id HTTP/1.1\r\nHost: p\r\nAuthorization: {}\r\n\r\n",
                basic("alice:s3cret")
            );
            c.write_all(call.as_bytes()).await.unwrap();
            let (head, body) = read_answer(&mut c, &mut buf).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert!(
                !body.to_ascii_lowercase().contains("authorization"),
                "the client's credentials reached the daemon: {body}"
            );
        }
        // Anything else is for the general path to judge (and refuse).
        for auth in [
            None,
            Some(basic("alice:wrong")),
            Some(basic("alice:s3cretX")),
            Some(basic("bo:b:x")),
            Some(format!("basic {}", &basic("alice:s3cret")[6..])),
        ] {
            let (mut c, served) = fast_conn_with(daemon, Some(&creds)).await;
            let call = match &auth {
                Some(a) => {
                    format!("POST /api/v0/id HTTP/1.1\r\nHost: p\r\nAuthorization: {a}\r\n\r\n")
                }
                None => "POST /api/v0/id HTTP/1.1\r\nHost: p\r\n\r\n".to_string(),
            };
            c.write_all(call.as_bytes()).await.unwrap();
            let handoff = served.await.unwrap().expect("a handoff");
            assert_eq!(&handoff.read[..], call.as_bytes(), "{auth:?}");
        }
    }

    #[tokio::test]
    async fn a_kept_alive_connection_closes_at_shutdown() {
        let daemon = scripted_daemon().await;
        let fast = Arc::new(FastPath::new(
            daemon,
            None,
            None,
            (Duration::from_secs(5), Duration::from_secs(60)),
            8192,
            |_, _| false,
        ));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, remote) = l.accept().await.unwrap();
        let cancel = CancellationToken::new();
        let served = tokio::spawn(fast.serve(server, remote, cancel.clone()));
        // A call first, so that the connection waits between calls.
        client
            .write_all(b"POST /api/v0/id HTTP/1.1\r\nHost: p\r\n\r\n")
            .await
            .unwrap();
        read_answer(&mut client, &mut Vec::new()).await;
        cancel.cancel();
        let r = tokio::time::timeout(Duration::from_secs(2), served)
            .await
            .expect("the connection closes at once");
        assert!(r.unwrap().is_none());
    }

    /// Bytes that show a misplaced or lost run (no period that a shift hides).
    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// `/chunks`'s body as framed on the wire: chunks of mixed sizes (larger
    /// and smaller than the relay's reads) of `pattern(.., seed)`, then a trailer.
    fn chunked_body(seed: u64) -> Vec<u8> {
        const SIZES: [usize; 4] = [300 * 1024, 10, 70 * 1024, (1 << 20) + 3];
        let body = pattern(SIZES.iter().sum(), seed);
        let mut framed = Vec::new();
        let mut at = 0;
        for size in SIZES {
            framed.extend_from_slice(format!("{size:x}\r\n").as_bytes());
            framed.extend_from_slice(&body[at..at + size]);
            framed.extend_from_slice(b"\r\n");
            at += size;
        }
        framed.extend_from_slice(b"0\r\nX-Stream-Error: boom\r\n\r\n");
        framed
    }

    /// A daemon with large answers: `/length` a Content-Length body of 3 MiB,
    /// `/chunks` chunks of mixed sizes with a trailer, `/cut` a body the daemon
    /// stops halfway; every body is `pattern(.., seed)` with the seed in the
    /// path's query.
    async fn large_answer_daemon() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(n) = read_request_head(&mut s, &mut buf).await else {
                            return;
                        };
                        let head = String::from_utf8_lossy(&buf[..n]).to_string();
                        buf.drain(..n);
                        let seed: u64 = head
                            .split(['=', ' '])
                            .nth(2)
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        let mut out = Vec::new();
                        if head.starts_with("POST /chunks") {
                            out.extend_from_slice(
                                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                            );
                            out.extend(chunked_body(seed));
                        } else {
                            let len = 3 << 20;
                            out.extend_from_slice(
                                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n")
                                    .as_bytes(),
                            );
                            let body = pattern(len, seed);
                            let cut = head.starts_with("POST /cut");
                            out.extend_from_slice(if cut { &body[..len / 2] } else { &body });
                            if cut {
                                let _ = s.write_all(&out).await;
                                return;
                            }
                        }
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Reads from `c` until `want` bytes came, or the connection closes.
    async fn read_exactly(c: &mut TcpStream, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        while got.len() < want {
            match c.read(&mut chunk).await.unwrap() {
                0 => break,
                k => got.extend_from_slice(&chunk[..k]),
            }
        }
        got
    }

    #[tokio::test]
    async fn relays_large_bodies_byte_for_byte_and_the_connection_goes_on() {
        let daemon = large_answer_daemon().await;
        let (mut c, _served) = fast_conn(daemon).await;
        for (path, seed) in [("/length", 7u64), ("/chunks", 8), ("/length", 9)] {
            c.write_all(format!("POST {path}?seed={seed} HTTP/1.1\r\nHost: p\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let expected_body = if path == "/chunks" {
                chunked_body(seed)
            } else {
                pattern(3 << 20, seed)
            };
            let mut head = Vec::new();
            while head_end(&head).is_none() {
                head.extend(read_exactly(&mut c, 1).await);
            }
            let n = head_end(&head).unwrap();
            let mut body = head[n..].to_vec();
            let rest = expected_body.len() - body.len();
            body.extend(read_exactly(&mut c, rest).await);
            assert_eq!(body.len(), expected_body.len(), "{path}: body length");
            assert!(body == expected_body, "{path}: body bytes differ");
        }
        // A body cut short by the daemon ends the client's connection too,
        // rather than leaving it waiting or out of step.
        c.write_all(b"POST /cut?seed=1 HTTP/1.1\r\nHost: p\r\n\r\n")
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), read_exactly(&mut c, 4 << 20))
            .await
            .expect("the connection closes");
        assert!(got.len() < 3 << 20, "{}", got.len());
    }

    #[test]
    fn chunk_scanner_finds_the_end_of_a_body_with_trailers_in_any_split() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Stream-Error: boom\r\n\r\n";
        for split in 0..body.len() {
            let mut s = ChunkScanner::default();
            let a = s.feed(&body[..split]).unwrap();
            assert_eq!(a, split);
            let mut tail = body[split..].to_vec();
            tail.extend_from_slice(b"NEXT");
            let b = s.feed(&tail).unwrap();
            assert!(s.done(), "split {split}");
            assert_eq!(split + b, body.len(), "split {split}");
        }
        for bad in [&b"zz\r\n"[..], b"\r\n", b"5\r\nhelloXX", b"0\r\n\r\r"] {
            assert!(ChunkScanner::default().feed(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lengths() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"123"), Some(123));
        for bad in [&b""[..], b"-1", b"1 2", b"+3", b"99999999999999999999"] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }
}
