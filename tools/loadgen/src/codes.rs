//! `loadgen codes`: the bulk-code budgets. On a scratch database, with the service binary
//! started on it, generates a batch of `--first` codes and then one of `--second` through the
//! admin API, and measures from each request until its last code validates; the service's
//! memory per code; the CSV export of the first batch; and a restart with every code.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::BodyExt;
use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::client::ServiceClient;
use crate::drills::{verdict, wait_until};
use crate::scratch::{Scratch, Service};

const TOKEN: &str = "loadgen-codes-admin-token";

#[derive(Debug, clap::Args)]
pub(crate) struct CodesArgs {
    /// Codes in the first batch (usable within 10 s, exported within 10 s).
    #[arg(long, default_value_t = 1_000_000)]
    first: u64,
    /// Codes in the second batch (usable within 60 s).
    #[arg(long, default_value_t = 10_000_000)]
    second: u64,
    /// The coupon-engine binary.
    #[arg(long, default_value = "target/release/coupon-engine")]
    service_bin: PathBuf,
}

pub(crate) async fn codes(database_url: &str, args: CodesArgs) -> anyhow::Result<bool> {
    if !args.service_bin.exists() {
        bail!("{} not found: build it with cargo build --release", args.service_bin.display());
    }
    let scratch = Scratch::create(database_url, "codes").await?;
    let outcome = run(&scratch, &args).await;
    scratch.drop_now().await;
    outcome
}

async fn run(scratch: &Scratch, args: &CodesArgs) -> anyhow::Result<bool> {
    let migrated = Command::new(&args.service_bin).arg("migrate").env("DATABASE_URL", &scratch.url).status()?;
    if !migrated.success() {
        bail!("coupon-engine migrate failed");
    }
    let data_dir = std::env::temp_dir().join(format!("loadgen-codes-{}", std::process::id()));
    let env = [("ADMIN_TOKEN", TOKEN)];
    let service = Service::start(&args.service_bin, &scratch.url, &data_dir, &env)?;
    let measured = measure(&service, scratch, args).await;
    service.stop();
    let outcome = match measured {
        Ok(ok) => restart(&args.service_bin, scratch, &data_dir, args.first + args.second).await.map(|r| ok & r),
        Err(err) => Err(err),
    };
    let _ = std::fs::remove_dir_all(&data_dir);
    outcome
}

async fn measure(service: &Service, scratch: &Scratch, args: &CodesArgs) -> anyhow::Result<bool> {
    let base = format!("http://{}", service.addr);
    let client = ServiceClient::new(&base);
    let admin = client.with_token(TOKEN);
    wait_ready(&client).await?;
    let (status, answer) = admin.post_json("/admin/campaigns", &json!({"name": "bulk"})).await?;
    anyhow::ensure!(status == 201, "create the campaign: {status} {answer}");
    let mut db = PgConnection::connect(&scratch.url).await?;
    let resident_before = client.metric("process_resident_memory_bytes").await?;

    let first = generate(&admin, &client, &mut db, "FIRST-", args.first).await?;
    let resident_first = client.metric("process_resident_memory_bytes").await?;
    let per_code_first = (resident_first - resident_before) / args.first as f64;
    println!(
        "codes: {} codes usable {:.2} s after the request; resident memory +{:.0} MiB ({per_code_first:.0} B a code)",
        args.first,
        first.as_secs_f64(),
        (resident_first - resident_before) / f64::from(1 << 20)
    );
    let (exported, lines) = export(&base).await?;
    println!("codes: {lines} lines exported as CSV in {:.2} s", exported.as_secs_f64());

    let second = generate(&admin, &client, &mut db, "SECOND-", args.second).await?;
    let resident_second = client.metric("process_resident_memory_bytes").await?;
    let per_code = (resident_second - resident_before) / (args.first + args.second) as f64;
    println!(
        "codes: {} more codes usable {:.2} s after the request; resident memory +{:.0} MiB in all ({per_code:.0} B a code)",
        args.second,
        second.as_secs_f64(),
        (resident_second - resident_before) / f64::from(1 << 20)
    );
    let mut ok = verdict(first <= Duration::from_secs(10), &format!("{} codes usable within 10 s", args.first));
    ok &= verdict(lines == args.first + 1 && exported <= Duration::from_secs(10), "the export within 10 s, every code");
    ok &= verdict(second <= Duration::from_secs(60), &format!("{} codes usable within 60 s", args.second));
    ok &= verdict(per_code <= 100.0, &format!("{per_code:.0} bytes of resident memory a code (budget ≤ 100)"));
    Ok(ok)
}

/// Asks for a batch of `count` codes and waits until its last code validates here; returns
/// the time from the request.
async fn generate(
    admin: &ServiceClient,
    client: &ServiceClient,
    db: &mut PgConnection,
    prefix: &str,
    count: u64,
) -> anyhow::Result<Duration> {
    let requested = Instant::now();
    let body = json!({"count": count, "prefix": prefix, "discountType": "fixed", "discountValue": 1});
    let (status, answer) = admin.post_json("/admin/campaigns/bulk/batches", &body).await?;
    anyhow::ensure!(status == 201 || status == 202, "generate: {status} {answer}");
    let batch = answer["batchId"].as_i64().context("no batchId")?;
    let state = wait_until(Duration::from_secs(600), "the batch to be done", || async {
        let state = admin.get_json(&format!("/admin/batches/{batch}")).await.ok()?;
        (state["status"] != "running").then_some(state)
    })
    .await?;
    anyhow::ensure!(state["status"] == "done", "batch {batch} {}: {}", state["status"], state["error"]);
    let last: String = sqlx::query_scalar("SELECT code FROM batch_codes WHERE batch_id = $1 AND position = $2")
        .bind(batch)
        .bind(i32::try_from(count - 1)?)
        .fetch_one(&mut *db)
        .await
        .context("the batch failed: its last code is not in batch_codes")?;
    // A new user each time: one user asking over and over for a code not yet loaded would
    // rightly be stopped by the failed-lookup guard.
    let mut probe = 0u64;
    wait_until(Duration::from_secs(600), "the last code to validate", || {
        probe += 1;
        let body = json!({"code": last, "userId": format!("probe-{probe}"), "orderValue": 10});
        async move {
            let answer = client.validate(&body).await.ok()?;
            (answer["valid"] == true).then_some(())
        }
    })
    .await?;
    Ok(requested.elapsed())
}

/// Streams the campaign's codes as CSV and counts the lines.
async fn export(base: &str) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let http: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let request = hyper::Request::builder()
        .uri(format!("{base}/admin/campaigns/bulk/codes?state=all"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(http_body_util::Empty::new())?;
    let mut body = http.request(request).await?.into_body();
    let mut lines = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            lines += data.iter().filter(|b| **b == b'\n').count() as u64;
        }
    }
    Ok((started.elapsed(), lines))
}

/// Starts the service again with every code in the database: the start-up load.
async fn restart(bin: &PathBuf, scratch: &Scratch, data_dir: &std::path::Path, codes: u64) -> anyhow::Result<bool> {
    let service = Service::start(bin, &scratch.url, data_dir, &[])?;
    let client = ServiceClient::new(&format!("http://{}", service.addr));
    let ready = wait_ready(&client).await;
    let loaded = service.log("cache loaded");
    let resident = client.metric("process_resident_memory_bytes").await;
    service.stop();
    ready?;
    let loaded = loaded.context("no \"cache loaded\" log line")?;
    let seconds = loaded["elapsed_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0;
    println!(
        "codes: start-up with {} bulk codes in {seconds:.2} s; resident memory {:.0} MiB",
        loaded["bulk_codes"],
        resident? / f64::from(1 << 20)
    );
    Ok(verdict(
        loaded["bulk_codes"].as_u64() == Some(codes) && seconds <= 20.0,
        &format!("start-up with {codes} codes within 20 s"),
    ))
}

async fn wait_ready(client: &ServiceClient) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(300), "the service to be ready", || async {
        client.get_json("/health/ready").await.ok().filter(|r| r["ready"] == true).map(drop)
    })
    .await
}
