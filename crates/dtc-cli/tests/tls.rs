//! Mutual TLS end to end: a cluster of three coordinators and two ledgers
//! (processes) with certificates from deploy/make-certs.sh runs transfers
//! for a client with a certificate of the same CA, and refuses, before any
//! message is handled, every connection without one: plaintext, no client
//! certificate, a certificate of another CA, to coordinators (client and
//! Raft ports alike) and to participants.

use dtc_client::{Client, ClientConfig, Tls, TlsFiles};
use dtc_harness::{ClusterSpec, LocalCluster};
use dtc_proto::v1 as pb;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const DTC: &str = env!("CARGO_BIN_EXE_dtc");

/// Runs deploy/make-certs.sh into `dir` for `names`; false (the test then
/// says it is skipped) when openssl is not installed.
fn make_certs(dir: &Path, names: &[&str]) -> bool {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIPPED: openssl is not installed (deploy/make-certs.sh needs it)");
        return false;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/make-certs.sh");
    let out = Command::new(script)
        .arg("-d")
        .arg(dir)
        .args(names)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make-certs.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

fn files(dir: &Path, name: &str, ca_dir: &Path) -> TlsFiles {
    TlsFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
        ca: ca_dir.join("ca.pem"),
    }
}

fn flags(f: &TlsFiles) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        f.cert.display().to_string(),
        "--tls-key".into(),
        f.key.display().to_string(),
        "--tls-ca".into(),
        f.ca.display().to_string(),
    ]
}

/// Runs the CLI (without any DTC_* TLS variables but those in `env`);
/// returns (exit code, stdout, stderr, seconds taken).
fn dtc(args: &[String], env: &[(&str, &Path)]) -> (i32, String, String, f64) {
    let mut cmd = Command::new(DTC);
    cmd.args(args)
        .env_remove("DTC_TLS_CERT")
        .env_remove("DTC_TLS_KEY")
        .env_remove("DTC_TLS_CA")
        .env_remove("DTC_COORDINATORS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let f = dtc_harness::process::run_bounded(cmd, Duration::from_secs(60)).expect("dtc ends");
    (
        f.status.code().unwrap_or(-1),
        f.stdout,
        f.stderr,
        started.elapsed().as_secs_f64(),
    )
}

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// A call that never reached a handler: a transport failure, not a status a
/// dtc service answers (INVALID_ARGUMENT for the garbage sent here,
/// PERMISSION_DENIED, FAILED_PRECONDITION, ...).
fn assert_refused_before_any_handler(what: &str, e: &tonic::Status) {
    assert!(
        matches!(
            e.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        ),
        "{what}: a handler answered: {e:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_cluster_runs_transfers_and_refuses_every_connection_without_a_valid_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let (good, rogue) = (certs.path().join("good"), certs.path().join("rogue"));
    if !make_certs(&good, &["node", "client"]) || !make_certs(&rogue, &["client"]) {
        return;
    }
    let node = files(&good, "node", &good);
    let client_files = files(&good, "client", &good);
    let spec = ClusterSpec {
        exe: DTC.into(),
        prefix: "dtc-tls-test-".into(),
        coordinators: 3,
        ledgers: vec!["bank-a".into(), "bank-b".into()],
        lock_wait_ms: 0,
        tls: Some(node.clone()),
    };
    let mut cluster = LocalCluster::start(&spec).unwrap();
    let client = Client::with_config(
        cluster.coordinator_addrs(),
        ClientConfig {
            tls: Some(Tls::load(client_files.clone()).unwrap()),
            ..Default::default()
        },
    )
    .unwrap();
    if let Err(e) = cluster.wait_ready(&client, Duration::from_secs(60)).await {
        cluster.keep();
        cluster.dump(40);
        panic!("{e:#}");
    }
    let coordinators = cluster.coordinators_arg();
    let with = |words: &[&str], tls: &TlsFiles| {
        let mut a = args(words);
        a.extend(["--coordinators".into(), coordinators.clone()]);
        a.extend(flags(tls));
        a
    };

    // End to end over TLS: client -> coordinator -> (Raft) -> participants,
    // and the participants' registration and reads.
    let (code, out, err, _) = dtc(
        &with(
            &["deposit", "--to", "bank-a/alice", "--amount", "100"],
            &client_files,
        ),
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err, _) = dtc(
        &with(
            &[
                "transfer",
                "--from",
                "bank-a/alice",
                "--to",
                "bank-b/bob",
                "--amount",
                "30",
            ],
            &client_files,
        ),
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("committed"), "{out}");
    let (code, out, err, _) = dtc(&with(&["query", "bank-b", "bob"], &client_files), &[]);
    assert_eq!((code, out.trim()), (0, "30"), "{err}");
    let (code, out, err, _) = dtc(&with(&["status"], &client_files), &[]);
    assert_eq!(code, 0, "{out}{err}");
    // The same through the environment variables.
    let mut plain = args(&["balance", "bank-a/alice", "--coordinators"]);
    plain.push(coordinators.clone());
    let env = [
        ("DTC_TLS_CERT", client_files.cert.as_path()),
        ("DTC_TLS_KEY", client_files.key.as_path()),
        ("DTC_TLS_CA", client_files.ca.as_path()),
    ];
    let (code, out, err, _) = dtc(&plain, &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("bank-a/alice: 70 "), "{out}");
    let leader = cluster.leader().await.expect("a leader");
    let leader_addr = cluster.coordinator_addrs()[leader.id as usize - 1].clone();
    let mut health = args(&["health", "--addr", &leader_addr]);
    health.extend(flags(&client_files));
    assert_eq!(dtc(&health, &[]).0, 0, "health over TLS");

    // Refused, fast, saying why, and saying that nothing was sent.
    let transfer = [
        "transfer",
        "--from",
        "bank-a/alice",
        "--to",
        "bank-b/bob",
        "--amount",
        "1",
    ];
    let mut plaintext = args(&transfer);
    plaintext.extend(["--coordinators".into(), coordinators.clone()]);
    let (code, _, err, secs) = dtc(&plaintext, &[]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("requires TLS") && err.contains("nothing was sent"),
        "{err}"
    );
    eprintln!("plaintext refused in {secs:.1} s");
    // Like the foreign certificate below: some attempts end with a bare
    // "connection closed" (ambiguous: they may have run) before one says
    // that the node speaks TLS, and only then may the client say that
    // nothing was sent. Measured 2.3-6.5 s on an idle machine (the same
    // before and after the network seam of dtc_proto::net), 14-24 s on a
    // loaded one; the bound is the client's retry deadline. What matters is
    // that it says why and that nothing was sent, not "outcome unknown".
    assert!(secs < 35.0, "plaintext took {secs} s to fail: {err}");
    let other_ca = files(&rogue, "client", &rogue);
    let (code, _, err, secs) = dtc(&with(&transfer, &other_ca), &[]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("not trusted") && err.contains("nothing was sent"),
        "{err}"
    );
    assert!(secs < 10.0, "another CA took {secs} s to fail: {err}");
    let self_signed_client = files(&rogue, "client", &good);
    let (code, _, err, secs) = dtc(&with(&transfer, &self_signed_client), &[]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("refused this client's certificate") && err.contains("nothing was sent"),
        "{err}"
    );
    // TLS 1.3 tells a client that its certificate was refused only after
    // its side of the handshake is done, so some attempts end with a bare
    // "connection closed" before one carries the alert that settles it;
    // on a loaded machine that has taken over 20 s. The bound is the
    // client's retry deadline (35 s): what matters is that it says why and
    // that nothing was sent, not "outcome unknown".
    assert!(
        secs < 35.0,
        "a foreign certificate took {secs} s to fail: {err}"
    );
    let mut half = args(&transfer);
    half.extend([
        "--coordinators".into(),
        coordinators.clone(),
        "--tls-cert".into(),
        client_files.cert.display().to_string(),
    ]);
    let (code, _, err, _) = dtc(&half, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--tls-key") && err.contains("--tls-ca"),
        "{err}"
    );

    // Raw connections to the Raft port and to a participant: plaintext, TLS
    // without a client certificate, and a certificate of another CA. None
    // reaches a handler (garbage would get INVALID_ARGUMENT from one; a
    // higher-term vote would depose the leader).
    let term = cluster.leader().await.expect("a leader").term;
    let ca = Certificate::from_pem(std::fs::read(good.join("ca.pem")).unwrap());
    let no_client_cert = ClientTlsConfig::new().ca_certificate(ca.clone());
    let foreign = Tls::load(self_signed_client.clone())
        .unwrap()
        .client_config();
    let participant = client.participant_endpoint("bank-a").await.unwrap();
    assert!(participant.starts_with("https://"), "{participant}");
    let garbage = pb::RaftMessage {
        cluster: "dtc".into(),
        data: vec![0xff; 40],
    };
    for (target, is_raft) in [(leader_addr.as_str(), true), (participant.as_str(), false)] {
        let plain = dtc_proto::tls::uri(target, false);
        let secure = dtc_proto::tls::uri(target, true);
        let channels = [
            ("plaintext", Endpoint::from_shared(plain).unwrap()),
            (
                "TLS without a client certificate",
                Endpoint::from_shared(secure.clone())
                    .unwrap()
                    .tls_config(no_client_cert.clone())
                    .unwrap(),
            ),
            (
                "a certificate of another CA",
                Endpoint::from_shared(secure)
                    .unwrap()
                    .tls_config(foreign.clone())
                    .unwrap(),
            ),
        ];
        for (what, endpoint) in channels {
            let channel = endpoint.timeout(Duration::from_secs(5)).connect_lazy();
            let e = if is_raft {
                pb::raft_transport_client::RaftTransportClient::new(channel)
                    .vote(garbage.clone())
                    .await
                    .unwrap_err()
            } else {
                pb::participant_client::ParticipantClient::new(channel)
                    .prepare(pb::PrepareRequest {
                        txn_id: "rogue".into(),
                        participant: "bank-a".into(),
                        payload: vec![],
                        remaining_ms: 1000,
                    })
                    .await
                    .unwrap_err()
            };
            assert_refused_before_any_handler(&format!("{what} to {target}"), &e);
        }
    }
    let after = cluster.leader().await.expect("a leader");
    assert_eq!(
        (after.id, after.term),
        (leader.id, term),
        "the leader changed"
    );
    let (code, out, err, _) = dtc(&with(&["query", "bank-a", "alice"], &client_files), &[]);
    assert_eq!((code, out.trim()), (0, "70"), "{err}");
}

#[test]
fn a_coordinator_with_unusable_tls_files_refuses_to_start_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let junk: PathBuf = dir.path().join("junk.pem");
    std::fs::write(&junk, "not PEM").unwrap();
    let data = dir.path().join("data");
    let mut a = args(&[
        "coordinator",
        "--id",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--peers",
        "1=127.0.0.1:1",
        "--data-dir",
    ]);
    a.push(data.display().to_string());
    a.extend(flags(&TlsFiles {
        cert: junk.clone(),
        key: junk.clone(),
        ca: junk.clone(),
    }));
    let (code, _, err, _) = dtc(&a, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("junk.pem") && err.contains("CERTIFICATE"),
        "{err}"
    );
    let (code, _, err, _) = dtc(&a[..a.len() - 4], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--tls-key") && err.contains("--tls-ca"),
        "{err}"
    );
}
