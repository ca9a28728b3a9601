//! What happened, as the journal keeps it and `db/` writes it: redemptions and holds, their
//! confirmation and release, and validations. JSON, self-describing, a few hundred bytes.
//!
//! Every event of one redemption carries a revision, higher than the one before, so that
//! applying an event twice, or an older one after a newer one, changes nothing.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::coupon::{CampaignId, CouponId};
use crate::domain::currency::Currency;
use crate::domain::money::Cents;
use crate::domain::rules::Reason;

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A use taken: a redemption, or a hold when `hold_until` is set.
    #[serde(alias = "redeem")]
    Redeemed(Redeemed),
    /// A hold turned into a redemption.
    Confirmed(Confirmed),
    /// A use given back.
    #[serde(alias = "release")]
    Released(Released),
    /// A validation answered (a `validation_logs` row).
    #[serde(alias = "validation_log")]
    Validated(Validated),
    /// Several changes of one request, kept whole: the uses of a set of codes (API.md §10),
    /// or their release. One record, so one fsync and one shipping transaction.
    Together { events: Vec<Event> },
}

/// A use of a coupon taken by an order: one `coupon_usage` row, keyed by `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redeemed {
    pub id: Uuid,
    #[serde(default = "first_rev")]
    pub rev: u32,
    pub coupon_id: CouponId,
    /// The bulk code used, for a code of a batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub user_id: String,
    pub order_id: String,
    pub order_value: Cents,
    pub discount: Cents,
    #[serde(alias = "used_at")]
    pub at: DateTime<Utc>,
    /// Set for a hold: when it gives its use back by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_until: Option<DateTime<Utc>>,
    /// The campaign whose use and budget it took (none for a zero discount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<CampaignId>,
    /// The instance (and its epoch) whose quota leases paid for this use, and how much.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub funded_by: Option<Funding>,
    /// Set for a use taken with §9's fields: then `order_value` and `discount` are in minor
    /// units of its currency, and `discount` is the code's effect (merchandise and shipping;
    /// `coupon_usage.discount_applied` keeps the merchandise's, `shipping_discount` the rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cart: Option<CartUse>,
    /// Set for a use taken with other codes of its order (§10): the set it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupMark>,
}

/// The set of codes a use was taken with (§10): its id (`coupon_usage.group_id`), and every
/// code the request named with what became of it, so that a replay answers the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMark {
    pub id: Uuid,
    pub codes: Vec<GroupCode>,
}

/// One code a set's request named: taken (no reason), or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCode {
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

/// What a use taken on a cart keeps beyond today's amounts (API.md §9, §10's storage): its
/// currency, the request's items hash (a replay must match it), what came off shipping, and
/// the allocation over lines and units that refunds and tax need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartUse {
    pub currency: Currency,
    /// [`crate::domain::cart::CartRequest::items_hash`].
    pub items_hash: [u8; 32],
    /// Minor units off shipping (part of the use's `discount`).
    pub shipping_discount: u64,
    /// [`crate::domain::cart_fields::allocation_json`].
    pub allocation: String,
}

/// Who paid for a use out of their leased quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Funding {
    pub instance: String,
    pub epoch: i64,
    #[serde(flatten)]
    pub spent: Spent,
}

/// The lease units one use spent: of its coupon's uses, its campaign's uses and its
/// campaign's budget (cents).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spent {
    #[serde(default)]
    pub coupon: u64,
    #[serde(default)]
    pub campaign: u64,
    #[serde(default)]
    pub cents: u64,
}

impl Spent {
    pub fn is_empty(&self) -> bool {
        *self == Spent::default()
    }
}

/// A hold became a redemption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmed {
    pub id: Uuid,
    pub rev: u32,
    pub at: DateTime<Utc>,
}

/// Why a use was given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseCause {
    /// `POST /api/coupons/release`: an order cancelled, or a hold given up.
    Cancelled,
    /// A hold reached its deadline.
    Expired,
}

/// A use given back: sets `released_at` on the row with this `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub id: Uuid,
    /// Journals written before revisions existed hold a redemption and then its release.
    #[serde(default = "second_rev")]
    pub rev: u32,
    pub coupon_id: CouponId,
    #[serde(alias = "released_at")]
    pub at: DateTime<Utc>,
    #[serde(default = "cancelled")]
    pub cause: ReleaseCause,
}

/// One validation, as `validation_logs` keeps it. Made on every validate, so its text is
/// kept inline (no allocation) up to 24 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validated {
    pub coupon_code: CompactString,
    pub coupon_id: Option<CouponId>,
    pub user_id: CompactString,
    pub order_id: Option<CompactString>,
    pub order_value: Cents,
    pub reason: Option<Reason>,
    pub discount: Cents,
    pub final_amount: Cents,
    pub ip_address: Option<IpAddr>,
    pub user_agent: Option<CompactString>,
    pub response_time_us: u64,
    pub validated_at: DateTime<Utc>,
}

impl Redeemed {
    /// The merchandise's part of `discount` (`coupon_usage.discount_applied`); the rest came
    /// off shipping.
    pub fn merchandise_discount(&self) -> Cents {
        let shipping = self.cart.as_ref().map_or(0, |c| c.shipping_discount);
        Cents::new(self.discount.get().saturating_sub(shipping)).unwrap_or(self.discount)
    }
}

fn first_rev() -> u32 {
    1
}

fn second_rev() -> u32 {
    2
}

fn cancelled() -> ReleaseCause {
    ReleaseCause::Cancelled
}

impl Event {
    /// The changes it records, one by one: its own, or those it keeps together.
    pub fn changes(&self) -> impl Iterator<Item = &Event> {
        let together = match self {
            Event::Together { events } => events.as_slice(),
            one => std::slice::from_ref(one),
        };
        together.iter()
    }

    /// The event as journal payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("events serialise")
    }

    /// Decodes journal payload bytes.
    pub fn decode(payload: &[u8]) -> Result<Event, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let cents = |n| Cents::new(n).unwrap();
        for event in [
            Event::Redeemed(Redeemed {
                id: Uuid::from_u128(1),
                rev: 1,
                coupon_id: 7,
                code: Some("BF26-ABCDEFGH".into()),
                user_id: "u".into(),
                order_id: "o".into(),
                order_value: cents(1000),
                discount: cents(100),
                at,
                hold_until: Some(at),
                campaign: Some(4),
                funded_by: Some(Funding {
                    instance: "i-1".into(),
                    epoch: 3,
                    spent: Spent { coupon: 1, campaign: 1, cents: 100 },
                }),
                cart: Some(CartUse {
                    currency: Currency::parse("JPY").unwrap(),
                    items_hash: [7; 32],
                    shipping_discount: 500,
                    allocation: r#"[{"lineId":"1","discount":100,"units":[{"count":1,"discount":100}]}]"#.into(),
                }),
                group: Some(GroupMark {
                    id: Uuid::from_u128(9),
                    codes: vec![
                        GroupCode { code: "A".into(), reason: None },
                        GroupCode { code: "B".into(), reason: Some(Reason::NoEffect) },
                    ],
                }),
            }),
            Event::Together {
                events: vec![
                    Event::Confirmed(Confirmed { id: Uuid::from_u128(1), rev: 2, at }),
                    Event::Confirmed(Confirmed { id: Uuid::from_u128(2), rev: 2, at }),
                ],
            },
            Event::Confirmed(Confirmed { id: Uuid::from_u128(1), rev: 2, at }),
            Event::Released(Released {
                id: Uuid::from_u128(1),
                rev: 3,
                coupon_id: 7,
                at,
                cause: ReleaseCause::Expired,
            }),
            Event::Validated(Validated {
                coupon_code: "X".into(),
                coupon_id: None,
                user_id: "u".into(),
                order_id: None,
                order_value: cents(5),
                reason: Some(Reason::CouponNotFound),
                discount: Cents::ZERO,
                final_amount: cents(5),
                ip_address: Some("::1".parse().unwrap()),
                user_agent: None,
                response_time_us: 12,
                validated_at: at,
            }),
        ] {
            assert_eq!(Event::decode(&event.encode()).unwrap(), event);
        }
    }

    #[test]
    fn reads_records_of_the_previous_journal_format() {
        let redeem = br#"{"type":"redeem","id":"00000000-0000-0000-0000-000000000001","coupon_id":3,
            "user_id":"u","order_id":"o","order_value":1000,"discount":100,"used_at":"2026-11-21T10:00:00Z"}"#;
        let Event::Redeemed(redeemed) = Event::decode(redeem).unwrap() else { panic!("a redemption") };
        assert_eq!((redeemed.rev, redeemed.coupon_id, redeemed.hold_until), (1, 3, None));
        let release = br#"{"type":"release","id":"00000000-0000-0000-0000-000000000001","coupon_id":3,
            "order_id":"o","released_at":"2026-11-21T10:00:01Z"}"#;
        let Event::Released(released) = Event::decode(release).unwrap() else { panic!("a release") };
        assert_eq!((released.rev, released.cause), (2, ReleaseCause::Cancelled));
        let log = br#"{"type":"validation_log","coupon_code":"X","coupon_id":null,"user_id":"u","order_id":null,
            "order_value":5,"is_valid":false,"reason":"COUPON_NOT_FOUND","discount":0,"final_amount":5,
            "ip_address":"127.0.0.1","user_agent":null,"response_time_us":3,"validated_at":"2026-11-21T10:00:00Z"}"#;
        assert!(matches!(Event::decode(log).unwrap(), Event::Validated(v) if v.reason == Some(Reason::CouponNotFound)));
    }
}
