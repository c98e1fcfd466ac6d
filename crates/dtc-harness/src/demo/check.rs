//! The demo's final reading: the coordinators' records, every ledger's
//! audit and every balance, read through the client SDK into a
//! [`FinalState`], checked by [`crate::checker::check`] like the failover
//! suite's runs, then counted for the demo's summary.
//!
//! ```text
//! history (clients) ------\
//! ListTransactions --------+--> FinalState --> checker::check --> anomalies
//! ledger audits, balances -/        |                               |
//!                                   +--> counts, failover, in doubt --> Summary
//! ```

use super::{DemoOptions, Scenario};
use crate::bank::{AbortKind, Shared, balances};
use crate::checker::{AtCluster, FinalState, at_cluster, at_participant, check as check_history};
use crate::cluster::LEDGERS;
use crate::history::{Op, OpKind, OpResult};
use crate::report::{Agreement, InDoubt, Summary, Transfers};
use dtc_client::proto::AuditEntry;
use dtc_client::{Client, TxnState, TxnStatus};
use dtc_ledger::LedgerClient;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

/// Anomaly kinds that say the coordinators, a ledger and a client disagree
/// (the summary's "mismatches").
const AGREEMENT: [&str; 8] = [
    "split-outcome",
    "payload-mismatch",
    "acked-commit-not-applied",
    "acked-abort-applied",
    "refused-but-applied",
    "cluster-disagrees",
    "decision-changed",
    "phantom-commit",
];

/// What the load left to check.
pub(crate) struct Measured<'a> {
    pub(crate) shared: &'a Shared,
    /// What the seeding deposited.
    pub(crate) deposited: i64,
    /// The sum of the balances after the seeding.
    pub(crate) total_before: i64,
    /// All the money: a transfer of more is an overdraft, which must abort.
    pub(crate) supply: i64,
    pub(crate) load_secs: f64,
}

/// The amount a transfer moves.
fn amount(op: &Op) -> i64 {
    op.branches
        .iter()
        .flat_map(|b| &b.entries)
        .map(|(_, d)| *d)
        .filter(|d| *d > 0)
        .sum()
}

/// Reads the final state everywhere and checks it.
pub(crate) async fn check(
    args: &DemoOptions,
    log_dir: &Path,
    client: &Client,
    run: &Measured<'_>,
    mut sc: Scenario,
) -> Summary {
    let mut anomalies = std::mem::take(&mut sc.anomalies);
    let history = &run.shared.history;
    let ops = history.ops();
    let mut fin = FinalState::default();

    // The coordinators' records.
    let txns: HashMap<String, TxnStatus> = match client.list_transactions(false).await {
        Ok(l) => l.into_iter().map(|t| (t.txn_id.clone(), t)).collect(),
        Err(e) => {
            anomalies.push(format!("cannot list the coordinator's transactions: {e}"));
            HashMap::new()
        }
    };
    for op in &ops {
        let at = match txns.get(&op.id) {
            Some(t) => at_cluster(Ok(t.clone())),
            None if txns.is_empty() => AtCluster::Error("no listing".into()),
            None => AtCluster::NotFound,
        };
        fin.cluster.insert(op.id.clone(), at);
    }
    // Each ledger's.
    let mut entries = 0;
    for name in LEDGERS {
        let audit: Vec<AuditEntry> = match client.ledger_audit(name, true).await {
            Ok(a) => a,
            Err(e) => {
                anomalies.push(format!("cannot audit {name}: {e}"));
                Vec::new()
            }
        };
        entries += audit.len();
        let by_id = audit
            .into_iter()
            .map(|e| (e.txn_id.clone(), at_participant(e)))
            .collect();
        fin.audits.insert(name.to_string(), by_id);
    }
    // Balances; drained, nothing may be reserved.
    let total_after = match balances(client, args.accounts).await {
        Ok((total, per)) => {
            for ((l, acct), b) in per {
                let held = if b.reserved != 0 || b.incoming != 0 {
                    format!("{} reserved, {} incoming", b.reserved, b.incoming)
                } else {
                    String::new()
                };
                fin.balances
                    .insert((LEDGERS[l].to_string(), acct), (b.balance, held));
            }
            Some(total)
        }
        Err(e) => {
            anomalies.push(format!("cannot read the final balances: {e:#}"));
            None
        }
    };

    let (found, _) = check_history(history, run.deposited, &fin);
    let mut agreement = Agreement {
        transactions_checked: txns.len(),
        ledger_entries_checked: entries,
        mismatches: 0,
    };
    for (kind, examples) in &found.by_kind {
        if AGREEMENT.contains(&kind.as_str()) {
            agreement.mismatches += examples.len();
        }
        anomalies.extend(examples.iter().map(|e| format!("{kind}: {e}")));
    }

    // What the clients did, counted as the cluster decided it.
    let decided_commit = |id: &str| match fin.cluster.get(id) {
        Some(AtCluster::Decided(d, _)) => Some(*d == "commit"),
        _ => None,
    };
    let mut t = Transfers {
        outcome_unknown_retried: run.shared.stats.unknown_total.load(Relaxed),
        ..Transfers::default()
    };
    for op in ops.iter().filter(|o| o.kind == OpKind::Transfer) {
        t.total += 1;
        let committed = decided_commit(&op.id).unwrap_or(matches!(op.result, OpResult::Committed));
        match &op.result {
            OpResult::Unknown { .. } | OpResult::Running => t.gave_up += 1,
            OpResult::Failed { error } => {
                anomalies.push(format!("transfer {} was refused: {error}", op.id))
            }
            _ => {}
        }
        if committed {
            t.committed += 1;
            if op.branches.len() > 1 {
                t.committed_cross_ledger += 1;
            }
        } else {
            t.aborted += 1;
            let kind = match &op.result {
                OpResult::Aborted { reason } => AbortKind::of(reason),
                _ => AbortKind::Other,
            };
            *match kind {
                AbortKind::Funds => &mut t.aborted_insufficient_funds,
                AbortKind::Reserved => &mut t.aborted_funds_reserved,
                AbortKind::Busy => &mut t.aborted_account_busy,
                AbortKind::LedgerDown => &mut t.aborted_ledger_down,
                AbortKind::Failover => &mut t.aborted_coordinator_failover,
                AbortKind::Other => &mut t.aborted_other,
            } += 1;
        }
        if amount(op) > run.supply {
            t.overdrafts += 1;
            if committed {
                anomalies.push(format!("overdraft {} of {} committed", op.id, amount(op)));
            } else {
                t.overdrafts_aborted += 1;
            }
        }
    }
    if t.total > 0 {
        let contention = t.aborted_funds_reserved + t.aborted_account_busy;
        t.aborted_contention_percent =
            (contention as f64 * 10_000.0 / t.total as f64).round() / 100.0;
    }
    if run.load_secs > 0.0 {
        t.committed_per_sec = (t.committed as f64 / run.load_secs * 10.0).round() / 10.0;
    }

    // Failover: the first commit decided after the kill, at the leader and
    // at a client.
    if let Some(f) = sc.leader.as_mut() {
        let after_kill = |t: &&TxnStatus| t.decided_at_ms > sc.kill_ms;
        let committed_after: BTreeMap<&str, u64> = txns
            .values()
            .filter(|t| t.state == TxnState::Committed)
            .filter(after_kill)
            .map(|t| (t.txn_id.as_str(), t.decided_at_ms))
            .collect();
        f.failover_ms = committed_after.values().min().map(|d| d - sc.kill_ms);
        if let Some(kill_at) = sc.kill_at_ms {
            f.first_commit_seen_ms = ops
                .iter()
                .filter(|o| o.result == OpResult::Committed)
                .filter(|o| committed_after.contains_key(o.id.as_str()))
                .map(|o| o.end_ms.saturating_sub(kill_at))
                .min();
        }
    }

    // In doubt right after the kills: each must now have one outcome.
    let mut in_doubt = InDoubt {
        after_kills: sc.in_doubt_ids.len(),
        ..InDoubt::default()
    };
    for id in &sc.in_doubt_ids {
        match txns.get(id).map(|t| t.state) {
            Some(TxnState::Committed) => in_doubt.resolved_committed += 1,
            Some(TxnState::Aborted) => in_doubt.resolved_aborted += 1,
            s => anomalies.push(format!(
                "in-doubt transaction {id} is not resolved ({})",
                s.map_or("unknown to the coordinators", |s| s.as_str())
            )),
        }
    }
    in_doubt.resolved = in_doubt.resolved_committed + in_doubt.resolved_aborted;

    Summary {
        ok: anomalies.is_empty(),
        load_secs: (run.load_secs * 10.0).round() / 10.0,
        clients: args.clients,
        ledgers: LEDGERS.iter().map(|l| l.to_string()).collect(),
        accounts_per_ledger: args.accounts,
        ledger_lock_wait_ms: args.lock_wait_ms,
        transfers: t,
        leader_failover: sc.leader,
        ledger_crash: sc.ledger,
        in_doubt,
        total_before: run.total_before,
        total_after,
        totals_equal: total_after == Some(run.total_before),
        agreement,
        anomalies,
        log_dir: log_dir.display().to_string(),
        log_dir_kept: false,
    }
}
