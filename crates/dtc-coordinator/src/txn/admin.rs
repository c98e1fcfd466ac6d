//! Operator actions on the leader, for transactions that do not finish:
//! look at one (the record and its driver's live progress), list the
//! pending or in-doubt ones, retry the calls it waits on now, and resolve
//! an undecided one by aborting it.
//!
//! Resolving is a decision like any other: `Decide(abort)` through Raft,
//! first decision wins (invariant 2: one decision per transaction id). A
//! driver still preparing the transaction may propose its own decision at
//! the same moment; apply keeps whichever comes first, and both sides act
//! on the applied record: the driver adopts the operator's abort (handed
//! over with [`Live::adopt`]) or the operator is told the driver's decision
//! won. Either way phase 2 is the driver's usual one.
//!
//! Uses [`super::shared`], [`super::registry`] and [`super::driver`] (to
//! start a driver for a pending transaction nobody drives).

use super::driver::{self, Start};
use super::proposer::ProposeError;
use super::registry::{BranchProgress, DriverStatus, Live};
use super::shared::Shared;
use dtc_core::{Command, CommandResult, Outcome, Phase, TxnId, TxnRecord};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why an operator action has no answer.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("transaction {0} is unknown (never run, past the retention window, or not begun yet)")]
    NotFound(TxnId),
    /// Resolve of a transaction that has a decision (the message names it).
    #[error("transaction {txn_id} is already decided: {}; only an undecided transaction can be resolved", describe(.outcome))]
    AlreadyDecided { txn_id: TxnId, outcome: Outcome },
    #[error("state read failed: {0}")]
    Store(#[from] dtc_store::StoreError),
    /// The decision could not be recorded (not leader any more). Boxed:
    /// openraft's errors are large and this is the rare path.
    #[error("cannot record the decision: {0}; retry")]
    Propose(Box<ProposeError>),
    #[error("unexpected apply result {0}")]
    Unexpected(String),
}

impl From<ProposeError> for AdminError {
    fn from(e: ProposeError) -> Self {
        AdminError::Propose(Box::new(e))
    }
}

/// An outcome in words, as operators read it.
pub fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Commit => "committed".into(),
        Outcome::Abort { reason } => format!("aborted ({reason})"),
    }
}

/// One transaction as the leader sees it.
#[derive(Debug, Clone)]
pub struct TxnView {
    pub record: TxnRecord,
    /// The driver's progress per participant, when a driver runs it here.
    pub live: Option<BTreeMap<String, BranchProgress>>,
}

/// What [`retry`] did.
#[derive(Debug, Clone)]
pub enum Retried {
    /// Already complete: nothing to send.
    Complete,
    /// The running driver's calls were woken.
    Woken { finished: bool },
    /// Pending with no driver here: one was started (as a takeover does).
    Started { finished: bool },
}

/// What [`resolve`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// The abort was recorded now.
    Aborted,
    /// This same abort (same recorded reason) stood already.
    Already,
}

fn live_of(shared: &Shared, txn_id: &TxnId) -> Option<Arc<Live>> {
    shared.drivers.lock().get(txn_id).map(|h| h.live.clone())
}

/// The record of `txn_id` and its driver's progress.
pub fn view(shared: &Shared, txn_id: &TxnId) -> Result<TxnView, AdminError> {
    // The driver's entry first: a driver that finishes in between leaves a
    // record at least as far along as its progress says.
    let live = live_of(shared, txn_id);
    let record = shared
        .reader
        .get_txn(txn_id.as_str())?
        .ok_or_else(|| AdminError::NotFound(txn_id.clone()))?;
    Ok(TxnView {
        record,
        live: live.map(|l| l.progress()),
    })
}

/// How long a pending transaction has waited on its participants in its
/// current phase, by the leader's wall clock `now_ms`: since it began while
/// undecided, since the decision while acknowledgements are missing; 0 once
/// complete.
pub fn waiting_ms(record: &TxnRecord, now_ms: u64) -> u64 {
    match &record.phase {
        Phase::Preparing => now_ms.saturating_sub(record.created_ms),
        Phase::Decided { decided_ms, .. } => now_ms.saturating_sub(*decided_ms),
        Phase::Completed { .. } => 0,
    }
}

/// Pending transactions with ids after `after`, at most `limit` scanned;
/// with `min_waiting_ms`, only those that waited at least that long (in
/// doubt). Returns them and the id to continue after, if more are pending.
pub fn list_pending(
    shared: &Shared,
    min_waiting_ms: Option<u64>,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<TxnView>, Option<String>), AdminError> {
    let mut records = shared.reader.list_txns(true, after, limit + 1)?;
    let next = if records.len() > limit {
        records.truncate(limit);
        records.last().map(|r| r.txn_id.to_string())
    } else {
        None
    };
    let now = dtc_util::wall_ms();
    let views = records
        .into_iter()
        .filter(|r| min_waiting_ms.is_none_or(|min| waiting_ms(r, now) >= min))
        .map(|record| {
            let live = live_of(shared, &record.txn_id).map(|l| l.progress());
            TxnView { record, live }
        })
        .collect();
    Ok((views, next))
}

/// Sends every call `txn_id` waits on now, then waits at most `wait` for
/// phase 2 to finish. A pending transaction no driver runs gets one, as a
/// takeover would start it (an undecided one is then aborted: nobody holds
/// its payloads to prepare it again). `cancel` is the leadership term's.
pub async fn retry(
    shared: &Arc<Shared>,
    txn_id: &TxnId,
    wait: Duration,
    cancel: CancellationToken,
) -> Result<Retried, AdminError> {
    let (handle, started) = {
        let mut entries = shared.drivers.lock();
        if let Some(h) = entries.get(txn_id) {
            (h.clone(), false)
        } else {
            let record = shared
                .reader
                .get_txn(txn_id.as_str())?
                .ok_or_else(|| AdminError::NotFound(txn_id.clone()))?;
            if !record.is_pending() {
                return Ok(Retried::Complete);
            }
            let h = driver::spawn(shared, &mut entries, Start::Resume(record), cancel);
            (h, true)
        }
    };
    handle.live.wake();
    let mut status = handle.status;
    let finished = tokio::time::timeout(wait, status.wait_for(phase2_over))
        .await
        .ok()
        .and_then(Result::ok)
        .is_some_and(|s| s.acked || s.done);
    Ok(if started {
        Retried::Started { finished }
    } else {
        Retried::Woken { finished }
    })
}

/// Nothing more for a retry to wait for.
fn phase2_over(s: &DriverStatus) -> bool {
    s.acked || s.done || s.stopped || s.rejected.is_some()
}

/// Aborts `txn_id` if it has no decision yet, recording `reason` (which
/// says who asked). The abort goes to every participant (any may have
/// prepared), by the transaction's driver, or by one started for it.
pub async fn resolve_abort(
    shared: &Arc<Shared>,
    txn_id: &TxnId,
    reason: String,
    cancel: CancellationToken,
) -> Result<Resolved, AdminError> {
    let ours = Outcome::abort(reason);
    let record = shared
        .reader
        .get_txn(txn_id.as_str())?
        .ok_or_else(|| AdminError::NotFound(txn_id.clone()))?;
    if let Some(standing) = record.outcome() {
        return settled(txn_id, standing, &ours);
    }
    let applied = shared
        .propose(Command::Decide {
            txn_id: txn_id.clone(),
            outcome: ours.clone(),
            phase2: record.participants.clone(),
            at_ms: dtc_util::wall_ms(),
        })
        .await?;
    let CommandResult::Decided { record: applied } = applied else {
        return Err(AdminError::Unexpected(format!("{applied:?}")));
    };
    match applied.outcome() {
        Some(o) if *o == ours => {}
        // The driver's decision (or another operator's) was applied first.
        Some(other) => return settled(txn_id, other, &ours),
        None => return Err(AdminError::Unexpected(format!("{applied:?}"))),
    }
    {
        let mut entries = shared.drivers.lock();
        if let Some(h) = entries.get(txn_id) {
            // The driver adopts the applied abort, wherever it is: still
            // waiting for votes, or deciding itself (its own proposal then
            // comes back with this abort).
            h.live.adopt(applied.clone());
        } else if let Some(now) = shared.reader.get_txn(txn_id.as_str())?
            && now.is_pending()
        {
            driver::spawn(shared, &mut entries, Start::Resume(now), cancel);
        }
    }
    Ok(Resolved::Aborted)
}

/// A decision stands already: this same abort is success (a retried
/// call), anything else is refused, naming it.
fn settled(txn_id: &TxnId, standing: &Outcome, ours: &Outcome) -> Result<Resolved, AdminError> {
    if standing == ours {
        Ok(Resolved::Already)
    } else {
        Err(AdminError::AlreadyDecided {
            txn_id: txn_id.clone(),
            outcome: standing.clone(),
        })
    }
}
