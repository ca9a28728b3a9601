//! Whether PostgreSQL answers. Any failed database call (the listener, the writers, the
//! shipper, the probe) marks it down at once; only a successful probe marks it up again.
//! `/health` reads the flag and never waits on the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The last known state of the database.
#[derive(Debug)]
pub struct DatabaseHealth {
    up: AtomicBool,
}

impl DatabaseHealth {
    /// Starts as up: `serve` only gets this far after connecting.
    pub fn new() -> Arc<DatabaseHealth> {
        Arc::new(DatabaseHealth { up: AtomicBool::new(true) })
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A database call by `who` failed for a reason that may be the database's.
    pub fn report_failure(&self, who: &str, error: &dyn std::fmt::Display) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(%error, who, "database is unreachable");
        }
    }

    /// Probes with `SELECT 1` every `interval` until `stop`; a probe that takes longer than
    /// the interval counts as failed.
    pub async fn run_probe(self: Arc<Self>, pool: PgPool, interval: Duration, stop: CancellationToken) {
        loop {
            match tokio::time::timeout(interval, sqlx::query("SELECT 1").execute(&pool)).await {
                Ok(Ok(_)) => {
                    if !self.up.swap(true, Ordering::Relaxed) {
                        tracing::info!("database is reachable again");
                    }
                }
                Ok(Err(err)) => self.report_failure("health probe", &err),
                Err(_) => self.report_failure("health probe", &"no answer within the probe interval"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}
