//! The checker of the bank workload: after the faults are healed and the
//! system is quiescent, the final state (every ledger's balances and audit
//! log, the cluster's record of every transaction: [`FinalState`], read by
//! whoever runs the workload) is compared with what the clients did and saw
//! ([`crate::history::History`]). The demo and the failover suite check
//! with this one function.
//!
//! Anomaly kinds (each with its first example in the report):
//!
//! | kind | meaning |
//! |---|---|
//! | `total-mismatch` | the sum of all balances is not the sum deposited |
//! | `negative-balance` | an account went below zero |
//! | `balance-vs-audit` | a balance is not the sum of the committed deltas its ledger lists |
//! | `split-outcome` | a transaction committed at some of its participants and not at others |
//! | `payload-mismatch` | a participant committed other entries than the client sent |
//! | `acked-commit-not-applied` | the client was told committed, a participant did not commit |
//! | `acked-abort-applied` | the client was told aborted, a participant committed |
//! | `refused-but-applied` | the client got a definite refusal, a participant committed |
//! | `cluster-disagrees` | the cluster's final record differs from what participants applied |
//! | `unresolved` | after quiescing, the cluster cannot say how a transaction ended |
//! | `decision-changed` | two decisions seen for one transaction differ (across leaders, over time, or vs the client's answer) |
//! | `in-doubt-after-heal` | a participant still holds a prepared transaction after quiescing |
//! | `reservation-held-after-heal` | an account still has a reservation (or lock) of a prepared transaction after quiescing |
//! | `phantom-commit` | a participant committed a transaction no client ran |
//! | `not-quiescent` | pending or in-doubt transactions outlived the bound after healing |
//! | `not-live-after-heal` | a transfer after healing did not commit |

use crate::history::{History, OpKind, OpResult, decision_of};
use dtc_client::proto::{AuditEntry, AuditOutcome};
use dtc_client::{ClientError, TxnState, TxnStatus};
use dtc_proto::v1 as pb;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// How a transaction ended at one participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtParticipant {
    Committed(Vec<(String, i64)>),
    Aborted,
    Prepared,
    /// No record (never prepared, or the abort was never delivered).
    Missing,
}

/// The cluster's record of a transaction after quiescing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtCluster {
    /// A decision (`commit`|`abort`) and the state name.
    Decided(&'static str, String),
    /// Preparing, or an unknown state value.
    Undecided(String),
    /// NOT_FOUND: never begun (or past retention).
    NotFound,
    Error(String),
}

/// Everything read from the system after quiescing.
#[derive(Debug, Clone, Default)]
pub struct FinalState {
    /// (ledger, account) -> (balance, what prepared transactions hold on it; "" if nothing).
    pub balances: BTreeMap<(String, String), (i64, String)>,
    /// ledger -> txn id -> outcome there.
    pub audits: BTreeMap<String, BTreeMap<String, AtParticipant>>,
    /// txn id -> the cluster's record.
    pub cluster: BTreeMap<String, AtCluster>,
}

/// What prepared transactions hold on an account, in words ("" when
/// nothing), as [`FinalState::balances`] records it.
pub fn held(reserved: i64, incoming: i64, locked_by: &str) -> String {
    let mut held = Vec::new();
    if reserved != 0 {
        held.push(format!("{reserved} reserved"));
    }
    if incoming != 0 {
        held.push(format!("{incoming} incoming"));
    }
    if !locked_by.is_empty() {
        held.push(format!("locked by {locked_by}"));
    }
    held.join(", ")
}

/// How one ledger audit entry says a transaction ended there.
pub fn at_participant(e: AuditEntry) -> AtParticipant {
    match AuditOutcome::try_from(e.outcome) {
        Ok(AuditOutcome::Committed) => AtParticipant::Committed(
            e.entries
                .into_iter()
                .map(|x| (x.account, x.delta))
                .collect(),
        ),
        Ok(AuditOutcome::Aborted) => AtParticipant::Aborted,
        Ok(AuditOutcome::Prepared) => AtParticipant::Prepared,
        _ => AtParticipant::Missing,
    }
}

/// The cluster's record as a `GetTransaction` (or a listing) gives it.
pub fn at_cluster(r: Result<TxnStatus, ClientError>) -> AtCluster {
    match r {
        Ok(t) => {
            let state = t.state.as_str().to_string();
            match decision_of(state_value(t.state)) {
                Some((d, s)) => AtCluster::Decided(d, s.to_string()),
                None => AtCluster::Undecided(state),
            }
        }
        Err(ClientError::NotFound(_)) => AtCluster::NotFound,
        Err(e) => AtCluster::Error(e.to_string()),
    }
}

fn state_value(s: TxnState) -> i32 {
    (match s {
        TxnState::Unknown => pb::TxnState::Unspecified,
        TxnState::Preparing => pb::TxnState::Preparing,
        TxnState::Committing => pb::TxnState::Committing,
        TxnState::Aborting => pb::TxnState::Aborting,
        TxnState::Committed => pb::TxnState::Committed,
        TxnState::Aborted => pb::TxnState::Aborted,
    }) as i32
}

/// Anomalies by kind; each holds every example (the report shows the count
/// and the first).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Anomalies {
    pub by_kind: BTreeMap<String, Vec<String>>,
}

impl Anomalies {
    pub fn add(&mut self, kind: &str, example: impl Into<String>) {
        self.by_kind
            .entry(kind.to_string())
            .or_default()
            .push(example.into());
    }

    pub fn is_empty(&self) -> bool {
        self.by_kind.is_empty()
    }
}

/// How the transactions whose outcome the client did not learn ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Resolution {
    pub committed: usize,
    pub aborted: usize,
    /// Never begun in the cluster (NOT_FOUND) and nowhere applied.
    pub never_ran: usize,
}

/// Compares the final state with the history.
pub fn check(history: &History, deposited: i64, fin: &FinalState) -> (Anomalies, Resolution) {
    let mut an = Anomalies::default();
    let mut res = Resolution::default();
    let ops = history.ops();

    // Balances.
    let total: i64 = fin.balances.values().map(|(b, _)| *b).sum();
    if total != deposited {
        an.add(
            "total-mismatch",
            format!("sum of balances {total}, deposited {deposited}"),
        );
    }
    for ((ledger, account), (balance, held)) in &fin.balances {
        if *balance < 0 {
            an.add(
                "negative-balance",
                format!("{ledger}/{account} = {balance}"),
            );
        }
        if !held.is_empty() {
            an.add(
                "reservation-held-after-heal",
                format!("{ledger}/{account}: {held}"),
            );
        }
        let from_audit: i64 = fin
            .audits
            .get(ledger)
            .map(|txns| {
                txns.values()
                    .filter_map(|t| match t {
                        AtParticipant::Committed(entries) => Some(
                            entries
                                .iter()
                                .filter(|(a, _)| a == account)
                                .map(|(_, d)| *d)
                                .sum::<i64>(),
                        ),
                        _ => None,
                    })
                    .sum()
            })
            .unwrap_or(0);
        if from_audit != *balance {
            an.add(
                "balance-vs-audit",
                format!(
                    "{ledger}/{account}: balance {balance}, committed deltas in the audit sum to {from_audit}"
                ),
            );
        }
    }

    // Every transaction.
    let known: BTreeSet<&str> = ops.iter().map(|o| o.id.as_str()).collect();
    for op in &ops {
        let at: Vec<(&str, &AtParticipant)> = op
            .branches
            .iter()
            .map(|b| {
                let a = fin
                    .audits
                    .get(&b.participant)
                    .and_then(|t| t.get(&op.id))
                    .unwrap_or(&AtParticipant::Missing);
                (b.participant.as_str(), a)
            })
            .collect();
        let committed = at
            .iter()
            .filter(|(_, a)| matches!(a, AtParticipant::Committed(_)))
            .count();
        let n = op.branches.len();
        let everywhere = committed == n;
        let nowhere = committed == 0;
        let view = format!("{}: participants {at:?}, client {:?}", op.id, op.result);
        if !everywhere && !nowhere {
            an.add("split-outcome", view.clone());
        }
        for (p, a) in &at {
            if **a == AtParticipant::Prepared {
                an.add("in-doubt-after-heal", format!("{} at {p}", op.id));
            }
            if let AtParticipant::Committed(entries) = a {
                let sent = op
                    .branches
                    .iter()
                    .find(|b| b.participant == *p)
                    .map(|b| &b.entries);
                if sent != Some(entries) {
                    an.add(
                        "payload-mismatch",
                        format!("{} at {p}: committed {entries:?}, sent {sent:?}", op.id),
                    );
                }
            }
        }
        match &op.result {
            OpResult::Committed if !everywhere => an.add("acked-commit-not-applied", view.clone()),
            OpResult::Aborted { .. } if !nowhere => an.add("acked-abort-applied", view.clone()),
            OpResult::Failed { .. } if !nowhere => an.add("refused-but-applied", view.clone()),
            _ => {}
        }
        let cluster = fin
            .cluster
            .get(&op.id)
            .cloned()
            .unwrap_or(AtCluster::Error("not asked".into()));
        match &cluster {
            AtCluster::Decided("commit", _) if !everywhere => {
                an.add("cluster-disagrees", format!("cluster committed; {view}"))
            }
            AtCluster::Decided("abort", _) if !nowhere => {
                an.add("cluster-disagrees", format!("cluster aborted; {view}"))
            }
            AtCluster::NotFound if !nowhere => an.add(
                "cluster-disagrees",
                format!("cluster has no record; {view}"),
            ),
            AtCluster::Undecided(s) => an.add("unresolved", format!("cluster says {s}; {view}")),
            AtCluster::Error(e) => an.add("unresolved", format!("cluster answers {e}; {view}")),
            _ => {}
        }
        let told = match &op.result {
            OpResult::Committed => Some("commit"),
            OpResult::Aborted { .. } => Some("abort"),
            _ => None,
        };
        if let (Some(told), AtCluster::Decided(now, _)) = (told, &cluster)
            && told != *now
        {
            an.add(
                "decision-changed",
                format!(
                    "{}: the client was told {told}, the cluster now says {now}",
                    op.id
                ),
            );
        }
        if let (Some(told), AtCluster::NotFound) = (told, &cluster) {
            an.add(
                "decision-changed",
                format!(
                    "{}: the client was told {told}, the cluster has no record",
                    op.id
                ),
            );
        }
        if matches!(op.result, OpResult::Unknown { .. } | OpResult::Running) {
            match &cluster {
                AtCluster::Decided("commit", _) => res.committed += 1,
                AtCluster::Decided(_, _) => res.aborted += 1,
                AtCluster::NotFound => res.never_ran += 1,
                _ => {}
            }
        }
        if op.kind == OpKind::Deposit && op.result != OpResult::Committed {
            an.add("seed-not-committed", view);
        }
    }

    // Decisions seen over time, through different nodes and leaders.
    let mut seen: BTreeMap<&str, Vec<(&'static str, u64, &str)>> = BTreeMap::new();
    let observations = history.observations();
    for o in &observations {
        seen.entry(o.txn_id.as_str())
            .or_default()
            .push((o.decision, o.t_ms, o.source.as_str()));
    }
    for (id, list) in &seen {
        let kinds: BTreeSet<&str> = list.iter().map(|(d, _, _)| *d).collect();
        if kinds.len() > 1 {
            an.add("decision-changed", format!("{id}: seen {list:?}"));
        }
    }

    // Commits nobody asked for.
    for (ledger, txns) in &fin.audits {
        for (id, a) in txns {
            if matches!(a, AtParticipant::Committed(_)) && !known.contains(id.as_str()) {
                an.add("phantom-commit", format!("{id} at {ledger}"));
            }
        }
    }
    (an, res)
}

#[cfg(test)]
mod tests {
    //! The checker must not be vacuous: each anomaly it claims to find is
    //! found in a hand-made history and final state.
    use super::*;
    use crate::history::{Account, Branch, History, Observation, Op, transfer_branches};
    use std::time::Instant;

    /// A hand-made run: its history and what was deposited.
    struct Bank {
        history: History,
        total: i64,
    }

    fn check(bank: &Bank, fin: &FinalState) -> (Anomalies, Resolution) {
        super::check(&bank.history, bank.total, fin)
    }

    fn acct(l: &str) -> Account {
        Account {
            ledger: l.into(),
            account: "a".into(),
        }
    }

    /// Two accounts (bank-0/a, bank-1/a) seeded with 100 each, then a
    /// transfer t1 of 10 from bank-0 to bank-1 that the client saw `told`.
    fn scenario(told: OpResult) -> (Bank, FinalState) {
        let history = History::new(Instant::now());
        for l in ["bank-0", "bank-1"] {
            let i = history.begin(Op {
                id: format!("seed-{l}"),
                kind: OpKind::Deposit,
                client: usize::MAX,
                branches: vec![Branch {
                    participant: l.into(),
                    entries: vec![("a".into(), 100)],
                }],
                start_ms: 0,
                end_ms: 0,
                result: OpResult::Running,
            });
            history.finish(i, OpResult::Committed);
        }
        let i = history.begin(Op {
            id: "t1".into(),
            kind: OpKind::Transfer,
            client: 0,
            branches: transfer_branches(&acct("bank-0"), &acct("bank-1"), 10),
            start_ms: 0,
            end_ms: 0,
            result: OpResult::Running,
        });
        history.finish(i, told);
        let bank = Bank {
            history,
            total: 200,
        };
        let mut fin = FinalState::default();
        for l in ["bank-0", "bank-1"] {
            let mut audit = BTreeMap::new();
            audit.insert(
                format!("seed-{l}"),
                AtParticipant::Committed(vec![("a".into(), 100)]),
            );
            fin.audits.insert(l.into(), audit);
            fin.cluster.insert(
                format!("seed-{l}"),
                AtCluster::Decided("commit", "committed".into()),
            );
        }
        (bank, fin)
    }

    fn commit_t1(fin: &mut FinalState, at: &[&str]) {
        for l in at {
            let d = if *l == "bank-0" { -10 } else { 10 };
            fin.audits
                .get_mut(*l)
                .unwrap()
                .insert("t1".into(), AtParticipant::Committed(vec![("a".into(), d)]));
        }
    }

    fn balances(fin: &mut FinalState, b0: i64, b1: i64) {
        fin.balances
            .insert(("bank-0".into(), "a".into()), (b0, String::new()));
        fin.balances
            .insert(("bank-1".into(), "a".into()), (b1, String::new()));
    }

    fn kinds(a: &Anomalies) -> Vec<&str> {
        a.by_kind.keys().map(String::as_str).collect()
    }

    #[test]
    fn a_consistent_commit_has_no_anomaly() {
        let (bank, mut fin) = scenario(OpResult::Committed);
        commit_t1(&mut fin, &["bank-0", "bank-1"]);
        balances(&mut fin, 90, 110);
        fin.cluster.insert(
            "t1".into(),
            AtCluster::Decided("commit", "committed".into()),
        );
        let (a, _) = check(&bank, &fin);
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn an_unknown_outcome_resolved_as_never_run_is_fine() {
        let (bank, mut fin) = scenario(OpResult::Unknown {
            error: "deadline".into(),
        });
        balances(&mut fin, 100, 100);
        fin.cluster.insert("t1".into(), AtCluster::NotFound);
        let (a, r) = check(&bank, &fin);
        assert!(a.is_empty(), "{a:?}");
        assert_eq!(r.never_ran, 1);
    }

    #[test]
    fn a_commit_at_one_participant_only_is_a_split_outcome() {
        let (bank, mut fin) = scenario(OpResult::Committed);
        commit_t1(&mut fin, &["bank-1"]);
        balances(&mut fin, 100, 110);
        fin.cluster.insert(
            "t1".into(),
            AtCluster::Decided("commit", "committed".into()),
        );
        let (a, _) = check(&bank, &fin);
        assert_eq!(
            kinds(&a),
            [
                "acked-commit-not-applied",
                "cluster-disagrees",
                "split-outcome",
                "total-mismatch"
            ],
            "{a:?}"
        );
    }

    #[test]
    fn an_acknowledged_abort_that_was_applied_is_caught() {
        let (bank, mut fin) = scenario(OpResult::Aborted { reason: "x".into() });
        commit_t1(&mut fin, &["bank-0", "bank-1"]);
        balances(&mut fin, 90, 110);
        fin.cluster.insert(
            "t1".into(),
            AtCluster::Decided("commit", "committed".into()),
        );
        let (a, _) = check(&bank, &fin);
        assert_eq!(
            kinds(&a),
            ["acked-abort-applied", "decision-changed"],
            "{a:?}"
        );
    }

    #[test]
    fn two_different_decisions_seen_for_one_transaction_are_caught() {
        let (bank, mut fin) = scenario(OpResult::Unknown {
            error: "deadline".into(),
        });
        balances(&mut fin, 100, 100);
        fin.cluster
            .insert("t1".into(), AtCluster::Decided("abort", "aborted".into()));
        for (d, s) in [("commit", "committing"), ("abort", "aborted")] {
            bank.history.observe(Observation {
                txn_id: "t1".into(),
                t_ms: 1,
                source: "get@1".into(),
                decision: d,
                state: s.into(),
            });
        }
        let (a, _) = check(&bank, &fin);
        assert_eq!(kinds(&a), ["decision-changed"], "{a:?}");
    }

    #[test]
    fn money_from_nowhere_and_leftovers_are_caught() {
        let (bank, mut fin) = scenario(OpResult::Aborted { reason: "x".into() });
        // A balance no audit explains, a negative one, a reservation, a prepared
        // record, a commit nobody ran, and a cluster that cannot answer.
        balances(&mut fin, 130, -20);
        fin.balances
            .insert(("bank-1".into(), "a".into()), (-20, "5 reserved".into()));
        fin.audits.get_mut("bank-0").unwrap().insert(
            "t9".into(),
            AtParticipant::Committed(vec![("a".into(), 30)]),
        );
        fin.audits
            .get_mut("bank-1")
            .unwrap()
            .insert("t1".into(), AtParticipant::Prepared);
        fin.cluster
            .insert("t1".into(), AtCluster::Undecided("preparing".into()));
        let (a, _) = check(&bank, &fin);
        assert_eq!(
            kinds(&a),
            [
                "balance-vs-audit",
                "in-doubt-after-heal",
                "negative-balance",
                "phantom-commit",
                "reservation-held-after-heal",
                "total-mismatch",
                "unresolved"
            ],
            "{a:?}"
        );
    }
}
