//! Prometheus metrics (upstream's `observations.metrics`): the pinset, the pin
//! tracker and the peer, computed when scraped, under upstream's `ipfscluster_`
//! names (plus `peers` and `alerts`).

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderValue, Method, Response, StatusCode, header};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::Cluster;
use crate::config::MetricsConfig;
use crate::http::{ServerOptions, full};

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("metrics endpoint: {0}")]
pub struct ObservationsError(#[from] std::io::Error);

/// Serves `GET /metrics` on `cfg.prometheus_endpoint` until `cancel`.
pub async fn start(
    cfg: &MetricsConfig,
    cluster: Cluster,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> Result<Vec<SocketAddr>, ObservationsError> {
    let listeners = crate::http::bind(std::slice::from_ref(&cfg.prometheus_endpoint)).await?;
    let opts = ServerOptions {
        header_read_timeout: Duration::from_secs(5),
        max_header_bytes: 8192,
    };
    Ok(crate::http::serve(
        "metrics",
        listeners,
        move |req, _| {
            let cluster = cluster.clone();
            async move {
                if req.method() != Method::GET || req.uri().path() != "/metrics" {
                    let mut r = Response::new(full("404 page not found\n"));
                    *r.status_mut() = StatusCode::NOT_FOUND;
                    return r;
                }
                let mut r = Response::new(full(render(&cluster).await));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
        },
        opts,
        tasks,
        cancel,
    ))
}

/// The text exposition of every metric; one that cannot be read is left out.
pub async fn render(cluster: &Cluster) -> String {
    let counts = cluster.tracker().counts();
    let me = cluster.peer_id().to_string();
    let freespace = cluster
        .monitor()
        .latest("freespace")
        .into_iter()
        .find(|m| m.peer == me && m.valid)
        .and_then(|m| m.value.parse::<u64>().ok());
    let samples: [(&str, &str, &str, Option<u64>); 10] = [
        (
            "pins",
            "gauge",
            "Pins in the cluster pinset",
            // Kept with every write: never a walk of the pinset per scrape.
            cluster.consensus().state().known_count(),
        ),
        (
            "pins_pin_queued",
            "gauge",
            "Pins queued for this peer's daemon",
            Some(counts.pin_queued),
        ),
        (
            "pins_pinning",
            "gauge",
            "Pins in progress on this peer's daemon",
            Some(counts.pinning),
        ),
        (
            "pins_pin_error",
            "gauge",
            "Pins in error on this peer",
            Some(counts.pin_error),
        ),
        (
            "pins_ipfs_pins",
            "gauge",
            "Pins held by this peer's daemon",
            cluster.tracker().daemon_pin_count().await.ok(),
        ),
        (
            "pins_pin_add",
            "counter",
            "Pins completed by this peer's daemon since the start",
            Some(counts.pins_added),
        ),
        (
            "pins_pin_add_errors",
            "counter",
            "Pin attempts failed on this peer since the start",
            Some(counts.pin_add_errors),
        ),
        (
            "informer_disk",
            "gauge",
            "Free space of this peer's daemon, in bytes",
            freespace,
        ),
        (
            "peers",
            "gauge",
            "Peers in the Raft peerset",
            Some(cluster.consensus().peer_nodes().len() as u64),
        ),
        (
            "alerts",
            "gauge",
            "Alerts raised by expired metrics",
            Some(cluster.monitor().alerts().len() as u64),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in samples {
        if let Some(v) = value {
            let _ = write!(
                out,
                "# HELP ipfscluster_{name} {help}\n# TYPE ipfscluster_{name} {kind}\nipfscluster_{name} {v}\n"
            );
        }
    }
    out
}
