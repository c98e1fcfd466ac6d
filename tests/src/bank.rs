//! The bank workload (after Jepsen's bank test): accounts spread over the
//! ledger participants, seeded with known deposits, then concurrent clients
//! moving random amounts between random accounts through the client SDK,
//! which retries with the same txn id across failovers. Each client draws
//! from a [`fastrand::Rng`] seeded from the run's seed. Every operation and
//! every decision seen (Execute answers, and GetTransaction polls of a
//! background observer through each node in turn) goes into a [`History`]
//! for the [`crate::checker`].

pub use dtc_harness::history::{
    Account, Branch, History, Observation, Op, OpKind, OpResult, decision_of, result_of,
    transfer_branches,
};

use crate::testbed::Testbed;
use crate::{client_for, request};
use dtc_ledger::LedgerClient;
use dtc_proto::v1 as pb;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

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
