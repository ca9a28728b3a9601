//! `loadgen campaign-race`: many buyers race over many single-use codes of one campaign with a
//! small shared cap, money budget and per-customer limit; the winners, the campaign's `used`
//! and `spent`, and the rows in `coupon_usage` must all be exactly what the limits allow, and a
//! release must give back exactly what it took. Runs its own service (with an admin token) on
//! DATABASE_URL's database.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use hyper::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

use crate::client::ServiceClient;
use crate::drills::{verdict, wait_until};
use crate::scratch::Service;

const TOKEN: &str = "loadgen-campaign-race-token";

#[derive(Debug, clap::Args)]
pub(crate) struct CampaignRaceArgs {
    /// The coupon-engine binary; the drill starts it on a free loopback port and stops it.
    #[arg(long, default_value = "target/release/coupon-engine")]
    service_bin: PathBuf,
    /// Buyers arriving at once, each with their own code, order and connection.
    #[arg(long, default_value_t = 600)]
    buyers: usize,
    /// Distinct customers among the buyers (the campaign allows each one use).
    #[arg(long, default_value_t = 400)]
    customers: usize,
    /// The campaign's shared cap.
    #[arg(long, default_value_t = 50)]
    cap: u32,
    /// The campaign's budget, in cents.
    #[arg(long, default_value_t = 24_500)]
    budget_cents: u64,
    /// Each code's discount, in cents.
    #[arg(long, default_value_t = 700)]
    discount_cents: u64,
    /// Winners released afterwards, whose uses and money must come back exactly.
    #[arg(long, default_value_t = 5)]
    releases: usize,
}

/// One buyer's attempt: their customer, their code and order, and the answer.
struct Attempt {
    customer: usize,
    code: String,
    order: String,
    status: u16,
    body: Value,
}

pub(crate) async fn campaign_race(database_url: &str, args: CampaignRaceArgs) -> anyhow::Result<bool> {
    if args.buyers == 0 || args.customers == 0 || args.discount_cents == 0 {
        bail!("--buyers, --customers and --discount-cents must be positive");
    }
    let data_dir = std::env::temp_dir().join(format!("loadgen-campaign-race-{}", std::process::id()));
    let service = Service::start(&args.service_bin, database_url, &data_dir, &[("ADMIN_TOKEN", TOKEN)])?;
    let result = race(&service, database_url, &args).await;
    service.stop();
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}

async fn race(service: &Service, database_url: &str, args: &CampaignRaceArgs) -> anyhow::Result<bool> {
    let client = ServiceClient::new(&format!("http://{}", service.addr));
    let admin = client.with_token(TOKEN);
    wait_until(Duration::from_secs(60), "the service to answer", || async {
        client.get_json("/health").await.ok().filter(|h| h["status"] == "healthy")
    })
    .await?;
    let name = format!("loadgen-race-{}", chrono::Utc::now().timestamp_micros());
    let money = |cents: u64| format!("{}.{:02}", cents / 100, cents % 100);
    // The exact decimal text as a JSON number: no float in between.
    let amount = |cents: u64| serde_json::from_str::<Value>(&money(cents));
    let campaign = json!({"name": name, "usageLimit": args.cap, "perUserLimit": 1,
        "budget": amount(args.budget_cents)?});
    let (status, answer) = admin.post_json("/admin/campaigns", &campaign).await?;
    anyhow::ensure!(status == StatusCode::CREATED, "create campaign: {status} {answer}");
    // A generated batch reserves its shape (prefix and length): each run takes a new prefix.
    let prefix = format!("RACE{:X}-", chrono::Utc::now().timestamp_micros());
    let batch = json!({"count": args.buyers, "prefix": prefix, "length": 12, "discountType": "fixed",
        "discountValue": amount(args.discount_cents)?});
    let (status, answer) = admin.post_json(&format!("/admin/campaigns/{name}/batches"), &batch).await?;
    anyhow::ensure!(status == StatusCode::CREATED, "create batch: {status} {answer}");
    let export = admin.get_text(&format!("/admin/campaigns/{name}/codes?state=unused")).await?;
    let codes: Vec<String> =
        export.lines().skip(1).filter_map(|line| line.split(',').next()).map(str::to_owned).collect();
    anyhow::ensure!(codes.len() == args.buyers, "{} codes exported for {} buyers", codes.len(), args.buyers);

    let start = Arc::new(tokio::sync::Barrier::new(args.buyers));
    let stamp = chrono::Utc::now().timestamp_micros();
    let attempts: Vec<_> = codes
        .into_iter()
        .enumerate()
        .map(|(n, code)| {
            let (start, addr) = (start.clone(), service.addr);
            let customer = n % args.customers;
            let order = format!("race-{stamp}-{n}");
            tokio::spawn(async move {
                let mut conn = crate::conn::Conn::new(addr);
                let body =
                    json!({"code": code, "userId": format!("buyer-{customer}"), "orderId": order, "orderValue": 100});
                start.wait().await;
                let (status, bytes) =
                    conn.post("/api/coupons/redeem", body.to_string().into()).await.unwrap_or_default();
                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                Attempt { customer, code, order, status, body }
            })
        })
        .collect();
    let mut results = Vec::with_capacity(args.buyers);
    for attempt in attempts {
        results.push(attempt.await?);
    }
    let winners: Vec<&Attempt> = results.iter().filter(|a| a.status == 201).collect();
    let mut refusals: HashMap<String, usize> = HashMap::new();
    for attempt in results.iter().filter(|a| a.status != 201) {
        let reason =
            attempt.body["reason"].as_str().map_or_else(|| format!("status {}", attempt.status), str::to_owned);
        *refusals.entry(reason).or_default() += 1;
    }
    let by_money = usize::try_from(args.budget_cents / args.discount_cents)?;
    let expected = (args.cap as usize).min(by_money).min(args.customers.min(args.buyers));
    println!(
        "campaign-race: {} buyers ({} customers) over {} codes, cap {}, budget {} at {} a code: {} won, refused {refusals:?}",
        args.buyers,
        args.customers,
        args.buyers,
        args.cap,
        money(args.budget_cents),
        money(args.discount_cents),
        winners.len()
    );
    let mut ok = verdict(
        winners.len() == expected,
        &format!("{} winners = min(cap, budget / discount, customers) = {expected}", winners.len()),
    );
    let mut per_customer: HashMap<usize, usize> = HashMap::new();
    for winner in &winners {
        *per_customer.entry(winner.customer).or_default() += 1;
    }
    ok &= verdict(per_customer.values().all(|n| *n == 1), "no customer won twice");
    let known = ["CAMPAIGN_LIMIT_REACHED", "CAMPAIGN_BUDGET_EXHAUSTED", "CAMPAIGN_USER_LIMIT_REACHED"];
    ok &= verdict(refusals.keys().all(|r| known.contains(&r.as_str())), "every refusal is a campaign limit");

    let read = admin.get_json(&format!("/admin/campaigns/{name}")).await?;
    let spent_cents = winners.len() as u64 * args.discount_cents;
    ok &= verdict(
        read["used"] == json!(winners.len()) && cents_of(&read["spent"]) == Some(spent_cents),
        &format!(
            "admin read: used {} spent {} (expected {} and {})",
            read["used"],
            read["spent"],
            winners.len(),
            money(spent_cents)
        ),
    );
    ok &= verdict(
        live_rows(database_url, &name, winners.len()).await.is_ok(),
        &format!("{} live rows in coupon_usage", winners.len()),
    );

    let released = &winners[..args.releases.min(winners.len())];
    for winner in released {
        let body = json!({"code": winner.code, "orderId": winner.order});
        let (status, answer) = client.post_json("/api/coupons/release", &body).await?;
        anyhow::ensure!(status == StatusCode::OK, "release: {status} {answer}");
    }
    let read = admin.get_json(&format!("/admin/campaigns/{name}")).await?;
    let left = winners.len() - released.len();
    ok &= verdict(
        read["used"] == json!(left) && cents_of(&read["spent"]) == Some(left as u64 * args.discount_cents),
        &format!("after {} releases: used {} spent {}", released.len(), read["used"], read["spent"]),
    );
    ok &= verdict(live_rows(database_url, &name, left).await.is_ok(), &format!("{left} live rows after the releases"));
    Ok(ok)
}

/// An amount of the API (a JSON number of currency units) in cents, exactly.
fn cents_of(amount: &Value) -> Option<u64> {
    let text = amount.as_number()?.to_string();
    let (units, fraction) = text.split_once('.').unwrap_or((&text, ""));
    let fraction = format!("{fraction:0<2}");
    if fraction.len() > 2 {
        return None;
    }
    Some(units.parse::<u64>().ok()? * 100 + fraction.parse::<u64>().ok()?)
}

/// Waits (at most 10 s) until the campaign has `want` live rows in `coupon_usage`.
async fn live_rows(database_url: &str, campaign: &str, want: usize) -> anyhow::Result<()> {
    let want = i64::try_from(want)?;
    wait_until(Duration::from_secs(10), "coupon_usage to catch up", || async {
        let mut db = PgConnection::connect(database_url).await.ok()?;
        let rows: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM coupon_usage u JOIN code_batches b ON b.rule_id = u.coupon_id \
             JOIN campaigns c ON c.id = b.campaign_id WHERE c.name = $1 AND u.released_at IS NULL",
        )
        .bind(campaign)
        .fetch_one(&mut db)
        .await
        .ok()?;
        (rows == want).then_some(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_convert_to_cents_exactly() {
        for (amount, cents) in
            [(json!(245), Some(24_500)), (json!(7.5), Some(750)), (json!(0.07), Some(7)), (json!(1.005), None)]
        {
            assert_eq!(cents_of(&amount), cents, "{amount}");
        }
    }
}
