//! Running a transaction, and the typed view of its state.

use crate::{Client, ClientError, Retry, with_timeout};
use dtc_proto::v1 as pb;
use serde::Serialize;
use std::time::Duration;
use tokio::time::Instant;

/// Largest prepare timeout the coordinator accepts.
const MAX_TIMEOUT: Duration = Duration::from_millis(600_000);

/// The decided outcome of a transaction: the one decision the cluster
/// replicated for its id. (A transaction whose outcome is not known is not
/// an outcome: it is [`ClientError::Unavailable`], carrying the id to ask
/// about or retry with.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum TxnOutcome {
    /// Every branch commits (or has committed).
    Committed { txn_id: String },
    /// No branch commits: a participant voted abort (the reason says which
    /// and why), a prepare timed out, or the request was refused.
    Aborted { txn_id: String, reason: String },
}

impl TxnOutcome {
    pub fn txn_id(&self) -> &str {
        match self {
            TxnOutcome::Committed { txn_id } | TxnOutcome::Aborted { txn_id, .. } => txn_id,
        }
    }

    pub fn is_committed(&self) -> bool {
        matches!(self, TxnOutcome::Committed { .. })
    }

    /// Why it aborted; `None` when it committed.
    pub fn abort_reason(&self) -> Option<&str> {
        match self {
            TxnOutcome::Committed { .. } => None,
            TxnOutcome::Aborted { reason, .. } => Some(reason),
        }
    }
}

/// Builds and runs one transaction. Errors found while building (a bad
/// amount, no branch) are reported by [`execute`](Self::execute).
#[derive(Debug)]
pub struct TxnBuilder {
    client: Client,
    branches: Vec<(String, Vec<u8>)>,
    timeout: Option<Duration>,
    id: Option<String>,
    deadline: Option<Duration>,
    reply_at_decision: bool,
    error: Option<ClientError>,
}

impl TxnBuilder {
    pub(crate) fn new(client: Client) -> Self {
        TxnBuilder {
            client,
            branches: Vec::new(),
            timeout: None,
            id: None,
            deadline: None,
            reply_at_decision: false,
            error: None,
        }
    }

    /// Adds a branch: `payload` goes to registered participant `participant`.
    pub fn branch(mut self, participant: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        self.branches.push((participant.into(), payload.into()));
        self
    }

    /// The prepare timeout (1 ms ..= 600 s; default: the cluster's).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The idempotency key. Generated (uuid v4) when not set; set it to
    /// retry a transaction whose outcome is unknown. It must be a valid
    /// [`dtc_core::TxnId`] (1..=128 bytes of `A-Za-z0-9._:-`); `execute`
    /// refuses another with INVALID_ARGUMENT before sending anything.
    pub fn id(mut self, txn_id: impl Into<String>) -> Self {
        let txn_id = txn_id.into();
        if let Err(e) = dtc_core::TxnId::new(txn_id.as_str()) {
            self.error
                .get_or_insert(ClientError::InvalidArgument(e.to_string()));
        }
        self.id = Some(txn_id);
        self
    }

    /// How long `execute` keeps trying, failovers included (default: the
    /// prepare timeout plus the client's retry budget).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Answer as soon as the decision is replicated, without waiting for
    /// the participants to acknowledge it (default: wait, so that reads at
    /// the participants see the transaction's effects).
    pub fn reply_at_decision(mut self, yes: bool) -> Self {
        self.reply_at_decision = yes;
        self
    }

    /// Makes [`TxnBuilder::execute`] return `e` without sending anything:
    /// for helpers that check their arguments while they build a transaction
    /// (the first error is kept).
    pub fn fail(mut self, e: ClientError) -> Self {
        self.error.get_or_insert(e);
        self
    }

    /// The transaction id this builder will use (generating it now if unset).
    pub fn txn_id(&mut self) -> String {
        self.id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone()
    }

    /// Runs the transaction and returns its decided outcome. Retries with the
    /// same txn id across failovers until the deadline (see the crate docs).
    pub async fn execute(mut self) -> Result<TxnOutcome, ClientError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.branches.is_empty() {
            return Err(ClientError::InvalidArgument(
                "a transaction needs at least one branch".into(),
            ));
        }
        let timeout_ms = match self.timeout {
            None => 0,
            Some(t) if t.is_zero() || t > MAX_TIMEOUT => {
                return Err(ClientError::InvalidArgument(format!(
                    "timeout {t:?} is outside 1 ms ..= 600 s"
                )));
            }
            Some(t) => t.as_millis().max(1) as u32,
        };
        let txn_id = self.txn_id();
        let config = self.client.config().clone();
        let prepare = self.timeout.unwrap_or(config.assumed_txn_timeout);
        let until = Instant::now() + self.deadline.unwrap_or(prepare + config.retry_budget);
        // Prepare, the decision's Raft round, the wait for acknowledgements
        // (1 s) and a forwarding hop all fit in one attempt.
        let per_call = prepare + Duration::from_secs(5);
        let req = pb::ExecuteRequest {
            txn_id: txn_id.clone(),
            branches: self
                .branches
                .into_iter()
                .map(|(participant, payload)| pb::Branch {
                    participant,
                    payload,
                })
                .collect(),
            timeout_ms,
            reply_at_decision: self.reply_at_decision,
        };
        let (result, ambiguous) = self
            .client
            .retrying(until, per_call, |mut c, t| {
                let req = req.clone();
                async move { c.execute(with_timeout(req, t)).await }
            })
            .await?;
        match result {
            Ok(resp) => match pb::Outcome::try_from(resp.outcome) {
                Ok(pb::Outcome::Committed) => Ok(TxnOutcome::Committed {
                    txn_id: resp.txn_id,
                }),
                Ok(pb::Outcome::Aborted) => Ok(TxnOutcome::Aborted {
                    txn_id: resp.txn_id,
                    reason: resp.reason,
                }),
                _ => Err(ClientError::Unavailable {
                    txn_id: Some(txn_id),
                    message: format!(
                        "the coordinator answered without an outcome ({})",
                        resp.outcome
                    ),
                }),
            },
            Err(s) if crate::classify(&s) == Retry::Overloaded && !ambiguous => {
                Err(ClientError::Overloaded(s.message().to_string()))
            }
            Err(s) if crate::classify(&s) == Retry::Overloaded => Err(ClientError::Unavailable {
                txn_id: Some(txn_id),
                message: format!(
                    "overloaded after an attempt without an answer: {}",
                    s.message()
                ),
            }),
            Err(s) => Err(ClientError::from_status(s, Some(txn_id))),
        }
    }
}

/// Where a transaction stands in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TxnState {
    Unknown,
    /// Prepares in flight, no decision yet.
    Preparing,
    /// Decided commit; acknowledgements outstanding.
    Committing,
    /// Decided abort; acknowledgements outstanding.
    Aborting,
    Committed,
    Aborted,
}

impl TxnState {
    pub fn as_str(self) -> &'static str {
        match self {
            TxnState::Unknown => "unknown",
            TxnState::Preparing => "preparing",
            TxnState::Committing => "committing",
            TxnState::Aborting => "aborting",
            TxnState::Committed => "committed",
            TxnState::Aborted => "aborted",
        }
    }
}

impl From<i32> for TxnState {
    fn from(v: i32) -> Self {
        match pb::TxnState::try_from(v) {
            Ok(pb::TxnState::Preparing) => TxnState::Preparing,
            Ok(pb::TxnState::Committing) => TxnState::Committing,
            Ok(pb::TxnState::Aborting) => TxnState::Aborting,
            Ok(pb::TxnState::Committed) => TxnState::Committed,
            Ok(pb::TxnState::Aborted) => TxnState::Aborted,
            _ => TxnState::Unknown,
        }
    }
}

/// A transaction as the cluster records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TxnStatus {
    pub txn_id: String,
    pub state: TxnState,
    pub participants: Vec<String>,
    pub reason: String,
    /// Leader wall-clock times (unix ms); 0 = not yet.
    pub created_at_ms: u64,
    pub decided_at_ms: u64,
    pub completed_at_ms: u64,
    pub timeout_ms: u32,
    /// Participants that must still acknowledge the decision.
    pub awaiting_ack: Vec<String>,
}

impl From<pb::TransactionInfo> for TxnStatus {
    fn from(t: pb::TransactionInfo) -> Self {
        TxnStatus {
            state: TxnState::from(t.state),
            txn_id: t.txn_id,
            participants: t.participants,
            reason: t.reason,
            created_at_ms: t.created_at_ms,
            decided_at_ms: t.decided_at_ms,
            completed_at_ms: t.completed_at_ms,
            timeout_ms: t.timeout_ms,
            awaiting_ack: t.awaiting_ack,
        }
    }
}
