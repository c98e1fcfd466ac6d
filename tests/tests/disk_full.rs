//! Coordinators on filesystems that really fill: each node's data directory
//! is a size-limited tmpfs mounted by the test (root only; skipped, saying
//! so, otherwise). Below its reserve a leader refuses new transactions,
//! naming the disk, and takes them again by itself once space returns; a
//! follower whose disk fills completely stops (exits non-zero) instead of
//! lingering, and catches up after a restart with space. Nothing
//! acknowledged is lost, and every transaction ends with one outcome.

use dtc_harness::small_disk::SmallDisk;
use dtc_tests::v1 as pb;
use dtc_tests::{Cluster, TestParticipant, bounded, execute_request, secs};
use tonic::Code;

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_on_filling_disks_refuse_new_work_stop_cleanly_and_recover_with_space() {
    // Reserve 8 MiB on disks of 64 MiB.
    let mut cluster = Cluster::prepare(3, &["--disk-reserve-mb", "8"]);
    let mut disks = std::collections::BTreeMap::new();
    for id in cluster.ids() {
        let Some(disk) = SmallDisk::mount_at(&cluster.data_dir(id), "64m") else {
            return;
        };
        disks.insert(id, disk);
    }
    cluster.spawn_all();
    let alpha = TestParticipant::start("alpha").await;
    bounded(secs(150), async {
        let leader = cluster.wait_for_stable_leader(secs(30)).await;
        cluster.register(&alpha, secs(15)).await;
        let ok = |id: &str| execute_request(id, &[("alpha", b"a")], 5000);
        let r = cluster
            .execute_retrying(&cluster.ids(), ok("before"), secs(30))
            .await
            .expect("committed");
        assert_eq!(r.outcome(), pb::Outcome::Committed);

        // The leader's disk below its reserve: refused before any participant
        // is asked, naming the disk.
        disks[&leader].fill_until(4 * MIB);
        let refused = cluster
            .execute(leader, ok("while-full"), secs(5))
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert!(
            refused.message().contains("disk nearly full")
                && refused.message().contains(&format!("node-{leader}")),
            "the message names the disk: {refused:?}"
        );
        assert!(alpha.record("while-full").is_none());
        // Space returns: accepted again, without a restart.
        disks[&leader].free_the_ballast();
        let r = cluster
            .execute_retrying(&[leader], ok("after"), secs(30))
            .await
            .expect("accepted once space returned");
        assert_eq!(r.outcome(), pb::Outcome::Committed);

        // A follower's disk completely full: its log writes fail, and it
        // stops (non-zero) rather than living on as a node that serves
        // nothing. The other two keep committing.
        let follower = cluster
            .ids()
            .into_iter()
            .find(|id| *id != leader)
            .expect("a follower");
        cluster.expect_crashes(true);
        disks[&follower].fill_until(0);
        let mut n = 0;
        let status = loop {
            n += 1;
            let r = cluster
                .execute_retrying(&[leader], ok(&format!("full-{n}")), secs(30))
                .await
                .expect("the majority commits");
            assert_eq!(r.outcome(), pb::Outcome::Committed);
            if let Some(s) = cluster.try_exit(follower) {
                break s;
            }
            assert!(n < 2000, "the follower with a full disk never stopped");
        };
        assert!(
            !status.success(),
            "a storage failure exits non-zero: {status}"
        );
        eprintln!("follower {follower} stopped ({status}) after {n} transactions on a full disk");

        // Space back, restarted: it recovers from what is durable and
        // catches up; nothing acknowledged was lost.
        disks[&follower].free_the_ballast();
        cluster.restart(follower);
        cluster.wait_caught_up(follower, secs(60)).await;
        cluster.wait_no_pending(secs(30)).await;
        for id in ["before", "after", "full-1"] {
            let rec = alpha.record(id).expect("applied at the participant");
            assert_eq!(
                rec.state,
                dtc_tests::BranchState::Committed,
                "{id}: {rec:?}"
            );
        }
        assert!(alpha.record("while-full").is_none());
        assert!(alpha.violations().is_empty(), "{:?}", alpha.violations());
        let log = std::fs::read_to_string(cluster.log_path(follower)).unwrap_or_default();
        let why = log.lines().rfind(|l| l.contains("ERROR")).unwrap_or("");
        eprintln!("its last error: {why}");
    })
    .await;
}
