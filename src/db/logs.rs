//! Reads of the validation log for the admin API: statistics from the per-hour counts,
//! recent rows by time (the BRIN index narrows the newest window first).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;

use crate::db::Error;

/// Validation counts for one code: total, valid, and invalid by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationStats {
    pub total: i64,
    pub valid: i64,
    pub by_reason: Vec<(String, i64)>,
}

/// Counts the validations of a code, from `validation_counts` (written with the rows).
pub(crate) async fn validation_stats(pool: &PgPool, code: &str) -> Result<ValidationStats, Error> {
    let rows: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT r.name, sum(c.count)::bigint FROM validation_counts c \
         LEFT JOIN validation_reasons r ON r.code = c.reason \
         WHERE c.coupon_code = $1 GROUP BY r.name ORDER BY r.name NULLS FIRST",
    )
    .bind(code)
    .fetch_all(pool)
    .await?;
    let mut stats = ValidationStats::default();
    for (reason, count) in rows {
        stats.total += count;
        match reason {
            None => stats.valid += count,
            Some(reason) => stats.by_reason.push((reason, count)),
        }
    }
    Ok(stats)
}

/// One `validation_logs` row as the admin API shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LoggedValidation {
    pub id: i64,
    pub coupon_code: String,
    pub coupon_id: Option<i64>,
    pub user_id: String,
    pub order_id: Option<String>,
    pub order_value: Decimal,
    pub is_valid: bool,
    pub validation_reason: Option<String>,
    pub discount_applied: Decimal,
    pub final_amount: Decimal,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub response_time_ms: Option<Decimal>,
    pub validated_at: DateTime<Utc>,
}

/// How far back from the newest row each try of [`recent_validations`] looks: the first
/// window nearly always holds enough rows, and its few BRIN ranges are cheap to read.
const RECENT_WINDOWS: [&str; 4] = ["1 second", "1 minute", "1 hour", "1 day"];

/// The newest validation logged: the newest hour's counts carry it (`last_at`), found by the
/// index on `hour` without touching the rows. Counts written before `last_at` existed give
/// the end of their hour.
const NEWEST_VALIDATION: &str = "SELECT coalesce(max(last_at), max(hour) + interval '1 hour') FROM validation_counts \
     WHERE hour = (SELECT max(hour) FROM validation_counts)";

/// The columns of a recent row, then `$tail`.
macro_rules! recent {
    ($tail:literal) => {
        concat!(
            "SELECT id, coupon_code, coupon_id, user_id, order_id, order_value, is_valid, validation_reason, ",
            "discount_applied, final_amount, host(ip_address) AS ip_address, user_agent, response_time_ms, ",
            "validated_at FROM validation_logs ",
            $tail
        )
    };
}

/// The latest `limit` validation log rows, newest first (by time, then id).
///
/// Each try reads the rows at most a window older than the newest one; a try that finds
/// `limit` rows has the answer (no bound above), the last try has no bound at all. So the
/// answer is exact whatever the anchor, and the anchor only decides how little is read: an
/// idle hour before the call costs nothing.
pub(crate) async fn recent_validations(pool: &PgPool, limit: i64) -> Result<Vec<LoggedValidation>, Error> {
    let newest: Option<DateTime<Utc>> = sqlx::query_scalar(NEWEST_VALIDATION).fetch_one(pool).await?;
    if let Some(newest) = newest {
        for window in RECENT_WINDOWS {
            let rows: Vec<LoggedValidation> = sqlx::query_as(recent!(
                "WHERE validated_at >= $2::timestamptz - $3::interval ORDER BY validated_at DESC, id DESC LIMIT $1"
            ))
            .bind(limit)
            .bind(newest)
            .bind(window)
            .fetch_all(pool)
            .await?;
            if rows.len() as i64 >= limit {
                return Ok(rows);
            }
        }
    }
    let rows =
        sqlx::query_as(recent!("ORDER BY validated_at DESC, id DESC LIMIT $1")).bind(limit).fetch_all(pool).await?;
    Ok(rows)
}
