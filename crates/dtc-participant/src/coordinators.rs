//! Talking to the coordinator cluster: lazily connecting channels to every
//! given node, tried in turn, and the registration loop.

use crate::ParticipantError;
use dtc_proto::v1 as pb;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{error, info, warn};

/// Where registration with the coordinators stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Registration {
    /// Not accepted yet; the last attempt's error, if one failed.
    Pending(Option<String>),
    Registered,
}

pub(crate) struct Coordinators {
    nodes: Vec<(String, Channel)>,
    next: AtomicUsize,
    pub(crate) rpc_timeout: Duration,
}

impl Coordinators {
    pub(crate) fn new(
        addrs: &[String],
        rpc_timeout: Duration,
        tls: Option<&dtc_proto::tls::Tls>,
        dialer: &dtc_proto::net::Dialer,
    ) -> Result<Self, ParticipantError> {
        let mut nodes = Vec::new();
        for addr in addrs {
            let endpoint = dtc_proto::tls::endpoint(addr, tls)
                .map_err(|e| {
                    ParticipantError::Config(format!("coordinator address {addr:?}: {e}"))
                })?
                // A dead node must fail fast so the next one is tried.
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true);
            nodes.push((addr.clone(), dialer.connect_lazy(endpoint)));
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
    registered: watch::Sender<Registration>,
    cancel: CancellationToken,
) {
    // The last error per coordinator address, for `registration_error`.
    let mut errors: BTreeMap<String, String> = BTreeMap::new();
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
                errors.clear();
                let _ = registered.send(Registration::Registered);
                if !still_registered(&name, &endpoint, &coordinators, &cancel).await {
                    return; // cancelled
                }
                warn!(participant = %name, %endpoint,
                    "the cluster's registry no longer has this endpoint; registering again");
                attempt = 0;
                let _ = registered.send(Registration::Pending(None));
                continue;
            }
            Err(s) if s.code() == tonic::Code::InvalidArgument => {
                errors.insert(addr.to_string(), describe(&s));
                let _ = registered.send(Registration::Pending(Some(joined(&errors))));
                // Will not fix itself; keep saying so, slowly.
                error!(participant = %name, %endpoint, via = addr, msg = s.message(),
                    "the coordinators refuse this registration");
            }
            Err(s) => {
                errors.insert(addr.to_string(), describe(&s));
                let _ = registered.send(Registration::Pending(Some(joined(&errors))));
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

/// `ADDR: error` for each coordinator that failed, in address order.
fn joined(errors: &BTreeMap<String, String>) -> String {
    errors
        .iter()
        .map(|(addr, e)| format!("{addr}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A failed call's status in a line: its code and message and, for a
/// connection that could not be made, the operating system's reason
/// (tonic's message alone says only "tcp connect error").
fn describe(status: &tonic::Status) -> String {
    let mut source = std::error::Error::source(status);
    let mut io = None;
    while let Some(e) = source {
        if let Some(e) = e.downcast_ref::<std::io::Error>() {
            io = Some(e.to_string());
        }
        source = e.source();
    }
    match io {
        Some(io) => format!("{:?}: {} ({io})", status.code(), status.message()),
        None => format!("{:?}: {}", status.code(), status.message()),
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
