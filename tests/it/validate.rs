//! `POST /api/coupons/validate`: every reason and the discount maths, through HTTP.

use serde_json::{Value, json};

use crate::helpers::{TestApp, TestDb, insert_coupon, insert_usage, insert_users};

fn body(code: &str, user: &str, order_value: Value, order_id: Option<&str>) -> Value {
    let mut body = json!({"code": code, "userId": user, "orderValue": order_value});
    if let Some(order_id) = order_id {
        body["orderId"] = json!(order_id);
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reason_in_order() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    insert_users(pool, &["user_a", "user_b"]).await;
    insert_coupon(pool, "PLAIN", &[]).await;
    insert_coupon(pool, "OFF", &[("status", "'inactive'")]).await;
    insert_coupon(pool, "OLD", &[("status", "'expired'")]).await;
    insert_coupon(pool, "PAST", &[("valid_until", "now() - interval '1 second'")]).await;
    insert_coupon(pool, "FUTURE", &[("valid_from", "now() + interval '1 hour'")]).await;
    insert_coupon(pool, "MINE", &[("type", "'user_specific'"), ("user_id", "'user_a'")]).await;
    insert_coupon(pool, "MIN100", &[("min_order_value", "100")]).await;
    let limited = insert_coupon(pool, "LIMITED", &[("usage_limit", "2")]).await;
    insert_usage(pool, limited, "user_b", "o-1").await;
    insert_usage(pool, limited, "user_b", "o-2").await;
    let per_user = insert_coupon(pool, "ONCE", &[("per_user_limit", "1")]).await;
    insert_usage(pool, per_user, "user_a", "o-3").await;
    let released = insert_coupon(pool, "RELEASED", &[("usage_limit", "1")]).await;
    insert_usage(pool, released, "user_a", "o-4").await;
    sqlx::query("UPDATE coupon_usage SET released_at = now() WHERE order_id = 'o-4'").execute(pool).await.unwrap();
    let ordered = insert_coupon(pool, "ORDERED", &[]).await;
    insert_usage(pool, ordered, "user_b", "o-5").await;
    let app = TestApp::spawn(&db).await;

    let cases = [
        (body("NOPE", "user_a", json!(50), None), Some("COUPON_NOT_FOUND")),
        (body("PLAIN", "user_a", json!(50), None), None),
        (body("OFF", "user_a", json!(50), None), Some("COUPON_INACTIVE")),
        (body("OLD", "user_a", json!(50), None), Some("COUPON_EXPIRED")),
        (body("PAST", "user_a", json!(50), None), Some("COUPON_EXPIRED")),
        (body("FUTURE", "user_a", json!(50), None), Some("COUPON_NOT_YET_VALID")),
        (body("MINE", "user_a", json!(50), None), None),
        (body("MINE", "user_b", json!(50), None), Some("COUPON_NOT_FOR_USER")),
        (body("MIN100", "user_a", json!(100), None), None),
        (body("MIN100", "user_a", json!(99.99), None), Some("MIN_ORDER_VALUE_NOT_MET")),
        (body("LIMITED", "user_a", json!(50), None), Some("USAGE_LIMIT_REACHED")),
        (body("ONCE", "user_a", json!(50), None), Some("USER_USAGE_LIMIT_REACHED")),
        (body("ONCE", "user_b", json!(50), None), None),
        (body("RELEASED", "user_a", json!(50), None), None),
        (body("ORDERED", "user_a", json!(50), Some("o-5")), Some("ORDER_ALREADY_REDEEMED")),
        (body("ORDERED", "user_a", json!(50), Some("o-6")), None),
        (body("  plain ", "user_a", json!(50), None), None),
    ];
    for (request, reason) in cases {
        let response = app.client.validate(request.clone()).await;
        assert_eq!(response["valid"], json!(reason.is_none()), "{request}: {response}");
        assert_eq!(response["reason"], json!(reason), "{request}: {response}");
        if reason.is_some() {
            assert_eq!(response["discount"], json!(0), "{request}: {response}");
            assert_eq!(response["finalAmount"], request["orderValue"], "{request}: {response}");
        }
    }
    let normalized = app.client.validate(body("  plain ", "user_a", json!(50), None)).await;
    assert_eq!(normalized["code"], "PLAIN");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discounts_are_exact() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    insert_coupon(pool, "TEN", &[]).await;
    insert_coupon(pool, "HALFPCT", &[("discount_value", "12.5")]).await;
    insert_coupon(pool, "CAPPED", &[("discount_value", "20"), ("max_discount", "50")]).await;
    insert_coupon(pool, "FIXED25", &[("discount_type", "'fixed'"), ("discount_value", "25")]).await;
    let app = TestApp::spawn(&db).await;
    for (code, order_value, discount, final_amount) in [
        ("TEN", json!(1000), json!(100), json!(900)),
        ("TEN", json!(0.05), json!(0.01), json!(0.04)), // half a cent rounds up
        ("TEN", json!(0.04), json!(0), json!(0.04)),
        ("HALFPCT", json!(19.99), json!(2.5), json!(17.49)), // 2.49875
        ("CAPPED", json!(1000), json!(50), json!(950)),
        ("CAPPED", json!(100), json!(20), json!(80)),
        ("FIXED25", json!(100), json!(25), json!(75)),
        ("FIXED25", json!(10.5), json!(10.5), json!(0)),
        ("TEN", json!(999999999.99), json!(100000000), json!(899999999.99)),
    ] {
        let response = app.client.validate(body(code, "u", order_value.clone(), None)).await;
        assert_eq!(response["valid"], json!(true), "{code} {order_value}: {response}");
        assert_eq!(response["discount"], discount, "{code} {order_value}: {response}");
        assert_eq!(response["finalAmount"], final_amount, "{code} {order_value}: {response}");
    }
    // Money goes out as exact decimal text, never through binary floating point.
    let raw = app.client.post("/api/coupons/validate", &body("HALFPCT", "u", json!(19.99), None)).await;
    assert!(raw.text.contains(r#""discount":2.5,"finalAmount":17.49"#), "{}", raw.text);
    app.stop().await.unwrap();
}
