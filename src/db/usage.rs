//! Reads the uses stored in `coupon_usage` (redemptions and holds) at start-up.

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use crate::db::{Error, money};
use crate::domain::coupon::CouponId;
use crate::engine::StoredUse;
use crate::engine::ports::{ArchiveAnswer, ArchiveError, ArchivedOrder, UsageArchive};

#[derive(Debug, sqlx::FromRow)]
struct UsageRow {
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
}

/// Every use, streamed: live ones count against the limits, released ones keep their order
/// id spent (a redemption) or not (a hold), holds get their deadlines.
pub async fn all_uses(pool: &PgPool) -> Result<Vec<StoredUse>, Error> {
    let mut rows = sqlx::query_as::<_, UsageRow>(
        "SELECT id, rev, coupon_id, code, user_id, order_id, order_value, discount_applied, hold_expires_at, \
         released_at, instance_id FROM coupon_usage",
    )
    .fetch(pool);
    let mut uses = Vec::new();
    while let Some(row) = rows.try_next().await? {
        let bad = |problem: &str| Error::BadRow {
            what: "coupon_usage row of coupon",
            id: row.coupon_id,
            problem: problem.into(),
        };
        uses.push(StoredUse {
            id: row.id,
            rev: u32::try_from(row.rev).map_err(|_| bad("rev is negative"))?,
            coupon_id: row.coupon_id,
            code: row.code,
            user_id: row.user_id,
            order_id: row.order_id,
            order_value: money::cents(row.order_value).ok_or_else(|| bad("order_value out of range"))?,
            discount: money::cents(row.discount_applied).ok_or_else(|| bad("discount_applied out of range"))?,
            hold_until: row.hold_expires_at,
            released_at: row.released_at,
            made_by: row.instance_id,
        });
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
}
