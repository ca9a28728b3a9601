//! The several-instances drills (`loadgen cluster-race`): rounds of many buyers at once for a
//! small limit through the balancer, each round with a new random seed for which buyer goes
//! first, and one user racing a one-use coupon on every instance directly. Exactly the limit,
//! every round; exactly one use for the user; every use in PostgreSQL.

use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::StatusCode;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::client::ServiceClient;
use crate::drills::{verdict, wait_until};

#[derive(Debug, clap::Args)]
pub(crate) struct ClusterRaceArgs {
    /// The instances themselves, comma-separated (every one must see each coupon before a
    /// round starts; the one-user race goes to each directly).
    #[arg(long, default_value = "http://127.0.0.1:9101,http://127.0.0.1:9102,http://127.0.0.1:9103")]
    instances: String,
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    #[arg(long, default_value_t = 300)]
    buyers: usize,
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Orders the one user sends, spread over every instance.
    #[arg(long, default_value_t = 60)]
    user_orders: usize,
}

/// Tallies of one race.
#[derive(Debug, Default)]
struct Tally {
    won: u32,
    limit_reached: u32,
    other: u32,
    /// 503s retried (QUOTA_UNAVAILABLE: the units were held elsewhere for a moment).
    retried: u32,
}

/// Redeems as a shop's backend does: a 503 is retried (after a short pause) until another
/// answer, for at most 30 s.
async fn redeem(client: &ServiceClient, body: &serde_json::Value) -> (Option<StatusCode>, serde_json::Value, u32) {
    let until = Instant::now() + Duration::from_secs(30);
    let mut retried = 0;
    loop {
        match client.post_json("/api/coupons/redeem", body).await {
            Ok((StatusCode::SERVICE_UNAVAILABLE, _)) if Instant::now() < until => {
                retried += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok((status, answer)) => return (Some(status), answer, retried),
            Err(_) => return (None, json!(null), retried),
        }
    }
}

async fn create(
    db: &mut PgConnection,
    code: &str,
    usage_limit: Option<i32>,
    per_user: Option<i32>,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO coupons (code, type, discount_type, discount_value, usage_limit, per_user_limit) \
         VALUES ($1, 'time_specific', 'fixed', 5, $2, $3)",
    )
    .bind(code)
    .bind(usage_limit)
    .bind(per_user)
    .execute(db)
    .await?;
    Ok(())
}

async fn seen_everywhere(instances: &[ServiceClient], code: &str) -> anyhow::Result<()> {
    for client in instances {
        wait_until(Duration::from_secs(5), "every instance to see the coupon", || async {
            let answer = client.validate(&json!({"code": code, "userId": "probe", "orderValue": 100})).await;
            answer.is_ok_and(|a| a["valid"] == true).then_some(())
        })
        .await?;
    }
    Ok(())
}

async fn rows(database_url: &str, code: &str) -> Option<i64> {
    let mut db = PgConnection::connect(database_url).await.ok()?;
    sqlx::query_scalar(
        "SELECT count(*) FROM coupon_usage u JOIN coupons c ON c.id = u.coupon_id \
         WHERE c.code = $1 AND u.released_at IS NULL",
    )
    .bind(code)
    .fetch_one(&mut db)
    .await
    .ok()
}

pub(crate) async fn cluster_race(url: &str, database_url: &str, args: ClusterRaceArgs) -> anyhow::Result<bool> {
    let mut db = PgConnection::connect(database_url).await.context("connect to DATABASE_URL")?;
    let balancer = ServiceClient::new(url);
    let instances: Vec<ServiceClient> = args.instances.split(',').map(ServiceClient::new).collect();
    let mut ok = true;
    let stamp = chrono::Utc::now().timestamp_micros();
    for round in 0..args.rounds {
        let seed = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default().unsigned_abs() ^ round as u64;
        let code = format!("LOADGEN-CLUSTER-{stamp:X}-{round}");
        create(&mut db, &code, Some(i32::try_from(args.limit)?), None).await?;
        seen_everywhere(&instances, &code).await?;
        let mut order: Vec<usize> = (0..args.buyers).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(args.buyers));
        let buyers: Vec<_> = order
            .into_iter()
            .map(|n| {
                let (client, start) = (balancer.clone(), start.clone());
                let body = json!({"code": code, "userId": format!("buyer-{round}-{n}"), "orderId": format!("order-{round}-{n}"), "orderValue": 100});
                tokio::spawn(async move {
                    start.wait().await;
                    redeem(&client, &body).await
                })
            })
            .collect();
        let mut tally = Tally::default();
        for buyer in buyers {
            let (status, answer, retried) = buyer.await?;
            tally.retried += retried;
            match status {
                Some(StatusCode::CREATED) => tally.won += 1,
                Some(StatusCode::UNPROCESSABLE_ENTITY) if answer["reason"] == "USAGE_LIMIT_REACHED" => {
                    tally.limit_reached += 1;
                }
                _ => tally.other += 1,
            }
        }
        let landed = wait_until(Duration::from_secs(10), "the uses to reach coupon_usage", || async {
            (rows(database_url, &code).await? == i64::from(tally.won)).then_some(())
        })
        .await
        .is_ok();
        println!(
            "cluster-race round {round} (seed {seed}): {} buyers for {}: {} won, {} refused, {} other, {} 503s retried",
            args.buyers, args.limit, tally.won, tally.limit_reached, tally.other, tally.retried
        );
        ok &= verdict(
            tally.won == args.limit && tally.other == 0 && landed,
            &format!("round {round}: exactly {} won and landed", args.limit),
        );
    }

    // One user, one use, racing on every instance at once.
    let code = format!("LOADGEN-ONCE-{stamp:X}");
    create(&mut db, &code, None, Some(1)).await?;
    seen_everywhere(&instances, &code).await?;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(args.user_orders));
    let tries: Vec<_> = (0..args.user_orders)
        .map(|n| {
            let (client, start) = (instances[n % instances.len()].clone(), start.clone());
            let body =
                json!({"code": code, "userId": "the-one-user", "orderId": format!("once-{n}"), "orderValue": 100});
            tokio::spawn(async move {
                start.wait().await;
                redeem(&client, &body).await
            })
        })
        .collect();
    let (mut won, mut refused, mut other) = (0, 0, 0);
    for attempt in tries {
        match attempt.await? {
            (Some(StatusCode::CREATED), _, _) => won += 1,
            (Some(StatusCode::UNPROCESSABLE_ENTITY), answer, _) if answer["reason"] == "USER_USAGE_LIMIT_REACHED" => {
                refused += 1;
            }
            _ => other += 1,
        }
    }
    println!(
        "cluster-race one user: {} orders over {} instances: {won} won, {refused} refused, {other} other",
        args.user_orders,
        instances.len()
    );
    let landed = rows(database_url, &code).await == Some(1);
    ok &= verdict(won == 1 && other == 0 && landed, "one user got exactly one use");
    Ok(ok)
}
