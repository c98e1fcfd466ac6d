//! The redb state machine against the in-memory model, and snapshots.

mod common;

use common::*;
use dtc_core::{Command, CommandResult, MemStore, Outcome, TxnId};
use dtc_store::test_support::{receive_snapshot, snapshot_bytes};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use proptest::prelude::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn snapshot_installed_into_a_fresh_store_reproduces_the_reader_contents() {
    let rt = runtime();
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let (_l_log, mut leader) = dtc_store::open(leader_dir.path()).unwrap();
        for chunk in entries(1..=400).chunks(16) {
            leader.apply(chunk.to_vec()).await.unwrap();
        }
        let lr = leader.reader();
        let want = contents(&lr);
        assert!(
            !want.pending.is_empty() && !want.completed.is_empty(),
            "{want:?}"
        );

        let mut snap = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 400)));
        assert!(
            snap.meta.snapshot_id.starts_with("1-400-"),
            "{}",
            snap.meta.snapshot_id
        );
        let mut current = leader.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, snap.meta);
        let sent = snapshot_bytes(&mut snap.snapshot).await;
        assert_eq!(snapshot_bytes(&mut current.snapshot).await, sent);

        {
            let (_f_log, mut follower) = dtc_store::open(follower_dir.path()).unwrap();
            let rx = receive_snapshot(&mut follower, &sent).await;
            follower.install_snapshot(&snap.meta, rx).await.unwrap();
            let fr = follower.reader();
            assert_eq!(contents(&fr), want);
            assert_eq!(fr.last_applied().unwrap(), lr.last_applied().unwrap());
            assert_eq!(fr.last_membership().unwrap(), lr.last_membership().unwrap());
            assert_eq!(fr.pending_count().unwrap(), lr.pending_count().unwrap());
            assert_eq!(
                follower.applied_state().await.unwrap(),
                leader.applied_state().await.unwrap()
            );
        }

        // After a restart the follower still has the snapshot and the state,
        // and applying the same next entries on both gives the same results
        // (so the indexes came across too, not just the records).
        let (_f_log, mut follower) = dtc_store::open(follower_dir.path()).unwrap();
        let Snapshot { meta, mut snapshot } =
            follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(meta, snap.meta);
        assert_eq!(snapshot_bytes(&mut snapshot).await, sent);
        let more = entries(401..=600);
        let a = leader.apply(more.clone()).await.unwrap();
        let b = follower.apply(more).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(contents(&follower.reader()), contents(&lr));
    });
}

#[test]
fn installing_a_snapshot_replaces_local_state_entirely() {
    let rt = runtime();
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let (_a_log, mut a) = dtc_store::open(a_dir.path()).unwrap();
        a.apply(entries(1..=50)).await.unwrap();
        let mut snap = a
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let sent = snapshot_bytes(&mut snap.snapshot).await;

        // b has unrelated state; the snapshot must wipe it, not merge into it.
        let (_b_log, mut b) = dtc_store::open(b_dir.path()).unwrap();
        b.apply(vec![normal(
            1,
            1,
            Command::Begin {
                txn_id: "zzz-only-on-b".parse().unwrap(),
                participants: vec!["x".into()],
                digest: [1; 32],
                timeout_ms: 1,
                at_ms: 1,
            },
        )])
        .await
        .unwrap();
        let rx = receive_snapshot(&mut b, &sent).await;
        b.install_snapshot(&snap.meta, rx).await.unwrap();
        assert_eq!(contents(&b.reader()), contents(&a.reader()));
        assert_eq!(b.reader().get_txn("zzz-only-on-b").unwrap(), None);
    });
}

#[test]
fn blank_and_membership_entries_return_nothing_and_record_membership() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let (_log, mut sm) = dtc_store::open(dir.path()).unwrap();
        let results = sm
            .apply(vec![
                entry(1, 1, payload_for(1)),
                entry(1, 2, EntryPayload::Blank),
            ])
            .await
            .unwrap();
        assert_eq!(
            results,
            vec![CommandResult::Nothing, CommandResult::Nothing]
        );
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 2)));
        assert_eq!(membership.log_id(), &Some(log_id(1, 1)));
    });
}

#[test]
fn list_txns_pages_by_id_and_pending_only_walks_the_pending_index() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let (_log, mut sm) = dtc_store::open(dir.path()).unwrap();
        let mut cmds = Vec::new();
        for i in 0..10 {
            cmds.push(Command::Begin {
                txn_id: format!("t{i}").parse().unwrap(),
                participants: vec!["a".into()],
                digest: [0; 32],
                timeout_ms: 10,
                at_ms: i,
            });
        }
        // t0, t2, t4, t6, t8 complete at once (no phase-2 participants).
        for i in (0..10).step_by(2) {
            cmds.push(Command::Decide {
                txn_id: format!("t{i}").parse().unwrap(),
                outcome: Outcome::Commit,
                phase2: vec![],
                at_ms: 100,
            });
        }
        let batch = cmds
            .into_iter()
            .enumerate()
            .map(|(i, c)| normal(1, i as u64 + 1, c))
            .collect::<Vec<_>>();
        sm.apply(batch).await.unwrap();
        let r = sm.reader();
        let ids = |v: Vec<dtc_core::TxnRecord>| v.into_iter().map(|t| t.txn_id).collect::<Vec<_>>();
        assert_eq!(
            ids(r.list_txns(false, None, 3).unwrap()),
            ["t0", "t1", "t2"]
        );
        assert_eq!(
            ids(r.list_txns(false, Some("t2"), 3).unwrap()),
            ["t3", "t4", "t5"]
        );
        assert_eq!(ids(r.list_txns(true, None, 2).unwrap()), ["t1", "t3"]);
        assert_eq!(
            ids(r.list_txns(true, Some("t3"), 10).unwrap()),
            ["t5", "t7", "t9"]
        );
        assert!(r.list_txns(true, Some("t9"), 10).unwrap().is_empty());
        assert!(r.list_txns(false, None, 0).unwrap().is_empty());
        assert_eq!(r.pending_count().unwrap(), 5);
        assert_eq!(r.txn_count().unwrap(), 10);
        assert_eq!(r.get_txn("t4").unwrap().unwrap().created_ms, 4);
        assert_eq!(r.get_txn("nope").unwrap(), None);
    });
}

fn arb_command() -> impl Strategy<Value = Command> {
    let id = prop::sample::select(vec!["a1", "a2", "b1", "b2", "c1"])
        .prop_map(|s| s.parse::<TxnId>().unwrap());
    let parts = prop::sample::subsequence(vec!["p", "q", "r"], 0..=3)
        .prop_map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
    let outcome = prop_oneof![Just(Outcome::Commit), Just(Outcome::abort("no"))];
    // Coarse times, so expiry cut-offs often fall exactly on a completion time.
    let at = (0u64..40).prop_map(|t| t * 10);
    prop_oneof![
        3 => (id.clone(), parts.clone(), any::<u8>(), at.clone()).prop_map(|(txn_id, participants, d, at_ms)| {
            Command::Begin { txn_id, participants, digest: [d; 32], timeout_ms: 100, at_ms }
        }),
        3 => (id.clone(), outcome, parts, at.clone()).prop_map(|(txn_id, outcome, phase2, at_ms)| {
            Command::Decide { txn_id, outcome, phase2, at_ms }
        }),
        2 => (id, at.clone()).prop_map(|(txn_id, at_ms)| Command::Complete { txn_id, at_ms }),
        1 => (prop::sample::select(vec!["p", "q"]), 0u8..3).prop_map(|(n, e)| Command::Register {
            name: n.into(),
            endpoint: format!("http://{n}:{e}"),
        }),
        1 => (at.clone(), (0u64..10).prop_map(|r| r * 10)).prop_map(|(now_ms, retention_ms)| Command::Expire { now_ms, retention_ms }),
        1 => (at, (0u64..10).prop_map(|r| r * 10), 0u32..4).prop_map(|(now_ms, retention_ms, limit)| Command::ExpireAtMost { now_ms, retention_ms, limit }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Batches of every size (reads within a batch see that batch's writes).
    #[test]
    fn redb_apply_gives_the_same_results_and_state_as_memstore(
        cmds in prop::collection::vec(arb_command(), 1..60),
        batch in 1usize..9,
    ) {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = dtc_store::open(dir.path()).unwrap();
        let mut model = MemStore::default();
        let want: Vec<CommandResult> = cmds.iter().map(|c| model.apply(c)).collect();
        let entries: Vec<_> = cmds
            .iter()
            .enumerate()
            .map(|(i, c)| normal(1, i as u64 + 1, c.clone()))
            .collect();
        let mut got = Vec::new();
        for chunk in entries.chunks(batch) {
            got.extend(rt.block_on(sm.apply(chunk.to_vec())).unwrap());
        }
        prop_assert_eq!(got, want);
        prop_assert_eq!(contents(&sm.reader()), mem_contents(&model));
        assert_pending_index_consistent(&sm.reader());
    }
}
