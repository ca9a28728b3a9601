//! Drills, each ending in a verdict: concurrency scenarios, a race for a limited coupon, the
//! speed budget against a bare hyper server, a database outage, and a crash.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::client::ServiceClient;
use crate::load::{self, Phase, PhaseResult, Shape};
use crate::mix::{Mix, REDEEM_CODE};

pub(crate) fn verdict(ok: bool, text: &str) -> bool {
    println!("{} {text}", if ok { "PASS" } else { "FAIL" });
    ok
}

#[derive(Debug, clap::Args)]
pub(crate) struct ScenarioArgs {
    /// Requests per scenario (closed loop).
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    #[arg(long, default_value = "validate")]
    mix: String,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// light 10, moderate 50, heavy 200, stress 500 concurrent (the reference's scenarios).
pub(crate) async fn scenarios(addr: SocketAddr, database_url: &str, args: ScenarioArgs) -> anyhow::Result<bool> {
    let mix = Arc::new(Mix::build(database_url, &args.mix, args.seed).await?);
    println!(
        "{:<10} {:>6} {:>12} {:>9} {:>9} {:>9} {:>9} {:>8}  verdict",
        "scenario", "conc", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors"
    );
    let mut all_ok = true;
    for (name, concurrency) in [("light", 10), ("moderate", 50), ("heavy", 200), ("stress", 500)] {
        let phase = Phase { name: name.into(), shape: Shape::Closed { requests: args.requests, concurrency } };
        let result = load::run_phase(vec![addr], mix.clone(), phase, 0).await;
        let s = &result.stats;
        let error_rate = s.failed as f64 / s.total().max(1) as f64;
        // The reference's bar: p95 under 100 ms and under 1% errors; ours adds no wrong answer.
        let ok = s.ms(0.95) < 100.0 && error_rate < 0.01 && s.wrong == 0;
        all_ok &= ok;
        println!(
            "{name:<10} {concurrency:>6} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>7.2}%  {}",
            result.throughput(),
            s.ms(0.5),
            s.ms(0.95),
            s.ms(0.99),
            s.latency_us.max() as f64 / 1000.0,
            error_rate * 100.0,
            if ok { "PASS" } else { "FAIL" }
        );
    }
    Ok(all_ok)
}

#[derive(Debug, clap::Args)]
pub(crate) struct RaceArgs {
    /// Buyers arriving at once, each with their own order and connection.
    #[arg(long, default_value_t = 300)]
    buyers: usize,
    /// The coupon's usage limit.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

/// Creates a coupon limited to `limit` uses and sends `buyers` redeems at once.
pub(crate) async fn race(url: &str, addr: SocketAddr, database_url: &str, args: RaceArgs) -> anyhow::Result<bool> {
    let mut db = PgConnection::connect(database_url).await.context("connect to DATABASE_URL")?;
    let code = format!("LOADGEN-RACE-{}", chrono::Utc::now().timestamp_micros());
    let limit = i32::try_from(args.limit)?;
    sqlx::query("INSERT INTO coupons (code, type, discount_type, discount_value, usage_limit) VALUES ($1, 'time_specific', 'fixed', 5, $2)")
        .bind(&code)
        .bind(limit)
        .execute(&mut db)
        .await?;
    let client = ServiceClient::new(url);
    wait_until(Duration::from_secs(5), "the service to see the race coupon", || async {
        let answer = client.validate(&json!({"code": code, "userId": "race", "orderValue": 100})).await;
        answer.is_ok_and(|a| a["valid"] == true).then_some(())
    })
    .await?;
    let start = Arc::new(tokio::sync::Barrier::new(args.buyers));
    let buyers: Vec<_> = (0..args.buyers)
        .map(|n| {
            let (code, start) = (code.clone(), start.clone());
            tokio::spawn(async move {
                let mut conn = crate::conn::Conn::new(addr);
                let body = json!({"code": code, "userId": format!("racer-{n}"), "orderId": format!("race-{n}"), "orderValue": 100});
                start.wait().await;
                conn.post("/api/coupons/redeem", body.to_string().into()).await.map(|(status, _)| status).unwrap_or(0)
            })
        })
        .collect();
    let (mut won, mut refused, mut other) = (0u32, 0u32, 0u32);
    for buyer in buyers {
        match buyer.await? {
            201 => won += 1,
            422 => refused += 1,
            _ => other += 1,
        }
    }
    println!(
        "race: {} buyers for {} uses of {code}: {won} won, {refused} refused, {other} other",
        args.buyers, args.limit
    );
    let rows_query = "SELECT count(*) FROM coupon_usage u JOIN coupons c ON c.id = u.coupon_id WHERE c.code = $1";
    let expected = i64::from(won);
    let landed = wait_until(Duration::from_secs(10), "the redemptions to reach coupon_usage", || async {
        let rows: i64 = sqlx::query_scalar(rows_query)
            .bind(&code)
            .fetch_one(&mut PgConnection::connect(database_url).await.ok()?)
            .await
            .ok()?;
        (rows == expected).then_some(())
    })
    .await;
    let rows: i64 = sqlx::query_scalar(rows_query).bind(&code).fetch_one(&mut db).await?;
    println!("race: {rows} rows in coupon_usage");
    let mut ok = verdict(won == args.limit.min(args.buyers as u32), &format!("winners {won} = limit {}", args.limit));
    ok &= verdict(other == 0, &format!("{other} answers other than 201/422"));
    ok &= verdict(landed.is_ok() && rows == i64::from(won), &format!("{rows} rows persisted for {won} winners"));
    Ok(ok)
}

#[derive(Debug, clap::Args)]
pub(crate) struct BudgetArgs {
    /// Requests per measurement (closed loop).
    #[arg(long, default_value_t = 300_000)]
    requests: u64,
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Measurements per server, alternating baseline and service.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where to start the baseline server.
    #[arg(long, default_value = "127.0.0.1:8090")]
    baseline_addr: SocketAddr,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The validate mix both servers get: valid (today's bodies) or cart (20-line carts, which
    /// the baseline parses too).
    #[arg(long, default_value = "valid")]
    mix: String,
}

/// DESIGN.md's budget: validate ≥ 0.80 × the bare server's throughput, p99 ≤ 1.25 × its p99
/// (for carts, issue 25's: the same throughput budget on the same cart bodies).
pub(crate) async fn budget(addr: SocketAddr, database_url: &str, args: BudgetArgs) -> anyhow::Result<bool> {
    if !args.baseline_addr.ip().is_loopback() {
        bail!("--baseline-addr must be a loopback address");
    }
    if !matches!(args.mix.as_str(), "valid" | "cart") {
        bail!("--mix must be valid or cart: the baseline answers validate bodies only");
    }
    let mix = Arc::new(Mix::build(database_url, &args.mix, args.seed).await?);
    let baseline_bin = sibling_binary("baseline-server")?;
    let mut baseline = Command::new(&baseline_bin)
        .arg(args.baseline_addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", baseline_bin.display()))?;
    let outcome = async {
        wait_until(Duration::from_secs(5), "the baseline server", || async {
            tokio::net::TcpStream::connect(args.baseline_addr).await.ok().map(drop)
        })
        .await?;
        let shape = Shape::Closed { requests: args.requests, concurrency: args.concurrency };
        // Warm both up (connections, caches, CPU frequency) before measuring.
        let warm = Shape::Closed { requests: args.requests / 10, concurrency: args.concurrency };
        for target in [args.baseline_addr, addr] {
            load::run_phase(vec![target], mix.clone(), Phase { name: "warm-up".into(), shape: warm }, 0).await;
        }
        let (mut base_runs, mut service_runs) = (Vec::new(), Vec::new());
        for round in 0..args.rounds {
            let base = load::run_phase(vec![args.baseline_addr], mix.clone(), Phase { name: format!("baseline-{round}"), shape }, 0).await;
            let service = load::run_phase(vec![addr], mix.clone(), Phase { name: format!("service-{round}"), shape }, 0).await;
            println!(
                "round {round}: baseline {:>8.0} req/s p99 {:>6.2} ms | coupon-engine {:>8.0} req/s p99 {:>6.2} ms ({} wrong, {} failed)",
                base.throughput(),
                base.stats.ms(0.99),
                service.throughput(),
                service.stats.ms(0.99),
                service.stats.wrong,
                service.stats.failed
            );
            base_runs.push(base);
            service_runs.push(service);
        }
        anyhow::Ok((base_runs, service_runs))
    }
    .await;
    let _ = baseline.kill();
    let _ = baseline.wait();
    let (base_runs, service_runs) = outcome?;
    let median = |runs: &[PhaseResult], f: fn(&PhaseResult) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let (base_rps, service_rps) =
        (median(&base_runs, PhaseResult::throughput), median(&service_runs, PhaseResult::throughput));
    let (base_p99, service_p99) =
        (median(&base_runs, |r| r.stats.ms(0.99)), median(&service_runs, |r| r.stats.ms(0.99)));
    println!(
        "median of {} rounds: baseline {base_rps:.0} req/s, p99 {base_p99:.2} ms; coupon-engine {service_rps:.0} req/s, p99 {service_p99:.2} ms",
        args.rounds
    );
    let mut ok = verdict(
        service_rps >= 0.8 * base_rps,
        &format!("throughput {:.1}% of the baseline (budget ≥ 80%)", 100.0 * service_rps / base_rps),
    );
    ok &= verdict(
        service_p99 <= 1.25 * base_p99,
        &format!("p99 {:.2}× the baseline's (budget ≤ 1.25×)", service_p99 / base_p99),
    );
    ok &= verdict(service_runs.iter().all(|r| r.stats.wrong == 0 && r.stats.failed == 0), "every answer right");
    Ok(ok)
}

#[derive(Debug, clap::Args)]
pub(crate) struct OutageArgs {
    /// Seconds of load before PostgreSQL is stopped, while it is down, and after it is back.
    #[arg(long, default_value_t = 10)]
    before: u64,
    #[arg(long, default_value_t = 30)]
    during: u64,
    #[arg(long, default_value_t = 10)]
    after: u64,
    /// Requests per second (open loop), validate and redeem mixed.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// The request mix: `shapes` (every redeeming shape, holds too) or any other.
    #[arg(long, default_value = "shapes")]
    mix: String,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// Stops PostgreSQL with `tools/pg stop` mid-run and starts it again; the service must keep
/// answering and lose nothing. Run against the cluster `tools/pg` manages.
pub(crate) async fn db_outage(
    url: &str,
    addr: SocketAddr,
    database_url: &str,
    args: OutageArgs,
) -> anyhow::Result<bool> {
    let mix = Arc::new(Mix::build(database_url, &args.mix, args.seed).await?);
    let total = args.before + args.during + args.after;
    let phase = Phase {
        name: "db-outage".into(),
        shape: Shape::Open { rate: args.rate, duration: Duration::from_secs(total), concurrency: 200 },
    };
    let logs_before = count_logs(database_url).await?;
    let load = tokio::spawn(load::run_phase(vec![addr], mix, phase, 0));
    tokio::time::sleep(Duration::from_secs(args.before)).await;
    tools_pg("stop")?;
    println!("db-outage: PostgreSQL stopped at {} s", args.before);
    tokio::time::sleep(Duration::from_secs(args.during)).await;
    tools_pg("start")?;
    let back = Instant::now();
    println!("db-outage: PostgreSQL started at {} s", args.before + args.during);
    // Caught up: the database is seen again and the backlogs are back to what 100 ms of
    // traffic leaves in flight, while the load goes on.
    let steady = (args.rate / 10.0).max(100.0);
    let client = ServiceClient::new(url);
    let poller = {
        let client = client.clone();
        tokio::spawn(async move {
            wait_until(Duration::from_secs(120), "the service to catch up", || async {
                let health = client.get_json("/health").await.ok()?;
                let backlog = client.metric("journal_backlog_records").await.ok()?;
                let queue = health["validationLogQueueSize"].as_f64()?;
                (health["database"] == "up" && backlog < steady && queue < steady).then(|| back.elapsed())
            })
            .await
        })
    };
    let result = load.await?;
    let caught_up = poller.await?;
    let catch_up = caught_up.as_ref().map_or(Duration::MAX, |d| *d);
    wait_until(Duration::from_secs(60), "the queues to drain after the load", || async {
        let health = client.get_json("/health").await.ok()?;
        let backlog = client.metric("journal_backlog_records").await.ok()?;
        (health["status"] == "healthy" && health["validationLogQueueSize"] == 0 && backlog == 0.0).then_some(())
    })
    .await?;
    let window = |from: u64, to: u64| {
        let slots = &result.stats.timeline
            [(from as usize).min(result.stats.timeline.len())..(to as usize).min(result.stats.timeline.len())];
        let requests: u64 = slots.iter().map(|s| s.requests).sum();
        let errors: u64 = slots.iter().map(|s| s.errors).sum();
        (requests, 100.0 * (requests - errors) as f64 / requests.max(1) as f64)
    };
    for (name, from, to) in [
        ("before", 0, args.before),
        ("during", args.before, args.before + args.during),
        ("after", args.before + args.during, total),
    ] {
        let (requests, rate) = window(from, to);
        println!("db-outage: {name:<6} {requests:>8} requests, {rate:>7.3}% answered 2xx");
    }
    let lost = missing_redemptions(database_url, &result.stats.acknowledged).await?;
    // Only validations answer 200 here (every redeem and hold is a new order: 201 or 422).
    let validations = result.stats.by_status.get(&200).copied().unwrap_or(0);
    let logs_written = count_logs(database_url).await? - logs_before;
    println!(
        "db-outage: caught up {:.1} s after PostgreSQL came back; {} redemptions acknowledged, {lost} missing; {validations} validations answered, {logs_written} logged",
        catch_up.as_secs_f64(),
        result.stats.acknowledged.len()
    );
    let mut ok = verdict(
        result.stats.failed == 0,
        &format!("{} requests failed (validations and redemptions must all succeed)", result.stats.failed),
    );
    ok &= verdict(
        caught_up.is_ok() && catch_up <= Duration::from_secs(5),
        &format!("caught up in {:.1} s (budget ≤ 5 s)", catch_up.as_secs_f64()),
    );
    ok &= verdict(lost == 0, &format!("{lost} acknowledged redemptions lost"));
    ok &= verdict(logs_written as u64 >= validations, &format!("{logs_written} of {validations} validations logged"));
    Ok(ok)
}

#[derive(Debug, clap::Args)]
pub(crate) struct CrashArgs {
    /// The coupon-engine binary; the drill starts it, kills it and starts it again.
    #[arg(long, default_value = "target/release/coupon-engine")]
    service_bin: PathBuf,
    /// The service's DATA_DIR (its journal), kept across the restart.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Seconds of redeem load; the kill comes halfway.
    #[arg(long, default_value_t = 6)]
    seconds: u64,
    #[arg(long, default_value_t = 3000.0)]
    rate: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// Starts the service, SIGKILLs it under redeem load, restarts it and checks that every
/// acknowledged redemption is in `coupon_usage`, once.
pub(crate) async fn crash(url: &str, addr: SocketAddr, database_url: &str, args: CrashArgs) -> anyhow::Result<bool> {
    let mix = Arc::new(Mix::build(database_url, "redeem", args.seed).await?);
    let client = ServiceClient::new(url);
    let mut service = start_service(&args, addr, database_url)?;
    wait_ready(&client).await?;
    let phase = Phase {
        name: "crash".into(),
        shape: Shape::Open { rate: args.rate, duration: Duration::from_secs(args.seconds), concurrency: 100 },
    };
    let load = tokio::spawn(load::run_phase(vec![addr], mix, phase, 0));
    tokio::time::sleep(Duration::from_millis(args.seconds * 500)).await;
    let killed = Command::new("kill").arg("-KILL").arg(service.id().to_string()).status()?;
    let _ = service.wait();
    println!("crash: service killed with SIGKILL halfway through the load (kill: {killed})");
    let result = load.await?;
    let acknowledged = &result.stats.acknowledged;
    let mut restarted = start_service(&args, addr, database_url)?;
    let ready = wait_ready(&client).await;
    let lost = missing_redemptions(database_url, acknowledged).await;
    let _ = Command::new("kill").arg("-TERM").arg(restarted.id().to_string()).status();
    let _ = restarted.wait();
    ready?;
    let lost = lost?;
    let duplicates = duplicate_orders(database_url).await?;
    println!(
        "crash: {} redemptions acknowledged before the kill, {lost} missing after restart, {duplicates} duplicated",
        acknowledged.len()
    );
    let mut ok = verdict(!acknowledged.is_empty(), "the load got redemptions acknowledged before the kill");
    ok &= verdict(lost == 0, &format!("{lost} acknowledged redemptions lost"));
    ok &= verdict(duplicates == 0, &format!("{duplicates} orders redeemed twice"));
    Ok(ok)
}

fn start_service(args: &CrashArgs, addr: SocketAddr, database_url: &str) -> anyhow::Result<Child> {
    Command::new(&args.service_bin)
        .arg("serve")
        .env("DATABASE_URL", database_url)
        .env("HTTP_ADDR", addr.to_string())
        .env("DATA_DIR", &args.data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", args.service_bin.display()))
}

async fn wait_ready(client: &ServiceClient) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(30), "the service to be ready", || async {
        client.get_json("/health/ready").await.ok().filter(|r| r["ready"] == true).map(drop)
    })
    .await
}

/// Acknowledged redemption ids that are not in `coupon_usage`.
async fn missing_redemptions(database_url: &str, acknowledged: &[String]) -> anyhow::Result<usize> {
    let mut db = PgConnection::connect(database_url).await?;
    let ids: Vec<uuid::Uuid> = acknowledged.iter().filter_map(|id| id.parse().ok()).collect();
    let found: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM coupon_usage WHERE id = ANY($1)").bind(&ids).fetch_all(&mut db).await?;
    let found: HashSet<_> = found.into_iter().collect();
    Ok(ids.iter().filter(|id| !found.contains(id)).count())
}

async fn duplicate_orders(database_url: &str) -> anyhow::Result<i64> {
    let mut db = PgConnection::connect(database_url).await?;
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT order_id FROM coupon_usage u JOIN coupons c ON c.id = u.coupon_id \
         WHERE c.code = $1 GROUP BY order_id HAVING count(*) > 1) d",
    )
    .bind(REDEEM_CODE)
    .fetch_one(&mut db)
    .await?)
}

async fn count_logs(database_url: &str) -> anyhow::Result<i64> {
    let mut db = PgConnection::connect(database_url).await?;
    Ok(sqlx::query_scalar("SELECT count(*) FROM validation_logs").fetch_one(&mut db).await?)
}

/// Runs `tools/pg VERB` beside this checkout (PG_CLUSTER_DIR and PGPORT_PRIVATE pass through).
fn tools_pg(verb: &str) -> anyhow::Result<()> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../pg");
    let status =
        Command::new(script).arg(verb).stdout(Stdio::null()).status().with_context(|| format!("run {script}"))?;
    if !status.success() {
        bail!("tools/pg {verb} failed");
    }
    Ok(())
}

/// A binary built beside this one (same target directory).
fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!("{} not found: build it with cargo build --release -p loadgen", path.display());
    }
    Ok(path)
}

/// Polls `check` until it yields, or fails after `within`.
pub(crate) async fn wait_until<T, F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_until_yields_or_times_out() {
        let mut n = 0;
        let got = wait_until(Duration::from_secs(1), "n to reach 3", || {
            n += 1;
            let n = n;
            async move { (n >= 3).then_some(n) }
        })
        .await;
        assert_eq!(got.unwrap(), 3);
        let never: anyhow::Result<()> = wait_until(Duration::from_millis(50), "never", || async { None }).await;
        assert!(never.unwrap_err().to_string().contains("never"));
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct SlowlorisArgs {
    /// Sockets that trickle a request head a header at a time and never finish it.
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// Normal load measured without and then with the slow sockets (closed loop).
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// Normal clients' p99 must not double while `sockets` slow-loris connections hang on.
pub(crate) async fn slowloris(addr: SocketAddr, database_url: &str, args: SlowlorisArgs) -> anyhow::Result<bool> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use tokio::io::AsyncWriteExt;

    let mix = Arc::new(Mix::build(database_url, "validate", args.seed).await?);
    let shape = Shape::Closed { requests: args.requests, concurrency: args.concurrency };
    let without = load::run_phase(vec![addr], mix.clone(), Phase { name: "without".into(), shape }, 0).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (connected, reopened) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sockets: Vec<_> = (0..args.sockets)
        .map(|_| {
            let (stop, connected, reopened) = (stop.clone(), connected.clone(), reopened.clone());
            tokio::spawn(async move {
                let mut first = true;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    if first {
                        connected.fetch_add(1, Ordering::Relaxed);
                        first = false;
                    } else {
                        reopened.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut line = b"POST /api/coupons/validate HTTP/1.1\r\nhost: loris\r\n".to_vec();
                    // One more header a second until the server hangs up, then start over.
                    while !stop.load(Ordering::Relaxed) && stream.write_all(&line).await.is_ok() {
                        line = b"x-slow: 1\r\n".to_vec();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            })
        })
        .collect();
    let _ = wait_until(Duration::from_secs(10), "the slow sockets to connect", || async {
        (connected.load(Ordering::Relaxed) as usize >= args.sockets).then_some(())
    })
    .await;
    let with =
        load::run_phase(vec![addr], mix, Phase { name: format!("with {} slow sockets", args.sockets), shape }, 0).await;
    stop.store(true, Ordering::Relaxed);
    for socket in sockets {
        socket.abort();
    }
    for result in [&without, &with] {
        println!(
            "slowloris: {:<24} {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  {} failed",
            result.phase.name,
            result.throughput(),
            result.stats.ms(0.5),
            result.stats.ms(0.99),
            result.stats.failed
        );
    }
    println!(
        "slowloris: {} slow sockets connected, {} reconnected after the server hung up on them",
        connected.load(Ordering::Relaxed),
        reopened.load(Ordering::Relaxed)
    );
    let ratio = with.stats.ms(0.99) / without.stats.ms(0.99).max(0.001);
    let mut ok = verdict(ratio <= 2.0, &format!("p99 with slow sockets {ratio:.2}× the p99 without (budget ≤ 2×)"));
    ok &= verdict(with.stats.failed == 0 && with.stats.wrong == 0, "normal clients got every answer right");
    Ok(ok)
}
