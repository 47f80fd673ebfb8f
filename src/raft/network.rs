//! Raft's transport between peers: openraft's RPCs, and the writes that followers
//! forward to the leader, travel as CBOR over the libp2p host's Raft protocol.

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::types::{ClusterNode, LogBatch, NodeId, TypeConfig};
use crate::p2p::{Multiaddr, P2p, P2pError, PeerId, Protocol};

/// A message on the Raft protocol.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpc {
    /// openraft's append-entries (also heartbeats).
    Append(AppendEntriesRequest<TypeConfig>),
    /// openraft's vote.
    Vote(VoteRequest<NodeId>),
    /// A snapshot chunk.
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A write a follower forwards to the leader.
    Forward(ForwardOp),
    /// The leader tells a peer it was removed from the peerset (it may never
    /// receive the log entry that removed it).
    Removed,
}

/// What a follower asks the leader to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardOp {
    /// Commit pinset changes as one entry.
    Commit(LogBatch),
    /// Add a voter.
    AddPeer(NodeId, ClusterNode),
    /// Remove a voter.
    RemovePeer(NodeId),
    /// The index a read must have applied to be up to date (read index).
    ReadIndex,
}

/// The leader's answer to a [`ForwardOp`].
///
/// Versioned by variant: a peer reads every variant an earlier version sends,
/// and answers with the newest; a peer of an earlier version fails to decode a
/// newer variant (a clear error, never a misread), so the protocol name stays.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardReply {
    /// The committed operations, in order, as peers of the previous version
    /// answer (no conditional requests there: each took effect).
    Committed(Vec<CommittedV1>),
    /// Done.
    Done,
    /// The read index.
    ReadIndex(u64),
    /// The outcome of each request, in order.
    Outcomes(Vec<super::Committed>),
}

/// A committed operation as peers of the previous version report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedV1 {
    /// Whether the CID was in the pinset before the operation.
    pub existed: bool,
    /// The log index of the operation.
    pub index: u64,
}

impl From<CommittedV1> for super::Committed {
    fn from(c: CommittedV1) -> Self {
        super::Committed {
            outcome: super::Outcome::Applied { existed: c.existed },
            index: c.index,
        }
    }
}

/// Why a forwarded operation failed, by what the sender may do about it.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    /// The receiver is not (or no longer) the leader, or is shutting down: ask
    /// the leader again.
    #[error("not the leader")]
    NotLeader,
    /// It failed for good.
    #[error("{0}")]
    Failed(String),
    /// No answer: the leader could not be reached, or its reply was lost. The
    /// operation may have taken effect; it is sent again (with the same request
    /// IDs, so that it takes effect at most once) until the wait ends. Never
    /// sent by a leader.
    #[error("no answer from the leader: {0}")]
    Unreachable(String),
}

/// The answer to a [`RaftRpc`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftReply {
    /// To `Append`.
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To `Vote`.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To `Snapshot`.
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// To `Forward`.
    Forward(Result<ForwardReply, ForwardError>),
    /// Acknowledges `Removed`.
    Ack,
    /// The request could not be decoded.
    BadRequest(String),
}

/// CBOR encoding of RPC payloads.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail; a serialisation error would be a bug in a
    // derive, and then an empty payload fails to decode on the other side.
    let _ = ciborium::into_writer(v, &mut out);
    out
}

/// Decodes a CBOR payload.
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    ciborium::from_reader(b).map_err(|e| e.to_string())
}

/// The peer ID and dialable address of a Raft node.
pub fn node_peer(node: &ClusterNode) -> Option<(PeerId, Option<Multiaddr>)> {
    let peer: PeerId = node.peer_id.parse().ok()?;
    let addr = node.addr.parse::<Multiaddr>().ok();
    Some((peer, addr))
}

/// The transport factory of a peer.
#[derive(Clone)]
pub struct P2pNetwork {
    p2p: P2p,
}

impl P2pNetwork {
    /// Raft over `p2p`.
    pub fn new(p2p: P2p) -> Self {
        P2pNetwork { p2p }
    }
}

/// A client for one remote node.
pub struct P2pClient {
    p2p: P2p,
    target: NodeId,
    peer: Option<PeerId>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl P2pClient {
    async fn call<E>(&self, rpc: RaftRpc) -> Result<RaftReply, RPCError<NodeId, ClusterNode, E>>
    where
        E: std::error::Error,
    {
        let Some(peer) = self.peer else {
            return Err(RPCError::Unreachable(Unreachable::new(&TransportError(
                format!("raft node {} has no valid peer ID", self.target),
            ))));
        };
        match self.p2p.request(peer, Protocol::Raft, encode(&rpc)).await {
            Ok(bytes) => decode(&bytes).map_err(|e| {
                RPCError::Network(NetworkError::new(&TransportError(format!(
                    "bad raft reply from {peer}: {e}"
                ))))
            }),
            Err(e @ (P2pError::Unreachable(_) | P2pError::Shutdown)) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn unexpected<E: std::error::Error>(
        &self,
        reply: RaftReply,
    ) -> RPCError<NodeId, ClusterNode, E> {
        RPCError::Network(NetworkError::new(&TransportError(format!(
            "unexpected raft reply from node {}: {reply:?}",
            self.target
        ))))
    }
}

impl RaftNetworkFactory<TypeConfig> for P2pNetwork {
    type Network = P2pClient;

    async fn new_client(&mut self, target: NodeId, node: &ClusterNode) -> Self::Network {
        let peer = match node_peer(node) {
            Some((peer, addr)) => {
                if let Some(a) = addr {
                    self.p2p.add_address(peer, a).await;
                }
                Some(peer)
            }
            None => None,
        };
        P2pClient {
            p2p: self.p2p.clone(),
            target,
            peer,
        }
    }
}

impl RaftNetwork<TypeConfig> for P2pClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>>
    {
        match self.call(RaftRpc::Append(rpc)).await? {
            RaftReply::Append(Ok(r)) => Ok(r),
            RaftReply::Append(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, ClusterNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(RaftRpc::Snapshot(rpc)).await? {
            RaftReply::Snapshot(Ok(r)) => Ok(r),
            RaftReply::Snapshot(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>> {
        match self.call(RaftRpc::Vote(rpc)).await? {
            RaftReply::Vote(Ok(r)) => Ok(r),
            RaftReply::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(self.unexpected(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Committed, Outcome};

    /// A reply of a peer of the previous version still reads, as outcomes; the
    /// new reply round-trips.
    #[test]
    fn forward_replies_of_both_versions_decode() {
        let old = encode(&RaftReply::Forward(Ok(ForwardReply::Committed(vec![
            CommittedV1 {
                existed: true,
                index: 5,
            },
        ]))));
        match decode::<RaftReply>(&old) {
            Ok(RaftReply::Forward(Ok(ForwardReply::Committed(c)))) => {
                let c: Vec<Committed> = c.into_iter().map(Into::into).collect();
                assert_eq!(
                    c,
                    vec![Committed {
                        outcome: Outcome::Applied { existed: true },
                        index: 5
                    }]
                );
            }
            other => panic!("{other:?}"),
        }
        let new = vec![
            Committed {
                outcome: Outcome::Conflict,
                index: 9,
            },
            Committed {
                outcome: Outcome::Applied { existed: false },
                index: 9,
            },
        ];
        let b = encode(&RaftReply::Forward(Ok(ForwardReply::Outcomes(new.clone()))));
        match decode::<RaftReply>(&b) {
            Ok(RaftReply::Forward(Ok(ForwardReply::Outcomes(c)))) => assert_eq!(c, new),
            other => panic!("{other:?}"),
        }
    }
}
