//! A coupon's definition, as the rules see it: no I/O, no serialisation, no counters.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use compact_str::CompactString;

use crate::domain::cart::Scope;
use crate::domain::cart_discount::{BuyXGetY, Target};
use crate::domain::currency::Currency;
use crate::domain::money::{Cents, Percent};
use crate::domain::stack::Classes;

/// The database id of a coupon.
pub type CouponId = i64;
/// The database id of a campaign.
pub type CampaignId = i64;
/// The database id of a batch of bulk codes.
pub type BatchId = i64;

/// Longest code, after trimming (the `coupons_code_format` constraint says the same).
pub const MAX_CODE_LEN: usize = 64;

/// Who a coupon is meant for; informational, the `user_id` is what the rules check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CouponKind {
    UserSpecific,
    TimeSpecific,
}

/// The administrative state of a coupon or a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Inactive,
    Expired,
}

/// The kinds of discount, apart from their amounts (the `discount_type` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscountType {
    Percentage,
    Fixed,
    FixedPrice,
    BuyXGetY,
    FreeShipping,
}

/// How a `fixed` discount is spread (the `allocation` column, API.md §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// One amount over the eligible lines.
    Across,
    /// The amount off every eligible unit.
    Each,
}

/// What `minOrderValue` is compared with (the `min_order_basis` column, API.md §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinOrderBasis {
    /// The request's `orderValue`.
    Order,
    /// Σ of the eligible lines, as sent.
    Eligible,
}

/// How a coupon reduces an order. Amounts are hundredths of the coupon's currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discount {
    /// A share of the order, capped at `cap` if set.
    Percentage { rate: Percent, cap: Option<Cents> },
    /// A fixed amount, never more than the order.
    Fixed(Cents),
    /// A fixed amount off every eligible unit of a cart, never below zero.
    FixedEach { value: Cents, cap: Option<Cents> },
    /// Every eligible unit of a cart costs `price` (never more than it did).
    FixedPrice { price: Cents, cap: Option<Cents> },
    /// Buy some units of a cart, get others off.
    BuyXGetY { offer: Arc<BuyXGetY>, cap: Option<Cents> },
    /// The cart's shipping, capped at `cap` if set.
    FreeShipping { cap: Option<Cents> },
}

/// A coupon's amounts in one currency other than its own (`currencyOptions`, API.md §9), in
/// that currency's minor units; never converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrencyOption {
    pub currency: Currency,
    /// The fixed kinds' `discountValue` (a percentage is the same in every currency).
    pub value: Option<u64>,
    pub cap: Option<u64>,
    pub min_order_value: u64,
}

/// A coupon definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coupon {
    pub id: CouponId,
    /// Upper-case, trimmed; kept inline (no separate allocation) up to 24 bytes.
    pub code: CompactString,
    pub kind: CouponKind,
    pub status: Status,
    pub discount: Discount,
    pub min_order_value: Cents,
    /// Live redemptions allowed in total; `None` is unlimited.
    pub usage_limit: Option<u32>,
    /// Live redemptions allowed per user; `None` is unlimited.
    pub per_user_limit: Option<u32>,
    /// When set, only this user may use the coupon.
    pub user_id: Option<CompactString>,
    /// Inclusive start; `None` is open.
    pub valid_from: Option<DateTime<Utc>>,
    /// Exclusive end; `None` is open.
    pub valid_until: Option<DateTime<Utc>>,
    /// The campaign whose shared limits also apply.
    pub campaign_id: Option<CampaignId>,
    /// Set on the rule of a batch of bulk codes: such a coupon is reached through its codes,
    /// never through its own `code`.
    pub batch_id: Option<BatchId>,
    /// §9: what the discount is aimed at; `Order` for every coupon made before carts.
    pub target: Target,
    /// §9: the lines it applies to; `None`: every discountable line.
    pub scope: Option<Arc<Scope>>,
    /// §9: Σ quantity of eligible lines needed.
    pub min_quantity: Option<u32>,
    pub min_order_basis: MinOrderBasis,
    /// The currency of its amounts; `None`: `money.default_currency`.
    pub currency: Option<Currency>,
    /// Its amounts in other currencies.
    pub currency_options: Option<Arc<[CurrencyOption]>>,
    /// §10: its place among the codes of an order (higher first).
    pub priority: i32,
    /// §10: the classes of code it combines with (none: it stands alone).
    pub combines_with: Classes,
    /// Bumped by the database on every update; a newer version replaces an older one.
    pub version: i64,
}

/// Why a coupon definition is impossible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CouponError {
    #[error("code must be 1 to 64 printable ASCII characters without spaces")]
    InvalidCode,
    #[error("percentage discount must be greater than 0 and at most 100")]
    PercentageOutOfRange,
    #[error("fixed discount must be at most 1000000000")]
    AmountOutOfRange,
    #[error("maxDiscount does not apply to a fixed discount across the order (allocation each takes one)")]
    CapOnFixedDiscount,
    #[error("allocation only applies to fixed discounts")]
    AllocationNotFixed,
    #[error("buyXGetY is required for buy_x_get_y and applies to nothing else")]
    BuyXGetYMismatch,
    #[error("buyQuantity, getQuantity and maxApplications must be whole numbers from 1 to 10000")]
    BuyXGetYQuantity,
    #[error("the target contradicts the discountType")]
    TargetContradictsType,
    #[error("minQuantity must be a whole number from 1 to 1000000")]
    MinQuantityOutOfRange,
    #[error("priority must be a whole number from -1000000 to 1000000")]
    PriorityOutOfRange,
    #[error("amounts of a coupon in a currency without decimals must be whole")]
    FractionInWholeCurrency,
    #[error("currencyOptions must not name the coupon's own currency")]
    OwnCurrencyOption,
    #[error("a currency option of a fixed discount needs a discountValue, one of any other kind has none")]
    OptionValueMismatch,
    #[error("validFrom must be before validUntil")]
    EmptyValidityWindow,
    #[error("a user_specific coupon needs a userId")]
    UserSpecificWithoutUser,
    #[error("codes starting with {RULE_CODE_PREFIX} belong to the rules of batches of codes")]
    ReservedCode,
}

/// The start of the code of a batch's rule (`~BATCH-<id>`): no other coupon may have one.
pub const RULE_CODE_PREFIX: &str = "~BATCH-";

/// Normalises a code as lookups do: surrounding whitespace removed, ASCII upper-cased.
pub(crate) fn normalize_code(code: &str) -> Cow<'_, str> {
    let trimmed = code.trim();
    if trimmed.bytes().any(|b| b.is_ascii_lowercase()) {
        Cow::Owned(trimmed.to_ascii_uppercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

/// Whether a normalised code may be stored: 1–64 printable ASCII characters, no spaces, no
/// lower-case letters (the `coupons_code_format` constraint says the same).
pub(crate) fn is_valid_code(code: &str) -> bool {
    (1..=MAX_CODE_LEN).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_graphic() && !b.is_ascii_lowercase())
}

impl Discount {
    /// The discount on an order without items: a percentage rounded half-up to the cent then
    /// capped, a fixed amount never above the order. The kinds that need a cart give nothing
    /// here (the rules refuse them `ITEMS_REQUIRED` first).
    pub(crate) fn amount_for(&self, order_value: Cents) -> Cents {
        match *self {
            Discount::Percentage { rate, cap } => {
                let amount = rate.of(order_value);
                cap.map_or(amount, |cap| amount.min(cap))
            }
            Discount::Fixed(value) => value.min(order_value),
            Discount::FixedEach { .. }
            | Discount::FixedPrice { .. }
            | Discount::BuyXGetY { .. }
            | Discount::FreeShipping { .. } => Cents::ZERO,
        }
    }

    /// The type, the value in hundredths (of a percent, or of the currency unit) and the cap:
    /// the shape of the `discount_type`, `discount_value` and `max_discount` columns.
    pub fn parts(&self) -> (DiscountType, u64, Option<Cents>) {
        match self {
            Discount::Percentage { rate, cap } => (DiscountType::Percentage, u64::from(rate.hundredths()), *cap),
            Discount::Fixed(amount) => (DiscountType::Fixed, amount.get(), None),
            Discount::FixedEach { value, cap } => (DiscountType::Fixed, value.get(), *cap),
            Discount::FixedPrice { price, cap } => (DiscountType::FixedPrice, price.get(), *cap),
            Discount::BuyXGetY { cap, .. } => (DiscountType::BuyXGetY, 0, *cap),
            Discount::FreeShipping { cap } => (DiscountType::FreeShipping, 0, *cap),
        }
    }

    /// How a fixed discount is spread (`Across` for every other kind).
    pub fn allocation(&self) -> Allocation {
        if matches!(self, Discount::FixedEach { .. }) { Allocation::Each } else { Allocation::Across }
    }

    /// Buy-X-get-Y's terms.
    pub fn buy_x_get_y(&self) -> Option<&BuyXGetY> {
        match self {
            Discount::BuyXGetY { offer, .. } => Some(offer),
            _ => None,
        }
    }

    /// The inverse of [`Discount::parts`] with [`Discount::allocation`] and
    /// [`Discount::buy_x_get_y`], refusing what the schema refuses.
    pub(crate) fn from_parts(
        kind: DiscountType,
        hundredths: u64,
        cap: Option<Cents>,
        allocation: Allocation,
        bxgy: Option<BuyXGetY>,
    ) -> Result<Discount, CouponError> {
        let amount = || Cents::new(hundredths).map_err(|_| CouponError::AmountOutOfRange);
        if allocation == Allocation::Each && kind != DiscountType::Fixed {
            return Err(CouponError::AllocationNotFixed);
        }
        if bxgy.is_some() != (kind == DiscountType::BuyXGetY) {
            return Err(CouponError::BuyXGetYMismatch);
        }
        match kind {
            DiscountType::Percentage => {
                let rate = Percent::from_hundredths(hundredths).ok_or(CouponError::PercentageOutOfRange)?;
                Ok(Discount::Percentage { rate, cap })
            }
            DiscountType::Fixed if allocation == Allocation::Each => Ok(Discount::FixedEach { value: amount()?, cap }),
            DiscountType::Fixed if cap.is_some() => Err(CouponError::CapOnFixedDiscount),
            DiscountType::Fixed => Ok(Discount::Fixed(amount()?)),
            DiscountType::FixedPrice => Ok(Discount::FixedPrice { price: amount()?, cap }),
            DiscountType::BuyXGetY => {
                let offer = bxgy.ok_or(CouponError::BuyXGetYMismatch)?;
                let quantities = [Some(offer.buy), Some(offer.get), offer.max_applications];
                if quantities.into_iter().flatten().any(|q| !(1..=10_000).contains(&q)) {
                    return Err(CouponError::BuyXGetYQuantity);
                }
                Ok(Discount::BuyXGetY { offer: Arc::new(offer), cap })
            }
            DiscountType::FreeShipping => Ok(Discount::FreeShipping { cap }),
        }
    }

    /// Whether the rules need a cart's items (or shipping) to judge this kind at all.
    pub(crate) fn needs_cart(&self) -> bool {
        !matches!(self, Discount::Percentage { .. } | Discount::Fixed(_))
    }
}

impl Coupon {
    /// A coupon with this code and discount and every other field at its default, as the
    /// admin API creates one: active, no minimum, no limits, no owner, an open window, no
    /// campaign.
    pub fn new(id: CouponId, code: &str, kind: CouponKind, discount: Discount) -> Coupon {
        Coupon {
            id,
            code: code.into(),
            kind,
            status: Status::Active,
            discount,
            min_order_value: Cents::ZERO,
            usage_limit: None,
            per_user_limit: None,
            user_id: None,
            valid_from: None,
            valid_until: None,
            campaign_id: None,
            batch_id: None,
            target: Target::Order,
            scope: None,
            min_quantity: None,
            min_order_basis: MinOrderBasis::Order,
            currency: None,
            currency_options: None,
            priority: 0,
            combines_with: Classes::NONE,
            version: 1,
        }
    }

    /// Checks the invariants the database also enforces, so the admin API can answer 400
    /// before a write rather than relay a constraint violation.
    pub fn check(&self) -> Result<(), CouponError> {
        if !is_valid_code(&self.code) {
            return Err(CouponError::InvalidCode);
        }
        if self.batch_id.is_none() && self.code.starts_with(RULE_CODE_PREFIX) {
            return Err(CouponError::ReservedCode);
        }
        if let (Some(from), Some(until)) = (self.valid_from, self.valid_until)
            && from >= until
        {
            return Err(CouponError::EmptyValidityWindow);
        }
        if self.kind == CouponKind::UserSpecific && self.user_id.is_none() {
            return Err(CouponError::UserSpecificWithoutUser);
        }
        self.check_cart_fields()
    }

    /// The checks of §9's fields alone (what the schema cannot say of them).
    pub(crate) fn check_cart_fields(&self) -> Result<(), CouponError> {
        let item_kind = matches!(
            self.discount,
            Discount::FixedEach { .. } | Discount::FixedPrice { .. } | Discount::BuyXGetY { .. }
        );
        let contradiction = match self.target {
            Target::Shipping => item_kind,
            Target::Items => matches!(self.discount, Discount::FreeShipping { .. }),
            Target::Order => false,
        };
        if contradiction {
            return Err(CouponError::TargetContradictsType);
        }
        if self.min_quantity.is_some_and(|q| !(1..=1_000_000).contains(&q)) {
            return Err(CouponError::MinQuantityOutOfRange);
        }
        if !(-1_000_000..=1_000_000).contains(&self.priority) {
            return Err(CouponError::PriorityOutOfRange);
        }
        let (_, value, cap) = self.discount.parts();
        let whole = |cents: u64| cents.is_multiple_of(100);
        let value_is_money = !matches!(self.discount, Discount::Percentage { .. });
        if self.currency.is_some_and(|c| c.decimals() == 0)
            && !((!value_is_money || whole(value))
                && cap.is_none_or(|c| whole(c.get()))
                && whole(self.min_order_value.get()))
        {
            return Err(CouponError::FractionInWholeCurrency);
        }
        let fixed_kind =
            matches!(self.discount, Discount::Fixed(_) | Discount::FixedEach { .. } | Discount::FixedPrice { .. });
        for option in self.currency_options.iter().flat_map(|o| o.iter()) {
            if Some(option.currency) == self.currency {
                return Err(CouponError::OwnCurrencyOption);
            }
            if option.value.is_some() != fixed_kind {
                return Err(CouponError::OptionValueMismatch);
            }
        }
        Ok(())
    }

    /// Whether this coupon needs a cart's items (or shipping) to be judged (§9
    /// `ITEMS_REQUIRED`).
    pub(crate) fn needs_cart(&self) -> bool {
        self.discount.needs_cart()
            || self.target != Target::Order
            || self.scope.is_some()
            || self.min_quantity.is_some()
            || self.min_order_basis == MinOrderBasis::Eligible
    }
}

spelled!(CouponKind { UserSpecific => "user_specific", TimeSpecific => "time_specific" });
spelled!(Status { Active => "active", Inactive => "inactive", Expired => "expired" });
spelled!(DiscountType {
    Percentage => "percentage",
    Fixed => "fixed",
    FixedPrice => "fixed_price",
    BuyXGetY => "buy_x_get_y",
    FreeShipping => "free_shipping",
});
spelled!(Allocation { Across => "across", Each => "each" });
spelled!(MinOrderBasis { Order => "order", Eligible => "eligible" });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_codes_like_lookups_do() {
        for (input, expected) in [
            ("SAVE10", "SAVE10"),
            ("save10", "SAVE10"),
            ("  Save10\t", "SAVE10"),
            ("\nSAVE-10_X ", "SAVE-10_X"),
            ("ümlaut", "üMLAUT"),
        ] {
            assert_eq!(normalize_code(input), expected, "{input:?}");
        }
    }

    #[test]
    fn valid_codes() {
        for (code, ok) in [
            ("SAVE10", true),
            ("A", true),
            ("SAVE-10_X", true),
            ("50%OFF!", true),
            (&"A".repeat(64), true),
            ("", false),
            (&"A".repeat(65), false),
            ("save10", false),
            ("SAVE 10", false),
            ("SAVE\u{0}", false),
            ("ÜBER", false),
        ] {
            assert_eq!(is_valid_code(code), ok, "{code:?}");
        }
    }

    #[test]
    fn discount_parts_round_trip_and_refuse_the_impossible() {
        let cents = |n| Cents::new(n).unwrap();
        let two_for_one = BuyXGetY {
            buy: 1,
            get: 1,
            get_percent: Percent::from_hundredths(10_000).unwrap(),
            get_scope: None,
            max_applications: Some(2),
            selection: crate::domain::cart_discount::Selection::Cheapest,
        };
        for discount in [
            Discount::Percentage { rate: Percent::from_hundredths(1250).unwrap(), cap: Some(cents(5_000)) },
            Discount::Percentage { rate: Percent::from_hundredths(10_000).unwrap(), cap: None },
            Discount::Fixed(cents(2_500)),
            Discount::Fixed(Cents::ZERO),
            Discount::FixedEach { value: cents(100), cap: Some(cents(500)) },
            Discount::FixedPrice { price: cents(999), cap: None },
            Discount::BuyXGetY { offer: Arc::new(two_for_one.clone()), cap: Some(cents(2_000)) },
            Discount::FreeShipping { cap: None },
            Discount::FreeShipping { cap: Some(cents(300)) },
        ] {
            let (kind, value, cap) = discount.parts();
            let bxgy = discount.buy_x_get_y().cloned();
            assert_eq!(Discount::from_parts(kind, value, cap, discount.allocation(), bxgy), Ok(discount));
        }
        let across = Allocation::Across;
        let zero_buy = BuyXGetY { buy: 0, ..two_for_one.clone() };
        for (kind, value, cap, allocation, bxgy, err) in [
            (DiscountType::Percentage, 0, None, across, None, CouponError::PercentageOutOfRange),
            (DiscountType::Percentage, 10_001, None, across, None, CouponError::PercentageOutOfRange),
            (DiscountType::Fixed, 100, Some(cents(1)), across, None, CouponError::CapOnFixedDiscount),
            (DiscountType::Fixed, u64::MAX, None, across, None, CouponError::AmountOutOfRange),
            (DiscountType::Percentage, 100, None, Allocation::Each, None, CouponError::AllocationNotFixed),
            (DiscountType::BuyXGetY, 0, None, across, None, CouponError::BuyXGetYMismatch),
            (DiscountType::Fixed, 100, None, across, Some(two_for_one), CouponError::BuyXGetYMismatch),
            (DiscountType::BuyXGetY, 0, None, across, Some(zero_buy), CouponError::BuyXGetYQuantity),
        ] {
            assert_eq!(Discount::from_parts(kind, value, cap, allocation, bxgy), Err(err), "{kind:?}");
        }
    }

    #[test]
    fn discount_amounts() {
        let cents = |n| Cents::new(n).unwrap();
        let pct = |h, cap: Option<u64>| Discount::Percentage {
            rate: Percent::from_hundredths(h).unwrap(),
            cap: cap.map(cents),
        };
        for (discount, order, expected) in [
            (pct(2000, Some(5_000)), 100_000, 5_000), // 200.00 capped at 50.00
            (pct(2000, Some(5_000)), 25_000, 5_000),  // exactly at the cap
            (pct(2000, Some(5_000)), 20_000, 4_000),  // under the cap
            (pct(2000, Some(0)), 20_000, 0),          // a zero cap
            (pct(1000, None), 5, 1),                  // rounding is Percent's
            (Discount::Fixed(cents(1_000)), 100_000, 1_000),
            (Discount::Fixed(cents(1_000)), 1_000, 1_000), // equal to the order
            (Discount::Fixed(cents(1_000)), 999, 999),     // never above the order
            (Discount::Fixed(cents(1_000)), 0, 0),
            (Discount::Fixed(Cents::ZERO), 500, 0),
        ] {
            assert_eq!(discount.amount_for(cents(order)), cents(expected), "{discount:?} on {order}");
        }
    }

    #[test]
    fn spellings_round_trip() {
        for status in [Status::Active, Status::Inactive, Status::Expired] {
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
        for kind in [CouponKind::UserSpecific, CouponKind::TimeSpecific] {
            assert_eq!(CouponKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(DiscountType::parse("percentage"), Some(DiscountType::Percentage));
        assert_eq!(Status::parse("paused"), None);
    }
}
