//! `loadgen log-scale`: the validation log at 100,000,000 rows. Fills a scratch database's
//! log (generated in PostgreSQL, day by day, with the per-hour counts the writer would have
//! added), starts the service on it and times the admin reads that must stay under 100 ms:
//! a code's statistics and the recent validations.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use sqlx::{Connection, PgConnection};

use crate::client::ServiceClient;
use crate::drills::{verdict, wait_until};
use crate::scratch::{Scratch, Service};

const TOKEN: &str = "loadgen-log-scale-admin-token";

#[derive(Debug, clap::Args)]
pub(crate) struct LogScaleArgs {
    /// The coupon-engine binary (it migrates the scratch database and serves it).
    #[arg(long, default_value = "target/release/coupon-engine")]
    service_bin: PathBuf,
    /// Rows logged in all.
    #[arg(long, default_value_t = 100_000_000)]
    rows: u64,
    /// Days they span, ending now.
    #[arg(long, default_value_t = 30)]
    days: u64,
    /// Distinct codes validated.
    #[arg(long, default_value_t = 500)]
    codes: u64,
    /// Keep the scratch database afterwards (its name is printed).
    #[arg(long)]
    keep: bool,
}

pub(crate) async fn log_scale(database_url: &str, args: LogScaleArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(args.rows > 0 && args.days > 0 && args.codes > 0, "--rows, --days and --codes must be positive");
    let scratch = Scratch::create(database_url, "log").await?;
    let result = run(&scratch, &args).await;
    if args.keep {
        println!("kept the scratch database: {}", scratch.url);
    } else {
        scratch.drop_now().await;
    }
    result
}

async fn run(scratch: &Scratch, args: &LogScaleArgs) -> anyhow::Result<bool> {
    let migrated = Command::new(&args.service_bin).arg("migrate").env("DATABASE_URL", &scratch.url).status()?;
    if !migrated.success() {
        bail!("coupon-engine migrate failed");
    }
    let mut db = PgConnection::connect(&scratch.url).await?;
    sqlx::query(
        "INSERT INTO coupons (code, type, discount_type, discount_value) \
         SELECT 'FILL-' || lpad(n::text, 5, '0'), 'time_specific', 'fixed', 5 FROM generate_series(0, $1 - 1) n",
    )
    .bind(i64::try_from(args.codes)?)
    .execute(&mut db)
    .await?;
    sqlx::query("SELECT validation_log_add_days((now() AT TIME ZONE 'UTC')::date - $1::int - 1, (now() AT TIME ZONE 'UTC')::date + 3)")
        .bind(i32::try_from(args.days)?)
        .execute(&mut db)
        .await?;
    let started = Instant::now();
    let per_day = args.rows / args.days;
    for day in 0..args.days {
        let n = if day + 1 == args.days { args.rows - per_day * (args.days - 1) } else { per_day };
        // Day `day` back from now, rows evenly spread over it; one in ten refused.
        sqlx::query(
            "INSERT INTO validation_log (validated_at, coupon_id, order_value, discount, final_amount, \
             response_time_us, reason, ip_address, coupon_code, user_id, order_id, user_agent) \
             SELECT now() - make_interval(days => $1::int + 1) + make_interval(secs => g * 86400.0 / $2), \
                    NULL, 10000, CASE WHEN g % 10 = 0 THEN 0 ELSE 500 END, CASE WHEN g % 10 = 0 THEN 10000 ELSE 9500 END, \
                    150, CASE WHEN g % 10 = 0 THEN 6 END, '127.0.0.1', 'FILL-' || lpad((g % $3)::text, 5, '0'), \
                    'user_' || (g % 1000000), NULL, 'loadgen log-scale' \
             FROM generate_series(0, $2 - 1) g",
        )
        .bind(i32::try_from(args.days - 1 - day)?)
        .bind(i64::try_from(n)?)
        .bind(i64::try_from(args.codes)?)
        .execute(&mut db)
        .await?;
        println!(
            "log-scale: day {} of {}: {} rows ({:.0} s so far)",
            day + 1,
            args.days,
            n,
            started.elapsed().as_secs_f64()
        );
    }
    // The counts the writer keeps beside the rows, one partition at a time.
    let parts: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'validation_log'::regclass ORDER BY 1",
    )
    .fetch_all(&mut db)
    .await?;
    for part in &parts {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "INSERT INTO validation_counts (hour, coupon_code, reason, count, last_at) \
             SELECT date_trunc('hour', validated_at), coupon_code, coalesce(reason, 0), count(*), max(validated_at) \
             FROM {part} GROUP BY 1, 2, 3"
        )))
        .execute(&mut db)
        .await?;
    }
    sqlx::raw_sql("VACUUM ANALYZE validation_log, validation_counts").execute(&mut db).await?;
    let size: String =
        sqlx::query_scalar("SELECT pg_size_pretty(sum(pg_total_relation_size(inhrelid))) FROM pg_inherits WHERE inhparent IN ('validation_log'::regclass, 'validation_counts'::regclass)")
            .fetch_one(&mut db)
            .await?;
    println!(
        "log-scale: {} rows over {} days in {:.0} s; the log and its counts take {size}",
        args.rows,
        args.days,
        started.elapsed().as_secs_f64()
    );

    let data_dir = std::env::temp_dir().join(format!("loadgen-log-scale-{}", std::process::id()));
    let service = Service::start(&args.service_bin, &scratch.url, &data_dir, &[("ADMIN_TOKEN", TOKEN)])?;
    let measured = measure(&service, args).await;
    service.stop();
    let _ = std::fs::remove_dir_all(&data_dir);
    measured
}

async fn measure(service: &Service, args: &LogScaleArgs) -> anyhow::Result<bool> {
    let admin = ServiceClient::new(&format!("http://{}", service.addr)).with_token(TOKEN);
    wait_until(Duration::from_secs(120), "the service to be ready", || async {
        admin.get_json("/health/ready").await.ok().filter(|r| r["ready"] == true)
    })
    .await?;
    let mut ok = true;
    for (what, path) in [
        ("statistics of one code", "/admin/coupons/FILL-00042/stats".to_owned()),
        ("100 recent validations", "/admin/validations/recent?limit=100".to_owned()),
    ] {
        let mut slowest = Duration::ZERO;
        let mut answer = serde_json::Value::Null;
        for _ in 0..5 {
            let started = Instant::now();
            answer = admin.get_json(&path).await?;
            slowest = slowest.max(started.elapsed());
        }
        let sane = match what {
            // Each day spreads its rows over the codes round-robin: a code gets its share, ±1 a day.
            "statistics of one code" => {
                answer["total"].as_u64().is_some_and(|total| total.abs_diff(args.rows / args.codes) <= args.days)
            }
            _ => answer["validations"].as_array().is_some_and(|rows| rows.len() == 100),
        };
        ok &= verdict(sane, &format!("{what}: the answer is whole ({})", preview(&answer)));
        ok &= verdict(
            slowest < Duration::from_millis(100),
            &format!(
                "{what} with {} rows logged: slowest of 5 in {:.1} ms (budget 100 ms)",
                args.rows,
                slowest.as_secs_f64() * 1e3
            ),
        );
    }
    Ok(ok)
}

fn preview(answer: &serde_json::Value) -> String {
    let text = answer.to_string();
    text.chars().take(120).collect()
}
