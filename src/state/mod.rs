//! The shared pinset as stored on each peer: CID → [`Pin`], read directly by the
//! APIs and the tracker, written only by the consensus state machine (in batches
//! that also record how far the Raft log was applied).

pub mod codec;
pub mod filter;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::{StoreError, Tree, prefix_bounds};
use crate::types::{Cid, Pin};
use filter::PresenceFilter;

/// Key prefix of pins inside the state tree; other prefixes hold consensus metadata.
pub const PIN_PREFIX: &[u8] = b"p/";
/// Key of the pinset's size (8 bytes, big-endian), written by the state
/// machine with every change to the pinset; absent in stores of earlier
/// versions, which are counted once when opened.
pub const PIN_COUNT_KEY: &[u8] = b"m/pincount";
/// `PinState::count` before the size is known.
const COUNT_UNKNOWN: u64 = u64::MAX;

/// A failure reading or decoding the pinset.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored pin does not decode.
    #[error("corrupt pin in state: {0}")]
    Corrupt(String),
    /// A read on a blocking thread did not finish (the runtime is stopping).
    #[error("the pinset read did not finish: {0}")]
    Unfinished(#[source] tokio::task::JoinError),
}

/// Read access to the pinset, plus the batch entries that change it.
#[derive(Clone)]
pub struct PinState {
    tree: Arc<dyn Tree>,
    /// The pinset's size as last written, shared by every clone
    /// (`COUNT_UNKNOWN` until [`PinState::load_count`]).
    count: Arc<AtomicU64>,
    /// Which pins are certainly absent (see [`filter`]), shared by every clone.
    filter: PresenceFilter,
}

/// How many entries a walk reads under one read view.
const SCAN_BATCH: usize = 4096;

/// Where a paged read of the pinset starts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PageFrom(Vec<u8>);

impl PageFrom {
    /// The first pin.
    pub fn start() -> Self {
        PageFrom(PIN_PREFIX.to_vec())
    }

    /// The pin of `cid`, or the first after it.
    pub fn at(cid: &Cid) -> Self {
        PageFrom(key(cid))
    }

    /// The first pin after `cid`.
    pub fn after(cid: &Cid) -> Self {
        let mut k = key(cid);
        k.push(0);
        PageFrom(k)
    }

    /// True when a walk starting here has already passed `cid`.
    pub fn is_past(&self, cid: &Cid) -> bool {
        key(cid) < self.0
    }
}

/// A batch write to the state tree (`None` deletes).
pub type BatchEntry = (Vec<u8>, Option<Vec<u8>>);

fn key(cid: &Cid) -> Vec<u8> {
    let mut k = Vec::with_capacity(PIN_PREFIX.len() + cid.0.encoded_len());
    k.extend_from_slice(PIN_PREFIX);
    cid.write_bytes_to(&mut k);
    k
}

/// Identifies one stored version of a pin: the first 16 bytes of the SHA-256 of
/// its format-1 encoding. Conditional writes name the version they were decided
/// on; every replica computes the same digest for the same pin, whichever
/// encoding it stores.
pub type PinDigest = [u8; 16];

/// The digest of a stored pin value. Format-1 values are canonical (the
/// encoding is deterministic) and hashed as they are; JSON values of earlier
/// versions are re-encoded first.
pub fn digest_of_stored(v: &[u8]) -> Result<PinDigest, StateError> {
    use sha2::Digest;
    let h = if v.first() == Some(&codec::FORMAT_V1) {
        sha2::Sha256::digest(v)
    } else {
        sha2::Sha256::digest(codec::encode_pin(&decode(v)?))
    };
    let mut d = PinDigest::default();
    d.copy_from_slice(&h[..16]);
    Ok(d)
}

fn read_count(v: &[u8]) -> Result<u64, StateError> {
    let b: [u8; 8] = v
        .try_into()
        .map_err(|_| StateError::Corrupt(format!("pin count {v:?}")))?;
    Ok(u64::from_be_bytes(b))
}

/// A stored pin: the binary format, or the JSON that earlier versions stored.
fn decode(bytes: &[u8]) -> Result<Pin, StateError> {
    codec::decode_pin(bytes).map_err(|e| StateError::Corrupt(e.to_string()))
}

impl PinState {
    /// The pinset inside `tree`.
    pub fn new(tree: Arc<dyn Tree>) -> Self {
        PinState {
            tree,
            count: Arc::new(AtomicU64::new(COUNT_UNKNOWN)),
            filter: PresenceFilter::default(),
        }
    }

    /// The filter of certainly absent pins. Whoever writes pins to the tree
    /// keeps it true (see [`PresenceFilter::insert`] and
    /// [`PresenceFilter::rebuild`]).
    pub fn filter(&self) -> &PresenceFilter {
        &self.filter
    }

    /// Builds the presence filter from the stored pins on a blocking thread;
    /// until it is done every read goes to the store. Call it before anything
    /// writes pins (at start). The build stops early when the filter is
    /// rebuilt again or dropped with the last clone of this state.
    pub fn build_filter_in_background(&self) {
        let rebuild = self.filter.rebuild(self.known_count().unwrap_or(0));
        // Not a clone: the build must not keep the filter alive.
        let reader = PinState::new(self.tree.clone());
        tokio::task::spawn_blocking(move || {
            let mut key = PIN_PREFIX.to_vec();
            let mut live = true;
            let walked = reader.walk_while(&mut |cid, _| {
                key.truncate(PIN_PREFIX.len());
                key.extend_from_slice(cid);
                live = rebuild.insert(&key);
                live
            });
            match walked {
                Ok(()) if live => rebuild.finish(),
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!("pinset presence filter not built, reads go to the store: {e}")
                }
            }
        });
    }

    /// Whether the pin under store key `key` may exist (a store read tells).
    fn may_have(&self, key: &[u8]) -> bool {
        self.filter.may_contain(key)
    }

    /// Reads the stored size of the pinset, or counts the pins when the store
    /// has none yet (written by an earlier version) and stores that. Blocking:
    /// the count walks every key.
    pub fn load_count(&self) -> Result<u64, StateError> {
        let n = match self.tree.get(PIN_COUNT_KEY)? {
            Some(v) => read_count(&v)?,
            None => {
                let n = self.count_keys()?;
                self.tree.apply(vec![Self::count_entry(n)])?;
                n
            }
        };
        self.set_count(n);
        Ok(n)
    }

    /// The size the state machine knows after a write it made.
    pub fn set_count(&self, n: u64) {
        self.count.store(n, Ordering::Release);
    }

    /// The size last set, if known.
    pub fn known_count(&self) -> Option<u64> {
        Some(self.count.load(Ordering::Acquire)).filter(|n| *n != COUNT_UNKNOWN)
    }

    /// The batch entry storing the pinset's size `n`.
    pub fn count_entry(n: u64) -> BatchEntry {
        (PIN_COUNT_KEY.to_vec(), Some(n.to_be_bytes().to_vec()))
    }

    /// The tree holding the pinset (and the state machine's metadata).
    pub fn tree(&self) -> &Arc<dyn Tree> {
        &self.tree
    }

    /// The pin for `cid`, if any.
    pub fn get(&self, cid: &Cid) -> Result<Option<Pin>, StateError> {
        let k = key(cid);
        if !self.may_have(&k) {
            return Ok(None);
        }
        self.tree.get(&k)?.map(|b| decode(&b)).transpose()
    }

    /// `get` on a blocking thread, for async callers: a read may wait on the disk.
    pub async fn get_blocking(&self, cid: &Cid) -> Result<Option<Pin>, StateError> {
        let cid = *cid;
        self.blocking(move |state| state.get(&cid)).await
    }

    /// Runs `read` on a blocking thread, for async callers: store reads may
    /// wait on the disk, and walks of the pinset take long.
    pub async fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&PinState) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, StateError> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || read(&state))
            .await
            .map_err(StateError::Unfinished)?
    }

    /// The pin for `cid` and the digest of its stored version, if any.
    pub fn get_with_digest(&self, cid: &Cid) -> Result<Option<(Pin, PinDigest)>, StateError> {
        let k = key(cid);
        if !self.may_have(&k) {
            return Ok(None);
        }
        match self.tree.get(&k)? {
            Some(b) => Ok(Some((decode(&b)?, digest_of_stored(&b)?))),
            None => Ok(None),
        }
    }

    /// The store key of `cid`'s pin.
    pub fn key(cid: &Cid) -> Vec<u8> {
        key(cid)
    }

    /// True when `cid` is in the pinset.
    pub fn has(&self, cid: &Cid) -> Result<bool, StateError> {
        let k = key(cid);
        Ok(self.may_have(&k) && self.tree.get(&k)?.is_some())
    }

    /// The stored values under pin keys `keys`, in their order, one read view where
    /// the store has them; keys the filter rules out are not read.
    pub fn get_stored(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        // Asked once a key: the filter may become ready meanwhile.
        let read: Vec<bool> = keys.iter().map(|k| self.may_have(k)).collect();
        if read.iter().all(|r| *r) {
            return Ok(self.tree.get_many(keys)?);
        }
        let wanted: Vec<Vec<u8>> = keys
            .iter()
            .zip(&read)
            .filter(|(_, r)| **r)
            .map(|(k, _)| k.clone())
            .collect();
        let mut found = self.tree.get_many(&wanted)?.into_iter();
        Ok(read
            .iter()
            .map(|r| if *r { found.next().flatten() } else { None })
            .collect())
    }

    /// Every pin, in key order, read lazily from the store.
    pub fn list(&self) -> impl Iterator<Item = Result<Pin, StateError>> + Send + 'static {
        let (from, to) = prefix_bounds(PIN_PREFIX);
        self.tree
            .range(&from, to.as_deref())
            .map(|r| r.map_err(StateError::from).and_then(|(_, v)| decode(&v)))
    }

    /// The pins whose `expire_at` is `now` or earlier: a walk that reads only
    /// that field of each stored pin (one that does not decode is skipped).
    pub fn expired(&self, now: chrono::DateTime<chrono::Utc>) -> Result<Vec<Cid>, StateError> {
        let mut out = Vec::new();
        self.walk(&mut |cid, v| {
            if let Ok(Some(t)) = codec::read_expire_at(v)
                && t <= now
                && let Ok(c) = Cid::from_bytes(cid)
            {
                out.push(c);
            }
        })?;
        Ok(out)
    }

    /// The CIDs of the pins allocated to `peer` among a page of pins from
    /// `from` (reading only each pin's allocations; one that does not decode
    /// is skipped), and where the next page starts.
    pub fn allocated_to(
        &self,
        from: &PageFrom,
        peer: &str,
    ) -> Result<(Vec<Cid>, Option<PageFrom>), StateError> {
        let mut out = Vec::new();
        let next = self.scan(from, SCAN_BATCH, &mut |cid, v| {
            if let Ok(true) = codec::is_allocated_to(v, peer)
                && let Ok(c) = Cid::from_bytes(cid)
            {
                out.push(c);
            }
            true
        })?;
        Ok((out, next))
    }

    /// How many pins there are: the size kept with every write, else a walk
    /// over the keys.
    pub fn count(&self) -> Result<u64, StateError> {
        match self.known_count() {
            Some(n) => Ok(n),
            None => self.count_keys(),
        }
    }

    /// How many pins there are, by a walk over the keys (without copying them).
    pub fn count_keys(&self) -> Result<u64, StateError> {
        let mut n = 0u64;
        self.walk(&mut |_, _| n += 1)?;
        Ok(n)
    }

    /// Visits every pin, a page at a time (each page under one read view), as
    /// [`Self::scan`] hands them over.
    fn walk(&self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StateError> {
        self.walk_while(&mut |cid, v| {
            visit(cid, v);
            true
        })
    }

    /// [`Self::walk`] until `visit` returns false.
    fn walk_while(&self, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StateError> {
        let mut from = Some(PageFrom::start());
        let mut go = true;
        while let (Some(f), true) = (from, go) {
            from = self.scan(&f, SCAN_BATCH, &mut |cid, v| {
                go = visit(cid, v);
                go
            })?;
        }
        Ok(())
    }

    /// Visits up to `limit` pins from `from` in key order under one read view,
    /// handing over the raw CID bytes and the stored value without decoding them;
    /// `visit` returns `false` to stop. Returns where the next page starts.
    pub fn scan(
        &self,
        from: &PageFrom,
        limit: usize,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<Option<PageFrom>, StateError> {
        let (_, to) = prefix_bounds(PIN_PREFIX);
        let next = self.tree.scan(&from.0, to.as_deref(), limit, &mut |k, v| {
            visit(&k[PIN_PREFIX.len()..], v)
        })?;
        Ok(next.map(PageFrom))
    }

    /// Up to `limit` pins from `from`, read in one batch; and where the next page starts.
    pub fn page(
        &self,
        from: &PageFrom,
        limit: usize,
    ) -> Result<(Vec<Pin>, Option<PageFrom>), StateError> {
        let mut out = Vec::with_capacity(limit.min(SCAN_BATCH));
        let mut bad = None;
        let next = self.scan(from, limit, &mut |_, v| match decode(v) {
            Ok(p) => {
                out.push(p);
                true
            }
            Err(e) => {
                bad = Some(e);
                false
            }
        })?;
        match bad {
            Some(e) => Err(e),
            None => Ok((out, next)),
        }
    }

    /// Up to `limit` CIDs from `from`, read from the keys alone (no pin decoded).
    pub fn cids_page(
        &self,
        from: &PageFrom,
        limit: usize,
    ) -> Result<(Vec<Cid>, Option<PageFrom>), StateError> {
        let mut out = Vec::with_capacity(limit.min(SCAN_BATCH));
        let mut bad = None;
        let next = self.scan(from, limit, &mut |k, _| match Cid::from_bytes(k) {
            Ok(c) => {
                out.push(c);
                true
            }
            Err(e) => {
                bad = Some(StateError::Corrupt(e.to_string()));
                false
            }
        })?;
        match bad {
            Some(e) => Err(e),
            None => Ok((out, next)),
        }
    }

    /// Every pin from `from` on, read in batches of `batch` under one read view each.
    pub fn pages(
        &self,
        from: PageFrom,
        batch: usize,
    ) -> impl Iterator<Item = Result<Vec<Pin>, StateError>> + Send + 'static {
        let this = self.clone();
        let mut from = Some(from);
        std::iter::from_fn(move || {
            let f = from.take()?;
            match this.page(&f, batch.max(1)) {
                Ok((pins, next)) => {
                    from = next;
                    (!pins.is_empty()).then_some(Ok(pins))
                }
                Err(e) => Some(Err(e)),
            }
        })
    }

    /// The pins of `cids`, in the same order. CIDs sorted by their bytes (as pages
    /// of the pinset are) are read with one range scan; others one by one.
    pub fn get_many(&self, cids: &[Cid]) -> Result<Vec<Option<Pin>>, StateError> {
        let keys: Vec<Vec<u8>> = cids.iter().map(key).collect();
        if keys.len() < 2 || !keys.windows(2).all(|w| w[0] < w[1]) {
            return cids.iter().map(|c| self.get(c)).collect();
        }
        let mut out: Vec<Option<Pin>> = Vec::with_capacity(cids.len());
        let mut i = 0;
        let mut bad = None;
        let last = keys.last().map(|k| k.as_slice()).unwrap_or_default();
        let mut end = last.to_vec();
        end.push(0);
        self.tree
            .scan(&keys[0], Some(&end), usize::MAX, &mut |k, v| {
                while i < keys.len() && keys[i].as_slice() < k {
                    out.push(None);
                    i += 1;
                }
                if i < keys.len() && keys[i].as_slice() == k {
                    match decode(v) {
                        Ok(p) => out.push(Some(p)),
                        Err(e) => {
                            bad = Some(e);
                            return false;
                        }
                    }
                    i += 1;
                }
                i < keys.len()
            })?;
        if let Some(e) = bad {
            return Err(e);
        }
        out.resize_with(cids.len(), || None);
        Ok(out)
    }

    /// Decodes a value handed over by [`PinState::scan`].
    pub fn decode_value(bytes: &[u8]) -> Result<Pin, StateError> {
        decode(bytes)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::PinOptions;

    fn cid(n: u8) -> Cid {
        Cid::from_bytes(&[0x01, 0x55, 0x00, 0x01, n]).unwrap()
    }

    /// Pages, key-only pages and sorted multi-gets agree with the pinset.
    #[test]
    fn paged_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(dir.path(), crate::store::Backend::Redb).unwrap();
        let state = PinState::new(store.tree("state").unwrap());
        let batch = (0..10)
            .map(|i| PinState::add_entry(&Pin::new(cid(i * 2), PinOptions::default())).unwrap())
            .collect();
        state.tree().apply(batch).unwrap();
        assert_eq!(state.count().unwrap(), 10);
        let (pins, next) = state.page(&PageFrom::start(), 4).unwrap();
        assert_eq!(
            pins.iter().map(|p| p.cid).collect::<Vec<_>>(),
            [0, 2, 4, 6].map(cid)
        );
        let (cids, next) = state.cids_page(&next.unwrap(), 4).unwrap();
        assert_eq!(cids, [8, 10, 12, 14].map(cid));
        let (rest, next) = state.page(&next.unwrap(), 4).unwrap();
        assert_eq!((rest.len(), next), (2, None));
        let all: Vec<usize> = state
            .pages(PageFrom::at(&cid(5)), 3)
            .map(|p| p.unwrap().len())
            .collect();
        assert_eq!(all, [3, 3, 1]);
        assert!(PageFrom::after(&cid(4)).is_past(&cid(4)));
        assert!(!PageFrom::at(&cid(4)).is_past(&cid(4)));
        // Sorted: one range read; unsorted: one read each; same answers.
        let got = state.get_many(&[1, 2, 3, 4, 18, 19].map(cid)).unwrap();
        let found: Vec<bool> = got.iter().map(Option::is_some).collect();
        assert_eq!(found, [false, true, false, true, true, false]);
        let got = state.get_many(&[4, 1, 2].map(cid)).unwrap();
        let found: Vec<bool> = got.iter().map(Option::is_some).collect();
        assert_eq!(found, [true, false, true]);
    }
}
