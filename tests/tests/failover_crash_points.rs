//! One test per crash point (docs/testing.md, "Crash points"): a real
//! system (three `dtc coordinator` processes, two `dtc participant` ledgers)
//! runs one transfer `fp-1` with a `fail_point!` armed that aborts the
//! process at that point; the testbed restarts the crashed process without
//! it; the client SDK retries with the same id. Then the transfer must have
//! one outcome everywhere (the expected one where the protocol fixes it),
//! the system must be live and quiescent, and the bank checker must find
//! nothing.
//!
//! The `dtc` binary must be built with the `failpoints` feature, which
//! `cargo test --workspace` does (tests/Cargo.toml); a binary without it
//! refuses to start with FAILPOINTS set, so these tests fail loudly rather
//! than pass without crashing.

use dtc_tests::bank::{Bank, BankOptions, OpResult};
use dtc_tests::checker::Anomalies;
use dtc_tests::nemesis::check_and_report;
use dtc_tests::testbed::{Testbed, TestbedOptions};
use dtc_tests::v1 as pb;
use dtc_tests::{
    BranchState, Cluster, TestParticipant, bounded, execute_request, secs, wait_for_ok,
};
use std::time::{Duration, Instant};

/// Which processes get the crash point.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// Every coordinator (whichever leads hits it first).
    Coordinators,
    /// Ledger `bank-N`.
    Ledger(usize),
}

/// The outcome the protocol fixes for the transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Commit,
    /// Either, depending on timing (the checker still demands one outcome).
    Either,
}

fn armed(point: &str) -> Vec<(String, String)> {
    vec![
        ("FAILPOINTS".into(), format!("{point}=return")),
        // Only the test's own transaction, not the seeding deposits.
        ("DTC_FAILPOINT_TXN".into(), "fp-".into()),
    ]
}

/// Two ledgers with one account each, 100 in each.
async fn bank_for(tb: &Testbed) -> Bank {
    Bank::seed(
        tb,
        BankOptions {
            accounts_per_ledger: 1,
            clients: 0,
            ..Default::default()
        },
    )
    .await
}

/// Supervises until a crash at `point` has been seen (bounded).
async fn wait_for_crash(tb: &mut Testbed, point: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !tb
        .crashes
        .iter()
        .any(|c| c.failpoint.as_deref() == Some(point))
    {
        assert!(
            Instant::now() < deadline,
            "crash point {point} never fired within {within:?}; crashes: {:?}",
            tb.crashes
        );
        tb.supervised_sleep(Duration::from_millis(50)).await;
    }
}

async fn crash_case(point: &'static str, target: Target, expect: Expect) {
    let started = Instant::now();
    let mut options = TestbedOptions::default();
    match target {
        Target::Coordinators => options.coordinator_env = armed(point),
        Target::Ledger(i) => {
            options.ledger_env.insert(i, armed(point));
        }
    }
    let mut tb = Testbed::start(options).await;
    bounded(secs(120), async {
        let bank = bank_for(&tb).await;
        let from = bank.account("bank-0", "acct-0");
        let to = bank.account("bank-1", "acct-0");
        tb.timeline.push(format!(
            "transfer fp-1 with crash point {point} armed on {target:?}"
        ));
        let client = tb.client.clone();
        let result = tb
            .supervise_during(bank.transfer(&client, "fp-1", (&from, &to, 10), secs(5), secs(45)))
            .await;
        tb.timeline
            .push(format!("fp-1: the client learned {result:?}"));
        wait_for_crash(&mut tb, point, secs(20)).await;
        match (expect, &result) {
            (Expect::Commit, OpResult::Committed)
            | (Expect::Either, OpResult::Committed | OpResult::Aborted { .. }) => {}
            _ => panic!("fp-1 with {point}: expected {expect:?}, the client learned {result:?}"),
        }
        let report = check_and_report(
            &mut tb,
            &bank,
            &format!("crash point {point}"),
            0,
            started,
            0,
            Anomalies::default(),
            Instant::now(),
            secs(30),
        )
        .await;
        assert!(report.passed, "{}", report.table());
        // The transfer moved 10 exactly once, or nothing.
        let (a, _) = tb
            .ledger("bank-0")
            .balance("acct-0")
            .await
            .expect("balance");
        let (b, _) = tb
            .ledger("bank-1")
            .balance("acct-0")
            .await
            .expect("balance");
        assert_eq!(a + b, 200, "bank-0 {a} bank-1 {b}");
        let moved = if result == OpResult::Committed { 10 } else { 0 };
        // The liveness probe moved 1 from the richer account to the other.
        assert!(
            (a, b) == (100 - moved - 1, 100 + moved + 1)
                || (a, b) == (100 - moved + 1, 100 + moved - 1),
            "bank-0 {a} bank-1 {b} after fp-1 {result:?}"
        );
        println!(
            "crash point {point}: fp-1 {}, crashes {:?}, {} ms",
            result.label(),
            tb.crashes
                .iter()
                .map(|c| format!("{} ({})", c.process, c.status))
                .collect::<Vec<_>>(),
            started.elapsed().as_millis()
        );
    })
    .await;
}

// ---- coordinator crash points -------------------------------------------

/// No prepare has left and `Begin` is still replicating (prepares go out
/// in parallel with it). If `Begin` committed, the new leader finds the
/// transaction undecided and aborts it; if not, no node knows it and the
/// client's retry with the same id runs it afresh on the new leader, which
/// may commit. Either way it has one outcome everywhere and moves money once
/// or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_crash_before_sending_prepare_resolves_one_way() {
    crash_case(
        "coordinator.prepare.before_send",
        Target::Coordinators,
        Expect::Either,
    )
    .await;
}

/// Every participant voted prepared and holds its locks; the decision was
/// never proposed. If `Begin` had committed (it replicates while the
/// prepares run), the new leader aborts and the aborts release the locks;
/// if not, nobody knows the transaction: the participants' outcome queries
/// are answered by presumed abort, or the client's retry (same id) runs it
/// afresh and the repeated prepares are answered from the participants'
/// logs. One outcome everywhere either way, and no lock left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_crash_after_prepare_before_the_decision_resolves_one_way() {
    crash_case(
        "coordinator.decision.before_propose",
        Target::Coordinators,
        Expect::Either,
    )
    .await;
}

/// `Decide(commit)` is committed in Raft, no participant heard it: the new
/// leader catches up, finds it decided, and finishes the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_crash_after_the_decision_before_phase_two_commits() {
    crash_case(
        "coordinator.decision.before_phase2",
        Target::Coordinators,
        Expect::Commit,
    )
    .await;
}

/// Everything is done but the client was not answered: its retry (same id)
/// gets the recorded outcome from the new leader, never a second run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_crash_before_replying_to_the_client_commits_once() {
    crash_case(
        "coordinator.reply.before_client",
        Target::Coordinators,
        Expect::Commit,
    )
    .await;
}

/// A new leader dies while reading the pending index; the next one (after
/// possibly more such crashes) finishes the pending transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_crash_during_the_takeover_scan_is_survived() {
    let point = "coordinator.takeover.scan";
    let started = Instant::now();
    let mut tb = Testbed::start(TestbedOptions::default()).await;
    bounded(secs(150), async {
        let bank = bank_for(&tb).await;
        let from = bank.account("bank-0", "acct-0");
        let to = bank.account("bank-1", "acct-0");
        // bank-1 frozen: the prepare times out, the abort cannot be
        // delivered, so fp-1 stays in the pending index.
        tb.ledgers[1].pause();
        tb.timeline
            .push("bank-1 paused; transfer fp-1 (1 s prepare timeout)");
        let result = bank
            .transfer(&tb.client, "fp-1", (&from, &to, 10), secs(1), secs(30))
            .await;
        assert!(
            matches!(result, OpResult::Aborted { .. }),
            "fp-1 with bank-1 frozen: {result:?}"
        );
        let pending = wait_for_ok(secs(10), "fp-1 pending", || async {
            let p = tb.cluster_pending().await?;
            if p.iter().any(|t| t.txn_id == "fp-1") {
                Ok(p)
            } else {
                Err(format!("{p:?}"))
            }
        })
        .await;
        tb.timeline.push(format!(
            "pending: {:?}; SIGKILL every coordinator, restart all with {point} armed (once each)",
            pending.iter().map(|t| &t.txn_id).collect::<Vec<_>>()
        ));
        for id in tb.cluster.ids() {
            tb.cluster.kill(id);
        }
        let spec = format!("{point}=1*return");
        for id in tb.cluster.ids() {
            tb.cluster
                .set_next_start_env(id, &[("FAILPOINTS", spec.as_str())]);
            tb.cluster.restart(id);
        }
        wait_for_crash(&mut tb, point, secs(60)).await;
        tb.ledgers[1].resume();
        tb.timeline.push("bank-1 resumed");
        let report = check_and_report(
            &mut tb,
            &bank,
            "crash point coordinator.takeover.scan",
            0,
            started,
            0,
            Anomalies::default(),
            Instant::now(),
            secs(45),
        )
        .await;
        assert!(report.passed, "{}", report.table());
        let info = tb.client.get_transaction("fp-1").await.expect("fp-1");
        assert_eq!(info.state, dtc_client::TxnState::Aborted, "{info:?}");
        println!(
            "{point}: {} crashes, {} ms",
            tb.crashes.len(),
            started.elapsed().as_millis()
        );
    })
    .await;
}

/// A follower that crashes in the middle of installing a snapshot restarts
/// with its old state intact (the install is one redb transaction), then
/// installs the snapshot and serves as a full member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_crash_during_snapshot_install_leaves_the_old_state_and_recovers() {
    // The follower must fall behind the 1000 entries kept after a snapshot.
    const BEHIND: u64 = 1100;
    let mut cluster = Cluster::start_with(3, &["--snapshot-every", "50"]);
    cluster.expect_crashes(true);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(200), async {
        let leader = cluster.wait_for_stable_leader(secs(30)).await;
        cluster.register(&alpha, secs(15)).await;
        cluster.register(&beta, secs(15)).await;
        let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
        let other = cluster
            .ids()
            .into_iter()
            .find(|id| *id != leader && *id != follower)
            .unwrap();
        cluster.kill(follower);
        let live = cluster.live_ids();
        cluster.grow_log_by(leader, &live, BEHIND).await;
        cluster.wait_no_pending(secs(20)).await;
        let before = cluster.status(leader).await.expect("leader status");

        cluster.set_next_start_env(follower, &[("FAILPOINTS", "store.snapshot.install=return")]);
        cluster.restart(follower);
        let status = cluster.wait_exit(follower, secs(60)).await;
        let log = std::fs::read_to_string(cluster.log_path(follower)).unwrap_or_default();
        assert!(
            log.contains("failpoint store.snapshot.install: crashing"),
            "node {follower} exited ({status}) without the crash point firing"
        );
        println!("node {follower} crashed installing the snapshot: {status}");

        cluster.restart(follower);
        cluster.wait_caught_up(follower, secs(60)).await;
        let s = cluster
            .status(follower)
            .await
            .expect("restarted node status");
        assert!(s.last_applied >= before.last_applied, "{s:?} vs {before:?}");
        assert_eq!((s.pending, s.participants.len()), (0, 2), "{s:?}");
        // A full quorum member: with the other follower down, the leader
        // can only commit through it.
        cluster.kill(other);
        let r = cluster
            .execute_retrying(
                &[follower],
                execute_request("after-snapshot", &[("alpha", b"a"), ("beta", b"b")], 5000),
                secs(30),
            )
            .await
            .expect("commit with the restarted node as the only follower");
        assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");
        alpha
            .wait_state("after-snapshot", BranchState::Committed, secs(10))
            .await;
        assert!(alpha.violations().is_empty() && beta.violations().is_empty());
    })
    .await;
}

/// Every node crashes half-way through applying one batched log entry (a
/// `Command::Batch` of several transactions' commands): the entry is
/// committed, none of its effects are. After the restart the entry is
/// applied again from the log, whole: every transaction has one outcome at
/// the coordinator and at both participants, and nothing is pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_crash_in_the_middle_of_a_batch_is_applied_whole_after_restart() {
    use futures::StreamExt;
    const TXNS: usize = 64;
    let mut options = dtc_tests::ClusterOptions::new(3);
    options.first_start_env = vec![("FAILPOINTS".into(), "store.apply.mid_batch=return".into())];
    let mut cluster = Cluster::with_options(options);
    cluster.expect_crashes(true);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(200), async {
        cluster.wait_for_stable_leader(secs(30)).await;
        // One at a time: single commands, never a batch.
        cluster.register(&alpha, secs(15)).await;
        cluster.register(&beta, secs(15)).await;
        let ids: Vec<String> = (0..TXNS).map(|i| format!("mb-{i:03}")).collect();
        let req = |id: &str| execute_request(id, &[("alpha", b"a"), ("beta", b"b")], 5000);
        // Concurrent transactions fill batches; the first batch of two or
        // more commands crashes every node that applies it.
        let all = cluster.ids();
        let (c, nodes) = (&cluster, &all);
        let first: Vec<_> = futures::stream::iter(ids.clone())
            .map(|id| async move {
                let r = c.execute_retrying(nodes, req(&id), secs(3)).await;
                (id, r.ok().map(|r| r.outcome()))
            })
            .buffer_unordered(TXNS)
            .collect()
            .await;
        // The leader crashes applying the entry; the followers crash when
        // they apply it, if they learned it committed before the leader
        // died, or once a new leader of theirs commits it. A majority has it.
        let deadline = Instant::now() + secs(60);
        loop {
            cluster.assert_no_crash(); // reaps the nodes that exited (expected here)
            let ids = cluster.ids();
            let down: Vec<u64> = ids
                .into_iter()
                .filter(|id| !cluster.is_running(*id))
                .collect();
            if down.len() >= 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {down:?} crashed at the crash point within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut crashed = Vec::new();
        for id in cluster.ids() {
            if cluster.is_running(id) {
                // The last one, if it has not applied the entry yet: a
                // whole-cluster outage then, which must recover all the same.
                cluster.kill(id);
                continue;
            }
            let log = std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
            assert!(
                log.contains("failpoint store.apply.mid_batch: crashing"),
                "node {id} exited without the crash point firing"
            );
            crashed.push(id);
        }
        println!("nodes {crashed:?} crashed in the middle of a batch apply");
        for id in cluster.ids() {
            cluster.restart(id);
        }
        cluster.wait_for_stable_leader(secs(30)).await;
        // Every id again, same request: a recorded outcome is returned as it
        // stands, an unknown id runs afresh; either way one answer each.
        let live = cluster.live_ids();
        let (c, l) = (&cluster, &live);
        let second: Vec<_> = futures::stream::iter(ids.clone())
            .map(|id| async move {
                let r = c.execute_retrying(l, req(&id), secs(60)).await;
                (id, r)
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let before: std::collections::BTreeMap<String, Option<pb::Outcome>> =
            first.into_iter().collect();
        for (id, r) in second {
            let outcome = r.unwrap_or_else(|s| panic!("{id}: {s:?}")).outcome();
            if let Some(Some(earlier)) = before.get(&id) {
                assert_eq!(
                    *earlier, outcome,
                    "{id} changed its outcome across the crash"
                );
            }
            let committed = outcome == pb::Outcome::Committed;
            for p in [&alpha, &beta] {
                if committed {
                    p.wait_state(&id, BranchState::Committed, secs(20)).await;
                } else if p.state(&id).is_some() {
                    // Aborted after preparing, or a tombstone (abort first);
                    // a participant never asked has no record at all.
                    p.wait_for(&id, secs(20), "aborted", |r| r.state.is_aborted())
                        .await;
                }
            }
        }
        cluster.wait_no_pending(secs(30)).await;
        for id in cluster.ids() {
            cluster.wait_caught_up(id, secs(30)).await;
        }
        let statuses = cluster.statuses().await;
        let applied: Vec<u64> = statuses.values().map(|s| s.last_applied).collect();
        assert_eq!(statuses.len(), 3, "{statuses:?}");
        assert!(statuses.values().all(|s| s.pending == 0), "{statuses:?}");
        assert!(applied.iter().all(|a| *a > 0), "{applied:?}");
        assert!(alpha.violations().is_empty() && beta.violations().is_empty());
    })
    .await;
}

// ---- participant crash points -------------------------------------------

/// The prepared vote is logged and synced but never sent: the coordinator
/// retries the prepare, the restarted participant answers from its log
/// (or, if it is not back in time, the transaction aborts everywhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_crash_before_answering_prepare_resolves_one_way() {
    crash_case(
        "participant.prepare.before_reply",
        Target::Ledger(1),
        Expect::Either,
    )
    .await;
}

/// Prepared, then the Commit arrives and the process dies before handling
/// it: the restarted participant re-takes its locks and gets the commit
/// (resent by the coordinator, or asked for by its in-doubt resolver).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_crash_on_receiving_the_decision_commits_after_restart() {
    crash_case(
        "participant.decision.on_receipt",
        Target::Ledger(1),
        Expect::Commit,
    )
    .await;
}

/// The commit is applied and synced but not acknowledged: the resent
/// Commit is a duplicate, acknowledged from the log, applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_crash_after_applying_before_acknowledging_applies_once() {
    crash_case(
        "participant.decision.before_ack",
        Target::Ledger(0),
        Expect::Commit,
    )
    .await;
}

/// A follower whose disk refuses a log append (injected: what a full disk
/// does) stops its Raft for good. It must not linger as a process that
/// serves nothing: it exits non-zero so that its supervisor restarts it,
/// the other two keep committing meanwhile, and once restarted it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_log_write_fails_exits_and_recovers_on_restart() {
    let mut cluster = Cluster::start(3);
    cluster.expect_crashes(true);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(120), async {
        let leader = cluster.wait_for_stable_leader(secs(30)).await;
        cluster.register(&alpha, secs(15)).await;
        cluster.register(&beta, secs(15)).await;
        let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
        cluster.kill(follower);
        cluster.set_next_start_env(follower, &[("FAILPOINTS", "store.log.append_error=return")]);
        cluster.restart(follower);
        // The leader replicates to it (a heartbeat carries the entries it
        // missed, or the next transaction's): the append fails.
        let r = cluster
            .execute_retrying(
                &[leader],
                execute_request("while-failing", &[("alpha", b"a"), ("beta", b"b")], 5000),
                secs(30),
            )
            .await
            .expect("the other two commit");
        assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");
        let status = cluster.wait_exit(follower, secs(30)).await;
        assert!(
            !status.success(),
            "node {follower} exited {status}, not an error"
        );
        let log = std::fs::read_to_string(cluster.log_path(follower)).unwrap_or_default();
        assert!(
            log.contains("raft stopped"),
            "node {follower} exited ({status}) without saying why:\n{}",
            &log[log.len().saturating_sub(3000)..]
        );

        cluster.restart(follower);
        cluster.wait_caught_up(follower, secs(60)).await;
        let s = cluster
            .status(follower)
            .await
            .expect("restarted node status");
        assert_eq!(s.pending, 0, "{s:?}");
        alpha
            .wait_state("while-failing", BranchState::Committed, secs(10))
            .await;
        assert!(alpha.violations().is_empty() && beta.violations().is_empty());
    })
    .await;
}
