//! `coupon-engine seed`: refuses a non-empty database, is deterministic, `--force` replaces.

use crate::helpers::{TestDb, binary};

fn seed(db: &TestDb, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["seed", "--users", "2000", "--coupons", "100", "--usage", "60", "--rng-seed", "9"];
    args.extend_from_slice(extra);
    binary(&args, &[("DATABASE_URL", &db.url)]).output().expect("run seed")
}

async fn fingerprint(db: &TestDb) -> (i64, i64, i64, String) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM coupons), (SELECT count(*) FROM coupon_usage), \
         (SELECT md5(string_agg(concat_ws('|', id, code, type, status, discount_type, discount_value, max_discount, \
         min_order_value, usage_limit, per_user_limit, user_id, valid_from, valid_until), ',' ORDER BY id)) FROM coupons)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_deterministically_and_refuses_to_overwrite() {
    let (first, second) = (TestDb::new().await, TestDb::new().await);
    for db in [&first, &second] {
        let output = seed(db, &[]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let print = fingerprint(&first).await;
    assert_eq!((print.0, print.1, print.2), (2000, 100, 60));
    assert_eq!(print, fingerprint(&second).await, "same seed, same data");
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM coupons GROUP BY status ORDER BY status")
            .fetch_all(&first.pool)
            .await
            .unwrap();
    assert_eq!(statuses, vec![("active".into(), 60), ("expired".into(), 25), ("inactive".into(), 15)]);
    let expired_in_future: i64 =
        sqlx::query_scalar("SELECT count(*) FROM coupons WHERE status = 'expired' AND NOT valid_until < now()")
            .fetch_one(&first.pool)
            .await
            .unwrap();
    assert_eq!(expired_in_future, 0);

    let refused = seed(&first, &[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    assert_eq!(fingerprint(&first).await, print, "a refused seed changes nothing");

    let forced = seed(&first, &["--force"]);
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));
    assert_eq!(fingerprint(&first).await, print);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_codes_are_seeded_as_a_generated_batch() {
    let db = TestDb::new().await;
    let output = seed(&db, &["--campaign-codes", "5000"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let (status, produced, codes, shaped): (String, i32, i64, i64) = sqlx::query_as(
        "SELECT b.status, b.produced, (SELECT count(*) FROM batch_codes), \
         (SELECT count(*) FROM batch_codes WHERE code ~ '^SEED-[2-9A-HJ-NP-Z]{9}$') \
         FROM code_batches b JOIN campaigns c ON c.id = b.campaign_id WHERE c.name = 'seed-campaign'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), produced, codes, shaped), ("done", 5000, 5000, 5000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cart_coupons_are_seeded_over_the_catalogue() {
    let db = TestDb::new().await;
    let output = seed(&db, &["--cart-coupons", "10"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let kinds: Vec<(String, i64)> = sqlx::query_as(
        "SELECT discount_type, count(*) FROM coupons WHERE code LIKE 'CART-%' GROUP BY discount_type ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        kinds,
        [
            ("buy_x_get_y".into(), 2),
            ("fixed".into(), 2),
            ("fixed_price".into(), 2),
            ("free_shipping".into(), 2),
            ("percentage".into(), 2)
        ]
    );
    let scoped: i64 = sqlx::query_scalar("SELECT count(*) FROM coupons WHERE scope ? 'includeCategories'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(scoped, 6, "percentages, fixed prices and buy-X-get-Y are by category");
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM coupons").fetch_one(&db.pool).await.unwrap(),
        110,
        "beside the reference set's coupons"
    );
}
