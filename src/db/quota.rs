//! What shipped rows do to the quotas, in the shipper's transaction: a row that starts
//! counting adds to `used` and leaves the lease that paid for it, a row that stops counting
//! (a release) frees its units, and what a lease paid for a use that did not land (a replay
//! made on two instances) goes back. One `quota_apply` per batch, whatever its size.

use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db::money;
use crate::domain::coupon::{CampaignId, CouponId};
use crate::domain::event::{Funding, Redeemed};
use crate::engine::ports::Scope;

/// A row as it was before the batch touched it.
#[derive(Debug, Clone)]
pub struct Before {
    pub user_id: String,
    pub live: bool,
    /// A live hold.
    pub hold: bool,
    pub coupon_id: CouponId,
    pub campaign_id: Option<CampaignId>,
    pub cents: u64,
}

/// A row as `rows_before` reads it.
type BeforeRow = (Uuid, String, bool, bool, i64, Option<i64>, Decimal);

/// The rows with these ids, locked until the shipper's transaction ends.
pub(crate) async fn rows_before(conn: &mut PgConnection, ids: &[Uuid]) -> Result<HashMap<Uuid, Before>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<BeforeRow> = sqlx::query_as(
        "SELECT id, user_id, released_at IS NULL, hold_expires_at IS NOT NULL, coupon_id, campaign_id, \
         discount_applied + coalesce(shipping_discount, 0) \
         FROM coupon_usage \
         WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, user_id, live, hold, coupon_id, campaign_id, discount)| {
            let cents = money::cents(discount).map_or(0, |c| c.get());
            (id, Before { user_id, live, hold: live && hold, coupon_id, campaign_id, cents })
        })
        .collect())
}

/// `before` with the rows of `ids` added as they are now.
pub async fn also(
    conn: &mut PgConnection,
    mut before: HashMap<Uuid, Before>,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Before>, sqlx::Error> {
    if !ids.is_empty() {
        before.extend(rows_before(conn, ids).await?);
    }
    Ok(before)
}

/// The changes a batch makes to the scopes, gathered before one statement applies them.
#[derive(Debug, Default)]
pub struct Effects {
    /// By scope and epoch: change of `used`, units spent from that epoch's lease.
    changes: BTreeMap<(Scope, i64), (i64, i64)>,
    /// Units to give back to a lease: (scope, instance, epoch) → units.
    refunds: BTreeMap<(Scope, String, i64), i64>,
    instance: Option<String>,
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Effects {
    /// A row starts (`sign` 1) or stops (-1) counting.
    pub fn row(&mut self, coupon: CouponId, campaign: Option<CampaignId>, cents: u64, sign: i64) {
        self.changes.entry((Scope::CouponUses(coupon), 0)).or_default().0 += sign;
        if let Some(campaign) = campaign {
            self.changes.entry((Scope::CampaignUses(campaign), 0)).or_default().0 += sign;
            self.changes.entry((Scope::CampaignCents(campaign), 0)).or_default().0 += sign * signed(cents);
        }
    }

    fn funded(coupon: CouponId, campaign: Option<CampaignId>, funding: &Funding) -> Vec<(Scope, i64)> {
        let mut scopes = Vec::new();
        if funding.spent.coupon > 0 {
            scopes.push((Scope::CouponUses(coupon), signed(funding.spent.coupon)));
        }
        if let Some(campaign) = campaign {
            if funding.spent.campaign > 0 {
                scopes.push((Scope::CampaignUses(campaign), signed(funding.spent.campaign)));
            }
            if funding.spent.cents > 0 {
                scopes.push((Scope::CampaignCents(campaign), signed(funding.spent.cents)));
            }
        }
        scopes
    }

    /// A row that landed was paid for by `funding`'s lease.
    pub fn spend(&mut self, coupon: CouponId, campaign: Option<CampaignId>, funding: &Funding) {
        self.instance.get_or_insert_with(|| funding.instance.clone());
        for (scope, units) in Effects::funded(coupon, campaign, funding) {
            self.changes.entry((scope, funding.epoch)).or_default().1 += units;
        }
    }

    /// A use that did not land gives back what `funding`'s lease paid.
    pub(crate) fn refund(&mut self, coupon: CouponId, campaign: Option<CampaignId>, funding: &Funding) {
        for (scope, units) in Effects::funded(coupon, campaign, funding) {
            *self.refunds.entry((scope, funding.instance.clone(), funding.epoch)).or_default() += units;
        }
    }

    /// Applies everything gathered; answers the units counted without a lease to pay.
    pub async fn apply(self, conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
        let mut overrun = 0;
        if !self.changes.is_empty() {
            let mut kinds = Vec::new();
            let mut scopes = Vec::new();
            let mut used = Vec::new();
            let mut spent = Vec::new();
            let mut epochs = Vec::new();
            for ((scope, epoch), (u, s)) in &self.changes {
                if *u == 0 && *s == 0 {
                    continue;
                }
                kinds.push(scope.kind());
                scopes.push(scope.id());
                used.push(*u);
                spent.push(*s);
                epochs.push(*epoch);
            }
            if !kinds.is_empty() {
                let n: i64 = sqlx::query_scalar("SELECT quota_apply($1, $2, $3, $4, $5, $6)")
                    .bind(&kinds)
                    .bind(&scopes)
                    .bind(&used)
                    .bind(&spent)
                    .bind(self.instance.as_deref().unwrap_or(""))
                    .bind(&epochs)
                    .fetch_one(&mut *conn)
                    .await?;
                overrun = u64::try_from(n).unwrap_or(0);
            }
        }
        for ((scope, instance, epoch), units) in &self.refunds {
            sqlx::query("SELECT quota_refund($1, $2, $3, $4, $5)")
                .bind(scope.kind())
                .bind(scope.id())
                .bind(instance)
                .bind(epoch)
                .bind(units)
                .execute(&mut *conn)
                .await?;
        }
        Ok(overrun)
    }
}

/// Lists an order that two users redeemed on two instances at once: `kept_user`'s row was
/// shipped first and stays; `r` lost.
pub(crate) async fn record_conflict(
    conn: &mut PgConnection,
    r: &Redeemed,
    kept_user: &str,
    instance: &str,
) -> Result<(), sqlx::Error> {
    tracing::warn!(
        order_id = %r.order_id,
        coupon_id = r.coupon_id,
        "an order was redeemed by two users on two instances at once; the later one is listed in order_conflicts"
    );
    sqlx::query(
        "INSERT INTO order_conflicts (usage_id, coupon_id, order_id, kept_user, lost_user, instance_id) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(r.id)
    .bind(r.coupon_id)
    .bind(&r.order_id)
    .bind(kept_user)
    .bind(&r.user_id)
    .bind(instance)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
