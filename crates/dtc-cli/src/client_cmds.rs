//! Client commands: `deposit`, `transfer`, `balance`, `txn show`, `txn list`.
//!
//! Exit codes: 0 committed / ok; 1 aborted (or, for `txn show`, not found);
//! 2 usage error (a malformed P/ACCOUNT, a non-positive amount, a request the
//! cluster refuses as invalid: one line on stderr); 3 unavailable, or the
//! outcome is unknown (the message names the txn id to retry with).

use dtc_client::{Client, ClientError, TxnOutcome, TxnStatus};
use dtc_ledger::LedgerClient;
use serde_json::json;
use std::process::ExitCode;
use std::time::Duration;

/// Options every client command takes.
#[derive(clap::Args)]
pub struct ClusterArgs {
    /// Coordinator addresses, HOST:PORT, comma separated.
    #[arg(long, value_delimiter = ',', required = true, env = "DTC_COORDINATORS")]
    coordinators: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(clap::Args)]
pub struct DepositArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    credit: Credit,
    #[command(flatten)]
    txn: TxnOpts,
}

#[derive(clap::Args)]
pub struct TransferArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Account to debit, PARTICIPANT/ACCOUNT.
    #[arg(long, value_name = "P/ACCOUNT")]
    from: String,
    #[command(flatten)]
    credit: Credit,
    #[command(flatten)]
    txn: TxnOpts,
}

/// The account credited and the amount (deposit, transfer).
#[derive(clap::Args)]
pub struct Credit {
    /// Account to credit, PARTICIPANT/ACCOUNT.
    #[arg(long, value_name = "P/ACCOUNT")]
    to: String,
    /// Amount, a positive integer.
    #[arg(long, allow_negative_numbers = true)]
    amount: i64,
}

#[derive(clap::Args)]
pub struct TxnOpts {
    /// Transaction id (idempotency key). Give the id of an earlier attempt
    /// whose outcome was unknown to retry it safely. Generated when absent.
    #[arg(long)]
    txn_id: Option<String>,
    /// Prepare timeout (default: the cluster's).
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// How long to keep retrying across failovers before giving up with
    /// "outcome unknown" (default: prepare timeout + 30 s).
    #[arg(long, value_name = "MS")]
    deadline_ms: Option<u64>,
}

#[derive(clap::Args)]
pub struct BalanceArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The account, PARTICIPANT/ACCOUNT.
    #[arg(value_name = "P/ACCOUNT")]
    target: String,
}

#[derive(clap::Subcommand)]
pub enum TxnCmd {
    /// One transaction's state.
    Show {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Transaction id.
        txn_id: String,
    },
    /// Transactions the cluster knows, ordered by id.
    List {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Only undecided or not fully acknowledged ones.
        #[arg(long)]
        pending: bool,
    },
}

pub(crate) fn usage(cmd: &str, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("dtc {cmd}: {msg}");
    ExitCode::from(2)
}

/// Splits `PARTICIPANT/ACCOUNT`, checking both halves.
pub fn parse_target(s: &str) -> anyhow::Result<(String, String)> {
    let Some((p, a)) = s.split_once('/') else {
        anyhow::bail!("{s:?} is not PARTICIPANT/ACCOUNT");
    };
    dtc_core::validate_participant_name(p).map_err(|e| anyhow::anyhow!("{s:?}: {e}"))?;
    dtc_ledger::validate_account(a).map_err(|e| anyhow::anyhow!("{s:?}: {e}"))?;
    Ok((p.to_string(), a.to_string()))
}

pub(crate) fn client(cmd: &str, args: &ClusterArgs) -> Result<Client, ExitCode> {
    Client::connect(args.coordinators.clone()).map_err(|e| usage(cmd, e))
}

/// Exit code and one-line message for a failed call.
pub(crate) fn fail(cmd: &str, json_out: bool, e: &ClientError) -> ExitCode {
    let code = match e {
        ClientError::InvalidArgument(_)
        | ClientError::FailedPrecondition(_)
        | ClientError::Config(_)
        | ClientError::UnknownParticipant(_) => 2,
        ClientError::NotFound(_) => 1,
        _ => 3,
    };
    if json_out {
        let mut v = json!({ "error": e.to_string() });
        if let Some(id) = e.txn_id() {
            v["txn_id"] = json!(id);
            v["outcome"] = json!("unknown");
        }
        println!("{v}");
    }
    match e.txn_id() {
        Some(id) => eprintln!("dtc {cmd}: {e} (retry with --txn-id {id})"),
        None => eprintln!("dtc {cmd}: {e}"),
    }
    ExitCode::from(code)
}

fn print_outcome(json_out: bool, o: &TxnOutcome) -> ExitCode {
    if json_out {
        // {"outcome": "committed"|"aborted", "txn_id": .., "reason": (aborted)}
        println!("{}", json!(o));
    } else {
        match o {
            TxnOutcome::Committed { txn_id } => println!("committed {txn_id}"),
            TxnOutcome::Aborted { txn_id, reason } => println!("aborted {txn_id}: {reason}"),
        }
    }
    if o.is_committed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn apply_opts(mut b: dtc_client::TxnBuilder, opts: &TxnOpts) -> dtc_client::TxnBuilder {
    if let Some(id) = &opts.txn_id {
        b = b.id(id.clone());
    }
    if let Some(t) = opts.timeout_ms {
        b = b.timeout(Duration::from_millis(t));
    }
    if let Some(d) = opts.deadline_ms {
        b = b.deadline(Duration::from_millis(d));
    }
    b
}

fn check_amount(cmd: &str, amount: i64) -> Result<(), ExitCode> {
    if amount <= 0 {
        return Err(usage(
            cmd,
            format!("--amount must be a positive integer, not {amount}"),
        ));
    }
    Ok(())
}

pub async fn deposit(args: DepositArgs) -> ExitCode {
    let cmd = "deposit";
    let to = match parse_target(&args.credit.to) {
        Ok(t) => t,
        Err(e) => return usage(cmd, format!("--to {e}")),
    };
    if let Err(code) = check_amount(cmd, args.credit.amount) {
        return code;
    }
    let c = match client(cmd, &args.cluster) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let b = apply_opts(c.deposit((&to.0, &to.1), args.credit.amount), &args.txn);
    match b.execute().await {
        Ok(o) => print_outcome(args.cluster.json, &o),
        Err(e) => fail(cmd, args.cluster.json, &e),
    }
}

pub async fn transfer(args: TransferArgs) -> ExitCode {
    let cmd = "transfer";
    let from = match parse_target(&args.from) {
        Ok(t) => t,
        Err(e) => return usage(cmd, format!("--from {e}")),
    };
    let to = match parse_target(&args.credit.to) {
        Ok(t) => t,
        Err(e) => return usage(cmd, format!("--to {e}")),
    };
    if let Err(code) = check_amount(cmd, args.credit.amount) {
        return code;
    }
    if from == to {
        return usage(cmd, "--from and --to are the same account");
    }
    let c = match client(cmd, &args.cluster) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let b = apply_opts(
        c.transfer((&from.0, &from.1), (&to.0, &to.1), args.credit.amount),
        &args.txn,
    );
    match b.execute().await {
        Ok(o) => print_outcome(args.cluster.json, &o),
        Err(e) => fail(cmd, args.cluster.json, &e),
    }
}

pub async fn balance(args: BalanceArgs) -> ExitCode {
    let cmd = "balance";
    let (p, a) = match parse_target(&args.target) {
        Ok(t) => t,
        Err(e) => return usage(cmd, e),
    };
    let c = match client(cmd, &args.cluster) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match c.account_balance(&p, &a).await {
        Ok(b) => {
            if args.cluster.json {
                println!(
                    "{}",
                    json!({
                        "participant": p,
                        "account": a,
                        "balance": b.balance,
                        "reserved": b.reserved,
                        "available": b.available,
                        "incoming": b.incoming,
                    })
                );
            } else {
                println!(
                    "{p}/{a}: {} (reserved {}, available {}, incoming {})",
                    b.balance, b.reserved, b.available, b.incoming
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(cmd, args.cluster.json, &e),
    }
}

fn print_txn_text(t: &TxnStatus) {
    println!("txn_id:        {}", t.txn_id);
    println!("state:         {}", t.state.as_str());
    println!("participants:  {}", t.participants.join(", "));
    if !t.reason.is_empty() {
        println!("reason:        {}", t.reason);
    }
    if !t.awaiting_ack.is_empty() {
        println!("awaiting ack:  {}", t.awaiting_ack.join(", "));
    }
    println!("timeout_ms:    {}", t.timeout_ms);
    println!("created_at_ms: {}", t.created_at_ms);
    if t.decided_at_ms > 0 {
        println!("decided_at_ms: {}", t.decided_at_ms);
    }
    if t.completed_at_ms > 0 {
        println!("completed_at_ms: {}", t.completed_at_ms);
    }
}

pub async fn txn(cmd: TxnCmd) -> ExitCode {
    match cmd {
        TxnCmd::Show { cluster, txn_id } => {
            let c = match client("txn show", &cluster) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match c.get_transaction(&txn_id).await {
                Ok(t) => {
                    if cluster.json {
                        println!(
                            "{}",
                            serde_json::to_string(&t)
                                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
                        );
                    } else {
                        print_txn_text(&t);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail("txn show", cluster.json, &e),
            }
        }
        TxnCmd::List { cluster, pending } => {
            let c = match client("txn list", &cluster) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match c.list_transactions(pending).await {
                Ok(list) => {
                    if cluster.json {
                        println!(
                            "{}",
                            serde_json::to_string(&list)
                                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
                        );
                    } else if list.is_empty() {
                        println!("no transactions");
                    } else {
                        println!(
                            "{:<40} {:<11} {:<30} REASON",
                            "TXN_ID", "STATE", "PARTICIPANTS"
                        );
                        for t in &list {
                            println!(
                                "{:<40} {:<11} {:<30} {}",
                                t.txn_id,
                                t.state.as_str(),
                                t.participants.join(","),
                                t.reason
                            );
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail("txn list", cluster.json, &e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_target("bank-a/alice").unwrap(),
            ("bank-a".into(), "alice".into())
        );
        assert_eq!(parse_target("b/x/y").unwrap(), ("b".into(), "x/y".into()));
        let err = parse_target("noslash").unwrap_err().to_string();
        assert!(err.contains("PARTICIPANT/ACCOUNT"), "{err}");
        assert!(parse_target("/alice").is_err());
        assert!(parse_target("bank/").is_err());
        assert!(parse_target("ba nk/alice").is_err());
    }
}
