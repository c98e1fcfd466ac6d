//! The ledger participant over real gRPC on loopback, with a fake
//! coordinator (InDoubt + RegisterParticipant) in the same process:
//! overdraft and lock refusals, locks after reopening the file, in-doubt
//! resolution after a restart, and a decided commit acknowledged again
//! after a restart without being applied twice.

use dtc_ledger::{Ledger, payload};
use dtc_participant::RunningParticipant;
use dtc_proto::v1 as pb;
use pb::ledger_client::LedgerClient;
use pb::participant_client::ParticipantClient;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

const NAME: &str = "bank";
const T: u32 = 5000;

// ---- a fake coordinator: answers outcome queries from a table ----

#[derive(Default)]
struct FakeState {
    outcomes: Mutex<HashMap<String, (pb::Outcome, String)>>,
    queries: AtomicUsize,
    registrations: Mutex<Vec<(String, String)>>,
    refuse_registrations: AtomicUsize,
}

#[derive(Clone, Default)]
struct Fake(Arc<FakeState>);

#[tonic::async_trait]
impl pb::in_doubt_server::InDoubt for Fake {
    async fn query_outcome(
        &self,
        request: Request<pb::QueryOutcomeRequest>,
    ) -> Result<Response<pb::QueryOutcomeResponse>, Status> {
        self.0.queries.fetch_add(1, Ordering::SeqCst);
        let id = request.into_inner().txn_id;
        let (outcome, reason) = self
            .0
            .outcomes
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .unwrap_or((pb::Outcome::Unspecified, String::new()));
        Ok(Response::new(pb::QueryOutcomeResponse {
            outcome: outcome as i32,
            reason,
        }))
    }
}

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for Fake {
    async fn execute(
        &self,
        _: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_transaction(
        &self,
        _: Request<pb::GetTransactionRequest>,
    ) -> Result<Response<pb::GetTransactionResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_transactions(
        &self,
        _: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn cluster_status(
        &self,
        _: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn register_participant(
        &self,
        request: Request<pb::RegisterParticipantRequest>,
    ) -> Result<Response<pb::RegisterParticipantResponse>, Status> {
        let r = request.into_inner();
        self.0
            .registrations
            .lock()
            .unwrap()
            .push((r.name, r.endpoint));
        let refuse = self.0.refuse_registrations.load(Ordering::SeqCst);
        if refuse > 0 {
            self.0
                .refuse_registrations
                .store(refuse - 1, Ordering::SeqCst);
            return Err(Status::unavailable("no leader yet"));
        }
        Ok(Response::new(pb::RegisterParticipantResponse {}))
    }
}

async fn start_fake() -> (Fake, String) {
    let fake = Fake::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let svc = fake.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::in_doubt_server::InDoubtServer::new(svc.clone()))
            .add_service(pb::coordinator_server::CoordinatorServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (fake, addr)
}

// ---- a ledger participant that can be restarted on the same directory ----

struct Bank {
    dir: tempfile::TempDir,
    coordinator: Option<String>,
    running: Option<RunningParticipant>,
    ledger: Option<Ledger>,
    participant: ParticipantClient<Channel>,
    api: LedgerClient<Channel>,
}

fn channel(addr: std::net::SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

async fn start_bank_on(
    dir: &Path,
    coordinator: Option<&str>,
) -> (
    RunningParticipant,
    Ledger,
    ParticipantClient<Channel>,
    LedgerClient<Channel>,
) {
    let (mut builder, ledger) = dtc_ledger::participant(NAME, dir).expect("open the ledger");
    if let Some(c) = coordinator {
        // The periodic pass is slow on purpose: tests drive passes themselves.
        builder = builder
            .coordinators([c])
            .in_doubt_interval(Duration::from_secs(3600));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = builder.start(listener).await.expect("start the ledger");
    let ch = channel(running.local_addr());
    (
        running,
        ledger,
        ParticipantClient::new(ch.clone()),
        LedgerClient::new(ch),
    )
}

impl Bank {
    async fn start(coordinator: Option<String>) -> Bank {
        let dir = tempfile::tempdir().unwrap();
        let (running, ledger, participant, api) =
            start_bank_on(dir.path(), coordinator.as_deref()).await;
        Bank {
            dir,
            coordinator,
            running: Some(running),
            ledger: Some(ledger),
            participant,
            api,
        }
    }

    async fn stop(&mut self) {
        self.ledger = None;
        self.running.take().unwrap().shutdown().await;
    }

    async fn start_again(&mut self) {
        let (running, ledger, participant, api) =
            start_bank_on(self.dir.path(), self.coordinator.as_deref()).await;
        self.running = Some(running);
        self.ledger = Some(ledger);
        self.participant = participant;
        self.api = api;
    }

    fn ledger(&self) -> &Ledger {
        self.ledger.as_ref().unwrap()
    }

    async fn prepare(&self, txn: &str, entries: &[(&str, i64)]) -> (pb::Vote, String) {
        self.prepare_raw(txn, payload(entries)).await
    }

    async fn prepare_raw(&self, txn: &str, payload: Vec<u8>) -> (pb::Vote, String) {
        let r = self
            .participant
            .clone()
            .prepare(pb::PrepareRequest {
                txn_id: txn.into(),
                participant: NAME.into(),
                payload,
                remaining_ms: T,
            })
            .await
            .expect("prepare answered")
            .into_inner();
        (pb::Vote::try_from(r.vote).unwrap(), r.reason)
    }

    async fn commit(&self, txn: &str) -> Result<(), Status> {
        self.participant
            .clone()
            .commit(pb::CommitRequest {
                txn_id: txn.into(),
                participant: NAME.into(),
            })
            .await
            .map(|_| ())
    }

    async fn abort(&self, txn: &str) -> Result<(), Status> {
        self.participant
            .clone()
            .abort(pb::AbortRequest {
                txn_id: txn.into(),
                participant: NAME.into(),
                reason: "test".into(),
            })
            .await
            .map(|_| ())
    }

    /// Prepare + commit, as a coordinator would for a one-branch transaction.
    async fn apply(&self, txn: &str, entries: &[(&str, i64)]) {
        assert_eq!(self.prepare(txn, entries).await.0, pb::Vote::Prepared);
        self.commit(txn).await.unwrap();
    }

    async fn balance(&self, account: &str) -> (i64, String) {
        let r = self
            .api
            .clone()
            .balance(pb::BalanceRequest {
                account: account.into(),
            })
            .await
            .unwrap()
            .into_inner();
        (r.balance, r.locked_by)
    }

    async fn audit(&self) -> Vec<pb::AuditEntry> {
        self.api
            .clone()
            .audit(pb::AuditRequest {
                after_txn_id: String::new(),
                limit: 0,
                include_prepared: true,
            })
            .await
            .unwrap()
            .into_inner()
            .transactions
    }
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test took over 60 s")
}

#[tokio::test]
async fn overdraft_is_refused_and_committed_deltas_are_applied() {
    bounded(async {
        let b = Bank::start(None).await;
        b.apply("fund", &[("alice", 100)]).await;
        let (vote, reason) = b.prepare("big", &[("alice", -101)]).await;
        assert_eq!(vote, pb::Vote::Abort);
        assert!(reason.contains("insufficient funds"), "{reason}");
        // The balance after all of this transaction's deltas counts.
        let (vote, _) = b.prepare("net", &[("alice", -150), ("alice", 60)]).await;
        assert_eq!(vote, pb::Vote::Prepared, "-150 + 60 leaves 10");
        b.commit("net").await.unwrap();
        assert_eq!(b.balance("alice").await, (10, String::new()));
        // Exactly to zero is fine.
        b.apply("drain", &[("alice", -10), ("bob", 10)]).await;
        assert_eq!(b.balance("alice").await.0, 0);
        assert_eq!(b.balance("bob").await.0, 10);
        assert_eq!(b.balance("nobody").await.0, 0);
        let audit = b.audit().await;
        let committed: Vec<&str> = audit
            .iter()
            .filter(|e| e.outcome == pb::AuditOutcome::Committed as i32)
            .map(|e| e.txn_id.as_str())
            .collect();
        assert_eq!(committed, vec!["drain", "fund", "net"]);
        assert!(
            audit
                .iter()
                .any(|e| e.txn_id == "big" && e.outcome == pb::AuditOutcome::Aborted as i32)
        );
    })
    .await
}

#[tokio::test]
async fn an_account_held_by_a_prepared_transaction_is_refused_at_once() {
    bounded(async {
        let b = Bank::start(None).await;
        b.apply("fund", &[("alice", 100), ("bob", 100)]).await;
        assert_eq!(
            b.prepare("hold", &[("alice", -10), ("bob", 10)]).await.0,
            pb::Vote::Prepared
        );
        assert_eq!(
            b.balance("alice").await,
            (100, "hold".to_string()),
            "prepared is not visible"
        );
        let started = Instant::now();
        let (vote, reason) = b.prepare("other", &[("bob", 1)]).await;
        assert_eq!(vote, pb::Vote::Abort);
        assert!(
            reason.contains("held by prepared transaction hold"),
            "{reason}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "no waiting for the lock"
        );
        // Unrelated accounts are free.
        assert_eq!(
            b.prepare("carol", &[("carol", 5)]).await.0,
            pb::Vote::Prepared
        );
        b.abort("hold").await.unwrap();
        assert_eq!(
            b.balance("alice").await,
            (100, String::new()),
            "abort released and changed nothing"
        );
        assert_eq!(
            b.prepare("again", &[("bob", 1)]).await.0,
            pb::Vote::Prepared
        );
    })
    .await
}

#[tokio::test]
async fn bad_payloads_vote_abort_and_empty_ones_are_read_only() {
    bounded(async {
        let b = Bank::start(None).await;
        let (vote, reason) = b.prepare_raw("junk", vec![0xff, 0xff, 0xff]).await;
        assert_eq!(vote, pb::Vote::Abort);
        assert!(reason.contains("undecodable"), "{reason}");
        let (vote, reason) = b.prepare("noname", &[("", 5)]).await;
        assert_eq!(vote, pb::Vote::Abort);
        assert!(reason.contains("account"), "{reason}");
        let (vote, reason) = b.prepare("overflow", &[("x", i64::MAX), ("x", 1)]).await;
        assert_eq!(vote, pb::Vote::Abort);
        assert!(reason.contains("overflow"), "{reason}");
        assert_eq!(b.prepare("empty", &[]).await.0, pb::Vote::ReadOnly);
        assert!(b.ledger().locks().unwrap().is_empty());
    })
    .await
}

#[tokio::test]
async fn locks_come_back_after_reopening_the_file() {
    bounded(async {
        let mut b = Bank::start(None).await;
        b.apply("fund", &[("alice", 50)]).await;
        assert_eq!(
            b.prepare("held", &[("alice", -20), ("bob", 20)]).await.0,
            pb::Vote::Prepared
        );
        b.stop().await;

        // The file alone, without a server: the reservation is on disk.
        {
            let db = dtc_participant::open_database(b.dir.path()).unwrap();
            let ledger = Ledger::new(db).unwrap();
            let locks = ledger.locks().unwrap();
            assert_eq!(locks.get("alice").map(String::as_str), Some("held"));
            assert_eq!(locks.get("bob").map(String::as_str), Some("held"));
        }

        b.start_again().await;
        assert_eq!(b.balance("alice").await, (50, "held".to_string()));
        let (vote, reason) = b.prepare("thief", &[("alice", -50)]).await;
        assert_eq!(
            vote,
            pb::Vote::Abort,
            "the lock is held before the first prepare is served"
        );
        assert!(reason.contains("held"), "{reason}");
        b.commit("held").await.unwrap();
        assert_eq!(b.balance("alice").await, (30, String::new()));
        assert_eq!(b.balance("bob").await, (20, String::new()));
    })
    .await
}

#[tokio::test]
async fn prepared_then_restarted_keeps_its_locks_until_the_in_doubt_query_resolves_it() {
    bounded(async {
        let (fake, addr) = start_fake().await;
        let mut b = Bank::start(Some(addr)).await;
        b.apply("fund", &[("alice", 100)]).await;
        assert_eq!(
            b.prepare("doubt", &[("alice", -40), ("bob", 40)]).await.0,
            pb::Vote::Prepared
        );
        assert_eq!(
            b.prepare("doubt2", &[("carol", 7)]).await.0,
            pb::Vote::Prepared
        );
        b.stop().await; // the decision never arrives
        b.start_again().await;

        // Before any decision: still held, and the coordinator says "not yet".
        assert_eq!(b.balance("alice").await, (100, "doubt".to_string()));
        let pass = b.running.as_ref().unwrap().resolve_in_doubt().await;
        assert_eq!((pass.asked, pass.undecided), (2, 2), "{pass:?}");
        assert_eq!(
            b.balance("alice").await,
            (100, "doubt".to_string()),
            "no unilateral abort"
        );

        fake.0
            .outcomes
            .lock()
            .unwrap()
            .insert("doubt".into(), (pb::Outcome::Committed, String::new()));
        fake.0
            .outcomes
            .lock()
            .unwrap()
            .insert("doubt2".into(), (pb::Outcome::Aborted, "timed out".into()));
        // (The start-up pass may be finishing concurrently; count the outcome.)
        let pass = b.running.as_ref().unwrap().resolve_in_doubt().await;
        assert_eq!(pass.failed, 0, "{pass:?}");
        assert_eq!(b.balance("alice").await, (60, String::new()));
        assert_eq!(b.balance("bob").await, (40, String::new()));
        assert_eq!(b.balance("carol").await, (0, String::new()));
        // The late Commit from the coordinator is a duplicate now.
        b.commit("doubt").await.unwrap();
        assert_eq!(b.balance("alice").await.0, 60);
        assert!(fake.0.queries.load(Ordering::SeqCst) >= 4);
        let pass = b.running.as_ref().unwrap().resolve_in_doubt().await;
        assert_eq!(pass.asked, 0, "nothing left in doubt");
    })
    .await
}

#[tokio::test]
async fn the_start_up_pass_resolves_in_doubt_transactions_by_itself() {
    bounded(async {
        let (fake, addr) = start_fake().await;
        let mut b = Bank::start(Some(addr)).await;
        assert_eq!(b.prepare("d", &[("zed", 5)]).await.0, pb::Vote::Prepared);
        b.stop().await;
        fake.0
            .outcomes
            .lock()
            .unwrap()
            .insert("d".into(), (pb::Outcome::Committed, String::new()));
        b.start_again().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if b.balance("zed").await == (5, String::new()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the start-up pass did not resolve the transaction"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_decided_commit_not_acknowledged_before_a_restart_is_acknowledged_again_and_applied_once()
{
    bounded(async {
        let mut b = Bank::start(None).await;
        b.apply("fund", &[("alice", 100)]).await;
        assert_eq!(
            b.prepare("t", &[("alice", -30), ("bob", 30)]).await.0,
            pb::Vote::Prepared
        );
        b.commit("t").await.unwrap(); // suppose this acknowledgement was lost
        b.stop().await;
        b.start_again().await;
        for _ in 0..3 {
            b.commit("t").await.unwrap();
        }
        assert_eq!(b.balance("alice").await.0, 70);
        assert_eq!(b.balance("bob").await.0, 30);
        let audit = b.audit().await;
        assert_eq!(audit.iter().filter(|e| e.txn_id == "t").count(), 1);
        let total: i64 = b.ledger().balances().unwrap().values().sum();
        assert_eq!(total, 100);
    })
    .await
}

#[tokio::test]
async fn registration_is_retried_until_the_coordinators_accept_it() {
    bounded(async {
        let (fake, addr) = start_fake().await;
        fake.0.refuse_registrations.store(3, Ordering::SeqCst);
        let b = Bank::start(Some(addr)).await;
        let running = b.running.as_ref().unwrap();
        assert!(
            running.wait_registered(Duration::from_secs(30)).await,
            "never registered"
        );
        let regs = fake.0.registrations.lock().unwrap().clone();
        assert_eq!(regs.len(), 4, "{regs:?}");
        let expected = format!("http://{}", running.local_addr());
        assert!(
            regs.iter().all(|(n, e)| n == NAME && *e == expected),
            "{regs:?}"
        );
    })
    .await
}
