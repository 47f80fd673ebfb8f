//! The pin tracker: drives this peer's daemon towards the shared pinset.
//!
//! It holds only in-flight and failed operations (CID → operation with a kind, a
//! phase, attempts and an error); everything else is derived from the pinset and
//! the daemon's `pin/ls`, kept as a compact set while a status walk uses it, as
//! upstream's stateless tracker. An opposing operation on a CID cancels the one
//! pending or running. It follows the applied state through a broadcast of
//! changes that never makes Raft wait: when it falls behind, or after a snapshot
//! is installed, it reconciles the pinset with the daemon page by page.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::TrackerConfig;
use crate::ipfs::{DaemonPins, IpfsConnector, IpfsError};
use crate::raft::StateEvent;
use crate::state::{PageFrom, PinState};
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
    /// Held while a reconciliation's operation is queued or running, so that a
    /// reconciliation keeps a bounded number of operations in memory.
    window: Option<OwnedSemaphorePermit>,
    /// Goes in a daemon call of its own (a group call with it failed).
    solo: bool,
}

/// An operation a worker took from the queue.
struct Job {
    cid: Cid,
    id: u64,
    pin: Pin,
    cancel: CancellationToken,
    state: watch::Sender<OpState>,
    kind: OpKind,
    solo: bool,
}

/// The daemon's pins as last listed.
struct DaemonCache {
    fetched: std::time::Instant,
    /// When a page of a walk last used it.
    used: std::time::Instant,
    listing: Listing,
}

impl DaemonCache {
    fn new(listing: Listing) -> Self {
        let now = std::time::Instant::now();
        DaemonCache {
            fetched: now,
            used: now,
            listing,
        }
    }
}

/// Pins this tracker completed since the cached listing of the daemon's pins
/// began: a status page reads them as pinned instead of asking the daemon
/// about each pin its listing lacks (at millions of pins, a daemon that lost
/// many while others were being pinned made a status walk one daemon call
/// per lost pin).
#[derive(Default)]
struct Completed {
    /// The listing they follow; 0 while no listing is cached.
    listing: u64,
    /// Their digests ([`DaemonPins::digest`]).
    digests: HashSet<[u8; 16]>,
    /// More completed than [`COMPLETED_MAX`]: the rest are asked about.
    overflow: bool,
    /// Listings begun so far, to number the next.
    begun: u64,
}

impl Completed {
    /// Starts over for a listing about to be asked for; its number.
    fn begin(&mut self) -> u64 {
        self.begun += 1;
        self.listing = self.begun;
        self.digests.clear();
        self.overflow = false;
        self.listing
    }

    /// Stops recording for listing `number` (dropped, or never made) and
    /// frees the set; a newer listing's record goes on.
    fn end(&mut self, number: u64) {
        if self.listing == number {
            self.listing = 0;
            self.digests = HashSet::new();
            self.overflow = false;
        }
    }
}

type Ticket = (Cid, u64);

/// A listing of the daemon's pins, as a status page uses it.
#[derive(Clone)]
struct Listing {
    pins: Arc<DaemonPins>,
    /// Pins completed when it began: when [`Completed`] lost count, a pin
    /// missing from it is asked about again if any completed since.
    added_before: u64,
    /// Its number, for [`Completed`].
    number: u64,
}

/// The index of the newest entry the pinset holds, if any.
pub type AppliedIndexFn = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

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
    /// What the pinset holds, to tell whether `processed` is behind it.
    applied: AppliedIndexFn,
    shutdown: CancellationToken,
    daemon_cache: tokio::sync::Mutex<Option<DaemonCache>>,
    completed: Mutex<Completed>,
    /// Where the running reconciliation is: pins from there on are not compared
    /// yet, and show as queued when missing from the daemon.
    reconcile_at: Mutex<Option<PageFrom>>,
    /// One reconciliation at a time.
    reconcile_lock: tokio::sync::Mutex<()>,
    /// Set when the tracker missed changes and must reconcile.
    reconcile_wanted: tokio::sync::Notify,
    /// Reconciliations finished since the start.
    reconciled: watch::Sender<u64>,
    /// Operations a reconciliation may have queued or running at once.
    window: Arc<Semaphore>,
    /// Pins this peer's daemon completed, and pin attempts that failed.
    pins_added: AtomicU64,
    pin_add_errors: AtomicU64,
    /// CIDs that daemon calls in progress carry: a call on a CID waits for
    /// the one before it, so that a pin superseded by an unpin (or the other
    /// way) cannot land on the daemon after it.
    on_the_wire: Mutex<HashSet<Cid>>,
    /// Signalled whenever a daemon call ends.
    call_ended: tokio::sync::Notify,
}

/// The CIDs of one daemon call in progress; released when dropped.
struct OnTheWire<'a> {
    tracker: &'a PinTracker,
    cids: Vec<Cid>,
}

impl Drop for OnTheWire<'_> {
    fn drop(&mut self) {
        let mut wire = crate::sync::lock(&self.tracker.inner.on_the_wire);
        for c in &self.cids {
            wire.remove(c);
        }
        drop(wire);
        self.tracker.inner.call_ended.notify_waiters();
    }
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
/// A listing in use by a walk (pages asked for one after another) serves it
/// this long at most.
const DAEMON_PINS_MAX_USE: std::time::Duration = std::time::Duration::from_secs(60);
/// Pins completed since a listing that [`Completed`] keeps (16 bytes and
/// the set's own share each); past it, the others are asked about one by one.
const COMPLETED_MAX: usize = 1 << 16;
/// How many pins a status page or a reconciliation reads at once.
pub const STATUS_PAGE: usize = 1000;
/// Operations a reconciliation keeps queued or running at most.
const RECONCILE_WINDOW: usize = 4096;
/// How many queued operations one daemon call (`pin/add`, `pin/rm` with many
/// `arg`s) carries at most.
const OP_BATCH: usize = 128;
/// How long a call for many operations may take before each goes again alone
/// (a pin the daemon cannot find would otherwise hold back the others).
const BATCH_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a status that would say "unexpectedly unpinned" waits for the
/// tracker to take in the entries applied before it, at most.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(2);
/// How many state changes may wait for the tracker before it falls behind and
/// reconciles instead.
pub const EVENTS_CAPACITY: usize = 16 * 1024;

/// The pin tracker of one peer.
#[derive(Clone)]
pub struct PinTracker {
    inner: Arc<Inner>,
}

const QUEUE_FULL: &str = "pin/unpin operation queue is full. Try increasing max_pin_queue_size";

impl PinTracker {
    /// Starts the workers and the loop consuming `events` on `tasks`; all stop
    /// with `shutdown`. `applied` tells the index the pinset holds.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        cfg: &TrackerConfig,
        ipfs: IpfsConnector,
        state: PinState,
        applied: AppliedIndexFn,
        peer_id: String,
        events: broadcast::Receiver<StateEvent>,
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
                applied,
                shutdown,
                daemon_cache: tokio::sync::Mutex::new(None),
                completed: Mutex::default(),
                reconcile_at: Mutex::new(None),
                reconcile_lock: tokio::sync::Mutex::new(()),
                reconcile_wanted: tokio::sync::Notify::new(),
                reconciled: watch::channel(0).0,
                window: Arc::new(Semaphore::new(
                    RECONCILE_WINDOW.min(cfg.max_pin_queue_size).max(1),
                )),
                pins_added: AtomicU64::new(0),
                on_the_wire: Mutex::new(HashSet::new()),
                call_ended: tokio::sync::Notify::new(),
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
        let t = tracker.clone();
        tasks.spawn(async move { t.housekeeping().await });
        tracker
    }

    /// Reconciles when asked to, and drops the daemon's listing once no walk uses it.
    async fn housekeeping(&self) {
        let shutdown = self.inner.shutdown.clone();
        let mut tick = tokio::time::interval(DAEMON_PINS_MAX_AGE);
        loop {
            tokio::select! {
                _ = self.inner.reconcile_wanted.notified() => {
                    if let Err(e) = self.reconcile(false).await {
                        tracing::warn!("resync with the daemon: {e}");
                    }
                }
                _ = tick.tick() => {
                    let mut cache = self.inner.daemon_cache.lock().await;
                    if let Some(c) = cache.take_if(|c| c.used.elapsed() > DAEMON_PINS_MAX_AGE) {
                        crate::sync::lock(&self.inner.completed).end(c.listing.number);
                    }
                }
                _ = shutdown.cancelled() => break,
            }
        }
    }

    fn ops(&self) -> MutexGuard<'_, HashMap<Cid, Operation>> {
        // A poisoned map only means a panic elsewhere; its data is still consistent
        // because every update is a single insert/remove/send.
        crate::sync::lock(&self.inner.ops)
    }

    async fn event_loop(&self, mut events: broadcast::Receiver<StateEvent>) {
        let shutdown = self.inner.shutdown.clone();
        loop {
            let ev = tokio::select! {
                ev = events.recv() => ev,
                _ = shutdown.cancelled() => Err(RecvError::Closed),
            };
            match ev {
                Err(RecvError::Closed) => break,
                Err(RecvError::Lagged(n)) => {
                    // The changes missed are in the state: compare it with the daemon.
                    tracing::info!("tracker missed {n} state changes; reconciling");
                    self.inner.reconcile_wanted.notify_one();
                }
                Ok(StateEvent::Pinned { pin, before }) => self.track_change(*pin, before),
                Ok(StateEvent::Unpinned(cid)) => self.untrack(cid),
                Ok(StateEvent::Reset) => self.inner.reconcile_wanted.notify_one(),
                Ok(StateEvent::Applied(index)) => {
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

    /// Follows a committed pin that replaced `before`: pins it if allocated here;
    /// unpins it only if this peer held it (allocated here before, or an
    /// operation on it here). A pin this cluster never placed on this daemon is
    /// left alone, unlike upstream, which unpins every remote pin: the daemon may
    /// hold it for someone else (in a composite cluster the lower cluster's one
    /// pinset serves every peer above it), and it saves a `pin/rm` per pin on
    /// each peer it is not allocated to.
    fn track_change(&self, pin: Pin, before: Option<Box<Pin>>) {
        let me = &self.inner.peer_id;
        let held_here = pin.is_allocated_to(me)
            || before.is_some_and(|b| b.is_allocated_to(me))
            || self.ops().contains_key(&pin.cid);
        if held_here {
            self.track(pin);
        }
    }

    fn track_as(&self, pin: Pin, retry: bool) {
        self.track_with(pin, retry, None);
    }

    fn track_with(&self, pin: Pin, retry: bool, window: Option<OwnedSemaphorePermit>) {
        if pin.is_allocated_to(&self.inner.peer_id) {
            self.enqueue(OpKind::Pin, pin, retry, window);
        } else {
            self.enqueue(OpKind::Unpin, pin, retry, window);
        }
    }

    /// Starts unpinning `cid`.
    pub fn untrack(&self, cid: Cid) {
        self.enqueue(
            OpKind::Unpin,
            Pin::new(cid, crate::types::PinOptions::default()),
            false,
            None,
        );
    }

    fn enqueue(
        &self,
        kind: OpKind,
        pin: Pin,
        retry: bool,
        mut window: Option<OwnedSemaphorePermit>,
    ) {
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
            window = None;
        }
        ops.insert(
            cid,
            Operation {
                id,
                pin,
                cancel: self.inner.shutdown.child_token(),
                state,
                window,
                solo: false,
            },
        );
    }

    async fn worker(&self, rx: Queue, retries: Option<Queue>) {
        loop {
            let tickets = {
                let mut rx = rx.lock().await;
                let first = match &retries {
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
                };
                let Some(first) = first else { break };
                // Whatever waits already goes in the same daemon call; a lone
                // operation goes at once.
                let mut tickets = vec![first];
                while tickets.len() < OP_BATCH {
                    match rx.try_recv() {
                        Ok(t) => tickets.push(t),
                        Err(_) => break,
                    }
                }
                tickets
            };
            let jobs: Vec<Job> = {
                let ops = self.ops();
                tickets
                    .into_iter()
                    .filter_map(|(cid, id)| match ops.get(&cid) {
                        Some(op) if op.id == id && op.state.borrow().phase == Phase::Queued => {
                            op.state.send_modify(|s| {
                                s.phase = Phase::InProgress;
                                s.attempts += 1;
                                s.timestamp = Utc::now();
                            });
                            Some(Job {
                                cid,
                                id,
                                pin: op.pin.clone(),
                                cancel: op.cancel.clone(),
                                state: op.state.clone(),
                                kind: op.state.borrow().kind,
                                solo: op.solo,
                            })
                        }
                        _ => None, // superseded or cancelled meanwhile
                    })
                    .collect()
            };
            // Pins with origins dial them first, as upstream, so they go alone;
            // the others go in one call per kind and mode.
            let mut groups: Vec<((OpKind, PinMode), Vec<Job>)> = Vec::new();
            let mut alone = Vec::new();
            for job in jobs {
                if job.solo || (job.kind == OpKind::Pin && !job.pin.options.origins.is_empty()) {
                    alone.push(job);
                    continue;
                }
                let key = (
                    job.kind,
                    match job.kind {
                        OpKind::Pin => job.pin.mode(),
                        // `pin/rm` takes no mode.
                        OpKind::Unpin => PinMode::Recursive,
                    },
                );
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, g)) => g.push(job),
                    None => groups.push((key, vec![job])),
                }
            }
            for ((kind, mode), group) in groups {
                self.run_group(kind, mode, group).await;
            }
            for job in alone {
                self.run_one(job).await;
            }
        }
    }

    /// Waits until no daemon call in progress carries any of `cids`, then
    /// marks them as carried by the caller's call until the guard drops;
    /// `None` when `cancel` fires first.
    async fn on_the_wire(&self, cids: &[Cid], cancel: &CancellationToken) -> Option<OnTheWire<'_>> {
        loop {
            let ended = self.inner.call_ended.notified();
            tokio::pin!(ended);
            // Registered before the check: an end signalled after it is not missed.
            ended.as_mut().enable();
            {
                let mut wire = crate::sync::lock(&self.inner.on_the_wire);
                if !cids.iter().any(|c| wire.contains(c)) {
                    wire.extend(cids.iter().copied());
                    return Some(OnTheWire {
                        tracker: self,
                        cids: cids.to_vec(),
                    });
                }
            }
            tokio::select! {
                _ = ended => {}
                _ = cancel.cancelled() => return None,
            }
        }
    }

    /// Runs `jobs` in one daemon call. When it fails or takes too long, each
    /// goes again on its own (queued again for any worker to take, so that one
    /// slow pin does not hold the others back), to get its own outcome: the
    /// daemon fails a whole call at its first failure.
    async fn run_group(&self, kind: OpKind, mode: PinMode, mut jobs: Vec<Job>) {
        if jobs.len() == 1 {
            if let Some(job) = jobs.pop() {
                self.run_one(job).await;
            }
            return;
        }
        let cids: Vec<Cid> = jobs.iter().map(|j| j.cid).collect();
        let Some(wire) = self.on_the_wire(&cids, &self.inner.shutdown).await else {
            return; // shutting down
        };
        let call = async {
            match kind {
                OpKind::Pin => self.inner.ipfs.pin_many(&cids, mode, |_| {}).await,
                OpKind::Unpin => self.inner.ipfs.unpin_many(&cids).await,
            }
        };
        // Not given up when an operation in it is superseded meanwhile: a
        // daemon may finish a call whose client left, so the operation that
        // superseded it waits for this call to end instead of racing it.
        // Only a shutdown cuts it short (its operations end cancelled).
        let res = tokio::select! {
            r = tokio::time::timeout(BATCH_BUDGET, call) => r.ok(),
            _ = self.inner.shutdown.cancelled() => None,
        };
        drop(wire);
        if let Some(Ok(())) = res {
            for j in jobs {
                self.finish(j.cid, j.id, Ok(()));
            }
            return;
        }
        if let Some(Err(e)) = &res {
            tracing::debug!("a {kind:?} of {} CIDs failed ({e}); one by one", jobs.len());
        }
        for job in jobs {
            if job.cancel.is_cancelled() {
                self.finish(job.cid, job.id, Err(IpfsError::Cancelled));
            } else if kind == OpKind::Unpin || !self.requeue_solo(&job) {
                // Unpins have one worker: it goes on with them itself.
                self.run_one(job).await;
            }
        }
    }

    /// Puts a pin taken in a group call back in the queue, to go alone; false
    /// when the queue is full (the caller then runs it).
    fn requeue_solo(&self, job: &Job) -> bool {
        let mut ops = self.ops();
        let Some(op) = ops.get_mut(&job.cid).filter(|op| op.id == job.id) else {
            return true; // superseded: nothing left to do
        };
        if self.inner.pin_tx.try_send((job.cid, job.id)).is_err() {
            return false;
        }
        op.solo = true;
        // The group call was not an attempt of its own.
        op.state.send_modify(|s| {
            s.phase = Phase::Queued;
            s.attempts = s.attempts.saturating_sub(1);
            s.timestamp = Utc::now();
        });
        true
    }

    async fn run_one(&self, job: Job) {
        let Job {
            cid,
            id,
            pin,
            cancel,
            state,
            kind,
            ..
        } = job;
        let Some(_wire) = self.on_the_wire(&[cid], &cancel).await else {
            self.finish(cid, id, Err(IpfsError::Cancelled));
            return;
        };
        let res = match kind {
            // Cancelling drops the call, which makes kubo stop fetching.
            OpKind::Pin => {
                self.inner
                    .ipfs
                    .pin_with_origins(&pin.cid, pin.mode(), &pin.options.origins, &cancel, |p| {
                        state.send_modify(|s| s.progress = p)
                    })
                    .await
            }
            // Quick: a pin that supersedes it waits for it rather than cutting
            // it short and racing a `pin/rm` the daemon may still carry out.
            OpKind::Unpin => self.inner.ipfs.unpin(&pin.cid, &self.inner.shutdown).await,
        };
        self.finish(cid, id, res);
    }

    fn finish(&self, cid: Cid, id: u64, res: Result<(), IpfsError>) {
        let mut ops = self.ops();
        let Some(op) = ops.get_mut(&cid).filter(|op| op.id == id) else {
            return;
        };
        // A failed operation waits for a recovery without holding the window.
        op.window = None;
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
        if res.is_ok() && kind == OpKind::Pin {
            let mut c = crate::sync::lock(&self.inner.completed);
            if c.listing != 0 {
                if c.digests.len() < COMPLETED_MAX {
                    c.digests.insert(DaemonPins::digest(&cid));
                } else {
                    c.overflow = true;
                }
            }
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
        let st = self.status_now(cid).await;
        if st.status == TrackerStatus::UnexpectedlyUnpinned && self.catch_up().await {
            return self.status_now(cid).await;
        }
        st
    }

    /// Waits, [`CATCH_UP`] at most, until the tracker has taken in every entry
    /// the pinset held when called; false when it had already. A pin committed
    /// a moment ago and missing from the daemon is then queued, not
    /// "unexpectedly unpinned" (its client may ask for its status as soon as
    /// it is answered, before this tracker has read the change).
    pub(crate) async fn catch_up(&self) -> bool {
        let Some(target) = (self.inner.applied)() else {
            return false;
        };
        let mut processed = self.inner.processed.subscribe();
        if *processed.borrow() >= target {
            return false;
        }
        let _ = tokio::time::timeout(CATCH_UP, processed.wait_for(|p| *p >= target)).await;
        true
    }

    async fn status_now(&self, cid: &Cid) -> LocalStatus {
        let pin = match self.inner.state.get_blocking(cid).await {
            Ok(p) => p,
            Err(e) => return LocalStatus::now(TrackerStatus::ClusterError, e.to_string()),
        };
        let op = self.operation(cid);
        let needs_daemon = op.is_none()
            && pin
                .as_ref()
                .is_some_and(|p| p.is_allocated_to(&self.inner.peer_id));
        let daemon = if needs_daemon {
            match self.inner.ipfs.pin_ls_cid(cid).await {
                Ok(mode) => Ok(mode.map(|m| (*cid, m)).into_iter().collect()),
                Err(e) => Err(e.to_string()),
            }
        } else {
            Ok(DaemonPins::default())
        };
        let at = self.reconcile_at();
        compare(
            &self.inner.peer_id,
            cid,
            pin.as_ref(),
            op.as_ref(),
            daemon.as_ref().map_err(String::as_str),
            at.as_ref(),
        )
    }

    fn reconcile_at(&self) -> Option<PageFrom> {
        crate::sync::lock(&self.inner.reconcile_at).clone()
    }

    fn set_reconcile_at(&self, at: Option<PageFrom>) {
        *crate::sync::lock(&self.inner.reconcile_at) = at;
    }

    /// How many pins the daemon holds: a listing at most a few seconds old
    /// when there is one, else a count of the daemon's listing as it streams
    /// (at millions of pins, holding the listing for a count would cost
    /// 16 bytes a pin every time the metric is sent).
    pub async fn daemon_pin_count(&self) -> Result<u64, String> {
        if let Some(c) = self.inner.daemon_cache.lock().await.as_ref()
            && c.fetched.elapsed() < DAEMON_PINS_MAX_AGE
        {
            return Ok(c.listing.pins.len() as u64);
        }
        self.inner.ipfs.pin_count().await.map_err(|e| e.to_string())
    }

    /// The daemon's pins, and how many pins this peer had completed before they
    /// were listed: one listing serves a whole walk of the pinset (pages asked
    /// for one after another, each within a few seconds of the last), so a
    /// status of every pin does not list the daemon's pins again for each page.
    async fn daemon_listing(&self) -> Result<Listing, String> {
        let mut cache = self.inner.daemon_cache.lock().await;
        if let Some(c) = cache.as_mut() {
            let fresh = c.fetched.elapsed() < DAEMON_PINS_MAX_AGE;
            let in_walk =
                c.used.elapsed() < DAEMON_PINS_MAX_AGE && c.fetched.elapsed() < DAEMON_PINS_MAX_USE;
            if fresh || in_walk {
                c.used = std::time::Instant::now();
                return Ok(c.listing.clone());
            }
        }
        *cache = None;
        let listing = self.list_daemon().await.map_err(|e| e.to_string())?;
        *cache = Some(DaemonCache::new(listing.clone()));
        Ok(listing)
    }

    /// Lists the daemon's pins. The pins completed from before it is asked
    /// for are recorded ([`Completed`]): one completed after is in the
    /// record, one completed before is in the listing.
    async fn list_daemon(&self) -> Result<Listing, IpfsError> {
        let number = crate::sync::lock(&self.inner.completed).begin();
        let added_before = self.inner.pins_added.load(Ordering::Relaxed);
        match self.inner.ipfs.pin_ls().await {
            Ok(pins) => Ok(Listing {
                pins: Arc::new(pins),
                added_before,
                number,
            }),
            Err(e) => {
                crate::sync::lock(&self.inner.completed).end(number);
                Err(e)
            }
        }
    }

    /// The status of each of `cids` on this peer, in order: the pinset's page
    /// (one range read when `cids` are sorted as pages are) compared with the
    /// daemon's pins and the operations in flight.
    pub async fn status_many(&self, cids: &[Cid]) -> Vec<LocalStatus> {
        let owned = cids.to_vec();
        let pins = match self
            .inner
            .state
            .blocking(move |state| state.get_many(&owned))
            .await
        {
            Ok(p) => p,
            Err(e) => {
                return vec![
                    LocalStatus::now(TrackerStatus::ClusterError, e.to_string());
                    cids.len()
                ];
            }
        };
        let pins: Vec<Option<&Pin>> = pins.iter().map(Option::as_ref).collect();
        self.status_of(cids, &pins).await
    }

    /// The status of each of `cids`, whose pins (`None`: not in the pinset) the
    /// caller read already.
    pub async fn status_of(&self, cids: &[Cid], pins: &[Option<&Pin>]) -> Vec<LocalStatus> {
        let needs_daemon = pins
            .iter()
            .flatten()
            .any(|p| p.is_allocated_to(&self.inner.peer_id));
        let daemon = if needs_daemon {
            self.daemon_listing().await
        } else {
            Ok(Listing {
                pins: Arc::new(DaemonPins::default()),
                added_before: 0,
                number: 0,
            })
        };
        let d = match &daemon {
            Ok(l) => Ok(&*l.pins),
            Err(e) => Err(e.as_str()),
        };
        let at = self.reconcile_at();
        let compare_at = |ops: &HashMap<Cid, Operation>, i: usize| {
            let op = ops.get(&cids[i]).map(|o| o.state.borrow().clone());
            compare(
                &self.inner.peer_id,
                &cids[i],
                pins.get(i).copied().flatten(),
                op.as_ref(),
                d,
                at.as_ref(),
            )
        };
        let mut out: Vec<LocalStatus> = {
            let ops = self.ops();
            (0..cids.len()).map(|i| compare_at(&ops, i)).collect()
        };
        let missing =
            |out: &[LocalStatus], i: usize| out[i].status == TrackerStatus::UnexpectedlyUnpinned;
        if !(0..out.len()).any(|i| missing(&out, i)) {
            return out;
        }
        // A pin this tracker has not read yet may look missing: once it has,
        // the pin has an operation, or completed one.
        if self.catch_up().await {
            let ops = self.ops();
            for i in 0..out.len() {
                if missing(&out, i) {
                    out[i] = compare_at(&ops, i);
                }
            }
        }
        // A pin completed since the listing began is pinned: the set says
        // which, without asking the daemon, unless it lost count.
        let Ok(listing) = &daemon else { return out };
        let exact = {
            let completed = crate::sync::lock(&self.inner.completed);
            let same = completed.listing == listing.number;
            // A missing pin is in the pinset, allocated here and without an
            // operation: completed since the listing, it is pinned.
            for (i, cid) in cids.iter().enumerate() {
                if same && missing(&out, i) && completed.digests.contains(&DaemonPins::digest(cid))
                {
                    out[i] = LocalStatus::now(TrackerStatus::Pinned, "");
                }
            }
            same && !completed.overflow
        };
        // Otherwise, each pin still missing is asked about once more, when
        // any completed since the listing.
        let completed_since = self.inner.pins_added.load(Ordering::Relaxed) > listing.added_before;
        if !exact && completed_since {
            for (i, cid) in cids.iter().enumerate() {
                if missing(&out, i) {
                    out[i] = self.status_now(cid).await;
                }
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

    /// Waits until `n` reconciliations (the first one runs at start) have ended.
    pub async fn wait_reconciled(&self, n: u64) {
        let mut rx = self.inner.reconciled.subscribe();
        let _ = rx.wait_for(|done| *done >= n).await;
    }

    /// Re-queues failed operations and pins that should be on the daemon but are not.
    /// Returns the CIDs re-queued.
    pub async fn recover_all(&self) -> Result<Vec<Cid>, StatusError> {
        self.reconcile(true).await.map(|(_, cids)| cids)
    }

    /// Compares the pinset, page by page, with a fresh listing of the daemon's pins,
    /// and re-queues failed operations and pins missing from the daemon, a bounded
    /// number at a time (pins not reached yet show as queued). Returns how many
    /// were re-queued, and which when `collect`.
    pub async fn reconcile(&self, collect: bool) -> Result<(usize, Vec<Cid>), StatusError> {
        let _one = self.inner.reconcile_lock.lock().await;
        let res = self.reconcile_locked(collect).await;
        self.inner.reconciled.send_modify(|n| *n += 1);
        res
    }

    async fn reconcile_locked(&self, collect: bool) -> Result<(usize, Vec<Cid>), StatusError> {
        let listing = self
            .list_daemon()
            .await
            .map_err(|e| StatusError(e.to_string()))?;
        let daemon = listing.pins.clone();
        // The listing serves status pages too (see `daemon_listing`).
        *self.inner.daemon_cache.lock().await = Some(DaemonCache::new(listing));
        self.set_reconcile_at(Some(PageFrom::start()));
        let res = self.reconcile_pages(&daemon, collect).await;
        self.set_reconcile_at(None);
        let (mut n, mut requeued) = res?;
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
            n += 1;
            if collect {
                requeued.push(cid);
            }
            self.ops().remove(&cid);
            self.untrack(cid);
        }
        Ok((n, requeued))
    }

    async fn reconcile_pages(
        &self,
        daemon: &DaemonPins,
        collect: bool,
    ) -> Result<(usize, Vec<Cid>), StatusError> {
        let shutdown = &self.inner.shutdown;
        let (mut n, mut requeued) = (0, Vec::new());
        let mut from = Some(PageFrom::start());
        while let Some(f) = from {
            let (pins, next) = self
                .inner
                .state
                .blocking(move |state| state.page(&f, STATUS_PAGE))
                .await
                .map_err(|e| StatusError(e.to_string()))?;
            for pin in pins {
                let op = self.operation(&pin.cid);
                let st = compare(
                    &self.inner.peer_id,
                    &pin.cid,
                    Some(&pin),
                    op.as_ref(),
                    Ok(daemon),
                    None,
                );
                if !matches!(
                    st.status,
                    TrackerStatus::PinError | TrackerStatus::UnexpectedlyUnpinned
                ) {
                    continue;
                }
                let permit = tokio::select! {
                    p = self.inner.window.clone().acquire_owned() => p.ok(),
                    _ = shutdown.cancelled() => {
                        return Err(StatusError("the peer is shutting down".into()));
                    }
                };
                n += 1;
                if collect {
                    requeued.push(pin.cid);
                }
                self.retry(pin, permit);
            }
            self.set_reconcile_at(next.clone());
            from = next;
        }
        Ok((n, requeued))
    }

    /// Re-queues the operation on `cid` if it failed or the pin went missing;
    /// returns the status afterwards.
    pub async fn recover(&self, cid: &Cid) -> LocalStatus {
        let st = self.status(cid).await;
        match st.status {
            TrackerStatus::PinError
            | TrackerStatus::UnexpectedlyUnpinned
            | TrackerStatus::PinQueued
                if self
                    .operation(cid)
                    .is_none_or(|op| op.phase == Phase::Error) =>
            {
                match self.inner.state.get(cid) {
                    Ok(Some(pin)) => self.retry(pin, None),
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

    fn retry(&self, pin: Pin, window: Option<OwnedSemaphorePermit>) {
        // A failed operation must not block its own retry, which `enqueue` would
        // otherwise see as "the same operation already queued".
        let attempts = {
            let mut ops = self.ops();
            ops.remove(&pin.cid)
                .map(|op| op.state.borrow().attempts)
                .unwrap_or(0)
        };
        let cid = pin.cid;
        self.track_with(pin, true, window);
        if let Some(op) = self.ops().get(&cid) {
            op.state.send_modify(|s| s.attempts = attempts);
        }
    }
}

/// The status of `cid` on a peer, from its pin (if in the pinset), the operation
/// on it (if any) and the daemon's pins: upstream's stateless tracker, with the
/// pins a running reconciliation has not reached (from `reconcile_at` on)
/// showing as queued when missing from the daemon.
pub fn compare(
    me: &str,
    cid: &Cid,
    pin: Option<&Pin>,
    op: Option<&OpState>,
    daemon: Result<&DaemonPins, &str>,
    reconcile_at: Option<&PageFrom>,
) -> LocalStatus {
    let Some(pin) = pin else {
        return match op {
            Some(op) => LocalStatus::from(op),
            None => LocalStatus::now(TrackerStatus::Unpinned, ""),
        };
    };
    if let Some(op) = op {
        return op_status(Some(pin), op, me);
    }
    if !pin.is_allocated_to(me) {
        return LocalStatus::now(TrackerStatus::Remote, "");
    }
    let on_daemon = match daemon {
        Ok(d) => d.get(cid),
        Err(e) => return LocalStatus::now(TrackerStatus::PinError, e),
    };
    let pinned = matches!(
        (pin.mode(), on_daemon),
        (_, Some(PinMode::Recursive)) | (PinMode::Direct, Some(PinMode::Direct))
    );
    if pinned {
        LocalStatus::now(TrackerStatus::Pinned, "")
    } else if reconcile_at.is_some_and(|at| !at.is_past(cid)) {
        LocalStatus::now(TrackerStatus::PinQueued, "")
    } else {
        LocalStatus::now(
            TrackerStatus::UnexpectedlyUnpinned,
            "the item should be pinned but it is not",
        )
    }
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

/// The status could not be computed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StatusError(pub String);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::PinOptions;

    const ME: &str = "12D3KooWMe";
    const OTHER: &str = "12D3KooWOther";

    fn cid(n: u8) -> Cid {
        Cid::from_bytes(&[0x01, 0x55, 0x00, 0x01, n]).unwrap()
    }

    fn pin(n: u8, mode: PinMode, allocations: &[&str]) -> Pin {
        let mut p = Pin::new(
            cid(n),
            PinOptions {
                mode,
                ..Default::default()
            },
        );
        p.allocations = allocations.iter().map(|a| a.to_string()).collect();
        p
    }

    /// A tracker before a fake daemon, on a pinset of its own; `applied`
    /// says which index the pinset holds.
    struct OnFake {
        fake: crate::ipfs::fake::FakeDaemon,
        tracker: PinTracker,
        events: broadcast::Sender<StateEvent>,
        state: PinState,
        tasks: TaskTracker,
        shutdown: CancellationToken,
        _dir: tempfile::TempDir,
    }

    impl OnFake {
        /// The tracker starts reading `events` once the caller sent what it wants
        /// waiting there first: `before(&events)` runs first.
        async fn start(
            applied: AppliedIndexFn,
            before: impl FnOnce(&broadcast::Sender<StateEvent>),
        ) -> Self {
            let fake = crate::ipfs::fake::FakeDaemon::start().await;
            let ipfs = IpfsConnector::new(&crate::config::IpfsHttpConfig {
                node_multiaddress: format!("/ip4/127.0.0.1/tcp/{}", fake.addr.port()),
                ..Default::default()
            })
            .unwrap();
            let dir = tempfile::tempdir().unwrap();
            let db = crate::store::open(dir.path(), crate::store::Backend::Fjall).unwrap();
            let state = PinState::new(db.tree("state").unwrap());
            let (events, rx) = broadcast::channel(EVENTS_CAPACITY);
            before(&events);
            let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
            let tracker = PinTracker::start(
                &crate::config::TrackerConfig::default(),
                ipfs,
                state.clone(),
                applied,
                ME.into(),
                rx,
                &tasks,
                shutdown.clone(),
            );
            OnFake {
                fake,
                tracker,
                events,
                state,
                tasks,
                shutdown,
                _dir: dir,
            }
        }

        async fn stop(self) {
            self.shutdown.cancel();
            self.tasks.close();
            self.tasks.wait().await;
            self.fake.stop().await;
        }
    }

    fn cid_n(n: u16) -> Cid {
        let [hi, lo] = n.to_be_bytes();
        Cid::from_bytes(&[0x01, 0x55, 0x00, 0x02, hi, lo]).unwrap()
    }

    fn pin_here(cid: Cid) -> Pin {
        let mut p = Pin::new(cid, PinOptions::default());
        p.allocations = vec![ME.to_string()];
        p
    }

    /// A burst of events far longer than a daemon call's batch, all waiting
    /// before the tracker reads the first, reaches the daemon whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_events_longer_than_a_batch_is_tracked_whole() {
        const N: u16 = 1000;
        let cids: Vec<Cid> = (0..N).map(cid_n).collect();
        let t = OnFake::start(Arc::new(|| Some(1)), |events| {
            for c in &cids {
                let pin = Box::new(pin_here(*c));
                events
                    .send(StateEvent::Pinned { pin, before: None })
                    .unwrap();
            }
            events.send(StateEvent::Applied(1)).unwrap();
        })
        .await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let pinned = t.fake.state.lock().unwrap().pins.len();
            if pinned == usize::from(N) && t.tracker.counts().pin_queued == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{pinned} of {N} pinned, {} queued",
                t.tracker.queued()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let pins = t.fake.state.lock().unwrap().pins.clone();
        assert!(cids.iter().all(|c| pins.contains_key(&c.to_string())));
        t.stop().await;
    }

    /// A pin in the pinset that the tracker has not read yet (its client asks
    /// for its status as soon as it is answered) is not called unexpectedly
    /// unpinned: the status waits for the tracker to catch up. One the tracker
    /// has read and the daemon lost is reported at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_status_waits_for_the_tracker_to_read_what_was_applied() {
        let applied = Arc::new(AtomicU64::new(0));
        let a = applied.clone();
        let t = OnFake::start(Arc::new(move || Some(a.load(Ordering::SeqCst))), |_| {}).await;
        let (new, lost) = (pin_here(cid_n(1)), pin_here(cid_n(2)));
        for p in [&new, &lost] {
            t.state
                .tree()
                .apply(vec![PinState::add_entry(p).unwrap()])
                .unwrap();
        }
        applied.store(5, Ordering::SeqCst);
        // The change reaches the tracker a while after the status is asked.
        let events = t.events.clone();
        let late = new.clone();
        let sender = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let pin = Box::new(late);
            events
                .send(StateEvent::Pinned { pin, before: None })
                .unwrap();
            events.send(StateEvent::Applied(5)).unwrap();
        });
        let asked = std::time::Instant::now();
        let st = t.tracker.status(&new.cid).await;
        assert_ne!(st.status, TrackerStatus::UnexpectedlyUnpinned, "{st:?}");
        assert!(asked.elapsed() >= std::time::Duration::from_millis(250));
        sender.await.unwrap();
        // Caught up: a pin the daemon does not hold and no operation explains.
        let asked = std::time::Instant::now();
        let st = t.tracker.status(&lost.cid).await;
        assert_eq!(st.status, TrackerStatus::UnexpectedlyUnpinned);
        assert!(asked.elapsed() < CATCH_UP);
        let page = t.tracker.status_many(&[new.cid, lost.cid]).await;
        assert_ne!(page[0].status, TrackerStatus::UnexpectedlyUnpinned);
        assert_eq!(page[1].status, TrackerStatus::UnexpectedlyUnpinned);
        t.stop().await;
    }

    /// A daemon that lost pins while others were being pinned: a status page
    /// reads the pins completed since its listing from the tracker's record,
    /// and does not ask the daemon about each lost pin.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lost_pins_cost_no_daemon_call_each_while_others_complete() {
        let applied = Arc::new(AtomicU64::new(1));
        let a = applied.clone();
        let t = OnFake::start(Arc::new(move || Some(a.load(Ordering::SeqCst))), |_| {}).await;
        async fn pinned_on_daemon(f: &crate::ipfs::fake::FakeDaemon, n: usize) {
            let pins = || f.state.lock().unwrap().pins.len();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while pins() < n {
                assert!(std::time::Instant::now() < deadline, "{} of {n}", pins());
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        let add = |n: u16, index: u64| {
            let pin = pin_here(cid_n(n));
            t.state
                .tree()
                .apply(vec![PinState::add_entry(&pin).unwrap()])
                .unwrap();
            applied.store(index, Ordering::SeqCst);
            t.events
                .send(StateEvent::Pinned {
                    pin: Box::new(pin),
                    before: None,
                })
                .unwrap();
            t.events.send(StateEvent::Applied(index)).unwrap();
        };
        for n in 0..30 {
            add(n, 1);
        }
        pinned_on_daemon(&t.fake, 30).await;
        let lost: Vec<Cid> = (0..10).map(cid_n).collect();
        {
            let mut st = t.fake.state.lock().unwrap();
            for c in &lost {
                st.pins.remove(&c.to_string());
            }
        }
        let all: Vec<Cid> = (0..31).map(cid_n).collect();
        let page = t.tracker.status_many(&all[..30]).await;
        assert!(
            page[..10]
                .iter()
                .all(|s| s.status == TrackerStatus::UnexpectedlyUnpinned)
        );
        assert!(page[10..].iter().all(|s| s.status == TrackerStatus::Pinned));
        // One more pin completes after the listing, which still serves.
        add(30, 2);
        pinned_on_daemon(&t.fake, 21).await;
        let page = t.tracker.status_many(&all).await;
        for (i, st) in page.iter().enumerate() {
            let want = if i < 10 {
                TrackerStatus::UnexpectedlyUnpinned
            } else {
                TrackerStatus::Pinned
            };
            assert_eq!(st.status, want, "pin {i}: {st:?}");
        }
        assert_eq!(t.fake.state.lock().unwrap().pin_ls_arg_calls, 0);
        t.stop().await;
    }

    fn op(kind: OpKind, phase: Phase, error: &str) -> OpState {
        OpState {
            kind,
            phase,
            error: error.into(),
            attempts: 1,
            timestamp: Utc::now(),
            progress: 0,
        }
    }

    /// A page of the pinset compared with the daemon's listing and the operations
    /// in flight gives every status of upstream's stateless tracker, in order.
    #[test]
    fn a_page_compared_with_the_daemon_gives_each_status() {
        let daemon: DaemonPins = [
            (cid(1), PinMode::Recursive),
            (cid(2), PinMode::Direct),
            (cid(3), PinMode::Direct),
            (cid(9), PinMode::Recursive),
        ]
        .into_iter()
        .collect();
        assert_eq!(daemon.len(), 4);
        let page: Vec<(Cid, Option<Pin>, Option<OpState>)> = vec![
            // On the daemon as asked: pinned (a recursive pin also covers a direct one).
            (cid(1), Some(pin(1, PinMode::Direct, &[])), None),
            (cid(2), Some(pin(2, PinMode::Direct, &[ME])), None),
            // Direct on the daemon but wanted recursive: missing.
            (cid(3), Some(pin(3, PinMode::Recursive, &[])), None),
            // Operations in flight and failed.
            (
                cid(4),
                Some(pin(4, PinMode::Recursive, &[])),
                Some(op(OpKind::Pin, Phase::Queued, "")),
            ),
            (
                cid(5),
                Some(pin(5, PinMode::Recursive, &[])),
                Some(op(OpKind::Pin, Phase::InProgress, "")),
            ),
            (
                cid(6),
                Some(pin(6, PinMode::Recursive, &[])),
                Some(op(OpKind::Pin, Phase::Error, "boom")),
            ),
            // Allocated elsewhere, with or without an unpin clearing it here.
            (cid(7), Some(pin(7, PinMode::Recursive, &[OTHER])), None),
            (
                cid(8),
                Some(pin(8, PinMode::Recursive, &[OTHER])),
                Some(op(OpKind::Unpin, Phase::InProgress, "")),
            ),
            // Not in the pinset (even if the daemon has it): unpinned, or its unpin.
            (cid(9), None, None),
            (cid(10), None, Some(op(OpKind::Unpin, Phase::Error, "nope"))),
        ];
        let got: Vec<(TrackerStatus, String)> = page
            .iter()
            .map(|(c, p, o)| {
                let st = compare(ME, c, p.as_ref(), o.as_ref(), Ok(&daemon), None);
                (st.status, st.error)
            })
            .collect();
        use TrackerStatus::*;
        let want = [
            (Pinned, ""),
            (Pinned, ""),
            (
                UnexpectedlyUnpinned,
                "the item should be pinned but it is not",
            ),
            (PinQueued, ""),
            (Pinning, ""),
            (PinError, "boom"),
            (Remote, ""),
            (Remote, ""),
            (Unpinned, ""),
            (UnpinError, "nope"),
        ];
        let want: Vec<(TrackerStatus, String)> =
            want.iter().map(|(s, e)| (*s, e.to_string())).collect();
        assert_eq!(got, want);
    }

    /// A daemon that cannot list its pins makes the pins allocated here errors.
    #[test]
    fn a_failed_listing_is_a_pin_error_for_pins_allocated_here() {
        let p = pin(1, PinMode::Recursive, &[]);
        let st = compare(ME, &p.cid, Some(&p), None, Err("daemon down"), None);
        assert_eq!(
            (st.status, st.error.as_str()),
            (TrackerStatus::PinError, "daemon down")
        );
        let remote = pin(2, PinMode::Recursive, &[OTHER]);
        let st = compare(
            ME,
            &remote.cid,
            Some(&remote),
            None,
            Err("daemon down"),
            None,
        );
        assert_eq!(st.status, TrackerStatus::Remote);
    }

    /// While a reconciliation runs, missing pins it has not reached yet are queued;
    /// those it passed are reported missing.
    #[test]
    fn pins_ahead_of_a_reconciliation_are_queued() {
        let daemon = DaemonPins::default();
        let (a, b) = (
            pin(1, PinMode::Recursive, &[]),
            pin(2, PinMode::Recursive, &[]),
        );
        let at = PageFrom::after(&a.cid);
        let st = |p: &Pin| compare(ME, &p.cid, Some(p), None, Ok(&daemon), Some(&at)).status;
        assert_eq!(st(&a), TrackerStatus::UnexpectedlyUnpinned);
        assert_eq!(st(&b), TrackerStatus::PinQueued);
    }
}
