//! Buys `count` widgets for `price` each in one atomic transaction of two
//! branches: the inventory participant (examples/inventory.rs of
//! dtc-participant) gives the widgets, and ledger `bank-a` moves the money
//! from the buyer to the shop. Both happen, or neither does.
//!
//! ```text
//! DTC_COORDINATORS=127.0.0.1:7001 cargo run -p dtc-client --example buy -- alice 2 5
//! ```
use dtc_client::{Client, TxnOutcome};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let buyer = args.next().unwrap_or_else(|| "alice".into());
    let count: i64 = args.next().unwrap_or_else(|| "1".into()).parse()?;
    let price: i64 = args.next().unwrap_or_else(|| "5".into()).parse()?;

    let client = Client::from_env()?; // DTC_COORDINATORS=HOST:PORT,...
    let outcome = client
        .transaction()
        .branch("inventory", format!("widget:-{count}"))
        .branch(
            "bank-a",
            dtc_ledger::payload(&[(&buyer, -count * price), ("shop", count * price)]),
        )
        .execute()
        .await?;
    match outcome {
        TxnOutcome::Committed { txn_id } => {
            println!("bought {count} widget(s) for {buyer} ({txn_id})");
            Ok(ExitCode::SUCCESS)
        }
        TxnOutcome::Aborted { txn_id, reason } => {
            println!("not bought ({txn_id}): {reason}");
            Ok(ExitCode::from(1))
        }
    }
}
