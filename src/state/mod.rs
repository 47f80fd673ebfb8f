//! The shared pinset as stored on each peer: CID → [`Pin`], read directly by the
//! APIs and the tracker, written only by the consensus state machine (in batches
//! that also record how far the Raft log was applied).

pub mod codec;

use std::sync::Arc;

use crate::store::{StoreError, Tree, prefix_bounds};
use crate::types::{Cid, Pin};

/// Key prefix of pins inside the state tree; other prefixes hold consensus metadata.
pub const PIN_PREFIX: &[u8] = b"p/";

/// A failure reading or decoding the pinset.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored pin does not decode.
    #[error("corrupt pin in state: {0}")]
    Corrupt(String),
}

/// Read access to the pinset, plus the batch entries that change it.
#[derive(Clone)]
pub struct PinState {
    tree: Arc<dyn Tree>,
}

/// A batch write to the state tree (`None` deletes).
pub type BatchEntry = (Vec<u8>, Option<Vec<u8>>);

fn key(cid: &Cid) -> Vec<u8> {
    let mut k = PIN_PREFIX.to_vec();
    k.extend_from_slice(&cid.to_bytes());
    k
}

/// A stored pin: the binary format, or the JSON that earlier versions stored.
fn decode(bytes: &[u8]) -> Result<Pin, StateError> {
    codec::decode_pin(bytes).map_err(|e| StateError::Corrupt(e.to_string()))
}

impl PinState {
    /// The pinset inside `tree`.
    pub fn new(tree: Arc<dyn Tree>) -> Self {
        PinState { tree }
    }

    /// The tree holding the pinset (and the state machine's metadata).
    pub fn tree(&self) -> &Arc<dyn Tree> {
        &self.tree
    }

    /// The pin for `cid`, if any.
    pub fn get(&self, cid: &Cid) -> Result<Option<Pin>, StateError> {
        self.tree.get(&key(cid))?.map(|b| decode(&b)).transpose()
    }

    /// True when `cid` is in the pinset.
    pub fn has(&self, cid: &Cid) -> Result<bool, StateError> {
        Ok(self.tree.get(&key(cid))?.is_some())
    }

    /// Every pin, in key order, read lazily from the store.
    pub fn list(&self) -> impl Iterator<Item = Result<Pin, StateError>> + Send + 'static {
        let (from, to) = prefix_bounds(PIN_PREFIX);
        self.tree
            .range(&from, to.as_deref())
            .map(|r| r.map_err(StateError::from).and_then(|(_, v)| decode(&v)))
    }

    /// How many pins there are (a walk over the keys).
    pub fn count(&self) -> Result<u64, StateError> {
        let (from, to) = prefix_bounds(PIN_PREFIX);
        let mut n = 0;
        for entry in self.tree.range(&from, to.as_deref()) {
            entry?;
            n += 1;
        }
        Ok(n)
    }

    /// The batch entry that stores `pin`.
    pub fn add_entry(pin: &Pin) -> Result<BatchEntry, StateError> {
        Ok((key(&pin.cid), Some(codec::encode_pin(pin))))
    }

    /// The batch entry that removes `cid`.
    pub fn rm_entry(cid: &Cid) -> BatchEntry {
        (key(cid), None)
    }

    /// Batch entries removing every pin (before a snapshot is installed).
    pub fn clear_entries(&self) -> Result<Vec<BatchEntry>, StateError> {
        let (from, to) = prefix_bounds(PIN_PREFIX);
        self.tree
            .range(&from, to.as_deref())
            .map(|r| r.map(|(k, _)| (k, None)).map_err(StateError::from))
            .collect()
    }
}
