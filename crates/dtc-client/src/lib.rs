//! # dtc-client: the client SDK
//!
//! Runs distributed transactions on a dtc coordinator cluster and reads
//! their state, surviving leader failover. A transaction is a list of
//! branches, one per participant, each with a payload that participant
//! understands; it commits everywhere or nowhere. This client (the example
//! `buy`, run by CI against a local cluster) takes widgets from an
//! inventory participant and moves their price between two accounts of a
//! ledger, in one transaction:
//!
//! ```no_run
#![doc = include_str!("../examples/buy.rs")]
//! ```
//!
//! `execute` returns the decided [`TxnOutcome`], or an error. The errors
//! that matter ([`ClientError`]):
//!
//! - **Outcome unknown** ([`ClientError::is_outcome_unknown`], e.g.
//!   [`ClientError::Unavailable`] with the id): the deadline passed after a
//!   request reached the cluster. The transaction may have committed. Ask
//!   again with the SAME id ([`TxnBuilder::id`]; the example `restock`
//!   does) or read it with [`Client::get_transaction`]: one id runs at most
//!   once.
//! - [`ClientError::Unreachable`]: every coordinator refused the
//!   connection for [`ClientConfig::unreachable_after`] (2 s). Nothing was
//!   sent, so nothing ran; the message names each address and its error.
//! - [`ClientError::InvalidArgument`] / `FailedPrecondition`: the request
//!   is wrong (a bad id, an unregistered participant); retrying will not help.
//!
//! [`Client::query`] reads a key at any participant that has a query hook
//! (the sample ledger answers an account's balance).
//!
//! How `execute` retries:
//!
//! ```text
//! client.transaction().branch(p, payload)...execute()
//!   txn id chosen here (uuid v4) when not given, so every retry reuses it
//!   loop until an answer or the overall deadline:
//!     Execute(txn id, branches, timeout) ─► a coordinator node (any node
//!       forwards to the leader)
//!     answer                         → TxnOutcome::Committed / Aborted { reason }
//!     UNAVAILABLE + dtc-leader-hint  → next attempt goes to the hinted leader
//!     UNAVAILABLE / DEADLINE_EXCEEDED / broken connection / INTERNAL
//!                                    → back off, next node, SAME txn id
//!     RESOURCE_EXHAUSTED             → back off, same node, same txn id
//!     INVALID_ARGUMENT / FAILED_PRECONDITION / NOT_FOUND → returned at once
//! ```
//!
//! **Why retrying is safe.** `Execute` is idempotent by txn id: a retry joins
//! the running attempt or returns the decided outcome, never runs the
//! transaction twice (within the cluster's outcome-retention window, an hour
//! by default). RESOURCE_EXHAUSTED means the leader refused before starting
//! anything, so it is retried too (backpressure becomes latency, bounded by
//! the deadline); INTERNAL is retried because a connection torn down by a
//! restarting node surfaces as INTERNAL. INVALID_ARGUMENT and
//! FAILED_PRECONDITION (same id with a different request, unregistered
//! participant) will not change by retrying.
//!
//! When the deadline passes without an answer, [`ClientError::Unavailable`]
//! carries the txn id: the outcome is unknown, and retrying later with the
//! same id (or [`Client::get_transaction`]) finds it.
//!
//! Operators reach the leader's `CoordinatorAdmin` service through the
//! same retry loop: [`Client::show_transaction`] (votes, acknowledgements,
//! attempts, last errors), [`Client::list_stuck_transactions`] (pending or
//! in doubt), [`Client::retry_transaction`] and [`Client::resolve_abort`]
//! (docs/operations.md, "Stuck transactions").
//!
//! The client knows nothing of any participant's payloads: the sample
//! ledger's transfers and balance reads are `dtc_ledger::LedgerClient`,
//! built on [`TxnBuilder`] and [`Client::call_participant`] (a call to
//! any registered participant's own gRPC services, found through the
//! cluster's registry, with retries).

mod error;
mod participants;
mod txn;

pub use error::ClientError;
pub use participants::InDoubtBranch;
pub use txn::{TxnBuilder, TxnOutcome, TxnState, TxnStatus};

pub use dtc_proto::tls::{Tls, TlsError, TlsFiles};
use dtc_proto::v1 as pb;
use pb::coordinator_admin_client::CoordinatorAdminClient;
use pb::coordinator_client::CoordinatorClient;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tracing::debug;

pub use dtc_proto::v1 as proto;
/// One transaction as an operator sees it ([`Client::show_transaction`]).
pub use dtc_proto::v1::TransactionDetail;

type AdminClient = CoordinatorAdminClient<Channel>;

/// Metadata key of the leader hint on UNAVAILABLE answers: `ID=ADDR`.
pub use dtc_proto::wire::LEADER_HINT_HEADER;

/// The environment variable [`Client::from_env`] reads (and the `dtc` CLI's
/// `--coordinators` falls back to).
pub const COORDINATORS_VAR: &str = "DTC_COORDINATORS";

/// Tunables of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How long connecting to one node may take before the next is tried.
    pub connect_timeout: Duration,
    /// Extra time, beyond the transaction's prepare timeout, that `execute`
    /// keeps retrying across failovers (default 30 s).
    pub retry_budget: Duration,
    /// Overall deadline of the other calls (reads, registration), retries
    /// included (default 10 s).
    pub call_deadline: Duration,
    /// Prepare timeout assumed when a transaction sets none (the server's
    /// default; used only to size the client's deadlines).
    pub assumed_txn_timeout: Duration,
    /// Back-off between attempts: from `min_backoff`, doubling, at most `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How long every coordinator may refuse connections (or fail to
    /// connect) before a call gives up with [`ClientError::Unreachable`]
    /// instead of retrying until its deadline (default 2 s). A request that
    /// reached no coordinator ran nowhere, so there is no outcome to wait for.
    pub unreachable_after: Duration,
    /// Mutual TLS on every connection (to coordinators and participants):
    /// this client's certificate and the cluster's CA. `None`: plaintext.
    /// [`Client::from_env`] loads it from `DTC_TLS_CERT`, `DTC_TLS_KEY` and
    /// `DTC_TLS_CA`.
    pub tls: Option<Tls>,
    /// Makes every channel: real TCP by default; the deterministic
    /// simulation injects its simulated network here.
    pub dialer: dtc_proto::net::Dialer,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_millis(500),
            retry_budget: Duration::from_secs(30),
            call_deadline: Duration::from_secs(10),
            assumed_txn_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
            unreachable_after: Duration::from_secs(2),
            tls: None,
            dialer: dtc_proto::net::Dialer::tcp(),
        }
    }
}

/// A handle on a coordinator cluster. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addrs", &self.inner.addrs)
            .finish_non_exhaustive()
    }
}

struct Inner {
    addrs: Vec<String>,
    config: ClientConfig,
    /// Channels by address (configured nodes and hinted leaders).
    channels: Mutex<HashMap<String, Channel>>,
    /// Where the next call goes first: the last node that answered, or a
    /// leader named by a hint.
    preferred: Mutex<Option<String>>,
    next: AtomicUsize,
}

/// What an attempt's status means for the retry loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Will not change by retrying.
    Never,
    /// The leader refused before starting anything: retry later.
    Overloaded,
    /// No answer, or no leader: the request may or may not have run.
    Ambiguous,
}

/// Whether a call that failed with `status` may succeed if sent again (the
/// node was unreachable, overloaded, or answered before it knew): what the
/// SDK itself retries.
pub fn is_retryable(status: &Status) -> bool {
    classify(status) != Retry::Never
}

/// Whether a failed call never reached a node: the connection itself could
/// not be made (refused, timed out, no route, a name that does not
/// resolve), or TLS refused it ([`tls_refusal`]). Such a request was not
/// sent, so it ran nowhere.
fn not_connected(status: &Status) -> Option<String> {
    if let Some(why) = tls_refusal(status) {
        return Some(why);
    }
    if status.code() != Code::Unavailable {
        return None;
    }
    let mut source = std::error::Error::source(status);
    let mut connect = false;
    let mut last = None;
    while let Some(e) = source {
        let text = e.to_string();
        connect |= text.contains("connect error") || text.contains("dns error");
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            last = Some(io.to_string());
        }
        source = e.source();
    }
    connect.then(|| last.unwrap_or_else(|| status.message().to_string()))
}

/// Whether the connection failed in the TLS handshake, or because one side
/// speaks TLS and the other does not, with a message that says which and
/// what to change. No request is processed on such a connection: a TLS
/// server reads no application data from a peer whose handshake failed,
/// and a plaintext HTTP/2 request sent to a TLS port (or the reverse) is
/// garbage to the other side.
fn tls_refusal(status: &Status) -> Option<String> {
    tls_problem(status)
}

/// [`tls_refusal`] for any error (a failed `connect`, a status): what is
/// wrong with TLS on this connection, said so that it can be fixed, or
/// `None` if the failure is not about TLS.
pub fn tls_problem(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = Some(error);
    while let Some(e) = source {
        let text = e.to_string();
        if text.starts_with("invalid peer certificate") {
            return Some(format!(
                "TLS: the node's certificate is not trusted ({text}): --tls-ca / DTC_TLS_CA must \
                 be the CA that signed the cluster's certificates, and the certificate must name \
                 the host dialed"
            ));
        }
        if text.starts_with("received fatal alert") {
            return Some(format!(
                "TLS: the node refused this client's certificate ({text}): it must be signed by \
                 the cluster's CA"
            ));
        }
        if text.contains("received corrupt message") {
            return Some(format!(
                "TLS: the node does not speak TLS ({text}): drop the --tls-* flags, or start the \
                 cluster with them"
            ));
        }
        if text.contains("frame with invalid size") {
            return Some(
                "the node does not speak plaintext gRPC: it probably requires TLS (give \
                 --tls-cert, --tls-key and --tls-ca, or DTC_TLS_CERT, DTC_TLS_KEY and DTC_TLS_CA)"
                    .into(),
            );
        }
        source = e.source();
    }
    None
}

pub(crate) fn classify(status: &Status) -> Retry {
    match status.code() {
        Code::ResourceExhausted => Retry::Overloaded,
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Unknown
        | Code::Cancelled
        | Code::Aborted
        | Code::Internal => Retry::Ambiguous,
        _ => Retry::Never,
    }
}

/// The leader address from an UNAVAILABLE answer's `dtc-leader-hint: ID=ADDR`.
pub fn leader_hint(status: &Status) -> Option<String> {
    let v = status.metadata().get(LEADER_HINT_HEADER)?.to_str().ok()?;
    let (_, addr) = v.split_once('=')?;
    let addr = addr.trim();
    (!addr.is_empty()).then(|| addr.to_string())
}

/// A transaction id checked here, before anything is sent.
fn check_txn_id(txn_id: &str) -> Result<(), ClientError> {
    dtc_core::TxnId::new(txn_id)
        .map(drop)
        .map_err(|e| ClientError::InvalidArgument(e.to_string()))
}

/// A request with a per-call deadline (sent as `grpc-timeout`).
pub(crate) fn with_timeout<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(timeout);
    req
}

impl Client {
    /// A client for the cluster whose nodes are `addrs` (`HOST:PORT` or
    /// URLs; any subset of the members will do). Connections are made
    /// lazily, so this succeeds while the cluster is down.
    pub fn connect<I, S>(addrs: I) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Client::with_config(addrs, ClientConfig::default())
    }

    /// A client for the nodes listed in `DTC_COORDINATORS` (comma
    /// separated, as the `dtc` CLI reads it), with default tunables and,
    /// when `DTC_TLS_CERT`, `DTC_TLS_KEY` and `DTC_TLS_CA` are set, mutual
    /// TLS with those files.
    pub fn from_env() -> Result<Client, ClientError> {
        let tls = Tls::from_env().map_err(|e| ClientError::Config(e.to_string()))?;
        Client::from_list(std::env::var(COORDINATORS_VAR).ok().as_deref(), tls)
    }

    fn from_list(list: Option<&str>, tls: Option<Tls>) -> Result<Client, ClientError> {
        match list.map(str::trim).filter(|l| !l.is_empty()) {
            Some(list) => Client::with_config(
                list.split(','),
                ClientConfig {
                    tls,
                    ..ClientConfig::default()
                },
            ),
            None => Err(ClientError::Config(format!(
                "{COORDINATORS_VAR} is not set: give the coordinators as HOST:PORT,HOST:PORT,..."
            ))),
        }
    }

    /// [`connect`](Self::connect) with explicit tunables.
    pub fn with_config<I, S>(addrs: I, config: ClientConfig) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let addrs: Vec<String> = addrs
            .into_iter()
            .map(|a| a.into().trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if addrs.is_empty() {
            return Err(ClientError::Config("no coordinator address given".into()));
        }
        for a in &addrs {
            let uri: tonic::codegen::http::Uri = dtc_util::endpoint_uri(a)
                .parse()
                .map_err(|e| ClientError::Config(format!("coordinator address {a:?}: {e}")))?;
            if uri.host().is_none() || uri.port_u16().is_none() {
                return Err(ClientError::Config(format!(
                    "coordinator address {a:?} is not HOST:PORT"
                )));
            }
        }
        Ok(Client {
            inner: Arc::new(Inner {
                addrs,
                config,
                channels: Mutex::new(HashMap::new()),
                preferred: Mutex::new(None),
                next: AtomicUsize::new(0),
            }),
        })
    }

    /// The configured coordinator addresses.
    pub fn addrs(&self) -> &[String] {
        &self.inner.addrs
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// A lazily connecting channel to `addr` (cached by address).
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut map = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let endpoint = dtc_proto::tls::endpoint(addr, self.inner.config.tls.as_ref())
            .map_err(|e| ClientError::Config(format!("address {addr:?}: {e}")))?
            .connect_timeout(self.inner.config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let ch = self.inner.config.dialer.connect_lazy(endpoint);
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    fn first_target(&self) -> String {
        let preferred = self
            .inner
            .preferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        preferred.unwrap_or_else(|| self.rotate())
    }

    fn rotate(&self) -> String {
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed);
        self.inner.addrs[i % self.inner.addrs.len()].clone()
    }

    fn prefer(&self, addr: Option<String>) {
        *self
            .inner
            .preferred
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = addr;
    }

    /// Calls a coordinator until it answers, a non-retryable status comes
    /// back, or `until` passes. `call` gets a client and the per-call timeout.
    /// Returns the answer or the last status, and whether any attempt ended
    /// ambiguously (the request may have run); or [`ClientError::Unreachable`]
    /// when no configured node accepted a connection for `unreachable_after`.
    pub(crate) async fn retrying<T, F, Fut>(
        &self,
        until: Instant,
        per_call: Duration,
        call: F,
    ) -> Result<(Result<T, Status>, bool), ClientError>
    where
        F: FnMut(CoordinatorClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let coordinator = |channel| {
            CoordinatorClient::new(channel)
                .max_decoding_message_size(dtc_proto::wire::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(usize::MAX)
        };
        self.retrying_via(until, per_call, coordinator, call).await
    }

    /// [`retrying`](Self::retrying) for any service every node serves:
    /// `make` turns a node's channel into that service's client.
    async fn retrying_via<C, T, M, F, Fut>(
        &self,
        until: Instant,
        per_call: Duration,
        make: M,
        mut call: F,
    ) -> Result<(Result<T, Status>, bool), ClientError>
    where
        M: Fn(Channel) -> C,
        F: FnMut(C, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let config = &self.inner.config;
        let mut backoff = dtc_util::backoff(config.min_backoff, config.max_backoff);
        let mut target = self.first_target();
        let mut ambiguous = false;
        let mut attempt = 0u32;
        let started = Instant::now();
        // Why each address could not be connected to, until some node answers.
        let mut unreachable: std::collections::BTreeMap<String, String> = Default::default();
        // Addresses an attempt may have reached (it failed ambiguously), and
        // those that refused this client in the TLS handshake. A node that
        // refuses our handshake refuses every connection of ours the same
        // way (its certificate and CA do not change between attempts), so
        // the attempts to it that ended with a bare "connection closed" (the
        // same refusal, seen before the alert arrived) sent nothing either.
        type Addrs = std::collections::BTreeSet<String>;
        let mut answered = Addrs::new(); // any status but a refused connection
        let mut maybe_ran = Addrs::new(); // an ambiguous failure: the request may have run
        let mut tls_refused = Addrs::new();
        let any_outside = |set: &Addrs, tls: &Addrs| set.iter().any(|a| !tls.contains(a));
        loop {
            attempt += 1;
            let left = until.saturating_duration_since(Instant::now());
            let channel = match self.channel(&target) {
                Ok(c) => c,
                Err(e) => return Ok((Err(Status::invalid_argument(e.to_string())), ambiguous)),
            };
            let client = make(channel);
            let status = match call(client, per_call.min(left).max(Duration::from_millis(1))).await
            {
                Ok(resp) => {
                    self.prefer(Some(target));
                    return Ok((Ok(resp.into_inner()), ambiguous));
                }
                Err(s) => s,
            };
            let refused = not_connected(&status);
            match &refused {
                Some(why) => {
                    if tls_refusal(&status).is_some() {
                        tls_refused.insert(target.clone());
                    }
                    unreachable.insert(target.clone(), why.clone());
                }
                None => {
                    answered.insert(target.clone());
                    if classify(&status) == Retry::Ambiguous {
                        maybe_ran.insert(target.clone());
                    }
                }
            }
            ambiguous = any_outside(&maybe_ran, &tls_refused);
            if !any_outside(&answered, &tls_refused)
                && started.elapsed() >= config.unreachable_after
                && self.inner.addrs.iter().all(|a| unreachable.contains_key(a))
            {
                return Err(ClientError::Unreachable(unreachable.into_iter().collect()));
            }
            let kind = classify(&status);
            debug!(attempt, %target, code = ?status.code(), msg = status.message(), "coordinator call failed");
            match kind {
                Retry::Never => return Ok((Err(status), ambiguous)),
                Retry::Overloaded => {}
                Retry::Ambiguous => {
                    match leader_hint(&status) {
                        Some(hint) if hint != target => target = hint,
                        _ => {
                            // This node failed us: forget it as preferred and
                            // try the next configured one.
                            self.prefer(None);
                            let mut next = self.rotate();
                            if next == target && self.inner.addrs.len() > 1 {
                                next = self.rotate();
                            }
                            target = next;
                        }
                    }
                }
            }
            let delay = backoff.next().unwrap_or(config.max_backoff);
            if Instant::now() + delay >= until {
                return Ok((Err(status), ambiguous));
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// A new transaction: add branches, then [`TxnBuilder::execute`].
    pub fn transaction(&self) -> TxnBuilder {
        TxnBuilder::new(self.clone())
    }

    fn call_deadline(&self) -> (Instant, Duration) {
        let d = self.inner.config.call_deadline;
        (Instant::now() + d, d.min(Duration::from_secs(5)))
    }

    /// One transaction's state (NOT_FOUND if unknown or past retention).
    pub async fn get_transaction(&self, txn_id: &str) -> Result<TxnStatus, ClientError> {
        check_txn_id(txn_id)?;
        let (until, per_call) = self.call_deadline();
        let req = pb::GetTransactionRequest {
            txn_id: txn_id.to_string(),
        };
        let (r, _) = self
            .retrying(until, per_call, |mut c, t| {
                let req = req.clone();
                async move { c.get_transaction(with_timeout(req, t)).await }
            })
            .await?;
        let resp = r.map_err(|s| ClientError::from_status(s, None))?;
        resp.transaction
            .map(TxnStatus::from)
            .ok_or_else(|| ClientError::Status {
                code: Code::Internal,
                message: "GetTransaction answered without a transaction".into(),
            })
    }

    /// One page of transactions (ordered by id, after `after`).
    pub async fn list_transactions_page(
        &self,
        pending_only: bool,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<TxnStatus>, Option<String>), ClientError> {
        let (until, per_call) = self.call_deadline();
        let req = pb::ListTransactionsRequest {
            pending_only,
            limit,
            after_txn_id: after.unwrap_or_default().to_string(),
        };
        let (r, _) = self
            .retrying(until, per_call, |mut c, t| {
                let req = req.clone();
                async move { c.list_transactions(with_timeout(req, t)).await }
            })
            .await?;
        let resp = r.map_err(|s| ClientError::from_status(s, None))?;
        let next = (!resp.next_after_txn_id.is_empty()).then_some(resp.next_after_txn_id);
        Ok((
            resp.transactions.into_iter().map(TxnStatus::from).collect(),
            next,
        ))
    }

    /// Every transaction the cluster knows (or only the pending ones), all pages.
    pub async fn list_transactions(
        &self,
        pending_only: bool,
    ) -> Result<Vec<TxnStatus>, ClientError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (page, next) = self
                .list_transactions_page(pending_only, after.as_deref(), 1000)
                .await?;
            out.extend(page);
            match next {
                Some(n) => after = Some(n),
                None => return Ok(out),
            }
        }
    }

    /// Calls the leader's `CoordinatorAdmin` service (any node forwards)
    /// until it answers, with the same retries as every other call.
    async fn admin<T, F, Fut>(
        &self,
        until: Instant,
        per_call: Duration,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(AdminClient, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let admin = |channel| {
            AdminClient::new(channel).max_decoding_message_size(dtc_proto::wire::MAX_MESSAGE_BYTES)
        };
        let (r, _) = self.retrying_via(until, per_call, admin, call).await?;
        r.map_err(|s| ClientError::from_status(s, None))
    }

    /// One transaction as the leader sees it: the replicated record, each
    /// participant's vote, acknowledgement, attempts and last error (from
    /// the leader's driver, when one runs it), and its age.
    pub async fn show_transaction(&self, txn_id: &str) -> Result<TransactionDetail, ClientError> {
        check_txn_id(txn_id)?;
        let (until, per_call) = self.call_deadline();
        let req = pb::ShowTransactionRequest {
            txn_id: txn_id.to_string(),
        };
        self.admin(until, per_call, |mut c, t| {
            let req = req.clone();
            async move { c.show_transaction(with_timeout(req, t)).await }
        })
        .await
    }

    /// Every pending transaction (undecided, or decided and not acknowledged
    /// by every participant), or with `in_doubt = Some(min)` only those that
    /// have waited on their participants at least `min` in their current
    /// phase; all pages, ordered by id.
    pub async fn list_stuck_transactions(
        &self,
        in_doubt: Option<Duration>,
    ) -> Result<Vec<TransactionDetail>, ClientError> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let (until, per_call) = self.call_deadline();
            let req = pb::ListStuckTransactionsRequest {
                in_doubt_only: in_doubt.is_some(),
                // At least 1 ms: 0 would mean the server's default.
                min_waiting_ms: in_doubt.map_or(0, |d| (d.as_millis() as u64).max(1)),
                limit: 1000,
                after_txn_id: after.clone(),
            };
            let page = self
                .admin(until, per_call, |mut c, t| {
                    let req = req.clone();
                    async move { c.list_stuck_transactions(with_timeout(req, t)).await }
                })
                .await?;
            out.extend(page.transactions);
            if page.next_after_txn_id.is_empty() {
                return Ok(out);
            }
            after = page.next_after_txn_id;
        }
    }

    /// Sends every call `txn_id` waits on now, skipping the back-off, and
    /// waits at most `wait` (up to 30 s) for the answers. Safe to repeat; a
    /// complete transaction is left alone. The answer says what it did and
    /// whether phase 2 is over.
    pub async fn retry_transaction(
        &self,
        txn_id: &str,
        wait: Duration,
    ) -> Result<pb::RetryTransactionResponse, ClientError> {
        check_txn_id(txn_id)?;
        let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1);
        // Each attempt may wait `wait` on the leader before it answers.
        let per_call = wait + Duration::from_secs(2);
        let until = Instant::now() + self.inner.config.call_deadline.max(per_call);
        let req = pb::RetryTransactionRequest {
            txn_id: txn_id.to_string(),
            wait_ms,
        };
        self.admin(until, per_call, |mut c, t| {
            let req = req.clone();
            async move { c.retry_transaction(with_timeout(req, t)).await }
        })
        .await
    }

    /// Aborts `txn_id` if it has no decision yet, recording `reason` and
    /// `requested_by` (who asks; the node adds the caller's address) in the
    /// abort reason on every node. The participants are then told abort.
    /// [`ClientError::FailedPrecondition`] names the decision when there is
    /// one. Safe to repeat: the same resolution again changes nothing.
    pub async fn resolve_abort(
        &self,
        txn_id: &str,
        reason: &str,
        requested_by: &str,
    ) -> Result<pb::ResolveTransactionResponse, ClientError> {
        check_txn_id(txn_id)?;
        if reason.trim().is_empty() {
            return Err(ClientError::InvalidArgument(
                "the reason is empty: say why the transaction is aborted (it is recorded)".into(),
            ));
        }
        let (until, per_call) = self.call_deadline();
        let req = pb::ResolveTransactionRequest {
            txn_id: txn_id.to_string(),
            abort: true,
            reason: reason.to_string(),
            requested_by: requested_by.to_string(),
            origin: String::new(),
        };
        self.admin(until, per_call, |mut c, t| {
            let req = req.clone();
            async move { c.resolve_transaction(with_timeout(req, t)).await }
        })
        .await
    }

    /// Adds coordinator `id` at `addr` (started empty with `--join`): as a
    /// learner, waits at most `catch_up` for it to catch up, then promotes
    /// it to voter. The answer lists the steps taken; `done` is false when
    /// the node is still a learner catching up (call again to continue).
    pub async fn add_member(
        &self,
        id: u64,
        addr: &str,
        catch_up: Duration,
    ) -> Result<pb::MembershipChangeResponse, ClientError> {
        let req = pb::AddMemberRequest {
            id,
            addr: addr.to_string(),
            catch_up_wait_ms: wait_ms(catch_up),
        };
        self.membership_call(catch_up, |mut c, t| {
            let req = req.clone();
            async move { c.add_member(with_timeout(req, t)).await }
        })
        .await
    }

    /// Removes coordinator `id` from the cluster (refused when it would
    /// leave no voter or lose the quorum).
    pub async fn remove_member(
        &self,
        id: u64,
    ) -> Result<pb::MembershipChangeResponse, ClientError> {
        let req = pb::RemoveMemberRequest { id };
        self.membership_call(Duration::ZERO, |mut c, t| async move {
            c.remove_member(with_timeout(req, t)).await
        })
        .await
    }

    /// Replaces coordinator `id`, which lost its disk and now runs empty
    /// with `--join` at `addr`: removes the old voter, adds the empty node
    /// as a learner, waits at most `catch_up`, promotes it.
    pub async fn replace_member(
        &self,
        id: u64,
        addr: &str,
        catch_up: Duration,
    ) -> Result<pb::MembershipChangeResponse, ClientError> {
        let req = pb::ReplaceMemberRequest {
            id,
            addr: addr.to_string(),
            catch_up_wait_ms: wait_ms(catch_up),
        };
        self.membership_call(catch_up, |mut c, t| {
            let req = req.clone();
            async move { c.replace_member(with_timeout(req, t)).await }
        })
        .await
    }

    /// One membership call: each attempt may wait `catch_up` on the leader
    /// plus the joint-consensus rounds before it answers.
    async fn membership_call<T, F, Fut>(
        &self,
        catch_up: Duration,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(AdminClient, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let per_call = catch_up + Duration::from_secs(15);
        let until = Instant::now() + self.inner.config.call_deadline.max(per_call);
        self.admin(until, per_call, call).await
    }

    /// Registers (or moves) participant `name` at `endpoint` (`http://host:port`).
    pub async fn register(&self, name: &str, endpoint: &str) -> Result<(), ClientError> {
        let (until, per_call) = self.call_deadline();
        let req = pb::RegisterParticipantRequest {
            name: name.to_string(),
            endpoint: endpoint.to_string(),
        };
        let (r, _) = self
            .retrying(until, per_call, |mut c, t| {
                let req = req.clone();
                async move { c.register_participant(with_timeout(req, t)).await }
            })
            .await?;
        r.map(|_| ()).map_err(|s| ClientError::from_status(s, None))
    }

    /// The first answering node's own view of the cluster.
    pub async fn cluster_status(&self) -> Result<pb::ClusterStatusResponse, ClientError> {
        let (until, per_call) = self.call_deadline();
        let (r, _) = self
            .retrying(until, per_call, |mut c, t| async move {
                c.cluster_status(with_timeout(pb::ClusterStatusRequest {}, t))
                    .await
            })
            .await?;
        r.map_err(|s| ClientError::from_status(s, None))
    }

    /// A channel to participant `name` at its registered endpoint, for
    /// calling the participant's own services (a ledger's `Ledger.Balance`,
    /// say). Connects lazily; cached by endpoint.
    pub async fn participant_channel(&self, name: &str) -> Result<Channel, ClientError> {
        let endpoint = self.participant_endpoint(name).await?;
        self.channel(&endpoint)
    }

    /// The registered endpoint of participant `name`. Asks the nodes in turn
    /// (a follower that has not applied a fresh registration yet is skipped).
    pub async fn participant_endpoint(&self, name: &str) -> Result<String, ClientError> {
        let per_call = self.inner.config.call_deadline.min(Duration::from_secs(2));
        let mut last_err = None;
        let mut answered = false;
        for addr in self.inner.addrs.clone() {
            let mut c = CoordinatorClient::new(self.channel(&addr)?);
            match c
                .cluster_status(with_timeout(pb::ClusterStatusRequest {}, per_call))
                .await
            {
                Ok(resp) => {
                    answered = true;
                    if let Some(p) = resp
                        .into_inner()
                        .participants
                        .into_iter()
                        .find(|p| p.name == name)
                    {
                        return Ok(p.endpoint);
                    }
                }
                Err(s) => last_err = Some(s),
            }
        }
        match (answered, last_err) {
            (false, Some(s)) => Err(ClientError::from_status(s, None)),
            _ => Err(ClientError::UnknownParticipant(name.to_string())),
        }
    }
}

/// A wait as the membership calls carry it: at least 1 ms (0 would mean
/// the server's default).
fn wait_ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_hint_is_read_from_metadata() {
        let mut s = Status::unavailable("no");
        s.metadata_mut()
            .insert(LEADER_HINT_HEADER, "2=127.0.0.1:7002".parse().unwrap());
        assert_eq!(leader_hint(&s).as_deref(), Some("127.0.0.1:7002"));
        assert_eq!(leader_hint(&Status::unavailable("no")), None);
    }

    #[test]
    fn statuses_are_classified_for_retry() {
        assert_eq!(classify(&Status::invalid_argument("x")), Retry::Never);
        assert_eq!(classify(&Status::failed_precondition("x")), Retry::Never);
        assert_eq!(classify(&Status::not_found("x")), Retry::Never);
        assert_eq!(
            classify(&Status::resource_exhausted("x")),
            Retry::Overloaded
        );
        assert_eq!(classify(&Status::unavailable("x")), Retry::Ambiguous);
        assert_eq!(classify(&Status::deadline_exceeded("x")), Retry::Ambiguous);
        assert_eq!(classify(&Status::internal("x")), Retry::Ambiguous);
    }

    #[test]
    fn bad_addresses_are_refused_at_connect() {
        assert!(matches!(
            Client::connect(Vec::<String>::new()),
            Err(ClientError::Config(_))
        ));
        assert!(matches!(
            Client::connect(["no port"]),
            Err(ClientError::Config(_))
        ));
        assert!(Client::connect(["127.0.0.1:1"]).is_ok());
    }

    #[test]
    fn the_coordinator_list_comes_from_a_comma_separated_variable() {
        let c = Client::from_list(Some(" 127.0.0.1:7001, 127.0.0.1:7002 "), None).unwrap();
        assert_eq!(c.addrs(), ["127.0.0.1:7001", "127.0.0.1:7002"]);
        for missing in [None, Some(""), Some("  ")] {
            let e = Client::from_list(missing, None).unwrap_err();
            assert!(e.to_string().contains(COORDINATORS_VAR), "{e}");
        }
        assert!(matches!(
            Client::from_list(Some("nohost"), None),
            Err(ClientError::Config(_))
        ));
        // Any iterator of strings will do.
        assert!(Client::connect(["127.0.0.1:1"]).is_ok());
    }
}
