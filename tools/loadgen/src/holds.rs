//! `loadgen holds`: the checkout-hold budgets and the expiry drill, against a service it
//! starts on DATABASE_URL's database. Takes `--holds` holds at 100 connections (throughput
//! and p99 of a hold), timed so that every one expires in the same second; confirms some and
//! cancels some; keeps validations running across that second (their p99 before and during
//! it); measures how long after the second the last use is back; and checks that no use was
//! lost or counted twice, in the service and in PostgreSQL.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use chrono::Utc;
use hdrhistogram::Histogram;
use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::client::ServiceClient;
use crate::conn::Conn;
use crate::drills::{verdict, wait_until};
use crate::scratch::Service;

const TOKEN: &str = "loadgen-holds-admin-token";

#[derive(Debug, clap::Args)]
pub(crate) struct HoldsArgs {
    /// The coupon-engine binary; the drill starts it on a free loopback port and stops it.
    #[arg(long, default_value = "target/release/coupon-engine")]
    service_bin: PathBuf,
    /// Holds taken, all expiring in the same second unless confirmed or cancelled (by
    /// default 100,000 of them expire).
    #[arg(long, default_value_t = 125_000)]
    holds: u64,
    /// Connections taking the holds.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Holds confirmed by a redeem before their deadline, in percent.
    #[arg(long, default_value_t = 10)]
    confirm_percent: u64,
    /// Holds cancelled by a release before their deadline, in percent.
    #[arg(long, default_value_t = 10)]
    cancel_percent: u64,
    /// Validations a second kept running across the expiry.
    #[arg(long, default_value_t = 5_000.0)]
    validate_rate: f64,
}

/// Latencies and answers of one batch of requests.
struct Measured {
    latency_us: Histogram<u64>,
    elapsed: Duration,
    unexpected: u64,
}

impl Measured {
    fn line(&self, what: &str) -> String {
        let n = self.latency_us.len();
        format!(
            "{what}: {n} in {:.2} s = {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} unexpected answers",
            self.elapsed.as_secs_f64(),
            n as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.latency_us.value_at_quantile(0.50) as f64 / 1000.0,
            self.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
            self.unexpected
        )
    }
}

pub(crate) async fn holds(database_url: &str, args: HoldsArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(args.holds > 0 && args.concurrency > 0, "--holds and --concurrency must be positive");
    anyhow::ensure!(args.confirm_percent + args.cancel_percent <= 100, "at most 100% confirmed and cancelled");
    let data_dir = std::env::temp_dir().join(format!("loadgen-holds-{}", std::process::id()));
    let service = Service::start(&args.service_bin, database_url, &data_dir, &[("ADMIN_TOKEN", TOKEN)])?;
    let result = drill(&service, database_url, &args).await;
    service.stop();
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}

async fn drill(service: &Service, database_url: &str, args: &HoldsArgs) -> anyhow::Result<bool> {
    let client = ServiceClient::new(&format!("http://{}", service.addr));
    wait_until(Duration::from_secs(60), "the service to answer", || async {
        client.get_json("/health").await.ok().filter(|h| h["status"] == "healthy")
    })
    .await?;
    let mut db = PgConnection::connect(database_url).await.context("connect to DATABASE_URL")?;
    let stamp = Utc::now().timestamp_micros();
    let code = format!("LOADGEN-HOLDS-{stamp}");
    // Limited to exactly as many uses as holds: a use not given back would show as a refusal.
    sqlx::query(
        "INSERT INTO coupons (code, type, discount_type, discount_value, usage_limit) VALUES ($1, 'time_specific', 'fixed', 5, $2)",
    )
    .bind(&code)
    .bind(i32::try_from(args.holds)?)
    .execute(&mut db)
    .await?;
    wait_until(Duration::from_secs(5), "the service to see the coupon", || async {
        let answer = client.validate(&json!({"code": code, "userId": "probe", "orderValue": 100})).await;
        answer.is_ok_and(|a| a["valid"] == true).then_some(())
    })
    .await?;

    // Every hold expires in the second after `deadline`: each asks for the whole seconds
    // left until then. Lead time: the holds at 5,000/s, with room to spare.
    let lead = Duration::from_secs(args.holds / 2_500 + 10);
    let deadline = Utc::now() + chrono::Duration::from_std(lead)?;
    let hold_body = {
        let code = code.clone();
        move |n: u64| {
            let left = (deadline - Utc::now()).num_milliseconds().max(1_000);
            let ttl = (left + 999) / 1_000;
            json!({"code": code, "userId": format!("hold-{stamp}-{n}"), "orderId": format!("order-{stamp}-{n}"),
                   "orderValue": 100, "ttlSeconds": ttl})
        }
    };
    let taken = run(service.addr, args.concurrency, args.holds, "/api/coupons/hold", hold_body, 201).await;
    println!("{}", taken.line("holds"));
    let confirm = args.holds * args.confirm_percent / 100;
    let cancel = args.holds * args.cancel_percent / 100;
    let order_of = move |n: u64| format!("order-{stamp}-{n}");
    let confirmed = {
        let (code, order_of) = (code.clone(), order_of);
        let body = move |n: u64| json!({"code": code, "userId": format!("hold-{stamp}-{n}"), "orderId": order_of(n), "orderValue": 100});
        run(service.addr, args.concurrency, confirm, "/api/coupons/redeem", body, 201).await
    };
    println!("{}", confirmed.line("confirmations"));
    let cancelled = {
        let code = code.clone();
        let body = move |n: u64| json!({"code": code, "orderId": order_of(confirm + n)});
        run(service.addr, args.concurrency, cancel, "/api/coupons/release", body, 200).await
    };
    println!("{}", cancelled.line("cancellations"));
    let abandoned = args.holds - confirm - cancel;
    let left = (deadline - Utc::now()).to_std().unwrap_or_default();
    anyhow::ensure!(left > Duration::from_secs(3), "the holds took too long: {left:?} left before their deadline");

    // Validations from 3 s before the deadline to 4 s after; the timeline splits them.
    let validate_from = Instant::now() + left - Duration::from_secs(3);
    let deadline_at = Instant::now() + left;
    let validations = {
        let code = code.clone();
        let addr = service.addr;
        let rate = args.validate_rate;
        tokio::spawn(async move { open_loop_validations(addr, &code, rate, validate_from, deadline_at).await })
    };
    // The last use is back when the gauge of live holds reaches zero.
    tokio::time::sleep_until((deadline_at - Duration::from_millis(200)).into()).await;
    let back_at = loop {
        if client.metric("coupon_holds_live").await.unwrap_or(f64::MAX) == 0.0 {
            break Instant::now();
        }
        anyhow::ensure!(
            Instant::now() < deadline_at + Duration::from_secs(30),
            "holds still live 30 s after the deadline"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let back_after_second = back_at.saturating_duration_since(deadline_at + Duration::from_secs(1));
    let (before, during) = validations.await?;
    println!(
        "expiry: {abandoned} holds due in the second after {}; every use back {:.3} s after that second ended ({:.3} s after it began)",
        deadline.format("%H:%M:%S%.3f"),
        back_after_second.as_secs_f64(),
        back_at.saturating_duration_since(deadline_at).as_secs_f64()
    );
    println!("{}", before.line("validations, the 3 s before"));
    println!("{}", during.line("validations, the 4 s from the deadline"));

    let mut ok = verdict(
        taken.unexpected == 0 && confirmed.unexpected == 0 && cancelled.unexpected == 0,
        "every hold, confirmation and cancellation answered as it must",
    );
    let hold_rate = taken.latency_us.len() as f64 / taken.elapsed.as_secs_f64();
    let hold_p99 = taken.latency_us.value_at_quantile(0.99) as f64 / 1000.0;
    ok &= verdict(
        hold_rate >= 5_000.0 && hold_p99 <= 20.0,
        &format!("holds {hold_rate:.0}/s (≥ 5,000), p99 {hold_p99:.2} ms (≤ 20 ms)"),
    );
    ok &= verdict(
        back_after_second <= Duration::from_secs(2),
        &format!(
            "{abandoned} expiring holds all given back {:.3} s after their second (≤ 2 s)",
            back_after_second.as_secs_f64()
        ),
    );
    let p99 = |m: &Measured| m.latency_us.value_at_quantile(0.99) as f64 / 1000.0;
    ok &= verdict(
        before.unexpected == 0 && during.unexpected == 0 && p99(&during) <= (2.0 * p99(&before)).max(5.0),
        &format!(
            "validations kept their p99 through the expiry: {:.2} ms before, {:.2} ms during",
            p99(&before),
            p99(&during)
        ),
    );
    let usage = client.with_token(TOKEN).get_json(&format!("/admin/coupons/{code}")).await?["usage"].clone();
    ok &= verdict(
        usage == json!({"total": confirm, "holds": 0}),
        &format!("the coupon counts {usage}: {confirm} confirmed, 0 holds"),
    );
    // In PostgreSQL: the confirmed are live, the cancelled were released before their
    // deadline, the abandoned at or after it.
    let want = (confirm as i64, cancel as i64, abandoned as i64);
    let rows = wait_until(Duration::from_secs(60), "PostgreSQL to agree", || async {
        let mut db = PgConnection::connect(database_url).await.ok()?;
        let rows: (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE u.released_at IS NULL), \
                    count(*) FILTER (WHERE u.released_at < u.hold_expires_at), \
                    count(*) FILTER (WHERE u.released_at >= u.hold_expires_at) \
             FROM coupon_usage u JOIN coupons c ON c.id = u.coupon_id WHERE c.code = $1",
        )
        .bind(&code)
        .fetch_one(&mut db)
        .await
        .ok()?;
        (rows == want).then_some(rows)
    })
    .await;
    ok &= verdict(
        rows.is_ok(),
        &format!(
            "coupon_usage: {confirm} live, {cancel} cancelled and {abandoned} expired at their deadline ({rows:?})"
        ),
    );
    Ok(ok)
}

/// Sends `count` requests built by `body(n)` to `path` over `concurrency` connections;
/// an answer other than `expect` is unexpected.
async fn run<F>(
    addr: std::net::SocketAddr,
    concurrency: usize,
    count: u64,
    path: &'static str,
    body: F,
    expect: u16,
) -> Measured
where
    F: Fn(u64) -> serde_json::Value + Send + Sync + 'static,
{
    let body = Arc::new(body);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (body, next) = (body.clone(), next.clone());
            tokio::spawn(async move {
                let mut conn = Conn::new(addr);
                let mut latency = Histogram::<u64>::new(3).expect("histogram");
                let mut unexpected = 0;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        return (latency, unexpected);
                    }
                    let request = Bytes::from(body(n).to_string());
                    let sent = Instant::now();
                    let answer = conn.post(path, request).await;
                    let _ = latency.record((sent.elapsed().as_micros() as u64).max(1));
                    unexpected += u64::from(!matches!(answer, Ok((status, _)) if status == expect));
                }
            })
        })
        .collect();
    let mut measured =
        Measured { latency_us: Histogram::new(3).expect("histogram"), elapsed: Duration::ZERO, unexpected: 0 };
    for worker in workers {
        if let Ok((latency, unexpected)) = worker.await {
            let _ = measured.latency_us.add(&latency);
            measured.unexpected += unexpected;
        }
    }
    measured.elapsed = started.elapsed();
    measured
}

/// Validations at `rate` a second from `from` to 4 s after `deadline`, measured from when
/// each was due; returns those due before the deadline and those due after it.
async fn open_loop_validations(
    addr: std::net::SocketAddr,
    code: &str,
    rate: f64,
    from: Instant,
    deadline: Instant,
) -> (Measured, Measured) {
    let until = deadline + Duration::from_secs(4);
    let count = ((until - from).as_secs_f64() * rate) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let body = Bytes::from(json!({"code": code, "userId": "watcher", "orderValue": 100}).to_string());
    let workers: Vec<_> = (0..64)
        .map(|_| {
            let (next, body) = (next.clone(), body.clone());
            tokio::spawn(async move {
                let mut conn = Conn::new(addr);
                let mut before = Histogram::<u64>::new(3).expect("histogram");
                let mut during = Histogram::<u64>::new(3).expect("histogram");
                let mut unexpected = [0u64; 2];
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        return (before, during, unexpected);
                    }
                    let due = from + Duration::from_secs_f64(n as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                    let answer = conn.post("/api/coupons/validate", body.clone()).await;
                    let latency = (due.elapsed().as_micros() as u64).max(1);
                    let window = usize::from(due >= deadline);
                    let _ = if window == 0 { before.record(latency) } else { during.record(latency) };
                    unexpected[window] += u64::from(!matches!(answer, Ok((200, _))));
                }
            })
        })
        .collect();
    let empty =
        || Measured { latency_us: Histogram::new(3).expect("histogram"), elapsed: Duration::ZERO, unexpected: 0 };
    let (mut before, mut during) = (empty(), empty());
    for worker in workers {
        if let Ok((b, d, unexpected)) = worker.await {
            let _ = before.latency_us.add(&b);
            let _ = during.latency_us.add(&d);
            before.unexpected += unexpected[0];
            during.unexpected += unexpected[1];
        }
    }
    before.elapsed = deadline.saturating_duration_since(from);
    during.elapsed = until.saturating_duration_since(deadline);
    (before, during)
}
