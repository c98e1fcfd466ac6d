//! `dtc query` and `dtc participant-admin`: reads at one participant,
//! through the `dtc.v1.ParticipantQuery` service every SDK participant
//! serves (found through the coordinators' registry).

use crate::client_cmds::{ClusterArgs, client, fail, usage};
use serde_json::json;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct QueryArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The registered participant to ask.
    participant: String,
    /// The key its query hook reads (for a ledger: an account).
    key: String,
}

#[derive(clap::Subcommand)]
pub enum ParticipantAdminCmd {
    /// Transactions the participant voted prepared for and has no decision
    /// for yet (in doubt there), oldest first, with their age.
    List {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// The registered participant to ask.
        participant: String,
        /// Most transactions to print.
        #[arg(long, default_value_t = 100,
              value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
}

/// `dtc query P KEY`: prints the value (exit 0), or says there is none
/// (exit 1).
pub async fn query(args: QueryArgs) -> ExitCode {
    let cmd = "query";
    if let Err(e) = dtc_core::validate_participant_name(&args.participant) {
        return usage(cmd, format!("participant {:?}: {e}", args.participant));
    }
    let c = match client(cmd, &args.cluster) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (p, key) = (&args.participant, &args.key);
    match c.query(p, key).await {
        Ok(value) => {
            if args.cluster.json {
                println!(
                    "{}",
                    json!({ "participant": p, "key": key, "found": value.is_some(), "value": value })
                );
            } else if let Some(v) = &value {
                println!("{v}");
            } else {
                eprintln!("dtc {cmd}: participant {p} has no value for {key:?}");
            }
            if value.is_some() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => fail(cmd, args.cluster.json, &e),
    }
}

pub async fn admin(cmd: ParticipantAdminCmd) -> ExitCode {
    let ParticipantAdminCmd::List {
        cluster,
        participant,
        limit,
    } = cmd;
    let cmd = "participant-admin list";
    if let Err(e) = dtc_core::validate_participant_name(&participant) {
        return usage(cmd, format!("participant {participant:?}: {e}"));
    }
    let c = match client(cmd, &cluster) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match c.list_in_doubt(&participant, limit).await {
        Ok((list, total)) => {
            let now = dtc_util::wall_ms();
            if cluster.json {
                println!(
                    "{}",
                    json!({ "participant": participant, "total": total, "prepared": list })
                );
            } else if list.is_empty() {
                println!("{participant}: no prepared transaction waits for a decision");
            } else {
                println!("{:<40} {:>10} {:>9}", "TXN ID", "AGE", "PAYLOAD");
                for t in &list {
                    let age = now.saturating_sub(t.prepared_at_ms) as f64 / 1000.0;
                    println!("{:<40} {:>9.1}s {:>8}B", t.txn_id, age, t.payload_bytes);
                }
                if total > list.len() as u64 {
                    println!("... {} more (--limit)", total - list.len() as u64);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(cmd, cluster.json, &e),
    }
}
