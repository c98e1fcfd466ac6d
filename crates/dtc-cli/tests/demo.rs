//! `dtc demo` and `dtc up` end to end: the real binary, its child processes
//! on free loopback ports, bounded waits. A run that does not finish in time
//! gets SIGTERM (the demo then stops its children itself), then SIGKILL.

mod common;

use common::{DTC, Run, drain, run_dtc, terminate};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Runs `dtc demo ARGS`, at most `within`.
fn demo(args: &[&str], within: Duration) -> Run {
    run_dtc("demo", args, within)
}

/// The value column of the summary row `label`.
fn row<'a>(stdout: &'a str, label: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} row in the summary:\n{stdout}"))
        .trim()
}

/// Whether any process still runs with `needle` in its command line (the
/// demo's children carry their data directory there). None without pgrep.
fn leftover_processes(needle: &str) -> Option<bool> {
    let out = Command::new("pgrep").args(["-f", needle]).output().ok()?;
    match out.status.code() {
        Some(0) => Some(true),
        Some(1) => Some(false),
        _ => None,
    }
}

#[test]
fn demo_runs_failovers_and_reports_equal_totals() {
    let run = demo(&["--duration-secs", "6"], Duration::from_secs(120));
    assert!(
        run.status.success(),
        "dtc demo failed ({}):\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    let before = row(&run.stdout, "total balance before");
    let after = row(&run.stdout, "total balance after");
    assert_eq!(after, format!("{before}   (equal)"), "{}", run.stdout);
    assert_eq!(before, "20000", "2 ledgers x 10 accounts x 1000");
    assert!(row(&run.stdout, "agreement (coordinators/ledgers)").ends_with(": 0 mismatches"));
    assert!(run.stdout.contains("\nOK: "), "{}", run.stdout);
    // The progress went to stderr, a line per second (not a terminal), with
    // both kills.
    assert!(run.stderr.contains("SIGKILL leader node"), "{}", run.stderr);
    assert!(
        run.stderr.contains("SIGKILL ledger bank-b"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("| leader node"), "{}", run.stderr);
    assert!(
        !run.stderr.contains('\r'),
        "no carriage returns when stderr is not a terminal"
    );
}

#[test]
fn demo_json_summary_parses_and_every_check_holds() {
    let run = demo(
        &[
            "--json",
            "--duration-secs",
            "6",
            "--clients",
            "4",
            "--accounts",
            "5",
        ],
        Duration::from_secs(120),
    );
    assert!(
        run.status.success(),
        "dtc demo --json failed ({}):\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    let v: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("the summary is not JSON ({e}):\n{}", run.stdout));
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["anomalies"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["totals_equal"], true);
    assert_eq!(v["total_before"], 10 * 1000);
    assert_eq!(v["total_after"], v["total_before"]);
    assert_eq!(v["clients"], 4);
    assert_eq!(v["accounts_per_ledger"], 5);
    let t = &v["transfers"];
    assert!(t["committed"].as_u64().unwrap() > 0, "{v:#}");
    assert_eq!(
        t["committed"].as_u64().unwrap() + t["aborted"].as_u64().unwrap(),
        t["total"].as_u64().unwrap()
    );
    assert_eq!(
        t["overdrafts"], t["overdrafts_aborted"],
        "every overdraft aborted"
    );
    // Contention: the ledgers lock no account (escrow reservations), so no
    // transfer aborts for a busy account, and few for funds that concurrent
    // transfers had reserved (under the old no-wait locks a third aborted).
    assert_eq!(t["aborted_account_busy"], 0, "{v:#}");
    let reserved = t["aborted_funds_reserved"].as_u64().unwrap();
    assert!(
        reserved * 20 <= t["total"].as_u64().unwrap(),
        "over 5% aborted for reserved funds: {v:#}"
    );
    let f = &v["leader_failover"];
    assert_ne!(f["new_leader"], f["killed_node"], "{v:#}");
    assert!(f["election_ms"].as_u64().is_some(), "{v:#}");
    assert!(
        f["rejoined_ms"].as_u64().is_some(),
        "the killed node rejoined: {v:#}"
    );
    assert_eq!(v["ledger_crash"]["ledger"], "bank-b");
    assert_eq!(v["in_doubt"]["resolved"], v["in_doubt"]["after_kills"]);
    assert_eq!(v["agreement"]["mismatches"], 0);
    assert!(v["agreement"]["transactions_checked"].as_u64().unwrap() > 0);
    // Everything is cleaned up: no child left, the directory removed.
    let dir = v["log_dir"].as_str().unwrap();
    assert_eq!(v["log_dir_kept"], false);
    assert!(!std::path::Path::new(dir).exists(), "{dir} was not removed");
    assert_ne!(
        leftover_processes(dir),
        Some(true),
        "children of the demo still run"
    );
}

#[test]
fn up_serves_a_seeded_cluster_until_terminated() {
    let mut child = Command::new(DTC)
        .args(["up", "--accounts", "3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {DTC}: {e}"));
    let err = drain(child.stderr.take().unwrap());
    let (tx, lines) = mpsc::channel::<String>();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for l in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    // Wait (bounded) for the banner, up to "Ctrl-C stops everything".
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut banner = Vec::new();
    let ready = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) => {
                let done = l.contains("Ctrl-C stops everything");
                banner.push(l);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    if !ready {
        terminate(&mut child);
        panic!(
            "dtc up did not come up; stdout:\n{}\nstderr:\n{}",
            banner.join("\n"),
            err.join().unwrap_or_default()
        );
    }
    let banner = banner.join("\n");
    let coords = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("export DTC_COORDINATORS="))
        .unwrap_or_else(|| panic!("no coordinators in the banner:\n{banner}"))
        .to_string();
    let dir = banner
        .lines()
        .next()
        .and_then(|l| l.rsplit("data and logs in ").next())
        .unwrap()
        .trim()
        .to_string();
    assert!(std::path::Path::new(&dir).is_dir(), "{dir}\n{banner}");

    let cli = |args: &[&str]| {
        Command::new(DTC)
            .args(args)
            .args(["--coordinators", &coords, "--json"])
            .output()
            .unwrap()
    };
    let out = cli(&["balance", "bank-b/acct-02"]);
    let balance: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(balance["balance"], 1000, "seeded");
    let out = cli(&[
        "transfer",
        "--from",
        "bank-a/acct-00",
        "--to",
        "bank-b/acct-02",
        "--amount",
        "25",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["balance", "bank-b/acct-02"]);
    let balance: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(balance["balance"], 1025);

    terminate(&mut child);
    let status = child.wait().unwrap();
    assert!(status.success(), "dtc up exits 0 on SIGTERM: {status}");
    assert!(
        !std::path::Path::new(&dir).exists(),
        "{dir} was not removed"
    );
    assert_ne!(
        leftover_processes(&dir),
        Some(true),
        "children of dtc up still run"
    );
}
