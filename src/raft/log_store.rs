//! The durable Raft log, vote and purge marker, on a [`Tree`].

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec::{decode_entry, decode_meta, encode_entry, encode_meta};
use super::types::{NodeId, TypeConfig};
use crate::store::{StoreError, Tree, prefix_bounds};

const LOG_PREFIX: &[u8] = b"l/";
const VOTE_KEY: &[u8] = b"m/vote";
const COMMITTED_KEY: &[u8] = b"m/committed";
const PURGED_KEY: &[u8] = b"m/purged";

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

/// The Raft log storage of one peer.
#[derive(Clone)]
pub struct LogStore {
    tree: Arc<dyn Tree>,
    /// The committed log ID openraft last saved, not written yet: it goes with
    /// the next durable write (usually the next append), since a store commit
    /// of its own per commit-index advance cost as much as the append.
    committed: Arc<Mutex<Option<Vec<u8>>>>,
}

impl LogStore {
    /// The log kept in `tree`.
    pub fn new(tree: Arc<dyn Tree>) -> Self {
        LogStore {
            tree,
            committed: Arc::new(Mutex::new(None)),
        }
    }

    fn pending_committed(&self) -> MutexGuard<'_, Option<Vec<u8>>> {
        // A poisoned lock holds a whole value still: each write is one assignment.
        self.committed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `batch` durably, with the committed log ID saved meanwhile.
    fn write_durable(&self, mut batch: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        // Not held over the write: openraft's core saves the committed ID.
        let saved = self.pending_committed().clone();
        if let Some(v) = &saved {
            batch.push((COMMITTED_KEY.to_vec(), Some(v.clone())));
        }
        self.tree.apply_durable(batch)?;
        let mut pending = self.pending_committed();
        // Unless a newer one came meanwhile: it is then still to be written.
        if *pending == saved {
            *pending = None;
        }
        Ok(())
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError<NodeId>> {
        self.tree
            .get(key)
            .map_err(read_err)?
            .map(|b| from_meta(&b))
            .transpose()
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], v: &T) -> Result<(), StorageError<NodeId>> {
        self.write_durable(vec![(key.to_vec(), Some(to_meta(v)?))])
            .map_err(write_err)
    }

    /// Marks the log of an empty store as purged and committed up to `log_id`,
    /// as if a snapshot there had replaced every entry before it (`state import`).
    pub fn seed(&self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.tree
            .apply_durable(vec![
                (PURGED_KEY.to_vec(), Some(to_meta(&log_id)?)),
                (COMMITTED_KEY.to_vec(), Some(to_meta(&Some(log_id))?)),
            ])
            .map_err(write_err)
    }

    /// Keys of log entries with index in `[from, to)` (`None`: to the end).
    fn keys_between(&self, from: u64, to: Option<u64>) -> Result<Vec<Vec<u8>>, StoreError> {
        let end = to.map(log_key).unwrap_or_else(log_end);
        self.tree
            .range(&log_key(from), Some(&end))
            .map(|r| r.map(|(k, _)| k))
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
            Bound::Included(&e) => Some(log_key(e.saturating_add(1))),
            Bound::Excluded(&e) => Some(log_key(e)),
            Bound::Unbounded => None,
        };
        let tree = self.tree.clone();
        blocking(move || {
            let upper = end.unwrap_or_else(log_end);
            tree.range(&log_key(start), Some(&upper))
                .map(|r| r.map_err(read_err).and_then(|(_, v)| from_entry(&v)))
                .collect()
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let this = self.clone();
        blocking(move || {
            let last_purged_log_id: Option<LogId<NodeId>> = this.get_meta(PURGED_KEY)?;
            let last = match this.tree.last_with_prefix(LOG_PREFIX).map_err(read_err)? {
                Some((_, v)) => Some(from_entry(&v)?.log_id),
                None => last_purged_log_id,
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
        let (this, vote) = (self.clone(), *vote);
        blocking(move || this.put_meta(VOTE_KEY, &vote)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        let this = self.clone();
        blocking(move || this.get_meta(VOTE_KEY)).await
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Written with the next durable write: losing it only means applying
        // fewer entries at start, until the leader says what is committed.
        *self.pending_committed() = Some(to_meta(&committed)?);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        if let Some(v) = self.pending_committed().clone() {
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
        let mut batch = Vec::new();
        for e in entries {
            batch.push((log_key(e.log_id.index), Some(encode_entry(&e))));
        }
        let this = self.clone();
        let res = blocking(move || this.write_durable(batch).map_err(write_err)).await;
        // openraft must hear of the I/O result either way; the error is also returned.
        callback.log_io_completed(
            res.as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        res
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let this = self.clone();
        blocking(move || {
            let keys = this.keys_between(log_id.index, None).map_err(write_err)?;
            this.write_durable(keys.into_iter().map(|k| (k, None)).collect())
                .map_err(write_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let this = self.clone();
        blocking(move || {
            let mut batch: Vec<_> = this
                .keys_between(0, Some(log_id.index + 1))
                .map_err(write_err)?
                .into_iter()
                .map(|k| (k, None))
                .collect();
            batch.push((PURGED_KEY.to_vec(), Some(to_meta(&log_id)?)));
            this.write_durable(batch).map_err(write_err)
        })
        .await
    }
}
