//! What a bank workload did and saw: every operation a client ran (its
//! branches and what it was told) and every decision seen for a
//! transaction, in one thread-safe [`History`] that the [`crate::checker`]
//! compares with the final state. The demo's workers and the failover
//! suite's clients both record here.

use dtc_proto::v1 as pb;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

/// One account: `account` at ledger participant `ledger`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Account {
    pub ledger: String,
    pub account: String,
}

/// The entries one branch of an operation carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Branch {
    pub participant: String,
    pub entries: Vec<(String, i64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Deposit,
    Transfer,
}

/// What the client learned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum OpResult {
    /// Not finished yet.
    Running,
    Committed,
    Aborted {
        reason: String,
    },
    /// No answer before the client's deadline: may or may not have run.
    Unknown {
        error: String,
    },
    /// Refused before running (e.g. overloaded): must not have run.
    Failed {
        error: String,
    },
}

impl OpResult {
    pub fn label(&self) -> &'static str {
        match self {
            OpResult::Running => "running",
            OpResult::Committed => "committed",
            OpResult::Aborted { .. } => "aborted",
            OpResult::Unknown { .. } => "unknown",
            OpResult::Failed { .. } => "failed",
        }
    }
}

/// One client operation (a transaction with a client-chosen id).
#[derive(Debug, Clone, Serialize)]
pub struct Op {
    pub id: String,
    pub kind: OpKind,
    /// Client number (deposits and checks: `usize::MAX`).
    pub client: usize,
    pub branches: Vec<Branch>,
    pub start_ms: u64,
    pub end_ms: u64,
    #[serde(flatten)]
    pub result: OpResult,
}

/// A decision seen for a transaction at some moment.
#[derive(Debug, Clone, Serialize)]
pub struct Observation {
    pub txn_id: String,
    pub t_ms: u64,
    /// `execute` (the client's answer) or `get@N` (GetTransaction via node N).
    pub source: String,
    /// `commit` or `abort` (only decisions are recorded).
    pub decision: &'static str,
    /// The state name (committing, committed, aborting, aborted).
    pub state: String,
}

/// Everything the clients did and saw. Thread-safe; shared by the client
/// tasks, the observer and the checker.
#[derive(Debug)]
pub struct History {
    started: Instant,
    ops: Mutex<Vec<Op>>,
    observations: Mutex<Vec<Observation>>,
    /// Ids recently started, for the observer.
    recent: Mutex<VecDeque<String>>,
}

impl History {
    pub fn new(started: Instant) -> Self {
        History {
            started,
            ops: Mutex::new(Vec::new()),
            observations: Mutex::new(Vec::new()),
            recent: Mutex::new(VecDeque::new()),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Records an operation as running; returns its index.
    pub fn begin(&self, op: Op) -> usize {
        {
            let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            r.push_back(op.id.clone());
            while r.len() > 64 {
                r.pop_front();
            }
        }
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        ops.push(op);
        ops.len() - 1
    }

    pub fn finish(&self, index: usize, result: OpResult) {
        let now = self.now_ms();
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let op = &mut ops[index];
        if let OpResult::Committed | OpResult::Aborted { .. } = &result {
            let obs = Observation {
                txn_id: op.id.clone(),
                t_ms: now,
                source: "execute".into(),
                decision: if result == OpResult::Committed {
                    "commit"
                } else {
                    "abort"
                },
                state: result.label().into(),
            };
            self.observe(obs);
        }
        op.end_ms = now;
        op.result = result;
    }

    pub fn observe(&self, obs: Observation) {
        self.observations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(obs);
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn observations(&self) -> Vec<Observation> {
        self.observations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Ids recently started (the last 64), for an observer.
    pub fn recent(&self) -> Vec<String> {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// Maps an SDK result to what the client learned.
pub fn result_of(r: Result<dtc_client::TxnOutcome, dtc_client::ClientError>) -> OpResult {
    match r {
        Ok(dtc_client::TxnOutcome::Committed { .. }) => OpResult::Committed,
        Ok(dtc_client::TxnOutcome::Aborted { reason, .. }) => OpResult::Aborted { reason },
        Err(e) if e.is_outcome_unknown() => OpResult::Unknown {
            error: e.to_string(),
        },
        Err(e) => OpResult::Failed {
            error: e.to_string(),
        },
    }
}

/// The branches the SDK sends for a transfer (one per ledger).
pub fn transfer_branches(from: &Account, to: &Account, amount: i64) -> Vec<Branch> {
    if from.ledger == to.ledger {
        vec![Branch {
            participant: from.ledger.clone(),
            entries: vec![
                (from.account.clone(), -amount),
                (to.account.clone(), amount),
            ],
        }]
    } else {
        vec![
            Branch {
                participant: from.ledger.clone(),
                entries: vec![(from.account.clone(), -amount)],
            },
            Branch {
                participant: to.ledger.clone(),
                entries: vec![(to.account.clone(), amount)],
            },
        ]
    }
}

/// The decision a `TxnState` shows, if any: (`commit`|`abort`, state name).
pub fn decision_of(state: i32) -> Option<(&'static str, &'static str)> {
    match pb::TxnState::try_from(state).ok()? {
        pb::TxnState::Committing => Some(("commit", "committing")),
        pb::TxnState::Committed => Some(("commit", "committed")),
        pb::TxnState::Aborting => Some(("abort", "aborting")),
        pb::TxnState::Aborted => Some(("abort", "aborted")),
        _ => None,
    }
}
