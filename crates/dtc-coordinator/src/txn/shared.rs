//! The state the services, the drivers and the leadership watcher share.
//!
//! Uses the layers below it only: [`crate::config`], [`crate::channels`],
//! [`crate::metrics`], the [`Proposer`] and the [`DriverRegistry`].

use super::proposer::{ProposeError, Proposer};
use super::registry::DriverRegistry;
use crate::channels::Channels;
use crate::config::NodeConfig;
use crate::metrics::CoordinatorMetrics;
use dtc_core::{Command, CommandResult};
use dtc_store::{StateReader, TypeConfig};
use openraft::Raft;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
    /// Packs proposals into batched log entries (see [`super::proposer`]).
    pub proposer: Proposer,
    pub reader: StateReader,
    /// Channels to peers and participants, by address.
    pub channels: Channels,
    /// Running drivers by transaction id (leader only).
    pub drivers: DriverRegistry,
    pub leadership: watch::Sender<Leadership>,
    /// Bounds transactions in flight (new ones; takeover is never refused).
    pub in_flight: Arc<Semaphore>,
    /// Bounds outcome queries answered at once (`config.max_outcome_queries`).
    pub outcome_queries: Arc<Semaphore>,
    /// Bounds calls forwarded to the leader at once (`config.max_forwarded`).
    pub forwarded: Arc<Semaphore>,
    /// The node is shutting down: no new transaction starts here.
    pub draining: AtomicBool,
    /// Free space kept on the data directory; checked (one statvfs) before
    /// each new transaction.
    pub disk_reserve: dtc_util::disk::Reserve,
    /// Whether this node still waits to be admitted (`--join`).
    pub admission: crate::raft::admission::Admission,
    /// Monotonic origin for driver deadlines.
    started: Instant,
    pub metrics: CoordinatorMetrics,
}

impl Shared {
    pub fn new(
        config: NodeConfig,
        raft: Raft<TypeConfig>,
        reader: StateReader,
        channels: Channels,
    ) -> Shared {
        Shared {
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            outcome_queries: Arc::new(Semaphore::new(config.max_outcome_queries)),
            forwarded: Arc::new(Semaphore::new(config.max_forwarded)),
            disk_reserve: dtc_util::disk::Reserve {
                dir: config.data_dir.clone(),
                bytes: config.disk_reserve_bytes,
                kept_for: "the decisions of transactions in flight",
            },
            config,
            proposer: Proposer::spawn(raft.clone()),
            raft,
            reader,
            channels,
            drivers: DriverRegistry::default(),
            draining: AtomicBool::new(false),
            leadership: watch::channel(Leadership::NotLeader).0,
            admission: Default::default(),
            started: Instant::now(),
            metrics: Default::default(),
        }
    }

    /// The same state with this node's admission gate.
    pub fn with_admission(mut self, admission: crate::raft::admission::Admission) -> Shared {
        self.admission = admission;
        self
    }

    /// Node `id`'s member address: from the membership in Raft, which
    /// `dtc cluster` changes; `--peers` only until the cluster has formed.
    pub fn member_addr(&self, id: u64) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
            .or_else(|| self.config.peers.get(&id).cloned())
    }

    /// The address this node dials to reach node `id`: its override, else
    /// its member address.
    pub fn dial_addr(&self, id: u64) -> Option<String> {
        self.config
            .peer_addr_overrides
            .get(&id)
            .cloned()
            .or_else(|| self.member_addr(id))
    }

    /// The node this node dials at `dial_addr`, with its member address.
    pub fn peer_dialed_at(&self, dial_addr: &str) -> Option<(u64, String)> {
        let ids: Vec<u64> = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            m.membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .chain(self.config.peers.keys().copied())
                .collect()
        };
        ids.into_iter()
            .find(|id| self.dial_addr(*id).as_deref() == Some(dial_addr))
            .and_then(|id| Some((id, self.member_addr(id)?)))
    }

    /// Monotonic milliseconds since the node started: the driver's clock.
    pub fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Proposes a command through Raft and returns what apply produced.
    /// Any error means this node cannot decide now (not leader, or stopped).
    pub async fn propose(&self, cmd: Command) -> Result<CommandResult, ProposeError> {
        self.proposer.propose(cmd).await
    }

    /// Takeover of `term` finished: transactions may be served.
    pub fn mark_ready(&self, term: u64) {
        self.leadership.send_modify(|l| {
            if let Leadership::Leader { term: t, ready, .. } = l
                && *t == term
            {
                *ready = true;
            }
        });
    }

    /// True while this node leads and has finished takeover.
    pub fn is_ready_leader(&self) -> bool {
        matches!(
            &*self.leadership.borrow(),
            Leadership::Leader { ready: true, .. }
        )
    }

    pub fn node_id(&self) -> u64 {
        self.config.id
    }
}
