//! Every validate call becomes one `validation_logs` row, written behind the request, and
//! nothing is lost while PostgreSQL is away.

use std::time::Duration;

use hyper::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{PgProxy, TestApp, TestDb, eventually, insert_coupon};

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct LogRow {
    coupon_code: String,
    coupon_id: Option<i64>,
    user_id: String,
    order_id: Option<String>,
    order_value: String,
    is_valid: bool,
    validation_reason: Option<String>,
    discount: String,
    final_amount: String,
    ip: Option<String>,
    user_agent: Option<String>,
    timed: bool,
}

async fn log_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM validation_logs").fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_carry_what_the_client_was_told() {
    let db = TestDb::new().await;
    let id = insert_coupon(&db.pool, "TEN", &[("min_order_value", "20")]).await;
    let app = TestApp::spawn(&db).await;
    let headers = [("user-agent", "checkout-test/1.0")];
    let valid = json!({"code": "ten", "userId": "user_1", "orderValue": 100.5, "orderId": "ord-7"});
    let response =
        app.client.request_with(hyper::Method::POST, "/api/coupons/validate", valid.to_string(), &headers).await;
    assert_eq!(response.status, StatusCode::OK);
    app.client.validate(json!({"code": "TEN", "userId": "user_2", "orderValue": 10})).await;
    app.client.validate(json!({"code": "MISSING", "userId": "user_3", "orderValue": 10})).await;
    // Refused input is not a validation and is not logged.
    let bad = app.client.post("/api/coupons/validate", &json!({"code": "TEN"})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    eventually(Duration::from_secs(10), "3 log rows", || async { log_count(&db.pool).await == 3 }).await;
    let rows: Vec<LogRow> = sqlx::query_as(
        "SELECT coupon_code, coupon_id, user_id, order_id, round(order_value, 2)::text AS order_value, is_valid, \
         validation_reason, round(discount_applied, 2)::text AS discount, round(final_amount, 2)::text AS final_amount, \
         host(ip_address) AS ip, user_agent, \
         response_time_ms >= 0 AS timed FROM validation_logs ORDER BY user_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let expected = LogRow {
        coupon_code: "TEN".into(),
        coupon_id: Some(id),
        user_id: "user_1".into(),
        order_id: Some("ord-7".into()),
        order_value: "100.50".into(),
        is_valid: true,
        validation_reason: None,
        discount: "10.05".into(),
        final_amount: "90.45".into(),
        ip: Some("127.0.0.1".into()),
        user_agent: Some("checkout-test/1.0".into()),
        timed: true,
    };
    assert_eq!(rows[0], expected);
    assert_eq!(
        (rows[1].is_valid, rows[1].validation_reason.as_deref(), rows[1].final_amount.as_str()),
        (false, Some("MIN_ORDER_VALUE_NOT_MET"), "10.00")
    );
    assert_eq!(
        (rows[2].coupon_code.as_str(), rows[2].coupon_id, rows[2].validation_reason.as_deref()),
        ("MISSING", None, Some("COUPON_NOT_FOUND"))
    );
    app.stop().await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_delays_rows_but_loses_none() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    let proxy = PgProxy::start(&db.url).await;
    let app = TestApp::spawn_with(
        &proxy.url,
        &[
            ("COUPON__DATABASE__HEALTH_INTERVAL", "100ms"),
            ("COUPON__DATABASE__CONNECT_TIMEOUT", "500ms"),
            ("COUPON__VALIDATION_LOG__RETRY_MAX", "200ms"),
        ],
    )
    .await;

    proxy.cut();
    eventually(Duration::from_secs(5), "health says degraded", || async {
        let health = app.client.get("/health").await.json();
        health["status"] == "degraded" && health["database"] == "down"
    })
    .await;
    for n in 0..200 {
        let response =
            app.client.validate(json!({"code": "TEN", "userId": format!("user_{n}"), "orderValue": 10})).await;
        assert_eq!(response["valid"], true, "validations keep succeeding during the outage");
    }
    let health = app.client.get("/health").await.json();
    assert_eq!(health["validationLogQueueSize"], 200, "{health}");
    assert_eq!(log_count(&db.pool).await, 0);

    proxy.restore();
    eventually(Duration::from_secs(10), "all 200 rows written", || async { log_count(&db.pool).await == 200 }).await;
    eventually(Duration::from_secs(5), "health says healthy", || async {
        let health = app.client.get("/health").await.json();
        health["status"] == "healthy" && health["validationLogQueueSize"] == 0
    })
    .await;
    let metrics = app.client.get("/metrics").await.text;
    assert!(metrics.contains(r#"write_behind_rows_total{table="validation_logs",outcome="written"} 200"#), "{metrics}");
    assert!(metrics.contains(r#"write_behind_rows_total{table="validation_logs",outcome="dropped"} 0"#), "{metrics}");
    app.stop().await.unwrap();
    db.drop_db().await;
}
