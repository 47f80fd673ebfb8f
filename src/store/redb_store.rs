//! The redb backend of [`Store`](super::Store): one database file, one table per
//! tree, each batch one write transaction, made durable by the next flush.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use super::{KvIter, KvPair, Store, StoreError, Tree};

/// How much of the database file redb keeps in memory.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// A redb database file.
pub struct RedbStore {
    db: Arc<Database>,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn table(name: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(name)
}

impl RedbStore {
    /// Opens or creates the database file `file`.
    pub fn open(file: &Path) -> Result<Self, StoreError> {
        // redb caches up to 1 GiB by default; every walk of a big pinset would fill it.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(file)
            .map_err(err)?;
        Ok(RedbStore { db: Arc::new(db) })
    }
}

impl Store for RedbStore {
    fn tree(&self, name: &str) -> Result<Arc<dyn Tree>, StoreError> {
        // Created up front, so that reads never meet a missing table.
        let tx = self.db.begin_write().map_err(err)?;
        tx.open_table(table(name)).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Arc::new(RedbTree {
            db: self.db.clone(),
            name: name.to_string(),
        }))
    }
}

/// A value redb lends while its read transaction lives, as bytes.
struct Bytes<'a>(redb::AccessGuard<'a, &'static [u8]>);

impl AsRef<[u8]> for Bytes<'_> {
    fn as_ref(&self) -> &[u8] {
        self.0.value()
    }
}

struct RedbTree {
    db: Arc<Database>,
    name: String,
}

impl RedbTree {
    fn commit(
        &self,
        batch: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(err)?;
        tx.set_durability(durability).map_err(err)?;
        {
            let mut t = tx.open_table(table(&self.name)).map_err(err)?;
            for (k, v) in &batch {
                match v {
                    Some(v) => {
                        t.insert(k.as_slice(), v.as_slice()).map_err(err)?;
                    }
                    None => {
                        t.remove(k.as_slice()).map_err(err)?;
                    }
                }
            }
        }
        tx.commit().map_err(err)
    }

    fn read(&self) -> Result<redb::ReadOnlyTable<&'static [u8], &'static [u8]>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        tx.open_table(table(&self.name)).map_err(err)
    }
}

impl Tree for RedbTree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .read()?
            .get(key)
            .map_err(err)?
            .map(|v| v.value().to_vec()))
    }

    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        // One read transaction for all: a transaction per key costs more than
        // the lookup.
        let t = self.read()?;
        keys.iter()
            .map(|k| {
                Ok(t.get(k.as_slice())
                    .map_err(err)?
                    .map(|v| v.value().to_vec()))
            })
            .collect()
    }

    fn range(&self, from: &[u8], to: Option<&[u8]>) -> KvIter {
        let range = self.read().and_then(|t| {
            match to {
                Some(to) => t.range::<&[u8]>(from..to),
                None => t.range::<&[u8]>(from..),
            }
            .map_err(err)
        });
        match range {
            // The range holds its read transaction until it is dropped.
            Ok(r) => Box::new(r.map(|e| {
                e.map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
                    .map_err(err)
            })),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<KvPair>, StoreError> {
        let (from, to) = super::prefix_bounds(prefix);
        let t = self.read()?;
        let mut r = match &to {
            Some(to) => t.range::<&[u8]>(from.as_slice()..to.as_slice()),
            None => t.range::<&[u8]>(from.as_slice()..),
        }
        .map_err(err)?;
        match r.next_back() {
            Some(e) => e
                .map(|(k, v)| Some((k.value().to_vec(), v.value().to_vec())))
                .map_err(err),
            None => Ok(None),
        }
    }

    fn apply(&self, batch: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        // Atomic now, durable at the next flush: callers group their writes
        // under one fsync (an append or an apply of many entries).
        self.commit(batch, Durability::None)
    }

    fn apply_durable(&self, batch: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        // Each redb commit has a fixed cost (checksums, page allocation, a
        // header write) of the order of a small batch's inserts: one, not two.
        self.commit(batch, Durability::Immediate)
    }

    fn flush(&self) -> Result<(), StoreError> {
        // A durable commit persists every non-durable one before it, of every
        // table of the database.
        let tx = self.db.begin_write().map_err(err)?;
        tx.commit().map_err(err)
    }

    // A range holds one read transaction (MVCC) until dropped.
    fn consistent_ranges(&self) -> bool {
        true
    }

    fn scan(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.read()?;
        let range = match to {
            Some(to) => t.range::<&[u8]>(from..to),
            None => t.range::<&[u8]>(from..),
        }
        .map_err(err)?;
        let entries = range.map(|e| e.map(|(k, v)| (Bytes(k), Bytes(v))).map_err(err));
        super::scan_entries(entries, limit, visit)
    }
}
