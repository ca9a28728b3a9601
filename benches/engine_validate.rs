//! The engine's validate in process: catalog lookup, rules and the validation event (budget
//! ≤ 300 ns), with the reference set's 5,000 coupons and with 1,000,000; and of a bulk code
//! of a campaign among 1,000,000 (as fast as any coupon).
//!
//! The codes asked for are a random sample of 10,000 spread over the whole catalog: like a
//! request's body, the code itself is in cache; the catalog entry it finds is not.

mod support;

use std::hint::black_box;
use std::time::Instant;

use coupon_engine::domain::money::Cents;
use coupon_engine::engine::{Caller, ValidateRequest};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// Codes asked for in a run.
const SAMPLE: usize = 10_000;

fn engine_validate(c: &mut Criterion) {
    // `cargo bench` passes --bench; `cargo test --benches` only smoke-runs each bench once.
    let sizes: &[u32] = if std::env::args().any(|a| a == "--bench") { &[5_000, 1_000_000] } else { &[5_000, 20_000] };
    let mut group = c.benchmark_group("engine_validate");
    for &n in sizes {
        let coupons = support::coupons(n);
        // A fixed stride through the catalog, so the sample is spread over all of it.
        let stride = (coupons.len() / SAMPLE).max(1);
        let codes: Vec<String> = coupons.iter().step_by(stride).take(SAMPLE).map(|c| c.code.to_string()).collect();
        let engine = support::engine_with(coupons);
        let caller = Caller { ip: None, user_agent: None, started: Instant::now() };
        let request = |code| ValidateRequest {
            code,
            user_id: "user_0000001",
            order_value: Cents::new(100_000).unwrap(),
            order_id: Some("ord-1"),
            cart: None,
        };
        group.bench_function(BenchmarkId::new("known_code", n), |b| {
            let mut idx = 0;
            b.iter(|| {
                idx = (idx + 7919) % codes.len();
                black_box(engine.validate(&request(black_box(&codes[idx])), &caller))
            })
        });
        let lower: Vec<String> = codes.iter().map(|c| format!(" {} ", c.to_lowercase())).collect();
        group.bench_function(BenchmarkId::new("known_code_needs_normalising", n), |b| {
            let mut idx = 0;
            b.iter(|| {
                idx = (idx + 7919) % lower.len();
                black_box(engine.validate(&request(black_box(&lower[idx])), &caller))
            })
        });
        group.bench_function(BenchmarkId::new("unknown_code", n), |b| {
            b.iter(|| black_box(engine.validate(&request(black_box("NO-SUCH-CODE")), &caller)))
        });
    }
    let bulk = if sizes.len() > 1 && sizes[1] >= 1_000_000 { 1_000_000 } else { 20_000 };
    let (engine, generated) = support::engine_with_codes(support::coupons(5_000), bulk);
    let stride = (generated.len() / SAMPLE).max(1);
    let codes: Vec<String> = generated.into_iter().step_by(stride).take(SAMPLE).collect();
    let caller = Caller { ip: None, user_agent: None, started: Instant::now() };
    group.bench_function(BenchmarkId::new("bulk_code_of_a_campaign", bulk), |b| {
        let mut idx = 0;
        b.iter(|| {
            idx = (idx + 7919) % codes.len();
            let request = ValidateRequest {
                code: black_box(&codes[idx]),
                user_id: "user_0000001",
                order_value: Cents::new(100_000).unwrap(),
                order_id: Some("ord-1"),
                cart: None,
            };
            black_box(engine.validate(&request, &caller))
        })
    });
    group.finish();
}

criterion_group!(benches, engine_validate);
criterion_main!(benches);
