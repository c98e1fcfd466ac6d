//! One coordinator node: opens the store, starts Raft and the gRPC server,
//! forms the cluster on first start, and follows leadership changes.

use crate::channels::Channels;
use crate::config::{ConfigError, NodeConfig, claim_data_dir};
use crate::network::{NetworkFactory, RaftService};
use crate::proposer::Proposer;
use crate::runtime::{self, DriverHandle};
use crate::service::{CoordinatorService, InDoubtService};
use dtc_core::{Command, CommandResult, TxnId};
use dtc_proto::v1::{
    coordinator_server::CoordinatorServer, in_doubt_server::InDoubtServer,
    raft_transport_server::RaftTransportServer,
};
use dtc_store::{StateReader, TypeConfig};
use openraft::{BasicNode, Raft, ServerState, SnapshotPolicy};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};
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
    Raft(String),
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

/// This node's leadership, as the driver runtime sees it.
#[derive(Debug, Clone)]
pub enum Leadership {
    NotLeader,
    Leader {
        term: u64,
        /// Cancelled when the term ends for this node.
        cancel: CancellationToken,
        /// Takeover finished: every pending transaction has a driver.
        ready: bool,
    },
}

/// State shared by the services, the drivers and the leadership watcher.
pub struct Shared {
    pub config: NodeConfig,
    pub raft: Raft<TypeConfig>,
    /// Packs proposals into batched log entries (see [`crate::proposer`]).
    pub proposer: Proposer,
    pub reader: StateReader,
    /// Channels to peers and participants, by address.
    pub channels: Channels,
    /// Running drivers by transaction id (leader only). A retry of a running
    /// transaction joins its driver instead of starting another (corner case 6).
    drivers: Mutex<HashMap<TxnId, DriverHandle>>,
    pub leadership: watch::Sender<Leadership>,
    /// Bounds transactions in flight (new ones; takeover is never refused).
    pub in_flight: Arc<Semaphore>,
    /// Monotonic origin for driver deadlines.
    started: Instant,
    pub metrics: crate::metrics::CoordinatorMetrics,
}

impl Shared {
    pub fn lock_drivers(&self) -> MutexGuard<'_, HashMap<TxnId, DriverHandle>> {
        self.drivers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Monotonic milliseconds since the node started: the driver's clock.
    pub fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Proposes a command through Raft and returns what apply produced.
    /// Any error means this node cannot decide now (not leader, or stopped).
    pub async fn propose(&self, cmd: Command) -> Result<CommandResult, String> {
        self.proposer.propose(cmd).await
    }

    pub fn mark_ready(&self, term: u64) {
        self.leadership.send_modify(|l| {
            if let Leadership::Leader { term: t, ready, .. } = l
                && *t == term
            {
                *ready = true;
            }
        });
    }

    pub fn node_id(&self) -> u64 {
        self.config.id
    }
}

/// The snapshot interval of node `id`: `every` stretched by 0, 10 or 20 %.
///
/// Every node applies the same entries at nearly the same moment, so with
/// one interval all three would build a snapshot at once: on a small machine
/// that stalls heartbeats everywhere together (seen as an election during a
/// history fill). Different intervals put the builds at different times;
/// they meet again only at common multiples (every 11 × or 12 × the
/// interval for two of them).
fn staggered_snapshot_every(every: u64, id: u64) -> u64 {
    every.saturating_add(every.saturating_mul((id.saturating_sub(1)) % 3) / 10)
}

/// Runs a node until `shutdown` resolves.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    config.validate()?;
    claim_data_dir(&config.data_dir, config.id, &config.cluster)?;
    let (log_store, state_machine) = dtc_store::open(&config.data_dir)?;
    let reader = state_machine.reader();
    // Never purge the log past what the state machine durably covers.
    let log_store = log_store.purge_covered_by(reader.clone());
    let log_for_metrics = log_store.clone();
    // Bound before anything starts, so a taken port fails the start at once.
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(dtc_metrics::bind(addr).await.map_err(NodeError::Metrics)?),
        None => None,
    };

    let raft_config = openraft::Config {
        cluster_name: config.cluster.clone(),
        heartbeat_interval: config.heartbeat_ms,
        election_timeout_min: config.election_timeout_min_ms,
        election_timeout_max: config.election_timeout_max_ms,
        // Snapshots of a long retention window can be large; the default
        // 200 ms per chunk is far too tight.
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(staggered_snapshot_every(
            config.snapshot_every,
            config.id,
        )),
        max_in_snapshot_log_to_keep: 1000,
        ..Default::default()
    }
    .validate()
    .map_err(|e| NodeError::Raft(e.to_string()))?;

    let channels = Channels::default();
    let network = NetworkFactory {
        cluster: config.cluster.clone(),
        channels: channels.clone(),
        unreachable_backoff: Duration::from_millis(config.heartbeat_ms.min(50)),
        peer_addr_overrides: config.peer_addr_overrides.clone(),
    };
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config),
        network,
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| NodeError::Raft(e.to_string()))?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| NodeError::Listen {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| NodeError::Listen {
        addr: config.listen,
        source,
    })?;

    let (leadership, _) = watch::channel(Leadership::NotLeader);
    let shared = Arc::new(Shared {
        in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
        config,
        proposer: Proposer::spawn(raft.clone()),
        raft: raft.clone(),
        reader,
        channels,
        drivers: Mutex::new(HashMap::new()),
        leadership,
        started: Instant::now(),
        metrics: Default::default(),
    });

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
            dtc_proto::v1::in_doubt_server::SERVICE_NAME,
            dtc_proto::v1::raft_transport_server::SERVICE_NAME,
            dtc_proto::reflection::HEALTH,
        ]
        .map(String::from)
        .to_vec(),
        descriptor_sets: Vec::new(),
    };
    let reflection_error = |e| NodeError::Raft(format!("reflection: {e}"));
    let reflection = dtc_proto::reflection::v1(&listed).map_err(reflection_error)?;
    let reflection_v1alpha = dtc_proto::reflection::v1alpha(&listed).map_err(reflection_error)?;

    let max_msg =
        shared.config.limits.max_payload_bytes * shared.config.limits.max_branches + 1024 * 1024;
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(
            RaftTransportServer::new(RaftService {
                raft: raft.clone(),
                cluster: shared.config.cluster.clone(),
            })
            .max_decoding_message_size(usize::MAX),
        )
        .add_service(
            CoordinatorServer::new(CoordinatorService::new(shared.clone()))
                .max_decoding_message_size(max_msg),
        )
        .add_service(InDoubtServer::new(InDoubtService::new(shared.clone())));
    let stop = CancellationToken::new();
    let serving = tokio::spawn({
        let stop = stop.clone();
        server.serve_with_incoming_shutdown(
            // `Server::tcp_nodelay` does not reach sockets accepted from our
            // own listener; without this, concurrent calls on one connection
            // wait ~40 ms each for Nagle's algorithm.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stop.cancelled_owned(),
        )
    });
    info!(id = shared.config.id, addr = %local, cluster = %shared.config.cluster, "coordinator listening");

    // Form the cluster on first start. Every node of a fresh cluster calls
    // this with the same member set, which openraft allows; a node that
    // already has state (or learned it from a peer) refuses, harmlessly.
    if !raft
        .is_initialized()
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?
        && !peers_already_formed(&shared).await
    {
        let members: BTreeMap<u64, BasicNode> = shared
            .config
            .peers
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        match raft.initialize(members).await {
            Ok(()) => info!("initialized a new cluster with {:?}", shared.config.peers),
            Err(e) => info!("not initializing: {e}"),
        }
    }

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

    let watcher = tokio::spawn(watch_leadership(shared.clone()));
    let health = tokio::spawn(watch_health(shared.clone(), health_reporter));
    let expirer = tokio::spawn(expire_outcomes(shared.clone()));

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
                    return fatal.to_string();
                }
                if m.changed().await.is_err() {
                    return "raft stopped".to_string();
                }
            }
        }
    };
    let mut fatal = None;
    let serve_result = tokio::select! {
        _ = shutdown => None,
        r = serving => Some(r),
        why = raft_stopped => {
            error!(error = %why, "raft stopped for good; exiting so that a supervisor restarts this node");
            fatal = Some(why);
            None
        }
    };
    info!("shutting down");
    stop.cancel();
    watcher.abort();
    health.abort();
    expirer.abort();
    if let Leadership::Leader { cancel, .. } = &*shared.leadership.borrow() {
        cancel.cancel();
    }
    if let Err(e) = raft.shutdown().await {
        warn!("raft shutdown: {e}");
    }
    // Applies are synced only now and then (the log re-creates them after a
    // crash); a clean stop syncs them so the next start replays nothing.
    let reader = shared.reader.clone();
    match tokio::task::spawn_blocking(move || reader.make_durable()).await {
        Ok(Ok(applied)) => info!(?applied, "state machine synced"),
        Ok(Err(e)) => warn!("syncing the state machine at shutdown: {e}"),
        Err(e) => warn!("syncing the state machine at shutdown: {e}"),
    }
    if let Some(why) = fatal {
        return Err(NodeError::Raft(format!(
            "raft stopped: {why}; restart the node (it recovers from what is on disk)"
        )));
    }
    match serve_result {
        Some(Ok(Err(e))) => Err(NodeError::Serve(e)),
        Some(Err(e)) => Err(NodeError::Raft(format!("server task: {e}"))),
        _ => Ok(()),
    }
}

/// True if some peer already belongs to an initialized cluster. A pristine
/// node that starts late must then wait to be replicated to: initializing
/// would make it campaign at once and depose the healthy leader.
async fn peers_already_formed(shared: &Shared) -> bool {
    let probes = shared
        .config
        .peers
        .iter()
        .filter(|(id, _)| **id != shared.config.id)
        .map(|(id, addr)| {
            let channels = shared.channels.clone();
            let addr = shared.config.dial_addr(*id).unwrap_or(addr).to_string();
            async move {
                let channel = channels.get(&addr).ok()?;
                let mut req = tonic::Request::new(dtc_proto::v1::ClusterStatusRequest {});
                req.set_timeout(Duration::from_millis(300));
                let status = dtc_proto::v1::coordinator_client::CoordinatorClient::new(channel)
                    .cluster_status(req)
                    .await
                    .ok()?
                    .into_inner();
                (!status.members.is_empty()).then_some(*id)
            }
        });
    let formed: Vec<u64> = futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect();
    if formed.is_empty() {
        false
    } else {
        info!(
            ?formed,
            "peers already form a cluster; joining it instead of initializing"
        );
        true
    }
}

/// Follows Raft metrics: on becoming leader, start a term's takeover; on
/// losing leadership, cancel every driver of the old term.
/// Whether this node can serve transactions now: it knows a leader, and if
/// it is that leader, a quorum acknowledged it within the longest election
/// timeout (past that, followers may already have elected someone else).
fn can_serve(m: &openraft::RaftMetrics<u64, BasicNode>, id: u64, max_election_ms: u64) -> bool {
    match m.current_leader {
        None => false,
        Some(leader) if leader == id => m
            .millis_since_quorum_ack
            .is_some_and(|ms| ms <= max_election_ms),
        Some(_) => m.state == ServerState::Follower,
    }
}

/// Keeps `grpc.health.v1` true for the Coordinator service: SERVING only
/// while [`can_serve`] holds, so a load balancer or an orchestrator stops
/// sending clients to a node cut off from its quorum. The process itself
/// (service "") stays SERVING: it is alive, and restarting it would not help.
async fn watch_health(shared: Arc<Shared>, reporter: tonic_health::server::HealthReporter) {
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

async fn watch_leadership(shared: Arc<Shared>) {
    let mut metrics = shared.raft.metrics();
    let mut current: Option<(u64, CancellationToken)> = None;
    loop {
        let (leading, term, leader) = {
            let m = metrics.borrow_and_update();
            (
                m.state == ServerState::Leader && m.current_leader == Some(shared.config.id),
                m.current_term,
                m.current_leader,
            )
        };
        match (&current, leading) {
            (Some((t, _)), true) if *t == term => {}
            (_, true) => {
                if let Some((_, old)) = current.take() {
                    old.cancel();
                }
                let cancel = CancellationToken::new();
                info!(term, "became leader; taking over pending transactions");
                shared.lock_drivers().clear();
                shared.leadership.send_replace(Leadership::Leader {
                    term,
                    cancel: cancel.clone(),
                    ready: false,
                });
                current = Some((term, cancel.clone()));
                tokio::spawn(runtime::take_over(shared.clone(), term, cancel));
            }
            (Some((t, cancel)), false) => {
                info!(term = t, new_leader = ?leader, "lost leadership; stopping drivers");
                cancel.cancel();
                current = None;
                shared.lock_drivers().clear();
                shared.leadership.send_replace(Leadership::NotLeader);
            }
            (None, false) => {}
        }
        if metrics.changed().await.is_err() {
            // Raft stopped: nothing may keep driving in its name.
            if let Some((_, cancel)) = current.take() {
                cancel.cancel();
            }
            shared.lock_drivers().clear();
            shared.leadership.send_replace(Leadership::NotLeader);
            return;
        }
    }
}

/// Periodically proposes `Expire` on the leader, so completed outcomes leave
/// the state after the retention window.
/// Most completed outcomes one `ExpireAtMost` entry drops (each costs two
/// index removals in the apply's write transaction).
const EXPIRE_SLICE: u32 = 4096;

async fn expire_outcomes(shared: Arc<Shared>) {
    let retention = shared.config.outcome_retention;
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !matches!(
            &*shared.leadership.borrow(),
            Leadership::Leader { ready: true, .. }
        ) {
            continue;
        }
        // In slices: a backlog (after an outage, or a shorter retention)
        // must not become one huge write that stalls every apply behind it.
        let now_ms = dtc_util::wall_ms();
        let mut total = 0u64;
        loop {
            let cmd = Command::ExpireAtMost {
                now_ms,
                retention_ms: retention.as_millis() as u64,
                limit: EXPIRE_SLICE,
            };
            match shared.propose(cmd).await {
                Ok(CommandResult::Expired { count }) => {
                    total += count;
                    if count < u64::from(EXPIRE_SLICE) {
                        break;
                    }
                }
                Ok(other) => {
                    warn!("expire: unexpected result {other:?}");
                    break;
                }
                Err(e) => {
                    warn!("expire: {e}");
                    break;
                }
            }
        }
        if total > 0 {
            info!(
                count = total,
                "expired completed outcomes past the retention window"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::staggered_snapshot_every;

    #[test]
    fn the_three_nodes_snapshot_at_different_intervals() {
        let got: Vec<u64> = (1..=3)
            .map(|id| staggered_snapshot_every(5000, id))
            .collect();
        assert_eq!(got, [5000, 5500, 6000]);
        // Small settings (tests use 50) stay distinct and never reach zero.
        assert_eq!(staggered_snapshot_every(50, 3), 60);
        assert_eq!(staggered_snapshot_every(1, 2), 1);
        assert_eq!(staggered_snapshot_every(u64::MAX, 3), u64::MAX);
    }
}
