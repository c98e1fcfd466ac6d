//! Operator tools for stuck transactions (docs/operations.md, "Stuck
//! transactions"): `dtc txn show | list --pending|--in-doubt | retry |
//! resolve` against a real three-node cluster, with in-process test
//! participants that hang a prepare or refuse a commit.
//!
//! Each test starts its own cluster, waits on conditions with deadlines
//! (never fixed sleeps), and runs its body under an overall bound.

use dtc_tests::v1 as pb;
use dtc_tests::{
    BranchState, Cluster, TestParticipant, bounded, channel_for, client_for, dtc_bin,
    execute_request, request, secs, wait_for_ok,
};
use pb::coordinator_admin_client::CoordinatorAdminClient;
use serde_json::Value;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::Channel;

fn admin(cluster: &Cluster, id: u64) -> CoordinatorAdminClient<Channel> {
    CoordinatorAdminClient::new(channel_for(cluster.addr(id)))
}

/// Runs `dtc ARGS --coordinators <every node>`; returns (exit code, stdout,
/// stderr).
async fn cli(cluster: &Cluster, args: &[&str]) -> (i32, String, String) {
    let out = tokio::time::timeout(
        secs(40),
        tokio::process::Command::new(dtc_bin())
            .args(args)
            .arg("--coordinators")
            .arg(cluster.addrs_arg())
            .env("DTC_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("dtc {args:?} did not finish in 40 s"))
    .expect("run dtc");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cli` that must exit 0 and print one JSON value.
async fn cli_json(cluster: &Cluster, args: &[&str]) -> Value {
    let (code, out, err) = cli(cluster, args).await;
    assert_eq!(code, 0, "dtc {args:?}: stdout {out} stderr {err}");
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("dtc {args:?} printed invalid JSON ({e}): {out}"))
}

/// `cli` that must fail with `code`, naming every needle on stderr (one line).
async fn cli_fails(cluster: &Cluster, args: &[&str], code: i32, needles: &[&str]) {
    let (got, out, err) = cli(cluster, args).await;
    assert_eq!(got, code, "dtc {args:?}: stdout {out} stderr {err}");
    for n in needles {
        assert!(
            err.contains(n),
            "dtc {args:?}: stderr {err:?} does not mention {n:?}"
        );
    }
}

/// The branch of `participant` in a `txn show --json` object.
fn branch<'a>(v: &'a Value, participant: &str) -> &'a Value {
    v["branches"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["participant"] == participant))
        .unwrap_or_else(|| panic!("no branch {participant} in {v:#}"))
}

fn expect_status<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, tonic::Status>,
    code: Code,
    needle: &str,
) {
    match r {
        Ok(v) => panic!("{what}: expected {code:?}, got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {}", s.message());
            assert!(
                s.message().contains(needle),
                "{what}: {:?} does not mention {needle:?}",
                s.message()
            );
        }
    }
}

fn assert_no_violations(participants: &[&TestParticipant]) {
    for p in participants {
        assert!(
            p.violations().is_empty(),
            "{}: {:?}",
            p.name(),
            p.violations()
        );
    }
}

fn resolve_req(txn_id: &str, abort: bool, reason: &str) -> pb::ResolveTransactionRequest {
    pb::ResolveTransactionRequest {
        txn_id: txn_id.into(),
        abort,
        reason: reason.into(),
        requested_by: "test".into(),
        origin: String::new(),
    }
}

/// Unknown and malformed ids, an empty or multi-line reason, a missing
/// --abort: each gets a clear status (and a non-zero CLI exit), and
/// nothing crashes.
async fn bad_input_is_refused_clearly(cluster: &Cluster, via: u64) {
    let mut a = admin(cluster, via);
    let t = secs(10);
    let show = |id: &str| pb::ShowTransactionRequest { txn_id: id.into() };
    expect_status(
        "show unknown",
        a.show_transaction(request(show("never-ran"), t)).await,
        Code::NotFound,
        "never-ran",
    );
    expect_status(
        "show malformed",
        a.show_transaction(request(show("bad id!"), t)).await,
        Code::InvalidArgument,
        "txn_id",
    );
    let retry = pb::RetryTransactionRequest {
        txn_id: "never-ran".into(),
        wait_ms: 0,
    };
    expect_status(
        "retry unknown",
        a.retry_transaction(request(retry, t)).await,
        Code::NotFound,
        "never-ran",
    );
    let retry = pb::RetryTransactionRequest {
        txn_id: "x".into(),
        wait_ms: 60_000,
    };
    expect_status(
        "retry wait",
        a.retry_transaction(request(retry, t)).await,
        Code::InvalidArgument,
        "wait_ms",
    );
    let r = a
        .resolve_transaction(request(resolve_req("never-ran", true, "why"), t))
        .await;
    expect_status("resolve unknown", r, Code::NotFound, "never-ran");
    let r = a
        .resolve_transaction(request(resolve_req("never-ran", true, "  "), t))
        .await;
    expect_status(
        "resolve blank reason",
        r,
        Code::InvalidArgument,
        "reason is empty",
    );
    let r = a
        .resolve_transaction(request(resolve_req("never-ran", true, "a\nb"), t))
        .await;
    expect_status(
        "resolve two-line reason",
        r,
        Code::InvalidArgument,
        "control character",
    );
    let r = a
        .resolve_transaction(request(resolve_req("never-ran", false, "why"), t))
        .await;
    expect_status(
        "resolve without abort",
        r,
        Code::InvalidArgument,
        "abort must be set",
    );
    let list = pb::ListStuckTransactionsRequest {
        limit: 5000,
        ..Default::default()
    };
    expect_status(
        "list limit",
        a.list_stuck_transactions(request(list, t)).await,
        Code::InvalidArgument,
        "limit",
    );

    cli_fails(
        cluster,
        &["txn", "show", "never-ran"],
        1,
        &["not found", "never-ran"],
    )
    .await;
    cli_fails(
        cluster,
        &["txn", "retry", "never-ran"],
        1,
        &["not found", "never-ran"],
    )
    .await;
    cli_fails(
        cluster,
        &["txn", "resolve", "never-ran", "--abort", "--reason", "r"],
        1,
        &["not found"],
    )
    .await;
    cli_fails(
        cluster,
        &["txn", "show", "bad id!"],
        2,
        &["invalid", "txn_id"],
    )
    .await;
    cli_fails(cluster, &["txn", "retry", "a/b"], 2, &["invalid", "txn_id"]).await;
    cli_fails(
        cluster,
        &["txn", "resolve", "bad id!", "--abort", "--reason", "r"],
        2,
        &["txn_id"],
    )
    .await;
    cli_fails(
        cluster,
        &["txn", "resolve", "x", "--abort", "--reason", " "],
        2,
        &["reason is empty"],
    )
    .await;
    cli_fails(
        cluster,
        &["txn", "resolve", "x", "--reason", "r"],
        2,
        &["--abort"],
    )
    .await;
    cluster.assert_no_crash();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_aborts_an_undecided_transaction_whose_participant_hangs() {
    let mut cluster = Cluster::start(3);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(150), async {
        let leader = cluster.ready_with(&[&alpha, &beta]).await;
        let follower = *cluster.ids().iter().find(|id| **id != leader).unwrap();
        bad_input_is_refused_clearly(&cluster, follower).await;

        // beta hangs in Prepare, and the prepare timeout is ten minutes:
        // only an operator ends this transaction soon.
        beta.hold_prepares();
        let mut client = client_for(cluster.addr(follower));
        let running = tokio::spawn(async move {
            let req = execute_request("hung-1", &[("alpha", b"a"), ("beta", b"b")], 600_000);
            client.execute(request(req, secs(120))).await
        });
        alpha
            .wait_state("hung-1", BranchState::Prepared, secs(15))
            .await;
        beta.wait_for("hung-1", secs(15), "a held Prepare", |r| r.prepares >= 1)
            .await;

        let v = cli_json(&cluster, &["txn", "show", "hung-1", "--json"]).await;
        assert_eq!(v["state"], "preparing", "{v:#}");
        assert_eq!(v["live"], true, "{v:#}");
        assert_eq!(branch(&v, "alpha")["vote"], "prepared", "{v:#}");
        assert_eq!(branch(&v, "beta")["vote"], "-", "{v:#}");
        assert_eq!(branch(&v, "beta")["prepare_attempts"], 1, "{v:#}");
        assert_eq!(v["waiting_for"], serde_json::json!(["beta"]), "{v:#}");

        // In doubt once it has waited past --older-than, with its age.
        let stuck = wait_for_ok(secs(15), "hung-1 to be listed in doubt", || async {
            let v = cli_json(
                &cluster,
                &["txn", "list", "--in-doubt", "--older-than", "0.3", "--json"],
            )
            .await;
            v.as_array()
                .and_then(|l| l.iter().find(|t| t["txn_id"] == "hung-1").cloned())
                .ok_or(v)
        })
        .await;
        assert!(stuck["age_ms"].as_u64().unwrap() >= 300, "{stuck:#}");
        assert_eq!(
            stuck["waiting_for"],
            serde_json::json!(["beta"]),
            "{stuck:#}"
        );
        let v = cli_json(
            &cluster,
            &["txn", "list", "--in-doubt", "--older-than", "600", "--json"],
        )
        .await;
        assert_eq!(v, serde_json::json!([]), "not waiting for 10 minutes yet");
        let (code, out, err) = cli(&cluster, &["txn", "list", "--pending"]).await;
        assert_eq!(code, 0, "{err}");
        println!("dtc txn list --pending:\n{out}");
        assert!(
            out.contains("AGE") && out.contains("hung-1") && out.contains("beta"),
            "{out}"
        );

        // The operator aborts it.
        let reason = "beta hangs; its owner says it never prepared";
        let (code, out, err) = cli(
            &cluster,
            &[
                "txn", "resolve", "hung-1", "--abort", "--reason", reason, "--by", "alice",
            ],
        )
        .await;
        assert_eq!(code, 0, "stdout {out} stderr {err}");
        let recorded = format!("aborted by operator alice (from 127.0.0.1): {reason}");
        assert!(out.contains(&recorded), "{out}");

        // The client waiting on the transaction hears the operator's abort,
        // and phase 2 tells both participants.
        let answer = running
            .await
            .unwrap()
            .expect("Execute answers")
            .into_inner();
        assert_eq!(answer.outcome(), pb::Outcome::Aborted, "{answer:?}");
        assert_eq!(answer.reason, recorded);
        alpha
            .wait_state("hung-1", BranchState::Aborted, secs(15))
            .await;
        beta.wait_for("hung-1", secs(15), "the abort", |r| {
            r.aborts >= 1 && r.state.is_aborted()
        })
        .await;
        beta.release_prepares();
        cluster.wait_no_pending(secs(20)).await;
        assert!(
            beta.state("hung-1").unwrap().is_aborted(),
            "the held Prepare stays aborted"
        );

        // Repeating the same resolution changes nothing; another one is refused
        // naming the decision.
        let (code, out, err) = cli(
            &cluster,
            &[
                "txn", "resolve", "hung-1", "--abort", "--reason", reason, "--by", "alice",
            ],
        )
        .await;
        assert_eq!(code, 0, "stdout {out} stderr {err}");
        assert!(out.contains("already resolved"), "{out}");
        cli_fails(
            &cluster,
            &[
                "txn", "resolve", "hung-1", "--abort", "--reason", "again", "--by", "bob",
            ],
            2,
            &["already decided: aborted (aborted by operator alice"],
        )
        .await;

        // The race: an operator resolves just as the last vote arrives and
        // the driver proposes commit. Whichever decision is applied first
        // stands for the operator, the client, the record and both
        // participants alike.
        let (mut aborted, mut committed) = (0, 0);
        for i in 0..6 {
            let id = format!("race-{i}");
            beta.hold_prepares();
            let mut client = client_for(cluster.addr(follower));
            let req = execute_request(&id, &[("alpha", b"a"), ("beta", b"b")], 600_000);
            let running = tokio::spawn(async move { client.execute(request(req, secs(60))).await });
            alpha.wait_state(&id, BranchState::Prepared, secs(15)).await;
            beta.wait_for(&id, secs(15), "a held Prepare", |r| r.prepares >= 1).await;
            let mut a = admin(&cluster, leader);
            let resolve = a.resolve_transaction(request(resolve_req(&id, true, "race"), secs(10)));
            let (resolved, ()) = tokio::join!(resolve, async { beta.release_prepares() });
            let answer = running.await.unwrap().expect("Execute answers").into_inner();
            let (want, state) = match resolved {
                Ok(r) => {
                    assert!(r.get_ref().recorded_reason.ends_with(": race"), "{r:?}");
                    assert_eq!(answer.reason, r.get_ref().recorded_reason, "{answer:?}");
                    aborted += 1;
                    (BranchState::Aborted, pb::TxnState::Aborted)
                }
                Err(s) => {
                    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
                    assert!(s.message().contains("already decided: committed"), "{s:?}");
                    committed += 1;
                    (BranchState::Committed, pb::TxnState::Committed)
                }
            };
            let expected = if want == BranchState::Committed { pb::Outcome::Committed } else { pb::Outcome::Aborted };
            assert_eq!(answer.outcome(), expected, "{id}: {answer:?}");
            for p in [&alpha, &beta] {
                p.wait_for(&id, secs(15), &format!("{want:?}"), |r| {
                    r.state == want || (want == BranchState::Aborted && r.state.is_aborted())
                })
                .await;
            }
            cluster.wait_txn_state(&id, state, secs(15)).await;
        }
        println!("race of resolve and the last vote: {aborted} aborted by the operator, {committed} committed first");

        // Recorded through Raft: the next leader has the same record.
        cluster.kill(leader);
        let next = cluster.wait_for_leader(secs(30)).await;
        assert_ne!(next, leader);
        let info = cluster
            .wait_txn_state("hung-1", pb::TxnState::Aborted, secs(20))
            .await;
        assert_eq!(info.reason, recorded);
        let v = cli_json(&cluster, &["txn", "show", "hung-1", "--json"]).await;
        assert_eq!(v["state"], "aborted", "{v:#}");
        assert_eq!(v["live"], false, "{v:#}");
        assert_eq!(v["reason"], recorded.as_str(), "{v:#}");
        assert_no_violations(&[&alpha, &beta]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decided_transaction_is_never_resolved_and_retry_finishes_a_stuck_phase_two_at_once() {
    let cluster = Cluster::start(3);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(150), async {
        let leader = cluster.ready_with(&[&alpha, &beta]).await;
        let ids = cluster.ids();

        // Committed and complete: resolve is refused, naming the decision,
        // and nothing changes; retry has nothing to do.
        let r = cluster
            .execute_retrying(
                &ids,
                execute_request("done-1", &[("alpha", b"a"), ("beta", b"b")], 5000),
                secs(30),
            )
            .await
            .expect("Execute");
        assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");
        cluster
            .wait_txn_state("done-1", pb::TxnState::Committed, secs(10))
            .await;
        cli_fails(
            &cluster,
            &[
                "txn", "resolve", "done-1", "--abort", "--reason", "too late",
            ],
            2,
            &["already decided: committed"],
        )
        .await;
        let r = admin(&cluster, leader)
            .resolve_transaction(request(resolve_req("done-1", true, "too late"), secs(10)))
            .await;
        expect_status(
            "resolve committed",
            r,
            Code::FailedPrecondition,
            "already decided: committed",
        );
        let info = cluster.get_txn(leader, "done-1").await.unwrap();
        assert_eq!(info.state(), pb::TxnState::Committed, "{info:?}");
        for p in [&alpha, &beta] {
            let rec = p.record("done-1").unwrap();
            assert_eq!(
                (rec.state, rec.aborts),
                (BranchState::Committed, 0),
                "{}: {rec:?}",
                p.name()
            );
        }
        let (code, out, err) = cli(&cluster, &["txn", "retry", "done-1"]).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("complete; nothing to retry"), "{out}");

        // Decided commit, and beta refuses to acknowledge: still pending,
        // but decided, so resolve is refused just the same.
        beta.fail_commits(true);
        let r = cluster
            .execute_retrying(
                &ids,
                execute_request("ack-1", &[("alpha", b"a"), ("beta", b"b")], 5000),
                secs(30),
            )
            .await
            .expect("Execute");
        assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");
        cli_fails(
            &cluster,
            &[
                "txn",
                "resolve",
                "ack-1",
                "--abort",
                "--reason",
                "beta is down",
            ],
            2,
            &["already decided: committed"],
        )
        .await;

        // Show follows the decision's retries. Wait until they have backed
        // off to their ceiling: the next attempt at least 1.5 s away.
        let mut a = admin(&cluster, leader);
        let (d, seen_at) = wait_for_ok(secs(40), "beta's retries to back off", || {
            let mut a = a.clone();
            async move {
                let d = a
                    .show_transaction(request(
                        pb::ShowTransactionRequest {
                            txn_id: "ack-1".into(),
                        },
                        secs(5),
                    ))
                    .await
                    .map_err(|s| format!("{s:?}"))?
                    .into_inner();
                let b = d
                    .branches
                    .iter()
                    .find(|b| b.participant == "beta")
                    .cloned()
                    .unwrap();
                if b.next_attempt_in_ms >= 1500 {
                    Ok((d, Instant::now()))
                } else {
                    Err(format!("{b:?}"))
                }
            }
        })
        .await;
        assert!(d.live, "{d:?}");
        assert_eq!(
            d.info.as_ref().unwrap().state(),
            pb::TxnState::Committing,
            "{d:?}"
        );
        assert_eq!(d.waiting_for, ["beta"], "{d:?}");
        let by = |name: &str| {
            d.branches
                .iter()
                .find(|b| b.participant == name)
                .unwrap()
                .clone()
        };
        let (alpha_b, beta_b) = (by("alpha"), by("beta"));
        assert_eq!(alpha_b.vote(), pb::SeenVote::Prepared, "{alpha_b:?}");
        assert_eq!(alpha_b.ack(), pb::AckState::Acknowledged, "{alpha_b:?}");
        assert_eq!(beta_b.vote(), pb::SeenVote::Prepared, "{beta_b:?}");
        assert_eq!(beta_b.ack(), pb::AckState::Awaiting, "{beta_b:?}");
        assert!(beta_b.decision_attempts >= 5, "{beta_b:?}");
        assert!(
            beta_b.last_error.contains("failing on purpose"),
            "{beta_b:?}"
        );
        let (code, out, err) = cli(&cluster, &["txn", "show", "ack-1"]).await;
        assert_eq!(code, 0, "{err}");
        println!("dtc txn show ack-1:\n{out}");
        assert!(
            out.contains("awaiting")
                && out.contains("failing on purpose")
                && out.contains("acknowledgement of beta"),
            "{out}"
        );
        let v = cli_json(
            &cluster,
            &["txn", "list", "--in-doubt", "--older-than", "1", "--json"],
        )
        .await;
        let listed = v
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["txn_id"] == "ack-1")
            .cloned();
        assert_eq!(
            listed.map(|t| t["waiting_for"].clone()),
            Some(serde_json::json!(["beta"])),
            "{v:#}"
        );

        // beta is back. Retry sends the decision now, not at the next
        // attempt the back-off scheduled.
        beta.fail_commits(false);
        let (code, out, err) = cli(&cluster, &["txn", "retry", "ack-1"]).await;
        let took = seen_at.elapsed();
        assert_eq!(code, 0, "stdout {out} stderr {err}");
        assert!(out.contains("phase 2 finished"), "{out}");
        assert!(
            took < Duration::from_millis(beta_b.next_attempt_in_ms),
            "retry took {took:?}, the back-off would have sent it {} ms after the show",
            beta_b.next_attempt_in_ms
        );
        assert_eq!(beta.state("ack-1"), Some(BranchState::Committed));
        cluster
            .wait_txn_state("ack-1", pb::TxnState::Committed, secs(10))
            .await;
        let (code, out, _) = cli(&cluster, &["txn", "retry", "ack-1"]).await;
        assert_eq!(code, 0);
        assert!(out.contains("nothing to retry"), "{out}");
        a = admin(&cluster, leader);
        let d = a
            .show_transaction(request(
                pb::ShowTransactionRequest {
                    txn_id: "ack-1".into(),
                },
                secs(5),
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(d.waiting_for.is_empty(), "{d:?}");
        assert_no_violations(&[&alpha, &beta]);
    })
    .await;
}
