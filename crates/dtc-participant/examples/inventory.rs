//! An inventory participant: stock per item, changed by transactions whose
//! branch payload is `item:delta` lines (`widget:-2` takes two widgets,
//! `widget:10` restocks ten). Stock never goes below zero, whichever
//! prepared transactions commit; `dtc query inventory widget` reads it.
//!
//! ```text
//! DTC_COORDINATORS=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 \
//!   cargo run -p dtc-participant --example inventory -- 127.0.0.1:7201 ./inventory-data
//! ```
use dtc_participant::counters::{CounterResource, Counters};
use dtc_participant::{ParticipantServer, open_database};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:7201".into());
    let data_dir = args.next().unwrap_or_else(|| "inventory-data".into());
    let coordinators = std::env::var("DTC_COORDINATORS")?;

    // Decoded once per call; a malformed payload votes abort with this error.
    let stock = CounterResource::new(Counters::new("stock", "stock_reserved"), |payload| {
        let text = std::str::from_utf8(payload).map_err(|e| e.to_string())?;
        text.lines()
            .map(|line| {
                let (item, n) = line
                    .split_once(':')
                    .ok_or(format!("{line:?} is not item:delta"))?;
                Ok((
                    item.to_string(),
                    n.parse().map_err(|_| format!("bad count {n:?}"))?,
                ))
            })
            .collect()
    });

    let db = open_database(data_dir.as_ref())?;
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let running = ParticipantServer::builder("inventory", db, stock)
        .coordinators(coordinators.split(','))
        .require_registration(Duration::from_secs(30)) // fail, saying why, if no coordinator answers
        .start(listener)
        .await?;
    println!("inventory serving on {}", running.local_addr());
    running.serve_until_signal().await?; // Ctrl-C or SIGTERM: finish what is queued, then exit
    Ok(())
}
