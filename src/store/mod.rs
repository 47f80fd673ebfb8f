//! The embedded key-value store under the Raft log and the pinset.
//!
//! Kept behind a small trait so that backends can be measured against each other;
//! sled is the one shipped. Each [`Tree`] is an ordered map whose batches are atomic
//! and whose `flush` makes everything written so far durable.

mod sled_store;

use std::path::Path;
use std::sync::Arc;

pub use sled_store::SledStore;

/// A key and its value.
pub type KvPair = (Vec<u8>, Vec<u8>);
/// An owned iterator over entries.
pub type KvIter = Box<dyn Iterator<Item = Result<KvPair, StoreError>> + Send>;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// An ordered key-value map inside a [`Store`].
pub trait Tree: Send + Sync {
    /// The value under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Entries with keys in `[from, to)` (`to = None`: to the end), in key order.
    fn range(&self, from: &[u8], to: Option<&[u8]>) -> KvIter;
    /// The last entry whose key starts with `prefix`.
    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<KvPair>, StoreError>;
    /// Applies all writes (`None` deletes) atomically.
    fn apply(&self, batch: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError>;
    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}

/// An opened database holding named trees.
pub trait Store: Send + Sync {
    /// Opens (creating if needed) the tree `name`.
    fn tree(&self, name: &str) -> Result<Arc<dyn Tree>, StoreError>;
}

/// Opens the default backend in `dir`.
pub fn open(dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(SledStore::open(dir)?))
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

    #[test]
    fn tree_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).unwrap();
        let t = store.tree("t").unwrap();
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
        assert_eq!(t.last_with_prefix(b"a/").unwrap().unwrap().1, b"y");
        t.apply(vec![(b"a/2".to_vec(), None)]).unwrap();
        assert_eq!(t.get(b"a/2").unwrap(), None);
        assert_eq!(t.get(b"b/1").unwrap().unwrap(), b"z");
        drop(t);
        drop(store);
        let store = open(dir.path()).unwrap();
        assert_eq!(store.tree("t").unwrap().get(b"a/1").unwrap().unwrap(), b"x");
    }
}
