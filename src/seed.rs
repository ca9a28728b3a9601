//! The reference data set (1M users, 5k coupons, ~3k redemptions), generated
//! deterministically; `db::seed` loads it with COPY. Beside it, on request: a small product
//! catalogue that carts are drawn from, and coupons that target carts over it.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::domain::coupon::{Coupon, CouponKind, Discount, Status};
use crate::domain::money::{Cents, Percent};

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedParams {
    pub users: u32,
    pub coupons: u32,
    pub usage: u32,
    pub rng_seed: u64,
    /// Dates are laid out around this instant; the CLI passes today's midnight UTC so the
    /// data set is the same all day for a given seed.
    pub now: DateTime<Utc>,
}

/// A generated redemption row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedUsage {
    pub coupon_id: i64,
    pub user_id: String,
    pub order_id: String,
    pub order_value: Cents,
    pub discount: Cents,
    pub used_at: DateTime<Utc>,
}

/// Counts of what was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedReport {
    pub users: u64,
    pub coupons: u64,
    pub usage: u64,
}

/// The id of the `n`th user.
pub fn user_id(n: u32) -> String {
    format!("user_{n:07}")
}

/// Generates the coupons and redemptions for `params`; the same params give the same rows.
pub fn generate(params: &SeedParams) -> (Vec<Coupon>, Vec<SeedUsage>) {
    let mut rng = ChaCha8Rng::seed_from_u64(params.rng_seed);
    let coupons = generate_coupons(params, &mut rng);
    let usage = generate_usage(params, &coupons, &mut rng);
    (coupons, usage)
}

fn generate_coupons(params: &SeedParams, rng: &mut ChaCha8Rng) -> Vec<Coupon> {
    let n = params.coupons as usize;
    // Exact shares: 60% active, 25% expired, the rest (15%) inactive, in shuffled order.
    let n_active = n * 60 / 100;
    let n_expired = n * 25 / 100;
    let mut statuses: Vec<Status> = std::iter::repeat_n(Status::Active, n_active)
        .chain(std::iter::repeat_n(Status::Expired, n_expired))
        .chain(std::iter::repeat_n(Status::Inactive, n - n_active - n_expired))
        .collect();
    statuses.shuffle(rng);
    let now = params.now;
    let days = |d: i64| Duration::days(d);
    let dollars = |d: u64| Cents::new(d * 100).expect("seed amounts are small");

    statuses
        .into_iter()
        .enumerate()
        .map(|(idx, status)| {
            let id = idx as i64 + 1;
            let kind = if idx % 2 == 0 { CouponKind::UserSpecific } else { CouponKind::TimeSpecific };
            let discount = if rng.random_bool(0.6) {
                let percent = [5u32, 10, 15, 20, 25, 30, 50][rng.random_range(0..7)];
                let hundredths = if rng.random_bool(0.1) { percent * 100 + 50 } else { percent * 100 };
                let cap = rng.random_bool(0.5).then(|| dollars([10, 20, 50, 100][rng.random_range(0..4)]));
                let rate = Percent::from_hundredths(u64::from(hundredths)).expect("seed percentages are in range");
                Discount::Percentage { rate, cap }
            } else {
                Discount::Fixed(dollars([5, 10, 20, 25, 50, 100][rng.random_range(0..6)]))
            };
            let min_order_value =
                if rng.random_bool(0.5) { Cents::ZERO } else { dollars([20, 50, 100, 200][rng.random_range(0..4)]) };
            let usage_limit = rng.random_bool(0.5).then(|| [10u32, 50, 100, 500, 1000][rng.random_range(0..5)]);
            let (user_id, per_user_limit) = match kind {
                CouponKind::UserSpecific => {
                    let owner = user_id(rng.random_range(0..params.users.max(1)));
                    (Some(owner), Some(rng.random_range(1..=3)))
                }
                CouponKind::TimeSpecific => {
                    (None, rng.random_bool(0.6).then(|| [1u32, 2, 3, 5][rng.random_range(0..4)]))
                }
            };
            let (valid_from, valid_until) = match (status, kind) {
                (Status::Expired, _) => {
                    let until = now - days(rng.random_range(1..=90));
                    (Some(until - days(30)), Some(until))
                }
                (_, CouponKind::TimeSpecific) => {
                    // A few active time-specific coupons have not started yet.
                    let from = if rng.random_bool(0.05) {
                        now + days(rng.random_range(1..=30))
                    } else {
                        now - days(rng.random_range(1..=60))
                    };
                    (Some(from), Some(from + days(rng.random_range(60..=240))))
                }
                (_, CouponKind::UserSpecific) => {
                    (None, rng.random_bool(0.5).then(|| now + days(rng.random_range(7..=365))))
                }
            };
            let prefix = match kind {
                CouponKind::UserSpecific => "USER",
                CouponKind::TimeSpecific => "TIME",
            };
            let suffix: String =
                (0..4).map(|_| char::from(b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789"[rng.random_range(0..32)])).collect();
            Coupon {
                status,
                min_order_value,
                usage_limit,
                per_user_limit,
                user_id: user_id.map(Into::into),
                valid_from,
                valid_until,
                ..Coupon::new(id, &format!("{prefix}-{id:05}-{suffix}"), kind, discount)
            }
        })
        .collect()
}

fn generate_usage(params: &SeedParams, coupons: &[Coupon], rng: &mut ChaCha8Rng) -> Vec<SeedUsage> {
    let usable: Vec<&Coupon> = coupons
        .iter()
        .filter(|c| {
            c.status == Status::Active && c.valid_from.is_none_or(|from| from <= params.now) && c.usage_limit != Some(0)
        })
        .collect();
    let mut rows = Vec::with_capacity(params.usage as usize);
    if usable.is_empty() || params.users == 0 {
        return rows;
    }
    let mut total: HashMap<i64, u32> = HashMap::new();
    let mut by_user: HashMap<(i64, String), u32> = HashMap::new();
    // Bounded attempts: limits can make the requested count unreachable on tiny data sets.
    for _ in 0..params.usage.saturating_mul(20) {
        if rows.len() == params.usage as usize {
            break;
        }
        let coupon = usable[rng.random_range(0..usable.len())];
        let user = coupon.user_id.as_deref().map_or_else(|| user_id(rng.random_range(0..params.users)), str::to_owned);
        let used = total.get(&coupon.id).copied().unwrap_or(0);
        let used_by_user = by_user.get(&(coupon.id, user.clone())).copied().unwrap_or(0);
        if coupon.usage_limit.is_some_and(|limit| used >= limit)
            || coupon.per_user_limit.is_some_and(|limit| used_by_user >= limit)
        {
            continue;
        }
        let order_value = coupon.min_order_value.get() + rng.random_range(0..50_000u64);
        let order_value = Cents::new(order_value).expect("seed amounts are small");
        total.insert(coupon.id, used + 1);
        by_user.insert((coupon.id, user.clone()), used_by_user + 1);
        rows.push(SeedUsage {
            coupon_id: coupon.id,
            user_id: user,
            order_id: format!("seed-order-{:07}", rows.len() + 1),
            order_value,
            discount: coupon.discount.amount_for(order_value),
            used_at: params.now - Duration::minutes(rng.random_range(1..=30 * 24 * 60)),
        });
    }
    rows
}

/// One product of the seed's catalogue (API.md §9's `productId`, `variantId`, `categoryIds`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub id: String,
    pub variant_id: Option<String>,
    pub category: String,
    pub unit_price: Cents,
    pub on_sale: bool,
}

/// Products in the catalogue, and the categories they fall in.
pub const CATALOGUE_PRODUCTS: u32 = 200;
pub const CATALOGUE_CATEGORIES: u32 = 10;
/// The start of every cart coupon's code.
pub const CART_COUPON_PREFIX: &str = "CART-";

/// The catalogue: `p-0000`…`p-0199` in `cat-00`…`cat-09` (product i in category i mod 10),
/// priced from 0.99 to 199.99, every third with a variant, every seventh on sale. Fixed: the
/// same for every seed, so carts drawn from it fit every seeded database.
pub fn catalogue() -> Vec<Product> {
    (0..CATALOGUE_PRODUCTS)
        .map(|i| Product {
            id: format!("p-{i:04}"),
            variant_id: (i % 3 == 0).then(|| format!("p-{i:04}-m")),
            category: category(i % CATALOGUE_CATEGORIES),
            unit_price: Cents::new(u64::from(i * 37 % 200) * 100 + 99).expect("catalogue prices are small"),
            on_sale: i % 7 == 0,
        })
        .collect()
}

fn category(n: u32) -> String {
    format!("cat-{n:02}")
}

/// `n` active coupons that target carts over [`catalogue`], in turn: a percentage off one or
/// two categories (on-sale lines excluded), a fixed amount off each unit of a few products, a
/// fixed price in a category, buy 2 get the cheapest free in a category, free shipping over
/// 50. Codes `CART-<n>-<kind>`; no limits, no window.
pub fn cart_coupons(n: u32, rng_seed: u64) -> Vec<Coupon> {
    use std::sync::Arc;

    use crate::domain::cart::{IdSet, Scope};
    use crate::domain::cart_discount::{BuyXGetY, Selection, Target};
    use crate::domain::coupon::MinOrderBasis;

    let mut rng = ChaCha8Rng::seed_from_u64(rng_seed ^ 0xCA27);
    let dollars = |d: u64| Cents::new(d * 100).expect("seed amounts are small");
    let categories = |rng: &mut ChaCha8Rng, k: usize| {
        let picked: Vec<String> = (0..k).map(|_| category(rng.random_range(0..CATALOGUE_CATEGORIES))).collect();
        Some(Arc::new(Scope { include_categories: IdSet::new(picked), exclude_on_sale: true, ..Scope::default() }))
    };
    (0..n)
        .map(|k| {
            let base = |code: String, discount| Coupon::new(0, &code, CouponKind::TimeSpecific, discount);
            match k % 5 {
                0 => {
                    let percent = [10u64, 15, 20, 25, 30][rng.random_range(0..5)];
                    let rate = Percent::from_hundredths(percent * 100).expect("in range");
                    let spread = rng.random_range(1..=2);
                    Coupon {
                        target: Target::Items,
                        scope: categories(&mut rng, spread),
                        ..base(
                            format!("{CART_COUPON_PREFIX}{k:03}-PCT{percent}"),
                            Discount::Percentage { rate, cap: None },
                        )
                    }
                }
                1 => {
                    let products: Vec<String> = (0..rng.random_range(3..=10))
                        .map(|_| format!("p-{:04}", rng.random_range(0..CATALOGUE_PRODUCTS)))
                        .collect();
                    let value = dollars(rng.random_range(1..=5));
                    Coupon {
                        scope: Some(Arc::new(Scope { include_products: IdSet::new(products), ..Scope::default() })),
                        ..base(
                            format!("{CART_COUPON_PREFIX}{k:03}-EACH"),
                            Discount::FixedEach { value, cap: Some(dollars(50)) },
                        )
                    }
                }
                2 => Coupon {
                    scope: categories(&mut rng, 1),
                    min_quantity: Some(2),
                    ..base(
                        format!("{CART_COUPON_PREFIX}{k:03}-PRICE"),
                        Discount::FixedPrice { price: Cents::new(999).expect("small"), cap: None },
                    )
                },
                3 => {
                    let offer = BuyXGetY {
                        buy: 2,
                        get: 1,
                        get_percent: Percent::from_hundredths(10_000).expect("100%"),
                        get_scope: None,
                        max_applications: Some(3),
                        selection: Selection::Cheapest,
                    };
                    Coupon {
                        scope: categories(&mut rng, 1),
                        ..base(
                            format!("{CART_COUPON_PREFIX}{k:03}-B2G1"),
                            Discount::BuyXGetY { offer: Arc::new(offer), cap: None },
                        )
                    }
                }
                _ => Coupon {
                    min_order_value: dollars(50),
                    min_order_basis: MinOrderBasis::Order,
                    ..base(format!("{CART_COUPON_PREFIX}{k:03}-SHIP"), Discount::FreeShipping { cap: None })
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn params(rng_seed: u64) -> SeedParams {
        SeedParams {
            users: 10_000,
            coupons: 1_000,
            usage: 600,
            rng_seed,
            now: Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 0).unwrap(),
        }
    }

    #[test]
    fn same_seed_same_rows_other_seed_other_rows() {
        assert_eq!(generate(&params(7)), generate(&params(7)));
        assert_ne!(generate(&params(7)).0, generate(&params(8)).0);
    }

    #[test]
    fn shares_and_windows_follow_the_reference_set() {
        let p = params(1);
        let (coupons, _) = generate(&p);
        let count = |f: &dyn Fn(&Coupon) -> bool| coupons.iter().filter(|c| f(c)).count();
        assert_eq!(count(&|c| c.kind == CouponKind::UserSpecific), 500);
        assert_eq!(count(&|c| c.status == Status::Active), 600);
        assert_eq!(count(&|c| c.status == Status::Expired), 250);
        assert_eq!(count(&|c| c.status == Status::Inactive), 150);
        for c in &coupons {
            if c.status == Status::Expired {
                assert!(c.valid_until.is_some_and(|until| until < p.now), "{c:?}");
            }
            if c.kind == CouponKind::UserSpecific {
                assert!(c.user_id.is_some(), "{c:?}");
            }
            assert!(crate::domain::coupon::is_valid_code(&c.code));
        }
        let mut codes: Vec<_> = coupons.iter().map(|c| &c.code).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), coupons.len(), "codes are unique");
        assert!(count(&|c| matches!(c.discount, Discount::Fixed(_))) > 200);
        assert!(count(&|c| matches!(c.discount, Discount::Percentage { cap: Some(_), .. })) > 100);
    }

    #[test]
    fn the_catalogue_and_the_cart_coupons_are_fixed_and_well_formed() {
        let products = catalogue();
        assert_eq!(products.len(), CATALOGUE_PRODUCTS as usize);
        assert_eq!(products, catalogue());
        assert!(products.iter().all(|p| (99..=19_999).contains(&p.unit_price.get())));
        let coupons = cart_coupons(20, 5);
        assert_eq!(coupons, cart_coupons(20, 5));
        for coupon in &coupons {
            assert!(coupon.check().is_ok(), "{coupon:?}");
            assert!(coupon.code.starts_with(CART_COUPON_PREFIX));
            assert!(coupon.needs_cart(), "{coupon:?}");
        }
        let kinds: std::collections::HashSet<_> = coupons.iter().map(|c| c.discount.parts().0.as_str()).collect();
        assert_eq!(kinds.len(), 5, "every kind of discount");
    }

    #[test]
    fn usage_is_on_active_coupons_and_respects_limits() {
        let p = params(3);
        let (coupons, usage) = generate(&p);
        assert_eq!(usage.len(), 600);
        let by_id: HashMap<i64, &Coupon> = coupons.iter().map(|c| (c.id, c)).collect();
        let mut totals: HashMap<i64, u32> = HashMap::new();
        let mut per_user: HashMap<(i64, &str), u32> = HashMap::new();
        for u in &usage {
            let coupon = by_id[&u.coupon_id];
            assert_eq!(coupon.status, Status::Active);
            assert!(u.order_value >= coupon.min_order_value);
            assert_eq!(u.discount, coupon.discount.amount_for(u.order_value));
            if let Some(owner) = &coupon.user_id {
                assert_eq!(u.user_id.as_str(), &**owner);
            }
            *totals.entry(u.coupon_id).or_default() += 1;
            *per_user.entry((u.coupon_id, &u.user_id)).or_default() += 1;
        }
        for (id, n) in totals {
            assert!(by_id[&id].usage_limit.is_none_or(|limit| n <= limit));
        }
        for ((id, _), n) in per_user {
            assert!(by_id[&id].per_user_limit.is_none_or(|limit| n <= limit));
        }
    }
}
