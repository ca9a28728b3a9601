//! `loadgen hostile`: the high findings of the second hostile-client review, replayed against
//! a service the drill starts itself (the default configuration, with an `API_TOKEN`), each
//! ending in PASS or FAIL. The user-rotation drill runs last: it uses up the loopback
//! address's failed-lookup budget for a window.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::ServiceClient;
use crate::drills::{verdict, wait_until};
use crate::load::{self, Phase, Shape};
use crate::mix::Mix;

/// The service's defaults the drills count on (config/default.toml).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
const FAILED_LOOKUPS_PER_USER: usize = 20;
const FAILED_LOOKUPS_PER_ADDRESS: usize = 100;
const MAX_IN_FLIGHT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Drill {
    SlowBodies,
    ReleaseGuessing,
    MemoryLoop,
    UserRotation,
}

#[derive(Debug, clap::Args)]
pub(crate) struct HostileArgs {
    /// The coupon-engine binary; the drill starts it on --url's address and stops it.
    #[arg(long, default_value = "target/release/coupon-engine")]
    service_bin: PathBuf,
    /// Drills to run (default: all), in the order slow-bodies, release-guessing, memory-loop,
    /// user-rotation.
    #[arg(long = "drill", value_enum)]
    drills: Vec<Drill>,
    /// Connections that send a request head and then a body byte a second: more than the
    /// service's in-flight bound, which they once used up.
    #[arg(long, default_value_t = MAX_IN_FLIGHT + 1000)]
    slow_bodies: usize,
    /// Redeem/release pairs per round of the memory loop.
    #[arg(long, default_value_t = 40_000)]
    pairs: u64,
    /// How long the drill's service remembers a released redemption (ledger.released_retention).
    #[arg(long, default_value_t = 20)]
    retention_secs: u64,
}

/// What every drill needs: the service, its coupon, a client with the token and one without.
struct Target {
    addr: SocketAddr,
    database_url: String,
    code: String,
    /// Anonymous: no API token.
    anonymous: ServiceClient,
    backend: ServiceClient,
}

pub(crate) async fn hostile(
    url: &str,
    addr: SocketAddr,
    database_url: &str,
    args: HostileArgs,
) -> anyhow::Result<bool> {
    let descriptors = rlimit::increase_nofile_limit(u64::MAX).context("raise the open-files limit")?;
    let needed = args.slow_bodies as u64 + 1000;
    anyhow::ensure!(descriptors >= needed, "{needed} open files needed, the hard limit allows {descriptors}");
    let mut db = PgConnection::connect(database_url).await.context("connect to DATABASE_URL")?;
    let code = format!("LOADGEN-HOSTILE-{}", chrono::Utc::now().timestamp_micros());
    let coupon_id: i64 = sqlx::query_scalar(
        "INSERT INTO coupons (code, type, discount_type, discount_value) VALUES ($1, 'time_specific', 'fixed', 5) RETURNING id",
    )
    .bind(&code)
    .fetch_one(&mut db)
    .await?;
    let data_dir = std::env::temp_dir().join(format!("loadgen-hostile-{}", uuid::Uuid::new_v4().simple()));
    let token = format!("loadgen-hostile-{}", uuid::Uuid::new_v4().simple());
    let mut service = Command::new(&args.service_bin)
        .arg("serve")
        .env("DATABASE_URL", database_url)
        .env("HTTP_ADDR", addr.to_string())
        .env("DATA_DIR", &data_dir)
        .env("API_TOKEN", &token)
        .env("COUPON__LEDGER__RELEASED_RETENTION", format!("{}s", args.retention_secs))
        // Thousands of slow bodies from this one machine: past the per-address cap they would
        // only take each other's places (tests/it/hostile.rs shows that), never reach the
        // in-flight bound this drill is about.
        .env("COUPON__HTTP__CONNECTION_CAP_EXEMPT", "127.0.0.1")
        // The drills' normal load validates without the token, as browsers do, from one
        // address: far past the anonymous rate of one address (tests/it/hostile.rs shows it).
        .env("COUPON__PROTECTION__ANONYMOUS_VALIDATIONS_PER_MINUTE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", args.service_bin.display()))?;
    let anonymous = ServiceClient::new(url);
    let target =
        Target { addr, database_url: database_url.to_owned(), backend: anonymous.with_token(&token), anonymous, code };
    let outcome = run(&target, &args).await;
    stop(&mut service);
    let _ = std::fs::remove_dir_all(&data_dir);
    // The drill's rows go with its coupon.
    sqlx::query("DELETE FROM coupon_usage WHERE coupon_id = $1").bind(coupon_id).execute(&mut db).await?;
    sqlx::query("DELETE FROM coupons WHERE id = $1").bind(coupon_id).execute(&mut db).await?;
    outcome
}

async fn run(target: &Target, args: &HostileArgs) -> anyhow::Result<bool> {
    wait_until(Duration::from_secs(30), "the service to serve the drill's coupon", || async {
        let answer = target.backend.validate(&json!({"code": target.code, "userId": "probe", "orderValue": 100})).await;
        answer.is_ok_and(|a| a["valid"] == true).then_some(())
    })
    .await?;
    let wanted = |drill| args.drills.is_empty() || args.drills.contains(&drill);
    let mut ok = true;
    if wanted(Drill::SlowBodies) {
        ok &= slow_bodies(target, args.slow_bodies).await?;
    }
    if wanted(Drill::ReleaseGuessing) {
        ok &= release_guessing(target).await?;
    }
    if wanted(Drill::MemoryLoop) {
        ok &= memory_loop(target, args.pairs, Duration::from_secs(args.retention_secs)).await?;
    }
    if wanted(Drill::UserRotation) {
        ok &= user_rotation(target).await?;
    }
    Ok(ok)
}

fn stop(service: &mut Child) {
    let _ = Command::new("kill").arg("-TERM").arg(service.id().to_string()).status();
    let _ = service.wait();
}

/// Slow bodies: more connections than the in-flight bound each send a head and then a body
/// byte a second. Normal clients must be served meanwhile, and every slow connection must get
/// `408` (or be closed) once the body deadline passes.
async fn slow_bodies(target: &Target, sockets: usize) -> anyhow::Result<bool> {
    println!("slow-bodies: {sockets} connections trickling a 1,000-byte body at a byte a second");
    let started = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(tokio::sync::Mutex::new(Vec::<(Duration, bool)>::new()));
    let trickles: Vec<_> = (0..sockets)
        .map(|_| {
            let (started, answered, addr) = (started.clone(), answered.clone(), target.addr);
            tokio::spawn(async move {
                let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else { return };
                let head = "POST /api/coupons/validate HTTP/1.1\r\nhost: slow\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{";
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let since = Instant::now();
                started.fetch_add(1, Ordering::Relaxed);
                let mut buf = [0u8; 256];
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                // Never longer than the deadline and then some: the drill ends by itself.
                while since.elapsed() < BODY_READ_TIMEOUT * 3 {
                    tokio::select! {
                        read = stream.read(&mut buf) => {
                            let got_408 = matches!(read, Ok(n) if buf[..n].starts_with(b"HTTP/1.1 408"));
                            answered.lock().await.push((since.elapsed(), got_408));
                            return;
                        }
                        _ = tick.tick() => {
                            if stream.write_all(b" ").await.is_err() {
                                answered.lock().await.push((since.elapsed(), false));
                                return;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    let _ = wait_until(Duration::from_secs(20), "the slow connections to send their heads", || async {
        (started.load(Ordering::Relaxed) as usize >= sockets).then_some(())
    })
    .await;
    let heads = started.load(Ordering::Relaxed);
    let mix = Arc::new(Mix::build(&target.database_url, "valid", 42).await?);
    let shape = Shape::Closed { requests: 20_000, concurrency: 50 };
    let normal = load::run_phase(vec![target.addr], mix, Phase { name: "normal".into(), shape }, 0).await;
    for trickle in trickles {
        let _ = trickle.await;
    }
    let answered = answered.lock().await;
    let refused = normal.stats.by_status.get(&503).copied().unwrap_or(0);
    let latest = answered.iter().map(|(after, _)| *after).max().unwrap_or_default();
    let with_408 = answered.iter().filter(|(_, got)| *got).count();
    println!(
        "slow-bodies: {heads} heads sent; meanwhile {} normal requests: {:.0} req/s, p99 {:.2} ms, {} failed, {refused} × 503",
        normal.stats.total(),
        normal.throughput(),
        normal.stats.ms(0.99),
        normal.stats.failed
    );
    println!(
        "slow-bodies: {} slow connections answered ({with_408} with 408), the last {:.1} s after its head",
        answered.len(),
        latest.as_secs_f64()
    );
    let mut ok =
        verdict(heads as usize >= MAX_IN_FLIGHT.min(sockets), "the slow connections outnumber the in-flight bound");
    ok &= verdict(
        normal.stats.failed == 0 && normal.stats.wrong == 0 && refused == 0,
        "normal clients got every answer, no 503",
    );
    ok &= verdict(
        answered.len() as u64 == heads && latest <= BODY_READ_TIMEOUT + Duration::from_secs(3),
        "every slow body was cut off at the body deadline",
    );
    Ok(ok)
}

/// Release guessing: shoppers redeem through the shop's backend; an attacker without the
/// token guesses their (sequential) order ids. Nothing may be released, and the backend's own
/// failed releases are budgeted.
async fn release_guessing(target: &Target) -> anyhow::Result<bool> {
    const VICTIMS: usize = 200;
    const GUESSES: usize = 2_000;
    let order = |n: usize| format!("hostile-order-{n}");
    for n in 0..VICTIMS {
        let body =
            json!({"code": target.code, "userId": format!("shopper-{n}"), "orderId": order(n), "orderValue": 1000});
        let (status, answer) = target.backend.post_json("/api/coupons/redeem", &body).await?;
        anyhow::ensure!(status == 201, "victim redemption {n}: {status} {answer}");
    }
    let guessing = Instant::now();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for n in 0..GUESSES {
        let body = json!({"code": target.code, "orderId": order(n)});
        let (status, _) = target.anonymous.post_json("/api/coupons/release", &body).await?;
        *statuses.entry(status.as_u16()).or_default() += 1;
    }
    println!(
        "release-guessing: {GUESSES} anonymous guesses in {:.2} s: {statuses:?}",
        guessing.elapsed().as_secs_f64()
    );
    // With the token but someone else's user id: the ownership check.
    let body = json!({"code": target.code, "orderId": order(0), "userId": "not-the-shopper"});
    let (wrong_owner, _) = target.backend.post_json("/api/coupons/release", &body).await?;
    let mut still_redeemed = 0;
    for n in 0..VICTIMS {
        let body =
            json!({"code": target.code, "userId": format!("shopper-{n}"), "orderId": order(n), "orderValue": 1000});
        let (status, _) = target.backend.post_json("/api/coupons/redeem", &body).await?;
        still_redeemed += usize::from(status == 200);
    }
    // The backend guessing for one user: budgeted like failed lookups.
    let mut first_429 = None;
    for n in 0..FAILED_LOOKUPS_PER_USER + 5 {
        let body = json!({"code": target.code, "orderId": format!("no-such-order-{n}"), "userId": "guesser"});
        let (status, _) = target.backend.post_json("/api/coupons/release", &body).await?;
        if status == 429 && first_429.is_none() {
            first_429 = Some(n);
        }
    }
    println!(
        "release-guessing: wrong owner → {wrong_owner}; {still_redeemed}/{VICTIMS} victims still redeemed; the backend's failed releases for one user refused from attempt {}",
        first_429.map_or("never".into(), |n| (n + 1).to_string())
    );
    let mut ok = verdict(statuses.keys().all(|s| *s == 401), "every release without the API token → 401");
    ok &= verdict(wrong_owner == 404, "a release naming another user → 404");
    ok &= verdict(still_redeemed == VICTIMS, "no shopper's redemption was released");
    ok &= verdict(first_429 == Some(FAILED_LOOKUPS_PER_USER), "failed releases are budgeted per user");
    Ok(ok)
}

/// The memory loop: rounds of redeem/release pairs with 128-character ids, each round after
/// the last one's releases were forgotten. The ledger reuses the room the forgotten ones
/// left; the filter that remembers them is fixed-size, its pages touched by the first
/// rounds. By the third round, memory must have stopped growing.
async fn memory_loop(target: &Target, pairs: u64, retention: Duration) -> anyhow::Result<bool> {
    const ROUNDS: u64 = 3;
    let remembered = || async { target.backend.metric("ledger_remembered_redemptions").await };
    let resident = || async { target.backend.metric("process_resident_memory_bytes").await };
    let baseline = remembered().await?;
    let (mut forgotten, mut last_growth) = (true, 0.0);
    for round in 0..ROUNDS {
        let before = resident().await?;
        let took = redeem_release_round(target, round * pairs, pairs).await?;
        let held = remembered().await?;
        let grown = resident().await? - before;
        println!(
            "memory-loop: round {}, {pairs} pairs in {:.1} s: {} remembered, resident memory {:.1} → {:.1} MiB ({:+.1})",
            round + 1,
            took.as_secs_f64(),
            held - baseline,
            before / f64::from(1 << 20),
            (before + grown) / f64::from(1 << 20),
            grown / f64::from(1 << 20),
        );
        let wait = retention * 2 + Duration::from_secs(10);
        forgotten &= wait_until(wait, "released redemptions to be forgotten", || async {
            remembered().await.ok().filter(|n| *n <= baseline).map(drop)
        })
        .await
        .is_ok();
        last_growth = grown;
    }
    let mut ok = verdict(forgotten, &format!("released redemptions forgotten after {retention:?} every round"));
    ok &= verdict(last_growth <= f64::from(4 << 20), "memory stopped growing by the last round (≤ 4 MiB)");
    Ok(ok)
}

/// `pairs` redeems, each released at once, with 128-character user and order ids.
async fn redeem_release_round(target: &Target, from: u64, pairs: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(from));
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (client, next, code) = (target.backend.clone(), next.clone(), target.code.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= from + pairs {
                        return anyhow::Ok(());
                    }
                    let (user, order) = (format!("u{n:0>127}"), format!("o{n:0>127}"));
                    let redeem = json!({"code": code, "userId": user, "orderId": order, "orderValue": 1000});
                    let (status, answer) = client.post_json("/api/coupons/redeem", &redeem).await?;
                    anyhow::ensure!(status == 201, "redeem {n}: {status} {answer}");
                    let release = json!({"code": code, "orderId": order, "userId": user});
                    let (status, answer) = client.post_json("/api/coupons/release", &release).await?;
                    anyhow::ensure!(status == 200, "release {n}: {status} {answer}");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    Ok(started.elapsed())
}

/// User rotation: an anonymous client guesses codes with a new `userId` each time. The
/// address budget must stop it after its failures, a real code among the guesses must stay
/// unfound, and shoppers coming through the backend must not be locked out.
async fn user_rotation(target: &Target) -> anyhow::Result<bool> {
    const GUESSES: usize = 2_000;
    let started = Instant::now();
    let (mut tested, mut refused, mut found) = (0, 0, false);
    for n in 0..GUESSES {
        // The real code is somewhere in the guesses.
        let code = if n == GUESSES / 2 { target.code.clone() } else { format!("GUESS-{n:06}") };
        let body = json!({"code": code, "userId": format!("rotated-{n}"), "orderValue": 1000});
        let (status, answer) = target.anonymous.post_json("/api/coupons/validate", &body).await?;
        match status.as_u16() {
            429 => refused += 1,
            _ => {
                tested += 1;
                found |= answer.get("valid") == Some(&Value::Bool(true));
            }
        }
    }
    let body = json!({"code": target.code, "userId": "shopper-at-home", "orderValue": 1000});
    let through_backend = target.backend.validate(&body).await.is_ok_and(|a| a["valid"] == true);
    println!(
        "user-rotation: {GUESSES} guesses in {:.2} s with a new userId each: {tested} looked up, {refused} refused with 429; the real code {}",
        started.elapsed().as_secs_f64(),
        if found { "FOUND" } else { "not found" }
    );
    let mut ok = verdict(tested <= FAILED_LOOKUPS_PER_ADDRESS, "the address budget stopped the rotation");
    ok &= verdict(!found, "the real code among the guesses stayed unfound");
    ok &= verdict(through_backend, "a shopper through the shop's backend is not locked out");
    Ok(ok)
}
