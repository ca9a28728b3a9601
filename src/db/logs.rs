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
pub async fn validation_stats(pool: &PgPool, code: &str) -> Result<ValidationStats, Error> {
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

/// How far back each try of [`recent_validations`] looks: the newest rows are usually in the
/// first window, whose few BRIN ranges are cheap to read; an idle log needs the wider ones.
const RECENT_WINDOWS: [&str; 5] = ["1 minute", "1 hour", "1 day", "7 days", "100 years"];

/// The latest `limit` validation log rows, newest first (by time, then id).
pub async fn recent_validations(pool: &PgPool, limit: i64) -> Result<Vec<LoggedValidation>, Error> {
    let mut rows = Vec::new();
    for window in RECENT_WINDOWS {
        rows = sqlx::query_as(
            "SELECT id, coupon_code, coupon_id, user_id, order_id, order_value, is_valid, validation_reason, \
             discount_applied, final_amount, host(ip_address) AS ip_address, user_agent, response_time_ms, validated_at \
             FROM validation_logs WHERE validated_at >= now() - $2::interval \
             ORDER BY validated_at DESC, id DESC LIMIT $1",
        )
        .bind(limit)
        .bind(window)
        .fetch_all(pool)
        .await?;
        if rows.len() as i64 >= limit {
            break;
        }
    }
    Ok(rows)
}
