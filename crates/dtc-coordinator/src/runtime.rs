//! The driver runtime: carries out the [`dtc_core::Action`]s of each
//! transaction's [`TxnDriver`] on the leader, and runs takeover when this
//! node becomes leader.
//!
//! One tokio task per transaction owns its `TxnDriver`; the I/O it asks for
//! (prepare, proposals, phase-2 calls) runs in child tasks that report back
//! as events, so a slow participant never blocks another transaction. All
//! tasks of a leadership term share one `CancellationToken`: when the node
//! stops being leader they stop at once, and waiting clients get UNAVAILABLE
//! (they retry with the same id on the new leader, which has taken over).

use crate::metrics::KindLabel;
use crate::node::Shared;
use dtc_core::{
    Action, Command, CommandResult, Event, Outcome, RequestDigest, TxnDriver, TxnId, TxnRecord,
};
use dtc_proto::v1::{
    AbortRequest, CommitRequest, PrepareRequest, participant_client::ParticipantClient,
};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// What waiting clients can see of a running transaction.
#[derive(Debug, Clone, Default)]
pub struct DriverStatus {
    /// The applied outcome, once known.
    pub outcome: Option<Outcome>,
    /// Every phase-2 participant acknowledged the outcome (`Complete` may
    /// still be replicating: nobody needs to wait for it).
    pub acked: bool,
    /// Every participant acknowledged and `Complete` was applied.
    pub done: bool,
    /// The driver stopped before finishing (leadership lost).
    pub stopped: bool,
    /// The request was refused (same id, different request).
    pub rejected: Option<String>,
}

/// A running driver, as seen by clients that join it.
#[derive(Clone)]
pub struct DriverHandle {
    /// Unique per spawn, so a finished driver only removes its own entry.
    pub serial: u64,
    /// Digest of the request being run (None for drivers resumed by takeover
    /// of a record created without a request).
    pub digest: Option<RequestDigest>,
    pub status: watch::Receiver<DriverStatus>,
}

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

static SERIAL: AtomicU64 = AtomicU64::new(1);

/// Spawns a driver and registers it. The caller holds the drivers lock.
pub fn spawn_driver(
    shared: &Arc<Shared>,
    drivers: &mut HashMap<TxnId, DriverHandle>,
    start: Start,
    cancel: CancellationToken,
) -> DriverHandle {
    let (txn_id, digest) = match &start {
        Start::New { txn_id, digest, .. } => (txn_id.clone(), Some(*digest)),
        Start::Resume(r) => (r.txn_id.clone(), r.digest),
    };
    let (status_tx, status_rx) = watch::channel(DriverStatus::default());
    let handle = DriverHandle {
        serial: SERIAL.fetch_add(1, Ordering::Relaxed),
        digest,
        status: status_rx,
    };
    drivers.insert(txn_id.clone(), handle.clone());
    let task = DriverTask {
        shared: shared.clone(),
        txn_id,
        serial: handle.serial,
        cancel,
        status: status_tx,
    };
    tokio::spawn(task.run(start));
    handle
}

/// Reserves a transaction id in the driver registry while something other
/// than a driver decides it (a presumed-abort outcome query), so that an
/// `Execute` of that id arriving meanwhile joins and gets the same answer
/// instead of slipping a `Begin` in between the query's check and its abort.
pub struct Claim {
    shared: Arc<Shared>,
    txn_id: TxnId,
    serial: u64,
    status: watch::Sender<DriverStatus>,
}

impl Claim {
    /// The caller holds the drivers lock and has checked the id is free.
    pub fn new(
        shared: &Arc<Shared>,
        drivers: &mut HashMap<TxnId, DriverHandle>,
        txn_id: &TxnId,
    ) -> Claim {
        let (status, rx) = watch::channel(DriverStatus::default());
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        drivers.insert(
            txn_id.clone(),
            DriverHandle {
                serial,
                digest: None,
                status: rx,
            },
        );
        Claim {
            shared: shared.clone(),
            txn_id: txn_id.clone(),
            serial,
            status,
        }
    }

    /// Publishes the applied outcome to anyone who joined.
    pub fn finish(&self, outcome: &Outcome) {
        self.status.send_modify(|s| {
            s.outcome = Some(outcome.clone());
            s.done = true;
        });
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.status
            .send_modify(|s| s.stopped |= s.outcome.is_none());
        let mut drivers = self.shared.lock_drivers();
        if drivers.get(&self.txn_id).map(|h| h.serial) == Some(self.serial) {
            drivers.remove(&self.txn_id);
        }
    }
}

enum Input {
    Core(Event),
    /// A proposal failed: this node is no longer leader (or Raft stopped).
    ProposalFailed(String),
    /// The request conflicts with a stored transaction of the same id.
    Rejected(String),
}

struct DriverTask {
    shared: Arc<Shared>,
    txn_id: TxnId,
    serial: u64,
    cancel: CancellationToken,
    status: watch::Sender<DriverStatus>,
}

impl DriverTask {
    async fn run(self, start: Start) {
        let outcome = tokio::select! {
            r = self.drive(start) => r,
            _ = self.cancel.cancelled() => Err("leadership lost".to_string()),
        };
        if let Err(why) = outcome {
            debug!(txn_id = %self.txn_id, %why, "driver stopped");
            self.status.send_modify(|s| s.stopped = true);
        }
        let mut drivers = self.shared.lock_drivers();
        if drivers.get(&self.txn_id).map(|h| h.serial) == Some(self.serial) {
            drivers.remove(&self.txn_id);
        }
    }

    async fn drive(&self, start: Start) -> Result<(), String> {
        let now = self.shared.clock_ms();
        let (tx, mut rx) = mpsc::unbounded_channel::<Input>();
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
                self.status.send_modify(|s| s.done = true);
                return Ok(());
            }
            let timed = *driver.stage() == dtc_core::driver::Stage::Preparing;
            let wait =
                Duration::from_millis(driver.deadline_ms().saturating_sub(self.shared.clock_ms()));
            let input = tokio::select! {
                input = rx.recv() => input,
                _ = tokio::time::sleep(wait), if timed => {
                    Some(Input::Core(Event::Tick { now_ms: self.shared.clock_ms() }))
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
                Some(Input::ProposalFailed(why)) => return Err(why),
                Some(Input::Rejected(why)) => {
                    self.status.send_modify(|s| s.rejected = Some(why));
                    return Ok(());
                }
                None => return Err("driver channel closed".into()),
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
        tx: &mpsc::UnboundedSender<Input>,
    ) {
        let applied = self.shared.proposer.submit(begin);
        let tx = tx.clone();
        tokio::spawn(async move {
            let input = match applied.await {
                Ok(CommandResult::Begun { record, created }) => {
                    if !created && record.digest.is_some() && record.digest != Some(digest) {
                        // `Execute` checked under the drivers lock that the id
                        // was unknown, so this means a bug elsewhere. The early
                        // prepares carry this request's payloads: the
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
                Ok(other) => {
                    Input::ProposalFailed(format!("unexpected result of Begin: {other:?}"))
                }
                Err(e) => Input::ProposalFailed(e),
            };
            let _ = tx.send(input);
        });
    }

    fn execute(
        &self,
        action: Action,
        payloads: &HashMap<String, Vec<u8>>,
        tx: &mpsc::UnboundedSender<Input>,
    ) {
        let shared = self.shared.clone();
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
                tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_millis(remaining_ms);
                    let run = send_prepare(&shared, &txn_id, &participant, payload, deadline);
                    tokio::select! {
                        answer = run => {
                            let event = match answer {
                                Some(Ok(vote)) => Event::VoteReceived { participant, vote },
                                Some(Err(reason)) => Event::PrepareFailed { participant, reason },
                                None => return,
                            };
                            let _ = tx.send(Input::Core(event));
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
                tokio::spawn(async move {
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
                        Ok(other) => Input::ProposalFailed(format!("unexpected result {other:?}")),
                        Err(e) => Input::ProposalFailed(e),
                    };
                    let _ = tx.send(input);
                });
            }
            Action::SendDecision {
                participant,
                outcome,
            } => {
                tokio::spawn(async move {
                    let run = send_decision(&shared, &txn_id, &participant, &outcome);
                    tokio::select! {
                        () = run => {
                            let _ = tx.send(Input::Core(Event::Acked { participant }));
                        }
                        _ = cancel.cancelled() => {}
                    }
                });
            }
            Action::ProposeComplete => {
                self.status.send_modify(|s| s.acked = true);
                tokio::spawn(async move {
                    let cmd = Command::Complete {
                        txn_id,
                        at_ms: dtc_util::wall_ms(),
                    };
                    let input = match shared.propose(cmd).await {
                        Ok(_) => Input::Core(Event::CompleteApplied),
                        Err(e) => Input::ProposalFailed(e),
                    };
                    let _ = tx.send(input);
                });
            }
            Action::Finished { outcome } => {
                info!(txn_id = %self.txn_id, outcome = ?outcome, "transaction decided");
                self.status.send_modify(|s| s.outcome = Some(outcome));
            }
        }
    }
}

/// Retry delays for calls to participants and for takeover.
fn backoff() -> impl Iterator<Item = Duration> {
    dtc_util::backoff(Duration::from_millis(20), Duration::from_secs(2))
}

fn participant_client(
    shared: &Shared,
    participant: &str,
) -> Result<ParticipantClient<tonic::transport::Channel>, String> {
    // Looked up on every attempt: a participant that re-registered on a new
    // endpoint is reached there on the next retry (corner case 15).
    let endpoint = shared
        .reader
        .participant(participant)
        .map_err(|e| format!("registry read failed: {e}"))?
        .ok_or_else(|| format!("participant {participant} is not registered"))?;
    let channel = shared.channels.get(&endpoint).map_err(|e| e.to_string())?;
    Ok(ParticipantClient::new(channel)
        .max_decoding_message_size(dtc_proto::wire::MAX_MESSAGE_BYTES))
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

/// Sends `Prepare` until an answer arrives or the deadline passes; transport
/// failures are retried. `Some(Ok(vote))`: the participant voted;
/// `Some(Err(why))`: the call failed without a vote (an error status, or an
/// unregistered participant); `None`: no answer before the deadline (the
/// driver's deadline tick decides).
async fn send_prepare(
    shared: &Shared,
    txn_id: &TxnId,
    participant: &str,
    payload: Vec<u8>,
    deadline: Instant,
) -> Option<Result<dtc_core::Vote, String>> {
    let mut delays = backoff();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return None;
        }
        let mut client = match participant_client(shared, participant) {
            Ok(c) => c,
            Err(why) => return Some(Err(why)),
        };
        let mut req = tonic::Request::new(PrepareRequest {
            txn_id: txn_id.to_string(),
            participant: participant.to_string(),
            payload: payload.clone(),
            remaining_ms: remaining.as_millis().min(u32::MAX as u128) as u32,
        });
        req.set_timeout(remaining);
        let sent = Instant::now();
        match client.prepare(req).await {
            Ok(resp) => {
                shared.metrics.prepared(participant, sent.elapsed());
                return Some(Ok(dtc_proto::vote_from_wire(&resp.into_inner())));
            }
            Err(status) if is_transient(&status) => {
                shared.metrics.retry("prepare");
                debug!(%txn_id, participant, %status, "prepare failed; retrying");
            }
            Err(status) if status.code() == tonic::Code::DeadlineExceeded => return None,
            Err(status) => {
                return Some(Err(format!("{}: {}", status.code(), status.message())));
            }
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(1));
        tokio::time::sleep(delay.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// Sends the decision until the participant acknowledges. Never gives up:
/// a prepared participant holds locks until it hears (corner case 9); the
/// caller's cancellation stops it when leadership moves.
async fn send_decision(shared: &Shared, txn_id: &TxnId, participant: &str, outcome: &Outcome) {
    let mut delays = backoff();
    let mut attempt: u64 = 0;
    loop {
        attempt += 1;
        let result = match participant_client(shared, participant) {
            Ok(mut client) => {
                let r = match outcome {
                    Outcome::Commit => {
                        let mut req = tonic::Request::new(CommitRequest {
                            txn_id: txn_id.to_string(),
                            participant: participant.to_string(),
                        });
                        req.set_timeout(shared.config.rpc_timeout);
                        client.commit(req).await.map(|_| ())
                    }
                    Outcome::Abort { reason } => {
                        let mut req = tonic::Request::new(AbortRequest {
                            txn_id: txn_id.to_string(),
                            participant: participant.to_string(),
                            reason: reason.clone(),
                        });
                        req.set_timeout(shared.config.rpc_timeout);
                        client.abort(req).await.map(|_| ())
                    }
                };
                r.map_err(|s| (s.code(), s.message().to_string()))
            }
            Err(why) => Err((tonic::Code::Unavailable, why)),
        };
        match result {
            Ok(()) => return,
            Err((code, msg)) => {
                shared.metrics.retry("decision");
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
            }
        }
        tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(2))).await;
    }
}

/// Runs when this node becomes leader of `term`: waits until everything
/// committed before the term is applied (corner case 2), reads the pending
/// index, and resumes a driver for every transaction in it.
pub async fn take_over(shared: Arc<Shared>, term: u64, cancel: CancellationToken) {
    let started = Instant::now();
    let mut delays = backoff();
    loop {
        // Catch up with a barrier: an empty entry of this term, written
        // through Raft and applied. Its apply means every entry before it in
        // this leader's log is applied, which is what the scan must see.
        // (`ensure_linearizable` is not enough: a leader restarted into its
        // own term, as openraft allows, waits only for its stale committed
        // index, and state-machine applies lost in the crash were not yet
        // re-applied: a decided transaction was missed that way.)
        let caught_up = tokio::select! {
            r = shared.propose(Command::Batch(Vec::new())) => r,
            _ = cancel.cancelled() => return,
        };
        match caught_up {
            Ok(_) => break,
            // No quorum yet (peers still starting, or a partition): keep
            // trying for as long as this term lasts; the watcher cancels us
            // if leadership moves.
            Err(e) => {
                warn!(term, error = %e, "takeover: cannot confirm leadership yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))) => {}
                    _ = cancel.cancelled() => return,
                }
            }
        }
    }
    let catch_up = started.elapsed();
    // A failed scan is retried for as long as the term lasts: giving up
    // would leave a leader that heartbeats (so nobody replaces it) but never
    // becomes ready.
    let (pending, scan) = loop {
        let scan_started = Instant::now();
        let reader = shared.reader.clone();
        let why = match tokio::task::spawn_blocking(move || {
            // Crash point: a new leader dies while reading the pending index.
            dtc_util::crash_point!("coordinator.takeover.scan");
            reader.pending()
        })
        .await
        {
            Ok(Ok(p)) => break (p, scan_started.elapsed()),
            Ok(Err(e)) => format!("cannot read the pending index: {e}"),
            Err(e) => format!("scan task failed: {e}"),
        };
        error!(term, error = %why, "takeover: scan failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))) => {}
            _ = cancel.cancelled() => return,
        }
    };
    let (mut undecided, mut decided) = (0usize, 0usize);
    {
        let mut drivers = shared.lock_drivers();
        for record in pending {
            if drivers.contains_key(&record.txn_id) {
                continue;
            }
            if record.outcome().is_some() {
                decided += 1;
            } else {
                undecided += 1;
            }
            spawn_driver(&shared, &mut drivers, Start::Resume(record), cancel.clone());
        }
    }
    info!(
        term,
        pending = undecided + decided,
        undecided,
        decided,
        catch_up_ms = catch_up.as_secs_f64() * 1e3,
        scan_ms = scan.as_secs_f64() * 1e3,
        "takeover: found {} pending transactions; scan took {:.2} ms",
        undecided + decided,
        scan.as_secs_f64() * 1e3
    );
    shared.metrics.takeovers.inc();
    shared.metrics.last_takeover_term.set(term as i64);
    for (kind, n) in [("undecided", undecided), ("decided", decided)] {
        shared
            .metrics
            .last_takeover_transactions
            .get_or_create(&KindLabel { kind })
            .set(n as i64);
    }
    shared
        .metrics
        .last_takeover_seconds
        .set(started.elapsed().as_secs_f64());
    shared.mark_ready(term);
}
