//! `dtc up`: the demo's local cluster (3 coordinators, ledgers bank-a and
//! bank-b with seeded accounts), left running until Ctrl-C / SIGTERM. Prints
//! the addresses and commands to try on stdout.

use crate::cluster::{ClusterSpec, LEDGERS, LocalCluster, account};
use dtc_client::Client;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// `dtc up`'s flags.
#[derive(clap::Args, Debug, Clone)]
pub struct UpOptions {
    /// Accounts per ledger (acct-00, acct-01, ...).
    #[arg(long, default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub accounts: u64,
    /// Opening balance of every account.
    #[arg(long, default_value_t = 1000,
          value_parser = clap::value_parser!(i64).range(1..=1_000_000_000_000))]
    pub initial_balance: i64,
    /// Keep the data and logs after stopping.
    #[arg(long)]
    pub keep: bool,
}

async fn start(cluster: &mut LocalCluster, args: &UpOptions) -> anyhow::Result<u64> {
    let client = Client::connect(cluster.coordinator_addrs())?;
    let leader = cluster.wait_ready(&client, Duration::from_secs(60)).await?;
    cluster
        .seed(
            &client,
            args.accounts as usize,
            args.initial_balance,
            &crate::history::History::new(std::time::Instant::now()),
        )
        .await?;
    Ok(leader.id)
}

/// `dtc up`: runs until `shutdown`.
pub async fn run(args: &UpOptions, shutdown: impl std::future::Future<Output = ()>) -> ExitCode {
    let started = Instant::now();
    // The ledgers' default: a contended debit votes abort at once.
    let mut cluster = match ClusterSpec::local("dtc-up-").and_then(|s| LocalCluster::start(&s)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dtc up: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if args.keep {
        cluster.keep();
    }
    let dir = cluster.root().display().to_string();
    eprintln!(
        "dtc up: starting 3 coordinators and ledgers {} in {dir}",
        LEDGERS.join(", ")
    );
    tokio::pin!(shutdown);
    let leader = tokio::select! {
        r = start(&mut cluster, args) => r,
        _ = &mut shutdown => {
            eprintln!("dtc up: interrupted; every process stopped");
            return ExitCode::from(130);
        }
    };
    let leader = match leader {
        Ok(l) => l,
        Err(e) => {
            cluster.keep();
            eprintln!("dtc up: {e:#}");
            eprintln!("dtc up: data and logs kept in {dir}");
            return ExitCode::FAILURE;
        }
    };

    let me = std::env::args().next().unwrap_or_else(|| "dtc".into());
    let coords = cluster.coordinators_arg();
    let last = account(args.accounts as usize - 1);
    println!(
        "dtc local cluster is up ({:.1} s); data and logs in {dir}",
        started.elapsed().as_secs_f64()
    );
    println!();
    for (id, addr) in &cluster.nodes {
        let role = if *id == leader { "leader" } else { "follower" };
        println!(
            "  {:<16} {:<24} {role}",
            format!("coordinator {id}"),
            addr.to_string()
        );
    }
    for (name, addr) in &cluster.ledgers {
        println!(
            "  {:<16} {:<24} accounts {}..{last}, {} each",
            format!("ledger {name}"),
            format!("http://{addr}"),
            account(0),
            args.initial_balance
        );
    }
    let other = account(1.min(args.accounts as usize - 1));
    println!();
    println!("Try, in another terminal:");
    println!("  export DTC_COORDINATORS={coords}");
    println!("  {me} status --coordinators $DTC_COORDINATORS");
    println!(
        "  {me} transfer --from {}/{} --to {}/{other} --amount 25",
        LEDGERS[0],
        account(0),
        LEDGERS[1]
    );
    println!("  {me} balance {}/{other}", LEDGERS[1]);
    println!(
        "  {me} deposit --to {}/{} --amount 100",
        LEDGERS[0],
        account(0)
    );
    println!("  {me} txn list");
    println!();
    println!(
        "Logs: {dir}/node-{{1,2,3}}.log, {dir}/{{{}}}.log. Ctrl-C stops everything{}.",
        LEDGERS.join(","),
        if args.keep {
            ""
        } else {
            " and removes the directory"
        }
    );

    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if let Err(e) = cluster.check_children() {
                    eprintln!("dtc up: warning: {e:#}");
                }
            }
        }
    }
    drop(cluster);
    eprintln!(
        "dtc up: stopped{}",
        if args.keep {
            format!("; data and logs kept in {dir}")
        } else {
            String::new()
        }
    );
    ExitCode::SUCCESS
}
