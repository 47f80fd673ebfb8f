//! The pin tracker: drives this peer's daemon towards the shared pinset.
//!
//! It holds only in-flight and failed operations (CID → operation with a kind, a
//! phase, attempts and an error); everything else is derived from the pinset and
//! the daemon. An opposing operation on a CID cancels the one pending or running.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::TrackerConfig;
use crate::ipfs::{DaemonPins, IpfsConnector, IpfsError};
use crate::raft::StateEvent;
use crate::state::PinState;
use crate::types::{Cid, Pin, PinMode, TrackerStatus};

/// Pin or unpin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Pin on the daemon.
    Pin,
    /// Unpin from the daemon.
    Unpin,
}

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a worker.
    Queued,
    /// A worker is on it.
    InProgress,
    /// Finished well.
    Done,
    /// Failed (or was cancelled).
    Error,
}

/// A copy of an operation's observable state.
#[derive(Debug, Clone)]
pub struct OpState {
    /// Pin or unpin.
    pub kind: OpKind,
    /// Its phase.
    pub phase: Phase,
    /// The failure, in phase `Error`.
    pub error: String,
    /// How many times it was tried.
    pub attempts: u32,
    /// When the phase last changed.
    pub timestamp: DateTime<Utc>,
    /// Blocks fetched so far (pins).
    pub progress: u64,
}

impl OpState {
    /// The tracker status this operation shows.
    pub fn status(&self) -> TrackerStatus {
        match (self.kind, self.phase) {
            (OpKind::Pin, Phase::Queued) => TrackerStatus::PinQueued,
            (OpKind::Pin, Phase::InProgress) => TrackerStatus::Pinning,
            (OpKind::Pin, Phase::Done) => TrackerStatus::Pinned,
            (OpKind::Pin, Phase::Error) => TrackerStatus::PinError,
            (OpKind::Unpin, Phase::Queued) => TrackerStatus::UnpinQueued,
            (OpKind::Unpin, Phase::InProgress) => TrackerStatus::Unpinning,
            (OpKind::Unpin, Phase::Done) => TrackerStatus::Unpinned,
            (OpKind::Unpin, Phase::Error) => TrackerStatus::UnpinError,
        }
    }
}

/// A CID's status on this peer.
#[derive(Debug, Clone)]
pub struct LocalStatus {
    /// The status.
    pub status: TrackerStatus,
    /// Error text for error statuses.
    pub error: String,
    /// Attempts of the current operation.
    pub attempt_count: u32,
    /// When the status was set.
    pub timestamp: DateTime<Utc>,
}

impl LocalStatus {
    fn now(status: TrackerStatus, error: impl Into<String>) -> Self {
        LocalStatus {
            status,
            error: error.into(),
            attempt_count: 0,
            timestamp: Utc::now(),
        }
    }
}

impl From<&OpState> for LocalStatus {
    fn from(op: &OpState) -> Self {
        LocalStatus {
            status: op.status(),
            error: op.error.clone(),
            attempt_count: op.attempts,
            timestamp: op.timestamp,
        }
    }
}

struct Operation {
    id: u64,
    pin: Pin,
    cancel: CancellationToken,
    state: watch::Sender<OpState>,
}

type Ticket = (Cid, u64);
/// A queue of tickets shared by workers.
type Queue = Arc<tokio::sync::Mutex<mpsc::Receiver<Ticket>>>;

struct Inner {
    ops: Mutex<HashMap<Cid, Operation>>,
    next_id: AtomicU64,
    /// New pins: served first.
    pin_tx: mpsc::Sender<Ticket>,
    /// Retries of failed pins: served when no new pin waits.
    retry_tx: mpsc::Sender<Ticket>,
    unpin_tx: mpsc::Sender<Ticket>,
    ipfs: IpfsConnector,
    state: PinState,
    peer_id: String,
    processed: watch::Sender<u64>,
    shutdown: CancellationToken,
    daemon_cache: tokio::sync::Mutex<Option<(std::time::Instant, Arc<DaemonPins>)>>,
    /// Pins this peer's daemon completed, and pin attempts that failed.
    pins_added: AtomicU64,
    pin_add_errors: AtomicU64,
}

/// What the tracker is doing and has done, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackerCounts {
    /// Pins waiting for a worker.
    pub pin_queued: u64,
    /// Pins in progress.
    pub pinning: u64,
    /// Pins that failed and wait for a retry.
    pub pin_error: u64,
    /// Pins completed since the start.
    pub pins_added: u64,
    /// Pin attempts failed since the start.
    pub pin_add_errors: u64,
}

/// How long a listing of the daemon's pins serves status requests.
const DAEMON_PINS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(3);

/// The pin tracker of one peer.
#[derive(Clone)]
pub struct PinTracker {
    inner: Arc<Inner>,
}

const QUEUE_FULL: &str = "pin/unpin operation queue is full. Try increasing max_pin_queue_size";

impl PinTracker {
    /// Starts the workers and the loop consuming `events` on `tasks`; all stop with `shutdown`.
    pub fn start(
        cfg: &TrackerConfig,
        ipfs: IpfsConnector,
        state: PinState,
        peer_id: String,
        events: mpsc::Receiver<StateEvent>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let (pin_tx, pin_rx) = mpsc::channel(cfg.max_pin_queue_size);
        let (retry_tx, retry_rx) = mpsc::channel(cfg.max_pin_queue_size);
        let (unpin_tx, unpin_rx) = mpsc::channel(cfg.max_pin_queue_size);
        let tracker = PinTracker {
            inner: Arc::new(Inner {
                ops: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                pin_tx,
                retry_tx,
                unpin_tx,
                ipfs,
                state,
                peer_id,
                processed: watch::channel(0).0,
                shutdown,
                daemon_cache: tokio::sync::Mutex::new(None),
                pins_added: AtomicU64::new(0),
                pin_add_errors: AtomicU64::new(0),
            }),
        };
        let pin_rx = Arc::new(tokio::sync::Mutex::new(pin_rx));
        let retry_rx = Arc::new(tokio::sync::Mutex::new(retry_rx));
        for _ in 0..cfg.concurrent_pins {
            let (t, rx, retries) = (tracker.clone(), pin_rx.clone(), retry_rx.clone());
            tasks.spawn(async move { t.worker(rx, Some(retries)).await });
        }
        // Unpins are cheap and serialised, as upstream does.
        let (t, rx) = (tracker.clone(), Arc::new(tokio::sync::Mutex::new(unpin_rx)));
        tasks.spawn(async move { t.worker(rx, None).await });
        let t = tracker.clone();
        tasks.spawn(async move { t.event_loop(events).await });
        tracker
    }

    fn ops(&self) -> MutexGuard<'_, HashMap<Cid, Operation>> {
        // A poisoned map only means a panic elsewhere; its data is still consistent
        // because every update is a single insert/remove/send.
        self.inner.ops.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn event_loop(&self, mut events: mpsc::Receiver<StateEvent>) {
        let shutdown = self.inner.shutdown.clone();
        loop {
            let ev = tokio::select! {
                ev = events.recv() => ev,
                _ = shutdown.cancelled() => None,
            };
            match ev {
                None => break,
                Some(StateEvent::Pinned(pin)) => self.track(*pin),
                Some(StateEvent::Unpinned(cid)) => self.untrack(cid),
                Some(StateEvent::Reset) => {
                    if let Err(e) = self.recover_all().await {
                        tracing::warn!("resync after snapshot install: {e}");
                    }
                }
                Some(StateEvent::Applied(index)) => {
                    self.inner.processed.send_replace(index);
                }
            }
        }
        // Closing the queues lets the workers drain out.
        self.cancel_all();
    }

    /// Starts pinning `pin` if it is allocated here, else makes sure it is not pinned here.
    pub fn track(&self, pin: Pin) {
        self.track_as(pin, false);
    }

    fn track_as(&self, pin: Pin, retry: bool) {
        if pin.is_allocated_to(&self.inner.peer_id) {
            self.enqueue(OpKind::Pin, pin, retry);
        } else {
            self.enqueue(OpKind::Unpin, pin, retry);
        }
    }

    /// Starts unpinning `cid`.
    pub fn untrack(&self, cid: Cid) {
        self.enqueue(
            OpKind::Unpin,
            Pin::new(cid, crate::types::PinOptions::default()),
            false,
        );
    }

    fn enqueue(&self, kind: OpKind, pin: Pin, retry: bool) {
        let cid = pin.cid;
        let mut ops = self.ops();
        if let Some(op) = ops.get(&cid) {
            let cur = op.state.borrow().clone();
            let same_pin = kind == OpKind::Unpin || op.pin.mode() == pin.mode();
            if cur.kind == kind
                && matches!(cur.phase, Phase::Queued | Phase::InProgress)
                && same_pin
            {
                return;
            }
            op.cancel.cancel();
            op.state.send_modify(|s| {
                if matches!(s.phase, Phase::Queued | Phase::InProgress) {
                    s.phase = Phase::Error;
                    s.error = "operation cancelled".into();
                }
            });
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (state, _) = watch::channel(OpState {
            kind,
            phase: Phase::Queued,
            error: String::new(),
            attempts: 0,
            timestamp: Utc::now(),
            progress: 0,
        });
        let tx = match (kind, retry) {
            (OpKind::Pin, false) => &self.inner.pin_tx,
            (OpKind::Pin, true) => &self.inner.retry_tx,
            (OpKind::Unpin, _) => &self.inner.unpin_tx,
        };
        if tx.try_send((cid, id)).is_err() {
            state.send_modify(|s| {
                s.phase = Phase::Error;
                s.error = QUEUE_FULL.into();
            });
        }
        ops.insert(
            cid,
            Operation {
                id,
                pin,
                cancel: self.inner.shutdown.child_token(),
                state,
            },
        );
    }

    async fn worker(&self, rx: Queue, retries: Option<Queue>) {
        loop {
            let ticket = {
                let mut rx = rx.lock().await;
                match &retries {
                    Some(retries) => {
                        let mut retries = retries.lock().await;
                        tokio::select! {
                            biased;
                            t = rx.recv() => t,
                            t = retries.recv() => t,
                            _ = self.inner.shutdown.cancelled() => None,
                        }
                    }
                    None => tokio::select! {
                        t = rx.recv() => t,
                        _ = self.inner.shutdown.cancelled() => None,
                    },
                }
            };
            let Some((cid, id)) = ticket else { break };
            let job = {
                let ops = self.ops();
                match ops.get(&cid) {
                    Some(op) if op.id == id && op.state.borrow().phase == Phase::Queued => {
                        op.state.send_modify(|s| {
                            s.phase = Phase::InProgress;
                            s.attempts += 1;
                            s.timestamp = Utc::now();
                        });
                        Some((
                            op.pin.clone(),
                            op.cancel.clone(),
                            op.state.clone(),
                            op.state.borrow().kind,
                        ))
                    }
                    _ => None, // superseded or cancelled meanwhile
                }
            };
            let Some((pin, cancel, state, kind)) = job else {
                continue;
            };
            let res = match kind {
                OpKind::Pin => {
                    self.inner
                        .ipfs
                        .pin_with_origins(
                            &pin.cid,
                            pin.mode(),
                            &pin.options.origins,
                            &cancel,
                            |p| state.send_modify(|s| s.progress = p),
                        )
                        .await
                }
                OpKind::Unpin => self.inner.ipfs.unpin(&pin.cid, &cancel).await,
            };
            self.finish(cid, id, res);
        }
    }

    fn finish(&self, cid: Cid, id: u64, res: Result<(), IpfsError>) {
        let mut ops = self.ops();
        let Some(op) = ops.get(&cid).filter(|op| op.id == id) else {
            return;
        };
        let kind = op.state.borrow().kind;
        let counter = match (&res, kind) {
            (Ok(()), OpKind::Pin) => Some(&self.inner.pins_added),
            (Err(IpfsError::Cancelled), _) => None,
            (Err(_), OpKind::Pin) => Some(&self.inner.pin_add_errors),
            _ => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        match res {
            Ok(()) => {
                op.state.send_modify(|s| {
                    s.phase = Phase::Done;
                    s.error.clear();
                    s.timestamp = Utc::now();
                });
                ops.remove(&cid);
            }
            Err(IpfsError::Cancelled) => {}
            Err(e) => {
                tracing::warn!(%cid, "ipfs operation failed: {e}");
                op.state.send_modify(|s| {
                    s.phase = Phase::Error;
                    s.error = e.to_string();
                    s.timestamp = Utc::now();
                });
            }
        }
    }

    fn cancel_all(&self) {
        for op in self.ops().values() {
            op.cancel.cancel();
        }
    }

    /// Pin operations by phase, and pins done and failed since the start.
    pub fn counts(&self) -> TrackerCounts {
        let mut c = TrackerCounts {
            pins_added: self.inner.pins_added.load(Ordering::Relaxed),
            pin_add_errors: self.inner.pin_add_errors.load(Ordering::Relaxed),
            ..Default::default()
        };
        for op in self.ops().values() {
            let s = op.state.borrow();
            match (s.kind, s.phase) {
                (OpKind::Pin, Phase::Queued) => c.pin_queued += 1,
                (OpKind::Pin, Phase::InProgress) => c.pinning += 1,
                (OpKind::Pin, Phase::Error) => c.pin_error += 1,
                _ => {}
            }
        }
        c
    }

    /// Operations waiting for a worker.
    pub fn queued(&self) -> usize {
        self.ops()
            .values()
            .filter(|op| op.state.borrow().phase == Phase::Queued)
            .count()
    }

    /// The operation on `cid`, if one is in flight or failed.
    pub fn operation(&self, cid: &Cid) -> Option<OpState> {
        self.ops().get(cid).map(|op| op.state.borrow().clone())
    }

    /// Waits until the state changes up to log `index` have reached the tracker, then
    /// until the operation they started on `cid` ends. Returns its final state, or
    /// `None` when no operation is left: it was not needed or already finished well
    /// (failed operations stay until retried, so they are always seen).
    pub async fn wait_operation(&self, cid: &Cid, index: u64) -> Option<OpState> {
        let mut processed = self.inner.processed.subscribe();
        if processed.wait_for(|p| *p >= index).await.is_err() {
            return None;
        }
        let mut rx = self.ops().get(cid).map(|op| op.state.subscribe())?;
        let res = rx
            .wait_for(|s| matches!(s.phase, Phase::Done | Phase::Error))
            .await
            .map(|s| s.clone());
        match res {
            Ok(s) => Some(s),
            // The sender is dropped only once the operation ended and left the map.
            Err(_) => Some(rx.borrow().clone()),
        }
    }

    /// This peer's status for `cid`, asking the daemon when no operation explains it.
    pub async fn status(&self, cid: &Cid) -> LocalStatus {
        let pin = match self.inner.state.get(cid) {
            Ok(p) => p,
            Err(e) => return LocalStatus::now(TrackerStatus::ClusterError, e.to_string()),
        };
        if let Some(op) = self.operation(cid) {
            return Self::op_status(pin.as_ref(), &op, &self.inner.peer_id);
        }
        let Some(pin) = pin else {
            return LocalStatus::now(TrackerStatus::Unpinned, "");
        };
        if !pin.is_allocated_to(&self.inner.peer_id) {
            return LocalStatus::now(TrackerStatus::Remote, "");
        }
        match self.inner.ipfs.pin_ls_cid(cid).await {
            Ok(mode) => Self::classify(&pin, mode),
            Err(e) => LocalStatus::now(TrackerStatus::PinError, e.to_string()),
        }
    }

    fn classify(pin: &Pin, on_daemon: Option<PinMode>) -> LocalStatus {
        let pinned = matches!(
            (pin.mode(), on_daemon),
            (_, Some(PinMode::Recursive)) | (PinMode::Direct, Some(PinMode::Direct))
        );
        if pinned {
            LocalStatus::now(TrackerStatus::Pinned, "")
        } else {
            LocalStatus::now(
                TrackerStatus::UnexpectedlyUnpinned,
                "the item should be pinned but it is not",
            )
        }
    }

    /// The daemon's pins, fetched at most every few seconds: a status of every pin
    /// goes through the pinset page by page and must not list the daemon's pins
    /// again for each page.
    pub async fn daemon_pins(&self) -> Result<Arc<DaemonPins>, String> {
        let mut cache = self.inner.daemon_cache.lock().await;
        if let Some((at, pins)) = cache.as_ref()
            && at.elapsed() < DAEMON_PINS_MAX_AGE
        {
            return Ok(pins.clone());
        }
        let pins = Arc::new(self.inner.ipfs.pin_ls().await.map_err(|e| e.to_string())?);
        *cache = Some((std::time::Instant::now(), pins.clone()));
        Ok(pins)
    }

    /// The status of each of `cids` on this peer, in order.
    pub async fn status_many(&self, cids: &[Cid]) -> Vec<LocalStatus> {
        let daemon = self.daemon_pins().await;
        let daemon = daemon.as_deref().map_err(String::as_str);
        let mut out: Vec<LocalStatus> = cids
            .iter()
            .map(|cid| match self.inner.state.get(cid) {
                Ok(Some(pin)) => self.status_with(&pin, daemon),
                Ok(None) => match self.operation(cid) {
                    Some(op) => LocalStatus::from(&op),
                    None => LocalStatus::now(TrackerStatus::Unpinned, ""),
                },
                Err(e) => LocalStatus::now(TrackerStatus::ClusterError, e.to_string()),
            })
            .collect();
        // The listing may predate a pin that finished since: ask the daemon again
        // about the few that look missing before calling them so.
        for (cid, st) in cids.iter().zip(out.iter_mut()) {
            if st.status == TrackerStatus::UnexpectedlyUnpinned {
                *st = self.status(cid).await;
            }
        }
        out
    }

    /// Operations on CIDs that are not in the pinset (unpins in flight or failed).
    pub fn orphans(&self) -> Vec<(Cid, LocalStatus)> {
        self.ops()
            .iter()
            .filter(|(cid, _)| !self.inner.state.has(cid).unwrap_or(true))
            .map(|(cid, op)| (*cid, LocalStatus::from(&*op.state.borrow())))
            .collect()
    }

    /// An operation's status; clearing a pin allocated elsewhere shows as `remote`,
    /// as upstream (which does it synchronously) reports it.
    fn op_status(pin: Option<&Pin>, op: &OpState, me: &str) -> LocalStatus {
        let remote = pin.is_some_and(|p| !p.is_allocated_to(me));
        if remote && op.kind == OpKind::Unpin && op.phase != Phase::Error {
            return LocalStatus::now(TrackerStatus::Remote, "");
        }
        LocalStatus::from(op)
    }

    fn status_with(&self, pin: &Pin, daemon: Result<&DaemonPins, &str>) -> LocalStatus {
        if let Some(op) = self.operation(&pin.cid) {
            return Self::op_status(Some(pin), &op, &self.inner.peer_id);
        }
        if !pin.is_allocated_to(&self.inner.peer_id) {
            return LocalStatus::now(TrackerStatus::Remote, "");
        }
        match daemon {
            Ok(d) => Self::classify(pin, d.get(&pin.cid).copied()),
            Err(e) => LocalStatus::now(TrackerStatus::PinError, e),
        }
    }

    /// Re-queues failed operations and pins that should be on the daemon but are not.
    /// Returns the CIDs re-queued.
    pub async fn recover_all(&self) -> Result<Vec<Cid>, StatusError> {
        let daemon = self
            .inner
            .ipfs
            .pin_ls()
            .await
            .map_err(|e| StatusError(e.to_string()))?;
        let mut requeued = Vec::new();
        for pin in self.inner.state.list() {
            let pin = pin.map_err(|e| StatusError(e.to_string()))?;
            let st = self.status_with(&pin, Ok(&daemon));
            if matches!(
                st.status,
                TrackerStatus::PinError | TrackerStatus::UnexpectedlyUnpinned
            ) {
                requeued.push(pin.cid);
                self.retry(pin);
            }
        }
        let failed_unpins: Vec<Cid> = self
            .ops()
            .iter()
            .filter(|(_, op)| {
                let s = op.state.borrow();
                s.kind == OpKind::Unpin && s.phase == Phase::Error
            })
            .map(|(c, _)| *c)
            .collect();
        for cid in failed_unpins {
            requeued.push(cid);
            self.ops().remove(&cid);
            self.untrack(cid);
        }
        Ok(requeued)
    }

    /// Re-queues the operation on `cid` if it failed or the pin went missing;
    /// returns the status afterwards.
    pub async fn recover(&self, cid: &Cid) -> LocalStatus {
        let st = self.status(cid).await;
        match st.status {
            TrackerStatus::PinError | TrackerStatus::UnexpectedlyUnpinned => {
                match self.inner.state.get(cid) {
                    Ok(Some(pin)) => self.retry(pin),
                    _ => return st,
                }
            }
            TrackerStatus::UnpinError => {
                self.ops().remove(cid);
                self.untrack(*cid);
            }
            _ => return st,
        }
        self.status(cid).await
    }

    fn retry(&self, pin: Pin) {
        // A failed operation must not block its own retry, which `enqueue` would
        // otherwise see as "the same operation already queued".
        let attempts = {
            let mut ops = self.ops();
            ops.remove(&pin.cid)
                .map(|op| op.state.borrow().attempts)
                .unwrap_or(0)
        };
        self.track_as(pin.clone(), true);
        if let Some(op) = self.ops().get(&pin.cid) {
            op.state.send_modify(|s| s.attempts = attempts);
        }
    }
}

/// The status could not be computed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StatusError(pub String);
