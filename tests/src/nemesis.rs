//! The nemesis: a seeded schedule of faults injected while the bank
//! workload runs, and [`Scenario::run`], which runs workload + nemesis,
//! heals, waits for quiescence, checks and reports.
//!
//! Faults run one at a time: inject, hold for a while, undo, pause, next.
//! Crashes (of crash points) are restarted by the testbed's supervisor at
//! once, without the crash point.

use crate::bank::{Bank, BankOptions};
use crate::checker::{self, Anomalies};
use crate::net::{LinkMode, Weather};
use crate::report::{OpCounts, Report};
use crate::testbed::{Testbed, TestbedOptions};
use fastrand::Rng;
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Kinds of fault a scenario draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FaultKind {
    /// SIGKILL the leader, restart it after the hold.
    KillLeader,
    /// SIGKILL a follower, restart it after the hold.
    KillFollower,
    /// SIGKILL a ledger participant, restart it after the hold.
    KillLedger,
    /// SIGSTOP the leader for the hold (it wakes up deposed).
    PauseLeader,
    /// SIGSTOP a ledger for the hold.
    PauseLedger,
    /// Cut the leader from both followers, both ways (needs proxies).
    IsolateLeader,
    /// One-way: the leader cannot call the followers; they can call it.
    LeaderOutboundCut,
    /// No coordinator can call one ledger (it can still ask them about
    /// in-doubt transactions).
    CutLedger,
    /// Restart a ledger with a participant crash point armed (fires once).
    LedgerCrashPoint,
    /// Restart both followers with a coordinator crash point armed, then
    /// kill the leader so one of them leads and hits it.
    CoordinatorCrashPoint,
    /// Every link (coordinators among themselves, to and from the ledgers)
    /// slow, jittery and lossy for the hold: nothing cut (needs proxies).
    SlowNetwork,
    /// Overlapping: the leader isolated while a follower is paused, so no
    /// side has a quorum until both are undone (needs proxies).
    PartitionWhilePaused,
    /// Overlapping: SIGKILL the leader and a ledger at once, so the new
    /// leader's takeover meets a dead participant.
    KillLeaderAndLedger,
    /// Only the leader cannot call one ledger; the other coordinators can
    /// (a cut per coordinator, not per participant; needs proxies).
    CutLedgerFromLeader,
}

impl FaultKind {
    /// Every kind; the partition and network kinds need
    /// [`TestbedOptions::proxied`].
    pub const ALL: [FaultKind; 14] = [
        FaultKind::KillLeader,
        FaultKind::KillFollower,
        FaultKind::KillLedger,
        FaultKind::PauseLeader,
        FaultKind::PauseLedger,
        FaultKind::IsolateLeader,
        FaultKind::LeaderOutboundCut,
        FaultKind::CutLedger,
        FaultKind::LedgerCrashPoint,
        FaultKind::CoordinatorCrashPoint,
        FaultKind::SlowNetwork,
        FaultKind::PartitionWhilePaused,
        FaultKind::KillLeaderAndLedger,
        FaultKind::CutLedgerFromLeader,
    ];

    /// Whether the kind works on the test proxies.
    pub fn needs_proxies(self) -> bool {
        matches!(
            self,
            FaultKind::IsolateLeader
                | FaultKind::LeaderOutboundCut
                | FaultKind::CutLedger
                | FaultKind::SlowNetwork
                | FaultKind::PartitionWhilePaused
                | FaultKind::CutLedgerFromLeader
        )
    }
}

/// Participant crash points the nemesis arms.
pub const LEDGER_POINTS: [&str; 3] = [
    "participant.prepare.before_reply",
    "participant.decision.on_receipt",
    "participant.decision.before_ack",
];

/// Coordinator crash points the nemesis arms.
pub const COORDINATOR_POINTS: [&str; 5] = [
    "coordinator.prepare.before_send",
    "coordinator.decision.before_propose",
    "coordinator.decision.before_phase2",
    "coordinator.reply.before_client",
    "coordinator.takeover.scan",
];

/// One concrete fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Fault {
    KillLeader,
    KillFollower,
    KillLedger { ledger: usize },
    PauseLeader,
    PauseLedger { ledger: usize },
    IsolateLeader { mode: LinkMode },
    LeaderOutboundCut { mode: LinkMode },
    CutLedger { ledger: usize, mode: LinkMode },
    LedgerCrashPoint { ledger: usize, point: String },
    CoordinatorCrashPoint { point: String },
    SlowNetwork { weather: Weather },
    PartitionWhilePaused { mode: LinkMode },
    KillLeaderAndLedger { ledger: usize },
    CutLedgerFromLeader { ledger: usize, mode: LinkMode },
}

/// A fault at `at_ms` after the workload starts, undone `hold_ms` later.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub at_ms: u64,
    pub hold_ms: u64,
    pub fault: Fault,
}

/// A schedule for `workload` drawn from `kinds` with `seed`.
pub fn schedule(seed: u64, kinds: &[FaultKind], workload: Duration, ledgers: usize) -> Vec<Step> {
    let mut rng = Rng::with_seed(seed);
    let mut steps = Vec::new();
    let end = workload.as_millis() as u64;
    let mut t = 1500;
    if kinds.is_empty() {
        return steps;
    }
    loop {
        let hold = rng.u64(1500..=3500);
        if t + hold + 500 > end {
            return steps;
        }
        let ledger = rng.u64(0..=ledgers.saturating_sub(1) as u64) as usize;
        let mode = if rng.bool() {
            LinkMode::Blackhole
        } else {
            LinkMode::Refuse
        };
        let fault = match kinds[rng.usize(..kinds.len())] {
            FaultKind::KillLeader => Fault::KillLeader,
            FaultKind::KillFollower => Fault::KillFollower,
            FaultKind::KillLedger => Fault::KillLedger { ledger },
            FaultKind::PauseLeader => Fault::PauseLeader,
            FaultKind::PauseLedger => Fault::PauseLedger { ledger },
            FaultKind::IsolateLeader => Fault::IsolateLeader { mode },
            FaultKind::LeaderOutboundCut => Fault::LeaderOutboundCut { mode },
            FaultKind::CutLedger => Fault::CutLedger { ledger, mode },
            FaultKind::LedgerCrashPoint => Fault::LedgerCrashPoint {
                ledger,
                point: LEDGER_POINTS[rng.usize(..LEDGER_POINTS.len())].to_string(),
            },
            FaultKind::CoordinatorCrashPoint => Fault::CoordinatorCrashPoint {
                point: COORDINATOR_POINTS[rng.usize(..COORDINATOR_POINTS.len())].to_string(),
            },
            FaultKind::SlowNetwork => Fault::SlowNetwork {
                weather: Weather {
                    latency_ms: rng.u64(1..=20),
                    jitter_ms: rng.u64(0..=40),
                    loss_percent: rng.u8(0..=5),
                },
            },
            FaultKind::PartitionWhilePaused => Fault::PartitionWhilePaused { mode },
            FaultKind::KillLeaderAndLedger => Fault::KillLeaderAndLedger { ledger },
            FaultKind::CutLedgerFromLeader => Fault::CutLedgerFromLeader { ledger, mode },
        };
        steps.push(Step {
            at_ms: t,
            hold_ms: hold,
            fault,
        });
        t += hold + rng.u64(1000..=2500);
    }
}

/// What undoing a step takes.
enum Undo {
    Nothing,
    Restart(u64),
    StartLedger(usize),
    Resume(u64),
    ResumeLedger(usize),
    HealMesh,
    LedgerLinksUp(usize),
    /// Restart the ledger without the crash point if the armed process
    /// (start number) is still running.
    DisarmLedger(usize, u32),
    /// Restart the killed leader; disarm the armed nodes still running.
    RestartAndDisarm(u64, Vec<(u64, u32)>),
    /// Calm weather on every link.
    CalmNetwork,
    /// Several, in order (overlapping faults).
    All(Vec<Undo>),
}

/// Injects and later undoes the faults of a schedule.
pub struct Nemesis {
    rng: Rng,
}

impl Nemesis {
    pub fn new(seed: u64) -> Self {
        Nemesis {
            rng: Rng::with_seed(seed ^ 0x5EED_F00D),
        }
    }

    /// Runs `steps` (times relative to `start`), then sleeps until
    /// `start + workload`, supervising throughout.
    pub async fn run(
        &mut self,
        tb: &mut Testbed,
        steps: &[Step],
        start: Instant,
        workload: Duration,
    ) {
        for step in steps {
            let at = start + Duration::from_millis(step.at_ms);
            tb.supervised_sleep(at.saturating_duration_since(Instant::now()))
                .await;
            let undo = self.inject(tb, &step.fault).await;
            // An armed coordinator point fires only once a new leader has
            // been elected and has work: give it time.
            let hold = match step.fault {
                Fault::CoordinatorCrashPoint { .. } => step.hold_ms.max(5000),
                _ => step.hold_ms,
            };
            tb.supervised_sleep(Duration::from_millis(hold)).await;
            self.undo(tb, undo).await;
            let statuses = tb.cluster.statuses().await;
            let view: Vec<String> = statuses
                .values()
                .map(|s| format!("{}:{}@t{}", s.node_id, s.role, s.term))
                .collect();
            tb.timeline.push(format!("nodes now {}", view.join(" ")));
        }
        let end = start + workload;
        tb.supervised_sleep(end.saturating_duration_since(Instant::now()))
            .await;
    }

    async fn leader(&self, tb: &Testbed) -> Option<u64> {
        let l = tb.cluster.leader().await;
        if l.is_none() {
            tb.timeline
                .push("nemesis: no leader right now; fault skipped");
        }
        l
    }

    fn follower(&mut self, tb: &Testbed, leader: u64) -> Option<u64> {
        let f: Vec<u64> = tb
            .cluster
            .ids()
            .into_iter()
            .filter(|id| *id != leader && tb.cluster.is_running(*id))
            .collect();
        (!f.is_empty()).then(|| f[self.rng.usize(..f.len())])
    }

    async fn inject(&mut self, tb: &mut Testbed, fault: &Fault) -> Undo {
        let t = &tb.timeline;
        match fault {
            Fault::KillLeader => {
                let Some(l) = self.leader(tb).await else {
                    return Undo::Nothing;
                };
                if !tb.cluster.is_running(l) {
                    return Undo::Nothing;
                }
                tb.cluster.kill(l);
                tb.timeline
                    .push(format!("nemesis: SIGKILL leader coordinator-{l}"));
                Undo::Restart(l)
            }
            Fault::KillFollower => {
                let Some(l) = self.leader(tb).await else {
                    return Undo::Nothing;
                };
                let Some(f) = self.follower(tb, l) else {
                    return Undo::Nothing;
                };
                tb.cluster.kill(f);
                tb.timeline
                    .push(format!("nemesis: SIGKILL follower coordinator-{f}"));
                Undo::Restart(f)
            }
            Fault::KillLedger { ledger } => {
                let l = &mut tb.ledgers[*ledger];
                if !l.is_running() {
                    return Undo::Nothing;
                }
                l.kill();
                t.push(format!("nemesis: SIGKILL {}", l.name));
                Undo::StartLedger(*ledger)
            }
            Fault::PauseLeader => {
                let Some(l) = self.leader(tb).await else {
                    return Undo::Nothing;
                };
                if !tb.cluster.is_running(l) {
                    return Undo::Nothing;
                }
                tb.cluster.pause(l);
                tb.timeline
                    .push(format!("nemesis: SIGSTOP leader coordinator-{l}"));
                Undo::Resume(l)
            }
            Fault::PauseLedger { ledger } => {
                let l = &mut tb.ledgers[*ledger];
                if !l.is_running() {
                    return Undo::Nothing;
                }
                l.pause();
                t.push(format!("nemesis: SIGSTOP {}", l.name));
                Undo::ResumeLedger(*ledger)
            }
            Fault::IsolateLeader { mode } => {
                let Some(l) = self.leader(tb).await else {
                    return Undo::Nothing;
                };
                let mesh = tb
                    .cluster
                    .mesh()
                    .expect("IsolateLeader needs proxies")
                    .clone();
                mesh.isolate(l, *mode);
                tb.timeline.push(format!(
                    "nemesis: isolate leader coordinator-{l} from both followers ({mode})"
                ));
                Undo::HealMesh
            }
            Fault::LeaderOutboundCut { mode } => {
                let Some(l) = self.leader(tb).await else {
                    return Undo::Nothing;
                };
                let mesh = tb
                    .cluster
                    .mesh()
                    .expect("LeaderOutboundCut needs proxies")
                    .clone();
                for id in tb.cluster.ids().into_iter().filter(|id| *id != l) {
                    mesh.cut(l, id, *mode);
                }
                tb.timeline.push(format!(
                    "nemesis: one-way cut: leader coordinator-{l} cannot call the followers ({mode}); they can call it"
                ));
                Undo::HealMesh
            }
            Fault::CutLedger { ledger, mode } => {
                let l = &tb.ledgers[*ledger];
                assert!(l.inbound.is_some(), "CutLedger needs proxies");
                l.set_inbound(*mode);
                t.push(format!(
                    "nemesis: cut coordinators -> {} ({mode}); it can still call them",
                    l.name
                ));
                Undo::LedgerLinksUp(*ledger)
            }
            Fault::LedgerCrashPoint { ledger, point } => {
                let l = &mut tb.ledgers[*ledger];
                let spec = format!("{point}=1*return");
                l.set_next_start_env(&[("FAILPOINTS", spec.as_str())]);
                l.restart();
                t.push(format!(
                    "nemesis: restart {} with crash point {point} armed (fires once)",
                    l.name
                ));
                Undo::DisarmLedger(*ledger, l.starts())
            }
            Fault::CoordinatorCrashPoint { point } => {
                let Some(l) = self.leader(tb).await else {
                    return Undo::Nothing;
                };
                let spec = format!("{point}=1*return");
                let mut armed = Vec::new();
                for f in tb.cluster.ids().into_iter().filter(|id| *id != l) {
                    if tb.cluster.is_running(f) {
                        tb.cluster.kill(f);
                    }
                    tb.cluster
                        .set_next_start_env(f, &[("FAILPOINTS", spec.as_str())]);
                    tb.cluster.restart(f);
                    armed.push((f, tb.cluster.starts(f)));
                    // Let it rejoin before the next one goes down.
                    let cluster = &tb.cluster;
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        crate::wait_until(Duration::from_secs(5), "rejoin", || async {
                            cluster.status(f).await.filter(|s| s.leader_id.is_some())
                        }),
                    )
                    .await;
                }
                if tb.cluster.is_running(l) {
                    tb.cluster.kill(l);
                }
                tb.timeline.push(format!(
                    "nemesis: restart the followers {:?} with crash point {point} armed, SIGKILL leader coordinator-{l}",
                    armed.iter().map(|(id, _)| *id).collect::<Vec<_>>()
                ));
                Undo::RestartAndDisarm(l, armed)
            }
            Fault::SlowNetwork { weather } => {
                let mesh = tb
                    .cluster
                    .mesh()
                    .expect("SlowNetwork needs proxies")
                    .clone();
                mesh.set_weather(*weather);
                for l in &tb.ledgers {
                    l.set_weather(*weather);
                }
                tb.timeline
                    .push(format!("nemesis: every link slow: {weather}; nothing cut"));
                Undo::CalmNetwork
            }
            Fault::PartitionWhilePaused { mode } => {
                let Some(l) = self.leader(tb).await else {
                    return Undo::Nothing;
                };
                let Some(f) = self.follower(tb, l) else {
                    return Undo::Nothing;
                };
                let mesh = tb
                    .cluster
                    .mesh()
                    .expect("PartitionWhilePaused needs proxies")
                    .clone();
                mesh.isolate(l, *mode);
                tb.cluster.pause(f);
                tb.timeline.push(format!(
                    "nemesis: isolate leader coordinator-{l} ({mode}) while follower \
                     coordinator-{f} is paused: no side has a quorum"
                ));
                Undo::All(vec![Undo::Resume(f), Undo::HealMesh])
            }
            Fault::CutLedgerFromLeader { ledger, mode } => {
                let Some(leader) = self.leader(tb).await else {
                    return Undo::Nothing;
                };
                let l = &tb.ledgers[*ledger];
                let link = l
                    .link_from(leader)
                    .expect("CutLedgerFromLeader needs proxies");
                link.set(*mode);
                tb.timeline.push(format!(
                    "nemesis: cut coordinator-{leader} (leader) -> {} ({mode}); the other \
                     coordinators still reach it",
                    l.name
                ));
                Undo::LedgerLinksUp(*ledger)
            }
            Fault::KillLeaderAndLedger { ledger } => {
                let Some(l) = self.leader(tb).await else {
                    return Undo::Nothing;
                };
                let mut undo = Vec::new();
                if tb.cluster.is_running(l) {
                    tb.cluster.kill(l);
                    undo.push(Undo::Restart(l));
                }
                let p = &mut tb.ledgers[*ledger];
                if p.is_running() {
                    p.kill();
                    undo.push(Undo::StartLedger(*ledger));
                }
                tb.timeline.push(format!(
                    "nemesis: SIGKILL leader coordinator-{l} and {} together: the next \
                     leader's takeover meets a dead participant",
                    tb.ledgers[*ledger].name
                ));
                Undo::All(undo)
            }
        }
    }

    async fn undo(&mut self, tb: &mut Testbed, undo: Undo) {
        tb.supervise();
        match undo {
            Undo::Nothing => {}
            Undo::All(undos) => {
                for u in undos {
                    Box::pin(self.undo(tb, u)).await;
                }
            }
            Undo::CalmNetwork => {
                if let Some(mesh) = tb.cluster.mesh() {
                    mesh.set_weather(Weather::CALM);
                }
                for l in &tb.ledgers {
                    l.set_weather(Weather::CALM);
                }
                tb.timeline.push("nemesis: every link calm again");
            }
            Undo::Restart(id) => {
                if !tb.cluster.is_running(id) {
                    tb.cluster.restart(id);
                    tb.timeline
                        .push(format!("nemesis: restart coordinator-{id}"));
                }
            }
            Undo::StartLedger(i) => {
                let l = &mut tb.ledgers[i];
                if !l.is_running() {
                    l.start();
                    tb.timeline.push(format!("nemesis: restart {}", l.name));
                }
            }
            Undo::Resume(id) => {
                if tb.cluster.is_paused(id) {
                    tb.cluster.resume(id);
                    tb.timeline
                        .push(format!("nemesis: SIGCONT coordinator-{id}"));
                }
            }
            Undo::ResumeLedger(i) => {
                let l = &mut tb.ledgers[i];
                if l.is_paused() {
                    l.resume();
                    tb.timeline.push(format!("nemesis: SIGCONT {}", l.name));
                }
            }
            Undo::HealMesh => {
                if let Some(mesh) = tb.cluster.mesh() {
                    mesh.heal();
                }
                tb.timeline.push("nemesis: heal the coordinator links");
            }
            Undo::LedgerLinksUp(i) => {
                let l = &tb.ledgers[i];
                l.set_links(LinkMode::Up);
                tb.timeline
                    .push(format!("nemesis: heal the links of {}", l.name));
            }
            Undo::DisarmLedger(i, start) => {
                let l = &mut tb.ledgers[i];
                if l.is_running() && l.starts() == start {
                    l.restart();
                    tb.timeline.push(format!(
                        "nemesis: {}'s crash point did not fire; restart it without",
                        l.name
                    ));
                }
            }
            Undo::RestartAndDisarm(leader, armed) => {
                if !tb.cluster.is_running(leader) {
                    tb.cluster.restart(leader);
                    tb.timeline
                        .push(format!("nemesis: restart coordinator-{leader}"));
                }
                for (id, start) in armed {
                    if tb.cluster.is_running(id) && tb.cluster.starts(id) == start {
                        tb.cluster.kill(id);
                        tb.cluster.restart(id);
                        tb.timeline.push(format!(
                            "nemesis: coordinator-{id}'s crash point did not fire; restart it without"
                        ));
                    }
                }
            }
        }
    }
}

/// A seeded run: testbed, bank workload, nemesis, heal, check, report.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub seed: u64,
    pub testbed: TestbedOptions,
    pub bank: BankOptions,
    /// How long the clients run under faults.
    pub workload: Duration,
    pub faults: Vec<FaultKind>,
    /// Longest allowed time from healing to quiescence.
    pub quiesce_bound: Duration,
}

/// `$DTC_SEED` if set (to replay a run), else `default`.
pub fn seed_from_env(default: u64) -> u64 {
    std::env::var("DTC_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

impl Scenario {
    /// A scenario with the default testbed (3 ledgers) and workload.
    pub fn new(name: &str, seed: u64, faults: &[FaultKind]) -> Self {
        let needs_proxies = faults.iter().any(|k| k.needs_proxies());
        Scenario {
            name: name.to_string(),
            seed,
            testbed: TestbedOptions {
                ledgers: 3,
                proxied: needs_proxies,
                ..Default::default()
            },
            bank: BankOptions::default(),
            workload: Duration::from_secs(25),
            faults: faults.to_vec(),
            quiesce_bound: Duration::from_secs(45),
        }
    }

    /// Runs it; the report is printed and written to `report.json` in the
    /// run directory (kept when the calling test fails). Panics (so the
    /// test fails and keeps its data) when an anomaly was found.
    pub async fn run_and_assert(self) -> Report {
        let report = self.run().await;
        assert!(
            report.passed,
            "scenario {} failed (seed {}; replay with DTC_SEED={}):\n{}",
            report.scenario,
            report.seed,
            report.seed,
            report.table()
        );
        report
    }

    /// Runs it and returns the report (whatever it says).
    pub async fn run(self) -> Report {
        let started = Instant::now();
        let mut tb = Testbed::start(self.testbed.clone()).await;
        let bank = Bank::seed(&tb, self.bank.clone()).await;
        tb.timeline.push(format!(
            "seeded {} accounts with {} each (total {}) in {} ms; seed {}",
            bank.accounts.len(),
            self.bank.initial_balance,
            bank.total,
            started.elapsed().as_millis(),
            self.seed
        ));
        let steps = schedule(self.seed, &self.faults, self.workload, tb.ledgers.len());
        let (stop_tx, stop_rx) = watch::channel(false);
        let nodes = tb
            .cluster
            .ids()
            .into_iter()
            .map(|id| (id, tb.cluster.addr(id)))
            .collect();
        let observer = bank.spawn_observer(nodes, &stop_rx);
        let clients = bank.spawn_clients(&tb.client, self.seed, &stop_rx);
        let workload_started = Instant::now();
        tb.timeline.push(format!(
            "workload: {} clients for {} s; {} faults scheduled",
            self.bank.clients,
            self.workload.as_secs(),
            steps.len()
        ));
        let mut nemesis = Nemesis::new(self.seed);
        nemesis
            .run(&mut tb, &steps, workload_started, self.workload)
            .await;
        let _ = stop_tx.send(true);
        tb.heal_all();
        let healed_at = Instant::now();
        let drain = self.bank.op_deadline + Duration::from_secs(20);
        let drained = tb
            .supervise_during(tokio::time::timeout(
                drain,
                futures::future::join_all(clients),
            ))
            .await;
        let workload_ms = workload_started.elapsed().as_millis() as u64;
        let _ = observer.await;
        let mut anomalies = Anomalies::default();
        if drained.is_err() {
            anomalies.add(
                "clients-stuck",
                format!("client tasks still running {drain:?} after the workload stopped"),
            );
        }
        tb.timeline.push("clients stopped; waiting for quiescence");
        check_and_report(
            &mut tb,
            &bank,
            &self.name,
            self.seed,
            started,
            workload_ms,
            anomalies,
            healed_at,
            self.quiesce_bound,
        )
        .await
    }
}

/// The end of every run: waits for quiescence (measured from `healed_at`,
/// when the last fault was undone; failing past `quiesce_bound` after it),
/// runs a liveness probe, reads the final state, checks it against the
/// history, and writes and prints the report. `anomalies` holds what the
/// caller already found.
#[allow(clippy::too_many_arguments)]
pub async fn check_and_report(
    tb: &mut Testbed,
    bank: &Bank,
    name: &str,
    seed: u64,
    started: Instant,
    workload_ms: u64,
    mut anomalies: Anomalies,
    healed_at: Instant,
    quiesce_bound: Duration,
) -> Report {
    let left = quiesce_bound.saturating_sub(healed_at.elapsed());
    let quiesce = tb.wait_quiescent(left).await;
    let quiesce_ms = match &quiesce {
        Ok(_) => {
            let d = healed_at.elapsed();
            tb.timeline
                .push(format!("quiescent {} ms after healing", d.as_millis()));
            Some(d.as_millis() as u64)
        }
        Err(last) => {
            anomalies.add("not-quiescent", format!("after {quiesce_bound:?}: {last}"));
            None
        }
    };
    let mut resolution = Default::default();
    match checker::collect(tb, bank).await {
        Ok(fin) => {
            if let Err(e) = checker::liveness_probe(tb, bank, &fin).await {
                anomalies.add("not-live-after-heal", e);
            }
            // The probe moved 1 between accounts: read everything again.
            let _ = tb.wait_quiescent(Duration::from_secs(15)).await;
            match checker::collect(tb, bank).await {
                Ok(fin) => {
                    let (a, r) = checker::check(&bank.history, bank.total, &fin);
                    resolution = r;
                    for (k, v) in a.by_kind {
                        for e in v {
                            anomalies.add(&k, e);
                        }
                    }
                }
                Err(e) => anomalies.add("unresolved", format!("cannot read the final state: {e}")),
            }
        }
        Err(e) => anomalies.add("unresolved", format!("cannot read the final state: {e}")),
    }
    let report = Report {
        scenario: name.to_string(),
        seed,
        passed: anomalies.is_empty(),
        run_dir: tb.root().to_path_buf(),
        workload_ms,
        total_ms: started.elapsed().as_millis() as u64,
        ops: OpCounts::of(&bank.history),
        unknown_resolved: resolution,
        observations: bank.history.observations().len(),
        anomalies: Report::anomalies_from(&anomalies),
        quiesce_ms,
        quiesce_bound_ms: quiesce_bound.as_millis() as u64,
        faults: tb.timeline.events(),
        crashes: tb.crashes.clone(),
    };
    let path = report.write_json(tb.root());
    if let Some(dir) = std::env::var_os("DTC_REPORT_DIR") {
        let dir = std::path::PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::copy(&path, dir.join(format!("{name}-seed{seed}.json")));
    }
    println!("{}", report.table());
    if !report.passed {
        tb.cluster.keep_dir();
        eprintln!(
            "harness: the run failed; its data dirs, logs and {} are kept in {}",
            path.display(),
            tb.root().display()
        );
    }
    report
}
