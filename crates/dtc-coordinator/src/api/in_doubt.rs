//! The `InDoubt` gRPC service: participants ask for the outcome of a
//! transaction they prepared.
//!
//! Uses [`super::router`], [`super::wire`] and [`crate::txn::outcome`].

use super::router::{Route, Router};
use super::wire;
use crate::txn::{Shared, outcome};
use dtc_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct InDoubtService {
    router: Router,
}

impl InDoubtService {
    pub fn new(shared: Arc<Shared>) -> Self {
        InDoubtService {
            router: Router { shared },
        }
    }
}

#[tonic::async_trait]
impl pb::in_doubt_server::InDoubt for InDoubtService {
    async fn query_outcome(
        &self,
        request: Request<pb::QueryOutcomeRequest>,
    ) -> Result<Response<pb::QueryOutcomeResponse>, Status> {
        let (meta, _, msg) = request.into_parts();
        let txn_id = wire::txn_id(msg.txn_id.clone())?;
        match self.router.route(&meta).await? {
            Route::Local(_) => {
                let outcome =
                    outcome::query_outcome(&self.router.shared, txn_id, &msg.participant).await?;
                Ok(Response::new(wire::outcome_response(outcome.as_ref())))
            }
            Route::Forward { addr, hops } => {
                self.router
                    .forward(&addr, &meta, hops, msg, |ch, req| async move {
                        pb::in_doubt_client::InDoubtClient::new(ch)
                            .query_outcome(req)
                            .await
                    })
                    .await
            }
        }
    }
}
