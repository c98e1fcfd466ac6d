//! Black-box tests of a three-node `dtc` cluster: real coordinator processes
//! (killed with SIGKILL and restarted), in-process test participants, and
//! nothing but the wire contract in between. See `dtc_tests` for the harness.
//!
//! Each test starts its own cluster on fresh loopback ports, waits on
//! conditions with deadlines (never fixed sleeps), and runs its body under
//! an overall bound so a hang fails with the nodes' logs instead of stalling.

use dtc_tests::v1 as pb;
use dtc_tests::{
    BranchState, Cluster, DtcProcess, TestParticipant, VoteMode, bounded, execute_request,
    free_ports, request, run_dtc, secs, wait_for_ok,
};
use std::time::{Duration, Instant};
use tonic::Code;

fn assert_no_violations(participants: &[&TestParticipant]) {
    for p in participants {
        assert!(
            p.violations().is_empty(),
            "participant {} saw protocol violations: {:?}",
            p.name(),
            p.violations()
        );
    }
}

/// The counts N of every "takeover: found N pending transactions" line.
fn takeover_counts(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find("takeover: found ")? + "takeover: found ".len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

fn expect_status<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, tonic::Status>,
    code: Code,
    needles: &[&str],
) {
    let status = match r {
        Ok(v) => panic!("{what}: expected {code:?}, got a success: {v:?}"),
        Err(s) => s,
    };
    assert_eq!(
        status.code(),
        code,
        "{what}: wrong code; message: {}",
        status.message()
    );
    for n in needles {
        assert!(
            status.message().contains(n),
            "{what}: message {:?} does not mention {n:?}",
            status.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_nodes_form_a_cluster_and_commit() {
    let cluster = Cluster::start(3);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(90), async {
        let leader = cluster.ready_with(&[&alpha, &beta]).await;
        let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
        let view = cluster
            .status(follower)
            .await
            .expect("the follower answers");
        assert_eq!(view.role, "follower", "{view:?}");
        assert_eq!(view.members.len(), 3, "{view:?}");

        // Only the follower is contacted: a commit proves it forwarded.
        let req = execute_request(
            "first-txn",
            &[("alpha", b"a-payload"), ("beta", b"b-payload")],
            5000,
        );
        let resp = cluster
            .execute_retrying(&[follower], req, secs(30))
            .await
            .expect("Execute through a follower");
        assert_eq!(resp.txn_id, "first-txn");
        assert_eq!(resp.outcome(), pb::Outcome::Committed, "{resp:?}");
        assert!(resp.reason.is_empty(), "{resp:?}");

        for (p, payload) in [(&alpha, &b"a-payload"[..]), (&beta, &b"b-payload"[..])] {
            let r = p
                .wait_state("first-txn", BranchState::Committed, secs(10))
                .await;
            assert_eq!(r.payload, payload, "{} got the wrong payload", p.name());
            assert_eq!(r.prepares, 1, "{}: {r:?}", p.name());
        }
        let info = cluster
            .wait_txn_state("first-txn", pb::TxnState::Committed, secs(10))
            .await;
        assert_eq!(info.participants, ["alpha", "beta"], "{info:?}");
        assert!(info.awaiting_ack.is_empty(), "{info:?}");
        assert!(info.reason.is_empty(), "{info:?}");
        assert!(
            0 < info.created_at_ms
                && info.created_at_ms <= info.decided_at_ms
                && info.decided_at_ms <= info.completed_at_ms,
            "timestamps out of order: {info:?}"
        );
        assert_eq!(info.timeout_ms, 5000, "{info:?}");

        let s = cluster.status_json().await;
        assert_eq!(s["leader"].as_u64(), Some(leader), "{s:#}");
        let nodes = s["nodes"].as_array().expect("nodes array");
        assert_eq!(nodes.len(), 3, "{s:#}");
        let roles: Vec<&str> = nodes
            .iter()
            .map(|n| n["role"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(roles.iter().filter(|r| **r == "leader").count(), 1, "{s:#}");
        assert_eq!(
            roles.iter().filter(|r| **r == "follower").count(),
            2,
            "{s:#}"
        );
        assert_eq!(s["pending"].as_u64(), Some(0), "{s:#}");
        let mut names: Vec<(&str, &str)> = s["participants"]
            .as_array()
            .expect("participants array")
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or("?"),
                    p["endpoint"].as_str().unwrap_or("?"),
                )
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                ("alpha", alpha.endpoint().as_str()),
                ("beta", beta.endpoint().as_str())
            ],
            "{s:#}"
        );
        assert_no_violations(&[&alpha, &beta]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_vote_aborts_everywhere() {
    let cluster = Cluster::start(3);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(90), async {
        cluster.ready_with(&[&alpha, &beta]).await;
        alpha.set_vote(VoteMode::Abort("insufficient funds".into()));
        let req = execute_request(
            "abort-1",
            &[("alpha", b"debit 100"), ("beta", b"credit 100")],
            5000,
        );
        let resp = cluster
            .execute_retrying(&cluster.ids(), req, secs(30))
            .await
            .expect("Execute");
        assert_eq!(resp.outcome(), pb::Outcome::Aborted, "{resp:?}");
        assert!(resp.reason.contains("insufficient funds"), "{resp:?}");

        let b = beta
            .wait_for("abort-1", secs(10), "aborted", |r| r.state.is_aborted())
            .await;
        assert_eq!(b.commits, 0, "{b:?}");
        let a = alpha.record("abort-1").expect("alpha saw the prepare");
        assert_eq!(a.state, BranchState::Aborted, "{a:?}");
        assert_eq!(a.commits, 0, "{a:?}");

        let info = cluster
            .wait_txn_state("abort-1", pb::TxnState::Aborted, secs(10))
            .await;
        assert!(info.reason.contains("insufficient funds"), "{info:?}");
        cluster.wait_no_pending(secs(10)).await;
        assert_no_violations(&[&alpha, &beta]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_vote_commits_without_phase_two_for_that_branch() {
    let cluster = Cluster::start(3);
    let reader = TestParticipant::start("reader").await;
    let writer = TestParticipant::start("writer").await;
    bounded(secs(90), async {
        cluster.ready_with(&[&reader, &writer]).await;
        reader.set_vote(VoteMode::ReadOnly);
        let req = execute_request(
            "ro-1",
            &[("reader", b"select"), ("writer", b"update")],
            5000,
        );
        let resp = cluster
            .execute_retrying(&cluster.ids(), req, secs(30))
            .await
            .expect("Execute");
        assert_eq!(resp.outcome(), pb::Outcome::Committed, "{resp:?}");
        writer
            .wait_state("ro-1", BranchState::Committed, secs(10))
            .await;
        cluster
            .wait_txn_state("ro-1", pb::TxnState::Committed, secs(10))
            .await;
        let r = reader.record("ro-1").expect("reader saw the prepare");
        assert_eq!(r.state, BranchState::ReadOnly, "{r:?}");
        assert_eq!(
            (r.commits, r.aborts),
            (0, 0),
            "a read-only branch got phase 2: {r:?}"
        );
        assert_no_violations(&[&reader, &writer]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_statuses_and_the_node_keeps_serving() {
    let cluster = Cluster::start(3);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(90), async {
        let leader = cluster.ready_with(&[&alpha, &beta]).await;
        // Send everything through a follower: validation happens where the
        // request lands, the registry check on the leader after forwarding.
        let via = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
        let ok: &[(&str, &[u8])] = &[("alpha", b"x"), ("beta", b"y")];
        let big = vec![7u8; 4 * 1024 * 1024 + 1];
        let too_many: Vec<String> = (0..65).map(|i| format!("p{i}")).collect();
        let too_many: Vec<(&str, &[u8])> =
            too_many.iter().map(|n| (n.as_str(), &b""[..])).collect();
        let long_id = "x".repeat(129);
        let cases: Vec<(&str, pb::ExecuteRequest, Code, Vec<&str>)> = vec![
            (
                "no branches",
                execute_request("bad-1", &[], 0),
                Code::InvalidArgument,
                vec!["no branches"],
            ),
            (
                "a participant named twice",
                execute_request("bad-2", &[("alpha", b"1"), ("alpha", b"2")], 0),
                Code::InvalidArgument,
                vec!["\"alpha\"", "more than one branch"],
            ),
            (
                "an unknown participant",
                execute_request("bad-3", &[("alpha", b"1"), ("ghost", b"2")], 0),
                Code::FailedPrecondition,
                vec!["\"ghost\"", "not registered"],
            ),
            (
                "an over-long txn id (129 bytes)",
                execute_request(&long_id, ok, 0),
                Code::InvalidArgument,
                vec!["txn_id", "129 bytes", "128"],
            ),
            (
                "a txn id with a bad character",
                execute_request("bad id!", ok, 0),
                Code::InvalidArgument,
                vec!["txn_id", "not allowed"],
            ),
            (
                "a bad participant name",
                execute_request("bad-6", &[("no spaces", b"1")], 0),
                Code::InvalidArgument,
                vec!["participant name", "no spaces"],
            ),
            (
                "a payload over 4 MiB",
                execute_request("bad-7", &[("alpha", &big), ("beta", b"y")], 0),
                Code::InvalidArgument,
                vec!["payload", "\"alpha\"", "4194305", "4194304"],
            ),
            (
                "65 branches",
                execute_request("bad-8", &too_many, 0),
                Code::InvalidArgument,
                vec!["65 branches", "64"],
            ),
            (
                "timeout_ms 600001",
                execute_request("bad-9", ok, 600_001),
                Code::InvalidArgument,
                vec!["timeout_ms", "600001", "600000"],
            ),
        ];
        for (what, req, code, needles) in cases {
            let r = cluster.execute_retrying(&[via], req, secs(15)).await;
            expect_status(what, r, code, &needles);
        }
        assert!(
            alpha.records().is_empty() && beta.records().is_empty(),
            "a refused request reached a participant: {:?} {:?}",
            alpha.records(),
            beta.records()
        );

        // The other calls validate too.
        let mut c = cluster.client(via);
        let r = c
            .get_transaction(request(
                pb::GetTransactionRequest {
                    txn_id: String::new(),
                },
                secs(5),
            ))
            .await;
        expect_status(
            "GetTransaction with an empty id",
            r,
            Code::InvalidArgument,
            &["txn_id"],
        );
        let r = cluster.get_txn(via, "never-ran").await;
        expect_status(
            "GetTransaction of an unknown id",
            r,
            Code::NotFound,
            &["never-ran"],
        );
        let r = c
            .list_transactions(request(
                pb::ListTransactionsRequest {
                    pending_only: false,
                    limit: 1001,
                    after_txn_id: String::new(),
                },
                secs(5),
            ))
            .await;
        expect_status(
            "ListTransactions limit 1001",
            r,
            Code::InvalidArgument,
            &["limit", "1001"],
        );
        let r = c
            .register_participant(request(
                pb::RegisterParticipantRequest {
                    name: "gamma".into(),
                    endpoint: "not an endpoint".into(),
                },
                secs(5),
            ))
            .await;
        expect_status(
            "RegisterParticipant with a bad endpoint",
            r,
            Code::InvalidArgument,
            &["endpoint"],
        );
        let r = c
            .register_participant(request(
                pb::RegisterParticipantRequest {
                    name: String::new(),
                    endpoint: alpha.endpoint(),
                },
                secs(5),
            ))
            .await;
        expect_status(
            "RegisterParticipant with an empty name",
            r,
            Code::InvalidArgument,
            &["name"],
        );

        // Boundaries that are valid: a 128-byte id, and an empty id (the
        // contract says the server generates one).
        let id128 = "y".repeat(128);
        let r = cluster
            .execute_retrying(&[via], execute_request(&id128, ok, 0), secs(20))
            .await
            .expect("a 128-byte id is valid");
        assert_eq!(
            (r.txn_id.as_str(), r.outcome()),
            (id128.as_str(), pb::Outcome::Committed)
        );
        let r = cluster
            .execute_retrying(&[via], execute_request("", ok, 0), secs(20))
            .await
            .expect("an empty id gets a generated one");
        assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");
        assert!(!r.txn_id.is_empty(), "no id was generated: {r:?}");
        alpha
            .wait_state(&r.txn_id, BranchState::Committed, secs(10))
            .await;

        // Idempotency by txn id.
        let first = execute_request("same-id", &[("alpha", b"one"), ("beta", b"one")], 5000);
        let r1 = cluster
            .execute_retrying(&[via], first.clone(), secs(20))
            .await
            .expect("first attempt");
        assert_eq!(r1.outcome(), pb::Outcome::Committed, "{r1:?}");
        let changed = execute_request("same-id", &[("alpha", b"two"), ("beta", b"one")], 5000);
        let r = cluster.execute_retrying(&[via], changed, secs(20)).await;
        expect_status(
            "same id, different payload",
            r,
            Code::FailedPrecondition,
            &["same-id", "different request"],
        );
        let r = cluster
            .execute_retrying(&[leader], first.clone(), secs(20))
            .await;
        assert_eq!(
            r.expect("a retry with the same request"),
            r1,
            "a retry must get the original outcome"
        );
        let mut other_timeout = first.clone();
        other_timeout.timeout_ms = 7000;
        let r = cluster
            .execute_retrying(&[via], other_timeout, secs(20))
            .await;
        assert_eq!(
            r.expect("a retry with another timeout"),
            r1,
            "the timeout is not part of the request identity"
        );
        for p in [&alpha, &beta] {
            let rec = p
                .wait_state("same-id", BranchState::Committed, secs(10))
                .await;
            assert_eq!(
                rec.prepares,
                1,
                "{}: the retries prepared again: {rec:?}",
                p.name()
            );
            assert_eq!(rec.payload, b"one", "{}: {rec:?}", p.name());
        }

        // The node that got all of that still serves.
        let r = cluster
            .execute_retrying(&[via], execute_request("after-bad", ok, 5000), secs(20))
            .await
            .expect("a normal transaction after the bad ones");
        assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");
        alpha
            .wait_state("after-bad", BranchState::Committed, secs(10))
            .await;
        beta.wait_state("after-bad", BranchState::Committed, secs(10))
            .await;
        assert_no_violations(&[&alpha, &beta]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_during_prepare_resolves_to_abort_everywhere() {
    let mut cluster = Cluster::start(3);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(120), async {
        let leader = cluster.ready_with(&[&alpha, &beta]).await;
        let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
        alpha.hold_prepares();
        let req = execute_request("in-doubt-1", &[("alpha", b"a"), ("beta", b"b")], 10_000);
        let mut c = cluster.client(follower);
        let first = tokio::spawn({
            let req = req.clone();
            async move {
                c.execute(request(req, secs(20)))
                    .await
                    .map(tonic::Response::into_inner)
            }
        });
        alpha
            .wait_for("in-doubt-1", secs(15), "a Prepare", |r| r.prepares >= 1)
            .await;
        beta.wait_state("in-doubt-1", BranchState::Prepared, secs(15))
            .await;
        // Prepares leave while `Begin` replicates: kill only once the
        // transaction is recorded, so this pins the takeover-abort path.
        cluster
            .wait_txn_state("in-doubt-1", pb::TxnState::Preparing, secs(15))
            .await;

        let offsets: Vec<(u64, u64)> = cluster
            .ids()
            .into_iter()
            .filter(|id| *id != leader)
            .map(|id| (id, cluster.log_len(id)))
            .collect();
        cluster.kill(leader);
        let new_leader = cluster.wait_for_leader(secs(20)).await;
        assert_ne!(new_leader, leader);

        // The takeover decides abort and tells everyone, including the
        // participant whose vote never came back.
        let b = beta
            .wait_for("in-doubt-1", secs(20), "aborted", |r| r.state.is_aborted())
            .await;
        assert_eq!(b.commits, 0, "{b:?}");
        alpha
            .wait_for("in-doubt-1", secs(20), "an Abort", |r| r.aborts >= 1)
            .await;
        alpha.release_prepares();
        let a = alpha
            .wait_for("in-doubt-1", secs(10), "aborted", |r| r.state.is_aborted())
            .await;
        assert_eq!(a.commits, 0, "{a:?}");

        let first = first.await.expect("the first Execute task");
        if let Ok(r) = &first {
            assert_ne!(r.outcome(), pb::Outcome::Committed, "{r:?}");
        }
        println!("first attempt, interrupted by the kill: {first:?}");

        let live = cluster.live_ids();
        let r = cluster
            .execute_retrying(&live, req, secs(30))
            .await
            .expect("a retry after failover");
        assert_eq!(r.outcome(), pb::Outcome::Aborted, "{r:?}");
        println!("retry after failover: {r:?}");
        cluster.wait_no_pending(secs(20)).await;
        cluster
            .wait_txn_state("in-doubt-1", pb::TxnState::Aborted, secs(10))
            .await;

        let (_, offset) = offsets.iter().find(|(id, _)| *id == new_leader).unwrap();
        let log = cluster.log_since(new_leader, *offset);
        let counts = takeover_counts(&log);
        println!("takeover lines on the new leader {new_leader}: {counts:?}");
        assert!(
            counts.iter().any(|n| *n >= 1),
            "the new leader {new_leader} logged no takeover of a pending transaction: {counts:?}"
        );
        for p in [&alpha, &beta] {
            assert_ne!(p.state("in-doubt-1"), Some(BranchState::Committed));
        }
        assert_no_violations(&[&alpha, &beta]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_after_commit_decision_finishes_the_commit() {
    let mut cluster = Cluster::start(3);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(120), async {
        let leader = cluster.ready_with(&[&alpha, &beta]).await;
        beta.fail_commits(true);
        let req = execute_request("decided-1", &[("alpha", b"a"), ("beta", b"b")], 5000);
        let r = cluster
            .execute_retrying(&[leader], req.clone(), secs(30))
            .await
            .expect("Execute");
        assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");
        alpha
            .wait_state("decided-1", BranchState::Committed, secs(10))
            .await;
        beta.wait_for("decided-1", secs(10), "a failed Commit", |r| {
            r.commits >= 1 && r.state == BranchState::Prepared
        })
        .await;
        let info = cluster
            .get_txn(leader, "decided-1")
            .await
            .expect("GetTransaction");
        assert_eq!(info.state(), pb::TxnState::Committing, "{info:?}");
        // Acks are not recorded one by one (only Complete, once all are in),
        // so alpha may still be listed; beta must be.
        assert!(info.awaiting_ack.iter().any(|p| p == "beta"), "{info:?}");

        let offsets: Vec<(u64, u64)> = cluster
            .ids()
            .into_iter()
            .map(|id| (id, cluster.log_len(id)))
            .collect();
        cluster.kill(leader);
        beta.fail_commits(false);
        let new_leader = cluster.wait_for_leader(secs(20)).await;
        assert_ne!(new_leader, leader);
        beta.wait_state("decided-1", BranchState::Committed, secs(30))
            .await;
        cluster.wait_no_pending(secs(20)).await;
        let info = cluster
            .wait_txn_state("decided-1", pb::TxnState::Committed, secs(10))
            .await;
        assert!(info.awaiting_ack.is_empty(), "{info:?}");
        let live = cluster.live_ids();
        let r2 = cluster
            .execute_retrying(&live, req, secs(20))
            .await
            .expect("retry");
        assert_eq!(
            r2, r,
            "a retry after failover must get the original outcome"
        );
        for p in [&alpha, &beta] {
            let rec = p.record("decided-1").unwrap();
            assert_eq!(
                rec.prepares,
                1,
                "{}: prepared again after failover: {rec:?}",
                p.name()
            );
        }
        let (_, offset) = offsets.iter().find(|(id, _)| *id == new_leader).unwrap();
        let counts = takeover_counts(&cluster.log_since(new_leader, *offset));
        println!("takeover lines on the new leader {new_leader}: {counts:?}");
        assert!(
            counts.iter().any(|n| *n >= 1),
            "no takeover of the decided transaction: {counts:?}"
        );
        assert_no_violations(&[&alpha, &beta]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_rejoins_and_catches_up() {
    let mut cluster = Cluster::start(3);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(120), async {
        let leader = cluster.ready_with(&[&alpha, &beta]).await;
        let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
        cluster.kill(follower);
        let live = cluster.live_ids();
        for i in 0..20 {
            let id = format!("catch-up-{i:02}");
            let r = cluster
                .execute_retrying(
                    &live,
                    execute_request(&id, &[("alpha", b"a"), ("beta", b"b")], 5000),
                    secs(20),
                )
                .await
                .unwrap_or_else(|s| panic!("{id}: {s:?}"));
            assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");
        }
        cluster.wait_no_pending(secs(20)).await;
        let leader_view = cluster
            .status(cluster.wait_for_leader(secs(10)).await)
            .await
            .expect("leader status");
        let before = leader_view.last_applied;

        cluster.restart(follower);
        cluster.wait_caught_up(follower, secs(30)).await;
        let after = cluster.wait_for_stable_leader(secs(10)).await;
        let after_term = cluster.status(after).await.map(|s| s.term).unwrap_or(0);
        println!(
            "leader {} term {} before the restart of node {follower}; leader {after} term {after_term} after it caught up",
            leader_view.node_id, leader_view.term
        );
        let s = wait_for_ok(
            secs(10),
            "the restarted node to show the applied state",
            || async {
                let s = cluster.status(follower).await.ok_or("no answer")?;
                if s.pending == 0 && s.participants.len() == 2 && s.last_applied >= before {
                    Ok(s)
                } else {
                    Err(format!("{s:?}"))
                }
            },
        )
        .await;
        println!(
            "restarted node {follower}: last_applied {} (leader had {before})",
            s.last_applied
        );

        // It serves (forwards) again.
        let r = cluster
            .execute_retrying(
                &[follower],
                execute_request("after-restart", &[("alpha", b"a")], 5000),
                secs(20),
            )
            .await
            .expect("Execute through the restarted node");
        assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");
        alpha
            .wait_state("after-restart", BranchState::Committed, secs(10))
            .await;
        assert_eq!(alpha.records().len(), 21);
        assert_no_violations(&[&alpha, &beta]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_leader_kills_elect_a_new_leader_each_time() {
    const KILLS: usize = 10;
    let mut cluster = Cluster::start(3);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(150), async {
        cluster.ready_with(&[&alpha, &beta]).await;
        let mut failovers = Vec::with_capacity(KILLS);
        for i in 0..KILLS {
            let leader = cluster.wait_for_leader(secs(20)).await;
            let term = cluster.status(leader).await.map(|s| s.term).unwrap_or(0);
            cluster.kill(leader);
            let killed_at = Instant::now();
            let live = cluster.live_ids();
            let id = format!("failover-{i:02}");
            let (r, retried) = cluster
                .execute_retrying_traced(
                    &live,
                    execute_request(&id, &[("alpha", b"a"), ("beta", b"b")], 5000),
                    secs(30),
                )
                .await;
            let took = killed_at.elapsed();
            let r = r.unwrap_or_else(|s| panic!("kill {i}: {id} did not commit: {s:?}"));
            assert_eq!(r.outcome(), pb::Outcome::Committed, "kill {i}: {r:?}");
            failovers.push(took);

            let new_leader = cluster.wait_for_leader(secs(20)).await;
            let new_term = cluster
                .status(new_leader)
                .await
                .map(|s| s.term)
                .unwrap_or(0);
            assert_ne!(
                new_leader, leader,
                "kill {i}: the killed node is still leader"
            );
            assert!(
                new_term > term,
                "kill {i}: no new election (term {term} -> {new_term})"
            );
            let mut seen = std::collections::BTreeMap::<String, usize>::new();
            for (_, st) in &retried {
                *seen
                    .entry(format!("{:?} {:?}", st.code(), st.message()))
                    .or_default() += 1;
            }
            println!(
                "kill {i}: leader {leader} (term {term}) -> {new_leader} (term {new_term}); \
                 committed {} ms after SIGKILL; retried {seen:?}",
                took.as_millis()
            );

            cluster.restart(leader);
            cluster.wait_caught_up(leader, secs(30)).await;
        }
        for p in [&alpha, &beta] {
            for i in 0..KILLS {
                p.wait_state(
                    &format!("failover-{i:02}"),
                    BranchState::Committed,
                    secs(10),
                )
                .await;
            }
        }
        cluster.wait_no_pending(secs(20)).await;
        assert_no_violations(&[&alpha, &beta]);
        let mut ms: Vec<u128> = failovers.iter().map(|d| d.as_millis()).collect();
        ms.sort_unstable();
        let median = if ms.len() % 2 == 1 {
            ms[ms.len() / 2]
        } else {
            (ms[ms.len() / 2 - 1] + ms[ms.len() / 2]) / 2
        };
        println!(
            "failover ms: median {median} max {} over {KILLS} kills (all: {ms:?})",
            ms.last().unwrap()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_of_another_node_is_refused() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let ports = free_ports(3);
    let peers = format!(
        "1=127.0.0.1:{},2=127.0.0.1:{},3=127.0.0.1:{}",
        ports[0], ports[1], ports[2]
    );
    let dir = tmp.path().join("node-1");
    let dir_s = dir.display().to_string();
    let listen = |i: usize| format!("127.0.0.1:{}", ports[i]);
    let mut node1 = DtcProcess::spawn(
        &[
            "coordinator",
            "--id",
            "1",
            "--listen",
            &listen(0),
            "--data-dir",
            &dir_s,
            "--peers",
            &peers,
        ],
        &tmp.path().join("node-1.log"),
    );
    bounded(secs(60), async {
        // Wait until node 1 runs (it answers), so its directory is claimed.
        let c = dtc_tests::client_for(listen(0).parse().unwrap());
        wait_for_ok(secs(20), "node 1 to answer", || {
            let mut c = c.clone();
            async move {
                c.cluster_status(request(pb::ClusterStatusRequest {}, secs(1)))
                    .await
                    .map(|r| r.into_inner().node_id)
            }
        })
        .await;
        node1.kill();
        let identity = std::fs::read(dir.join("identity.json")).ok();

        let (status, out) = run_dtc(
            &[
                "coordinator",
                "--id",
                "2",
                "--listen",
                &listen(1),
                "--data-dir",
                &dir_s,
                "--peers",
                &peers,
            ],
            secs(20),
        );
        println!("node 2 on node 1's directory: {status}; output:\n{out}");
        assert!(
            !status.success(),
            "node 2 started on node 1's directory: {out}"
        );
        assert!(out.contains("belongs to node 1"), "{out}");
        assert_eq!(
            std::fs::read(dir.join("identity.json")).ok(),
            identity,
            "the refused start changed the directory's identity"
        );

        let other = tmp.path().join("other").display().to_string();
        let (status, out) = run_dtc(
            &[
                "coordinator",
                "--id",
                "1",
                "--listen",
                &listen(0),
                "--data-dir",
                &other,
                "--peers",
                "bogus",
            ],
            secs(20),
        );
        assert_eq!(status.code(), Some(2), "--peers bogus: {status}; {out}");
        assert!(
            out.contains("bogus"),
            "the usage error does not name the bad value: {out}"
        );

        // The rightful owner still starts on it.
        let mut again = DtcProcess::spawn(
            &[
                "coordinator",
                "--id",
                "1",
                "--listen",
                &listen(0),
                "--data-dir",
                &dir_s,
                "--peers",
                &peers,
            ],
            &tmp.path().join("node-1.log"),
        );
        let id = wait_for_ok(secs(20), "node 1 to answer after the refused start", || {
            let mut c = c.clone();
            async move {
                c.cluster_status(request(pb::ClusterStatusRequest {}, secs(1)))
                    .await
                    .map(|r| r.into_inner().node_id)
            }
        })
        .await;
        assert_eq!(id, 1);
        assert!(again.is_running());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_while_running_joins_the_first_attempt() {
    let cluster = Cluster::start(3);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(90), async {
        let leader = cluster.ready_with(&[&alpha, &beta]).await;
        let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
        alpha.hold_prepares();
        let req = execute_request("joined-1", &[("alpha", b"a"), ("beta", b"b")], 10_000);
        let spawn_execute = |via: u64| {
            let mut c = cluster.client(via);
            let req = req.clone();
            tokio::spawn(async move {
                c.execute(request(req, secs(20)))
                    .await
                    .map(tonic::Response::into_inner)
            })
        };
        let first = spawn_execute(leader);
        alpha
            .wait_for("joined-1", secs(15), "a Prepare", |r| r.prepares >= 1)
            .await;
        // The retry lands on another node and is forwarded to the leader
        // while the first attempt is held in prepare.
        let mut second = spawn_execute(follower);
        // An observation window, not a synchronization: the retry must not
        // be answered (or start a second prepare) while the first runs.
        let early = tokio::time::timeout(Duration::from_millis(500), &mut second).await;
        assert!(
            early.is_err(),
            "the retry was answered while the first attempt ran: {early:?}"
        );
        assert_eq!(
            alpha.record("joined-1").unwrap().prepares,
            1,
            "the retry started a second prepare"
        );
        alpha.release_prepares();
        let r1 = first.await.unwrap().expect("first attempt");
        let r2 = second.await.unwrap().expect("retry");
        assert_eq!(r1.outcome(), pb::Outcome::Committed, "{r1:?}");
        assert_eq!(r1, r2, "the retry got another outcome");
        for p in [&alpha, &beta] {
            let rec = p
                .wait_state("joined-1", BranchState::Committed, secs(10))
                .await;
            assert_eq!(rec.prepares, 1, "{}: {rec:?}", p.name());
        }
        assert_no_violations(&[&alpha, &beta]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_timeout_aborts_and_tells_the_silent_participant() {
    let cluster = Cluster::start(3);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(90), async {
        cluster.ready_with(&[&alpha, &beta]).await;
        alpha.hold_prepares();
        let started = Instant::now();
        let r = cluster
            .execute_retrying(
                &cluster.ids(),
                execute_request("silent-1", &[("alpha", b"a"), ("beta", b"b")], 1000),
                secs(30),
            )
            .await
            .expect("Execute");
        let took = started.elapsed();
        assert_eq!(r.outcome(), pb::Outcome::Aborted, "{r:?}");
        assert!(
            r.reason.contains("timed out") && r.reason.contains("alpha"),
            "{r:?}"
        );
        assert!(
            took >= Duration::from_millis(900),
            "aborted before the 1 s prepare timeout: {took:?}"
        );
        println!(
            "prepare timeout of 1000 ms answered after {} ms",
            took.as_millis()
        );
        // The silent participant may have prepared: it must hear the abort.
        let a = alpha
            .wait_for("silent-1", secs(15), "an Abort", |r| r.aborts >= 1)
            .await;
        assert!(a.state.is_aborted(), "{a:?}");
        beta.wait_for("silent-1", secs(15), "aborted", |r| r.state.is_aborted())
            .await;
        alpha.release_prepares();
        cluster.wait_no_pending(secs(15)).await;
        let info = cluster
            .wait_txn_state("silent-1", pb::TxnState::Aborted, secs(10))
            .await;
        assert!(info.reason.contains("timed out"), "{info:?}");
        assert!(alpha.state("silent-1").unwrap().is_aborted());
        assert_no_violations(&[&alpha, &beta]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_moved_to_a_new_endpoint_gets_the_decision_there() {
    let cluster = Cluster::start(3);
    let alpha = TestParticipant::start("alpha").await;
    let mut beta = TestParticipant::start("beta").await;
    bounded(secs(90), async {
        cluster.ready_with(&[&alpha, &beta]).await;
        beta.fail_commits(true);
        let r = cluster
            .execute_retrying(
                &cluster.ids(),
                execute_request("moved-1", &[("alpha", b"a"), ("beta", b"b")], 5000),
                secs(30),
            )
            .await
            .expect("Execute");
        assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");
        beta.wait_for("moved-1", secs(10), "a failed Commit", |r| r.commits >= 1)
            .await;
        let old_port = beta.port();
        beta.move_to_new_port().await;
        beta.fail_commits(false);
        cluster.register(&beta, secs(15)).await;
        let rec = beta.wait_state("moved-1", BranchState::Committed, secs(30)).await;
        assert_eq!(
            rec.commit_ports.last(),
            Some(&beta.port()),
            "the acknowledged Commit did not arrive on the new endpoint (old port {old_port}): {rec:?}"
        );
        cluster.wait_no_pending(secs(20)).await;
        let s = cluster.status_json().await;
        let endpoint = s["participants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "beta")
            .map(|p| p["endpoint"].as_str().unwrap_or("").to_string());
        assert_eq!(endpoint, Some(beta.endpoint()), "{s:#}");
        assert_no_violations(&[&alpha, &beta]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_doubt_query_of_an_unknown_txn_records_presumed_abort() {
    let cluster = Cluster::start(3);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(90), async {
        let leader = cluster.ready_with(&[&alpha, &beta]).await;
        let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
        let query = |txn_id: &str| {
            let mut q = cluster.in_doubt(follower);
            let msg = pb::QueryOutcomeRequest {
                txn_id: txn_id.to_string(),
                participant: "alpha".into(),
            };
            async move {
                q.query_outcome(request(msg, secs(5)))
                    .await
                    .map(tonic::Response::into_inner)
            }
        };
        let r = wait_for_ok(secs(15), "QueryOutcome of an unknown txn", || async {
            match query("never-begun").await {
                Err(s) if dtc_tests::is_retryable(&s) => Err(s),
                other => Ok(other),
            }
        })
        .await
        .expect("QueryOutcome");
        assert_eq!(r.outcome(), pb::Outcome::Aborted, "{r:?}");
        assert!(r.reason.contains("presumed abort"), "{r:?}");
        // The abort was recorded: the id can no longer commit.
        let info = cluster
            .wait_txn_state("never-begun", pb::TxnState::Aborted, secs(10))
            .await;
        println!("presumed abort record: {info:?}");
        let e = cluster
            .execute_retrying(
                &cluster.ids(),
                execute_request("never-begun", &[("alpha", b"a"), ("beta", b"b")], 5000),
                secs(20),
            )
            .await;
        match e {
            Ok(r) => assert_eq!(r.outcome(), pb::Outcome::Aborted, "{r:?}"),
            Err(s) => assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}"),
        }
        assert!(
            alpha.record("never-begun").is_none(),
            "a presumed-aborted txn was prepared"
        );

        // A decided one answers its outcome.
        let r = cluster
            .execute_retrying(
                &cluster.ids(),
                execute_request("known-1", &[("alpha", b"a"), ("beta", b"b")], 5000),
                secs(20),
            )
            .await
            .expect("Execute");
        assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");
        let q = query("known-1").await.expect("QueryOutcome");
        assert_eq!(q.outcome(), pb::Outcome::Committed, "{q:?}");
        // A participant the stored transaction does not name prepared
        // something else under this id (prepares leave before `Begin`
        // commits): its answer is abort, whatever the transaction's outcome.
        let stranger = cluster
            .in_doubt(follower)
            .query_outcome(request(
                pb::QueryOutcomeRequest {
                    txn_id: "known-1".into(),
                    participant: "gamma".into(),
                },
                secs(5),
            ))
            .await
            .expect("QueryOutcome from a stranger")
            .into_inner();
        assert_eq!(stranger.outcome(), pb::Outcome::Aborted, "{stranger:?}");
        assert!(stranger.reason.contains("gamma"), "{stranger:?}");
        let bad = query("bad id!").await;
        expect_status(
            "QueryOutcome with a bad id",
            bad,
            Code::InvalidArgument,
            &["txn_id"],
        );
        cluster.wait_no_pending(secs(15)).await;
        assert_no_violations(&[&alpha, &beta]);
    })
    .await;
}

/// `reply_at_decision` answers once the decision is applied, while a
/// participant still holds its Commit; without it, Execute waits for the
/// acknowledgements (up to the ack wait) so the client reads its writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_at_decision_answers_before_the_acknowledgements() {
    let cluster = Cluster::start(3);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(60), async {
        let leader = cluster.ready_with(&[&alpha, &beta]).await;
        beta.hold_commits();
        let mut req = execute_request("early-answer", &[("alpha", b"a"), ("beta", b"b")], 5000);
        req.reply_at_decision = true;
        let asked = Instant::now();
        let r = cluster
            .execute(leader, req, secs(10))
            .await
            .expect("Execute");
        assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");
        // Without the option this answer could only come when the 1 s ack
        // wait runs out (the Commit is held).
        assert!(
            asked.elapsed() < Duration::from_millis(900),
            "answered after {:?}: it waited for the acknowledgements",
            asked.elapsed()
        );
        // Answered while beta's Commit is still held: nothing committed there.
        let held = beta.record("early-answer").expect("beta prepared");
        assert_eq!(held.state, BranchState::Prepared, "{held:?}");
        // Without the option the answer waits for the acknowledgements
        // (here released while it waits).
        let req = execute_request("late-answer", &[("alpha", b"a"), ("beta", b"b")], 5000);
        let ((r, answered), released) = tokio::join!(
            async { (cluster.execute(leader, req, secs(10)).await, Instant::now()) },
            async {
                beta.wait_for("late-answer", secs(10), "a Commit", |r| r.commits >= 1)
                    .await;
                assert_eq!(
                    beta.state("late-answer"),
                    Some(BranchState::Prepared),
                    "commit held"
                );
                let at = Instant::now();
                beta.release_commits();
                at
            }
        );
        assert_eq!(r.expect("Execute").outcome(), pb::Outcome::Committed);
        assert!(answered >= released, "answered before the acknowledgement");
        assert_eq!(beta.state("late-answer"), Some(BranchState::Committed));
        beta.wait_state("early-answer", BranchState::Committed, secs(10))
            .await;
        cluster.wait_no_pending(secs(15)).await;
        assert_no_violations(&[&alpha, &beta]);
    })
    .await;
}

/// The contract: "UNAVAILABLE ... leadership changed while the transaction
/// ran; retry with the SAME txn_id". A client talking to a surviving
/// follower must get that, not a raw transport error of the forwarded call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_forwarded_to_a_leader_that_dies_answers_unavailable() {
    let mut cluster = Cluster::start(3);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(90), async {
        let leader = cluster.ready_with(&[&alpha, &beta]).await;
        let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
        alpha.hold_prepares();
        let req = execute_request("forwarded-1", &[("alpha", b"a"), ("beta", b"b")], 10_000);
        let mut c = cluster.client(follower);
        let first = tokio::spawn({
            let req = req.clone();
            async move {
                c.execute(request(req, secs(20)))
                    .await
                    .map(tonic::Response::into_inner)
            }
        });
        alpha
            .wait_for("forwarded-1", secs(15), "a Prepare", |r| r.prepares >= 1)
            .await;
        cluster.kill(leader);
        let first = first.await.expect("the Execute task");
        println!("Execute through follower {follower} when leader {leader} died: {first:?}");
        alpha.release_prepares();
        // Whatever the first answer, the retry resolves it.
        let live = cluster.live_ids();
        let r = cluster
            .execute_retrying(&live, req, secs(30))
            .await
            .expect("retry");
        assert_eq!(r.outcome(), pb::Outcome::Aborted, "{r:?}");
        match first {
            Ok(r) => assert_ne!(r.outcome(), pb::Outcome::Committed, "{r:?}"),
            Err(s) => assert_eq!(
                s.code(),
                Code::Unavailable,
                "the surviving follower answered {:?} {:?}, not UNAVAILABLE (retry with the same txn_id)",
                s.code(),
                s.message()
            ),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_limit_refuses_new_work_but_not_decided_transactions() {
    let cluster = Cluster::start_with(3, &["--max-in-flight", "1"]);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(90), async {
        let leader = cluster.ready_with(&[&alpha, &beta]).await;
        let branches: &[(&str, &[u8])] = &[("alpha", b"a"), ("beta", b"b")];
        alpha.hold_prepares();
        let mut c = cluster.client(leader);
        let held = tokio::spawn(async move {
            c.execute(request(
                execute_request("held-1", branches, 10_000),
                secs(20),
            ))
            .await
            .map(tonic::Response::into_inner)
        });
        alpha
            .wait_for("held-1", secs(15), "a Prepare", |r| r.prepares >= 1)
            .await;
        let r = cluster
            .execute(
                leader,
                execute_request("second-1", branches, 5000),
                secs(10),
            )
            .await;
        expect_status(
            "a second transaction over --max-in-flight 1",
            r,
            Code::ResourceExhausted,
            &["in flight"],
        );
        assert!(
            alpha.record("second-1").is_none(),
            "the refused transaction was prepared"
        );
        alpha.release_prepares();
        let r = held.await.unwrap().expect("the held transaction");
        assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");

        // Decided but not yet acknowledged: no longer "in flight".
        beta.fail_commits(true);
        let r = cluster
            .execute_retrying(
                &[leader],
                execute_request("slow-ack-1", branches, 5000),
                secs(20),
            )
            .await
            .expect("slow-ack-1");
        assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");
        assert_eq!(beta.state("slow-ack-1"), Some(BranchState::Prepared));
        let r = cluster
            .execute_retrying(
                &[leader],
                execute_request("next-1", &[("alpha", b"a")], 5000),
                secs(20),
            )
            .await;
        let r = r.expect("a new transaction while another waits only for an acknowledgement");
        assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");
        beta.fail_commits(false);
        beta.wait_state("slow-ack-1", BranchState::Committed, secs(20))
            .await;
        cluster.wait_no_pending(secs(20)).await;
        assert_no_violations(&[&alpha, &beta]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_catches_up_from_a_snapshot_after_the_log_was_purged() {
    // Past the 1000 entries the leader keeps after a snapshot, so the
    // follower can only catch up by a snapshot.
    const BEHIND: u64 = 1100;
    let mut cluster = Cluster::start_with(3, &["--snapshot-every", "50"]);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(150), async {
        let leader = cluster.ready_with(&[&alpha, &beta]).await;
        let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
        let other = cluster.ids().into_iter().find(|id| *id != leader && *id != follower).unwrap();
        cluster.kill(follower);
        let live = cluster.live_ids();
        let started = Instant::now();
        let txns = cluster.grow_log_by(leader, &live, BEHIND).await;
        println!("{txns} transactions with a follower down took {} ms", started.elapsed().as_millis());
        cluster.wait_no_pending(secs(20)).await;
        let before = cluster.status(leader).await.expect("leader status");
        println!("leader before the restart: last_applied {} last_log_index {}", before.last_applied, before.last_log_index);

        let offset = cluster.log_len(follower);
        cluster.restart(follower);
        cluster.wait_caught_up(follower, secs(60)).await;
        let s = cluster.status(follower).await.expect("restarted node status");
        assert!(s.last_applied >= before.last_applied, "{s:?}");
        assert_eq!((s.pending, s.participants.len()), (0, 2), "{s:?}");
        let log = cluster.log_since(follower, offset);
        let snapshot_lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("install") && l.contains("snapshot"))
            .collect();
        println!(
            "restarted node {follower}: last_applied {}; {} log lines about installing a snapshot, e.g. {:?}",
            s.last_applied,
            snapshot_lines.len(),
            snapshot_lines.first().map(|l| &l[..l.len().min(300)])
        );
        assert!(!snapshot_lines.is_empty(), "the node must have caught up by a snapshot");

        // It is a working quorum member: with the other follower down, the
        // leader can only commit through it.
        cluster.kill(other);
        let r = cluster
            .execute_retrying(&[follower], execute_request("after-snapshot", &[("alpha", b"a"), ("beta", b"b")], 5000), secs(30))
            .await
            .expect("commit with the restarted node as the only follower");
        assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");
        alpha.wait_state("after-snapshot", BranchState::Committed, secs(10)).await;
        assert_eq!(alpha.records().len(), txns + 1);
        assert_no_violations(&[&alpha, &beta]);
    })
    .await;
}

/// "Three fresh nodes with the same --peers form a cluster by themselves":
/// also when one of them starts after the other two have elected a leader
/// (as a sequential start script does). Joining must not depose that
/// leader, and a transaction running meanwhile must commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_starting_node_joins_without_deposing_the_leader() {
    let mut cluster = Cluster::prepare(3, &[]);
    cluster.start_node(1);
    cluster.start_node(2);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(90), async {
        let leader = cluster.ready_with(&[&alpha, &beta]).await;
        let term = cluster.status(leader).await.expect("leader status").term;
        alpha.hold_prepares();
        let mut c = cluster.client(leader);
        let running = tokio::spawn(async move {
            let req = execute_request("late-1", &[("alpha", b"a"), ("beta", b"b")], 10_000);
            c.execute(request(req, secs(20)))
                .await
                .map(tonic::Response::into_inner)
        });
        alpha
            .wait_for("late-1", secs(15), "a Prepare", |r| r.prepares >= 1)
            .await;
        cluster.start_node(3);
        cluster.wait_caught_up(3, secs(30)).await;
        alpha.release_prepares();
        let r = running.await.expect("the Execute task");
        let now = cluster.wait_for_stable_leader(secs(20)).await;
        let now_term = cluster.status(now).await.expect("leader status").term;
        println!("leader {leader} term {term} before node 3 started; leader {now} term {now_term} after; late-1: {r:?}");
        assert_eq!(
            (now, now_term),
            (leader, term),
            "starting node 3 deposed leader {leader} (term {term}); late-1 answered {r:?}"
        );
        let r = r.expect("late-1");
        assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");
        assert_no_violations(&[&alpha, &beta]);
    })
    .await;
}

/// Where node `id` serves metrics, from its "metrics listening" log line.
async fn metrics_addr(cluster: &Cluster, id: u64) -> String {
    wait_for_ok(secs(20), "the node to log its metrics address", || {
        let log = cluster.log_since(id, 0);
        let found = log
            .lines()
            .filter(|l| l.contains("metrics listening"))
            .find_map(|l| l.split("addr=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string);
        async move { found.ok_or_else(|| "no metrics line yet".to_string()) }
    })
    .await
}

/// `GET /metrics`, the body.
async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to /metrics");
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The value of the sample `name` (with its labels, as printed), if present.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic() {
    let cluster = Cluster::start_with(3, &["--metrics-listen", "127.0.0.1:0"]);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(90), async {
        let leader = cluster.ready_with(&[&alpha, &beta]).await;
        let addr = metrics_addr(&cluster, leader).await;
        let before = scrape(&addr).await;
        assert_eq!(sample(&before, "dtc_is_leader"), Some(1.0), "{before}");
        assert!(
            sample(&before, "dtc_raft_term").unwrap_or(0.0) >= 1.0,
            "{before}"
        );

        for i in 0..5 {
            let req = execute_request(
                &format!("m-commit-{i}"),
                &[("alpha", b"a"), ("beta", b"b")],
                5000,
            );
            let r = cluster
                .execute_retrying(&[leader], req, secs(20))
                .await
                .expect("Execute");
            assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");
        }
        alpha.set_vote(VoteMode::Abort("no".into()));
        let req = execute_request("m-abort", &[("alpha", b"a"), ("beta", b"b")], 5000);
        let r = cluster
            .execute_retrying(&[leader], req, secs(20))
            .await
            .expect("Execute");
        assert_eq!(r.outcome(), pb::Outcome::Aborted, "{r:?}");
        cluster.wait_no_pending(secs(10)).await;

        let after = scrape(&addr).await;
        let committed =
            |b: &str| sample(b, r#"dtc_transactions_total{outcome="committed"}"#).unwrap_or(0.0);
        let aborted =
            |b: &str| sample(b, r#"dtc_transactions_total{outcome="aborted"}"#).unwrap_or(0.0);
        assert_eq!(committed(&after) - committed(&before), 5.0, "{after}");
        assert_eq!(aborted(&after) - aborted(&before), 1.0, "{after}");
        assert!(
            sample(&after, "dtc_transaction_duration_seconds_count").unwrap_or(0.0) >= 6.0,
            "{after}"
        );
        assert!(
            sample(
                &after,
                r#"dtc_prepare_duration_seconds_count{participant="alpha"}"#
            )
            .unwrap_or(0.0)
                >= 6.0,
            "{after}"
        );
        for phase in ["prepare", "decide", "commit"] {
            let name = format!(r#"dtc_phase_duration_seconds_count{{phase="{phase}"}}"#);
            assert!(
                sample(&after, &name).unwrap_or(0.0) >= 6.0,
                "{phase}: {after}"
            );
        }
        assert_eq!(
            sample(&after, "dtc_pending_transactions"),
            Some(0.0),
            "{after}"
        );
        assert_eq!(sample(&after, "dtc_takeovers_total"), Some(1.0), "{after}");
        let applied = sample(&after, "dtc_raft_applied_index").unwrap_or(0.0);
        assert!(
            applied > sample(&before, "dtc_raft_applied_index").unwrap_or(0.0),
            "{after}"
        );
        assert!(
            sample(&after, "dtc_raft_commit_index").unwrap_or(0.0) >= applied,
            "{after}"
        );

        // A follower exports the same families, not leading.
        let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
        let f = scrape(&metrics_addr(&cluster, follower).await).await;
        assert_eq!(sample(&f, "dtc_is_leader"), Some(0.0), "{f}");
        assert_eq!(
            sample(&f, "dtc_raft_term"),
            sample(&after, "dtc_raft_term"),
            "{f}"
        );
        assert_no_violations(&[&alpha, &beta]);
    })
    .await;
}

/// The `grpc.health.v1` status node `id` reports for the Coordinator service.
async fn coordinator_health(cluster: &Cluster, id: u64) -> Result<i32, String> {
    let channel = dtc_tests::channel_for(cluster.addr(id));
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(request(
            tonic_health::pb::HealthCheckRequest {
                service: "dtc.v1.Coordinator".into(),
            },
            secs(1),
        ))
        .await
        .map(|r| r.into_inner().status)
        .map_err(|s| s.to_string())
}

/// Waits until node `id` reports `want` for the Coordinator service.
async fn expect_health(
    cluster: &Cluster,
    id: u64,
    want: tonic_health::pb::health_check_response::ServingStatus,
) {
    wait_for_ok(
        secs(20),
        &format!("node {id} health {want:?}"),
        || async move {
            match coordinator_health(cluster, id).await {
                Ok(s) if s == want as i32 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_quorum() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut cluster = Cluster::start(3);
    bounded(secs(90), async {
        let leader = cluster.wait_for_stable_leader(secs(30)).await;
        let survivor = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
        for id in cluster.ids() {
            expect_health(&cluster, id, ServingStatus::Serving).await;
        }
        // Alone, a node cannot commit anything: it must say so.
        for id in cluster.ids() {
            if id != survivor {
                cluster.kill(id);
            }
        }
        expect_health(&cluster, survivor, ServingStatus::NotServing).await;
        // With a quorum back, it serves again.
        let back = cluster
            .ids()
            .into_iter()
            .find(|id| *id != survivor)
            .unwrap();
        cluster.restart(back);
        expect_health(&cluster, survivor, ServingStatus::Serving).await;
    })
    .await;
}

/// `docker stop` (SIGTERM) of the leader loses no transaction: the leader
/// stops starting new ones (UNAVAILABLE, so clients go elsewhere), waits for
/// the one it runs to be decided, answers it, and exits 0; the others elect
/// a leader that serves the retried new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_leader_finishes_what_it_runs_and_exits_cleanly() {
    let cluster = Cluster::start(3);
    // The leader's exit is the point of the test, not a crash.
    cluster.expect_crashes(true);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(120), async {
        let leader = cluster.ready_with(&[&alpha, &beta]).await;
        let others: Vec<u64> = cluster
            .ids()
            .into_iter()
            .filter(|id| *id != leader)
            .collect();
        alpha.hold_prepares();
        let in_flight = {
            let mut c = cluster.client(leader);
            let req = execute_request("in-flight", &[("alpha", b"a"), ("beta", b"b")], 20_000);
            tokio::spawn(async move { c.execute(request(req, secs(30))).await })
        };
        alpha
            .wait_for("in-flight", secs(15), "a Prepare", |r| r.prepares >= 1)
            .await;
        let pid = cluster.pid(leader).expect("the leader runs");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");

        // It says so first (health), then refuses new work while it waits
        // for the held transaction.
        wait_for_ok(secs(10), "the leader to say NOT_SERVING", || {
            let channel = dtc_tests::channel_for(cluster.addr(leader));
            async move {
                use tonic_health::pb::health_check_response::ServingStatus;
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let r = health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: "dtc.v1.Coordinator".into(),
                    })
                    .await;
                match r {
                    Ok(r) if r.get_ref().status == ServingStatus::NotServing as i32 => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
        let refused = cluster
            .execute(
                leader,
                execute_request("while-stopping", &[("alpha", b"a")], 5000),
                secs(5),
            )
            .await
            .expect_err("a stopping leader starts no new transaction");
        assert!(refused.message().contains("shutting down"), "{refused:?}");
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(
            alpha.record("while-stopping").is_none(),
            "a refused transaction reached a participant"
        );

        alpha.release_prepares();
        let answer = in_flight
            .await
            .unwrap()
            .expect("the stopping leader answers what it ran")
            .into_inner();
        assert_eq!(answer.outcome(), pb::Outcome::Committed, "{answer:?}");
        let status = cluster.wait_exit(leader, secs(15)).await;
        assert!(status.success(), "the leader exited {status}, not 0");

        // The others take over and serve the refused transaction's retry.
        let r = cluster
            .execute_retrying(
                &others,
                execute_request("while-stopping", &[("alpha", b"a")], 5000),
                secs(30),
            )
            .await
            .expect("the new leader serves the retry");
        assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");
        for p in [&alpha, &beta] {
            p.wait_state("in-flight", BranchState::Committed, secs(15))
                .await;
        }
        assert_no_violations(&[&alpha, &beta]);
    })
    .await;
}

/// A leader whose disk is below its reserve refuses new transactions with
/// RESOURCE_EXHAUSTED naming the disk, before any participant is asked.
/// (A reserve larger than any disk stands in for a full one; the
/// participant's reserve is tested on a real, filling tmpfs in
/// dtc-participant's sdk tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_below_its_disk_reserve_refuses_new_transactions_naming_the_disk() {
    let cluster = Cluster::start_with(3, &["--disk-reserve-mb", "1000000000"]);
    let alpha = TestParticipant::start("alpha").await;
    bounded(secs(60), async {
        let leader = cluster.ready_with(&[&alpha]).await;
        let refused = cluster
            .execute(
                leader,
                execute_request("on-a-full-disk", &[("alpha", b"a")], 5000),
                secs(5),
            )
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert!(
            refused.message().contains("disk nearly full")
                && refused.message().contains(&format!("node-{leader}")),
            "the message names the disk: {refused:?}"
        );
        assert!(alpha.record("on-a-full-disk").is_none());
    })
    .await;
}

/// The Raft port refuses what does not come from a member: another
/// cluster's message, bytes that do not decode, and a well-formed vote
/// request from a node id outside the membership with a much higher term
/// (which, accepted, would make the leader step down). The cluster keeps
/// its leader and term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rogue_and_malformed_raft_messages_are_refused_and_change_nothing() {
    use dtc_tests::v1::raft_transport_client::RaftTransportClient;
    let cluster = Cluster::start(3);
    bounded(secs(60), async {
        let leader = cluster.wait_for_stable_leader(secs(30)).await;
        let term = cluster.status(leader).await.expect("status").term;
        let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
        let mut raft = RaftTransportClient::new(dtc_tests::channel_for(cluster.addr(follower)));
        let msg = |cluster: &str, data: Vec<u8>| pb::RaftMessage {
            cluster: cluster.into(),
            data,
        };
        let rogue_vote = postcard::to_stdvec(&openraft::raft::VoteRequest::<u64> {
            vote: openraft::Vote::new(term + 100, 99),
            last_log_id: None,
        })
        .unwrap();

        let e = raft
            .vote(msg("another", rogue_vote.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        let garbage = vec![0xff; 40];
        let e = raft.vote(msg("dtc", garbage.clone())).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let e = raft
            .append_entries(msg("dtc", garbage.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let e = raft
            .install_snapshot(msg("dtc", garbage))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let e = raft.vote(msg("dtc", rogue_vote)).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("node 99"), "{e:?}");

        let after = cluster.wait_for_stable_leader(secs(10)).await;
        assert_eq!(after, leader, "the leader changed");
        for id in cluster.ids() {
            let s = cluster.status(id).await.expect("status");
            assert_eq!(s.term, term, "node {id}'s term moved");
        }
    })
    .await;
}
