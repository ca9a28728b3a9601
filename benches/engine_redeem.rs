//! Redeems on one instance, in process, with the journal on disk (fsync'd, group commit): one
//! code, and a set of three codes (API.md §10; budget: a set of three at least half the
//! throughput of one code). 64 redeems in flight, each of a new order, as a busy shop sends
//! them.

#[allow(dead_code, reason = "shared by the benches; this one needs only engine_on")]
mod support;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use coupon_engine::domain::coupon::{Coupon, CouponKind, Discount};
use coupon_engine::domain::money::{Cents, Percent};
use coupon_engine::domain::stack::{Classes, Mode, Select};
use coupon_engine::engine::{Engine, SetOutcome, SetRequest, UseOutcome, UseRequest};
use criterion::{Criterion, criterion_group, criterion_main};

/// Redeems in flight at once.
const IN_FLIGHT: u64 = 64;

fn coupon(id: i64, code: &str, discount: Discount) -> Coupon {
    let mut coupon = Coupon::new(id, code, CouponKind::TimeSpecific, discount);
    // Limits, so that every link of the chain counts.
    coupon.usage_limit = Some(1_000_000_000);
    coupon.combines_with = Classes::ALL;
    coupon
}

/// Runs `iters` redeems, `IN_FLIGHT` at a time, and answers how long they took.
fn run<F, Fut>(runtime: &tokio::runtime::Runtime, iters: u64, redeem: F) -> Duration
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let redeem = Arc::new(redeem);
    let next = Arc::new(AtomicU64::new(0));
    runtime.block_on(async move {
        let started = Instant::now();
        let workers: Vec<_> = (0..IN_FLIGHT.min(iters))
            .map(|_| {
                let (redeem, next) = (redeem.clone(), next.clone());
                tokio::spawn(async move {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= iters {
                            return;
                        }
                        redeem(n).await;
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.expect("a worker");
        }
        started.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::Builder::new().prefix("bench-redeem-").tempdir().expect("temporary directory");
    let coupons = vec![
        coupon(1, "ONE", Discount::Fixed(Cents::new(500).unwrap())),
        coupon(2, "TEN", Discount::Percentage { rate: Percent::from_hundredths(1_000).unwrap(), cap: None }),
        coupon(3, "TWO", Discount::Fixed(Cents::new(200).unwrap())),
    ];
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let engine: Arc<Engine> = Arc::new(support::engine_on(dir.path(), coupons, Vec::new(), Vec::new()));
    let orders = Arc::new(AtomicU64::new(0));
    let mut group = c.benchmark_group("engine_redeem");
    group.throughput(criterion::Throughput::Elements(1));
    group.bench_function("one_code", |b| {
        b.iter_custom(|iters| {
            let (engine, orders) = (engine.clone(), orders.clone());
            run(&runtime, iters, move |_| {
                let (engine, order) = (engine.clone(), format!("o-{}", orders.fetch_add(1, Ordering::Relaxed)));
                async move {
                    let request = UseRequest {
                        code: "ONE",
                        user_id: "u",
                        order_id: &order,
                        order_value: Cents::new(10_000).unwrap(),
                        cart: None,
                        anonymous_from: None,
                    };
                    let outcome = engine.redeem(&request).await.expect("no engine error");
                    assert!(matches!(outcome, UseOutcome::Taken(_)), "{outcome:?}");
                }
            })
        })
    });
    group.bench_function("set_of_three", |b| {
        b.iter_custom(|iters| {
            let (engine, orders) = (engine.clone(), orders.clone());
            run(&runtime, iters, move |_| {
                let (engine, order) = (engine.clone(), format!("o-{}", orders.fetch_add(1, Ordering::Relaxed)));
                async move {
                    let codes = [Cow::Borrowed("ONE"), Cow::Borrowed("TEN"), Cow::Borrowed("TWO")];
                    let request = SetRequest {
                        codes: &codes,
                        user_id: "u",
                        order_id: &order,
                        order_value: Cents::new(10_000).unwrap(),
                        cart: None,
                        mode: Mode::All,
                        select: Select::Priority,
                        max_total: None,
                        anonymous_from: None,
                    };
                    let outcome = engine.redeem_set(&request).await.expect("no engine error");
                    assert!(matches!(outcome, SetOutcome::Taken(_)), "{outcome:?}");
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
