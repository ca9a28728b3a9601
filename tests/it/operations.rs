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
        r#"http_request_duration_seconds_bucket{route="/api/coupons/validate",status="200",le="#,
        "cache_coupons 2",
        "cache_reloads_total",
        "listener_reconnects_total",
        r#"write_behind_queue_depth{queue="validation_logs"}"#,
        r#"write_behind_rows_total{table="validation_logs",outcome="written"}"#,
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    for family in
        ["process_cpu_seconds_total", "process_resident_memory_bytes", "db_pool_connections", "cache_age_seconds"]
    {
        assert!(text.contains(&format!("\n{family}")), "missing {family} in:\n{text}");
    }
    // Raw paths never become labels.
    assert!(!text.contains("/nowhere"), "{text}");
    app.stop().await.unwrap();
}

/// The metric names a PromQL expression uses: identifiers with an underscore that are not
/// functions, with histogram suffixes taken off.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    // Label values and annotations are in quotes: skip them.
    while let Some(start) = rest.find(|c: char| c.is_ascii_lowercase() || c == '"') {
        rest = &rest[start..];
        if let Some(quoted) = rest.strip_prefix('"') {
            rest = quoted.split_once('"').map_or("", |(_, after)| after);
            continue;
        }
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        let word = &rest[..end];
        rest = &rest[end..];
        let is_function = rest.trim_start().starts_with('(');
        if word.contains('_') && !is_function {
            let family =
                ["_bucket", "_sum", "_count"].iter().fold(word, |w, suffix| w.strip_suffix(suffix).unwrap_or(w));
            names.push(family.to_owned());
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_only_use_exported_metrics() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    let app = TestApp::spawn(&db).await;
    app.client.validate(json!({"code": "TEN", "userId": "u", "orderValue": 10})).await;
    let redeem = json!({"code": "TEN", "userId": "u", "orderValue": 10, "orderId": "o-1"});
    assert_eq!(app.client.post("/api/coupons/redeem", &redeem).await.status, 201);
    assert_eq!(app.client.post("/api/coupons/release", &json!({"code": "TEN", "orderId": "o-1"})).await.status, 200);
    let exported = app.client.get("/metrics").await.text;
    let families: std::collections::HashSet<&str> =
        exported.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();

    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{root}/tools/grafana/coupon-engine.json")).unwrap())
            .unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned()))
        .collect();
    let alerts = std::fs::read_to_string(format!("{root}/tools/prometheus/alerts.yml")).unwrap();
    exprs.extend(alerts.lines().filter_map(|l| l.trim().strip_prefix("expr: ")).map(str::to_owned));
    assert!(exprs.len() > 15, "{exprs:?}");
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric in {expr}");
        for name in names {
            assert!(families.contains(name.as_str()), "{name} (in {expr}) is not exported; exported: {families:?}");
        }
    }
    app.stop().await.unwrap();
}

#[test]
fn metric_names_are_found_in_expressions() {
    let expr = r#"histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{route="/a_b"}[5m]))) > journal_backlog_records"#;
    assert_eq!(metric_names(expr), vec!["http_request_duration_seconds", "journal_backlog_records"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// API.md §3: `database: down` within 0.5 s of PostgreSQL going away (the usage feed, every
/// 50 ms, meets the failure first), `up` within 1 s of it answering again (the probe runs five
/// times as often while down).
async fn health_tells_the_database_down_and_up_at_once() {
    let db = TestDb::new().await;
    let proxy = crate::helpers::PgProxy::start(&db.url).await;
    let app = TestApp::spawn_with(&proxy.url, &[("COUPON__DATABASE__CONNECT_TIMEOUT", "500ms")]).await;
    assert_eq!(app.client.get("/health").await.json()["database"], "up");
    proxy.cut().await;
    let cut = std::time::Instant::now();
    crate::helpers::eventually(std::time::Duration::from_millis(500), "/health to say down", || async {
        app.client.get("/health").await.json()["database"] == "down"
    })
    .await;
    println!("down after {:?}", cut.elapsed());
    proxy.restore().await;
    let restored = std::time::Instant::now();
    crate::helpers::eventually(std::time::Duration::from_secs(1), "/health to say up again", || async {
        app.client.get("/health").await.json()["database"] == "up"
    })
    .await;
    println!("up after {:?}", restored.elapsed());
    app.stop().await.unwrap();
}
