//! Nothing acknowledged is lost: PostgreSQL stopped mid-run (through `tools/pg`), and the
//! service killed with SIGKILL while PostgreSQL is down.

use std::collections::HashSet;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::helpers::{
    PrivateCluster, QUICK_OUTAGES, ServeProcess, TestApp, TestClient, eventually, insert_coupon, signal,
};

const CATCH_UP: Duration = Duration::from_secs(20);

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new().max_connections(2).connect(url).await.unwrap()
}

async fn count(url: &str, sql: &'static str) -> i64 {
    let pool = pool(url).await;
    let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
    pool.close().await;
    n
}

/// The value of the sample whose name and labels are exactly `series`.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_mid_run_loses_nothing() {
    let cluster = PrivateCluster::start().await;
    let setup = pool(&cluster.url).await;
    insert_coupon(&setup, "OPEN", &[]).await;
    insert_coupon(&setup, "TEN", &[("usage_limit", "10")]).await;
    setup.close().await;
    // A queue small enough that the outage overflows it into the journal.
    let settings = [&QUICK_OUTAGES[..], &[("COUPON__VALIDATION_LOG__QUEUE_CAPACITY", "50")]].concat();
    let app = TestApp::spawn_with(&cluster.url, &settings).await;
    let client = &app.client;
    let mut acked = HashSet::new();
    for n in 0..20 {
        let (status, body) = client.redeem("OPEN", &format!("u{n}"), &format!("before-{n}")).await;
        assert_eq!(status, StatusCode::CREATED);
        acked.insert(body["redemptionId"].as_str().unwrap().to_owned());
    }

    // Alone on its database, the instance decides every limit in memory (API.md §6): an
    // outage changes nothing for it, and the limit is exact through it.
    assert_eq!(client.get("/health").await.json()["decides"], "alone");
    let (status, body) = client.redeem("TEN", "first", "ten-first").await;
    assert_eq!(status, StatusCode::CREATED);
    acked.insert(body["redemptionId"].as_str().unwrap().to_owned());
    cluster.stop();
    eventually(CATCH_UP, "health says the database is down", || async {
        let health = client.get("/health").await.json();
        health["status"] == "degraded" && health["database"] == "down"
    })
    .await;
    for n in 0..50 {
        let (status, body) = client.redeem("OPEN", &format!("u{n}"), &format!("during-{n}")).await;
        assert_eq!(status, StatusCode::CREATED, "redemptions keep succeeding: {body}");
        acked.insert(body["redemptionId"].as_str().unwrap().to_owned());
    }
    let mut limited = 0;
    for n in 0..12 {
        let (status, body) = client.redeem("TEN", &format!("u{n}"), &format!("ten-{n}")).await;
        if status == StatusCode::CREATED {
            limited += 1;
            acked.insert(body["redemptionId"].as_str().unwrap().to_owned());
        } else {
            assert_eq!(
                (status, body["reason"].clone()),
                (StatusCode::UNPROCESSABLE_ENTITY, json!("USAGE_LIMIT_REACHED"))
            );
        }
    }
    assert_eq!(limited, 9, "exactly the limit sold with the database away");
    for n in 0..200 {
        let answer = client.validate(json!({"code": "OPEN", "userId": format!("v{n}"), "orderValue": 10})).await;
        assert_eq!(answer["valid"], true);
    }

    cluster.restart();
    eventually(CATCH_UP, "every acknowledged redemption in coupon_usage", || async {
        count(&cluster.url, "SELECT count(*) FROM coupon_usage").await == 71 + limited
    })
    .await;
    eventually(CATCH_UP, "every validation logged", || async {
        count(&cluster.url, "SELECT count(*) FROM validation_logs").await == 200
    })
    .await;
    eventually(CATCH_UP, "healthy and caught up", || async {
        let health = client.get("/health").await.json();
        health["status"] == "healthy" && health["validationLogQueueSize"] == 0
    })
    .await;
    let metrics = client.get("/metrics").await.text;
    assert!(metrics.contains(r#"write_behind_rows_total{table="validation_logs",outcome="dropped"} 0"#), "{metrics}");
    let spilled = metric(&metrics, r#"write_behind_rows_total{table="validation_logs",outcome="spilled"}"#);
    assert!(spilled > 0.0, "the outage overflowed the in-memory queue into the journal: {metrics}");
    assert_eq!(metric(&metrics, "journal_backlog_records"), 0.0);
    app.stop().await.unwrap();

    let check = pool(&cluster.url).await;
    let ids: Vec<String> = sqlx::query_scalar("SELECT id::text FROM coupon_usage").fetch_all(&check).await.unwrap();
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), acked, "exactly the acknowledged redemptions");
    check.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_postgres_down_loses_no_acknowledged_redemption() {
    let cluster = PrivateCluster::start().await;
    let setup = pool(&cluster.url).await;
    insert_coupon(&setup, "THIRTY", &[("usage_limit", "30")]).await;
    setup.close().await;
    let data_dir_temp = crate::helpers::temp_dir("coupon-engine-kill-");
    let data_dir = data_dir_temp.path().to_owned();
    let data_dir = data_dir.display().to_string();
    let env = [("DATA_DIR", data_dir.as_str()), ("COUPON__DATABASE__CONNECT_TIMEOUT", "500ms")];
    let server = ServeProcess::start(&cluster.url, &env);
    let client = TestClient::new(server.addr);
    client.wait_ready().await;
    // Alone, the instance sells the rest of the limit with PostgreSQL away, exactly.
    let mut acked = HashSet::new();
    for n in 0..5 {
        let (status, body) = client.redeem("THIRTY", &format!("pre{n}"), &format!("pre{n}")).await;
        assert_eq!(status, StatusCode::CREATED);
        acked.insert(body["redemptionId"].as_str().unwrap().to_owned());
    }
    eventually(Duration::from_secs(10), "the first uses shipped", || async {
        count(&cluster.url, "SELECT count(*) FROM coupon_usage").await == 5
    })
    .await;

    cluster.stop();
    let tasks: Vec<_> = (0..60)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move { client.redeem("THIRTY", &format!("u{n}"), &format!("o{n}")).await })
        })
        .collect();
    let mut during = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        if status == StatusCode::CREATED {
            during += 1;
            acked.insert(body["redemptionId"].as_str().unwrap().to_owned());
        } else {
            assert_eq!(
                (status, body["reason"].as_str()),
                (StatusCode::UNPROCESSABLE_ENTITY, Some("USAGE_LIMIT_REACHED"))
            );
        }
    }
    assert_eq!(during, 25, "the rest of the limit sold with PostgreSQL away, exactly");
    let mut child = server.child;
    signal(&child, "KILL");
    child.wait().unwrap();

    cluster.restart();
    let server = ServeProcess::start(&cluster.url, &env);
    let client = TestClient::new(server.addr);
    client.wait_ready().await;
    let replayed = server.wait_for_log("journal replayed", Duration::from_secs(5));
    assert_eq!(replayed["records"], during, "{replayed}");
    let check = pool(&cluster.url).await;
    let ids: Vec<String> = sqlx::query_scalar("SELECT id::text FROM coupon_usage").fetch_all(&check).await.unwrap();
    assert_eq!(ids.len(), acked.len(), "none twice");
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), acked, "every acknowledged redemption");
    // Nothing is left, nothing was lost.
    let mut sold = acked.len();
    for n in 0..40 {
        let (status, body) = client.redeem("THIRTY", &format!("late{n}"), &format!("late{n}")).await;
        match status {
            StatusCode::CREATED => sold += 1,
            _ => {
                assert_eq!(
                    (status, body["reason"].as_str()),
                    (StatusCode::UNPROCESSABLE_ENTITY, Some("USAGE_LIMIT_REACHED"))
                );
                break;
            }
        }
    }
    assert_eq!(sold, 30);
    assert!(server.terminate().success());
    check.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_postgres_refuses_is_set_aside_and_start_up_goes_on() {
    let db = crate::helpers::TestDb::new().await;
    let doomed = insert_coupon(&db.pool, "DOOMED", &[]).await;
    insert_coupon(&db.pool, "KEPT", &[]).await;
    let proxy = crate::helpers::PgProxy::start(&db.url).await;
    let data_dir_temp = crate::helpers::temp_dir("coupon-engine-aside-");
    let data_dir = data_dir_temp.path().to_owned();
    let data_dir = data_dir.display().to_string();
    let env = [
        ("DATA_DIR", data_dir.as_str()),
        ("ADMIN_TOKEN", "t0ken-t0ken-t0ken"),
        ("COUPON__DATABASE__CONNECT_TIMEOUT", "500ms"),
        ("COUPON__JOURNAL__SHIP_SHUTDOWN_TIMEOUT", "200ms"),
        ("COUPON__VALIDATION_LOG__SHUTDOWN_TIMEOUT", "200ms"),
    ];
    let app = TestApp::spawn_with(&proxy.url, &env).await;
    // Journalled while PostgreSQL is away, so nothing ships before the coupon is deleted.
    proxy.cut().await;
    for (code, order) in [("DOOMED", "o-1"), ("KEPT", "o-2"), ("KEPT", "o-3")] {
        assert_eq!(app.client.redeem(code, "u", order).await.0, StatusCode::CREATED);
    }
    app.stop().await.unwrap();
    sqlx::query("DELETE FROM coupons WHERE id = $1").bind(doomed).execute(&db.pool).await.unwrap();
    proxy.restore().await;

    // The next start ships what it can, sets the refused record aside, and becomes ready.
    let app = TestApp::spawn_with(&proxy.url, &env).await;
    let orders: Vec<String> =
        sqlx::query_scalar("SELECT order_id FROM coupon_usage ORDER BY order_id").fetch_all(&db.pool).await.unwrap();
    assert_eq!(orders, ["o-2", "o-3"], "every other record shipped");
    let health = app.client.get("/health").await.json();
    assert_eq!(
        (health["status"].clone(), health["rejectedRecords"].clone()),
        (json!("degraded"), json!(1)),
        "{health}"
    );
    let admin = |path: &'static str, method: hyper::Method| {
        let client = app.client.clone();
        async move { client.request_with(method, path, "", &[("authorization", "Bearer t0ken-t0ken-t0ken")]).await.json() }
    };
    assert_eq!(admin("/admin/cache/stats", hyper::Method::GET).await["rejectedRecords"], 1);
    let listed = admin("/admin/journal/rejected", hyper::Method::GET).await;
    let record = &listed["records"][0];
    assert!(record["reason"].as_str().unwrap().contains("foreign key"), "{listed}");
    assert!(record["record"].as_str().unwrap().contains("o-1"), "{listed}");
    let metrics = app.client.get("/metrics").await.text;
    assert_eq!(metric(&metrics, "journal_records_set_aside"), 1.0);
    assert_eq!(metric(&metrics, "journal_records_set_aside_total"), 1.0);

    // The operator restores the coupon and retries: the redemption ships after all.
    sqlx::query("INSERT INTO coupons (id, code, type, discount_type, discount_value) VALUES ($1, 'DOOMED', 'time_specific', 'percentage', 10)")
        .bind(doomed)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(admin("/admin/journal/rejected/retry", hyper::Method::POST).await["requeued"], 1);
    eventually(CATCH_UP, "the retried record shipped", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM coupon_usage WHERE order_id = 'o-1'")
            .fetch_one(&db.pool)
            .await
            .unwrap()
            == 1
    })
    .await;
    eventually(CATCH_UP, "healthy again", || async { app.client.get("/health").await.json()["status"] == "healthy" })
        .await;
    app.stop().await.unwrap();
}
