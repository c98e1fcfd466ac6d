//! Client commands: `deposit`, `transfer`, `balance`, and the `txn`
//! commands `show`, `list`, `retry`, `resolve` (the last two, and the live
//! views of `show` and `list --pending|--in-doubt`, through the
//! coordinators' `CoordinatorAdmin` service).
//!
//! Exit codes: 0 committed / ok; 1 aborted (or, for the `txn` commands, not
//! found); 2 usage error (a malformed P/ACCOUNT or txn id, a non-positive
//! amount, an empty reason, a request the cluster refuses: one line on
//! stderr; `txn resolve` of a decided transaction names the decision);
//! 3 unavailable, or the outcome is unknown (the message names the txn id to
//! retry with); 4 `txn retry` sent the calls but phase 2 still waits.

use dtc_client::proto as pb;
use dtc_client::{Client, ClientError, TransactionDetail, TxnOutcome, TxnStatus};
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
    #[command(flatten)]
    tls: crate::tls::TlsArgs,
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
    /// One transaction: its state, age, and each participant's vote,
    /// acknowledgement, attempts and last error (live from the leader's
    /// driver; from the replicated record alone when no driver runs it).
    Show {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Transaction id.
        txn_id: String,
    },
    /// Transactions the cluster knows, ordered by id; with --pending or
    /// --in-doubt, with their age and the participants not answering.
    List {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Only undecided or not fully acknowledged ones.
        #[arg(long, conflicts_with = "in_doubt")]
        pending: bool,
        /// Only pending ones that have waited on a participant's vote or
        /// acknowledgement for at least --older-than in their current phase
        /// (since they began while undecided, since the decision after).
        #[arg(long)]
        in_doubt: bool,
        /// With --in-doubt: how long a transaction must have waited.
        #[arg(
            long,
            value_name = "SECS",
            default_value_t = 5.0,
            requires = "in_doubt"
        )]
        older_than: f64,
    },
    /// Send every call a transaction waits on now (its decision to the
    /// participants that have not acknowledged, or its prepares), skipping
    /// the back-off, and wait a little for the answers. Safe to repeat.
    /// Exit 0 once phase 2 is over, 4 while it still waits.
    Retry {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Transaction id.
        txn_id: String,
        /// How long to wait for the answers (at most 30000).
        #[arg(long, value_name = "MS", default_value_t = 3000)]
        wait_ms: u64,
    },
    /// Abort a transaction that has no decision yet (a participant hangs and
    /// its prepare timeout is long). Recorded through Raft with the reason
    /// and who asked; refused once the transaction is decided. Safe only
    /// when aborting is acceptable to the application: see
    /// docs/operations.md, "Stuck transactions".
    Resolve {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Transaction id.
        txn_id: String,
        /// Abort it (the only resolution: a commit needs every vote).
        #[arg(long, required = true)]
        abort: bool,
        /// Why; recorded in the abort reason on every node.
        #[arg(long, value_name = "TEXT")]
        reason: String,
        /// Who asks (default: $USER). The coordinator adds your address.
        #[arg(long, value_name = "NAME")]
        by: Option<String>,
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
    let tls = args.tls.load().map_err(|e| usage(cmd, e))?;
    let config = dtc_client::ClientConfig {
        tls,
        ..Default::default()
    };
    Client::with_config(args.coordinators.clone(), config).map_err(|e| usage(cmd, e))
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

/// Milliseconds as an operator reads them: `850 ms`, `12.3 s`, `4 min 10 s`.
fn human_ms(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms} ms"),
        1000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

fn vote_str(v: i32) -> &'static str {
    match pb::SeenVote::try_from(v) {
        Ok(pb::SeenVote::Prepared) => "prepared",
        Ok(pb::SeenVote::ReadOnly) => "read-only",
        Ok(pb::SeenVote::Abort) => "abort",
        Ok(pb::SeenVote::Failed) => "failed",
        _ => "-",
    }
}

fn ack_str(v: i32) -> &'static str {
    match pb::AckState::try_from(v) {
        Ok(pb::AckState::Awaiting) => "awaiting",
        Ok(pb::AckState::Acknowledged) => "acknowledged",
        Ok(pb::AckState::NotOwed) => "not owed",
        Ok(pb::AckState::Settled) => "settled",
        _ => "undecided",
    }
}

/// `txn show`'s JSON: the record's fields as before, plus the live view.
fn detail_json(d: &TransactionDetail) -> serde_json::Value {
    let info = TxnStatus::from(d.info.clone().unwrap_or_default());
    let mut v = serde_json::to_value(&info).unwrap_or_else(|e| json!({ "error": e.to_string() }));
    v["live"] = json!(d.live);
    v["age_ms"] = json!(d.age_ms);
    v["waiting_ms"] = json!(d.waiting_ms);
    v["waiting_for"] = json!(d.waiting_for);
    v["branches"] = d
        .branches
        .iter()
        .map(|b| {
            json!({
                "participant": b.participant,
                "vote": vote_str(b.vote),
                "vote_reason": b.vote_reason,
                "ack": ack_str(b.ack),
                "prepare_attempts": b.prepare_attempts,
                "decision_attempts": b.decision_attempts,
                "last_error": b.last_error,
                "next_attempt_in_ms": b.next_attempt_in_ms,
            })
        })
        .collect();
    v
}

fn print_detail_text(d: &TransactionDetail) {
    let mut t = TxnStatus::from(d.info.clone().unwrap_or_default());
    // The record's list is the decision's, complete until every
    // acknowledgement is in; "waiting" below says who still owes one.
    t.awaiting_ack.clear();
    print_txn_text(&t);
    println!("age:           {}", human_ms(d.age_ms));
    if !d.waiting_for.is_empty() {
        let what = if t.state == dtc_client::TxnState::Preparing {
            "the vote of"
        } else {
            "the acknowledgement of"
        };
        println!(
            "waiting:       {} for {what} {}",
            human_ms(d.waiting_ms),
            d.waiting_for.join(", ")
        );
    }
    if d.live {
        println!("driver:        running on the leader");
    } else {
        println!("driver:        none (from the record: votes and attempts are not replicated)");
    }
    println!(
        "{:<20} {:<10} {:<13} {:>8} {:>9} {:>10}  LAST ERROR",
        "PARTICIPANT", "VOTE", "ACK", "PREPARES", "DECISIONS", "NEXT TRY"
    );
    for b in &d.branches {
        let vote = if b.vote_reason.is_empty() {
            vote_str(b.vote).to_string()
        } else {
            format!("{} ({})", vote_str(b.vote), b.vote_reason)
        };
        let next = if b.next_attempt_in_ms > 0 {
            format!("in {}", human_ms(b.next_attempt_in_ms))
        } else {
            "-".into()
        };
        println!(
            "{:<20} {:<10} {:<13} {:>8} {:>9} {:>10}  {}",
            b.participant,
            vote,
            ack_str(b.ack),
            b.prepare_attempts,
            b.decision_attempts,
            next,
            b.last_error
        );
    }
}

/// The operator's name for `txn resolve` when --by is not given.
fn os_user() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.trim().is_empty()))
        .unwrap_or_default()
}

pub async fn txn(cmd: TxnCmd) -> ExitCode {
    match cmd {
        TxnCmd::Show { cluster, txn_id } => {
            let c = match client("txn show", &cluster) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match c.show_transaction(&txn_id).await {
                Ok(d) => {
                    if cluster.json {
                        println!("{}", detail_json(&d));
                    } else {
                        print_detail_text(&d);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail("txn show", cluster.json, &e),
            }
        }
        TxnCmd::List {
            cluster,
            pending,
            in_doubt,
            older_than,
        } => {
            let cmd = "txn list";
            let c = match client(cmd, &cluster) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if pending || in_doubt {
                let min = if in_doubt {
                    match Duration::try_from_secs_f64(older_than) {
                        Ok(d) => Some(d),
                        Err(_) => {
                            return usage(
                                cmd,
                                format!(
                                    "--older-than {older_than} is not a number of seconds >= 0"
                                ),
                            );
                        }
                    }
                } else {
                    None
                };
                return match c.list_stuck_transactions(min).await {
                    Ok(list) => {
                        print_stuck(cluster.json, &list);
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(cmd, cluster.json, &e),
                };
            }
            match c.list_transactions(false).await {
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
                Err(e) => fail(cmd, cluster.json, &e),
            }
        }
        TxnCmd::Retry {
            cluster,
            txn_id,
            wait_ms,
        } => {
            let cmd = "txn retry";
            if wait_ms > 30_000 {
                return usage(
                    cmd,
                    format!("--wait-ms {wait_ms} is over the maximum of 30000"),
                );
            }
            let c = match client(cmd, &cluster) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match c
                .retry_transaction(&txn_id, Duration::from_millis(wait_ms))
                .await
            {
                Ok(r) => {
                    if cluster.json {
                        let mut v = r.detail.as_ref().map(detail_json).unwrap_or_default();
                        v["message"] = json!(r.message);
                        v["finished"] = json!(r.finished);
                        println!("{v}");
                    } else {
                        println!("{txn_id}: {}", r.message);
                    }
                    if r.finished {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(4)
                    }
                }
                Err(e) => fail(cmd, cluster.json, &e),
            }
        }
        TxnCmd::Resolve {
            cluster,
            txn_id,
            abort,
            reason,
            by,
        } => {
            let cmd = "txn resolve";
            if !abort {
                return usage(cmd, "--abort is required (the only resolution)");
            }
            let c = match client(cmd, &cluster) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let by = by.unwrap_or_else(os_user);
            match c.resolve_abort(&txn_id, &reason, &by).await {
                Ok(r) => {
                    if cluster.json {
                        let mut v = r.detail.as_ref().map(detail_json).unwrap_or_default();
                        v["recorded_reason"] = json!(r.recorded_reason);
                        v["already_resolved"] = json!(r.already_resolved);
                        println!("{v}");
                    } else if r.already_resolved {
                        println!(
                            "{txn_id} was already resolved this way: {}",
                            r.recorded_reason
                        );
                    } else {
                        println!(
                            "{txn_id}: {}; the participants are being told (dtc txn show {txn_id})",
                            r.recorded_reason
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(cmd, cluster.json, &e),
            }
        }
    }
}

fn print_stuck(json_out: bool, list: &[TransactionDetail]) {
    if json_out {
        let v: Vec<serde_json::Value> = list.iter().map(detail_json).collect();
        println!("{}", serde_json::Value::Array(v));
        return;
    }
    if list.is_empty() {
        println!("no transactions");
        return;
    }
    println!(
        "{:<40} {:<11} {:>12} {:>12}  {:<30} REASON",
        "TXN_ID", "STATE", "AGE", "WAITING", "NOT ANSWERED"
    );
    for d in list {
        let t = TxnStatus::from(d.info.clone().unwrap_or_default());
        println!(
            "{:<40} {:<11} {:>12} {:>12}  {:<30} {}",
            t.txn_id,
            t.state.as_str(),
            human_ms(d.age_ms),
            human_ms(d.waiting_ms),
            d.waiting_for.join(","),
            t.reason
        );
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
