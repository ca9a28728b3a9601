//! `/health`, `/health/ready` and `/metrics`.

use chrono::Utc;
use hyper::StatusCode;
use hyper::header::HeaderValue;
use serde::Serialize;

use crate::db::listener::ListenerState;
use crate::engine::standing::StandingState;
use crate::http::State;
use crate::http::call::Call;
use crate::http::error::ApiError;
use crate::http::response::{self, HttpResponse, rfc3339};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthResponse {
    status: &'static str,
    validation_log_queue_size: usize,
    database: &'static str,
    listener: &'static str,
    journal: &'static str,
    shipping: &'static str,
    /// Whether this instance may spend its quota leases (`engine::standing`).
    instance: &'static str,
    decides: &'static str,
    /// Journal records PostgreSQL refused for good, waiting for an operator.
    rejected_records: u64,
    /// The disk budgets spent: `disk` (the journal's last write found the disk full),
    /// `journal.reserved_bytes` (the disk has no more free space than the journal keeps for
    /// uses: validation rows that do not fit in memory are dropped),
    /// `validation_log.spill_max_bytes` (they are dropped for the spill's own budget).
    budgets_spent: Vec<&'static str>,
    coupons: usize,
    uptime: f64,
    timestamp: String,
}

/// `GET /health`: `degraded` while anything needs attention; validations keep answering.
pub async fn health(state: &State, _call: Call) -> Result<HttpResponse, ApiError> {
    let ops = &state.ops;
    let database_up = ops.database.is_up();
    let listener = ops.listener.state();
    let journal_ok = state.engine.journal().is_healthy();
    let journal_full = state.engine.journal().is_full();
    let budgets_spent: Vec<&'static str> = [
        (journal_full, "disk"),
        (ops.validation_log.disk_budget_spent(), "journal.reserved_bytes"),
        (ops.validation_log.spill_budget_spent(), "validation_log.spill_max_bytes"),
    ]
    .into_iter()
    .filter_map(|(spent, name)| spent.then_some(name))
    .collect();
    let rejected = ops.rejected.len();
    let shipping_ok = !ops.shipping.is_stalled();
    let standing = state.engine.cluster().map_or(StandingState::Live, |cluster| cluster.standing.state());
    let healthy = database_up
        && listener == ListenerState::Listening
        && journal_ok
        && shipping_ok
        && rejected == 0
        && budgets_spent.is_empty()
        && standing == StandingState::Live;
    let body = HealthResponse {
        status: if healthy { "healthy" } else { "degraded" },
        validation_log_queue_size: ops.validation_log.queue_size(),
        database: if database_up { "up" } else { "down" },
        listener: listener.as_str(),
        journal: match (journal_ok, journal_full) {
            (true, _) => "ok",
            (false, true) => "full",
            (false, false) => "failing",
        },
        shipping: if shipping_ok { "ok" } else { "stalled" },
        instance: standing.as_str(),
        decides: state.engine.mode().as_str(),
        rejected_records: rejected,
        budgets_spent,
        coupons: state.engine.catalog().load().coupon_count(),
        uptime: (ops.started.elapsed().as_millis() as f64) / 1000.0,
        timestamp: rfc3339(Utc::now()),
    };
    Ok(response::json(StatusCode::OK, &body))
}

#[derive(Serialize)]
struct ReadyResponse {
    ready: bool,
}

/// `GET /health/ready`: 200 once the catalog and the ledger are loaded, 503 before.
pub async fn ready(state: &State, _call: Call) -> Result<HttpResponse, ApiError> {
    let ready = state.engine.catalog().is_ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok(response::json(status, &ReadyResponse { ready }))
}

/// `GET /metrics`: gauges that describe state are set now, at scrape time.
pub async fn metrics(state: &State, _call: Call) -> Result<HttpResponse, ApiError> {
    let metrics = &state.metrics;
    let engine = &state.engine;
    let catalog = engine.catalog();
    metrics.cache_coupons.set(catalog.load().coupon_count() as f64);
    metrics.validation_logs.rows.queue_depth.set(state.ops.validation_log.queue_size() as f64);
    let backlog = engine.journal().backlog() as f64;
    metrics.coupon_usage.queue_depth.set(backlog);
    metrics.journal_backlog.set(backlog);
    metrics.journal_rejected_pending.set(state.ops.rejected.len() as f64);
    metrics.live_holds.set(engine.live_holds() as f64);
    metrics.ledger_remembered.set(engine.ledger().remembered() as f64);
    metrics.ledger_forgotten.set(engine.forgotten().len() as f64);
    if let Some(cluster) = engine.cluster() {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = cluster.leases.stats();
        let quota = &metrics.quota;
        quota.grants.absolute(stats.grants.load(Relaxed));
        quota.empty_grants.absolute(stats.empty_grants.load(Relaxed));
        quota.failed_grants.absolute(stats.failed_grants.load(Relaxed));
        quota.returns.absolute(stats.returns.load(Relaxed));
        quota.units_held.set(cluster.leases.held() as f64);
    }
    let current = catalog.load();
    let (mut uses, mut spent, mut exhausted) = (0u64, 0u64, 0u64);
    for campaign in current.campaigns() {
        let standing = engine.campaign_standing(campaign);
        uses += u64::from(standing.used);
        spent += standing.spent.get();
        exhausted += u64::from(standing.exhausted);
    }
    let campaigns = &metrics.campaigns;
    campaigns.count.set(current.campaigns().count() as f64);
    campaigns.uses.set(uses as f64);
    campaigns.spent.set(spent as f64 / 100.0);
    campaigns.exhausted.set(exhausted as f64);
    campaigns.bulk_codes.set(current.codes().len() as f64);
    drop(current);
    if let Some(last) = catalog.last_reload_at() {
        metrics.cache_age.set((Utc::now() - last).num_milliseconds() as f64 / 1000.0);
    }
    let (size, idle) = (state.pool.size(), state.pool.num_idle() as u32);
    metrics.pool_idle.set(f64::from(idle));
    metrics.pool_in_use.set(f64::from(size.saturating_sub(idle)));
    metrics.pool_max.set(f64::from(state.pool.options().get_max_connections()));
    let text = metrics.render();
    Ok(response::with_body(StatusCode::OK, HeaderValue::from_static("text/plain; version=0.0.4"), text.into()))
}
