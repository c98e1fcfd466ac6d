//! A whole system under test: three coordinator processes, ledger
//! participant processes, optional proxies on every link, a client, a
//! supervisor that restarts crashed processes, and the fault timeline.

use crate::ledger::LedgerProc;
use crate::net::LinkMode;
use crate::{Cluster, ClusterOptions, tail, wait_for_ok};
use dtc_proto::v1 as pb;
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a [`Testbed`] is laid out.
#[derive(Debug, Clone)]
pub struct TestbedOptions {
    /// Ledger participants, named `bank-0`, `bank-1`, ...
    pub ledgers: usize,
    /// A proxy on every coordinator ↔ coordinator and coordinator ↔
    /// participant link (needed for partitions).
    pub proxied: bool,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: (u64, u64),
    /// More `dtc coordinator` flags.
    pub coordinator_args: Vec<String>,
    /// Environment of the *first* start of every coordinator (FAILPOINTS).
    pub coordinator_env: Vec<(String, String)>,
    /// Environment of the first start of ledger i.
    pub ledger_env: BTreeMap<usize, Vec<(String, String)>>,
    /// `--in-doubt-interval-ms` of the ledgers.
    pub in_doubt_interval_ms: u64,
}

impl Default for TestbedOptions {
    /// Two ledgers, no proxies, generous timing for a loaded 2-core machine
    /// (100 ms heartbeat, 500-1000 ms election timeout), in-doubt checks
    /// every second.
    fn default() -> Self {
        TestbedOptions {
            ledgers: 2,
            proxied: false,
            heartbeat_ms: 100,
            election_timeout_ms: (500, 1000),
            coordinator_args: Vec::new(),
            coordinator_env: Vec::new(),
            ledger_env: BTreeMap::new(),
            in_doubt_interval_ms: 1000,
        }
    }
}

/// One line of the fault timeline.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEvent {
    /// Milliseconds since the testbed started.
    pub t_ms: u64,
    pub event: String,
}

/// A process that exited by itself.
#[derive(Debug, Clone, Serialize)]
pub struct Crash {
    pub t_ms: u64,
    /// `coordinator-N` or the ledger's name.
    pub process: String,
    pub status: String,
    /// The crash point that fired (from the process's last log lines).
    pub failpoint: Option<String>,
}

/// Shared, append-only fault timeline (cheap to clone).
#[derive(Debug, Clone)]
pub struct Timeline {
    started: Instant,
    events: Arc<Mutex<Vec<TimelineEvent>>>,
}

impl Timeline {
    pub fn new(started: Instant) -> Self {
        Timeline {
            started,
            events: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn push(&self, event: impl Into<String>) {
        let e = TimelineEvent {
            t_ms: self.now_ms(),
            event: event.into(),
        };
        eprintln!("[{:>7} ms] {}", e.t_ms, e.event);
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }

    pub fn events(&self) -> Vec<TimelineEvent> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Finds `failpoint NAME: crashing` in the last lines of a log.
pub fn failpoint_in_log(log: &Path) -> Option<String> {
    tail(log, 80).lines().rev().find_map(|l| {
        let rest = &l[l.find("failpoint ")? + "failpoint ".len()..];
        let (name, tail) = rest.split_once(':')?;
        tail.contains("crashing").then(|| name.trim().to_string())
    })
}

fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(6) => "killed by SIGABRT (abort)".into(),
        Some(9) => "killed by SIGKILL".into(),
        Some(s) => format!("killed by signal {s}"),
        None => format!("exited with {status}"),
    }
}

/// Coordinators + ledgers + a client. Ledgers are killed before the
/// coordinators on drop; a failing test keeps the run directory (the
/// cluster's temporary directory, which holds every log and data dir).
pub struct Testbed {
    pub ledgers: Vec<LedgerProc>,
    pub cluster: Cluster,
    pub client: dtc_client::Client,
    pub timeline: Timeline,
    pub crashes: Vec<Crash>,
}

impl Testbed {
    /// Starts the coordinators, waits for a stable leader, starts the
    /// ledgers and waits until each is registered and serving.
    pub async fn start(options: TestbedOptions) -> Testbed {
        let started = Instant::now();
        let mut copts = ClusterOptions::new(3);
        copts.proxied = options.proxied;
        copts.heartbeat_ms = options.heartbeat_ms;
        copts.election_timeout_ms = options.election_timeout_ms;
        copts.extra_args = options.coordinator_args.clone();
        copts.first_start_env = options.coordinator_env.clone();
        let mut cluster = Cluster::prepare_options(copts);
        cluster.expect_crashes(true);
        let coordinators: Vec<(u64, SocketAddr)> = cluster
            .ids()
            .into_iter()
            .map(|id| (id, cluster.addr(id)))
            .collect();
        let mut ledgers: Vec<LedgerProc> = (0..options.ledgers)
            .map(|i| {
                LedgerProc::new(
                    &format!("bank-{i}"),
                    cluster.root(),
                    &coordinators,
                    options.proxied,
                    options.in_doubt_interval_ms,
                )
            })
            .collect();
        // With proxies, each coordinator reaches each ledger through a link
        // of its own, so that one coordinator's link can be cut.
        for (id, _) in &coordinators {
            let overrides = ledgers.iter().filter_map(|l| {
                l.link_from(*id)
                    .map(|link| format!("{}={}", l.name, link.addr()))
            });
            let args: Vec<String> = overrides
                .flat_map(|o| ["--participant-addr-override".to_string(), o])
                .collect();
            cluster.extend_args(*id, args);
        }
        cluster.spawn_all();
        let client = dtc_client::Client::with_config(
            coordinators.iter().map(|(_, a)| a.to_string()),
            dtc_client::ClientConfig {
                retry_budget: Duration::from_secs(20),
                call_deadline: Duration::from_secs(5),
                ..Default::default()
            },
        )
        .expect("a client for the cluster");
        let timeline = Timeline::new(started);
        // Leaders elected while a node is still starting are normal; a
        // crash point armed on the first start can also fire during setup
        // only if the test asked for that, so setup does not supervise.
        cluster
            .wait_for_stable_leader(Duration::from_secs(60))
            .await;
        for (i, l) in ledgers.iter_mut().enumerate() {
            if let Some(env) = options.ledger_env.get(&i) {
                let env: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                l.set_next_start_env(&env);
            }
            l.start();
        }
        let tb = Testbed {
            ledgers,
            cluster,
            client,
            timeline,
            crashes: Vec::new(),
        };
        for i in 0..tb.ledgers.len() {
            tb.wait_ledger_ready(i, Duration::from_secs(60)).await;
        }
        tb.timeline.push(format!(
            "testbed up: 3 coordinators, {} ledgers{} in {} ms",
            tb.ledgers.len(),
            if options.proxied { ", proxied" } else { "" },
            started.elapsed().as_millis()
        ));
        tb
    }

    /// The run directory (logs, data dirs, report.json).
    pub fn root(&self) -> &Path {
        self.cluster.root()
    }

    pub fn ledger_names(&self) -> Vec<String> {
        self.ledgers.iter().map(|l| l.name.clone()).collect()
    }

    pub fn ledger(&self, name: &str) -> &LedgerProc {
        self.ledgers
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no ledger {name}"))
    }

    /// Waits until ledger `i` serves and the cluster's registry holds its
    /// current endpoint.
    pub async fn wait_ledger_ready(&self, i: usize, within: Duration) {
        let l = &self.ledgers[i];
        l.wait_serving(within).await;
        let (name, endpoint) = (l.name.clone(), l.endpoint());
        wait_for_ok(within, format_args!("{name} to be registered"), || {
            let (name, endpoint) = (name.clone(), endpoint.clone());
            async move {
                let statuses = self.cluster.statuses().await;
                let registered = statuses.values().any(|s| {
                    s.role == "leader"
                        && s.participants
                            .iter()
                            .any(|p| p.name == name && p.endpoint == endpoint)
                });
                if registered {
                    Ok(())
                } else {
                    Err(format!(
                        "registry: {:?}",
                        statuses.values().map(|s| &s.participants).next()
                    ))
                }
            }
        })
        .await;
    }

    /// Restarts every process that exited by itself (without the
    /// environment of its first start, so a crash point fires once) and
    /// records the crash. Returns the crashes found now.
    pub fn supervise(&mut self) -> Vec<Crash> {
        let mut found = Vec::new();
        for (id, status) in self.cluster.take_exited() {
            let process = format!("coordinator-{id}");
            found.push(self.crashed(process, &status, self.cluster.log_path(id)));
            self.cluster.restart(id);
        }
        for i in 0..self.ledgers.len() {
            if let Some(status) = self.ledgers[i].take_exited() {
                let l = &self.ledgers[i];
                found.push(self.crashed(l.name.clone(), &status, &l.log_path));
                self.ledgers[i].start();
            }
        }
        self.crashes.extend(found.iter().cloned());
        found
    }

    /// Records on the timeline that `process` exited by itself (and the
    /// crash point its log names, if any); the supervisor restarts it.
    fn crashed(&self, process: String, status: &ExitStatus, log: &Path) -> Crash {
        let crash = Crash {
            t_ms: self.timeline.now_ms(),
            process,
            status: describe(status),
            failpoint: failpoint_in_log(log),
        };
        self.timeline.push(format!(
            "{} crashed ({}{}); restarting it",
            crash.process,
            crash.status,
            crash
                .failpoint
                .as_ref()
                .map(|f| format!(", crash point {f}"))
                .unwrap_or_default()
        ));
        crash
    }

    /// Runs `fut` to completion while supervising every 50 ms.
    pub async fn supervise_during<T>(&mut self, fut: impl Future<Output = T>) -> T {
        let mut fut = std::pin::pin!(fut);
        loop {
            tokio::select! {
                v = &mut fut => return v,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    self.supervise();
                }
            }
        }
    }

    /// Sleeps `d` while supervising.
    pub async fn supervised_sleep(&mut self, d: Duration) {
        self.supervise_during(tokio::time::sleep(d)).await
    }

    /// Undoes every fault: links up, paused processes resumed, stopped
    /// processes started (without crash points).
    pub fn heal_all(&mut self) {
        let mut healed = Vec::new();
        if let Some(mesh) = self.cluster.mesh() {
            let faults = mesh.faults();
            if !faults.is_empty() {
                healed.push(format!("links {faults:?} up"));
            }
            mesh.heal();
        }
        for id in self.cluster.ids() {
            if self.cluster.is_paused(id) {
                self.cluster.resume(id);
                healed.push(format!("coordinator-{id} resumed"));
            }
        }
        self.supervise();
        for id in self.cluster.ids() {
            if !self.cluster.is_running(id) {
                self.cluster.restart(id);
                healed.push(format!("coordinator-{id} started"));
            }
        }
        for l in &mut self.ledgers {
            let down: Vec<String> = l
                .inbound
                .iter()
                .chain(l.outbound.iter().map(|(_, x)| x))
                .filter(|x| x.mode() != LinkMode::Up)
                .map(|x| x.name().to_string())
                .collect();
            if !down.is_empty() {
                healed.push(format!("links {down:?} up"));
            }
            l.set_links(LinkMode::Up);
            if l.is_paused() {
                l.resume();
                healed.push(format!("{} resumed", l.name));
            }
            if !l.is_running() {
                l.start();
                healed.push(format!("{} started", l.name));
            }
        }
        self.timeline.push(if healed.is_empty() {
            "heal: nothing to undo".to_string()
        } else {
            format!("heal: {}", healed.join(", "))
        });
    }

    /// Transactions the cluster still holds in its pending index (asked
    /// through the leader), or why it cannot tell.
    pub async fn cluster_pending(&self) -> Result<Vec<pb::TransactionInfo>, String> {
        let leader = self.cluster.leader().await.ok_or("no leader")?;
        self.cluster
            .pending(leader)
            .await
            .map_err(|s| format!("{}: {}", s.code(), s.message()))
    }

    /// Prepared, undecided transactions at every ledger (name, txn id).
    pub async fn in_doubt(&self) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        for l in &self.ledgers {
            let audit = l
                .audit(true)
                .await
                .map_err(|s| format!("{}: {}", l.name, s.message()))?;
            out.extend(
                audit
                    .into_iter()
                    .filter(|e| e.outcome == pb::AuditOutcome::Prepared as i32)
                    .map(|e| (l.name.clone(), e.txn_id)),
            );
        }
        Ok(out)
    }

    /// Waits (supervising) until the cluster has nothing pending and no
    /// ledger holds a prepared transaction; returns how long it took, or the
    /// last observation if `bound` passes first.
    pub async fn wait_quiescent(&mut self, bound: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let mut last;
        loop {
            self.supervise();
            let pending = self.cluster_pending().await;
            let in_doubt = self.in_doubt().await;
            match (&pending, &in_doubt) {
                (Ok(p), Ok(d)) if p.is_empty() && d.is_empty() => return Ok(started.elapsed()),
                _ => {}
            }
            last = format!(
                "pending at the cluster: {}; prepared at ledgers: {}",
                match &pending {
                    Ok(p) => format!(
                        "{:?}",
                        p.iter().map(|t| t.txn_id.as_str()).collect::<Vec<_>>()
                    ),
                    Err(e) => e.clone(),
                },
                match &in_doubt {
                    Ok(d) => format!("{d:?}"),
                    Err(e) => e.clone(),
                }
            );
            if started.elapsed() >= bound {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Prints the tail of every ledger's log (the cluster prints its own).
    pub fn dump(&self, lines: usize) {
        for l in &self.ledgers {
            l.dump(lines);
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("==== testbed timeline ====");
            for e in self.timeline.events() {
                eprintln!("[{:>7} ms] {}", e.t_ms, e.event);
            }
            self.dump(40);
        }
        // Ledgers first: they write into the cluster's directory.
        for l in &mut self.ledgers {
            l.kill();
        }
    }
}
