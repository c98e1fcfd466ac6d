//! Answering a participant's outcome query on the leader, with presumed
//! abort for a transaction nobody knows (corner case 3).
//!
//! Uses [`super::shared`] and [`super::registry`] (a claim holds the id while
//! the abort is recorded).

use super::proposer::ProposeError;
use super::shared::Shared;
use dtc_core::{Command, CommandResult, Outcome, TxnId};

/// Why an outcome query has no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("state read failed: {0}")]
    Store(#[from] dtc_store::StoreError),
    /// The presumed abort could not be recorded (not leader any more).
    #[error("cannot record the outcome: {0}")]
    Propose(#[from] ProposeError),
    #[error("unexpected apply result {0}")]
    Unexpected(String),
    #[error(
        "{0} outcome queries are being answered on the leader, the configured maximum \
         (--max-outcome-queries); ask again later"
    )]
    Busy(usize),
}

/// The outcome of `txn_id` for `participant` (may be empty), or `None`
/// while it is not decided yet.
pub async fn query_outcome(
    shared: &Shared,
    txn_id: TxnId,
    participant: &str,
) -> Result<Option<Outcome>, QueryError> {
    // Bounded: a query of an unknown id holds a registry claim and a
    // proposal until its abort is applied, and a flood of them (a buggy or
    // hostile caller) must not queue without end behind a slow Raft. A
    // refused participant asks again on its next round.
    let _permit = shared
        .outcome_queries
        .clone()
        .try_acquire_owned()
        .map_err(|_| QueryError::Busy(shared.config.max_outcome_queries))?;
    let claim = {
        let mut entries = shared.drivers.lock();
        // Checked under the lock: drivers register (and only then propose
        // Begin) under it too, so no Begin can slip in.
        let record = shared.reader.get_txn(txn_id.as_str())?;
        if let Some(r) = &record
            && !participant.is_empty()
            && r.digest.is_some()
            && !r.participants.iter().any(|p| p == participant)
        {
            // Whatever this participant prepared under this id was not part
            // of the stored transaction (prepares leave before `Begin`
            // commits): abort is its answer.
            return Ok(Some(Outcome::abort(format!(
                "participant {participant} is not a participant of transaction {txn_id}"
            ))));
        }
        if let Some(running) = entries.get(&txn_id) {
            // A driver runs it (or another query is deciding it): its
            // applied outcome once there is one, else "ask later".
            return Ok(running.status.borrow().outcome.clone());
        }
        if let Some(record) = record {
            return Ok(record.outcome().cloned());
        }
        entries.claim(&txn_id)
    };
    // Presumed abort: record the abort through Raft first, then answer what
    // was applied.
    let applied = shared
        .propose(Command::Decide {
            txn_id,
            outcome: Outcome::abort(
                "unknown to the coordinator when a participant asked (presumed abort)",
            ),
            phase2: vec![],
            at_ms: dtc_util::wall_ms(),
        })
        .await?;
    match applied {
        CommandResult::Decided { record } => {
            if let Some(outcome) = record.outcome() {
                claim.finish(outcome);
            }
            Ok(record.outcome().cloned())
        }
        other => Err(QueryError::Unexpected(format!("{other:?}"))),
    }
}
