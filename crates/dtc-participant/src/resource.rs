//! The trait an application implements: its local work for one branch.

use std::sync::Arc;

/// A participant's vote on one branch.
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
    /// Never sent as such: the coordinator only ever sees prepared,
    /// read-only or abort.
    Busy(String),
}

/// A failure of the application's own work, with a message for logs and for
/// the coordinator. In `prepare` it becomes an abort vote; in `commit` and
/// `abort` the SDK rolls the write transaction back and answers UNAVAILABLE,
/// so the coordinator retries the decision later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ResourceError(pub String);

impl ResourceError {
    pub fn new(msg: impl Into<String>) -> Self {
        ResourceError(msg.into())
    }

    /// A failure of the participant's database.
    pub fn storage(e: redb::Error) -> Self {
        ResourceError(format!("storage: {e}"))
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
/// [`Resource::recover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedTxn {
    pub txn_id: String,
    pub payload: Vec<u8>,
}

/// The application's local work for a branch.
///
/// A resource whose state is counters (stock, seats, quotas, balances) can
/// use [`CounterResource`](crate::counters::CounterResource) instead of
/// writing one.
///
/// Every method runs inside the SDK's redb write transaction `tx`, on the
/// SDK's single writer thread: the application's table changes and the SDK's
/// participant-log record commit atomically, and calls never overlap (so a
/// resource needs no locking of its own against concurrent calls). Methods must
/// not block for long: they delay every other branch of this participant.
///
/// The SDK guarantees, per transaction id: `prepare` takes effect at most
/// once (a duplicate Prepare is answered from the log); `commit` or `abort`
/// takes effect at most once, and only after `prepare` voted
/// [`Vote::Prepared`]. A call that fails (returns an error or panics) is
/// rolled back with everything it wrote; a failed `commit`/`abort` runs
/// again when the decision is resent.
pub trait Resource: Send + Sync + 'static {
    /// Validates and reserves the branch's work durably (with whatever undo
    /// information `commit`/`abort` need), and votes.
    fn prepare(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &[u8],
    ) -> Result<Vote, ResourceError>;

    /// Makes the prepared work visible. An error is retried later (the
    /// coordinator resends Commit until it is acknowledged), so it should only
    /// be a transient failure.
    fn commit(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &[u8],
    ) -> Result<(), ResourceError>;

    /// Undoes the prepared work and releases what it held.
    fn abort(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &[u8],
        reason: &str,
    ) -> Result<(), ResourceError>;

    /// Called once at start, before the participant serves anything, with
    /// every transaction that is prepared and undecided, so the application
    /// can re-take the locks they hold (corner case 14). Runs in a write
    /// transaction that commits before serving. The default does nothing
    /// (right for a resource whose reservations live in its tables).
    fn recover(
        &self,
        tx: &redb::WriteTransaction,
        prepared: &[PreparedTxn],
    ) -> Result<(), ResourceError> {
        let _ = (tx, prepared);
        Ok(())
    }
}

impl<T: Resource + ?Sized> Resource for Arc<T> {
    fn prepare(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &[u8],
    ) -> Result<Vote, ResourceError> {
        (**self).prepare(tx, txn_id, payload)
    }

    fn commit(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &[u8],
    ) -> Result<(), ResourceError> {
        (**self).commit(tx, txn_id, payload)
    }

    fn abort(
        &self,
        tx: &redb::WriteTransaction,
        txn_id: &str,
        payload: &[u8],
        reason: &str,
    ) -> Result<(), ResourceError> {
        (**self).abort(tx, txn_id, payload, reason)
    }

    fn recover(
        &self,
        tx: &redb::WriteTransaction,
        prepared: &[PreparedTxn],
    ) -> Result<(), ResourceError> {
        (**self).recover(tx, prepared)
    }
}
