//! Crash consistency of the participant log under lost writes.
//!
//! A participant runs on a simulated disk ([`SimDisk`]) that records every
//! write and sync; it serves Prepare/Commit/Abort over real gRPC on loopback,
//! one at a time and in concurrent bursts (so the writer's group commit makes
//! several operations durable with one sync). A crash at any instant is
//! rebuilt from that record, keeping only what was synced (or, torn, any mix
//! of the unsynced 4 KiB blocks). The database reopened on it must hold the
//! record behind every answer the coordinator received (a Prepared vote above
//! all), and the application's locks, the prepared index and the records
//! must agree. At some crash points the participant is restarted on the
//! image: recovery hands back exactly the prepared transactions, duplicates
//! are answered from the log without running the resource, and the in-doubt
//! transactions can still be decided.

use dtc_participant::redb::{self, ReadableDatabase, ReadableTable, TableDefinition};
use dtc_participant::{
    BranchState, LogRecord, ParticipantLog, ParticipantServer, PreparedTxn, Resource,
    ResourceError, RunningParticipant, Vote,
};
use dtc_proto::v1 as pb;
use dtc_store::test_support::{CrashMode, OpClock, Rng, SimDisk, Trace};
use pb::participant_client::ParticipantClient;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

const NAME: &str = "ledger";
/// Key -> id of the prepared transaction holding it.
const LOCKS: TableDefinition<&str, &str> = TableDefinition::new("app_locks");
/// Key -> sum of the committed amounts.
const BALANCE: TableDefinition<&str, u64> = TableDefinition::new("app_balance");
/// Ids of the committed transactions whose effect was applied.
const APPLIED: TableDefinition<&str, ()> = TableDefinition::new("app_applied");
/// Rows a refused prepare writes before refusing (the SDK must discard them).
const SCRATCH: TableDefinition<&str, ()> = TableDefinition::new("app_scratch");
const KEYS: [&str; 5] = ["k0", "k1", "k2", "k3", "k4"];
const REMAINING_MS: u32 = 30_000;
/// Most concurrent calls in one round.
const MAX_BURST: usize = 6;

/// Extra seeds from `DTC_LOST_WRITES_SEEDS` (a count), for longer local runs.
fn seeds(base: &[u64]) -> Vec<u64> {
    let extra: u64 = std::env::var("DTC_LOST_WRITES_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    base.iter()
        .copied()
        .chain((0..extra).map(|i| 1_000 + i))
        .collect()
}

/// What a payload asks of the resource.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Work {
    /// Lock `key` at prepare; add `amount` to it at commit.
    Lock { key: String, amount: u64 },
    /// Vote abort (after writing a scratch row).
    Refuse,
    /// Vote read-only.
    ReadOnly,
    /// Fail (after writing a scratch row): the SDK votes abort.
    Fail,
}

impl Work {
    fn payload(&self) -> Vec<u8> {
        match self {
            Work::Lock { key, amount } => format!("lock:{key}:{amount}").into_bytes(),
            Work::Refuse => b"refuse".to_vec(),
            Work::ReadOnly => b"read-only".to_vec(),
            Work::Fail => b"fail".to_vec(),
        }
    }

    fn parse(payload: &[u8]) -> Work {
        let s = std::str::from_utf8(payload).expect("utf-8 payload");
        match s {
            "refuse" => Work::Refuse,
            "read-only" => Work::ReadOnly,
            "fail" => Work::Fail,
            _ => {
                let mut parts = s.strip_prefix("lock:").expect("a lock payload").split(':');
                let key = parts.next().unwrap().to_string();
                let amount = parts.next().unwrap().parse().unwrap();
                Work::Lock { key, amount }
            }
        }
    }
}

/// A resource that locks a key per prepared transaction, in its own table
/// (so the lock is durable with the vote), and keeps an in-memory copy that
/// it rebuilds from [`Resource::recover`].
#[derive(Default)]
struct LockResource {
    held: Mutex<BTreeMap<String, String>>,
    recovered: Mutex<Option<Vec<PreparedTxn<Vec<u8>>>>>,
    calls: Mutex<BTreeMap<(String, &'static str), usize>>,
}

impl LockResource {
    fn note(&self, txn: &str, what: &'static str) {
        *self
            .calls
            .lock()
            .unwrap()
            .entry((txn.to_string(), what))
            .or_default() += 1;
    }

    fn calls(&self, txn: &str, what: &'static str) -> usize {
        let calls = self.calls.lock().unwrap();
        calls.get(&(txn.to_string(), what)).copied().unwrap_or(0)
    }
}

impl Resource for LockResource {
    type Payload = Vec<u8>;

    fn decode(&self, payload: &[u8]) -> Result<Vec<u8>, String> {
        dtc_participant::payload::bytes(payload)
    }

    fn prepare(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &Vec<u8>,
    ) -> Result<Vote, ResourceError> {
        self.note(txn_id, "prepare");
        match Work::parse(payload) {
            Work::Lock { key, .. } => {
                let mut locks = tx.open_table(LOCKS)?;
                let holder = locks.get(key.as_str())?.map(|v| v.value().to_string());
                if let Some(holder) = holder {
                    return Ok(Vote::Abort(format!("{key} is locked by {holder}")));
                }
                locks.insert(key.as_str(), txn_id)?;
                self.held.lock().unwrap().insert(key, txn_id.to_string());
                Ok(Vote::Prepared)
            }
            Work::Refuse => {
                tx.open_table(SCRATCH)?.insert(txn_id, ())?;
                Ok(Vote::Abort("refused".into()))
            }
            Work::ReadOnly => Ok(Vote::ReadOnly),
            Work::Fail => {
                tx.open_table(SCRATCH)?.insert(txn_id, ())?;
                Err(ResourceError::new("failed on purpose"))
            }
        }
    }

    fn commit(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &Vec<u8>,
    ) -> Result<(), ResourceError> {
        self.note(txn_id, "commit");
        let Work::Lock { key, amount } = Work::parse(payload) else {
            return Err(ResourceError::new("commit of a branch that holds nothing"));
        };
        let mut locks = tx.open_table(LOCKS)?;
        let holder = locks.remove(key.as_str())?.map(|v| v.value().to_string());
        if holder.as_deref() != Some(txn_id) {
            return Err(ResourceError::new(format!(
                "{txn_id} commits {key}, locked by {holder:?}"
            )));
        }
        let mut balance = tx.open_table(BALANCE)?;
        let now = balance.get(key.as_str())?.map_or(0, |v| v.value());
        balance.insert(key.as_str(), now + amount)?;
        tx.open_table(APPLIED)?.insert(txn_id, ())?;
        self.held.lock().unwrap().remove(&key);
        Ok(())
    }

    fn abort(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &Vec<u8>,
        _reason: &str,
    ) -> Result<(), ResourceError> {
        self.note(txn_id, "abort");
        if let Work::Lock { key, .. } = Work::parse(payload) {
            tx.open_table(LOCKS)?.remove(key.as_str())?;
            self.held.lock().unwrap().remove(&key);
        }
        Ok(())
    }

    fn recover(
        &self,
        _tx: &redb::WriteTransaction,
        prepared: &[PreparedTxn<Vec<u8>>],
    ) -> Result<(), ResourceError> {
        let mut held = self.held.lock().unwrap();
        for p in prepared {
            if let Work::Lock { key, .. } = Work::parse(&p.payload) {
                held.insert(key, p.txn_id.clone());
            }
        }
        *self.recovered.lock().unwrap() = Some(prepared.to_vec());
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Driving the participant
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Prepare,
    Commit,
    Abort,
}

/// One call and what it did to its transaction's record.
#[derive(Debug, Clone)]
struct OpRecord {
    txn: String,
    kind: OpKind,
    /// The record's state before and after (None: no record).
    before: Option<BranchState>,
    after: Option<BranchState>,
    /// Clock when the call was sent and when its answer arrived.
    start: u64,
    ack: u64,
    /// The answer: a vote, or "ok", or a status code.
    answer: String,
}

struct Participant {
    running: RunningParticipant,
    client: ParticipantClient<Channel>,
    /// One connection per call of a burst: the server does not set
    /// TCP_NODELAY on the sockets it accepts (tonic ignores the setting with
    /// `serve_with_incoming_shutdown`), so concurrent answers on one
    /// connection wait ~40 ms for delayed ACKs.
    burst_clients: Vec<ParticipantClient<Channel>>,
}

async fn start(db: Arc<redb::Database>, resource: Arc<LockResource>) -> Participant {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = ParticipantServer::builder(NAME, db, resource)
        .start(listener)
        .await
        .expect("the participant starts");
    let connect = || {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", running.local_addr()))
                .unwrap()
                .timeout(Duration::from_secs(20))
                .connect_lazy();
        ParticipantClient::new(channel)
    };
    Participant {
        client: connect(),
        burst_clients: (0..MAX_BURST).map(|_| connect()).collect(),
        running,
    }
}

/// Sends one call; returns its answer as text.
async fn call(
    client: &ParticipantClient<Channel>,
    kind: OpKind,
    txn: &str,
    payload: &[u8],
) -> String {
    let mut c = client.clone();
    let result = match kind {
        OpKind::Prepare => c
            .prepare(pb::PrepareRequest {
                txn_id: txn.into(),
                participant: NAME.into(),
                payload: payload.to_vec(),
                remaining_ms: REMAINING_MS,
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                match pb::Vote::try_from(r.vote).unwrap() {
                    pb::Vote::Prepared => "prepared".to_string(),
                    pb::Vote::ReadOnly => "read-only".to_string(),
                    pb::Vote::Abort => "abort".to_string(),
                    pb::Vote::Unspecified => "unspecified".to_string(),
                }
            }),
        OpKind::Commit => c
            .commit(pb::CommitRequest {
                txn_id: txn.into(),
                participant: NAME.into(),
            })
            .await
            .map(|_| "ok".to_string()),
        OpKind::Abort => c
            .abort(pb::AbortRequest {
                txn_id: txn.into(),
                participant: NAME.into(),
                reason: "coordinator aborts".into(),
            })
            .await
            .map(|_| "ok".to_string()),
    };
    result.unwrap_or_else(|s| match s.code() {
        Code::FailedPrecondition => "failed-precondition".to_string(),
        code => panic!(
            "{kind:?} {txn}: unexpected status {code:?}: {}",
            s.message()
        ),
    })
}

/// The SDK's rules: the answer to `kind` given the record's state, and the
/// state after. `free` says whether the payload's key is free (None: unknown,
/// in a concurrent burst).
fn expected(
    kind: OpKind,
    before: Option<BranchState>,
    work: &Work,
    answer: &str,
    free: Option<bool>,
) -> Option<BranchState> {
    use BranchState::*;
    let (want, after): (&[&str], Option<BranchState>) = match (kind, before) {
        (OpKind::Prepare, None) => match work {
            Work::Lock { .. } => match (free, answer) {
                (Some(true), _) | (None, "prepared") => (&["prepared"], Some(Prepared)),
                _ => (&["abort"], Some(Aborted)),
            },
            Work::Refuse | Work::Fail => (&["abort"], Some(Aborted)),
            Work::ReadOnly => (&["read-only"], Some(ReadOnly)),
        },
        (OpKind::Prepare, Some(s)) => match s {
            Prepared | Committed => (&["prepared"], before),
            ReadOnly => (&["read-only"], before),
            Aborted | Tombstone => (&["abort"], before),
        },
        (OpKind::Commit, Some(Prepared)) => (&["ok"], Some(Committed)),
        (OpKind::Commit, Some(Committed | ReadOnly)) => (&["ok"], before),
        (OpKind::Commit, _) => (&["failed-precondition"], before),
        (OpKind::Abort, None) => (&["ok"], Some(Tombstone)),
        (OpKind::Abort, Some(Prepared)) => (&["ok"], Some(Aborted)),
        (OpKind::Abort, Some(Committed)) => (&["failed-precondition"], before),
        (OpKind::Abort, Some(_)) => (&["ok"], before),
    };
    assert!(
        want.contains(&answer),
        "{kind:?} on a record in state {before:?} ({work:?}) answered {answer:?}, want {want:?}"
    );
    after
}

/// The client side's knowledge: every transaction's acknowledged state and
/// payload, and every call made.
#[derive(Default)]
struct Model {
    state: BTreeMap<String, Option<BranchState>>,
    payload: BTreeMap<String, Vec<u8>>,
    ops: Vec<OpRecord>,
    next_txn: usize,
}

impl Model {
    /// Key -> holder, among acknowledged prepared transactions.
    fn locked(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (txn, s) in &self.state {
            if *s == Some(BranchState::Prepared)
                && let Work::Lock { key, .. } = Work::parse(&self.payload[txn])
            {
                out.insert(key, txn.clone());
            }
        }
        out
    }

    fn in_state(&self, want: BranchState) -> Vec<String> {
        self.state
            .iter()
            .filter(|(_, s)| **s == Some(want))
            .map(|(t, _)| t.clone())
            .collect()
    }

    fn new_txn(&mut self) -> String {
        self.next_txn += 1;
        format!("tx{:04}", self.next_txn)
    }
}

/// Picks one call: (kind, txn, work).
fn pick(rng: &mut Rng, m: &mut Model, busy: &BTreeSet<String>) -> (OpKind, String, Work) {
    let prepared: Vec<String> = m
        .in_state(BranchState::Prepared)
        .into_iter()
        .filter(|t| !busy.contains(t))
        .collect();
    let known: Vec<String> = m
        .state
        .keys()
        .filter(|t| !busy.contains(*t))
        .cloned()
        .collect();
    let r = rng.below(100);
    let (kind, txn) = if r < 40 || known.is_empty() {
        (OpKind::Prepare, m.new_txn())
    } else if r < 62 && !prepared.is_empty() {
        (OpKind::Commit, prepared[rng.below(prepared.len())].clone())
    } else if r < 77 && !prepared.is_empty() {
        (OpKind::Abort, prepared[rng.below(prepared.len())].clone())
    } else if r < 82 {
        // Abort before prepare: a tombstone.
        (OpKind::Abort, m.new_txn())
    } else {
        // A duplicate or late message for a known transaction.
        let txn = known[rng.below(known.len())].clone();
        let kind = [OpKind::Prepare, OpKind::Commit, OpKind::Abort][rng.below(3)];
        (kind, txn)
    };
    let work = match m.payload.get(&txn) {
        Some(p) if !p.is_empty() => Work::parse(p),
        _ => match rng.below(10) {
            0 => Work::Refuse,
            1 => Work::ReadOnly,
            2 => Work::Fail,
            _ => Work::Lock {
                key: KEYS[rng.below(KEYS.len())].to_string(),
                amount: rng.range(1, 100),
            },
        },
    };
    (kind, txn, work)
}

/// Runs `rounds` rounds of calls (one call, or a concurrent burst on
/// distinct transactions), recording each call's timing and effect.
async fn drive(p: &Participant, clock: &OpClock, rng: &mut Rng, m: &mut Model, rounds: usize) {
    for _ in 0..rounds {
        let burst = if rng.chance(1, 4) {
            rng.range(2, MAX_BURST as u64)
        } else {
            1
        };
        let mut busy = BTreeSet::new();
        let mut calls = Vec::new();
        for _ in 0..burst {
            let (kind, txn, work) = pick(rng, m, &busy);
            busy.insert(txn.clone());
            if kind == OpKind::Prepare && m.state.get(&txn).copied().flatten().is_none() {
                // No record: this prepare's payload is the one to be logged.
                m.payload.insert(txn.clone(), work.payload());
            }
            calls.push((kind, txn, work));
        }
        let locked = m.locked();
        let start = clock.now();
        let answers =
            futures::future::join_all(calls.iter().enumerate().map(|(i, (kind, txn, work))| {
                let client = &p.burst_clients[i];
                async move {
                    let answer = call(client, *kind, txn, &work.payload()).await;
                    (answer, clock.now())
                }
            }))
            .await;
        for ((kind, txn, work), (answer, ack)) in calls.into_iter().zip(answers) {
            let before = m.state.get(&txn).copied().flatten();
            let free = match &work {
                Work::Lock { key, .. } if burst == 1 => Some(!locked.contains_key(key)),
                _ => None,
            };
            let after = expected(kind, before, &work, &answer, free);
            if before.is_none() && after == Some(BranchState::Tombstone) {
                m.payload.insert(txn.clone(), Vec::new());
            }
            m.state.insert(txn.clone(), after);
            m.ops.push(OpRecord {
                txn,
                kind,
                before,
                after,
                start,
                ack,
                answer,
            });
        }
    }
}

// ---------------------------------------------------------------------------
// Checking a crash image
// ---------------------------------------------------------------------------

/// A file whose creation by redb did not finish (see dtc-store's
/// `crash_while_creating_the_store_files_leaves_stores_that_open`).
fn unfinished_redb_file(img: &[u8]) -> bool {
    const MAGIC: &[u8] = &[b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];
    !img.is_empty() && !img.starts_with(MAGIC)
}

fn read_table<V: redb::Value + 'static>(
    db: &redb::Database,
    def: TableDefinition<&'static str, V>,
    value: impl Fn(V::SelfType<'_>) -> String,
) -> BTreeMap<String, String> {
    let tx = db.begin_read().unwrap();
    let t = match tx.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return BTreeMap::new(),
        Err(e) => panic!("{e}"),
    };
    t.iter()
        .unwrap()
        .map(|r| {
            let (k, v) = r.unwrap();
            (k.value().to_string(), value(v.value()))
        })
        .collect()
}

const PREPARED_INDEX: TableDefinition<&str, ()> = TableDefinition::new("dtc_participant_prepared");

/// The records, the prepared index and the application's tables agree:
/// the index is exactly the `Prepared` records, a key is locked exactly by
/// the prepared transaction whose payload names it, a committed effect was
/// applied exactly for the `Committed` records, and no refused prepare left
/// anything behind. Returns the records.
fn check_consistent(db: &Arc<redb::Database>) -> Result<BTreeMap<String, LogRecord>, String> {
    let log = ParticipantLog::new(db.clone());
    let records: BTreeMap<String, LogRecord> = log
        .scan(None, usize::MAX)
        .map_err(|e| format!("the participant log does not read: {e}"))?
        .into_iter()
        .collect();
    let index: BTreeSet<String> = read_table(db, PREPARED_INDEX, |_| String::new())
        .into_keys()
        .collect();
    let prepared: BTreeSet<String> = records
        .iter()
        .filter(|(_, r)| r.state == BranchState::Prepared)
        .map(|(t, _)| t.clone())
        .collect();
    if index != prepared {
        return Err(format!(
            "prepared index {index:?} != records in state Prepared {prepared:?}"
        ));
    }
    let mut want_locks = BTreeMap::new();
    let mut want_applied = BTreeSet::new();
    let mut want_balance: BTreeMap<String, u64> = BTreeMap::new();
    for (txn, r) in &records {
        if matches!(r.state, BranchState::Prepared | BranchState::Committed) && !r.voted_prepared {
            return Err(format!("{txn} is {:?} but did not vote prepared", r.state));
        }
        let Work::Lock { key, amount } = Work::parse_or_none(&r.payload) else {
            continue;
        };
        match r.state {
            BranchState::Prepared => {
                if let Some(other) = want_locks.insert(key.clone(), txn.clone()) {
                    return Err(format!("{key} is prepared by both {other} and {txn}"));
                }
            }
            BranchState::Committed => {
                want_applied.insert(txn.clone());
                *want_balance.entry(key).or_default() += amount;
            }
            _ => {}
        }
    }
    let locks = read_table(db, LOCKS, |v| v.to_string());
    if locks != want_locks {
        return Err(format!(
            "locks {locks:?} != the locks of the prepared records {want_locks:?}"
        ));
    }
    let applied: BTreeSet<String> = read_table(db, APPLIED, |_| String::new())
        .into_keys()
        .collect();
    if applied != want_applied {
        return Err(format!(
            "applied effects {applied:?} != committed records {want_applied:?}"
        ));
    }
    let balance: BTreeMap<String, u64> = read_table(db, BALANCE, |v| v.to_string())
        .into_iter()
        .map(|(k, v)| (k, v.parse().unwrap()))
        .collect();
    if balance != want_balance {
        return Err(format!(
            "balances {balance:?} != the sums of the committed amounts {want_balance:?}"
        ));
    }
    let scratch = read_table(db, SCRATCH, |_| String::new());
    if !scratch.is_empty() {
        return Err(format!("a refused prepare left rows behind: {scratch:?}"));
    }
    Ok(records)
}

/// Every transaction's record is the one its acknowledged calls left, or
/// the one the call in flight at `k` would leave. `base`: the states when
/// the recorded calls began (the previous generation's survivors).
fn check_durable(
    k: u64,
    records: &BTreeMap<String, LogRecord>,
    ops: &[OpRecord],
    base: &BTreeMap<String, Option<BranchState>>,
    payloads: &BTreeMap<String, Vec<u8>>,
) -> Result<(), String> {
    let mut per_txn: BTreeMap<&str, Vec<&OpRecord>> = BTreeMap::new();
    for op in ops {
        per_txn.entry(op.txn.as_str()).or_default().push(op);
    }
    let mut txns: BTreeSet<&str> = per_txn.keys().copied().collect();
    txns.extend(base.keys().map(String::as_str));
    txns.extend(records.keys().map(String::as_str));
    for txn in txns {
        let got = records.get(txn).map(|r| r.state);
        let mut now = base.get(txn).copied().flatten();
        let mut last_acked = None;
        let mut in_flight = None;
        for op in per_txn.get(txn).into_iter().flatten() {
            if op.ack <= k {
                now = op.after;
                last_acked = Some(*op);
            } else {
                if op.start < k {
                    in_flight = Some(*op);
                }
                break;
            }
        }
        let ok = got == now || in_flight.is_some_and(|op| got == op.after);
        if !ok {
            return Err(match last_acked {
                Some(op) if got != now => format!(
                    "LOST ACKNOWLEDGED WRITE: {txn} is {got:?} after the crash, but {:?} \
                     answered {:?} at clock {} (before the crash) and left it {:?}",
                    op.kind, op.answer, op.ack, op.after
                ),
                _ => format!(
                    "{txn} is {got:?} after the crash; expected {now:?} (in flight: {in_flight:?})"
                ),
            });
        }
        if let (Some(r), Some(state)) = (records.get(txn), got) {
            let want = if state == BranchState::Tombstone {
                Vec::new()
            } else {
                payloads.get(txn).cloned().unwrap_or_default()
            };
            if r.payload != want {
                return Err(format!("{txn}'s record holds another payload"));
            }
        }
    }
    Ok(())
}

impl Work {
    /// Like `parse`, for a record's payload (a tombstone's is empty).
    fn parse_or_none(payload: &[u8]) -> Work {
        if payload.is_empty() {
            Work::ReadOnly
        } else {
            Work::parse(payload)
        }
    }
}

/// Restarts the participant on the recovered database and checks what a
/// coordinator would see: recovery re-takes exactly the prepared locks,
/// duplicates get the recorded answers without running the resource, and
/// every in-doubt transaction can be decided. Leaves it stopped.
async fn restart_and_resolve(
    db: Arc<redb::Database>,
    records: &BTreeMap<String, LogRecord>,
) -> Result<(), String> {
    let resource = Arc::new(LockResource::default());
    let p = start(db.clone(), resource.clone()).await;
    let recovered: BTreeMap<String, Vec<u8>> = resource
        .recovered
        .lock()
        .unwrap()
        .clone()
        .ok_or("recover was not called")?
        .into_iter()
        .map(|t| (t.txn_id, t.payload))
        .collect();
    let want: BTreeMap<String, Vec<u8>> = records
        .iter()
        .filter(|(_, r)| r.state == BranchState::Prepared)
        .map(|(t, r)| (t.clone(), r.payload.clone()))
        .collect();
    if recovered != want {
        return Err(format!(
            "recover got {:?}, the prepared records are {:?}",
            recovered.keys(),
            want.keys()
        ));
    }
    let held = resource.held.lock().unwrap().clone();
    let locks = read_table(&db, LOCKS, |v| v.to_string());
    if held != locks {
        return Err(format!(
            "locks re-taken at recovery {held:?} != lock rows {locks:?}"
        ));
    }
    // Duplicates are answered from the log; the resource does not run.
    for (txn, r) in records {
        let work = Work::parse_or_none(&r.payload);
        let answer = call(&p.client, OpKind::Prepare, txn, &work.payload()).await;
        expected(OpKind::Prepare, Some(r.state), &work, &answer, None);
        if resource.calls(txn, "prepare") != 0 {
            return Err(format!(
                "a duplicate prepare of {txn} ran the resource again"
            ));
        }
    }
    // Every in-doubt transaction can still be decided, once.
    for (i, txn) in want.keys().enumerate() {
        let kind = if i % 2 == 0 {
            OpKind::Commit
        } else {
            OpKind::Abort
        };
        let answer = call(&p.client, kind, txn, b"").await;
        if answer != "ok" {
            return Err(format!("{kind:?} of in-doubt {txn} answered {answer}"));
        }
    }
    p.running.shutdown().await;
    let after = check_consistent(&db).map_err(|e| format!("after resolving: {e}"))?;
    if let Some((t, _)) = after.iter().find(|(_, r)| r.state == BranchState::Prepared) {
        return Err(format!("{t} is still prepared after its decision"));
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Tally {
    checks: usize,
    restarts: usize,
    in_flight_kept: usize,
    unopenable_new_files: usize,
    per_mode: BTreeMap<&'static str, usize>,
}

#[derive(Debug, Clone, Copy)]
struct Point {
    k: u64,
    mode: CrashMode,
    restart: bool,
}

fn mode_name(m: CrashMode) -> &'static str {
    match m {
        CrashMode::SyncedOnly => "synced-only",
        CrashMode::AllWritten => "all-written",
        CrashMode::Torn { .. } => "torn",
    }
}

/// Checks one crash image; `Ok(None)` for a file whose creation did not
/// finish (redb refuses it; see dtc-store's `lost_writes.rs`).
async fn check_crash(
    p: Point,
    img: Vec<u8>,
    m: &Model,
    base: &BTreeMap<String, Option<BranchState>>,
    clock: &OpClock,
    tally: &mut Tally,
) -> Result<Option<Arc<redb::Database>>, String> {
    let fresh_file = unfinished_redb_file(&img);
    let db = match dtc_participant::open_database_with_backend(SimDisk::from_image(img, clock)) {
        Ok(db) => db,
        Err(e) if fresh_file && e.to_string().contains("magic number") => {
            tally.unopenable_new_files += 1;
            return Ok(None);
        }
        Err(e) => return Err(format!("the database does not open: {e}")),
    };
    let records = check_consistent(&db)?;
    check_durable(p.k, &records, &m.ops, base, &m.payload)?;
    tally.checks += 1;
    *tally.per_mode.entry(mode_name(p.mode)).or_default() += 1;
    let kept = m.ops.iter().any(|op| {
        op.start < p.k
            && op.ack > p.k
            && op.after != op.before
            && records.get(&op.txn).map(|r| r.state) == op.after
    });
    if kept {
        tally.in_flight_kept += 1;
    }
    if p.restart {
        restart_and_resolve(db.clone(), &records).await?;
        tally.restarts += 1;
    }
    Ok(Some(db))
}

fn describe(m: &Model, k: u64) -> String {
    let acked = m.ops.iter().take_while(|op| op.ack <= k).count();
    let mut out = String::new();
    for op in m.ops.iter().skip(acked.saturating_sub(3)).take(6) {
        let _ = write!(
            out,
            "\n    {:?} {} ({:?} -> {:?}, answered {}) clock {}..{}",
            op.kind, op.txn, op.before, op.after, op.answer, op.start, op.ack
        );
    }
    out
}

/// Runs a workload on a fresh participant: (model, trace, end clock).
async fn workload(seed: u64, rounds: usize) -> (Model, Trace, u64) {
    let clock = OpClock::new();
    let disk = SimDisk::new(&clock);
    let db = dtc_participant::open_database_with_backend(disk.clone()).unwrap();
    let p = start(db, Arc::new(LockResource::default())).await;
    let mut rng = Rng::new(seed);
    let mut m = Model::default();
    drive(&p, &clock, &mut rng, &mut m, rounds).await;
    let end = clock.now();
    p.running.shutdown().await;
    (m, disk.trace(), end)
}

async fn crash_at_points(
    seed: u64,
    mut points: Vec<Point>,
    m: &Model,
    trace: &Trace,
    tally: &mut Tally,
) {
    points.sort_by_key(|p| p.k);
    let mut r = trace.replayer();
    let base = BTreeMap::new();
    for p in points {
        r.advance_to(p.k);
        let clock = OpClock::new();
        if let Err(e) = check_crash(p, r.image(p.mode), m, &base, &clock, tally).await {
            panic!(
                "seed {seed}, crash at clock {} ({:?}{}): {e}\n  calls around the crash:{}",
                p.k,
                p.mode,
                if p.restart { ", restarted" } else { "" },
                describe(m, p.k)
            );
        }
    }
}

fn covered(m: &Model) {
    for want in [
        BranchState::Prepared,
        BranchState::Committed,
        BranchState::Aborted,
        BranchState::ReadOnly,
        BranchState::Tombstone,
    ] {
        assert!(
            m.ops.iter().any(|op| op.after == Some(want)),
            "the workload never reached {want:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_returned_vote_and_acknowledged_decision_survives_a_crash_at_every_sync() {
    let mut tally = Tally::default();
    let seed = 7;
    let (m, trace, end) = workload(seed, 150).await;
    covered(&m);
    // Group commit happened: some sync made several calls' records durable.
    let writes = m.ops.iter().filter(|op| op.after != op.before).count();
    let syncs = trace.sync_clocks().len();
    eprintln!("{writes} writing calls, {syncs} syncs");
    assert!(writes > syncs, "{writes} writing calls, {syncs} syncs");
    let mut points = vec![Point {
        k: end,
        mode: CrashMode::SyncedOnly,
        restart: true,
    }];
    for (i, s) in trace.sync_clocks().into_iter().enumerate() {
        // Every distinct durable image, and the process-crash image with a
        // batch written but not synced.
        points.push(Point {
            k: s + 1,
            mode: CrashMode::SyncedOnly,
            restart: i % 10 == 3,
        });
        points.push(Point {
            k: s,
            mode: CrashMode::AllWritten,
            restart: i % 10 == 8,
        });
    }
    crash_at_points(seed, points, &m, &trace, &mut tally).await;
    eprintln!("{tally:?}");
    assert!(
        tally.restarts >= 10 && tally.in_flight_kept > 0,
        "{tally:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_unsynced_writes_never_lose_a_returned_vote_or_unbalance_the_locks() {
    let mut tally = Tally::default();
    for seed in seeds(&[31, 32]) {
        let (m, trace, end) = workload(seed, 120).await;
        let mut rng = Rng::new(seed ^ 0x7043);
        let mut points = Vec::new();
        for s in trace.sync_clocks() {
            points.push(Point {
                k: s,
                mode: CrashMode::Torn {
                    seed: rng.next_u64(),
                },
                restart: rng.chance(1, 20),
            });
        }
        for _ in 0..40 {
            points.push(Point {
                k: rng.range(0, end),
                mode: CrashMode::Torn {
                    seed: rng.next_u64(),
                },
                restart: rng.chance(1, 10),
            });
        }
        crash_at_points(seed, points, &m, &trace, &mut tally).await;
    }
    eprintln!("{tally:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_keeps_its_votes_across_repeated_crashes_and_restarts() {
    for seed in seeds(&[41, 42]) {
        let clock = OpClock::new();
        let mut disk = SimDisk::new(&clock);
        let mut db = dtc_participant::open_database_with_backend(disk.clone()).unwrap();
        let mut rng = Rng::new(seed);
        let mut m = Model::default();
        let mut tally = Tally::default();
        for generation in 0..4 {
            let base = m.state.clone();
            m.ops.clear();
            let gen_start = clock.now();
            let p = start(db.clone(), Arc::new(LockResource::default())).await;
            drive(&p, &clock, &mut rng, &mut m, 40).await;
            let end = clock.now();
            // The crash: nothing more is answered; the file is what survives.
            p.running.kill().await;
            let k = rng.range(gen_start, end);
            let mode = match rng.below(3) {
                0 => CrashMode::SyncedOnly,
                1 => CrashMode::AllWritten,
                _ => CrashMode::Torn {
                    seed: rng.next_u64(),
                },
            };
            let image = disk.trace().crash_image(k, mode);
            drop(db);
            // Reopen on a new recording disk that starts from the image.
            let point = Point {
                k,
                mode,
                restart: false,
            };
            let reopened = check_crash(point, image.clone(), &m, &base, &clock, &mut tally)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "seed {seed}, generation {generation}, crash at {k} ({mode:?}): {e}\n  \
                         calls around the crash:{}",
                        describe(&m, k)
                    )
                })
                .expect("the file exists long before this crash");
            drop(reopened);
            disk = SimDisk::from_image(image, &clock);
            db = dtc_participant::open_database_with_backend(disk.clone()).unwrap();
            // The client's view becomes what survived.
            let records = check_consistent(&db).unwrap();
            for (txn, s) in m.state.iter_mut() {
                *s = records.get(txn).map(|r| r.state);
            }
        }
    }
}

// A crash while a database file is first created is handled by creating it
// under a temporary name and renaming it into place (see
// `dtc_store::files`); redb itself refuses a file whose creation was
// interrupted, which is why this file's simulated backends skip that window.
