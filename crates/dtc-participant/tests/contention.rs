//! Contention in the participant SDK, over real gRPC on loopback:
//!
//! - the bounded lock wait, with a resource that needs exclusive access (a
//!   branch rewrites a record, `key=value`, and locks the key until the
//!   decision): a busy prepare waits for the holder's decision without
//!   blocking other branches, waiters win in arrival order, and the wait
//!   ends at the lock wait or the prepare's deadline with an abort vote;
//! - the escrow counters ([`CounterResource`]): an inventory whose
//!   concurrent takes on one item all prepare while the stock lasts.

use dtc_participant::counters::{CounterResource, Counters};
use dtc_participant::redb::{self, ReadableDatabase, ReadableTable, TableDefinition};
use dtc_participant::{ParticipantServer, PreparedTxn, Resource, ResourceError, Vote};
use dtc_proto::v1 as pb;
use pb::participant_client::ParticipantClient;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const NAME: &str = "p1";
/// key → value, rewritten by a committed branch.
const RECORDS: TableDefinition<&str, &str> = TableDefinition::new("records");
/// key → the prepared transaction that will rewrite it (exclusive).
const LOCKS: TableDefinition<&str, &str> = TableDefinition::new("record_locks");

/// Branches rewrite one record: payload `key=value`. Exclusive: two prepared
/// transactions never hold one key. Busy (not abort) when held, so the SDK's
/// lock wait applies.
struct Records;

fn parse(payload: &[u8]) -> Result<(String, String), ResourceError> {
    let s = std::str::from_utf8(payload).map_err(|e| ResourceError::new(e.to_string()))?;
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| ResourceError::new(format!("{s:?} is not key=value")))?;
    Ok((k.to_string(), v.to_string()))
}

impl Resource for Records {
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
        let (key, _) = parse(payload)?;
        let mut locks = tx.open_table(LOCKS)?;
        let holder = locks.get(key.as_str())?.map(|h| h.value().to_string());
        if let Some(holder) = holder {
            return Ok(Vote::Busy(format!(
                "record {key:?} is held by prepared transaction {holder}"
            )));
        }
        locks.insert(key.as_str(), txn_id)?;
        Ok(Vote::Prepared)
    }

    fn commit(
        &self,
        tx: &redb::WriteTransaction,
        _txn_id: &str,
        payload: &Vec<u8>,
    ) -> Result<(), ResourceError> {
        let (key, value) = parse(payload)?;
        tx.open_table(RECORDS)?
            .insert(key.as_str(), value.as_str())?;
        tx.open_table(LOCKS)?.remove(key.as_str())?;
        Ok(())
    }

    fn abort(
        &self,
        tx: &redb::WriteTransaction,
        _txn_id: &str,
        payload: &Vec<u8>,
        _reason: &str,
    ) -> Result<(), ResourceError> {
        let (key, _) = parse(payload)?;
        tx.open_table(LOCKS)?.remove(key.as_str())?;
        Ok(())
    }

    fn recover(
        &self,
        tx: &redb::WriteTransaction,
        prepared: &[PreparedTxn<Vec<u8>>],
    ) -> Result<(), ResourceError> {
        let mut locks = tx.open_table(LOCKS)?;
        locks.retain(|_, _| false)?;
        for t in prepared {
            let (key, _) = parse(&t.payload)?;
            locks.insert(key.as_str(), t.txn_id.as_str())?;
        }
        Ok(())
    }
}

struct Node {
    _dir: tempfile::TempDir,
    db: Arc<redb::Database>,
    running: dtc_participant::RunningParticipant,
    client: ParticipantClient<Channel>,
}

async fn start(resource: impl Resource, lock_wait: Duration) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let db = dtc_participant::open_database(dir.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = ParticipantServer::builder(NAME, db.clone(), resource)
        .lock_wait(lock_wait)
        .start(listener)
        .await
        .unwrap();
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", running.local_addr()))
            .unwrap()
            .timeout(Duration::from_secs(30))
            .connect_lazy();
    Node {
        _dir: dir,
        db,
        running,
        client: ParticipantClient::new(channel),
    }
}

type Answer = tokio::task::JoinHandle<(pb::Vote, String)>;

impl Node {
    /// Sends a prepare; the answer comes through the handle.
    fn prepare(&self, txn: &str, payload: &str, remaining_ms: u32) -> Answer {
        let mut c = self.client.clone();
        let (txn, payload) = (txn.to_string(), payload.as_bytes().to_vec());
        tokio::spawn(async move {
            let r = c
                .prepare(pb::PrepareRequest {
                    txn_id: txn,
                    participant: NAME.into(),
                    payload,
                    remaining_ms,
                })
                .await
                .expect("prepare answered")
                .into_inner();
            (pb::Vote::try_from(r.vote).unwrap(), r.reason)
        })
    }

    async fn vote(&self, txn: &str, payload: &str) -> (pb::Vote, String) {
        self.prepare(txn, payload, 10_000).await.unwrap()
    }

    async fn commit(&self, txn: &str) {
        self.client
            .clone()
            .commit(pb::CommitRequest {
                txn_id: txn.into(),
                participant: NAME.into(),
            })
            .await
            .unwrap();
    }

    fn record(&self, key: &str) -> Option<String> {
        let tx = self.db.begin_read().unwrap();
        let t = tx.open_table(RECORDS).ok()?;
        t.get(key).unwrap().map(|v| v.value().to_string())
    }
}

/// Whether `answer` is still unanswered after a short while: the prepare waits.
async fn still_waiting(answer: &mut Answer) -> bool {
    tokio::time::timeout(Duration::from_millis(300), answer)
        .await
        .is_err()
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test took over 60 s")
}

#[tokio::test]
async fn without_a_lock_wait_a_busy_record_votes_abort_at_once() {
    bounded(async {
        let n = start(Records, Duration::ZERO).await;
        assert_eq!(n.vote("t1", "k=1").await.0, pb::Vote::Prepared);
        let started = Instant::now();
        let (vote, reason) = n.vote("t2", "k=2").await;
        assert_eq!(vote, pb::Vote::Abort);
        assert_eq!(reason, "record \"k\" is held by prepared transaction t1");
        assert!(started.elapsed() < Duration::from_secs(2));
        n.running.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn busy_prepares_wait_for_the_decision_in_arrival_order_without_blocking_others() {
    bounded(async {
        let n = start(Records, Duration::from_secs(30)).await;
        assert_eq!(n.vote("t1", "k=1").await.0, pb::Vote::Prepared);
        let mut t2 = n.prepare("t2", "k=2", 30_000);
        assert!(still_waiting(&mut t2).await, "t2 waits for t1");
        let mut t3 = n.prepare("t3", "k=3", 30_000);
        assert!(still_waiting(&mut t3).await, "t3 waits too");
        // The writer is not blocked: another record prepares meanwhile.
        assert_eq!(n.vote("u1", "other=1").await.0, pb::Vote::Prepared);

        n.commit("t1").await;
        assert_eq!(
            t2.await.unwrap().0,
            pb::Vote::Prepared,
            "the first waiter wins"
        );
        assert!(still_waiting(&mut t3).await, "t3 now waits for t2");
        n.commit("t2").await;
        assert_eq!(t3.await.unwrap().0, pb::Vote::Prepared);
        n.commit("t3").await;
        assert_eq!(n.record("k").as_deref(), Some("3"), "rewritten in order");
        n.running.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn a_wait_ends_at_the_prepare_deadline_and_is_recorded_as_an_abort() {
    bounded(async {
        let n = start(Records, Duration::from_secs(30)).await;
        assert_eq!(n.vote("t1", "k=1").await.0, pb::Vote::Prepared);
        let started = Instant::now();
        // 400 ms left for this prepare: the 30 s lock wait cannot outlast it.
        let (vote, reason) = n.prepare("t2", "k=2", 400).await.unwrap();
        let waited = started.elapsed();
        assert_eq!(vote, pb::Vote::Abort);
        assert!(
            waited >= Duration::from_millis(400) && waited < Duration::from_secs(10),
            "{waited:?}"
        );
        assert!(
            reason.starts_with("record \"k\" is held by prepared transaction t1 (after waiting"),
            "{reason}"
        );
        // Recorded: a duplicate gets the same answer, and t1 still holds k.
        assert_eq!(n.vote("t2", "k=2").await, (pb::Vote::Abort, reason));
        let rec = n.running.log().get("t2").unwrap().unwrap();
        assert_eq!(rec.state, dtc_participant::BranchState::Aborted);
        n.commit("t1").await;
        assert_eq!(n.record("k").as_deref(), Some("1"));
        n.running.shutdown().await;
    })
    .await
}

/// The inventory of the crate docs: `sku:delta` lines.
fn inventory() -> CounterResource {
    CounterResource::new(Counters::new("stock", "stock_reserved"), |payload| {
        let text = std::str::from_utf8(payload).map_err(|e| e.to_string())?;
        text.lines()
            .map(|line| match line.split_once(':') {
                Some((sku, n)) => Ok((
                    sku.to_string(),
                    n.parse().map_err(|_| format!("bad count {n:?}"))?,
                )),
                None => Err(format!("{line:?} is not sku:delta")),
            })
            .collect()
    })
}

fn stock(db: &redb::Database, sku: &str) -> dtc_participant::counters::Counter {
    Counters::new("stock", "stock_reserved")
        .read(db, sku)
        .unwrap()
}

#[tokio::test]
async fn concurrent_takes_of_one_item_all_prepare_while_the_stock_lasts() {
    bounded(async {
        let n = start(inventory(), Duration::ZERO).await;
        assert_eq!(n.vote("restock", "widget:10").await.0, pb::Vote::Prepared);
        n.commit("restock").await;
        // Five concurrent takes of 2: exactly the stock, all prepare.
        let takes: Vec<Answer> = (0..5)
            .map(|i| n.prepare(&format!("take{i}"), "widget:-2", 10_000))
            .collect();
        for t in takes {
            assert_eq!(t.await.unwrap().0, pb::Vote::Prepared);
        }
        let c = stock(&n.db, "widget");
        assert_eq!((c.value, c.reserved, c.available(0)), (10, 10, 0));
        let (vote, reason) = n.vote("take5", "widget:-1").await;
        assert_eq!(vote, pb::Vote::Abort);
        assert!(reason.ends_with("short by 1"), "{reason}");
        let (vote, reason) = n.vote("junk", "widget=1").await;
        assert_eq!(vote, pb::Vote::Abort);
        assert!(reason.contains("not sku:delta"), "{reason}");
        assert_eq!(n.vote("none", "").await.0, pb::Vote::ReadOnly);
        for i in 0..5 {
            n.commit(&format!("take{i}")).await;
        }
        assert_eq!(stock(&n.db, "widget"), Default::default());
        n.running.shutdown().await;
    })
    .await
}

#[test]
fn counters_keep_both_bounds_whichever_prepared_transactions_commit() {
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("c.redb")).unwrap();
    // Seats: 0..=3 taken.
    let seats = Counters::new("seats", "seats_reserved").bounds(0, 3);
    let d = |v: i64| [("show".to_string(), v)].into_iter().collect();
    let tx = db.begin_write().unwrap();
    seats.create(&tx).unwrap();
    assert_eq!(seats.reserve(&tx, &d(2)).unwrap(), Ok(()));
    let over = seats.reserve(&tx, &d(2)).unwrap().unwrap_err();
    assert!(
        !over.below_min && over.short_by == 1 && over.contended,
        "{over:?}"
    );
    assert_eq!(seats.reserve(&tx, &d(1)).unwrap(), Ok(()));
    // Giving back a seat before any take committed: refused, though the
    // pending takes would cover it if they committed (contended).
    let under = seats.reserve(&tx, &d(-1)).unwrap().unwrap_err();
    assert!(
        under.below_min && under.short_by == 1 && under.contended,
        "{under:?}"
    );
    seats.apply(&tx, &d(2)).unwrap();
    seats.release(&tx, &d(1)).unwrap();
    tx.commit().unwrap();
    let c = seats.read(&db, "show").unwrap();
    assert_eq!((c.value, c.reserved, c.incoming), (2, 0, 0));
    // A release of a reservation that was never made is refused, not applied.
    let tx = db.begin_write().unwrap();
    assert!(seats.apply(&tx, &d(1)).is_err());
    drop(tx);
    // Rebuild replaces whatever the table held.
    let tx = db.begin_write().unwrap();
    seats.rebuild(&tx, [&d(-1), &d(1)]).unwrap();
    tx.commit().unwrap();
    let c = seats.read(&db, "show").unwrap();
    assert_eq!((c.value, c.reserved, c.incoming), (2, 1, 1));
    let all = seats.read_all(&db).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all["show"], c);
    assert_eq!(c.available(0), 1);
    let rows = {
        let tx = db.begin_read().unwrap();
        let t = tx
            .open_table(TableDefinition::<&str, (i64, i64)>::new("seats_reserved"))
            .unwrap();
        t.iter().unwrap().count()
    };
    assert_eq!(rows, 1);
}
