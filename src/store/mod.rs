//! The embedded key-value store under the Raft log and the pinset.
//!
//! Kept behind a small trait so that backends can be measured against each other;
//! fjall is the default, redb and sled stay supported. Each [`Tree`] is an ordered map whose batches are atomic
//! and whose `flush` makes everything written so far durable.

mod bulk;
mod fjall_store;
mod redb_store;
mod sled_store;

use std::path::Path;
use std::sync::Arc;

pub use bulk::SortedLoad;
pub use fjall_store::FjallStore;
pub use redb_store::RedbStore;
pub use sled_store::SledStore;

/// The embedded stores a peer can keep its Raft data in
/// (`consensus.raft.datastore`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// sled 0.34, the one first requested; still supported.
    Sled,
    /// redb: one file, ACID write transactions; the default before fjall. It
    /// lists and scans faster than fjall, but copies a page per random insert.
    Redb,
    /// fjall: a log-structured merge tree. The default for new peers: pins are
    /// keyed by hash, and its random inserts cost a fraction of redb's — ingest
    /// 1.07–1.29× redb's at 0.8× the CPU per pin (`scripts/bench.sh
    /// scale-ingest --datastore fjall,redb`) — while every listing, start and
    /// memory target of `scale-pinset` and `scale-join` still holds.
    #[default]
    Fjall,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Sled => "sled",
            Backend::Redb => "redb",
            Backend::Fjall => "fjall",
        })
    }
}

/// The redb database file inside a raft folder.
const REDB_FILE: &str = "store.redb";
/// A file every sled database folder has.
const SLED_MARKER: &str = "conf";
/// The fjall database folder inside a raft folder.
const FJALL_DIR: &str = "store.fjall";

/// A key and its value.
pub type KvPair = (Vec<u8>, Vec<u8>);
/// An owned iterator over entries.
pub type KvIter = Box<dyn Iterator<Item = Result<KvPair, StoreError>> + Send>;

/// A storage failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// An ordered key-value map inside a [`Store`].
pub trait Tree: Send + Sync {
    /// The value under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Entries with keys in `[from, to)` (`to = None`: to the end), in key order.
    fn range(&self, from: &[u8], to: Option<&[u8]>) -> KvIter;
    /// The values under `keys`, in order; one read view where the store has them.
    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        keys.iter().map(|k| self.get(k)).collect()
    }
    /// The last entry whose key starts with `prefix`.
    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<KvPair>, StoreError>;
    /// Applies all writes (`None` deletes) atomically.
    fn apply(&self, batch: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError>;
    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// [`Self::apply`] then [`Self::flush`]; one durable commit where the store
    /// has them, instead of an atomic one and an empty durable one.
    fn apply_durable(&self, batch: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        self.apply(batch)?;
        self.flush()
    }
    /// Moves what the tree holds only in memory and in its journal into its
    /// files, where the store keeps recent writes that way (fjall's in-memory
    /// table); a bulk load ends with it. Writes are durable without it: this
    /// spares the next open a replay and every read a search of that table.
    fn settle(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// True when a [`Self::range`] reads one point-in-time view of the tree,
    /// unaffected by batches applied while it is iterated.
    fn consistent_ranges(&self) -> bool {
        false
    }
    /// Visits up to `limit` entries with keys in `[from, to)`, in key order, under
    /// one read view and without copying them; `visit` returns `false` to stop.
    /// Returns the key to resume from when entries remain past the last visited.
    fn scan(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        scan_entries(self.range(from, to), limit, visit)
    }
}

/// The loop of [`Tree::scan`] over a backend's entries in key order.
fn scan_entries<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    entries: impl Iterator<Item = Result<(K, V), StoreError>>,
    limit: usize,
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<Option<Vec<u8>>, StoreError> {
    for (n, entry) in entries.enumerate() {
        let (k, v) = entry?;
        let k = k.as_ref();
        if n == limit {
            return Ok(Some(k.to_vec()));
        }
        if !visit(k, v.as_ref()) {
            return Ok(next_key(k));
        }
    }
    Ok(None)
}

/// The smallest key after `key` (to resume a scan past it).
pub fn next_key(key: &[u8]) -> Option<Vec<u8>> {
    let mut k = key.to_vec();
    k.push(0);
    Some(k)
}

/// An opened database holding named trees.
pub trait Store: Send + Sync {
    /// Opens (creating if needed) the tree `name`.
    fn tree(&self, name: &str) -> Result<Arc<dyn Tree>, StoreError>;
}

/// The store the folder `dir` holds, if any.
pub fn found_in(dir: &Path) -> Option<Backend> {
    if dir.join(REDB_FILE).exists() {
        Some(Backend::Redb)
    } else if dir.join(SLED_MARKER).exists() {
        Some(Backend::Sled)
    } else if dir.join(FJALL_DIR).exists() {
        Some(Backend::Fjall)
    } else {
        None
    }
}

/// The store to open `dir` with: the configured one; without one, the store
/// the folder already holds (a peer set up before the default changed keeps
/// its data), else the default.
pub fn choose(dir: &Path, configured: Option<Backend>) -> Backend {
    configured.or_else(|| found_in(dir)).unwrap_or_default()
}

/// Opens (creating if needed) the `backend` store in the folder `dir`. A folder
/// holding the other backend's data is refused rather than silently ignored.
pub fn open(dir: &Path, backend: Backend) -> Result<Arc<dyn Store>, StoreError> {
    if let Some(found) = found_in(dir).filter(|f| *f != backend) {
        return Err(StoreError(format!(
            "{} holds a {found} store but consensus.raft.datastore is \"{backend}\": \
             set it back to \"{found}\", or move the folder aside to start this peer empty",
            dir.display()
        )));
    }
    Ok(match backend {
        Backend::Sled => Arc::new(SledStore::open(dir)?),
        Backend::Redb => Arc::new(RedbStore::open(&dir.join(REDB_FILE))?),
        Backend::Fjall => Arc::new(FjallStore::open(&dir.join(FJALL_DIR))?),
    })
}

/// Keys sharing `prefix`, as the `[from, to)` bounds for [`Tree::range`].
pub fn prefix_bounds(prefix: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (prefix.to_vec(), Some(end));
        }
    }
    (prefix.to_vec(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract both backends keep: ordered ranges, prefixes, atomic
    /// batches, persistence across reopen.
    fn tree_contract(backend: Backend) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), backend).unwrap();
        let t = store.tree("t").unwrap();
        assert!(t.range(b"", None).next().is_none());
        assert!(t.last_with_prefix(b"a/").unwrap().is_none());
        t.apply(vec![
            (b"a/1".to_vec(), Some(b"x".to_vec())),
            (b"a/2".to_vec(), Some(b"y".to_vec())),
            (b"b/1".to_vec(), Some(b"z".to_vec())),
        ])
        .unwrap();
        t.flush().unwrap();
        let (from, to) = prefix_bounds(b"a/");
        let keys: Vec<_> = t
            .range(&from, to.as_deref())
            .map(|r| r.unwrap().0)
            .collect();
        assert_eq!(keys, vec![b"a/1".to_vec(), b"a/2".to_vec()]);
        let all: Vec<_> = t.range(b"a/2", None).map(|r| r.unwrap().0).collect();
        assert_eq!(all, vec![b"a/2".to_vec(), b"b/1".to_vec()]);
        assert_eq!(t.last_with_prefix(b"a/").unwrap().unwrap().1, b"y");
        // Batched scans: a limit gives the key to resume from; a stop, the key after.
        let mut seen = Vec::new();
        let mut visit = |k: &[u8], v: &[u8]| {
            seen.push((k.to_vec(), v.to_vec()));
            true
        };
        let next = t.scan(b"a/", None, 1, &mut visit).unwrap();
        assert_eq!(next.as_deref(), Some(&b"a/2"[..]));
        let next = t
            .scan(&next.unwrap(), to.as_deref(), 5, &mut visit)
            .unwrap();
        assert_eq!(next, None);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1], (b"a/2".to_vec(), b"y".to_vec()));
        let next = t.scan(b"", None, 5, &mut |_, _| false).unwrap();
        assert_eq!(next.as_deref(), Some(&b"a/1\0"[..]));
        t.apply(vec![(b"a/2".to_vec(), None)]).unwrap();
        assert_eq!(t.get(b"a/2").unwrap(), None);
        assert_eq!(t.get(b"b/1").unwrap().unwrap(), b"z");
        // Another tree of the same store is separate.
        assert_eq!(store.tree("u").unwrap().get(b"b/1").unwrap(), None);
        // Settling moves nothing in or out, before or after a reopen.
        t.settle().unwrap();
        assert_eq!(t.get(b"a/2").unwrap(), None);
        assert_eq!(t.get(b"b/1").unwrap().unwrap(), b"z");
        drop(t);
        drop(store);
        // sled's flusher thread lets go of the folder's lock shortly after the
        // last handle is dropped, not at once: a reopen may wait for it.
        let reopen_by = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let store = loop {
            match open(dir.path(), backend) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() > reopen_by => panic!("reopen: {e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        };
        assert_eq!(store.tree("t").unwrap().get(b"a/1").unwrap().unwrap(), b"x");
        assert_eq!(store.tree("t").unwrap().get(b"a/2").unwrap(), None);
        drop(store);
        // The folder now belongs to this backend.
        for other in [Backend::Sled, Backend::Redb, Backend::Fjall] {
            if other != backend {
                let e = open(dir.path(), other).err().unwrap().to_string();
                assert!(e.contains(&format!("holds a {backend} store")), "{e}");
            }
        }
    }

    #[test]
    fn sled_keeps_the_tree_contract() {
        tree_contract(Backend::Sled);
    }

    #[test]
    fn redb_keeps_the_tree_contract() {
        tree_contract(Backend::Redb);
    }

    #[test]
    fn fjall_keeps_the_tree_contract() {
        tree_contract(Backend::Fjall);
    }

    /// Ranges of a backend that says so read one view: writes made while a
    /// range is read do not show in it.
    #[test]
    fn consistent_ranges_do_not_see_later_writes() {
        for backend in [Backend::Redb, Backend::Fjall] {
            let dir = tempfile::tempdir().unwrap();
            let store = open(dir.path(), backend).unwrap();
            let t = store.tree("t").unwrap();
            assert!(t.consistent_ranges());
            t.apply((0u8..10).map(|i| (vec![b'k', i], Some(vec![i]))).collect())
                .unwrap();
            let mut r = t.range(b"k", None);
            assert_eq!(r.next().unwrap().unwrap().0, vec![b'k', 0]);
            t.apply(vec![
                (vec![b'k', 5], None),
                (vec![b'k', 20], Some(vec![20])),
            ])
            .unwrap();
            assert_eq!(r.count(), 9, "{backend}");
            assert_eq!(t.range(b"k", None).count(), 10, "{backend}");
        }
    }
}
