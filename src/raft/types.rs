//! The Raft type configuration: what a log entry carries and how peers are named.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::state::PinDigest;
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

/// What a pin must be, when a conditional request is applied, for the request
/// to take effect: the value the client decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prior {
    /// Not in the pinset.
    Absent,
    /// In the pinset, stored as the pin with this digest
    /// ([`crate::state::digest_of_stored`]).
    Digest(PinDigest),
}

/// One condition of a request: `cid` must be as `prior` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    /// The pin the condition is about (not necessarily the request's own CID).
    pub cid: Cid,
    /// What it must be.
    pub prior: Prior,
}

/// A [`LogOp`] with the ID of the client request that asked for it, and the
/// state it was decided on.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The client request, when known: a repeated ID is answered with the first
    /// application's outcome and changes nothing.
    pub id: Option<RequestId>,
    /// The change.
    pub op: LogOp,
    /// Conditions checked when the entry is applied: if any fails, the request
    /// changes nothing and its outcome is [`Outcome::Conflict`].
    pub expect: Vec<Expect>,
}

/// A new request ID: the time in milliseconds in the high 48 bits, 80 random
/// bits below. IDs made at about the same time sort near each other, so the
/// state machine records them (and prunes the oldest) on few store pages
/// instead of one random page each.
pub fn new_request_id() -> RequestId {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
        & ((1 << 48) - 1);
    (u128::from(ms) << 80) | (rand::random::<u128>() >> 48)
}

/// The first of a run of new request IDs: [`new_request_id`] with the top bit
/// of its random part clear, so that any batch can count up from it without
/// reaching the time bits.
pub fn new_run_base() -> RequestId {
    new_request_id() & !(1u128 << 79)
}

impl Request {
    /// `op` for a new client request, with a fresh ID.
    pub fn new(op: LogOp) -> Self {
        Request {
            id: Some(new_request_id()),
            op,
            expect: Vec::new(),
        }
    }

    /// `op` for a new client request that applies only if the pins in `expect`
    /// are still as the client saw them.
    pub fn conditional(op: LogOp, expect: Vec<Expect>) -> Self {
        Request {
            expect,
            ..Request::new(op)
        }
    }

    /// The CID the request changes.
    pub fn cid(&self) -> Cid {
        match &self.op {
            LogOp::Pin(p) => p.cid,
            LogOp::Unpin(c) => *c,
        }
    }
}

/// The payload of a Raft log entry: pinset changes committed together (group
/// commit), applied in order.
///
/// Encoded as bytes (below): format 1 when no request carries a condition (so
/// that peers of the previous version still read it), format 2 otherwise (format
/// 1 plus a flag bit and the conditions). Entries that earlier versions wrote as
/// one JSON `LogOp` still decode.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogBatch(pub Vec<Request>);

const OP_PIN: u8 = 0;
const OP_UNPIN: u8 = 1;
const HAS_ID: u8 = 1;
/// Format 2: the request carries conditions (after its ID).
const HAS_EXPECT: u8 = 2;
/// The batch format with conditions.
const FORMAT_V2: u8 = 2;
const PRIOR_ABSENT: u8 = 0;
const PRIOR_DIGEST: u8 = 1;
/// Conditions per request: a request is decided on a pin or two.
const MAX_EXPECT: u64 = 16;

impl LogBatch {
    /// The encoding: the format byte, the count, then each request.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.0.len() * 128);
        let v2 = self.0.iter().any(|r| !r.expect.is_empty());
        out.push(if v2 { FORMAT_V2 } else { codec::FORMAT_V1 });
        codec::put_uvarint(&mut out, self.0.len() as u64);
        for r in &self.0 {
            let flags = if r.id.is_some() { HAS_ID } else { 0 }
                | if r.expect.is_empty() { 0 } else { HAS_EXPECT };
            out.push(flags);
            if let Some(id) = r.id {
                out.extend_from_slice(&id.to_be_bytes());
            }
            if !r.expect.is_empty() {
                codec::put_uvarint(&mut out, r.expect.len() as u64);
                for e in &r.expect {
                    codec::put_bytes(&mut out, &e.cid.to_bytes());
                    match e.prior {
                        Prior::Absent => out.push(PRIOR_ABSENT),
                        Prior::Digest(d) => {
                            out.push(PRIOR_DIGEST);
                            out.extend_from_slice(&d);
                        }
                    }
                }
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
        let flags_known = match r.u8()? {
            codec::FORMAT_V1 => HAS_ID,
            FORMAT_V2 => HAS_ID | HAS_EXPECT,
            v => {
                return Err(DecodeError(format!(
                    "unknown log entry format {v}: written by a newer version of this peer?"
                )));
            }
        };
        let n = r.uvarint()?;
        if n > r.rest().len() as u64 {
            return Err(DecodeError("batch count beyond its value".into()));
        }
        let mut ops = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let flags = r.u8()?;
            if flags & !flags_known != 0 {
                return Err(DecodeError(format!("unknown request flags {flags}")));
            }
            let id = if flags & HAS_ID != 0 {
                let mut id = [0u8; 16];
                id.copy_from_slice(r.take(16)?);
                Some(u128::from_be_bytes(id))
            } else {
                None
            };
            let mut expect = Vec::new();
            if flags & HAS_EXPECT != 0 {
                let k = r.uvarint()?;
                if k == 0 || k > MAX_EXPECT {
                    return Err(DecodeError(format!("{k} conditions on one request")));
                }
                for _ in 0..k {
                    let cid = r.cid()?;
                    let prior = match r.u8()? {
                        PRIOR_ABSENT => Prior::Absent,
                        PRIOR_DIGEST => {
                            let mut d = PinDigest::default();
                            d.copy_from_slice(r.take(16)?);
                            Prior::Digest(d)
                        }
                        p => return Err(DecodeError(format!("unknown condition kind {p}"))),
                    };
                    expect.push(Expect { cid, prior });
                }
            }
            let op = match r.u8()? {
                OP_PIN => LogOp::Pin(Box::new(codec::read_pin(&mut r)?)),
                OP_UNPIN => LogOp::Unpin(r.cid()?),
                k => return Err(DecodeError(format!("unknown log operation {k}"))),
            };
            ops.push(Request { id, op, expect });
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
        Ok(LogBatch(vec![Request {
            id: None,
            op,
            expect: Vec::new(),
        }]))
    }
}

/// What became of one request when its entry was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// It took effect (or a request with the same ID did, earlier: this is that
    /// first outcome). `existed`: its CID was in the pinset before it.
    Applied {
        /// Whether the CID was in the pinset before the request.
        existed: bool,
    },
    /// A condition did not hold: nothing changed. Decide again on the state as
    /// of the entry (applied locally once the commit returns) and retry.
    Conflict,
}

/// The outcome of a committed [`Request`], and where it was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// What became of it.
    pub outcome: Outcome,
    /// The log index of the entry that first applied the request ID (events
    /// about it carry the same index).
    pub index: u64,
}

impl Committed {
    /// Whether the request took effect on a CID that was in the pinset.
    pub fn existed(&self) -> bool {
        matches!(self.outcome, Outcome::Applied { existed: true })
    }

    /// Whether a condition failed (nothing changed).
    pub fn conflict(&self) -> bool {
        self.outcome == Outcome::Conflict
    }
}

/// What applying an entry found, one answer per request in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    /// For each request, its outcome.
    pub outcomes: Vec<Committed>,
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

/// How far the state machine's written state reaches; the log's purges wait on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Not read yet: openraft asks for the applied state first thing at start.
    Unknown,
    /// Every entry up to this index is written to the state (durable with the
    /// next durable commit of the store, which a purge makes).
    Upto(Option<u64>),
    /// A snapshot install failed: a purge waiting for it gives up.
    InstallFailed,
}

impl Applied {
    /// Whether the state holds every entry up to `index`.
    pub fn covers(&self, index: u64) -> bool {
        matches!(self, Applied::Upto(Some(i)) if *i >= index)
    }
}
