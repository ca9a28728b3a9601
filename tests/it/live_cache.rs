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
}

/// A 100,000-row change by plain SQL commits in seconds (the code check was once quadratic:
/// 10,000 rows took 19.8 s, 100,000 never finished) and every instance serves it at once.
/// The statement timeout turns a return of the quadratic plan into a failure instead of a
/// test that hangs; how long serving took is printed, for the README's figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_row_update_commits_in_seconds_and_is_served() {
    const ROWS: usize = 100_000;
    let db = TestDb::new().await;
    execute(
        &db.pool,
        "INSERT INTO coupons (code, type, discount_type, discount_value, usage_limit) \
         SELECT 'MASS-' || g, 'time_specific', 'percentage', 10, CASE WHEN g % 3 = 0 THEN 100 END \
         FROM generate_series(1, 100000) g",
    )
    .await;
    // Polling a renamed code until it is served counts as failed lookups: not limited here.
    let unlimited =
        [("COUPON__PROTECTION__FAILED_LOOKUPS_PER_USER", "0"), ("COUPON__PROTECTION__FAILED_LOOKUPS_PER_ADDRESS", "0")];
    let app = TestApp::spawn_with(&db.url, &unlimited).await;
    let client = &app.client;
    assert_eq!(client.get("/health").await.json()["coupons"], ROWS);

    let timed = |sql: &'static str| {
        let pool = db.pool.clone();
        async move {
            let started = std::time::Instant::now();
            let mut tx = pool.begin().await.unwrap();
            sqlx::raw_sql("SET LOCAL statement_timeout = '60s'").execute(&mut *tx).await.unwrap();
            let done = sqlx::raw_sql(sql).execute(&mut *tx).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            tx.commit().await.unwrap();
            assert_eq!(done.rows_affected(), ROWS as u64, "{sql}");
            started.elapsed()
        }
    };
    let served = |code: &'static str, reason: Value| async move {
        let started = std::time::Instant::now();
        wait_for_reason(client, code, reason).await;
        started.elapsed()
    };

    // No code changes: the code check is not even called.
    let committed = timed("UPDATE coupons SET status = 'inactive'").await;
    let seen = served("MASS-100000", json!("COUPON_INACTIVE")).await;
    for code in ["MASS-1", "MASS-50000", "MASS-99999"] {
        assert_eq!(reason_of(client, code).await, json!("COUPON_INACTIVE"), "{code}");
    }
    println!("100,000 rows, no code changed: committed in {committed:?}, served {seen:?} after");

    // Every code changes: one index probe a row.
    let committed = timed("UPDATE coupons SET code = code || 'Z', status = 'active'").await;
    let seen = served("MASS-100000Z", Value::Null).await;
    for code in ["MASS-1Z", "MASS-50000Z"] {
        assert_eq!(reason_of(client, code).await, Value::Null, "{code}");
    }
    assert_eq!(reason_of(client, "MASS-1").await, json!("COUPON_NOT_FOUND"));
    println!("100,000 rows, every code changed: committed in {committed:?}, served {seen:?} after");
    assert_eq!(client.get("/health").await.json()["coupons"], ROWS);
    app.stop().await.unwrap();
}

/// A coupon's code may not become a bulk code, by any SQL client: one of an imported batch,
/// or one in the shape a generated batch reserved. Other renames pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coupon_renamed_by_sql_to_a_bulk_code_is_refused() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "PLAIN", &[]).await;
    execute(
        &db.pool,
        "INSERT INTO campaigns (id, name) VALUES (1, 'c'); \
         INSERT INTO code_batches (campaign_id, kind, prefix, length, requested, status) \
             VALUES (1, 'generated', 'GEN-', 8, 10, 'done'); \
         INSERT INTO code_batches (campaign_id, kind, requested, status) VALUES (1, 'imported', 1, 'done'); \
         CREATE TABLE imported_codes PARTITION OF batch_codes FOR VALUES IN (2); \
         INSERT INTO batch_codes (code, batch_id, position) VALUES ('IMPORTED-1', 2, 0)",
    )
    .await;
    for taken in ["GEN-ABCDEFGH", "IMPORTED-1"] {
        let sql = format!("UPDATE coupons SET code = '{taken}' WHERE code = 'PLAIN'");
        let err = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&db.pool).await.expect_err(taken);
        let err = err.as_database_error().expect("a database error");
        assert_eq!(err.code().as_deref(), Some("23505"), "{taken}: {err}");
        assert_eq!(err.constraint(), Some("coupons_code_key"), "{taken}");
    }
    // Not the shape (one character longer), and an update that leaves the code alone.
    execute(&db.pool, "UPDATE coupons SET code = 'GEN-ABCDEFGHI' WHERE code = 'PLAIN'").await;
    execute(&db.pool, "UPDATE coupons SET discount_value = 20").await;
    let codes: Vec<String> = sqlx::query_scalar("SELECT code FROM coupons").fetch_all(&db.pool).await.unwrap();
    assert_eq!(codes, ["GEN-ABCDEFGHI"]);
}
