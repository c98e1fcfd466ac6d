//! # dtc-ledger: a sample dtc participant
//!
//! Accounts with `i64` balances, kept in the same redb file as the
//! participant log so that a branch's reservation and its log record commit
//! together. A branch's payload is a protobuf `dtc.v1.LedgerPayload` (a list
//! of `(account, delta)`; see `proto/dtc/v1/ledger.proto`).
//!
//! ```text
//! Prepare(payload) ─► decode ─► net delta per account ─► for each account:
//!     held by another prepared txn?  → vote abort (no-wait: no deadlocks)
//!     balance + delta < 0 on a debit? → vote abort (insufficient funds)
//!   else take the locks (table ledger_locks: account → txn) → vote prepared
//! Commit ─► balance += delta, release the locks   (table ledger_balances)
//! Abort  ─► release the locks
//! restart ─► recover(): rebuild ledger_locks from the prepared records
//! ```
//!
//! The deltas of a prepared transaction are not copied anywhere: they are
//! the payload in its participant-log record. `Ledger.Balance` reads
//! committed balances; `Ledger.Audit` lists the decided transactions from
//! the participant log, for checkers (e.g. "the sum of balances equals the
//! sum of committed deltas").

use dtc_participant::redb::{self, Database, ReadableDatabase, ReadableTable, TableDefinition};
use dtc_participant::{
    ParticipantBuilder, ParticipantError, ParticipantLog, ParticipantServer, PreparedTxn, Resource,
    ResourceError, Routes, TxnState, Vote,
};
use dtc_proto::v1 as pb;
use prost::Message;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::error;

pub use pb::{LedgerEntry, LedgerPayload};

/// Account → committed balance.
const BALANCES: TableDefinition<&str, i64> = TableDefinition::new("ledger_balances");
/// Account → the prepared transaction holding it.
const LOCKS: TableDefinition<&str, &str> = TableDefinition::new("ledger_locks");

/// Longest account name, in bytes.
pub const MAX_ACCOUNT_LEN: usize = 128;

/// Errors of the ledger's own API.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Participant(#[from] ParticipantError),
    #[error("ledger storage: {0}")]
    Storage(#[from] redb::Error),
    #[error("invalid account name {0:?}: {1}")]
    InvalidAccount(String, String),
}

macro_rules! from_redb {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for LedgerError {
            fn from(e: $t) -> Self {
                LedgerError::Storage(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
);

/// Checks an account name: 1..=128 bytes, no control characters.
pub fn validate_account(account: &str) -> Result<(), LedgerError> {
    let bad = |why: &str| {
        Err(LedgerError::InvalidAccount(
            account.chars().take(64).collect(),
            why.into(),
        ))
    };
    if account.is_empty() {
        return bad("must not be empty");
    }
    if account.len() > MAX_ACCOUNT_LEN {
        return bad("longer than 128 bytes");
    }
    if account.chars().any(char::is_control) {
        return bad("control characters are not allowed");
    }
    Ok(())
}

/// Encodes a ledger branch payload from `(account, delta)` pairs.
pub fn payload(entries: &[(&str, i64)]) -> Vec<u8> {
    LedgerPayload {
        entries: entries
            .iter()
            .map(|(account, delta)| LedgerEntry {
                account: account.to_string(),
                delta: *delta,
            })
            .collect(),
    }
    .encode_to_vec()
}

/// Decodes a ledger branch payload.
pub fn decode_payload(bytes: &[u8]) -> Result<LedgerPayload, prost::DecodeError> {
    LedgerPayload::decode(bytes)
}

/// The net delta per account (an account may appear several times), or why
/// the payload is unacceptable.
fn net_deltas(p: &LedgerPayload) -> Result<BTreeMap<String, i64>, String> {
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    for e in &p.entries {
        validate_account(&e.account).map_err(|err| err.to_string())?;
        let d = out.entry(e.account.clone()).or_insert(0);
        *d = d
            .checked_add(e.delta)
            .ok_or_else(|| format!("the deltas of account {:?} overflow", e.account))?;
    }
    Ok(out)
}

/// The ledger: a [`Resource`] over tables in the participant's database.
#[derive(Clone)]
pub struct Ledger {
    db: Arc<Database>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

impl Ledger {
    /// A ledger in `db` (tables are created if missing). Blocking.
    pub fn new(db: Arc<Database>) -> Result<Ledger, LedgerError> {
        let tx = db.begin_write()?;
        tx.open_table(BALANCES)?;
        tx.open_table(LOCKS)?;
        tx.commit()?;
        Ok(Ledger { db })
    }

    /// The committed balance of `account` (0 if never used). Blocking (a
    /// short read transaction).
    pub fn balance(&self, account: &str) -> Result<i64, LedgerError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(BALANCES)?;
        Ok(t.get(account)?.map(|v| v.value()).unwrap_or(0))
    }

    /// The prepared transaction holding `account`, if any.
    pub fn locked_by(&self, account: &str) -> Result<Option<String>, LedgerError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(LOCKS)?;
        Ok(t.get(account)?.map(|v| v.value().to_string()))
    }

    /// Every account's committed balance.
    pub fn balances(&self) -> Result<BTreeMap<String, i64>, LedgerError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(BALANCES)?;
        let mut out = BTreeMap::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.insert(k.value().to_string(), v.value());
        }
        Ok(out)
    }

    /// Every held account and its holder.
    pub fn locks(&self) -> Result<BTreeMap<String, String>, LedgerError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(LOCKS)?;
        let mut out = BTreeMap::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.insert(k.value().to_string(), v.value().to_string());
        }
        Ok(out)
    }

    fn release(
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &[u8],
    ) -> Result<(), ResourceError> {
        let mut locks = tx.open_table(LOCKS)?;
        match decode_payload(payload)
            .ok()
            .and_then(|p| net_deltas(&p).ok())
        {
            Some(deltas) => {
                for account in deltas.keys() {
                    let mine = locks
                        .get(account.as_str())?
                        .is_some_and(|h| h.value() == txn_id);
                    if mine {
                        locks.remove(account.as_str())?;
                    }
                }
            }
            // Cannot happen for a payload that prepared; be thorough anyway.
            None => locks.retain(|_, holder| holder != txn_id)?,
        }
        Ok(())
    }
}

impl Resource for Ledger {
    fn prepare(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &[u8],
    ) -> Result<Vote, ResourceError> {
        let p = match decode_payload(payload) {
            Ok(p) => p,
            Err(e) => return Ok(Vote::Abort(format!("undecodable ledger payload: {e}"))),
        };
        if p.entries.is_empty() {
            return Ok(Vote::ReadOnly);
        }
        let deltas = match net_deltas(&p) {
            Ok(d) => d,
            Err(why) => return Ok(Vote::Abort(why)),
        };
        let balances = tx.open_table(BALANCES)?;
        let mut locks = tx.open_table(LOCKS)?;
        for (account, delta) in &deltas {
            let holder = locks.get(account.as_str())?.map(|h| h.value().to_string());
            if let Some(holder) = holder {
                // No-wait locking: refuse at once instead of queueing, so
                // there are no deadlocks; the client may retry later.
                return Ok(Vote::Abort(format!(
                    "account {account:?} is held by prepared transaction {holder}"
                )));
            }
            let balance = balances
                .get(account.as_str())?
                .map(|v| v.value())
                .unwrap_or(0);
            match balance.checked_add(*delta) {
                None => {
                    return Ok(Vote::Abort(format!(
                        "account {account:?}: balance {balance} {delta:+} overflows"
                    )));
                }
                Some(after) if after < 0 && *delta < 0 => {
                    return Ok(Vote::Abort(format!(
                        "insufficient funds in account {account:?}: balance {balance}, debit {}",
                        delta.unsigned_abs()
                    )));
                }
                Some(_) => {}
            }
        }
        for account in deltas.keys() {
            locks.insert(account.as_str(), txn_id)?;
        }
        Ok(Vote::Prepared)
    }

    fn commit(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &[u8],
    ) -> Result<(), ResourceError> {
        let p = decode_payload(payload)
            .map_err(|e| ResourceError::new(format!("prepared payload does not decode: {e}")))?;
        let deltas = net_deltas(&p).map_err(ResourceError)?;
        {
            let mut balances = tx.open_table(BALANCES)?;
            for (account, delta) in &deltas {
                let balance = balances
                    .get(account.as_str())?
                    .map(|v| v.value())
                    .unwrap_or(0);
                // Checked at prepare, and the account was held since.
                let after = balance.checked_add(*delta).ok_or_else(|| {
                    ResourceError::new(format!("account {account:?}: balance overflow at commit"))
                })?;
                balances.insert(account.as_str(), after)?;
            }
        }
        Self::release(tx, txn_id, payload)
    }

    fn abort(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &[u8],
        _reason: &str,
    ) -> Result<(), ResourceError> {
        Self::release(tx, txn_id, payload)
    }

    /// The locks are rebuilt from the prepared records alone, so whatever
    /// the lock table held (it is written in the same transactions, so it
    /// should agree) the prepared transactions hold exactly their accounts.
    fn recover(
        &self,
        tx: &redb::WriteTransaction,
        prepared: &[PreparedTxn],
    ) -> Result<(), ResourceError> {
        let mut locks = tx.open_table(LOCKS)?;
        locks.retain(|_, _| false)?;
        for t in prepared {
            let deltas = decode_payload(&t.payload)
                .ok()
                .and_then(|p| net_deltas(&p).ok())
                .unwrap_or_default();
            for account in deltas.keys() {
                let holder = locks.get(account.as_str())?.map(|h| h.value().to_string());
                match holder {
                    Some(other) => error!(
                        account = %account, txn_id = %t.txn_id, %other,
                        "two prepared transactions hold one account; keeping the first"
                    ),
                    None => {
                        locks.insert(account.as_str(), t.txn_id.as_str())?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The `dtc.v1.Ledger` gRPC service (balances and the audit list).
#[derive(Clone)]
pub struct LedgerService {
    ledger: Ledger,
    log: ParticipantLog,
}

impl std::fmt::Debug for LedgerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerService").finish_non_exhaustive()
    }
}

impl LedgerService {
    pub fn new(ledger: Ledger, log: ParticipantLog) -> Self {
        LedgerService { ledger, log }
    }

    /// The tonic service, ready for [`ParticipantBuilder::routes`].
    pub fn routes(self) -> Routes {
        Routes::new(pb::ledger_server::LedgerServer::new(self))
    }

    fn audit_page(&self, req: &pb::AuditRequest) -> Result<pb::AuditResponse, Status> {
        let limit = match req.limit {
            0 => 1000,
            n if n > 10_000 => {
                return Err(Status::invalid_argument(format!(
                    "limit {n} is over the maximum of 10000"
                )));
            }
            n => n as usize,
        };
        let mut after = (!req.after_txn_id.is_empty()).then(|| req.after_txn_id.clone());
        let mut out = Vec::new();
        loop {
            let chunk = self
                .log
                .scan(after.as_deref(), 1024)
                .map_err(|e| Status::internal(e.to_string()))?;
            let exhausted = chunk.len() < 1024;
            for (id, rec) in chunk {
                after = Some(id.clone());
                let outcome = match rec.state {
                    TxnState::Committed => pb::AuditOutcome::Committed,
                    TxnState::Aborted | TxnState::Tombstone => pb::AuditOutcome::Aborted,
                    TxnState::Prepared if req.include_prepared => pb::AuditOutcome::Prepared,
                    TxnState::Prepared | TxnState::ReadOnly => continue,
                };
                let entries = decode_payload(&rec.payload)
                    .map(|p| p.entries)
                    .unwrap_or_default();
                out.push(pb::AuditEntry {
                    txn_id: id,
                    outcome: outcome as i32,
                    entries,
                    reason: rec.reason,
                });
                if out.len() == limit {
                    return Ok(pb::AuditResponse {
                        transactions: out,
                        next_after_txn_id: after.unwrap_or_default(),
                    });
                }
            }
            if exhausted {
                return Ok(pb::AuditResponse {
                    transactions: out,
                    next_after_txn_id: String::new(),
                });
            }
        }
    }
}

fn ledger_status(e: LedgerError) -> Status {
    match e {
        LedgerError::InvalidAccount(..) => Status::invalid_argument(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl pb::ledger_server::Ledger for LedgerService {
    async fn balance(
        &self,
        request: Request<pb::BalanceRequest>,
    ) -> Result<Response<pb::BalanceResponse>, Status> {
        let account = request.into_inner().account;
        validate_account(&account).map_err(ledger_status)?;
        let ledger = self.ledger.clone();
        let key = account.clone();
        let (balance, locked_by) = tokio::task::spawn_blocking(move || {
            Ok::<_, LedgerError>((ledger.balance(&key)?, ledger.locked_by(&key)?))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(ledger_status)?;
        Ok(Response::new(pb::BalanceResponse {
            account,
            balance,
            locked_by: locked_by.unwrap_or_default(),
        }))
    }

    async fn audit(
        &self,
        request: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::AuditResponse>, Status> {
        let req = request.into_inner();
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.audit_page(&req))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map(Response::new)
    }
}

/// A ledger participant named `name` with its data in `data_dir`
/// (`participant.redb`): the participant builder, with the `Ledger` service
/// added, and the ledger itself (for direct reads). Configure coordinators
/// etc. on the builder, then `start` it. Blocking (opens the file).
pub fn participant(
    name: &str,
    data_dir: &Path,
) -> Result<(ParticipantBuilder, Ledger), LedgerError> {
    let db = dtc_participant::open_database(data_dir)?;
    let ledger = Ledger::new(db.clone())?;
    let service = LedgerService::new(ledger.clone(), ParticipantLog::new(db.clone()));
    let builder = ParticipantServer::builder(name, db, ledger.clone()).routes(service.routes());
    Ok((builder, ledger))
}
