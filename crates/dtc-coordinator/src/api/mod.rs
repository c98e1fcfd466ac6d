//! The client-facing API every node serves: the `Coordinator`, `InDoubt`
//! and `CoordinatorAdmin` gRPC services and their health.
//!
//! Bottom to top: [`wire`] (proto <-> core, errors as statuses),
//! [`router`] (serve here or forward to the leader), then the services
//! [`coordinator`], [`in_doubt`] and [`admin`], and [`health`]. The services do no
//! transaction work themselves: they validate, route, call [`crate::txn`]
//! and map the answer.

pub mod admin;
pub mod coordinator;
pub mod health;
pub mod in_doubt;
pub mod router;
pub mod wire;

pub use admin::AdminService;
pub use coordinator::CoordinatorService;
pub use in_doubt::InDoubtService;
