//! The one conversion between the domain's exact amounts (hundredths of the default currency
//! or of a percent; minor units of a cart's currency) and PostgreSQL's `NUMERIC`: every query
//! binds and reads amounts through it.

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use crate::domain::currency::Currency;
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

/// An amount in minor units of a currency with `decimals` decimals as a `NUMERIC` in its
/// major units (1000 JPY is `1000`, 1.250 KWD is `1.250`).
pub(crate) fn numeric_minor(minor: u64, decimals: u8) -> Decimal {
    Decimal::from_i128_with_scale(i128::from(minor), u32::from(decimals))
}

/// The inverse of [`numeric_minor`]; `None` if it is negative, finer than the minor unit, or
/// above [`MAX_CENTS`](crate::domain::money::MAX_CENTS) minor units.
pub(crate) fn minor(value: Decimal, decimals: u8) -> Option<Cents> {
    let scaled = value.checked_mul(Decimal::from(10u64.pow(u32::from(decimals))))?;
    if scaled.fract() != Decimal::ZERO || (scaled.is_sign_negative() && !scaled.is_zero()) {
        return None;
    }
    Cents::new(scaled.abs().to_u64()?).ok()
}

/// A use's amount as a `NUMERIC` in its currency's major units (hundredths of the default
/// currency for a use without one).
pub(crate) fn numeric_in(amount: Cents, currency: Option<Currency>) -> Decimal {
    numeric_minor(amount.get(), currency.map_or(2, Currency::decimals))
}

/// The inverse of [`numeric_in`].
pub(crate) fn amount_in(value: Decimal, currency: Option<Currency>) -> Option<Cents> {
    minor(value, currency.map_or(2, Currency::decimals))
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

    #[test]
    fn minor_units_keep_their_currencys_decimals() {
        for (minor_units, decimals, text) in
            [(1000, 0, "1000"), (1250, 3, "1.250"), (1999, 2, "19.99"), (0, 3, "0.000")]
        {
            let value = numeric_minor(minor_units, decimals);
            assert_eq!(value.to_string(), text);
            assert_eq!(minor(value, decimals).map(Cents::get), Some(minor_units));
        }
        assert_eq!(minor(Decimal::from_str("10.5").unwrap(), 0), None);
        assert_eq!(minor(Decimal::from_str("-1").unwrap(), 2), None);
    }
}
