//! # dtc-coordinator: one node of the replicated coordinator
//!
//! A node runs openraft (log and state machine from `dtc-store`), serves
//! gRPC on one address, and — while it is leader — drives two-phase commit.
//!
//! ## Layout
//! - [`node`]: startup (identity check, store, Raft, server, cluster
//!   formation) and the leadership watcher.
//! - [`network`]: the Raft transport over tonic (client and server).
//! - [`service`]: the `Coordinator` and `InDoubt` gRPC services, with
//!   forwarding from followers to the leader.
//! - [`proposer`]: packs every queued proposal into one batched log entry.
//! - [`runtime`]: one task per transaction running a
//!   [`dtc_core::TxnDriver`]; takeover on a new leader.
//! - [`config`], [`channels`]: configuration, data-dir identity, gRPC channels.
//!
//! ## Flow of one transaction
//! ```text
//! client ─Execute─► any node ─(forward, ≤2 hops)─► leader
//!   leader: validate ─► Begin queued ─Raft─► apply (pending index)
//!           and at once: Prepare ─► every participant in parallel ─► votes
//!           decision rule ─► Decide queued behind Begin ─Raft─► apply (first wins)
//!           Commit/Abort ─► participants (retry until ack) ─► reply = applied outcome
//!           ─► Complete ─Raft─► leaves pending index
//!   every proposal goes through one proposer that packs what is queued
//!   into one batched log entry (Command::Batch)
//! new leader: catch up (a barrier entry, applied) ─► scan pending index ─► resume each driver
//! ```

pub mod channels;
pub mod config;
pub mod metrics;
pub mod network;
pub mod node;
pub mod proposer;
pub mod runtime;
pub mod service;

pub use config::{ConfigError, NodeConfig, parse_peers};
pub use node::{NodeError, run};
