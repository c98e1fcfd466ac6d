//! The replicated commands and their deterministic apply.
//!
//! Every command carries the times it needs (`at_ms`, chosen by the leader
//! when it proposes), so apply reads no clock and gives the same result on
//! every node (corner case 16). Decisions are first-wins: once a transaction
//! has an outcome, later `Decide` commands leave it unchanged and return the
//! outcome that stands (corner case 1).

use crate::txn_id::TxnId;
use crate::types::{Outcome, RequestDigest};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A Raft log entry's application payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Records a new transaction before any prepare is sent, so a leader that
    /// takes over knows it exists. Idempotent: an existing record is returned.
    Begin {
        txn_id: TxnId,
        participants: Vec<String>,
        digest: RequestDigest,
        timeout_ms: u32,
        at_ms: u64,
    },
    /// Records the decision. First decision wins. `phase2` lists the
    /// participants that must acknowledge it (read-only voters are left out).
    /// For an unknown transaction (an outcome query under presumed abort) a
    /// record is created.
    Decide {
        txn_id: TxnId,
        outcome: Outcome,
        phase2: Vec<String>,
        at_ms: u64,
    },
    /// Every phase-2 participant acknowledged: the transaction leaves the
    /// pending index and its outcome is kept for the retention window.
    Complete { txn_id: TxnId, at_ms: u64 },
    /// Registers or moves a participant endpoint.
    Register { name: String, endpoint: String },
    /// Drops completed outcomes that finished at or before `now_ms - retention_ms`.
    Expire { now_ms: u64, retention_ms: u64 },
    /// Several commands in one log entry, applied in order as one unit (the
    /// store commits the whole entry's effects in one transaction). The
    /// leader's proposer packs every command queued while the previous
    /// entries were being written, so one fsync and one replication round
    /// serve many transactions. Added last so that logs written before it
    /// existed still decode (postcard numbers variants in order).
    Batch(Vec<Command>),
    /// [`Command::Expire`] that drops at most `limit` completion-index
    /// entries (oldest first), so that one entry never turns into one huge
    /// write: after an outage, or when the retention window is shortened,
    /// the backlog goes in slices. Added after `Batch` so older logs decode;
    /// the leader proposes this one.
    ExpireAtMost {
        now_ms: u64,
        retention_ms: u64,
        limit: u32,
    },
}

impl Command {
    /// The transaction this command is about, if any.
    pub fn txn_id(&self) -> Option<&TxnId> {
        match self {
            Command::Begin { txn_id, .. }
            | Command::Decide { txn_id, .. }
            | Command::Complete { txn_id, .. } => Some(txn_id),
            _ => None,
        }
    }

    /// A cheap upper estimate of the encoded size, in bytes, used to cap
    /// batches below the replication message limit without encoding twice.
    pub fn size_hint(&self) -> usize {
        const FIXED: usize = 64; // tags, varints, times, digest slack
        match self {
            Command::Begin {
                txn_id,
                participants,
                ..
            } => FIXED + 32 + txn_id.as_str().len() + names_len(participants),
            Command::Decide {
                txn_id,
                outcome,
                phase2,
                ..
            } => FIXED + txn_id.as_str().len() + outcome.reason().len() + names_len(phase2),
            Command::Complete { txn_id, .. } => FIXED + txn_id.as_str().len(),
            Command::Register { name, endpoint } => FIXED + name.len() + endpoint.len(),
            Command::Expire { .. } | Command::ExpireAtMost { .. } => FIXED,
            Command::Batch(cmds) => FIXED + cmds.iter().map(Command::size_hint).sum::<usize>(),
        }
    }
}

fn names_len(names: &[String]) -> usize {
    names.iter().map(|n| n.len() + 8).sum()
}

/// Where a transaction is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Begun; no decision yet. In the pending index.
    Preparing,
    /// Decided; waiting for acknowledgements. In the pending index.
    Decided {
        outcome: Outcome,
        /// Participants that must still acknowledge.
        awaiting: Vec<String>,
        decided_ms: u64,
    },
    /// Decided and acknowledged by everyone. Kept for the retention window.
    Completed {
        outcome: Outcome,
        decided_ms: u64,
        completed_ms: u64,
    },
}

/// The replicated record of one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRecord {
    pub txn_id: TxnId,
    pub participants: Vec<String>,
    /// `None` when the record was created by a presumed-abort outcome query:
    /// no request was ever seen, so any later request gets this outcome.
    pub digest: Option<RequestDigest>,
    pub timeout_ms: u32,
    pub created_ms: u64,
    pub phase: Phase,
}

impl TxnRecord {
    /// The decided outcome, if any.
    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.phase {
            Phase::Preparing => None,
            Phase::Decided { outcome, .. } | Phase::Completed { outcome, .. } => Some(outcome),
        }
    }

    /// In the pending index: undecided, or decided but not fully acknowledged.
    pub fn is_pending(&self) -> bool {
        !matches!(self.phase, Phase::Completed { .. })
    }
}

/// What applying a command produced. Returned to the proposer through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// The record after `Begin`; `created` is false if it already existed.
    Begun {
        record: TxnRecord,
        created: bool,
    },
    /// The record after `Decide`: its outcome is the one that stands.
    Decided {
        record: TxnRecord,
    },
    /// The record after `Complete` (None if the transaction is unknown).
    Completed {
        record: Option<TxnRecord>,
    },
    Registered,
    Expired {
        count: u64,
    },
    /// One result per command of a [`Command::Batch`], in order.
    Batch(Vec<CommandResult>),
    /// Entries that are not commands (blank, membership).
    Nothing,
}

/// The state apply reads and writes. `dtc-store` implements it on a redb
/// write transaction; [`MemStore`] implements it in memory for tests.
///
/// Apply keeps the secondary indexes itself (pending, completion time), so an
/// implementation is a plain set of tables with no logic of its own.
pub trait ApplyStore {
    type Error;
    fn get_txn(&mut self, txn_id: &TxnId) -> Result<Option<TxnRecord>, Self::Error>;
    fn put_txn(&mut self, record: &TxnRecord) -> Result<(), Self::Error>;
    fn delete_txn(&mut self, txn_id: &TxnId) -> Result<(), Self::Error>;
    fn set_pending(&mut self, txn_id: &TxnId, pending: bool) -> Result<(), Self::Error>;
    fn add_completed(&mut self, completed_ms: u64, txn_id: &TxnId) -> Result<(), Self::Error>;
    /// Removes and returns the completion-index entries with time <=
    /// `cutoff_ms`, oldest first, at most `limit` of them.
    fn take_completed_until(
        &mut self,
        cutoff_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, TxnId)>, Self::Error>;
    fn put_participant(&mut self, name: &str, endpoint: &str) -> Result<(), Self::Error>;
}

/// Drops the completed outcomes whose completion time is at or before
/// `cutoff`, at most `limit` completion-index entries, oldest first.
fn expire<S: ApplyStore>(
    store: &mut S,
    cutoff: u64,
    limit: usize,
) -> Result<CommandResult, S::Error> {
    let mut count = 0;
    for (completed_ms, txn_id) in store.take_completed_until(cutoff, limit)? {
        // The index entry may be stale if the id was reused after an
        // earlier expiry; only drop a record that completed at that time.
        if let Some(r) = store.get_txn(&txn_id)?
            && matches!(r.phase, Phase::Completed { completed_ms: c, .. } if c == completed_ms)
        {
            store.delete_txn(&txn_id)?;
            count += 1;
        }
    }
    Ok(CommandResult::Expired { count })
}

/// Applies one command. Deterministic: the result depends only on the store's
/// contents and the command.
pub fn apply<S: ApplyStore>(store: &mut S, cmd: &Command) -> Result<CommandResult, S::Error> {
    match cmd {
        Command::Begin {
            txn_id,
            participants,
            digest,
            timeout_ms,
            at_ms,
        } => {
            if let Some(record) = store.get_txn(txn_id)? {
                return Ok(CommandResult::Begun {
                    record,
                    created: false,
                });
            }
            let record = TxnRecord {
                txn_id: txn_id.clone(),
                participants: participants.clone(),
                digest: Some(*digest),
                timeout_ms: *timeout_ms,
                created_ms: *at_ms,
                phase: Phase::Preparing,
            };
            store.put_txn(&record)?;
            store.set_pending(txn_id, true)?;
            Ok(CommandResult::Begun {
                record,
                created: true,
            })
        }
        Command::Decide {
            txn_id,
            outcome,
            phase2,
            at_ms,
        } => {
            let existing = store.get_txn(txn_id)?;
            let mut outcome = outcome.clone();
            let mut record = match existing {
                Some(r) if r.outcome().is_some() => {
                    // First decision wins; the later one is dropped.
                    return Ok(CommandResult::Decided { record: r });
                }
                Some(r) => r,
                None => {
                    // No `Begin` before it in the log: an outcome query's
                    // presumed abort, or a commit proposed while its `Begin`
                    // was still replicating whose `Begin` never made it (or
                    // comes later). A commit needs its `Begin` first, so the
                    // transaction is unknown and presumed aborted.
                    if outcome.is_commit() {
                        outcome = Outcome::abort(
                            "commit decided for a transaction whose Begin is not in the log",
                        );
                    }
                    TxnRecord {
                        txn_id: txn_id.clone(),
                        participants: phase2.clone(),
                        digest: None,
                        timeout_ms: 0,
                        created_ms: *at_ms,
                        phase: Phase::Preparing,
                    }
                }
            };
            // Only participants of the transaction can owe an acknowledgement.
            let members: BTreeSet<&String> = record.participants.iter().collect();
            let awaiting: Vec<String> = dedup(phase2.iter().filter(|p| members.contains(p)));
            if awaiting.is_empty() {
                record.phase = Phase::Completed {
                    outcome: outcome.clone(),
                    decided_ms: *at_ms,
                    completed_ms: *at_ms,
                };
                store.put_txn(&record)?;
                store.set_pending(txn_id, false)?;
                store.add_completed(*at_ms, txn_id)?;
            } else {
                record.phase = Phase::Decided {
                    outcome: outcome.clone(),
                    awaiting,
                    decided_ms: *at_ms,
                };
                store.put_txn(&record)?;
                store.set_pending(txn_id, true)?;
            }
            Ok(CommandResult::Decided { record })
        }
        Command::Complete { txn_id, at_ms } => {
            let Some(mut record) = store.get_txn(txn_id)? else {
                return Ok(CommandResult::Completed { record: None });
            };
            if let Phase::Decided {
                outcome,
                decided_ms,
                ..
            } = &record.phase
            {
                record.phase = Phase::Completed {
                    outcome: outcome.clone(),
                    decided_ms: *decided_ms,
                    completed_ms: *at_ms,
                };
                store.put_txn(&record)?;
                store.set_pending(txn_id, false)?;
                store.add_completed(*at_ms, txn_id)?;
            }
            // Preparing: a Complete can only follow a Decide, so this is a
            // stale or misdirected command; leaving the record alone is safe.
            Ok(CommandResult::Completed {
                record: Some(record),
            })
        }
        Command::Register { name, endpoint } => {
            store.put_participant(name, endpoint)?;
            Ok(CommandResult::Registered)
        }
        Command::Expire {
            now_ms,
            retention_ms,
        } => expire(store, now_ms.saturating_sub(*retention_ms), usize::MAX),
        Command::ExpireAtMost {
            now_ms,
            retention_ms,
            limit,
        } => expire(
            store,
            now_ms.saturating_sub(*retention_ms),
            usize::try_from(*limit).unwrap_or(usize::MAX),
        ),
        Command::Batch(cmds) => {
            // Each command sees the effects of those before it, exactly as
            // if they had been separate entries in this order.
            let mut results = Vec::with_capacity(cmds.len());
            for cmd in cmds {
                results.push(apply(store, cmd)?);
            }
            Ok(CommandResult::Batch(results))
        }
    }
}

fn dedup<'a>(names: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    names.filter(|n| seen.insert(*n)).cloned().collect()
}

/// An in-memory [`ApplyStore`], for unit and property tests and as the model
/// the redb store is checked against.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemStore {
    pub txns: BTreeMap<TxnId, TxnRecord>,
    pub pending: BTreeSet<TxnId>,
    pub completed: BTreeSet<(u64, TxnId)>,
    pub participants: BTreeMap<String, String>,
}

impl ApplyStore for MemStore {
    type Error = std::convert::Infallible;

    fn get_txn(&mut self, txn_id: &TxnId) -> Result<Option<TxnRecord>, Self::Error> {
        Ok(self.txns.get(txn_id).cloned())
    }
    fn put_txn(&mut self, record: &TxnRecord) -> Result<(), Self::Error> {
        self.txns.insert(record.txn_id.clone(), record.clone());
        Ok(())
    }
    fn delete_txn(&mut self, txn_id: &TxnId) -> Result<(), Self::Error> {
        self.txns.remove(txn_id);
        Ok(())
    }
    fn set_pending(&mut self, txn_id: &TxnId, pending: bool) -> Result<(), Self::Error> {
        if pending {
            self.pending.insert(txn_id.clone());
        } else {
            self.pending.remove(txn_id);
        }
        Ok(())
    }
    fn add_completed(&mut self, completed_ms: u64, txn_id: &TxnId) -> Result<(), Self::Error> {
        self.completed.insert((completed_ms, txn_id.clone()));
        Ok(())
    }
    fn take_completed_until(
        &mut self,
        cutoff_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, TxnId)>, Self::Error> {
        let mut taken = Vec::new();
        while taken.len() < limit {
            match self.completed.first() {
                Some((ms, _)) if *ms <= cutoff_ms => {
                    taken.extend(self.completed.pop_first());
                }
                _ => break,
            }
        }
        Ok(taken)
    }
    fn put_participant(&mut self, name: &str, endpoint: &str) -> Result<(), Self::Error> {
        self.participants
            .insert(name.to_string(), endpoint.to_string());
        Ok(())
    }
}

impl MemStore {
    /// Applies a command; the in-memory store cannot fail.
    pub fn apply(&mut self, cmd: &Command) -> CommandResult {
        match apply(self, cmd) {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begin(id: &str, ps: &[&str], at: u64) -> Command {
        Command::Begin {
            txn_id: id.parse().unwrap(),
            participants: ps.iter().map(|s| s.to_string()).collect(),
            digest: [7; 32],
            timeout_ms: 1000,
            at_ms: at,
        }
    }

    fn decide(id: &str, outcome: Outcome, phase2: &[&str], at: u64) -> Command {
        Command::Decide {
            txn_id: id.parse().unwrap(),
            outcome,
            phase2: phase2.iter().map(|s| s.to_string()).collect(),
            at_ms: at,
        }
    }

    #[test]
    fn begin_puts_the_transaction_in_the_pending_index_once() {
        let mut s = MemStore::default();
        let r1 = s.apply(&begin("t", &["a", "b"], 1));
        assert!(matches!(r1, CommandResult::Begun { created: true, .. }));
        let r2 = s.apply(&begin("t", &["a", "b"], 2));
        match r2 {
            CommandResult::Begun { record, created } => {
                assert!(!created);
                assert_eq!(record.created_ms, 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(s.pending.contains("t"));
    }

    #[test]
    fn first_decision_wins_and_later_ones_return_it() {
        let mut s = MemStore::default();
        s.apply(&begin("t", &["a", "b"], 1));
        s.apply(&decide("t", Outcome::Commit, &["a", "b"], 2));
        let later = s.apply(&decide("t", Outcome::abort("takeover"), &["a", "b"], 3));
        match later {
            CommandResult::Decided { record } => {
                assert_eq!(record.outcome(), Some(&Outcome::Commit));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn transaction_leaves_pending_index_only_after_complete() {
        let mut s = MemStore::default();
        s.apply(&begin("t", &["a", "b"], 1));
        s.apply(&decide("t", Outcome::Commit, &["a", "b"], 2));
        assert!(s.pending.contains("t"));
        s.apply(&Command::Complete {
            txn_id: "t".parse().unwrap(),
            at_ms: 3,
        });
        assert!(!s.pending.contains("t"));
        assert!(s.completed.contains(&(3, "t".parse().unwrap())));
    }

    #[test]
    fn all_read_only_commit_completes_at_once() {
        let mut s = MemStore::default();
        s.apply(&begin("t", &["a"], 1));
        s.apply(&decide("t", Outcome::Commit, &[], 2));
        assert!(s.pending.is_empty());
        assert!(matches!(s.txns["t"].phase, Phase::Completed { .. }));
    }

    #[test]
    fn decide_for_unknown_transaction_records_presumed_abort() {
        let mut s = MemStore::default();
        let r = s.apply(&decide("ghost", Outcome::abort("unknown"), &[], 5));
        match r {
            CommandResult::Decided { record } => {
                assert_eq!(record.digest, None);
                assert!(!record.outcome().unwrap().is_commit());
            }
            other => panic!("{other:?}"),
        }
        assert!(s.pending.is_empty());
    }

    #[test]
    fn commit_without_a_begin_in_the_log_is_recorded_as_abort() {
        let mut s = MemStore::default();
        let r = s.apply(&decide("early", Outcome::Commit, &["a", "b"], 5));
        let CommandResult::Decided { record } = r else {
            panic!("{r:?}")
        };
        assert!(!record.outcome().unwrap().is_commit(), "{record:?}");
        // Everyone who prepared must hear the abort.
        match &record.phase {
            Phase::Decided { awaiting, .. } => {
                assert_eq!(awaiting, &vec!["a".to_string(), "b".to_string()])
            }
            p => panic!("{p:?}"),
        }
        // The late Begin finds the decided record and changes nothing.
        let late = s.apply(&begin("early", &["a", "b"], 6));
        assert!(
            matches!(late, CommandResult::Begun { created: false, .. }),
            "{late:?}"
        );
        assert!(!s.txns["early"].outcome().unwrap().is_commit());
    }

    #[test]
    fn complete_before_decide_changes_nothing() {
        let mut s = MemStore::default();
        s.apply(&begin("t", &["a"], 1));
        s.apply(&Command::Complete {
            txn_id: "t".parse().unwrap(),
            at_ms: 2,
        });
        assert_eq!(s.txns["t"].phase, Phase::Preparing);
        assert!(s.pending.contains("t"));
    }

    #[test]
    fn expire_drops_only_completed_outcomes_past_retention() {
        let mut s = MemStore::default();
        for (id, at) in [("old", 10), ("new", 100)] {
            s.apply(&begin(id, &["a"], at));
            s.apply(&decide(id, Outcome::Commit, &["a"], at));
            s.apply(&Command::Complete {
                txn_id: id.parse().unwrap(),
                at_ms: at,
            });
        }
        s.apply(&begin("open", &["a"], 0));
        let r = s.apply(&Command::Expire {
            now_ms: 150,
            retention_ms: 100,
        });
        assert_eq!(r, CommandResult::Expired { count: 1 });
        assert!(!s.txns.contains_key("old"));
        assert!(s.txns.contains_key("new"));
        assert!(s.txns.contains_key("open"), "pending is never expired");
    }

    #[test]
    fn batch_applies_in_order_and_returns_each_result() {
        let mut batched = MemStore::default();
        let cmds = vec![
            begin("t", &["a"], 1),
            decide("t", Outcome::Commit, &["a"], 2),
            // A second decision in the same batch sees the first one.
            decide("t", Outcome::abort("late"), &["a"], 3),
            Command::Complete {
                txn_id: "t".parse().unwrap(),
                at_ms: 4,
            },
        ];
        let r = batched.apply(&Command::Batch(cmds.clone()));
        let CommandResult::Batch(results) = r else {
            panic!("{r:?}")
        };
        assert_eq!(results.len(), 4);
        match &results[2] {
            CommandResult::Decided { record } => assert!(record.outcome().unwrap().is_commit()),
            other => panic!("{other:?}"),
        }
        // Same state as applying them one entry at a time.
        let mut single = MemStore::default();
        let one_by_one: Vec<CommandResult> = cmds.iter().map(|c| single.apply(c)).collect();
        assert_eq!(results, one_by_one);
        assert_eq!(batched, single);
    }

    #[test]
    fn size_hint_bounds_the_encoded_size() {
        let cmds = vec![
            begin("a-long-transaction-id-0123456789", &["bank-a", "bank-b"], 1),
            decide(
                "x",
                Outcome::abort("participant bank-a voted abort"),
                &["bank-a"],
                2,
            ),
            Command::Complete {
                txn_id: "x".parse().unwrap(),
                at_ms: u64::MAX,
            },
            Command::Expire {
                now_ms: u64::MAX,
                retention_ms: u64::MAX,
            },
        ];
        let batch = Command::Batch(cmds.clone());
        for c in cmds.iter().chain([&batch]) {
            let encoded = postcard::to_stdvec(c).unwrap().len();
            assert!(
                c.size_hint() >= encoded,
                "{c:?}: {} < {encoded}",
                c.size_hint()
            );
        }
    }

    #[test]
    fn phase2_outside_the_participant_list_is_ignored() {
        let mut s = MemStore::default();
        s.apply(&begin("t", &["a"], 1));
        let r = s.apply(&decide("t", Outcome::Commit, &["a", "zzz", "a"], 2));
        match r {
            CommandResult::Decided { record } => match record.phase {
                Phase::Decided { awaiting, .. } => assert_eq!(awaiting, vec!["a".to_string()]),
                p => panic!("{p:?}"),
            },
            other => panic!("{other:?}"),
        }
    }
}
