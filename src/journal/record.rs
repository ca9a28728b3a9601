//! What the journal holds: redemptions, releases and spilled validation log rows, as JSON.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::validation_log::ValidationLogRow;
use crate::domain::coupon::CouponId;
use crate::domain::money::Cents;
use crate::journal::frame;

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Redeem(Redeemed),
    Release(Released),
    ValidationLog(ValidationLogRow),
}

/// A use of a coupon taken by an order: one future `coupon_usage` row, keyed by `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redeemed {
    pub id: Uuid,
    pub coupon_id: CouponId,
    pub user_id: String,
    pub order_id: String,
    pub order_value: Cents,
    pub discount: Cents,
    pub used_at: DateTime<Utc>,
}

/// A use given back: sets `released_at` on the row with this `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub id: Uuid,
    pub coupon_id: CouponId,
    pub order_id: String,
    pub released_at: DateTime<Utc>,
}

impl Record {
    /// The record framed for the journal.
    pub fn to_frame(&self) -> Vec<u8> {
        let payload = serde_json::to_vec(self).expect("records serialise");
        let mut out = Vec::with_capacity(payload.len() + frame::HEADER_LEN);
        frame::encode(&payload, &mut out);
        out
    }

    /// Decodes a frame's payload.
    pub fn from_payload(payload: &[u8]) -> Result<Record, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}
