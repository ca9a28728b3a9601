//! Trust and abuse (API.md §8): the API token, budgets an anonymous caller cannot walk
//! around, release ownership, idempotency, normalised identities, strict content types,
//! deadlines, and replays of orders the ledger has forgotten.

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, TestClient, TestDb, TestResponse, eventually, insert_coupon, raw_exchange};

const API: &str = "api-token-api-token";
const ADMIN: &str = "admin-token-admin-token";

async fn call(client: &TestClient, path: &str, body: Value, token: Option<&str>) -> TestResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| ("authorization", a)).into_iter().collect();
    client.request_with(Method::POST, path, body.to_string(), &headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_api_token_only_the_backend_may_redeem_hold_and_release() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    let app = TestApp::spawn_with(&db.url, &[("API_TOKEN", API)]).await;
    let client = &app.client;
    let redeem = json!({"code": "TEN", "userId": "u", "orderId": "o-1", "orderValue": 100});
    for (path, body) in
        [("/api/coupons/redeem", redeem.clone()), ("/api/coupons/release", json!({"code": "TEN", "orderId": "o-1"}))]
    {
        for token in [None, Some("wrong-token-wrong-token")] {
            let answer = call(client, path, body.clone(), token).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path} {token:?}");
            assert_eq!(answer.headers["www-authenticate"], "Bearer");
        }
    }
    assert_eq!(call(client, "/api/coupons/redeem", redeem, Some(API)).await.status, StatusCode::CREATED);
    let validate =
        call(client, "/api/coupons/validate", json!({"code": "TEN", "userId": "u", "orderValue": 100}), None).await;
    assert_eq!(validate.status, StatusCode::OK, "validate stays open to anonymous callers");
    assert_eq!(
        call(client, "/api/coupons/release", json!({"code": "TEN", "orderId": "o-1"}), Some(API)).await.status,
        StatusCode::OK
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_caller_cannot_walk_around_the_budget() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    let app = TestApp::spawn_with(
        &db.url,
        &[
            ("API_TOKEN", API),
            ("COUPON__PROTECTION__FAILED_LOOKUPS_PER_USER", "3"),
            ("COUPON__PROTECTION__FAILED_LOOKUPS_PER_ADDRESS", "10"),
            ("COUPON__PROTECTION__TRUSTED_PROXIES", "127.0.0.1"),
        ],
    )
    .await;
    let client = &app.client;
    let guess = |code: String, user: &'static str, from: &'static str, token: Option<&'static str>| {
        let client = client.clone();
        async move {
            let auth = token.map(|t| format!("Bearer {t}"));
            let mut headers = vec![("x-forwarded-for", from)];
            if let Some(auth) = auth.as_deref() {
                headers.push(("authorization", auth));
            }
            let body = json!({"code": code, "userId": user, "orderValue": 100}).to_string();
            client.request_with(Method::POST, "/api/coupons/validate", body, &headers).await.status
        }
    };
    // Three failures of "victim" from the attacker's address lock the victim out there only.
    for n in 0..3 {
        assert_eq!(guess(format!("NOPE-{n}"), "victim", "203.0.113.7", None).await, StatusCode::OK);
    }
    assert_eq!(guess("TEN".into(), "victim", "203.0.113.7", None).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        guess("TEN".into(), "victim", "198.51.100.1", None).await,
        StatusCode::OK,
        "elsewhere, the victim is served"
    );
    assert_eq!(
        guess("TEN".into(), "victim", "203.0.113.7", Some(API)).await,
        StatusCode::OK,
        "and through the backend"
    );
    // Rotating the user id does not escape the address's budget.
    let mut answered = 0;
    for n in 0..40 {
        let user: &'static str = Box::leak(format!("rotated-{}", n / 2).into_boxed_str());
        if guess(format!("GUESS-{n}"), user, "203.0.113.7", None).await == StatusCode::OK {
            answered += 1;
        }
    }
    assert_eq!(answered, 7, "the address had ten failures in all");
    // An IPv6 /64 is one address.
    for n in 0..10 {
        let from: &'static str = Box::leak(format!("2001:db8:7:7::{n:x}").into_boxed_str());
        let user: &'static str = Box::leak(format!("v6-user-{n}").into_boxed_str());
        assert_eq!(guess(format!("V6-{n}"), user, from, None).await, StatusCode::OK);
    }
    assert_eq!(guess("TEN".into(), "new-user", "2001:db8:7:7::ffff", None).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(guess("TEN".into(), "new-user", "2001:db8:7:8::1", None).await, StatusCode::OK);
    let metrics = client.get("/metrics").await.text;
    for scope in ["user_address", "address"] {
        assert!(metrics.contains(&format!(r#"coupon_lookups_refused_total{{scope="{scope}"}}"#)), "{scope}: {metrics}");
    }
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_need_the_redeemer_and_guessing_orders_is_budgeted() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "ONE", &[("usage_limit", "1")]).await;
    let app = TestApp::spawn_with(&db.url, &[("COUPON__PROTECTION__FAILED_LOOKUPS_PER_USER", "5")]).await;
    let client = &app.client;
    let redeem = json!({"code": "ONE", "userId": "carol", "orderId": "o-1", "orderValue": 100});
    assert_eq!(client.post("/api/coupons/redeem", &redeem).await.status, StatusCode::CREATED);
    // Someone else's release changes nothing.
    let wrong =
        client.post("/api/coupons/release", &json!({"code": "ONE", "orderId": "o-1", "userId": "mallory"})).await;
    assert_eq!((wrong.status, wrong.json()["reason"].clone()), (StatusCode::NOT_FOUND, json!("REDEMPTION_NOT_FOUND")));
    let taken = client
        .post("/api/coupons/redeem", &json!({"code": "ONE", "userId": "x", "orderId": "o-2", "orderValue": 100}))
        .await;
    assert_eq!(taken.json()["reason"], "USAGE_LIMIT_REACHED", "the use was not given back");
    // Guessing orders to release is stopped like guessing codes.
    let mut statuses = Vec::new();
    for n in 0..8 {
        let guess = json!({"code": "ONE", "orderId": format!("guess-{n}"), "userId": "mallory"});
        statuses.push(client.post("/api/coupons/release", &guess).await.status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::NOT_FOUND).count(), 4, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count(), 4, "{statuses:?}");
    // A backend's releases without a userId are its own to vouch for: never one shared budget
    // that locks every such release out.
    for n in 0..8 {
        let unknown =
            client.post("/api/coupons/release", &json!({"code": "ONE", "orderId": format!("gone-{n}")})).await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{n}: {}", unknown.text);
    }
    // The redeemer releases it, with spaces around its ids.
    let release =
        client.post("/api/coupons/release", &json!({"code": "ONE", "orderId": " o-1 ", "userId": "carol "})).await;
    assert_eq!(release.status, StatusCode::OK, "{}", release.text);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_are_normalised_and_replays_must_match() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "ONCE", &[("per_user_limit", "1")]).await;
    let app = TestApp::spawn(&db).await;
    let client = &app.client;
    let redeem = |user: &str, order: &str, value: f64| json!({"code": "ONCE", "userId": user, "orderId": order, "orderValue": value});
    let first = client.post("/api/coupons/redeem", &redeem("carol", "o-1", 100.0)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    // "carol " is carol: the same order is a replay, another order is her second use.
    let replay = client.post("/api/coupons/redeem", &redeem("  carol ", " o-1", 100.0)).await;
    assert_eq!(
        (replay.status, replay.json()["redemptionId"].clone()),
        (StatusCode::OK, first.json()["redemptionId"].clone())
    );
    let second = client.post("/api/coupons/redeem", &redeem("carol ", "o-2", 100.0)).await;
    assert_eq!(second.json()["reason"], "USER_USAGE_LIMIT_REACHED");
    // "CAROL" is someone else.
    assert_eq!(client.post("/api/coupons/redeem", &redeem("CAROL", "o-3", 100.0)).await.status, StatusCode::CREATED);
    // A replay with another order value is refused, never answered with the old amounts.
    let mismatch = client.post("/api/coupons/redeem", &redeem("carol", "o-1", 250.0)).await;
    assert_eq!(mismatch.status, StatusCode::CONFLICT);
    assert_eq!(mismatch.json(), json!({"redeemed": false, "reason": "IDEMPOTENCY_MISMATCH"}));
    for body in [redeem("car\u{7}ol", "o-9", 1.0), redeem("carol", &"o".repeat(129), 1.0), redeem("carol", "\t\n", 1.0)]
    {
        assert_eq!(client.post("/api/coupons/redeem", &body).await.status, StatusCode::BAD_REQUEST, "{body}");
    }
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_low_ones_media_types_nosniff_paths_duplicates_and_admin_throttle() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    let app = TestApp::spawn_with(&db.url, &[("ADMIN_TOKEN", ADMIN)]).await;
    let client = &app.client;
    let body = json!({"code": "TEN", "userId": "u", "orderValue": 100}).to_string();
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let answer = client
            .request_with(Method::POST, "/api/coupons/validate", body.clone(), &[("content-type", content_type)])
            .await;
        assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type}");
        assert_eq!(answer.json()["error"]["code"], "UNSUPPORTED_MEDIA_TYPE");
    }
    let charset = client
        .request_with(
            Method::POST,
            "/api/coupons/validate",
            body,
            &[("content-type", "application/json; charset=utf-8")],
        )
        .await;
    assert_eq!(charset.status, StatusCode::OK);
    let admin = |method: Method, path: &'static str, body: &'static str| {
        let client = client.clone();
        async move { client.request_with(method, path, body, &[("authorization", &format!("Bearer {ADMIN}"))]).await }
    };
    // Every response says nosniff, the refusals too.
    for response in [
        client.get("/health").await,
        client.get("/nowhere").await,
        client.request(Method::PUT, "/health", "").await,
        admin(Method::GET, "/admin/validations/recent", "").await,
    ] {
        assert_eq!(response.headers["x-content-type-options"], "nosniff", "{}", response.status);
    }
    // Path segments that are not text are refused, never a 500.
    for path in ["/admin/coupons/A%00B", "/admin/coupons/%FF%FE", "/admin/coupons/A%0AB/stats"] {
        let answer = admin(Method::GET, path, "").await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path}: {}", answer.text);
    }
    // One policy for duplicated keys: refused.
    let twice = r#"{"code":"DUP","type":"time_specific","discountType":"fixed","discountValue":5,"discountValue":6}"#;
    let answer = admin(Method::POST, "/admin/coupons", twice).await;
    assert_eq!(
        (answer.status, answer.json()["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("INVALID_JSON"))
    );
    // Failed admin authentication is throttled per address; the right token always passes.
    let guess = || client.request_with(Method::GET, "/admin/cache/stats", "", &[("authorization", "Bearer guess")]);
    for _ in 0..10 {
        assert_eq!(guess().await.status, StatusCode::UNAUTHORIZED);
    }
    let throttled = guess().await;
    assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(throttled.headers.contains_key("retry-after"));
    assert_eq!(admin(Method::GET, "/admin/cache/stats", "").await.status, StatusCode::OK);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_connection() {
    let db = TestDb::new().await;
    let app = TestApp::spawn_with(&db.url, &[("COUPON__HTTP__RESPONSE_WRITE_TIMEOUT", "500ms")]).await;
    // Pipelined requests for a large document, never read: the socket's buffers fill, the
    // write stalls, and the deadline closes the connection (freeing its place).
    let mut stalled = TcpStream::connect(app.addr).await.unwrap();
    let request = b"GET /openapi.json HTTP/1.1\r\nhost: t\r\n\r\n".repeat(2_000);
    let _ = tokio::time::timeout(Duration::from_secs(5), stalled.write_all(&request)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Reading what the server did send ends in its close.
    let mut sink = vec![0; 1 << 16];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stalled.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stalled connection was closed by the server");
    let reply = raw_exchange(app.addr, b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n", Duration::from_secs(2)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_order_is_still_spent() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    let app = TestApp::spawn_with(&db.url, &[("COUPON__LEDGER__RELEASED_RETENTION", "300ms")]).await;
    let client = &app.client;
    let redeem = json!({"code": "TEN", "userId": "u", "orderId": "o-1", "orderValue": 100});
    assert_eq!(client.post("/api/coupons/redeem", &redeem).await.status, StatusCode::CREATED);
    assert_eq!(
        client.post("/api/coupons/release", &json!({"code": "TEN", "orderId": "o-1"})).await.status,
        StatusCode::OK
    );
    eventually(Duration::from_secs(10), "the release shipped and the order forgotten", || async {
        let metrics = client.get("/metrics").await.text;
        let shipped: i64 = sqlx::query_scalar("SELECT count(*) FROM coupon_usage WHERE released_at IS NOT NULL")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        shipped == 1 && metrics.contains("ledger_forgotten_orders 1")
    })
    .await;
    // Not in memory any more, still spent: PostgreSQL is asked and says so.
    let again = client.post("/api/coupons/redeem", &redeem).await;
    assert_eq!((again.status, again.json()["reason"].clone()), (StatusCode::CONFLICT, json!("ORDER_ALREADY_REDEEMED")));
    let repeat = client.post("/api/coupons/release", &json!({"code": "TEN", "orderId": "o-1"})).await;
    assert_eq!((repeat.status, repeat.json()), (StatusCode::OK, json!({"released": true})));
    let never = client.post("/api/coupons/release", &json!({"code": "TEN", "orderId": "o-never"})).await;
    assert_eq!(never.status, StatusCode::NOT_FOUND);
    let metrics = client.get("/metrics").await.text;
    assert!(metrics.contains("ledger_archive_lookups_total 2"), "{metrics}");
    app.stop().await.unwrap();
}

/// Safe by default: without an API token, a service other machines can reach refuses to
/// start (one line says why and what to set); with the token, or the explicit yes, it starts.
#[test]
fn writes_open_to_other_machines_need_a_token_or_an_explicit_yes() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime.block_on(TestDb::new());
    let dir = crate::helpers::temp_dir("coupon-engine-open-");
    let data_dir = dir.path().display().to_string();
    let env = [("DATABASE_URL", db.url.as_str()), ("HTTP_ADDR", "0.0.0.0:0"), ("DATA_DIR", data_dir.as_str())];
    let output = crate::helpers::binary(&["serve"], &env).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("API_TOKEN is not set") && stderr.contains("ALLOW_ANONYMOUS_WRITES"), "{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.contains("API_TOKEN is not set")).count(), 1, "{stderr}");
    for extra in [("API_TOKEN", API), ("COUPON__HTTP__ALLOW_ANONYMOUS_WRITES", "true")] {
        let mut env = env.to_vec();
        env.push(extra);
        let server = crate::helpers::ServeProcess::start(&db.url, &env[1..]);
        runtime.block_on(TestClient::new(server.addr).wait_ready());
        assert!(server.terminate().success(), "{extra:?}");
    }
}
