//! What the benches share: an engine over generated coupons, with no database.

use std::sync::Arc;

use chrono::Utc;
use coupon_engine::domain::batch::GenerateSpec;
use coupon_engine::domain::campaign::Campaign;
use coupon_engine::domain::coupon::{Coupon, CouponKind, Discount};
use coupon_engine::domain::money::Cents;
use coupon_engine::engine::Engine;
use coupon_engine::engine::clock::SystemClock;
use coupon_engine::engine::codes::BatchBuilder;
use coupon_engine::engine::ports::Ports;
use coupon_engine::journal::Journal;
use coupon_engine::metrics::Metrics;
use coupon_engine::seed::{SeedParams, generate};

/// `n` coupons of the reference set's shapes.
pub(crate) fn coupons(n: u32) -> Vec<Coupon> {
    let params = SeedParams { users: 1_000_000, coupons: n, usage: 0, rng_seed: 42, now: Utc::now() };
    generate(&params).0
}

/// An engine whose catalog holds `coupons`; its journal lives in a directory removed at once
/// (validate never writes to it).
pub(crate) fn engine_with(coupons: Vec<Coupon>) -> Engine {
    engine_with_codes(coupons, 0).0
}

/// An engine whose catalog holds `coupons` and, when `codes` > 0, a campaign (with a cap and a
/// budget) with one generated batch of `codes` single-use codes; returns them too.
pub(crate) fn engine_with_codes(mut coupons: Vec<Coupon>, codes: u32) -> (Engine, Vec<String>) {
    let mut campaigns = Vec::new();
    let mut batches = Vec::new();
    let mut generated = Vec::new();
    if codes > 0 {
        let campaign = Campaign {
            usage_limit: Some(1_000_000),
            budget: Some(Cents::new(100_000_000).unwrap()),
            ..Campaign::new(1, "bench")
        };
        let rule_id = coupons.iter().map(|c| c.id).max().unwrap_or(0) + 1;
        let rule = Coupon {
            campaign_id: Some(campaign.id),
            batch_id: Some(1),
            ..Coupon::new(rule_id, "~BATCH-1", CouponKind::TimeSpecific, Discount::Fixed(Cents::new(500).unwrap()))
        };
        let spec = GenerateSpec::new(u64::from(codes), "BENCH-", None).expect("a valid batch");
        let mut builder = BatchBuilder::new(1, rule_id, 1, Some((&spec.prefix, spec.length)));
        for value in spec.generate(&mut rand::rng()) {
            let mut code = String::new();
            spec.write_code(value, &mut code);
            builder.push(&code);
            generated.push(code);
        }
        coupons.push(rule);
        campaigns.push(campaign);
        batches.push(Arc::new(builder.build()));
    }
    // Removed at the end of this function: the writer keeps its open segment.
    let dir = tempfile::Builder::new().prefix("bench-journal-").tempdir().expect("temporary directory");
    (engine_on(dir.path(), coupons, campaigns, batches), generated)
}

/// An engine whose journal is in `dir` (kept by the caller, for benches that redeem).
pub(crate) fn engine_on(
    dir: &std::path::Path,
    coupons: Vec<Coupon>,
    campaigns: Vec<Campaign>,
    batches: Vec<Arc<coupon_engine::engine::codes::BatchCodes>>,
) -> Engine {
    let metrics = Arc::new(Metrics::new(&[]));
    let (journal, _reader) = Journal::open(dir, 0, metrics.journal.clone()).expect("journal");
    let settings = coupon_engine::config::Settings::defaults().engine();
    let engine = Engine::new(journal, Ports::none(), Arc::new(SystemClock), metrics, settings);
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    runtime.block_on(async { engine.catalog().publisher().await.replace_all(coupons, campaigns, batches) });
    engine
}
