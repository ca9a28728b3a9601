//! The take path: redeem, hold and confirm. A new use goes rules → limit chain → record
//! (the journal, or a claim in PostgreSQL) → commit, behind one [`Reservation`] that gives
//! back everything taken if the use is not recorded.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::campaign::Campaign;
use crate::domain::cart_discount::Taken;
use crate::domain::cart_fields;
use crate::domain::coupon::{BatchId, CampaignId, Coupon, CouponId, normalize_code};
use crate::domain::event::{CartUse, Confirmed, Event, Funding, GroupMark, Redeemed, Spent};
use crate::domain::identity::redemption_id;
use crate::domain::money::Cents;
use crate::domain::rules::{self, Attempt, Decision, Reason};
use crate::engine::catalog::{Catalog, Found};
use crate::engine::cluster::{self, Cluster};
use crate::engine::hold_shares::{Ask, Pool};
use crate::engine::ledger::Tally;
use crate::engine::ledger::{CartMark, Counted, Ended, IdKey, OrderKey, Slot, SlotState, code_slot, fingerprint};
use crate::engine::limits::{
    self, CampaignBudget, CampaignCap, CampaignPerUser, CodeUses, CouponPerUser, CouponTotal, Limits, OrderOnce,
    Refusal, Use, UserHolds,
};
use crate::engine::ports::{ClaimOutcome, ClaimRequest, Scope};
use crate::engine::release::Archived;
use crate::engine::{
    Engine, EngineError, HoldFate, Receipt, Refused, UseKind, UseOutcome, UseRequest, alone, counted, millis, offer,
};

impl Engine {
    /// Redeems: takes one use for the order, durably, within every limit; replays answer
    /// the same; a live hold of the same order and user is confirmed.
    pub async fn redeem(&self, req: &UseRequest<'_>) -> Result<UseOutcome, EngineError> {
        let outcome = self.with_allocation(req, self.take_use(req, UseKind::Redeem).await?).await;
        self.metrics.redemptions.inc(outcome.label());
        Ok(outcome)
    }

    /// Holds: takes one use for the order until `ttl` passes, durably, within every limit.
    pub async fn hold(&self, req: &UseRequest<'_>, ttl: Duration) -> Result<UseOutcome, EngineError> {
        let outcome = self.with_allocation(req, self.take_use(req, UseKind::Hold { ttl }).await?).await;
        self.metrics.holds.inc(match &outcome {
            UseOutcome::Taken(_) => "held",
            other => other.label(),
        });
        Ok(outcome)
    }

    /// A replayed or confirmed use of a cart answers with what it took, as a new one does:
    /// from this instance's memory of it, else from PostgreSQL (`QUOTA_UNAVAILABLE` while
    /// that cannot say).
    async fn with_allocation(&self, req: &UseRequest<'_>, outcome: UseOutcome) -> UseOutcome {
        let (UseOutcome::Replayed(receipt) | UseOutcome::Confirmed(receipt)) = &outcome else { return outcome };
        let Some(cart) = req.cart.filter(|c| c.has_items && receipt.taken.is_none()) else { return outcome };
        let taken = match self.allocations.get(receipt.id) {
            Some(taken) => taken,
            None => {
                let stored = self.ports.archive.allocation(receipt.id).await;
                let lines = match stored.map(|json| json.map(|j| cart_fields::parse_allocation(&j, cart.currency))) {
                    Ok(Some(Ok(lines))) => lines,
                    Ok(Some(Err(err))) => {
                        tracing::error!(id = %receipt.id, error = %err, "a stored allocation cannot be read");
                        return UseOutcome::Refused(Refused::QuotaUnavailable);
                    }
                    // Not shipped yet, or PostgreSQL away: the client asks again.
                    Ok(None) | Err(_) => return UseOutcome::Refused(Refused::QuotaUnavailable),
                };
                let taken = Arc::new(Taken { lines, shipping: receipt.shipping_discount.get() });
                self.allocations.keep(receipt.id, Arc::clone(&taken));
                taken
            }
        };
        let with = |receipt: &Receipt| Receipt { taken: Some(Arc::clone(&taken)), ..receipt.clone() };
        match &outcome {
            UseOutcome::Replayed(receipt) => UseOutcome::Replayed(with(receipt)),
            UseOutcome::Confirmed(receipt) => UseOutcome::Confirmed(with(receipt)),
            _ => outcome,
        }
    }

    async fn take_use(&self, req: &UseRequest<'_>, kind: UseKind) -> Result<UseOutcome, EngineError> {
        let _decisions = self.decisions.read().await;
        let code = normalize_code(req.code);
        let user = self.ledger.id_key(req.user_id);
        let fingerprint = req.cart.and_then(|cart| fingerprint(&cart.items_hash()));
        let waited_until = Instant::now() + self.settings.settle_timeout;
        let mut hold_fate = None;
        loop {
            let catalog = self.catalog.load_full();
            let Some(found) = catalog.find(&code) else {
                return Ok(UseOutcome::Refused(Refused::Rule(Reason::CouponNotFound)));
            };
            let coupon = found.coupon();
            if self.mode().lags() {
                // What this instance knows may lag: the one deciding alone may not have
                // shipped everything yet, or this one's feed not read it. Not even a use under
                // no limit is taken: the one deciding alone answers releases from its memory,
                // which must hold every use acknowledged meanwhile.
                return Ok(UseOutcome::Refused(Refused::QuotaUnavailable));
            }
            let key = (coupon.id, self.ledger.id_key(req.order_id));
            // An order's code set is fixed at its first redeem (§10): one taken as a set takes
            // no code alone.
            if let Some(group) = self.groups.of(key.1) {
                let refused = if group.user == user { Refused::IdempotencyMismatch } else { Refused::OrderTaken };
                return Ok(UseOutcome::Refused(refused));
            }
            self.settle_doubt(key).await?;
            let now = self.clock.now();
            if let Some((slot, cart)) = self.ledger.slot_with_cart(key) {
                let discount = slot.discount.saturating_sub(cart.shipping);
                let receipt = |expires_at| Receipt {
                    id: slot.id,
                    code: code.to_string(),
                    discount,
                    shipping_discount: cart.shipping,
                    final_amount: slot.order_value.saturating_sub(discount),
                    taken: None,
                    expires_at,
                    hold: None,
                };
                // A replay asks for what the order holds: the same amount, the same cart.
                let same_request = slot.order_value == req.order_value && cart.fingerprint == fingerprint;
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
                        if !same_request {
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
                            UseKind::Redeem if !same_request => Refused::IdempotencyMismatch,
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

    /// A new use of `key`: the rules, then the limit chain (the ledger's counts; among
    /// instances the lease units of its totals too), then its record (a claim in PostgreSQL
    /// for a use under any limit while instances share, else the journal), then the commit.
    /// `None` if another request claimed the order meanwhile.
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
        let offer = offer(catalog, found, req.user_id);
        // The order is not checked here: claiming it is the first link of the chain.
        let view = self.view(&offer, found, req.user_id, None);
        let attempt = Attempt {
            user_id: req.user_id,
            order_value: req.order_value,
            order_id: None,
            cart: req.cart,
            default_currency: self.settings.default_currency,
        };
        let (discount, taken) = match rules::decide(&offer, &view, &attempt, now) {
            (Decision::Valid { discount, .. }, taken) => (discount, taken),
            (Decision::Rejected(reason), _) => return Ok(Some(UseOutcome::Refused(Refused::Rule(reason)))),
        };
        let Reserved { reservation: mut taken, new, rev, totals, limited, sharing } =
            match self.reserve(found, &offer, key, user, req, kind, now, prior_rev, discount, taken) {
                Ok(reserved) => reserved,
                Err(outcome) => return Ok(outcome),
            };
        let Some(cluster) = sharing else {
            return self.journal_use(taken, &new, rev, None).await;
        };
        let spent = match self.spend_leases(cluster, &totals).await {
            Ok(spent) => spent,
            Err(short) => {
                return Ok(Some(UseOutcome::Refused(match short {
                    cluster::Short::Limit(reason) => Refused::Rule(reason),
                    cluster::Short::Unavailable => Refused::QuotaUnavailable,
                })));
            }
        };
        taken.leased(cluster, totals);
        if limited {
            return self.claim_use(cluster, taken, &new, rev, spent).await;
        }
        let funded_by =
            (!spent.is_empty()).then(|| Funding { instance: cluster.instance.clone(), epoch: cluster.epoch, spent });
        self.journal_use(taken, &new, rev, funded_by).await
    }

    /// Takes the limit chain for a new use of `key` worth `discount` off the merchandise
    /// (with a cart, `taken` line by line and off shipping) behind one [`Reservation`], and
    /// marks its slot settling; what recording it needs comes with it. `Err(None)` if another
    /// request claimed the order first; `Err(Some(refusal))` if a limit refused.
    #[allow(clippy::too_many_arguments, reason = "the parts of one use; two call sites")]
    pub(super) fn reserve<'r>(
        &'r self,
        found: Found<'_>,
        offer: &rules::Offer<'_>,
        key: OrderKey,
        user: IdKey,
        req: &'r UseRequest<'r>,
        kind: UseKind,
        now: DateTime<Utc>,
        prior_rev: u32,
        discount: Cents,
        taken: Option<Taken>,
    ) -> Result<Reserved<'r>, Option<UseOutcome>> {
        let coupon = found.coupon();
        // With a cart, the use keeps the code's effect (what its campaign's budget is
        // charged: merchandise and shipping) and what the answer and refunds need.
        let (discount, cart) = match req.cart {
            None => (discount, None),
            Some(cart) => {
                let shipping = taken.as_ref().map_or(0, |t| t.shipping);
                let use_of_cart = CartUse {
                    currency: cart.currency,
                    items_hash: cart.items_hash(),
                    shipping_discount: shipping,
                    allocation: taken.as_ref().map_or_else(
                        || "[]".to_owned(),
                        |t| cart_fields::allocation_json(&cart.cart, t, cart.currency),
                    ),
                };
                (Cents::new(discount.get() + shipping).unwrap_or(discount), Some(use_of_cart))
            }
        };
        let campaign = offer.campaign.filter(|_| rules::takes_campaign_use(discount));
        if matches!(kind, UseKind::Hold { .. }) && !self.within_hold_share(key, req, coupon, campaign, discount, now) {
            return Err(Some(UseOutcome::Refused(Refused::HoldShareExceeded)));
        }
        let new = NewUse {
            key,
            id: redemption_id(coupon.id, req.order_id),
            coupon_id: coupon.id,
            code: match found {
                Found::Code { code, .. } => Some((code.batch, code.index)),
                Found::Coupon(_) => None,
            },
            code_text: matches!(found, Found::Code { .. }).then(|| normalize_code(req.code).into_owned()),
            req,
            discount,
            at: now,
            hold_until: deadline(kind, now),
            campaign: campaign.map(|c| c.id),
            user_limit: coupon.per_user_limit,
            campaign_user_limit: campaign.and_then(|c| c.per_user_limit),
            code_limit: offer.code.map(|c| c.uses_limit),
            cart,
            taken: taken.map(Arc::new),
        };
        let totals =
            cluster::totals(coupon, campaign.map(|c| (c.id, c.usage_limit.is_some(), c.budget.is_some())), discount);
        // A use under any limit: among instances it is claimed, so that the order is one use
        // for every instance before the answer (API.md §6), not only once the feed has
        // carried it. Only a use under no limit at all is journalled then, and may meet the
        // same order taken elsewhere (the order conflict §6 allows).
        let limited = !totals.is_empty()
            || new.user_limit.is_some()
            || new.campaign_user_limit.is_some()
            || new.code_limit.is_some()
            || new.hold_until.is_some();
        if limited && !self.may_take_limited() {
            return Err(Some(UseOutcome::Refused(Refused::QuotaUnavailable)));
        }
        // Among instances the totals are the leases' (below): this ledger counts the uses it
        // knows of, and the per-user counts stay a first, local check. Alone, it decides all.
        let sharing = self.cluster.get().filter(|_| self.mode() == alone::Mode::Sharing);
        let local = |cap| if sharing.is_some() { None } else { cap };
        let slot = new.slot(user, prior_rev);
        let limits = Limits {
            order: OrderOnce { slot },
            holds: UserHolds(Some(self.settings.max_active_holds_per_user)),
            code: CodeUses(new.code_limit),
            total: CouponTotal(local(coupon.usage_limit)),
            per_user: CouponPerUser(coupon.per_user_limit),
            campaign: CampaignCap(local(campaign.and_then(|c| c.usage_limit))),
            campaign_user: CampaignPerUser(new.campaign_user_limit),
            budget: CampaignBudget(campaign.and_then(|c| c.budget).filter(|_| sharing.is_none())),
        };
        let reservation = match Reservation::take(self, Use::of_slot(key, coupon.id, &slot), limits) {
            Ok(reservation) => reservation,
            Err(Refusal::OrderTaken(_)) => return Err(None),
            Err(Refusal::Rule(reason)) => return Err(Some(UseOutcome::Refused(Refused::Rule(reason)))),
            Err(Refusal::TooManyHolds) => return Err(Some(UseOutcome::Refused(Refused::TooManyHolds))),
        };
        // While it is `Taking`, replays wait: they see the mark with the slot.
        self.ledger.mark(key, CartMark::of(new.cart.as_ref()));
        // A per-user limit published since `catalog` was read may not have seen this use in
        // its back-fill: count it as the definitions now say.
        self.ledger.count_user_of(key, counted(&self.catalog.load(), coupon.id, campaign.map(|c| c.id)));
        let rev = self.ledger.slot(key).map_or(1, |s| s.rev);
        Ok(Reserved { reservation, new, rev, totals, limited, sharing })
    }

    /// Whether the caller of a hold of `key` is within its share of what the coupon and its
    /// campaign have left (API.md §8): per address for an anonymous caller, per user for the
    /// backend.
    fn within_hold_share(
        &self,
        key: OrderKey,
        req: &UseRequest<'_>,
        coupon: &Coupon,
        campaign: Option<&Campaign>,
        discount: Cents,
        now: DateTime<Utc>,
    ) -> bool {
        let left =
            |limit: Option<u32>, tally| limit.map(|l| u64::from(l.saturating_sub(self.ledger.count(tally).live)));
        let mut asks = Vec::with_capacity(2);
        if let Some(uses_left) = left(coupon.usage_limit, Tally::Coupon(coupon.id)) {
            asks.push(Ask { pool: Pool::Coupon(coupon.id), uses_left: Some(uses_left), cents_left: None, cents: 0 });
        }
        if let Some(campaign) = campaign.filter(|c| c.usage_limit.is_some() || c.budget.is_some()) {
            let spent = self.ledger.count(Tally::Campaign(campaign.id)).spent;
            asks.push(Ask {
                pool: Pool::Campaign(campaign.id),
                uses_left: left(campaign.usage_limit, Tally::Campaign(campaign.id)),
                cents_left: campaign.budget.map(|b| b.get().saturating_sub(spent)),
                cents: discount.get(),
            });
        }
        if asks.is_empty() {
            return true;
        }
        let caller = match req.anonymous_from {
            Some(address) => self.ledger.id_key(&format!("address {address}")),
            None => self.ledger.id_key(&format!("user {}", req.user_id)),
        };
        let is_hold = |order| {
            self.ledger
                .slot(order)
                .is_some_and(|s| matches!(s.state, SlotState::Held { .. } | SlotState::Taking { hold: true }))
        };
        self.hold_shares.admit(caller, key, &asks, now.timestamp_millis(), is_hold)
    }

    /// Records a new use in the journal, and commits it once the journal has it.
    async fn journal_use(
        &self,
        taken: Reservation<'_>,
        new: &NewUse<'_>,
        rev: u32,
        funded_by: Option<Funding>,
    ) -> Result<Option<UseOutcome>, EngineError> {
        let event = Event::Redeemed(new.record(rev, funded_by, None));
        self.journal.append(&event.encode()).await?;
        taken.commit();
        Ok(Some(self.settle_taken(new, rev)))
    }

    /// Records a new use by a claim in PostgreSQL, and commits it once PostgreSQL has it.
    async fn claim_use(
        &self,
        cluster: &Cluster,
        mut taken: Reservation<'_>,
        new: &NewUse<'_>,
        rev: u32,
        spent: Spent,
    ) -> Result<Option<UseOutcome>, EngineError> {
        let claim = new.claim(rev, spent, self.settings.max_active_holds_per_user);
        self.metrics.quota.waits.inc("claim");
        // PostgreSQL counts only what it has: a release or confirmation of this instance's
        // own, still in its journal when the claim was made, may be what makes room (it may
        // land while the claim runs, too late for its count).
        let unshipped = self.journal.backlog() > 0;
        let mut outcome = cluster.port.claim(&claim).await;
        if matches!(outcome, Ok(ClaimOutcome::Refused(_) | ClaimOutcome::TooManyHolds)) && unshipped {
            self.journal.wait_shipped(self.settings.settle_timeout).await;
            outcome = cluster.port.claim(&claim).await;
            tracing::debug!(?outcome, "claim asked again once this instance's journal was shipped");
        }
        let refused = match outcome {
            Ok(ClaimOutcome::Taken { rev }) => {
                taken.commit();
                return Ok(Some(self.settle_taken(new, rev)));
            }
            Ok(ClaimOutcome::Exists(row)) => {
                drop(taken);
                self.remember_row(new.key, new.req, &row);
                // The order's row as PostgreSQL has it answers, as a replay would.
                return Ok(None);
            }
            Ok(ClaimOutcome::Refused(reason)) => Refused::Rule(reason),
            Ok(ClaimOutcome::TooManyHolds) => Refused::TooManyHolds,
            Ok(ClaimOutcome::Fenced) => Refused::QuotaUnavailable,
            Err(err) => {
                // It may have committed: its lease units wait with the order's doubt.
                tracing::debug!(error = %err, "a claim could not be made, or its answer was lost");
                let totals = taken.keep_leases();
                self.doubtful.add(new.key, &claim, &totals);
                Refused::QuotaUnavailable
            }
        };
        Ok(Some(UseOutcome::Refused(refused)))
    }

    /// Marks a use taken durably (journalled, or written by PostgreSQL) and answers it.
    pub(super) fn settle_taken(&self, new: &NewUse<'_>, rev: u32) -> UseOutcome {
        let (key, hold_until) = (new.key, new.hold_until);
        let state = match hold_until {
            Some(until) => SlotState::Held { until: until.timestamp_millis() },
            None => SlotState::Live,
        };
        self.ledger.update(key, |current| (current.map(|s| Slot { rev, state, ..s }), ()));
        if let Some(until) = hold_until {
            self.live_holds.fetch_add(1, Ordering::Relaxed);
            self.deadlines.push(until.timestamp_millis(), key);
        }
        let shipping = CartMark::of(new.cart.as_ref()).shipping;
        let discount = new.discount.saturating_sub(shipping);
        if let Some(taken) = &new.taken {
            self.allocations.keep(new.id, Arc::clone(taken));
        }
        UseOutcome::Taken(Receipt {
            id: new.id,
            code: String::new(),
            discount,
            shipping_discount: shipping,
            final_amount: new.req.order_value.saturating_sub(discount),
            taken: new.taken.clone(),
            expires_at: hold_until,
            hold: None,
        })
    }

    /// Turns the hold of `key` into a redemption; false if it is no longer that hold (it
    /// expired or was cancelled meanwhile: the caller looks again).
    pub(super) async fn confirm(&self, key: OrderKey, held: Slot, until: i64) -> Result<bool, EngineError> {
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
}

/// A use whose limits are taken, ready to be recorded.
pub(super) struct Reserved<'r> {
    pub(super) reservation: Reservation<'r>,
    pub(super) new: NewUse<'r>,
    /// The revision its record carries.
    pub(super) rev: u32,
    /// Among instances, the lease units of its totals.
    pub(super) totals: Vec<(Scope, u64)>,
    /// Under some limit: among instances, it is claimed in PostgreSQL.
    limited: bool,
    /// Among instances: the cluster it is taken in.
    pub(super) sharing: Option<&'r Cluster>,
}

/// The facts of a use being taken, for its slot and its record.
pub(super) struct NewUse<'a> {
    pub(super) key: OrderKey,
    id: Uuid,
    pub(super) coupon_id: CouponId,
    code: Option<(BatchId, u32)>,
    /// The bulk code as its record names it.
    code_text: Option<String>,
    pub(super) req: &'a UseRequest<'a>,
    discount: Cents,
    at: DateTime<Utc>,
    hold_until: Option<DateTime<Utc>>,
    campaign: Option<CampaignId>,
    user_limit: Option<u32>,
    campaign_user_limit: Option<u32>,
    code_limit: Option<u32>,
    /// For a request with §9's fields.
    cart: Option<CartUse>,
    /// What the code takes from the cart's lines (with items).
    taken: Option<Arc<Taken>>,
}

impl NewUse<'_> {
    /// Its claim in PostgreSQL (among instances), at `rev`, paid for by `spent`.
    pub(super) fn claim(&self, rev: u32, spent: Spent, max_holds: u32) -> ClaimRequest<'_> {
        ClaimRequest {
            id: self.id,
            rev,
            coupon_id: self.coupon_id,
            code: self.code_text.as_deref(),
            user_id: self.req.user_id,
            order_id: self.req.order_id,
            order_value: self.req.order_value,
            discount: self.discount,
            at: self.at,
            hold_until: self.hold_until,
            campaign: self.campaign,
            user_limit: self.user_limit,
            campaign_user_limit: self.campaign_user_limit,
            code_limit: self.code_limit,
            max_holds: Some(max_holds),
            spent,
            cart: self.cart.as_ref(),
        }
    }

    /// Its journal record; `group` for a use taken with other codes of its order.
    pub(super) fn record(&self, rev: u32, funded_by: Option<Funding>, group: Option<GroupMark>) -> Redeemed {
        Redeemed {
            id: self.id,
            rev,
            coupon_id: self.coupon_id,
            code: self.code_text.clone(),
            user_id: self.req.user_id.to_owned(),
            order_id: self.req.order_id.to_owned(),
            order_value: self.req.order_value,
            discount: self.discount,
            at: self.at,
            hold_until: self.hold_until,
            campaign: self.campaign,
            funded_by,
            cart: self.cart.clone(),
            group,
        }
    }

    /// Its slot while it is being taken.
    fn slot(&self, user: IdKey, prior_rev: u32) -> Slot {
        Slot {
            id: self.id,
            rev: prior_rev + 1,
            user,
            order_value: self.req.order_value,
            discount: self.discount,
            code: self.code.map(code_slot),
            campaign: self.campaign.and_then(std::num::NonZeroI64::new),
            counted: Counted {
                coupon_user: self.user_limit.is_some(),
                campaign_user: self.campaign_user_limit.is_some(),
            },
            foreign: false,
            state: SlotState::Taking { hold: self.hold_until.is_some() },
        }
    }
}

/// A hold's deadline, in whole milliseconds (the deadlines' unit): the deadline the client,
/// the journal and PostgreSQL see is exactly the one the expiry keeps, never a fraction later.
fn deadline(kind: UseKind, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match kind {
        UseKind::Hold { ttl } => {
            let until = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
            Some(millis(until.timestamp_millis()).unwrap_or(until))
        }
        UseKind::Redeem => None,
    }
}

/// What a new use has taken so far: its counts in the ledger (every link of the limit chain)
/// and, among instances, the lease units of its totals. Dropped before [`Reservation::commit`]
/// it gives all of it back: the one undo of the take path.
pub(super) struct Reservation<'e> {
    engine: &'e Engine,
    u: Use,
    limits: Limits,
    leased: Option<(&'e Cluster, Vec<(Scope, u64)>)>,
    committed: bool,
}

impl<'e> Reservation<'e> {
    /// Takes every link of the chain for `u`, or none of them.
    fn take(engine: &'e Engine, u: Use, limits: Limits) -> Result<Reservation<'e>, Refusal> {
        limits::take(&limits.chain(), &engine.ledger, &u)?;
        Ok(Reservation { engine, u, limits, leased: None, committed: false })
    }

    /// The lease units of `totals` are spent for it too.
    pub(super) fn leased(&mut self, cluster: &'e Cluster, totals: Vec<(Scope, u64)>) {
        self.leased = Some((cluster, totals));
    }

    /// Its lease units stay spent whatever happens to the rest (a claim in doubt keeps them
    /// until PostgreSQL says whether it committed); returns them.
    pub(super) fn keep_leases(&mut self) -> Vec<(Scope, u64)> {
        self.leased.take().map(|(_, totals)| totals).unwrap_or_default()
    }

    /// The use is recorded: what it took stays taken.
    pub(super) fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if let Some((cluster, totals)) = self.leased.take() {
            cluster::put_back(cluster, &totals);
        }
        // What the slot counts now: a back-fill may have added to it.
        let ledger = &self.engine.ledger;
        let u = ledger.slot(self.u.key).map_or(self.u, |now| Use::of_slot(self.u.key, self.u.coupon, &now));
        limits::give_back(&self.limits.chain(), ledger, &u);
    }
}
