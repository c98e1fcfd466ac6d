//! Read-only queries on the applied state, for the coordinator.

use crate::durable::{DurableMark, make_durable};
use crate::tables::{
    COMPLETED, LAST_APPLIED_KEY, MEMBERSHIP_KEY, PARTICIPANTS, PENDING, SM_META, TXNS, decode,
    get_meta, stored_id,
};
use crate::{LogId, StoreError, StoredMembership};
use dtc_core::{TxnId, TxnRecord};
use redb::{Database, ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use std::ops::Bound;
use std::sync::Arc;

/// A cheap, cloneable read handle on the state machine's tables.
///
/// Every call is one redb read transaction: it sees a consistent state (the
/// result of some whole apply batch), never blocks the writer and is never
/// blocked by it. Calls are short and synchronous; they do no fsync.
#[derive(Clone)]
pub struct StateReader {
    db: Arc<Database>,
    durable: Arc<DurableMark>,
}

impl std::fmt::Debug for StateReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateReader").finish_non_exhaustive()
    }
}

fn get_record(
    txns: &ReadOnlyTable<&'static str, &'static [u8]>,
    txn_id: &str,
) -> Result<Option<TxnRecord>, StoreError> {
    match txns.get(txn_id)? {
        Some(v) => decode("txns", "txn record", txn_id, v.value()).map(Some),
        None => Ok(None),
    }
}

/// The record an index entry names; a missing one means the tables disagree.
fn indexed_record(
    txns: &ReadOnlyTable<&'static str, &'static [u8]>,
    txn_id: &str,
) -> Result<TxnRecord, StoreError> {
    get_record(txns, txn_id)?.ok_or_else(|| {
        StoreError::Inconsistent(format!(
            "pending index names {txn_id:?} but there is no record"
        ))
    })
}

impl StateReader {
    pub(crate) fn new(db: Arc<Database>, durable: Arc<DurableMark>) -> Self {
        StateReader { db, durable }
    }

    /// The record of one transaction.
    pub fn get_txn(&self, txn_id: &str) -> Result<Option<TxnRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        get_record(&txn.open_table(TXNS)?, txn_id)
    }

    /// Ordered by txn id, ids strictly greater than `after`, at most `limit`.
    pub fn list_txns(
        &self,
        pending_only: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TxnRecord>, StoreError> {
        let lower = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        let range = (lower, Bound::<&str>::Unbounded);
        let txn = self.db.begin_read()?;
        let txns = txn.open_table(TXNS)?;
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        if pending_only {
            // Walk the (small) pending index rather than filter the history.
            for row in txn.open_table(PENDING)?.range::<&str>(range)? {
                let (k, _) = row?;
                out.push(indexed_record(&txns, k.value())?);
                if out.len() >= limit {
                    break;
                }
            }
        } else {
            for row in txns.range::<&str>(range)? {
                let (k, v) = row?;
                out.push(decode("txns", "txn record", k.value(), v.value())?);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Every record in the pending index (reads only the pending index + those
    /// records, never the whole history).
    pub fn pending(&self) -> Result<Vec<TxnRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let txns = txn.open_table(TXNS)?;
        let mut out = Vec::new();
        for row in txn.open_table(PENDING)?.iter()? {
            let (k, _) = row?;
            out.push(indexed_record(&txns, k.value())?);
        }
        Ok(out)
    }

    /// Number of transactions in the pending index.
    pub fn pending_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(PENDING)?.len()?)
    }

    /// Registered participants as (name, endpoint), ordered by name.
    pub fn participants(&self) -> Result<Vec<(String, String)>, StoreError> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for row in txn.open_table(PARTICIPANTS)?.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), v.value().to_string()));
        }
        Ok(out)
    }

    /// The endpoint of one participant.
    pub fn participant(&self, name: &str) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(PARTICIPANTS)?
            .get(name)?
            .map(|v| v.value().to_string()))
    }

    /// The log id of the last applied entry.
    pub fn last_applied(&self) -> Result<Option<LogId>, StoreError> {
        let txn = self.db.begin_read()?;
        get_meta(&txn.open_table(SM_META)?, "meta", LAST_APPLIED_KEY)
    }

    /// The last applied entry whose effects are known to be on disk. Applies
    /// commit without an fsync (the synced Raft log re-creates them after a
    /// crash), so this may trail [`last_applied`](Self::last_applied).
    pub fn durable_applied(&self) -> Option<LogId> {
        self.durable.get()
    }

    /// Forces everything applied so far to disk (one synced redb commit) and
    /// returns the applied position that is now durable. Blocks: call it
    /// from a blocking thread.
    pub fn make_durable(&self) -> Result<Option<LogId>, StoreError> {
        make_durable(&self.db, &self.durable)
    }

    /// The membership last applied to the state machine.
    pub fn last_membership(&self) -> Result<StoredMembership, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(get_meta(&txn.open_table(SM_META)?, "meta", MEMBERSHIP_KEY)?.unwrap_or_default())
    }

    /// The completion index as (completed at ms, txn id), oldest first: what
    /// the next `Command::Expire` will consider.
    pub fn completed(&self) -> Result<Vec<(u64, TxnId)>, StoreError> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for row in txn.open_table(COMPLETED)?.iter()? {
            let (k, _) = row?;
            let (ms, id) = k.value();
            out.push((ms, stored_id("completed", id)?));
        }
        Ok(out)
    }

    /// Number of transaction records (pending and completed-but-retained).
    pub fn txn_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(TXNS)?.len()?)
    }
}
