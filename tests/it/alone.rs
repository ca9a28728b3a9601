//! One instance decides alone (API.md §6): every shape in memory, acknowledged after the
//! journal's fsync, through a PostgreSQL outage; and the switch to sharing when a second
//! instance starts, and back when it stops, with every limit exact across it.

use std::time::Duration;

use hyper::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PgProxy, TestApp, TestClient, TestDb, all_sharing, eventually, insert_coupon};

fn body(code: &str, user: &str, order: &str) -> Value {
    json!({"code": code, "userId": user, "orderId": order, "orderValue": 100})
}

async fn decides(client: &TestClient) -> String {
    client.get("/health").await.json()["decides"].as_str().unwrap_or_default().to_owned()
}

async fn live_rows(db: &TestDb, coupon: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM coupon_usage WHERE coupon_id = $1 AND released_at IS NULL")
        .bind(coupon)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn post(client: &TestClient, path: &str, body: &Value) -> (StatusCode, Value) {
    let response = client.post(path, body).await;
    (response.status, response.json())
}

/// Every shape that waited on a PostgreSQL claim among instances (a per-user limit, a
/// campaign's per-user limit and budget, a total, holds and their confirmation and release)
/// is decided with PostgreSQL unreachable, within its limits, and shipped once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_instance_decides_every_shape_with_postgres_away() {
    let db = TestDb::new().await;
    let once = insert_coupon(&db.pool, "ONCE", &[("per_user_limit", "1")]).await;
    let three = insert_coupon(&db.pool, "THREE", &[("usage_limit", "3")]).await;
    let budget: i64 =
        sqlx::query_scalar("INSERT INTO campaigns (name, budget, per_user_limit) VALUES ('b', 2.00, 1) RETURNING id")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    // 1.00 off: the budget of 2.00 affords two uses, one per user.
    let budgeted = insert_coupon(
        &db.pool,
        "BUDGET",
        &[("campaign_id", &budget.to_string()), ("discount_type", "'fixed'"), ("discount_value", "1")],
    )
    .await;
    let proxy = PgProxy::start(&db.url).await;
    let app = TestApp::spawn_with(&proxy.url, &[("COUPON__DATABASE__CONNECT_TIMEOUT", "500ms")]).await;
    let client = &app.client;
    eventually(Duration::from_secs(5), "deciding alone", || async { decides(client).await == "alone" }).await;
    proxy.cut().await;

    assert_eq!(post(client, "/api/coupons/redeem", &body("ONCE", "ann", "o1")).await.0, StatusCode::CREATED);
    let (status, again) = post(client, "/api/coupons/redeem", &body("ONCE", "ann", "o2")).await;
    assert_eq!(
        (status, again["reason"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("USER_USAGE_LIMIT_REACHED"))
    );
    let (status, held) = post(client, "/api/coupons/hold", &body("THREE", "bob", "h1")).await;
    assert_eq!(status, StatusCode::CREATED, "{held}");
    let (status, confirmed) = post(client, "/api/coupons/redeem", &body("THREE", "bob", "h1")).await;
    assert_eq!((status, confirmed["hold"].clone()), (StatusCode::CREATED, json!("confirmed")), "{confirmed}");
    assert_eq!(post(client, "/api/coupons/hold", &body("THREE", "cat", "h2")).await.0, StatusCode::CREATED);
    let (status, released) = post(client, "/api/coupons/release", &json!({"code": "THREE", "orderId": "h2"})).await;
    assert_eq!((status, released["released"].clone()), (StatusCode::OK, json!(true)), "{released}");
    for n in 0..2 {
        let order = format!("t{n}");
        assert_eq!(post(client, "/api/coupons/redeem", &body("THREE", &order, &order)).await.0, StatusCode::CREATED);
    }
    let (status, full) = post(client, "/api/coupons/redeem", &body("THREE", "dan", "t9")).await;
    assert_eq!((status, full["reason"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("USAGE_LIMIT_REACHED")));
    assert_eq!(post(client, "/api/coupons/redeem", &body("BUDGET", "eve", "b1")).await.0, StatusCode::CREATED);
    let (status, capped) = post(client, "/api/coupons/redeem", &body("BUDGET", "eve", "b2")).await;
    assert_eq!(
        (status, capped["reason"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("CAMPAIGN_USER_LIMIT_REACHED"))
    );
    assert_eq!(post(client, "/api/coupons/redeem", &body("BUDGET", "fay", "b3")).await.0, StatusCode::CREATED);
    let (status, spent) = post(client, "/api/coupons/redeem", &body("BUDGET", "gus", "b4")).await;
    assert_eq!(
        (status, spent["reason"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("CAMPAIGN_BUDGET_EXHAUSTED"))
    );

    proxy.restore().await;
    eventually(Duration::from_secs(10), "everything shipped", || async {
        live_rows(&db, once).await == 1 && live_rows(&db, three).await == 3 && live_rows(&db, budgeted).await == 2
    })
    .await;
    let quotas: Vec<(i16, i64, i64)> =
        sqlx::query_as("SELECT kind, used, held FROM quotas WHERE scope_id IN ($1, $2) ORDER BY kind")
            .bind(three)
            .bind(budget)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(quotas.contains(&(1, 3, 0)) && quotas.contains(&(3, 200, 0)), "the books count what was sold: {quotas:?}");
    app.stop().await.unwrap();
}

/// A second instance starts: the first hands over (its journal shipped first), both share,
/// and the limit sells out exactly across them; when the second stops, the first decides
/// alone again, still exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deciding_alone_hands_over_to_sharing_and_back_exactly() {
    let db = TestDb::new().await;
    let coupon = insert_coupon(&db.pool, "FORTY", &[("usage_limit", "40")]).await;
    insert_coupon(&db.pool, "ONCE", &[("per_user_limit", "1")]).await;
    let a = TestApp::spawn_with(&db.url, &[]).await;
    eventually(Duration::from_secs(5), "A alone", || async { decides(&a.client).await == "alone" }).await;
    for n in 0..10 {
        let order = format!("a{n}");
        assert_eq!(post(&a.client, "/api/coupons/redeem", &body("FORTY", &order, &order)).await.0, StatusCode::CREATED);
    }
    assert_eq!(post(&a.client, "/api/coupons/redeem", &body("ONCE", "ann", "once-a")).await.0, StatusCode::CREATED);
    let b = TestApp::spawn_with(&db.url, &[]).await;
    all_sharing(&[&a.client, &b.client]).await;
    // What A decided alone is in PostgreSQL before B decides anything.
    assert_eq!(live_rows(&db, coupon).await, 10);
    let (status, twice) = post(&b.client, "/api/coupons/redeem", &body("ONCE", "ann", "once-b")).await;
    assert_eq!(
        (status, twice["reason"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("USER_USAGE_LIMIT_REACHED"))
    );
    let sold = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(10));
    let tasks: Vec<_> = (0..40)
        .map(|n| {
            let client = if n % 2 == 0 { a.client.clone() } else { b.client.clone() };
            let sold = sold.clone();
            tokio::spawn(async move {
                let order = format!("s{n}");
                for _ in 0..50 {
                    let (status, answer) = post(&client, "/api/coupons/redeem", &body("FORTY", &order, &order)).await;
                    match status {
                        StatusCode::CREATED => {
                            sold.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            return;
                        }
                        StatusCode::UNPROCESSABLE_ENTITY => {
                            assert_eq!(answer["reason"], "USAGE_LIMIT_REACHED");
                            return;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(sold.load(std::sync::atomic::Ordering::Relaxed), 40, "exactly the limit across both");
    b.stop().await.unwrap();
    eventually(Duration::from_secs(5), "A alone again", || async { decides(&a.client).await == "alone" }).await;
    let (status, full) = post(&a.client, "/api/coupons/redeem", &body("FORTY", "full", "full")).await;
    assert_eq!((status, full["reason"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("USAGE_LIMIT_REACHED")));
    // Alone again, a use given back is sold again, once.
    let (status, released) = post(&a.client, "/api/coupons/release", &json!({"code": "FORTY", "orderId": "a0"})).await;
    assert_eq!((status, released["released"].clone()), (StatusCode::OK, json!(true)), "{released}");
    assert_eq!(post(&a.client, "/api/coupons/redeem", &body("FORTY", "late", "late")).await.0, StatusCode::CREATED);
    let (status, full) = post(&a.client, "/api/coupons/redeem", &body("FORTY", "later", "later")).await;
    assert_eq!((status, full["reason"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("USAGE_LIMIT_REACHED")));
    eventually(Duration::from_secs(5), "the books after", || async { live_rows(&db, coupon).await == 40 }).await;
    a.stop().await.unwrap();
}
