//! `/health`, `/health/ready` and `/metrics`.

use serde_json::json;

use crate::helpers::{TestApp, TestDb, insert_coupon};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_metrics() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    insert_coupon(&db.pool, "OFF", &[("status", "'inactive'")]).await;
    let app = TestApp::spawn(&db).await;

    let health = app.client.get("/health").await;
    assert_eq!(health.headers["content-type"], "application/json");
    let health = health.json();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["database"], "up");
    assert_eq!(health["coupons"], 2);
    assert_eq!(health["validationLogQueueSize"], 0);
    assert!(health["uptime"].as_f64().is_some_and(|u| u >= 0.0), "{health}");
    let timestamp = health["timestamp"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(timestamp).is_ok() && timestamp.ends_with('Z'), "{timestamp}");

    assert_eq!(app.client.get("/health/ready").await.json(), json!({"ready": true}));

    app.client.validate(json!({"code": "TEN", "userId": "u", "orderValue": 10})).await;
    app.client.validate(json!({"code": "OFF", "userId": "u", "orderValue": 10})).await;
    app.client.get("/nowhere/at/all").await;
    let metrics = app.client.get("/metrics").await;
    assert!(metrics.headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = metrics.text;
    for needle in [
        r#"http_requests_total{route="/api/coupons/validate",status="200"} 2"#,
        r#"http_requests_total{route="unmatched",status="404"} 1"#,
        r#"coupon_validations_total{outcome="valid"} 1"#,
        r#"coupon_validations_total{outcome="COUPON_INACTIVE"} 1"#,
        r#"http_request_duration_seconds_bucket{route="/api/coupons/validate",le="#,
        "cache_coupons 2",
        "cache_reloads_total",
        "listener_reconnects_total",
        r#"write_behind_queue_depth{queue="validation_logs"}"#,
        r#"write_behind_rows_total{table="validation_logs",outcome="written"}"#,
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // Raw paths never become labels.
    assert!(!text.contains("/nowhere"), "{text}");
    app.stop().await.unwrap();
    db.drop_db().await;
}
