//! The bank workload (after Jepsen's bank test): accounts spread over the
//! ledger participants, seeded with known deposits, then concurrent clients
//! moving random amounts between random accounts through the client SDK,
//! which retries with the same txn id across failovers. Each client draws
//! from a [`fastrand::Rng`] seeded from the run's seed. Every operation and
//! every decision seen (Execute answers, and GetTransaction polls of a
//! background observer through each node in turn) goes into a [`History`]
//! for the [`crate::checker`].

use crate::testbed::Testbed;
use crate::{client_for, request};
use dtc_proto::v1 as pb;
use serde::Serialize;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

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

    fn recent(&self) -> Vec<String> {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// Shape of the workload.
#[derive(Debug, Clone)]
pub struct BankOptions {
    pub accounts_per_ledger: usize,
    /// Deposited into every account before the clients start.
    pub initial_balance: i64,
    pub clients: usize,
    /// Transfers move 1..=max_amount.
    pub max_amount: i64,
    /// Prepare timeout of each transaction.
    pub txn_timeout: Duration,
    /// How long the SDK keeps retrying one transaction (same id) before the
    /// client records its outcome as unknown.
    pub op_deadline: Duration,
    /// Pause between a client's operations.
    pub think: Duration,
}

impl Default for BankOptions {
    fn default() -> Self {
        BankOptions {
            accounts_per_ledger: 4,
            initial_balance: 100,
            clients: 4,
            max_amount: 40,
            txn_timeout: Duration::from_secs(2),
            op_deadline: Duration::from_secs(8),
            think: Duration::from_millis(20),
        }
    }
}

/// Maps an SDK result to what the client learned.
pub fn result_of(r: Result<dtc_client::TxnOutcome, dtc_client::ClientError>) -> OpResult {
    match r {
        Ok(o) if o.committed => OpResult::Committed,
        Ok(o) => OpResult::Aborted { reason: o.reason },
        Err(e) if e.is_outcome_unknown() => OpResult::Unknown {
            error: e.to_string(),
        },
        Err(e) => OpResult::Failed {
            error: e.to_string(),
        },
    }
}

/// The accounts, the seeded total and the history of one run.
#[derive(Debug, Clone)]
pub struct Bank {
    pub accounts: Vec<Account>,
    pub options: BankOptions,
    pub history: Arc<History>,
    /// Sum of the seeded deposits (all committed).
    pub total: i64,
}

impl Bank {
    /// Creates the accounts and deposits `initial_balance` into each (ids
    /// `seed-<ledger>-<account>`), retrying each with its id until committed.
    pub async fn seed(tb: &Testbed, options: BankOptions) -> Bank {
        let history = Arc::new(History::new(Instant::now()));
        let mut accounts = Vec::new();
        for ledger in tb.ledger_names() {
            for a in 0..options.accounts_per_ledger {
                accounts.push(Account {
                    ledger: ledger.clone(),
                    account: format!("acct-{a}"),
                });
            }
        }
        let deposits = accounts.iter().map(|acct| {
            let client = tb.client.clone();
            let history = history.clone();
            let amount = options.initial_balance;
            async move {
                let id = format!("seed-{}-{}", acct.ledger, acct.account);
                let deadline = Instant::now() + Duration::from_secs(60);
                let index = history.begin(Op {
                    id: id.clone(),
                    kind: OpKind::Deposit,
                    client: usize::MAX,
                    branches: vec![Branch {
                        participant: acct.ledger.clone(),
                        entries: vec![(acct.account.clone(), amount)],
                    }],
                    start_ms: history.now_ms(),
                    end_ms: 0,
                    result: OpResult::Running,
                });
                loop {
                    let r = client
                        .deposit((&acct.ledger, &acct.account), amount)
                        .id(&id)
                        .timeout(Duration::from_secs(5))
                        .execute()
                        .await;
                    let result = result_of(r);
                    if result == OpResult::Committed || Instant::now() >= deadline {
                        assert_eq!(result, OpResult::Committed, "seeding deposit {id}");
                        history.finish(index, result);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        futures::future::join_all(deposits).await;
        let total = options.initial_balance * accounts.len() as i64;
        Bank {
            accounts,
            options,
            history,
            total,
        }
    }

    /// Starts `options.clients` client tasks doing random transfers until
    /// `stop` turns true (then each finishes its current operation).
    pub fn spawn_clients(
        &self,
        client: &dtc_client::Client,
        seed: u64,
        stop: &watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        (0..self.options.clients)
            .map(|c| {
                let client = client.clone();
                let history = self.history.clone();
                let accounts = self.accounts.clone();
                let options = self.options.clone();
                let stop = stop.clone();
                let mut rng = fastrand::Rng::with_seed(
                    seed ^ (c as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407),
                );
                tokio::spawn(async move {
                    let mut seq = 0u64;
                    while !*stop.borrow() {
                        seq += 1;
                        let from = accounts[rng.usize(..accounts.len())].clone();
                        let to = loop {
                            let to = &accounts[rng.usize(..accounts.len())];
                            if *to != from {
                                break to.clone();
                            }
                        };
                        let amount = rng.i64(1..=options.max_amount.max(1));
                        let id = format!("c{c}-{seq:05}");
                        transfer_recorded(
                            &history,
                            &client,
                            c,
                            &id,
                            (&from, &to, amount),
                            options.txn_timeout,
                            options.op_deadline,
                        )
                        .await;
                        tokio::time::sleep(options.think).await;
                    }
                })
            })
            .collect()
    }

    /// One transfer with id `id`, recorded in the history like a client's
    /// (client number `usize::MAX`); returns what the client learned.
    pub async fn transfer(
        &self,
        client: &dtc_client::Client,
        id: &str,
        (from, to, amount): (&Account, &Account, i64),
        txn_timeout: Duration,
        deadline: Duration,
    ) -> OpResult {
        transfer_recorded(
            &self.history,
            client,
            usize::MAX,
            id,
            (from, to, amount),
            txn_timeout,
            deadline,
        )
        .await
    }

    /// The account `account` of ledger `ledger`.
    pub fn account(&self, ledger: &str, account: &str) -> Account {
        self.accounts
            .iter()
            .find(|a| a.ledger == ledger && a.account == account)
            .unwrap_or_else(|| panic!("no account {ledger}/{account}"))
            .clone()
    }

    /// Polls GetTransaction for recently started transactions through each
    /// node in turn (a follower forwards to the leader it believes in; a
    /// node that believes itself leader answers from its applied state),
    /// recording every decision seen, until `stop`.
    pub fn spawn_observer(
        &self,
        nodes: Vec<(u64, SocketAddr)>,
        stop: &watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let history = self.history.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let clients: Vec<_> = nodes.iter().map(|(id, a)| (*id, client_for(*a))).collect();
            let mut turn = 0usize;
            while !*stop.borrow() {
                let ids = history.recent();
                let batch = ids.iter().rev().take(8).cloned().collect::<Vec<_>>();
                let polls = batch.into_iter().map(|txn_id| {
                    turn += 1;
                    let (node, mut c) = clients[turn % clients.len()].clone();
                    let history = history.clone();
                    async move {
                        let r = c
                            .get_transaction(request(
                                pb::GetTransactionRequest {
                                    txn_id: txn_id.clone(),
                                },
                                Duration::from_millis(800),
                            ))
                            .await;
                        if let Ok(resp) = r
                            && let Some(t) = resp.into_inner().transaction
                            && let Some((decision, state)) = decision_of(t.state)
                        {
                            history.observe(Observation {
                                txn_id,
                                t_ms: history.now_ms(),
                                source: format!("get@{node}"),
                                decision,
                                state: state.into(),
                            });
                        }
                    }
                });
                futures::future::join_all(polls).await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(150)) => {}
                    _ = stop.changed() => {}
                }
            }
        })
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

async fn transfer_recorded(
    history: &History,
    client: &dtc_client::Client,
    client_no: usize,
    id: &str,
    (from, to, amount): (&Account, &Account, i64),
    txn_timeout: Duration,
    deadline: Duration,
) -> OpResult {
    let index = history.begin(Op {
        id: id.to_string(),
        kind: OpKind::Transfer,
        client: client_no,
        branches: transfer_branches(from, to, amount),
        start_ms: history.now_ms(),
        end_ms: 0,
        result: OpResult::Running,
    });
    let r = client
        .transfer(
            (&from.ledger, &from.account),
            (&to.ledger, &to.account),
            amount,
        )
        .id(id)
        .timeout(txn_timeout)
        .deadline(deadline)
        .execute()
        .await;
    let result = result_of(r);
    history.finish(index, result.clone());
    result
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
