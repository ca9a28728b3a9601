//! The one conversion between the domain's exact hundredths (cents, or hundredths of a
//! percent) and PostgreSQL's `NUMERIC`: every query binds and reads amounts through it.

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use crate::domain::money::{Cents, Percent};

/// A value in hundredths as a `NUMERIC` with two decimals.
pub fn numeric(hundredths: u64) -> Decimal {
    Decimal::from_i128_with_scale(i128::from(hundredths), 2)
}

/// Cents as a `NUMERIC`.
pub(crate) fn numeric_cents(amount: Cents) -> Decimal {
    numeric(amount.get())
}

/// A `NUMERIC` read back as hundredths; `None` if it is negative or not whole hundredths.
pub(crate) fn hundredths(value: Decimal) -> Option<u64> {
    let scaled = value.checked_mul(Decimal::ONE_HUNDRED)?;
    if scaled.fract() != Decimal::ZERO || (scaled.is_sign_negative() && !scaled.is_zero()) {
        return None;
    }
    scaled.abs().to_u64()
}

/// A `NUMERIC` amount as cents; `None` if it is not an acceptable amount.
pub fn cents(value: Decimal) -> Option<Cents> {
    Cents::new(hundredths(value)?).ok()
}

/// A `NUMERIC` percentage as a [`Percent`].
pub fn percent(value: Decimal) -> Option<Percent> {
    Percent::from_hundredths(hundredths(value)?)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    #[test]
    fn round_trips_exactly() {
        for hundredths_value in [0, 1, 99, 100, 1250, 100_000_000_000] {
            assert_eq!(hundredths(numeric(hundredths_value)), Some(hundredths_value));
        }
        for (text, expected) in [
            ("12.5", Some(1250)),
            ("12.50", Some(1250)),
            ("12.500", Some(1250)),
            ("0", Some(0)),
            ("1000000000", Some(100_000_000_000)),
            ("12.345", None),
            ("-1", None),
            ("-0.00", Some(0)),
        ] {
            assert_eq!(hundredths(Decimal::from_str(text).unwrap()), expected, "{text}");
        }
        assert_eq!(numeric(1250).to_string(), "12.50");
        assert_eq!(cents(Decimal::from_str("1000000000.01").unwrap()), None);
        assert_eq!(percent(Decimal::from_str("100.01").unwrap()), None);
        assert_eq!(percent(Decimal::from_str("12.5").unwrap()).map(Percent::hundredths), Some(1250));
    }
}
