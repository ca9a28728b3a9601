//! Checkout holds (API.md §5): hold → confirm, hold → cancel, hold → expire (for real, on the
//! service's clock), the race at the deadline, limits and budgets counted with holds,
//! restarts and SIGKILL with holds live and expired.

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::*;

const TOKEN: &str = "holds-admin-token-0123456789";

/// The coupon's rows in `coupon_usage`: (order, live, still a hold).
async fn rows(pool: &PgPool, code: &str) -> Vec<(String, bool, bool)> {
    sqlx::query_as(
        "SELECT u.order_id, u.released_at IS NULL, u.hold_expires_at IS NOT NULL FROM coupon_usage u \
         JOIN coupons c ON c.id = u.coupon_id WHERE c.code = $1 ORDER BY u.order_id",
    )
    .bind(code)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_confirm_and_cancel_answer_as_the_contract_says() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "ONE", &[("usage_limit", "1"), ("discount_type", "'fixed'"), ("discount_value", "7")])
        .await;
    insert_coupon(&db.pool, "CANCEL", &[("usage_limit", "1")]).await;
    let app = TestApp::spawn_with(&db.url, &[("ADMIN_TOKEN", TOKEN)]).await;
    let client = &app.client;

    let (status, held) = client.hold("one", "ann", "o-1", Some(600)).await;
    assert_eq!(status, StatusCode::CREATED, "{held}");
    assert_eq!(
        (held["held"].clone(), held["code"].clone(), held["discount"].clone()),
        (json!(true), json!("ONE"), json!(7))
    );
    assert_eq!(held["finalAmount"], 93);
    let expires: chrono::DateTime<chrono::Utc> = held["expiresAt"].as_str().unwrap().parse().unwrap();
    let ttl = expires - chrono::Utc::now();
    assert!(ttl > chrono::Duration::seconds(590) && ttl <= chrono::Duration::seconds(600), "{ttl}");
    assert_eq!(client.hold("ONE", "ann", "o-1", Some(600)).await, (StatusCode::OK, held.clone()), "a replay");
    let (status, other) = client.hold("ONE", "bob", "o-1", None).await;
    assert_eq!(
        (status, other["held"].clone(), other["reason"].clone()),
        (StatusCode::CONFLICT, json!(false), json!("ORDER_ALREADY_REDEEMED"))
    );
    // The hold takes the only use: nobody else gets it, by hold or by redeem.
    let (status, full) = client.redeem("ONE", "bob", "o-2").await;
    assert_eq!((status, full["reason"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("USAGE_LIMIT_REACHED")));
    let (status, full) = client.hold("ONE", "bob", "o-2", None).await;
    assert_eq!((status, full["reason"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("USAGE_LIMIT_REACHED")));
    let read = client
        .request_with(Method::GET, "/admin/coupons/ONE", "", &[("authorization", &format!("Bearer {TOKEN}"))])
        .await;
    assert_eq!(read.json()["usage"], json!({"total": 1, "holds": 1}));
    assert_eq!(client.metric("coupon_holds_live").await, 1.0);

    // The hold guaranteed the use: confirmed even though the coupon was deactivated meanwhile.
    sqlx::query("UPDATE coupons SET status = 'inactive' WHERE code = 'ONE'").execute(&db.pool).await.unwrap();
    eventually(Duration::from_secs(5), "the deactivation to be served", || async {
        client.validate(json!({"code": "ONE", "userId": "zed", "orderValue": 100})).await["reason"] == "COUPON_INACTIVE"
    })
    .await;
    let (status, confirmed) = client.redeem("ONE", "ann", "o-1").await;
    assert_eq!(status, StatusCode::CREATED, "{confirmed}");
    assert_eq!((confirmed["hold"].clone(), confirmed["discount"].clone()), (json!("confirmed"), json!(7)));
    assert_eq!(confirmed["redemptionId"], held["holdId"], "the hold became the redemption");
    let (status, again) = client.hold("ONE", "ann", "o-1", None).await;
    assert_eq!((status, again["reason"].clone()), (StatusCode::CONFLICT, json!("ORDER_ALREADY_REDEEMED")));

    // Cancel: the use comes back; a release of another order is 404.
    assert_eq!(client.hold("CANCEL", "cat", "c-1", None).await.0, StatusCode::CREATED);
    assert_eq!(client.release("CANCEL", "c-other").await.0, StatusCode::NOT_FOUND);
    let (status, cancelled) = client.release("CANCEL", "c-1").await;
    assert_eq!(
        (status, cancelled["released"].clone(), cancelled["hold"].clone()),
        (StatusCode::OK, json!(true), json!("cancelled"))
    );
    assert_eq!(
        client.redeem("CANCEL", "dan", "c-2").await.0,
        StatusCode::CREATED,
        "the cancelled hold's use came back"
    );
    assert_eq!(
        client.hold("CANCEL", "cat", "c-1", None).await.1["reason"],
        "USAGE_LIMIT_REACHED",
        "its order is free again, the use is not"
    );

    eventually(Duration::from_secs(10), "the holds to reach PostgreSQL", || async {
        rows(&db.pool, "ONE").await == [("o-1".into(), true, false)]
            && rows(&db.pool, "CANCEL").await == [("c-1".into(), false, true), ("c-2".into(), true, false)]
    })
    .await;
    for (outcome, n) in [("held", 2.0), ("confirmed", 1.0), ("cancelled", 1.0)] {
        assert_eq!(client.metric(&format!("coupon_holds_total{{outcome=\"{outcome}\"}}")).await, n, "{outcome}");
    }
    assert_eq!(client.metric("coupon_holds_live").await, 0.0);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_holds_are_refused() {
    let db = TestDb::new().await;
    for n in 1..=5 {
        insert_coupon(&db.pool, &format!("C{n}"), &[]).await;
    }
    let app = TestApp::spawn(&db).await;
    let client = &app.client;
    for ttl in [json!(0), json!(-5), json!(1.5), json!(3601), json!("60")] {
        let body = json!({"code": "C1", "userId": "u", "orderId": "o", "orderValue": 100, "ttlSeconds": ttl});
        let answer = client.post("/api/coupons/hold", &body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "ttlSeconds {ttl}");
        assert_eq!(answer.json()["error"]["field"], "ttlSeconds", "ttlSeconds {ttl}");
    }
    // Anti-hoarding: three live holds per user across coupons, then 429 with Retry-After.
    for n in 1..=3 {
        assert_eq!(client.hold(&format!("C{n}"), "hoarder", &format!("h-{n}"), None).await.0, StatusCode::CREATED);
    }
    let answer = client
        .post("/api/coupons/hold", &json!({"code": "C4", "userId": "hoarder", "orderId": "h-4", "orderValue": 100}))
        .await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.json()["error"]["code"], "TOO_MANY_HOLDS");
    assert!(answer.headers.contains_key("retry-after"));
    assert_eq!(client.redeem("C4", "hoarder", "h-4").await.0, StatusCode::CREATED, "redemptions are not capped");
    assert_eq!(client.redeem("C1", "hoarder", "h-1").await.1["hold"], "confirmed");
    assert_eq!(
        client.hold("C5", "hoarder", "h-5", None).await.0,
        StatusCode::CREATED,
        "a confirmed hold frees a place"
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_count_against_campaign_caps_and_budgets() {
    let db = TestDb::new().await;
    let campaign: i64 = sqlx::query_scalar(
        "INSERT INTO campaigns (name, usage_limit, budget) VALUES ('spring', 3, 15.00) RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let campaign = campaign.to_string();
    for code in ["SEVEN-A", "SEVEN-B", "SEVEN-C"] {
        insert_coupon(
            &db.pool,
            code,
            &[("discount_type", "'fixed'"), ("discount_value", "7"), ("campaign_id", &campaign)],
        )
        .await;
    }
    // The caps and the budget are what is checked here: no share of them per caller (a 7.00
    // hold is most of a 15.00 budget).
    let app = TestApp::spawn_with(&db.url, &[("COUPON__PROTECTION__HOLD_SHARE_PERCENT", "0")]).await;
    let client = &app.client;
    assert_eq!(client.hold("SEVEN-A", "u1", "o1", None).await.0, StatusCode::CREATED);
    assert_eq!(client.hold("SEVEN-B", "u2", "o2", None).await.0, StatusCode::CREATED);
    // 14.00 of 15.00 held: a third 7.00 would overspend, by hold or by redeem.
    assert_eq!(client.hold("SEVEN-C", "u3", "o3", None).await.1["reason"], "CAMPAIGN_BUDGET_EXHAUSTED");
    assert_eq!(client.redeem("SEVEN-C", "u3", "o3").await.1["reason"], "CAMPAIGN_BUDGET_EXHAUSTED");
    assert_eq!(client.release("SEVEN-A", "o1").await.0, StatusCode::OK);
    assert_eq!(client.redeem("SEVEN-C", "u3", "o3").await.0, StatusCode::CREATED, "the cancelled hold gave back 7.00");
    assert_eq!(client.redeem("SEVEN-B", "u2", "o2").await.1["hold"], "confirmed");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_expires_by_itself_and_redeem_then_applies_the_rules_afresh() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "BRIEF", &[("usage_limit", "1")]).await;
    let app = TestApp::spawn(&db).await;
    let client = &app.client;
    let (status, held) = client.hold("BRIEF", "ann", "o-1", Some(1)).await;
    assert_eq!(status, StatusCode::CREATED);
    let expires: chrono::DateTime<chrono::Utc> = held["expiresAt"].as_str().unwrap().parse().unwrap();
    // Within a second of its deadline the use is back, and PostgreSQL hears of it.
    eventually(Duration::from_secs(3), "the hold to expire", || async {
        client.validate(json!({"code": "BRIEF", "userId": "bob", "orderValue": 100})).await["valid"] == true
    })
    .await;
    let late = chrono::Utc::now() - expires;
    assert!(late < chrono::Duration::milliseconds(1_500), "given back {late} after its deadline");
    assert_eq!(client.redeem("BRIEF", "bob", "o-2").await.0, StatusCode::CREATED);
    let (status, after) = client.redeem("BRIEF", "ann", "o-1").await;
    assert_eq!((status, after["reason"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("USAGE_LIMIT_REACHED")));
    eventually(Duration::from_secs(10), "the expiry to reach PostgreSQL", || async {
        rows(&db.pool, "BRIEF").await == [("o-1".into(), false, true), ("o-2".into(), true, false)]
    })
    .await;
    assert_eq!(client.metric("coupon_holds_total{outcome=\"expired\"}").await, 1.0);
    app.stop().await.unwrap();
}

/// Forty holds confirmed right at their deadline while forty other buyers race for the uses
/// the expiring holds give back: each hold is confirmed or expired, never both, and the
/// limit is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_and_expiry_race_at_the_deadline_and_exactly_one_wins() {
    const N: usize = 40;
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "RACE", &[("usage_limit", &N.to_string())]).await;
    let app = TestApp::spawn(&db).await;
    let client = &app.client;
    let mut deadline = None;
    for n in 0..N {
        let (status, held) = client.hold("RACE", &format!("holder-{n}"), &format!("h-{n}"), Some(2)).await;
        assert_eq!(status, StatusCode::CREATED);
        deadline.get_or_insert(held["expiresAt"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap());
    }
    // Aim at the first deadline, spread over ±60 ms.
    let wait = (deadline.unwrap() - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait.saturating_sub(Duration::from_millis(60))).await;
    let racers: Vec<_> = (0..2 * N)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis((n as u64 * 3) % 120)).await;
                let (user, order) = if n < N {
                    (format!("holder-{n}"), format!("h-{n}"))
                } else {
                    (format!("buyer-{n}"), format!("b-{n}"))
                };
                (n < N, client.redeem("RACE", &user, &order).await)
            })
        })
        .collect();
    let (mut confirmed, mut expired_then_won, mut buyers_won) = (0, 0, 0);
    for racer in racers {
        let (is_holder, (status, body)) = racer.await.unwrap();
        match (is_holder, status, body["hold"].as_str()) {
            (true, StatusCode::CREATED, Some("confirmed")) => confirmed += 1,
            (true, StatusCode::CREATED, Some("expired")) => expired_then_won += 1,
            (false, StatusCode::CREATED, None) => buyers_won += 1,
            (_, StatusCode::UNPROCESSABLE_ENTITY, None) => assert_eq!(body["reason"], "USAGE_LIMIT_REACHED"),
            other => panic!("unexpected answer {other:?} {body}"),
        }
    }
    assert_eq!(confirmed + expired_then_won + buyers_won, N, "exactly the limit");
    let expired = client.metric("coupon_holds_total{outcome=\"expired\"}").await;
    assert_eq!(client.metric("coupon_holds_total{outcome=\"confirmed\"}").await, confirmed as f64);
    assert_eq!(confirmed as f64 + expired, N as f64, "every hold confirmed or expired, once");
    assert_eq!(client.metric("coupon_holds_live").await, 0.0);
    eventually(Duration::from_secs(10), "the uses to reach PostgreSQL", || async {
        let rows = rows(&db.pool, "RACE").await;
        rows.iter().filter(|(_, live, _)| *live).count() == N && rows.iter().all(|(_, live, held)| !(*live && *held))
    })
    .await;
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_survive_sigkill_and_one_that_lapsed_meanwhile_is_given_back_before_serving() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TWO", &[("usage_limit", "2")]).await;
    let data_dir_temp = crate::helpers::temp_dir("coupon-engine-holds-");
    let data_dir = data_dir_temp.path().to_owned();
    let data_dir = data_dir.display().to_string();
    let env = [("DATA_DIR", data_dir.as_str())];
    let server = ServeProcess::start(&db.url, &env);
    let client = TestClient::new(server.addr);
    client.wait_ready().await;
    assert_eq!(client.hold("TWO", "long", "o-long", Some(3600)).await.0, StatusCode::CREATED);
    assert_eq!(client.hold("TWO", "short", "o-short", Some(2)).await.0, StatusCode::CREATED);
    assert_eq!(client.redeem("TWO", "third", "o-3").await.1["reason"], "USAGE_LIMIT_REACHED");
    let mut child = server.child;
    signal(&child, "KILL");
    child.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let server = ServeProcess::start(&db.url, &env);
    let client = TestClient::new(server.addr);
    client.wait_ready().await;
    // The first answer after ready already counts the live hold and not the lapsed one.
    let (status, body) = client.redeem("TWO", "third", "o-3").await;
    assert_eq!(status, StatusCode::CREATED, "the lapsed hold was given back at start-up: {body}");
    assert_eq!(
        client.redeem("TWO", "fourth", "o-4").await.1["reason"],
        "USAGE_LIMIT_REACHED",
        "the live hold still counts"
    );
    assert_eq!(client.redeem("TWO", "long", "o-long").await.1["hold"], "confirmed");
    assert_eq!(client.redeem("TWO", "short", "o-short").await.1["reason"], "USAGE_LIMIT_REACHED");
    eventually(Duration::from_secs(10), "PostgreSQL to agree", || async {
        rows(&db.pool, "TWO").await
            == [("o-3".into(), true, false), ("o-long".into(), true, false), ("o-short".into(), false, true)]
    })
    .await;

    // A clean restart keeps a live hold too.
    assert_eq!(client.release("TWO", "o-3").await.0, StatusCode::OK);
    assert_eq!(client.hold("TWO", "again", "o-5", Some(3600)).await.0, StatusCode::CREATED);
    assert!(server.terminate().success());
    let server = ServeProcess::start(&db.url, &env);
    let client = TestClient::new(server.addr);
    client.wait_ready().await;
    assert_eq!(client.redeem("TWO", "sixth", "o-6").await.1["reason"], "USAGE_LIMIT_REACHED");
    assert_eq!(client.redeem("TWO", "again", "o-5").await.1["hold"], "confirmed");
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_one_caller_holds_more_than_its_share() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "FIFTY", &[("usage_limit", "50")]).await;
    sqlx::query("INSERT INTO campaigns (name, budget) VALUES ('carts', 1000)").execute(&db.pool).await.unwrap();
    insert_coupon(&db.pool, "BUDGETED", &[("discount_value", "50"), ("campaign_id", "(SELECT id FROM campaigns)")])
        .await;
    // No API token, writes allowed from elsewhere: callers through the local proxy are anonymous.
    let app = TestApp::spawn_with(&db.url, &[("COUPON__PROTECTION__TRUSTED_PROXIES", "127.0.0.1")]).await;
    let hold_from = |address: &'static str, code: &'static str, n: u32, value: u32| {
        let client = app.client.clone();
        async move {
            let body = json!({"code": code, "userId": format!("squatter-{n}"), "orderId": format!("o-{address}-{n}"),
                              "orderValue": value, "ttlSeconds": 3600});
            client
                .request_with(Method::POST, "/api/coupons/hold", body.to_string(), &[("x-forwarded-for", address)])
                .await
        }
    };
    // One address rotating user ids: a tenth of the fifty uses, then 429 with Retry-After.
    let mut held = 0;
    for n in 0..50 {
        let answer = hold_from("203.0.113.7", "FIFTY", n, 100).await;
        if answer.status == StatusCode::CREATED {
            held += 1;
            // An anonymous hold lasts at most hold.anonymous_ttl_secs, whatever it asked.
            let expires = chrono::DateTime::parse_from_rfc3339(answer.json()["expiresAt"].as_str().unwrap()).unwrap();
            assert!(expires <= chrono::Utc::now() + chrono::Duration::seconds(301), "{expires}");
        } else {
            assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS, "{}", answer.text);
            assert_eq!(answer.json()["error"]["code"], "HOLD_SHARE_EXCEEDED");
            assert_eq!(answer.headers.get("retry-after").unwrap(), "60");
        }
    }
    assert_eq!(held, 5);
    // Another address has a share of its own.
    assert_eq!(hold_from("198.51.100.9", "FIFTY", 0, 100).await.status, StatusCode::CREATED);
    // One hold on a big cart cannot take the campaign's budget: 10 % of 1,000.00 is 100.00.
    let big = hold_from("192.0.2.4", "BUDGETED", 0, 1_000).await;
    assert_eq!(big.status, StatusCode::TOO_MANY_REQUESTS, "500.00 of 1,000.00: {}", big.text);
    assert_eq!(hold_from("192.0.2.4", "BUDGETED", 1, 200).await.status, StatusCode::CREATED);
    assert_eq!(hold_from("192.0.2.4", "BUDGETED", 2, 2).await.status, StatusCode::TOO_MANY_REQUESTS);
    // Released holds stop counting. (The other address's hold shrank what is left: 4 of 49 now,
    // so two of the five go back before one more fits.)
    for order in ["o-203.0.113.7-0", "o-203.0.113.7-1"] {
        let release = json!({"code": "FIFTY", "orderId": order}).to_string();
        let headers = [("x-forwarded-for", "203.0.113.7")];
        let released = app.client.request_with(Method::POST, "/api/coupons/release", release, &headers).await;
        assert_eq!(released.status, StatusCode::OK, "{}", released.text);
    }
    // A hold asked for counts for its first second whatever became of it (concurrent asks).
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(hold_from("203.0.113.7", "FIFTY", 99, 100).await.status, StatusCode::CREATED);
    assert_eq!(hold_from("203.0.113.7", "FIFTY", 98, 100).await.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(app.client.metric(r#"coupon_holds_total{outcome="HOLD_SHARE_EXCEEDED"}"#).await >= 46.0);
    // The shop's backend on this machine is bounded per user: one user, many orders.
    let backend =
        |n: u32| json!({"code": "FIFTY", "userId": "one-user", "orderId": format!("b-{n}"), "orderValue": 100});
    let answers: Vec<StatusCode> = {
        let mut answers = Vec::new();
        for n in 0..4 {
            answers.push(app.client.post("/api/coupons/hold", &backend(n)).await.status);
        }
        answers
    };
    // 43 uses left before its holds: 4 for one user, the 4th past max_active_holds_per_user (3).
    assert_eq!(answers, [StatusCode::CREATED, StatusCode::CREATED, StatusCode::CREATED, StatusCode::TOO_MANY_REQUESTS]);
    app.stop().await.unwrap();
}
