//! `dtc status`'s picture of a cluster: every node's own view
//! (`ClusterStatus`), merged. A restarted ex-leader can briefly claim its old
//! term, so the highest term wins.

use anyhow::anyhow;
use dtc_proto::v1::{
    ClusterStatusRequest, ClusterStatusResponse, coordinator_client::CoordinatorClient,
};
use serde::Serialize;
use std::time::Duration;
use tonic::Code;

#[derive(Serialize)]
pub struct NodeView {
    id: Option<u64>,
    addr: String,
    role: String,
    last_applied: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
pub struct Participant {
    name: String,
    endpoint: String,
}

#[derive(Serialize)]
pub struct Status {
    leader: Option<u64>,
    term: u64,
    nodes: Vec<NodeView>,
    pending: u64,
    participants: Vec<Participant>,
}

/// Node `addr`'s own view, or why there is none.
pub async fn ask(
    addr: &str,
    timeout: Duration,
    tls: Option<&dtc_client::Tls>,
) -> anyhow::Result<ClusterStatusResponse> {
    let endpoint = dtc_proto::tls::endpoint(addr, tls)
        .map_err(|e| anyhow!("invalid address: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| match dtc_client::tls_problem(&e) {
            Some(tls) => anyhow!("cannot connect: {tls}"),
            None => anyhow!("cannot connect: {e}"),
        })?;
    CoordinatorClient::new(channel)
        .cluster_status(ClusterStatusRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| match dtc_client::tls_problem(&s) {
            Some(tls) => anyhow!("{tls}"),
            // A plaintext call to a TLS port often ends this way, before
            // the TLS alert that would say so arrives.
            None if tls.is_none()
                && matches!(s.code(), Code::Unknown | Code::Internal | Code::Cancelled) =>
            {
                anyhow!(
                    "{}: {} (if the cluster uses TLS, give --tls-cert, --tls-key and --tls-ca)",
                    s.code(),
                    s.message()
                )
            }
            None => anyhow!("{}: {}", s.code(), s.message()),
        })
}

/// Asks every node in `addrs` (at most `timeout` each) and merges the
/// answers; the second value is false when no node answered.
pub async fn gather(
    addrs: &[String],
    timeout: Duration,
    tls: Option<&dtc_client::Tls>,
) -> (Status, bool) {
    let answers = futures::future::join_all(addrs.iter().map(|a| ask(a, timeout, tls))).await;
    let reachable: Vec<&ClusterStatusResponse> =
        answers.iter().filter_map(|r| r.as_ref().ok()).collect();
    let leader_view = crate::cluster::leader_view(reachable.iter().copied());
    let leader = leader_view
        .map(|s| s.node_id)
        .or_else(|| reachable.iter().find_map(|s| s.leader_id));
    let term = reachable.iter().map(|s| s.term).max().unwrap_or(0);
    let source = leader_view.or_else(|| reachable.first().copied());
    let nodes = addrs
        .iter()
        .zip(&answers)
        .map(|(addr, r)| match r {
            Ok(s) => NodeView {
                id: Some(s.node_id),
                addr: addr.clone(),
                // Started with --join and not added yet (it says
                // "learner", but it is not a member of anything).
                role: if s.awaiting_admission {
                    "joining".into()
                } else {
                    s.role.clone()
                },
                last_applied: Some(s.last_applied),
                error: None,
            },
            Err(e) => NodeView {
                id: None,
                addr: addr.clone(),
                role: "unreachable".into(),
                last_applied: None,
                error: Some(e.to_string()),
            },
        })
        .collect();
    let status = Status {
        leader,
        term,
        nodes,
        pending: source.map(|s| s.pending).unwrap_or(0),
        participants: source
            .map(|s| {
                s.participants
                    .iter()
                    .map(|p| Participant {
                        name: p.name.clone(),
                        endpoint: p.endpoint.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    (status, !reachable.is_empty())
}

/// The picture as a table on stdout.
pub fn print_table(s: &Status) {
    let leader = s
        .leader
        .map(|l| l.to_string())
        .unwrap_or_else(|| "none".into());
    println!(
        "leader: {leader}   term: {}   pending: {}",
        s.term, s.pending
    );
    println!(
        "{:<4} {:<24} {:<12} {:>12}",
        "ID", "ADDRESS", "ROLE", "APPLIED"
    );
    for n in &s.nodes {
        let id = n.id.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
        let applied = n
            .last_applied
            .map(|i| i.to_string())
            .unwrap_or_else(|| "-".into());
        println!("{id:<4} {:<24} {:<12} {applied:>12}", n.addr, n.role);
        if let Some(e) = &n.error {
            println!("     ({e})");
        }
    }
    if s.participants.is_empty() {
        println!("participants: none registered");
    } else {
        println!("participants:");
        for p in &s.participants {
            println!("  {:<20} {}", p.name, p.endpoint);
        }
    }
}
