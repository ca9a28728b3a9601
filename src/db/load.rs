//! Reads coupon definitions and live usage from PostgreSQL into domain values.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::cache::LoadedRedemption;
use crate::cache::usage::{Redemption, RedemptionState};
use crate::db::Error;
use crate::domain::coupon::{Coupon, CouponKind, CouponStatus, Discount};
use crate::domain::money::Cents;

/// The coupon columns as [`CouponRow`] reads them; amounts in cents, exact.
macro_rules! coupon_select {
    () => {
        "SELECT id, code, type AS kind, status, discount_type, \
         (discount_value * 100)::bigint AS discount_value_cents, \
         (max_discount * 100)::bigint AS max_discount_cents, \
         (min_order_value * 100)::bigint AS min_order_value_cents, \
         usage_limit, per_user_limit, user_id, valid_from, valid_until, version \
         FROM coupons"
    };
}

#[derive(Debug, sqlx::FromRow)]
struct CouponRow {
    id: i64,
    code: String,
    kind: String,
    status: String,
    discount_type: String,
    discount_value_cents: i64,
    max_discount_cents: Option<i64>,
    min_order_value_cents: i64,
    usage_limit: Option<i32>,
    per_user_limit: Option<i32>,
    user_id: Option<String>,
    valid_from: Option<DateTime<Utc>>,
    valid_until: Option<DateTime<Utc>>,
    version: i64,
}

/// Every coupon.
pub async fn all_coupons(pool: &PgPool) -> Result<Vec<Coupon>, Error> {
    let rows: Vec<CouponRow> = sqlx::query_as(coupon_select!()).fetch_all(pool).await?;
    rows.into_iter().map(CouponRow::into_coupon).collect()
}

/// The coupons with these ids that still exist.
pub async fn coupons_by_id(pool: &PgPool, ids: &[i64]) -> Result<Vec<Coupon>, Error> {
    let rows: Vec<CouponRow> =
        sqlx::query_as(concat!(coupon_select!(), " WHERE id = ANY($1)")).bind(ids).fetch_all(pool).await?;
    rows.into_iter().map(CouponRow::into_coupon).collect()
}

/// The coupon with this (normalised) code, if any.
pub async fn coupon_by_code(pool: &PgPool, code: &str) -> Result<Option<Coupon>, Error> {
    let row: Option<CouponRow> =
        sqlx::query_as(concat!(coupon_select!(), " WHERE code = $1")).bind(code).fetch_optional(pool).await?;
    row.map(CouponRow::into_coupon).transpose()
}

/// The coupon with this id, if any, read through any executor (a transaction, say).
pub async fn coupon_by_id<'e>(executor: impl sqlx::PgExecutor<'e>, id: i64) -> Result<Option<Coupon>, Error> {
    let row: Option<CouponRow> =
        sqlx::query_as(concat!(coupon_select!(), " WHERE id = $1")).bind(id).fetch_optional(executor).await?;
    row.map(CouponRow::into_coupon).transpose()
}

#[derive(Debug, sqlx::FromRow)]
struct UsageRow {
    id: Uuid,
    coupon_id: i64,
    user_id: String,
    order_id: String,
    order_value_cents: i64,
    discount_cents: i64,
    released: bool,
}

/// Every redemption: live ones count against the limits, released ones keep their order
/// id used.
pub async fn all_redemptions(pool: &PgPool) -> Result<Vec<LoadedRedemption>, Error> {
    let rows: Vec<UsageRow> = sqlx::query_as(
        "SELECT id, coupon_id, user_id, order_id, \
         (order_value * 100)::bigint AS order_value_cents, \
         (discount_applied * 100)::bigint AS discount_cents, \
         released_at IS NOT NULL AS released \
         FROM coupon_usage",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(UsageRow::into_loaded).collect())
}

impl CouponRow {
    fn into_coupon(self) -> Result<Coupon, Error> {
        let id = self.id;
        let bad = |what: String| Error::BadCoupon { id, what };
        let cents = |value: i64, column: &str| {
            u64::try_from(value)
                .ok()
                .and_then(|v| Cents::new(v).ok())
                .ok_or_else(|| bad(format!("{column} out of range")))
        };
        let limit = |value: Option<i32>, column: &str| {
            value.map(|v| u32::try_from(v).map_err(|_| bad(format!("{column} is negative")))).transpose()
        };
        let discount = match self.discount_type.as_str() {
            "percentage" => Discount::Percentage {
                // NUMERIC percent × 100 is hundredths of a percent.
                hundredths: u32::try_from(self.discount_value_cents)
                    .map_err(|_| bad("discount_value out of range".into()))?,
                cap: self.max_discount_cents.map(|c| cents(c, "max_discount")).transpose()?,
            },
            "fixed" => Discount::Fixed(cents(self.discount_value_cents, "discount_value")?),
            other => return Err(bad(format!("unknown discount_type {other:?}"))),
        };
        let coupon = Coupon {
            id,
            kind: CouponKind::parse(&self.kind).ok_or_else(|| bad(format!("unknown type {:?}", self.kind)))?,
            status: CouponStatus::parse(&self.status)
                .ok_or_else(|| bad(format!("unknown status {:?}", self.status)))?,
            discount,
            min_order_value: cents(self.min_order_value_cents, "min_order_value")?,
            usage_limit: limit(self.usage_limit, "usage_limit")?,
            per_user_limit: limit(self.per_user_limit, "per_user_limit")?,
            user_id: self.user_id.map(String::into_boxed_str),
            valid_from: self.valid_from,
            valid_until: self.valid_until,
            version: self.version,
            code: self.code.into_boxed_str(),
        };
        Ok(coupon)
    }
}

impl UsageRow {
    fn into_loaded(self) -> LoadedRedemption {
        // The table's checks keep both amounts non-negative and in range.
        let order_value = Cents::new(u64::try_from(self.order_value_cents).unwrap_or(0)).unwrap_or(Cents::ZERO);
        let discount = Cents::new(u64::try_from(self.discount_cents).unwrap_or(0)).unwrap_or(Cents::ZERO);
        LoadedRedemption {
            coupon_id: self.coupon_id,
            order_id: self.order_id.into_boxed_str(),
            redemption: Redemption {
                id: self.id,
                user_id: self.user_id.into_boxed_str(),
                order_value,
                discount,
                state: if self.released { RedemptionState::Released } else { RedemptionState::Live },
            },
        }
    }
}
