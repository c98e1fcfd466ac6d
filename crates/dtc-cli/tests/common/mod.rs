//! Running the real `dtc` binary from the end-to-end tests: bounded, with
//! its output captured (dtc-harness's `run_bounded`).

// Each test crate uses part of this module.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

pub const DTC: &str = env!("CARGO_BIN_EXE_dtc");

pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `dtc SUBCOMMAND ARGS` (without `DTC_COORDINATORS` from the
/// environment), at most `within` (then SIGTERM, so it can stop its own
/// children, SIGKILL after 15 s, and the test fails).
pub fn run_dtc(subcommand: &str, args: &[&str], within: Duration) -> Run {
    let mut cmd = Command::new(DTC);
    cmd.arg(subcommand)
        .args(args)
        .env_remove("DTC_COORDINATORS");
    match dtc_harness::process::run_bounded(cmd, within) {
        Ok(f) => Run {
            status: f.status,
            stdout: f.stdout,
            stderr: f.stderr,
        },
        Err(e) => panic!("dtc {subcommand}: {e:#}"),
    }
}

/// Sends SIGTERM to `child` (through kill(1): no libc here) and waits up to
/// 15 s for it to stop its own children and exit; SIGKILL after that.
pub fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Reads a pipe to its end on a thread of its own.
pub fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Polls `check` until it returns Some, at most `within` (dtc-harness's
/// `wait::poll`); panics naming `what` after that.
pub async fn wait_for<T, Fut: std::future::Future<Output = Option<T>>>(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> Fut,
) -> T {
    let every = Duration::from_millis(50);
    match dtc_harness::wait::poll(within, every, async || check().await).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {within:?} waiting for {what}"),
    }
}
