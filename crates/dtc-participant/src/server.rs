//! Assembling and running a participant: the builder, start-up recovery, the
//! gRPC server, registration and the in-doubt resolver.

use crate::coordinators::{Coordinators, Registration};
use crate::log::{self, ParticipantLog};
use crate::resolver::{InDoubtPass, Resolver};
use crate::resource::ErasedResource;
use crate::service::ParticipantService;
use crate::writer::Writer;
use crate::{ParticipantError, Resource, ResourceError};
use dtc_proto::v1 as pb;
use redb::{Database, Durability, ReadableDatabase};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tracing::{error, info, warn};

/// Default of [`ParticipantBuilder::max_queued`].
pub const DEFAULT_MAX_QUEUED: usize = 4096;

/// Name of the redb file [`open_database`] creates in a data directory.
pub const DATABASE_FILE: &str = "participant.redb";

/// Opens (creating if needed) `<dir>/participant.redb`, the file that holds
/// the participant log and, typically, the application's own tables.
/// Blocking; redb locks the file, so a second process opening it fails.
pub fn open_database(dir: &Path) -> Result<Arc<Database>, ParticipantError> {
    std::fs::create_dir_all(dir).map_err(|source| ParticipantError::Io {
        what: format!("cannot create the data directory {}", dir.display()),
        source,
    })?;
    let path = dir.join(DATABASE_FILE);
    // `Database::create` interrupted by a crash leaves a file without its
    // magic number that redb then refuses to open: build it aside and rename.
    dtc_util::fs::create_atomically(&path, |tmp| Database::create(tmp).map(drop)).map_err(|e| {
        match e {
            dtc_util::fs::AtomicError::Fill(e) => ParticipantError::from(e),
            dtc_util::fs::AtomicError::Io { path, source } => ParticipantError::Io {
                what: format!("cannot create {}", path.display()),
                source,
            },
        }
    })?;
    let db = redb::Builder::new()
        .set_cache_size(DATABASE_CACHE_BYTES)
        .create(path)?;
    Ok(Arc::new(db))
}

/// redb page cache of the participant database. redb's default is 1 GiB;
/// the participant reads mostly recent records (prepared transactions, their
/// locks), so a bounded cache keeps a participant's memory independent of
/// its history. Applications with large tables of their own in the same
/// file may want more: open the file themselves with `redb::Builder`.
pub const DATABASE_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Opens (creating if empty) a participant database on a custom redb storage
/// backend instead of `<dir>/participant.redb`, e.g. a simulated disk for
/// crash tests. Same settings as [`open_database`].
pub fn open_database_with_backend(
    backend: impl redb::StorageBackend,
) -> Result<Arc<Database>, ParticipantError> {
    let db = redb::Builder::new()
        .set_cache_size(DATABASE_CACHE_BYTES)
        .create_with_backend(backend)?;
    Ok(Arc::new(db))
}

/// Entry point of the SDK: see [`ParticipantServer::builder`].
#[derive(Debug)]
pub struct ParticipantServer;

impl ParticipantServer {
    /// A participant named `name` (as registered with the coordinators)
    /// whose log lives in `db` and whose local work is `resource`.
    pub fn builder(
        name: impl Into<String>,
        db: Arc<Database>,
        resource: impl Resource,
    ) -> ParticipantBuilder {
        ParticipantBuilder {
            name: name.into(),
            db,
            resource: Arc::new(resource),
            coordinators: Vec::new(),
            require_registration: None,
            tls: None,
            dialer: dtc_proto::net::Dialer::tcp(),
            advertise: None,
            register: true,
            in_doubt_interval: Duration::from_secs(5),
            in_doubt_after: None,
            rpc_timeout: Duration::from_secs(2),
            lock_wait: Duration::ZERO,
            max_queued: DEFAULT_MAX_QUEUED,
            metrics_listen: None,
            disk_reserve: None,
            routes: None,
            listed: dtc_proto::reflection::Listed {
                services: vec![
                    pb::participant_server::SERVICE_NAME.to_string(),
                    pb::participant_query_server::SERVICE_NAME.to_string(),
                    dtc_proto::reflection::HEALTH.to_string(),
                ],
                descriptor_sets: Vec::new(),
            },
        }
    }
}

/// Settings of a participant; [`ParticipantBuilder::start`] runs it.
pub struct ParticipantBuilder {
    name: String,
    db: Arc<Database>,
    resource: Arc<dyn ErasedResource>,
    coordinators: Vec<String>,
    require_registration: Option<Duration>,
    tls: Option<dtc_proto::tls::Tls>,
    dialer: dtc_proto::net::Dialer,
    advertise: Option<String>,
    register: bool,
    in_doubt_interval: Duration,
    in_doubt_after: Option<Duration>,
    rpc_timeout: Duration,
    lock_wait: Duration,
    max_queued: usize,
    metrics_listen: Option<std::net::SocketAddr>,
    disk_reserve: Option<dtc_util::disk::Reserve>,
    routes: Option<Routes>,
    /// What server reflection lists (see [`ParticipantBuilder::reflect`]).
    listed: dtc_proto::reflection::Listed,
}

impl std::fmt::Debug for ParticipantBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParticipantBuilder")
            .field("name", &self.name)
            .field("coordinators", &self.coordinators)
            .field("advertise", &self.advertise)
            .field("in_doubt_interval", &self.in_doubt_interval)
            .field("lock_wait", &self.lock_wait)
            .finish_non_exhaustive()
    }
}

impl ParticipantBuilder {
    /// Coordinator addresses (`HOST:PORT` or URLs). Any node will do: a
    /// follower forwards registration and outcome queries to the leader.
    pub fn coordinators<I, S>(mut self, addrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.coordinators = addrs.into_iter().map(Into::into).collect();
        self
    }

    /// The endpoint to register (`http://host:port`). Defaults to the
    /// listener's address, which must then not be a wildcard (0.0.0.0).
    pub fn advertise(mut self, endpoint: impl Into<String>) -> Self {
        self.advertise = Some(endpoint.into());
        self
    }

    /// Makes [`start`](Self::start) (and so [`serve`](Self::serve)) wait
    /// until a coordinator accepts the registration, at most `within`, and
    /// fail with [`ParticipantError::NotRegistered`] (naming the last
    /// coordinator error) if none does. Without it, `start` returns at once
    /// and registration is retried in the background for as long as the
    /// participant runs (see [`RunningParticipant::wait_registered`]).
    pub fn require_registration(mut self, within: Duration) -> Self {
        self.require_registration = Some(within);
        self
    }

    /// Mutual TLS (`dtc_proto::tls`): the server requires a client
    /// certificate signed by the CA of every caller (coordinators, tools),
    /// and the calls to the coordinators present this certificate. The
    /// registered endpoint is then `https://`.
    pub fn tls(mut self, tls: dtc_proto::tls::Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Makes every channel to the coordinators through `dialer` instead of
    /// TCP (the simulation's network).
    pub fn dialer(mut self, dialer: dtc_proto::net::Dialer) -> Self {
        self.dialer = dialer;
        self
    }

    /// Whether to call `RegisterParticipant` at start (default: yes, when
    /// coordinators are given).
    pub fn register(mut self, register: bool) -> Self {
        self.register = register;
        self
    }

    /// How often prepared transactions are checked for a missing decision
    /// (default 5 s).
    pub fn in_doubt_interval(mut self, every: Duration) -> Self {
        self.in_doubt_interval = every;
        self
    }

    /// How long a transaction must have been prepared before a periodic pass
    /// asks the coordinator about it (default: the interval). The pass at
    /// start asks about every prepared transaction.
    pub fn in_doubt_after(mut self, age: Duration) -> Self {
        self.in_doubt_after = Some(age);
        self
    }

    /// Timeout of each call to a coordinator (default 2 s).
    pub fn rpc_timeout(mut self, timeout: Duration) -> Self {
        self.rpc_timeout = timeout;
        self
    }

    /// How long a prepare that the resource finds busy ([`Vote::Busy`](crate::Vote::Busy):
    /// what it needs is held by other prepared transactions) may wait for
    /// their decisions before it votes abort. Default zero: it votes abort at
    /// once. The wait never blocks the writer (other branches go on) and
    /// never outlasts the prepare's own deadline; see docs/design.md §12 for
    /// why it cannot deadlock.
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// More gRPC services to serve on the same port (the application's own
    /// API, e.g. `Routes::new(LedgerServer::new(svc))`). List each under
    /// server reflection with [`ParticipantBuilder::reflect`].
    pub fn routes(mut self, routes: Routes) -> Self {
        self.routes = Some(routes);
        self
    }

    /// Most operations (prepares, commits, aborts) waiting for the writer at
    /// once; past it a call is answered RESOURCE_EXHAUSTED at once (a
    /// prepare refused so counts as an abort vote; a decision is resent).
    /// Default 4,096.
    pub fn max_queued(mut self, ops: usize) -> Self {
        self.max_queued = ops.max(1);
        self
    }

    /// Serves Prometheus metrics at `http://ADDR/metrics` (port 0: any free
    /// port, logged as "metrics listening"): prepares by vote and their
    /// duration, decisions, and the transactions in doubt. Not served unless
    /// set; docs/operations.md lists the metrics.
    /// Keeps `bytes` free on the filesystem holding `dir` (the directory of
    /// the database) for the decisions of prepared transactions: while less
    /// is free, new prepares vote abort with a reason naming the disk, and
    /// they are accepted again once space returns. Without it, a full disk
    /// fails a write, and the participant stops serving until restarted
    /// ([`RunningParticipant::storage_failed`]). `dtc participant` keeps
    /// [`crate::DEFAULT_DISK_RESERVE_BYTES`] (64 MiB).
    pub fn disk_reserve(mut self, dir: impl Into<std::path::PathBuf>, bytes: u64) -> Self {
        self.disk_reserve = Some(dtc_util::disk::Reserve {
            dir: dir.into(),
            bytes,
            kept_for: "decisions of prepared transactions",
        });
        self
    }

    pub fn metrics_listen(mut self, addr: std::net::SocketAddr) -> Self {
        self.metrics_listen = Some(addr);
        self
    }

    /// Lists one of the [`routes`](Self::routes) services under gRPC server
    /// reflection (v1 and v1alpha), as the participant API and health
    /// already are: `name` is its full name (`dtc.v1.Ledger`), and
    /// `descriptor_set` the encoded `FileDescriptorSet` that defines it
    /// (`tonic::include_file_descriptor_set!`), or `None` for a service of
    /// dtc's own protos.
    pub fn reflect(
        mut self,
        name: impl Into<String>,
        descriptor_set: Option<&'static [u8]>,
    ) -> Self {
        self.listed.services.push(name.into());
        self.listed.descriptor_sets.extend(descriptor_set);
        self
    }

    /// Recovers, then serves on `listener` until [`RunningParticipant::shutdown`].
    ///
    /// Before the first call is accepted: the log tables are created or
    /// checked, and [`Resource::recover`] gets every prepared transaction
    /// (corner case 14). Then, in the background: registration (retried until
    /// accepted) and the in-doubt resolver (a pass at once, then every
    /// interval).
    pub async fn start(
        self,
        listener: tokio::net::TcpListener,
    ) -> Result<RunningParticipant, ParticipantError> {
        let incoming =
            dtc_proto::net::Incoming::tcp(listener).map_err(|source| ParticipantError::Io {
                what: "cannot read the listener's address".into(),
                source,
            })?;
        self.start_on(incoming).await
    }

    /// [`start`](Self::start), serving the connections of `incoming`
    /// instead of a TCP listener's (the simulation's network).
    pub async fn start_on(
        self,
        incoming: dtc_proto::net::Incoming,
    ) -> Result<RunningParticipant, ParticipantError> {
        dtc_core::validate_participant_name(&self.name)
            .map_err(|e| ParticipantError::Config(e.to_string()))?;
        let local_addr = incoming.local_addr();
        let coordinators = Arc::new(Coordinators::new(
            &self.coordinators,
            self.rpc_timeout,
            self.tls.as_ref(),
            &self.dialer,
        )?);
        let register = self.register && !coordinators.is_empty();
        let tls = self.tls.is_some();
        let endpoint = match &self.advertise {
            Some(e) => Some(dtc_proto::tls::uri(e, tls)),
            None if local_addr.ip().is_unspecified() => None,
            None => Some(dtc_proto::tls::uri(&local_addr.to_string(), tls)),
        };
        if register && endpoint.is_none() {
            return Err(ParticipantError::Config(format!(
                "listening on {local_addr}, a wildcard address: give the endpoint to register \
                 (advertise)"
            )));
        }

        let recovered = {
            let db = self.db.clone();
            let resource = self.resource.clone();
            dtc_util::blocking::spawn(move || recover(&db, &*resource))
                .await
                .map_err(|e| ParticipantError::Task(e.to_string()))??
        };
        info!(participant = %self.name, prepared = recovered,
            "participant log opened; prepared transactions recovered");

        let writer = Arc::new(Writer::start(
            self.name.clone(),
            self.db.clone(),
            self.resource.clone(),
            self.lock_wait,
            self.max_queued,
            self.disk_reserve.clone(),
        )?);
        let plog = ParticipantLog::new(self.db.clone());
        let cancel = CancellationToken::new();

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<pb::participant_server::ParticipantServer<ParticipantService>>()
            .await;
        // A participant whose storage failed answers nothing OK any more: it
        // says so, so that a supervisor or load balancer stops sending it work.
        let health_task = {
            let writer = writer.clone();
            let reporter = health_reporter.clone();
            tokio::spawn(async move {
                writer.failed().await;
                reporter
                    .set_not_serving::<pb::participant_server::ParticipantServer<ParticipantService>>()
                    .await;
                reporter
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
            })
        };
        let metrics = Arc::new(crate::metrics::ParticipantMetrics::default());
        let mut metrics_addr = None;
        if let Some(addr) = self.metrics_listen {
            let listener =
                dtc_metrics::bind(addr)
                    .await
                    .map_err(|source| ParticipantError::Io {
                        what: "metrics endpoint".into(),
                        source,
                    })?;
            let mut registry = dtc_metrics::Registry::default();
            metrics.register(&mut registry);
            let refresh: dtc_metrics::Refresh = {
                let metrics = metrics.clone();
                let log = plog.clone();
                Arc::new(move || {
                    if let Ok(n) = log.prepared_count() {
                        metrics.in_doubt.set(i64::try_from(n).unwrap_or(i64::MAX));
                    }
                })
            };
            metrics_addr = dtc_metrics::spawn(
                listener,
                registry,
                refresh,
                cancel.clone().cancelled_owned(),
            );
        }
        let query =
            pb::participant_query_server::ParticipantQueryServer::new(crate::query::QueryService {
                db: self.db.clone(),
                resource: self.resource.clone(),
                log: plog.clone(),
            });
        let participant = pb::participant_server::ParticipantServer::new(ParticipantService {
            name: self.name.clone(),
            writer: writer.clone(),
            metrics,
        })
        .max_decoding_message_size(dtc_proto::wire::MAX_MESSAGE_BYTES);
        let reflection_error = |e: tonic_reflection::server::Error| {
            ParticipantError::Config(format!("reflection: {e}"))
        };
        let routes = self
            .routes
            .unwrap_or_default()
            .add_service(health_service)
            .add_service(dtc_proto::reflection::v1(&self.listed).map_err(reflection_error)?)
            .add_service(dtc_proto::reflection::v1alpha(&self.listed).map_err(reflection_error)?)
            .add_service(query)
            .add_service(participant);
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = &self.tls {
            server = server.tls_config(tls.server_config())?;
        }
        let server = tokio::spawn(
            server
                .tcp_nodelay(true)
                .add_routes(routes)
                .serve_with_incoming_shutdown(
                    incoming.into_stream(),
                    cancel.clone().cancelled_owned(),
                ),
        );

        let (registered_tx, registered) = watch::channel(Registration::Pending(None));
        let mut tasks = vec![health_task];
        if register && let Some(endpoint) = endpoint.clone() {
            tasks.push(tokio::spawn(crate::coordinators::register_loop(
                self.name.clone(),
                endpoint,
                coordinators.clone(),
                registered_tx,
                cancel.clone(),
            )));
        } else if coordinators.is_empty() {
            warn!(participant = %self.name,
                "no coordinator addresses: not registering, and in-doubt transactions wait \
                 for the coordinator to resend the decision");
        }
        let resolver = Arc::new(Resolver {
            name: self.name.clone(),
            log: plog.clone(),
            writer: writer.clone(),
            coordinators: coordinators.clone(),
        });
        if !coordinators.is_empty() {
            let every = self.in_doubt_interval.max(Duration::from_millis(10));
            let after = self.in_doubt_after.unwrap_or(every);
            tasks.push(tokio::spawn(resolver.clone().run(
                every,
                after,
                cancel.clone(),
            )));
        }
        info!(participant = %self.name, %local_addr, endpoint = endpoint.as_deref().unwrap_or("-"),
            "participant serving");
        let running = RunningParticipant {
            name: self.name,
            local_addr,
            endpoint,
            cancel,
            server: Some(server),
            tasks,
            writer,
            registered,
            resolver,
            log: plog,
            metrics_addr,
            db: self.db,
        };
        if let Some(within) = self.require_registration.filter(|_| register)
            && let Err(e) = running.wait_registered(within).await
        {
            running.shutdown().await;
            return Err(e);
        }
        Ok(running)
    }

    /// [`start`](Self::start), then
    /// [`RunningParticipant::serve_until_signal`]: serves until the process
    /// gets SIGINT (Ctrl-C) or SIGTERM (what `docker stop` and Kubernetes
    /// send), then shuts down gracefully.
    pub async fn serve_until_signal(
        self,
        listener: tokio::net::TcpListener,
    ) -> Result<(), ParticipantError> {
        self.start(listener).await?.serve_until_signal().await
    }

    /// [`start`](Self::start), then [`RunningParticipant::serve_until`]
    /// `shutdown`.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ParticipantError> {
        self.start(listener).await?.serve_until(shutdown).await
    }
}

/// Creates/checks the log tables, runs the resource's `init`, and lets it
/// re-take the locks of every prepared transaction, in one durable write
/// transaction. Blocking.
fn recover(db: &Database, resource: &dyn ErasedResource) -> Result<usize, ParticipantError> {
    log::init(db)?;
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    resource.init(&tx).map_err(ParticipantError::Init)?;
    let prepared: Vec<(String, Vec<u8>)> = log::prepared_in(&tx)?
        .into_iter()
        .map(|(txn_id, rec)| (txn_id, rec.payload))
        .collect();
    let count = prepared.len();
    resource.recover(&tx, prepared)?;
    tx.commit()?;
    Ok(count)
}

/// A participant that is serving. Dropping it without
/// [`shutdown`](Self::shutdown) leaves the server running in the background
/// until the runtime stops.
pub struct RunningParticipant {
    name: String,
    local_addr: SocketAddr,
    endpoint: Option<String>,
    cancel: CancellationToken,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    tasks: Vec<JoinHandle<()>>,
    writer: Arc<Writer>,
    registered: watch::Receiver<Registration>,
    resolver: Arc<Resolver>,
    log: ParticipantLog,
    metrics_addr: Option<SocketAddr>,
    db: Arc<Database>,
}

impl std::fmt::Debug for RunningParticipant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningParticipant")
            .field("name", &self.name)
            .field("local_addr", &self.local_addr)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl RunningParticipant {
    /// Serves until `shutdown` completes, then shuts down gracefully (what
    /// is queued is synced and answered first). Returns early with the
    /// error if the server fails, or if the participant's storage fails
    /// ([`ParticipantError::Failed`]: the process should exit non-zero so
    /// that its supervisor restarts it).
    pub async fn serve_until(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ParticipantError> {
        let writer = self.writer.clone();
        tokio::select! {
            _ = shutdown => {}
            why = writer.failed() => {
                self.shutdown().await;
                return Err(ParticipantError::Failed(why));
            }
            r = self.server_done() => {
                if let Err(e) = &r {
                    error!(error = %e, "participant server failed");
                }
                self.shutdown().await;
                return r;
            }
        }
        self.shutdown().await;
        Ok(())
    }

    /// [`serve_until`](Self::serve_until) SIGINT (Ctrl-C) or SIGTERM.
    pub async fn serve_until_signal(self) -> Result<(), ParticipantError> {
        self.serve_until(dtc_util::shutdown_signal()).await
    }

    /// Where the metrics are served, if [`ParticipantBuilder::metrics_listen`] was set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The endpoint registered with the coordinators (None: not registering).
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// Read access to the participant log.
    pub fn log(&self) -> &ParticipantLog {
        &self.log
    }

    /// Whether a `RegisterParticipant` call has been accepted.
    pub fn is_registered(&self) -> bool {
        *self.registered.borrow() == Registration::Registered
    }

    /// Why registration has not succeeded yet: the last attempt's error
    /// (every coordinator address it tried, and what each answered). `None`
    /// once registered, or before the first attempt has failed.
    pub fn registration_error(&self) -> Option<String> {
        match &*self.registered.borrow() {
            Registration::Pending(e) => e.clone(),
            Registration::Registered => None,
        }
    }

    /// Waits until registration is accepted, at most `within`; past it,
    /// [`ParticipantError::NotRegistered`] says why (registration goes on
    /// in the background all the same).
    pub async fn wait_registered(&self, within: Duration) -> Result<(), ParticipantError> {
        let mut rx = self.registered.clone();
        let waited = tokio::time::timeout(within, rx.wait_for(|r| *r == Registration::Registered));
        match waited.await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ParticipantError::NotRegistered {
                within,
                last_error: self
                    .registration_error()
                    .unwrap_or_else(|| "no coordinator answered yet".into()),
            }),
        }
    }

    /// Writes to the participant's database outside two-phase commit
    /// (seeding, restocking, an admin correction), safely while it serves:
    /// `write` runs on the SDK's writer between two-phase-commit operations,
    /// in a write transaction of its own, and this returns once that is
    /// durable. An error (or panic) in `write` rolls back everything it
    /// wrote. Prepares waiting for a lock run again afterwards, since the
    /// write may have freed what they wait for.
    ///
    /// The write must keep the resource's own invariants: a reservation a
    /// prepared transaction holds must stay valid (with
    /// [`counters`](crate::counters), use [`Counters::adjust`](crate::counters::Counters::adjust),
    /// which refuses to take what prepared transactions reserve).
    pub async fn write<T, F>(&self, write: F) -> Result<T, ParticipantError>
    where
        T: Send + 'static,
        F: FnOnce(&redb::WriteTransaction) -> Result<T, ResourceError> + Send + 'static,
    {
        let out = Arc::new(std::sync::Mutex::new(None));
        let slot = out.clone();
        self.writer
            .write(Box::new(move |tx| {
                let value = write(tx)?;
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
                Ok(())
            }))
            .await
            .map_err(|e| ParticipantError::Write(e.to_string()))?;
        let value = out.lock().unwrap_or_else(|p| p.into_inner()).take();
        value.ok_or_else(|| ParticipantError::Write("the write did not run".into()))
    }

    /// Reads the participant's database (a redb read transaction: it sees
    /// every committed change, runs concurrently with the writer, and
    /// needs no second open of the file, which redb's lock forbids).
    /// Blocking work runs on a blocking thread.
    pub async fn read<T, F>(&self, read: F) -> Result<T, ParticipantError>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadTransaction) -> Result<T, ResourceError> + Send + 'static,
    {
        let db = self.db.clone();
        dtc_util::blocking::spawn(move || {
            let tx = db.begin_read()?;
            read(&tx).map_err(|e| ParticipantError::Read(e.to_string()))
        })
        .await
        .map_err(|e| ParticipantError::Task(e.to_string()))?
    }

    /// Runs one in-doubt pass now over every prepared transaction, whatever
    /// its age (what the start-up pass does).
    pub async fn resolve_in_doubt(&self) -> InDoubtPass {
        self.resolver.pass(Duration::ZERO).await
    }

    /// Resolves (with the reason) if a write or sync of the participant's
    /// file fails. From then on every call is refused and health says
    /// NOT_SERVING; the process should exit and be restarted, which recovers
    /// from what is durable. Pending forever while storage works.
    pub async fn storage_failed(&self) -> String {
        self.writer.failed().await
    }

    async fn server_done(&mut self) -> Result<(), ParticipantError> {
        match self.server.as_mut() {
            Some(h) => match h.await {
                Ok(r) => {
                    self.server = None;
                    r.map_err(ParticipantError::Serve)
                }
                Err(e) => {
                    self.server = None;
                    Err(ParticipantError::Task(e.to_string()))
                }
            },
            None => std::future::pending().await,
        }
    }

    /// Stops serving (calls in flight finish), stops the background tasks,
    /// then lets the writer sync and answer what it has queued. Afterwards the
    /// database has no other user in the SDK and can be reopened.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(mut server) = self.server.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut server)
                .await
                .is_err()
        {
            warn!(participant = %self.name, "calls still running after 5 s; closing them");
            server.abort();
            let _ = server.await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        self.writer.stop().await;
        info!(participant = %self.name, "participant stopped");
    }

    /// Stops as abruptly as an in-process stop can, to test crash recovery:
    /// nothing more is answered (calls in flight fail with UNAVAILABLE), the
    /// operation the writer is running is dropped unwritten, queued ones are
    /// dropped. Unlike a real crash, what an earlier operation of the same
    /// batch wrote is kept (redb makes it durable when the file is closed).
    /// Returns once the writer thread has exited, so a resource blocked in a
    /// call must be let go for this to finish.
    pub async fn kill(mut self) {
        self.writer.crash();
        self.cancel.cancel();
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        // Graceful on the server side so connection tasks end and release
        // the services (and the database they hold); every call now fails fast.
        if let Some(mut server) = self.server.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut server)
                .await
                .is_err()
        {
            server.abort();
            let _ = server.await;
        }
        self.writer.join().await;
        warn!(participant = %self.name, "participant killed");
    }
}

#[cfg(test)]
mod create_tests {
    use super::*;

    #[test]
    fn a_leftover_half_created_database_does_not_stop_the_participant() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DATABASE_FILE);
        // What a crash inside `Database::create` leaves: a zero-filled file.
        std::fs::write(path.with_extension("redb.creating"), vec![0u8; 72 * 1024]).unwrap();
        drop(open_database(dir.path()).unwrap());
        assert!(!path.with_extension("redb.creating").exists());
        drop(open_database(dir.path()).unwrap());
    }
}
