//! Dropping completed outcomes after the retention window: the leader
//! proposes `ExpireAtMost` now and then.
//!
//! Uses [`super::shared`].

use super::shared::Shared;
use dtc_core::{Command, CommandResult};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Most completed outcomes one `ExpireAtMost` entry drops (each costs two
/// index removals in the apply's write transaction).
const EXPIRE_SLICE: u32 = 4096;

/// Periodically proposes `Expire` on the leader, so completed outcomes leave
/// the state after the retention window.
pub async fn expire_outcomes(shared: Arc<Shared>) {
    let retention = shared.config.outcome_retention;
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    // The wall clock read once, then advanced by the monotonic clock: a jump
    // of this machine's clock while it runs (a forward jump would expire
    // outcomes early and shorten the window in which a same-id retry is
    // answered) does not move the expiry (docs/design.md, "Clocks").
    let anchor = (dtc_util::wall_ms(), tokio::time::Instant::now());
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !shared.is_ready_leader() {
            continue;
        }
        // In slices: a backlog (after an outage, or a shorter retention)
        // must not become one huge write that stalls every apply behind it.
        let now_ms = anchor.0 + anchor.1.elapsed().as_millis() as u64;
        let mut total = 0u64;
        loop {
            let cmd = Command::ExpireAtMost {
                now_ms,
                retention_ms: retention.as_millis() as u64,
                limit: EXPIRE_SLICE,
            };
            match shared.propose(cmd).await {
                Ok(CommandResult::Expired { count }) => {
                    total += count;
                    if count < u64::from(EXPIRE_SLICE) {
                        break;
                    }
                }
                Ok(other) => {
                    warn!("expire: unexpected result {other:?}");
                    break;
                }
                Err(e) => {
                    warn!("expire: {e}");
                    break;
                }
            }
        }
        if total > 0 {
            info!(
                count = total,
                "expired completed outcomes past the retention window"
            );
        }
    }
}
