//! # `dtc`: the command-line entry point
//!
//! - `dtc coordinator ...` runs one coordinator node until SIGINT/SIGTERM.
//! - `dtc status ...` asks every given node for its view and prints the
//!   cluster (text or `--json`).
//! - `dtc participant ...` runs a ledger participant (crates/dtc-ledger).
//! - `dtc deposit | transfer | balance | txn show | txn list` are clients
//!   (crates/dtc-client); see `client_cmds` for their output.
//!
//! Exit codes: 0 ok / committed, 1 aborted (`txn show`: not found), 2 usage
//! error, 3 unavailable or outcome unknown.

mod bench;
mod client_cmds;
mod demo;
mod local_cluster;
mod participant;
mod status;
mod up;

use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "dtc",
    version,
    about = "dtc: a replicated two-phase-commit transaction coordinator"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one coordinator node of a three-node (or larger) cluster.
    ///
    /// Fresh nodes started with the same --peers form the cluster by
    /// themselves; a node restarted with the same flags rejoins with its data.
    Coordinator(CoordinatorArgs),
    /// Show the members, leader, term, applied index, pending transactions
    /// and registered participants.
    Status(status::StatusArgs),
    /// Run a ledger participant: accounts with integer balances, in a redb
    /// file next to its participant log. Registers with the coordinators.
    Participant(participant::ParticipantArgs),
    /// Credit an account: `--to P/ACCOUNT --amount N`.
    Deposit(client_cmds::DepositArgs),
    /// Move money: `--from P/ACCOUNT --to P/ACCOUNT --amount N`, atomically
    /// across ledgers.
    Transfer(client_cmds::TransferArgs),
    /// Print an account's committed balance, what prepared transactions
    /// reserve on it (debits) and bring to it (credits), and what is available.
    Balance(client_cmds::BalanceArgs),
    /// Inspect transactions.
    #[command(subcommand)]
    Txn(client_cmds::TxnCmd),
    /// Run a local cluster under random transfers, SIGKILL the leader and a
    /// ledger, and check that nothing was lost.
    ///
    /// Three coordinators and two ledgers run as child processes on free
    /// loopback ports in a temporary directory. Exit status 0 only if the
    /// total balance is unchanged and every transaction has the same outcome
    /// at the coordinators, at every ledger it touched and at its client.
    Demo(demo::DemoArgs),
    /// Start a local cluster (3 coordinators, 2 seeded ledgers) and keep it
    /// running until Ctrl-C.
    Up(up::UpArgs),
    /// Measure a cluster (--coordinators, or --local): transactions per
    /// second and latency per client level, or leader failover time under
    /// load (--local --failover). Serves its own in-process participants.
    #[command(long_about = bench::LONG_ABOUT)]
    Bench(bench::BenchArgs),
}

#[derive(clap::Args)]
struct CoordinatorArgs {
    /// This node's id (a key of --peers).
    #[arg(long)]
    id: u64,
    /// Address to listen on, e.g. 127.0.0.1:7001.
    #[arg(long)]
    listen: SocketAddr,
    /// Directory for this node's Raft log and state (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Every member as ID=HOST:PORT, comma separated (this node included).
    #[arg(long, value_parser = parse_peers_arg)]
    peers: BTreeMap<u64, String>,
    /// Address this node uses to reach peer ID instead of the address in
    /// --peers (the membership), as ID=HOST:PORT; repeat it or separate with
    /// commas. For a peer behind NAT or a port forward; the failover tests
    /// route each link through a proxy this way. Other nodes, clients and
    /// leader hints keep using the member address.
    #[arg(long = "peer-addr-override", value_name = "ID=HOST:PORT", value_delimiter = ',',
          value_parser = parse_override)]
    peer_addr_override: Vec<(u64, String)>,
    /// Cluster name; a node refuses data and messages of another cluster.
    #[arg(long, default_value = "dtc")]
    cluster: String,
    /// Raft heartbeat interval. openraft checks its timers every 1.5
    /// heartbeats and waits at most one heartbeat for an AppendEntries reply
    /// (a follower's fsync included), so keep it above the disk's sync time.
    #[arg(long, default_value_t = 20, value_name = "MS")]
    heartbeat_ms: u64,
    /// Raft election timeout range, MIN-MAX milliseconds. After a leader
    /// dies, a follower campaigns after MAX (openraft's leader lease) plus
    /// its own random timeout in MIN..MAX, so failover takes about
    /// MAX + (MIN+MAX)/2 plus up to 1.5 heartbeats: about 200-270 ms with
    /// the defaults (docs/performance.md measures it).
    #[arg(long, default_value = "60-120", value_parser = parse_range, value_name = "MIN-MAX")]
    election_timeout_ms: (u64, u64),
    /// Transactions in flight on the leader before Execute answers RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,
    /// How long completed outcomes stay queryable for idempotent retries.
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    outcome_retention_secs: u64,
    /// Largest payload of one branch.
    #[arg(long, default_value_t = 4 * 1024 * 1024, value_name = "BYTES")]
    max_payload_bytes: usize,
    /// Default prepare timeout when a request gives none.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    default_timeout_ms: u32,
    /// Build a snapshot and purge the log every this many entries (nodes 2
    /// and 3 wait 10 % and 20 % longer, so the nodes do not all build at once).
    #[arg(long, default_value_t = 5000)]
    snapshot_every: u64,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (port 0: any
    /// free port, logged at start as "metrics listening"). Not served unless
    /// given. docs/operations.md lists the metrics.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
}

fn parse_peers_arg(s: &str) -> Result<BTreeMap<u64, String>, String> {
    dtc_coordinator::parse_peers(s).map_err(|e| e.to_string())
}

fn parse_override(s: &str) -> Result<(u64, String), String> {
    let map = dtc_coordinator::parse_peers(s).map_err(|e| e.to_string())?;
    map.into_iter()
        .next()
        .ok_or_else(|| format!("{s:?} is not ID=HOST:PORT"))
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not MIN-MAX"))?;
    let a: u64 = a
        .trim()
        .parse()
        .map_err(|_| format!("{a:?} is not a number"))?;
    let b: u64 = b
        .trim()
        .parse()
        .map_err(|_| format!("{b:?} is not a number"))?;
    if a == 0 || b <= a {
        return Err(format!("{s:?}: need 0 < MIN < MAX"));
    }
    Ok((a, b))
}

fn init_logging() {
    init_logging_with("info,openraft=warn,h2=warn,tower=warn");
}

fn init_logging_with(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DTC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Crash points for the failover tests (docs/testing.md): armed from
    // $FAILPOINTS when compiled in (feature `failpoints`), refused when not,
    // so a test never silently runs without the crash it asked for.
    let _failpoints = if fail::has_failpoints() {
        Some(fail::FailScenario::setup())
    } else if std::env::var_os("FAILPOINTS").is_some() {
        eprintln!(
            "dtc: FAILPOINTS is set but this binary was built without the `failpoints` \
             feature (cargo build -p dtc-cli --features failpoints)"
        );
        return ExitCode::from(2);
    } else {
        None
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dtc: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Cmd::Coordinator(args) => {
            init_logging();
            let mut config =
                dtc_coordinator::NodeConfig::new(args.id, args.listen, args.data_dir, args.peers);
            config.peer_addr_overrides = args.peer_addr_override.into_iter().collect();
            config.cluster = args.cluster;
            config.heartbeat_ms = args.heartbeat_ms;
            (
                config.election_timeout_min_ms,
                config.election_timeout_max_ms,
            ) = args.election_timeout_ms;
            config.max_in_flight = args.max_in_flight;
            config.outcome_retention = Duration::from_secs(args.outcome_retention_secs);
            config.limits.max_payload_bytes = args.max_payload_bytes;
            config.limits.default_timeout_ms = args.default_timeout_ms;
            config.snapshot_every = args.snapshot_every;
            config.metrics_listen = args.metrics_listen;
            match rt.block_on(dtc_coordinator::run(config, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("dtc coordinator: {e}");
                    match e {
                        dtc_coordinator::NodeError::Config(_) => ExitCode::from(2),
                        _ => ExitCode::FAILURE,
                    }
                }
            }
        }
        Cmd::Status(args) => rt.block_on(status::run(args)),
        Cmd::Participant(args) => {
            init_logging();
            rt.block_on(participant::run(args, shutdown_signal()))
        }
        Cmd::Deposit(args) => {
            init_logging_with("warn");
            rt.block_on(client_cmds::deposit(args))
        }
        Cmd::Transfer(args) => {
            init_logging_with("warn");
            rt.block_on(client_cmds::transfer(args))
        }
        Cmd::Balance(args) => {
            init_logging_with("warn");
            rt.block_on(client_cmds::balance(args))
        }
        Cmd::Txn(cmd) => {
            init_logging_with("warn");
            rt.block_on(client_cmds::txn(cmd))
        }
        Cmd::Demo(args) => rt.block_on(demo::run(args)),
        Cmd::Up(args) => rt.block_on(up::run(args)),
        Cmd::Bench(args) => {
            init_logging_with("warn");
            rt.block_on(bench::run(args))
        }
    }
}
