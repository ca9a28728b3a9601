//! The service assembled: connect, bind, load, serve, and shut down in order.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::Cache;
use crate::config::Settings;
use crate::db::health::DatabaseHealth;
use crate::db::listener::{Following, ListenerStatus, Refresher};
use crate::db::shipper::Shipper;
use crate::db::validation_log::ValidationLog;
use crate::db::{self, load};
use crate::http::guard::LookupGuard;
use crate::http::{self, State};
use crate::journal::Journal;
use crate::metrics::Metrics;

/// A bound, connected, not yet serving instance of the service.
#[derive(Debug)]
pub struct App {
    settings: Settings,
    listener: TcpListener,
    pool: PgPool,
    state: Arc<State>,
    /// Cancelled after the HTTP drain: background tasks finish their work and return.
    stop: CancellationToken,
    tasks: TaskTracker,
    log_writer: JoinHandle<()>,
    shipper: Shipper,
}

impl App {
    /// Connects to PostgreSQL and binds the listen address. Fails, with a reason, if either
    /// is impossible.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        let addr = settings.http_addr()?;
        let pool = db::connect(&settings.database).await.context("cannot connect to the database")?;
        let listener = bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        let metrics = Arc::new(Metrics::new());
        let journal_dir = settings.storage.data_dir.join("journal");
        let (journal, reader) = Journal::open(&journal_dir, metrics.journal.clone())
            .with_context(|| format!("cannot open the journal in {}", journal_dir.display()))?;
        let shipper = Shipper::new(pool.clone(), reader, metrics.clone());
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (validation_log, log_writer) = ValidationLog::spawn(
            pool.clone(),
            &settings.validation_log,
            metrics.validation_logs.clone(),
            journal.clone(),
            stop.clone(),
        );
        let database = DatabaseHealth::new();
        tasks.spawn(database.clone().run_probe(
            pool.clone(),
            Duration::from_millis(settings.database.health_interval_ms),
            stop.clone(),
        ));
        tasks.spawn(run_metrics_upkeep(metrics.clone(), stop.clone()));
        let state = Arc::new(State {
            cache: Arc::new(Cache::new()),
            validation_log,
            metrics,
            database,
            listener: ListenerStatus::new(),
            journal,
            pool: pool.clone(),
            admin_token: settings.admin.token.clone(),
            started: Instant::now(),
            in_flight: tokio::sync::Semaphore::new(settings.http.max_in_flight),
            guard: LookupGuard::new(&settings.protection)?,
            admin_timeout: Duration::from_millis(settings.http.admin_timeout_ms),
        });
        Ok(App { settings, listener, pool, state, stop, tasks, log_writer, shipper })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then drains: HTTP first, then the write-behind
    /// queue, then the pool. Errors if the start-up load fails.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let App { settings, listener, pool, state, stop, tasks, log_writer, mut shipper } = self;
        let http_stop = CancellationToken::new();
        let server = {
            let state = state.clone();
            let settings = settings.http.clone();
            let http_stop = http_stop.clone();
            tokio::spawn(async move {
                let signal = async move {
                    tokio::select! {
                        () = shutdown => {},
                        () = http_stop.cancelled() => {},
                    }
                };
                http::serve(listener, state, &settings, signal).await;
            })
        };
        let refresher = Refresher {
            pool: pool.clone(),
            url: settings.database.url.clone(),
            cache: state.cache.clone(),
            metrics: state.metrics.clone(),
            status: state.listener.clone(),
            settings: settings.listener.clone(),
        };
        let shipper_stop = CancellationToken::new();
        let mut shipper_task = None;
        let loaded = match start_up(&pool, &state, &refresher, &mut shipper).await {
            Ok(following) => {
                tasks.spawn(refresher.run(following, stop.clone()));
                let grace = Duration::from_millis(settings.validation_log.shutdown_timeout_ms);
                shipper_task = Some(tokio::spawn(shipper.run(shipper_stop.clone(), grace)));
                Ok(())
            }
            Err(err) => {
                http_stop.cancel();
                Err(err)
            }
        };
        server.await.context("the HTTP server panicked")?;
        tracing::info!("HTTP drained; flushing the validation log");
        stop.cancel();
        log_writer.await.context("the validation log writer panicked")?;
        // Last, so that rows the log writer spilled into the journal get a chance too.
        shipper_stop.cancel();
        if let Some(shipper) = shipper_task {
            shipper.await.context("the journal shipper panicked")?;
        }
        tasks.close();
        tasks.wait().await;
        pool.close().await;
        loaded
    }
}

/// Binds with a listen backlog sized for bursts of new connections: with the default, 500
/// clients connecting at once overflowed the accept queue and waited out a 1 s SYN retry.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Ships what the journal holds, then loads every redemption (once: see DESIGN.md), then
/// LISTENs and loads every coupon, then marks the cache ready.
async fn start_up(
    pool: &PgPool,
    state: &State,
    refresher: &Refresher,
    shipper: &mut Shipper,
) -> anyhow::Result<Following> {
    let started = Instant::now();
    let replayed = shipper.ship_all().await.context("cannot ship the journal to the database")?;
    if replayed > 0 {
        tracing::info!(records = replayed, "journal replayed into the database");
    }
    let redemptions =
        load::all_redemptions(pool).await.context("cannot load coupon usage (has `coupon-engine migrate` run?)")?;
    let n_redemptions = redemptions.len();
    state.cache.load_usage(redemptions);
    let following = refresher.listen_and_reload().await.context("cannot load coupons")?;
    state.cache.set_ready();
    tracing::info!(
        coupons = state.cache.coupon_count(),
        redemptions = n_redemptions,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "cache loaded"
    );
    Ok(following)
}

/// Histogram samples accumulate until upkeep drains them (TECH-NOTES §4).
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
