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
//! The rules it enforces (docs/design.md §10, the participant corner cases):
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
//! - **Bounded lock wait.** A prepare the resource finds busy
//!   ([`Vote::Busy`]) votes abort at once, or, with
//!   [`ParticipantBuilder::lock_wait`], waits for other transactions'
//!   decisions without blocking the writer, never past its deadline.
//!
//! Decided records are kept (see [`log`] for why, and what pruning would need).
//!
//! ## Counters: concurrency without conflicts
//!
//! A resource whose state is numbers (stock, seats, quotas, balances) should
//! not lock them: [`counters`] implements escrow reservations (a decrease
//! reserves its amount at prepare and is refused only if the value minus
//! every reserved decrease would not cover it; an increase is applied at
//! commit; abort releases; restart rebuilds the reservations from the
//! prepared records), so concurrent transactions on one counter all prepare
//! while the stock lasts. An inventory participant whose branch payload is
//! `sku:delta` lines (`widget:-2` takes two widgets):
//!
//! ```no_run
//! use dtc_participant::counters::{CounterResource, Counters};
//! use dtc_participant::{ParticipantServer, open_database};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let stock = CounterResource::new(Counters::new("stock", "stock_reserved"), |payload| {
//!     let text = std::str::from_utf8(payload).map_err(|e| e.to_string())?;
//!     text.lines()
//!         .map(|line| match line.split_once(':') {
//!             Some((sku, n)) => Ok((sku.to_string(), n.parse().map_err(|_| format!("bad count {n:?}"))?)),
//!             None => Err(format!("{line:?} is not sku:delta")),
//!         })
//!         .collect()
//! });
//! let db = open_database(std::path::Path::new("inventory-data"))?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7201").await?;
//! ParticipantServer::builder("inventory", db, stock)
//!     .coordinators(["127.0.0.1:7001"])
//!     .serve(listener, async { tokio::signal::ctrl_c().await.unwrap_or(()) })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Stock never goes below zero whichever prepared transactions commit; a
//! take larger than what is left votes abort with the shortfall in its
//! reason. `dtc-ledger` is the same pattern with its own payload and messages.

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
