//! The participant's Prometheus metrics (served with
//! [`crate::ParticipantBuilder::metrics_listen`]): the calls it answers,
//! and the transactions it holds prepared without a decision (read from the
//! log's prepared index at scrape time).

use dtc_metrics::{Registry, duration_buckets};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct VoteLabel {
    /// `prepared`, `abort` or `read_only`.
    pub vote: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DecisionLabel {
    /// `commit` or `abort`.
    pub decision: &'static str,
}

pub(crate) struct ParticipantMetrics {
    pub prepares: Family<VoteLabel, Counter>,
    pub prepare_duration: Histogram,
    pub decisions: Family<DecisionLabel, Counter>,
    pub in_doubt: Gauge,
}

impl Default for ParticipantMetrics {
    fn default() -> Self {
        ParticipantMetrics {
            prepares: Family::default(),
            prepare_duration: Histogram::new(duration_buckets()),
            decisions: Family::default(),
            in_doubt: Gauge::default(),
        }
    }
}

impl ParticipantMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("dtc");
        r.register(
            "participant_prepares",
            "Prepare calls answered, by vote (a duplicate is answered, and counted, again)",
            self.prepares.clone(),
        );
        r.register(
            "participant_prepare_duration_seconds",
            "From a Prepare's arrival to its durable vote (the resource's work and the log sync)",
            self.prepare_duration.clone(),
        );
        r.register(
            "participant_decisions",
            "Commit and Abort calls acknowledged",
            self.decisions.clone(),
        );
        r.register(
            "in_doubt_transactions",
            "Transactions prepared here and not yet decided",
            self.in_doubt.clone(),
        );
    }
}
