//! Request bodies: JSON text to checked input, with a precise error for every refusal.
//! Fields are kept raw while parsing so each gets its own error; unknown fields are ignored,
//! duplicated ones refused.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::domain::cart::CartRequest;
use crate::domain::coupon::{MAX_CODE_LEN, normalize_code};
use crate::domain::identity::{self, IdError};
use crate::domain::money::{Cents, parse_minor};
use crate::domain::stack::{Mode, Select};
use crate::http::cart_input::{CartLimits, RawCart};
use crate::http::error::ApiError;

/// A checked `POST /api/coupons/validate` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidateBody<'a> {
    pub codes: Codes<'a>,
    /// Trimmed.
    pub user_id: Cow<'a, str>,
    /// In minor units of the request's currency.
    pub order_value: Cents,
    /// Trimmed.
    pub order_id: Option<Cow<'a, str>>,
    /// API.md §9's fields, when sent.
    pub cart: Option<CartRequest>,
}

/// The codes a body names: one `code`, as before, or several (API.md §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Codes<'a> {
    /// Normalised: trimmed and upper-cased.
    One(Cow<'a, str>),
    Several(Several<'a>),
}

impl Codes<'_> {
    /// The one code, when the body named one.
    pub fn one(&self) -> Option<&str> {
        match self {
            Codes::One(code) => Some(code),
            Codes::Several(_) => None,
        }
    }
}

/// The codes a release names (§10): one `code`, as before, a list, or `allCodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseCodes<'a> {
    One(Cow<'a, str>),
    /// Normalised and distinct.
    Several(Vec<Cow<'a, str>>),
    /// Every code the order's set took.
    All,
}

/// `codes`, and how they are taken together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Several<'a> {
    /// Normalised and distinct, in request order.
    pub codes: Vec<Cow<'a, str>>,
    pub mode: Mode,
    pub select: Select,
    /// `maxTotalDiscount`, in minor units of the request's currency.
    pub max_total: Option<u64>,
}

/// A checked redeem or hold body: the validate fields with `orderId` required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UseBody<'a> {
    pub codes: Codes<'a>,
    pub user_id: Cow<'a, str>,
    pub order_id: Cow<'a, str>,
    pub order_value: Cents,
    /// `ttlSeconds` of a hold, a whole number within `1..=max` when given.
    pub ttl_seconds: Option<u64>,
    /// API.md §9's fields, when sent.
    pub cart: Option<CartRequest>,
}

/// A checked `POST /api/coupons/release` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseBody<'a> {
    pub codes: ReleaseCodes<'a>,
    pub order_id: Cow<'a, str>,
    /// When given, it must be the redeemer's.
    pub user_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawBody<'a> {
    #[serde(borrow)]
    code: Option<&'a RawValue>,
    #[serde(borrow, rename = "userId")]
    user_id: Option<&'a RawValue>,
    #[serde(borrow, rename = "orderValue")]
    order_value: Option<&'a RawValue>,
    #[serde(borrow, rename = "orderId")]
    order_id: Option<&'a RawValue>,
    #[serde(borrow, rename = "ttlSeconds")]
    ttl_seconds: Option<&'a RawValue>,
    #[serde(borrow)]
    currency: Option<&'a RawValue>,
    #[serde(borrow)]
    items: Option<&'a RawValue>,
    #[serde(borrow)]
    shipping: Option<&'a RawValue>,
    #[serde(borrow)]
    codes: Option<&'a RawValue>,
    #[serde(borrow)]
    mode: Option<&'a RawValue>,
    #[serde(borrow)]
    select: Option<&'a RawValue>,
    #[serde(borrow, rename = "maxTotalDiscount")]
    max_total_discount: Option<&'a RawValue>,
    #[serde(borrow, rename = "allCodes")]
    all_codes: Option<&'a RawValue>,
}

impl<'a> RawBody<'a> {
    /// A validate, redeem or hold body: up to 64 KiB with items, 16 KiB without (a body too
    /// large for the one and not JSON is too large, not malformed).
    fn parse_use(body: &'a [u8]) -> Result<RawBody<'a>, ApiError> {
        parse_object(body).map_err(|err| {
            if body.len() > crate::http::routes::MAX_BODY_BYTES {
                ApiError::PayloadTooLarge { limit: crate::http::routes::MAX_BODY_BYTES }
            } else {
                err
            }
        })
    }

    /// The order value and the cart (API.md §9), checked against `limits`.
    fn cart(&self, limits: CartLimits, body_len: usize) -> Result<(Cents, Option<CartRequest>), ApiError> {
        RawCart { currency: self.currency, items: self.items, shipping: self.shipping, order_value: self.order_value }
            .parse(limits, body_len)
    }

    /// `code`, or `codes` with `mode` and `select`. Beside one `code` those two and
    /// `maxTotalDiscount` are ignored, as they were before §10.
    fn codes(&self, limits: CartLimits) -> Result<Codes<'a>, ApiError> {
        let Some(list) = self.codes.filter(|v| v.get() != "null") else { return Ok(Codes::One(code(self.code)?)) };
        if self.code.is_some_and(|v| v.get() != "null") {
            return Err(ApiError::InvalidField { field: "codes", problem: "cannot be sent with code".into() });
        }
        let codes = code_list(list, limits.max_codes)?;
        let mode = spelled(self.mode, "mode", Mode::parse, "all or partial")?.unwrap_or(Mode::All);
        let select = spelled(self.select, "select", Select::parse, "priority or best")?.unwrap_or(Select::Priority);
        Ok(Codes::Several(Several { codes, mode, select, max_total: None }))
    }

    /// `maxTotalDiscount` beside `codes`, in minor units of the request's currency (known once
    /// the cart is parsed).
    fn max_total(&self, codes: &mut Codes<'a>, cart: Option<&CartRequest>, limits: CartLimits) -> Result<(), ApiError> {
        let Codes::Several(several) = codes else { return Ok(()) };
        let Some(raw) = self.max_total_discount.filter(|v| v.get() != "null") else { return Ok(()) };
        let decimals = cart.map_or(limits.default_currency, |c| c.currency).decimals();
        let max = parse_minor(raw.get(), decimals)
            .map_err(|err| ApiError::InvalidField { field: "maxTotalDiscount", problem: err.to_string() })?;
        several.max_total = Some(max);
        Ok(())
    }
}

/// `codes`: 1 to `max` codes, normalised and distinct.
fn code_list(list: &RawValue, max: usize) -> Result<Vec<Cow<'_, str>>, ApiError> {
    let raw: Vec<&RawValue> = serde_json::from_str(list.get())
        .map_err(|_| ApiError::InvalidField { field: "codes", problem: "must be an array of codes".into() })?;
    if raw.is_empty() {
        return Err(ApiError::InvalidField { field: "codes", problem: "must name at least one code".into() });
    }
    if raw.len() > max {
        return Err(ApiError::TooManyCodes { max });
    }
    let mut codes: Vec<Cow<'_, str>> = Vec::with_capacity(raw.len());
    for value in raw {
        let code = checked_code(Some(value), "codes")?;
        if codes.contains(&code) {
            return Err(ApiError::InvalidField { field: "codes", problem: format!("names {code} twice") });
        }
        codes.push(code);
    }
    Ok(codes)
}

/// One of a few words; `null` counts as absent.
fn spelled<T>(
    raw: Option<&RawValue>,
    field: &'static str,
    parse: fn(&str) -> Option<T>,
    words: &str,
) -> Result<Option<T>, ApiError> {
    let invalid = || ApiError::InvalidField { field, problem: format!("must be {words}") };
    optional_string(raw, field).map_err(|_| invalid())?.map(|text| parse(&text).ok_or_else(invalid)).transpose()
}

impl<'a> ValidateBody<'a> {
    pub fn parse(body: &'a [u8], limits: CartLimits) -> Result<ValidateBody<'a>, ApiError> {
        let raw = RawBody::parse_use(body)?;
        let mut codes = raw.codes(limits)?;
        let user_id = id(raw.user_id, "userId")?.ok_or(ApiError::MissingField { field: "userId" })?;
        let (order_value, cart) = raw.cart(limits, body.len())?;
        raw.max_total(&mut codes, cart.as_ref(), limits)?;
        Ok(ValidateBody { codes, user_id, order_value, order_id: id(raw.order_id, "orderId")?, cart })
    }
}

impl<'a> UseBody<'a> {
    /// Parses a redeem or hold body; `max_ttl_seconds` bounds `ttlSeconds`.
    pub fn parse(body: &'a [u8], max_ttl_seconds: u64, limits: CartLimits) -> Result<UseBody<'a>, ApiError> {
        let raw = RawBody::parse_use(body)?;
        let mut codes = raw.codes(limits)?;
        let user_id = id(raw.user_id, "userId")?.ok_or(ApiError::MissingField { field: "userId" })?;
        let (order_value, cart) = raw.cart(limits, body.len())?;
        raw.max_total(&mut codes, cart.as_ref(), limits)?;
        Ok(UseBody {
            codes,
            user_id,
            order_value,
            order_id: id(raw.order_id, "orderId")?.ok_or(ApiError::MissingField { field: "orderId" })?,
            ttl_seconds: ttl(raw.ttl_seconds, max_ttl_seconds)?,
            cart,
        })
    }
}

impl<'a> ReleaseBody<'a> {
    /// Parses a release body; `codes` may name at most `max_codes`.
    pub fn parse(body: &'a [u8], max_codes: usize) -> Result<ReleaseBody<'a>, ApiError> {
        let raw: RawBody<'a> = parse_object(body)?;
        let sent = |v: Option<&RawValue>| v.is_some_and(|v| v.get() != "null");
        let codes = match (sent(raw.code), sent(raw.codes), sent(raw.all_codes)) {
            (_, false, false) => ReleaseCodes::One(code(raw.code)?),
            (false, true, false) => ReleaseCodes::Several(code_list(raw.codes.expect("sent"), max_codes)?),
            (false, false, true) if raw.all_codes.map(RawValue::get) == Some("true") => ReleaseCodes::All,
            (false, false, true) => {
                return Err(ApiError::InvalidField { field: "allCodes", problem: "must be true when sent".into() });
            }
            _ => {
                let problem = "only one of code, codes and allCodes may be sent".into();
                return Err(ApiError::InvalidField { field: "codes", problem });
            }
        };
        Ok(ReleaseBody {
            codes,
            order_id: id(raw.order_id, "orderId")?.ok_or(ApiError::MissingField { field: "orderId" })?,
            user_id: id(raw.user_id, "userId")?,
        })
    }
}

/// Parses a body that must be one JSON object.
pub(crate) fn parse_object<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ApiError::InvalidJson { message: "request body must be a JSON object".into() });
    }
    serde_json::from_slice(body).map_err(|err| ApiError::InvalidJson { message: format!("invalid JSON: {err}") })
}

/// The fields of a JSON object in order, raw; a key given twice is refused, as the derived
/// parsers of the public bodies refuse it.
#[derive(Debug)]
pub(crate) struct Fields<'a>(pub(crate) Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Fields<'a>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Fields<'de>, M::Error> {
                let mut fields: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::new();
                while let Some((key, value)) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    if fields.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom(format!("duplicate field `{key}`")));
                    }
                    fields.push((key, value));
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

impl<'a> Fields<'a> {
    /// The raw value of `name`, if given.
    pub(crate) fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }

    /// Refuses a field not in `known`, so that a typo never silently does nothing.
    pub(crate) fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_ref())) {
            Some((unknown, _)) => Err(ApiError::InvalidJson { message: format!("unknown field {unknown:?}") }),
            None => Ok(()),
        }
    }
}

/// A string field; JSON `null` counts as absent.
pub(crate) fn optional_string<'a>(
    raw: Option<&'a RawValue>,
    field: &'static str,
) -> Result<Option<Cow<'a, str>>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    let invalid = || ApiError::InvalidField { field, problem: "must be a string".into() };
    if !text.starts_with('"') {
        return Err(invalid());
    }
    // Borrow when there are no escapes; otherwise decode into an owned string.
    if !text.bytes().any(|b| b == b'\\') {
        return Ok(Some(Cow::Borrowed(&text[1..text.len() - 1])));
    }
    serde_json::from_str::<String>(text).map(|s| Some(Cow::Owned(s))).map_err(|_| invalid())
}

fn code(raw: Option<&RawValue>) -> Result<Cow<'_, str>, ApiError> {
    checked_code(raw, "code")
}

/// A code, normalised and checked; `field` names it in an error.
fn checked_code<'a>(raw: Option<&'a RawValue>, field: &'static str) -> Result<Cow<'a, str>, ApiError> {
    let text = optional_string(raw, field)?.ok_or(ApiError::MissingField { field })?;
    let normalized = match text {
        Cow::Borrowed(code) => normalize_code(code),
        Cow::Owned(code) => Cow::Owned(normalize_code(&code).into_owned()),
    };
    identity::check_text(&normalized, MAX_CODE_LEN).map_err(|err| id_error(field, err, MAX_CODE_LEN))?;
    Ok(normalized)
}

/// A user or order id: trimmed and checked (`domain::identity`).
pub(crate) fn id<'a>(raw: Option<&'a RawValue>, field: &'static str) -> Result<Option<Cow<'a, str>>, ApiError> {
    let Some(text) = optional_string(raw, field)? else { return Ok(None) };
    let trimmed = match text {
        Cow::Borrowed(text) => {
            Cow::Borrowed(identity::normalize_id(text).map_err(|e| id_error(field, e, identity::MAX_ID_LEN))?)
        }
        Cow::Owned(text) => {
            Cow::Owned(identity::normalize_id(&text).map_err(|e| id_error(field, e, identity::MAX_ID_LEN))?.to_owned())
        }
    };
    Ok(Some(trimmed))
}

fn id_error(field: &'static str, err: IdError, max: usize) -> ApiError {
    let problem = match err {
        IdError::TooLong => format!("must be at most {max} characters"),
        other => other.to_string(),
    };
    ApiError::InvalidField { field, problem }
}

fn ttl(raw: Option<&RawValue>, max: u64) -> Result<Option<u64>, ApiError> {
    let Some(raw) = raw.filter(|r| r.get() != "null") else { return Ok(None) };
    let invalid =
        || ApiError::InvalidField { field: "ttlSeconds", problem: format!("must be a whole number from 1 to {max}") };
    let seconds: u64 = raw.get().parse().map_err(|_| invalid())?;
    if !(1..=max).contains(&seconds) {
        return Err(invalid());
    }
    Ok(Some(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn limits() -> CartLimits {
        CartLimits {
            default_currency: crate::domain::currency::Currency::parse("EUR").unwrap(),
            max_lines: 100,
            max_codes: 5,
            max_body_bytes: 64 * 1024,
        }
    }

    fn ok(body: &str) -> ValidateBody<'_> {
        ValidateBody::parse(body.as_bytes(), limits()).unwrap_or_else(|e| panic!("{body}: {e:?}"))
    }

    #[test]
    fn accepts_well_formed_bodies() {
        let req = ok(r#"{"code":" save10 ","userId":" user_0000001 ","orderValue":1000,"orderId":"ord-1 "}"#);
        assert_eq!(req.codes, Codes::One("SAVE10".into()));
        assert_eq!(req.user_id, "user_0000001");
        assert_eq!(req.order_value, Cents::new(100_000).unwrap());
        assert_eq!(req.order_id.as_deref(), Some("ord-1"));
        let req = ok(r#"{"code":"SAVE10","userId":"u","orderValue":12.5,"orderId":null,"extra":[1,2]}"#);
        assert_eq!(req.order_value, Cents::new(1250).unwrap());
        assert_eq!(req.order_id, None);
        let req = ok(r#"{"code":"SAV\u0045","userId":"u\u00e9 ","orderValue":0}"#);
        assert_eq!(req.codes, Codes::One("SAVE".into()));
        assert_eq!(req.user_id, "ué");
    }

    fn several(body: &str) -> Several<'_> {
        match ok(body).codes {
            Codes::Several(several) => several,
            one => panic!("{body}: {one:?}"),
        }
    }

    #[test]
    fn several_codes_are_normalised_with_their_defaults_and_amounts_in_the_request_currency() {
        let got = several(r#"{"codes":[" shirts20","welcome10 "],"userId":"u","orderValue":10}"#);
        assert_eq!(got.codes, ["SHIRTS20", "WELCOME10"]);
        assert_eq!((got.mode, got.select, got.max_total), (Mode::All, Select::Priority, None));
        let got = several(
            r#"{"codes":["A"],"mode":"partial","select":"best","maxTotalDiscount":12.5,"userId":"u","orderValue":10}"#,
        );
        assert_eq!((got.mode, got.select, got.max_total), (Mode::Partial, Select::Best, Some(1250)));
        let yen = several(r#"{"codes":["A"],"maxTotalDiscount":500,"currency":"JPY","userId":"u","orderValue":900}"#);
        assert_eq!(yen.max_total, Some(500));
        let dinar = several(r#"{"codes":["A"],"maxTotalDiscount":1.25,"currency":"KWD","userId":"u","orderValue":9}"#);
        assert_eq!(dinar.max_total, Some(1250));
        // Beside one code, §10's other fields change nothing, as before §10.
        let one = ok(r#"{"code":"A","mode":"sometimes","maxTotalDiscount":"x","userId":"u","orderValue":1}"#);
        assert_eq!(one.codes, Codes::One("A".into()));
        assert_eq!(ok(r#"{"code":"A","codes":null,"userId":"u","orderValue":1}"#).codes, Codes::One("A".into()));
    }

    #[test]
    fn several_codes_refuse_what_section_10_refuses() {
        let six = r#"{"codes":["A","B","C","D","E","F"],"userId":"u","orderValue":1}"#;
        assert_eq!(ValidateBody::parse(six.as_bytes(), limits()), Err(ApiError::TooManyCodes { max: 5 }));
        assert_eq!(ApiError::TooManyCodes { max: 5 }.code(), "TOO_MANY_CODES");
        for (body, field) in [
            (r#"{"code":"A","codes":["B"],"userId":"u","orderValue":1}"#, "codes"),
            (r#"{"codes":[],"userId":"u","orderValue":1}"#, "codes"),
            (r#"{"codes":["a"," A "],"userId":"u","orderValue":1}"#, "codes"),
            (r#"{"codes":"A","userId":"u","orderValue":1}"#, "codes"),
            (r#"{"codes":["A",7],"userId":"u","orderValue":1}"#, "codes"),
            (r#"{"codes":["A",""],"userId":"u","orderValue":1}"#, "codes"),
            (r#"{"codes":["A",null],"userId":"u","orderValue":1}"#, "codes"),
            (r#"{"codes":{"0":"A"},"userId":"u","orderValue":1}"#, "codes"),
            (r#"{"codes":["A"],"mode":"any","userId":"u","orderValue":1}"#, "mode"),
            (r#"{"codes":["A"],"mode":1,"userId":"u","orderValue":1}"#, "mode"),
            (r#"{"codes":["A"],"select":"PRIORITY","userId":"u","orderValue":1}"#, "select"),
            (r#"{"codes":["A"],"maxTotalDiscount":-1,"userId":"u","orderValue":1}"#, "maxTotalDiscount"),
            (r#"{"codes":["A"],"maxTotalDiscount":1.234,"userId":"u","orderValue":1}"#, "maxTotalDiscount"),
            (r#"{"codes":["A"],"maxTotalDiscount":"5","userId":"u","orderValue":1}"#, "maxTotalDiscount"),
            (
                r#"{"codes":["A"],"maxTotalDiscount":1.5,"currency":"JPY","userId":"u","orderValue":1}"#,
                "maxTotalDiscount",
            ),
        ] {
            let err = ValidateBody::parse(body.as_bytes(), limits()).unwrap_err();
            assert!(
                matches!(&err, ApiError::MissingField { field: f } | ApiError::InvalidField { field: f, .. } if *f == field),
                "{body}: {err:?}"
            );
        }
    }

    #[test]
    fn redeem_needs_an_order_and_release_needs_code_and_order() {
        let redeem = UseBody::parse(br#"{"code":"a","userId":"u","orderValue":1}"#, 3600, limits());
        assert_eq!(redeem, Err(ApiError::MissingField { field: "orderId" }));
        let release = ReleaseBody::parse(br#"{"code":" a ","orderId":"o-1","userId":" u "}"#, 5).unwrap();
        assert_eq!(
            (release.codes, release.order_id.as_ref(), release.user_id.as_deref()),
            (ReleaseCodes::One("A".into()), "o-1", Some("u"))
        );
        let several = ReleaseBody::parse(br#"{"codes":["a","b"],"orderId":"o-1"}"#, 5).unwrap();
        assert_eq!(several.codes, ReleaseCodes::Several(vec!["A".into(), "B".into()]));
        let all = ReleaseBody::parse(br#"{"allCodes":true,"orderId":"o-1"}"#, 5).unwrap();
        assert_eq!(all.codes, ReleaseCodes::All);
        assert_eq!(
            ReleaseBody::parse(br#"{"codes":["a","b"],"orderId":"o-1"}"#, 1),
            Err(ApiError::TooManyCodes { max: 1 })
        );
        for (body, field) in [
            (r#"{"orderId":"o"}"#, "code"),
            (r#"{"code":"A"}"#, "orderId"),
            (r#"{"code":"A","orderId":""}"#, "orderId"),
            (r#"{"code":"A","orderId":"  "}"#, "orderId"),
            (r#"{"code":"A","orderId":"o","userId":"\u0007"}"#, "userId"),
            (r#"{"code":"A","codes":["B"],"orderId":"o"}"#, "codes"),
            (r#"{"codes":["B"],"allCodes":true,"orderId":"o"}"#, "codes"),
            (r#"{"allCodes":false,"orderId":"o"}"#, "allCodes"),
            (r#"{"allCodes":"yes","orderId":"o"}"#, "allCodes"),
            (r#"{"codes":[],"orderId":"o"}"#, "codes"),
        ] {
            let err = ReleaseBody::parse(body.as_bytes(), 5).unwrap_err();
            assert!(
                matches!(err, ApiError::MissingField { field: f } | ApiError::InvalidField { field: f, .. } if f == field),
                "{body}: {err:?}"
            );
        }
    }

    #[test]
    fn object_fields_refuse_duplicates() {
        let fields: Fields<'_> = parse_object(br#"{"a":1,"b":"x"}"#).unwrap();
        assert_eq!(fields.get("b").map(|v| v.get()), Some("\"x\""));
        assert!(fields.only(&["a"]).is_err());
        let twice = parse_object::<Fields<'_>>(br#"{"a":1,"a":2}"#).unwrap_err();
        assert!(matches!(twice, ApiError::InvalidJson { message } if message.contains("duplicate")));
    }

    #[test]
    fn hold_ttls() {
        let body =
            |ttl: &str| format!(r#"{{"code":"A","userId":"u","orderValue":1,"orderId":"o","ttlSeconds":{ttl}}}"#);
        for (ttl, expected) in [("1", Some(1)), ("3600", Some(3600)), ("null", None)] {
            assert_eq!(UseBody::parse(body(ttl).as_bytes(), 3600, limits()).unwrap().ttl_seconds, expected, "{ttl}");
        }
        for ttl in ["0", "-1", "1.5", "3601", "\"60\"", "1e2", "true"] {
            let err = UseBody::parse(body(ttl).as_bytes(), 3600, limits()).unwrap_err();
            assert!(matches!(err, ApiError::InvalidField { field: "ttlSeconds", .. }), "{ttl}: {err:?}");
        }
    }

    #[test]
    fn refuses_malformed_bodies_with_the_right_error() {
        let long_code = format!(r#"{{"code":"{}","userId":"u","orderValue":1}}"#, "A".repeat(200));
        let long_user = format!(r#"{{"code":"A","userId":"{}","orderValue":1}}"#, "u".repeat(129));
        let deep = format!(r#"{{"code":"A","userId":"u","orderValue":{}{}}}"#, "[".repeat(5_000), "]".repeat(5_000));
        let digits = format!(r#"{{"code":"A","userId":"u","orderValue":{}}}"#, "9".repeat(400));
        let cases: Vec<(&str, &str, Option<&str>)> = vec![
            ("", "INVALID_JSON", None),
            ("not json", "INVALID_JSON", None),
            ("[]", "INVALID_JSON", None),
            (r#"[{"code":"A"}]"#, "INVALID_JSON", None),
            ("\"text\"", "INVALID_JSON", None),
            (r#"{"code":"A","userId":"u","orderValue":1"#, "INVALID_JSON", None),
            (r#"{"code":"A","code":"B","userId":"u","orderValue":1}"#, "INVALID_JSON", None),
            (r#"{"userId":"u","orderValue":1}"#, "MISSING_FIELD", Some("code")),
            (r#"{"code":null,"userId":"u","orderValue":1}"#, "MISSING_FIELD", Some("code")),
            (r#"{"code":"A","orderValue":1}"#, "MISSING_FIELD", Some("userId")),
            (r#"{"code":"A","userId":"u"}"#, "MISSING_FIELD", Some("orderValue")),
            (r#"{"code":"A","userId":"u","orderValue":null}"#, "MISSING_FIELD", Some("orderValue")),
            (r#"{"code":"","userId":"u","orderValue":1}"#, "INVALID_FIELD", Some("code")),
            (r#"{"code":"   ","userId":"u","orderValue":1}"#, "INVALID_FIELD", Some("code")),
            (&long_code, "INVALID_FIELD", Some("code")),
            (r#"{"code":"A\u0000B","userId":"u","orderValue":1}"#, "INVALID_FIELD", Some("code")),
            (r#"{"code":7,"userId":"u","orderValue":1}"#, "INVALID_FIELD", Some("code")),
            (r#"{"code":"A","userId":"","orderValue":1}"#, "INVALID_FIELD", Some("userId")),
            (r#"{"code":"A","userId":" ","orderValue":1}"#, "INVALID_FIELD", Some("userId")),
            (r#"{"code":"A","userId":42,"orderValue":1}"#, "INVALID_FIELD", Some("userId")),
            (&long_user, "INVALID_FIELD", Some("userId")),
            (r#"{"code":"A","userId":"u","orderValue":"100"}"#, "INVALID_FIELD", Some("orderValue")),
            (r#"{"code":"A","userId":"u","orderValue":-1}"#, "INVALID_FIELD", Some("orderValue")),
            (r#"{"code":"A","userId":"u","orderValue":10.999}"#, "INVALID_FIELD", Some("orderValue")),
            (r#"{"code":"A","userId":"u","orderValue":1e400}"#, "INVALID_FIELD", Some("orderValue")),
            (r#"{"code":"A","userId":"u","orderValue":true}"#, "INVALID_FIELD", Some("orderValue")),
            (r#"{"code":"A","userId":"u","orderValue":[1]}"#, "INVALID_FIELD", Some("orderValue")),
            (&digits, "INVALID_FIELD", Some("orderValue")),
            (&deep, "INVALID_FIELD", Some("orderValue")),
            (r#"{"code":"A","userId":"u","orderValue":1,"orderId":""}"#, "INVALID_FIELD", Some("orderId")),
            (r#"{"code":"A","userId":"u","orderValue":1,"orderId":5}"#, "INVALID_FIELD", Some("orderId")),
        ];
        for (body, code, field) in cases {
            let err = ValidateBody::parse(body.as_bytes(), limits()).expect_err(&body[..body.len().min(80)]);
            assert_eq!(err.code(), code, "{}: {err}", &body[..body.len().min(80)]);
            let got_field = match &err {
                ApiError::MissingField { field } | ApiError::InvalidField { field, .. } => Some(*field),
                _ => None,
            };
            assert_eq!(got_field, field, "{}", &body[..body.len().min(80)]);
        }
    }
}
