//! The participant SDK against a test resource, over real gRPC on loopback:
//! idempotency under duplicate and reordered messages, tombstones, refused
//! commits, deadlines, and restarts at each point of a branch's life.

use dtc_harness::small_disk::SmallDisk;
use dtc_participant::redb::{self, ReadableDatabase, ReadableTable, TableDefinition};
use dtc_participant::{
    BranchState, ParticipantServer, PreparedTxn, Resource, ResourceError, RunningParticipant, Vote,
};
use dtc_proto::v1 as pb;
use pb::participant_client::ParticipantClient;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tonic::Code;
use tonic::transport::Channel;

/// Rows the test resource writes: `pending:<id>` at prepare, `done:<id>` at
/// commit (and `pending` removed at commit/abort).
const KV: TableDefinition<&str, &str> = TableDefinition::new("test_kv");
const NAME: &str = "p1";

/// A resource whose behaviour depends on the payload: `abort`, `ro`, `err`,
/// `panic`, `gate` (blocks until released), anything else prepares.
#[derive(Default)]
struct TestResource {
    calls: Mutex<HashMap<(String, &'static str), usize>>,
    recovered: Mutex<Vec<PreparedTxn<Vec<u8>>>>,
    entered: Notify,
    gate: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl TestResource {
    fn count(&self, txn: &str, what: &'static str) -> usize {
        *self
            .calls
            .lock()
            .unwrap()
            .get(&(txn.to_string(), what))
            .unwrap_or(&0)
    }

    fn note(&self, txn: &str, what: &'static str) {
        *self
            .calls
            .lock()
            .unwrap()
            .entry((txn.to_string(), what))
            .or_default() += 1;
    }
}

impl Resource for TestResource {
    type Payload = Vec<u8>;

    fn decode(&self, payload: &[u8]) -> Result<Vec<u8>, String> {
        dtc_participant::payload::bytes(payload)
    }

    fn prepare(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &Vec<u8>,
    ) -> Result<Vote, ResourceError> {
        self.note(txn_id, "prepare");
        // Changes made before a refusal must be discarded by the SDK.
        tx.open_table(KV)?
            .insert(format!("pending:{txn_id}").as_str(), "x")?;
        match payload.as_slice() {
            b"abort" => Ok(Vote::Abort("test says no".into())),
            b"ro" => Ok(Vote::ReadOnly),
            b"err" => Err(ResourceError::new("disk on fire")),
            b"panic" => panic!("resource bug"),
            b"gate" => {
                let gate = self.gate.lock().unwrap().take();
                self.entered.notify_one();
                if let Some(g) = gate {
                    let _ = g.recv_timeout(Duration::from_secs(20));
                }
                Ok(Vote::Prepared)
            }
            _ => Ok(Vote::Prepared),
        }
    }

    fn commit(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        _payload: &Vec<u8>,
    ) -> Result<(), ResourceError> {
        self.note(txn_id, "commit");
        let mut t = tx.open_table(KV)?;
        t.remove(format!("pending:{txn_id}").as_str())?;
        t.insert(format!("done:{txn_id}").as_str(), "x")?;
        Ok(())
    }

    fn abort(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        _payload: &Vec<u8>,
        _reason: &str,
    ) -> Result<(), ResourceError> {
        self.note(txn_id, "abort");
        tx.open_table(KV)?
            .remove(format!("pending:{txn_id}").as_str())?;
        Ok(())
    }

    fn recover(
        &self,
        _tx: &redb::WriteTransaction,
        prepared: &[PreparedTxn<Vec<u8>>],
    ) -> Result<(), ResourceError> {
        self.recovered
            .lock()
            .unwrap()
            .extend(prepared.iter().cloned());
        Ok(())
    }
}

struct Harness {
    dir: tempfile::TempDir,
    resource: Arc<TestResource>,
    running: Option<RunningParticipant>,
    client: ParticipantClient<Channel>,
}

async fn start_on(
    dir: &Path,
    resource: Arc<TestResource>,
) -> (RunningParticipant, ParticipantClient<Channel>) {
    start_with(dir, resource, None).await
}

impl Harness {
    async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let resource = Arc::new(TestResource::default());
        let (running, client) = start_on(dir.path(), resource.clone()).await;
        Harness {
            dir,
            resource,
            running: Some(running),
            client,
        }
    }

    fn running(&self) -> &RunningParticipant {
        self.running.as_ref().unwrap()
    }

    /// Stops and starts again on the same file with a fresh resource.
    async fn restart(&mut self) {
        self.running.take().unwrap().shutdown().await;
        self.start_again().await;
    }

    async fn start_again(&mut self) {
        self.resource = Arc::new(TestResource::default());
        let (running, client) = start_on(self.dir.path(), self.resource.clone()).await;
        self.running = Some(running);
        self.client = client;
    }

    async fn prepare(
        &self,
        txn: &str,
        payload: &[u8],
        remaining_ms: u32,
    ) -> Result<(pb::Vote, String), tonic::Status> {
        let r = self
            .client
            .clone()
            .prepare(pb::PrepareRequest {
                txn_id: txn.into(),
                participant: NAME.into(),
                payload: payload.to_vec(),
                remaining_ms,
            })
            .await?
            .into_inner();
        Ok((pb::Vote::try_from(r.vote).unwrap(), r.reason))
    }

    async fn commit(&self, txn: &str) -> Result<(), tonic::Status> {
        self.client
            .clone()
            .commit(pb::CommitRequest {
                txn_id: txn.into(),
                participant: NAME.into(),
            })
            .await
            .map(|_| ())
    }

    async fn abort(&self, txn: &str) -> Result<(), tonic::Status> {
        self.client
            .clone()
            .abort(pb::AbortRequest {
                txn_id: txn.into(),
                participant: NAME.into(),
                reason: "test abort".into(),
            })
            .await
            .map(|_| ())
    }

    fn state(&self, txn: &str) -> Option<BranchState> {
        self.running().log().get(txn).unwrap().map(|r| r.state)
    }
}

/// The test resource's rows, read from the file directly (after shutdown).
fn kv_rows(dir: &Path) -> Vec<String> {
    let db = redb::Database::open(dir.join(dtc_participant::DATABASE_FILE)).unwrap();
    let tx = db.begin_read().unwrap();
    let t = match tx.open_table(KV) {
        Ok(t) => t,
        Err(_) => return vec![],
    };
    t.iter()
        .unwrap()
        .map(|r| r.unwrap().0.value().to_string())
        .collect()
}

const T: u32 = 5000;

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test took over 60 s")
}

#[tokio::test]
async fn duplicate_prepare_commit_and_abort_get_the_recorded_answer_and_run_once() {
    bounded(async {
        let h = Harness::start().await;
        assert_eq!(
            h.prepare("t1", b"x", T).await.unwrap().0,
            pb::Vote::Prepared
        );
        assert_eq!(
            h.prepare("t1", b"x", T).await.unwrap().0,
            pb::Vote::Prepared
        );
        assert_eq!(h.resource.count("t1", "prepare"), 1);
        assert_eq!(h.state("t1"), Some(BranchState::Prepared));
        h.commit("t1").await.unwrap();
        h.commit("t1").await.unwrap();
        assert_eq!(h.resource.count("t1", "commit"), 1);
        // A late duplicate prepare after the commit gets the recorded vote.
        assert_eq!(
            h.prepare("t1", b"x", T).await.unwrap().0,
            pb::Vote::Prepared
        );
        assert_eq!(h.resource.count("t1", "prepare"), 1);
        // Abort after commit contradicts the decision.
        let e = h.abort("t1").await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("committed"), "{e:?}");
        assert_eq!(h.resource.count("t1", "abort"), 0);
        assert_eq!(h.state("t1"), Some(BranchState::Committed));

        // And the abort path, duplicated.
        assert_eq!(
            h.prepare("t2", b"x", T).await.unwrap().0,
            pb::Vote::Prepared
        );
        h.abort("t2").await.unwrap();
        h.abort("t2").await.unwrap();
        assert_eq!(h.resource.count("t2", "abort"), 1);
        let e = h.commit("t2").await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("aborted"), "{e:?}");
        assert_eq!(h.resource.count("t2", "commit"), 0);
        let (vote, reason) = h.prepare("t2", b"x", T).await.unwrap();
        assert_eq!(
            vote,
            pb::Vote::Abort,
            "a prepare after the abort is refused"
        );
        assert!(reason.contains("test abort"), "{reason}");
        h.running.unwrap().shutdown().await;
        assert_eq!(kv_rows(h.dir.path()), vec!["done:t1".to_string()]);
    })
    .await
}

#[tokio::test]
async fn concurrent_duplicate_prepares_run_the_resource_once() {
    bounded(async {
        let h = Harness::start().await;
        let votes = futures::future::join_all((0..32).map(|_| h.prepare("same", b"x", T))).await;
        for v in votes {
            assert_eq!(v.unwrap().0, pb::Vote::Prepared);
        }
        assert_eq!(h.resource.count("same", "prepare"), 1);
        let acks = futures::future::join_all((0..16).map(|_| h.commit("same"))).await;
        assert!(acks.iter().all(|a| a.is_ok()), "{acks:?}");
        assert_eq!(h.resource.count("same", "commit"), 1);
    })
    .await
}

#[tokio::test]
async fn abort_before_prepare_leaves_a_tombstone_so_a_late_prepare_votes_abort() {
    bounded(async {
        let h = Harness::start().await;
        h.abort("early").await.unwrap();
        assert_eq!(h.state("early"), Some(BranchState::Tombstone));
        let (vote, reason) = h.prepare("early", b"x", T).await.unwrap();
        assert_eq!(vote, pb::Vote::Abort);
        assert!(reason.contains("before it was prepared"), "{reason}");
        assert_eq!(
            h.resource.count("early", "prepare"),
            0,
            "the resource never ran"
        );
        h.abort("early").await.unwrap();
        assert_eq!(
            h.commit("early").await.unwrap_err().code(),
            Code::FailedPrecondition
        );
        assert_eq!(h.state("early"), Some(BranchState::Tombstone));
    })
    .await
}

#[tokio::test]
async fn commit_for_an_unknown_transaction_is_refused_and_never_acknowledged() {
    bounded(async {
        let h = Harness::start().await;
        for _ in 0..3 {
            let e = h.commit("ghost").await.unwrap_err();
            assert_eq!(e.code(), Code::FailedPrecondition);
            assert!(e.message().contains("no record"), "{e:?}");
        }
        assert_eq!(h.state("ghost"), None, "a refused commit records nothing");
        assert_eq!(h.resource.count("ghost", "commit"), 0);
    })
    .await
}

#[tokio::test]
async fn refusals_discard_the_resource_changes_and_are_recorded() {
    bounded(async {
        let h = Harness::start().await;
        let (v, reason) = h.prepare("no", b"abort", T).await.unwrap();
        assert_eq!((v, reason.as_str()), (pb::Vote::Abort, "test says no"));
        let (v, reason) = h.prepare("err", b"err", T).await.unwrap();
        assert_eq!(v, pb::Vote::Abort);
        assert!(reason.contains("disk on fire"), "{reason}");
        let (v, reason) = h.prepare("boom", b"panic", T).await.unwrap();
        assert_eq!(v, pb::Vote::Abort);
        assert!(reason.contains("panicked"), "{reason}");
        assert_eq!(
            h.prepare("ro", b"ro", T).await.unwrap().0,
            pb::Vote::ReadOnly
        );
        // Recorded: duplicates get the same answers without running again.
        assert_eq!(
            h.prepare("no", b"abort", T).await.unwrap().1,
            "test says no"
        );
        assert_eq!(
            h.prepare("ro", b"ro", T).await.unwrap().0,
            pb::Vote::ReadOnly
        );
        assert_eq!(h.resource.count("no", "prepare"), 1);
        assert_eq!(h.resource.count("ro", "prepare"), 1);
        assert_eq!(h.state("no"), Some(BranchState::Aborted));
        assert_eq!(h.state("ro"), Some(BranchState::ReadOnly));
        // The coordinator's abort of a refused branch is simply acknowledged.
        h.abort("no").await.unwrap();
        assert_eq!(h.resource.count("no", "abort"), 0);
        // Still serving after the panic.
        assert_eq!(
            h.prepare("after", b"x", T).await.unwrap().0,
            pb::Vote::Prepared
        );
        h.running.unwrap().shutdown().await;
        assert_eq!(kv_rows(h.dir.path()), vec!["pending:after".to_string()]);
    })
    .await
}

#[tokio::test]
async fn no_time_left_votes_abort_before_preparing_but_never_after() {
    bounded(async {
        let h = Harness::start().await;
        let (v, reason) = h.prepare("late", b"x", 0).await.unwrap();
        assert_eq!(v, pb::Vote::Abort);
        assert!(reason.contains("deadline"), "{reason}");
        assert_eq!(h.resource.count("late", "prepare"), 0);
        // Once prepared, a duplicate with no time left still says prepared
        // (corner case 13: no unilateral abort after the vote).
        assert_eq!(
            h.prepare("ok", b"x", T).await.unwrap().0,
            pb::Vote::Prepared
        );
        assert_eq!(
            h.prepare("ok", b"x", 0).await.unwrap().0,
            pb::Vote::Prepared
        );
    })
    .await
}

#[tokio::test]
async fn calls_for_another_participant_name_or_without_an_id_are_refused() {
    bounded(async {
        let h = Harness::start().await;
        let e = h
            .client
            .clone()
            .prepare(pb::PrepareRequest {
                txn_id: "t".into(),
                participant: "other".into(),
                payload: vec![],
                remaining_ms: T,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        let e = h.prepare("", b"x", T).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        // The coordinator's rule for ids, and only it: a space is refused,
        // 128 bytes pass, 129 do not.
        let e = h.prepare("has space", b"x", T).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("not allowed"), "{e:?}");
        h.prepare(&"a".repeat(128), b"x", T).await.unwrap();
        let e = h.prepare(&"a".repeat(129), b"x", T).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    })
    .await
}

#[tokio::test]
async fn prepared_transactions_survive_a_restart_and_are_handed_to_recover() {
    bounded(async {
        let mut h = Harness::start().await;
        h.prepare("p1", b"alpha", T).await.unwrap();
        h.prepare("p2", b"beta", T).await.unwrap();
        h.commit("p2").await.unwrap();
        h.abort("gone").await.unwrap();
        h.restart().await;
        let recovered = h.resource.recovered.lock().unwrap().clone();
        assert_eq!(
            recovered,
            vec![PreparedTxn {
                txn_id: "p1".into(),
                payload: b"alpha".to_vec()
            }]
        );
        assert_eq!(h.state("p1"), Some(BranchState::Prepared));
        assert_eq!(h.state("p2"), Some(BranchState::Committed));
        assert_eq!(h.state("gone"), Some(BranchState::Tombstone));
        // Decided but maybe not acknowledged: the coordinator resends, and
        // the duplicate is acknowledged without applying twice.
        h.commit("p2").await.unwrap();
        assert_eq!(h.resource.count("p2", "commit"), 0);
        h.commit("p1").await.unwrap();
        assert_eq!(h.resource.count("p1", "commit"), 1);
        h.running.take().unwrap().shutdown().await;
        let mut rows = kv_rows(h.dir.path());
        rows.sort();
        assert_eq!(rows, vec!["done:p1".to_string(), "done:p2".to_string()]);
    })
    .await
}

#[tokio::test]
async fn crash_before_the_prepare_record_is_written_leaves_no_record() {
    bounded(async {
        let mut h = Harness::start().await;
        let (release, gate) = std::sync::mpsc::channel();
        *h.resource.gate.lock().unwrap() = Some(gate);
        let entered = h.resource.entered.notified();
        let pending = {
            let c = h.client.clone();
            tokio::spawn(async move {
                let mut c = c;
                c.prepare(pb::PrepareRequest {
                    txn_id: "mid".into(),
                    participant: NAME.into(),
                    payload: b"gate".to_vec(),
                    remaining_ms: T,
                })
                .await
            })
        };
        entered.await; // the resource is inside prepare, the record is not written
        // Poll the kill once so its first, synchronous step (stopping the
        // writer) has happened before the resource is let go; a spawned task
        // might not have run yet, and the writer would then finish normally.
        let mut killing = Box::pin(h.running.take().unwrap().kill());
        let killed = tokio::select! {
            biased;
            _ = &mut killing => true,
            _ = std::future::ready(()) => false,
        };
        release.send(()).unwrap();
        if !killed {
            killing.await;
        }
        let answer = pending.await.unwrap();
        assert!(
            answer.is_err(),
            "a killed participant must not vote: {answer:?}"
        );

        h.start_again().await;
        assert_eq!(h.state("mid"), None, "nothing was recorded");
        assert!(h.resource.recovered.lock().unwrap().is_empty());
        // What the coordinator then does: commit is impossible (it never saw a
        // yes vote, but if it did, refusing is right); abort leaves a tombstone.
        assert_eq!(
            h.commit("mid").await.unwrap_err().code(),
            Code::FailedPrecondition
        );
        h.abort("mid").await.unwrap();
        assert_eq!(h.prepare("mid", b"x", T).await.unwrap().0, pb::Vote::Abort);
        h.running.take().unwrap().shutdown().await;
        assert!(
            kv_rows(h.dir.path()).is_empty(),
            "the resource's change was not kept"
        );
    })
    .await
}

/// Server reflection answers in both protocol versions (many tools speak
/// only v1alpha) and lists what the participant serves, nothing else.
#[tokio::test]
async fn the_server_lists_its_services_by_reflection_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1, v1alpha};
    bounded(async {
        let h = Harness::start().await;
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", h.running().local_addr()))
                .unwrap()
                .connect_lazy();
        let want = [
            "dtc.v1.Participant",
            "dtc.v1.ParticipantQuery",
            "grpc.health.v1.Health",
        ];

        let mut c = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
        let req = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        };
        let mut stream = c
            .server_reflection_info(futures::stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let r = stream.message().await.unwrap().unwrap();
        let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(l)) =
            r.message_response
        else {
            panic!("v1: not a service list: {r:?}");
        };
        let mut got: Vec<String> = l.service.into_iter().map(|s| s.name).collect();
        got.sort();
        assert_eq!(got, want, "v1");

        let mut c = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
        let req = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        };
        let mut stream = c
            .server_reflection_info(futures::stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let r = stream.message().await.unwrap().unwrap();
        let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(l)) =
            r.message_response
        else {
            panic!("v1alpha: not a service list: {r:?}");
        };
        let mut got: Vec<String> = l.service.into_iter().map(|s| s.name).collect();
        got.sort();
        assert_eq!(got, want, "v1alpha");
    })
    .await
}

#[tokio::test]
async fn the_server_answers_grpc_health_checks() {
    bounded(async {
        let h = Harness::start().await;
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", h.running().local_addr()))
                .unwrap()
                .connect_lazy();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        for service in ["", "dtc.v1.Participant"] {
            let r = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                r.status,
                tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
                "service {service:?}"
            );
        }
    })
    .await
}

/// `GET /metrics` on `addr`, the body.
async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn metrics_count_votes_and_decisions_and_show_what_is_in_doubt() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let db = dtc_participant::open_database(dir.path()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = ParticipantServer::builder(NAME, db, TestResource::default())
            .metrics_listen("127.0.0.1:0".parse().unwrap())
            .start(listener)
            .await
            .unwrap();
        let metrics = running.metrics_addr().expect("metrics are served");
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", running.local_addr()))
                .unwrap()
                .connect_lazy();
        let mut client = ParticipantClient::new(channel);
        let prepare = |txn: &str, payload: &[u8]| pb::PrepareRequest {
            txn_id: txn.into(),
            participant: NAME.into(),
            payload: payload.to_vec(),
            remaining_ms: 5000,
        };
        client.prepare(prepare("m1", b"x")).await.unwrap();
        client.prepare(prepare("m2", b"x")).await.unwrap();
        client.prepare(prepare("m3", b"abort")).await.unwrap();
        let body = scrape(metrics).await;
        assert_eq!(
            sample(&body, "dtc_in_doubt_transactions"),
            Some(2.0),
            "{body}"
        );
        assert_eq!(
            sample(&body, r#"dtc_participant_prepares_total{vote="prepared"}"#),
            Some(2.0),
            "{body}"
        );
        assert_eq!(
            sample(&body, r#"dtc_participant_prepares_total{vote="abort"}"#),
            Some(1.0),
            "{body}"
        );
        assert_eq!(
            sample(&body, "dtc_participant_prepare_duration_seconds_count"),
            Some(3.0),
            "{body}"
        );

        client
            .commit(pb::CommitRequest {
                txn_id: "m1".into(),
                participant: NAME.into(),
            })
            .await
            .unwrap();
        client
            .abort(pb::AbortRequest {
                txn_id: "m2".into(),
                participant: NAME.into(),
                reason: "r".into(),
            })
            .await
            .unwrap();
        let body = scrape(metrics).await;
        assert_eq!(
            sample(&body, "dtc_in_doubt_transactions"),
            Some(0.0),
            "{body}"
        );
        assert_eq!(
            sample(
                &body,
                r#"dtc_participant_decisions_total{decision="commit"}"#
            ),
            Some(1.0),
            "{body}"
        );
        assert_eq!(
            sample(
                &body,
                r#"dtc_participant_decisions_total{decision="abort"}"#
            ),
            Some(1.0),
            "{body}"
        );
        running.shutdown().await;
    })
    .await
}

/// The writer's queue is bounded: while the writer is busy, calls past
/// `max_queued` are refused with RESOURCE_EXHAUSTED at once (a prepare so
/// refused counts as an abort vote), and the queued ones still complete.
#[tokio::test]
async fn calls_past_the_writer_queue_bound_are_refused_not_queued() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let db = dtc_participant::open_database(dir.path()).unwrap();
        let resource = Arc::new(TestResource::default());
        let (release, gate) = std::sync::mpsc::channel();
        *resource.gate.lock().unwrap() = Some(gate);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = ParticipantServer::builder(NAME, db, resource.clone())
            .max_queued(2)
            .start(listener)
            .await
            .unwrap();
        let client = ParticipantClient::new(client_channel(&running));
        let call = |txn: &str, payload: &[u8]| {
            let mut c = client.clone();
            let req = pb::PrepareRequest {
                txn_id: txn.into(),
                participant: NAME.into(),
                payload: payload.to_vec(),
                remaining_ms: 20_000,
            };
            async move { c.prepare(req).await.map(|r| r.into_inner().vote) }
        };
        // The writer is busy inside the resource.
        let entered = resource.entered.notified();
        let gated = tokio::spawn(call("gated", b"gate"));
        entered.await;
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..5 {
            calls.spawn(call(&format!("q{i}"), b"x"));
        }
        // While the writer is held, nothing queued can finish: the first
        // three answers are the refusals of the calls that found it full.
        for _ in 0..3 {
            let status = calls
                .join_next()
                .await
                .expect("five calls")
                .unwrap()
                .expect_err("a refusal while the writer is busy");
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert!(status.message().contains("overloaded"), "{status:?}");
        }
        assert_eq!(calls.len(), 2, "two calls are queued");
        release.send(()).unwrap();
        assert_eq!(gated.await.unwrap().unwrap(), pb::Vote::Prepared as i32);
        while let Some(queued) = calls.join_next().await {
            assert_eq!(queued.unwrap().unwrap(), pb::Vote::Prepared as i32);
        }
        running.shutdown().await;
    })
    .await
}

async fn start_with(
    dir: &Path,
    resource: Arc<TestResource>,
    reserve: Option<u64>,
) -> (RunningParticipant, ParticipantClient<Channel>) {
    let db = dtc_participant::open_database(dir).expect("open the database");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut builder = ParticipantServer::builder(NAME, db, resource);
    if let Some(bytes) = reserve {
        builder = builder.disk_reserve(dir, bytes);
    }
    let running = builder
        .start(listener)
        .await
        .expect("start the participant");
    let client = ParticipantClient::new(client_channel(&running));
    (running, client)
}

async fn start_with_reserve(
    dir: &Path,
    reserve: Option<u64>,
) -> (
    RunningParticipant,
    ParticipantClient<Channel>,
    Arc<TestResource>,
) {
    let resource = Arc::new(TestResource::default());
    let (running, client) = start_with(dir, resource.clone(), reserve).await;
    (running, client, resource)
}

fn client_channel(running: &RunningParticipant) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", running.local_addr()))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

fn prepare_req(txn: &str, payload: &[u8]) -> pb::PrepareRequest {
    pb::PrepareRequest {
        txn_id: txn.into(),
        participant: NAME.into(),
        payload: payload.to_vec(),
        remaining_ms: T,
    }
}

fn commit_req(txn: &str) -> pb::CommitRequest {
    pb::CommitRequest {
        txn_id: txn.into(),
        participant: NAME.into(),
    }
}

#[tokio::test]
async fn below_the_disk_reserve_prepares_vote_abort_decisions_still_commit_and_space_returning_ends_it()
 {
    let Some(disk) = SmallDisk::mount("16m") else {
        return;
    };
    bounded(async {
        const RESERVE: u64 = 4 * 1024 * 1024;
        let (running, mut client, resource) = start_with_reserve(disk.path(), Some(RESERVE)).await;
        let vote = client
            .prepare(prepare_req("before", b"x"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(vote.vote, pb::Vote::Prepared as i32, "{vote:?}");

        disk.fill_until(RESERVE / 2);
        let vote = client
            .prepare(prepare_req("while-full", b"x"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(vote.vote, pb::Vote::Abort as i32, "{vote:?}");
        assert!(
            vote.reason.contains("disk nearly full")
                && vote.reason.contains(&disk.path().display().to_string()),
            "the reason names the disk: {}",
            vote.reason
        );
        assert_eq!(
            resource.count("while-full", "prepare"),
            0,
            "the resource is not asked"
        );
        // The transaction prepared before the disk filled still commits.
        client.commit(commit_req("before")).await.unwrap();
        assert_eq!(
            running.log().get("before").unwrap().map(|r| r.state),
            Some(BranchState::Committed)
        );

        // Space comes back: prepares are accepted again, with no restart.
        disk.free_the_ballast();
        let vote = client
            .prepare(prepare_req("after", b"x"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(vote.vote, pb::Vote::Prepared as i32, "{vote:?}");
        client.commit(commit_req("after")).await.unwrap();
        running.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_failed_write_stops_the_participant_which_recovers_what_was_durable_on_restart() {
    let Some(disk) = SmallDisk::mount("16m") else {
        return;
    };
    bounded(async {
        // No reserve: the disk fills to ENOSPC under a prepare.
        let (running, mut client, _) = start_with_reserve(disk.path(), None).await;
        let vote = client
            .prepare(prepare_req("durable", b"x"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(vote.vote, pb::Vote::Prepared as i32, "{vote:?}");
        disk.fill_until(0);
        // Large payloads, so that a write needs pages the disk no longer has.
        let big = vec![7u8; 512 * 1024];
        let mut refused = None;
        for i in 0..64 {
            match client
                .prepare(prepare_req(&format!("fill-{i}"), &big))
                .await
            {
                Ok(r) => assert_ne!(
                    r.get_ref().vote,
                    pb::Vote::Prepared as i32,
                    "nothing is voted prepared once the disk is full"
                ),
                Err(status) => {
                    refused = Some(status);
                    break;
                }
            }
        }
        let status = refused.expect("a prepare on a full disk fails");
        assert!(status.message().contains("storage"), "{status:?}");
        let why = tokio::time::timeout(Duration::from_secs(5), running.storage_failed())
            .await
            .expect("the participant reports its storage failure");
        assert!(!why.is_empty());
        let mut health =
            tonic_health::pb::health_client::HealthClient::new(client_channel(&running));
        for service in ["", "dtc.v1.Participant"] {
            let status = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            assert_eq!(
                status,
                tonic_health::pb::health_check_response::ServingStatus::NotServing as i32,
                "health of {service:?} after the storage failure"
            );
        }
        // Everything after the failure is refused, even what would fit.
        let err = client.commit(commit_req("durable")).await.unwrap_err();
        assert!(err.message().contains("restart"), "{err:?}");
        running.shutdown().await;

        // Space returns and the process restarts: what was durable is back.
        disk.free_the_ballast();
        let (running, mut client, resource) = start_with_reserve(disk.path(), None).await;
        assert_eq!(
            running.log().get("durable").unwrap().map(|r| r.state),
            Some(BranchState::Prepared)
        );
        assert_eq!(resource.recovered.lock().unwrap().len(), 1);
        client.commit(commit_req("durable")).await.unwrap();
        running.shutdown().await;
    })
    .await;
}

/// The participant log's table, as the SDK lays it out (what a damaged disk
/// or another program could leave in it).
const LOG_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("dtc_participant_log");
const PREPARED_TABLE: TableDefinition<&str, ()> = TableDefinition::new("dtc_participant_prepared");

#[tokio::test]
async fn a_damaged_log_record_is_an_error_naming_it_never_a_panic_or_a_rewrite() {
    bounded(async {
        let mut h = Harness::start().await;
        assert_eq!(
            h.prepare("ok", b"x", T).await.unwrap().0,
            pb::Vote::Prepared
        );
        h.running.take().unwrap().shutdown().await;
        // Garbage where a prepared record should be, and one that is cut short.
        let garbage: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        {
            let db =
                redb::Database::open(h.dir.path().join(dtc_participant::DATABASE_FILE)).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut log = tx.open_table(LOG_TABLE).unwrap();
                log.insert("damaged", garbage).unwrap();
                let whole = log.get("ok").unwrap().unwrap().value().to_vec();
                log.insert("cut", &whole[..whole.len() / 2]).unwrap();
                let mut prepared = tx.open_table(PREPARED_TABLE).unwrap();
                prepared.insert("damaged", ()).unwrap();
            }
            tx.commit().unwrap();
        }
        // Start-up reads every prepared record: it refuses, naming the record.
        let db = dtc_participant::open_database(h.dir.path()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = ParticipantServer::builder(NAME, db.clone(), Arc::new(TestResource::default()))
            .start(listener)
            .await
            .expect_err("a damaged prepared record stops the start");
        assert!(err.to_string().contains("damaged"), "{err}");
        // A read of either damaged record is an error; nothing was rewritten.
        let log = dtc_participant::ParticipantLog::new(db.clone());
        assert!(log.get("damaged").is_err());
        assert!(log.get("cut").is_err());
        let tx = db.begin_read().unwrap();
        let table = tx.open_table(LOG_TABLE).unwrap();
        assert_eq!(table.get("damaged").unwrap().unwrap().value(), garbage);
    })
    .await;
}
