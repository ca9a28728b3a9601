//! Every refusal the HTTP layer can give, and the one place it becomes status, headers and
//! the JSON error body.

use hyper::StatusCode;
use hyper::header::{ALLOW, CONNECTION, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use serde::Serialize;

use crate::http::response::{self, HttpResponse};

/// A request refused before or beside the rules, or a failure of the service itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidJson { message: String },
    #[error("{field} is required")]
    MissingField { field: &'static str },
    #[error("{field} {problem}")]
    InvalidField { field: &'static str, problem: String },
    #[error("codes may name at most {max} codes")]
    TooManyCodes { max: usize },
    #[error("request body must be at most {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("a request body must be JSON: Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("no route for this path")]
    NotFound,
    #[error("method not allowed; use {allow}")]
    MethodNotAllowed { allow: &'static str },
    #[error("the coupon cache is still loading; retry shortly")]
    NotReady,
    #[error("could not read the request body")]
    BadBody,
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("no {what} has {key} {value}")]
    Missing { what: &'static str, key: &'static str, value: String },
    #[error("{message}")]
    Conflict { message: String },
    #[error("{count} of the codes already exist", count = codes.len())]
    DuplicateCodes { codes: Vec<String> },
    #[error("{field} would be below what is already used ({used})")]
    BelowUsage { field: &'static str, used: String },
    #[error("no unassigned, unused code is left in this campaign")]
    PoolExhausted,
    #[error("this user has been handed as many codes of this campaign as one user may be")]
    AssignmentLimitReached,
    #[error("the database refused the change")]
    Refused,
    #[error("the database is unavailable; retry shortly")]
    DatabaseUnavailable,
    #[error("the local journal cannot take writes; retry shortly")]
    JournalUnavailable,
    #[error("a concurrent request for the same order is still in progress; retry shortly")]
    Busy,
    #[error("too many lookups of unknown coupons; retry after {retry_after_secs} s")]
    TooManyFailedLookups { retry_after_secs: u64 },
    #[error("too many validations from this address without the API token; retry after {retry_after_secs} s")]
    TooManyValidations { retry_after_secs: u64 },
    #[error("this user holds too many uses already; retry after one is confirmed, cancelled or expired")]
    TooManyHolds,
    #[error("this caller took its share of what this coupon or campaign has left in holds lately; retry later")]
    HoldShareExceeded,
    #[error("the service is at capacity; retry shortly")]
    Overloaded,
    #[error("the request took too long; retry shortly")]
    Timeout,
    #[error("internal error")]
    Internal,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    /// The codes that already exist (up to 100), for an import refused for them.
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicates: Option<&'a [String]>,
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson { .. }
            | ApiError::MissingField { .. }
            | ApiError::InvalidField { .. }
            | ApiError::TooManyCodes { .. }
            | ApiError::BadBody
            | ApiError::Refused => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotFound | ApiError::Missing { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Conflict { .. }
            | ApiError::DuplicateCodes { .. }
            | ApiError::BelowUsage { .. }
            | ApiError::PoolExhausted
            | ApiError::AssignmentLimitReached => StatusCode::CONFLICT,
            ApiError::TooManyFailedLookups { .. }
            | ApiError::TooManyValidations { .. }
            | ApiError::TooManyHolds
            | ApiError::HoldShareExceeded => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotReady
            | ApiError::DatabaseUnavailable
            | ApiError::JournalUnavailable
            | ApiError::Busy
            | ApiError::Overloaded
            | ApiError::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson { .. } => "INVALID_JSON",
            ApiError::MissingField { .. } => "MISSING_FIELD",
            ApiError::InvalidField { .. } => "INVALID_FIELD",
            ApiError::TooManyCodes { .. } => "TOO_MANY_CODES",
            ApiError::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            ApiError::BodyTimeout => "BODY_TIMEOUT",
            ApiError::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ApiError::NotFound => "NOT_FOUND",
            ApiError::MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED",
            ApiError::NotReady => "NOT_READY",
            ApiError::BadBody => "BAD_BODY",
            ApiError::Unauthorized => "UNAUTHORIZED",
            ApiError::Missing { what: "coupon", .. } => "COUPON_NOT_FOUND",
            ApiError::Missing { what: "campaign", .. } => "CAMPAIGN_NOT_FOUND",
            ApiError::Missing { what: "batch", .. } => "BATCH_NOT_FOUND",
            ApiError::Missing { .. } => "NOT_FOUND",
            ApiError::Conflict { .. } => "CONFLICT",
            ApiError::DuplicateCodes { .. } => "DUPLICATE_CODES",
            ApiError::BelowUsage { .. } => "BELOW_CURRENT_USAGE",
            ApiError::PoolExhausted => "POOL_EXHAUSTED",
            ApiError::AssignmentLimitReached => "USER_ASSIGNMENT_LIMIT_REACHED",
            ApiError::Refused => "REFUSED",
            ApiError::DatabaseUnavailable => "DATABASE_UNAVAILABLE",
            ApiError::JournalUnavailable => "JOURNAL_UNAVAILABLE",
            ApiError::Busy => "BUSY",
            ApiError::TooManyFailedLookups { .. } => "TOO_MANY_FAILED_LOOKUPS",
            ApiError::TooManyValidations { .. } => "TOO_MANY_VALIDATIONS",
            ApiError::TooManyHolds => "TOO_MANY_HOLDS",
            ApiError::HoldShareExceeded => "HOLD_SHARE_EXCEEDED",
            ApiError::Overloaded => "OVERLOADED",
            ApiError::Timeout => "TIMEOUT",
            ApiError::Internal => "INTERNAL",
        }
    }

    /// The JSON error response: `{"error": {"code", "message", "field"?}}` and the headers
    /// the status calls for.
    pub fn response(&self) -> HttpResponse {
        let field = match self {
            ApiError::TooManyCodes { .. } => Some("codes"),
            ApiError::MissingField { field }
            | ApiError::InvalidField { field, .. }
            | ApiError::BelowUsage { field, .. } => Some(*field),
            _ => None,
        };
        let duplicates = match self {
            ApiError::DuplicateCodes { codes } => Some(codes.as_slice()),
            _ => None,
        };
        let body = Body { error: Detail { code: self.code(), message: self.to_string(), field, duplicates } };
        let mut response = response::json(self.status(), &body);
        let headers = response.headers_mut();
        match self {
            ApiError::MethodNotAllowed { allow } => {
                headers.insert(ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::TooManyFailedLookups { retry_after_secs } | ApiError::TooManyValidations { retry_after_secs } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::Unauthorized => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::BodyTimeout => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            // A share comes back as the caller's holds age out of the window.
            ApiError::HoldShareExceeded => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("60"));
            }
            _ if self.status() == StatusCode::SERVICE_UNAVAILABLE || *self == ApiError::TooManyHolds => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}
