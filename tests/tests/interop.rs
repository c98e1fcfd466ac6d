//! Cross-language interop: the gRPC contract in `proto/dtc/v1` is enough to
//! drive a dtc cluster from another language.
//!
//! A Python client (`tests/interop/python/dtc_transfer.py`) generates its
//! stubs from the .proto files at run time, builds `LedgerPayload` branches
//! itself and calls `Coordinator.Execute` on a FOLLOWER of a real three-node
//! cluster, against two real `dtc participant` ledger processes. Balances are
//! read back both through the Python client (`ClusterStatus` to find the
//! ledger, then `Ledger.Balance`) and through the Rust `dtc balance` CLI.
//!
//! Needs `python3` (or `$DTC_PYTHON`) with grpcio and grpcio-tools; without
//! them the test prints a SKIPPED line and passes.

use dtc_tests::v1 as pb;
use dtc_tests::{Cluster, DtcProcess, bounded, free_ports, run_dtc, secs, tail, wait_for_ok};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;

const SKIP_LINE: &str = "SKIPPED: python3 with grpcio/grpcio-tools/grpcio-reflection not available \
                         (pip install -r tests/interop/python/requirements.txt)";

/// The Python interpreter: `$DTC_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("DTC_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/python")
}

fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto")
}

/// Whether `python3 -c "import grpc, grpc_tools"` succeeds (bounded); the
/// error says why not.
async fn python_grpc_available() -> Result<(), String> {
    let run = tokio::process::Command::new(python())
        .args(["-c", "import grpc, grpc_tools, grpc_reflection"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(secs(60), run).await {
        Err(_) => Err(format!(
            "`{} -c \"import grpc, grpc_tools, grpc_reflection\"` hung",
            python()
        )),
        Ok(Err(e)) => Err(format!("cannot run {}: {e}", python())),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!(
            "{} -c \"import grpc, grpc_tools, grpc_reflection\": {}: {}",
            python(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// One run of the Python client.
#[derive(Debug)]
struct PyRun {
    code: Option<i32>,
    /// The JSON line it printed (Null if none parsed).
    json: Value,
    stdout: String,
    stderr: String,
}

/// Runs `dtc_transfer.py ARGS` (bounded), with stubs cached under `gen_dir`.
async fn run_py(args: &[&str], gen_dir: &Path) -> PyRun {
    let script = interop_dir().join("dtc_transfer.py");
    let run = tokio::process::Command::new(python())
        .arg(&script)
        .args(args)
        .arg("--proto-dir")
        .arg(proto_dir())
        .arg("--gen-dir")
        .arg(gen_dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(secs(90), run)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} {} did not exit within 90 s",
                script.display(),
                args.join(" ")
            )
        })
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    let r = PyRun {
        code: out.status.code(),
        json,
        stdout,
        stderr,
    };
    println!(
        "python {}\n  -> exit {:?}: {}",
        args.join(" "),
        r.code,
        r.stdout.trim()
    );
    if !r.stderr.trim().is_empty() {
        println!("  stderr: {}", r.stderr.trim());
    }
    r
}

/// The services `target` lists to the official Python reflection client,
/// which speaks only `grpc.reflection.v1alpha`.
async fn py_list_services(target: &str) -> Vec<String> {
    let run = tokio::process::Command::new(python())
        .arg(interop_dir().join("list_services.py"))
        .arg(target)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(secs(60), run)
        .await
        .expect("list_services.py hung")
        .expect("cannot run list_services.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!(
        "python list_services.py {target}\n  -> {}: {}",
        out.status,
        stdout.trim()
    );
    assert!(
        out.status.success(),
        "reflection listing of {target} failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).expect("list_services.py prints JSON");
    v["services"]
        .as_array()
        .expect("a services list")
        .iter()
        .map(|s| s.as_str().unwrap_or_default().to_string())
        .collect()
}

/// The balance of `target` (P/ACCOUNT) read by the Python client via `via`.
async fn py_balance(via: &str, target: &str, gen_dir: &Path) -> Result<i64, String> {
    let r = run_py(
        &[
            "--coordinator",
            via,
            "--balance",
            target,
            "--deadline-s",
            "10",
        ],
        gen_dir,
    )
    .await;
    match (r.code, r.json["balance"].as_i64()) {
        (Some(0), Some(b)) => {
            assert_eq!(
                r.json["account"],
                target.split_once('/').unwrap().1,
                "{r:?}"
            );
            Ok(b)
        }
        _ => Err(format!("{r:?}")),
    }
}

/// Runs the `dtc` CLI (bounded) off the async workers; exit code and output.
async fn dtc(args: &[&str]) -> (Option<i32>, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, out) = run_dtc(&refs, secs(60));
        println!("dtc {}\n  -> {status}: {}", args.join(" "), out.trim());
        (status.code(), out)
    })
    .await
    .expect("the dtc runner panicked")
}

/// The balance of `target` read by `dtc balance --json`.
async fn dtc_balance(coordinators: &str, target: &str) -> i64 {
    let (code, out) = dtc(&["balance", "--coordinators", coordinators, "--json", target]).await;
    assert_eq!(code, Some(0), "dtc balance {target} failed: {out}");
    let v: Value = out
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("dtc balance printed no JSON: {out}"));
    v["balance"]
        .as_i64()
        .unwrap_or_else(|| panic!("no balance in {v}"))
}

/// Fails the test (with the log tail) if a participant process has exited.
fn assert_running(ledgers: &mut [(&str, DtcProcess)]) {
    for (name, p) in ledgers.iter_mut() {
        assert!(
            p.is_running(),
            "participant {name} exited; log {}:\n{}",
            p.log.display(),
            tail(&p.log, 40)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_transfers_through_a_follower() {
    if let Err(why) = python_grpc_available().await {
        println!("{SKIP_LINE}");
        println!("  ({why})");
        return;
    }

    let cluster = Cluster::start(3);
    let coordinators = cluster.addrs_arg();
    let gen_dir = cluster.root().join("python-gen");
    let ports = free_ports(2);
    let names = ["ledgerA", "ledgerB"];
    let endpoints: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let mut ledgers: Vec<(&str, DtcProcess)> = names
        .iter()
        .zip(&ports)
        .map(|(name, port)| {
            let data = cluster.root().join(name).display().to_string();
            let listen = format!("127.0.0.1:{port}");
            let proc = DtcProcess::spawn(
                &[
                    "participant",
                    "--name",
                    name,
                    "--listen",
                    &listen,
                    "--data-dir",
                    &data,
                    "--coordinators",
                    &coordinators,
                ],
                &cluster.root().join(format!("{name}.log")),
            );
            (*name, proc)
        })
        .collect();

    bounded(secs(240), async {
        let leader = cluster.wait_for_stable_leader(secs(30)).await;

        // Both ledgers registered, as seen by EVERY node (a follower serves
        // ClusterStatus from its own applied state).
        wait_for_ok(secs(30), "both ledgers registered on every node", || {
            assert_running(&mut ledgers);
            let want: Vec<(String, String)> = names
                .iter()
                .map(|n| n.to_string())
                .zip(endpoints.iter().cloned())
                .collect();
            let cluster = &cluster;
            async move {
                let statuses = cluster.statuses().await;
                for id in cluster.ids() {
                    let s = statuses
                        .get(&id)
                        .ok_or_else(|| format!("node {id} does not answer"))?;
                    let have: Vec<(String, String)> = s
                        .participants
                        .iter()
                        .map(|p| (p.name.clone(), p.endpoint.clone()))
                        .collect();
                    if !want.iter().all(|w| have.contains(w)) {
                        return Err(format!("node {id} knows {have:?}"));
                    }
                }
                Ok(())
            }
        })
        .await;

        let others: Vec<u64> = cluster
            .ids()
            .into_iter()
            .filter(|id| *id != leader)
            .collect();
        let follower = others[0];
        let other_follower = others[1];
        let via = cluster.addr(follower).to_string();
        let role = cluster.status(follower).await.map(|s| s.role);
        assert_eq!(
            role.as_deref(),
            Some("follower"),
            "node {follower} should follow {leader}"
        );
        println!("leader is node {leader}; the Python client talks to follower {follower} ({via})");

        // Server reflection as the official Python client speaks it (v1alpha),
        // on a coordinator and on a participant.
        let coordinator_services = py_list_services(&via).await;
        assert_eq!(
            coordinator_services,
            [
                "dtc.v1.Coordinator",
                "dtc.v1.CoordinatorAdmin",
                "dtc.v1.InDoubt",
                "dtc.v1.RaftTransport",
                "grpc.health.v1.Health"
            ],
            "a coordinator lists what it serves, and only that"
        );
        let ledger_services = py_list_services(&format!("127.0.0.1:{}", ports[0])).await;
        assert_eq!(
            ledger_services,
            [
                "dtc.v1.Ledger",
                "dtc.v1.Participant",
                "dtc.v1.ParticipantQuery",
                "grpc.health.v1.Health"
            ],
            "a ledger lists what it serves, and only that"
        );

        // Seed with the Rust CLI.
        let (code, out) = dtc(&[
            "deposit",
            "--coordinators",
            &coordinators,
            "--to",
            "ledgerA/alice",
            "--amount",
            "100",
            "--txn-id",
            "interop-seed",
            "--json",
        ])
        .await;
        assert_eq!(code, Some(0), "dtc deposit failed: {out}");
        cluster
            .wait_txn_state("interop-seed", pb::TxnState::Committed, secs(20))
            .await;
        // The Python balance mode (ClusterStatus -> Ledger.Balance) sees it.
        let seeded = wait_for_ok(
            secs(30),
            "alice's deposit to be readable from Python",
            || {
                let via = via.clone();
                let gen_dir = gen_dir.clone();
                async move {
                    match py_balance(&via, "ledgerA/alice", &gen_dir).await? {
                        100 => Ok(100),
                        b => Err(format!("balance {b}")),
                    }
                }
            },
        )
        .await;
        assert_eq!(seeded, 100);

        // The transfer: two LedgerPayload branches built in Python, Execute on
        // a follower (forwarded to the leader).
        let t = run_py(
            &[
                "--coordinator",
                &via,
                "--from",
                "ledgerA/alice",
                "--to",
                "ledgerB/bob",
                "--amount",
                "5",
                "--txn-id",
                "interop-transfer-1",
            ],
            &gen_dir,
        )
        .await;
        assert_eq!(t.code, Some(0), "the Python transfer did not commit: {t:?}");
        assert_eq!(t.json["txn_id"], "interop-transfer-1", "{t:?}");
        assert_eq!(t.json["outcome"], "committed", "{t:?}");
        assert_eq!(t.json["reason"], "", "{t:?}");
        let info = cluster
            .wait_txn_state("interop-transfer-1", pb::TxnState::Committed, secs(20))
            .await;
        let mut ps = info.participants.clone();
        ps.sort();
        assert_eq!(ps, ["ledgerA", "ledgerB"], "{info:?}");

        // COMMITTED means every ledger acknowledged: the balances are final.
        for (target, want) in [("ledgerA/alice", 95), ("ledgerB/bob", 5)] {
            assert_eq!(
                py_balance(&via, target, &gen_dir).await,
                Ok(want),
                "{target} (Python)"
            );
            assert_eq!(
                dtc_balance(&coordinators, target).await,
                want,
                "{target} (dtc)"
            );
        }

        // An abort: more than alice has. Exit 1, a reason, nothing moves.
        let a = run_py(
            &[
                "--coordinator",
                &via,
                "--from",
                "ledgerA/alice",
                "--to",
                "ledgerB/bob",
                "--amount",
                "1000",
                "--txn-id",
                "interop-overdraft",
            ],
            &gen_dir,
        )
        .await;
        assert_eq!(a.code, Some(1), "an overdraft should abort: {a:?}");
        assert_eq!(a.json["outcome"], "aborted", "{a:?}");
        assert!(
            !a.json["reason"].as_str().unwrap_or_default().is_empty(),
            "an abort names its reason: {a:?}"
        );
        cluster
            .wait_txn_state("interop-overdraft", pb::TxnState::Aborted, secs(20))
            .await;

        // The same txn id again, through the other follower: the original
        // outcome, and the transfer is not applied twice.
        let again_via = cluster.addr(other_follower).to_string();
        let r = run_py(
            &[
                "--coordinator",
                &again_via,
                "--from",
                "ledgerA/alice",
                "--to",
                "ledgerB/bob",
                "--amount",
                "5",
                "--txn-id",
                "interop-transfer-1",
            ],
            &gen_dir,
        )
        .await;
        assert_eq!(
            r.code,
            Some(0),
            "a retry returns the original outcome: {r:?}"
        );
        assert_eq!(r.json["outcome"], "committed", "{r:?}");

        // Both accounts on one ledger: a single branch with two entries.
        let s = run_py(
            &[
                "--coordinator",
                &via,
                "--from",
                "ledgerB/bob",
                "--to",
                "ledgerB/carol",
                "--amount",
                "2",
                "--txn-id",
                "interop-same-ledger",
            ],
            &gen_dir,
        )
        .await;
        assert_eq!(
            s.code,
            Some(0),
            "a same-ledger transfer should commit: {s:?}"
        );
        let info = cluster
            .wait_txn_state("interop-same-ledger", pb::TxnState::Committed, secs(20))
            .await;
        assert_eq!(info.participants, ["ledgerB"], "{info:?}");

        for (target, want) in [
            ("ledgerA/alice", 95),
            ("ledgerB/bob", 3),
            ("ledgerB/carol", 2),
        ] {
            assert_eq!(
                py_balance(&via, target, &gen_dir).await,
                Ok(want),
                "{target} (Python)"
            );
            assert_eq!(
                dtc_balance(&coordinators, target).await,
                want,
                "{target} (dtc)"
            );
        }

        // A malformed target is a usage error (exit 2), not a transaction.
        let bad = run_py(
            &[
                "--coordinator",
                &via,
                "--from",
                "alice",
                "--to",
                "ledgerB/bob",
                "--amount",
                "1",
            ],
            &gen_dir,
        )
        .await;
        assert_eq!(bad.code, Some(2), "{bad:?}");

        assert_running(&mut ledgers);
        cluster.assert_no_crash();
    })
    .await;
}
