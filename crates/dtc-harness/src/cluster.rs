//! A local cluster: `dtc coordinator` processes and ledger participants
//! (`dtc participant`), all children of this process, on loopback ports,
//! with their data and logs in one temporary directory.
//!
//! ```text
//! <dir>/node-1/   coordinator 1's data     <dir>/node-1.log   its stdout + stderr
//! <dir>/bank-a/   ledger bank-a's data     <dir>/bank-a.log
//! ```
//!
//! Every process serves Prometheus metrics on a port of its own
//! ([`LocalCluster::metrics`]). A killed process restarts on the same ports
//! and data. Every wait is a bounded poll of a condition that also fails
//! fast when a child exited by itself. Dropping the cluster SIGKILLs every
//! child and removes the directory unless it is kept ([`LocalCluster::keep`]);
//! when dropped by a failing test (a panic), it keeps the directory and
//! prints the end of every child's log.

use crate::history::{Branch, History, Op, OpKind, OpResult, result_of};
use crate::metrics::{self, Metrics};
use crate::ports::{free_ports, loopback};
use crate::process::{Process, tail_filtered};
use crate::wait::{Check, poll};
use anyhow::{Context, Result, bail};
use dtc_client::proto::ClusterStatusResponse;
use dtc_client::{Client, ClientConfig};
use dtc_ledger::LedgerClient;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often conditions are re-checked while waiting.
pub const POLL: Duration = Duration::from_millis(20);

/// The ledger participants of the demo's and `dtc up`'s cluster.
pub const LEDGERS: [&str; 2] = ["bank-a", "bank-b"];

/// Account `i` of a ledger.
pub fn account(i: usize) -> String {
    format!("acct-{i:02}")
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The `dtc` binary.
    pub exe: PathBuf,
    /// Prefix of the temporary directory's name (`dtc-demo-`).
    pub prefix: String,
    /// How many coordinators (ids 1..=n).
    pub coordinators: usize,
    /// Ledger participants by name (none for the bench, which serves its
    /// own participants in process).
    pub ledgers: Vec<String>,
    /// The ledgers' `--lock-wait-ms`.
    pub lock_wait_ms: u64,
    /// Mutual TLS for every process (each gets these files as
    /// `--tls-cert/--tls-key/--tls-ca`) and for the harness's own probes.
    pub tls: Option<dtc_client::TlsFiles>,
}

impl ClusterSpec {
    /// Three coordinators and the ledgers of [`LEDGERS`], run by this
    /// executable (the `dtc` binary itself).
    pub fn local(prefix: &str) -> Result<ClusterSpec> {
        Ok(ClusterSpec {
            exe: std::env::current_exe().context("cannot locate the dtc executable")?,
            prefix: prefix.to_string(),
            coordinators: 3,
            ledgers: LEDGERS.iter().map(|l| l.to_string()).collect(),
            lock_wait_ms: 0,
            tls: None,
        })
    }
}

/// Coordinator `id` of a cluster laid out in one directory.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: u64,
    /// Where it listens, and what the other members and clients dial.
    pub addr: SocketAddr,
    /// `<root>/node-<id>`.
    pub data_dir: PathBuf,
    /// `<root>/node-<id>.log`: its stdout and stderr.
    pub log_path: PathBuf,
}

impl Member {
    /// The `dtc coordinator` flags that make it this member (id, listen
    /// address, data directory, `peers`); callers add timing and the like.
    pub fn args(&self, peers: &str) -> Vec<String> {
        let args = [
            "coordinator",
            "--id",
            &self.id.to_string(),
            "--listen",
            &self.addr.to_string(),
            "--data-dir",
            &self.data_dir.display().to_string(),
            "--peers",
            peers,
        ];
        args.map(String::from).to_vec()
    }
}

/// `n` coordinators (ids 1..=n) in `root`, each on a free loopback port
/// (safe to restart on, see [`crate::ports`]).
pub fn members(root: &Path, n: usize) -> Result<Vec<Member>> {
    let ports = free_ports(n).context("cannot find free loopback ports")?;
    Ok((1..)
        .zip(ports)
        .map(|(id, port)| Member {
            id,
            addr: loopback(port),
            data_dir: root.join(format!("node-{id}")),
            log_path: root.join(format!("node-{id}.log")),
        })
        .collect())
}

/// The `dtc participant` flags of ledger `name` (listening on `listen`,
/// its data in `data_dir`, registering with `coordinators`, asking about
/// in-doubt transactions every `in_doubt_ms`); callers add the rest.
pub fn ledger_args(
    name: &str,
    listen: SocketAddr,
    data_dir: &Path,
    coordinators: &str,
    in_doubt_ms: u64,
) -> Vec<String> {
    let args = [
        "participant",
        "--name",
        name,
        "--listen",
        &listen.to_string(),
        "--data-dir",
        &data_dir.display().to_string(),
        "--coordinators",
        coordinators,
        "--in-doubt-interval-ms",
        &in_doubt_ms.to_string(),
    ];
    args.map(String::from).to_vec()
}

/// `--peers` of `members`: `1=HOST:PORT,2=HOST:PORT,...`.
pub fn peers_arg(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| format!("{}={}", m.id, m.addr))
        .collect::<Vec<_>>()
        .join(",")
}

/// The cluster's current leader as the nodes report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leader {
    pub id: u64,
    pub term: u64,
}

/// A running local cluster (see the module docs).
pub struct LocalCluster {
    /// Every child's data directory and log.
    dir: tempfile::TempDir,
    /// The directory outlives the cluster (asked for, or a failure).
    keep: bool,
    /// Coordinator ids and addresses.
    pub nodes: Vec<(u64, SocketAddr)>,
    /// Ledger names and addresses.
    pub ledgers: Vec<(String, SocketAddr)>,
    /// Every process's metrics address, by process name.
    metrics: BTreeMap<String, SocketAddr>,
    /// The children, coordinators first (`node-<id>`), then the ledgers.
    procs: Vec<Process>,
    /// One single-address client per coordinator, for status probes.
    probes: Vec<(u64, Client)>,
}

impl LocalCluster {
    /// Lays out and starts every process. Returns without waiting for
    /// anything (see [`LocalCluster::wait_ready`]).
    pub fn start(spec: &ClusterSpec) -> Result<LocalCluster> {
        let dir = tempfile::Builder::new()
            .prefix(&spec.prefix)
            .tempdir()
            .context("cannot create a temporary directory")?;
        let members = members(dir.path(), spec.coordinators)?;
        let n = spec.coordinators + spec.ledgers.len();
        let ports =
            free_ports(n + spec.ledgers.len()).context("cannot find free loopback ports")?;
        let (metrics_ports, ports) = ports.split_at(n);
        let nodes: Vec<(u64, SocketAddr)> = members.iter().map(|m| (m.id, m.addr)).collect();
        let ledgers: Vec<(String, SocketAddr)> = spec
            .ledgers
            .iter()
            .zip(ports)
            .map(|(name, p)| (name.clone(), loopback(*p)))
            .collect();
        let names = nodes
            .iter()
            .map(|(id, _)| format!("node-{id}"))
            .chain(ledgers.iter().map(|(name, _)| name.clone()));
        let metrics = names
            .zip(metrics_ports)
            .map(|(name, p)| (name, loopback(*p)))
            .collect();
        let tls = match &spec.tls {
            Some(files) => Some(dtc_client::Tls::load(files.clone())?),
            None => None,
        };
        let probes = nodes
            .iter()
            .map(|(id, a)| Ok((*id, probe_client(*a, tls.clone())?)))
            .collect::<Result<Vec<_>>>()?;
        let mut cluster = LocalCluster {
            dir,
            keep: false,
            nodes,
            ledgers,
            metrics,
            procs: Vec::new(),
            probes,
        };
        let peers = peers_arg(&members);
        for m in &members {
            cluster.add(spec, &format!("node-{}", m.id), m.args(&peers))?;
        }
        let coordinators = cluster.coordinators_arg();
        for (name, addr) in cluster.ledgers.clone() {
            let data = cluster.root().join(&name);
            let mut args = ledger_args(&name, addr, &data, &coordinators, 500);
            args.extend(["--lock-wait-ms".into(), spec.lock_wait_ms.to_string()]);
            cluster.add(spec, &name, args)?;
        }
        Ok(cluster)
    }

    /// Starts process `name` with `args` and its metrics port.
    fn add(&mut self, spec: &ClusterSpec, name: &str, mut args: Vec<String>) -> Result<()> {
        args.extend(["--metrics-listen".into(), self.metrics[name].to_string()]);
        if let Some(tls) = &spec.tls {
            for (flag, path) in [
                ("--tls-cert", &tls.cert),
                ("--tls-key", &tls.key),
                ("--tls-ca", &tls.ca),
            ] {
                args.extend([flag.to_string(), path.display().to_string()]);
            }
        }
        let mut p = Process::new(name, &spec.exe, args, self.log_path(name))
            .current_dir(self.root())
            .log_filter("info,openraft=warn");
        p.start()?;
        self.procs.push(p);
        Ok(())
    }

    /// The directory holding every child's data and log.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the directory when the cluster is dropped.
    pub fn keep(&mut self) {
        self.keep = true;
        self.dir.disable_cleanup(true);
    }

    pub fn is_kept(&self) -> bool {
        self.keep
    }

    /// Prints the directory and the last `lines` of every child's log
    /// (openraft's INFO chatter left out) to stderr.
    pub fn dump(&self, lines: usize) {
        eprintln!("==== dtc local cluster in {} ====", self.root().display());
        for p in &self.procs {
            let log = p.log_path();
            eprintln!("---- {} ({}) ----", p.name(), log.display());
            eprintln!("{}", tail_filtered(log, lines));
        }
    }

    /// `HOST:PORT,HOST:PORT,HOST:PORT` of the coordinators.
    pub fn coordinators_arg(&self) -> String {
        self.coordinator_addrs().join(",")
    }

    pub fn coordinator_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|(_, a)| a.to_string()).collect()
    }

    /// The log file of process `name` (`node-1`, `bank-a`, ...).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.root().join(format!("{name}.log"))
    }

    fn proc_mut(&mut self, name: &str) -> Result<&mut Process> {
        self.procs
            .iter_mut()
            .find(|p| p.name() == name)
            .with_context(|| format!("no process {name} in the local cluster"))
    }

    /// SIGKILLs process `name` and reaps it. Returns its pid.
    pub fn kill(&mut self, name: &str) -> Result<u32> {
        let p = self.proc_mut(name)?;
        let pid = p.pid().with_context(|| format!("{name} is not running"))?;
        p.kill();
        Ok(pid)
    }

    /// Starts a killed process again with the same arguments (same port,
    /// same data directory).
    pub fn restart(&mut self, name: &str) -> Result<()> {
        self.proc_mut(name)?.start()
    }

    pub fn is_running(&self, name: &str) -> bool {
        self.procs
            .iter()
            .any(|p| p.name() == name && p.is_running())
    }

    /// Err (naming the process, its exit status and its log) if a child
    /// exited without being killed here.
    pub fn check_children(&mut self) -> Result<()> {
        self.procs.iter_mut().try_for_each(Process::check)
    }

    /// Process `name`'s metrics, scraped now.
    pub async fn metrics(&self, name: &str) -> Result<Metrics> {
        let addr = self
            .metrics
            .get(name)
            .with_context(|| format!("no process {name} in the local cluster"))?;
        metrics::scrape(*addr, Duration::from_secs(2)).await
    }

    /// Every running coordinator's own status (None: no answer).
    pub async fn statuses(&self) -> Vec<(u64, Option<ClusterStatusResponse>)> {
        let live: Vec<&(u64, Client)> = self
            .probes
            .iter()
            .filter(|(id, _)| self.is_running(&format!("node-{id}")))
            .collect();
        let answers = futures::future::join_all(live.iter().map(|(_, c)| c.cluster_status())).await;
        live.iter()
            .zip(answers)
            .map(|((id, _), r)| (*id, r.ok()))
            .collect()
    }

    /// The running node that calls itself leader with the highest term.
    pub async fn leader(&self) -> Option<Leader> {
        leader_of(&self.statuses().await)
    }

    /// Probe clients (one per coordinator), for a background leader watch.
    pub fn probes(&self) -> Vec<(u64, Client)> {
        self.probes.clone()
    }

    /// Polls `check` until it gives a value, checking the children every
    /// time; Err with `what` after `within`.
    pub async fn wait_for<T, F: AsyncFnMut(&Self) -> Option<T>>(
        &mut self,
        within: Duration,
        what: impl FnOnce() -> String,
        mut check: F,
    ) -> Result<T> {
        poll(within, POLL, async || {
            if let Err(e) = self.check_children() {
                return Check::Failed(e);
            }
            check(self).await.into()
        })
        .await
        .with_context(what)
    }

    /// Waits for a leader other than `not` with a term above `min_term`.
    pub async fn wait_for_leader(
        &mut self,
        within: Duration,
        not: Option<u64>,
        min_term: u64,
    ) -> Result<Leader> {
        self.wait_for(
            within,
            || "no leader elected".into(),
            async |c| {
                c.leader()
                    .await
                    .filter(|l| Some(l.id) != not && l.term > min_term)
            },
        )
        .await
    }

    /// Waits until node `id` reports itself a follower of the leader in its term.
    pub async fn wait_for_follower(&mut self, id: u64, within: Duration) -> Result<Leader> {
        self.wait_for(
            within,
            || format!("node {id} did not rejoin as a follower"),
            async |c| {
                let statuses = c.statuses().await;
                let l = leader_of(&statuses)?;
                let (_, mine) = statuses.iter().find(|(i, _)| *i == id)?;
                let s = mine.as_ref()?;
                (s.role == "follower" && s.term == l.term && s.leader_id == Some(l.id)).then_some(l)
            },
        )
        .await
    }

    /// Waits for a leader and for every ledger to be registered.
    pub async fn wait_ready(&mut self, client: &Client, within: Duration) -> Result<Leader> {
        let leader = self.wait_for_leader(within, None, 0).await?;
        for (name, _) in self.ledgers.clone() {
            self.wait_for(
                within,
                || format!("ledger {name} did not register"),
                async |_| client.participant_endpoint(&name).await.ok(),
            )
            .await?;
        }
        Ok(leader)
    }

    /// Waits until ledger `name` answers a balance read (it serves again).
    pub async fn wait_ledger_serving(
        &mut self,
        client: &Client,
        name: &str,
        within: Duration,
    ) -> Result<()> {
        let acct = account(0);
        self.wait_for(
            within,
            || format!("ledger {name} did not serve again"),
            async |_| {
                let probe = client.balance(name, &acct);
                let answer = tokio::time::timeout(Duration::from_secs(1), probe).await;
                matches!(answer, Ok(Ok(_))).then_some(())
            },
        )
        .await
    }

    /// Deposits `amount` into accounts 0..`accounts` of every ledger (in
    /// parallel, one transaction each, recorded in `history`). Returns the
    /// total deposited.
    pub async fn seed(
        &self,
        client: &Client,
        accounts: usize,
        amount: i64,
        history: &History,
    ) -> Result<i64> {
        let mut jobs = Vec::new();
        for (ledger, _) in &self.ledgers {
            for acct in (0..accounts).map(account) {
                let id = format!("seed-{ledger}-{acct}");
                let index = history.begin(Op {
                    id: id.clone(),
                    kind: OpKind::Deposit,
                    client: usize::MAX,
                    branches: vec![Branch {
                        participant: ledger.clone(),
                        entries: vec![(acct.clone(), amount)],
                    }],
                    start_ms: history.now_ms(),
                    end_ms: 0,
                    result: OpResult::Running,
                });
                jobs.push(async move {
                    let r = client
                        .deposit((ledger, &acct), amount)
                        .id(id)
                        .execute()
                        .await;
                    let result = result_of(r);
                    history.finish(index, result.clone());
                    match result {
                        OpResult::Committed => Ok(amount),
                        OpResult::Aborted { reason } => {
                            bail!("deposit into {ledger}/{acct} aborted: {reason}")
                        }
                        OpResult::Unknown { error } | OpResult::Failed { error } => {
                            bail!("deposit into {ledger}/{acct}: {error}")
                        }
                        OpResult::Running => bail!("deposit into {ledger}/{acct}: no answer"),
                    }
                });
            }
        }
        futures::future::join_all(jobs).await.into_iter().sum()
    }
}

fn probe_client(addr: SocketAddr, tls: Option<dtc_client::Tls>) -> Result<Client> {
    let config = ClientConfig {
        tls,
        connect_timeout: Duration::from_millis(200),
        call_deadline: Duration::from_millis(400),
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        ..ClientConfig::default()
    };
    Ok(Client::with_config(vec![addr.to_string()], config)?)
}

/// The view of the node calling itself leader with the highest term (a
/// restarted ex-leader can briefly claim its old term).
pub fn leader_view<'a>(
    statuses: impl IntoIterator<Item = &'a ClusterStatusResponse>,
) -> Option<&'a ClusterStatusResponse> {
    statuses
        .into_iter()
        .filter(|s| s.role == "leader")
        .max_by_key(|s| s.term)
}

/// The node calling itself leader with the highest term.
pub fn leader_of(statuses: &[(u64, Option<ClusterStatusResponse>)]) -> Option<Leader> {
    leader_view(statuses.iter().filter_map(|(_, s)| s.as_ref())).map(|s| Leader {
        id: s.node_id,
        term: s.term,
    })
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // Every child stops first (Process's own drop would come after this).
        for p in &mut self.procs {
            p.kill();
        }
        if std::thread::panicking() {
            self.keep();
            self.dump(40);
        }
    }
}
