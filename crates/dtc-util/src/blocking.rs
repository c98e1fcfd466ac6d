//! Blocking work (a redb commit, a scan) from async code: on tokio's
//! blocking pool, or, on a thread that asked for it, inline.
//!
//! The deterministic simulation (`crates/dtc-sim`) runs every node of a
//! cluster on one thread under simulated time. A job on the blocking pool
//! would finish on another thread at a moment the simulation does not
//! control (two jobs racing each other wake their tasks in either order),
//! so a seed would not replay exactly; the simulated disks are memory, so
//! running the job inline costs nothing there. Everywhere else nothing
//! changes: a thread runs jobs inline only after [`run_inline_on_this_thread`].

use std::cell::Cell;

thread_local! {
    static INLINE: Cell<bool> = const { Cell::new(false) };
}

/// From now on, [`spawn`] called on this thread runs its job inline (`true`)
/// or on the blocking pool (`false`, the default).
pub fn run_inline_on_this_thread(inline: bool) {
    INLINE.with(|i| i.set(inline));
}

/// Whether this thread runs blocking work inline (see
/// [`run_inline_on_this_thread`]). Code that hands work to a thread of its
/// own (the participant's writer) waits for it right away when this holds.
pub fn is_inline() -> bool {
    INLINE.with(Cell::get)
}

/// A blocking job that did not return: it panicked (or its task was
/// cancelled at runtime shutdown).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BlockingError(String);

/// Runs `job` off the async workers (`tokio::task::spawn_blocking`) and
/// waits for it; if the awaiting future is dropped the job still runs to
/// completion. Inline on a thread that asked for it
/// ([`run_inline_on_this_thread`]).
pub async fn spawn<T, F>(job: F) -> Result<T, BlockingError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if is_inline() {
        return std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).map_err(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            BlockingError(format!("blocking job panicked: {what}"))
        });
    }
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| BlockingError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn inline_jobs_run_on_the_calling_thread_and_pool_jobs_do_not() {
        let here = std::thread::current().id();
        let there = spawn(|| std::thread::current().id()).await.unwrap();
        assert_ne!(there, here);
        run_inline_on_this_thread(true);
        let inline = spawn(|| std::thread::current().id()).await.unwrap();
        run_inline_on_this_thread(false);
        assert_eq!(inline, here);
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_inline_and_on_the_pool() {
        let e = spawn(|| -> u8 { panic!("boom") }).await.unwrap_err();
        assert!(e.to_string().contains("panic"), "{e}");
        run_inline_on_this_thread(true);
        let e = spawn(|| -> u8 { panic!("boom") }).await.unwrap_err();
        run_inline_on_this_thread(false);
        assert!(e.to_string().contains("boom"), "{e}");
    }
}
