//! End to end against a real cluster: three `dtc coordinator` processes and
//! two `dtc participant` ledgers (processes), driven through the client SDK
//! and the CLI. Ports are free loopback ports; every wait has a deadline.

mod common;

use common::wait_for;
use dtc_client::{Client, ClientConfig, TxnState};
use dtc_harness::{ClusterSpec, LocalCluster};
use dtc_ledger::LedgerClient;
use dtc_proto::v1 as pb;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

const DTC: &str = env!("CARGO_BIN_EXE_dtc");

/// Coordinators 1..=3 and the ledger participants `ledgers`, killed on
/// drop. When the test fails, the directory is kept and each log's tail is
/// printed (dtc-harness).
struct Env {
    cluster: LocalCluster,
}

impl Env {
    fn start(ledgers: &[&str]) -> Env {
        let spec = ClusterSpec {
            exe: DTC.into(),
            prefix: "dtc-cli-test-".into(),
            coordinators: 3,
            ledgers: ledgers.iter().map(|l| l.to_string()).collect(),
            lock_wait_ms: 0,
            tls: None,
        };
        Env {
            cluster: LocalCluster::start(&spec).unwrap(),
        }
    }

    fn client(&self) -> Client {
        Client::with_config(
            self.cluster.coordinator_addrs(),
            ClientConfig {
                retry_budget: Duration::from_secs(40),
                ..Default::default()
            },
        )
        .unwrap()
    }

    /// SIGKILL the process called `name`.
    fn kill(&mut self, name: &str) {
        self.cluster.kill(name).unwrap();
    }

    /// Starts a killed process again with the same arguments.
    fn restart(&mut self, name: &str) {
        self.cluster.restart(name).unwrap();
    }

    /// The node whose own role is leader (highest term), if any answers.
    async fn leader(&self) -> Option<u64> {
        self.cluster.leader().await.map(|l| l.id)
    }

    /// Runs the CLI; returns (exit code, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(DTC)
            .args(args)
            .arg("--coordinators")
            .arg(self.cluster.coordinators_arg())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

async fn ready(env: &Env, client: &Client, ledgers: &[&str]) {
    for name in ledgers {
        wait_for(
            Duration::from_secs(30),
            &format!("{name} to register"),
            || async { client.participant_endpoint(name).await.ok() },
        )
        .await;
    }
    wait_for(Duration::from_secs(30), "a leader", || env.leader()).await;
}

async fn committed_ids(client: &Client, ledger: &str) -> BTreeSet<String> {
    client
        .ledger_audit(ledger, false)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.outcome == pb::AuditOutcome::Committed as i32)
        .map(|e| e.txn_id)
        .collect()
}

async fn wait_no_pending(client: &Client) {
    wait_for(
        Duration::from_secs(30),
        "no pending transactions",
        || async {
            client
                .list_transactions(true)
                .await
                .ok()
                .filter(|l| l.is_empty())
                .map(|_| ())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_between_two_ledgers_commits_conserves_the_total_and_a_retried_id_applies_once()
{
    let env = Env::start(&["bank-a", "bank-b"]);
    let client = env.client();
    tokio::time::timeout(Duration::from_secs(120), async {
        ready(&env, &client, &["bank-a", "bank-b"]).await;
        let fund = client.deposit(("bank-a", "alice"), 1000).execute().await.unwrap();
        assert!(fund.is_committed(), "{fund:?}");

        // Concurrent transfers on one pair of accounts: the ledgers lock no
        // account (escrow), and alice's 1000 covers all 16, so every one commits.
        let runs = futures::future::join_all((0..16).map(|_| {
            let c = client.clone();
            async move { c.transfer(("bank-a", "alice"), ("bank-b", "bob"), 10).execute().await }
        }))
        .await;
        let mut committed = 0;
        for r in runs {
            let o = r.expect("every transfer has an outcome");
            assert!(o.is_committed(), "{o:?}");
            committed += 1;
        }
        // Every decision acknowledged: no reservation is left behind.
        wait_no_pending(&client).await;
        let alice = client.balance("bank-a", "alice").await.unwrap();
        let bob = client.balance("bank-b", "bob").await.unwrap();
        assert_eq!((alice, bob), (1000 - 10 * committed, 10 * committed));
        let held = client.account_balance("bank-a", "alice").await.unwrap();
        assert_eq!((held.reserved, held.available, held.incoming), (0, alice, 0));

        // The same id again: the recorded outcome, applied once.
        let first = client.transfer(("bank-a", "alice"), ("bank-b", "bob"), 7).id("retry-1").execute().await.unwrap();
        let again = client.transfer(("bank-a", "alice"), ("bank-b", "bob"), 7).id("retry-1").execute().await.unwrap();
        assert!(first.is_committed());
        assert_eq!(first, again);
        assert_eq!(client.balance("bank-b", "bob").await.unwrap(), 10 * committed + 7);
        assert_eq!(client.balance("bank-a", "alice").await.unwrap() + client.balance("bank-b", "bob").await.unwrap(), 1000);
        // Same id, different request: refused, nothing applied.
        let e = client.transfer(("bank-a", "alice"), ("bank-b", "bob"), 8).id("retry-1").execute().await.unwrap_err();
        assert!(matches!(e, dtc_client::ClientError::FailedPrecondition(_)), "{e:?}");
        let audit_b = client.ledger_audit("bank-b", false).await.unwrap();
        assert_eq!(audit_b.iter().filter(|e| e.txn_id == "retry-1").count(), 1);
        let t = client.get_transaction("retry-1").await.unwrap();
        assert_eq!(t.participants, vec!["bank-a".to_string(), "bank-b".to_string()]);
        wait_no_pending(&client).await;

        // The CLI, with its JSON and exit codes.
        let (code, out, err) = env.cli(&["balance", "bank-b/bob", "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let bob = 10 * committed + 7;
        assert_eq!(v, serde_json::json!({"participant": "bank-b", "account": "bob", "balance": bob, "reserved": 0, "available": bob, "incoming": 0}));
        let (code, out, err) = env.cli(&["balance", "bank-b/bob"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.trim(), format!("bank-b/bob: {bob} (reserved 0, available {bob}, incoming 0)"));
        let (code, out, err) = env.cli(&["transfer", "--from", "bank-b/bob", "--to", "bank-a/alice", "--amount", "3", "--json", "--txn-id", "cli-1"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(out.trim()).unwrap(), serde_json::json!({"txn_id": "cli-1", "outcome": "committed"}));
        let (code, out, _) = env.cli(&["transfer", "--from", "bank-b/bob", "--to", "bank-a/alice", "--amount", "1000000", "--json"]);
        assert_eq!(code, 1);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["outcome"], "aborted");
        assert!(v["reason"].as_str().unwrap().contains("insufficient funds"), "{v}");
        let (code, _, err) = env.cli(&["deposit", "--to", "bank-a", "--amount", "5"]);
        assert_eq!(code, 2);
        assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
        let (code, _, err) = env.cli(&["deposit", "--to", "bank-a/alice", "--amount", "-5"]);
        assert_eq!(code, 2, "{err}");
        let (code, out, _) = env.cli(&["txn", "show", "cli-1", "--json"]);
        assert_eq!(code, 0);
        assert_eq!(serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["state"], "committed");
        let (code, _, _) = env.cli(&["txn", "show", "never-ran"]);
        assert_eq!(code, 1);
        let (code, out, _) = env.cli(&["txn", "list", "--pending", "--json"]);
        assert_eq!(code, 0);
        assert!(serde_json::from_str::<serde_json::Value>(out.trim()).unwrap().is_array());
        let a = client.balance("bank-a", "alice").await.unwrap();
        let b = client.balance("bank-b", "bob").await.unwrap();
        assert_eq!(a + b, 1000);
    })
    .await
    .expect("test took over 120 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_survive_a_leader_kill_and_none_applies_twice() {
    let mut env = Env::start(&["left", "right"]);
    let client = env.client();
    let killed = tokio::time::timeout(Duration::from_secs(150), async {
        ready(&env, &client, &["left", "right"]).await;
        assert!(
            client
                .deposit(("left", "l"), 1000)
                .execute()
                .await
                .unwrap()
                .is_committed()
        );
        // Transfers run one after another in a task; the leader is killed
        // while one is in flight (right after the 8th outcome arrives).
        let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
        let runner = {
            let client = client.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for i in 0..30 {
                    let id = format!("f-{i:03}");
                    // Sequential, so a transfer can only abort because of the failover.
                    let o = client
                        .transfer(("left", "l"), ("right", "r"), 1)
                        .id(id.clone())
                        .execute()
                        .await
                        .unwrap_or_else(|e| panic!("transfer {id} has no outcome: {e}"));
                    outcomes.push(o);
                    let _ = progress_tx.send(outcomes.len());
                }
                outcomes
            })
        };
        progress.wait_for(|n| *n >= 8).await.unwrap();
        let leader = env.leader().await.expect("a leader");
        env.kill(&format!("node-{leader}"));
        let killed = Some(leader);
        let outcomes = runner.await.expect("the transfers finish");
        let committed: BTreeSet<String> = outcomes
            .iter()
            .filter(|o| o.is_committed())
            .map(|o| o.txn_id().to_string())
            .collect();
        eprintln!(
            "killed node {killed:?}: {} of {} transfers committed",
            committed.len(),
            outcomes.len()
        );
        assert!(committed.len() >= 20, "most transfers commit: {outcomes:?}");
        wait_no_pending(&client).await;
        let l = client.balance("left", "l").await.unwrap();
        let r = client.balance("right", "r").await.unwrap();
        assert_eq!(l + r, 1000, "total conserved");
        assert_eq!(
            r as usize,
            committed.len(),
            "every committed transfer applied exactly once"
        );
        assert_eq!(committed_ids(&client, "right").await, committed);
        let left_ids: BTreeSet<String> = committed_ids(&client, "left")
            .await
            .into_iter()
            .filter(|id| id.starts_with("f-"))
            .collect();
        assert_eq!(left_ids, committed);
        for o in outcomes.iter().filter(|o| !o.is_committed()) {
            let t = client.get_transaction(o.txn_id()).await.unwrap();
            assert_eq!(t.state, TxnState::Aborted, "{t:?}");
        }
        killed
    })
    .await
    .expect("test took over 150 s");
    assert!(killed.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_killed_mid_transfer_recovers_and_every_transfer_resolves() {
    let mut env = Env::start(&["src", "dst"]);
    let client = env.client();
    tokio::time::timeout(Duration::from_secs(150), async {
        ready(&env, &client, &["src", "dst"]).await;
        assert!(
            client
                .deposit(("src", "s"), 1000)
                .execute()
                .await
                .unwrap()
                .is_committed()
        );
        let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
        let runner = {
            let client = client.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for i in 0..40 {
                    let id = format!("k-{i:03}");
                    let o = client
                        .transfer(("src", "s"), ("dst", "d"), 1)
                        .id(id.clone())
                        .timeout(Duration::from_millis(800))
                        .execute()
                        .await
                        .unwrap_or_else(|e| panic!("transfer {id} has no outcome: {e}"));
                    outcomes.push(o);
                    let _ = progress_tx.send(outcomes.len());
                }
                outcomes
            })
        };
        progress.wait_for(|n| *n >= 5).await.unwrap();
        env.kill("dst"); // SIGKILL: prepared or decided work may be in doubt
        let n = *progress.borrow();
        progress.wait_for(|m| *m >= n + 2).await.unwrap(); // transfers abort meanwhile
        env.restart("dst");
        let outcomes = runner.await.expect("the transfers finish");
        let committed: BTreeSet<String> = outcomes
            .iter()
            .filter(|o| o.is_committed())
            .map(|o| o.txn_id().to_string())
            .collect();
        eprintln!(
            "{} of {} transfers committed around the participant crash",
            committed.len(),
            outcomes.len()
        );
        assert!(
            committed.len() < outcomes.len(),
            "some transfers aborted while dst was down"
        );
        wait_no_pending(&client).await;
        let s = client.balance("src", "s").await.unwrap();
        let d = client.balance("dst", "d").await.unwrap();
        assert_eq!(s + d, 1000, "total conserved");
        assert_eq!(d as usize, committed.len());
        assert_eq!(committed_ids(&client, "dst").await, committed);
        let src_ids: BTreeSet<String> = committed_ids(&client, "src")
            .await
            .into_iter()
            .filter(|id| id.starts_with("k-"))
            .collect();
        assert_eq!(src_ids, committed);
        // Nothing is left prepared (no lock held) at either ledger.
        for ledger in ["src", "dst"] {
            let prepared = client
                .ledger_audit(ledger, true)
                .await
                .unwrap()
                .into_iter()
                .filter(|e| e.outcome == pb::AuditOutcome::Prepared as i32)
                .count();
            assert_eq!(prepared, 0, "{ledger} still holds prepared transactions");
        }
    })
    .await
    .expect("test took over 150 s");
}

/// `--log-format json` makes every log line of a node one JSON object, the
/// first of them the effective configuration.
#[test]
fn a_node_logs_json_lines_with_its_effective_configuration_first() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("node.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let addr = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(DTC)
        .args(["coordinator", "--id", "1", "--listen", &addr, "--peers"])
        .arg(format!("1={addr}"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--log-format", "json"])
        .env_remove("DTC_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("coordinator listening") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no listening line within 20 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let first = &lines[0];
    assert_eq!(
        first["fields"]["message"], "effective configuration",
        "{first}"
    );
    let config = first["fields"]["config"].as_str().unwrap_or_default();
    assert!(config.contains(&format!("listen: {addr}")), "{config}");
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "coordinator listening" && l["level"] == "INFO"),
        "{text}"
    );
}
