//! The workload of the simulated client host: seed the accounts, run
//! transfers from a few concurrent clients until the fault window closes,
//! wait until every transaction has resolved, probe that the healed cluster
//! commits, read the final state and hand it to the bank checker
//! ([`dtc_harness::checker`], the one the failover suite and the demo use).
//!
//! Every random choice comes from the seed; every wait is on simulated time.

use crate::hosts::{LEDGERS, coordinator_addrs};
use dtc_client::{Client, ClientConfig, ClientError, TxnOutcome};
use dtc_harness::checker::{self, AtCluster, AtParticipant, FinalState};
use dtc_harness::history::{
    Account, Branch, History, Op, OpKind, OpResult, result_of, transfer_branches,
};
use dtc_ledger::LedgerClient;
use dtc_proto::v1 as pb;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Accounts per ledger, each seeded with [`INITIAL_BALANCE`].
pub const ACCOUNTS: usize = 3;
pub const INITIAL_BALANCE: i64 = 100;
/// How long after the heal every transaction must have resolved.
pub const QUIESCE_WITHIN: Duration = Duration::from_secs(60);
/// How long after quiescing a transfer must commit: past a channel's
/// keepalive (5 s interval, 5 s timeout), which is what notices a
/// connection that a cut left broken on the client's and the participants'
/// side (a coordinator redials a silent participant sooner).
pub const LIVE_WITHIN: Duration = Duration::from_secs(20);
/// How long one transfer keeps retrying an unknown outcome with its id.
const GIVE_UP: Duration = Duration::from_secs(30);

/// What the client host and the simulation loop share.
#[derive(Debug, Default)]
pub struct Control {
    /// Set by the loop when the fault window closes: no new transfers.
    pub healed: AtomicBool,
    /// Set by the client host when it is done.
    pub result: Mutex<Option<Checked>>,
}

/// What the client host found.
#[derive(Debug, Clone)]
pub struct Checked {
    pub history: Vec<Op>,
    pub final_state: FinalState,
    pub anomalies: checker::Anomalies,
    pub resolution: checker::Resolution,
    /// Simulated time from the heal (as the workers saw it) until no
    /// transaction was pending anywhere, if that happened.
    pub quiescent_after_heal: Option<Duration>,
    /// Simulated time from the heal until the after-heal probe committed.
    pub live_after_heal: Option<Duration>,
}

fn accounts() -> Vec<Account> {
    LEDGERS
        .iter()
        .flat_map(|l| {
            (0..ACCOUNTS).map(move |a| Account {
                ledger: l.to_string(),
                account: format!("acct-{a}"),
            })
        })
        .collect()
}

/// The client host: runs the whole workload and the check.
pub async fn client(
    seed: u64,
    workers: usize,
    control: Arc<Control>,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::with_config(
        coordinator_addrs(),
        ClientConfig {
            connect_timeout: Duration::from_millis(300),
            retry_budget: Duration::from_secs(2),
            call_deadline: Duration::from_secs(5),
            assumed_txn_timeout: Duration::from_secs(2),
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(250),
            dialer: crate::net::dialer(),
            ..ClientConfig::default()
        },
    )?;
    let history = Arc::new(History::new(std::time::Instant::now()));
    let accounts = accounts();
    let mut anomalies = checker::Anomalies::default();

    // The participants register with the cluster as they start.
    let registered_by = Instant::now() + Duration::from_secs(60);
    for ledger in LEDGERS {
        while let Err(e) = client.participant_endpoint(ledger).await {
            if Instant::now() >= registered_by {
                return Err(format!("{ledger} never registered: {e}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let deposits = accounts.iter().map(|acct| {
        let op = Op {
            id: format!("seed-{}-{}", acct.ledger, acct.account),
            kind: OpKind::Deposit,
            client: usize::MAX,
            branches: vec![Branch {
                participant: acct.ledger.clone(),
                entries: vec![(acct.account.clone(), INITIAL_BALANCE)],
            }],
            start_ms: 0,
            end_ms: 0,
            result: OpResult::Running,
        };
        let (client, history) = (&client, &history);
        async move {
            let result = run_op(client, history, op, Duration::from_secs(60)).await;
            match result {
                OpResult::Committed => Ok(()),
                r => Err(format!("seeding {}/{}: {r:?}", acct.ledger, acct.account)),
            }
        }
    });
    for r in futures::future::join_all(deposits).await {
        r?;
    }
    let deposited = INITIAL_BALANCE * accounts.len() as i64;

    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (client, history, control, accounts) = (
                client.clone(),
                history.clone(),
                control.clone(),
                accounts.clone(),
            );
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(seed ^ ((w as u64 + 1) << 40));
                let mut n = 0;
                while !control.healed.load(Ordering::SeqCst) {
                    n += 1;
                    let from = &accounts[rng.usize(..accounts.len())];
                    let mut to = &accounts[rng.usize(..accounts.len())];
                    if to == from {
                        to = &accounts[(accounts.iter().position(|a| a == from).unwrap_or(0) + 1)
                            % accounts.len()];
                    }
                    // One in ten asks for more than there is: it must abort.
                    let amount = if rng.u8(0..10) == 0 {
                        deposited + 1
                    } else {
                        rng.i64(1..=40)
                    };
                    let op = Op {
                        id: format!("w{w}-{n}"),
                        kind: OpKind::Transfer,
                        client: w,
                        branches: transfer_branches(from, to, amount),
                        start_ms: 0,
                        end_ms: 0,
                        result: OpResult::Running,
                    };
                    run_op(&client, &history, op, GIVE_UP).await;
                    tokio::time::sleep(Duration::from_millis(rng.u64(0..60))).await;
                }
            })
        })
        .collect();
    for t in futures::future::join_all(tasks).await {
        t?;
    }
    let healed_at = Instant::now();
    let mut quiescent_after_heal = None;
    let mut live_after_heal = None;

    // Everything resolved: no prepared branch anywhere, every transaction
    // decided in the cluster.
    let quiesce_by = Instant::now() + QUIESCE_WITHIN;
    let mut decided = BTreeMap::new();
    let ids: Vec<String> = history.ops().into_iter().map(|o| o.id).collect();
    let mut fin = loop {
        match read_final_state(&client, &accounts, &ids, &mut decided).await {
            Ok(fin) if quiescent(&fin).is_none() => {
                quiescent_after_heal = Some(healed_at.elapsed());
                break fin;
            }
            Ok(fin) if Instant::now() >= quiesce_by => {
                let why = quiescent(&fin).unwrap_or_default();
                anomalies.add(
                    "not-quiescent",
                    format!("{} after healing: {why}", QUIESCE_WITHIN.as_secs()),
                );
                break fin;
            }
            Err(e) if Instant::now() >= quiesce_by => {
                return Err(format!("reading the final state: {e}").into());
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };

    // Live again: a transfer from the richest account commits within
    // [`LIVE_WITHIN`]. Each attempt is a new transaction (an abort is
    // final): a link cut while a connection was open may have left it
    // broken, and a channel notices that only by its keepalive.
    if let Some(((ledger, from), _)) = fin.balances.iter().max_by_key(|(_, (b, _))| *b) {
        let from = Account {
            ledger: ledger.clone(),
            account: from.clone(),
        };
        let to = accounts
            .iter()
            .find(|a| **a != from)
            .cloned()
            .unwrap_or_else(|| from.clone());
        let live_by = Instant::now() + LIVE_WITHIN;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let op = Op {
                id: format!("after-heal-probe-{attempt}"),
                kind: OpKind::Transfer,
                client: usize::MAX,
                branches: transfer_branches(&from, &to, 1),
                start_ms: 0,
                end_ms: 0,
                result: OpResult::Running,
            };
            let result = run_op(&client, &history, op, GIVE_UP).await;
            if result == OpResult::Committed {
                live_after_heal = Some(healed_at.elapsed());
                break;
            }
            if Instant::now() >= live_by {
                anomalies.add(
                    "not-live-after-heal",
                    format!("after-heal-probe-{attempt}: {result:?}"),
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let ids: Vec<String> = history.ops().into_iter().map(|o| o.id).collect();
        let settle_by = Instant::now() + QUIESCE_WITHIN;
        fin = loop {
            match read_final_state(&client, &accounts, &ids, &mut decided).await {
                Ok(fin) if quiescent(&fin).is_none() || Instant::now() >= settle_by => break fin,
                Err(e) if Instant::now() >= settle_by => {
                    return Err(format!("reading the final state: {e}").into());
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
    }

    let (found, resolution) = checker::check(&history, deposited, &fin);
    for (kind, examples) in found.by_kind {
        for e in examples {
            anomalies.add(&kind, e);
        }
    }
    *control.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(Checked {
        history: history.ops(),
        final_state: fin,
        anomalies,
        resolution,
        quiescent_after_heal,
        live_after_heal,
    });
    Ok(())
}

/// Runs one operation with its id until it has an outcome (retrying an
/// unknown one with the same id), or `give_up` passes.
async fn run_op(client: &Client, history: &History, op: Op, give_up: Duration) -> OpResult {
    let until = Instant::now() + give_up;
    let index = history.begin(Op {
        start_ms: history.now_ms(),
        ..op.clone()
    });
    let result = loop {
        let mut txn = client
            .transaction()
            .id(op.id.clone())
            .timeout(Duration::from_secs(2))
            .deadline(Duration::from_secs(5));
        for b in &op.branches {
            let entries: Vec<(&str, i64)> =
                b.entries.iter().map(|(a, d)| (a.as_str(), *d)).collect();
            txn = txn.branch(b.participant.clone(), dtc_ledger::payload(&entries));
        }
        let r: Result<TxnOutcome, ClientError> = txn.execute().await;
        let retry = match &r {
            Err(e) => {
                e.is_outcome_unknown()
                    || matches!(e, ClientError::Overloaded(_) | ClientError::Unreachable(_))
            }
            Ok(_) => false,
        };
        if !retry || Instant::now() >= until {
            break result_of(r);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    history.finish(index, result.clone());
    result
}

/// Why the system is not quiescent yet (`None`: it is).
fn quiescent(fin: &FinalState) -> Option<String> {
    for (ledger, txns) in &fin.audits {
        if let Some((id, _)) = txns.iter().find(|(_, at)| **at == AtParticipant::Prepared) {
            return Some(format!("{id} still prepared at {ledger}"));
        }
    }
    for ((ledger, account), (_, held)) in &fin.balances {
        if !held.is_empty() {
            return Some(format!("{ledger}/{account}: {held}"));
        }
    }
    fin.cluster
        .iter()
        .find(|(_, at)| matches!(at, AtCluster::Undecided(_) | AtCluster::Error(_)))
        .map(|(id, at)| format!("{id} is {at:?} in the cluster"))
}

/// Balances, audits and the cluster's record of every transaction in `ids`.
/// The cluster is asked only once the ledgers hold nothing prepared, and
/// only about transactions not already known decided (`decided`, which a
/// decision never leaves): each question is a call through the simulated
/// network, and quiescing asks every 100 ms.
async fn read_final_state(
    client: &Client,
    accounts: &[Account],
    ids: &[String],
    decided: &mut BTreeMap<String, AtCluster>,
) -> Result<FinalState, ClientError> {
    let mut fin = FinalState::default();
    for ledger in LEDGERS {
        let audit = client.ledger_audit(ledger, true).await?;
        let by_id: BTreeMap<String, AtParticipant> = audit
            .into_iter()
            .map(|e: pb::AuditEntry| (e.txn_id.clone(), checker::at_participant(e)))
            .collect();
        fin.audits.insert(ledger.to_string(), by_id);
    }
    for a in accounts {
        let b = client.account_balance(&a.ledger, &a.account).await?;
        fin.balances.insert(
            (a.ledger.clone(), a.account.clone()),
            (b.balance, checker::held(b.reserved, b.incoming, "")),
        );
    }
    if quiescent(&fin).is_some() {
        return Ok(fin);
    }
    for id in ids {
        let at = match decided.get(id) {
            Some(at) => at.clone(),
            None => {
                let at = checker::at_cluster(client.get_transaction(id).await);
                if let AtCluster::Decided(..) = at {
                    decided.insert(id.clone(), at.clone());
                }
                at
            }
        };
        fin.cluster.insert(id.clone(), at);
    }
    Ok(fin)
}
