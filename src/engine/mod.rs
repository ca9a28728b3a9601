//! The engine: every use case of the service on typed inputs and outcomes, with no HTTP and
//! no SQL. It owns the catalog (definitions), the ledger (uses) and the journal handle
//! (durability); HTTP handlers parse, call it and render, and benches and tests call it
//! directly.
//!
//! Invariant: an answer that takes or gives back a use (a redemption, a hold, a
//! confirmation, a release, an expiry) is given only once its event is on disk in the
//! journal; until then the ledger marks the slot as settling and a concurrent request for the
//! same order waits for it.

mod allocations;
pub mod alone;
pub mod campaigns;
pub mod catalog;
pub mod clock;
pub mod cluster;
pub mod codes;
pub mod forgotten;
mod groups;
mod hold_shares;
pub mod holds;
pub mod leases;
pub mod ledger;
pub mod limits;
pub mod ports;
mod release;
mod requests;
mod sets;
mod stacked;
pub mod standing;
mod take;

pub use requests::{
    Caller, HoldFate, Receipt, Refused, ReleaseOutcome, ReleaseRequest, StoredUse, UseKind, UseOutcome, UseRequest,
    ValidateRequest, Validation,
};
pub use sets::{SetOutcome, SetReceipt, SetReleaseOutcome, SetReleaseRequest, SetRequest, SetUse};
pub use stacked::{Applied, Fate, StackRequest, StackedCode, StackedValidation};

use std::cell::OnceCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::coupon::{BatchId, CampaignId, CouponId, normalize_code};
use crate::domain::currency::Currency;
use crate::domain::event::Validated;
use crate::domain::money::Cents;
use crate::domain::rules::{self, Attempt, CodeTerms, Decision, Offer, Reason, Usage};
use crate::engine::catalog::{Catalog, CatalogStore, Found};
use crate::engine::clock::Clock;
use crate::engine::codes::BatchCodes;
use crate::engine::forgotten::Forgotten;
use crate::engine::holds::Deadlines;
use crate::engine::ledger::{Count, Counted, IdKey, Ledger, SlotState, Tally};
use crate::engine::limits::Use;
use crate::engine::ports::{ArchiveError, Ports};
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
    /// The currency of requests that name none, and of coupons that name none
    /// (`money.default_currency`).
    pub default_currency: Currency,
    /// How long, and within how much memory, uses' allocations are kept to answer replays.
    pub cart_cache_ttl: Duration,
    pub cart_cache_bytes: u64,
    /// Percent of a limited pool's remaining uses or budget one caller may hold at once (0:
    /// no bound).
    pub hold_share_percent: u32,
    /// The most several codes together take off an order, in percent of its value
    /// (`stacking.max_total_percent`).
    pub max_total_percent: u32,
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
    /// What uses taken with a cart took, for their replays.
    allocations: allocations::Allocations,
    /// What each caller holds of each limited pool.
    hold_shares: hold_shares::HoldShares,
    /// The orders taken as sets of codes.
    groups: groups::Groups,
}

impl Engine {
    pub fn new(
        journal: Journal,
        ports: Ports,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        settings: EngineSettings,
    ) -> Engine {
        let allocations = allocations::Allocations::new(settings.cart_cache_ttl, settings.cart_cache_bytes);
        let hold_shares = hold_shares::HoldShares::new(settings.hold_share_percent);
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
            allocations,
            hold_shares,
            groups: groups::Groups::default(),
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
    pub(crate) fn live_holds(&self) -> i64 {
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
        let attempt = Attempt {
            user_id: req.user_id,
            order_value: req.order_value,
            order_id: req.order_id,
            cart: req.cart,
            default_currency: self.settings.default_currency,
        };
        let now = self.clock.now();
        let (coupon_id, (decision, taken)) = match catalog.find(&code) {
            None => (None, (Decision::Rejected(Reason::CouponNotFound), None)),
            Some(found) => {
                let offer = offer(&catalog, found, req.user_id);
                let view = self.view(&offer, found, req.user_id, req.order_id);
                (Some(found.coupon().id), rules::decide(&offer, &view, &attempt, now))
            }
        };
        let (reason, discount) = match decision {
            Decision::Valid { discount, .. } => (None, discount),
            Decision::Rejected(reason) => (Some(reason), Cents::ZERO),
        };
        let asked = Asked { user_id: req.user_id, order_id: req.order_id, order_value: req.order_value, caller, now };
        self.log_validation(&asked, &code, coupon_id, reason, discount);
        Validation { code, coupon_id, decision, taken }
    }

    /// Counts one code's validation and logs it.
    fn log_validation(
        &self,
        asked: &Asked<'_>,
        code: &str,
        coupon_id: Option<CouponId>,
        reason: Option<Reason>,
        discount: Cents,
    ) {
        self.metrics.validations.inc(reason.map_or("valid", Reason::as_str));
        let caller = asked.caller;
        self.ports.validations.record(Validated {
            coupon_code: code.into(),
            coupon_id,
            user_id: asked.user_id.into(),
            order_id: asked.order_id.map(Into::into),
            order_value: asked.order_value,
            reason,
            discount,
            final_amount: asked.order_value.saturating_sub(discount),
            ip_address: caller.ip,
            user_agent: caller.user_agent.clone(),
            response_time_us: u64::try_from(caller.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            validated_at: asked.now,
        });
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
            let inserted = self.ledger.update_marked(key, Some(stored.cart), |current| match current {
                Some(existing) => (Some(existing), false),
                None => (Some(slot), true),
            });
            if !inserted {
                continue;
            }
            loaded += 1;
            if let Some(group) = stored.group.as_ref().filter(|_| stored.released_at.is_none()) {
                self.groups.load(key.1, group.id, slot.user, stored.coupon_id, &group.codes);
            }
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
    pub(crate) fn campaign_batches(&self, campaign: CampaignId) -> Vec<Arc<BatchCodes>> {
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
    pub(crate) fn code_uses(&self, batch: BatchId, index: u32) -> u32 {
        self.ledger.count(Tally::Code(batch, index)).live
    }

    /// Whether code `index` of `batch` may be handed to a user (unassigned and unused); `None`
    /// while the batch is not loaded here.
    pub(crate) fn code_is_free(&self, batch: BatchId, index: u32) -> Option<bool> {
        let catalog = self.catalog.load();
        let codes = catalog.codes().batch(batch)?;
        Some((index as usize) < codes.len() && codes.assigned_to(index).is_none() && self.code_uses(batch, index) == 0)
    }

    /// Records that code `index` of `batch` was handed to `user_id` (by this instance, or by
    /// another one, as a notification says): from now on only that user may use it.
    pub(crate) fn assign_code(&self, batch: BatchId, index: u32, user_id: &str) {
        if let Some(codes) = self.catalog.load().codes().batch(batch) {
            codes.assign(index, user_id);
        }
    }

    /// Counts the uses taken before their coupon or campaign had a per-user limit; call after
    /// publishing one ([`crate::engine::catalog::Publisher::added_user_limits`]). Returns how
    /// many uses it counted.
    pub(crate) fn count_new_user_limits(&self) -> usize {
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

/// What a validation log row keeps of the request, whichever code it is about.
struct Asked<'a> {
    user_id: &'a str,
    order_id: Option<&'a str>,
    order_value: Cents,
    caller: &'a Caller,
    now: DateTime<Utc>,
}

/// The per-user counts a use of `coupon` under `campaign` takes, as `catalog` defines them.
pub(crate) fn counted(catalog: &Catalog, coupon: CouponId, campaign: Option<CampaignId>) -> Counted {
    Counted {
        coupon_user: catalog.coupon_by_id(coupon).is_some_and(|c| c.per_user_limit.is_some()),
        campaign_user: campaign.and_then(|id| catalog.campaign(id)).is_some_and(|c| c.per_user_limit.is_some()),
    }
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
