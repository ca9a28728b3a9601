//! Retention of the validation log: daily partitions are created ahead of time and the days
//! older than `validation_log.retention_days` are dropped whole, never deleted row by row.
//! Runs at start-up and hourly; the writer also creates a day it needs and finds missing, so
//! a long downtime or a skewed clock never makes a row homeless.

use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::db::health::DatabaseHealth;

/// Days of partitions kept ready ahead of today.
pub const DAYS_AHEAD: u64 = 3;
/// How often the partitions are checked.
const EVERY: Duration = Duration::from_secs(3600);

/// What one pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    pub created: i32,
    pub dropped: i32,
}

/// Creates the partitions from yesterday to `DAYS_AHEAD` days after `today` and drops the
/// days before `today - retention_days`.
pub async fn keep(pool: &PgPool, today: NaiveDate, retention_days: u32) -> Result<Kept, sqlx::Error> {
    let created: i32 = sqlx::query_scalar("SELECT validation_log_add_days($1, $2)")
        .bind(today - chrono::Days::new(1))
        .bind(today + chrono::Days::new(DAYS_AHEAD))
        .fetch_one(pool)
        .await?;
    let dropped: i32 = sqlx::query_scalar("SELECT validation_log_drop_before($1)")
        .bind(today - chrono::Days::new(u64::from(retention_days)))
        .fetch_one(pool)
        .await?;
    Ok(Kept { created, dropped })
}

/// Keeps the partitions every hour until `stop`.
pub async fn run(pool: PgPool, retention_days: u32, health: Arc<DatabaseHealth>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        match keep(&pool, Utc::now().date_naive(), retention_days).await {
            Ok(kept) if kept != (Kept { created: 0, dropped: 0 }) => {
                tracing::info!(created = kept.created, dropped = kept.dropped, "validation log partitions kept");
            }
            Ok(_) => {}
            Err(err) => health.report_failure("validation log retention", &err),
        }
    }
}
