//! Building responses: JSON bodies, money as exact decimal numbers.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use crate::domain::money::Cents;

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

/// Serialises money as a JSON number with at most 2 decimals, exactly (`900`, `12.5`).
pub fn money<S: Serializer>(amount: &Cents, serializer: S) -> Result<S::Ok, S::Error> {
    let raw = RawValue::from_string(amount.to_string()).map_err(serde::ser::Error::custom)?;
    raw.serialize(serializer)
}

/// [`money`] for an optional amount.
pub fn optional_money<S: Serializer>(amount: &Option<Cents>, serializer: S) -> Result<S::Ok, S::Error> {
    match amount {
        Some(amount) => money(amount, serializer),
        None => serializer.serialize_none(),
    }
}

/// Times as RFC 3339 UTC with milliseconds.
pub fn rfc3339(time: chrono::DateTime<chrono::Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
