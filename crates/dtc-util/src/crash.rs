//! What a crash point does when it fires (see [`crate::crash_point!`]).
//!
//! It ends the process at once with `abort()`: no destructor runs, nothing
//! more is answered or written, as with SIGKILL.
//!
//! `FAILPOINTS=<point>=return` (or `1*return`, `20%return`, ...) arms a
//! point when the process starts. `DTC_FAILPOINT_TXN=<prefix>` narrows the
//! points that concern one transaction to ids starting with the prefix, so
//! a test crashes on its own transaction and not on others.

/// Whether a point that concerns `txn_id` applies to it.
pub fn armed_for(txn_id: &str) -> bool {
    static PREFIX: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    PREFIX
        .get_or_init(|| std::env::var("DTC_FAILPOINT_TXN").ok())
        .as_deref()
        .is_none_or(|p| txn_id.starts_with(p))
}

/// Ends the process at once, saying which point fired (on stderr, the log).
pub fn crash(point: &str) -> ! {
    eprintln!("failpoint {point}: crashing the process (abort)");
    std::process::abort()
}
