//! Several instances on one database (API.md §6): limits exact across instances under races,
//! a killed instance that holds leases, PostgreSQL away for all of them, and uses seen and
//! changed on every instance.

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    PgProxy, ServeProcess, TestApp, TestClient, TestDb, all_sharing, binary, eventually, insert_coupon, redeem_body,
    signal,
};

const TOKEN: &str = "cluster-admin-token-0123456789";

async fn instances(db: &TestDb, n: usize) -> Vec<TestApp> {
    let mut apps = Vec::new();
    for _ in 0..n {
        apps.push(TestApp::spawn_with(&db.url, &[("ADMIN_TOKEN", TOKEN)]).await);
    }
    if n > 1 {
        all_sharing(&apps.iter().map(|app| &app.client).collect::<Vec<_>>()).await;
    }
    apps
}

/// Waits until every instance serves `code` (a new coupon reaches each by its notification).
async fn served_everywhere(apps: &[TestApp], code: &str) {
    for app in apps {
        eventually(Duration::from_secs(5), "the coupon on every instance", || async {
            app.client.validate(json!({"code": code, "userId": "u", "orderValue": 100})).await["valid"] == true
        })
        .await;
    }
}

/// Redeems like a shop's backend: a 503 is retried after its Retry-After (shortened here).
async fn redeem_retrying(client: &TestClient, body: &Value) -> (StatusCode, Value) {
    for _ in 0..100 {
        let response = client.post("/api/coupons/redeem", body).await;
        if response.status != StatusCode::SERVICE_UNAVAILABLE {
            return (response.status, response.json());
        }
        assert!(response.headers.contains_key("retry-after"), "a 503 says when to retry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redeem never answered other than 503: {body}");
}

/// A small deterministic generator, so that a failing seed can be replayed.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

async fn live_rows(db: &TestDb, coupon: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM coupon_usage WHERE coupon_id = $1 AND released_at IS NULL")
        .bind(coupon)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn quota(db: &TestDb, kind: i16, scope: i64) -> (i64, i64) {
    sqlx::query_as("SELECT used, held FROM quotas WHERE kind = $1 AND scope_id = $2")
        .bind(kind)
        .bind(scope)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_buyers_on_three_instances_get_exactly_fifty() {
    let db = TestDb::new().await;
    let apps = instances(&db, 3).await;
    let mut seed = u64::from(std::process::id()) | 1;
    for round in 0..3 {
        let code = format!("FIFTY{round}");
        let coupon = insert_coupon(&db.pool, &code, &[("usage_limit", "50")]).await;
        // Every instance must know the coupon before the race starts.
        served_everywhere(&apps, &code).await;
        let started = seed;
        let buyers: Vec<_> = (0..300)
            .map(|n| {
                let client = apps[(next(&mut seed) % 3) as usize].client.clone();
                let body = redeem_body(&code, &format!("buyer-{round}-{n}"), &format!("order-{round}-{n}"));
                tokio::spawn(async move { redeem_retrying(&client, &body).await })
            })
            .collect();
        let (mut won, mut refused) = (0, 0);
        for buyer in buyers {
            match buyer.await.unwrap() {
                (StatusCode::CREATED, _) => won += 1,
                (StatusCode::UNPROCESSABLE_ENTITY, body) => {
                    assert_eq!(body["reason"], "USAGE_LIMIT_REACHED", "never another reason");
                    refused += 1;
                }
                other => panic!("unexpected answer {other:?}"),
            }
        }
        assert_eq!((won, refused), (50, 250), "round {round}, seed {started}");
        eventually(Duration::from_secs(10), "every redemption shipped", || async {
            live_rows(&db, coupon).await == 50
        })
        .await;
        let (used, held) = quota(&db, 1, coupon).await;
        assert_eq!(used, 50);
        assert_eq!(held, 0, "nothing is left in any lease when the limit is sold out");
    }
    // A hundred buyers at once on each instance: their claims shared statements.
    let (mut claims, mut statements) = (0.0, 0.0);
    for app in &apps {
        claims += app.client.metric("quota_claims_total").await;
        statements += app.client.metric("quota_claim_statements_total").await;
    }
    assert!(claims >= 150.0, "every use won was claimed: {claims}");
    assert!(statements < claims, "{claims} claims in {statements} statements");
    for app in apps {
        app.stop().await.unwrap();
    }
    let held: i64 = sqlx::query_scalar("SELECT coalesce(sum(held), 0)::bigint FROM quota_leases")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(held, 0, "stopped instances hold nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_user_racing_a_one_use_coupon_on_every_instance_gets_it_once() {
    let db = TestDb::new().await;
    let apps = instances(&db, 3).await;
    insert_coupon(&db.pool, "ONCE", &[("per_user_limit", "1")]).await;
    served_everywhere(&apps, "ONCE").await;
    let tries: Vec<_> = (0..30)
        .map(|n| {
            let client = apps[n % 3].client.clone();
            let body = redeem_body("ONCE", "the-user", &format!("order-{n}"));
            tokio::spawn(async move { (body.clone(), redeem_retrying(&client, &body).await) })
        })
        .collect();
    let mut winners = Vec::new();
    for attempt in tries {
        match attempt.await.unwrap() {
            (body, (StatusCode::CREATED, answer)) => winners.push((body, answer)),
            (_, (StatusCode::UNPROCESSABLE_ENTITY, answer)) => {
                assert_eq!(answer["reason"], "USER_USAGE_LIMIT_REACHED");
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one use for the user");
    // The winning order, retried on any instance, is the same redemption.
    let (body, answer) = &winners[0];
    for app in &apps {
        let again = app.client.post("/api/coupons/redeem", body).await;
        assert_eq!(again.status, StatusCode::OK, "{}", again.text);
        assert_eq!(again.json()["redemptionId"], answer["redemptionId"]);
    }
    for app in apps {
        app.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_use_on_one_instance_shows_on_the_others_and_is_released_anywhere() {
    let db = TestDb::new().await;
    let apps = instances(&db, 3).await;
    let coupon = insert_coupon(&db.pool, "SOLO", &[("usage_limit", "1")]).await;
    let check = json!({"code": "SOLO", "userId": "someone", "orderValue": 100});
    served_everywhere(&apps, "SOLO").await;
    let first = apps[0].client.post("/api/coupons/redeem", &redeem_body("SOLO", "ann", "o-1")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    for app in &apps[1..] {
        eventually(Duration::from_secs(5), "the use seen on the other instances", || async {
            app.client.validate(check.clone()).await["reason"] == "USAGE_LIMIT_REACHED"
        })
        .await;
    }
    // Another instance releases it: through PostgreSQL, since the use is not its own.
    let released = apps[1].client.post("/api/coupons/release", &json!({"code": "SOLO", "orderId": "o-1"})).await;
    assert_eq!((released.status, released.json()["released"].clone()), (StatusCode::OK, json!(true)));
    for app in &apps {
        eventually(Duration::from_secs(5), "the release seen everywhere", || async {
            app.client.validate(check.clone()).await["valid"] == true
        })
        .await;
    }
    let again = apps[0].client.post("/api/coupons/release", &json!({"code": "SOLO", "orderId": "o-1"})).await;
    assert_eq!(again.status, StatusCode::OK, "a repeated release, on the instance that made it");
    let (status, _) = redeem_retrying(&apps[2].client, &redeem_body("SOLO", "bob", "o-2")).await;
    assert_eq!(status, StatusCode::CREATED, "the use given back is sold again");
    eventually(Duration::from_secs(5), "one live use", || async { live_rows(&db, coupon).await == 1 }).await;
    assert_eq!(quota(&db, 1, coupon).await.0, 1);
    for app in apps {
        app.stop().await.unwrap();
    }
}

/// A use under no limit is journalled where it is taken, not claimed: another instance
/// finds it in PostgreSQL only once it has shipped. A release there waits for every other
/// instance's shipping (their heartbeats publish it) before it may say `404`, and says `503`
/// while one of them cannot say.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_elsewhere_finds_an_unshipped_use_and_says_404_only_once_every_instance_has_shipped() {
    let db = TestDb::new().await;
    let proxy = PgProxy::start(&db.url).await;
    // Heartbeats every 200 ms; a release waits at most 1.5 s for the others' shipping.
    let env = [("COUPON__CLUSTER__IDENTITY_TIMEOUT", "2s"), ("COUPON__LEDGER__SETTLE_TIMEOUT", "1500ms")];
    let apps = vec![TestApp::spawn_with(&proxy.url, &env).await, TestApp::spawn_with(&db.url, &env).await];
    let (a, b) = (&apps[0].client, &apps[1].client);
    all_sharing(&[a, b]).await;
    let coupon = insert_coupon(&db.pool, "FREE", &[]).await;
    served_everywhere(&apps, "FREE").await;
    let release = |order: &str| json!({"code": "FREE", "orderId": order});

    for n in 0..5 {
        let order = format!("o-{n}");
        let taken = a.post("/api/coupons/redeem", &redeem_body("FREE", "ann", &order)).await;
        assert_eq!(taken.status, StatusCode::CREATED, "{}", taken.text);
        // At once on the other instance: before the use has shipped, or just after.
        let released = b.post("/api/coupons/release", &release(&order)).await;
        assert_eq!((released.status, released.json()["released"].clone()), (StatusCode::OK, json!(true)), "{order}");
    }
    let unknown = b.post("/api/coupons/release", &release("never")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text);
    assert_eq!(unknown.json()["reason"], "REDEMPTION_NOT_FOUND");

    // a cut off, still selling from its journal: b cannot say what a has not shipped.
    proxy.cut().await;
    let taken = a.post("/api/coupons/redeem", &redeem_body("FREE", "ann", "o-cut")).await;
    assert_eq!(taken.status, StatusCode::CREATED, "{}", taken.text);
    for order in ["o-cut", "never-2"] {
        let answer = b.post("/api/coupons/release", &release(order)).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{order}: {}", answer.text);
        assert!(answer.headers.contains_key("retry-after"));
    }
    proxy.restore().await;
    eventually(Duration::from_secs(10), "a's use released from b once shipped", || async {
        b.post("/api/coupons/release", &release("o-cut")).await.status == StatusCode::OK
    })
    .await;
    let unknown = b.post("/api/coupons/release", &release("never-2")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text);
    eventually(Duration::from_secs(5), "every release in PostgreSQL", || async { live_rows(&db, coupon).await == 0 })
        .await;
    for app in apps {
        app.stop().await.unwrap();
    }
}

/// A shop that gives up on a redeem (its own timeout) closes the connection while the claim
/// waits in PostgreSQL; the claim commits later. The redeem runs to the end anyway: had it
/// been dropped half-way, the engine would have given back lease units PostgreSQL counts as
/// spent, and sold them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redeem_the_client_gave_up_on_is_finished_and_sells_nothing_twice() {
    let db = TestDb::new().await;
    let apps = instances(&db, 2).await;
    let coupon = insert_coupon(&db.pool, "GIVEUP", &[("usage_limit", "1"), ("per_user_limit", "1")]).await;
    served_everywhere(&apps, "GIVEUP").await;
    // The claim of ann's use will wait for this lock (claim_use locks the user's key).
    let mut blocker = db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("user:{coupon}:ann"))
        .execute(&mut *blocker)
        .await
        .unwrap();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(800),
        apps[0].client.post("/api/coupons/redeem", &redeem_body("GIVEUP", "ann", "o-ann")),
    )
    .await;
    assert!(gave_up.is_err(), "the redeem waited for the claim: {:?}", gave_up.map(|r| r.text));
    blocker.rollback().await.unwrap();
    eventually(Duration::from_secs(5), "ann's claim committed", || async { live_rows(&db, coupon).await == 1 }).await;
    // Finished, not dropped half-way: counted as a redemption by the instance that made it.
    let redeemed = "coupon_redemptions_total{outcome=\"redeemed\"}";
    eventually(Duration::from_secs(5), "the redeem finished", || async {
        apps[0].client.metric(redeemed).await == 1.0
    })
    .await;
    let replay = apps[0].client.post("/api/coupons/redeem", &redeem_body("GIVEUP", "ann", "o-ann")).await;
    assert_eq!(replay.status, StatusCode::OK, "the order was redeemed once: {}", replay.text);
    // Sold where the units were leased: a unit given back by mistake would sell here.
    let mut sold = 1;
    for n in 0..3 {
        let (status, body) =
            redeem_retrying(&apps[0].client, &redeem_body("GIVEUP", &format!("u-{n}"), &format!("o-{n}"))).await;
        match status {
            StatusCode::CREATED => sold += 1,
            StatusCode::UNPROCESSABLE_ENTITY => assert_eq!(body["reason"], "USAGE_LIMIT_REACHED"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(sold, 1, "exactly the limit");
    eventually(Duration::from_secs(5), "every use in PostgreSQL", || async { live_rows(&db, coupon).await == 1 }).await;
    for app in apps {
        app.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_made_on_one_instance_is_confirmed_on_another() {
    let db = TestDb::new().await;
    let apps = instances(&db, 2).await;
    insert_coupon(&db.pool, "CART", &[("usage_limit", "5")]).await;
    served_everywhere(&apps, "CART").await;
    let held = apps[0].client.post("/api/coupons/hold", &redeem_body("CART", "carol", "cart-1")).await;
    assert_eq!(held.status, StatusCode::CREATED, "{}", held.text);
    let hold_id = held.json()["holdId"].clone();
    // The hold is in PostgreSQL at once (holds are claims); the other instance learns of it.
    let check = json!({"code": "CART", "userId": "carol", "orderValue": 100, "orderId": "cart-1"});
    eventually(Duration::from_secs(5), "the hold seen on the other instance", || async {
        apps[1].client.validate(check.clone()).await["reason"] == "ORDER_ALREADY_REDEEMED"
    })
    .await;
    let confirmed = apps[1].client.post("/api/coupons/redeem", &redeem_body("CART", "carol", "cart-1")).await;
    assert_eq!(confirmed.status, StatusCode::CREATED, "{}", confirmed.text);
    assert_eq!(confirmed.json()["hold"], "confirmed");
    assert_eq!(confirmed.json()["redemptionId"], hold_id);
    eventually(Duration::from_secs(5), "a redemption now, in PostgreSQL", || async {
        let row: (uuid::Uuid, bool, bool) = sqlx::query_as(
            "SELECT id, hold_expires_at IS NULL, released_at IS NULL FROM coupon_usage WHERE order_id = 'cart-1'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(row.0.to_string(), hold_id.as_str().unwrap(), "one row, the hold's");
        row.1 && row.2
    })
    .await;
    for app in apps {
        app.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_order_retried_on_two_instances_is_one_redemption() {
    let db = TestDb::new().await;
    let apps = instances(&db, 2).await;
    insert_coupon(&db.pool, "FREE", &[]).await;
    served_everywhere(&apps, "FREE").await;
    let body = redeem_body("FREE", "dave", "order-9");
    let (a, b) = tokio::join!(
        apps[0].client.post("/api/coupons/redeem", &body),
        apps[1].client.post("/api/coupons/redeem", &body)
    );
    assert!(a.status.is_success() && b.status.is_success(), "{} {}", a.text, b.text);
    assert_eq!(a.json()["redemptionId"], b.json()["redemptionId"]);
    eventually(Duration::from_secs(5), "the row shipped", || async {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM coupon_usage WHERE order_id = 'order-9'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        rows == 1
    })
    .await;
    let conflicts: i64 = sqlx::query_scalar("SELECT count(*) FROM order_conflicts").fetch_one(&db.pool).await.unwrap();
    assert_eq!(conflicts, 0, "the same user's retry is not a conflict");
    // Two users on one order at once, on a coupon without claims: detected when shipped.
    let (erin, frank) = (redeem_body("FREE", "erin", "order-10"), redeem_body("FREE", "frank", "order-10"));
    let (a, b) = tokio::join!(
        apps[0].client.post("/api/coupons/redeem", &erin),
        apps[1].client.post("/api/coupons/redeem", &frank)
    );
    if a.status == StatusCode::CREATED && b.status == StatusCode::CREATED {
        eventually(Duration::from_secs(5), "the conflict listed", || async {
            let listed = apps[0]
                .client
                .request_with(
                    Method::GET,
                    "/admin/orders/conflicts",
                    "",
                    &[("authorization", &format!("Bearer {TOKEN}"))],
                )
                .await;
            listed.status == StatusCode::OK && listed.json()["conflicts"].as_array().is_some_and(|c| c.len() == 1)
        })
        .await;
    } else {
        // One instance learned of the other's use first: the order was refused, as on one.
        assert!([a.status, b.status].contains(&StatusCode::CONFLICT), "{} {}", a.text, b.text);
    }
    for app in apps {
        app.stop().await.unwrap();
    }
}

/// A directory's path as the environment takes it.
fn path(dir: &tempfile::TempDir) -> &str {
    dir.path().to_str().expect("a UTF-8 temporary path")
}

fn data_dir(name: &str) -> tempfile::TempDir {
    crate::helpers::temp_dir(&format!("coupon-engine-cluster-{name}-"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_instance_strands_its_units_until_it_is_back_or_written_off() {
    let db = TestDb::new().await;
    let coupon = insert_coupon(&db.pool, "TWENTY", &[("usage_limit", "20")]).await;
    let (dir_a, dir_b) = (data_dir("a"), data_dir("b"));
    let (dir_a, dir_b) = (path(&dir_a), path(&dir_b));
    let env_a = [("INSTANCE_ID", "node-a"), ("DATA_DIR", dir_a), ("ADMIN_TOKEN", TOKEN)];
    // A write-off waits until b has been silent this long.
    let env_b = [("INSTANCE_ID", "node-b"), ("DATA_DIR", dir_b), ("COUPON__CLUSTER__IDENTITY_TIMEOUT", "1s")];
    let a = ServeProcess::start(&db.url, &env_a);
    let mut b = ServeProcess::start(&db.url, &env_b);
    let (client_a, client_b) = (TestClient::new(a.addr), TestClient::new(b.addr));
    client_a.wait_ready().await;
    client_b.wait_ready().await;
    let mut sold = 0;
    for n in 0..3 {
        let (status, _) =
            redeem_retrying(&client_b, &redeem_body("TWENTY", &format!("b-{n}"), &format!("b-{n}"))).await;
        assert_eq!(status, StatusCode::CREATED);
        sold += 1;
    }
    let (_, held_by_b) = quota(&db, 1, coupon).await;
    assert!(held_by_b > 0, "b holds a lease");
    signal(&b.child, "KILL");
    b.child.wait().unwrap();
    // While b is down, a sells what is free and answers 503 (never a false 422) for b's units.
    let mut unavailable = 0;
    for n in 0..40 {
        let response =
            client_a.post("/api/coupons/redeem", &redeem_body("TWENTY", &format!("a-{n}"), &format!("a-{n}"))).await;
        match response.status {
            StatusCode::CREATED => sold += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(response.json()["reason"], "QUOTA_UNAVAILABLE");
                unavailable += 1;
                if unavailable >= 2 {
                    break;
                }
            }
            other => panic!("unexpected {other}: {}", response.text),
        }
    }
    assert!(sold < 20, "b's unspent units are unavailable, not sold: {sold}");
    assert!(unavailable > 0);
    // b comes back with its DATA_DIR: it ships what it sold and gives back the rest.
    let b = ServeProcess::start(&db.url, &env_b);
    TestClient::new(b.addr).wait_ready().await;
    let mut n = 100;
    loop {
        let (status, body) =
            redeem_retrying(&client_a, &redeem_body("TWENTY", &format!("a-{n}"), &format!("a-{n}"))).await;
        n += 1;
        match status {
            StatusCode::CREATED => sold += 1,
            StatusCode::UNPROCESSABLE_ENTITY => {
                assert_eq!(body["reason"], "USAGE_LIMIT_REACHED");
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(sold, 20, "exactly the limit once b is back");
    eventually(Duration::from_secs(10), "every use shipped", || async { live_rows(&db, coupon).await == 20 }).await;

    // Disk lost: b is killed holding units of a second coupon, and written off.
    let second = insert_coupon(&db.pool, "TEN", &[("usage_limit", "10")]).await;
    let client_b = TestClient::new(b.addr);
    eventually(Duration::from_secs(5), "b knows TEN", || async {
        client_b.validate(json!({"code": "TEN", "userId": "u", "orderValue": 100})).await["valid"] == true
    })
    .await;
    let (status, _) = redeem_retrying(&client_b, &redeem_body("TEN", "x-0", "x-0")).await;
    assert_eq!(status, StatusCode::CREATED);
    let mut b = b;
    eventually(Duration::from_secs(5), "b's use shipped", || async { live_rows(&db, second).await == 1 }).await;
    signal(&b.child, "KILL");
    b.child.wait().unwrap();
    // Dead, b's leases no longer move: the write-off must give back exactly what they hold.
    let stranded: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(held), 0)::bigint FROM quota_leases WHERE instance_id = 'node-b'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let auth = [("authorization", format!("Bearer {TOKEN}"))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // PostgreSQL lets the killed instance's lock go once it notices the session is gone, and
    // the write-off waits until b has been silent for its identity timeout.
    let mut off = client_a.request_with(Method::POST, "/admin/instances/node-b/write-off", "", &auth).await;
    for _ in 0..100 {
        if off.status != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        off = client_a.request_with(Method::POST, "/admin/instances/node-b/write-off", "", &auth).await;
    }
    assert_eq!(off.status, StatusCode::OK, "{}", off.text);
    assert_eq!(off.json()["unitsReturned"], stranded, "what b's leases held, no more, no less");
    let live = client_a.request_with(Method::POST, "/admin/instances/node-a/write-off", "", &auth).await;
    assert_eq!(live.status, StatusCode::CONFLICT, "a running instance is not written off");
    let mut sold_ten = 1;
    for n in 1..30 {
        let (status, _) = redeem_retrying(&client_a, &redeem_body("TEN", &format!("x-{n}"), &format!("x-{n}"))).await;
        if status == StatusCode::CREATED {
            sold_ten += 1;
        }
    }
    assert_eq!(sold_ten, 10, "everything b held is available again after the write-off");
    assert!(a.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_postgres_away_instances_sell_only_what_they_hold() {
    let db = TestDb::new().await;
    let coupon = insert_coupon(&db.pool, "OUTAGE", &[("usage_limit", "60")]).await;
    let proxies = [PgProxy::start(&db.url).await, PgProxy::start(&db.url).await];
    let mut apps = Vec::new();
    for proxy in &proxies {
        apps.push(TestApp::spawn_with(&proxy.url, &[]).await);
    }
    let mut sold = 0;
    for (i, app) in apps.iter().enumerate() {
        let (status, _) =
            redeem_retrying(&app.client, &redeem_body("OUTAGE", &format!("pre-{i}"), &format!("pre-{i}"))).await;
        assert_eq!(status, StatusCode::CREATED);
        sold += 1;
    }
    let (used_before, held) = quota(&db, 1, coupon).await;
    assert!(used_before + held <= 60);
    for proxy in &proxies {
        proxy.cut().await;
    }
    let mut during = 0;
    for (i, app) in apps.iter().enumerate() {
        for n in 0..100 {
            let response = app
                .client
                .post("/api/coupons/redeem", &redeem_body("OUTAGE", &format!("o{i}-{n}"), &format!("o{i}-{n}")))
                .await;
            match response.status {
                StatusCode::CREATED => during += 1,
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(response.json()["reason"], "QUOTA_UNAVAILABLE");
                    break;
                }
                other => panic!("unexpected {other}: {}", response.text),
            }
        }
    }
    assert!(during as i64 <= held, "sold {during} with PostgreSQL away, holding {held}");
    sold += during;
    for proxy in &proxies {
        proxy.restore().await;
    }
    let mut n = 0;
    loop {
        let app = &apps[n % 2];
        let (status, _) =
            redeem_retrying(&app.client, &redeem_body("OUTAGE", &format!("post-{n}"), &format!("post-{n}"))).await;
        n += 1;
        match status {
            StatusCode::CREATED => sold += 1,
            StatusCode::UNPROCESSABLE_ENTITY => break,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(sold, 60, "exact after the outage");
    eventually(Duration::from_secs(15), "nothing lost", || async { live_rows(&db, coupon).await == 60 }).await;
    for app in apps {
        app.stop().await.unwrap();
    }
}

#[test]
fn a_second_instance_with_the_same_id_refuses_to_start() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime.block_on(TestDb::new());
    let first = ServeProcess::start(&db.url, &[("INSTANCE_ID", "twin")]);
    let dir = data_dir("twin");
    let output = binary(
        &["serve"],
        &[("DATABASE_URL", &db.url), ("HTTP_ADDR", "127.0.0.1:0"), ("DATA_DIR", path(&dir)), ("INSTANCE_ID", "twin")],
    )
    .output()
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in use by another live instance"), "{stderr}");
    assert!(first.terminate().success());
}

/// A return asked again under its number (its first answer lost) answers what the first did
/// and gives nothing back twice; the next number applies.
#[tokio::test]
async fn a_lease_return_asked_again_is_applied_once() {
    let db = TestDb::new().await;
    let coupon = insert_coupon(&db.pool, "TEN", &[("usage_limit", "10")]).await;
    let sql = |q: &'static str| sqlx::query_scalar::<_, i64>(q).bind(coupon);
    sqlx::query("INSERT INTO quota_instances (instance_id) VALUES ('node-r')").execute(&db.pool).await.unwrap();
    let granted =
        sql("SELECT granted FROM quota_grant(1::smallint, $1, 'node-r', 1, 8, 1, 1)").fetch_one(&db.pool).await;
    assert_eq!(granted.unwrap(), 5, "half the free units");
    let give = "SELECT quota_return(1::smallint, $1, 'node-r', 1, 3, 1)";
    assert_eq!(sql(give).fetch_one(&db.pool).await.unwrap(), 3);
    assert_eq!(sql(give).fetch_one(&db.pool).await.unwrap(), 3, "the same answer again");
    assert_eq!(quota(&db, 1, coupon).await, (0, 2), "returned once");
    let next = "SELECT quota_return(1::smallint, $1, 'node-r', 1, 5, 2)";
    assert_eq!(sql(next).fetch_one(&db.pool).await.unwrap(), 2, "no more than the lease holds");
    assert_eq!(quota(&db, 1, coupon).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_use_of_a_cart_is_the_same_request_on_every_instance() {
    let db = TestDb::new().await;
    let apps = instances(&db, 2).await;
    insert_coupon(&db.pool, "CARTS", &[("usage_limit", "10")]).await;
    served_everywhere(&apps, "CARTS").await;
    let body = |unit_price: u32| {
        json!({"code": "CARTS", "userId": "u1", "orderId": "o-1", "currency": "USD",
               "items": [{"lineId": "1", "productId": "p-1", "quantity": 2, "unitPrice": unit_price}]})
    };
    // Claimed on the first instance (a limited coupon is claimed in PostgreSQL)...
    let (status, taken) = redeem_retrying(&apps[0].client, &body(20)).await;
    assert_eq!(status, StatusCode::CREATED, "{taken}");
    // ...the second finds the order's row with its fingerprint, through its own claim or the feed.
    let (status, again) = redeem_retrying(&apps[1].client, &body(20)).await;
    assert_eq!(
        (status, &again["redemptionId"], &again["currency"]),
        (StatusCode::OK, &taken["redemptionId"], &json!("USD"))
    );
    let (status, other) = redeem_retrying(&apps[1].client, &body(21)).await;
    assert_eq!((status, &other["reason"]), (StatusCode::CONFLICT, &json!("IDEMPOTENCY_MISMATCH")));
    // A hold of a cart confirmed elsewhere: the same cart confirms it, another does not.
    let hold = |unit_price: u32| {
        let mut b = body(unit_price);
        b["orderId"] = json!("o-2");
        b
    };
    let held = apps[0].client.post("/api/coupons/hold", &hold(20)).await;
    assert_eq!(held.status, StatusCode::CREATED, "{}", held.text);
    let (status, refused) = redeem_retrying(&apps[1].client, &hold(30)).await;
    assert_eq!((status, &refused["reason"]), (StatusCode::CONFLICT, &json!("IDEMPOTENCY_MISMATCH")));
    let (status, confirmed) = redeem_retrying(&apps[1].client, &hold(20)).await;
    assert_eq!((status, &confirmed["hold"]), (StatusCode::CREATED, &json!("confirmed")), "{confirmed}");
    let stored: (String, String) = sqlx::query_as(
        "SELECT currency, (allocation -> 0 ->> 'discount') FROM coupon_usage WHERE order_id = 'o-2' AND released_at IS NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(stored, ("USD".into(), "4".into()));
    for app in apps {
        app.stop().await.unwrap();
    }
}

/// Sets of codes racing on two instances sharing one database (API.md §10): each set is
/// claimed whole in PostgreSQL, so exactly as many sets as the limited code allows are taken,
/// every one of them whole, and a set retried on the other instance answers as its replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_racing_on_two_instances_are_taken_whole_and_within_the_limit() {
    let db = TestDb::new().await;
    let combines = ("combines_with", "'{item,order,shipping}'");
    insert_coupon(&db.pool, "SETTEN", &[("usage_limit", "10"), combines]).await;
    insert_coupon(&db.pool, "SETFREE", &[("discount_type", "'fixed'"), ("discount_value", "1"), combines]).await;
    let apps = instances(&db, 2).await;
    served_everywhere(&apps, "SETTEN").await;
    let tasks: Vec<_> = (0..40)
        .map(|n| {
            let client = apps[n % 2].client.clone();
            let body = json!({"codes": ["SETTEN", "SETFREE"], "userId": format!("u-{n}"), "orderId": format!("o-{n}"),
                              "orderValue": 50});
            tokio::spawn(async move { redeem_retrying(&client, &body).await.0 })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    let taken = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::UNPROCESSABLE_ENTITY).count();
    assert_eq!((taken, refused), (10, 30), "{statuses:?}");
    let sets: Vec<(i64,)> =
        sqlx::query_as("SELECT count(*) FROM coupon_usage WHERE order_id LIKE 'o-%' GROUP BY group_id ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(sets, vec![(2,); 10], "ten sets of two rows, each with its group id");
    // A set taken on one instance, sent again to the other: its replay, once the usage feed
    // has brought it there (a 503 until then).
    let body = json!({"codes": ["SETFREE"], "userId": "u-r", "orderId": "o-replay", "orderValue": 50});
    assert_eq!(redeem_retrying(&apps[0].client, &body).await.0, StatusCode::CREATED);
    assert_eq!(redeem_retrying(&apps[1].client, &body).await.0, StatusCode::OK);
    // Released whole by the instance that took it; elsewhere its uses would change through
    // PostgreSQL one by one: 503 there.
    let release = json!({"orderId": "o-replay", "allCodes": true});
    assert_eq!(apps[1].client.post("/api/coupons/release", &release).await.status, StatusCode::SERVICE_UNAVAILABLE);
    let released = apps[0].client.post("/api/coupons/release", &release).await;
    assert_eq!((released.status, released.json()["codes"].clone()), (StatusCode::OK, json!(["SETFREE"])));
    eventually(Duration::from_secs(10), "the release shipped", || async {
        let live: i64 =
            sqlx::query_scalar("SELECT count(*) FROM coupon_usage WHERE order_id = 'o-replay' AND released_at IS NULL")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        live == 0
    })
    .await;
    // Holding a set among instances is not built: 503, saying so.
    let hold = apps[0]
        .client
        .post(
            "/api/coupons/hold",
            &json!({"codes": ["SETFREE"], "userId": "u-h", "orderId": "o-h",
        "orderValue": 50}),
        )
        .await;
    assert_eq!(
        (hold.status, hold.json()["reason"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("QUOTA_UNAVAILABLE"))
    );
    for app in apps {
        app.stop().await.unwrap();
    }
}
