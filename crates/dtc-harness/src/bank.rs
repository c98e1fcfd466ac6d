//! The bank workload of the demo: concurrent clients moving random amounts
//! between random accounts of the ledgers (within one ledger and across
//! both; a few overdrafts of more than all the money, which must abort),
//! through the client SDK, retrying an unknown outcome with the same id.
//!
//! ```text
//! worker (one per client) --transfer--> coordinators --2PC--> ledgers
//!    |  outcome, classified (AbortKind)
//!    v
//! Shared { stats (live counters for the progress line), history (every
//!          transfer and what its client was told, for crate::checker) }
//! ```
//!
//! Each worker draws from its own seeded [`fastrand::Rng`]
//! ([`Workload::seed`]), so a seed names a run's choices.

use crate::cluster::{LEDGERS, LocalCluster, account};
use crate::history::{Account, History, Op, OpKind, OpResult, transfer_branches};
use anyhow::{Context, Result};
use dtc_client::proto::AuditOutcome;
use dtc_client::{Client, ClientConfig, ClientError, TxnOutcome};
use dtc_ledger::{AccountBalance, LedgerClient};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Prepare timeout of every demo transfer.
pub const PREPARE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long one `execute` may take before its outcome counts as unknown
/// (then it is retried with the same id).
const ATTEMPT_DEADLINE: Duration = Duration::from_secs(3);
/// How long a transfer is retried before the client gives up on it.
const TRANSFER_GIVE_UP: Duration = Duration::from_secs(60);
/// Share of transfers (percent) that are overdrafts and must abort.
const OVERDRAFT_PERCENT: u64 = 8;
/// Share of transfers (percent) that cross the two ledgers.
const CROSS_PERCENT: u64 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortKind {
    /// The balance could not cover the debit whatever else was pending.
    Funds,
    /// Contention: the debit would have fitted but for what other prepared
    /// transactions reserved (the ledger says "until prepared transactions
    /// resolve").
    Reserved,
    /// Contention: an account was locked by another prepared transaction
    /// ("held by"; the ledger no longer locks accounts, so this should stay 0).
    Busy,
    LedgerDown,
    Failover,
    Other,
}

impl AbortKind {
    pub fn of(reason: &str) -> AbortKind {
        if reason.contains("until prepared transactions resolve") {
            AbortKind::Reserved
        } else if reason.contains("insufficient funds") {
            AbortKind::Funds
        } else if reason.contains("held by") {
            AbortKind::Busy
        } else if reason.contains("timed out waiting for the vote") {
            AbortKind::LedgerDown
        } else if reason.contains("failover")
            || reason.contains("takeover")
            || reason.contains("presumed abort")
        {
            AbortKind::Failover
        } else {
            AbortKind::Other
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Default)]
pub struct Stats {
    pub committed: AtomicU64,
    pub committed_cross: AtomicU64,
    pub aborted: [AtomicU64; 6],
    /// Transfers currently retrying after an unknown outcome.
    pub retrying: AtomicU64,
    /// Transfers that had an unknown outcome at least once.
    pub unknown_total: AtomicU64,
    /// Aborted transfers that touched each ledger.
    pub aborted_touching: [AtomicU64; 2],
}

impl Stats {
    pub fn aborted(&self) -> u64 {
        self.aborted.iter().map(|a| a.load(Relaxed)).sum()
    }
}

/// What the workers share with the display and the checker.
pub struct Shared {
    pub stats: Stats,
    pub history: History,
    pub stop: AtomicBool,
    /// Current leader for the display (0: none known).
    pub leader: AtomicU64,
}

/// What the workers draw from.
pub struct Workload {
    pub accounts: u64,
    /// All the money: an overdraft asks for more.
    pub supply: i64,
    pub max_amount: i64,
    /// Worker `i` draws from a generator seeded with `seed + i`.
    pub seed: u64,
}

/// Runs transfers until `shared.stop`; every transfer ends with an outcome
/// (or, after [`TRANSFER_GIVE_UP`], as unknown).
pub async fn worker(idx: usize, client: Client, shared: Arc<Shared>, w: Arc<Workload>) {
    let mut rng = fastrand::Rng::with_seed(w.seed.wrapping_add(idx as u64));
    let mut n = 0u64;
    while !shared.stop.load(Relaxed) {
        n += 1;
        let id = format!("demo-c{idx:02}-{n:06}");
        let from_l = rng.usize(0..2);
        let to_l = if rng.u64(0..100) < CROSS_PERCENT {
            1 - from_l
        } else {
            from_l
        };
        let from_a = rng.u64(0..w.accounts) as usize;
        let mut to_a = rng.u64(0..w.accounts) as usize;
        if from_l == to_l && to_a == from_a {
            to_a = (to_a + 1 + rng.u64(0..w.accounts - 1) as usize) % w.accounts as usize;
        }
        let overdraft = rng.u64(0..100) < OVERDRAFT_PERCENT;
        let amount = if overdraft {
            w.supply + 1
        } else {
            rng.i64(1..=w.max_amount)
        };
        let from = Account {
            ledger: LEDGERS[from_l].to_string(),
            account: account(from_a),
        };
        let to = Account {
            ledger: LEDGERS[to_l].to_string(),
            account: account(to_a),
        };
        let index = shared.history.begin(Op {
            id: id.clone(),
            kind: OpKind::Transfer,
            client: idx,
            branches: transfer_branches(&from, &to, amount),
            start_ms: shared.history.now_ms(),
            end_ms: 0,
            result: OpResult::Running,
        });
        let started = Instant::now();
        let mut retried = false;
        let outcome = loop {
            let result = client
                .transfer(
                    (&from.ledger, &from.account),
                    (&to.ledger, &to.account),
                    amount,
                )
                .id(id.clone())
                .timeout(PREPARE_TIMEOUT)
                .deadline(ATTEMPT_DEADLINE)
                .execute()
                .await;
            match result {
                Ok(TxnOutcome::Committed { .. }) => break OpResult::Committed,
                Ok(TxnOutcome::Aborted { reason, .. }) => break OpResult::Aborted { reason },
                // Unreachable says this call sent nothing, but an earlier
                // attempt with the same id may have run: keep asking.
                Err(e)
                    if e.is_outcome_unknown()
                        || matches!(
                            e,
                            ClientError::Overloaded(_) | ClientError::Unreachable(_)
                        ) =>
                {
                    if !retried {
                        retried = true;
                        shared.stats.retrying.fetch_add(1, Relaxed);
                        shared.stats.unknown_total.fetch_add(1, Relaxed);
                    }
                    if started.elapsed() >= TRANSFER_GIVE_UP {
                        break OpResult::Unknown {
                            error: format!("{e} (given up after {TRANSFER_GIVE_UP:?})"),
                        };
                    }
                    // A short pause between attempts; the SDK backs off inside.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    break OpResult::Failed {
                        error: e.to_string(),
                    };
                }
            }
        };
        if retried {
            shared.stats.retrying.fetch_sub(1, Relaxed);
        }
        let s = &shared.stats;
        match &outcome {
            OpResult::Committed => {
                s.committed.fetch_add(1, Relaxed);
                if from_l != to_l {
                    s.committed_cross.fetch_add(1, Relaxed);
                }
            }
            OpResult::Aborted { reason } => {
                s.aborted[AbortKind::of(reason).index()].fetch_add(1, Relaxed);
                s.aborted_touching[from_l].fetch_add(1, Relaxed);
                if to_l != from_l {
                    s.aborted_touching[to_l].fetch_add(1, Relaxed);
                }
            }
            _ => {}
        }
        shared.history.finish(index, outcome);
    }
}

/// The workers' client: short retries, so a failover shows as an unknown
/// outcome the worker retries itself.
pub fn workload_client(cluster: &LocalCluster) -> Result<Client> {
    Client::with_config(
        cluster.coordinator_addrs(),
        ClientConfig {
            connect_timeout: Duration::from_millis(300),
            retry_budget: Duration::from_secs(2),
            call_deadline: Duration::from_secs(5),
            assumed_txn_timeout: PREPARE_TIMEOUT,
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(250),
            ..ClientConfig::default()
        },
    )
    .context("cannot make a client")
}

/// Every account's committed balance (with its reservations), and the sum
/// of the balances.
pub async fn balances(
    client: &Client,
    accounts: u64,
) -> Result<(i64, BTreeMap<(usize, String), AccountBalance>)> {
    let mut jobs = Vec::new();
    for (l, name) in LEDGERS.iter().enumerate() {
        for a in 0..accounts as usize {
            let acct = account(a);
            jobs.push(async move {
                let b = client
                    .account_balance(name, &acct)
                    .await
                    .with_context(|| format!("reading {name}/{acct}"))?;
                anyhow::Ok(((l, acct), b))
            });
        }
    }
    let all: BTreeMap<(usize, String), AccountBalance> = futures::future::join_all(jobs)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    Ok((all.values().map(|b| b.balance).sum(), all))
}

/// Prepared (undecided) transactions at each ledger.
pub async fn prepared_at(client: &Client, ledger: &str) -> Result<Vec<String>> {
    Ok(client
        .ledger_audit(ledger, true)
        .await
        .with_context(|| format!("auditing {ledger}"))?
        .into_iter()
        .filter(|e| e.outcome == AuditOutcome::Prepared as i32)
        .map(|e| e.txn_id)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abort_reasons_are_classified() {
        assert_eq!(
            AbortKind::of(
                "participant bank-a voted abort: insufficient funds in account \"acct-01\""
            ),
            AbortKind::Funds
        );
        assert_eq!(
            AbortKind::of(
                "participant bank-a voted abort: insufficient funds in account \"acct-01\" \
                 until prepared transactions resolve: debit 5, available 3 (balance 10, \
                 reserved 7): short by 2"
            ),
            AbortKind::Reserved
        );
        assert_eq!(
            AbortKind::of(
                "participant bank-a voted abort: account \"x\" is held by prepared transaction t"
            ),
            AbortKind::Busy
        );
        assert_eq!(
            AbortKind::of("timed out waiting for the vote of bank-b"),
            AbortKind::LedgerDown
        );
        assert_eq!(
            AbortKind::of("coordinator failover before the decision"),
            AbortKind::Failover
        );
        assert_eq!(AbortKind::of("something else"), AbortKind::Other);
    }
}
