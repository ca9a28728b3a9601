//! Claims sent together (group commit): the claims waiting on this instance go to PostgreSQL
//! in one statement (`claim_uses`), so that concurrent claims share one round trip and one
//! commit, and a hot limit's `quotas` row is locked once for many of them.
//!
//! Up to [`IN_FLIGHT`] statements run at once; a claim that arrives while they all run waits
//! for the next one, with every other claim that arrived meanwhile (at most [`MAX_BATCH`]).
//! Alone, a claim goes at once: batching adds no wait, only company.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use crate::db::cluster::units;
use crate::db::health::DatabaseHealth;
use crate::db::money;
use crate::domain::currency::Currency;
use crate::domain::event::GroupMark;
use crate::domain::money::Cents;
use crate::domain::rules::Reason;
use crate::engine::ledger::{CartMark, fingerprint};
use crate::engine::ports::{ClaimOutcome, ClaimRequest, PortError, SetClaim, StoredRow};
use crate::metrics::Metrics;

/// Statements in flight at once (the claims pool has more connections, for changes).
const IN_FLIGHT: usize = 4;
/// Claims in one statement at most.
const MAX_BATCH: usize = 64;

/// Where the engine's claims are queued for the next statement.
#[derive(Clone)]
pub struct Claims {
    queue: mpsc::UnboundedSender<Queued>,
    /// For a set's claims, which go in a statement of their own.
    sender: Arc<Sender>,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims").finish_non_exhaustive()
    }
}

/// A claim waiting for its statement, and where its answer goes.
struct Queued {
    claim: Claim,
    answer: oneshot::Sender<Result<ClaimOutcome, PortError>>,
}

/// A claim's arguments, owned, as `claim_uses` takes them.
struct Claim {
    id: Uuid,
    rev: i32,
    coupon: i64,
    code: Option<String>,
    user: String,
    order: String,
    value: Decimal,
    discount: Decimal,
    at: DateTime<Utc>,
    hold: Option<DateTime<Utc>>,
    campaign: Option<i64>,
    user_limit: Option<i32>,
    campaign_user_limit: Option<i32>,
    code_limit: Option<i32>,
    max_holds: Option<i32>,
    units_coupon: i64,
    units_campaign: i64,
    cents: i64,
    currency: Option<String>,
    items_hash: Option<Vec<u8>>,
    shipping: Option<Decimal>,
    allocation: Option<String>,
}

impl Claim {
    fn of(req: &ClaimRequest<'_>) -> Claim {
        let limit = |n: Option<u32>| n.map(|n| i32::try_from(n).unwrap_or(i32::MAX));
        let currency = req.cart.map(|c| c.currency);
        let shipping = req.cart.map(|c| Cents::new(c.shipping_discount).unwrap_or(Cents::ZERO));
        Claim {
            id: req.id,
            rev: i32::try_from(req.rev).unwrap_or(i32::MAX),
            coupon: req.coupon_id,
            code: req.code.map(str::to_owned),
            user: req.user_id.to_owned(),
            order: req.order_id.to_owned(),
            value: money::numeric_in(req.order_value, currency),
            discount: money::numeric_in(req.discount, currency),
            at: req.at,
            hold: req.hold_until,
            campaign: req.campaign,
            user_limit: limit(req.user_limit),
            campaign_user_limit: limit(req.campaign_user_limit),
            code_limit: limit(req.code_limit),
            max_holds: limit(req.max_holds),
            units_coupon: units(req.spent.coupon),
            units_campaign: units(req.spent.campaign),
            cents: units(req.spent.cents),
            currency: currency.map(String::from),
            items_hash: req.cart.map(|c| c.items_hash.to_vec()),
            shipping: shipping.map(|s| money::numeric_in(s, currency)),
            allocation: req.cart.map(|c| c.allocation.clone()),
        }
    }
}

#[derive(sqlx::FromRow)]
struct ClaimRow {
    n: i32,
    outcome: String,
    rev: i32,
    user_id: Option<String>,
    order_value: Option<Decimal>,
    discount: Option<Decimal>,
    hold_until: Option<DateTime<Utc>>,
    released: Option<bool>,
    currency: Option<String>,
    items_hash: Option<Vec<u8>>,
    shipping_discount: Option<Decimal>,
}

impl ClaimRow {
    fn outcome(self) -> ClaimOutcome {
        let rev = u32::try_from(self.rev).unwrap_or(0);
        let currency = self.currency.as_deref().and_then(Currency::parse);
        let amount = |value: Option<Decimal>| value.and_then(|v| money::amount_in(v, currency)).unwrap_or(Cents::ZERO);
        match self.outcome.as_str() {
            "taken" => ClaimOutcome::Taken { rev },
            "exists" => ClaimOutcome::Exists(StoredRow {
                rev,
                user_id: self.user_id.unwrap_or_default(),
                order_value: amount(self.order_value),
                // The row keeps the merchandise's discount; the use's is its whole effect.
                discount: Cents::new(amount(self.discount).get() + amount(self.shipping_discount).get())
                    .unwrap_or(Cents::ZERO),
                hold_until: self.hold_until,
                released: self.released.unwrap_or(false),
                cart: CartMark {
                    fingerprint: self.items_hash.as_deref().and_then(fingerprint),
                    shipping: amount(self.shipping_discount),
                },
            }),
            "user_limit" => ClaimOutcome::Refused(Reason::UserUsageLimitReached),
            "campaign_user_limit" => ClaimOutcome::Refused(Reason::CampaignUserLimitReached),
            "code_limit" => ClaimOutcome::Refused(Reason::UsageLimitReached),
            "too_many_holds" => ClaimOutcome::TooManyHolds,
            _ => ClaimOutcome::Fenced,
        }
    }
}

/// What every statement of one instance's epoch shares.
struct Sender {
    pool: PgPool,
    instance: String,
    epoch: i64,
    health: Arc<DatabaseHealth>,
    metrics: Arc<Metrics>,
}

impl Claims {
    /// Starts the task that sends this epoch's claims; it ends when the last `Claims` goes.
    pub fn start(
        pool: PgPool,
        instance: String,
        epoch: i64,
        health: Arc<DatabaseHealth>,
        metrics: Arc<Metrics>,
    ) -> Claims {
        let (queue, waiting) = mpsc::unbounded_channel();
        let sender = Arc::new(Sender { pool, instance, epoch, health, metrics });
        tokio::spawn(send_batches(sender.clone(), waiting));
        Claims { queue, sender }
    }

    /// Decides a set's claims (`claim_set`): all taken, or none.
    pub async fn claim_set(&self, reqs: &[ClaimRequest<'_>], group: &GroupMark) -> Result<SetClaim, PortError> {
        let claims: Vec<Claim> = reqs.iter().map(Claim::of).collect();
        self.sender.metrics.quota.claim_statements.increment(1);
        self.sender.metrics.quota.claims.increment(claims.len() as u64);
        let rows = self.sender.statement(&claims, Some(group)).await.map_err(|err| {
            if super::is_transient(&err) {
                self.sender.health.report_failure("cluster", &err);
            }
            PortError(err.to_string())
        })?;
        let mut revs = Vec::with_capacity(claims.len());
        for row in rows {
            let index = usize::try_from(row.n - 1).unwrap_or(usize::MAX);
            match row.outcome() {
                ClaimOutcome::Taken { rev } => revs.push(rev),
                outcome => return Ok(SetClaim::Stopped { index, outcome }),
            }
        }
        if revs.len() != claims.len() {
            return Err(PortError("claim_set gave the set no whole answer".into()));
        }
        Ok(SetClaim::Taken(revs))
    }

    /// Decides `req` in the next statement.
    pub async fn claim(&self, req: &ClaimRequest<'_>) -> Result<ClaimOutcome, PortError> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Queued { claim: Claim::of(req), answer })
            .map_err(|_| PortError("the claims' sender has stopped".into()))?;
        answered.await.map_err(|_| PortError("the claims' sender has stopped".into()))?
    }
}

async fn send_batches(sender: Arc<Sender>, mut waiting: mpsc::UnboundedReceiver<Queued>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let Some(first) = waiting.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let sender = sender.clone();
        tokio::spawn(async move {
            sender.send(batch).await;
            drop(permit);
        });
    }
}

impl Sender {
    /// Sends one statement and hands each claim its answer. A failure is every claim's: none
    /// of them committed, or (the answer lost) all of them did.
    async fn send(&self, batch: Vec<Queued>) {
        self.metrics.quota.claim_statements.increment(1);
        self.metrics.quota.claims.increment(batch.len() as u64);
        let (claims, answers): (Vec<Claim>, Vec<_>) = batch.into_iter().map(|q| (q.claim, q.answer)).unzip();
        match self.statement(&claims, None).await {
            Ok(rows) => {
                let mut outcomes: Vec<Option<ClaimOutcome>> = (0..claims.len()).map(|_| None).collect();
                for row in rows {
                    let at = usize::try_from(row.n - 1).ok().filter(|at| *at < outcomes.len());
                    if let Some(at) = at {
                        outcomes[at] = Some(row.outcome());
                    }
                }
                for (answer, outcome) in answers.into_iter().zip(outcomes) {
                    let outcome = outcome.ok_or_else(|| PortError("claim_uses gave this claim no answer".into()));
                    let _ = answer.send(outcome);
                }
            }
            Err(err) => {
                if super::is_transient(&err) {
                    self.health.report_failure("cluster", &err);
                }
                let err = PortError(err.to_string());
                for answer in answers {
                    let _ = answer.send(Err(err.clone()));
                }
            }
        }
    }

    /// `claim_uses` over `claims`, or, for a set's claims, `claim_set`.
    async fn statement(&self, claims: &[Claim], group: Option<&GroupMark>) -> Result<Vec<ClaimRow>, sqlx::Error> {
        fn column<T>(claims: &[Claim], f: impl Fn(&Claim) -> T) -> Vec<T> {
            claims.iter().map(f).collect()
        }
        const USES: &str = "SELECT n, outcome, rev, user_id, order_value, discount, hold_until, released, currency, \
             items_hash, shipping_discount FROM claim_uses($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
             $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24::text[]::jsonb[])";
        const SET: &str = "SELECT n, outcome, rev, user_id, order_value, discount, hold_until, released, currency, \
             items_hash, shipping_discount FROM claim_set($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
             $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24::text[]::jsonb[], $25, $26::jsonb)";
        let codes = group.map(|g| serde_json::to_string(&g.codes).expect("codes serialise"));
        sqlx::query_as(if group.is_some() { SET } else { USES })
            .bind(column(claims, |c| c.id))
            .bind(column(claims, |c| c.rev))
            .bind(column(claims, |c| c.coupon))
            .bind(column(claims, |c| c.code.clone()))
            .bind(column(claims, |c| c.user.clone()))
            .bind(column(claims, |c| c.order.clone()))
            .bind(column(claims, |c| c.value))
            .bind(column(claims, |c| c.discount))
            .bind(column(claims, |c| c.at))
            .bind(column(claims, |c| c.hold))
            .bind(column(claims, |c| c.campaign))
            .bind(column(claims, |c| c.user_limit))
            .bind(column(claims, |c| c.campaign_user_limit))
            .bind(column(claims, |c| c.code_limit))
            .bind(column(claims, |c| c.max_holds))
            .bind(&self.instance)
            .bind(self.epoch)
            .bind(column(claims, |c| c.units_coupon))
            .bind(column(claims, |c| c.units_campaign))
            .bind(column(claims, |c| c.cents))
            .bind(column(claims, |c| c.currency.clone()))
            .bind(column(claims, |c| c.items_hash.clone()))
            .bind(column(claims, |c| c.shipping))
            .bind(column(claims, |c| c.allocation.clone()))
            .bind(group.map(|g| g.id))
            .bind(codes)
            .fetch_all(&self.pool)
            .await
    }
}
