//! `dtc participant` ledger processes (crates/dtc-ledger) for the failover
//! suite: started, SIGKILLed, restarted on the same port and data
//! directory, paused, and optionally reached through proxies.
//!
//! With proxies, the participant registers the endpoint of its inbound
//! [`Link`] (so every coordinator → participant call crosses it) and dials
//! the coordinators through one outbound link each (registration and
//! in-doubt queries). The registry holds one endpoint per participant for
//! the whole cluster, so the inbound link cuts the participant off from
//! whichever coordinator leads; the outbound links can be cut per
//! coordinator.

use crate::net::{Link, LinkMode};
use crate::{request, reserve_ports, signal, tail};
use dtc_proto::v1 as pb;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// One ledger participant process.
pub struct LedgerProc {
    pub name: String,
    /// Where the process listens (the harness reads balances here directly).
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    cwd: PathBuf,
    child: Option<Child>,
    /// Coordinators → this participant (the registered endpoint), if proxied.
    pub inbound: Option<Arc<Link>>,
    /// This participant → coordinator i (its `--coordinators`), if proxied.
    pub outbound: Vec<(u64, Arc<Link>)>,
    coordinators: Vec<(u64, SocketAddr)>,
    in_doubt_interval_ms: u64,
    next_env: Vec<(String, String)>,
    starts: u32,
    paused: bool,
    channel: Channel,
}

impl std::fmt::Debug for LedgerProc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerProc")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("running", &self.child.is_some())
            .finish_non_exhaustive()
    }
}

impl LedgerProc {
    /// Lays out ledger `name` in `root` (not started). `coordinators` are
    /// (id, address) of every node; with `proxied`, links are created (needs
    /// a tokio runtime).
    pub fn new(
        name: &str,
        root: &Path,
        coordinators: &[(u64, SocketAddr)],
        proxied: bool,
        in_doubt_interval_ms: u64,
    ) -> LedgerProc {
        let listen = SocketAddr::from(([127, 0, 0, 1], reserve_ports(1)[0]));
        let inbound = proxied.then(|| Link::start(format!("coord->{name}"), listen));
        let outbound = if proxied {
            coordinators
                .iter()
                .map(|(id, addr)| (*id, Link::start(format!("{name}->c{id}"), *addr)))
                .collect()
        } else {
            Vec::new()
        };
        LedgerProc {
            name: name.to_string(),
            listen,
            data_dir: root.join(name),
            log_path: root.join(format!("{name}.log")),
            cwd: root.to_path_buf(),
            child: None,
            inbound,
            outbound,
            coordinators: coordinators.to_vec(),
            in_doubt_interval_ms,
            next_env: Vec::new(),
            starts: 0,
            paused: false,
            channel: Endpoint::from_shared(format!("http://{listen}"))
                .expect("valid endpoint")
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true)
                .connect_lazy(),
        }
    }

    /// The endpoint it registers (the inbound proxy's, if any).
    pub fn endpoint(&self) -> String {
        match &self.inbound {
            Some(l) => l.endpoint(),
            None => format!("http://{}", self.listen),
        }
    }

    /// Environment for the next start only (e.g. `FAILPOINTS`).
    pub fn set_next_start_env(&mut self, env: &[(&str, &str)]) {
        self.next_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// How many times it was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn note(&self, what: &str) {
        let _ = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .and_then(|mut f| writeln!(f, "=== harness: {} {what}", self.name));
    }

    /// Starts the process (same port and data directory every time).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.starts += 1;
        let coordinators = if self.outbound.is_empty() {
            self.coordinators
                .iter()
                .map(|(_, a)| a.to_string())
                .collect::<Vec<_>>()
        } else {
            self.outbound
                .iter()
                .map(|(_, l)| l.addr().to_string())
                .collect()
        }
        .join(",");
        let args = vec![
            "participant".to_string(),
            "--name".into(),
            self.name.clone(),
            "--listen".into(),
            self.listen.to_string(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--coordinators".into(),
            coordinators,
            "--advertise".into(),
            self.endpoint(),
            "--in-doubt-interval-ms".into(),
            self.in_doubt_interval_ms.to_string(),
        ];
        let env = std::mem::take(&mut self.next_env);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open the ledger log");
        writeln!(
            log,
            "=== harness: start #{} of {}: dtc {} {}",
            self.starts,
            self.name,
            args.join(" "),
            if env.is_empty() {
                String::new()
            } else {
                format!("(environment {env:?})")
            }
        )
        .expect("write the ledger log");
        let err = log.try_clone().expect("clone the log handle");
        let log_level = std::env::var("DTC_LOG").unwrap_or_else(|_| "info".into());
        let child = Command::new(crate::dtc_bin())
            .args(&args)
            .env("DTC_LOG", log_level)
            .env_remove("FAILPOINTS")
            .env_remove("DTC_COORDINATORS")
            .envs(env)
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start dtc participant");
        self.paused = false;
        self.child = Some(child);
    }

    /// SIGKILL and reap (no-op if not running).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let status = c.wait();
            self.note(&format!("killed (SIGKILL): {status:?}"));
        }
        self.paused = false;
    }

    /// SIGKILL, then start again.
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    /// SIGSTOP until [`LedgerProc::resume`].
    pub fn pause(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, nix::sys::signal::Signal::SIGSTOP);
            self.paused = true;
            self.note("paused (SIGSTOP)");
        }
    }

    pub fn resume(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, nix::sys::signal::Signal::SIGCONT);
            self.note("resumed (SIGCONT)");
        }
        self.paused = false;
    }

    /// Its exit status if it exited by itself (it then counts as stopped).
    pub fn take_exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        self.paused = false;
        self.note(&format!("exited by itself: {status}"));
        Some(status)
    }

    /// Sets every link of this participant (inbound and outbound).
    pub fn set_links(&self, mode: LinkMode) {
        if let Some(l) = &self.inbound {
            l.set(mode);
        }
        for (_, l) in &self.outbound {
            l.set(mode);
        }
    }

    /// The `Ledger` service, directly on the listen port (not proxied).
    pub fn ledger_client(&self) -> pb::ledger_client::LedgerClient<Channel> {
        pb::ledger_client::LedgerClient::new(self.channel.clone())
    }

    /// The committed balance of `account`, and what prepared transactions
    /// hold on it in words ("" when nothing: no reservation, no lock).
    pub async fn balance(&self, account: &str) -> Result<(i64, String), tonic::Status> {
        let r = self
            .ledger_client()
            .balance(request(
                pb::BalanceRequest {
                    account: account.to_string(),
                },
                Duration::from_secs(2),
            ))
            .await?
            .into_inner();
        let mut held = Vec::new();
        if r.reserved != 0 {
            held.push(format!("{} reserved", r.reserved));
        }
        if r.incoming != 0 {
            held.push(format!("{} incoming", r.incoming));
        }
        if !r.locked_by.is_empty() {
            held.push(format!("locked by {}", r.locked_by));
        }
        Ok((r.balance, held.join(", ")))
    }

    /// Every decided (and, with `include_prepared`, prepared) transaction.
    pub async fn audit(
        &self,
        include_prepared: bool,
    ) -> Result<Vec<pb::AuditEntry>, tonic::Status> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let page = self
                .ledger_client()
                .audit(request(
                    pb::AuditRequest {
                        after_txn_id: after.clone(),
                        limit: 10_000,
                        include_prepared,
                    },
                    Duration::from_secs(10),
                ))
                .await?
                .into_inner();
            out.extend(page.transactions);
            if page.next_after_txn_id.is_empty() {
                return Ok(out);
            }
            after = page.next_after_txn_id;
        }
    }

    /// Waits until the process answers on its port.
    pub async fn wait_serving(&self, within: Duration) {
        crate::wait_for_ok(within, format_args!("{} to serve", self.name), || async {
            self.balance("probe").await.map(|_| ())
        })
        .await;
    }

    /// Prints the tail of its log (for failing tests).
    pub fn dump(&self, lines: usize) {
        eprintln!(
            "---- {} log: {} (last {lines} lines)",
            self.name,
            self.log_path.display()
        );
        eprintln!("{}", tail(&self.log_path, lines));
    }
}

impl Drop for LedgerProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
