//! # dtc-participant: the participant SDK
//!
//! A participant is a service that owns some state (stock, seats,
//! balances) and lets dtc transactions change it atomically with other
//! services. You implement [`Resource`]: how to decode a branch's payload,
//! and what prepare, commit and abort do to your tables. The SDK runs the
//! gRPC service the coordinators call, keeps the durable participant log,
//! answers duplicates, registers with the cluster and asks about decisions
//! it missed. A whole participant (the example `inventory`, run by CI
//! against a local cluster; `examples/inventory.rs` in this crate):
//!
//! ```no_run
#![doc = include_str!("../examples/inventory.rs")]
//! ```
//!
//! ## What you write
//!
//! - [`Resource::decode`]: bytes to your payload type ([`payload`] has
//!   bytes, UTF-8 and JSON). A payload that does not decode votes abort at
//!   prepare with your error as the reason, and so never reaches commit.
//! - [`Resource::init`]: create your tables, seed a new database. Runs at
//!   every start before anything is served.
//! - [`Resource::prepare`]: check the branch and reserve what it needs,
//!   durably, in the write transaction you are given; vote
//!   [`Vote::Prepared`], [`Vote::Abort`], [`Vote::ReadOnly`], or
//!   [`Vote::Busy`] when other prepared transactions hold what it needs.
//! - [`Resource::commit`] / [`Resource::abort`]: apply or release what
//!   prepare reserved. They must not fail except transiently: an error is
//!   rolled back and retried when the decision is sent again.
//! - optionally [`Resource::recover`] (re-take in-memory locks at start)
//!   and [`Resource::query`] (a read for `dtc query PARTICIPANT KEY`).
//!
//! For state that is numbers, [`counters::CounterResource`] is all of this
//! already (escrow reservations: concurrent transactions on one counter
//! all prepare while the value covers them).
//!
//! ## What the SDK guarantees
//!
//! - **Log before vote.** Your table changes and the SDK's log record for
//!   the branch commit in one redb write transaction, and are synced
//!   before the vote leaves the process. A crash after voting prepared
//!   loses nothing.
//! - **Once per transaction.** A duplicate Prepare, Commit or Abort is
//!   answered from the log; `prepare` runs at most once per transaction id,
//!   `commit` or `abort` at most once, and only after `prepare` voted
//!   prepared. All calls run on one writer thread, never concurrently.
//! - **No unilateral abort after prepared.** A prepared branch waits for
//!   the coordinator's decision however long it takes; at start and every
//!   few seconds the SDK asks the coordinators about prepared branches
//!   whose decision did not arrive. An Abort that arrives before its
//!   Prepare is remembered, and the late Prepare votes abort.
//! - **Bounded.** A prepare past its deadline votes abort; past
//!   [`ParticipantBuilder::max_queued`] calls are refused with
//!   RESOURCE_EXHAUSTED; below the disk reserve new prepares vote abort. A
//!   failed write or sync stops the participant
//!   ([`RunningParticipant::storage_failed`]): restart it, and it recovers
//!   from what is durable.
//!
//! ## Your own reads and writes
//!
//! redb locks the database file, so read through the SDK while it runs:
//! [`RunningParticipant::read`] (a read transaction, concurrent with
//! everything) or the query hook. Write outside two-phase commit (restock,
//! correct, seed) with [`RunningParticipant::write`]: it runs on the
//! writer between transactions and returns once durable. Keep the
//! invariants prepared transactions rely on: with counters, use
//! [`counters::Counters::adjust`], which refuses to take what prepared
//! transactions reserved.
//!
//! docs/sdk.md in the repository walks through writing, running and testing
//! a participant.

mod coordinators;
pub mod counters;
mod error;
pub mod log;
mod metrics;
pub mod payload;
mod query;
mod resolver;
mod resource;
mod server;
mod service;
mod writer;

pub use dtc_util::disk::DEFAULT_RESERVE_BYTES as DEFAULT_DISK_RESERVE_BYTES;
pub use error::ParticipantError;
pub use log::{BranchState, LogRecord, ParticipantLog};
pub use resolver::InDoubtPass;
pub use resource::{PreparedTxn, Resource, ResourceError, Vote};
pub use server::{
    DATABASE_FILE, DEFAULT_MAX_QUEUED, ParticipantBuilder, ParticipantServer, RunningParticipant,
    open_database, open_database_with_backend,
};
pub use writer::OpError;

/// Re-exported so applications use the same redb as the SDK.
pub use redb;
/// Re-exported so that a service adding its own gRPC routes
/// ([`ParticipantBuilder::routes`]) needs no tonic dependency of its own.
pub use tonic;
/// What tonic's generated service traits are implemented with.
pub use tonic::async_trait;
/// Re-exported for [`ParticipantBuilder::routes`].
pub use tonic::service::Routes;
