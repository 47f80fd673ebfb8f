//! The Raft state machine: applies [`LogBatch`]es to the pinset, records how far
//! the log was applied in the same atomic batch, builds and installs snapshots,
//! and tells the pin tracker what changed.
//!
//! Snapshots are files in the raft folder (`snapshots/`), streamed in both
//! directions: built by copying the stored pins into a file, sent and received
//! by openraft in chunks, installed into the state tree in batches. Memory stays
//! independent of the pinset's size.
//!
//! File format 3: the format byte, then records behind their length as a varint:
//! each pin's stored value (its own format byte and the pin), the request-ID
//! records (tag [`REC_REQUEST`]; a record may hold a run of requests) and the
//! request counter (tag [`REC_SEQ`]). Format 2 (records of one request each),
//! format 1 (pins only, written by earlier versions and by `state import`) and
//! the JSON lines of older versions (kept in the snapshot tree) still install.
//!
//! Exactly-once: every request ID applied is recorded in the same store write
//! as its effect, with its outcome (consecutive IDs applied in one entry share
//! a record); a request whose ID is recorded changes nothing and gets the
//! recorded outcome. The records of the last [`DEDUP_WINDOW`] recorded requests
//! are kept (pruned by their sequence number in apply, so every replica keeps
//! the same ones) and travel in snapshots.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, Membership, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::apply_waiters::ApplyWaiters;
use super::codec::{decode_meta, encode_meta};
use super::types::{
    Applied, ApplyResult, ClusterNode, Committed, LogOp, NodeId, Outcome, Prior, RequestId,
    TypeConfig,
};
use crate::state::codec::{self as pin_codec, FORMAT_V1};
use crate::state::{BatchEntry, PIN_PREFIX, PinState, digest_of_stored};
use crate::store::{SortedLoad, StoreError, Tree, next_key, prefix_bounds};
use crate::types::{Cid, Pin};

const APPLIED_KEY: &[u8] = b"m/applied";
const MEMBERSHIP_KEY: &[u8] = b"m/membership";
/// Present while a snapshot is being installed into the state tree: the state is
/// half replaced, and the install is redone from this snapshot at the next start.
const INSTALLING_KEY: &[u8] = b"m/installing";
const SNAPSHOT_META_KEY: &[u8] = b"snapshot/meta";
/// Where earlier versions kept the whole snapshot as one value.
const LEGACY_SNAPSHOT_DATA_KEY: &[u8] = b"snapshot/data";
/// Writes per store batch while installing or importing.
const INSTALL_BATCH: usize = 10_000;
/// Bytes of pins sorted in memory at once by an import (twice that at most).
const SEED_RUN_BYTES: usize = 64 << 20;
/// Request-ID records: `r/` + the last ID of a run (16 bytes) → [`RunRecord`].
const REQ_PREFIX: &[u8] = b"r/";
/// The pruning order of request records: `s/` + a record's sequence number
/// (u64 BE) → its key's ID.
const SEQ_PREFIX: &[u8] = b"s/";
/// How many requests were recorded so far (u64 BE): the next sequence number.
const REQ_SEQ_KEY: &[u8] = b"m/reqseq";
/// How many recorded requests keep their record. A retry reuses its request ID
/// only while `submit` retries it, within `wait_for_leader_timeout` (15 s by
/// default) plus an election: at 10,000 writes/s that is 150,000 requests, and
/// 2^19 covers 52 s of such a load (3.5 times the default wait). It is a
/// constant, not a setting: replicas must prune alike. About 60 bytes per record
/// (30 MiB at most) in the store and half of that in snapshots.
pub const DEDUP_WINDOW: u64 = 1 << 19;
/// Records leave the store in steps of 1/128th of the window (4,096 for
/// [`DEDUP_WINDOW`]): a store range per apply call cost more than the deletes
/// it found (fjall, 64 connections: 1.75% of the machine's CPU). Which records
/// are kept is still a function of the sequence numbers alone, so replicas
/// keep the same ones; a kept record past the window no longer counts.
const PRUNE_STEPS: u64 = 128;
/// Snapshot file format with request records of one request each.
const SNAPSHOT_V2: u8 = 2;
/// Snapshot file format with request records of runs ([`RunRecord`]).
const SNAPSHOT_V3: u8 = 3;
/// Snapshot record tag: a request record (its key's ID, then the stored
/// [`RunRecord`]).
/// Pin values start with their format byte (1) or `{`, never with a tag.
const REC_REQUEST: u8 = 0xD1;
/// Snapshot record tag: the request counter (u64 BE).
const REC_SEQ: u8 = 0xD0;
/// Format of a stored [`RunRecord`] of one request.
const REQ_RECORD_V1: u8 = 1;
/// Format of a stored [`RunRecord`] of several requests.
const REQ_RUN_V2: u8 = 2;
/// Requests one record holds at most (a byte each in its value).
const MAX_RUN: usize = 4096;

/// What is kept of a run of applied requests: consecutive IDs applied in one
/// entry (a batch the peer that received them numbered), stored under the
/// last. One record a run instead of one a request: at 64 connections an
/// entry of ~16 pins holds ~3 runs, one per peer whose clients sent some.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RunRecord {
    /// The log index of the entry that applied them first.
    index: u64,
    /// The sequence number of the first among recorded requests (the rest
    /// follow it): the whole record counts, and leaves, by it.
    seq: u64,
    /// Each request's outcome, in ID order.
    outcomes: Vec<Outcome>,
}

fn outcome_byte(o: Outcome) -> u8 {
    match o {
        Outcome::Applied { existed: false } => 0,
        Outcome::Applied { existed: true } => 1,
        Outcome::Conflict => 2,
    }
}

fn outcome_of(b: u8) -> Result<Outcome, Corrupt> {
    match b {
        0 => Ok(Outcome::Applied { existed: false }),
        1 => Ok(Outcome::Applied { existed: true }),
        2 => Ok(Outcome::Conflict),
        o => Err(Corrupt(format!("request record with outcome {o}"))),
    }
}

impl RunRecord {
    /// Format 1 (a run of one, as earlier versions wrote every record): the
    /// format byte, index, outcome, seq. Format 2: the format byte, index,
    /// seq, then an outcome byte per request.
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(17 + self.outcomes.len().max(1));
        if let [one] = self.outcomes[..] {
            v.push(REQ_RECORD_V1);
            v.extend_from_slice(&self.index.to_be_bytes());
            v.push(outcome_byte(one));
            v.extend_from_slice(&self.seq.to_be_bytes());
        } else {
            v.push(REQ_RUN_V2);
            v.extend_from_slice(&self.index.to_be_bytes());
            v.extend_from_slice(&self.seq.to_be_bytes());
            v.extend(self.outcomes.iter().map(|o| outcome_byte(*o)));
        }
        v
    }

    /// Its request at position `at`, the record being stored under `key`.
    fn seen(&self, key: RequestId, at: usize) -> Seen {
        Seen {
            index: self.index,
            outcome: self.outcomes[at],
            seq: self.seq,
            key,
        }
    }

    fn decode(v: &[u8]) -> Result<Self, Corrupt> {
        let bad = || Corrupt(format!("request record of {} bytes", v.len()));
        match v.first() {
            Some(&REQ_RECORD_V1) if v.len() == 18 => Ok(RunRecord {
                index: u64_at(&v[1..9]),
                outcomes: vec![outcome_of(v[9])?],
                seq: u64_at(&v[10..18]),
            }),
            Some(&REQ_RUN_V2) if v.len() > 17 && v.len() - 17 <= MAX_RUN => Ok(RunRecord {
                index: u64_at(&v[1..9]),
                seq: u64_at(&v[9..17]),
                outcomes: v[17..]
                    .iter()
                    .map(|b| outcome_of(*b))
                    .collect::<Result<_, _>>()?,
            }),
            _ => Err(bad()),
        }
    }
}

/// A request found recorded: its outcome, and the record holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    /// The log index of the entry that applied it first.
    index: u64,
    outcome: Outcome,
    /// The record's sequence number (see [`RunRecord::seq`]).
    seq: u64,
    /// The record's key: the last ID of its run.
    key: RequestId,
}

impl Seen {
    /// Whether the record still counts for the request numbered `next`: the
    /// same rule on every replica, however apply calls group entries.
    fn live_at(&self, next: u64, window: u64) -> bool {
        self.seq.saturating_add(window) >= next
    }
}

/// A run an apply call is recording.
struct Run {
    /// Its last ID so far: the record's key.
    last: RequestId,
    rec: RunRecord,
    /// A later request of the call found the record expired (only with a
    /// window smaller than the call): it is not written.
    dropped: bool,
}

/// Finds the records holding the IDs `first..=last` (all of them looked up):
/// one range from the first, since records hold disjoint runs in key order.
/// Forwarded batches are runs, so a peer whose IDs come below the newest (its
/// clock, or its forward's delay) costs a range a batch, not one an ID.
fn find_recorded(
    tree: &dyn Tree,
    (first, last): (RequestId, RequestId),
    found: &mut HashMap<RequestId, Seen>,
) -> Result<(), StorageError<NodeId>> {
    // A record holding `last` is keyed within a run's length past it.
    let to = match last.checked_add(MAX_RUN as u128) {
        Some(end) => req_key(end),
        None => prefix_bounds(REQ_PREFIX).1.unwrap_or_default(),
    };
    for kv in tree.range(&req_key(first), Some(&to)) {
        let (k, v) = kv.map_err(read_sm_err)?;
        let key = req_id_of(&k)
            .ok_or_else(|| read_sm_err(Corrupt(format!("request record key {k:?}"))))?;
        let rec = RunRecord::decode(&v).map_err(read_sm_err)?;
        let n = rec.outcomes.len() as u128;
        let from = key
            .checked_sub(n - 1)
            .ok_or_else(|| read_sm_err(Corrupt(format!("request record {key} of {n}"))))?;
        if from > last {
            break;
        }
        for id in from.max(first)..=key.min(last) {
            found.insert(id, rec.seen(key, (id - from) as usize));
        }
    }
    Ok(())
}

fn u64_at(b: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[..8]);
    u64::from_be_bytes(x)
}

fn req_key(id: RequestId) -> Vec<u8> {
    let mut k = REQ_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The ID in a request record's key ([`req_key`]), if it is one.
fn req_id_of(key: &[u8]) -> Option<RequestId> {
    key.strip_prefix(REQ_PREFIX)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .map(RequestId::from_be_bytes)
}

fn seq_key(seq: u64) -> Vec<u8> {
    let mut k = SEQ_PREFIX.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// A change of the pinset, as the tracker needs to hear of it.
#[derive(Debug, Clone)]
pub enum StateEvent {
    /// A pin was added (`before` is `None`) or updated from `before`.
    Pinned {
        /// The pin as committed.
        pin: Box<Pin>,
        /// The version it replaced, if any.
        before: Option<Box<Pin>>,
    },
    /// A pin was removed.
    Unpinned(Cid),
    /// The whole pinset was replaced by a snapshot: resynchronise.
    Reset,
    /// Every change up to this log index has been announced.
    Applied(u64),
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

fn read_sm_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn snap_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, AnyError::new(&e)).into()
}

fn read_snap_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, AnyError::new(&e)).into()
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Corrupt(String);

/// A snapshot's metadata.
type Meta = SnapshotMeta<NodeId, ClusterNode>;

/// The last applied log ID and membership.
type AppliedState = (Option<LogId<NodeId>>, StoredMembership<NodeId, ClusterNode>);

/// Whether a snapshot is arriving or being installed: a value that changes
/// while one is (receives begun, bytes received, batches installed). Raft does not hear from
/// the leader meanwhile, so that a peer waiting for it at start can tell a slow
/// transfer from a missing leader.
#[derive(Clone)]
pub struct SnapshotProgress {
    receiving: Arc<Mutex<Option<PathBuf>>>,
    installed_batches: Arc<AtomicU64>,
    receives: Arc<AtomicU64>,
}

impl SnapshotProgress {
    /// Changes while a snapshot is received or installed: (receives begun,
    /// bytes of the current one, batches installed).
    pub fn value(&self) -> (u64, u64, u64) {
        let receiving = crate::sync::lock(&self.receiving).clone();
        let received = receiving
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .unwrap_or(0);
        (
            self.receives.load(Ordering::Relaxed),
            received,
            self.installed_batches.load(Ordering::Relaxed),
        )
    }
}

/// The pinset state machine of one peer.
#[derive(Clone)]
pub struct StateMachine {
    state: PinState,
    snapshots: Arc<dyn Tree>,
    dir: Arc<PathBuf>,
    events: broadcast::Sender<StateEvent>,
    /// Held by apply while it writes, and by a snapshot build on a store whose
    /// ranges are not point-in-time views, so that the build's metadata and pins
    /// come from the same moment.
    apply_lock: Arc<Mutex<()>>,
    /// The file a snapshot is being received into.
    receiving: Arc<Mutex<Option<PathBuf>>>,
    /// Batches written by snapshot installs (see [`SnapshotProgress`]).
    installed_batches: Arc<AtomicU64>,
    /// Snapshot receives begun (see [`SnapshotProgress`]).
    receives: Arc<AtomicU64>,
    /// [`DEDUP_WINDOW`]; smaller in tests, to see records leave it.
    window: u64,
    /// No stored request record has a greater ID than this, so a greater ID
    /// is not looked up (a store miss each, most of a busy apply's reads):
    /// request IDs begin with their time, so new ones are mostly greater.
    /// `u128::MAX` when not known (every ID is looked up).
    newest_recorded: Arc<Mutex<RequestId>>,
    /// When an apply was last written durably (see [`DURABLE_APPLY_EVERY`]).
    durable_at: Arc<Mutex<std::time::Instant>>,
    /// How far the written state reaches, for the log's purges.
    applied: Arc<watch::Sender<Applied>>,
    /// Writers answered from the apply (see [`ApplyWaiters`]).
    waiters: Arc<ApplyWaiters>,
}

/// What one call of apply did.
struct Applies {
    /// One per entry.
    results: Vec<ApplyResult>,
    /// For the trackers.
    events: Vec<StateEvent>,
    /// The outcomes of entries a writer registered for.
    answers: Vec<(tokio::sync::oneshot::Sender<ApplyResult>, ApplyResult)>,
}

/// How often an apply is written durably. The log (in its own files) holds
/// every entry until a purge, which first makes the state durable, so applies
/// need not be; but redb reuses the pages a commit frees only after a durable
/// commit, so a long run of non-durable ones would grow its file.
const DURABLE_APPLY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The current snapshot's metadata, and its file in the snapshot folder.
#[derive(Serialize, Deserialize)]
struct StoredSnapshotMeta {
    meta: SnapshotMeta<NodeId, ClusterNode>,
    /// `None` in stores of earlier versions, which kept the data in the tree.
    #[serde(default)]
    file: Option<String>,
}

/// Appends the stored value `v` of a pin to a snapshot file.
fn write_record(out: &mut impl Write, v: &[u8]) -> std::io::Result<()> {
    let mut len = Vec::with_capacity(5);
    pin_codec::put_uvarint(&mut len, v.len() as u64);
    out.write_all(&len)?;
    out.write_all(v)
}

/// One record of a snapshot file.
#[derive(Debug)]
enum Record {
    Pin(Box<Pin>),
    Request(RequestId, RunRecord),
    Seq(u64),
}

/// Reads a snapshot file's records, one at a time.
struct Records<R: BufRead> {
    r: R,
    json: bool,
    /// Format 2: records may be request records.
    tagged: bool,
    buf: Vec<u8>,
}

impl<R: BufRead> Records<R> {
    fn new(mut r: R) -> std::io::Result<Self> {
        let (json, tagged) = match r.fill_buf()?.first() {
            Some(&FORMAT_V1) => (false, false),
            Some(&SNAPSHOT_V2 | &SNAPSHOT_V3) => (false, true),
            // An empty snapshot, or JSON lines of an earlier version.
            _ => (true, false),
        };
        if !json {
            r.consume(1);
        }
        Ok(Records {
            r,
            json,
            tagged,
            buf: Vec::new(),
        })
    }

    /// The next pin, skipping other records.
    #[cfg(test)]
    fn next_pin(&mut self) -> std::io::Result<Option<Pin>> {
        loop {
            match self.next()? {
                Some(Record::Pin(p)) => return Ok(Some(*p)),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }

    fn uvarint(&mut self) -> std::io::Result<Option<u64>> {
        let mut v = 0u64;
        for (i, shift) in (0..64).step_by(7).enumerate() {
            let mut b = [0u8; 1];
            if let Err(e) = self.r.read_exact(&mut b) {
                return match e.kind() {
                    std::io::ErrorKind::UnexpectedEof if i == 0 => Ok(None),
                    _ => Err(e),
                };
            }
            v |= u64::from(b[0] & 0x7f) << shift;
            if b[0] < 0x80 {
                return Ok(Some(v));
            }
        }
        Err(std::io::Error::other(Corrupt("bad record length".into())))
    }

    /// The next record.
    fn next(&mut self) -> std::io::Result<Option<Record>> {
        let bad = |e: pin_codec::DecodeError| std::io::Error::other(Corrupt(e.0));
        if self.json {
            loop {
                self.buf.clear();
                if self.r.read_until(b'\n', &mut self.buf)? == 0 {
                    return Ok(None);
                }
                if self.buf.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return pin_codec::decode_pin(self.buf.trim_ascii())
                    .map(|p| Some(Record::Pin(Box::new(p))))
                    .map_err(bad);
            }
        }
        let Some(len) = self.uvarint()? else {
            return Ok(None);
        };
        // A record is one pin: a length beyond any pin is corruption, and must not
        // allocate.
        if len > 16 << 20 {
            return Err(std::io::Error::other(Corrupt(format!(
                "snapshot record of {len} bytes"
            ))));
        }
        self.buf.resize(len as usize, 0);
        self.r.read_exact(&mut self.buf)?;
        match self.buf.first() {
            Some(&REC_REQUEST) if self.tagged && self.buf.len() > 17 => {
                let mut id = [0u8; 16];
                id.copy_from_slice(&self.buf[1..17]);
                let rec = RunRecord::decode(&self.buf[17..]).map_err(std::io::Error::other)?;
                Ok(Some(Record::Request(u128::from_be_bytes(id), rec)))
            }
            Some(&REC_SEQ) if self.tagged && self.buf.len() == 9 => {
                Ok(Some(Record::Seq(u64_at(&self.buf[1..]))))
            }
            Some(&(REC_REQUEST | REC_SEQ)) if self.tagged => Err(std::io::Error::other(Corrupt(
                format!("snapshot record of {} bytes", self.buf.len()),
            ))),
            _ => pin_codec::decode_pin(&self.buf)
                .map(|p| Some(Record::Pin(Box::new(p))))
                .map_err(bad),
        }
    }
}

impl StateMachine {
    /// A state machine over `state`, keeping snapshot metadata in `snapshots`
    /// and snapshot files in the folder `dir`.
    pub fn new(
        state: PinState,
        snapshots: Arc<dyn Tree>,
        dir: PathBuf,
        events: broadcast::Sender<StateEvent>,
    ) -> Self {
        let sm = StateMachine {
            state,
            snapshots,
            dir: Arc::new(dir),
            events,
            apply_lock: Arc::new(Mutex::new(())),
            window: DEDUP_WINDOW,
            newest_recorded: Arc::new(Mutex::new(RequestId::MAX)),
            receiving: Arc::new(Mutex::new(None)),
            installed_batches: Arc::new(AtomicU64::new(0)),
            receives: Arc::new(AtomicU64::new(0)),
            durable_at: Arc::new(Mutex::new(std::time::Instant::now())),
            applied: Arc::new(watch::channel(Applied::Unknown).0),
            waiters: Arc::default(),
        };
        sm.remove_leftovers();
        sm.find_newest_recorded();
        // Blocking (an earlier version's store is counted once): callers
        // construct the state machine off the async workers.
        if let Err(e) = sm.state.load_count() {
            tracing::warn!("the pinset's size is unknown ({e}); it is counted when asked for");
        }
        sm
    }

    /// How far the written state reaches, as it moves (see
    /// [`LogStore::purge_only_applied`](super::log_store::LogStore::purge_only_applied)).
    pub fn applied(&self) -> watch::Receiver<Applied> {
        self.applied.subscribe()
    }

    /// Where writers wait for their entries' outcomes.
    pub fn waiters(&self) -> Arc<ApplyWaiters> {
        self.waiters.clone()
    }

    fn publish_applied(&self, last: Option<&LogId<NodeId>>) {
        self.applied
            .send_replace(Applied::Upto(last.map(|l| l.index)));
    }

    /// A view of the snapshot transfers to this peer, kept after the state
    /// machine is handed to Raft.
    pub fn progress(&self) -> SnapshotProgress {
        SnapshotProgress {
            receiving: self.receiving.clone(),
            installed_batches: self.installed_batches.clone(),
            receives: self.receives.clone(),
        }
    }

    /// Deletes the snapshot files a crash left behind (a build or a receive cut
    /// short, a file published but never made current): nothing is building or
    /// receiving before the state machine exists, and each can be as large as
    /// the pinset.
    fn remove_leftovers(&self) {
        let current = match self.current() {
            Ok(c) => c.and_then(|c| c.file),
            // Unreadable metadata: keep every file, the start reports it.
            Err(_) => return,
        };
        let Ok(rd) = std::fs::read_dir(self.dir.as_path()) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let stale = name.ends_with(".tmp")
                || (name.ends_with(".snap") && Some(&name) != current.as_ref());
            if stale && e.path().is_file() {
                tracing::info!("removing {name}, left by an interrupted snapshot");
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Reads back the greatest request ID recorded (see `newest_recorded`).
    fn find_newest_recorded(&self) {
        let newest = match self.state.tree().last_with_prefix(REQ_PREFIX) {
            Ok(None) => 0,
            Ok(Some((k, _))) => req_id_of(&k).unwrap_or(RequestId::MAX),
            Err(e) => {
                tracing::warn!("the newest request record is unknown ({e}); each is looked up");
                RequestId::MAX
            }
        };
        *crate::sync::lock(&self.newest_recorded) = newest;
    }

    /// Keeps request records for `window` requests instead of [`DEDUP_WINDOW`]
    /// (benchmarks: to reach the pruning steady state sooner).
    #[cfg(feature = "fake-daemon")]
    pub fn set_window(&mut self, window: u64) {
        self.window = window.max(1);
    }

    fn lock_apply(&self) -> std::sync::MutexGuard<'_, ()> {
        crate::sync::lock(&self.apply_lock)
    }

    fn read_meta(&self) -> Result<AppliedState, StorageError<NodeId>> {
        let tree = self.state.tree();
        let applied = match tree.get(APPLIED_KEY).map_err(read_sm_err)? {
            Some(b) => decode_meta(&b).map_err(read_sm_err)?,
            None => None,
        };
        let membership = match tree.get(MEMBERSHIP_KEY).map_err(read_sm_err)? {
            Some(b) => decode_meta(&b).map_err(read_sm_err)?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    /// The membership this peer last applied, if it ever applied one.
    pub fn membership(
        &self,
    ) -> Result<Option<Membership<NodeId, ClusterNode>>, StorageError<NodeId>> {
        let (_, stored) = self.read_meta()?;
        let m = stored.membership();
        Ok((m.voter_ids().next().is_some()).then(|| m.clone()))
    }

    fn snapshot_dir(&self) -> Result<&Path, StorageError<NodeId>> {
        std::fs::create_dir_all(self.dir.as_path()).map_err(snap_err)?;
        Ok(self.dir.as_path())
    }

    /// A new temporary file in the snapshot folder.
    fn temp_file(&self, what: &str) -> Result<(PathBuf, std::fs::File), StorageError<NodeId>> {
        let path = self
            .snapshot_dir()?
            .join(format!("{what}-{:016x}.tmp", rand::random::<u64>()));
        let f = std::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(snap_err)?;
        Ok((path, f))
    }

    /// Moves a complete snapshot file in place under its ID and makes it durable.
    fn publish(&self, tmp: &Path, id: &str) -> Result<String, StorageError<NodeId>> {
        let name = format!("{}.snap", sanitize(id));
        let dir = self.snapshot_dir()?;
        std::fs::rename(tmp, dir.join(&name)).map_err(snap_err)?;
        sync_dir(dir)?;
        Ok(name)
    }

    /// Records `name` as the current snapshot and deletes every other file.
    fn set_current(
        &self,
        meta: &SnapshotMeta<NodeId, ClusterNode>,
        name: &str,
    ) -> Result<(), StorageError<NodeId>> {
        let m = encode_meta(&StoredSnapshotMeta {
            meta: meta.clone(),
            file: Some(name.to_string()),
        })
        .map_err(snap_err)?;
        self.snapshots
            .apply_durable(vec![
                (SNAPSHOT_META_KEY.to_vec(), Some(m)),
                (LEGACY_SNAPSHOT_DATA_KEY.to_vec(), None),
            ])
            .map_err(snap_err)?;
        let receiving = crate::sync::lock(&self.receiving).clone();
        if let Ok(rd) = std::fs::read_dir(self.dir.as_path()) {
            for e in rd.flatten() {
                let p = e.path();
                let keep = e.file_name().to_string_lossy() == name
                    || Some(&p) == receiving.as_ref()
                    // A build running meanwhile publishes its own file later.
                    || e.file_name().to_string_lossy().starts_with("build-");
                if !keep {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        Ok(())
    }

    fn current(&self) -> Result<Option<StoredSnapshotMeta>, StorageError<NodeId>> {
        match self
            .snapshots
            .get(SNAPSHOT_META_KEY)
            .map_err(read_snap_err)?
        {
            Some(m) => Ok(Some(decode_meta(&m).map_err(read_snap_err)?)),
            None => Ok(None),
        }
    }

    /// Writes the pins and the metadata of the state as one consistent snapshot
    /// file; returns its metadata and file name.
    fn build(&self) -> Result<(SnapshotMeta<NodeId, ClusterNode>, String), StorageError<NodeId>> {
        let tree = self.state.tree().clone();
        // One range from the metadata keys through the pins: on a store whose
        // ranges are point-in-time views, metadata and pins come from the same
        // read transaction while apply goes on; otherwise apply waits.
        let _guard = (!tree.consistent_ranges()).then(|| self.lock_apply());
        let (tmp, file) = self.temp_file("build")?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[SNAPSHOT_V3]).map_err(snap_err)?;
        // `m/`, `p/`, `r/`, `s/`: the metadata, the pins and the request records.
        let (_, end) = prefix_bounds(SEQ_PREFIX);
        let mut applied: Option<LogId<NodeId>> = None;
        let mut membership = StoredMembership::default();
        let mut rec = Vec::with_capacity(64);
        for kv in tree.range(b"m/", end.as_deref()) {
            let (k, v) = kv.map_err(read_sm_err)?;
            if k.starts_with(PIN_PREFIX) {
                write_record(&mut out, &v).map_err(snap_err)?;
            } else if let Some(id) = k.strip_prefix(REQ_PREFIX) {
                rec.clear();
                rec.push(REC_REQUEST);
                rec.extend_from_slice(id);
                rec.extend_from_slice(&v);
                write_record(&mut out, &rec).map_err(snap_err)?;
            } else if k == REQ_SEQ_KEY {
                rec.clear();
                rec.push(REC_SEQ);
                rec.extend_from_slice(&v);
                write_record(&mut out, &rec).map_err(snap_err)?;
            } else if k == APPLIED_KEY {
                applied = decode_meta(&v).map_err(read_sm_err)?;
            } else if k == MEMBERSHIP_KEY {
                membership = decode_meta(&v).map_err(read_sm_err)?;
            }
        }
        drop(_guard);
        let file = out.into_inner().map_err(|e| snap_err(e.into_error()))?;
        file.sync_all().map_err(snap_err)?;
        drop(file);
        let snapshot_id = match &applied {
            Some(l) => format!(
                "{}-{}-{:08x}",
                l.leader_id.term,
                l.index,
                rand::random::<u32>()
            ),
            None => format!("0-0-{:08x}", rand::random::<u32>()),
        };
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id,
        };
        let name = self.publish(&tmp, &meta.snapshot_id)?;
        self.set_current(&meta, &name)?;
        Ok((meta, name))
    }

    /// Replaces the pinset with the snapshot file `name`, in batches. A marker
    /// makes a start after a crash midway redo it.
    fn install_file(
        &self,
        meta: &SnapshotMeta<NodeId, ClusterNode>,
        name: &str,
    ) -> Result<(), StorageError<NodeId>> {
        let tree = self.state.tree();
        let _guard = self.lock_apply();
        let marker = encode_meta(&StoredSnapshotMeta {
            meta: meta.clone(),
            file: Some(name.to_string()),
        })
        .map_err(sm_err)?;
        tree.apply_durable(vec![(INSTALLING_KEY.to_vec(), Some(marker))])
            .map_err(sm_err)?;
        // The installed records are any IDs: unknown until the install is done.
        *crate::sync::lock(&self.newest_recorded) = RequestId::MAX;
        // A filter of the snapshot's pins, answering once they are all in.
        let rebuild = self
            .state
            .filter()
            .rebuild(self.state.known_count().unwrap_or(0));
        self.set_current(meta, name)?;
        // Remove the old pins and request records in batches, never listing
        // them all at once.
        for prefix in [PIN_PREFIX, REQ_PREFIX, SEQ_PREFIX] {
            let (mut from, to) = prefix_bounds(prefix);
            loop {
                let keys: Vec<BatchEntry> = tree
                    .range(&from, to.as_deref())
                    .take(INSTALL_BATCH)
                    .map(|r| r.map(|(k, _)| (k, None)))
                    .collect::<Result<_, _>>()
                    .map_err(read_sm_err)?;
                let Some((last, _)) = keys.last() else {
                    break;
                };
                // The next batch starts just past this one: from the prefix, an
                // LSM store (fjall) would walk every tombstone written so far.
                let next = next_key(last);
                tree.apply(keys).map_err(sm_err)?;
                self.installed_batches.fetch_add(1, Ordering::Relaxed);
                match next {
                    Some(k) => from = k,
                    None => break,
                }
            }
        }
        let f = std::fs::File::open(self.dir.join(name)).map_err(read_snap_err)?;
        let mut records =
            Records::new(BufReader::with_capacity(1 << 20, f)).map_err(read_snap_err)?;
        let mut batch = Vec::with_capacity(INSTALL_BATCH);
        // A snapshot without a counter (format 1) had no request records.
        let mut seq = None;
        let mut count = 0u64;
        while let Some(r) = records.next().map_err(read_snap_err)? {
            match r {
                Record::Pin(pin) => {
                    count += 1;
                    let entry = PinState::add_entry(&pin).map_err(sm_err)?;
                    rebuild.insert(&entry.0);
                    batch.push(entry);
                }
                Record::Request(id, rec) => {
                    batch.push((req_key(id), Some(rec.encode())));
                    batch.push((seq_key(rec.seq), Some(id.to_be_bytes().to_vec())));
                }
                Record::Seq(n) => seq = Some(n),
            }
            if batch.len() >= INSTALL_BATCH {
                tree.apply(std::mem::take(&mut batch)).map_err(sm_err)?;
                self.installed_batches.fetch_add(1, Ordering::Relaxed);
            }
        }
        batch.push((REQ_SEQ_KEY.to_vec(), seq.map(|n| n.to_be_bytes().to_vec())));
        batch.push((
            APPLIED_KEY.to_vec(),
            Some(encode_meta(&meta.last_log_id).map_err(sm_err)?),
        ));
        batch.push((
            MEMBERSHIP_KEY.to_vec(),
            Some(encode_meta(&meta.last_membership).map_err(sm_err)?),
        ));
        batch.push((INSTALLING_KEY.to_vec(), None));
        batch.push(PinState::count_entry(count));
        tree.apply_durable(batch).map_err(sm_err)?;
        rebuild.finish();
        self.state.set_count(count);
        self.find_newest_recorded();
        self.publish_applied(meta.last_log_id.as_ref());
        Ok(())
    }

    /// Finishes an install a crash interrupted (see [`INSTALLING_KEY`]).
    fn recover_install(&self) -> Result<bool, StorageError<NodeId>> {
        let Some(m) = self.state.tree().get(INSTALLING_KEY).map_err(read_sm_err)? else {
            return Ok(false);
        };
        let stored: StoredSnapshotMeta = decode_meta(&m).map_err(read_sm_err)?;
        let name = stored
            .file
            .ok_or_else(|| read_sm_err(Corrupt("install marker without a file".into())))?;
        tracing::warn!(
            "a snapshot install was interrupted; installing snapshot {} again",
            stored.meta.snapshot_id
        );
        self.install_file(&stored.meta, &name)?;
        Ok(true)
    }

    /// Fills an empty store with `pins` alone, applied and snapshotted at
    /// `log_id` with `membership` (`state import`), streaming: the pins go to the
    /// state in batches and to the snapshot file as they come. Returns how many
    /// pins the pinset holds then.
    pub fn seed(
        &self,
        log_id: LogId<NodeId>,
        membership: Membership<NodeId, ClusterNode>,
        pins: impl Iterator<Item = Pin>,
    ) -> Result<u64, String> {
        let s = |e: StorageError<NodeId>| e.to_string();
        let tree = self.state.tree();
        // Pins stored outside apply: the filter answers again only once built
        // from the store (at the next start).
        let _unknown = self.state.filter().rebuild(0);
        let (tmp, file) = self.temp_file("build").map_err(s)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let io = |e: std::io::Error| e.to_string();
        out.write_all(&[FORMAT_V1]).map_err(io)?;
        // Sorted before it is stored: the store takes keys in order several
        // times faster, and the snapshot lists them as a built one would.
        let mut load = SortedLoad::start(self.snapshot_dir().map_err(s)?, SEED_RUN_BYTES);
        for pin in pins {
            if let (k, Some(v)) = PinState::add_entry(&pin).map_err(|e| e.to_string())? {
                load.push(k, v).map_err(|e| e.to_string())?;
            }
        }
        let pins_written = load
            .finish(tree, &mut |_, v| {
                write_record(&mut out, v).map_err(|e| StoreError(format!("snapshot file: {e}")))
            })
            .map_err(|e| e.to_string())?;
        let mut batch = Vec::with_capacity(3);
        batch.push(PinState::count_entry(pins_written));
        let stored = StoredMembership::new(Some(log_id), membership);
        batch.push((
            APPLIED_KEY.to_vec(),
            Some(encode_meta(&Some(log_id)).map_err(|e| e.to_string())?),
        ));
        batch.push((
            MEMBERSHIP_KEY.to_vec(),
            Some(encode_meta(&stored).map_err(|e| e.to_string())?),
        ));
        tree.apply_durable(batch).map_err(|e| e.to_string())?;
        tree.settle().map_err(|e| e.to_string())?;
        let file = out.into_inner().map_err(|e| e.into_error().to_string())?;
        file.sync_all().map_err(io)?;
        drop(file);
        let meta = SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: stored,
            snapshot_id: format!("import-{:08x}", rand::random::<u32>()),
        };
        let name = self.publish(&tmp, &meta.snapshot_id).map_err(s)?;
        self.set_current(&meta, &name).map_err(s)?;
        self.state.set_count(pins_written);
        // The input may name a CID twice; the pinset holds it once.
        Ok(pins_written)
    }

    /// Applies `entries` in one store write; returns one result per entry, the
    /// events to announce and the registered writers' answers.
    fn apply_entries(
        &self,
        entries: Vec<Entry<TypeConfig>>,
    ) -> Result<Applies, StorageError<NodeId>> {
        let tree = self.state.tree();
        let mut results = Vec::with_capacity(entries.len());
        let mut events = Vec::new();
        let mut answers = Vec::new();
        let mut batch = Vec::new();
        // Requests of one call may touch the same CID or repeat an ID: what
        // earlier ones did is read from here, so that outcomes follow the log
        // order, not the store. `None`: not in the pinset.
        let mut pins: HashMap<Cid, Option<Vec<u8>>> = HashMap::new();
        // Requests recorded by this call: the run that holds each, and where.
        let mut recorded: HashMap<RequestId, (usize, usize)> = HashMap::new();
        // Everything the requests will look up, read at once (sorted pins: fewer
        // pages). Nothing else writes the tree meanwhile (apply is serial).
        let mut ids = Vec::new();
        let mut cids = Vec::new();
        let newest = *crate::sync::lock(&self.newest_recorded);
        let mut newest_now = newest;
        for e in &entries {
            if let EntryPayload::Normal(b) = &e.payload {
                for r in &b.0 {
                    if let Some(id) = r.id {
                        newest_now = newest_now.max(id);
                        if id <= newest {
                            ids.push(id);
                        }
                    }
                    cids.push(r.cid());
                    cids.extend(r.expect.iter().map(|x| x.cid));
                }
            }
        }
        cids.sort_unstable();
        cids.dedup();
        let keys: Vec<Vec<u8>> = cids.iter().map(PinState::key).collect();
        let values = self.state.get_stored(&keys).map_err(read_sm_err)?;
        pins.extend(cids.into_iter().zip(values));
        // Only retries, and IDs made before the newest recorded (a peer whose
        // clock is behind, a forward overtaken by newer writes), get here: a
        // range for each run of consecutive IDs.
        ids.sort_unstable();
        ids.dedup();
        let mut stored: HashMap<RequestId, Seen> = HashMap::new();
        let mut i = 0;
        while i < ids.len() {
            let mut j = i;
            while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
                j += 1;
            }
            find_recorded(tree.as_ref(), (ids[i], ids[j]), &mut stored)?;
            i = j + 1;
        }
        // This call's runs.
        let mut runs: Vec<Run> = Vec::new();
        // Expired stored records whose IDs were applied anew: (key, seq).
        let mut superseded: Vec<(RequestId, u64)> = Vec::new();
        let seq_start = match tree.get(REQ_SEQ_KEY).map_err(read_sm_err)? {
            Some(v) if v.len() == 8 => u64_at(&v),
            Some(v) => return Err(read_sm_err(Corrupt(format!("request counter {v:?}")))),
            None => 0,
        };
        let mut seq = seq_start;
        let mut last = None;
        let mut membership = None;
        // The pinset's size after this call, when it is known.
        let mut count = self.state.known_count();
        for entry in entries {
            last = Some(entry.log_id);
            let index = entry.log_id.index;
            match entry.payload {
                EntryPayload::Blank => results.push(ApplyResult::default()),
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    results.push(ApplyResult::default());
                }
                EntryPayload::Normal(ops) => {
                    let waiter = self.waiters.take(&ops.0);
                    let mut outcomes = Vec::with_capacity(ops.0.len());
                    // The run each next ID would extend (runs are per entry).
                    let mut open: HashMap<RequestId, usize> = HashMap::new();
                    for req in ops.0 {
                        if let Some(id) = req.id {
                            let prior = match recorded.get(&id) {
                                Some(&(run, at)) => Some(runs[run].rec.seen(runs[run].last, at)),
                                None => stored.get(&id).copied(),
                            };
                            // Seen: answered as the first time, nothing changes. A
                            // record past the window (pruned at the end of this
                            // call) no longer counts.
                            if let Some(r) = prior.filter(|r| r.live_at(seq, self.window)) {
                                outcomes.push(Committed {
                                    outcome: r.outcome,
                                    index: r.index,
                                });
                                continue;
                            }
                        }
                        let mut holds = true;
                        for e in &req.expect {
                            let cur = current(&self.state, &mut pins, &e.cid)?;
                            holds &= match (e.prior, cur) {
                                (Prior::Absent, None) => true,
                                (Prior::Digest(d), Some(v)) => {
                                    digest_of_stored(v).map_err(read_sm_err)? == d
                                }
                                _ => false,
                            };
                            if !holds {
                                break;
                            }
                        }
                        let outcome = if holds {
                            let cid = req.cid();
                            let prior = current(&self.state, &mut pins, &cid)?;
                            let existed = prior.is_some();
                            match req.op {
                                LogOp::Pin(pin) => {
                                    // Updates are rare next to new pins: only they
                                    // pay for decoding what they replace.
                                    let before = prior.and_then(|v| replaced(&cid, v));
                                    let entry = PinState::add_entry(&pin).map_err(sm_err)?;
                                    if !existed {
                                        count = count.map(|n| n + 1);
                                    }
                                    pins.insert(cid, entry.1.clone());
                                    batch.push(entry);
                                    events.push(StateEvent::Pinned { pin, before });
                                }
                                LogOp::Unpin(cid) => {
                                    pins.insert(cid, None);
                                    batch.push(PinState::rm_entry(&cid));
                                    if existed {
                                        count = count.map(|n| n.saturating_sub(1));
                                        events.push(StateEvent::Unpinned(cid));
                                    }
                                }
                            }
                            Outcome::Applied { existed }
                        } else {
                            Outcome::Conflict
                        };
                        if let Some(id) = req.id {
                            // The expired record that held the ID no longer counts
                            // for any of its IDs: it goes.
                            if let Some(&(run, _)) = recorded.get(&id) {
                                runs[run].dropped = true;
                            } else if let Some(old) = stored.get(&id) {
                                superseded.push((old.key, old.seq));
                            }
                            let run = match open.remove(&id) {
                                Some(i)
                                    if !runs[i].dropped && runs[i].rec.outcomes.len() < MAX_RUN =>
                                {
                                    i
                                }
                                _ => {
                                    let rec = RunRecord {
                                        index,
                                        seq,
                                        outcomes: Vec::new(),
                                    };
                                    runs.push(Run {
                                        last: id,
                                        rec,
                                        dropped: false,
                                    });
                                    runs.len() - 1
                                }
                            };
                            runs[run].last = id;
                            runs[run].rec.outcomes.push(outcome);
                            if let Some(next) = id.checked_add(1) {
                                open.insert(next, run);
                            }
                            recorded.insert(id, (run, runs[run].rec.outcomes.len() - 1));
                            seq += 1;
                        }
                        outcomes.push(Committed { outcome, index });
                    }
                    let result = ApplyResult { outcomes };
                    if let Some(tx) = waiter {
                        answers.push((tx, result.clone()));
                    }
                    results.push(result);
                }
            }
        }
        if seq != seq_start {
            // Records that left the window: the earliest first, in key order,
            // deleted before this call's records are written (an ID seen again
            // after its record expired is recorded anew).
            let step = (self.window / PRUNE_STEPS).max(1);
            let kept_from = |next: u64| next.saturating_sub(self.window) / step * step;
            let keep_from = kept_from(seq);
            // Every apply (and every snapshot, built from a store that kept the
            // same rule) left nothing below where the last call's records were
            // kept from: the range starts there. On an LSM store (fjall) a range
            // from the first order key would walk the tombstones of every
            // record pruned before, apply after apply.
            let below = kept_from(seq_start);
            // One write per key, the last decision winning: a record written
            // anew under a key that a prune or a superseded record deletes.
            let mut writes: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
            if keep_from > below {
                for kv in tree.range(&seq_key(below), Some(&seq_key(keep_from))) {
                    let (k, id) = kv.map_err(read_sm_err)?;
                    let mut key = REQ_PREFIX.to_vec();
                    key.extend_from_slice(&id);
                    writes.insert(key, None);
                    writes.insert(k, None);
                }
            }
            // Its order key goes with it: a prune reaching that key later must
            // not delete a new record under the same key.
            for (key, old_seq) in superseded {
                writes.insert(req_key(key), None);
                writes.insert(seq_key(old_seq), None);
            }
            for Run { last, rec, dropped } in runs {
                if !dropped && rec.seq >= keep_from {
                    writes.insert(seq_key(rec.seq), Some(last.to_be_bytes().to_vec()));
                    writes.insert(req_key(last), Some(rec.encode()));
                }
            }
            batch.extend(writes);
            batch.push((REQ_SEQ_KEY.to_vec(), Some(seq.to_be_bytes().to_vec())));
        }
        batch.push((
            APPLIED_KEY.to_vec(),
            Some(encode_meta(&last).map_err(sm_err)?),
        ));
        if let Some(m) = membership {
            batch.push((
                MEMBERSHIP_KEY.to_vec(),
                Some(encode_meta(&m).map_err(sm_err)?),
            ));
        }
        if let Some(n) = count {
            batch.push(PinState::count_entry(n));
        }
        if let Some(l) = last {
            events.push(StateEvent::Applied(l.index));
        }
        let _guard = self.lock_apply();
        // New pins join the presence filter before they are stored, under the
        // lock that a rebuild of the filter takes: no reader finds a stored pin
        // "certainly absent".
        let filter = self.state.filter();
        for (k, v) in &batch {
            if v.is_some() && k.starts_with(PIN_PREFIX) {
                filter.insert(k);
            }
        }
        // Atomic, and durable only now and then: the entries are durable in the
        // log, which keeps them until a purge has made the state durable. A
        // crash before that leaves the state (request records included) at an
        // earlier applied index, consistent with its marker, and openraft
        // applies the rest of the log again.
        let durable = {
            let mut at = crate::sync::lock(&self.durable_at);
            let due = at.elapsed() >= DURABLE_APPLY_EVERY;
            if due {
                *at = std::time::Instant::now();
            }
            due
        };
        if durable {
            tree.apply_durable(batch).map_err(sm_err)?;
        } else {
            tree.apply(batch).map_err(sm_err)?;
        }
        if let Some(n) = count {
            self.state.set_count(n);
        }
        *crate::sync::lock(&self.newest_recorded) = newest_now;
        if last.is_some() {
            self.publish_applied(last.as_ref());
        }
        Ok(Applies {
            results,
            events,
            answers,
        })
    }

    /// Installs a snapshot received into `snapshot` (see [`RaftStateMachine::install_snapshot`]).
    async fn install_received(
        &self,
        meta: &SnapshotMeta<NodeId, ClusterNode>,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<NodeId>> {
        use tokio::io::AsyncWriteExt;
        snapshot.flush().await.map_err(snap_err)?;
        let mut file = (*snapshot).into_std().await;
        let this = self.clone();
        let owned_meta = meta.clone();
        blocking(move || {
            use std::os::unix::fs::MetadataExt;
            let receiving = crate::sync::lock(&this.receiving).take();
            let at = |m: std::fs::Metadata| (m.dev(), m.ino());
            let ours = file.metadata().map(at).ok();
            // A snapshot received in chunks comes back in the file
            // begin_receiving_snapshot gave; one handed over whole
            // (install_full_snapshot, openraft's test suite) is another file,
            // copied in here rather than ignored.
            let path = match receiving {
                Some(p) if ours.is_some() && std::fs::metadata(&p).map(at).ok() == ours => p,
                other => {
                    if let Some(p) = other {
                        let _ = std::fs::remove_file(p);
                    }
                    let (tmp, mut out) = this.temp_file("recv")?;
                    std::io::Seek::rewind(&mut file).map_err(read_snap_err)?;
                    std::io::copy(&mut file, &mut out).map_err(snap_err)?;
                    file = out;
                    tmp
                }
            };
            file.sync_all().map_err(snap_err)?;
            drop(file);
            let name = this.publish(&path, &owned_meta.snapshot_id)?;
            this.install_file(&owned_meta, &name)
        })
        .await?;
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        self.notify(vec![StateEvent::Reset, StateEvent::Applied(index)]);
        Ok(())
    }

    fn notify(&self, events: Vec<StateEvent>) {
        // Never waits: a tracker that lags behind is told so and catches up from the state.
        for e in events {
            let _ = self.events.send(e);
        }
    }

    /// The current snapshot's file, moving an earlier version's in-tree
    /// snapshot into a file first.
    fn current_file(&self) -> Result<Option<(Meta, PathBuf)>, StorageError<NodeId>> {
        let Some(cur) = self.current()? else {
            return Ok(None);
        };
        if let Some(name) = cur.file {
            return Ok(Some((cur.meta, self.dir.join(name))));
        }
        let Some(data) = self
            .snapshots
            .get(LEGACY_SNAPSHOT_DATA_KEY)
            .map_err(read_snap_err)?
        else {
            return Ok(None);
        };
        let (tmp, mut f) = self.temp_file("build")?;
        f.write_all(&data).map_err(snap_err)?;
        f.sync_all().map_err(snap_err)?;
        drop(f);
        let name = self.publish(&tmp, &cur.meta.snapshot_id)?;
        self.set_current(&cur.meta, &name)?;
        Ok(Some((cur.meta, self.dir.join(name))))
    }
}

/// The pin a new version of `cid` replaces, from its stored value. One that does
/// not decode is being overwritten: it must not stop the apply, and the tracker
/// then takes the pin as new.
fn replaced(cid: &Cid, stored: &[u8]) -> Option<Box<Pin>> {
    match PinState::decode_value(stored) {
        Ok(p) => Some(Box::new(p)),
        Err(e) => {
            tracing::warn!(%cid, "the pin replaced does not decode: {e}");
            None
        }
    }
}

/// The stored value of `cid`'s pin as the requests applied so far left it.
fn current<'a>(
    state: &PinState,
    pins: &'a mut HashMap<Cid, Option<Vec<u8>>>,
    cid: &Cid,
) -> Result<Option<&'a [u8]>, StorageError<NodeId>> {
    if !pins.contains_key(cid) {
        let v = state
            .get_stored(&[PinState::key(cid)])
            .map_err(read_sm_err)?;
        pins.insert(*cid, v.into_iter().next().flatten());
    }
    Ok(pins.get(cid).and_then(|v| v.as_deref()))
}

/// A snapshot ID as a file name.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn sync_dir(dir: &Path) -> Result<(), StorageError<NodeId>> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(snap_err)
}

async fn open_snapshot(path: PathBuf) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
    tokio::fs::File::open(&path)
        .await
        .map(Box::new)
        .map_err(read_snap_err)
}

/// Runs blocking store and file I/O off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError<NodeId>> + Send + 'static,
) -> Result<T, StorageError<NodeId>> {
    tokio::task::spawn_blocking(f).await.map_err(sm_err)?
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let this = self.clone();
        let (meta, name) = blocking(move || this.build()).await?;
        Ok(Snapshot {
            meta,
            snapshot: open_snapshot(self.dir.join(name)).await?,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<AppliedState, StorageError<NodeId>> {
        let this = self.clone();
        blocking(move || {
            this.recover_install()?;
            let (applied, membership) = this.read_meta()?;
            this.publish_applied(applied.as_ref());
            // Where the trackers' count of what they have taken in starts:
            // the entries applied before come to them from the state.
            if let Some(l) = &applied {
                this.notify(vec![StateEvent::Applied(l.index)]);
            }
            Ok((applied, membership))
        })
        .await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let this = self.clone();
        blocking(move || {
            let a = this.apply_entries(entries)?;
            // From here, not after the hop back. The writers first: both wakes
            // land in the runtime's shared queue, in this order, and a tracker
            // woken first would send its daemon call before the client's
            // answer (60-80 us a write at one connection, timeline probe).
            // A tracker that has not read the change yet still answers right:
            // its status reads wait for it to reach the applied index
            // (published above, in `apply_entries`).
            for (tx, result) in a.answers {
                let _ = tx.send(result);
            }
            this.notify(a.events);
            Ok(a.results)
        })
        .await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
        let this = self.clone();
        let (path, f) = blocking(move || {
            let (path, f) = this.temp_file("recv")?;
            this.receives.fetch_add(1, Ordering::Relaxed);
            let old = crate::sync::lock(&this.receiving).replace(path.clone());
            // A receive that was abandoned for this one.
            if let Some(old) = old {
                let _ = std::fs::remove_file(old);
            }
            Ok((path, f))
        })
        .await?;
        tracing::debug!("receiving a snapshot into {}", path.display());
        Ok(Box::new(tokio::fs::File::from_std(f)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, ClusterNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<NodeId>> {
        let res = self.install_received(meta, snapshot).await;
        if res.is_err() {
            self.applied.send_replace(Applied::InstallFailed);
        }
        res
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let this = self.clone();
        match blocking(move || this.current_file()).await? {
            Some((meta, path)) => Ok(Some(Snapshot {
                meta,
                snapshot: open_snapshot(path).await?,
            })),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Expect, LogBatch, Request};
    use crate::store::{self, Backend, KvPair};
    use crate::types::PinOptions;
    use openraft::CommittedLeaderId;
    use std::io::Read;

    fn cid(n: u64) -> Cid {
        crate::types::Cid(cid::Cid::new_v1(
            0x55,
            cid::multihash::Multihash::wrap(0x00, &n.to_be_bytes()).unwrap(),
        ))
    }

    fn machine(dir: &Path, backend: Backend) -> StateMachine {
        std::fs::create_dir_all(dir.join("db")).unwrap();
        let db = store::open(&dir.join("db"), backend).unwrap();
        let (tx, _) = tokio::sync::broadcast::channel(1024);
        StateMachine::new(
            PinState::new(db.tree("state").unwrap()),
            db.tree("snapshot").unwrap(),
            dir.join("snapshots"),
            tx,
        )
    }

    fn entry(index: u64, pins: std::ops::Range<u64>) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(LogBatch(
                pins.map(|n| {
                    Request::new(LogOp::Pin(Box::new(Pin::new(
                        cid(n),
                        PinOptions::default(),
                    ))))
                })
                .collect(),
            )),
        }
    }

    /// The pinset's size as the state machine keeps it, checked against a
    /// count of the keys.
    fn counted(state: &PinState) -> u64 {
        let kept = state.known_count().expect("the pinset's size is kept");
        assert_eq!(kept, state.count_keys().unwrap(), "the size kept");
        kept
    }

    /// New pins add to the kept size, pins again and unpins of absent CIDs do
    /// not, unpins take away; a store without the size (an earlier version's)
    /// is counted when opened.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pinset_size_follows_every_change() {
        for backend in [Backend::Redb, Backend::Fjall, Backend::Sled] {
            let dir = tempfile::tempdir().unwrap();
            let mut sm = machine(dir.path(), backend);
            assert_eq!(counted(&sm.state), 0, "{backend}");
            sm.apply(vec![entry(1, 0..10)]).await.unwrap();
            assert_eq!(counted(&sm.state), 10, "{backend}");
            let pin = |n| {
                Request::new(LogOp::Pin(Box::new(Pin::new(
                    cid(n),
                    PinOptions::default(),
                ))))
            };
            let unpin = |n| Request::new(LogOp::Unpin(cid(n)));
            let reqs = vec![
                unpin(0),
                unpin(1),
                pin(5),
                unpin(999),
                pin(20),
                unpin(20),
                unpin(1),
            ];
            sm.apply(vec![at(2, reqs)]).await.unwrap();
            assert_eq!(counted(&sm.state), 8, "{backend}");
            sm.state
                .tree()
                .apply(vec![(crate::state::PIN_COUNT_KEY.to_vec(), None)])
                .unwrap();
            drop(sm);
            let sm = machine(dir.path(), backend);
            assert_eq!(counted(&sm.state), 8, "{backend}");
        }
    }

    async fn read_snapshot(sm: &mut StateMachine) -> (Option<LogId<NodeId>>, Vec<Cid>) {
        let snap = sm.get_current_snapshot().await.unwrap().unwrap();
        let f = (*snap.snapshot).into_std().await;
        let mut r = Records::new(BufReader::new(f)).unwrap();
        let mut cids = Vec::new();
        while let Some(p) = r.next_pin().unwrap() {
            cids.push(p.cid);
        }
        (snap.meta.last_log_id, cids)
    }

    /// Entry `i` (from 1) pins CIDs `BASE + (i-1)*PER ..`; a snapshot at index
    /// `k` must hold exactly the preloaded pins and those of entries 1..=k.
    async fn snapshot_matches_its_metadata(backend: Backend) {
        const BASE: u64 = 1_000_000;
        const PER: u64 = 50;
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine(dir.path(), backend);
        // Enough pins that a build takes a while.
        sm.seed(
            LogId::new(CommittedLeaderId::new(0, 0), 0),
            Membership::new(
                vec![std::collections::BTreeSet::from([1])],
                std::collections::BTreeMap::from([(1, ClusterNode::default())]),
            ),
            (0..20_000).map(|n| Pin::new(cid(n), PinOptions::default())),
        )
        .unwrap();
        let mut applier = sm.clone();
        let apply = tokio::spawn(async move {
            for i in 1..=200u64 {
                let from = BASE + (i - 1) * PER;
                applier
                    .apply(vec![entry(i, from..from + PER)])
                    .await
                    .unwrap();
            }
        });
        let mut builds = Vec::new();
        loop {
            let done = apply.is_finished();
            let mut b = sm.get_snapshot_builder().await;
            let snap = b.build_snapshot().await.unwrap();
            builds.push(snap.meta.last_log_id.map(|l| l.index).unwrap_or(0));
            let (last, cids) = read_snapshot(&mut sm).await;
            let k = last.map(|l| l.index).unwrap_or(0);
            assert_eq!(cids.len() as u64, 20_000 + k * PER, "snapshot at {k}");
            let mut want: Vec<Cid> = (0..20_000).map(cid).collect();
            want.extend((BASE..BASE + k * PER).map(cid));
            want.sort();
            let mut got = cids;
            got.sort();
            assert_eq!(got, want, "snapshot at {k} holds other pins");
            if done {
                break;
            }
        }
        apply.await.unwrap();
        // The builds ran while entries were applied (not all before or after).
        assert!(builds.iter().any(|&k| k > 0 && k < 200), "{builds:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_built_while_applying_matches_its_metadata_redb() {
        snapshot_matches_its_metadata(Backend::Redb).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_built_while_applying_matches_its_metadata_sled() {
        snapshot_matches_its_metadata(Backend::Sled).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_built_while_applying_matches_its_metadata_fjall() {
        snapshot_matches_its_metadata(Backend::Fjall).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshots_install_from_files_and_old_json_snapshots_still_install() {
        let dir = tempfile::tempdir().unwrap();
        let mut leader = machine(&dir.path().join("a"), Backend::Redb);
        leader.apply(vec![entry(1, 0..3000)]).await.unwrap();
        let snap = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        // Sent as openraft does: chunks written into the receiver's file.
        let mut follower = machine(&dir.path().join("b"), Backend::Redb);
        follower.apply(vec![entry(1, 5000..5010)]).await.unwrap();
        let mut rx = follower.begin_receiving_snapshot().await.unwrap();
        let mut src = (*snap.snapshot).into_std().await;
        let mut data = Vec::new();
        src.read_to_end(&mut data).unwrap();
        for chunk in data.chunks(1000) {
            tokio::io::AsyncWriteExt::write_all(&mut *rx, chunk)
                .await
                .unwrap();
        }
        let applied = follower.applied();
        assert_eq!(*applied.borrow(), Applied::Upto(Some(1)));
        follower.install_snapshot(&snap.meta, rx).await.unwrap();
        assert_eq!(
            *applied.borrow(),
            Applied::Upto(snap.meta.last_log_id.map(|l| l.index))
        );
        assert_eq!(counted(&follower.state), 3000);
        assert!(follower.state.has(&cid(2999)).unwrap());
        assert!(!follower.state.has(&cid(5000)).unwrap());
        assert_eq!(follower.read_meta().unwrap().0, snap.meta.last_log_id);
        let (_, cids) = read_snapshot(&mut follower).await;
        assert_eq!(cids.len(), 3000);

        // A store of the previous version: the snapshot as JSON lines in the tree.
        let old = machine(&dir.path().join("c"), Backend::Sled);
        let mut lines = Vec::new();
        for n in 0..10 {
            serde_json::to_writer(&mut lines, &Pin::new(cid(n), PinOptions::default())).unwrap();
            lines.push(b'\n');
        }
        let meta: SnapshotMeta<NodeId, ClusterNode> = SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 7)),
            last_membership: StoredMembership::default(),
            snapshot_id: "1-7-abc".into(),
        };
        old.snapshots
            .apply(vec![
                (
                    SNAPSHOT_META_KEY.to_vec(),
                    Some(serde_json::to_vec(&serde_json::json!({ "meta": meta })).unwrap()),
                ),
                (LEGACY_SNAPSHOT_DATA_KEY.to_vec(), Some(lines)),
            ])
            .unwrap();
        let mut old = old;
        let (last, cids) = read_snapshot(&mut old).await;
        assert_eq!(last, meta.last_log_id);
        assert_eq!(cids.len(), 10);
        let snap = old.get_current_snapshot().await.unwrap().unwrap();
        let mut fresh = machine(&dir.path().join("d"), Backend::Sled);
        let mut rx = fresh.begin_receiving_snapshot().await.unwrap();
        let mut src = (*snap.snapshot).into_std().await;
        let mut data = Vec::new();
        src.read_to_end(&mut data).unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut *rx, &data)
            .await
            .unwrap();
        fresh.install_snapshot(&snap.meta, rx).await.unwrap();
        assert_eq!(counted(&fresh.state), 10);
    }

    /// A purge that waits for an install must hear of its failure.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_install_is_published_to_the_purges() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine(dir.path(), Backend::Redb);
        sm.apply(vec![entry(1, 0..10)]).await.unwrap();
        let applied = sm.applied();
        let mut rx = sm.begin_receiving_snapshot().await.unwrap();
        // Not a snapshot: an unknown format byte.
        tokio::io::AsyncWriteExt::write_all(&mut *rx, &[0x7f, 1, 2, 3])
            .await
            .unwrap();
        let meta: SnapshotMeta<NodeId, ClusterNode> = SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), 40)),
            last_membership: StoredMembership::default(),
            snapshot_id: "2-40-bad".into(),
        };
        assert!(sm.install_snapshot(&meta, rx).await.is_err());
        assert_eq!(*applied.borrow(), Applied::InstallFailed);
        assert!(!applied.borrow().covers(40));
    }

    /// A crash while compacting (a build cut short, a file published but not
    /// yet current) or receiving leaves files that the next start removes; the
    /// current snapshot and the pinset are as they were.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_of_an_interrupted_compaction_are_removed_at_start() {
        for backend in [Backend::Sled, Backend::Redb, Backend::Fjall] {
            let dir = tempfile::tempdir().unwrap();
            let mut sm = machine(dir.path(), backend);
            sm.apply(vec![entry(5, 0..100)]).await.unwrap();
            let snap = sm
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            let name = sm.current().unwrap().unwrap().file.unwrap();
            let snaps = dir.path().join("snapshots");
            for f in [
                "build-00000000000000aa.tmp",
                "recv-00000000000000bb.tmp",
                "1-9-0000abcd.snap",
            ] {
                std::fs::write(snaps.join(f), b"partial").unwrap();
            }
            drop(sm);
            let mut sm = machine(dir.path(), backend);
            let left: Vec<String> = std::fs::read_dir(&snaps)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .collect();
            assert_eq!(left, vec![name], "{backend}");
            let (applied, _) = sm.applied_state().await.unwrap();
            assert_eq!(applied, snap.meta.last_log_id);
            assert_eq!(counted(&sm.state), 100);
            let cur = sm.get_current_snapshot().await.unwrap().unwrap();
            assert_eq!(cur.meta.snapshot_id, snap.meta.snapshot_id);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_interrupted_install_is_redone_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine(dir.path(), Backend::Redb);
        sm.apply(vec![entry(5, 0..100)]).await.unwrap();
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let name = sm.current().unwrap().unwrap().file.unwrap();
        // A crash after the marker and part of the pins: some gone, others added.
        let marker = encode_meta(&StoredSnapshotMeta {
            meta: snap.meta.clone(),
            file: Some(name),
        })
        .unwrap();
        let tree = sm.state.tree().clone();
        let mut batch = vec![(INSTALLING_KEY.to_vec(), Some(marker))];
        batch.extend((0..50).map(|n| PinState::rm_entry(&cid(n))));
        batch.push(PinState::add_entry(&Pin::new(cid(777), PinOptions::default())).unwrap());
        tree.apply(batch).unwrap();
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied, snap.meta.last_log_id);
        assert_eq!(counted(&sm.state), 100);
        assert!(!sm.state.has(&cid(777)).unwrap());
        assert!(tree.get(INSTALLING_KEY).unwrap().is_none());
    }

    fn at(index: u64, reqs: Vec<Request>) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(LogBatch(reqs)),
        }
    }

    fn pin_req(id: RequestId, n: u64) -> Request {
        Request {
            id: Some(id),
            op: LogOp::Pin(Box::new(Pin::new(cid(n), PinOptions::default()))),
            expect: Vec::new(),
        }
    }

    fn unpin_req(id: RequestId, n: u64) -> Request {
        Request {
            id: Some(id),
            op: LogOp::Unpin(cid(n)),
            expect: Vec::new(),
        }
    }

    fn outcomes(r: &[ApplyResult]) -> Vec<(Outcome, u64)> {
        r.iter()
            .flat_map(|a| a.outcomes.iter().map(|c| (c.outcome, c.index)))
            .collect()
    }

    const PINNED: Outcome = Outcome::Applied { existed: false };
    const REMOVED: Outcome = Outcome::Applied { existed: true };

    /// Sends `from`'s current snapshot to `to` as openraft does, in chunks.
    async fn transfer(from: &mut StateMachine, to: &mut StateMachine) {
        let snap = from
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let mut rx = to.begin_receiving_snapshot().await.unwrap();
        let mut src = (*snap.snapshot).into_std().await;
        let mut data = Vec::new();
        src.read_to_end(&mut data).unwrap();
        for chunk in data.chunks(100) {
            tokio::io::AsyncWriteExt::write_all(&mut *rx, chunk)
                .await
                .unwrap();
        }
        to.install_snapshot(&snap.meta, rx).await.unwrap();
    }

    /// Pin 1 (request 10) and unpin 2 (absent, request 11) at index 1; unpin 1
    /// (request 12) at index 2.
    fn first_entries() -> Vec<Entry<TypeConfig>> {
        vec![
            at(1, vec![pin_req(10, 1), unpin_req(11, 2)]),
            at(2, vec![unpin_req(12, 1)]),
        ]
    }

    /// The retries of every request of [`first_entries`], in one later entry.
    fn retried(index: u64) -> Entry<TypeConfig> {
        at(
            index,
            vec![pin_req(10, 1), unpin_req(11, 2), unpin_req(12, 1)],
        )
    }

    /// The retried requests change nothing (pin 1 is not pinned again, no
    /// event) and get the first outcomes and indexes.
    async fn check_retry_answered(sm: &mut StateMachine, index: u64) {
        let mut events = sm.events.subscribe();
        let r = sm.apply(vec![retried(index)]).await.unwrap();
        assert_eq!(outcomes(&r), vec![(PINNED, 1), (PINNED, 1), (REMOVED, 2)]);
        assert!(
            !sm.state.has(&cid(1)).unwrap(),
            "a retried pin was applied again"
        );
        assert_eq!(counted(&sm.state), 0);
        let mut changes = Vec::new();
        while let Ok(e) = events.try_recv() {
            if !matches!(e, StateEvent::Applied(_)) {
                changes.push(format!("{e:?}"));
            }
        }
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(sm.read_meta().unwrap().0.map(|l| l.index), Some(index));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_repeated_request_id_is_answered_with_the_first_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine(&dir.path().join("a"), Backend::Redb);
        let r = sm.apply(first_entries()).await.unwrap();
        assert_eq!(outcomes(&r), vec![(PINNED, 1), (PINNED, 1), (REMOVED, 2)]);
        check_retry_answered(&mut sm, 3).await;

        // The same, with the retry in the same apply call as the first attempt.
        let mut sm = machine(&dir.path().join("b"), Backend::Sled);
        let mut all = first_entries();
        all.push(retried(3));
        let r = sm.apply(all).await.unwrap();
        assert_eq!(outcomes(&r)[3..], [(PINNED, 1), (PINNED, 1), (REMOVED, 2)]);
        assert_eq!(counted(&sm.state), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn request_ids_survive_a_restart() {
        for backend in [Backend::Redb, Backend::Sled, Backend::Fjall] {
            let dir = tempfile::tempdir().unwrap();
            let mut sm = machine(dir.path(), backend);
            sm.apply(first_entries()).await.unwrap();
            drop(sm);
            let mut sm = machine(dir.path(), backend);
            check_retry_answered(&mut sm, 3).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn request_ids_travel_in_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let mut leader = machine(&dir.path().join("a"), Backend::Redb);
        leader.apply(first_entries()).await.unwrap();
        // A follower that had other requests: the snapshot replaces them.
        let mut follower = machine(&dir.path().join("b"), Backend::Sled);
        follower
            .apply(vec![at(1, vec![pin_req(99, 5)])])
            .await
            .unwrap();
        transfer(&mut leader, &mut follower).await;
        check_retry_answered(&mut follower, 3).await;
        // Request 99 is not the snapshot's: applied as new.
        let r = follower
            .apply(vec![at(4, vec![pin_req(99, 5)])])
            .await
            .unwrap();
        assert_eq!(outcomes(&r), vec![(PINNED, 4)]);
        // A snapshot of the follower carries them on again.
        let mut third = machine(&dir.path().join("c"), Backend::Redb);
        transfer(&mut follower, &mut third).await;
        let r = third
            .apply(vec![at(5, vec![pin_req(99, 5), unpin_req(12, 1)])])
            .await
            .unwrap();
        assert_eq!(outcomes(&r), vec![(PINNED, 4), (REMOVED, 2)]);
    }

    /// Every replica keeps the same records whatever the grouping of entries
    /// into apply calls, and a request past the window is applied anew.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn request_records_are_pruned_alike_on_every_replica() {
        let dir = tempfile::tempdir().unwrap();
        // Requests 1..=12, entry i pins CID i; then request 3 again (past a
        // window of 4) and request 11 again (inside it).
        let mut log: Vec<Entry<TypeConfig>> = (1..=12u64)
            .map(|i| at(i, vec![pin_req(u128::from(i), i)]))
            .collect();
        log.push(at(13, vec![unpin_req(3, 3), unpin_req(11, 11)]));
        for (name, got, records, sm) in apply_grouped(dir.path(), &log, 4).await {
            // Request 3's record expired: its unpin is applied; 11's is not.
            assert_eq!(got[12..], [(REMOVED, 13), (PINNED, 11)], "{name}");
            assert!(!sm.state.has(&cid(3)).unwrap() && sm.state.has(&cid(11)).unwrap());
            // 4 records (the window), each with its order key.
            assert_eq!(records.len(), 8, "{name}");
        }
    }

    /// One machine of [`apply_grouped`]: its name, outcomes, request records.
    type Grouped = (String, Vec<(Outcome, u64)>, Vec<KvPair>, StateMachine);

    /// Applies `log` on new machines that group its entries into apply calls
    /// differently (on redb and fjall), keeping records for `window` requests;
    /// checks that all end with the same outcomes and the same records, and
    /// returns each one's name, outcomes, records and machine.
    async fn apply_grouped(dir: &Path, log: &[Entry<TypeConfig>], window: u64) -> Vec<Grouped> {
        let mut seen: Vec<Grouped> = Vec::new();
        for (name, group, backend) in [
            ("one", log.len(), Backend::Redb),
            ("each", 1, Backend::Redb),
            ("threes", 3, Backend::Redb),
            ("each-fjall", 1, Backend::Fjall),
            ("fours-fjall", 4, Backend::Fjall),
        ] {
            let mut sm = machine(&dir.join(name), backend);
            sm.window = window;
            let mut r = Vec::new();
            for chunk in log.chunks(group) {
                r.extend(sm.apply(chunk.to_vec()).await.unwrap());
            }
            let records: Vec<KvPair> = sm
                .state
                .tree()
                .range(REQ_PREFIX, None)
                .map(|kv| kv.unwrap())
                .collect();
            if let Some((first, got, kept, _)) = seen.first() {
                assert_eq!((got, kept), (&outcomes(&r), &records), "{first} / {name}");
            }
            seen.push((name.to_string(), outcomes(&r), records, sm));
        }
        seen
    }

    /// Consecutive IDs in an entry share one record, with runs interleaved in
    /// it, and every ID of a run is answered with its own outcome: on the peer
    /// that applied them, after a snapshot and after a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_of_ids_shares_a_record_and_answers_each_retry() {
        for backend in [Backend::Fjall, Backend::Redb, Backend::Sled] {
            let dir = tempfile::tempdir().unwrap();
            let mut leader = machine(&dir.path().join("a"), backend);
            leader
                .apply(vec![at(1, vec![pin_req(1, 2)])])
                .await
                .unwrap();
            let r = leader
                .apply(vec![at(
                    2,
                    vec![
                        pin_req(100, 10),
                        pin_req(500, 20),
                        pin_req(101, 2),
                        unpin_req(501, 30),
                        pin_req(102, 12),
                        unpin_req(103, 10),
                    ],
                )])
                .await
                .unwrap();
            let first = vec![
                (PINNED, 2),
                (PINNED, 2),
                (REMOVED, 2),
                (PINNED, 2),
                (PINNED, 2),
                (REMOVED, 2),
            ];
            assert_eq!(outcomes(&r), first, "{backend:?}");
            assert_eq!(record_count(&leader), 3, "{backend:?}");
            let mut ids = recorded_ids(&leader);
            ids.sort_unstable();
            assert_eq!(ids, vec![1, 100, 101, 102, 103, 500, 501], "{backend:?}");
            // Retries of IDs from the middle, the ends and both runs; 99 and
            // 104 border a run but are not in it.
            let retries = || {
                vec![
                    unpin_req(102, 12),
                    pin_req(501, 30),
                    pin_req(101, 2),
                    unpin_req(100, 10),
                    pin_req(103, 10),
                    unpin_req(99, 2),
                    pin_req(104, 40),
                ]
            };
            let r = leader.apply(vec![at(3, retries())]).await.unwrap();
            let want = vec![
                (PINNED, 2),
                (PINNED, 2),
                (REMOVED, 2),
                (PINNED, 2),
                (REMOVED, 2),
                (REMOVED, 3),
                (PINNED, 3),
            ];
            assert_eq!(outcomes(&r), want, "{backend:?}");
            assert!(leader.state.has(&cid(12)).unwrap() && !leader.state.has(&cid(30)).unwrap());
            assert!(!leader.state.has(&cid(10)).unwrap() && !leader.state.has(&cid(2)).unwrap());
            // The same retries again, on a follower that installed the
            // leader's snapshot, and after its restart: every ID answered.
            let mut follower = machine(&dir.path().join("b"), backend);
            transfer(&mut leader, &mut follower).await;
            let r = follower.apply(vec![at(4, retries())]).await.unwrap();
            assert_eq!(outcomes(&r), want, "{backend:?}");
            drop(follower);
            let mut follower = machine(&dir.path().join("b"), backend);
            let r = follower.apply(vec![at(5, retries())]).await.unwrap();
            assert_eq!(outcomes(&r), want, "{backend:?}");
            assert!(follower.state.has(&cid(40)).unwrap());
        }
    }

    /// A run whose record expired (but is still stored) goes as a whole when
    /// one of its IDs comes again: that ID is recorded anew, the others are no
    /// longer answered, and later prunes keep the new record.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expired_run_goes_when_one_of_its_ids_comes_again() {
        for backend in [Backend::Fjall, Backend::Redb] {
            let dir = tempfile::tempdir().unwrap();
            let mut sm = machine(dir.path(), backend);
            sm.window = 1_280;
            sm.apply(vec![at(
                1,
                vec![pin_req(1, 1), pin_req(2, 2), pin_req(3, 3)],
            )])
            .await
            .unwrap();
            // 1,280 more: the run (order 0) is past the window, and still stored
            // (the prune has not reached its step).
            let singles: Vec<Entry<TypeConfig>> = (2..=1_281u64)
                .map(|i| at(i, vec![pin_req(u128::from(1_000 + i), 1_000 + i)]))
                .collect();
            for chunk in singles.chunks(100) {
                sm.apply(chunk.to_vec()).await.unwrap();
            }
            assert_eq!(recorded_ids(&sm)[..3], [1, 2, 3], "{backend:?}");
            let r = sm
                .apply(vec![at(1_282, vec![unpin_req(2, 2)])])
                .await
                .unwrap();
            assert_eq!(outcomes(&r), vec![(REMOVED, 1_282)], "{backend:?}");
            let ids = recorded_ids(&sm);
            assert!(!ids.contains(&1) && !ids.contains(&3), "{backend:?}");
            assert!(ids.contains(&2), "{backend:?}");
            // Twenty more: the prune passes orders 0..20.
            let more: Vec<Entry<TypeConfig>> = (1_283..=1_302u64)
                .map(|i| at(i, vec![pin_req(u128::from(1_000 + i), 1_000 + i)]))
                .collect();
            sm.apply(more).await.unwrap();
            let r = sm
                .apply(vec![at(1_303, vec![unpin_req(2, 2), unpin_req(3, 3)])])
                .await
                .unwrap();
            assert_eq!(
                outcomes(&r),
                vec![(REMOVED, 1_282), (REMOVED, 1_303)],
                "{backend:?}"
            );
        }
    }

    /// Every replica keeps the same run records whatever the grouping of
    /// entries into apply calls, runs past the window included.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_records_are_kept_alike_on_every_replica() {
        let dir = tempfile::tempdir().unwrap();
        // Entry i: a run of three (IDs 10i..10i+2) around a lone ID (1000 + i).
        let mut log: Vec<Entry<TypeConfig>> = (1..=8u64)
            .map(|i| {
                let id = u128::from(10 * i);
                at(
                    i,
                    vec![
                        pin_req(id, 10 * i),
                        pin_req(1_000 + u128::from(i), 1_000 + i),
                        pin_req(id + 1, 10 * i + 1),
                        pin_req(id + 2, 10 * i + 2),
                    ],
                )
            })
            .collect();
        // Retries: of the first run (expired: applied anew, its run goes), of
        // the last (answered), and of an expired lone ID.
        log.push(at(
            9,
            vec![
                unpin_req(11, 11),
                unpin_req(81, 81),
                unpin_req(1_002, 1_002),
            ],
        ));
        log.push(at(10, vec![unpin_req(10, 10), unpin_req(11, 11)]));
        for (name, got, _, _) in apply_grouped(dir.path(), &log, 12).await {
            assert_eq!(
                got[32..],
                [
                    (REMOVED, 9),
                    (PINNED, 8),
                    (REMOVED, 9),
                    (REMOVED, 10),
                    (REMOVED, 9)
                ],
                "{name}"
            );
        }
    }

    /// The presence filter never hides a pin: pins applied while it is built,
    /// after, installed from a snapshot and found again after a restart; and a
    /// removed pin is absent (read from the store).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_presence_filter_never_hides_a_pin() {
        async fn built(sm: &StateMachine) {
            sm.state.build_filter_in_background();
            for _ in 0..500 {
                if sm.state.filter().is_ready() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("the filter was not built");
        }
        for backend in [Backend::Fjall, Backend::Redb, Backend::Sled] {
            let dir = tempfile::tempdir().unwrap();
            let mut sm = machine(&dir.path().join("a"), backend);
            sm.apply(vec![entry(1, 0..50)]).await.unwrap();
            // A build no key was listed into: only the writes made meanwhile.
            let rebuild = sm.state.filter().rebuild(0);
            sm.apply(vec![entry(2, 50..100)]).await.unwrap();
            rebuild.finish();
            assert!(sm.state.filter().is_ready());
            assert!(
                (50..100).all(|n| sm.state.has(&cid(n)).unwrap()),
                "{backend:?}"
            );
            // Built from the store, then written to.
            built(&sm).await;
            sm.apply(vec![entry(3, 100..150)]).await.unwrap();
            sm.apply(vec![at(4, vec![unpin_req(7, 20)])]).await.unwrap();
            for n in 0..200 {
                let want = n < 150 && n != 20;
                assert_eq!(sm.state.has(&cid(n)).unwrap(), want, "{backend:?} {n}");
                assert_eq!(sm.state.get(&cid(n)).unwrap().is_some(), want);
            }
            // A snapshot's pins replace the pinset, filter and all.
            let mut leader = machine(&dir.path().join("b"), backend);
            leader.apply(vec![entry(1, 500..600)]).await.unwrap();
            transfer(&mut leader, &mut sm).await;
            assert!(sm.state.filter().is_ready());
            for n in (0..150).chain(500..600) {
                assert_eq!(sm.state.has(&cid(n)).unwrap(), n >= 500, "{backend:?} {n}");
            }
            drop(sm);
            let sm = machine(&dir.path().join("a"), backend);
            built(&sm).await;
            assert!(
                (500..600).all(|n| sm.state.has(&cid(n)).unwrap()),
                "{backend:?}"
            );
            assert!(!sm.state.has(&cid(1)).unwrap());
        }
    }

    /// Records leave in steps (a window of 1,280: steps of 10), so an expired
    /// record can still be stored when its ID comes again: the ID is applied
    /// anew, and the later prune of its old order key keeps the new record.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_id_recorded_anew_keeps_its_record_through_later_prunes() {
        for backend in [Backend::Fjall, Backend::Redb] {
            let dir = tempfile::tempdir().unwrap();
            let mut sm = machine(dir.path(), backend);
            sm.window = 1_280;
            let pins: Vec<Entry<TypeConfig>> = (1..=1_301u64)
                .map(|i| at(i, vec![pin_req(u128::from(i), i)]))
                .collect();
            for chunk in pins.chunks(100) {
                sm.apply(chunk.to_vec()).await.unwrap();
            }
            // Requests 21.. are stored (the prune reached 20 in steps of 10),
            // request 21's record (order 20) no longer counts.
            assert_eq!(recorded_ids(&sm).first(), Some(&21));
            let again = sm
                .apply(vec![at(1_302, vec![unpin_req(21, 21)])])
                .await
                .unwrap();
            assert_eq!(outcomes(&again), vec![(REMOVED, 1_302)]);
            // Eleven more: the prune passes order 20 (up to 30).
            let more: Vec<Entry<TypeConfig>> = (1_303..=1_313u64)
                .map(|i| at(i, vec![pin_req(u128::from(i), i)]))
                .collect();
            sm.apply(more).await.unwrap();
            let ids = recorded_ids(&sm);
            assert_eq!(ids.first(), Some(&21), "{backend:?}");
            assert_eq!(ids.get(1), Some(&31), "{backend:?}");
            // Its retry is answered with the second application's outcome.
            let retry = sm
                .apply(vec![at(1_314, vec![unpin_req(21, 21)])])
                .await
                .unwrap();
            assert_eq!(outcomes(&retry), vec![(REMOVED, 1_302)], "{backend:?}");
        }
    }

    /// Request IDs above the newest recorded are not looked up: a retry is
    /// still answered after an install brought greater IDs, after a restart,
    /// and for an ID below the newest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retries_are_answered_whatever_ids_came_before() {
        for backend in [Backend::Fjall, Backend::Redb, Backend::Sled] {
            let dir = tempfile::tempdir().unwrap();
            let mut leader = machine(&dir.path().join("a"), backend);
            leader
                .apply(vec![at(1, vec![pin_req(50, 1)])])
                .await
                .unwrap();
            let mut follower = machine(&dir.path().join("b"), backend);
            follower
                .apply(vec![at(1, vec![pin_req(5, 2)])])
                .await
                .unwrap();
            transfer(&mut leader, &mut follower).await;
            let r = follower.apply(vec![at(2, vec![pin_req(50, 1)])]).await;
            assert_eq!(outcomes(&r.unwrap()), vec![(PINNED, 1)], "{backend:?}");
            drop(follower);
            let mut follower = machine(&dir.path().join("b"), backend);
            let r = follower
                .apply(vec![at(3, vec![pin_req(50, 1), pin_req(7, 3)])])
                .await
                .unwrap();
            assert_eq!(outcomes(&r), vec![(PINNED, 1), (PINNED, 3)], "{backend:?}");
            for index in [4, 5] {
                let r = follower
                    .apply(vec![at(index, vec![pin_req(6, 4)])])
                    .await
                    .unwrap();
                assert_eq!(outcomes(&r), vec![(PINNED, 4)], "{backend:?}");
            }
        }
    }

    /// An install over a pinset larger than one batch of deletes leaves the
    /// snapshot's pins and records alone (the old ones cleared batch by batch).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_install_clears_a_pinset_of_several_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut leader = machine(&dir.path().join("a"), Backend::Fjall);
        leader.apply(vec![entry(1, 0..3)]).await.unwrap();
        let mut follower = machine(&dir.path().join("b"), Backend::Fjall);
        let n = 2 * INSTALL_BATCH as u64 + 500;
        follower
            .apply(vec![entry(1, 1_000..1_000 + n)])
            .await
            .unwrap();
        assert_eq!(recorded_ids(&follower).len() as u64, n);
        transfer(&mut leader, &mut follower).await;
        let pins: Vec<Cid> = follower.state.list().map(|p| p.unwrap().cid).collect();
        let mut want: Vec<Cid> = (0..3).map(cid).collect();
        want.sort_unstable_by_key(PinState::key);
        assert_eq!(pins, want);
        assert_eq!(counted(&follower.state), 3);
        assert_eq!(recorded_ids(&follower).len(), 3);
    }

    /// The request IDs the records `sm` holds, checked against their order
    /// keys.
    fn recorded_ids(sm: &StateMachine) -> Vec<RequestId> {
        let tree = sm.state.tree().clone();
        let mut records = 0;
        let mut ids = Vec::new();
        for kv in tree.range(REQ_PREFIX, Some(SEQ_PREFIX)) {
            let (k, v) = kv.unwrap();
            let last = req_id_of(&k).unwrap();
            let n = RunRecord::decode(&v).unwrap().outcomes.len() as u128;
            ids.extend(last + 1 - n..=last);
            records += 1;
        }
        let ordered = tree.range(SEQ_PREFIX, None).count();
        assert_eq!(records, ordered, "records and order keys differ");
        ids
    }

    /// How many request records `sm` holds.
    fn record_count(sm: &StateMachine) -> usize {
        sm.state.tree().range(REQ_PREFIX, Some(SEQ_PREFIX)).count()
    }

    /// Each prune starts where the last one ended: after a snapshot install
    /// (whose records number themselves) and after a restart, records still
    /// leave the window.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_leave_the_window_after_an_install_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let one = |i: u64| at(i, vec![pin_req(u128::from(i), i)]);
        let mut leader = machine(&dir.path().join("a"), Backend::Fjall);
        leader.window = 4;
        for i in 1..=6 {
            leader.apply(vec![one(i)]).await.unwrap();
        }
        // A follower that pruned far further on its own before the install.
        let mut follower = machine(&dir.path().join("b"), Backend::Fjall);
        follower.window = 4;
        for i in 100..=120 {
            follower
                .apply(vec![at(i - 99, vec![pin_req(u128::from(i), i)])])
                .await
                .unwrap();
        }
        transfer(&mut leader, &mut follower).await;
        assert_eq!(recorded_ids(&follower), vec![3, 4, 5, 6]);
        for i in 7..=10 {
            follower.apply(vec![one(i)]).await.unwrap();
        }
        assert_eq!(recorded_ids(&follower), vec![7, 8, 9, 10]);
        drop(follower);
        let mut follower = machine(&dir.path().join("b"), Backend::Fjall);
        follower.window = 4;
        follower.apply(vec![one(11), one(12)]).await.unwrap();
        assert_eq!(recorded_ids(&follower), vec![9, 10, 11, 12]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conditional_requests_apply_only_on_the_state_they_were_decided_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine(dir.path(), Backend::Redb);
        sm.apply(vec![at(1, vec![pin_req(1, 1)])]).await.unwrap();
        let (_, d1) = sm.state.get_with_digest(&cid(1)).unwrap().unwrap();
        let expect = |n: u64, prior| Expect { cid: cid(n), prior };
        let cond = |id: RequestId, op: LogOp, e: Vec<Expect>| Request {
            id: Some(id),
            op,
            expect: e,
        };
        let pin_op = |n: u64| LogOp::Pin(Box::new(Pin::new(cid(n), PinOptions::default())));
        let r = sm
            .apply(vec![at(
                2,
                vec![
                    // Decided on "1 is absent": it is not.
                    cond(2, pin_op(1), vec![expect(1, Prior::Absent)]),
                    // A pin update from 1 (as it is) to 2 (absent): applies.
                    cond(
                        3,
                        pin_op(2),
                        vec![expect(1, Prior::Digest(d1)), expect(2, Prior::Absent)],
                    ),
                    // Decided on 2 absent, but request 3 pinned it just before.
                    cond(4, LogOp::Unpin(cid(2)), vec![expect(2, Prior::Absent)]),
                    // Unpin 1 as it is: applies; the same again finds it gone.
                    cond(5, LogOp::Unpin(cid(1)), vec![expect(1, Prior::Digest(d1))]),
                    cond(6, LogOp::Unpin(cid(1)), vec![expect(1, Prior::Digest(d1))]),
                ],
            )])
            .await
            .unwrap();
        assert_eq!(
            outcomes(&r),
            vec![
                (Outcome::Conflict, 2),
                (PINNED, 2),
                (Outcome::Conflict, 2),
                (REMOVED, 2),
                (Outcome::Conflict, 2),
            ]
        );
        assert!(!sm.state.has(&cid(1)).unwrap() && sm.state.has(&cid(2)).unwrap());
        // A conflict is an outcome too: its retry gets it again.
        let r = sm
            .apply(vec![at(3, vec![cond(2, pin_op(1), vec![])])])
            .await
            .unwrap();
        assert_eq!(outcomes(&r), vec![(Outcome::Conflict, 2)]);
        assert!(!sm.state.has(&cid(1)).unwrap());
        // A pin stored as JSON by an earlier version has the digest of its
        // binary form.
        let pin = Pin::new(cid(7), PinOptions::default());
        let json = serde_json::to_vec(&pin).unwrap();
        assert_eq!(
            crate::state::digest_of_stored(&json).unwrap(),
            crate::state::digest_of_stored(&pin_codec::encode_pin(&pin)).unwrap()
        );
    }
}
