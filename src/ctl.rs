//! `ipfs-cluster-ctl`'s output formats (upstream's text forms) and its `--wait` logic.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::restapi::client::{AddedOutput, Client, ClientError};
use crate::types::{
    Alert, BandwidthByProtocol, Cid, ClusterId, ConnectGraph, GlobalPinInfo, GlobalRepoGc, Metric,
    Pin, PinMode, PinType, TrackerStatus,
};

/// Upstream's text form of an ID (addresses sorted, as its formatter does).
pub fn format_id(id: &ClusterId) -> String {
    if !id.error.is_empty() {
        return format!("{} | ERROR: {}\n", id.id, id.error);
    }
    // Upstream counts every listed peer but itself: an empty list shows -1.
    let others = id.cluster_peers.len() as i64 - 1;
    let mut s = format!(
        "{} | {} | Sees {} other peers\n",
        id.id, id.peername, others
    );
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    s.push_str("  > Addresses:\n");
    for a in sorted(&id.addresses) {
        s.push_str(&format!("    - {a}\n"));
    }
    if !id.ipfs.error.is_empty() {
        s.push_str(&format!("  > IPFS ERROR: {}\n", id.ipfs.error));
        return s;
    }
    s.push_str(&format!("  > IPFS: {}\n", id.ipfs.id));
    for a in sorted(&id.ipfs.addresses) {
        s.push_str(&format!("    - {a}\n"));
    }
    s
}

/// Bytes as Go's `humanize.Bytes` prints them (SI units, rounded to one decimal
/// before choosing how many to show).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let e = e.min(UNITS.len() - 1);
    let v = (n as f64 / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if v < 10.0 {
        format!("{v:.1} {}", UNITS[e])
    } else {
        format!("{v:.0} {}", UNITS[e])
    }
}

/// How far `then` is from `now` in words, as Go's `humanize.Time`
/// (`25 seconds from now`, `3 minutes ago`, `now`).
pub fn relative_time(
    then: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    const SEC: i64 = 1_000_000_000;
    const MIN: i64 = 60 * SEC;
    const HOUR: i64 = 60 * MIN;
    const DAY: i64 = 24 * HOUR;
    const WEEK: i64 = 7 * DAY;
    const MONTH: i64 = 30 * DAY;
    const YEAR: i64 = 12 * MONTH;
    const LONG: i64 = 37 * YEAR;
    // go-humanize's defaultMagnitudes: (below this, format, divisor); a divisor of
    // 0 marks formats without a number.
    const MAGNITUDES: [(i64, &str, i64); 16] = [
        (SEC, "now", 0),
        (2 * SEC, "1 second", 0),
        (MIN, "seconds", SEC),
        (2 * MIN, "1 minute", 0),
        (HOUR, "minutes", MIN),
        (2 * HOUR, "1 hour", 0),
        (DAY, "hours", HOUR),
        (2 * DAY, "1 day", 0),
        (WEEK, "days", DAY),
        (2 * WEEK, "1 week", 0),
        (MONTH, "weeks", WEEK),
        (2 * MONTH, "1 month", 0),
        (YEAR, "months", MONTH),
        (18 * MONTH, "1 year", 0),
        (2 * YEAR, "2 years", 0),
        (LONG, "years", YEAR),
    ];
    let diff = (now - then).num_nanoseconds().unwrap_or(i64::MAX);
    let (label, diff) = if then > now {
        ("from now", diff.saturating_neg())
    } else {
        ("ago", diff)
    };
    match MAGNITUDES.iter().find(|(below, _, _)| *below > diff) {
        Some((_, "now", _)) => "now".to_string(),
        Some((_, unit, 0)) => format!("{unit} {label}"),
        Some((_, unit, div)) => format!("{} {unit} {label}", diff / div),
        None => format!("a long while {label}"),
    }
}

fn from_nanos(ns: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_nanos(ns)
}

/// Upstream's text form of a metric (`health metrics`): free space from its
/// weight, in SI bytes.
pub fn format_metric(m: &Metric, now: chrono::DateTime<chrono::Utc>) -> String {
    let value = if m.name == "freespace" && m.weight > 0 {
        human_bytes(m.weight as u64)
    } else {
        m.value.clone()
    };
    format!(
        "{} | {}: {} | Expires in: {}\n",
        m.peer,
        m.name,
        value,
        relative_time(from_nanos(m.expire), now)
    )
}

/// Upstream's text form of an alert (`health alerts`).
pub fn format_alert(a: &Alert, now: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "{}: {}. Expired at: {}. Triggered at: {}\n",
        a.metric.peer,
        a.metric.name,
        relative_time(from_nanos(a.metric.expire), now),
        relative_time(a.triggered_at, now)
    )
}

/// Upstream's text form of `health bandwidth`: one line per protocol, by name.
pub fn format_bandwidth(b: &BandwidthByProtocol) -> String {
    b.iter()
        .map(|(proto, st)| {
            format!(
                "{proto:>25}: In: {:>7}. Out: {:>7}. RateIn: {:.2}B/s. RateOut: {:.2}B/s\n",
                human_bytes(st.total_in.max(0) as u64),
                human_bytes(st.total_out.max(0) as u64),
                st.rate_in,
                st.rate_out
            )
        })
        .collect()
}

/// Upstream's text form of an added file (`add`), or its CID alone when quiet.
pub fn format_added(o: &AddedOutput, quiet: bool) -> String {
    let cid = o.cid.map(|c| c.to_string()).unwrap_or_default();
    if quiet {
        format!("{cid}\n")
    } else {
        format!("added {cid} {}\n", o.name)
    }
}

/// Upstream's block for an error answer (or, with code 0, an unreachable API).
pub fn format_error(code: u16, message: &str) -> String {
    format!("An error occurred:\n  Code: {code}\n  Message: {message}\n")
}

/// JSON as upstream's ctl prints it: Go's `json.MarshalIndent(v, "", "    ")`,
/// which also escapes `<`, `>`, `&` and the line and paragraph separators.
pub fn to_go_json<T: serde::Serialize + ?Sized>(v: &T) -> Result<String, serde_json::Error> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    v.serialize(&mut ser)?;
    let text = String::from_utf8_lossy(&out);
    // These characters only occur inside JSON strings, so replacing them
    // everywhere is the same as escaping them in strings.
    let mut s = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '<' => s.push_str("\\u003c"),
            '>' => s.push_str("\\u003e"),
            '&' => s.push_str("\\u0026"),
            '\u{2028}' => s.push_str("\\u2028"),
            '\u{2029}' => s.push_str("\\u2029"),
            c => s.push(c),
        }
    }
    Ok(s)
}

/// Upstream's text form of a pin (`pin ls`).
pub fn format_pin(p: &Pin) -> String {
    let mut t = match p.pin_type {
        PinType::Data => "PIN",
        PinType::Meta => "META-PIN",
        PinType::ClusterDag => "CLUSTERDAG-PIN",
        PinType::Shard => "SHARD-PIN",
    }
    .to_string();
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
    // Go's zero time is the year 1.
    let added = if p.timestamp.timestamp() <= -62_135_596_800 {
        "unknown".to_string()
    } else {
        p.timestamp.format("%Y-%m-%d %H:%M:%S").to_string()
    };
    format!(
        "{} | {} | {} | {} | {} | Metadata: {} | Exp: {} | Added: {}\n",
        p.cid, p.options.name, t, repl, rec, meta, exp, added
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
            go_rfc3339_nano(info.timestamp),
            info.attempt_count,
            info.priority_pin
        ));
    }
    s
}

/// A time as Go's `MarshalText` writes it (RFC 3339 with the fraction's trailing
/// zeros dropped).
pub fn go_rfc3339_nano(t: chrono::DateTime<chrono::Utc>) -> String {
    let frac = t.timestamp_subsec_nanos();
    let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    if frac > 0 {
        let digits = format!("{frac:09}");
        s.push('.');
        s.push_str(digits.trim_end_matches('0'));
    }
    s.push('Z');
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

    use chrono::{TimeZone, Utc};

    fn at(secs: i64, nanos: u32) -> chrono::DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, nanos).unwrap()
    }

    fn metric(name: &str, value: &str, weight: i64, expire: chrono::DateTime<Utc>) -> Metric {
        Metric {
            name: name.into(),
            peer: "12D3KooWPeer".into(),
            value: value.into(),
            expire: expire.timestamp_nanos_opt().unwrap(),
            valid: true,
            weight,
            partitionable: false,
            received_at: 0,
        }
    }

    #[test]
    fn bytes_read_as_go_humanize_prints_them() {
        for (n, want) in [
            (5, "5 B"),
            (999, "999 B"),
            (1_500, "1.5 kB"),
            // Rounded to one decimal first: 9.96 kB is "10 kB", not "10.0 kB".
            (9_960, "10 kB"),
            (12_000_000_000, "12 GB"),
            // A tie after that rounding goes to the even digit, as Go's %.0f.
            (123_456_789, "124 MB"),
        ] {
            assert_eq!(human_bytes(n), want, "{n}");
        }
    }

    #[test]
    fn relative_times_read_as_go_humanize_prints_them() {
        let now = at(0, 0);
        for (then, want) in [
            (at(0, 400_000_000), "now"),
            (at(-1, 500_000_000), "now"),
            (at(1, 500_000_000), "1 second from now"),
            (at(25, 300_000_000), "25 seconds from now"),
            (at(-90, 0), "1 minute ago"),
            (at(-180, 0), "3 minutes ago"),
            (at(-36 * 3600, 0), "1 day ago"),
            (at(-3 * 86400, 0), "3 days ago"),
            (at(20 * 86400, 0), "2 weeks from now"),
            (at(-400 * 86400, 0), "1 year ago"),
            (at(-50 * 365 * 86400, 0), "a long while ago"),
        ] {
            assert_eq!(relative_time(then, now), want, "{then}");
        }
    }

    /// Expected lines as upstream's formatters.go prints them.
    #[test]
    fn metrics_alerts_bandwidth_and_errors_in_upstreams_words() {
        let now = at(0, 0);
        let free = metric(
            "freespace",
            "12000000000",
            12_000_000_000,
            at(25, 400_000_000),
        );
        assert_eq!(
            format_metric(&free, now),
            "12D3KooWPeer | freespace: 12 GB | Expires in: 25 seconds from now\n"
        );
        let ping = metric("ping", "", 0, at(29, 0));
        assert_eq!(
            format_metric(&ping, now),
            "12D3KooWPeer | ping:  | Expires in: 29 seconds from now\n"
        );
        let alert = Alert {
            metric: metric("ping", "", 0, at(-180, 0)),
            triggered_at: at(-150, 0),
        };
        assert_eq!(
            format_alert(&alert, now),
            "12D3KooWPeer: ping. Expired at: 3 minutes ago. Triggered at: 2 minutes ago\n"
        );
        let mut bw = BandwidthByProtocol::new();
        bw.insert(
            "/ipfs-cluster-rs/rpc/1.0.0".into(),
            crate::types::BandwidthStats {
                total_in: 1_500,
                total_out: 20,
                rate_in: 1.234,
                rate_out: 0.0,
            },
        );
        bw.insert("/p/1.0.0".into(), Default::default());
        assert_eq!(
            format_bandwidth(&bw),
            format!(
                "/ipfs-cluster-rs/rpc/1.0.0: In:  1.5 kB. Out:    20 B. RateIn: 1.23B/s. RateOut: 0.00B/s\n\
                 {}/p/1.0.0: In:     0 B. Out:     0 B. RateIn: 0.00B/s. RateOut: 0.00B/s\n",
                " ".repeat(17)
            )
        );
        assert_eq!(
            format_error(404, "pin not found"),
            "An error occurred:\n  Code: 404\n  Message: pin not found\n"
        );
        let added = AddedOutput {
            name: "a.txt".into(),
            cid: Some(
                "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"
                    .parse()
                    .unwrap(),
            ),
            ..Default::default()
        };
        assert_eq!(
            format_added(&added, false),
            "added QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG a.txt\n"
        );
        assert_eq!(
            format_added(&added, true),
            "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG\n"
        );
    }

    #[test]
    fn json_is_indented_and_escaped_as_gos_marshal_indent() {
        let v = serde_json::json!({"code": 404, "list": [1, 2], "empty": [], "m": "<a&b>"});
        assert_eq!(
            to_go_json(&v).unwrap(),
            "{\n    \"code\": 404,\n    \"empty\": [],\n    \"list\": [\n        1,\n        2\n    ],\n    \
             \"m\": \"\\u003ca\\u0026b\\u003e\"\n}"
        );
    }

    #[test]
    fn times_read_as_gos_marshal_text() {
        assert_eq!(go_rfc3339_nano(at(0, 0)), "2023-11-14T22:13:20Z");
        assert_eq!(
            go_rfc3339_nano(at(0, 123_400_000)),
            "2023-11-14T22:13:20.1234Z"
        );
    }

    #[test]
    fn ids_list_sorted_addresses_and_count_other_peers_as_upstream() {
        let mut id = ClusterId {
            id: "12D3KooWA".into(),
            peername: "a".into(),
            addresses: vec![
                "/ip4/2.2.2.2/tcp/9096".into(),
                "/ip4/1.1.1.1/tcp/9096".into(),
            ],
            cluster_peers: vec!["12D3KooWA".into(), "12D3KooWB".into()],
            ..Default::default()
        };
        id.ipfs.id = "12D3KooWI".into();
        assert_eq!(
            format_id(&id),
            "12D3KooWA | a | Sees 1 other peers\n  > Addresses:\n    - /ip4/1.1.1.1/tcp/9096\n    \
             - /ip4/2.2.2.2/tcp/9096\n  > IPFS: 12D3KooWI\n"
        );
    }

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
