//! Memory, not time: what one remembered redemption costs the ledger (with 128-character
//! ids, budget ≤ 256 bytes), and what the failed-lookup guard holds at its cap (budget
//! ≤ 64 MiB). Counts the heap bytes held, through a counting allocator, capacity reserved
//! and not yet touched included (resident memory would hide the reuse of freed memory:
//! `tools/rss-slope` measures that from outside); `cargo bench --bench memory`.

mod support;

use std::alloc::System;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use coupon_engine::config::ProtectionSettings;
use coupon_engine::domain::coupon::{Coupon, CouponKind, Discount};
use coupon_engine::domain::identity::redemption_id;
use coupon_engine::domain::money::Cents;
use coupon_engine::engine::{StoredUse, UseOutcome, UseRequest};
use coupon_engine::http::guard::{LookupGuard, MAX_BYTES};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Heap bytes the program holds.
fn held() -> u64 {
    // A reallocation counts its growth as allocated and its shrinking as deallocated.
    let stats = ALLOCATOR.stats();
    stats.bytes_allocated.saturating_sub(stats.bytes_deallocated) as u64
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` only smoke-runs a small size.
    let full = std::env::args().any(|a| a == "--bench");
    let redemptions: u64 = if full { 1_000_000 } else { 10_000 };
    let engine = support::engine_with(support::coupons(100));
    let long = |prefix: &str, n: u64| format!("{prefix}-{n:0>122}");
    let uses: Vec<StoredUse> = (0..redemptions)
        .map(|n| StoredUse {
            id: redemption_id(1 + (n % 100) as i64, &long("order", n)),
            rev: 1,
            coupon_id: 1 + (n % 100) as i64,
            code: None,
            user_id: long("user", n),
            order_id: long("order", n),
            order_value: Cents::new(10_000).unwrap(),
            discount: Cents::new(500).unwrap(),
            hold_until: None,
            released_at: None,
            made_by: None,
            cart: Default::default(),
            group: None,
        })
        .collect();
    let before = held();
    let loaded = engine.load_uses(uses.iter().cloned());
    let after = held();
    drop(uses);
    assert_eq!(loaded as u64, redemptions);
    println!(
        "ledger: {redemptions} redemptions with 128-character ids loaded: {} heap bytes each, capacity reserved and not yet touched included (resident memory: tools/rss-slope)",
        after.saturating_sub(before) / redemptions,
    );

    // The same through the request path: redeems taken one by one, as a running service
    // takes them (its journal kept in a directory of its own).
    let dir = tempfile::Builder::new().prefix("bench-memory-").tempdir().expect("temporary directory");
    let coupon = Coupon::new(1, "LIVE", CouponKind::TimeSpecific, Discount::Fixed(Cents::new(500).unwrap()));
    let engine = support::engine_on(dir.path(), vec![coupon], Vec::new(), Vec::new());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
    let live: u64 = if full { 200_000 } else { 2_000 };
    let taken = |from: u64, to: u64| {
        runtime.block_on(async {
            for n in from..to {
                let (user, order) = (long("user", n), long("order", n));
                let request = UseRequest {
                    code: "LIVE",
                    user_id: &user,
                    order_id: &order,
                    order_value: Cents::new(100_000).unwrap(),
                    cart: None,
                    anonymous_from: None,
                };
                let outcome = engine.redeem(&request).await.expect("no engine error");
                assert!(matches!(outcome, UseOutcome::Taken(_)), "{outcome:?}");
            }
        })
    };
    // A first tenth warms what every request shares (buffers, the runtime).
    taken(0, live / 10);
    let before = held();
    taken(live / 10, live);
    let after = held();
    println!(
        "ledger: {} redeems taken one by one with 128-character ids: {} heap bytes each, capacity reserved included",
        live - live / 10,
        after.saturating_sub(before) / (live - live / 10),
    );

    let guard = LookupGuard::new(&ProtectionSettings {
        failed_lookups_per_user: 1_000,
        failed_lookups_per_address: 1_000,
        failed_admin_auths_per_address: 1_000,
        window: Duration::from_secs(600),
        trusted_proxies: Vec::new(),
        max_active_holds_per_user: 3,
        assigned_codes_per_user: 10,
        anonymous_validations_per_minute: 0,
        hold_share_percent: 0,
    });
    let attempts: u64 = if full { 1_000_000 } else { 10_000 };
    let before = held();
    let started = std::time::Instant::now();
    for n in 0..attempts {
        let address = IpAddr::V6(Ipv6Addr::from((u128::from(n) << 64) | 1));
        guard.record_failure(&long("user", n), address, false);
        guard.record_admin_failure(address);
    }
    let keys = guard.keys();
    let elapsed = started.elapsed();
    let after = held();
    let guard_bytes = after.saturating_sub(before);
    println!(
        "guard: {attempts} anonymous failures, each a new user and address: {keys} keys held in {} MiB of heap (cap {} MiB), {} bytes and {:.0} ns a key",
        guard_bytes >> 20,
        MAX_BYTES >> 20,
        guard_bytes / keys.max(1),
        elapsed.as_nanos() as f64 / keys.max(1) as f64,
    );

    // The same windows in moka (DESIGN.md names it for time-bounded caches): one entry per
    // key, a 64-bit key and a window of two counters, each failure a read and a write.
    let cache: moka::sync::Cache<u64, (u32, u32)> =
        moka::sync::Cache::builder().max_capacity(keys).time_to_live(Duration::from_secs(600)).build();
    let before = held();
    let started = std::time::Instant::now();
    for key in 0..keys {
        let (count, start) = cache.get(&key).unwrap_or((0, 0));
        cache.insert(key, (count + 1, start));
    }
    cache.run_pending_tasks();
    let elapsed = started.elapsed();
    let moka_bytes = held().saturating_sub(before);
    println!(
        "moka: the same {keys} keys: {} MiB of heap, {} bytes and {:.0} ns a key",
        moka_bytes >> 20,
        moka_bytes / keys.max(1),
        elapsed.as_nanos() as f64 / keys.max(1) as f64,
    );
}
