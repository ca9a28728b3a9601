//! The engine among several instances on one database: totals spent from quota leases,
//! the limits only PostgreSQL can count decided by a claim, uses another instance made
//! changed through PostgreSQL, and the others' uses merged into the ledger as they ship.
//!
//! Without a cluster (benches, the engine's own tests) every limit is this instance's
//! ledger alone, as it was for one instance.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::domain::coupon::{CampaignId, Coupon, CouponId};
use crate::domain::event::Spent;
use crate::domain::money::Cents;
use crate::domain::rules::Reason;
use crate::engine::leases::{Leases, Shortage};
use crate::engine::ledger::{Ended, OrderKey, Slot, SlotState};
use crate::engine::limits::{self, Use};
use crate::engine::ports::Scope;
use crate::engine::ports::{ClaimRequest, ClusterPort, PortError, StoredRow};
use crate::engine::standing::Standing;
use crate::engine::{Engine, EngineError, StoredUse, counted};

/// How often a release waiting for other instances' shipping asks again (told by the first
/// question, their heartbeats publish it within a few round trips).
const SHIPPED_POLL: std::time::Duration = std::time::Duration::from_millis(50);
/// How long a release waits for other instances' shipping at most (or `ledger.settle_timeout`
/// if shorter): a live instance told to publish does so within a few round trips; one that has
/// not by then is cut off, paused or dead, and waiting longer helps nobody.
const SHIPPED_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// This instance's place in the cluster.
#[derive(Debug)]
pub struct Cluster {
    pub leases: Arc<Leases>,
    pub port: Arc<dyn ClusterPort>,
    pub instance: String,
    pub epoch: i64,
    /// Whether this process may still spend its leases (its identity's heartbeat says).
    pub standing: Arc<Standing>,
    /// Whether it decides alone or shares (`engine::alone`).
    pub deciding: crate::engine::alone::Deciding,
}

/// Why a clustered use could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Short {
    /// A total is reached (the reason says which).
    Limit(Reason),
    /// PostgreSQL could not be asked, or the units are held elsewhere or in doubt.
    Unavailable,
}

/// The totals a use of `coupon` draws on, with the units of each.
pub(crate) fn totals(
    coupon: &Coupon,
    campaign: Option<(CampaignId, bool, bool)>,
    discount: Cents,
) -> Vec<(Scope, u64)> {
    let mut scopes = Vec::with_capacity(3);
    if coupon.usage_limit.is_some() {
        scopes.push((Scope::CouponUses(coupon.id), 1));
    }
    if let Some((id, capped, budgeted)) = campaign {
        if capped {
            scopes.push((Scope::CampaignUses(id), 1));
        }
        if budgeted && discount > Cents::ZERO {
            scopes.push((Scope::CampaignCents(id), discount.get()));
        }
    }
    scopes
}

fn shortage_reason(scope: Scope) -> Reason {
    match scope {
        Scope::CouponUses(_) => Reason::UsageLimitReached,
        Scope::CampaignUses(_) => Reason::CampaignLimitReached,
        Scope::CampaignCents(_) => Reason::CampaignBudgetExhausted,
    }
}

impl Engine {
    /// Joins a cluster: from now on totals come from leases and the port decides the rest.
    /// Call once, before the ledger is loaded.
    pub(crate) fn join_cluster(&self, cluster: Cluster) {
        if self.cluster.set(cluster).is_err() {
            tracing::error!("joined a cluster twice; keeping the first");
        }
    }

    /// This instance's place in the cluster, once joined.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.get()
    }

    /// Takes the lease units of `totals`, in order; on a shortage, puts back the earlier
    /// ones. A limit that looks reached is asked again once this instance's own journal is
    /// shipped: a release of its own may be what would free a unit.
    pub(crate) async fn spend_leases(&self, cluster: &Cluster, totals: &[(Scope, u64)]) -> Result<Spent, Short> {
        let mut spent = Spent::default();
        if !totals.is_empty() && !cluster.standing.may_spend() {
            // Units another process may be given by now: not ours to sell until proved again.
            self.metrics.quota.unproved.increment(1);
            return Err(Short::Unavailable);
        }
        let mut waited = false;
        for (idx, &(scope, units)) in totals.iter().enumerate() {
            let unshipped = self.journal.backlog() > 0;
            let mut taken = cluster.leases.take(scope, units).await;
            if taken == Err(Shortage::Exhausted) && unshipped {
                self.journal.wait_shipped(self.settings.settle_timeout).await;
                cluster.leases.forget_exhausted(scope);
                taken = cluster.leases.take(scope, units).await;
            }
            match taken {
                Ok(w) => {
                    waited |= w;
                    match scope {
                        Scope::CouponUses(_) => spent.coupon = units,
                        Scope::CampaignUses(_) => spent.campaign = units,
                        Scope::CampaignCents(_) => spent.cents = units,
                    }
                }
                Err(shortage) => {
                    put_back(cluster, &totals[..idx]);
                    return Err(match shortage {
                        // Units a claim of this instance holds in doubt are not sold: the
                        // limit is not reached until PostgreSQL says the claim committed.
                        Shortage::Exhausted if self.doubtful.hold(scope) => Short::Unavailable,
                        Shortage::Exhausted => Short::Limit(shortage_reason(scope)),
                        Shortage::Unavailable => Short::Unavailable,
                    });
                }
            }
        }
        if waited {
            self.metrics.quota.waits.inc("lease");
        }
        Ok(spent)
    }

    /// A use of these totals came back: a sold-out verdict this instance remembers about
    /// them no longer holds, and the next request asks PostgreSQL again.
    pub(crate) fn uses_freed(&self, u: &Use) {
        if let Some(cluster) = self.cluster.get() {
            cluster.leases.forget_exhausted(Scope::CouponUses(u.coupon));
            if let Some(campaign) = u.campaign {
                cluster.leases.forget_exhausted(Scope::CampaignUses(campaign));
                cluster.leases.forget_exhausted(Scope::CampaignCents(campaign));
            }
        }
    }

    /// Whether a change of `slot` (a confirmation, a release, an expiry) is PostgreSQL's to
    /// decide: a use another instance made, or, among several instances, any hold. A hold's
    /// row is in PostgreSQL from its claim, and any instance may confirm, cancel or expire it
    /// there; were its own instance to change it in its journal instead, the two could both
    /// win (a confirmation acknowledged here, the same use expired and sold again there), and
    /// no clock can order them. One compare-and-set on the row's revision does.
    ///
    /// While this instance decides alone nobody else changes a use, and every change is
    /// journalled like its own.
    pub(crate) fn changed_in_postgres(&self, slot: &Slot) -> bool {
        self.mode().shares() && (slot.foreign || slot.is_hold())
    }

    /// Changes a use through PostgreSQL, if the row is still at the slot's revision: a
    /// release (`release`), or a hold confirmed. True if this call changed it; otherwise the
    /// slot now says what the row is, for the caller to look again. An error leaves the slot
    /// as it was: the change may or may not have committed, and the row's next revision,
    /// read by a retry's compare-and-set or by the feed, says which.
    pub(crate) async fn change_in_postgres(&self, key: OrderKey, slot: Slot, release: bool) -> Result<bool, PortError> {
        let Some(cluster) = self.cluster.get() else {
            return Err(PortError("not in a cluster".into()));
        };
        if cluster.deciding.mode().lags() {
            return Err(PortError("what this instance knows may lag behind the one deciding alone".into()));
        }
        let claimed = self.ledger.update(key, |current| match current {
            Some(now) if now == slot => (Some(Slot { state: SlotState::Changing, ..now }), true),
            other => (other, false),
        });
        if !claimed {
            return Ok(false);
        }
        self.metrics.quota.waits.inc("change");
        let answer = cluster.port.change(slot.id, slot.rev, release).await;
        let now = self.clock.now().timestamp_millis();
        let restore = |state| self.ledger.update(key, |current| (current.map(|s| Slot { state, ..s }), ()));
        let changed = match answer {
            Err(err) => {
                restore(slot.state);
                return Err(err);
            }
            Ok(None) => {
                restore(slot.state);
                return Ok(false);
            }
            Ok(Some(changed)) => changed,
        };
        // What the row is now, from PostgreSQL's answer, not from this slot: a hold may
        // have been confirmed elsewhere, and then released as a redemption (order spent).
        let state = if changed.released {
            let ended = if !changed.hold {
                Ended::Redemption
            } else if slot.state.deadline().is_some_and(|until| until <= now) {
                Ended::ExpiredHold
            } else {
                Ended::CancelledHold
            };
            SlotState::Released { at: now, ended }
        } else if changed.hold {
            match slot.state {
                // The same hold, and still live, yet not confirmed: by PostgreSQL's clock its
                // deadline has passed. That clock decides (this one may be behind): the hold
                // is due here now, and the caller, looking again, expires it.
                SlotState::Held { until } if !release && !changed.changed && changed.rev == slot.rev && until > now => {
                    self.deadlines.push(now, key);
                    SlotState::Held { until: now }
                }
                other => other,
            }
        } else {
            SlotState::Live
        };
        self.ledger.update(key, |current| (current.map(|s| Slot { rev: changed.rev, state, ..s }), ()));
        if !slot.foreign && slot.is_hold() && !matches!(state, SlotState::Held { .. }) {
            // One of this instance's holds has ended (by this call or by another instance).
            self.live_holds.fetch_sub(1, Ordering::Relaxed);
            if changed.changed {
                self.metrics.holds.inc(match state {
                    SlotState::Live => "confirmed",
                    SlotState::Released { ended: Ended::ExpiredHold, .. } => "expired",
                    _ => "cancelled",
                });
            }
        }
        let u = Use::of_slot(key, key.0, &slot);
        match state {
            SlotState::Released { .. } => {
                limits::give_back(&limits::counting(), &self.ledger, &u);
                self.uses_freed(&u);
            }
            SlotState::Live if slot.is_hold() => limits::give_back(&limits::hold_only(), &self.ledger, &u),
            _ => {}
        }
        Ok(changed.changed)
    }

    /// The use of `order` as PostgreSQL stores it, for a release this ledger cannot answer.
    /// If PostgreSQL has none, or only a released hold (the order free again), it is asked
    /// again once every other instance has shipped what it acknowledged before now: a use
    /// under no limit at all is journalled, not claimed, and may still be on its way from
    /// the instance that took it. Until then (at most [`SHIPPED_WAIT`]) the answer is
    /// unavailable, never a `404` for a use that exists.
    pub(crate) async fn stored_everywhere(
        &self,
        cluster: &Cluster,
        coupon_id: CouponId,
        order_id: &str,
    ) -> Result<Option<StoredUse>, EngineError> {
        let stored = self.ports.archive.stored(coupon_id, order_id).await?;
        if stored.as_ref().is_some_and(|s| s.hold_until.is_none() || s.released_at.is_none()) {
            return Ok(stored);
        }
        let until = tokio::time::Instant::now() + self.settings.settle_timeout.min(SHIPPED_WAIT);
        let (since, mut shipped) = cluster.port.shipped_everywhere(None).await?;
        if !shipped {
            self.metrics.quota.waits.inc("shipping");
        }
        while !shipped {
            if tokio::time::Instant::now() >= until {
                return Err(PortError("another instance has not yet shipped what it acknowledged".into()).into());
            }
            tokio::time::sleep(SHIPPED_POLL).await;
            shipped = cluster.port.shipped_everywhere(Some(since)).await?.1;
        }
        Ok(self.ports.archive.stored(coupon_id, order_id).await?)
    }

    /// Merges uses that reached PostgreSQL (from any instance) into the ledger: a newer
    /// revision than the one remembered replaces it, counts moving with it; a slot settling
    /// here is left to its request. Returns how many slots changed.
    pub(crate) fn merge_uses(&self, uses: impl IntoIterator<Item = StoredUse>) -> usize {
        let catalog = self.catalog.load();
        let me = self.cluster.get().map(|c| c.instance.as_str());
        let mut merged = 0;
        for stored in uses {
            let key = (stored.coupon_id, self.ledger.id_key(&stored.order_id));
            let slot = self.stored_slot(&catalog, &stored, me);
            // A released hold is remembered too (until the retention forgets it): a later use
            // of its order taken here must come at a newer revision than its row, or the
            // shipper would take that use for an old one and drop it.
            let replaced = self.ledger.update_marked(key, Some(stored.cart), |current| match current {
                None => (Some(slot), Some(None)),
                Some(local) if local.is_settling() || local.rev > slot.rev => (Some(local), None),
                Some(local)
                    if local.rev == slot.rev && local.user == slot.user && local.state.same_kind(slot.state) =>
                {
                    (Some(local), None)
                }
                Some(local) => (Some(slot), Some(Some(local))),
            });
            let Some(previous) = replaced else { continue };
            merged += 1;
            self.metrics.quota.merged.increment(1);
            if let Some(old) = previous {
                if old.counts() {
                    let u = Use::of_slot(key, key.0, &old);
                    limits::give_back(&limits::counting(), &self.ledger, &u);
                    if !slot.counts() {
                        self.uses_freed(&u);
                    }
                }
                if !old.foreign && old.is_hold() && !matches!(old.state, SlotState::Released { .. }) {
                    self.live_holds.fetch_sub(1, Ordering::Relaxed);
                }
            }
            if slot.counts() {
                let _ = limits::take(&limits::counting(), &self.ledger, &Use::of_slot(key, key.0, &slot));
            }
            if let SlotState::Held { until } = slot.state {
                let grace = if slot.foreign { FOREIGN_GRACE_MS } else { 0 };
                self.deadlines.push(until + grace, key);
            }
            // A set another instance took is this order's set here too; given back, it is not.
            match stored.group.as_ref() {
                Some(group) if slot.counts() => self.groups.load(key.1, group.id, slot.user, key.0, &group.codes),
                Some(_) => self.set_released(key.1),
                None => {}
            }
        }
        merged
    }

    /// The slot a stored use is, as this instance remembers it.
    pub(crate) fn stored_slot(
        &self,
        catalog: &crate::engine::catalog::Catalog,
        stored: &StoredUse,
        me: Option<&str>,
    ) -> Slot {
        use crate::engine::catalog::Found;
        use crate::engine::ledger::code_slot;
        let code = stored.code.as_deref().and_then(|code| match catalog.find(code) {
            Some(Found::Code { code, .. }) => Some((code.batch, code.index)),
            _ => None,
        });
        let campaign = catalog
            .coupon_by_id(stored.coupon_id)
            .and_then(|c| c.campaign_id)
            .filter(|_| crate::domain::rules::takes_campaign_use(stored.discount));
        let state = match (stored.released_at, stored.hold_until) {
            (Some(at), None) => SlotState::Released { at: at.timestamp_millis(), ended: Ended::Redemption },
            (Some(at), Some(until)) => {
                let ended = if at >= until { Ended::ExpiredHold } else { Ended::CancelledHold };
                SlotState::Released { at: at.timestamp_millis(), ended }
            }
            (None, Some(until)) => SlotState::Held { until: until.timestamp_millis() },
            (None, None) => SlotState::Live,
        };
        Slot {
            id: stored.id,
            rev: stored.rev,
            user: self.ledger.id_key(&stored.user_id),
            order_value: stored.order_value,
            discount: stored.discount,
            code: code.map(code_slot),
            campaign: campaign.and_then(std::num::NonZeroI64::new),
            counted: counted(catalog, stored.coupon_id, campaign),
            foreign: me.is_some() && stored.made_by.as_deref() != me,
            state,
        }
    }

    /// A claim found the order's row: remember it as PostgreSQL has it.
    pub(crate) fn remember_row(&self, key: OrderKey, req: &crate::engine::UseRequest<'_>, row: &StoredRow) {
        let released_at = row.released.then(|| self.clock.now());
        self.merge_uses([StoredUse {
            id: crate::domain::identity::redemption_id(key.0, req.order_id),
            rev: row.rev,
            coupon_id: key.0,
            code: None,
            user_id: row.user_id.clone(),
            order_id: req.order_id.to_owned(),
            order_value: row.order_value,
            discount: row.discount,
            hold_until: row.hold_until,
            released_at,
            made_by: None,
            cart: row.cart,
            group: None,
        }]);
    }
}

/// A claim that failed without an answer: it may have committed (its row inserted, its
/// lease units spent) or not.
#[derive(Debug, Clone)]
pub(crate) struct Doubt {
    order_id: String,
    /// The claim's id and instant: its note in `claim_spends`, if it committed.
    id: uuid::Uuid,
    at: chrono::DateTime<chrono::Utc>,
    /// The lease units the claim took: spent if it committed, to put back if not.
    totals: Vec<(Scope, u64)>,
}

/// Orders whose claim's outcome is unknown here (see `Engine::settle_doubt`). Rare: a map
/// behind a lock, and a count read without it so that the request path pays nothing while
/// it is empty.
#[derive(Debug, Default)]
pub(crate) struct Doubts {
    count: std::sync::atomic::AtomicUsize,
    keys: std::sync::Mutex<std::collections::HashMap<OrderKey, Doubt>>,
}

impl Doubts {
    /// A claim in doubt; a second one for the same order cannot happen (the first is
    /// settled before anything else is decided about the order).
    pub(crate) fn add(&self, key: OrderKey, claim: &ClaimRequest<'_>, totals: &[(Scope, u64)]) {
        let doubt = Doubt { order_id: claim.order_id.to_owned(), id: claim.id, at: claim.at, totals: totals.to_vec() };
        if self.keys.lock().expect("doubts").insert(key, doubt).is_none() {
            self.count.fetch_add(1, Ordering::Release);
        }
    }

    fn get(&self, key: OrderKey) -> Option<Doubt> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.keys.lock().expect("doubts").get(&key).cloned()
    }

    fn remove(&self, key: OrderKey) {
        if self.keys.lock().expect("doubts").remove(&key).is_some() {
            self.count.fetch_sub(1, Ordering::Release);
        }
    }

    /// Every order in doubt, in one order every time (by coupon and order id: the keys
    /// are keyed hashes, ordered differently by every process).
    fn all(&self) -> Vec<OrderKey> {
        let keys = self.keys.lock().expect("doubts");
        let mut all: Vec<(OrderKey, &str)> = keys.iter().map(|(key, doubt)| (*key, doubt.order_id.as_str())).collect();
        all.sort_unstable_by(|a, b| (a.0.0, a.1).cmp(&(b.0.0, b.1)));
        all.into_iter().map(|(key, _)| key).collect()
    }

    /// The instant of the oldest claim in doubt.
    fn oldest(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.keys.lock().expect("doubts").values().map(|d| d.at).min()
    }

    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Whether a claim in doubt holds units of `scope`: they come back if it did not commit.
    pub(crate) fn hold(&self, scope: Scope) -> bool {
        self.len() > 0
            && self.keys.lock().expect("doubts").values().any(|d| d.totals.iter().any(|(s, n)| *s == scope && *n > 0))
    }
}

/// How often claims in doubt are settled in the background.
const SETTLE_DOUBTS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
/// Every so many of those, the notes of settled claims are forgotten (every 30 s).
const FORGET_CLAIMS_EVERY_TICKS: u64 = 60;

impl Engine {
    /// An order whose claim failed without an answer may have a row in PostgreSQL that this
    /// ledger lacks, and the claim may have spent lease units: read the row before deciding
    /// anything else about the order here (503 until PostgreSQL can be asked). If the row is
    /// there and this instance's, the claim committed: remember it, its units are spent; if
    /// not, its units go back to the lease. (A redemption once journalled here on top of such
    /// a hold, unknown to this ledger, was lost when the hold expired elsewhere; units put
    /// back at once after a claim that had committed were sold a second time.)
    pub(crate) async fn settle_doubt(&self, key: OrderKey) -> Result<(), EngineError> {
        let Some(doubt) = self.doubtful.get(key) else { return Ok(()) };
        let stored = self.ports.archive.stored(key.0, &doubt.order_id).await?;
        // Whether it spent its units, from the note it left if it committed: the order's row
        // cannot say (released and claimed again elsewhere since, it is another use's).
        if let Some(cluster) = self.cluster.get()
            && !doubt.totals.is_empty()
            && !cluster.port.claim_spent(doubt.id, doubt.at).await?
        {
            put_back(cluster, &doubt.totals);
        }
        if let Some(stored) = stored {
            self.load_uses([stored]);
        }
        self.doubtful.remove(key);
        Ok(())
    }

    /// Reads again the orders whose use made here did not land when shipped (another row of
    /// the order was newer: the same order taken elsewhere before this instance knew). The
    /// ledger counted that use; left alone it would count it for ever, refusing units that
    /// are free. Best effort: an order that cannot be read now is logged.
    pub(crate) async fn relearn(&self, orders: &[(CouponId, String)]) {
        for (coupon, order_id) in orders {
            match self.ports.archive.stored(*coupon, order_id).await {
                Ok(Some(stored)) => {
                    self.merge_uses([stored]);
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(error = %err, coupon, order_id, "cannot read again an order whose use did not land")
                }
            }
        }
    }

    /// Settles every claim in doubt that PostgreSQL can be asked about now; returns how many
    /// are left.
    pub(crate) async fn settle_doubts(&self) -> usize {
        let _decisions = self.decisions.read().await;
        for key in self.doubtful.all() {
            if let Err(err) = self.settle_doubt(key).await {
                tracing::debug!(error = %err, "a claim in doubt cannot be settled yet");
                break;
            }
        }
        self.doubtful.len()
    }

    /// Forgets the notes of claims no doubt can need: those before the oldest claim in doubt,
    /// and before a minute ago.
    pub(crate) async fn forget_settled_claims(&self) {
        let Some(cluster) = self.cluster.get() else { return };
        let minute_ago = self.clock.now() - chrono::Duration::minutes(1);
        let before = self.doubtful.oldest().map_or(minute_ago, |oldest| oldest.min(minute_ago));
        if let Err(err) = cluster.port.forget_claims_before(before).await {
            tracing::debug!(error = %err, "notes of settled claims not forgotten yet");
        }
    }

    /// Settles claims in doubt as PostgreSQL answers, and forgets the notes of settled ones
    /// now and then, until `stop`.
    pub(crate) async fn run_doubts(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut interval = tokio::time::interval(SETTLE_DOUBTS_EVERY);
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = interval.tick() => {
                    self.settle_doubts().await;
                    ticks += 1;
                    if ticks.is_multiple_of(FORGET_CLAIMS_EVERY_TICKS) {
                        self.forget_settled_claims().await;
                    }
                }
            }
        }
    }
}

/// How long after its deadline another instance's hold is expired from here, through
/// PostgreSQL, if its own instance has not expired it by then (it may be down).
pub(crate) const FOREIGN_GRACE_MS: i64 = 1_000;

/// Puts back lease units taken for a use that did not happen.
pub(crate) fn put_back(cluster: &Cluster, totals: &[(Scope, u64)]) {
    for &(scope, units) in totals {
        cluster.leases.put_back(scope, units);
    }
}
