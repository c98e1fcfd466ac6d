//! # `dtc`: the command-line entry point
//!
//! - `dtc coordinator ...` runs one coordinator node until SIGINT/SIGTERM.
//! - `dtc status ...` asks every given node for its view and prints the
//!   cluster (text or `--json`; the merging is dtc-harness's `status`).
//! - `dtc participant ...` runs a ledger participant (crates/dtc-ledger).
//! - `dtc health --addr HOST:PORT` asks a node's `grpc.health.v1` service
//!   (for container health checks; exit 0 only when SERVING).
//! - `dtc cluster add | remove | replace` change the coordinators'
//!   membership (`cluster_cmds`).
//! - `dtc deposit | transfer | balance | txn show | list | retry | resolve`
//!   are clients (crates/dtc-client); see `client_cmds` for their output.
//! - `dtc query P KEY` and `dtc participant-admin list P` read one
//!   participant (`participant_cmds`).
//! - `dtc demo` and `dtc up` run a local cluster (crates/dtc-harness);
//!   `dtc bench` measures one (crates/dtc-bench). Their flags are those
//!   crates' option structs; this binary parses them and calls in.
//!
//! Exit codes: 0 ok / committed, 1 aborted (`txn`: not found; `cluster`: not
//! finished, run it again), 2 usage
//! error, 3 unavailable or outcome unknown, 4 `txn retry`: still waiting.

mod client_cmds;
mod cluster_cmds;
mod config_file;
mod health;
mod participant;
mod participant_cmds;
mod status;
mod tls;

use anyhow::{Context, anyhow, bail};
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
    /// A node started with --join waits until `dtc cluster add` (or
    /// `replace`) takes it into a running cluster.
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
    /// Inspect transactions, and retry or resolve stuck ones.
    #[command(subcommand)]
    Txn(client_cmds::TxnCmd),
    /// Change the coordinators' membership: add a node, remove one, or
    /// replace one that lost its disk (docs/operations.md).
    #[command(subcommand)]
    Cluster(cluster_cmds::ClusterCmd),
    /// Ask a participant's query hook for a key (for a ledger, an
    /// account's committed balance): prints the value, or exits 1 when the
    /// participant has none.
    Query(participant_cmds::QueryArgs),
    /// Inspect a participant: the transactions it holds prepared.
    #[command(subcommand)]
    ParticipantAdmin(participant_cmds::ParticipantAdminCmd),
    /// Run a local cluster under random transfers, SIGKILL the leader and a
    /// ledger, and check that nothing was lost.
    ///
    /// Three coordinators and two ledgers run as child processes on free
    /// loopback ports in a temporary directory. Exit status 0 only if the
    /// total balance is unchanged and every transaction has the same outcome
    /// at the coordinators, at every ledger it touched and at its client.
    Demo(dtc_harness::demo::DemoOptions),
    /// Start a local cluster (3 coordinators, 2 seeded ledgers) and keep it
    /// running until Ctrl-C.
    Up(dtc_harness::up::UpOptions),
    /// Measure a cluster (--coordinators, or --local): transactions per
    /// second and latency per client level, or leader failover time under
    /// load (--local --failover). Serves its own in-process participants.
    #[command(long_about = dtc_bench::LONG_ABOUT)]
    Bench(dtc_bench::BenchArgs),
    /// Ask a coordinator or participant for its grpc.health.v1 status: exit
    /// 0 when SERVING, 1 for any other answer, 3 when it does not answer.
    Health(health::HealthArgs),
}

#[derive(clap::Args)]
struct CoordinatorArgs {
    /// This node's id (a key of --peers; with --join, an id the cluster
    /// does not use, or the id of the node it replaces).
    #[arg(long, env = "DTC_ID")]
    id: u64,
    /// Address to listen on, e.g. 127.0.0.1:7001, or 0.0.0.0:7001 in a
    /// container (then peers and clients use this node's --peers entry, or
    /// --advertise).
    #[arg(long, env = "DTC_LISTEN")]
    listen: SocketAddr,
    /// Directory for this node's Raft log and state (created if missing).
    #[arg(long, env = "DTC_DATA_DIR")]
    data_dir: PathBuf,
    /// The members a NEW cluster is formed with, as ID=HOST:PORT, comma
    /// separated: the addresses peers and clients use. This node's own
    /// entry may be left out when --advertise gives it. Only bootstraps:
    /// once formed, the membership lives in the cluster (`dtc cluster`).
    #[arg(long, env = "DTC_PEERS", value_parser = parse_peers_arg,
          required_unless_present = "join", conflicts_with = "join")]
    peers: Option<BTreeMap<u64, String>>,
    /// Join a RUNNING cluster instead of forming one: HOST:PORT of some of
    /// its members, comma separated. The node starts empty, serves, and
    /// waits until an operator runs `dtc cluster add` (or `replace`); it
    /// never forms a cluster of its own. Its address is --advertise, else
    /// --listen.
    #[arg(
        long,
        env = "DTC_JOIN",
        value_delimiter = ',',
        value_name = "HOST:PORT"
    )]
    join: Vec<String>,
    /// This node's address as peers and clients reach it (HOST:PORT, e.g. a
    /// container's host name), when --listen is a wildcard or a port is
    /// forwarded. It becomes this node's member address and must agree with
    /// this node's --peers entry if there is one. Default: that entry.
    #[arg(long, env = "DTC_ADVERTISE", value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Address this node uses to reach peer ID instead of the address in
    /// --peers (the membership), as ID=HOST:PORT; repeat it or separate with
    /// commas. For a peer behind NAT or a port forward; the failover tests
    /// route each link through a proxy this way. Other nodes, clients and
    /// leader hints keep using the member address.
    #[arg(long = "peer-addr-override", env = "DTC_PEER_ADDR_OVERRIDE", value_name = "ID=HOST:PORT", value_delimiter = ',',
          value_parser = parse_override)]
    peer_addr_override: Vec<(u64, String)>,
    /// Address this node uses to reach participant NAME instead of the
    /// endpoint it registered, as NAME=HOST:PORT; repeat it or separate with
    /// commas. For a participant behind NAT for this node; the failover
    /// tests cut one coordinator's link to a participant this way.
    #[arg(long = "participant-addr-override", env = "DTC_PARTICIPANT_ADDR_OVERRIDE", value_name = "NAME=HOST:PORT",
          value_delimiter = ',', value_parser = parse_participant_override)]
    participant_addr_override: Vec<(String, String)>,
    /// Cluster name; a node refuses data and messages of another cluster.
    #[arg(long, env = "DTC_CLUSTER", default_value = "dtc")]
    cluster: String,
    /// Raft heartbeat interval. openraft checks its timers every 1.5
    /// heartbeats and waits at most one heartbeat for an AppendEntries reply
    /// (a follower's fsync included), so keep it above the disk's sync time.
    #[arg(
        long,
        env = "DTC_HEARTBEAT_MS",
        default_value_t = 20,
        value_name = "MS"
    )]
    heartbeat_ms: u64,
    /// Raft election timeout range, MIN-MAX milliseconds. After a leader
    /// dies, a follower campaigns after MAX (openraft's leader lease) plus
    /// its own random timeout in MIN..MAX, so failover takes about
    /// MAX + (MIN+MAX)/2 plus up to 1.5 heartbeats: about 200-270 ms with
    /// the defaults (docs/performance.md measures it).
    #[arg(long, env = "DTC_ELECTION_TIMEOUT_MS", default_value = "60-120", value_parser = parse_range, value_name = "MIN-MAX")]
    election_timeout_ms: (u64, u64),
    /// Transactions in flight on the leader before Execute answers RESOURCE_EXHAUSTED.
    #[arg(long, env = "DTC_MAX_IN_FLIGHT", default_value_t = 1024)]
    max_in_flight: usize,
    /// Transactions the leader drives at once, decided ones still waiting
    /// for a participant's acknowledgement included (a dead participant
    /// piles them up), before Execute answers RESOURCE_EXHAUSTED. Raised to
    /// --max-in-flight when below it.
    #[arg(long, env = "DTC_MAX_PENDING", default_value_t = 8 * 1024)]
    max_pending: usize,
    /// Outcome queries (participants asking about in-doubt transactions)
    /// answered at once before more get RESOURCE_EXHAUSTED.
    #[arg(long, env = "DTC_MAX_OUTCOME_QUERIES", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_outcome_queries: u64,
    /// Calls a follower forwards to the leader at once before more get
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "DTC_MAX_FORWARDED", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_forwarded: u64,
    /// How long completed outcomes stay queryable for idempotent retries.
    #[arg(
        long,
        env = "DTC_OUTCOME_RETENTION_SECS",
        default_value_t = 3600,
        value_name = "SECS"
    )]
    outcome_retention_secs: u64,
    /// Largest payload of one branch.
    #[arg(long, env = "DTC_MAX_PAYLOAD_BYTES", default_value_t = 4 * 1024 * 1024, value_name = "BYTES")]
    max_payload_bytes: usize,
    /// Default prepare timeout when a request gives none.
    #[arg(
        long,
        env = "DTC_DEFAULT_TIMEOUT_MS",
        default_value_t = 5000,
        value_name = "MS"
    )]
    default_timeout_ms: u32,
    /// Build a snapshot and purge the log every this many entries (nodes 2
    /// and 3 wait 10 % and 20 % longer, so the nodes do not all build at once).
    #[arg(long, env = "DTC_SNAPSHOT_EVERY", default_value_t = 5000)]
    snapshot_every: u64,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (port 0: any
    /// free port, logged at start as "metrics listening"). Not served unless
    /// given. docs/operations.md lists the metrics.
    #[arg(long, env = "DTC_METRICS_LISTEN", value_name = "HOST:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Keep this much free on the data directory's filesystem: below it, the
    /// leader refuses new transactions (RESOURCE_EXHAUSTED naming the disk)
    /// so that those in flight can still be decided. 0: no reserve.
    #[arg(long, env = "DTC_DISK_RESERVE_MB", value_name = "MIB",
          default_value_t = dtc_util::disk::DEFAULT_RESERVE_BYTES >> 20)]
    disk_reserve_mb: u64,
    /// On SIGTERM/SIGINT: start no new transaction here, and if leading,
    /// wait at most this long for the transactions in flight to be decided
    /// and answered before stopping (then the others elect a leader).
    #[arg(long, env = "DTC_SHUTDOWN_GRACE_SECS", value_name = "SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=600))]
    shutdown_grace_secs: u64,
    #[command(flatten)]
    tls: tls::TlsArgs,
    /// Log lines as `text` or `json` (one object per line); which events
    /// is set by the DTC_LOG filter (default info).
    #[arg(long, value_enum, default_value = "text", env = "DTC_LOG_FORMAT")]
    log_format: LogFormat,
    /// A TOML file whose keys are these flags' long names (`data-dir =
    /// "/var/lib/dtc"`, `peers = ["1=a:7000", "2=b:7000"]`). A flag on the
    /// command line, then its DTC_* variable, win over the file.
    #[arg(long, env = config_file::CONFIG_VAR, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The member addresses with this node's own: `advertise` fills it in or
/// must agree with it. Without `advertise` the peers are used as given (the
/// node's config check then names a missing entry).
fn member_addresses(
    id: u64,
    mut peers: BTreeMap<u64, String>,
    advertise: Option<&str>,
) -> anyhow::Result<BTreeMap<u64, String>> {
    let Some(advertise) = advertise else {
        return Ok(peers);
    };
    // Checked like a --peers entry, so both name a bad address the same way.
    let parsed = dtc_coordinator::parse_peers(&format!("{id}={advertise}"))
        .map_err(|_| anyhow!("invalid --advertise {advertise:?}: expected HOST:PORT"))?;
    let advertise = &parsed[&id];
    let (host, _) = advertise.rsplit_once(':').unwrap_or_default();
    if ["0.0.0.0", "[::]", "::"].contains(&host) {
        bail!(
            "--advertise {advertise} is a wildcard address: give the host name or address \
             that peers and clients dial"
        );
    }
    match peers.get(&id) {
        Some(listed) if listed != advertise => Err(anyhow!(
            "--advertise {advertise} differs from node {id}'s --peers entry {listed}: \
             peers would dial one address and clients be told the other"
        )),
        Some(_) => Ok(peers),
        None => {
            peers.insert(id, advertise.clone());
            Ok(peers)
        }
    }
}

/// A joining node's own entry: `advertise`, else `listen` (which must then
/// not be a wildcard: nobody could dial it). Checks the `--join` list.
fn joining_address(
    id: u64,
    listen: SocketAddr,
    join: &[String],
    advertise: Option<&str>,
) -> anyhow::Result<BTreeMap<u64, String>> {
    if join.is_empty() {
        bail!("give --peers (form a new cluster) or --join (join a running one)");
    }
    for addr in join {
        dtc_coordinator::parse_peers(&format!("0={addr}"))
            .map_err(|_| anyhow!("invalid --join address {addr:?}: expected HOST:PORT"))?;
    }
    if advertise.is_none() && listen.ip().is_unspecified() {
        bail!(
            "--listen {listen} is a wildcard address: with --join give --advertise HOST:PORT, \
             the address the cluster adds this node at"
        );
    }
    let own = advertise.map_or_else(|| listen.to_string(), str::to_string);
    member_addresses(id, BTreeMap::new(), Some(&own))
}

fn parse_peers_arg(s: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    Ok(dtc_coordinator::parse_peers(s)?)
}

fn parse_participant_override(s: &str) -> anyhow::Result<(String, String)> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("{s:?} is not NAME=HOST:PORT"))?;
    dtc_core::validate_participant_name(name).map_err(|e| anyhow!("{s:?}: {e}"))?;
    // Checked as a member address is, so both name a bad address alike.
    let parsed = dtc_coordinator::parse_peers(&format!("1={addr}"))
        .map_err(|_| anyhow!("{s:?}: expected NAME=HOST:PORT"))?;
    Ok((name.to_string(), parsed[&1].clone()))
}

fn parse_override(s: &str) -> anyhow::Result<(u64, String)> {
    let map = dtc_coordinator::parse_peers(s)?;
    map.into_iter()
        .next()
        .with_context(|| format!("{s:?} is not ID=HOST:PORT"))
}

fn parse_range(s: &str) -> anyhow::Result<(u64, u64)> {
    let (a, b) = s
        .split_once('-')
        .with_context(|| format!("{s:?} is not MIN-MAX"))?;
    let number = |x: &str| {
        x.trim()
            .parse::<u64>()
            .map_err(|_| anyhow!("{x:?} is not a number"))
    };
    let (a, b) = (number(a)?, number(b)?);
    if a == 0 || b <= a {
        bail!("{s:?}: need 0 < MIN < MAX");
    }
    Ok((a, b))
}

/// How a long-running node writes its log lines (stderr).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line (timestamp, level, target, message,
    /// fields), for log collectors.
    Json,
}

/// Logging for the node commands (coordinator, participant).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DTC_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=warn,h2=warn,tower=warn")
    });
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => fmt.json().init(),
    }
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

fn main() -> ExitCode {
    use clap::CommandFactory;
    let argv = match config_file::expand(std::env::args_os().collect(), &Cli::command()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("dtc: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(argv);
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
            init_logging(args.log_format);
            let peers = match &args.peers {
                Some(peers) => member_addresses(args.id, peers.clone(), args.advertise.as_deref()),
                None => {
                    joining_address(args.id, args.listen, &args.join, args.advertise.as_deref())
                }
            };
            let peers = match peers {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("dtc coordinator: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut config =
                dtc_coordinator::NodeConfig::new(args.id, args.listen, args.data_dir, peers);
            config.join = args.join;
            config.peer_addr_overrides = args.peer_addr_override.into_iter().collect();
            config.participant_addr_overrides =
                args.participant_addr_override.into_iter().collect();
            config.cluster = args.cluster;
            config.heartbeat_ms = args.heartbeat_ms;
            (
                config.election_timeout_min_ms,
                config.election_timeout_max_ms,
            ) = args.election_timeout_ms;
            config.max_in_flight = args.max_in_flight;
            config.max_pending = args.max_pending.max(args.max_in_flight);
            config.max_outcome_queries =
                usize::try_from(args.max_outcome_queries).unwrap_or(usize::MAX);
            config.max_forwarded = usize::try_from(args.max_forwarded).unwrap_or(usize::MAX);
            config.outcome_retention = Duration::from_secs(args.outcome_retention_secs);
            config.limits.max_payload_bytes = args.max_payload_bytes;
            config.limits.default_timeout_ms = args.default_timeout_ms;
            config.snapshot_every = args.snapshot_every;
            config.metrics_listen = args.metrics_listen;
            config.disk_reserve_bytes = args.disk_reserve_mb.saturating_mul(1 << 20);
            config.shutdown_grace = Duration::from_secs(args.shutdown_grace_secs);
            config.tls = match args.tls.load() {
                Ok(tls) => tls,
                Err(e) => {
                    eprintln!("dtc coordinator: {e}");
                    return ExitCode::from(2);
                }
            };
            // Once, as the node will run it (flags, environment and
            // defaults resolved). TLS shows as its file paths: no key
            // material is logged.
            tracing::info!(config = ?config, "effective configuration");
            match rt.block_on(dtc_coordinator::run(config, dtc_harness::shutdown_signal())) {
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
            init_logging(args.log_format());
            rt.block_on(participant::run(args, dtc_harness::shutdown_signal()))
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
        Cmd::Cluster(cmd) => {
            init_logging_with("warn");
            rt.block_on(cluster_cmds::run(cmd))
        }
        Cmd::Query(args) => {
            init_logging_with("warn");
            rt.block_on(participant_cmds::query(args))
        }
        Cmd::ParticipantAdmin(cmd) => {
            init_logging_with("warn");
            rt.block_on(participant_cmds::admin(cmd))
        }
        Cmd::Health(args) => rt.block_on(health::run(args)),
        Cmd::Demo(args) => rt.block_on(dtc_harness::demo::run(
            &args,
            dtc_harness::shutdown_signal(),
        )),
        Cmd::Up(args) => rt.block_on(dtc_harness::up::run(&args, dtc_harness::shutdown_signal())),
        Cmd::Bench(args) => {
            init_logging_with("warn");
            rt.block_on(dtc_bench::run(&args))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::member_addresses;
    use std::collections::BTreeMap;

    fn peers(s: &str) -> BTreeMap<u64, String> {
        dtc_coordinator::parse_peers(s).unwrap()
    }

    #[test]
    fn advertise_fills_in_or_must_agree_with_this_nodes_peers_entry() {
        let three = peers("1=coord-1:7000,2=coord-2:7000,3=coord-3:7000");
        // Absent: the peers exactly as given (the behaviour before --advertise).
        assert_eq!(member_addresses(1, three.clone(), None).unwrap(), three);
        assert_eq!(
            member_addresses(4, three.clone(), None).unwrap(),
            three,
            "the node's own config check names a missing entry, not this"
        );
        // Agreeing: nothing changes.
        assert_eq!(
            member_addresses(2, three.clone(), Some("coord-2:7000")).unwrap(),
            three
        );
        // Filling in the node's own entry.
        let others = peers("2=coord-2:7000,3=coord-3:7000");
        assert_eq!(
            member_addresses(1, others, Some(" coord-1:7000")).unwrap(),
            three
        );
        // Disagreeing, malformed and wildcard addresses are refused by name.
        let err = member_addresses(1, three.clone(), Some("coord-1:7001"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("coord-1:7001") && err.contains("coord-1:7000"),
            "{err}"
        );
        let err = member_addresses(1, three.clone(), Some("coord-1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid --advertise \"coord-1\""), "{err}");
        for wildcard in ["0.0.0.0:7000", "[::]:7000"] {
            let err = member_addresses(1, three.clone(), Some(wildcard))
                .unwrap_err()
                .to_string();
            assert!(err.contains("wildcard"), "{err}");
        }
    }
}
