//! Running one `Execute` on the leader: join the transaction's driver if one
//! runs, answer a stored outcome, or start a driver; then wait for the
//! applied outcome.
//!
//! Uses [`super::shared`], [`super::registry`] and [`super::driver`].

use super::driver::{self, Start};
use super::registry::DriverStatus;
use super::shared::Shared;
use dtc_core::{Outcome, TxnId, TxnRequest};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Why an `Execute` has no outcome to answer.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error("participant {0:?} is not registered")]
    NotRegistered(String),
    #[error("transaction {0} is already running with a different request")]
    RunningWithOtherRequest(TxnId),
    #[error("transaction {0} already exists with a different request")]
    ExistsWithOtherRequest(TxnId),
    /// The driver refused the request (its reason).
    #[error("{0}")]
    Rejected(String),
    #[error("{0} transactions in flight, the configured maximum; retry later")]
    Busy(usize),
    #[error(
        "{0} transactions pending on the leader (undecided, or decided and waiting for a \
         participant's acknowledgement), the configured maximum (--max-pending); retry later"
    )]
    TooManyPending(usize),
    /// The leader's disk is below its reserve (the message names it).
    #[error("{0}; retry later")]
    DiskFull(String),
    #[error(
        "this node is shutting down and starts no new transaction; retry (another node will lead)"
    )]
    ShuttingDown,
    #[error("leadership changed while transaction {0} ran; retry with the same txn_id")]
    LeadershipLost(TxnId),
    #[error("state read failed: {0}")]
    Store(#[from] dtc_store::StoreError),
}

/// Runs `req` to its applied outcome. `cancel` is the leadership term's
/// token, handed to a driver this call starts.
pub async fn execute(
    shared: &Arc<Shared>,
    req: TxnRequest,
    reply_at_decision: bool,
    cancel: CancellationToken,
) -> Result<Outcome, ExecuteError> {
    for (p, _) in &req.branches {
        if shared.reader.participant(p)?.is_none() {
            return Err(ExecuteError::NotRegistered(p.clone()));
        }
    }
    let digest = req.digest();
    let txn_id = req.txn_id.clone();
    let handle = {
        let mut entries = shared.drivers.lock();
        if let Some(h) = entries.get(&txn_id) {
            if h.digest.is_some() && h.digest != Some(digest) {
                return Err(ExecuteError::RunningWithOtherRequest(txn_id));
            }
            h.clone()
        } else if let Some(record) = shared.reader.get_txn(txn_id.as_str())? {
            if record.digest.is_some() && record.digest != Some(digest) {
                return Err(ExecuteError::ExistsWithOtherRequest(txn_id));
            }
            if let Some(outcome) = record.outcome() {
                return Ok(outcome.clone());
            }
            // Undecided with no driver: takeover has not reached it
            // (cannot happen once ready, but resuming is always safe).
            driver::spawn(shared, &mut entries, Start::Resume(record), cancel)
        } else {
            if shared.draining.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(ExecuteError::ShuttingDown);
            }
            if let Some(why) = shared.disk_reserve.refusal() {
                return Err(ExecuteError::DiskFull(why));
            }
            // Counted under the registry lock, so concurrent calls cannot
            // all pass. Takeover and resumed records are never refused:
            // they are pending already.
            if entries.len() >= shared.config.max_pending {
                return Err(ExecuteError::TooManyPending(shared.config.max_pending));
            }
            let permit = shared
                .in_flight
                .clone()
                .try_acquire_owned()
                .map_err(|_| ExecuteError::Busy(shared.config.max_in_flight))?;
            driver::spawn(
                shared,
                &mut entries,
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
        .wait_for(DriverStatus::is_settled)
        .await
        .map(|s| s.clone())
        .unwrap_or(DriverStatus {
            stopped: true,
            ..Default::default()
        });
    if let Some(why) = decided.rejected {
        return Err(ExecuteError::Rejected(why));
    }
    let Some(outcome) = decided.outcome else {
        return Err(ExecuteError::LeadershipLost(txn_id));
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
    Ok(outcome)
}
