//! A coupon's definition, as the rules see it: no I/O, no serialisation, no counters.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use compact_str::CompactString;

use crate::domain::money::{Cents, Percent};

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

/// The two kinds of discount, apart from their amounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscountType {
    Percentage,
    Fixed,
}

/// How a coupon reduces an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discount {
    /// A share of the order, capped at `cap` if set.
    Percentage { rate: Percent, cap: Option<Cents> },
    /// A fixed amount, never more than the order.
    Fixed(Cents),
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
    #[error("maxDiscount only applies to percentage discounts")]
    CapOnFixedDiscount,
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
    /// The discount on an order: a percentage rounded half-up to the cent then capped, a
    /// fixed amount never above the order.
    pub(crate) fn amount_for(&self, order_value: Cents) -> Cents {
        match *self {
            Discount::Percentage { rate, cap } => {
                let amount = rate.of(order_value);
                cap.map_or(amount, |cap| amount.min(cap))
            }
            Discount::Fixed(value) => value.min(order_value),
        }
    }

    /// The type, the value in hundredths (of a percent, or of the currency unit) and the cap:
    /// the shape of the `discount_type`, `discount_value` and `max_discount` columns.
    pub fn parts(&self) -> (DiscountType, u64, Option<Cents>) {
        match *self {
            Discount::Percentage { rate, cap } => (DiscountType::Percentage, u64::from(rate.hundredths()), cap),
            Discount::Fixed(amount) => (DiscountType::Fixed, amount.get(), None),
        }
    }

    /// The inverse of [`Discount::parts`], refusing what the schema refuses.
    pub(crate) fn from_parts(kind: DiscountType, hundredths: u64, cap: Option<Cents>) -> Result<Discount, CouponError> {
        match kind {
            DiscountType::Percentage => {
                let rate = Percent::from_hundredths(hundredths).ok_or(CouponError::PercentageOutOfRange)?;
                Ok(Discount::Percentage { rate, cap })
            }
            DiscountType::Fixed if cap.is_some() => Err(CouponError::CapOnFixedDiscount),
            DiscountType::Fixed => {
                Ok(Discount::Fixed(Cents::new(hundredths).map_err(|_| CouponError::AmountOutOfRange)?))
            }
        }
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
        Ok(())
    }
}

/// The database and API spellings of the small enums, one table each.
macro_rules! spelled {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The database and API spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }

            /// Parses the database and API spelling.
            pub fn parse(text: &str) -> Option<$ty> {
                match text { $($text => Some($ty::$variant),)+ _ => None }
            }
        }
    };
}

spelled!(CouponKind { UserSpecific => "user_specific", TimeSpecific => "time_specific" });
spelled!(Status { Active => "active", Inactive => "inactive", Expired => "expired" });
spelled!(DiscountType { Percentage => "percentage", Fixed => "fixed" });

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
        for discount in [
            Discount::Percentage { rate: Percent::from_hundredths(1250).unwrap(), cap: Some(cents(5_000)) },
            Discount::Percentage { rate: Percent::from_hundredths(10_000).unwrap(), cap: None },
            Discount::Fixed(cents(2_500)),
            Discount::Fixed(Cents::ZERO),
        ] {
            let (kind, value, cap) = discount.parts();
            assert_eq!(Discount::from_parts(kind, value, cap), Ok(discount));
        }
        for (kind, value, cap, err) in [
            (DiscountType::Percentage, 0, None, CouponError::PercentageOutOfRange),
            (DiscountType::Percentage, 10_001, None, CouponError::PercentageOutOfRange),
            (DiscountType::Fixed, 100, Some(cents(1)), CouponError::CapOnFixedDiscount),
            (DiscountType::Fixed, u64::MAX, None, CouponError::AmountOutOfRange),
        ] {
            assert_eq!(Discount::from_parts(kind, value, cap), Err(err));
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
