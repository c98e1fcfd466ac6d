//! The driver tasks: each carries out the [`dtc_core::Action`]s of one
//! transaction's [`TxnDriver`] on the leader.
//!
//! One tokio task per transaction owns its `TxnDriver`; the I/O it asks for
//! (prepare, proposals, phase-2 calls) runs in child tasks that report back
//! as events, so a slow participant never blocks another transaction. All
//! tasks of a leadership term share one `CancellationToken`: when the node
//! stops being leader they stop at once, and waiting clients get UNAVAILABLE
//! (they retry with the same id on the new leader, which has taken over).
//!
//! Uses [`super::shared`], [`super::registry`] (each driver holds its
//! [`Registration`]), [`super::proposer`] and [`super::participants`].

use super::participants::{PrepareError, send_decision, send_prepare};
use super::proposer::ProposeError;
use super::registry::{DriverHandle, Entries, Live, Registration};
use super::shared::Shared;
use dtc_core::{Action, Command, CommandResult, Event, RequestDigest, TxnDriver, TxnId, TxnRecord};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info};

/// How a driver starts.
pub enum Start {
    /// A fresh request: propose `Begin`, then prepare every branch.
    New {
        txn_id: TxnId,
        branches: Vec<(String, Vec<u8>)>,
        timeout_ms: u32,
        digest: RequestDigest,
        permit: OwnedSemaphorePermit,
    },
    /// A record found in the pending index (takeover).
    Resume(TxnRecord),
}

/// Why a driver stopped before its transaction was done.
#[derive(Debug, thiserror::Error)]
enum DriveError {
    #[error("leadership lost")]
    LeadershipLost,
    /// A proposal failed: this node is no longer leader (or Raft stopped).
    #[error(transparent)]
    Propose(#[from] ProposeError),
    #[error("unexpected result of {command}: {result}")]
    Unexpected {
        command: &'static str,
        result: String,
    },
    #[error("driver channel closed")]
    ChannelClosed,
}

impl DriveError {
    fn unexpected(command: &'static str, result: &CommandResult) -> Self {
        DriveError::Unexpected {
            command,
            result: format!("{result:?}"),
        }
    }
}

/// Registers a driver for `start` in the locked registry and spawns it.
pub fn spawn(
    shared: &Arc<Shared>,
    entries: &mut Entries<'_>,
    start: Start,
    cancel: CancellationToken,
) -> DriverHandle {
    let (txn_id, digest) = match &start {
        Start::New { txn_id, digest, .. } => (txn_id.clone(), Some(*digest)),
        Start::Resume(r) => (r.txn_id.clone(), r.digest),
    };
    let (mut registration, handle) = entries.register(&txn_id, digest);
    let decisions = registration
        .take_decisions()
        .expect("a fresh registration has its decisions");
    // Every log line of this transaction on this node (its prepares and
    // decisions included: the tasks below run in the span too) carries its
    // id, as the participant SDK's lines do: `txn{txn_id=...}`.
    let span = tracing::info_span!("txn", txn_id = %txn_id);
    let task = DriverTask {
        shared: shared.clone(),
        txn_id,
        prepares: cancel.child_token(),
        cancel,
        live: registration.live.clone(),
        registration,
    };
    tokio::spawn(task.run(start, decisions).instrument(span));
    handle
}

enum Input {
    Core(Event),
    /// A proposal failed, or apply answered something unexpected.
    Failed(DriveError),
    /// The request conflicts with a stored transaction of the same id.
    Rejected(String),
}

struct DriverTask {
    shared: Arc<Shared>,
    txn_id: TxnId,
    cancel: CancellationToken,
    /// Stops the prepare calls once the outcome is applied: a participant
    /// that hangs is not called again for a transaction already decided
    /// (by the deadline, or by an operator long before it).
    prepares: CancellationToken,
    /// What its calls got, for operators (shared with the registry entry).
    live: Arc<Live>,
    /// This driver's registry entry (removed when the task ends).
    registration: Registration,
}

/// Decisions applied through Raft that another party proposed (an
/// operator's abort), handed over by [`Live::adopt`].
type Decisions = mpsc::UnboundedReceiver<Box<TxnRecord>>;

impl DriverTask {
    async fn run(self, start: Start, decisions: Decisions) {
        let outcome = tokio::select! {
            r = self.drive(start, decisions) => r,
            _ = self.cancel.cancelled() => Err(DriveError::LeadershipLost),
        };
        if let Err(why) = outcome {
            debug!(txn_id = %self.txn_id, %why, "driver stopped");
            self.registration.update(|s| s.stopped = true);
        }
    }

    async fn drive(&self, start: Start, mut decisions: Decisions) -> Result<(), DriveError> {
        let now = self.shared.clock_ms();
        // Boxed: a channel allocates a block of 32 slots up front, and a
        // slot of `Input` (a whole record) made that block most of what a
        // driver waiting on a dead participant holds (docs/design.md §3).
        let (tx, mut rx) = mpsc::unbounded_channel::<Box<Input>>();
        let (mut driver, actions, mut payloads, mut permit) = match start {
            Start::New {
                txn_id,
                branches,
                timeout_ms,
                digest,
                permit,
            } => {
                let participants: Vec<String> = branches.iter().map(|(p, _)| p.clone()).collect();
                // `Begin` is queued first, then prepares leave while it
                // replicates, and the decision follows it in the proposer's
                // queue without waiting for it to apply (see
                // `TxnDriver::start_before_begin` for why every crash point
                // stays safe).
                let (d, a) = TxnDriver::start_before_begin(&txn_id, &participants, timeout_ms, now);
                self.propose_begin(
                    Command::Begin {
                        txn_id,
                        participants,
                        digest,
                        timeout_ms,
                        at_ms: dtc_util::wall_ms(),
                    },
                    digest,
                    &tx,
                );
                let payloads: HashMap<String, Vec<u8>> = branches.into_iter().collect();
                (d, a, payloads, Some(permit))
            }
            Start::Resume(record) => {
                let (d, a) = TxnDriver::take_over(&record, now);
                (d, a, HashMap::new(), None)
            }
        };
        let mut queue: VecDeque<Action> = actions.into();
        // Phase timings for the metrics (from this driver's start: a
        // resumed transaction is timed from its takeover).
        let started = Instant::now();
        let mut proposed_at: Option<Instant> = None;
        let mut decided_at: Option<Instant> = None;
        let metrics = &self.shared.metrics;
        loop {
            while let Some(action) = queue.pop_front() {
                match &action {
                    Action::ProposeDecision { .. } => {
                        metrics.phase("prepare", started.elapsed());
                        proposed_at = Some(Instant::now());
                    }
                    Action::ProposeComplete => {
                        if let Some(at) = decided_at {
                            metrics.phase("commit", at.elapsed());
                        }
                        metrics
                            .transaction_duration
                            .observe(started.elapsed().as_secs_f64());
                    }
                    Action::Finished { outcome } => metrics.decided(outcome.is_commit()),
                    _ => {}
                }
                if matches!(action, Action::Finished { .. }) {
                    // "In flight" bounds undecided transactions: a decided
                    // one waiting on a slow participant no longer counts.
                    drop(permit.take());
                }
                let prepared = matches!(
                    action,
                    Action::ProposeDecision { .. } | Action::Finished { .. }
                );
                self.execute(action, &payloads, &tx);
                if prepared {
                    // Payloads serve only prepare; a decided transaction may
                    // wait long for a dead participant, so free them now.
                    payloads = HashMap::new();
                }
            }
            if driver.is_done() {
                self.registration.update(|s| s.done = true);
                return Ok(());
            }
            let timed = *driver.stage() == dtc_core::driver::Stage::Preparing;
            let wait =
                Duration::from_millis(driver.deadline_ms().saturating_sub(self.shared.clock_ms()));
            let input = tokio::select! {
                input = rx.recv() => input.map(|i| *i),
                _ = tokio::time::sleep(wait), if timed => {
                    Some(Input::Core(Event::Tick { now_ms: self.shared.clock_ms() }))
                }
                // Someone else's decision won in apply (an operator's abort,
                // possibly while our prepares still wait): the applied
                // record is the truth, adopted like our own (corner case 1).
                Some(record) = decisions.recv() => {
                    Some(Input::Core(Event::DecisionApplied { record: *record }))
                }
            };
            if let Some(Input::Core(Event::DecisionApplied { .. })) = &input {
                decided_at = Some(Instant::now());
                if let Some(at) = proposed_at {
                    metrics.phase("decide", at.elapsed());
                }
            }
            match input {
                Some(Input::Core(event)) => queue.extend(driver.step(event)),
                Some(Input::Failed(why)) => return Err(why),
                Some(Input::Rejected(why)) => {
                    self.registration.update(|s| s.rejected = Some(why));
                    return Ok(());
                }
                None => return Err(DriveError::ChannelClosed),
            }
        }
    }

    /// Queues the `Begin` of a new transaction now (before anything else of
    /// the transaction can be proposed) and reports `BeginApplied` (or why
    /// not) back to the driver from its own task.
    fn propose_begin(
        &self,
        begin: Command,
        digest: RequestDigest,
        tx: &mpsc::UnboundedSender<Box<Input>>,
    ) {
        let applied = self.shared.proposer.submit(begin);
        let tx = tx.clone();
        spawn_in_span(async move {
            let input = match applied.await {
                Ok(CommandResult::Begun { record, created }) => {
                    if !created && record.digest.is_some() && record.digest != Some(digest) {
                        // `Execute` checked under the registry lock that the
                        // id was unknown, so this means a bug elsewhere. The
                        // early prepares carry this request's payloads: the
                        // participants that prepared them learn their fate
                        // from an outcome query, which answers abort to a
                        // participant the stored transaction does not name.
                        error!(txn_id = %record.txn_id, "Begin found an existing transaction with a different request");
                        Input::Rejected(format!(
                            "transaction {} already exists with a different request",
                            record.txn_id
                        ))
                    } else {
                        Input::Core(Event::BeginApplied { record })
                    }
                }
                Ok(other) => Input::Failed(DriveError::unexpected("Begin", &other)),
                Err(e) => Input::Failed(e.into()),
            };
            let _ = tx.send(Box::new(input));
        });
    }

    fn execute(
        &self,
        action: Action,
        payloads: &HashMap<String, Vec<u8>>,
        tx: &mpsc::UnboundedSender<Box<Input>>,
    ) {
        let shared = self.shared.clone();
        let live = self.live.clone();
        let txn_id = self.txn_id.clone();
        let tx = tx.clone();
        let cancel = self.cancel.clone();
        match action {
            Action::SendPrepare {
                participant,
                remaining_ms,
            } => {
                // Crash point: no prepare has left; `Begin` is replicating
                // (it may or may not commit).
                dtc_util::crash_point!("coordinator.prepare.before_send", txn = txn_id.as_str());
                let payload = payloads.get(&participant).cloned().unwrap_or_default();
                let cancel = self.prepares.clone();
                spawn_in_span(async move {
                    let deadline = Instant::now() + Duration::from_millis(remaining_ms);
                    let run =
                        send_prepare(&shared, &live, &txn_id, &participant, payload, deadline);
                    tokio::select! {
                        answer = run => {
                            let event = match answer {
                                Ok(vote) => Event::VoteReceived { participant, vote },
                                Err(PrepareError::Failed(e)) => Event::PrepareFailed {
                                    participant,
                                    reason: e.to_string(),
                                },
                                Err(PrepareError::Deadline) => return,
                            };
                            let _ = tx.send(Box::new(Input::Core(event)));
                        }
                        _ = cancel.cancelled() => {}
                    }
                });
            }
            Action::ProposeDecision { outcome, phase2 } => {
                // Crash point: prepares were sent (and answered), the
                // decision is not proposed yet. Only drivers of new requests
                // (they hold payloads), not takeover drivers.
                if !payloads.is_empty() {
                    dtc_util::crash_point!(
                        "coordinator.decision.before_propose",
                        txn = txn_id.as_str()
                    );
                }
                spawn_in_span(async move {
                    let cmd = Command::Decide {
                        txn_id,
                        outcome,
                        phase2,
                        at_ms: dtc_util::wall_ms(),
                    };
                    let input = match shared.propose(cmd).await {
                        Ok(CommandResult::Decided { record }) => {
                            // Crash point: the decision is committed and
                            // applied; no participant has heard it.
                            dtc_util::crash_point!(
                                "coordinator.decision.before_phase2",
                                txn = record.txn_id.as_str()
                            );
                            Input::Core(Event::DecisionApplied { record })
                        }
                        Ok(other) => Input::Failed(DriveError::unexpected("Decide", &other)),
                        Err(e) => Input::Failed(e.into()),
                    };
                    let _ = tx.send(Box::new(input));
                });
            }
            Action::SendDecision {
                participant,
                outcome,
            } => {
                spawn_in_span(async move {
                    let run = send_decision(&shared, &live, &txn_id, &participant, &outcome);
                    tokio::select! {
                        () = run => {
                            let _ = tx.send(Box::new(Input::Core(Event::Acked { participant })));
                        }
                        _ = cancel.cancelled() => {}
                    }
                });
            }
            Action::ProposeComplete => {
                self.registration.update(|s| s.acked = true);
                spawn_in_span(async move {
                    let cmd = Command::Complete {
                        txn_id,
                        at_ms: dtc_util::wall_ms(),
                    };
                    let input = match shared.propose(cmd).await {
                        Ok(_) => Input::Core(Event::CompleteApplied),
                        Err(e) => Input::Failed(e.into()),
                    };
                    let _ = tx.send(Box::new(input));
                });
            }
            Action::Finished { outcome } => {
                info!(txn_id = %self.txn_id, outcome = ?outcome, "transaction decided");
                self.prepares.cancel();
                self.registration.update(|s| s.outcome = Some(outcome));
            }
        }
    }
}

/// `tokio::spawn` in the current span (the transaction's), which a spawned
/// task would otherwise leave.
fn spawn_in_span<F>(task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(task.in_current_span())
}
