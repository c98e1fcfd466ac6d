//! # dtc-ledger: a sample dtc participant
//!
//! Accounts with `i64` balances, kept in the same redb file as the
//! participant log so that a branch's reservation and its log record commit
//! together. A branch's payload is a protobuf `dtc.v1.LedgerPayload` (a list
//! of `(account, delta)`; see `proto/dtc/v1/ledger.proto`).
//!
//! Accounts are never locked: the ledger is the SDK's escrow counters
//! ([`dtc_participant::counters`]) with a lower bound of 0, so concurrent
//! transactions on one account all prepare while its funds cover them.
//!
//! ```text
//! Prepare(payload) ─► decode ─► net delta per account ─► for each account:
//!     net debit d:  d > balance - reserved  → vote abort (insufficient funds,
//!                   naming the account and the shortfall)
//!                   else reserved += d       (table ledger_reserved; d > 0 here
//!                                             is the debited amount)
//!     net credit c: balance + incoming + c overflows → vote abort
//!                   else incoming += c
//!   → vote prepared
//! Commit ─► balance += delta, drop the reservation  (table ledger_balances)
//! Abort  ─► drop the reservation
//! restart ─► recover(): rebuild ledger_reserved from the prepared records
//! ```
//!
//! A debit refused only because of other prepared transactions (it would fit
//! if their debits aborted and their credits committed) votes
//! [`Vote::Busy`]: with the participant's lock wait (`dtc participant
//! --lock-wait-ms`) it waits for their decisions instead of aborting at once.
//!
//! The deltas of a prepared transaction are not copied anywhere: they are
//! the payload in its participant-log record. `Ledger.Balance` reads the
//! committed balance with the reservations; `Ledger.Audit` lists the decided
//! transactions from the participant log, for checkers (e.g. "the sum of
//! balances equals the sum of committed deltas").

mod client;

pub use client::LedgerClient;

use dtc_participant::counters::{Counter, Counters, Refusal};
use dtc_participant::redb::{self, Database};
use dtc_participant::{
    BranchState, ParticipantBuilder, ParticipantError, ParticipantLog, ParticipantServer,
    PreparedTxn, Resource, ResourceError, Routes, Vote,
};
use dtc_proto::v1 as pb;
use prost::Message;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub use pb::{LedgerEntry, LedgerPayload};

/// Table: account → committed balance.
pub const BALANCES_TABLE: &str = "ledger_balances";
/// Table: account → (reserved debits, incoming credits) of prepared
/// transactions.
pub const RESERVED_TABLE: &str = "ledger_reserved";
/// The exclusive locks of the ledger before escrow (account → holder). An
/// old file's table is dropped at open: `recover` rebuilds the reservations
/// from the prepared records, which is all the locks described.
const OLD_LOCKS_TABLE: &str = "ledger_locks";

/// Longest account name, in bytes.
pub const MAX_ACCOUNT_LEN: usize = 128;

/// Errors of the ledger's own API.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Participant(#[from] ParticipantError),
    #[error("ledger storage: {0}")]
    Storage(#[from] redb::Error),
    #[error("ledger: {0}")]
    Resource(#[from] ResourceError),
    #[error("invalid account name {0:?}: {1}")]
    InvalidAccount(String, String),
}

// redb has one error type per operation; they all fold into `redb::Error`.
dtc_util::from_redb!(LedgerError, LedgerError::Storage);

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

/// One account as `Ledger.Balance` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccountBalance {
    /// The committed balance.
    pub balance: i64,
    /// Net debits of prepared, undecided transactions.
    pub reserved: i64,
    /// What a new debit may take: `balance - reserved`.
    pub available: i64,
    /// Net credits of prepared, undecided transactions (not spendable yet).
    pub incoming: i64,
}

impl From<Counter> for AccountBalance {
    fn from(c: Counter) -> Self {
        AccountBalance {
            balance: c.value,
            reserved: c.reserved,
            available: c.available(0),
            incoming: c.incoming,
        }
    }
}

/// The abort reason for a refused account: names it and the shortfall. A
/// refusal that only other prepared transactions cause says so (the demo
/// counts those as contention).
fn refusal_reason(r: &Refusal) -> String {
    let c = &r.counter;
    let pending = if r.contended {
        " until prepared transactions resolve"
    } else {
        ""
    };
    if r.below_min {
        format!(
            "insufficient funds in account {:?}{pending}: debit {}, available {} \
             (balance {}, reserved {}): short by {}",
            r.key,
            r.delta.unsigned_abs(),
            c.available(0),
            c.value,
            c.reserved,
            r.short_by
        )
    } else {
        format!(
            "account {:?}: credit {} would overflow the balance{pending} \
             (balance {}, incoming {}): over by {}",
            r.key, r.delta, c.value, c.incoming, r.short_by
        )
    }
}

/// The ledger: a [`Resource`] over tables in the participant's database.
#[derive(Clone)]
pub struct Ledger {
    db: Arc<Database>,
    counters: Counters,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

impl Ledger {
    /// A ledger in `db` (tables are created if missing). Blocking.
    pub fn new(db: Arc<Database>) -> Result<Ledger, LedgerError> {
        // Balances never go below 0, whichever prepared transactions commit.
        let counters = Counters::new(BALANCES_TABLE, RESERVED_TABLE).bounds(0, i64::MAX);
        let tx = db.begin_write()?;
        counters.create(&tx)?;
        let old: redb::TableDefinition<&str, &str> = redb::TableDefinition::new(OLD_LOCKS_TABLE);
        tx.delete_table(old)?;
        tx.commit()?;
        Ok(Ledger { db, counters })
    }

    /// The committed balance of `account` (0 if never used). Blocking (a
    /// short read transaction).
    pub fn balance(&self, account: &str) -> Result<i64, LedgerError> {
        Ok(self.account(account)?.balance)
    }

    /// `account`'s balance with the reservations of prepared transactions,
    /// read in one transaction. Blocking.
    pub fn account(&self, account: &str) -> Result<AccountBalance, LedgerError> {
        Ok(self.counters.read(&self.db, account)?.into())
    }

    /// Every account's committed balance (every account that has one, or a
    /// reservation).
    pub fn balances(&self) -> Result<BTreeMap<String, i64>, LedgerError> {
        Ok(self
            .counters
            .read_all(&self.db)?
            .into_iter()
            .map(|(k, c)| (k, c.value))
            .collect())
    }

    /// Every account with a reservation (a prepared transaction debits or
    /// credits it), and what is reserved.
    pub fn reservations(&self) -> Result<BTreeMap<String, AccountBalance>, LedgerError> {
        Ok(self
            .counters
            .read_all(&self.db)?
            .into_iter()
            .filter(|(_, c)| c.reserved != 0 || c.incoming != 0)
            .map(|(k, c)| (k, c.into()))
            .collect())
    }
}

/// A ledger branch payload, decoded and checked: the net delta per account.
pub type Deltas = BTreeMap<String, i64>;

impl Resource for Ledger {
    type Payload = Deltas;

    /// A `LedgerPayload` whose accounts are valid and whose deltas per
    /// account do not overflow; anything else votes abort with the reason.
    fn decode(&self, payload: &[u8]) -> Result<Deltas, String> {
        let p = decode_payload(payload).map_err(|e| format!("undecodable ledger payload: {e}"))?;
        net_deltas(&p)
    }

    fn init(&self, tx: &redb::WriteTransaction) -> Result<(), ResourceError> {
        self.counters.create(tx)
    }

    fn prepare(
        &self,
        tx: &redb::WriteTransaction,
        _txn_id: &str,
        deltas: &Deltas,
    ) -> Result<Vote, ResourceError> {
        if deltas.is_empty() {
            return Ok(Vote::ReadOnly);
        }
        Ok(match self.counters.reserve(tx, deltas)? {
            Ok(()) => Vote::Prepared,
            // Other transactions' decisions may make room: the lock wait applies.
            Err(r) if r.contended => Vote::Busy(refusal_reason(&r)),
            Err(r) => Vote::Abort(refusal_reason(&r)),
        })
    }

    fn commit(
        &self,
        tx: &redb::WriteTransaction,
        _txn_id: &str,
        deltas: &Deltas,
    ) -> Result<(), ResourceError> {
        self.counters.apply(tx, deltas)
    }

    fn abort(
        &self,
        tx: &redb::WriteTransaction,
        _txn_id: &str,
        deltas: &Deltas,
        _reason: &str,
    ) -> Result<(), ResourceError> {
        self.counters.release(tx, deltas)
    }

    /// The reservations are rebuilt from the prepared records alone, so
    /// whatever the table held (it is written in the same transactions, so
    /// it should agree) they are exactly those of the prepared transactions.
    /// A prepared payload that no longer decodes stops the start (the SDK
    /// names it): its reservation cannot be rebuilt, and serving without it
    /// could let a debit overdraw.
    fn recover(
        &self,
        tx: &redb::WriteTransaction,
        prepared: &[PreparedTxn<Deltas>],
    ) -> Result<(), ResourceError> {
        self.counters
            .rebuild(tx, prepared.iter().map(|t| &t.payload))
    }

    /// `dtc query LEDGER ACCOUNT`: the account's committed balance.
    fn query(
        &self,
        tx: &redb::ReadTransaction,
        account: &str,
    ) -> Result<Option<String>, ResourceError> {
        validate_account(account).map_err(|e| ResourceError::invalid(e.to_string()))?;
        Ok(self.counters.get(tx, account)?.map(|c| c.value.to_string()))
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
                    BranchState::Committed => pb::AuditOutcome::Committed,
                    BranchState::Aborted | BranchState::Tombstone => pb::AuditOutcome::Aborted,
                    BranchState::Prepared if req.include_prepared => pb::AuditOutcome::Prepared,
                    BranchState::Prepared | BranchState::ReadOnly => continue,
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
        let a = dtc_util::blocking::spawn(move || ledger.account(&key))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(ledger_status)?;
        Ok(Response::new(pb::BalanceResponse {
            account,
            balance: a.balance,
            locked_by: String::new(),
            reserved: a.reserved,
            available: a.available,
            incoming: a.incoming,
        }))
    }

    async fn audit(
        &self,
        request: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::AuditResponse>, Status> {
        let req = request.into_inner();
        let this = self.clone();
        dtc_util::blocking::spawn(move || this.audit_page(&req))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map(Response::new)
    }
}

/// A ledger participant named `name` with its data in `data_dir`
/// (`participant.redb`): the participant builder, with the `Ledger` service
/// added, and the ledger itself (for direct reads). Configure coordinators
/// etc. on the builder, then `start` it. Blocking (opens the file). The
/// builder keeps the default disk reserve on `data_dir`
/// ([`dtc_participant::DEFAULT_DISK_RESERVE_BYTES`]; set another with
/// `disk_reserve`).
pub fn participant(
    name: &str,
    data_dir: &Path,
) -> Result<(ParticipantBuilder, Ledger), LedgerError> {
    let db = dtc_participant::open_database(data_dir)?;
    let (builder, ledger) = participant_on(name, db)?;
    Ok((
        builder.disk_reserve(data_dir, dtc_participant::DEFAULT_DISK_RESERVE_BYTES),
        ledger,
    ))
}

/// [`participant`] on a database the caller opened (for example with
/// `dtc_participant::open_database_with_backend` on a simulated disk),
/// without a disk reserve (there is no directory to watch).
pub fn participant_on(
    name: &str,
    db: Arc<Database>,
) -> Result<(ParticipantBuilder, Ledger), LedgerError> {
    let ledger = Ledger::new(db.clone())?;
    let service = LedgerService::new(ledger.clone(), ParticipantLog::new(db.clone()));
    let builder = ParticipantServer::builder(name, db, ledger.clone())
        .routes(service.routes())
        .reflect(pb::ledger_server::SERVICE_NAME, None);
    Ok((builder, ledger))
}
