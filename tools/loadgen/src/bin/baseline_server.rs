//! The throughput ceiling for the budget: hyper, the same server setup as coupon-engine,
//! reading and parsing the same validate body, answering a fixed JSON. No cache, no rules,
//! no logging, no metrics.
//!
//! Run with `cargo run --release -p loadgen --bin baseline-server -- 127.0.0.1:8090`.
//! `--work-ns N` adds N ns of busy CPU to every request: a calibrated stand-in for a
//! server that does more per request, to see how throughput and the tail move with it.

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

/// The fields coupon-engine reads, parsed the same way (borrowed, raw number text), a cart's
/// included (API.md §9).
#[derive(Deserialize)]
#[allow(dead_code, reason = "parsed to cost what the service's parse costs, never read")]
struct Body<'a> {
    code: &'a str,
    #[serde(rename = "userId")]
    user_id: &'a str,
    #[serde(rename = "orderValue", borrow, default)]
    order_value: Option<&'a serde_json::value::RawValue>,
    #[serde(rename = "orderId")]
    order_id: Option<&'a str>,
    currency: Option<&'a str>,
    #[serde(borrow, default)]
    items: Option<Vec<Item<'a>>>,
    #[serde(borrow, default)]
    shipping: Option<Shipping<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code, reason = "parsed to cost what the service's parse costs, never read")]
struct Item<'a> {
    line_id: &'a str,
    product_id: &'a str,
    variant_id: Option<&'a str>,
    #[serde(borrow, default)]
    category_ids: Vec<&'a str>,
    quantity: u32,
    #[serde(borrow)]
    unit_price: &'a serde_json::value::RawValue,
    #[serde(default)]
    on_sale: bool,
    #[serde(default)]
    discountable: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code, reason = "parsed to cost what the service's parse costs, never read")]
struct Shipping<'a> {
    #[serde(borrow)]
    amount: &'a serde_json::value::RawValue,
    method_id: Option<&'a str>,
}

async fn answer(req: Request<hyper::body::Incoming>, work: Duration) -> Result<Response<Full<Bytes>>, Infallible> {
    let status = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(body) => match serde_json::from_slice::<Body<'_>>(&body.to_bytes()) {
            Ok(_) => StatusCode::OK,
            Err(_) => StatusCode::BAD_REQUEST,
        },
        Err(_) => StatusCode::PAYLOAD_TOO_LARGE,
    };
    busy_for(work);
    let mut response = Response::new(Full::new(Bytes::from_static(ANSWER)));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", "application/json".parse().expect("static header"));
    Ok(response)
}

/// Spins (never sleeps) for `work`: CPU spent, as real request work would spend it.
fn busy_for(work: Duration) {
    if work.is_zero() {
        return;
    }
    let started = std::time::Instant::now();
    while started.elapsed() < work {
        std::hint::spin_loop();
    }
}

/// `[ADDR] [--work-ns N]`.
fn parse_args() -> anyhow::Result<(String, Duration)> {
    let mut addr = "127.0.0.1:8090".to_owned();
    let mut work = Duration::ZERO;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--work-ns" {
            let ns = args.next().ok_or_else(|| anyhow::anyhow!("--work-ns needs a number of nanoseconds"))?;
            work = Duration::from_nanos(ns.parse().map_err(|_| anyhow::anyhow!("--work-ns: not a number: {ns}"))?);
        } else if arg.starts_with('-') {
            anyhow::bail!("unknown option {arg}; usage: baseline-server [ADDR] [--work-ns N]");
        } else {
            addr = arg;
        }
    }
    Ok((addr, work))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (addr, work) = parse_args()?;
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("baseline-server listening on {}", listener.local_addr()?);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10)).keep_alive(true);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let connection = builder.serve_connection(TokioIo::new(stream), service_fn(move |req| answer(req, work)));
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}
