//! Routing a client call: serve it here (this node leads and has finished
//! takeover), or forward it to the leader.
//!
//! Requests that need the leader are forwarded with a hop count and the
//! client's remaining deadline; past [`MAX_HOPS`] a node answers UNAVAILABLE
//! with a leader hint instead of bouncing the request around a cluster that
//! is mid-election (corner case 5).
//!
//! Uses [`crate::txn::shared`] (Raft metrics, leadership, config, channels).

use crate::txn::{Leadership, Shared};
use dtc_proto::v1::coordinator_client::CoordinatorClient;
use dtc_proto::wire::{HOPS_HEADER, LEADER_HINT_HEADER};
use openraft::ServerState;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::debug;

/// Most times one request is forwarded between nodes.
pub const MAX_HOPS: u32 = 2;
/// How long a request waits for a leader to emerge before UNAVAILABLE.
const LEADER_WAIT: Duration = Duration::from_secs(3);

pub enum Route {
    /// This node is the leader and has finished takeover; the token is its
    /// term's.
    Local(CancellationToken),
    Forward {
        addr: String,
        hops: u32,
    },
}

/// The remaining deadline of an incoming call, from its `grpc-timeout` header.
pub fn incoming_deadline(meta: &MetadataMap) -> Option<Instant> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    // The gRPC spec allows at most 8 digits; longer values are malformed.
    if num.is_empty() || num.len() > 8 {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(d)
}

fn unavailable_with_hint(msg: String, hint: Option<(u64, &str)>) -> Status {
    let mut status = Status::unavailable(msg);
    if let Some((id, addr)) = hint
        && let Ok(v) = format!("{id}={addr}").parse()
    {
        status.metadata_mut().insert(LEADER_HINT_HEADER, v);
    }
    status
}

/// Routing shared by both client services.
#[derive(Clone)]
pub struct Router {
    pub shared: Arc<Shared>,
}

impl Router {
    pub async fn route(&self, meta: &MetadataMap) -> Result<Route, Status> {
        let hops: u32 = meta
            .get(HOPS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let deadline = incoming_deadline(meta)
            .map(|d| d.min(Instant::now() + LEADER_WAIT))
            .unwrap_or(Instant::now() + LEADER_WAIT);
        let me = self.shared.node_id();
        let mut metrics = self.shared.raft.metrics();
        let mut lead = self.shared.leadership.subscribe();
        loop {
            let (leader, state) = {
                let m = metrics.borrow_and_update();
                (m.current_leader, m.state)
            };
            match leader {
                Some(id) if id == me => {
                    if let Leadership::Leader {
                        ready: true,
                        cancel,
                        ..
                    } = &*lead.borrow_and_update()
                    {
                        return Ok(Route::Local(cancel.clone()));
                    }
                }
                Some(id) if state != ServerState::Leader => {
                    // The leader's address comes from the membership in
                    // Raft (a node added later is in no --peers list).
                    let member = self.shared.member_addr(id).ok_or_else(|| {
                        Status::unavailable(format!(
                            "leader {id} is not in this node's membership yet; retry"
                        ))
                    })?;
                    if hops >= MAX_HOPS {
                        return Err(unavailable_with_hint(
                            format!(
                                "request forwarded {hops} times without reaching the leader; retry"
                            ),
                            Some((id, &member)),
                        ));
                    }
                    return Ok(Route::Forward {
                        addr: self.shared.dial_addr(id).unwrap_or(member),
                        hops: hops + 1,
                    });
                }
                _ => {}
            }
            tokio::select! {
                r = metrics.changed() => if r.is_err() {
                    return Err(Status::unavailable("this node is shutting down"));
                },
                _ = lead.changed() => {},
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Status::unavailable(
                        "no leader is available yet (election in progress); retry with the same txn_id",
                    ));
                }
            }
        }
    }

    /// A forwarded call that failed in transport (the leader died, or the
    /// connection broke) is a leadership problem for the client: answer
    /// UNAVAILABLE so it retries with the same id. Statuses the leader itself
    /// chose pass through unchanged.
    fn forward_failed(&self, addr: &str, status: Status) -> Status {
        match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::Internal
                if status.metadata().get(LEADER_HINT_HEADER).is_none() =>
            {
                // The hint names the member address (what clients dial).
                let hint = self.shared.peer_dialed_at(addr);
                let hint = hint.as_ref().map(|(id, a)| (*id, a.as_str()));
                unavailable_with_hint(
                    format!(
                        "forwarding to the leader at {addr} failed ({}: {}); retry with the same txn_id",
                        status.code(),
                        status.message()
                    ),
                    hint,
                )
            }
            _ => status,
        }
    }

    /// Forwards `msg` to the leader at `addr` through `call` (which makes
    /// the client for the channel and calls the method), as hop `hops`.
    pub async fn forward<T, R, Fut>(
        &self,
        addr: &str,
        meta: &MetadataMap,
        hops: u32,
        msg: T,
        call: impl FnOnce(Channel, Request<T>) -> Fut,
    ) -> Result<Response<R>, Status>
    where
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        // Bounded: each forwarded call holds its request (payloads
        // included) until the leader answers, and a slow leader must not
        // make a follower queue them without end.
        let _permit = self
            .shared
            .forwarded
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "{} calls are being forwarded from this node to the leader at {addr}, the \
                 configured maximum (--max-forwarded); retry later",
                    self.shared.config.max_forwarded
                ))
            })?;
        let channel = self
            .shared
            .channels
            .get(addr)
            .map_err(|e| Status::internal(e.to_string()))?;
        call(channel, forwarded(msg, meta, hops))
            .await
            .map_err(|e| self.forward_failed(addr, e))
    }

    /// Serves a call that needs the leader: `local(msg, term)` here when
    /// this node leads and has finished takeover (`term` is the leadership
    /// term's token), else `msg` forwarded to the leader through `call`
    /// (see [`forward`](Self::forward)). Every leader-only method of the
    /// API is this one shape.
    pub async fn serve<T, R, L, LFut, F, FFut>(
        &self,
        meta: &MetadataMap,
        msg: T,
        local: L,
        call: F,
    ) -> Result<Response<R>, Status>
    where
        L: FnOnce(T, CancellationToken) -> LFut,
        LFut: Future<Output = Result<R, Status>>,
        F: FnOnce(Channel, Request<T>) -> FFut,
        FFut: Future<Output = Result<Response<R>, Status>>,
    {
        match self.route(meta).await? {
            Route::Local(term) => local(msg, term).await.map(Response::new),
            Route::Forward { addr, hops } => self.forward(&addr, meta, hops, msg, call).await,
        }
    }
}

/// A `Coordinator` client without size limits, for forwarding (the leader
/// applies the limits).
pub fn coordinator_client(channel: Channel) -> CoordinatorClient<Channel> {
    CoordinatorClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// Wraps `msg` for the next hop: hop count + the client's remaining time.
fn forwarded<T>(msg: T, meta: &MetadataMap, hops: u32) -> Request<T> {
    let mut req = Request::new(msg);
    if let Ok(v) = hops.to_string().parse() {
        req.metadata_mut().insert(HOPS_HEADER, v);
    }
    if let Some(deadline) = incoming_deadline(meta) {
        req.set_timeout(deadline.saturating_duration_since(Instant::now()));
    }
    debug!(hops, "forwarding to the leader");
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_parses_every_unit() {
        for (v, ms) in [
            ("5S", 5000u64),
            ("250m", 250),
            ("1M", 60_000),
            ("3000000u", 3000),
        ] {
            let mut meta = MetadataMap::new();
            meta.insert("grpc-timeout", v.parse().unwrap());
            let d = incoming_deadline(&meta).unwrap();
            let left = d.saturating_duration_since(Instant::now()).as_millis() as u64;
            assert!(left <= ms && left + 50 >= ms, "{v}: {left}");
        }
        for bad in ["12X", "5124095576030431H", "18446744073709551615S", "S"] {
            let mut meta = MetadataMap::new();
            meta.insert("grpc-timeout", bad.parse().unwrap());
            assert!(incoming_deadline(&meta).is_none(), "{bad}");
        }
    }
}
