//! Raft's transport between peers.
//!
//! A single-voter cluster never sends Raft RPCs; this transport reports every other
//! node unreachable, so openraft backs off instead of failing. The libp2p transport
//! replaces it when peers can join.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::types::{ClusterNode, NodeId, TypeConfig};

/// Why a node cannot be reached.
#[derive(Debug, thiserror::Error)]
#[error("no transport to raft node {0} ({1})")]
struct NoRoute(NodeId, String);

/// The transport of a peer that has no inter-peer network yet.
#[derive(Clone, Default)]
pub struct LocalOnlyNetwork;

/// A client for one remote node of [`LocalOnlyNetwork`].
pub struct LocalOnlyClient {
    target: NodeId,
    node: ClusterNode,
}

impl LocalOnlyClient {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, ClusterNode, E> {
        RPCError::Unreachable(Unreachable::new(&NoRoute(
            self.target,
            self.node.peer_id.clone(),
        )))
    }
}

impl RaftNetworkFactory<TypeConfig> for LocalOnlyNetwork {
    type Network = LocalOnlyClient;

    async fn new_client(&mut self, target: NodeId, node: &ClusterNode) -> Self::Network {
        LocalOnlyClient {
            target,
            node: node.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for LocalOnlyClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>>
    {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, ClusterNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}
