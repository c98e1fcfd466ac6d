//! # dtc-harness: `dtc` processes on this machine
//!
//! What `dtc demo`, `dtc up`, `dtc bench --local` and the black-box tests
//! share: starting real `dtc` processes, breaking them, and checking what a
//! workload saw against what the cluster and the ledgers recorded.
//!
//! ```text
//! ports ──► cluster::LocalCluster ──owns──► process::Process (one per child:
//!             │  start/kill/restart,          spawn, SIGKILL, SIGSTOP/CONT,
//!             │  leader waits (ClusterStatus),  restart, log file, exit check)
//!             │  metrics (GET /metrics) ──► metrics::Metrics
//!             ▼
//! demo (fault schedule) ──spawns──► bank::worker ×N ──transfers──► cluster
//!             │                          │ ops, answers  (the failover suite's
//!             │                          ▼               clients record here too)
//!             │                    history::History
//!             ▼                          ▼
//!   FinalState (coordinators' records, ledger audits, balances)
//!             └──────────► checker::check ──► Anomalies
//!                                              ▼
//!                               report::Summary (table or JSON)
//! ```
//!
//! ## Layout
//! - [`ports`]: loopback ports safe to restart a process on (one helper).
//! - [`process`]: one child process and its log; [`process::tail`].
//! - [`cluster`]: N coordinators + ledger participants in a temporary
//!   directory, each with a metrics port; waits poll a condition with a
//!   deadline and fail fast when a child exited by itself.
//! - [`metrics`]: a Prometheus text scrape (takeover figures, in-doubt
//!   counts): tools read numbers, not log wording.
//! - [`history`]: what a bank workload's clients did and were told.
//! - [`bank`]: the demo's random transfers with a seeded [`fastrand::Rng`].
//! - [`checker`]: the one checker of a bank run (the demo's and the
//!   failover suite's): conservation of money and one outcome per
//!   transaction at the coordinators, every ledger and the client.
//!   `demo::check` reads the demo's final state through the client SDK.
//! - [`demo`] and [`report`]: `dtc demo`'s schedule (SIGKILL the leader at
//!   1/3, a ledger at 2/3), progress output and summary.
//! - [`up`]: `dtc up`, the demo's cluster left running until Ctrl-C.
//! - [`status`]: `dtc status`'s merged picture of a cluster.
//! - [`wait`]: polling a condition with a deadline (every wait above, and
//!   the tests').
//!
//! Errors are `anyhow` (this crate serves binaries and tests); the tests'
//! wrappers turn them into panics with the children's log tails.

pub mod bank;
pub mod checker;
pub mod cluster;
pub mod demo;
pub mod history;
pub mod metrics;
pub mod ports;
pub mod process;
pub mod report;
pub mod small_disk;
pub mod status;
pub mod up;
pub mod wait;

pub use cluster::{ClusterSpec, Leader, LocalCluster};
pub use process::Process;

pub use dtc_util::shutdown_signal;
