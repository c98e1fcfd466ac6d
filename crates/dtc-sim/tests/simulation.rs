//! The deterministic simulation in the test command (crate docs of
//! `dtc_sim`; docs/testing.md): many seeds, each a whole cluster under
//! seeded faults, checked by the bank checker; a seed replays exactly; the
//! checker does catch a disk that lies about fsync; and a scripted cut that
//! leaves connections dead does not hold transfers up until keepalives fire.
//!
//! - `DTC_SIM_SEEDS=N` runs seeds 1..=N instead of the default
//!   ([`DEFAULT_SEEDS`]); `DTC_SIM_FIRST=S` starts at S.
//! - `DTC_SIM_SEED=S` runs seed S alone (the replay of a failure), with
//!   `DTC_SIM_LOG=info` (or any tracing filter) for the nodes' logs.

use dtc_sim::{Options, Report, SimError};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Seeds the test command runs (about half a minute on two cores).
const DEFAULT_SEEDS: u64 = 200;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v:?} is not a number"),
    }
}

fn replay_hint(seed: u64) -> String {
    format!(
        "replay: DTC_SIM_SEED={seed} DTC_SIM_LOG=info cargo test -p dtc-sim --test simulation \
         seeds_keep_the_bank_invariants -- --nocapture"
    )
}

/// Runs `seeds` on every core; returns the reports and the failures.
fn run_all(seeds: Vec<u64>, configure: impl Fn(&mut Options) + Sync) -> (Vec<Report>, Vec<String>) {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let reports = Mutex::new(Vec::new());
    let failures = Mutex::new(Vec::new());
    let started = Instant::now();
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(seeds.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&seed) = seeds.get(i) else { return };
                    let mut options = Options::seed(seed);
                    configure(&mut options);
                    let outcome = std::panic::catch_unwind(|| dtc_sim::run(&options));
                    match outcome {
                        Ok(Ok(report)) => {
                            if !report.checked.anomalies.is_empty() {
                                failures.lock().unwrap().push(format!(
                                    "{}\n  faults: {:?}\n  {}",
                                    report.summary(),
                                    report.faults,
                                    replay_hint(seed)
                                ));
                            }
                            reports.lock().unwrap().push(report);
                        }
                        Ok(Err(e)) => failures
                            .lock()
                            .unwrap()
                            .push(format!("{e}\n  {}", replay_hint(seed))),
                        Err(_) => failures.lock().unwrap().push(format!(
                            "seed {seed}: the simulation panicked\n  {}",
                            replay_hint(seed)
                        )),
                    }
                    let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                    if n.is_multiple_of(50) || n == seeds.len() {
                        eprintln!(
                            "simulation: {n}/{} seeds in {:.1} s, {} failed",
                            seeds.len(),
                            started.elapsed().as_secs_f64(),
                            failures.lock().unwrap().len()
                        );
                    }
                }
            });
        }
    });
    (
        reports.into_inner().unwrap(),
        failures.into_inner().unwrap(),
    )
}

#[test]
fn seeds_keep_the_bank_invariants() {
    dtc_sim::init_logging();
    let seeds: Vec<u64> = match env_u64("DTC_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = env_u64("DTC_SIM_FIRST").unwrap_or(1);
            let n = env_u64("DTC_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
            (first..first + n).collect()
        }
    };
    let started = Instant::now();
    let (reports, failures) = run_all(seeds.clone(), |_| {});
    let ops: usize = reports.iter().map(|r| r.checked.history.len()).sum();
    let unknown: usize = reports.iter().map(|r| r.count("unknown")).sum();
    let faults: usize = reports.iter().map(|r| r.faults.len()).sum();
    let crashes: usize = reports
        .iter()
        .map(|r| r.faults.iter().filter(|f| f.contains(": crash ")).count())
        .sum();
    let simulated: f64 = reports.iter().map(|r| r.simulated.as_secs_f64()).sum();
    eprintln!(
        "simulation: {} seeds ({}..={}) in {:.1} s: {ops} operations ({unknown} unknown to \
         their client), {faults} fault events ({crashes} crashes), {simulated:.0} s simulated, \
         {} with anomalies or errors",
        seeds.len(),
        seeds.first().unwrap_or(&0),
        seeds.last().unwrap_or(&0),
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    if seeds.len() == 1
        && let Some(r) = reports.first()
    {
        eprintln!("{}\nfaults: {:#?}", r.summary(), r.faults);
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed:\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
    assert!(ops > 0, "no operation ran");
}

#[test]
fn a_seed_replays_exactly() {
    let run = |seed| dtc_sim::run(&Options::seed(seed)).unwrap_or_else(|e: SimError| panic!("{e}"));
    for seed in [3, 11] {
        let (a, b) = (run(seed), run(seed));
        let ids = |r: &Report| -> Vec<(String, String)> {
            r.checked
                .history
                .iter()
                .map(|o| (o.id.clone(), o.result.label().to_string()))
                .collect()
        };
        assert_eq!(a.faults, b.faults, "seed {seed}: the faults differ");
        assert_eq!(
            ids(&a),
            ids(&b),
            "seed {seed}: the operations or their results differ"
        );
        assert_eq!(
            a.steps, b.steps,
            "seed {seed}: the runs took different simulated times"
        );
        assert_eq!(a.fingerprint(), b.fingerprint(), "seed {seed}");
    }
}

#[test]
fn a_disk_that_lies_about_fsync_is_caught() {
    // Every crash loses everything written since the host started, synced
    // or not: acknowledged votes and commits vanish. Some of these seeds
    // must show it (lost commits, split outcomes, money created or lost).
    let seeds: Vec<u64> = (1..=12).collect();
    let (reports, errors) = run_all(seeds, |o| o.lying_disks = true);
    let caught = reports
        .iter()
        .filter(|r| !r.checked.anomalies.is_empty())
        .count()
        + errors.len();
    assert!(
        caught > 0,
        "no seed noticed disks that lose synced writes: {:#?}",
        reports.iter().map(Report::summary).collect::<Vec<_>>()
    );
}

/// A one-way cut from every coordinator to a ledger while transfers run:
/// turmoil's TCP drops what a cut link carries and never retransmits, so a
/// connection that carried a call across the cut is dead afterwards
/// without anything having closed it (as when a middlebox forgets a flow).
/// A coordinator gives such a connection up after one call that hears
/// nothing back and dials afresh, so a transfer through that ledger commits
/// at once after the heal (0.2 s here), not once the channel's keepalive
/// (5 s interval + 5 s timeout) notices (7.2 to 9.0 s with the connection
/// kept). Simulated time: the same on every run of the same code.
#[test]
fn connections_a_cut_left_dead_are_dialed_afresh() {
    use dtc_sim::nemesis::{Fault, Scheduled};
    use std::time::Duration;
    let cut = |from| Scheduled {
        at: Duration::from_millis(700),
        lasts: Duration::from_millis(500),
        fault: Fault::OneWay { from, to: "bank-a" },
    };
    for seed in [1, 2, 3] {
        let mut options = Options::seed(seed);
        options.script = Some(["c1", "c2", "c3"].map(cut).to_vec());
        let report = dtc_sim::run(&options).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.checked.anomalies.is_empty(), "{}", report.summary());
        let live = report
            .checked
            .live_after_heal
            .unwrap_or_else(|| panic!("the probe never committed: {}", report.summary()));
        assert!(
            live < Duration::from_secs(5),
            "a transfer committed only {live:?} after the heal: {}",
            report.summary()
        );
    }
}
