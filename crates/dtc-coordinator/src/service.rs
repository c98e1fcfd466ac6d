//! The client-facing gRPC services (`Coordinator`, `InDoubt`).
//!
//! Every node serves them. Requests that need the leader are forwarded to it
//! with a hop count and the client's remaining deadline; past
//! [`MAX_HOPS`] a node answers UNAVAILABLE with a leader hint instead of
//! bouncing the request around a cluster that is mid-election (corner case 5).

use crate::node::{Leadership, Shared};
use crate::runtime::{DriverStatus, Start, spawn_driver};
use dtc_core::{Command, CommandResult, Outcome, Phase, TxnId, TxnRecord, TxnRequest};
use dtc_proto::v1::{self as pb, coordinator_client::CoordinatorClient};
use dtc_proto::wire::{HOPS_HEADER, LEADER_HINT_HEADER};
use openraft::ServerState;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::debug;

/// Most times one request is forwarded between nodes.
pub const MAX_HOPS: u32 = 2;
/// How long a request waits for a leader to emerge before UNAVAILABLE.
const LEADER_WAIT: Duration = Duration::from_secs(3);

enum Route {
    /// This node is the leader and has finished takeover.
    Local(CancellationToken),
    Forward {
        addr: String,
        hops: u32,
    },
}

/// The remaining deadline of an incoming call, from its `grpc-timeout` header.
pub fn incoming_deadline(meta: &MetadataMap) -> Option<Instant> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    // The gRPC spec allows at most 8 digits; longer values are malformed.
    if num.is_empty() || num.len() > 8 {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(d)
}

fn unavailable_with_hint(msg: String, hint: Option<(u64, &str)>) -> Status {
    let mut status = Status::unavailable(msg);
    if let Some((id, addr)) = hint
        && let Ok(v) = format!("{id}={addr}").parse()
    {
        status.metadata_mut().insert(LEADER_HINT_HEADER, v);
    }
    status
}

/// The one place a wire id becomes a [`TxnId`]: an invalid one is the
/// client's mistake.
fn parse_txn_id(id: String) -> Result<TxnId, Status> {
    TxnId::new(id).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn store_err(e: dtc_store::StoreError) -> Status {
    Status::internal(format!("state read failed: {e}"))
}

/// Shared routing for both services.
#[derive(Clone)]
struct Router {
    shared: Arc<Shared>,
}

impl Router {
    async fn route(&self, meta: &MetadataMap) -> Result<Route, Status> {
        let hops: u32 = meta
            .get(HOPS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let deadline = incoming_deadline(meta)
            .map(|d| d.min(Instant::now() + LEADER_WAIT))
            .unwrap_or(Instant::now() + LEADER_WAIT);
        let me = self.shared.node_id();
        let mut metrics = self.shared.raft.metrics();
        let mut lead = self.shared.leadership.subscribe();
        loop {
            let (leader, state) = {
                let m = metrics.borrow_and_update();
                (m.current_leader, m.state)
            };
            match leader {
                Some(id) if id == me => {
                    if let Leadership::Leader {
                        ready: true,
                        cancel,
                        ..
                    } = &*lead.borrow_and_update()
                    {
                        return Ok(Route::Local(cancel.clone()));
                    }
                }
                Some(id) if state != ServerState::Leader => {
                    let config = &self.shared.config;
                    let member = config.peers.get(&id).ok_or_else(|| {
                        Status::unavailable(format!("leader {id} is not in this node's peer list"))
                    })?;
                    if hops >= MAX_HOPS {
                        return Err(unavailable_with_hint(
                            format!(
                                "request forwarded {hops} times without reaching the leader; retry"
                            ),
                            Some((id, member)),
                        ));
                    }
                    return Ok(Route::Forward {
                        addr: config.dial_addr(id).unwrap_or(member).to_string(),
                        hops: hops + 1,
                    });
                }
                _ => {}
            }
            tokio::select! {
                r = metrics.changed() => if r.is_err() {
                    return Err(Status::unavailable("this node is shutting down"));
                },
                _ = lead.changed() => {},
                _ = tokio::time::sleep_until(deadline.into()) => {
                    return Err(Status::unavailable(
                        "no leader is available yet (election in progress); retry with the same txn_id",
                    ));
                }
            }
        }
    }

    /// A forwarded call that failed in transport (the leader died, or the
    /// connection broke) is a leadership problem for the client: answer
    /// UNAVAILABLE so it retries with the same id. Statuses the leader itself
    /// chose pass through unchanged.
    fn forward_failed(&self, addr: &str, status: Status) -> Status {
        match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::Internal
                if status.metadata().get(LEADER_HINT_HEADER).is_none() =>
            {
                // The hint names the member address (what clients dial).
                let hint = self.shared.config.peer_dialed_at(addr);
                unavailable_with_hint(
                    format!(
                        "forwarding to the leader at {addr} failed ({}: {}); retry with the same txn_id",
                        status.code(),
                        status.message()
                    ),
                    hint,
                )
            }
            _ => status,
        }
    }

    fn forward_client(
        &self,
        addr: &str,
    ) -> Result<CoordinatorClient<tonic::transport::Channel>, Status> {
        let ch = self
            .shared
            .channels
            .get(addr)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(CoordinatorClient::new(ch)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX))
    }

    /// Wraps `msg` for the next hop: hop count + the client's remaining time.
    fn forwarded<T>(&self, msg: T, meta: &MetadataMap, hops: u32) -> Request<T> {
        let mut req = Request::new(msg);
        if let Ok(v) = hops.to_string().parse() {
            req.metadata_mut().insert(HOPS_HEADER, v);
        }
        if let Some(deadline) = incoming_deadline(meta) {
            req.set_timeout(deadline.saturating_duration_since(Instant::now()));
        }
        debug!(hops, "forwarding to the leader");
        req
    }
}

fn txn_info(r: &TxnRecord) -> pb::TransactionInfo {
    let (state, reason, decided, completed, awaiting) = match &r.phase {
        Phase::Preparing => (pb::TxnState::Preparing, String::new(), 0, 0, vec![]),
        Phase::Decided {
            outcome,
            awaiting,
            decided_ms,
        } => (
            if outcome.is_commit() {
                pb::TxnState::Committing
            } else {
                pb::TxnState::Aborting
            },
            outcome.reason().to_string(),
            *decided_ms,
            0,
            awaiting.clone(),
        ),
        Phase::Completed {
            outcome,
            decided_ms,
            completed_ms,
        } => (
            if outcome.is_commit() {
                pb::TxnState::Committed
            } else {
                pb::TxnState::Aborted
            },
            outcome.reason().to_string(),
            *decided_ms,
            *completed_ms,
            vec![],
        ),
    };
    pb::TransactionInfo {
        txn_id: r.txn_id.to_string(),
        state: state as i32,
        participants: r.participants.clone(),
        reason,
        created_at_ms: r.created_ms,
        decided_at_ms: decided,
        completed_at_ms: completed,
        timeout_ms: r.timeout_ms,
        awaiting_ack: awaiting,
    }
}

fn execute_response(txn_id: &TxnId, outcome: &Outcome) -> pb::ExecuteResponse {
    pb::ExecuteResponse {
        txn_id: txn_id.to_string(),
        outcome: pb::Outcome::from(outcome) as i32,
        reason: outcome.reason().to_string(),
    }
}

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

    async fn execute_local(
        &self,
        req: TxnRequest,
        reply_at_decision: bool,
        cancel: CancellationToken,
    ) -> Result<pb::ExecuteResponse, Status> {
        let shared = self.shared();
        for (p, _) in &req.branches {
            if shared.reader.participant(p).map_err(store_err)?.is_none() {
                return Err(Status::failed_precondition(format!(
                    "participant {p:?} is not registered"
                )));
            }
        }
        let digest = req.digest();
        let txn_id = req.txn_id.clone();
        let handle = {
            let mut drivers = shared.lock_drivers();
            if let Some(h) = drivers.get(&txn_id) {
                if h.digest.is_some() && h.digest != Some(digest) {
                    return Err(Status::failed_precondition(format!(
                        "transaction {txn_id} is already running with a different request"
                    )));
                }
                h.clone()
            } else if let Some(record) =
                shared.reader.get_txn(txn_id.as_str()).map_err(store_err)?
            {
                if record.digest.is_some() && record.digest != Some(digest) {
                    return Err(Status::failed_precondition(format!(
                        "transaction {txn_id} already exists with a different request"
                    )));
                }
                if let Some(outcome) = record.outcome() {
                    return Ok(execute_response(&txn_id, outcome));
                }
                // Undecided with no driver: takeover has not reached it
                // (cannot happen once ready, but resuming is always safe).
                spawn_driver(shared, &mut drivers, Start::Resume(record), cancel)
            } else {
                let permit = shared.in_flight.clone().try_acquire_owned().map_err(|_| {
                    Status::resource_exhausted(format!(
                        "{} transactions in flight, the configured maximum; retry later",
                        shared.config.max_in_flight
                    ))
                })?;
                spawn_driver(
                    shared,
                    &mut drivers,
                    Start::New {
                        txn_id: txn_id.clone(),
                        branches: req.branches,
                        timeout_ms: req.timeout_ms,
                        digest,
                        permit,
                    },
                    cancel,
                )
            }
        };
        let mut status = handle.status;
        let decided = status
            .wait_for(|s| s.outcome.is_some() || s.stopped || s.rejected.is_some())
            .await
            .map(|s| s.clone())
            .unwrap_or(DriverStatus {
                stopped: true,
                ..Default::default()
            });
        if let Some(why) = decided.rejected {
            return Err(Status::failed_precondition(why));
        }
        let Some(outcome) = decided.outcome else {
            return Err(Status::unavailable(format!(
                "leadership changed while transaction {txn_id} ran; retry with the same txn_id"
            )));
        };
        // Give phase 2 a moment so the client normally reads its own writes;
        // the outcome is final either way. `Complete` is not waited for: it
        // only moves the record out of the pending index.
        if !reply_at_decision {
            let _ = tokio::time::timeout(
                shared.config.ack_wait,
                status.wait_for(|s| s.acked || s.done || s.stopped),
            )
            .await;
        }
        // Crash point: the decision is committed (and normally acknowledged
        // by every participant); the client has not been answered.
        dtc_util::crash_point!("coordinator.reply.before_client", txn = txn_id.as_str());
        Ok(execute_response(&txn_id, &outcome))
    }
}

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for CoordinatorService {
    async fn execute(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let (meta, _, msg) = request.into_parts();
        let limits = &self.shared().config.limits;
        // Validate before anything else, on whichever node received it.
        let txn_id = if msg.txn_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            msg.txn_id.clone()
        };
        let txn_id = parse_txn_id(txn_id)?;
        let branches = msg
            .branches
            .iter()
            .map(|b| (b.participant.clone(), b.payload.clone()))
            .collect();
        let req = TxnRequest::validate(txn_id.clone(), branches, msg.timeout_ms, limits)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        match self.router.route(&meta).await? {
            Route::Local(cancel) => self
                .execute_local(req, msg.reply_at_decision, cancel)
                .await
                .map(Response::new),
            Route::Forward { addr, hops } => {
                let mut fwd = msg;
                fwd.txn_id = txn_id.into_string(); // a generated id must stay the same on the leader
                self.router
                    .forward_client(&addr)?
                    .execute(self.router.forwarded(fwd, &meta, hops))
                    .await
                    .map_err(|e| self.router.forward_failed(&addr, e))
            }
        }
    }

    async fn get_transaction(
        &self,
        request: Request<pb::GetTransactionRequest>,
    ) -> Result<Response<pb::GetTransactionResponse>, Status> {
        let (meta, _, msg) = request.into_parts();
        parse_txn_id(msg.txn_id.clone())?;
        match self.router.route(&meta).await? {
            Route::Local(_) => {
                let record = self
                    .shared()
                    .reader
                    .get_txn(&msg.txn_id)
                    .map_err(store_err)?
                    .ok_or_else(|| {
                        Status::not_found(format!(
                            "transaction {} is unknown (never run, or past the retention window)",
                            msg.txn_id
                        ))
                    })?;
                Ok(Response::new(pb::GetTransactionResponse {
                    transaction: Some(txn_info(&record)),
                }))
            }
            Route::Forward { addr, hops } => self
                .router
                .forward_client(&addr)?
                .get_transaction(self.router.forwarded(msg, &meta, hops))
                .await
                .map_err(|e| self.router.forward_failed(&addr, e)),
        }
    }

    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        let (meta, _, msg) = request.into_parts();
        let limit = match msg.limit {
            0 => 100,
            n if n > 1000 => {
                return Err(Status::invalid_argument(format!(
                    "limit {n} is over the maximum of 1000"
                )));
            }
            n => n as usize,
        };
        match self.router.route(&meta).await? {
            Route::Local(_) => {
                let after = (!msg.after_txn_id.is_empty()).then_some(msg.after_txn_id.as_str());
                let records = self
                    .shared()
                    .reader
                    .list_txns(msg.pending_only, after, limit + 1)
                    .map_err(store_err)?;
                let more = records.len() > limit;
                let transactions: Vec<_> = records.iter().take(limit).map(txn_info).collect();
                let next = if more {
                    transactions
                        .last()
                        .map(|t| t.txn_id.clone())
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                Ok(Response::new(pb::ListTransactionsResponse {
                    transactions,
                    next_after_txn_id: next,
                }))
            }
            Route::Forward { addr, hops } => self
                .router
                .forward_client(&addr)?
                .list_transactions(self.router.forwarded(msg, &meta, hops))
                .await
                .map_err(|e| self.router.forward_failed(&addr, e)),
        }
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
        let members = m
            .membership_config
            .nodes()
            .map(|(id, node)| pb::Member {
                id: *id,
                addr: node.addr.clone(),
            })
            .collect();
        let participants = shared
            .reader
            .participants()
            .map_err(store_err)?
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
            pending: shared.reader.pending_count().map_err(store_err)?,
            participants,
            cluster: shared.config.cluster.clone(),
        }))
    }

    async fn register_participant(
        &self,
        request: Request<pb::RegisterParticipantRequest>,
    ) -> Result<Response<pb::RegisterParticipantResponse>, Status> {
        let (meta, _, msg) = request.into_parts();
        dtc_core::validate_participant_name(&msg.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let uri = dtc_util::endpoint_uri(&msg.endpoint);
        let valid = uri
            .parse::<tonic::codegen::http::Uri>()
            .ok()
            .is_some_and(|u| u.host().is_some() && u.port_u16().is_some());
        if !valid {
            return Err(Status::invalid_argument(format!(
                "endpoint {:?} is not a valid http://HOST:PORT address",
                msg.endpoint
            )));
        }
        match self.router.route(&meta).await? {
            Route::Local(_) => {
                self.shared()
                    .propose(Command::Register {
                        name: msg.name,
                        endpoint: uri,
                    })
                    .await
                    .map_err(|e| Status::unavailable(format!("not registered: {e}; retry")))?;
                Ok(Response::new(pb::RegisterParticipantResponse {}))
            }
            Route::Forward { addr, hops } => self
                .router
                .forward_client(&addr)?
                .register_participant(self.router.forwarded(msg, &meta, hops))
                .await
                .map_err(|e| self.router.forward_failed(&addr, e)),
        }
    }
}

pub struct InDoubtService {
    router: Router,
}

impl InDoubtService {
    pub fn new(shared: Arc<Shared>) -> Self {
        InDoubtService {
            router: Router { shared },
        }
    }
}

fn outcome_response(outcome: Option<&Outcome>) -> pb::QueryOutcomeResponse {
    match outcome {
        Some(o) => pb::QueryOutcomeResponse {
            outcome: pb::Outcome::from(o) as i32,
            reason: o.reason().to_string(),
        },
        None => pb::QueryOutcomeResponse {
            outcome: pb::Outcome::Unspecified as i32,
            reason: "not decided yet; ask again later".into(),
        },
    }
}

#[tonic::async_trait]
impl pb::in_doubt_server::InDoubt for InDoubtService {
    async fn query_outcome(
        &self,
        request: Request<pb::QueryOutcomeRequest>,
    ) -> Result<Response<pb::QueryOutcomeResponse>, Status> {
        let (meta, _, msg) = request.into_parts();
        let shared = self.router.shared.clone();
        let txn_id = parse_txn_id(msg.txn_id.clone())?;
        match self.router.route(&meta).await? {
            Route::Local(_) => {
                let claim = {
                    let mut drivers = shared.lock_drivers();
                    // Checked under the lock: drivers register (and only then
                    // propose Begin) under it too, so no Begin can slip in.
                    let record = shared.reader.get_txn(txn_id.as_str()).map_err(store_err)?;
                    if let Some(r) = &record
                        && !msg.participant.is_empty()
                        && r.digest.is_some()
                        && !r.participants.contains(&msg.participant)
                    {
                        // Whatever this participant prepared under this id
                        // was not part of the stored transaction (prepares
                        // leave before `Begin` commits): abort is its answer.
                        return Ok(Response::new(outcome_response(Some(&Outcome::abort(
                            format!(
                                "participant {} is not a participant of transaction {}",
                                msg.participant, msg.txn_id
                            ),
                        )))));
                    }
                    if let Some(running) = drivers.get(&txn_id) {
                        // A driver runs it (or another query is deciding it):
                        // its applied outcome once there is one, else "ask later".
                        let outcome = running.status.borrow().outcome.clone();
                        return Ok(Response::new(outcome_response(outcome.as_ref())));
                    }
                    if let Some(record) = record {
                        return Ok(Response::new(outcome_response(record.outcome())));
                    }
                    crate::runtime::Claim::new(&shared, &mut drivers, &txn_id)
                };
                // Presumed abort: record the abort through Raft first, then
                // answer what was applied (corner case 3).
                let applied = shared
                    .propose(Command::Decide {
                        txn_id,
                        outcome: Outcome::abort(
                            "unknown to the coordinator when a participant asked (presumed abort)",
                        ),
                        phase2: vec![],
                        at_ms: dtc_util::wall_ms(),
                    })
                    .await
                    .map_err(|e| Status::unavailable(format!("cannot record the outcome: {e}")))?;
                match applied {
                    CommandResult::Decided { record } => {
                        if let Some(outcome) = record.outcome() {
                            claim.finish(outcome);
                        }
                        Ok(Response::new(outcome_response(record.outcome())))
                    }
                    other => Err(Status::internal(format!(
                        "unexpected apply result {other:?}"
                    ))),
                }
            }
            Route::Forward { addr, hops } => {
                let ch = shared
                    .channels
                    .get(&addr)
                    .map_err(|e| Status::internal(e.to_string()))?;
                pb::in_doubt_client::InDoubtClient::new(ch)
                    .query_outcome(self.router.forwarded(msg, &meta, hops))
                    .await
                    .map_err(|e| self.router.forward_failed(&addr, e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_parses_every_unit() {
        for (v, ms) in [
            ("5S", 5000u64),
            ("250m", 250),
            ("1M", 60_000),
            ("3000000u", 3000),
        ] {
            let mut meta = MetadataMap::new();
            meta.insert("grpc-timeout", v.parse().unwrap());
            let d = incoming_deadline(&meta).unwrap();
            let left = d.saturating_duration_since(Instant::now()).as_millis() as u64;
            assert!(left <= ms && left + 50 >= ms, "{v}: {left}");
        }
        for bad in ["12X", "5124095576030431H", "18446744073709551615S", "S"] {
            let mut meta = MetadataMap::new();
            meta.insert("grpc-timeout", bad.parse().unwrap());
            assert!(incoming_deadline(&meta).is_none(), "{bad}");
        }
    }
}
