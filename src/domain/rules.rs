//! The validation rules of API.md §3, in their documented order, and the discount maths.

use chrono::{DateTime, Utc};

use crate::domain::coupon::{Coupon, CouponStatus, Discount, FULL_PERCENT};
use crate::domain::money::Cents;

/// Why a coupon does not apply. The order of the variants is the order of the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    CouponNotFound,
    CouponInactive,
    CouponExpired,
    CouponNotYetValid,
    CouponNotForUser,
    MinOrderValueNotMet,
    UsageLimitReached,
    UserUsageLimitReached,
    OrderAlreadyRedeemed,
}

impl Reason {
    /// Every reason, in the order the rules check them.
    pub const ALL: [Reason; 9] = [
        Reason::CouponNotFound,
        Reason::CouponInactive,
        Reason::CouponExpired,
        Reason::CouponNotYetValid,
        Reason::CouponNotForUser,
        Reason::MinOrderValueNotMet,
        Reason::UsageLimitReached,
        Reason::UserUsageLimitReached,
        Reason::OrderAlreadyRedeemed,
    ];

    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::CouponNotFound => "COUPON_NOT_FOUND",
            Reason::CouponInactive => "COUPON_INACTIVE",
            Reason::CouponExpired => "COUPON_EXPIRED",
            Reason::CouponNotYetValid => "COUPON_NOT_YET_VALID",
            Reason::CouponNotForUser => "COUPON_NOT_FOR_USER",
            Reason::MinOrderValueNotMet => "MIN_ORDER_VALUE_NOT_MET",
            Reason::UsageLimitReached => "USAGE_LIMIT_REACHED",
            Reason::UserUsageLimitReached => "USER_USAGE_LIMIT_REACHED",
            Reason::OrderAlreadyRedeemed => "ORDER_ALREADY_REDEEMED",
        }
    }

    /// Position in [`Reason::ALL`], for per-reason metric handles.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A validation request after input checks: every field well-formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt<'a> {
    pub user_id: &'a str,
    pub order_value: Cents,
    pub order_id: Option<&'a str>,
}

/// The live usage of one coupon, as far as the rules need to read it.
///
/// Implemented by the cache's lock-free counters; the rules never change it.
pub trait Usage {
    /// Live (unreleased) redemptions of the coupon.
    fn total(&self) -> u32;
    /// Live redemptions of the coupon by `user_id`.
    fn by_user(&self, user_id: &str) -> u32;
    /// Whether `order_id` holds a live redemption of the coupon.
    fn has_order(&self, order_id: &str) -> bool;
}

/// What the rules decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Valid { discount: Cents, final_amount: Cents },
    Rejected(Reason),
}

/// Applies the rules of API.md §3 to a found coupon; `now` is the caller's clock.
pub fn validate(coupon: &Coupon, usage: &impl Usage, attempt: &Attempt<'_>, now: DateTime<Utc>) -> Decision {
    match first_failure(coupon, usage, attempt, now) {
        Some(reason) => Decision::Rejected(reason),
        None => {
            let discount = discount_for(&coupon.discount, attempt.order_value);
            Decision::Valid { discount, final_amount: attempt.order_value.saturating_sub(discount) }
        }
    }
}

fn first_failure(coupon: &Coupon, usage: &impl Usage, attempt: &Attempt<'_>, now: DateTime<Utc>) -> Option<Reason> {
    match coupon.status {
        CouponStatus::Inactive => return Some(Reason::CouponInactive),
        CouponStatus::Expired => return Some(Reason::CouponExpired),
        CouponStatus::Active => {}
    }
    if coupon.valid_until.is_some_and(|until| now >= until) {
        return Some(Reason::CouponExpired);
    }
    if coupon.valid_from.is_some_and(|from| now < from) {
        return Some(Reason::CouponNotYetValid);
    }
    if coupon.user_id.as_deref().is_some_and(|owner| owner != attempt.user_id) {
        return Some(Reason::CouponNotForUser);
    }
    if attempt.order_value < coupon.min_order_value {
        return Some(Reason::MinOrderValueNotMet);
    }
    if coupon.usage_limit.is_some_and(|limit| usage.total() >= limit) {
        return Some(Reason::UsageLimitReached);
    }
    if coupon.per_user_limit.is_some_and(|limit| usage.by_user(attempt.user_id) >= limit) {
        return Some(Reason::UserUsageLimitReached);
    }
    if attempt.order_id.is_some_and(|order| usage.has_order(order)) {
        return Some(Reason::OrderAlreadyRedeemed);
    }
    None
}

/// The discount a coupon gives on an order: percentage rounded half-up to the cent then
/// capped, fixed never above the order.
pub fn discount_for(discount: &Discount, order_value: Cents) -> Cents {
    match *discount {
        Discount::Percentage { hundredths, cap } => {
            let scaled = u128::from(order_value.get()) * u128::from(hundredths);
            let full = u128::from(FULL_PERCENT);
            let rounded = (scaled + full / 2) / full;
            // At most 100% of an amount that is itself within bounds, so this always fits.
            let amount = Cents::new(u64::try_from(rounded).unwrap_or(u64::MAX)).unwrap_or(order_value);
            match cap {
                Some(cap) => amount.min(cap),
                None => amount,
            }
        }
        Discount::Fixed(value) => value.min(order_value),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use chrono::TimeZone;

    use super::*;
    use crate::domain::coupon::CouponKind;

    #[derive(Default)]
    struct FakeUsage {
        total: u32,
        by_user: HashMap<&'static str, u32>,
        orders: HashSet<&'static str>,
    }

    impl Usage for FakeUsage {
        fn total(&self) -> u32 {
            self.total
        }
        fn by_user(&self, user_id: &str) -> u32 {
            self.by_user.get(user_id).copied().unwrap_or(0)
        }
        fn has_order(&self, order_id: &str) -> bool {
            self.orders.contains(order_id)
        }
    }

    fn at(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, hour, 0, 0).unwrap()
    }

    fn cents(n: u64) -> Cents {
        Cents::new(n).unwrap()
    }

    fn base() -> Coupon {
        Coupon {
            id: 1,
            code: "SAVE10".into(),
            kind: CouponKind::TimeSpecific,
            status: CouponStatus::Active,
            discount: Discount::Percentage { hundredths: 1000, cap: None },
            min_order_value: Cents::ZERO,
            usage_limit: None,
            per_user_limit: None,
            user_id: None,
            valid_from: None,
            valid_until: None,
            version: 1,
        }
    }

    fn attempt(order_value: u64) -> Attempt<'static> {
        Attempt { user_id: "user_0000001", order_value: cents(order_value), order_id: Some("ord-1") }
    }

    /// One row of the rules table: a coupon change, a usage, an attempt, the clock, the answer.
    struct Case {
        name: &'static str,
        coupon: Coupon,
        usage: FakeUsage,
        attempt: Attempt<'static>,
        now: DateTime<Utc>,
        expected: Option<Reason>,
    }

    fn case(name: &'static str, edit: impl FnOnce(&mut Coupon)) -> Case {
        let mut coupon = base();
        edit(&mut coupon);
        Case { name, coupon, usage: FakeUsage::default(), attempt: attempt(100_000), now: at(12), expected: None }
    }

    impl Case {
        fn usage(mut self, usage: FakeUsage) -> Case {
            self.usage = usage;
            self
        }
        fn attempt(mut self, attempt: Attempt<'static>) -> Case {
            self.attempt = attempt;
            self
        }
        fn expect(mut self, reason: Reason) -> Case {
            self.expected = Some(reason);
            self
        }
    }

    fn used(total: u32, by_user: u32, order: Option<&'static str>) -> FakeUsage {
        FakeUsage { total, by_user: HashMap::from([("user_0000001", by_user)]), orders: order.into_iter().collect() }
    }

    #[test]
    fn every_reason_and_boundary() {
        use Reason::*;
        let cases = vec![
            case("plain active coupon", |_| {}),
            case("inactive", |c| c.status = CouponStatus::Inactive).expect(CouponInactive),
            case("status expired, window open", |c| c.status = CouponStatus::Expired).expect(CouponExpired),
            case("inactive wins over expired window", |c| {
                c.status = CouponStatus::Inactive;
                c.valid_until = Some(at(1));
            })
            .expect(CouponInactive),
            case("exactly at valid_until", |c| c.valid_until = Some(at(12))).expect(CouponExpired),
            case("one hour before valid_until", |c| c.valid_until = Some(at(13))),
            case("past valid_until", |c| c.valid_until = Some(at(11))).expect(CouponExpired),
            case("exactly at valid_from", |c| c.valid_from = Some(at(12))),
            case("before valid_from", |c| c.valid_from = Some(at(13))).expect(CouponNotYetValid),
            case("expired wins over not yet valid", |c| {
                c.valid_from = Some(at(13));
                c.status = CouponStatus::Expired;
            })
            .expect(CouponExpired),
            case("for this user", |c| c.user_id = Some("user_0000001".into())),
            case("for another user", |c| c.user_id = Some("user_0000002".into())).expect(CouponNotForUser),
            case("user ids are case-sensitive", |c| c.user_id = Some("USER_0000001".into())).expect(CouponNotForUser),
            case("not for user wins over minimum", |c| {
                c.user_id = Some("user_0000002".into());
                c.min_order_value = cents(1_000_000);
            })
            .expect(CouponNotForUser),
            case("order equal to minimum", |c| c.min_order_value = cents(100_000)),
            case("order one cent below minimum", |c| c.min_order_value = cents(100_001)).expect(MinOrderValueNotMet),
            case("limit minus one used", |c| c.usage_limit = Some(5)).usage(used(4, 0, None)),
            case("limit used", |c| c.usage_limit = Some(5)).usage(used(5, 0, None)).expect(UsageLimitReached),
            case("limit zero", |c| c.usage_limit = Some(0)).expect(UsageLimitReached),
            case("no limit, many uses", |_| {}).usage(used(1_000_000, 1_000, None)),
            case("minimum wins over limit", |c| {
                c.usage_limit = Some(0);
                c.min_order_value = cents(200_000);
            })
            .expect(MinOrderValueNotMet),
            case("per-user limit minus one", |c| c.per_user_limit = Some(2)).usage(used(1, 1, None)),
            case("per-user limit used", |c| c.per_user_limit = Some(2))
                .usage(used(2, 2, None))
                .expect(UserUsageLimitReached),
            case("total limit wins over per-user", |c| {
                c.usage_limit = Some(2);
                c.per_user_limit = Some(2);
            })
            .usage(used(2, 2, None))
            .expect(UsageLimitReached),
            case("another user's uses don't count", |c| c.per_user_limit = Some(1)).usage(FakeUsage {
                total: 3,
                by_user: HashMap::from([("user_0000002", 3)]),
                ..FakeUsage::default()
            }),
            case("order already redeemed", |_| {}).usage(used(1, 0, Some("ord-1"))).expect(OrderAlreadyRedeemed),
            case("another order redeemed", |_| {}).usage(used(1, 0, Some("ord-2"))),
            case("no order id given", |_| {})
                .usage(used(1, 0, Some("ord-1")))
                .attempt(Attempt { order_id: None, ..attempt(100_000) }),
            case("per-user limit wins over order", |c| c.per_user_limit = Some(1))
                .usage(used(1, 1, Some("ord-1")))
                .expect(UserUsageLimitReached),
        ];
        for case in cases {
            let decision = validate(&case.coupon, &case.usage, &case.attempt, case.now);
            let got = match decision {
                Decision::Valid { .. } => None,
                Decision::Rejected(reason) => Some(reason),
            };
            assert_eq!(got, case.expected, "case: {}", case.name);
        }
    }

    #[test]
    fn discount_maths() {
        let pct = |hundredths, cap: Option<u64>| Discount::Percentage { hundredths, cap: cap.map(cents) };
        for (discount, order, expected) in [
            (pct(1000, None), 100_000, 10_000),       // 10% of 1000.00
            (pct(1000, None), 0, 0),                  // nothing off nothing
            (pct(1000, None), 5, 1),                  // 0.5 cent rounds up
            (pct(1000, None), 4, 0),                  // 0.4 cent rounds down
            (pct(1000, None), 15, 2),                 // 1.5 cents rounds up
            (pct(1000, None), 14, 1),                 // 1.4 cents rounds down
            (pct(1250, None), 1_999, 250),            // 12.5% of 19.99 = 2.49875
            (pct(3333, None), 100, 33),               // 33.33% of 1.00
            (pct(5000, None), 1, 1),                  // half a cent rounds up
            (pct(10_000, None), 12_345, 12_345),      // 100%
            (pct(1, None), 100_000, 10),              // 0.01% of 1000.00
            (pct(1, None), 4_999, 0),                 // 0.4999 cents
            (pct(1, None), 5_000, 1),                 // 0.5 cents
            (pct(2000, Some(5_000)), 100_000, 5_000), // 200.00 capped at 50.00
            (pct(2000, Some(5_000)), 25_000, 5_000),  // exactly at the cap
            (pct(2000, Some(5_000)), 20_000, 4_000),  // under the cap
            (pct(2000, Some(0)), 20_000, 0),          // a zero cap
            (pct(10_000, None), crate::domain::money::MAX_CENTS, crate::domain::money::MAX_CENTS),
            (Discount::Fixed(cents(1_000)), 100_000, 1_000),
            (Discount::Fixed(cents(1_000)), 1_000, 1_000), // equal to the order
            (Discount::Fixed(cents(1_000)), 999, 999),     // never above the order
            (Discount::Fixed(cents(1_000)), 0, 0),
            (Discount::Fixed(Cents::ZERO), 500, 0),
        ] {
            assert_eq!(discount_for(&discount, cents(order)), cents(expected), "{discount:?} on {order}");
        }
    }

    #[test]
    fn valid_decision_carries_discount_and_final_amount() {
        let mut coupon = base();
        coupon.discount = Discount::Fixed(cents(2_500));
        let decision = validate(&coupon, &FakeUsage::default(), &attempt(10_000), at(12));
        assert_eq!(decision, Decision::Valid { discount: cents(2_500), final_amount: cents(7_500) });
    }

    #[test]
    fn reasons_are_spelled_as_the_api_says_and_indexed_in_order() {
        for (idx, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), idx);
            assert!(reason.as_str().chars().all(|c| c.is_ascii_uppercase() || c == '_'));
        }
    }
}
