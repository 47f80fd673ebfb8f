//! The peer monitor: keeps the latest metric of each name from each peer and
//! raises an alert when a peer's `ping` expires.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::Utc;

use super::allocator::PeerMetrics;
use crate::types::{Alert, Metric};

/// The metric whose expiry means a peer is down.
pub const PING: &str = "ping";
/// Alerts kept for `GET /health/alerts`, as upstream.
const MAX_ALERTS: usize = 1000;
/// How long an alert is listed: a peer that stays down is alerted on once, so
/// without a bound the list (and the set of pings alerted on) only grows.
pub const ALERT_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(1);

#[derive(Default)]
struct State {
    /// (name, peer) → latest metric.
    metrics: HashMap<(String, String), Metric>,
    alerts: VecDeque<Alert>,
    /// (peer, expire) of pings already alerted on.
    alerted: HashSet<(String, i64)>,
}

/// The metrics this peer knows of.
#[derive(Clone, Default)]
pub struct PeerMonitor {
    state: Arc<Mutex<State>>,
}

impl PeerMonitor {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Stores `m` as the latest of its name from its peer.
    pub fn record(&self, mut m: Metric) {
        m.received_at = Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
        self.lock()
            .metrics
            .insert((m.name.clone(), m.peer.clone()), m);
    }

    /// Stores the metrics `sender` sent about itself; the others are dropped, as
    /// a peer may only speak for itself. Returns how many were dropped.
    pub fn record_from(&self, sender: &str, metrics: Vec<Metric>) -> usize {
        let mut dropped = 0;
        for m in metrics {
            if m.peer == sender {
                self.record(m);
            } else {
                tracing::warn!(%sender, claimed = %m.peer, metric = %m.name,
                    "dropped a metric sent in another peer's name");
                dropped += 1;
            }
        }
        dropped
    }

    /// Forgets the metrics of a peer that left.
    pub fn forget(&self, peer: &str) {
        self.lock().metrics.retain(|(_, p), _| p != peer);
    }

    /// The names of the metrics known.
    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.lock().metrics.keys().map(|(n, _)| n.clone()).collect();
        n.sort();
        n.dedup();
        n
    }

    /// The latest valid, unexpired metric of `name` from each peer.
    pub fn latest(&self, name: &str) -> Vec<Metric> {
        let mut v: Vec<Metric> = self
            .lock()
            .metrics
            .iter()
            .filter(|((n, _), m)| n == name && m.usable())
            .map(|(_, m)| m.clone())
            .collect();
        v.sort_by(|a, b| a.peer.cmp(&b.peer));
        v
    }

    /// The usable metrics named in `names` of each of `peers`.
    pub fn peer_metrics(&self, peers: &[String], names: &[String]) -> PeerMetrics {
        let st = self.lock();
        let mut out = PeerMetrics::new();
        for p in peers {
            let mut m = BTreeMap::new();
            for n in names {
                if let Some(metric) = st
                    .metrics
                    .get(&(n.clone(), p.clone()))
                    .filter(|m| m.usable())
                {
                    m.insert(n.clone(), metric.clone());
                }
            }
            out.insert(p.clone(), m);
        }
        out
    }

    /// True when `peer` has an unexpired ping.
    pub fn is_alive(&self, peer: &str) -> bool {
        self.lock()
            .metrics
            .get(&(PING.to_string(), peer.to_string()))
            .is_some_and(|m| !m.expired())
    }

    /// Raises an alert for each of `peers` whose ping expired since the last check.
    pub fn check(&self, peers: &[String]) -> Vec<Alert> {
        let mut st = self.lock();
        st.expire_alerts(Utc::now());
        let mut raised = Vec::new();
        for p in peers {
            let Some(ping) = st.metrics.get(&(PING.to_string(), p.clone())).cloned() else {
                continue;
            };
            if !ping.expired() || !st.alerted.insert((p.clone(), ping.expire)) {
                continue;
            }
            let alert = Alert {
                metric: ping,
                triggered_at: Utc::now(),
            };
            if st.alerts.len() >= MAX_ALERTS {
                st.alerts.clear();
            }
            st.alerts.push_front(alert.clone());
            raised.push(alert);
        }
        raised
    }

    /// Alerts raised within [`ALERT_WINDOW`], newest first.
    pub fn alerts(&self) -> Vec<Alert> {
        let mut st = self.lock();
        st.expire_alerts(Utc::now());
        st.alerts.iter().cloned().collect()
    }
}

impl State {
    /// Drops the alerts raised before `now - ALERT_WINDOW`, and the pings alerted
    /// on that are no longer a peer's latest (it sent a newer one, or was
    /// forgotten): at most one entry per known peer stays.
    fn expire_alerts(&mut self, now: chrono::DateTime<Utc>) {
        let cutoff = now - ALERT_WINDOW;
        // Newest first: the old ones are at the back.
        while self.alerts.back().is_some_and(|a| a.triggered_at < cutoff) {
            self.alerts.pop_back();
        }
        let metrics = &self.metrics;
        self.alerted.retain(|(peer, expire)| {
            metrics
                .get(&(PING.to_string(), peer.clone()))
                .is_some_and(|m| m.expire == *expire)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expired_ping_raises_one_alert() {
        let mon = PeerMonitor::default();
        let mut ping = Metric::new(PING, "p1", String::new(), 0, Duration::from_secs(60));
        mon.record(ping.clone());
        assert!(mon.check(&["p1".into()]).is_empty());
        assert!(mon.is_alive("p1"));
        ping.expire = 0;
        mon.record(ping);
        assert_eq!(mon.check(&["p1".into()]).len(), 1);
        assert!(mon.check(&["p1".into()]).is_empty(), "alerted twice");
        assert_eq!(mon.alerts().len(), 1);
        assert!(!mon.is_alive("p1"));
    }

    #[test]
    fn alerts_expire_after_their_window() {
        let mon = PeerMonitor::default();
        let mut ping = Metric::new(PING, "p1", String::new(), 0, Duration::from_secs(60));
        ping.expire = 1;
        mon.record(ping.clone());
        assert_eq!(mon.check(&["p1".into()]).len(), 1);
        assert_eq!(mon.alerts().len(), 1);
        // Age the alert past the window, as if raised long ago.
        {
            let mut st = mon.lock();
            let a = st.alerts.front_mut().unwrap();
            a.triggered_at = Utc::now() - ALERT_WINDOW - chrono::TimeDelta::seconds(1);
        }
        assert!(mon.alerts().is_empty(), "an alert outlived its window");
        // The peer is still down on the same ping: not alerted on again.
        assert!(mon.check(&["p1".into()]).is_empty());
        assert_eq!(mon.lock().alerted.len(), 1);
        // Once it is forgotten, so is the ping alerted on: the set does not grow
        // with every peer that ever went down.
        mon.forget("p1");
        assert!(mon.check(&[]).is_empty());
        assert!(mon.lock().alerted.is_empty());
        // A recent alert stays.
        let mut ping2 = ping;
        ping2.peer = "p2".into();
        ping2.expire = Utc::now().timestamp_nanos_opt().unwrap() - 1;
        mon.record(ping2);
        assert_eq!(mon.check(&["p2".into()]).len(), 1);
        assert_eq!(mon.alerts().len(), 1);
        assert_eq!(mon.lock().alerted.len(), 1);
    }

    #[test]
    fn metrics_are_kept_only_under_their_senders_name() {
        let mon = PeerMonitor::default();
        let own = Metric::new("freespace", "a", "10".into(), 10, Duration::from_secs(60));
        let mut spoofed = own.clone();
        spoofed.peer = "b".into();
        spoofed.value = "999999".into();
        assert_eq!(mon.record_from("a", vec![own, spoofed.clone()]), 1);
        let l = mon.latest("freespace");
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].peer, "a");
        // A ping in another's name cannot keep a dead peer alive.
        let mut ping = Metric::new(PING, "b", String::new(), 0, Duration::from_secs(60));
        assert_eq!(mon.record_from("a", vec![ping.clone()]), 1);
        assert!(!mon.is_alive("b"));
        ping.peer = "a".into();
        assert_eq!(mon.record_from("a", vec![ping]), 0);
        assert!(mon.is_alive("a"));
    }

    #[test]
    fn latest_skips_invalid_and_expired() {
        let mon = PeerMonitor::default();
        let mut a = Metric::new("freespace", "a", "1".into(), 1, Duration::from_secs(60));
        mon.record(a.clone());
        a.peer = "b".into();
        a.valid = false;
        mon.record(a.clone());
        a.peer = "c".into();
        a.valid = true;
        a.expire = 0;
        mon.record(a);
        let l = mon.latest("freespace");
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].peer, "a");
        let pm = mon.peer_metrics(&["a".into(), "b".into()], &["freespace".into()]);
        assert_eq!(pm["a"].len(), 1);
        assert!(pm["b"].is_empty());
    }
}
