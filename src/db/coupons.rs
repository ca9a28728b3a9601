//! Admin writes of coupon definitions. They reach every instance's catalog through the same
//! NOTIFY path as any other SQL client's writes.

use sqlx::{PgExecutor, PgPool, Postgres};

use crate::db::{Error, catalog, money};
use crate::domain::cart_discount::Class;
use crate::domain::cart_fields;
use crate::domain::coupon::{Coupon, CouponId};

/// Why a coupon write was refused.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("a coupon with code {0} already exists")]
    DuplicateCode(String),
    #[error("userId {0} does not exist")]
    UnknownUser(String),
    #[error("no coupon has code {0}")]
    NotFound(String),
    #[error("the database refused the change")]
    Refused,
    #[error(transparent)]
    Database(#[from] Error),
}

impl From<sqlx::Error> for WriteError {
    fn from(err: sqlx::Error) -> WriteError {
        WriteError::Database(Error::Sqlx(err))
    }
}

/// Inserts a checked coupon; returns it with the id and version the database gave it.
pub async fn insert<'e>(executor: impl PgExecutor<'e>, coupon: &Coupon) -> Result<Coupon, WriteError> {
    let (id, version): (CouponId, i64) = bind_coupon(
        sqlx::query_as(
            "INSERT INTO coupons (code, type, status, discount_type, discount_value, max_discount, min_order_value, \
             usage_limit, per_user_limit, user_id, valid_from, valid_until, campaign_id, batch_id, target, scope, \
             min_quantity, min_order_basis, allocation, bxgy, currency, currency_options, priority, combines_with) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16::jsonb, $17, $18, $19, \
             $20::jsonb, $21, $22::jsonb, $23, $24) RETURNING id, version",
        ),
        coupon,
    )
    .fetch_one(executor)
    .await
    .map_err(|err| refusal(err, coupon))?;
    Ok(Coupon { id, version, ..coupon.clone() })
}

/// Changes the coupon with `code` in one transaction: reads and locks it, asks `change` for
/// the new definition (`Ok(Err(..))` is the caller's refusal, nothing written), writes it.
pub async fn update<E>(
    pool: &PgPool,
    code: &str,
    change: impl FnOnce(&Coupon) -> Result<Coupon, E>,
) -> Result<Result<Coupon, E>, WriteError> {
    let mut tx = pool.begin().await?;
    let locked: Option<CouponId> =
        sqlx::query_scalar("SELECT id FROM coupons WHERE code = $1 AND batch_id IS NULL FOR UPDATE")
            .bind(code)
            .fetch_optional(&mut *tx)
            .await?;
    let not_found = || WriteError::NotFound(code.to_owned());
    locked.ok_or_else(not_found)?;
    let current = catalog::coupon_by_code(&mut *tx, code).await?.ok_or_else(not_found)?;
    let next = match change(&current) {
        Ok(next) => next,
        Err(refused) => return Ok(Err(refused)),
    };
    let (_, version): (CouponId, i64) = bind_coupon(
        sqlx::query_as(
            "UPDATE coupons SET code = $1, type = $2, status = $3, discount_type = $4, discount_value = $5, \
             max_discount = $6, min_order_value = $7, usage_limit = $8, per_user_limit = $9, user_id = $10, \
             valid_from = $11, valid_until = $12, campaign_id = $13, batch_id = $14, target = $15, \
             scope = $16::jsonb, min_quantity = $17, min_order_basis = $18, allocation = $19, bxgy = $20::jsonb, \
             currency = $21, currency_options = $22::jsonb, priority = $23, combines_with = $24 WHERE id = $25 \
             RETURNING id, version",
        ),
        &next,
    )
    .bind(next.id)
    .fetch_one(&mut *tx)
    .await
    .map_err(|err| refusal(err, &next))?;
    tx.commit().await?;
    Ok(Ok(Coupon { version, ..next }))
}

type CouponQuery<'q, O> = sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments>;

/// Binds the coupon columns in the order both statements name them.
fn bind_coupon<'q, O>(query: CouponQuery<'q, O>, coupon: &'q Coupon) -> CouponQuery<'q, O> {
    let (discount_type, value, cap) = coupon.discount.parts();
    let limit = |limit: Option<u32>| limit.map(|l| i32::try_from(l).unwrap_or(i32::MAX));
    query
        .bind(coupon.code.as_str())
        .bind(coupon.kind.as_str())
        .bind(coupon.status.as_str())
        .bind(discount_type.as_str())
        .bind(money::numeric(value))
        .bind(cap.map(money::numeric_cents))
        .bind(money::numeric_cents(coupon.min_order_value))
        .bind(limit(coupon.usage_limit))
        .bind(limit(coupon.per_user_limit))
        .bind(coupon.user_id.as_deref())
        .bind(coupon.valid_from)
        .bind(coupon.valid_until)
        .bind(coupon.campaign_id)
        .bind(coupon.batch_id)
        .bind(coupon.target.as_str())
        .bind(coupon.scope.as_deref().map(cart_fields::scope_json))
        .bind(limit(coupon.min_quantity))
        .bind(coupon.min_order_basis.as_str())
        .bind(coupon.discount.allocation().as_str())
        .bind(coupon.discount.buy_x_get_y().map(cart_fields::buy_x_get_y_json))
        .bind(coupon.currency.map(|c| c.code().to_owned()))
        .bind(coupon.currency_options.as_deref().map(cart_fields::currency_options_json))
        .bind(coupon.priority)
        .bind(coupon.combines_with.iter().map(Class::as_str).collect::<Vec<_>>())
}

/// Turns constraint violations into refusals the admin can act on; the database's own
/// message is logged, never returned.
fn refusal(err: sqlx::Error, coupon: &Coupon) -> WriteError {
    if let sqlx::Error::Database(db) = &err {
        match db.code().as_deref() {
            Some("23505") => return WriteError::DuplicateCode(coupon.code.to_string()),
            Some("23503") => return WriteError::UnknownUser(coupon.user_id.as_deref().unwrap_or_default().to_owned()),
            Some(code) if code.starts_with("22") || code.starts_with("23") => {
                tracing::warn!(error = %db, "coupon write refused by a constraint");
                return WriteError::Refused;
            }
            _ => {}
        }
    }
    WriteError::from(err)
}
