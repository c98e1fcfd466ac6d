//! The SDK's application hooks over real gRPC on loopback: `init` before
//! serving, typed payloads (a malformed one votes abort and never reaches
//! commit), writes outside two-phase commit, the query service, and a start
//! that says why it could not register.

use dtc_participant::counters::{CounterResource, Counters};
use dtc_participant::redb::{self, ReadableTable, TableDefinition};
use dtc_participant::{
    ParticipantError, ParticipantServer, Resource, ResourceError, RunningParticipant, Vote,
};
use dtc_proto::v1 as pb;
use pb::participant_client::ParticipantClient;
use pb::participant_query_client::ParticipantQueryClient;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

const NAME: &str = "stock";
const REMAINING_MS: u32 = 10_000;

/// `sku:delta` lines, as in the crate docs' inventory.
fn inventory() -> CounterResource {
    CounterResource::new(Counters::new("stock", "stock_reserved"), |payload| {
        let text = std::str::from_utf8(payload).map_err(|e| e.to_string())?;
        text.lines()
            .map(|line| {
                let (sku, n) = line
                    .split_once(':')
                    .ok_or_else(|| format!("{line:?} is not sku:delta"))?;
                let n = n.parse().map_err(|_| format!("bad count {n:?}"))?;
                Ok((sku.to_string(), n))
            })
            .collect()
    })
}

/// The inventory with stock seeded by `init` (once: only into an empty
/// table), counting how often `init` and `prepare` ran.
struct Seeded {
    inner: CounterResource,
    inits: AtomicUsize,
    prepares: AtomicUsize,
}

impl Resource for Seeded {
    type Payload = BTreeMap<String, i64>;

    fn decode(&self, payload: &[u8]) -> Result<Self::Payload, String> {
        self.inner.decode(payload)
    }

    fn init(&self, tx: &redb::WriteTransaction) -> Result<(), ResourceError> {
        self.inits.fetch_add(1, Ordering::SeqCst);
        self.inner.init(tx)?;
        let empty = tx
            .open_table(TableDefinition::<&str, i64>::new("stock"))?
            .first()?
            .is_none();
        if empty {
            let seed = BTreeMap::from([("widget".to_string(), 5)]);
            self.inner
                .counters()
                .adjust(tx, &seed)?
                .map_err(|r| ResourceError::new(r.to_string()))?;
        }
        Ok(())
    }

    fn prepare(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &Self::Payload,
    ) -> Result<Vote, ResourceError> {
        self.prepares.fetch_add(1, Ordering::SeqCst);
        self.inner.prepare(tx, txn_id, payload)
    }

    fn commit(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &Self::Payload,
    ) -> Result<(), ResourceError> {
        self.inner.commit(tx, txn_id, payload)
    }

    fn abort(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &Self::Payload,
        reason: &str,
    ) -> Result<(), ResourceError> {
        self.inner.abort(tx, txn_id, payload, reason)
    }

    fn query(
        &self,
        tx: &redb::ReadTransaction,
        key: &str,
    ) -> Result<Option<String>, ResourceError> {
        self.inner.query(tx, key)
    }
}

fn seeded() -> Arc<Seeded> {
    Arc::new(Seeded {
        inner: inventory(),
        inits: AtomicUsize::new(0),
        prepares: AtomicUsize::new(0),
    })
}

async fn start(
    dir: &std::path::Path,
    resource: impl Resource,
    lock_wait: Duration,
) -> RunningParticipant {
    let db = dtc_participant::open_database(dir).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    ParticipantServer::builder(NAME, db, resource)
        .register(false)
        .lock_wait(lock_wait)
        .start(listener)
        .await
        .unwrap()
}

fn channel(running: &RunningParticipant) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", running.local_addr()))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

async fn prepare(c: &Channel, txn: &str, payload: &[u8]) -> pb::PrepareResponse {
    ParticipantClient::new(c.clone())
        .prepare(pb::PrepareRequest {
            txn_id: txn.into(),
            participant: NAME.into(),
            payload: payload.to_vec(),
            remaining_ms: REMAINING_MS,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn query(c: &Channel, key: &str) -> Result<Option<String>, tonic::Status> {
    ParticipantQueryClient::new(c.clone())
        .query(pb::QueryRequest { key: key.into() })
        .await
        .map(|r| {
            let r = r.into_inner();
            r.found.then_some(r.value)
        })
}

#[tokio::test]
async fn init_runs_before_serving_at_every_start_and_its_seed_is_read_by_query() {
    let dir = tempfile::tempdir().unwrap();
    let resource = seeded();
    let running = start(dir.path(), resource.clone(), Duration::ZERO).await;
    assert_eq!(resource.inits.load(Ordering::SeqCst), 1);
    let c = channel(&running);
    // The first call already sees what init wrote.
    assert_eq!(query(&c, "widget").await.unwrap().as_deref(), Some("5"));
    assert_eq!(query(&c, "gadget").await.unwrap(), None);
    let vote = prepare(&c, "t1", b"widget:-2").await;
    assert_eq!(vote.vote, pb::Vote::Prepared as i32, "{vote:?}");
    ParticipantClient::new(c.clone())
        .commit(pb::CommitRequest {
            txn_id: "t1".into(),
            participant: NAME.into(),
        })
        .await
        .unwrap();
    assert_eq!(query(&c, "widget").await.unwrap().as_deref(), Some("3"));
    running.shutdown().await;

    // A restart runs init again; the seed is not applied twice.
    let running = start(dir.path(), resource.clone(), Duration::ZERO).await;
    assert_eq!(resource.inits.load(Ordering::SeqCst), 2);
    assert_eq!(
        query(&channel(&running), "widget")
            .await
            .unwrap()
            .as_deref(),
        Some("3")
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_malformed_payload_votes_abort_with_the_decode_error_and_never_reaches_the_resource() {
    let dir = tempfile::tempdir().unwrap();
    let resource = seeded();
    let running = start(dir.path(), resource.clone(), Duration::ZERO).await;
    let c = channel(&running);
    let vote = prepare(&c, "bad", b"widget=2").await;
    assert_eq!(vote.vote, pb::Vote::Abort as i32);
    assert!(
        vote.reason.contains("malformed payload") && vote.reason.contains("is not sku:delta"),
        "{}",
        vote.reason
    );
    assert_eq!(resource.prepares.load(Ordering::SeqCst), 0);
    // A commit for it (a coordinator bug) is refused: it was never prepared.
    let commit = ParticipantClient::new(c.clone())
        .commit(pb::CommitRequest {
            txn_id: "bad".into(),
            participant: NAME.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(commit.code(), Code::FailedPrecondition, "{commit:?}");
    assert_eq!(query(&c, "widget").await.unwrap().as_deref(), Some("5"));
    running.shutdown().await;
}

#[tokio::test]
async fn a_write_outside_2pc_is_durable_keeps_reservations_and_wakes_waiting_prepares() {
    let dir = tempfile::tempdir().unwrap();
    let resource = seeded();
    let running = start(dir.path(), resource.clone(), Duration::from_secs(5)).await;
    let c = channel(&running);
    // t1 reserves 4 of the 5 widgets; t2 wants 3 and waits for stock.
    assert_eq!(
        prepare(&c, "t1", b"widget:-4").await.vote,
        pb::Vote::Prepared as i32
    );
    let waiting = {
        let c = c.clone();
        tokio::spawn(async move { prepare(&c, "t2", b"widget:-3").await })
    };
    // Once the resource has seen t2 (and found it busy), t2 is parked.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while resource.prepares.load(Ordering::SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "t2 never reached the resource"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Taking 2 outside 2PC would leave t1's reservation uncovered: refused,
    // and nothing is written.
    let counters = resource.inner.counters().clone();
    let refused = running
        .write(move |tx| {
            let take = BTreeMap::from([("widget".to_string(), -2)]);
            Ok(counters.adjust(tx, &take)?.map_err(|r| r.to_string()))
        })
        .await
        .unwrap();
    assert!(refused.unwrap_err().contains("short by 1"));
    // An error from the closure rolls back what it wrote.
    let failed = running
        .write(|tx| {
            tx.open_table(TableDefinition::<&str, i64>::new("stock"))?
                .insert("widget", 1_000)?;
            Err::<(), _>(ResourceError::new("changed my mind"))
        })
        .await
        .unwrap_err();
    assert!(matches!(failed, ParticipantError::Write(ref m) if m.contains("changed my mind")));
    assert!(!waiting.is_finished(), "t2 still waits for stock");
    // Restocking frees what t2 waits for: it prepares without a decision.
    let counters = resource.inner.counters().clone();
    running
        .write(move |tx| {
            let restock = BTreeMap::from([("widget".to_string(), 10)]);
            counters
                .adjust(tx, &restock)?
                .map_err(|r| ResourceError::new(r.to_string()))
        })
        .await
        .unwrap();
    let t2 = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the restock wakes t2")
        .unwrap();
    assert_eq!(t2.vote, pb::Vote::Prepared as i32, "{t2:?}");
    assert_eq!(query(&c, "widget").await.unwrap().as_deref(), Some("15"));
    // The same value through the SDK's read, and both reservations held.
    let counters = resource.inner.counters().clone();
    let widget = running
        .read(move |tx| Ok(counters.get(tx, "widget")?))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((widget.value, widget.reserved), (15, 7));
    // Both prepared transactions are listed as in doubt here, oldest first.
    let listed = ParticipantQueryClient::new(c.clone())
        .list_in_doubt(pb::ListInDoubtRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = listed
        .transactions
        .iter()
        .map(|t| t.txn_id.as_str())
        .collect();
    assert_eq!((ids, listed.total), (vec!["t1", "t2"], 2));
    running.shutdown().await;

    // Durable: a restart reads the restock.
    let running = start(dir.path(), seeded(), Duration::ZERO).await;
    assert_eq!(
        query(&channel(&running), "widget")
            .await
            .unwrap()
            .as_deref(),
        Some("15")
    );
    running.shutdown().await;
}

/// A resource with no query hook.
struct Opaque;

impl Resource for Opaque {
    type Payload = Vec<u8>;

    fn decode(&self, payload: &[u8]) -> Result<Vec<u8>, String> {
        dtc_participant::payload::bytes(payload)
    }

    fn prepare(
        &self,
        _: &redb::WriteTransaction,
        _: &str,
        _: &Vec<u8>,
    ) -> Result<Vote, ResourceError> {
        Ok(Vote::Prepared)
    }

    fn commit(
        &self,
        _: &redb::WriteTransaction,
        _: &str,
        _: &Vec<u8>,
    ) -> Result<(), ResourceError> {
        Ok(())
    }

    fn abort(
        &self,
        _: &redb::WriteTransaction,
        _: &str,
        _: &Vec<u8>,
        _: &str,
    ) -> Result<(), ResourceError> {
        Ok(())
    }
}

#[tokio::test]
async fn queries_without_a_hook_or_with_a_bad_key_get_a_clear_status() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), Opaque, Duration::ZERO).await;
    let c = channel(&running);
    let e = query(&c, "x").await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    assert!(e.message().contains("serves no queries"), "{e:?}");
    let e = query(&c, "").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = query(&c, &"k".repeat(2000)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    running.shutdown().await;
}

#[tokio::test]
async fn a_start_that_must_register_fails_naming_every_unreachable_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    // Two ports with nothing listening: bound, then closed.
    let mut dead = Vec::new();
    for _ in 0..2 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        dead.push(l.local_addr().unwrap().to_string());
    }
    let db = dtc_participant::open_database(dir.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let started = std::time::Instant::now();
    let e = ParticipantServer::builder(NAME, db, inventory())
        .coordinators(dead.clone())
        .require_registration(Duration::from_secs(2))
        .start(listener)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    let ParticipantError::NotRegistered { last_error, .. } = &e else {
        panic!("{e}");
    };
    for addr in &dead {
        assert!(last_error.contains(addr.as_str()), "{addr} missing: {e}");
    }
    assert!(last_error.contains("refused"), "{e}");

    // Without the requirement it starts, and says why it is not registered.
    let db = dtc_participant::open_database(dir.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = ParticipantServer::builder(NAME, db, inventory())
        .coordinators(dead.clone())
        .start(listener)
        .await
        .unwrap();
    let e = running
        .wait_registered(Duration::from_millis(1500))
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&dead[0]), "{e}");
    assert!(!running.is_registered());
    assert!(running.registration_error().is_some());
    running.shutdown().await;
}
