//! Routing by `(method, path)` and the handlers of the public and operational routes.

use std::net::IpAddr;
use std::time::Instant;

use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HeaderValue, USER_AGENT};
use hyper::{Request, StatusCode};
use serde::Serialize;

use crate::db::validation_log::ValidationLogRow;
use crate::domain::rules::{Attempt, Reason};
use crate::http::State;
use crate::http::error::ApiError;
use crate::http::request::ValidateRequest;
use crate::http::response::{self, HttpResponse, ValidateResponse};
use crate::metrics::Route;

/// Largest request body accepted (API.md: bodies over 16 KiB get 413).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Longest `User-Agent` kept in the validation log.
const MAX_USER_AGENT_LEN: usize = 512;

/// Answers one request and records its metrics.
pub async fn handle(state: &State, req: Request<Incoming>, peer: IpAddr) -> HttpResponse {
    let started = Instant::now();
    let (route, result) = dispatch(state, req, peer, started).await;
    let response = result.unwrap_or_else(|err| response::error(&err));
    state.metrics.record_request(route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

async fn dispatch(
    state: &State,
    req: Request<Incoming>,
    peer: IpAddr,
    started: Instant,
) -> (Route, Result<HttpResponse, ApiError>) {
    let path = req.uri().path();
    let (route, allow) = match path {
        "/api/coupons/validate" => (Route::Validate, "POST"),
        "/health" => (Route::Health, "GET"),
        "/health/ready" => (Route::Ready, "GET"),
        "/metrics" => (Route::Metrics, "GET"),
        _ => return (Route::Unmatched, Err(ApiError::NotFound)),
    };
    if req.method().as_str() != allow {
        return (route, Err(ApiError::MethodNotAllowed { allow }));
    }
    let result = match route {
        Route::Validate => validate(state, req, peer, started).await,
        Route::Health => Ok(health(state)),
        Route::Ready => Ok(ready(state)),
        Route::Metrics => Ok(metrics(state)),
        Route::Unmatched => Err(ApiError::NotFound),
    };
    (route, result)
}

/// Reads the whole body, refusing more than [`MAX_BODY_BYTES`] without reading it all.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let too_large = ApiError::PayloadTooLarge { limit: MAX_BODY_BYTES };
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(too_large);
    }
    match Limited::new(req.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(too_large),
        Err(_) => Err(ApiError::BadBody),
    }
}

async fn validate(
    state: &State,
    req: Request<Incoming>,
    peer: IpAddr,
    started: Instant,
) -> Result<HttpResponse, ApiError> {
    if !state.cache.is_ready() {
        return Err(ApiError::NotReady);
    }
    let user_agent = req.headers().get(USER_AGENT).and_then(user_agent);
    let body = read_body(req).await?;
    let input = ValidateRequest::parse(&body)?;
    let attempt =
        Attempt { user_id: &input.user_id, order_value: input.order_value, order_id: input.order_id.as_deref() };
    let now = Utc::now();
    let validation = state.cache.validate(&input.code, &attempt, now);
    let body = ValidateResponse::new(&input.code, input.order_value, validation.decision);
    state.metrics.record_validation(body.reason);
    let response = response::json(StatusCode::OK, &body);
    let (reason, discount, final_amount) = (body.reason, body.discount, body.final_amount);
    state.validation_log.record(ValidationLogRow {
        coupon_code: input.code.into_owned(),
        coupon_id: validation.coupon_id,
        user_id: input.user_id.into_owned(),
        order_id: input.order_id.map(|o| o.into_owned()),
        order_value: input.order_value,
        is_valid: reason.is_none(),
        reason: reason.map(Reason::as_str),
        discount,
        final_amount,
        ip_address: Some(peer),
        user_agent,
        response_time_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        validated_at: now,
    });
    Ok(response)
}

/// The header's visible-ASCII text, cut to a sane length.
fn user_agent(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    Some(text[..text.len().min(MAX_USER_AGENT_LEN)].to_owned())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthResponse {
    status: &'static str,
    validation_log_queue_size: usize,
    database: &'static str,
    coupons: usize,
    uptime: f64,
    timestamp: String,
}

fn health(state: &State) -> HttpResponse {
    let database_up = state.database.is_up();
    let body = HealthResponse {
        status: if database_up { "healthy" } else { "degraded" },
        validation_log_queue_size: state.validation_log.queue_size(),
        database: if database_up { "up" } else { "down" },
        coupons: state.cache.coupon_count(),
        uptime: (state.started.elapsed().as_millis() as f64) / 1000.0,
        timestamp: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
    };
    response::json(StatusCode::OK, &body)
}

#[derive(Serialize)]
struct ReadyResponse {
    ready: bool,
}

fn ready(state: &State) -> HttpResponse {
    let ready = state.cache.is_ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    response::json(status, &ReadyResponse { ready })
}

fn metrics(state: &State) -> HttpResponse {
    state.metrics.cache_coupons.set(state.cache.coupon_count() as f64);
    state.metrics.validation_logs.queue_depth.set(state.validation_log.queue_size() as f64);
    let text = state.metrics.render();
    response::with_body(StatusCode::OK, HeaderValue::from_static("text/plain; version=0.0.4"), text.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents_are_cut_and_non_ascii_ignored() {
        let long = "a".repeat(2000);
        assert_eq!(user_agent(&HeaderValue::from_str(&long).unwrap()).map(|s| s.len()), Some(MAX_USER_AGENT_LEN));
        assert_eq!(user_agent(&HeaderValue::from_static("curl/8")), Some("curl/8".into()));
        assert_eq!(user_agent(&HeaderValue::from_bytes(b"caf\xe9").unwrap()), None);
    }
}
