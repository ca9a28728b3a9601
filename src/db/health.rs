//! Whether PostgreSQL answers, probed in the background so `/health` never waits on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The last known state of the database connection.
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

    /// Probes with `SELECT 1` every `interval` until `stop`; a probe that takes longer than
    /// the interval counts as down.
    pub async fn run_probe(self: Arc<Self>, pool: PgPool, interval: Duration, stop: CancellationToken) {
        loop {
            let probe = tokio::time::timeout(interval, sqlx::query("SELECT 1").execute(&pool));
            let up = matches!(probe.await, Ok(Ok(_)));
            if up != self.up.swap(up, Ordering::Relaxed) {
                if up {
                    tracing::info!("database is reachable again");
                } else {
                    tracing::warn!("database is unreachable");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}
