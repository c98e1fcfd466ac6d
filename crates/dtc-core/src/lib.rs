//! # dtc-core: the pure two-phase-commit protocol
//!
//! This crate is the part of dtc that decides things. It does no I/O, reads no
//! clock and draws no random numbers: time is an input (`now_ms`) and every
//! effect is returned as a value for a runtime to carry out. That makes every
//! rule here testable with plain unit and property tests.
//!
//! ## Layout
//! - [`txn_id`]: [`TxnId`], the transaction id and its one validation rule.
//! - [`types`]: votes, outcomes, limits and the validated request.
//! - [`command`]: the commands replicated through Raft ([`Command`]) and their
//!   deterministic [`apply`] onto any [`ApplyStore`]
//!   (redb in `dtc-store`, [`MemStore`] in tests).
//! - [`driver`]: the per-transaction state machine the leader runs
//!   ([`TxnDriver`]): it takes events (votes, applied decisions,
//!   acknowledgements, ticks) and returns [`Action`]s.
//!
//! ## How data flows
//! ```text
//!  client Execute ──► validate (types) ──► Command::Begin ──Raft──► apply ─► pending index
//!                                                                       │
//!  TxnDriver::start ─► Action::SendPrepare(p) ... votes ─► decision rule │
//!        │                                                              ▼
//!        └─► Action::ProposeDecision ──Raft──► apply (first decision wins)
//!                 Event::DecisionApplied(applied record) ◄──────────────┘
//!        ─► Action::SendDecision(p) ... acks ─► Action::ProposeComplete ─► leaves pending index
//! ```
//! The driver only ever acts on the *applied* decision it is handed back,
//! never on what it proposed: another leader's decision may have won.

pub mod command;
pub mod driver;
pub mod txn_id;
pub mod types;

pub use command::{ApplyStore, Command, CommandResult, MemStore, Phase, TxnRecord, apply};
pub use driver::{Action, Event, TxnDriver};
pub use txn_id::{InvalidTxnId, TxnId};
pub use types::{
    Limits, Outcome, RequestDigest, TxnRequest, ValidationError, Vote, validate_participant_name,
};
