//! The trait an application implements: its local work for one branch, on
//! payloads it decodes once, in the SDK's write transactions.

use std::sync::Arc;

/// What a resource answers to a prepare.
///
/// This is the participant SDK's vote; the coordinator's wire protocol
/// (`dtc.v1.Vote`) knows only prepared, read-only and abort, which is what
/// the SDK sends: [`Vote::Busy`] is the SDK's own, turned into a wait or an
/// abort before anything leaves the participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vote {
    /// The work is done durably and can be committed or undone later. From
    /// here on the participant waits for the decision, however long.
    Prepared,
    /// Refuse the branch. The SDK discards every change the resource made in
    /// this write transaction and records the refusal with this reason.
    Abort(String),
    /// The branch changes nothing: it needs neither commit nor abort. The SDK
    /// discards any change made in the write transaction.
    ReadOnly,
    /// Refuse for now: what the branch needs is held by other prepared
    /// transactions, and their decisions may free it. The SDK discards the
    /// write transaction's changes. With a lock wait configured
    /// ([`ParticipantBuilder::lock_wait`](crate::ParticipantBuilder::lock_wait))
    /// it runs `prepare` again after each decision, until it votes otherwise
    /// or the wait (or the prepare's deadline) runs out; then, and at once
    /// without a lock wait, it records and sends an abort with this reason.
    Busy(String),
}

/// A failure of the application's own work, with a message for logs and for
/// the coordinator. In `prepare` it becomes an abort vote; in `commit` and
/// `abort` the SDK rolls the write transaction back and answers UNAVAILABLE,
/// so the coordinator resends the decision later; in `query` the caller gets
/// UNAVAILABLE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ResourceError {
    message: String,
    kind: ErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorKind {
    Failed,
    Unsupported,
    Invalid,
}

impl ResourceError {
    pub fn new(msg: impl Into<String>) -> Self {
        ResourceError {
            message: msg.into(),
            kind: ErrorKind::Failed,
        }
    }

    /// A failure of the participant's database.
    pub fn storage(e: redb::Error) -> Self {
        ResourceError::new(format!("storage: {e}"))
    }

    /// The resource does not offer `what` (the default [`Resource::query`]
    /// answers this; callers get UNIMPLEMENTED).
    pub fn unsupported(what: impl Into<String>) -> Self {
        ResourceError {
            message: what.into(),
            kind: ErrorKind::Unsupported,
        }
    }

    /// The request itself is wrong (a query key that cannot exist): callers
    /// of [`Resource::query`] get INVALID_ARGUMENT. Elsewhere it counts as
    /// any other failure.
    pub fn invalid(msg: impl Into<String>) -> Self {
        ResourceError {
            message: msg.into(),
            kind: ErrorKind::Invalid,
        }
    }

    /// Whether this says the request itself is wrong (see [`Self::invalid`]).
    pub fn is_invalid(&self) -> bool {
        self.kind == ErrorKind::Invalid
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether this says the operation is not offered (see [`Self::unsupported`]).
    pub fn is_unsupported(&self) -> bool {
        self.kind == ErrorKind::Unsupported
    }
}

// Every redb error reaches a resource as a transient storage failure.
dtc_util::from_redb!(ResourceError, ResourceError::storage);

impl From<redb::Error> for ResourceError {
    fn from(e: redb::Error) -> Self {
        ResourceError::storage(e)
    }
}

/// A transaction that voted prepared and has no decision yet, as handed to
/// [`Resource::recover`], with its payload decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedTxn<P> {
    pub txn_id: String,
    pub payload: P,
}

/// The application's local work for a branch.
///
/// A resource whose state is counters (stock, seats, quotas, balances) can
/// use [`CounterResource`](crate::counters::CounterResource) instead of
/// writing one.
///
/// **Payloads.** The client sends each branch's payload as bytes;
/// [`decode`](Self::decode) turns them into [`Payload`](Self::Payload) once
/// per call, before the other methods see them. A payload that does not
/// decode votes abort at prepare, with the decode error as the reason, and
/// so never reaches `commit` or `abort`. (The payload is stored as sent, and
/// decoded again for the decision and at restart: a `decode` changed by an
/// upgrade must still read what the previous version prepared.)
///
/// **Transactions.** Every method but `query` runs inside the SDK's redb
/// write transaction `tx`, on the SDK's single writer thread: the
/// application's table changes and the SDK's participant-log record commit
/// atomically, and calls never overlap (so a resource needs no locking of
/// its own against concurrent calls). Methods must not block for long: they
/// delay every other branch of this participant.
///
/// **Once.** The SDK guarantees, per transaction id: `prepare` takes effect
/// at most once (a duplicate Prepare is answered from the log); `commit` or
/// `abort` takes effect at most once, and only after `prepare` voted
/// [`Vote::Prepared`]. A call that fails (returns an error or panics) is
/// rolled back with everything it wrote; a failed `commit`/`abort` runs
/// again when the decision is resent.
pub trait Resource: Send + Sync + 'static {
    /// A branch payload, decoded.
    type Payload: Send + 'static;

    /// Decodes a branch payload, or says why it is malformed (the branch
    /// then votes abort with this reason). Pure: no I/O.
    fn decode(&self, payload: &[u8]) -> Result<Self::Payload, String>;

    /// Runs once at every start, before recovery and before anything is
    /// served, in a write transaction that commits before serving: create
    /// the resource's tables here (so reads never find them missing) and
    /// seed what a new database needs. The default does nothing.
    fn init(&self, tx: &redb::WriteTransaction) -> Result<(), ResourceError> {
        let _ = tx;
        Ok(())
    }

    /// Validates and reserves the branch's work durably (with whatever undo
    /// information `commit`/`abort` need), and votes.
    fn prepare(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &Self::Payload,
    ) -> Result<Vote, ResourceError>;

    /// Makes the prepared work visible. An error is retried later (the
    /// coordinator resends Commit until it is acknowledged), so it should only
    /// be a transient failure.
    fn commit(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &Self::Payload,
    ) -> Result<(), ResourceError>;

    /// Undoes the prepared work and releases what it held.
    fn abort(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &Self::Payload,
        reason: &str,
    ) -> Result<(), ResourceError>;

    /// Runs once at start, after [`init`](Self::init) in the same write
    /// transaction, with every transaction that is prepared and undecided,
    /// so the application can re-take the locks they hold. The default
    /// does nothing (right for a resource whose reservations live in its
    /// tables, written at prepare).
    fn recover(
        &self,
        tx: &redb::WriteTransaction,
        prepared: &[PreparedTxn<Self::Payload>],
    ) -> Result<(), ResourceError> {
        let _ = (tx, prepared);
        Ok(())
    }

    /// Answers a read of `key` for `dtc query PARTICIPANT KEY` and the
    /// `dtc.v1.ParticipantQuery` service: `Ok(None)` when there is no such
    /// key. Runs in a read transaction, concurrently with the writer; it
    /// sees every committed decision (and prepares' reservations) applied so
    /// far. The default answers that this participant serves no queries.
    fn query(
        &self,
        tx: &redb::ReadTransaction,
        key: &str,
    ) -> Result<Option<String>, ResourceError> {
        let _ = (tx, key);
        Err(ResourceError::unsupported(
            "this participant serves no queries",
        ))
    }
}

impl<T: Resource + ?Sized> Resource for Arc<T> {
    type Payload = T::Payload;

    fn decode(&self, payload: &[u8]) -> Result<Self::Payload, String> {
        (**self).decode(payload)
    }

    fn init(&self, tx: &redb::WriteTransaction) -> Result<(), ResourceError> {
        (**self).init(tx)
    }

    fn prepare(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &Self::Payload,
    ) -> Result<Vote, ResourceError> {
        (**self).prepare(tx, txn_id, payload)
    }

    fn commit(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &Self::Payload,
    ) -> Result<(), ResourceError> {
        (**self).commit(tx, txn_id, payload)
    }

    fn abort(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &Self::Payload,
        reason: &str,
    ) -> Result<(), ResourceError> {
        (**self).abort(tx, txn_id, payload, reason)
    }

    fn recover(
        &self,
        tx: &redb::WriteTransaction,
        prepared: &[PreparedTxn<Self::Payload>],
    ) -> Result<(), ResourceError> {
        (**self).recover(tx, prepared)
    }

    fn query(
        &self,
        tx: &redb::ReadTransaction,
        key: &str,
    ) -> Result<Option<String>, ResourceError> {
        (**self).query(tx, key)
    }
}

/// A [`Resource`] seen through bytes: what the writer, the recovery pass and
/// the query service call. Decoding happens here, once per call, so the
/// application's methods only ever see decoded payloads.
pub(crate) trait ErasedResource: Send + Sync + 'static {
    fn init(&self, tx: &redb::WriteTransaction) -> Result<(), ResourceError>;
    /// A payload that does not decode votes abort, naming the error.
    fn prepare(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &[u8],
    ) -> Result<Vote, ResourceError>;
    fn commit(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &[u8],
    ) -> Result<(), ResourceError>;
    fn abort(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &[u8],
        reason: &str,
    ) -> Result<(), ResourceError>;
    fn recover(
        &self,
        tx: &redb::WriteTransaction,
        prepared: Vec<(String, Vec<u8>)>,
    ) -> Result<(), ResourceError>;
    fn query(&self, tx: &redb::ReadTransaction, key: &str)
    -> Result<Option<String>, ResourceError>;
}

/// Decodes a payload that voted prepared. It decoded then, so a failure
/// means `decode` changed since: an error (retried, and logged loudly by
/// the writer) rather than a silent skip of a decided transaction.
fn decode_prepared<R: Resource>(
    r: &R,
    txn_id: &str,
    payload: &[u8],
) -> Result<R::Payload, ResourceError> {
    r.decode(payload).map_err(|e| {
        ResourceError::new(format!(
            "the payload of prepared transaction {txn_id} no longer decodes: {e}"
        ))
    })
}

impl<R: Resource> ErasedResource for R {
    fn init(&self, tx: &redb::WriteTransaction) -> Result<(), ResourceError> {
        Resource::init(self, tx)
    }

    fn prepare(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &[u8],
    ) -> Result<Vote, ResourceError> {
        match self.decode(payload) {
            Ok(p) => Resource::prepare(self, tx, txn_id, &p),
            Err(e) => Ok(Vote::Abort(format!("malformed payload: {e}"))),
        }
    }

    fn commit(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &[u8],
    ) -> Result<(), ResourceError> {
        let p = decode_prepared(self, txn_id, payload)?;
        Resource::commit(self, tx, txn_id, &p)
    }

    fn abort(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &[u8],
        reason: &str,
    ) -> Result<(), ResourceError> {
        let p = decode_prepared(self, txn_id, payload)?;
        Resource::abort(self, tx, txn_id, &p, reason)
    }

    fn recover(
        &self,
        tx: &redb::WriteTransaction,
        prepared: Vec<(String, Vec<u8>)>,
    ) -> Result<(), ResourceError> {
        let prepared = prepared
            .into_iter()
            .map(|(txn_id, bytes)| {
                let payload = decode_prepared(self, &txn_id, &bytes)?;
                Ok(PreparedTxn { txn_id, payload })
            })
            .collect::<Result<Vec<_>, ResourceError>>()?;
        Resource::recover(self, tx, &prepared)
    }

    fn query(
        &self,
        tx: &redb::ReadTransaction,
        key: &str,
    ) -> Result<Option<String>, ResourceError> {
        Resource::query(self, tx, key)
    }
}
