//! One code against a 20-line cart, in process (API.md §9; issue budgets: ≤ 2 µs for a
//! percentage split over lines and units, ≤ 5 µs for buy-X-get-Y): the conditions, the take and
//! the running amounts lowered, as a validate with items does them. And five codes stacked on
//! it (API.md §10; budgets ≤ 10 µs by priority, ≤ 50 µs for `best`).

use std::hint::black_box;
use std::sync::Arc;

use coupon_engine::domain::cart::{Cart, IdSet, Line, Running, Scope};
use coupon_engine::domain::cart_discount::{BuyXGetY, Kind, Selection, Target, Terms};
use coupon_engine::domain::money::Percent;
use coupon_engine::domain::stack::{Classes, CombinedCap, Passed, Select, stack};
use criterion::{Criterion, criterion_group, criterion_main};

/// Twenty lines of 1 to 4 units at varied prices, in two categories.
fn cart() -> Cart {
    Cart {
        lines: (0..20u32)
            .map(|i| Line {
                line_id: format!("{i}").into(),
                product_id: format!("p-{i}").into(),
                variant_id: None,
                category_ids: vec![if i % 2 == 0 { "shirts".into() } else { "socks".into() }],
                quantity: 1 + i % 4,
                unit_price: 499 + u64::from(i) * 137,
                on_sale: i % 5 == 0,
                discountable: true,
            })
            .collect(),
        shipping: Some(499),
    }
}

fn apply(terms: &Terms, cart: &Cart) -> u64 {
    terms.check(Some(cart)).expect("applies");
    let mut running = Running::of(cart);
    let taken = terms.take(cart, &running);
    running.lower(&taken);
    taken.effect()
}

fn bench(c: &mut Criterion) {
    let cart = cart();
    let percent = |h| Percent::from_hundredths(h).expect("a percentage");
    let scoped = Terms {
        kind: Kind::Percentage(percent(1250)),
        target: Target::Items,
        scope: Some(Arc::new(Scope {
            include_categories: IdSet::new(["shirts"]),
            exclude_on_sale: true,
            ..Scope::default()
        })),
        min_quantity: Some(2),
        cap: Some(5_000),
    };
    c.bench_function("cart/percentage_20_lines_scoped_capped", |b| {
        b.iter(|| apply(black_box(&scoped), black_box(&cart)))
    });
    let bxgy = Terms {
        kind: Kind::BuyXGetY(Arc::new(BuyXGetY {
            buy: 2,
            get: 1,
            get_percent: percent(10_000),
            get_scope: None,
            max_applications: None,
            selection: Selection::Cheapest,
        })),
        target: Target::Items,
        scope: None,
        min_quantity: None,
        cap: None,
    };
    c.bench_function("cart/buy_2_get_1_20_lines", |b| b.iter(|| apply(black_box(&bxgy), black_box(&cart))));

    // Five codes: buy 2 get 1, the scoped percentage, 5.00 off each sock (capped), 10 % off
    // the order, free shipping; every one combines with every class but two that do not
    // combine with each other (so that `best` has sets to weigh).
    let each = Terms {
        kind: Kind::Fixed { value: 500, each: true },
        target: Target::Items,
        scope: Some(Arc::new(Scope { include_categories: IdSet::new(["socks"]), ..Scope::default() })),
        min_quantity: None,
        cap: Some(2_000),
    };
    let order = Terms {
        kind: Kind::Percentage(percent(1000)),
        target: Target::Order,
        scope: None,
        min_quantity: None,
        cap: None,
    };
    let shipping =
        Terms { kind: Kind::FreeShipping, target: Target::Shipping, scope: None, min_quantity: None, cap: None };
    let all = Classes::ALL;
    let items_only = Classes::of([
        coupon_engine::domain::cart_discount::Class::Order,
        coupon_engine::domain::cart_discount::Class::Shipping,
    ]);
    let five = [
        Passed { position: 0, terms: &bxgy, priority: 0, combines_with: items_only },
        Passed { position: 1, terms: &scoped, priority: 2, combines_with: items_only },
        Passed { position: 2, terms: &each, priority: 1, combines_with: all },
        Passed { position: 3, terms: &order, priority: 0, combines_with: all },
        Passed { position: 4, terms: &shipping, priority: 0, combines_with: all },
    ];
    let cap = CombinedCap { order_value: cart.order_value(), max_total: None, max_total_percent: 100 };
    c.bench_function("cart/stack_5_codes_20_lines_priority", |b| {
        b.iter(|| stack(black_box(&cart), black_box(&five), Select::Priority, &cap).effect())
    });
    c.bench_function("cart/stack_5_codes_20_lines_best", |b| {
        b.iter(|| stack(black_box(&cart), black_box(&five), Select::Best, &cap).effect())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
