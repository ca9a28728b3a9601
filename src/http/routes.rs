//! The route table, and answering one request through it.
//!
//! Each route is written once, in [`ROUTES`]: its path template (also its metric label),
//! its methods and their handlers, who may call it, whether it waits for the catalog, and
//! its OpenAPI path item. The served OpenAPI document, the `Allow` header and the metric
//! labels all come from this table.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Body;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, HeaderValue, X_CONTENT_TYPE_OPTIONS};
use hyper::{HeaderMap, Method, Request, StatusCode};
use subtle::ConstantTimeEq;

use crate::config::Secret;
use crate::http::State;
use crate::http::call::Call;
use crate::http::error::ApiError;
use crate::http::handlers::{admin, campaigns, instances, ops, public};
use crate::http::response::{self, HttpResponse};

/// Largest request body accepted (API.md: bodies over 16 KiB get 413).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// The largest body of an import of bulk codes (about 4 million codes).
pub const MAX_IMPORT_BODY_BYTES: usize = 64 << 20;

/// The largest body a route reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLimit {
    Bytes(usize),
    /// A body that may carry a cart's items: `http.max_body_bytes_cart` (16 KiB without items).
    Cart,
}

/// What a handler returns.
pub type Answer<'a> = Pin<Box<dyn Future<Output = Result<HttpResponse, ApiError>> + Send + 'a>>;
/// A handler: the state and the request, read and checked as far as the table says.
pub type Handler = for<'a> fn(&'a State, Call) -> Answer<'a>;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Open,
    /// The shop's backend: `Authorization: Bearer $API_TOKEN` when API_TOKEN is set.
    Backend,
    /// `Authorization: Bearer $ADMIN_TOKEN`; nobody when it is unset.
    Admin,
}

/// One route.
pub struct Route {
    pub template: &'static str,
    pub methods: &'static [(Method, Handler)],
    pub access: Access,
    /// Answers 503 until the start-up load is done.
    pub needs_ready: bool,
    /// Takes or gives back uses: its handler runs in a task of its own, to the end, even if
    /// the client goes away meanwhile (dropped half-way, a claim could commit in PostgreSQL
    /// while the engine gives its units back).
    pub runs_to_end: bool,
    /// An admin route whose handler keeps the admin deadline itself, from when its body is
    /// parsed (an import's 64 MiB may take seconds to read before anything is started).
    pub own_deadline: bool,
    /// The largest body it reads.
    pub max_body: BodyLimit,
    /// The OpenAPI path item.
    pub openapi: &'static str,
}

macro_rules! handler {
    ($f:path) => {{
        fn boxed(state: &State, call: Call) -> Answer<'_> {
            Box::pin($f(state, call))
        }
        boxed as Handler
    }};
}

/// Every route the service answers.
pub static ROUTES: &[Route] = &[
    Route {
        template: "/api/coupons/validate",
        methods: &[(Method::POST, handler!(public::validate))],
        access: Access::Open,
        runs_to_end: false,
        own_deadline: false,
        needs_ready: true,
        max_body: BodyLimit::Cart,
        openapi: include_str!("openapi/validate.json"),
    },
    Route {
        template: "/api/coupons/redeem",
        methods: &[(Method::POST, handler!(public::redeem))],
        access: Access::Backend,
        runs_to_end: true,
        own_deadline: false,
        needs_ready: true,
        max_body: BodyLimit::Cart,
        openapi: include_str!("openapi/redeem.json"),
    },
    Route {
        template: "/api/coupons/hold",
        methods: &[(Method::POST, handler!(public::hold))],
        access: Access::Backend,
        runs_to_end: true,
        own_deadline: false,
        needs_ready: true,
        max_body: BodyLimit::Cart,
        openapi: include_str!("openapi/hold.json"),
    },
    Route {
        template: "/api/coupons/release",
        methods: &[(Method::POST, handler!(public::release))],
        access: Access::Backend,
        runs_to_end: true,
        own_deadline: false,
        needs_ready: true,
        max_body: BodyLimit::Bytes(MAX_BODY_BYTES),
        openapi: include_str!("openapi/release.json"),
    },
    Route {
        template: "/health",
        methods: &[(Method::GET, handler!(ops::health))],
        access: Access::Open,
        runs_to_end: false,
        own_deadline: false,
        needs_ready: false,
        max_body: BodyLimit::Bytes(MAX_BODY_BYTES),
        openapi: include_str!("openapi/health.json"),
    },
    Route {
        template: "/health/ready",
        methods: &[(Method::GET, handler!(ops::ready))],
        access: Access::Open,
        runs_to_end: false,
        own_deadline: false,
        needs_ready: false,
        max_body: BodyLimit::Bytes(MAX_BODY_BYTES),
        openapi: include_str!("openapi/ready.json"),
    },
    Route {
        template: "/metrics",
        methods: &[(Method::GET, handler!(ops::metrics))],
        access: Access::Open,
        runs_to_end: false,
        own_deadline: false,
        needs_ready: false,
        max_body: BodyLimit::Bytes(MAX_BODY_BYTES),
        openapi: include_str!("openapi/metrics.json"),
    },
    Route {
        template: "/openapi.json",
        methods: &[(Method::GET, handler!(openapi))],
        access: Access::Open,
        runs_to_end: false,
        own_deadline: false,
        needs_ready: false,
        max_body: BodyLimit::Bytes(MAX_BODY_BYTES),
        openapi: include_str!("openapi/openapi.json"),
    },
    Route {
        template: "/admin/cache/reload",
        methods: &[(Method::POST, handler!(admin::reload))],
        access: Access::Admin,
        runs_to_end: false,
        own_deadline: false,
        needs_ready: false,
        max_body: BodyLimit::Bytes(MAX_BODY_BYTES),
        openapi: include_str!("openapi/admin_reload.json"),
    },
    Route {
        template: "/admin/cache/stats",
        methods: &[(Method::GET, handler!(admin::stats))],
        access: Access::Admin,
        runs_to_end: false,
        own_deadline: false,
        needs_ready: false,
        max_body: BodyLimit::Bytes(MAX_BODY_BYTES),
        openapi: include_str!("openapi/admin_stats.json"),
    },
    Route {
        template: "/admin/coupons",
        methods: &[(Method::POST, handler!(admin::create_coupon))],
        access: Access::Admin,
        runs_to_end: false,
        own_deadline: false,
        needs_ready: false,
        max_body: BodyLimit::Bytes(MAX_BODY_BYTES),
        openapi: include_str!("openapi/admin_coupons.json"),
    },
    Route {
        template: "/admin/coupons/{code}",
        methods: &[(Method::GET, handler!(admin::read_coupon)), (Method::PATCH, handler!(admin::patch_coupon))],
        access: Access::Admin,
        runs_to_end: false,
        own_deadline: false,
        needs_ready: false,
        max_body: BodyLimit::Bytes(MAX_BODY_BYTES),
        openapi: include_str!("openapi/admin_coupon.json"),
    },
    Route {
        template: "/admin/coupons/{code}/stats",
        methods: &[(Method::GET, handler!(admin::coupon_stats))],
        access: Access::Admin,
        runs_to_end: false,
        own_deadline: false,
        needs_ready: false,
        max_body: BodyLimit::Bytes(MAX_BODY_BYTES),
        openapi: include_str!("openapi/admin_coupon_stats.json"),
    },
    Route {
        template: "/admin/validations/recent",
        methods: &[(Method::GET, handler!(admin::recent))],
        access: Access::Admin,
        runs_to_end: false,
        own_deadline: false,
        needs_ready: false,
        max_body: BodyLimit::Bytes(MAX_BODY_BYTES),
        openapi: include_str!("openapi/admin_recent.json"),
    },
    Route {
        template: "/admin/journal/rejected",
        methods: &[(Method::GET, handler!(admin::rejected))],
        access: Access::Admin,
        runs_to_end: false,
        own_deadline: false,
        needs_ready: false,
        max_body: BodyLimit::Bytes(MAX_BODY_BYTES),
        openapi: include_str!("openapi/admin_rejected.json"),
    },
    Route {
        template: "/admin/instances/{id}/write-off",
        methods: &[(Method::POST, handler!(instances::write_off))],
        access: Access::Admin,
        runs_to_end: false,
        own_deadline: false,
        needs_ready: false,
        max_body: BodyLimit::Bytes(MAX_BODY_BYTES),
        openapi: include_str!("openapi/admin_write_off.json"),
    },
    Route {
        template: "/admin/orders/conflicts",
        methods: &[(Method::GET, handler!(instances::order_conflicts))],
        access: Access::Admin,
        runs_to_end: false,
        own_deadline: false,
        needs_ready: false,
        max_body: BodyLimit::Bytes(MAX_BODY_BYTES),
        openapi: include_str!("openapi/admin_order_conflicts.json"),
    },
    Route {
        template: "/admin/journal/rejected/retry",
        methods: &[(Method::POST, handler!(admin::retry_rejected))],
        access: Access::Admin,
        runs_to_end: false,
        own_deadline: false,
        needs_ready: false,
        max_body: BodyLimit::Bytes(MAX_BODY_BYTES),
        openapi: include_str!("openapi/admin_rejected_retry.json"),
    },
    Route {
        template: "/admin/campaigns",
        methods: &[(Method::POST, handler!(campaigns::create_campaign))],
        access: Access::Admin,
        runs_to_end: false,
        own_deadline: false,
        needs_ready: false,
        max_body: BodyLimit::Bytes(MAX_BODY_BYTES),
        openapi: include_str!("openapi/admin_campaigns.json"),
    },
    Route {
        template: "/admin/campaigns/{name}",
        methods: &[
            (Method::GET, handler!(campaigns::read_campaign)),
            (Method::PATCH, handler!(campaigns::patch_campaign)),
        ],
        access: Access::Admin,
        runs_to_end: false,
        own_deadline: false,
        needs_ready: false,
        max_body: BodyLimit::Bytes(MAX_BODY_BYTES),
        openapi: include_str!("openapi/admin_campaign.json"),
    },
    Route {
        template: "/admin/campaigns/{name}/batches",
        methods: &[(Method::POST, handler!(campaigns::create_batch))],
        access: Access::Admin,
        runs_to_end: false,
        own_deadline: true,
        needs_ready: true,
        max_body: BodyLimit::Bytes(MAX_IMPORT_BODY_BYTES),
        openapi: include_str!("openapi/admin_batches.json"),
    },
    Route {
        template: "/admin/batches/{id}",
        methods: &[(Method::GET, handler!(campaigns::read_batch))],
        access: Access::Admin,
        runs_to_end: false,
        own_deadline: false,
        needs_ready: false,
        max_body: BodyLimit::Bytes(MAX_BODY_BYTES),
        openapi: include_str!("openapi/admin_batch.json"),
    },
    Route {
        template: "/admin/campaigns/{name}/codes",
        methods: &[(Method::GET, handler!(campaigns::export_codes))],
        access: Access::Admin,
        runs_to_end: false,
        own_deadline: false,
        needs_ready: true,
        max_body: BodyLimit::Bytes(MAX_BODY_BYTES),
        openapi: include_str!("openapi/admin_codes.json"),
    },
    Route {
        template: "/admin/campaigns/{name}/codes/assign",
        methods: &[(Method::POST, handler!(campaigns::assign_code))],
        access: Access::Admin,
        runs_to_end: false,
        own_deadline: false,
        needs_ready: true,
        max_body: BodyLimit::Bytes(MAX_BODY_BYTES),
        openapi: include_str!("openapi/admin_assign.json"),
    },
];

/// The metric label of every route, in table order.
pub fn labels() -> Vec<&'static str> {
    ROUTES.iter().map(|r| r.template).collect()
}

/// The methods of each route, as the `Allow` header says them.
static ALLOW: LazyLock<Vec<String>> = LazyLock::new(|| {
    ROUTES.iter().map(|r| r.methods.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>().join(", ")).collect()
});

/// The OpenAPI 3.1 document: the shared parts and every route's path item.
pub static OPENAPI: LazyLock<Bytes> = LazyLock::new(|| {
    let mut doc: serde_json::Value =
        serde_json::from_str(include_str!("openapi/base.json")).expect("base.json is JSON");
    let paths = ROUTES
        .iter()
        .map(|r| {
            let mut item: serde_json::Value = serde_json::from_str(r.openapi).expect("a path item is JSON");
            let item_fields = item.as_object_mut().expect("a path item is an object");
            for (_, operation) in item_fields.iter_mut().filter(|(k, _)| *k != "parameters") {
                add_shared_responses(r, operation);
            }
            (r.template.to_owned(), item)
        })
        .collect::<serde_json::Map<_, _>>();
    doc["paths"] = serde_json::Value::Object(paths);
    Bytes::from(serde_json::to_vec(&doc).expect("JSON serialises"))
});

/// What every operation of its kind answers, from how [`handle`] treats it: a path
/// parameter brings `400` (an invalid segment), a body `408` and `415`, a backend route `401`
/// when API_TOKEN is set, an admin route `429` after failed authentications.
/// `GET /openapi.json`: the document this table describes, so it lives beside it.
async fn openapi(_state: &State, _call: Call) -> Result<HttpResponse, ApiError> {
    Ok(response::with_body(StatusCode::OK, HeaderValue::from_static("application/json"), OPENAPI.clone()))
}

fn add_shared_responses(route: &Route, operation: &mut serde_json::Value) {
    let shared = |name: &str| serde_json::json!({ "$ref": format!("#/components/responses/{name}") });
    let mut add = Vec::new();
    if route.template.contains('{') {
        add.push(("400", shared("InvalidPath")));
    }
    if operation.get("requestBody").is_some() {
        add.extend([("408", shared("RequestTimeout")), ("415", shared("UnsupportedMediaType"))]);
    }
    match route.access {
        Access::Open => {}
        Access::Backend => {
            add.push(("401", shared("Unauthorized")));
            // Optional: without API_TOKEN set, no token is needed.
            operation["security"] = serde_json::json!([{}, { "apiToken": [] }]);
        }
        Access::Admin => add.push(("429", shared("TooManyFailedAuths"))),
    }
    let responses = operation["responses"].as_object_mut().expect("an operation lists its responses");
    for (status, response) in add {
        responses.entry(status).or_insert(response);
    }
}

/// The route of a path and its parameters; `Err` when a parameter is not a valid segment.
/// A template without parameters is one comparison; the others are walked segment by
/// segment without allocating: this runs on every request.
fn match_path(path: &str) -> Option<(usize, Result<Vec<String>, ApiError>)> {
    ROUTES.iter().enumerate().find_map(|(idx, route)| {
        if !route.template.contains('{') {
            return (route.template == path).then(|| (idx, Ok(Vec::new())));
        }
        let (mut template, mut segments) = (route.template.split('/'), path.split('/'));
        loop {
            match (template.next(), segments.next()) {
                (None, None) => break,
                (Some(pattern), Some(segment)) if pattern.starts_with('{') && !segment.is_empty() => {}
                (Some(pattern), Some(segment)) if pattern == segment => {}
                _ => return None,
            }
        }
        let params = route
            .template
            .split('/')
            .zip(path.split('/'))
            .filter(|(pattern, _)| pattern.starts_with('{'))
            .map(|(_, segment)| decode_segment(segment))
            .collect();
        Some((idx, params))
    })
}

/// A path segment, percent-decoded; a `%00`, a control character or invalid UTF-8 is a 400.
fn decode_segment(segment: &str) -> Result<String, ApiError> {
    let invalid = || ApiError::InvalidField { field: "path", problem: "has an invalid segment".into() };
    let decoded = percent_encoding::percent_decode_str(segment).decode_utf8().map_err(|_| invalid())?;
    if decoded.chars().any(char::is_control) {
        return Err(invalid());
    }
    Ok(decoded.into_owned())
}

/// Answers one request and records its metrics.
pub async fn handle<B>(state: &Arc<State>, req: Request<B>, peer: IpAddr) -> HttpResponse
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let started = Instant::now();
    let (route, result) = dispatch(state, req, peer, started).await;
    let mut response = result.unwrap_or_else(|err| err.response());
    response.headers_mut().insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    let route = route.unwrap_or_else(|| state.metrics.unmatched());
    state.metrics.record_request(route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

async fn dispatch<B>(
    state: &Arc<State>,
    req: Request<B>,
    peer: IpAddr,
    started: Instant,
) -> (Option<usize>, Result<HttpResponse, ApiError>)
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let Some((idx, params)) = match_path(req.uri().path()) else {
        return (None, Err(ApiError::NotFound));
    };
    (Some(idx), answer(state, idx, params, req, peer, started).await)
}

async fn answer<B>(
    state: &Arc<State>,
    idx: usize,
    params: Result<Vec<String>, ApiError>,
    req: Request<B>,
    peer: IpAddr,
    started: Instant,
) -> Result<HttpResponse, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let route = &ROUTES[idx];
    let Some((_, handler)) = route.methods.iter().find(|(method, _)| method == req.method()) else {
        return Err(ApiError::MethodNotAllowed { allow: &ALLOW[idx] });
    };
    let params = params?;
    let headers = req.headers();
    let client_ip = state.guard.client_ip(peer, headers);
    let backend = state.api_token.is_empty() || bearer_is(headers, &state.api_token);
    match route.access {
        Access::Open => {}
        Access::Backend if backend => {}
        Access::Backend => return Err(ApiError::Unauthorized),
        Access::Admin => {
            if state.admin_token.is_empty() || !bearer_is(headers, &state.admin_token) {
                // Only failures are throttled: an address that sent wrong tokens (an attacker
                // sharing the admin's address, say) never locks the right one out.
                state.guard.admit_admin(client_ip)?;
                state.guard.record_admin_failure(client_ip);
                return Err(ApiError::Unauthorized);
            }
        }
    }
    if *req.method() == Method::POST && !json_or_nothing(headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    if route.needs_ready && !state.engine.catalog().is_ready() {
        return Err(ApiError::NotReady);
    }
    let query = req.uri().query().map(str::to_owned);
    let (parts, body) = req.into_parts();
    // The body is read before a request slot is taken, within its own deadline, so a slow
    // client never holds a slot.
    let max_body = match route.max_body {
        BodyLimit::Bytes(bytes) => bytes,
        BodyLimit::Cart => state.cart.max_body_bytes,
    };
    let read = read_body(&parts.headers, body, max_body);
    let body = match tokio::time::timeout(state.http.body_read_timeout, read).await {
        Ok(body) => body?,
        Err(_) => return Err(ApiError::BodyTimeout),
    };
    let call = Call { params, query, headers: parts.headers, body, client_ip, backend, started };
    if route.runs_to_end {
        let state = Arc::clone(state);
        let handler = *handler;
        return tokio::spawn(async move { within_bound(&state, handler, call, route).await }).await.unwrap_or_else(
            |err| {
                tracing::error!(error = %err, "a request's task failed");
                Err(ApiError::Internal)
            },
        );
    }
    within_bound(state, *handler, call, route).await
}

/// Runs `handler` holding a request slot (admin calls within their deadline, unless the
/// handler keeps it).
async fn within_bound(state: &State, handler: Handler, call: Call, route: &Route) -> Result<HttpResponse, ApiError> {
    // Past the bound, answer at once rather than queue: a queue only turns overload into
    // timeouts for everyone.
    let Ok(_permit) = state.in_flight.try_acquire() else {
        return Err(ApiError::Overloaded);
    };
    match route.access {
        Access::Admin if !route.own_deadline => {
            tokio::time::timeout(state.http.admin_timeout, handler(state, call)).await.unwrap_or(Err(ApiError::Timeout))
        }
        Access::Admin | Access::Open | Access::Backend => handler(state, call).await,
    }
}

/// Whether a POST's body is JSON (`application/json`, any parameters) or there is none (no
/// `Content-Type`, no declared length): a form or `text/plain` post from another site is
/// refused before it is read.
fn json_or_nothing(headers: &HeaderMap) -> bool {
    match headers.get(hyper::header::CONTENT_TYPE) {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json")),
        None => {
            headers.get(CONTENT_LENGTH).is_none_or(|len| len == "0")
                && headers.get(hyper::header::TRANSFER_ENCODING).is_none()
        }
    }
}

/// Whether the request carries `Authorization: Bearer <token>`; compared in constant time
/// for equal lengths (the length itself is not a secret worth hiding).
fn bearer_is(headers: &HeaderMap, token: &Secret) -> bool {
    let Some(given) = headers.get(AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer ")) else {
        return false;
    };
    bool::from(given.ct_eq(token.expose().as_bytes()))
}

/// An over-limit body up to this size is read to its end (and dropped) before the `413`:
/// a connection closed with the client's bytes unread is reset by the kernel, and the
/// client never reads the answer. Larger ones are answered at once, the connection closed.
const DRAINED_AT_MOST: u64 = 1 << 20;

/// Reads the whole body, refusing more than `limit` bytes (reading an over-limit body to its
/// end only if it is at most `DRAINED_AT_MOST`).
async fn read_body<B>(headers: &HeaderMap, body: B, limit: usize) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let too_large = ApiError::PayloadTooLarge { limit };
    // Past both the limit and the drain bound: answered at once. (A body within its route's
    // limit is read whole however large the limit: an import may be 64 MiB.)
    let hopeless = |len: u64| len > limit as u64 && len > DRAINED_AT_MOST;
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(hopeless) {
        return Err(too_large);
    }
    let mut body = std::pin::pin!(body);
    let mut kept = bytes::BytesMut::new();
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| ApiError::BadBody)?.into_data() else { continue };
        seen += data.len() as u64;
        if hopeless(seen) {
            return Err(too_large);
        }
        if seen <= limit as u64 {
            kept.extend_from_slice(&data);
        }
    }
    if seen > limit as u64 { Err(too_large) } else { Ok(kept.freeze()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_their_routes_and_parameters() {
        let route_of = |path: &str| match_path(path).map(|(idx, params)| (ROUTES[idx].template, params.ok()));
        for (path, expected) in [
            ("/api/coupons/validate", Some(("/api/coupons/validate", Some(vec![])))),
            ("/admin/coupons", Some(("/admin/coupons", Some(vec![])))),
            ("/admin/coupons/SAVE10", Some(("/admin/coupons/{code}", Some(vec!["SAVE10".to_owned()])))),
            (
                "/admin/coupons/50%25OFF%21/stats",
                Some(("/admin/coupons/{code}/stats", Some(vec!["50%OFF!".to_owned()]))),
            ),
            ("/admin/coupons/A%00B", Some(("/admin/coupons/{code}", None))),
            ("/admin/coupons/%FF", Some(("/admin/coupons/{code}", None))),
            ("/admin/coupons/", None),
            ("/admin/coupons//stats", None),
            ("/admin/coupons/A/B", None),
            ("/admin/coupons/A/stats/x", None),
            ("/api/coupons/validate/", None),
        ] {
            assert_eq!(route_of(path), expected, "{path}");
        }
    }

    #[test]
    fn the_openapi_document_is_the_table() {
        let doc: serde_json::Value = serde_json::from_slice(&OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.len(), ROUTES.len(), "one path item per route");
        for (idx, route) in ROUTES.iter().enumerate() {
            let item = paths[route.template].as_object().unwrap();
            let mut documented: Vec<String> =
                item.keys().filter(|k| *k != "parameters").map(|m| m.to_uppercase()).collect();
            let mut allowed: Vec<String> = ALLOW[idx].split(", ").map(str::to_owned).collect();
            documented.sort();
            allowed.sort();
            assert_eq!(documented, allowed, "{}", route.template);
            for (method, operation) in item.iter().filter(|(k, _)| *k != "parameters") {
                let security = operation.get("security").map(ToString::to_string);
                let expected = match route.access {
                    Access::Open => None,
                    Access::Backend => Some(r#"[{},{"apiToken":[]}]"#.to_owned()),
                    Access::Admin => Some(r#"[{"bearer":[]}]"#.to_owned()),
                };
                assert_eq!(security, expected, "{method} {}: security", route.template);
                let responses = operation["responses"].as_object().unwrap();
                if route.access != Access::Open {
                    assert!(responses.contains_key("401"), "{method} {}: 401", route.template);
                }
                if operation.get("requestBody").is_some() {
                    assert!(
                        responses.contains_key("408") && responses.contains_key("415"),
                        "{method} {}",
                        route.template
                    );
                }
            }
        }
        // The reasons are the rules' reasons, in their order.
        let reasons: Vec<&str> = doc["components"]["schemas"]["Reason"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        let expected: Vec<&str> = crate::domain::rules::Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(reasons, expected);
        // Every schema and response a path refers to exists.
        let text = String::from_utf8(OPENAPI.to_vec()).unwrap();
        for kind in ["schemas", "responses"] {
            for reference in text.split(&format!("\"#/components/{kind}/")).skip(1) {
                let name = reference.split('"').next().unwrap();
                assert!(doc["components"][kind].get(name).is_some(), "missing {kind} {name}");
            }
        }
    }
}
