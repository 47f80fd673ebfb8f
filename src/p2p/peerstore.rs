//! The address book and its file, the "peerstore": one `/…/p2p/<id>` multiaddr per
//! line, as upstream ipfs-cluster writes it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use libp2p::multiaddr::Protocol as MaProtocol;
use libp2p::{Multiaddr, PeerId};

use super::split_p2p;

/// At most this many addresses are kept per peer. identify reports every interface
/// address of a peer; the cap keeps a long-running peer's book (and file) bounded.
const MAX_ADDRS_PER_PEER: usize = 16;

/// Known addresses per peer, most recently confirmed first.
#[derive(Debug, Default)]
pub(super) struct AddressBook {
    peers: HashMap<PeerId, Vec<Multiaddr>>,
}

impl AddressBook {
    /// Records `addr` (with or without a trailing `/p2p/<peer>`) for `peer`, moving
    /// it to the front if known. Returns the address as stored, or `None` when it
    /// names another peer or is empty.
    pub fn add(&mut self, peer: PeerId, addr: Multiaddr) -> Option<Multiaddr> {
        let addr = match split_p2p(&addr) {
            Some((id, base)) if id == peer => base,
            Some((id, _)) => {
                tracing::warn!(%peer, %addr, other = %id, "address names another peer; ignored");
                return None;
            }
            None => addr,
        };
        // A `/p2p/` anywhere else would mean a relayed address, which this host
        // cannot dial.
        if addr.is_empty() || addr.iter().any(|p| matches!(p, MaProtocol::P2p(_))) {
            return None;
        }
        let list = self.peers.entry(peer).or_default();
        list.retain(|a| a != &addr);
        list.insert(0, addr.clone());
        list.truncate(MAX_ADDRS_PER_PEER);
        Some(addr)
    }

    /// Addresses known for `peer`, best first.
    pub fn get(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.peers.get(peer).cloned().unwrap_or_default()
    }

    /// The file form: every address with `/p2p/<peer>` appended, sorted by peer so
    /// that the file is stable between saves.
    pub fn to_file_text(&self) -> String {
        let sorted: BTreeMap<String, &Vec<Multiaddr>> = self
            .peers
            .iter()
            .map(|(peer, addrs)| (peer.to_string(), addrs))
            .collect();
        let mut text = String::new();
        for (peer, addrs) in sorted {
            for addr in addrs {
                text.push_str(&format!("{addr}/p2p/{peer}\n"));
            }
        }
        text
    }
}

/// Parses a peerstore file. Bad lines are skipped with a warning: the file is a
/// cache, and one bad line must not cost the others.
pub(super) fn parse(text: &str, path: &Path) -> Vec<(PeerId, Multiaddr)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.parse::<Multiaddr>().ok().and_then(|a| split_p2p(&a)) {
            Some(entry) => out.push(entry),
            None => tracing::warn!(
                path = %path.display(),
                line = n + 1,
                "peerstore line is not a multiaddr ending in /p2p/<id>; skipped"
            ),
        }
    }
    out
}

/// Reads the peerstore file; a missing file is an empty peerstore.
pub(super) async fn load(path: &Path) -> Vec<(PeerId, Multiaddr)> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => parse(&text, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            // Starting without remembered addresses beats not starting: peers can
            // still be reached through bootstrap addresses and identify.
            tracing::warn!(path = %path.display(), error = %e, "cannot read the peerstore");
            Vec::new()
        }
    }
}

/// Writes the peerstore atomically: a crash mid-write leaves the old file, never a
/// truncated one.
pub(super) async fn save(path: &Path, text: String) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        use tokio::io::AsyncWriteExt;
        let mut f = tokio::fs::File::create(&tmp).await?;
        f.write_all(text.as_bytes()).await?;
        // Durable before the rename, or a crash could leave an empty file under the
        // final name.
        f.sync_all().await?;
    }
    tokio::fs::rename(&tmp, path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    #[test]
    fn add_normalises_dedupes_and_orders() {
        let (a, b) = (peer(), peer());
        let mut book = AddressBook::default();
        let x: Multiaddr = "/ip4/10.0.0.1/tcp/9096".parse().unwrap();
        let y: Multiaddr = "/ip4/10.0.0.2/tcp/9096".parse().unwrap();
        assert_eq!(book.add(a, x.clone()), Some(x.clone()));
        let with_id = x.clone().with(MaProtocol::P2p(a));
        assert_eq!(book.add(a, y.clone()), Some(y.clone()));
        // Re-adding moves to the front instead of duplicating.
        assert_eq!(book.add(a, with_id), Some(x.clone()));
        assert_eq!(book.get(&a), vec![x.clone(), y.clone()]);
        // An address naming another peer is refused.
        assert_eq!(book.add(b, x.clone().with(MaProtocol::P2p(a))), None);
        assert!(book.get(&b).is_empty());
        for port in 0..40u16 {
            let addr: Multiaddr = format!("/ip4/10.0.0.3/tcp/{port}").parse().unwrap();
            book.add(b, addr);
        }
        assert_eq!(book.get(&b).len(), MAX_ADDRS_PER_PEER);
    }

    #[test]
    fn file_round_trip_skips_bad_lines() {
        let a = peer();
        let mut book = AddressBook::default();
        book.add(a, "/ip4/10.0.0.1/tcp/9096".parse().unwrap());
        book.add(a, "/dns4/example.org/tcp/9096".parse().unwrap());
        let text = format!(
            "{}\nnot an address\n/ip4/1.2.3.4/tcp/1\n\n",
            book.to_file_text()
        );
        let parsed = parse(&text, Path::new("peerstore"));
        assert_eq!(parsed.len(), 2);
        let mut again = AddressBook::default();
        for (p, addr) in parsed.into_iter().rev() {
            again.add(p, addr);
        }
        assert_eq!(again.get(&a), book.get(&a));
    }
}
