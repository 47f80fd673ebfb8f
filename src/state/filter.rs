//! Which pins are certainly not in the pinset, answered from memory.
//!
//! Ingest is mostly new pins, and each was read from the store once by the
//! peer that decided it and once by every replica's apply: a miss every time,
//! and on fjall a miss is a descent of the in-memory skip list with a cache
//! miss at each level (4.8% and 1.8% of the machine's CPU at 64 connections,
//! `perf`, frame pointers). A blocked Bloom filter over the pin keys answers
//! most misses without the store, at ~1.25 bytes a pin.
//!
//! Never a false "absent": a key goes in before the write that stores it, under
//! the state machine's apply lock, and nothing takes keys out (an unpinned
//! CID costs a store read until the filter is built again). Until a filter is
//! built from the store (in the background at start, as a snapshot installs)
//! it is not ready and every read goes to the store.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};

use xxhash_rust::xxh3::xxh3_64;

/// Bits a key sets, all in one 512-bit block (one cache line).
const BITS_PER_KEY_SET: u32 = 7;
/// Filter bits per key of capacity: ~1-2% false "maybe" at capacity.
const BITS_PER_KEY: u64 = 10;
/// A layer's smallest capacity in keys (1.25 MB of bits).
const MIN_CAPACITY: u64 = 1 << 20;

/// One fixed-size Bloom filter; a full one is followed by a layer twice its size.
struct Layer {
    blocks: Box<[[AtomicU64; 8]]>,
    capacity: u64,
    added: AtomicU64,
}

impl Layer {
    fn new(capacity: u64) -> Self {
        let bits = capacity.saturating_mul(BITS_PER_KEY);
        let n = usize::try_from(bits.div_ceil(512))
            .unwrap_or(usize::MAX)
            .max(1);
        let blocks = (0..n).map(|_| Default::default()).collect();
        Layer {
            blocks,
            capacity,
            added: AtomicU64::new(0),
        }
    }

    /// The block of `h` and the bits (word, mask) it sets there.
    fn probe(&self, h: u64) -> (&[AtomicU64; 8], impl Iterator<Item = (usize, u64)>) {
        // The high half picks the block; a remix of the hash the bits in it,
        // 9 bits of it each.
        let block = &self.blocks[(((h >> 32) * self.blocks.len() as u64) >> 32) as usize];
        let mixed = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let bits = (0..BITS_PER_KEY_SET).map(move |i| {
            let b = ((mixed >> (i * 9)) & 511) as usize;
            (b / 64, 1u64 << (b % 64))
        });
        (block, bits)
    }

    fn insert(&self, h: u64) {
        let (block, bits) = self.probe(h);
        for (w, m) in bits {
            block[w].fetch_or(m, Ordering::Release);
        }
        self.added.fetch_add(1, Ordering::Relaxed);
    }

    fn may_contain(&self, h: u64) -> bool {
        let (block, mut bits) = self.probe(h);
        bits.all(|(w, m)| block[w].load(Ordering::Acquire) & m != 0)
    }
}

/// One build of the filter: its layers, and whether it holds every stored key.
struct Build {
    layers: RwLock<Vec<Arc<Layer>>>,
    ready: AtomicBool,
}

impl Build {
    /// A build for `capacity` keys; `None`: no layer until a key comes (a
    /// state that is never read through its filter allocates none).
    fn new(capacity: Option<u64>) -> Self {
        let layers = capacity.map(|c| Arc::new(Layer::new(c.max(MIN_CAPACITY))));
        Build {
            layers: RwLock::new(layers.into_iter().collect()),
            ready: AtomicBool::new(false),
        }
    }

    fn insert(&self, key: &[u8]) {
        let h = xxh3_64(key);
        let last = crate::sync::read(&self.layers).last().cloned();
        let layer = match last {
            Some(l) if l.added.load(Ordering::Relaxed) < l.capacity => l,
            _ => {
                let mut layers = crate::sync::write(&self.layers);
                match layers.last() {
                    Some(l) if l.added.load(Ordering::Relaxed) < l.capacity => l.clone(),
                    last => {
                        let capacity = last.map_or(MIN_CAPACITY, |l| l.capacity.saturating_mul(2));
                        let l = Arc::new(Layer::new(capacity));
                        layers.push(l.clone());
                        l
                    }
                }
            }
        };
        layer.insert(h);
    }

    fn may_contain(&self, key: &[u8]) -> bool {
        if !self.ready.load(Ordering::Acquire) {
            return true;
        }
        let h = xxh3_64(key);
        crate::sync::read(&self.layers)
            .iter()
            .any(|l| l.may_contain(h))
    }
}

/// The filter of a pinset, shared by every clone of its
/// [`PinState`](super::PinState).
#[derive(Clone)]
pub struct PresenceFilter {
    current: Arc<RwLock<Arc<Build>>>,
}

impl Default for PresenceFilter {
    fn default() -> Self {
        PresenceFilter {
            current: Arc::new(RwLock::new(Arc::new(Build::new(None)))),
        }
    }
}

/// A filter being built: keys go in with [`Self::insert`], and
/// [`Self::finish`] makes it answer (if it is still the current one).
pub struct Rebuild {
    build: Weak<Build>,
}

impl Rebuild {
    /// Adds a stored key. False once the filter was replaced or dropped: the
    /// build can stop.
    pub fn insert(&self, key: &[u8]) -> bool {
        match self.build.upgrade() {
            Some(b) => {
                b.insert(key);
                true
            }
            None => false,
        }
    }

    /// Every stored key is in: the filter answers from now on.
    pub fn finish(self) {
        if let Some(b) = self.build.upgrade() {
            b.ready.store(true, Ordering::Release);
        }
    }
}

impl PresenceFilter {
    /// False when `key` is certainly not stored; true when it may be (or the
    /// filter is not built yet).
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.build().may_contain(key)
    }

    /// Adds `key`, before the write that stores it.
    pub fn insert(&self, key: &[u8]) {
        self.build().insert(key);
    }

    /// Starts a new filter for about `expected` keys, not ready until the
    /// returned build is finished: every read goes to the store meanwhile.
    /// Keys inserted from now on (by writes) go into the new filter. Call it
    /// where no write is between its filter insert and its store write (under
    /// the apply lock), and list the stored keys into the build after.
    pub fn rebuild(&self, expected: u64) -> Rebuild {
        let capacity = expected.saturating_add(expected / 2);
        let build = Arc::new(Build::new(Some(capacity)));
        let weak = Arc::downgrade(&build);
        *crate::sync::write(&self.current) = build;
        Rebuild { build: weak }
    }

    /// True when the filter answers (its build finished).
    pub fn is_ready(&self) -> bool {
        self.build().ready.load(Ordering::Acquire)
    }

    fn build(&self) -> Arc<Build> {
        crate::sync::read(&self.current).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> Vec<u8> {
        let mut k = b"p/".to_vec();
        k.extend_from_slice(&n.to_be_bytes());
        k
    }

    #[test]
    fn inserted_keys_are_never_absent_and_few_others_pass() {
        let f = PresenceFilter::default();
        let build = f.rebuild(10_000);
        for n in 0..10_000 {
            assert!(build.insert(&key(n)));
        }
        // Not ready: everything may be there.
        assert!(f.may_contain(&key(1_000_000)));
        build.finish();
        assert!(f.is_ready());
        // Written after the build: in as well.
        for n in 10_000..20_000 {
            f.insert(&key(n));
        }
        assert!((0..20_000).all(|n| f.may_contain(&key(n))));
        let passed = (1_000_000..1_100_000)
            .filter(|n| f.may_contain(&key(*n)))
            .count();
        // 20,000 keys in a filter for 1M: almost nothing passes.
        assert!(passed < 200, "{passed} of 100,000 absent keys passed");
    }

    #[test]
    fn a_full_layer_is_followed_by_a_larger_one() {
        let f = PresenceFilter::default();
        let build = f.rebuild(0);
        let n = MIN_CAPACITY + MIN_CAPACITY / 2;
        for i in 0..n {
            build.insert(&key(i));
        }
        build.finish();
        assert!((0..n).step_by(997).all(|i| f.may_contain(&key(i))));
        let passed = (n..n + 100_000).filter(|i| f.may_contain(&key(*i))).count();
        assert!(passed < 4_000, "{passed} of 100,000 absent keys passed");
        assert_eq!(crate::sync::read(&f.build().layers).len(), 2);
    }

    #[test]
    fn a_replaced_build_stops_and_never_answers() {
        let f = PresenceFilter::default();
        let old = f.rebuild(10);
        let new = f.rebuild(10);
        assert!(!old.insert(&key(1)), "the replaced build was dropped");
        old.finish();
        assert!(!f.is_ready());
        new.finish();
        assert!(f.is_ready());
        assert!(!f.may_contain(&key(1)));
    }
}
