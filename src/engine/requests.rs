//! What the engine is asked and what it answers: the request and outcome types of its use
//! cases, as HTTP handlers, tests and benches see them.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use compact_str::CompactString;
use uuid::Uuid;

use crate::domain::cart::CartRequest;
use crate::domain::cart_discount::Taken;
use crate::domain::coupon::CouponId;
use crate::domain::money::Cents;
use crate::domain::rules::{Decision, Reason};
use crate::engine::ledger::CartMark;

/// A validate request, well-formed.
#[derive(Debug, Clone, Copy)]
pub struct ValidateRequest<'a> {
    /// As the client sent it; normalised here.
    pub code: &'a str,
    pub user_id: &'a str,
    pub order_value: Cents,
    pub order_id: Option<&'a str>,
    /// API.md §9's fields, when sent.
    pub cart: Option<&'a CartRequest>,
}

/// What the validation log keeps about the caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<CompactString>,
    /// When the request arrived, for its response time.
    pub started: Instant,
}

/// The answer to a validate request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation<'a> {
    /// Normalised.
    pub code: Cow<'a, str>,
    pub coupon_id: Option<CouponId>,
    pub decision: Decision,
    /// With a cart's items, what the coupon takes from each line and unit.
    pub taken: Option<Taken>,
}

/// A redeem or hold request, well-formed.
#[derive(Debug, Clone, Copy)]
pub struct UseRequest<'a> {
    pub code: &'a str,
    pub user_id: &'a str,
    pub order_id: &'a str,
    pub order_value: Cents,
    /// API.md §9's fields, when sent.
    pub cart: Option<&'a CartRequest>,
    /// The address of an anonymous caller (no API token, from another machine): its holds
    /// are bounded per address rather than per user.
    pub anonymous_from: Option<IpAddr>,
}

/// A release request, well-formed.
#[derive(Debug, Clone, Copy)]
pub struct ReleaseRequest<'a> {
    pub code: &'a str,
    pub order_id: &'a str,
    /// When given, it must be the redeemer's.
    pub user_id: Option<&'a str>,
}

/// A use taken, as the client is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub id: Uuid,
    /// Normalised.
    pub code: String,
    /// Off the merchandise.
    pub discount: Cents,
    /// Off shipping (a use with §9's fields).
    pub shipping_discount: Cents,
    pub final_amount: Cents,
    /// What a use with items took from each line and unit.
    pub taken: Option<Arc<Taken>>,
    /// For a hold.
    pub expires_at: Option<DateTime<Utc>>,
    /// What became of a hold this order had: confirmed by this redemption, or expired first.
    pub hold: Option<HoldFate>,
}

/// What became of a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldFate {
    Confirmed,
    Cancelled,
    Expired,
}

impl HoldFate {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldFate::Confirmed => "confirmed",
            HoldFate::Cancelled => "cancelled",
            HoldFate::Expired => "expired",
        }
    }
}

/// Why a use was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A rule refused (422).
    Rule(Reason),
    /// The order holds this coupon already, as another user or as a redemption (409).
    OrderTaken,
    /// The same order again with another order value (409).
    IdempotencyMismatch,
    /// The user holds too many uses already (429).
    TooManyHolds,
    /// The caller took its share of what the coupon or campaign has left in holds lately (429).
    HoldShareExceeded,
    /// The units this use needs cannot be had now: held by other instances, in doubt after
    /// a crash, or PostgreSQL unreachable (503, never a false limit).
    QuotaUnavailable,
}

impl Refused {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Rule(reason) => reason.as_str(),
            Refused::OrderTaken => Reason::OrderAlreadyRedeemed.as_str(),
            Refused::IdempotencyMismatch => "IDEMPOTENCY_MISMATCH",
            Refused::TooManyHolds => "TOO_MANY_HOLDS",
            Refused::HoldShareExceeded => "HOLD_SHARE_EXCEEDED",
            Refused::QuotaUnavailable => "QUOTA_UNAVAILABLE",
        }
    }
}

/// The answer to a redeem or a hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UseOutcome {
    /// A new redemption or hold (201).
    Taken(Receipt),
    /// The same order by the same user again: the same redemption or hold (200).
    Replayed(Receipt),
    /// A redeem turned the order's hold into the redemption (201).
    Confirmed(Receipt),
    Refused(Refused),
}

impl UseOutcome {
    /// The metric label.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            UseOutcome::Taken(_) => "redeemed",
            UseOutcome::Replayed(_) => "replayed",
            UseOutcome::Confirmed(_) => "confirmed",
            UseOutcome::Refused(refused) => refused.as_str(),
        }
    }
}

/// The answer to a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// Given back now; for a hold, how it ended.
    Released {
        hold: Option<HoldFate>,
    },
    /// Given back before.
    AlreadyReleased,
    NotFound,
}

/// Whether a use is a redemption or a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UseKind {
    Redeem,
    Hold { ttl: Duration },
}

/// A use read back from PostgreSQL at start-up.
#[derive(Debug, Clone)]
pub struct StoredUse {
    pub id: Uuid,
    pub rev: u32,
    pub coupon_id: CouponId,
    pub code: Option<String>,
    pub user_id: String,
    pub order_id: String,
    pub order_value: Cents,
    pub discount: Cents,
    pub hold_until: Option<DateTime<Utc>>,
    pub released_at: Option<DateTime<Utc>>,
    /// The instance that made it (none before instances were named).
    pub made_by: Option<String>,
    /// For a use taken with §9's fields.
    pub cart: CartMark,
    /// For a use taken with other codes of its order (§10).
    pub group: Option<crate::domain::event::GroupMark>,
}
