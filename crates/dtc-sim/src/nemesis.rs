//! The faults of one seed: a schedule drawn up front from the seed (so it
//! is the same on every replay), applied between simulation steps, and
//! healed all at once when the workload's fault window ends.
//!
//! | fault | what turmoil does | undone by |
//! |---|---|---|
//! | `crash` | the host's runtime is dropped mid-flight; its disks keep only what a crash leaves (synced only, torn pages, or everything written) | restart (`bounce`) |
//! | `disk full` / `fsync fails` | the host's disks refuse to grow (ENOSPC) or fail every sync (EIO); the node should stop (the host then stays down) | the disk works again; a stopped host is restarted (after a failed fsync, from what was synced) |
//! | `isolate` | every link of the host is cut both ways | `repair` |
//! | `one-way` | messages from one host to another are dropped | `repair_oneway` |
//! | `hold` | messages between two hosts are held (delivered late, after everything sent meanwhile elsewhere) | `release` |
//! | `jitter` | every message takes up to this long (connections race each other) | the base latency |

use crate::hosts::{COORDINATORS, LEDGERS, Shared};
use dtc_store::test_support::{CrashMode, DiskFault};
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

/// Every simulated host that faults can hit (the client included: cut
/// off, it sees unknown outcomes).
pub const HOSTS: [&str; 6] = ["c1", "c2", "c3", "bank-a", "bank-b", "client"];

/// The latency of every message when no fault says otherwise.
pub const BASE_LATENCY: Duration = Duration::from_millis(2);

#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    Crash {
        host: &'static str,
        mode: CrashMode,
    },
    Disk {
        host: &'static str,
        fault: DiskFault,
    },
    Isolate {
        host: &'static str,
    },
    OneWay {
        from: &'static str,
        to: &'static str,
    },
    Hold {
        a: &'static str,
        b: &'static str,
    },
    Jitter {
        max: Duration,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Crash { host, mode } => {
                let mode = match mode {
                    CrashMode::SyncedOnly => "synced-only",
                    CrashMode::AllWritten => "all-written",
                    CrashMode::Torn { .. } => "torn",
                };
                write!(f, "crash {host} ({mode})")
            }
            Fault::Disk { host, fault } => match fault {
                DiskFault::Full => write!(f, "disk full at {host}"),
                DiskFault::SyncFails => write!(f, "fsync fails at {host}"),
            },
            Fault::Isolate { host } => write!(f, "isolate {host}"),
            Fault::OneWay { from, to } => write!(f, "cut {from}->{to}"),
            Fault::Hold { a, b } => write!(f, "hold {a}<->{b}"),
            Fault::Jitter { max } => write!(f, "jitter up to {}ms", max.as_millis()),
        }
    }
}

/// One fault: when it starts and how long it lasts.
#[derive(Debug, Clone)]
pub struct Scheduled {
    pub at: Duration,
    pub lasts: Duration,
    pub fault: Fault,
}

/// The schedule and what is in force now.
#[derive(Debug)]
pub struct Nemesis {
    schedule: Vec<Scheduled>,
    next: usize,
    /// Started and not yet undone: (ends at, fault).
    active: Vec<(Duration, Fault)>,
    /// What happened, in order, for the report (and the replay check).
    pub log: Vec<String>,
}

impl Nemesis {
    /// `faults` faults, each starting within `window` and lasting 50 ms to
    /// 2 s, drawn from `seed`.
    pub fn new(seed: u64, faults: usize, window: Duration) -> Nemesis {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x6e65_6d65_7369_7321);
        let window_ms = window.as_millis().max(1) as u64;
        let schedule: Vec<Scheduled> = (0..faults)
            .map(|_| {
                let at = Duration::from_millis(rng.u64(300..window_ms.max(301)));
                let lasts = Duration::from_millis(rng.u64(50..2000));
                let pick = |rng: &mut fastrand::Rng| HOSTS[rng.usize(..HOSTS.len())];
                let servers: Vec<&'static str> =
                    COORDINATORS.iter().chain(LEDGERS.iter()).copied().collect();
                let fault = match rng.u8(0..100) {
                    0..34 => {
                        let host = servers[rng.usize(..servers.len())];
                        let mode = match rng.u8(0..100) {
                            0..60 => CrashMode::SyncedOnly,
                            60..85 => CrashMode::Torn { seed: rng.u64(..) },
                            _ => CrashMode::AllWritten,
                        };
                        Fault::Crash { host, mode }
                    }
                    34..40 => Fault::Disk {
                        host: servers[rng.usize(..servers.len())],
                        fault: if rng.bool() {
                            DiskFault::Full
                        } else {
                            DiskFault::SyncFails
                        },
                    },
                    40..60 => Fault::Isolate {
                        host: pick(&mut rng),
                    },
                    60..75 => {
                        let (from, to) = distinct(&mut rng);
                        Fault::OneWay { from, to }
                    }
                    75..90 => {
                        let (a, b) = distinct(&mut rng);
                        Fault::Hold { a, b }
                    }
                    _ => Fault::Jitter {
                        max: Duration::from_millis(rng.u64(5..200)),
                    },
                };
                Scheduled { at, lasts, fault }
            })
            .collect();
        Nemesis::scripted(schedule)
    }

    /// Exactly these faults.
    pub fn scripted(mut schedule: Vec<Scheduled>) -> Nemesis {
        schedule.sort_by_key(|s| s.at);
        Nemesis {
            schedule,
            next: 0,
            active: Vec::new(),
            log: Vec::new(),
        }
    }

    /// Starts what is due at `now` and undoes what has run its course.
    pub fn tick(&mut self, now: Duration, sim: &mut turmoil::Sim<'_>, shared: &Shared) {
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].0 <= now {
                let (_, fault) = self.active.remove(i);
                self.undo(now, &fault, sim, shared);
            } else {
                i += 1;
            }
        }
        while let Some(s) = self.schedule.get(self.next).filter(|s| s.at <= now) {
            let s = s.clone();
            self.next += 1;
            // A host already down stays down; one crash at a time per host.
            if let Fault::Crash { host, .. } | Fault::Disk { host, .. } = &s.fault
                && self.active.iter().any(|(_, f)| is_crash_of(f, host))
            {
                continue;
            }
            self.apply(now, &s.fault, sim, shared);
            self.active.push((now + s.lasts, s.fault));
        }
    }

    /// The supervisor: a server host that stopped on its own (its disk
    /// failed, and it stopped as it should) starts again once nothing
    /// keeps it down, as systemd or Kubernetes would restart it.
    pub fn supervise(&mut self, now: Duration, sim: &mut turmoil::Sim<'_>, shared: &Shared) {
        for host in COORDINATORS.iter().chain(LEDGERS.iter()) {
            let held_down = self.active.iter().any(|(_, f)| {
                matches!(f, Fault::Crash { host: h, .. } | Fault::Disk { host: h, .. } if h == host)
            });
            if !held_down && !sim.is_host_running(*host) {
                shared.disks.restarting(host);
                sim.bounce(*host);
                self.log.push(format!(
                    "{} ms: restart {host} (it stopped)",
                    now.as_millis()
                ));
            }
        }
    }

    /// Undoes everything still in force and drops what was not started.
    pub fn heal(&mut self, now: Duration, sim: &mut turmoil::Sim<'_>, shared: &Shared) {
        for (_, fault) in std::mem::take(&mut self.active) {
            self.undo(now, &fault, sim, shared);
        }
        self.next = self.schedule.len();
        // Belt and braces: every link whole, latency back to normal.
        let all: BTreeSet<&str> = HOSTS.iter().copied().collect();
        for a in &all {
            for b in &all {
                if a < b {
                    sim.repair(*a, *b);
                    sim.release(*a, *b);
                }
            }
        }
        sim.set_max_message_latency(BASE_LATENCY);
        self.log.push(format!("{} ms: healed", now.as_millis()));
    }

    fn apply(&mut self, now: Duration, fault: &Fault, sim: &mut turmoil::Sim<'_>, shared: &Shared) {
        match fault {
            Fault::Crash { host, mode } => {
                // The disks first: whatever the dying incarnation writes
                // after this instant is lost.
                shared.disks.crash(host, *mode);
                sim.crash(*host);
            }
            Fault::Disk { host, fault } => shared.disks.set_fault(host, Some(*fault)),
            Fault::Isolate { host } => {
                for other in HOSTS.iter().filter(|h| *h != host) {
                    sim.partition(*host, *other);
                }
            }
            Fault::OneWay { from, to } => sim.partition_oneway(*from, *to),
            Fault::Hold { a, b } => sim.hold(*a, *b),
            Fault::Jitter { max } => sim.set_max_message_latency(*max),
        }
        self.log.push(format!("{} ms: {fault}", now.as_millis()));
    }

    fn undo(&mut self, now: Duration, fault: &Fault, sim: &mut turmoil::Sim<'_>, shared: &Shared) {
        match fault {
            Fault::Crash { host, .. } => {
                shared.disks.restarting(host);
                sim.bounce(*host);
            }
            // A host that stopped meanwhile is restarted by `supervise`.
            Fault::Disk { host, .. } => shared.disks.set_fault(host, None),
            Fault::Isolate { host } => {
                for other in HOSTS.iter().filter(|h| *h != host) {
                    sim.repair(*host, *other);
                }
            }
            Fault::OneWay { from, to } => sim.repair_oneway(*from, *to),
            Fault::Hold { a, b } => sim.release(*a, *b),
            Fault::Jitter { .. } => sim.set_max_message_latency(BASE_LATENCY),
        }
        self.log
            .push(format!("{} ms: end of {fault}", now.as_millis()));
    }
}

/// Whether `f` keeps `host` down or its disk failing (one at a time).
fn is_crash_of(f: &Fault, host: &str) -> bool {
    matches!(f, Fault::Crash { host: h, .. } | Fault::Disk { host: h, .. } if *h == host)
}

fn distinct(rng: &mut fastrand::Rng) -> (&'static str, &'static str) {
    let a = rng.usize(..HOSTS.len());
    let b = (a + 1 + rng.usize(..HOSTS.len() - 1)) % HOSTS.len();
    (HOSTS[a], HOSTS[b])
}
