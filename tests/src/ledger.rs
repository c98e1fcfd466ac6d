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
use crate::{free_port, request, tail};
use dtc_harness::Process;
use dtc_proto::v1 as pb;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
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
    process: Process,
    /// Coordinators → this participant (the registered endpoint), if proxied.
    pub inbound: Option<Arc<Link>>,
    /// Coordinator i → this participant, if proxied: what coordinator i
    /// dials instead of the registered endpoint (its
    /// `--participant-addr-override`), so one coordinator's link can be cut.
    pub inbound_from: Vec<(u64, Arc<Link>)>,
    /// This participant → coordinator i (its `--coordinators`), if proxied.
    pub outbound: Vec<(u64, Arc<Link>)>,
    channel: Channel,
}

impl std::fmt::Debug for LedgerProc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerProc")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("running", &self.process.is_running())
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
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let inbound = proxied.then(|| Link::start(format!("coord->{name}"), listen));
        let inbound_from = if proxied {
            coordinators
                .iter()
                .map(|(id, _)| (*id, Link::start(format!("c{id}->{name}"), listen)))
                .collect()
        } else {
            Vec::new()
        };
        let outbound = if proxied {
            coordinators
                .iter()
                .map(|(id, addr)| (*id, Link::start(format!("{name}->c{id}"), *addr)))
                .collect()
        } else {
            Vec::new()
        };
        let endpoint = match &inbound {
            Some(l) => l.endpoint(),
            None => format!("http://{listen}"),
        };
        let coordinators = if outbound.is_empty() {
            coordinators.iter().map(|(_, a)| a.to_string()).collect()
        } else {
            outbound
                .iter()
                .map(|(_, l)| l.addr().to_string())
                .collect::<Vec<_>>()
        }
        .join(",");
        let data_dir = root.join(name);
        let log_path = root.join(format!("{name}.log"));
        let mut args = dtc_harness::cluster::ledger_args(
            name,
            listen,
            &data_dir,
            &coordinators,
            in_doubt_interval_ms,
        );
        args.extend(["--advertise".into(), endpoint]);
        LedgerProc {
            name: name.to_string(),
            listen,
            data_dir,
            process: Process::new(name, &crate::dtc_bin(), args, log_path.clone())
                .current_dir(root),
            log_path,
            inbound,
            inbound_from,
            outbound,
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
        self.process.set_next_start_env(env);
    }

    /// How many times it was started.
    pub fn starts(&self) -> u32 {
        self.process.starts()
    }

    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    pub fn is_paused(&self) -> bool {
        self.process.is_paused()
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Starts the process (same port and data directory every time).
    pub fn start(&mut self) {
        if let Err(e) = self.process.start() {
            panic!("{e:#}");
        }
    }

    /// SIGKILL and reap (no-op if not running).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGKILL, then start again.
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    /// SIGSTOP until [`LedgerProc::resume`].
    pub fn pause(&mut self) {
        if self.process.is_running() {
            let _ = self.process.pause();
        }
    }

    pub fn resume(&mut self) {
        let _ = self.process.resume();
    }

    /// Its exit status if it exited by itself (it then counts as stopped).
    pub fn take_exited(&mut self) -> Option<ExitStatus> {
        self.process.try_exit()
    }

    fn links(&self) -> impl Iterator<Item = &Arc<Link>> {
        self.inbound
            .iter()
            .chain(self.inbound_from.iter().map(|(_, l)| l))
            .chain(self.outbound.iter().map(|(_, l)| l))
    }

    /// Every coordinator's link to this participant (the registered
    /// endpoint's and each coordinator's own); outbound links untouched.
    pub fn set_inbound(&self, mode: LinkMode) {
        for l in self
            .inbound
            .iter()
            .chain(self.inbound_from.iter().map(|(_, l)| l))
        {
            l.set(mode);
        }
    }

    /// Coordinator `id`'s link to this participant, if proxied.
    pub fn link_from(&self, id: u64) -> Option<&Arc<Link>> {
        self.inbound_from
            .iter()
            .find(|(c, _)| *c == id)
            .map(|(_, l)| l)
    }

    /// Sets every link of this participant (inbound and outbound); `Up`
    /// also calms their weather.
    pub fn set_links(&self, mode: LinkMode) {
        for l in self.links() {
            l.set(mode);
            if mode == LinkMode::Up {
                l.set_weather(crate::net::Weather::CALM);
            }
        }
    }

    /// The same weather on every link of this participant.
    pub fn set_weather(&self, weather: crate::net::Weather) {
        for l in self.links() {
            l.set_weather(weather);
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
        Ok((
            r.balance,
            dtc_harness::checker::held(r.reserved, r.incoming, &r.locked_by),
        ))
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
