//! Upstream's `BandwidthByProtocol`: traffic counters per libp2p protocol.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// go-libp2p's `metrics.Stats`, with its Go field names (it has no JSON tags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BandwidthStats {
    /// Bytes received.
    #[serde(rename = "TotalIn")]
    pub total_in: i64,
    /// Bytes sent.
    #[serde(rename = "TotalOut")]
    pub total_out: i64,
    /// Recent receive rate, bytes per second.
    #[serde(rename = "RateIn")]
    pub rate_in: f64,
    /// Recent send rate, bytes per second.
    #[serde(rename = "RateOut")]
    pub rate_out: f64,
}

/// Traffic per protocol ID, as `GET /health/bandwidth` answers.
pub type BandwidthByProtocol = BTreeMap<String, BandwidthStats>;
