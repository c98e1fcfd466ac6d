//! The driver registry: which transactions this leader is deciding right
//! now, and how a caller waits for one.
//!
//! One entry per transaction id, held by whoever decides it: a driver, or an
//! outcome query that records a presumed abort ([`Entries::claim`]). A
//! retry of a running transaction finds the entry and joins it instead of
//! starting a second driver (corner case 6). Each entry is removed by the
//! [`Registration`] that made it, when that is dropped, and only if the
//! entry is still its own (a later registration of the same id is left
//! alone); a change of leadership clears the whole registry.
//!
//! Each entry also carries its [`Live`] side, for operators
//! (`CoordinatorAdmin`): what the driver's calls to each participant got so
//! far, a wake-up for calls waiting in back-off, and the way in for a
//! decision someone else recorded (an operator's abort) for the driver to
//! adopt.
//!
//! Uses nothing else of this crate.

use dtc_core::{Outcome, RequestDigest, TxnId, TxnRecord, Vote};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What waiting clients can see of a running transaction.
#[derive(Debug, Clone, Default)]
pub struct DriverStatus {
    /// The applied outcome, once known.
    pub outcome: Option<Outcome>,
    /// Every phase-2 participant acknowledged the outcome (`Complete` may
    /// still be replicating: nobody needs to wait for it).
    pub acked: bool,
    /// Every participant acknowledged and `Complete` was applied.
    pub done: bool,
    /// The driver stopped before finishing (leadership lost).
    pub stopped: bool,
    /// The request was refused (same id, different request).
    pub rejected: Option<String>,
}

impl DriverStatus {
    /// Nothing more will happen to it that a caller waits for: decided,
    /// stopped, or refused.
    pub fn is_settled(&self) -> bool {
        self.outcome.is_some() || self.stopped || self.rejected.is_some()
    }
}

/// What this leader's driver learnt of one participant, for operators.
/// Votes and attempts are not replicated: a new leader starts from nothing.
#[derive(Debug, Clone, Default)]
pub struct BranchProgress {
    /// The vote `Prepare` returned (even one that came too late to count).
    pub vote: Option<Vote>,
    /// `Prepare` failed without a vote: why.
    pub prepare_failed: Option<String>,
    /// The participant acknowledged the decision.
    pub acked: bool,
    pub prepare_attempts: u32,
    pub decision_attempts: u32,
    /// The last failed call's error; cleared by a success.
    pub last_error: Option<String>,
    /// While a call waits in back-off: when it is sent again.
    pub retry_at: Option<Instant>,
}

/// The side of a registered transaction operators reach.
pub struct Live {
    progress: Mutex<BTreeMap<String, BranchProgress>>,
    /// Bumped to make every call waiting in back-off go now.
    wake: watch::Sender<u64>,
    /// Decisions recorded by someone else, for the driver to adopt.
    /// Boxed, so the channel's up-front block of slots stays small (one
    /// per driver, rarely used).
    decided: mpsc::UnboundedSender<Box<TxnRecord>>,
}

impl Live {
    /// Every participant the driver has called so far.
    pub fn progress(&self) -> BTreeMap<String, BranchProgress> {
        self.lock().clone()
    }

    /// Changes what is known of `participant`.
    pub fn update(&self, participant: &str, change: impl FnOnce(&mut BranchProgress)) {
        change(self.lock().entry(participant.to_string()).or_default());
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, BranchProgress>> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every call of this transaction that waits in back-off go now,
    /// and one that is in flight go again at once if it fails.
    pub fn wake(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// What a call waits on besides its back-off timer ([`Live::wake`]).
    pub fn wakes(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    /// Hands the driver a decision applied through Raft that it did not
    /// propose; it adopts it as it adopts its own (first decision wins, so
    /// the applied record is the truth). False when no driver listens.
    pub fn adopt(&self, record: TxnRecord) -> bool {
        self.decided.send(Box::new(record)).is_ok()
    }
}

/// A registered transaction, as seen by callers that join it.
#[derive(Clone)]
pub struct DriverHandle {
    /// Unique per registration, so a finished driver only removes its own
    /// entry.
    serial: u64,
    /// Digest of the request being run (None for drivers resumed by takeover
    /// of a record created without a request, and for claims).
    pub digest: Option<RequestDigest>,
    pub status: watch::Receiver<DriverStatus>,
    pub live: Arc<Live>,
}

/// The registry. Cheap to clone; clones share the entries.
#[derive(Clone, Default)]
pub struct DriverRegistry {
    entries: Arc<Mutex<HashMap<TxnId, DriverHandle>>>,
}

static SERIAL: AtomicU64 = AtomicU64::new(1);

impl DriverRegistry {
    /// Locks the registry. Checking an id and registering it happen under
    /// one lock, so nothing can register the same id in between.
    pub fn lock(&self) -> Entries<'_> {
        Entries {
            registry: self,
            map: self.entries.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// The status of every registered transaction that has no applied
    /// outcome yet, to wait on.
    pub fn undecided(&self) -> Vec<watch::Receiver<DriverStatus>> {
        self.lock()
            .map
            .values()
            .filter(|h| !h.status.borrow().is_settled())
            .map(|h| h.status.clone())
            .collect()
    }

    /// Forgets every entry (leadership changed: the old term's drivers are
    /// cancelled and no new caller may join them).
    pub fn clear(&self) {
        self.lock().map.clear();
    }
}

/// The locked registry.
pub struct Entries<'a> {
    registry: &'a DriverRegistry,
    map: MutexGuard<'a, HashMap<TxnId, DriverHandle>>,
}

impl Entries<'_> {
    /// The running entry of `txn_id`, to join or to read.
    pub fn get(&self, txn_id: &TxnId) -> Option<&DriverHandle> {
        self.map.get(txn_id)
    }

    /// How many transactions are registered: running drivers (undecided,
    /// or decided and waiting for acknowledgements) and claims.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Registers `txn_id` for a driver about to start: the driver keeps the
    /// registration, the caller gets the handle to wait on. The caller has
    /// checked the id is free.
    pub fn register(
        &mut self,
        txn_id: &TxnId,
        digest: Option<RequestDigest>,
    ) -> (Registration, DriverHandle) {
        let (status, rx) = watch::channel(DriverStatus::default());
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let (decided, decisions) = mpsc::unbounded_channel();
        let live = Arc::new(Live {
            progress: Mutex::default(),
            wake: watch::channel(0).0,
            decided,
        });
        let handle = DriverHandle {
            serial,
            digest,
            status: rx,
            live: live.clone(),
        };
        self.map.insert(txn_id.clone(), handle.clone());
        let registration = Registration {
            registry: self.registry.clone(),
            txn_id: txn_id.clone(),
            serial,
            status,
            live,
            decisions: Some(decisions),
        };
        (registration, handle)
    }

    /// Reserves `txn_id` while something other than a driver decides it (a
    /// presumed-abort outcome query), so that an `Execute` of that id
    /// arriving meanwhile joins and gets the same answer instead of slipping
    /// a `Begin` in between the query's check and its abort.
    pub fn claim(&mut self, txn_id: &TxnId) -> Registration {
        self.register(txn_id, None).0
    }
}

/// One entry of the registry, held by whoever decides the transaction: it
/// publishes the [`DriverStatus`] and removes the entry when dropped.
pub struct Registration {
    registry: DriverRegistry,
    txn_id: TxnId,
    serial: u64,
    status: watch::Sender<DriverStatus>,
    pub live: Arc<Live>,
    decisions: Option<mpsc::UnboundedReceiver<Box<TxnRecord>>>,
}

impl Registration {
    /// The decisions others hand this transaction ([`Live::adopt`]), for
    /// the driver to receive. `None` after the first call.
    pub fn take_decisions(&mut self) -> Option<mpsc::UnboundedReceiver<Box<TxnRecord>>> {
        self.decisions.take()
    }

    /// Changes the status every joined caller sees.
    pub fn update(&self, change: impl FnOnce(&mut DriverStatus)) {
        self.status.send_modify(change);
    }

    /// Publishes the applied outcome of a transaction decided without a
    /// driver (a claim).
    pub fn finish(&self, outcome: &Outcome) {
        self.update(|s| {
            s.outcome = Some(outcome.clone());
            s.done = true;
        });
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Dropped without an outcome: whoever waits must retry.
        self.status
            .send_modify(|s| s.stopped |= s.outcome.is_none());
        let mut entries = self.registry.lock();
        if entries.map.get(&self.txn_id).map(|h| h.serial) == Some(self.serial) {
            entries.map.remove(&self.txn_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_removed_only_by_its_own_registration() {
        let registry = DriverRegistry::default();
        let id: TxnId = "t".parse().unwrap();
        let (first, handle) = registry.lock().register(&id, Some([1; 32]));
        let mut joined = handle.status;
        // Leadership moved: the registry was cleared and the id registered anew.
        registry.clear();
        let second = registry.lock().claim(&id);
        drop(first);
        assert!(
            joined.borrow_and_update().stopped,
            "first one's callers retry"
        );
        assert!(registry.lock().get(&id).is_some(), "the second entry stays");
        second.finish(&Outcome::abort("presumed"));
        drop(second);
        assert!(registry.lock().get(&id).is_none());
    }
}
