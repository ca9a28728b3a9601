//! Hostile clients and overload: each gets a clear 4xx/503 or a closed connection, and the
//! service keeps serving everyone else.

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{PgProxy, TestApp, TestDb, eventually, insert_coupon, raw_exchange};

const VALID: &str = r#"{"code":"TEN","userId":"u","orderValue":100}"#;

fn post(body: &str) -> String {
    format!(
        "POST /api/coupons/validate HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

async fn still_serving(app: &TestApp) {
    let answer = app.client.validate(json!({"code": "TEN", "userId": "u", "orderValue": 100})).await;
    assert_eq!(answer["valid"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_holds_no_slot_and_past_the_in_flight_bound_the_answer_is_503_at_once() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    let proxy = PgProxy::start(&db.url).await;
    let app = TestApp::spawn_with(
        &proxy.url,
        &[
            ("COUPON__HTTP__MAX_IN_FLIGHT", "1"),
            ("COUPON__HTTP__BODY_READ_TIMEOUT", "1s"),
            ("COUPON__HTTP__ADMIN_TIMEOUT", "3s"),
            ("ADMIN_TOKEN", "t0ken-t0ken-t0ken"),
        ],
    )
    .await;
    // A body that never finishes does not take the only place: others are served meanwhile,
    // and the slow client gets 408 and a closed connection.
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    let head = post(VALID);
    slow.write_all(&head.as_bytes()[..head.len() - 10]).await.unwrap();
    for _ in 0..20 {
        still_serving(&app).await;
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut answer)).await.expect("closed").unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("BODY_TIMEOUT"), "{answer}");

    // A request stuck in its handler does hold it: an admin call on a database that hangs.
    proxy.stall().await;
    let stuck = {
        let client = app.client.clone();
        tokio::spawn(async move {
            client
                .request_with(Method::POST, "/admin/cache/reload", "", &[("authorization", "Bearer t0ken-t0ken-t0ken")])
                .await
        })
    };
    // Nothing else is sent meanwhile: a validate arriving first would hold the only place
    // and the reload would be the one refused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if stuck.is_finished() {
        panic!("the reload should hang on the stalled database: {}", stuck.await.unwrap().text);
    }
    let body = json!({"code": "TEN", "userId": "u", "orderValue": 100});
    let refused = app.client.post("/api/coupons/validate", &body).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.text);
    assert_eq!(refused.headers["retry-after"], "1");
    assert_eq!(refused.json()["error"]["code"], "OVERLOADED");
    let timed_out = stuck.await.unwrap();
    assert_eq!(
        (timed_out.status, timed_out.json()["error"]["code"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("TIMEOUT"))
    );
    proxy.restore().await;
    still_serving(&app).await;
    let metrics = app.client.get("/metrics").await.text;
    assert!(
        metrics.contains(r#"http_requests_total{route="/api/coupons/validate",status="503"}"#),
        "the overload is counted on its route: {metrics}"
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_told_503_and_closed() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    let app = TestApp::spawn_with(&db.url, &[("COUPON__HTTP__MAX_CONNECTIONS", "3")]).await;
    // Connections with a request in flight fill every place: slow bodies, 3 KiB promised,
    // within their first second.
    let mut busy = Vec::new();
    for _ in 0..3 {
        busy.push(slow_body(app.addr).await);
    }
    eventually(Duration::from_secs(5), "a connection past the limit to be refused", || async {
        raw_exchange(app.addr, post(VALID).as_bytes(), Duration::from_secs(2)).await.starts_with("HTTP/1.1 503")
    })
    .await;
    let reply = raw_exchange(app.addr, post(VALID).as_bytes(), Duration::from_secs(2)).await;
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply:?}");
    assert!(reply.contains("retry-after: 1") && reply.contains("OVERLOADED"), "{reply:?}");
    // Past a second, a body still arriving is slow: the slowest makes room for a newcomer.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let reply = raw_exchange(app.addr, post(VALID).as_bytes(), Duration::from_secs(2)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    drop(busy);
    // Idle connections fill every place instead: the one idle longest makes room for a new one.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(app.addr).await.unwrap());
    }
    eventually(Duration::from_secs(5), "a new client served in an idle one's place", || async {
        raw_exchange(app.addr, post(VALID).as_bytes(), Duration::from_secs(2)).await.starts_with("HTTP/1.1 200")
    })
    .await;
    let mut oldest = idle.remove(0);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), oldest.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the longest idle connection was closed");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_share_of_connections() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    // Loopback is capped like any other address by default.
    let app = TestApp::spawn_with(&db.url, &[("COUPON__HTTP__MAX_CONNECTIONS_PER_ADDRESS", "4")]).await;
    // Four bodies arriving slowly, but within their first second: none may make room.
    let mut slow = Vec::new();
    for _ in 0..4 {
        slow.push(slow_body(app.addr).await);
    }
    let reply = raw_exchange(app.addr, post(VALID).as_bytes(), Duration::from_millis(800)).await;
    assert!(reply.starts_with("HTTP/1.1 503") && reply.contains("OVERLOADED"), "{reply:?}");
    // Past a second, the slowest body makes room for a newcomer from its own address.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let reply = raw_exchange(app.addr, post(VALID).as_bytes(), Duration::from_secs(2)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    let mut closed = 0;
    for stream in &mut slow {
        let mut rest = Vec::new();
        if tokio::time::timeout(Duration::from_millis(200), stream.read_to_end(&mut rest)).await.is_ok() {
            closed += 1;
        }
    }
    assert_eq!(closed, 1, "one slow body made room");
    drop(slow);
    // Idle connections of the address fill its places: its idlest makes room.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(app.addr).await.unwrap());
    }
    eventually(Duration::from_secs(5), "a newcomer served in the address's idlest place", || async {
        raw_exchange(app.addr, post(VALID).as_bytes(), Duration::from_secs(2)).await.starts_with("HTTP/1.1 200")
    })
    .await;
    app.stop().await.unwrap();
}

/// A connection whose request body has begun (the server's 100 Continue says so) and stops.
async fn slow_body(addr: std::net::SocketAddr) -> TcpStream {
    let slow_head = "POST /api/coupons/validate HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
                     expect: 100-continue\r\ncontent-length: 3000\r\n\r\n";
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(slow_head.as_bytes()).await.unwrap();
    let mut continued = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut continued)).await.unwrap().unwrap();
    assert!(continued.starts_with(b"HTTP/1.1 100 Continue"), "{:?}", String::from_utf8_lossy(&continued));
    stream.write_all(b"{").await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_get_a_4xx_or_a_closed_connection() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    let app = TestApp::spawn_with(&db.url, &[("COUPON__HTTP__HEADER_READ_TIMEOUT", "300ms")]).await;
    let wait = Duration::from_secs(3);

    let huge_header = format!("GET /health HTTP/1.1\r\nhost: t\r\nx-junk: {}\r\n\r\n", "a".repeat(20_000));
    let reply = raw_exchange(app.addr, huge_header.as_bytes(), wait).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "oversized headers: {reply:?}");

    // Slow-loris: half a request head, then silence. The server hangs up.
    let mut loris = TcpStream::connect(app.addr).await.unwrap();
    loris.write_all(b"POST /api/coupons/validate HTTP/1.1\r\nhost: t\r\n").await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(wait, loris.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a slow-loris connection must be closed by the server");

    // An idle keep-alive connection is closed too, once the next head is overdue.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(post(VALID).as_bytes()).await.unwrap();
    let mut answer = vec![0; 1024];
    let n = idle.read(&mut answer).await.unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"));
    let mut rest = Vec::new();
    assert!(tokio::time::timeout(wait, idle.read_to_end(&mut rest)).await.is_ok(), "idle keep-alive must be closed");

    // Pipelined: two requests in one write, two answers in order.
    let two = format!("{}{}", post(VALID), post(r#"{"code":"NOPE","userId":"u","orderValue":1}"#));
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(two.as_bytes()).await.unwrap();
    let mut answers = String::new();
    let deadline = tokio::time::Instant::now() + wait;
    while answers.matches("HTTP/1.1 200").count() < 2 && tokio::time::Instant::now() < deadline {
        let mut buf = vec![0; 4096];
        match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answers.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => break,
        }
    }
    let first = answers.find(r#""valid":true"#).expect("first answer");
    let second = answers.find("COUPON_NOT_FOUND").expect("second answer");
    assert!(first < second, "{answers}");

    for (bytes, what) in [
        (&b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..], "a TLS hello"),
        (&b"GARBAGE / HTTP/9.9\r\n\r\n"[..], "an unknown protocol"),
        (&b"POST /api/coupons/validate HTTP/1.1\r\ncontent-length: 50\r\n\r\n{\"co"[..], "a truncated body"),
        (&b"\r\n\r\n\r\n"[..], "blank lines"),
    ] {
        let reply = raw_exchange(app.addr, bytes, wait).await;
        assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 4"), "{what}: {reply:?}");
    }

    // Within the size limit, JSON nested thousands deep, 400-digit numbers and odd codes.
    let deep = format!(r#"{{"code":"TEN","userId":"u","orderValue":{}1{}}}"#, "[".repeat(7000), "]".repeat(7000));
    let digits = format!(r#"{{"code":"TEN","userId":"u","orderValue":{}}}"#, "9".repeat(400));
    for body in [
        deep,
        digits,
        r#"{"code":"TEN\u0000","userId":"u","orderValue":1}"#.into(),
        r#"{"code":"TEN","userId":"\u001b[31m","orderValue":1}"#.into(),
    ] {
        let response = app.client.request(Method::POST, "/api/coupons/validate", body.clone()).await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{}: {}", &body[..60.min(body.len())], response.text);
    }
    let unicode = app.client.validate(json!({"code": "ÜBER€💥", "userId": "ユーザー", "orderValue": 1})).await;
    assert_eq!(unicode["reason"], "COUPON_NOT_FOUND");
    assert_eq!(unicode["code"], "ÜBER€💥");
    still_serving(&app).await;
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_on_a_hung_database_time_out_instead_of_hanging() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    let proxy = PgProxy::start(&db.url).await;
    let app = TestApp::spawn_with(
        &proxy.url,
        &[("ADMIN_TOKEN", "t-t-t-t-t-t-t-t-t"), ("COUPON__HTTP__ADMIN_TIMEOUT", "300ms")],
    )
    .await;
    proxy.cut().await;
    let reload = app
        .client
        .request_with(Method::POST, "/admin/cache/reload", "", &[("authorization", "Bearer t-t-t-t-t-t-t-t-t")])
        .await;
    assert_eq!(reload.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reload.text);
    assert!(["TIMEOUT", "DATABASE_UNAVAILABLE"].contains(&reload.json()["error"]["code"].as_str().unwrap()));
    assert_eq!(reload.headers["retry-after"], "1");
    still_serving(&app).await;
    proxy.restore().await;
    app.stop().await.unwrap();
}

async fn lookup(app: &TestApp, code: &str, user: &str, headers: &[(&str, &str)]) -> crate::helpers::TestResponse {
    let body = json!({"code": code, "userId": user, "orderValue": 100}).to_string();
    app.client.request_with(Method::POST, "/api/coupons/validate", body, headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_guessing_codes_is_stopped_and_others_are_not() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    let app = TestApp::spawn_with(
        &db.url,
        &[("COUPON__PROTECTION__FAILED_LOOKUPS_PER_USER", "5"), ("COUPON__PROTECTION__WINDOW", "2s")],
    )
    .await;
    // Valid lookups never count.
    for _ in 0..50 {
        assert_eq!(lookup(&app, "TEN", "guesser", &[]).await.status, StatusCode::OK);
    }
    for n in 0..5 {
        let answer = lookup(&app, &format!("GUESS-{n}"), "guesser", &[]).await;
        assert_eq!((answer.status, answer.json()["reason"].clone()), (StatusCode::OK, json!("COUPON_NOT_FOUND")));
    }
    let refused = lookup(&app, "GUESS-5", "guesser", &[]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{}", refused.text);
    assert_eq!(refused.json()["error"]["code"], "TOO_MANY_FAILED_LOOKUPS");
    let retry_after: u64 = refused.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    // Over budget, even a right guess tells nothing, and redeeming is refused too.
    assert_eq!(lookup(&app, "TEN", "guesser", &[]).await.status, StatusCode::TOO_MANY_REQUESTS);
    let redeem = json!({"code": "TEN", "userId": "guesser", "orderValue": 100, "orderId": "o-1"});
    assert_eq!(app.client.post("/api/coupons/redeem", &redeem).await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(lookup(&app, "TEN", "someone-else", &[]).await.status, StatusCode::OK);
    let metrics = app.client.get("/metrics").await.text;
    assert!(metrics.contains(r#"coupon_lookups_refused_total{scope="user"} 3"#), "{metrics}");
    // The window ends and the user may try again.
    eventually(Duration::from_secs(5), "the window to end", || async {
        lookup(&app, "TEN", "guesser", &[]).await.status == StatusCode::OK
    })
    .await;
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_budget_follows_forwarded_addresses_from_trusted_proxies_only() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    // Anonymous callers (no API token) are budgeted per address.
    let app = TestApp::spawn_with(
        &db.url,
        &[
            ("API_TOKEN", "api-token-api-token"),
            ("COUPON__PROTECTION__FAILED_LOOKUPS_PER_USER", "0"),
            ("COUPON__PROTECTION__FAILED_LOOKUPS_PER_ADDRESS", "3"),
            ("COUPON__PROTECTION__TRUSTED_PROXIES", "127.0.0.1"),
        ],
    )
    .await;
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    for n in 0..3 {
        let answer = lookup(&app, &format!("GUESS-{n}"), &format!("user-{n}"), &from("203.0.113.5")).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let refused = lookup(&app, "TEN", "fresh-user", &from("203.0.113.5")).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{}", refused.text);
    assert_eq!(lookup(&app, "TEN", "fresh-user", &from("203.0.113.6")).await.status, StatusCode::OK);
    // The log records the client's address, not the proxy's.
    eventually(Duration::from_secs(5), "logged with the forwarded address", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM validation_logs WHERE host(ip_address) = '203.0.113.5'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        n == 3
    })
    .await;
    app.stop().await.unwrap();
}

/// Anonymous validation is bounded per address (each one is logged for 30 days): past
/// `protection.anonymous_validations_per_minute`, 429 with Retry-After; the backend, with its
/// token, is not counted, nor is another address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_validations_are_bounded_per_address() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    let app = TestApp::spawn_with(
        &db.url,
        &[
            ("API_TOKEN", "api-token-api-token"),
            ("COUPON__PROTECTION__ANONYMOUS_VALIDATIONS_PER_MINUTE", "3"),
            ("COUPON__PROTECTION__TRUSTED_PROXIES", "127.0.0.1"),
        ],
    )
    .await;
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    for n in 0..3 {
        assert_eq!(lookup(&app, "TEN", &format!("shopper-{n}"), &from("203.0.113.8")).await.status, StatusCode::OK);
    }
    let refused = lookup(&app, "TEN", "shopper-9", &from("203.0.113.8")).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{}", refused.text);
    assert_eq!(refused.json()["error"]["code"], "TOO_MANY_VALIDATIONS");
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(lookup(&app, "TEN", "shopper-9", &from("203.0.113.9")).await.status, StatusCode::OK);
    let backend = [("x-forwarded-for", "203.0.113.8"), ("authorization", "Bearer api-token-api-token")];
    for n in 0..5 {
        assert_eq!(lookup(&app, "TEN", &format!("b-{n}"), &backend).await.status, StatusCode::OK);
    }
    assert_eq!(app.client.metric("coupon_lookups_refused_total{scope=\"validations\"}").await, 1.0);
    app.stop().await.unwrap();
}

/// A thousand silent sockets from one address (its whole share) leave every ordinary request
/// answered: a newcomer takes a silent socket's place, never that of a client's kept-alive
/// connection while others never asked anything (closing that one races its next request:
/// the one in 300 once left unanswered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_silent_sockets_leave_every_ordinary_request_answered() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    let app = std::sync::Arc::new(TestApp::spawn(&db).await);
    let mut silent = Vec::with_capacity(1_000);
    for _ in 0..1_000 {
        silent.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let clients: Vec<_> = (0..3)
        .map(|task| {
            let app = std::sync::Arc::clone(&app);
            tokio::spawn(async move {
                for n in 0..100 {
                    let body = serde_json::json!({"code": "TEN", "userId": format!("u{task}-{n}"), "orderValue": 10});
                    let response = app.client.post("/api/coupons/validate", &body).await;
                    assert_eq!(response.status, hyper::StatusCode::OK, "{}", response.text);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    drop(silent);
    std::sync::Arc::into_inner(app).expect("the only handle").stop().await.unwrap();
}
