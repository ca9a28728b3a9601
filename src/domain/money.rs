//! Money as an exact integer number of cents, parsed from JSON number text without floats.

use std::fmt;

/// The largest amount the service accepts anywhere: 1,000,000,000.00 in major units.
///
/// Large enough for any real order, small enough that every product of two amounts and a
/// percentage fits in a `u128` with room to spare, and that a typo of a few extra digits is
/// refused instead of carried through.
pub const MAX_CENTS: u64 = 100_000_000_000;

/// A non-negative amount of money in cents (hundredths of the major unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Cents(u64);

/// Why a piece of text is not an acceptable amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("must be a number")]
    NotANumber,
    #[error("must not be negative")]
    Negative,
    #[error("must have at most {0} decimal places")]
    TooManyDecimals(u8),
    #[error("must not exceed 1000000000")]
    TooLarge,
}

impl Cents {
    /// Zero cents.
    pub const ZERO: Cents = Cents(0);

    /// An amount from a whole number of cents, refused above [`MAX_CENTS`].
    pub fn new(cents: u64) -> Result<Cents, MoneyError> {
        if cents > MAX_CENTS {
            return Err(MoneyError::TooLarge);
        }
        Ok(Cents(cents))
    }

    /// The amount in cents.
    pub fn get(self) -> u64 {
        self.0
    }

    /// Parses the text of a JSON number (`1000`, `12.5`, `0.99`, `1e3`) exactly, in cents.
    ///
    /// The value must be representable in whole cents: `12.50` and `1.5e1` are accepted,
    /// `12.345` is refused rather than rounded. Exponents are applied to the digit string,
    /// never through a float, so `1e400` is "too large" rather than infinity.
    pub fn parse_json_number(text: &str) -> Result<Cents, MoneyError> {
        parse_minor(text, 2).map(Cents)
    }
}

/// Parses the text of a JSON number exactly into minor units of a currency whose minor unit
/// is 10^-`decimals` (0, 2 or 3): at most that many decimals, at most 1,000,000,000 in
/// major units.
pub fn parse_minor(text: &str, decimals: u8) -> Result<u64, MoneyError> {
    let bytes = text.as_bytes();
    let mut idx = 0;
    if bytes.first() == Some(&b'-') {
        // Checked after the grammar so that "-x" is "not a number" rather than "negative".
        idx = 1;
    }
    let int_start = idx;
    while idx < bytes.len() && bytes[idx].is_ascii_digit() {
        idx += 1;
    }
    let int_digits = &bytes[int_start..idx];
    if int_digits.is_empty() || (int_digits.len() > 1 && int_digits[0] == b'0') {
        return Err(MoneyError::NotANumber);
    }
    let mut frac_digits: &[u8] = &[];
    if idx < bytes.len() && bytes[idx] == b'.' {
        let frac_start = idx + 1;
        idx = frac_start;
        while idx < bytes.len() && bytes[idx].is_ascii_digit() {
            idx += 1;
        }
        frac_digits = &bytes[frac_start..idx];
        if frac_digits.is_empty() {
            return Err(MoneyError::NotANumber);
        }
    }
    let mut exponent: i64 = 0;
    if idx < bytes.len() && (bytes[idx] == b'e' || bytes[idx] == b'E') {
        idx += 1;
        let negative_exp = match bytes.get(idx) {
            Some(b'-') => {
                idx += 1;
                true
            }
            Some(b'+') => {
                idx += 1;
                false
            }
            _ => false,
        };
        let exp_start = idx;
        while idx < bytes.len() && bytes[idx].is_ascii_digit() {
            // Saturate: anything past a million digits is absurd either way.
            exponent = (exponent * 10 + i64::from(bytes[idx] - b'0')).min(1_000_000);
            idx += 1;
        }
        if idx == exp_start {
            return Err(MoneyError::NotANumber);
        }
        if negative_exp {
            exponent = -exponent;
        }
    }
    if idx != bytes.len() {
        return Err(MoneyError::NotANumber);
    }

    // The value is digits × 10^(exponent − frac_len); in cents, × 10^2 more.
    let digits = int_digits.iter().chain(frac_digits).copied();
    let significant: Vec<u8> = digits.skip_while(|&d| d == b'0').collect();
    if significant.is_empty() {
        return Ok(0);
    }
    if int_start == 1 {
        return Err(MoneyError::Negative);
    }
    let shift = exponent + i64::from(decimals) - frac_digits.len() as i64;
    let kept = if shift >= 0 {
        &significant[..]
    } else {
        let dropped = usize::try_from(-shift).unwrap_or(usize::MAX);
        if dropped >= significant.len() {
            return Err(MoneyError::TooManyDecimals(decimals));
        }
        let (kept, tail) = significant.split_at(significant.len() - dropped);
        if tail.iter().any(|&d| d != b'0') {
            return Err(MoneyError::TooManyDecimals(decimals));
        }
        kept
    };
    let zeros = usize::try_from(shift.max(0)).unwrap_or(usize::MAX);
    // The largest amount has 10 + `decimals` digits; anything longer is too large
    // without computing it.
    if kept.len().saturating_add(zeros) > 10 + usize::from(decimals) {
        return Err(MoneyError::TooLarge);
    }
    let mut cents: u64 = 0;
    for &d in kept {
        cents = cents * 10 + u64::from(d - b'0');
    }
    for _ in 0..zeros {
        cents *= 10;
    }
    if cents > max_minor(decimals) {
        return Err(MoneyError::TooLarge);
    }
    Ok(cents)
}

/// 1,000,000,000 major units in minor units of 10^-`decimals`.
pub fn max_minor(decimals: u8) -> u64 {
    1_000_000_000 * 10u64.pow(u32::from(decimals))
}

impl Cents {
    /// `self − other`, floored at zero.
    pub fn saturating_sub(self, other: Cents) -> Cents {
        Cents(self.0.saturating_sub(other.0))
    }
}

impl TryFrom<u64> for Cents {
    type Error = MoneyError;

    fn try_from(cents: u64) -> Result<Cents, MoneyError> {
        Cents::new(cents)
    }
}

impl From<Cents> for u64 {
    fn from(amount: Cents) -> u64 {
        amount.0
    }
}

impl fmt::Display for Cents {
    /// The shortest exact decimal in major units: `900`, `12.5`, `0.99`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (major, minor) = (self.0 / 100, self.0 % 100);
        match minor {
            0 => write!(f, "{major}"),
            m if m % 10 == 0 => write!(f, "{major}.{}", m / 10),
            m => write!(f, "{major}.{m:02}"),
        }
    }
}

/// A share in hundredths of a percent: 100% is 10_000, 12.5% is 1_250. Always in (0, 100%].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent(u32);

/// Hundredths of a percent in 100%.
pub const FULL_PERCENT: u32 = 10_000;

impl Percent {
    /// A percentage from hundredths of a percent, refused outside (0, 100%].
    pub fn from_hundredths(hundredths: u64) -> Option<Percent> {
        u32::try_from(hundredths).ok().filter(|h| (1..=FULL_PERCENT).contains(h)).map(Percent)
    }

    /// Hundredths of a percent.
    pub(crate) fn hundredths(self) -> u32 {
        self.0
    }

    /// `amount × self`, rounded half-up to the cent.
    pub fn of(self, amount: Cents) -> Cents {
        // At most 100% of an amount that is itself within bounds.
        Cents(self.of_minor(amount.get()))
    }

    /// `amount × self` for an amount in minor units of any currency, rounded half-up to the
    /// minor unit: `round(n / d) = ⌊(2n + d) / 2d⌋` (API.md §9), never above `amount`.
    pub fn of_minor(self, amount: u64) -> u64 {
        let scaled = u128::from(amount) * u128::from(self.0);
        let full = u128::from(FULL_PERCENT);
        u64::try_from((2 * scaled + full) / (2 * full)).unwrap_or(amount)
    }
}

impl fmt::Display for Percent {
    /// The shortest exact decimal: `10`, `12.5`, `0.01`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Cents(u64::from(self.0)).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<u64, MoneyError>) {
        let got = Cents::parse_json_number(text).map(Cents::get);
        assert_eq!(got, expected, "parsing {text:?}");
    }

    #[test]
    fn parses_exact_amounts() {
        for (text, cents) in [
            ("0", 0),
            ("0.0", 0),
            ("0.00", 0),
            ("1", 100),
            ("1000", 100_000),
            ("12.5", 1250),
            ("12.50", 1250),
            ("12.500", 1250),
            ("0.99", 99),
            ("0.01", 1),
            ("1e3", 100_000),
            ("1E3", 100_000),
            ("1e+3", 100_000),
            ("1.5e1", 1500),
            ("125e-2", 125),
            ("1e-2", 1),
            ("0e5", 0),
            ("-0", 0),
            ("-0.00", 0),
            ("1000000000", MAX_CENTS),
            ("1000000000.00", MAX_CENTS),
            ("999999999.99", MAX_CENTS - 1),
        ] {
            check(text, Ok(cents));
        }
    }

    #[test]
    fn refuses_what_cannot_be_exact_or_sane() {
        use MoneyError::*;
        for (text, err) in [
            ("", NotANumber),
            ("-", NotANumber),
            ("abc", NotANumber),
            ("\"10\"", NotANumber),
            ("01", NotANumber),
            ("1.", NotANumber),
            (".5", NotANumber),
            ("1e", NotANumber),
            ("1e+", NotANumber),
            ("1.0.0", NotANumber),
            ("1 ", NotANumber),
            ("NaN", NotANumber),
            ("Infinity", NotANumber),
            ("-1", Negative),
            ("-0.01", Negative),
            ("12.345", TooManyDecimals(2)),
            ("0.001", TooManyDecimals(2)),
            ("1e-3", TooManyDecimals(2)),
            ("1e-1000000", TooManyDecimals(2)),
            ("1000000000.01", TooLarge),
            ("1000000001", TooLarge),
            ("1e10", TooLarge),
            ("1e400", TooLarge),
            ("1e99999999999999999999", TooLarge),
            (&"9".repeat(400), TooLarge),
        ] {
            check(text, Err(err));
        }
    }

    #[test]
    fn long_but_exact_digit_strings_are_accepted() {
        check(&format!("5.{}", "0".repeat(300)), Ok(500));
        check(&format!("{}e-300", "1".to_owned() + &"0".repeat(302)), Ok(10_000));
        check(&format!("0.0{}", "0".repeat(300)), Ok(0));
    }

    #[test]
    fn displays_shortest_exact_decimal() {
        for (cents, text) in [
            (0, "0"),
            (1, "0.01"),
            (10, "0.1"),
            (99, "0.99"),
            (100, "1"),
            (1250, "12.5"),
            (1205, "12.05"),
            (100_000, "1000"),
        ] {
            assert_eq!(Cents::new(cents).unwrap().to_string(), text);
        }
    }

    #[test]
    fn minor_units_follow_the_currency_exponent() {
        let cases: &[(&str, u8, Result<u64, MoneyError>)] = &[
            ("1000", 0, Ok(1000)),
            ("1000.5", 0, Err(MoneyError::TooManyDecimals(0))),
            ("1e3", 0, Ok(1000)),
            ("12.345", 3, Ok(12_345)),
            ("12.3456", 3, Err(MoneyError::TooManyDecimals(3))),
            ("1000000000", 3, Ok(1_000_000_000_000)),
            ("1000000000.001", 3, Err(MoneyError::TooLarge)),
            ("1000000001", 0, Err(MoneyError::TooLarge)),
            ("0.10", 2, Ok(10)),
        ];
        for (text, decimals, expected) in cases {
            assert_eq!(parse_minor(text, *decimals), *expected, "{text} with {decimals} decimals");
        }
    }

    #[test]
    fn display_round_trips_through_parse() {
        for cents in (0..10_000).chain([MAX_CENTS - 1, MAX_CENTS]) {
            let amount = Cents::new(cents).unwrap();
            assert_eq!(Cents::parse_json_number(&amount.to_string()), Ok(amount));
        }
    }

    #[test]
    fn percentages_round_half_up_and_stay_in_range() {
        let pct = |h| Percent::from_hundredths(h).unwrap();
        for (hundredths, order, expected) in [
            (1000, 100_000, 10_000), // 10% of 1000.00
            (1000, 0, 0),
            (1000, 5, 1),       // 0.5 cent rounds up
            (1000, 4, 0),       // 0.4 cent rounds down
            (1000, 15, 2),      // 1.5 cents
            (1000, 14, 1),      // 1.4 cents
            (1250, 1_999, 250), // 12.5% of 19.99 = 2.49875
            (3333, 100, 33),    // 33.33% of 1.00
            (5000, 1, 1),       // half a cent rounds up
            (10_000, 12_345, 12_345),
            (1, 100_000, 10), // 0.01% of 1000.00
            (1, 4_999, 0),
            (1, 5_000, 1),
            (10_000, MAX_CENTS, MAX_CENTS),
        ] {
            assert_eq!(pct(hundredths).of(Cents(order)), Cents(expected), "{hundredths} of {order}");
        }
        for bad in [0, 10_001, u64::MAX] {
            assert_eq!(Percent::from_hundredths(bad), None, "{bad}");
        }
        assert_eq!(pct(1250).to_string(), "12.5");
        assert_eq!(pct(10_000).to_string(), "100");
    }
}
