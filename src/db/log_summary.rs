//! Summaries of the validation log's BRIN ranges, made every second as the day's partition
//! fills (`validation_log_summarize`), so that a read of the newest rows scans only the
//! ranges it needs.
//!
//! autosummarize cannot keep up at this rate (its queue of work items is full within
//! seconds; migration 20261204000001 says more), and the log's partitions take no
//! insert-driven vacuum that would summarize them instead. Each pass starts where the last
//! one ended, so it costs a look-up per range it has not seen; yesterday is kept up too, for
//! the rows of its last second and for rows shipped late from the journal. A day another
//! session is summarizing (another instance) or vacuuming is skipped for that pass, not
//! waited for.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::db::health::DatabaseHealth;
use crate::db::is_transient;

/// How often the newest ranges are summarized: what a recent-validations read may find
/// unsummarized.
const EVERY: Duration = Duration::from_secs(1);

/// Summarizes `day`'s new ranges from `from_block`; returns where the next pass starts.
async fn summarize(pool: &PgPool, day: NaiveDate, from_block: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT validation_log_summarize($1, $2)").bind(day).bind(from_block).fetch_one(pool).await
}

/// Summarizes yesterday's and today's new ranges every second until `stop`.
pub async fn run(pool: PgPool, health: Arc<DatabaseHealth>, stop: CancellationToken) {
    let mut next_block: HashMap<NaiveDate, i64> = HashMap::new();
    let mut interval = tokio::time::interval(EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let today = Utc::now().date_naive();
        let days = [today.pred_opt().unwrap_or(today), today];
        next_block.retain(|day, _| days.contains(day));
        for day in days {
            let from = next_block.get(&day).copied().unwrap_or(0);
            match summarize(&pool, day, from).await {
                Ok(next) => {
                    next_block.insert(day, next);
                }
                Err(err) if is_transient(&err) => {
                    health.report_failure("validation log summaries", &err);
                    break;
                }
                // Not the database being away: reads stay exact, only slower, until it is fixed.
                Err(err) => tracing::error!(error = %err, %day, "cannot summarize the validation log's new ranges"),
            }
        }
    }
}
