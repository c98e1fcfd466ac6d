//! One coordinator node: opens the store, starts Raft and the gRPC server,
//! forms the cluster on first start, runs the leader's background tasks, and
//! stops on shutdown or when Raft stops for good.
//!
//! The top of the crate: uses every other module.

use crate::api::health::watch_health;
use crate::api::{AdminService, CoordinatorService, InDoubtService};
use crate::channels::Channels;
use crate::config::{ConfigError, NodeConfig, claim_data_dir};
use crate::raft::RaftStartError;
use crate::raft::transport::RaftService;
use crate::txn::{Leadership, Shared, expiry, takeover};
use dtc_proto::net::{Dialer, Incoming};
use dtc_proto::v1::{
    coordinator_admin_server::CoordinatorAdminServer, coordinator_server::CoordinatorServer,
    in_doubt_server::InDoubtServer, raft_transport_server::RaftTransportServer,
};
use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Errors that stop a node from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the store: {0}")]
    Store(#[from] dtc_store::StoreError),
    #[error("raft: {0}")]
    Raft(#[from] RaftStartError),
    /// openraft stopped for good (a storage error); the restarted node
    /// recovers from what is on disk.
    #[error("raft stopped: {0}; restart the node (it recovers from what is on disk)")]
    RaftStopped(openraft::error::Fatal<u64>),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server task: {0}")]
    ServerTask(#[from] tokio::task::JoinError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("{0}")]
    Metrics(std::io::Error),
}

/// Opens the Raft log and the state machine of a node whose data directory
/// is the argument (see [`NodeEnv::stores`]).
pub type OpenStores = Box<
    dyn FnOnce(
            &std::path::Path,
        )
            -> Result<(dtc_store::LogStore, dtc_store::StateMachineStore), dtc_store::StoreError>
        + Send,
>;

/// What a node runs on: by default the files of its data directory and real
/// TCP. The deterministic simulation (`crates/dtc-sim`) runs several nodes
/// in one process and injects a simulated network and simulated disks here.
#[derive(Default)]
pub struct NodeEnv {
    /// Makes every channel the node dials (peers, forwarding, participants).
    pub dialer: Dialer,
    /// Where the gRPC server accepts connections; `None`: a TCP listener
    /// bound to [`NodeConfig::listen`].
    pub incoming: Option<Incoming>,
    /// Opens the stores; `None`: [`dtc_store::open`] on the data directory.
    pub stores: Option<OpenStores>,
}

impl std::fmt::Debug for NodeEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeEnv")
            .field("dialer", &self.dialer)
            .field("incoming", &self.incoming)
            .field("stores", &self.stores.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// Runs a node until `shutdown` resolves.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    run_in(config, NodeEnv::default(), shutdown).await
}

/// Runs a node on `env` until `shutdown` resolves.
pub async fn run_in(
    config: NodeConfig,
    env: NodeEnv,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    config.validate()?;
    claim_data_dir(&config.data_dir, config.id, &config.cluster)?;
    let admission = crate::raft::admission::Admission::prepare(&config)?;
    let (log_store, state_machine) = match env.stores {
        Some(open) => open(&config.data_dir)?,
        None => dtc_store::open(&config.data_dir)?,
    };
    let reader = state_machine.reader();
    // Never purge the log past what the state machine durably covers.
    let log_store = log_store.purge_covered_by(reader.clone());
    let log_for_metrics = log_store.clone();
    // Bound before anything starts, so a taken port fails the start at once.
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(dtc_metrics::bind(addr).await.map_err(NodeError::Metrics)?),
        None => None,
    };

    // Every channel this node dials (Raft, forwarding, participants) uses
    // its TLS settings, if any.
    let channels = Channels::new(config.tls.clone()).with_dialer(env.dialer);
    let raft = crate::raft::start(&config, &channels, log_store, state_machine).await?;
    // Elections off before any message can arrive, if this node is gated.
    let admitting = tokio::spawn(admission.clone().watch(raft.clone(), config.id));

    let incoming = match env.incoming {
        Some(incoming) => incoming,
        None => {
            let listen_error = |source| NodeError::Listen {
                addr: config.listen,
                source,
            };
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .map_err(listen_error)?;
            Incoming::tcp(listener).map_err(listen_error)?
        }
    };
    let local = incoming.local_addr();

    let shared = Arc::new(
        Shared::new(config, raft.clone(), reader, channels).with_admission(admission.clone()),
    );

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    health_reporter
        .set_serving::<InDoubtServer<InDoubtService>>()
        .await;
    let listed = dtc_proto::reflection::Listed {
        services: [
            dtc_proto::v1::coordinator_server::SERVICE_NAME,
            dtc_proto::v1::coordinator_admin_server::SERVICE_NAME,
            dtc_proto::v1::in_doubt_server::SERVICE_NAME,
            dtc_proto::v1::raft_transport_server::SERVICE_NAME,
            dtc_proto::reflection::HEALTH,
        ]
        .map(String::from)
        .to_vec(),
        descriptor_sets: Vec::new(),
    };
    let reflection = dtc_proto::reflection::v1(&listed)?;
    let reflection_v1alpha = dtc_proto::reflection::v1alpha(&listed)?;

    let max_msg =
        shared.config.limits.max_payload_bytes * shared.config.limits.max_branches + 1024 * 1024;
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &shared.config.tls {
        // A client certificate signed by the cluster's CA is required on
        // every connection: peers, clients and participants alike.
        server = server.tls_config(tls.server_config())?;
    }
    let server = server
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(
            RaftTransportServer::new(RaftService {
                raft: raft.clone(),
                cluster: shared.config.cluster.clone(),
                admission: admission.clone(),
            })
            .max_decoding_message_size(raft_message_limit(max_msg)),
        )
        .add_service(
            CoordinatorServer::new(CoordinatorService::new(shared.clone()))
                .max_decoding_message_size(max_msg),
        )
        .add_service(InDoubtServer::new(InDoubtService::new(shared.clone())))
        .add_service(CoordinatorAdminServer::new(AdminService::new(
            shared.clone(),
        )));
    let stop = CancellationToken::new();
    let serving = tokio::spawn({
        let stop = stop.clone();
        server.serve_with_incoming_shutdown(incoming.into_stream(), stop.cancelled_owned())
    });
    info!(id = shared.config.id, addr = %local, cluster = %shared.config.cluster, "coordinator listening");

    crate::raft::form_cluster(&raft, &shared.config, &shared.channels).await?;

    if let Some(listener) = metrics_listener {
        let mut registry = dtc_metrics::Registry::default();
        shared.metrics.register(&mut registry);
        let refresh: dtc_metrics::Refresh = {
            let shared = shared.clone();
            Arc::new(move || {
                let raft_metrics = shared.raft.metrics().borrow().clone();
                shared.metrics.refresh(
                    &raft_metrics,
                    log_for_metrics.committed_index(),
                    shared.reader.pending_count().ok(),
                );
            })
        };
        dtc_metrics::spawn(listener, registry, refresh, stop.clone().cancelled_owned());
    }

    let watcher = tokio::spawn(takeover::follow_leadership(shared.clone()));
    let health = tokio::spawn(watch_health(shared.clone(), health_reporter.clone()));
    let expirer = tokio::spawn(expiry::expire_outcomes(shared.clone()));

    // openraft stops for good on a storage error (a full disk, a failed
    // fsync): the node can then never vote or replicate again. Lingering as
    // a process that answers nothing useful would hide that from its
    // supervisor, so the node exits non-zero instead, and its restart
    // recovers from what is durable.
    let raft_stopped = {
        let mut m = raft.metrics();
        async move {
            loop {
                if let Err(fatal) = &m.borrow_and_update().running_state {
                    return fatal.clone();
                }
                if m.changed().await.is_err() {
                    return openraft::error::Fatal::Stopped;
                }
            }
        }
    };
    let mut fatal = None;
    let mut serving = serving;
    let mut asked_to_stop = false;
    let serve_result = tokio::select! {
        _ = shutdown => {
            asked_to_stop = true;
            None
        }
        r = &mut serving => Some(r),
        why = raft_stopped => {
            error!(error = %why, "raft stopped for good; exiting so that a supervisor restarts this node");
            fatal = Some(why);
            None
        }
    };
    if asked_to_stop {
        health.abort();
        hand_over(&shared, &health_reporter).await;
    }
    info!("shutting down");
    stop.cancel();
    if asked_to_stop {
        // Calls in flight (answers of the transactions just decided) finish;
        // new connections are refused.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), &mut serving).await;
    }
    watcher.abort();
    health.abort();
    expirer.abort();
    admitting.abort();
    if let Leadership::Leader { cancel, .. } = &*shared.leadership.borrow() {
        cancel.cancel();
    }
    if let Err(e) = raft.shutdown().await {
        warn!("raft shutdown: {e}");
    }
    // Applies are synced only now and then (the log re-creates them after a
    // crash); a clean stop syncs them so the next start replays nothing.
    let reader = shared.reader.clone();
    match dtc_util::blocking::spawn(move || reader.make_durable()).await {
        Ok(Ok(applied)) => info!(?applied, "state machine synced"),
        Ok(Err(e)) => warn!("syncing the state machine at shutdown: {e}"),
        Err(e) => warn!("syncing the state machine at shutdown: {e}"),
    }
    if let Some(why) = fatal {
        return Err(NodeError::RaftStopped(why));
    }
    match serve_result {
        Some(Ok(Err(e))) => Err(NodeError::Serve(e)),
        Some(Err(e)) => Err(NodeError::ServerTask(e)),
        _ => Ok(()),
    }
}

/// A graceful stop: no new transaction starts here, health says NOT_SERVING
/// (load balancers move clients away), and a leader waits, at most
/// `shutdown_grace`, until every transaction it runs is decided, so that
/// its clients get their outcomes from it. Then Raft stops, and the
/// followers elect a leader after their election timeout; the new leader
/// finishes phase 2 of what this one decided (the pending index), and
/// clients that were waiting retry there with the same ids.
async fn hand_over(shared: &Shared, health: &tonic_health::server::HealthReporter) {
    shared
        .draining
        .store(true, std::sync::atomic::Ordering::SeqCst);
    health
        .set_not_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    let started = tokio::time::Instant::now();
    let grace = shared.config.shutdown_grace;
    // No new transaction starts now, so these are all there will be.
    let undecided = shared.drivers.undecided();
    if undecided.is_empty() {
        return;
    }
    info!(
        undecided = undecided.len(),
        grace_ms = grace.as_millis() as u64,
        "shutting down: waiting for the transactions in flight to be decided"
    );
    let settled = undecided.into_iter().map(|mut status| async move {
        let _ = status.wait_for(|s| s.is_settled()).await;
    });
    let _ = tokio::time::timeout(grace, futures::future::join_all(settled)).await;
    let left = shared.drivers.undecided().len();
    if left > 0 {
        warn!(
            left,
            "shutdown grace over with transactions undecided; the next leader aborts them"
        );
    } else {
        info!(
            waited_ms = started.elapsed().as_millis() as u64,
            "every transaction in flight is decided"
        );
    }
}

/// The largest Raft message a node decodes. An AppendEntries carries about
/// 256 KiB of entries plus at most one more entry, and an entry holds at
/// most 64 KiB of commands plus one command no larger than an `Execute`
/// request (`max_msg`); snapshot chunks are 3 MiB. Four times `max_msg`
/// (at least the 64 MiB every dtc client accepts) covers all of them with
/// room to spare, and still refuses a peer that sends gigabytes.
fn raft_message_limit(max_msg: usize) -> usize {
    max_msg
        .saturating_mul(4)
        .max(dtc_proto::wire::MAX_MESSAGE_BYTES)
}
