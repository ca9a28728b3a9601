//! Admin writes and reads of `coupons` and `validation_logs`; none of it on the request path.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use crate::db::{Error, load};
use crate::domain::coupon::{Coupon, CouponId, Discount};

/// Why a coupon write was refused.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("a coupon with code {0} already exists")]
    DuplicateCode(String),
    #[error("userId {0} does not exist")]
    UnknownUser(String),
    #[error("no coupon has code {0}")]
    NotFound(String),
    #[error("the database refused the coupon: {0}")]
    Refused(String),
    #[error(transparent)]
    Database(#[from] Error),
}

impl From<sqlx::Error> for WriteError {
    fn from(err: sqlx::Error) -> WriteError {
        WriteError::Database(Error::Sqlx(err))
    }
}

/// Inserts a checked coupon; returns it with the id and version the database gave it.
pub async fn insert(pool: &PgPool, coupon: &Coupon) -> Result<Coupon, WriteError> {
    let (id, version): (CouponId, i64) = bind_coupon(
        sqlx::query_as(
            "INSERT INTO coupons (code, type, status, discount_type, discount_value, max_discount, \
             min_order_value, usage_limit, per_user_limit, user_id, valid_from, valid_until) \
             VALUES ($1, $2, $3, $4, $5::bigint::numeric / 100, $6::bigint::numeric / 100, \
             $7::bigint::numeric / 100, $8, $9, $10, $11, $12) RETURNING id, version",
        ),
        coupon,
    )
    .fetch_one(pool)
    .await
    .map_err(|err| refusal(err, coupon))?;
    Ok(Coupon { id, version, ..coupon.clone() })
}

/// Reads a coupon by code and locks its row for the rest of the transaction.
pub async fn lock_by_code(tx: &mut Transaction<'_, Postgres>, code: &str) -> Result<Coupon, WriteError> {
    let id: Option<CouponId> = sqlx::query_scalar("SELECT id FROM coupons WHERE code = $1 FOR UPDATE")
        .bind(code)
        .fetch_optional(&mut **tx)
        .await?;
    let id = id.ok_or_else(|| WriteError::NotFound(code.to_owned()))?;
    let coupon = load::coupon_by_id(&mut **tx, id).await?;
    coupon.ok_or_else(|| WriteError::NotFound(code.to_owned()))
}

/// Writes every field of `coupon` over the row with its id; returns the new version.
pub async fn update(tx: &mut Transaction<'_, Postgres>, coupon: &Coupon) -> Result<Coupon, WriteError> {
    let (_, version): (CouponId, i64) = bind_coupon(
        sqlx::query_as(
            "UPDATE coupons SET code = $1, type = $2, status = $3, discount_type = $4, \
             discount_value = $5::bigint::numeric / 100, max_discount = $6::bigint::numeric / 100, \
             min_order_value = $7::bigint::numeric / 100, usage_limit = $8, per_user_limit = $9, user_id = $10, \
             valid_from = $11, valid_until = $12 WHERE id = $13 RETURNING id, version",
        ),
        coupon,
    )
    .bind(coupon.id)
    .fetch_one(&mut **tx)
    .await
    .map_err(|err| refusal(err, coupon))?;
    Ok(Coupon { version, ..coupon.clone() })
}

type CouponQuery<'q, O> = sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments>;

/// Binds the twelve coupon columns in table order, amounts as cents.
fn bind_coupon<'q, O>(query: CouponQuery<'q, O>, coupon: &'q Coupon) -> CouponQuery<'q, O> {
    let (discount_type, value, cap) = match coupon.discount {
        Discount::Percentage { hundredths, cap } => ("percentage", i64::from(hundredths), cap),
        Discount::Fixed(amount) => ("fixed", cents(amount.get()), None),
    };
    let limit = |limit: Option<u32>| limit.map(|l| i32::try_from(l).unwrap_or(i32::MAX));
    query
        .bind(coupon.code.as_ref())
        .bind(coupon.kind.as_str())
        .bind(coupon.status.as_str())
        .bind(discount_type)
        .bind(value)
        .bind(cap.map(|c| cents(c.get())))
        .bind(cents(coupon.min_order_value.get()))
        .bind(limit(coupon.usage_limit))
        .bind(limit(coupon.per_user_limit))
        .bind(coupon.user_id.as_deref())
        .bind(coupon.valid_from)
        .bind(coupon.valid_until)
}

fn cents(value: u64) -> i64 {
    // Bounded by MAX_CENTS.
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Turns constraint violations into refusals the admin can act on.
fn refusal(err: sqlx::Error, coupon: &Coupon) -> WriteError {
    if let sqlx::Error::Database(db) = &err {
        match db.code().as_deref() {
            Some("23505") => return WriteError::DuplicateCode(coupon.code.to_string()),
            Some("23503") => return WriteError::UnknownUser(coupon.user_id.as_deref().unwrap_or_default().to_owned()),
            Some("23514" | "22003" | "22P02") => return WriteError::Refused(db.message().to_owned()),
            _ => {}
        }
    }
    WriteError::from(err)
}

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

/// One `validation_logs` row as the admin API shows it; amounts as exact decimal text.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LoggedValidation {
    pub id: i64,
    pub coupon_code: String,
    pub coupon_id: Option<i64>,
    pub user_id: String,
    pub order_id: Option<String>,
    pub order_value: String,
    pub is_valid: bool,
    pub validation_reason: Option<String>,
    pub discount_applied: String,
    pub final_amount: String,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub response_time_ms: Option<String>,
    pub validated_at: DateTime<Utc>,
}

/// The latest `limit` validation log rows, newest first (by id: rows get ids in the order
/// they are written, which is the order they were validated in, spilled rows aside).
pub async fn recent_validations(pool: &PgPool, limit: i64) -> Result<Vec<LoggedValidation>, Error> {
    let rows = sqlx::query_as(
        "SELECT id, coupon_code, coupon_id, user_id, order_id, order_value::text AS order_value, is_valid, \
         validation_reason, discount_applied::text AS discount_applied, final_amount::text AS final_amount, \
         host(ip_address) AS ip_address, user_agent, response_time_ms::text AS response_time_ms, validated_at \
         FROM validation_logs ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}
