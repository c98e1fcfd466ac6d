//! Container-style configuration on real processes: a coordinator and a
//! ledger configured only through `DTC_*` environment variables, listening
//! on the wildcard address and advertising a loopback one, checked with
//! `dtc health` (grpc.health.v1) and through the cluster's own status.
//! Ports are free ports; every wait has a deadline.

mod common;

use common::wait_for;
use dtc_proto::v1 as pb;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const DTC: &str = env!("CARGO_BIN_EXE_dtc");

fn free_port() -> u16 {
    dtc_harness::ports::free_ports(1).unwrap()[0]
}

/// A `dtc` command with no `DTC_*` variable inherited from the caller, so
/// what the test sets is all the configuration there is.
fn dtc() -> Command {
    let mut c = Command::new(DTC);
    for (k, _) in std::env::vars() {
        if k.starts_with("DTC_") && k != "DTC_LOG" {
            c.env_remove(k);
        }
    }
    c.stdin(Stdio::null());
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {DTC}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Kills its process on drop (and prints its log when the test failed).
struct Running {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- {} ----\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

fn spawn(mut cmd: Command, log: &Path) -> Running {
    let out = std::fs::File::create(log).unwrap();
    let child = cmd
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {DTC}: {e}"));
    Running {
        child,
        log: log.to_path_buf(),
    }
}

async fn status(addr: &str) -> Option<pb::ClusterStatusResponse> {
    let mut c = pb::coordinator_client::CoordinatorClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_millis(300))
            .timeout(Duration::from_secs(1))
            .connect_lazy(),
    );
    c.cluster_status(pb::ClusterStatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_configured_by_environment_advertise_their_address_and_answer_health_checks() {
    let dir = tempfile::tempdir().unwrap();
    let cport = free_port();
    let caddr = format!("127.0.0.1:{cport}");

    // A one-node cluster from the environment alone: --listen on the
    // wildcard, and the member address from --advertise (which agrees with
    // the node's --peers entry; filling a missing entry is unit-tested in
    // main.rs, since --peers cannot be empty).
    let mut coord = dtc();
    coord
        .arg("coordinator")
        .env("DTC_ID", "1")
        .env("DTC_LISTEN", format!("0.0.0.0:{cport}"))
        .env("DTC_ADVERTISE", &caddr)
        .env("DTC_PEERS", format!("1={caddr}"))
        .env("DTC_DATA_DIR", dir.path().join("coord"))
        .env("DTC_CLUSTER", "env-test")
        .env("DTC_HEARTBEAT_MS", "30")
        .env("DTC_ELECTION_TIMEOUT_MS", "100-200")
        .env("DTC_LOG", SPAN_LOG);
    let coord_log = dir.path().join("coord.log");
    let _coord = spawn(coord, &coord_log);

    let s = wait_for(Duration::from_secs(30), "the node to lead", || async {
        status(&caddr)
            .await
            .filter(|s| s.role == "leader" && s.leader_id == Some(1))
    })
    .await;
    assert_eq!(s.cluster, "env-test", "DTC_CLUSTER was not applied");
    let members: Vec<(u64, String)> = s.members.iter().map(|m| (m.id, m.addr.clone())).collect();
    assert_eq!(members, vec![(1, caddr.clone())]);

    // dtc health: the server as a whole and a named service are SERVING.
    let o = run(dtc().args(["health", "--addr", &caddr]));
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("SERVING"),
        "{}",
        text(&o)
    );
    let o = run(dtc().args([
        "health",
        "--addr",
        &caddr,
        "--service",
        "dtc.v1.Coordinator",
    ]));
    assert!(o.status.success(), "{}", text(&o));
    // A service the node does not serve: exit 1, named.
    let o = run(dtc().args(["health", "--addr", &caddr, "--service", "no.such.Service"]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("\"no.such.Service\" is unknown"),
        "{}",
        text(&o)
    );
    // Nobody listening: exit 3, within the timeout.
    let closed = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let o = run(dtc().args(["health", "--addr", &closed, "--timeout-ms", "500"]));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&closed),
        "{}",
        text(&o)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // A bad address: exit 2, named.
    let o = run(dtc().args(["health", "--addr", "not an address"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not an address"),
        "{}",
        text(&o)
    );

    // A ledger from the environment alone, on the wildcard, registering the
    // advertised address (HOST:PORT, without a scheme).
    let lport = free_port();
    let laddr = format!("127.0.0.1:{lport}");
    let mut ledger = dtc();
    ledger
        .arg("participant")
        .env("DTC_NAME", "env-ledger")
        .env("DTC_LISTEN", format!("0.0.0.0:{lport}"))
        .env("DTC_ADVERTISE", &laddr)
        .env("DTC_DATA_DIR", dir.path().join("ledger"))
        .env("DTC_COORDINATORS", &caddr)
        .env("DTC_IN_DOUBT_INTERVAL_MS", "500")
        .env("DTC_JSON", "true")
        .env("DTC_LOG", SPAN_LOG);
    let ledger_log = dir.path().join("ledger.log");
    let _ledger = spawn(ledger, &ledger_log);
    let endpoint = format!("http://{laddr}");
    wait_for(
        Duration::from_secs(30),
        "the ledger to register",
        || async {
            status(&caddr).await.filter(|s| {
                s.participants
                    .iter()
                    .any(|p| p.name == "env-ledger" && p.endpoint == endpoint)
            })
        },
    )
    .await;
    // DTC_JSON=true printed the start-up line as JSON.
    let log = std::fs::read_to_string(&ledger_log).unwrap();
    let line = log
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON start-up line in:\n{log}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["endpoint"], endpoint.as_str());
    let o = run(dtc().args([
        "health",
        "--addr",
        &laddr,
        "--service",
        "dtc.v1.Participant",
    ]));
    assert!(o.status.success(), "{}", text(&o));

    // A transaction's log lines carry its id in a `txn` span, on the
    // coordinator and at the participant alike.
    let o = run(dtc().args([
        "deposit",
        "--coordinators",
        &caddr,
        "--to",
        "env-ledger/alice",
        "--amount",
        "5",
        "--txn-id",
        "span-check-1",
    ]));
    assert!(o.status.success(), "{}", text(&o));
    for log in [&coord_log, &ledger_log] {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(
            text.lines().any(|l| l.contains("txn{txn_id=span-check-1")),
            "no line of {} in the transaction's span:\n{text}",
            log.display()
        );
    }
}

/// Debug lines of dtc's own crates, where a transaction's steps are logged.
const SPAN_LOG: &str = "info,openraft=warn,dtc_coordinator=debug,dtc_participant=debug";

#[test]
fn bad_environment_and_disagreeing_advertise_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    // A malformed variable: clap names the flag it stands for; exit 2.
    let o = run(dtc()
        .arg("coordinator")
        .env("DTC_ID", "one")
        .env("DTC_LISTEN", "127.0.0.1:0")
        .env("DTC_PEERS", "1=127.0.0.1:7001")
        .env("DTC_DATA_DIR", dir.path()));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("'one'") && err.contains("--id"),
        "{}",
        text(&o)
    );

    // --advertise that contradicts this node's --peers entry; exit 2, both named.
    let o = run(dtc()
        .arg("coordinator")
        .env("DTC_ID", "1")
        .env("DTC_LISTEN", "127.0.0.1:0")
        .env("DTC_PEERS", "1=coord-1:7000,2=coord-2:7000")
        .env("DTC_ADVERTISE", "coord-1:7999")
        .env("DTC_DATA_DIR", dir.path().join("x")));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("coord-1:7999") && err.contains("coord-1:7000"),
        "{}",
        text(&o)
    );
    assert!(
        !dir.path().join("x").exists(),
        "refused before touching the data dir"
    );

    // A flag on the command line wins over its variable.
    let o = run(dtc()
        .args(["coordinator", "--id", "bad"])
        .env("DTC_ID", "1")
        .env("DTC_LISTEN", "127.0.0.1:0")
        .env("DTC_PEERS", "1=127.0.0.1:7001")
        .env("DTC_DATA_DIR", dir.path().join("y")));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("'bad'"),
        "{}",
        text(&o)
    );
}

/// Every flag of the two server commands has its variable, so a flag added
/// later without one fails here rather than in someone's container.
#[test]
fn every_server_flag_can_come_from_a_dtc_variable() {
    for sub in ["coordinator", "participant"] {
        // Short help: an option starts a line indented by six spaces; its
        // description (with the variable) follows on that line or the next.
        let o = run(dtc().args([sub, "-h"]));
        assert!(o.status.success(), "{}", text(&o));
        let help = String::from_utf8_lossy(&o.stdout).into_owned();
        let mut blocks: Vec<String> = Vec::new();
        for line in help.lines() {
            if line.starts_with("      --") {
                blocks.push(line.trim_start().to_string());
            } else if line.starts_with("  -") || !line.starts_with("       ") {
                // `-h, --help`, a heading or a blank line ends a block.
                blocks.push(String::new());
            } else if let Some(b) = blocks.last_mut() {
                b.push_str(line);
            }
        }
        blocks.retain(|b| b.starts_with("--"));
        assert!(blocks.len() >= 8, "{sub}: too few options parsed:\n{help}");
        for block in blocks {
            let flag = block[2..].split([' ', '<']).next().unwrap();
            let var = format!("[env: DTC_{}=", flag.to_uppercase().replace('-', "_"));
            assert!(
                block.contains(&var),
                "dtc {sub} --{flag} has no {var}]: {block}"
            );
        }
    }
}

/// A wrong `--coordinators` (nothing listens) fails within seconds, names
/// every address and exits 3, instead of retrying until the deadline.
#[test]
fn a_transfer_with_only_unreachable_coordinators_fails_fast_naming_them() {
    let ports = [free_port(), free_port()];
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let started = Instant::now();
    let o = run(dtc().args([
        "transfer",
        "--coordinators",
        &addrs.join(","),
        "--from",
        "bank-a/alice",
        "--to",
        "bank-b/bob",
        "--amount",
        "5",
    ]));
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(took < Duration::from_secs(5), "took {took:?}: {}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    for a in &addrs {
        assert!(stderr.contains(a.as_str()), "{a} not named: {}", text(&o));
    }
    assert!(stderr.contains("nothing was sent"), "{}", text(&o));
}

/// `--config FILE`: a coordinator configured by a TOML file of its flags'
/// names, where the command line and then the environment win over the
/// file; and files that cannot be used are refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_sets_the_flags_it_names_below_flags_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let cport = free_port();
    let caddr = format!("127.0.0.1:{cport}");
    let file = dir.path().join("dtc.toml");
    std::fs::write(
        &file,
        format!(
            "id = 1\nlisten = \"{caddr}\"\npeers = [\"1={caddr}\"]\ndata-dir = \"{}\"\n\
             cluster = \"from-file\"\nheartbeat-ms = 30\nelection-timeout-ms = \"100-200\"\n\
             max-in-flight = 7\n",
            dir.path().join("coord").display()
        ),
    )
    .unwrap();
    let mut coord = dtc();
    coord
        .args(["coordinator", "--config"])
        .arg(&file)
        .args(["--max-in-flight", "9"])
        .env("DTC_CLUSTER", "from-env");
    let _coord = spawn(coord, &dir.path().join("coord.log"));
    let s = wait_for(Duration::from_secs(30), "the node to lead", || async {
        status(&caddr)
            .await
            .filter(|s| s.role == "leader" && s.leader_id == Some(1))
    })
    .await;
    assert_eq!(s.cluster, "from-env", "the environment wins over the file");
    // The effective configuration is logged once: the flag won over the file.
    let log = std::fs::read_to_string(dir.path().join("coord.log")).unwrap();
    assert!(log.contains("max_in_flight: 9"), "{log}");

    let bad = |body: &str| {
        std::fs::write(&file, body).unwrap();
        run(dtc().args(["coordinator", "--config"]).arg(&file))
    };
    let o = bad("id = 1\ndata_dirr = \"x\"\n");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("unknown key \"data_dirr\""),
        "{}",
        text(&o)
    );
    let o = bad("id = [\n");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not valid TOML"), "{}", text(&o));
    let o = bad(
        "id = \"one\"\nlisten = \"127.0.0.1:1\"\npeers = \"1=127.0.0.1:1\"\ndata-dir = \"d\"\n",
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--id"),
        "clap names the flag: {}",
        text(&o)
    );
    let o = run(dtc().args(["participant", "--config", "/nonexistent/dtc.toml"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("/nonexistent/dtc.toml"), "{}", text(&o));
}
