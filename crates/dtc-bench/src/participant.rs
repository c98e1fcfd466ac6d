//! The bench's participants: tiny in-process gRPC `Participant` servers that
//! vote PREPARED and acknowledge Commit/Abort at once, keeping nothing.
//!
//! ```text
//! coordinator leader ──Prepare/Commit/Abort──► 127.0.0.1:<free port>  bench-<pid>-<i>
//!                                                 (one server per branch, this process)
//! bench ──RegisterParticipant(bench-<pid>-<i>, http://127.0.0.1:<port>)──► cluster
//! ```
//!
//! They stand in for the cheapest possible resource manager, so what the
//! bench measures is the coordinator: its Raft writes, its 2PC driver and its
//! RPCs, not a participant's disk.

use crate::probe::{Nodes, request, status_text};
use anyhow::{Context, Result, anyhow, bail};
use dtc_proto::v1::{
    AbortRequest, AbortResponse, CommitRequest, CommitResponse, PrepareRequest, PrepareResponse,
    RegisterParticipantRequest, Vote,
    coordinator_client::CoordinatorClient,
    participant_server::{Participant, ParticipantServer},
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};

/// Votes prepared, acknowledges everything; no state at all.
#[derive(Clone, Copy)]
struct AlwaysPrepared;

#[tonic::async_trait]
impl Participant for AlwaysPrepared {
    async fn prepare(
        &self,
        _request: Request<PrepareRequest>,
    ) -> Result<Response<PrepareResponse>, Status> {
        Ok(Response::new(PrepareResponse {
            vote: Vote::Prepared as i32,
            reason: String::new(),
        }))
    }

    async fn commit(
        &self,
        _request: Request<CommitRequest>,
    ) -> Result<Response<CommitResponse>, Status> {
        Ok(Response::new(CommitResponse {}))
    }

    async fn abort(
        &self,
        _request: Request<AbortRequest>,
    ) -> Result<Response<AbortResponse>, Status> {
        Ok(Response::new(AbortResponse {}))
    }
}

/// The running participant servers; dropping this stops them.
pub struct Participants {
    /// (name, address) of each server.
    pub list: Vec<(String, SocketAddr)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Participants {
    fn drop(&mut self) {
        // Aborted rather than shut down gracefully: a graceful shutdown would
        // wait for the coordinators to close their connections.
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Participants {
    /// Serves `count` participants named `bench-<pid>-<i>`, each on its own
    /// free 127.0.0.1 port, on the current runtime.
    pub async fn start(count: usize) -> Result<Participants> {
        let pid = std::process::id();
        let mut list = Vec::new();
        let mut tasks = Vec::new();
        for i in 0..count {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .context("cannot bind a participant port on 127.0.0.1")?;
            let addr = listener
                .local_addr()
                .context("cannot read the participant port")?;
            let name = format!("bench-{pid}-{i}");
            // `Server::tcp_nodelay` does not reach sockets accepted from our
            // own listener; without NODELAY on them, concurrent calls on the
            // coordinator's one connection wait ~40 ms each for Nagle.
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let server = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(ParticipantServer::new(AlwaysPrepared));
            let task_name = name.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = server.serve_with_incoming(incoming).await {
                    eprintln!("dtc bench: participant {task_name} stopped serving: {e}");
                }
            }));
            list.push((name, addr));
        }
        Ok(Participants { list, tasks })
    }

    /// Registers every participant through the leader at `leader_addr`
    /// (followers would forward, the leader saves a hop), then waits until
    /// the leader's registry lists each with its endpoint. Bounded by `within`.
    pub async fn register(&self, nodes: &Nodes, leader_addr: &str, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let channel = Endpoint::from_shared(dtc_util::endpoint_uri(leader_addr))
            .with_context(|| format!("invalid coordinator address {leader_addr:?}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        let mut client = CoordinatorClient::new(channel);
        for (name, addr) in &self.list {
            let endpoint = format!("http://{addr}");
            loop {
                let r = client
                    .register_participant(request(
                        RegisterParticipantRequest {
                            name: name.clone(),
                            endpoint: endpoint.clone(),
                        },
                        Duration::from_secs(2),
                    ))
                    .await;
                match r {
                    Ok(_) => break,
                    Err(s) if Instant::now() < deadline => {
                        // Retried: an election may be under way.
                        tracing::debug!("registering {name}: {}", status_text(&s));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(s) => {
                        bail!(
                            "cannot register participant {name} at {leader_addr}: {}",
                            status_text(&s)
                        )
                    }
                }
            }
        }
        // The registration is a Raft write; Execute checks the applied
        // registry, so wait until the leader shows every one of them.
        loop {
            let statuses = nodes.statuses().await;
            let registered = dtc_harness::cluster::leader_view(
                statuses.iter().filter_map(|(_, r)| r.as_ref().ok()),
            )
            .is_some_and(|s| {
                self.list.iter().all(|(name, addr)| {
                    let endpoint = format!("http://{addr}");
                    s.participants
                        .iter()
                        .any(|p| &p.name == name && p.endpoint == endpoint)
                })
            });
            if registered {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "the leader does not list the bench's participants {} within {within:?} \
                     after registering them",
                    self.list
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
