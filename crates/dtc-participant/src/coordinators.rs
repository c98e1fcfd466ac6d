//! Talking to the coordinator cluster: lazily connecting channels to every
//! given node, tried in turn, and the registration loop.

use crate::ParticipantError;
use crate::server::to_uri;
use backon::BackoffBuilder;
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
            let endpoint = Endpoint::from_shared(to_uri(addr))
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

pub(crate) fn backoff(max: Duration) -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Registers `name -> endpoint` until a coordinator accepts it. Every start
/// registers again, so a participant that moved is found at its new address
/// (corner case 15).
pub(crate) async fn register_loop(
    name: String,
    endpoint: String,
    coordinators: Arc<Coordinators>,
    registered: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let mut delays = backoff(Duration::from_secs(5));
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
                return;
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
