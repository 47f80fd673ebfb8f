//! Upstream's `Metric` and `Alert`: what informers broadcast and the monitor raises.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A peer's measurement, valid until `expire` (unix nanoseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metric {
    /// `freespace`, `tag:group`, `ping`, …
    pub name: String,
    /// The peer it describes.
    pub peer: String,
    /// The measured value, as text.
    pub value: String,
    /// When it stops being valid, in unix nanoseconds.
    pub expire: i64,
    /// False when the value cannot be used (e.g. no free space known).
    pub valid: bool,
    /// Ordering weight (higher is better).
    pub weight: i64,
    /// True when peers should be grouped by value (tags).
    pub partitionable: bool,
    /// When it was received, in unix nanoseconds.
    #[serde(default)]
    pub received_at: i64,
}

fn now_nanos() -> i64 {
    Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

impl Metric {
    /// A valid metric expiring `ttl` from now.
    pub fn new(
        name: &str,
        peer: &str,
        value: String,
        weight: i64,
        ttl: std::time::Duration,
    ) -> Self {
        let ttl = i64::try_from(ttl.as_nanos()).unwrap_or(i64::MAX);
        Metric {
            name: name.to_string(),
            peer: peer.to_string(),
            value,
            expire: now_nanos().saturating_add(ttl),
            valid: true,
            weight,
            partitionable: false,
            received_at: 0,
        }
    }

    /// True once `expire` has passed.
    pub fn expired(&self) -> bool {
        now_nanos() > self.expire
    }

    /// Seconds until it expires (negative once expired).
    pub fn expires_in_secs(&self) -> i64 {
        (self.expire - now_nanos()) / 1_000_000_000
    }

    /// True when it can be used for allocation.
    pub fn usable(&self) -> bool {
        self.valid && !self.expired()
    }
}

/// A metric whose expiry raised an alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// The expired metric.
    #[serde(flatten)]
    pub metric: Metric,
    /// When the alert was raised.
    pub triggered_at: DateTime<Utc>,
}
