//! The admin API behind `Authorization: Bearer $ADMIN_TOKEN`: cache control, coupon CRUD,
//! validation statistics, journal records set aside. Writes go to PostgreSQL and reach the
//! catalog by NOTIFY, like everyone else's; the call waits (bounded) until this instance
//! serves them.

use std::time::Duration;

use hyper::StatusCode;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::db::coupons::{self, WriteError};
use crate::db::logs::{self, LoggedValidation};
use crate::db::{self, catalog, listener};
use crate::domain::cart_fields;
use crate::domain::coupon::{CampaignId, Coupon, normalize_code};
use crate::domain::money::Cents;
use crate::engine::ledger::Tally;
use crate::http::State;
use crate::http::call::Call;
use crate::http::coupon_input::CouponPatch;
use crate::http::error::ApiError;
use crate::http::response::{self, HttpResponse, money, optional_money, rfc3339};

/// How long an admin write waits for its NOTIFY to reach this instance's catalog, so that
/// the next request here sees the change.
pub(crate) const CACHE_SYNC_TIMEOUT: Duration = Duration::from_secs(2);
/// Default and largest `limit` of the recent validations.
const RECENT_DEFAULT: i64 = 50;
const RECENT_MAX: i64 = 1000;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReloadResponse {
    coupons: usize,
    duration_ms: u64,
}

/// `POST /admin/cache/reload`.
pub async fn reload(state: &State, _call: Call) -> Result<HttpResponse, ApiError> {
    let report = listener::reload(&state.pool, &state.engine, &state.metrics).await.map_err(database_error)?;
    let body = ReloadResponse { coupons: report.coupons, duration_ms: report.duration.as_millis() as u64 };
    Ok(response::json(StatusCode::OK, &body))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatsResponse<'a> {
    coupons: usize,
    coupons_with_usage: usize,
    campaigns: usize,
    bulk_codes: usize,
    reloads: u64,
    last_reload_at: Option<String>,
    database: &'static str,
    listener: ListenerStats,
    queues: QueueStats,
    ledger: LedgerStats,
    rejected_records: u64,
    instance: Option<InstanceStats<'a>>,
}

/// This instance among several: who it is, and how often a use waited on PostgreSQL.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InstanceStats<'a> {
    id: &'a str,
    epoch: i64,
    /// Uses taken from a lease in memory, and after waiting for a grant.
    lease_takes_local: u64,
    lease_takes_waited: u64,
    grants: u64,
    empty_grants: u64,
    failed_grants: u64,
    units_returned: u64,
    units_held: u64,
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
    /// Journal records (uses, releases, spilled log rows) not yet in PostgreSQL.
    journal: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LedgerStats {
    /// Redemptions and holds remembered, released ones included.
    remembered: usize,
    live_holds: i64,
}

/// `GET /admin/cache/stats`.
pub async fn stats(state: &State, _call: Call) -> Result<HttpResponse, ApiError> {
    let engine = &state.engine;
    let catalog = engine.catalog().load();
    let ops = &state.ops;
    let body = StatsResponse {
        coupons: catalog.coupon_count(),
        coupons_with_usage: engine.ledger().coupons_in_use(),
        campaigns: catalog.campaigns().count(),
        bulk_codes: catalog.codes().len(),
        reloads: engine.catalog().reload_count(),
        last_reload_at: engine.catalog().last_reload_at().map(rfc3339),
        database: if ops.database.is_up() { "up" } else { "down" },
        listener: ListenerStats {
            state: ops.listener.state().as_str(),
            notifications_applied: ops.listener.notifications_applied(),
            reconnects: ops.listener.reconnects(),
        },
        queues: QueueStats { validation_logs: ops.validation_log.queue_size(), journal: engine.journal().backlog() },
        ledger: LedgerStats { remembered: engine.ledger().remembered(), live_holds: engine.live_holds() },
        rejected_records: ops.rejected.len(),
        instance: engine.cluster().map(|cluster| {
            use std::sync::atomic::Ordering::Relaxed;
            let stats = cluster.leases.stats();
            InstanceStats {
                id: &cluster.instance,
                epoch: cluster.epoch,
                lease_takes_local: stats.local.load(Relaxed),
                lease_takes_waited: stats.waited.load(Relaxed),
                grants: stats.grants.load(Relaxed),
                empty_grants: stats.empty_grants.load(Relaxed),
                failed_grants: stats.failed_grants.load(Relaxed),
                units_returned: stats.units_returned.load(Relaxed),
                units_held: cluster.leases.held(),
            }
        }),
    };
    Ok(response::json(StatusCode::OK, &body))
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
    campaign: Option<String>,
    target: &'static str,
    scope: Option<Box<RawValue>>,
    min_quantity: Option<u32>,
    min_order_basis: &'static str,
    allocation: &'static str,
    #[serde(rename = "buyXGetY")]
    buy_x_get_y: Option<Box<RawValue>>,
    currency: Option<&'a str>,
    currency_options: Option<Box<RawValue>>,
    priority: i32,
    combines_with: Vec<&'static str>,
    version: i64,
    usage: UsageView,
    /// Whether this instance's catalog already serves this version.
    cached: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UsageView {
    /// Live redemptions and holds, as this instance counts them.
    total: u32,
    /// Of which live holds.
    holds: u32,
}

fn view<'a>(state: &State, coupon: &'a Coupon) -> CouponView<'a> {
    let (discount_type, discount_value, max_discount) = coupon.discount.parts();
    let catalog = state.engine.catalog().load();
    let cached_version = catalog.coupon_by_id(coupon.id).map(|c| c.version);
    let campaign = coupon.campaign_id.and_then(|id| catalog.campaign(id)).map(|c| c.name.to_string());
    CouponView {
        id: coupon.id,
        code: &coupon.code,
        kind: coupon.kind.as_str(),
        status: coupon.status.as_str(),
        discount_type: discount_type.as_str(),
        // A percentage is shown as its number of percent: the same hundredths.
        discount_value: Cents::new(discount_value).unwrap_or(Cents::ZERO),
        max_discount,
        min_order_value: coupon.min_order_value,
        usage_limit: coupon.usage_limit,
        per_user_limit: coupon.per_user_limit,
        user_id: coupon.user_id.as_deref(),
        valid_from: coupon.valid_from.map(rfc3339),
        valid_until: coupon.valid_until.map(rfc3339),
        campaign,
        target: coupon.target.as_str(),
        scope: coupon.scope.as_deref().map(|s| json(cart_fields::scope_json(s))),
        min_quantity: coupon.min_quantity,
        min_order_basis: coupon.min_order_basis.as_str(),
        allocation: coupon.discount.allocation().as_str(),
        buy_x_get_y: coupon.discount.buy_x_get_y().map(|b| json(cart_fields::buy_x_get_y_json(b))),
        currency: coupon.currency.as_ref().map(|c| c.code()),
        currency_options: coupon.currency_options.as_deref().map(|o| json(cart_fields::currency_options_json(o))),
        priority: coupon.priority,
        combines_with: coupon.combines_with.iter().map(|class| class.as_str()).collect(),
        version: coupon.version,
        usage: UsageView {
            total: state.engine.ledger().count(Tally::Coupon(coupon.id)).live,
            holds: state.engine.ledger().count(Tally::CouponHolds(coupon.id)).live,
        },
        cached: cached_version.is_some_and(|v| v >= coupon.version),
    }
}

/// JSON text the domain wrote, embedded as it is.
fn json(text: String) -> Box<RawValue> {
    RawValue::from_string(text).unwrap_or_else(|_| RawValue::from_string("null".into()).expect("JSON null"))
}

/// The id of the campaign a coupon body names.
async fn campaign_id(state: &State, name: Option<&str>) -> Result<Option<CampaignId>, ApiError> {
    let Some(name) = name else { return Ok(None) };
    match catalog::campaign_by_name(&state.pool, name).await.map_err(database_error)? {
        Some(campaign) => Ok(Some(campaign.id)),
        None => Err(ApiError::InvalidField { field: "campaign", problem: "does not exist".into() }),
    }
}

/// `POST /admin/coupons`.
pub(crate) async fn create_coupon(state: &State, call: Call) -> Result<HttpResponse, ApiError> {
    let patch = CouponPatch::parse(&call.body)?;
    let campaign = campaign_id(state, patch.campaign.clone().flatten().as_deref()).await?;
    let coupon = Coupon { campaign_id: campaign, ..patch.into_new_coupon()? };
    let created = coupons::insert(&state.pool, &coupon).await.map_err(write_error)?;
    wait_until_cached(state, &created).await;
    Ok(response::json(StatusCode::CREATED, &view(state, &created)))
}

/// `GET /admin/coupons/{code}`: the definition from PostgreSQL, usage from the ledger.
pub(crate) async fn read_coupon(state: &State, call: Call) -> Result<HttpResponse, ApiError> {
    let code = normalize_code(&call.params[0]).into_owned();
    let coupon = catalog::coupon_by_code(&state.pool, &code).await.map_err(database_error)?;
    let coupon = coupon.ok_or(ApiError::Missing { what: "coupon", key: "code", value: code })?;
    Ok(response::json(StatusCode::OK, &view(state, &coupon)))
}

/// `PATCH /admin/coupons/{code}`.
pub(crate) async fn patch_coupon(state: &State, call: Call) -> Result<HttpResponse, ApiError> {
    let patch = CouponPatch::parse(&call.body)?;
    let code = normalize_code(&call.params[0]).into_owned();
    let campaign = match &patch.campaign {
        Some(name) => Some(campaign_id(state, name.as_deref()).await?),
        None => None,
    };
    let updated = coupons::update(&state.pool, &code, |current| {
        let next = patch.apply_to(current)?;
        Ok::<_, ApiError>(Coupon { campaign_id: campaign.unwrap_or(next.campaign_id), ..next })
    })
    .await
    .map_err(write_error)??;
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
pub(crate) async fn coupon_stats(state: &State, call: Call) -> Result<HttpResponse, ApiError> {
    let code = normalize_code(&call.params[0]).into_owned();
    if catalog::coupon_by_code(&state.pool, &code).await.map_err(database_error)?.is_none() {
        return Err(ApiError::Missing { what: "coupon", key: "code", value: code });
    }
    let stats = logs::validation_stats(&state.pool, &code).await.map_err(database_error)?;
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
    order_value: Box<RawValue>,
    is_valid: bool,
    reason: Option<&'a str>,
    discount_applied: Box<RawValue>,
    final_amount: Box<RawValue>,
    ip_address: Option<&'a str>,
    user_agent: Option<&'a str>,
    response_time_ms: Option<Box<RawValue>>,
    validated_at: String,
}

#[derive(Serialize)]
struct RecentResponse<'a> {
    validations: Vec<RecentValidation<'a>>,
}

/// `GET /admin/validations/recent?limit=N`: newest first; rows still queued are not shown.
pub async fn recent(state: &State, call: Call) -> Result<HttpResponse, ApiError> {
    let limit = limit_param(call.query.as_deref())?;
    let rows = logs::recent_validations(&state.pool, limit).await.map_err(database_error)?;
    let validations = rows.iter().map(recent_view).collect::<Result<_, _>>()?;
    Ok(response::json(StatusCode::OK, &RecentResponse { validations }))
}

pub(crate) fn limit_param(query: Option<&str>) -> Result<i64, ApiError> {
    let invalid =
        || ApiError::InvalidField { field: "limit", problem: format!("must be a whole number from 1 to {RECENT_MAX}") };
    let mut limit = RECENT_DEFAULT;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if key == "limit" {
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
        order_value: number(row.order_value)?,
        is_valid: row.is_valid,
        reason: row.validation_reason.as_deref(),
        discount_applied: number(row.discount_applied)?,
        final_amount: number(row.final_amount)?,
        ip_address: row.ip_address.as_deref(),
        user_agent: row.user_agent.as_deref(),
        response_time_ms: row.response_time_ms.map(number).transpose()?,
        validated_at: rfc3339(row.validated_at),
    })
}

/// A NUMERIC as an exact JSON number without trailing zeros (`20.00` → `20`).
fn number(value: Decimal) -> Result<Box<RawValue>, ApiError> {
    RawValue::from_string(value.normalize().to_string()).map_err(|_| ApiError::Internal)
}

#[derive(Serialize)]
struct RejectedResponse {
    records: Vec<crate::journal::rejected::SetAside>,
}

/// `GET /admin/journal/rejected`: the journal records PostgreSQL refused for good.
pub async fn rejected(state: &State, _call: Call) -> Result<HttpResponse, ApiError> {
    let records = state.ops.rejected.list().map_err(|err| {
        tracing::error!(error = %err, "cannot read the set-aside records");
        ApiError::Internal
    })?;
    Ok(response::json(StatusCode::OK, &RejectedResponse { records }))
}

#[derive(Serialize)]
struct RetryResponse {
    requeued: usize,
}

/// `POST /admin/journal/rejected/retry`: puts every set-aside record back into the journal
/// (after the cause was fixed); one refused again is set aside again.
pub(crate) async fn retry_rejected(state: &State, _call: Call) -> Result<HttpResponse, ApiError> {
    let journal = state.engine.journal();
    let requeued = state
        .ops
        .rejected
        .retry(|payload| async move { journal.append(&payload).await.map_err(std::io::Error::other) })
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "cannot requeue the set-aside records");
            ApiError::JournalUnavailable
        })?;
    Ok(response::json(StatusCode::OK, &RetryResponse { requeued }))
}

/// Waits (bounded) until the NOTIFY of a write has been applied here.
async fn wait_until_cached(state: &State, coupon: &Coupon) {
    if !state.engine.catalog().wait_for_coupon(coupon.id, coupon.version, CACHE_SYNC_TIMEOUT).await {
        tracing::warn!(id = coupon.id, version = coupon.version, "admin write not yet in the cache");
    }
}

pub(crate) fn write_error(err: WriteError) -> ApiError {
    match err {
        WriteError::DuplicateCode(_) => ApiError::Conflict { message: err.to_string() },
        WriteError::UnknownUser(_) => ApiError::InvalidField { field: "userId", problem: "does not exist".into() },
        WriteError::NotFound(code) => ApiError::Missing { what: "coupon", key: "code", value: code },
        WriteError::Refused => ApiError::Refused,
        WriteError::Database(err) => database_error(err),
    }
}

pub(crate) fn database_error(err: db::Error) -> ApiError {
    if err.is_transient() {
        tracing::warn!(error = %err, "admin request: database unavailable");
        ApiError::DatabaseUnavailable
    } else {
        tracing::error!(error = %err, "admin request failed");
        ApiError::Internal
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    #[test]
    fn numbers_lose_only_trailing_zeros() {
        for (text, expected) in [("20.00", "20"), ("12.50", "12.5"), ("0.027", "0.027"), ("100", "100"), ("0.00", "0")]
        {
            assert_eq!(number(Decimal::from_str(text).unwrap()).unwrap().get(), expected);
        }
    }

    #[test]
    fn recent_limits() {
        for (query, expected) in [(None, Some(50)), (Some("limit=1"), Some(1)), (Some("x=1&limit=1000"), Some(1000))] {
            assert_eq!(limit_param(query).ok(), expected, "{query:?}");
        }
        for query in ["limit=0", "limit=1001", "limit=-1", "limit=ten", "limit="] {
            assert!(limit_param(Some(query)).is_err(), "{query}");
        }
    }
}
