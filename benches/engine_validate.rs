//! The engine's validate: catalog lookup + rules, in process (budget ≤ 300 ns).

use std::hint::black_box;
use std::sync::Arc;

use chrono::Utc;
use coupon_engine::cache::Cache;
use coupon_engine::db::seed::{SeedParams, generate};
use coupon_engine::domain::money::Cents;
use coupon_engine::domain::rules::Attempt;
use criterion::{Criterion, criterion_group, criterion_main};

/// A cache holding the reference set's 5,000 coupons.
fn reference_cache() -> (Arc<Cache>, Vec<String>) {
    let params = SeedParams { users: 1_000_000, coupons: 5_000, usage: 0, rng_seed: 42, now: Utc::now() };
    let (coupons, _) = generate(&params);
    let codes = coupons.iter().map(|c| c.code.to_string()).collect();
    let cache = Arc::new(Cache::new());
    cache.replace_all(coupons);
    (cache, codes)
}

fn engine_validate(c: &mut Criterion) {
    let (cache, codes) = reference_cache();
    let attempt =
        Attempt { user_id: "user_0000001", order_value: Cents::new(100_000).unwrap(), order_id: Some("ord-1") };
    let now = Utc::now();
    let mut group = c.benchmark_group("engine_validate");
    group.bench_function("known_code_uppercase", |b| {
        let mut idx = 0;
        b.iter(|| {
            idx = (idx + 1) % codes.len();
            black_box(cache.validate(black_box(&codes[idx]), &attempt, now))
        })
    });
    let lower: Vec<String> = codes.iter().map(|c| format!(" {} ", c.to_lowercase())).collect();
    group.bench_function("known_code_needs_normalising", |b| {
        let mut idx = 0;
        b.iter(|| {
            idx = (idx + 1) % lower.len();
            black_box(cache.validate(black_box(&lower[idx]), &attempt, now))
        })
    });
    group.bench_function("unknown_code", |b| {
        b.iter(|| black_box(cache.validate(black_box("NO-SUCH-CODE"), &attempt, now)))
    });
    group.finish();
}

criterion_group!(benches, engine_validate);
criterion_main!(benches);
