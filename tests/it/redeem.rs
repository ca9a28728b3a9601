//! Redemption: exact limits under concurrency, one redemption per order, release.

use std::collections::HashSet;

use hyper::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{TestApp, TestClient, TestDb, eventually, insert_coupon};

/// Runs `n` redeems at once; `who(i)` gives the user and order of the i-th.
async fn stampede(
    client: &TestClient,
    code: &str,
    n: usize,
    who: fn(usize) -> (String, String),
) -> Vec<(StatusCode, Value)> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let client = client.clone();
            let code = code.to_owned();
            tokio::spawn(async move {
                let (user, order) = who(i);
                client.redeem(&code, &user, &order).await
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(n);
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

async fn rows(pool: &PgPool, code: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM coupon_usage u JOIN coupons c ON c.id = u.coupon_id WHERE c.code = $1")
        .bind(code)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn count(answers: &[(StatusCode, Value)], status: StatusCode) -> usize {
    answers.iter().filter(|(s, _)| *s == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_buyers_against_a_limit_of_fifty() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "FIFTY", &[("usage_limit", "50")]).await;
    let app = TestApp::spawn(&db).await;
    let answers = stampede(&app.client, "FIFTY", 300, |i| (format!("buyer-{i}"), format!("order-{i}"))).await;
    assert_eq!(count(&answers, StatusCode::CREATED), 50);
    assert_eq!(count(&answers, StatusCode::UNPROCESSABLE_ENTITY), 250);
    for (status, body) in &answers {
        if *status == StatusCode::UNPROCESSABLE_ENTITY {
            assert_eq!(body, &json!({"redeemed": false, "reason": "USAGE_LIMIT_REACHED"}));
        }
    }
    let ids: HashSet<&str> = answers.iter().filter_map(|(_, b)| b["redemptionId"].as_str()).collect();
    assert_eq!(ids.len(), 50, "every redemption has its own id");
    eventually(std::time::Duration::from_secs(10), "50 rows shipped", || async { rows(&db.pool, "FIFTY").await == 50 })
        .await;
    let valid = app.client.validate(json!({"code": "FIFTY", "userId": "late", "orderValue": 100})).await;
    assert_eq!(valid["reason"], "USAGE_LIMIT_REACHED");
    app.stop().await.unwrap();
    assert_eq!(rows(&db.pool, "FIFTY").await, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_in_forty_tabs_against_a_per_user_limit_of_two() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TWICE", &[("per_user_limit", "2")]).await;
    let app = TestApp::spawn(&db).await;
    let answers = stampede(&app.client, "TWICE", 40, |i| ("same-user".into(), format!("tab-{i}"))).await;
    assert_eq!(count(&answers, StatusCode::CREATED), 2);
    assert_eq!(count(&answers, StatusCode::UNPROCESSABLE_ENTITY), 38);
    assert!(answers.iter().all(|(s, b)| *s == StatusCode::CREATED || b["reason"] == "USER_USAGE_LIMIT_REACHED"));
    let other = app.client.redeem("TWICE", "other-user", "tab-other").await;
    assert_eq!(other.0, StatusCode::CREATED, "another user is not limited by this one");
    app.stop().await.unwrap();
    assert_eq!(rows(&db.pool, "TWICE").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_order_twenty_times_at_once_is_one_redemption() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "ONCE", &[("discount_type", "'fixed'"), ("discount_value", "15")]).await;
    let app = TestApp::spawn(&db).await;
    let answers = stampede(&app.client, "ONCE", 20, |_| ("buyer".into(), "order-1".into())).await;
    assert_eq!(count(&answers, StatusCode::CREATED), 1, "{answers:?}");
    assert_eq!(count(&answers, StatusCode::OK), 19, "{answers:?}");
    let first = &answers.iter().find(|(s, _)| *s == StatusCode::CREATED).unwrap().1;
    assert_eq!(
        (first["discount"].clone(), first["finalAmount"].clone(), first["code"].clone()),
        (json!(15), json!(85), json!("ONCE"))
    );
    for (_, body) in &answers {
        assert_eq!(body["redemptionId"], first["redemptionId"], "replays return the same redemption");
    }
    let thief = app.client.redeem("ONCE", "someone-else", "order-1").await;
    assert_eq!(thief, (StatusCode::CONFLICT, json!({"redeemed": false, "reason": "ORDER_ALREADY_REDEEMED"})));
    let validate =
        app.client.validate(json!({"code": "ONCE", "userId": "x", "orderValue": 100, "orderId": "order-1"})).await;
    assert_eq!(validate["reason"], "ORDER_ALREADY_REDEEMED");
    app.stop().await.unwrap();
    assert_eq!(rows(&db.pool, "ONCE").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_gives_the_use_back_idempotently() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "SOLO", &[("usage_limit", "1"), ("per_user_limit", "1")]).await;
    let app = TestApp::spawn(&db).await;
    let client = &app.client;
    assert_eq!(client.redeem("SOLO", "u1", "o-1").await.0, StatusCode::CREATED);
    assert_eq!(client.redeem("SOLO", "u2", "o-2").await.1["reason"], "USAGE_LIMIT_REACHED");
    assert_eq!(client.release("solo", "o-1").await, (StatusCode::OK, json!({"released": true})));
    assert_eq!(client.release("SOLO", "o-1").await, (StatusCode::OK, json!({"released": true})), "repeats are fine");
    assert_eq!(client.redeem("SOLO", "u1", "o-3").await.0, StatusCode::CREATED, "the user's use came back too");
    // A released order id stays used: it cannot take the coupon again.
    assert_eq!(client.redeem("SOLO", "u1", "o-1").await.0, StatusCode::CONFLICT);
    for (code, order) in [("SOLO", "never"), ("NOSUCH", "o-1")] {
        assert_eq!(
            client.release(code, order).await,
            (StatusCode::NOT_FOUND, json!({"released": false, "reason": "REDEMPTION_NOT_FOUND"}))
        );
    }
    // Twenty concurrent releases of one order: all say released, the use comes back once.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.release("SOLO", "o-3").await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), (StatusCode::OK, json!({"released": true})));
    }
    assert_eq!(client.redeem("SOLO", "u3", "o-4").await.0, StatusCode::CREATED);
    assert_eq!(
        client.redeem("SOLO", "u4", "o-5").await.1["reason"],
        "USAGE_LIMIT_REACHED",
        "exactly one use came back"
    );
    app.stop().await.unwrap();
    let states: Vec<(String, bool)> =
        sqlx::query_as("SELECT order_id, released_at IS NOT NULL FROM coupon_usage ORDER BY order_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(states, vec![("o-1".into(), true), ("o-3".into(), true), ("o-4".into(), false)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeem_applies_every_rule_and_checks_input() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "OFF", &[("status", "'inactive'")]).await;
    insert_coupon(&db.pool, "MIN", &[("min_order_value", "500")]).await;
    let app = TestApp::spawn(&db).await;
    assert_eq!(app.client.redeem("NOPE", "u", "o").await.1, json!({"redeemed": false, "reason": "COUPON_NOT_FOUND"}));
    assert_eq!(app.client.redeem("OFF", "u", "o").await.1["reason"], "COUPON_INACTIVE");
    assert_eq!(app.client.redeem("MIN", "u", "o").await.1["reason"], "MIN_ORDER_VALUE_NOT_MET");
    let missing =
        app.client.post("/api/coupons/redeem", &json!({"code": "MIN", "userId": "u", "orderValue": 600})).await;
    assert_eq!(
        (missing.status, missing.json()["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("MISSING_FIELD"))
    );
    let bad = app.client.post("/api/coupons/release", &json!({"code": "MIN"})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    app.stop().await.unwrap();
    assert_eq!(rows(&db.pool, "MIN").await, 0);
}
