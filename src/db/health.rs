//! Whether PostgreSQL answers. Any failed database call (the usage feed every 50 ms, the
//! cluster's claims and leases, the listener, the writers, the shipper, the probe) marks it
//! down at once; only a successful probe marks it up again, and while it is down probes
//! start five times as often, so that `/health` says `up` within a fifth of
//! `database.health_interval` of PostgreSQL answering again. `/health` reads the flag and
//! never waits on the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The last known state of the database.
#[derive(Debug)]
pub struct DatabaseHealth {
    up: AtomicBool,
    /// Wakes the probe when something else finds the database down.
    went_down: Notify,
}

impl DatabaseHealth {
    /// Starts as up: `serve` only gets this far after connecting.
    pub fn new() -> Arc<DatabaseHealth> {
        Arc::new(DatabaseHealth { up: AtomicBool::new(true), went_down: Notify::new() })
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A database call by `who` failed for a reason that may be the database's.
    pub(crate) fn report_failure(&self, who: &str, error: &dyn std::fmt::Display) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(%error, who, "database is unreachable");
            self.went_down.notify_one();
        }
    }

    /// Probes with `SELECT 1` every `interval` until `stop`; a probe that takes longer than
    /// the interval counts as failed. While down, probes overlap, one every fifth of the
    /// interval, so that one stuck on a dead connection does not delay the one that finds
    /// PostgreSQL back.
    pub(crate) async fn run_probe(self: Arc<Self>, pool: PgPool, interval: Duration, stop: CancellationToken) {
        let mut in_flight = tokio::task::JoinSet::new();
        loop {
            let pause = if self.is_up() {
                self.probe(&pool, interval).await;
                interval
            } else {
                in_flight.spawn(self.clone().probe_owned(pool.clone(), interval));
                interval / 5
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
                () = self.went_down.notified() => {}
            }
            while in_flight.try_join_next().is_some() {}
        }
    }

    async fn probe_owned(self: Arc<Self>, pool: PgPool, timeout: Duration) {
        self.probe(&pool, timeout).await;
    }

    async fn probe(&self, pool: &PgPool, timeout: Duration) {
        match tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(pool)).await {
            Ok(Ok(_)) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!("database is reachable again");
                }
            }
            Ok(Err(err)) => self.report_failure("health probe", &err),
            Err(_) => self.report_failure("health probe", &"no answer within the probe interval"),
        }
    }
}
