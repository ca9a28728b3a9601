//! Several codes on one order (API.md §10): the coupon fields that decide how codes stack.

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestDb, eventually, insert_coupon};

const TOKEN: &str = "stacking-admin-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_and_combines_with_from_the_admin_api_and_from_sql() {
    let db = TestDb::new().await;
    let app = TestApp::spawn_with(&db.url, &[("ADMIN_TOKEN", TOKEN)]).await;
    let client = &app.client;
    let admin = |method: Method, path: String, body: Value| async move {
        client.request_with(method, &path, body.to_string(), &[("authorization", &format!("Bearer {TOKEN}"))]).await
    };
    let created = admin(
        Method::POST,
        "/admin/coupons".into(),
        json!({"code": "WELCOME10", "type": "time_specific", "discountType": "percentage", "discountValue": 10}),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(
        (&created.json()["priority"], &created.json()["combinesWith"]),
        (&json!(0), &json!([])),
        "alone by default"
    );
    let changed = admin(
        Method::PATCH,
        "/admin/coupons/WELCOME10".into(),
        json!({"priority": 5, "combinesWith": ["shipping", "item"]}),
    )
    .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    assert_eq!(
        (&changed.json()["priority"], &changed.json()["combinesWith"]),
        (&json!(5), &json!(["item", "shipping"])),
        "in class order"
    );
    let stored: (i32, Vec<String>) =
        sqlx::query_as("SELECT priority, combines_with FROM coupons WHERE code = 'WELCOME10'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored, (5, vec!["item".to_owned(), "shipping".to_owned()]));
    for (body, field) in
        [(json!({"combinesWith": ["orders"]}), "combinesWith"), (json!({"priority": 2_000_000}), "priority")]
    {
        let refused = admin(Method::PATCH, "/admin/coupons/WELCOME10".into(), body.clone()).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(refused.json()["error"]["field"], field, "{body}");
    }

    // Another SQL client's row is read the same way, and the schema refuses what the service
    // could not read.
    insert_coupon(&db.pool, "SQLSTACK", &[("priority", "-3"), ("combines_with", "'{order}'")]).await;
    eventually(Duration::from_secs(5), "the SQL coupon in the catalog", || async {
        let view = admin(Method::GET, "/admin/coupons/SQLSTACK".into(), Value::Null).await;
        view.status == StatusCode::OK && view.json()["cached"] == true
    })
    .await;
    let view = admin(Method::GET, "/admin/coupons/SQLSTACK".into(), Value::Null).await.json();
    assert_eq!((&view["priority"], &view["combinesWith"]), (&json!(-3), &json!(["order"])));
    for change in [
        "UPDATE coupons SET combines_with = '{everything}' WHERE code = 'SQLSTACK'",
        "UPDATE coupons SET combines_with = '{order,NULL}' WHERE code = 'SQLSTACK'",
        "UPDATE coupons SET priority = 1000001 WHERE code = 'SQLSTACK'",
    ] {
        assert!(sqlx::query(change).execute(&db.pool).await.is_err(), "{change}");
    }
    app.stop().await.unwrap();
}

/// Every class combines with every class.
const ALL_CLASSES: (&str, &str) = ("combines_with", "'{item,order,shipping}'");

/// API.md §10's worked example, byte for byte: SHIRTS20 on the shirts, WELCOME10 on what is
/// left of the order, FREESHIP; the codes named in any order give the same answer, listed in
/// the order they applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_example_through_http() {
    let db = TestDb::new().await;
    insert_coupon(
        &db.pool,
        "SHIRTS20",
        &[
            ("discount_value", "20"),
            ("target", "'items'"),
            ("scope", r#"'{"includeCategories": ["shirts"]}'"#),
            ALL_CLASSES,
        ],
    )
    .await;
    insert_coupon(&db.pool, "WELCOME10", &[ALL_CLASSES]).await;
    insert_coupon(&db.pool, "FREESHIP", &[("discount_type", "'free_shipping'"), ("discount_value", "0"), ALL_CLASSES])
        .await;
    let app = TestApp::spawn(&db).await;
    let body = |codes: Value| {
        json!({"codes": codes, "userId": "user_0000001", "orderId": "ord-1", "currency": "EUR",
          "items": [
            {"lineId": "1", "productId": "p-100", "variantId": "p-100-M", "categoryIds": ["shirts"],
             "quantity": 3, "unitPrice": 20.00, "onSale": false, "discountable": true},
            {"lineId": "2", "productId": "p-200", "categoryIds": ["socks"], "quantity": 1, "unitPrice": 15.00}],
          "shipping": {"amount": 4.99, "methodId": "std"}})
    };
    // 20 % of the shirts' 60.00 = 12.00 (4.00 a shirt); 10 % of the 63.00 left = 6.30, split
    // 4.80 (48.00 of shirts) and 1.50 (the socks), 1.60 a shirt; the shipping's 4.99.
    let expected = concat!(
        r#"{"valid":true,"codes":["SHIRTS20","WELCOME10","FREESHIP"],"currency":"EUR","discount":18.3,"#,
        r#""finalAmount":56.7,"shippingDiscount":4.99,"shippingTotal":0,"grandTotal":56.7,"#,
        r#""applied":[{"code":"SHIRTS20","class":"item","discount":12,"shippingDiscount":0},"#,
        r#"{"code":"WELCOME10","class":"order","discount":6.3,"shippingDiscount":0},"#,
        r#"{"code":"FREESHIP","class":"shipping","discount":0,"shippingDiscount":4.99}],"rejected":[],"skipped":[],"#,
        r#""lines":[{"lineId":"1","subtotal":60,"discount":16.8,"total":43.2,"units":[{"count":3,"discount":5.6}],"#,
        r#""allocations":[{"code":"SHIRTS20","discount":12},{"code":"WELCOME10","discount":4.8}]},"#,
        r#"{"lineId":"2","subtotal":15,"discount":1.5,"total":13.5,"units":[{"count":1,"discount":1.5}],"#,
        r#""allocations":[{"code":"WELCOME10","discount":1.5}]}]}"#
    );
    let answer = app.client.post("/api/coupons/validate", &body(json!(["SHIRTS20", "WELCOME10", "FREESHIP"]))).await;
    assert_eq!((answer.status, answer.text.as_str()), (StatusCode::OK, expected));
    let shuffled = app.client.validate(body(json!(["freeship", "welcome10", "shirts20"]))).await;
    assert_eq!(shuffled["codes"], json!(["FREESHIP", "WELCOME10", "SHIRTS20"]));
    let expected: Value = serde_json::from_str(expected).unwrap();
    for field in ["discount", "grandTotal", "applied", "lines"] {
        assert_eq!(shuffled[field], expected[field], "{field}");
    }
    app.stop().await.unwrap();
}

/// Which codes are taken together, and what `mode`, `select`, priorities, the combined cap
/// and a code left with nothing to take make of them; amounts worked out by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_combine_by_class_and_mode_select_and_the_cap_decide_the_rest() {
    let db = TestDb::new().await;
    // ALONE10 combines with nothing (the default); the others with every class.
    insert_coupon(&db.pool, "ALONE10", &[]).await;
    insert_coupon(&db.pool, "FIVE", &[("discount_type", "'fixed'"), ("discount_value", "5"), ALL_CLASSES]).await;
    insert_coupon(&db.pool, "TWENTY", &[("discount_type", "'fixed'"), ("discount_value", "20"), ALL_CLASSES]).await;
    let app = TestApp::spawn(&db).await;
    let client = &app.client;
    let stack = |codes: Value, order_value: f64, extra: Value| {
        let mut body = json!({"codes": codes, "userId": "u-1", "orderValue": order_value});
        for (key, value) in extra.as_object().into_iter().flatten() {
            body[key] = value.clone();
        }
        client.validate(body)
    };
    let summary = |answer: &Value| {
        let list = |key: &str, field: &str| -> Vec<String> {
            answer[key].as_array().unwrap().iter().map(|c| format!("{}:{}", c["code"], c[field])).collect()
        };
        (answer["valid"].clone(), answer["discount"].clone(), list("applied", "discount"), list("rejected", "reason"))
    };
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    // FIVE first by position; ALONE10 does not combine with it. `all`: nothing applies.
    let all = stack(json!(["FIVE", "ALONE10"]), 100.0, json!({})).await;
    assert_eq!(summary(&all), (json!(false), json!(0), vec![], strings(&[r#""ALONE10":"NOT_COMBINABLE""#])), "{all}");
    assert_eq!((&all["finalAmount"], &all["currency"], all.get("lines")), (&json!(100), &json!("EUR"), None));
    // `partial`: FIVE applies alone.
    let partial = stack(json!(["FIVE", "ALONE10"]), 100.0, json!({"mode": "partial"})).await;
    assert_eq!(
        summary(&partial),
        (json!(true), json!(5), strings(&[r#""FIVE":5"#]), strings(&[r#""ALONE10":"NOT_COMBINABLE""#]))
    );
    // `best`: ALONE10's 10.00 beats FIVE's 5.00.
    let best = stack(json!(["FIVE", "ALONE10"]), 100.0, json!({"mode": "partial", "select": "best"})).await;
    assert_eq!(
        summary(&best),
        (json!(true), json!(10), strings(&[r#""ALONE10":10"#]), strings(&[r#""FIVE":"NOT_COMBINABLE""#]))
    );
    // A priority puts ALONE10 first whatever its position.
    sqlx::query("UPDATE coupons SET priority = 1 WHERE code = 'ALONE10'").execute(&db.pool).await.unwrap();
    eventually(Duration::from_secs(5), "the priority served", || async {
        stack(json!(["FIVE", "ALONE10"]), 100.0, json!({"mode": "partial"})).await["discount"] == 10
    })
    .await;
    // A code refused alone is rejected with its own reason.
    let unknown = stack(json!(["NOPE", "FIVE"]), 100.0, json!({})).await;
    assert_eq!(summary(&unknown), (json!(false), json!(0), vec![], strings(&[r#""NOPE":"COUPON_NOT_FOUND""#])));
    let unknown = stack(json!(["NOPE", "FIVE"]), 100.0, json!({"mode": "partial"})).await;
    assert_eq!(summary(&unknown).1, json!(5));
    // On 15.00, TWENTY takes all 15.00 and leaves FIVE nothing: skipped, and the stack valid.
    let spent = stack(json!(["TWENTY", "FIVE"]), 15.0, json!({})).await;
    assert_eq!(summary(&spent), (json!(true), json!(15), strings(&[r#""TWENTY":15"#]), vec![]));
    assert_eq!(
        (&spent["skipped"], &spent["finalAmount"]),
        (&json!([{"code": "FIVE", "reason": "NO_EFFECT"}]), &json!(0))
    );
    // The combined cap: 5.00 + 20.00 = 25.00 cut to 12.00 from the last applied, TWENTY: 7.00.
    let capped = stack(json!(["FIVE", "TWENTY"]), 100.0, json!({"maxTotalDiscount": 12})).await;
    assert_eq!(summary(&capped), (json!(true), json!(12), strings(&[r#""FIVE":5"#, r#""TWENTY":7"#]), vec![]));
    // Cut to 5.00, TWENTY has nothing left: skipped.
    let cut = stack(json!(["FIVE", "TWENTY"]), 100.0, json!({"maxTotalDiscount": 5})).await;
    assert_eq!(summary(&cut), (json!(true), json!(5), strings(&[r#""FIVE":5"#]), vec![]));
    assert_eq!(cut["skipped"], json!([{"code": "TWENTY", "reason": "NO_EFFECT"}]));

    // Malformed lists are refused before any rule runs.
    let six = client
        .post(
            "/api/coupons/validate",
            &json!({"codes": ["A", "B", "C", "D", "E", "F"], "userId": "u-1", "orderValue": 1}),
        )
        .await;
    assert_eq!((six.status, six.json()["error"]["code"].clone()), (StatusCode::BAD_REQUEST, json!("TOO_MANY_CODES")));
    let twice =
        client.post("/api/coupons/validate", &json!({"codes": ["five", "FIVE"], "userId": "u", "orderValue": 1})).await;
    assert_eq!(
        (twice.status, twice.json()["error"]["code"].clone(), twice.json()["error"]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("INVALID_FIELD"), json!("codes"))
    );

    // One log row per code, with its own outcome; the stack's size is measured.
    eventually(Duration::from_secs(10), "the stacks' rows", || async {
        let reasons: Vec<Option<String>> = sqlx::query_scalar(
            "SELECT validation_reason FROM validation_logs WHERE coupon_code IN ('FIVE', 'TWENTY') \
             AND validation_reason IS NOT NULL",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        reasons.iter().flatten().filter(|r| *r == "NO_EFFECT").count() == 2
            && reasons.iter().flatten().any(|r| r == "NOT_COMBINABLE")
    })
    .await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM validation_logs").fetch_one(&db.pool).await.unwrap();
    let requests = client.metric("coupon_stack_size_count").await;
    assert_eq!(rows as f64, 2.0 * requests, "two codes a stack, one row each");
    assert!(client.metric(r#"coupon_validations_total{outcome="NO_EFFECT"}"#).await >= 2.0);
    app.stop().await.unwrap();
}
