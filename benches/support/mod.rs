//! What the benches share: an engine over generated coupons, with no database.

use std::sync::Arc;

use chrono::Utc;
use coupon_engine::domain::coupon::Coupon;
use coupon_engine::engine::clock::SystemClock;
use coupon_engine::engine::ports::Ports;
use coupon_engine::engine::{Engine, EngineSettings};
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
    let dir = std::env::temp_dir().join(format!("bench-journal-{}", uuid::Uuid::new_v4().simple()));
    let metrics = Arc::new(Metrics::new(&[]));
    let (journal, _reader) = Journal::open(&dir, metrics.journal.clone()).expect("journal");
    let settings = EngineSettings::standard();
    let engine = Engine::new(journal, Ports::none(), Arc::new(SystemClock), metrics, settings);
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    runtime.block_on(async { engine.catalog().publisher().await.replace_all(coupons, Vec::new(), Vec::new()) });
    let _ = std::fs::remove_dir_all(&dir);
    engine
}
