//! Running the real `dtc` binary from the end-to-end tests: bounded, with
//! its output captured. A run that does not finish in time gets SIGTERM (so
//! it can stop its own children), then SIGKILL, and the test fails.

// Each test crate uses part of this module.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const DTC: &str = env!("CARGO_BIN_EXE_dtc");

pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
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

/// Runs `dtc SUBCOMMAND ARGS` (without `DTC_COORDINATORS` from the
/// environment), at most `within`.
pub fn run_dtc(subcommand: &str, args: &[&str], within: Duration) -> Run {
    let mut child = Command::new(DTC)
        .arg(subcommand)
        .args(args)
        .env_remove("DTC_COORDINATORS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {DTC}: {e}"));
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            terminate(&mut child);
            let stderr = err.join().unwrap_or_default();
            panic!("dtc {subcommand} {args:?} did not finish within {within:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}
