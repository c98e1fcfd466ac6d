//! The load: N client tasks, each with its own gRPC connection to the
//! leader, running `Execute` back to back with a fresh txn id each time.
//!
//! ```text
//! client i:  connect (5 s timeout) ─► wait for the start signal ─► loop until `stop`:
//!              txn id <prefix>-e<epoch>-l<level>-c<i>-<n>, B branches of P bytes
//!              Execute ─► committed │ aborted │ error (by gRPC code)
//!              counted (atomics, for the progress bar) when it ends inside the
//!              measurement window; committed latency into the client's histogram;
//!              committed count into its 100 ms timeline bucket
//!            on an error: follow the leader hint, or the monitor's leader, or
//!              stay (the channel reconnects); pause briefly so a dead leader is
//!              not hammered
//! end:       each client returns its histogram, counts and buckets; merged
//! ```
//!
//! No retries with the same id: each attempt is its own transaction, so the
//! counts are of attempts and an error is never hidden. The failover
//! measurement hooks in through [`Shared::kill_after_us`] and
//! [`Shared::first_commit_after_kill_us`].

use crate::probe::{LeaderBoard, request};
use dtc_proto::v1::{Branch, ExecuteRequest, Outcome, coordinator_client::CoordinatorClient};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// Connecting to a coordinator may take this long (a busy leader on a busy
/// machine accepts late; a refused connection fails at once anyway).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of one Execute (sent as `grpc-timeout` too): far above any
/// latency of a healthy cluster, so only a stuck call hits it.
pub const EXECUTE_TIMEOUT: Duration = Duration::from_secs(10);
/// Width of a timeline bucket.
pub const BUCKET: Duration = Duration::from_millis(100);
/// Pause after an error: long enough that clients do not spin on a dead
/// leader, short against a failover of a few hundred milliseconds.
const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// How long a client stays on another node than the monitor's leader when
/// the monitor has seen no change.
const OFF_LEADER_MAX: Duration = Duration::from_secs(1);
/// Latencies are recorded in microseconds, up to an hour.
const MAX_LATENCY_US: u64 = 3_600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    // 3 significant digits: 0.1% resolution. Constant bounds that
    // hdrhistogram accepts (1 <= low, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid constant histogram bounds")
}

/// What every client task shares with the orchestrator.
pub struct Shared {
    /// The run's zero: every `*_us` below is microseconds since then.
    pub run_start: Instant,
    /// The measurement window: only transactions that end in
    /// [window_start_us, window_end_us) are counted.
    pub window_start_us: AtomicU64,
    pub window_end_us: AtomicU64,
    pub stop: AtomicBool,
    /// Clients connected (or given up connecting) and waiting to start.
    pub ready: AtomicUsize,
    pub committed: AtomicU64,
    pub aborted: AtomicU64,
    pub errors: AtomicU64,
    /// Part of every txn id; bumped after each SIGKILL, so the pending
    /// transactions from before a kill can be told apart by their ids.
    pub epoch: AtomicU64,
    /// The level (0, 1, ...) these clients run; part of every txn id, so
    /// that a level's clients never reuse an earlier level's ids (a reused
    /// id is answered from the decided record at once, without running a
    /// transaction, and would be counted as a fast commit).
    pub level: u64,
    /// Transactions that start at or after this count as "started after the kill".
    pub kill_after_us: AtomicU64,
    /// When the first of those committed (u64::MAX: none yet).
    pub first_commit_after_kill_us: AtomicU64,
}

impl Shared {
    pub fn new(run_start: Instant, level: u64) -> Shared {
        Shared {
            run_start,
            level,
            window_start_us: AtomicU64::new(u64::MAX),
            window_end_us: AtomicU64::new(u64::MAX),
            stop: AtomicBool::new(false),
            ready: AtomicUsize::new(0),
            committed: AtomicU64::new(0),
            aborted: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            kill_after_us: AtomicU64::new(u64::MAX),
            first_commit_after_kill_us: AtomicU64::new(u64::MAX),
        }
    }

    pub fn now_us(&self) -> u64 {
        self.run_start.elapsed().as_micros() as u64
    }

    pub fn reset_counts(&self) {
        self.committed.store(0, Relaxed);
        self.aborted.store(0, Relaxed);
        self.errors.store(0, Relaxed);
    }

    fn in_window(&self, t_us: u64) -> bool {
        t_us >= self.window_start_us.load(Relaxed) && t_us < self.window_end_us.load(Relaxed)
    }
}

/// The transaction every client runs (ids aside).
pub struct Workload {
    /// Unique per bench run, so ids never collide with an earlier run's
    /// retained outcomes on a long-lived cluster.
    pub id_prefix: String,
    /// Every coordinator address, to try another node when one is gone.
    pub coordinators: Vec<String>,
    /// Participant names, one branch each.
    pub participants: Vec<String>,
    pub payload: Vec<u8>,
    pub reply_at_decision: bool,
}

impl Workload {
    fn request(&self, txn_id: String) -> ExecuteRequest {
        ExecuteRequest {
            txn_id,
            branches: self
                .participants
                .iter()
                .map(|p| Branch {
                    participant: p.clone(),
                    payload: self.payload.clone(),
                })
                .collect(),
            // The server's default prepare timeout: the participants answer at once.
            timeout_ms: 0,
            reply_at_decision: self.reply_at_decision,
        }
    }

    /// The id of client `idx`'s `n`th transaction at `level` in `epoch`:
    /// unique within the run (the prefix holds the process id and a nonce).
    pub fn txn_id(&self, epoch: u64, level: u64, idx: usize, n: u64) -> String {
        format!("{}-e{epoch}-l{level}-c{idx}-{n}", self.id_prefix)
    }

    /// The epoch in one of this run's txn ids (None: not one of ours).
    pub fn epoch_of(&self, txn_id: &str) -> Option<u64> {
        let rest = txn_id.strip_prefix(&self.id_prefix)?.strip_prefix("-e")?;
        rest.split('-').next()?.parse().ok()
    }
}

/// What one client (or, merged, a whole level) saw in the window.
pub struct Tally {
    pub committed: u64,
    pub aborted: u64,
    pub errors: BTreeMap<String, u64>,
    /// Committed latency, microseconds.
    pub latency_us: Histogram<u64>,
    /// Commits per [`BUCKET`] since `run_start`, whether in the window or not.
    pub buckets: Vec<u64>,
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            committed: 0,
            aborted: 0,
            errors: BTreeMap::new(),
            latency_us: new_histogram(),
            buckets: Vec::new(),
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn merge(&mut self, other: Tally) {
        self.committed += other.committed;
        self.aborted += other.aborted;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        // Same bounds on both sides, so this cannot fail; were it to, the
        // percentiles would miss one client, which the counts still show.
        let _ = self.latency_us.add(&other.latency_us);
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (i, n) in other.buckets.into_iter().enumerate() {
            self.buckets[i] += n;
        }
    }

    fn bucket_commit(&mut self, t_us: u64) {
        let i = (t_us / BUCKET.as_micros() as u64) as usize;
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, 0);
        }
        self.buckets[i] += 1;
    }
}

async fn connect(addr: &str) -> Result<CoordinatorClient<Channel>, tonic::Status> {
    let endpoint = Endpoint::from_shared(dtc_util::endpoint_uri(addr))
        .map_err(|e| tonic::Status::invalid_argument(format!("address {addr:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    endpoint
        .connect()
        .await
        .map(CoordinatorClient::new)
        .map_err(|e| tonic::Status::unavailable(format!("cannot connect to {addr}: {e}")))
}

/// One client: see the module docs. Returns its tally when `shared.stop` is set.
pub async fn client(
    idx: usize,
    shared: Arc<Shared>,
    board: Arc<LeaderBoard>,
    work: Arc<Workload>,
    start: tokio::sync::watch::Receiver<bool>,
) -> Tally {
    let mut tally = Tally::new();
    let mut seen_generation = board.generation();
    let mut target = board.get().addr;
    // Set while talking to a node other than the monitor's leader (after an
    // error there); such a node forwards to the leader, one hop more.
    let mut off_leader_since: Option<Instant> = None;
    // Connect before the clock starts: connection setup is not a transaction.
    let mut conn = connect(&target).await.ok();
    shared.ready.fetch_add(1, Relaxed);
    let mut start = start;
    // Err: the orchestrator is gone (it dropped the sender); stop.
    if start.wait_for(|go| *go).await.is_err() {
        return tally;
    }
    let mut n: u64 = 0;
    while !shared.stop.load(Relaxed) {
        // Follow the monitor when it saw a new leader; go back to its
        // leader after a while on another node when it saw none (the error
        // that moved this client was a passing one on a live leader).
        let generation = board.generation();
        let back = off_leader_since.is_some_and(|t| t.elapsed() >= OFF_LEADER_MAX);
        if generation != seen_generation || back {
            seen_generation = generation;
            off_leader_since = None;
            let leader = board.get().addr;
            if leader != target {
                target = leader;
                conn = None;
            }
        }
        let mut c = match conn.take() {
            Some(c) => c,
            None => match connect(&target).await {
                Ok(c) => c,
                Err(s) => {
                    let t_us = shared.now_us();
                    if shared.in_window(t_us) {
                        *tally.errors.entry(code_name(&s)).or_default() += 1;
                        shared.errors.fetch_add(1, Relaxed);
                    }
                    let leader = board.get().addr;
                    if let Some(addr) = next_target(&s, &leader, &target, &work.coordinators) {
                        off_leader_since = (addr != leader).then(Instant::now);
                        target = addr;
                    }
                    tokio::time::sleep(ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        n += 1;
        let epoch = shared.epoch.load(Relaxed);
        let req = work.request(work.txn_id(epoch, shared.level, idx, n));
        let started_us = shared.now_us();
        let started = Instant::now();
        // The local timeout backs up grpc-timeout should the connection hang.
        let r = tokio::time::timeout(
            EXECUTE_TIMEOUT + Duration::from_secs(1),
            c.execute(request(req, EXECUTE_TIMEOUT)),
        )
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(
                "no answer (local timeout)",
            ))
        });
        let latency = started.elapsed();
        let end_us = shared.now_us();
        let counted = shared.in_window(end_us);
        match r {
            Ok(resp) if resp.get_ref().outcome() == Outcome::Committed => {
                conn = Some(c);
                tally.bucket_commit(end_us);
                if started_us >= shared.kill_after_us.load(Relaxed) {
                    shared.first_commit_after_kill_us.fetch_min(end_us, Relaxed);
                }
                if counted {
                    tally.committed += 1;
                    tally
                        .latency_us
                        .saturating_record((latency.as_micros() as u64).max(1));
                    shared.committed.fetch_add(1, Relaxed);
                }
            }
            Ok(_) => {
                conn = Some(c);
                if counted {
                    tally.aborted += 1;
                    shared.aborted.fetch_add(1, Relaxed);
                }
            }
            Err(s) => {
                if counted {
                    *tally.errors.entry(code_name(&s)).or_default() += 1;
                    shared.errors.fetch_add(1, Relaxed);
                }
                let leader = board.get().addr;
                match next_target(&s, &leader, &target, &work.coordinators) {
                    Some(addr) => {
                        off_leader_since = (addr != leader).then(Instant::now);
                        target = addr;
                    }
                    // Stay, keeping the channel (tonic reconnects it).
                    None => conn = Some(c),
                }
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    tally
}

/// Where a client goes after error `s` at `target` (None: stay): the
/// node's leader hint; else the monitor's `leader`; else, when the node
/// seems gone, the next node, which forwards to the leader once it knows
/// one, so a failover is not timed by the monitor's polling.
fn next_target(s: &tonic::Status, leader: &str, target: &str, nodes: &[String]) -> Option<String> {
    dtc_client::leader_hint(s)
        .filter(|h| h != target)
        .or_else(|| (leader != target).then(|| leader.to_string()))
        .or_else(|| node_gone(s).then(|| next_node(nodes, target)).flatten())
}

/// The call failed for want of the node (no connection, connection lost,
/// no leader there), not because of what it answered.
fn node_gone(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// The node after `addr` in `nodes`, round robin (None: no other node).
fn next_node(nodes: &[String], addr: &str) -> Option<String> {
    if nodes.is_empty() {
        return None;
    }
    let i = nodes.iter().position(|n| n == addr).map_or(0, |i| i + 1);
    let next = &nodes[i % nodes.len()];
    (next != addr).then(|| next.clone())
}

/// The gRPC code's name (`Unavailable`, `DeadlineExceeded`, ...).
fn code_name(s: &tonic::Status) -> String {
    format!("{:?}", s.code())
}

/// Runs `clients` client tasks; see [`Load::start`] and [`Load::finish`].
pub struct Load {
    pub shared: Arc<Shared>,
    start: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
}

impl Drop for Load {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Load {
    /// Spawns the clients and waits (at most `within`) until each has
    /// connected or failed to.
    pub async fn spawn(
        clients: usize,
        shared: Arc<Shared>,
        board: Arc<LeaderBoard>,
        work: Arc<Workload>,
        within: Duration,
    ) -> Load {
        let (start, rx) = tokio::sync::watch::channel(false);
        shared.ready.store(0, Relaxed);
        let tasks = (0..clients)
            .map(|i| {
                tokio::spawn(client(
                    i,
                    shared.clone(),
                    board.clone(),
                    work.clone(),
                    rx.clone(),
                ))
            })
            .collect();
        let deadline = Instant::now() + within;
        while shared.ready.load(Relaxed) < clients && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Load {
            shared,
            start,
            tasks,
        }
    }

    pub fn start(&self) {
        let _ = self.start.send(true);
    }

    /// Stops the clients and merges what they saw. Each ends after its call
    /// in flight (bounded by the Execute timeout); a client that does not is
    /// aborted after `within` and its tally is lost (counted in the return).
    pub async fn finish(mut self, within: Duration) -> (Tally, usize) {
        self.shared.stop.store(true, Relaxed);
        // A client still waiting for the start signal sees it and then the stop.
        let _ = self.start.send(true);
        let deadline = tokio::time::Instant::now() + within;
        let mut total = Tally::new();
        let mut lost = 0;
        for t in std::mem::take(&mut self.tasks) {
            let abort = t.abort_handle();
            match tokio::time::timeout_at(deadline, t).await {
                Ok(Ok(tally)) => total.merge(tally),
                Ok(Err(_)) => lost += 1,
                Err(_) => {
                    abort.abort();
                    lost += 1;
                }
            }
        }
        (total, lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> Workload {
        Workload {
            id_prefix: "bench-12-345".into(),
            coordinators: Vec::new(),
            participants: vec!["p".into()],
            payload: Vec::new(),
            reply_at_decision: false,
        }
    }

    #[test]
    fn epochs_are_read_back_from_ids() {
        let w = workload();
        let id = w.request(w.txn_id(7, 2, 3, 99)).txn_id;
        assert_eq!(w.epoch_of(&id), Some(7));
        assert_eq!(w.epoch_of("bench-12-3456-e7-c3-99"), None);
        assert_eq!(w.epoch_of("someone-else-e1-c1-1"), None);
    }

    /// Each level spawns clients 0.. that count from 0 again: without the
    /// level in the id, client 3 of the second level would resend client
    /// 3's ids of the first, and each would be answered from its decided
    /// record, a "commit" that ran no transaction.
    #[test]
    fn a_level_never_reuses_an_earlier_levels_txn_ids() {
        let w = workload();
        let ids = |level| -> std::collections::BTreeSet<String> {
            (0..4)
                .flat_map(|idx| (1..=50).map(move |n| (idx, n)))
                .map(|(idx, n)| w.txn_id(0, level, idx, n))
                .collect()
        };
        let (first, second) = (ids(0), ids(1));
        assert_eq!(first.len(), 200, "ids repeat within a level");
        assert!(
            first.is_disjoint(&second),
            "a level reuses ids of the one before"
        );
    }

    #[test]
    fn errors_move_a_client_to_the_leader_or_the_next_node() {
        let nodes: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let gone = tonic::Status::unavailable("connection refused");
        let busy = tonic::Status::resource_exhausted("too many in flight");
        assert_eq!(next_target(&gone, "b", "a", &nodes).as_deref(), Some("b"));
        assert_eq!(next_target(&gone, "a", "a", &nodes).as_deref(), Some("b"));
        assert_eq!(next_target(&busy, "a", "a", &nodes), None);
        let mut hinted = tonic::Status::unavailable("not the leader");
        hinted.metadata_mut().insert(
            dtc_client::LEADER_HINT_HEADER,
            "3=c".parse().expect("ascii metadata"),
        );
        assert_eq!(next_target(&hinted, "a", "a", &nodes).as_deref(), Some("c"));
    }

    #[test]
    fn next_node_goes_round() {
        let nodes: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(next_node(&nodes, "a").as_deref(), Some("b"));
        assert_eq!(next_node(&nodes, "c").as_deref(), Some("a"));
        assert_eq!(next_node(&nodes, "hinted").as_deref(), Some("a"));
        assert_eq!(next_node(&["a".to_string()], "a"), None);
        assert_eq!(next_node(&[], "a"), None);
    }
}
