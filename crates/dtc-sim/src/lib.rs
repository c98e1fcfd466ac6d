//! # dtc-sim: the deterministic whole-cluster simulation
//!
//! One seed runs a whole dtc deployment in one process: three coordinator
//! nodes (openraft, the real store) and two ledger participants, each the
//! production code, on [turmoil]'s simulated network and clock, with their
//! redb files on simulated disks ([`dtc_store::test_support::SimDisk`])
//! that lose unsynced writes when their host crashes. The seed chooses the
//! workload (which transfers, how many clients) and the faults (crashes
//! with lost or torn writes, full disks and failing fsyncs, isolated
//! hosts, one-way cuts, held messages, jitter); when the fault window closes, everything is healed, every
//! transaction must resolve within a bound, a probe transfer must commit,
//! and the bank checker compares what the clients saw with the final state.
//!
//! ```text
//! seed ─► Nemesis schedule ─┐         ┌─ c1 c2 c3 (node::run_in on turmoil TCP + SimDisk)
//!      └► turmoil rng ──────┤ Sim ────┼─ bank-a bank-b (participant_on + SimDisk)
//!                           │  step   └─ client (bank workload ─► checker) ─► Checked
//!        run(seed) ◄────────┘  loop: faults between steps
//! ```
//!
//! A failing seed is printed with the command that replays it
//! (`DTC_SIM_SEED=N`); [`Report::fingerprint`] hashes what a run did
//! and saw, and the tests check that a seed gives the same one twice.
//! docs/testing.md says how to run more seeds and what is simulated.

pub mod bank;
pub mod disks;
pub mod hosts;
pub mod nemesis;
pub mod net;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

/// What one run does.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// Simulated time from the start during which faults happen and
    /// clients start transfers.
    pub fault_window: Duration,
    /// No faults at all (a baseline).
    pub calm: bool,
    /// Sabotage, to show the checker catches it: every crash loses what was
    /// written since the host started, synced or not (a disk that lies
    /// about fsync).
    pub lying_disks: bool,
    /// These faults instead of the ones the seed draws (a scenario test);
    /// the seed still chooses everything else.
    pub script: Option<Vec<nemesis::Scheduled>>,
}

impl Options {
    pub fn seed(seed: u64) -> Options {
        Options {
            seed,
            fault_window: Duration::from_millis(1500),
            calm: false,
            lying_disks: false,
            script: None,
        }
    }
}

/// What one run did and found.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub checked: bank::Checked,
    /// Every fault started and ended, with its simulated time.
    pub faults: Vec<String>,
    /// Simulated time the run took.
    pub simulated: Duration,
    /// Steps of the simulation (1 ms each).
    pub steps: u64,
}

impl Report {
    /// Hash of what the run did and saw: every operation with its result,
    /// every fault with its time, and the final state. Equal on a replay.
    pub fn fingerprint(&self) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        for op in &self.checked.history {
            op.id.hash(&mut h);
            op.result.label().hash(&mut h);
        }
        self.faults.hash(&mut h);
        for (k, v) in &self.checked.final_state.balances {
            (k, v).hash(&mut h);
        }
        for (l, txns) in &self.checked.final_state.audits {
            l.hash(&mut h);
            for (id, at) in txns {
                (id, format!("{at:?}")).hash(&mut h);
            }
        }
        self.steps.hash(&mut h);
        h.finish()
    }

    pub fn count(&self, label: &str) -> usize {
        self.checked
            .history
            .iter()
            .filter(|o| o.result.label() == label)
            .count()
    }

    /// One line: the seed, what ran, and the anomalies.
    pub fn summary(&self) -> String {
        format!(
            "seed {}: {} ops ({} committed, {} aborted, {} unknown, {} failed), {} fault events, \
             {:.1} s simulated, quiescent {} and live {} after the heal, fingerprint {:016x}, \
             anomalies: {}",
            self.seed,
            self.checked.history.len(),
            self.count("committed"),
            self.count("aborted"),
            self.count("unknown"),
            self.count("failed"),
            self.faults.len(),
            self.simulated.as_secs_f64(),
            secs(self.checked.quiescent_after_heal),
            secs(self.checked.live_after_heal),
            self.fingerprint(),
            if self.checked.anomalies.is_empty() {
                "none".to_string()
            } else {
                format!("{:?}", self.checked.anomalies.by_kind)
            }
        )
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("never".to_string(), |d| format!("{:.1} s", d.as_secs_f64()))
}

/// Why a run could not finish.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("seed {seed}: the simulation failed at {at:?}: {why}")]
    Failed {
        seed: u64,
        at: Duration,
        why: String,
    },
    #[error("seed {seed}: cannot make the nodes' directories: {0}", seed = .1)]
    Setup(std::io::Error, u64),
}

/// The simulated wall clock at the start of every run (2026-01-01 UTC).
const SIM_EPOCH_MS: u64 = 1_767_225_600_000;

/// How long the simulation may run in simulated time before it is failed.
const SIMULATED_LIMIT: Duration = Duration::from_secs(300);

/// Runs one seed on this thread (every host of the simulation runs here).
pub fn run(options: &Options) -> Result<Report, SimError> {
    // Everything random or racy that the simulation does not drive itself,
    // pinned to this thread and this seed: blocking jobs inline, openraft's
    // election timeouts and the back-off jitter (fastrand's thread-local
    // generator) seeded.
    dtc_util::blocking::run_inline_on_this_thread(true);
    dtc_store::runtime::seed_thread_rng(Some(options.seed));
    fastrand::seed(options.seed);
    // The wall clock of the host running now (retention, ages of in-doubt
    // branches), starting at the simulation's epoch.
    dtc_util::set_wall_clock_on_this_thread(Some(|| {
        turmoil::since_epoch()
            .map(|d| d.as_millis() as u64)
            .unwrap_or(SIM_EPOCH_MS)
    }));
    let result = run_here(options);
    dtc_util::blocking::run_inline_on_this_thread(false);
    dtc_store::runtime::seed_thread_rng(None);
    dtc_util::set_wall_clock_on_this_thread(None);
    result
}

fn run_here(options: &Options) -> Result<Report, SimError> {
    let seed = options.seed;
    let mut rng = fastrand::Rng::with_seed(seed);
    let workers = 1 + rng.usize(..3);
    let faults = if options.calm { 0 } else { 2 + rng.usize(..5) };
    let root = scratch_dir().map_err(|e| SimError::Setup(e, seed))?;

    let mut sim = turmoil::Builder::new()
        .simulation_duration(SIMULATED_LIMIT)
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(nemesis::BASE_LATENCY)
        .rng_seed(seed)
        .epoch(std::time::UNIX_EPOCH + Duration::from_millis(SIM_EPOCH_MS))
        .build();
    let shared = hosts::Shared::new(options.lying_disks);
    for (i, name) in hosts::COORDINATORS.iter().enumerate() {
        let dir = root.path().join(name);
        let shared = shared.clone();
        sim.host(*name, move || {
            hosts::coordinator(i as u64 + 1, dir.clone(), shared.clone())
        });
    }
    for name in hosts::LEDGERS {
        let shared = shared.clone();
        sim.host(name, move || hosts::participant(name, shared.clone()));
    }
    let control = Arc::new(bank::Control::default());
    sim.client("client", bank::client(seed, workers, control.clone()));

    let mut nemesis = match &options.script {
        Some(schedule) => nemesis::Nemesis::scripted(schedule.clone()),
        None => nemesis::Nemesis::new(seed, faults, options.fault_window),
    };
    let mut healed = false;
    let mut steps = 0u64;
    let failed = |at: Duration, why: String| SimError::Failed { seed, at, why };
    loop {
        let now = sim.elapsed();
        if !healed {
            if now >= options.fault_window {
                nemesis.heal(now, &mut sim, &shared);
                control
                    .healed
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                healed = true;
            } else {
                nemesis.tick(now, &mut sim, &shared);
            }
        }
        nemesis.supervise(now, &mut sim, &shared);
        let finished = sim.step().map_err(|e| failed(now, e.to_string()))?;
        steps += 1;
        if finished {
            break;
        }
    }
    let checked = control
        .result
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| failed(sim.elapsed(), "the client finished without a result".into()))?;
    Ok(Report {
        seed,
        checked,
        faults: nemesis.log,
        simulated: sim.elapsed(),
        steps,
    })
}

/// The nodes' real directories (their identity files and snapshot files;
/// the redb files are simulated): in memory when /dev/shm exists.
fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = std::path::Path::new("/dev/shm");
    let mut b = tempfile::Builder::new();
    b.prefix("dtc-sim-");
    if shm.is_dir() {
        b.tempdir_in(shm)
    } else {
        b.tempdir()
    }
}

/// Logs of the nodes on stderr when `DTC_SIM_LOG` is set (an `EnvFilter`,
/// e.g. `info` or `dtc_coordinator=debug`): for replaying a failing seed.
pub fn init_logging() {
    if let Ok(filter) = std::env::var("DTC_SIM_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}
