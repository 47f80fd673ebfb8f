//! The balanced allocator: decides which peers hold a pin, within its replication
//! factors. Pure code over the metrics it is given; upstream's rules:
//! healthy current allocations are kept while there are at least `min` of them;
//! below `min`, new peers are added towards `max`; above `max`, the worst are trimmed.

use std::collections::BTreeMap;

use crate::types::Metric;

/// Peer → metric name → its latest usable metric.
pub type PeerMetrics = BTreeMap<String, BTreeMap<String, Metric>>;

/// Why no allocation could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not enough peers to allocate CID. Needed at least: {needed}. Wanted at most: {wanted}. \
     Available candidates: {available}. See logs for more info."
)]
pub struct AllocationError {
    /// Peers still needed to reach the minimum.
    pub needed: usize,
    /// Peers wanted to reach the maximum.
    pub wanted: usize,
    /// Peers that could take it.
    pub available: usize,
}

/// What an allocation starts from.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The pin's current allocations (may name peers that are gone).
    pub current: &'a [String],
    /// Peers the user asked for, in order of preference.
    pub priority: &'a [String],
    /// Minimum replication (> 0).
    pub min: usize,
    /// Maximum replication (>= min).
    pub max: usize,
    /// Metric names ordering the candidates, partitionable ones first.
    pub allocate_by: &'a [String],
    /// Usable metrics of the peers that may hold the pin.
    pub metrics: &'a PeerMetrics,
}

/// The allocations for a pin.
pub fn allocate(req: &Request<'_>) -> Result<Vec<String>, AllocationError> {
    let eligible = |p: &String| {
        req.metrics
            .get(p)
            .is_some_and(|m| req.allocate_by.iter().all(|name| m.contains_key(name)))
    };
    let current: Vec<String> = req
        .current
        .iter()
        .filter(|p| eligible(p))
        .cloned()
        .collect();
    if current.len() >= req.min {
        // Enough healthy replicas: nothing moves, and a peer that is only down for
        // a while keeps its allocation.
        if req.current.len() <= req.max {
            return Ok(req.current.to_vec());
        }
        let mut kept = order(current, req.allocate_by, req.metrics, &[]);
        kept.truncate(req.max);
        return Ok(kept);
    }
    let needed = req.min - current.len();
    let wanted = req.max - current.len();
    let rest: Vec<String> = req
        .metrics
        .keys()
        .filter(|p| eligible(p) && !current.contains(p))
        .cloned()
        .collect();
    let mut candidates: Vec<String> = req
        .priority
        .iter()
        .filter(|p| rest.contains(p))
        .cloned()
        .collect();
    let others: Vec<String> = rest
        .into_iter()
        .filter(|p| !candidates.contains(p))
        .collect();
    candidates.extend(order(others, req.allocate_by, req.metrics, &current));
    if candidates.len() < needed {
        return Err(AllocationError {
            needed,
            wanted,
            available: candidates.len(),
        });
    }
    candidates.truncate(wanted);
    let mut out = current;
    out.extend(candidates);
    Ok(out)
}

fn weight(metrics: &PeerMetrics, peer: &str, name: &str) -> i64 {
    metrics
        .get(peer)
        .and_then(|m| m.get(name))
        .map_or(i64::MIN, |m| m.weight)
}

/// Orders `peers` best first. A partitionable metric groups peers by value and
/// takes them round-robin from the groups holding the fewest `already` chosen
/// peers; other metrics order by weight, highest first.
fn order(
    peers: Vec<String>,
    by: &[String],
    metrics: &PeerMetrics,
    already: &[String],
) -> Vec<String> {
    let Some((name, rest)) = by.split_first() else {
        let mut p = peers;
        p.sort();
        return p;
    };
    let value = |p: &str| metrics.get(p).and_then(|m| m.get(name));
    let partitionable = peers
        .iter()
        .any(|p| value(p).is_some_and(|m| m.partitionable));
    if !partitionable {
        let mut p = order(peers, rest, metrics, already);
        // Stable: ties keep the order the remaining metrics gave.
        p.sort_by_key(|peer| std::cmp::Reverse(weight(metrics, peer, name)));
        return p;
    }
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in peers {
        let v = value(&p).map(|m| m.value.clone()).unwrap_or_default();
        groups.entry(v).or_default().push(p);
    }
    let mut taken: BTreeMap<String, usize> = BTreeMap::new();
    for a in already {
        if let Some(m) = value(a) {
            *taken.entry(m.value.clone()).or_default() += 1;
        }
    }
    let last = by.last().map(String::as_str).unwrap_or_default();
    let mut queues: Vec<(String, std::collections::VecDeque<String>)> = groups
        .into_iter()
        .map(|(v, members)| (v, order(members, rest, metrics, already).into()))
        .collect();
    let mut out = Vec::new();
    while let Some(i) = queues
        .iter()
        .enumerate()
        .filter(|(_, (_, q))| !q.is_empty())
        .min_by_key(|(_, (v, q))| {
            let head = q.front().map_or(i64::MIN, |p| weight(metrics, p, last));
            (
                taken.get(v).copied().unwrap_or(0),
                std::cmp::Reverse(head),
                v.clone(),
            )
        })
        .map(|(i, _)| i)
    {
        let (v, q) = &mut queues[i];
        if let Some(p) = q.pop_front() {
            *taken.entry(v.clone()).or_default() += 1;
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn metrics(peers: &[(&str, &str, i64)]) -> PeerMetrics {
        let mut m = PeerMetrics::new();
        for (peer, group, free) in peers {
            let mut tag = Metric::new(
                "tag:group",
                peer,
                group.to_string(),
                0,
                Duration::from_secs(60),
            );
            tag.partitionable = true;
            let fs = Metric::new(
                "freespace",
                peer,
                free.to_string(),
                *free,
                Duration::from_secs(60),
            );
            m.insert(
                peer.to_string(),
                BTreeMap::from([
                    ("tag:group".to_string(), tag),
                    ("freespace".to_string(), fs),
                ]),
            );
        }
        m
    }

    fn by() -> Vec<String> {
        vec!["tag:group".into(), "freespace".into()]
    }

    fn alloc(
        current: &[&str],
        min: usize,
        max: usize,
        m: &PeerMetrics,
    ) -> Result<Vec<String>, AllocationError> {
        let current: Vec<String> = current.iter().map(|s| s.to_string()).collect();
        allocate(&Request {
            current: &current,
            priority: &[],
            min,
            max,
            allocate_by: &by(),
            metrics: m,
        })
    }

    #[test]
    fn allocates_max_when_possible_by_free_space() {
        let m = metrics(&[
            ("a", "g", 10),
            ("b", "g", 50),
            ("c", "g", 30),
            ("d", "g", 40),
            ("e", "g", 20),
        ]);
        assert_eq!(alloc(&[], 2, 3, &m).unwrap(), vec!["b", "d", "c"]);
    }

    #[test]
    fn trims_over_allocation() {
        let m = metrics(&[
            ("a", "g", 10),
            ("b", "g", 50),
            ("c", "g", 30),
            ("d", "g", 40),
        ]);
        assert_eq!(
            alloc(&["a", "b", "c", "d"], 1, 2, &m).unwrap(),
            vec!["b", "d"]
        );
    }

    #[test]
    fn allocates_between_min_and_max_when_peers_are_down() {
        let m = metrics(&[("a", "g", 10), ("b", "g", 50), ("c", "g", 30)]);
        assert_eq!(alloc(&[], 2, 4, &m).unwrap().len(), 3);
    }

    #[test]
    fn errors_with_upstreams_message_when_below_min() {
        let m = metrics(&[("a", "g", 10)]);
        let e = alloc(&[], 2, 3, &m).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not enough peers to allocate CID. Needed at least: 2. Wanted at most: 3. \
             Available candidates: 1. See logs for more info."
        );
    }

    #[test]
    fn keeps_allocations_while_at_least_min_are_healthy() {
        // c is down (no metrics): 2 healthy of min 2 → nothing moves, c keeps its place.
        let m = metrics(&[("a", "g", 10), ("b", "g", 50), ("d", "g", 99)]);
        assert_eq!(
            alloc(&["a", "b", "c"], 2, 3, &m).unwrap(),
            vec!["a", "b", "c"]
        );
    }

    #[test]
    fn reallocates_below_min() {
        let m = metrics(&[("a", "g", 10), ("d", "g", 99), ("e", "g", 5)]);
        assert_eq!(alloc(&["a", "b"], 2, 2, &m).unwrap(), vec!["a", "d"]);
    }

    #[test]
    fn spreads_replicas_across_tag_groups() {
        let m = metrics(&[
            ("a1", "a", 100),
            ("a2", "a", 90),
            ("b1", "b", 10),
            ("b2", "b", 20),
        ]);
        let got = alloc(&[], 2, 2, &m).unwrap();
        assert_eq!(got, vec!["a1", "b2"]);
        // Re-allocating one replica of a pin already in group a goes to group b.
        let got = alloc(&["a1"], 2, 2, &m).unwrap();
        assert_eq!(got, vec!["a1", "b2"]);
    }

    #[test]
    fn priority_peers_come_first_and_missing_metrics_exclude() {
        let mut m = metrics(&[("a", "g", 10), ("b", "g", 50), ("c", "g", 30)]);
        if let Some(x) = m.get_mut("b") {
            x.remove("freespace");
        }
        let prio = vec!["a".to_string()];
        let got = allocate(&Request {
            current: &[],
            priority: &prio,
            min: 1,
            max: 3,
            allocate_by: &by(),
            metrics: &m,
        })
        .unwrap();
        assert_eq!(got, vec!["a", "c"]);
    }
}
