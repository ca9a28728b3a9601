//! `POST /api/coupons/redeem` and `/release`: take a use exactly once per order, within the
//! limits, durable in the journal before the answer; give it back idempotently.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use hyper::StatusCode;
use serde::Serialize;
use uuid::Uuid;

use crate::cache::usage::{CouponUsage, Limits, Redemption, RedemptionState, ReleaseError, ReserveError};
use crate::domain::money::Cents;
use crate::domain::rules::{self, Attempt, Decision, Reason};
use crate::http::State;
use crate::http::error::ApiError;
use crate::http::request::{ReleaseRequest, ValidateRequest};
use crate::http::response::{self, HttpResponse, money};
use crate::http::router::guard_lookup;
use crate::journal::record::{Record, Redeemed, Released};

/// How long a request waits for a concurrent redeem or release of the same order to settle
/// (one journal fsync, normally a millisecond or two).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Redeemed201<'a> {
    redeemed: bool,
    redemption_id: Uuid,
    code: &'a str,
    #[serde(serialize_with = "money")]
    discount: Cents,
    #[serde(serialize_with = "money")]
    final_amount: Cents,
}

#[derive(Serialize)]
struct Refused {
    redeemed: bool,
    reason: Reason,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReleaseAnswer {
    released: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

/// `POST /api/coupons/redeem`.
pub async fn redeem(state: &State, body: Bytes, client_ip: IpAddr) -> Result<HttpResponse, ApiError> {
    let input = ValidateRequest::parse_redeem(&body)?;
    guard_lookup(state, &input.user_id, client_ip)?;
    let order_id = input.order_id.as_deref().expect("parse_redeem requires orderId");
    let catalog = state.cache.catalog();
    let Some(entry) = catalog.get(&input.code) else {
        state.guard.record_failure(&input.user_id, client_ip);
        return Ok(refused(state, StatusCode::UNPROCESSABLE_ENTITY, Reason::CouponNotFound));
    };
    let (coupon, usage) = (&entry.coupon, &entry.usage);
    if let Some(existing) = usage.redemption(order_id) {
        return replay(state, usage, order_id, existing, &input.user_id, &input.code).await;
    }
    // The order check is the reservation's first step; the other rules are checked here
    // and the limits again, atomically, by the reservation.
    let attempt = Attempt { user_id: &input.user_id, order_value: input.order_value, order_id: None };
    let discount = match rules::validate(coupon, &**usage, &attempt, Utc::now()) {
        Decision::Valid { discount, .. } => discount,
        Decision::Rejected(reason) => return Ok(refused(state, StatusCode::UNPROCESSABLE_ENTITY, reason)),
    };
    let redemption = Redemption {
        id: Uuid::new_v4(),
        user_id: input.user_id.as_ref().into(),
        order_value: input.order_value,
        discount,
        state: RedemptionState::Pending,
    };
    let limits = Limits { total: coupon.usage_limit, per_user: coupon.per_user_limit };
    match usage.reserve(order_id, redemption.clone(), limits) {
        Ok(()) => {}
        Err(ReserveError::Limit(reason)) => return Ok(refused(state, StatusCode::UNPROCESSABLE_ENTITY, reason)),
        Err(ReserveError::OrderTaken(existing)) => {
            return replay(state, usage, order_id, existing, &input.user_id, &input.code).await;
        }
    }
    let record = Record::Redeem(Redeemed {
        id: redemption.id,
        coupon_id: coupon.id,
        user_id: input.user_id.clone().into_owned(),
        order_id: order_id.to_owned(),
        order_value: input.order_value,
        discount,
        used_at: Utc::now(),
    });
    if let Err(err) = state.journal.append(&record).await {
        usage.cancel(order_id);
        tracing::error!(error = %err, "redemption not journaled; refused");
        return Err(ApiError::JournalUnavailable);
    }
    usage.confirm(order_id);
    state.metrics.record_redemption(Ok(0));
    Ok(redeemed(StatusCode::CREATED, &redemption, &input.code))
}

/// The order already holds a redemption: the same user gets it again (200), anyone else 409.
async fn replay(
    state: &State,
    usage: &CouponUsage,
    order_id: &str,
    existing: Redemption,
    user_id: &str,
    code: &str,
) -> Result<HttpResponse, ApiError> {
    if *existing.user_id != *user_id {
        return Ok(refused(state, StatusCode::CONFLICT, Reason::OrderAlreadyRedeemed));
    }
    // A concurrent submission of the same order: answer once it is durable (or gone).
    let settled = settle(usage, order_id, existing).await?;
    match settled {
        Some(redemption) if redemption.state == RedemptionState::Live => {
            state.metrics.record_redemption(Ok(1));
            Ok(redeemed(StatusCode::OK, &redemption, code))
        }
        // Released: the order id stays used. Gone: its journal append failed.
        Some(_) => Ok(refused(state, StatusCode::CONFLICT, Reason::OrderAlreadyRedeemed)),
        None => Err(ApiError::JournalUnavailable),
    }
}

/// Waits until the order's redemption is neither pending nor being released.
async fn settle(usage: &CouponUsage, order_id: &str, mut current: Redemption) -> Result<Option<Redemption>, ApiError> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while matches!(current.state, RedemptionState::Pending | RedemptionState::Releasing) {
        if Instant::now() > deadline {
            return Err(ApiError::JournalUnavailable);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        match usage.redemption(order_id) {
            Some(next) => current = next,
            None => return Ok(None),
        }
    }
    Ok(Some(current))
}

fn redeemed(status: StatusCode, redemption: &Redemption, code: &str) -> HttpResponse {
    let body = Redeemed201 {
        redeemed: true,
        redemption_id: redemption.id,
        code,
        discount: redemption.discount,
        final_amount: redemption.final_amount(),
    };
    response::json(status, &body)
}

fn refused(state: &State, status: StatusCode, reason: Reason) -> HttpResponse {
    state.metrics.record_redemption(Err(reason));
    response::json(status, &Refused { redeemed: false, reason })
}

/// `POST /api/coupons/release`.
pub async fn release(state: &State, body: Bytes) -> Result<HttpResponse, ApiError> {
    let input = ReleaseRequest::parse(&body)?;
    let catalog = state.cache.catalog();
    let not_found = || {
        state.metrics.record_release(2);
        let body = ReleaseAnswer { released: false, reason: Some("REDEMPTION_NOT_FOUND") };
        Ok(response::json(StatusCode::NOT_FOUND, &body))
    };
    let Some(entry) = catalog.get(&input.code) else { return not_found() };
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let redemption = loop {
        match entry.usage.begin_release(&input.order_id) {
            Ok(redemption) => break redemption,
            Err(ReleaseError::NotFound) => return not_found(),
            Err(ReleaseError::AlreadyReleased) => {
                state.metrics.record_release(1);
                return Ok(response::json(StatusCode::OK, &ReleaseAnswer { released: true, reason: None }));
            }
            Err(ReleaseError::Busy) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(ReleaseError::Busy) => return Err(ApiError::JournalUnavailable),
        }
    };
    let record = Record::Release(Released {
        id: redemption.id,
        coupon_id: entry.coupon.id,
        order_id: input.order_id.clone().into_owned(),
        released_at: Utc::now(),
    });
    if let Err(err) = state.journal.append(&record).await {
        entry.usage.abort_release(&input.order_id);
        tracing::error!(error = %err, "release not journaled; refused");
        return Err(ApiError::JournalUnavailable);
    }
    entry.usage.finish_release(&input.order_id);
    state.metrics.record_release(0);
    Ok(response::json(StatusCode::OK, &ReleaseAnswer { released: true, reason: None }))
}
