//! The admin API behind `Authorization: Bearer $ADMIN_TOKEN`: cache control, coupon CRUD,
//! validation statistics. Writes go to PostgreSQL and reach the cache by NOTIFY, like
//! everyone else's.

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use hyper::header::AUTHORIZATION;
use hyper::{HeaderMap, StatusCode};
use serde::Serialize;
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;

use crate::db::coupons::{self, LoggedValidation, WriteError};
use crate::db::{self, listener, load};
use crate::domain::coupon::{Coupon, Discount, normalize_code};
use crate::domain::money::Cents;
use crate::domain::rules::Usage;
use crate::http::State;
use crate::http::coupon_input::CouponPatch;
use crate::http::error::ApiError;
use crate::http::response::{self, HttpResponse, money};

/// How long an admin write waits for its NOTIFY to reach this instance's cache, so that the
/// next request here sees the change.
const CACHE_SYNC_TIMEOUT: Duration = Duration::from_secs(2);
/// Default and largest `limit` of the recent validations.
const RECENT_DEFAULT: i64 = 50;
const RECENT_MAX: i64 = 1000;

/// Whether the request carries the configured token. No token configured: nobody is.
pub fn authorized(state: &State, headers: &HeaderMap) -> bool {
    let expected = state.admin_token.expose().as_bytes();
    if expected.is_empty() {
        return false;
    }
    let Some(given) = headers.get(AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer ")) else {
        return false;
    };
    // Constant time for equal lengths; the length itself is not a secret worth hiding.
    bool::from(given.ct_eq(expected))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReloadResponse {
    coupons: usize,
    duration_ms: u64,
}

/// `POST /admin/cache/reload`.
pub async fn reload(state: &State) -> Result<HttpResponse, ApiError> {
    let report = listener::reload(&state.pool, &state.cache, &state.metrics).await.map_err(database_error)?;
    let body = ReloadResponse { coupons: report.coupons, duration_ms: report.duration.as_millis() as u64 };
    Ok(response::json(StatusCode::OK, &body))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatsResponse {
    coupons: usize,
    coupons_with_usage: usize,
    reloads: u64,
    last_reload_at: Option<String>,
    database: &'static str,
    listener: ListenerStats,
    queues: QueueStats,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListenerStats {
    state: &'static str,
    notifications_applied: u64,
    reconnects: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QueueStats {
    /// Validation log rows in memory, waiting for their batch.
    validation_logs: usize,
    /// Journal records (redemptions, releases, spilled log rows) not yet in PostgreSQL.
    journal: u64,
}

/// `GET /admin/cache/stats`.
pub fn stats(state: &State) -> HttpResponse {
    let body = StatsResponse {
        coupons: state.cache.coupon_count(),
        coupons_with_usage: state.cache.usage_count(),
        reloads: state.cache.reload_count(),
        last_reload_at: state.cache.last_reload_at().map(rfc3339),
        database: if state.database.is_up() { "up" } else { "down" },
        listener: ListenerStats {
            state: state.listener.state().as_str(),
            notifications_applied: state.listener.notifications_applied(),
            reconnects: state.listener.reconnects(),
        },
        queues: QueueStats { validation_logs: state.validation_log.queue_size(), journal: state.journal.backlog() },
    };
    response::json(StatusCode::OK, &body)
}

/// A coupon as the admin API shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CouponView<'a> {
    id: i64,
    code: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    status: &'static str,
    discount_type: &'static str,
    #[serde(serialize_with = "money")]
    discount_value: Cents,
    #[serde(serialize_with = "optional_money")]
    max_discount: Option<Cents>,
    #[serde(serialize_with = "money")]
    min_order_value: Cents,
    usage_limit: Option<u32>,
    per_user_limit: Option<u32>,
    user_id: Option<&'a str>,
    valid_from: Option<String>,
    valid_until: Option<String>,
    version: i64,
    usage: UsageView,
    /// Whether this instance's cache already serves this version.
    cached: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UsageView {
    /// Live (unreleased) redemptions, as this instance counts them.
    total: u32,
}

fn view<'a>(state: &State, coupon: &'a Coupon) -> CouponView<'a> {
    let (discount_type, discount_value, max_discount) = match coupon.discount {
        Discount::Percentage { hundredths, cap } => {
            ("percentage", Cents::new(u64::from(hundredths)).unwrap_or(Cents::ZERO), cap)
        }
        Discount::Fixed(amount) => ("fixed", amount, None),
    };
    let cached_version = state.cache.catalog().get_by_id(coupon.id).map(|e| e.coupon.version);
    CouponView {
        id: coupon.id,
        code: &coupon.code,
        kind: coupon.kind.as_str(),
        status: coupon.status.as_str(),
        discount_type,
        discount_value,
        max_discount,
        min_order_value: coupon.min_order_value,
        usage_limit: coupon.usage_limit,
        per_user_limit: coupon.per_user_limit,
        user_id: coupon.user_id.as_deref(),
        valid_from: coupon.valid_from.map(rfc3339),
        valid_until: coupon.valid_until.map(rfc3339),
        version: coupon.version,
        usage: UsageView { total: state.cache.usage_for(coupon.id).total() },
        cached: cached_version.is_some_and(|v| v >= coupon.version),
    }
}

/// `POST /admin/coupons`.
pub async fn create(state: &State, body: Bytes) -> Result<HttpResponse, ApiError> {
    let coupon = CouponPatch::parse(&body)?.into_new_coupon()?;
    let created = coupons::insert(&state.pool, &coupon).await.map_err(write_error)?;
    wait_until_cached(state, &created).await;
    Ok(response::json(StatusCode::CREATED, &view(state, &created)))
}

/// `GET /admin/coupons/{code}`: the definition from PostgreSQL, usage from the counters.
pub async fn read(state: &State, code: &str) -> Result<HttpResponse, ApiError> {
    let code = normalize_code(code);
    let coupon = load::coupon_by_code(&state.pool, &code).await.map_err(database_error)?;
    let coupon = coupon.ok_or_else(|| ApiError::CouponNotFound { code: code.into_owned() })?;
    Ok(response::json(StatusCode::OK, &view(state, &coupon)))
}

/// `PATCH /admin/coupons/{code}`.
pub async fn patch(state: &State, code: &str, body: Bytes) -> Result<HttpResponse, ApiError> {
    let patch = CouponPatch::parse(&body)?;
    let code = normalize_code(code);
    let mut tx = state.pool.begin().await.map_err(|err| database_error(err.into()))?;
    let current = coupons::lock_by_code(&mut tx, &code).await.map_err(write_error)?;
    let next = patch.apply_to(&current)?;
    let updated = coupons::update(&mut tx, &next).await.map_err(write_error)?;
    tx.commit().await.map_err(|err| database_error(err.into()))?;
    wait_until_cached(state, &updated).await;
    Ok(response::json(StatusCode::OK, &view(state, &updated)))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CouponStatsResponse {
    code: String,
    total: i64,
    valid: i64,
    invalid: i64,
    by_reason: serde_json::Map<String, serde_json::Value>,
}

/// `GET /admin/coupons/{code}/stats`.
pub async fn coupon_stats(state: &State, code: &str) -> Result<HttpResponse, ApiError> {
    let code = normalize_code(code).into_owned();
    if load::coupon_by_code(&state.pool, &code).await.map_err(database_error)?.is_none() {
        return Err(ApiError::CouponNotFound { code });
    }
    let stats = coupons::validation_stats(&state.pool, &code).await.map_err(database_error)?;
    let by_reason = stats.by_reason.into_iter().map(|(reason, n)| (reason, n.into())).collect();
    let body = CouponStatsResponse {
        code,
        total: stats.total,
        valid: stats.valid,
        invalid: stats.total - stats.valid,
        by_reason,
    };
    Ok(response::json(StatusCode::OK, &body))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RecentValidation<'a> {
    id: i64,
    coupon_code: &'a str,
    coupon_id: Option<i64>,
    user_id: &'a str,
    order_id: Option<&'a str>,
    order_value: &'a RawValue,
    is_valid: bool,
    reason: Option<&'a str>,
    discount_applied: &'a RawValue,
    final_amount: &'a RawValue,
    ip_address: Option<&'a str>,
    user_agent: Option<&'a str>,
    response_time_ms: Option<&'a RawValue>,
    validated_at: String,
}

#[derive(Serialize)]
struct RecentResponse<'a> {
    validations: Vec<RecentValidation<'a>>,
}

/// `GET /admin/validations/recent?limit=N`: newest first; rows still queued are not shown.
pub async fn recent(state: &State, query: Option<&str>) -> Result<HttpResponse, ApiError> {
    let limit = recent_limit(query)?;
    let rows = coupons::recent_validations(&state.pool, limit).await.map_err(database_error)?;
    let validations = rows.iter().map(recent_view).collect::<Result<_, _>>()?;
    Ok(response::json(StatusCode::OK, &RecentResponse { validations }))
}

fn recent_limit(query: Option<&str>) -> Result<i64, ApiError> {
    let invalid =
        || ApiError::InvalidField { field: "limit", problem: format!("must be a whole number from 1 to {RECENT_MAX}") };
    let mut limit = RECENT_DEFAULT;
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        if let Some(value) = pair.strip_prefix("limit=") {
            limit = value.parse().map_err(|_| invalid())?;
        }
    }
    if !(1..=RECENT_MAX).contains(&limit) {
        return Err(invalid());
    }
    Ok(limit)
}

fn recent_view(row: &LoggedValidation) -> Result<RecentValidation<'_>, ApiError> {
    Ok(RecentValidation {
        id: row.id,
        coupon_code: &row.coupon_code,
        coupon_id: row.coupon_id,
        user_id: &row.user_id,
        order_id: row.order_id.as_deref(),
        order_value: number(&row.order_value)?,
        is_valid: row.is_valid,
        reason: row.validation_reason.as_deref(),
        discount_applied: number(&row.discount_applied)?,
        final_amount: number(&row.final_amount)?,
        ip_address: row.ip_address.as_deref(),
        user_agent: row.user_agent.as_deref(),
        response_time_ms: row.response_time_ms.as_deref().map(number).transpose()?,
        validated_at: rfc3339(row.validated_at),
    })
}

/// Waits (bounded) until the NOTIFY of a write has been applied here.
async fn wait_until_cached(state: &State, coupon: &Coupon) {
    let deadline = Instant::now() + CACHE_SYNC_TIMEOUT;
    while Instant::now() < deadline {
        let cached = state.cache.catalog().get_by_id(coupon.id).map(|e| e.coupon.version);
        if cached.is_some_and(|v| v >= coupon.version) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tracing::warn!(id = coupon.id, version = coupon.version, "admin write not yet in the cache");
}

/// NUMERIC text is a valid JSON number; keeping it raw keeps it exact. Trailing zeros
/// of the scale are dropped (`20.00` → `20`, `12.50` → `12.5`), as the rest of the API
/// writes money.
fn number(text: &str) -> Result<&RawValue, ApiError> {
    let canonical = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { text };
    serde_json::from_str::<&RawValue>(canonical).map_err(|_| ApiError::Internal)
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn optional_money<S: serde::Serializer>(amount: &Option<Cents>, serializer: S) -> Result<S::Ok, S::Error> {
    match amount {
        Some(amount) => money(amount, serializer),
        None => serializer.serialize_none(),
    }
}

fn write_error(err: WriteError) -> ApiError {
    match err {
        WriteError::DuplicateCode(_) => ApiError::Conflict { message: err.to_string() },
        WriteError::UnknownUser(_) => ApiError::InvalidField { field: "userId", problem: "does not exist".into() },
        WriteError::NotFound(code) => ApiError::CouponNotFound { code },
        WriteError::Refused(message) => ApiError::InvalidJson { message },
        WriteError::Database(err) => database_error(err),
    }
}

fn database_error(err: db::Error) -> ApiError {
    match &err {
        db::Error::Sqlx(sqlx_err) if db::is_transient(sqlx_err) => {
            tracing::warn!(error = %err, "admin request: database unavailable");
            ApiError::DatabaseUnavailable
        }
        _ => {
            tracing::error!(error = %err, "admin request failed");
            ApiError::Internal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_lose_only_trailing_zeros() {
        for (text, expected) in [("20.00", "20"), ("12.50", "12.5"), ("0.027", "0.027"), ("100", "100"), ("0.00", "0")]
        {
            assert_eq!(number(text).unwrap().get(), expected);
        }
    }

    #[test]
    fn recent_limits() {
        for (query, expected) in [(None, Some(50)), (Some("limit=1"), Some(1)), (Some("x=1&limit=1000"), Some(1000))] {
            assert_eq!(recent_limit(query).ok(), expected, "{query:?}");
        }
        for query in ["limit=0", "limit=1001", "limit=-1", "limit=ten", "limit="] {
            assert!(recent_limit(Some(query)).is_err(), "{query}");
        }
    }
}
