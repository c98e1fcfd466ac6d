//! Membership changes on the leader: add, remove and replace coordinator
//! nodes with openraft's learners and joint consensus (docs/design.md §5b).
//!
//! Every operation first looks at where the cluster is (a change another
//! leader left half-way is finished first), checks what would be unsafe
//! ([`plan_removal`]), then takes the next steps from there, so an
//! operation that stopped (a deadline, a leader change) continues when
//! called again. Each step is recorded in a sentence for the operator.
//!
//! Uses [`crate::txn::shared`] (Raft, config, channels) and
//! [`crate::raft::admission`] (through the probed node's status).

use crate::txn::Shared;
use dtc_proto::v1 as pb;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Why a membership change was not made (or not finished).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MembershipError {
    /// The node id is not a member.
    #[error("{0}")]
    NotFound(String),
    /// The change would be unsafe or makes no sense as asked.
    #[error("{0}")]
    Refused(String),
    /// Leadership moved, or another change is in progress: call again.
    #[error("{0}")]
    Retry(String),
}

/// The membership as the leader holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    pub addrs: BTreeMap<u64, String>,
    /// During joint consensus, the voters it moves to.
    pub joint_target: Option<BTreeSet<u64>>,
}

impl View {
    pub fn of(shared: &Shared) -> View {
        let metrics = shared.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let joint = membership.get_joint_config();
        View {
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            addrs: membership
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect(),
            joint_target: (joint.len() > 1).then(|| joint[joint.len() - 1].clone()),
        }
    }

    /// `1 at A, 2 at B (voters); 4 at D (learner)`.
    pub fn describe(&self) -> String {
        let list = |ids: &BTreeSet<u64>| {
            ids.iter()
                .map(|id| format!("{id} at {}", self.addrs.get(id).map_or("?", |a| a)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut s = format!("voters {}", list(&self.voters));
        if !self.learners.is_empty() {
            s.push_str(&format!("; learners {}", list(&self.learners)));
        }
        s
    }

    pub fn members(&self) -> Vec<pb::Member> {
        self.addrs
            .iter()
            .map(|(id, addr)| pb::Member {
                id: *id,
                addr: addr.clone(),
                voter: self.voters.contains(id),
            })
            .collect()
    }

    fn owner_of(&self, addr: &str) -> Option<u64> {
        self.addrs
            .iter()
            .find(|(_, a)| a.as_str() == addr)
            .map(|(id, _)| *id)
    }
}

/// Checks that voter `id` can be removed: some voter must remain, and a
/// majority of both the old and the new voter sets must answer (joint
/// consensus commits only with both). `answering` are the voters that
/// answer now (the leader included). Returns the voters afterwards.
pub fn plan_removal(
    view: &View,
    id: u64,
    answering: &BTreeSet<u64>,
) -> Result<BTreeSet<u64>, MembershipError> {
    let mut after = view.voters.clone();
    after.remove(&id);
    if after.is_empty() {
        return Err(MembershipError::Refused(format!(
            "node {id} is the last voter: removing it would leave a cluster that can decide nothing"
        )));
    }
    for (which, set) in [("now", &view.voters), ("after the change", &after)] {
        let up: BTreeSet<u64> = set.intersection(answering).copied().collect();
        if up.len() * 2 <= set.len() {
            return Err(MembershipError::Refused(format!(
                "removing node {id} would lose the quorum: of the voters {which} {set:?} only \
                 {up:?} answer, and a change commits only with a majority of the voters before \
                 and after it. Bring the others back first"
            )));
        }
    }
    Ok(after)
}

/// Checks `HOST:PORT` as `--peers` entries are checked.
pub fn check_addr(addr: &str) -> Result<String, MembershipError> {
    crate::config::parse_peers(&format!("0={addr}"))
        .ok()
        .and_then(|m| m.into_values().next())
        .filter(|a| !a.contains(',') && !a.contains('='))
        .ok_or_else(|| {
            MembershipError::Refused(format!(
                "invalid address {addr:?}: expected HOST:PORT, e.g. 10.0.0.4:7000"
            ))
        })
}

/// A change in progress: the sentences so far and the deadline.
struct Change<'a> {
    shared: &'a Shared,
    cancel: CancellationToken,
    steps: Vec<String>,
    until: Instant,
}

/// What a finished (or safely paused) change returns.
pub struct Outcome {
    pub steps: Vec<String>,
    pub done: bool,
    pub view: View,
}

/// What the node at an address says about itself.
struct Probe {
    node_id: u64,
    cluster: String,
    fresh: bool,
    awaiting: bool,
    role: String,
    last_applied: u64,
    term: u64,
    leader: Option<u64>,
}

impl<'a> Change<'a> {
    fn step(&mut self, s: String) {
        info!(step = %s, "membership change");
        self.steps.push(s);
    }

    fn outcome(self, done: bool) -> Outcome {
        Outcome {
            view: View::of(self.shared),
            steps: self.steps,
            done,
        }
    }

    /// Runs a membership change through Raft, with the error made plain.
    async fn change(
        &mut self,
        changes: ChangeMembers<u64, BasicNode>,
        retain: bool,
    ) -> Result<(), MembershipError> {
        // Not raced against the end of this leader's term: a leader that
        // removes itself steps down as its change commits, and the answer
        // still comes (openraft answers on apply, or ForwardToLeader if the
        // entry is overwritten). The caller's deadline bounds the wait.
        self.shared
            .raft
            .change_membership(changes, retain)
            .await
            .map(|_| ())
            .map_err(write_error)
    }

    /// Finishes a joint configuration a previous change left behind.
    async fn finish_joint(&mut self) -> Result<(), MembershipError> {
        let view = View::of(self.shared);
        if let Some(target) = view.joint_target {
            self.change(ChangeMembers::ReplaceAllVoters(target.clone()), false)
                .await?;
            self.step(format!(
                "finished an interrupted change: the voters are now {target:?}"
            ));
        }
        Ok(())
    }

    /// Asks the node at `addr` for its own status (None: no answer).
    async fn probe(&self, addr: &str) -> Option<Probe> {
        let channel = self.shared.channels.get(addr).ok()?;
        let mut req = tonic::Request::new(pb::ClusterStatusRequest {});
        req.set_timeout(Duration::from_secs(1));
        let s = pb::coordinator_client::CoordinatorClient::new(channel)
            .cluster_status(req)
            .await
            .ok()?
            .into_inner();
        Some(Probe {
            node_id: s.node_id,
            cluster: s.cluster,
            fresh: s.members.is_empty() || s.awaiting_admission,
            awaiting: s.awaiting_admission,
            role: s.role,
            last_applied: s.last_applied,
            term: s.term,
            leader: s.leader_id,
        })
    }

    /// The voters that answer and follow this leader in its term (the
    /// leader itself included).
    async fn answering_voters(&self, view: &View) -> BTreeSet<u64> {
        let me = self.shared.node_id();
        let term = self.shared.raft.metrics().borrow().current_term;
        let probes = view.voters.iter().filter(|id| **id != me).map(|id| async {
            let addr = self.shared.dial_addr(*id)?;
            let p = self.probe(&addr).await?;
            (p.node_id == *id && p.term == term && p.leader == Some(me)).then_some(*id)
        });
        futures::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .chain([me])
            .collect()
    }

    /// Checks that the node at `addr` is node `id` of this cluster.
    async fn probe_new_node(&self, id: u64, addr: &str) -> Result<Probe, MembershipError> {
        let dial = self
            .shared
            .config
            .peer_addr_overrides
            .get(&id)
            .map_or(addr, String::as_str);
        let p = self.probe(dial).await.ok_or_else(|| {
            MembershipError::Refused(format!(
                "nothing answers at {addr}: start node {id} there first (dtc coordinator --id {id} \
                 --join <members> ... with an empty data directory), then run this again"
            ))
        })?;
        if p.cluster != self.shared.config.cluster {
            return Err(MembershipError::Refused(format!(
                "the node at {addr} belongs to cluster {:?}, not {:?}",
                p.cluster, self.shared.config.cluster
            )));
        }
        if p.node_id != id {
            return Err(MembershipError::Refused(format!(
                "the node at {addr} is node {}, not node {id}",
                p.node_id
            )));
        }
        Ok(p)
    }

    /// Adds `id` at `addr` as a learner (if it is not one yet), waits until
    /// it has caught up and is admitted, then promotes it to voter.
    async fn add_and_promote(&mut self, id: u64, addr: &str) -> Result<bool, MembershipError> {
        let view = View::of(self.shared);
        if !view.learners.contains(&id) {
            self.shared
                .raft
                .add_learner(id, BasicNode::new(addr), false)
                .await
                .map_err(write_error)?;
            self.step(format!("added node {id} at {addr} as a learner"));
        }
        if !self.wait_caught_up(id, addr).await? {
            return Ok(false);
        }
        let view = View::of(self.shared);
        let mut after = view.voters.clone();
        after.insert(id);
        let answering = self.answering_voters(&view).await;
        let up = after.iter().filter(|v| answering.contains(v) || **v == id);
        if up.count() * 2 <= after.len() {
            return Err(MembershipError::Refused(format!(
                "promoting node {id} needs a majority of {after:?} to answer; only \
                 {answering:?} and node {id} do. Node {id} stays a learner; bring the others \
                 back and run this again"
            )));
        }
        let before = view.voters.clone();
        self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
            .await?;
        self.step(format!(
            "promoted node {id} to voter by joint consensus: voters {before:?} -> {after:?}"
        ));
        Ok(true)
    }

    /// Waits until learner `id` has every entry the leader had when the
    /// wait began and has opened its admission gate. Ok(false) when the
    /// deadline passes first (it stays a learner).
    async fn wait_caught_up(&mut self, id: u64, addr: &str) -> Result<bool, MembershipError> {
        let started = Instant::now();
        let (target, purged) = {
            let m = self.shared.raft.metrics().borrow().clone();
            (
                m.last_log_index.unwrap_or(0),
                m.purged.map(|p| p.index).unwrap_or(0),
            )
        };
        let dial = self
            .shared
            .dial_addr(id)
            .unwrap_or_else(|| addr.to_string());
        let mut last_report = Instant::now();
        loop {
            let matched = {
                let m = self.shared.raft.metrics().borrow().clone();
                if m.current_leader != Some(self.shared.node_id()) {
                    return Err(lost_leadership());
                }
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map(|l| l.index)
            };
            let probe = self.probe(&dial).await;
            let admitted = probe.as_ref().is_some_and(|p| !p.awaiting);
            if matched.is_some_and(|m| m >= target) && admitted {
                let how = if purged > 0 {
                    format!("by snapshot (the leader's log starts after index {purged})")
                } else {
                    "from the log".to_string()
                };
                self.step(format!(
                    "node {id} caught up {how}: it holds index {} of {target} after {:.1} s",
                    matched.unwrap_or(0),
                    started.elapsed().as_secs_f64()
                ));
                return Ok(true);
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                last_report = Instant::now();
                info!(
                    id,
                    matched = ?matched,
                    target,
                    applied = probe.as_ref().map(|p| p.last_applied),
                    "membership change: waiting for the learner to catch up"
                );
            }
            if Instant::now() >= self.until {
                let state = match &probe {
                    None => "does not answer".to_string(),
                    Some(p) if p.awaiting => format!(
                        "is {} and has not seen itself added yet (applied index {})",
                        p.role, p.last_applied
                    ),
                    Some(p) => format!("is a learner at applied index {}", p.last_applied),
                };
                self.step(format!(
                    "node {id} has not caught up after {:.1} s: it holds index {} of {target} and \
                     {state}. It stays a learner (it does not count for quorum); run the same \
                     command again to keep waiting and promote it",
                    started.elapsed().as_secs_f64(),
                    matched.map_or("none".into(), |m| m.to_string()),
                ));
                return Ok(false);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = self.cancel.cancelled() => return Err(lost_leadership()),
            }
        }
    }

    /// Removes voter `id` (and any learner entry) after the quorum check.
    async fn remove_voter(&mut self, id: u64) -> Result<(), MembershipError> {
        let view = View::of(self.shared);
        let answering = self.answering_voters(&view).await;
        let after = plan_removal(&view, id, &answering)?;
        self.change(ChangeMembers::ReplaceAllVoters(after.clone()), false)
            .await?;
        self.step(format!(
            "removed node {id} (at {}) from the voters by joint consensus: voters {:?} -> {after:?}",
            view.addrs.get(&id).map_or("?", |a| a),
            view.voters
        ));
        Ok(())
    }

    async fn remove_learner(&mut self, id: u64) -> Result<(), MembershipError> {
        let addr = View::of(self.shared).addrs.get(&id).cloned();
        self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await?;
        self.step(format!(
            "removed learner {id} (at {})",
            addr.as_deref().unwrap_or("?")
        ));
        Ok(())
    }
}

fn lost_leadership() -> MembershipError {
    MembershipError::Retry(
        "this node stopped leading during the change; call again: it continues from where the \
         cluster is"
            .into(),
    )
}

fn write_error(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> MembershipError {
    match e {
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(p),
        )) => MembershipError::Retry(format!(
            "another membership change is in progress (log {:?}, committed up to {:?}); retry \
             in a moment",
            p.membership_log_id, p.committed
        )),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            MembershipError::Refused(e.to_string())
        }
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => lost_leadership(),
        RaftError::Fatal(e) => MembershipError::Retry(format!("raft stopped on this node: {e}")),
    }
}

fn begin(shared: &Shared, cancel: CancellationToken, wait: Duration) -> Change<'_> {
    Change {
        shared,
        cancel,
        steps: Vec::new(),
        until: Instant::now() + wait,
    }
}

/// `dtc cluster add`: a new node `id`, started empty with `--join`.
pub async fn add(
    shared: &Shared,
    id: u64,
    addr: &str,
    wait: Duration,
    cancel: CancellationToken,
) -> Result<Outcome, MembershipError> {
    let mut c = begin(shared, cancel, wait);
    c.finish_joint().await?;
    let view = View::of(shared);
    if let Some(owner) = view.owner_of(addr).filter(|o| *o != id) {
        return Err(MembershipError::Refused(format!(
            "{addr} is node {owner}'s address; every node needs its own"
        )));
    }
    match view.addrs.get(&id) {
        Some(at) if at != addr => {
            let role = if view.voters.contains(&id) {
                "voter"
            } else {
                "learner"
            };
            return Err(MembershipError::Refused(format!(
                "node {id} is already a {role} at {at}. If it lost its disk and now runs empty \
                 at {addr}, use `dtc cluster replace --id {id} --addr {addr}`; to move a healthy \
                 node, remove it and add it back under a new id"
            )));
        }
        Some(_) if view.voters.contains(&id) => {
            c.step(format!(
                "node {id} is already a voter at {addr}: nothing to do"
            ));
            return Ok(c.outcome(true));
        }
        Some(_) => {
            c.step(format!(
                "node {id} is already a learner at {addr}: continuing"
            ));
        }
        None => {
            let p = c.probe_new_node(id, addr).await?;
            if !p.fresh {
                return Err(MembershipError::Refused(format!(
                    "the node at {addr} already holds a cluster's data (it is a {} in term {}); \
                     a node is added empty: start it with --join and an empty data directory",
                    p.role, p.term
                )));
            }
        }
    }
    let done = c.add_and_promote(id, addr).await?;
    Ok(c.outcome(done))
}

/// `dtc cluster remove`: voter or learner `id` leaves the cluster.
pub async fn remove(
    shared: &Shared,
    id: u64,
    cancel: CancellationToken,
) -> Result<Outcome, MembershipError> {
    let mut c = begin(shared, cancel, Duration::ZERO);
    c.finish_joint().await?;
    let view = View::of(shared);
    if view.voters.contains(&id) {
        c.remove_voter(id).await?;
    } else if view.learners.contains(&id) {
        c.remove_learner(id).await?;
    } else {
        return Err(MembershipError::NotFound(format!(
            "node {id} is not a member ({})",
            view.describe()
        )));
    }
    c.step(format!(
        "node {id} is out: the members refuse its Raft messages; stop its process and \
         remove its data directory"
    ));
    Ok(c.outcome(true))
}

/// `dtc cluster replace`: node `id` lost its disk and runs empty (with
/// `--join`) at `addr`. Removes the old voter first, so that the empty node
/// never counts under the membership its lost disk voted in, then adds it
/// as a learner, waits for it to catch up and promotes it.
pub async fn replace(
    shared: &Shared,
    id: u64,
    addr: &str,
    wait: Duration,
    cancel: CancellationToken,
) -> Result<Outcome, MembershipError> {
    let mut c = begin(shared, cancel, wait);
    c.finish_joint().await?;
    let view = View::of(shared);
    if let Some(owner) = view.owner_of(addr).filter(|o| *o != id) {
        return Err(MembershipError::Refused(format!(
            "{addr} is node {owner}'s address; every node needs its own"
        )));
    }
    if !view.addrs.contains_key(&id) {
        return Err(MembershipError::NotFound(format!(
            "node {id} is not a member ({}); to add a new node use `dtc cluster add`",
            view.describe()
        )));
    }
    if id == shared.node_id() {
        return Err(MembershipError::Refused(format!(
            "node {id} is the leader: it runs with its data, nothing to replace"
        )));
    }
    let learner_here =
        view.learners.contains(&id) && view.addrs.get(&id).map(String::as_str) == Some(addr);
    if learner_here {
        c.step(format!(
            "node {id} is already a learner at {addr}: continuing"
        ));
    } else {
        let p = c.probe_new_node(id, addr).await?;
        if !p.fresh {
            let what = if view.voters.contains(&id)
                && view.addrs.get(&id).map(String::as_str) == Some(addr)
            {
                format!(
                    "node {id} at {addr} runs with its data (a {} in term {}): nothing to replace. \
                     A node that kept its disk rejoins by restarting",
                    p.role, p.term
                )
            } else {
                format!(
                    "the node at {addr} is not empty (a {} in term {}); the replacement of node \
                     {id} must start with an empty data directory and --join",
                    p.role, p.term
                )
            };
            return Err(MembershipError::Refused(what));
        }
        // The old node must really be gone: one that still runs with its
        // data at its old address is not lost, and two processes with one
        // id would confuse everyone.
        let old = view.addrs.get(&id).filter(|a| a.as_str() != addr);
        if let Some(old) = old
            && let Some(o) = c.probe(old).await
            && o.node_id == id
            && !o.fresh
        {
            return Err(MembershipError::Refused(format!(
                "node {id} still runs with its data at {old} (a {} in term {}): it is not lost. \
                 Stop it first, or restart it there instead of replacing it",
                o.role, o.term
            )));
        }
        if view.voters.contains(&id) {
            c.remove_voter(id).await?;
        } else if view.learners.contains(&id) {
            c.remove_learner(id).await?;
        }
    }
    let done = c.add_and_promote(id, addr).await?;
    Ok(c.outcome(done))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(voters: &[u64]) -> View {
        View {
            voters: voters.iter().copied().collect(),
            learners: BTreeSet::new(),
            addrs: voters.iter().map(|v| (*v, format!("h{v}:7000"))).collect(),
            joint_target: None,
        }
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn removal_keeps_a_voter_and_a_majority_before_and_after() {
        // A dead node can go while the others answer.
        assert_eq!(
            plan_removal(&view(&[1, 2, 3]), 3, &set(&[1, 2])),
            Ok(set(&[1, 2]))
        );
        // Removing a live node while another is down leaves 1 of 2.
        let e = plan_removal(&view(&[1, 2, 3]), 2, &set(&[1, 2])).unwrap_err();
        assert!(
            matches!(&e, MembershipError::Refused(m) if m.contains("lose the quorum")),
            "{e}"
        );
        // The last voter stays.
        let e = plan_removal(&view(&[1]), 1, &set(&[1])).unwrap_err();
        assert!(
            matches!(&e, MembershipError::Refused(m) if m.contains("last voter")),
            "{e}"
        );
        // Four voters, two down: the old set has no majority answering.
        let e = plan_removal(&view(&[1, 2, 3, 4]), 4, &set(&[1, 2])).unwrap_err();
        assert!(
            matches!(&e, MembershipError::Refused(m) if m.contains("voters now")),
            "{e}"
        );
        assert_eq!(
            plan_removal(&view(&[1, 2, 3, 4]), 4, &set(&[1, 2, 3])),
            Ok(set(&[1, 2, 3]))
        );
    }

    #[test]
    fn addresses_are_checked_like_peers() {
        assert_eq!(check_addr("coord-4:7000"), Ok("coord-4:7000".into()));
        assert_eq!(check_addr("[::1]:7000"), Ok("[::1]:7000".into()));
        for bad in ["", "coord-4", "coord-4:x", ":7000", "a:1,b:2", "1=a:1"] {
            assert!(check_addr(bad).is_err(), "{bad}");
        }
    }
}
