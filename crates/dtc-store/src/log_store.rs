//! The Raft log and vote, in `raft-log.redb`.

use crate::tables::{
    COMMITTED_KEY, LAST_PURGED_KEY, LOG_META, LOGS, VOTE_KEY, decode, encode, get_meta,
};
use crate::{Entry, LogId, NodeId, StorageError, StoreError, TypeConfig, run_blocking};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

/// Most bytes of encoded entries one `limited_get_log_entries` returns. An
/// AppendEntries must be answered within one heartbeat (openraft's RPC
/// timeout), the follower's decode and fsync included; with 1 MiB messages a
/// 10,000-transaction takeover timed replication out and cost the leader its
/// term (docs/performance.md), with 256 KiB it did not.
const MAX_REPLICATION_BYTES: usize = 256 * 1024;

/// redb cache for the log: reads are mostly of recent entries (replication of
/// what was just appended), so a modest cache suffices.
const LOG_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// openraft's log store: entries, vote, committed and purge point in one redb
/// file. Clones share the database; openraft serializes the writes.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// When set, `purge` never passes what this state machine durably
    /// covers (see [`LogStore::purge_covered_by`]).
    covered_by: Option<crate::StateReader>,
    /// The last committed index openraft reported (`save_committed`), plus
    /// one (zero: none yet), for metrics; shared by clones.
    committed: Arc<std::sync::atomic::AtomicU64>,
    /// A purge waiting for the state machine (see
    /// [`LogStore::purge_covered_by`]); shared by clones.
    deferred: Arc<std::sync::Mutex<Deferred>>,
}

/// The deferred purge point, and whether a task is carrying it out.
#[derive(Default)]
struct Deferred {
    upto: Option<LogId>,
    running: bool,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens (creating if missing) a log database file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut builder = redb::Builder::new();
        builder.set_cache_size(LOG_CACHE_BYTES);
        let db = crate::files::create_database(&builder, path)?;
        Self::from_database(db, path)
    }

    /// Opens (creating if empty) a log database on a custom redb storage
    /// backend instead of a file, e.g. a simulated disk for crash tests.
    pub fn open_with_backend(backend: impl redb::StorageBackend) -> Result<Self, StoreError> {
        let db = redb::Builder::new()
            .set_cache_size(LOG_CACHE_BYTES)
            .create_with_backend(backend)?;
        Self::from_database(db, Path::new("<storage backend>"))
    }

    /// Creates the tables of a new file, checks the format of an old one.
    fn from_database(db: redb::Database, path: &Path) -> Result<Self, StoreError> {
        crate::tables::init(&db, path, LOG_META, |txn| {
            txn.open_table(LOGS)?;
            Ok(())
        })?;
        Ok(LogStore {
            db: Arc::new(db),
            covered_by: None,
            committed: Arc::default(),
            deferred: Arc::default(),
        })
    }

    /// The last log index openraft reported committed since this process
    /// opened the log (`None` before the first), for metrics.
    pub fn committed_index(&self) -> Option<u64> {
        self.committed
            .load(std::sync::atomic::Ordering::Relaxed)
            .checked_sub(1)
    }

    /// Makes `purge` never pass what the state machine read by `state` has
    /// durably applied (corner case 18: purging never passes what a durable
    /// snapshot or state machine covers).
    ///
    /// openraft 0.9 installs a snapshot on a follower by queueing the
    /// install to its state-machine worker and purging the log right away,
    /// without waiting for the install. A crash in between left the purge
    /// point past the state machine's last applied entry, and openraft then
    /// refused to start the node (`purge_upto <= snapshot_last_log_id`
    /// panic in `Engine::startup`): found by the failover suite's crash
    /// point `store.snapshot.install`. A purge the state machine does not
    /// cover yet is therefore *deferred*: `purge` answers at once and a
    /// background task deletes the entries once the state machine durably
    /// covers them, however long the install takes. Answering before the
    /// entries are gone is safe: openraft never reads, truncates or
    /// appends at or below a purge point it was told of, and after a crash
    /// before the deferred purge the log still holds those entries (all
    /// committed, so consistent with the snapshot: an install truncates a
    /// conflicting tail first), which start-up reads as an unpurged log.
    /// Waiting inside `purge` instead would stall the Raft core (openraft
    /// awaits log-store calls inline) for the length of the install, and
    /// a deadline on that wait turned a slow install into a fatal storage
    /// error. A leader's purges (after its own snapshot, which syncs the
    /// state machine) are covered and run at once.
    pub fn purge_covered_by(mut self, state: crate::StateReader) -> Self {
        self.covered_by = Some(state);
        self
    }

    /// The purge point openraft asked for that is not carried out yet
    /// (waiting for the state machine), if any.
    pub fn deferred_purge(&self) -> Option<LogId> {
        self.deferred.lock().unwrap_or_else(|p| p.into_inner()).upto
    }

    /// Whether the covering state machine (if any) has durably applied
    /// `upto`. Applies are synced only now and then (see
    /// `StateMachineStore`), so once the entry is applied this forces the
    /// sync rather than wait for it.
    async fn covered(state: &crate::StateReader, upto: &LogId) -> Result<bool, StoreError> {
        if state
            .durable_applied()
            .is_some_and(|a| a.index >= upto.index)
        {
            return Ok(true);
        }
        let reader = state.clone();
        let applied = run_blocking(move || reader.last_applied()).await?;
        if applied.is_none_or(|a| a.index < upto.index) {
            return Ok(false);
        }
        let reader = state.clone();
        let durable = run_blocking(move || reader.make_durable()).await?;
        Ok(durable.is_some_and(|a| a.index >= upto.index))
    }

    /// Deletes the entries up to `log_id` and records the purge point, in
    /// one synced write; never moves the purge point back.
    async fn purge_now(db: Arc<Database>, log_id: LogId) -> Result<(), StoreError> {
        run_blocking(move || {
            let txn = db.begin_write()?;
            {
                // The purge point and the deletion land together, so the log
                // state read back after a crash is always consistent.
                let mut meta = txn.open_table(LOG_META)?;
                let current: Option<LogId> = get_meta(&meta, "meta", LAST_PURGED_KEY)?;
                if current.is_some_and(|c| c >= log_id) {
                    return Ok(());
                }
                meta.insert(LAST_PURGED_KEY, encode("last_purged", &log_id)?.as_slice())?;
                txn.open_table(LOGS)?
                    .retain_in(..=log_id.index, |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    /// Records `upto` as deferred and makes sure one task carries it out.
    fn defer(&self, state: crate::StateReader, upto: LogId) {
        let mut d = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
        d.upto = d.upto.max(Some(upto));
        if d.running {
            return;
        }
        d.running = true;
        tracing::info!(
            %upto,
            "log purge deferred until the state machine covers it (a snapshot install is running)"
        );
        // Weak: a store that is dropped (a node stopping, a test reopening
        // the file) ends the task instead of being kept open by it.
        let db = Arc::downgrade(&self.db);
        let deferred = self.deferred.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                let Some(db) = db.upgrade() else { return };
                let Some(target) = deferred.lock().unwrap_or_else(|p| p.into_inner()).upto else {
                    return;
                };
                let done = match Self::covered(&state, &target).await {
                    Ok(true) => Self::purge_now(db, target).await,
                    Ok(false) => continue,
                    Err(e) => Err(e),
                };
                let mut d = deferred.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = done {
                    // Not fatal here: the entries stay (keeping more log is
                    // always safe), and the next purge tries again. A disk
                    // that fails this write fails the next append, which
                    // openraft does treat as fatal.
                    tracing::warn!(upto = %target, error = %e, "deferred log purge failed");
                    d.running = false;
                    return;
                }
                if d.upto == Some(target) {
                    d.upto = None;
                    d.running = false;
                    tracing::info!(upto = %target, "deferred log purge done");
                    return;
                }
                // A later purge point arrived meanwhile: go on with it.
            }
        });
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(LOG_META)?;
        get_meta(&t, "meta", key)
    }

    /// Writes one meta value in its own transaction, off the tokio workers.
    async fn write_meta(
        &self,
        key: &'static str,
        bytes: Vec<u8>,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let db = self.db.clone();
        run_blocking(move || {
            let mut txn = db.begin_write()?;
            txn.set_durability(durability)?;
            txn.open_table(LOG_META)?.insert(key, bytes.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    fn read_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(LOG_META)?;
        let last_purged: Option<LogId> = get_meta(&meta, "meta", LAST_PURGED_KEY)?;
        let logs = txn.open_table(LOGS)?;
        let last_entry = match logs.last()? {
            Some((k, v)) => Some(decode::<Entry>("logs", "entry", k.value(), v.value())?.log_id),
            None => None,
        };
        // With no entries left (all purged), the last log id is the purge point.
        let last_log_id = last_entry.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    /// Reads entries in `range`, stopping early (after at least one entry)
    /// once `max_bytes` of encoded entries have been read.
    fn read_entries(
        &self,
        range: impl RangeBounds<u64>,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let txn = self.db.begin_read()?;
        let logs = txn.open_table(LOGS)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for row in logs.range(range)? {
            let (k, v) = row?;
            let entry: Entry = decode("logs", "entry", k.value(), v.value())?;
            if entry.log_id.index != k.value() {
                return Err(StoreError::Inconsistent(format!(
                    "log row {} holds the entry of index {}",
                    k.value(),
                    entry.log_id.index
                )));
            }
            bytes += v.value().len();
            out.push(entry);
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_entries(range, usize::MAX)
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_entries(start..end, MAX_REPLICATION_BYTES)
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.read_state()
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        // Immediate: a vote forgotten by a crash lets this node vote twice in a term.
        let write = async {
            let bytes = encode("vote", vote)?;
            self.write_meta(VOTE_KEY, bytes, Durability::Immediate)
                .await
        };
        write
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta(VOTE_KEY)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(c) = &committed {
            self.committed.store(
                c.index.saturating_add(1),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        // A hint only: the state machine is durable at every apply, so a lost
        // `committed` costs nothing. Durability::None skips the fsync (this is
        // called on every commit); the value reaches disk with the next
        // durable commit, and can never be ahead of the durable log because
        // `append` returns only after its entries are synced.
        let write = async {
            let bytes = encode("committed", &committed)?;
            self.write_meta(COMMITTED_KEY, bytes, Durability::None)
                .await
        };
        write.await.map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> = self
            .read_meta(COMMITTED_KEY)
            .map_err(|e| StorageIOError::read(&e))?;
        Ok(committed.flatten())
    }

    // openraft's error type is large; the injected fault returns it as is.
    #[allow(clippy::result_large_err)]
    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        // Fault injection for the failover tests: the disk refuses the
        // write, as a full one does (openraft then stops the node for good).
        fail::fail_point!("store.log.append_error", |_| {
            let e = StoreError::Io {
                path: crate::LOG_FILE.into(),
                source: std::io::Error::other("injected: the disk refused the append"),
            };
            Err(StorageIOError::write_logs(&e).into())
        });
        let db = self.db.clone();
        // Awaiting the commit here (rather than returning early and calling
        // back from the blocking thread) keeps every log write in order: a
        // later truncate or vote can never overtake this append.
        run_blocking(move || {
            let txn = db.begin_write()?; // Durability::Immediate by default
            {
                let mut logs = txn.open_table(LOGS)?;
                for entry in &entries {
                    let bytes = encode("entry", entry)?;
                    logs.insert(entry.log_id.index, bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e))?;
        // Only now are the entries on disk.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        run_blocking(move || {
            let txn = db.begin_write()?;
            txn.open_table(LOGS)?
                .retain_in(log_id.index.., |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        if let Some(state) = self.covered_by.clone() {
            let covered = Self::covered(&state, &log_id)
                .await
                .map_err(|e| StorageIOError::write_logs(&e))?;
            if !covered {
                self.defer(state, log_id);
                return Ok(());
            }
        }
        Self::purge_now(self.db.clone(), log_id)
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;
    use openraft::storage::RaftLogStorageExt;

    /// A follower's snapshot install can take long (a big snapshot, a slow
    /// disk) and openraft asks for the purge before it finishes: the purge
    /// answers at once without passing the state machine, and happens once
    /// the state machine covers it. Waiting instead stalled the Raft core,
    /// and after 60 s turned the install into a fatal storage error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_past_the_state_machine_is_deferred_not_waited_for_or_fatal() {
        use openraft::storage::RaftStateMachine;
        let dir = tempfile::tempdir().unwrap();
        let (log, mut sm) = crate::open(dir.path()).unwrap();
        let mut log = log.purge_covered_by(sm.reader());
        let entries: Vec<Entry> = (0..10)
            .map(|i| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                payload: openraft::EntryPayload::Blank,
            })
            .collect();
        log.blocking_append(entries.clone()).await.unwrap();
        sm.apply(entries[..4].to_vec()).await.unwrap();

        // The state machine has applied up to 3 (a slow install of 7 runs).
        let upto = entries[7].log_id;
        tokio::time::timeout(std::time::Duration::from_secs(10), log.purge(upto))
            .await
            .expect("purge answered without waiting for the state machine")
            .expect("a purge ahead of the state machine is not an error");
        assert_eq!(log.deferred_purge(), Some(upto));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(
            state.last_purged_log_id, None,
            "purged past the state machine"
        );
        assert_eq!(log.try_get_log_entries(0..10).await.unwrap().len(), 10);

        // The install finishes: the deferred purge follows by itself.
        sm.apply(entries[4..].to_vec()).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let state = log.get_log_state().await.unwrap();
            if state.last_purged_log_id == Some(upto) && log.deferred_purge().is_none() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the deferred purge never happened: {state:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let left = log.try_get_log_entries(0..10).await.unwrap();
        assert_eq!(
            left.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![8, 9]
        );
        assert!(
            sm.reader()
                .durable_applied()
                .is_some_and(|a| a.index >= upto.index),
            "purged past the durable mark"
        );
    }

    #[tokio::test]
    async fn corrupt_log_row_is_a_read_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm) = crate::open(dir.path()).unwrap();
        let entries: Vec<Entry> = (1..=3)
            .map(|i| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                payload: openraft::EntryPayload::Blank,
            })
            .collect();
        log.blocking_append(entries).await.unwrap();
        {
            let txn = log.db.begin_write().unwrap();
            txn.open_table(LOGS)
                .unwrap()
                .insert(3, [0xff_u8; 4].as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        assert_eq!(log.try_get_log_entries(1..3).await.unwrap().len(), 2);
        assert!(log.try_get_log_entries(1..4).await.is_err());
        assert!(log.get_log_state().await.is_err());
    }

    #[tokio::test]
    async fn limited_read_stops_at_the_byte_cap_but_never_returns_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm) = crate::open(dir.path()).unwrap();
        let big = "x".repeat(80 * 1024);
        let entries: Vec<Entry> = (1..=8)
            .map(|i| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                payload: openraft::EntryPayload::Normal(dtc_core::Command::Register {
                    name: "p".into(),
                    endpoint: big.clone(),
                }),
            })
            .collect();
        log.blocking_append(entries).await.unwrap();
        let got = log.limited_get_log_entries(1, 9).await.unwrap();
        assert_eq!(got.len(), 4, "4 x 80 KiB reaches the 256 KiB cap");
        assert_eq!(got[0].log_id.index, 1);
        assert_eq!(log.try_get_log_entries(1..9).await.unwrap().len(), 8);
    }
}
