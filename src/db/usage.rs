//! Reads the uses stored in `coupon_usage` (redemptions and holds): every one at start-up,
//! and (through [`UsageRow`]) those the usage feed brings.

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use crate::db::{Error, money};
use crate::domain::coupon::CouponId;
use crate::domain::currency::Currency;
use crate::domain::event::GroupMark;
use crate::domain::money::Cents;
use crate::engine::StoredUse;
use crate::engine::ledger::{CartMark, fingerprint};
use crate::engine::ports::{AllocationAnswer, ArchiveAnswer, ArchiveError, ArchivedOrder, StoredAnswer, UsageArchive};

/// The columns of a use, as [`UsageRow`] reads them.
pub const USAGE_COLUMNS: &str = "id, rev, coupon_id, code, user_id, order_id, order_value, discount_applied, \
     hold_expires_at, released_at, instance_id, currency, items_hash, shipping_discount, group_id, \
     group_codes::text AS group_codes";

/// A `coupon_usage` row.
#[derive(Debug, sqlx::FromRow)]
pub struct UsageRow {
    id: Uuid,
    rev: i32,
    coupon_id: i64,
    code: Option<String>,
    user_id: String,
    order_id: String,
    order_value: Decimal,
    discount_applied: Decimal,
    hold_expires_at: Option<DateTime<Utc>>,
    released_at: Option<DateTime<Utc>>,
    instance_id: Option<String>,
    currency: Option<String>,
    items_hash: Option<Vec<u8>>,
    shipping_discount: Option<Decimal>,
    group_id: Option<Uuid>,
    group_codes: Option<String>,
}

impl UsageRow {
    /// The use this row is; refused if a value cannot be served.
    pub(crate) fn into_use(self) -> Result<StoredUse, Error> {
        let bad = |problem: &str| Error::BadRow {
            what: "coupon_usage row of coupon",
            id: self.coupon_id,
            problem: problem.into(),
        };
        let currency = self
            .currency
            .as_deref()
            .map(|code| Currency::parse(code).ok_or_else(|| bad("currency is not one the service takes")))
            .transpose()?;
        let amount = |value: Decimal, column: &str| {
            money::amount_in(value, currency).ok_or_else(|| bad(&format!("{column} out of range")))
        };
        let shipping = self.shipping_discount.map(|s| amount(s, "shipping_discount")).transpose()?.unwrap_or_default();
        let group = match (self.group_id, self.group_codes.as_deref()) {
            (Some(id), Some(codes)) => {
                let codes = serde_json::from_str(codes).map_err(|err| bad(&format!("group_codes: {err}")))?;
                Some(GroupMark { id, codes })
            }
            _ => None,
        };
        Ok(StoredUse {
            id: self.id,
            rev: u32::try_from(self.rev).map_err(|_| bad("rev is negative"))?,
            coupon_id: self.coupon_id,
            order_value: amount(self.order_value, "order_value")?,
            // The row keeps the merchandise's discount; the use's is its whole effect.
            discount: Cents::new(amount(self.discount_applied, "discount_applied")?.get() + shipping.get())
                .map_err(|_| bad("discount_applied out of range"))?,
            cart: CartMark { fingerprint: self.items_hash.as_deref().and_then(fingerprint), shipping },
            code: self.code,
            user_id: self.user_id,
            order_id: self.order_id,
            hold_until: self.hold_expires_at,
            released_at: self.released_at,
            made_by: self.instance_id,
            group,
        })
    }
}

/// Every use, streamed: live ones count against the limits, released ones keep their order
/// id spent (a redemption) or not (a hold), holds get their deadlines.
pub(crate) async fn all_uses(pool: &PgPool) -> Result<Vec<StoredUse>, Error> {
    let sql = format!("SELECT {USAGE_COLUMNS} FROM coupon_usage");
    let mut rows = sqlx::query_as::<_, UsageRow>(sqlx::AssertSqlSafe(sql)).fetch(pool);
    let mut uses = Vec::new();
    while let Some(row) = rows.try_next().await? {
        uses.push(row.into_use()?);
    }
    Ok(uses)
}

/// `coupon_usage` as the engine's archive of forgotten orders.
#[derive(Debug, Clone)]
pub struct Archive {
    pool: PgPool,
}

impl Archive {
    pub fn new(pool: PgPool) -> Archive {
        Archive { pool }
    }
}

impl UsageArchive for Archive {
    fn order<'a>(&'a self, coupon_id: CouponId, order_id: &'a str) -> ArchiveAnswer<'a> {
        Box::pin(async move {
            let row: Option<(String, i32, bool, bool)> = sqlx::query_as(
                "SELECT user_id, rev, released_at IS NOT NULL, hold_expires_at IS NOT NULL FROM coupon_usage \
                 WHERE coupon_id = $1 AND order_id = $2",
            )
            .bind(coupon_id)
            .bind(order_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|err| ArchiveError(err.to_string()))?;
            Ok(row.map(|(user_id, rev, released, hold)| ArchivedOrder {
                user_id,
                rev: u32::try_from(rev).unwrap_or(0),
                released,
                hold,
            }))
        })
    }

    fn stored<'a>(&'a self, coupon_id: CouponId, order_id: &'a str) -> StoredAnswer<'a> {
        Box::pin(async move {
            let sql = format!("SELECT {USAGE_COLUMNS} FROM coupon_usage WHERE coupon_id = $1 AND order_id = $2");
            let row = sqlx::query_as::<_, UsageRow>(sqlx::AssertSqlSafe(sql))
                .bind(coupon_id)
                .bind(order_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|err| ArchiveError(err.to_string()))?;
            row.map(UsageRow::into_use).transpose().map_err(|err| ArchiveError(err.to_string()))
        })
    }

    fn allocation(&self, id: Uuid) -> AllocationAnswer<'_> {
        Box::pin(async move {
            let allocation: Option<Option<String>> =
                sqlx::query_scalar("SELECT allocation::text FROM coupon_usage WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|err| ArchiveError(err.to_string()))?;
            Ok(allocation.flatten())
        })
    }
}
