//! What survives a restart and a crash: reopen after a clean drop, and reopen
//! after the writing process is SIGKILLed mid-write.

mod common;

use common::*;
use dtc_store::{LogStore, StateMachineStore};
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{RaftSnapshotBuilder, Vote};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn reopened_stores_return_vote_log_state_applied_state_and_txns() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let before = rt.block_on(async {
        let (mut log, mut sm) = dtc_store::open(dir.path()).unwrap();
        log.save_vote(&Vote::new_committed(3, 1)).await.unwrap();
        log.blocking_append(entries(1..=40)).await.unwrap();
        sm.apply(entries(1..=30)).await.unwrap();
        log.purge(log_id(1, 10)).await.unwrap();
        log.save_committed(Some(log_id(1, 30))).await.unwrap();
        let reader = sm.reader();
        assert_pending_index_consistent(&reader);
        contents(&reader)
    });
    // Everything above is dropped: the files are closed.

    rt.block_on(async {
        let (mut log, mut sm) = dtc_store::open(dir.path()).unwrap();
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(Vote::new_committed(3, 1))
        );
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(1, 10)));
        assert_eq!(st.last_log_id, Some(log_id(1, 40)));
        let got = log.try_get_log_entries(0..100).await.unwrap();
        let want = entries(11..=40);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((g.log_id, &g.payload), (w.log_id, &w.payload));
        }
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 30)));

        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 30)));
        assert_eq!(membership.log_id(), &Some(log_id(1, 1)));
        let reader = sm.reader();
        assert_eq!(reader.last_applied().unwrap(), Some(log_id(1, 30)));
        assert_eq!(contents(&reader), before);
        assert_eq!(contents(&reader), mem_contents(&replay(30)));
        assert_pending_index_consistent(&reader);
    });
}

#[test]
fn second_open_of_a_directory_in_use_fails_instead_of_sharing_it() {
    let dir = tempfile::tempdir().unwrap();
    let stores = dtc_store::open(dir.path()).unwrap();
    assert!(dtc_store::open(dir.path()).is_err());
    drop(stores);
    dtc_store::open(dir.path()).unwrap();
}

const KILL_DIR_ENV: &str = "DTC_STORE_KILL_WRITER_DIR";
const KILL_TEST: &str = "sigkilled_writer_leaves_stores_that_reopen_consistent";

/// Child mode: recover like openraft does (apply what the log holds beyond
/// last_applied), then append and apply the deterministic log forever,
/// snapshotting and purging as it goes. Prints progress for the parent.
async fn writer(dir: &Path) -> ! {
    let (mut log, mut sm): (LogStore, StateMachineStore) = dtc_store::open(dir).unwrap();
    let st = log.get_log_state().await.unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    let last = st.last_log_id.map_or(0, |l| l.index);
    let applied = applied.map_or(0, |l| l.index);
    if applied < last {
        let pending = log.try_get_log_entries(applied + 1..=last).await.unwrap();
        sm.apply(pending).await.unwrap();
    }
    let mut next = last + 1;
    let mut term = 1 + next / 100;
    loop {
        if next / 100 + 1 > term {
            term = next / 100 + 1;
            log.save_vote(&Vote::new_committed(term, 1)).await.unwrap();
        }
        let end = next + mix(next) % 6;
        let batch = entries(next..=end);
        log.blocking_append(batch.clone()).await.unwrap();
        println!("PROGRESS appended {end}");
        log.save_committed(Some(log_id(1, end))).await.unwrap();
        sm.apply(batch).await.unwrap();
        println!("PROGRESS applied {end}");
        if next / 60 != (end + 1) / 60 {
            let snap = sm
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            let upto = snap.meta.last_log_id.unwrap().index.saturating_sub(20);
            if upto > 0 {
                log.purge(log_id(1, upto)).await.unwrap();
            }
            println!("PROGRESS snapshot {}", snap.meta.snapshot_id);
        }
        next = end + 1;
    }
}

/// Reopens the stores the child left and checks every crash invariant.
/// Returns the last applied index.
async fn check_after_crash(dir: &Path) -> u64 {
    let (mut log, mut sm) = dtc_store::open(dir).expect("stores reopen after SIGKILL");
    log.read_vote().await.unwrap();
    let st = log.get_log_state().await.unwrap();
    let purged = st.last_purged_log_id.map_or(0, |l| l.index);
    let last = st.last_log_id.map_or(0, |l| l.index);
    let got = log.try_get_log_entries(..).await.unwrap();
    let indexes: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
    let want: Vec<u64> = (purged + 1..=last).collect();
    assert_eq!(
        indexes, want,
        "log is contiguous from last_purged+1 to last"
    );
    for e in &got {
        assert_eq!(
            e.payload,
            payload_for(e.log_id.index),
            "entry {} intact",
            e.log_id.index
        );
    }

    let (applied, _) = sm.applied_state().await.unwrap();
    let applied = applied.map_or(0, |l| l.index);
    assert!(
        applied <= last,
        "applied {applied} <= last log index {last}"
    );
    assert!(purged <= applied, "purged {purged} <= applied {applied}");
    if let Some(snap) = sm.get_current_snapshot().await.unwrap() {
        let at = snap.meta.last_log_id.map_or(0, |l| l.index);
        assert!(
            at <= applied && purged <= at,
            "purge {purged} <= snapshot {at} <= applied"
        );
    }

    let reader = sm.reader();
    assert_pending_index_consistent(&reader);
    assert_eq!(
        contents(&reader),
        mem_contents(&replay(applied)),
        "state machine equals a replay of the log up to applied {applied}"
    );
    applied
}

/// The files whose synced commits record redb's allocator state, so that a
/// crashed file opens without walking every page.
const QUICK_REPAIR_FILES: &[&str] = &[dtc_store::STATE_FILE];

/// Opens a copy of a crashed redb file and says whether redb had to repair
/// it in full (a copy, so the original stays as the crash left it).
fn opens_with_full_repair(path: &Path) -> bool {
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("copy.redb");
    std::fs::copy(path, &copy).unwrap();
    let repaired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = repaired.clone();
    let db = redb::Builder::new()
        .set_repair_callback(move |_| flag.store(true, std::sync::atomic::Ordering::SeqCst))
        .open(&copy)
        .unwrap();
    drop(db);
    repaired.load(std::sync::atomic::Ordering::SeqCst)
}

#[test]
fn sigkilled_writer_leaves_stores_that_reopen_consistent() {
    if let Some(dir) = std::env::var_os(KILL_DIR_ENV) {
        runtime().block_on(writer(Path::new(&dir)));
    }

    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut applied = 0;
    // Several rounds: each child resumes from what the previous one left.
    for round in 0..4 {
        let mut child = Process::new(std::env::current_exe().unwrap())
            .args(["--exact", KILL_TEST, "--nocapture", "--test-threads=1"])
            .env(KILL_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let pump = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Kill once the child has applied well past where it started (past
        // at least one snapshot + purge); it is mid-way through its next
        // write when the signal lands.
        let target = applied + 150 + mix(round) % 100;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => {
                    let _ = child.kill();
                    panic!("round {round}: no progress past {applied} before the deadline ({e})");
                }
            };
            let reached = line
                .strip_prefix("PROGRESS applied ")
                .and_then(|n| n.parse::<u64>().ok());
            if reached.is_some_and(|n| n >= target) {
                break;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        pump.join().unwrap();

        for file in QUICK_REPAIR_FILES {
            assert!(
                !opens_with_full_repair(&dir.path().join(file)),
                "round {round}: {file} left by SIGKILL needed redb's full repair (the walk \
                 of every page that quick-repair commits avoid)"
            );
        }
        let now = rt.block_on(check_after_crash(dir.path()));
        assert!(now >= applied, "applied went back from {applied} to {now}");
        eprintln!("round {round}: killed at applied {now}");
        applied = now;
    }
}
