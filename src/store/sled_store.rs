//! The sled backend of [`Store`](super::Store).

use std::path::Path;
use std::sync::Arc;

use super::{KvIter, KvPair, Store, StoreError, Tree};

/// A sled database.
pub struct SledStore {
    db: sled::Db,
}

fn err(e: sled::Error) -> StoreError {
    StoreError(e.to_string())
}

impl SledStore {
    /// Opens or creates the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        // sled's page cache defaults to 1 GiB; a pinset needs far less.
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(64 * 1024 * 1024);
        wait_for_release(&dir.join("db"));
        let db = config.open().map_err(err)?;
        Ok(SledStore { db })
    }
}

/// Waits, up to two seconds, until no one holds sled's lock on `file`.
///
/// A dropped sled::Db releases the lock only when its background writer
/// threads let go of the file, a moment later; a reopen in that moment (a
/// restart inside one process) would fail though nobody else uses the
/// database. sled reports a held lock only as text, so the lock is tried here.
fn wait_for_release(file: &Path) {
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
    else {
        return;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while let Err(std::fs::TryLockError::WouldBlock) = f.try_lock() {
        if std::time::Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

impl Store for SledStore {
    fn tree(&self, name: &str) -> Result<Arc<dyn Tree>, StoreError> {
        Ok(Arc::new(SledTree(self.db.open_tree(name).map_err(err)?)))
    }
}

struct SledTree(sled::Tree);

impl Tree for SledTree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.get(key).map_err(err)?.map(|v| v.to_vec()))
    }

    fn range(&self, from: &[u8], to: Option<&[u8]>) -> KvIter {
        let iter = match to {
            Some(to) => self.0.range(from.to_vec()..to.to_vec()),
            None => self.0.range(from.to_vec()..),
        };
        Box::new(iter.map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(err)))
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<KvPair>, StoreError> {
        match self.0.scan_prefix(prefix).next_back() {
            Some(r) => r.map(|(k, v)| Some((k.to_vec(), v.to_vec()))).map_err(err),
            None => Ok(None),
        }
    }

    fn apply(&self, batch: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for (k, v) in batch {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.0.apply_batch(b).map_err(err)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.0.flush().map(|_| ()).map_err(err)
    }

    fn scan(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let iter = match to {
            Some(to) => self.0.range(from..to),
            None => self.0.range(from..),
        };
        super::scan_entries(iter.map(|e| e.map_err(err)), limit, visit)
    }
}
