//! Propagation drill: commit coupon changes in SQL and time how long until the service
//! answers with them (budget: median ≤ 100 ms).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::client::ServiceClient;

/// The coupon the drill owns and rewrites.
const PROBE: &str = "LOADGEN-PROPAGATION-PROBE";
const BUDGET_MEDIAN: Duration = Duration::from_millis(100);

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// How many changes to commit and time.
    #[arg(long, default_value_t = 200)]
    changes: u32,
    /// Give up on one change after this long.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

pub(crate) async fn run(url: &str, database_url: &str, args: Args) -> anyhow::Result<()> {
    let mut db = PgConnection::connect(database_url).await.context("connect to DATABASE_URL")?;
    let client = ServiceClient::new(url);
    // Own a fixed-discount coupon whose discount is the change we look for.
    sqlx::query(
        "INSERT INTO coupons (code, type, status, discount_type, discount_value) \
         VALUES ($1, 'time_specific', 'active', 'fixed', 1) \
         ON CONFLICT (code) DO UPDATE SET status = 'active', discount_type = 'fixed', discount_value = 1, \
         max_discount = NULL, min_order_value = 0, usage_limit = NULL, per_user_limit = NULL, user_id = NULL, \
         valid_from = NULL, valid_until = NULL",
    )
    .bind(PROBE)
    .execute(&mut db)
    .await?;
    let timeout = Duration::from_millis(args.timeout_ms);
    wait_for_discount(&client, 100, timeout).await.context("the service never saw the probe coupon")?;

    let mut samples = Vec::with_capacity(args.changes as usize);
    for n in 1..=args.changes {
        // A distinct whole-unit discount each time: 2.00, 3.00, ...
        let cents = 100 * (u64::from(n) % 10_000 + 2);
        sqlx::query("UPDATE coupons SET discount_value = $1::bigint::numeric / 100 WHERE code = $2")
            .bind(i64::try_from(cents)?)
            .bind(PROBE)
            .execute(&mut db)
            .await?;
        // The statement ran in autocommit: when it returns, the change is committed.
        let committed = Instant::now();
        wait_for_discount(&client, cents, timeout).await.with_context(|| format!("change {n} never arrived"))?;
        samples.push(committed.elapsed());
    }
    report(&mut samples);
    Ok(())
}

async fn wait_for_discount(client: &ServiceClient, cents: u64, timeout: Duration) -> anyhow::Result<()> {
    let expected = json!(cents / 100);
    let body = json!({"code": PROBE, "userId": "loadgen", "orderValue": 100_000});
    let deadline = Instant::now() + timeout;
    loop {
        // A service still starting answers 503: that is "not yet", like an old answer.
        let answer = client.validate(&body).await;
        if answer.as_ref().is_ok_and(|a| a["discount"] == expected) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("still {answer:?} after {timeout:?}");
        }
        if answer.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn report(samples: &mut [Duration]) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = pick(0.5);
    println!("propagation: COMMIT → first answer with the change, {} changes", samples.len());
    println!("  min     {:>8.2} ms", ms(samples[0]));
    println!("  median  {:>8.2} ms", ms(median));
    println!("  p90     {:>8.2} ms", ms(pick(0.9)));
    println!("  p99     {:>8.2} ms", ms(pick(0.99)));
    println!("  max     {:>8.2} ms", ms(samples[samples.len() - 1]));
    let verdict = if median <= BUDGET_MEDIAN { "PASS" } else { "FAIL" };
    println!("{verdict}: median {:.2} ms against a budget of {} ms", ms(median), BUDGET_MEDIAN.as_millis());
}
