//! The report of one run: operation counts, anomalies by kind with their
//! first example, the fault timeline, crashes, the time to quiesce and the
//! seed. Printed as a short table and written as `report.json` into the run
//! directory.

use crate::bank::{History, OpKind, OpResult};
use crate::checker::{Anomalies, Resolution};
use crate::testbed::{Crash, TimelineEvent};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Counts of client operations (transfers; the seeding deposits apart).
#[derive(Debug, Clone, Default, Serialize)]
pub struct OpCounts {
    pub attempted: usize,
    /// Answered committed or aborted.
    pub ok: usize,
    pub committed: usize,
    pub aborted: usize,
    /// Refused before running (overloaded, bad request).
    pub failed: usize,
    /// No answer before the client's deadline.
    pub unknown: usize,
    /// Deposits that seeded the accounts.
    pub deposits: usize,
}

impl OpCounts {
    pub fn of(history: &History) -> OpCounts {
        let mut c = OpCounts::default();
        for op in history.ops() {
            if op.kind == OpKind::Deposit {
                c.deposits += 1;
                continue;
            }
            c.attempted += 1;
            match op.result {
                OpResult::Committed => {
                    c.ok += 1;
                    c.committed += 1;
                }
                OpResult::Aborted { .. } => {
                    c.ok += 1;
                    c.aborted += 1;
                }
                OpResult::Failed { .. } => c.failed += 1,
                OpResult::Unknown { .. } | OpResult::Running => c.unknown += 1,
            }
        }
        c
    }
}

/// One anomaly kind in the report.
#[derive(Debug, Clone, Serialize)]
pub struct AnomalySummary {
    pub count: usize,
    pub first: String,
}

/// Everything about one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub passed: bool,
    pub run_dir: PathBuf,
    /// How long the clients ran under faults.
    pub workload_ms: u64,
    /// The whole run, setup to check.
    pub total_ms: u64,
    pub ops: OpCounts,
    /// How the operations with an unknown outcome ended.
    pub unknown_resolved: Resolution,
    /// Decisions recorded (Execute answers and GetTransaction polls).
    pub observations: usize,
    pub anomalies: BTreeMap<String, AnomalySummary>,
    /// Time from healing to nothing pending at the cluster and nothing
    /// prepared at any ledger (None: the bound passed).
    pub quiesce_ms: Option<u64>,
    pub quiesce_bound_ms: u64,
    pub faults: Vec<TimelineEvent>,
    pub crashes: Vec<Crash>,
}

impl Report {
    pub fn anomalies_from(a: &Anomalies) -> BTreeMap<String, AnomalySummary> {
        a.by_kind
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    AnomalySummary {
                        count: v.len(),
                        first: v.first().cloned().unwrap_or_default(),
                    },
                )
            })
            .collect()
    }

    /// A short human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let o = &self.ops;
        let _ = writeln!(
            s,
            "==== {} (seed {}): {} ====",
            self.scenario,
            self.seed,
            if self.passed { "PASSED" } else { "FAILED" }
        );
        let _ = writeln!(
            s,
            "ops        attempted {:>5}  ok {:>5} (committed {}, aborted {})  failed {}  unknown {}",
            o.attempted, o.ok, o.committed, o.aborted, o.failed, o.unknown
        );
        let r = &self.unknown_resolved;
        let _ = writeln!(
            s,
            "unknown -> committed {}, aborted {}, never ran {}",
            r.committed, r.aborted, r.never_ran
        );
        let _ = writeln!(
            s,
            "timing     workload {} ms, total {} ms, quiesce {} (bound {} ms); {} decisions observed",
            self.workload_ms,
            self.total_ms,
            self.quiesce_ms
                .map(|q| format!("{q} ms"))
                .unwrap_or_else(|| "NOT REACHED".into()),
            self.quiesce_bound_ms,
            self.observations
        );
        let _ = writeln!(
            s,
            "faults     {} events, {} crashes",
            self.faults.len(),
            self.crashes.len()
        );
        for e in &self.faults {
            let _ = writeln!(s, "  [{:>7} ms] {}", e.t_ms, e.event);
        }
        if self.anomalies.is_empty() {
            let _ = writeln!(s, "anomalies  none");
        } else {
            let _ = writeln!(s, "anomalies");
            for (k, a) in &self.anomalies {
                let first: String = a.first.chars().take(400).collect();
                let _ = writeln!(s, "  {k:<26} {:>4}  first: {first}", a.count);
            }
        }
        let _ = writeln!(s, "run dir    {}", self.run_dir.display());
        s
    }

    /// Writes `report.json` into `dir`; returns its path.
    pub fn write_json(&self, dir: &Path) -> PathBuf {
        let path = dir.join("report.json");
        let json = serde_json::to_string_pretty(self).expect("the report serializes");
        if let Err(e) = std::fs::write(&path, json) {
            eprintln!("cannot write {}: {e}", path.display());
        }
        path
    }
}
