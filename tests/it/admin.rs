//! The admin API: auth, cache control, coupon create/read/patch, statistics, recent log.

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    ServeProcess, TestApp, TestClient, TestDb, TestResponse, eventually, insert_coupon, insert_usage, insert_users,
};

const TOKEN: &str = "s3cret-admin-t0ken";

async fn admin(client: &TestClient, method: Method, path: &str, body: Option<Value>) -> TestResponse {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    client.request_with(method, path, body, &[("authorization", &format!("Bearer {TOKEN}"))]).await
}

const ADMIN_ROUTES: [(Method, &str); 7] = [
    (Method::POST, "/admin/cache/reload"),
    (Method::GET, "/admin/cache/stats"),
    (Method::POST, "/admin/coupons"),
    (Method::GET, "/admin/coupons/TEN"),
    (Method::PATCH, "/admin/coupons/TEN"),
    (Method::GET, "/admin/coupons/TEN/stats"),
    (Method::GET, "/admin/validations/recent"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_token_every_admin_call_is_401() {
    let db = TestDb::new().await;
    let app = TestApp::spawn_with(&db.url, &[("COUPON__PROTECTION__FAILED_ADMIN_AUTHS_PER_ADDRESS", "0")]).await;
    for (method, path) in ADMIN_ROUTES {
        for auth in [None, Some("Bearer "), Some("Bearer anything")] {
            let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
            let response = app.client.request_with(method.clone(), path, "{}", &headers).await;
            assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{method} {path} {auth:?}");
            assert_eq!(response.json()["error"]["code"], "UNAUTHORIZED");
        }
    }
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_are_401_and_the_right_one_works() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    let app = TestApp::spawn_with(
        &db.url,
        &[("ADMIN_TOKEN", TOKEN), ("COUPON__PROTECTION__FAILED_ADMIN_AUTHS_PER_ADDRESS", "0")],
    )
    .await;
    let wrong = [
        "",
        "Bearer",
        "Bearer ",
        "bearer s3cret-admin-t0ken",
        "Basic s3cret-admin-t0ken",
        "Bearer s3cret-admin-t0ke",
        "Bearer s3cret-admin-t0ken-and-more",
        "Bearer S3CRET-ADMIN-T0KEN",
    ];
    for (method, path) in ADMIN_ROUTES {
        for auth in wrong {
            let response = app.client.request_with(method.clone(), path, "{}", &[("authorization", auth)]).await;
            assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{method} {path} {auth:?}");
            assert_eq!(response.headers["www-authenticate"], "Bearer");
        }
    }
    let stats = admin(&app.client, Method::GET, "/admin/cache/stats", None).await;
    assert_eq!(stats.status, StatusCode::OK, "{}", stats.text);
    let stats = stats.json();
    assert_eq!(stats["coupons"], 1);
    assert_eq!(stats["listener"]["state"], "listening");
    assert_eq!(stats["database"], "up");
    assert_eq!(stats["queues"]["validationLogs"], 0);
    assert!(stats["reloads"].as_u64() >= Some(1) && stats["lastReloadAt"].is_string(), "{stats}");
    let reload = admin(&app.client, Method::POST, "/admin/cache/reload", None).await.json();
    assert_eq!(reload["coupons"], 1);
    assert!(reload["durationMs"].is_u64(), "{reload}");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coupons_are_created_read_and_patched_through_the_database() {
    let db = TestDb::new().await;
    insert_users(&db.pool, &["user_a", "user_b"]).await;
    insert_coupon(&db.pool, "TAKEN", &[]).await;
    let used = insert_coupon(&db.pool, "USED", &[]).await;
    insert_usage(&db.pool, used, "user_b", "o-1").await;
    let app = TestApp::spawn_with(&db.url, &[("ADMIN_TOKEN", TOKEN)]).await;
    let client = &app.client;

    let body = json!({
        "code": "welcome15", "type": "user_specific", "userId": "user_a", "discountType": "percentage",
        "discountValue": 12.5, "maxDiscount": 30, "minOrderValue": 50, "usageLimit": 100, "perUserLimit": 1,
        "validFrom": "2020-01-01T00:00:00Z", "validUntil": "2099-01-01T00:00:00Z"
    });
    let created = admin(client, Method::POST, "/admin/coupons", Some(body)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let created = created.json();
    for (field, value) in [
        ("code", json!("WELCOME15")),
        ("type", json!("user_specific")),
        ("status", json!("active")),
        ("discountType", json!("percentage")),
        ("discountValue", json!(12.5)),
        ("maxDiscount", json!(30)),
        ("minOrderValue", json!(50)),
        ("usageLimit", json!(100)),
        ("perUserLimit", json!(1)),
        ("userId", json!("user_a")),
        ("validFrom", json!("2020-01-01T00:00:00.000Z")),
        ("cached", json!(true)),
    ] {
        assert_eq!(created[field], value, "{field}: {created}");
    }
    // The write reached this instance's cache before the answer: the next request sees it.
    let valid = client.validate(json!({"code": "welcome15", "userId": "user_a", "orderValue": 100})).await;
    assert_eq!((valid["valid"].clone(), valid["discount"].clone()), (json!(true), json!(12.5)), "{valid}");

    for (body, status, code) in [
        (
            json!({"code": "TAKEN", "type": "time_specific", "discountType": "fixed", "discountValue": 5}),
            StatusCode::CONFLICT,
            "CONFLICT",
        ),
        (
            json!({"code": "HUGE", "type": "time_specific", "discountType": "percentage", "discountValue": 150}),
            StatusCode::BAD_REQUEST,
            "INVALID_FIELD",
        ),
        (
            json!({"code": "NOBODY", "type": "user_specific", "userId": "ghost", "discountType": "fixed", "discountValue": 5}),
            StatusCode::BAD_REQUEST,
            "INVALID_FIELD",
        ),
        (json!({"code": "HALF", "type": "time_specific"}), StatusCode::BAD_REQUEST, "MISSING_FIELD"),
        (json!([1, 2]), StatusCode::BAD_REQUEST, "INVALID_JSON"),
    ] {
        let response = admin(client, Method::POST, "/admin/coupons", Some(body.clone())).await;
        assert_eq!(response.status, status, "{body}: {}", response.text);
        assert_eq!(response.json()["error"]["code"], code, "{body}");
    }

    let read = admin(client, Method::GET, "/admin/coupons/welcome15", None).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.json()["usage"]["total"], 0);
    let read = admin(client, Method::GET, "/admin/coupons/used", None).await.json();
    assert_eq!(read["usage"]["total"], 1, "{read}");
    let missing = admin(client, Method::GET, "/admin/coupons/NOPE", None).await;
    assert_eq!(
        (missing.status, missing.json()["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("COUPON_NOT_FOUND"))
    );

    let patched = admin(
        client,
        Method::PATCH,
        "/admin/coupons/WELCOME15",
        Some(json!({"status": "inactive", "maxDiscount": null})),
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    let patched = patched.json();
    assert_eq!((patched["status"].clone(), patched["maxDiscount"].clone()), (json!("inactive"), Value::Null));
    assert!(patched["version"].as_i64() > created["version"].as_i64(), "{patched}");
    let after = client.validate(json!({"code": "WELCOME15", "userId": "user_a", "orderValue": 100})).await;
    assert_eq!(after["reason"], "COUPON_INACTIVE");
    for (path, body, status) in [
        ("/admin/coupons/NOPE", json!({"status": "active"}), StatusCode::NOT_FOUND),
        ("/admin/coupons/WELCOME15", json!({"discountValue": 101}), StatusCode::BAD_REQUEST),
        ("/admin/coupons/WELCOME15", json!({"status": "gone"}), StatusCode::BAD_REQUEST),
        ("/admin/coupons/WELCOME15", json!({"code": "TAKEN"}), StatusCode::CONFLICT),
        ("/admin/coupons/WELCOME15", json!({"typo": 1}), StatusCode::BAD_REQUEST),
    ] {
        let response = admin(client, Method::PATCH, path, Some(body.clone())).await;
        assert_eq!(response.status, status, "{path} {body}: {}", response.text);
    }
    let unchanged: String =
        sqlx::query_scalar("SELECT status FROM coupons WHERE code = 'WELCOME15'").fetch_one(&db.pool).await.unwrap();
    assert_eq!(unchanged, "inactive", "refused patches change nothing");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_statistics_and_recent_log_come_from_the_database() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[("min_order_value", "50")]).await;
    let app = TestApp::spawn_with(&db.url, &[("ADMIN_TOKEN", TOKEN)]).await;
    let client = &app.client;
    for order_value in [100, 100, 100, 10, 20] {
        client.validate(json!({"code": "ten", "userId": "u", "orderValue": order_value})).await;
    }
    client.validate(json!({"code": "OTHER", "userId": "u", "orderValue": 1})).await;
    eventually(Duration::from_secs(5), "6 rows logged", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM validation_logs").fetch_one(&db.pool).await.unwrap() == 6
    })
    .await;
    let stats = admin(client, Method::GET, "/admin/coupons/ten/stats", None).await;
    assert_eq!(stats.status, StatusCode::OK, "{}", stats.text);
    assert_eq!(
        stats.json(),
        json!({"code": "TEN", "total": 5, "valid": 3, "invalid": 2, "byReason": {"MIN_ORDER_VALUE_NOT_MET": 2}})
    );
    assert_eq!(admin(client, Method::GET, "/admin/coupons/OTHER/stats", None).await.status, StatusCode::NOT_FOUND);

    let recent = admin(client, Method::GET, "/admin/validations/recent?limit=2", None).await;
    assert_eq!(recent.status, StatusCode::OK, "{}", recent.text);
    let recent = recent.json();
    let rows = recent["validations"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{recent}");
    assert_eq!(rows[0]["couponCode"], "OTHER");
    assert_eq!(rows[0]["reason"], "COUPON_NOT_FOUND");
    assert_eq!(rows[1]["orderValue"], json!(20));
    assert_eq!(rows[1]["isValid"], false);
    let all = admin(client, Method::GET, "/admin/validations/recent", None).await.json();
    assert_eq!(all["validations"].as_array().unwrap().len(), 6);
    for bad in ["limit=0", "limit=5000", "limit=x"] {
        let response = admin(client, Method::GET, &format!("/admin/validations/recent?{bad}"), None).await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_validations_are_the_newest_across_idle_gaps_and_rows_added_by_hand() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    let app = TestApp::spawn_with(&db.url, &[("ADMIN_TOKEN", TOKEN)]).await;
    let client = &app.client;
    // Three days ago, ten busy minutes, with counts from before `last_at` existed; two hours
    // ago, three rows added by hand with no counts at all. Neither is near any anchor.
    sqlx::raw_sql(
        "SELECT validation_log_add_days((now() AT TIME ZONE 'UTC')::date - 4, (now() AT TIME ZONE 'UTC')::date); \
         INSERT INTO validation_log (validated_at, order_value, discount, final_amount, response_time_us, coupon_code, user_id) \
         SELECT now() - interval '3 days' + g * interval '2 seconds', 100, 0, 100, 10, 'OLD', 'u' || g \
         FROM generate_series(1, 300) g; \
         INSERT INTO validation_counts (hour, coupon_code, reason, count) \
         SELECT date_trunc('hour', validated_at), coupon_code, 0, count(*) FROM validation_log GROUP BY 1, 2; \
         INSERT INTO validation_log (validated_at, order_value, discount, final_amount, response_time_us, coupon_code, user_id) \
         SELECT now() - interval '2 hours' + g * interval '1 second', 100, 0, 100, 10, 'BY-HAND', 'h' || g \
         FROM generate_series(1, 3) g;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let newest_by_sql = |limit: i64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT id FROM validation_logs ORDER BY validated_at DESC, id DESC LIMIT $1")
                .bind(limit)
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };
    let ids = |answer: serde_json::Value| -> Vec<i64> {
        answer["validations"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect()
    };
    let before = admin(client, Method::GET, "/admin/validations/recent?limit=100", None).await.json();
    assert_eq!(ids(before.clone()), newest_by_sql(100).await);
    assert_eq!(before["validations"][0]["couponCode"], "BY-HAND");
    assert_eq!(before["validations"][3]["couponCode"], "OLD");

    // Two live validations: their counts carry the newest time, far from every other row.
    for user in ["live_1", "live_2"] {
        client.validate(json!({"code": "TEN", "userId": user, "orderValue": 100})).await;
    }
    eventually(Duration::from_secs(5), "the live rows logged", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM validation_logs WHERE coupon_code = 'TEN'")
            .fetch_one(&db.pool)
            .await
            .unwrap()
            == 2
    })
    .await;
    for limit in [1, 2, 5, 100, 303, 1000] {
        let answer = admin(client, Method::GET, &format!("/admin/validations/recent?limit={limit}"), None).await.json();
        assert_eq!(ids(answer), newest_by_sql(limit).await, "limit {limit}");
    }
    let after = admin(client, Method::GET, "/admin/validations/recent?limit=3", None).await.json();
    let users: Vec<&str> =
        after["validations"].as_array().unwrap().iter().map(|r| r["userId"].as_str().unwrap()).collect();
    assert_eq!(users, ["live_2", "live_1", "h3"]);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_reaches_the_logs() {
    let db = TestDb::new().await;
    let server = ServeProcess::start(&db.url, &[("ADMIN_TOKEN", TOKEN), ("COUPON__LOG__LEVEL", "trace")]);
    let client = TestClient::new(server.addr);
    client.wait_ready().await;
    for auth in [format!("Bearer {TOKEN}"), format!("Bearer {TOKEN}x")] {
        client.request_with(Method::GET, "/admin/cache/stats", "", &[("authorization", &auth)]).await;
        client.request_with(Method::POST, "/admin/coupons", "{\"code\":1}", &[("authorization", &auth)]).await;
    }
    let lines = server.log_lines();
    assert!(server.terminate().success());
    assert!(!lines.is_empty());
    for line in lines {
        assert!(!line.contains(TOKEN), "token in log line: {line}");
    }
}

/// Wrong tokens from one address are throttled (429 past the budget); the right token from the
/// same address always passes: someone sharing the admin's address cannot lock the admin out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_admin_token_passes_however_many_wrong_ones_came_first() {
    let db = TestDb::new().await;
    let app = TestApp::spawn_with(
        &db.url,
        &[("ADMIN_TOKEN", TOKEN), ("COUPON__PROTECTION__FAILED_ADMIN_AUTHS_PER_ADDRESS", "3")],
    )
    .await;
    let wrong = [("authorization", "Bearer wrong-wrong-wrong-wrong")];
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(app.client.request_with(Method::GET, "/admin/cache/stats", "", &wrong).await.status);
    }
    assert_eq!(&statuses[..3], [StatusCode::UNAUTHORIZED; 3], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    assert_eq!(admin(&app.client, Method::GET, "/admin/cache/stats", None).await.status, StatusCode::OK);
    app.stop().await.unwrap();
}
