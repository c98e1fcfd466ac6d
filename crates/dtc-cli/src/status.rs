//! `dtc status`: every node's own view, merged into one picture.

use dtc_harness::status;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Coordinator addresses, HOST:PORT, comma separated.
    #[arg(long, value_delimiter = ',', required = true, env = "DTC_COORDINATORS")]
    coordinators: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Per-node timeout.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    timeout_ms: u64,
    #[command(flatten)]
    tls: crate::tls::TlsArgs,
}

pub async fn run(args: StatusArgs) -> ExitCode {
    let timeout = Duration::from_millis(args.timeout_ms);
    let tls = match args.tls.load() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("dtc status: {e}");
            return ExitCode::from(2);
        }
    };
    let (status, reachable) = status::gather(&args.coordinators, timeout, tls.as_ref()).await;
    if args.json {
        match serde_json::to_string_pretty(&status) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("dtc status: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        status::print_table(&status);
    }
    if !reachable {
        eprintln!("dtc status: no coordinator is reachable");
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}
