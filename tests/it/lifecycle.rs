//! The binary's life: start-up load and its counts, refusals at start-up, SIGTERM draining.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{ServeProcess, TestClient, TestDb, binary, insert_coupon};

#[test]
fn unreachable_database_or_bad_config_exit_non_zero_with_one_line() {
    for (env, needle) in [
        (
            vec![
                ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nothing"),
                ("COUPON__DATABASE__CONNECT_TIMEOUT", "500ms"),
            ],
            "cannot connect to the database",
        ),
        (vec![("HTTP_ADDR", "not-an-address")], "HTTP_ADDR"),
        (vec![("DATABASE_URL", "mysql://localhost/x")], "DATABASE_URL"),
        (vec![("COUPON__VALIDATION_LOG__BATCH_SIZE", "zero")], "batch_size"),
    ] {
        let output = binary(&["serve"], &env).output().expect("run coupon-engine");
        assert!(!output.status.success(), "{env:?} should fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("coupon-engine: ") && last.contains(needle), "{env:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_loads_and_reports_counts() {
    let db = TestDb::new().await;
    let seeded = binary(&["seed", "--users", "500", "--coupons", "40", "--usage", "25"], &[("DATABASE_URL", &db.url)])
        .output()
        .expect("run seed");
    assert!(seeded.status.success(), "{}", String::from_utf8_lossy(&seeded.stderr));
    let server = ServeProcess::start(&db.url, &[]);
    let loaded = server.wait_for_log("cache loaded", Duration::from_secs(10));
    assert_eq!((loaded["coupons"].as_u64(), loaded["redemptions"].as_u64()), (Some(40), Some(25)), "{loaded}");
    let warnings = server.log_lines().into_iter().filter(|l| l.contains("API_TOKEN is not set")).count();
    assert_eq!(warnings, 1, "one warning without API_TOKEN");
    assert!(loaded["elapsed_ms"].is_u64(), "{loaded}");
    let client = TestClient::new(server.addr);
    client.wait_ready().await;
    assert_eq!(client.get("/health").await.json()["coupons"], 40);
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_writes_every_queued_log_row_then_exits_zero() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    // A batch that never fills and an interval that never passes: only shutdown writes.
    let server = ServeProcess::start(
        &db.url,
        &[("COUPON__VALIDATION_LOG__FLUSH_INTERVAL", "600000ms"), ("COUPON__VALIDATION_LOG__BATCH_SIZE", "100000")],
    );
    let client = TestClient::new(server.addr);
    client.wait_ready().await;
    for n in 0..300 {
        client.validate(json!({"code": "TEN", "userId": format!("u{n}"), "orderValue": 10})).await;
    }
    assert_eq!(client.get("/health").await.json()["validationLogQueueSize"], 300);
    let written: i64 = sqlx::query_scalar("SELECT count(*) FROM validation_logs").fetch_one(&db.pool).await.unwrap();
    assert_eq!(written, 0, "nothing is written before shutdown");
    let status = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    assert!(status.success(), "{status:?}");
    let written: i64 = sqlx::query_scalar("SELECT count(*) FROM validation_logs").fetch_one(&db.pool).await.unwrap();
    assert_eq!(written, 300);
}

#[test]
fn short_tokens_are_refused_at_start() {
    for name in ["ADMIN_TOKEN", "API_TOKEN"] {
        let output = binary(&["serve"], &[(name, "too-short")]).output().expect("run coupon-engine");
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("{name} must be at least 16 characters")), "{stderr}");
    }
}
