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
