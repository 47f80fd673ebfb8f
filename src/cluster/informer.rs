//! Informers: the metrics this peer reports about itself (free space or repo size,
//! tags, queued operations, and the daemon's pin count when the allocator uses it)
//! and its `ping`.

use std::time::Duration;

use super::monitor::PING;
use super::tracker::PinTracker;
use crate::config::InformerConfig;
use crate::ipfs::IpfsConnector;
use crate::types::{IpfsId, Metric};

/// Produces this peer's metrics.
#[derive(Clone)]
pub struct Informer {
    cfg: InformerConfig,
    ipfs: IpfsConnector,
    tracker: PinTracker,
    peer: String,
    /// Whether `numpin` is sent: only when the allocator weighs peers by it.
    numpin: bool,
}

impl Informer {
    /// Informers for `peer`; `numpin`: whether the allocator uses that metric.
    pub fn new(
        cfg: InformerConfig,
        ipfs: IpfsConnector,
        tracker: PinTracker,
        peer: String,
        numpin: bool,
    ) -> Self {
        Informer {
            cfg,
            ipfs,
            tracker,
            peer,
            numpin,
        }
    }

    /// How often the metrics must be sent so they never expire: half the shortest TTL.
    pub fn interval(&self) -> Duration {
        let ttl = [
            self.cfg.disk.metric_ttl.0,
            self.cfg.tags.metric_ttl.0,
            self.cfg.pinqueue.metric_ttl.0,
        ]
        .into_iter()
        .min()
        .unwrap_or(Duration::from_secs(30));
        (ttl / 2).max(Duration::from_millis(100))
    }

    /// The current metrics.
    pub async fn metrics(&self) -> Vec<Metric> {
        let mut out = Vec::new();
        let disk_ttl = self.cfg.disk.metric_ttl.0;
        let kind = if self.cfg.disk.metric_type == "reposize" {
            "reposize"
        } else {
            "freespace"
        };
        let m = match self.ipfs.repo_stat().await {
            Ok((size, max)) => {
                let v = if kind == "reposize" {
                    size
                } else {
                    max.saturating_sub(size)
                };
                let weight = i64::try_from(v).unwrap_or(i64::MAX);
                // More free space is better; a bigger repo is worse.
                let weight = if kind == "reposize" { -weight } else { weight };
                let mut m = Metric::new(kind, &self.peer, v.to_string(), weight, disk_ttl);
                // No free space (or an unknown capacity) means no new allocations.
                m.valid = kind == "reposize" || v > 0;
                m
            }
            Err(e) => {
                tracing::debug!("informer: repo/stat: {e}");
                let mut m = Metric::new(kind, &self.peer, String::new(), 0, disk_ttl);
                m.valid = false;
                m
            }
        };
        out.push(m);
        for (tag, value) in &self.cfg.tags.tags {
            let mut m = Metric::new(
                &format!("tag:{tag}"),
                &self.peer,
                value.clone(),
                0,
                self.cfg.tags.metric_ttl.0,
            );
            m.partitionable = true;
            out.push(m);
        }
        // Upstream's numpin: how many pins the daemon holds (fewer is better).
        // It takes a listing of every pin the daemon has, so it is sent only
        // when the allocator uses it (upstream 1.1.6 does not load it at all).
        if self.numpin {
            out.push(self.numpin(disk_ttl).await);
        }
        let queued = self.tracker.queued() as u64;
        let bucket = self.cfg.pinqueue.weight_bucket_size.max(1);
        out.push(Metric::new(
            "pinqueue",
            &self.peer,
            queued.to_string(),
            -i64::try_from(queued / bucket).unwrap_or(i64::MAX),
            self.cfg.pinqueue.metric_ttl.0,
        ));
        out
    }

    /// The `numpin` metric: how many pins the daemon holds (fewer is better).
    async fn numpin(&self, ttl: Duration) -> Metric {
        match self.tracker.daemon_pin_count().await {
            Ok(n) => Metric::new(
                "numpin",
                &self.peer,
                n.to_string(),
                -i64::try_from(n).unwrap_or(i64::MAX),
                ttl,
            ),
            Err(_) => {
                let mut m = Metric::new("numpin", &self.peer, String::new(), 0, ttl);
                m.valid = false;
                m
            }
        }
    }

    /// The `ping` metric, valid for twice the ping interval, carrying the peer's name
    /// and its IPFS daemon's ID and addresses.
    pub fn ping(&self, peername: &str, ipfs: &IpfsId, interval: Duration) -> Metric {
        let value = serde_json::json!({
            "peer_name": peername,
            "ipfs_id": ipfs.id,
            "ipfs_addresses": ipfs.addresses,
        })
        .to_string();
        Metric::new(PING, &self.peer, value, 0, interval * 2)
    }
}
