//! Bytes sent and received per libp2p protocol (upstream's `BandwidthByProtocol`),
//! counted on the request-response messages, with recent rates.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Protocol;
use crate::types::{BandwidthByProtocol, BandwidthStats};

/// Rates are averaged over about this long.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// At most one rate sample per this long.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Counters {
    total_in: u64,
    total_out: u64,
    /// (when, total_in, total_out), oldest first, spanning at most the window.
    samples: VecDeque<(Instant, u64, u64)>,
}

impl Counters {
    fn sample(&mut self, now: Instant) {
        if self
            .samples
            .back()
            .is_none_or(|(t, _, _)| now.duration_since(*t) >= SAMPLE_EVERY)
        {
            self.samples.push_back((now, self.total_in, self.total_out));
        }
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _, _)| now.duration_since(*t) >= RATE_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    fn stats(&self, now: Instant) -> BandwidthStats {
        let (rate_in, rate_out) = match self.samples.front() {
            Some((t, i, o)) if now.duration_since(*t) >= Duration::from_millis(100) => {
                let secs = now.duration_since(*t).as_secs_f64();
                (
                    (self.total_in - i) as f64 / secs,
                    (self.total_out - o) as f64 / secs,
                )
            }
            _ => (0.0, 0.0),
        };
        BandwidthStats {
            total_in: i64::try_from(self.total_in).unwrap_or(i64::MAX),
            total_out: i64::try_from(self.total_out).unwrap_or(i64::MAX),
            rate_in,
            rate_out,
        }
    }
}

/// The counters of one host, shared by its swarm task and handles.
#[derive(Default)]
pub struct Bandwidth {
    by_protocol: Mutex<HashMap<Protocol, Counters>>,
}

impl Bandwidth {
    fn record(&self, protocol: Protocol, bytes_in: u64, bytes_out: u64) {
        let now = Instant::now();
        // A poisoned lock only means another recorder panicked mid-update of plain
        // counters; they stay usable.
        let mut map = crate::sync::lock(&self.by_protocol);
        let c = map.entry(protocol).or_default();
        c.sample(now);
        c.total_in += bytes_in;
        c.total_out += bytes_out;
    }

    /// Counts `bytes` received on `protocol`.
    pub fn received(&self, protocol: Protocol, bytes: u64) {
        self.record(protocol, bytes, 0);
    }

    /// Counts `bytes` sent on `protocol`.
    pub fn sent(&self, protocol: Protocol, bytes: u64) {
        self.record(protocol, 0, bytes);
    }

    /// Totals and recent rates per protocol.
    pub fn snapshot(&self) -> BandwidthByProtocol {
        let now = Instant::now();
        let mut map = crate::sync::lock(&self.by_protocol);
        map.iter_mut()
            .map(|(p, c)| {
                c.sample(now);
                (p.stream_protocol().to_string(), c.stats(now))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_per_protocol_and_direction() {
        let b = Bandwidth::default();
        b.sent(Protocol::Rpc, 100);
        b.received(Protocol::Rpc, 40);
        b.sent(Protocol::Rpc, 5);
        b.received(Protocol::Raft, 7);
        let s = b.snapshot();
        assert_eq!(s.len(), 2);
        let (rpc, raft) = (
            &s["/ipfs-cluster-rs/rpc/1.0.0"],
            &s["/ipfs-cluster-rs/raft/1.0.0"],
        );
        assert_eq!((rpc.total_in, rpc.total_out), (40, 105));
        assert_eq!((raft.total_in, raft.total_out), (7, 0));
    }

    #[test]
    fn rates_are_bytes_over_the_recent_window() {
        let mut c = Counters::default();
        let t0 = Instant::now();
        c.sample(t0);
        c.total_out = 2000;
        let s = c.stats(t0 + Duration::from_secs(2));
        assert!((s.rate_out - 1000.0).abs() < 1e-6, "{s:?}");
        assert_eq!(s.rate_in, 0.0);
        // Old samples leave the window: a quiet protocol's rate falls to zero.
        c.sample(t0 + Duration::from_secs(3));
        c.sample(t0 + Duration::from_secs(30));
        c.sample(t0 + Duration::from_secs(31));
        assert_eq!(c.stats(t0 + Duration::from_secs(31)).rate_out, 0.0);
    }
}
