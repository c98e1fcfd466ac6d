//! Property tests for the protocol core.
//!
//! Two groups:
//!
//! - **Cluster schedules** (`Sim`): a few transactions are driven by
//!   [`TxnDriver`]s on a leader that can restart at any step. The Raft log is
//!   modelled as a queue of in-flight proposals that are applied to one shared
//!   [`MemStore`] in a random later order (possibly after a takeover, possibly
//!   never). Votes, deadline ticks and acknowledgements arrive in random order,
//!   duplicated and late. Invariants are checked after every applied command
//!   and on every action a driver emits; at the end the cluster is healed and
//!   must resolve every transaction.
//! - **Command sequences**: arbitrary [`Command`]s applied to fresh stores, for
//!   determinism, postcard round trips, idempotence and index consistency.

use dtc_core::{
    Action, Command, CommandResult, Event, MemStore, Outcome, Phase, TxnDriver, TxnId, TxnRecord,
    Vote,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use std::collections::{BTreeMap, BTreeSet};

// ---------------------------------------------------------------------------
// Shared checks
// ---------------------------------------------------------------------------

/// Invariant 4: the pending index is exactly the non-completed records and the
/// completion index is exactly `(completed_ms, id)` of the completed ones.
fn assert_indexes_consistent(store: &MemStore) {
    let pending: BTreeSet<TxnId> = store
        .txns
        .values()
        .filter(|r| !matches!(r.phase, Phase::Completed { .. }))
        .map(|r| r.txn_id.clone())
        .collect();
    assert_eq!(
        store.pending, pending,
        "pending index out of step with records"
    );
    let completed: BTreeSet<(u64, TxnId)> = store
        .txns
        .values()
        .filter_map(|r| match r.phase {
            Phase::Completed { completed_ms, .. } => Some((completed_ms, r.txn_id.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        store.completed, completed,
        "completion index out of step with records"
    );
    for (id, r) in &store.txns {
        assert_eq!(id, &r.txn_id, "record stored under another id");
    }
}

fn stored_outcome<'a>(store: &'a MemStore, txn: &TxnId) -> Option<&'a Outcome> {
    store.txns.get(txn).and_then(TxnRecord::outcome)
}

// ---------------------------------------------------------------------------
// Cluster model
// ---------------------------------------------------------------------------

/// One transaction of a schedule: its participants and the vote each of them
/// gives (a participant always gives the same vote; duplicates resend it).
#[derive(Debug, Clone)]
struct TxnSpec {
    participants: Vec<String>,
    votes: Vec<Vote>,
    timeout_ms: u32,
}

#[derive(Debug, Clone)]
enum Op {
    /// The client's `Execute` reaches the leader: `Begin` is applied and a
    /// driver started (a retry of a begun transaction attaches to it). With
    /// `early`, as the runtime does for an id nobody knows: the driver sends
    /// its prepares at once and `Begin` becomes an in-flight proposal like
    /// any other (applied late, after a leader change, or lost).
    Begin { txn: Index, early: bool },
    /// A participant's vote reaches the leader (may be a duplicate or late).
    /// With `fresh`, the first participant that has not voted yet votes
    /// (if any), otherwise the picked one.
    Vote {
        txn: Index,
        participant: Index,
        fresh: bool,
    },
    /// Time passes; every live driver is ticked.
    Tick { advance_ms: u64 },
    /// The leader changes: all drivers are dropped and every pending record is
    /// taken over. In-flight proposals and messages survive.
    Restart,
    /// One in-flight proposal is committed and applied. The live driver hears
    /// about it if it proposed it, or if `notify_live` (the runtime routes
    /// every applied decision of a transaction to its driver).
    ApplyProposal { pick: Index, notify_live: bool },
    /// One in-flight proposal is lost (never committed).
    DropProposal { pick: Index },
    /// A `SendDecision` message reaches its participant, which acknowledges
    /// it to the current leader. With `duplicate` the message stays in flight
    /// and will be delivered (and acked) again.
    Deliver { pick: Index, duplicate: bool },
}

struct Proposal {
    cmd: Command,
    /// Leader term that proposed it.
    epoch: u64,
}

#[derive(Debug, Clone)]
struct Message {
    txn: TxnId,
    participant: String,
    outcome: Outcome,
}

/// Counters used to show that the generators reach the interesting cases.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    commits: u32,
    aborts: u32,
    takeovers_of_undecided: u32,
    late_decide_won: u32,
    late_commit_won: u32,
    late_decide_lost: u32,
    duplicate_acks: u32,
    client_retry_after_completion: u32,
    /// Decisions stored for transactions whose prepares left before `Begin`.
    early_prepare_decisions: u32,
}

struct Sim {
    ids: Vec<TxnId>,
    specs: BTreeMap<TxnId, TxnSpec>,
    now: u64,
    epoch: u64,
    store: MemStore,
    drivers: BTreeMap<TxnId, TxnDriver>,
    in_flight: Vec<Proposal>,
    outbox: Vec<Message>,
    /// Votes that reached a leader, per transaction.
    vote_log: BTreeMap<TxnId, BTreeMap<String, Vote>>,
    /// What each (transaction, participant) was told.
    received: BTreeMap<(TxnId, String), Outcome>,
    /// The first outcome seen in the store for each transaction.
    first_outcome: BTreeMap<TxnId, Outcome>,
    begun: BTreeSet<TxnId>,
    /// Transactions whose participants were asked to prepare.
    asked: BTreeSet<TxnId>,
    /// Transactions started with early prepares.
    early: BTreeSet<TxnId>,
    stats: Stats,
}

impl Sim {
    fn new(specs: Vec<TxnSpec>) -> Self {
        let ids: Vec<TxnId> = (0..specs.len())
            .map(|i| format!("t{i}").parse().unwrap())
            .collect();
        Sim {
            specs: ids.iter().cloned().zip(specs).collect(),
            ids,
            now: 0,
            epoch: 0,
            store: MemStore::default(),
            drivers: BTreeMap::new(),
            in_flight: Vec::new(),
            outbox: Vec::new(),
            vote_log: BTreeMap::new(),
            received: BTreeMap::new(),
            first_outcome: BTreeMap::new(),
            begun: BTreeSet::new(),
            asked: BTreeSet::new(),
            early: BTreeSet::new(),
            stats: Stats::default(),
        }
    }

    fn run(&mut self, op: &Op) {
        match op {
            Op::Begin { txn, early } => self.begin(txn.index(self.ids.len()), *early),
            Op::Vote {
                txn,
                participant,
                fresh,
            } => {
                let id = self.ids[txn.index(self.ids.len())].clone();
                let spec = &self.specs[&id];
                let voted = self.vote_log.get(&id);
                let silent = spec
                    .participants
                    .iter()
                    .position(|p| !voted.is_some_and(|v| v.contains_key(p)));
                let j = match silent {
                    Some(j) if *fresh => j,
                    _ => participant.index(spec.participants.len()),
                };
                self.vote(&id, j);
            }
            Op::Tick { advance_ms } => self.tick(*advance_ms),
            Op::Restart => self.restart(),
            Op::ApplyProposal { pick, notify_live } => {
                if !self.in_flight.is_empty() {
                    self.apply_proposal(pick.index(self.in_flight.len()), *notify_live);
                }
            }
            Op::DropProposal { pick } => {
                if !self.in_flight.is_empty() {
                    self.in_flight.remove(pick.index(self.in_flight.len()));
                }
            }
            Op::Deliver { pick, duplicate } => {
                if !self.outbox.is_empty() {
                    self.deliver(pick.index(self.outbox.len()), *duplicate);
                }
            }
        }
    }

    fn begin(&mut self, i: usize, early: bool) {
        let id = self.ids[i].clone();
        let spec = self.specs[&id].clone();
        let begin = Command::Begin {
            txn_id: id.clone(),
            participants: spec.participants.clone(),
            digest: [i as u8; 32],
            timeout_ms: spec.timeout_ms,
            at_ms: self.now,
        };
        if early && !self.drivers.contains_key(&id) && !self.store.txns.contains_key(&id) {
            let (driver, actions) =
                TxnDriver::start_before_begin(&id, &spec.participants, spec.timeout_ms, self.now);
            self.drivers.insert(id.clone(), driver);
            self.asked.insert(id.clone());
            self.early.insert(id.clone());
            self.in_flight.push(Proposal {
                cmd: begin,
                epoch: self.epoch,
            });
            self.handle(&id, actions);
            return;
        }
        let result = self.apply_begin(&begin);
        let CommandResult::Begun { record, created } = result else {
            panic!("Begin returned {result:?}");
        };
        self.asked.insert(id.clone());
        if self.drivers.contains_key(&id) {
            return; // a retry attaches to the running driver
        }
        if !created && record.is_pending() {
            // Every pending record has a driver, except one a decision created
            // before its `Begin` (applied late, after the takeover's scan:
            // see `heal`). The runtime resumes it, as here.
            assert!(record.digest.is_none(), "pending {id} without a driver");
            let (driver, actions) = TxnDriver::take_over(&record, self.now);
            self.drivers.insert(id.clone(), driver);
            self.handle(&id, actions);
            return;
        }
        if !created {
            self.stats.client_retry_after_completion += 1;
        }
        let (driver, actions) = TxnDriver::start_new(&record, self.now);
        self.drivers.insert(id.clone(), driver);
        self.handle(&id, actions);
    }

    fn vote(&mut self, id: &TxnId, j: usize) {
        if !self.asked.contains(id) {
            return; // nobody asked this participant to prepare yet
        }
        let spec = &self.specs[id];
        let (participant, vote) = (spec.participants[j].clone(), spec.votes[j].clone());
        self.vote_log
            .entry(id.clone())
            .or_default()
            .insert(participant.clone(), vote.clone());
        self.step(id, Event::VoteReceived { participant, vote });
    }

    fn tick(&mut self, advance_ms: u64) {
        self.now += advance_ms;
        let ids: Vec<TxnId> = self.drivers.keys().cloned().collect();
        for id in ids {
            self.step(&id, Event::Tick { now_ms: self.now });
        }
    }

    /// A new leader: drop every driver, take over every pending record.
    fn restart(&mut self) {
        self.epoch += 1;
        self.drivers.clear();
        // Catch-up: a deposed leader's `Begin` either committed, and then the
        // new leader applies it before its scan (`ensure_linearizable`), or
        // it never will (`DropProposal`). Unlike a late `Decide`, it cannot
        // apply after the scan: Raft commits a previous term's entry only
        // through the new leader's first entry, which the scan waits for.
        let mut k = 0;
        while k < self.in_flight.len() {
            if matches!(self.in_flight[k].cmd, Command::Begin { .. }) {
                let Proposal { cmd, .. } = self.in_flight.remove(k);
                self.apply_begin(&cmd);
            } else {
                k += 1;
            }
        }
        let pending: Vec<TxnRecord> = self
            .store
            .pending
            .iter()
            .map(|id| self.store.txns[id].clone())
            .collect();
        for record in pending {
            if record.phase == Phase::Preparing {
                self.stats.takeovers_of_undecided += 1;
            }
            let (driver, actions) = TxnDriver::take_over(&record, self.now);
            self.drivers.insert(record.txn_id.clone(), driver);
            self.handle(&record.txn_id, actions);
        }
    }

    fn apply_proposal(&mut self, k: usize, notify_live: bool) {
        let Proposal { cmd, epoch } = self.in_flight.remove(k);
        let id = cmd
            .txn_id()
            .expect("only txn commands are proposed")
            .clone();
        let late = epoch != self.epoch;
        let decided_before = stored_outcome(&self.store, &id).is_some();
        let result = if matches!(cmd, Command::Begin { .. }) {
            self.apply_begin(&cmd)
        } else {
            self.apply(&cmd)
        };
        if late && matches!(cmd, Command::Decide { .. }) {
            if decided_before {
                self.stats.late_decide_lost += 1;
            } else {
                self.stats.late_decide_won += 1;
                if stored_outcome(&self.store, &id).is_some_and(Outcome::is_commit) {
                    self.stats.late_commit_won += 1;
                }
            }
        }
        if late && !notify_live {
            return; // the proposer is gone and the runtime does not forward it
        }
        match result {
            CommandResult::Begun { record, .. } => {
                self.step(&id, Event::BeginApplied { record });
            }
            CommandResult::Decided { record } => {
                self.step(&id, Event::DecisionApplied { record });
            }
            CommandResult::Completed {
                record: Some(record),
            } if !record.is_pending() => self.step(&id, Event::CompleteApplied),
            _ => {}
        }
    }

    fn deliver(&mut self, k: usize, duplicate: bool) {
        let m = if duplicate {
            self.outbox[k].clone()
        } else {
            self.outbox.remove(k)
        };
        let key = (m.txn.clone(), m.participant.clone());
        if let Some(before) = self.received.insert(key, m.outcome.clone()) {
            self.stats.duplicate_acks += 1;
            assert_eq!(
                before, m.outcome,
                "{} was told two different outcomes for {}",
                m.participant, m.txn
            );
        }
        self.step(
            &m.txn,
            Event::Acked {
                participant: m.participant,
            },
        );
    }

    /// Feeds an event to the live driver of `id`, if any, and carries out
    /// what it asks for.
    fn step(&mut self, id: &TxnId, event: Event) {
        if let Some(driver) = self.drivers.get_mut(id) {
            let actions = driver.step(event);
            self.handle(id, actions);
        }
    }

    fn handle(&mut self, id: &TxnId, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::SendPrepare {
                    participant,
                    remaining_ms,
                } => {
                    let spec = &self.specs[id];
                    assert!(spec.participants.contains(&participant));
                    assert_eq!(remaining_ms, u64::from(spec.timeout_ms));
                }
                Action::ProposeDecision { outcome, phase2 } => self.in_flight.push(Proposal {
                    cmd: Command::Decide {
                        txn_id: id.clone(),
                        outcome,
                        phase2,
                        at_ms: self.now,
                    },
                    epoch: self.epoch,
                }),
                Action::ProposeComplete => self.in_flight.push(Proposal {
                    cmd: Command::Complete {
                        txn_id: id.clone(),
                        at_ms: self.now,
                    },
                    epoch: self.epoch,
                }),
                Action::SendDecision {
                    participant,
                    outcome,
                } => {
                    // Invariant 3.
                    assert_eq!(
                        Some(&outcome),
                        stored_outcome(&self.store, id),
                        "{id}: SendDecision to {participant} disagrees with the store"
                    );
                    if outcome.is_commit() {
                        assert_eq!(
                            self.vote_log[id].get(&participant),
                            Some(&Vote::Prepared),
                            "{id}: commit sent to {participant}, which did not prepare"
                        );
                    }
                    self.outbox.push(Message {
                        txn: id.clone(),
                        participant,
                        outcome,
                    });
                }
                Action::Finished { outcome } => {
                    // Invariant 3.
                    assert_eq!(
                        Some(&outcome),
                        stored_outcome(&self.store, id),
                        "{id}: Finished disagrees with the store"
                    );
                }
            }
        }
    }

    /// Applies a `Begin`: it creates a record exactly when none existed (a
    /// decision applied before it, out of order, creates one first).
    fn apply_begin(&mut self, cmd: &Command) -> CommandResult {
        let id = cmd.txn_id().expect("Begin names a transaction").clone();
        let existed = self.store.txns.contains_key(&id);
        let result = self.apply(cmd);
        let CommandResult::Begun { created, .. } = &result else {
            panic!("Begin returned {result:?}");
        };
        assert_eq!(*created, !existed, "Begin `created` flag");
        self.begun.insert(id);
        result
    }

    /// Applies a command to the shared store and checks the store invariants.
    fn apply(&mut self, cmd: &Command) -> CommandResult {
        let before = cmd.txn_id().and_then(|id| self.store.txns.get(id)).cloned();
        let result = self.store.apply(cmd);
        match &result {
            CommandResult::Begun { record, .. }
            | CommandResult::Decided { record }
            | CommandResult::Completed {
                record: Some(record),
            } => assert_eq!(
                Some(record),
                self.store.txns.get(&record.txn_id),
                "apply returned a record that is not the stored one"
            ),
            _ => {}
        }
        // Completion only after every phase-2 participant heard the decision.
        if let (
            Command::Complete { txn_id, .. },
            Some(TxnRecord {
                phase: Phase::Decided { awaiting, .. },
                ..
            }),
        ) = (cmd, &before)
        {
            for p in awaiting {
                assert!(
                    self.received.contains_key(&(txn_id.clone(), p.clone())),
                    "{txn_id} completed before {p} acknowledged"
                );
            }
        }
        self.check_store();
        result
    }

    fn check_store(&mut self) {
        assert_indexes_consistent(&self.store); // invariant 4
        for id in self.first_outcome.keys() {
            assert!(self.store.txns.contains_key(id), "decided {id} vanished");
        }
        for (id, record) in &self.store.txns {
            match (record.outcome(), self.first_outcome.get(id)) {
                // Invariant 1.
                (Some(now), Some(first)) => assert_eq!(now, first, "outcome of {id} changed"),
                (None, Some(first)) => panic!("{id} lost its outcome {first:?}"),
                (Some(now), None) => {
                    self.first_outcome.insert(id.clone(), now.clone());
                    if self.early.contains(id) {
                        self.stats.early_prepare_decisions += 1;
                    }
                    if now.is_commit() {
                        self.stats.commits += 1;
                    } else {
                        self.stats.aborts += 1;
                    }
                }
                (None, None) => {}
            }
            if record.outcome().is_some_and(Outcome::is_commit) {
                assert_commit_allowed(record, self.vote_log.get(id));
            }
        }
    }

    /// Invariant 5: with every vote lost from now on, a final takeover and the
    /// delivery of every proposal and message resolve every transaction.
    fn heal(&mut self) {
        self.restart();
        let far = self
            .specs
            .values()
            .map(|s| u64::from(s.timeout_ms))
            .max()
            .unwrap_or(0)
            + 1;
        for _ in 0..20 {
            if self.in_flight.is_empty() && self.outbox.is_empty() {
                break;
            }
            while !self.in_flight.is_empty() {
                self.apply_proposal(0, true);
            }
            while !self.outbox.is_empty() {
                self.deliver(0, false);
            }
            self.tick(far);
            // This model lets a deposed leader's decision apply even after
            // the new leader's scan (real Raft cannot: the scan waits for the
            // new term's first entry). A decision for a transaction whose
            // `Begin` was lost then creates a pending record nobody drives;
            // the next leader's takeover finds it, as it would in the cluster.
            if self
                .store
                .pending
                .iter()
                .any(|id| !self.drivers.contains_key(id))
            {
                self.restart();
            }
        }
        assert!(
            self.in_flight.is_empty() && self.outbox.is_empty(),
            "not quiescent after healing: {} proposals, {} messages",
            self.in_flight.len(),
            self.outbox.len()
        );
        assert!(
            self.store.pending.is_empty(),
            "still pending: {:?}",
            self.store.pending
        );
        for (id, driver) in &self.drivers {
            assert!(
                driver.is_done(),
                "{id}: driver stuck in {:?}",
                driver.stage()
            );
        }
        for id in &self.ids {
            let Some(record) = self.store.txns.get(id) else {
                assert!(!self.begun.contains(id), "begun {id} has no record");
                continue;
            };
            let outcome = record.outcome().expect("healed transaction has an outcome");
            assert_eq!(Some(outcome), self.first_outcome.get(id));
            let votes = self.vote_log.get(id);
            if outcome.is_commit() {
                assert_commit_allowed(record, votes);
            }
            // No participant that prepared is left in doubt.
            for (p, v) in votes.into_iter().flatten() {
                if *v == Vote::Prepared {
                    assert_eq!(
                        self.received.get(&(id.clone(), p.clone())),
                        Some(outcome),
                        "{id}: prepared participant {p} never learned the outcome"
                    );
                }
            }
        }
        for ((id, p), told) in &self.received {
            assert_eq!(
                Some(told),
                self.first_outcome.get(id),
                "{p} told wrong outcome"
            );
        }
    }
}

/// Invariant 2: a committed transaction had a prepared or read-only vote from
/// every participant and no abort vote; only prepared voters await phase 2.
fn assert_commit_allowed(record: &TxnRecord, votes: Option<&BTreeMap<String, Vote>>) {
    let id = &record.txn_id;
    let votes = votes.unwrap_or_else(|| panic!("{id} committed without any vote"));
    for p in &record.participants {
        match votes.get(p) {
            Some(Vote::Prepared | Vote::ReadOnly) => {}
            other => panic!("{id} committed but {p} voted {other:?}"),
        }
    }
    if let Phase::Decided { awaiting, .. } = &record.phase {
        for p in awaiting {
            assert_eq!(
                votes.get(p),
                Some(&Vote::Prepared),
                "{id}: commit awaits {p}"
            );
        }
    }
}

fn vote_strategy() -> impl Strategy<Value = Vote> {
    prop_oneof![
        4 => Just(Vote::Prepared),
        1 => Just(Vote::ReadOnly),
        1 => Just(Vote::Abort { reason: "insufficient funds".into() }),
    ]
}

fn txn_spec() -> impl Strategy<Value = TxnSpec> {
    (prop::collection::vec(vote_strategy(), 2..=4), 50u32..=300).prop_map(|(votes, timeout_ms)| {
        TxnSpec {
            participants: (0..votes.len()).map(|i| format!("p{i}")).collect(),
            votes,
            timeout_ms,
        }
    })
}

/// One step of a schedule; `restart_weight` sets how often the leader changes
/// (the other weights sum to 54).
fn op(restart_weight: u32) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<Index>(), any::<bool>()).prop_map(|(txn, early)| Op::Begin { txn, early }),
        20 => (any::<Index>(), any::<Index>(), prop::bool::weighted(0.7))
            .prop_map(|(txn, participant, fresh)| Op::Vote { txn, participant, fresh }),
        4 => (0u64..=80).prop_map(|advance_ms| Op::Tick { advance_ms }),
        restart_weight => Just(Op::Restart),
        12 => (any::<Index>(), any::<bool>())
            .prop_map(|(pick, notify_live)| Op::ApplyProposal { pick, notify_live }),
        2 => any::<Index>().prop_map(|pick| Op::DropProposal { pick }),
        10 => (any::<Index>(), prop::bool::weighted(0.3))
            .prop_map(|(pick, duplicate)| Op::Deliver { pick, duplicate }),
    ]
}

fn schedule(restart_weight: u32) -> impl Strategy<Value = (Vec<TxnSpec>, Vec<Op>)> {
    (
        prop::collection::vec(txn_spec(), 1..=3),
        prop::collection::vec(op(restart_weight), 0..120),
    )
}

/// Runs a schedule, then heals the cluster; panics on any broken invariant.
fn run_schedule(specs: Vec<TxnSpec>, ops: &[Op]) -> Stats {
    let mut sim = Sim::new(specs);
    for op in ops {
        sim.run(op);
    }
    sim.heal();
    sim.stats
}

proptest! {
    #![proptest_config(Config { cases: 512, ..Config::default() })]

    /// Invariants 1–5 on one schedule: the outcome never changes once stored
    /// (takeovers, late proposals of deposed leaders, duplicate and late
    /// votes and acks), commit needs every vote, drivers only report the
    /// stored outcome, the indexes stay exact, and healing resolves all.
    #[test]
    fn decision_never_changes_under_takeovers_and_late_proposals(
        (specs, ops) in schedule(1)
    ) {
        run_schedule(specs, &ops);
    }

    /// The same invariants when the leader changes every few steps, so most
    /// decisions are proposed by a driver that is deposed before they apply
    /// and then race the new leader's abort.
    #[test]
    fn decision_never_changes_under_frequent_leader_changes(
        (specs, ops) in schedule(8)
    ) {
        run_schedule(specs, &ops);
    }
}

/// Guards against vacuous properties: the schedule generator must reach
/// commits, aborts, takeovers of undecided transactions, late decisions that
/// win and that lose, duplicate acks and client retries after completion.
#[test]
fn schedules_reach_every_interesting_case() {
    let mut runner = TestRunner::deterministic();
    let mut total = Stats::default();
    for runner_round in 0..300 {
        let (specs, ops) = schedule(if runner_round % 2 == 0 { 1 } else { 8 })
            .new_tree(&mut runner)
            .expect("generate")
            .current();
        let s = run_schedule(specs, &ops);
        total.commits += s.commits;
        total.aborts += s.aborts;
        total.takeovers_of_undecided += s.takeovers_of_undecided;
        total.late_decide_won += s.late_decide_won;
        total.late_commit_won += s.late_commit_won;
        total.late_decide_lost += s.late_decide_lost;
        total.duplicate_acks += s.duplicate_acks;
        total.client_retry_after_completion += s.client_retry_after_completion;
        total.early_prepare_decisions += s.early_prepare_decisions;
    }
    let Stats {
        commits,
        aborts,
        takeovers_of_undecided,
        late_decide_won,
        late_commit_won,
        late_decide_lost,
        duplicate_acks,
        client_retry_after_completion,
        early_prepare_decisions,
    } = total;
    for (name, n) in [
        ("commits", commits),
        ("aborts", aborts),
        ("takeovers_of_undecided", takeovers_of_undecided),
        ("late_decide_won", late_decide_won),
        ("late_commit_won", late_commit_won),
        ("late_decide_lost", late_decide_lost),
        ("duplicate_acks", duplicate_acks),
        (
            "client_retry_after_completion",
            client_retry_after_completion,
        ),
        ("early_prepare_decisions", early_prepare_decisions),
    ] {
        assert!(n >= 10, "only {n} {name} in 300 schedules: {total:?}");
    }
}

// ---------------------------------------------------------------------------
// Command sequences
// ---------------------------------------------------------------------------

const IDS: [&str; 3] = ["a", "b", "c"];

fn names(pool: &'static [&'static str], max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(prop::sample::select(pool), 0..=max)
        .prop_map(|v| v.into_iter().map(String::from).collect())
}

fn outcome_strategy() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Commit),
        "[a-z ]{0,12}".prop_map(|reason| Outcome::Abort { reason }),
    ]
}

/// Times come from a small range so that commands collide (equal completion
/// times, expiry cutoffs that hit them).
fn command() -> impl Strategy<Value = Command> {
    let id = prop::sample::select(&IDS[..]).prop_map(|s| s.parse::<TxnId>().unwrap());
    prop_oneof![
        3 => (id.clone(), names(&["p", "q", "r"], 3), any::<[u8; 32]>(), 0u32..=1000, 0u64..=100)
            .prop_map(|(txn_id, participants, digest, timeout_ms, at_ms)| Command::Begin {
                txn_id,
                participants,
                digest,
                timeout_ms,
                at_ms,
            }),
        3 => (id.clone(), outcome_strategy(), names(&["p", "q", "r", "zz"], 4), 0u64..=100)
            .prop_map(|(txn_id, outcome, phase2, at_ms)| Command::Decide {
                txn_id,
                outcome,
                phase2,
                at_ms,
            }),
        2 => (id, 0u64..=100).prop_map(|(txn_id, at_ms)| Command::Complete { txn_id, at_ms }),
        1 => ("[a-c]", "[a-z:0-9]{0,8}")
            .prop_map(|(name, endpoint)| Command::Register { name, endpoint }),
        1 => (0u64..=200, 0u64..=100)
            .prop_map(|(now_ms, retention_ms)| Command::Expire { now_ms, retention_ms }),
        1 => (0u64..=200, 0u64..=100, 0u32..4).prop_map(|(now_ms, retention_ms, limit)| {
            Command::ExpireAtMost { now_ms, retention_ms, limit }
        }),
    ]
}

fn commands() -> impl Strategy<Value = Vec<Command>> {
    prop::collection::vec(command(), 0..40)
}

fn round_trip<T>(value: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let bytes = postcard::to_stdvec(value).expect("encode");
    postcard::from_bytes(&bytes).expect("decode")
}

proptest! {
    #![proptest_config(Config { cases: 512, ..Config::default() })]

    /// Invariant 6: a follower that receives every command as postcard bytes
    /// ends with the same store and the same results as the leader, and every
    /// command and result survives a postcard round trip unchanged.
    #[test]
    fn replaying_the_encoded_log_yields_the_same_store_and_results(cmds in commands()) {
        let (mut leader, mut follower) = (MemStore::default(), MemStore::default());
        for cmd in &cmds {
            let decoded: Command = round_trip(cmd);
            prop_assert_eq!(&decoded, cmd);
            let result = leader.apply(cmd);
            prop_assert_eq!(&round_trip(&result), &result);
            prop_assert_eq!(follower.apply(&decoded), result);
            prop_assert_eq!(&leader, &follower);
        }
    }

    /// Invariant 7: applying a command twice in a row leaves the store as
    /// applying it once (Expire included); repeated Decide, Complete and
    /// Begin return the same record, and Begin never resets an existing one.
    #[test]
    fn applying_a_command_twice_is_the_same_as_once(cmds in commands()) {
        let mut store = MemStore::default();
        for cmd in &cmds {
            let existing = cmd.txn_id().and_then(|id| store.txns.get(id)).cloned();
            let first = store.apply(cmd);
            let once = store.clone();
            let second = store.apply(cmd);
            if let Command::ExpireAtMost { now_ms, retention_ms, .. } = cmd {
                // A bounded slice is not idempotent by design: a second apply
                // takes the next slice. Harmless: it only drops completed
                // records past the same cutoff, as the leader's next slice would.
                let cutoff = now_ms.saturating_sub(*retention_ms);
                for (id, r) in &once.txns {
                    if !store.txns.contains_key(id) {
                        prop_assert!(
                            matches!(r.phase, Phase::Completed { completed_ms, .. } if completed_ms <= cutoff),
                            "a second slice dropped {} ({:?}), not past the cutoff", id, r.phase
                        );
                    }
                }
                continue;
            }
            prop_assert_eq!(&store, &once, "second apply of {:?} changed the store", cmd);
            match (cmd, &first, &second) {
                (Command::Begin { .. }, CommandResult::Begun { record: r1, created },
                    CommandResult::Begun { record: r2, created: again }) => {
                    prop_assert!(!again);
                    prop_assert_eq!(r1, r2);
                    prop_assert_eq!(*created, existing.is_none());
                    if let Some(old) = &existing {
                        prop_assert_eq!(old, r1, "Begin changed an existing record");
                    }
                }
                (Command::Expire { .. }, _, CommandResult::Expired { count }) => {
                    prop_assert_eq!(*count, 0);
                }
                _ => prop_assert_eq!(&first, &second),
            }
        }
    }

    /// Invariants 1 and 4 for arbitrary command sequences: a stored outcome
    /// only disappears with its record (Expire), never changes; the pending
    /// and completion indexes are exact after every command, Expire included;
    /// Expire drops exactly the completed records at or before its cutoff.
    #[test]
    fn indexes_stay_exact_and_outcomes_fixed_in_any_command_sequence(cmds in commands()) {
        let mut store = MemStore::default();
        for cmd in &cmds {
            let before = store.clone();
            let result = store.apply(cmd);
            assert_indexes_consistent(&store);
            for (id, old) in &before.txns {
                if let (Some(was), Some(new)) = (old.outcome(), store.txns.get(id)) {
                    prop_assert_eq!(Some(was), new.outcome(), "outcome of {} changed", id);
                }
            }
            if let Command::Expire { now_ms, retention_ms } = cmd {
                let cutoff = now_ms.saturating_sub(*retention_ms);
                let expired: BTreeSet<&TxnId> = before
                    .txns
                    .iter()
                    .filter(|(_, r)| {
                        matches!(r.phase, Phase::Completed { completed_ms, .. } if completed_ms <= cutoff)
                    })
                    .map(|(id, _)| id)
                    .collect();
                prop_assert_eq!(&result, &CommandResult::Expired { count: expired.len() as u64 });
                for id in &expired {
                    prop_assert!(!store.txns.contains_key(*id));
                }
                prop_assert_eq!(store.txns.len() + expired.len(), before.txns.len());
            } else if let Command::ExpireAtMost { now_ms, retention_ms, limit } = cmd {
                // The oldest `limit` completion entries at or before the
                // cutoff go (the index is exact, so each names its record).
                let cutoff = now_ms.saturating_sub(*retention_ms);
                let expired: BTreeSet<&TxnId> = before
                    .completed
                    .iter()
                    .take_while(|(ms, _)| *ms <= cutoff)
                    .take(*limit as usize)
                    .map(|(_, id)| id)
                    .collect();
                prop_assert_eq!(&result, &CommandResult::Expired { count: expired.len() as u64 });
                for id in before.txns.keys() {
                    prop_assert_eq!(store.txns.contains_key(id), !expired.contains(id), "{}", id);
                }
            } else if cmd.txn_id().is_some() {
                // Other transactions are untouched.
                for (id, old) in &before.txns {
                    if Some(id) != cmd.txn_id() {
                        prop_assert_eq!(Some(old), store.txns.get(id));
                    }
                }
            }
        }
    }
}

/// `Expire` drops a completed record whose completion time equals the cutoff,
/// also at the very end of the clock (`now_ms = u64::MAX`, no retention).
/// (A regression test: `MemStore::take_completed_until` once computed the
/// bound with a saturating `cutoff + 1` and never took such an entry.)
#[test]
fn expire_at_the_end_of_the_clock_drops_records_completed_then() {
    let mut store = MemStore::default();
    store.apply(&Command::Decide {
        txn_id: "t".parse().unwrap(),
        outcome: Outcome::abort("unknown"),
        phase2: vec![],
        at_ms: u64::MAX,
    });
    let result = store.apply(&Command::Expire {
        now_ms: u64::MAX,
        retention_ms: 0,
    });
    assert_eq!(result, CommandResult::Expired { count: 1 });
    assert!(store.txns.is_empty() && store.completed.is_empty());
}
