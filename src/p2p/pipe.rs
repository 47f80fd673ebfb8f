//! Pipes: many Raft requests and their answers over one long-lived stream per
//! peer pair.
//!
//! A request-response exchange opens a stream per request: a yamux open and
//! close on both sides, protocol negotiation, and timers registered and dropped
//! on libp2p's timer thread, each a wake-up of some task or thread. Under load
//! that was a fifth of the peers' CPU and most of the latency of one write. On a
//! pipe, a request is one frame written by the caller's writer task and read by
//! the remote's reader task; answers come back the same way, matched by ID.
//! Frames written together are flushed together.
//!
//! Requests larger than [`MAX_PIPE_REQUEST`] (snapshot chunks) keep a stream of
//! their own, so that they never hold up heartbeats queued behind them. A peer
//! without the pipe protocol (an earlier version) is reached as before.
//!
//! Frame: version (1), kind, request ID (u64 BE), payload length (u32 BE),
//! payload. A request's answer is a response, a busy refusal (payload: the bound
//! met, u32 BE) or "dropped" (the handler gave no answer).

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::io::{AsyncReadExt, AsyncWriteExt, BufWriter, ReadHalf, WriteHalf};
use libp2p::PeerId;
use libp2p::swarm::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::bandwidth::Bandwidth;
use super::inflight::{InflightLimit, InflightPermit};
use super::pipe_behaviour::InboundPipe;
use super::{Inbound, P2pError, Protocol, Reply};

/// Frame format version.
const VERSION: u8 = 1;
const HEADER: usize = 1 + 1 + 8 + 4;
const REQUEST: u8 = 0;
const RESPONSE: u8 = 1;
const BUSY: u8 = 2;
const DROPPED: u8 = 3;

/// Raft requests up to this size travel on pipes.
pub(super) const MAX_PIPE_REQUEST: usize = 256 * 1024;

/// How long a peer whose pipe closed before any answer is reached the old way
/// (it may be of an earlier version, without pipes) before a pipe is tried again.
const FALLBACK_FOR: Duration = Duration::from_secs(60);

/// Frames are gathered up to this size before a write reaches the stream.
const WRITE_BUFFER: usize = 64 * 1024;

/// Where a request's answer goes.
type Waiter = oneshot::Sender<Result<Vec<u8>, P2pError>>;

/// A frame's header and payload in one buffer.
fn frame(kind: u8, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER + payload.len());
    f.push(VERSION);
    f.push(kind);
    f.extend_from_slice(&id.to_be_bytes());
    // Payloads are bounded by the protocol's limits, far below 4 GiB.
    f.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    f.extend_from_slice(payload);
    f
}

/// Queues a frame for the pipe's writer, counted as sent; false when the pipe
/// is closed.
fn queue_frame(
    frames: &mpsc::UnboundedSender<Vec<u8>>,
    bandwidth: &Bandwidth,
    kind: u8,
    id: u64,
    payload: &[u8],
) -> bool {
    let f = frame(kind, id, payload);
    let size = f.len() as u64;
    let queued = frames.send(f).is_ok();
    if queued {
        bandwidth.sent(Protocol::Raft, size);
    }
    queued
}

/// Reads one frame, counted as received: `None` at a clean end between frames.
async fn read_frame(
    r: &mut ReadHalf<Stream>,
    max: u64,
    bandwidth: &Bandwidth,
) -> io::Result<Option<(u8, u64, Vec<u8>)>> {
    let mut head = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut head[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    if head[0] != VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("pipe frame of version {}, expected {VERSION}", head[0]),
        ));
    }
    let kind = head[1];
    let mut id = [0u8; 8];
    id.copy_from_slice(&head[2..10]);
    let mut len = [0u8; 4];
    len.copy_from_slice(&head[10..14]);
    let len = u32::from_be_bytes(len);
    if u64::from(len) > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("pipe frame of {len} bytes, over the {max}-byte limit"),
        ));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    bandwidth.received(Protocol::Raft, (HEADER + payload.len()) as u64);
    Ok(Some((kind, u64::from_be_bytes(id), payload)))
}

/// Writes queued frames until the queue closes or `cancel` fires; frames queued
/// together go out in one flush.
async fn write_frames(
    w: WriteHalf<Stream>,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    cancel: CancellationToken,
) {
    let body = async move {
        let mut w = BufWriter::with_capacity(WRITE_BUFFER, w);
        let write = async {
            while let Some(f) = frames.recv().await {
                w.write_all(&f).await?;
                while let Ok(f) = frames.try_recv() {
                    w.write_all(&f).await?;
                }
                w.flush().await?;
            }
            io::Result::Ok(())
        };
        tokio::select! {
            _ = cancel.cancelled() => {}
            r = write => if let Err(e) = r {
                tracing::debug!(error = %e, "pipe write failed");
            },
        }
        let _ = w.close().await;
    };
    // multistream-select 0.14 leaves a stream whose protocol confirmation the
    // remote cut short (seen by the read half) in a state where every later
    // write, flush or close panics ("Negotiated: Invalid state"). A peer can
    // cause that: it ends this pipe as a failed write does, not the task.
    if futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(body))
        .await
        .is_err()
    {
        tracing::debug!("pipe stream left unusable by its negotiation; closed");
    }
}

fn what(peer: PeerId) -> String {
    format!("{} request to {peer}", Protocol::Raft.stream_protocol())
}

/// Our end of a pipe we opened: sends requests, routes answers to their callers.
pub(super) struct PipeClient {
    frames: mpsc::UnboundedSender<Vec<u8>>,
    pending: Arc<Mutex<HashMap<u64, Waiter>>>,
    next_id: AtomicU64,
    closed: CancellationToken,
    answered: Arc<AtomicBool>,
    bandwidth: Arc<Bandwidth>,
    peer: PeerId,
}

impl PipeClient {
    fn start(
        stream: Stream,
        peer: PeerId,
        tasks: &TaskTracker,
        cancel: &CancellationToken,
        bandwidth: Arc<Bandwidth>,
    ) -> Arc<Self> {
        let (r, w) = stream.split();
        let (tx, rx) = mpsc::unbounded_channel();
        let closed = cancel.child_token();
        tasks.spawn(write_frames(w, rx, closed.clone()));
        let client = Arc::new(PipeClient {
            frames: tx,
            pending: Arc::default(),
            next_id: AtomicU64::new(0),
            closed: closed.clone(),
            answered: Arc::default(),
            bandwidth: bandwidth.clone(),
            peer,
        });
        let (pending, answered) = (client.pending.clone(), client.answered.clone());
        tasks.spawn(async move {
            let why = tokio::select! {
                _ = closed.cancelled() => "shutting down".to_string(),
                why = read_answers(r, peer, &pending, &answered, &bandwidth) => why,
            };
            closed.cancel();
            let waiters: Vec<Waiter> = crate::sync::lock(&pending)
                .drain()
                .map(|(_, w)| w)
                .collect();
            for w in waiters {
                let _ = w.send(Err(P2pError::Transport(format!(
                    "{}: the pipe closed before the reply ({why})",
                    what(peer)
                ))));
            }
        });
        client
    }

    fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Sends `payload` and waits up to `timeout` for its answer.
    async fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>, P2pError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        crate::sync::lock(&self.pending).insert(id, tx);
        // The reader fails what is pending once it has marked the pipe closed;
        // a request that came in after that must fail here.
        if self.is_closed() || !queue_frame(&self.frames, &self.bandwidth, REQUEST, id, payload) {
            crate::sync::lock(&self.pending).remove(&id);
            return Err(P2pError::Transport(format!(
                "{}: the pipe is closed",
                what(self.peer)
            )));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(P2pError::Shutdown),
            Err(_) => {
                crate::sync::lock(&self.pending).remove(&id);
                Err(P2pError::Timeout(what(self.peer)))
            }
        }
    }
}

impl Drop for PipeClient {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

/// Reads answers until the pipe ends; returns why it ended.
async fn read_answers(
    mut r: ReadHalf<Stream>,
    peer: PeerId,
    pending: &Mutex<HashMap<u64, Waiter>>,
    answered: &AtomicBool,
    bandwidth: &Bandwidth,
) -> String {
    let max = Protocol::Raft.max_response_size();
    loop {
        let (kind, id, payload) = match read_frame(&mut r, max, bandwidth).await {
            Ok(Some(f)) => f,
            Ok(None) => return "closed by the peer".into(),
            Err(e) => return e.to_string(),
        };
        answered.store(true, Ordering::Relaxed);
        let answer = match kind {
            RESPONSE => Ok(payload),
            BUSY => {
                let mut max = [0u8; 4];
                let n = payload.len().min(4);
                max[..n].copy_from_slice(&payload[..n]);
                Err(P2pError::Busy(format!(
                    "{}: refused unanswered (at most {} requests of one peer in flight there); retry",
                    what(peer),
                    u32::from_be_bytes(max)
                )))
            }
            DROPPED => Err(P2pError::Remote(format!(
                "{}: the handler gave no answer",
                what(peer)
            ))),
            other => return format!("unknown pipe frame kind {other}"),
        };
        if let Some(w) = crate::sync::lock(pending).remove(&id) {
            let _ = w.send(answer);
        }
    }
}

/// One peer's pipe, opened on first use.
#[derive(Default)]
struct Slot {
    client: tokio::sync::Mutex<Option<Arc<PipeClient>>>,
    /// Until then the peer is reached without a pipe.
    fallback_until: Mutex<Option<Instant>>,
}

impl Slot {
    /// Whether the peer is, for now, reached without a pipe.
    fn falling_back(&self) -> bool {
        crate::sync::lock(&self.fallback_until).is_some_and(|t| Instant::now() < t)
    }

    /// Whether the slot still holds something: an open pipe (or one being
    /// opened), or a fallback still running.
    fn holds_anything(&self) -> bool {
        let open = self
            .client
            .try_lock()
            .map_or(true, |c| c.as_ref().is_some_and(|c| !c.is_closed()));
        open || self.falling_back()
    }
}

/// Drops the slots nobody is using that hold nothing (peers removed or gone,
/// their pipes closed): the map then grows with the peers in use, not with
/// every peer ever reached.
fn prune(slots: &mut HashMap<PeerId, Arc<Slot>>) {
    slots.retain(|_, s| Arc::strong_count(s) > 1 || s.holds_anything());
}

/// The pipes this host opened, one per peer.
pub(super) struct Pipes {
    slots: Mutex<HashMap<PeerId, Arc<Slot>>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    bandwidth: Arc<Bandwidth>,
    request_timeout: Duration,
}

/// Asks the swarm task for a new stream to a connected peer.
pub(super) type OpenFn<'a> =
    &'a (dyn Fn(PeerId) -> oneshot::Receiver<Result<Stream, P2pError>> + Sync);

impl Pipes {
    pub(super) fn new(
        tasks: TaskTracker,
        cancel: CancellationToken,
        bandwidth: Arc<Bandwidth>,
        request_timeout: Duration,
    ) -> Self {
        Pipes {
            slots: Mutex::default(),
            tasks,
            cancel,
            bandwidth,
            request_timeout,
        }
    }

    /// Sends a Raft request over the pipe to `peer`: `None` when there is none
    /// and none can be opened now (not connected, or a peer without pipes), and
    /// the request must take a stream of its own.
    pub(super) async fn request(
        &self,
        peer: PeerId,
        payload: &[u8],
        open: OpenFn<'_>,
    ) -> Option<Result<Vec<u8>, P2pError>> {
        if payload.len() > MAX_PIPE_REQUEST || self.cancel.is_cancelled() {
            return None;
        }
        let slot = {
            let mut slots = crate::sync::lock(&self.slots);
            match slots.get(&peer) {
                Some(s) => s.clone(),
                None => {
                    prune(&mut slots);
                    slots.entry(peer).or_default().clone()
                }
            }
        };
        if slot.falling_back() {
            return None;
        }
        let client = {
            let mut client = slot.client.lock().await;
            match client.as_ref() {
                Some(c) if !c.is_closed() => c.clone(),
                _ => {
                    let stream =
                        match tokio::time::timeout(super::behaviour::HANDSHAKE_TIMEOUT, open(peer))
                            .await
                        {
                            Ok(Ok(Ok(s))) => s,
                            Ok(Ok(Err(e))) => {
                                tracing::debug!(%peer, error = %e, "no pipe");
                                return None;
                            }
                            _ => return None,
                        };
                    let c = PipeClient::start(
                        stream,
                        peer,
                        &self.tasks,
                        &self.cancel,
                        self.bandwidth.clone(),
                    );
                    *client = Some(c.clone());
                    c
                }
            }
        };
        let answer = client.request(payload, self.request_timeout).await;
        if matches!(answer, Err(P2pError::Transport(_))) && !client.answered.load(Ordering::Relaxed)
        {
            // Closed before any answer: most likely a peer without pipes (an
            // earlier version refuses the protocol, seen only now as the stream
            // was opened optimistically). Raft requests may be sent again, so
            // this one goes on a stream of its own.
            tracing::debug!(%peer, "pipe closed before any answer; not using pipes to this peer for a while");
            *crate::sync::lock(&slot.fallback_until) = Some(Instant::now() + FALLBACK_FOR);
            return None;
        }
        Some(answer)
    }
}

/// What serving an inbound pipe needs from the host.
pub(super) struct ServeCtx {
    pub inbound: mpsc::Sender<Inbound>,
    pub inflight: InflightLimit,
    pub bandwidth: Arc<Bandwidth>,
    pub tasks: TaskTracker,
    pub cancel: CancellationToken,
}

/// Serves a pipe a peer opened: each request goes to the application as an
/// [`Inbound`], under the same per-peer bound as requests on streams of their
/// own; its [`Reply`] writes the answer to the pipe.
pub(super) fn serve(pipe: InboundPipe, ctx: &ServeCtx) {
    let InboundPipe { peer, stream } = pipe;
    let (mut r, w) = stream.split();
    let (tx, rx) = mpsc::unbounded_channel();
    let cancel = ctx.cancel.child_token();
    ctx.tasks.spawn(write_frames(w, rx, cancel.clone()));
    let (inbound, inflight, bandwidth) = (
        ctx.inbound.clone(),
        ctx.inflight.clone(),
        ctx.bandwidth.clone(),
    );
    ctx.tasks.spawn(async move {
        let max = Protocol::Raft.max_request_size();
        let serve = async {
            loop {
                let (kind, id, payload) = match read_frame(&mut r, max, &bandwidth).await {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "pipe read failed");
                        break;
                    }
                };
                if kind != REQUEST {
                    tracing::debug!(%peer, kind, "unexpected pipe frame; closing the pipe");
                    break;
                }
                let busy = || {
                    let bound = u32::try_from(inflight.max()).unwrap_or(u32::MAX);
                    queue_frame(&tx, &bandwidth, BUSY, id, &bound.to_be_bytes());
                };
                let Some(permit) = inflight.try_acquire(peer, Protocol::Raft) else {
                    tracing::warn!(%peer, "too many requests in flight from this peer; refused as busy");
                    busy();
                    continue;
                };
                let req = Inbound {
                    protocol: Protocol::Raft,
                    peer,
                    payload,
                    reply: Reply::pipe(PipeReply {
                        frames: tx.clone(),
                        id,
                        _permit: permit,
                        bandwidth: bandwidth.clone(),
                    }),
                };
                match inbound.try_send(req) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(req)) => {
                        tracing::warn!(%peer, "inbound queue full; request refused as busy");
                        // Not a "dropped": the refusal says why.
                        req.reply.forget();
                        busy();
                    }
                    Err(mpsc::error::TrySendError::Closed(req)) => {
                        req.reply.forget();
                        break;
                    }
                }
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = serve => {}
        }
        // The writer ends once every reply (holding a sender) is done.
        drop(tx);
    });
}

/// The way back for an answer to a request that came over a pipe.
pub(super) struct PipeReply {
    frames: mpsc::UnboundedSender<Vec<u8>>,
    id: u64,
    _permit: InflightPermit,
    bandwidth: Arc<Bandwidth>,
}

impl PipeReply {
    /// Queues the answer; a closed pipe has no one to tell.
    pub(super) fn send(&self, payload: &[u8]) {
        if (payload.len() as u64) > Protocol::Raft.max_response_size() {
            tracing::error!(size = payload.len(), "raft response too large; not sent");
            self.dropped();
            return;
        }
        queue_frame(&self.frames, &self.bandwidth, RESPONSE, self.id, payload);
    }

    /// Tells the requester that no answer will come.
    pub(super) fn dropped(&self) {
        queue_frame(&self.frames, &self.bandwidth, DROPPED, self.id, &[]);
    }
}

#[cfg(test)]
mod prune_tests {
    use super::*;

    #[test]
    fn prune_keeps_slots_in_use_or_holding_something_and_drops_the_rest() {
        let (gone, in_use, falling_back, fallback_over) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let mut slots: HashMap<PeerId, Arc<Slot>> = HashMap::new();
        for p in [gone, in_use, falling_back, fallback_over] {
            slots.insert(p, Arc::default());
        }
        let held = slots[&in_use].clone();
        *crate::sync::lock(&slots[&falling_back].fallback_until) =
            Some(Instant::now() + Duration::from_secs(60));
        *crate::sync::lock(&slots[&fallback_over].fallback_until) = Some(
            Instant::now()
                .checked_sub(Duration::from_secs(1))
                .unwrap_or_else(Instant::now),
        );
        prune(&mut slots);
        let mut left: Vec<PeerId> = slots.keys().copied().collect();
        left.sort();
        let mut want = vec![in_use, falling_back];
        want.sort();
        assert_eq!(left, want);
        drop(held);
        prune(&mut slots);
        assert_eq!(
            slots.keys().copied().collect::<Vec<_>>(),
            vec![falling_back]
        );
    }
}
