//! One `dtc` child process: started with fixed arguments, its stdout and
//! stderr appended to a log file, SIGKILLed, paused, and started again with
//! the same arguments (same port, same data directory).
//!
//! The log gets a `=== harness:` line for every start, kill, pause and
//! resume, so a reader of one file sees what was done to the process.

use anyhow::{Context, Result, bail};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

/// One child process and how to start it again.
pub struct Process {
    /// `node-1`, `bank-a`, ...: for messages and the log lines.
    name: String,
    exe: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    /// Working directory (core dumps of crash points land there).
    cwd: Option<PathBuf>,
    /// `DTC_LOG` for the child unless the caller's environment sets one.
    log_filter: String,
    /// Environment for the next start only (e.g. `FAILPOINTS`): a restarted
    /// process runs without it unless it is set again.
    next_env: Vec<(String, String)>,
    child: Option<Child>,
    starts: u32,
    paused: bool,
}

impl Process {
    /// A process that is not started yet ([`Process::start`]).
    pub fn new(name: &str, exe: &Path, args: Vec<String>, log: PathBuf) -> Process {
        // A relative path (`DTC_BIN=target/release/dtc`) names a file from
        // here, not from the child's working directory.
        let exe = match exe.components().count() {
            0 | 1 => exe.to_path_buf(),
            _ => std::path::absolute(exe).unwrap_or_else(|_| exe.to_path_buf()),
        };
        Process {
            name: name.to_string(),
            exe,
            args,
            log,
            cwd: None,
            log_filter: "info".into(),
            next_env: Vec::new(),
            child: None,
            starts: 0,
            paused: false,
        }
    }

    /// Runs it in `dir`.
    pub fn current_dir(mut self, dir: &Path) -> Process {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    /// The `DTC_LOG` filter when the caller's environment has none.
    pub fn log_filter(mut self, filter: &str) -> Process {
        self.log_filter = filter.to_string();
        self
    }

    /// Environment for the next start only.
    pub fn set_next_start_env(&mut self, env: &[(&str, &str)]) {
        self.next_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds arguments for every later start (the harness learns some, such
    /// as proxy addresses, only after laying a process out).
    pub fn extend_args(&mut self, more: impl IntoIterator<Item = String>) {
        self.args.extend(more);
    }

    pub fn args(&self) -> &[String] {
        &self.args
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// How many times it was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Started and neither killed nor seen to exit.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts it (again). Err if it runs, or cannot be started.
    pub fn start(&mut self) -> Result<()> {
        let name = &self.name;
        if self.child.is_some() {
            bail!("{name} is already running");
        }
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let env = std::mem::take(&mut self.next_env);
        let _ = writeln!(
            log,
            "=== harness: start #{} of {name}: {} {}",
            self.starts,
            self.exe.display(),
            self.args.join(" ")
        );
        if !env.is_empty() {
            let _ = writeln!(log, "=== harness: with environment {env:?}");
        }
        let err = log.try_clone()?;
        let filter = std::env::var("DTC_LOG").unwrap_or_else(|_| self.log_filter.clone());
        let mut cmd = Command::new(&self.exe);
        // In a process group of its own, so a Ctrl-C at the terminal reaches
        // only the supervisor, which then stops every child itself.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        let child = cmd
            .args(&self.args)
            .env("DTC_LOG", filter)
            // No injected faults unless asked for (next_env).
            .env_remove("FAILPOINTS")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("cannot start {} {name}", self.exe.display()))?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// SIGKILLs and reaps it; None if it was not running.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        let status = child.wait().ok();
        self.paused = false;
        if let Some(s) = status {
            self.note(&format!("killed (SIGKILL): {s}"));
        }
        status
    }

    /// SIGSTOP: it keeps its sockets and state but does nothing (a long GC
    /// pause, a VM freeze) until [`Process::resume`].
    pub fn pause(&mut self) -> Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.name))?;
        signal(pid, nix::sys::signal::Signal::SIGSTOP)?;
        self.paused = true;
        self.note("paused (SIGSTOP)");
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self) -> Result<()> {
        if let Some(pid) = self.pid() {
            signal(pid, nix::sys::signal::Signal::SIGCONT)?;
        }
        self.paused = false;
        self.note("resumed (SIGCONT)");
        Ok(())
    }

    /// Its exit status if it exited by itself (a crash, a refused start);
    /// it counts as stopped afterwards.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        self.paused = false;
        self.note(&format!("exited by itself: {status}"));
        Some(status)
    }

    /// Err naming the process, its exit status and the end of its log if it
    /// exited by itself.
    pub fn check(&mut self) -> Result<()> {
        match self.try_exit() {
            None => Ok(()),
            Some(status) => bail!(
                "{} exited by itself ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                indent(&tail(&self.log, 15))
            ),
        }
    }

    /// A `=== harness:` line in its log.
    pub fn note(&self, what: &str) {
        let _ = OpenOptions::new()
            .append(true)
            .open(&self.log)
            .and_then(|mut f| writeln!(f, "=== harness: {} {what}", self.name));
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends `sig` to process `pid`.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) -> Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
    nix::sys::signal::kill(pid, sig).with_context(|| format!("cannot send {sig} to {pid}"))
}

/// The last `n` lines of a file (empty if unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    tail_where(path, n, |_| true)
}

/// Like [`tail`], leaving out openraft's INFO and DEBUG chatter (kept in the
/// file).
pub fn tail_filtered(path: &Path, n: usize) -> String {
    tail_where(path, n, |l| {
        !(l.contains(" INFO openraft") || l.contains(" DEBUG openraft"))
    })
}

fn tail_where(path: &Path, n: usize, keep: impl Fn(&str) -> bool) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| keep(l)).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Every line of `text` indented by four spaces.
pub fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a command run to its end printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to its end with stdout and stderr captured, at most `within`.
/// A command still running then gets SIGTERM (so it can stop children of
/// its own), SIGKILL 15 s later, and the result is Err with its stderr.
pub fn run_bounded(mut cmd: Command, within: std::time::Duration) -> Result<Finished> {
    use std::time::{Duration, Instant};
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let deadline = Instant::now() + within;
    let mut terminated: Option<Instant> = None;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let now = Instant::now();
        match terminated {
            None if now >= deadline => {
                let _ = signal(child.id(), nix::sys::signal::Signal::SIGTERM);
                terminated = Some(now);
            }
            Some(t) if now >= t + Duration::from_secs(15) => {
                let _ = child.kill();
                let _ = child.wait();
                break child.wait()?;
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if terminated.is_some() {
        bail!(
            "{:?} {:?} did not finish within {within:?}; stdout:\n{stdout}\nstderr:\n{stderr}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>()
        );
    }
    Ok(Finished {
        status,
        stdout,
        stderr,
    })
}
