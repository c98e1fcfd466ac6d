//! The Raft transport over tonic: the client side (`RaftNetworkFactory`) and
//! the server side (`RaftTransport` service).
//!
//! openraft's requests and replies travel postcard-encoded inside a
//! `RaftMessage { cluster, data }`. The reply is the whole
//! `Result<Response, RaftError>`, so a remote Raft error reaches the sender
//! as a `RemoteError` and a transport failure as `Unreachable`, which is what
//! openraft's replication back-off expects.

use crate::channels::Channels;
use dtc_proto::v1::{RaftMessage, raft_transport_client::RaftTransportClient};
use dtc_store::{NodeId, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::{Serialize, de::DeserializeOwned};
use tonic::{Request, Response, Status};

/// Creates one [`PeerClient`] per target node; channels are shared and
/// connect lazily, so a dead peer costs nothing until it is tried.
#[derive(Clone)]
pub struct NetworkFactory {
    pub cluster: String,
    pub channels: Channels,
    /// Pause before retrying an unreachable peer. Must stay well under the
    /// election timeout: a (re)started peer that hears nothing from the
    /// leader before its election timer fires campaigns with a higher vote
    /// and deposes a healthy leader. openraft's default is 500 ms.
    pub unreachable_backoff: std::time::Duration,
    /// Peer id -> address to dial instead of the member address
    /// ([`crate::NodeConfig::peer_addr_overrides`]).
    pub peer_addr_overrides: std::collections::BTreeMap<NodeId, String>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerClient {
            target,
            addr: self
                .peer_addr_overrides
                .get(&target)
                .unwrap_or(&node.addr)
                .clone(),
            cluster: self.cluster.clone(),
            channels: self.channels.clone(),
            unreachable_backoff: self.unreachable_backoff,
        }
    }
}

pub struct PeerClient {
    target: NodeId,
    addr: String,
    cluster: String,
    channels: Channels,
    unreachable_backoff: std::time::Duration,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl PeerClient {
    async fn call<Req, Resp, E>(
        &self,
        kind: RpcKind,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data =
            postcard::to_stdvec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let channel = self
            .channels
            .get(&self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut client = RaftTransportClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let mut request = Request::new(RaftMessage {
            cluster: self.cluster.clone(),
            data,
        });
        request.set_timeout(option.hard_ttl());
        let reply = match kind {
            RpcKind::Append => client.append_entries(request).await,
            RpcKind::Vote => client.vote(request).await,
            RpcKind::Snapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown => {
                RPCError::Unreachable(Unreachable::new(&status))
            }
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            postcard::from_bytes(&reply.into_inner().data)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum RpcKind {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        self.call(RpcKind::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(RpcKind::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.call(RpcKind::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(self.unreachable_backoff))
    }
}

/// Server side: decodes a peer's request and hands it to the local Raft.
pub struct RaftService {
    pub raft: Raft<TypeConfig>,
    pub cluster: String,
    /// Votes are refused until a fresh `--join` node is admitted.
    pub admission: super::admission::Admission,
}

impl RaftService {
    fn decode<T: DeserializeOwned>(&self, msg: RaftMessage) -> Result<T, Status> {
        if msg.cluster != self.cluster {
            return Err(Status::failed_precondition(format!(
                "message from cluster {:?} refused by a node of cluster {:?}",
                msg.cluster, self.cluster
            )));
        }
        postcard::from_bytes(&msg.data)
            .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
    }

    /// Refuses a message whose sender (the node its vote names) is not in
    /// this node's membership: a stray or rogue process that knows the
    /// cluster name must not make members step down with a higher term. A
    /// node with no membership yet (first start, or waiting to be added)
    /// accepts, or the cluster could never form.
    fn check_sender(&self, vote: &openraft::Vote<NodeId>) -> Result<(), Status> {
        let Some(sender) = vote.leader_id().voted_for() else {
            return Ok(());
        };
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        if membership.nodes().next().is_none() || membership.get_node(&sender).is_some() {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "raft message from node {sender}, which is not a member of this cluster"
        )))
    }

    fn encode<T: Serialize>(&self, value: &T) -> Result<Response<RaftMessage>, Status> {
        let data = postcard::to_stdvec(value)
            .map_err(|e| Status::internal(format!("cannot encode raft reply: {e}")))?;
        Ok(Response::new(RaftMessage {
            cluster: self.cluster.clone(),
            data,
        }))
    }
}

#[tonic::async_trait]
impl dtc_proto::v1::raft_transport_server::RaftTransport for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let req: AppendEntriesRequest<TypeConfig> = self.decode(request.into_inner())?;
        self.check_sender(&req.vote)?;
        let result = self.raft.append_entries(req).await;
        self.encode(&result)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let req: VoteRequest<NodeId> = self.decode(request.into_inner())?;
        self.check_sender(&req.vote)?;
        if self.admission.is_awaiting() {
            // An empty node's vote is worthless and may be harmful: it
            // forgot any vote it cast before (docs/design.md §5b).
            return Err(Status::failed_precondition(
                "this node joined empty and has not been added as a learner yet: it does not vote",
            ));
        }
        let result = self.raft.vote(req).await;
        self.encode(&result)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let req: InstallSnapshotRequest<TypeConfig> = self.decode(request.into_inner())?;
        self.check_sender(&req.vote)?;
        let result = self.raft.install_snapshot(req).await;
        self.encode(&result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    #[test]
    fn raft_requests_and_error_replies_survive_postcard() {
        let entry = Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(3, 1), 7),
            payload: EntryPayload::Normal(dtc_core::Command::Complete {
                txn_id: "t-1".parse().unwrap(),
                at_ms: 42,
            }),
        };
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 6)),
            entries: vec![entry],
            leader_commit: Some(LogId::new(CommittedLeaderId::new(3, 1), 6)),
        };
        let bytes = postcard::to_stdvec(&req).unwrap();
        let back: AppendEntriesRequest<TypeConfig> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(format!("{req:?}"), format!("{back:?}"));

        let reply: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
            Err(RaftError::Fatal(openraft::error::Fatal::Stopped));
        let bytes = postcard::to_stdvec(&reply).unwrap();
        let back: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
            postcard::from_bytes(&bytes).unwrap();
        assert!(matches!(
            back,
            Err(RaftError::Fatal(openraft::error::Fatal::Stopped))
        ));
    }
}
