//! The `dtc.v1.Participant` gRPC service: validates a call, hands it to the
//! writer, and turns the writer's answer into a response or a status.

use crate::Vote;
use crate::writer::{OpError, Writer, txn_span};
use dtc_proto::v1 as pb;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};
use tracing::Instrument;

pub(crate) struct ParticipantService {
    pub(crate) name: String,
    pub(crate) writer: Arc<Writer>,
    pub(crate) metrics: Arc<crate::metrics::ParticipantMetrics>,
}

pub(crate) fn status_of(e: OpError) -> Status {
    match e {
        // The coordinator logs these as needing an operator and keeps retrying.
        OpError::UnknownCommit(_) | OpError::Violation(_) => {
            Status::failed_precondition(e.to_string())
        }
        // Transient: the coordinator resends.
        OpError::Resource(_) | OpError::Storage(_) | OpError::Stopped => {
            Status::unavailable(e.to_string())
        }
        // A prepare refused this way counts as an abort vote at the
        // coordinator; a decision is resent later.
        OpError::Overloaded(_) => Status::resource_exhausted(e.to_string()),
    }
}

impl ParticipantService {
    fn decided(&self, decision: &'static str) {
        self.metrics
            .decisions
            .get_or_create(&crate::metrics::DecisionLabel { decision })
            .inc();
    }

    fn check(&self, participant: &str, txn_id: &str) -> Result<(), Status> {
        // An empty name is accepted: a client that does not know better.
        if !participant.is_empty() && participant != self.name {
            return Err(Status::failed_precondition(format!(
                "this endpoint serves participant {:?}, not {participant:?}: the registry \
                 points {participant:?} at the wrong endpoint",
                self.name
            )));
        }
        // The coordinator's rule: nothing it could send is refused here.
        dtc_core::TxnId::new(txn_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::participant_server::Participant for ParticipantService {
    async fn prepare(
        &self,
        request: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        let msg = request.into_inner();
        let span = txn_span(&msg.txn_id, &self.name);
        async {
            self.check(&msg.participant, &msg.txn_id)?;
            // Relative on the wire (corner case 17); 0 means the time is up.
            let arrived = Instant::now();
            let deadline = arrived + Duration::from_millis(u64::from(msg.remaining_ms));
            let vote = self
                .writer
                .prepare(msg.txn_id.clone(), msg.payload, deadline)
                .await
                .map_err(status_of)?;
            // Crash point: the vote is logged and synced but not sent.
            dtc_util::crash_point!("participant.prepare.before_reply", txn = &msg.txn_id);
            let (vote, reason) = match vote {
                Vote::Prepared => (pb::Vote::Prepared, String::new()),
                Vote::ReadOnly => (pb::Vote::ReadOnly, String::new()),
                // The writer turns Busy into a recorded abort; mapped for completeness.
                Vote::Abort(reason) | Vote::Busy(reason) => (pb::Vote::Abort, reason),
            };
            let label = match vote {
                pb::Vote::Prepared => "prepared",
                pb::Vote::ReadOnly => "read_only",
                _ => "abort",
            };
            self.metrics
                .prepares
                .get_or_create(&crate::metrics::VoteLabel { vote: label })
                .inc();
            self.metrics
                .prepare_duration
                .observe(arrived.elapsed().as_secs_f64());
            Ok(Response::new(pb::PrepareResponse {
                vote: vote as i32,
                reason,
            }))
        }
        .instrument(span)
        .await
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let msg = request.into_inner();
        let span = txn_span(&msg.txn_id, &self.name);
        async {
            self.check(&msg.participant, &msg.txn_id)?;
            // Crash points: the decision arrived and is not handled yet; then,
            // it is applied and synced but not acknowledged.
            dtc_util::crash_point!("participant.decision.on_receipt", txn = &msg.txn_id);
            self.writer
                .commit(msg.txn_id.clone())
                .await
                .map_err(status_of)?;
            self.decided("commit");
            dtc_util::crash_point!("participant.decision.before_ack", txn = &msg.txn_id);
            Ok(Response::new(pb::CommitResponse {}))
        }
        .instrument(span)
        .await
    }

    async fn abort(
        &self,
        request: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        let msg = request.into_inner();
        let span = txn_span(&msg.txn_id, &self.name);
        async {
            self.check(&msg.participant, &msg.txn_id)?;
            dtc_util::crash_point!("participant.decision.on_receipt", txn = &msg.txn_id);
            self.writer
                .abort(msg.txn_id.clone(), msg.reason)
                .await
                .map_err(status_of)?;
            self.decided("abort");
            dtc_util::crash_point!("participant.decision.before_ack", txn = &msg.txn_id);
            Ok(Response::new(pb::AbortResponse {}))
        }
        .instrument(span)
        .await
    }
}
