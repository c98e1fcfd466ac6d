//! The transaction runtime on the leader: everything between a validated
//! request and its applied outcome.
//!
//! Bottom to top (each module uses only those above it in this list):
//! - [`proposer`]: packs every queued command into one batched log entry.
//! - [`registry`]: the running transactions by id ([`registry::DriverRegistry`]:
//!   register, claim, join, removal).
//! - [`shared`]: [`Shared`], the state every task holds, and [`Leadership`].
//! - [`participants`]: `Prepare` and the decision sent to participants,
//!   with retries.
//! - [`driver`]: one task per transaction running a [`dtc_core::TxnDriver`].
//! - [`takeover`]: following leadership; resuming the pending index.
//! - [`expiry`]: dropping completed outcomes past the retention window.
//! - [`execute`], [`outcome`], [`admin`]: what the API calls: run an
//!   `Execute`, answer an outcome query, an operator's show, list, retry
//!   and resolve.

pub mod admin;
pub mod driver;
pub mod execute;
pub mod expiry;
pub mod outcome;
pub mod participants;
pub mod proposer;
pub mod registry;
pub mod shared;
pub mod takeover;

pub use shared::{Leadership, Shared};
