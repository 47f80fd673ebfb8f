//! How the Raft store encodes its values (format 1): log entries as a small
//! binary header plus the [`LogBatch`] encoding; the rarely written metadata
//! (vote, committed and purged log IDs, applied state, membership, snapshot
//! metadata) as CBOR behind a format byte. Values written by earlier versions as
//! JSON still decode: JSON never starts with byte 1.

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::types::{LogBatch, NodeId, TypeConfig};
use crate::state::codec::{self, DecodeError, FORMAT_V1, Reader};

const BLANK: u8 = 0;
const NORMAL: u8 = 1;
const MEMBERSHIP: u8 = 2;

/// A log entry: format byte, term, leader node, index, kind, payload.
pub fn encode_entry(e: &Entry<TypeConfig>) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.push(FORMAT_V1);
    codec::put_uvarint(&mut out, e.log_id.leader_id.term);
    codec::put_uvarint(&mut out, e.log_id.leader_id.node_id);
    codec::put_uvarint(&mut out, e.log_id.index);
    match &e.payload {
        EntryPayload::Blank => out.push(BLANK),
        EntryPayload::Normal(b) => {
            out.push(NORMAL);
            out.extend_from_slice(&b.encode());
        }
        EntryPayload::Membership(m) => {
            out.push(MEMBERSHIP);
            // Writing into a Vec only fails on a bug in a derive: the decode
            // of the entry would then fail loudly.
            let _ = ciborium::into_writer(m, &mut out);
        }
    }
    out
}

/// Decodes [`encode_entry`]'s output, or an entry an earlier version wrote as JSON.
pub fn decode_entry(b: &[u8]) -> Result<Entry<TypeConfig>, DecodeError> {
    match b.first() {
        Some(&FORMAT_V1) => {}
        Some(b'{') => return serde_json::from_slice(b).map_err(|e| DecodeError(e.to_string())),
        Some(v) => {
            return Err(DecodeError(format!(
                "unknown log entry format {v}: written by a newer version of this peer?"
            )));
        }
        None => return Err(DecodeError("empty log entry".into())),
    }
    let mut r = Reader::new(&b[1..]);
    let term = r.uvarint()?;
    let node_id: NodeId = r.uvarint()?;
    let index = r.uvarint()?;
    let log_id = LogId::new(CommittedLeaderId::new(term, node_id), index);
    let payload = match r.u8()? {
        BLANK => EntryPayload::Blank,
        NORMAL => EntryPayload::Normal(LogBatch::decode(r.rest())?),
        MEMBERSHIP => EntryPayload::Membership(
            ciborium::from_reader(r.rest()).map_err(|e| DecodeError(e.to_string()))?,
        ),
        k => return Err(DecodeError(format!("unknown log entry kind {k}"))),
    };
    Ok(Entry { log_id, payload })
}

/// A metadata value: format byte, then CBOR.
pub fn encode_meta<T: Serialize>(v: &T) -> Result<Vec<u8>, DecodeError> {
    let mut out = vec![FORMAT_V1];
    ciborium::into_writer(v, &mut out).map_err(|e| DecodeError(e.to_string()))?;
    Ok(out)
}

/// Decodes [`encode_meta`]'s output, or the JSON earlier versions wrote.
pub fn decode_meta<T: DeserializeOwned>(b: &[u8]) -> Result<T, DecodeError> {
    match b.first() {
        Some(&FORMAT_V1) => ciborium::from_reader(&b[1..]).map_err(|e| DecodeError(e.to_string())),
        _ => serde_json::from_slice(b).map_err(|e| DecodeError(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{ClusterNode, Expect, LogOp, Prior, Request};
    use crate::types::{Cid, Pin, PinOptions};
    use openraft::{Membership, StoredMembership, Vote};
    use std::collections::{BTreeMap, BTreeSet};

    fn cid() -> Cid {
        "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
            .parse()
            .unwrap()
    }

    fn entries() -> Vec<Entry<TypeConfig>> {
        let id = |i| LogId::new(CommittedLeaderId::new(3, 77), i);
        let nodes = BTreeMap::from([(77u64, ClusterNode::default())]);
        vec![
            Entry {
                log_id: id(1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: id(2),
                payload: EntryPayload::Membership(Membership::new(
                    vec![BTreeSet::from([77])],
                    nodes,
                )),
            },
            Entry {
                log_id: id(3),
                payload: EntryPayload::Normal(LogBatch(vec![
                    Request::new(LogOp::Pin(Box::new(Pin::new(cid(), PinOptions::default())))),
                    Request {
                        id: None,
                        op: LogOp::Unpin(cid()),
                        expect: Vec::new(),
                    },
                ])),
            },
            // Format 2: conditions on the request's own and on another pin.
            Entry {
                log_id: id(4),
                payload: EntryPayload::Normal(LogBatch(vec![
                    Request::new(LogOp::Unpin(cid())),
                    Request::conditional(
                        LogOp::Unpin(cid()),
                        vec![
                            Expect {
                                cid: cid(),
                                prior: Prior::Digest([7; 16]),
                            },
                            Expect {
                                cid: cid(),
                                prior: Prior::Absent,
                            },
                        ],
                    ),
                ])),
            },
        ]
    }

    #[test]
    fn entries_round_trip_and_old_json_entries_still_read() {
        for e in entries() {
            let bin = encode_entry(&e);
            let back = decode_entry(&bin).unwrap();
            assert_eq!(back.log_id, e.log_id);
            assert_eq!(format!("{:?}", back.payload), format!("{:?}", e.payload));
            for n in 0..bin.len() {
                // Truncated entries are errors (a membership's CBOR may be
                // cut at a point that still parses only if it is whole).
                assert!(decode_entry(&bin[..n]).is_err(), "prefix {n} of {e:?}");
            }
        }
        // Batches without conditions keep format 1, which the previous version reads.
        let batch_format = |e: &Entry<TypeConfig>| match &e.payload {
            EntryPayload::Normal(b) => b.encode()[0],
            _ => 0,
        };
        let all = entries();
        assert_eq!((batch_format(&all[2]), batch_format(&all[3])), (1, 2));
        // An entry as the previous version stored it: JSON, one LogOp.
        let old = format!(
            r#"{{"log_id":{{"leader_id":{{"term":2,"node_id":5}},"index":9}},"payload":{{"Normal":{{"Unpin":"{}"}}}}}}"#,
            cid()
        );
        let e = decode_entry(old.as_bytes()).unwrap();
        assert_eq!(e.log_id.index, 9);
        match e.payload {
            EntryPayload::Normal(b) => {
                assert_eq!(b.0.len(), 1);
                assert_eq!(b.0[0].op, LogOp::Unpin(cid()));
                assert_eq!(b.0[0].id, None);
            }
            other => panic!("{other:?}"),
        }
        let old_pin = format!(
            r#"{{"log_id":{{"leader_id":{{"term":2,"node_id":5}},"index":10}},"payload":{{"Normal":{{"Pin":{}}}}}}}"#,
            serde_json::to_string(&Pin::new(cid(), PinOptions::default())).unwrap()
        );
        assert!(matches!(
            decode_entry(old_pin.as_bytes()).unwrap().payload,
            EntryPayload::Normal(LogBatch(ref v)) if matches!(v[0].op, LogOp::Pin(_))
        ));
        assert!(decode_entry(&[7, 1, 2]).unwrap_err().0.contains("format 7"));
    }

    #[test]
    fn metadata_round_trips_and_old_json_still_reads() {
        let vote = Vote::new(4, 9u64);
        assert_eq!(
            decode_meta::<Vote<NodeId>>(&encode_meta(&vote).unwrap()).unwrap(),
            vote
        );
        let json = serde_json::to_vec(&vote).unwrap();
        assert_eq!(decode_meta::<Vote<NodeId>>(&json).unwrap(), vote);
        let none: Option<LogId<NodeId>> = None;
        assert_eq!(decode_meta::<Option<LogId<NodeId>>>(b"null").unwrap(), none);
        assert_eq!(
            decode_meta::<Option<LogId<NodeId>>>(&encode_meta(&none).unwrap()).unwrap(),
            none
        );
        let m: StoredMembership<NodeId, ClusterNode> = StoredMembership::default();
        let back: StoredMembership<NodeId, ClusterNode> =
            decode_meta(&encode_meta(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }
}
