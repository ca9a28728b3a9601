//! Request bodies: JSON text to checked domain input, with a precise error for every refusal.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::domain::coupon::normalize_code;
use crate::domain::money::{Cents, MoneyError};
use crate::http::error::ApiError;

/// Longest accepted code, after trimming.
pub const MAX_CODE_LEN: usize = 64;
/// Longest accepted user or order id.
pub const MAX_ID_LEN: usize = 128;

/// A checked `POST /api/coupons/validate` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidateRequest<'a> {
    /// Normalised: trimmed and upper-cased.
    pub code: Cow<'a, str>,
    pub user_id: Cow<'a, str>,
    pub order_value: Cents,
    pub order_id: Option<Cow<'a, str>>,
}

/// Fields are kept raw so each gets its own error; unknown fields are ignored.
#[derive(Deserialize)]
struct RawValidate<'a> {
    #[serde(borrow)]
    code: Option<&'a RawValue>,
    #[serde(borrow, rename = "userId")]
    user_id: Option<&'a RawValue>,
    #[serde(borrow, rename = "orderValue")]
    order_value: Option<&'a RawValue>,
    #[serde(borrow, rename = "orderId")]
    order_id: Option<&'a RawValue>,
}

impl<'a> ValidateRequest<'a> {
    /// Parses and checks a body.
    pub fn parse(body: &'a [u8]) -> Result<ValidateRequest<'a>, ApiError> {
        let raw: RawValidate<'a> = parse_object(body)?;
        let code = normalized_code(required_string(raw.code, "code")?);
        check_text(&code, "code", MAX_CODE_LEN)?;
        let user_id = required_string(raw.user_id, "userId")?;
        check_text(&user_id, "userId", MAX_ID_LEN)?;
        let order_value = money(raw.order_value, "orderValue")?;
        let order_id = optional_string(raw.order_id, "orderId")?;
        if let Some(order_id) = &order_id {
            check_text(order_id, "orderId", MAX_ID_LEN)?;
        }
        Ok(ValidateRequest { code, user_id, order_value, order_id })
    }

    /// Parses a redeem body: the validate fields with `orderId` required.
    pub fn parse_redeem(body: &'a [u8]) -> Result<ValidateRequest<'a>, ApiError> {
        let request = ValidateRequest::parse(body)?;
        if request.order_id.is_none() {
            return Err(ApiError::MissingField { field: "orderId" });
        }
        Ok(request)
    }
}

/// A checked `POST /api/coupons/release` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRequest<'a> {
    /// Normalised: trimmed and upper-cased.
    pub code: Cow<'a, str>,
    pub order_id: Cow<'a, str>,
}

#[derive(Deserialize)]
struct RawRelease<'a> {
    #[serde(borrow)]
    code: Option<&'a RawValue>,
    #[serde(borrow, rename = "orderId")]
    order_id: Option<&'a RawValue>,
}

impl<'a> ReleaseRequest<'a> {
    /// Parses and checks a body.
    pub fn parse(body: &'a [u8]) -> Result<ReleaseRequest<'a>, ApiError> {
        let raw: RawRelease<'a> = parse_object(body)?;
        let code = normalized_code(required_string(raw.code, "code")?);
        check_text(&code, "code", MAX_CODE_LEN)?;
        let order_id = required_string(raw.order_id, "orderId")?;
        check_text(&order_id, "orderId", MAX_ID_LEN)?;
        Ok(ReleaseRequest { code, order_id })
    }
}

fn normalized_code(code: Cow<'_, str>) -> Cow<'_, str> {
    match code {
        Cow::Borrowed(code) => normalize_code(code),
        Cow::Owned(code) => Cow::Owned(normalize_code(&code).into_owned()),
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

fn required_string<'a>(raw: Option<&'a RawValue>, field: &'static str) -> Result<Cow<'a, str>, ApiError> {
    optional_string(raw, field)?.ok_or(ApiError::MissingField { field })
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
    if !text.contains('\\') {
        return Ok(Some(Cow::Borrowed(&text[1..text.len() - 1])));
    }
    serde_json::from_str::<String>(text).map(|s| Some(Cow::Owned(s))).map_err(|_| invalid())
}

pub(crate) fn check_text(value: &str, field: &'static str, max_len: usize) -> Result<(), ApiError> {
    let problem = if value.is_empty() {
        "must not be empty".to_owned()
    } else if value.chars().count() > max_len {
        format!("must be at most {max_len} characters")
    } else if value.chars().any(char::is_control) {
        "must not contain control characters".to_owned()
    } else {
        return Ok(());
    };
    Err(ApiError::InvalidField { field, problem })
}

fn money(raw: Option<&RawValue>, field: &'static str) -> Result<Cents, ApiError> {
    let raw = raw.ok_or(ApiError::MissingField { field })?;
    if raw.get() == "null" {
        return Err(ApiError::MissingField { field });
    }
    Cents::parse_json_number(raw.get())
        .map_err(|err: MoneyError| ApiError::InvalidField { field, problem: err.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> ValidateRequest<'_> {
        ValidateRequest::parse(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e:?}"))
    }

    #[test]
    fn accepts_well_formed_bodies() {
        let req = ok(r#"{"code":" save10 ","userId":"user_0000001","orderValue":1000,"orderId":"ord-1"}"#);
        assert_eq!(req.code, "SAVE10");
        assert_eq!(req.user_id, "user_0000001");
        assert_eq!(req.order_value, Cents::new(100_000).unwrap());
        assert_eq!(req.order_id.as_deref(), Some("ord-1"));
        let req = ok(r#"{"code":"SAVE10","userId":"u","orderValue":12.5,"orderId":null,"extra":[1,2]}"#);
        assert_eq!(req.order_value, Cents::new(1250).unwrap());
        assert_eq!(req.order_id, None);
        let req = ok(r#"{"code":"SAV\u0045","userId":"u\u00e9","orderValue":0}"#);
        assert_eq!(req.code, "SAVE");
        assert_eq!(req.user_id, "ué");
    }

    #[test]
    fn redeem_needs_an_order_and_release_needs_code_and_order() {
        let redeem = ValidateRequest::parse_redeem(br#"{"code":"a","userId":"u","orderValue":1}"#);
        assert_eq!(redeem, Err(ApiError::MissingField { field: "orderId" }));
        let release = ReleaseRequest::parse(br#"{"code":" a ","orderId":"o-1"}"#).unwrap();
        assert_eq!((release.code.as_ref(), release.order_id.as_ref()), ("A", "o-1"));
        for (body, field) in [
            (r#"{"orderId":"o"}"#, "code"),
            (r#"{"code":"A"}"#, "orderId"),
            (r#"{"code":"A","orderId":""}"#, "orderId"),
        ] {
            let err = ReleaseRequest::parse(body.as_bytes()).unwrap_err();
            assert!(
                matches!(err, ApiError::MissingField { field: f } | ApiError::InvalidField { field: f, .. } if f == field),
                "{body}: {err:?}"
            );
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
            let err = ValidateRequest::parse(body.as_bytes()).expect_err(&body[..body.len().min(80)]);
            assert_eq!(err.code(), code, "{}: {err}", &body[..body.len().min(80)]);
            let got_field = match &err {
                ApiError::MissingField { field } | ApiError::InvalidField { field, .. } => Some(*field),
                _ => None,
            };
            assert_eq!(got_field, field, "{}", &body[..body.len().min(80)]);
        }
    }
}
