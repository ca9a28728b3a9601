//! Routing by `(method, path)` and the handlers of the public and operational routes.

use std::net::IpAddr;
use std::time::Instant;

use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HeaderValue, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use serde::Serialize;

use crate::db::listener::ListenerState;
use crate::db::validation_log::ValidationLogRow;
use crate::domain::rules::Attempt;
use crate::http::error::ApiError;
use crate::http::guard::Scope;
use crate::http::request::ValidateRequest;
use crate::http::response::{self, HttpResponse, ValidateResponse};
use crate::http::{State, admin, redemption};
use crate::metrics::Route;

/// The OpenAPI 3.1 description of every route, served as it is in the repository.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Largest request body accepted (API.md: bodies over 16 KiB get 413).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Longest `User-Agent` kept in the validation log.
const MAX_USER_AGENT_LEN: usize = 512;

/// Answers one request and records its metrics.
pub async fn handle(state: &State, req: Request<Incoming>, peer: IpAddr) -> HttpResponse {
    let started = Instant::now();
    // Past the bound, answer at once rather than queue: a queue only turns overload into
    // timeouts for everyone.
    let Ok(_permit) = state.in_flight.try_acquire() else {
        let response = response::error(&ApiError::Overloaded);
        state.metrics.record_request(Route::Unmatched, 503, started.elapsed().as_secs_f64());
        return response;
    };
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
    let Some((route, allow, _)) = match_route(req.uri().path()) else {
        return (Route::Unmatched, Err(ApiError::NotFound));
    };
    let method = req.method().as_str();
    if !allow.split(", ").any(|m| m == method) {
        return (route, Err(ApiError::MethodNotAllowed { allow }));
    }
    if route.is_admin() {
        if !admin::authorized(state, req.headers()) {
            return (route, Err(ApiError::Unauthorized));
        }
        let answer = tokio::time::timeout(state.admin_timeout, dispatch_admin(state, route, req));
        return (route, answer.await.unwrap_or(Err(ApiError::Timeout)));
    }
    let result = match route {
        Route::Validate => validate(state, req, peer, started).await,
        Route::Redeem | Route::Release if !state.cache.is_ready() => Err(ApiError::NotReady),
        Route::Redeem => {
            let client_ip = state.guard.client_ip(peer, req.headers());
            match read_body(req).await {
                Ok(body) => redemption::redeem(state, body, client_ip).await,
                Err(err) => Err(err),
            }
        }
        Route::Release => match read_body(req).await {
            Ok(body) => redemption::release(state, body).await,
            Err(err) => Err(err),
        },
        Route::Health => Ok(health(state)),
        Route::Ready => Ok(ready(state)),
        Route::Metrics => Ok(metrics(state)),
        Route::OpenApi => Ok(response::with_body(
            StatusCode::OK,
            HeaderValue::from_static("application/json"),
            Bytes::from_static(OPENAPI.as_bytes()),
        )),
        _ => Err(ApiError::NotFound),
    };
    (route, result)
}

/// The admin routes, once authorised.
async fn dispatch_admin(state: &State, route: Route, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let code = match_route(req.uri().path()).and_then(|(_, _, code)| code).map(percent_decode).unwrap_or_default();
    match route {
        Route::AdminReload => admin::reload(state).await,
        Route::AdminStats => Ok(admin::stats(state)),
        Route::AdminCoupons => admin::create(state, read_body(req).await?).await,
        Route::AdminCoupon if req.method() == Method::PATCH => admin::patch(state, &code, read_body(req).await?).await,
        Route::AdminCoupon => admin::read(state, &code).await,
        Route::AdminCouponStats => admin::coupon_stats(state, &code).await,
        Route::AdminRecentValidations => admin::recent(state, req.uri().query()).await,
        _ => Err(ApiError::NotFound),
    }
}

/// The route of a path, the methods it allows, and the coupon code it names, if any.
fn match_route(path: &str) -> Option<(Route, &'static str, Option<&str>)> {
    let fixed = match path {
        "/api/coupons/validate" => Some((Route::Validate, "POST")),
        "/api/coupons/redeem" => Some((Route::Redeem, "POST")),
        "/api/coupons/release" => Some((Route::Release, "POST")),
        "/health" => Some((Route::Health, "GET")),
        "/health/ready" => Some((Route::Ready, "GET")),
        "/metrics" => Some((Route::Metrics, "GET")),
        "/openapi.json" => Some((Route::OpenApi, "GET")),
        "/admin/cache/reload" => Some((Route::AdminReload, "POST")),
        "/admin/cache/stats" => Some((Route::AdminStats, "GET")),
        "/admin/coupons" => Some((Route::AdminCoupons, "POST")),
        "/admin/validations/recent" => Some((Route::AdminRecentValidations, "GET")),
        _ => None,
    };
    if let Some((route, allow)) = fixed {
        return Some((route, allow, None));
    }
    let rest = path.strip_prefix("/admin/coupons/")?;
    match rest.split_once('/') {
        None if !rest.is_empty() => Some((Route::AdminCoupon, "GET, PATCH", Some(rest))),
        Some((code, "stats")) if !code.is_empty() => Some((Route::AdminCouponStats, "GET", Some(code))),
        _ => None,
    }
}

/// Decodes `%XX` escapes in a path segment; anything malformed is kept as it is.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut idx = 0;
    while idx < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[idx] == b'%'
            && let (Some(hi), Some(lo)) =
                (bytes.get(idx + 1).and_then(|b| hex(*b)), bytes.get(idx + 2).and_then(|b| hex(*b)))
        {
            out.push((hi * 16 + lo) as u8);
            idx += 3;
        } else {
            out.push(bytes[idx]);
            idx += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
    let client_ip = state.guard.client_ip(peer, req.headers());
    let body = read_body(req).await?;
    let input = ValidateRequest::parse(&body)?;
    guard_lookup(state, &input.user_id, client_ip)?;
    let attempt =
        Attempt { user_id: &input.user_id, order_value: input.order_value, order_id: input.order_id.as_deref() };
    let now = Utc::now();
    let validation = state.cache.validate(&input.code, &attempt, now);
    if validation.coupon_id.is_none() {
        state.guard.record_failure(&input.user_id, client_ip);
    }
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
        reason,
        discount,
        final_amount,
        ip_address: Some(client_ip),
        user_agent,
        response_time_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        validated_at: now,
    });
    Ok(response)
}

/// Refuses a lookup by a user or IP that has used up its failed lookups.
pub(crate) fn guard_lookup(state: &State, user_id: &str, client_ip: IpAddr) -> Result<(), ApiError> {
    match state.guard.check(user_id, client_ip) {
        None => Ok(()),
        Some(blocked) => {
            match blocked.scope {
                Scope::User => state.metrics.refused_by_user.increment(1),
                Scope::Ip => state.metrics.refused_by_ip.increment(1),
            }
            Err(ApiError::TooManyFailedLookups { retry_after_secs: blocked.retry_after.as_secs_f64().ceil() as u64 })
        }
    }
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
    listener: &'static str,
    coupons: usize,
    uptime: f64,
    timestamp: String,
}

fn health(state: &State) -> HttpResponse {
    let database_up = state.database.is_up();
    let listener = state.listener.state();
    let body = HealthResponse {
        status: if database_up && listener == ListenerState::Listening && state.journal.is_healthy() {
            "healthy"
        } else {
            "degraded"
        },
        validation_log_queue_size: state.validation_log.queue_size(),
        database: if database_up { "up" } else { "down" },
        listener: listener.as_str(),
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
    state.metrics.coupon_usage.queue_depth.set(state.journal.backlog() as f64);
    state.metrics.journal_backlog.set(state.journal.backlog() as f64);
    if let Some(last) = state.cache.last_reload_at() {
        state.metrics.cache_age.set((Utc::now() - last).num_milliseconds() as f64 / 1000.0);
    }
    let (size, idle) = (state.pool.size(), state.pool.num_idle() as u32);
    state.metrics.pool_idle.set(f64::from(idle));
    state.metrics.pool_in_use.set(f64::from(size.saturating_sub(idle)));
    state.metrics.pool_max.set(f64::from(state.pool.options().get_max_connections()));
    let text = state.metrics.render();
    response::with_body(StatusCode::OK, HeaderValue::from_static("text/plain; version=0.0.4"), text.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_description_and_the_router_agree() {
        let spec: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(spec["openapi"], "3.1.0");
        let paths = spec["paths"].as_object().unwrap();
        for (path, item) in paths {
            let concrete = path.replace("{code}", "SAVE10");
            let (route, allow, _) = match_route(&concrete).unwrap_or_else(|| panic!("{path} is not routed"));
            assert_eq!(route.label(), path.as_str());
            let mut documented: Vec<String> =
                item.as_object().unwrap().keys().filter(|k| *k != "parameters").map(|m| m.to_uppercase()).collect();
            let mut allowed: Vec<String> = allow.split(", ").map(str::to_owned).collect();
            documented.sort();
            allowed.sort();
            assert_eq!(documented, allowed, "{path}");
        }
        for route in Route::all().iter().filter(|r| **r != Route::Unmatched) {
            assert!(paths.contains_key(route.label()), "{} is not documented", route.label());
        }
    }

    #[test]
    fn routes_and_codes() {
        for (path, expected) in [
            ("/api/coupons/validate", Some((Route::Validate, None))),
            ("/admin/coupons", Some((Route::AdminCoupons, None))),
            ("/admin/coupons/SAVE10", Some((Route::AdminCoupon, Some("SAVE10")))),
            ("/admin/coupons/SAVE10/stats", Some((Route::AdminCouponStats, Some("SAVE10")))),
            ("/admin/coupons/", None),
            ("/admin/coupons//stats", None),
            ("/admin/coupons/A/B", None),
            ("/admin/coupons/A/stats/x", None),
            ("/api/coupons/validate/", None),
        ] {
            assert_eq!(match_route(path).map(|(r, _, c)| (r, c)), expected, "{path}");
        }
        assert_eq!(percent_decode("50%25OFF%21"), "50%OFF!");
        assert_eq!(percent_decode("A%2"), "A%2");
        assert_eq!(percent_decode("%zzA"), "%zzA");
    }

    #[test]
    fn user_agents_are_cut_and_non_ascii_ignored() {
        let long = "a".repeat(2000);
        assert_eq!(user_agent(&HeaderValue::from_str(&long).unwrap()).map(|s| s.len()), Some(MAX_USER_AGENT_LEN));
        assert_eq!(user_agent(&HeaderValue::from_static("curl/8")), Some("curl/8".into()));
        assert_eq!(user_agent(&HeaderValue::from_bytes(b"caf\xe9").unwrap()), None);
    }
}
