//! The client SDK against fake coordinator nodes in this process: it keeps
//! the txn id across retries, follows leader hints, stops on errors that
//! retrying cannot fix, and reports an unknown outcome with the id.

use dtc_client::{Client, ClientConfig, ClientError, LEADER_HINT_HEADER, TxnOutcome};
use dtc_proto::v1 as pb;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Code, Request, Response, Status};

/// What a fake node answers to each Execute, in order; the last one repeats.
#[derive(Clone)]
enum Reply {
    Commit,
    Abort(&'static str),
    Fail(Code, Option<String>),
}

#[derive(Default)]
struct NodeState {
    replies: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<String>>,
}

#[derive(Clone, Default)]
struct Node(Arc<NodeState>);

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for Node {
    async fn execute(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let req = request.into_inner();
        self.0.seen.lock().unwrap().push(req.txn_id.clone());
        let reply = {
            let mut q = self.0.replies.lock().unwrap();
            if q.len() > 1 {
                q.pop_front().unwrap()
            } else {
                q.front().cloned().unwrap_or(Reply::Commit)
            }
        };
        match reply {
            Reply::Commit => Ok(Response::new(pb::ExecuteResponse {
                txn_id: req.txn_id,
                outcome: pb::Outcome::Committed as i32,
                reason: String::new(),
            })),
            Reply::Abort(why) => Ok(Response::new(pb::ExecuteResponse {
                txn_id: req.txn_id,
                outcome: pb::Outcome::Aborted as i32,
                reason: why.into(),
            })),
            Reply::Fail(code, hint) => {
                let mut s = Status::new(code, "fake failure");
                if let Some(h) = hint {
                    s.metadata_mut()
                        .insert(LEADER_HINT_HEADER, h.parse().unwrap());
                }
                Err(s)
            }
        }
    }
    async fn get_transaction(
        &self,
        _: Request<pb::GetTransactionRequest>,
    ) -> Result<Response<pb::GetTransactionResponse>, Status> {
        Err(Status::not_found("fake: unknown"))
    }
    async fn list_transactions(
        &self,
        _: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn cluster_status(
        &self,
        _: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn register_participant(
        &self,
        _: Request<pb::RegisterParticipantRequest>,
    ) -> Result<Response<pb::RegisterParticipantResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

async fn start_node(replies: Vec<Reply>) -> (Node, String) {
    let node = Node::default();
    *node.0.replies.lock().unwrap() = replies.into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::coordinator_server::CoordinatorServer::new(node.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (node, addr)
}

fn fast() -> ClientConfig {
    ClientConfig {
        min_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        ..ClientConfig::default()
    }
}

/// Loopback addresses nothing listens on (bound, then released).
fn dead_addrs(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .to_string()
        })
        .collect()
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test took over 30 s")
}

#[tokio::test]
async fn retries_reuse_the_txn_id_and_follow_the_leader_hint() {
    bounded(async {
        // B is the leader: it fails once (leadership moving), then commits.
        let (b, b_addr) =
            start_node(vec![Reply::Fail(Code::Unavailable, None), Reply::Commit]).await;
        // A is a follower that only ever points at B.
        let (a, a_addr) = start_node(vec![Reply::Fail(
            Code::Unavailable,
            Some(format!("2={b_addr}")),
        )])
        .await;
        let client = Client::with_config(vec![a_addr], fast()).unwrap();
        let out = client
            .transaction()
            .branch("p", b"x".to_vec())
            .execute()
            .await
            .unwrap();
        assert!(out.is_committed());
        let seen_a = a.0.seen.lock().unwrap().clone();
        let seen_b = b.0.seen.lock().unwrap().clone();
        assert_eq!(
            seen_b.len(),
            2,
            "B: the failed attempt and the successful retry"
        );
        assert!(!seen_a.is_empty());
        assert!(
            seen_a.iter().chain(&seen_b).all(|id| *id == out.txn_id()),
            "every attempt carried the same id: {seen_a:?} {seen_b:?}"
        );
        // The next transaction goes straight to the node that answered.
        let n_a = seen_a.len();
        client
            .transaction()
            .branch("p", b"y".to_vec())
            .execute()
            .await
            .unwrap();
        assert_eq!(a.0.seen.lock().unwrap().len(), n_a);
    })
    .await
}

#[tokio::test]
async fn a_given_txn_id_is_sent_and_an_abort_is_an_outcome_not_an_error() {
    bounded(async {
        let (node, addr) =
            start_node(vec![Reply::Abort("participant p voted abort: no funds")]).await;
        let client = Client::with_config(vec![addr], fast()).unwrap();
        let out = client
            .transaction()
            .branch("p", vec![])
            .id("my-id-1")
            .execute()
            .await
            .unwrap();
        let TxnOutcome::Aborted { txn_id, reason } = out else {
            panic!("committed: {out:?}");
        };
        assert_eq!(txn_id, "my-id-1");
        assert!(reason.contains("no funds"), "{reason}");
        assert_eq!(*node.0.seen.lock().unwrap(), vec!["my-id-1".to_string()]);
    })
    .await
}

#[tokio::test]
async fn invalid_argument_and_failed_precondition_are_not_retried() {
    bounded(async {
        for (code, check) in [
            (
                Code::InvalidArgument,
                (|e: &ClientError| matches!(e, ClientError::InvalidArgument(_)))
                    as fn(&ClientError) -> bool,
            ),
            (Code::FailedPrecondition, |e: &ClientError| {
                matches!(e, ClientError::FailedPrecondition(_))
            }),
        ] {
            let (node, addr) = start_node(vec![Reply::Fail(code, None)]).await;
            let client = Client::with_config(vec![addr], fast()).unwrap();
            let e = client
                .transaction()
                .branch("p", vec![])
                .execute()
                .await
                .unwrap_err();
            assert!(check(&e), "{code:?}: {e:?}");
            assert!(!e.is_outcome_unknown());
            assert_eq!(node.0.seen.lock().unwrap().len(), 1, "{code:?} was retried");
        }
    })
    .await
}

#[tokio::test]
async fn resource_exhausted_is_retried_with_the_same_id_until_accepted() {
    bounded(async {
        let (node, addr) = start_node(vec![
            Reply::Fail(Code::ResourceExhausted, None),
            Reply::Fail(Code::ResourceExhausted, None),
            Reply::Commit,
        ])
        .await;
        let client = Client::with_config(vec![addr], fast()).unwrap();
        let out = client
            .transaction()
            .branch("p", vec![])
            .execute()
            .await
            .unwrap();
        let seen = node.0.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|id| *id == out.txn_id()));
    })
    .await
}

#[tokio::test]
async fn only_overload_until_the_deadline_means_nothing_ran() {
    bounded(async {
        let (_node, addr) = start_node(vec![Reply::Fail(Code::ResourceExhausted, None)]).await;
        let client = Client::with_config(vec![addr], fast()).unwrap();
        let e = client
            .transaction()
            .branch("p", vec![])
            .deadline(Duration::from_millis(200))
            .execute()
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Overloaded(_)), "{e:?}");
    })
    .await
}

#[tokio::test]
async fn no_answer_before_the_deadline_reports_the_txn_id_as_outcome_unknown() {
    bounded(async {
        let dead = dead_addrs(2);
        let client = Client::with_config(dead, fast()).unwrap();
        let e = client
            .transaction()
            .branch("p", vec![])
            .id("lost-1")
            .deadline(Duration::from_millis(300))
            .execute()
            .await
            .unwrap_err();
        assert!(e.is_outcome_unknown(), "{e:?}");
        assert_eq!(e.txn_id(), Some("lost-1"));
    })
    .await
}

#[tokio::test]
async fn a_builder_failed_while_building_sends_nothing() {
    bounded(async {
        let (node, addr) = start_node(vec![Reply::Commit]).await;
        let client = Client::with_config(vec![addr], fast()).unwrap();
        let e = client
            .transaction()
            .branch("a", vec![1])
            .fail(ClientError::InvalidArgument(
                "amount must be positive".into(),
            ))
            .execute()
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::InvalidArgument(_)), "{e:?}");
        // An id outside the one rule for transaction ids is refused here.
        let e = client
            .transaction()
            .branch("a", vec![1])
            .id("no spaces allowed")
            .execute()
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::InvalidArgument(_)), "{e:?}");
        let e = client.get_transaction("no/slashes").await.unwrap_err();
        assert!(matches!(e, ClientError::InvalidArgument(_)), "{e:?}");
        assert!(node.0.seen.lock().unwrap().is_empty());
        let e = client.get_transaction("nope").await.unwrap_err();
        assert!(matches!(e, ClientError::NotFound(_)), "{e:?}");
    })
    .await
}

#[tokio::test]
async fn when_every_coordinator_refuses_the_connection_it_fails_fast_naming_each_address() {
    bounded(async {
        let dead = dead_addrs(2);
        let client = Client::with_config(dead.clone(), ClientConfig::default()).unwrap();
        let started = std::time::Instant::now();
        let e = client
            .transaction()
            .branch("p", vec![])
            .id("never-sent")
            .deadline(Duration::from_secs(25))
            .execute()
            .await
            .unwrap_err();
        let took = started.elapsed();
        let ClientError::Unreachable(tried) = &e else {
            panic!("expected Unreachable, got {e:?}");
        };
        assert!(
            took < Duration::from_secs(5),
            "took {took:?}, not a few seconds"
        );
        for addr in &dead {
            assert!(
                tried.iter().any(|(a, _)| a == addr) && e.to_string().contains(addr.as_str()),
                "{addr} is not named: {e}"
            );
        }
        assert!(!e.is_outcome_unknown(), "nothing was sent: {e:?}");
        // The same for the other calls.
        let e = client.cluster_status().await.unwrap_err();
        assert!(matches!(e, ClientError::Unreachable(_)), "{e:?}");
    })
    .await
}
