//! The SDK examples, built by `cargo test --workspace` (and by clippy's
//! `--all-targets`), run against a real local cluster: the inventory
//! participant of dtc-participant and the buy and restock clients of
//! dtc-client, read back with `dtc query` and `dtc participant-admin`.

use dtc_client::{Client, TxnOutcome};
use dtc_harness::process::{Process, run_bounded, signal};
use dtc_harness::{ClusterSpec, LocalCluster};
use dtc_ledger::LedgerClient;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const DTC: &str = env!("CARGO_BIN_EXE_dtc");

/// `target/<profile>/examples/<name>`, which `cargo test --workspace` builds
/// before running any test.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from target/<profile>/deps");
    let path = profile.join("examples").join(name);
    assert!(
        path.is_file(),
        "example {name} is not built at {}: run `cargo test --workspace` (which builds every \
         example) or `cargo build --workspace --examples`",
        path.display()
    );
    path
}

/// Runs a client example (or the CLI) to its end, with `DTC_COORDINATORS`.
fn run(exe: &std::path::Path, args: &[&str], coordinators: &str) -> (i32, String, String) {
    let mut cmd = Command::new(exe);
    cmd.args(args).env("DTC_COORDINATORS", coordinators);
    let f = run_bounded(cmd, Duration::from_secs(60)).expect("finishes in time");
    (f.status.code().unwrap_or(-1), f.stdout, f.stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_examples_run_against_a_local_cluster() {
    let spec = ClusterSpec {
        exe: DTC.into(),
        prefix: "dtc-examples-".into(),
        coordinators: 3,
        ledgers: vec!["bank-a".into()],
        lock_wait_ms: 0,
        tls: None,
    };
    let mut cluster = LocalCluster::start(&spec).unwrap();
    let coordinators = cluster.coordinators_arg();
    let client = Client::connect(cluster.coordinator_addrs()).unwrap();
    if let Err(e) = cluster.wait_ready(&client, Duration::from_secs(60)).await {
        cluster.keep();
        cluster.dump(40);
        panic!("{e:#}");
    }
    let funded = client
        .deposit(("bank-a", "alice"), 100)
        .execute()
        .await
        .unwrap();
    assert!(funded.is_committed(), "{funded:?}");

    // The participant example, as a process of its own.
    let port = dtc_harness::ports::free_ports(1).unwrap()[0];
    let log = cluster.root().join("inventory.log");
    let mut inventory = Process::new(
        "inventory",
        &example("inventory"),
        vec![
            format!("127.0.0.1:{port}"),
            cluster.root().join("inventory").display().to_string(),
        ],
        log.clone(),
    );
    inventory.set_next_start_env(&[("DTC_COORDINATORS", &coordinators)]);
    inventory.start().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.participant_endpoint("inventory").await.is_err() {
        assert!(
            Instant::now() < deadline && inventory.try_exit().is_none(),
            "the inventory never registered:\n{}",
            dtc_harness::process::tail(&log, 30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dtc = PathBuf::from(DTC);
    let query =
        |participant: &str, key: &str| run(&dtc, &["query", participant, key], &coordinators);

    // Restock, then the same delivery again: one transaction id runs once.
    let restock = example("restock");
    for _ in 0..2 {
        let (code, out, err) = run(&restock, &["delivery-1", "10"], &coordinators);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("restocked 10 widgets (delivery-1)"), "{out}");
    }
    assert_eq!(query("inventory", "widget").1.trim(), "10");

    // Two branches, both or neither.
    let buy = example("buy");
    let (code, out, err) = run(&buy, &["alice", "2", "5"], &coordinators);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("bought 2 widget(s) for alice"), "{out}");
    assert_eq!(query("inventory", "widget").1.trim(), "8");
    assert_eq!(query("bank-a", "alice").1.trim(), "90");
    assert_eq!(query("bank-a", "shop").1.trim(), "10");
    // More widgets than there are: the inventory votes abort, and alice
    // pays nothing.
    let (code, out, _) = run(&buy, &["alice", "9", "5"], &coordinators);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("not bought") && out.contains("short by 1"),
        "{out}"
    );
    assert_eq!(query("bank-a", "alice").1.trim(), "90");
    assert_eq!(client.balance("bank-a", "alice").await.unwrap(), 90);

    // A malformed branch payload aborts the transaction with the decode error.
    let malformed = client
        .transaction()
        .branch("inventory", "widget=1")
        .execute()
        .await
        .unwrap();
    let TxnOutcome::Aborted { reason, .. } = &malformed else {
        panic!("{malformed:?}");
    };
    assert!(reason.contains("is not item:delta"), "{reason}");

    // Reads at the participant: a missing key exits 1, a bad one 2; nothing
    // is left in doubt.
    let (code, _, err) = query("inventory", "gadget");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no value"), "{err}");
    let (code, _, err) = query("bank-a", "");
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = query("nobody", "x");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not registered"), "{err}");
    let (code, out, err) = run(
        &dtc,
        &["participant-admin", "list", "inventory"],
        &coordinators,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no prepared transaction"), "{out}");

    // SIGTERM: the example's serve_until_signal returns and it exits 0.
    signal(inventory.pid().unwrap(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = inventory.try_exit() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the inventory did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}
