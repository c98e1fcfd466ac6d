//! Membership changes on real processes (docs/design.md §5b,
//! docs/operations.md "Membership"): `dtc cluster add | remove | replace`
//! run as the operator runs them, against coordinator processes that are
//! SIGKILLed and whose data directories are deleted.
//!
//! Every wait is a condition with a deadline; each test body runs under an
//! overall bound so a hang fails with the nodes' logs.

use dtc_tests::bank::{Bank, BankOptions};
use dtc_tests::testbed::{Testbed, TestbedOptions};
use dtc_tests::v1 as pb;
use dtc_tests::{
    Cluster, TestParticipant, bounded, checker, execute_request, free_port, run_dtc, secs,
    wait_for_ok,
};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use tonic::Code;

/// `dtc cluster ARGS --coordinators COORDS`: exit code and output.
fn dtc_cluster(args: &[&str], coordinators: &str) -> (i32, String) {
    let mut all = vec!["cluster"];
    all.extend_from_slice(args);
    all.extend(["--coordinators", coordinators]);
    let (status, out) = run_dtc(&all, secs(180));
    let code = status.code().unwrap_or_else(|| {
        panic!(
            "dtc {all:?} died: {status:?} ({:?})\n{out}",
            status.signal()
        )
    });
    (code, out)
}

/// A hand-made Vote request from node `from` in `term`, as any member
/// would send it, to the node at `to`.
async fn vote_from(to: SocketAddr, from: u64, term: u64) -> Result<(), tonic::Status> {
    use pb::raft_transport_client::RaftTransportClient;
    let data = postcard::to_stdvec(&openraft::raft::VoteRequest::<u64> {
        vote: openraft::Vote::new(term, from),
        last_log_id: None,
    })
    .unwrap();
    RaftTransportClient::new(dtc_tests::channel_for(to))
        .vote(pb::RaftMessage {
            cluster: "dtc".into(),
            data,
        })
        .await
        .map(|_| ())
}

/// Voters and learners as node `id` sees them.
async fn membership(cluster: &Cluster, id: u64) -> Option<(BTreeSet<u64>, BTreeSet<u64>)> {
    let s = cluster.status(id).await?;
    let voters = s.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    let learners = s
        .members
        .iter()
        .filter(|m| !m.voter)
        .map(|m| m.id)
        .collect();
    Some((voters, learners))
}

/// Waits until the leader's membership has exactly `voters` and no learner,
/// with node `id` at `addr`.
async fn wait_voters(cluster: &Cluster, voters: &[u64], id: u64, addr: SocketAddr) {
    let want: BTreeSet<u64> = voters.iter().copied().collect();
    wait_for_ok(secs(30), format_args!("voters {want:?}"), || async {
        let leader = cluster.leader().await.ok_or("no leader")?;
        let s = cluster.status(leader).await.ok_or("no status")?;
        let got: BTreeSet<u64> = s.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
        let at = s
            .members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.addr.clone());
        if got == want && s.members.len() == want.len() && at == Some(addr.to_string()) {
            Ok(())
        } else {
            Err(format!("leader {leader} has {:?}", s.members))
        }
    })
    .await
}

async fn commit(cluster: &Cluster, via: &[u64], id: &str) {
    let req = execute_request(id, &[("alpha", b"a"), ("beta", b"b")], 5000);
    let r = cluster
        .execute_retrying(via, req, secs(30))
        .await
        .unwrap_or_else(|s| panic!("{id}: {s:?}"));
    assert_eq!(r.outcome(), pb::Outcome::Committed, "{id}: {r:?}");
}

/// A fourth node started with `--join` waits (and refuses to vote) until
/// `dtc cluster add` takes it in through a follower; it catches up and
/// becomes a voter. A removed follower's Raft messages are then refused by
/// the members, and with the leader killed the two remaining voters, the
/// new node among them, elect a leader and commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_is_added_and_votes_and_a_removed_node_is_refused() {
    let mut cluster = Cluster::start(3);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(240), async {
        let leader = cluster.wait_for_stable_leader(secs(30)).await;
        cluster.register(&alpha, secs(15)).await;
        cluster.register(&beta, secs(15)).await;
        commit(&cluster, &[1, 2, 3], "before-add").await;

        let addr4 = cluster.add_joining_node(4);
        let s4 = wait_for_ok(secs(20), "node 4 to answer", || async {
            cluster.status(4).await.ok_or("no answer")
        })
        .await;
        assert!(s4.awaiting_admission, "{s4:?}");
        assert!(
            s4.members.is_empty(),
            "a --join node formed a cluster: {s4:?}"
        );
        // Not admitted: it refuses to vote, even for a member.
        let e = vote_from(addr4, leader, s4.term + 1).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("does not vote"), "{e:?}");

        let follower = cluster
            .ids()
            .into_iter()
            .find(|id| *id != leader && *id != 4)
            .unwrap();
        let via = cluster.addr(follower).to_string();
        let (code, out) = dtc_cluster(&["add", "--id", "4", "--addr", &addr4.to_string()], &via);
        assert_eq!(code, 0, "{out}");
        for needle in [
            "added node 4 at",
            "as a learner",
            "node 4 caught up",
            "promoted node 4 to voter by joint consensus",
        ] {
            assert!(out.contains(needle), "no {needle:?} in:\n{out}");
        }
        wait_voters(&cluster, &[1, 2, 3, 4], 4, addr4).await;
        let s4 = cluster.status(4).await.expect("node 4 answers");
        assert!(!s4.awaiting_admission, "{s4:?}");
        // Repeating the call is harmless.
        let (code, out) = dtc_cluster(&["add", "--id", "4", "--addr", &addr4.to_string()], &via);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("already a voter"), "{out}");
        commit(&cluster, &[4], "via-node-4").await;

        // Remove a follower of the original three; before that, members
        // take its messages.
        let gone = cluster
            .ids()
            .into_iter()
            .find(|id| *id != leader && *id != 4)
            .unwrap();
        let stays = cluster
            .ids()
            .into_iter()
            .find(|id| ![leader, gone, 4].contains(id))
            .unwrap();
        let term = cluster.status(leader).await.expect("status").term;
        vote_from(cluster.addr(stays), gone, term)
            .await
            .expect("a member's vote request is taken before its removal");
        let (code, out) = dtc_cluster(
            &["remove", "--id", &gone.to_string()],
            &cluster.addr(leader).to_string(),
        );
        assert_eq!(code, 0, "{out}");
        assert!(out.contains(&format!("removed node {gone}")), "{out}");
        wait_for_ok(secs(10), "the removal to reach every member", || async {
            for member in [leader, stays, 4] {
                let m = membership(&cluster, member)
                    .await
                    .ok_or(format!("node {member}: no answer"))?;
                if m.0.contains(&gone) || m.1.contains(&gone) {
                    return Err(format!("node {member}: {m:?}"));
                }
            }
            Ok(())
        })
        .await;
        for member in [leader, stays, 4] {
            let e = vote_from(cluster.addr(member), gone, term)
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied, "node {member}: {e:?}");
            assert!(e.message().contains("not a member"), "{e:?}");
        }
        cluster.kill(gone);
        commit(&cluster, &[leader, stays, 4], "after-remove").await;

        // Voters now {leader, stays, 4}: without the leader, a new one
        // needs node 4's vote.
        cluster.kill(leader);
        let new_leader = cluster.wait_for_leader(secs(30)).await;
        assert!([stays, 4].contains(&new_leader), "{new_leader}");
        commit(&cluster, &[stays, 4], "after-leader-kill").await;
        for p in [&alpha, &beta] {
            assert!(p.violations().is_empty(), "{:?}", p.violations());
        }
    })
    .await;
}

/// Bad input and unsafe changes are refused with a clear message and a
/// non-zero exit; removing a dead node while the others answer works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_and_malformed_membership_changes_are_refused() {
    let mut cluster = Cluster::start(3);
    bounded(secs(180), async {
        let leader = cluster.wait_for_stable_leader(secs(30)).await;
        let coords = cluster.addrs_arg();
        let nobody = format!("127.0.0.1:{}", free_port());
        let addrs: std::collections::BTreeMap<u64, String> = cluster
            .ids()
            .into_iter()
            .map(|id| (id, cluster.addr(id).to_string()))
            .collect();
        let addr = |id: u64| addrs[&id].clone();
        let cases: Vec<(Vec<String>, i32, &str)> = vec![
            (
                vec!["remove".into(), "--id".into(), "9".into()],
                2,
                "node 9 is not a member",
            ),
            (
                vec![
                    "add".into(),
                    "--id".into(),
                    "4".into(),
                    "--addr".into(),
                    "nonsense".into(),
                ],
                2,
                "is not HOST:PORT",
            ),
            (
                vec![
                    "add".into(),
                    "--id".into(),
                    "2".into(),
                    "--addr".into(),
                    nobody.clone(),
                ],
                2,
                "node 2 is already a voter at",
            ),
            (
                vec![
                    "add".into(),
                    "--id".into(),
                    "4".into(),
                    "--addr".into(),
                    addr(1),
                ],
                2,
                "is node 1's address",
            ),
            (
                vec![
                    "add".into(),
                    "--id".into(),
                    "4".into(),
                    "--addr".into(),
                    nobody.clone(),
                ],
                2,
                "nothing answers at",
            ),
            (
                vec![
                    "replace".into(),
                    "--id".into(),
                    "2".into(),
                    "--addr".into(),
                    addr(2),
                ],
                2,
                "runs with its data",
            ),
            (
                vec![
                    "replace".into(),
                    "--id".into(),
                    "7".into(),
                    "--addr".into(),
                    nobody.clone(),
                ],
                2,
                "node 7 is not a member",
            ),
        ];
        for (args, want, needle) in cases {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, out) = dtc_cluster(&args, &coords);
            assert_eq!(code, want, "dtc cluster {args:?}:\n{out}");
            assert!(
                out.contains(needle),
                "dtc cluster {args:?}: no {needle:?} in:\n{out}"
            );
        }
        // The RPC itself names a bad address.
        let mut admin = pb::coordinator_admin_client::CoordinatorAdminClient::new(
            dtc_tests::channel_for(cluster.addr(leader)),
        );
        let e = admin
            .add_member(pb::AddMemberRequest {
                id: 4,
                addr: "host-without-port".into(),
                catch_up_wait_ms: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("HOST:PORT"), "{e:?}");

        // A follower down: removing the other follower would leave one
        // answering voter of two.
        let followers: Vec<u64> = cluster
            .ids()
            .into_iter()
            .filter(|id| *id != leader)
            .collect();
        let (dead, alive) = (followers[0], followers[1]);
        cluster.kill(dead);
        let (code, out) = dtc_cluster(&["remove", "--id", &alive.to_string()], &addr(leader));
        assert_eq!(code, 2, "{out}");
        assert!(out.contains("lose the quorum"), "{out}");
        // The dead one can go: the two that answer are a majority of both.
        let (code, out) = dtc_cluster(&["remove", "--id", &dead.to_string()], &addr(alive));
        assert_eq!(code, 0, "{out}");
        wait_for_ok(secs(10), "the leader to apply the removal", || async {
            let (voters, _) = membership(&cluster, leader).await.ok_or("no answer")?;
            (voters == BTreeSet::from([leader, alive]))
                .then_some(())
                .ok_or(format!("{voters:?}"))
        })
        .await;
        // The leader may remove itself: the answer still comes, and the
        // one voter left leads.
        let (code, out) = dtc_cluster(&["remove", "--id", &leader.to_string()], &addr(alive));
        assert_eq!(code, 0, "{out}");
        assert!(out.contains(&format!("removed node {leader}")), "{out}");
        let next = wait_for_ok(secs(30), "the remaining voter to lead", || async {
            let s = cluster.status(alive).await.ok_or("no answer".to_string())?;
            if s.role == "leader" {
                Ok(s)
            } else {
                Err(format!("{} term {}", s.role, s.term))
            }
        })
        .await;
        let voters: BTreeSet<u64> = next
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect();
        assert_eq!(voters, BTreeSet::from([alive]));

        // Start-up flags: --join excludes --peers; a wildcard needs --advertise.
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().display().to_string();
        let (status, out) = run_dtc(
            &[
                "coordinator",
                "--id",
                "5",
                "--listen",
                &nobody,
                "--data-dir",
                &data,
                "--join",
                &addr(leader),
                "--peers",
                &format!("5={nobody}"),
            ],
            secs(20),
        );
        assert_eq!(status.code(), Some(2), "{out}");
        assert!(out.contains("cannot be used with"), "{out}");
        let (status, out) = run_dtc(
            &[
                "coordinator",
                "--id",
                "5",
                "--listen",
                "0.0.0.0:0",
                "--data-dir",
                &data,
                "--join",
                &addr(leader),
            ],
            secs(20),
        );
        assert_eq!(status.code(), Some(2), "{out}");
        assert!(out.contains("--advertise"), "{out}");
    })
    .await;
}

/// An add that runs out of time while the new node still catches up (its
/// snapshot install is slowed by 4 s with a fail point's `sleep` action)
/// stops at a safe point: exit 1, the node a learner that counts for
/// nothing, the step saying to run the command again. Run again, it
/// continues from the learner and promotes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_that_runs_out_of_time_leaves_a_learner_and_continues_when_run_again() {
    let mut cluster = Cluster::start_with(3, &["--snapshot-every", "40"]);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(240), async {
        let leader = cluster.wait_for_stable_leader(secs(30)).await;
        cluster.register(&alpha, secs(15)).await;
        cluster.register(&beta, secs(15)).await;
        // Past the 1000 entries a snapshot keeps: a new node needs the snapshot.
        cluster.grow_log_by(leader, &[leader], 1300).await;
        let addr4 = cluster
            .add_joining_node_with_env(4, &[("FAILPOINTS", "store.snapshot.install=sleep(4000)")]);
        wait_for_ok(secs(20), "node 4 to answer", || async {
            cluster.status(4).await.ok_or("no answer")
        })
        .await;
        let coords = cluster.addrs_arg();
        let add = [
            "add",
            "--id",
            "4",
            "--addr",
            &addr4.to_string(),
            "--catch-up-secs",
            "1",
        ];
        let (code, out) = dtc_cluster(&add, &coords);
        assert_eq!(code, 1, "{out}");
        for needle in [
            "added node 4",
            "as a learner",
            "node 4 has not caught up",
            "run the same command again",
        ] {
            assert!(out.contains(needle), "no {needle:?} in:\n{out}");
        }
        let (voters, learners) = membership(&cluster, leader).await.expect("status");
        assert_eq!(voters, BTreeSet::from([1, 2, 3]));
        assert_eq!(learners, BTreeSet::from([4]));

        let add = ["add", "--id", "4", "--addr", &addr4.to_string()];
        let (code, out) = dtc_cluster(&add, &coords);
        assert_eq!(code, 0, "{out}");
        for needle in [
            "node 4 is already a learner",
            "node 4 caught up by snapshot",
            "promoted node 4 to voter",
        ] {
            assert!(out.contains(needle), "no {needle:?} in:\n{out}");
        }
        wait_voters(&cluster, &[1, 2, 3, 4], 4, addr4).await;
        commit(&cluster, &[4], "after").await;
    })
    .await;
}

/// Where a node cannot start with `--join` (one pod template for all):
/// the dead node is removed first, comes back empty with its usual
/// `--peers`, finds the cluster formed and waits as a non-member (members
/// refuse its votes), and `dtc cluster add` takes it back in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_removed_then_restarted_empty_with_peers_is_added_back() {
    let mut cluster = Cluster::start(3);
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    bounded(secs(180), async {
        let leader = cluster.wait_for_stable_leader(secs(30)).await;
        cluster.register(&alpha, secs(15)).await;
        cluster.register(&beta, secs(15)).await;
        commit(&cluster, &[leader], "before").await;
        let lost = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
        cluster.kill(lost);
        let (code, out) = dtc_cluster(
            &["remove", "--id", &lost.to_string()],
            &cluster.addr(leader).to_string(),
        );
        assert_eq!(code, 0, "{out}");
        commit(&cluster, &[leader], "while-removed").await;
        let dir = cluster.root().join(format!("node-{lost}"));
        std::fs::remove_dir_all(&dir).unwrap();
        cluster.restart(lost);
        let s = wait_for_ok(secs(20), "the empty node to answer", || async {
            cluster.status(lost).await.ok_or("no answer")
        })
        .await;
        assert!(s.members.is_empty() && s.last_applied == 0, "{s:?}");
        // The members have applied the removal: the old id's votes are refused.
        let term = cluster.status(leader).await.expect("status").term;
        let e = wait_for_ok(
            secs(10),
            "the removed node's vote to be refused",
            || async {
                match vote_from(cluster.addr(leader), lost, term).await {
                    Err(e) if e.code() == Code::PermissionDenied => Ok(e),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
        assert!(e.message().contains("not a member"), "{e:?}");

        let addr = cluster.addr(lost);
        let (code, out) = dtc_cluster(
            &[
                "add",
                "--id",
                &lost.to_string(),
                "--addr",
                &addr.to_string(),
            ],
            &cluster.addrs_arg(),
        );
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains(&format!("promoted node {lost} to voter")),
            "{out}"
        );
        wait_voters(&cluster, &[1, 2, 3], lost, addr).await;
        cluster.wait_caught_up(lost, secs(30)).await;
        commit(&cluster, &[lost], "after").await;
    })
    .await;
}

/// A follower loses its disk under load: SIGKILL, data directory deleted,
/// started EMPTY with `--join` on a new port; `dtc cluster replace` removes
/// the old voter, adds the empty node as a learner, which catches up by
/// snapshot, and promotes it. With the leader then killed, the replaced
/// node's vote elects the next leader. Transfers run throughout; at the end
/// money is conserved and every transaction has one outcome everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_disk_is_replaced_and_votes_again_under_load() {
    let mut tb = Testbed::start(TestbedOptions {
        coordinator_args: vec!["--snapshot-every".into(), "40".into()],
        ..TestbedOptions::default()
    })
    .await;
    let bank = Bank::seed(&tb, BankOptions::default()).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let nodes = tb
        .cluster
        .ids()
        .into_iter()
        .map(|id| (id, tb.cluster.addr(id)))
        .collect();
    let observer = bank.spawn_observer(nodes, &stop_rx);
    let clients = bank.spawn_clients(&tb.client, 8, &stop_rx);
    bounded(secs(300), async {
        let leader = tb.cluster.wait_for_leader(secs(30)).await;
        // Enough entries that the leader has purged the start of its log
        // (it keeps 1000 entries behind its latest snapshot): an empty
        // node can then only catch up by snapshot.
        wait_for_ok(
            secs(120),
            "the leader's log to pass 1500 entries",
            || async {
                let s = tb
                    .cluster
                    .status(leader)
                    .await
                    .ok_or("no status".to_string())?;
                (s.last_applied > 1500)
                    .then_some(())
                    .ok_or(format!("applied {}", s.last_applied))
            },
        )
        .await;
        let lost = tb
            .cluster
            .ids()
            .into_iter()
            .find(|id| *id != leader)
            .unwrap();
        tb.timeline.push(format!("node {lost} loses its disk"));
        let addr = tb.cluster.replace_node(lost);
        let s = wait_for_ok(secs(20), "the empty node to answer", || async {
            tb.cluster.status(lost).await.ok_or("no answer")
        })
        .await;
        assert!(s.awaiting_admission && s.members.is_empty(), "{s:?}");

        let coords = tb.cluster.addrs_arg();
        let (code, out) = dtc_cluster(
            &[
                "replace",
                "--id",
                &lost.to_string(),
                "--addr",
                &addr.to_string(),
            ],
            &coords,
        );
        tb.timeline
            .push(format!("dtc cluster replace: exit {code}\n{out}"));
        assert_eq!(code, 0, "{out}");
        for needle in [
            format!("removed node {lost}"),
            format!("added node {lost} at {addr} as a learner"),
            format!("node {lost} caught up by snapshot"),
            format!("promoted node {lost} to voter"),
        ] {
            assert!(out.contains(&needle), "no {needle:?} in:\n{out}");
        }
        let order: Vec<usize> = ["removed node", "as a learner", "promoted node"]
            .iter()
            .map(|n| out.find(n).unwrap())
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "steps out of order:\n{out}"
        );
        wait_voters(&tb.cluster, &[1, 2, 3], lost, addr).await;
        tb.cluster.wait_caught_up(lost, secs(30)).await;
        let s = tb.cluster.status(lost).await.expect("status");
        assert!(!s.awaiting_admission, "{s:?}");

        // Without the leader, the other original node needs the replaced
        // node's vote.
        let current = tb.cluster.wait_for_leader(secs(30)).await;
        tb.timeline.push(format!("SIGKILL leader {current}"));
        tb.cluster.kill(current);
        let next = wait_for_ok(secs(30), "a new leader", || async {
            let l = tb.cluster.leader().await.ok_or("none")?;
            (l != current).then_some(l).ok_or("the old one")
        })
        .await;
        tb.timeline.push(format!("new leader {next}"));
        // Transfers commit again.
        let before = bank.history.ops().len();
        wait_for_ok(
            secs(30),
            "transfers to commit without the old leader",
            || async {
                let committed = bank.history.ops()[before..]
                    .iter()
                    .filter(|o| o.result == dtc_tests::bank::OpResult::Committed)
                    .count();
                (committed >= 5).then_some(()).ok_or(committed)
            },
        )
        .await;
    })
    .await;
    stop_tx.send(true).unwrap();
    for c in clients {
        c.await.unwrap();
    }
    observer.await.unwrap();
    tb.heal_all();
    tb.wait_quiescent(secs(90)).await.expect("quiescent");
    let fin = checker::collect(&tb, &bank).await.expect("final state");
    let (anomalies, _) = checker::check(&bank.history, bank.total, &fin);
    assert!(anomalies.is_empty(), "{anomalies:?}");
    let committed = bank
        .history
        .ops()
        .iter()
        .filter(|o| o.result == dtc_tests::bank::OpResult::Committed)
        .count();
    assert!(committed > 20, "only {committed} operations committed");
}
