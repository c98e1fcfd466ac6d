//! # dtc-util: one home for the helpers every dtc crate shares
//!
//! Nothing here knows about transactions. Each item used to be written
//! again in the crate that needed it; they live here so that a fix reaches
//! every user:
//!
//! - [`endpoint_uri`]: `host:port` as the `http://` URI tonic dials.
//! - [`wall_ms`]: the wall clock in milliseconds, for display, retention and
//!   ages. Never used to order events or to decide an outcome.
//! - [`backoff`]: the exponential back-off with jitter every retry loop uses
//!   (built on `backon`).
//! - [`disk::Reserve`]: refuse new work while a data directory's disk is
//!   nearly full, so that what was accepted can still be written.
//! - [`fs::create_atomically`]: a file that appears whole or not at all
//!   (write a temporary file, sync, rename, sync the directory).
//! - [`from_redb!`]: folds redb's per-operation error types into one
//!   variant of a crate's error type.
//! - [`shutdown_signal`]: Ctrl-C or SIGTERM, what every server waits for.
//! - [`blocking::spawn`]: blocking work off the async workers (inline on a
//!   thread of the deterministic simulation).
//! - [`crash_point!`] and [`crash`]: the crash points of the failover tests;
//!   empty unless the `fail/failpoints` feature is on.

pub mod blocking;
pub mod crash;
pub mod disk;
pub mod fs;

use std::time::Duration;

#[doc(hidden)]
pub use fail;

/// `host:port` becomes `http://host:port`; an address that already names a
/// scheme (`http://`, `https://`) is kept as it is.
pub fn endpoint_uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
///
/// For timestamps shown to people, retention and ages only: nodes' clocks
/// need not agree, so nothing that must be the same on every node reads it.
///
/// On a thread that set one with [`set_wall_clock_on_this_thread`] (the
/// deterministic simulation: every host's simulated clock), that clock.
pub fn wall_ms() -> u64 {
    if let Some(clock) = WALL_CLOCK.with(std::cell::Cell::get) {
        return clock();
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

thread_local! {
    static WALL_CLOCK: std::cell::Cell<Option<fn() -> u64>> = const { std::cell::Cell::new(None) };
}

/// From now on, [`wall_ms`] on this thread reads `clock` (`None`: the
/// system clock again).
pub fn set_wall_clock_on_this_thread(clock: Option<fn() -> u64>) {
    WALL_CLOCK.with(|c| c.set(clock));
}

/// Delays for a retry loop: from `min`, doubling with jitter, at most `max`,
/// without end (the caller's deadline or cancellation stops the loop).
pub fn backoff(min: Duration, max: Duration) -> impl Iterator<Item = Duration> + Send {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max.max(min))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Implements `From<E>` for the error type `$error` for every error type
/// redb returns, folding each into `redb::Error` and handing it to `$wrap`
/// (a variant constructor or a function taking `redb::Error`).
///
/// ```ignore
/// dtc_util::from_redb!(StoreError, StoreError::Redb);
/// ```
///
/// The calling crate must depend on `redb`.
#[macro_export]
macro_rules! from_redb {
    ($error:ty, $wrap:expr) => {
        $crate::from_redb!(@each $error, $wrap;
            redb::DatabaseError,
            redb::TransactionError,
            redb::TableError,
            redb::StorageError,
            redb::CommitError,
            redb::SetDurabilityError,
            redb::CompactionError,
        );
    };
    (@each $error:ty, $wrap:expr; $($t:ty),* $(,)?) => {$(
        impl From<$t> for $error {
            fn from(e: $t) -> Self {
                ($wrap)(redb::Error::from(e))
            }
        }
    )*};
}

/// A crash point for the failover tests: `crash_point!("name")`, or
/// `crash_point!("name", txn = id)` for a point that fires only for
/// transactions whose id starts with `$DTC_FAILPOINT_TXN` (when set).
///
/// Armed with `FAILPOINTS=name=return` at process start (see
/// docs/testing.md), it ends the process at once with [`crash::crash`].
/// Without the `fail/failpoints` feature it expands to nothing.
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {
        $crate::fail::fail_point!($name, |_| $crate::crash::crash($name))
    };
    ($name:literal, txn = $txn:expr) => {
        $crate::fail::fail_point!($name, $crate::crash::armed_for($txn), |_| {
            $crate::crash::crash($name)
        })
    };
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM (what `docker stop`, systemd and
/// Kubernetes send).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = ctrl_c.await;
        return;
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_without_a_scheme_gets_http_and_a_url_is_kept() {
        assert_eq!(endpoint_uri("127.0.0.1:7001"), "http://127.0.0.1:7001");
        assert_eq!(endpoint_uri("https://a:1"), "https://a:1");
    }

    #[test]
    fn backoff_starts_near_min_grows_and_stays_under_max() {
        let min = Duration::from_millis(10);
        let max = Duration::from_millis(80);
        let delays: Vec<_> = backoff(min, max).take(12).collect();
        assert_eq!(delays.len(), 12, "the back-off never ends by itself");
        assert!(delays[0] >= min && delays[0] <= min * 2, "{delays:?}");
        // Jitter adds at most the delay itself on top of the cap.
        assert!(delays.iter().all(|d| *d <= max * 2), "{delays:?}");
        assert!(delays[11] >= max, "it reaches the cap: {delays:?}");
    }
}
