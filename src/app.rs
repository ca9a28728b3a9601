//! The service assembled: [`App::build`] connects, binds and constructs; [`App::run`] loads,
//! serves, and shuts down in order.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{DatabaseSettings, Settings};
use crate::db::batch_jobs::BatchJobs;
use crate::db::batches;
use crate::db::cluster::{self, Feed, PgCluster};
use crate::db::health::DatabaseHealth;
use crate::db::identity::{DataDirLock, Heartbeat, Identity, InstanceLock};
use crate::db::listener::{ListenerStatus, Refresher};
use crate::db::shipper::Shipper;
use crate::db::usage::Archive;
use crate::db::validation_log::{LogWriter, ValidationLog};
use crate::db::{self, usage};
use crate::engine::Engine;
use crate::engine::alone::{Deciding, Mode};
use crate::engine::clock::SystemClock;
use crate::engine::cluster::Cluster;
use crate::engine::leases::Leases;
use crate::engine::ports::ClusterPort;
use crate::engine::ports::Ports;
use crate::engine::standing::Standing;
use crate::http::guard::LookupGuard;
use crate::http::{self, Operations, State, routes};
use crate::journal::marks::ShippedMarks;
use crate::journal::rejected::Rejected;
use crate::journal::{Journal, JournalError};
use crate::metrics::Metrics;

/// Why the service could not start or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] db::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot open the journal in {dir}: {source}")]
    Journal { dir: PathBuf, source: JournalError },
    #[error("cannot open {path}: {source}")]
    Rejected { path: PathBuf, source: io::Error },
    #[error("cannot ship the journal to the database: {0}")]
    Ship(#[source] JournalError),
    #[error("cannot load coupons and campaigns (has `coupon-engine migrate` run?): {0}")]
    LoadCatalog(#[source] db::Error),
    #[error("cannot load coupon usage (has `coupon-engine migrate` run?): {0}")]
    LoadUsage(#[source] db::Error),
    #[error("cannot keep this instance's id in {dir}: {source}")]
    InstanceId { dir: PathBuf, source: io::Error },
    #[error("instance id {0} is in use by another live instance (INSTANCE_ID must be unique)")]
    InstanceInUse(String),
    #[error(
        "instance id {id} is live from another DATA_DIR (epoch {epoch}, data dir {dir}): stop that process, \
         or write it off if its disk is lost"
    )]
    InstanceElsewhere { id: String, epoch: i64, dir: uuid::Uuid },
    #[error("DATA_DIR {0} is in use by another process")]
    DataDirInUse(PathBuf),
    #[error("cannot register this instance in the database: {0}")]
    Register(#[source] db::Error),
    #[error("this instance's epoch was written off or taken over by another process with its id")]
    Fenced,
    #[error("stopped before the start-up load finished")]
    Interrupted,
    #[error("the {0} task panicked")]
    Panicked(&'static str),
}

/// A bound, connected, not yet serving instance of the service.
#[derive(Debug)]
pub struct App {
    settings: Settings,
    listener: TcpListener,
    pool: PgPool,
    state: Arc<State>,
    shipper: Shipper,
    log_writer: LogWriter,
    /// This instance's id and its DATA_DIR's.
    identity: Identity,
    instance_lock: InstanceLock,
    /// Held for the life of the process: one process per DATA_DIR.
    data_dir_lock: DataDirLock,
}

impl App {
    /// Connects to PostgreSQL, binds the listen address and opens the journal. Fails, with
    /// a reason, if any of it is impossible. Starts no task (the journal's writer thread
    /// aside, which only waits for appends).
    pub async fn build(mut settings: Settings) -> Result<App, StartError> {
        settings.http.max_connections = connections_within_descriptors(settings.http.max_connections);
        let addr = settings.http.addr;
        let pool = db::connect(&settings.database).await.map_err(StartError::Connect)?;
        let data_dir = settings.storage.data_dir.clone();
        let data_dir_lock = DataDirLock::take(&data_dir)
            .map_err(|source| StartError::InstanceId { dir: data_dir.clone(), source })?
            .ok_or_else(|| StartError::DataDirInUse(data_dir.clone()))?;
        let identity = Identity::of(&settings.cluster.instance_id, &data_dir)
            .map_err(|source| StartError::InstanceId { dir: data_dir, source })?;
        let instance_lock = InstanceLock::take(settings.database.url.expose(), &identity.instance)
            .await
            .map_err(StartError::Connect)?
            .ok_or_else(|| StartError::InstanceInUse(identity.instance.clone()))?;
        let listener = bind(addr).map_err(|source| StartError::Bind { addr, source })?;
        let metrics = Arc::new(Metrics::new(&routes::labels()));
        let dir = settings.storage.data_dir.join("journal");
        let (journal, reader) = Journal::open(&dir, settings.journal.reserved_bytes, metrics.journal.clone())
            .map_err(|source| StartError::Journal { dir: dir.clone(), source })?;
        let rejected_path = settings.storage.data_dir.join("rejected.jsonl");
        let rejected = Arc::new(
            Rejected::open(&rejected_path).map_err(|source| StartError::Rejected { path: rejected_path, source })?,
        );
        let database = DatabaseHealth::new();
        let (validation_log, log_writer) = ValidationLog::new(
            pool.clone(),
            &settings.validation_log,
            metrics.validation_logs.clone(),
            journal.clone(),
            database.clone(),
        );
        let ports =
            Ports { validations: Arc::new(validation_log.clone()), archive: Arc::new(Archive::new(pool.clone())) };
        let engine = Arc::new(Engine::new(journal, ports, Arc::new(SystemClock), metrics.clone(), settings.engine()));
        let shipper = Shipper::new(
            pool.clone(),
            reader,
            rejected.clone(),
            metrics.clone(),
            database.clone(),
            settings.journal.clone(),
            &identity,
            engine.clone(),
        );
        let state = Arc::new(State {
            engine,
            metrics,
            ops: Operations {
                database,
                listener: ListenerStatus::new(),
                validation_log,
                shipping: shipper.status(),
                rejected,
                started: Instant::now(),
            },
            pool: pool.clone(),
            admin_token: settings.admin.token.clone(),
            api_token: settings.api.token.clone(),
            in_flight: tokio::sync::Semaphore::new(settings.http.max_in_flight),
            guard: LookupGuard::new(&settings.protection),
            http: settings.http.clone(),
            hold: settings.hold.clone(),
            assigned_codes_per_user: settings.protection.assigned_codes_per_user,
            cart: crate::http::cart_input::CartLimits {
                default_currency: settings.money.default_currency(),
                max_lines: settings.cart.max_lines,
                max_codes: settings.stacking.max_codes,
                max_body_bytes: settings.http.max_body_bytes_cart,
            },
            batch_jobs: BatchJobs::default(),
        });
        if settings.api.token.is_empty() {
            tracing::warn!(
                "API_TOKEN is not set: every caller may redeem and release as the shop's backend would; \
                 set it wherever shoppers can reach this service"
            );
        }
        Ok(App { settings, listener, pool, state, shipper, log_writer, identity, instance_lock, data_dir_lock })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then stops in order. Errors if the start-up load
    /// fails (the server then stops too).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), StartError> {
        let App { settings, listener, pool, state, mut shipper, log_writer, identity, instance_lock, data_dir_lock } =
            self;
        // The stages of shutdown, in order: HTTP drains, then the background tasks stop,
        // then the log writer writes (or spills) what is queued, then the shipper ships
        // what it can, then the pool closes.
        let http = CancellationToken::new();
        let background = Stage::default();
        let log_stage = CancellationToken::new();
        let ship_stage = CancellationToken::new();

        let server = tokio::spawn({
            let (state, http) = (state.clone(), http.clone());
            async move {
                let signal = async move {
                    tokio::select! {
                        () = shutdown => {},
                        () = http.cancelled() => {},
                    }
                };
                http::serve(listener, state, signal).await;
            }
        });
        let log_writer = tokio::spawn(log_writer.run(log_stage.clone()));
        background.tasks.spawn(state.ops.database.clone().run_probe(
            pool.clone(),
            settings.database.health_interval,
            background.stop.clone(),
        ));
        background.tasks.spawn(run_metrics_upkeep(state.metrics.clone(), background.stop.clone()));
        background.tasks.spawn(db::log_retention::run(
            pool.clone(),
            settings.validation_log.retention_days,
            state.ops.database.clone(),
            background.stop.clone(),
        ));
        background.tasks.spawn(db::log_summary::run(pool.clone(), state.ops.database.clone(), background.stop.clone()));
        let shipping_wanted = Arc::new(tokio::sync::Notify::new());
        let refresher = Refresher {
            shipping_wanted: shipping_wanted.clone(),
            pool: pool.clone(),
            url: settings.database.url.clone(),
            engine: state.engine.clone(),
            metrics: state.metrics.clone(),
            status: state.ops.listener.clone(),
            health: state.ops.database.clone(),
            settings: settings.listener.clone(),
        };
        let loaded = tokio::select! {
            loaded = start_up(&pool, &state, &refresher, &mut shipper, &http, &identity, &settings) => loaded,
            () = http.cancelled() => Err(StartError::Interrupted),
        };
        // The heartbeat outlives the background stage: the lock is let go only after the
        // leases have gone back at the very end.
        let heartbeat_stop = CancellationToken::new();
        let fenced = CancellationToken::new();
        let shipping = match loaded {
            Ok((following, feed)) => {
                let cluster = state.engine.cluster().expect("joined the cluster at start-up");
                let heartbeat = Heartbeat {
                    url: settings.database.url.expose().to_owned(),
                    id: identity.instance.clone(),
                    epoch: cluster.epoch,
                    standing: cluster.standing.clone(),
                    every: settings.cluster.heartbeat_every(),
                    shipped: ShippedMarks::new(state.engine.journal().clone()),
                    shipping_wanted,
                };
                let heartbeat = tokio::spawn(heartbeat.run(instance_lock, heartbeat_stop.clone(), fenced.clone()));
                // A fenced instance stops as SIGTERM would: what it acknowledged is shipped.
                tokio::spawn({
                    let (fenced, http, stop) = (fenced.clone(), http.clone(), heartbeat_stop.clone());
                    async move {
                        tokio::select! {
                            () = fenced.cancelled() => http.cancel(),
                            () = stop.cancelled() => {}
                        }
                    }
                });
                background.tasks.spawn(feed.run(background.stop.clone()));
                if let Some(cluster) = state.engine.cluster() {
                    background.tasks.spawn(cluster.leases.clone().run_upkeep(background.stop.clone()));
                }
                background.tasks.spawn(refresher.run(following, background.stop.clone(), background.tasks.clone()));
                background.tasks.spawn(state.engine.clone().run_deadlines(background.stop.clone()));
                background.tasks.spawn(state.engine.clone().run_doubts(background.stop.clone()));
                background.tasks.spawn(state.engine.clone().run_mode(MODE_EVERY, background.stop.clone()));
                background.tasks.spawn(state.engine.clone().run_forgetting(background.stop.clone()));
                Some((tokio::spawn(shipper.run(ship_stage.clone())), heartbeat))
            }
            Err(err) => {
                http.cancel();
                server.await.map_err(|_| StartError::Panicked("HTTP server"))?;
                instance_lock.release().await;
                return Err(err);
            }
        };
        server.await.map_err(|_| StartError::Panicked("HTTP server"))?;
        tracing::info!("HTTP drained; stopping background tasks");
        background.finish().await;
        log_stage.cancel();
        log_writer.await.map_err(|_| StartError::Panicked("validation log writer"))?;
        // Last, so that rows the log writer spilled into the journal get a chance too.
        ship_stage.cancel();
        let (shipping, heartbeat) = shipping.expect("serving only after a start-up load");
        shipping.await.map_err(|_| StartError::Panicked("journal shipper"))?;
        // Every use this instance sold is in PostgreSQL only once its journal is empty; only
        // then can its leases go back whole. Otherwise the next start settles them.
        heartbeat_stop.cancel();
        let instance_lock = heartbeat.await.map_err(|_| StartError::Panicked("instance heartbeat"))?;
        if fenced.is_cancelled() {
            pool.close().await;
            return Err(StartError::Fenced);
        }
        if let Some(cluster) = state.engine.cluster() {
            if state.engine.journal().backlog() == 0 {
                match db::cluster::stop(&pool, &identity.instance, cluster.epoch).await {
                    Ok(units) => tracing::info!(units, "quota leases given back"),
                    Err(err) => tracing::warn!(error = %err, "cannot give back quota leases; the next start will"),
                }
            } else {
                tracing::warn!("journal not wholly shipped; quota leases stay held until the next start");
            }
        }
        if let Some(lock) = instance_lock {
            lock.release().await;
        }
        pool.close().await;
        drop(data_dir_lock);
        Ok(())
    }
}

/// How often this instance looks whether it should decide alone or share: a new instance
/// waits about this long (and a shipment) before it decides limited uses.
const MODE_EVERY: Duration = Duration::from_millis(200);

/// Tasks stopped together.
#[derive(Debug, Default)]
struct Stage {
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Stage {
    async fn finish(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Descriptors kept for everything but client connections: the pool, the listener, journal
/// segments, the set-aside file, logs.
const RESERVED_DESCRIPTORS: u64 = 256;

/// Raises the soft limit of open files to the hard limit, and returns `wanted` or, if the
/// descriptors cannot carry that many connections, as many as they can: a connection past
/// the cap is told 503 and closed, where one past the descriptors would hang in the backlog.
fn connections_within_descriptors(wanted: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(err) => {
            tracing::warn!(error = %err, "cannot raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    let usable = usize::try_from(limit.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX).max(1);
    if wanted > usable {
        tracing::warn!(
            wanted,
            usable,
            open_files_limit = limit,
            "http.max_connections lowered to fit the open-files limit"
        );
        return usable;
    }
    wanted
}

/// Binds with a listen backlog sized for bursts of new connections: with the default, 500
/// clients connecting at once overflowed the accept queue and waited out a 1 s SYN retry.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Ships what the journal holds, then LISTENs and loads every definition, then loads every
/// use and gives back the holds that expired while the service was down, then marks the
/// catalog ready. The ledger is loaded only after shipping: loading it first would miss
/// acknowledged uses and hand them out again.
async fn start_up(
    pool: &PgPool,
    state: &State,
    refresher: &Refresher,
    shipper: &mut Shipper,
    stop: &CancellationToken,
    identity: &Identity,
    settings: &Settings,
) -> Result<(crate::db::listener::Following, Feed), StartError> {
    let started = Instant::now();
    let shipped = shipper.ship_all(stop).await.map_err(StartError::Ship)?;
    if shipped > 0 {
        tracing::info!(records = shipped, "journal replayed into the database");
    }
    // The id's live epoch, if another DATA_DIR runs it, sells into a journal this process
    // cannot ship: settling its leases here would hand out again what it sold.
    if let Some((epoch, dir)) = db::identity::live_elsewhere(pool, identity).await.map_err(StartError::Register)? {
        return Err(StartError::InstanceElsewhere { id: identity.instance.clone(), epoch, dir });
    }
    // Every use the previous run sold is in PostgreSQL now: what its leases still hold was
    // never sold, and goes back.
    let instance = identity.instance.as_str();
    let (epoch, mode) =
        cluster::begin_epoch(pool, identity, settings.cluster.identity_timeout).await.map_err(StartError::Register)?;
    let settled = cluster::settle(pool, instance, epoch - 1).await.map_err(StartError::Register)?;
    if settled > 0 {
        tracing::info!(units = settled, "quota leases of the previous run given back");
    }
    let lease_pool = db::connect(&DatabaseSettings { max_connections: 2, ..settings.database.clone() })
        .await
        .map_err(StartError::Register)?;
    let port: Arc<dyn ClusterPort> = Arc::new(PgCluster::new(
        pool.clone(),
        lease_pool,
        instance.to_owned(),
        epoch,
        state.ops.database.clone(),
        state.metrics.clone(),
    ));
    state.engine.join_cluster(Cluster {
        leases: Leases::new(port.clone(), settings.cluster.leases()),
        port,
        instance: instance.to_owned(),
        epoch,
        standing: Arc::new(Standing::new(settings.cluster.spend_window(), settings.cluster.alone_window())),
        deciding: Deciding::new(mode, settings.cluster.alone()),
    });
    let following = refresher.listen_and_reload().await.map_err(StartError::LoadCatalog)?;
    let mut feed = Feed::start_here(
        pool.clone(),
        state.engine.clone(),
        state.ops.database.clone(),
        settings.cluster.feed_interval,
    )
    .await
    .map_err(StartError::LoadUsage)?;
    let uses = usage::all_uses(pool).await.map_err(StartError::LoadUsage)?;
    let engine = &state.engine;
    let loaded = engine.load_uses(uses);
    let expired = engine.expire_due().await;
    if expired > 0 {
        tracing::info!(holds = expired, "holds that expired while the service was down given back");
    }
    // Alone on the database, it decides alone from the first request: taking the right,
    // reading the feed up to where PostgreSQL answered (the expiries just made are past
    // where the feed started), deciding alone.
    if engine.consider_mode().await == Mode::Joining {
        if let Err(err) = feed.poll().await {
            tracing::debug!(error = %err, "usage feed poll failed at start-up; the feed task reads it");
        }
        engine.consider_mode().await;
    }
    engine.catalog().set_ready();
    match batches::fail_interrupted(pool, None).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(batches = n, "batches of codes left running by a stopped instance marked failed"),
        Err(err) => tracing::warn!(error = %err, "cannot look for interrupted batches of codes"),
    }
    tracing::info!(
        coupons = engine.catalog().load().coupon_count(),
        bulk_codes = engine.catalog().load().codes().len(),
        redemptions = loaded,
        instance,
        epoch,
        mode = engine.mode().as_str(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "cache loaded"
    );
    Ok((following, feed))
}

/// Histogram samples accumulate until upkeep drains them.
async fn run_metrics_upkeep(metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => metrics.run_upkeep(),
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
        () = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}
