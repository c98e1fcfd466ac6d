//! The in-doubt resolver: a prepared transaction whose decision never
//! arrived (the coordinator's leader died, the network dropped the Commit,
//! this participant was down) is asked about with `InDoubt.QueryOutcome`,
//! and the answer is applied through the same writer path as a Commit or
//! Abort from the coordinator. A prepared participant never decides alone
//! (corner case 13): `OUTCOME_UNSPECIFIED` or no answer means ask again later.

use crate::coordinators::Coordinators;
use crate::log::ParticipantLog;
use crate::writer::Writer;
use dtc_proto::v1 as pb;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

/// What one pass over the prepared transactions found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InDoubtPass {
    /// Prepared transactions asked about.
    pub asked: usize,
    /// Resolved and applied as committed.
    pub committed: usize,
    /// Resolved and applied as aborted.
    pub aborted: usize,
    /// The coordinators have no decision yet.
    pub undecided: usize,
    /// No coordinator answered, or applying the answer failed.
    pub failed: usize,
}

/// Queries in flight at once during a pass.
const CONCURRENCY: usize = 8;

pub(crate) struct Resolver {
    pub(crate) name: String,
    pub(crate) log: ParticipantLog,
    pub(crate) writer: Arc<Writer>,
    pub(crate) coordinators: Arc<Coordinators>,
}

enum Resolution {
    Committed,
    Aborted,
    Undecided,
    Failed,
}

impl Resolver {
    pub(crate) async fn run(
        self: Arc<Self>,
        every: Duration,
        after: Duration,
        cancel: CancellationToken,
    ) {
        // At start every prepared transaction is in doubt: this participant
        // may have missed its decision while it was down.
        let mut min_age = Duration::ZERO;
        loop {
            let pass = tokio::select! {
                p = self.pass(min_age) => p,
                _ = cancel.cancelled() => return,
            };
            if pass.asked > 0 {
                info!(participant = %self.name, ?pass, "in-doubt pass");
            }
            min_age = after;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// Asks about every prepared transaction at least `min_age` old.
    pub(crate) async fn pass(&self, min_age: Duration) -> InDoubtPass {
        let mut pass = InDoubtPass::default();
        if self.coordinators.is_empty() {
            return pass;
        }
        let log = self.log.clone();
        let prepared = match dtc_util::blocking::spawn(move || log.prepared()).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                warn!(participant = %self.name, error = %e, "cannot read the prepared transactions");
                return pass;
            }
            Err(e) => {
                warn!(participant = %self.name, error = %e, "cannot read the prepared transactions");
                return pass;
            }
        };
        let now = dtc_util::wall_ms();
        let min_age_ms = min_age.as_millis() as u64;
        let ids: Vec<String> = prepared
            .into_iter()
            // A record "from the future" means the wall clock stepped back
            // since it was written: ask anyway rather than hold its locks
            // until the clock catches up.
            .filter(|(_, r)| r.updated_at_ms > now || now - r.updated_at_ms >= min_age_ms)
            .map(|(id, _)| id)
            .collect();
        pass.asked = ids.len();
        let results: Vec<Resolution> = futures::stream::iter(ids)
            .map(|id| self.resolve(id))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for r in results {
            match r {
                Resolution::Committed => pass.committed += 1,
                Resolution::Aborted => pass.aborted += 1,
                Resolution::Undecided => pass.undecided += 1,
                Resolution::Failed => pass.failed += 1,
            }
        }
        pass
    }

    async fn resolve(&self, txn_id: String) -> Resolution {
        let span = crate::writer::txn_span(&txn_id, &self.name);
        self.resolve_in_span(txn_id).instrument(span).await
    }

    async fn resolve_in_span(&self, txn_id: String) -> Resolution {
        let Some(answer) = self.query(&txn_id).await else {
            return Resolution::Failed;
        };
        match pb::Outcome::try_from(answer.outcome) {
            Ok(pb::Outcome::Committed) => match self.writer.commit(txn_id.clone()).await {
                Ok(()) => {
                    info!(participant = %self.name, %txn_id, "in-doubt transaction resolved: committed");
                    Resolution::Committed
                }
                Err(e) => {
                    warn!(participant = %self.name, %txn_id, error = %e, "applying the commit failed");
                    Resolution::Failed
                }
            },
            Ok(pb::Outcome::Aborted) => {
                match self.writer.abort(txn_id.clone(), answer.reason).await {
                    Ok(()) => {
                        info!(participant = %self.name, %txn_id, "in-doubt transaction resolved: aborted");
                        Resolution::Aborted
                    }
                    Err(e) => {
                        warn!(participant = %self.name, %txn_id, error = %e, "applying the abort failed");
                        Resolution::Failed
                    }
                }
            }
            _ => {
                debug!(participant = %self.name, %txn_id, "no decision yet; asking again later");
                Resolution::Undecided
            }
        }
    }

    /// Asks each coordinator node in turn until one answers.
    async fn query(&self, txn_id: &str) -> Option<pb::QueryOutcomeResponse> {
        let mut last = None;
        for _ in 0..self.coordinators.len() {
            let (addr, channel) = self.coordinators.pick();
            let req = self.coordinators.request(pb::QueryOutcomeRequest {
                txn_id: txn_id.to_string(),
                participant: self.name.clone(),
            });
            match pb::in_doubt_client::InDoubtClient::new(channel)
                .query_outcome(req)
                .await
            {
                Ok(r) => return Some(r.into_inner()),
                Err(s) => last = Some((addr.to_string(), s)),
            }
        }
        if let Some((addr, s)) = last {
            warn!(participant = %self.name, txn_id, via = %addr, code = ?s.code(), msg = s.message(),
                "no coordinator answered the outcome query; asking again later");
        }
        None
    }
}
