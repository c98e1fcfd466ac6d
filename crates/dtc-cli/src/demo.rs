//! `dtc demo`: the whole system in one command.
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
//!   2/3    SIGKILL bank-b; wait until transfers touching it abort; restart it on
//!          the same port and data directory
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

use crate::local_cluster::{self, LEDGERS, Leader, LocalCluster, account, indent};
use dtc_client::proto::{AuditEntry, AuditOutcome};
use dtc_client::{AccountBalance, Client, ClientConfig, ClientError, TxnState, TxnStatus};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// How long the random transfers run.
    #[arg(long, default_value_t = 20, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(3..=3600))]
    duration_secs: u64,
    /// Concurrent clients running transfers.
    #[arg(long, default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(1..=256))]
    clients: u64,
    /// Accounts per ledger.
    #[arg(long, default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(2..=1000))]
    accounts: u64,
    /// Opening balance of every account.
    #[arg(long, default_value_t = 1000,
          value_parser = clap::value_parser!(i64).range(1..=1_000_000_000_000))]
    initial_balance: i64,
    /// How long a ledger lets a debit wait when only funds that concurrent
    /// transfers reserve stand in its way, before voting abort
    /// (`dtc participant --lock-wait-ms`; 0: abort at once).
    #[arg(long, default_value_t = 250, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    lock_wait_ms: u64,
    /// Keep the directory with the data and logs (it is always kept when the
    /// demo fails).
    #[arg(long)]
    keep: bool,
    /// Print the summary as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    json: bool,
}

/// Prepare timeout of every demo transfer.
const PREPARE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long one `execute` may take before its outcome counts as unknown
/// (then it is retried with the same id).
const ATTEMPT_DEADLINE: Duration = Duration::from_secs(3);
/// How long a transfer is retried before the client gives up on it.
const TRANSFER_GIVE_UP: Duration = Duration::from_secs(60);
/// Share of transfers (percent) that are overdrafts and must abort.
const OVERDRAFT_PERCENT: u64 = 8;
/// Share of transfers (percent) that cross the two ledgers.
const CROSS_PERCENT: u64 = 50;
/// The ledger that is SIGKILLed at 2/3 of the run.
const VICTIM_LEDGER: usize = 1;

// ---------------------------------------------------------------------------
// Progress display

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

// ---------------------------------------------------------------------------
// The workload

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AbortKind {
    /// The balance could not cover the debit whatever else was pending.
    Funds,
    /// Contention: the debit would have fitted but for what other prepared
    /// transactions reserved (the ledger says "until prepared transactions
    /// resolve").
    Reserved,
    /// Contention: an account was locked by another prepared transaction
    /// ("held by"; the ledger no longer locks accounts, so this should stay 0).
    Busy,
    LedgerDown,
    Failover,
    Other,
}

impl AbortKind {
    fn of(reason: &str) -> AbortKind {
        if reason.contains("until prepared transactions resolve") {
            AbortKind::Reserved
        } else if reason.contains("insufficient funds") {
            AbortKind::Funds
        } else if reason.contains("held by") {
            AbortKind::Busy
        } else if reason.contains("timed out waiting for the vote") {
            AbortKind::LedgerDown
        } else if reason.contains("failover")
            || reason.contains("takeover")
            || reason.contains("presumed abort")
        {
            AbortKind::Failover
        } else {
            AbortKind::Other
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone)]
enum Outcome {
    Committed,
    Aborted(String),
    /// The client gave up without learning the outcome.
    Unknown,
    /// A refusal that should never happen here (bad request, unregistered
    /// participant, id reused).
    Error(String),
}

/// One transfer as the client saw it.
#[derive(Debug, Clone)]
struct Record {
    id: String,
    /// (ledger index, account index)
    from: (usize, usize),
    to: (usize, usize),
    amount: i64,
    overdraft: bool,
    outcome: Outcome,
    finished: Instant,
    /// An attempt ended with the outcome unknown and was retried.
    retried: bool,
}

impl Record {
    /// The ledger entries this transfer applies, per ledger, sorted.
    fn expected_entries(&self) -> BTreeMap<usize, Vec<(String, i64)>> {
        let mut out: BTreeMap<usize, Vec<(String, i64)>> = BTreeMap::new();
        out.entry(self.from.0)
            .or_default()
            .push((account(self.from.1), -self.amount));
        out.entry(self.to.0)
            .or_default()
            .push((account(self.to.1), self.amount));
        for v in out.values_mut() {
            v.sort();
        }
        out
    }
}

#[derive(Default)]
struct Stats {
    committed: AtomicU64,
    committed_cross: AtomicU64,
    aborted: [AtomicU64; 6],
    /// Transfers currently retrying after an unknown outcome.
    retrying: AtomicU64,
    /// Transfers that had an unknown outcome at least once.
    unknown_total: AtomicU64,
    /// Aborted transfers that touched each ledger.
    aborted_touching: [AtomicU64; 2],
}

impl Stats {
    fn aborted(&self) -> u64 {
        self.aborted.iter().map(|a| a.load(Relaxed)).sum()
    }
}

struct Shared {
    stats: Stats,
    records: Mutex<Vec<Record>>,
    stop: AtomicBool,
    /// Current leader for the display (0: none known).
    leader: AtomicU64,
}

/// SplitMix64: enough randomness for picking accounts, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Workload {
    accounts: u64,
    /// All the money: an overdraft asks for more.
    supply: i64,
    max_amount: i64,
}

/// Runs transfers until `shared.stop`; every transfer ends with an outcome
/// (or, after [`TRANSFER_GIVE_UP`], as unknown).
async fn worker(idx: usize, client: Client, shared: Arc<Shared>, w: Arc<Workload>) {
    let mut rng = Rng::new(wall_ms() ^ (idx as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut n = 0u64;
    while !shared.stop.load(Relaxed) {
        n += 1;
        let id = format!("demo-c{idx:02}-{n:06}");
        let from_l = rng.below(2) as usize;
        let to_l = if rng.below(100) < CROSS_PERCENT {
            1 - from_l
        } else {
            from_l
        };
        let from_a = rng.below(w.accounts) as usize;
        let mut to_a = rng.below(w.accounts) as usize;
        if from_l == to_l && to_a == from_a {
            to_a = (to_a + 1 + rng.below(w.accounts - 1) as usize) % w.accounts as usize;
        }
        let overdraft = rng.below(100) < OVERDRAFT_PERCENT;
        let amount = if overdraft {
            w.supply + 1
        } else {
            1 + rng.below(w.max_amount as u64) as i64
        };
        let (from_name, to_name) = (LEDGERS[from_l], LEDGERS[to_l]);
        let (from_acct, to_acct) = (account(from_a), account(to_a));
        let started = Instant::now();
        let mut retried = false;
        let outcome = loop {
            let result = client
                .transfer((from_name, &from_acct), (to_name, &to_acct), amount)
                .id(id.clone())
                .timeout(PREPARE_TIMEOUT)
                .deadline(ATTEMPT_DEADLINE)
                .execute()
                .await;
            match result {
                Ok(o) if o.committed => break Outcome::Committed,
                Ok(o) => break Outcome::Aborted(o.reason),
                Err(e) if e.is_outcome_unknown() || matches!(e, ClientError::Overloaded(_)) => {
                    if !retried {
                        retried = true;
                        shared.stats.retrying.fetch_add(1, Relaxed);
                        shared.stats.unknown_total.fetch_add(1, Relaxed);
                    }
                    if started.elapsed() >= TRANSFER_GIVE_UP {
                        break Outcome::Unknown;
                    }
                    // A short pause between attempts; the SDK backs off inside.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => break Outcome::Error(e.to_string()),
            }
        };
        if retried {
            shared.stats.retrying.fetch_sub(1, Relaxed);
        }
        let s = &shared.stats;
        match &outcome {
            Outcome::Committed => {
                s.committed.fetch_add(1, Relaxed);
                if from_l != to_l {
                    s.committed_cross.fetch_add(1, Relaxed);
                }
            }
            Outcome::Aborted(reason) => {
                s.aborted[AbortKind::of(reason).index()].fetch_add(1, Relaxed);
                s.aborted_touching[from_l].fetch_add(1, Relaxed);
                if to_l != from_l {
                    s.aborted_touching[to_l].fetch_add(1, Relaxed);
                }
            }
            Outcome::Unknown | Outcome::Error(_) => {}
        }
        shared
            .records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Record {
                id,
                from: (from_l, from_a),
                to: (to_l, to_a),
                amount,
                overdraft,
                outcome,
                finished: Instant::now(),
                retried,
            });
    }
}

/// Redraws the progress line until aborted.
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
        let leader = local_cluster::leader_of(&statuses).map_or(0, |l| l.id);
        shared.leader.store(leader, Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Aborts the spawned tasks when dropped (end of the demo, error, Ctrl-C).
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

// ---------------------------------------------------------------------------
// The summary

#[derive(Debug, Serialize)]
pub struct Summary {
    /// True when every check passed.
    pub ok: bool,
    pub load_secs: f64,
    pub clients: u64,
    pub ledgers: Vec<String>,
    pub accounts_per_ledger: u64,
    /// The ledgers' `--lock-wait-ms`.
    pub ledger_lock_wait_ms: u64,
    pub transfers: Transfers,
    pub leader_failover: Option<LeaderFailover>,
    pub ledger_crash: Option<LedgerCrash>,
    pub in_doubt: InDoubt,
    pub total_before: i64,
    pub total_after: Option<i64>,
    pub totals_equal: bool,
    pub agreement: Agreement,
    /// Every failed check, in words.
    pub anomalies: Vec<String>,
    pub log_dir: String,
    pub log_dir_kept: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Transfers {
    pub total: u64,
    pub committed: u64,
    pub committed_cross_ledger: u64,
    pub aborted: u64,
    pub aborted_insufficient_funds: u64,
    /// Contention: refused for funds that concurrent transfers had reserved.
    pub aborted_funds_reserved: u64,
    /// Contention: refused for an account locked by another transaction.
    pub aborted_account_busy: u64,
    /// Both kinds of contention, in percent of all transfers.
    pub aborted_contention_percent: f64,
    pub aborted_ledger_down: u64,
    pub aborted_coordinator_failover: u64,
    pub aborted_other: u64,
    /// Transfers of more than all the money: each must abort.
    pub overdrafts: u64,
    pub overdrafts_aborted: u64,
    /// Transfers whose outcome was unknown at least once (retried with the same id).
    pub outcome_unknown_retried: u64,
    /// Transfers the client gave up on; their outcome is read from the cluster.
    pub gave_up: u64,
    pub committed_per_sec: f64,
}

#[derive(Debug, Serialize)]
pub struct LeaderFailover {
    pub killed_node: u64,
    pub killed_at_secs: f64,
    pub new_leader: u64,
    pub new_term: u64,
    /// Kill → another node reports itself leader.
    pub election_ms: u64,
    /// Kill → the next commit decision (the leader's record of it).
    pub failover_ms: Option<u64>,
    /// Kill → a client received that commit.
    pub first_commit_seen_ms: Option<u64>,
    /// What the new leader's takeover found (from its log).
    pub takeover_pending: Option<u64>,
    pub takeover_undecided: Option<u64>,
    pub takeover_decided: Option<u64>,
    /// Transactions pending at the coordinators right after the election.
    pub pending_after: usize,
    /// Restart of the killed node → it follows the new leader.
    pub rejoined_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct LedgerCrash {
    pub ledger: String,
    pub killed_at_secs: f64,
    /// Kill → serving again after the restart.
    pub down_ms: u64,
    pub aborted_while_down: u64,
    /// Of those, aborted because its vote did not come before the prepare timeout.
    pub vote_timeouts: u64,
    /// Transactions pending at the coordinators right after the kill.
    pub pending_after_kill: usize,
    /// Prepared transactions the ledger found in its log at restart.
    pub prepared_at_restart: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct InDoubt {
    /// Distinct transactions pending (or prepared) right after the kills.
    pub after_kills: usize,
    pub resolved: usize,
    pub resolved_committed: usize,
    pub resolved_aborted: usize,
    /// Load stopped → nothing pending, nothing prepared.
    pub drain_ms: Option<u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Agreement {
    /// Coordinator records compared with every ledger they touched.
    pub transactions_checked: usize,
    pub ledger_entries_checked: usize,
    pub mismatches: usize,
}

// ---------------------------------------------------------------------------
// Steps

fn workload_client(cluster: &LocalCluster) -> Result<Client, String> {
    Client::with_config(
        cluster.coordinator_addrs(),
        ClientConfig {
            connect_timeout: Duration::from_millis(300),
            retry_budget: Duration::from_secs(2),
            call_deadline: Duration::from_secs(5),
            assumed_txn_timeout: PREPARE_TIMEOUT,
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(250),
        },
    )
    .map_err(|e| e.to_string())
}

/// Polls until `deadline`, checking that no child crashed.
async fn wait_until(cluster: &mut LocalCluster, deadline: Instant) -> Result<(), String> {
    loop {
        cluster.check_children()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        tokio::time::sleep(left.min(Duration::from_millis(100))).await;
    }
}

/// Every account's committed balance (with its reservations), and the sum
/// of the balances.
async fn balances(
    client: &Client,
    accounts: u64,
) -> Result<(i64, BTreeMap<(usize, String), AccountBalance>), String> {
    let mut jobs = Vec::new();
    for (l, name) in LEDGERS.iter().enumerate() {
        for a in 0..accounts as usize {
            let acct = account(a);
            jobs.push(async move {
                let b = client
                    .account_balance(name, &acct)
                    .await
                    .map_err(|e| format!("reading {name}/{acct}: {e}"))?;
                Ok::<_, String>(((l, acct), b))
            });
        }
    }
    let all: BTreeMap<(usize, String), AccountBalance> = futures::future::join_all(jobs)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    Ok((all.values().map(|b| b.balance).sum(), all))
}

/// Prepared (undecided) transactions at each ledger.
async fn prepared_at(client: &Client, ledger: &str) -> Result<Vec<String>, String> {
    Ok(client
        .ledger_audit(ledger, true)
        .await
        .map_err(|e| format!("auditing {ledger}: {e}"))?
        .into_iter()
        .filter(|e| e.outcome == AuditOutcome::Prepared as i32)
        .map(|e| e.txn_id)
        .collect())
}

/// Waits until no transaction is pending at the coordinators and none is
/// prepared at a ledger. Err says what is left.
async fn wait_settled(
    cluster: &mut LocalCluster,
    client: &Client,
    within: Duration,
) -> Result<Duration, String> {
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
                        Err(e) => prepared.push(e),
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
            return Err(format!("not settled within {within:?}: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first few items, comma separated.
fn preview(items: &[String]) -> String {
    let mut s = items.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > 5 {
        s.push_str(&format!(", ... ({} in all)", items.len()));
    }
    s
}

/// `key=NUMBER` in a log line.
fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// (pending, undecided, decided) of node's takeover in `term`, from its log.
fn takeover_from_log(path: &std::path::Path, term: u64) -> Option<(u64, u64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("takeover: found") && field(l, "term") == Some(term))?;
    let pending = field(line, "pending").or_else(|| {
        let rest = line.split("takeover: found ").nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    })?;
    Some((
        pending,
        field(line, "undecided").unwrap_or(0),
        field(line, "decided").unwrap_or(0),
    ))
}

/// Prepared transactions the participant re-took at its last start, from its log.
fn prepared_from_log(path: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .find(|l| l.contains("re-took their locks"))
        .and_then(|l| field(l, "prepared"))
}

/// The last `n` lines of a log, leaving out openraft's chatter.
fn tail_without_raft(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains(" openraft")).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// "1 transaction", "2 transactions".
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Everything the scenario measured, for the summary.
struct Scenario {
    leader: Option<LeaderFailover>,
    kill_ms: u64,
    t_kill: Option<Instant>,
    ledger: Option<LedgerCrash>,
    in_doubt_ids: BTreeSet<String>,
    anomalies: Vec<String>,
}

async fn kill_leader(
    cluster: &mut LocalCluster,
    client: &Client,
    ui: &Ui,
    shared: &Shared,
    t0: Instant,
    sc: &mut Scenario,
) -> Result<(), String> {
    let old = match cluster.leader().await {
        Some(l) => l,
        None => {
            cluster
                .wait_for_leader(Duration::from_secs(15), None, 0)
                .await?
        }
    };
    let name = format!("node-{}", old.id);
    let pid = cluster.kill(&name)?;
    let t_kill = Instant::now();
    sc.kill_ms = wall_ms();
    sc.t_kill = Some(t_kill);
    shared.leader.store(0, Relaxed);
    let killed_at = t_kill.duration_since(t0).as_secs_f64();
    ui.event(format!(
        "SIGKILL leader node {} (pid {pid}, term {})",
        old.id, old.term
    ));
    let new: Leader = cluster
        .wait_for_leader(Duration::from_secs(30), Some(old.id), old.term)
        .await
        .map_err(|e| format!("after killing leader node {}: {e}", old.id))?;
    let election = t_kill.elapsed();
    shared.leader.store(new.id, Relaxed);
    ui.event(format!(
        "node {} is the new leader (term {}), {} ms after the kill",
        new.id,
        new.term,
        ms(election)
    ));
    let pending: Vec<String> = match client.list_transactions(true).await {
        Ok(p) => p.into_iter().map(|t| t.txn_id).collect(),
        Err(e) => {
            ui.event(format!("cannot list pending transactions: {e}"));
            Vec::new()
        }
    };
    ui.event(format!(
        "{} pending at the coordinators after the failover; the new leader finishes them",
        count(pending.len(), "transaction")
    ));
    sc.in_doubt_ids.extend(pending.iter().cloned());
    cluster.restart(&name)?;
    let t_restart = Instant::now();
    let rejoined = match cluster
        .wait_for_follower(old.id, Duration::from_secs(30))
        .await
    {
        Ok(l) => {
            ui.event(format!(
                "node {} restarted with its data: follower of node {} after {} ms",
                old.id,
                l.id,
                ms(t_restart.elapsed())
            ));
            Some(ms(t_restart.elapsed()))
        }
        Err(e) => {
            sc.anomalies.push(e.clone());
            ui.event(e);
            None
        }
    };
    sc.leader = Some(LeaderFailover {
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

async fn kill_ledger(
    cluster: &mut LocalCluster,
    client: &Client,
    ui: &Ui,
    shared: &Shared,
    t0: Instant,
    sc: &mut Scenario,
    clients: u64,
) -> Result<(), String> {
    let name = LEDGERS[VICTIM_LEDGER];
    let aborted_before = shared.stats.aborted_touching[VICTIM_LEDGER].load(Relaxed);
    let pid = cluster.kill(name)?;
    let t_kill = Instant::now();
    ui.event(format!("SIGKILL ledger {name} (pid {pid})"));
    let pending: Vec<String> = match client.list_transactions(true).await {
        Ok(p) => p.into_iter().map(|t| t.txn_id).collect(),
        Err(e) => {
            ui.event(format!("cannot list pending transactions: {e}"));
            Vec::new()
        }
    };
    sc.in_doubt_ids.extend(pending.iter().cloned());
    // Down until transfers have visibly aborted because its vote never came
    // (their prepare timeout passed), at most 5 s.
    let timeouts = || shared.stats.aborted[AbortKind::LedgerDown.index()].load(Relaxed);
    let timeouts_before = timeouts();
    let want = clients.min(3);
    let deadline = t_kill + Duration::from_secs(5);
    while timeouts() < timeouts_before + want && Instant::now() < deadline {
        cluster.check_children()?;
        tokio::time::sleep(local_cluster::POLL).await;
    }
    cluster.restart(name)?;
    cluster
        .wait_ledger_serving(client, name, Duration::from_secs(30))
        .await?;
    let down = t_kill.elapsed();
    let aborted_while_down =
        shared.stats.aborted_touching[VICTIM_LEDGER].load(Relaxed) - aborted_before;
    let timed_out = timeouts() - timeouts_before;
    let prepared_now = prepared_at(client, name).await.unwrap_or_default();
    let prepared = prepared_from_log(&cluster.log_path(name))
        .map(|n| n as usize)
        .unwrap_or(prepared_now.len());
    sc.in_doubt_ids.extend(prepared_now);
    ui.event(format!(
        "{name} restarted (same port, same data): serving after {} ms down; \
         {} touching it aborted, {timed_out} for want of its vote",
        ms(down),
        count(aborted_while_down as usize, "transfer"),
    ));
    ui.event(format!(
        "{name} found {} in its log: in doubt until the decision reaches it",
        count(prepared, "prepared transaction")
    ));
    sc.ledger = Some(LedgerCrash {
        ledger: name.to_string(),
        killed_at_secs: round3(t_kill.duration_since(t0).as_secs_f64()),
        down_ms: ms(down),
        aborted_while_down,
        vote_timeouts: timed_out,
        pending_after_kill: pending.len(),
        prepared_at_restart: prepared,
    });
    Ok(())
}

/// The whole demo; Err is fatal (the summary cannot be made).
async fn demo(
    args: &DemoArgs,
    cluster: &mut LocalCluster,
    ui: &Arc<Ui>,
) -> Result<Summary, String> {
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
    let deposited = cluster
        .seed(&client, args.accounts as usize, args.initial_balance)
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
    let shared = Arc::new(Shared {
        stats: Stats::default(),
        records: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        leader: AtomicU64::new(leader.id),
    });
    let workload = Arc::new(Workload {
        accounts: args.accounts,
        supply: total_before,
        max_amount: (args.initial_balance / 5).max(1),
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
    let mut tasks = Tasks(vec![
        tokio::spawn(ticker(ui.clone(), shared.clone())),
        tokio::spawn(leader_watch(cluster.probes(), shared.clone())),
    ]);
    let mut sc = Scenario {
        leader: None,
        kill_ms: 0,
        t_kill: None,
        ledger: None,
        in_doubt_ids: BTreeSet::new(),
        anomalies,
    };
    let workers = WorkerSet(workers);

    wait_until(cluster, t0 + duration / 3).await?;
    kill_leader(cluster, &client, ui, &shared, t0, &mut sc).await?;
    wait_until(cluster, t0 + duration * 2 / 3).await?;
    kill_ledger(cluster, &client, ui, &shared, t0, &mut sc, args.clients).await?;
    wait_until(cluster, t0 + duration).await?;

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
            sc.anomalies.push(e.clone());
            ui.event(e);
            None
        }
    };
    for t in tasks.0.drain(..) {
        t.abort();
    }
    ui.clear();
    cluster.check_children()?;

    let records = std::mem::take(&mut *shared.records.lock().unwrap_or_else(|p| p.into_inner()));
    let mut summary = check(
        args,
        cluster,
        &client,
        &records,
        total_before,
        load_secs,
        sc,
    )
    .await;
    summary.in_doubt.drain_ms = drain;
    Ok(summary)
}

/// Worker tasks: joined with a bound, aborted when dropped.
struct WorkerSet(Vec<tokio::task::JoinHandle<()>>);

impl WorkerSet {
    async fn join(mut self, within: Duration) -> bool {
        let all = futures::future::join_all(self.0.iter_mut());
        tokio::time::timeout(within, all).await.is_ok()
    }
}

impl Drop for WorkerSet {
    fn drop(&mut self) {
        for w in &self.0 {
            w.abort();
        }
    }
}

/// Reads the final state everywhere and checks it.
#[allow(clippy::too_many_arguments)]
async fn check(
    args: &DemoArgs,
    cluster: &LocalCluster,
    client: &Client,
    records: &[Record],
    total_before: i64,
    load_secs: f64,
    mut sc: Scenario,
) -> Summary {
    let mut anomalies = std::mem::take(&mut sc.anomalies);
    let mut agreement = Agreement::default();

    // The coordinator's records.
    let txns: HashMap<String, TxnStatus> = match client.list_transactions(false).await {
        Ok(l) => l.into_iter().map(|t| (t.txn_id.clone(), t)).collect(),
        Err(e) => {
            anomalies.push(format!("cannot list the coordinator's transactions: {e}"));
            HashMap::new()
        }
    };
    // Each ledger's.
    let mut audits: Vec<HashMap<String, AuditEntry>> = Vec::new();
    for name in LEDGERS {
        match client.ledger_audit(name, true).await {
            Ok(a) => audits.push(a.into_iter().map(|e| (e.txn_id.clone(), e)).collect()),
            Err(e) => {
                anomalies.push(format!("cannot audit {name}: {e}"));
                audits.push(HashMap::new());
            }
        }
    }
    let ledger_index = |name: &str| -> Option<usize> { LEDGERS.iter().position(|l| *l == name) };
    let committed =
        |e: Option<&AuditEntry>| e.is_some_and(|e| e.outcome == AuditOutcome::Committed as i32);
    let mut mismatches: Vec<String> = Vec::new();

    // Coordinator vs ledgers.
    for t in txns.values() {
        agreement.transactions_checked += 1;
        match t.state {
            TxnState::Committed => {
                for p in &t.participants {
                    let Some(l) = ledger_index(p) else { continue };
                    if !committed(audits[l].get(&t.txn_id)) {
                        mismatches.push(format!(
                            "{} is committed at the coordinators but not applied at {p}",
                            t.txn_id
                        ));
                    }
                }
            }
            TxnState::Aborted => {
                for p in &t.participants {
                    let Some(l) = ledger_index(p) else { continue };
                    if committed(audits[l].get(&t.txn_id)) {
                        mismatches.push(format!(
                            "{} is aborted at the coordinators but applied at {p}",
                            t.txn_id
                        ));
                    }
                }
            }
            other => anomalies.push(format!(
                "{} is still {} at the coordinators",
                t.txn_id,
                other.as_str()
            )),
        }
    }
    // Ledgers vs coordinator, and each account's balance from its entries.
    let mut applied: BTreeMap<(usize, String), i64> = BTreeMap::new();
    for (l, audit) in audits.iter().enumerate() {
        for e in audit.values() {
            agreement.ledger_entries_checked += 1;
            if e.outcome == AuditOutcome::Prepared as i32 {
                anomalies.push(format!("{} is still prepared at {}", e.txn_id, LEDGERS[l]));
            } else if e.outcome == AuditOutcome::Committed as i32 {
                for entry in &e.entries {
                    *applied.entry((l, entry.account.clone())).or_default() += entry.delta;
                }
                let state = txns.get(&e.txn_id).map(|t| t.state);
                if state != Some(TxnState::Committed) {
                    mismatches.push(format!(
                        "{} is applied at {} but the coordinators say {}",
                        e.txn_id,
                        LEDGERS[l],
                        state.map_or("nothing", |s| s.as_str())
                    ));
                }
            }
        }
    }

    // Clients vs coordinator, and what was applied vs what was asked.
    let mut t = Transfers {
        total: records.len() as u64,
        outcome_unknown_retried: records.iter().filter(|r| r.retried).count() as u64,
        ..Transfers::default()
    };
    for r in records {
        let state = txns.get(&r.id).map(|t| t.state);
        let final_committed = match (&r.outcome, state) {
            (Outcome::Committed, Some(TxnState::Committed)) => true,
            (Outcome::Aborted(_), Some(TxnState::Aborted)) => false,
            (Outcome::Unknown, Some(TxnState::Committed)) => {
                t.gave_up += 1;
                true
            }
            (Outcome::Unknown, Some(TxnState::Aborted) | None) => {
                t.gave_up += 1;
                false
            }
            (Outcome::Error(e), _) => {
                anomalies.push(format!("transfer {} was refused: {e}", r.id));
                false
            }
            (o, s) => {
                mismatches.push(format!(
                    "{}: the client was told {} but the coordinators say {}",
                    r.id,
                    match o {
                        Outcome::Committed => "committed",
                        _ => "aborted",
                    },
                    s.map_or("nothing", |s| s.as_str())
                ));
                matches!(o, Outcome::Committed)
            }
        };
        if final_committed {
            t.committed += 1;
            if r.from.0 != r.to.0 {
                t.committed_cross_ledger += 1;
            }
            for (l, want) in r.expected_entries() {
                let got = audits[l].get(&r.id).map(|e| {
                    let mut v: Vec<(String, i64)> = e
                        .entries
                        .iter()
                        .map(|x| (x.account.clone(), x.delta))
                        .collect();
                    v.sort();
                    v
                });
                if got.as_ref() != Some(&want) {
                    mismatches.push(format!(
                        "{}: {} applied {got:?}, the client asked for {want:?}",
                        r.id, LEDGERS[l]
                    ));
                }
            }
        } else {
            t.aborted += 1;
            if let Outcome::Aborted(reason) = &r.outcome {
                match AbortKind::of(reason) {
                    AbortKind::Funds => t.aborted_insufficient_funds += 1,
                    AbortKind::Reserved => t.aborted_funds_reserved += 1,
                    AbortKind::Busy => t.aborted_account_busy += 1,
                    AbortKind::LedgerDown => t.aborted_ledger_down += 1,
                    AbortKind::Failover => t.aborted_coordinator_failover += 1,
                    AbortKind::Other => t.aborted_other += 1,
                }
            } else {
                t.aborted_other += 1;
            }
        }
        if r.overdraft {
            t.overdrafts += 1;
            if final_committed {
                anomalies.push(format!("overdraft {} of {} committed", r.id, r.amount));
            } else {
                t.overdrafts_aborted += 1;
            }
        }
    }
    t.aborted_contention_percent = if t.total > 0 {
        let contention = t.aborted_funds_reserved + t.aborted_account_busy;
        (contention as f64 * 10_000.0 / t.total as f64).round() / 100.0
    } else {
        0.0
    };
    t.committed_per_sec = if load_secs > 0.0 {
        (t.committed as f64 / load_secs * 10.0).round() / 10.0
    } else {
        0.0
    };

    // Balances.
    let (total_after, per_account) = match balances(client, args.accounts).await {
        Ok((total, per)) => (Some(total), per),
        Err(e) => {
            anomalies.push(format!("cannot read the final balances: {e}"));
            (None, BTreeMap::new())
        }
    };
    for ((l, acct), held) in &per_account {
        let balance = &held.balance;
        if held.reserved != 0 || held.incoming != 0 {
            // Drained: nothing is prepared, so nothing may be reserved.
            anomalies.push(format!(
                "{}/{acct} still has {} reserved and {} incoming after the drain",
                LEDGERS[*l], held.reserved, held.incoming
            ));
        }
        let sum = applied.get(&(*l, acct.clone())).copied().unwrap_or(0);
        if *balance != sum {
            mismatches.push(format!(
                "{}/{acct}: balance {balance}, but its committed entries sum to {sum}",
                LEDGERS[*l]
            ));
        }
        if *balance < 0 {
            anomalies.push(format!("{}/{acct} is negative: {balance}", LEDGERS[*l]));
        }
    }
    let totals_equal = total_after == Some(total_before);
    if let Some(after) = total_after
        && after != total_before
    {
        anomalies.push(format!(
            "the total balance changed: {total_before} before, {after} after"
        ));
    }

    // Failover: the first commit decided after the kill.
    if let Some(f) = sc.leader.as_mut() {
        let first = txns
            .values()
            .filter(|t| t.state == TxnState::Committed && t.decided_at_ms > sc.kill_ms)
            .min_by_key(|t| t.decided_at_ms);
        if let Some(first) = first {
            f.failover_ms = Some(first.decided_at_ms - sc.kill_ms);
        }
        if let Some(t_kill) = sc.t_kill {
            f.first_commit_seen_ms = records
                .iter()
                .filter(|r| {
                    matches!(r.outcome, Outcome::Committed)
                        && txns
                            .get(&r.id)
                            .is_some_and(|t| t.decided_at_ms > sc.kill_ms)
                })
                .map(|r| ms(r.finished.saturating_duration_since(t_kill)))
                .min();
        }
        if let Some((p, u, d)) = takeover_from_log(
            &cluster.log_path(&format!("node-{}", f.new_leader)),
            f.new_term,
        ) {
            f.takeover_pending = Some(p);
            f.takeover_undecided = Some(u);
            f.takeover_decided = Some(d);
        }
    }

    // In doubt right after the kills: each must now have one outcome.
    let mut in_doubt = InDoubt {
        after_kills: sc.in_doubt_ids.len(),
        ..InDoubt::default()
    };
    for id in &sc.in_doubt_ids {
        match txns.get(id).map(|t| t.state) {
            Some(TxnState::Committed) => {
                in_doubt.resolved += 1;
                in_doubt.resolved_committed += 1;
            }
            Some(TxnState::Aborted) => {
                in_doubt.resolved += 1;
                in_doubt.resolved_aborted += 1;
            }
            s => anomalies.push(format!(
                "in-doubt transaction {id} is not resolved ({})",
                s.map_or("unknown to the coordinators", |s| s.as_str())
            )),
        }
    }

    agreement.mismatches = mismatches.len();
    anomalies.extend(mismatches);
    Summary {
        ok: anomalies.is_empty(),
        load_secs: (load_secs * 10.0).round() / 10.0,
        clients: args.clients,
        ledgers: LEDGERS.iter().map(|l| l.to_string()).collect(),
        accounts_per_ledger: args.accounts,
        ledger_lock_wait_ms: args.lock_wait_ms,
        transfers: t,
        leader_failover: sc.leader,
        ledger_crash: sc.ledger,
        in_doubt,
        total_before,
        total_after,
        totals_equal,
        agreement,
        anomalies,
        log_dir: cluster.root().display().to_string(),
        log_dir_kept: cluster.is_kept(),
    }
}

// ---------------------------------------------------------------------------
// Output

fn opt_ms(v: Option<u64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v} ms"))
}

fn print_text(s: &Summary) {
    let t = &s.transfers;
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| rows.push((k.to_string(), v));
    row(
        "transfers",
        format!(
            "{} in {:.1} s ({} clients, {} ledgers x {} accounts)",
            t.total,
            s.load_secs,
            s.clients,
            s.ledgers.len(),
            s.accounts_per_ledger
        ),
    );
    row(
        "  committed",
        format!(
            "{:>6}   ({} across ledgers, {:.1}/s)",
            t.committed, t.committed_cross_ledger, t.committed_per_sec
        ),
    );
    row("  aborted", format!("{:>6}", t.aborted));
    row(
        "    insufficient funds",
        format!("{:>6}", t.aborted_insufficient_funds),
    );
    row(
        "    funds reserved by others",
        format!(
            "{:>6}   (contention: {:.2}% of transfers, locks included; lock wait {} ms)",
            t.aborted_funds_reserved, t.aborted_contention_percent, s.ledger_lock_wait_ms
        ),
    );
    row(
        "    account locked by another",
        format!("{:>6}", t.aborted_account_busy),
    );
    row(
        "    ledger down (vote timeout)",
        format!("{:>6}", t.aborted_ledger_down),
    );
    row(
        "    coordinator failover",
        format!("{:>6}", t.aborted_coordinator_failover),
    );
    if t.aborted_other > 0 {
        row("    other", format!("{:>6}", t.aborted_other));
    }
    row(
        "  overdrafts (must abort)",
        format!(
            "{:>6}   (more than all the money; {} aborted)",
            t.overdrafts, t.overdrafts_aborted
        ),
    );
    row(
        "  outcome unknown, retried",
        format!(
            "{:>6}   {}",
            t.outcome_unknown_retried,
            if t.gave_up == 0 {
                "(retried with the same txn id until answered)".to_string()
            } else {
                format!(
                    "({} given up; outcome read from the coordinators)",
                    t.gave_up
                )
            }
        ),
    );
    if let Some(f) = &s.leader_failover {
        row(
            "leader failover",
            format!(
                "node {} SIGKILLed at {:.1} s -> node {} leader (term {}) after {} ms",
                f.killed_node, f.killed_at_secs, f.new_leader, f.new_term, f.election_ms
            ),
        );
        row(
            "  failover time (kill -> commit)",
            format!(
                "{}   (a client had it after {})",
                opt_ms(f.failover_ms),
                opt_ms(f.first_commit_seen_ms)
            ),
        );
        row(
            "  takeover found",
            match f.takeover_pending {
                Some(p) => format!(
                    "{p} pending ({} undecided -> abort, {} decided -> resend)",
                    f.takeover_undecided.unwrap_or(0),
                    f.takeover_decided.unwrap_or(0)
                ),
                None => "n/a (no takeover line in the new leader's log)".into(),
            },
        );
        row(
            "  killed node rejoined",
            f.rejoined_ms.map_or("NO".to_string(), |ms| {
                format!("as a follower, {ms} ms after its restart")
            }),
        );
    }
    if let Some(l) = &s.ledger_crash {
        row(
            "ledger crash",
            format!(
                "{} SIGKILLed at {:.1} s, serving again after {} ms",
                l.ledger, l.killed_at_secs, l.down_ms
            ),
        );
        row(
            "  transfers touching it aborted",
            format!("{}", l.aborted_while_down),
        );
        row(
            "  prepared (in doubt) at restart",
            format!("{}", l.prepared_at_restart),
        );
    }
    let d = &s.in_doubt;
    row(
        "in doubt right after the kills",
        format!(
            "{} -> {} resolved ({} committed, {} aborted){}",
            d.after_kills,
            d.resolved,
            d.resolved_committed,
            d.resolved_aborted,
            d.drain_ms
                .map(|ms| format!("; all settled {ms} ms after the load"))
                .unwrap_or_default()
        ),
    );
    row("total balance before", format!("{}", s.total_before));
    row(
        "total balance after",
        match s.total_after {
            Some(a) if s.totals_equal => format!("{a}   (equal)"),
            Some(a) => format!("{a}   (DIFFERENT by {})", a - s.total_before),
            None => "unreadable".into(),
        },
    );
    row(
        "agreement (coordinators/ledgers)",
        format!(
            "{} transactions, {} ledger records: {} mismatches",
            s.agreement.transactions_checked,
            s.agreement.ledger_entries_checked,
            s.agreement.mismatches
        ),
    );
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let rule = "-".repeat(width + 48);
    println!();
    println!("dtc demo summary");
    println!("{rule}");
    for (k, v) in &rows {
        println!("{k:<width$}  {v}");
    }
    println!("{rule}");
    if s.ok {
        println!(
            "OK: every transfer has one outcome at the coordinators, the ledgers and the client; \
             no money was created or lost."
        );
    } else {
        println!("FAILED: {} anomalies", s.anomalies.len());
        for a in s.anomalies.iter().take(20) {
            println!("  - {a}");
        }
        if s.anomalies.len() > 20 {
            println!("  ... and {} more", s.anomalies.len() - 20);
        }
    }
    if s.log_dir_kept {
        println!("data and logs kept in {}", s.log_dir);
    }
}

/// `dtc demo`.
pub async fn run(args: DemoArgs) -> ExitCode {
    let ui = Arc::new(Ui::new());
    let mut cluster = match LocalCluster::start("dtc-demo-", args.lock_wait_ms) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dtc demo: {e}");
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
        r = demo(&args, &mut cluster, &ui) => Some(r),
        _ = crate::shutdown_signal() => None,
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
                        "error": e,
                        "log_dir": cluster.root().display().to_string(),
                        "log_dir_kept": true,
                    })
                );
            }
            eprintln!("dtc demo: FAILED: {e}");
            eprintln!(
                "dtc demo: data and logs kept in {} (node-N.log, {}.log)",
                cluster.root().display(),
                LEDGERS.join(".log, ")
            );
            for (id, _) in cluster.nodes.clone() {
                let log = cluster.log_path(&format!("node-{id}"));
                let last = tail_without_raft(&log, 4);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abort_reasons_are_classified() {
        assert_eq!(
            AbortKind::of(
                "participant bank-a voted abort: insufficient funds in account \"acct-01\""
            ),
            AbortKind::Funds
        );
        assert_eq!(
            AbortKind::of(
                "participant bank-a voted abort: insufficient funds in account \"acct-01\" \
                 until prepared transactions resolve: debit 5, available 3 (balance 10, \
                 reserved 7): short by 2"
            ),
            AbortKind::Reserved
        );
        assert_eq!(
            AbortKind::of(
                "participant bank-a voted abort: account \"x\" is held by prepared transaction t"
            ),
            AbortKind::Busy
        );
        assert_eq!(
            AbortKind::of("timed out waiting for the vote of bank-b"),
            AbortKind::LedgerDown
        );
        assert_eq!(
            AbortKind::of("coordinator failover before the decision"),
            AbortKind::Failover
        );
        assert_eq!(AbortKind::of("something else"), AbortKind::Other);
    }

    #[test]
    fn log_fields_are_parsed() {
        let line = "2025-01-01T00:00:00Z  INFO dtc_coordinator::runtime: takeover: found 3 pending \
                    transactions; scan took 0.10 ms term=4 pending=3 undecided=2 decided=1 catch_up_ms=1.5";
        assert_eq!(field(line, "term"), Some(4));
        assert_eq!(field(line, "pending"), Some(3));
        assert_eq!(field(line, "undecided"), Some(2));
        assert_eq!(field(line, "decided"), Some(1));
        assert_eq!(field(line, "catch_up_ms"), None);
    }

    #[test]
    fn expected_entries_group_by_ledger() {
        let r = Record {
            id: "x".into(),
            from: (0, 1),
            to: (0, 2),
            amount: 5,
            overdraft: false,
            outcome: Outcome::Committed,
            finished: Instant::now(),
            retried: false,
        };
        let e = r.expected_entries();
        assert_eq!(e.len(), 1);
        assert_eq!(e[&0], vec![("acct-01".into(), -5), ("acct-02".into(), 5)]);
        let cross = Record { to: (1, 2), ..r };
        assert_eq!(cross.expected_entries().len(), 2);
    }
}
