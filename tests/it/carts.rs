//! Carts on the wire (API.md §9): items, shipping and currency on validate, today's coupons
//! judged on them, the split per line and per unit; a request without them answered exactly
//! as before.

use hyper::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestDb, insert_coupon, redeem_body};

fn line(id: &str, quantity: u32, unit_price: Value) -> Value {
    json!({"lineId": id, "productId": format!("p-{id}"), "quantity": quantity, "unitPrice": unit_price})
}

fn cart(code: &str, items: Vec<Value>) -> Value {
    json!({"code": code, "userId": "user_0000001", "items": items})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_vectors_through_http() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "PCT15", &[("discount_value", "15")]).await;
    insert_coupon(&db.pool, "FIXED10", &[("discount_type", "'fixed'"), ("discount_value", "10")]).await;
    insert_coupon(&db.pool, "PCT125", &[("discount_value", "12.5"), ("max_discount", "5")]).await;
    insert_coupon(&db.pool, "PCT7", &[("discount_value", "7")]).await;
    let app = TestApp::spawn(&db).await;
    let client = &app.client;

    // V1: D 3.00 → lines 1.50 / 0 / 1.50; units 3×0.50, 1×0, 2×0.75.
    let v1 = client
        .validate(cart("PCT15", vec![line("1", 3, json!(3.33)), line("2", 1, json!(0.01)), line("3", 2, json!(5))]))
        .await;
    assert_eq!(
        (v1["valid"].clone(), v1["discount"].clone(), v1["finalAmount"].clone()),
        (json!(true), json!(3), json!(17)),
        "{v1}"
    );
    let lines = v1["lines"].as_array().unwrap();
    assert_eq!(lines.iter().map(|l| l["discount"].clone()).collect::<Vec<_>>(), [json!(1.5), json!(0), json!(1.5)]);
    assert_eq!(lines[0]["units"], json!([{"count": 3, "discount": 0.5}]));
    assert_eq!(lines[1]["units"], json!([{"count": 1, "discount": 0}]));
    assert_eq!(lines[2]["units"], json!([{"count": 2, "discount": 0.75}]));
    assert_eq!(lines[0]["allocations"], json!([{"code": "PCT15", "discount": 1.5}]));
    assert_eq!(lines[1]["allocations"], json!([]));
    assert_eq!((lines[0]["subtotal"].clone(), lines[0]["total"].clone()), (json!(9.99), json!(8.49)));

    // The README's example, byte for byte.
    let mut readme =
        cart("PCT15", vec![line("1", 3, json!(3.33)), line("2", 1, json!(0.01)), line("3", 2, json!(5.00))]);
    readme["shipping"] = json!({"amount": 4.99});
    let text = client.post("/api/coupons/validate", &readme).await.text;
    assert_eq!(
        text,
        concat!(
            r#"{"valid":true,"code":"PCT15","reason":null,"currency":"EUR","discount":3,"finalAmount":17,"#,
            r#""shippingDiscount":0,"shippingTotal":4.99,"grandTotal":21.99,"lines":["#,
            r#"{"lineId":"1","subtotal":9.99,"discount":1.5,"total":8.49,"units":[{"count":3,"discount":0.5}],"#,
            r#""allocations":[{"code":"PCT15","discount":1.5}]},"#,
            r#"{"lineId":"2","subtotal":0.01,"discount":0,"total":0.01,"units":[{"count":1,"discount":0}],"allocations":[]},"#,
            r#"{"lineId":"3","subtotal":10,"discount":1.5,"total":8.5,"units":[{"count":2,"discount":0.75}],"#,
            r#""allocations":[{"code":"PCT15","discount":1.5}]}]}"#
        )
    );

    // V2: 3.34 / 3.33 / 3.33, the tie to the lower index.
    let v2 = client
        .validate(cart("FIXED10", vec![line("a", 1, json!(10)), line("b", 1, json!(10)), line("c", 1, json!(10))]))
        .await;
    let split: Vec<Value> = v2["lines"].as_array().unwrap().iter().map(|l| l["discount"].clone()).collect();
    assert_eq!(split, [json!(3.34), json!(3.33), json!(3.33)], "{v2}");

    // V3: 12.5 % capped at 5.00 → 2.41 / 1.51 / 1.08; line 1 units 1×1.21 + 1×1.20; line 3 4×0.27.
    let v3 = client
        .validate(cart(
            "PCT125",
            vec![line("1", 2, json!(19.99)), line("2", 1, json!(24.99)), line("3", 4, json!(4.5))],
        ))
        .await;
    let lines = v3["lines"].as_array().unwrap();
    assert_eq!(
        lines.iter().map(|l| l["discount"].clone()).collect::<Vec<_>>(),
        [json!(2.41), json!(1.51), json!(1.08)],
        "{v3}"
    );
    assert_eq!(lines[0]["units"], json!([{"count": 1, "discount": 1.21}, {"count": 1, "discount": 1.2}]));
    assert_eq!(lines[2]["units"], json!([{"count": 4, "discount": 0.27}]));

    // V4: JPY (no decimals) 1000, 1000, 1001 at 7 % → 210 as 70 / 70 / 70. A percentage with no
    // cap and no minimum applies in any currency.
    let mut v4 = cart("PCT7", vec![line("1", 1, json!(1000)), line("2", 1, json!(1000)), line("3", 1, json!(1001))]);
    v4["currency"] = json!("JPY");
    let v4 = client.validate(v4).await;
    assert_eq!((v4["currency"].clone(), v4["discount"].clone()), (json!("JPY"), json!(210)), "{v4}");
    let split: Vec<Value> = v4["lines"].as_array().unwrap().iter().map(|l| l["discount"].clone()).collect();
    assert_eq!(split, [json!(70), json!(70), json!(70)]);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipping_currency_and_the_cart_reasons() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    insert_coupon(&db.pool, "FIVE", &[("discount_type", "'fixed'"), ("discount_value", "5")]).await;
    insert_coupon(&db.pool, "MIN50", &[("min_order_value", "50")]).await;
    let app = TestApp::spawn(&db).await;
    let client = &app.client;

    // Shipping is never part of the order value, and an order coupon leaves it alone.
    let mut body = cart("TEN", vec![line("1", 3, json!(20)), line("2", 1, json!(15))]);
    body["shipping"] = json!({"amount": 4.99, "methodId": "std"});
    let answer = client.validate(body).await;
    let expected = json!({"valid": true, "code": "TEN", "reason": null, "currency": "EUR", "discount": 7.5,
        "finalAmount": 67.5, "shippingDiscount": 0, "shippingTotal": 4.99, "grandTotal": 72.49});
    for (field, value) in expected.as_object().unwrap() {
        assert_eq!(&answer[field], value, "{field}: {answer}");
    }

    // A line that is not discountable is neither discounted nor counted.
    let mut kept = line("2", 1, json!(15));
    kept["discountable"] = json!(false);
    let answer = client.validate(cart("TEN", vec![line("1", 3, json!(20)), kept])).await;
    assert_eq!((answer["discount"].clone(), answer["finalAmount"].clone()), (json!(6), json!(69)), "{answer}");
    let mut only = line("1", 1, json!(20));
    only["discountable"] = json!(false);
    let answer = client.validate(cart("TEN", vec![only])).await;
    assert_eq!(answer["reason"], "NO_ELIGIBLE_ITEMS", "{answer}");
    assert_eq!(answer["discount"], 0);

    // Amounts in another currency than the coupon's: refused for a fixed amount.
    let mut usd = cart("FIVE", vec![line("1", 1, json!(20))]);
    usd["currency"] = json!("USD");
    assert_eq!(client.validate(usd).await["reason"], "CURRENCY_NOT_SUPPORTED");
    let mut usd = cart("MIN50", vec![line("1", 1, json!(20))]);
    usd["currency"] = json!("USD");
    assert_eq!(client.validate(usd).await["reason"], "CURRENCY_NOT_SUPPORTED", "a minimum is an amount too");
    assert_eq!(
        client.validate(cart("MIN50", vec![line("1", 1, json!(20))])).await["reason"],
        "MIN_ORDER_VALUE_NOT_MET"
    );

    // orderValue is derived from the items, or must equal them.
    let mut body = cart("TEN", vec![line("1", 2, json!(10))]);
    body["orderValue"] = json!(20);
    assert_eq!(client.validate(body.clone()).await["discount"], 2);
    body["orderValue"] = json!(21);
    let refused = client.post("/api/coupons/validate", &body).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.json()["error"]["field"], "orderValue", "{}", refused.text);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cart_fields_the_answer_is_byte_for_byte_todays() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "HALFPCT", &[("discount_value", "12.5")]).await;
    let app = TestApp::spawn(&db).await;
    let plain = app
        .client
        .post(
            "/api/coupons/validate",
            &json!({"code": "halfpct", "userId": "u", "orderValue": 19.99, "orderId": "o-1"}),
        )
        .await;
    assert_eq!(plain.text, r#"{"valid":true,"code":"HALFPCT","reason":null,"discount":2.5,"finalAmount":17.49}"#);
    let refused =
        app.client.post("/api/coupons/validate", &json!({"code": "NOPE", "userId": "u", "orderValue": 10})).await;
    assert_eq!(
        refused.text,
        r#"{"valid":false,"code":"NOPE","reason":"COUPON_NOT_FOUND","discount":0,"finalAmount":10}"#
    );
    // A body over 16 KiB is refused unless it carries items (up to 64 KiB).
    let padding = "x".repeat(20_000);
    let big = app
        .client
        .post("/api/coupons/validate", &json!({"code": "HALFPCT", "userId": "u", "orderValue": 1, "pad": padding}))
        .await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    let garbage = app.client.request(hyper::Method::POST, "/api/coupons/validate", vec![b'x'; 20_000]).await;
    assert_eq!(garbage.status, StatusCode::PAYLOAD_TOO_LARGE, "too large before malformed");
    let mut with_items = cart("HALFPCT", vec![line("1", 1, json!(10))]);
    with_items["pad"] = json!(padding);
    assert_eq!(app.client.post("/api/coupons/validate", &with_items).await.status, StatusCode::OK);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeem_takes_the_discount_of_its_cart() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[("usage_limit", "5")]).await;
    let app = TestApp::spawn(&db).await;
    let mut kept = line("2", 1, json!(15));
    kept["discountable"] = json!(false);
    let mut body = cart("TEN", vec![line("1", 3, json!(20)), kept]);
    body["orderId"] = json!("o-cart");
    let taken = app.client.post("/api/coupons/redeem", &body).await;
    assert_eq!(taken.status, StatusCode::CREATED, "{}", taken.text);
    assert_eq!((taken.json()["discount"].clone(), taken.json()["finalAmount"].clone()), (json!(6), json!(69)));
    // Another currency than the default cannot be recorded yet.
    let mut usd = body.clone();
    usd["currency"] = json!("USD");
    usd["orderId"] = json!("o-usd");
    let refused = app.client.post("/api/coupons/redeem", &usd).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.json()["error"]["field"], "currency");
    // Without items, as today.
    let plain = app.client.post("/api/coupons/redeem", &redeem_body("TEN", "u", "o-plain")).await;
    assert_eq!(plain.status, StatusCode::CREATED);
    app.stop().await.unwrap();
}
