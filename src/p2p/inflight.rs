//! A bound on the requests each peer may have in flight here, so that one peer
//! (buggy, or holding the cluster secret but hostile) cannot take the whole
//! inbound queue and every handler task. libp2p bounds streams per connection;
//! this bounds them per peer, over all its connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use libp2p::PeerId;

use super::Protocol;

/// Requests a peer may have in flight per protocol: libp2p's own per-connection
/// stream bound (100), so one connection never meets this limit, many do.
pub(super) const MAX_INFLIGHT_PER_PEER: usize = 100;

/// Counts each peer's requests in flight.
#[derive(Clone)]
pub(super) struct InflightLimit {
    counts: Arc<Mutex<HashMap<(PeerId, Protocol), usize>>>,
    max: usize,
}

/// One request in flight; dropping it frees its place.
pub(super) struct InflightPermit {
    limit: InflightLimit,
    key: (PeerId, Protocol),
}

impl InflightLimit {
    /// At most `max` requests per peer and protocol.
    pub(super) fn new(max: usize) -> Self {
        InflightLimit {
            counts: Arc::default(),
            max,
        }
    }

    /// A place for one more request of `peer`, or `None` when it has `max` already.
    pub(super) fn try_acquire(&self, peer: PeerId, protocol: Protocol) -> Option<InflightPermit> {
        let mut counts = crate::sync::lock(&self.counts);
        let n = counts.entry((peer, protocol)).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(InflightPermit {
            limit: self.clone(),
            key: (peer, protocol),
        })
    }

    /// The bound per peer and protocol.
    pub(super) fn max(&self) -> usize {
        self.max
    }

    #[cfg(test)]
    fn peers(&self) -> usize {
        self.counts.lock().map(|c| c.len()).unwrap_or(0)
    }
}

impl Drop for InflightPermit {
    fn drop(&mut self) {
        let mut counts = crate::sync::lock(&self.limit.counts);
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_peer_gets_its_own_bound_and_places_come_back() {
        let limit = InflightLimit::new(3);
        let (a, b) = (PeerId::random(), PeerId::random());
        let held: Vec<_> = (0..3)
            .map(|_| limit.try_acquire(a, Protocol::Rpc).unwrap())
            .collect();
        assert!(limit.try_acquire(a, Protocol::Rpc).is_none(), "a 4th for a");
        // Other peers and the other protocol are not held up by a.
        assert!(limit.try_acquire(b, Protocol::Rpc).is_some());
        assert!(limit.try_acquire(a, Protocol::Raft).is_some());
        drop(held);
        let again: Vec<_> = (0..3)
            .map(|_| limit.try_acquire(a, Protocol::Rpc).unwrap())
            .collect();
        drop(again);
        // No entry is left behind for peers with nothing in flight.
        assert_eq!(limit.peers(), 0);
    }
}
