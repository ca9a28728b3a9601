//! A deterministic simulation of several instances on one database: real engines, each with
//! its own journal on disk, against an in-memory model of PostgreSQL's side (`pg`), driven by
//! one seeded scheduler on tokio's paused clock. Every step is one thing happening: a client
//! request to one instance, or one of an instance's background jobs (shipping its journal,
//! reading the usage feed, giving lease units back, expiring holds, proving its identity,
//! choosing between deciding alone and sharing), or a fault: a link that fails calls before
//! they commit, or lets them commit and loses their answers; PostgreSQL down and back; an
//! instance killed (memory gone, its journal kept) and started again, stopped cleanly, or
//! written off (its disk lost); an instance paused (none of its steps run);
//! the feed late (it runs when drawn) and reordered; clocks apart by up to `SPREAD_MS`.
//! The history of answers is checked as it grows and at its end (`crate::history`). A failure names
//! its seed; the same seed replays the same schedule.
//!
//! Steps run one at a time, so races inside one request are not explored here (the engine's
//! own tests and the integration tests race real requests); what is explored is every order
//! of the cluster's messages and faults between them.

mod pg;

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::domain::campaign::Campaign;
use crate::domain::coupon::{Coupon, CouponId, CouponKind, Discount};
use crate::domain::event::Event;
use crate::domain::event::GroupMark;
use crate::domain::money::Cents;
use crate::domain::rules::Reason;
use crate::engine::alone::{Deciding, Mode};
use crate::engine::clock::{Clock, ManualClock};
use crate::engine::cluster::Cluster;
use crate::engine::leases::{LeaseSettings, Leases};
use crate::engine::ports::Scope;
use crate::engine::ports::{
    ArchiveAnswer, ArchivedOrder, ChangeAnswer, ClaimOutcome, ClaimRequest, ClusterPort, Grant, ModeFacts,
    NoValidationLog, PortAnswer, PortError, Ports, SetClaim, StoredAnswer, UsageArchive,
};
use crate::engine::standing::Standing;
use crate::engine::{
    Engine, EngineSettings, Refused, ReleaseOutcome, ReleaseRequest, SetOutcome, SetReleaseOutcome, SetReleaseRequest,
    SetRequest, StoredUse, UseOutcome, UseRequest,
};
use crate::history::{Answer, Checker, Counts, FinalUse, SetMark, Shape};
use crate::journal::marks::ShippedMarks;
use crate::journal::{Journal, JournalReader};
use crate::metrics::Metrics;
use pg::{InstanceState, Limits, Pg};

/// How far apart two instances' clocks may be, in ms.
const SPREAD_MS: i64 = 400;
/// How long an instance spends its leases after its last proof of identity.
const SPEND_WINDOW: Duration = Duration::from_secs(5);
/// How long an instance decides alone after its last proof of identity.
const ALONE_WINDOW: Duration = Duration::from_secs(30);
const USERS: usize = 6;
const ORDER_VALUE: u64 = 10_000;

/// What one schedule, or several, did: steps and faults, and what the history showed.
#[derive(Debug, Clone, Copy, Default)]
struct Report {
    steps: u64,
    faults: u64,
    /// Client requests answered by an instance deciding alone.
    alone_answers: u64,
    history: Counts,
}

impl std::ops::AddAssign for Report {
    fn add_assign(&mut self, o: Report) {
        self.steps += o.steps;
        self.faults += o.faults;
        self.alone_answers += o.alone_answers;
        self.history += o.history;
    }
}

/// A link between an instance and PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    /// Calls fail before they reach PostgreSQL.
    Cut,
    /// Calls commit, and this share of their answers is lost.
    Lossy(u8),
}

/// What every instance's ports share.
#[derive(Debug)]
struct World {
    seed: u64,
    pg: Mutex<Pg>,
    links: Mutex<Vec<Link>>,
    /// PostgreSQL's clock.
    now: Mutex<DateTime<Utc>>,
    /// The scheduler's step: with the seed, the instance and the call, it decides whether a
    /// lossy link loses the call's answer, whatever order calls come in within a step.
    step: std::sync::atomic::AtomicU64,
    /// Where PostgreSQL reads the time instead of `now`, for the engine's tests.
    clock: Option<Arc<ManualClock>>,
    /// Claims fail before they reach PostgreSQL, for the engine's tests.
    failing_claims: std::sync::atomic::AtomicBool,
}

impl World {
    /// One call of instance `node` (`what` names it: its kind and arguments): fails before
    /// committing, or commits (and its answer may be lost).
    fn call<T>(
        &self,
        node: usize,
        what: impl std::hash::Hash,
        f: impl FnOnce(&mut Pg, DateTime<Utc>) -> T,
    ) -> Result<T, PortError> {
        let link = self.links.lock().expect("links")[node];
        let mut pg = self.pg.lock().expect("pg");
        if !pg.up || link == Link::Cut {
            return Err(PortError("unreachable".into()));
        }
        let now = self.clock.as_ref().map_or_else(|| *self.now.lock().expect("now"), |clock| clock.now());
        let answer = f(&mut pg, now);
        if let Link::Lossy(percent) = link {
            let step = self.step.load(std::sync::atomic::Ordering::Relaxed);
            if draw((self.seed, step, node, what)) % 100 < u64::from(percent) {
                return Err(PortError("committed; answer lost".into()));
            }
        }
        Ok(answer)
    }
}

/// A number from what the simulation is doing, the same on every run (SipHash with fixed
/// keys).
fn draw(what: impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::hash::DefaultHasher::new();
    what.hash(&mut hasher);
    hasher.finish()
}

/// One instance sharing with others on the model of PostgreSQL, always up, which reads the
/// instance's clock: the engine's own tests run every case in the sharing mode with it.
pub(crate) struct SharedModel {
    world: Arc<World>,
}

impl SharedModel {
    pub(crate) fn new(coupons: &[Coupon], campaigns: &[Campaign], clock: Arc<ManualClock>) -> SharedModel {
        let mut pg = Pg::new();
        for coupon in coupons {
            let campaign = coupon.campaign_id.and_then(|id| campaigns.iter().find(|k| k.id == id));
            let limits = Limits {
                coupon: coupon.usage_limit.map(u64::from),
                campaign: coupon.campaign_id,
                campaign_uses: campaign.and_then(|k| k.usage_limit).map(u64::from),
                campaign_cents: campaign.and_then(|k| k.budget).map(Cents::get),
            };
            pg.define(coupon.id, limits);
        }
        let world = Arc::new(World {
            seed: 0,
            pg: Mutex::new(pg),
            links: Mutex::new(vec![Link::Up]),
            now: Mutex::new(clock.now()),
            step: std::sync::atomic::AtomicU64::new(0),
            clock: Some(clock),
            failing_claims: std::sync::atomic::AtomicBool::new(false),
        });
        SharedModel { world }
    }

    /// Makes claims fail before they reach PostgreSQL (grants still answer), or not.
    pub(crate) fn fail_claims(&self, fail: bool) {
        self.world.failing_claims.store(fail, std::sync::atomic::Ordering::Relaxed);
    }

    /// The ports to build the engine with.
    pub(crate) fn ports(&self) -> Ports {
        Ports {
            validations: Arc::new(NoValidationLog),
            archive: Arc::new(SimArchive { world: self.world.clone(), node: 0 }),
        }
    }

    /// The engine joins the others, sharing.
    pub(crate) fn join(&self, engine: &Engine) {
        let (epoch, after) = {
            let mut pg = self.world.pg.lock().expect("pg");
            (pg.begin_epoch("n0").0, pg.feed(0).1)
        };
        let port: Arc<dyn ClusterPort> =
            Arc::new(SimPort { world: self.world.clone(), node: 0, instance: "n0".into(), epoch });
        let settings = LeaseSettings {
            target: Duration::from_secs(5),
            refill_at: Duration::from_secs(1),
            claim_wait: Duration::from_millis(200),
            idle_return: Duration::from_secs(2),
            exhausted_for: LeaseSettings::EXHAUSTED_FOR,
        };
        // Proved for the length of any test: what it proves is another test's business.
        let hour = Duration::from_secs(3600);
        engine.join_cluster(Cluster {
            leases: Leases::new(port.clone(), settings),
            port,
            instance: "n0".into(),
            epoch,
            standing: Arc::new(Standing::new(hour, hour)),
            deciding: Deciding::new(Mode::Sharing, None),
        });
        engine.cluster().expect("joined").deciding.fed_to(i64::try_from(after).unwrap_or(i64::MAX));
    }

    /// Rows PostgreSQL holds already (as the engine loads them at start-up).
    pub(crate) fn store(&self, uses: &[StoredUse]) {
        let mut pg = self.world.pg.lock().expect("pg");
        for stored in uses {
            let campaign = pg.limits.get(&stored.coupon_id).and_then(|l| l.campaign);
            pg.store(stored, campaign);
        }
    }

    /// Ships what `reader`'s journal holds, as the shipper would.
    pub(crate) fn ship(&self, reader: &mut JournalReader) {
        let (events, next) = read_events(reader).expect("journal");
        if !events.is_empty() {
            self.world.pg.lock().expect("pg").ship("n0", "n0", &events);
            reader.confirm(next, events.len()).expect("checkpoint");
        }
    }

    /// The rows PostgreSQL has: (coupon, order, discount, revision, live).
    pub(crate) fn rows(&self) -> Vec<(CouponId, String, Cents, u32, bool)> {
        let pg = self.world.pg.lock().expect("pg");
        pg.rows.values().map(|r| (r.coupon, r.order.clone(), r.discount, r.rev, r.live())).collect()
    }
}

/// The ports of one instance's epoch.
#[derive(Debug)]
struct SimPort {
    world: Arc<World>,
    node: usize,
    instance: String,
    epoch: i64,
}

impl ClusterPort for SimPort {
    fn grant(&self, scope: Scope, want: u64, need: u64, seq: u64) -> PortAnswer<'_, Grant> {
        let answer = self.world.call(self.node, ("grant", scope, want, need, seq), |pg, _| {
            pg.grant(scope, &self.instance, self.epoch, want, need, seq)
        });
        Box::pin(std::future::ready(answer))
    }

    fn give_back(&self, scope: Scope, units: u64, seq: u64) -> PortAnswer<'_, u64> {
        let answer = self.world.call(self.node, ("return", scope, units, seq), |pg, _| {
            pg.give_back(scope, &self.instance, self.epoch, units, seq)
        });
        Box::pin(std::future::ready(answer))
    }

    fn claim<'a>(&'a self, req: &'a ClaimRequest<'a>) -> PortAnswer<'a, ClaimOutcome> {
        if self.world.failing_claims.load(std::sync::atomic::Ordering::Relaxed) {
            return Box::pin(std::future::ready(Err(PortError("claims fail".into()))));
        }
        let answer =
            self.world.call(self.node, ("claim", req.id, req.rev), |pg, _| pg.claim(req, &self.instance, self.epoch));
        Box::pin(std::future::ready(answer))
    }

    fn claim_set<'a>(&'a self, claims: &'a [ClaimRequest<'a>], group: &'a GroupMark) -> PortAnswer<'a, SetClaim> {
        if self.world.failing_claims.load(std::sync::atomic::Ordering::Relaxed) {
            return Box::pin(std::future::ready(Err(PortError("claims fail".into()))));
        }
        let first = claims.first().map(|c| (c.id, c.rev));
        let answer = self
            .world
            .call(self.node, ("claim set", first), |pg, _| pg.claim_set(claims, group, &self.instance, self.epoch));
        Box::pin(std::future::ready(answer))
    }

    fn claim_spent(&self, id: uuid::Uuid, at: DateTime<Utc>) -> PortAnswer<'_, bool> {
        let answer =
            self.world.call(self.node, ("spent", id, at), |pg, _| pg.claim_spent(&self.instance, self.epoch, id, at));
        Box::pin(std::future::ready(answer))
    }

    fn forget_claims_before(&self, _before: DateTime<Utc>) -> PortAnswer<'_, ()> {
        // The model keeps every note: forgetting only saves space.
        Box::pin(std::future::ready(Ok(())))
    }

    fn mode(&self) -> PortAnswer<'_, ModeFacts> {
        let answer = self.world.call(self.node, ("mode", self.epoch), |pg, _| pg.mode(&self.instance, self.epoch));
        Box::pin(std::future::ready(answer))
    }

    fn take_alone(&self, _alone_timeout: Duration) -> PortAnswer<'_, Option<i64>> {
        let answer =
            self.world.call(self.node, ("take alone", self.epoch), |pg, _| pg.take_alone(&self.instance, self.epoch));
        Box::pin(std::future::ready(answer))
    }

    fn release_alone(&self) -> PortAnswer<'_, ()> {
        let answer =
            self.world.call(self.node, ("release alone", self.epoch), |pg, _| pg.release_alone(&self.instance));
        Box::pin(std::future::ready(answer))
    }

    fn shipped_everywhere(&self, since: Option<DateTime<Utc>>) -> PortAnswer<'_, (DateTime<Utc>, bool)> {
        let answer = self.world.call(self.node, ("shipped everywhere", since), |pg, now| {
            let since = since.unwrap_or(now);
            (since, pg.shipped_everywhere(&self.instance, since))
        });
        Box::pin(std::future::ready(answer))
    }

    fn change(&self, id: uuid::Uuid, rev: u32, release: bool) -> PortAnswer<'_, ChangeAnswer> {
        let answer =
            self.world.call(self.node, ("change", id, rev, release), |pg, now| pg.change(id, rev, release, now));
        Box::pin(std::future::ready(answer))
    }
}

#[derive(Debug)]
struct SimArchive {
    world: Arc<World>,
    node: usize,
}

impl UsageArchive for SimArchive {
    fn order<'a>(&'a self, coupon_id: CouponId, order_id: &'a str) -> ArchiveAnswer<'a> {
        let answer = self.world.call(self.node, ("order", coupon_id, order_id), |pg, _| {
            pg.rows.values().find(|r| r.coupon == coupon_id && r.order == order_id).map(|r| ArchivedOrder {
                user_id: r.user.clone(),
                rev: r.rev,
                released: !r.live(),
                hold: r.hold_until.is_some(),
            })
        });
        Box::pin(std::future::ready(answer.map_err(|e| crate::engine::ports::ArchiveError(e.0))))
    }

    fn stored<'a>(&'a self, coupon_id: CouponId, order_id: &'a str) -> StoredAnswer<'a> {
        let answer =
            self.world.call(self.node, ("stored", coupon_id, order_id), |pg, _| pg.stored(coupon_id, order_id));
        Box::pin(std::future::ready(answer.map_err(|e| crate::engine::ports::ArchiveError(e.0))))
    }
}

/// An instance while its process runs.
struct Running {
    engine: Arc<Engine>,
    reader: JournalReader,
    epoch: i64,
    standing: Arc<Standing>,
    leases: Arc<Leases>,
    feed_after: u64,
    /// What its heartbeat publishes of its shipping.
    shipped: ShippedMarks,
}

/// One instance: its disk, its clock, and its process if running.
struct Node {
    name: String,
    dir: PathBuf,
    clock: Arc<ManualClock>,
    offset_ms: i64,
    running: Option<Running>,
    paused_for: u32,
    written_off: bool,
}

/// Something a client asked and has not settled: its order, for later confirms, releases
/// and retries.
#[derive(Debug, Clone)]
struct Asked {
    coupon: usize,
    user: String,
    order: String,
}

/// A set of codes asked for: two coupons (by index) on one order.
#[derive(Debug, Clone)]
struct SetAsked {
    coupons: [usize; 2],
    user: String,
    order: String,
}

/// One schedule.
struct Sim {
    rng: ChaCha8Rng,
    world: Arc<World>,
    nodes: Vec<Node>,
    coupons: Vec<Coupon>,
    campaigns: Vec<Campaign>,
    shapes: Vec<Shape>,
    checker: Checker,
    asked: Vec<Asked>,
    /// The sets of codes asked for (API.md §10), apart from `asked`: a set is released whole.
    sets: Vec<SetAsked>,
    next_order: u64,
    start: tokio::time::Instant,
    base: DateTime<Utc>,
    report: Report,
    root: PathBuf,
    /// Prints every step (`SIM_TRACE=1`), to read a failing seed's schedule.
    trace: bool,
}

fn cents(n: u64) -> Cents {
    Cents::new(n).expect("cents")
}

/// The coupons every schedule sells: a total, a per-user limit, a campaign cap shared by
/// two coupons, a campaign budget, and no limit at all.
fn catalog() -> (Vec<Coupon>, Vec<Campaign>, Vec<Shape>) {
    // Every coupon combines with every class, so that any two make a set (API.md §10).
    let coupon = |id, code: &str, discount: u64| Coupon {
        combines_with: crate::domain::stack::Classes::ALL,
        ..Coupon::new(id, code, CouponKind::TimeSpecific, Discount::Fixed(cents(discount)))
    };
    let mut total = coupon(1, "TOTAL", 500);
    total.usage_limit = Some(4);
    let mut per_user = coupon(2, "PERUSER", 500);
    per_user.usage_limit = Some(6);
    per_user.per_user_limit = Some(1);
    let mut cap_a = coupon(3, "CAPA", 500);
    cap_a.campaign_id = Some(1);
    let mut cap_b = coupon(4, "CAPB", 500);
    cap_b.campaign_id = Some(1);
    let mut budget = coupon(5, "BUDGET", 1_000);
    budget.campaign_id = Some(2);
    let free = coupon(6, "FREE", 500);
    let mut capped = Campaign::new(1, "capped");
    capped.usage_limit = Some(3);
    let mut budgeted = Campaign::new(2, "budgeted");
    budgeted.budget = Some(cents(3_000));
    let shape = |c: &Coupon, campaign: Option<&Campaign>| Shape {
        coupon: c.id,
        limit: c.usage_limit.map(u64::from),
        per_user: c.per_user_limit.map(u64::from),
        campaign: c.campaign_id,
        campaign_uses: campaign.and_then(|k| k.usage_limit).map(u64::from),
        campaign_cents: campaign.and_then(|k| k.budget).map(Cents::get),
        discount_cents: match c.discount {
            Discount::Fixed(d) => d.get(),
            _ => unreachable!("fixed discounts only"),
        },
        claimed: c.usage_limit.is_some()
            || c.per_user_limit.is_some()
            || campaign.is_some_and(|k| k.usage_limit.is_some() || k.budget.is_some() || k.per_user_limit.is_some()),
    };
    let shapes = vec![
        shape(&total, None),
        shape(&per_user, None),
        shape(&cap_a, Some(&capped)),
        shape(&cap_b, Some(&capped)),
        shape(&budget, Some(&budgeted)),
        shape(&free, None),
    ];
    (vec![total, per_user, cap_a, cap_b, budget, free], vec![capped, budgeted], shapes)
}

impl Sim {
    fn new(seed: u64, nodes: usize, root: PathBuf) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let base = Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).single().expect("a time");
        let (coupons, campaigns, shapes) = catalog();
        let mut pg = Pg::new();
        for shape in &shapes {
            pg.define(
                shape.coupon,
                Limits {
                    coupon: shape.limit,
                    campaign: shape.campaign,
                    campaign_uses: shape.campaign_uses,
                    campaign_cents: shape.campaign_cents,
                },
            );
        }
        let world = Arc::new(World {
            seed,
            pg: Mutex::new(pg),
            links: Mutex::new(vec![Link::Up; nodes]),
            now: Mutex::new(base),
            step: std::sync::atomic::AtomicU64::new(0),
            clock: None,
            failing_claims: std::sync::atomic::AtomicBool::new(false),
        });
        let nodes = (0..nodes)
            .map(|i| Node {
                name: format!("n{i}"),
                dir: root.join(format!("n{i}")),
                clock: Arc::new(ManualClock::new(base)),
                offset_ms: rng.random_range(-SPREAD_MS / 2..=SPREAD_MS / 2),
                running: None,
                paused_for: 0,
                written_off: false,
            })
            .collect();
        Sim {
            rng,
            world,
            nodes,
            coupons,
            campaigns,
            checker: Checker::new(&shapes, SPREAD_MS),
            shapes,
            asked: Vec::new(),
            sets: Vec::new(),
            next_order: 0,
            start: tokio::time::Instant::now(),
            base,
            report: Report::default(),
            root,
            trace: std::env::var_os("SIM_TRACE").is_some(),
        }
    }

    /// Virtual wall time (ms since the epoch) as PostgreSQL sees it.
    fn say(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[{} +{}ms] {}", self.report.steps, self.start.elapsed().as_millis(), what());
        }
    }

    fn now_ms(&self) -> i64 {
        (self.base + chrono::Duration::from_std(self.start.elapsed()).expect("elapsed")).timestamp_millis()
    }

    fn sync_clocks(&self) {
        let now = self.base + chrono::Duration::from_std(self.start.elapsed()).expect("elapsed");
        *self.world.now.lock().expect("now") = now;
        for node in &self.nodes {
            node.clock.set(now + chrono::Duration::milliseconds(node.offset_ms));
        }
    }

    fn link_ok(&self, i: usize) -> bool {
        self.world.pg.lock().expect("pg").up && self.world.links.lock().expect("links")[i] != Link::Cut
    }

    /// Starts instance `i` as `App::run` does: its journal shipped first, then a new epoch,
    /// the old one settled, the uses loaded and the holds due expired. Needs PostgreSQL.
    async fn start(&mut self, i: usize) -> Result<(), String> {
        if self.nodes[i].running.is_some() || !self.link_ok(i) {
            return Ok(());
        }
        self.sync_clocks();
        let metrics = Arc::new(Metrics::new(&[]));
        let (journal, mut reader) =
            Journal::open(&self.nodes[i].dir, 0, metrics.journal.clone()).map_err(|e| e.to_string())?;
        let pending = read_events(&reader)?;
        let name = self.nodes[i].name.clone();
        {
            let mut pg = self.world.pg.lock().expect("pg");
            // Before the ledger is loaded: it reads every row next.
            pg.ship(&self.nodes[i].dir.display().to_string(), &name, &pending.0);
        }
        if !pending.0.is_empty() {
            reader.confirm(pending.1, pending.0.len()).map_err(|e| e.to_string())?;
        }
        let (epoch, mode, uses, after) = {
            let mut pg = self.world.pg.lock().expect("pg");
            let (epoch, state) = pg.begin_epoch(&name);
            pg.settle_last_run(&name, epoch - 1);
            let (_, after) = pg.feed(0);
            let mode = if state == InstanceState::Waiting { Mode::Waiting } else { Mode::Sharing };
            (epoch, mode, pg.all_uses(), after)
        };
        let archive = Arc::new(SimArchive { world: self.world.clone(), node: i });
        let engine = Arc::new(Engine::new(
            journal,
            Ports { validations: Arc::new(NoValidationLog), archive },
            self.nodes[i].clock.clone(),
            metrics,
            // The simulation checks limits, not abuse bounds: many holds per user are its point.
            EngineSettings {
                forgotten_capacity: 1_000,
                hold_share_percent: 0,
                ..crate::config::Settings::defaults().engine()
            },
        ));
        engine.catalog().publisher().await.replace_all(self.coupons.clone(), self.campaigns.clone(), Vec::new());
        let port: Arc<dyn ClusterPort> =
            Arc::new(SimPort { world: self.world.clone(), node: i, instance: name.clone(), epoch });
        let leases = Leases::new(
            port.clone(),
            LeaseSettings {
                target: Duration::from_secs(5),
                refill_at: Duration::from_secs(1),
                claim_wait: Duration::from_millis(20),
                idle_return: Duration::from_secs(2),
                exhausted_for: LeaseSettings::EXHAUSTED_FOR,
            },
        );
        let standing = Arc::new(Standing::new(SPEND_WINDOW, ALONE_WINDOW));
        engine.join_cluster(Cluster {
            leases: leases.clone(),
            port,
            instance: name,
            epoch,
            standing: standing.clone(),
            deciding: Deciding::new(mode, Some(2 * ALONE_WINDOW)),
        });
        engine.cluster().expect("joined").deciding.fed_to(i64::try_from(after).unwrap_or(i64::MAX));
        engine.load_uses(uses);
        engine.expire_due().await;
        engine.catalog().set_ready();
        let shipped = ShippedMarks::new(engine.journal().clone());
        self.nodes[i].running = Some(Running { engine, reader, epoch, standing, leases, feed_after: after, shipped });
        Ok(())
    }

    /// SIGKILL: memory gone; the journal keeps what was fsync'd (every acknowledged append).
    fn kill(&mut self, i: usize) {
        self.nodes[i].running = None;
    }

    /// Instance `i` looks whether to decide alone or share.
    async fn consider_mode(&mut self, i: usize) {
        if let Some(running) = &self.nodes[i].running {
            let mode = running.engine.consider_mode().await;
            self.say(|| format!("n{i} decides: {}", mode.as_str()));
        }
    }

    /// A clean stop (SIGTERM): requests drained, the journal shipped; if all of it went, the
    /// epoch ends in PostgreSQL (its leases back, its right to decide alone given up).
    fn stop(&mut self, i: usize) -> Result<(), String> {
        if self.nodes[i].running.is_none() {
            return Ok(());
        }
        self.ship(i)?;
        let Some(running) = self.nodes[i].running.take() else { return Ok(()) };
        if running.engine.journal().backlog() == 0 && self.link_ok(i) {
            let name = self.nodes[i].name.clone();
            let _ = self.world.call(i, ("stop", running.epoch), |pg, _| pg.stop(&name, running.epoch));
        }
        Ok(())
    }

    /// The operator writes off a dead instance whose disk is lost: what its journal held
    /// unshipped is gone, and a fresh instance takes its place later.
    fn write_off(&mut self, i: usize) -> Result<(), String> {
        if self.nodes[i].running.is_some() || !self.world.pg.lock().expect("pg").up {
            return Ok(());
        }
        let (journal, reader) = Journal::open(&self.nodes[i].dir, 0, Arc::new(Metrics::new(&[])).journal.clone())
            .map_err(|e| e.to_string())?;
        drop(journal);
        let (events, _) = read_events(&reader)?;
        let lost: Vec<(CouponId, String)> = events
            .iter()
            .flat_map(|(_, e)| e.changes())
            .filter_map(|e| match e {
                Event::Redeemed(r) => Some((r.coupon_id, r.order_id.clone())),
                Event::Released(r) => self.order_of(r.coupon_id, r.id),
                Event::Confirmed(c) => self.order_of_id(c.id),
                Event::Validated(_) | Event::Together { .. } => None,
            })
            .collect();
        self.checker.lose(&lost);
        self.world.pg.lock().expect("pg").write_off(&self.nodes[i].name);
        let _ = std::fs::remove_dir_all(&self.nodes[i].dir);
        let fresh = format!("{}w", self.nodes[i].name);
        self.nodes[i].dir = self.root.join(&fresh);
        self.nodes[i].name = fresh;
        self.nodes[i].written_off = true;
        Ok(())
    }

    fn order_of(&self, coupon: CouponId, id: uuid::Uuid) -> Option<(CouponId, String)> {
        let is = |order: &str| crate::domain::identity::redemption_id(coupon, order) == id;
        let one = self.asked.iter().find(|a| self.coupons[a.coupon].id == coupon && is(&a.order)).map(|a| &a.order);
        let set = || self.sets.iter().find(|s| s.coupons.iter().any(|&c| self.coupons[c].id == coupon) && is(&s.order));
        one.or_else(|| set().map(|s| &s.order)).map(|order| (coupon, order.clone()))
    }

    fn order_of_id(&self, id: uuid::Uuid) -> Option<(CouponId, String)> {
        self.coupons.iter().find_map(|c| self.order_of(c.id, id))
    }

    /// Ships what instance `i`'s journal holds, in one transaction: it may fail before
    /// committing, or commit and lose its answer (then it is shipped again).
    fn ship(&mut self, i: usize) -> Result<(), String> {
        let name = self.nodes[i].name.clone();
        let dir = self.nodes[i].dir.display().to_string();
        let Some(running) = self.nodes[i].running.as_mut() else { return Ok(()) };
        let (events, next) = read_events(&running.reader)?;
        if events.is_empty() {
            return Ok(());
        }
        let shipped = self.world.call(i, ("ship", next.as_i64()), |pg, _| pg.ship(&dir, &name, &events));
        match &shipped {
            Ok(dropped) => {
                running.reader.confirm(next, events.len()).map_err(|e| e.to_string())?;
                let engine = running.engine.clone();
                let dropped = dropped.clone();
                // The real shipper tells the engine after its commit, in the same task.
                futures_util::FutureExt::now_or_never(engine.relearn(&dropped));
            }
            Err(_) => self.report.faults += 1,
        }
        self.say(|| format!("n{i} ships {events:?}: {shipped:?}"));
        Ok(())
    }

    /// Instance `i` reads the usage feed, sometimes in another order than it was written.
    fn feed(&mut self, i: usize) {
        let shuffle = self.rng.random_bool(0.3);
        let Some(running) = self.nodes[i].running.as_mut() else { return };
        let Ok((mut uses, last)) =
            self.world.call(i, ("feed", running.feed_after), |pg, _| pg.feed(running.feed_after))
        else {
            return;
        };
        if shuffle {
            uses.reverse();
        }
        running.engine.merge_uses(uses);
        running.feed_after = last;
        if let Some(cluster) = running.engine.cluster() {
            cluster.deciding.fed_to(i64::try_from(last).unwrap_or(i64::MAX));
        }
    }

    /// Instance `i`'s heartbeat: proved while its epoch is live; fenced (and stopped) once
    /// it is not.
    fn heartbeat(&mut self, i: usize) {
        let name = self.nodes[i].name.clone();
        let Some(running) = self.nodes[i].running.as_mut() else { return };
        let epoch = running.epoch;
        let sent = tokio::time::Instant::now();
        let through = running.shipped.shipped_through();
        let live = self.world.call(i, ("beat", epoch), |pg, now| pg.stamp(&name, epoch, through).then_some(now));
        match live {
            Ok(Some(now)) => {
                running.standing.proved(sent);
                running.shipped.passed(now);
            }
            Ok(None) => {
                running.standing.fence();
                self.kill(i);
            }
            Err(_) => {}
        }
    }

    async fn client(&mut self) -> Result<(), String> {
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].running.is_some() && self.nodes[i].paused_for == 0)
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let i = candidates[self.rng.random_range(0..candidates.len())];
        if self.rng.random_range(0..100) < 15 {
            return self.set_client(i).await;
        }
        let roll = self.rng.random_range(0..100);
        let (asked, kind) = if roll < 45 || self.asked.is_empty() {
            self.next_order += 1;
            let asked = Asked {
                coupon: self.rng.random_range(0..self.coupons.len()),
                user: format!("u{}", self.rng.random_range(0..USERS)),
                order: format!("o{}", self.next_order),
            };
            self.asked.push(asked.clone());
            let hold = self.rng.random_bool(0.4);
            (asked, if hold { Kind::Hold } else { Kind::Redeem })
        } else {
            let asked = self.asked[self.rng.random_range(0..self.asked.len())].clone();
            (asked, if roll < 75 { Kind::Redeem } else { Kind::Release })
        };
        let engine = self.nodes[i].running.as_ref().expect("running").engine.clone();
        if engine.mode() == Mode::Alone {
            self.report.alone_answers += 1;
        }
        let coupon = &self.coupons[asked.coupon];
        self.say(|| format!("n{i} {kind:?} {} {} {} ...", coupon.code, asked.user, asked.order));
        let req = UseRequest {
            code: &coupon.code,
            user_id: &asked.user,
            order_id: &asked.order,
            order_value: cents(ORDER_VALUE),
            cart: None,
            anonymous_from: None,
        };
        let answer = match kind {
            Kind::Redeem => use_answer(engine.redeem(&req).await),
            Kind::Hold => {
                let ttl = Duration::from_millis(self.rng.random_range(500..4_000));
                use_answer(engine.hold(&req, ttl).await)
            }
            Kind::Release => {
                let release = ReleaseRequest { code: &coupon.code, order_id: &asked.order, user_id: Some(&asked.user) };
                match engine.release(&release).await {
                    Ok(ReleaseOutcome::Released { .. } | ReleaseOutcome::AlreadyReleased) => Answer::Released,
                    Ok(ReleaseOutcome::NotFound) => Answer::NotFound,
                    Err(_) => Answer::Unavailable,
                }
            }
        };
        self.say(|| format!("n{i} {kind:?} {} {} {}: {answer:?}", coupon.code, asked.user, asked.order));
        let releasing = matches!(kind, Kind::Release);
        self.checker.record(&self.nodes[i].name, coupon.id, &asked.order, &asked.user, answer, releasing);
        Ok(())
    }

    /// A client of sets of codes on node `i`: a new set redeemed, or a set asked before
    /// redeemed again or released whole. Each code's answer is recorded as its use's.
    async fn set_client(&mut self, i: usize) -> Result<(), String> {
        let fresh = self.sets.is_empty() || self.rng.random_bool(0.5);
        let set = if fresh {
            self.next_order += 1;
            let first = self.rng.random_range(0..self.coupons.len());
            let second = (first + self.rng.random_range(1..self.coupons.len())) % self.coupons.len();
            let set = SetAsked {
                coupons: [first, second],
                user: format!("u{}", self.rng.random_range(0..USERS)),
                order: format!("s{}", self.next_order),
            };
            self.sets.push(set.clone());
            set
        } else {
            self.sets[self.rng.random_range(0..self.sets.len())].clone()
        };
        let releasing = !fresh && self.rng.random_bool(0.5);
        let engine = self.nodes[i].running.as_ref().expect("running").engine.clone();
        let codes: Vec<Cow<'_, str>> =
            set.coupons.iter().map(|&c| Cow::Owned(self.coupons[c].code.to_string())).collect();
        let coupon_of = |code: &str| self.coupons.iter().find(|c| c.code == code).map(|c| c.id).expect("a sim coupon");
        self.say(|| {
            format!(
                "n{i} set {} {codes:?} {} {} ...",
                if releasing { "release" } else { "redeem" },
                set.user,
                set.order
            )
        });
        let answers: Vec<(CouponId, Answer)> = if releasing {
            let release = SetReleaseRequest { order_id: &set.order, codes: Some(&codes), user_id: Some(&set.user) };
            match engine.release_set(&release).await {
                Ok(SetReleaseOutcome::Released { codes }) => {
                    codes.iter().map(|c| (coupon_of(c), Answer::Released)).collect()
                }
                Ok(SetReleaseOutcome::NotFound { codes }) => {
                    codes.iter().map(|c| (coupon_of(c), Answer::NotFound)).collect()
                }
                Err(_) => codes.iter().map(|c| (coupon_of(c), Answer::Unavailable)).collect(),
            }
        } else {
            let req = SetRequest {
                codes: &codes,
                user_id: &set.user,
                order_id: &set.order,
                order_value: cents(ORDER_VALUE),
                cart: None,
                mode: crate::domain::stack::Mode::All,
                select: crate::domain::stack::Select::Priority,
                max_total: None,
                anonymous_from: None,
            };
            let outcome = engine.redeem_set(&req).await;
            set_answers(outcome, &codes).into_iter().map(|(code, answer)| (coupon_of(&code), answer)).collect()
        };
        self.say(|| format!("n{i} set {} {}: {answers:?}", set.user, set.order));
        for (coupon, answer) in answers {
            self.checker.record(&self.nodes[i].name, coupon, &set.order, &set.user, answer, releasing);
        }
        Ok(())
    }

    /// One fault, drawn.
    async fn fault(&mut self) -> Result<(), String> {
        self.report.faults += 1;
        let i = self.rng.random_range(0..self.nodes.len());
        match self.rng.random_range(0..100) {
            0..25 => {
                let link = match self.rng.random_range(0..3) {
                    0 => Link::Up,
                    1 => Link::Cut,
                    _ => Link::Lossy(self.rng.random_range(20..80)),
                };
                self.world.links.lock().expect("links")[i] = link;
                self.say(|| format!("fault: link of n{i} {link:?}"));
            }
            25..40 => {
                let mut pg = self.world.pg.lock().expect("pg");
                pg.up = !pg.up;
                let up = pg.up;
                drop(pg);
                self.say(|| format!("fault: PostgreSQL up: {up}"));
            }
            40..50 => {
                self.say(|| format!("fault: kill n{i}"));
                self.kill(i);
            }
            50..55 => {
                self.say(|| format!("fault: stop n{i} cleanly"));
                self.stop(i)?;
            }
            55..75 => {
                self.start(i).await?;
                self.say(|| format!("start n{i}: running {}", self.nodes[i].running.is_some()));
            }
            75..85 => {
                self.nodes[i].paused_for = self.rng.random_range(5..40);
                self.say(|| format!("fault: pause n{i} for {} steps", self.nodes[i].paused_for));
            }
            85..90 if !self.nodes[i].written_off => {
                self.say(|| format!("fault: write off n{i} (if dead)"));
                self.write_off(i)?;
            }
            _ => {
                let ms = self.rng.random_range(100..3_000);
                tokio::time::advance(Duration::from_millis(ms)).await;
            }
        }
        Ok(())
    }

    /// A background job of a running, unpaused instance.
    async fn job(&mut self) -> Result<(), String> {
        let i = self.rng.random_range(0..self.nodes.len());
        if self.nodes[i].paused_for > 0 {
            return Ok(());
        }
        match self.rng.random_range(0..7) {
            6 => self.consider_mode(i).await,
            5 => {
                if let Some(running) = &self.nodes[i].running {
                    running.engine.settle_doubts().await;
                }
            }
            0 => self.ship(i)?,
            1 => self.feed(i),
            2 => {
                if let Some(running) = &self.nodes[i].running {
                    running.leases.upkeep().await;
                }
            }
            3 => {
                if let Some(running) = &self.nodes[i].running {
                    running.engine.expire_due().await;
                }
            }
            _ => self.heartbeat(i),
        }
        Ok(())
    }

    async fn step(&mut self) -> Result<(), String> {
        self.report.steps += 1;
        self.world.step.store(self.report.steps, std::sync::atomic::Ordering::Relaxed);
        // Requests never share an instant: a millisecond a step at least.
        tokio::time::advance(Duration::from_millis(1)).await;
        self.sync_clocks();
        for node in &mut self.nodes {
            node.paused_for = node.paused_for.saturating_sub(1);
        }
        match self.rng.random_range(0..100) {
            0..45 => self.client().await?,
            45..88 => self.job().await?,
            88..93 => tokio::time::advance(Duration::from_millis(self.rng.random_range(10..500))).await,
            _ => self.fault().await?,
        }
        self.checker.check_limits(self.now_ms())
    }

    /// Every fault healed: links up, PostgreSQL up, every instance running and caught up,
    /// every deadline passed and expired.
    async fn heal(&mut self) -> Result<(), String> {
        self.world.pg.lock().expect("pg").up = true;
        for link in self.world.links.lock().expect("links").iter_mut() {
            *link = Link::Up;
        }
        for i in 0..self.nodes.len() {
            self.nodes[i].paused_for = 0;
            self.start(i).await?;
        }
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(5)).await;
            self.sync_clocks();
            for i in 0..self.nodes.len() {
                self.heartbeat(i);
                self.ship(i)?;
                self.feed(i);
                if let Some(running) = &self.nodes[i].running {
                    running.engine.settle_doubts().await;
                    running.engine.expire_due().await;
                    running.leases.upkeep().await;
                }
                self.ship(i)?;
                self.consider_mode(i).await;
            }
            for i in 0..self.nodes.len() {
                self.feed(i);
                self.consider_mode(i).await;
            }
        }
        Ok(())
    }

    /// (c): every limited total sells out to exactly its limit, whatever instance asks.
    async fn sell_out(&mut self) -> Result<(), String> {
        for c in 0..self.coupons.len() {
            let shape = self.shapes[c];
            if shape.limit.is_none() && shape.campaign.is_none() {
                continue;
            }
            let mut refusals = 0;
            for n in 0..200 {
                let i = n % self.nodes.len();
                let Some(running) = &self.nodes[i].running else { continue };
                let (user, order) = (format!("buyer-{c}-{n}"), format!("sell-{c}-{n}"));
                let coupon = &self.coupons[c];
                let req = UseRequest {
                    code: &coupon.code,
                    user_id: &user,
                    order_id: &order,
                    order_value: cents(ORDER_VALUE),
                    cart: None,
                    anonymous_from: None,
                };
                let answer = use_answer(running.engine.redeem(&req).await);
                self.say(|| format!("sell-out n{i} {} {user} {order}: {answer:?}", coupon.code));
                self.checker.record(&self.nodes[i].name, coupon.id, &order, &user, answer, false);
                match answer {
                    Answer::Refused { limit: true } => refusals += 1,
                    Answer::Taken { .. } => refusals = 0,
                    _ => {}
                }
                if refusals >= 2 * self.nodes.len() {
                    break;
                }
                if matches!(answer, Answer::Unavailable | Answer::Refused { .. }) {
                    // Let units move: returns, reclaims and the feed.
                    for j in 0..self.nodes.len() {
                        self.heartbeat(j);
                        self.ship(j)?;
                        self.feed(j);
                        if let Some(running) = &self.nodes[j].running {
                            running.engine.settle_doubts().await;
                            running.leases.upkeep().await;
                        }
                        self.consider_mode(j).await;
                    }
                    tokio::time::advance(Duration::from_millis(300)).await;
                    self.sync_clocks();
                }
            }
        }
        for i in 0..self.nodes.len() {
            self.ship(i)?;
        }
        let pg = self.world.pg.lock().expect("pg");
        let live = |f: &dyn Fn(&pg::Row) -> bool| pg.rows.values().filter(|r| r.live() && f(r)).count() as u64;
        for shape in &self.shapes {
            if let Some(limit) = shape.limit {
                let n = live(&|r| r.coupon == shape.coupon);
                if n != limit {
                    return Err(format!("coupon {} sold out at {n} live of {limit}; {}", shape.coupon, pg.books()));
                }
            }
            if let (Some(campaign), Some(limit)) = (shape.campaign, shape.campaign_uses) {
                let n = live(&|r| r.campaign == Some(campaign));
                if n != limit {
                    return Err(format!("campaign {campaign} sold out at {n} live of {limit}; {}", pg.books()));
                }
            }
            if let (Some(campaign), Some(budget)) = (shape.campaign, shape.campaign_cents) {
                let cents: u64 = pg
                    .rows
                    .values()
                    .filter(|r| r.live() && r.campaign == Some(campaign))
                    .map(|r| r.discount.get())
                    .sum();
                if cents + shape.discount_cents <= budget {
                    return Err(format!("campaign {campaign} sold out at {cents} cents of {budget}; {}", pg.books()));
                }
            }
        }
        Ok(())
    }

    async fn run(mut self, steps: usize) -> Result<Report, String> {
        tokio::fs::create_dir_all(&self.root).await.map_err(|e| e.to_string())?;
        // Half the schedules begin with one instance, deciding alone until others start.
        let first = if self.rng.random_bool(0.5) { 1 } else { self.nodes.len() };
        for i in 0..first {
            self.start(i).await?;
            self.consider_mode(i).await;
            self.consider_mode(i).await;
        }
        for _ in 0..steps {
            self.step().await?;
        }
        self.heal().await?;
        self.checker.check_limits(self.now_ms())?;
        self.world.pg.lock().expect("pg").quota_books_balance()?;
        self.sell_out().await?;
        self.checker.check_limits(self.now_ms())?;
        let pg = self.world.pg.lock().expect("pg");
        let uses: Vec<FinalUse> = pg
            .rows
            .values()
            .map(|r| FinalUse {
                coupon: r.coupon,
                order: r.order.clone(),
                user: r.user.clone(),
                live: r.live(),
                held: r.hold_until.is_some(),
                set: r
                    .set
                    .as_ref()
                    .map(|g| SetMark { id: g.id, taken: g.codes.iter().filter(|c| c.reason.is_none()).count() }),
            })
            .collect();
        if let Err(failure) = self.checker.check_final(&uses, &pg.dropped) {
            let rows: Vec<String> = pg
                .rows
                .values()
                .map(|r| {
                    format!(
                        "{}/{}/{}@{} rev{} live:{} hold:{}",
                        r.coupon,
                        r.order,
                        r.user,
                        r.instance,
                        r.rev,
                        r.live(),
                        r.hold_until.is_some()
                    )
                })
                .collect();
            return Err(format!("{failure}; rows: {rows:?}"));
        }
        pg.quota_books_balance()?;
        drop(pg);
        let pg = self.world.pg.lock().expect("pg");
        if pg.overrun > 0 {
            return Err(format!(
                "{} units counted without a lease to pay for them: {:?}",
                pg.overrun, pg.overrun_notes
            ));
        }
        drop(pg);
        Ok(Report { history: self.checker.counts, ..self.report })
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Redeem,
    Hold,
    Release,
}

fn use_answer(outcome: Result<UseOutcome, crate::engine::EngineError>) -> Answer {
    match outcome {
        Ok(UseOutcome::Taken(r) | UseOutcome::Confirmed(r)) => {
            Answer::Taken { hold_until: r.expires_at.map(|t| t.timestamp_millis()) }
        }
        Ok(UseOutcome::Replayed(r)) => Answer::Replayed { hold_until: r.expires_at.map(|t| t.timestamp_millis()) },
        Ok(UseOutcome::Refused(Refused::QuotaUnavailable)) | Err(_) => Answer::Unavailable,
        Ok(UseOutcome::Refused(Refused::Rule(reason))) => Answer::Refused {
            limit: matches!(
                reason,
                Reason::UsageLimitReached | Reason::CampaignLimitReached | Reason::CampaignBudgetExhausted
            ),
        },
        Ok(UseOutcome::Refused(_)) => Answer::Refused { limit: false },
    }
}

/// What a set's redeem said of each of its codes' uses; nothing for a code it gives no news
/// of (a replay's codes not taken, a 409 about the order).
fn set_answers(
    outcome: Result<SetOutcome, crate::engine::EngineError>,
    codes: &[Cow<'_, str>],
) -> Vec<(String, Answer)> {
    let limit = |reason: Reason| {
        matches!(reason, Reason::UsageLimitReached | Reason::CampaignLimitReached | Reason::CampaignBudgetExhausted)
    };
    let fates = |receipt: &crate::engine::SetReceipt, replay: bool| -> Vec<(String, Answer)> {
        let hold_until = receipt.expires_at.map(|t| t.timestamp_millis());
        receipt
            .codes
            .iter()
            .filter_map(|c| match (c.reason, replay) {
                (None, false) => Some((c.code.clone(), Answer::Taken { hold_until })),
                (None, true) => Some((c.code.clone(), Answer::Replayed { hold_until })),
                (Some(reason), false) => Some((c.code.clone(), Answer::Refused { limit: limit(reason) })),
                (Some(_), true) => None,
            })
            .collect()
    };
    match outcome {
        Ok(SetOutcome::Taken(r) | SetOutcome::Confirmed(r)) => fates(&r, false),
        Ok(SetOutcome::Replayed(r)) => fates(&r, true),
        Ok(SetOutcome::Rejected(codes)) => {
            codes.into_iter().map(|c| (c.code, Answer::Refused { limit: c.reason.is_some_and(limit) })).collect()
        }
        Ok(SetOutcome::Refused(Refused::QuotaUnavailable) | SetOutcome::Unavailable(_)) | Err(_) => {
            codes.iter().map(|c| (c.to_string(), Answer::Unavailable)).collect()
        }
        Ok(SetOutcome::Refused(_)) => Vec::new(),
    }
}

/// Every event the journal holds from its checkpoint on (with its position), and where
/// reading stopped.
fn read_events(reader: &JournalReader) -> Result<(Vec<(i64, Event)>, crate::journal::Position), String> {
    let (entries, next) = reader.read(reader.checkpoint(), 64 << 20).map_err(|e| e.to_string())?;
    let events = entries
        .iter()
        .map(|e| Ok((e.position.as_i64(), Event::decode(&e.payload).map_err(|e| e.to_string())?)))
        .collect::<Result<_, String>>()?;
    Ok((events, next))
}

/// Runs schedule `seed` with `nodes` instances and `steps` steps, its journals under a
/// directory of its own (removed after). Must run on a current-thread runtime with a
/// paused clock.
async fn run(seed: u64, nodes: usize, steps: usize) -> Result<Report, String> {
    // In memory where there is a tmpfs: the journals fsync at every step.
    let base = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let root = tempfile::Builder::new()
        .prefix(&format!("coupon-engine-sim-{seed}-"))
        .tempdir_in(base)
        .map_err(|e| format!("seed {seed}: no directory for the journals: {e}"))?;
    let result = Sim::new(seed, nodes, root.path().to_owned()).run(steps).await;
    result.map_err(|failure| format!("seed {seed}: {failure}"))
}

/// Runs `count` schedules from `first_seed` on, each on a fresh paused runtime; stops at
/// the first failure.
fn run_many(first_seed: u64, count: u64, nodes: usize, steps: usize) -> Result<Report, String> {
    let mut total = Report::default();
    let progress = std::env::var_os("SIM_PROGRESS").is_some();
    for seed in first_seed..first_seed + count {
        if progress {
            eprintln!("seed {seed}");
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .map_err(|e| e.to_string())?;
        total += runtime.block_on(run(seed, nodes, steps))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many schedules `cargo test` runs; `SIM_SCHEDULES` and `SIM_SEED` ask for others
    /// (`tools/simulate`).
    fn from_env(name: &str, default: u64) -> u64 {
        std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    }

    #[test]
    fn schedules_keep_every_limit_and_every_acknowledged_answer() {
        let count = from_env("SIM_SCHEDULES", 1_000);
        let seed = from_env("SIM_SEED", 1);
        let steps = from_env("SIM_STEPS", 150) as usize;
        let report = run_many(seed, count, 3, steps).unwrap_or_else(|failure| panic!("{failure}"));
        println!("simulation: {count} schedules from seed {seed}: {report:?}");
        assert!(report.history.acknowledged > count, "the schedules sold something: {report:?}");
    }
}
