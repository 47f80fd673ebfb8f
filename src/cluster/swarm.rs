//! Upstream's `ConnectSwarms`: this peer's IPFS daemon is connected to the daemons
//! of the other cluster peers, so that a pin allocated here finds content added
//! elsewhere even when the daemons do not find each other by other means
//! (private IPFS networks, no DHT, test setups).

use std::collections::HashSet;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Cluster;
use crate::types::ClusterId;

/// Connects the daemon to the daemons of `peers` (their `ID`s, as the ID RPC
/// gives them: `ipfs.addresses`). Best effort, as upstream: failures are logged
/// at debug level. Returns how many addresses the daemon connected to.
pub async fn connect_swarms(cluster: &Cluster, peers: &[ClusterId]) -> usize {
    let own = cluster.ipfs_id().await.id;
    let mut connected = 0;
    for peer in peers {
        let ipfs = &peer.ipfs;
        if !peer.error.is_empty() || !ipfs.error.is_empty() || ipfs.id.is_empty() || ipfs.id == own
        {
            continue;
        }
        for addr in &ipfs.addresses {
            // kubo lists its addresses with `/p2p/<id>`; swarm/connect needs it.
            let addr = if addr.contains("/p2p/") || addr.contains("/ipfs/") {
                addr.clone()
            } else {
                format!("{addr}/p2p/{}", ipfs.id)
            };
            match cluster.ipfs().swarm_connect(&addr).await {
                Ok(()) => {
                    tracing::debug!(%addr, "the IPFS daemon connected to a cluster peer's daemon");
                    connected += 1;
                }
                Err(e) => tracing::debug!(%addr, "swarm connect: {e}"),
            }
        }
    }
    connected
}

/// After `delay` (0: never, as upstream), connects the daemon to the other
/// peers' daemons; then, every `watch`, to those of peers that joined since or
/// did not answer before.
pub fn spawn(
    tasks: &TaskTracker,
    cluster: Cluster,
    delay: Duration,
    watch: Duration,
    cancel: CancellationToken,
) {
    if delay.is_zero() {
        return;
    }
    let watch = watch.max(Duration::from_millis(100));
    tasks.spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return,
        }
        let mut done: HashSet<String> = HashSet::new();
        done.insert(cluster.peer_id().to_string());
        loop {
            let members = cluster.consensus().peers();
            if members.iter().any(|p| !done.contains(p)) {
                let ids: Vec<ClusterId> = tokio::select! {
                    ids = cluster.peers() => ids,
                    _ = cancel.cancelled() => return,
                };
                let new: Vec<ClusterId> = ids
                    .into_iter()
                    .filter(|id| !done.contains(&id.id))
                    .collect();
                let n = tokio::select! {
                    n = connect_swarms(&cluster, &new) => n,
                    _ = cancel.cancelled() => return,
                };
                // A peer or daemon that did not answer is tried again next time.
                for id in &new {
                    if id.error.is_empty() && id.ipfs.error.is_empty() && !id.ipfs.id.is_empty() {
                        done.insert(id.id.clone());
                    }
                }
                if n > 0 {
                    tracing::info!(
                        "connected the IPFS daemon to {n} addresses of other peers' daemons"
                    );
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(watch) => {}
                _ = cancel.cancelled() => return,
            }
        }
    });
}
