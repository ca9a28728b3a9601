//! What one code takes off a cart (API.md §9, steps 2–5): the base of its eligible units at
//! their running amounts, its total by kind, buy-X-get-Y's units, the cap, and the split over
//! lines and units. Pure integers in minor units.

use std::sync::Arc;

use crate::domain::allocation::{self, Run};
use crate::domain::cart::{Cart, Line, Running, Scope, eligible};
use crate::domain::money::Percent;

/// What a coupon's discount is aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Order,
    Items,
    Shipping,
}

/// Which units buy-X-get-Y gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    Cheapest,
    MostExpensive,
}

/// Buy `buy`, get `get` at `get_percent` off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuyXGetY {
    pub buy: u32,
    pub get: u32,
    pub get_percent: Percent,
    /// The units that may be given (default: the coupon's scope).
    pub get_scope: Option<Arc<Scope>>,
    pub max_applications: Option<u32>,
    pub selection: Selection,
}

/// The kinds of discount on a cart, with their values in minor units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Percentage(Percent),
    /// One amount over the eligible lines (`across`), or off every eligible unit (`each`).
    Fixed {
        value: u64,
        each: bool,
    },
    /// Each eligible unit costs `value`.
    FixedPrice(u64),
    BuyXGetY(Arc<BuyXGetY>),
    FreeShipping,
}

/// A coupon's terms on a cart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    pub kind: Kind,
    pub target: Target,
    pub scope: Option<Arc<Scope>>,
    pub min_quantity: Option<u32>,
    /// `maxDiscount`, minor units.
    pub cap: Option<u64>,
}

spelled!(Target { Order => "order", Items => "items", Shipping => "shipping" });
spelled!(Selection { Cheapest => "cheapest", MostExpensive => "most_expensive" });
spelled!(Class { Item => "item", Order => "order", Shipping => "shipping" });

/// Where a code's effect lands, for §10's order of application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    Item,
    Order,
    Shipping,
}

/// Why a code does not apply to a cart (§9's reasons, in their order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotApplicable {
    ItemsRequired,
    NoEligibleItems,
    MinQuantityNotMet,
}

/// What a code takes: each line's units' discounts (runs in unit order), and shipping's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub lines: Vec<Vec<Run>>,
    pub shipping: u64,
}

impl Taken {
    /// Off the merchandise: Σ over lines.
    pub fn merchandise(&self) -> u64 {
        self.lines.iter().map(|runs| allocation::sum(runs)).sum()
    }

    /// The code's effect: merchandise and shipping.
    pub fn effect(&self) -> u64 {
        self.merchandise() + self.shipping
    }
}

impl Terms {
    /// `item`, `order` or `shipping` (§9).
    pub fn class(&self) -> Class {
        // The kind first: free shipping is about shipping whatever its target says.
        match (&self.kind, self.target) {
            (Kind::BuyXGetY(_) | Kind::FixedPrice(_), _) => Class::Item,
            (Kind::FreeShipping, _) | (_, Target::Shipping) => Class::Shipping,
            (_, Target::Items) => Class::Item,
            (_, Target::Order) => Class::Order,
        }
    }

    /// Whether these terms need the cart's items (or its shipping) to be judged at all.
    pub fn needs_cart(&self) -> bool {
        self.scope.is_some()
            || self.min_quantity.is_some()
            || self.target != Target::Order
            || matches!(self.kind, Kind::FixedPrice(_) | Kind::BuyXGetY(_) | Kind::FreeShipping)
            || matches!(self.kind, Kind::Fixed { each: true, .. })
    }

    /// §9's conditions, on the cart as sent (`None`: the request has no items).
    pub fn check(&self, cart: Option<&Cart>) -> Result<(), NotApplicable> {
        let Some(cart) = cart.filter(|c| !c.lines.is_empty() || self.class() == Class::Shipping) else {
            return if self.needs_cart() { Err(NotApplicable::ItemsRequired) } else { Ok(()) };
        };
        if self.class() == Class::Shipping {
            return match cart.shipping {
                None => Err(NotApplicable::ItemsRequired),
                Some(0) => Err(NotApplicable::NoEligibleItems),
                Some(_) => Ok(()),
            };
        }
        let scope = self.scope.as_deref();
        let quantity: u64 = cart.lines.iter().filter(|l| eligible(scope, l)).map(|l| u64::from(l.quantity)).sum();
        if quantity == 0 {
            return Err(NotApplicable::NoEligibleItems);
        }
        if self.min_quantity.is_some_and(|min| quantity < u64::from(min)) {
            return Err(NotApplicable::MinQuantityNotMet);
        }
        if let Kind::BuyXGetY(bxgy) = &self.kind
            && chosen(bxgy, scope, &cart.lines, &Running::of(cart).lines).is_empty()
        {
            return Err(NotApplicable::MinQuantityNotMet);
        }
        Ok(())
    }

    /// Σ quantity × unitPrice of the eligible lines, as sent (`minOrderBasis: eligible`).
    pub fn eligible_subtotal(&self, cart: &Cart) -> u64 {
        cart.lines.iter().filter(|l| eligible(self.scope.as_deref(), l)).map(Line::subtotal).sum()
    }

    /// What these terms take off `running` (conditions already met), without lowering it.
    pub fn take(&self, cart: &Cart, running: &Running) -> Taken {
        let zero = || running.lines.iter().map(|runs| zeroed(runs)).collect::<Vec<_>>();
        if self.class() == Class::Shipping {
            let base = running.shipping;
            let total = match &self.kind {
                Kind::Percentage(rate) => rate.of_minor(base),
                Kind::Fixed { value, .. } => (*value).min(base),
                _ => base,
            };
            return Taken { lines: zero(), shipping: self.capped(total) };
        }
        let scope = self.scope.as_deref();
        let weights: Vec<Vec<Run>> = cart
            .lines
            .iter()
            .zip(&running.lines)
            .map(|(line, runs)| if eligible(scope, line) { runs.clone() } else { zeroed(runs) })
            .collect();
        let per_unit: Vec<Vec<Run>> = match &self.kind {
            Kind::Percentage(rate) => {
                let base: u64 = weights.iter().map(|runs| allocation::sum(runs)).sum();
                return Taken {
                    lines: allocation::alloc_lines(self.capped(rate.of_minor(base)), &weights),
                    shipping: 0,
                };
            }
            Kind::Fixed { value, each: false } => {
                let base: u64 = weights.iter().map(|runs| allocation::sum(runs)).sum();
                let total = self.capped((*value).min(base));
                return Taken { lines: allocation::alloc_lines(total, &weights), shipping: 0 };
            }
            Kind::Fixed { value, each: true } => map_units(&weights, |r| r.min(*value)),
            Kind::FixedPrice(value) => map_units(&weights, |r| r.saturating_sub(*value)),
            Kind::BuyXGetY(bxgy) => {
                let picked = chosen(bxgy, scope, &cart.lines, &running.lines);
                running
                    .lines
                    .iter()
                    .enumerate()
                    .map(|(i, runs)| {
                        let mut out = Vec::with_capacity(runs.len() + 1);
                        for (j, run) in runs.iter().enumerate() {
                            let n = picked.iter().find(|p| p.0 == i && p.1 == j).map_or(0, |p| p.2);
                            allocation::push(&mut out, Run::new(n, bxgy.get_percent.of_minor(run.amount)));
                            allocation::push(&mut out, Run::new(run.count - n, 0));
                        }
                        out
                    })
                    .collect()
            }
            Kind::FreeShipping => zero(),
        };
        let total: u64 = per_unit.iter().map(|runs| allocation::sum(runs)).sum();
        let lines = match self.cap {
            Some(cap) if total > cap => allocation::alloc_lines(cap, &per_unit),
            _ => per_unit,
        };
        Taken { lines, shipping: 0 }
    }

    fn capped(&self, total: u64) -> u64 {
        self.cap.map_or(total, |cap| total.min(cap))
    }
}

impl Running {
    /// Lowers the running amounts by what a code took.
    pub fn lower(&mut self, taken: &Taken) {
        for (runs, off) in self.lines.iter_mut().zip(&taken.lines) {
            *runs = allocation::minus(runs, off);
        }
        self.shipping = self.shipping.saturating_sub(taken.shipping);
    }
}

fn zeroed(runs: &[Run]) -> Vec<Run> {
    let units = runs.iter().map(|r| r.count).sum();
    if units == 0 { Vec::new() } else { vec![Run::new(units, 0)] }
}

fn map_units(weights: &[Vec<Run>], f: impl Fn(u64) -> u64) -> Vec<Vec<Run>> {
    weights
        .iter()
        .map(|runs| {
            let mut out = Vec::with_capacity(runs.len());
            for run in runs {
                allocation::push(&mut out, Run::new(run.count, f(run.amount)));
            }
            out
        })
        .collect()
}

/// Buy-X-get-Y's units (§9 step 5): how many of each run (line, run index, count) are given,
/// none if it cannot apply once.
fn chosen(bxgy: &BuyXGetY, scope: Option<&Scope>, lines: &[Line], running: &[Vec<Run>]) -> Vec<(usize, usize, u32)> {
    let get_scope = bxgy.get_scope.as_deref().or(scope);
    let in_buy: Vec<bool> = lines.iter().map(|l| eligible(scope, l)).collect();
    let in_get: Vec<bool> = lines.iter().map(|l| eligible(get_scope, l)).collect();
    let units = |i: usize| u64::from(lines[i].quantity);
    let buy: u64 = (0..lines.len()).filter(|&i| in_buy[i]).map(units).sum();
    let either: u64 = (0..lines.len()).filter(|&i| in_buy[i] || in_get[i]).map(units).sum();
    // The get units in their order: amount, then line, then unit number (runs are in unit order).
    let mut get: Vec<(u64, usize, usize, u32)> = running
        .iter()
        .enumerate()
        .filter(|(i, _)| in_get[*i])
        .flat_map(|(i, runs)| runs.iter().enumerate().map(move |(j, r)| (r.amount, i, j, r.count)))
        .filter(|g| g.3 > 0)
        .collect();
    match bxgy.selection {
        Selection::Cheapest => get.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))),
        Selection::MostExpensive => get.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))),
    }
    let get_units: u64 = get.iter().map(|g| u64::from(g.3)).sum();
    let (x, y) = (u64::from(bxgy.buy), u64::from(bxgy.get.max(1)));
    let mut most = (get_units / y).min(either / (x + y));
    if let Some(max) = bxgy.max_applications {
        most = most.min(u64::from(max));
    }
    // The first `n` get units: how many of them are buy units too.
    let taken_from_buy = |n: u64| {
        let mut left = n;
        let mut from_buy = 0;
        for g in &get {
            if left == 0 {
                break;
            }
            let c = u64::from(g.3).min(left);
            if in_buy[g.1] {
                from_buy += c;
            }
            left -= c;
        }
        from_buy
    };
    let fits = |k: u64| buy - taken_from_buy(y * k) >= x * k;
    // `fits` holds for 0 and, once false, stays false: the largest k it holds for.
    let (mut low, mut high) = (0, most);
    while low < high {
        let mid = low + (high - low).div_ceil(2);
        if fits(mid) { low = mid } else { high = mid - 1 }
    }
    let mut left = y * low;
    let mut picked = Vec::new();
    for g in &get {
        if left == 0 {
            break;
        }
        let c = u64::from(g.3).min(left);
        picked.push((g.1, g.2, u32::try_from(c).unwrap_or(u32::MAX)));
        left -= c;
    }
    picked
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::cart::tests::line;
    use crate::domain::cart::{IdSet, Line};

    fn cart(lines: &[(u32, u64)]) -> Cart {
        Cart {
            lines: lines.iter().enumerate().map(|(i, &(q, p))| line(&(i + 1).to_string(), q, p)).collect(),
            shipping: None,
        }
    }

    fn pct(hundredths: u64) -> Percent {
        Percent::from_hundredths(hundredths).expect("a percentage")
    }

    /// Buy `buy`, get `get` free, the cheapest first.
    pub(crate) fn buy_get_free(buy: u32, get: u32) -> Kind {
        Kind::BuyXGetY(Arc::new(BuyXGetY {
            buy,
            get,
            get_percent: pct(10_000),
            get_scope: None,
            max_applications: None,
            selection: Selection::Cheapest,
        }))
    }

    fn terms(kind: Kind) -> Terms {
        Terms { kind, target: Target::Items, scope: None, min_quantity: None, cap: None }
    }

    fn per_line(taken: &Taken) -> Vec<u64> {
        taken.lines.iter().map(|runs| allocation::sum(runs)).collect()
    }

    fn runs(list: &[(u32, u64)]) -> Vec<Run> {
        list.iter().map(|&(c, a)| Run::new(c, a)).collect()
    }

    /// API.md §9's test vectors, to the cent.
    #[test]
    fn the_contract_vectors_come_out_to_the_cent() {
        // V1: 3×3.33, 1×0.01, 2×5.00 at 15 %.
        let v1 = cart(&[(3, 333), (1, 1), (2, 500)]);
        let taken = terms(Kind::Percentage(pct(1500))).take(&v1, &Running::of(&v1));
        assert_eq!(taken.merchandise(), 300);
        assert_eq!(per_line(&taken), [150, 0, 150]);
        assert_eq!(taken.lines, [runs(&[(3, 50)]), runs(&[(1, 0)]), runs(&[(2, 75)])]);

        // V2: fixed 10.00 across three lines of 10.00.
        let v2 = cart(&[(1, 1000), (1, 1000), (1, 1000)]);
        let taken = terms(Kind::Fixed { value: 1000, each: false }).take(&v2, &Running::of(&v2));
        assert_eq!(per_line(&taken), [334, 333, 333]);

        // V3: 2×19.99, 1×24.99, 4×4.50 at 12.5 % (10.37), capped at 5.00.
        let v3 = cart(&[(2, 1999), (1, 2499), (4, 450)]);
        let capped = Terms { cap: Some(500), ..terms(Kind::Percentage(pct(1250))) };
        let taken = capped.take(&v3, &Running::of(&v3));
        assert_eq!(terms(Kind::Percentage(pct(1250))).take(&v3, &Running::of(&v3)).merchandise(), 1037);
        assert_eq!(per_line(&taken), [241, 151, 108]);
        assert_eq!(taken.lines[0], runs(&[(1, 121), (1, 120)]));
        assert_eq!(taken.lines[2], runs(&[(4, 27)]));

        // V4: JPY (exponent 0) 1000, 1000, 1001 at 7 %.
        let v4 = cart(&[(1, 1000), (1, 1000), (1, 1001)]);
        let taken = terms(Kind::Percentage(pct(700))).take(&v4, &Running::of(&v4));
        assert_eq!(taken.merchandise(), 210);
        assert_eq!(per_line(&taken), [70, 70, 70]);

        // V5: buy 2 get 1 (cheapest, 100 %) on A 3×20.00, B 1×15.00, C 2×25.00, then 10 %.
        let v5 = cart(&[(3, 2000), (1, 1500), (2, 2500)]);
        let bxgy = terms(buy_get_free(2, 1));
        assert_eq!(bxgy.check(Some(&v5)), Ok(()));
        let mut running = Running::of(&v5);
        let first = bxgy.take(&v5, &running);
        assert_eq!(first.merchandise(), 3500, "B and A's first unit");
        assert_eq!(first.lines[0], runs(&[(1, 2000), (2, 0)]));
        running.lower(&first);
        let order = Terms { target: Target::Order, ..terms(Kind::Percentage(pct(1000))) };
        let second = order.take(&v5, &running);
        assert_eq!(second.merchandise(), 900);
        assert_eq!(per_line(&second), [400, 0, 500]);
        assert_eq!(second.lines[0], runs(&[(1, 0), (2, 200)]));
        let lines: Vec<Vec<Run>> = first.lines.iter().zip(&second.lines).map(|(a, b)| allocation::plus(a, b)).collect();
        assert_eq!(lines[0], runs(&[(1, 2000), (2, 200)]));
        assert_eq!(lines.iter().map(|r| allocation::sum(r)).collect::<Vec<_>>(), [2400, 1500, 500]);
        assert_eq!(first.merchandise() + second.merchandise(), 4400);
    }

    #[test]
    fn conditions_are_judged_on_the_cart_as_sent() {
        let shirts = Scope { include_categories: IdSet::new(["shirts"]), ..Scope::default() };
        let mut sent = cart(&[(2, 1000), (1, 500)]);
        sent.lines[0].category_ids = vec!["shirts".into()];
        let scoped = Terms { scope: Some(Arc::new(shirts.clone())), ..terms(Kind::Percentage(pct(2000))) };
        let (free, shipped) =
            (Cart { shipping: Some(0), ..sent.clone() }, Cart { shipping: Some(499), ..sent.clone() });
        let cases: Vec<(Terms, Option<&Cart>, Result<(), NotApplicable>)> = vec![
            (scoped.clone(), Some(&sent), Ok(())),
            (scoped.clone(), None, Err(NotApplicable::ItemsRequired)),
            (Terms { min_quantity: Some(3), ..scoped.clone() }, Some(&sent), Err(NotApplicable::MinQuantityNotMet)),
            (Terms { min_quantity: Some(2), ..scoped.clone() }, Some(&sent), Ok(())),
            (
                Terms {
                    scope: Some(Arc::new(Scope { include_categories: IdSet::new(["socks"]), ..shirts })),
                    ..scoped
                },
                Some(&sent),
                Err(NotApplicable::NoEligibleItems),
            ),
            // An order coupon without a scope needs no items.
            (Terms { target: Target::Order, ..terms(Kind::Percentage(pct(1000))) }, None, Ok(())),
            (terms(Kind::FreeShipping), Some(&sent), Err(NotApplicable::ItemsRequired)),
            (terms(Kind::FreeShipping), Some(&free), Err(NotApplicable::NoEligibleItems)),
            (terms(Kind::FreeShipping), Some(&shipped), Ok(())),
            (terms(buy_get_free(3, 1)), Some(&sent), Err(NotApplicable::MinQuantityNotMet)),
        ];
        for (terms, cart, expected) in cases {
            assert_eq!(terms.check(cart), expected, "{terms:?}");
        }
    }

    #[test]
    fn kinds_with_a_discount_per_unit() {
        let sent = cart(&[(2, 1000), (1, 300)]);
        let running = Running::of(&sent);
        // 5.00 off each unit, never below zero.
        let each = terms(Kind::Fixed { value: 500, each: true }).take(&sent, &running);
        assert_eq!(each.lines, [runs(&[(2, 500)]), runs(&[(1, 300)])]);
        // Each unit at 4.00: only what costs more comes down.
        let price = terms(Kind::FixedPrice(400)).take(&sent, &running);
        assert_eq!(price.lines, [runs(&[(2, 600)]), runs(&[(1, 0)])]);
        // Capped at 7.00: re-allocated with the per-unit amounts as weights.
        let capped = Terms { cap: Some(700), ..terms(Kind::FixedPrice(400)) }.take(&sent, &running);
        assert_eq!(capped.lines, [runs(&[(2, 350)]), runs(&[(1, 0)])]);
        // Shipping: free, or a percentage of it.
        let shipped = Cart { shipping: Some(499), ..sent };
        let free = terms(Kind::FreeShipping).take(&shipped, &Running::of(&shipped));
        assert_eq!((free.merchandise(), free.shipping), (0, 499));
        let half = Terms { target: Target::Shipping, ..terms(Kind::Percentage(pct(5000))) };
        assert_eq!(half.take(&shipped, &Running::of(&shipped)).shipping, 250);
    }

    #[test]
    fn buy_x_get_y_picks_by_price_then_line_then_unit() {
        let sent = cart(&[(2, 1000), (2, 3000), (2, 1000)]);
        let rule = |selection, max_applications, get_scope| {
            terms(Kind::BuyXGetY(Arc::new(BuyXGetY {
                buy: 1,
                get: 1,
                get_percent: pct(5000),
                get_scope,
                max_applications,
                selection,
            })))
        };
        let cheapest = rule(Selection::Cheapest, None, None).take(&sent, &Running::of(&sent));
        // Six units: three applications, the three cheapest given at half price.
        assert_eq!(cheapest.lines, [runs(&[(2, 500)]), runs(&[(2, 0)]), runs(&[(1, 500), (1, 0)])]);
        let dearest = rule(Selection::MostExpensive, Some(1), None).take(&sent, &Running::of(&sent));
        assert_eq!(dearest.lines, [runs(&[(2, 0)]), runs(&[(1, 1500), (1, 0)]), runs(&[(2, 0)])]);
        // Get only from line 3: buy units must remain outside what is given.
        let only_third = Scope { include_products: IdSet::new(["p-3"]), ..Scope::default() };
        let scoped = rule(Selection::Cheapest, None, Some(Arc::new(only_third)));
        let given = scoped.take(&sent, &Running::of(&sent));
        assert_eq!(given.lines, [runs(&[(2, 0)]), runs(&[(2, 0)]), runs(&[(2, 500)])]);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn arb_cart() -> impl Strategy<Value = Cart> {
            prop::collection::vec((1u32..6, 0u64..20_000, any::<bool>(), 0u8..3), 1..9).prop_map(|lines| Cart {
                lines: lines
                    .into_iter()
                    .enumerate()
                    .map(|(i, (quantity, unit_price, on_sale, category))| Line {
                        category_ids: vec![format!("c{category}").into()],
                        on_sale,
                        ..line(&i.to_string(), quantity, unit_price)
                    })
                    .collect(),
                shipping: Some(499),
            })
        }

        fn arb_kind() -> impl Strategy<Value = Kind> {
            prop_oneof![
                (1u64..=10_000).prop_map(|h| Kind::Percentage(pct(h))),
                (0u64..50_000, any::<bool>()).prop_map(|(value, each)| Kind::Fixed { value, each }),
                (0u64..20_000).prop_map(Kind::FixedPrice),
                (1u32..4, 1u32..3, 1u64..=10_000, any::<bool>(), prop::option::of(1u32..4)).prop_map(
                    |(buy, get, h, cheapest, max_applications)| Kind::BuyXGetY(Arc::new(BuyXGetY {
                        buy,
                        get,
                        get_percent: pct(h),
                        get_scope: None,
                        max_applications,
                        selection: if cheapest { Selection::Cheapest } else { Selection::MostExpensive },
                    }))
                ),
            ]
        }

        fn arb_terms() -> impl Strategy<Value = Terms> {
            (arb_kind(), prop::option::of(0u8..3), any::<bool>(), prop::option::of(0u64..30_000)).prop_map(
                |(kind, category, exclude_on_sale, cap)| Terms {
                    kind,
                    target: Target::Items,
                    scope: category.map(|c| {
                        Arc::new(Scope {
                            include_categories: IdSet::new([format!("c{c}")]),
                            exclude_on_sale,
                            ..Scope::default()
                        })
                    }),
                    min_quantity: None,
                    cap,
                },
            )
        }

        proptest! {
            /// The shares add up to the total, no unit goes below zero, ineligible lines get
            /// nothing, the cap holds, and the same input gives the same output.
            #[test]
            fn shares_add_up_and_nothing_goes_below_zero(cart in arb_cart(), terms in arb_terms()) {
                let running = Running::of(&cart);
                let taken = terms.take(&cart, &running);
                prop_assert_eq!(&taken, &terms.take(&cart, &running));
                prop_assert_eq!(taken.lines.len(), cart.lines.len());
                let base: u64 = cart.lines.iter().filter(|l| eligible(terms.scope.as_deref(), l)).map(Line::subtotal).sum();
                prop_assert!(taken.merchandise() <= base);
                if let Some(cap) = terms.cap {
                    prop_assert!(taken.merchandise() <= cap);
                }
                for ((line, off), runs) in cart.lines.iter().zip(&taken.lines).zip(&running.lines) {
                    prop_assert_eq!(off.iter().map(|r| r.count).sum::<u32>(), line.quantity);
                    prop_assert!(allocation::minus(runs, off).iter().all(|r| r.amount <= line.unit_price));
                    prop_assert!(allocation::zip_le(off, runs), "a unit's discount above its amount");
                    if !eligible(terms.scope.as_deref(), line) {
                        prop_assert_eq!(allocation::sum(off), 0);
                    }
                }
                let mut lowered = running;
                lowered.lower(&taken);
                let left: u64 = lowered.lines.iter().map(|r| allocation::sum(r)).sum();
                prop_assert_eq!(left + taken.merchandise(), cart.order_value());
            }

            /// Items without a scope give §3's discount for the same orderValue.
            #[test]
            fn items_without_scope_give_the_order_discount(cart in arb_cart(), h in 1u64..=10_000, cap in prop::option::of(0u64..30_000)) {
                let order_value = crate::domain::money::Cents::new(cart.order_value()).expect("in range");
                let rate = pct(h);
                let today = crate::domain::coupon::Discount::Percentage {
                    rate,
                    cap: cap.map(|c| crate::domain::money::Cents::new(c).expect("in range")),
                };
                let terms = Terms { kind: Kind::Percentage(rate), target: Target::Order, scope: None, min_quantity: None, cap };
                prop_assert_eq!(terms.take(&cart, &Running::of(&cart)).merchandise(), today.amount_for(order_value).get());
            }

            /// The total of an order code does not depend on the order of the lines.
            #[test]
            fn the_order_of_lines_does_not_change_the_total(cart in arb_cart(), terms in arb_terms(), rotate in 0usize..8) {
                prop_assume!(!matches!(terms.kind, Kind::BuyXGetY(_)));
                let mut turned = cart.clone();
                let k = rotate % turned.lines.len();
                turned.lines.rotate_left(k);
                let a = terms.take(&cart, &Running::of(&cart)).merchandise();
                let b = terms.take(&turned, &Running::of(&turned)).merchandise();
                prop_assert_eq!(a, b);
            }
        }
    }
}
