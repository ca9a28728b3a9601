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

    proxy.cut().await;
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

    proxy.restore().await;
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

/// The partitions of the log and of its counts, by day (YYYYMMDD).
async fn partition_days(pool: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT right(c.relname, 8) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = $1 ORDER BY 1",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_days_leave_as_whole_partitions_and_days_ahead_are_ready() {
    use chrono::{Days, NaiveDate};
    let db = TestDb::new().await;
    let today: NaiveDate = chrono::Utc::now().date_naive();
    let day = |n: i64| {
        let d = if n < 0 { today - Days::new(n.unsigned_abs()) } else { today + Days::new(n as u64) };
        d.format("%Y%m%d").to_string()
    };
    // Forty days of rows, three a day, and their counts.
    sqlx::query("SELECT validation_log_add_days($1, $2)")
        .bind(today - Days::new(39))
        .bind(today)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO validation_log (validated_at, order_value, discount, final_amount, response_time_us, coupon_code, user_id) \
         SELECT $1::date + make_interval(days => -d, hours => h), 100, 0, 100, 1, 'OLD', 'u' \
         FROM generate_series(0, 39) d, generate_series(1, 3) h",
    )
    .bind(today)
    .execute(&db.pool)
    .await
    .unwrap();
    let kept = coupon_engine::db::log_retention::keep(&db.pool, today, 30).await.unwrap();
    assert_eq!(kept.dropped, 9, "the nine days before today and the thirty before it");
    let logged = partition_days(&db.pool, "validation_log").await;
    assert_eq!((logged.first().cloned(), logged.last().cloned()), (Some(day(-30)), Some(day(3))));
    assert_eq!(partition_days(&db.pool, "validation_counts").await, logged);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM validation_logs").fetch_one(&db.pool).await.unwrap();
    assert_eq!(rows, 31 * 3, "the kept days' rows, untouched");
    // Again: nothing to do.
    let again = coupon_engine::db::log_retention::keep(&db.pool, today, 30).await.unwrap();
    assert_eq!((again.created, again.dropped), (0, 0));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_long_downtime_the_writer_makes_the_day_it_needs() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    // As if the service had been down for longer than the days made ahead: no partition at all.
    sqlx::query("SELECT validation_log_drop_before('3000-01-01')").execute(&db.pool).await.unwrap();
    assert!(partition_days(&db.pool, "validation_log").await.is_empty());
    let app = TestApp::spawn(&db).await;
    app.client.validate(json!({"code": "TEN", "userId": "u", "orderValue": 100})).await;
    eventually(Duration::from_secs(10), "the row to be logged", || async { log_count(&db.pool).await == 1 }).await;
    let today = chrono::Utc::now().date_naive().format("%Y%m%d").to_string();
    assert!(partition_days(&db.pool, "validation_log").await.contains(&today));
    // Dropped by hand behind the writer's back, the day comes back on the next write.
    sqlx::query("SELECT validation_log_drop_before('3000-01-01')").execute(&db.pool).await.unwrap();
    app.client.validate(json!({"code": "TEN", "userId": "u", "orderValue": 100})).await;
    eventually(Duration::from_secs(10), "the next row to be logged", || async { log_count(&db.pool).await == 1 }).await;
    let stats: (i64, i64) = sqlx::query_as("SELECT count(*), coalesce(sum(count), 0)::bigint FROM validation_counts")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stats.1, 1, "the counts were written with the row");
    app.stop().await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reason_codes_in_the_database_are_the_engine_reasons() {
    use coupon_engine::domain::rules::Reason;
    let db = TestDb::new().await;
    let stored: Vec<(i16, String)> =
        sqlx::query_as("SELECT code, name FROM validation_reasons ORDER BY code").fetch_all(&db.pool).await.unwrap();
    let engine: Vec<(i16, String)> = Reason::ALL
        .iter()
        .map(|r| (coupon_engine::db::validation_log::reason_code(Some(*r)).unwrap(), r.as_str().to_owned()))
        .collect();
    assert_eq!(stored, engine);
    db.drop_db().await;
}
