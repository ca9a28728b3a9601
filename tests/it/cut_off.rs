//! An instance cut off from PostgreSQL among others (API.md §6): its holds end in one place,
//! and its identity (the id's lock, which goes with any cut) is proved before it spends, so
//! neither a write-off nor a second process can hand out what it may still sell.

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{PgProxy, TestApp, TestClient, TestDb, all_sharing, binary, eventually, insert_coupon};

const TOKEN: &str = "cut-off-admin-token-0123456789";

fn body(code: &str, user: &str, order: &str) -> Value {
    json!({"code": code, "userId": user, "orderId": order, "orderValue": 100})
}

/// Waits until every instance shares (the first to start decided alone) and serves `code`.
async fn served_everywhere(clients: &[&TestClient], code: &str) {
    all_sharing(clients).await;
    for client in clients {
        eventually(Duration::from_secs(5), "the coupon on every instance", || async {
            client.validate(json!({"code": code, "userId": "u", "orderValue": 100})).await["valid"] == true
        })
        .await;
    }
}

/// Live rows of `code`, as (user, still a hold).
async fn live_uses(db: &TestDb, coupon: i64) -> Vec<(String, bool)> {
    sqlx::query_as(
        "SELECT user_id, hold_expires_at IS NOT NULL FROM coupon_usage \
         WHERE coupon_id = $1 AND released_at IS NULL ORDER BY user_id",
    )
    .bind(coupon)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

async fn write_off(client: &TestClient, id: &str) -> StatusCode {
    let auth = format!("Bearer {TOKEN}");
    let path = format!("/admin/instances/{id}/write-off");
    client.request_with(Method::POST, &path, "", &[("authorization", &auth)]).await.status
}

/// Redeems on `clients` in turn until one says the limit is reached; 503s are retried.
/// Answers how many were sold.
async fn sell_out(clients: &[&TestClient], code: &str, prefix: &str) -> usize {
    let mut sold = 0;
    for n in 0..1_000 {
        let client = clients[n % clients.len()];
        let response =
            client.post("/api/coupons/redeem", &body(code, &format!("{prefix}{n}"), &format!("{prefix}{n}"))).await;
        match response.status {
            StatusCode::CREATED => sold += 1,
            StatusCode::SERVICE_UNAVAILABLE => tokio::time::sleep(Duration::from_millis(50)).await,
            StatusCode::UNPROCESSABLE_ENTITY => {
                assert_eq!(response.json()["reason"], "USAGE_LIMIT_REACHED");
                return sold;
            }
            other => panic!("unexpected {other}: {}", response.text),
        }
    }
    panic!("never sold out");
}

/// Found from outside: C held the only use, was cut off, confirmed the hold from its journal
/// (201), while A expired it through PostgreSQL a second after its deadline and sold the use
/// again (201); C's confirmation, shipped later, was dropped. Now a hold ends only by one
/// compare-and-set in PostgreSQL: C cannot confirm while cut off (503), and after A's expiry
/// its confirmation finds the hold gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_confirmed_while_cut_off_is_never_sold_twice() {
    let db = TestDb::new().await;
    let one = insert_coupon(&db.pool, "ONE", &[("usage_limit", "1")]).await;
    let kept = insert_coupon(&db.pool, "KEPT", &[("usage_limit", "1")]).await;
    let proxy = PgProxy::start(&db.url).await;
    let a = TestApp::spawn_with(&db.url, &[]).await;
    let c = TestApp::spawn_with(&proxy.url, &[]).await;
    served_everywhere(&[&a.client, &c.client], "ONE").await;
    served_everywhere(&[&a.client, &c.client], "KEPT").await;

    let mut hold = body("ONE", "carol", "cart-1");
    hold["ttlSeconds"] = json!(1);
    let held = c.client.post("/api/coupons/hold", &hold).await;
    assert_eq!(held.status, StatusCode::CREATED, "{}", held.text);
    proxy.cut().await;
    let confirm = c.client.post("/api/coupons/redeem", &body("ONE", "carol", "cart-1")).await;
    assert_eq!(confirm.status, StatusCode::SERVICE_UNAVAILABLE, "no confirmation while cut off: {}", confirm.text);
    assert!(confirm.headers.contains_key("retry-after"));

    // A expires the hold a grace after its deadline, through PostgreSQL, and sells the use.
    let mut sold_on_a = None;
    for n in 0..200 {
        let response = a.client.post("/api/coupons/redeem", &body("ONE", "dave", "order-d")).await;
        match response.status {
            StatusCode::CREATED => {
                sold_on_a = Some(n);
                break;
            }
            StatusCode::UNPROCESSABLE_ENTITY | StatusCode::SERVICE_UNAVAILABLE => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("unexpected {other}: {}", response.text),
        }
    }
    assert!(sold_on_a.is_some(), "the expired hold's use was sold again on A");

    proxy.restore().await;
    let late = c.client.post("/api/coupons/redeem", &body("ONE", "carol", "cart-1")).await;
    assert_eq!(late.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", late.text);
    assert_eq!(late.json()["reason"], "USAGE_LIMIT_REACHED");
    assert_eq!(live_uses(&db, one).await, [("dave".to_owned(), false)]);

    // The other way round: a confirmation that won is in PostgreSQL before its answer, and
    // an expiry tried after the deadline finds a redemption.
    let mut hold = body("KEPT", "erin", "cart-2");
    hold["ttlSeconds"] = json!(1);
    assert_eq!(c.client.post("/api/coupons/hold", &hold).await.status, StatusCode::CREATED);
    let confirmed = c.client.post("/api/coupons/redeem", &body("KEPT", "erin", "cart-2")).await;
    assert_eq!(confirmed.status, StatusCode::CREATED, "{}", confirmed.text);
    assert_eq!(confirmed.json()["hold"], "confirmed");
    assert_eq!(live_uses(&db, kept).await, [("erin".to_owned(), false)], "confirmed in PostgreSQL already");
    // Past the deadline and A's grace: nothing is to happen, so there is no condition to
    // wait for, only the time in which an expiry would have been tried.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let other = a.client.post("/api/coupons/redeem", &body("KEPT", "frank", "order-f")).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", other.text);
    assert_eq!(live_uses(&db, kept).await, [("erin".to_owned(), false)]);

    a.stop().await.unwrap();
    c.stop().await.unwrap();
}

/// Found from outside: the id's lock went with a PostgreSQL restart and was never taken
/// again, so a write-off of the running instance answered 200 and a second process with its
/// id started (301 of 300 sold). Here every connection of B is cut and restored at once, as
/// a restart of PostgreSQL would: B takes its lock again and keeps its id and its units.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_whose_lock_went_keeps_its_id_and_its_units() {
    let db = TestDb::new().await;
    let cap = insert_coupon(&db.pool, "CAP", &[("usage_limit", "40")]).await;
    let proxy = PgProxy::start(&db.url).await;
    let a = TestApp::spawn_with(&db.url, &[("ADMIN_TOKEN", TOKEN)]).await;
    let b = TestApp::spawn_with(&proxy.url, &[("INSTANCE_ID", "node-b")]).await;
    served_everywhere(&[&a.client, &b.client], "CAP").await;
    let mut sold = 0;
    for n in 0..3 {
        let response = b.client.post("/api/coupons/redeem", &body("CAP", &format!("b{n}"), &format!("b{n}"))).await;
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
        sold += 1;
    }

    proxy.cut().await;
    proxy.restore().await;
    // B's lock is gone for a moment; B stamped its epoch moments ago, so B is not written off.
    assert_eq!(write_off(&a.client, "node-b").await, StatusCode::CONFLICT);
    // A second process with B's id, from another DATA_DIR, is refused.
    let dir_temp = crate::helpers::temp_dir("coupon-engine-twin-");
    let dir = dir_temp.path().to_owned();
    let dir = dir.display().to_string();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("HTTP_ADDR", "127.0.0.1:0"),
        ("DATA_DIR", &dir),
        ("INSTANCE_ID", "node-b"),
    ];
    let twin = binary(&["serve"], &env).output().unwrap();
    assert!(!twin.status.success());
    let stderr = String::from_utf8_lossy(&twin.stderr);
    assert!(
        stderr.contains("is live from another DATA_DIR") || stderr.contains("in use by another live instance"),
        "{stderr}"
    );
    eventually(Duration::from_secs(5), "B proved its id again", || async {
        b.client.get("/health").await.json()["instance"] == "live"
    })
    .await;
    assert_eq!(write_off(&a.client, "node-b").await, StatusCode::CONFLICT);

    sold += sell_out(&[&a.client, &b.client], "CAP", "after-").await;
    assert_eq!(sold, 40, "exactly the limit");
    eventually(Duration::from_secs(10), "every use in PostgreSQL", || async { live_uses(&db, cap).await.len() == 40 })
        .await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// An instance cut off for good stops selling from its leases once it cannot prove its id
/// (half its identity timeout), before a write-off may take them (the whole timeout); when
/// its link comes back it finds its epoch written off and stops. Nothing is sold twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_instance_stops_selling_before_it_can_be_written_off() {
    let db = TestDb::new().await;
    let cap = insert_coupon(&db.pool, "CAP", &[("usage_limit", "50")]).await;
    let proxy = PgProxy::start(&db.url).await;
    let a = TestApp::spawn_with(&db.url, &[("ADMIN_TOKEN", TOKEN)]).await;
    let b_env = [("INSTANCE_ID", "node-b"), ("COUPON__CLUSTER__IDENTITY_TIMEOUT", "1s")];
    let b = TestApp::spawn_with(&proxy.url, &b_env).await;
    served_everywhere(&[&a.client, &b.client], "CAP").await;
    for n in 0..3 {
        let response = b.client.post("/api/coupons/redeem", &body("CAP", &format!("b{n}"), &format!("b{n}"))).await;
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
    }
    eventually(Duration::from_secs(5), "B's uses shipped", || async { live_uses(&db, cap).await.len() == 3 }).await;
    let held: i64 = sqlx::query_scalar("SELECT held FROM quota_leases WHERE instance_id = 'node-b'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(held > 0, "B holds a lease");

    proxy.cut().await;
    assert_eq!(write_off(&a.client, "node-b").await, StatusCode::CONFLICT, "B was seen moments ago");
    eventually(Duration::from_secs(5), "B no longer proves its id", || async {
        let health = b.client.get("/health").await.json();
        health["instance"] == "unconfirmed" && health["status"] == "degraded"
    })
    .await;
    let refused = b.client.post("/api/coupons/redeem", &body("CAP", "b-late", "b-late")).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.text);
    assert_eq!(refused.json()["reason"], "QUOTA_UNAVAILABLE");

    let mut status = write_off(&a.client, "node-b").await;
    for _ in 0..60 {
        if status != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = write_off(&a.client, "node-b").await;
    }
    assert_eq!(status, StatusCode::OK, "written off once silent for its identity timeout");

    proxy.restore().await;
    let stopped = b.stopped_by_itself(Duration::from_secs(15)).await;
    assert!(matches!(stopped, Err(coupon_engine::app::StartError::Fenced)), "{stopped:?}");

    let sold = 3 + sell_out(&[&a.client], "CAP", "a-").await;
    assert_eq!(sold, 50, "exactly the limit");
    eventually(Duration::from_secs(10), "every use in PostgreSQL", || async { live_uses(&db, cap).await.len() == 50 })
        .await;
    a.stop().await.unwrap();
}
