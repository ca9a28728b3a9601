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

/// §10's example coupons: SHIRTS20 (20 % off the shirts), WELCOME10 (10 % off the order),
/// FREESHIP, each combining with every class.
async fn contract_coupons(db: &TestDb) {
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
}

/// API.md §10's worked example, byte for byte: SHIRTS20 on the shirts, WELCOME10 on what is
/// left of the order, FREESHIP; the codes named in any order give the same answer, listed in
/// the order they applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_example_through_http() {
    let db = TestDb::new().await;
    contract_coupons(&db).await;
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

/// The §9 example cart, for the sets below.
fn cart_body(codes: Value, user: &str, order: &str) -> Value {
    json!({"codes": codes, "userId": user, "orderId": order,
      "items": [
        {"lineId": "1", "productId": "p-100", "categoryIds": ["shirts"], "quantity": 3, "unitPrice": 20.00},
        {"lineId": "2", "productId": "p-200", "categoryIds": ["socks"], "quantity": 1, "unitPrice": 15.00}],
      "shipping": {"amount": 4.99}})
}

/// A set redeemed is one answer with a use per code, journalled as one record and shipped
/// with one group id; the same set again answers the same (after a restart too); another
/// set, another user, other items or one of its codes alone are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_is_redeemed_whole_and_replayed_whole() {
    let db = TestDb::new().await;
    contract_coupons(&db).await;
    let dir = crate::helpers::temp_dir("coupon-engine-sets-");
    let app = TestApp::spawn_on(dir.path(), &db.url, &[]).await;
    let client = &app.client;
    let body = cart_body(json!(["SHIRTS20", "WELCOME10", "FREESHIP"]), "u-1", "ord-1");
    let first = client.post("/api/coupons/redeem", &body).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let answer = first.json();
    assert_eq!(
        (
            &answer["redeemed"],
            &answer["orderId"],
            &answer["discount"],
            &answer["shippingDiscount"],
            &answer["grandTotal"]
        ),
        (&json!(true), &json!("ord-1"), &json!(18.3), &json!(4.99), &json!(56.7)),
        "{answer}"
    );
    let uses: Vec<(Value, Value, Value)> = answer["redemptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["code"].clone(), r["discount"].clone(), r["shippingDiscount"].clone()))
        .collect();
    assert_eq!(
        uses,
        [
            (json!("SHIRTS20"), json!(12), json!(0)),
            (json!("WELCOME10"), json!(6.3), json!(0)),
            (json!("FREESHIP"), json!(0), json!(4.99))
        ]
    );
    assert_eq!(answer["lines"][0]["units"], json!([{"count": 3, "discount": 5.6}]));
    assert_eq!((&answer["rejected"], &answer["skipped"]), (&json!([]), &json!([])));

    // The same set, in another order of codes: the same answer, 200.
    let again = client
        .post("/api/coupons/redeem", &cart_body(json!(["FREESHIP", "SHIRTS20", "WELCOME10"]), "u-1", "ord-1"))
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    for field in ["redemptions", "discount", "grandTotal", "lines"] {
        assert_eq!(again.json()[field], answer[field], "{field}");
    }
    // Another set, another user, other items, one code alone: refused, nothing taken.
    let mut other_items = body.clone();
    other_items["items"][0]["quantity"] = json!(2);
    for (refused, reason) in [
        (cart_body(json!(["SHIRTS20", "WELCOME10"]), "u-1", "ord-1"), "IDEMPOTENCY_MISMATCH"),
        (cart_body(json!(["SHIRTS20", "WELCOME10", "FREESHIP"]), "u-2", "ord-1"), "ORDER_ALREADY_REDEEMED"),
        (other_items, "IDEMPOTENCY_MISMATCH"),
        (json!({"code": "WELCOME10", "userId": "u-1", "orderId": "ord-1", "orderValue": 75}), "IDEMPOTENCY_MISMATCH"),
    ] {
        let response = client.post("/api/coupons/redeem", &refused).await;
        assert_eq!(
            (response.status, response.json()["reason"].clone()),
            (StatusCode::CONFLICT, json!(reason)),
            "{refused}"
        );
    }

    // Shipped in one transaction: three rows, one group id, every code's fate.
    eventually(Duration::from_secs(10), "the set shipped", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM coupon_usage WHERE order_id = 'ord-1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        n == 3
    })
    .await;
    let groups: Vec<(Option<uuid::Uuid>, String)> =
        sqlx::query_as("SELECT group_id, group_codes::text FROM coupon_usage WHERE order_id = 'ord-1' GROUP BY 1, 2")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert!(groups[0].0.is_some() && groups[0].1.contains("FREESHIP"), "{groups:?}");

    // After a restart the set is read back from PostgreSQL: the replay answers the same.
    app.stop().await.unwrap();
    let app = TestApp::spawn_on(dir.path(), &db.url, &[]).await;
    let replay = app.client.post("/api/coupons/redeem", &body).await;
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.text);
    for field in ["redemptions", "discount", "grandTotal", "lines", "rejected", "skipped"] {
        assert_eq!(replay.json()[field], answer[field], "{field}");
    }
    let alone = json!({"code": "FREESHIP", "userId": "u-1", "orderId": "ord-1", "orderValue": 75});
    assert_eq!(app.client.post("/api/coupons/redeem", &alone).await.status, StatusCode::CONFLICT);
    app.stop().await.unwrap();
}

/// `all`: a code refused while taking (its limit ran out) takes nothing of the others;
/// `partial`: the others are taken without it. Releases are whole too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_or_nothing_partial_and_whole_releases() {
    let db = TestDb::new().await;
    insert_coupon(
        &db.pool,
        "FIVE",
        &[("discount_type", "'fixed'"), ("discount_value", "5"), ("usage_limit", "2"), ALL_CLASSES],
    )
    .await;
    insert_coupon(
        &db.pool,
        "ONCE",
        &[("discount_type", "'fixed'"), ("discount_value", "1"), ("usage_limit", "1"), ALL_CLASSES],
    )
    .await;
    let app = TestApp::spawn(&db).await;
    let client = &app.client;
    let set = |order: &str, mode: &str| json!({"codes": ["FIVE", "ONCE"], "mode": mode, "userId": "u-1", "orderId": order, "orderValue": 100});
    let first = client.post("/api/coupons/redeem", &set("o-1", "all")).await;
    assert_eq!((first.status, first.json()["discount"].clone()), (StatusCode::CREATED, json!(6)), "{}", first.text);
    // ONCE is used up: `all` refuses the set and FIVE keeps its last use.
    let refused = client.post("/api/coupons/redeem", &set("o-2", "all")).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.text);
    assert_eq!(
        refused.json(),
        json!({"redeemed": false, "rejected": [{"code": "ONCE", "reason": "USAGE_LIMIT_REACHED"}], "skipped": []})
    );
    let five = client.validate(json!({"code": "FIVE", "userId": "u-9", "orderValue": 100})).await;
    assert_eq!(five["valid"], true, "FIVE kept its use: {five}");
    // `partial`: FIVE alone.
    let partial = client.post("/api/coupons/redeem", &set("o-3", "partial")).await;
    assert_eq!(partial.status, StatusCode::CREATED, "{}", partial.text);
    assert_eq!(
        (&partial.json()["discount"], &partial.json()["rejected"]),
        (&json!(5), &json!([{"code": "ONCE", "reason": "USAGE_LIMIT_REACHED"}]))
    );
    assert_eq!(partial.json()["redemptions"].as_array().unwrap().len(), 1);

    // A release naming a code the order never took changes nothing.
    let release = |body: Value| async move { client.post("/api/coupons/release", &body).await };
    let missing = release(json!({"orderId": "o-1", "codes": ["FIVE", "NOPE"]})).await;
    assert_eq!(
        (missing.status, missing.json()),
        (StatusCode::NOT_FOUND, json!({"released": false, "reason": "REDEMPTION_NOT_FOUND", "codes": ["NOPE"]}))
    );
    let still = client.validate(json!({"code": "ONCE", "userId": "u-9", "orderValue": 100})).await;
    assert_eq!(still["reason"], "USAGE_LIMIT_REACHED");
    // The whole set, then again: 200 both times; ONCE's use is back.
    let whole = release(json!({"orderId": "o-1", "allCodes": true})).await;
    assert_eq!((whole.status, whole.json()), (StatusCode::OK, json!({"released": true, "codes": ["FIVE", "ONCE"]})));
    let repeat = release(json!({"orderId": "o-1", "codes": ["ONCE", "FIVE"]})).await;
    assert_eq!(repeat.status, StatusCode::OK, "{}", repeat.text);
    let back = client.validate(json!({"code": "ONCE", "userId": "u-9", "orderValue": 100})).await;
    assert_eq!(back["valid"], true, "{back}");
    // A released redemption keeps its order spent, as for one code.
    let spent = client.post("/api/coupons/redeem", &set("o-1", "all")).await;
    assert_eq!((spent.status, spent.json()["reason"].clone()), (StatusCode::CONFLICT, json!("ORDER_ALREADY_REDEEMED")));
    // The release reached PostgreSQL as one record.
    eventually(Duration::from_secs(10), "the release shipped", || async {
        let live: i64 =
            sqlx::query_scalar("SELECT count(*) FROM coupon_usage WHERE order_id = 'o-1' AND released_at IS NULL")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        live == 0
    })
    .await;
    app.stop().await.unwrap();
}

/// A held set is confirmed whole by the redeem of the same set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_set_is_confirmed_whole() {
    let db = TestDb::new().await;
    contract_coupons(&db).await;
    let app = TestApp::spawn(&db).await;
    let client = &app.client;
    let mut body = cart_body(json!(["SHIRTS20", "FREESHIP"]), "u-1", "ord-h");
    body["ttlSeconds"] = json!(600);
    let held = client.post("/api/coupons/hold", &body).await;
    assert_eq!(held.status, StatusCode::CREATED, "{}", held.text);
    let held = held.json();
    assert!(held["holdGroupId"].is_string() && held["expiresAt"].is_string(), "{held}");
    assert_eq!(held["holds"].as_array().unwrap().len(), 2);
    let replayed = client.post("/api/coupons/hold", &body).await;
    assert_eq!((replayed.status, &replayed.json()["holdGroupId"]), (StatusCode::OK, &held["holdGroupId"]));
    body.as_object_mut().unwrap().remove("ttlSeconds");
    let confirmed = client.post("/api/coupons/redeem", &body).await;
    assert_eq!(confirmed.status, StatusCode::CREATED, "{}", confirmed.text);
    assert_eq!((&confirmed.json()["hold"], &confirmed.json()["discount"]), (&json!("confirmed"), &json!(12)));
    let ids = |answer: &Value, list: &str, id: &str| -> Vec<Value> {
        answer[list].as_array().unwrap().iter().map(|u| u[id].clone()).collect()
    };
    assert_eq!(ids(&confirmed.json(), "redemptions", "redemptionId"), ids(&held, "holds", "holdId"));
    eventually(Duration::from_secs(10), "the confirmation shipped", || async {
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM coupon_usage WHERE order_id = 'ord-h' AND hold_expires_at IS NULL AND released_at IS NULL",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        held == 2
    })
    .await;
    app.stop().await.unwrap();
}

/// Many sets racing for a coupon with 10 uses: exactly 10 sets are taken, each whole; the
/// others take nothing. The same set sent many times at once is taken once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_sets_never_take_part_of_a_set() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[("usage_limit", "10"), ALL_CLASSES]).await;
    insert_coupon(&db.pool, "FREE", &[("discount_type", "'fixed'"), ("discount_value", "1"), ALL_CLASSES]).await;
    let app = TestApp::spawn(&db).await;
    let sets = (0..40).map(|n| {
        let client = app.client.clone();
        async move {
            let body = json!({"codes": ["TEN", "FREE"], "userId": format!("u-{n}"), "orderId": format!("o-{n}"), "orderValue": 50});
            client.post("/api/coupons/redeem", &body).await.status
        }
    });
    let statuses = futures_util::future::join_all(sets).await;
    let taken = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::UNPROCESSABLE_ENTITY).count();
    assert_eq!((taken, refused), (10, 30), "{statuses:?}");
    let same = (0..10).map(|_| {
        let client = app.client.clone();
        async move {
            let body = json!({"codes": ["FREE"], "userId": "u-x", "orderId": "o-same", "orderValue": 50});
            client.post("/api/coupons/redeem", &body).await.status
        }
    });
    let mut statuses = futures_util::future::join_all(same).await;
    statuses.sort();
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CREATED).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == StatusCode::CREATED || *s == StatusCode::OK), "{statuses:?}");
    eventually(Duration::from_secs(10), "every use shipped", || async {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT c.code, count(*) FROM coupon_usage u JOIN coupons c ON c.id = u.coupon_id \
             WHERE u.order_id LIKE 'o-%' AND u.order_id <> 'o-same' GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        rows == [("FREE".to_owned(), 10), ("TEN".to_owned(), 10)]
    })
    .await;
    let halves: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT group_id FROM coupon_usage WHERE group_id IS NOT NULL \
         GROUP BY group_id HAVING count(*) <> 2 AND bool_and(order_id <> 'o-same')) g",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(halves, 0, "no set shipped in part");
    app.stop().await.unwrap();
}

/// Two bulk codes of one batch are one coupon: an order takes it once, so the second code of a
/// set is refused `ORDER_ALREADY_REDEEMED`, by validate and by redeem alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_codes_of_one_coupon_are_not_one_set() {
    let db = TestDb::new().await;
    let app = TestApp::spawn_with(&db.url, &[("ADMIN_TOKEN", TOKEN)]).await;
    let client = &app.client;
    let admin = |path: &'static str, body: Value| async move {
        client
            .request_with(Method::POST, path, body.to_string(), &[("authorization", &format!("Bearer {TOKEN}"))])
            .await
    };
    let created = admin("/admin/campaigns", json!({"name": "pairs"})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let imported = admin(
        "/admin/campaigns/pairs/batches",
        json!({"codes": ["PAIR-1", "PAIR-2"], "discountType": "fixed", "discountValue": 5,
               "combinesWith": ["item", "order", "shipping"]}),
    )
    .await;
    assert_eq!(imported.status, StatusCode::CREATED, "{}", imported.text);
    let body =
        json!({"codes": ["PAIR-1", "PAIR-2"], "userId": "u-1", "orderId": "o-1", "orderValue": 50, "mode": "partial"});
    let judged = client.validate(body.clone()).await;
    assert_eq!(
        (&judged["valid"], &judged["discount"], &judged["rejected"]),
        (&json!(true), &json!(5), &json!([{"code": "PAIR-2", "reason": "ORDER_ALREADY_REDEEMED"}])),
        "{judged}"
    );
    let mut all = body.clone();
    all["mode"] = json!("all");
    let refused = client.post("/api/coupons/redeem", &all).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.text);
    let partial = client.post("/api/coupons/redeem", &body).await;
    assert_eq!(
        (partial.status, partial.json()["redemptions"].as_array().map(Vec::len)),
        (StatusCode::CREATED, Some(1)),
        "{}",
        partial.text
    );
    app.stop().await.unwrap();
}

/// A held set left alone expires by itself, for real: both holds at their deadline, in one
/// record, the limited code's use back, both rows released in PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_set_expires_whole_for_real() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "ONCE", &[("usage_limit", "1"), ALL_CLASSES]).await;
    insert_coupon(&db.pool, "ALSO", &[("discount_type", "'fixed'"), ("discount_value", "1"), ALL_CLASSES]).await;
    let app = TestApp::spawn(&db).await;
    let client = &app.client;
    let body = json!({"codes": ["ONCE", "ALSO"], "userId": "u-1", "orderId": "o-x", "orderValue": 50, "ttlSeconds": 1});
    let held = client.post("/api/coupons/hold", &body).await;
    assert_eq!(held.status, StatusCode::CREATED, "{}", held.text);
    let probe = json!({"code": "ONCE", "userId": "u-2", "orderValue": 50});
    assert_eq!(client.validate(probe.clone()).await["reason"], "USAGE_LIMIT_REACHED");
    eventually(Duration::from_secs(5), "the set's holds expired and shipped", || async {
        let released: i64 =
            sqlx::query_scalar("SELECT count(*) FROM coupon_usage WHERE order_id = 'o-x' AND released_at IS NOT NULL")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        released == 2
    })
    .await;
    assert_eq!(client.validate(probe).await["valid"], true, "ONCE's use is back");
    assert_eq!(client.metric(r#"coupon_holds_total{outcome="expired"}"#).await, 2.0);
    app.stop().await.unwrap();
}
