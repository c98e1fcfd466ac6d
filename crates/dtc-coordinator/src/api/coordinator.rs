//! The `Coordinator` gRPC service: `Execute`, transaction queries, cluster
//! status and participant registration.
//!
//! Uses [`super::router`] (serve here or forward), [`super::wire`] (proto
//! to core and back) and [`crate::txn`] (`execute`, the shared state).

use super::router::{Router, coordinator_client};
use super::wire;
use crate::txn::{Shared, execute};
use dtc_core::Command;
use dtc_proto::v1 as pb;
use openraft::ServerState;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Most transactions one `ListTransactions` page returns.
const MAX_LIST_LIMIT: u32 = 1000;
/// Page size when the request says 0.
const DEFAULT_LIST_LIMIT: usize = 100;

pub struct CoordinatorService {
    router: Router,
}

impl CoordinatorService {
    pub fn new(shared: Arc<Shared>) -> Self {
        CoordinatorService {
            router: Router { shared },
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.router.shared
    }
}

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for CoordinatorService {
    async fn execute(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let (meta, _, mut msg) = request.into_parts();
        // Validate before anything else, on whichever node received it.
        let req = wire::txn_request(&msg, &self.shared().config.limits)?;
        // A generated id must stay the same on the leader.
        msg.txn_id = req.txn_id.as_str().to_string();
        self.router
            .serve(
                &meta,
                msg,
                |msg, cancel| async move {
                    let txn_id = req.txn_id.clone();
                    let outcome =
                        execute::execute(self.shared(), req, msg.reply_at_decision, cancel).await?;
                    // Crash point: the decision is committed (and normally
                    // acknowledged by every participant); the client has not
                    // been answered.
                    dtc_util::crash_point!(
                        "coordinator.reply.before_client",
                        txn = txn_id.as_str()
                    );
                    Ok(wire::execute_response(&txn_id, &outcome))
                },
                |ch, req| async move { coordinator_client(ch).execute(req).await },
            )
            .await
    }

    async fn get_transaction(
        &self,
        request: Request<pb::GetTransactionRequest>,
    ) -> Result<Response<pb::GetTransactionResponse>, Status> {
        let (meta, _, msg) = request.into_parts();
        let txn_id = wire::txn_id(msg.txn_id.clone())?;
        self.router
            .serve(
                &meta,
                msg,
                |_msg, _term| async move {
                    let record = self
                        .shared()
                        .reader
                        .get_txn(txn_id.as_str())
                        .map_err(wire::store_error)?
                        .ok_or_else(|| {
                            Status::not_found(format!(
                                "transaction {txn_id} is unknown (never run, or past the retention window)"
                            ))
                        })?;
                    Ok(pb::GetTransactionResponse {
                        transaction: Some(wire::txn_info(&record)),
                    })
                },
                |ch, req| async move { coordinator_client(ch).get_transaction(req).await },
            )
            .await
    }

    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        let (meta, _, msg) = request.into_parts();
        let limit = match msg.limit {
            0 => DEFAULT_LIST_LIMIT,
            n if n > MAX_LIST_LIMIT => {
                return Err(Status::invalid_argument(format!(
                    "limit {n} is over the maximum of {MAX_LIST_LIMIT}"
                )));
            }
            n => n as usize,
        };
        self.router
            .serve(
                &meta,
                msg,
                |msg, _term| async move {
                    let after = (!msg.after_txn_id.is_empty()).then_some(msg.after_txn_id.as_str());
                    let records = self
                        .shared()
                        .reader
                        .list_txns(msg.pending_only, after, limit + 1)
                        .map_err(wire::store_error)?;
                    let more = records.len() > limit;
                    let transactions: Vec<_> =
                        records.iter().take(limit).map(wire::txn_info).collect();
                    let next = if more {
                        transactions
                            .last()
                            .map(|t| t.txn_id.clone())
                            .unwrap_or_default()
                    } else {
                        String::new()
                    };
                    Ok(pb::ListTransactionsResponse {
                        transactions,
                        next_after_txn_id: next,
                    })
                },
                |ch, req| async move { coordinator_client(ch).list_transactions(req).await },
            )
            .await
    }

    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let shared = self.shared();
        let m = shared.raft.metrics().borrow().clone();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let membership = m.membership_config.membership();
        let members = membership
            .nodes()
            .map(|(id, node)| pb::Member {
                id: *id,
                addr: node.addr.clone(),
                voter: membership.voter_ids().any(|v| v == *id),
            })
            .collect();
        let participants = shared
            .reader
            .participants()
            .map_err(wire::store_error)?
            .into_iter()
            .map(|(name, endpoint)| pb::ParticipantEndpoint { name, endpoint })
            .collect();
        Ok(Response::new(pb::ClusterStatusResponse {
            node_id: shared.node_id(),
            role: role.into(),
            term: m.current_term,
            leader_id: m.current_leader,
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            members,
            pending: shared.reader.pending_count().map_err(wire::store_error)?,
            participants,
            cluster: shared.config.cluster.clone(),
            awaiting_admission: shared.admission.is_awaiting(),
        }))
    }

    async fn register_participant(
        &self,
        request: Request<pb::RegisterParticipantRequest>,
    ) -> Result<Response<pb::RegisterParticipantResponse>, Status> {
        let (meta, _, msg) = request.into_parts();
        dtc_core::validate_participant_name(&msg.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let endpoint = wire::participant_endpoint(&msg.endpoint)?;
        self.router
            .serve(
                &meta,
                msg,
                |msg, _term| async move {
                    self.shared()
                        .propose(Command::Register {
                            name: msg.name,
                            endpoint,
                        })
                        .await
                        .map_err(|e| Status::unavailable(format!("not registered: {e}; retry")))?;
                    Ok(pb::RegisterParticipantResponse {})
                },
                |ch, req| async move { coordinator_client(ch).register_participant(req).await },
            )
            .await
    }
}
