//! One code against a 20-line cart, in process (API.md §9; issue budgets: ≤ 2 µs for a
//! percentage split over lines and units, ≤ 5 µs for buy-X-get-Y): the conditions, the take and
//! the running amounts lowered, as a validate with items does them.

use std::hint::black_box;
use std::sync::Arc;

use coupon_engine::domain::cart::{Cart, IdSet, Line, Running, Scope};
use coupon_engine::domain::cart_discount::{BuyXGetY, Kind, Selection, Target, Terms};
use coupon_engine::domain::money::Percent;
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
