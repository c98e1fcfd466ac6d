//! The `dtc.v1.ParticipantQuery` gRPC service: reads for people and tools.
//! `Query` hands a key to the resource's query hook in a redb read
//! transaction (concurrent with the writer, never queued behind it);
//! `ListInDoubt` lists what this participant holds in doubt.

use crate::log::ParticipantLog;
use crate::resource::ErasedResource;
use dtc_proto::v1 as pb;
use redb::{Database, ReadableDatabase};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Longest key `Query` accepts.
pub const MAX_QUERY_KEY_BYTES: usize = 1024;

pub(crate) struct QueryService {
    pub(crate) db: Arc<Database>,
    pub(crate) resource: Arc<dyn ErasedResource>,
    pub(crate) log: ParticipantLog,
}

fn task_failed(e: dtc_util::blocking::BlockingError) -> Status {
    Status::internal(format!("query task failed: {e}"))
}

#[tonic::async_trait]
impl pb::participant_query_server::ParticipantQuery for QueryService {
    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let key = request.into_inner().key;
        if key.is_empty() || key.len() > MAX_QUERY_KEY_BYTES {
            return Err(Status::invalid_argument(format!(
                "a query key is 1..={MAX_QUERY_KEY_BYTES} bytes, not {}",
                key.len()
            )));
        }
        let db = self.db.clone();
        let resource = self.resource.clone();
        let answer = dtc_util::blocking::spawn(move || {
            let tx = db
                .begin_read()
                .map_err(|e| crate::ResourceError::storage(e.into()))?;
            resource.query(&tx, &key)
        })
        .await
        .map_err(task_failed)?;
        match answer {
            Ok(value) => Ok(Response::new(pb::QueryResponse {
                found: value.is_some(),
                value: value.unwrap_or_default(),
            })),
            Err(e) if e.is_unsupported() => Err(Status::unimplemented(e.message().to_string())),
            Err(e) if e.is_invalid() => Err(Status::invalid_argument(e.message().to_string())),
            Err(e) => Err(Status::unavailable(format!("query failed: {e}"))),
        }
    }

    async fn list_in_doubt(
        &self,
        request: Request<pb::ListInDoubtRequest>,
    ) -> Result<Response<pb::ListInDoubtResponse>, Status> {
        let limit = match request.into_inner().limit {
            0 => 100,
            n => n.min(10_000) as usize,
        };
        let log = self.log.clone();
        let mut prepared = dtc_util::blocking::spawn(move || log.prepared())
            .await
            .map_err(task_failed)?
            .map_err(|e| Status::unavailable(format!("cannot read the participant log: {e}")))?;
        let total = prepared.len() as u64;
        prepared.sort_by(|a, b| (a.1.updated_at_ms, &a.0).cmp(&(b.1.updated_at_ms, &b.0)));
        Ok(Response::new(pb::ListInDoubtResponse {
            transactions: prepared
                .into_iter()
                .take(limit)
                .map(|(txn_id, rec)| pb::InDoubtBranch {
                    txn_id,
                    prepared_at_ms: rec.updated_at_ms,
                    payload_bytes: u32::try_from(rec.payload.len()).unwrap_or(u32::MAX),
                })
                .collect(),
            total,
        }))
    }
}
