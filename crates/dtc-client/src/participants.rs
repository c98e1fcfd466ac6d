//! Calls to participants' own services, found through the cluster's
//! registry: the generic read path every SDK participant serves
//! (`dtc.v1.ParticipantQuery`), and [`Client::call_participant`], the retry
//! loop that participant-specific clients (the ledger's) build on.

use crate::{Client, ClientError, is_retryable, with_timeout};
use dtc_proto::v1 as pb;
use pb::participant_query_client::ParticipantQueryClient;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Timeout of one call to a participant.
const PARTICIPANT_CALL: Duration = Duration::from_secs(2);

/// A transaction a participant voted prepared for and holds no decision
/// for yet (in doubt at that participant).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InDoubtBranch {
    pub txn_id: String,
    /// Participant wall-clock time (unix ms) of the prepare vote.
    pub prepared_at_ms: u64,
    pub payload_bytes: u32,
}

impl Client {
    /// Calls participant `participant` (at its registered endpoint) with
    /// `call(channel, per_call_timeout)`, retrying what may succeed later
    /// (the participant restarting, overloaded) until the client's call
    /// deadline. INVALID_ARGUMENT becomes [`ClientError::InvalidArgument`];
    /// any other failure [`ClientError::Participant`] naming it.
    pub async fn call_participant<T, F, Fut>(
        &self,
        participant: &str,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        if participant.is_empty() {
            return Err(ClientError::InvalidArgument(
                "the participant must not be empty".into(),
            ));
        }
        let channel = self.participant_channel(participant).await?;
        let config = self.config();
        let until = Instant::now() + config.call_deadline;
        let mut delays = dtc_util::backoff(config.min_backoff, config.max_backoff);
        loop {
            match call(channel.clone(), PARTICIPANT_CALL).await {
                Ok(v) => return Ok(v),
                Err(s) if s.code() == Code::InvalidArgument => {
                    return Err(ClientError::InvalidArgument(s.message().to_string()));
                }
                Err(s) => {
                    let delay = delays.next().unwrap_or(config.max_backoff);
                    if !is_retryable(&s) || Instant::now() + delay >= until {
                        return Err(ClientError::Participant {
                            participant: participant.to_string(),
                            code: s.code(),
                            message: s.message().to_string(),
                        });
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// What participant `participant`'s query hook answers for `key`
    /// (`None`: it has no value for it). For the sample ledger, an account's
    /// committed balance. A participant without a query hook answers
    /// [`ClientError::Participant`] with `Code::Unimplemented`.
    pub async fn query(&self, participant: &str, key: &str) -> Result<Option<String>, ClientError> {
        let r = self
            .call_participant(participant, |channel, t| async move {
                let req = with_timeout(
                    pb::QueryRequest {
                        key: key.to_string(),
                    },
                    t,
                );
                ParticipantQueryClient::new(channel).query(req).await
            })
            .await?
            .into_inner();
        Ok(r.found.then_some(r.value))
    }

    /// The transactions participant `participant` holds prepared without a
    /// decision, oldest first (at most `limit`; 0: 100), and how many there
    /// are in all.
    pub async fn list_in_doubt(
        &self,
        participant: &str,
        limit: u32,
    ) -> Result<(Vec<InDoubtBranch>, u64), ClientError> {
        let r = self
            .call_participant(participant, |channel, t| async move {
                let req = with_timeout(pb::ListInDoubtRequest { limit }, t);
                ParticipantQueryClient::new(channel)
                    .list_in_doubt(req)
                    .await
            })
            .await?
            .into_inner();
        let list = r
            .transactions
            .into_iter()
            .map(|t| InDoubtBranch {
                txn_id: t.txn_id,
                prepared_at_ms: t.prepared_at_ms,
                payload_bytes: t.payload_bytes,
            })
            .collect();
        Ok((list, r.total))
    }
}
