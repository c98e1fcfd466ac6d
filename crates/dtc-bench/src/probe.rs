//! The bench's view of the cluster: `ClusterStatus` of every node, the
//! current leader, and a background monitor that keeps both current.
//!
//! ```text
//! Nodes ──ClusterStatus every `every`──► Monitor ──► LeaderBoard (clients read it)
//!                                           ├──► latest Snapshot (failover waits read it)
//!                                           └──► term changes + leader changes (timestamped)
//! ```

use anyhow::{Context, Result, anyhow, bail};
use dtc_proto::v1::{
    ClusterStatusRequest, ClusterStatusResponse, ListTransactionsRequest,
    coordinator_client::CoordinatorClient,
};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// A request with a per-call deadline (sent as `grpc-timeout`, so the server
/// gives up too).
pub fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(timeout);
    req
}

/// One status-probe connection per known coordinator address.
pub struct Nodes {
    nodes: Mutex<Vec<(String, CoordinatorClient<Channel>)>>,
}

/// How long one status probe may take: a live node answers in a millisecond;
/// a dead or hung one must not hold up the 20 ms polling.
const PROBE_TIMEOUT: Duration = Duration::from_millis(150);

fn probe_client(addr: &str) -> Result<CoordinatorClient<Channel>> {
    let endpoint = Endpoint::from_shared(dtc_util::endpoint_uri(addr))
        .with_context(|| format!("invalid coordinator address {addr:?}"))?
        .connect_timeout(PROBE_TIMEOUT)
        .tcp_nodelay(true);
    Ok(CoordinatorClient::new(endpoint.connect_lazy()))
}

impl Nodes {
    pub fn new(addrs: &[String]) -> Result<Nodes> {
        let nodes = addrs
            .iter()
            .map(|a| probe_client(a).map(|c| (a.clone(), c)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Nodes {
            nodes: Mutex::new(nodes),
        })
    }

    /// Every known address.
    pub fn addrs(&self) -> Vec<String> {
        self.snapshot().into_iter().map(|(a, _)| a).collect()
    }

    fn snapshot(&self) -> Vec<(String, CoordinatorClient<Channel>)> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Adds the members a node reported that are not known yet, so that
    /// `--coordinators` may name any subset of the cluster.
    pub fn learn(&self, status: &ClusterStatusResponse) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        for m in &status.members {
            let known = nodes.iter().any(|(a, _)| {
                a == &m.addr || dtc_util::endpoint_uri(a) == dtc_util::endpoint_uri(&m.addr)
            });
            if !known && let Ok(c) = probe_client(&m.addr) {
                nodes.push((m.addr.clone(), c));
            }
        }
    }

    /// Every node's own status (Err: why it did not answer).
    pub async fn statuses(&self) -> Vec<(String, Result<ClusterStatusResponse>)> {
        let nodes = self.snapshot();
        let answers = futures::future::join_all(nodes.iter().map(|(_, c)| {
            let mut c = c.clone();
            async move {
                match tokio::time::timeout(
                    PROBE_TIMEOUT,
                    c.cluster_status(request(ClusterStatusRequest {}, PROBE_TIMEOUT)),
                )
                .await
                {
                    Ok(Ok(r)) => Ok(r.into_inner()),
                    Ok(Err(s)) => Err(anyhow!("{}", status_text(&s))),
                    Err(_) => Err(anyhow!("no answer within {PROBE_TIMEOUT:?}")),
                }
            }
        }))
        .await;
        nodes.into_iter().map(|(a, _)| a).zip(answers).collect()
    }

    /// The status of the node at `addr`.
    pub async fn status_of(&self, addr: &str) -> Result<ClusterStatusResponse> {
        let mut c = self.client(addr)?;
        c.cluster_status(request(ClusterStatusRequest {}, PROBE_TIMEOUT))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| anyhow::anyhow!("ClusterStatus at {addr}: {}", status_text(&s)))
    }

    fn client(&self, addr: &str) -> Result<CoordinatorClient<Channel>> {
        self.snapshot()
            .into_iter()
            .find(|(a, _)| a == addr)
            .map(|(_, c)| c)
            .ok_or_else(|| anyhow::anyhow!("{addr} is not a known coordinator"))
    }

    /// The ids of pending transactions on the node at `addr` (all pages).
    pub async fn pending_ids(&self, addr: &str) -> Result<Vec<String>> {
        let mut c = self.client(addr)?;
        let mut ids = Vec::new();
        let mut after = String::new();
        // 1000 per page; the bound on pages only guards against a server
        // that never stops paging.
        for _ in 0..10_000 {
            let page = c
                .list_transactions(request(
                    ListTransactionsRequest {
                        pending_only: true,
                        limit: 1000,
                        after_txn_id: after.clone(),
                    },
                    Duration::from_millis(500),
                ))
                .await
                .map_err(|s| anyhow::anyhow!("ListTransactions at {addr}: {}", status_text(&s)))?
                .into_inner();
            ids.extend(page.transactions.into_iter().map(|t| t.txn_id));
            if page.next_after_txn_id.is_empty() {
                return Ok(ids);
            }
            after = page.next_after_txn_id;
        }
        bail!("ListTransactions at {addr} kept paging")
    }
}

/// `CODE: message`, for error texts.
pub fn status_text(s: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", s.code(), s.message());
    // A transport failure says little in its message; the innermost source
    // says why ("Connection refused").
    let mut src = std::error::Error::source(s);
    let mut last = None;
    while let Some(e) = src {
        last = Some(e.to_string());
        src = e.source();
    }
    if let Some(why) = last {
        text.push_str(&format!(" ({why})"));
    }
    text
}

/// The leader as the nodes report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub id: u64,
    pub term: u64,
    /// The address the bench reached it at.
    pub addr: String,
}

/// One round of statuses.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    pub statuses: Vec<(String, ClusterStatusResponse)>,
}

impl Snapshot {
    pub fn of(statuses: Vec<(String, Result<ClusterStatusResponse>)>) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            statuses: statuses
                .into_iter()
                .filter_map(|(a, r)| r.ok().map(|s| (a, s)))
                .collect(),
        }
    }

    /// The node calling itself leader with the highest term (a restarted
    /// ex-leader can briefly claim its old term).
    pub fn leader(&self) -> Option<Leader> {
        self.statuses
            .iter()
            .filter(|(_, s)| s.role == "leader")
            .max_by_key(|(_, s)| s.term)
            .map(|(a, s)| Leader {
                id: s.node_id,
                term: s.term,
                addr: a.clone(),
            })
    }

    /// The highest term any node reports.
    pub fn max_term(&self) -> u64 {
        self.statuses.iter().map(|(_, s)| s.term).max().unwrap_or(0)
    }

    pub fn node(&self, id: u64) -> Option<&ClusterStatusResponse> {
        self.statuses
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.node_id == id)
    }

    /// Every one of `expected` nodes answered, all in one term under one
    /// leader that calls itself leader.
    pub fn settled(&self, expected: usize) -> Option<Leader> {
        let leader = self.leader()?;
        let all_agree = self.statuses.len() >= expected
            && self.statuses.iter().all(|(_, s)| {
                s.term == leader.term
                    && (s.node_id == leader.id || s.leader_id == Some(leader.id))
                    && (s.role == "leader") == (s.node_id == leader.id)
            });
        all_agree.then_some(leader)
    }
}

/// The leader the clients should talk to. Clients compare [`LeaderBoard::generation`]
/// (an atomic load per transaction) and read the address only when it moved.
pub struct LeaderBoard {
    generation: AtomicU64,
    leader: Mutex<Leader>,
}

impl LeaderBoard {
    pub fn new(leader: Leader) -> LeaderBoard {
        LeaderBoard {
            generation: AtomicU64::new(0),
            leader: Mutex::new(leader),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    pub fn get(&self) -> Leader {
        self.leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Returns true when this is a different leader (or term) than before.
    fn set(&self, leader: Leader) -> bool {
        let mut cur = self.leader.lock().unwrap_or_else(|p| p.into_inner());
        if *cur == leader || leader.term < cur.term {
            return false;
        }
        *cur = leader;
        self.generation.fetch_add(1, Relaxed);
        true
    }
}

/// A change seen by the monitor.
#[derive(Debug, Clone, Copy)]
pub struct Change {
    pub at: Instant,
    pub term: u64,
    /// The new leader, for a leader change.
    pub leader: Option<u64>,
}

/// What the monitor has seen so far.
#[derive(Default)]
pub struct Observed {
    /// Increases of the highest term any node reports (each one an election).
    pub term_changes: Vec<Change>,
    /// Every new (leader, term) that a node claimed.
    pub leader_changes: Vec<Change>,
    pub latest: Option<Snapshot>,
}

/// Polls every node's status every `every` until dropped (the task is aborted).
pub struct Monitor {
    pub board: Arc<LeaderBoard>,
    pub observed: Arc<Mutex<Observed>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Monitor {
    pub fn start(nodes: Arc<Nodes>, first: Snapshot, every: Duration) -> Result<Monitor> {
        let Some(leader) = first.leader() else {
            bail!("no leader to start from");
        };
        let board = Arc::new(LeaderBoard::new(leader));
        let observed = Arc::new(Mutex::new(Observed::default()));
        let mut max_term = first.max_term();
        observed.lock().unwrap_or_else(|p| p.into_inner()).latest = Some(first);
        let task = tokio::spawn({
            let board = board.clone();
            let observed = observed.clone();
            async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tick.tick().await;
                    let snap = Snapshot::of(nodes.statuses().await);
                    let mut o = observed.lock().unwrap_or_else(|p| p.into_inner());
                    let term = snap.max_term();
                    if term > max_term {
                        max_term = term;
                        o.term_changes.push(Change {
                            at: snap.at,
                            term,
                            leader: snap.leader().filter(|l| l.term == term).map(|l| l.id),
                        });
                    }
                    if let Some(l) = snap.leader()
                        && board.set(l.clone())
                    {
                        o.leader_changes.push(Change {
                            at: snap.at,
                            term: l.term,
                            leader: Some(l.id),
                        });
                    }
                    o.latest = Some(snap);
                }
            }
        });
        Ok(Monitor {
            board,
            observed,
            task,
        })
    }

    /// The latest snapshot taken at or after `since` (None: not yet).
    pub fn latest_since(&self, since: Instant) -> Option<Snapshot> {
        let o = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        o.latest.clone().filter(|s| s.at >= since)
    }

    pub fn term_changes(&self) -> Vec<Change> {
        let o = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        o.term_changes.clone()
    }

    pub fn leader_changes(&self) -> Vec<Change> {
        let o = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        o.leader_changes.clone()
    }
}
