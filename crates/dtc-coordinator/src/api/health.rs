//! `grpc.health.v1` for the `Coordinator` service: SERVING only while this
//! node can serve transactions.
//!
//! Uses [`crate::txn::shared`] (Raft metrics, config) and the service type
//! of [`super::coordinator`].

use super::coordinator::CoordinatorService;
use crate::txn::Shared;
use dtc_proto::v1::coordinator_server::CoordinatorServer;
use openraft::{BasicNode, RaftMetrics, ServerState};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Whether this node can serve transactions now: it knows a leader, and if
/// it is that leader, a quorum acknowledged it within the longest election
/// timeout (past that, followers may already have elected someone else).
fn can_serve(m: &RaftMetrics<u64, BasicNode>, id: u64, max_election_ms: u64) -> bool {
    match m.current_leader {
        None => false,
        Some(leader) if leader == id => m
            .millis_since_quorum_ack
            .is_some_and(|ms| ms <= max_election_ms),
        Some(_) => m.state == ServerState::Follower,
    }
}

/// Keeps the Coordinator service's health true while [`can_serve`] holds,
/// so a load balancer or an orchestrator stops sending clients to a node
/// cut off from its quorum. The process itself (service "") stays SERVING:
/// it is alive, and restarting it would not help.
pub async fn watch_health(shared: Arc<Shared>, reporter: tonic_health::server::HealthReporter) {
    let mut metrics = shared.raft.metrics();
    // The quorum-ack age grows without a metrics change, so look again on a
    // timer too.
    let mut tick = tokio::time::interval(Duration::from_millis(
        shared.config.heartbeat_ms.max(10) * 5,
    ));
    let mut serving = true; // as set at start
    loop {
        let now = {
            let m = metrics.borrow_and_update();
            can_serve(
                &m,
                shared.config.id,
                shared.config.election_timeout_max_ms * 2,
            )
        };
        if now != serving {
            serving = now;
            if now {
                info!("health: SERVING (a leader with a quorum is known)");
                reporter
                    .set_serving::<CoordinatorServer<CoordinatorService>>()
                    .await;
            } else {
                warn!("health: NOT_SERVING (no leader with a quorum is known)");
                reporter
                    .set_not_serving::<CoordinatorServer<CoordinatorService>>()
                    .await;
            }
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}
