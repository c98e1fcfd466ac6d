//! Talking to the coordinator cluster: lazily connecting channels to every
//! given node, tried in turn, and the registration loop.

use crate::ParticipantError;
use dtc_proto::v1 as pb;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tracing::{error, info, warn};

pub(crate) struct Coordinators {
    nodes: Vec<(String, Channel)>,
    next: AtomicUsize,
    pub(crate) rpc_timeout: Duration,
}

impl Coordinators {
    pub(crate) fn new(addrs: &[String], rpc_timeout: Duration) -> Result<Self, ParticipantError> {
        let mut nodes = Vec::new();
        for addr in addrs {
            let endpoint = Endpoint::from_shared(dtc_util::endpoint_uri(addr))
                .map_err(|e| {
                    ParticipantError::Config(format!("coordinator address {addr:?}: {e}"))
                })?
                // A dead node must fail fast so the next one is tried.
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true);
            nodes.push((addr.clone(), endpoint.connect_lazy()));
        }
        Ok(Coordinators {
            nodes,
            next: AtomicUsize::new(0),
            rpc_timeout,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The next node in turn (callers rotate on failure).
    pub(crate) fn pick(&self) -> (&str, Channel) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.nodes.len().max(1);
        let (addr, ch) = &self.nodes[i];
        (addr, ch.clone())
    }

    pub(crate) fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.rpc_timeout);
        req
    }
}

/// How often a registered participant checks that the cluster still has its
/// endpoint (a delayed registration from an earlier incarnation may land
/// after the current one and point the registry at a dead address).
const REGISTRATION_CHECK: Duration = Duration::from_secs(10);

/// Registers `name -> endpoint` until a coordinator accepts it. Every start
/// registers again, so a participant that moved is found at its new address
/// (corner case 15). Then checks periodically that the registry still says
/// so, and registers again if it does not.
pub(crate) async fn register_loop(
    name: String,
    endpoint: String,
    coordinators: Arc<Coordinators>,
    registered: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let mut delays = dtc_util::backoff(Duration::from_millis(100), Duration::from_secs(5));
    let mut attempt: u64 = 0;
    loop {
        attempt += 1;
        let (addr, channel) = coordinators.pick();
        let req = coordinators.request(pb::RegisterParticipantRequest {
            name: name.clone(),
            endpoint: endpoint.clone(),
        });
        let mut client = pb::coordinator_client::CoordinatorClient::new(channel);
        let result = tokio::select! {
            r = client.register_participant(req) => r,
            _ = cancel.cancelled() => return,
        };
        match result {
            Ok(_) => {
                info!(participant = %name, %endpoint, via = addr, attempt, "registered with the coordinators");
                let _ = registered.send(true);
                if !still_registered(&name, &endpoint, &coordinators, &cancel).await {
                    return; // cancelled
                }
                warn!(participant = %name, %endpoint,
                    "the cluster's registry no longer has this endpoint; registering again");
                attempt = 0;
                continue;
            }
            Err(s) if s.code() == tonic::Code::InvalidArgument => {
                // Will not fix itself; keep saying so, slowly.
                error!(participant = %name, %endpoint, via = addr, msg = s.message(),
                    "the coordinators refuse this registration");
            }
            Err(s) => {
                if attempt <= 3 || attempt.is_power_of_two() {
                    warn!(participant = %name, via = addr, attempt, code = ?s.code(), msg = s.message(),
                        "registration not accepted yet; retrying");
                }
            }
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// Waits, checking every [`REGISTRATION_CHECK`], until the registry shows
/// another endpoint for `name` (returns true) or `cancel` fires (false).
/// A check that cannot reach any coordinator proves nothing and is skipped.
async fn still_registered(
    name: &str,
    endpoint: &str,
    coordinators: &Coordinators,
    cancel: &CancellationToken,
) -> bool {
    let strip = |e: &str| {
        e.trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    };
    let want = strip(endpoint);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REGISTRATION_CHECK) => {}
            _ = cancel.cancelled() => return false,
        }
        let (_, channel) = coordinators.pick();
        let req = coordinators.request(pb::ClusterStatusRequest {});
        let mut client = pb::coordinator_client::CoordinatorClient::new(channel);
        let status = tokio::select! {
            r = client.cluster_status(req) => r,
            _ = cancel.cancelled() => return false,
        };
        let Ok(status) = status else { continue };
        let registered = status
            .into_inner()
            .participants
            .into_iter()
            .find(|p| p.name == name)
            .map(|p| strip(&p.endpoint));
        if registered.as_deref() != Some(want.as_str()) {
            return true;
        }
    }
}
