//! `dtc demo`: the whole system in one command, as a fault schedule over
//! the [`crate::bank`] workload, checked by [`crate::checker`].
//!
//! ```text
//! setup    3 coordinators + ledgers bank-a, bank-b (child processes, free loopback
//!          ports, a temporary directory; the ledgers with --lock-wait-ms, default
//!          250, so a debit held up only by concurrent reservations waits for
//!          their decisions); wait for a leader and the registrations;
//!          deposit the opening balances; read the total
//! load     --clients tasks run random transfers (within and across the ledgers;
//!          ~8% are overdrafts larger than all the money, which must abort),
//!          through the client SDK, retrying an unknown outcome with the same id
//!   1/3    SIGKILL the leader coordinator; wait for the next leader; list what is
//!          pending; restart the killed node (it rejoins as a follower)
//!          (the takeover figures: the new leader's dtc_last_takeover_* metrics)
//!   2/3    SIGKILL bank-b; wait until transfers touching it abort; restart it on
//!          the same port and data directory (its dtc_in_doubt_transactions)
//! drain    stop the load; wait until no transaction is pending at the coordinators
//!          and none is prepared at a ledger
//! check    total before = total after; every transaction has one outcome: the
//!          coordinator's, each ledger's it touched, and the client's agree; each
//!          account's balance is the sum of its committed entries
//! ```
//!
//! Progress goes to stderr (one line redrawn with `\r` on a terminal, a line
//! per second otherwise); the summary goes to stdout (`--json`: as JSON).
//! Exit status 0 only if every check passed; 1 otherwise (the directory with
//! the data and every child's log is then kept and named), 130 on Ctrl-C.

mod check;

use crate::bank::{
    AbortKind, Shared, Stats, Workload, balances, prepared_at, worker, workload_client,
};
use crate::cluster::{ClusterSpec, LEDGERS, Leader, LocalCluster, POLL, leader_of};
use crate::history::History;
use crate::process::{indent, tail_filtered};
use crate::report::{LeaderFailover, LedgerCrash, Summary, count, ms, preview, print_text, round3};
use anyhow::{Context, Result, anyhow};
use check::{Measured, check};
use dtc_client::Client;
use dtc_util::wall_ms;
use std::collections::BTreeSet;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The ledger that is SIGKILLed at 2/3 of the run.
const VICTIM_LEDGER: usize = 1;

/// `dtc demo`'s flags.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoOptions {
    /// How long the random transfers run.
    #[arg(long, default_value_t = 20, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub duration_secs: u64,
    /// Concurrent clients running transfers.
    #[arg(long, default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(1..=256))]
    pub clients: u64,
    /// Accounts per ledger.
    #[arg(long, default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(2..=1000))]
    pub accounts: u64,
    /// Opening balance of every account.
    #[arg(long, default_value_t = 1000,
          value_parser = clap::value_parser!(i64).range(1..=1_000_000_000_000))]
    pub initial_balance: i64,
    /// How long a ledger lets a debit wait when only funds that concurrent
    /// transfers reserve stand in its way, before voting abort
    /// (`dtc participant --lock-wait-ms`; 0: abort at once).
    #[arg(long, default_value_t = 250, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub lock_wait_ms: u64,
    /// Keep the directory with the data and logs (it is always kept when the
    /// demo fails).
    #[arg(long)]
    pub keep: bool,
    /// Print the summary as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    pub json: bool,
    /// Seed of the transfers' random choices (default: from the clock).
    #[arg(long, hide = true)]
    pub seed: Option<u64>,
}

/// Serialises stderr output: events are whole lines; the progress line is
/// redrawn in place on a terminal.
struct Ui {
    tty: bool,
    start: OnceLock<Instant>,
    lock: Mutex<()>,
}

impl Ui {
    fn new() -> Ui {
        Ui {
            tty: std::io::stderr().is_terminal(),
            start: OnceLock::new(),
            lock: Mutex::new(()),
        }
    }

    fn stamp(&self) -> String {
        match self.start.get() {
            Some(t) => format!("[{:>5.1}s]", t.elapsed().as_secs_f64()),
            None => "[ setup]".to_string(),
        }
    }

    fn line(&self, text: &str) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "{text}");
    }

    /// A timestamped line that stays.
    fn event(&self, msg: impl AsRef<str>) {
        self.line(&format!("  {} {}", self.stamp(), msg.as_ref()));
    }

    /// The progress line: redrawn on a terminal, a new line otherwise.
    fn progress(&self, msg: &str) {
        if self.tty {
            let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K  {} {msg}", self.stamp());
            let _ = err.flush();
        } else {
            self.event(msg);
        }
    }

    fn clear(&self) {
        if self.tty {
            let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
        }
    }
}

async fn ticker(ui: Arc<Ui>, shared: Arc<Shared>) {
    let every = if ui.tty {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(1)
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let s = &shared.stats;
        let leader = match shared.leader.load(Relaxed) {
            0 => "none (election)".to_string(),
            id => format!("node {id}"),
        };
        ui.progress(&format!(
            "committed {:>6} | aborted {:>6} | unknown/retrying {:>2} ({} so far) | leader {leader}",
            s.committed.load(Relaxed),
            s.aborted(),
            s.retrying.load(Relaxed),
            s.unknown_total.load(Relaxed),
        ));
    }
}

/// Keeps `shared.leader` current for the display.
async fn leader_watch(probes: Vec<(u64, Client)>, shared: Arc<Shared>) {
    loop {
        // A live node answers in milliseconds; a dead one must not hold up the display.
        let answers =
            futures::future::join_all(probes.iter().map(|(_, c)| {
                tokio::time::timeout(Duration::from_millis(150), c.cluster_status())
            }))
            .await;
        let statuses: Vec<_> = probes
            .iter()
            .zip(answers)
            .map(|((id, _), r)| (*id, r.ok().and_then(Result::ok)))
            .collect();
        let leader = leader_of(&statuses).map_or(0, |l| l.id);
        shared.leader.store(leader, Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Spawned tasks: joined with a bound, aborted when dropped (end of the
/// demo, error, Ctrl-C).
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Tasks {
    async fn join(mut self, within: Duration) -> bool {
        let all = futures::future::join_all(self.0.iter_mut());
        tokio::time::timeout(within, all).await.is_ok()
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Polls until `deadline`, checking that no child crashed.
async fn wait_until(cluster: &mut LocalCluster, deadline: Instant) -> Result<()> {
    loop {
        cluster.check_children()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        tokio::time::sleep(left.min(Duration::from_millis(100))).await;
    }
}

/// Waits until no transaction is pending at the coordinators and none is
/// prepared at a ledger. Err says what is left.
async fn wait_settled(
    cluster: &mut LocalCluster,
    client: &Client,
    within: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let deadline = started + within;
    loop {
        cluster.check_children()?;
        let last = match client.list_transactions(true).await {
            Ok(p) if p.is_empty() => {
                let mut prepared = Vec::new();
                for l in LEDGERS {
                    match prepared_at(client, l).await {
                        Ok(ids) => prepared.extend(ids.into_iter().map(|id| format!("{l}:{id}"))),
                        Err(e) => prepared.push(format!("{e:#}")),
                    }
                }
                if prepared.is_empty() {
                    return Ok(started.elapsed());
                }
                format!("still prepared at a ledger: {}", preview(&prepared))
            }
            Ok(p) => {
                let ids: Vec<String> = p
                    .iter()
                    .map(|t| format!("{} ({})", t.txn_id, t.state.as_str()))
                    .collect();
                format!("{} pending: {}", p.len(), preview(&ids))
            }
            Err(e) => format!("cannot list pending transactions: {e}"),
        };
        if Instant::now() >= deadline {
            return Err(anyhow!("not settled within {within:?}: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Everything the scenario measured, for the summary.
pub(crate) struct Scenario {
    pub(crate) leader: Option<LeaderFailover>,
    /// The leader's SIGKILL, in wall-clock ms (as the coordinators stamp
    /// their decisions) and on the history's clock.
    pub(crate) kill_ms: u64,
    pub(crate) kill_at_ms: Option<u64>,
    pub(crate) ledger: Option<LedgerCrash>,
    pub(crate) in_doubt_ids: BTreeSet<String>,
    pub(crate) anomalies: Vec<String>,
}

/// What the fault steps act on and record into.
struct Steps<'a> {
    cluster: &'a mut LocalCluster,
    client: &'a Client,
    ui: &'a Ui,
    shared: &'a Shared,
    /// When the load started.
    t0: Instant,
    sc: Scenario,
}

impl Steps<'_> {
    /// The ids pending at the coordinators now (none if they cannot say).
    async fn pending(&self) -> Vec<String> {
        match self.client.list_transactions(true).await {
            Ok(p) => p.into_iter().map(|t| t.txn_id).collect(),
            Err(e) => {
                self.ui
                    .event(format!("cannot list pending transactions: {e}"));
                Vec::new()
            }
        }
    }
}

/// 1/3: SIGKILL the leader, wait for the next one, restart the killed node.
async fn kill_leader(r: &mut Steps<'_>) -> Result<()> {
    let old = match r.cluster.leader().await {
        Some(l) => l,
        None => {
            r.cluster
                .wait_for_leader(Duration::from_secs(15), None, 0)
                .await?
        }
    };
    let name = format!("node-{}", old.id);
    let pid = r.cluster.kill(&name)?;
    let t_kill = Instant::now();
    r.sc.kill_ms = wall_ms();
    r.sc.kill_at_ms = Some(r.shared.history.now_ms());
    r.shared.leader.store(0, Relaxed);
    let killed_at = t_kill.duration_since(r.t0).as_secs_f64();
    r.ui.event(format!(
        "SIGKILL leader node {} (pid {pid}, term {})",
        old.id, old.term
    ));
    let new: Leader = r
        .cluster
        .wait_for_leader(Duration::from_secs(30), Some(old.id), old.term)
        .await
        .with_context(|| format!("after killing leader node {}", old.id))?;
    let election = t_kill.elapsed();
    r.shared.leader.store(new.id, Relaxed);
    r.ui.event(format!(
        "node {} is the new leader (term {}), {} ms after the kill",
        new.id,
        new.term,
        ms(election)
    ));
    let pending = r.pending().await;
    r.ui.event(format!(
        "{} pending at the coordinators after the failover; the new leader finishes them",
        count(pending.len(), "transaction")
    ));
    r.sc.in_doubt_ids.extend(pending.iter().cloned());
    r.cluster.restart(&name)?;
    let t_restart = Instant::now();
    let rejoined = match r
        .cluster
        .wait_for_follower(old.id, Duration::from_secs(30))
        .await
    {
        Ok(l) => {
            r.ui.event(format!(
                "node {} restarted with its data: follower of node {} after {} ms",
                old.id,
                l.id,
                ms(t_restart.elapsed())
            ));
            Some(ms(t_restart.elapsed()))
        }
        Err(e) => {
            r.sc.anomalies.push(format!("{e:#}"));
            r.ui.event(format!("{e:#}"));
            None
        }
    };
    r.sc.leader = Some(LeaderFailover {
        killed_node: old.id,
        killed_at_secs: round3(killed_at),
        new_leader: new.id,
        new_term: new.term,
        election_ms: ms(election),
        failover_ms: None,
        first_commit_seen_ms: None,
        takeover_pending: None,
        takeover_undecided: None,
        takeover_decided: None,
        pending_after: pending.len(),
        rejoined_ms: rejoined,
    });
    Ok(())
}

/// 2/3: SIGKILL a ledger until transfers touching it abort, restart it.
async fn kill_ledger(r: &mut Steps<'_>, clients: u64) -> Result<()> {
    let name = LEDGERS[VICTIM_LEDGER];
    let aborted_before = r.shared.stats.aborted_touching[VICTIM_LEDGER].load(Relaxed);
    let pid = r.cluster.kill(name)?;
    let t_kill = Instant::now();
    r.ui.event(format!("SIGKILL ledger {name} (pid {pid})"));
    let pending = r.pending().await;
    r.sc.in_doubt_ids.extend(pending.iter().cloned());
    // Down until transfers have visibly aborted because its vote never came
    // (their prepare timeout passed), at most 5 s.
    let timeouts = || r.shared.stats.aborted[AbortKind::LedgerDown.index()].load(Relaxed);
    let timeouts_before = timeouts();
    let want = clients.min(3);
    let deadline = t_kill + Duration::from_secs(5);
    while timeouts() < timeouts_before + want && Instant::now() < deadline {
        r.cluster.check_children()?;
        tokio::time::sleep(POLL).await;
    }
    r.cluster.restart(name)?;
    r.cluster
        .wait_ledger_serving(r.client, name, Duration::from_secs(30))
        .await?;
    let down = t_kill.elapsed();
    let aborted_while_down =
        r.shared.stats.aborted_touching[VICTIM_LEDGER].load(Relaxed) - aborted_before;
    let timed_out = timeouts() - timeouts_before;
    let prepared_now = prepared_at(r.client, name).await.unwrap_or_default();
    let prepared = match r.cluster.metrics(name).await {
        Ok(m) => m
            .count("dtc_in_doubt_transactions", &[])
            .map(|n| n as usize),
        Err(e) => {
            r.ui.event(format!("cannot read {name}'s metrics: {e:#}"));
            None
        }
    }
    .unwrap_or(prepared_now.len());
    r.sc.in_doubt_ids.extend(prepared_now);
    r.ui.event(format!(
        "{name} restarted (same port, same data): serving after {} ms down; \
         {} touching it aborted, {timed_out} for want of its vote",
        ms(down),
        count(aborted_while_down as usize, "transfer"),
    ));
    r.ui.event(format!(
        "{name} holds {} from before its crash: in doubt until the decision reaches it",
        count(prepared, "prepared transaction")
    ));
    r.sc.ledger = Some(LedgerCrash {
        ledger: name.to_string(),
        killed_at_secs: round3(t_kill.duration_since(r.t0).as_secs_f64()),
        down_ms: ms(down),
        aborted_while_down,
        vote_timeouts: timed_out,
        pending_after_kill: pending.len(),
        prepared_at_restart: prepared,
    });
    Ok(())
}

/// The whole demo; Err is fatal (the summary cannot be made).
async fn demo(args: &DemoOptions, cluster: &mut LocalCluster, ui: &Arc<Ui>) -> Result<Summary> {
    let setup = Instant::now();
    let client = workload_client(cluster)?;
    let leader = cluster.wait_ready(&client, Duration::from_secs(60)).await?;
    ui.event(format!(
        "node {} is leader (term {}); ledgers {} registered ({:.1} s)",
        leader.id,
        leader.term,
        LEDGERS.join(", "),
        setup.elapsed().as_secs_f64()
    ));
    let shared = Arc::new(Shared {
        stats: Stats::default(),
        history: History::new(Instant::now()),
        stop: AtomicBool::new(false),
        leader: AtomicU64::new(leader.id),
    });
    let deposited = cluster
        .seed(
            &client,
            args.accounts as usize,
            args.initial_balance,
            &shared.history,
        )
        .await?;
    wait_settled(cluster, &client, Duration::from_secs(30)).await?;
    let (total_before, _) = balances(&client, args.accounts).await?;
    let mut anomalies = Vec::new();
    if total_before != deposited {
        anomalies.push(format!(
            "the opening balances sum to {total_before}, but {deposited} was deposited"
        ));
    }
    ui.event(format!(
        "seeded {} accounts with {} each: total {total_before}",
        LEDGERS.len() as u64 * args.accounts,
        args.initial_balance
    ));

    // Load.
    let duration = Duration::from_secs(args.duration_secs);
    let workload = Arc::new(Workload {
        accounts: args.accounts,
        supply: total_before,
        max_amount: (args.initial_balance / 5).max(1),
        seed: args.seed.unwrap_or_else(|| fastrand::u64(..)),
    });
    let t0 = Instant::now();
    let _ = ui.start.set(t0);
    ui.event(format!(
        "{} clients run random transfers for {} s: leader SIGKILL at ~{:.0} s, {} SIGKILL at ~{:.0} s",
        args.clients,
        args.duration_secs,
        duration.as_secs_f64() / 3.0,
        LEDGERS[VICTIM_LEDGER],
        duration.as_secs_f64() * 2.0 / 3.0
    ));
    let workers: Vec<_> = (0..args.clients as usize)
        .map(|i| tokio::spawn(worker(i, client.clone(), shared.clone(), workload.clone())))
        .collect();
    let display = Tasks(vec![
        tokio::spawn(ticker(ui.clone(), shared.clone())),
        tokio::spawn(leader_watch(cluster.probes(), shared.clone())),
    ]);
    let sc = Scenario {
        leader: None,
        kill_ms: 0,
        kill_at_ms: None,
        ledger: None,
        in_doubt_ids: BTreeSet::new(),
        anomalies,
    };
    let workers = Tasks(workers);

    wait_until(cluster, t0 + duration / 3).await?;
    let mut steps = Steps {
        cluster,
        client: &client,
        ui,
        shared: &shared,
        t0,
        sc,
    };
    kill_leader(&mut steps).await?;
    wait_until(steps.cluster, t0 + duration * 2 / 3).await?;
    kill_ledger(&mut steps, args.clients).await?;
    wait_until(steps.cluster, t0 + duration).await?;
    let mut sc = steps.sc;

    shared.stop.store(true, Relaxed);
    let load_secs = t0.elapsed().as_secs_f64();
    ui.event("load stopped; waiting for the clients' last transfers");
    if !workers.join(Duration::from_secs(90)).await {
        sc.anomalies
            .push("the clients did not finish their last transfers within 90 s".into());
    }
    let drain = match wait_settled(cluster, &client, Duration::from_secs(60)).await {
        Ok(d) => {
            ui.event(format!(
                "settled: nothing pending at the coordinators, nothing prepared at the ledgers ({} ms)",
                ms(d)
            ));
            Some(ms(d))
        }
        Err(e) => {
            sc.anomalies.push(format!("{e:#}"));
            ui.event(format!("{e:#}"));
            None
        }
    };
    drop(display);
    ui.clear();
    cluster.check_children()?;
    takeover_figures(cluster, &mut sc).await;

    let run = Measured {
        shared: &shared,
        deposited,
        total_before,
        supply: workload.supply,
        load_secs,
    };
    let mut summary = check(args, cluster.root(), &client, &run, sc).await;
    summary.in_doubt.drain_ms = drain;
    summary.log_dir_kept = cluster.is_kept();
    Ok(summary)
}

/// What the new leader's takeover found, from its metrics, if its last
/// takeover is the one of the failover's term.
async fn takeover_figures(cluster: &LocalCluster, sc: &mut Scenario) {
    let Some(f) = sc.leader.as_mut() else { return };
    let Ok(m) = cluster.metrics(&format!("node-{}", f.new_leader)).await else {
        return;
    };
    if m.count("dtc_last_takeover_term", &[]) != Some(f.new_term) {
        return;
    }
    let kind = |k| m.count("dtc_last_takeover_transactions", &[("kind", k)]);
    if let (Some(u), Some(d)) = (kind("undecided"), kind("decided")) {
        f.takeover_pending = Some(u + d);
        f.takeover_undecided = Some(u);
        f.takeover_decided = Some(d);
    }
}

/// `dtc demo`: runs until done or `shutdown`; the exit status says how it went.
pub async fn run(args: &DemoOptions, shutdown: impl Future<Output = ()>) -> ExitCode {
    let ui = Arc::new(Ui::new());
    let spec = ClusterSpec::local("dtc-demo-").map(|s| ClusterSpec {
        lock_wait_ms: args.lock_wait_ms,
        ..s
    });
    let mut cluster = match spec.and_then(|s| LocalCluster::start(&s)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dtc demo: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if args.keep {
        cluster.keep();
    }
    ui.line(&format!(
        "dtc demo: 3 coordinators + ledgers {} as child processes on loopback; data and logs in {}{}",
        LEDGERS.join(", "),
        cluster.root().display(),
        if args.keep {
            ""
        } else {
            " (removed at the end unless the demo fails)"
        }
    ));
    let result = tokio::select! {
        r = demo(args, &mut cluster, &ui) => Some(r),
        _ = shutdown => None,
    };
    ui.clear();
    match result {
        None => {
            let dir = cluster.root().display().to_string();
            let kept = cluster.is_kept();
            drop(cluster);
            eprintln!(
                "dtc demo: interrupted; every process stopped{}",
                if kept {
                    format!(" (data and logs kept in {dir})")
                } else {
                    String::new()
                }
            );
            ExitCode::from(130)
        }
        Some(Err(e)) => {
            cluster.keep();
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": false,
                        "error": format!("{e:#}"),
                        "log_dir": cluster.root().display().to_string(),
                        "log_dir_kept": true,
                    })
                );
            }
            eprintln!("dtc demo: FAILED: {e:#}");
            eprintln!(
                "dtc demo: data and logs kept in {} (node-N.log, {}.log)",
                cluster.root().display(),
                LEDGERS.join(".log, ")
            );
            for (id, _) in cluster.nodes.clone() {
                let log = cluster.log_path(&format!("node-{id}"));
                let last = tail_filtered(&log, 4);
                if !last.is_empty() {
                    eprintln!("---- {} (last lines)\n{}", log.display(), indent(&last));
                }
            }
            ExitCode::FAILURE
        }
        Some(Ok(mut summary)) => {
            if !summary.ok {
                cluster.keep();
                summary.log_dir_kept = true;
            }
            if args.json {
                match serde_json::to_string_pretty(&summary) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("dtc demo: {e}"),
                }
            } else {
                print_text(&summary);
            }
            if summary.ok {
                ExitCode::SUCCESS
            } else {
                if args.json {
                    eprintln!(
                        "dtc demo: FAILED ({} anomalies); data and logs kept in {}",
                        summary.anomalies.len(),
                        summary.log_dir
                    );
                }
                ExitCode::FAILURE
            }
        }
    }
}
