//! The per-transaction driver: the leader's side of two-phase commit as a
//! state machine with no I/O.
//!
//! The runtime feeds it [`Event`]s and carries out the [`Action`]s it returns.
//! Stages:
//!
//! ```text
//!  Preparing ──(all votes yes / any no / deadline)──► Deciding ──DecisionApplied──► Phase2
//!      ▲                                                 ▲                            │ acks
//!  new transaction                     takeover of an undecided one            Completing
//!                                                                                     │
//!  takeover of a decided one ─────────────────────────────────────────► Phase2        Done
//! ```
//!
//! Rules that keep the invariants:
//! - The decision is proposed once; what the driver acts on and reports is
//!   always the record handed back in [`Event::DecisionApplied`], which may
//!   carry another leader's decision (first wins in apply).
//! - Commit is proposed only when every participant voted prepared or
//!   read-only; one abort vote, or the deadline, proposes abort.
//! - A driver taking over an undecided transaction never waits for votes:
//!   the prepares of the old leader may have been lost, so it proposes abort
//!   and lets apply tell it what stands.
//! - Late, duplicate or unknown-participant votes and acks are ignored.

use crate::command::{Phase, TxnRecord};
use crate::txn_id::TxnId;
use crate::types::{Outcome, Vote};
use std::collections::{BTreeMap, BTreeSet};

/// Something that happened to the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The transaction's `Begin` was applied (drivers started with
    /// [`TxnDriver::start_before_begin`]). Only a record that is already
    /// decided changes anything (it is adopted).
    BeginApplied { record: TxnRecord },
    /// A participant answered `Prepare`.
    VoteReceived { participant: String, vote: Vote },
    /// `Prepare` failed without a vote (the participant answered an error, or
    /// could not be found). Aborts like a "no" vote, but the participant may
    /// have prepared on an earlier attempt, so it stays in the abort's phase 2.
    PrepareFailed { participant: String, reason: String },
    /// Time passed; `now_ms` is the runtime's monotonic clock.
    Tick { now_ms: u64 },
    /// The decision record as applied by Raft (not necessarily ours).
    DecisionApplied { record: TxnRecord },
    /// A participant acknowledged the decision.
    Acked { participant: String },
    /// `Complete` was applied: the transaction left the pending index.
    CompleteApplied,
}

/// Something the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `Prepare` (the runtime retries transport failures until the
    /// deadline, then stops; the deadline tick decides).
    SendPrepare {
        participant: String,
        remaining_ms: u64,
    },
    /// Propose `Command::Decide` through Raft and report the applied record.
    ProposeDecision {
        outcome: Outcome,
        phase2: Vec<String>,
    },
    /// Send the decision, retrying with backoff until acknowledged.
    SendDecision {
        participant: String,
        outcome: Outcome,
    },
    /// Propose `Command::Complete` through Raft.
    ProposeComplete,
    /// The applied outcome is known: answer everyone waiting for it.
    Finished { outcome: Outcome },
}

/// Where the driver is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    Preparing,
    Deciding,
    Phase2 {
        outcome: Outcome,
        awaiting: BTreeSet<String>,
    },
    Completing {
        outcome: Outcome,
    },
    Done {
        outcome: Outcome,
    },
}

/// Drives one transaction on the leader.
#[derive(Debug, Clone)]
pub struct TxnDriver {
    txn_id: TxnId,
    participants: Vec<String>,
    deadline_ms: u64,
    votes: BTreeMap<String, Vote>,
    /// Participants whose prepare failed without a vote, with the reason.
    failed: BTreeMap<String, String>,
    stage: Stage,
}

impl TxnDriver {
    /// Starts driving a transaction whose `Begin` this leader just applied:
    /// sends prepare to every branch.
    pub fn start_new(record: &TxnRecord, now_ms: u64) -> (Self, Vec<Action>) {
        let mut d = Self::blank(record, now_ms);
        match &record.phase {
            Phase::Preparing => {
                let remaining_ms = u64::from(record.timeout_ms);
                let actions = record
                    .participants
                    .iter()
                    .map(|p| Action::SendPrepare {
                        participant: p.clone(),
                        remaining_ms,
                    })
                    .collect();
                (d, actions)
            }
            _ => {
                let actions = d.adopt(record);
                (d, actions)
            }
        }
    }

    /// Starts a new transaction whose `Begin` the runtime has just queued
    /// for replication: prepares go out at once, in parallel with it, and the
    /// decision is proposed as soon as the votes allow, without waiting for
    /// `Begin` to apply.
    ///
    /// Why this is safe at every crash point (docs/design.md has the full
    /// table): the runtime queues `Begin` before anything else of the
    /// transaction, and one proposer submits in queue order, so `Decide`
    /// lands after `Begin` in the log and commits only if `Begin` did. If
    /// `Begin` was lost anyway, apply records a commit for an unknown
    /// transaction as an abort (presumed abort), and so does an outcome
    /// query from a participant that prepared. Until `Begin` commits no node
    /// knows the transaction; once it does, a new leader finds it in the
    /// pending index and aborts it unless the decision is there too.
    pub fn start_before_begin(
        txn_id: &TxnId,
        participants: &[String],
        timeout_ms: u32,
        now_ms: u64,
    ) -> (Self, Vec<Action>) {
        let d = TxnDriver {
            txn_id: txn_id.clone(),
            participants: participants.to_vec(),
            deadline_ms: now_ms.saturating_add(u64::from(timeout_ms)),
            votes: BTreeMap::new(),
            failed: BTreeMap::new(),
            stage: Stage::Preparing,
        };
        let actions = participants
            .iter()
            .map(|p| Action::SendPrepare {
                participant: p.clone(),
                remaining_ms: u64::from(timeout_ms),
            })
            .collect();
        (d, actions)
    }

    /// Resumes a transaction found in the pending index by a new leader
    /// (takeover): undecided ones are aborted, decided ones are finished.
    pub fn take_over(record: &TxnRecord, now_ms: u64) -> (Self, Vec<Action>) {
        let mut d = Self::blank(record, now_ms);
        let actions = match &record.phase {
            Phase::Preparing => {
                d.stage = Stage::Deciding;
                vec![Action::ProposeDecision {
                    outcome: Outcome::abort("coordinator failover before the decision"),
                    phase2: record.participants.clone(),
                }]
            }
            _ => d.adopt(record),
        };
        (d, actions)
    }

    fn blank(record: &TxnRecord, now_ms: u64) -> Self {
        TxnDriver {
            txn_id: record.txn_id.clone(),
            participants: record.participants.clone(),
            deadline_ms: now_ms.saturating_add(u64::from(record.timeout_ms)),
            votes: BTreeMap::new(),
            failed: BTreeMap::new(),
            stage: Stage::Preparing,
        }
    }

    pub fn txn_id(&self) -> &TxnId {
        &self.txn_id
    }

    pub fn stage(&self) -> &Stage {
        &self.stage
    }

    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    pub fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done { .. })
    }

    /// Feeds one event; returns what to do.
    pub fn step(&mut self, event: Event) -> Vec<Action> {
        match event {
            Event::BeginApplied { record } => {
                // Already decided (our own decision applied first cannot
                // reach here before `DecisionApplied`; another one can only
                // be a bug elsewhere, but the applied record is the truth).
                match self.stage {
                    Stage::Preparing | Stage::Deciding if record.outcome().is_some() => {
                        self.adopt(&record)
                    }
                    _ => vec![],
                }
            }
            Event::VoteReceived { participant, vote } => {
                if self.stage != Stage::Preparing
                    || !self.participants.contains(&participant)
                    || self.votes.contains_key(&participant)
                {
                    return vec![];
                }
                self.votes.insert(participant, vote);
                self.decide_if_ready(None)
            }
            Event::PrepareFailed {
                participant,
                reason,
            } => {
                if self.stage != Stage::Preparing
                    || !self.participants.contains(&participant)
                    || self.votes.contains_key(&participant)
                    || self.failed.contains_key(&participant)
                {
                    return vec![];
                }
                self.failed.insert(participant, reason);
                self.decide_if_ready(None)
            }
            Event::Tick { now_ms } => {
                if self.stage == Stage::Preparing && now_ms >= self.deadline_ms {
                    self.decide_if_ready(Some(now_ms))
                } else {
                    vec![]
                }
            }
            Event::DecisionApplied { record } => match self.stage {
                Stage::Preparing | Stage::Deciding => self.adopt(&record),
                _ => vec![],
            },
            Event::Acked { participant } => {
                let Stage::Phase2 { outcome, awaiting } = &mut self.stage else {
                    return vec![];
                };
                if !awaiting.remove(&participant) || !awaiting.is_empty() {
                    return vec![];
                }
                self.stage = Stage::Completing {
                    outcome: outcome.clone(),
                };
                vec![Action::ProposeComplete]
            }
            Event::CompleteApplied => match &self.stage {
                Stage::Completing { outcome } | Stage::Phase2 { outcome, .. } => {
                    self.stage = Stage::Done {
                        outcome: outcome.clone(),
                    };
                    vec![]
                }
                _ => vec![],
            },
        }
    }

    /// The decision rule, while preparing. `timed_out_at` is set when the
    /// deadline passed.
    fn decide_if_ready(&mut self, timed_out_at: Option<u64>) -> Vec<Action> {
        let no = self.votes.iter().find_map(|(p, v)| match v {
            Vote::Abort { reason } => Some(format!("participant {p} voted abort: {reason}")),
            _ => None,
        });
        let failed = self
            .failed
            .iter()
            .next()
            .map(|(p, why)| format!("prepare at participant {p} failed: {why}"));
        let (outcome, phase2) = if let Some(reason) = no.or(failed) {
            (Outcome::abort(reason), self.abort_phase2())
        } else if self.votes.len() == self.participants.len() {
            let prepared = self
                .participants
                .iter()
                .filter(|p| self.votes.get(*p) == Some(&Vote::Prepared))
                .cloned()
                .collect();
            (Outcome::Commit, prepared)
        } else if timed_out_at.is_some() {
            let missing: Vec<&str> = self
                .participants
                .iter()
                .filter(|p| !self.votes.contains_key(*p))
                .map(String::as_str)
                .collect();
            (
                Outcome::abort(format!(
                    "timed out waiting for the vote of {}",
                    missing.join(", ")
                )),
                self.abort_phase2(),
            )
        } else {
            return vec![];
        };
        self.stage = Stage::Deciding;
        vec![Action::ProposeDecision { outcome, phase2 }]
    }

    /// Who must hear an abort: everyone who may have prepared, i.e. all but
    /// those that voted abort or read-only (they hold nothing). A participant
    /// that never answered may have prepared before it crashed (corner case 9).
    fn abort_phase2(&self) -> Vec<String> {
        self.participants
            .iter()
            .filter(|p| {
                !matches!(
                    self.votes.get(*p),
                    Some(Vote::Abort { .. } | Vote::ReadOnly)
                )
            })
            .cloned()
            .collect()
    }

    /// Takes the applied record as the truth and moves to phase 2 (or done).
    fn adopt(&mut self, record: &TxnRecord) -> Vec<Action> {
        match &record.phase {
            // Not decided yet: nothing to adopt (a stale event).
            Phase::Preparing => vec![],
            Phase::Decided {
                outcome, awaiting, ..
            } => {
                let mut actions = vec![Action::Finished {
                    outcome: outcome.clone(),
                }];
                actions.extend(awaiting.iter().map(|p| Action::SendDecision {
                    participant: p.clone(),
                    outcome: outcome.clone(),
                }));
                self.stage = Stage::Phase2 {
                    outcome: outcome.clone(),
                    awaiting: awaiting.iter().cloned().collect(),
                };
                actions
            }
            Phase::Completed { outcome, .. } => {
                self.stage = Stage::Done {
                    outcome: outcome.clone(),
                };
                vec![Action::Finished {
                    outcome: outcome.clone(),
                }]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, CommandResult, MemStore};

    fn begun(ps: &[&str], timeout_ms: u32) -> (MemStore, TxnRecord) {
        let mut s = MemStore::default();
        let r = s.apply(&Command::Begin {
            txn_id: "t".parse().unwrap(),
            participants: ps.iter().map(|p| p.to_string()).collect(),
            digest: [0; 32],
            timeout_ms,
            at_ms: 0,
        });
        let CommandResult::Begun { record, .. } = r else {
            panic!()
        };
        (s, record)
    }

    fn vote(p: &str, v: Vote) -> Event {
        Event::VoteReceived {
            participant: p.into(),
            vote: v,
        }
    }

    #[test]
    fn new_transaction_prepares_every_branch_with_the_full_timeout() {
        let (_, rec) = begun(&["a", "b"], 300);
        let (_, actions) = TxnDriver::start_new(&rec, 1000);
        assert_eq!(
            actions,
            vec![
                Action::SendPrepare {
                    participant: "a".into(),
                    remaining_ms: 300
                },
                Action::SendPrepare {
                    participant: "b".into(),
                    remaining_ms: 300
                },
            ]
        );
    }

    #[test]
    fn early_prepares_decide_on_the_votes_without_waiting_for_begin() {
        let ps = ["a".to_string(), "b".to_string()];
        let (mut d, actions) = TxnDriver::start_before_begin(&"t".parse().unwrap(), &ps, 300, 0);
        assert_eq!(actions.len(), 2, "{actions:?}");
        assert!(d.step(vote("a", Vote::Prepared)).is_empty());
        assert_eq!(
            d.step(vote("b", Vote::Prepared)),
            vec![Action::ProposeDecision {
                outcome: Outcome::Commit,
                phase2: vec!["a".into(), "b".into()]
            }]
        );
        // Begin applied afterwards, undecided: nothing to do.
        let (_, rec) = begun(&["a", "b"], 300);
        assert!(d.step(Event::BeginApplied { record: rec }).is_empty());
    }

    #[test]
    fn a_commit_applied_without_its_begin_is_adopted_as_the_abort_it_became() {
        let ps = ["a".to_string(), "b".to_string()];
        let (mut d, _) = TxnDriver::start_before_begin(&"t".parse().unwrap(), &ps, 300, 0);
        d.step(vote("a", Vote::Prepared));
        d.step(vote("b", Vote::Prepared));
        // The Begin was lost: apply turns the commit into a presumed abort.
        let mut s = MemStore::default();
        let CommandResult::Decided { record } = s.apply(&Command::Decide {
            txn_id: "t".parse().unwrap(),
            outcome: Outcome::Commit,
            phase2: ps.to_vec(),
            at_ms: 1,
        }) else {
            panic!()
        };
        let acts = d.step(Event::DecisionApplied { record });
        assert!(
            matches!(&acts[0], Action::Finished { outcome } if !outcome.is_commit()),
            "{acts:?}"
        );
        assert_eq!(acts.len(), 3, "abort sent to both: {acts:?}");
    }

    #[test]
    fn all_prepared_proposes_commit_to_prepared_voters_only() {
        let (_, rec) = begun(&["a", "b", "c"], 300);
        let (mut d, _) = TxnDriver::start_new(&rec, 0);
        assert!(d.step(vote("a", Vote::Prepared)).is_empty());
        assert!(d.step(vote("b", Vote::ReadOnly)).is_empty());
        assert_eq!(
            d.step(vote("c", Vote::Prepared)),
            vec![Action::ProposeDecision {
                outcome: Outcome::Commit,
                phase2: vec!["a".into(), "c".into()]
            }]
        );
    }

    #[test]
    fn one_abort_vote_proposes_abort_at_once() {
        let (_, rec) = begun(&["a", "b", "c"], 300);
        let (mut d, _) = TxnDriver::start_new(&rec, 0);
        d.step(vote("a", Vote::Prepared));
        let acts = d.step(vote(
            "b",
            Vote::Abort {
                reason: "insufficient funds".into(),
            },
        ));
        match &acts[..] {
            [Action::ProposeDecision { outcome, phase2 }] => {
                assert!(outcome.reason().contains("insufficient funds"));
                // c never answered: it may have prepared, so it must hear the abort.
                assert_eq!(phase2, &vec!["a".to_string(), "c".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        // Later votes change nothing.
        assert!(d.step(vote("c", Vote::Prepared)).is_empty());
    }

    #[test]
    fn failed_prepare_aborts_but_keeps_that_participant_in_phase2() {
        let (_, rec) = begun(&["a", "b"], 300);
        let (mut d, _) = TxnDriver::start_new(&rec, 0);
        let acts = d.step(Event::PrepareFailed {
            participant: "a".into(),
            reason: "INTERNAL: connection reset".into(),
        });
        match &acts[..] {
            [Action::ProposeDecision { outcome, phase2 }] => {
                assert!(outcome.reason().contains("connection reset"));
                // An earlier attempt may have prepared: a must hear the abort.
                assert_eq!(phase2, &vec!["a".to_string(), "b".to_string()]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deadline_aborts_naming_the_silent_participants() {
        let (_, rec) = begun(&["a", "b"], 300);
        let (mut d, _) = TxnDriver::start_new(&rec, 1000);
        d.step(vote("a", Vote::Prepared));
        assert!(d.step(Event::Tick { now_ms: 1299 }).is_empty());
        match &d.step(Event::Tick { now_ms: 1300 })[..] {
            [Action::ProposeDecision { outcome, .. }] => {
                assert_eq!(outcome.reason(), "timed out waiting for the vote of b")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn driver_acts_on_the_applied_decision_not_its_proposal() {
        let (mut s, rec) = begun(&["a", "b"], 300);
        // Another leader's commit won first.
        s.apply(&Command::Decide {
            txn_id: "t".parse().unwrap(),
            outcome: Outcome::Commit,
            phase2: vec!["a".into(), "b".into()],
            at_ms: 1,
        });
        let (mut d, acts) = TxnDriver::take_over(&rec, 0);
        assert!(matches!(
            &acts[..],
            [Action::ProposeDecision {
                outcome: Outcome::Abort { .. },
                ..
            }]
        ));
        let CommandResult::Decided { record } = s.apply(&Command::Decide {
            txn_id: "t".parse().unwrap(),
            outcome: Outcome::abort("takeover"),
            phase2: vec!["a".into(), "b".into()],
            at_ms: 2,
        }) else {
            panic!()
        };
        let acts = d.step(Event::DecisionApplied { record });
        assert_eq!(
            acts[0],
            Action::Finished {
                outcome: Outcome::Commit
            }
        );
        assert!(acts[1..].iter().all(|a| matches!(
            a,
            Action::SendDecision {
                outcome: Outcome::Commit,
                ..
            }
        )));
    }

    #[test]
    fn completes_only_after_every_phase2_participant_acked() {
        let (mut s, rec) = begun(&["a", "b"], 300);
        let CommandResult::Decided { record } = s.apply(&Command::Decide {
            txn_id: "t".parse().unwrap(),
            outcome: Outcome::Commit,
            phase2: vec!["a".into(), "b".into()],
            at_ms: 1,
        }) else {
            panic!()
        };
        let (mut d, _) = TxnDriver::start_new(&rec, 0);
        d.step(Event::DecisionApplied { record });
        assert!(
            d.step(Event::Acked {
                participant: "a".into()
            })
            .is_empty()
        );
        assert!(
            d.step(Event::Acked {
                participant: "a".into()
            })
            .is_empty(),
            "duplicate ack"
        );
        assert_eq!(
            d.step(Event::Acked {
                participant: "b".into()
            }),
            vec![Action::ProposeComplete]
        );
        d.step(Event::CompleteApplied);
        assert!(d.is_done());
    }

    /// An operator's abort (`dtc txn resolve`) is applied while the driver
    /// still waits for a vote, or after it proposed its own decision: it
    /// adopts the applied abort either way, tells every participant, and
    /// ignores what comes after (a late vote, its own proposal's result).
    #[test]
    fn a_decision_applied_by_someone_else_is_adopted_at_any_point_before_phase2() {
        for proposed_first in [false, true] {
            let (mut s, rec) = begun(&["a", "b"], 300);
            let (mut d, _) = TxnDriver::start_new(&rec, 0);
            d.step(vote("a", Vote::Prepared));
            if proposed_first {
                let acts = d.step(vote("b", Vote::Prepared));
                assert!(
                    matches!(
                        &acts[..],
                        [Action::ProposeDecision {
                            outcome: Outcome::Commit,
                            ..
                        }]
                    ),
                    "{acts:?}"
                );
            }
            let CommandResult::Decided { record } = s.apply(&Command::Decide {
                txn_id: "t".parse().unwrap(),
                outcome: Outcome::abort("aborted by operator alice: b hangs"),
                phase2: vec!["a".into(), "b".into()],
                at_ms: 1,
            }) else {
                panic!()
            };
            let acts = d.step(Event::DecisionApplied {
                record: record.clone(),
            });
            assert_eq!(
                acts,
                vec![
                    Action::Finished {
                        outcome: Outcome::abort("aborted by operator alice: b hangs")
                    },
                    Action::SendDecision {
                        participant: "a".into(),
                        outcome: Outcome::abort("aborted by operator alice: b hangs")
                    },
                    Action::SendDecision {
                        participant: "b".into(),
                        outcome: Outcome::abort("aborted by operator alice: b hangs")
                    },
                ],
                "proposed first: {proposed_first}"
            );
            // The driver's own commit proposal comes back with the abort that
            // won in apply; a late vote changes nothing either.
            let CommandResult::Decided { record: again } = s.apply(&Command::Decide {
                txn_id: "t".parse().unwrap(),
                outcome: Outcome::Commit,
                phase2: vec!["a".into(), "b".into()],
                at_ms: 2,
            }) else {
                panic!()
            };
            assert_eq!(again, record, "first decision wins");
            assert!(d.step(Event::DecisionApplied { record: again }).is_empty());
            assert!(d.step(vote("b", Vote::Prepared)).is_empty());
        }
    }

    #[test]
    fn takeover_of_a_decided_transaction_resends_the_decision() {
        let (mut s, _) = begun(&["a", "b"], 300);
        let CommandResult::Decided { record } = s.apply(&Command::Decide {
            txn_id: "t".parse().unwrap(),
            outcome: Outcome::abort("no"),
            phase2: vec!["b".into()],
            at_ms: 1,
        }) else {
            panic!()
        };
        let (_, acts) = TxnDriver::take_over(&record, 0);
        assert_eq!(
            acts,
            vec![
                Action::Finished {
                    outcome: Outcome::abort("no")
                },
                Action::SendDecision {
                    participant: "b".into(),
                    outcome: Outcome::abort("no")
                }
            ]
        );
    }
}
