//! Every validate call becomes one `validation_logs` row, written behind the request, and
//! nothing is lost while PostgreSQL is away.

use std::time::Duration;

use hyper::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{PgProxy, QUICK_OUTAGES, TestApp, TestDb, eventually, insert_coupon};

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct LogRow {
    coupon_code: String,
    coupon_id: Option<i64>,
    user_id: String,
    order_id: Option<String>,
    order_value: String,
    is_valid: bool,
    validation_reason: Option<String>,
    discount: String,
    final_amount: String,
    ip: Option<String>,
    user_agent: Option<String>,
    timed: bool,
}

async fn log_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM validation_logs").fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_carry_what_the_client_was_told() {
    let db = TestDb::new().await;
    let id = insert_coupon(&db.pool, "TEN", &[("min_order_value", "20")]).await;
    let app = TestApp::spawn(&db).await;
    let headers = [("user-agent", "checkout-test/1.0")];
    let valid = json!({"code": "ten", "userId": "user_1", "orderValue": 100.5, "orderId": "ord-7"});
    let response =
        app.client.request_with(hyper::Method::POST, "/api/coupons/validate", valid.to_string(), &headers).await;
    assert_eq!(response.status, StatusCode::OK);
    app.client.validate(json!({"code": "TEN", "userId": "user_2", "orderValue": 10})).await;
    app.client.validate(json!({"code": "MISSING", "userId": "user_3", "orderValue": 10})).await;
    // Refused input is not a validation and is not logged.
    let bad = app.client.post("/api/coupons/validate", &json!({"code": "TEN"})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    eventually(Duration::from_secs(10), "3 log rows", || async { log_count(&db.pool).await == 3 }).await;
    let rows: Vec<LogRow> = sqlx::query_as(
        "SELECT coupon_code, coupon_id, user_id, order_id, round(order_value, 2)::text AS order_value, is_valid, \
         validation_reason, round(discount_applied, 2)::text AS discount, round(final_amount, 2)::text AS final_amount, \
         host(ip_address) AS ip, user_agent, \
         response_time_ms >= 0 AS timed FROM validation_logs ORDER BY user_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let expected = LogRow {
        coupon_code: "TEN".into(),
        coupon_id: Some(id),
        user_id: "user_1".into(),
        order_id: Some("ord-7".into()),
        order_value: "100.50".into(),
        is_valid: true,
        validation_reason: None,
        discount: "10.05".into(),
        final_amount: "90.45".into(),
        ip: Some("127.0.0.1".into()),
        user_agent: Some("checkout-test/1.0".into()),
        timed: true,
    };
    assert_eq!(rows[0], expected);
    assert_eq!(
        (rows[1].is_valid, rows[1].validation_reason.as_deref(), rows[1].final_amount.as_str()),
        (false, Some("MIN_ORDER_VALUE_NOT_MET"), "10.00")
    );
    assert_eq!(
        (rows[2].coupon_code.as_str(), rows[2].coupon_id, rows[2].validation_reason.as_deref()),
        ("MISSING", None, Some("COUPON_NOT_FOUND"))
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_delays_rows_but_loses_none() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    let proxy = PgProxy::start(&db.url).await;
    let app = TestApp::spawn_with(&proxy.url, &QUICK_OUTAGES).await;

    proxy.cut().await;
    eventually(Duration::from_secs(5), "health says degraded", || async {
        let health = app.client.get("/health").await.json();
        health["status"] == "degraded" && health["database"] == "down"
    })
    .await;
    for n in 0..200 {
        let response =
            app.client.validate(json!({"code": "TEN", "userId": format!("user_{n}"), "orderValue": 10})).await;
        assert_eq!(response["valid"], true, "validations keep succeeding during the outage");
    }
    let health = app.client.get("/health").await.json();
    assert_eq!(health["validationLogQueueSize"], 200, "{health}");
    assert_eq!(log_count(&db.pool).await, 0);

    proxy.restore().await;
    eventually(Duration::from_secs(10), "all 200 rows written", || async { log_count(&db.pool).await == 200 }).await;
    eventually(Duration::from_secs(5), "health says healthy", || async {
        let health = app.client.get("/health").await.json();
        health["status"] == "healthy" && health["validationLogQueueSize"] == 0
    })
    .await;
    let metrics = app.client.get("/metrics").await.text;
    assert!(metrics.contains(r#"write_behind_rows_total{table="validation_logs",outcome="written"} 200"#), "{metrics}");
    assert!(metrics.contains(r#"write_behind_rows_total{table="validation_logs",outcome="dropped"} 0"#), "{metrics}");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spilled_rows_keep_to_their_disk_budget_and_the_rest_are_counted_dropped() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    let proxy = PgProxy::start(&db.url).await;
    // Ten rows wait in memory; past them rows spill while the journal holds 8 KiB unshipped.
    let settings = [
        &QUICK_OUTAGES[..],
        &[("COUPON__VALIDATION_LOG__QUEUE_CAPACITY", "10"), ("COUPON__VALIDATION_LOG__SPILL_MAX_BYTES", "8192")],
    ]
    .concat();
    let app = TestApp::spawn_with(&proxy.url, &settings).await;
    proxy.cut().await;
    eventually(Duration::from_secs(5), "health says the database is down", || async {
        app.client.get("/health").await.json()["database"] == "down"
    })
    .await;
    for n in 0..300 {
        let response =
            app.client.validate(json!({"code": "TEN", "userId": format!("user_{n}"), "orderValue": 10})).await;
        assert_eq!(response["valid"], true, "validations keep succeeding while rows are dropped");
    }
    let series =
        |outcome: &'static str| format!(r#"write_behind_rows_total{{table="validation_logs",outcome="{outcome}"}}"#);
    let (spilled, dropped) = (app.client.metric(&series("spilled")).await, app.client.metric(&series("dropped")).await);
    // A spilled row is some 250 bytes framed: about 30 fit in 8 KiB (29 in a run); the writer
    // holds what it took from the queue before PostgreSQL went away (some 50 rows in a run).
    assert!((20.0..=40.0).contains(&spilled), "spilled {spilled}");
    assert!(dropped >= 150.0, "dropped {dropped}");
    let health = app.client.get("/health").await.json();
    assert_eq!(
        (&health["status"], &health["budgetsSpent"]),
        (&json!("degraded"), &json!(["validation_log.spill_max_bytes"]))
    );
    // Uses are never held to the spill's budget: a redemption is journalled past it.
    let redeemed = app.client.post("/api/coupons/redeem", &crate::helpers::redeem_body("TEN", "u", "o-outage")).await;
    assert_eq!(redeemed.status, hyper::StatusCode::CREATED, "{}", redeemed.text);
    proxy.restore().await;
    eventually(Duration::from_secs(15), "every row kept is written", || async {
        log_count(&db.pool).await as f64 + dropped == 300.0
    })
    .await;
    eventually(Duration::from_secs(5), "the budget free again", || async {
        app.client.get("/health").await.json()["budgetsSpent"] == json!([])
    })
    .await;
    app.stop().await.unwrap();
}

/// The partitions of the log and of its counts, by day (YYYYMMDD).
async fn partition_days(pool: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT right(c.relname, 8) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = $1 ORDER BY 1",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_days_leave_as_whole_partitions_and_days_ahead_are_ready() {
    use chrono::{Days, NaiveDate};
    let db = TestDb::new().await;
    let today: NaiveDate = chrono::Utc::now().date_naive();
    let day = |n: i64| {
        let d = if n < 0 { today - Days::new(n.unsigned_abs()) } else { today + Days::new(n as u64) };
        d.format("%Y%m%d").to_string()
    };
    // Forty days of rows, three a day, and their counts.
    sqlx::query("SELECT validation_log_add_days($1, $2)")
        .bind(today - Days::new(39))
        .bind(today)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO validation_log (validated_at, order_value, discount, final_amount, response_time_us, coupon_code, user_id) \
         SELECT $1::date + make_interval(days => -d, hours => h), 100, 0, 100, 1, 'OLD', 'u' \
         FROM generate_series(0, 39) d, generate_series(1, 3) h",
    )
    .bind(today)
    .execute(&db.pool)
    .await
    .unwrap();
    let kept = coupon_engine::db::log_retention::keep(&db.pool, today, 30).await.unwrap();
    assert_eq!(kept.dropped, 9, "the nine days before today and the thirty before it");
    let logged = partition_days(&db.pool, "validation_log").await;
    assert_eq!((logged.first().cloned(), logged.last().cloned()), (Some(day(-30)), Some(day(3))));
    assert_eq!(partition_days(&db.pool, "validation_counts").await, logged);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM validation_logs").fetch_one(&db.pool).await.unwrap();
    assert_eq!(rows, 31 * 3, "the kept days' rows, untouched");
    // Again: nothing to do.
    let again = coupon_engine::db::log_retention::keep(&db.pool, today, 30).await.unwrap();
    assert_eq!((again.created, again.dropped), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_long_downtime_the_writer_makes_the_day_it_needs() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    // As if the service had been down for longer than the days made ahead: no partition at all.
    sqlx::query("SELECT validation_log_drop_before('3000-01-01')").execute(&db.pool).await.unwrap();
    assert!(partition_days(&db.pool, "validation_log").await.is_empty());
    let app = TestApp::spawn(&db).await;
    app.client.validate(json!({"code": "TEN", "userId": "u", "orderValue": 100})).await;
    eventually(Duration::from_secs(10), "the row to be logged", || async { log_count(&db.pool).await == 1 }).await;
    let today = chrono::Utc::now().date_naive().format("%Y%m%d").to_string();
    assert!(partition_days(&db.pool, "validation_log").await.contains(&today));
    // Dropped by hand behind the writer's back, the day comes back on the next write.
    sqlx::query("SELECT validation_log_drop_before('3000-01-01')").execute(&db.pool).await.unwrap();
    app.client.validate(json!({"code": "TEN", "userId": "u", "orderValue": 100})).await;
    eventually(Duration::from_secs(10), "the next row to be logged", || async { log_count(&db.pool).await == 1 }).await;
    let stats: (i64, i64) = sqlx::query_as("SELECT count(*), coalesce(sum(count), 0)::bigint FROM validation_counts")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stats.1, 1, "the counts were written with the row");
    app.stop().await.unwrap();
}

/// Rows of two days, out of order, spilled into the journal (as in an outage that spans
/// midnight) and shipped at the next start: each lands in its own day's partition, which
/// the writer COPYs into directly, with its count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_two_days_land_in_their_own_partitions() {
    use coupon_engine::domain::event::{Event, Validated};
    use coupon_engine::domain::money::Cents;
    use coupon_engine::journal::Journal;
    let db = TestDb::new().await;
    let midnight = chrono::Utc::now().date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let row = |at: chrono::DateTime<chrono::Utc>| Validated {
        coupon_code: "NIGHT".into(),
        coupon_id: None,
        user_id: "u".into(),
        order_id: None,
        order_value: Cents::new(100).unwrap(),
        reason: None,
        discount: Cents::ZERO,
        final_amount: Cents::new(100).unwrap(),
        ip_address: None,
        user_agent: None,
        response_time_us: 1,
        validated_at: at,
    };
    let data_dir_temp = crate::helpers::temp_dir("coupon-engine-test-");
    let data_dir = data_dir_temp.path().to_owned();
    {
        let (journal, _reader) =
            Journal::open(&data_dir.join("journal"), 0, coupon_engine::metrics::Metrics::new(&[]).journal)
                .expect("journal");
        for at in [
            midnight - chrono::Duration::microseconds(2),
            midnight,
            midnight - chrono::Duration::microseconds(1),
            midnight + chrono::Duration::seconds(1),
        ] {
            journal.append(&Event::Validated(row(at)).encode()).await.expect("appended");
        }
    }
    let app = TestApp::spawn_with(&db.url, &[("DATA_DIR", &data_dir.display().to_string())]).await;
    let by_partition: Vec<(String, i64)> =
        sqlx::query_as("SELECT tableoid::regclass::text, count(*) FROM validation_log GROUP BY 1 ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let day = |d: chrono::NaiveDate| format!("validation_log_{}", d.format("%Y%m%d"));
    let today = midnight.date_naive();
    assert_eq!(by_partition, vec![(day(today.pred_opt().unwrap()), 2), (day(today), 2)]);
    let counted: Vec<(chrono::DateTime<chrono::Utc>, i64)> =
        sqlx::query_as("SELECT hour, count FROM validation_counts WHERE coupon_code = 'NIGHT' ORDER BY hour")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(counted, vec![(midnight - chrono::Duration::hours(1), 2), (midnight, 2)]);
    app.stop().await.unwrap();
}

/// The log's partitions take no insert-driven autovacuum (an append-only log dropped whole
/// after retention gains nothing from it) and no autosummarize (the service summarizes);
/// the counts, updated in place, keep autovacuum's defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_partitions_take_no_insert_driven_vacuum() {
    let db = TestDb::new().await;
    let today = chrono::Utc::now().date_naive();
    coupon_engine::db::log_retention::keep(&db.pool, today, 30).await.unwrap();
    let options: Vec<(String, Option<Vec<String>>)> = sqlx::query_as(
        "SELECT p.relname::text, c.reloptions::text[] FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname IN ('validation_log', 'validation_counts')",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(options.len() >= 2 * 4, "yesterday to three days ahead, for both tables: {options:?}");
    for (parent, reloptions) in options {
        let off = reloptions.is_some_and(|o| o.contains(&"autovacuum_vacuum_insert_threshold=-1".to_owned()));
        assert_eq!(off, parent == "validation_log", "{parent}");
    }
    let summarized_by_autovacuum: Vec<Option<Vec<String>>> = sqlx::query_scalar(
        "SELECT c.reloptions::text[] FROM pg_inherits i JOIN pg_class c ON c.oid = validation_log_brin(i.inhrelid) \
         WHERE i.inhparent = 'validation_log'::regclass",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(!summarized_by_autovacuum.is_empty());
    for reloptions in summarized_by_autovacuum {
        assert!(reloptions.is_some_and(|o| o.contains(&"autosummarize=off".to_owned())), "the service summarizes");
    }
}

/// Heap blocks a BRIN scan of the log reads for validations in `[from, to)`: 0 when every
/// range is summarized and none holds such a time; an unsummarized range is always read.
async fn blocks_read_for_window(
    pool: &PgPool,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> i64 {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET enable_seqscan = off").execute(&mut *conn).await.unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT * FROM validation_log WHERE validated_at >= $1 AND validated_at < $2",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert!(plan.iter().any(|line| line.contains("Bitmap Index Scan")), "read through the BRIN index: {plan:?}");
    plan.iter()
        .filter_map(|line| line.trim().strip_prefix("Heap Blocks:"))
        .flat_map(|counts| counts.split_whitespace())
        .filter_map(|count| count.split_once('=').and_then(|(_, n)| n.parse::<i64>().ok()))
        .sum()
}

/// The service summarizes the day's BRIN ranges as it fills (autosummarize is off): soon
/// after rows arrive, a read for a time none of them has reads no heap block at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_ranges_are_summarized_as_the_day_fills() {
    let db = TestDb::new().await;
    insert_coupon(&db.pool, "TEN", &[]).await;
    let app = TestApp::spawn(&db).await;
    // A window before the rows that is not empty: not in the day's first second.
    if chrono::Utc::now().time() < chrono::NaiveTime::from_hms_opt(0, 0, 2).unwrap() {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let before = chrono::Utc::now();
    let midnight = before.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let started = chrono::Utc::now();
    // Rows past the first range of 16 pages (about 70 rows fit on one), which a new BRIN
    // index summarizes from the start: the ranges after it start unsummarized.
    for n in 0..4000 {
        app.client.validate(json!({"code": "TEN", "userId": format!("u{n}"), "orderValue": 100})).await;
    }
    eventually(Duration::from_secs(10), "the rows to be logged", || async { log_count(&db.pool).await == 4000 }).await;
    assert!(
        sqlx::query_scalar::<_, i64>("SELECT pg_relation_size(validation_log_partition($1::date)) / 8192")
            .bind(started.date_naive())
            .fetch_one(&db.pool)
            .await
            .unwrap()
            > 16,
        "rows past the first range"
    );
    eventually(Duration::from_secs(10), "the new ranges to be summarized", || async {
        blocks_read_for_window(&db.pool, midnight, before).await == 0
    })
    .await;
    assert!(
        blocks_read_for_window(&db.pool, started, started + chrono::Duration::hours(1)).await > 0,
        "the rows are found"
    );
    // Emptied behind the summarizer's back and filled again to less than before (its next
    // block is now past the end), the day is summarized again from its start.
    let truncate: String = sqlx::query_scalar("SELECT format('TRUNCATE %I', validation_log_partition($1::date))")
        .bind(started.date_naive())
        .fetch_one(&db.pool)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(truncate)).execute(&db.pool).await.unwrap();
    let refilled = chrono::Utc::now();
    for n in 0..2000 {
        app.client.validate(json!({"code": "TEN", "userId": format!("v{n}"), "orderValue": 100})).await;
    }
    eventually(Duration::from_secs(10), "the new rows to be logged", || async { log_count(&db.pool).await == 2000 })
        .await;
    eventually(Duration::from_secs(10), "the refilled day to be summarized", || async {
        blocks_read_for_window(&db.pool, midnight, refilled).await == 0
    })
    .await;
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reason_codes_in_the_database_are_the_engine_reasons() {
    use coupon_engine::domain::rules::Reason;
    let db = TestDb::new().await;
    let stored: Vec<(i16, String)> =
        sqlx::query_as("SELECT code, name FROM validation_reasons ORDER BY code").fetch_all(&db.pool).await.unwrap();
    let mut engine: Vec<(i16, String)> = Reason::ALL
        .iter()
        .map(|r| (coupon_engine::db::validation_log::reason_code(Some(*r)).unwrap(), r.as_str().to_owned()))
        .collect();
    engine.sort();
    assert_eq!(stored, engine);
}
