//! The transaction state machine and its snapshots, in `state.redb`.

use crate::durable::DurableMark;
use crate::reader::StateReader;
use crate::snapshot_file::{self, Item, SnapshotDir, SnapshotFile};
use crate::tables::{
    COMPLETED, LAST_APPLIED_KEY, LEGACY_SNAPSHOT_DATA_KEY, MEMBERSHIP_KEY, PARTICIPANTS, PENDING,
    SM_META, SNAPSHOT, SNAPSHOT_FILE_KEY, SNAPSHOT_META_KEY, SNAPSHOT_SEQ_KEY, TXNS, decode,
    encode, get_meta, stored_id,
};
use crate::{Entry, LogId, NodeId, StorageError, StoreError, StoredMembership, TypeConfig};
use dtc_core::{ApplyStore, Command, CommandResult, TxnId, TxnRecord};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{BasicNode, EntryPayload, OptionalSend, StorageIOError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table};
use serde::{Deserialize, Serialize};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

type Meta = SnapshotMeta<NodeId, BasicNode>;

/// openraft's state machine: applies committed [`dtc_core::Command`]s to the
/// redb tables, builds and installs snapshots. Clones share the database.
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<Database>,
    durable: Arc<DurableMark>,
    snapshots: Arc<SnapshotDir>,
}

/// redb cache of the state machine. Reads are of recent and pending records
/// (phase 2, takeover, outcome queries); older completed records are read
/// only by clients retrying an id or listing history, and may come from disk.
/// Bounds the node's memory whatever the history (redb's default is 1 GiB).
pub const STATE_CACHE_BYTES: usize = 64 * 1024 * 1024;

impl std::fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore").finish_non_exhaustive()
    }
}

/// How stores before snapshot files kept a snapshot: one postcard value in
/// the `snapshot` table. Read only to move such a snapshot out to a file.
#[derive(Debug, Serialize, Deserialize)]
struct LegacySnapshotData {
    format: u32,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    txns: Vec<TxnRecord>,
    pending: Vec<String>,
    completed: Vec<(u64, String)>,
    participants: Vec<(String, String)>,
}

impl StateMachineStore {
    /// Opens (creating if missing) a state machine database file; its
    /// snapshots live in the directory [`crate::SNAPSHOT_DIR`] beside it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut builder = redb::Builder::new();
        builder.set_cache_size(STATE_CACHE_BYTES);
        let db = crate::files::create_database(&builder, path)?;
        crate::tables::init(&db, path, SM_META, create_tables)?;
        Self::with_db(db, &path.with_file_name(crate::SNAPSHOT_DIR))
    }

    /// Opens (creating if empty) a state machine database on a custom redb
    /// storage backend instead of a file, e.g. a simulated disk for crash
    /// tests, with its snapshot files in `snapshot_dir`.
    pub fn open_with_backend(
        backend: impl redb::StorageBackend,
        snapshot_dir: &Path,
    ) -> Result<Self, StoreError> {
        let db = redb::Builder::new()
            .set_cache_size(STATE_CACHE_BYTES)
            .create_with_backend(backend)?;
        crate::tables::init(&db, Path::new("<storage backend>"), SM_META, create_tables)?;
        Self::with_db(db, snapshot_dir)
    }

    fn with_db(db: Database, snapshot_dir: &Path) -> Result<Self, StoreError> {
        let snapshots = SnapshotDir::open(snapshot_dir)?;
        move_legacy_snapshot_to_file(&db, &snapshots)?;
        // Whatever the file holds at open is on disk: that is the durable mark.
        let (applied, current_file) = {
            let txn = db.begin_read()?;
            let applied = get_meta::<LogId>(&txn.open_table(SM_META)?, "meta", LAST_APPLIED_KEY)?;
            let file =
                get_meta::<String>(&txn.open_table(SNAPSHOT)?, "snapshot", SNAPSHOT_FILE_KEY)?;
            (applied, file)
        };
        snapshots.remove_all_but(current_file.as_deref())?;
        Ok(StateMachineStore {
            db: Arc::new(db),
            durable: Arc::new(DurableMark::new(applied)),
            snapshots: Arc::new(snapshots),
        })
    }

    /// Keeps every sealed snapshot file even after a newer one replaces it,
    /// so that a crash test can reopen a copy of the directory as it was at
    /// any earlier point. Never for production: the files pile up.
    #[cfg(feature = "test-support")]
    pub fn keep_replaced_snapshots(&self) {
        self.snapshots.keep_replaced();
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
        let Some(name) = get_meta::<String>(&t, "snapshot", SNAPSHOT_FILE_KEY)? else {
            return Err(StoreError::Inconsistent(format!(
                "snapshot {} has meta but no file",
                meta.snapshot_id
            )));
        };
        // The file cannot vanish under a reader: only a newer snapshot's
        // commit replaces the name, and an open file outlives its removal.
        let file = self.snapshots.open_sealed(&name)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}

fn create_tables(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(TXNS)?;
    txn.open_table(PENDING)?;
    txn.open_table(COMPLETED)?;
    txn.open_table(PARTICIPANTS)?;
    txn.open_table(SNAPSHOT)?;
    Ok(())
}

/// A store written before snapshot files holds its current snapshot inside
/// `state.redb`; write it out as a file and drop the value, so that a
/// follower that needs it still gets it after the upgrade.
fn move_legacy_snapshot_to_file(db: &Database, dir: &SnapshotDir) -> Result<(), StoreError> {
    let legacy = {
        let txn = db.begin_read()?;
        let t = txn.open_table(SNAPSHOT)?;
        match t.get(LEGACY_SNAPSHOT_DATA_KEY)? {
            Some(v) => decode::<LegacySnapshotData>(
                "snapshot",
                "snapshot data",
                LEGACY_SNAPSHOT_DATA_KEY,
                v.value(),
            )?,
            None => return Ok(()),
        }
    };
    let header = snapshot_file::Header {
        format: crate::tables::FORMAT_VERSION,
        last_applied: legacy.last_applied,
        last_membership: legacy.last_membership.clone(),
    };
    let mut w = snapshot_file::Writer::create(dir.new_partial("moved"), &header)?;
    for r in &legacy.txns {
        let record = encode("txn record", r)?;
        w.item(&Item::Txn {
            id: r.txn_id.as_str(),
            record: &record,
        })?;
    }
    for id in &legacy.pending {
        w.item(&Item::Pending(id))?;
    }
    for (ms, id) in &legacy.completed {
        w.item(&Item::Completed(*ms, id))?;
    }
    for (name, endpoint) in &legacy.participants {
        w.item(&Item::Participant(name, endpoint))?;
    }
    let name = dir.seal(&w.finish()?)?;
    let txn = crate::tables::begin_synced(db)?;
    {
        let mut t = txn.open_table(SNAPSHOT)?;
        t.insert(
            SNAPSHOT_FILE_KEY,
            encode("snapshot file", &name)?.as_slice(),
        )?;
        t.remove(LEGACY_SNAPSHOT_DATA_KEY)?;
    }
    txn.commit()?;
    tracing::info!(file = %name, "moved the current snapshot out of state.redb into its own file");
    Ok(())
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

    fn get_txn(&mut self, txn_id: &TxnId) -> Result<Option<TxnRecord>, StoreError> {
        match self.txns.get(txn_id.as_str())? {
            Some(v) => decode("txns", "txn record", txn_id, v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn put_txn(&mut self, record: &TxnRecord) -> Result<(), StoreError> {
        let bytes = encode("txn record", record)?;
        self.txns.insert(record.txn_id.as_str(), bytes.as_slice())?;
        Ok(())
    }

    fn delete_txn(&mut self, txn_id: &TxnId) -> Result<(), StoreError> {
        self.txns.remove(txn_id.as_str())?;
        Ok(())
    }

    fn set_pending(&mut self, txn_id: &TxnId, pending: bool) -> Result<(), StoreError> {
        if pending {
            self.pending.insert(txn_id.as_str(), ())?;
        } else {
            self.pending.remove(txn_id.as_str())?;
        }
        Ok(())
    }

    fn add_completed(&mut self, completed_ms: u64, txn_id: &TxnId) -> Result<(), StoreError> {
        self.completed.insert((completed_ms, txn_id.as_str()), ())?;
        Ok(())
    }

    fn take_completed_until(
        &mut self,
        cutoff_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, TxnId)>, StoreError> {
        // Keys sort by time first, so everything at or before the cutoff is
        // a prefix; read at most `limit` of it, then remove those.
        let upper = match cutoff_ms.checked_add(1) {
            Some(next) => Bound::Excluded((next, "")),
            None => Bound::Unbounded,
        };
        let mut taken = Vec::new();
        for row in self
            .completed
            .range::<(u64, &str)>((Bound::Unbounded, upper))?
            .take(limit)
        {
            let (k, _) = row?;
            let (ms, id) = k.value();
            taken.push((ms, stored_id("completed", id)?));
        }
        for (ms, id) in &taken {
            self.completed.remove((*ms, id.as_str()))?;
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
    let sync = mark.sync_due(entries.len() as u64);
    let txn = if sync {
        crate::tables::begin_synced(db).map_err(fail)?
    } else {
        let mut txn = db.begin_write().map_err(|e| fail(e.into()))?;
        // See `DurableMark`: the synced log makes this commit recoverable.
        txn.set_durability(Durability::None)
            .map_err(|e| fail(StoreError::Inconsistent(format!("set durability: {e}"))))?;
        txn
    };
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
                            dtc_util::crash_point!("store.apply.mid_batch");
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

/// Streams every state table of one read transaction (a consistent cut that
/// never blocks applies) into the file `partial`; returns the applied
/// position and membership it holds.
fn write_snapshot_file(
    db: &Database,
    partial: &Path,
) -> Result<(Option<LogId>, StoredMembership), StoreError> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(SM_META)?;
    let header = snapshot_file::Header {
        format: crate::tables::FORMAT_VERSION,
        last_applied: get_meta(&meta, "meta", LAST_APPLIED_KEY)?,
        last_membership: get_meta(&meta, "meta", MEMBERSHIP_KEY)?.unwrap_or_default(),
    };
    let mut w = snapshot_file::Writer::create(partial.to_path_buf(), &header)?;
    for row in txn.open_table(TXNS)?.iter()? {
        let (k, v) = row?;
        // Copied as stored, but checked: a row this build cannot read must
        // stop the snapshot here rather than fail every follower's install.
        decode::<TxnRecord>("txns", "txn record", k.value(), v.value())?;
        w.item(&Item::Txn {
            id: k.value(),
            record: v.value(),
        })?;
    }
    for row in txn.open_table(PENDING)?.iter()? {
        w.item(&Item::Pending(row?.0.value()))?;
    }
    for row in txn.open_table(COMPLETED)?.iter()? {
        let (k, _) = row?;
        let (ms, id) = k.value();
        w.item(&Item::Completed(ms, id))?;
    }
    for row in txn.open_table(PARTICIPANTS)?.iter()? {
        let (k, v) = row?;
        w.item(&Item::Participant(k.value(), v.value()))?;
    }
    w.finish()?;
    Ok((header.last_applied, header.last_membership))
}

/// Builds a snapshot and makes it current (unless a newer one was installed
/// meanwhile), durably, so `get_current_snapshot` survives restarts and the
/// log purge that follows a snapshot never outruns it.
fn build_snapshot_sync(
    db: &Database,
    mark: &DurableMark,
    dir: &SnapshotDir,
) -> Result<Snapshot<TypeConfig>, StoreError> {
    let partial = dir.new_partial("built");
    let (last_applied, last_membership) = match write_snapshot_file(db, &partial) {
        Ok(built) => built,
        Err(e) => {
            // Leave no half-written file behind (open would remove it too).
            dir.remove_path(&partial);
            return Err(e);
        }
    };
    let name = dir.seal(&partial)?;
    // Opened before it can be replaced, so the caller reads this snapshot
    // even if a newer one became current meanwhile.
    let file = dir.open_sealed(&name)?;

    let txn = crate::tables::begin_synced(db)?;
    let (meta, replaced) = {
        let mut t = txn.open_table(SNAPSHOT)?;
        let seq = get_meta::<u64>(&t, "snapshot", SNAPSHOT_SEQ_KEY)?.unwrap_or(0) + 1;
        let (term, index) = last_applied
            .map(|l| (l.leader_id.term, l.index))
            .unwrap_or((0, 0));
        let meta = Meta {
            last_log_id: last_applied,
            last_membership,
            snapshot_id: format!("{term}-{index}-{seq}"),
        };
        t.insert(SNAPSHOT_SEQ_KEY, encode("seq", &seq)?.as_slice())?;
        let current = get_meta::<Meta>(&t, "snapshot", SNAPSHOT_META_KEY)?;
        // Building runs beside apply and install; an install that finished
        // while we were reading holds newer state and must stay current.
        let replaced = if current.is_none_or(|c| c.last_log_id <= meta.last_log_id) {
            let old = get_meta::<String>(&t, "snapshot", SNAPSHOT_FILE_KEY)?;
            t.insert(
                SNAPSHOT_META_KEY,
                encode("snapshot meta", &meta)?.as_slice(),
            )?;
            t.insert(
                SNAPSHOT_FILE_KEY,
                encode("snapshot file", &name)?.as_slice(),
            )?;
            Some(old)
        } else {
            None
        };
        (meta, replaced)
    };
    txn.commit()?; // synced: it also makes every apply up to the snapshot durable
    mark.committed(last_applied, 0, true);
    match replaced {
        Some(Some(old)) => dir.remove(&old),
        Some(None) => {}
        // Ours is not current: only the open handle above still uses it.
        None => dir.remove(&name),
    }
    Ok(Snapshot {
        meta,
        snapshot: Box::new(file),
    })
}

/// Replaces every state table with the snapshot file's contents and makes it
/// the current snapshot, in one durable transaction. The file is checked
/// while it is read (header against `meta`, every record decodes, the row
/// count at the end); any failure leaves the state as it was.
fn install_snapshot_sync(
    db: &Database,
    mark: &DurableMark,
    dir: &SnapshotDir,
    meta: &Meta,
    received: &Path,
) -> Result<(), StoreError> {
    let (mut rows, header) = snapshot_file::Reader::open(received)?;
    if header.format != crate::tables::FORMAT_VERSION {
        return Err(StoreError::Inconsistent(format!(
            "snapshot {} has format {}, expected {}",
            meta.snapshot_id,
            header.format,
            crate::tables::FORMAT_VERSION
        )));
    }
    if header.last_applied != meta.last_log_id || header.last_membership != meta.last_membership {
        return Err(StoreError::Inconsistent(format!(
            "snapshot {} data is at {:?} but its meta says {:?}",
            meta.snapshot_id, header.last_applied, meta.last_log_id
        )));
    }
    let txn = crate::tables::begin_synced(db)?;
    // Deleting whole tables frees their pages at once, cheaper than row by row.
    txn.delete_table(TXNS)?;
    txn.delete_table(PENDING)?;
    txn.delete_table(COMPLETED)?;
    txn.delete_table(PARTICIPANTS)?;
    let old = {
        let mut txns = txn.open_table(TXNS)?;
        let mut pending = txn.open_table(PENDING)?;
        let mut completed = txn.open_table(COMPLETED)?;
        let mut participants = txn.open_table(PARTICIPANTS)?;
        while let Some(item) = rows.next_item()? {
            match item {
                Item::Txn { id, record } => {
                    let r: TxnRecord = decode("snapshot", "txn record", id, record)?;
                    if r.txn_id != id {
                        return Err(StoreError::Inconsistent(format!(
                            "snapshot {} files record {} under id {id}",
                            meta.snapshot_id, r.txn_id
                        )));
                    }
                    txns.insert(id, record)?;
                }
                Item::Pending(id) => {
                    pending.insert(id, ())?;
                }
                Item::Completed(ms, id) => {
                    completed.insert((ms, id), ())?;
                }
                Item::Participant(name, endpoint) => {
                    participants.insert(name, endpoint)?;
                }
                Item::End { .. } => unreachable!("the reader consumes the end"),
            }
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
        let old = get_meta::<String>(&s, "snapshot", SNAPSHOT_FILE_KEY)?;
        // Sealed (synced and renamed) before the commit names it.
        let name = dir.seal(received)?;
        s.insert(SNAPSHOT_META_KEY, encode("snapshot meta", meta)?.as_slice())?;
        s.insert(
            SNAPSHOT_FILE_KEY,
            encode("snapshot file", &name)?.as_slice(),
        )?;
        old
    };
    // Crash point: the snapshot is written but not committed.
    dtc_util::crash_point!("store.snapshot.install");
    txn.commit()?;
    mark.reset(meta.last_log_id);
    if let Some(old) = old {
        dir.remove(&old);
    }
    Ok(())
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (db, mark, dir) = (
            self.db.clone(),
            self.durable.clone(),
            self.snapshots.clone(),
        );
        crate::run_blocking(move || build_snapshot_sync(&db, &mark, &dir))
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
        match dtc_util::blocking::spawn(move || apply_batch(&db, &mark, &entries)).await {
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        self.snapshots
            .create_receiving()
            .map(Box::new)
            .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        let (db, mark, dir) = (
            self.db.clone(),
            self.durable.clone(),
            self.snapshots.clone(),
        );
        let meta2 = meta.clone();
        let path = snapshot.path().to_path_buf();
        // openraft has flushed the received bytes (shutdown); the blocking
        // job reads the file by path, and seals it if it installs.
        drop(snapshot);
        let result = crate::run_blocking({
            let path = path.clone();
            move || install_snapshot_sync(&db, &mark, &dir, &meta2, &path)
        })
        .await;
        if result.is_err() {
            // A refused transfer is not kept (the leader sends it again).
            self.snapshots.remove_path(&path);
        }
        result.map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e).into())
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
    use tokio::io::AsyncWriteExt;

    fn begin(id: &str) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(Command::Begin {
                txn_id: id.parse().unwrap(),
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
        let mut junk = sm.begin_receiving_snapshot().await.unwrap();
        let received = junk.path().to_path_buf();
        junk.write_all(&[1, 2, 3]).await.unwrap();
        junk.shutdown().await.unwrap();
        assert!(sm.install_snapshot(&meta, junk).await.is_err());
        assert!(sm.reader().get_txn("keep").unwrap().is_some());
        assert!(sm.get_current_snapshot().await.unwrap().is_none());
        assert!(!received.exists(), "a refused transfer is removed");
    }

    async fn built(sm: &mut StateMachineStore) -> (Meta, Vec<u8>) {
        use tokio::io::AsyncReadExt;
        let mut snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let mut bytes = Vec::new();
        snap.snapshot.read_to_end(&mut bytes).await.unwrap();
        (snap.meta, bytes)
    }

    async fn install_bytes(
        sm: &mut StateMachineStore,
        meta: &Meta,
        bytes: &[u8],
    ) -> Result<(), StorageError> {
        let mut rx = sm.begin_receiving_snapshot().await.unwrap();
        rx.write_all(bytes).await.unwrap();
        rx.shutdown().await.unwrap();
        sm.install_snapshot(meta, rx).await
    }

    fn snapshot_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(crate::SNAPSHOT_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_truncated_or_extended_snapshot_file_is_refused_whole() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (_a_log, mut a) = crate::open(a_dir.path()).unwrap();
        a.apply(vec![begin("t1")]).await.unwrap();
        let (meta, bytes) = built(&mut a).await;
        let (_b_log, mut b) = crate::open(b_dir.path()).unwrap();
        b.apply(vec![begin("keep")]).await.unwrap();
        // Cut anywhere, the file stops short of the counted end.
        for cut in [bytes.len() - 1, bytes.len() / 2, 9] {
            let err = install_bytes(&mut b, &meta, &bytes[..cut])
                .await
                .unwrap_err();
            assert!(err.to_string().contains("truncated"), "cut {cut}: {err}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let err = install_bytes(&mut b, &meta, &longer).await.unwrap_err();
        assert!(err.to_string().contains("after the end"), "{err}");
        assert!(b.reader().get_txn("keep").unwrap().is_some());
        assert!(b.reader().get_txn("t1").unwrap().is_none());
        assert!(
            snapshot_files(b_dir.path()).is_empty(),
            "refused files are removed"
        );
        // The whole file installs.
        install_bytes(&mut b, &meta, &bytes).await.unwrap();
        assert!(b.reader().get_txn("t1").unwrap().is_some());
        assert!(b.reader().get_txn("keep").unwrap().is_none());
        assert_eq!(snapshot_files(b_dir.path()).len(), 1);
    }

    #[tokio::test]
    async fn only_the_current_snapshot_file_is_kept_and_open_removes_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_log, mut sm) = crate::open(dir.path()).unwrap();
            sm.apply(vec![begin("t1")]).await.unwrap();
            built(&mut sm).await;
            built(&mut sm).await;
            assert_eq!(
                snapshot_files(dir.path()).len(),
                1,
                "the replaced one is gone"
            );
            // What crashes leave: an interrupted build and transfer, and a
            // sealed file that never became current.
            let snaps = dir.path().join(crate::SNAPSHOT_DIR);
            for leftover in [
                "built-1-0.partial",
                "received-2-0.partial",
                "built-3-0.snap",
            ] {
                std::fs::write(snaps.join(leftover), b"x").unwrap();
            }
            std::fs::write(snaps.join("README"), b"not ours").unwrap();
        }
        let (_log, mut sm) = crate::open(dir.path()).unwrap();
        let files = snapshot_files(dir.path());
        assert_eq!(files.len(), 2, "{files:?}");
        assert!(files.contains(&"README".to_string()));
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id, Some(begin("t1").log_id));
    }

    #[tokio::test]
    async fn a_snapshot_stored_inside_state_redb_by_an_older_version_moves_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 7)),
            last_membership: Default::default(),
            snapshot_id: "1-7-1".into(),
        };
        let record = TxnRecord {
            txn_id: "old".parse().unwrap(),
            participants: vec!["a".into()],
            digest: Some([3; 32]),
            timeout_ms: 10,
            created_ms: 5,
            phase: dtc_core::Phase::Preparing,
        };
        {
            let (_log, sm) = crate::open(dir.path()).unwrap();
            let legacy = LegacySnapshotData {
                format: crate::tables::FORMAT_VERSION,
                last_applied: meta.last_log_id,
                last_membership: Default::default(),
                txns: vec![record.clone()],
                pending: vec!["old".into()],
                completed: vec![],
                participants: vec![("a".into(), "http://a".into())],
            };
            put_raw(&sm, |txn| {
                let mut t = txn.open_table(SNAPSHOT).unwrap();
                t.insert(SNAPSHOT_META_KEY, encode("m", &meta).unwrap().as_slice())
                    .unwrap();
                let data = encode("d", &legacy).unwrap();
                t.insert(LEGACY_SNAPSHOT_DATA_KEY, data.as_slice()).unwrap();
            });
        }
        let (_log, mut sm) = crate::open(dir.path()).unwrap();
        let txn = sm.db.begin_read().unwrap();
        let t = txn.open_table(SNAPSHOT).unwrap();
        assert!(t.get(LEGACY_SNAPSHOT_DATA_KEY).unwrap().is_none());
        drop((t, txn));
        let (got_meta, bytes) = {
            use tokio::io::AsyncReadExt;
            let mut cur = sm.get_current_snapshot().await.unwrap().unwrap();
            let mut bytes = Vec::new();
            cur.snapshot.read_to_end(&mut bytes).await.unwrap();
            (cur.meta, bytes)
        };
        assert_eq!(got_meta, meta);
        let other = tempfile::tempdir().unwrap();
        let (_l, mut fresh) = crate::open(other.path()).unwrap();
        install_bytes(&mut fresh, &meta, &bytes).await.unwrap();
        let r = fresh.reader();
        assert_eq!(r.get_txn("old").unwrap(), Some(record));
        assert_eq!(r.pending_count().unwrap(), 1);
        assert_eq!(r.participant("a").unwrap().as_deref(), Some("http://a"));
        assert_eq!(r.last_applied().unwrap(), meta.last_log_id);
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
