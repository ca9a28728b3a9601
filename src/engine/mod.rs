//! The engine: every use case of the service on typed inputs and outcomes, with no HTTP and
//! no SQL. It owns the catalog (definitions), the ledger (uses) and the journal handle
//! (durability); HTTP handlers parse, call it and render, and benches and tests call it
//! directly.
//!
//! Invariant: an answer that takes or gives back a use (a redemption, a hold, a
//! confirmation, a release, an expiry) is given only once its event is on disk in the
//! journal; until then the ledger marks the slot as settling and a concurrent request for the
//! same order waits for it.

pub mod alone;
pub mod campaigns;
pub mod catalog;
pub mod clock;
pub mod cluster;
pub mod codes;
pub mod forgotten;
pub mod holds;
pub mod leases;
pub mod ledger;
pub mod limits;
pub mod ports;
pub mod standing;

use std::borrow::Cow;
use std::cell::OnceCell;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use compact_str::CompactString;
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::coupon::{BatchId, CampaignId, CouponId, normalize_code};
use crate::domain::event::{Confirmed, Event, ReleaseCause, Released, Validated};
use crate::domain::identity::redemption_id;
use crate::domain::money::Cents;
use crate::domain::rules::{self, Attempt, CodeTerms, Decision, Offer, Reason, Usage};
use crate::engine::catalog::{Catalog, CatalogStore, Found};
use crate::engine::clock::Clock;
use crate::engine::codes::BatchCodes;
use crate::engine::forgotten::Forgotten;
use crate::engine::holds::Deadlines;
use crate::engine::ledger::{Count, Counted, Ended, IdKey, Ledger, OrderKey, Slot, SlotState, Tally, code_slot};
use crate::engine::limits::{
    CampaignBudget, CampaignCap, CampaignPerUser, CodeUses, CouponPerUser, CouponTotal, Limits, OrderOnce, Refusal,
    Use, UserHolds,
};
use crate::engine::ports::{ArchiveError, ClaimOutcome, PortError, Ports};
use crate::journal::{Journal, JournalError};
use crate::metrics::Metrics;

/// Expiries handled together, each its own journal append in one group commit.
const EXPIRY_BATCH: usize = 10_000;

/// How the engine behaves.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// How long a request waits for a concurrent request of the same order to settle.
    pub settle_timeout: Duration,
    /// Live holds one user may have across every coupon.
    pub max_active_holds_per_user: u32,
    /// How long a released redemption is remembered before only the forgotten-order filter
    /// (and PostgreSQL) knows of it.
    pub released_retention: Duration,
    /// Orders the filter is sized for (1% false positives there; more beyond, never wrong).
    pub forgotten_capacity: u64,
}

/// A failure of the service itself (the answer is a 503, not a refusal).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("a concurrent request for the same order did not settle in time")]
    Busy,
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Cluster(#[from] crate::engine::ports::PortError),
}

/// A validate request, well-formed.
#[derive(Debug, Clone, Copy)]
pub struct ValidateRequest<'a> {
    /// As the client sent it; normalised here.
    pub code: &'a str,
    pub user_id: &'a str,
    pub order_value: Cents,
    pub order_id: Option<&'a str>,
}

/// What the validation log keeps about the caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<CompactString>,
    /// When the request arrived, for its response time.
    pub started: Instant,
}

/// The answer to a validate request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation<'a> {
    /// Normalised.
    pub code: Cow<'a, str>,
    pub coupon_id: Option<CouponId>,
    pub decision: Decision,
}

/// A redeem or hold request, well-formed.
#[derive(Debug, Clone, Copy)]
pub struct UseRequest<'a> {
    pub code: &'a str,
    pub user_id: &'a str,
    pub order_id: &'a str,
    pub order_value: Cents,
}

/// A release request, well-formed.
#[derive(Debug, Clone, Copy)]
pub struct ReleaseRequest<'a> {
    pub code: &'a str,
    pub order_id: &'a str,
    /// When given, it must be the redeemer's.
    pub user_id: Option<&'a str>,
}

/// A use taken, as the client is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub id: Uuid,
    /// Normalised.
    pub code: String,
    pub discount: Cents,
    pub final_amount: Cents,
    /// For a hold.
    pub expires_at: Option<DateTime<Utc>>,
    /// What became of a hold this order had: confirmed by this redemption, or expired first.
    pub hold: Option<HoldFate>,
}

/// What became of a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldFate {
    Confirmed,
    Cancelled,
    Expired,
}

impl HoldFate {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldFate::Confirmed => "confirmed",
            HoldFate::Cancelled => "cancelled",
            HoldFate::Expired => "expired",
        }
    }
}

/// Why a use was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A rule refused (422).
    Rule(Reason),
    /// The order holds this coupon already, as another user or as a redemption (409).
    OrderTaken,
    /// The same order again with another order value (409).
    IdempotencyMismatch,
    /// The user holds too many uses already (429).
    TooManyHolds,
    /// The units this use needs cannot be had now: held by other instances, in doubt after
    /// a crash, or PostgreSQL unreachable (503, never a false limit).
    QuotaUnavailable,
}

impl Refused {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Rule(reason) => reason.as_str(),
            Refused::OrderTaken => Reason::OrderAlreadyRedeemed.as_str(),
            Refused::IdempotencyMismatch => "IDEMPOTENCY_MISMATCH",
            Refused::TooManyHolds => "TOO_MANY_HOLDS",
            Refused::QuotaUnavailable => "QUOTA_UNAVAILABLE",
        }
    }
}

/// The answer to a redeem or a hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UseOutcome {
    /// A new redemption or hold (201).
    Taken(Receipt),
    /// The same order by the same user again: the same redemption or hold (200).
    Replayed(Receipt),
    /// A redeem turned the order's hold into the redemption (201).
    Confirmed(Receipt),
    Refused(Refused),
}

impl UseOutcome {
    /// The metric label.
    fn label(&self) -> &'static str {
        match self {
            UseOutcome::Taken(_) => "redeemed",
            UseOutcome::Replayed(_) => "replayed",
            UseOutcome::Confirmed(_) => "confirmed",
            UseOutcome::Refused(refused) => refused.as_str(),
        }
    }
}

/// The answer to a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// Given back now; for a hold, how it ended.
    Released {
        hold: Option<HoldFate>,
    },
    /// Given back before.
    AlreadyReleased,
    NotFound,
}

/// Whether a use is a redemption or a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UseKind {
    Redeem,
    Hold { ttl: Duration },
}

/// A use read back from PostgreSQL at start-up.
#[derive(Debug, Clone)]
pub struct StoredUse {
    pub id: Uuid,
    pub rev: u32,
    pub coupon_id: CouponId,
    pub code: Option<String>,
    pub user_id: String,
    pub order_id: String,
    pub order_value: Cents,
    pub discount: Cents,
    pub hold_until: Option<DateTime<Utc>>,
    pub released_at: Option<DateTime<Utc>>,
    /// The instance that made it (none before instances were named).
    pub made_by: Option<String>,
}

/// The service's core; shared behind an `Arc`.
#[derive(Debug)]
pub struct Engine {
    catalog: CatalogStore,
    ledger: Ledger,
    forgotten: Forgotten,
    journal: Journal,
    ports: Ports,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    deadlines: Deadlines,
    live_holds: AtomicI64,
    settings: EngineSettings,
    cluster: std::sync::OnceLock<cluster::Cluster>,
    /// Orders whose claim failed without an answer: it may have committed. Nothing more is
    /// decided about one here until PostgreSQL has said what it holds (`Engine::settle_doubt`).
    pub(crate) doubtful: cluster::Doubts,
    /// Held (read) by every decision from the moment it reads the mode until it is recorded;
    /// written by a switch of mode (`engine::alone`), which so waits for decisions in flight.
    pub(crate) decisions: tokio::sync::RwLock<()>,
}

impl Engine {
    pub fn new(
        journal: Journal,
        ports: Ports,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        settings: EngineSettings,
    ) -> Engine {
        Engine {
            catalog: CatalogStore::default(),
            ledger: Ledger::default(),
            forgotten: Forgotten::with_capacity(settings.forgotten_capacity),
            journal,
            ports,
            clock,
            metrics,
            deadlines: Deadlines::default(),
            live_holds: AtomicI64::new(0),
            settings,
            cluster: std::sync::OnceLock::new(),
            doubtful: cluster::Doubts::default(),
            decisions: tokio::sync::RwLock::new(()),
        }
    }

    /// The definitions.
    pub fn catalog(&self) -> &CatalogStore {
        &self.catalog
    }

    /// The uses.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The journal handle.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The engine's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Live holds.
    pub fn live_holds(&self) -> i64 {
        self.live_holds.load(Ordering::Relaxed)
    }

    /// The filter of forgotten orders.
    pub fn forgotten(&self) -> &Forgotten {
        &self.forgotten
    }

    /// Validates a request (read-only) and logs it.
    pub fn validate<'a>(&self, req: &ValidateRequest<'a>, caller: &Caller) -> Validation<'a> {
        let code = normalize_code(req.code);
        let catalog = self.catalog.load();
        let attempt = Attempt { user_id: req.user_id, order_value: req.order_value, order_id: req.order_id };
        let now = self.clock.now();
        let (coupon_id, decision) = match catalog.find(&code) {
            None => (None, Decision::Rejected(Reason::CouponNotFound)),
            Some(found) => {
                let offer = offer(&catalog, found, req.user_id);
                let view = self.view(&offer, found, req.user_id, req.order_id);
                (Some(found.coupon().id), rules::validate(&offer, &view, &attempt, now))
            }
        };
        let (reason, discount, final_amount) = match decision {
            Decision::Valid { discount, final_amount } => (None, discount, final_amount),
            Decision::Rejected(reason) => (Some(reason), Cents::ZERO, req.order_value),
        };
        self.metrics.validations.inc(reason.map_or("valid", Reason::as_str));
        self.ports.validations.record(Validated {
            coupon_code: code.as_ref().into(),
            coupon_id,
            user_id: req.user_id.into(),
            order_id: req.order_id.map(Into::into),
            order_value: req.order_value,
            reason,
            discount,
            final_amount,
            ip_address: caller.ip,
            user_agent: caller.user_agent.clone(),
            response_time_us: u64::try_from(caller.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            validated_at: now,
        });
        Validation { code, coupon_id, decision }
    }

    /// Redeems: takes one use for the order, durably, within every limit; replays answer
    /// the same; a live hold of the same order and user is confirmed.
    pub async fn redeem(&self, req: &UseRequest<'_>) -> Result<UseOutcome, EngineError> {
        let outcome = self.take_use(req, UseKind::Redeem).await?;
        self.metrics.redemptions.inc(outcome.label());
        Ok(outcome)
    }

    /// Holds: takes one use for the order until `ttl` passes, durably, within every limit.
    pub async fn hold(&self, req: &UseRequest<'_>, ttl: Duration) -> Result<UseOutcome, EngineError> {
        let outcome = self.take_use(req, UseKind::Hold { ttl }).await?;
        self.metrics.holds.inc(match &outcome {
            UseOutcome::Taken(_) => "held",
            other => other.label(),
        });
        Ok(outcome)
    }

    async fn take_use(&self, req: &UseRequest<'_>, kind: UseKind) -> Result<UseOutcome, EngineError> {
        let _decisions = self.decisions.read().await;
        let code = normalize_code(req.code);
        let user = self.ledger.id_key(req.user_id);
        let waited_until = Instant::now() + self.settings.settle_timeout;
        let mut hold_fate = None;
        loop {
            let catalog = self.catalog.load_full();
            let Some(found) = catalog.find(&code) else {
                return Ok(UseOutcome::Refused(Refused::Rule(Reason::CouponNotFound)));
            };
            let coupon = found.coupon();
            if self.mode().lags() && (matches!(kind, UseKind::Hold { .. }) || limited(&catalog, found)) {
                // What this instance knows of it may lag: the one deciding alone may not have
                // shipped everything yet, or this one's feed not read it.
                return Ok(UseOutcome::Refused(Refused::QuotaUnavailable));
            }
            let key = (coupon.id, self.ledger.id_key(req.order_id));
            self.settle_doubt(key).await?;
            let now = self.clock.now();
            if let Some(slot) = self.ledger.slot(key) {
                let receipt = |expires_at| Receipt {
                    id: slot.id,
                    code: code.to_string(),
                    discount: slot.discount,
                    final_amount: slot.order_value.saturating_sub(slot.discount),
                    expires_at,
                    hold: None,
                };
                match slot.state {
                    SlotState::Taking { .. } | SlotState::Changing => {
                        self.wait_settled(key, waited_until).await?;
                        continue;
                    }
                    SlotState::Held { until } if until <= now.timestamp_millis() => {
                        if self.changed_in_postgres(&slot) {
                            if self.change_in_postgres(key, slot, true).await.is_err() {
                                return Ok(UseOutcome::Refused(Refused::QuotaUnavailable));
                            }
                        } else {
                            self.expire(key, until).await?;
                        }
                        hold_fate = Some(HoldFate::Expired);
                        continue;
                    }
                    _ if slot.user != user => return Ok(UseOutcome::Refused(Refused::OrderTaken)),
                    SlotState::Held { until } => {
                        if slot.order_value != req.order_value {
                            return Ok(UseOutcome::Refused(Refused::IdempotencyMismatch));
                        }
                        match kind {
                            UseKind::Hold { .. } => return Ok(UseOutcome::Replayed(receipt(millis(until)))),
                            UseKind::Redeem if self.changed_in_postgres(&slot) => {
                                match self.change_in_postgres(key, slot, false).await {
                                    Ok(true) => {
                                        let receipt = Receipt { hold: Some(HoldFate::Confirmed), ..receipt(None) };
                                        return Ok(UseOutcome::Confirmed(receipt));
                                    }
                                    Ok(false) => continue,
                                    Err(_) => return Ok(UseOutcome::Refused(Refused::QuotaUnavailable)),
                                }
                            }
                            UseKind::Redeem => match self.confirm(key, slot, until).await? {
                                true => {
                                    let receipt = Receipt { hold: Some(HoldFate::Confirmed), ..receipt(None) };
                                    return Ok(UseOutcome::Confirmed(receipt));
                                }
                                false => continue,
                            },
                        }
                    }
                    SlotState::Live => {
                        return Ok(UseOutcome::Refused(match kind {
                            UseKind::Hold { .. } => Refused::OrderTaken,
                            UseKind::Redeem if slot.order_value != req.order_value => Refused::IdempotencyMismatch,
                            UseKind::Redeem => return Ok(UseOutcome::Replayed(receipt(None))),
                        }));
                    }
                    SlotState::Released { ended: Ended::Redemption, .. } => {
                        return Ok(UseOutcome::Refused(Refused::OrderTaken));
                    }
                    // The deadline won the race with this confirmation: the answer says so.
                    SlotState::Released { ended: Ended::ExpiredHold, .. } => {
                        hold_fate.get_or_insert(HoldFate::Expired);
                    }
                    SlotState::Released { ended: Ended::CancelledHold, .. } => {}
                }
            }
            let prior_rev = match self.archived(key, req.order_id).await? {
                Archived::Unknown => 0,
                Archived::FreeAfter(rev) => rev,
                Archived::Spent => return Ok(UseOutcome::Refused(Refused::OrderTaken)),
            };
            match self.take_fresh(&catalog, found, key, user, req, kind, now, prior_rev).await? {
                Some(UseOutcome::Taken(receipt)) => {
                    return Ok(UseOutcome::Taken(Receipt { hold: hold_fate, code: code.to_string(), ..receipt }));
                }
                Some(outcome) => return Ok(outcome),
                // A concurrent request claimed the order first: answer as its replay.
                None => continue,
            }
        }
    }

    /// Applies the rules and takes every limit for a new use of `key`; `None` if another
    /// request claimed the order meanwhile.
    #[allow(clippy::too_many_arguments, reason = "one call site; the parts of one request")]
    async fn take_fresh(
        &self,
        catalog: &Catalog,
        found: Found<'_>,
        key: OrderKey,
        user: IdKey,
        req: &UseRequest<'_>,
        kind: UseKind,
        now: DateTime<Utc>,
        prior_rev: u32,
    ) -> Result<Option<UseOutcome>, EngineError> {
        let coupon = found.coupon();
        let offer = offer(catalog, found, req.user_id);
        // The order is not checked here: claiming it is the first limit below.
        let view = self.view(&offer, found, req.user_id, None);
        let attempt = Attempt { user_id: req.user_id, order_value: req.order_value, order_id: None };
        let discount = match rules::validate(&offer, &view, &attempt, now) {
            Decision::Valid { discount, .. } => discount,
            Decision::Rejected(reason) => return Ok(Some(UseOutcome::Refused(Refused::Rule(reason)))),
        };
        let campaign = offer.campaign.filter(|_| rules::takes_campaign_use(discount));
        let code = match found {
            Found::Code { code, .. } => Some((code.batch, code.index)),
            Found::Coupon(_) => None,
        };
        // Whole milliseconds, the deadlines' unit: the deadline the client, the journal and
        // PostgreSQL see is exactly the one the expiry keeps, never a fraction later.
        let hold_until = match kind {
            UseKind::Hold { ttl } => {
                let until = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
                Some(millis(until.timestamp_millis()).unwrap_or(until))
            }
            UseKind::Redeem => None,
        };
        let id = redemption_id(coupon.id, req.order_id);
        let slot = Slot {
            id,
            rev: prior_rev + 1,
            user,
            order_value: req.order_value,
            discount,
            code: code.map(code_slot),
            campaign: campaign.and_then(|c| std::num::NonZeroI64::new(c.id)),
            counted: Counted {
                coupon_user: coupon.per_user_limit.is_some(),
                campaign_user: campaign.is_some_and(|c| c.per_user_limit.is_some()),
            },
            foreign: false,
            state: SlotState::Taking { hold: hold_until.is_some() },
        };
        // Among instances the totals are the leases' (below): this ledger counts the uses it
        // knows of, and the per-user counts stay a first, local check. Alone, it decides all.
        let mode = self.mode();
        let code_limit = offer.code.map(|c| c.uses_limit);
        let totals =
            cluster::totals(coupon, campaign.map(|c| (c.id, c.usage_limit.is_some(), c.budget.is_some())), discount);
        // A use under any limit: among instances it is claimed, so that the order is one use
        // for every instance before the answer (API.md §6), not only once the feed has
        // carried it. Only a use under no limit at all is journalled then, and may meet the
        // same order taken elsewhere (the order conflict §6 allows).
        let limited = !totals.is_empty()
            || coupon.per_user_limit.is_some()
            || campaign.is_some_and(|c| c.per_user_limit.is_some())
            || code_limit.is_some()
            || hold_until.is_some();
        if limited && !self.may_take_limited() {
            return Ok(Some(UseOutcome::Refused(Refused::QuotaUnavailable)));
        }
        let cluster = self.cluster.get().filter(|_| mode == alone::Mode::Sharing);
        let local = |cap| if cluster.is_some() { None } else { cap };
        let limits = Limits {
            order: OrderOnce { slot },
            holds: UserHolds(Some(self.settings.max_active_holds_per_user)),
            code: CodeUses(offer.code.map(|c| c.uses_limit)),
            total: CouponTotal(local(coupon.usage_limit)),
            per_user: CouponPerUser(coupon.per_user_limit),
            campaign: CampaignCap(local(campaign.and_then(|c| c.usage_limit))),
            campaign_user: CampaignPerUser(campaign.and_then(|c| c.per_user_limit)),
            budget: CampaignBudget(campaign.and_then(|c| c.budget).filter(|_| cluster.is_none())),
        };
        let u = Use::of_slot(key, coupon.id, &slot);
        match limits::take(&limits.chain(), &self.ledger, &u) {
            Ok(()) => {}
            Err(Refusal::OrderTaken(_)) => return Ok(None),
            Err(Refusal::Rule(reason)) => return Ok(Some(UseOutcome::Refused(Refused::Rule(reason)))),
            Err(Refusal::TooManyHolds) => return Ok(Some(UseOutcome::Refused(Refused::TooManyHolds))),
        }
        // A per-user limit published since `catalog` was read may not have seen this use in
        // its back-fill: count it as the definitions now say.
        self.ledger.count_user_of(key, counted(&self.catalog.load(), coupon.id, u.campaign));
        let mut rev = self.ledger.slot(key).map_or(1, |s| s.rev);
        let give_back_all = |u: Use| {
            // Give back what the slot counts now: a back-fill may have added to it.
            let u = self.ledger.slot(key).map_or(u, |now| Use::of_slot(key, coupon.id, &now));
            limits::give_back(&limits.chain(), &self.ledger, &u);
        };
        let code_text = matches!(found, Found::Code { .. }).then(|| normalize_code(req.code).into_owned());
        let mut funded_by = None;
        if let Some(cluster) = cluster {
            let spent = match self.spend_leases(cluster, &totals).await {
                Ok(spent) => spent,
                Err(short) => {
                    give_back_all(u);
                    return Ok(Some(UseOutcome::Refused(match short {
                        cluster::Short::Limit(reason) => Refused::Rule(reason),
                        cluster::Short::Unavailable => Refused::QuotaUnavailable,
                    })));
                }
            };
            if limited {
                let claim = crate::engine::ports::ClaimRequest {
                    id,
                    rev,
                    coupon_id: coupon.id,
                    code: code_text.as_deref(),
                    user_id: req.user_id,
                    order_id: req.order_id,
                    order_value: req.order_value,
                    discount,
                    at: now,
                    hold_until,
                    campaign: campaign.map(|c| c.id),
                    user_limit: coupon.per_user_limit,
                    campaign_user_limit: campaign.and_then(|c| c.per_user_limit),
                    code_limit,
                    max_holds: Some(self.settings.max_active_holds_per_user),
                    spent,
                };
                self.metrics.quota.waits.inc("claim");
                // PostgreSQL counts only what it has: a release or confirmation of this
                // instance's own, still in its journal when the claim was made, may be what
                // makes room (it may land while the claim runs, too late for its count).
                let unshipped = self.journal.backlog() > 0;
                let mut outcome = cluster.port.claim(&claim).await;
                if matches!(outcome, Ok(ClaimOutcome::Refused(_) | ClaimOutcome::TooManyHolds)) && unshipped {
                    self.journal.wait_shipped(self.settings.settle_timeout).await;
                    outcome = cluster.port.claim(&claim).await;
                    tracing::debug!(?outcome, "claim asked again once this instance's journal was shipped");
                }
                let refused = match outcome {
                    Ok(ClaimOutcome::Taken { rev: stored }) => {
                        rev = stored;
                        None
                    }
                    Ok(ClaimOutcome::Exists(row)) => {
                        cluster::put_back(cluster, &totals);
                        give_back_all(u);
                        self.remember_row(key, req, &row);
                        // The order's row as PostgreSQL has it answers, as a replay would.
                        return Ok(None);
                    }
                    Ok(ClaimOutcome::Refused(reason)) => Some(Refused::Rule(reason)),
                    Ok(ClaimOutcome::TooManyHolds) => Some(Refused::TooManyHolds),
                    Ok(ClaimOutcome::Fenced) => Some(Refused::QuotaUnavailable),
                    Err(err) => {
                        // It may have committed: its lease units wait with the order's doubt.
                        tracing::debug!(error = %err, "a claim could not be made, or its answer was lost");
                        self.doubtful.add(key, &claim, &totals);
                        give_back_all(u);
                        return Ok(Some(UseOutcome::Refused(Refused::QuotaUnavailable)));
                    }
                };
                if let Some(refused) = refused {
                    cluster::put_back(cluster, &totals);
                    give_back_all(u);
                    return Ok(Some(UseOutcome::Refused(refused)));
                }
                return Ok(Some(self.settle_taken(key, id, rev, discount, req, hold_until)));
            }
            if !spent.is_empty() {
                funded_by = Some(crate::domain::event::Funding {
                    instance: cluster.instance.clone(),
                    epoch: cluster.epoch,
                    spent,
                });
            }
        }
        let event = Event::Redeemed(crate::domain::event::Redeemed {
            id,
            rev,
            coupon_id: coupon.id,
            code: code_text,
            user_id: req.user_id.to_owned(),
            order_id: req.order_id.to_owned(),
            order_value: req.order_value,
            discount,
            at: now,
            hold_until,
            campaign: campaign.map(|c| c.id),
            funded_by,
        });
        if let Err(err) = self.journal.append(&event.encode()).await {
            if let Some(cluster) = cluster {
                cluster::put_back(cluster, &totals);
            }
            give_back_all(u);
            return Err(err.into());
        }
        Ok(Some(self.settle_taken(key, id, rev, discount, req, hold_until)))
    }

    /// Marks a use taken durably (journalled, or written by PostgreSQL) and answers it.
    fn settle_taken(
        &self,
        key: OrderKey,
        id: Uuid,
        rev: u32,
        discount: Cents,
        req: &UseRequest<'_>,
        hold_until: Option<DateTime<Utc>>,
    ) -> UseOutcome {
        let state = match hold_until {
            Some(until) => SlotState::Held { until: until.timestamp_millis() },
            None => SlotState::Live,
        };
        self.ledger.update(key, |current| (current.map(|s| Slot { rev, state, ..s }), ()));
        if let Some(until) = hold_until {
            self.live_holds.fetch_add(1, Ordering::Relaxed);
            self.deadlines.push(until.timestamp_millis(), key);
        }
        UseOutcome::Taken(Receipt {
            id,
            code: String::new(),
            discount,
            final_amount: req.order_value.saturating_sub(discount),
            expires_at: hold_until,
            hold: None,
        })
    }

    /// Turns the hold of `key` into a redemption; false if it is no longer that hold (it
    /// expired or was cancelled meanwhile: the caller looks again).
    async fn confirm(&self, key: OrderKey, held: Slot, until: i64) -> Result<bool, EngineError> {
        let now = self.clock.now();
        let claimed = self.ledger.update(key, |current| match current {
            Some(slot)
                if slot.rev == held.rev
                    && slot.state == (SlotState::Held { until })
                    && now.timestamp_millis() < until =>
            {
                (Some(Slot { state: SlotState::Changing, ..slot }), true)
            }
            other => (other, false),
        });
        if !claimed {
            return Ok(false);
        }
        if let Err(err) = self.may_change_in_journal() {
            self.ledger.update(key, |current| (current.map(|s| Slot { state: SlotState::Held { until }, ..s }), ()));
            return Err(err);
        }
        let rev = held.rev + 1;
        let event = Event::Confirmed(Confirmed { id: held.id, rev, at: now });
        if let Err(err) = self.journal.append(&event.encode()).await {
            self.ledger.update(key, |current| (current.map(|s| Slot { state: SlotState::Held { until }, ..s }), ()));
            return Err(err.into());
        }
        self.ledger.update(key, |current| (current.map(|s| Slot { rev, state: SlotState::Live, ..s }), ()));
        limits::give_back(&limits::hold_only(), &self.ledger, &Use::of_slot(key, key.0, &held));
        self.live_holds.fetch_sub(1, Ordering::Relaxed);
        self.metrics.holds.inc("confirmed");
        Ok(true)
    }

    /// Releases the use of an order: a redemption (the order id stays spent) or a hold.
    pub async fn release(&self, req: &ReleaseRequest<'_>) -> Result<ReleaseOutcome, EngineError> {
        let _decisions = self.decisions.read().await;
        let outcome = self.release_inner(req).await?;
        self.metrics.releases.inc(match outcome {
            ReleaseOutcome::Released { .. } => "released",
            ReleaseOutcome::AlreadyReleased => "repeated",
            ReleaseOutcome::NotFound => "not_found",
        });
        Ok(outcome)
    }

    async fn release_inner(&self, req: &ReleaseRequest<'_>) -> Result<ReleaseOutcome, EngineError> {
        if self.mode().lags() {
            // Whether the use is live, and whose, is not this instance's to say yet.
            return Err(PortError("what this instance knows may lag behind the one deciding alone".into()).into());
        }
        let code = normalize_code(req.code);
        let Some(coupon_id) = self.catalog.load().find(&code).map(|found| found.coupon().id) else {
            return Ok(ReleaseOutcome::NotFound);
        };
        let key = (coupon_id, self.ledger.id_key(req.order_id));
        self.settle_doubt(key).await?;
        let user = req.user_id.map(|u| self.ledger.id_key(u));
        let waited_until = Instant::now() + self.settings.settle_timeout;
        let mut looked = false;
        let mut asked = false;
        loop {
            let Some(slot) = self.ledger.slot(key) else {
                // Among instances, a use made elsewhere may not have reached this ledger yet;
                // every use under a limit is in PostgreSQL from its claim, so it is asked.
                if self.mode().shares() && !asked {
                    asked = true;
                    if let Some(stored) = self.ports.archive.stored(key.0, req.order_id).await? {
                        self.merge_uses([stored]);
                        continue;
                    }
                }
                return self.release_forgotten(key, req).await;
            };
            if user.is_some_and(|user| user != slot.user) {
                return Ok(ReleaseOutcome::NotFound);
            }
            let now = self.clock.now();
            match slot.state {
                SlotState::Taking { .. } | SlotState::Changing => self.wait_settled(key, waited_until).await?,
                // After a released hold the order is free: among instances, another may have
                // used it since, unseen here. Only PostgreSQL can say it is released still.
                SlotState::Released { ended, .. } if !ended.order_spent() && self.mode().shares() && !looked => {
                    looked = true;
                    if let Some(stored) = self.ports.archive.stored(key.0, req.order_id).await? {
                        self.merge_uses([stored]);
                    }
                }
                SlotState::Released { .. } => return Ok(ReleaseOutcome::AlreadyReleased),
                SlotState::Held { .. } | SlotState::Live if self.changed_in_postgres(&slot) => {
                    if self.change_in_postgres(key, slot, true).await? {
                        let hold = match slot.state {
                            SlotState::Held { until } if until <= now.timestamp_millis() => Some(HoldFate::Expired),
                            SlotState::Held { .. } => Some(HoldFate::Cancelled),
                            _ => None,
                        };
                        return Ok(ReleaseOutcome::Released { hold });
                    }
                }
                SlotState::Held { until } if until <= now.timestamp_millis() => {
                    if self.expire(key, until).await? {
                        return Ok(ReleaseOutcome::Released { hold: Some(HoldFate::Expired) });
                    }
                }
                SlotState::Held { .. } | SlotState::Live => {
                    if self.give_back(key, slot, ReleaseCause::Cancelled).await? {
                        let hold = slot.is_hold().then_some(HoldFate::Cancelled);
                        return Ok(ReleaseOutcome::Released { hold });
                    }
                }
            }
        }
    }

    /// What the archive says of an order the ledger does not remember: asked only when the
    /// forgotten-order filter says it may have been released and forgotten.
    async fn archived(&self, key: OrderKey, order_id: &str) -> Result<Archived, EngineError> {
        if !self.forgotten.may_contain(key) || self.ledger.slot(key).is_some() {
            return Ok(Archived::Unknown);
        }
        self.metrics.archive_lookups.increment(1);
        Ok(match self.ports.archive.order(key.0, order_id).await? {
            None => Archived::Unknown,
            Some(order) if order.hold && order.released => Archived::FreeAfter(order.rev),
            Some(_) => Archived::Spent,
        })
    }

    /// A release of an order the ledger does not remember: released before, or never used.
    async fn release_forgotten(&self, key: OrderKey, req: &ReleaseRequest<'_>) -> Result<ReleaseOutcome, EngineError> {
        if !self.forgotten.may_contain(key) {
            return Ok(ReleaseOutcome::NotFound);
        }
        self.metrics.archive_lookups.increment(1);
        Ok(match self.ports.archive.order(key.0, req.order_id).await? {
            Some(order) if order.released && req.user_id.is_none_or(|u| u == order.user_id) => {
                ReleaseOutcome::AlreadyReleased
            }
            _ => ReleaseOutcome::NotFound,
        })
    }

    /// Forgets the released redemptions and holds older than the retention: their slots
    /// leave the ledger and their keys go into the forgotten-order filter. Returns how many.
    pub fn forget_released(&self) -> usize {
        let cutoff = self.released_cutoff();
        let forgotten = self.ledger.forget(|slot| matches!(slot.state, SlotState::Released { at, .. } if at < cutoff));
        for key in &forgotten {
            self.forgotten.insert(*key);
        }
        forgotten.len()
    }

    /// Forgets released redemptions as they pass the retention, until `stop`.
    pub async fn run_forgetting(self: Arc<Self>, stop: CancellationToken) {
        let every = (self.settings.released_retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut interval = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = interval.tick() => {
                    let n = self.forget_released();
                    if n > 0 {
                        tracing::debug!(forgotten = n, "released redemptions forgotten");
                    }
                }
            }
        }
    }

    /// Released before this (ms since the epoch): forgotten.
    fn released_cutoff(&self) -> i64 {
        let retention = chrono::Duration::from_std(self.settings.released_retention).unwrap_or(chrono::Duration::MAX);
        (self.clock.now() - retention).timestamp_millis()
    }

    /// Gives back the hold of `key` if it is still the one due at `until`; true if this
    /// call expired it.
    pub async fn expire(&self, key: OrderKey, due: i64) -> Result<bool, EngineError> {
        let Some(slot) = self.ledger.slot(key) else { return Ok(false) };
        let SlotState::Held { until } = slot.state else { return Ok(false) };
        // Another instance's hold is tried from here only a grace after its deadline (its own
        // instance is expected to expire it first, but may be down). Either way, among
        // several instances a hold ends through PostgreSQL, where one compare-and-set decides
        // between an expiry and a confirmation: the clocks only say when to try. Deciding
        // alone, nobody else is there to expire it first.
        let ready = if slot.foreign && self.mode().shares() { until + cluster::FOREIGN_GRACE_MS } else { until };
        if due < until || self.clock.now().timestamp_millis() < ready {
            return Ok(false);
        }
        if self.changed_in_postgres(&slot) {
            return self.change_in_postgres(key, slot, true).await.map_err(EngineError::Cluster);
        }
        self.give_back(key, slot, ReleaseCause::Expired).await
    }

    /// Journals the release of `slot` and gives its uses back; false if the slot changed
    /// before it could be claimed.
    async fn give_back(&self, key: OrderKey, slot: Slot, cause: ReleaseCause) -> Result<bool, EngineError> {
        let claimed = self.ledger.update(key, |current| match current {
            Some(now) if now == slot => (Some(Slot { state: SlotState::Changing, ..now }), true),
            other => (other, false),
        });
        if !claimed {
            return Ok(false);
        }
        if let Err(err) = self.may_change_in_journal() {
            self.ledger.update(key, |current| (current.map(|s| Slot { state: slot.state, ..s }), ()));
            return Err(err);
        }
        let now = self.clock.now();
        let rev = slot.rev + 1;
        let event = Event::Released(Released { id: slot.id, rev, coupon_id: key.0, at: now, cause });
        if let Err(err) = self.journal.append(&event.encode()).await {
            self.ledger.update(key, |current| (current.map(|s| Slot { state: slot.state, ..s }), ()));
            return Err(err.into());
        }
        let was_hold = slot.is_hold();
        let ended = match (was_hold, cause) {
            (false, _) => Ended::Redemption,
            (true, ReleaseCause::Cancelled) => Ended::CancelledHold,
            (true, ReleaseCause::Expired) => Ended::ExpiredHold,
        };
        let released = SlotState::Released { at: now.timestamp_millis(), ended };
        self.ledger.update(key, |current| (current.map(|s| Slot { rev, state: released, ..s }), ()));
        let u = Use::of_slot(key, key.0, &slot);
        limits::give_back(&limits::counting(), &self.ledger, &u);
        self.uses_freed(&u);
        if was_hold {
            self.live_holds.fetch_sub(1, Ordering::Relaxed);
            self.metrics.holds.inc(match cause {
                ReleaseCause::Cancelled => "cancelled",
                ReleaseCause::Expired => "expired",
            });
        }
        Ok(true)
    }

    async fn wait_settled(&self, key: OrderKey, until: Instant) -> Result<(), EngineError> {
        let left = until.saturating_duration_since(Instant::now());
        self.ledger.settled(key, left).await.map(drop).map_err(|()| EngineError::Busy)
    }

    /// Gives back every hold whose deadline has passed; returns how many. Used at start-up,
    /// before serving, and by [`Engine::run_deadlines`].
    pub async fn expire_due(&self) -> usize {
        let _decisions = self.decisions.read().await;
        let mut expired = 0;
        loop {
            let now = self.clock.now().timestamp_millis();
            let due = self.deadlines.due(now, EXPIRY_BATCH);
            if due.is_empty() {
                return expired;
            }
            let results = join_all(due.iter().map(|(until, key)| self.expire(*key, *until))).await;
            for ((until, key), result) in due.into_iter().zip(results) {
                match result {
                    Ok(true) => expired += 1,
                    Ok(false) => {}
                    Err(err) => {
                        // Not given back: try again shortly rather than lose the deadline.
                        tracing::warn!(error = %err, "a hold could not be expired; retrying");
                        self.deadlines.push(until.max(now + 1_000), key);
                        return expired;
                    }
                }
            }
        }
    }

    /// Expires holds as their deadlines pass, until `stop`.
    pub async fn run_deadlines(self: Arc<Self>, stop: CancellationToken) {
        loop {
            self.expire_due().await;
            let now = self.clock.now().timestamp_millis();
            let wait = self.deadlines.next().map_or(Duration::from_secs(3600), |next| {
                Duration::from_millis(u64::try_from(next - now).unwrap_or(0).max(1))
            });
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = self.deadlines.earlier_added() => {}
            }
        }
    }

    /// Loads the uses stored in PostgreSQL (after the catalog, before serving): each counts
    /// against the limits as it did when taken; holds get their deadlines back.
    pub fn load_uses(&self, uses: impl IntoIterator<Item = StoredUse>) -> usize {
        let catalog = self.catalog.load();
        let me = self.cluster.get().map(|c| c.instance.as_str());
        let cutoff = self.released_cutoff();
        let mut loaded = 0;
        for stored in uses {
            let key = (stored.coupon_id, self.ledger.id_key(&stored.order_id));
            if stored.released_at.is_some_and(|at| at.timestamp_millis() < cutoff) {
                self.forgotten.insert(key);
                continue;
            }
            let slot = self.stored_slot(&catalog, &stored, me);
            let state = slot.state;
            let inserted = self.ledger.update(key, |current| match current {
                Some(existing) => (Some(existing), false),
                None => (Some(slot), true),
            });
            if !inserted {
                continue;
            }
            loaded += 1;
            if slot.counts() {
                let u = Use::of_slot(key, stored.coupon_id, &slot);
                // Without caps every limit takes; the order's claim is the slot just stored.
                let _ = limits::take(&limits::counting(), &self.ledger, &u);
            }
            if let SlotState::Held { until } = state {
                if slot.foreign {
                    self.deadlines.push(until + cluster::FOREIGN_GRACE_MS, key);
                } else {
                    self.live_holds.fetch_add(1, Ordering::Relaxed);
                    self.deadlines.push(until, key);
                }
            }
        }
        loaded
    }

    /// The batches of bulk codes of `campaign` in the current catalog, in id order.
    pub fn campaign_batches(&self, campaign: CampaignId) -> Vec<Arc<BatchCodes>> {
        let catalog = self.catalog.load();
        let mut batches: Vec<Arc<BatchCodes>> = catalog
            .codes()
            .batches()
            .iter()
            .filter(|b| catalog.coupon_by_id(b.rule).is_some_and(|rule| rule.campaign_id == Some(campaign)))
            .cloned()
            .collect();
        batches.sort_by_key(|b| b.id);
        batches
    }

    /// Live uses of code `index` of `batch`.
    pub fn code_uses(&self, batch: BatchId, index: u32) -> u32 {
        self.ledger.count(Tally::Code(batch, index)).live
    }

    /// Whether code `index` of `batch` may be handed to a user (unassigned and unused); `None`
    /// while the batch is not loaded here.
    pub fn code_is_free(&self, batch: BatchId, index: u32) -> Option<bool> {
        let catalog = self.catalog.load();
        let codes = catalog.codes().batch(batch)?;
        Some((index as usize) < codes.len() && codes.assigned_to(index).is_none() && self.code_uses(batch, index) == 0)
    }

    /// Records that code `index` of `batch` was handed to `user_id` (by this instance, or by
    /// another one, as a notification says): from now on only that user may use it.
    pub fn assign_code(&self, batch: BatchId, index: u32, user_id: &str) {
        if let Some(codes) = self.catalog.load().codes().batch(batch) {
            codes.assign(index, user_id);
        }
    }

    /// Counts the uses taken before their coupon or campaign had a per-user limit; call after
    /// publishing one ([`crate::engine::catalog::Publisher::added_user_limits`]). Returns how
    /// many uses it counted.
    pub fn count_new_user_limits(&self) -> usize {
        let catalog = self.catalog.load_full();
        self.ledger.count_users(|coupon, campaign| counted(&catalog, coupon, campaign))
    }

    fn view<'a>(
        &'a self,
        offer: &Offer<'_>,
        found: Found<'_>,
        user_id: &'a str,
        order_id: Option<&'a str>,
    ) -> LedgerView<'a> {
        LedgerView {
            ledger: &self.ledger,
            coupon: offer.coupon.id,
            code: match found {
                Found::Code { code, .. } => Some((code.batch, code.index)),
                Found::Coupon(_) => None,
            },
            campaign: offer.campaign.map(|c| c.id),
            user_id,
            order_id,
            user: OnceCell::new(),
            campaign_count: OnceCell::new(),
        }
    }
}

/// What the archive said of a forgotten order.
enum Archived {
    /// Nothing: a new order.
    Unknown,
    /// A released hold, at this revision: the order is free again.
    FreeAfter(u32),
    /// A redemption: the order is spent.
    Spent,
}

/// The per-user counts a use of `coupon` under `campaign` takes, as `catalog` defines them.
pub(crate) fn counted(catalog: &Catalog, coupon: CouponId, campaign: Option<CampaignId>) -> Counted {
    Counted {
        coupon_user: catalog.coupon_by_id(coupon).is_some_and(|c| c.per_user_limit.is_some()),
        campaign_user: campaign.and_then(|id| catalog.campaign(id)).is_some_and(|c| c.per_user_limit.is_some()),
    }
}

/// Whether a use of what `found` names may be under a limit (any coupon or campaign limit, a
/// bulk code): whether it is decided by more than this instance's journal alone.
fn limited(catalog: &Catalog, found: Found<'_>) -> bool {
    let coupon = found.coupon();
    let campaign = coupon.campaign_id.and_then(|id| catalog.campaign(id));
    matches!(found, Found::Code { .. })
        || coupon.usage_limit.is_some()
        || coupon.per_user_limit.is_some()
        || campaign.is_some_and(|c| c.usage_limit.is_some() || c.budget.is_some() || c.per_user_limit.is_some())
}

fn offer<'a>(catalog: &'a Catalog, found: Found<'a>, user_id: &str) -> Offer<'a> {
    let coupon = found.coupon();
    let campaign = coupon.campaign_id.and_then(|id| catalog.campaign(id)).map(|c| &**c);
    let code = match found {
        Found::Code { code, batch, .. } => Some(CodeTerms {
            uses_limit: code.uses_per_code,
            assigned_elsewhere: batch.assigned_elsewhere(code.index, user_id),
        }),
        Found::Coupon(_) => None,
    };
    Offer { coupon, campaign, code }
}

fn millis(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

/// The ledger's counts for one offer and one attempt, computed as the rules ask for them.
struct LedgerView<'a> {
    ledger: &'a Ledger,
    coupon: CouponId,
    code: Option<(i64, u32)>,
    campaign: Option<CampaignId>,
    user_id: &'a str,
    order_id: Option<&'a str>,
    user: OnceCell<IdKey>,
    /// Read once for both the cap and the budget.
    campaign_count: OnceCell<Count>,
}

impl LedgerView<'_> {
    fn user(&self) -> IdKey {
        *self.user.get_or_init(|| self.ledger.id_key(self.user_id))
    }

    fn campaign_count(&self) -> Count {
        *self
            .campaign_count
            .get_or_init(|| self.campaign.map_or_else(Count::default, |id| self.ledger.count(Tally::Campaign(id))))
    }
}

impl Usage for LedgerView<'_> {
    fn code_uses(&self) -> u32 {
        self.code.map_or(0, |(batch, index)| self.ledger.count(Tally::Code(batch, index)).live)
    }

    fn total(&self) -> u32 {
        self.ledger.count(Tally::Coupon(self.coupon)).live
    }

    fn by_user(&self) -> u32 {
        self.ledger.count(Tally::UserCoupon(self.coupon, self.user())).live
    }

    fn campaign_total(&self) -> u32 {
        self.campaign_count().live
    }

    fn campaign_by_user(&self) -> u32 {
        self.campaign.map_or(0, |id| self.ledger.count(Tally::UserCampaign(id, self.user())).live)
    }

    fn campaign_spent(&self) -> Cents {
        Cents::new(self.campaign_count().spent).unwrap_or(Cents::ZERO)
    }

    fn has_order(&self) -> bool {
        self.order_id.is_some_and(|order| self.ledger.order_taken((self.coupon, self.ledger.id_key(order))))
    }
}

#[cfg(test)]
mod tests;
