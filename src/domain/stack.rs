//! Several codes on one order (API.md §10, steps 2–5): which of the codes that passed on their
//! own are taken together, the order they apply in on running amounts, the combined cap, and
//! which have no effect. Pure integers in minor units; judging each code alone (step 1) is the
//! rules' business, and so is what `all` or `partial` make of the outcome (step 6).

use crate::domain::allocation;
use crate::domain::cart::{Cart, Running};
use crate::domain::cart_discount::{Class, Kind, Taken, Terms};

/// A set of classes: what a code combines with (`combinesWith`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Classes(u8);

impl Classes {
    pub const ALL: Classes = Classes(0b111);
    pub const NONE: Classes = Classes(0);

    pub fn of(classes: impl IntoIterator<Item = Class>) -> Classes {
        Classes(classes.into_iter().fold(0, |bits, class| bits | Classes::bit(class)))
    }

    pub fn contains(self, class: Class) -> bool {
        self.0 & Classes::bit(class) != 0
    }

    /// Its classes, in class order.
    pub fn iter(self) -> impl Iterator<Item = Class> {
        [Class::Item, Class::Order, Class::Shipping].into_iter().filter(move |class| self.contains(*class))
    }

    /// Parses the API's and the column's spelling: a list of `item`, `order`, `shipping`.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Classes, String> {
        names.into_iter().try_fold(Classes::NONE, |classes, name| match Class::parse(name) {
            Some(class) => Ok(Classes(classes.0 | Classes::bit(class))),
            None => Err(format!("{name:?} is not a class: item, order or shipping")),
        })
    }

    fn bit(class: Class) -> u8 {
        match class {
            Class::Item => 1,
            Class::Order => 2,
            Class::Shipping => 4,
        }
    }
}

/// A code that passed on its own (§10 step 1), with what stacking needs of its coupon.
#[derive(Debug, Clone, Copy)]
pub struct Passed<'a> {
    /// Its place in the request's `codes`.
    pub position: usize,
    pub terms: &'a Terms,
    pub priority: i32,
    pub combines_with: Classes,
}

impl Passed<'_> {
    /// Shopify's two-way rule: each one's `combinesWith` holds the other's class.
    fn combines(&self, other: &Passed<'_>) -> bool {
        self.combines_with.contains(other.terms.class()) && other.combines_with.contains(self.terms.class())
    }

    /// Where it comes in the order of application: class (within `item`, buy-X-get-Y, then
    /// fixed price, then the rest), priority (higher first), request position.
    fn application_order(&self) -> (u8, i64, usize) {
        let class = match (self.terms.class(), &self.terms.kind) {
            (Class::Item, Kind::BuyXGetY(_)) => 0,
            (Class::Item, Kind::FixedPrice(_)) => 1,
            (Class::Item, _) => 2,
            (Class::Order, _) => 3,
            (Class::Shipping, _) => 4,
        };
        (class, -i64::from(self.priority), self.position)
    }
}

/// How the codes taken together are chosen (`select`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// In (priority, request position) order, each one that combines with those taken.
    Priority,
    /// The combinable set with the largest effect after the cap.
    Best,
}

spelled!(Select { Priority => "priority", Best => "best" });
spelled!(Mode { All => "all", Partial => "partial" });

/// What a refusal of one code does to the others (`mode`, §10 step 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Any code refused: none applies.
    All,
    /// The codes accepted apply.
    Partial,
}

/// The combined cap's terms (§10 step 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CombinedCap {
    /// The order's value, minor units.
    pub order_value: u64,
    /// `maxTotalDiscount`, minor units, when sent.
    pub max_total: Option<u64>,
    /// `stacking.max_total_percent`.
    pub max_total_percent: u32,
}

impl CombinedCap {
    /// C = min(`maxTotalDiscount`, ⌊orderValue × max_total_percent / 100⌋).
    pub fn amount(&self) -> u64 {
        let by_percent = u128::from(self.order_value) * u128::from(self.max_total_percent) / 100;
        let by_percent = u64::try_from(by_percent).unwrap_or(u64::MAX);
        self.max_total.map_or(by_percent, |max| max.min(by_percent))
    }
}

/// What a stack of codes comes to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stack {
    /// The codes applied, by request position, in the order they applied, with what each
    /// took after the cap.
    pub applied: Vec<(usize, Taken)>,
    /// Passed on their own but not taken with the others: `NOT_COMBINABLE`.
    pub not_combinable: Vec<usize>,
    /// Taken, with no effect left: `NO_EFFECT` (no use, no budget).
    pub no_effect: Vec<usize>,
}

impl Stack {
    /// Off the merchandise, every code together.
    pub fn merchandise(&self) -> u64 {
        self.applied.iter().map(|(_, taken)| taken.merchandise()).sum()
    }

    /// Off shipping, every code together.
    pub fn shipping(&self) -> u64 {
        self.applied.iter().map(|(_, taken)| taken.shipping).sum()
    }

    /// Every code's effect together.
    pub fn effect(&self) -> u64 {
        self.merchandise() + self.shipping()
    }
}

/// Stacks the codes that passed on their own (§10 steps 2–5).
pub fn stack(cart: &Cart, passed: &[Passed<'_>], select: Select, cap: &CombinedCap) -> Stack {
    let chosen: Vec<usize> = match select {
        Select::Priority => by_priority(passed),
        Select::Best => best(cart, passed, cap),
    };
    let mut stack = apply(cart, passed, &chosen, cap);
    stack.not_combinable = (0..passed.len()).filter(|i| !chosen.contains(i)).map(|i| passed[i].position).collect();
    stack.not_combinable.sort_unstable();
    stack
}

/// Indices into `passed` taken in (priority, position) order, each combining with those before.
fn by_priority(passed: &[Passed<'_>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..passed.len()).collect();
    order.sort_by_key(|&i| (-i64::from(passed[i].priority), passed[i].position));
    let mut taken: Vec<usize> = Vec::with_capacity(passed.len());
    for i in order {
        if taken.iter().all(|&t| passed[t].combines(&passed[i])) {
            taken.push(i);
        }
    }
    taken
}

/// The pairwise-combinable set of `passed` with the largest effect after the cap; ties: more
/// codes, then the smaller sorted list of request positions. The sets are walked in the order
/// of application, so that each set's amounts extend those of the set without its last code
/// (one take a set); after the cap a set's effect is min(Σ merchandise, C) + Σ shipping, as
/// the cut takes off exactly the excess.
fn best(cart: &Cart, passed: &[Passed<'_>], cap: &CombinedCap) -> Vec<usize> {
    assert!(passed.len() < 32, "at most 31 codes are stacked");
    let mut order: Vec<usize> = (0..passed.len()).collect();
    order.sort_by_key(|&i| passed[i].application_order());
    let mut search = Search { cart, passed, order, cap: cap.amount(), members: Vec::new(), best: None };
    search.walk(0, &Running::of(cart), 0, 0);
    search.best.map(|best| best.members).unwrap_or_default()
}

/// The best set so far.
struct Choice {
    effect: u64,
    positions: Vec<usize>,
    members: Vec<usize>,
}

/// The walk over the combinable sets for [`best`].
struct Search<'c, 'p> {
    cart: &'c Cart,
    passed: &'c [Passed<'p>],
    /// Indices into `passed`, in the order of application.
    order: Vec<usize>,
    cap: u64,
    members: Vec<usize>,
    best: Option<Choice>,
}

impl Search<'_, '_> {
    /// Extends the current set with each later code that combines with all of it.
    fn walk(&mut self, from: usize, running: &Running, merchandise: u64, shipping: u64) {
        for k in from..self.order.len() {
            let i = self.order[k];
            if !self.members.iter().all(|&m| self.passed[m].combines(&self.passed[i])) {
                continue;
            }
            let taken = self.passed[i].terms.take(self.cart, running);
            let (merchandise, shipping) = (merchandise + taken.merchandise(), shipping + taken.shipping);
            self.members.push(i);
            self.consider(merchandise.min(self.cap) + shipping);
            if k + 1 < self.order.len() {
                let mut next = running.clone();
                next.lower(&taken);
                self.walk(k + 1, &next, merchandise, shipping);
            }
            self.members.pop();
        }
    }

    fn consider(&mut self, effect: u64) {
        let mut positions: Vec<usize> = self.members.iter().map(|&i| self.passed[i].position).collect();
        positions.sort_unstable();
        let better = self.best.as_ref().is_none_or(|best| {
            (effect, positions.len())
                .cmp(&(best.effect, best.positions.len()))
                .then_with(|| best.positions.cmp(&positions))
                .is_gt()
        });
        if better {
            self.best = Some(Choice { effect, positions, members: self.members.clone() });
        }
    }
}

/// Applies `chosen` (indices into `passed`) in the order of application on running amounts,
/// cuts them to the combined cap from the last applied backwards, and sets aside those left
/// with no effect.
fn apply(cart: &Cart, passed: &[Passed<'_>], chosen: &[usize], cap: &CombinedCap) -> Stack {
    let mut order = chosen.to_vec();
    order.sort_by_key(|&i| passed[i].application_order());
    let mut running = Running::of(cart);
    let mut applied: Vec<(usize, Taken)> = Vec::with_capacity(order.len());
    for i in order {
        let taken = passed[i].terms.take(cart, &running);
        running.lower(&taken);
        applied.push((passed[i].position, taken));
    }
    let total: u64 = applied.iter().map(|(_, taken)| taken.merchandise()).sum();
    let mut excess = total.saturating_sub(cap.amount());
    for (_, taken) in applied.iter_mut().rev() {
        if excess == 0 {
            break;
        }
        let own = taken.merchandise();
        let cut = own.min(excess);
        if cut > 0 {
            // Re-split over its own line and unit amounts (§9 step 4).
            taken.lines = allocation::alloc_lines(own - cut, &taken.lines);
            excess -= cut;
        }
    }
    let (applied, no_effect): (Vec<_>, Vec<_>) = applied.into_iter().partition(|(_, taken)| taken.effect() > 0);
    Stack {
        applied,
        not_combinable: Vec::new(),
        no_effect: no_effect.into_iter().map(|(position, _)| position).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::domain::allocation::Run;
    use crate::domain::cart::tests::line;
    use crate::domain::cart::{IdSet, Scope};
    use crate::domain::cart_discount::Target;
    use crate::domain::cart_discount::tests::buy_get_free;
    use crate::domain::money::Percent;

    fn pct(hundredths: u64) -> Percent {
        Percent::from_hundredths(hundredths).expect("a percentage")
    }

    fn terms(kind: Kind, target: Target) -> Terms {
        Terms { kind, target, scope: None, min_quantity: None, cap: None }
    }

    fn passed<'a>(position: usize, terms: &'a Terms, priority: i32, combines_with: &[Class]) -> Passed<'a> {
        Passed { position, terms, priority, combines_with: Classes::of(combines_with.iter().copied()) }
    }

    fn uncapped(cart: &Cart) -> CombinedCap {
        CombinedCap { order_value: cart.order_value(), max_total: None, max_total_percent: 100 }
    }

    fn per_line(taken: &Taken) -> Vec<u64> {
        taken.lines.iter().map(|runs| allocation::sum(runs)).collect()
    }

    const ALL: [Class; 3] = [Class::Item, Class::Order, Class::Shipping];

    /// API.md §10's worked example: SHIRTS20 on the shirts line, WELCOME10 on the order,
    /// FREESHIP; 3×20.00 shirts, 1×15.00 socks, shipping 4.99.
    #[test]
    fn the_contract_example_comes_out_to_the_cent_whatever_the_order_of_the_codes() {
        let mut cart = Cart { lines: vec![line("1", 3, 2000), line("2", 1, 1500)], shipping: Some(499) };
        cart.lines[0].category_ids = vec!["shirts".into()];
        let shirts = Scope { include_categories: IdSet::new(["shirts"]), ..Scope::default() };
        let shirts20 = Terms { scope: Some(Arc::new(shirts)), ..terms(Kind::Percentage(pct(2000)), Target::Items) };
        let welcome10 = terms(Kind::Percentage(pct(1000)), Target::Order);
        let freeship = terms(Kind::FreeShipping, Target::Shipping);
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let codes = [&shirts20, &welcome10, &freeship];
            let given: Vec<Passed<'_>> =
                order.iter().enumerate().map(|(pos, &c)| passed(pos, codes[c], 0, &ALL)).collect();
            let stack = stack(&cart, &given, Select::Priority, &uncapped(&cart));
            // Applied by class: items, order, shipping.
            let by_code: Vec<usize> = stack.applied.iter().map(|(pos, _)| order[*pos]).collect();
            assert_eq!(by_code, [0, 1, 2], "order {order:?}");
            let [(_, shirts), (_, welcome), (_, ship)] = &stack.applied[..] else { panic!("three applied") };
            // 20 % of 60.00; then 10 % of the 63.00 left: 4.80 on the shirts, 1.50 on the socks.
            assert_eq!(per_line(shirts), [1200, 0]);
            assert_eq!(per_line(welcome), [480, 150]);
            assert_eq!(ship.shipping, 499);
            // Each shirt: 4.00 + 1.60 = 5.60.
            assert_eq!(allocation::plus(&shirts.lines[0], &welcome.lines[0]), [Run::new(3, 560)]);
            assert_eq!((stack.merchandise(), stack.shipping()), (1830, 499));
            assert!(stack.not_combinable.is_empty() && stack.no_effect.is_empty());
        }
    }

    #[test]
    fn priority_takes_the_higher_first_and_combining_needs_both_ways() {
        let cart = Cart { lines: vec![line("1", 1, 10_000)], shipping: None };
        let ten = terms(Kind::Percentage(pct(1000)), Target::Order);
        let twenty = terms(Kind::Percentage(pct(2000)), Target::Items);
        let cases: Vec<(Vec<Passed<'_>>, Vec<usize>, Vec<usize>)> = vec![
            // Neither combines: the higher priority wins, though it came second.
            (vec![passed(0, &ten, 0, &[]), passed(1, &twenty, 1, &[])], vec![1], vec![0]),
            // Equal priority: the first in the request.
            (vec![passed(0, &ten, 0, &[]), passed(1, &twenty, 0, &[])], vec![0], vec![1]),
            // One way only (the order code takes items, the item code no orders): not combinable.
            (vec![passed(0, &ten, 0, &[Class::Item]), passed(1, &twenty, 0, &[Class::Item])], vec![0], vec![1]),
            // Both ways: both, the item code first.
            (vec![passed(0, &ten, 0, &[Class::Item]), passed(1, &twenty, 0, &[Class::Order])], vec![1, 0], vec![]),
        ];
        for (given, applied, refused) in cases {
            let stack = stack(&cart, &given, Select::Priority, &uncapped(&cart));
            assert_eq!(stack.applied.iter().map(|(p, _)| *p).collect::<Vec<_>>(), applied);
            assert_eq!(stack.not_combinable, refused);
        }
    }

    #[test]
    fn the_combined_cap_cuts_from_the_last_applied_back_and_a_code_cut_to_nothing_has_no_effect() {
        // One line 4×25.00. Item 20 %: 20.00 (5.00 a unit); then order 30 % of 80.00: 24.00.
        let cart = Cart { lines: vec![line("1", 4, 2500)], shipping: None };
        let item = terms(Kind::Percentage(pct(2000)), Target::Items);
        let order = terms(Kind::Percentage(pct(3000)), Target::Order);
        let given = [passed(0, &order, 0, &ALL), passed(1, &item, 0, &ALL)];
        let cap = |max_total, max_total_percent| CombinedCap { order_value: 10_000, max_total, max_total_percent };
        let amounts = |stack: &Stack| stack.applied.iter().map(|(p, t)| (*p, t.merchandise())).collect::<Vec<_>>();

        let full = stack(&cart, &given, Select::Priority, &cap(None, 100));
        assert_eq!(amounts(&full), [(1, 2000), (0, 2400)]);
        // 35.00 sent: 44.00 − 35.00 = 9.00 off the order code, the last applied: 15.00, 3.75 a unit.
        let cut = stack(&cart, &given, Select::Priority, &cap(Some(3500), 100));
        assert_eq!(amounts(&cut), [(1, 2000), (0, 1500)]);
        assert_eq!(cut.applied[1].1.lines[0], [Run::new(4, 375)]);
        // 40 % of the order (40.00) is below 50.00 sent: the smaller holds.
        assert_eq!(stack(&cart, &given, Select::Priority, &cap(Some(5000), 40)).merchandise(), 4000);
        // 10.00: the order code is cut to nothing (NO_EFFECT), the item code to 10.00 (2.50 a unit).
        let deep = stack(&cart, &given, Select::Priority, &cap(Some(1000), 100));
        assert_eq!(amounts(&deep), [(1, 1000)]);
        assert_eq!(deep.applied[0].1.lines[0], [Run::new(4, 250)]);
        assert_eq!(deep.no_effect, [0]);
        // A cap of 0 leaves nothing; shipping is never cut.
        let shipped = Cart { shipping: Some(499), ..cart };
        let free = terms(Kind::FreeShipping, Target::Shipping);
        let with_free = [passed(0, &order, 0, &ALL), passed(1, &free, 0, &ALL)];
        let zero = stack(&shipped, &with_free, Select::Priority, &cap(Some(0), 100));
        assert_eq!((zero.merchandise(), zero.shipping(), zero.no_effect), (0, 499, vec![0]));
    }

    #[test]
    fn best_takes_the_largest_effect_and_breaks_ties_by_more_codes_then_earlier_positions() {
        // 100.00 and 5.00 shipping. A: 10 % order, priority 5, combines with nothing. B: 20 %
        // items, combines with orders and shipping. C: free shipping, combines with items and
        // orders. Priority: A alone (10.00). Best: B and C (20.00 + 5.00).
        let cart = Cart { lines: vec![line("1", 1, 10_000)], shipping: Some(500) };
        let a = terms(Kind::Percentage(pct(1000)), Target::Order);
        let b = terms(Kind::Percentage(pct(2000)), Target::Items);
        let c = terms(Kind::FreeShipping, Target::Shipping);
        let given = [
            passed(0, &a, 5, &[]),
            passed(1, &b, 0, &[Class::Order, Class::Shipping]),
            passed(2, &c, 0, &[Class::Item, Class::Order]),
        ];
        let by_priority = stack(&cart, &given, Select::Priority, &uncapped(&cart));
        assert_eq!((by_priority.effect(), by_priority.not_combinable), (1000, vec![1, 2]));
        let best = stack(&cart, &given, Select::Best, &uncapped(&cart));
        assert_eq!((best.effect(), best.not_combinable), (2500, vec![0]));

        // Equal effects: more codes win (two 5.00 codes that combine over one 10.00 code).
        let five = terms(Kind::Fixed { value: 500, each: false }, Target::Order);
        let ten = terms(Kind::Fixed { value: 1000, each: false }, Target::Order);
        let given =
            [passed(0, &ten, 0, &[]), passed(1, &five, 0, &[Class::Order]), passed(2, &five, 0, &[Class::Order])];
        let best = stack(&cart, &given, Select::Best, &uncapped(&cart));
        assert_eq!((best.effect(), best.not_combinable), (1000, vec![0]));
        // Equal effects and sizes: the earlier positions.
        let given = [passed(0, &five, 0, &[]), passed(1, &ten, 0, &[]), passed(2, &ten, 0, &[])];
        let best = stack(&cart, &given, Select::Best, &uncapped(&cart));
        assert_eq!(best.applied.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [1]);
        // The effect compared is the one after the cap: capped at 10.00, B and C (10.00 + 5.00)
        // still beat A (10.00).
        let capped = CombinedCap { max_total: Some(1000), ..uncapped(&cart) };
        let given = [
            passed(0, &a, 5, &[]),
            passed(1, &b, 0, &[Class::Order, Class::Shipping]),
            passed(2, &c, 0, &[Class::Item, Class::Order]),
        ];
        assert_eq!(stack(&cart, &given, Select::Best, &capped).effect(), 1500);
    }

    #[test]
    fn buy_x_get_y_comes_first_in_the_item_class_whatever_its_priority() {
        // V5 of API.md §9 through the stack: the order code, with the higher priority and
        // first in the request, still applies after buy-X-get-Y.
        let cart = Cart { lines: vec![line("A", 3, 2000), line("B", 1, 1500), line("C", 2, 2500)], shipping: None };
        let bxgy = terms(buy_get_free(2, 1), Target::Items);
        let ten = terms(Kind::Percentage(pct(1000)), Target::Order);
        let given = [passed(0, &ten, 9, &ALL), passed(1, &bxgy, 0, &ALL)];
        let stack = stack(&cart, &given, Select::Priority, &uncapped(&cart));
        assert_eq!(stack.applied.iter().map(|(p, t)| (*p, t.merchandise())).collect::<Vec<_>>(), [(1, 3500), (0, 900)]);
        assert_eq!(stack.merchandise(), 4400);
    }

    fn any_code() -> impl Strategy<Value = Terms> {
        prop_oneof![
            (1u64..=10_000, prop::bool::ANY).prop_map(|(h, items)| terms(
                Kind::Percentage(pct(h)),
                if items { Target::Items } else { Target::Order }
            )),
            (1u64..=20_000, prop::bool::ANY).prop_map(|(v, each)| terms(Kind::Fixed { value: v, each }, Target::Items)),
            (0u64..=5_000).prop_map(|v| terms(Kind::FixedPrice(v), Target::Items)),
            Just(terms(Kind::FreeShipping, Target::Shipping)),
        ]
    }

    fn any_cart() -> impl Strategy<Value = Cart> {
        (prop::collection::vec((1u32..=5, 0u64..=10_000), 1..6), prop::option::of(0u64..=1_000)).prop_map(
            |(lines, shipping)| Cart {
                lines: lines.iter().enumerate().map(|(i, &(q, p))| line(&i.to_string(), q, p)).collect(),
                shipping,
            },
        )
    }

    proptest! {
        #[test]
        fn stacks_hold_their_promises(
            cart in any_cart(),
            codes in prop::collection::vec((any_code(), 0u8..8), 1..5),
            rotate in 0usize..5,
            max_total in prop::option::of(0u64..=20_000),
            max_total_percent in 0u32..=100,
        ) {
            let codes: Vec<(Terms, Classes)> = codes.into_iter().map(|(t, bits)| (t, Classes(bits))).collect();
            // Distinct priorities, so that the request order decides nothing.
            let given: Vec<Passed<'_>> = codes
                .iter()
                .enumerate()
                .map(|(i, (t, with))| Passed { position: i, terms: t, priority: i as i32, combines_with: *with })
                .collect();
            let cap = CombinedCap { order_value: cart.order_value(), max_total, max_total_percent };
            let by_priority = stack(&cart, &given, Select::Priority, &cap);
            let best = stack(&cart, &given, Select::Best, &cap);
            prop_assert!(by_priority.merchandise() <= cap.amount() && best.merchandise() <= cap.amount());
            prop_assert!(best.effect() >= by_priority.effect(), "best is never worse than priority");
            // The walk finds what trying every combinable set, capped as applied, finds.
            let n = given.len();
            let brute = (1u32..(1 << n))
                .map(|mask| (0..n).filter(|i| mask & (1 << i) != 0).collect::<Vec<_>>())
                .filter(|m| m.iter().all(|&a| m.iter().all(|&b| a == b || given[a].combines(&given[b]))))
                .map(|m| apply(&cart, &given, &m, &cap).effect())
                .max()
                .unwrap_or(0);
            prop_assert_eq!(best.effect(), brute);
            prop_assert!(by_priority.merchandise() <= cart.order_value());
            // Any permutation of the request takes the same codes, to the same cent.
            let permuted: Vec<Passed<'_>> =
                given.iter().map(|p| Passed { position: (p.position + rotate) % n, ..*p }).collect();
            let again = stack(&cart, &permuted, Select::Priority, &cap);
            let unpermute = |s: &Stack| {
                let mut out: Vec<(usize, Taken)> =
                    s.applied.iter().map(|(p, t)| ((*p + n - rotate % n) % n, t.clone())).collect();
                out.sort_by_key(|(p, _)| *p);
                out
            };
            let mut first: Vec<(usize, Taken)> = by_priority.applied;
            first.sort_by_key(|(p, _)| *p);
            prop_assert_eq!(first, unpermute(&again));
        }
    }
}
