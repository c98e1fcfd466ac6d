//! The coordinator's Prometheus metrics (served by `--metrics-listen`).
//!
//! Counters and histograms are updated where things happen: the driver
//! (outcomes, phase durations), the participant calls (prepare latency,
//! retries) and takeover. The Raft gauges and the pending count are read at
//! scrape time (see [`CoordinatorMetrics::refresh`]). Every metric exists on
//! every node; the transaction metrics move only on the node that leads.

use dtc_metrics::{Registry, duration_buckets};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `committed` or `aborted`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// `prepare` (start to all votes or the deadline), `decide` (the
    /// decision's Raft write), `commit` (decision applied to every phase-2
    /// participant's acknowledgement; for aborts too).
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ParticipantLabel {
    pub participant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `prepare` or `decision`: a participant call that failed and is sent
    /// again; on `last_takeover_transactions`, `undecided` or `decided`.
    pub kind: &'static str,
}

fn histogram() -> Histogram {
    Histogram::new(duration_buckets())
}

/// Every metric a coordinator exports.
pub struct CoordinatorMetrics {
    pub transactions: Family<OutcomeLabel, Counter>,
    pub transaction_duration: Histogram,
    pub phase_duration: Family<PhaseLabel, Histogram, fn() -> Histogram>,
    pub prepare_duration: Family<ParticipantLabel, Histogram, fn() -> Histogram>,
    pub retries: Family<KindLabel, Counter>,
    pub redials: Family<ParticipantLabel, Counter>,
    pub takeovers: Counter,
    pub last_takeover_seconds: Gauge<f64, AtomicU64>,
    pub last_takeover_term: Gauge,
    pub last_takeover_transactions: Family<KindLabel, Gauge>,
    pub pending: Gauge,
    pub raft_term: Gauge,
    pub is_leader: Gauge,
    pub raft_commit_index: Gauge,
    pub raft_applied_index: Gauge,
    pub raft_last_log_index: Gauge,
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        CoordinatorMetrics {
            transactions: Family::default(),
            transaction_duration: histogram(),
            phase_duration: Family::new_with_constructor(histogram),
            prepare_duration: Family::new_with_constructor(histogram),
            retries: Family::default(),
            redials: Family::default(),
            takeovers: Counter::default(),
            last_takeover_seconds: Gauge::default(),
            last_takeover_term: Gauge::default(),
            last_takeover_transactions: Family::default(),
            pending: Gauge::default(),
            raft_term: Gauge::default(),
            is_leader: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_last_log_index: Gauge::default(),
        }
    }
}

impl CoordinatorMetrics {
    /// Registers every metric under the `dtc_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("dtc");
        r.register(
            "transactions",
            "Transactions this node drove to an outcome, by outcome",
            self.transactions.clone(),
        );
        r.register(
            "transaction_duration_seconds",
            "From the start of a transaction's driver to its outcome (acknowledged, or decided with reply_at_decision)",
            self.transaction_duration.clone(),
        );
        r.register(
            "phase_duration_seconds",
            "Duration of each phase of a transaction",
            self.phase_duration.clone(),
        );
        r.register(
            "prepare_duration_seconds",
            "One Prepare call to a participant, until its vote",
            self.prepare_duration.clone(),
        );
        r.register(
            "retries",
            "Participant calls sent again after a failure, by kind",
            self.retries.clone(),
        );
        r.register(
            "participant_redials",
            "Connections to a participant given up and dialed afresh after a call got no answer within its timeout",
            self.redials.clone(),
        );
        r.register(
            "takeovers",
            "Times this node became leader and resumed the pending transactions",
            self.takeovers.clone(),
        );
        r.register(
            "last_takeover_seconds",
            "How long the last takeover took, from leadership to every pending transaction resumed",
            self.last_takeover_seconds.clone(),
        );
        r.register(
            "last_takeover_term",
            "The Raft term of this node's last takeover (0: none yet)",
            self.last_takeover_term.clone(),
        );
        r.register(
            "last_takeover_transactions",
            "Pending transactions the last takeover resumed: kind=\"undecided\" (no decision yet) or \"decided\" (phase 2 to finish)",
            self.last_takeover_transactions.clone(),
        );
        r.register(
            "pending_transactions",
            "Transactions in the pending index (undecided, or decided and not acknowledged)",
            self.pending.clone(),
        );
        r.register("raft_term", "Current Raft term", self.raft_term.clone());
        r.register(
            "is_leader",
            "1 while this node leads",
            self.is_leader.clone(),
        );
        r.register(
            "raft_commit_index",
            "Last log index known committed",
            self.raft_commit_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "Last log index applied to the state machine",
            self.raft_applied_index.clone(),
        );
        r.register(
            "raft_last_log_index",
            "Last log index in this node's log",
            self.raft_last_log_index.clone(),
        );
    }

    /// A transaction's outcome is decided (and applied).
    pub fn decided(&self, committed: bool) {
        let outcome = if committed { "committed" } else { "aborted" };
        self.transactions
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub fn phase(&self, phase: &'static str, elapsed: std::time::Duration) {
        self.phase_duration
            .get_or_create(&PhaseLabel { phase })
            .observe(elapsed.as_secs_f64());
    }

    pub fn prepared(&self, participant: &str, elapsed: std::time::Duration) {
        self.prepare_duration
            .get_or_create(&ParticipantLabel {
                participant: participant.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn retry(&self, kind: &'static str) {
        self.retries.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn redialed(&self, participant: &str) {
        self.redials
            .get_or_create(&ParticipantLabel {
                participant: participant.to_string(),
            })
            .inc();
    }
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl CoordinatorMetrics {
    /// Sets the gauges read at scrape time.
    pub fn refresh(
        &self,
        raft: &openraft::RaftMetrics<u64, openraft::BasicNode>,
        committed: Option<u64>,
        pending: Option<u64>,
    ) {
        self.raft_term.set(gauge_value(raft.current_term));
        self.is_leader
            .set(i64::from(raft.state == openraft::ServerState::Leader));
        self.raft_applied_index
            .set(gauge_value(raft.last_applied.map_or(0, |l| l.index)));
        self.raft_last_log_index
            .set(gauge_value(raft.last_log_index.unwrap_or(0)));
        if let Some(c) = committed {
            self.raft_commit_index.set(gauge_value(c));
        }
        if let Some(p) = pending {
            self.pending.set(gauge_value(p));
        }
    }
}
