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
use serde_json::value::RawValue;
use tokio::sync::mpsc;

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
    let bytes = serde_json::to_vec(body).expect("response types serialise");
    with_body(status, JSON, bytes.into())
}

/// A response with a body of the given content type.
pub fn with_body(status: StatusCode, content_type: HeaderValue, body: Bytes) -> HttpResponse {
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
