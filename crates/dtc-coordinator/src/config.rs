//! Node configuration and the data-directory identity check.

use dtc_core::Limits;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything one coordinator node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's Raft id; must be a key of `peers`.
    pub id: u64,
    /// Address the gRPC server binds.
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The members a fresh cluster is formed with: id -> address other
    /// nodes use to reach it. Only bootstraps: once formed, the membership
    /// (ids and addresses) lives in Raft and changes with `dtc cluster`.
    /// With [`NodeConfig::join`] it holds this node's own entry only.
    pub peers: BTreeMap<u64, String>,
    /// Addresses of members of a running cluster this node is to join
    /// (`--join`). Non-empty: the node never forms a cluster; it serves its
    /// Raft port and waits until an operator adds it (`dtc cluster add` or
    /// `replace`). A fresh joining node neither votes nor campaigns until
    /// the cluster has taken it in as a learner ([`crate::raft::admission`]).
    pub join: Vec<String>,
    /// Peer id -> the address *this* node dials to reach that peer instead
    /// of its member address (a peer behind NAT or a port forward; the
    /// failover tests route links through fault-injecting proxies). Raft,
    /// forwarding and start-up probes use it; the membership, leader hints
    /// and `ClusterStatus` keep the member address.
    pub peer_addr_overrides: BTreeMap<u64, String>,
    /// Participant name -> the address *this* node dials for it instead of
    /// the endpoint it registered (a participant behind NAT for this node;
    /// the failover tests cut one coordinator's link to a participant this
    /// way). Every other node, and the registry, keep the registered one.
    pub participant_addr_overrides: BTreeMap<String, String>,
    /// Cluster name: written into the data directory and checked on every
    /// Raft message, so nodes of two clusters never mix.
    pub cluster: String,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and purge the log) after this many applied entries,
    /// stretched by 10 % per node id so that the nodes build at different
    /// times (see `raft::staggered_snapshot_every`).
    pub snapshot_every: u64,
    pub limits: Limits,
    /// Transactions driven at once on the leader; past it `Execute` gets
    /// RESOURCE_EXHAUSTED instead of queueing without bound.
    pub max_in_flight: usize,
    /// Transactions a leader drives at once, decided ones waiting for a
    /// participant's acknowledgement included; past it `Execute` gets
    /// RESOURCE_EXHAUSTED. Without it a dead participant makes decided
    /// transactions (each a driver task retrying its decision) pile up
    /// without bound while new ones keep coming (docs/design.md §7).
    pub max_pending: usize,
    /// Outcome queries (`InDoubt.QueryOutcome`) this node answers at once;
    /// past it a query gets RESOURCE_EXHAUSTED (the participant asks again
    /// on its next round).
    pub max_outcome_queries: usize,
    /// Calls this node forwards to the leader at once; past it a call gets
    /// RESOURCE_EXHAUSTED instead of holding its request while the leader
    /// is slow.
    pub max_forwarded: usize,
    /// How long completed outcomes stay queryable (idempotent retries).
    pub outcome_retention: Duration,
    /// After the decision, how long `Execute` waits for acknowledgements
    /// before answering (so a client normally reads its own writes).
    pub ack_wait: Duration,
    /// Time allowed for one phase-2 (commit/abort) call before it is retried.
    pub rpc_timeout: Duration,
    /// Where to serve Prometheus metrics at `/metrics` (none: not served).
    pub metrics_listen: Option<SocketAddr>,
    /// Bytes kept free on the data directory's filesystem: while less is
    /// free, the leader refuses new transactions (RESOURCE_EXHAUSTED naming
    /// the disk) so that the decisions of those in flight can still be
    /// written (docs/design.md §3). 0 turns the check off.
    pub disk_reserve_bytes: u64,
    /// On shutdown, how long a leader waits for the transactions it runs to
    /// be decided (and the answers to reach their clients) before it stops.
    pub shutdown_grace: Duration,
    /// Mutual TLS on the server and on every channel this node dials (none:
    /// plaintext).
    pub tls: Option<dtc_proto::tls::Tls>,
}

impl NodeConfig {
    /// A config with production defaults for the given identity.
    pub fn new(
        id: u64,
        listen: SocketAddr,
        data_dir: PathBuf,
        peers: BTreeMap<u64, String>,
    ) -> Self {
        NodeConfig {
            id,
            listen,
            data_dir,
            peers,
            join: Vec::new(),
            peer_addr_overrides: BTreeMap::new(),
            participant_addr_overrides: BTreeMap::new(),
            cluster: "dtc".into(),
            // Failover takes about max + (min+max)/2 + 1.5 heartbeats (see
            // docs/design.md, "Failover timing"): 200-270 ms with these.
            heartbeat_ms: 20,
            election_timeout_min_ms: 60,
            election_timeout_max_ms: 120,
            snapshot_every: 5000,
            limits: Limits::default(),
            max_in_flight: 1024,
            max_pending: 8 * 1024,
            max_outcome_queries: 1024,
            max_forwarded: 1024,
            outcome_retention: Duration::from_secs(3600),
            ack_wait: Duration::from_secs(1),
            rpc_timeout: Duration::from_secs(2),
            metrics_listen: None,
            disk_reserve_bytes: dtc_util::disk::DEFAULT_RESERVE_BYTES,
            // Below `docker stop`'s 10 s before SIGKILL.
            shutdown_grace: Duration::from_secs(5),
            tls: None,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.peers.contains_key(&self.id) {
            return Err(ConfigError::IdNotInPeers(self.id));
        }
        if !self.join.is_empty() && self.peers.len() != 1 {
            return Err(ConfigError::JoinWithPeers);
        }
        // A joining node does not know the members from its flags (they
        // live in Raft), so it may override any other node's address.
        if let Some(id) = self
            .peer_addr_overrides
            .keys()
            .find(|id| **id == self.id || (self.join.is_empty() && !self.peers.contains_key(id)))
        {
            return Err(ConfigError::BadOverride(*id));
        }
        if self.heartbeat_ms == 0 || self.election_timeout_min_ms <= self.heartbeat_ms {
            return Err(ConfigError::Timing(
                "the election timeout must be longer than the heartbeat interval".into(),
            ));
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err(ConfigError::Timing(
                "the election timeout range must have max > min".into(),
            ));
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::Timing(
                "max in-flight must be at least 1".into(),
            ));
        }
        if self.max_pending < self.max_in_flight {
            return Err(ConfigError::Timing(format!(
                "max pending ({}) must be at least max in-flight ({}): every transaction in \
                 flight is pending",
                self.max_pending, self.max_in_flight
            )));
        }
        if self.max_outcome_queries == 0 || self.max_forwarded == 0 {
            return Err(ConfigError::Timing(
                "max outcome queries and max forwarded calls must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid --peers entry {0:?}: expected ID=HOST:PORT, e.g. 1=127.0.0.1:7001")]
    BadPeer(String),
    #[error("--peers names node {0} twice")]
    DuplicatePeer(u64),
    #[error("--peers is empty")]
    NoPeers,
    #[error("--id {0} is not one of the --peers")]
    IdNotInPeers(u64),
    #[error("--peer-addr-override names node {0}, which is this node or not one of the --peers")]
    BadOverride(u64),
    #[error(
        "--join and --peers exclude each other: --peers forms a new cluster, --join waits to be \
         added to a running one (give this node's own address with --advertise or --listen)"
    )]
    JoinWithPeers,
    #[error("{0}")]
    Timing(String),
    #[error(
        "data directory {dir} belongs to node {found_id} of cluster {found_cluster:?}, \
         not node {id} of cluster {cluster:?}; refusing to start (point --data-dir at this node's \
         own directory or an empty one)"
    )]
    WrongIdentity {
        dir: PathBuf,
        found_id: u64,
        found_cluster: String,
        id: u64,
        cluster: String,
    },
    #[error("data directory {dir} is not usable: {why}")]
    BadDataDir { dir: PathBuf, why: String },
}

/// Parses `1=host:port,2=host:port,...`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| ConfigError::BadPeer(part.into()))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| ConfigError::BadPeer(part.into()))?;
        let addr = addr.trim();
        let valid_addr = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid_addr {
            return Err(ConfigError::BadPeer(part.into()));
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(ConfigError::DuplicatePeer(id));
        }
    }
    if peers.is_empty() {
        return Err(ConfigError::NoPeers);
    }
    Ok(peers)
}

const IDENTITY_FILE: &str = "identity.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct Identity {
    cluster: String,
    node_id: u64,
}

/// Makes sure `dir` is this node's: creates the identity file in an empty or
/// new directory, refuses one that belongs to another node or cluster, and
/// refuses a directory holding dtc data but no identity (never overwrite).
pub fn claim_data_dir(dir: &Path, id: u64, cluster: &str) -> Result<(), ConfigError> {
    let bad = |why: String| ConfigError::BadDataDir {
        dir: dir.to_path_buf(),
        why,
    };
    std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let found: Identity = serde_json::from_slice(&bytes)
                .map_err(|e| bad(format!("{} is corrupt: {e}", path.display())))?;
            if found.node_id != id || found.cluster != cluster {
                return Err(ConfigError::WrongIdentity {
                    dir: dir.to_path_buf(),
                    found_id: found.node_id,
                    found_cluster: found.cluster,
                    id,
                    cluster: cluster.to_string(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.join(dtc_store::LOG_FILE).exists() || dir.join(dtc_store::STATE_FILE).exists() {
                return Err(bad(format!(
                    "it holds dtc data but no {IDENTITY_FILE}; refusing to guess whose it is"
                )));
            }
            let identity = Identity {
                cluster: cluster.to_string(),
                node_id: id,
            };
            let json = serde_json::to_vec_pretty(&identity).map_err(|e| bad(e.to_string()))?;
            // Whole or not at all: a crash never leaves a half-written identity.
            dtc_util::fs::create_atomically(&path, |tmp| std::fs::write(tmp, json))
                .map_err(|e| bad(e.to_string()))
        }
        Err(e) => Err(bad(e.to_string())),
    }
}

impl NodeConfig {
    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.election_timeout_max_ms)
    }

    /// The address this node dials to reach peer `id`: its override, else
    /// its member address (None for a node that is not a peer).
    pub fn dial_addr(&self, id: u64) -> Option<&str> {
        self.peer_addr_overrides
            .get(&id)
            .or_else(|| self.peers.get(&id))
            .map(String::as_str)
    }

    /// The peer this node dials at `dial_addr`, with its member address.
    pub fn peer_dialed_at(&self, dial_addr: &str) -> Option<(u64, &str)> {
        self.peers
            .iter()
            .find(|(id, _)| self.dial_addr(**id) == Some(dial_addr))
            .map(|(id, member)| (*id, member.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_peer_lists_and_names_the_bad_entry() {
        let p = parse_peers("1=127.0.0.1:7001, 2=localhost:7002,3=[::1]:7003").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[&3], "[::1]:7003");
        let err = parse_peers("1=127.0.0.1:7001,x=y").unwrap_err();
        assert!(err.to_string().contains("\"x=y\""), "{err}");
        assert!(matches!(
            parse_peers("1=a:1,1=b:2"),
            Err(ConfigError::DuplicatePeer(1))
        ));
        assert!(parse_peers("1=host").is_err());
        assert!(parse_peers("").is_err());
    }

    #[test]
    fn peer_address_overrides_change_only_what_this_node_dials() {
        let peers = parse_peers("1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003").unwrap();
        let mut c = NodeConfig::new(1, "127.0.0.1:7001".parse().unwrap(), "d".into(), peers);
        c.peer_addr_overrides = parse_peers("2=127.0.0.1:9002").unwrap();
        c.validate().unwrap();
        assert_eq!(c.dial_addr(2), Some("127.0.0.1:9002"));
        assert_eq!(c.dial_addr(3), Some("127.0.0.1:7003"));
        assert_eq!(c.dial_addr(4), None);
        assert_eq!(
            c.peer_dialed_at("127.0.0.1:9002"),
            Some((2, "127.0.0.1:7002"))
        );
        assert_eq!(c.peer_dialed_at("127.0.0.1:7002"), None);
        c.peer_addr_overrides = parse_peers("1=127.0.0.1:9001").unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::BadOverride(1))));
        c.peer_addr_overrides = parse_peers("4=127.0.0.1:9004").unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::BadOverride(4))));
    }

    #[test]
    fn bounds_below_their_minimum_are_refused() {
        let peers = parse_peers("1=127.0.0.1:7001").unwrap();
        let mut c = NodeConfig::new(1, "127.0.0.1:7001".parse().unwrap(), "d".into(), peers);
        c.validate().unwrap();
        c.max_pending = c.max_in_flight - 1;
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("max pending"), "{err}");
        c.max_pending = c.max_in_flight;
        c.validate().unwrap();
        c.max_forwarded = 0;
        assert!(c.validate().is_err());
        c.max_forwarded = 1;
        c.max_outcome_queries = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn data_dir_of_another_node_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        claim_data_dir(dir.path(), 1, "dtc").unwrap();
        claim_data_dir(dir.path(), 1, "dtc").unwrap();
        let before = std::fs::read(dir.path().join(IDENTITY_FILE)).unwrap();
        let err = claim_data_dir(dir.path(), 2, "dtc").unwrap_err();
        assert!(err.to_string().contains("belongs to node 1"), "{err}");
        assert!(claim_data_dir(dir.path(), 1, "other").is_err());
        assert_eq!(
            std::fs::read(dir.path().join(IDENTITY_FILE)).unwrap(),
            before
        );
    }

    #[test]
    fn data_dir_with_data_but_no_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(dtc_store::LOG_FILE), b"x").unwrap();
        assert!(claim_data_dir(dir.path(), 1, "dtc").is_err());
    }
}
