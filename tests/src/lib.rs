//! # dtc-tests: a black-box harness for the `dtc` coordinator
//!
//! The integration tests in `tests/tests/` run real `dtc coordinator`
//! processes and talk to them only through the wire contract
//! (`proto/dtc/v1`). The process machinery (process handles, ports, the
//! coordinator layout, waits, the bank History and its checker) is
//! `crates/dtc-harness`, shared with `dtc demo`, `dtc up` and `dtc bench`;
//! this library holds what only the tests need on top of it:
//!
//! - [`dtc_bin`] finds the binary under test (`$DTC_BIN`, else
//!   `target/<profile>/dtc` next to the test executable). Build it first with
//!   `cargo build --workspace` (which compiles the crash points in, see
//!   docs/testing.md); `cargo test --workspace` does that itself.
//! - [`free_ports`] picks loopback ports (never fixed ports, so tests run
//!   in parallel), below the ephemeral range so a process restarts on its
//!   port ([`dtc_harness::ports`]).
//! - [`Cluster`] starts N nodes (each a [`dtc_harness::Process`]) in a
//!   temporary directory, each logging to
//!   `<tmp>/node-<id>.log` (`DTC_LOG=info` unless `DTC_LOG` is set), and can
//!   [`Cluster::kill`] (SIGKILL) and [`Cluster::restart`] them with the same
//!   flags ([`Cluster::prepare`] + [`Cluster::start_node`] start nodes one
//!   at a time; [`Cluster::add_joining_node`] and [`Cluster::replace_node`]
//!   start a node empty with `--join`, the latter after deleting the data
//!   directory of the node it replaces). [`Cluster::leader`] asks every live node for `ClusterStatus`;
//!   [`Cluster::wait_for_stable_leader`] waits until all nodes follow it. A
//!   node that exits without being killed fails the test at once, with its
//!   log ([`Cluster::assert_no_crash`]).
//!   Dropping the cluster kills every child. When the test is failing
//!   (`std::thread::panicking()`), the temporary directory is kept and its path
//!   and the tail of every node's log are printed; set `DTC_TEST_KEEP=1` to
//!   keep it after passing tests too.
//! - [`TestParticipant`] is an in-process participant service with an
//!   in-memory record per transaction and knobs to vote abort or read-only, to
//!   hold `Prepare`/`Commit` at a gate, and to fail `Commit` with UNAVAILABLE.
//!   It also records protocol violations (a commit after an abort, ...).
//! - [`wait_until`] / [`wait_for_ok`] poll a condition every few milliseconds
//!   ([`dtc_harness::wait::poll`]), always bounded by a deadline: no test
//!   synchronizes on a fixed sleep.
//!
//! Every RPC the harness makes carries a per-call timeout ([`request`]).
//!
//! The failover suite (docs/testing.md) adds:
//!
//! - [`ClusterOptions`]: timing, a proxy per coordinator link
//!   ([`net::Mesh`], via `--peer-addr-override`), environment for a node's
//!   next start (`FAILPOINTS`), and tolerating crashes
//!   ([`Cluster::expect_crashes`], [`Cluster::take_exited`]).
//! - [`Cluster::pause`] / [`Cluster::resume`] (SIGSTOP / SIGCONT).
//! - [`net`]: per-link TCP proxies that refuse or black-hole traffic.
//! - [`ledger`]: `dtc participant` ledger processes behind proxies.
//! - [`testbed`]: coordinators + ledgers + a client, with a supervisor that
//!   restarts crashed processes and a fault timeline.
//! - [`bank`], [`checker`], [`nemesis`], [`report`]: the Jepsen-style bank
//!   workload's clients, the final-state reading for dtc-harness's checker,
//!   the seeded fault schedule and the run report.

pub mod bank;
pub mod checker;
pub mod ledger;
pub mod nemesis;
pub mod net;
pub mod report;
pub mod testbed;

use dtc_harness::Process;
use dtc_harness::cluster::{Member, leader_view};
use dtc_harness::wait::poll;
use dtc_proto::v1 as pb;
use pb::coordinator_client::CoordinatorClient;
use pb::participant_server::{Participant, ParticipantServer};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

pub use dtc_proto::v1;

/// A coordinator client over a lazily connecting channel.
pub type Client = CoordinatorClient<Channel>;

/// `n` seconds (the tests' deadlines read better as `secs(30)`).
pub const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// How often conditions are re-checked while waiting.
pub const POLL: Duration = Duration::from_millis(25);

/// The `dtc` binary under test: `$DTC_BIN`, or `dtc` in the target directory
/// of the running test executable (`target/<profile>/deps/<test>` →
/// `target/<profile>/dtc`). Panics with instructions when it is missing.
pub fn dtc_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DTC_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "DTC_BIN={} does not exist", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("cannot locate the test executable");
    let deps = exe.parent().expect("test executable has no directory");
    let bin = deps
        .parent()
        .expect("test executable is not under target/<profile>/deps")
        .join(format!("dtc{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "the dtc binary is missing at {}: run `cargo build --workspace` first \
         (or `cargo test --workspace`, which builds it), or set DTC_BIN",
        bin.display()
    );
    bin
}

/// `n` distinct free loopback ports, safe to restart a process on
/// ([`dtc_harness::ports::free_ports`]).
pub fn free_ports(n: usize) -> Vec<u16> {
    dtc_harness::ports::free_ports(n).expect("free loopback ports")
}

/// One free loopback port.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `msg` with a per-call deadline (sent as `grpc-timeout` and enforced by
/// the client channel).
pub fn request<T>(msg: T, timeout: Duration) -> Request<T> {
    let mut req = Request::new(msg);
    req.set_timeout(timeout);
    req
}

/// A channel to a node at `addr`. Connects lazily and reconnects after a
/// restart; a dead node fails fast.
pub fn channel_for(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid endpoint")
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        // An upper bound for any call, on top of the per-call timeouts.
        .timeout(Duration::from_secs(60))
        .connect_lazy()
}

/// A coordinator client for a node at `addr` (see [`channel_for`]).
pub fn client_for(addr: SocketAddr) -> Client {
    CoordinatorClient::new(channel_for(addr))
}

/// Statuses a client answers by retrying with the same txn id: no leader
/// yet, leadership moved, the node it talked to died, or the call timed out.
pub fn is_retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

/// Polls `check` every [`POLL`] until it yields `Some`, for at most `within`.
/// Each check is itself bounded by the remaining time. Panics naming `what`.
pub async fn wait_until<T, F, Fut>(within: Duration, what: impl fmt::Display, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll(within, POLL, async || check().await).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {within:?} waiting for {what}"),
    }
}

/// Like [`wait_until`], but `check` says why it is not there yet; the last
/// reason is part of the panic message.
pub async fn wait_for_ok<T, E, F, Fut>(within: Duration, what: impl fmt::Display, mut check: F) -> T
where
    E: fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    match poll(within, POLL, async || check().await).await {
        Ok(v) => v,
        Err(e) => panic!("waiting for {what}: {e}"),
    }
}

/// Runs a whole test body with an upper bound, so a hang fails the test
/// (with logs, when the cluster lives outside `fut`) instead of stalling CI.
pub async fn bounded<T>(limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("the test did not finish within {limit:?}"),
    }
}

/// An `ExecuteRequest` with one branch per `(participant, payload)`.
pub fn execute_request(
    txn_id: &str,
    branches: &[(&str, &[u8])],
    timeout_ms: u32,
) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        txn_id: txn_id.to_string(),
        branches: branches
            .iter()
            .map(|(p, payload)| pb::Branch {
                participant: p.to_string(),
                payload: payload.to_vec(),
            })
            .collect(),
        timeout_ms,
        reply_at_decision: false,
    }
}

pub use dtc_harness::process::{tail, tail_filtered};

/// One coordinator process of a [`Cluster`].
pub struct Node {
    pub id: u64,
    pub addr: SocketAddr,
    /// Its place in the cluster's directory and its `dtc coordinator` flags.
    pub member: Member,
    /// The process; its environment for the next start only (e.g.
    /// `FAILPOINTS`) is not kept for a restart unless set again.
    process: Mutex<Process>,
    channel: Channel,
    /// `--join` addresses when the node joined a running cluster
    /// ([`Cluster::add_joining_node`], [`Cluster::replace_node`]) instead
    /// of forming it with `--peers`.
    join: Option<String>,
}

impl Node {
    fn process(&self) -> MutexGuard<'_, Process> {
        self.process.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// N `dtc coordinator` processes on loopback ports, in a temporary directory.
pub struct Cluster {
    root: Option<tempfile::TempDir>,
    root_path: PathBuf,
    nodes: BTreeMap<u64, Node>,
    peers: String,
    extra_args: Vec<String>,
    bin: PathBuf,
    heartbeat_ms: u64,
    election_timeout_ms: (u64, u64),
    mesh: Option<Arc<net::Mesh>>,
    /// When set, a node that exits by itself is recorded (see
    /// [`Cluster::take_exited`]) instead of failing the test.
    crashes_expected: AtomicBool,
    exited: Mutex<Vec<(u64, ExitStatus)>>,
}

/// How [`Cluster::with_options`] lays out a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    /// More `dtc coordinator` flags for every node.
    pub extra_args: Vec<String>,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: (u64, u64),
    /// Route every coordinator → coordinator link through a proxy
    /// ([`Cluster::mesh`]). Needs a tokio runtime.
    pub proxied: bool,
    /// Environment for the *first* start of every node (e.g. `FAILPOINTS`);
    /// restarts run without it.
    pub first_start_env: Vec<(String, String)>,
}

impl ClusterOptions {
    /// `nodes` nodes with the timing of [`Cluster::start`] (50 ms heartbeat,
    /// 150-300 ms election timeout), no proxies, no extra environment.
    pub fn new(nodes: usize) -> Self {
        ClusterOptions {
            nodes,
            extra_args: Vec::new(),
            heartbeat_ms: 50,
            election_timeout_ms: (150, 300),
            proxied: false,
            first_start_env: Vec::new(),
        }
    }
}

impl Cluster {
    /// Starts `n` fresh nodes (ids 1..=n) that form a cluster by themselves.
    /// Does not wait for a leader: see [`Cluster::wait_for_leader`].
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// [`Cluster::start`] with extra `dtc coordinator` flags for every node
    /// (e.g. `--max-in-flight 1`).
    pub fn start_with(n: usize, extra_args: &[&str]) -> Cluster {
        let mut cluster = Cluster::prepare(n, extra_args);
        for id in cluster.ids() {
            cluster.spawn(id);
        }
        cluster
    }

    /// Lays out `n` nodes (ports, directories, flags) without starting any:
    /// start them one by one with [`Cluster::start_node`].
    pub fn prepare(n: usize, extra_args: &[&str]) -> Cluster {
        let mut options = ClusterOptions::new(n);
        options.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        Cluster::prepare_options(options)
    }

    /// Lays out and starts a cluster as `options` say.
    pub fn with_options(options: ClusterOptions) -> Cluster {
        let mut cluster = Cluster::prepare_options(options);
        for id in cluster.ids() {
            cluster.spawn(id);
        }
        cluster
    }

    /// [`Cluster::prepare`] with [`ClusterOptions`].
    pub fn prepare_options(options: ClusterOptions) -> Cluster {
        let n = options.nodes;
        let bin = dtc_bin();
        let root = tempfile::Builder::new()
            .prefix("dtc-cluster-")
            .tempdir()
            .expect("create a temp dir");
        let root_path = root.path().to_path_buf();
        let members = dtc_harness::cluster::members(&root_path, n).expect("free loopback ports");
        let peers = dtc_harness::cluster::peers_arg(&members);
        let mut nodes = BTreeMap::new();
        for m in members {
            let node = Node {
                id: m.id,
                addr: m.addr,
                channel: channel_for(m.addr),
                // The arguments are set below, once the mesh is known.
                process: Mutex::new(Process::new("", &bin, Vec::new(), PathBuf::new())),
                member: m,
                join: None,
            };
            nodes.insert(node.id, node);
        }
        let mesh = options.proxied.then(|| {
            let members: BTreeMap<u64, SocketAddr> =
                nodes.iter().map(|(id, n)| (*id, n.addr)).collect();
            Arc::new(net::Mesh::start(&members))
        });
        let cluster = Cluster {
            root: Some(root),
            root_path,
            nodes,
            peers,
            extra_args: options.extra_args,
            bin,
            heartbeat_ms: options.heartbeat_ms,
            election_timeout_ms: options.election_timeout_ms,
            mesh,
            crashes_expected: AtomicBool::new(false),
            exited: Mutex::new(Vec::new()),
        };
        for id in cluster.ids() {
            let args = cluster.args(id);
            let node = cluster.node(id);
            // Core dumps of crash points (if the system writes any) land in
            // the run directory, not in the source tree.
            let mut process = Process::new(
                &format!("node {id}"),
                &cluster.bin,
                args,
                node.member.log_path.clone(),
            )
            .current_dir(&cluster.root_path);
            let env = &options.first_start_env;
            process.set_next_start_env(
                &env.iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect::<Vec<_>>(),
            );
            *node.process() = process;
        }
        cluster
    }

    fn node(&self, id: u64) -> &Node {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    /// The arguments node `id` runs with (the same on every restart).
    pub fn args(&self, id: u64) -> Vec<String> {
        let node = self.node(id);
        let mut args = node.member.args(&self.peers);
        if let Some(join) = &node.join {
            // `--peers LIST` becomes `--join ADDRS`.
            let at = args.len() - 2;
            args[at] = "--join".into();
            args[at + 1] = join.clone();
        }
        args.extend([
            "--election-timeout-ms".into(),
            format!(
                "{}-{}",
                self.election_timeout_ms.0, self.election_timeout_ms.1
            ),
            "--heartbeat-ms".into(),
            self.heartbeat_ms.to_string(),
        ]);
        if let Some(mesh) = &self.mesh {
            for o in mesh.overrides_for(id) {
                args.push("--peer-addr-override".into());
                args.push(o);
            }
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// More flags for node `id`, on every later start (for flags known only
    /// after the layout, such as the addresses of proxies to participants).
    pub fn extend_args(&self, id: u64, more: Vec<String>) {
        self.node(id).process().extend_args(more);
    }

    /// Starts every node laid out by [`Cluster::prepare_options`].
    pub fn spawn_all(&mut self) {
        for id in self.ids() {
            self.spawn(id);
        }
    }

    /// Lays out node `id` on a fresh loopback port and an empty data
    /// directory (`node-<id>-<n>`, a new one per layout), started with
    /// `--join` at the addresses of the other nodes, and starts it. A node
    /// that had this id is replaced (it must be killed first). Returns the
    /// new node's address.
    fn start_joining(&mut self, id: u64, env: &[(&str, &str)]) -> SocketAddr {
        let port = free_ports(1)[0];
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let n = self.nodes.get(&id).map_or(0, |_| {
            (1..)
                .find(|n| !self.root_path.join(format!("node-{id}-{n}")).exists())
                .unwrap_or(1)
        });
        let (data_dir, log_path) = if n == 0 {
            (
                self.root_path.join(format!("node-{id}")),
                self.root_path.join(format!("node-{id}.log")),
            )
        } else {
            (
                self.root_path.join(format!("node-{id}-{n}")),
                self.root_path.join(format!("node-{id}-{n}.log")),
            )
        };
        let join = self
            .nodes
            .values()
            .filter(|n| n.id != id)
            .map(|n| n.addr.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let member = Member {
            id,
            addr,
            data_dir,
            log_path: log_path.clone(),
        };
        let node = Node {
            id,
            addr,
            channel: channel_for(addr),
            process: Mutex::new(Process::new("", &self.bin, Vec::new(), PathBuf::new())),
            member,
            join: Some(join),
        };
        if let Some(old) = self.nodes.insert(id, node) {
            assert!(
                !old.process().is_running(),
                "node {id} must be killed before it is replaced"
            );
        }
        let args = self.args(id);
        let mut process = Process::new(&format!("node {id}"), &self.bin, args, log_path)
            .current_dir(&self.root_path);
        process.set_next_start_env(env);
        *self.node(id).process() = process;
        self.spawn(id);
        addr
    }

    /// Starts a new node `id` (not yet a member) empty with `--join`; the
    /// cluster takes it in only when told (`dtc cluster add`).
    pub fn add_joining_node(&mut self, id: u64) -> SocketAddr {
        self.add_joining_node_with_env(id, &[])
    }

    /// [`Cluster::add_joining_node`] with environment for its first start
    /// (e.g. `FAILPOINTS`).
    pub fn add_joining_node_with_env(&mut self, id: u64, env: &[(&str, &str)]) -> SocketAddr {
        assert!(!self.nodes.contains_key(&id), "node {id} exists already");
        self.start_joining(id, env)
    }

    /// Node `id` lost its disk: SIGKILLs it (if it runs), deletes its data
    /// directory, and starts it again EMPTY with `--join` on a new port (as
    /// a replacement machine would). Returns the new address; the cluster
    /// takes it back only when told (`dtc cluster replace`).
    pub fn replace_node(&mut self, id: u64) -> SocketAddr {
        if self.is_running(id) {
            self.kill(id);
        }
        let dir = self.node(id).member.data_dir.clone();
        std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("removing {}: {e}", dir.display()));
        self.start_joining(id, &[])
    }

    fn spawn(&mut self, id: u64) {
        if let Err(e) = self.node(id).process().start() {
            panic!("node {id}: {e:#}");
        }
    }

    /// Environment for node `id`'s next start only (e.g.
    /// `("FAILPOINTS", "coordinator.takeover.scan=return")`).
    pub fn set_next_start_env(&mut self, id: u64, env: &[(&str, &str)]) {
        self.node(id).process().set_next_start_env(env);
    }

    /// The proxies between the nodes, if the cluster was laid out with
    /// [`ClusterOptions::proxied`].
    pub fn mesh(&self) -> Option<&Arc<net::Mesh>> {
        self.mesh.as_ref()
    }

    /// From now on a node that exits by itself is recorded for
    /// [`Cluster::take_exited`] instead of failing the test (crash-point
    /// and nemesis tests).
    pub fn expect_crashes(&self, expected: bool) {
        self.crashes_expected.store(expected, Ordering::SeqCst);
    }

    /// Nodes that exited by themselves since the last call (only with
    /// [`Cluster::expect_crashes`]), with their exit status. They count as
    /// stopped: [`Cluster::restart`] starts them again.
    pub fn take_exited(&self) -> Vec<(u64, ExitStatus)> {
        self.assert_no_crash();
        std::mem::take(&mut *self.exited.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Keeps the run directory after the cluster is dropped (a failed check
    /// that does not panic while the cluster lives); returns its path.
    pub fn keep_dir(&mut self) -> PathBuf {
        if let Some(root) = self.root.take() {
            let _ = root.keep();
        }
        self.root_path.clone()
    }

    /// How many times node `id` was started.
    pub fn starts(&self, id: u64) -> u32 {
        self.node(id).process().starts()
    }

    /// The OS process id of node `id`, if it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).process().pid()
    }

    /// Stops node `id` with SIGSTOP: it keeps its sockets and state but
    /// does nothing (a long GC pause, a VM freeze) until [`Cluster::resume`].
    pub fn pause(&self, id: u64) {
        if let Err(e) = self.node(id).process().pause() {
            panic!("node {id}: {e:#}");
        }
    }

    /// Continues a paused node (SIGCONT).
    pub fn resume(&self, id: u64) {
        if let Err(e) = self.node(id).process().resume() {
            eprintln!("harness: node {id}: {e:#}");
        }
    }

    /// Whether node `id` is paused.
    pub fn is_paused(&self, id: u64) -> bool {
        self.node(id).process().is_paused()
    }

    /// Node `id`'s exit status if it has exited by itself, without waiting
    /// (the node counts as stopped afterwards).
    pub fn try_exit(&self, id: u64) -> Option<ExitStatus> {
        self.node(id).process().try_exit()
    }

    /// Waits until every node follows one leader, then registers
    /// `participants`; returns the leader.
    pub async fn ready_with(&self, participants: &[&TestParticipant]) -> u64 {
        let leader = self.wait_for_stable_leader(secs(30)).await;
        for p in participants {
            self.register(p, secs(15)).await;
        }
        leader
    }

    /// Waits until node `id` exits by itself (a crash point fired); returns
    /// its status. The node counts as stopped afterwards.
    pub async fn wait_exit(&self, id: u64, within: Duration) -> ExitStatus {
        wait_until(within, format_args!("node {id} to exit"), || {
            let status = self.node(id).process().try_exit();
            async move { status }
        })
        .await
    }

    /// Every node id.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Ids of the nodes the harness started and has not killed. Panics if
    /// one of them exited by itself (see [`Cluster::assert_no_crash`]).
    pub fn live_ids(&self) -> Vec<u64> {
        self.assert_no_crash();
        self.started_ids()
    }

    /// Whether node `id` was started and not killed by the harness.
    pub fn is_running(&self, id: u64) -> bool {
        self.node(id).process().is_running()
    }

    /// Ids of nodes the harness started and has not killed.
    pub fn started_ids(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.process().is_running())
            .map(|n| n.id)
            .collect()
    }

    /// Panics, with the node's last log lines, if a node exited without the
    /// harness killing it (a crash, or a refused start). Every wait loop on
    /// the cluster calls this, so a crash fails the test at once instead of
    /// surfacing as a timeout.
    pub fn assert_no_crash(&self) {
        for n in self.nodes.values() {
            let exited = n.process().try_exit();
            if let Some(status) = exited {
                if self.crashes_expected.load(Ordering::SeqCst) {
                    self.exited
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((n.id, status));
                    continue;
                }
                panic!(
                    "node {} exited by itself ({status}); last log lines:\n{}",
                    n.id,
                    tail_filtered(&n.member.log_path, 30)
                );
            }
        }
    }

    pub fn addr(&self, id: u64) -> SocketAddr {
        self.node(id).addr
    }

    /// `HOST:PORT,HOST:PORT,...` of every node, in id order.
    pub fn addrs_arg(&self) -> String {
        self.nodes
            .values()
            .map(|n| n.addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn peers_arg(&self) -> &str {
        &self.peers
    }

    pub fn root(&self) -> &Path {
        &self.root_path
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.node(id).member.data_dir.clone()
    }

    pub fn log_path(&self, id: u64) -> &Path {
        &self.node(id).member.log_path
    }

    /// Current size of node `id`'s log, to read only what follows later.
    pub fn log_len(&self, id: u64) -> u64 {
        std::fs::metadata(self.log_path(id))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Node `id`'s log from byte `offset` on.
    pub fn log_since(&self, id: u64, offset: u64) -> String {
        let bytes = std::fs::read(self.log_path(id)).unwrap_or_default();
        let start = (offset as usize).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// A client for node `id` (it may be dead: calls then fail fast).
    pub fn client(&self, id: u64) -> Client {
        CoordinatorClient::new(self.node(id).channel.clone())
    }

    /// A client of node `id`'s `InDoubt` service (what participants ask).
    pub fn in_doubt(&self, id: u64) -> pb::in_doubt_client::InDoubtClient<Channel> {
        pb::in_doubt_client::InDoubtClient::new(self.node(id).channel.clone())
    }

    /// SIGKILL node `id` and reap it.
    pub fn kill(&mut self, id: u64) {
        if self.node(id).process().kill().is_none() {
            panic!("node {id} is not running");
        }
    }

    /// Starts node `id` again with the same flags and data directory.
    pub fn restart(&mut self, id: u64) {
        self.spawn(id);
    }

    /// Starts node `id` of a [`Cluster::prepare`]d cluster (same as
    /// [`Cluster::restart`]; the name says what the test means).
    pub fn start_node(&mut self, id: u64) {
        self.spawn(id);
    }

    /// Node `id`'s own view (`ClusterStatus`), or None if it does not answer
    /// within a second.
    pub async fn status(&self, id: u64) -> Option<pb::ClusterStatusResponse> {
        let mut c = self.client(id);
        c.cluster_status(request(pb::ClusterStatusRequest {}, Duration::from_secs(1)))
            .await
            .ok()
            .map(Response::into_inner)
    }

    /// Every started node's view, asked concurrently.
    pub async fn statuses(&self) -> BTreeMap<u64, pb::ClusterStatusResponse> {
        let ids = self.live_ids();
        let answers = futures::future::join_all(ids.iter().map(|id| self.status(*id))).await;
        ids.into_iter()
            .zip(answers)
            .filter_map(|(id, s)| s.map(|s| (id, s)))
            .collect()
    }

    /// The node whose own role is "leader" (the highest term wins if a
    /// deposed leader has not noticed yet), or None.
    pub async fn leader(&self) -> Option<u64> {
        leader_view(self.statuses().await.values()).map(|s| s.node_id)
    }

    /// Waits until some live node is leader; returns its id.
    pub async fn wait_for_leader(&self, within: Duration) -> u64 {
        wait_until(within, "a leader", || self.leader()).await
    }

    /// Waits until every started node answers and names the same leader in
    /// the same term as that leader's own view. Right after a start or a
    /// restart a node may not have heard from the leader yet (and may still
    /// call an election); workloads that expect no leader change start here.
    pub async fn wait_for_stable_leader(&self, within: Duration) -> u64 {
        wait_for_ok(within, "every node to agree on one leader", || async {
            let ids = self.started_ids();
            let statuses = self.statuses().await;
            let leader =
                leader_view(statuses.values()).ok_or_else(|| format!("no leader: {statuses:?}"))?;
            let agree = ids.iter().all(|id| {
                statuses
                    .get(id)
                    .is_some_and(|s| s.leader_id == Some(leader.node_id) && s.term == leader.term)
            });
            if agree {
                Ok(leader.node_id)
            } else {
                let views: Vec<String> = statuses
                    .values()
                    .map(|s| {
                        format!(
                            "node {}: {} term {} leader {:?}",
                            s.node_id, s.role, s.term, s.leader_id
                        )
                    })
                    .collect();
                Err(format!(
                    "{} of {} nodes answer: {views:?}",
                    statuses.len(),
                    ids.len()
                ))
            }
        })
        .await
    }

    /// Waits until node `id` has applied everything the leader has.
    pub async fn wait_caught_up(&self, id: u64, within: Duration) {
        wait_for_ok(within, format_args!("node {id} to catch up with the leader"), || async {
            let statuses = self.statuses().await;
            let leader = leader_view(statuses.values()).ok_or_else(|| "no leader".to_string())?;
            let me = statuses.get(&id).ok_or_else(|| format!("node {id} does not answer"))?;
            if me.last_applied >= leader.last_applied && me.leader_id == Some(leader.node_id) {
                Ok(())
            } else {
                Err(format!(
                    "node {id}: role {} last_applied {} leader_id {:?}; leader {}: last_applied {}",
                    me.role, me.last_applied, me.leader_id, leader.node_id, leader.last_applied
                ))
            }
        })
        .await
    }

    /// Runs two-branch transactions `bulk-NNNN` on participants `alpha` and
    /// `beta`, one at a time through `via` (concurrent ones would share
    /// batched log entries), until `leader` has applied `entries` more log
    /// entries; each must commit. Returns how many ran. For tests that need
    /// a follower to fall behind a purged log.
    pub async fn grow_log_by(&self, leader: u64, via: &[u64], entries: u64) -> usize {
        let applied = |s: Option<pb::ClusterStatusResponse>| s.expect("leader status").last_applied;
        let target = applied(self.status(leader).await) + entries;
        let mut ran = 0;
        while applied(self.status(leader).await) < target {
            for _ in 0..50 {
                let id = format!("bulk-{ran:04}");
                let req = execute_request(&id, &[("alpha", b"a"), ("beta", b"b")], 5000);
                let r = self
                    .execute_retrying(via, req, Duration::from_secs(30))
                    .await
                    .unwrap_or_else(|s| panic!("{id}: {s:?}"));
                assert_eq!(r.outcome(), pb::Outcome::Committed, "{r:?}");
                ran += 1;
            }
            assert!(
                ran < 5000,
                "the log did not grow by {entries} entries in {ran} transactions"
            );
        }
        ran
    }

    /// Registers `p` through any live node, retrying while there is no leader.
    pub async fn register(&self, p: &TestParticipant, within: Duration) {
        let ids = self.started_ids();
        let mut i = 0usize;
        wait_for_ok(
            within,
            format_args!("registering participant {}", p.name()),
            || {
                i += 1;
                let mut c = self.client(ids[i % ids.len()]);
                let req = pb::RegisterParticipantRequest {
                    name: p.name().to_string(),
                    endpoint: p.endpoint(),
                };
                async move {
                    match c
                        .register_participant(request(req, Duration::from_secs(5)))
                        .await
                    {
                        Ok(_) => Ok(()),
                        Err(s) if is_retryable(&s) => Err(s),
                        Err(s) => panic!("RegisterParticipant failed: {s:?}"),
                    }
                }
            },
        )
        .await
    }

    /// One `Execute` through node `via`, with a per-call timeout.
    pub async fn execute(
        &self,
        via: u64,
        req: pb::ExecuteRequest,
        timeout: Duration,
    ) -> Result<pb::ExecuteResponse, Status> {
        self.client(via)
            .execute(request(req, timeout))
            .await
            .map(Response::into_inner)
    }

    /// `Execute` through the nodes of `via` in turn (skipping killed ones),
    /// retrying retryable statuses with the same request until an answer
    /// arrives or `within` passes. Returns the answer or the last status.
    pub async fn execute_retrying(
        &self,
        via: &[u64],
        req: pb::ExecuteRequest,
        within: Duration,
    ) -> Result<pb::ExecuteResponse, Status> {
        self.execute_retrying_traced(via, req, within).await.0
    }

    /// [`Cluster::execute_retrying`], also returning every status it
    /// retried, as `(node, status)`.
    pub async fn execute_retrying_traced(
        &self,
        via: &[u64],
        req: pb::ExecuteRequest,
        within: Duration,
    ) -> (Result<pb::ExecuteResponse, Status>, Vec<(u64, Status)>) {
        let deadline = Instant::now() + within;
        let per_call = Duration::from_millis(u64::from(req.timeout_ms.max(5000)) + 5000);
        let mut retried = Vec::new();
        let mut attempt = 0usize;
        loop {
            let started = self.started_ids();
            let targets: Vec<u64> = via
                .iter()
                .copied()
                .filter(|id| started.contains(id))
                .collect();
            assert!(
                !targets.is_empty(),
                "execute_retrying: none of {via:?} is running"
            );
            let target = targets[attempt % targets.len()];
            attempt += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            match self.execute(target, req.clone(), per_call.min(left)).await {
                Err(s) if is_retryable(&s) && Instant::now() + POLL < deadline => {
                    retried.push((target, s));
                    tokio::time::sleep(POLL).await;
                }
                other => return (other, retried),
            }
        }
    }

    /// `GetTransaction` through node `via`.
    pub async fn get_txn(&self, via: u64, txn_id: &str) -> Result<pb::TransactionInfo, Status> {
        let r = self
            .client(via)
            .get_transaction(request(
                pb::GetTransactionRequest {
                    txn_id: txn_id.to_string(),
                },
                Duration::from_secs(5),
            ))
            .await?
            .into_inner();
        r.transaction
            .ok_or_else(|| Status::internal("GetTransaction answered without a transaction"))
    }

    /// Waits until `GetTransaction` (through any started node) shows `state`.
    pub async fn wait_txn_state(
        &self,
        txn_id: &str,
        state: pb::TxnState,
        within: Duration,
    ) -> pb::TransactionInfo {
        let mut i = 0usize;
        wait_for_ok(
            within,
            format_args!("transaction {txn_id} to be {state:?}"),
            || {
                i += 1;
                let ids = self.started_ids();
                let via = ids[i % ids.len()];
                async move {
                    let t = self
                        .get_txn(via, txn_id)
                        .await
                        .map_err(|s| format!("{s:?}"))?;
                    if t.state == state as i32 {
                        Ok(t)
                    } else {
                        Err(format!("{t:?}"))
                    }
                }
            },
        )
        .await
    }

    /// `ListTransactions{pending_only: true}` through node `via` (first page).
    pub async fn pending(&self, via: u64) -> Result<Vec<pb::TransactionInfo>, Status> {
        Ok(self
            .client(via)
            .list_transactions(request(
                pb::ListTransactionsRequest {
                    pending_only: true,
                    limit: 1000,
                    after_txn_id: String::new(),
                },
                Duration::from_secs(5),
            ))
            .await?
            .into_inner()
            .transactions)
    }

    /// Waits until the pending list (through any started node) is empty.
    pub async fn wait_no_pending(&self, within: Duration) {
        let mut i = 0usize;
        wait_for_ok(within, "an empty pending list", || {
            i += 1;
            let ids = self.started_ids();
            let via = ids[i % ids.len()];
            async move {
                let p = self.pending(via).await.map_err(|s| format!("{s:?}"))?;
                if p.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{p:?}"))
                }
            }
        })
        .await
    }

    /// Runs `dtc status --coordinators <all> --json` and parses its output.
    pub async fn status_json(&self) -> serde_json::Value {
        let out = tokio::time::timeout(
            Duration::from_secs(15),
            tokio::process::Command::new(&self.bin)
                .args(["status", "--coordinators", &self.addrs_arg(), "--json"])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("dtc status did not finish in 15 s")
        .expect("run dtc status");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "dtc status failed ({}): stdout {stdout} stderr {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("dtc status --json printed invalid JSON ({e}): {stdout}"))
    }

    /// Prints the temp dir and the tail of every node's log to stderr.
    pub fn dump(&self, lines: usize) {
        eprintln!("==== dtc cluster in {} ====", self.root_path.display());
        for n in self.nodes.values() {
            eprintln!(
                "---- node {} ({}) log: {} (last {lines} lines, openraft INFO left out)",
                n.id,
                n.addr,
                n.member.log_path.display()
            );
            eprintln!("{}", tail_filtered(&n.member.log_path, lines));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.nodes.values() {
            n.process().kill();
        }
        if std::thread::panicking() {
            if let Some(root) = self.root.take() {
                let kept = root.keep();
                eprintln!("harness: the test failed; keeping {}", kept.display());
            }
            self.dump(60);
        } else if std::env::var_os("DTC_TEST_KEEP").is_some()
            && let Some(root) = self.root.take()
        {
            eprintln!(
                "harness: DTC_TEST_KEEP is set; keeping {}",
                root.keep().display()
            );
        }
    }
}

/// A `dtc` process started outside a [`Cluster`] (stdout and stderr to
/// `log`); killed on drop, and its log printed if the test failed.
pub struct DtcProcess {
    process: Process,
    pub log: PathBuf,
}

impl DtcProcess {
    pub fn spawn(args: &[&str], log: &Path) -> DtcProcess {
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut process = Process::new("dtc", &dtc_bin(), args, log.to_path_buf());
        if let Err(e) = process.start() {
            panic!("{e:#}");
        }
        DtcProcess {
            process,
            log: log.to_path_buf(),
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.try_exit().is_none() && self.process.is_running()
    }
}

impl Drop for DtcProcess {
    fn drop(&mut self) {
        self.process.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- dtc process log {}:\n{}",
                self.log.display(),
                tail(&self.log, 40)
            );
        }
    }
}

/// Runs a `dtc` command to completion (bounded), returning exit status and
/// its output (stdout, then stderr). For one-shot invocations such as
/// refused starts.
pub fn run_dtc(args: &[&str], within: Duration) -> (ExitStatus, String) {
    let mut cmd = Command::new(dtc_bin());
    cmd.args(args).env("DTC_LOG", "info");
    match dtc_harness::process::run_bounded(cmd, within) {
        Ok(f) => (f.status, f.stdout + &f.stderr),
        Err(e) => panic!("{e:#}"),
    }
}

// ---------------------------------------------------------------------------
// Test participant

/// What a [`TestParticipant`] knows about one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchState {
    /// Prepare arrived; no vote given yet (e.g. held at the gate).
    Preparing,
    /// Voted prepared; waiting for the decision.
    Prepared,
    /// Voted read-only: nothing to commit or abort.
    ReadOnly,
    Committed,
    /// Voted abort, or was prepared and then aborted.
    Aborted,
    /// Abort arrived before any vote: a later Prepare is refused.
    Tombstone,
}

impl BranchState {
    /// Holds nothing and never will commit.
    pub fn is_aborted(self) -> bool {
        matches!(self, BranchState::Aborted | BranchState::Tombstone)
    }
}

/// One transaction's record at a [`TestParticipant`].
#[derive(Debug, Clone)]
pub struct BranchRecord {
    pub state: BranchState,
    pub payload: Vec<u8>,
    /// Calls that arrived (including duplicates and failed ones).
    pub prepares: u32,
    pub commits: u32,
    pub aborts: u32,
    /// The port each Commit arrived on (see [`TestParticipant::move_to_new_port`]).
    pub commit_ports: Vec<u16>,
    /// Reason of the abort vote, or of the Abort call.
    pub reason: String,
}

/// How a [`TestParticipant`] votes on new transactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoteMode {
    Prepared,
    Abort(String),
    ReadOnly,
}

struct PInner {
    txns: BTreeMap<String, BranchRecord>,
    vote: VoteMode,
    fail_commit: bool,
    violations: Vec<String>,
}

struct PShared {
    name: String,
    inner: Mutex<PInner>,
    /// true = open.
    prepare_gate: watch::Sender<bool>,
    commit_gate: watch::Sender<bool>,
}

impl PShared {
    fn lock(&self) -> MutexGuard<'_, PInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One server instance of a participant: its records, and the port it
/// serves on (so a test can tell which endpoint a call reached).
#[derive(Clone)]
struct ParticipantSvc(Arc<PShared>, u16);

fn vote_of(rec: &BranchRecord) -> pb::PrepareResponse {
    let (vote, reason) = match rec.state {
        BranchState::Prepared | BranchState::Committed => (pb::Vote::Prepared, String::new()),
        BranchState::ReadOnly => (pb::Vote::ReadOnly, String::new()),
        BranchState::Aborted | BranchState::Tombstone | BranchState::Preparing => {
            (pb::Vote::Abort, rec.reason.clone())
        }
    };
    pb::PrepareResponse {
        vote: vote as i32,
        reason,
    }
}

#[tonic::async_trait]
impl Participant for ParticipantSvc {
    async fn prepare(
        &self,
        request: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        let req = request.into_inner();
        let s = &self.0;
        {
            let mut inner = s.lock();
            if req.participant != s.name {
                inner.violations.push(format!(
                    "Prepare {} addressed to {:?}, not {:?}",
                    req.txn_id, req.participant, s.name
                ));
            }
            let rec = inner
                .txns
                .entry(req.txn_id.clone())
                .or_insert_with(|| BranchRecord {
                    state: BranchState::Preparing,
                    payload: req.payload.clone(),
                    prepares: 0,
                    commits: 0,
                    aborts: 0,
                    commit_ports: Vec::new(),
                    reason: String::new(),
                });
            rec.prepares += 1;
            if rec.state != BranchState::Preparing {
                // Duplicate, or after a tombstone: the recorded answer.
                return Ok(Response::new(vote_of(rec)));
            }
        }
        let mut gate = s.prepare_gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
        let mut inner = s.lock();
        let vote = inner.vote.clone();
        let rec = inner.txns.get_mut(&req.txn_id).expect("record exists");
        if rec.state == BranchState::Preparing {
            match vote {
                VoteMode::Prepared => rec.state = BranchState::Prepared,
                VoteMode::ReadOnly => rec.state = BranchState::ReadOnly,
                VoteMode::Abort(reason) => {
                    rec.state = BranchState::Aborted;
                    rec.reason = reason;
                }
            }
        }
        Ok(Response::new(vote_of(rec)))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let req = request.into_inner();
        let s = &self.0;
        {
            let mut inner = s.lock();
            match inner.txns.get_mut(&req.txn_id) {
                Some(rec) => {
                    rec.commits += 1;
                    rec.commit_ports.push(self.1);
                }
                None => {
                    inner.violations.push(format!(
                        "Commit of {}, which this participant never saw",
                        req.txn_id
                    ));
                    return Err(Status::failed_precondition(format!(
                        "no record of transaction {} (log lost?)",
                        req.txn_id
                    )));
                }
            }
        }
        let mut gate = s.commit_gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
        let mut inner = s.lock();
        if inner.fail_commit {
            return Err(Status::unavailable(
                "test participant: commit is failing on purpose",
            ));
        }
        let rec = inner.txns.get_mut(&req.txn_id).expect("record exists");
        match rec.state {
            BranchState::Prepared => {
                rec.state = BranchState::Committed;
                Ok(Response::new(pb::CommitResponse {}))
            }
            BranchState::Committed => Ok(Response::new(pb::CommitResponse {})),
            other => {
                let msg = format!("Commit of {} in state {other:?}", req.txn_id);
                inner.violations.push(msg.clone());
                Err(Status::failed_precondition(msg))
            }
        }
    }

    async fn abort(
        &self,
        request: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        let req = request.into_inner();
        let mut inner = self.0.lock();
        let rec = inner
            .txns
            .entry(req.txn_id.clone())
            .or_insert_with(|| BranchRecord {
                state: BranchState::Tombstone,
                payload: Vec::new(),
                prepares: 0,
                commits: 0,
                aborts: 0,
                commit_ports: Vec::new(),
                reason: req.reason.clone(),
            });
        rec.aborts += 1;
        match rec.state {
            BranchState::Preparing => {
                rec.state = BranchState::Tombstone;
                rec.reason = req.reason;
            }
            BranchState::Prepared => {
                rec.state = BranchState::Aborted;
                rec.reason = req.reason;
            }
            BranchState::ReadOnly | BranchState::Aborted | BranchState::Tombstone => {}
            BranchState::Committed => {
                let msg = format!("Abort of {}, which is committed", req.txn_id);
                inner.violations.push(msg.clone());
                return Err(Status::failed_precondition(msg));
            }
        }
        Ok(Response::new(pb::AbortResponse {}))
    }
}

/// An in-process participant service on a loopback port (see the module docs).
pub struct TestParticipant {
    shared: Arc<PShared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// Serves `shared` on a fresh loopback port.
async fn serve_participant(
    shared: Arc<PShared>,
) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a participant port");
    let addr = listener.local_addr().expect("local_addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let svc = ParticipantServer::new(ParticipantSvc(shared, addr.port()));
    let task = tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(
                // Nagle off on accepted sockets, or concurrent calls stall ~40 ms.
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = stopped.await;
                },
            )
            .await;
        if let Err(e) = r {
            eprintln!("test participant server failed: {e}");
        }
    });
    (addr, stop, task)
}

impl TestParticipant {
    /// Serves a participant named `name` on `127.0.0.1:0` on the current
    /// tokio runtime. It votes prepared until told otherwise.
    pub async fn start(name: &str) -> TestParticipant {
        let shared = Arc::new(PShared {
            name: name.to_string(),
            inner: Mutex::new(PInner {
                txns: BTreeMap::new(),
                vote: VoteMode::Prepared,
                fail_commit: false,
                violations: Vec::new(),
            }),
            prepare_gate: watch::channel(true).0,
            commit_gate: watch::channel(true).0,
        });
        let (addr, stop, task) = serve_participant(shared.clone()).await;
        TestParticipant {
            shared,
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Stops serving on the current port and serves the same records on a
    /// new one (a participant restarted elsewhere with its log intact).
    /// Re-register it for the cluster to find it.
    pub async fn move_to_new_port(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Graceful stop closes the open connections too; bounded.
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
        let (addr, stop, task) = serve_participant(self.shared.clone()).await;
        self.addr = addr;
        self.stop = Some(stop);
        self.task = task;
    }

    /// `http://127.0.0.1:PORT`, as registered with the cluster.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port it serves on now.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn set_vote(&self, vote: VoteMode) {
        self.shared.lock().vote = vote;
    }

    /// Makes Prepare wait (after recording its arrival) until released.
    pub fn hold_prepares(&self) {
        self.shared.prepare_gate.send_replace(false);
    }

    pub fn release_prepares(&self) {
        self.shared.prepare_gate.send_replace(true);
    }

    /// Makes Commit wait (after recording its arrival) until released.
    pub fn hold_commits(&self) {
        self.shared.commit_gate.send_replace(false);
    }

    pub fn release_commits(&self) {
        self.shared.commit_gate.send_replace(true);
    }

    /// While set, Commit answers UNAVAILABLE (and changes nothing).
    pub fn fail_commits(&self, fail: bool) {
        self.shared.lock().fail_commit = fail;
    }

    pub fn record(&self, txn_id: &str) -> Option<BranchRecord> {
        self.shared.lock().txns.get(txn_id).cloned()
    }

    pub fn state(&self, txn_id: &str) -> Option<BranchState> {
        self.record(txn_id).map(|r| r.state)
    }

    /// Every transaction's record.
    pub fn records(&self) -> BTreeMap<String, BranchRecord> {
        self.shared.lock().txns.clone()
    }

    /// Protocol violations seen (commit after abort, commit of an unknown
    /// transaction, abort after commit, misaddressed prepare).
    pub fn violations(&self) -> Vec<String> {
        self.shared.lock().violations.clone()
    }

    /// Waits until `txn_id`'s record satisfies `pred`.
    pub async fn wait_for(
        &self,
        txn_id: &str,
        within: Duration,
        what: &str,
        pred: impl Fn(&BranchRecord) -> bool,
    ) -> BranchRecord {
        wait_for_ok(
            within,
            format_args!("{} to see {txn_id} {what}", self.name()),
            || {
                let r = self.record(txn_id);
                let ok = r.as_ref().is_some_and(&pred);
                async move {
                    match r {
                        Some(r) if ok => Ok(r),
                        other => Err(other),
                    }
                }
            },
        )
        .await
    }

    /// Waits until `txn_id` is in `state`.
    pub async fn wait_state(
        &self,
        txn_id: &str,
        state: BranchState,
        within: Duration,
    ) -> BranchRecord {
        self.wait_for(txn_id, within, &format!("{state:?}"), |r| r.state == state)
            .await
    }
}

impl Drop for TestParticipant {
    fn drop(&mut self) {
        // Let held calls finish so the server can stop.
        self.release_prepares();
        self.release_commits();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
        if std::thread::panicking() {
            let inner = self.shared.lock();
            eprintln!(
                "---- participant {} ({}): violations {:?}",
                self.shared.name, self.addr, inner.violations
            );
            for (id, r) in &inner.txns {
                eprintln!(
                    "  {id}: {:?} prepares {} commits {} aborts {} reason {:?}",
                    r.state, r.prepares, r.commits, r.aborts, r.reason
                );
            }
        }
    }
}
