//! Cart bodies through §9's arithmetic: any cart a validate body may carry, judged by every
//! kind of coupon, never panics, never discounts a unit below zero or more than the cart,
//! every unit is accounted for, and a use's allocation reads back as it was written.
#![no_main]

use std::sync::Arc;

use coupon_engine::domain::allocation;
use coupon_engine::domain::cart::{IdSet, Running, Scope};
use coupon_engine::domain::cart_discount::{BuyXGetY, Kind, Selection, Target, Terms};
use coupon_engine::domain::cart_fields::{allocation_json, parse_allocation};
use coupon_engine::domain::currency::Currency;
use coupon_engine::domain::money::Percent;
use coupon_engine::http::cart_input::CartLimits;
use coupon_engine::http::request::ValidateBody;
use libfuzzer_sys::fuzz_target;

fn every_kind() -> Vec<Terms> {
    let percent = |h| Percent::from_hundredths(h).expect("a percentage");
    let scope = Some(Arc::new(Scope {
        include_categories: IdSet::new(["a", "b"]),
        exclude_products: IdSet::new(["x"]),
        exclude_on_sale: true,
        ..Scope::default()
    }));
    let terms = |kind, target, cap| Terms { kind, target, scope: None, min_quantity: None, cap };
    vec![
        terms(Kind::Percentage(percent(1550)), Target::Order, None),
        Terms { scope: scope.clone(), ..terms(Kind::Percentage(percent(10_000)), Target::Items, Some(777)) },
        terms(Kind::Fixed { value: 1_000, each: false }, Target::Order, None),
        terms(Kind::Fixed { value: 333, each: true }, Target::Items, Some(5_000)),
        terms(Kind::FixedPrice(199), Target::Items, Some(10_000)),
        Terms {
            scope: scope.clone(),
            ..terms(
                Kind::BuyXGetY(Arc::new(BuyXGetY {
                    buy: 2,
                    get: 1,
                    get_percent: percent(5_000),
                    get_scope: None,
                    max_applications: Some(3),
                    selection: Selection::MostExpensive,
                })),
                Target::Items,
                None,
            )
        },
        terms(Kind::FreeShipping, Target::Shipping, Some(300)),
        terms(Kind::Percentage(percent(2_500)), Target::Shipping, None),
    ]
}

fuzz_target!(|data: &[u8]| {
    let limits = CartLimits {
        default_currency: Currency::parse("EUR").expect("EUR"),
        max_lines: 100,
        max_codes: 5,
        max_body_bytes: 64 << 10,
    };
    let Ok(request) = ValidateBody::parse(data, limits) else { return };
    let Some(cart) = &request.cart else { return };
    let _ = cart.items_hash();
    let mut running = Running::of(&cart.cart);
    for terms in every_kind() {
        if terms.check(Some(&cart.cart)).is_err() {
            continue;
        }
        let taken = terms.take(&cart.cart, &running);
        assert_eq!(taken.lines.len(), cart.cart.lines.len());
        assert!(taken.shipping <= running.shipping);
        let left: u64 = running.lines.iter().map(|r| allocation::sum(r)).sum();
        assert!(taken.merchandise() <= left);
        if let Some(cap) = terms.cap {
            assert!(taken.effect() <= cap);
        }
        for (line, (off, runs)) in cart.cart.lines.iter().zip(taken.lines.iter().zip(&running.lines)) {
            assert_eq!(off.iter().map(|r| r.count).sum::<u32>(), line.quantity);
            assert!(allocation::zip_le(off, runs), "a unit's discount above its amount");
        }
        let json = allocation_json(&cart.cart, &taken, cart.currency);
        assert_eq!(parse_allocation(&json, cart.currency).expect("reads back"), taken.lines);
        // Codes apply one after the other on running amounts, as several codes will.
        running.lower(&taken);
    }
});
