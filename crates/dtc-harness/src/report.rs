//! The demo's report: what the run measured and what the checker found,
//! as a table on stdout or as JSON (`dtc demo --json`).

use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Serialize)]
pub struct Summary {
    /// True when every check passed.
    pub ok: bool,
    pub load_secs: f64,
    pub clients: u64,
    pub ledgers: Vec<String>,
    pub accounts_per_ledger: u64,
    /// The ledgers' `--lock-wait-ms`.
    pub ledger_lock_wait_ms: u64,
    pub transfers: Transfers,
    pub leader_failover: Option<LeaderFailover>,
    pub ledger_crash: Option<LedgerCrash>,
    pub in_doubt: InDoubt,
    pub total_before: i64,
    pub total_after: Option<i64>,
    pub totals_equal: bool,
    pub agreement: Agreement,
    /// Every failed check, in words.
    pub anomalies: Vec<String>,
    pub log_dir: String,
    pub log_dir_kept: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Transfers {
    pub total: u64,
    pub committed: u64,
    pub committed_cross_ledger: u64,
    pub aborted: u64,
    pub aborted_insufficient_funds: u64,
    /// Contention: refused for funds that concurrent transfers had reserved.
    pub aborted_funds_reserved: u64,
    /// Contention: refused for an account locked by another transaction.
    pub aborted_account_busy: u64,
    /// Both kinds of contention, in percent of all transfers.
    pub aborted_contention_percent: f64,
    pub aborted_ledger_down: u64,
    pub aborted_coordinator_failover: u64,
    pub aborted_other: u64,
    /// Transfers of more than all the money: each must abort.
    pub overdrafts: u64,
    pub overdrafts_aborted: u64,
    /// Transfers whose outcome was unknown at least once (retried with the same id).
    pub outcome_unknown_retried: u64,
    /// Transfers the client gave up on; their outcome is read from the cluster.
    pub gave_up: u64,
    pub committed_per_sec: f64,
}

#[derive(Debug, Serialize)]
pub struct LeaderFailover {
    pub killed_node: u64,
    pub killed_at_secs: f64,
    pub new_leader: u64,
    pub new_term: u64,
    /// Kill → another node reports itself leader.
    pub election_ms: u64,
    /// Kill → the next commit decision (the leader's record of it).
    pub failover_ms: Option<u64>,
    /// Kill → a client received that commit.
    pub first_commit_seen_ms: Option<u64>,
    /// What the new leader's takeover found (its `dtc_last_takeover_*` metrics).
    pub takeover_pending: Option<u64>,
    pub takeover_undecided: Option<u64>,
    pub takeover_decided: Option<u64>,
    /// Transactions pending at the coordinators right after the election.
    pub pending_after: usize,
    /// Restart of the killed node → it follows the new leader.
    pub rejoined_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct LedgerCrash {
    pub ledger: String,
    pub killed_at_secs: f64,
    /// Kill → serving again after the restart.
    pub down_ms: u64,
    pub aborted_while_down: u64,
    /// Of those, aborted because its vote did not come before the prepare timeout.
    pub vote_timeouts: u64,
    /// Transactions pending at the coordinators right after the kill.
    pub pending_after_kill: usize,
    /// Prepared transactions the ledger found in its log at restart.
    pub prepared_at_restart: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct InDoubt {
    /// Distinct transactions pending (or prepared) right after the kills.
    pub after_kills: usize,
    pub resolved: usize,
    pub resolved_committed: usize,
    pub resolved_aborted: usize,
    /// Load stopped → nothing pending, nothing prepared.
    pub drain_ms: Option<u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Agreement {
    /// Coordinator records compared with every ledger they touched.
    pub transactions_checked: usize,
    pub ledger_entries_checked: usize,
    pub mismatches: usize,
}

fn opt_ms(v: Option<u64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v} ms"))
}

/// The summary as a table on stdout.
pub fn print_text(s: &Summary) {
    let t = &s.transfers;
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| rows.push((k.to_string(), v));
    row(
        "transfers",
        format!(
            "{} in {:.1} s ({} clients, {} ledgers x {} accounts)",
            t.total,
            s.load_secs,
            s.clients,
            s.ledgers.len(),
            s.accounts_per_ledger
        ),
    );
    row(
        "  committed",
        format!(
            "{:>6}   ({} across ledgers, {:.1}/s)",
            t.committed, t.committed_cross_ledger, t.committed_per_sec
        ),
    );
    let contention = format!(
        "   (contention: {:.2}% of transfers, locks included; lock wait {} ms)",
        t.aborted_contention_percent, s.ledger_lock_wait_ms
    );
    let other = (t.aborted_other > 0).then_some(("    other", t.aborted_other, ""));
    for (k, n, note) in [
        ("  aborted", t.aborted, ""),
        ("    insufficient funds", t.aborted_insufficient_funds, ""),
        (
            "    funds reserved by others",
            t.aborted_funds_reserved,
            &contention,
        ),
        ("    account locked by another", t.aborted_account_busy, ""),
        ("    ledger down (vote timeout)", t.aborted_ledger_down, ""),
        (
            "    coordinator failover",
            t.aborted_coordinator_failover,
            "",
        ),
    ]
    .into_iter()
    .chain(other)
    {
        row(k, format!("{n:>6}{note}"));
    }
    row(
        "  overdrafts (must abort)",
        format!(
            "{:>6}   (more than all the money; {} aborted)",
            t.overdrafts, t.overdrafts_aborted
        ),
    );
    row(
        "  outcome unknown, retried",
        format!(
            "{:>6}   {}",
            t.outcome_unknown_retried,
            if t.gave_up == 0 {
                "(retried with the same txn id until answered)".to_string()
            } else {
                format!(
                    "({} given up; outcome read from the coordinators)",
                    t.gave_up
                )
            }
        ),
    );
    if let Some(f) = &s.leader_failover {
        row(
            "leader failover",
            format!(
                "node {} SIGKILLed at {:.1} s -> node {} leader (term {}) after {} ms",
                f.killed_node, f.killed_at_secs, f.new_leader, f.new_term, f.election_ms
            ),
        );
        row(
            "  failover time (kill -> commit)",
            format!(
                "{}   (a client had it after {})",
                opt_ms(f.failover_ms),
                opt_ms(f.first_commit_seen_ms)
            ),
        );
        row(
            "  takeover found",
            match f.takeover_pending {
                Some(p) => format!(
                    "{p} pending ({} undecided -> abort, {} decided -> resend)",
                    f.takeover_undecided.unwrap_or(0),
                    f.takeover_decided.unwrap_or(0)
                ),
                None => "n/a (the new leader's metrics show no takeover in its term)".into(),
            },
        );
        row(
            "  killed node rejoined",
            f.rejoined_ms.map_or("NO".to_string(), |ms| {
                format!("as a follower, {ms} ms after its restart")
            }),
        );
    }
    if let Some(l) = &s.ledger_crash {
        row(
            "ledger crash",
            format!(
                "{} SIGKILLed at {:.1} s, serving again after {} ms",
                l.ledger, l.killed_at_secs, l.down_ms
            ),
        );
        row(
            "  transfers touching it aborted",
            l.aborted_while_down.to_string(),
        );
        row(
            "  prepared (in doubt) at restart",
            l.prepared_at_restart.to_string(),
        );
    }
    let d = &s.in_doubt;
    row(
        "in doubt right after the kills",
        format!(
            "{} -> {} resolved ({} committed, {} aborted){}",
            d.after_kills,
            d.resolved,
            d.resolved_committed,
            d.resolved_aborted,
            d.drain_ms
                .map(|ms| format!("; all settled {ms} ms after the load"))
                .unwrap_or_default()
        ),
    );
    row("total balance before", format!("{}", s.total_before));
    row(
        "total balance after",
        match s.total_after {
            Some(a) if s.totals_equal => format!("{a}   (equal)"),
            Some(a) => format!("{a}   (DIFFERENT by {})", a - s.total_before),
            None => "unreadable".into(),
        },
    );
    row(
        "agreement (coordinators/ledgers)",
        format!(
            "{} transactions, {} ledger records: {} mismatches",
            s.agreement.transactions_checked,
            s.agreement.ledger_entries_checked,
            s.agreement.mismatches
        ),
    );
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let rule = "-".repeat(width + 48);
    println!();
    println!("dtc demo summary");
    println!("{rule}");
    for (k, v) in &rows {
        println!("{k:<width$}  {v}");
    }
    println!("{rule}");
    if s.ok {
        println!(
            "OK: every transfer has one outcome at the coordinators, the ledgers and the client; \
             no money was created or lost."
        );
    } else {
        println!("FAILED: {} anomalies", s.anomalies.len());
        for a in s.anomalies.iter().take(20) {
            println!("  - {a}");
        }
        if s.anomalies.len() > 20 {
            println!("  ... and {} more", s.anomalies.len() - 20);
        }
    }
    if s.log_dir_kept {
        println!("data and logs kept in {}", s.log_dir);
    }
}

/// "1 transaction", "2 transactions".
pub fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// The first few items, comma separated.
pub fn preview(items: &[String]) -> String {
    let mut s = items.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > 5 {
        s.push_str(&format!(", ... ({} in all)", items.len()));
    }
    s
}
