//! `dtc bench --local --failover`: SIGKILL the leader under load, K times,
//! and time the recovery.
//!
//! ```text
//! load      --clients clients run for the whole run (load.rs); the monitor polls
//!           every node's ClusterStatus every 20 ms (probe.rs)
//! per kill  wait until quiet: 3 nodes agree on one leader and term, no election
//!             for QUIET (and the restarted node caught up)
//!           t_kill; SIGKILL the leader's process; bump the txn-id epoch
//!           failover_ms  t_kill → first commit of a transaction started after
//!                        the kill (the clients report it, load.rs)
//!           resolve_ms   t_kill → the new leader lists no pending transaction
//!                        whose id carries an epoch from before the kill
//!           restart the node (same port, same data); wait until it follows
//!             the leader and has applied the leader's log as of then
//! end       wait until quiet again; the window of kill k is [t_kill_k, next quiet);
//!           elections outside every window are leader_changes_without_fault
//! ```
//!
//! Counting pending transactions by epoch rather than the pending total is
//! what makes resolve_ms meaningful under load: the clients keep adding
//! transactions, so the total is never 0 for long.

use crate::load::{EXECUTE_TIMEOUT, Load, Shared};
use crate::probe::{Leader, Monitor};
use crate::report::{self, median_max, ms};
use crate::{Bench, Failure, failed};
use anyhow::anyhow;
use dtc_harness::LocalCluster;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// How long the cluster must have had no election before a kill.
const QUIET: Duration = Duration::from_secs(1);
/// Bounds of the waits (generous: a loaded 2-core machine is slow).
const SETTLE_WITHIN: Duration = Duration::from_secs(60);
const FAILOVER_WITHIN: Duration = Duration::from_secs(30);
const RESOLVE_WITHIN: Duration = Duration::from_secs(60);
const REJOIN_WITHIN: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Serialize)]
pub struct MedianMax {
    pub median: f64,
    pub max: f64,
}

impl MedianMax {
    fn of(v: &[f64]) -> MedianMax {
        let (median, max) = median_max(v);
        MedianMax { median, max }
    }
}

/// One kill, all times in ms from its SIGKILL.
#[derive(Debug, Serialize)]
pub struct Kill {
    /// When the SIGKILL was sent, ms since the run started (t_ms 0 of the
    /// timeline).
    pub at_ms: f64,
    pub killed: u64,
    pub old_term: u64,
    pub new_leader: Option<u64>,
    pub new_term: Option<u64>,
    /// Until the monitor saw a node claim leadership in a later term: up to
    /// one 20 ms poll late, so it can exceed failover_ms (clients reach the
    /// new leader through a follower as soon as that follower knows it).
    pub elected_ms: Option<f64>,
    pub failover_ms: f64,
    pub resolve_ms: f64,
    /// The most transactions from before the kill the new leader listed as pending.
    pub pending_from_before_kill: usize,
    /// From the restart until the node followed the leader and had caught up.
    pub rejoined_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct FailoverJson {
    pub kills: usize,
    pub failover_ms: MedianMax,
    pub resolve_ms: MedianMax,
    pub leader_changes_without_fault: usize,
    pub clients: usize,
    pub branches: usize,
    pub payload_bytes: usize,
    pub reply_at_decision: bool,
    pub committed: u64,
    pub aborted: u64,
    pub errors: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub secs: f64,
    pub per_kill: Vec<Kill>,
}

pub async fn run(b: &Bench<'_>, cluster: &mut LocalCluster, clients: usize) -> Result<(), Failure> {
    let kills = b.args.kills as usize;
    // One level: the epochs keep its ids apart across kills.
    let shared = Arc::new(Shared::new(b.run_start, 0));
    // Everything counts: the whole run is the measurement.
    shared.window_start_us.store(0, Relaxed);
    let load = Load::spawn(
        clients,
        shared.clone(),
        b.monitor.board.clone(),
        b.work.clone(),
        crate::load::CONNECT_TIMEOUT * 2,
    )
    .await;
    b.ui.say(format!(
        "failover: {kills} SIGKILLs of the leader under {clients} clients ({})",
        b.setup.describe()
    ));
    let load_start = Instant::now();
    load.start();
    let bar = b.ui.bar(Some(kills as u64), "failover".to_string());
    let status = |msg: &str| {
        bar.set_message(format!(
            "{msg} | committed {} | errors {}",
            shared.committed.load(Relaxed),
            shared.errors.load(Relaxed)
        ));
    };

    let mut results: Vec<Kill> = Vec::new();
    let mut events: Vec<(Duration, String)> = Vec::new();
    // [t_kill, quiet again) of each kill.
    let mut windows: Vec<(Instant, Instant)> = Vec::new();
    let mut not_before = load_start;
    for k in 1..=kills {
        status(&format!("kill {k}/{kills}: waiting for a quiet cluster"));
        let (leader, quiet_at) = wait_quiet(cluster, &b.monitor, not_before, &status).await?;
        if let Some(w) = windows.last_mut() {
            w.1 = quiet_at;
        }
        let name = format!("node-{}", leader.id);
        status(&format!("kill {k}/{kills}: SIGKILL node {}", leader.id));
        let t_kill = Instant::now();
        cluster
            .kill(&name)
            .map_err(|e| failed(anyhow!("cannot SIGKILL {name}: {e}")))?;
        // From here on, new transactions are "started after the kill" and
        // carry the new epoch in their ids.
        shared.first_commit_after_kill_us.store(u64::MAX, Relaxed);
        let epoch = shared.epoch.fetch_add(1, Relaxed) + 1;
        shared.kill_after_us.store(shared.now_us(), Relaxed);
        let kill_us = t_kill.duration_since(b.run_start).as_micros() as u64;
        events.push((t_kill.duration_since(b.run_start), "kill".into()));
        windows.push((t_kill, t_kill));

        status(&format!(
            "kill {k}/{kills}: node {} SIGKILLed; waiting for a commit and the in-doubt transactions",
            leader.id
        ));
        // Both clocks run from the SIGKILL at once: the takeover may settle
        // the in-doubt transactions before or after the first new commit.
        let failover = async {
            let deadline = t_kill + FAILOVER_WITHIN;
            loop {
                let first = shared.first_commit_after_kill_us.load(Relaxed);
                if first != u64::MAX {
                    return Ok(first.saturating_sub(kill_us));
                }
                if Instant::now() >= deadline {
                    return Err(failed(anyhow!(
                        "kill {k}: no transaction started after the SIGKILL of node {} committed \
                         within {FAILOVER_WITHIN:?}",
                        leader.id
                    )));
                }
                cluster
                    .check_children()
                    .map_err(|e| failed(anyhow!("a coordinator died: {e}")))?;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        let resolve = resolve_wait(b, &leader, epoch, t_kill, k);
        let (failover_us, resolve) = tokio::join!(failover, resolve);
        let failover_us = failover_us?;
        let (resolve, pending_before) = resolve?;
        let elected = b
            .monitor
            .leader_changes()
            .into_iter()
            .find(|c| c.at >= t_kill && c.term > leader.term);

        status(&format!("kill {k}/{kills}: restarting node {}", leader.id));
        let t_restart = Instant::now();
        cluster
            .restart(&name)
            .map_err(|e| failed(anyhow!("cannot restart {name}: {e}")))?;
        events.push((t_restart.duration_since(b.run_start), "restart".into()));
        wait_rejoined(cluster, &b.monitor, leader.id, t_restart).await?;
        let rejoined = t_restart.elapsed();
        not_before = Instant::now();

        let kill = Kill {
            at_ms: ms(t_kill.duration_since(b.run_start)),
            killed: leader.id,
            old_term: leader.term,
            new_leader: elected.and_then(|c| c.leader),
            new_term: elected.map(|c| c.term),
            elected_ms: elected.map(|c| ms(c.at.duration_since(t_kill))),
            failover_ms: failover_us as f64 / 1e3,
            resolve_ms: ms(resolve),
            pending_from_before_kill: pending_before,
            rejoined_ms: ms(rejoined),
        };
        b.ui.say(format!(
            "kill {k}/{kills}: node {} -> node {} (term {}): failover {:.1} ms, resolve {:.1} ms, \
             {} in doubt, rejoined after {:.0} ms",
            kill.killed,
            kill.new_leader.map_or("?".to_string(), |l| l.to_string()),
            kill.new_term.map_or("?".to_string(), |t| t.to_string()),
            kill.failover_ms,
            kill.resolve_ms,
            kill.pending_from_before_kill,
            kill.rejoined_ms
        ));
        results.push(kill);
        bar.inc(1);
    }
    status("waiting for a quiet cluster");
    let (_, quiet_at) = wait_quiet(cluster, &b.monitor, not_before, &status).await?;
    if let Some(w) = windows.last_mut() {
        w.1 = quiet_at;
    }
    let secs = load_start.elapsed().as_secs_f64();
    status("stopping the clients");
    shared.window_end_us.store(shared.now_us(), Relaxed);
    let (tally, lost) = load.finish(EXECUTE_TIMEOUT + Duration::from_secs(5)).await;
    b.ui.clear();
    if lost > 0 {
        b.ui.warn(format!(
            "{lost} of {clients} clients did not stop within the Execute timeout; their counts are missing"
        ));
    }
    if let Err(e) = crate::drain(b, Duration::from_secs(15)).await {
        b.ui.warn(format!("15 s after the load: {e}"));
    }

    let unexplained = b
        .monitor
        .term_changes()
        .iter()
        .filter(|c| !windows.iter().any(|(from, to)| c.at >= *from && c.at < *to))
        .count();
    let failovers: Vec<f64> = results.iter().map(|k| k.failover_ms).collect();
    let resolves: Vec<f64> = results.iter().map(|k| k.resolve_ms).collect();
    let summary = FailoverJson {
        kills: results.len(),
        failover_ms: MedianMax::of(&failovers),
        resolve_ms: MedianMax::of(&resolves),
        leader_changes_without_fault: unexplained,
        clients,
        branches: b.setup.branches,
        payload_bytes: b.setup.payload_bytes,
        reply_at_decision: b.setup.reply_at_decision,
        committed: tally.committed,
        aborted: tally.aborted,
        errors: tally.error_count(),
        errors_by_code: tally.errors.clone(),
        secs: (secs * 1000.0).round() / 1000.0,
        per_kill: results,
    };
    if b.args.json {
        let line = serde_json::to_string(&summary).map_err(failed)?;
        b.ui.out(line);
    } else {
        print_text(b, &summary);
    }
    if let Some(path) = &b.args.timeline {
        report::write_timeline(path, &tally.buckets, &events).map_err(failed)?;
        b.ui.say(format!("timeline written to {}", path.display()));
    }
    Ok(())
}

/// Time from `t_kill` until the new leader lists no pending transaction
/// from before the kill (ids with an epoch below `epoch`), and the most it
/// listed. Only a leader of a later term that has applied its whole log as
/// of its election is asked: before that, its pending index may lack
/// entries from the old term.
async fn resolve_wait(
    b: &Bench<'_>,
    old: &Leader,
    epoch: u64,
    t_kill: Instant,
    k: usize,
) -> Result<(Duration, usize), Failure> {
    let deadline = t_kill + RESOLVE_WITHIN;
    let mut most = 0usize;
    // (leader id, term, its last log index when first seen leading).
    let mut elected: Option<(u64, u64, u64)> = None;
    loop {
        let now_leader = b.monitor.board.get();
        if now_leader.term > old.term {
            // Ask the leader itself, not a possibly stale snapshot.
            match b.nodes.status_of(&now_leader.addr).await {
                Ok(s) if s.role == "leader" && s.term >= now_leader.term => {
                    let log_at_election = match elected {
                        Some((id, term, index)) if id == s.node_id && term == s.term => index,
                        // First seen, or another election since.
                        _ => {
                            elected = Some((s.node_id, s.term, s.last_log_index));
                            s.last_log_index
                        }
                    };
                    if s.last_applied >= log_at_election {
                        match b.nodes.pending_ids(&now_leader.addr).await {
                            Ok(ids) => {
                                let left = ids
                                    .iter()
                                    .filter(|id| b.work.epoch_of(id).is_some_and(|e| e < epoch))
                                    .count();
                                most = most.max(left);
                                if left == 0 {
                                    return Ok((t_kill.elapsed(), most));
                                }
                            }
                            Err(e) => tracing::debug!("pending after kill {k}: {e:#}"),
                        }
                    }
                }
                // Not (or no longer) leader, or not answering: ask again.
                Ok(_) => {}
                Err(e) => tracing::debug!("status after kill {k}: {e:#}"),
            }
        }
        if Instant::now() >= deadline {
            return Err(failed(anyhow!(
                "kill {k}: transactions from before the SIGKILL of node {} still pending after \
                 {RESOLVE_WITHIN:?} ({most} at most)",
                old.id
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until three nodes agree on one leader in one term and no election
/// has been seen for [`QUIET`] (counting from `not_before` at the earliest).
/// Returns the leader and when the cluster was found quiet.
async fn wait_quiet(
    cluster: &mut LocalCluster,
    monitor: &Monitor,
    not_before: Instant,
    status: &impl Fn(&str),
) -> Result<(Leader, Instant), Failure> {
    let deadline = Instant::now() + SETTLE_WITHIN;
    loop {
        cluster
            .check_children()
            .map_err(|e| failed(anyhow!("a coordinator died: {e}")))?;
        let now = Instant::now();
        let last_change = [
            monitor.term_changes().last().map(|c| c.at),
            monitor.leader_changes().last().map(|c| c.at),
            Some(not_before),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(not_before);
        if let Some(snap) = monitor.latest_since(now.checked_sub(POLL * 5).unwrap_or(now))
            && let Some(leader) = snap.settled(cluster.nodes.len())
            && now.saturating_duration_since(last_change) >= QUIET
        {
            return Ok((leader, now));
        }
        if now >= deadline {
            return Err(failed(anyhow!(
                "the cluster did not settle (every node following one leader, no election for \
                 {QUIET:?}) within {SETTLE_WITHIN:?}"
            )));
        }
        status("waiting for a quiet cluster");
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until node `id` follows the current leader in its term and has
/// applied what the leader had logged when it first did.
async fn wait_rejoined(
    cluster: &mut LocalCluster,
    monitor: &Monitor,
    id: u64,
    since: Instant,
) -> Result<(), Failure> {
    let deadline = since + REJOIN_WITHIN;
    let mut target: Option<u64> = None;
    loop {
        cluster
            .check_children()
            .map_err(|e| failed(anyhow!("a coordinator died: {e}")))?;
        if let Some(snap) = monitor.latest_since(since)
            && let Some(leader) = snap.leader()
            && let Some(me) = snap.node(id)
            && me.role == "follower"
            && me.term == leader.term
            && me.leader_id == Some(leader.id)
        {
            let leader_log = snap.node(leader.id).map_or(0, |s| s.last_log_index);
            let want = *target.get_or_insert(leader_log);
            if me.last_applied >= want {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(failed(anyhow!(
                "node {id} did not rejoin and catch up within {REJOIN_WITHIN:?} of its restart"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn print_text(b: &Bench<'_>, s: &FailoverJson) {
    let ui = b.ui;
    ui.out(format!(
        "dtc bench --failover: {} SIGKILLs of the leader under {} clients; {}",
        s.kills,
        s.clients,
        b.setup.describe()
    ));
    let header = [
        "kill", "at s", "killed", "new", "term", "elected", "failover", "resolve", "in doubt",
        "rejoined",
    ];
    let widths = [4, 7, 6, 4, 5, 9, 9, 9, 8, 9];
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    ui.out(line(header.iter().map(|h| h.to_string()).collect()));
    ui.out(line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    let opt = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
    for (i, k) in s.per_kill.iter().enumerate() {
        ui.out(line(vec![
            (i + 1).to_string(),
            format!("{:.1}", k.at_ms / 1e3),
            k.killed.to_string(),
            opt(k.new_leader),
            opt(k.new_term),
            k.elected_ms
                .map_or("?".to_string(), |v| format!("{v:.0} ms")),
            format!("{:.0} ms", k.failover_ms),
            format!("{:.0} ms", k.resolve_ms),
            k.pending_from_before_kill.to_string(),
            format!("{:.0} ms", k.rejoined_ms),
        ]));
    }
    ui.out(format!(
        "failover (SIGKILL -> first commit of a transaction started after it): median {:.1} ms, max {:.1} ms",
        s.failover_ms.median, s.failover_ms.max
    ));
    ui.out(format!(
        "resolve  (SIGKILL -> no transaction from before it pending at the new leader): median {:.1} ms, max {:.1} ms",
        s.resolve_ms.median, s.resolve_ms.max
    ));
    ui.out(format!(
        "leader changes without a fault: {}",
        s.leader_changes_without_fault
    ));
    ui.out(format!(
        "load over {:.1} s: {} committed, {} aborted, {} errors{}",
        s.secs,
        s.committed,
        s.aborted,
        s.errors,
        if s.errors_by_code.is_empty() {
            String::new()
        } else {
            format!(" ({})", report::codes_text(&s.errors_by_code))
        }
    ));
}
