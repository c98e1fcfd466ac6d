//! `dtc bench` end to end: the real binary with `--local` (three coordinator
//! child processes on free loopback ports), bounded waits. The tests run one
//! at a time: two local clusters at once on a small machine would measure
//! each other.

mod common;

use common::{Run, run_dtc};
use serde_json::Value;
use std::sync::Mutex;
use std::time::Duration;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `dtc bench ARGS`, at most `within`, one bench at a time.
fn bench(args: &[&str], within: Duration) -> Run {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    run_dtc("bench", args, within)
}

/// The one JSON object `--json` prints.
fn only_json_line(run: &Run) -> Value {
    assert!(
        run.status.success(),
        "dtc bench failed ({}):\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line expected:\n{}", run.stdout);
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {}", lines[0]))
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for k in path {
        cur = cur
            .get(k)
            .unwrap_or_else(|| panic!("no key {path:?} in {v}"));
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

#[test]
fn local_throughput_json_line() {
    let run = bench(
        &["--local", "--clients", "4", "--secs", "2", "--json"],
        Duration::from_secs(90),
    );
    let v = only_json_line(&run);
    assert_eq!(num(&v, &["clients"]), 4.0, "{v}");
    assert!(num(&v, &["secs"]) >= 2.0, "{v}");
    assert!(num(&v, &["committed"]) > 0.0, "{v}");
    assert_eq!(num(&v, &["errors"]), 0.0, "{v}");
    assert!(num(&v, &["aborted"]) >= 0.0, "{v}");
    assert!(num(&v, &["throughput_tps"]) > 0.0, "{v}");
    let (p50, p95, p99, max) = (
        num(&v, &["latency_ms", "p50"]),
        num(&v, &["latency_ms", "p95"]),
        num(&v, &["latency_ms", "p99"]),
        num(&v, &["latency_ms", "max"]),
    );
    assert!(
        0.0 < p50 && p50 <= p95 && p95 <= p99 && p99 <= max,
        "latencies out of order: {v}"
    );
    // stderr is a pipe: no progress bar, and --json prints no phase lines.
    assert!(
        !run.stderr.contains('\r') && !run.stderr.contains('\x1b'),
        "{}",
        run.stderr
    );
}

#[test]
fn local_failover_json_and_timeline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("timeline.csv");
    let csv_arg = csv.display().to_string();
    let run = bench(
        &[
            "--local",
            "--failover",
            "--kills",
            "1",
            "--clients",
            "4",
            "--json",
            "--timeline",
            &csv_arg,
        ],
        Duration::from_secs(120),
    );
    let v = only_json_line(&run);
    let obj = v.as_object().expect("a JSON object");
    for key in [
        "kills",
        "failover_ms",
        "resolve_ms",
        "leader_changes_without_fault",
        "per_kill",
    ] {
        assert!(obj.contains_key(key), "no {key:?} in {v}");
    }
    assert_eq!(num(&v, &["kills"]), 1.0, "{v}");
    let median = num(&v, &["failover_ms", "median"]);
    assert!(median > 0.0, "{v}");
    assert!(median <= num(&v, &["failover_ms", "max"]), "{v}");
    assert!(num(&v, &["resolve_ms", "median"]) > 0.0, "{v}");
    assert!(num(&v, &["resolve_ms", "max"]) >= num(&v, &["resolve_ms", "median"]));
    assert!(num(&v, &["leader_changes_without_fault"]) >= 0.0, "{v}");
    assert_eq!(v["per_kill"].as_array().map(Vec::len), Some(1), "{v}");
    assert!(num(&v, &["committed"]) > 0.0, "{v}");

    let text = std::fs::read_to_string(&csv).expect("the timeline file");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("t_ms,commits,event"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!(rows.iter().all(|r| r.len() == 3), "{text}");
    assert_eq!(
        rows.iter().filter(|r| r[2].contains("kill")).count(),
        1,
        "{text}"
    );
    assert!(
        rows.iter()
            .map(|r| r[1].parse::<u64>().expect("commits"))
            .sum::<u64>()
            > 0
    );
}

#[test]
fn unreachable_cluster_and_bad_flags_exit_non_zero() {
    // A port nobody listens on (bound, then released).
    let port = dtc_harness::ports::free_ports(1).expect("a free port")[0];
    let addr = format!("127.0.0.1:{port}");
    let run = bench(&["--coordinators", &addr], Duration::from_secs(30));
    assert_eq!(run.status.code(), Some(3), "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot reach any coordinator"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);

    let run = bench(&["--local", "--clients", "0"], Duration::from_secs(30));
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    let run = bench(
        &["--local", "--failover", "--clients", "1,2"],
        Duration::from_secs(30),
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    let run = bench(&["--kills", "2", "--local"], Duration::from_secs(30));
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
}
