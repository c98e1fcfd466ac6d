//! The single writer: every Prepare, Commit and Abort (from the coordinator
//! or from the in-doubt resolver) runs here, one at a time, in its own redb
//! write transaction, on a dedicated thread (never on a tokio worker).
//!
//! **Group commit.** Each operation commits with `Durability::None`; after a
//! batch of queued operations the writer makes them all durable with one
//! `Durability::Immediate` commit (one fsync), and only then are the answers
//! released. So no vote or acknowledgement leaves the process before the
//! record behind it is synced (corner case 19), each operation still rolls
//! back alone (a refused prepare discards only its own changes), and a busy
//! participant pays one sync per batch instead of one per call.
//!
//! **Idempotency.** Every operation first reads the transaction's record in
//! its own write transaction. redb admits one writer at a time and there is
//! one writer thread, so two duplicate Prepares can never both run the
//! resource: the second finds the first one's record and returns its answer.
//!
//! **Lock wait.** A resource votes [`Vote::Busy`] when other prepared
//! transactions hold what a branch needs. With a lock wait, the writer does
//! not block on it (that would stop every other branch, including the
//! decisions that would free the resource): it parks the prepare, with its
//! reply, and runs it again after every decision it carries out, answering
//! once the resource votes otherwise or recording an abort when the wait or
//! the prepare's deadline runs out (the queue is read with that timeout).
//! A parked prepare has written nothing and holds nothing, so a wait never
//! makes another branch of this participant wait (docs/design.md §12).

use crate::log::{self, BranchState, LogRecord};
use crate::resource::ErasedResource;
use crate::{ParticipantError, ResourceError, Vote};
use dtc_util::disk::Reserve as DiskReserve;
use redb::{Database, Durability, WriteTransaction};
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tracing::{debug, error, info, warn};

/// Most operations made durable by one sync.
const MAX_BATCH: usize = 256;

/// Why an operation was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// Commit for a transaction this participant has no record of: its log
    /// was lost (corner case 12). Never acknowledged.
    #[error(
        "commit for transaction {0}, which this participant has no record of: refused \
         (its participant log may have been lost or replaced; operator attention needed)"
    )]
    UnknownCommit(String),
    /// A decision that contradicts the recorded one (commit after abort, ...).
    #[error("protocol violation: {0}")]
    Violation(String),
    /// The application's commit/abort failed; the decision must be resent.
    #[error("the resource failed: {0}; retry later")]
    Resource(String),
    /// The participant's storage failed; it needs a restart.
    #[error("participant storage failed: {0}")]
    Storage(String),
    /// The participant is shutting down.
    #[error("the participant is stopping")]
    Stopped,
    /// The writer's queue is full: the participant is overloaded.
    #[error("the participant is overloaded ({0} operations queued for its writer); retry later")]
    Overloaded(usize),
}

impl From<ParticipantError> for OpError {
    fn from(e: ParticipantError) -> Self {
        OpError::Storage(e.to_string())
    }
}

// redb's errors reach a caller as a storage failure, with redb's message.
dtc_util::from_redb!(OpError, |e: redb::Error| OpError::Storage(e.to_string()));

/// The answer to an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Vote(Vote),
    Done,
}

type Reply = oneshot::Sender<Result<Answer, OpError>>;

enum Op {
    Prepare {
        txn_id: String,
        payload: Vec<u8>,
        deadline: Instant,
        reply: Reply,
    },
    Commit {
        txn_id: String,
        reply: Reply,
    },
    Abort {
        txn_id: String,
        reason: String,
        reply: Reply,
    },
    /// The application's own write outside two-phase commit.
    Write {
        run: WriteFn,
        reply: Reply,
    },
    Stop,
}

/// An application write run by the writer (see [`Writer::write`]).
pub(crate) type WriteFn = Box<dyn FnOnce(&WriteTransaction) -> Result<(), ResourceError> + Send>;

/// The span of one transaction's call or operation here: every log line it causes
/// carries the transaction id, as the coordinators' lines for it do
/// (`txn{txn_id=...}`).
pub(crate) fn txn_span(txn_id: &str, participant: &str) -> tracing::Span {
    tracing::info_span!("txn", txn_id = %txn_id, participant = %participant)
}

/// Handle to the writer thread.
pub(crate) struct Writer {
    ops: Mutex<Option<mpsc::SyncSender<Op>>>,
    /// Capacity of `ops`, for the overload message.
    queue: usize,
    /// `Some(why)` once a write or sync failed: the writer refuses every
    /// operation from then on, until the process restarts.
    failed: watch::Receiver<Option<String>>,
    crashed: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Operations handed to the thread that it has not finished with:
    /// queued, or in the batch it is running (a prepare parked on a lock
    /// wait counts as finished until it runs again). Zero: the thread is
    /// idle until the next operation arrives.
    busy: Arc<AtomicUsize>,
    /// The wall clock (ms) when the latest operation was handed over: the
    /// time the thread stamps its records with (see [`Worker::wall_ms`]).
    handed_at_ms: Arc<AtomicU64>,
}

impl Writer {
    pub(crate) fn start(
        name: String,
        db: Arc<Database>,
        resource: Arc<dyn ErasedResource>,
        lock_wait: Duration,
        queue: usize,
        reserve: Option<DiskReserve>,
    ) -> Result<Writer, ParticipantError> {
        // Bounded: past it a call is refused (RESOURCE_EXHAUSTED) instead of
        // queueing memory and latency without limit.
        let queue = queue.max(1);
        let (tx, rx) = mpsc::sync_channel(queue);
        let crashed = Arc::new(AtomicBool::new(false));
        let (failed, failed_rx) = watch::channel(None);
        let busy = Arc::new(AtomicUsize::new(0));
        let handed_at_ms = Arc::new(AtomicU64::new(dtc_util::wall_ms()));
        let worker = Worker {
            busy: busy.clone(),
            handed_at_ms: handed_at_ms.clone(),
            name: name.clone(),
            db,
            resource,
            rx,
            crashed: crashed.clone(),
            poisoned: None,
            lock_wait,
            parked: VecDeque::new(),
            decided: false,
            reserve,
            failed,
        };
        let thread = std::thread::Builder::new()
            .name(format!("dtc-participant-writer-{name}"))
            .spawn(move || worker.run())
            .map_err(|source| ParticipantError::Io {
                what: "cannot start the writer thread".into(),
                source,
            })?;
        Ok(Writer {
            ops: Mutex::new(Some(tx)),
            queue,
            failed: failed_rx,
            crashed,
            thread: Mutex::new(Some(thread)),
            busy,
            handed_at_ms,
        })
    }

    /// Blocks until the thread has finished everything handed to it, or
    /// has stopped.
    fn wait_idle(&self) {
        while self.busy.load(Ordering::SeqCst) > 0
            && !self.crashed.load(Ordering::SeqCst)
            && self.failed.borrow().is_none()
            && self
                .thread
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_some_and(|t| !t.is_finished())
        {
            std::thread::yield_now();
        }
    }

    /// Waits until a write or sync fails for good, and returns why.
    pub(crate) async fn failed(&self) -> String {
        let mut rx = self.failed.clone();
        let why = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .map(|why| why.clone().unwrap_or_default());
        match why {
            Some(why) => why,
            // The worker is gone without failing: never.
            None => std::future::pending().await,
        }
    }

    async fn submit(&self, make: impl FnOnce(Reply) -> Op) -> Result<Answer, OpError> {
        let (reply, answer) = oneshot::channel();
        {
            let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
            let sender = ops.as_ref().ok_or(OpError::Stopped)?;
            // Counted before it can be taken, so the count never dips below
            // what the thread has yet to finish.
            self.busy.fetch_add(1, Ordering::SeqCst);
            self.handed_at_ms
                .store(dtc_util::wall_ms(), Ordering::SeqCst);
            sender.try_send(make(reply)).map_err(|e| {
                self.busy.fetch_sub(1, Ordering::SeqCst);
                match e {
                    mpsc::TrySendError::Full(_) => OpError::Overloaded(self.queue),
                    mpsc::TrySendError::Disconnected(_) => OpError::Stopped,
                }
            })?;
        }
        if dtc_util::blocking::is_inline() {
            // The deterministic simulation: as if the thread's work ran
            // inline, the answer is there before this task looks for it,
            // never at a moment that depends on how threads were scheduled.
            self.wait_idle();
        }
        answer.await.unwrap_or(Err(OpError::Stopped))
    }

    /// Prepares `txn_id` (or returns its recorded vote). Without a record
    /// and past `deadline`, votes abort without running the resource.
    pub(crate) async fn prepare(
        &self,
        txn_id: String,
        payload: Vec<u8>,
        deadline: Instant,
    ) -> Result<Vote, OpError> {
        match self
            .submit(|reply| Op::Prepare {
                txn_id,
                payload,
                deadline,
                reply,
            })
            .await?
        {
            Answer::Vote(v) => Ok(v),
            Answer::Done => Err(OpError::Storage(
                "writer answered a prepare without a vote".into(),
            )),
        }
    }

    pub(crate) async fn commit(&self, txn_id: String) -> Result<(), OpError> {
        self.submit(|reply| Op::Commit { txn_id, reply })
            .await
            .map(|_| ())
    }

    pub(crate) async fn abort(&self, txn_id: String, reason: String) -> Result<(), OpError> {
        self.submit(|reply| Op::Abort {
            txn_id,
            reason,
            reply,
        })
        .await
        .map(|_| ())
    }

    /// Runs `run` in a write transaction of its own on the writer, between
    /// two-phase-commit operations, and answers once it is durable. An error
    /// (or panic) rolls back what it wrote. Parked prepares run again after
    /// it, since it may have freed what they wait for.
    pub(crate) async fn write(&self, run: WriteFn) -> Result<(), OpError> {
        self.submit(|reply| Op::Write { run, reply })
            .await
            .map(|_| ())
    }

    /// Finishes the queued operations (synced and answered), then stops.
    /// Prepares waiting for a lock are dropped unanswered (their callers get
    /// UNAVAILABLE, as from a stopped participant): they hold nothing.
    pub(crate) async fn stop(&self) {
        self.close();
        self.join().await;
    }

    /// From now on, answers nothing, as a crash would: the operation running
    /// now and everything queued is dropped unanswered and unsynced (for
    /// tests; see `RunningParticipant::kill`). Then [`join`](Self::join).
    pub(crate) fn crash(&self) {
        self.crashed.store(true, Ordering::SeqCst);
        self.close();
    }

    /// Accepts no more operations.
    fn close(&self) {
        if let Some(ops) = self.ops.lock().unwrap_or_else(|p| p.into_inner()).take() {
            // With a full queue, dropping the sender stops the writer just
            // the same once it has drained what is queued; never block here.
            let _ = ops.try_send(Op::Stop);
        }
    }

    /// Waits for the writer thread to exit.
    pub(crate) async fn join(&self) {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

struct Worker {
    /// See `Writer::busy`: decremented once a batch is answered.
    busy: Arc<AtomicUsize>,
    /// See [`Writer::handed_at_ms`].
    handed_at_ms: Arc<AtomicU64>,
    name: String,
    db: Arc<Database>,
    resource: Arc<dyn ErasedResource>,
    rx: mpsc::Receiver<Op>,
    crashed: Arc<AtomicBool>,
    /// Set after a failed sync or commit: redb refuses further writes and the
    /// in-process view may hold unsynced records, so nothing more is answered
    /// from it. A restart repairs the file.
    poisoned: Option<String>,
    /// How long a prepare that the resource finds busy may wait for other
    /// transactions' decisions (zero: it votes abort at once).
    lock_wait: Duration,
    /// Prepares waiting for a decision to free what they need, oldest
    /// first (so they are retried, and win, in arrival order).
    parked: VecDeque<Parked>,
    /// A commit or abort changed something since the parked prepares last ran.
    decided: bool,
    /// New prepares vote abort while the disk is below this reserve.
    reserve: Option<DiskReserve>,
    /// Where the worker says it is poisoned (read by the server: health, exit).
    failed: watch::Sender<Option<String>>,
}

/// A prepare the resource found busy, waiting (see the module docs).
struct Parked {
    txn_id: String,
    payload: Vec<u8>,
    /// The prepare's own deadline (from `remaining_ms`).
    deadline: Instant,
    /// When the wait ends: the lock wait after arrival, or the deadline.
    give_up: Instant,
    /// When it arrived (the abort reason says how long it waited).
    since: Instant,
    /// The resource's reason when it last found the prepare busy (empty
    /// before the first run).
    busy: String,
    reply: Reply,
}

/// What [`Worker::prepare`] did.
enum Prepared {
    /// Answered (the bool: whether it wrote).
    Answer(Answer, bool),
    /// The resource voted busy (with this reason) and the prepare may
    /// still wait: nothing was written or answered.
    Busy(String),
}

fn reply_of(op: &mut Op) -> Option<Reply> {
    // Replaces the sender with a closed one so the op can be consumed later.
    let (dummy, _) = oneshot::channel();
    match op {
        Op::Prepare { reply, .. }
        | Op::Commit { reply, .. }
        | Op::Abort { reply, .. }
        | Op::Write { reply, .. } => Some(std::mem::replace(reply, dummy)),
        Op::Stop => None,
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs a resource call, turning a panic into an error so one bad payload
/// cannot take the writer (and so the whole participant) down.
fn guarded<T>(f: impl FnOnce() -> Result<T, ResourceError>) -> Result<T, ResourceError> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(ResourceError::new(format!(
            "the resource panicked: {}",
            panic_message(p)
        ))),
    }
}

impl Worker {
    /// The wall clock for the records this thread writes: read by the async
    /// side as it hands an operation over (a few microseconds ago), so that
    /// a clock that exists only there (the simulation's, see
    /// `dtc_util::wall_ms`) stamps them too.
    fn wall_ms(&self) -> u64 {
        self.handed_at_ms.load(Ordering::SeqCst)
    }

    fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    fn run(mut self) {
        loop {
            // With prepares waiting, wake up when the first wait runs out.
            let first = match self.parked.iter().map(|p| p.give_up).min() {
                None => match self.rx.recv() {
                    Ok(op) => Some(op),
                    Err(_) => return,
                },
                Some(t) => match self
                    .rx
                    .recv_timeout(t.saturating_duration_since(Instant::now()))
                {
                    Ok(op) => Some(op),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                },
            };
            let mut stop = matches!(first, Some(Op::Stop));
            let mut batch = Vec::new();
            if let Some(op) = first
                && !stop
            {
                batch.push(op);
            }
            while !stop && batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(Op::Stop) => stop = true,
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let taken = batch.len();
            let mut answers = Vec::with_capacity(batch.len());
            let mut dirty = false;
            for mut op in batch {
                if self.crashed() {
                    return;
                }
                if let Some(why) = &self.poisoned {
                    if let Some(reply) = reply_of(&mut op) {
                        let e = OpError::Storage(format!("{why}; restart the participant"));
                        answers.push((reply, Err(e)));
                    }
                    continue;
                }
                match op {
                    Op::Prepare {
                        txn_id,
                        payload,
                        deadline,
                        reply,
                    } => {
                        let now = Instant::now();
                        let give_up = (now + self.lock_wait).min(deadline);
                        let parked = Parked {
                            txn_id,
                            payload,
                            deadline,
                            give_up,
                            since: now,
                            busy: String::new(),
                            reply,
                        };
                        self.run_prepare(parked, now < give_up, &mut answers, &mut dirty);
                    }
                    mut op => {
                        let Some(reply) = reply_of(&mut op) else {
                            continue;
                        };
                        let (result, wrote) = self.apply(op);
                        dirty |= wrote;
                        self.decided |= wrote;
                        answers.push((reply, result));
                        // A decision may have freed what a parked prepare
                        // waits for: it runs before newer prepares can take it.
                        self.retry_parked(&mut answers, &mut dirty);
                    }
                }
            }
            // Waits that ran out (also when nothing arrived).
            self.retry_parked(&mut answers, &mut dirty);
            if self.crashed() {
                return;
            }
            if dirty
                && self.poisoned.is_none()
                && let Err(e) = self.sync()
            {
                self.poison(format!("sync failed: {e}"));
            }
            if let Some(why) = &self.poisoned {
                // Nothing written since the last good sync may be answered.
                for (_, result) in answers.iter_mut() {
                    if result.is_ok() {
                        *result = Err(OpError::Storage(why.clone()));
                    }
                }
            }
            for (reply, result) in answers {
                let _ = reply.send(result);
            }
            self.busy.fetch_sub(taken, Ordering::SeqCst);
            if stop {
                return;
            }
        }
    }

    fn sync(&self) -> Result<(), OpError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.commit()?;
        Ok(())
    }

    fn begin(&self) -> Result<WriteTransaction, OpError> {
        let mut tx = self.db.begin_write()?;
        // Made durable by the batch's sync before anyone hears about it.
        tx.set_durability(Durability::None)?;
        Ok(tx)
    }

    fn commit(&mut self, tx: WriteTransaction) -> Result<(), OpError> {
        tx.commit().map_err(|e| {
            self.poison(format!("commit failed: {e}"));
            OpError::Storage(e.to_string())
        })
    }

    /// A write or sync failed: what it covered may be lost, and redb
    /// refuses the open file from now on. Nothing more is answered OK; the
    /// server reports NOT_SERVING and the process should restart (recovery
    /// then starts from what is durable). A sync is never retried: the pages
    /// it covered may already be gone.
    fn poison(&mut self, why: String) {
        error!(participant = %self.name, error = %why,
            "participant storage failed; refusing every further operation until restart");
        self.failed.send_replace(Some(why.clone()));
        self.poisoned = Some(why);
    }

    /// Writes `record` in a fresh transaction (after the resource's changes
    /// were rolled back).
    fn record_alone(&mut self, txn_id: &str, record: &LogRecord) -> Result<(), OpError> {
        let tx = self.begin()?;
        log::put_in(&tx, txn_id, record)?;
        self.commit(tx)
    }

    /// Runs a prepare (new, or parked and retried). If the resource is busy
    /// and `may_wait`, parks it; otherwise queues its answer.
    fn run_prepare(
        &mut self,
        mut p: Parked,
        may_wait: bool,
        answers: &mut Vec<(Reply, Result<Answer, OpError>)>,
        dirty: &mut bool,
    ) {
        let waited = (!p.busy.is_empty()).then(|| (p.since.elapsed(), p.busy.as_str()));
        match self.prepare(&p.txn_id, &p.payload, p.deadline, may_wait, waited) {
            Ok(Prepared::Busy(reason)) => {
                p.busy = reason;
                self.parked.push_back(p);
            }
            Ok(Prepared::Answer(answer, wrote)) => {
                *dirty |= wrote;
                answers.push((p.reply, Ok(answer)));
            }
            Err(e) => answers.push((p.reply, Err(e))),
        }
    }

    /// Runs the parked prepares again: all of them if a decision changed
    /// something since they last ran, else only those whose wait ran out
    /// (which then vote abort if still busy).
    fn retry_parked(
        &mut self,
        answers: &mut Vec<(Reply, Result<Answer, OpError>)>,
        dirty: &mut bool,
    ) {
        if self.parked.is_empty() {
            return;
        }
        let decided = std::mem::take(&mut self.decided);
        let now = Instant::now();
        for p in std::mem::take(&mut self.parked) {
            if self.crashed() {
                return; // dropped unanswered, as a crash would
            }
            if let Some(why) = &self.poisoned {
                let e = OpError::Storage(format!("{why}; restart the participant"));
                answers.push((p.reply, Err(e)));
                continue;
            }
            let expired = now >= p.give_up;
            if decided || expired {
                self.run_prepare(p, !expired, answers, dirty);
            } else {
                self.parked.push_back(p);
            }
        }
    }

    /// Carries out a commit or abort; returns its result and whether it wrote.
    fn apply(&mut self, op: Op) -> (Result<Answer, OpError>, bool) {
        let result = match op {
            // Prepares go through `run_prepare`.
            Op::Prepare { .. } => Err(OpError::Storage(
                "internal: a prepare was handed to apply".into(),
            )),
            Op::Commit { txn_id, .. } => self.commit_txn(&txn_id),
            Op::Abort { txn_id, reason, .. } => self.abort_txn(&txn_id, &reason),
            Op::Write { run, .. } => self.write(run),
            Op::Stop => Ok((Answer::Done, false)),
        };
        match result {
            Ok((answer, wrote)) => (Ok(answer), wrote),
            Err(e) => (Err(e), false),
        }
    }

    /// Prepares `txn_id`, or answers from its record. If the resource votes
    /// busy: returns [`Prepared::Busy`] if `may_wait`, else records an abort.
    /// `waited`: how long a parked prepare has waited, and why it was busy
    /// (the abort reason then says both).
    fn prepare(
        &mut self,
        txn_id: &str,
        payload: &[u8],
        deadline: Instant,
        may_wait: bool,
        waited: Option<(Duration, &str)>,
    ) -> Result<Prepared, OpError> {
        let _span = txn_span(txn_id, &self.name).entered();
        let after_waiting = |reason: &str, w: Duration| {
            format!(
                "{reason} (after waiting {} ms for other transactions' decisions)",
                w.as_millis()
            )
        };
        let tx = self.begin()?;
        if let Some(rec) = log::get_in(&tx, txn_id)? {
            tx.abort()?;
            if rec.payload != payload && rec.state != BranchState::Tombstone {
                // Not a duplicate: the id was reused for another request (the
                // coordinator forgets outcomes after its retention window).
                // Answering the recorded vote would commit only part of the
                // new transaction; refuse it, and write nothing.
                warn!(participant = %self.name, txn_id,
                    "prepare reuses a transaction id with a different payload; voting abort");
                return Ok(Prepared::Answer(
                    Answer::Vote(Vote::Abort(format!(
                        "transaction id {txn_id} was already used here for a different request"
                    ))),
                    false,
                ));
            }
            let vote = match rec.state {
                BranchState::Prepared | BranchState::Committed => Vote::Prepared,
                BranchState::ReadOnly => Vote::ReadOnly,
                BranchState::Aborted => Vote::Abort(rec.reason),
                BranchState::Tombstone => {
                    Vote::Abort(format!("aborted before it was prepared ({})", rec.reason))
                }
            };
            debug!(participant = %self.name, txn_id, ?vote, "duplicate prepare answered from the log");
            return Ok(Prepared::Answer(Answer::Vote(vote), false));
        }
        let now_ms = self.wall_ms();
        let refuse = |reason: String| LogRecord {
            state: BranchState::Aborted,
            payload: payload.to_vec(),
            reason,
            voted_prepared: false,
            updated_at_ms: now_ms,
        };
        if Instant::now() >= deadline {
            // Not prepared yet, so refusing is still allowed (corner case 13).
            // A wait that ran into the deadline says what it waited for.
            let rec = refuse(match waited {
                Some((w, busy)) => after_waiting(busy, w),
                None => "the prepare deadline passed before this participant prepared".into(),
            });
            log::put_in(&tx, txn_id, &rec)?;
            self.commit(tx)?;
            return Ok(Prepared::Answer(
                Answer::Vote(Vote::Abort(rec.reason)),
                true,
            ));
        }
        if let Some(reason) = self.reserve.as_ref().and_then(DiskReserve::refusal) {
            drop(tx);
            warn!(participant = %self.name, txn_id, %reason, "voting abort");
            self.record_alone(txn_id, &refuse(reason.clone()))?;
            return Ok(Prepared::Answer(Answer::Vote(Vote::Abort(reason)), true));
        }
        let vote = guarded(|| self.resource.prepare(&tx, txn_id, payload));
        if self.crashed() {
            return Err(OpError::Stopped); // the transaction is dropped unwritten
        }
        match vote {
            Ok(Vote::Prepared) => {
                let rec = LogRecord {
                    state: BranchState::Prepared,
                    payload: payload.to_vec(),
                    reason: String::new(),
                    voted_prepared: true,
                    updated_at_ms: now_ms,
                };
                log::put_in(&tx, txn_id, &rec)?;
                self.commit(tx)?;
                Ok(Prepared::Answer(Answer::Vote(Vote::Prepared), true))
            }
            Ok(Vote::ReadOnly) => {
                drop(tx); // a read-only branch leaves nothing behind
                let rec = LogRecord {
                    state: BranchState::ReadOnly,
                    payload: payload.to_vec(),
                    reason: String::new(),
                    voted_prepared: false,
                    updated_at_ms: now_ms,
                };
                self.record_alone(txn_id, &rec)?;
                Ok(Prepared::Answer(Answer::Vote(Vote::ReadOnly), true))
            }
            Ok(Vote::Busy(reason)) if may_wait => {
                drop(tx); // holds nothing while it waits
                Ok(Prepared::Busy(reason))
            }
            Ok(Vote::Busy(reason)) => {
                drop(tx);
                let reason = match waited {
                    Some((w, _)) => after_waiting(&reason, w),
                    None => reason,
                };
                debug!(participant = %self.name, txn_id, %reason, "busy: voting abort");
                self.record_alone(txn_id, &refuse(reason.clone()))?;
                Ok(Prepared::Answer(Answer::Vote(Vote::Abort(reason)), true))
            }
            Ok(Vote::Abort(reason)) => {
                drop(tx);
                debug!(participant = %self.name, txn_id, %reason, "voting abort");
                self.record_alone(txn_id, &refuse(reason.clone()))?;
                Ok(Prepared::Answer(Answer::Vote(Vote::Abort(reason)), true))
            }
            Err(e) => {
                drop(tx);
                let reason = format!("prepare failed: {e}");
                warn!(participant = %self.name, txn_id, %reason, "voting abort");
                self.record_alone(txn_id, &refuse(reason.clone()))?;
                Ok(Prepared::Answer(Answer::Vote(Vote::Abort(reason)), true))
            }
        }
    }

    fn commit_txn(&mut self, txn_id: &str) -> Result<(Answer, bool), OpError> {
        let _span = txn_span(txn_id, &self.name).entered();
        let tx = self.begin()?;
        let Some(rec) = log::get_in(&tx, txn_id)? else {
            tx.abort()?;
            let e = OpError::UnknownCommit(txn_id.to_string());
            error!(participant = %self.name, txn_id, "{e}");
            return Err(e);
        };
        match rec.state {
            BranchState::Committed => {
                tx.abort()?;
                debug!(participant = %self.name, txn_id, "duplicate commit acknowledged");
                Ok((Answer::Done, false))
            }
            BranchState::ReadOnly => {
                tx.abort()?;
                debug!(participant = %self.name, txn_id, "commit for a read-only branch: nothing to do");
                Ok((Answer::Done, false))
            }
            BranchState::Aborted | BranchState::Tombstone => {
                tx.abort()?;
                let e = OpError::Violation(format!(
                    "commit for transaction {txn_id}, which this participant has {} ({})",
                    if rec.state == BranchState::Aborted {
                        "aborted"
                    } else {
                        "tombstoned (aborted before prepare)"
                    },
                    rec.reason
                ));
                error!(participant = %self.name, txn_id, "{e}");
                Err(e)
            }
            BranchState::Prepared => {
                let applied = guarded(|| self.resource.commit(&tx, txn_id, &rec.payload));
                if self.crashed() {
                    return Err(OpError::Stopped);
                }
                if let Err(e) = applied {
                    drop(tx);
                    error!(participant = %self.name, txn_id, error = %e,
                        "commit failed in the resource; waiting for the coordinator to resend it");
                    return Err(OpError::Resource(e.message().to_string()));
                }
                let done = LogRecord {
                    state: BranchState::Committed,
                    updated_at_ms: self.wall_ms(),
                    ..rec
                };
                log::put_in(&tx, txn_id, &done)?;
                self.commit(tx)?;
                debug!(participant = %self.name, txn_id, "committed");
                Ok((Answer::Done, true))
            }
        }
    }

    fn write(&mut self, run: WriteFn) -> Result<(Answer, bool), OpError> {
        let tx = self.begin()?;
        let wrote = guarded(|| run(&tx));
        if self.crashed() {
            return Err(OpError::Stopped);
        }
        if let Err(e) = wrote {
            drop(tx);
            warn!(participant = %self.name, error = %e, "application write failed; rolled back");
            return Err(OpError::Resource(e.message().to_string()));
        }
        self.commit(tx)?;
        Ok((Answer::Done, true))
    }

    fn abort_txn(&mut self, txn_id: &str, reason: &str) -> Result<(Answer, bool), OpError> {
        let _span = txn_span(txn_id, &self.name).entered();
        let tx = self.begin()?;
        let Some(rec) = log::get_in(&tx, txn_id)? else {
            // Abort before prepare: a tombstone makes a late prepare vote
            // abort (corner case 11).
            let rec = LogRecord {
                state: BranchState::Tombstone,
                payload: Vec::new(),
                reason: reason.to_string(),
                voted_prepared: false,
                updated_at_ms: self.wall_ms(),
            };
            log::put_in(&tx, txn_id, &rec)?;
            self.commit(tx)?;
            info!(participant = %self.name, txn_id, "abort before prepare: tombstone recorded");
            return Ok((Answer::Done, true));
        };
        match rec.state {
            BranchState::Aborted | BranchState::Tombstone | BranchState::ReadOnly => {
                tx.abort()?;
                debug!(participant = %self.name, txn_id, state = rec.state.as_str(), "abort acknowledged");
                Ok((Answer::Done, false))
            }
            BranchState::Committed => {
                tx.abort()?;
                let e = OpError::Violation(format!(
                    "abort for transaction {txn_id}, which this participant has committed"
                ));
                error!(participant = %self.name, txn_id, "{e}");
                Err(e)
            }
            BranchState::Prepared => {
                let undone = guarded(|| self.resource.abort(&tx, txn_id, &rec.payload, reason));
                if self.crashed() {
                    return Err(OpError::Stopped);
                }
                if let Err(e) = undone {
                    drop(tx);
                    error!(participant = %self.name, txn_id, error = %e,
                        "abort failed in the resource; waiting for the coordinator to resend it");
                    return Err(OpError::Resource(e.message().to_string()));
                }
                let done = LogRecord {
                    state: BranchState::Aborted,
                    reason: reason.to_string(),
                    updated_at_ms: self.wall_ms(),
                    ..rec
                };
                log::put_in(&tx, txn_id, &done)?;
                self.commit(tx)?;
                debug!(participant = %self.name, txn_id, "aborted");
                Ok((Answer::Done, true))
            }
        }
    }
}
