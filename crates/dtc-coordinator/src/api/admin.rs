//! The `CoordinatorAdmin` gRPC service: operators look at, retry and
//! resolve transactions that do not finish (docs/operations.md).
//!
//! Every call is checked on the node that receives it and served by the
//! leader, whose drivers hold the live progress. The work is
//! [`crate::txn::admin`]'s; this module validates, routes and words the
//! answers.
//!
//! Uses [`super::router`], [`super::wire`] and [`crate::txn::admin`].

use super::router::Router;
use super::wire;
use crate::membership::{self, MembershipError};
use crate::txn::Shared;
use crate::txn::admin::{self, Resolved, Retried, TxnView};
use dtc_proto::v1 as pb;
use dtc_proto::v1::coordinator_admin_client::CoordinatorAdminClient;
use dtc_proto::wire::HOPS_HEADER;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

/// Most transactions one list page returns, and the page when asked for 0.
const MAX_LIST_LIMIT: u32 = 1000;
const DEFAULT_LIST_LIMIT: usize = 100;
/// In doubt: pending and waiting on participants at least this long, unless
/// the request says otherwise. A healthy participant answers within the
/// decision retries' first second or two (they back off to 2 s), so
/// 5 s without an answer means several calls went unanswered.
const DEFAULT_MIN_WAITING_MS: u64 = 5000;
/// How long a retry waits for the answers, by default and at most.
const DEFAULT_RETRY_WAIT_MS: u32 = 3000;
const MAX_RETRY_WAIT_MS: u32 = 30_000;
/// Bounds of what an operator writes into the replicated abort reason.
const MAX_REASON_BYTES: usize = 1024;
const MAX_REQUESTED_BY_BYTES: usize = 128;

pub struct AdminService {
    router: Router,
}

impl AdminService {
    pub fn new(shared: Arc<Shared>) -> Self {
        AdminService {
            router: Router { shared },
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.router.shared
    }
}

fn admin_client(
    channel: tonic::transport::Channel,
) -> CoordinatorAdminClient<tonic::transport::Channel> {
    CoordinatorAdminClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

fn detail(view: &TxnView) -> pb::TransactionDetail {
    wire::transaction_detail(view, dtc_util::wall_ms())
}

/// Text an operator writes into the log: not blank (when `required`), at
/// most `max` bytes, and no control characters (one log line, one line in
/// `txn show`).
fn operator_text(field: &str, text: &str, required: bool, max: usize) -> Result<String, Status> {
    let text = text.trim();
    if required && text.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field} is empty: say why, it is recorded with the decision"
        )));
    }
    if text.len() > max {
        return Err(Status::invalid_argument(format!(
            "{field} is {} bytes, over the limit of {max}",
            text.len()
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "{field} contains a control character (a newline?); keep it to one line"
        )));
    }
    Ok(text.to_string())
}

/// The abort reason an operator's resolve records: who asked, from where, why.
fn recorded_reason(by: &str, origin: &str, reason: &str) -> String {
    let who = if by.is_empty() {
        "an unnamed operator".to_string()
    } else {
        format!("operator {by}")
    };
    let from = if origin.is_empty() {
        String::new()
    } else {
        format!(" (from {origin})")
    };
    format!("aborted by {who}{from}: {reason}")
}

/// What the retry did and where the transaction is now, in a sentence.
fn retry_message(txn_id: &str, retried: &Retried, d: &pb::TransactionDetail) -> String {
    let state = d
        .info
        .as_ref()
        .map(|i| i.state())
        .unwrap_or(pb::TxnState::Unspecified);
    let waiting = d.waiting_for.join(", ");
    let errors: Vec<String> = d
        .branches
        .iter()
        .filter(|b| d.waiting_for.contains(&b.participant) && !b.last_error.is_empty())
        .map(|b| format!("{}: {}", b.participant, b.last_error))
        .collect();
    let errors = if errors.is_empty() {
        String::new()
    } else {
        format!(" (last error {})", errors.join("; "))
    };
    let now = match state {
        pb::TxnState::Preparing => format!(
            "still undecided, waiting for the vote of {waiting}{errors}; its prepare \
             timeout or `dtc txn resolve {txn_id} --abort` decides it"
        ),
        pb::TxnState::Committing | pb::TxnState::Aborting if !waiting.is_empty() => {
            format!("still waiting for the acknowledgement of {waiting}{errors}")
        }
        _ => "phase 2 finished: every participant that owed an acknowledgement gave it".into(),
    };
    match retried {
        Retried::Complete => format!("transaction {txn_id} is complete; nothing to retry"),
        Retried::Woken { .. } => format!("sent the waiting calls again; {now}"),
        Retried::Started { .. } => format!(
            "no driver ran it on the leader, so one was started (an undecided transaction \
             is aborted, as after a failover); {now}"
        ),
    }
}

#[tonic::async_trait]
impl pb::coordinator_admin_server::CoordinatorAdmin for AdminService {
    async fn show_transaction(
        &self,
        request: Request<pb::ShowTransactionRequest>,
    ) -> Result<Response<pb::TransactionDetail>, Status> {
        let (meta, _, msg) = request.into_parts();
        let txn_id = wire::txn_id(msg.txn_id.clone())?;
        self.router
            .serve(
                &meta,
                msg,
                |_msg, _term| async move {
                    let view = admin::view(self.shared(), &txn_id)?;
                    Ok(detail(&view))
                },
                |ch, req| async move { admin_client(ch).show_transaction(req).await },
            )
            .await
    }

    async fn list_stuck_transactions(
        &self,
        request: Request<pb::ListStuckTransactionsRequest>,
    ) -> Result<Response<pb::ListStuckTransactionsResponse>, Status> {
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
        if !msg.after_txn_id.is_empty() {
            wire::txn_id(msg.after_txn_id.clone())?;
        }
        self.router
            .serve(
                &meta,
                msg,
                |msg, _term| async move {
                    let min_waiting = msg.in_doubt_only.then_some(match msg.min_waiting_ms {
                        0 => DEFAULT_MIN_WAITING_MS,
                        n => n,
                    });
                    let after = (!msg.after_txn_id.is_empty()).then_some(msg.after_txn_id.as_str());
                    let (views, next) =
                        admin::list_pending(self.shared(), min_waiting, after, limit)?;
                    Ok(pb::ListStuckTransactionsResponse {
                        transactions: views.iter().map(detail).collect(),
                        next_after_txn_id: next.unwrap_or_default(),
                    })
                },
                |ch, req| async move { admin_client(ch).list_stuck_transactions(req).await },
            )
            .await
    }

    async fn retry_transaction(
        &self,
        request: Request<pb::RetryTransactionRequest>,
    ) -> Result<Response<pb::RetryTransactionResponse>, Status> {
        let (meta, _, msg) = request.into_parts();
        let txn_id = wire::txn_id(msg.txn_id.clone())?;
        let wait_ms = match msg.wait_ms {
            0 => DEFAULT_RETRY_WAIT_MS,
            n if n > MAX_RETRY_WAIT_MS => {
                return Err(Status::invalid_argument(format!(
                    "wait_ms {n} is over the maximum of {MAX_RETRY_WAIT_MS}"
                )));
            }
            n => n,
        };
        // Answer before the caller's deadline, whatever it waits.
        let mut wait = Duration::from_millis(u64::from(wait_ms));
        if let Some(deadline) = super::router::incoming_deadline(&meta) {
            let left = deadline.saturating_duration_since(Instant::now());
            wait = wait.min(left.saturating_sub(Duration::from_millis(200)));
        }
        self.router
            .serve(
                &meta,
                msg,
                |_msg, cancel| async move {
                    let retried = admin::retry(self.shared(), &txn_id, wait, cancel).await?;
                    let view = admin::view(self.shared(), &txn_id)?;
                    let detail = detail(&view);
                    let finished = match retried {
                        Retried::Complete => true,
                        Retried::Woken { finished } | Retried::Started { finished } => finished,
                    };
                    let message = retry_message(txn_id.as_str(), &retried, &detail);
                    info!(%txn_id, finished, "operator retry: {message}");
                    Ok(pb::RetryTransactionResponse {
                        detail: Some(detail),
                        message,
                        finished,
                    })
                },
                |ch, req| async move { admin_client(ch).retry_transaction(req).await },
            )
            .await
    }

    async fn resolve_transaction(
        &self,
        request: Request<pb::ResolveTransactionRequest>,
    ) -> Result<Response<pb::ResolveTransactionResponse>, Status> {
        let peer = request.remote_addr();
        let (meta, _, mut msg) = request.into_parts();
        let txn_id = wire::txn_id(msg.txn_id.clone())?;
        if !msg.abort {
            return Err(Status::invalid_argument(
                "abort must be set: aborting is the only resolution an operator can record \
                 (a commit needs every participant's prepared vote)",
            ));
        }
        let reason = operator_text("reason", &msg.reason, true, MAX_REASON_BYTES)?;
        let by = operator_text(
            "requested_by",
            &msg.requested_by,
            false,
            MAX_REQUESTED_BY_BYTES,
        )?;
        // The node the client called knows its address; a forwarded call
        // carries it (a client's own value is replaced, but a client that
        // fakes the hop header can fake this too: it is not authentication).
        let forwarded = meta
            .get(HOPS_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v != "0");
        if !forwarded {
            msg.origin = peer.map(|a| a.ip().to_string()).unwrap_or_default();
        }
        let origin = operator_text("origin", &msg.origin, false, MAX_REQUESTED_BY_BYTES)?;
        self.router
            .serve(
                &meta,
                msg,
                |_msg, cancel| async move {
                    let recorded = recorded_reason(&by, &origin, &reason);
                    let resolved =
                        admin::resolve_abort(self.shared(), &txn_id, recorded.clone(), cancel)
                            .await
                            .inspect_err(|e| warn!(%txn_id, error = %e, "operator resolve refused"))?;
                    let already = resolved == Resolved::Already;
                    info!(%txn_id, already, reason = %recorded, "operator resolved the transaction: abort");
                    let view = admin::view(self.shared(), &txn_id)?;
                    Ok(pb::ResolveTransactionResponse {
                        detail: Some(detail(&view)),
                        recorded_reason: recorded,
                        already_resolved: already,
                    })
                },
                |ch, req| async move { admin_client(ch).resolve_transaction(req).await },
            )
            .await
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembershipChangeResponse>, Status> {
        let (meta, _, msg) = request.into_parts();
        let addr = membership::check_addr(&msg.addr).map_err(invalid)?;
        let wait = within_deadline(&meta, catch_up_wait(msg.catch_up_wait_ms)?);
        self.router
            .serve(
                &meta,
                msg,
                |msg, cancel| async move {
                    let outcome = membership::add(self.shared(), msg.id, &addr, wait, cancel)
                        .await
                        .map_err(|e| membership_status("add", msg.id, e))?;
                    Ok(change_response(outcome))
                },
                |ch, req| async move { admin_client(ch).add_member(req).await },
            )
            .await
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipChangeResponse>, Status> {
        let (meta, _, msg) = request.into_parts();
        self.router
            .serve(
                &meta,
                msg,
                |msg, cancel| async move {
                    let outcome = membership::remove(self.shared(), msg.id, cancel)
                        .await
                        .map_err(|e| membership_status("remove", msg.id, e))?;
                    Ok(change_response(outcome))
                },
                |ch, req| async move { admin_client(ch).remove_member(req).await },
            )
            .await
    }

    async fn replace_member(
        &self,
        request: Request<pb::ReplaceMemberRequest>,
    ) -> Result<Response<pb::MembershipChangeResponse>, Status> {
        let (meta, _, msg) = request.into_parts();
        let addr = membership::check_addr(&msg.addr).map_err(invalid)?;
        let wait = within_deadline(&meta, catch_up_wait(msg.catch_up_wait_ms)?);
        self.router
            .serve(
                &meta,
                msg,
                |msg, cancel| async move {
                    let outcome = membership::replace(self.shared(), msg.id, &addr, wait, cancel)
                        .await
                        .map_err(|e| membership_status("replace", msg.id, e))?;
                    Ok(change_response(outcome))
                },
                |ch, req| async move { admin_client(ch).replace_member(req).await },
            )
            .await
    }
}

/// How long a membership change waits for a learner to catch up, by
/// default and at most.
const DEFAULT_CATCH_UP_WAIT_MS: u32 = 60_000;
const MAX_CATCH_UP_WAIT_MS: u32 = 600_000;

fn catch_up_wait(ms: u32) -> Result<Duration, Status> {
    match ms {
        0 => Ok(Duration::from_millis(u64::from(DEFAULT_CATCH_UP_WAIT_MS))),
        n if n > MAX_CATCH_UP_WAIT_MS => Err(Status::invalid_argument(format!(
            "catch_up_wait_ms {n} is over the maximum of {MAX_CATCH_UP_WAIT_MS}"
        ))),
        n => Ok(Duration::from_millis(u64::from(n))),
    }
}

/// `wait`, cut so that the answer (with what was done so far) reaches the
/// caller before its deadline.
fn within_deadline(meta: &tonic::metadata::MetadataMap, wait: Duration) -> Duration {
    match super::router::incoming_deadline(meta) {
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            wait.min(left.saturating_sub(Duration::from_secs(2)))
        }
        None => wait,
    }
}

fn invalid(e: MembershipError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn membership_status(what: &str, id: u64, e: MembershipError) -> Status {
    warn!(id, error = %e, "membership {what} refused");
    match e {
        MembershipError::NotFound(m) => Status::not_found(m),
        MembershipError::Refused(m) => Status::failed_precondition(m),
        MembershipError::Retry(m) => Status::unavailable(m),
    }
}

fn change_response(o: membership::Outcome) -> pb::MembershipChangeResponse {
    pb::MembershipChangeResponse {
        steps: o.steps,
        done: o.done,
        members: o.view.members(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_text_is_trimmed_bounded_and_one_line() {
        assert_eq!(
            operator_text("reason", "  lost disk ", true, 20).unwrap(),
            "lost disk"
        );
        let e = operator_text("reason", "   ", true, 20).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("reason is empty"), "{e:?}");
        assert_eq!(operator_text("requested_by", "", false, 20).unwrap(), "");
        let e = operator_text("reason", &"x".repeat(21), true, 20).unwrap_err();
        assert!(e.message().contains("21 bytes"), "{e:?}");
        let e = operator_text("reason", "a\nb", true, 20).unwrap_err();
        assert!(e.message().contains("control character"), "{e:?}");
    }

    #[test]
    fn the_recorded_reason_says_who_from_where_and_why() {
        assert_eq!(
            recorded_reason("alice", "10.0.0.5", "beta lost its disk"),
            "aborted by operator alice (from 10.0.0.5): beta lost its disk"
        );
        assert_eq!(
            recorded_reason("", "", "why"),
            "aborted by an unnamed operator: why"
        );
    }
}
