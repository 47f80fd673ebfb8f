//! `ipfs-cluster-ctl`'s output formats (upstream's text forms) and its `--wait` logic.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::restapi::client::{Client, ClientError};
use crate::types::{
    Alert, Cid, ClusterId, ConnectGraph, GlobalPinInfo, GlobalRepoGc, Metric, Pin, PinMode,
    TrackerStatus,
};

/// Upstream's text form of an ID.
pub fn format_id(id: &ClusterId) -> String {
    if !id.error.is_empty() {
        return format!("{} | ERROR: {}\n", id.id, id.error);
    }
    let others = id.cluster_peers.iter().filter(|p| **p != id.id).count();
    let mut s = format!(
        "{} | {} | Sees {} other peers\n",
        id.id, id.peername, others
    );
    s.push_str("  > Addresses:\n");
    for a in &id.addresses {
        s.push_str(&format!("    - {a}\n"));
    }
    if id.ipfs.error.is_empty() {
        s.push_str(&format!("  > IPFS: {}\n", id.ipfs.id));
        for a in &id.ipfs.addresses {
            s.push_str(&format!("    - {a}\n"));
        }
    } else {
        s.push_str(&format!("  > IPFS ERROR: {}\n", id.ipfs.error));
    }
    s
}

/// Bytes as Go's `humanize.Bytes` prints them (SI units).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let e = e.min(UNITS.len() - 1);
    let v = n as f64 / 1000f64.powi(e as i32);
    if v < 10.0 {
        format!("{v:.1} {}", UNITS[e])
    } else {
        format!("{v:.0} {}", UNITS[e])
    }
}

/// Upstream's text form of a metric (`health metrics`).
pub fn format_metric(m: &Metric) -> String {
    let value = match m.name.as_str() {
        "freespace" | "reposize" => m
            .value
            .parse::<u64>()
            .map(human_bytes)
            .unwrap_or_else(|_| m.value.clone()),
        _ => m.value.clone(),
    };
    format!(
        "{} | {}: {} | Expires in: {} seconds from now\n",
        m.peer,
        m.name,
        value,
        m.expires_in_secs()
    )
}

/// Upstream's text form of an alert (`health alerts`).
pub fn format_alert(a: &Alert) -> String {
    format!(
        "{} | {} expired at {}\n",
        a.metric.peer,
        a.metric.name,
        a.triggered_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// Upstream's text form of a pin (`pin ls`).
pub fn format_pin(p: &Pin) -> String {
    let mut t = "PIN".to_string();
    if p.mode() == PinMode::Direct {
        t.push_str("-DIRECT");
    }
    let repl = if p.options.replication_factor_min == -1 && p.allocations.is_empty() {
        "Repl. Factor: -1 | Allocations: [everywhere]".to_string()
    } else {
        let mut a = p.allocations.clone();
        a.sort();
        format!(
            "Repl. Factor: {}--{} | Allocations: [{}]",
            p.options.replication_factor_min,
            p.options.replication_factor_max,
            a.join(" ")
        )
    };
    let rec = match p.max_depth {
        0 => "Direct".to_string(),
        -1 => "Recursive".to_string(),
        n => format!("Recursive-{n}"),
    };
    let meta = if p.options.metadata.is_empty() {
        "no"
    } else {
        "yes"
    };
    let exp = p
        .options
        .expire_at
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "∞".into());
    format!(
        "{} | {} | {} | {} | {} | Metadata: {} | Exp: {} | Added: {}\n",
        p.cid,
        p.options.name,
        t,
        repl,
        rec,
        meta,
        exp,
        p.timestamp.format("%Y-%m-%d %H:%M:%S")
    )
}

/// Upstream's text form of `ipfs gc`: each peer (by name when it has one), then
/// the CIDs it removed and the errors it met.
pub fn format_repo_gc(g: &GlobalRepoGc) -> String {
    let mut s = String::new();
    for (peer, gc) in &g.peer_map {
        let who = if gc.peername.is_empty() {
            peer
        } else {
            &gc.peername
        };
        if gc.error.is_empty() {
            s.push_str(&format!("{who:<15}\n"));
        } else {
            s.push_str(&format!("{who:<15} | ERROR: {}\n", gc.error));
        }
        s.push_str("  > CIDs:\n");
        for k in &gc.keys {
            if k.error.is_empty() {
                s.push_str(&format!("    - {}\n", k.key));
            } else {
                s.push_str(&format!("    - ERROR: {}\n", k.error));
            }
        }
    }
    s
}

/// The connectivity graph in Graphviz's DOT language (`health graph`): cluster
/// peers `C<n>`, their daemons `I<n>`, and the links each peer reported. Daemons
/// outside the cluster appear only with `all_ipfs_peers`.
pub fn format_graph(g: &ConnectGraph, all_ipfs_peers: bool) -> String {
    fn short(id: &str) -> &str {
        &id[id.len().saturating_sub(8)..]
    }
    let mut names: BTreeMap<&str, String> = BTreeMap::new();
    let mut s = String::from("digraph cluster {\n/* The cluster peers */\n");
    for (i, (id, name)) in g.id_to_peername.iter().enumerate() {
        let label = if name.is_empty() { short(id) } else { name };
        s.push_str(&format!(
            "C{i} [label=< <B> {label} </B> <BR/> <I> {} </I> > group=\"C{i}\" color=\"orange\" \
             style=\"filled\" shape=\"box\"]\n",
            short(id)
        ));
        names.insert(id, format!("C{i}"));
    }
    s.push_str("/* The IPFS daemons */\n");
    let mut ipfs: Vec<&str> = g.cluster_to_ipfs.values().map(String::as_str).collect();
    if all_ipfs_peers {
        for links in g.ipfs_links.values() {
            ipfs.extend(links.iter().map(String::as_str));
        }
    }
    ipfs.sort();
    ipfs.dedup();
    for (i, id) in ipfs.iter().enumerate() {
        let group = g
            .cluster_to_ipfs
            .iter()
            .find(|(_, d)| d.as_str() == *id)
            .and_then(|(c, _)| names.get(c.as_str()))
            .cloned()
            .unwrap_or_else(|| format!("I{i}"));
        s.push_str(&format!(
            "I{i} [label=< <B> IPFS </B> <BR/> <I> {} </I> > group=\"{group}\" \
             color=\"turquoise3\" style=\"filled\" shape=\"cylinder\"]\n",
            short(id)
        ));
        names.insert(id, format!("I{i}"));
    }
    let edge = |s: &mut String, from: &str, to: &str| {
        if let (Some(a), Some(b)) = (names.get(from), names.get(to)) {
            s.push_str(&format!("{a} -> {b}\n"));
        }
    };
    s.push_str("/* Connections among cluster peers */\n");
    for (from, tos) in &g.cluster_links {
        for to in tos {
            edge(&mut s, from, to);
        }
    }
    s.push_str("/* Cluster peers and their daemons */\n");
    for (c, d) in &g.cluster_to_ipfs {
        edge(&mut s, c, d);
    }
    s.push_str("/* Connections among IPFS daemons */\n");
    for (from, tos) in &g.ipfs_links {
        for to in tos {
            edge(&mut s, from, to);
        }
    }
    s.push_str("}\n");
    s
}

/// Upstream's text form of a global status (`status`).
pub fn format_status(g: &GlobalPinInfo) -> String {
    let mut s = g.cid.to_string();
    if !g.name.is_empty() {
        s.push_str(&format!(" | {}", g.name));
    }
    s.push_str(":\n");
    for (peer, info) in &g.peer_map {
        let who = if info.peername.is_empty() {
            peer
        } else {
            &info.peername
        };
        s.push_str(&format!(
            "    > {:<20} : {}",
            who,
            info.status.as_str().to_uppercase()
        ));
        if !info.error.is_empty() {
            s.push_str(&format!(": {}", info.error));
        }
        s.push_str(&format!(
            " | {} | Attempts: {} | Priority: {}\n",
            info.timestamp
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            info.attempt_count,
            info.priority_pin
        ));
    }
    s
}

/// What `--wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitTarget {
    /// Pinned (or remote) on enough peers.
    Pinned,
    /// Unpinned everywhere.
    Unpinned,
}

/// Polls the status of `cid` until `target` holds on `limit` peers (0: all peers
/// in the status), an error status shows up, or `timeout` (zero: none) passes.
pub async fn wait_for(
    client: &Client,
    cid: &Cid,
    target: WaitTarget,
    limit: usize,
    timeout: Duration,
) -> Result<GlobalPinInfo, String> {
    let deadline = (!timeout.is_zero()).then(|| tokio::time::Instant::now() + timeout);
    loop {
        let g = client
            .status(cid)
            .await
            .map_err(|e: ClientError| e.to_string())?;
        let mut done = 0;
        for (peer, info) in &g.peer_map {
            if info.status.is_error() {
                return Err(format!(
                    "{peer}: {}: {}",
                    info.status.as_str().to_uppercase(),
                    info.error
                ));
            }
            let ok = match target {
                // Waiting for a number of replicas counts the peers that pinned;
                // waiting for all counts `remote` as done, as upstream.
                WaitTarget::Pinned if limit > 0 => info.status == TrackerStatus::Pinned,
                WaitTarget::Pinned => {
                    matches!(info.status, TrackerStatus::Pinned | TrackerStatus::Remote)
                }
                WaitTarget::Unpinned => info.status == TrackerStatus::Unpinned,
            };
            done += usize::from(ok);
        }
        let needed = if limit == 0 { g.peer_map.len() } else { limit };
        if done >= needed && !g.peer_map.is_empty() {
            return Ok(g);
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Err(format!("timed out waiting for {cid}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphs_name_peers_and_daemons_and_draw_their_links() {
        let mut g = ConnectGraph {
            cluster_id: "peerAAAAAAAA".into(),
            ..Default::default()
        };
        for (c, name, d) in [
            ("peerAAAAAAAA", "a", "ipfsAAAAAAAA"),
            ("peerBBBBBBBB", "", "ipfsBBBBBBBB"),
        ] {
            g.id_to_peername.insert(c.into(), name.into());
            g.cluster_to_ipfs.insert(c.into(), d.into());
        }
        g.cluster_links
            .insert("peerAAAAAAAA".into(), vec!["peerBBBBBBBB".into()]);
        g.ipfs_links.insert(
            "ipfsAAAAAAAA".into(),
            vec!["ipfsBBBBBBBB".into(), "ipfsOUTSIDE1".into()],
        );
        let dot = format_graph(&g, false);
        assert!(
            dot.starts_with("digraph cluster {\n") && dot.ends_with("}\n"),
            "{dot}"
        );
        assert!(dot.contains("C0 [label=< <B> a </B>"), "{dot}");
        // A peer without a name is labelled by its ID's end.
        assert!(dot.contains("C1 [label=< <B> BBBBBBBB </B>"), "{dot}");
        for edge in ["C0 -> C1", "C0 -> I0", "C1 -> I1", "I0 -> I1"] {
            assert!(dot.contains(&format!("{edge}\n")), "{edge}: {dot}");
        }
        assert!(!dot.contains("OUTSIDE"), "{dot}");
        assert!(format_graph(&g, true).contains("I0 -> I2"));
    }
}
