//! The durable participant log: one record per transaction id, in the
//! application's redb file, next to the application's own tables.
//!
//! | table | key → value |
//! |---|---|
//! | `dtc_participant_log` | txn id → postcard [`LogRecord`] |
//! | `dtc_participant_prepared` | txn id → () for every record in state `Prepared` (what recovery and the in-doubt resolver read, without scanning the history) |
//! | `dtc_participant_meta` | `format` → layout version |
//!
//! Decided records (`Committed`, `Aborted`, `ReadOnly`, `Tombstone`) are
//! kept: they are what lets a duplicate or late Prepare/Commit/Abort get the
//! recorded answer. They are small (id, payload, reason). Dropping one would
//! make a late message for that id look unknown: a late Commit would be
//! refused, a late Prepare would prepare again. So a future pruning tool
//! must only drop records far older than the coordinator's outcome retention
//! window and any plausible network delay.

use crate::ParticipantError;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub(crate) const LOG: TableDefinition<&str, &[u8]> = TableDefinition::new("dtc_participant_log");
pub(crate) const PREPARED: TableDefinition<&str, ()> =
    TableDefinition::new("dtc_participant_prepared");
const META: TableDefinition<&str, u32> = TableDefinition::new("dtc_participant_meta");
const FORMAT_KEY: &str = "format";
/// Bumped when the layout or the record encoding changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

/// Where a transaction's branch stands at this participant (the cluster-wide
/// state of a transaction is the client SDK's `TxnState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BranchState {
    /// Voted prepared; waiting for the decision (holding its reservations).
    Prepared,
    /// The decision was commit and the work was applied.
    Committed,
    /// Voted abort, or prepared and then aborted.
    Aborted,
    /// Voted read-only: nothing to commit or abort.
    ReadOnly,
    /// An abort arrived before any prepare: a late prepare is refused.
    Tombstone,
}

impl BranchState {
    pub fn as_str(self) -> &'static str {
        match self {
            BranchState::Prepared => "prepared",
            BranchState::Committed => "committed",
            BranchState::Aborted => "aborted",
            BranchState::ReadOnly => "read-only",
            BranchState::Tombstone => "tombstone",
        }
    }
}

/// One transaction's record in the participant log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    pub state: BranchState,
    /// The branch payload as prepared (empty for a tombstone).
    pub payload: Vec<u8>,
    /// Why it aborted: the abort vote's reason or the coordinator's.
    pub reason: String,
    /// Whether this participant voted prepared (an `Aborted` record may have
    /// been prepared and then aborted, or refused at prepare).
    pub voted_prepared: bool,
    /// Wall-clock milliseconds of the last change (for operators and for
    /// the in-doubt resolver's age threshold; never used for decisions).
    pub updated_at_ms: u64,
}

pub(crate) fn decode(key: &str, bytes: &[u8]) -> Result<LogRecord, ParticipantError> {
    postcard::from_bytes(bytes).map_err(|source| ParticipantError::Corrupt {
        key: key.to_string(),
        source,
    })
}

/// Creates the tables if missing and checks the format version. Blocking.
pub(crate) fn init(db: &Database) -> Result<(), ParticipantError> {
    let tx = db.begin_write()?;
    {
        tx.open_table(LOG)?;
        tx.open_table(PREPARED)?;
        let mut meta = tx.open_table(META)?;
        let found = meta.get(FORMAT_KEY)?.map(|v| v.value());
        match found {
            None => {
                meta.insert(FORMAT_KEY, FORMAT_VERSION)?;
            }
            Some(v) if v == FORMAT_VERSION => {}
            Some(found) => {
                return Err(ParticipantError::Format {
                    found,
                    expected: FORMAT_VERSION,
                });
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// Reads the record of `txn_id` inside a write transaction.
pub(crate) fn get_in(
    tx: &redb::WriteTransaction,
    txn_id: &str,
) -> Result<Option<LogRecord>, ParticipantError> {
    let table = tx.open_table(LOG)?;
    let found = table.get(txn_id)?;
    match found {
        Some(v) => decode(txn_id, v.value()).map(Some),
        None => Ok(None),
    }
}

/// Writes the record of `txn_id` and keeps the prepared index in step.
pub(crate) fn put_in(
    tx: &redb::WriteTransaction,
    txn_id: &str,
    record: &LogRecord,
) -> Result<(), ParticipantError> {
    let bytes = postcard::to_allocvec(record).map_err(|source| ParticipantError::Corrupt {
        key: txn_id.to_string(),
        source,
    })?;
    tx.open_table(LOG)?.insert(txn_id, bytes.as_slice())?;
    let mut prepared = tx.open_table(PREPARED)?;
    if record.state == BranchState::Prepared {
        prepared.insert(txn_id, ())?;
    } else {
        prepared.remove(txn_id)?;
    }
    Ok(())
}

/// Every prepared record (through the index), inside a write transaction.
pub(crate) fn prepared_in(
    tx: &redb::WriteTransaction,
) -> Result<Vec<(String, LogRecord)>, ParticipantError> {
    prepared_rows(&tx.open_table(PREPARED)?, &tx.open_table(LOG)?)
}

/// The records the prepared index names, from a read or a write transaction.
fn prepared_rows(
    index: &impl ReadableTable<&'static str, ()>,
    log: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<(String, LogRecord)>, ParticipantError> {
    let mut out = Vec::new();
    for row in index.iter()? {
        let (k, _) = row?;
        let id = k.value().to_string();
        if let Some(v) = log.get(id.as_str())? {
            out.push((id.clone(), decode(&id, v.value())?));
        }
    }
    Ok(out)
}

/// Read access to the participant log, for applications (audits, operator
/// tools) and tests. Reads are short blocking redb read transactions; call
/// large scans from `spawn_blocking`.
///
/// A read may see a record whose write is being synced right now (the SDK
/// answers the coordinator only after the sync); after a crash such a record
/// can be missing, and the coordinator's retry recreates it.
#[derive(Clone)]
pub struct ParticipantLog {
    db: Arc<Database>,
}

impl std::fmt::Debug for ParticipantLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParticipantLog").finish_non_exhaustive()
    }
}

impl ParticipantLog {
    /// A view of the log in `db` (the tables are created by the server at start;
    /// before that every read finds nothing).
    pub fn new(db: Arc<Database>) -> Self {
        ParticipantLog { db }
    }

    /// The record of one transaction.
    pub fn get(&self, txn_id: &str) -> Result<Option<LogRecord>, ParticipantError> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let found = table.get(txn_id)?;
        match found {
            Some(v) => decode(txn_id, v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// How many transactions are prepared and undecided (the index's size).
    pub fn prepared_count(&self) -> Result<u64, ParticipantError> {
        use redb::ReadableTableMetadata;
        let tx = self.db.begin_read()?;
        match tx.open_table(PREPARED) {
            Ok(index) => Ok(index.len()?),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Every prepared, undecided transaction.
    pub fn prepared(&self) -> Result<Vec<(String, LogRecord)>, ParticipantError> {
        let tx = self.db.begin_read()?;
        let (index, log) = match (tx.open_table(PREPARED), tx.open_table(LOG)) {
            (Ok(i), Ok(l)) => (i, l),
            (Err(redb::TableError::TableDoesNotExist(_)), _)
            | (_, Err(redb::TableError::TableDoesNotExist(_))) => return Ok(vec![]),
            (Err(e), _) | (_, Err(e)) => return Err(e.into()),
        };
        prepared_rows(&index, &log)
    }

    /// Up to `limit` records with ids strictly after `after`, in id order.
    pub fn scan(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, LogRecord)>, ParticipantError> {
        use std::ops::Bound;
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![]),
            Err(e) => return Err(e.into()),
        };
        let range = match after {
            Some(a) => table.range::<&str>((Bound::Excluded(a), Bound::Unbounded))?,
            None => table.range::<&str>(..)?,
        };
        let mut out = Vec::new();
        for row in range.take(limit) {
            let (k, v) = row?;
            let id = k.value().to_string();
            out.push((id.clone(), decode(&id, v.value())?));
        }
        Ok(out)
    }
}
