//! The durable Raft log, vote and purge marker, on a [`Tree`].

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec::{decode_entry, decode_meta, encode_entry, encode_meta};
use super::log_file::LogFile;
use super::log_writer::LogWriter;
use super::types::{Applied, NodeId, TypeConfig};
use crate::store::{StoreError, Tree, prefix_bounds};

const LOG_PREFIX: &[u8] = b"l/";
const VOTE_KEY: &[u8] = b"m/vote";
const COMMITTED_KEY: &[u8] = b"m/committed";
const PURGED_KEY: &[u8] = b"m/purged";

/// The key an earlier version kept entry `index` under (migration tests write them).
#[cfg(test)]
fn log_key(index: u64) -> Vec<u8> {
    let mut k = LOG_PREFIX.to_vec();
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// The first key after every log key.
fn log_end() -> Vec<u8> {
    prefix_bounds(LOG_PREFIX).1.unwrap_or_default()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn to_meta<T: Serialize>(v: &T) -> Result<Vec<u8>, StorageError<NodeId>> {
    encode_meta(v).map_err(write_err)
}

fn from_meta<T: DeserializeOwned>(b: &[u8]) -> Result<T, StorageError<NodeId>> {
    decode_meta(b).map_err(read_err)
}

fn from_entry(b: &[u8]) -> Result<Entry<TypeConfig>, StorageError<NodeId>> {
    decode_entry(b).map_err(read_err)
}

/// Runs blocking store I/O off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError<NodeId>> + Send + 'static,
) -> Result<T, StorageError<NodeId>> {
    tokio::task::spawn_blocking(f).await.map_err(write_err)?
}

/// The Raft log storage of one peer: entries in append-only files
/// ([`LogFile`]), the vote, the purge floor and the committed ID in the store.
#[derive(Clone)]
pub struct LogStore {
    tree: Arc<dyn Tree>,
    log: Arc<LogFile>,
    /// Every change to `log` after the start goes through here, in order.
    writer: LogWriter,
    /// Entries up to here are purged (some may remain in a segment's file).
    purged: Arc<Mutex<Option<u64>>>,
    /// The committed log ID openraft last saved, not written yet: it goes with
    /// the next write of the store (a vote, a purge): losing it only means
    /// applying fewer entries at start, until the leader says what is committed.
    committed: Arc<Mutex<Option<Vec<u8>>>>,
    recent: Arc<Mutex<Recent>>,
    /// How far the state machine's written state reaches: no purge goes past it.
    applied: Option<tokio::sync::watch::Receiver<Applied>>,
}

/// Bounds of [`Recent`]: a few seconds of ingest at most.
const RECENT_MAX_BYTES: usize = 8 << 20;
const RECENT_MAX_ENTRIES: usize = 4096;

/// The newest entries, decoded. What was just appended is read right away: by
/// the leader for each follower's replication and by every peer to apply it;
/// from here that costs no file read, decoding or blocking-thread hop.
/// Contiguous, and the log's tail whenever the log's last append is in it.
#[derive(Default)]
struct Recent {
    /// Entries with their encoded sizes.
    entries: VecDeque<(Entry<TypeConfig>, usize)>,
    bytes: usize,
}

impl Recent {
    /// Adds a batch just appended to the log.
    fn push(&mut self, batch: Vec<(Entry<TypeConfig>, usize)>) {
        let follows = match (self.entries.back(), batch.first()) {
            (Some((last, _)), Some((first, _))) => first.log_id.index == last.log_id.index + 1,
            _ => true,
        };
        if !follows {
            self.entries.clear();
            self.bytes = 0;
        }
        for (e, n) in batch {
            self.bytes += n;
            self.entries.push_back((e, n));
        }
        while self.bytes > RECENT_MAX_BYTES || self.entries.len() > RECENT_MAX_ENTRIES {
            match self.entries.pop_front() {
                Some((_, n)) => self.bytes -= n,
                None => break,
            }
        }
    }

    /// Drops the entries from `index` on.
    fn truncate(&mut self, index: u64) {
        while let Some((e, n)) = self.entries.back() {
            if e.log_id.index < index {
                break;
            }
            self.bytes -= n;
            self.entries.pop_back();
        }
    }

    /// Drops the entries up to `index`.
    fn purge(&mut self, index: u64) {
        while let Some((e, n)) = self.entries.front() {
            if e.log_id.index > index {
                break;
            }
            self.bytes -= n;
            self.entries.pop_front();
        }
    }

    /// The entries `[from, to)` when all of them are here. Anything else is
    /// the files' to answer, once the writer has written what it was given.
    fn get(&self, from: u64, to: u64) -> Option<Vec<Entry<TypeConfig>>> {
        let first = self.entries.front()?.0.log_id.index;
        let last = self.entries.back()?.0.log_id.index;
        if from < first || from >= to || to > last.saturating_add(1) {
            return None;
        }
        let (a, b) = (
            usize::try_from(from - first).ok()?,
            usize::try_from(to - first).ok()?,
        );
        Some(self.entries.range(a..b).map(|(e, _)| e.clone()).collect())
    }
}

/// Where the log's segment files are, inside the raft folder.
pub const LOG_DIR: &str = "log";

impl LogStore {
    /// The log of the raft folder `dir`, its metadata in `tree`. Entries an
    /// earlier version kept in `tree` move to the log files first.
    pub fn open(tree: Arc<dyn Tree>, dir: &Path) -> Result<Self, StorageError<NodeId>> {
        let log = Arc::new(LogFile::open(&dir.join(LOG_DIR)).map_err(write_err)?);
        let this = LogStore {
            tree,
            writer: LogWriter::start(log.clone()).map_err(write_err)?,
            log,
            purged: Arc::new(Mutex::new(None)),
            committed: Arc::new(Mutex::new(None)),
            recent: Arc::default(),
            applied: None,
        };
        let purged: Option<LogId<NodeId>> = this.get_meta(PURGED_KEY)?;
        *crate::sync::lock(&this.purged) = purged.map(|l| l.index);
        this.migrate()?;
        // The files keep purged entries that share a segment with later ones,
        // and a purge may have stopped before deleting its segments.
        if let Some(p) = purged {
            this.log.purge(p.index).map_err(write_err)?;
        }
        Ok(this)
    }

    /// Moves log entries kept in the store by an earlier version into the files.
    fn migrate(&self) -> Result<(), StorageError<NodeId>> {
        let old: Vec<(Vec<u8>, Vec<u8>)> = self
            .tree
            .range(LOG_PREFIX, Some(&log_end()))
            .collect::<Result<_, _>>()
            .map_err(read_err)?;
        if old.is_empty() {
            return Ok(());
        }
        let floor = *crate::sync::lock(&self.purged);
        let mut entries = Vec::with_capacity(old.len());
        for (_, v) in &old {
            let e = from_entry(v)?;
            if floor.is_none_or(|f| e.log_id.index > f) {
                entries.push((e.log_id.index, v.clone()));
            }
        }
        // Files left by a migration that stopped half-way are written again.
        if let Some((first, _)) = self.log.bounds() {
            self.log.truncate(first).map_err(write_err)?;
        }
        self.log.append(&entries).map_err(write_err)?;
        tracing::info!("moved {} raft log entries into {LOG_DIR}/", entries.len());
        self.tree
            .apply_durable(old.into_iter().map(|(k, _)| (k, None)).collect())
            .map_err(write_err)
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError<NodeId>> {
        self.tree
            .get(key)
            .map_err(read_err)?
            .map(|b| from_meta(&b))
            .transpose()
    }

    /// Writes `batch` to the store durably, with the committed ID saved meanwhile.
    fn put_durable(&self, mut batch: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        // Not held over the write: openraft's core saves the committed ID.
        let saved = crate::sync::lock(&self.committed).clone();
        if let Some(v) = &saved {
            batch.push((COMMITTED_KEY.to_vec(), Some(v.clone())));
        }
        self.tree.apply_durable(batch)?;
        let mut pending = crate::sync::lock(&self.committed);
        // Unless a newer one came meanwhile: it is then still to be written.
        if *pending == saved {
            *pending = None;
        }
        Ok(())
    }

    /// Marks the log of an empty store as purged and committed up to `log_id`,
    /// as if a snapshot there had replaced every entry before it (`state import`).
    pub fn seed(&self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.tree
            .apply_durable(vec![
                (PURGED_KEY.to_vec(), Some(to_meta(&log_id)?)),
                (COMMITTED_KEY.to_vec(), Some(to_meta(&Some(log_id))?)),
            ])
            .map_err(write_err)?;
        *crate::sync::lock(&self.purged) = Some(log_id.index);
        Ok(())
    }

    /// Holds back the log's syncs until called again with `false` (tests of
    /// who waits for them).
    #[cfg(test)]
    pub fn hold_syncs(&self, hold: bool) {
        self.writer.hold_syncs(hold);
    }

    /// Makes every purge wait until the state machine has written what it
    /// removes. openraft 0.9 purges what a received snapshot covers as soon as
    /// it hands the snapshot to the state machine, before the install: a crash
    /// in between left a log purged past the state, which cannot start again.
    /// Waiting holds openraft's core back, as its answer to the snapshot's
    /// sender already waits for the install.
    pub fn purge_only_applied(&mut self, applied: tokio::sync::watch::Receiver<Applied>) {
        self.applied = Some(applied);
    }

    /// Waits until the state holds every entry up to `index` (see
    /// [`LogStore::purge_only_applied`]).
    async fn wait_applied(&self, index: u64) -> Result<(), StorageError<NodeId>> {
        let Some(mut applied) = self.applied.clone() else {
            return Ok(());
        };
        let gave_up = |why: &str| {
            write_err(std::io::Error::other(format!(
                "purge up to {index} not done: {why}"
            )))
        };
        let seen = applied
            .wait_for(|a| *a == Applied::InstallFailed || a.covers(index))
            .await
            .map_err(|_| gave_up("the state machine is gone"))?;
        if *seen == Applied::InstallFailed {
            return Err(gave_up("the snapshot install failed"));
        }
        Ok(())
    }

    /// `from`, or the first index past the purge floor when that is later.
    fn unpurged_from(&self, from: u64) -> u64 {
        crate::sync::lock(&self.purged).map_or(from, |f| from.max(f.saturating_add(1)))
    }

    /// The entries in `[from, to)` held and not purged.
    fn entries(&self, from: u64, to: u64) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let from = self.unpurged_from(from);
        if from >= to {
            return Ok(Vec::new());
        }
        self.log
            .read(from, to)
            .map_err(read_err)?
            .iter()
            .map(|(_, v)| from_entry(v))
            .collect()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        let from = self.unpurged_from(start);
        if let Some(hit) = crate::sync::lock(&self.recent).get(from, end) {
            return Ok(hit);
        }
        // The files hold every append queued before this barrier.
        self.writer.run(|| ()).await.map_err(read_err)?;
        let this = self.clone();
        blocking(move || this.entries(start, end)).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        self.writer.run(|| ()).await.map_err(read_err)?;
        let this = self.clone();
        blocking(move || {
            let last_purged_log_id: Option<LogId<NodeId>> = this.get_meta(PURGED_KEY)?;
            let floor = last_purged_log_id.map(|l| l.index);
            let last = match this.log.bounds() {
                Some((_, last)) if floor.is_none_or(|f| last > f) => {
                    let e = this.entries(last, last + 1)?;
                    e.last().map(|e| e.log_id).or(last_purged_log_id)
                }
                _ => last_purged_log_id,
            };
            Ok(LogState {
                last_purged_log_id,
                last_log_id: last,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let (this, v) = (self.clone(), to_meta(vote)?);
        blocking(move || {
            this.put_durable(vec![(VOTE_KEY.to_vec(), Some(v))])
                .map_err(write_err)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        let this = self.clone();
        blocking(move || this.get_meta(VOTE_KEY)).await
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        *crate::sync::lock(&self.committed) = Some(to_meta(&committed)?);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        if let Some(v) = crate::sync::lock(&self.committed).clone() {
            return from_meta::<Option<LogId<NodeId>>>(&v);
        }
        let this = self.clone();
        blocking(move || {
            Ok(this
                .get_meta::<Option<LogId<NodeId>>>(COMMITTED_KEY)?
                .flatten())
        })
        .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let batch: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .map(|e| (e.log_id.index, encode_entry(e)))
            .collect();
        let sizes: Vec<usize> = batch.iter().map(|(_, b)| b.len()).collect();
        // Readable from here at once: the leader's replication reads these
        // while the writer thread writes and syncs them.
        crate::sync::lock(&self.recent).push(entries.into_iter().zip(sizes).collect());
        self.writer.append(batch, callback).map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // Out of the cache first: no read may find there what the file lost.
        crate::sync::lock(&self.recent).truncate(log_id.index);
        let log = self.log.clone();
        self.writer
            .run(move || log.truncate(log_id.index))
            .await
            .map_err(write_err)?
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.wait_applied(log_id.index).await?;
        let this = self.clone();
        let purge = move || {
            // The marker first, durably: the same commit makes the state
            // machine's applied entries durable (its own commits are not), so
            // that no entry leaves the log before the state holds it on disk.
            this.put_durable(vec![(PURGED_KEY.to_vec(), Some(to_meta(&log_id)?))])
                .map_err(write_err)?;
            *crate::sync::lock(&this.purged) = Some(log_id.index);
            crate::sync::lock(&this.recent).purge(log_id.index);
            this.log.purge(log_id.index).map_err(write_err)
        };
        self.writer.run(purge).await.map_err(write_err)?
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::store::{self, Backend};

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 7), index),
            payload: EntryPayload::Blank,
        }
    }

    #[tokio::test]
    async fn entries_an_earlier_version_kept_in_the_store_move_to_the_files() {
        for backend in [Backend::Redb, Backend::Sled, Backend::Fjall] {
            let dir = tempfile::tempdir().unwrap();
            {
                let db = store::open(dir.path(), backend).unwrap();
                let tree = db.tree("raft_log").unwrap();
                let old: Vec<_> = (1..=20)
                    .map(|i| (log_key(i), Some(encode_entry(&entry(i)))))
                    .collect();
                tree.apply_durable(old).unwrap();
                // Purged up to 5, as a snapshot would have.
                tree.apply_durable(vec![(
                    PURGED_KEY.to_vec(),
                    Some(to_meta(&entry(5).log_id).unwrap()),
                )])
                .unwrap();
            }
            let db = store::open(dir.path(), backend).unwrap();
            let tree = db.tree("raft_log").unwrap();
            let mut log = LogStore::open(tree.clone(), dir.path()).unwrap();
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_log_id, Some(entry(20).log_id));
            assert_eq!(state.last_purged_log_id, Some(entry(5).log_id));
            let got = log.try_get_log_entries(0..100).await.unwrap();
            let want: Vec<_> = (6..=20).map(entry).collect();
            assert_eq!(got, want, "{backend}");
            assert_eq!(tree.range(LOG_PREFIX, Some(&log_end())).count(), 0);
            assert!(dir.path().join(LOG_DIR).is_dir());
        }
    }

    /// A purge never marks more as purged than the state holds: openraft asks
    /// for one as soon as a received snapshot is handed over, before the install.
    #[tokio::test]
    async fn a_purge_waits_until_the_state_holds_what_it_removes() {
        let dir = tempfile::tempdir().unwrap();
        let db = store::open(dir.path(), Backend::Redb).unwrap();
        let mut log = LogStore::open(db.tree("raft_log").unwrap(), dir.path()).unwrap();
        let (applied, rx) = tokio::sync::watch::channel(Applied::Upto(Some(3)));
        log.purge_only_applied(rx);
        log.purge(entry(3).log_id).await.unwrap();
        let purged = |mut log: LogStore| async move {
            log.get_log_state().await.unwrap().last_purged_log_id
        };
        assert_eq!(purged(log.clone()).await, Some(entry(3).log_id));

        let mut l = log.clone();
        let waiting = tokio::spawn(async move { l.purge(entry(8).log_id).await });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!waiting.is_finished());
        assert_eq!(purged(log.clone()).await, Some(entry(3).log_id));
        applied.send_replace(Applied::Upto(Some(8)));
        waiting.await.unwrap().unwrap();
        assert_eq!(purged(log.clone()).await, Some(entry(8).log_id));

        let mut l = log.clone();
        let waiting = tokio::spawn(async move { l.purge(entry(20).log_id).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        applied.send_replace(Applied::InstallFailed);
        assert!(waiting.await.unwrap().is_err());
        assert_eq!(purged(log.clone()).await, Some(entry(8).log_id));
    }

    /// Appends return once queued and are readable at once; queued from
    /// several handles they are written in the order they were made, and a
    /// truncate queued after them finds them all.
    #[tokio::test]
    async fn appends_are_written_in_the_order_they_were_made() {
        use openraft::storage::RaftLogStorageExt;
        let dir = tempfile::tempdir().unwrap();
        let db = store::open(dir.path(), Backend::Fjall).unwrap();
        let tree = db.tree("raft_log").unwrap();
        let log = LogStore::open(tree.clone(), dir.path()).unwrap();
        let (mut a, mut b, mut c) = (log.clone(), log.clone(), log.clone());
        // Polled in this order: each append is queued before the next one.
        let (ra, rb, rc) = futures::join!(
            a.blocking_append((1..4).map(entry)),
            b.blocking_append((4..6).map(entry)),
            c.blocking_append((6..9).map(entry)),
        );
        ra.unwrap();
        rb.unwrap();
        rc.unwrap();
        let (mut l, mut reader) = (log.clone(), log.clone());
        let (appended, read) = futures::join!(
            l.blocking_append((9..11).map(entry)),
            reader.try_get_log_entries(8..11),
        );
        appended.unwrap();
        assert_eq!(read.unwrap(), (8..11).map(entry).collect::<Vec<_>>());
        l.truncate(entry(10).log_id).await.unwrap();
        drop((a, b, c, l, reader, log));
        // The last handle's drop waited for the writer: the files are settled.
        let mut log = LogStore::open(tree, dir.path()).unwrap();
        assert_eq!(
            log.get_log_state().await.unwrap().last_log_id,
            Some(entry(9).log_id)
        );
        assert_eq!(
            log.try_get_log_entries(0..100).await.unwrap(),
            (1..10).map(entry).collect::<Vec<_>>()
        );
    }

    fn batch(r: std::ops::Range<u64>, size: usize) -> Vec<(Entry<TypeConfig>, usize)> {
        r.map(|index| (entry(index), size)).collect()
    }

    fn indexes(v: Option<Vec<Entry<TypeConfig>>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn serves_only_ranges_it_holds_to_their_end() {
        let mut r = Recent::default();
        assert_eq!(indexes(r.get(1, 2)), None);
        r.push(batch(5..8, 10));
        r.push(batch(8..10, 10));
        assert_eq!(indexes(r.get(6, 9)), Some(vec![6, 7, 8]));
        assert_eq!(indexes(r.get(5, 10)), Some(vec![5, 6, 7, 8, 9]));
        // Before the first held, past the last held, or empty: the file's job.
        assert_eq!(indexes(r.get(4, 6)), None);
        assert_eq!(indexes(r.get(8, 11)), None);
        assert_eq!(indexes(r.get(8, u64::MAX)), None);
        assert_eq!(indexes(r.get(7, 7)), None);

        r.truncate(8);
        assert_eq!(indexes(r.get(8, 9)), None);
        assert_eq!(indexes(r.get(5, 8)), Some(vec![5, 6, 7]));
        r.purge(5);
        assert_eq!(indexes(r.get(5, 6)), None);
        assert_eq!(indexes(r.get(6, 8)), Some(vec![6, 7]));
        assert_eq!(r.bytes, 20);

        // A batch that does not follow the tail replaces everything.
        r.push(batch(20..22, 10));
        assert_eq!(indexes(r.get(6, 8)), None);
        assert_eq!(indexes(r.get(20, 22)), Some(vec![20, 21]));
        assert_eq!(r.bytes, 20);
    }

    #[test]
    fn stays_within_its_bounds() {
        let mut r = Recent::default();
        r.push(batch(1..4, RECENT_MAX_BYTES / 2));
        assert_eq!(r.entries.len(), 2);
        assert_eq!(indexes(r.get(2, 4)), Some(vec![2, 3]));
        let mut r = Recent::default();
        for i in 0..(RECENT_MAX_ENTRIES as u64 + 10) {
            r.push(batch(i..i + 1, 1));
        }
        assert_eq!(r.entries.len(), RECENT_MAX_ENTRIES);
        assert_eq!(r.bytes, RECENT_MAX_ENTRIES);
    }
}
