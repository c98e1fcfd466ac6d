//! Wire mapping: proto messages to core types and back, and the runtime's
//! errors as gRPC statuses.
//!
//! Uses the error types of [`crate::txn`], and its operator view
//! ([`crate::txn::admin`]).

use crate::txn::admin::{AdminError, TxnView};
use crate::txn::execute::ExecuteError;
use crate::txn::outcome::QueryError;
use dtc_core::{Outcome, Phase, TxnId, TxnRecord, TxnRequest, Vote};
use dtc_proto::v1 as pb;
use tokio::time::Instant;
use tonic::Status;

/// The one place a wire id becomes a [`TxnId`]: an invalid one is the
/// client's mistake.
pub fn txn_id(id: String) -> Result<TxnId, Status> {
    TxnId::new(id).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// An `ExecuteRequest` as a validated request. An empty id gets a fresh
/// UUID, which the caller must forward with the request so the leader runs
/// it under the same id.
pub fn txn_request(
    msg: &pb::ExecuteRequest,
    limits: &dtc_core::Limits,
) -> Result<TxnRequest, Status> {
    let id = if msg.txn_id.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        msg.txn_id.clone()
    };
    let branches = msg
        .branches
        .iter()
        .map(|b| (b.participant.clone(), b.payload.clone()))
        .collect();
    TxnRequest::validate(txn_id(id)?, branches, msg.timeout_ms, limits)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

pub fn store_error(e: dtc_store::StoreError) -> Status {
    Status::internal(format!("state read failed: {e}"))
}

impl From<ExecuteError> for Status {
    fn from(e: ExecuteError) -> Status {
        match e {
            ExecuteError::NotRegistered(_)
            | ExecuteError::RunningWithOtherRequest(_)
            | ExecuteError::ExistsWithOtherRequest(_)
            | ExecuteError::Rejected(_) => Status::failed_precondition(e.to_string()),
            ExecuteError::Busy(_) | ExecuteError::TooManyPending(_) | ExecuteError::DiskFull(_) => {
                Status::resource_exhausted(e.to_string())
            }
            ExecuteError::LeadershipLost(_) | ExecuteError::ShuttingDown => {
                Status::unavailable(e.to_string())
            }
            ExecuteError::Store(e) => store_error(e),
        }
    }
}

impl From<QueryError> for Status {
    fn from(e: QueryError) -> Status {
        match e {
            QueryError::Store(e) => store_error(e),
            QueryError::Propose(_) => Status::unavailable(e.to_string()),
            QueryError::Unexpected(_) => Status::internal(e.to_string()),
            QueryError::Busy(_) => Status::resource_exhausted(e.to_string()),
        }
    }
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Status {
        match e {
            AdminError::NotFound(_) => Status::not_found(e.to_string()),
            AdminError::AlreadyDecided { .. } => Status::failed_precondition(e.to_string()),
            AdminError::Store(e) => store_error(e),
            AdminError::Propose(_) => Status::unavailable(e.to_string()),
            AdminError::Unexpected(_) => Status::internal(e.to_string()),
        }
    }
}

/// A transaction as operators see it: the record, each participant's
/// progress, and ages by the leader's wall clock `now_ms`.
pub fn transaction_detail(view: &TxnView, now_ms: u64) -> pb::TransactionDetail {
    let r = &view.record;
    let awaiting: &[String] = match &r.phase {
        Phase::Decided { awaiting, .. } => awaiting,
        _ => &[],
    };
    let now = Instant::now();
    let mut waiting_for = Vec::new();
    let branches = r
        .participants
        .iter()
        .map(|name| {
            let p = view
                .live
                .as_ref()
                .and_then(|l| l.get(name))
                .cloned()
                .unwrap_or_default();
            let (vote, vote_reason) = match (&p.vote, &p.prepare_failed) {
                (Some(Vote::Prepared), _) => (pb::SeenVote::Prepared, String::new()),
                (Some(Vote::ReadOnly), _) => (pb::SeenVote::ReadOnly, String::new()),
                (Some(Vote::Abort { reason }), _) => (pb::SeenVote::Abort, reason.clone()),
                (None, Some(why)) => (pb::SeenVote::Failed, why.clone()),
                (None, None) => (pb::SeenVote::None, String::new()),
            };
            let holds_nothing = matches!(vote, pb::SeenVote::ReadOnly | pb::SeenVote::Abort);
            let ack = match &r.phase {
                Phase::Preparing => {
                    if vote == pb::SeenVote::None {
                        waiting_for.push(name.clone());
                    }
                    pb::AckState::Undecided
                }
                _ if p.acked => pb::AckState::Acknowledged,
                Phase::Decided { .. } if awaiting.contains(name) => {
                    waiting_for.push(name.clone());
                    pb::AckState::Awaiting
                }
                Phase::Decided { .. } => pb::AckState::NotOwed,
                Phase::Completed { .. } if holds_nothing => pb::AckState::NotOwed,
                Phase::Completed { .. } => pb::AckState::Settled,
            };
            pb::BranchProgress {
                participant: name.clone(),
                vote: vote as i32,
                vote_reason,
                ack: ack as i32,
                prepare_attempts: p.prepare_attempts,
                decision_attempts: p.decision_attempts,
                last_error: p.last_error.unwrap_or_default(),
                next_attempt_in_ms: p
                    .retry_at
                    .map(|at| at.saturating_duration_since(now).as_millis() as u64)
                    .unwrap_or(0),
            }
        })
        .collect();
    pb::TransactionDetail {
        info: Some(txn_info(r)),
        live: view.live.is_some(),
        branches,
        now_ms,
        age_ms: now_ms.saturating_sub(r.created_ms),
        waiting_ms: crate::txn::admin::waiting_ms(r, now_ms),
        waiting_for,
    }
}

pub fn execute_response(txn_id: &TxnId, outcome: &Outcome) -> pb::ExecuteResponse {
    pb::ExecuteResponse {
        txn_id: txn_id.to_string(),
        outcome: pb::Outcome::from(outcome) as i32,
        reason: outcome.reason().to_string(),
    }
}

pub fn outcome_response(outcome: Option<&Outcome>) -> pb::QueryOutcomeResponse {
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

pub fn txn_info(r: &TxnRecord) -> pb::TransactionInfo {
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

/// Whether `endpoint` is a usable participant address; returns it as a URI.
pub fn participant_endpoint(endpoint: &str) -> Result<String, Status> {
    let uri = dtc_util::endpoint_uri(endpoint);
    let valid = uri
        .parse::<tonic::codegen::http::Uri>()
        .ok()
        .is_some_and(|u| u.host().is_some() && u.port_u16().is_some());
    if valid {
        Ok(uri)
    } else {
        Err(Status::invalid_argument(format!(
            "endpoint {endpoint:?} is not a valid http://HOST:PORT address"
        )))
    }
}
