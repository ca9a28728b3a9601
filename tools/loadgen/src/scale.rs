//! `loadgen scale`: the service at a million coupons. Creates a scratch database beside
//! DATABASE_URL's, fills it, starts the service binary on it and measures start-up time,
//! resident memory, and how long a statement changing 100,000 coupons takes to be served
//! (without a full reload). The scratch database is dropped at the end.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::client::ServiceClient;
use crate::scratch::{Scratch, Service};

#[derive(Debug, clap::Args)]
pub(crate) struct ScaleArgs {
    /// Coupon rows in the scratch database.
    #[arg(long, default_value_t = 1_000_000)]
    coupons: u64,
    /// Rows changed by one statement while the service runs.
    #[arg(long, default_value_t = 100_000)]
    changed: u64,
    /// The coupon-engine binary.
    #[arg(long, default_value = "target/release/coupon-engine")]
    service_bin: PathBuf,
    /// Budgets: start-up load, resident memory, the change seen.
    #[arg(long, default_value_t = 5.0)]
    max_start_secs: f64,
    #[arg(long, default_value_t = 1024.0)]
    max_rss_mib: f64,
    #[arg(long, default_value_t = 1.0)]
    max_change_secs: f64,
}

pub(crate) async fn scale(database_url: &str, args: ScaleArgs) -> anyhow::Result<bool> {
    if !args.service_bin.exists() {
        bail!("{} not found: build it with cargo build --release", args.service_bin.display());
    }
    let scratch = Scratch::create(database_url, "scale").await?;
    let outcome = run(&scratch, &args).await;
    scratch.drop_now().await;
    outcome
}

async fn run(scratch: &Scratch, args: &ScaleArgs) -> anyhow::Result<bool> {
    let migrated = Command::new(&args.service_bin).arg("migrate").env("DATABASE_URL", &scratch.url).status()?;
    if !migrated.success() {
        bail!("coupon-engine migrate failed");
    }
    let mut db = PgConnection::connect(&scratch.url).await?;
    let filled = Instant::now();
    // A mix like the reference set's: kinds, statuses, discounts, limits, windows.
    sqlx::query(
        "INSERT INTO coupons (code, type, status, discount_type, discount_value, max_discount, min_order_value, \
         usage_limit, per_user_limit, valid_from, valid_until) \
         SELECT 'SCALE-' || g, 'time_specific', \
                CASE WHEN g % 20 = 0 THEN 'inactive' ELSE 'active' END, \
                CASE WHEN g % 2 = 0 THEN 'percentage' ELSE 'fixed' END, \
                (g % 50) + 1, CASE WHEN g % 4 = 0 THEN 50 END, (g % 5) * 10, \
                CASE WHEN g % 3 = 0 THEN 1000 END, CASE WHEN g % 7 = 0 THEN 2 END, \
                now() - interval '1 day', now() + interval '30 days' \
         FROM generate_series(1, $1) g",
    )
    .bind(i64::try_from(args.coupons)?)
    .execute(&mut db)
    .await?;
    sqlx::query("ANALYZE coupons").execute(&mut db).await?;
    println!("scale: {} coupon rows written in {:.1} s", args.coupons, filled.elapsed().as_secs_f64());

    let data_dir = std::env::temp_dir().join(format!("loadgen-scale-{}", std::process::id()));
    let service = Service::start(&args.service_bin, &scratch.url, &data_dir, &[])?;
    let outcome = measure(&service, &mut db, args).await;
    service.stop();
    let _ = std::fs::remove_dir_all(&data_dir);
    outcome
}

async fn measure(service: &Service, db: &mut PgConnection, args: &ScaleArgs) -> anyhow::Result<bool> {
    let client = ServiceClient::new(&format!("http://{}", service.addr));
    let started = Instant::now();
    crate::drills::wait_until(Duration::from_secs(120), "the service to be ready", || async {
        client.get_json("/health/ready").await.ok().filter(|r| r["ready"] == true).map(drop)
    })
    .await?;
    let to_ready = started.elapsed();
    let loaded = service.log("cache loaded").context("no \"cache loaded\" log line")?;
    let load_ms = loaded["elapsed_ms"].as_f64().unwrap_or(f64::NAN);
    let rss = client.metric("process_resident_memory_bytes").await? / (1024.0 * 1024.0);
    println!(
        "scale: {} coupons loaded in {:.2} s ({} ms by the service's own count; {:.2} s from exec to ready); resident memory {rss:.0} MiB",
        loaded["coupons"],
        load_ms / 1000.0,
        load_ms,
        to_ready.as_secs_f64()
    );

    // One statement changes `changed` coupons; the first and the last of them are watched.
    let reloads_before = client.metric("cache_reloads_total").await?;
    let watched = ["SCALE-1".to_owned(), format!("SCALE-{}", args.changed)];
    let statement = Instant::now();
    sqlx::query("UPDATE coupons SET status = 'expired' WHERE id <= $1")
        .bind(i64::try_from(args.changed)?)
        .execute(&mut *db)
        .await?;
    let committed = Instant::now();
    println!(
        "scale: the UPDATE of {} rows took {:.0} ms in PostgreSQL",
        args.changed,
        (committed - statement).as_secs_f64() * 1000.0
    );
    let seen = crate::drills::wait_until(Duration::from_secs(30), "the change to be served", || async {
        for code in &watched {
            let answer = client.validate(&json!({"code": code, "userId": "scale", "orderValue": 100})).await.ok()?;
            if answer["reason"] != "COUPON_EXPIRED" {
                return None;
            }
        }
        Some(committed.elapsed())
    })
    .await?;
    let reloads_after = client.metric("cache_reloads_total").await?;
    let untouched = client
        .validate(&json!({"code": format!("SCALE-{}", args.changed + 2), "userId": "scale", "orderValue": 100}))
        .await?;
    println!(
        "scale: {} rows changed by one statement, served {:.0} ms after COMMIT; full reloads meanwhile: {}",
        args.changed,
        seen.as_secs_f64() * 1000.0,
        reloads_after - reloads_before
    );
    let mut ok = crate::drills::verdict(
        load_ms / 1000.0 <= args.max_start_secs,
        &format!("start-up load {:.2} s (budget ≤ {} s)", load_ms / 1000.0, args.max_start_secs),
    );
    ok &= crate::drills::verdict(
        rss < args.max_rss_mib,
        &format!("resident memory {rss:.0} MiB (budget < {} MiB)", args.max_rss_mib),
    );
    ok &= crate::drills::verdict(
        seen.as_secs_f64() <= args.max_change_secs,
        &format!(
            "{} changed coupons served in {:.2} s (budget ≤ {} s)",
            args.changed,
            seen.as_secs_f64(),
            args.max_change_secs
        ),
    );
    ok &= crate::drills::verdict(reloads_after == reloads_before, "the change was applied without a full reload");
    ok &= crate::drills::verdict(untouched["reason"] != "COUPON_EXPIRED", "coupons outside the statement unchanged");
    Ok(ok)
}
