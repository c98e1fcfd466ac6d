//! The async runtime openraft runs on: tokio, exactly as
//! `openraft::TokioRuntime`, except for where its random numbers (the
//! randomised election timeouts) come from.
//!
//! By default they come from `rand::thread_rng`, as with `TokioRuntime`. The
//! deterministic simulation runs a whole cluster on one thread and calls
//! [`seed_thread_rng`] there first, so that the same seed draws the same
//! timeouts and a run replays exactly.

use openraft::async_runtime::{AsyncRuntime, TokioOneShotSender};
use openraft::{OptionalSend, TokioInstant, TokioRuntime};
use rand::RngCore;
use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

thread_local! {
    /// The state of this thread's seeded generator (splitmix64), if seeded.
    static SEEDED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// From now on, openraft's random numbers on this thread come from a
/// generator seeded with `seed` (`None`: from `rand::thread_rng` again).
pub fn seed_thread_rng(seed: Option<u64>) {
    SEEDED.with(|s| s.set(seed));
}

/// tokio, with random numbers per [`seed_thread_rng`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DtcRuntime;

/// This thread's generator: seeded, or `rand::thread_rng`.
#[derive(Debug, Default)]
pub struct ThreadRng;

impl RngCore for ThreadRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        let seeded = SEEDED.with(|s| {
            s.get().map(|state| {
                let state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                s.set(Some(state));
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^ (z >> 31)
            })
        });
        seeded.unwrap_or_else(|| rand::thread_rng().next_u64())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl AsyncRuntime for DtcRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = ThreadRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiverError = <TokioRuntime as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        ThreadRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        TokioRuntime::oneshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn a_seeded_thread_draws_the_same_numbers_again_and_an_unseeded_one_does_not() {
        let draw = || -> Vec<u64> {
            let mut r = DtcRuntime::thread_rng();
            (0..8).map(|_| r.gen_range(60..120)).collect()
        };
        seed_thread_rng(Some(7));
        let a = draw();
        seed_thread_rng(Some(7));
        let b = draw();
        seed_thread_rng(None);
        assert_eq!(a, b);
        let unseeded: Vec<Vec<u64>> = (0..4).map(|_| draw()).collect();
        assert!(unseeded.iter().any(|u| *u != a));
    }
}
