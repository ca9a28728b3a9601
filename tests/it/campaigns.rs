//! Campaigns and bulk codes end to end: the admin routes, shared caps and budgets under
//! hundreds of concurrent buyers spread over many codes, batches reaching another instance
//! without a reload, assign-next, the CSV export, and batches that fail.

use std::collections::HashSet;
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{TestApp, TestClient, TestDb, TestResponse, eventually, insert_coupon, redeem_body};

const TOKEN: &str = "campaign-admin-token";

async fn admin(client: &TestClient, method: Method, path: &str, body: Option<Value>) -> TestResponse {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    client.request_with(method, path, body, &[("authorization", &format!("Bearer {TOKEN}"))]).await
}

async fn spawn(db: &TestDb) -> TestApp {
    TestApp::spawn_with(&db.url, &[("ADMIN_TOKEN", TOKEN)]).await
}

/// The codes of a batch, in position order.
async fn codes_of(pool: &PgPool, batch: i64) -> Vec<String> {
    sqlx::query_scalar("SELECT code FROM batch_codes WHERE batch_id = $1 ORDER BY position")
        .bind(batch)
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn create_campaign(client: &TestClient, body: Value) -> Value {
    let created = admin(client, Method::POST, "/admin/campaigns", Some(body)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    created.json()
}

/// Generates a batch that finishes at once (201) and returns its id.
async fn generate(client: &TestClient, campaign: &str, body: Value) -> i64 {
    let path = format!("/admin/campaigns/{campaign}/batches");
    let created = admin(client, Method::POST, &path, Some(body)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let created = created.json();
    assert_eq!((created["status"].clone(), created["cached"].clone()), (json!("done"), json!(true)), "{created}");
    created["batchId"].as_i64().unwrap()
}

/// A batch some instance began and never finished (no lock holds it): its id.
async fn insert_running_batch(pool: &PgPool, campaign: i64) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO code_batches (campaign_id, kind, prefix, length, requested) VALUES ($1, 'generated', 'O-', 8, 10) RETURNING id",
    )
    .bind(campaign)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_batches_exports_and_assignments_end_to_end() {
    let db = TestDb::new().await;
    let app = spawn(&db).await;
    let client = &app.client;

    let created = create_campaign(client, json!({"name": "Black Friday", "usageLimit": 100, "budget": 500})).await;
    assert_eq!(
        (created["used"].clone(), created["remainingUses"].clone(), created["remainingBudget"].clone()),
        (json!(0), json!(100), json!(500))
    );
    let again = admin(client, Method::POST, "/admin/campaigns", Some(json!({"name": "Black Friday"}))).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    for (body, field) in [
        (json!({"name": "x", "budget": -1}), "budget"),
        (json!({"name": "x", "validFrom": "2027-01-02T00:00:00Z", "validUntil": "2027-01-01T00:00:00Z"}), "validUntil"),
        (json!({"budget": 5}), "name"),
    ] {
        let refused = admin(client, Method::POST, "/admin/campaigns", Some(body.clone())).await;
        assert_eq!(
            (refused.status, refused.json()["error"]["field"].clone()),
            (StatusCode::BAD_REQUEST, json!(field)),
            "{body}"
        );
    }
    let path = "/admin/campaigns/Black%20Friday";
    assert_eq!(admin(client, Method::GET, "/admin/campaigns/Nope", None).await.status, StatusCode::NOT_FOUND);

    // Generated codes: the prefix, the length, the alphabet; usable at once.
    let batch = generate(
        client,
        "Black%20Friday",
        json!({"count": 2000, "prefix": "bf26-", "length": 9, "discountType": "fixed", "discountValue": 7}),
    )
    .await;
    let codes = codes_of(&db.pool, batch).await;
    assert_eq!(codes.len(), 2000);
    assert_eq!(codes.iter().collect::<HashSet<_>>().len(), 2000, "distinct");
    for code in &codes {
        assert!(code.len() == 14 && code.starts_with("BF26-"), "{code}");
        assert!(code[5..].bytes().all(|b| b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ".contains(&b)), "{code}");
    }
    let valid = client.validate(json!({"code": codes[0].to_lowercase(), "userId": "u1", "orderValue": 100})).await;
    assert_eq!((valid["valid"].clone(), valid["discount"].clone()), (json!(true), json!(7)));
    // The batch's rule is reached only through its codes.
    let rule_code: String = sqlx::query_scalar("SELECT code FROM coupons WHERE batch_id = $1")
        .bind(batch)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        client.validate(json!({"code": rule_code, "userId": "u1", "orderValue": 100})).await["reason"],
        json!("COUPON_NOT_FOUND")
    );

    // A use of a single-use code, counted by the campaign.
    assert_eq!(
        client.post("/api/coupons/redeem", &redeem_body(&codes[0], "u1", "o-1")).await.status,
        StatusCode::CREATED
    );
    let second = client.post("/api/coupons/redeem", &redeem_body(&codes[0], "u2", "o-2")).await;
    assert_eq!(
        (second.status, second.json()["reason"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("USAGE_LIMIT_REACHED"))
    );
    let read = admin(client, Method::GET, path, None).await.json();
    assert_eq!(
        (read["used"].clone(), read["spent"].clone(), read["remainingBudget"].clone()),
        (json!(1), json!(7), json!(493))
    );

    // The export: streamed CSV from memory.
    let all = admin(client, Method::GET, &format!("{path}/codes"), None).await;
    assert_eq!(all.status, StatusCode::OK);
    assert!(all.headers["content-type"].to_str().unwrap().starts_with("text/csv"));
    let lines: Vec<&str> = all.text.lines().collect();
    assert_eq!((lines[0], lines.len()), ("code,state,uses", 2001));
    let used = admin(client, Method::GET, &format!("{path}/codes?state=used"), None).await.text;
    assert_eq!(used, format!("code,state,uses\n{},used,1\n", codes[0]));
    let unused = admin(client, Method::GET, &format!("{path}/codes?state=unused"), None).await.text;
    assert_eq!(unused.lines().count(), 2000);
    assert_eq!(
        admin(client, Method::GET, &format!("{path}/codes?state=gone"), None).await.status,
        StatusCode::BAD_REQUEST
    );

    // A shape that could collide with the batch, or with a coupon, is refused; a coupon of
    // the batch's shape too.
    let batches = format!("{path}/batches");
    let refused = admin(
        client,
        Method::POST,
        &batches,
        Some(json!({"count": 10, "prefix": "BF2", "length": 11, "discountType": "fixed", "discountValue": 1})),
    )
    .await;
    assert_eq!((refused.status, refused.json()["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("prefix")));
    insert_coupon(&db.pool, "SUMMER-0001", &[]).await;
    let refused = admin(
        client,
        Method::POST,
        &batches,
        Some(json!({"count": 10, "prefix": "SUMMER-", "length": 4, "discountType": "fixed", "discountValue": 1})),
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.text);
    let shaped =
        json!({"code": "BF26-ZZZZZZZZZ", "type": "time_specific", "discountType": "fixed", "discountValue": 1});
    assert_eq!(admin(client, Method::POST, "/admin/coupons", Some(shaped)).await.status, StatusCode::CONFLICT);
    // A batch rule's code is no other coupon's, through the API or SQL.
    let ruled = json!({"code": "~batch-77", "type": "time_specific", "discountType": "fixed", "discountValue": 1});
    let refused = admin(client, Method::POST, "/admin/coupons", Some(ruled)).await;
    assert_eq!((refused.status, refused.json()["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("code")));
    let by_sql = sqlx::query(
        "INSERT INTO coupons (code, type, discount_type, discount_value) VALUES ('~BATCH-77', 'time_specific', 'fixed', 1)",
    )
    .execute(&db.pool)
    .await;
    assert!(by_sql.is_err_and(|e| e.to_string().contains("coupons_rule_code_reserved")));
    for (body, field) in [
        (json!({"count": 1_000_000, "length": 6, "discountType": "fixed", "discountValue": 1}), "length"),
        (json!({"count": 0, "discountType": "fixed", "discountValue": 1}), "count"),
        (json!({"count": 10_000_001, "discountType": "fixed", "discountValue": 1}), "count"),
        (json!({"codes": ["OK", "BAD\u{7}"], "discountType": "fixed", "discountValue": 1}), "codes"),
        (json!({"count": 10, "discountType": "fixed", "discountValue": 1}), "prefix"),
        (json!({"count": 10, "prefix": "", "discountType": "fixed", "discountValue": 1}), "prefix"),
    ] {
        let refused = admin(client, Method::POST, &batches, Some(body.clone())).await;
        assert_eq!(
            (refused.status, refused.json()["error"]["field"].clone()),
            (StatusCode::BAD_REQUEST, json!(field)),
            "{body}"
        );
    }

    // Imports: all or nothing.
    let imported = admin(
        client,
        Method::POST,
        &batches,
        Some(json!({"codes": ["vip-1", "VIP-2"], "discountType": "percentage", "discountValue": 20})),
    )
    .await;
    assert_eq!(imported.status, StatusCode::CREATED, "{}", imported.text);
    let clash = admin(
        client,
        Method::POST,
        &batches,
        Some(
            json!({"codes": ["VIP-3", "vip-2", "summer-0001", codes[5]], "discountType": "fixed", "discountValue": 1}),
        ),
    )
    .await;
    assert_eq!(clash.status, StatusCode::CONFLICT);
    let listed: HashSet<String> = serde_json::from_value(clash.json()["error"]["duplicates"].clone()).unwrap();
    assert_eq!(listed, HashSet::from(["VIP-2".to_owned(), "SUMMER-0001".to_owned(), codes[5].clone()]));
    assert_eq!(
        client.validate(json!({"code": "VIP-3", "userId": "u", "orderValue": 100})).await["reason"],
        json!("COUPON_NOT_FOUND")
    );
    let failed: i64 = sqlx::query_scalar("SELECT max(id) FROM code_batches").fetch_one(&db.pool).await.unwrap();
    let failed = admin(client, Method::GET, &format!("/admin/batches/{failed}"), None).await.json();
    assert_eq!((failed["status"].clone(), failed["produced"].clone()), (json!("failed"), json!(0)));
    assert!(failed["error"].as_str().unwrap().contains("VIP-2"), "{failed}");
    let repeated = admin(
        client,
        Method::POST,
        &batches,
        Some(json!({"codes": ["X1", "x1"], "discountType": "fixed", "discountValue": 1})),
    )
    .await;
    assert_eq!(
        (repeated.status, repeated.json()["error"]["duplicates"].clone()),
        (StatusCode::CONFLICT, json!(["X1"]))
    );
    assert_eq!(admin(client, Method::GET, "/admin/batches/999999", None).await.status, StatusCode::NOT_FOUND);
    let done = admin(client, Method::GET, &format!("/admin/batches/{batch}"), None).await.json();
    assert_eq!(
        done,
        json!({"batchId": batch, "campaign": "Black Friday", "kind": "generated", "status": "done", "count": 2000, "produced": 2000})
    );

    // Assign-next: idempotent by key, the code is then the user's only.
    let assign = format!("{path}/codes/assign");
    let first = admin(client, Method::POST, &assign, Some(json!({"userId": "alice", "key": "mail-1"}))).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let code = first.json()["code"].as_str().unwrap().to_owned();
    assert_ne!(code, codes[0], "a used code is never handed out");
    let again = admin(client, Method::POST, &assign, Some(json!({"userId": "alice", "key": "mail-1"}))).await;
    assert_eq!((again.status, again.json()["code"].clone()), (StatusCode::OK, json!(code)));
    let stolen = admin(client, Method::POST, &assign, Some(json!({"userId": "mallory", "key": "mail-1"}))).await;
    assert_eq!(stolen.status, StatusCode::CONFLICT);
    let other = client.post("/api/coupons/redeem", &redeem_body(&code, "mallory", "o-m")).await;
    assert_eq!(other.json()["reason"], json!("COUPON_NOT_FOR_USER"));
    assert_eq!(
        client.post("/api/coupons/redeem", &redeem_body(&code, "alice", "o-a")).await.status,
        StatusCode::CREATED
    );

    // A limit below what is used is refused.
    let lower = admin(client, Method::PATCH, path, Some(json!({"usageLimit": 1}))).await;
    assert_eq!(
        (lower.status, lower.json()["error"]["code"].clone()),
        (StatusCode::CONFLICT, json!("BELOW_CURRENT_USAGE"))
    );
    let lower = admin(client, Method::PATCH, path, Some(json!({"budget": 10}))).await;
    assert_eq!(lower.json()["error"]["field"], json!("budget"));
    let patched = admin(client, Method::PATCH, path, Some(json!({"usageLimit": 2, "perUserLimit": 1}))).await;
    assert_eq!((patched.status, patched.json()["remainingUses"].clone()), (StatusCode::OK, json!(0)));
    let capped = client.post("/api/coupons/redeem", &redeem_body(&codes[9], "u9", "o-9")).await;
    assert_eq!(capped.json()["reason"], json!("CAMPAIGN_LIMIT_REACHED"));

    // A coupon body names its campaign.
    let joined = json!({"code": "JOINED", "type": "time_specific", "discountType": "fixed", "discountValue": 1, "campaign": "Black Friday"});
    let joined = admin(client, Method::POST, "/admin/coupons", Some(joined)).await;
    assert_eq!((joined.status, joined.json()["campaign"].clone()), (StatusCode::CREATED, json!("Black Friday")));
    let unknown = json!({"code": "LOST", "type": "time_specific", "discountType": "fixed", "discountValue": 1, "campaign": "Nope"});
    assert_eq!(
        admin(client, Method::POST, "/admin/coupons", Some(unknown)).await.json()["error"]["field"],
        json!("campaign")
    );

    // A small pool runs out.
    create_campaign(client, json!({"name": "tiny"})).await;
    generate(client, "tiny", json!({"count": 2, "prefix": "TINY-", "discountType": "fixed", "discountValue": 1})).await;
    for n in 0..2 {
        let got = admin(
            client,
            Method::POST,
            "/admin/campaigns/tiny/codes/assign",
            Some(json!({"userId": format!("t{n}"), "key": format!("k{n}")})),
        )
        .await;
        assert_eq!(got.status, StatusCode::CREATED);
    }
    let empty =
        admin(client, Method::POST, "/admin/campaigns/tiny/codes/assign", Some(json!({"userId": "t9", "key": "k9"})))
            .await;
    assert_eq!((empty.status, empty.json()["error"]["code"].clone()), (StatusCode::CONFLICT, json!("POOL_EXHAUSTED")));

    // Aggregated on /metrics: no label per campaign.
    let metrics = client.get("/metrics").await.text;
    for line in [
        "coupon_campaigns 2",
        "coupon_bulk_codes 2004",
        "coupon_campaign_uses_live 2",
        "coupon_campaign_spent 14",
        "coupon_campaigns_exhausted 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}");
    }

    create_campaign(client, json!({"name": "hoard"})).await;
    generate(client, "hoard", json!({"count": 15, "prefix": "HOARD-", "discountType": "fixed", "discountValue": 1}))
        .await;
    // One user is handed at most protection.assigned_codes_per_user codes (10), whatever the keys.
    let mut statuses = Vec::new();
    for n in 0..12 {
        let body = json!({"userId": "hoarder", "key": format!("hoard-{n}")});
        statuses.push(admin(client, Method::POST, "/admin/campaigns/hoard/codes/assign", Some(body)).await.status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CREATED).count(), 10, "{statuses:?}");
    let refused = admin(
        client,
        Method::POST,
        "/admin/campaigns/hoard/codes/assign",
        Some(json!({"userId": "hoarder", "key": "hoard-99"})),
    )
    .await;
    assert_eq!(refused.json()["error"]["code"], "USER_ASSIGNMENT_LIMIT_REACHED");
    let again = admin(
        client,
        Method::POST,
        "/admin/campaigns/hoard/codes/assign",
        Some(json!({"userId": "hoarder", "key": "hoard-3"})),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "a key handed before still answers its code");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_hundred_buyers_over_many_codes_against_a_shared_cap_and_budget() {
    let db = TestDb::new().await;
    let app = spawn(&db).await;
    let client = &app.client;
    // 300.00 of budget at 7.00 a code: 42 uses, under the cap of 60.
    create_campaign(client, json!({"name": "race", "usageLimit": 60, "budget": 300, "perUserLimit": 2})).await;
    let batch =
        generate(client, "race", json!({"count": 500, "prefix": "R-", "discountType": "fixed", "discountValue": 7}))
            .await;
    let codes = codes_of(&db.pool, batch).await;
    let buyers: Vec<_> = (0..400)
        .map(|n| {
            let (client, code) = (client.clone(), codes[n].clone());
            tokio::spawn(async move {
                let response = client
                    .post("/api/coupons/redeem", &redeem_body(&code, &format!("buyer-{n}"), &format!("order-{n}")))
                    .await;
                (n, response.status, response.json()["reason"].clone())
            })
        })
        .collect();
    let mut winners = Vec::new();
    for buyer in buyers {
        match buyer.await.unwrap() {
            (n, StatusCode::CREATED, _) => winners.push(n),
            (_, StatusCode::UNPROCESSABLE_ENTITY, reason) => assert_eq!(reason, json!("CAMPAIGN_BUDGET_EXHAUSTED")),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(winners.len(), 42, "never a cent over the budget");
    let read = admin(client, Method::GET, "/admin/campaigns/race", None).await.json();
    assert_eq!(
        (read["used"].clone(), read["spent"].clone(), read["remainingBudget"].clone()),
        (json!(42), json!(294), json!(6))
    );

    // One user in twenty tabs, each with a code of their own: the per-user limit holds.
    create_campaign(client, json!({"name": "per-user", "perUserLimit": 2})).await;
    let batch = generate(
        client,
        "per-user",
        json!({"count": 50, "prefix": "PU-", "discountType": "fixed", "discountValue": 1}),
    )
    .await;
    let codes = codes_of(&db.pool, batch).await;
    let tabs: Vec<_> = (0..20)
        .map(|n| {
            let (client, code) = (client.clone(), codes[n].clone());
            tokio::spawn(async move {
                client.post("/api/coupons/redeem", &redeem_body(&code, "same", &format!("tab-{n}"))).await.status
            })
        })
        .collect();
    let mut won = 0;
    for tab in tabs {
        won += usize::from(tab.await.unwrap() == StatusCode::CREATED);
    }
    assert_eq!(won, 2);

    // Releases give back exactly the discounts they took: seven more uses fit.
    let race_codes = codes_of(&db.pool, 1).await;
    for n in &winners[..7] {
        let body = json!({"code": race_codes[*n], "orderId": format!("order-{n}")});
        assert_eq!(client.post("/api/coupons/release", &body).await.status, StatusCode::OK);
    }
    let read = admin(client, Method::GET, "/admin/campaigns/race", None).await.json();
    assert_eq!((read["used"].clone(), read["spent"].clone()), (json!(35), json!(245)));
    let mut won = 0;
    for (n, code) in race_codes.iter().enumerate().skip(400).take(20) {
        won += usize::from(
            client
                .post("/api/coupons/redeem", &redeem_body(code, &format!("late-{n}"), &format!("late-{n}")))
                .await
                .status
                == StatusCode::CREATED,
        );
    }
    assert_eq!(won, 7);
    // Everything acknowledged reaches PostgreSQL, once.
    eventually(Duration::from_secs(10), "the uses to be shipped", || async {
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM coupon_usage u JOIN coupons c ON c.id = u.coupon_id JOIN code_batches b ON b.id = c.batch_id \
             WHERE b.campaign_id = (SELECT id FROM campaigns WHERE name = 'race') AND u.released_at IS NULL",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        live == 42
    })
    .await;
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_assignments_reach_another_instance_without_a_reload() {
    let db = TestDb::new().await;
    let a = spawn(&db).await;
    let b = spawn(&db).await;
    create_campaign(&a.client, json!({"name": "shared"})).await;
    let reloads = |client: TestClient| async move {
        admin(&client, Method::GET, "/admin/cache/stats", None).await.json()["reloads"].clone()
    };
    let before = reloads(b.client.clone()).await;
    let batch = generate(
        &a.client,
        "shared",
        json!({"count": 5000, "prefix": "S-", "discountType": "fixed", "discountValue": 1}),
    )
    .await;
    let codes = codes_of(&db.pool, batch).await;
    eventually(Duration::from_secs(5), "the other instance to serve the batch", || async {
        b.client.validate(json!({"code": codes[4999], "userId": "u", "orderValue": 10})).await["valid"] == json!(true)
    })
    .await;
    assert_eq!(reloads(b.client.clone()).await, before, "no full reload");
    let assigned = admin(
        &a.client,
        Method::POST,
        "/admin/campaigns/shared/codes/assign",
        Some(json!({"userId": "alice", "key": "k"})),
    )
    .await
    .json();
    let code = assigned["code"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(5), "the other instance to know the assignment", || async {
        b.client.validate(json!({"code": code, "userId": "bob", "orderValue": 10})).await["reason"]
            == json!("COUPON_NOT_FOR_USER")
    })
    .await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_survive_a_restart_and_an_interrupted_one_is_marked_failed() {
    let db = TestDb::new().await;
    let app = spawn(&db).await;
    create_campaign(&app.client, json!({"name": "kept"})).await;
    let batch = generate(
        &app.client,
        "kept",
        json!({"count": 300, "prefix": "K-", "discountType": "fixed", "discountValue": 1}),
    )
    .await;
    let assigned = admin(
        &app.client,
        Method::POST,
        "/admin/campaigns/kept/codes/assign",
        Some(json!({"userId": "alice", "key": "k"})),
    )
    .await
    .json();
    app.stop().await.unwrap();
    // A batch some instance began and never finished: no lock holds it.
    let campaign: i64 = sqlx::query_scalar("SELECT id FROM campaigns").fetch_one(&db.pool).await.unwrap();
    let orphan = insert_running_batch(&db.pool, campaign).await;
    let app = spawn(&db).await;
    let codes = codes_of(&db.pool, batch).await;
    let valid = app.client.validate(json!({"code": codes[299], "userId": "u", "orderValue": 10})).await;
    assert_eq!(valid["valid"], json!(true));
    let other = app.client.validate(json!({"code": assigned["code"], "userId": "bob", "orderValue": 10})).await;
    assert_eq!(other["reason"], json!("COUPON_NOT_FOR_USER"), "assignments are loaded too");
    let orphan = admin(&app.client, Method::GET, &format!("/admin/batches/{orphan}"), None).await.json();
    assert_eq!(orphan["status"], json!("failed"));
    assert!(orphan["error"].as_str().unwrap().starts_with("interrupted"), "{orphan}");
    app.stop().await.unwrap();
}

/// Two markers of an interrupted batch at once (start-up's and a `GET /admin/batches/{id}`,
/// say): the second waits for the first and reads the batch failed. It once tried the
/// batch's lock while the first marker's transaction held it, took the dead writer's batch
/// for a live one, and read it `running`.
#[tokio::test]
async fn a_batch_marked_failed_by_two_at_once_reads_failed() {
    let db = TestDb::new().await;
    let campaign: i64 =
        sqlx::query_scalar("INSERT INTO campaigns (name) VALUES ('c') RETURNING id").fetch_one(&db.pool).await.unwrap();
    let orphan = insert_running_batch(&db.pool, campaign).await;
    // The first marker, mid-transaction: it holds the batch's lock and has marked the row.
    let mut first = db.pool.begin().await.unwrap();
    let marked = sqlx::query(
        "UPDATE code_batches SET status = 'failed', error = 'interrupted: by the first marker' \
         WHERE id = $1 AND pg_try_advisory_xact_lock($2, id::int)",
    )
    .bind(orphan)
    .bind(coupon_engine::db::batches::BATCH_LOCK)
    .execute(&mut *first)
    .await
    .unwrap();
    assert_eq!(marked.rows_affected(), 1);
    let second = tokio::spawn({
        let pool = db.pool.clone();
        async move { coupon_engine::db::batches::status(&pool, orphan).await.unwrap().unwrap() }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    first.commit().await.unwrap();
    let seen = second.await.unwrap();
    assert_eq!(seen.status, "failed", "{seen:?}");
}

/// An import too large to finish within the admin deadline answers 202 with its batch id
/// (not a 503 while it goes on unnamed), and the batch is then followed to done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_longer_than_the_admin_deadline_answers_202_with_its_id() {
    let db = TestDb::new().await;
    let app = TestApp::spawn_with(&db.url, &[("ADMIN_TOKEN", TOKEN), ("COUPON__HTTP__ADMIN_TIMEOUT", "2s")]).await;
    let client = &app.client;
    create_campaign(client, json!({"name": "big"})).await;
    let codes: Vec<String> = (0..1_000_000).map(|n| format!("BIG-{n:07}")).collect();
    let body = json!({"codes": codes, "discountType": "fixed", "discountValue": 1});
    let answer = admin(client, Method::POST, "/admin/campaigns/big/batches", Some(body)).await;
    assert!([StatusCode::CREATED, StatusCode::ACCEPTED].contains(&answer.status), "{}: {}", answer.status, answer.text);
    let id = answer.json()["batchId"].as_i64().expect("a batch id");
    eventually(Duration::from_secs(120), "the batch done", || async {
        admin(client, Method::GET, &format!("/admin/batches/{id}"), None).await.json()["status"] == "done"
    })
    .await;
    app.stop().await.unwrap();
}
