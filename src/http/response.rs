//! Building responses: JSON bodies, money as exact decimal numbers, bodies streamed in
//! chunks.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde::{Serialize, Serializer};
use tokio::sync::mpsc;

use crate::domain::currency::Amount;
use crate::domain::money::Cents;

/// The response type of every handler.
pub type HttpResponse = Response<ResponseBody>;

/// A body known whole (nearly every answer), or one streamed in chunks as a task produces
/// them (an export): never built in memory as one piece.
#[derive(Debug)]
pub enum ResponseBody {
    Whole(Full<Bytes>),
    Streamed(mpsc::Receiver<Bytes>),
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ResponseBody::Whole(full) => Pin::new(full).poll_frame(cx),
            ResponseBody::Streamed(chunks) => chunks.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Whole(full) => full.is_end_stream(),
            ResponseBody::Streamed(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Whole(full) => full.size_hint(),
            ResponseBody::Streamed(_) => SizeHint::default(),
        }
    }
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A JSON response.
pub fn json(status: StatusCode, body: &impl Serialize) -> HttpResponse {
    json_sized(status, body, 128)
}

/// [`json`] for a body of about `size` bytes, written without growing its buffer.
pub(crate) fn json_sized(status: StatusCode, body: &impl Serialize, size: usize) -> HttpResponse {
    let mut bytes = Vec::with_capacity(size);
    serde_json::to_writer(&mut bytes, body).expect("response types serialise");
    with_body(status, JSON, bytes.into())
}

/// A response with a body of the given content type.
pub(crate) fn with_body(status: StatusCode, content_type: HeaderValue, body: Bytes) -> HttpResponse {
    with(status, content_type, ResponseBody::Whole(Full::new(body)))
}

/// A `200` whose body is the chunks sent into the returned channel, until it is dropped.
pub fn streamed(content_type: HeaderValue) -> (HttpResponse, mpsc::Sender<Bytes>) {
    let (sender, receiver) = mpsc::channel(4);
    (with(StatusCode::OK, content_type, ResponseBody::Streamed(receiver)), sender)
}

fn with(status: StatusCode, content_type: HeaderValue, body: ResponseBody) -> HttpResponse {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}

/// Serialises money as a JSON number with at most 2 decimals, exactly (`900`, `12.5`), the
/// way `Cents` spells itself. A whole amount goes out as an integer; any other as the `f64`
/// nearest to it, which serde_json prints in its shortest round-trip form: for amounts under
/// 2^53 cents that is the exact decimal (tested). Ten times cheaper than spelling the text
/// and handing it over as a raw value, on every validate.
pub fn money<S: Serializer>(amount: &Cents, serializer: S) -> Result<S::Ok, S::Error> {
    let cents = amount.get();
    if cents.is_multiple_of(100) {
        serializer.serialize_u64(cents / 100)
    } else {
        serializer.serialize_f64(cents as f64 / 100.0)
    }
}

/// [`money`] for an optional amount.
pub(crate) fn optional_money<S: Serializer>(amount: &Option<Cents>, serializer: S) -> Result<S::Ok, S::Error> {
    match amount {
        Some(amount) => money(amount, serializer),
        None => serializer.serialize_none(),
    }
}

/// An amount in minor units of a currency, written as the exact JSON number of its major
/// units, as [`money`] writes cents: a whole amount as an integer, else the `f64` nearest the
/// quotient, whose shortest form is the amount's decimal text (at most 13 significant digits;
/// the test below checks every amount of a wide range in every currency).
pub(crate) fn amount<S: Serializer>(amount: &Amount, serializer: S) -> Result<S::Ok, S::Error> {
    let (minor, scale) = (amount.minor(), amount.scale());
    if minor.is_multiple_of(scale) {
        serializer.serialize_u64(minor / scale)
    } else {
        serializer.serialize_f64(minor as f64 / scale as f64)
    }
}

/// Times as RFC 3339 UTC with milliseconds.
pub(crate) fn rfc3339(time: chrono::DateTime<chrono::Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::money::MAX_CENTS;

    #[derive(Serialize)]
    struct Amount(#[serde(serialize_with = "money")] Cents);

    fn json(cents: u64) -> String {
        serde_json::to_string(&Amount(Cents::new(cents).unwrap())).unwrap()
    }

    #[test]
    fn money_is_the_exact_decimal_for_every_amount() {
        // Every amount up to 10,000.00, then strides over the rest up to the maximum.
        let small = 0..=1_000_000;
        let large = (1_000_000..=MAX_CENTS).step_by(999_983);
        let edges = [MAX_CENTS - 1, MAX_CENTS, 99_999_999_999, 12_345_678_901, 1, 10, 99, 101, 110];
        for cents in small.chain(large).chain(edges) {
            assert_eq!(json(cents), Cents::new(cents).unwrap().to_string(), "{cents} cents");
        }
        for (cents, text) in
            [(0, "0"), (90_000, "900"), (1250, "12.5"), (99, "0.99"), (1, "0.01"), (MAX_CENTS, "1000000000")]
        {
            assert_eq!(json(cents), text);
        }
    }

    #[test]
    fn amounts_are_the_exact_decimal_in_every_currency() {
        #[derive(serde::Serialize)]
        struct Wrapped(#[serde(serialize_with = "amount")] crate::domain::currency::Amount);
        for code in ["JPY", "EUR", "KWD"] {
            let currency = crate::domain::currency::Currency::parse(code).unwrap();
            let max = crate::domain::money::max_minor(currency.decimals());
            let small = 0..=300_000;
            let large = (300_000..=max).step_by(999_983);
            for minor in small.chain(large).chain([max, max - 1, 1_234_567_891_234]) {
                let minor = minor.min(max);
                let written = serde_json::to_string(&Wrapped(currency.amount(minor))).unwrap();
                assert_eq!(written, currency.amount(minor).to_string(), "{minor} minor units of {code}");
            }
        }
    }
}
