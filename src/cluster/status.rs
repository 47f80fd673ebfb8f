//! Global status of the whole pinset, page by page: each page of pins comes with
//! every peer's compact answer about it, and is written straight into NDJSON in
//! upstream's `GlobalPinInfo` shape (or turned into those values).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use super::rpc::PeerStatusPage;
use crate::types::{Cid, GlobalPinInfo, Pin, TrackerStatus, TrackerStatusFilter};

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

#[derive(Serialize)]
struct InfoRef<'a> {
    peername: &'a str,
    ipfs_peer_id: &'a str,
    ipfs_peer_addresses: &'a [String],
    status: TrackerStatus,
    timestamp: &'a DateTime<Utc>,
    error: &'a str,
    attempt_count: u32,
    priority_pin: bool,
}

struct PeerMapRef<'a> {
    peers: &'a [(String, PeerStatusPage)],
    i: usize,
}

impl Serialize for PeerMapRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.peers.len()))?;
        for (id, page) in self.peers {
            if let Some(item) = page.items.get(self.i) {
                m.serialize_entry(
                    id,
                    &InfoRef {
                        peername: &page.peername,
                        ipfs_peer_id: &page.ipfs_peer_id,
                        ipfs_peer_addresses: &page.ipfs_peer_addresses,
                        status: item.0,
                        timestamp: item.2.as_ref().unwrap_or(&page.at),
                        error: &item.3,
                        attempt_count: item.1,
                        priority_pin: false,
                    },
                )?;
            }
        }
        m.end()
    }
}

#[derive(Serialize)]
struct GlobalRef<'a> {
    cid: &'a Cid,
    name: &'a str,
    allocations: &'a [String],
    origins: &'a [String],
    created: &'a DateTime<Utc>,
    metadata: Option<&'a BTreeMap<String, String>>,
    peer_map: PeerMapRef<'a>,
}

impl StatusChunk {
    fn passes(peers: &[(String, PeerStatusPage)], i: usize, filter: TrackerStatusFilter) -> bool {
        filter.is_all()
            || peers
                .iter()
                .any(|(_, p)| p.items.get(i).is_some_and(|it| filter.matches(it.0)))
    }

    /// Appends the items passing `filter` as NDJSON lines, each exactly as
    /// `serde_json` writes the [`GlobalPinInfo`] it stands for.
    pub fn render(&self, filter: TrackerStatusFilter, out: &mut Vec<u8>) {
        match self {
            StatusChunk::Page { pins, peers } => {
                for (i, pin) in pins.iter().enumerate() {
                    if !Self::passes(peers, i, filter) {
                        continue;
                    }
                    let o = &pin.options;
                    let g = GlobalRef {
                        cid: &pin.cid,
                        name: &o.name,
                        allocations: &pin.allocations,
                        origins: &o.origins,
                        created: &pin.timestamp,
                        metadata: (!o.metadata.is_empty()).then_some(&o.metadata),
                        peer_map: PeerMapRef { peers, i },
                    };
                    // Writing into a Vec cannot fail.
                    let _ = serde_json::to_writer(&mut *out, &g);
                    out.push(b'\n');
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
    use super::*;
    use crate::cluster::rpc::PageItem;
    use crate::types::PinOptions;

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
