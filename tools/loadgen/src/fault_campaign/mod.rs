//! `loadgen fault-campaign` (run by `tools/campaign`): real instances behind HAProxy on a
//! real PostgreSQL, each instance reaching it through a proxy the nemesis cuts, stalls and
//! slows, while the nemesis also kills, pauses and restarts instances and restarts PostgreSQL,
//! and buyers redeem, hold, confirm and release every coupon shape. Afterwards every fault is
//! healed, every journal ships, every limited total is sold out, and the history (written as
//! JSON lines) is checked against PostgreSQL's final rows by the simulation's checker
//! (`coupon_engine::history`).

mod clients;
mod fleet;
mod nemesis;
mod proxy;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use coupon_engine::domain::coupon::CouponId;
use coupon_engine::history::{Answer, Checker, FinalUse, SetMark, Shape};
use serde_json::json;
use sqlx::{Connection, PgConnection};
use tokio::sync::Mutex;

use self::clients::{Op, Request};
use self::fleet::{ADMIN_TOKEN, Balancer, Instance, tool};
use self::nemesis::{Bench, Episode};
use self::proxy::Link;
use crate::client::ServiceClient;
use crate::drills::{verdict, wait_until};

#[derive(Debug, clap::Args)]
pub(crate) struct FaultCampaignArgs {
    /// The coupon-engine binary.
    #[arg(long, default_value = "target/release/coupon-engine")]
    service_bin: PathBuf,
    /// How long the buyers and the nemesis run, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seeds the nemesis's schedule and the buyers' choices (the timing of a real cluster is
    /// not repeatable: a seed replays the schedule, not the history).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 3)]
    instances: usize,
    /// Buyers in flight.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Requests a second, across every buyer.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Where the instances' DATA_DIRs, their logs, HAProxy's configuration and the history go.
    #[arg(long, default_value = "data/campaign")]
    dir: PathBuf,
    /// Runs nothing: checks the history already in --dir against the database as the run
    /// left it.
    #[arg(long)]
    recheck: bool,
}

/// Every request carries ORDER_VALUE; discounts are fixed, in cents.
struct Sellable {
    code: String,
    shape: Shape,
}

/// The checker's coupon ids for the bulk codes, which share one coupon row in PostgreSQL:
/// each code is a coupon of limit 1 to the checker.
const BULK_IDS: CouponId = 1_000_000;
/// The orders of the sell-out begin with this.
const SELL_OUT: &str = "sell-";
const BULK_CODES: usize = 6;

pub(crate) async fn fault_campaign(database_url: &str, args: FaultCampaignArgs) -> anyhow::Result<bool> {
    if args.recheck {
        let (history, episodes) = read_history(&args.dir.join("history.jsonl"))?;
        let mut db = PgConnection::connect(database_url).await.context("connect to the campaign's database")?;
        let catalog = catalog_of(&mut db).await?;
        drop(db);
        return verify(database_url, &args.dir, &catalog, &history, &episodes).await;
    }
    anyhow::ensure!(args.instances >= 2 && args.clients > 0 && args.rate > 0.0, "at least 2 instances and 1 client");
    let (upstream, database) = upstream(database_url)?;
    std::fs::create_dir_all(&args.dir)?;
    let mut db = PgConnection::connect(database_url).await.context("connect to the campaign's database")?;
    let mut catalog = create_catalog(&mut db).await?;
    drop(db);

    let bench = Arc::new(Bench { bin: args.service_bin.clone(), database });
    let mut nodes = Vec::new();
    for i in 0..args.instances {
        nodes.push(Instance::new(i, &args.dir, Link::start(upstream).await?)?);
    }
    // One at a time: the first decides alone, the next ones make it share.
    for node in &mut nodes {
        node.start(&bench.bin, &bench.database, Duration::from_secs(60)).await?;
    }
    let balancer = Balancer::start(&args.dir, &nodes)?;
    let admin = nodes[0].client.with_token(ADMIN_TOKEN);
    let bulk = bulk_codes();
    let (status, answer) = admin
        .post_json(
            "/admin/campaigns/fc-bulk/batches",
            &json!({"codes": bulk, "discountType": "fixed", "discountValue": 5}),
        )
        .await?;
    anyhow::ensure!(status.as_u16() == 201, "importing the bulk codes answered {status}: {answer}");
    catalog.extend(bulk_sellables());
    for node in &nodes {
        for item in &catalog {
            let body = json!({"code": item.code, "userId": "probe", "orderValue": clients::ORDER_VALUE});
            wait_until(Duration::from_secs(10), "every code served everywhere", || async {
                node.client.validate(&body).await.is_ok_and(|a| a["valid"] == true).then_some(())
            })
            .await?;
        }
    }

    let mut targets: Vec<(String, ServiceClient)> = nodes.iter().map(|n| (n.name.clone(), n.client.clone())).collect();
    targets.push(("balancer".into(), ServiceClient::new(&format!("http://127.0.0.1:{}", balancer.port))));
    let instances = Arc::new(Mutex::new(nodes));
    let stop = Arc::new(AtomicBool::new(false));
    println!(
        "fault-campaign: {} instances behind HAProxy, {} buyers at {}/s for {} s, seed {}",
        args.instances, args.clients, args.rate, args.seconds, args.seed
    );
    let nemesis = tokio::spawn(nemesis::run(args.seed, bench.clone(), instances.clone(), stop.clone()));
    let codes = catalog.iter().map(|c| c.code.clone()).collect();
    let buyers = tokio::spawn(clients::buy(args.seed, args.clients, args.rate, targets, codes, stop.clone()));
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut history = buyers.await?;
    let episodes = nemesis.await??;

    let healed = heal(&bench, &instances).await;
    let outcome = match healed {
        Ok(()) => finish(database_url, &args, &catalog, &instances, &mut history, &episodes).await,
        Err(e) => Err(e),
    };
    balancer.stop();
    for node in instances.lock().await.iter_mut() {
        node.stop();
    }
    outcome
}

/// PostgreSQL's address and the database's name, from its URL.
fn upstream(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = url.split_once("://").context("DATABASE_URL has no scheme")?.1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let (host, database) = rest.split_once('/').context("DATABASE_URL has no database")?;
    let database = database.split('?').next().unwrap_or(database).to_owned();
    let host = if host.contains(':') { host.to_owned() } else { format!("{host}:5432") };
    let addr = host.to_socket_addrs()?.next().context("DATABASE_URL's host does not resolve")?;
    anyhow::ensure!(addr.ip().is_loopback(), "the campaign runs against a loopback PostgreSQL only");
    Ok((addr, database))
}

/// The coupons of every shape but bulk codes (imported once the instances run): a total, a
/// per-user limit, a campaign cap over two coupons, a campaign budget, no limit at all.
async fn create_catalog(db: &mut PgConnection) -> anyhow::Result<Vec<Sellable>> {
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM coupons").fetch_one(&mut *db).await?;
    anyhow::ensure!(count == 0, "the campaign needs an empty database (tools/campaign makes one)");
    let campaign = |name: &str, limit: Option<i32>, budget: Option<i32>| {
        sqlx::query_scalar::<_, i64>(
            "INSERT INTO campaigns (name, usage_limit, budget) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(name.to_owned())
        .bind(limit)
        .bind(budget)
    };
    let capped = campaign("fc-capped", Some(4), None).fetch_one(&mut *db).await?;
    let budgeted = campaign("fc-budgeted", None, Some(30)).fetch_one(&mut *db).await?;
    campaign("fc-bulk", None, None).fetch_one(&mut *db).await?;
    // The checker's view of each coupon; its id is PostgreSQL's, once inserted.
    let shape = |discount: u64,
                 limit: Option<u64>,
                 per_user: Option<u64>,
                 campaign: Option<(i64, Option<u64>, Option<u64>)>| Shape {
        coupon: 0,
        limit,
        per_user,
        campaign: campaign.map(|c| c.0),
        campaign_uses: campaign.and_then(|c| c.1),
        campaign_cents: campaign.and_then(|c| c.2),
        discount_cents: discount * 100,
        claimed: limit.is_some() || per_user.is_some() || campaign.is_some_and(|c| c.1.is_some() || c.2.is_some()),
    };
    let specs = [
        ("FC-TOTAL", shape(5, Some(5), None, None)),
        ("FC-PERUSER", shape(5, Some(8), Some(1), None)),
        ("FC-CAPA", shape(5, None, None, Some((capped, Some(4), None)))),
        ("FC-CAPB", shape(5, None, None, Some((capped, Some(4), None)))),
        ("FC-BUDGET", shape(10, None, None, Some((budgeted, None, Some(3_000))))),
        ("FC-FREE", shape(5, None, None, None)),
    ];
    let mut catalog = Vec::new();
    for (code, mut shape) in specs {
        shape.coupon = sqlx::query_scalar(
            "INSERT INTO coupons (code, type, discount_type, discount_value, usage_limit, per_user_limit, campaign_id, \
             combines_with) VALUES ($1, 'time_specific', 'fixed', $2, $3, $4, $5, '{item,order,shipping}') RETURNING id",
        )
        .bind(code)
        .bind(i32::try_from(shape.discount_cents / 100)?)
        .bind(shape.limit.map(i32::try_from).transpose()?)
        .bind(shape.per_user.map(i32::try_from).transpose()?)
        .bind(shape.campaign)
        .fetch_one(&mut *db)
        .await?;
        catalog.push(Sellable { code: code.to_owned(), shape });
    }
    Ok(catalog)
}

/// Every fault healed: PostgreSQL up, links up, every instance running and resumed.
async fn heal(bench: &Bench, instances: &Mutex<Vec<Instance>>) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(|| tool("pg", &["start"])).await??;
    let n = instances.lock().await.len();
    for i in 0..n {
        {
            let mut guard = instances.lock().await;
            guard[i].heal_link();
            guard[i].resume();
        }
        nemesis::restart(i, bench, instances).await?;
    }
    Ok(())
}

/// Waits until every instance has shipped its journal.
async fn shipped(instances: &Mutex<Vec<Instance>>) -> anyhow::Result<()> {
    let nodes = instances.lock().await;
    for node in nodes.iter() {
        wait_until(Duration::from_secs(90), "every journal shipped", || async {
            (node.backlog().await == Some(0.0)).then_some(())
        })
        .await
        .with_context(|| node.name.clone())?;
    }
    Ok(())
}

async fn finish(
    database_url: &str,
    args: &FaultCampaignArgs,
    catalog: &[Sellable],
    instances: &Mutex<Vec<Instance>>,
    history: &mut Vec<Request>,
    episodes: &[Episode],
) -> anyhow::Result<bool> {
    shipped(instances).await?;
    // Every hold's deadline passed, and its expiry shipped.
    let last_deadline = history.iter().filter_map(|r| r.expires_at_ms).max().unwrap_or(0);
    let wait_ms = (last_deadline + 3_000 - chrono::Utc::now().timestamp_millis()).max(0);
    tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;
    sell_out(catalog, instances, history).await;
    shipped(instances).await?;
    write_history(&args.dir.join("history.jsonl"), history, episodes)?;
    verify(database_url, &args.dir, catalog, history, episodes).await
}

/// Checks a history against PostgreSQL's final rows, and says what it held.
async fn verify(
    database_url: &str,
    dir: &std::path::Path,
    catalog: &[Sellable],
    history: &[Request],
    episodes: &[Episode],
) -> anyhow::Result<bool> {
    let mut db = PgConnection::connect(database_url).await?;
    let by_code: HashMap<&str, CouponId> = catalog.iter().map(|c| (c.code.as_str(), c.shape.coupon)).collect();
    type UsageRow = (i64, Option<String>, String, String, bool, bool, Option<uuid::Uuid>, Option<i64>);
    let rows: Vec<UsageRow> = sqlx::query_as(
        "SELECT coupon_id, code, order_id, user_id, released_at IS NULL, hold_expires_at IS NOT NULL, group_id, \
         (SELECT count(*) FROM jsonb_array_elements(group_codes) c WHERE NOT c ? 'reason') FROM coupon_usage",
    )
    .fetch_all(&mut db)
    .await?;
    let uses: Vec<FinalUse> = rows
        .into_iter()
        .map(|(coupon, code, order, user, live, held, group, taken)| FinalUse {
            coupon: code.as_deref().and_then(|c| by_code.get(c).copied()).unwrap_or(coupon),
            order,
            user,
            live,
            held,
            set: group.map(|id| SetMark { id, taken: usize::try_from(taken.unwrap_or(0)).unwrap_or(0) }),
        })
        .collect();
    let dropped: BTreeSet<(CouponId, String)> =
        sqlx::query_as::<_, (i64, String)>("SELECT coupon_id, order_id FROM order_conflicts")
            .fetch_all(&mut db)
            .await?
            .into_iter()
            .collect();
    drop(db);

    let shapes: Vec<Shape> = catalog.iter().map(|c| c.shape).collect();
    let mut checker = Checker::new(&shapes, 100);
    let mut unexpected: BTreeMap<(Op, u16), u64> = BTreeMap::new();
    let checked =
        check(&mut checker, &by_code, history, &mut unexpected).and_then(|()| checker.check_final(&uses, &dropped));
    let sold_out = sold_out(catalog, &uses);

    let counts = checker.counts;
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    for episode in episodes {
        for fault in &episode.faults {
            let kind = fault.split('(').next().unwrap_or(fault).to_owned();
            *by_kind.entry(kind).or_default() += 1;
        }
    }
    let selling = history.iter().filter(|r| r.order.starts_with(SELL_OUT)).count();
    println!(
        "fault-campaign: {} requests during {} episodes of faults ({} faults: {by_kind:?}), {selling} in the sell-out",
        history.len() - selling,
        episodes.len(),
        by_kind.values().sum::<u64>(),
    );
    println!(
        "fault-campaign: {} answers checked, {} acknowledged, {} limit refusals of which {} false ({:.3}%), \
         {} 404s to releases of acknowledged uses, {} order conflicts; history in {}",
        counts.answers,
        counts.acknowledged,
        counts.limit_refusals,
        counts.false_refusals,
        100.0 * counts.false_refusals as f64 / counts.limit_refusals.max(1) as f64,
        counts.false_not_found,
        counts.order_conflicts,
        dir.join("history.jsonl").display()
    );
    let mut ok = verdict(checked.is_ok(), &format!("the history keeps every invariant{}", failure(&checked)));
    ok &=
        verdict(sold_out.is_ok(), &format!("every limited total sells out to exactly its limit{}", failure(&sold_out)));
    ok &= verdict(unexpected.is_empty(), &format!("no answer outside the contract's ({unexpected:?})"));
    Ok(ok)
}

fn failure(result: &Result<(), String>) -> String {
    result.as_ref().err().map(|e| format!(": {e}")).unwrap_or_default()
}

/// What an answer says of its use, or `None` for an answer outside the contract.
fn answer(r: &Request) -> Option<Answer> {
    let limit = matches!(
        r.reason.as_deref(),
        Some("USAGE_LIMIT_REACHED" | "CAMPAIGN_LIMIT_REACHED" | "CAMPAIGN_BUDGET_EXHAUSTED")
    );
    Some(match (r.op, r.status) {
        (Op::Redeem | Op::Hold, 201) => Answer::Taken { hold_until: r.expires_at_ms },
        (Op::Redeem | Op::Hold, 200) => Answer::Replayed { hold_until: r.expires_at_ms },
        (Op::Redeem | Op::Hold, 409 | 422) => Answer::Refused { limit },
        (Op::Release, 200) => Answer::Released,
        (Op::Release, 404) => Answer::NotFound,
        (_, 0 | 503) => Answer::Unavailable,
        _ => return None,
    })
}

/// Feeds the history to the checker in the order its answers took effect, as far as a real
/// cluster lets one know: a use taken counts from its acknowledgement (its end), anything
/// that may have ended a use counts from its request (its start), so that a unit given back
/// and sold again at once is never counted twice, except a release of an order whose take
/// was still in flight, which counts from that take's answer. (For false refusals this errs
/// high: a release in flight counts as done.)
fn check(
    checker: &mut Checker,
    by_code: &HashMap<&str, CouponId>,
    history: &[Request],
    unexpected: &mut BTreeMap<(Op, u16), u64>,
) -> Result<(), String> {
    let taken = |answer: &Answer| matches!(answer, Answer::Taken { .. } | Answer::Replayed { .. });
    // When each order's takes were in flight, to place the releases that overlap them.
    let mut takes: HashMap<(&str, &str), Vec<(i64, i64)>> = HashMap::new();
    for r in history {
        if answer(r).as_ref().is_some_and(taken) {
            takes.entry((r.code.as_str(), r.order.as_str())).or_default().push((r.start_us, r.end_us));
        }
    }
    let mut events: Vec<(i64, u8, &Request, Answer)> = Vec::with_capacity(history.len());
    for r in history {
        let Some(answer) = answer(r) else {
            *unexpected.entry((r.op, r.status)).or_default() += 1;
            continue;
        };
        if taken(&answer) {
            events.push((r.end_us, 1, r, answer));
            continue;
        }
        // A release that gave back (or may have given back) a use whose take was in flight
        // meanwhile acted after that take: it counts right after the take's answer.
        let overlapped = (r.op == Op::Release && matches!(answer, Answer::Released | Answer::Unavailable))
            .then(|| takes.get(&(r.code.as_str(), r.order.as_str())))
            .flatten()
            .and_then(|t| {
                t.iter().filter(|(start, end)| *start < r.end_us && *end > r.start_us).map(|(_, end)| *end).max()
            });
        events.push(match overlapped {
            Some(after) => (after, 2, r, answer),
            None => (r.start_us, 0, r, answer),
        });
    }
    events.sort_by_key(|(at, class, _, _)| (*at, *class));
    for (at, _, r, answer) in events {
        let coupon = by_code[r.code.as_str()];
        checker.record(&instance_of(r), coupon, &r.order, &r.user, answer, r.op == Op::Release);
        checker.check_limits(at / 1000)?;
    }
    checker.check_limits(chrono::Utc::now().timestamp_millis())
}

/// The instance that answered: the balancer's choice is not known, so each answer through it
/// counts as from an instance of its own (an order asked twice through it may be an order
/// conflict on a coupon without limits).
fn instance_of(r: &Request) -> String {
    if r.target == "balancer" { format!("balancer@{}", r.start_us) } else { r.target.clone() }
}

/// (c): redeems with new orders until every limited total refuses: each then holds exactly
/// its limit in PostgreSQL.
async fn sell_out(catalog: &[Sellable], instances: &Mutex<Vec<Instance>>, history: &mut Vec<Request>) {
    let nodes: Vec<(String, ServiceClient)> =
        instances.lock().await.iter().map(|n| (n.name.clone(), n.client.clone())).collect();
    for item in catalog {
        let s = item.shape;
        if s.limit.is_none() && s.campaign_uses.is_none() && s.campaign_cents.is_none() {
            continue;
        }
        let mut refusals = 0;
        for n in 0..300 {
            let (target, client) = &nodes[n % nodes.len()];
            let (order, user) = (format!("{SELL_OUT}{}-{n}", item.code), format!("seller-{n}"));
            let r = clients::ask(client, target, Op::Redeem, &item.code, &order, &user, 0).await;
            let answer = answer(&r);
            history.push(r);
            match answer {
                Some(Answer::Refused { limit: true }) => refusals += 1,
                Some(Answer::Taken { .. }) => refusals = 0,
                _ => tokio::time::sleep(Duration::from_millis(300)).await,
            }
            if refusals >= 2 * nodes.len() {
                break;
            }
        }
    }
}

fn sold_out(catalog: &[Sellable], uses: &[FinalUse]) -> Result<(), String> {
    let live = |f: &dyn Fn(&FinalUse) -> bool| uses.iter().filter(|u| u.live && f(u)).count() as u64;
    let shape_of: HashMap<CouponId, Shape> = catalog.iter().map(|c| (c.shape.coupon, c.shape)).collect();
    for item in catalog {
        let s = item.shape;
        if let Some(limit) = s.limit {
            let n = live(&|u| u.coupon == s.coupon);
            if n != limit {
                return Err(format!("{} sold out at {n} live of {limit}", item.code));
            }
        }
        let in_campaign =
            |u: &FinalUse| s.campaign.is_some() && shape_of.get(&u.coupon).is_some_and(|o| o.campaign == s.campaign);
        if let Some(cap) = s.campaign_uses {
            let n = live(&in_campaign);
            if n != cap {
                return Err(format!("{}'s campaign sold out at {n} live of {cap}", item.code));
            }
        }
        if let Some(budget) = s.campaign_cents {
            let cents: u64 =
                uses.iter().filter(|u| u.live && in_campaign(u)).map(|u| shape_of[&u.coupon].discount_cents).sum();
            if cents > budget || cents + s.discount_cents <= budget {
                return Err(format!("{}'s campaign sold out at {cents} cents of {budget}", item.code));
            }
        }
    }
    Ok(())
}

fn write_history(path: &std::path::Path, history: &[Request], episodes: &[Episode]) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for episode in episodes {
        serde_json::to_writer(&mut out, &json!({"fault": episode}))?;
        out.write_all(b"\n")?;
    }
    for request in history {
        serde_json::to_writer(&mut out, &json!({"request": request}))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    if history.is_empty() {
        bail!("no request was made");
    }
    Ok(())
}

fn bulk_codes() -> Vec<String> {
    (1..=BULK_CODES).map(|k| format!("FC-BULK-{k}")).collect()
}

/// The bulk codes, each a coupon of limit 1 to the checker.
fn bulk_sellables() -> Vec<Sellable> {
    let shape = |k: usize| Shape {
        coupon: BULK_IDS + k as CouponId,
        limit: Some(1),
        per_user: None,
        campaign: None,
        campaign_uses: None,
        campaign_cents: None,
        discount_cents: 500,
        claimed: true,
    };
    bulk_codes().into_iter().enumerate().map(|(k, code)| Sellable { code, shape: shape(k) }).collect()
}

/// A coupon as the catalog query reads it: code, id, usage limit, per-user limit, campaign,
/// discount in cents, the campaign's cap and its budget in cents.
type CatalogRow = (String, i64, Option<i32>, Option<i32>, Option<i64>, i64, Option<i32>, Option<i64>);

/// The catalog as a run left it in the database.
async fn catalog_of(db: &mut PgConnection) -> anyhow::Result<Vec<Sellable>> {
    let rows: Vec<CatalogRow> = sqlx::query_as(
        "SELECT c.code, c.id, c.usage_limit, c.per_user_limit, c.campaign_id, (c.discount_value * 100)::bigint, \
         k.usage_limit, (k.budget * 100)::bigint \
         FROM coupons c LEFT JOIN campaigns k ON k.id = c.campaign_id \
         WHERE c.code LIKE 'FC-%' AND c.batch_id IS NULL ORDER BY c.id",
    )
    .fetch_all(&mut *db)
    .await?;
    anyhow::ensure!(!rows.is_empty(), "no campaign catalog in this database");
    let count = |n: Option<i32>| n.map(u64::try_from).transpose();
    let mut catalog = Vec::new();
    for (code, coupon, limit, per_user, campaign, discount, cap, budget) in rows {
        let (limit, per_user, cap) = (count(limit)?, count(per_user)?, count(cap)?);
        let budget = budget.map(u64::try_from).transpose()?;
        let shape = Shape {
            coupon,
            limit,
            per_user,
            campaign,
            campaign_uses: cap,
            campaign_cents: budget,
            discount_cents: u64::try_from(discount)?,
            claimed: limit.is_some() || per_user.is_some() || cap.is_some() || budget.is_some(),
        };
        catalog.push(Sellable { code, shape });
    }
    catalog.extend(bulk_sellables());
    Ok(catalog)
}

fn read_history(path: &std::path::Path) -> anyhow::Result<(Vec<Request>, Vec<Episode>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let (mut history, mut episodes) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let mut value: serde_json::Value = serde_json::from_str(line)?;
        if let Some(request) = value.get_mut("request") {
            history.push(serde_json::from_value(request.take())?);
        } else if let Some(fault) = value.get_mut("fault") {
            episodes.push(serde_json::from_value(fault.take())?);
        }
    }
    Ok((history, episodes))
}
