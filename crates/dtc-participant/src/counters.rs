//! Escrow counters: the reservation pattern for resources that are numbers
//! (stock, seats, quotas, balances), so that concurrent transactions on one
//! counter never conflict unless the bounds would not hold for all of them.
//!
//! ```text
//! prepare  net delta per key; a decrease reserves it, an increase is noted as
//!          incoming; refused only if  value - reserved + delta < min  (or
//!          value + incoming + delta > max): the bound then holds whichever
//!          subset of the prepared transactions commits
//! commit   value += delta; the reservation (or incoming note) is dropped
//! abort    the reservation (or incoming note) is dropped
//! restart  rebuild(): the reservations are recomputed from the prepared records
//! ```
//!
//! Both tables live in the participant's database and are written in the
//! SDK's write transaction, so a reservation is durable exactly when the
//! prepared record is (corner case 19) and a refused prepare leaves none.
//!
//! | table | key → value |
//! |---|---|
//! | values (e.g. `ledger_balances`) | key → committed value (`i64`; a missing key is 0) |
//! | reservations (e.g. `ledger_reserved`) | key → (reserved decreases, incoming increases), both ≥ 0; the row is removed when both are 0 |
//!
//! [`CounterResource`] wraps this into a complete [`Resource`]
//! given a payload decoder; the crate docs show an inventory built on it.

use crate::{PreparedTxn, Resource, ResourceError, Vote};
use redb::{ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use std::collections::BTreeMap;
use std::fmt;

/// A set of counters in two tables of the participant's database, with the
/// bounds every committed value stays within.
#[derive(Debug, Clone)]
pub struct Counters {
    values: String,
    reservations: String,
    min: i64,
    max: i64,
}

/// One counter as stored: committed value and what prepared transactions
/// may still change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counter {
    /// The committed value.
    pub value: i64,
    /// Sum of the decreases of prepared, undecided transactions.
    pub reserved: i64,
    /// Sum of the increases of prepared, undecided transactions (not usable
    /// until they commit).
    pub incoming: i64,
}

impl Counter {
    /// What a new decrease may take without crossing `min`, whatever the
    /// prepared transactions' outcomes: `value - reserved - min` (saturating).
    pub fn available(&self, min: i64) -> i64 {
        self.value.saturating_sub(self.reserved).saturating_sub(min)
    }
}

/// Why a prepare may not reserve: one key's bound would not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub key: String,
    /// The key's state when it was refused.
    pub counter: Counter,
    /// The branch's net delta on this key (negative: a decrease).
    pub delta: i64,
    /// How far past the bound the worst case would go (> 0).
    pub short_by: i64,
    /// True when the bound is `min` (a decrease), false for `max`.
    pub below_min: bool,
    /// Whether the refusal comes only from other prepared transactions: if
    /// they resolved favourably (their decreases abort, their increases
    /// commit) this delta would fit. Waiting can help; retrying later may.
    pub contended: bool,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counter;
        if self.below_min {
            write!(
                f,
                "counter {:?}: decrease {} with value {}, {} reserved by prepared transactions: \
                 short by {}",
                self.key,
                self.delta.unsigned_abs(),
                c.value,
                c.reserved,
                self.short_by
            )
        } else {
            write!(
                f,
                "counter {:?}: increase {} with value {}, {} incoming from prepared transactions: \
                 over the maximum by {}",
                self.key, self.delta, c.value, c.incoming, self.short_by
            )
        }
    }
}

/// The net delta per key of a list of `(key, delta)` entries (a key may
/// appear several times: its entries add up), or a message if a sum overflows.
pub fn net_deltas<'a>(
    entries: impl IntoIterator<Item = (&'a str, i64)>,
) -> Result<BTreeMap<String, i64>, String> {
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    for (key, delta) in entries {
        let d = out.entry(key.to_string()).or_insert(0);
        *d = d
            .checked_add(delta)
            .ok_or_else(|| format!("the deltas of {key:?} overflow"))?;
    }
    Ok(out)
}

type Held = (i64, i64);

impl Counters {
    /// Counters in tables `values` and `reservations` (names must differ and
    /// not collide with the SDK's `dtc_participant_*` tables), bounded to
    /// `0..=i64::MAX` until [`bounds`](Self::bounds) says otherwise.
    pub fn new(values: &str, reservations: &str) -> Counters {
        Counters {
            values: values.to_string(),
            reservations: reservations.to_string(),
            min: 0,
            max: i64::MAX,
        }
    }

    /// Every committed value stays within `min..=max` (e.g. a seat count
    /// `0..=capacity`). Panics if `min > max`, a programming error.
    pub fn bounds(mut self, min: i64, max: i64) -> Counters {
        assert!(min <= max, "counter bounds {min}..={max} are empty");
        self.min = min;
        self.max = max;
        self
    }

    /// The lower bound.
    pub fn min(&self) -> i64 {
        self.min
    }

    fn values_table(&self) -> TableDefinition<'_, &'static str, i64> {
        TableDefinition::new(&self.values)
    }

    fn reservations_table(&self) -> TableDefinition<'_, &'static str, Held> {
        TableDefinition::new(&self.reservations)
    }

    /// Creates both tables if missing.
    pub fn create(&self, tx: &WriteTransaction) -> Result<(), ResourceError> {
        tx.open_table(self.values_table())?;
        tx.open_table(self.reservations_table())?;
        Ok(())
    }

    /// Checks every key's bound for `deltas` (net per key, see [`net_deltas`])
    /// and, if all hold, records the reservations in `tx`. Returns the first
    /// refusal otherwise, having written nothing.
    pub fn reserve(
        &self,
        tx: &WriteTransaction,
        deltas: &BTreeMap<String, i64>,
    ) -> Result<Result<(), Refusal>, ResourceError> {
        let values = tx.open_table(self.values_table())?;
        let mut held = tx.open_table(self.reservations_table())?;
        let mut updates = Vec::with_capacity(deltas.len());
        let too_much = |key: &str| {
            ResourceError::new(format!(
                "counter {key:?}: the pending changes no longer fit in an i64"
            ))
        };
        for (key, &delta) in deltas {
            if delta == 0 {
                continue;
            }
            let value = values.get(key.as_str())?.map_or(0, |v| v.value());
            let (reserved, incoming) = held.get(key.as_str())?.map_or((0, 0), |v| v.value());
            let counter = Counter {
                value,
                reserved,
                incoming,
            };
            // i128: no sum of i64s here can overflow it, so the checks are exact.
            let (v, r, i, d) = (
                value as i128,
                reserved as i128,
                incoming as i128,
                delta as i128,
            );
            let refusal = |short_by: i128, below_min: bool, contended: bool| Refusal {
                key: key.clone(),
                counter,
                delta,
                short_by: i64::try_from(short_by).unwrap_or(i64::MAX),
                below_min,
                contended,
            };
            if delta < 0 {
                let worst = v - r + d; // every prepared decrease commits, no increase does
                if worst < self.min as i128 {
                    let best = v + i + d; // the others resolve in our favour
                    return Ok(Err(refusal(
                        self.min as i128 - worst,
                        true,
                        best >= self.min as i128,
                    )));
                }
                // Fits in i64 unless the bounds span more than i64 does.
                let r = reserved.checked_sub(delta).ok_or_else(|| too_much(key))?;
                updates.push((key, (r, incoming)));
            } else {
                let worst = v + i + d;
                if worst > self.max as i128 {
                    let best = v - r + d;
                    return Ok(Err(refusal(
                        worst - self.max as i128,
                        false,
                        best <= self.max as i128,
                    )));
                }
                let i = incoming.checked_add(delta).ok_or_else(|| too_much(key))?;
                updates.push((key, (reserved, i)));
            }
        }
        for (key, h) in updates {
            held.insert(key.as_str(), h)?;
        }
        Ok(Ok(()))
    }

    /// Drops what [`reserve`](Self::reserve) recorded for the same `deltas`
    /// and, if `apply`, adds them to the values (commit); otherwise only
    /// releases (abort).
    fn settle(
        &self,
        tx: &WriteTransaction,
        deltas: &BTreeMap<String, i64>,
        apply: bool,
    ) -> Result<(), ResourceError> {
        let mut values = tx.open_table(self.values_table())?;
        let mut held = tx.open_table(self.reservations_table())?;
        for (key, &delta) in deltas {
            if delta == 0 {
                continue;
            }
            let (reserved, incoming) = held.get(key.as_str())?.map_or((0, 0), |v| v.value());
            let (reserved, incoming) = if delta < 0 {
                (reserved + delta, incoming)
            } else {
                (reserved, incoming - delta)
            };
            if reserved < 0 || incoming < 0 {
                // The reservation this prepared transaction made is missing:
                // the tables were changed behind the SDK's back. Refuse rather
                // than apply an unbacked change; the decision is resent.
                return Err(ResourceError::new(format!(
                    "counter {key:?}: the reservation of {delta} made at prepare is missing"
                )));
            }
            if reserved == 0 && incoming == 0 {
                held.remove(key.as_str())?;
            } else {
                held.insert(key.as_str(), (reserved, incoming))?;
            }
            if apply {
                let value = values.get(key.as_str())?.map_or(0, |v| v.value());
                // Within the bounds by the check at prepare; checked anyway.
                let after = value
                    .checked_add(delta)
                    .filter(|a| (self.min..=self.max).contains(a))
                    .ok_or_else(|| {
                        ResourceError::new(format!(
                            "counter {key:?}: {value} {delta:+} leaves {}..={}",
                            self.min, self.max
                        ))
                    })?;
                values.insert(key.as_str(), after)?;
            }
        }
        Ok(())
    }

    /// Commit: applies `deltas` (as reserved at prepare) and drops their
    /// reservations.
    pub fn apply(
        &self,
        tx: &WriteTransaction,
        deltas: &BTreeMap<String, i64>,
    ) -> Result<(), ResourceError> {
        self.settle(tx, deltas, true)
    }

    /// Abort: drops the reservations of `deltas` without applying them.
    pub fn release(
        &self,
        tx: &WriteTransaction,
        deltas: &BTreeMap<String, i64>,
    ) -> Result<(), ResourceError> {
        self.settle(tx, deltas, false)
    }

    /// Recovery: replaces every reservation by those of `prepared` (the net
    /// deltas of each prepared, undecided transaction). Whatever the table
    /// held, the prepared records are the truth (corner case 14).
    pub fn rebuild<'a>(
        &self,
        tx: &WriteTransaction,
        prepared: impl IntoIterator<Item = &'a BTreeMap<String, i64>>,
    ) -> Result<(), ResourceError> {
        let mut sums: BTreeMap<&str, Held> = BTreeMap::new();
        for deltas in prepared {
            for (key, &delta) in deltas {
                let h = sums.entry(key.as_str()).or_default();
                if delta < 0 {
                    h.0 = h.0.saturating_sub(delta);
                } else {
                    h.1 = h.1.saturating_add(delta);
                }
            }
        }
        let mut held = tx.open_table(self.reservations_table())?;
        held.retain(|_, _| false)?;
        for (key, h) in sums {
            if h != (0, 0) {
                held.insert(key, h)?;
            }
        }
        Ok(())
    }

    /// Outside two-phase commit (restocking, a correction, seeding): adds
    /// `deltas` (net per key) to the values at once, if every key's bound
    /// holds whichever prepared transactions commit, exactly as a prepare
    /// followed by its commit would; otherwise changes nothing and returns
    /// the refusal. Use it in
    /// [`RunningParticipant::write`](crate::RunningParticipant::write) or
    /// [`Resource::init`].
    pub fn adjust(
        &self,
        tx: &WriteTransaction,
        deltas: &BTreeMap<String, i64>,
    ) -> Result<Result<(), Refusal>, ResourceError> {
        if let Err(refusal) = self.reserve(tx, deltas)? {
            return Ok(Err(refusal));
        }
        self.apply(tx, deltas)?;
        Ok(Ok(()))
    }

    /// One counter as of the last commit (Blocking: a short read transaction).
    pub fn read(&self, db: &redb::Database, key: &str) -> Result<Counter, redb::Error> {
        Ok(self.get(&db.begin_read()?, key)?.unwrap_or_default())
    }

    /// One counter in a read transaction; `None` if the key has neither a
    /// value nor a reservation (it reads as 0).
    pub fn get(&self, tx: &ReadTransaction, key: &str) -> Result<Option<Counter>, redb::Error> {
        let value = match tx.open_table(self.values_table()) {
            Ok(t) => t.get(key)?.map(|v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let held = match tx.open_table(self.reservations_table()) {
            Ok(t) => t.get(key)?.map(|v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        if value.is_none() && held.is_none() {
            return Ok(None);
        }
        let (reserved, incoming) = held.unwrap_or((0, 0));
        Ok(Some(Counter {
            value: value.unwrap_or(0),
            reserved,
            incoming,
        }))
    }

    /// Every counter that has a value or a reservation.
    pub fn read_all(&self, db: &redb::Database) -> Result<BTreeMap<String, Counter>, redb::Error> {
        let tx = db.begin_read()?;
        let mut out: BTreeMap<String, Counter> = BTreeMap::new();
        match tx.open_table(self.values_table()) {
            Ok(t) => {
                for row in t.iter()? {
                    let (k, v) = row?;
                    out.entry(k.value().to_string()).or_default().value = v.value();
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        match tx.open_table(self.reservations_table()) {
            Ok(t) => {
                for row in t.iter()? {
                    let (k, v) = row?;
                    let c = out.entry(k.value().to_string()).or_default();
                    (c.reserved, c.incoming) = v.value();
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(out)
    }
}

/// Turns a branch payload into `(key, delta)` entries, or says why it is
/// unacceptable (the branch then votes abort with that reason).
pub type Decoder = dyn Fn(&[u8]) -> Result<Vec<(String, i64)>, String> + Send + Sync;

/// A complete [`Resource`] over [`Counters`]: decode the payload, net it per
/// key, reserve at prepare, apply at commit, release at abort, rebuild at
/// restart; [`Resource::query`] answers a key's committed value. An empty
/// payload votes read-only. A refusal that only other prepared transactions
/// cause votes [`Vote::Busy`] (so the participant's lock wait, if any,
/// applies); any other votes abort.
pub struct CounterResource {
    counters: Counters,
    decode: Box<Decoder>,
}

impl fmt::Debug for CounterResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CounterResource")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl CounterResource {
    /// `counters` whose branch payloads `decode` reads. The tables are
    /// created at start (in [`Resource::init`]).
    pub fn new(
        counters: Counters,
        decode: impl Fn(&[u8]) -> Result<Vec<(String, i64)>, String> + Send + Sync + 'static,
    ) -> CounterResource {
        CounterResource {
            counters,
            decode: Box::new(decode),
        }
    }

    /// The counters (for reads and [`Counters::adjust`]).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}

impl Resource for CounterResource {
    /// The net delta per key.
    type Payload = BTreeMap<String, i64>;

    fn decode(&self, payload: &[u8]) -> Result<Self::Payload, String> {
        let entries = (self.decode)(payload)?;
        net_deltas(entries.iter().map(|(k, d)| (k.as_str(), *d)))
    }

    fn init(&self, tx: &WriteTransaction) -> Result<(), ResourceError> {
        self.counters.create(tx)
    }

    fn prepare(
        &self,
        tx: &WriteTransaction,
        _txn_id: &str,
        deltas: &Self::Payload,
    ) -> Result<Vote, ResourceError> {
        if deltas.is_empty() {
            return Ok(Vote::ReadOnly);
        }
        Ok(match self.counters.reserve(tx, deltas)? {
            Ok(()) => Vote::Prepared,
            Err(r) if r.contended => Vote::Busy(r.to_string()),
            Err(r) => Vote::Abort(r.to_string()),
        })
    }

    fn commit(
        &self,
        tx: &WriteTransaction,
        _txn_id: &str,
        deltas: &Self::Payload,
    ) -> Result<(), ResourceError> {
        self.counters.apply(tx, deltas)
    }

    fn abort(
        &self,
        tx: &WriteTransaction,
        _txn_id: &str,
        deltas: &Self::Payload,
        _reason: &str,
    ) -> Result<(), ResourceError> {
        self.counters.release(tx, deltas)
    }

    fn recover(
        &self,
        tx: &WriteTransaction,
        prepared: &[PreparedTxn<Self::Payload>],
    ) -> Result<(), ResourceError> {
        self.counters
            .rebuild(tx, prepared.iter().map(|t| &t.payload))
    }

    fn query(&self, tx: &ReadTransaction, key: &str) -> Result<Option<String>, ResourceError> {
        Ok(self.counters.get(tx, key)?.map(|c| c.value.to_string()))
    }
}
