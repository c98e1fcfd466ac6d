//! Calls from the leader to participants: `Prepare` until a vote or the
//! deadline, and the decision until it is acknowledged.
//!
//! The participant's endpoint is looked up in the replicated registry on
//! every attempt: a participant that re-registered on a new endpoint is
//! reached there on the next retry (corner case 15).
//!
//! A call that gets no answer at all within its timeout gives its channel
//! back ([`crate::channels::Channels::forget`]): the connection may be dead
//! without anything having closed it, and the next attempt dials afresh
//! instead of waiting for the channel's keepalive to notice.
//!
//! Every call reports to the transaction's [`Live`] progress (votes,
//! acknowledgements, attempts, last error, next attempt) so that operators
//! see it, and a wait in back-off ends early when an operator asks for a
//! retry ([`Live::wake`]).
//!
//! Uses [`super::shared`] (the registry reader, channels, metrics, config)
//! and [`super::registry`] (the [`Live`] side of a transaction).

use super::registry::Live;
use super::shared::Shared;
use crate::channels::{BadEndpoint, Lease, is_silent};
use dtc_core::{Outcome, TxnId, Vote};
use dtc_proto::v1::{
    AbortRequest, CommitRequest, PrepareRequest, participant_client::ParticipantClient,
};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// Why a call to a participant failed without an answer to act on.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("participant {0} is not registered")]
    NotRegistered(String),
    #[error("registry read failed: {0}")]
    Registry(#[from] dtc_store::StoreError),
    #[error(transparent)]
    Endpoint(#[from] BadEndpoint),
    /// The participant answered with an error status.
    #[error("{code}: {message}")]
    Status { code: tonic::Code, message: String },
}

impl CallError {
    fn code(&self) -> tonic::Code {
        match self {
            CallError::Status { code, .. } => *code,
            _ => tonic::Code::Unavailable,
        }
    }
}

impl From<tonic::Status> for CallError {
    fn from(s: tonic::Status) -> Self {
        CallError::Status {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

/// Why `Prepare` produced no vote.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// No answer before the deadline (the driver's deadline tick decides).
    #[error("no answer before the deadline")]
    Deadline,
    /// The call failed without a vote: an error status, or an unregistered
    /// participant. Aborts the transaction.
    #[error(transparent)]
    Failed(#[from] CallError),
}

/// Retry delays for calls to participants and for takeover.
pub fn backoff() -> impl Iterator<Item = Duration> {
    dtc_util::backoff(Duration::from_millis(20), Duration::from_secs(2))
}

/// A client for `participant`'s current endpoint, and the lease of the
/// channel it uses.
fn client(
    shared: &Shared,
    participant: &str,
) -> Result<(ParticipantClient<tonic::transport::Channel>, Lease), CallError> {
    let registered = shared
        .reader
        .participant(participant)?
        .ok_or_else(|| CallError::NotRegistered(participant.to_string()))?;
    // Registered, so known to the cluster; this node may reach it elsewhere.
    let endpoint = match shared.config.participant_addr_overrides.get(participant) {
        Some(addr) => addr.clone(),
        None => registered,
    };
    let (channel, lease) = shared.channels.dial(&endpoint)?;
    let client = ParticipantClient::new(channel)
        .max_decoding_message_size(dtc_proto::wire::MAX_MESSAGE_BYTES);
    Ok((client, lease))
}

/// After a failed call: a call that heard nothing back in its time gives its
/// channel up, so that the next attempt dials a new connection.
fn after_failure(shared: &Shared, participant: &str, lease: &Lease, status: &tonic::Status) {
    if is_silent(status) && shared.channels.forget(lease) {
        shared.metrics.redialed(participant);
        info!(
            participant,
            addr = lease.addr(),
            "no answer within the call's timeout; the next call dials a new connection"
        );
    }
}

fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        // INTERNAL is what tonic reports for a connection torn down mid-call.
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::Internal
    )
}

/// Sleeps `delay`, or less if an operator asks for a retry meanwhile (or
/// asked while the last call was in flight). Records when the next attempt
/// is due for `participant`.
async fn back_off(
    live: &Live,
    wakes: &mut watch::Receiver<u64>,
    participant: &str,
    delay: Duration,
) {
    live.update(participant, |p| p.retry_at = Some(Instant::now() + delay));
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        _ = wakes.changed() => {}
    }
    live.update(participant, |p| p.retry_at = None);
}

/// Records a failed call to `participant`.
fn failed(live: &Live, participant: &str, error: impl std::fmt::Display) {
    let error = error.to_string();
    live.update(participant, |p| p.last_error = Some(error));
}

/// Sends `Prepare` until an answer arrives or the deadline passes; transport
/// failures are retried.
pub async fn send_prepare(
    shared: &Shared,
    live: &Live,
    txn_id: &TxnId,
    participant: &str,
    payload: Vec<u8>,
    deadline: Instant,
) -> Result<Vote, PrepareError> {
    let mut delays = backoff();
    let mut wakes = live.wakes();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(PrepareError::Deadline);
        }
        live.update(participant, |p| p.prepare_attempts += 1);
        let (mut client, lease) = match client(shared, participant) {
            Ok(c) => c,
            Err(e) => {
                failed(live, participant, &e);
                live.update(participant, |p| p.prepare_failed = Some(e.to_string()));
                return Err(e.into());
            }
        };
        let mut req = tonic::Request::new(PrepareRequest {
            txn_id: txn_id.to_string(),
            participant: participant.to_string(),
            payload: payload.clone(),
            remaining_ms: remaining.as_millis().min(u32::MAX as u128) as u32,
        });
        req.set_timeout(remaining);
        let sent = Instant::now();
        let answer = client.prepare(req).await;
        if let Err(status) = &answer {
            after_failure(shared, participant, &lease, status);
        }
        match answer {
            Ok(resp) => {
                shared.metrics.prepared(participant, sent.elapsed());
                let vote = dtc_proto::vote_from_wire(&resp.into_inner());
                live.update(participant, |p| {
                    p.vote = Some(vote.clone());
                    p.last_error = None;
                });
                return Ok(vote);
            }
            Err(status) if is_transient(&status) => {
                shared.metrics.retry("prepare");
                failed(live, participant, CallError::from(status.clone()));
                debug!(%txn_id, participant, %status, "prepare failed; retrying");
            }
            Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
                failed(live, participant, CallError::from(status));
                return Err(PrepareError::Deadline);
            }
            Err(status) => {
                let e = CallError::from(status);
                failed(live, participant, &e);
                live.update(participant, |p| p.prepare_failed = Some(e.to_string()));
                return Err(e.into());
            }
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(1));
        let delay = delay.min(deadline.saturating_duration_since(Instant::now()));
        back_off(live, &mut wakes, participant, delay).await;
    }
}

/// One attempt to deliver the decision.
async fn decide_once(
    shared: &Shared,
    txn_id: &TxnId,
    participant: &str,
    outcome: &Outcome,
) -> Result<(), CallError> {
    let (mut client, lease) = client(shared, participant)?;
    let answer = match outcome {
        Outcome::Commit => {
            let mut req = tonic::Request::new(CommitRequest {
                txn_id: txn_id.to_string(),
                participant: participant.to_string(),
            });
            req.set_timeout(shared.config.rpc_timeout);
            client.commit(req).await.map(drop)
        }
        Outcome::Abort { reason } => {
            let mut req = tonic::Request::new(AbortRequest {
                txn_id: txn_id.to_string(),
                participant: participant.to_string(),
                reason: reason.clone(),
            });
            req.set_timeout(shared.config.rpc_timeout);
            client.abort(req).await.map(drop)
        }
    };
    if let Err(status) = &answer {
        after_failure(shared, participant, &lease, status);
    }
    Ok(answer?)
}

/// Sends the decision until the participant acknowledges. Never gives up:
/// a prepared participant holds locks until it hears (corner case 9); the
/// caller's cancellation stops it when leadership moves.
pub async fn send_decision(
    shared: &Shared,
    live: &Live,
    txn_id: &TxnId,
    participant: &str,
    outcome: &Outcome,
) {
    let mut delays = backoff();
    let mut wakes = live.wakes();
    let mut attempt: u64 = 0;
    loop {
        attempt += 1;
        live.update(participant, |p| p.decision_attempts += 1);
        let Err(e) = decide_once(shared, txn_id, participant, outcome).await else {
            live.update(participant, |p| {
                p.acked = true;
                p.last_error = None;
            });
            return;
        };
        failed(live, participant, &e);
        shared.metrics.retry("decision");
        let code = e.code();
        let msg = match &e {
            CallError::Status { message, .. } => message.clone(),
            other => other.to_string(),
        };
        let loud = matches!(
            code,
            tonic::Code::NotFound | tonic::Code::FailedPrecondition | tonic::Code::DataLoss
        );
        if loud {
            // A participant that cannot apply a decided outcome (for a
            // commit: it lost its log) needs an operator. Keep retrying.
            error!(
                %txn_id,
                participant,
                ?code,
                msg,
                attempt,
                "participant refuses the decision; operator attention needed"
            );
        } else if attempt.is_power_of_two() {
            warn!(
                %txn_id,
                participant,
                ?code,
                msg,
                attempt,
                "decision not acknowledged yet; retrying"
            );
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(2));
        back_off(live, &mut wakes, participant, delay).await;
    }
}
