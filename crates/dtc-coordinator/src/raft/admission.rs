//! The admission gate of a node that joins a running cluster empty
//! (`--join`): it receives the log, but neither votes nor campaigns until
//! the cluster has taken it in as a learner.
//!
//! Why: a node that lost its disk has forgotten its votes and its log. If
//! the cluster still lists it as a voter, its empty vote could elect a
//! candidate that lacks committed entries (which the lost disk held), or
//! vote twice in one term. The cluster must first remove the old voter and
//! add the empty node as a learner (`dtc cluster replace`, docs/design.md
//! §5b). A membership that lists this node as a learner proves exactly
//! that, so seeing one opens the gate; until then, Vote requests are
//! refused ([`crate::raft::transport`]) and elections are off.
//!
//! The gate is a file in the data directory, created when a fresh node
//! starts with `--join` and removed (durably) on admission, so a restart
//! in between stays gated. Nodes that formed the cluster with `--peers`
//! never have it.
//!
//! Uses [`crate::config`] only.

use crate::config::{ConfigError, NodeConfig};
use dtc_store::TypeConfig;
use openraft::Raft;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// The gate file's name in the data directory.
pub const AWAITING_FILE: &str = "awaiting-admission";

/// Whether this node waits for admission; shared by the transport (which
/// refuses votes meanwhile) and the watcher that opens the gate.
#[derive(Clone, Debug, Default)]
pub struct Admission {
    awaiting: Arc<AtomicBool>,
    marker: PathBuf,
}

impl Admission {
    /// Called before the store is opened: a node started with `--join` on
    /// a data directory without Raft data creates the gate file. Returns
    /// the gate as the file says.
    pub fn prepare(config: &NodeConfig) -> Result<Admission, ConfigError> {
        let dir = &config.data_dir;
        let marker = dir.join(AWAITING_FILE);
        let fresh = !dir.join(dtc_store::LOG_FILE).exists();
        if !config.join.is_empty() && fresh && !marker.exists() {
            dtc_util::fs::create_atomically(&marker, |tmp| {
                std::fs::write(
                    tmp,
                    b"started empty with --join; removed once added as a learner\n",
                )
            })
            .map_err(|e| ConfigError::BadDataDir {
                dir: dir.clone(),
                why: format!("cannot create {AWAITING_FILE}: {e}"),
            })?;
        }
        let awaiting = marker.exists();
        Ok(Admission {
            awaiting: Arc::new(AtomicBool::new(awaiting)),
            marker,
        })
    }

    /// True until the cluster has added this node as a learner.
    pub fn is_awaiting(&self) -> bool {
        self.awaiting.load(Ordering::SeqCst)
    }

    /// Turns elections off at once (before the returned future first
    /// runs) while awaiting; the future opens the gate when the membership
    /// lists this node as a learner. It ends at once if not awaiting;
    /// otherwise when admitted or when Raft stops.
    pub fn watch(
        self,
        raft: Raft<TypeConfig>,
        id: u64,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        if self.is_awaiting() {
            raft.runtime_config().elect(false);
        }
        self.admit_when_learner(raft, id)
    }

    async fn admit_when_learner(self, raft: Raft<TypeConfig>, id: u64) {
        if !self.is_awaiting() {
            return;
        }
        info!(
            id,
            "started empty with --join: waiting to be added (dtc cluster add --id {id} \
             --addr <this node's address>, or dtc cluster replace if it lost its disk); \
             votes and elections are off until then"
        );
        let mut metrics = raft.metrics();
        let mut warned_at: Option<Instant> = None;
        loop {
            let (learner, voter) = {
                let m = metrics.borrow_and_update();
                let membership = m.membership_config.membership();
                (
                    membership.learner_ids().any(|l| l == id),
                    membership.voter_ids().any(|v| v == id),
                )
            };
            if learner {
                if let Err(e) = self.open() {
                    // Stay gated: better a node that does not vote than
                    // one whose restart would forget it was admitted.
                    warn!("cannot remove {}: {e}", self.marker.display());
                } else {
                    raft.runtime_config().elect(true);
                    info!(id, "added to the cluster as a learner: admitted");
                    return;
                }
            } else if voter && warned_at.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                warned_at = Some(Instant::now());
                warn!(
                    id,
                    "the cluster lists node {id} as a voter, but this node started empty: it \
                     would vote having forgotten its votes. It stays out of elections until the \
                     cluster removes the old node {id} and adds this one: run `dtc cluster \
                     replace --id {id} --addr <this node's address>`"
                );
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Removes the gate file durably, then lets votes through.
    fn open(&self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(dir) = self.marker.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        self.awaiting.store(false, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn config(dir: &std::path::Path, join: bool) -> NodeConfig {
        let peers = BTreeMap::from([(4, "127.0.0.1:7004".to_string())]);
        let mut c = NodeConfig::new(4, "127.0.0.1:7004".parse().unwrap(), dir.into(), peers);
        if join {
            c.join = vec!["127.0.0.1:7001".into()];
        }
        c
    }

    #[test]
    fn only_a_fresh_joining_node_is_gated_and_the_gate_survives_restarts() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            !Admission::prepare(&config(dir.path(), false))
                .unwrap()
                .is_awaiting()
        );
        let gate = Admission::prepare(&config(dir.path(), true)).unwrap();
        assert!(gate.is_awaiting());
        // Raft data written meanwhile: a restart before admission stays gated.
        std::fs::write(dir.path().join(dtc_store::LOG_FILE), b"x").unwrap();
        assert!(
            Admission::prepare(&config(dir.path(), true))
                .unwrap()
                .is_awaiting()
        );
        gate.open().unwrap();
        assert!(!gate.is_awaiting());
        assert!(
            !Admission::prepare(&config(dir.path(), true))
                .unwrap()
                .is_awaiting()
        );
    }

    #[test]
    fn a_member_restarted_with_join_is_not_gated() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(dtc_store::LOG_FILE), b"x").unwrap();
        assert!(
            !Admission::prepare(&config(dir.path(), true))
                .unwrap()
                .is_awaiting()
        );
    }
}
