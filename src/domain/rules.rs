//! The validation rules of API.md §3 and §4, in their documented order.

use chrono::{DateTime, Utc};

use crate::domain::campaign::Campaign;
use crate::domain::cart::{CartRequest, Running};
use crate::domain::cart_discount::{Kind as CartKind, NotApplicable, Taken, Target, Terms};
use crate::domain::coupon::{Coupon, Discount, Status};
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
    CurrencyNotSupported,
    ItemsRequired,
    NoEligibleItems,
    MinQuantityNotMet,
    MinOrderValueNotMet,
    UsageLimitReached,
    UserUsageLimitReached,
    CampaignLimitReached,
    CampaignUserLimitReached,
    CampaignBudgetExhausted,
    OrderAlreadyRedeemed,
}

impl Reason {
    /// Every reason, in the order the rules check them.
    pub const ALL: [Reason; 16] = [
        Reason::CouponNotFound,
        Reason::CouponInactive,
        Reason::CouponExpired,
        Reason::CouponNotYetValid,
        Reason::CouponNotForUser,
        Reason::CurrencyNotSupported,
        Reason::ItemsRequired,
        Reason::NoEligibleItems,
        Reason::MinQuantityNotMet,
        Reason::MinOrderValueNotMet,
        Reason::UsageLimitReached,
        Reason::UserUsageLimitReached,
        Reason::CampaignLimitReached,
        Reason::CampaignUserLimitReached,
        Reason::CampaignBudgetExhausted,
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
            Reason::CurrencyNotSupported => "CURRENCY_NOT_SUPPORTED",
            Reason::ItemsRequired => "ITEMS_REQUIRED",
            Reason::NoEligibleItems => "NO_ELIGIBLE_ITEMS",
            Reason::MinQuantityNotMet => "MIN_QUANTITY_NOT_MET",
            Reason::MinOrderValueNotMet => "MIN_ORDER_VALUE_NOT_MET",
            Reason::UsageLimitReached => "USAGE_LIMIT_REACHED",
            Reason::UserUsageLimitReached => "USER_USAGE_LIMIT_REACHED",
            Reason::CampaignLimitReached => "CAMPAIGN_LIMIT_REACHED",
            Reason::CampaignUserLimitReached => "CAMPAIGN_USER_LIMIT_REACHED",
            Reason::CampaignBudgetExhausted => "CAMPAIGN_BUDGET_EXHAUSTED",
            Reason::OrderAlreadyRedeemed => "ORDER_ALREADY_REDEEMED",
        }
    }

    /// Parses the API's spelling.
    pub fn parse(text: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// Position in [`Reason::ALL`], for per-reason metric handles.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The reason's code in the validation log (`validation_reasons`): fixed once given, so
    /// that a reason added in the middle of the check order never renumbers stored rows.
    pub fn log_code(self) -> i16 {
        match self {
            Reason::CouponNotFound => 1,
            Reason::CouponInactive => 2,
            Reason::CouponExpired => 3,
            Reason::CouponNotYetValid => 4,
            Reason::CouponNotForUser => 5,
            Reason::MinOrderValueNotMet => 6,
            Reason::UsageLimitReached => 7,
            Reason::UserUsageLimitReached => 8,
            Reason::CampaignLimitReached => 9,
            Reason::CampaignUserLimitReached => 10,
            Reason::CampaignBudgetExhausted => 11,
            Reason::OrderAlreadyRedeemed => 12,
            Reason::CurrencyNotSupported => 13,
            Reason::ItemsRequired => 14,
            Reason::NoEligibleItems => 15,
            Reason::MinQuantityNotMet => 16,
        }
    }
}

/// A request after input checks: every field well-formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt<'a> {
    pub user_id: &'a str,
    /// In minor units of the request's currency (cents unless a cart names another).
    pub order_value: Cents,
    pub order_id: Option<&'a str>,
    /// §9's fields, when the request used them.
    pub cart: Option<&'a CartRequest>,
}

/// What is being used: a coupon, its campaign, and, for a bulk code, the code's own terms.
#[derive(Debug, Clone, Copy)]
pub struct Offer<'a> {
    pub coupon: &'a Coupon,
    pub campaign: Option<&'a Campaign>,
    pub code: Option<CodeTerms>,
}

/// The terms of one bulk code, beyond its batch's rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeTerms {
    /// Live uses the code allows.
    pub uses_limit: u32,
    /// The code was handed to a user other than the caller.
    pub assigned_elsewhere: bool,
}

/// The live usage an attempt is judged against, as far as the rules read it. An
/// implementation is bound to the attempt's user and order; the rules never change it.
pub trait Usage {
    /// Live uses of the bulk code (asked only for a code).
    fn code_uses(&self) -> u32;
    /// Live redemptions and holds of the coupon.
    fn total(&self) -> u32;
    /// Those of the caller.
    fn by_user(&self) -> u32;
    /// Live redemptions and holds of the whole campaign that took a campaign use.
    fn campaign_total(&self) -> u32;
    /// Those of the caller.
    fn campaign_by_user(&self) -> u32;
    /// The sum of their discounts.
    fn campaign_spent(&self) -> Cents;
    /// Whether the attempt's order already holds a redemption of the coupon.
    fn has_order(&self) -> bool;
}

/// What the rules decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Valid { discount: Cents, final_amount: Cents },
    Rejected(Reason),
}

/// Applies the rules to an offer; `now` is the caller's clock.
pub fn validate(offer: &Offer<'_>, usage: &impl Usage, attempt: &Attempt<'_>, now: DateTime<Utc>) -> Decision {
    decide(offer, usage, attempt, now).0
}

/// The decision, and with a cart's items, what the coupon takes from each line and unit.
pub fn decide(
    offer: &Offer<'_>,
    usage: &impl Usage,
    attempt: &Attempt<'_>,
    now: DateTime<Utc>,
) -> (Decision, Option<Taken>) {
    let (discount, taken) = match attempt.cart {
        None => (offer.coupon.discount.amount_for(attempt.order_value), None),
        Some(cart) => {
            let terms = cart_terms(offer.coupon, cart.currency.decimals());
            match (cart.has_items, terms.check(cart.has_items.then_some(&cart.cart))) {
                (_, Err(_)) => (Cents::ZERO, None),
                (true, Ok(())) => {
                    let taken = terms.take(&cart.cart, &Running::of(&cart.cart));
                    (Cents::new(taken.merchandise()).unwrap_or(attempt.order_value), Some(taken))
                }
                (false, Ok(())) => (order_discount(&terms, attempt.order_value), None),
            }
        }
    };
    match first_failure(offer, usage, attempt, discount, now) {
        Some(reason) => (Decision::Rejected(reason), None),
        None => (Decision::Valid { discount, final_amount: attempt.order_value.saturating_sub(discount) }, taken),
    }
}

/// A coupon's terms on a cart whose amounts have `decimals` decimals. Today's coupons are
/// order coupons over every discountable line; their amounts are hundredths of their currency.
pub fn cart_terms(coupon: &Coupon, decimals: u8) -> Terms {
    let (kind, cap) = match coupon.discount {
        Discount::Percentage { rate, cap } => (CartKind::Percentage(rate), cap),
        Discount::Fixed(value) => (CartKind::Fixed { value: minor(value, decimals), each: false }, None),
    };
    Terms { kind, target: Target::Order, scope: None, min_quantity: None, cap: cap.map(|c| minor(c, decimals)) }
}

/// An amount kept in hundredths of its currency's major unit, in minor units of `decimals`.
fn minor(amount: Cents, decimals: u8) -> u64 {
    match decimals {
        0 => amount.get() / 100,
        3 => amount.get() * 10,
        _ => amount.get(),
    }
}

/// An order coupon's discount on an order without items.
fn order_discount(terms: &Terms, order_value: Cents) -> Cents {
    let value = order_value.get();
    let total = match terms.kind {
        CartKind::Percentage(rate) => rate.of_minor(value),
        CartKind::Fixed { value: fixed, .. } => fixed.min(value),
        _ => 0,
    };
    Cents::new(terms.cap.map_or(total, |cap| total.min(cap))).unwrap_or(order_value)
}

/// §9's conditions, in their order: the currency, then the cart.
fn cart_failure(offer: &Offer<'_>, cart: &CartRequest) -> Option<Reason> {
    let coupon = offer.coupon;
    let amounts_free = matches!(coupon.discount, Discount::Percentage { cap: None, .. })
        && coupon.min_order_value == Cents::ZERO
        && offer.campaign.is_none_or(|c| c.budget.is_none());
    if cart.currency != cart.default_currency && !amounts_free {
        return Some(Reason::CurrencyNotSupported);
    }
    match cart_terms(coupon, cart.currency.decimals()).check(cart.has_items.then_some(&cart.cart)) {
        Ok(()) => None,
        Err(NotApplicable::ItemsRequired) => Some(Reason::ItemsRequired),
        Err(NotApplicable::NoEligibleItems) => Some(Reason::NoEligibleItems),
        Err(NotApplicable::MinQuantityNotMet) => Some(Reason::MinQuantityNotMet),
    }
}

/// Whether a use with this discount counts against its campaign: a discount of 0 never takes
/// a campaign use or budget (API.md §4).
pub(crate) fn takes_campaign_use(discount: Cents) -> bool {
    discount > Cents::ZERO
}

fn first_failure(
    offer: &Offer<'_>,
    usage: &impl Usage,
    attempt: &Attempt<'_>,
    discount: Cents,
    now: DateTime<Utc>,
) -> Option<Reason> {
    let (coupon, campaign) = (offer.coupon, offer.campaign);
    let statuses = || std::iter::once(coupon.status).chain(campaign.map(|c| c.status));
    if statuses().any(|s| s == Status::Inactive) {
        return Some(Reason::CouponInactive);
    }
    if statuses().any(|s| s == Status::Expired) {
        return Some(Reason::CouponExpired);
    }
    let untils = std::iter::once(coupon.valid_until).chain(campaign.map(|c| c.valid_until)).flatten();
    if untils.into_iter().any(|until| now >= until) {
        return Some(Reason::CouponExpired);
    }
    let froms = std::iter::once(coupon.valid_from).chain(campaign.map(|c| c.valid_from)).flatten();
    if froms.into_iter().any(|from| now < from) {
        return Some(Reason::CouponNotYetValid);
    }
    let assigned_elsewhere = offer.code.is_some_and(|code| code.assigned_elsewhere);
    if assigned_elsewhere || coupon.user_id.as_deref().is_some_and(|owner| owner != attempt.user_id) {
        return Some(Reason::CouponNotForUser);
    }
    if let Some(cart) = attempt.cart
        && let Some(reason) = cart_failure(offer, cart)
    {
        return Some(reason);
    }
    let decimals = attempt.cart.map_or(2, |c| c.currency.decimals());
    if attempt.order_value.get() < minor(coupon.min_order_value, decimals) {
        return Some(Reason::MinOrderValueNotMet);
    }
    let code_used_up = offer.code.is_some_and(|code| usage.code_uses() >= code.uses_limit);
    if code_used_up || coupon.usage_limit.is_some_and(|limit| usage.total() >= limit) {
        return Some(Reason::UsageLimitReached);
    }
    if coupon.per_user_limit.is_some_and(|limit| usage.by_user() >= limit) {
        return Some(Reason::UserUsageLimitReached);
    }
    if let Some(campaign) = campaign
        && takes_campaign_use(discount)
    {
        if campaign.usage_limit.is_some_and(|limit| usage.campaign_total() >= limit) {
            return Some(Reason::CampaignLimitReached);
        }
        if campaign.per_user_limit.is_some_and(|limit| usage.campaign_by_user() >= limit) {
            return Some(Reason::CampaignUserLimitReached);
        }
        let spent = usage.campaign_spent().get().saturating_add(discount.get());
        if campaign.budget.is_some_and(|budget| spent > budget.get()) {
            return Some(Reason::CampaignBudgetExhausted);
        }
    }
    if attempt.order_id.is_some() && usage.has_order() {
        return Some(Reason::OrderAlreadyRedeemed);
    }
    None
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::domain::coupon::{CouponKind, Discount};
    use crate::domain::money::Percent;

    #[derive(Default, Clone, Copy)]
    struct FakeUsage {
        code: u32,
        total: u32,
        by_user: u32,
        campaign_total: u32,
        campaign_by_user: u32,
        campaign_spent: u64,
        order: bool,
    }

    impl Usage for FakeUsage {
        fn code_uses(&self) -> u32 {
            self.code
        }
        fn total(&self) -> u32 {
            self.total
        }
        fn by_user(&self) -> u32 {
            self.by_user
        }
        fn campaign_total(&self) -> u32 {
            self.campaign_total
        }
        fn campaign_by_user(&self) -> u32 {
            self.campaign_by_user
        }
        fn campaign_spent(&self) -> Cents {
            Cents::new(self.campaign_spent).unwrap()
        }
        fn has_order(&self) -> bool {
            self.order
        }
    }

    fn at(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, hour, 0, 0).unwrap()
    }

    fn cents(n: u64) -> Cents {
        Cents::new(n).unwrap()
    }

    fn base() -> Coupon {
        let rate = Percent::from_hundredths(1000).unwrap();
        Coupon::new(1, "SAVE10", CouponKind::TimeSpecific, Discount::Percentage { rate, cap: None })
    }

    fn campaign() -> Campaign {
        Campaign::new(7, "Spring")
    }

    /// One row of the rules table: a coupon, a campaign, code terms, a usage, an attempt, the
    /// clock, the answer.
    struct Case {
        name: &'static str,
        coupon: Coupon,
        campaign: Option<Campaign>,
        code: Option<CodeTerms>,
        usage: FakeUsage,
        attempt: Attempt<'static>,
        expected: Option<Reason>,
    }

    fn case(name: &'static str, edit: impl FnOnce(&mut Coupon)) -> Case {
        let mut coupon = base();
        edit(&mut coupon);
        Case {
            name,
            coupon,
            campaign: None,
            code: None,
            usage: FakeUsage::default(),
            attempt: Attempt {
                user_id: "user_0000001",
                order_value: cents(100_000),
                order_id: Some("ord-1"),
                cart: None,
            },
            expected: None,
        }
    }

    impl Case {
        fn usage(mut self, usage: FakeUsage) -> Case {
            self.usage = usage;
            self
        }
        fn campaign(mut self, edit: impl FnOnce(&mut Campaign)) -> Case {
            let mut campaign = campaign();
            edit(&mut campaign);
            self.campaign = Some(campaign);
            self
        }
        fn code(mut self, uses_limit: u32, assigned_elsewhere: bool) -> Case {
            self.code = Some(CodeTerms { uses_limit, assigned_elsewhere });
            self
        }
        fn order_value(mut self, cents_value: u64) -> Case {
            self.attempt.order_value = cents(cents_value);
            self
        }
        fn no_order(mut self) -> Case {
            self.attempt.order_id = None;
            self
        }
        fn expect(mut self, reason: Reason) -> Case {
            self.expected = Some(reason);
            self
        }
    }

    fn used(total: u32, by_user: u32) -> FakeUsage {
        FakeUsage { total, by_user, ..FakeUsage::default() }
    }

    #[test]
    fn every_reason_and_boundary() {
        use Reason::*;
        let cases = vec![
            case("plain active coupon", |_| {}),
            case("inactive", |c| c.status = Status::Inactive).expect(CouponInactive),
            case("status expired, window open", |c| c.status = Status::Expired).expect(CouponExpired),
            case("inactive wins over expired window", |c| {
                c.status = Status::Inactive;
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
                c.status = Status::Expired;
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
            case("limit minus one used", |c| c.usage_limit = Some(5)).usage(used(4, 0)),
            case("limit used", |c| c.usage_limit = Some(5)).usage(used(5, 0)).expect(UsageLimitReached),
            case("limit zero", |c| c.usage_limit = Some(0)).expect(UsageLimitReached),
            case("no limit, many uses", |_| {}).usage(used(1_000_000, 1_000)),
            case("minimum wins over limit", |c| {
                c.usage_limit = Some(0);
                c.min_order_value = cents(200_000);
            })
            .expect(MinOrderValueNotMet),
            case("per-user limit minus one", |c| c.per_user_limit = Some(2)).usage(used(1, 1)),
            case("per-user limit used", |c| c.per_user_limit = Some(2)).usage(used(2, 2)).expect(UserUsageLimitReached),
            case("total limit wins over per-user", |c| {
                c.usage_limit = Some(2);
                c.per_user_limit = Some(2);
            })
            .usage(used(2, 2))
            .expect(UsageLimitReached),
            case("another user's uses don't count", |c| c.per_user_limit = Some(1)).usage(used(3, 0)),
            case("order already redeemed", |_| {})
                .usage(FakeUsage { order: true, ..FakeUsage::default() })
                .expect(OrderAlreadyRedeemed),
            case("no order id given", |_| {}).usage(FakeUsage { order: true, ..FakeUsage::default() }).no_order(),
            case("per-user limit wins over order", |c| c.per_user_limit = Some(1))
                .usage(FakeUsage { total: 1, by_user: 1, order: true, ..FakeUsage::default() })
                .expect(UserUsageLimitReached),
            // Bulk codes.
            case("unused code", |_| {}).code(1, false),
            case("used-up code", |_| {})
                .code(1, false)
                .usage(FakeUsage { code: 1, ..FakeUsage::default() })
                .expect(UsageLimitReached),
            case("code with uses left", |_| {}).code(3, false).usage(FakeUsage { code: 2, ..FakeUsage::default() }),
            case("code handed to someone else", |_| {}).code(1, true).expect(CouponNotForUser),
            case("assignment wins over minimum", |c| c.min_order_value = cents(1_000_000))
                .code(1, true)
                .expect(CouponNotForUser),
            // Campaigns.
            case("active campaign", |_| {}).campaign(|_| {}),
            case("inactive campaign", |_| {}).campaign(|k| k.status = Status::Inactive).expect(CouponInactive),
            case("expired campaign", |_| {}).campaign(|k| k.status = Status::Expired).expect(CouponExpired),
            case("campaign window over", |_| {}).campaign(|k| k.valid_until = Some(at(12))).expect(CouponExpired),
            case("campaign not started", |_| {}).campaign(|k| k.valid_from = Some(at(13))).expect(CouponNotYetValid),
            case("inactive coupon wins over expired campaign", |c| c.status = Status::Inactive)
                .campaign(|k| k.status = Status::Expired)
                .expect(CouponInactive),
            case("inactive campaign wins over expired coupon", |c| c.status = Status::Expired)
                .campaign(|k| k.status = Status::Inactive)
                .expect(CouponInactive),
            case("campaign cap minus one", |_| {})
                .campaign(|k| k.usage_limit = Some(3))
                .usage(FakeUsage { campaign_total: 2, ..FakeUsage::default() }),
            case("campaign cap reached", |_| {})
                .campaign(|k| k.usage_limit = Some(3))
                .usage(FakeUsage { campaign_total: 3, ..FakeUsage::default() })
                .expect(CampaignLimitReached),
            case("user limit wins over campaign cap", |c| c.per_user_limit = Some(1))
                .campaign(|k| k.usage_limit = Some(0))
                .usage(used(1, 1))
                .expect(UserUsageLimitReached),
            case("campaign per-user reached", |_| {})
                .campaign(|k| k.per_user_limit = Some(1))
                .usage(FakeUsage { campaign_by_user: 1, ..FakeUsage::default() })
                .expect(CampaignUserLimitReached),
            case("campaign cap wins over campaign per-user", |_| {})
                .campaign(|k| {
                    k.usage_limit = Some(1);
                    k.per_user_limit = Some(1);
                })
                .usage(FakeUsage { campaign_total: 1, campaign_by_user: 1, ..FakeUsage::default() })
                .expect(CampaignLimitReached),
            // 10% of 1000.00 is 100.00.
            case("budget exactly enough", |_| {})
                .campaign(|k| k.budget = Some(cents(50_000)))
                .usage(FakeUsage { campaign_spent: 40_000, ..FakeUsage::default() }),
            case("budget one cent short", |_| {})
                .campaign(|k| k.budget = Some(cents(50_000)))
                .usage(FakeUsage { campaign_spent: 40_001, ..FakeUsage::default() })
                .expect(CampaignBudgetExhausted),
            case("zero budget", |_| {}).campaign(|k| k.budget = Some(Cents::ZERO)).expect(CampaignBudgetExhausted),
            case("a zero discount takes no campaign use or budget", |_| {})
                .campaign(|k| {
                    k.usage_limit = Some(0);
                    k.budget = Some(Cents::ZERO);
                })
                .order_value(0),
            case("per-user campaign limit wins over budget", |_| {})
                .campaign(|k| {
                    k.per_user_limit = Some(1);
                    k.budget = Some(Cents::ZERO);
                })
                .usage(FakeUsage { campaign_by_user: 1, ..FakeUsage::default() })
                .expect(CampaignUserLimitReached),
            case("budget wins over order", |_| {})
                .campaign(|k| k.budget = Some(Cents::ZERO))
                .usage(FakeUsage { order: true, ..FakeUsage::default() })
                .expect(CampaignBudgetExhausted),
        ];
        for case in cases {
            let offer = Offer { coupon: &case.coupon, campaign: case.campaign.as_ref(), code: case.code };
            let decision = validate(&offer, &case.usage, &case.attempt, at(12));
            let got = match decision {
                Decision::Valid { .. } => None,
                Decision::Rejected(reason) => Some(reason),
            };
            assert_eq!(got, case.expected, "case: {}", case.name);
        }
    }

    #[test]
    fn valid_decision_carries_discount_and_final_amount() {
        let mut coupon = base();
        coupon.discount = Discount::Fixed(cents(2_500));
        let offer = Offer { coupon: &coupon, campaign: None, code: None };
        let attempt = Attempt { user_id: "u", order_value: cents(10_000), order_id: None, cart: None };
        let decision = validate(&offer, &FakeUsage::default(), &attempt, at(12));
        assert_eq!(decision, Decision::Valid { discount: cents(2_500), final_amount: cents(7_500) });
    }

    #[test]
    fn reasons_are_spelled_as_the_api_says_and_indexed_in_order() {
        let mut log_codes: Vec<i16> = Reason::ALL.iter().map(|r| r.log_code()).collect();
        log_codes.sort_unstable();
        assert_eq!(log_codes, (1..=16).collect::<Vec<i16>>(), "one log code each, none reused");
        for (idx, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), idx);
            assert!(reason.as_str().chars().all(|c| c.is_ascii_uppercase() || c == '_'));
            assert_eq!(Reason::parse(reason.as_str()), Some(*reason));
        }
    }
}
