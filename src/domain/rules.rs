//! The validation rules of API.md §3 and §4, in their documented order.

use chrono::{DateTime, Utc};

use crate::domain::campaign::Campaign;
use crate::domain::cart::{CartRequest, Running};
use crate::domain::cart_discount::{Class, Kind as CartKind, NotApplicable, Taken, Terms};
use crate::domain::coupon::{Coupon, Discount, MinOrderBasis, Status};
use crate::domain::currency::Currency;
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
    /// §10: passed alone, not taken with the other codes of its order.
    NotCombinable,
    /// §10: taken with the others, with nothing left to take off (no use, no budget).
    NoEffect,
}

impl Reason {
    /// Every reason, in the order the rules check them, then those of stacking (§10).
    pub const ALL: [Reason; 18] = [
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
        Reason::NotCombinable,
        Reason::NoEffect,
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
            Reason::NotCombinable => "NOT_COMBINABLE",
            Reason::NoEffect => "NO_EFFECT",
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
            Reason::NotCombinable => 17,
            Reason::NoEffect => 18,
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
    /// The currency of a request without a cart, and of coupons that name none.
    pub default_currency: Currency,
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

/// The decision, and with a cart, what the coupon takes from each line and unit and from
/// shipping. A valid decision's `discount` is the merchandise's; the code's effect (what
/// counts against a campaign's budget) adds shipping's ([`Taken::effect`]).
pub fn decide(
    offer: &Offer<'_>,
    usage: &impl Usage,
    attempt: &Attempt<'_>,
    now: DateTime<Utc>,
) -> (Decision, Option<Taken>) {
    let coupon = offer.coupon;
    // A request without a cart is judged as one with an empty cart in the default currency
    // when the coupon needs more than today's rules.
    let plain;
    let cart = match attempt.cart {
        None if coupon.currency.is_some() || coupon.needs_cart() => {
            plain = CartRequest::plain(attempt.default_currency);
            Some(&plain)
        }
        cart => cart,
    };
    let priced = cart.map(|cart| {
        let terms = priced(offer, cart, attempt.default_currency).and_then(|(terms, min_order)| {
            cart_failure(coupon, &terms, min_order, attempt, cart).map_or(Ok(terms), Err)
        });
        (cart, terms)
    });
    let (discount, taken) = match &priced {
        None => (coupon.discount.amount_for(attempt.order_value), None),
        Some((cart, Ok(terms))) if cart.has_items || terms.class() == Class::Shipping => {
            let taken = terms.take(&cart.cart, &Running::of(&cart.cart));
            (Cents::new(taken.merchandise()).unwrap_or(attempt.order_value), Some(taken))
        }
        Some((_, Ok(terms))) => (order_discount(terms, attempt.order_value), None),
        Some((_, Err(_))) => (Cents::ZERO, None),
    };
    let effect = Cents::new(taken.as_ref().map_or(discount.get(), Taken::effect)).unwrap_or(discount);
    let cart_reason = priced.as_ref().map(|(_, terms)| terms.as_ref().err().copied());
    match first_failure(offer, usage, attempt, effect, now, cart_reason) {
        Some(reason) => (Decision::Rejected(reason), None),
        None => (Decision::Valid { discount, final_amount: attempt.order_value.saturating_sub(discount) }, taken),
    }
}

/// A code's terms in the request's currency, as [`decide`] priced them, for stacking it with
/// other codes (§10). `cart` is the request's: a plain one in the default currency when it
/// sent none of §9's fields.
pub fn stack_terms(offer: &Offer<'_>, cart: &CartRequest, default_currency: Currency) -> Result<Terms, Reason> {
    priced(offer, cart, default_currency).map(|(terms, _)| terms)
}

/// A coupon's terms on a cart, with its amounts in the request's currency (§9): its own
/// amounts in its own currency, those of its `currencyOptions` in another, and a percentage
/// without amounts in any. A campaign's budget is kept in the default currency: a coupon
/// under one takes no other.
/// The minimum order, in the same minor units, comes with them.
fn priced(offer: &Offer<'_>, cart: &CartRequest, default_currency: Currency) -> Result<(Terms, u64), Reason> {
    let coupon = offer.coupon;
    let currency = cart.currency;
    let decimals = currency.decimals();
    let budgeted = offer.campaign.is_some_and(|c| c.budget.is_some());
    if budgeted && currency != default_currency {
        return Err(Reason::CurrencyNotSupported);
    }
    let own = (coupon.currency.unwrap_or(default_currency) == currency).then(|| Amounts::own(coupon, decimals));
    let amounts = own
        .or_else(|| {
            let options = coupon.currency_options.as_deref().unwrap_or_default();
            options.iter().find(|o| o.currency == currency).map(|o| Amounts {
                value: o.value.unwrap_or(0),
                cap: o.cap,
                min_order_value: o.min_order_value,
            })
        })
        .or_else(|| {
            let amounts_free = matches!(coupon.discount, Discount::Percentage { cap: None, .. })
                && coupon.min_order_value == Cents::ZERO;
            amounts_free.then(|| Amounts::own(coupon, decimals))
        })
        .ok_or(Reason::CurrencyNotSupported)?;
    Ok((cart_terms(coupon, amounts), amounts.min_order_value))
}

/// A coupon's amounts in minor units of one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Amounts {
    /// The fixed kinds' value.
    value: u64,
    cap: Option<u64>,
    min_order_value: u64,
}

impl Amounts {
    /// The coupon's own amounts (hundredths of its currency) in minor units of `decimals`.
    fn own(coupon: &Coupon, decimals: u8) -> Amounts {
        let (_, value, cap) = coupon.discount.parts();
        Amounts {
            value: minor(value, decimals),
            cap: cap.map(|c| minor(c.get(), decimals)),
            min_order_value: minor(coupon.min_order_value.get(), decimals),
        }
    }
}

/// A coupon's terms on a cart, at these amounts.
fn cart_terms(coupon: &Coupon, amounts: Amounts) -> Terms {
    let kind = match &coupon.discount {
        Discount::Percentage { rate, .. } => CartKind::Percentage(*rate),
        Discount::Fixed(_) => CartKind::Fixed { value: amounts.value, each: false },
        Discount::FixedEach { .. } => CartKind::Fixed { value: amounts.value, each: true },
        Discount::FixedPrice { .. } => CartKind::FixedPrice(amounts.value),
        Discount::BuyXGetY { offer, .. } => CartKind::BuyXGetY(offer.clone()),
        Discount::FreeShipping { .. } => CartKind::FreeShipping,
    };
    Terms {
        kind,
        target: coupon.target,
        scope: coupon.scope.clone(),
        min_quantity: coupon.min_quantity,
        cap: amounts.cap,
    }
}

/// An amount kept in hundredths of its currency's major unit, in minor units of `decimals`.
fn minor(hundredths: u64, decimals: u8) -> u64 {
    match decimals {
        0 => hundredths / 100,
        3 => hundredths * 10,
        _ => hundredths,
    }
}

/// An order coupon's discount on an order without items.
fn order_discount(terms: &Terms, order_value: Cents) -> Cents {
    let value = order_value.get();
    let total = match terms.kind {
        CartKind::Percentage(rate) => rate.of_minor(value),
        CartKind::Fixed { value: fixed, each: false } => fixed.min(value),
        _ => 0,
    };
    Cents::new(terms.cap.map_or(total, |cap| total.min(cap))).unwrap_or(order_value)
}

/// §9's conditions on the cart as sent, in their order, the minimum order included.
fn cart_failure(
    coupon: &Coupon,
    terms: &Terms,
    min_order_value: u64,
    attempt: &Attempt<'_>,
    cart: &CartRequest,
) -> Option<Reason> {
    if !cart.has_items && coupon.needs_cart() && terms.class() != Class::Shipping {
        return Some(Reason::ItemsRequired);
    }
    match terms.check(Some(&cart.cart)) {
        Ok(()) => {}
        Err(NotApplicable::ItemsRequired) => return Some(Reason::ItemsRequired),
        Err(NotApplicable::NoEligibleItems) => return Some(Reason::NoEligibleItems),
        Err(NotApplicable::MinQuantityNotMet) => return Some(Reason::MinQuantityNotMet),
    }
    let basis = match coupon.min_order_basis {
        MinOrderBasis::Order => attempt.order_value.get(),
        MinOrderBasis::Eligible => terms.eligible_subtotal(&cart.cart),
    };
    (basis < min_order_value).then_some(Reason::MinOrderValueNotMet)
}

/// Whether a use with this discount counts against its campaign: a discount of 0 never takes
/// a campaign use or budget (API.md §4).
pub(crate) fn takes_campaign_use(discount: Cents) -> bool {
    discount > Cents::ZERO
}

/// The first rule `offer` fails. `cart_reason`, when the attempt was judged as a cart, is
/// §9's verdict (the minimum order included), checked in its place: after the owner, before
/// the limits. `discount` is the code's effect.
fn first_failure(
    offer: &Offer<'_>,
    usage: &impl Usage,
    attempt: &Attempt<'_>,
    discount: Cents,
    now: DateTime<Utc>,
    cart_reason: Option<Option<Reason>>,
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
    match cart_reason {
        Some(Some(reason)) => return Some(reason),
        Some(None) => {}
        None if attempt.order_value < coupon.min_order_value => return Some(Reason::MinOrderValueNotMet),
        None => {}
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
                default_currency: eur(),
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
        fn cart(mut self, cart: &'static CartRequest) -> Case {
            self.attempt.cart = Some(cart);
            self.attempt.order_value = cents(cart.cart.order_value());
            self
        }
        fn expect(mut self, reason: Reason) -> Case {
            self.expected = Some(reason);
            self
        }
    }

    fn eur() -> Currency {
        Currency::parse("EUR").expect("a currency")
    }

    /// A cart in `currency`: shirts 2 × 20.00 (on sale), socks 1 × 5.00, shipping 4.99.
    fn shirts_and_socks(currency: &str) -> &'static CartRequest {
        use crate::domain::cart::tests::line;
        use crate::domain::cart::{Cart, Line};
        let cart = Cart {
            lines: vec![
                Line { category_ids: vec!["shirts".into()], on_sale: true, ..line("1", 2, 2_000) },
                Line { category_ids: vec!["socks".into()], ..line("2", 1, 500) },
            ],
            shipping: Some(499),
        };
        let currency = Currency::parse(currency).expect("a currency");
        Box::leak(Box::new(CartRequest { currency, cart, has_items: true }))
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
    fn cart_reasons_in_their_place() {
        use std::sync::Arc;

        use crate::domain::cart::{IdSet, Scope};
        use crate::domain::coupon::{CurrencyOption, MinOrderBasis};
        use Reason::*;
        let eur_cart = shirts_and_socks("EUR");
        let usd_cart = shirts_and_socks("USD");
        let shirts = || Some(Arc::new(Scope { include_categories: IdSet::new(["shirts"]), ..Scope::default() }));
        let usd = || Currency::parse("USD");
        let usd_option = |value, min_order_value| {
            Some(Arc::from(vec![CurrencyOption { currency: usd().unwrap(), value, cap: None, min_order_value }]))
        };
        let cases = vec![
            case("a scoped coupon without items", |c| c.scope = shirts()).expect(ItemsRequired),
            case("a scoped coupon with items", |c| c.scope = shirts()).cart(eur_cart),
            case("nothing in scope", |c| {
                c.scope = Some(Arc::new(Scope { include_categories: IdSet::new(["hats"]), ..Scope::default() }))
            })
            .cart(eur_cart)
            .expect(NoEligibleItems),
            case("on sale excluded", |c| {
                c.scope = Some(Arc::new(Scope {
                    include_categories: IdSet::new(["shirts"]),
                    exclude_on_sale: true,
                    ..Scope::default()
                }))
            })
            .cart(eur_cart)
            .expect(NoEligibleItems),
            case("two shirts are enough", |c| c.min_quantity = Some(2)).cart(eur_cart),
            case("four units are too many to ask", |c| c.min_quantity = Some(4))
                .cart(eur_cart)
                .expect(MinQuantityNotMet),
            case("not for user wins over items", |c| {
                c.scope = shirts();
                c.user_id = Some("someone".into());
            })
            .expect(CouponNotForUser),
            case("minimum on the eligible lines: 40.00 of 45.00", |c| {
                c.scope = shirts();
                c.min_order_basis = MinOrderBasis::Eligible;
                c.min_order_value = cents(4_001);
            })
            .cart(eur_cart)
            .expect(MinOrderValueNotMet),
            case("minimum on the order: 45.00", |c| {
                c.scope = shirts();
                c.min_order_value = cents(4_001);
            })
            .cart(eur_cart),
            case("minimum quantity wins over minimum", |c| {
                c.min_quantity = Some(9);
                c.min_order_value = cents(1_000_000);
            })
            .cart(eur_cart)
            .expect(MinQuantityNotMet),
            case("free shipping needs shipping", |c| c.discount = Discount::FreeShipping { cap: None })
                .expect(ItemsRequired),
            case("free shipping on a cart", |c| c.discount = Discount::FreeShipping { cap: None }).cart(eur_cart),
            // Currencies.
            case("a percentage without amounts in any currency", |_| {}).cart(usd_cart),
            case("a percentage with a minimum in EUR only", |c| c.min_order_value = cents(100))
                .cart(usd_cart)
                .expect(CurrencyNotSupported),
            case("a fixed coupon in EUR", |c| c.discount = Discount::Fixed(cents(500)))
                .cart(usd_cart)
                .expect(CurrencyNotSupported),
            case("a fixed coupon with a USD option", |c| {
                c.discount = Discount::Fixed(cents(500));
                c.currency_options = usd_option(Some(600), 4_500);
            })
            .cart(usd_cart),
            case("the option's own minimum: 46.00 > 45.00", |c| {
                c.discount = Discount::Fixed(cents(500));
                c.min_order_value = cents(100);
                c.currency_options = usd_option(Some(600), 4_600);
            })
            .cart(usd_cart)
            .expect(MinOrderValueNotMet),
            case("a USD coupon with a EUR option asked without a cart", |c| {
                c.discount = Discount::Fixed(cents(500));
                c.currency = usd();
                c.currency_options = Some(Arc::from(vec![CurrencyOption {
                    currency: eur(),
                    value: Some(400),
                    cap: None,
                    min_order_value: 100_001,
                }]));
            })
            .expect(MinOrderValueNotMet),
            case("a USD coupon asked in EUR without items", |c| {
                c.discount = Discount::Fixed(cents(500));
                c.currency = usd();
            })
            .expect(CurrencyNotSupported),
            case("currency wins over items", |c| {
                c.discount = Discount::Fixed(cents(500));
                c.scope = shirts();
            })
            .cart(usd_cart)
            .expect(CurrencyNotSupported),
            case("a budget is kept in the default currency", |_| {})
                .campaign(|k| k.budget = Some(cents(100_000)))
                .cart(usd_cart)
                .expect(CurrencyNotSupported),
        ];
        for case in cases {
            let offer = Offer { coupon: &case.coupon, campaign: case.campaign.as_ref(), code: case.code };
            let got = match validate(&offer, &case.usage, &case.attempt, at(12)) {
                Decision::Valid { .. } => None,
                Decision::Rejected(reason) => Some(reason),
            };
            assert_eq!(got, case.expected, "case: {}", case.name);
        }
    }

    #[test]
    fn a_cart_coupons_amounts_come_from_its_currency() {
        use std::sync::Arc;

        use crate::domain::coupon::CurrencyOption;
        let cart = shirts_and_socks("USD");
        let mut coupon = base();
        coupon.discount = Discount::Fixed(cents(500));
        coupon.currency_options = Some(Arc::from(vec![CurrencyOption {
            currency: cart.currency,
            value: Some(600),
            cap: None,
            min_order_value: 0,
        }]));
        let offer = Offer { coupon: &coupon, campaign: None, code: None };
        let attempt = Attempt {
            user_id: "u",
            order_value: cents(4_500),
            order_id: None,
            cart: Some(cart),
            default_currency: eur(),
        };
        let (decision, taken) = decide(&offer, &FakeUsage::default(), &attempt, at(12));
        assert_eq!(decision, Decision::Valid { discount: cents(600), final_amount: cents(3_900) });
        assert_eq!(taken.map(|t| t.effect()), Some(600));
        // Free shipping: nothing off the merchandise, the shipping's 4.99 is its effect, and a
        // budget is charged with it.
        coupon.discount = Discount::FreeShipping { cap: None };
        coupon.currency_options = None;
        let eur_cart = shirts_and_socks("EUR");
        let campaign = Campaign { budget: Some(cents(498)), ..campaign() };
        let offer = Offer { coupon: &coupon, campaign: Some(&campaign), code: None };
        let attempt = Attempt { cart: Some(eur_cart), ..attempt };
        let (decision, taken) = decide(&offer, &FakeUsage::default(), &attempt, at(12));
        assert_eq!(decision, Decision::Rejected(Reason::CampaignBudgetExhausted));
        assert_eq!(taken, None);
        let enough = Campaign { budget: Some(cents(499)), ..campaign.clone() };
        let offer = Offer { campaign: Some(&enough), ..offer };
        let (decision, taken) = decide(&offer, &FakeUsage::default(), &attempt, at(12));
        assert_eq!(decision, Decision::Valid { discount: Cents::ZERO, final_amount: cents(4_500) });
        assert_eq!(taken.map(|t| (t.merchandise(), t.shipping)), Some((0, 499)));
    }

    #[test]
    fn valid_decision_carries_discount_and_final_amount() {
        let mut coupon = base();
        coupon.discount = Discount::Fixed(cents(2_500));
        let offer = Offer { coupon: &coupon, campaign: None, code: None };
        let attempt =
            Attempt { user_id: "u", order_value: cents(10_000), order_id: None, cart: None, default_currency: eur() };
        let decision = validate(&offer, &FakeUsage::default(), &attempt, at(12));
        assert_eq!(decision, Decision::Valid { discount: cents(2_500), final_amount: cents(7_500) });
    }

    #[test]
    fn reasons_are_spelled_as_the_api_says_and_indexed_in_order() {
        let mut log_codes: Vec<i16> = Reason::ALL.iter().map(|r| r.log_code()).collect();
        log_codes.sort_unstable();
        assert_eq!(log_codes, (1..=18).collect::<Vec<i16>>(), "one log code each, none reused");
        for (idx, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), idx);
            assert!(reason.as_str().chars().all(|c| c.is_ascii_uppercase() || c == '_'));
            assert_eq!(Reason::parse(reason.as_str()), Some(*reason));
        }
    }
}
