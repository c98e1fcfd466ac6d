//! A local cluster for `dtc demo`, `dtc up` and `dtc bench --local`: three
//! `dtc coordinator` processes and ledger participants (`dtc participant`;
//! none for the bench, which serves its own in process), all children of
//! this process (`std::env::current_exe()`), on free loopback ports, with
//! their data and logs in one temporary directory.
//!
//! ```text
//! <dir>/node-1/        coordinator 1's data     <dir>/node-1.log   its stdout + stderr
//! <dir>/bank-a/        ledger bank-a's data     <dir>/bank-a.log
//! ```
//!
//! Ports are chosen by binding `127.0.0.1:0` (all listeners are held until
//! every port is chosen), so a restarted process gets the same address.
//! Every wait is a bounded poll of a condition. Dropping the cluster SIGKILLs
//! every child and removes the directory unless it is kept
//! ([`LocalCluster::keep`]).

use dtc_client::proto::ClusterStatusResponse;
use dtc_client::{Client, ClientConfig};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How often conditions are re-checked while waiting.
pub const POLL: Duration = Duration::from_millis(20);

/// The ledger participants of a local cluster.
pub const LEDGERS: [&str; 2] = ["bank-a", "bank-b"];

/// Account `i` of a ledger.
pub fn account(i: usize) -> String {
    format!("acct-{i:02}")
}

/// `n` distinct free loopback ports: every listener is held until all are
/// chosen, so the kernel cannot hand one out twice.
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// The last `n` lines of a file (empty if unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One child process (a coordinator or a ledger).
struct Proc {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

/// The cluster's current leader as the nodes report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leader {
    pub id: u64,
    pub term: u64,
}

pub struct LocalCluster {
    dir: tempfile::TempDir,
    keep: bool,
    exe: PathBuf,
    /// Coordinator ids and addresses.
    pub nodes: Vec<(u64, SocketAddr)>,
    /// Ledger names and addresses.
    pub ledgers: Vec<(String, SocketAddr)>,
    procs: Vec<Proc>,
    /// One single-address client per coordinator, for status probes.
    probes: Vec<(u64, Client)>,
}

impl LocalCluster {
    /// Lays out and starts three coordinators and the ledgers of
    /// [`LEDGERS`], whose debits refused only for funds other prepared
    /// transactions reserve wait up to `lock_wait_ms` for their decisions
    /// (`dtc participant --lock-wait-ms`). Returns without waiting for
    /// anything (see [`LocalCluster::wait_ready`]).
    pub fn start(prefix: &str, lock_wait_ms: u64) -> Result<LocalCluster, String> {
        Self::start_with(prefix, &LEDGERS, lock_wait_ms)
    }

    /// Three coordinators and no ledgers (`dtc bench` serves its own
    /// participants in process). Returns without waiting for anything.
    pub fn start_coordinators(prefix: &str) -> Result<LocalCluster, String> {
        Self::start_with(prefix, &[], 0)
    }

    fn start_with(
        prefix: &str,
        ledger_names: &[&str],
        lock_wait_ms: u64,
    ) -> Result<LocalCluster, String> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot locate the dtc executable: {e}"))?;
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let ports = free_ports(3 + ledger_names.len())
            .map_err(|e| format!("cannot find free loopback ports: {e}"))?;
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let nodes: Vec<(u64, SocketAddr)> =
            (0..3).map(|i| (i as u64 + 1, addr(ports[i]))).collect();
        let ledgers: Vec<(String, SocketAddr)> = ledger_names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), addr(ports[3 + i])))
            .collect();
        let probes = nodes
            .iter()
            .map(|(id, a)| {
                let config = ClientConfig {
                    connect_timeout: Duration::from_millis(200),
                    call_deadline: Duration::from_millis(400),
                    min_backoff: Duration::from_millis(10),
                    max_backoff: Duration::from_millis(100),
                    ..ClientConfig::default()
                };
                Client::with_config(vec![a.to_string()], config)
                    .map(|c| (*id, c))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut cluster = LocalCluster {
            dir,
            keep: false,
            exe,
            nodes,
            ledgers,
            procs: Vec::new(),
            probes,
        };
        let peers = cluster
            .nodes
            .iter()
            .map(|(id, a)| format!("{id}={a}"))
            .collect::<Vec<_>>()
            .join(",");
        for (id, addr) in cluster.nodes.clone() {
            let name = format!("node-{id}");
            let data = cluster.root().join(&name);
            let args = vec![
                "coordinator".to_string(),
                "--id".into(),
                id.to_string(),
                "--listen".into(),
                addr.to_string(),
                "--data-dir".into(),
                data.display().to_string(),
                "--peers".into(),
                peers.clone(),
            ];
            cluster.add(&name, args)?;
        }
        let coordinators = cluster.coordinators_arg();
        for (name, addr) in cluster.ledgers.clone() {
            let data = cluster.root().join(&name);
            let args = vec![
                "participant".to_string(),
                "--name".into(),
                name.clone(),
                "--listen".into(),
                addr.to_string(),
                "--data-dir".into(),
                data.display().to_string(),
                "--coordinators".into(),
                coordinators.clone(),
                "--in-doubt-interval-ms".into(),
                "500".into(),
                "--lock-wait-ms".into(),
                lock_wait_ms.to_string(),
            ];
            cluster.add(&name, args)?;
        }
        Ok(cluster)
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

    fn add(&mut self, name: &str, args: Vec<String>) -> Result<(), String> {
        self.procs.push(Proc {
            name: name.to_string(),
            args,
            log: self.log_path(name),
            child: None,
            starts: 0,
        });
        self.spawn(name)
    }

    fn proc_mut(&mut self, name: &str) -> Result<&mut Proc, String> {
        self.procs
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| format!("no process {name} in the local cluster"))
    }

    fn spawn(&mut self, name: &str) -> Result<(), String> {
        let exe = self.exe.clone();
        let p = self.proc_mut(name)?;
        if p.child.is_some() {
            return Err(format!("{name} is already running"));
        }
        p.starts += 1;
        let mut log: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .map_err(|e| format!("cannot open {}: {e}", p.log.display()))?;
        let _ = writeln!(
            log,
            "=== dtc local cluster: start #{} of {name}: {} {}",
            p.starts,
            exe.display(),
            p.args.join(" ")
        );
        let err = log
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", p.log.display()))?;
        let level = std::env::var("DTC_LOG").unwrap_or_else(|_| "info,openraft=warn".into());
        let mut cmd = Command::new(&exe);
        // In a process group of its own, so a Ctrl-C at the terminal reaches
        // only this process, which then stops every child itself.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .args(&p.args)
            .env("DTC_LOG", level)
            // No injected faults in a local cluster.
            .env_remove("FAILPOINTS")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("cannot start {} {name}: {e}", exe.display()))?;
        p.child = Some(child);
        Ok(())
    }

    /// SIGKILLs process `name` and reaps it. Returns its pid.
    pub fn kill(&mut self, name: &str) -> Result<u32, String> {
        let p = self.proc_mut(name)?;
        let Some(mut child) = p.child.take() else {
            return Err(format!("{name} is not running"));
        };
        let pid = child.id();
        child
            .kill()
            .map_err(|e| format!("cannot kill {name} (pid {pid}): {e}"))?;
        let _ = child.wait();
        Ok(pid)
    }

    /// Starts a killed process again with the same arguments (same port,
    /// same data directory).
    pub fn restart(&mut self, name: &str) -> Result<(), String> {
        self.spawn(name)
    }

    pub fn is_running(&self, name: &str) -> bool {
        self.procs
            .iter()
            .any(|p| p.name == name && p.child.is_some())
    }

    /// Err (naming the process, its exit status and its log) if a child
    /// exited without being killed here.
    pub fn check_children(&mut self) -> Result<(), String> {
        for p in &mut self.procs {
            let Some(child) = p.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                p.child = None;
                return Err(format!(
                    "{} exited by itself ({status}); last lines of {}:\n{}",
                    p.name,
                    p.log.display(),
                    indent(&tail(&p.log, 15))
                ));
            }
        }
        Ok(())
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

    /// Waits for a leader other than `not` with a term above `min_term`.
    pub async fn wait_for_leader(
        &mut self,
        within: Duration,
        not: Option<u64>,
        min_term: u64,
    ) -> Result<Leader, String> {
        let deadline = Instant::now() + within;
        loop {
            self.check_children()?;
            if let Some(l) = self.leader().await
                && Some(l.id) != not
                && l.term > min_term
            {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                return Err(format!("no leader elected within {within:?}"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until node `id` reports itself a follower of `leader` in its term.
    pub async fn wait_for_follower(&mut self, id: u64, within: Duration) -> Result<Leader, String> {
        let deadline = Instant::now() + within;
        loop {
            self.check_children()?;
            let statuses = self.statuses().await;
            let leader = leader_of(&statuses);
            let mine = statuses
                .iter()
                .find(|(i, _)| *i == id)
                .and_then(|(_, s)| s.as_ref());
            if let (Some(l), Some(s)) = (leader, mine)
                && s.role == "follower"
                && s.term == l.term
                && s.leader_id == Some(l.id)
            {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "node {id} did not rejoin as a follower within {within:?}"
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for a leader and for every ledger to be registered.
    pub async fn wait_ready(
        &mut self,
        client: &Client,
        within: Duration,
    ) -> Result<Leader, String> {
        let deadline = Instant::now() + within;
        let leader = self.wait_for_leader(within, None, 0).await?;
        for (name, _) in self.ledgers.clone() {
            loop {
                self.check_children()?;
                if client.participant_endpoint(&name).await.is_ok() {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!("ledger {name} did not register within {within:?}"));
                }
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(leader)
    }

    /// Waits until ledger `name` answers a balance read (it serves again).
    pub async fn wait_ledger_serving(
        &mut self,
        client: &Client,
        name: &str,
        within: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            self.check_children()?;
            let acct = account(0);
            let probe = tokio::time::timeout(Duration::from_secs(1), client.balance(name, &acct));
            if let Ok(Ok(_)) = probe.await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "ledger {name} did not serve again within {within:?}"
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Deposits `amount` into accounts 0..`accounts` of every ledger (in
    /// parallel, one transaction each). Returns the total deposited.
    pub async fn seed(&self, client: &Client, accounts: usize, amount: i64) -> Result<i64, String> {
        let mut jobs = Vec::new();
        for (ledger, _) in &self.ledgers {
            for i in 0..accounts {
                let acct = account(i);
                let id = format!("seed-{ledger}-{acct}");
                let c = client.clone();
                let ledger = ledger.clone();
                jobs.push(async move {
                    let o = c
                        .deposit((&ledger, &acct), amount)
                        .id(id)
                        .execute()
                        .await
                        .map_err(|e| format!("deposit into {ledger}/{acct}: {e}"))?;
                    if o.committed {
                        Ok(amount)
                    } else {
                        Err(format!(
                            "deposit into {ledger}/{acct} aborted: {}",
                            o.reason
                        ))
                    }
                });
            }
        }
        let results = futures::future::join_all(jobs).await;
        results.into_iter().sum()
    }
}

/// The node calling itself leader with the highest term.
pub fn leader_of(statuses: &[(u64, Option<ClusterStatusResponse>)]) -> Option<Leader> {
    statuses
        .iter()
        .filter_map(|(_, s)| s.as_ref())
        .filter(|s| s.role == "leader")
        .max_by_key(|s| s.term)
        .map(|s| Leader {
            id: s.node_id,
            term: s.term,
        })
}

/// Every line of `text` indented by four spaces.
pub fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
