//! Restocks the inventory (examples/inventory.rs of dtc-participant) with
//! a transaction id of its own, retried while its outcome is unknown.
//!
//! `execute` already retries across coordinator failovers until its
//! deadline. When even that passes (the whole cluster down for a while),
//! the outcome is unknown: the restock may or may not have committed. Sending
//! it again with the SAME id is safe: the cluster runs a transaction id at
//! most once and answers a repeat with the recorded outcome. A new id could
//! restock twice.
//!
//! ```text
//! DTC_COORDINATORS=127.0.0.1:7001 cargo run -p dtc-client --example restock -- delivery-42 10
//! ```
use dtc_client::{Client, TxnOutcome};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let delivery = args.next().unwrap_or_else(|| "delivery-1".into()); // the idempotency key
    let count: i64 = args.next().unwrap_or_else(|| "10".into()).parse()?;
    let client = Client::from_env()?;

    let mut attempt = 1;
    loop {
        let result = client
            .transaction()
            .id(&delivery)
            .branch("inventory", format!("widget:{count}"))
            .execute()
            .await;
        match result {
            Ok(TxnOutcome::Committed { txn_id }) => {
                println!("restocked {count} widgets ({txn_id})");
                return Ok(());
            }
            Ok(TxnOutcome::Aborted { reason, .. }) => return Err(reason.into()),
            Err(e) if e.is_outcome_unknown() && attempt < 5 => {
                eprintln!(
                    "attempt {attempt}: outcome unknown ({e}); asking again with the same id"
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
