//! Reads of `validation_logs` for the admin API.

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

/// Counts the `validation_logs` rows of a code.
pub async fn validation_stats(pool: &PgPool, code: &str) -> Result<ValidationStats, Error> {
    let rows: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT validation_reason, count(*) FROM validation_logs WHERE coupon_code = $1 \
         GROUP BY validation_reason ORDER BY validation_reason NULLS FIRST",
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

/// The latest `limit` validation log rows, newest first (by id: rows get ids in the order
/// they are written, which is the order they were validated in, spilled rows aside).
pub async fn recent_validations(pool: &PgPool, limit: i64) -> Result<Vec<LoggedValidation>, Error> {
    let rows = sqlx::query_as(
        "SELECT id, coupon_code, coupon_id, user_id, order_id, order_value, is_valid, validation_reason, \
         discount_applied, final_amount, host(ip_address) AS ip_address, user_agent, response_time_ms, validated_at \
         FROM validation_logs ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}
