//! Leadership changes: on becoming leader, take over every pending
//! transaction; on losing leadership, stop every driver of the old term.
//!
//! Uses [`super::shared`], [`super::driver`] (to resume drivers) and
//! [`super::participants::backoff`].

use super::driver::{self, Start};
use super::participants::backoff;
use super::proposer::ProposeError;
use super::shared::{Leadership, Shared};
use crate::metrics::KindLabel;
use dtc_core::{Command, TxnRecord};
use openraft::ServerState;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Follows Raft metrics: on becoming leader, start a term's takeover; on
/// losing leadership, cancel every driver of the old term.
pub async fn follow_leadership(shared: Arc<Shared>) {
    let mut metrics = shared.raft.metrics();
    let mut current: Option<(u64, CancellationToken)> = None;
    loop {
        let (leading, term, leader) = {
            let m = metrics.borrow_and_update();
            (
                m.state == ServerState::Leader && m.current_leader == Some(shared.config.id),
                m.current_term,
                m.current_leader,
            )
        };
        match (&current, leading) {
            (Some((t, _)), true) if *t == term => {}
            (_, true) => {
                if let Some((_, old)) = current.take() {
                    old.cancel();
                }
                let cancel = CancellationToken::new();
                info!(term, "became leader; taking over pending transactions");
                shared.drivers.clear();
                shared.leadership.send_replace(Leadership::Leader {
                    term,
                    cancel: cancel.clone(),
                    ready: false,
                });
                current = Some((term, cancel.clone()));
                tokio::spawn(take_over(shared.clone(), term, cancel));
            }
            (Some((t, cancel)), false) => {
                info!(term = t, new_leader = ?leader, "lost leadership; stopping drivers");
                cancel.cancel();
                current = None;
                shared.drivers.clear();
                shared.leadership.send_replace(Leadership::NotLeader);
            }
            (None, false) => {}
        }
        if metrics.changed().await.is_err() {
            // Raft stopped: nothing may keep driving in its name.
            if let Some((_, cancel)) = current.take() {
                cancel.cancel();
            }
            shared.drivers.clear();
            shared.leadership.send_replace(Leadership::NotLeader);
            return;
        }
    }
}

/// Why reading the pending index failed.
#[derive(Debug, thiserror::Error)]
enum ScanError {
    #[error("cannot read the pending index: {0}")]
    Store(#[from] dtc_store::StoreError),
    #[error("scan task failed: {0}")]
    Task(#[from] dtc_util::blocking::BlockingError),
}

/// Sleeps for the next back-off delay; false if the term ended meanwhile.
async fn pause(delays: &mut impl Iterator<Item = Duration>, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))) => true,
        _ = cancel.cancelled() => false,
    }
}

/// Runs when this node becomes leader of `term`: waits until everything
/// committed before the term is applied (corner case 2), reads the pending
/// index, and resumes a driver for every transaction in it.
async fn take_over(shared: Arc<Shared>, term: u64, cancel: CancellationToken) {
    let started = Instant::now();
    let mut delays = backoff();
    loop {
        // Catch up with a barrier: an empty entry of this term, written
        // through Raft and applied. Its apply means every entry before it in
        // this leader's log is applied, which is what the scan must see.
        // (`ensure_linearizable` is not enough: a leader restarted into its
        // own term, as openraft allows, waits only for its stale committed
        // index, and state-machine applies lost in the crash were not yet
        // re-applied: a decided transaction was missed that way.)
        let caught_up: Result<_, ProposeError> = tokio::select! {
            r = shared.propose(Command::Batch(Vec::new())) => r,
            _ = cancel.cancelled() => return,
        };
        match caught_up {
            Ok(_) => break,
            // No quorum yet (peers still starting, or a partition): keep
            // trying for as long as this term lasts; the watcher cancels us
            // if leadership moves.
            Err(e) => {
                warn!(term, error = %e, "takeover: cannot confirm leadership yet; retrying");
                if !pause(&mut delays, &cancel).await {
                    return;
                }
            }
        }
    }
    let catch_up = started.elapsed();
    // A failed scan is retried for as long as the term lasts: giving up
    // would leave a leader that heartbeats (so nobody replaces it) but never
    // becomes ready.
    let (pending, scan) = loop {
        let scan_started = Instant::now();
        match scan(&shared).await {
            Ok(p) => break (p, scan_started.elapsed()),
            Err(why) => error!(term, error = %why, "takeover: scan failed; retrying"),
        }
        if !pause(&mut delays, &cancel).await {
            return;
        }
    };
    let (mut undecided, mut decided) = (0usize, 0usize);
    {
        let mut entries = shared.drivers.lock();
        for record in pending {
            if entries.get(&record.txn_id).is_some() {
                continue;
            }
            if record.outcome().is_some() {
                decided += 1;
            } else {
                undecided += 1;
            }
            driver::spawn(&shared, &mut entries, Start::Resume(record), cancel.clone());
        }
    }
    info!(
        term,
        pending = undecided + decided,
        undecided,
        decided,
        catch_up_ms = catch_up.as_secs_f64() * 1e3,
        scan_ms = scan.as_secs_f64() * 1e3,
        "takeover: found {} pending transactions; scan took {:.2} ms",
        undecided + decided,
        scan.as_secs_f64() * 1e3
    );
    shared.metrics.takeovers.inc();
    shared.metrics.last_takeover_term.set(term as i64);
    for (kind, n) in [("undecided", undecided), ("decided", decided)] {
        shared
            .metrics
            .last_takeover_transactions
            .get_or_create(&KindLabel { kind })
            .set(n as i64);
    }
    shared
        .metrics
        .last_takeover_seconds
        .set(started.elapsed().as_secs_f64());
    shared.mark_ready(term);
}

/// Reads the pending index off the tokio workers.
async fn scan(shared: &Shared) -> Result<Vec<TxnRecord>, ScanError> {
    let reader = shared.reader.clone();
    let pending = dtc_util::blocking::spawn(move || {
        // Crash point: a new leader dies while reading the pending index.
        dtc_util::crash_point!("coordinator.takeover.scan");
        reader.pending()
    })
    .await??;
    Ok(pending)
}
