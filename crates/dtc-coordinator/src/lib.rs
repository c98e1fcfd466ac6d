//! # dtc-coordinator: one node of the replicated coordinator
//!
//! A node runs openraft (log and state machine from `dtc-store`), serves
//! gRPC on one address, and — while it is leader — drives two-phase commit.
//!
//! The public API is what the `dtc` binary needs to run a node: [`run`],
//! [`NodeConfig`] (with [`parse_peers`]) and the errors. Everything else is
//! private to the crate.
//!
//! ## Module map
//! Bottom to top; a module uses only modules above it in this list (no
//! cycles):
//!
//! | module | job | uses |
//! | --- | --- | --- |
//! | `config` | node configuration, peer lists, the data directory's identity file | — |
//! | `channels` | lazily connecting gRPC channels by address | — |
//! | `metrics` | the Prometheus metrics | — |
//! | `raft` | openraft's configuration, start-up and cluster formation | config, channels |
//! | `raft::admission` | a fresh `--join` node neither votes nor campaigns until added as a learner | config |
//! | `raft::transport` | the Raft transport over tonic (client and server) | channels, admission |
//! | `txn::proposer` | packs queued commands into one batched log entry | — |
//! | `txn::registry` | `DriverRegistry`: running transactions by id (register, claim, join, removal) | — |
//! | `txn::shared` | `Shared` (what every task holds) and `Leadership` | config, channels, metrics, proposer, registry |
//! | `txn::participants` | `Prepare` and the decision sent to participants, with retries | shared |
//! | `txn::driver` | one task per transaction running a [`dtc_core::TxnDriver`] | shared, registry, proposer, participants |
//! | `txn::takeover` | follows leadership; resumes the pending index on a new leader | shared, driver, participants, metrics |
//! | `txn::expiry` | drops completed outcomes past the retention window | shared |
//! | `txn::execute` | runs one `Execute`: join, answer stored, or start a driver | shared, registry, driver |
//! | `txn::outcome` | answers an outcome query (presumed abort) | shared, registry, proposer |
//! | `membership` | add, remove, replace nodes: learners, catch-up, joint consensus | txn::shared |
//! | `api::wire` | proto <-> core, runtime errors as gRPC statuses | txn (error types) |
//! | `api::router` | serve here or forward to the leader (hops, deadline, hint) | txn::shared |
//! | `api::coordinator` | the `Coordinator` service | router, wire, txn |
//! | `api::in_doubt` | the `InDoubt` service | router, wire, txn |
//! | `api::health` | `grpc.health.v1` for the `Coordinator` service | txn::shared, coordinator |
//! | `node` | start-up, serving, shutdown: wires everything together | all |
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

mod api;
mod channels;
mod config;
mod membership;
mod metrics;
mod node;
mod raft;
mod txn;

pub use config::{ConfigError, NodeConfig, parse_peers};
pub use node::{NodeEnv, NodeError, OpenStores, run, run_in};
pub use raft::RaftStartError;
