//! The catalog follows PostgreSQL: changes by any SQL client, listener loss, outages, reloads.

use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{PgProxy, TestApp, TestClient, TestDb, eventually, insert_coupon, insert_usage};

const DEADLINE: Duration = Duration::from_secs(5);

async fn reason_of(client: &TestClient, code: &str) -> Value {
    client.validate(json!({"code": code, "userId": "u", "orderValue": 100})).await["reason"].clone()
}

async fn wait_for_reason(client: &TestClient, code: &str, reason: Value) {
    let what = format!("{code} answers {reason}");
    eventually(DEADLINE, &what, || async { reason_of(client, code).await == reason }).await;
}

async fn execute(pool: &PgPool, sql: &'static str) {
    sqlx::raw_sql(sql).execute(pool).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_by_a_plain_sql_client_are_served() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "EDITED", &[]).await;
    insert_coupon(&db.pool, "DOOMED", &[]).await;
    let app = TestApp::spawn(&db).await;
    let client = &app.client;

    execute(&db.pool, "UPDATE coupons SET status = 'inactive' WHERE code = 'EDITED'").await;
    wait_for_reason(client, "EDITED", json!("COUPON_INACTIVE")).await;

    execute(
        &db.pool,
        "INSERT INTO coupons (code, type, discount_type, discount_value) VALUES ('FRESH', 'time_specific', 'fixed', 5)",
    )
    .await;
    wait_for_reason(client, "FRESH", Value::Null).await;

    execute(&db.pool, "DELETE FROM coupons WHERE code = 'DOOMED'").await;
    wait_for_reason(client, "DOOMED", json!("COUPON_NOT_FOUND")).await;

    // A code moved from one row to another in one transaction.
    execute(&db.pool, "BEGIN; UPDATE coupons SET code = 'RENAMED' WHERE code = 'FRESH'; \
         INSERT INTO coupons (code, type, discount_type, discount_value, status) VALUES ('FRESH', 'time_specific', 'fixed', 5, 'expired'); COMMIT").await;
    wait_for_reason(client, "FRESH", json!("COUPON_EXPIRED")).await;
    wait_for_reason(client, "RENAMED", Value::Null).await;

    // Hundreds of rows in one statement: one notification, one reload, one swap.
    execute(
        &db.pool,
        "INSERT INTO coupons (code, type, discount_type, discount_value) \
         SELECT 'BULK-' || g, 'time_specific', 'percentage', 10 FROM generate_series(1, 800) g",
    )
    .await;
    wait_for_reason(client, "BULK-800", Value::Null).await;
    execute(&db.pool, "UPDATE coupons SET status = 'inactive' WHERE code LIKE 'BULK-%'").await;
    wait_for_reason(client, "BULK-1", json!("COUPON_INACTIVE")).await;
    for code in ["BULK-2", "BULK-400", "BULK-800"] {
        assert_eq!(reason_of(client, code).await, json!("COUPON_INACTIVE"), "{code}");
    }
    // Many small statements in a burst are coalesced too; every one is applied.
    for n in 1..=200 {
        let sql = format!("UPDATE coupons SET status = 'active' WHERE code = 'BULK-{n}'");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&db.pool).await.unwrap();
    }
    wait_for_reason(client, "BULK-200", Value::Null).await;
    for code in ["BULK-1", "BULK-100"] {
        assert_eq!(reason_of(client, code).await, Value::Null, "{code}");
    }
    assert_eq!(client.get("/health").await.json()["coupons"], 803);
    app.stop().await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_user_limit_added_by_sql_counts_the_uses_before_it() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "LATER", &[]).await;
    let token = "live-cache-admin-token";
    let app = TestApp::spawn_with(&db.url, &[("ADMIN_TOKEN", token)]).await;
    let client = &app.client;
    let redeem = |order: &str| json!({"code": "LATER", "userId": "carol", "orderId": order, "orderValue": 100});
    for order in ["o-1", "o-2"] {
        assert_eq!(client.post("/api/coupons/redeem", &redeem(order)).await.status, 201);
    }
    execute(&db.pool, "UPDATE coupons SET per_user_limit = 2 WHERE code = 'LATER'").await;
    let what = "the two uses before the limit count against it";
    eventually(DEADLINE, what, || async {
        let body = json!({"code": "LATER", "userId": "carol", "orderValue": 100});
        client.validate(body).await["reason"] == json!("USER_USAGE_LIMIT_REACHED")
    })
    .await;
    let third = client.post("/api/coupons/redeem", &redeem("o-3")).await;
    assert_eq!(third.status, 422);
    assert_eq!(third.json()["reason"], json!("USER_USAGE_LIMIT_REACHED"));
    // A full reload keeps them counted, once.
    let auth = format!("Bearer {token}");
    let reload = client.request_with(Method::POST, "/admin/cache/reload", "", &[("authorization", &auth)]).await;
    assert_eq!(reload.status, 200);
    let released = client.post("/api/coupons/release", &json!({"code": "LATER", "orderId": "o-1"})).await;
    assert_eq!(released.status, 200);
    let fourth = client.post("/api/coupons/redeem", &redeem("o-4")).await;
    assert_eq!(fourth.status, 201, "one use given back: {}", fourth.text);
    let fifth = client.post("/api/coupons/redeem", &redeem("o-5")).await;
    assert_eq!(fifth.json()["reason"], json!("USER_USAGE_LIMIT_REACHED"));
    app.stop().await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_listener_reconnects_and_misses_nothing() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "GAP", &[]).await;
    let app = TestApp::spawn_with(&db.url, &[("ADMIN_TOKEN", "t0ken-t0ken-t0ken")]).await;
    // Kill the listener's backend and change the coupon before it can reconnect.
    execute(
        &db.pool,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'; \
         UPDATE coupons SET status = 'inactive' WHERE code = 'GAP';",
    )
    .await;
    wait_for_reason(&app.client, "GAP", json!("COUPON_INACTIVE")).await;
    let stats = app
        .client
        .request_with(hyper::Method::GET, "/admin/cache/stats", "", &[("authorization", "Bearer t0ken-t0ken-t0ken")])
        .await
        .json();
    assert!(stats["listener"]["reconnects"].as_u64() >= Some(1), "{stats}");
    eventually(DEADLINE, "listening again", || async {
        app.client.get("/health").await.json()["listener"] == "listening"
    })
    .await;
    // And it still follows changes after the reconnect.
    execute(&db.pool, "UPDATE coupons SET status = 'active' WHERE code = 'GAP'").await;
    wait_for_reason(&app.client, "GAP", Value::Null).await;
    app.stop().await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_degrades_health_and_a_change_made_during_it_is_served_after() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "DARK", &[]).await;
    let proxy = PgProxy::start(&db.url).await;
    let app = TestApp::spawn_with(
        &proxy.url,
        &[
            ("COUPON__DATABASE__HEALTH_INTERVAL", "100ms"),
            ("COUPON__DATABASE__CONNECT_TIMEOUT", "500ms"),
            ("COUPON__LISTENER__HEARTBEAT", "200ms"),
            ("COUPON__LISTENER__RETRY_MAX", "200ms"),
        ],
    )
    .await;
    proxy.cut().await;
    eventually(DEADLINE, "degraded, listener down", || async {
        let health = app.client.get("/health").await.json();
        health["status"] == "degraded" && health["listener"] != "listening"
    })
    .await;
    // The service cannot hear this; it must find it in the reload after reconnecting.
    execute(&db.pool, "UPDATE coupons SET status = 'expired' WHERE code = 'DARK'").await;
    assert_eq!(reason_of(&app.client, "DARK").await, Value::Null, "validations still answer from memory");
    proxy.restore().await;
    wait_for_reason(&app.client, "DARK", json!("COUPON_EXPIRED")).await;
    eventually(DEADLINE, "healthy again", || async { app.client.get("/health").await.json()["status"] == "healthy" })
        .await;
    app.stop().await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request_and_keep_live_counters() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "STEADY", &[]).await;
    let capped = insert_coupon(&db.pool, "CAPPED", &[("usage_limit", "2")]).await;
    insert_usage(&db.pool, capped, "a", "o-1").await;
    insert_usage(&db.pool, capped, "b", "o-2").await;
    let app = TestApp::spawn_with(&db.url, &[("ADMIN_TOKEN", "t0ken-t0ken-t0ken")]).await;
    let load: Vec<_> = (0..8)
        .map(|worker| {
            let client = app.client.clone();
            tokio::spawn(async move {
                for n in 0..150 {
                    let body = json!({"code": "STEADY", "userId": format!("w{worker}-{n}"), "orderValue": 100});
                    let response = client.validate(body).await;
                    assert_eq!(response["valid"], true, "{response}");
                }
            })
        })
        .collect();
    for _ in 0..20 {
        let reload = app
            .client
            .request_with(
                hyper::Method::POST,
                "/admin/cache/reload",
                "",
                &[("authorization", "Bearer t0ken-t0ken-t0ken")],
            )
            .await;
        assert_eq!(reload.status, 200, "{}", reload.text);
        assert_eq!(reload.json()["coupons"], 2);
    }
    for worker in load {
        worker.await.unwrap();
    }
    // The database forgets the uses; the live counters, loaded once, do not.
    execute(&db.pool, "DELETE FROM coupon_usage").await;
    let reload = app
        .client
        .request_with(hyper::Method::POST, "/admin/cache/reload", "", &[("authorization", "Bearer t0ken-t0ken-t0ken")])
        .await;
    assert_eq!(reload.status, 200);
    assert_eq!(reason_of(&app.client, "CAPPED").await, json!("USAGE_LIMIT_REACHED"));
    app.stop().await.unwrap();
    db.drop_db().await;
}
