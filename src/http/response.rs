//! Building responses: JSON bodies, money as exact decimal numbers, the error body.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use crate::domain::money::Cents;
use crate::domain::rules::{Decision, Reason};
use crate::http::error::ApiError;

/// The response type of every handler.
pub type HttpResponse = Response<Full<Bytes>>;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A JSON response.
pub fn json(status: StatusCode, body: &impl Serialize) -> HttpResponse {
    let bytes = serde_json::to_vec(body).expect("response types serialise");
    with_body(status, JSON, bytes.into())
}

/// A response with a body of the given content type.
pub fn with_body(status: StatusCode, content_type: HeaderValue, body: Bytes) -> HttpResponse {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}

/// The JSON error response for `err`.
pub fn error(err: &ApiError) -> HttpResponse {
    let mut response = with_body(err.status(), JSON, err.body().into());
    match err {
        ApiError::MethodNotAllowed { allow } => {
            response.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
        }
        ApiError::NotReady
        | ApiError::DatabaseUnavailable
        | ApiError::JournalUnavailable
        | ApiError::Overloaded
        | ApiError::Timeout => {
            response.headers_mut().insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        ApiError::TooManyFailedLookups { retry_after_secs } => {
            response.headers_mut().insert(hyper::header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        ApiError::Unauthorized => {
            response.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ => {}
    }
    response
}

/// Serialises money as a JSON number with at most 2 decimals, exactly (`900`, `12.5`).
pub fn money<S: Serializer>(amount: &Cents, serializer: S) -> Result<S::Ok, S::Error> {
    let raw = RawValue::from_string(amount.to_string()).map_err(serde::ser::Error::custom)?;
    raw.serialize(serializer)
}

/// The body of a validate answer: `{"valid", "code", "reason", "discount", "finalAmount"}`.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidateResponse<'a> {
    pub valid: bool,
    pub code: &'a str,
    #[serde(serialize_with = "reason")]
    pub reason: Option<Reason>,
    #[serde(serialize_with = "money")]
    pub discount: Cents,
    #[serde(serialize_with = "money")]
    pub final_amount: Cents,
}

impl<'a> ValidateResponse<'a> {
    /// The answer for `decision` on an order of `order_value`: a rejection discounts nothing.
    pub fn new(code: &'a str, order_value: Cents, decision: Decision) -> ValidateResponse<'a> {
        let (reason, discount, final_amount) = match decision {
            Decision::Valid { discount, final_amount } => (None, discount, final_amount),
            Decision::Rejected(reason) => (Some(reason), Cents::ZERO, order_value),
        };
        ValidateResponse { valid: reason.is_none(), code, reason, discount, final_amount }
    }
}

fn reason<S: Serializer>(reason: &Option<Reason>, serializer: S) -> Result<S::Ok, S::Error> {
    reason.map(Reason::as_str).serialize(serializer)
}
