//! The Raft type configuration: what a log entry carries and how peers are named.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::state::codec::{self, DecodeError, Reader};
use crate::types::{Cid, Pin};

/// A Raft node ID, derived from the peer's libp2p ID (see [`node_id_of`]).
pub type NodeId = u64;

/// What Raft knows of a member: its libp2p peer ID and an address to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// The libp2p peer ID.
    pub peer_id: String,
    /// A multiaddr of the peer, ending in `/p2p/<id>` (may be empty when unknown).
    pub addr: String,
    /// The peer's name, for status of peers that do not answer.
    #[serde(default)]
    pub name: String,
}

impl fmt::Display for ClusterNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.peer_id, self.addr)
    }
}

/// A pinset change (upstream's `LogOp`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LogOp {
    /// Add or replace a pin.
    Pin(Box<Pin>),
    /// Remove a pin.
    Unpin(Cid),
}

/// The ID of a client's request, chosen by the peer that received it and kept
/// across forwarding and retries (so that a retried write can be recognised).
pub type RequestId = u128;

/// A [`LogOp`] with the ID of the client request that asked for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The client request, when known.
    pub id: Option<RequestId>,
    /// The change.
    pub op: LogOp,
}

impl Request {
    /// `op` for a new client request, with a fresh random ID.
    pub fn new(op: LogOp) -> Self {
        Request {
            id: Some(rand::random()),
            op,
        }
    }
}

/// The payload of a Raft log entry: pinset changes committed together (group
/// commit), applied in order.
///
/// Encoded as bytes in [`codec`](crate::state::codec)'s format 1 (below); entries
/// that earlier versions wrote as one JSON `LogOp` still decode.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogBatch(pub Vec<Request>);

const OP_PIN: u8 = 0;
const OP_UNPIN: u8 = 1;
const HAS_ID: u8 = 1;

impl LogBatch {
    /// The format-1 encoding: the format byte, the count, then each request.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.0.len() * 128);
        out.push(codec::FORMAT_V1);
        codec::put_uvarint(&mut out, self.0.len() as u64);
        for r in &self.0 {
            match r.id {
                Some(id) => {
                    out.push(HAS_ID);
                    out.extend_from_slice(&id.to_be_bytes());
                }
                None => out.push(0),
            }
            match &r.op {
                LogOp::Pin(p) => {
                    out.push(OP_PIN);
                    codec::put_pin(&mut out, p);
                }
                LogOp::Unpin(c) => {
                    out.push(OP_UNPIN);
                    codec::put_bytes(&mut out, &c.to_bytes());
                }
            }
        }
        out
    }

    /// Decodes [`Self::encode`]'s output.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        match r.u8()? {
            codec::FORMAT_V1 => {}
            v => {
                return Err(DecodeError(format!(
                    "unknown log entry format {v}: written by a newer version of this peer?"
                )));
            }
        }
        let n = r.uvarint()?;
        if n > r.rest().len() as u64 {
            return Err(DecodeError("batch count beyond its value".into()));
        }
        let mut ops = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let id = match r.u8()? {
                0 => None,
                HAS_ID => {
                    let mut id = [0u8; 16];
                    id.copy_from_slice(r.take(16)?);
                    Some(u128::from_be_bytes(id))
                }
                f => return Err(DecodeError(format!("unknown request flags {f}"))),
            };
            let op = match r.u8()? {
                OP_PIN => LogOp::Pin(Box::new(codec::read_pin(&mut r)?)),
                OP_UNPIN => LogOp::Unpin(r.cid()?),
                k => return Err(DecodeError(format!("unknown log operation {k}"))),
            };
            ops.push(Request { id, op });
        }
        if !r.is_empty() {
            return Err(DecodeError("trailing bytes after a log entry".into()));
        }
        Ok(LogBatch(ops))
    }
}

impl Serialize for LogBatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.encode())
    }
}

impl<'de> Deserialize<'de> for LogBatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LogBatchVisitor)
    }
}

struct LogBatchVisitor;

impl<'de> serde::de::Visitor<'de> for LogBatchVisitor {
    type Value = LogBatch;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an encoded log batch, or a JSON LogOp")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<LogBatch, E> {
        LogBatch::decode(v).map_err(E::custom)
    }

    // Self-describing formats without a byte-string type (JSON) write bytes as
    // a sequence of numbers.
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<LogBatch, A::Error> {
        let mut b = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(x) = seq.next_element::<u8>()? {
            b.push(x);
        }
        self.visit_bytes(&b)
    }

    // Entries written by earlier versions: one externally tagged `LogOp`.
    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<LogBatch, A::Error> {
        let op = LogOp::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(LogBatch(vec![Request { id: None, op }]))
    }
}

/// What applying a [`LogBatch`] found, one answer per request in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    /// For each request, whether its CID was in the pinset before it.
    pub existed: Vec<bool>,
}

openraft::declare_raft_types!(
    /// openraft's type configuration for the cluster's pinset log.
    pub TypeConfig:
        D = LogBatch,
        R = ApplyResult,
        NodeId = NodeId,
        Node = ClusterNode,
        SnapshotData = tokio::fs::File,
);

/// A stable Raft node ID for a libp2p peer ID: the last 8 bytes of its multihash.
///
/// Ed25519 peer IDs embed the public key, so these bytes are as random as the key.
pub fn node_id_of(peer: &libp2p_identity::PeerId) -> NodeId {
    let b = peer.to_bytes();
    let mut id = [0u8; 8];
    let tail = &b[b.len().saturating_sub(8)..];
    id[8 - tail.len()..].copy_from_slice(tail);
    u64::from_be_bytes(id)
}
