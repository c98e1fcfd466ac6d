//! Table layouts of the two redb files and the postcard codec for their values.
//!
//! Values that are Rust types (entries, records, log ids) are postcard bytes;
//! keys are native redb keys so that ranges and ordering come from redb.

use crate::StoreError;
use redb::{Database, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;

/// Bumped when a table layout or value encoding changes incompatibly.
pub(crate) const FORMAT_VERSION: u32 = 1;
pub(crate) const FORMAT_KEY: &str = "format";

// ---- raft-log.redb ----

/// Log index -> postcard(`Entry`).
pub(crate) const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
/// `vote`, `committed`, `last_purged` (postcard values) and `format`.
pub(crate) const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const VOTE_KEY: &str = "vote";
pub(crate) const COMMITTED_KEY: &str = "committed";
pub(crate) const LAST_PURGED_KEY: &str = "last_purged";

// ---- state.redb ----

/// Transaction id -> postcard(`TxnRecord`).
pub(crate) const TXNS: TableDefinition<&str, &[u8]> = TableDefinition::new("txns");
/// Ids of transactions that are not completed (what a new leader must resume).
pub(crate) const PENDING: TableDefinition<&str, ()> = TableDefinition::new("pending");
/// (completed at ms, id): the order in which `Expire` drops completed records.
pub(crate) const COMPLETED: TableDefinition<(u64, &str), ()> = TableDefinition::new("completed");
/// Participant name -> endpoint.
pub(crate) const PARTICIPANTS: TableDefinition<&str, &str> = TableDefinition::new("participants");
/// `last_applied`, `membership` (postcard values) and `format`.
pub(crate) const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const LAST_APPLIED_KEY: &str = "last_applied";
pub(crate) const MEMBERSHIP_KEY: &str = "membership";
/// The current snapshot: `meta` (postcard `SnapshotMeta`), `file` (the name
/// of its file in the snapshot directory, see `snapshot_file`) and `seq`
/// (snapshots built so far, for unique snapshot ids across restarts).
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
pub(crate) const SNAPSHOT_META_KEY: &str = "meta";
pub(crate) const SNAPSHOT_FILE_KEY: &str = "file";
pub(crate) const SNAPSHOT_SEQ_KEY: &str = "seq";
/// Where stores before snapshot files kept the whole snapshot as one value;
/// `StateMachineStore::open` moves it out to a file.
pub(crate) const LEGACY_SNAPSHOT_DATA_KEY: &str = "data";

pub(crate) fn encode<T: Serialize + ?Sized>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|source| StoreError::Encode { what, source })
}

pub(crate) fn decode<T: DeserializeOwned>(
    table: &'static str,
    what: &'static str,
    key: impl ToString,
    bytes: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Decode {
        table,
        what,
        key: key.to_string(),
        source,
    })
}

/// A transaction id read from a table key. Every stored id was checked when
/// it entered the cluster, so an invalid one means a damaged file.
pub(crate) fn stored_id(table: &'static str, id: &str) -> Result<dtc_core::TxnId, StoreError> {
    dtc_core::TxnId::new(id)
        .map_err(|e| StoreError::Inconsistent(format!("the {table} table holds an {e}")))
}

/// Reads and decodes one postcard value of a `&str -> &[u8]` meta-like table.
pub(crate) fn get_meta<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    table_name: &'static str,
    key: &'static str,
) -> Result<Option<T>, StoreError> {
    match table.get(key)? {
        Some(v) => decode(table_name, key, key, v.value()).map(Some),
        None => Ok(None),
    }
}

/// Begins a write transaction whose commit is synced and records redb's
/// allocator state ("quick repair"), for every synced commit of both files.
///
/// Without the record, opening a file that was not closed cleanly walks every
/// page of it to rebuild the allocator, so after a crash the start-up time
/// grows with the history the file holds (measured: 0.2-0.3 s for a 270 MB
/// state file with the file in the page cache, 1.6-2.5 s without). With it,
/// the open loads the state the last synced commit recorded (a few ms). The
/// unsynced applies in between never reach the file's header, so a crash
/// always reopens at a commit made here.
pub(crate) fn begin_synced(db: &Database) -> Result<redb::WriteTransaction, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_quick_repair(true);
    Ok(txn)
}

/// Creates every table (so read transactions can always open them) and
/// stamps or checks the format version, in one durable transaction.
pub(crate) fn init(
    db: &Database,
    path: &Path,
    meta: TableDefinition<&str, &[u8]>,
    create: impl FnOnce(&redb::WriteTransaction) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        create(&txn)?;
        let mut t = txn.open_table(meta)?;
        let found: Option<u32> = get_meta(&t, "meta", FORMAT_KEY)?;
        match found {
            Some(v) if v == FORMAT_VERSION => {}
            Some(found) => {
                return Err(StoreError::UnsupportedFormat {
                    path: path.to_path_buf(),
                    found,
                    expected: FORMAT_VERSION,
                });
            }
            None => {
                t.insert(FORMAT_KEY, encode("format", &FORMAT_VERSION)?.as_slice())?;
            }
        }
    }
    txn.commit()?;
    Ok(())
}
