//! `validate`, `redeem`, `hold` and `release`: parse, ask the engine, render its outcome.

use std::borrow::Cow;
use std::time::Duration;

use compact_str::CompactString;
use hyper::StatusCode;
use hyper::header::{HeaderValue, USER_AGENT};
use serde::Serialize;
use uuid::Uuid;

use crate::domain::cart::CartRequest;
use crate::domain::money::Cents;
use crate::domain::rules::{Decision, Reason};
use crate::engine::{
    Caller, EngineError, Fate, Receipt, Refused, ReleaseOutcome, ReleaseRequest, SetOutcome, SetReceipt,
    SetReleaseOutcome, SetReleaseRequest, SetRequest, StackRequest, UseOutcome, UseRequest, ValidateRequest,
};
use crate::http::State;
use crate::http::call::Call;
use crate::http::cart_answer::{CartAnswer, CartParts};
use crate::http::error::ApiError;
use crate::http::request::{Codes, ReleaseBody, ReleaseCodes, Several, UseBody, ValidateBody};
use crate::http::response::{self, HttpResponse, money, rfc3339};
use crate::http::set_answer::{SetAnswer, SetRejected, SetUnavailable};
use crate::http::stack_answer::StackAnswer;

/// Longest `User-Agent` kept in the validation log.
const MAX_USER_AGENT_LEN: usize = 512;

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

fn reason<S: serde::Serializer>(reason: &Option<Reason>, serializer: S) -> Result<S::Ok, S::Error> {
    reason.map(Reason::as_str).serialize(serializer)
}

/// `POST /api/coupons/validate`.
pub async fn validate(state: &State, call: Call) -> Result<HttpResponse, ApiError> {
    let input = ValidateBody::parse(&call.body, state.cart)?;
    state.guard.admit_validation(call.client_ip, call.backend, &state.metrics)?;
    state.guard.admit(&input.user_id, call.client_ip, call.backend, &state.metrics)?;
    let caller = Caller {
        ip: Some(call.client_ip),
        user_agent: call.headers.get(USER_AGENT).and_then(user_agent),
        started: call.started,
    };
    let code = match &input.codes {
        Codes::One(code) => code,
        Codes::Several(several) => return Ok(validate_several(state, &call, &input, several, &caller)),
    };
    let request = ValidateRequest {
        code,
        user_id: &input.user_id,
        order_value: input.order_value,
        order_id: input.order_id.as_deref(),
        cart: input.cart.as_ref(),
    };
    let validation = state.engine.validate(&request, &caller);
    if validation.decision == Decision::Rejected(Reason::CouponNotFound) {
        state.guard.record_failure(&input.user_id, call.client_ip, call.backend);
    }
    let body = ValidateResponse::new(&validation.code, input.order_value, validation.decision);
    if let Some(cart) = &input.cart {
        let answer = CartAnswer::new(
            cart,
            &validation.code,
            body.reason.map(Reason::as_str),
            input.order_value.get(),
            body.discount.get(),
            validation.taken.as_ref(),
        );
        return Ok(response::json_sized(StatusCode::OK, &answer, answer.cart.size_hint()));
    }
    Ok(response::json(StatusCode::OK, &body))
}

/// A validate naming several codes (API.md §10): always with §9's totals.
fn validate_several(
    state: &State,
    call: &Call,
    input: &ValidateBody<'_>,
    several: &Several<'_>,
    caller: &Caller,
) -> HttpResponse {
    let request = StackRequest {
        codes: &several.codes,
        user_id: &input.user_id,
        order_value: input.order_value,
        order_id: input.order_id.as_deref(),
        cart: input.cart.as_ref(),
        mode: several.mode,
        select: several.select,
        max_total: several.max_total,
    };
    let validation = state.engine.validate_stack(&request, caller);
    for code in &validation.codes {
        if code.fate == Fate::Rejected(Reason::CouponNotFound) {
            state.guard.record_failure(&input.user_id, call.client_ip, call.backend);
        }
    }
    let plain;
    let cart = match &input.cart {
        Some(cart) => cart,
        None => {
            plain = CartRequest::plain(state.cart.default_currency);
            &plain
        }
    };
    let answer = StackAnswer { request: cart, order_value: input.order_value.get(), validation: &validation };
    response::json_sized(StatusCode::OK, &answer, answer.size_hint())
}

/// A use taken or refused: `{"redeemed"|"held": bool, ...}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UseAnswer<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    redeemed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    held: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redemption_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hold_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "response::optional_money")]
    discount: Option<Cents>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "response::optional_money")]
    final_amount: Option<Cents>,
    /// With §9's fields: their additions, as validate's (amounts in the request's currency).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    cart: Option<CartParts<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    /// What became of the order's hold, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    hold: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

/// Which route a use came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Redeem,
    Hold,
}

fn taken(kind: Kind, status: StatusCode, receipt: &Receipt, use_of: &UseRequest<'_>) -> HttpResponse {
    let cart = use_of.cart.map(|request| {
        let order_value = use_of.order_value.get();
        CartParts::new(request, &receipt.code, order_value, receipt.discount.get(), receipt.taken.as_deref())
    });
    let plain = cart.is_none();
    let size = cart.as_ref().map_or(128, CartParts::size_hint);
    let body = UseAnswer {
        redeemed: (kind == Kind::Redeem).then_some(true),
        held: (kind == Kind::Hold).then_some(true),
        redemption_id: (kind == Kind::Redeem).then_some(receipt.id),
        hold_id: (kind == Kind::Hold).then_some(receipt.id),
        code: Some(&receipt.code),
        discount: plain.then_some(receipt.discount),
        final_amount: plain.then_some(receipt.final_amount),
        cart,
        expires_at: receipt.expires_at.map(rfc3339),
        hold: receipt.hold.map(|fate| fate.as_str()),
        reason: None,
    };
    response::json_sized(status, &body, size)
}

fn refused(kind: Kind, status: StatusCode, reason: &'static str) -> HttpResponse {
    let body = UseAnswer {
        redeemed: (kind == Kind::Redeem).then_some(false),
        held: (kind == Kind::Hold).then_some(false),
        redemption_id: None,
        hold_id: None,
        code: None,
        discount: None,
        final_amount: None,
        cart: None,
        expires_at: None,
        hold: None,
        reason: Some(reason),
    };
    response::json(status, &body)
}

/// The one mapping of a use's outcome to a status and body.
fn render(kind: Kind, outcome: &UseOutcome, use_of: &UseRequest<'_>) -> Result<HttpResponse, ApiError> {
    match outcome {
        UseOutcome::Taken(receipt) | UseOutcome::Confirmed(receipt) => {
            Ok(taken(kind, StatusCode::CREATED, receipt, use_of))
        }
        UseOutcome::Replayed(receipt) => Ok(taken(kind, StatusCode::OK, receipt, use_of)),
        UseOutcome::Refused(refusal) => refusal_of(kind, *refusal),
    }
}

/// The one mapping of a refused use (of one code or of a set) to a status and body.
fn refusal_of(kind: Kind, refusal: Refused) -> Result<HttpResponse, ApiError> {
    Ok(match refusal {
        Refused::Rule(reason) => refused(kind, StatusCode::UNPROCESSABLE_ENTITY, reason.as_str()),
        Refused::OrderTaken | Refused::IdempotencyMismatch => refused(kind, StatusCode::CONFLICT, refusal.as_str()),
        Refused::TooManyHolds => return Err(ApiError::TooManyHolds),
        Refused::HoldShareExceeded => return Err(ApiError::HoldShareExceeded),
        Refused::QuotaUnavailable => retry_soon(refused(kind, StatusCode::SERVICE_UNAVAILABLE, refusal.as_str())),
    })
}

/// A `503` the client retries after a second.
fn retry_soon(mut response: HttpResponse) -> HttpResponse {
    response.headers_mut().insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
    response
}

/// The mapping of a set's outcome (§10) to a status and body.
fn render_set(kind: Kind, outcome: &SetOutcome, answer: SetParts<'_>) -> Result<HttpResponse, ApiError> {
    let hold = kind == Kind::Hold;
    let receipt = |status, receipt: &SetReceipt| {
        let body = SetAnswer {
            hold,
            order_id: answer.order_id,
            request: answer.request,
            order_value: answer.order_value,
            receipt,
        };
        response::json_sized(status, &body, body.size_hint())
    };
    match outcome {
        SetOutcome::Taken(r) | SetOutcome::Confirmed(r) => Ok(receipt(StatusCode::CREATED, r)),
        SetOutcome::Replayed(r) => Ok(receipt(StatusCode::OK, r)),
        SetOutcome::Rejected(codes) => {
            Ok(response::json(StatusCode::UNPROCESSABLE_ENTITY, &SetRejected { hold, codes }))
        }
        SetOutcome::Refused(refusal) => refusal_of(kind, *refusal),
        SetOutcome::Unavailable(code) => {
            let body = SetUnavailable::new(hold, code);
            Ok(retry_soon(response::json(StatusCode::SERVICE_UNAVAILABLE, &body)))
        }
    }
}

/// What a set's answer says of its request.
#[derive(Clone, Copy)]
struct SetParts<'a> {
    order_id: &'a str,
    request: &'a CartRequest,
    order_value: u64,
}

/// A failure of the service itself.
fn unavailable(err: EngineError) -> ApiError {
    match err {
        EngineError::Journal(err) => {
            tracing::error!(error = %err, "journal append failed; refused");
            ApiError::JournalUnavailable
        }
        EngineError::Busy => ApiError::Busy,
        EngineError::Archive(err) => {
            tracing::warn!(error = %err, "a forgotten order could not be looked up");
            ApiError::DatabaseUnavailable
        }
        EngineError::Cluster(err) => {
            tracing::warn!(error = %err, "a use could not be changed through PostgreSQL");
            ApiError::DatabaseUnavailable
        }
    }
}

/// `POST /api/coupons/redeem`.
pub async fn redeem(state: &State, call: Call) -> Result<HttpResponse, ApiError> {
    take(state, call, Kind::Redeem).await
}

/// `POST /api/coupons/hold`.
pub async fn hold(state: &State, call: Call) -> Result<HttpResponse, ApiError> {
    take(state, call, Kind::Hold).await
}

async fn take(state: &State, call: Call, kind: Kind) -> Result<HttpResponse, ApiError> {
    let input = UseBody::parse(&call.body, state.hold.max_ttl_secs, state.cart)?;
    if kind == Kind::Redeem && input.ttl_seconds.is_some() {
        return Err(ApiError::InvalidField { field: "ttlSeconds", problem: "only applies to a hold".into() });
    }
    state.guard.admit(&input.user_id, call.client_ip, call.backend, &state.metrics)?;
    // No token and not this machine: a caller anyone could be (API_TOKEN unset, writes
    // allowed from elsewhere). Its holds are bounded by its address, and kept shorter.
    let anonymous = state.api_token.is_empty() && !call.client_ip.is_loopback();
    let ttl = Duration::from_secs(match anonymous {
        false => input.ttl_seconds.unwrap_or(state.hold.default_ttl_secs),
        true => input.ttl_seconds.unwrap_or(u64::MAX).min(state.hold.anonymous_ttl_secs),
    });
    let code = match &input.codes {
        Codes::One(code) => code,
        Codes::Several(several) => return take_set(state, &call, &input, several, kind, anonymous, ttl).await,
    };
    let request = UseRequest {
        code,
        user_id: &input.user_id,
        order_id: &input.order_id,
        order_value: input.order_value,
        cart: input.cart.as_ref(),
        anonymous_from: anonymous.then_some(call.client_ip),
    };
    let outcome = match kind {
        Kind::Redeem => state.engine.redeem(&request).await,
        Kind::Hold => state.engine.hold(&request, ttl).await,
    }
    .map_err(unavailable)?;
    if outcome == UseOutcome::Refused(Refused::Rule(Reason::CouponNotFound)) {
        state.guard.record_failure(&input.user_id, call.client_ip, call.backend);
    }
    render(kind, &outcome, &request)
}

/// A redeem or hold naming several codes (API.md §10): all or nothing.
#[allow(clippy::too_many_arguments, reason = "the parts of one request, parsed once")]
async fn take_set(
    state: &State,
    call: &Call,
    input: &UseBody<'_>,
    several: &Several<'_>,
    kind: Kind,
    anonymous: bool,
    ttl: Duration,
) -> Result<HttpResponse, ApiError> {
    let request = SetRequest {
        codes: &several.codes,
        user_id: &input.user_id,
        order_id: &input.order_id,
        order_value: input.order_value,
        cart: input.cart.as_ref(),
        mode: several.mode,
        select: several.select,
        max_total: several.max_total,
        anonymous_from: anonymous.then_some(call.client_ip),
    };
    let outcome = match kind {
        Kind::Redeem => state.engine.redeem_set(&request).await,
        Kind::Hold => state.engine.hold_set(&request, ttl).await,
    }
    .map_err(unavailable)?;
    if let SetOutcome::Rejected(codes) = &outcome {
        for _ in codes.iter().filter(|c| c.reason == Some(Reason::CouponNotFound)) {
            state.guard.record_failure(&input.user_id, call.client_ip, call.backend);
        }
    }
    let plain = CartRequest::plain(state.cart.default_currency);
    let parts = SetParts {
        order_id: &input.order_id,
        request: input.cart.as_ref().unwrap_or(&plain),
        order_value: input.order_value.get(),
    };
    render_set(kind, &outcome, parts)
}

#[derive(Serialize)]
struct ReleaseAnswer {
    released: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    hold: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

/// `POST /api/coupons/release`.
pub async fn release(state: &State, call: Call) -> Result<HttpResponse, ApiError> {
    let input = ReleaseBody::parse(&call.body, state.cart.max_codes)?;
    // Guessing order ids to release is a lookup like guessing codes: the same budgets count
    // it, by its userId. A backend's release without one is not counted: the backend vouches
    // for it, and under one empty user twenty unknown orders a minute locked every such
    // release out. An anonymous one counts under the empty user at its address.
    let user = input.user_id.as_deref().unwrap_or_default();
    let budgeted = !(call.backend && input.user_id.is_none());
    if budgeted {
        state.guard.admit(user, call.client_ip, call.backend, &state.metrics)?;
    }
    let code = match &input.codes {
        ReleaseCodes::One(code) => code,
        ReleaseCodes::Several(codes) => return release_set(state, &call, &input, Some(codes), user, budgeted).await,
        ReleaseCodes::All => return release_set(state, &call, &input, None, user, budgeted).await,
    };
    let request = ReleaseRequest { code, order_id: &input.order_id, user_id: input.user_id.as_deref() };
    let outcome = state.engine.release(&request).await.map_err(unavailable)?;
    if outcome == ReleaseOutcome::NotFound && budgeted {
        state.guard.record_failure(user, call.client_ip, call.backend);
    }
    let (status, body) = match outcome {
        ReleaseOutcome::Released { hold } => {
            (StatusCode::OK, ReleaseAnswer { released: true, hold: hold.map(|f| f.as_str()), reason: None })
        }
        ReleaseOutcome::AlreadyReleased => (StatusCode::OK, ReleaseAnswer { released: true, hold: None, reason: None }),
        ReleaseOutcome::NotFound => {
            (StatusCode::NOT_FOUND, ReleaseAnswer { released: false, hold: None, reason: Some("REDEMPTION_NOT_FOUND") })
        }
    };
    Ok(response::json(status, &body))
}

#[derive(Serialize)]
struct SetReleaseAnswer<'a> {
    released: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    codes: &'a [String],
}

/// A release naming several codes, or `allCodes` (§10): all of them or none.
async fn release_set(
    state: &State,
    call: &Call,
    input: &ReleaseBody<'_>,
    codes: Option<&[Cow<'_, str>]>,
    user: &str,
    budgeted: bool,
) -> Result<HttpResponse, ApiError> {
    let request = SetReleaseRequest { order_id: &input.order_id, codes, user_id: input.user_id.as_deref() };
    let outcome = state.engine.release_set(&request).await.map_err(unavailable)?;
    Ok(match &outcome {
        SetReleaseOutcome::Released { codes } => {
            response::json(StatusCode::OK, &SetReleaseAnswer { released: true, reason: None, codes })
        }
        SetReleaseOutcome::NotFound { codes } => {
            if budgeted {
                state.guard.record_failure(user, call.client_ip, call.backend);
            }
            let body = SetReleaseAnswer { released: false, reason: Some("REDEMPTION_NOT_FOUND"), codes };
            response::json(StatusCode::NOT_FOUND, &body)
        }
    })
}

/// The header's visible-ASCII text, cut to a sane length.
fn user_agent(value: &HeaderValue) -> Option<CompactString> {
    let text = value.to_str().ok()?;
    Some(text[..text.len().min(MAX_USER_AGENT_LEN)].into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents_are_cut_and_non_ascii_ignored() {
        let long = "a".repeat(2000);
        assert_eq!(user_agent(&HeaderValue::from_str(&long).unwrap()).map(|s| s.len()), Some(MAX_USER_AGENT_LEN));
        assert_eq!(user_agent(&HeaderValue::from_static("curl/8")), Some("curl/8".into()));
        assert_eq!(user_agent(&HeaderValue::from_bytes(b"caf\xe9").unwrap()), None);
    }
}
