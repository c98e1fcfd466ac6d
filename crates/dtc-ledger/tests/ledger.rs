//! The ledger participant over real gRPC on loopback, with a fake
//! coordinator (InDoubt + RegisterParticipant) in the same process:
//! overdraft refusals, escrow reservations of concurrent transactions on one
//! account, reservations after reopening the file, the lock wait, in-doubt
//! resolution after a restart, and a decided commit acknowledged again
//! after a restart without being applied twice.

use dtc_ledger::{AccountBalance, Ledger, payload};
use dtc_participant::RunningParticipant;
use dtc_participant::redb::{ReadableDatabase, TableDefinition, TableHandle};
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
    lock_wait: Duration,
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
    lock_wait: Duration,
) -> (
    RunningParticipant,
    Ledger,
    ParticipantClient<Channel>,
    LedgerClient<Channel>,
) {
    let (mut builder, ledger) = dtc_ledger::participant(NAME, dir).expect("open the ledger");
    builder = builder.lock_wait(lock_wait);
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
        Self::start_with(coordinator, Duration::ZERO).await
    }

    async fn start_with(coordinator: Option<String>, lock_wait: Duration) -> Bank {
        let dir = tempfile::tempdir().unwrap();
        let (running, ledger, participant, api) =
            start_bank_on(dir.path(), coordinator.as_deref(), lock_wait).await;
        Bank {
            dir,
            coordinator,
            lock_wait,
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
            start_bank_on(self.dir.path(), self.coordinator.as_deref(), self.lock_wait).await;
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

    /// The account as `Ledger.Balance` reports it.
    async fn balance(&self, account: &str) -> AccountBalance {
        let r = self
            .api
            .clone()
            .balance(pb::BalanceRequest {
                account: account.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.locked_by, "", "no account is ever locked");
        AccountBalance {
            balance: r.balance,
            reserved: r.reserved,
            available: r.available,
            incoming: r.incoming,
        }
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
        assert_eq!(
            reason,
            "insufficient funds in account \"alice\": debit 101, available 100 \
             (balance 100, reserved 0): short by 1"
        );
        // The balance after all of this transaction's deltas counts.
        let (vote, _) = b.prepare("net", &[("alice", -150), ("alice", 60)]).await;
        assert_eq!(vote, pb::Vote::Prepared, "-150 + 60 leaves 10");
        b.commit("net").await.unwrap();
        assert_eq!(b.balance("alice").await, settled(10));
        // Exactly to zero is fine.
        b.apply("drain", &[("alice", -10), ("bob", 10)]).await;
        assert_eq!(b.balance("alice").await.balance, 0);
        assert_eq!(b.balance("bob").await.balance, 10);
        assert_eq!(b.balance("nobody").await.balance, 0);
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

/// An account with no prepared transaction on it.
fn settled(balance: i64) -> AccountBalance {
    AccountBalance {
        balance,
        reserved: 0,
        available: balance,
        incoming: 0,
    }
}

#[tokio::test]
async fn concurrent_transactions_on_one_account_all_prepare_while_the_funds_cover_them() {
    bounded(async {
        let b = Bank::start(None).await;
        b.apply("fund", &[("alice", 100), ("bob", 100)]).await;
        assert_eq!(
            b.prepare("t1", &[("alice", -10), ("bob", 10)]).await.0,
            pb::Vote::Prepared
        );
        assert_eq!(
            b.balance("alice").await,
            AccountBalance {
                balance: 100,
                reserved: 10,
                available: 90,
                incoming: 0
            },
            "a prepared debit is reserved, not applied"
        );
        assert_eq!(
            b.balance("bob").await,
            AccountBalance {
                balance: 100,
                reserved: 0,
                available: 100,
                incoming: 10
            },
            "a prepared credit is not spendable"
        );
        // Neither account is locked: more debits and credits on both prepare.
        assert_eq!(b.prepare("t2", &[("bob", 1)]).await.0, pb::Vote::Prepared);
        assert_eq!(
            b.prepare("t3", &[("alice", -90), ("bob", -100)]).await.0,
            pb::Vote::Prepared,
            "exactly the available funds"
        );
        // Now alice has nothing available: 100 - (10 + 90).
        let started = Instant::now();
        let (vote, reason) = b.prepare("t4", &[("alice", -1), ("carol", 1)]).await;
        assert_eq!(vote, pb::Vote::Abort);
        assert_eq!(
            reason,
            "insufficient funds in account \"alice\" until prepared transactions resolve: \
             debit 1, available 0 (balance 100, reserved 100): short by 1"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "no lock wait configured: no waiting"
        );
        // bob's incoming credits (11) do not cover a debit before they commit.
        let (vote, reason) = b.prepare("t5", &[("bob", -1)]).await;
        assert_eq!(vote, pb::Vote::Abort);
        assert!(reason.contains("short by 1"), "{reason}");
        // Aborting t1 releases its reservation (and its credit to bob).
        b.abort("t1").await.unwrap();
        assert_eq!(
            b.balance("alice").await,
            AccountBalance {
                balance: 100,
                reserved: 90,
                available: 10,
                incoming: 0
            }
        );
        assert_eq!(
            b.prepare("t6", &[("alice", -10)]).await.0,
            pb::Vote::Prepared
        );
        for t in ["t2", "t3", "t6"] {
            b.commit(t).await.unwrap();
        }
        assert_eq!(b.balance("alice").await, settled(0));
        assert_eq!(b.balance("bob").await, settled(1), "100 + 1 - 100");
        assert_eq!(b.balance("carol").await, settled(0));
        assert!(b.ledger().reservations().unwrap().is_empty());
    })
    .await
}

/// The shop of issue 12: every purchase debits one of eight buyers and
/// credits one shop account, six clients at a time. Under the old no-wait
/// locks most purchases were refused for a busy account; with escrow every
/// one prepares while the buyers' money lasts.
#[tokio::test]
async fn a_shop_account_credited_by_every_concurrent_purchase_refuses_none() {
    bounded(async {
        let b = Bank::start(None).await;
        let buyers: Vec<String> = (0..8).map(|i| format!("buyer-{i}")).collect();
        let fund: Vec<(&str, i64)> = buyers.iter().map(|a| (a.as_str(), 1000)).collect();
        b.apply("fund", &fund).await;
        let clients = (0..6).map(|c| {
            let (p, buyers) = (b.participant.clone(), buyers.clone());
            tokio::spawn(async move {
                let mut refused = Vec::new();
                for n in 0..100 {
                    let txn = format!("buy-{c}-{n}");
                    let buyer = &buyers[(c * 100 + n) % buyers.len()];
                    let r = p
                        .clone()
                        .prepare(pb::PrepareRequest {
                            txn_id: txn.clone(),
                            participant: NAME.into(),
                            payload: payload(&[(buyer, -10), ("shop", 10)]),
                            remaining_ms: T,
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    if r.vote != pb::Vote::Prepared as i32 {
                        refused.push(r.reason);
                        continue;
                    }
                    p.clone()
                        .commit(pb::CommitRequest {
                            txn_id: txn,
                            participant: NAME.into(),
                        })
                        .await
                        .unwrap();
                }
                refused
            })
        });
        let refused: Vec<String> = refusals_of(clients).await;
        assert!(refused.is_empty(), "{} refused: {refused:?}", refused.len());
        assert_eq!(b.balance("shop").await, settled(600 * 10));
        let total: i64 = b.ledger().balances().unwrap().values().sum();
        assert_eq!(total, 8 * 1000, "money moved, none created");
    })
    .await
}

/// Every task's refusals, in task order.
async fn refusals_of(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<Vec<String>>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for t in tasks.collect::<Vec<_>>() {
        out.extend(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn entries_on_one_account_net_out_and_a_net_debit_is_checked_against_the_available_funds() {
    bounded(async {
        let b = Bank::start(None).await;
        b.apply("fund", &[("alice", 50)]).await;
        assert_eq!(
            b.prepare("hold", &[("alice", -30)]).await.0,
            pb::Vote::Prepared
        );
        // -40 + 25 - 5 = -20: exactly the 20 available.
        assert_eq!(
            b.prepare("mix", &[("alice", -40), ("alice", 25), ("alice", -5)])
                .await
                .0,
            pb::Vote::Prepared
        );
        assert_eq!(b.balance("alice").await.reserved, 50);
        // A net credit reserves nothing, whatever its debit entries.
        assert_eq!(
            b.prepare("up", &[("alice", -1000), ("alice", 1001)])
                .await
                .0,
            pb::Vote::Prepared
        );
        assert_eq!(b.balance("alice").await.incoming, 1);
        // A net zero changes nothing and needs no funds.
        assert_eq!(
            b.prepare("zero", &[("alice", -7), ("alice", 7)]).await.0,
            pb::Vote::Prepared
        );
        for t in ["hold", "mix", "up", "zero"] {
            b.commit(t).await.unwrap();
        }
        assert_eq!(b.balance("alice").await, settled(1));
    })
    .await
}

#[tokio::test]
async fn with_a_lock_wait_a_debit_waits_for_the_reservations_ahead_of_it_without_blocking_others() {
    bounded(async {
        let b = Bank::start_with(None, Duration::from_secs(30)).await;
        b.apply("fund", &[("alice", 100)]).await;
        assert_eq!(
            b.prepare("first", &[("alice", -80)]).await.0,
            pb::Vote::Prepared
        );
        // 50 > 20 available, but it would fit if "first" aborted: it waits.
        let mut waiting = {
            let p = b.participant.clone();
            tokio::spawn(async move {
                let r = p
                    .clone()
                    .prepare(pb::PrepareRequest {
                        txn_id: "second".into(),
                        participant: NAME.into(),
                        payload: payload(&[("alice", -50)]),
                        remaining_ms: T * 6,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                (pb::Vote::try_from(r.vote).unwrap(), r.reason)
            })
        };
        // Other branches are served meanwhile (the writer is not blocked),
        // and a debit that no decision could make fit is refused at once.
        assert_eq!(
            b.prepare("other", &[("bob", 5)]).await.0,
            pb::Vote::Prepared
        );
        let (vote, reason) = b.prepare("huge", &[("alice", -101)]).await;
        assert_eq!(vote, pb::Vote::Abort);
        assert!(!reason.contains("until prepared"), "{reason}");
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut waiting)
                .await
                .is_err(),
            "the contended debit waits instead of voting"
        );
        b.abort("first").await.unwrap();
        let (vote, reason) = waiting.await.unwrap();
        assert_eq!(vote, pb::Vote::Prepared, "{reason}");
        assert_eq!(b.balance("alice").await.reserved, 50);

        // The coordinator's abort for a waiting prepare ends its wait: the
        // tombstone it records makes the prepare vote abort at once.
        let started = Instant::now();
        let mut gone = {
            let p = b.participant.clone();
            tokio::spawn(async move {
                let r = p
                    .clone()
                    .prepare(pb::PrepareRequest {
                        txn_id: "gone".into(),
                        participant: NAME.into(),
                        payload: payload(&[("alice", -60)]),
                        remaining_ms: T * 6,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                (pb::Vote::try_from(r.vote).unwrap(), r.reason)
            })
        };
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut gone)
                .await
                .is_err(),
            "60 > 50 available, but it would fit if \"second\" aborted: it waits"
        );
        b.abort("gone").await.unwrap();
        let (vote, reason) = gone.await.unwrap();
        assert_eq!(vote, pb::Vote::Abort);
        assert!(
            reason.contains("aborted before it was prepared"),
            "{reason}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not the 30 s wait"
        );

        b.commit("second").await.unwrap();
        assert_eq!(b.balance("alice").await, settled(50));
    })
    .await
}

#[tokio::test]
async fn a_lock_wait_that_runs_out_votes_abort_and_says_how_long_it_waited() {
    bounded(async {
        let b = Bank::start_with(None, Duration::from_millis(200)).await;
        b.apply("fund", &[("alice", 10)]).await;
        assert_eq!(
            b.prepare("holder", &[("alice", -10)]).await.0,
            pb::Vote::Prepared
        );
        let started = Instant::now();
        let (vote, reason) = b.prepare("late", &[("alice", -1)]).await;
        assert_eq!(vote, pb::Vote::Abort);
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(
            reason.contains("until prepared transactions resolve")
                && reason.contains("after waiting"),
            "{reason}"
        );
        // The refusal is recorded: a duplicate prepare gets it at once.
        let (vote, again) = b.prepare("late", &[("alice", -1)]).await;
        assert_eq!((vote, again), (pb::Vote::Abort, reason));
        b.commit("holder").await.unwrap();
        assert_eq!(b.balance("alice").await, settled(0));
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
        assert!(b.ledger().reservations().unwrap().is_empty());
    })
    .await
}

#[tokio::test]
async fn reservations_come_back_after_reopening_the_file() {
    bounded(async {
        let mut b = Bank::start(None).await;
        b.apply("fund", &[("alice", 50)]).await;
        assert_eq!(
            b.prepare("held", &[("alice", -20), ("bob", 20)]).await.0,
            pb::Vote::Prepared
        );
        b.stop().await;

        // The file alone, without a server: the reservation is on disk. Then
        // wipe it, as if the table had been lost: recovery rebuilds it from
        // the prepared record, which is the truth.
        {
            let db = dtc_participant::open_database(b.dir.path()).unwrap();
            let ledger = Ledger::new(db.clone()).unwrap();
            let held = ledger.reservations().unwrap();
            assert_eq!(held["alice"].reserved, 20, "{held:?}");
            assert_eq!(held["bob"].incoming, 20, "{held:?}");
            let tx = db.begin_write().unwrap();
            tx.delete_table(
                dtc_participant::redb::TableDefinition::<&str, (i64, i64)>::new(
                    dtc_ledger::RESERVED_TABLE,
                ),
            )
            .unwrap();
            tx.commit().unwrap();
        }

        b.start_again().await;
        assert_eq!(
            b.balance("alice").await,
            AccountBalance {
                balance: 50,
                reserved: 20,
                available: 30,
                incoming: 0
            },
            "reserved again before the first prepare is served"
        );
        let (vote, reason) = b.prepare("thief", &[("alice", -31)]).await;
        assert_eq!(vote, pb::Vote::Abort);
        assert!(reason.contains("short by 1"), "{reason}");
        b.commit("held").await.unwrap();
        assert_eq!(b.balance("alice").await, settled(30));
        assert_eq!(b.balance("bob").await, settled(20));
    })
    .await
}

#[tokio::test]
async fn a_file_from_the_locking_ledger_opens_and_its_prepared_transaction_is_reserved() {
    bounded(async {
        let mut b = Bank::start(None).await;
        b.apply("fund", &[("alice", 50)]).await;
        assert_eq!(
            b.prepare("old", &[("alice", -20)]).await.0,
            pb::Vote::Prepared
        );
        b.stop().await;
        // What the ledger before escrow left: a lock row, no reservation.
        {
            let db = dtc_participant::open_database(b.dir.path()).unwrap();
            let tx = db.begin_write().unwrap();
            tx.delete_table(TableDefinition::<&str, (i64, i64)>::new(
                dtc_ledger::RESERVED_TABLE,
            ))
            .unwrap();
            tx.open_table(TableDefinition::<&str, &str>::new("ledger_locks"))
                .unwrap()
                .insert("alice", "old")
                .unwrap();
            tx.commit().unwrap();
        }
        b.start_again().await;
        assert_eq!(b.balance("alice").await.reserved, 20);
        b.commit("old").await.unwrap();
        assert_eq!(b.balance("alice").await, settled(30));
        b.stop().await;
        let db = dtc_participant::open_database(b.dir.path()).unwrap();
        let tables: Vec<String> = db
            .begin_read()
            .unwrap()
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_string())
            .collect();
        assert!(
            !tables.iter().any(|t| t == "ledger_locks"),
            "the old lock table is dropped: {tables:?}"
        );
    })
    .await
}

#[tokio::test]
async fn prepared_then_restarted_keeps_its_reservations_until_the_in_doubt_query_resolves_it() {
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
        let held = AccountBalance {
            balance: 100,
            reserved: 40,
            available: 60,
            incoming: 0,
        };
        assert_eq!(b.balance("alice").await, held);
        let pass = b.running.as_ref().unwrap().resolve_in_doubt().await;
        assert_eq!((pass.asked, pass.undecided), (2, 2), "{pass:?}");
        assert_eq!(b.balance("alice").await, held, "no unilateral abort");

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
        assert_eq!(b.balance("alice").await, settled(60));
        assert_eq!(b.balance("bob").await, settled(40));
        assert_eq!(b.balance("carol").await, settled(0));
        // The late Commit from the coordinator is a duplicate now.
        b.commit("doubt").await.unwrap();
        assert_eq!(b.balance("alice").await.balance, 60);
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
            if b.balance("zed").await == settled(5) {
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
        assert_eq!(b.balance("alice").await.balance, 70);
        assert_eq!(b.balance("bob").await.balance, 30);
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
        running
            .wait_registered(Duration::from_secs(30))
            .await
            .expect("registered");
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

#[tokio::test]
async fn ledger_transactions_with_bad_arguments_fail_before_anything_is_sent() {
    use dtc_client::{Client, ClientError};
    use dtc_ledger::LedgerClient as _;
    // Nothing listens here: any call that were sent would be UNAVAILABLE.
    let client = Client::connect(["127.0.0.1:1"]).unwrap();
    let invalid = |e: ClientError| assert!(matches!(e, ClientError::InvalidArgument(_)), "{e:?}");
    for amount in [0, -5] {
        invalid(
            client
                .transfer(("a", "x"), ("b", "y"), amount)
                .execute()
                .await
                .unwrap_err(),
        );
        invalid(
            client
                .deposit(("a", "x"), amount)
                .execute()
                .await
                .unwrap_err(),
        );
    }
    invalid(
        client
            .transfer(("a", "x"), ("a", "x"), 5)
            .execute()
            .await
            .unwrap_err(),
    );
    invalid(client.deposit(("a", "\n"), 5).execute().await.unwrap_err());
    invalid(client.deposit(("", "x"), 5).execute().await.unwrap_err());
}
