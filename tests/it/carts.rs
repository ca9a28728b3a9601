//! Carts on the wire (API.md §9): items, shipping and currency on validate, today's coupons
//! judged on them, the split per line and per unit; a request without them answered exactly
//! as before.

use hyper::{Method, StatusCode};
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
async fn a_redeem_keeps_its_cart_and_a_replay_must_send_the_same() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[("usage_limit", "5")]).await;
    let app = TestApp::spawn(&db).await;
    let mut kept = line("2", 1, json!(15));
    kept["discountable"] = json!(false);
    let mut body = cart("TEN", vec![line("1", 3, json!(20)), kept]);
    body["orderId"] = json!("o-cart");
    let taken = app.client.post("/api/coupons/redeem", &body).await;
    assert_eq!(taken.status, StatusCode::CREATED, "{}", taken.text);
    let answer = taken.json();
    assert_eq!(
        (&answer["currency"], &answer["discount"], &answer["shippingDiscount"], &answer["finalAmount"]),
        (&json!("EUR"), &json!(6), &json!(0), &json!(69)),
        "{answer}"
    );
    // The answer carries §9's additions as validate's does.
    assert_eq!(answer["grandTotal"], 69);
    assert_eq!(answer["lines"][0]["units"], json!([{"count": 3, "discount": 2}]), "{answer}");
    assert_eq!(answer["lines"][1]["allocations"], json!([]));
    // The same request again is a replay, answered the same; other items, another amount, or
    // no items at all, are another request for the same order.
    let again = app.client.post("/api/coupons/redeem", &body).await;
    assert_eq!((again.status, again.json()), (StatusCode::OK, answer.clone()));
    let mut other = body.clone();
    other["items"][0]["quantity"] = json!(2);
    let mut renamed = body.clone();
    renamed["items"][0]["productId"] = json!("p-other");
    let plain = json!({"code": "TEN", "userId": "user_0000001", "orderId": "o-cart", "orderValue": 75});
    for mismatch in [other, renamed, plain] {
        let refused = app.client.post("/api/coupons/redeem", &mismatch).await;
        assert_eq!(refused.status, StatusCode::CONFLICT, "{mismatch}");
        assert_eq!(refused.json()["reason"], "IDEMPOTENCY_MISMATCH");
    }
    // Another currency is taken in its own amounts (a percentage has none of its own).
    let mut usd = cart("TEN", vec![line("1", 3, json!(20))]);
    usd["currency"] = json!("USD");
    usd["orderId"] = json!("o-usd");
    let taken = app.client.post("/api/coupons/redeem", &usd).await;
    assert_eq!(taken.status, StatusCode::CREATED, "{}", taken.text);
    assert_eq!((taken.json()["currency"].clone(), taken.json()["discount"].clone()), (json!("USD"), json!(6)));
    let mut jpy = cart("TEN", vec![line("1", 3, json!(1001))]);
    jpy["currency"] = json!("JPY");
    jpy["orderId"] = json!("o-jpy");
    let taken = app.client.post("/api/coupons/redeem", &jpy).await;
    assert_eq!((taken.json()["discount"].clone(), taken.json()["finalAmount"].clone()), (json!(300), json!(2703)));
    // Without items, as today.
    let plain = app.client.post("/api/coupons/redeem", &redeem_body("TEN", "u", "o-plain")).await;
    assert_eq!(plain.status, StatusCode::CREATED);
    assert!(!plain.text.contains("currency"), "{}", plain.text);
    app.stop().await.unwrap();

    // What PostgreSQL keeps: amounts in each use's currency, its items hash, and its allocation.
    type StoredUse = (String, String, String, Option<String>, Option<String>, Option<Value>, bool);
    let rows: Vec<StoredUse> = sqlx::query_as(
        "SELECT order_id, order_value::text, discount_applied::text, currency, shipping_discount::text, allocation, \
         octet_length(items_hash) IS NOT DISTINCT FROM 32 AND (items_hash IS NULL) = (currency IS NULL) \
         FROM coupon_usage ORDER BY order_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let split = |lines: Value| Some(lines);
    assert_eq!(
        rows,
        [
            (
                "o-cart".into(),
                "75.00".into(),
                "6.00".into(),
                Some("EUR".into()),
                Some("0".into()),
                split(json!([{"lineId": "1", "discount": 6, "units": [{"count": 3, "discount": 2}]},
                             {"lineId": "2", "discount": 0, "units": [{"count": 1, "discount": 0}]}])),
                true
            ),
            (
                "o-jpy".into(),
                "3003".into(),
                "300".into(),
                Some("JPY".into()),
                Some("0".into()),
                split(json!([{"lineId": "1", "discount": 300, "units": [{"count": 3, "discount": 100}]}])),
                true
            ),
            ("o-plain".into(), "100.00".into(), "10.00".into(), None, None, None, false),
            (
                "o-usd".into(),
                "60.00".into(),
                "6.00".into(),
                Some("USD".into()),
                Some("0".into()),
                split(json!([{"lineId": "1", "discount": 6, "units": [{"count": 3, "discount": 2}]}])),
                true
            ),
        ]
    );

    // After a restart the uses come back from PostgreSQL with their hashes, and a replay's
    // allocation is read from there: the same answer.
    let app = TestApp::spawn(&db).await;
    let again = app.client.post("/api/coupons/redeem", &body).await;
    assert_eq!((again.status, again.json()), (StatusCode::OK, answer));
    let mut other = body.clone();
    other["items"][0]["unitPrice"] = json!(21);
    assert_eq!(app.client.post("/api/coupons/redeem", &other).await.status, StatusCode::CONFLICT);
    let again = app.client.post("/api/coupons/redeem", &jpy).await;
    assert_eq!((again.status, again.json()["finalAmount"].clone()), (StatusCode::OK, json!(2703)));
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coupons_that_target_carts_from_the_admin_api_and_from_sql() {
    const TOKEN: &str = "carts-admin-token-0123456789";
    let db = TestDb::new().await;
    let app = TestApp::spawn_with(&db.url, &[("ADMIN_TOKEN", TOKEN)]).await;
    let client = &app.client;
    let admin = |body: Value| async move {
        client
            .request_with(
                Method::POST,
                "/admin/coupons",
                body.to_string(),
                &[("authorization", &format!("Bearer {TOKEN}"))],
            )
            .await
    };
    let created = admin(json!({"code": "SHIRTS20", "type": "time_specific", "discountType": "percentage",
        "discountValue": 20, "target": "items", "scope": {"includeCategories": ["shirts"], "excludeOnSale": true},
        "minQuantity": 2}))
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let view = created.json();
    assert_eq!(
        (&view["target"], &view["scope"], &view["minQuantity"], &view["minOrderBasis"], &view["allocation"]),
        (
            &json!("items"),
            &json!({"includeCategories": ["shirts"], "excludeOnSale": true}),
            &json!(2),
            &json!("order"),
            &json!("across")
        )
    );
    let refused = admin(json!({"code": "PCT", "type": "time_specific", "discountType": "percentage",
        "discountValue": 10, "currencyOptions": {"USD": {"discountValue": 12}}}))
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "a percentage is the same in every currency");
    assert_eq!(refused.json()["error"]["field"], "currencyOptions");
    let created = admin(json!({"code": "B2G1", "type": "time_specific", "discountType": "buy_x_get_y",
        "buyXGetY": {"buyQuantity": 2, "getQuantity": 1}}))
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(
        created.json()["buyXGetY"],
        json!({"buyQuantity": 2, "getQuantity": 1, "getPercent": 100,
        "getScope": null, "maxApplications": null, "selection": "cheapest"})
    );
    let created = admin(json!({"code": "SHIPFREE", "type": "time_specific", "discountType": "free_shipping",
        "minOrderValue": 50}))
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let created = admin(json!({"code": "FIVEOFF", "type": "time_specific", "discountType": "fixed",
        "discountValue": 5, "currencyOptions": {"USD": {"discountValue": 6}, "JPY": {"discountValue": 800}}}))
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);

    let shirt = |id: &str, quantity, price: f64, on_sale: bool| {
        json!({"lineId": id, "productId": format!("p-{id}"), "categoryIds": ["shirts"], "quantity": quantity,
               "unitPrice": price, "onSale": on_sale})
    };
    let socks = json!({"lineId": "s", "productId": "p-s", "categoryIds": ["socks"], "quantity": 1, "unitPrice": 15});
    // 20 % of the two shirts not on sale (2 × 20.00): 8.00 on line a.
    let answer = client
        .validate(cart("SHIRTS20", vec![shirt("a", 2, 20.0, false), shirt("b", 1, 30.0, true), socks.clone()]))
        .await;
    assert_eq!((answer["valid"].clone(), answer["discount"].clone()), (json!(true), json!(8)), "{answer}");
    let lines: Vec<Value> = answer["lines"].as_array().unwrap().iter().map(|l| l["discount"].clone()).collect();
    assert_eq!(lines, [json!(8), json!(0), json!(0)]);
    for (body, reason) in [
        (json!({"code": "SHIRTS20", "userId": "u", "orderValue": 100}), "ITEMS_REQUIRED"),
        (cart("SHIRTS20", vec![shirt("b", 3, 30.0, true), socks.clone()]), "NO_ELIGIBLE_ITEMS"),
        (cart("SHIRTS20", vec![shirt("a", 1, 20.0, false), socks.clone()]), "MIN_QUANTITY_NOT_MET"),
        (cart("B2G1", vec![shirt("a", 2, 20.0, false)]), "MIN_QUANTITY_NOT_MET"),
        (cart("SHIPFREE", vec![shirt("a", 2, 20.0, false)]), "ITEMS_REQUIRED"),
    ] {
        assert_eq!(client.validate(body.clone()).await["reason"], reason, "{body}");
    }
    // V5's first code: buy 2 get the cheapest free.
    let v5 = cart("B2G1", vec![line("A", 3, json!(20)), line("B", 1, json!(15)), line("C", 2, json!(25))]);
    let answer = client.validate(v5).await;
    assert_eq!(answer["discount"], 35, "{answer}");
    assert_eq!(answer["lines"][0]["units"], json!([{"count": 1, "discount": 20}, {"count": 2, "discount": 0}]));
    // Free shipping over 50.00: nothing off the merchandise, the shipping off the total.
    let mut shipped = cart("SHIPFREE", vec![shirt("a", 3, 20.0, false)]);
    shipped["shipping"] = json!({"amount": 4.99});
    shipped["orderId"] = json!("o-ship");
    let answer = client.validate(shipped.clone()).await;
    assert_eq!(
        (
            &answer["discount"],
            &answer["shippingDiscount"],
            &answer["shippingTotal"],
            &answer["finalAmount"],
            &answer["grandTotal"]
        ),
        (&json!(0), &json!(4.99), &json!(0), &json!(60), &json!(60)),
        "{answer}"
    );
    let redeemed = client.post("/api/coupons/redeem", &shipped).await;
    assert_eq!(redeemed.status, StatusCode::CREATED, "{}", redeemed.text);
    assert_eq!(
        (
            redeemed.json()["discount"].clone(),
            redeemed.json()["shippingDiscount"].clone(),
            redeemed.json()["finalAmount"].clone()
        ),
        (json!(0), json!(4.99), json!(60))
    );
    // Once shipped: the merchandise's discount (none), and shipping's beside it.
    crate::helpers::eventually(std::time::Duration::from_secs(5), "the use shipped", || async {
        let row: Option<(bool, bool)> = sqlx::query_as(
            "SELECT discount_applied = 0, shipping_discount = 4.99 FROM coupon_usage WHERE order_id = 'o-ship'",
        )
        .fetch_optional(&db.pool)
        .await
        .unwrap();
        row == Some((true, true))
    })
    .await;
    // Amounts in the currency asked: the option's, never a conversion.
    for (currency, price, discount) in [("EUR", 100, 5), ("USD", 100, 6), ("JPY", 10_000, 800)] {
        let mut body = cart("FIVEOFF", vec![line("1", 1, json!(price))]);
        body["currency"] = json!(currency);
        assert_eq!(client.validate(body).await["discount"], discount, "{currency}");
    }
    let mut gbp = cart("FIVEOFF", vec![line("1", 1, json!(100))]);
    gbp["currency"] = json!("GBP");
    assert_eq!(client.validate(gbp).await["reason"], "CURRENCY_NOT_SUPPORTED");

    // Another SQL client's row: its defaults mean "as before", its cart columns are read the same
    // way, and its change reaches the catalog through the notification.
    insert_coupon(
        &db.pool,
        "SQLSOCKS",
        &[
            ("target", "'items'"),
            ("scope", r#"'{"includeProducts": ["p-s"]}'"#),
            ("min_order_basis", "'eligible'"),
            ("min_order_value", "16"),
        ],
    )
    .await;
    let socks_cart = || cart("SQLSOCKS", vec![shirt("a", 1, 20.0, false), socks.clone()]);
    crate::helpers::eventually(std::time::Duration::from_secs(5), "the SQL coupon served", || async {
        client.validate(socks_cart()).await["reason"] == "MIN_ORDER_VALUE_NOT_MET"
    })
    .await;
    sqlx::query("UPDATE coupons SET min_order_value = 15 WHERE code = 'SQLSOCKS'").execute(&db.pool).await.unwrap();
    crate::helpers::eventually(std::time::Duration::from_secs(5), "the SQL change served", || async {
        client.validate(socks_cart()).await["discount"] == 1.5
    })
    .await;
    // The schema refuses what the service could not serve.
    let refused = sqlx::query("UPDATE coupons SET allocation = 'each' WHERE code = 'SQLSOCKS'").execute(&db.pool).await;
    assert!(refused.is_err(), "allocation each is for fixed amounts only");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_knows_the_decimals_the_service_knows() {
    let db = TestDb::new().await;
    for currency in coupon_engine::domain::currency::Currency::all() {
        let decimals: i32 = sqlx::query_scalar("SELECT coupon_usage_decimals($1)")
            .bind(currency.code())
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(decimals, i32::from(currency.decimals()), "{currency}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cart_body_limit_is_a_setting() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    let app = TestApp::spawn_with(&db.url, &[("COUPON__HTTP__MAX_BODY_BYTES_CART", "20000")]).await;
    let padded = |bytes: usize| {
        let mut body = cart("TEN", vec![line("1", 1, json!(10))]);
        body["items"][0]["productId"] = json!("p");
        body["pad"] = json!("x".repeat(bytes));
        body
    };
    let under = app.client.post("/api/coupons/validate", &padded(18_000)).await;
    assert_eq!(under.status, StatusCode::OK, "{}", under.text);
    let over = app.client.post("/api/coupons/validate", &padded(21_000)).await;
    assert_eq!(over.status, StatusCode::PAYLOAD_TOO_LARGE);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_reads_its_allocation_back_and_waits_while_postgres_is_away() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    let proxy = crate::helpers::PgProxy::start(&db.url).await;
    // Kept in memory for a second: later replays read their allocation from PostgreSQL.
    let app = TestApp::spawn_with(&proxy.url, &[("COUPON__IDEMPOTENCY__CART_CACHE_SECS", "1")]).await;
    let mut body = cart("TEN", vec![line("1", 3, json!(3.33)), line("2", 1, json!(0.01))]);
    body["orderId"] = json!("o-1");
    let taken = app.client.post("/api/coupons/redeem", &body).await;
    assert_eq!(taken.status, StatusCode::CREATED, "{}", taken.text);
    crate::helpers::eventually(std::time::Duration::from_secs(5), "the use shipped", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM coupon_usage").fetch_one(&db.pool).await.unwrap() == 1
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let again = app.client.post("/api/coupons/redeem", &body).await;
    assert_eq!((again.status, again.json()), (StatusCode::OK, taken.json()));
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    proxy.cut().await;
    let away = app.client.post("/api/coupons/redeem", &body).await;
    assert_eq!(
        (away.status, away.json()["reason"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("QUOTA_UNAVAILABLE"))
    );
    proxy.restore().await;
    crate::helpers::eventually(std::time::Duration::from_secs(10), "PostgreSQL back", || async {
        app.client.post("/api/coupons/redeem", &body).await.status == StatusCode::OK
    })
    .await;
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_of_a_cart_is_released_and_its_budget_given_back() {
    let db = TestDb::new().await;
    sqlx::query("INSERT INTO campaigns (name, budget) VALUES ('ship', 10)").execute(&db.pool).await.unwrap();
    insert_coupon(
        &db.pool,
        "SHIPFREE",
        &[("discount_type", "'free_shipping'"), ("discount_value", "0"), ("campaign_id", "(SELECT id FROM campaigns)")],
    )
    .await;
    // The budget's charge is what is checked here, not a caller's share of it.
    let app = TestApp::spawn_with(&db.url, &[("COUPON__PROTECTION__HOLD_SHARE_PERCENT", "0")]).await;
    let body = |order: &str| {
        let mut body = cart("SHIPFREE", vec![line("1", 1, json!(20))]);
        body["shipping"] = json!({"amount": 6});
        body["orderId"] = json!(order);
        body
    };
    // The budget is charged with shipping's 6.00: one hold fits in 10.00, a second does not.
    let held = app.client.post("/api/coupons/hold", &body("o-1")).await;
    assert_eq!(
        (held.status, held.json()["shippingDiscount"].clone()),
        (StatusCode::CREATED, json!(6)),
        "{}",
        held.text
    );
    let second = app.client.post("/api/coupons/hold", &body("o-2")).await;
    assert_eq!(second.json()["reason"], "CAMPAIGN_BUDGET_EXHAUSTED", "{}", second.text);
    let released = app.client.post("/api/coupons/release", &json!({"code": "SHIPFREE", "orderId": "o-1"})).await;
    assert_eq!(released.status, StatusCode::OK, "{}", released.text);
    let again = app.client.post("/api/coupons/hold", &body("o-2")).await;
    assert_eq!(again.status, StatusCode::CREATED, "the release gave the 6.00 back: {}", again.text);
    let confirmed = app.client.post("/api/coupons/redeem", &body("o-2")).await;
    assert_eq!((confirmed.status, confirmed.json()["hold"].clone()), (StatusCode::CREATED, json!("confirmed")));
    assert_eq!(confirmed.json()["grandTotal"], 20, "{}", confirmed.text);
    app.stop().await.unwrap();
}
