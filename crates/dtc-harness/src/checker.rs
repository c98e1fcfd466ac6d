//! The demo's checker: reads the final state everywhere (the coordinators'
//! records, every ledger's audit, every balance) and compares it with what
//! the clients were told.
//!
//! ```text
//! records (client) ----\
//! ListTransactions -----+--> one outcome per transaction?  --> Summary
//! ledger audits --------+    entries = what was asked?          (anomalies,
//! balances ------------/     total unchanged? no negatives?      counts)
//! ```

use crate::bank::{AbortKind, Outcome, Record, balances};
use crate::cluster::LEDGERS;
use crate::demo::{DemoOptions, Scenario};
use crate::report::{Agreement, InDoubt, Summary, Transfers, ms};
use dtc_client::proto::{AuditEntry, AuditOutcome};
use dtc_client::{Client, TxnState, TxnStatus};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Reads the final state everywhere and checks it.
pub async fn check(
    args: &DemoOptions,
    log_dir: &Path,
    client: &Client,
    records: &[Record],
    total_before: i64,
    load_secs: f64,
    mut sc: Scenario,
) -> Summary {
    let mut anomalies = std::mem::take(&mut sc.anomalies);
    let mut agreement = Agreement::default();

    // The coordinator's records.
    let txns: HashMap<String, TxnStatus> = match client.list_transactions(false).await {
        Ok(l) => l.into_iter().map(|t| (t.txn_id.clone(), t)).collect(),
        Err(e) => {
            anomalies.push(format!("cannot list the coordinator's transactions: {e}"));
            HashMap::new()
        }
    };
    // Each ledger's.
    let mut audits: Vec<HashMap<String, AuditEntry>> = Vec::new();
    for name in LEDGERS {
        match client.ledger_audit(name, true).await {
            Ok(a) => audits.push(a.into_iter().map(|e| (e.txn_id.clone(), e)).collect()),
            Err(e) => {
                anomalies.push(format!("cannot audit {name}: {e}"));
                audits.push(HashMap::new());
            }
        }
    }
    let ledger_index = |name: &str| -> Option<usize> { LEDGERS.iter().position(|l| *l == name) };
    let committed =
        |e: Option<&AuditEntry>| e.is_some_and(|e| e.outcome == AuditOutcome::Committed as i32);
    let mut mismatches: Vec<String> = Vec::new();

    // Coordinator vs ledgers.
    for t in txns.values() {
        agreement.transactions_checked += 1;
        match t.state {
            TxnState::Committed => {
                for p in &t.participants {
                    let Some(l) = ledger_index(p) else { continue };
                    if !committed(audits[l].get(&t.txn_id)) {
                        mismatches.push(format!(
                            "{} is committed at the coordinators but not applied at {p}",
                            t.txn_id
                        ));
                    }
                }
            }
            TxnState::Aborted => {
                for p in &t.participants {
                    let Some(l) = ledger_index(p) else { continue };
                    if committed(audits[l].get(&t.txn_id)) {
                        mismatches.push(format!(
                            "{} is aborted at the coordinators but applied at {p}",
                            t.txn_id
                        ));
                    }
                }
            }
            other => anomalies.push(format!(
                "{} is still {} at the coordinators",
                t.txn_id,
                other.as_str()
            )),
        }
    }
    // Ledgers vs coordinator, and each account's balance from its entries.
    let mut applied: BTreeMap<(usize, String), i64> = BTreeMap::new();
    for (l, audit) in audits.iter().enumerate() {
        for e in audit.values() {
            agreement.ledger_entries_checked += 1;
            if e.outcome == AuditOutcome::Prepared as i32 {
                anomalies.push(format!("{} is still prepared at {}", e.txn_id, LEDGERS[l]));
            } else if e.outcome == AuditOutcome::Committed as i32 {
                for entry in &e.entries {
                    *applied.entry((l, entry.account.clone())).or_default() += entry.delta;
                }
                let state = txns.get(&e.txn_id).map(|t| t.state);
                if state != Some(TxnState::Committed) {
                    mismatches.push(format!(
                        "{} is applied at {} but the coordinators say {}",
                        e.txn_id,
                        LEDGERS[l],
                        state.map_or("nothing", |s| s.as_str())
                    ));
                }
            }
        }
    }

    // Clients vs coordinator, and what was applied vs what was asked.
    let mut t = Transfers {
        total: records.len() as u64,
        outcome_unknown_retried: records.iter().filter(|r| r.retried).count() as u64,
        ..Transfers::default()
    };
    for r in records {
        let state = txns.get(&r.id).map(|t| t.state);
        let final_committed = match (&r.outcome, state) {
            (Outcome::Committed, Some(TxnState::Committed)) => true,
            (Outcome::Aborted(_), Some(TxnState::Aborted)) => false,
            (Outcome::Unknown, Some(TxnState::Committed)) => {
                t.gave_up += 1;
                true
            }
            (Outcome::Unknown, Some(TxnState::Aborted) | None) => {
                t.gave_up += 1;
                false
            }
            (Outcome::Error(e), _) => {
                anomalies.push(format!("transfer {} was refused: {e}", r.id));
                false
            }
            (o, s) => {
                mismatches.push(format!(
                    "{}: the client was told {} but the coordinators say {}",
                    r.id,
                    match o {
                        Outcome::Committed => "committed",
                        _ => "aborted",
                    },
                    s.map_or("nothing", |s| s.as_str())
                ));
                matches!(o, Outcome::Committed)
            }
        };
        if final_committed {
            t.committed += 1;
            if r.from.0 != r.to.0 {
                t.committed_cross_ledger += 1;
            }
            for (l, want) in r.expected_entries() {
                let got = audits[l].get(&r.id).map(|e| {
                    let mut v: Vec<(String, i64)> = e
                        .entries
                        .iter()
                        .map(|x| (x.account.clone(), x.delta))
                        .collect();
                    v.sort();
                    v
                });
                if got.as_ref() != Some(&want) {
                    mismatches.push(format!(
                        "{}: {} applied {got:?}, the client asked for {want:?}",
                        r.id, LEDGERS[l]
                    ));
                }
            }
        } else {
            t.aborted += 1;
            if let Outcome::Aborted(reason) = &r.outcome {
                match AbortKind::of(reason) {
                    AbortKind::Funds => t.aborted_insufficient_funds += 1,
                    AbortKind::Reserved => t.aborted_funds_reserved += 1,
                    AbortKind::Busy => t.aborted_account_busy += 1,
                    AbortKind::LedgerDown => t.aborted_ledger_down += 1,
                    AbortKind::Failover => t.aborted_coordinator_failover += 1,
                    AbortKind::Other => t.aborted_other += 1,
                }
            } else {
                t.aborted_other += 1;
            }
        }
        if r.overdraft {
            t.overdrafts += 1;
            if final_committed {
                anomalies.push(format!("overdraft {} of {} committed", r.id, r.amount));
            } else {
                t.overdrafts_aborted += 1;
            }
        }
    }
    t.aborted_contention_percent = if t.total > 0 {
        let contention = t.aborted_funds_reserved + t.aborted_account_busy;
        (contention as f64 * 10_000.0 / t.total as f64).round() / 100.0
    } else {
        0.0
    };
    t.committed_per_sec = if load_secs > 0.0 {
        (t.committed as f64 / load_secs * 10.0).round() / 10.0
    } else {
        0.0
    };

    // Balances.
    let (total_after, per_account) = match balances(client, args.accounts).await {
        Ok((total, per)) => (Some(total), per),
        Err(e) => {
            anomalies.push(format!("cannot read the final balances: {e}"));
            (None, BTreeMap::new())
        }
    };
    for ((l, acct), held) in &per_account {
        let balance = &held.balance;
        if held.reserved != 0 || held.incoming != 0 {
            // Drained: nothing is prepared, so nothing may be reserved.
            anomalies.push(format!(
                "{}/{acct} still has {} reserved and {} incoming after the drain",
                LEDGERS[*l], held.reserved, held.incoming
            ));
        }
        let sum = applied.get(&(*l, acct.clone())).copied().unwrap_or(0);
        if *balance != sum {
            mismatches.push(format!(
                "{}/{acct}: balance {balance}, but its committed entries sum to {sum}",
                LEDGERS[*l]
            ));
        }
        if *balance < 0 {
            anomalies.push(format!("{}/{acct} is negative: {balance}", LEDGERS[*l]));
        }
    }
    let totals_equal = total_after == Some(total_before);
    if let Some(after) = total_after
        && after != total_before
    {
        anomalies.push(format!(
            "the total balance changed: {total_before} before, {after} after"
        ));
    }

    // Failover: the first commit decided after the kill.
    if let Some(f) = sc.leader.as_mut() {
        let first = txns
            .values()
            .filter(|t| t.state == TxnState::Committed && t.decided_at_ms > sc.kill_ms)
            .min_by_key(|t| t.decided_at_ms);
        if let Some(first) = first {
            f.failover_ms = Some(first.decided_at_ms - sc.kill_ms);
        }
        if let Some(t_kill) = sc.t_kill {
            f.first_commit_seen_ms = records
                .iter()
                .filter(|r| {
                    matches!(r.outcome, Outcome::Committed)
                        && txns
                            .get(&r.id)
                            .is_some_and(|t| t.decided_at_ms > sc.kill_ms)
                })
                .map(|r| ms(r.finished.saturating_duration_since(t_kill)))
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
            Some(TxnState::Committed) => {
                in_doubt.resolved += 1;
                in_doubt.resolved_committed += 1;
            }
            Some(TxnState::Aborted) => {
                in_doubt.resolved += 1;
                in_doubt.resolved_aborted += 1;
            }
            s => anomalies.push(format!(
                "in-doubt transaction {id} is not resolved ({})",
                s.map_or("unknown to the coordinators", |s| s.as_str())
            )),
        }
    }

    agreement.mismatches = mismatches.len();
    anomalies.extend(mismatches);
    Summary {
        ok: anomalies.is_empty(),
        load_secs: (load_secs * 10.0).round() / 10.0,
        clients: args.clients,
        ledgers: LEDGERS.iter().map(|l| l.to_string()).collect(),
        accounts_per_ledger: args.accounts,
        ledger_lock_wait_ms: args.lock_wait_ms,
        transfers: t,
        leader_failover: sc.leader,
        ledger_crash: sc.ledger,
        in_doubt,
        total_before,
        total_after,
        totals_equal,
        agreement,
        anomalies,
        log_dir: log_dir.display().to_string(),
        log_dir_kept: false,
    }
}
