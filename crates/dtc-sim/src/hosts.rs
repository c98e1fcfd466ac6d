//! The software of the simulated hosts: three coordinator nodes (`c1`–`c3`,
//! port 7000) and two ledger participants (`bank-a`, `bank-b`, port 9000),
//! each the production code (`dtc_coordinator::node::run_in`,
//! `dtc_ledger::participant_on`) on the simulated network and disks.
//! turmoil calls a host's function again when the host restarts after a
//! crash; it then opens what the crash left on its disks.

use crate::disks::Disks;
use dtc_coordinator::{NodeConfig, NodeEnv, run_in};
use dtc_store::{LogStore, StateMachineStore};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const COORDINATORS: [&str; 3] = ["c1", "c2", "c3"];
pub const LEDGERS: [&str; 2] = ["bank-a", "bank-b"];
pub const COORDINATOR_PORT: u16 = 7000;
pub const PARTICIPANT_PORT: u16 = 9000;

/// `c1:7000`, … as every client and participant dials them.
pub fn coordinator_addrs() -> Vec<String> {
    COORDINATORS
        .iter()
        .map(|c| format!("{c}:{COORDINATOR_PORT}"))
        .collect()
}

/// What the hosts share with the simulation loop.
#[derive(Debug, Clone, Default)]
pub struct Shared {
    pub disks: Disks,
}

impl Shared {
    /// `lying_disks`: see [`crate::Options::lying_disks`].
    pub fn new(lying_disks: bool) -> Shared {
        Shared {
            disks: Disks::new(lying_disks),
        }
    }
}

type HostResult = Result<(), Box<dyn std::error::Error>>;

/// Coordinator `id` (1–3) with its metadata and snapshot files in `dir`
/// (a real directory: see docs/testing.md) and its two redb files on
/// simulated disks.
pub async fn coordinator(id: u64, dir: PathBuf, shared: Shared) -> HostResult {
    let name = COORDINATORS[(id - 1) as usize];
    let result = run_coordinator(id, name, dir, &shared).await;
    stopped(name, result, &shared)
}

async fn run_coordinator(id: u64, name: &'static str, dir: PathBuf, shared: &Shared) -> HostResult {
    let peers: BTreeMap<u64, String> = (1..=3)
        .map(|i| {
            (
                i,
                format!("{}:{COORDINATOR_PORT}", COORDINATORS[(i - 1) as usize]),
            )
        })
        .collect();
    let listen = SocketAddr::new(turmoil::lookup(name), COORDINATOR_PORT);
    let mut config = NodeConfig::new(id, listen, dir, peers);
    // No filesystem to watch: the disks are simulated.
    config.disk_reserve_bytes = 0;
    // Snapshots (and log purges, and snapshot installs on a node that
    // fell behind) happen within a seed's few hundred transactions.
    config.snapshot_every = 150;
    config.rpc_timeout = Duration::from_millis(500);
    config.shutdown_grace = Duration::ZERO;
    let disks = shared.disks.clone();
    let env = NodeEnv {
        dialer: crate::net::dialer(),
        incoming: Some(crate::net::incoming(name, COORDINATOR_PORT).await?),
        stores: Some(Box::new(move |dir: &std::path::Path| {
            let log = LogStore::open_with_backend(disks.get(name, "raft-log"))?;
            let state = StateMachineStore::open_with_backend(
                disks.get(name, "state"),
                &dir.join(dtc_store::SNAPSHOT_DIR),
            )?;
            Ok((log, state))
        })),
    };
    run_in(config, env, std::future::pending()).await?;
    Ok(())
}

/// A node that stopped on its own: expected (and `Ok`: the host stays down
/// until the simulation restarts it, as a supervisor would) if its disk
/// failed since it started, a failure of the seed otherwise.
fn stopped(host: &str, result: HostResult, shared: &Shared) -> HostResult {
    match result {
        Err(e) if shared.disks.failed(host).is_some() => {
            tracing::info!(host, error = %e, "stopped on its failed disk, as it should");
            Ok(())
        }
        other => other,
    }
}

/// Ledger participant `name` on its simulated disk.
pub async fn participant(name: &'static str, shared: Shared) -> HostResult {
    let result = run_participant(name, &shared).await;
    stopped(name, result, &shared)
}

async fn run_participant(name: &'static str, shared: &Shared) -> HostResult {
    let db = dtc_participant::open_database_with_backend(shared.disks.get(name, "participant"))?;
    let (builder, _ledger) = dtc_ledger::participant_on(name, db)?;
    let running = builder
        .coordinators(coordinator_addrs())
        .advertise(format!("{name}:{PARTICIPANT_PORT}"))
        .dialer(crate::net::dialer())
        .rpc_timeout(Duration::from_millis(500))
        .in_doubt_interval(Duration::from_millis(300))
        .start_on(crate::net::incoming(name, PARTICIPANT_PORT).await?)
        .await?;
    running.serve_until(std::future::pending()).await?;
    Ok(())
}
