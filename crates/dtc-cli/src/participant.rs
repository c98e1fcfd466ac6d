//! `dtc participant`: runs a ledger participant (crates/dtc-ledger) until
//! SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct ParticipantArgs {
    /// Participant name, as branches address it ([A-Za-z0-9._:-], at most 64 bytes).
    #[arg(long, env = "DTC_NAME")]
    name: String,
    /// Address to listen on, e.g. 127.0.0.1:7101 (port 0 picks a free one).
    #[arg(long, env = "DTC_LISTEN")]
    listen: SocketAddr,
    /// Directory for the participant's redb file (created if missing).
    #[arg(long, env = "DTC_DATA_DIR")]
    data_dir: PathBuf,
    /// Coordinator addresses, HOST:PORT, comma separated.
    #[arg(long, value_delimiter = ',', required = true, env = "DTC_COORDINATORS")]
    coordinators: Vec<String>,
    /// Address the coordinators call this participant at, HOST:PORT or
    /// http://HOST:PORT (default: the listen address; required when
    /// listening on 0.0.0.0).
    #[arg(long, env = "DTC_ADVERTISE")]
    advertise: Option<String>,
    /// How often prepared transactions are checked for a missing decision.
    #[arg(
        long,
        env = "DTC_IN_DOUBT_INTERVAL_MS",
        default_value_t = 5000,
        value_name = "MS"
    )]
    in_doubt_interval_ms: u64,
    /// How long a debit refused only for funds that other prepared
    /// transactions reserve may wait for their decisions before voting
    /// abort (0: vote abort at once). Never longer than the prepare's own
    /// timeout; other branches are served meanwhile.
    #[arg(long, env = "DTC_LOCK_WAIT_MS", default_value_t = 0, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    lock_wait_ms: u64,
    /// Most prepares, commits and aborts waiting for the participant's
    /// writer at once; past it calls are refused with RESOURCE_EXHAUSTED (a
    /// refused prepare counts as an abort vote; decisions are resent).
    #[arg(long, env = "DTC_MAX_QUEUED_OPS", default_value_t = dtc_participant::DEFAULT_MAX_QUEUED as u64, value_name = "OPS",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_queued_ops: u64,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (port 0: any
    /// free port, logged at start). docs/operations.md lists the metrics.
    #[arg(long, env = "DTC_METRICS_LISTEN", value_name = "HOST:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Keep this much free on the data directory's filesystem: below it, new
    /// prepares vote abort (naming the disk) so that the decisions of
    /// prepared transactions can still be written. 0: no reserve.
    #[arg(long, env = "DTC_DISK_RESERVE_MB", value_name = "MIB",
          default_value_t = dtc_participant::DEFAULT_DISK_RESERVE_BYTES >> 20)]
    disk_reserve_mb: u64,
    #[command(flatten)]
    tls: crate::tls::TlsArgs,
    /// Log lines as `text` or `json` (one object per line); which events
    /// is set by the DTC_LOG filter (default info).
    #[arg(long, value_enum, default_value = "text", env = "DTC_LOG_FORMAT")]
    log_format: crate::LogFormat,
    /// Print the start-up line as JSON.
    #[arg(long, env = "DTC_JSON")]
    json: bool,
    /// A TOML file whose keys are these flags' long names (`data-dir =
    /// "/var/lib/dtc"`, `coordinators = ["a:7000", "b:7000"]`). A flag on
    /// the command line, then its DTC_* variable, win over the file.
    #[arg(long, env = crate::config_file::CONFIG_VAR, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
}

impl ParticipantArgs {
    pub fn log_format(&self) -> crate::LogFormat {
        self.log_format
    }
}

pub async fn run(
    args: ParticipantArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> ExitCode {
    // Once, as it will run (flags, environment and defaults resolved).
    tracing::info!(config = ?args, "effective configuration");
    let name = args.name.clone();
    let dir = args.data_dir.clone();
    let opened = tokio::task::spawn_blocking(move || dtc_ledger::participant(&name, &dir)).await;
    let (mut builder, _ledger) = match opened {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            eprintln!(
                "dtc participant: cannot open {}: {e}",
                args.data_dir.display()
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("dtc participant: {e}");
            return ExitCode::FAILURE;
        }
    };
    builder = builder
        .coordinators(args.coordinators.clone())
        .in_doubt_interval(Duration::from_millis(args.in_doubt_interval_ms.max(10)))
        .lock_wait(Duration::from_millis(args.lock_wait_ms))
        .max_queued(usize::try_from(args.max_queued_ops).unwrap_or(usize::MAX))
        .disk_reserve(&args.data_dir, args.disk_reserve_mb.saturating_mul(1 << 20));
    if let Some(addr) = args.metrics_listen {
        builder = builder.metrics_listen(addr);
    }
    if let Some(a) = &args.advertise {
        builder = builder.advertise(a.clone());
    }
    match args.tls.load() {
        Ok(Some(tls)) => builder = builder.tls(tls),
        Ok(None) => {}
        Err(e) => {
            eprintln!("dtc participant: {e}");
            return ExitCode::from(2);
        }
    }
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("dtc participant: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(3);
        }
    };
    let running = match builder.start(listener).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dtc participant: {e}");
            return match e {
                dtc_participant::ParticipantError::Config(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            };
        }
    };
    let endpoint = running.endpoint().unwrap_or("").to_string();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "participant": running.name(),
                "listen": running.local_addr().to_string(),
                "endpoint": endpoint,
            })
        );
    } else {
        println!(
            "participant {} serving on {} (registering {endpoint})",
            running.name(),
            running.local_addr()
        );
    }
    // A participant whose storage failed refuses everything until it
    // restarts: exit non-zero so that a supervisor restarts it.
    match running.serve_until(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(dtc_participant::ParticipantError::Failed(why)) => {
            eprintln!("dtc participant: storage failed: {why}; exiting so that it restarts");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("dtc participant: {e}");
            ExitCode::FAILURE
        }
    }
}
