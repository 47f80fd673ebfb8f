//! Global status of the whole pinset, page by page: each page of pins comes with
//! every peer's compact answer about it, and is written straight into NDJSON in
//! upstream's `GlobalPinInfo` shape (or turned into those values).

use super::rpc::{PageItem, PeerStatusPage};
use crate::types::{GlobalPinInfo, Pin, TrackerStatusFilter};

/// A part of the global status, in order.
#[derive(Debug, Clone)]
pub enum StatusChunk {
    /// A page of the pinset and each peer's answer about it (sorted by peer ID).
    Page {
        /// The pins.
        pins: Vec<Pin>,
        /// Peer ID and its answer, one item per pin.
        peers: Vec<(String, PeerStatusPage)>,
    },
    /// Operations on CIDs outside the pinset (come last).
    Orphans(Vec<GlobalPinInfo>),
}

impl StatusChunk {
    fn passes(peers: &[(String, PeerStatusPage)], i: usize, filter: TrackerStatusFilter) -> bool {
        filter.is_all()
            || peers
                .iter()
                .any(|(_, p)| p.items.get(i).is_some_and(|it| filter.matches(it.0)))
    }

    /// Appends the items passing `filter` as NDJSON lines, each exactly as
    /// `serde_json` writes the [`GlobalPinInfo`] it stands for. What a peer's
    /// entries share on a page (its ID, name, daemon, the page's time) is
    /// rendered once per page, not once per pin.
    pub fn render(&self, filter: TrackerStatusFilter, out: &mut Vec<u8>) {
        use crate::listing::json;
        match self {
            StatusChunk::Page { pins, peers } => {
                // `"<peer>":{"peername":…,"ipfs_peer_id":…,"ipfs_peer_addresses":[…],"status":"`
                // and the page's time, per peer.
                let shared: Vec<(Vec<u8>, Vec<u8>)> = peers
                    .iter()
                    .map(|(id, page)| {
                        let mut head = Vec::with_capacity(256);
                        json::str(&mut head, id);
                        head.extend_from_slice(b":{\"peername\":");
                        json::str(&mut head, &page.peername);
                        head.extend_from_slice(b",\"ipfs_peer_id\":");
                        json::str(&mut head, &page.ipfs_peer_id);
                        head.extend_from_slice(b",\"ipfs_peer_addresses\":");
                        json::strs(&mut head, &page.ipfs_peer_addresses);
                        head.extend_from_slice(b",\"status\":\"");
                        let mut at = Vec::with_capacity(40);
                        json::time(&mut at, &page.at);
                        (head, at)
                    })
                    .collect();
                for (i, pin) in pins.iter().enumerate() {
                    if !Self::passes(peers, i, filter) {
                        continue;
                    }
                    let o = &pin.options;
                    out.extend_from_slice(b"{\"cid\":");
                    json::cid(out, &pin.cid);
                    out.extend_from_slice(b",\"name\":");
                    json::str(out, &o.name);
                    out.extend_from_slice(b",\"allocations\":");
                    json::strs(out, &pin.allocations);
                    out.extend_from_slice(b",\"origins\":");
                    json::strs(out, &o.origins);
                    out.extend_from_slice(b",\"created\":");
                    json::time(out, &pin.timestamp);
                    out.extend_from_slice(b",\"metadata\":");
                    if o.metadata.is_empty() {
                        out.extend_from_slice(b"null");
                    } else {
                        json::map(out, &o.metadata);
                    }
                    out.extend_from_slice(b",\"peer_map\":{");
                    let mut first = true;
                    for ((_, page), (head, at)) in peers.iter().zip(&shared) {
                        let Some(PageItem(status, attempts, ts, error)) = page.items.get(i) else {
                            continue;
                        };
                        if !first {
                            out.push(b',');
                        }
                        first = false;
                        out.extend_from_slice(head);
                        out.extend_from_slice(status.as_str().as_bytes());
                        out.extend_from_slice(b"\",\"timestamp\":");
                        match ts {
                            Some(t) => json::time(out, t),
                            None => out.extend_from_slice(at),
                        }
                        out.extend_from_slice(b",\"error\":");
                        json::str(out, error);
                        out.extend_from_slice(b",\"attempt_count\":");
                        json::uint(out, u64::from(*attempts));
                        out.extend_from_slice(b",\"priority_pin\":false}");
                    }
                    out.extend_from_slice(b"}}\n");
                }
            }
            StatusChunk::Orphans(items) => {
                for g in items {
                    if filter.is_all() || g.peer_map.values().any(|p| filter.matches(p.status)) {
                        let _ = serde_json::to_writer(&mut *out, g);
                        out.push(b'\n');
                    }
                }
            }
        }
    }

    /// The items passing `filter` as values.
    pub fn into_infos(self, filter: TrackerStatusFilter) -> Vec<GlobalPinInfo> {
        match self {
            StatusChunk::Page { pins, peers } => pins
                .iter()
                .enumerate()
                .filter(|(i, _)| Self::passes(&peers, *i, filter))
                .map(|(i, pin)| {
                    let mut g = GlobalPinInfo::new(
                        pin.cid,
                        Some((&pin.options, pin.allocations.as_slice(), pin.timestamp)),
                    );
                    for (id, page) in &peers {
                        if let Some(info) = page.info(i) {
                            g.peer_map.insert(id.clone(), info);
                        }
                    }
                    g
                })
                .collect(),
            StatusChunk::Orphans(items) => items
                .into_iter()
                .filter(|g| {
                    filter.is_all() || g.peer_map.values().any(|p| filter.matches(p.status))
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::types::{Cid, PinOptions, TrackerStatus};

    fn page(peer: &str, items: Vec<PageItem>) -> PeerStatusPage {
        PeerStatusPage {
            peername: format!("name-{peer}"),
            ipfs_peer_id: format!("ipfs-{peer}"),
            ipfs_peer_addresses: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            at: Utc::now(),
            items,
        }
    }

    /// Lines rendered straight from a chunk are what `serde_json` writes for the
    /// `GlobalPinInfo` values it stands for (upstream's shape), filter included.
    #[test]
    fn rendered_lines_equal_the_global_pin_infos() {
        let pins: Vec<Pin> = (0u8..3)
            .map(|i| {
                let mut p = Pin::new(
                    Cid::from_bytes(&[0x01, 0x55, 0x00, 0x01, i]).unwrap(),
                    PinOptions {
                        name: format!("n{i}"),
                        ..Default::default()
                    },
                );
                if i == 1 {
                    p.options.metadata.insert("k".into(), "v".into());
                    p.allocations = vec!["B".into()];
                }
                p
            })
            .collect();
        let earlier = Utc::now() - chrono::Duration::seconds(5);
        let chunk = StatusChunk::Page {
            pins,
            peers: vec![
                (
                    "A".into(),
                    page(
                        "A",
                        vec![
                            PageItem(TrackerStatus::Pinned, 0, None, String::new()),
                            PageItem(TrackerStatus::Remote, 0, None, String::new()),
                            PageItem(TrackerStatus::PinError, 3, Some(earlier), "boom".into()),
                        ],
                    ),
                ),
                (
                    "B".into(),
                    page(
                        "B",
                        vec![
                            PageItem(TrackerStatus::Pinned, 0, None, String::new()),
                            PageItem(TrackerStatus::Pinning, 1, Some(earlier), String::new()),
                            PageItem(TrackerStatus::ClusterError, 0, None, "down".into()),
                        ],
                    ),
                ),
            ],
        };
        for filter in ["", "pinning", "error", "pinned"] {
            let filter: TrackerStatusFilter = filter.parse().unwrap();
            let mut rendered = Vec::new();
            chunk.render(filter, &mut rendered);
            let mut want = Vec::new();
            for g in chunk.clone().into_infos(filter) {
                want.extend_from_slice(&serde_json::to_vec(&g).unwrap());
                want.push(b'\n');
            }
            assert_eq!(
                String::from_utf8(rendered).unwrap(),
                String::from_utf8(want).unwrap()
            );
        }
        assert_eq!(
            chunk.clone().into_infos("pinning".parse().unwrap()).len(),
            1
        );
        assert_eq!(chunk.into_infos("error".parse().unwrap()).len(), 1);
    }
}
