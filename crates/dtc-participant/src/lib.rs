//! # dtc-participant: the participant SDK
//!
//! An application that takes part in dtc transactions implements
//! [`Resource`] (its local prepare / commit / abort, each inside a redb write
//! transaction) and runs a [`ParticipantServer`]. The SDK does the rest of
//! the participant's side of two-phase commit:
//!
//! ```text
//!  coordinator ──Prepare/Commit/Abort──► ParticipantService (tonic)
//!                                            │ op + reply channel
//!                                            ▼
//!                     writer thread: for each queued op, one redb write txn:
//!                       read the log record ─► answer a duplicate from it, or
//!                       run the Resource ─► write the log record (same txn)
//!                     then ONE durable commit (fsync) for the batch,
//!                     then release the answers                   (corner 19)
//!
//!  in-doubt resolver: at start and every interval, for each Prepared record,
//!    InDoubt.QueryOutcome on the coordinators ─► Commit/Abort through the writer
//!  registration: RegisterParticipant(name, endpoint) at start, retried
//! ```
//!
//! The rules it enforces (shared/CORNER-CASES.md, participant cases):
//!
//! - **Log before vote (19).** The record and the application's reservations
//!   commit in one redb transaction and are synced before the vote is sent.
//! - **Idempotent (contract of `participant.proto`).** A duplicate Prepare,
//!   Commit or Abort returns the recorded answer; the resource runs at most
//!   once per transaction and step. One writer thread means two duplicate
//!   Prepares can never both run.
//! - **Abort before prepare (11).** Records a tombstone; a late Prepare votes abort.
//! - **Commit for an unknown transaction (12).** Answered FAILED_PRECONDITION
//!   and logged as an error (the log was lost), never acknowledged.
//!   Commit after abort, or abort after commit: FAILED_PRECONDITION too.
//! - **Prepared means no unilateral abort (13).** Before voting, a Prepare
//!   whose `remaining_ms` has run out votes abort; after voting, only the
//!   coordinator's decision (sent, or fetched by the in-doubt resolver) ends it.
//! - **Locks come back (14).** [`Resource::recover`] gets every prepared
//!   transaction before the server accepts its first call.
//! - **Endpoints change (15).** Every start registers the current endpoint.
//!
//! Decided records are kept (see [`log`] for why, and what pruning would need).

mod coordinators;
#[cfg(feature = "failpoints")]
mod crash;
mod error;
pub mod log;
mod resolver;
mod resource;
mod server;
mod service;
mod writer;

pub use error::ParticipantError;
pub use log::{LogRecord, ParticipantLog, TxnState};
pub use resolver::InDoubtPass;
pub use resource::{PreparedTxn, Resource, ResourceError, Vote};
pub use server::{
    DATABASE_FILE, ParticipantBuilder, ParticipantServer, RunningParticipant, open_database,
    open_database_with_backend,
};
pub use writer::OpError;

/// Re-exported so applications use the same redb as the SDK.
pub use redb;
/// Re-exported for [`ParticipantBuilder::routes`].
pub use tonic::service::Routes;
