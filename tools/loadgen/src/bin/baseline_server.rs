//! The throughput ceiling for the budget: hyper, the same server setup as coupon-engine,
//! reading and parsing the same validate body, answering a fixed JSON. No cache, no rules,
//! no logging, no metrics.
//!
//! Run with `cargo run --release -p loadgen --bin baseline-server -- 127.0.0.1:8090`.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::TcpListener;

const ANSWER: &[u8] = br#"{"valid":true,"code":"SAVE10","reason":null,"discount":100,"finalAmount":900}"#;

/// The fields coupon-engine reads, parsed the same way (borrowed, raw number text).
#[derive(Deserialize)]
#[allow(dead_code, reason = "parsed to cost what the service's parse costs, never read")]
struct Body<'a> {
    code: &'a str,
    #[serde(rename = "userId")]
    user_id: &'a str,
    #[serde(rename = "orderValue", borrow)]
    order_value: &'a serde_json::value::RawValue,
    #[serde(rename = "orderId")]
    order_id: Option<&'a str>,
}

async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let status = match Limited::new(req.into_body(), 16 * 1024).collect().await {
        Ok(body) => match serde_json::from_slice::<Body<'_>>(&body.to_bytes()) {
            Ok(_) => StatusCode::OK,
            Err(_) => StatusCode::BAD_REQUEST,
        },
        Err(_) => StatusCode::PAYLOAD_TOO_LARGE,
    };
    let mut response = Response::new(Full::new(Bytes::from_static(ANSWER)));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", "application/json".parse().expect("static header"));
    Ok(response)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8090".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("baseline-server listening on {}", listener.local_addr()?);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10)).keep_alive(true);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let connection = builder.serve_connection(TokioIo::new(stream), service_fn(answer));
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}
