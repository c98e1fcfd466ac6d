//! Bounded resources on real coordinator processes: past each bound a call
//! is refused at once with RESOURCE_EXHAUSTED naming the flag, instead of
//! being queued (docs/design.md §7, "Bounds").
//!
//! The resident-memory test of a loaded cluster is in `memory.rs`.

use dtc_tests::v1 as pb;
use dtc_tests::{
    BranchState, Cluster, ClusterOptions, TestParticipant, bounded, execute_request, request, secs,
    wait_until,
};
use tonic::Code;

fn expect_exhausted<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>, needle: &str) {
    let status = match r {
        Ok(v) => panic!("{what}: expected RESOURCE_EXHAUSTED, got a success: {v:?}"),
        Err(s) => s,
    };
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{what}: {}",
        status.message()
    );
    assert!(
        status.message().contains(needle),
        "{what}: message {:?} does not name {needle:?}",
        status.message()
    );
}

/// A participant that never acknowledges makes decided transactions pile
/// up on the leader, each a driver retrying its decision; `--max-pending`
/// bounds them, and once the participant acknowledges new work is taken
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_past_the_pending_bound_are_refused_while_a_participant_does_not_acknowledge()
{
    let cluster = Cluster::start_with(3, &["--max-in-flight", "1", "--max-pending", "2"]);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(90), async {
        let leader = cluster.wait_for_stable_leader(secs(30)).await;
        cluster.register(&alpha, secs(15)).await;
        cluster.register(&beta, secs(15)).await;
        let branches: &[(&str, &[u8])] = &[("alpha", b"a"), ("beta", b"b")];
        beta.fail_commits(true);
        for id in ["stuck-1", "stuck-2"] {
            let r = cluster
                .execute_retrying(&[leader], execute_request(id, branches, 5000), secs(20))
                .await
                .expect(id);
            assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");
            assert_eq!(beta.state(id), Some(BranchState::Prepared), "{id}");
        }
        let r = cluster
            .execute(leader, execute_request("third-1", branches, 5000), secs(10))
            .await;
        expect_exhausted(
            "a third transaction over --max-pending 2",
            r,
            "--max-pending",
        );
        assert!(
            alpha.record("third-1").is_none(),
            "the refused transaction was prepared"
        );
        // Acknowledged at last: the pile drains and new work is accepted.
        beta.fail_commits(false);
        cluster.wait_no_pending(secs(30)).await;
        let r = cluster
            .execute_retrying(
                &[leader],
                execute_request("third-1", branches, 5000),
                secs(20),
            )
            .await
            .expect("third-1 once the pile drained");
        assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");
    })
    .await;
}

/// A follower forwarding to a leader that does not answer (SIGSTOPped)
/// holds at most `--max-forwarded` calls; a leader that cannot commit
/// (its followers SIGSTOPped) answers at most `--max-outcome-queries`
/// outcome queries at once. Past each, RESOURCE_EXHAUSTED at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_calls_and_outcome_queries_past_their_bounds_are_refused() {
    let mut options = ClusterOptions::new(3);
    options.extra_args = ["--max-forwarded", "1", "--max-outcome-queries", "1"]
        .map(String::from)
        .to_vec();
    // Long election timeouts: the followers keep believing in a paused
    // leader for the whole check (no election moves the calls elsewhere).
    options.heartbeat_ms = 100;
    options.election_timeout_ms = (8_000, 10_000);
    let cluster = Cluster::with_options(options);
    let alpha = TestParticipant::start("alpha").await;
    bounded(secs(120), async {
        let leader = cluster.wait_for_stable_leader(secs(60)).await;
        cluster.register(&alpha, secs(15)).await;
        let followers: Vec<u64> = cluster.ids().into_iter().filter(|i| *i != leader).collect();
        let via = followers[0];

        // Forwarded calls: the leader is paused, so a forwarded call hangs
        // (until its 3 s deadline). Four at once: one is forwarded, the
        // others are refused.
        cluster.pause(leader);
        let calls = (0..4).map(|n| {
            let mut c = cluster.client(via);
            let req = execute_request(&format!("fwd-{n}"), &[("alpha", b"a")], 5000);
            async move { c.execute(request(req, secs(3))).await }
        });
        let answers = futures::future::join_all(calls).await;
        cluster.resume(leader);
        let refused: Vec<_> = answers
            .into_iter()
            .filter_map(|r| r.err())
            .filter(|s| s.code() == Code::ResourceExhausted)
            .collect();
        assert!(
            !refused.is_empty(),
            "no call was refused past --max-forwarded 1"
        );
        expect_exhausted::<()>(
            "a forwarded call",
            Err(refused[0].clone()),
            "--max-forwarded",
        );

        // Outcome queries: the followers are paused, so the presumed abort
        // of an unknown id cannot commit and the query holds.
        let leader = cluster.wait_for_stable_leader(secs(30)).await;
        let followers: Vec<u64> = cluster.ids().into_iter().filter(|i| *i != leader).collect();
        for f in &followers {
            cluster.pause(*f);
        }
        let queries = (0..4).map(|n| {
            let mut c = cluster.in_doubt(leader);
            let req = pb::QueryOutcomeRequest {
                txn_id: format!("query-{n}"),
                participant: "alpha".into(),
            };
            async move { c.query_outcome(request(req, secs(3))).await }
        });
        let answers = futures::future::join_all(queries).await;
        for f in &followers {
            cluster.resume(*f);
        }
        let refused: Vec<_> = answers
            .iter()
            .filter_map(|r| r.as_ref().err())
            .filter(|s| s.code() == Code::ResourceExhausted)
            .cloned()
            .collect();
        assert!(
            !refused.is_empty(),
            "no query was refused past --max-outcome-queries 1: {answers:?}"
        );
        expect_exhausted::<()>(
            "an outcome query",
            Err(refused[0].clone()),
            "--max-outcome-queries",
        );
        // Once the leader can commit again, queries are answered: the
        // presumed abort.
        let r = wait_until(secs(20), "an answer to an outcome query", || {
            let mut c = cluster.in_doubt(leader);
            let req = pb::QueryOutcomeRequest {
                txn_id: "query-0".into(),
                participant: "alpha".into(),
            };
            async move { c.query_outcome(request(req, secs(3))).await.ok() }
        })
        .await
        .into_inner();
        assert_eq!(r.outcome(), pb::Outcome::Aborted, "{r:?}");
    })
    .await;
}
