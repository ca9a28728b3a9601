//! Reads definitions into domain values: coupons, campaigns and batches of bulk codes.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use rust_decimal::Decimal;
use sqlx::{PgExecutor, PgPool};

use crate::db::{Error, money};
use crate::domain::campaign::Campaign;
use crate::domain::cart_discount::Target;
use crate::domain::cart_fields::{self, FieldError};
use crate::domain::coupon::{
    Allocation, BatchId, CampaignId, Coupon, CouponId, CouponKind, Discount, DiscountType, MinOrderBasis, Status,
};
use crate::domain::currency::Currency;
use crate::domain::stack::Classes;
use crate::engine::codes::{BatchBuilder, BatchCodes};

/// The coupon columns [`CouponRow`] reads, in one place.
macro_rules! coupon_select {
    () => {
        "SELECT id, code, type AS kind, status, discount_type, discount_value, max_discount, min_order_value, \
         usage_limit, per_user_limit, user_id, valid_from, valid_until, campaign_id, batch_id, version, \
         target, scope::text AS scope, min_quantity, min_order_basis, allocation, bxgy::text AS bxgy, currency, \
         currency_options::text AS currency_options, priority, combines_with FROM coupons"
    };
}

/// The campaign columns [`CampaignRow`] reads.
macro_rules! campaign_select {
    () => {
        "SELECT id, name, status, usage_limit, per_user_limit, budget, valid_from, valid_until, version FROM campaigns"
    };
}

#[derive(Debug, sqlx::FromRow)]
struct CouponRow {
    id: i64,
    code: String,
    kind: String,
    status: String,
    discount_type: String,
    discount_value: Decimal,
    max_discount: Option<Decimal>,
    min_order_value: Decimal,
    usage_limit: Option<i32>,
    per_user_limit: Option<i32>,
    user_id: Option<String>,
    valid_from: Option<DateTime<Utc>>,
    valid_until: Option<DateTime<Utc>>,
    campaign_id: Option<i64>,
    batch_id: Option<i64>,
    version: i64,
    target: String,
    scope: Option<String>,
    min_quantity: Option<i32>,
    min_order_basis: String,
    allocation: String,
    bxgy: Option<String>,
    currency: Option<String>,
    currency_options: Option<String>,
    priority: i32,
    combines_with: Vec<String>,
}

#[derive(Debug, sqlx::FromRow)]
struct CampaignRow {
    id: i64,
    name: String,
    status: String,
    usage_limit: Option<i32>,
    per_user_limit: Option<i32>,
    budget: Option<Decimal>,
    valid_from: Option<DateTime<Utc>>,
    valid_until: Option<DateTime<Utc>>,
    version: i64,
}

/// Every coupon, streamed so that a million rows never sit in memory twice.
pub(crate) async fn all_coupons(pool: &PgPool) -> Result<Vec<Coupon>, Error> {
    let mut rows = sqlx::query_as::<_, CouponRow>(coupon_select!()).fetch(pool);
    let mut coupons = Vec::new();
    while let Some(row) = rows.try_next().await? {
        coupons.push(row.into_coupon()?);
    }
    Ok(coupons)
}

/// The coupons with these ids that still exist.
pub(crate) async fn coupons_by_id(pool: &PgPool, ids: &[CouponId]) -> Result<Vec<Coupon>, Error> {
    let rows: Vec<CouponRow> =
        sqlx::query_as(concat!(coupon_select!(), " WHERE id = ANY($1)")).bind(ids).fetch_all(pool).await?;
    rows.into_iter().map(CouponRow::into_coupon).collect()
}

/// The coupon with this (normalised) code, if any; batch rules are not found by code.
pub(crate) async fn coupon_by_code<'e>(executor: impl PgExecutor<'e>, code: &str) -> Result<Option<Coupon>, Error> {
    let row: Option<CouponRow> = sqlx::query_as(concat!(coupon_select!(), " WHERE code = $1 AND batch_id IS NULL"))
        .bind(code)
        .fetch_optional(executor)
        .await?;
    row.map(CouponRow::into_coupon).transpose()
}

/// Every campaign.
pub(crate) async fn all_campaigns(pool: &PgPool) -> Result<Vec<Campaign>, Error> {
    let rows: Vec<CampaignRow> = sqlx::query_as(campaign_select!()).fetch_all(pool).await?;
    rows.into_iter().map(CampaignRow::into_campaign).collect()
}

/// The campaigns with these ids that still exist.
pub(crate) async fn campaigns_by_id(pool: &PgPool, ids: &[CampaignId]) -> Result<Vec<Campaign>, Error> {
    let rows: Vec<CampaignRow> =
        sqlx::query_as(concat!(campaign_select!(), " WHERE id = ANY($1)")).bind(ids).fetch_all(pool).await?;
    rows.into_iter().map(CampaignRow::into_campaign).collect()
}

/// The campaign with this name, if any.
pub(crate) async fn campaign_by_name<'e>(executor: impl PgExecutor<'e>, name: &str) -> Result<Option<Campaign>, Error> {
    let row: Option<CampaignRow> =
        sqlx::query_as(concat!(campaign_select!(), " WHERE name = $1")).bind(name).fetch_optional(executor).await?;
    row.map(CampaignRow::into_campaign).transpose()
}

/// A batch of bulk codes as the catalog needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchRow {
    pub id: BatchId,
    pub rule_id: Option<CouponId>,
    pub prefix: String,
    pub length: Option<i32>,
    pub uses_per_code: i32,
}

/// Every finished batch (a running or failed one has no usable code).
pub(crate) async fn done_batches(pool: &PgPool) -> Result<Vec<BatchRow>, Error> {
    Ok(sqlx::query_as(
        "SELECT id, rule_id, prefix, length, uses_per_code FROM code_batches \
         WHERE status = 'done' AND rule_id IS NOT NULL ORDER BY id",
    )
    .fetch_all(pool)
    .await?)
}

/// The batches with these ids, if finished.
pub(crate) async fn done_batches_by_id(pool: &PgPool, ids: &[BatchId]) -> Result<Vec<BatchRow>, Error> {
    Ok(sqlx::query_as(
        "SELECT id, rule_id, prefix, length, uses_per_code FROM code_batches \
         WHERE status = 'done' AND rule_id IS NOT NULL AND id = ANY($1) ORDER BY id",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?)
}

/// Reads a batch's codes (with COPY: tens of millions of short rows) and its assignments.
pub async fn batch_codes(pool: &PgPool, batch: &BatchRow) -> Result<Arc<BatchCodes>, Error> {
    let bad = |problem: &str| Error::BadRow { what: "batch", id: batch.id, problem: problem.to_owned() };
    let rule = batch.rule_id.ok_or_else(|| bad("it has no rule"))?;
    let uses = u32::try_from(batch.uses_per_code).map_err(|_| bad("uses_per_code is negative"))?;
    let width = batch.length.and_then(|l| usize::try_from(l).ok());
    let mut builder = BatchBuilder::new(batch.id, rule, uses, width.map(|w| (batch.prefix.as_str(), w)));
    let mut conn = pool.acquire().await?;
    // The id is an integer, so the statement cannot carry anything but it.
    let statement =
        format!("COPY (SELECT code FROM batch_codes WHERE batch_id = {} ORDER BY position) TO STDOUT", batch.id);
    let mut chunks = conn.copy_out_raw(&statement).await?;
    let mut partial = Vec::new();
    while let Some(chunk) = chunks.try_next().await? {
        partial.extend_from_slice(&chunk);
        let complete = partial.iter().rposition(|b| *b == b'\n').map_or(0, |end| end + 1);
        for line in partial[..complete].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            builder.push(std::str::from_utf8(line).map_err(|_| bad("a code is not UTF-8"))?);
        }
        partial.drain(..complete);
    }
    drop(chunks);
    drop(conn);
    let codes = builder.build();
    load_assignments(pool, &codes).await?;
    Ok(Arc::new(codes))
}

/// Reads which codes of a loaded batch were handed to whom.
pub(crate) async fn load_assignments(pool: &PgPool, codes: &BatchCodes) -> Result<(), Error> {
    let mut rows = sqlx::query_as::<_, (i32, String)>(
        "SELECT position, assigned_to FROM batch_codes WHERE batch_id = $1 AND assigned_to IS NOT NULL",
    )
    .bind(codes.id)
    .fetch(pool);
    while let Some((position, user)) = rows.try_next().await? {
        let position = u32::try_from(position).map_err(|_| Error::BadRow {
            what: "batch",
            id: codes.id,
            problem: "a position is negative".into(),
        })?;
        codes.assign(position, &user);
    }
    Ok(())
}

fn limit(value: Option<i32>, column: &str, bad: &dyn Fn(String) -> Error) -> Result<Option<u32>, Error> {
    value.map(|v| u32::try_from(v).map_err(|_| bad(format!("{column} is negative")))).transpose()
}

impl CouponRow {
    fn into_coupon(self) -> Result<Coupon, Error> {
        let id = self.id;
        let bad = |problem: String| Error::BadRow { what: "coupon", id, problem };
        let amount =
            |value: Decimal, column: &str| money::cents(value).ok_or_else(|| bad(format!("{column} out of range")));
        let kind = DiscountType::parse(&self.discount_type)
            .ok_or_else(|| bad(format!("unknown discount_type {:?}", self.discount_type)))?;
        let value = money::hundredths(self.discount_value).ok_or_else(|| bad("discount_value out of range".into()))?;
        let cap = self.max_discount.map(|c| amount(c, "max_discount")).transpose()?;
        let field = |err: FieldError| bad(err.to_string());
        let allocation = Allocation::parse(&self.allocation)
            .ok_or_else(|| bad(format!("unknown allocation {:?}", self.allocation)))?;
        let bxgy = self.bxgy.as_deref().map(cart_fields::parse_buy_x_get_y).transpose().map_err(field)?;
        let discount = Discount::from_parts(kind, value, cap, allocation, bxgy).map_err(|err| bad(err.to_string()))?;
        let coupon = Coupon {
            id,
            kind: CouponKind::parse(&self.kind).ok_or_else(|| bad(format!("unknown type {:?}", self.kind)))?,
            status: Status::parse(&self.status).ok_or_else(|| bad(format!("unknown status {:?}", self.status)))?,
            discount,
            min_order_value: amount(self.min_order_value, "min_order_value")?,
            usage_limit: limit(self.usage_limit, "usage_limit", &bad)?,
            per_user_limit: limit(self.per_user_limit, "per_user_limit", &bad)?,
            user_id: self.user_id.map(Into::into),
            valid_from: self.valid_from,
            valid_until: self.valid_until,
            campaign_id: self.campaign_id,
            batch_id: self.batch_id,
            version: self.version,
            target: Target::parse(&self.target).ok_or_else(|| bad(format!("unknown target {:?}", self.target)))?,
            scope: self.scope.as_deref().map(cart_fields::parse_scope).transpose().map_err(field)?.map(Arc::new),
            min_quantity: limit(self.min_quantity, "min_quantity", &bad)?,
            min_order_basis: MinOrderBasis::parse(&self.min_order_basis)
                .ok_or_else(|| bad(format!("unknown min_order_basis {:?}", self.min_order_basis)))?,
            currency: self
                .currency
                .map(|code| Currency::parse(&code).ok_or_else(|| bad(format!("unknown currency {code:?}"))))
                .transpose()?,
            currency_options: self
                .currency_options
                .as_deref()
                .map(cart_fields::parse_currency_options)
                .transpose()
                .map_err(field)?
                .map(Into::into),
            priority: self.priority,
            combines_with: Classes::parse(self.combines_with.iter().map(String::as_str)).map_err(bad)?,
            code: self.code.into(),
        };
        coupon.check_cart_fields().map_err(|err| bad(err.to_string()))?;
        Ok(coupon)
    }
}

impl CampaignRow {
    fn into_campaign(self) -> Result<Campaign, Error> {
        let id = self.id;
        let bad = |problem: String| Error::BadRow { what: "campaign", id, problem };
        Ok(Campaign {
            id,
            status: Status::parse(&self.status).ok_or_else(|| bad(format!("unknown status {:?}", self.status)))?,
            usage_limit: limit(self.usage_limit, "usage_limit", &bad)?,
            per_user_limit: limit(self.per_user_limit, "per_user_limit", &bad)?,
            budget: self
                .budget
                .map(|b| money::cents(b).ok_or_else(|| bad("budget out of range".into())))
                .transpose()?,
            valid_from: self.valid_from,
            valid_until: self.valid_until,
            version: self.version,
            name: self.name.into_boxed_str(),
        })
    }
}
