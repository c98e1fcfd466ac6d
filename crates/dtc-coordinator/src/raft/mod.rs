//! The Raft node: openraft's configuration, start-up, cluster formation, and
//! its transport over tonic ([`transport`]).
//!
//! Uses [`crate::config`] and [`crate::channels`] only.

pub mod admission;
pub mod transport;

use crate::channels::Channels;
use crate::config::NodeConfig;
use dtc_store::{LogStore, StateMachineStore, TypeConfig};
use openraft::{BasicNode, Raft, SnapshotPolicy};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::info;
use transport::NetworkFactory;

/// Why the Raft node could not start.
#[derive(Debug, thiserror::Error)]
pub enum RaftStartError {
    #[error("invalid Raft configuration: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error(transparent)]
    Fatal(#[from] openraft::error::Fatal<u64>),
    #[error(transparent)]
    Initialize(
        #[from] openraft::error::RaftError<u64, openraft::error::InitializeError<u64, BasicNode>>,
    ),
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

/// Starts this node's Raft on the opened stores.
pub async fn start(
    config: &NodeConfig,
    channels: &Channels,
    log_store: LogStore,
    state_machine: StateMachineStore,
) -> Result<Raft<TypeConfig>, RaftStartError> {
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
    .validate()?;
    let network = NetworkFactory {
        cluster: config.cluster.clone(),
        channels: channels.clone(),
        unreachable_backoff: Duration::from_millis(config.heartbeat_ms.min(50)),
        peer_addr_overrides: config.peer_addr_overrides.clone(),
    };
    Ok(Raft::new(
        config.id,
        Arc::new(raft_config),
        network,
        log_store,
        state_machine,
    )
    .await?)
}

/// Forms the cluster on first start. Every node of a fresh cluster calls
/// this with the same member set, which openraft allows; a node that
/// already has state (or learned it from a peer) refuses, harmlessly.
/// A node started with `--join` never forms one: it waits to be added.
pub async fn form_cluster(
    raft: &Raft<TypeConfig>,
    config: &NodeConfig,
    channels: &Channels,
) -> Result<(), RaftStartError> {
    if !config.join.is_empty() {
        info!(join = ?config.join, "--join: not forming a cluster; waiting to be added");
        return Ok(());
    }
    if raft.is_initialized().await? || peers_already_formed(config, channels).await {
        return Ok(());
    }
    let members: BTreeMap<u64, BasicNode> = config
        .peers
        .iter()
        .map(|(id, addr)| (*id, BasicNode::new(addr)))
        .collect();
    match raft.initialize(members).await {
        Ok(()) => info!("initialized a new cluster with {:?}", config.peers),
        Err(e) => info!("not initializing: {e}"),
    }
    Ok(())
}

/// True if some peer already belongs to an initialized cluster. A pristine
/// node that starts late must then wait to be replicated to: initializing
/// would make it campaign at once and depose the healthy leader.
async fn peers_already_formed(config: &NodeConfig, channels: &Channels) -> bool {
    let probes = config
        .peers
        .iter()
        .filter(|(id, _)| **id != config.id)
        .map(|(id, addr)| {
            let channels = channels.clone();
            let addr = config.dial_addr(*id).unwrap_or(addr).to_string();
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
