//! Waiting on a condition: polled every few milliseconds, each poll bounded
//! by the time left, the whole wait bounded by a deadline. Nothing here or
//! in its users synchronises on a fixed sleep.

use anyhow::{Result, bail};
use std::fmt::Debug;
use std::time::{Duration, Instant};

/// One look at a condition.
pub enum Check<T> {
    /// There: the wait returns it.
    Ready(T),
    /// Not yet, and why (the timeout's message quotes the last reason).
    NotYet(String),
    /// It never will be (a process died): the wait ends at once.
    Failed(anyhow::Error),
}

impl<T> From<Option<T>> for Check<T> {
    fn from(o: Option<T>) -> Self {
        o.map_or_else(|| Check::NotYet("not yet".into()), Check::Ready)
    }
}

impl<T, E: Debug> From<Result<T, E>> for Check<T> {
    fn from(r: Result<T, E>) -> Self {
        r.map_or_else(|e| Check::NotYet(format!("{e:?}")), Check::Ready)
    }
}

/// Looks at `check` every `every` until it is [`Check::Ready`]; Err when
/// it [`Check::Failed`] or after `within`.
pub async fn poll<T, C: Into<Check<T>>>(
    within: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> C,
) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let last = match tokio::time::timeout(left, check()).await {
            Ok(c) => match c.into() {
                Check::Ready(v) => return Ok(v),
                Check::NotYet(why) => why,
                Check::Failed(e) => return Err(e),
            },
            Err(_) => "the check itself did not finish in time".to_string(),
        };
        if Instant::now() >= deadline {
            bail!("timed out after {within:?}; last observation: {last}");
        }
        tokio::time::sleep(every.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_fails_fast_and_times_out() {
        let ms = Duration::from_millis;
        let mut n = 0;
        let got = poll(ms(2000), ms(1), async || {
            n += 1;
            (n >= 3).then_some(n)
        })
        .await;
        assert_eq!(got.unwrap(), 3);
        let failed = poll(ms(2000), ms(1), async || -> Check<()> {
            Check::Failed(anyhow::anyhow!("node 1 exited"))
        })
        .await;
        assert_eq!(failed.unwrap_err().to_string(), "node 1 exited");
        let late = poll(ms(30), ms(5), async || Err::<(), _>("still 2 pending")).await;
        let e = late.unwrap_err().to_string();
        assert!(
            e.contains("timed out after 30ms") && e.contains("still 2 pending"),
            "{e}"
        );
    }
}
