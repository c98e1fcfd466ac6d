//! The transaction state machine and its snapshots, in `state.redb`.

use crate::reader::StateReader;
use crate::tables::{
    COMPLETED, LAST_APPLIED_KEY, MEMBERSHIP_KEY, PARTICIPANTS, PENDING, SM_META, SNAPSHOT,
    SNAPSHOT_DATA_KEY, SNAPSHOT_META_KEY, SNAPSHOT_SEQ_KEY, TXNS, decode, encode, get_meta,
};
use crate::{Entry, LogId, NodeId, StorageError, StoreError, StoredMembership, TypeConfig};
use dtc_core::{ApplyStore, Command, CommandResult, TxnRecord};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{BasicNode, EntryPayload, OptionalSend, StorageIOError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Meta = SnapshotMeta<NodeId, BasicNode>;

/// openraft's state machine: applies committed [`dtc_core::Command`]s to the
/// redb tables, builds and installs snapshots. Clones share the database.
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<Database>,
    durable: Arc<DurableMark>,
}

/// redb cache of the state machine. Reads are of recent and pending records
/// (phase 2, takeover, outcome queries); older completed records are read
/// only by clients retrying an id or listing history, and may come from disk.
/// Bounds the node's memory whatever the history (redb's default is 1 GiB).
pub const STATE_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// An apply commit is synced at least this often...
const SYNC_EVERY: Duration = Duration::from_millis(200);
/// ...and at least every this many entries, so that the entries re-applied
/// after a crash (from the synced log) stay few, and the pages freed by
/// unsynced commits (redb reuses them only after a synced one) stay few.
const SYNC_EVERY_ENTRIES: u64 = 512;

/// What part of the applied state is known to be on disk.
///
/// Applies commit with `Durability::None`: the Raft log is synced before an
/// entry can commit, and openraft re-applies the committed entries past the
/// state machine's `last_applied` at start-up, so an apply lost in a crash is
/// re-created, never lost. The one thing that must wait for the sync is a log
/// purge, which [`crate::LogStore::purge_covered_by`] keeps at or below
/// [`DurableMark::get`].
#[derive(Debug)]
pub(crate) struct DurableMark {
    state: Mutex<MarkState>,
}

#[derive(Debug)]
struct MarkState {
    /// Last applied entry covered by a synced commit.
    applied: Option<LogId>,
    last_sync: Instant,
    entries_since_sync: u64,
}

impl DurableMark {
    fn new(applied: Option<LogId>) -> Self {
        DurableMark {
            state: Mutex::new(MarkState {
                applied,
                last_sync: Instant::now(),
                entries_since_sync: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MarkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self) -> Option<LogId> {
        self.lock().applied
    }

    /// Whether the next apply of `entries` entries should be synced.
    fn sync_due(&self, entries: u64) -> bool {
        let s = self.lock();
        s.entries_since_sync + entries >= SYNC_EVERY_ENTRIES || s.last_sync.elapsed() >= SYNC_EVERY
    }

    /// Records a commit: a synced one moves the durable position to `at`.
    fn committed(&self, at: Option<LogId>, entries: u64, synced: bool) {
        let mut s = self.lock();
        if synced {
            if at > s.applied || at.is_none() {
                s.applied = at;
            }
            s.last_sync = Instant::now();
            s.entries_since_sync = 0;
        } else {
            s.entries_since_sync += entries;
        }
    }

    /// After a snapshot install the applied position may move backwards or
    /// anywhere: it is exactly the snapshot's, and synced.
    fn reset(&self, at: Option<LogId>) {
        let mut s = self.lock();
        s.applied = at;
        s.last_sync = Instant::now();
        s.entries_since_sync = 0;
    }
}

/// One synced commit that makes every earlier unsynced apply durable;
/// returns the applied position it covers.
pub(crate) fn make_durable(db: &Database, mark: &DurableMark) -> Result<Option<LogId>, StoreError> {
    let txn = db.begin_write()?; // Durability::Immediate
    let applied = {
        // Rewrite the position rather than commit nothing, so that the
        // commit is a real one whatever redb does with empty transactions.
        let mut meta = txn.open_table(SM_META)?;
        let applied: Option<LogId> = get_meta(&meta, "meta", LAST_APPLIED_KEY)?;
        if let Some(a) = &applied {
            meta.insert(LAST_APPLIED_KEY, encode("last_applied", a)?.as_slice())?;
        }
        applied
    };
    txn.commit()?;
    mark.committed(applied, 0, true);
    Ok(applied)
}

impl std::fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore").finish_non_exhaustive()
    }
}

/// The bytes of a snapshot: every state table verbatim plus the applied
/// position, so installing it reproduces the leader's tables exactly
/// (indexes included, rather than re-deriving them).
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotData {
    format: u32,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    txns: Vec<TxnRecord>,
    pending: Vec<String>,
    completed: Vec<(u64, String)>,
    participants: Vec<(String, String)>,
}

impl StateMachineStore {
    /// Opens (creating if missing) a state machine database file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut builder = redb::Builder::new();
        builder.set_cache_size(STATE_CACHE_BYTES);
        let db = crate::files::create_database(&builder, path)?;
        crate::tables::init(&db, path, SM_META, |txn| {
            txn.open_table(TXNS)?;
            txn.open_table(PENDING)?;
            txn.open_table(COMPLETED)?;
            txn.open_table(PARTICIPANTS)?;
            txn.open_table(SNAPSHOT)?;
            Ok(())
        })?;
        Self::with_db(db)
    }

    /// Opens (creating if empty) a state machine database on a custom redb
    /// storage backend instead of a file, e.g. a simulated disk for crash tests.
    pub fn open_with_backend(backend: impl redb::StorageBackend) -> Result<Self, StoreError> {
        let db = redb::Builder::new()
            .set_cache_size(STATE_CACHE_BYTES)
            .create_with_backend(backend)?;
        crate::tables::init(&db, Path::new("<storage backend>"), SM_META, |txn| {
            txn.open_table(TXNS)?;
            txn.open_table(PENDING)?;
            txn.open_table(COMPLETED)?;
            txn.open_table(PARTICIPANTS)?;
            txn.open_table(SNAPSHOT)?;
            Ok(())
        })?;
        Self::with_db(db)
    }

    fn with_db(db: Database) -> Result<Self, StoreError> {
        // Whatever the file holds at open is on disk: that is the durable mark.
        let applied = {
            let txn = db.begin_read()?;
            get_meta::<LogId>(&txn.open_table(SM_META)?, "meta", LAST_APPLIED_KEY)?
        };
        Ok(StateMachineStore {
            db: Arc::new(db),
            durable: Arc::new(DurableMark::new(applied)),
        })
    }

    /// A cheap, cloneable read handle on the applied state.
    pub fn reader(&self) -> StateReader {
        StateReader::new(self.db.clone(), self.durable.clone())
    }

    fn applied_state_sync(&self) -> Result<(Option<LogId>, StoredMembership), StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(SM_META)?;
        let applied = get_meta::<LogId>(&meta, "meta", LAST_APPLIED_KEY)?;
        let membership = get_meta(&meta, "meta", MEMBERSHIP_KEY)?.unwrap_or_default();
        Ok((applied, membership))
    }

    fn current_snapshot_sync(&self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(SNAPSHOT)?;
        let Some(meta) = get_meta::<Meta>(&t, "snapshot", SNAPSHOT_META_KEY)? else {
            return Ok(None);
        };
        let Some(data) = t.get(SNAPSHOT_DATA_KEY)? else {
            return Err(StoreError::Inconsistent(format!(
                "snapshot {} has meta but no data",
                meta.snapshot_id
            )));
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.value().to_vec())),
        }))
    }
}

/// [`ApplyStore`] over the tables of one redb write transaction, so that a
/// whole batch of commands reads its own writes and commits atomically.
struct ApplyTables<'txn> {
    txns: Table<'txn, &'static str, &'static [u8]>,
    pending: Table<'txn, &'static str, ()>,
    completed: Table<'txn, (u64, &'static str), ()>,
    participants: Table<'txn, &'static str, &'static str>,
}

impl<'txn> ApplyTables<'txn> {
    fn open(txn: &'txn redb::WriteTransaction) -> Result<Self, StoreError> {
        Ok(ApplyTables {
            txns: txn.open_table(TXNS)?,
            pending: txn.open_table(PENDING)?,
            completed: txn.open_table(COMPLETED)?,
            participants: txn.open_table(PARTICIPANTS)?,
        })
    }
}

impl ApplyStore for ApplyTables<'_> {
    type Error = StoreError;

    fn get_txn(&mut self, txn_id: &str) -> Result<Option<TxnRecord>, StoreError> {
        match self.txns.get(txn_id)? {
            Some(v) => decode("txns", "txn record", txn_id, v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn put_txn(&mut self, record: &TxnRecord) -> Result<(), StoreError> {
        let bytes = encode("txn record", record)?;
        self.txns.insert(record.txn_id.as_str(), bytes.as_slice())?;
        Ok(())
    }

    fn delete_txn(&mut self, txn_id: &str) -> Result<(), StoreError> {
        self.txns.remove(txn_id)?;
        Ok(())
    }

    fn set_pending(&mut self, txn_id: &str, pending: bool) -> Result<(), StoreError> {
        if pending {
            self.pending.insert(txn_id, ())?;
        } else {
            self.pending.remove(txn_id)?;
        }
        Ok(())
    }

    fn add_completed(&mut self, completed_ms: u64, txn_id: &str) -> Result<(), StoreError> {
        self.completed.insert((completed_ms, txn_id), ())?;
        Ok(())
    }

    fn take_completed_until(&mut self, cutoff_ms: u64) -> Result<Vec<(u64, String)>, StoreError> {
        // Keys sort by time first, so everything at or before the cutoff is a prefix.
        let upper = match cutoff_ms.checked_add(1) {
            Some(next) => Bound::Excluded((next, "")),
            None => Bound::Unbounded,
        };
        let mut taken = Vec::new();
        for row in self
            .completed
            .extract_from_if((Bound::Unbounded, upper), |_, _| true)?
        {
            let (k, _) = row?;
            let (ms, id) = k.value();
            taken.push((ms, id.to_string()));
        }
        Ok(taken)
    }

    fn put_participant(&mut self, name: &str, endpoint: &str) -> Result<(), StoreError> {
        self.participants.insert(name, endpoint)?;
        Ok(())
    }
}

/// Applies a batch in one durable write transaction. On failure returns the
/// log id of the entry that failed, for openraft's error.
fn apply_batch(
    db: &Database,
    mark: &DurableMark,
    entries: &[Entry],
) -> Result<Vec<CommandResult>, (LogId, StoreError)> {
    let Some(last) = entries.last().map(|e| e.log_id) else {
        return Ok(Vec::new());
    };
    let fail = |e: StoreError| (last, e);
    let mut txn = db.begin_write().map_err(|e| fail(e.into()))?;
    let sync = mark.sync_due(entries.len() as u64);
    if !sync {
        // See `DurableMark`: the synced log makes this commit recoverable.
        txn.set_durability(Durability::None)
            .map_err(|e| fail(StoreError::Inconsistent(format!("set durability: {e}"))))?;
    }
    let mut results = Vec::with_capacity(entries.len());
    {
        let mut tables = ApplyTables::open(&txn).map_err(fail)?;
        let mut membership = None;
        for entry in entries {
            let result = match &entry.payload {
                EntryPayload::Blank => CommandResult::Nothing,
                EntryPayload::Normal(Command::Batch(cmds)) => {
                    // `dtc_core::apply` does the same loop; it is spelled out
                    // here only to place a crash point between two commands
                    // of one entry (the failover suite proves a batch is
                    // applied whole or not at all).
                    let mut each = Vec::with_capacity(cmds.len());
                    for (i, cmd) in cmds.iter().enumerate() {
                        if i > 0 {
                            fail::fail_point!("store.apply.mid_batch", |_| {
                                crate::crash::crash("store.apply.mid_batch")
                            });
                        }
                        each.push(
                            dtc_core::apply(&mut tables, cmd).map_err(|e| (entry.log_id, e))?,
                        );
                    }
                    CommandResult::Batch(each)
                }
                EntryPayload::Normal(cmd) => {
                    dtc_core::apply(&mut tables, cmd).map_err(|e| (entry.log_id, e))?
                }
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                    CommandResult::Nothing
                }
            };
            results.push(result);
        }
        // The applied position commits with the effects, so after a crash
        // openraft re-applies exactly the entries whose effects were lost.
        let mut meta = txn.open_table(SM_META).map_err(|e| fail(e.into()))?;
        let applied = encode("last_applied", &last).map_err(fail)?;
        meta.insert(LAST_APPLIED_KEY, applied.as_slice())
            .map_err(|e| fail(e.into()))?;
        if let Some(m) = membership {
            let bytes = encode("membership", &m).map_err(fail)?;
            meta.insert(MEMBERSHIP_KEY, bytes.as_slice())
                .map_err(|e| fail(e.into()))?;
        }
    }
    txn.commit().map_err(|e| fail(e.into()))?;
    mark.committed(Some(last), entries.len() as u64, sync);
    Ok(results)
}

/// Reads every state table in one read transaction (a consistent cut).
fn read_snapshot_data(db: &Database) -> Result<SnapshotData, StoreError> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(SM_META)?;
    let last_applied = get_meta(&meta, "meta", LAST_APPLIED_KEY)?;
    let last_membership = get_meta(&meta, "meta", MEMBERSHIP_KEY)?.unwrap_or_default();

    let t = txn.open_table(TXNS)?;
    let mut txns = Vec::with_capacity(usize::try_from(t.len()?).unwrap_or(0));
    for row in t.iter()? {
        let (k, v) = row?;
        txns.push(decode("txns", "txn record", k.value(), v.value())?);
    }
    let mut pending = Vec::new();
    for row in txn.open_table(PENDING)?.iter()? {
        pending.push(row?.0.value().to_string());
    }
    let mut completed = Vec::new();
    for row in txn.open_table(COMPLETED)?.iter()? {
        let (k, _) = row?;
        let (ms, id) = k.value();
        completed.push((ms, id.to_string()));
    }
    let mut participants = Vec::new();
    for row in txn.open_table(PARTICIPANTS)?.iter()? {
        let (k, v) = row?;
        participants.push((k.value().to_string(), v.value().to_string()));
    }
    Ok(SnapshotData {
        format: crate::tables::FORMAT_VERSION,
        last_applied,
        last_membership,
        txns,
        pending,
        completed,
        participants,
    })
}

/// Builds a snapshot and stores it as current (unless a newer one was
/// installed meanwhile), durably, so `get_current_snapshot` survives restarts
/// and the log purge that follows a snapshot never outruns it.
fn build_snapshot_sync(
    db: &Database,
    mark: &DurableMark,
) -> Result<Snapshot<TypeConfig>, StoreError> {
    let data = read_snapshot_data(db)?;
    let bytes = encode("snapshot", &data)?;

    let txn = db.begin_write()?;
    let meta = {
        let mut t = txn.open_table(SNAPSHOT)?;
        let seq = get_meta::<u64>(&t, "snapshot", SNAPSHOT_SEQ_KEY)?.unwrap_or(0) + 1;
        let (term, index) = data
            .last_applied
            .map(|l| (l.leader_id.term, l.index))
            .unwrap_or((0, 0));
        let meta = Meta {
            last_log_id: data.last_applied,
            last_membership: data.last_membership,
            snapshot_id: format!("{term}-{index}-{seq}"),
        };
        t.insert(SNAPSHOT_SEQ_KEY, encode("seq", &seq)?.as_slice())?;
        let current = get_meta::<Meta>(&t, "snapshot", SNAPSHOT_META_KEY)?;
        // Building runs beside apply and install; an install that finished
        // while we were reading holds newer state and must stay current.
        if current.is_none_or(|c| c.last_log_id <= meta.last_log_id) {
            t.insert(
                SNAPSHOT_META_KEY,
                encode("snapshot meta", &meta)?.as_slice(),
            )?;
            t.insert(SNAPSHOT_DATA_KEY, bytes.as_slice())?;
        }
        meta
    };
    txn.commit()?; // synced: it also makes every apply up to the snapshot durable
    mark.committed(data.last_applied, 0, true);
    Ok(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(bytes)),
    })
}

/// Replaces every state table with the snapshot's contents and makes it the
/// current snapshot, in one durable transaction.
fn install_snapshot_sync(
    db: &Database,
    mark: &DurableMark,
    meta: &Meta,
    bytes: Vec<u8>,
) -> Result<(), StoreError> {
    let data: SnapshotData = decode("snapshot", "snapshot data", &meta.snapshot_id, &bytes)?;
    if data.format != crate::tables::FORMAT_VERSION {
        return Err(StoreError::Inconsistent(format!(
            "snapshot {} has format {}, expected {}",
            meta.snapshot_id,
            data.format,
            crate::tables::FORMAT_VERSION
        )));
    }
    if data.last_applied != meta.last_log_id || data.last_membership != meta.last_membership {
        return Err(StoreError::Inconsistent(format!(
            "snapshot {} data is at {:?} but its meta says {:?}",
            meta.snapshot_id, data.last_applied, meta.last_log_id
        )));
    }
    let txn = db.begin_write()?;
    // Deleting whole tables frees their pages at once, cheaper than row by row.
    txn.delete_table(TXNS)?;
    txn.delete_table(PENDING)?;
    txn.delete_table(COMPLETED)?;
    txn.delete_table(PARTICIPANTS)?;
    {
        let mut t = txn.open_table(TXNS)?;
        for r in &data.txns {
            t.insert(r.txn_id.as_str(), encode("txn record", r)?.as_slice())?;
        }
        let mut t = txn.open_table(PENDING)?;
        for id in &data.pending {
            t.insert(id.as_str(), ())?;
        }
        let mut t = txn.open_table(COMPLETED)?;
        for (ms, id) in &data.completed {
            t.insert((*ms, id.as_str()), ())?;
        }
        let mut t = txn.open_table(PARTICIPANTS)?;
        for (name, endpoint) in &data.participants {
            t.insert(name.as_str(), endpoint.as_str())?;
        }
        let mut m = txn.open_table(SM_META)?;
        match &meta.last_log_id {
            Some(l) => {
                m.insert(LAST_APPLIED_KEY, encode("last_applied", l)?.as_slice())?;
            }
            None => {
                m.remove(LAST_APPLIED_KEY)?;
            }
        }
        m.insert(
            MEMBERSHIP_KEY,
            encode("membership", &meta.last_membership)?.as_slice(),
        )?;
        let mut s = txn.open_table(SNAPSHOT)?;
        s.insert(SNAPSHOT_META_KEY, encode("snapshot meta", meta)?.as_slice())?;
        s.insert(SNAPSHOT_DATA_KEY, bytes.as_slice())?;
    }
    // Crash point: the snapshot is written but not committed.
    fail::fail_point!("store.snapshot.install", |_| crate::crash::crash(
        "store.snapshot.install"
    ));
    txn.commit()?;
    mark.reset(meta.last_log_id);
    Ok(())
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (db, mark) = (self.db.clone(), self.durable.clone());
        crate::run_blocking(move || build_snapshot_sync(&db, &mark))
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.applied_state_sync()
            .map_err(|e| StorageIOError::read_state_machine(&e).into())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let db = self.db.clone();
        let mark = self.durable.clone();
        match tokio::task::spawn_blocking(move || apply_batch(&db, &mark, &entries)).await {
            Ok(Ok(results)) => Ok(results),
            Ok(Err((log_id, e))) => Err(StorageIOError::apply(log_id, &e).into()),
            Err(join) => {
                Err(StorageIOError::write_state_machine(&StoreError::Task(join.to_string())).into())
            }
        }
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let (db, mark) = (self.db.clone(), self.durable.clone());
        let meta2 = meta.clone();
        let bytes = snapshot.into_inner();
        crate::run_blocking(move || install_snapshot_sync(&db, &mark, &meta2, bytes))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e).into())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.current_snapshot_sync()
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn begin(id: &str) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(Command::Begin {
                txn_id: id.into(),
                participants: vec!["a".into()],
                digest: [0; 32],
                timeout_ms: 1,
                at_ms: 1,
            }),
        }
    }

    fn put_raw(sm: &StateMachineStore, f: impl FnOnce(&redb::WriteTransaction)) {
        let txn = sm.db.begin_write().unwrap();
        f(&txn);
        txn.commit().unwrap();
    }

    #[tokio::test]
    async fn corrupt_txn_row_is_a_typed_error_for_reader_and_apply() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = crate::open(dir.path()).unwrap();
        put_raw(&sm, |txn| {
            let mut t = txn.open_table(TXNS).unwrap();
            t.insert("bad", [0xff_u8, 0xff, 0xff].as_slice()).unwrap();
        });
        let r = sm.reader();
        assert!(matches!(
            r.get_txn("bad"),
            Err(StoreError::Decode { table: "txns", .. })
        ));
        assert!(r.list_txns(false, None, 10).is_err());
        let err = sm.apply(vec![begin("bad")]).await.unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
        // The failed batch left nothing behind.
        assert_eq!(r.last_applied().unwrap(), None);
        // Building a snapshot reads every record, so it fails too, cleanly.
        assert!(
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .is_err()
        );
    }

    #[test]
    fn pending_entry_without_a_record_is_reported_inconsistent() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, sm) = crate::open(dir.path()).unwrap();
        put_raw(&sm, |txn| {
            txn.open_table(PENDING)
                .unwrap()
                .insert("ghost", ())
                .unwrap();
        });
        assert!(matches!(
            sm.reader().pending(),
            Err(StoreError::Inconsistent(_))
        ));
    }

    #[tokio::test]
    async fn garbage_snapshot_bytes_are_refused_and_leave_the_state_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = crate::open(dir.path()).unwrap();
        sm.apply(vec![begin("keep")]).await.unwrap();
        let meta = Meta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), 9)),
            last_membership: Default::default(),
            snapshot_id: "2-9-1".into(),
        };
        let junk = Box::new(Cursor::new(vec![1, 2, 3]));
        assert!(sm.install_snapshot(&meta, junk).await.is_err());
        assert!(sm.reader().get_txn("keep").unwrap().is_some());
        assert!(sm.get_current_snapshot().await.unwrap().is_none());
    }

    #[test]
    fn a_file_from_another_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let sm = StateMachineStore::open(&path).unwrap();
            put_raw(&sm, |txn| {
                let mut t = txn.open_table(SM_META).unwrap();
                let v = encode("format", &99u32).unwrap();
                t.insert(crate::tables::FORMAT_KEY, v.as_slice()).unwrap();
            });
        }
        assert!(matches!(
            StateMachineStore::open(&path),
            Err(StoreError::UnsupportedFormat { found: 99, .. })
        ));
    }
}
