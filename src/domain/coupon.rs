//! A coupon's definition, as the rules see it: no I/O, no serialisation, no counters.

use chrono::{DateTime, Utc};

use crate::domain::money::{Cents, MoneyError};

/// The database id of a coupon.
pub type CouponId = i64;

/// Hundredths of a percent: 100% is 10_000, 12.5% is 1_250.
pub const FULL_PERCENT: u32 = 10_000;

/// Who a coupon is meant for; informational, the `user_id` is what the rules check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CouponKind {
    UserSpecific,
    TimeSpecific,
}

/// The administrative state of a coupon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CouponStatus {
    Active,
    Inactive,
    Expired,
}

/// How a coupon reduces an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discount {
    /// A share of the order, in hundredths of a percent (0, 10_000], capped at `cap` if set.
    Percentage { hundredths: u32, cap: Option<Cents> },
    /// A fixed amount, never more than the order.
    Fixed(Cents),
}

/// A coupon definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coupon {
    pub id: CouponId,
    /// Upper-case, trimmed.
    pub code: Box<str>,
    pub kind: CouponKind,
    pub status: CouponStatus,
    pub discount: Discount,
    pub min_order_value: Cents,
    /// Live redemptions allowed in total; `None` is unlimited.
    pub usage_limit: Option<u32>,
    /// Live redemptions allowed per user; `None` is unlimited.
    pub per_user_limit: Option<u32>,
    /// When set, only this user may use the coupon.
    pub user_id: Option<Box<str>>,
    /// Inclusive start; `None` is open.
    pub valid_from: Option<DateTime<Utc>>,
    /// Exclusive end; `None` is open.
    pub valid_until: Option<DateTime<Utc>>,
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
    #[error("maxDiscount only applies to percentage discounts")]
    CapOnFixedDiscount,
    #[error("validFrom must be before validUntil")]
    EmptyValidityWindow,
    #[error("a user_specific coupon needs a userId")]
    UserSpecificWithoutUser,
    #[error("amount {0}")]
    Money(#[from] MoneyError),
}

/// Normalises a code as lookups do: surrounding whitespace removed, ASCII upper-cased.
pub fn normalize_code(code: &str) -> std::borrow::Cow<'_, str> {
    let trimmed = code.trim();
    if trimmed.bytes().any(|b| b.is_ascii_lowercase()) {
        std::borrow::Cow::Owned(trimmed.to_ascii_uppercase())
    } else {
        std::borrow::Cow::Borrowed(trimmed)
    }
}

/// Whether a normalised code may be stored: 1–64 printable ASCII characters, no spaces, no
/// lower-case letters (the `coupons_code_format` constraint says the same).
pub fn is_valid_code(code: &str) -> bool {
    (1..=64).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_graphic() && !b.is_ascii_lowercase())
}

impl Coupon {
    /// Checks the invariants the database also enforces, so the admin API can answer 400
    /// before a write rather than relay a constraint violation.
    pub fn check(&self) -> Result<(), CouponError> {
        if !is_valid_code(&self.code) {
            return Err(CouponError::InvalidCode);
        }
        match self.discount {
            Discount::Percentage { hundredths, .. } => {
                if hundredths == 0 || hundredths > FULL_PERCENT {
                    return Err(CouponError::PercentageOutOfRange);
                }
            }
            Discount::Fixed(_) => {}
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

impl CouponKind {
    /// The database and API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CouponKind::UserSpecific => "user_specific",
            CouponKind::TimeSpecific => "time_specific",
        }
    }

    /// Parses the database and API spelling.
    pub fn parse(text: &str) -> Option<CouponKind> {
        match text {
            "user_specific" => Some(CouponKind::UserSpecific),
            "time_specific" => Some(CouponKind::TimeSpecific),
            _ => None,
        }
    }
}

impl CouponStatus {
    /// The database and API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CouponStatus::Active => "active",
            CouponStatus::Inactive => "inactive",
            CouponStatus::Expired => "expired",
        }
    }

    /// Parses the database and API spelling.
    pub fn parse(text: &str) -> Option<CouponStatus> {
        match text {
            "active" => Some(CouponStatus::Active),
            "inactive" => Some(CouponStatus::Inactive),
            "expired" => Some(CouponStatus::Expired),
            _ => None,
        }
    }
}

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
}
