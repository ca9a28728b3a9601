//! Admin writes of campaign definitions. They reach every instance's catalog through the
//! NOTIFY path, like coupons.

use sqlx::{PgPool, Postgres};

use crate::db::{Error, catalog, money};
use crate::domain::campaign::Campaign;
use crate::domain::coupon::CampaignId;

/// Why a campaign write was refused.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("a campaign named {0} already exists")]
    DuplicateName(String),
    #[error("no campaign is named {0}")]
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

/// Inserts a checked campaign; returns it with the id and version the database gave it.
pub async fn insert(pool: &PgPool, campaign: &Campaign) -> Result<Campaign, WriteError> {
    let (id, version): (CampaignId, i64) = bind_campaign(
        sqlx::query_as(
            "INSERT INTO campaigns (name, status, usage_limit, per_user_limit, budget, valid_from, valid_until) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id, version",
        ),
        campaign,
    )
    .fetch_one(pool)
    .await
    .map_err(|err| refusal(err, campaign))?;
    Ok(Campaign { id, version, ..campaign.clone() })
}

/// Changes the campaign named `name` in one transaction: locks it, asks `change` for the new
/// definition (`Ok(Err(..))` is the caller's refusal, nothing written), writes it.
pub async fn update<E>(
    pool: &PgPool,
    name: &str,
    change: impl FnOnce(&Campaign) -> Result<Campaign, E>,
) -> Result<Result<Campaign, E>, WriteError> {
    let mut tx = pool.begin().await?;
    let locked: Option<CampaignId> = sqlx::query_scalar("SELECT id FROM campaigns WHERE name = $1 FOR UPDATE")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
    let not_found = || WriteError::NotFound(name.to_owned());
    locked.ok_or_else(not_found)?;
    let current = catalog::campaign_by_name(&mut *tx, name).await?.ok_or_else(not_found)?;
    let next = match change(&current) {
        Ok(next) => next,
        Err(refused) => return Ok(Err(refused)),
    };
    let (_, version): (CampaignId, i64) = bind_campaign(
        sqlx::query_as(
            "UPDATE campaigns SET name = $1, status = $2, usage_limit = $3, per_user_limit = $4, budget = $5, \
             valid_from = $6, valid_until = $7 WHERE id = $8 RETURNING id, version",
        ),
        &next,
    )
    .bind(next.id)
    .fetch_one(&mut *tx)
    .await
    .map_err(|err| refusal(err, &next))?;
    tx.commit().await?;
    Ok(Ok(Campaign { version, ..next }))
}

type CampaignQuery<'q, O> = sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments>;

/// Binds the campaign columns in the order both statements name them.
fn bind_campaign<'q, O>(query: CampaignQuery<'q, O>, campaign: &'q Campaign) -> CampaignQuery<'q, O> {
    let limit = |limit: Option<u32>| limit.map(|l| i32::try_from(l).unwrap_or(i32::MAX));
    query
        .bind(&*campaign.name)
        .bind(campaign.status.as_str())
        .bind(limit(campaign.usage_limit))
        .bind(limit(campaign.per_user_limit))
        .bind(campaign.budget.map(money::numeric_cents))
        .bind(campaign.valid_from)
        .bind(campaign.valid_until)
}

/// Turns constraint violations into refusals; the database's own message is logged.
fn refusal(err: sqlx::Error, campaign: &Campaign) -> WriteError {
    if let sqlx::Error::Database(db) = &err {
        match db.code().as_deref() {
            Some("23505") => return WriteError::DuplicateName(campaign.name.to_string()),
            Some(code) if code.starts_with("22") || code.starts_with("23") => {
                tracing::warn!(error = %db, "campaign write refused by a constraint");
                return WriteError::Refused;
            }
            _ => {}
        }
    }
    WriteError::from(err)
}
