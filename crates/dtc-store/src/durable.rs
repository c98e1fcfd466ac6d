//! How much of the applied state is on disk: the durable mark, and the
//! synced commit that moves it.
//!
//! Shared by the state machine (which commits applies) and the reader
//! (which forces a sync at shutdown); uses only the table layouts.

use crate::tables::{LAST_APPLIED_KEY, SM_META, encode, get_meta};
use crate::{LogId, StoreError};
use redb::Database;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

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
    pub(crate) fn new(applied: Option<LogId>) -> Self {
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
    pub(crate) fn sync_due(&self, entries: u64) -> bool {
        let s = self.lock();
        s.entries_since_sync + entries >= SYNC_EVERY_ENTRIES || s.last_sync.elapsed() >= SYNC_EVERY
    }

    /// Records a commit: a synced one moves the durable position to `at`.
    pub(crate) fn committed(&self, at: Option<LogId>, entries: u64, synced: bool) {
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
    pub(crate) fn reset(&self, at: Option<LogId>) {
        let mut s = self.lock();
        s.applied = at;
        s.last_sync = Instant::now();
        s.entries_since_sync = 0;
    }
}

/// One synced commit that makes every earlier unsynced apply durable;
/// returns the applied position it covers.
pub(crate) fn make_durable(db: &Database, mark: &DurableMark) -> Result<Option<LogId>, StoreError> {
    let txn = crate::tables::begin_synced(db)?;
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
