//! A `DATA_DIR` on a filesystem of 16 MiB that fills up (API.md §8, "The disk is budgeted"):
//! validation rows never take the space kept for uses, every row dropped is counted, and once
//! PostgreSQL is back the shipper frees the disk and uses are taken again without help.

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    PgProxy, QUICK_OUTAGES, SmallDisk, TestApp, TestDb, eventually, insert_coupon, rerun_where_it_may_mount,
};

const ROWS: &str = r#"write_behind_rows_total{table="validation_logs",outcome="dropped"}"#;

async fn health(app: &TestApp) -> Value {
    app.client.get("/health").await.json()
}

fn budgets(health: &Value) -> Vec<String> {
    health["budgetsSpent"].as_array().unwrap().iter().map(|b| b.as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_16_mib_disk_uses_keep_their_space_every_dropped_row_is_counted_and_shipping_recovers() {
    if rerun_where_it_may_mount(
        "full_disk::on_a_16_mib_disk_uses_keep_their_space_every_dropped_row_is_counted_and_shipping_recovers",
    ) {
        return;
    }
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    let disk = SmallDisk::mount(16);
    // validation_log.spill_max_bytes keeps its default, 256 MiB, far more than this disk: the
    // disk and journal.reserved_bytes (4 MiB) decide.
    let proxy = PgProxy::start(&db.url).await;
    let settings = [
        &QUICK_OUTAGES[..],
        &[("COUPON__VALIDATION_LOG__QUEUE_CAPACITY", "10"), ("COUPON__JOURNAL__SHIP_RETRY_MAX", "200ms")],
    ]
    .concat();
    let app = Arc::new(TestApp::spawn_on(disk.path(), &proxy.url, &settings).await);
    // Something else took the disk but for the journal's reserve (4 MiB) and 1 MiB more.
    disk.fill("other", 5 << 20);
    proxy.cut().await;
    eventually(Duration::from_secs(5), "health says the database is down", || async {
        health(&app).await["database"] == "down"
    })
    .await;

    // Some 250 bytes a row: the 1 MiB beyond the reserve holds about 4,000 of 8,000.
    const VALIDATIONS: usize = 8_000;
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let app = Arc::clone(&app);
            tokio::spawn(async move {
                for n in (task..VALIDATIONS).step_by(8) {
                    let body = json!({"code": "TEN", "userId": format!("user_{n}"), "orderValue": 10});
                    assert_eq!(app.client.validate(body).await["valid"], true, "validations keep answering");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let dropped = app.client.metric(ROWS).await;
    assert!(dropped >= 1_000.0, "rows past the spare disk are dropped and counted: {dropped}");
    let seen = health(&app).await;
    assert_eq!(seen["status"], "degraded");
    assert!(budgets(&seen).contains(&"journal.reserved_bytes".to_owned()), "{seen}");
    assert!(disk.free() >= 3 << 20, "validation rows left the reserve alone: {} bytes free", disk.free());

    // Uses take the reserve.
    for n in 0..200 {
        let (status, body) = app.client.redeem("TEN", &format!("u{n}"), &format!("o{n}")).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    // Another writer takes the last free page: once the journal's last page is full too (a
    // few records), a use is refused, and health says why.
    disk.fill("other-2", 0);
    let mut taken = 200;
    loop {
        let (status, body) = app.client.redeem("TEN", &format!("u{taken}"), &format!("o{taken}")).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert_eq!(status, StatusCode::CREATED, "{body}");
        taken += 1;
        assert!(taken < 300, "a full disk refuses uses");
    }
    let seen = health(&app).await;
    assert_eq!(seen["journal"], "full", "{seen}");
    assert!(budgets(&seen).contains(&"disk".to_owned()), "{seen}");

    // PostgreSQL is back: the shipper ships, deletes what it shipped, and frees the disk it
    // needs with no operator freeing anything.
    proxy.restore().await;
    eventually(Duration::from_secs(30), "a use taken again", || async {
        app.client.redeem("TEN", "late", "o-late").await.0 == StatusCode::CREATED
    })
    .await;
    // Every use acknowledged, and only those, reaches PostgreSQL.
    eventually(Duration::from_secs(30), "every use in PostgreSQL", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM coupon_usage").fetch_one(&db.pool).await.unwrap()
            == taken + 1
    })
    .await;
    // Every validation is a row in PostgreSQL or counted dropped.
    eventually(Duration::from_secs(30), "every row kept written", || async {
        let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM validation_logs").fetch_one(&db.pool).await.unwrap();
        logged as f64 + app.client.metric(ROWS).await == VALIDATIONS as f64
    })
    .await;
    assert_eq!(health(&app).await["journal"], "ok");
    std::fs::remove_file(disk.path().join("other")).unwrap();
    std::fs::remove_file(disk.path().join("other-2")).unwrap();
    eventually(Duration::from_secs(5), "no budget spent", || async { budgets(&health(&app).await).is_empty() }).await;
    Arc::into_inner(app).expect("the only handle").stop().await.unwrap();
    drop(disk);
}
