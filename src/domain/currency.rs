//! Currencies as API.md §9 takes them: an ISO 4217 code whose minor unit is 10^0, 10^-2 or
//! 10^-3 of the major, and amounts in those minor units written as exact decimals.

use std::fmt;

/// A currency the service accepts, with the decimals of its minor unit; its ISO code in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency {
    code: [u8; 3],
    decimals: u8,
}

/// ISO 4217 codes whose minor unit is the major unit itself.
const NO_DECIMALS: &[&str] = &[
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF",
    "XPF",
];
/// ISO 4217 codes with a minor unit of a thousandth. (These two lists are also the
/// `coupon_usage_decimals` function of the schema; a test holds them equal.)
const THREE_DECIMALS: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
/// ISO 4217 codes with a minor unit of a hundredth (active codes of circulating currencies).
const TWO_DECIMALS: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN", "BMD", "BND",
    "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHF", "CNY", "COP", "CRC", "CUP", "CVE", "CZK",
    "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GTQ", "GYD",
    "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IRR", "JMD", "KES", "KGS", "KHR", "KPW", "KYD", "KZT", "LAK",
    "LBP", "LKR", "LRD", "LSL", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN",
    "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "QAR", "RON",
    "RSD", "RUB", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP",
    "SZL", "THB", "TJS", "TMT", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "USD", "UYU", "UZS", "VES", "WST", "XCD",
    "YER", "ZAR", "ZMW", "ZWL",
];

impl Currency {
    /// The currency of an ISO 4217 code (upper-case), if its minor unit is one the service
    /// takes.
    pub fn parse(code: &str) -> Option<Currency> {
        let decimals = if TWO_DECIMALS.contains(&code) {
            2
        } else if NO_DECIMALS.contains(&code) {
            0
        } else if THREE_DECIMALS.contains(&code) {
            3
        } else {
            return None;
        };
        let bytes: [u8; 3] = code.as_bytes().try_into().ok()?;
        Some(Currency { code: bytes, decimals })
    }

    /// Every currency the service takes.
    pub fn all() -> impl Iterator<Item = Currency> {
        NO_DECIMALS.iter().chain(TWO_DECIMALS).chain(THREE_DECIMALS).filter_map(|code| Currency::parse(code))
    }

    pub fn code(&self) -> &str {
        std::str::from_utf8(&self.code).unwrap_or("???")
    }

    /// Decimals of the minor unit: 0, 2 or 3.
    pub fn decimals(self) -> u8 {
        self.decimals
    }

    /// An amount in minor units as the shortest exact decimal in major units: `12.5`, `900`.
    pub fn amount(self, minor: u64) -> Amount {
        Amount { minor, decimals: self.decimals }
    }
}

impl TryFrom<String> for Currency {
    type Error = String;

    fn try_from(code: String) -> Result<Currency, String> {
        Currency::parse(&code).ok_or_else(|| format!("{code:?} is not a currency with 0, 2 or 3 decimals"))
    }
}

impl From<Currency> for String {
    fn from(currency: Currency) -> String {
        currency.code().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// An amount in minor units with its decimals, written as JSON writes a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount {
    minor: u64,
    decimals: u8,
}

impl Amount {
    /// The amount in minor units.
    pub fn minor(self) -> u64 {
        self.minor
    }

    /// Minor units in a major unit: 1, 100 or 1000.
    pub fn scale(self) -> u64 {
        10u64.pow(u32::from(self.decimals))
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scale = 10u64.pow(u32::from(self.decimals));
        let (major, mut fraction) = (self.minor / scale, self.minor % scale);
        if fraction == 0 {
            return write!(f, "{major}");
        }
        let mut digits = usize::from(self.decimals);
        while fraction % 10 == 0 {
            fraction /= 10;
            digits -= 1;
        }
        write!(f, "{major}.{fraction:0digits$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::money::parse_minor;

    #[test]
    fn codes_and_their_minor_units() {
        let cases: &[(&str, Option<u8>)] = &[
            ("EUR", Some(2)),
            ("USD", Some(2)),
            ("JPY", Some(0)),
            ("KWD", Some(3)),
            ("CLF", None), // four decimals: not taken
            ("eur", None), // codes compare exactly
            ("XXX", None),
            ("EURO", None),
            ("", None),
        ];
        for (code, decimals) in cases {
            assert_eq!(Currency::parse(code).map(Currency::decimals), *decimals, "{code}");
        }
        assert_eq!(Currency::parse("KWD").map(|c| c.to_string()).as_deref(), Some("KWD"));
    }

    #[test]
    fn amounts_are_written_exactly_and_read_back() {
        let cases: &[(&str, u64, &str)] = &[
            ("EUR", 1250, "12.5"),
            ("EUR", 1205, "12.05"),
            ("EUR", 900, "9"),
            ("JPY", 210, "210"),
            ("KWD", 1234, "1.234"),
            ("KWD", 1200, "1.2"),
            ("EUR", 0, "0"),
        ];
        for &(code, minor, text) in cases {
            let currency = Currency::parse(code).expect("known");
            assert_eq!(currency.amount(minor).to_string(), text);
            assert_eq!(parse_minor(text, currency.decimals()), Ok(minor));
        }
    }
}
