//! Property tests of the ledger's escrow reservations: random interleavings
//! of prepares, commits, aborts and restarts (reopening the file and running
//! `recover`, as the SDK does at start, after deleting the reservations
//! table so that they must be rebuilt from the prepared records), driven through the [`Resource`]
//! methods under the SDK's contract: each call in its own write transaction,
//! a prepare's changes kept only if it votes prepared, and commit or abort
//! only for a transaction that prepared.
//!
//! An oracle (committed balances, and the net deltas of each prepared
//! transaction) says what every vote must be and what `Balance` must show.
//! After every step: no balance and no available amount is negative, and
//! balance, reserved and incoming are the oracle's. Once every transaction is
//! decided: nothing is reserved, and each balance is the sum of the committed
//! transactions' deltas.

use dtc_ledger::{AccountBalance, Ledger, payload};
use dtc_participant::redb::{Database, Durability, TableDefinition};
use dtc_participant::{PreparedTxn, Resource, Vote};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

const ACCOUNTS: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Step {
    /// A transaction's entries: (account index, delta); an account may repeat.
    Prepare(Vec<(usize, i64)>),
    /// Commit the n-th (modulo) prepared transaction.
    Commit(usize),
    /// Abort the n-th (modulo) prepared transaction.
    Abort(usize),
    /// Close the file and start again: `recover` rebuilds the reservations.
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    let entry = (0..ACCOUNTS.len(), -60i64..=60);
    prop_oneof![
        5 => prop::collection::vec(entry, 1..=4).prop_map(Step::Prepare),
        2 => any::<usize>().prop_map(Step::Commit),
        2 => any::<usize>().prop_map(Step::Abort),
        1 => Just(Step::Restart),
    ]
}

/// The ledger on a real redb file, driven as the SDK drives a resource.
struct Harness {
    dir: tempfile::TempDir,
    /// The open file and the ledger on it (None only inside `restart`).
    open: Option<(Arc<Database>, Ledger)>,
    /// Oracle: committed balances.
    balances: BTreeMap<String, i64>,
    /// Oracle: prepared, undecided transactions: id → (payload, net deltas).
    prepared: BTreeMap<String, (Vec<u8>, BTreeMap<String, i64>)>,
    next_id: usize,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let db = dtc_participant::open_database(dir.path()).unwrap();
        let ledger = Ledger::new(db.clone()).unwrap();
        Harness {
            dir,
            open: Some((db, ledger)),
            balances: BTreeMap::new(),
            prepared: BTreeMap::new(),
            next_id: 0,
        }
    }

    fn db(&self) -> &Database {
        &self.open.as_ref().unwrap().0
    }

    fn ledger(&self) -> &Ledger {
        &self.open.as_ref().unwrap().1
    }

    fn begin(&self) -> dtc_participant::redb::WriteTransaction {
        let mut tx = self.db().begin_write().unwrap();
        // Closing the file makes these durable; restarts here are clean.
        tx.set_durability(Durability::None).unwrap();
        tx
    }

    /// What the oracle holds on `account`: (reserved, incoming).
    fn held(&self, account: &str) -> (i64, i64) {
        let mut h = (0, 0);
        for (_, deltas) in self.prepared.values() {
            match deltas.get(account).copied().unwrap_or(0) {
                d if d < 0 => h.0 -= d,
                d => h.1 += d,
            }
        }
        h
    }

    fn prepare(&mut self, entries: &[(usize, i64)]) -> Result<(), TestCaseError> {
        let id = format!("t{:04}", self.next_id);
        self.next_id += 1;
        let named: Vec<(&str, i64)> = entries.iter().map(|&(a, d)| (ACCOUNTS[a], d)).collect();
        let bytes = payload(&named);
        let mut net: BTreeMap<String, i64> = BTreeMap::new();
        for (a, d) in &named {
            *net.entry(a.to_string()).or_default() += d;
        }
        // The oracle: the first account (in name order) whose net debit the
        // balance minus every reserved debit does not cover refuses it.
        let mut expected: Option<(String, i64, bool)> = None;
        for (account, &d) in &net {
            if d >= 0 {
                continue;
            }
            let balance = self.balances.get(account).copied().unwrap_or(0);
            let (reserved, incoming) = self.held(account);
            let short = -(balance - reserved + d);
            if short > 0 {
                // Contended: it would fit if the others resolved favourably.
                let contended = balance + incoming + d >= 0;
                expected = Some((account.clone(), short, contended));
                break;
            }
        }

        let tx = self.begin();
        // As the SDK calls it: a payload that does not decode votes abort.
        let vote = match self.ledger().decode(&bytes) {
            Ok(deltas) => self.ledger().prepare(&tx, &id, &deltas).unwrap(),
            Err(e) => Vote::Abort(e),
        };
        match (&vote, &expected) {
            (Vote::Prepared, None) => {
                tx.commit().unwrap();
                self.prepared.insert(id, (bytes, net));
            }
            (Vote::Abort(reason) | Vote::Busy(reason), Some((account, short, contended))) => {
                // The SDK discards a refused prepare's changes.
                tx.abort().unwrap();
                prop_assert_eq!(matches!(vote, Vote::Busy(_)), *contended, "{}", reason);
                prop_assert!(
                    reason.contains(&format!("account {account:?}"))
                        && reason.ends_with(&format!("short by {short}")),
                    "{reason} (expected {account} short by {short})"
                );
            }
            _ => prop_assert!(
                false,
                "{id} {named:?}: voted {vote:?}, expected {expected:?}"
            ),
        }
        Ok(())
    }

    fn decide(&mut self, n: usize, commit: bool) {
        if self.prepared.is_empty() {
            return;
        }
        let id = self
            .prepared
            .keys()
            .nth(n % self.prepared.len())
            .unwrap()
            .clone();
        let (bytes, net) = self.prepared.remove(&id).unwrap();
        let tx = self.begin();
        let deltas = self.ledger().decode(&bytes).unwrap();
        if commit {
            self.ledger().commit(&tx, &id, &deltas).unwrap();
            for (a, d) in net {
                *self.balances.entry(a).or_default() += d;
            }
        } else {
            self.ledger().abort(&tx, &id, &deltas, "test").unwrap();
        }
        tx.commit().unwrap();
    }

    fn restart(&mut self) {
        // Close the file (every handle on it), then reopen it as a new
        // process would.
        self.open = None;
        let db = dtc_participant::open_database(self.dir.path()).unwrap();
        let ledger = Ledger::new(db.clone()).unwrap();
        self.open = Some((db, ledger));
        let prepared: Vec<PreparedTxn<dtc_ledger::Deltas>> = self
            .prepared
            .iter()
            .map(|(id, (bytes, _))| PreparedTxn {
                txn_id: id.clone(),
                payload: self.ledger().decode(bytes).unwrap(),
            })
            .collect();
        let mut tx = self.db().begin_write().unwrap();
        tx.set_durability(Durability::Immediate).unwrap();
        // Lose the reservations table: recovery must rebuild it from the
        // prepared records alone.
        tx.delete_table(TableDefinition::<&str, (i64, i64)>::new(
            dtc_ledger::RESERVED_TABLE,
        ))
        .unwrap();
        self.ledger().recover(&tx, &prepared).unwrap();
        tx.commit().unwrap();
    }

    fn check(&self) -> Result<(), TestCaseError> {
        for account in ACCOUNTS {
            let got = self.ledger().account(account).unwrap();
            let balance = self.balances.get(account).copied().unwrap_or(0);
            let (reserved, incoming) = self.held(account);
            prop_assert_eq!(
                got,
                AccountBalance {
                    balance,
                    reserved,
                    available: balance - reserved,
                    incoming
                },
                "{}",
                account
            );
            prop_assert!(got.balance >= 0 && got.available >= 0, "{account}: {got:?}");
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn escrow_never_overdraws_and_settles_to_the_committed_sum(
        steps in prop::collection::vec(step(), 1..60),
        commit_the_rest in any::<bool>(),
    ) {
        let mut h = Harness::new();
        // Opening deposits, themselves transactions.
        h.prepare(&[(0, 100), (1, 50), (2, 10)])?;
        h.decide(0, true);
        for s in &steps {
            match s {
                Step::Prepare(entries) => h.prepare(entries)?,
                Step::Commit(n) => h.decide(*n, true),
                Step::Abort(n) => h.decide(*n, false),
                Step::Restart => h.restart(),
            }
            h.check()?;
        }
        // Resolve everything: after a restart, to also check the rebuild.
        h.restart();
        while !h.prepared.is_empty() {
            h.decide(0, commit_the_rest);
            h.check()?;
        }
        prop_assert!(h.ledger().reservations().unwrap().is_empty());
        let balances = h.ledger().balances().unwrap();
        for account in ACCOUNTS {
            prop_assert_eq!(
                balances.get(account).copied().unwrap_or(0),
                h.balances.get(account).copied().unwrap_or(0)
            );
        }
    }
}
