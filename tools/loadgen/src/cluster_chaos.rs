//! The several-instances failure drills (`loadgen cluster-chaos`, against `tools/cluster up`):
//! buyers pour through the balancer onto one limited coupon while one instance holding
//! leases is SIGKILLed and started again, then while PostgreSQL is stopped for a while.
//! Never more acknowledged uses than the limit, at any moment; exactly the limit once every
//! instance is back; every acknowledged use in PostgreSQL, once.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use hyper::StatusCode;
use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::client::ServiceClient;
use crate::drills::{verdict, wait_until};

#[derive(Debug, clap::Args)]
pub(crate) struct ClusterChaosArgs {
    /// The usage limit of the drill's coupon.
    #[arg(long, default_value_t = 60_000)]
    limit: u32,
    /// Redeems a second, across every buyer.
    #[arg(long, default_value_t = 1500.0)]
    rate: f64,
    /// Buyers in flight.
    #[arg(long, default_value_t = 64)]
    buyers: usize,
    /// Which instance to kill (tools/cluster's numbering).
    #[arg(long, default_value_t = 2)]
    kill: u32,
    /// Seconds the killed instance stays down.
    #[arg(long, default_value_t = 5)]
    down_for: u64,
    /// Seconds PostgreSQL stays down.
    #[arg(long, default_value_t = 30)]
    outage: u64,
}

/// Runs `tools/NAME ARGS` beside this checkout.
fn tool(name: &str, args: &[&str]) -> anyhow::Result<()> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../");
    let status = Command::new(format!("{script}{name}"))
        .args(args)
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("run tools/{name}"))?;
    if !status.success() {
        bail!("tools/{name} {args:?} failed");
    }
    Ok(())
}

/// What the buyers saw.
#[derive(Debug, Default)]
struct Seen {
    acknowledged: Mutex<HashSet<String>>,
    limit_reached: AtomicU64,
    unavailable: AtomicU64,
    other: AtomicU64,
}

pub(crate) async fn cluster_chaos(url: &str, database_url: &str, args: ClusterChaosArgs) -> anyhow::Result<bool> {
    let mut db = PgConnection::connect(database_url).await.context("connect to DATABASE_URL")?;
    let code = format!("LOADGEN-CHAOS-{:X}", chrono::Utc::now().timestamp_micros());
    sqlx::query(
        "INSERT INTO coupons (code, type, discount_type, discount_value, usage_limit) \
         VALUES ($1, 'time_specific', 'fixed', 5, $2)",
    )
    .bind(&code)
    .bind(i32::try_from(args.limit)?)
    .execute(&mut db)
    .await?;
    drop(db);
    let balancer = ServiceClient::new(url);
    wait_until(Duration::from_secs(5), "the coupon to be served", || async {
        let answer = balancer.validate(&json!({"code": code, "userId": "probe", "orderValue": 100})).await;
        answer.is_ok_and(|a| a["valid"] == true).then_some(())
    })
    .await?;
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    // Each buyer paces itself to its share of --rate, and retries one order until it has a
    // clear answer: a 503 or a lost connection leaves the outcome open, and only a replay of
    // the same order says whether it was taken.
    let pause = Duration::from_secs_f64(args.buyers as f64 / args.rate);
    let buyers: Vec<_> = (0..args.buyers)
        .map(|_| {
            let (client, seen, stop, next, code) = (balancer.clone(), seen.clone(), stop.clone(), next.clone(), code.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let body = json!({"code": code, "userId": format!("chaos-{n}"), "orderId": format!("chaos-{n}"), "orderValue": 100});
                    loop {
                        match client.post_json("/api/coupons/redeem", &body).await {
                            Ok((StatusCode::CREATED | StatusCode::OK, answer)) => {
                                if let Some(id) = answer["redemptionId"].as_str() {
                                    seen.acknowledged.lock().expect("seen").insert(id.to_owned());
                                }
                                break;
                            }
                            Ok((StatusCode::UNPROCESSABLE_ENTITY, answer)) if answer["reason"] == "USAGE_LIMIT_REACHED" => {
                                seen.limit_reached.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Ok((StatusCode::SERVICE_UNAVAILABLE, _)) | Err(_) => {
                                seen.unavailable.fetch_add(1, Ordering::Relaxed);
                                if stop.load(Ordering::Relaxed) {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            Ok(_) => {
                                seen.other.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                    tokio::time::sleep(pause).await;
                }
            })
        })
        .collect();
    let acked = |seen: &Seen| seen.acknowledged.lock().expect("seen").len() as u64;
    let limit = u64::from(args.limit);
    let mut ok = true;
    let mut never_over = true;
    let mut watch = |label: &str, seen: &Seen| {
        let n = acked(seen);
        if n > limit {
            never_over = false;
        }
        println!("cluster-chaos {label}: {n} acknowledged of {limit}");
    };

    tokio::time::sleep(Duration::from_millis(1500)).await;
    watch("before the kill", &seen);
    tool("cluster", &["kill", &args.kill.to_string()])?;
    println!("cluster-chaos: node-{} killed (SIGKILL)", args.kill);
    for _ in 0..args.down_for * 2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        watch("node down", &seen);
    }
    tool("cluster", &["start", &args.kill.to_string()])?;
    println!("cluster-chaos: node-{} started again", args.kill);
    tokio::time::sleep(Duration::from_secs(2)).await;
    watch("node back", &seen);

    tool("pg", &["stop"])?;
    println!("cluster-chaos: PostgreSQL stopped for {} s", args.outage);
    for _ in 0..args.outage {
        tokio::time::sleep(Duration::from_secs(1)).await;
        watch("PostgreSQL down", &seen);
    }
    tool("pg", &["start"])?;
    println!("cluster-chaos: PostgreSQL started");
    let sold_out = wait_until(Duration::from_secs(120), "the coupon to sell out", || async {
        (acked(&seen) >= limit).then_some(())
    })
    .await;
    // A little longer: a unit still in doubt would show as more acknowledgements.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for buyer in buyers {
        let _ = buyer.await;
    }
    watch("end", &seen);
    let acknowledged = seen.acknowledged.lock().expect("seen").clone();
    let landed = wait_until(Duration::from_secs(60), "every acknowledged use in coupon_usage", || async {
        let mut db = PgConnection::connect(database_url).await.ok()?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT u.id::text FROM coupon_usage u JOIN coupons c ON c.id = u.coupon_id \
             WHERE c.code = $1 AND u.released_at IS NULL",
        )
        .bind(&code)
        .fetch_all(&mut db)
        .await
        .ok()?;
        (ids.into_iter().collect::<HashSet<_>>() == acknowledged).then_some(())
    })
    .await;
    println!(
        "cluster-chaos: {} acknowledged, {} told the limit was reached, {} told 503 (retried), {} other",
        acknowledged.len(),
        seen.limit_reached.load(Ordering::Relaxed),
        seen.unavailable.load(Ordering::Relaxed),
        seen.other.load(Ordering::Relaxed)
    );
    ok &= verdict(never_over, "never more acknowledged than the limit");
    ok &= verdict(sold_out.is_ok() && acknowledged.len() as u64 == limit, "exactly the limit once everything is back");
    ok &= verdict(landed.is_ok(), "every acknowledged use in PostgreSQL, once, and nothing else");
    ok &= verdict(seen.other.load(Ordering::Relaxed) == 0, "no answer other than 201, 422 or 503");
    Ok(ok)
}
