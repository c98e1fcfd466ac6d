//! # dtc-bench: `dtc bench`
//!
//! Throughput, latency and failover time of a dtc cluster, as a user would
//! measure them. The `dtc` binary parses [`BenchArgs`] and calls [`run`].
//! It is a crate of its own, not a module of dtc-harness, because it brings
//! what only it needs (in-process gRPC participants, HDR histograms, a
//! progress bar); the local cluster it measures is dtc-harness's.
//!
//! ```text
//! cluster    --coordinators (a running cluster on this machine) or --local
//!            (3 `dtc coordinator` children, dtc_harness::LocalCluster); wait for a leader
//! participants  --branches in-process gRPC servers on 127.0.0.1 (participant.rs),
//!            registered as bench-<pid>-<i>
//! monitor    every node's ClusterStatus every 100 ms (20 ms with --failover):
//!            the leader the clients follow, elections seen (probe.rs)
//! load       --clients tasks, one connection each, Execute back to back (load.rs)
//!   throughput (default): per level, --warmup-secs then --secs measured; a row
//!            (or JSON line) per level; wait for pending = 0 between levels
//!   --failover: SIGKILL the leader --kills times under load (failover.rs)
//! output     table / JSON lines on stdout, progress on stderr (report.rs)
//! ```
//!
//! Every wait has a deadline, and the run ends by itself; all traffic stays
//! on 127.0.0.1 (a `--coordinators` address that is not loopback is refused:
//! the coordinators could not reach the bench's participants anyway).

mod failover;
mod load;
mod participant;
mod probe;
mod report;

use anyhow::{Context, anyhow};
use dtc_harness::process::{indent, tail};
use dtc_harness::{ClusterSpec, LocalCluster};
use load::{EXECUTE_TIMEOUT, Load, Shared, Tally, Workload};
use probe::{Monitor, Nodes, Snapshot};
use report::{LevelJson, Setup, Ui};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// `dtc bench --help` (main.rs sets it on the subcommand: a variant's doc
/// comment would replace one given here).
pub const LONG_ABOUT: &str = "\
Measure a dtc cluster: transactions per second and latency, or leader failover time.

The bench serves its own participants in this process: --branches gRPC Participant \
servers on 127.0.0.1 that vote PREPARED and acknowledge Commit/Abort at once, keeping \
nothing, registered with the cluster as bench-<pid>-<i>. --clients concurrent clients, \
each with its own connection to the leader (found with ClusterStatus and followed when \
it moves), run Execute back to back, a fresh txn id each time, no retries. So the \
figures are the coordinator's cost (Raft replication, the 2PC driver, its RPCs), not a \
participant's disk. The clients and participants share this machine's CPUs with the \
cluster.

Throughput (default): for each --clients level, --warmup-secs of load, then --secs \
measured. A transaction counts when it ends inside the measured window: committed, \
aborted, or an error (by gRPC code; a failed connection counts as Unavailable). txn/s is \
committed per second of the window; latency is from sending Execute to its answer, for \
committed transactions (p50/p95/p99/max). Between levels the bench waits until the \
leader has no pending transaction.

Failover (--local --failover): under the load of --clients (one level, default 32), \
SIGKILL the leader's process --kills times. For each kill: failover_ms, from the \
SIGKILL until the first transaction started after it commits (through the surviving \
nodes); resolve_ms, from the SIGKILL until the new leader has no pending transaction \
left from before the kill (ListTransactions, pending only). Then the killed node is \
restarted and the bench waits until it has caught up and the cluster has been quiet \
(one leader, no election) for a second before the next kill. Every node's ClusterStatus \
is polled every 20 ms; a term change outside a kill's window (from the SIGKILL until \
quiet again) counts in leader_changes_without_fault.

Output: a table on stdout and a progress bar on stderr (when it is a terminal), or with \
--json one JSON object per line on stdout: per level {clients, secs, committed, aborted, \
errors, throughput_tps, latency_ms {p50, p95, p99, max}, ...}; for --failover {kills, \
failover_ms {median, max}, resolve_ms {median, max}, leader_changes_without_fault, \
per_kill [...], ...}.

Exit status: 0 the bench ran; 1 it could not measure (nothing committed, no failover \
within its deadline, a coordinator died; a --local cluster's data and logs are then \
kept); 2 bad flags; 3 the cluster cannot be reached or has no leader; 130 interrupted.";

const AFTER_HELP: &str = "\
Examples:
  dtc bench --local --clients 1,8,64,256 --secs 5
  dtc bench --coordinators 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 --json
  dtc bench --local --failover --kills 5 --timeline failover.csv";

#[derive(clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct BenchArgs {
    /// Coordinator addresses, HOST:PORT, comma separated (any subset of the
    /// cluster will do). The cluster must run on this machine: the bench's
    /// participants listen on 127.0.0.1.
    #[arg(
        long,
        value_delimiter = ',',
        env = "DTC_COORDINATORS",
        required_unless_present = "local",
        value_name = "ADDR,ADDR,..."
    )]
    coordinators: Vec<String>,
    /// Start a cluster of three `dtc coordinator` child processes on free
    /// loopback ports instead (data and logs in a temporary directory,
    /// removed afterwards unless --keep or the bench fails); --coordinators
    /// and DTC_COORDINATORS are then ignored.
    #[arg(long)]
    local: bool,
    /// Concurrent clients, each with its own connection to the leader. A
    /// comma list (1,8,64,256) runs one level after another, a row each.
    /// [default: 64; 32 with --failover, which takes one level]
    #[arg(long, value_delimiter = ',', value_name = "N[,N...]",
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    clients: Vec<u64>,
    /// Measured seconds per client level.
    #[arg(long, default_value_t = 10, value_name = "S", conflicts_with = "failover",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    secs: u64,
    /// Seconds of load before each level's measurement starts; not counted
    /// (connections, caches and the coordinators' participant channels warm up).
    #[arg(long, default_value_t = 1, value_name = "S", conflicts_with = "failover",
          value_parser = clap::value_parser!(u64).range(0..=600))]
    warmup_secs: u64,
    /// Branches per transaction, each to its own bench participant.
    #[arg(long, default_value_t = 2, value_name = "B",
          value_parser = clap::value_parser!(u64).range(1..=64))]
    branches: u64,
    /// Payload bytes of each branch (at most the coordinators' limit, 4 MiB by default).
    #[arg(long, default_value_t = 16, value_name = "P",
          value_parser = clap::value_parser!(u64).range(0..=4 * 1024 * 1024))]
    payload_bytes: u64,
    /// Set ExecuteRequest.reply_at_decision: Execute answers once the
    /// decision is replicated, and phase 2 (Commit to the participants) runs
    /// after the answer instead of before it.
    #[arg(long)]
    reply_at_decision: bool,
    /// Measure leader failover under load instead of throughput (needs --local).
    #[arg(long, requires = "local")]
    failover: bool,
    /// How many times --failover SIGKILLs the leader.
    #[arg(long, default_value_t = 5, value_name = "K", requires = "failover",
          value_parser = clap::value_parser!(u64).range(1..=100))]
    kills: u64,
    /// Also write commits per 100 ms over the whole run as CSV
    /// `t_ms,commits,event`, events being `kill` and `restart` (--failover)
    /// or `clients=N` (the start of a level), for a plot.
    #[arg(long, value_name = "FILE")]
    timeline: Option<PathBuf>,
    /// Print one JSON object per line on stdout (a level each, or the
    /// failover summary) instead of the table; no progress bar.
    #[arg(long)]
    json: bool,
    /// Keep the --local cluster's data and logs (kept anyway when the bench fails).
    #[arg(long, requires = "local")]
    keep: bool,
}

/// Why the bench stopped without a result; `code` is the exit status.
struct Failure {
    code: u8,
    err: anyhow::Error,
}

fn failed(err: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 1,
        err: err.into(),
    }
}

fn usage(err: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        err: err.into(),
    }
}

fn unreachable(err: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 3,
        err: err.into(),
    }
}

fn interrupted() -> Failure {
    Failure {
        code: 130,
        err: anyhow!("interrupted"),
    }
}

/// Everything the two modes share.
struct Bench<'a> {
    args: &'a BenchArgs,
    ui: &'a Ui,
    setup: Setup,
    nodes: Arc<Nodes>,
    monitor: Monitor,
    work: Arc<Workload>,
    run_start: Instant,
    /// Set by the first Ctrl-C against a running cluster.
    interrupted: &'a AtomicBool,
}

/// `dtc bench`.
pub async fn run(args: &BenchArgs) -> ExitCode {
    let ui = Ui::new(args.json);
    let levels: Vec<usize> = if args.clients.is_empty() {
        vec![if args.failover { 32 } else { 64 }]
    } else {
        args.clients.iter().map(|&c| c as usize).collect()
    };
    if args.failover && levels.len() > 1 {
        eprintln!(
            "error: --failover runs one load level; give --clients a single number (got {})",
            levels
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        return ExitCode::from(2);
    }
    let mut local: Option<LocalCluster> = None;
    let interrupted = AtomicBool::new(false);
    // Ctrl-C / SIGTERM. A --local run stops at once (its cluster goes with
    // it). Against a running cluster the first signal ends the current
    // level and lets the cluster finish the bench's transactions while its
    // participants still answer; a second one stops at once.
    let signals = async {
        dtc_harness::shutdown_signal().await;
        if args.local {
            return;
        }
        interrupted.store(true, Relaxed);
        ui.warn("interrupted: stopping the clients (again to stop at once)");
        dtc_harness::shutdown_signal().await;
    };
    let result = tokio::select! {
        r = bench(args, &levels, &ui, &mut local, &interrupted) => Some(r),
        _ = signals => None,
    };
    ui.clear();
    match result {
        None => {
            drop(local);
            eprintln!("dtc bench: interrupted; every process it started is stopped");
            ExitCode::from(130)
        }
        Some(Ok(())) => ExitCode::SUCCESS,
        Some(Err(f)) if f.code == 130 => {
            eprintln!("dtc bench: interrupted; the clients are stopped");
            ExitCode::from(130)
        }
        Some(Err(f)) => {
            eprintln!("dtc bench: {:#}", f.err);
            if let Some(cluster) = local.as_mut() {
                cluster.keep();
                eprintln!(
                    "dtc bench: the local cluster's data and logs are kept in {}",
                    cluster.root().display()
                );
                for (id, _) in cluster.nodes.clone() {
                    let log = cluster.log_path(&format!("node-{id}"));
                    let last = tail(&log, 5);
                    if !last.is_empty() {
                        eprintln!("---- {} (last lines)\n{}", log.display(), indent(&last));
                    }
                }
            }
            ExitCode::from(f.code)
        }
    }
}

async fn bench(
    args: &BenchArgs,
    levels: &[usize],
    ui: &Ui,
    local: &mut Option<LocalCluster>,
    interrupted: &AtomicBool,
) -> Result<(), Failure> {
    let setup = Setup {
        branches: args.branches as usize,
        payload_bytes: args.payload_bytes as usize,
        reply_at_decision: args.reply_at_decision,
    };
    let addrs = if args.local {
        let cluster = local.insert(
            ClusterSpec::local("dtc-bench-")
                .and_then(|spec| {
                    // The bench serves its own participants in process.
                    LocalCluster::start(&ClusterSpec {
                        ledgers: Vec::new(),
                        ..spec
                    })
                })
                .map_err(|e| failed(e.context("cannot start the local cluster")))?,
        );
        if args.keep {
            cluster.keep();
            ui.note(format!(
                "--keep: the coordinators on {} keep their data and logs in {}",
                cluster.coordinators_arg(),
                cluster.root().display()
            ));
        } else {
            ui.say(format!(
                "started 3 coordinators on {} (data and logs in {})",
                cluster.coordinators_arg(),
                cluster.root().display()
            ));
        }
        cluster
            .wait_for_leader(Duration::from_secs(30), None, 0)
            .await
            .map_err(|e| failed(anyhow!("the local cluster: {e}")))?;
        cluster.coordinator_addrs()
    } else {
        require_loopback(&args.coordinators).await?;
        args.coordinators.clone()
    };
    let nodes = Arc::new(Nodes::new(&addrs).map_err(usage)?);
    let first = find_leader(&nodes, &addrs).await?;
    let Some(leader) = first.leader() else {
        return Err(unreachable(anyhow!("no leader")));
    };
    ui.say(format!(
        "leader: node {} at {} (term {})",
        leader.id, leader.addr, leader.term
    ));

    let participants = participant::Participants::start(setup.branches)
        .await
        .map_err(failed)?;
    participants
        .register(&nodes, &leader.addr, Duration::from_secs(15))
        .await
        .map_err(unreachable)?;
    ui.say(format!(
        "{} participant{} serving and registered: {}",
        participants.list.len(),
        if participants.list.len() == 1 {
            ""
        } else {
            "s"
        },
        participants
            .list
            .iter()
            .map(|(n, a)| format!("{n} at {a}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    let every = Duration::from_millis(if args.failover { 20 } else { 100 });
    let monitor = Monitor::start(nodes.clone(), first, every).map_err(unreachable)?;
    let nonce = dtc_util::wall_ms();
    let work = Arc::new(Workload {
        id_prefix: format!("bench-{}-{nonce}", std::process::id()),
        coordinators: nodes.addrs(),
        participants: participants.list.iter().map(|(n, _)| n.clone()).collect(),
        payload: (0..setup.payload_bytes)
            .map(|i| b'a' + (i % 26) as u8)
            .collect(),
        reply_at_decision: setup.reply_at_decision,
    });
    let b = Bench {
        args,
        ui,
        setup,
        nodes,
        monitor,
        work,
        run_start: Instant::now(),
        interrupted,
    };
    let result = if args.failover {
        let Some(cluster) = local.as_mut() else {
            return Err(usage(anyhow!("--failover needs --local")));
        };
        failover::run(&b, cluster, levels[0]).await
    } else {
        throughput(&b, levels, local.as_mut()).await
    };
    // The participants stop when dropped, below. A cluster that outlives the
    // bench would retry phase 2 to them for ever, so whatever is still
    // pending finishes first (the modes drained already when they ended
    // normally; this covers an error or an interruption).
    if local.is_none()
        && result.is_err()
        && let Err(e) = drain(&b, Duration::from_secs(15)).await
    {
        ui.warn(format!(
            "{e}; transactions of the bench's participants (now gone) may stay pending"
        ));
    }
    drop(participants);
    result
}

/// Refuses addresses that are not loopback: the bench's participants listen
/// on 127.0.0.1, so a cluster elsewhere could not reach them, and the bench
/// sends no traffic off this machine.
async fn require_loopback(addrs: &[String]) -> Result<(), Failure> {
    for a in addrs {
        let host_port = a
            .split_once("://")
            .map_or(a.as_str(), |(_, rest)| rest)
            .trim_end_matches('/');
        let resolved: Vec<std::net::SocketAddr> = tokio::net::lookup_host(host_port)
            .await
            .with_context(|| format!("cannot resolve coordinator address {a:?} (want HOST:PORT)"))
            .map_err(usage)?
            .collect();
        if resolved.is_empty() || !resolved.iter().all(|s| s.ip().is_loopback()) {
            return Err(usage(anyhow!(
                "{a} is not a loopback address: dtc bench serves its participants on \
                 127.0.0.1, so it measures a cluster on this machine only"
            )));
        }
    }
    Ok(())
}

/// Statuses of every node with a leader among them. Exit 3 when no node
/// answers within 5 s or none is leader within 15 s.
async fn find_leader(nodes: &Nodes, addrs: &[String]) -> Result<Snapshot, Failure> {
    let start = Instant::now();
    let mut answered = false;
    loop {
        let statuses = nodes.statuses().await;
        answered |= statuses.iter().any(|(_, r)| r.is_ok());
        // Any subset of the members will do: learn the others (the leader
        // among them) from whoever answers; the next round asks them too.
        for s in statuses.iter().filter_map(|(_, r)| r.as_ref().ok()) {
            nodes.learn(s);
        }
        let errors: Vec<String> = statuses
            .iter()
            .filter_map(|(a, r)| r.as_ref().err().map(|e| format!("{a}: {e}")))
            .collect();
        let snap = Snapshot::of(statuses);
        if snap.leader().is_some() {
            return Ok(snap);
        }
        if !answered && start.elapsed() >= Duration::from_secs(5) {
            return Err(unreachable(anyhow!(
                "cannot reach any coordinator of {}; is the cluster running?\n  {}",
                addrs.join(","),
                errors.join("\n  ")
            )));
        }
        if start.elapsed() >= Duration::from_secs(15) {
            return Err(unreachable(anyhow!(
                "no coordinator of {} is leader after 15 s{}",
                addrs.join(","),
                if errors.is_empty() {
                    String::new()
                } else {
                    format!("; not answering:\n  {}", errors.join("\n  "))
                }
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (at most `within`) until the leader reports no pending
/// transaction; Err says what was left.
async fn drain(b: &Bench<'_>, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let snap = Snapshot::of(b.nodes.statuses().await);
        let pending = snap
            .leader()
            .and_then(|l| snap.node(l.id))
            .map(|s| s.pending);
        if pending == Some(0) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(match pending {
                Some(n) => anyhow!("the leader still reports {n} pending transactions"),
                None => anyhow!("no leader answered"),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The default mode: a row per client level.
async fn throughput(
    b: &Bench<'_>,
    levels: &[usize],
    mut local: Option<&mut LocalCluster>,
) -> Result<(), Failure> {
    let args = b.args;
    let mut timeline = Tally::new();
    let mut events: Vec<(Duration, String)> = Vec::new();
    let mut empty_levels = Vec::new();
    let mut errors_lines = Vec::new();
    if !args.json {
        b.ui.out(format!(
            "dtc bench: {}; {} s measured per level after {} s of warm-up",
            b.setup.describe(),
            args.secs,
            args.warmup_secs
        ));
    }
    for (i, &clients) in levels.iter().enumerate() {
        // On a terminal the bar says as much.
        b.ui.say_without_bar(format!(
            "level {}/{}: {clients} clients, {} s warm-up + {} s measured",
            i + 1,
            levels.len(),
            args.warmup_secs,
            args.secs
        ));
        let shared = Arc::new(Shared::new(b.run_start, i as u64));
        let load = Load::spawn(
            clients,
            shared.clone(),
            b.monitor.board.clone(),
            b.work.clone(),
            load::CONNECT_TIMEOUT * 2,
        )
        .await;
        let bar = b.ui.bar(
            Some((args.warmup_secs + args.secs) * 10),
            format!("level {}/{}: {clients:>4} clients", i + 1, levels.len()),
        );
        events.push((b.run_start.elapsed(), format!("clients={clients}")));
        let level_start = Instant::now();
        load.start();
        let warm_until = Instant::now() + Duration::from_secs(args.warmup_secs);
        let tick = Duration::from_millis(100);
        let phase_start = Instant::now();
        while Instant::now() < warm_until && !b.interrupted.load(Relaxed) {
            bar.set_position((phase_start.elapsed().as_millis() / 100) as u64);
            bar.set_message("warming up");
            check_local(&mut local)?;
            tokio::time::sleep(tick.min(warm_until.saturating_duration_since(Instant::now())))
                .await;
        }
        shared.reset_counts();
        shared.window_start_us.store(shared.now_us(), Relaxed);
        let t0 = Instant::now();
        let window_end = t0 + Duration::from_secs(args.secs);
        while Instant::now() < window_end && !b.interrupted.load(Relaxed) {
            tokio::time::sleep(tick.min(window_end.saturating_duration_since(Instant::now())))
                .await;
            let secs = t0.elapsed().as_secs_f64();
            let committed = shared.committed.load(Relaxed);
            bar.set_position((phase_start.elapsed().as_millis() / 100) as u64);
            bar.set_message(format!(
                "{secs:>5.1}/{} s | committed {committed} | {:.0} txn/s | aborted {} | errors {}",
                args.secs,
                committed as f64 / secs.max(0.001),
                shared.aborted.load(Relaxed),
                shared.errors.load(Relaxed),
            ));
            check_local(&mut local)?;
        }
        shared.window_end_us.store(shared.now_us(), Relaxed);
        let window = t0.elapsed();
        bar.set_message("stopping the clients");
        let (tally, lost) = load.finish(EXECUTE_TIMEOUT + Duration::from_secs(5)).await;
        b.ui.clear();
        if b.interrupted.load(Relaxed) {
            // A cut-short level is not a result; bench() drains the cluster.
            return Err(interrupted());
        }
        let mut level = LevelJson::new(clients, window, &tally, lost, &b.setup);
        level.leader_changes = b
            .monitor
            .leader_changes()
            .iter()
            .filter(|c| c.at >= level_start)
            .count();
        if args.json {
            let line = serde_json::to_string(&level).map_err(failed)?;
            b.ui.out(line);
        } else {
            // The header goes with the first row, after the setup lines.
            if i == 0 {
                b.ui.out(report::table_header());
            }
            b.ui.out(report::table_row(&level));
        }
        if level.errors > 0 {
            errors_lines.push(format!(
                "errors at {clients} clients: {}",
                report::codes_text(&level.errors_by_code)
            ));
        }
        if lost > 0 {
            b.ui.warn(format!(
                "{lost} of {clients} clients did not stop within the Execute timeout; their counts are missing"
            ));
        }
        if level.committed == 0 {
            empty_levels.push(clients);
        }
        timeline.merge(tally);
        // The next level (and the end of the run, which stops the
        // participants) starts from a cluster with nothing left to finish.
        if let Err(e) = drain(b, Duration::from_secs(15)).await {
            b.ui.warn(format!("15 s after the level at {clients} clients: {e}"));
        }
    }
    if !args.json {
        for l in &errors_lines {
            b.ui.out(l);
        }
    }
    if let Some(path) = &args.timeline {
        report::write_timeline(path, &timeline.buckets, &events).map_err(failed)?;
        b.ui.say(format!("timeline written to {}", path.display()));
    }
    if !empty_levels.is_empty() {
        return Err(failed(anyhow!(
            "no transaction committed at {} clients",
            empty_levels
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

/// Err if a --local coordinator exited by itself.
fn check_local(local: &mut Option<&mut LocalCluster>) -> Result<(), Failure> {
    match local {
        Some(c) => c
            .check_children()
            .map_err(|e| failed(anyhow!("a coordinator died: {e}"))),
        None => Ok(()),
    }
}
