//! Network partitions through the harness's per-link proxies (docs/testing.md):
//! every coordinator dials its peers through `--peer-addr-override` proxy
//! addresses, and every participant registers its proxy endpoint. Each test
//! cuts links, checks what must (and must not) happen during the cut, heals,
//! and runs the bank checker.

use dtc_tests::bank::{Bank, BankOptions, Op, OpKind, OpResult, transfer_branches};
use dtc_tests::checker::Anomalies;
use dtc_tests::nemesis::check_and_report;
use dtc_tests::net::LinkMode;
use dtc_tests::testbed::{Testbed, TestbedOptions};
use dtc_tests::{bounded, execute_request, request, secs, wait_for_ok};
use std::time::{Duration, Instant};

async fn proxied_testbed() -> (Testbed, Bank) {
    let tb = Testbed::start(TestbedOptions {
        proxied: true,
        ..Default::default()
    })
    .await;
    let bank = Bank::seed(
        &tb,
        BankOptions {
            accounts_per_ledger: 2,
            clients: 0,
            ..Default::default()
        },
    )
    .await;
    (tb, bank)
}

/// Waits until a node other than `old` leads in a term above `term`;
/// returns it.
async fn wait_new_leader(tb: &Testbed, old: u64, term: u64, within: Duration) -> u64 {
    wait_for_ok(
        within,
        format_args!("a leader other than {old}"),
        || async {
            let statuses = tb.cluster.statuses().await;
            statuses
                .values()
                .find(|s| s.node_id != old && s.role == "leader" && s.term > term)
                .map(|s| s.node_id)
                .ok_or_else(|| {
                    statuses
                        .values()
                        .map(|s| format!("{}: {} t{}", s.node_id, s.role, s.term))
                        .collect::<Vec<_>>()
                })
        },
    )
    .await
}

/// The leader, cut from both followers (black hole: its packets vanish),
/// cannot decide anything: a request sent straight to it gets no outcome.
/// The followers elect a new leader that serves clients. After healing the
/// old leader steps down and everything agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_is_replaced_and_decides_nothing() {
    let started = Instant::now();
    let (mut tb, bank) = proxied_testbed().await;
    bounded(secs(150), async {
        let old = tb.cluster.wait_for_stable_leader(secs(30)).await;
        let term = tb.cluster.status(old).await.expect("leader status").term;
        let mesh = tb.cluster.mesh().expect("proxied").clone();
        for ((from, to), link) in mesh.links() {
            assert!(
                link.accepted() > 0 || *from != old,
                "no traffic went through the proxy {from} -> {to}: --peer-addr-override unused?"
            );
        }
        mesh.isolate(old, LinkMode::Blackhole);
        tb.timeline
            .push(format!("isolated leader coordinator-{old} (blackhole)"));

        // Straight to the isolated leader: it may accept the request but
        // can commit nothing, so no outcome may come back.
        let from = bank.account("bank-0", "acct-0");
        let to = bank.account("bank-1", "acct-0");
        let index = bank.history.begin(Op {
            id: "to-old-leader".into(),
            kind: OpKind::Transfer,
            client: usize::MAX,
            branches: transfer_branches(&from, &to, 5),
            start_ms: bank.history.now_ms(),
            end_ms: 0,
            result: OpResult::Running,
        });
        let payloads = transfer_branches(&from, &to, 5)
            .into_iter()
            .map(|b| {
                let entries: Vec<(&str, i64)> =
                    b.entries.iter().map(|(a, d)| (a.as_str(), *d)).collect();
                (b.participant, dtc_ledger::payload(&entries))
            })
            .collect::<Vec<_>>();
        let branches: Vec<(&str, &[u8])> = payloads
            .iter()
            .map(|(p, x)| (p.as_str(), x.as_slice()))
            .collect();
        let mut direct = tb.cluster.client(old);
        let r = direct
            .execute(request(
                execute_request("to-old-leader", &branches, 2000),
                secs(4),
            ))
            .await;
        assert!(
            r.is_err(),
            "the isolated leader answered an outcome: {:?}",
            r.map(|x| x.into_inner())
        );
        let status = r.unwrap_err();
        bank.history.finish(
            index,
            OpResult::Unknown {
                error: format!("{}: {}", status.code(), status.message()),
            },
        );

        let new = wait_new_leader(&tb, old, term, secs(20)).await;
        tb.timeline.push(format!(
            "coordinator-{new} leads the majority side; the isolated node answered {:?}",
            status.code()
        ));
        // The majority side serves clients (the SDK moves away from the
        // node that does not answer). The SDK may try the isolated node
        // first: it prepares at the ledgers and can decide nothing, and a
        // ledger's in-doubt query can then reach the new leader before the
        // client's retry does, which records a presumed abort for that id
        // (docs/design.md §6, second row). That is a correct outcome, so an
        // abort is followed by a transfer under a new id; one must commit.
        let mut results = Vec::new();
        for attempt in 0..3 {
            let r = bank
                .transfer(
                    &tb.client,
                    &format!("during-isolation-{attempt}"),
                    (
                        &bank.account("bank-0", "acct-1"),
                        &bank.account("bank-1", "acct-1"),
                        3,
                    ),
                    secs(2),
                    secs(40),
                )
                .await;
            let done = r == OpResult::Committed;
            results.push(r);
            if done {
                break;
            }
        }
        assert!(
            results.last() == Some(&OpResult::Committed)
                && results
                    .iter()
                    .all(|r| matches!(r, OpResult::Committed | OpResult::Aborted { .. })),
            "transfers during the isolation: {results:?}"
        );

        mesh.heal();
        tb.timeline.push("healed");
        let leader = tb.cluster.wait_for_stable_leader(secs(30)).await;
        assert_ne!(
            leader, old,
            "the old leader came back as leader without an election"
        );
        let report = check_and_report(
            &mut tb,
            &bank,
            "isolated leader",
            0,
            started,
            0,
            Anomalies::default(),
            Instant::now(),
            secs(30),
        )
        .await;
        assert!(report.passed, "{}", report.table());
    })
    .await;
}

/// One-way: the leader cannot call the followers (its heartbeats vanish),
/// but they can call it. They elect a new leader, whose vote request
/// reaches the old one and makes it step down; clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_cut_from_the_leader_moves_leadership() {
    let started = Instant::now();
    let (mut tb, bank) = proxied_testbed().await;
    bounded(secs(150), async {
        let old = tb.cluster.wait_for_stable_leader(secs(30)).await;
        let term = tb.cluster.status(old).await.expect("leader status").term;
        let mesh = tb.cluster.mesh().expect("proxied").clone();
        for id in tb.cluster.ids().into_iter().filter(|id| *id != old) {
            mesh.cut(old, id, LinkMode::Refuse);
        }
        tb.timeline.push(format!(
            "one-way cut: coordinator-{old} cannot call the followers"
        ));
        let new = wait_new_leader(&tb, old, term, secs(20)).await;
        // The old leader learns of the new term over the links that work.
        wait_for_ok(secs(20), "the old leader to step down", || async {
            match tb.cluster.status(old).await {
                Some(s) if s.role != "leader" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        tb.timeline.push(format!(
            "coordinator-{new} leads; coordinator-{old} stepped down"
        ));
        let r = bank
            .transfer(
                &tb.client,
                "during-one-way-cut",
                (
                    &bank.account("bank-0", "acct-0"),
                    &bank.account("bank-1", "acct-1"),
                    7,
                ),
                secs(2),
                secs(40),
            )
            .await;
        assert_eq!(r, OpResult::Committed, "transfer during the one-way cut");
        mesh.heal();
        tb.timeline.push("healed");
        tb.cluster.wait_for_stable_leader(secs(30)).await;
        let report = check_and_report(
            &mut tb,
            &bank,
            "one-way cut from the leader",
            0,
            started,
            0,
            Anomalies::default(),
            Instant::now(),
            secs(30),
        )
        .await;
        assert!(report.passed, "{}", report.table());
    })
    .await;
}

/// No coordinator can reach bank-1: a transfer touching it times out in
/// prepare and aborts; the abort cannot be delivered, so it stays pending
/// (bank-1 might have prepared). A transfer inside bank-0 commits
/// meanwhile. After healing the abort is delivered and nothing is pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_cut_from_one_participant_aborts_and_finishes_after_heal() {
    let started = Instant::now();
    let (mut tb, bank) = proxied_testbed().await;
    bounded(secs(150), async {
        assert!(tb.ledgers[1].inbound.is_some(), "proxied");
        tb.ledgers[1].set_inbound(LinkMode::Refuse);
        tb.timeline.push("cut coordinators -> bank-1 (refuse)");
        let r = bank
            .transfer(
                &tb.client,
                "cut-1",
                (
                    &bank.account("bank-0", "acct-0"),
                    &bank.account("bank-1", "acct-0"),
                    9,
                ),
                Duration::from_millis(1500),
                secs(30),
            )
            .await;
        assert!(
            matches!(&r, OpResult::Aborted { reason } if reason.contains("bank-1")),
            "cut-1 with bank-1 unreachable: {r:?}"
        );
        let pending = wait_for_ok(secs(10), "cut-1 pending (abort not delivered)", || async {
            let p = tb.cluster_pending().await?;
            match p.iter().find(|t| t.txn_id == "cut-1") {
                Some(t) => Ok(t.clone()),
                None => Err(format!("{p:?}")),
            }
        })
        .await;
        assert!(
            pending.awaiting_ack.iter().any(|p| p == "bank-1"),
            "{pending:?}"
        );
        let r = bank
            .transfer(
                &tb.client,
                "inside-bank-0",
                (
                    &bank.account("bank-0", "acct-0"),
                    &bank.account("bank-0", "acct-1"),
                    4,
                ),
                secs(2),
                secs(30),
            )
            .await;
        assert_eq!(r, OpResult::Committed, "a transfer not touching bank-1");
        tb.ledgers[1].set_inbound(LinkMode::Up);
        tb.timeline.push("healed coordinators -> bank-1");
        let report = check_and_report(
            &mut tb,
            &bank,
            "coordinator cut from a participant",
            0,
            started,
            0,
            Anomalies::default(),
            Instant::now(),
            secs(30),
        )
        .await;
        assert!(report.passed, "{}", report.table());
        println!(
            "cut-1 aborted and delivered after heal; quiesced in {:?} ms",
            report.quiesce_ms
        );
    })
    .await;
}
