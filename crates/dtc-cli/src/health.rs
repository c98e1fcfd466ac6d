//! `dtc health`: one `grpc.health.v1.Health/Check` call, for container
//! health checks and probes. The image has no shell and no grpc client, so
//! the binary checks itself; coordinators and participants already serve the
//! standard health service (tonic-health), so this asks nothing of them.

use std::process::ExitCode;
use std::time::Duration;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[derive(clap::Args)]
pub struct HealthArgs {
    /// Node to check, HOST:PORT (a coordinator or a participant).
    #[arg(long)]
    addr: String,
    /// Service to ask about; empty (the default) is the server as a whole.
    /// e.g. dtc.v1.Coordinator or dtc.v1.Participant.
    #[arg(long, default_value = "")]
    service: String,
    /// Give up after this long (connecting included).
    #[arg(long, default_value_t = 2000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    timeout_ms: u64,
    #[command(flatten)]
    tls: crate::tls::TlsArgs,
}

enum Failed {
    UnknownService,
    Unreachable(String),
}

/// Exit 0 when SERVING; 1 when the node answers another status (or does
/// not know the service); 3 when it cannot be reached in time; 2 for a bad
/// address.
pub async fn run(args: HealthArgs) -> ExitCode {
    let timeout = Duration::from_millis(args.timeout_ms);
    let tls = match args.tls.load() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("dtc health: {e}");
            return ExitCode::from(2);
        }
    };
    let endpoint = match dtc_proto::tls::endpoint(&args.addr, tls.as_ref()) {
        Ok(e) => e.connect_timeout(timeout).timeout(timeout),
        Err(e) => {
            eprintln!("dtc health: invalid --addr {:?}: {e}", args.addr);
            return ExitCode::from(2);
        }
    };
    let what = if args.service.is_empty() {
        "server".to_string()
    } else {
        format!("service {:?}", args.service)
    };
    // The deadline covers connecting and the call together, so a node that
    // accepts TCP but never answers still ends the check in time.
    let call = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Failed::Unreachable(format!("cannot connect: {e}")))?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .map(|r| r.into_inner().status)
            .map_err(|s| match s.code() {
                // The health service's answer for a name it does not serve.
                tonic::Code::NotFound => Failed::UnknownService,
                code => Failed::Unreachable(format!("{code}: {}", s.message())),
            })
    };
    match tokio::time::timeout(timeout, call).await {
        Err(_) => {
            eprintln!(
                "dtc health: {}: no answer within {} ms",
                args.addr, args.timeout_ms
            );
            ExitCode::from(3)
        }
        Ok(Err(Failed::UnknownService)) => {
            eprintln!("dtc health: {}: {what} is unknown to this node", args.addr);
            ExitCode::from(1)
        }
        Ok(Err(Failed::Unreachable(e))) => {
            eprintln!("dtc health: {}: {e}", args.addr);
            ExitCode::from(3)
        }
        Ok(Ok(status)) => match ServingStatus::try_from(status) {
            Ok(ServingStatus::Serving) => {
                println!("{}: {what} SERVING", args.addr);
                ExitCode::SUCCESS
            }
            Ok(other) => {
                eprintln!(
                    "dtc health: {}: {what} is {}",
                    args.addr,
                    other.as_str_name()
                );
                ExitCode::from(1)
            }
            Err(_) => {
                eprintln!(
                    "dtc health: {}: {what} answered an unknown status {status}",
                    args.addr
                );
                ExitCode::from(1)
            }
        },
    }
}
