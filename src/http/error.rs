//! Every refusal the HTTP layer can give, and the one place it becomes status + JSON.

use hyper::StatusCode;
use serde::Serialize;

/// A request refused before it reached the rules (or a failure of the service itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidJson { message: String },
    #[error("{field} is required")]
    MissingField { field: &'static str },
    #[error("{field} {problem}")]
    InvalidField { field: &'static str, problem: String },
    #[error("request body must be at most {limit} bytes")]
    PayloadTooLarge { limit: usize },
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
    #[error("no coupon has code {code}")]
    CouponNotFound { code: String },
    #[error("{message}")]
    Conflict { message: String },
    #[error("the database is unavailable; retry shortly")]
    DatabaseUnavailable,
    #[error("the local journal cannot take writes; retry shortly")]
    JournalUnavailable,
    #[error("too many lookups of unknown coupons; retry after {retry_after_secs} s")]
    TooManyFailedLookups { retry_after_secs: u64 },
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
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson { .. }
            | ApiError::MissingField { .. }
            | ApiError::InvalidField { .. }
            | ApiError::BadBody => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotReady
            | ApiError::DatabaseUnavailable
            | ApiError::JournalUnavailable
            | ApiError::Overloaded
            | ApiError::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::TooManyFailedLookups { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::CouponNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson { .. } => "INVALID_JSON",
            ApiError::MissingField { .. } => "MISSING_FIELD",
            ApiError::InvalidField { .. } => "INVALID_FIELD",
            ApiError::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            ApiError::NotFound => "NOT_FOUND",
            ApiError::MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED",
            ApiError::NotReady => "NOT_READY",
            ApiError::BadBody => "BAD_BODY",
            ApiError::Unauthorized => "UNAUTHORIZED",
            ApiError::CouponNotFound { .. } => "COUPON_NOT_FOUND",
            ApiError::Conflict { .. } => "CONFLICT",
            ApiError::DatabaseUnavailable => "DATABASE_UNAVAILABLE",
            ApiError::JournalUnavailable => "JOURNAL_UNAVAILABLE",
            ApiError::TooManyFailedLookups { .. } => "TOO_MANY_FAILED_LOOKUPS",
            ApiError::Overloaded => "OVERLOADED",
            ApiError::Timeout => "TIMEOUT",
            ApiError::Internal => "INTERNAL",
        }
    }

    /// `{"error": {"code", "message", "field"?}}`.
    pub fn body(&self) -> Vec<u8> {
        let field = match self {
            ApiError::MissingField { field } | ApiError::InvalidField { field, .. } => Some(*field),
            _ => None,
        };
        let body = Body { error: Detail { code: self.code(), message: self.to_string(), field } };
        serde_json::to_vec(&body).expect("plain structs serialise")
    }
}
