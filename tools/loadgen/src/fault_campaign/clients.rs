//! The buyers: they redeem, hold, confirm (a redeem of a held order) and release every coupon
//! shape, through the balancer or straight to one instance, and retry the same order on
//! others, and redeem sets of two codes; every request is recorded with its start, its end
//! and its answer (a set's, once per code).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::client::ServiceClient;

/// Every request carries this order value; the catalog's discounts are fixed amounts below it.
pub(crate) const ORDER_VALUE: u64 = 100;
/// Users the buyers act as: few, so that per-user limits bite.
const USERS: u64 = 16;
/// An answer not back in this long is an answer lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
/// Orders retried are drawn from the most recent ones.
const RECENT_ORDERS: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Op {
    Redeem,
    Hold,
    Release,
}

/// One request and its answer. Times are microseconds since the Unix epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Request {
    pub(crate) op: Op,
    pub(crate) code: String,
    pub(crate) order: String,
    pub(crate) user: String,
    /// `node-N`, or `balancer`.
    pub(crate) target: String,
    pub(crate) start_us: i64,
    pub(crate) end_us: i64,
    /// The HTTP status; 0 when no answer came (a timeout, a connection lost).
    pub(crate) status: u16,
    pub(crate) reason: Option<String>,
    /// A hold's deadline, from `expiresAt`, in ms since the epoch.
    pub(crate) expires_at_ms: Option<i64>,
}

pub(crate) fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// One request sent: when, and what came back (status 0 and no body when nothing did in time).
struct Sent {
    start_us: i64,
    end_us: i64,
    status: u16,
    json: Value,
}

async fn send(client: &ServiceClient, path: &str, body: &Value) -> Sent {
    let start_us = now_us();
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, client.post_json(path, body)).await;
    let end_us = now_us();
    let (status, json) = match answer {
        Ok(Ok((status, json))) => (status.as_u16(), json),
        Ok(Err(_)) | Err(_) => (0, Value::Null),
    };
    Sent { start_us, end_us, status, json }
}

/// Sends one request and records it.
pub(crate) async fn ask(
    client: &ServiceClient,
    target: &str,
    op: Op,
    code: &str,
    order: &str,
    user: &str,
    ttl: u64,
) -> Request {
    let (path, body) = match op {
        Op::Redeem => {
            ("/api/coupons/redeem", json!({"code": code, "userId": user, "orderId": order, "orderValue": ORDER_VALUE}))
        }
        Op::Hold => (
            "/api/coupons/hold",
            json!({"code": code, "userId": user, "orderId": order, "orderValue": ORDER_VALUE, "ttlSeconds": ttl}),
        ),
        Op::Release => ("/api/coupons/release", json!({"code": code, "orderId": order})),
    };
    let Sent { start_us, end_us, status, json } = send(client, path, &body).await;
    let expires_at_ms = json["expiresAt"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis());
    Request {
        op,
        code: code.to_owned(),
        order: order.to_owned(),
        user: user.to_owned(),
        target: target.to_owned(),
        start_us,
        end_us,
        status,
        reason: json["reason"].as_str().map(str::to_owned),
        expires_at_ms,
    }
}

/// Sends one redeem of a set of codes (API.md §10) and records it as one request per code:
/// a code the set took with the set's status, a code it did not take as refused (422) with its
/// reason, and every code unanswered (0, 503) when the set was.
pub(crate) async fn ask_set(
    client: &ServiceClient,
    target: &str,
    codes: &[String],
    order: &str,
    user: &str,
) -> Vec<Request> {
    let body = json!({"codes": codes, "userId": user, "orderId": order, "orderValue": ORDER_VALUE});
    let Sent { start_us, end_us, status, json } = send(client, "/api/coupons/redeem", &body).await;
    let listed = |list: &str| -> Vec<(String, Option<String>)> {
        json[list]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|e| Some((e["code"].as_str()?.to_owned(), e["reason"].as_str().map(str::to_owned))))
                    .collect()
            })
            .unwrap_or_default()
    };
    let not_taken: Vec<(String, Option<String>)> = listed("rejected").into_iter().chain(listed("skipped")).collect();
    codes
        .iter()
        .map(|code| {
            let refused = not_taken.iter().find(|(c, _)| c == code);
            let (status, reason) = match (status, refused) {
                (200 | 201 | 422, Some((_, reason))) => (422, reason.clone()),
                // A set refused whole names the codes that stopped it; the others were not
                // taken either.
                (422, None) => (422, None),
                (status, _) => (status, json["reason"].as_str().map(str::to_owned)),
            };
            Request {
                op: Op::Redeem,
                code: code.clone(),
                order: order.to_owned(),
                user: user.to_owned(),
                target: target.to_owned(),
                start_us,
                end_us,
                status,
                reason,
                expires_at_ms: None,
            }
        })
        .collect()
}

/// An order asked about: retried with its code and its user.
#[derive(Debug, Clone)]
struct Asked {
    code: String,
    user: String,
    order: String,
}

/// Runs `clients` buyers at `rate` requests a second in all until `stop`, over `targets`
/// (name, client), on `codes`; returns every request.
pub(crate) async fn buy(
    seed: u64,
    clients: usize,
    rate: f64,
    targets: Vec<(String, ServiceClient)>,
    codes: Vec<String>,
    stop: Arc<AtomicBool>,
) -> Vec<Request> {
    let asked: Arc<Mutex<Vec<Asked>>> = Arc::default();
    let history: Arc<Mutex<Vec<Request>>> = Arc::default();
    let pause = Duration::from_secs_f64(clients as f64 / rate);
    let buyers: Vec<_> = (0..clients)
        .map(|c| {
            let (targets, codes, stop, asked, history) =
                (targets.clone(), codes.clone(), stop.clone(), asked.clone(), history.clone());
            tokio::spawn(async move {
                let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(c as u64));
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // One request in ten a set of two codes on a new order of its own (kept apart
                    // from the orders retried one code at a time: a set is released whole).
                    if rng.random_range(0..10) == 0 {
                        n += 1;
                        let first = rng.random_range(0..codes.len());
                        let second = (first + rng.random_range(1..codes.len())) % codes.len();
                        let set = [codes[first].clone(), codes[second].clone()];
                        let user = format!("user-{}", rng.random_range(0..USERS));
                        let (target, client) = &targets[rng.random_range(0..targets.len())];
                        let requests = ask_set(client, target, &set, &format!("s{c}-{n}"), &user).await;
                        history.lock().expect("history").extend(requests);
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                    let roll = rng.random_range(0..100);
                    let known = {
                        let asked = asked.lock().expect("asked");
                        let recent = &asked[asked.len().saturating_sub(RECENT_ORDERS)..];
                        (!recent.is_empty()).then(|| recent[rng.random_range(0..recent.len())].clone())
                    };
                    let (it, op) = match known {
                        Some(it) if roll >= 45 => (it, if roll < 75 { Op::Redeem } else { Op::Release }),
                        _ => {
                            n += 1;
                            let it = Asked {
                                code: codes[rng.random_range(0..codes.len())].clone(),
                                user: format!("user-{}", rng.random_range(0..USERS)),
                                order: format!("b{c}-{n}"),
                            };
                            asked.lock().expect("asked").push(it.clone());
                            (it, if rng.random_bool(0.4) { Op::Hold } else { Op::Redeem })
                        }
                    };
                    let (target, client) = &targets[rng.random_range(0..targets.len())];
                    let ttl = rng.random_range(1..=4);
                    let request = ask(client, target, op, &it.code, &it.order, &it.user, ttl).await;
                    history.lock().expect("history").push(request);
                    tokio::time::sleep(pause).await;
                }
            })
        })
        .collect();
    for buyer in buyers {
        let _ = buyer.await;
    }
    std::mem::take(&mut *history.lock().expect("history"))
}
