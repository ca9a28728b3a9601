//! The way back: release, expiry of holds, and forgetting released orders after
//! `ledger.released_retention` (only the filter of forgotten orders and the archive keep them).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use crate::domain::coupon::{CouponId, normalize_code};
use crate::domain::event::{Event, ReleaseCause, Released};
use chrono::{DateTime, Utc};

use crate::engine::ledger::{Ended, IdKey, OrderKey, Slot, SlotState};
use crate::engine::limits::Use;
use crate::engine::ports::PortError;
use crate::engine::{EXPIRY_BATCH, Engine, EngineError, HoldFate, ReleaseOutcome, ReleaseRequest, limits};

impl Engine {
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
                // Among instances, a use made elsewhere may not have reached this ledger yet:
                // one under a limit is in PostgreSQL from its claim, one under none once its
                // instance has shipped it.
                if let Some(cluster) = self.cluster().filter(|_| self.mode().shares() && !asked) {
                    asked = true;
                    if let Some(stored) = self.stored_everywhere(cluster, key.0, req.order_id).await? {
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
                // used it since, unseen here. Only PostgreSQL can say it is released still,
                // once every instance has shipped.
                SlotState::Released { ended, .. } if !ended.order_spent() && self.mode().shares() && !looked => {
                    looked = true;
                    if let Some(cluster) = self.cluster()
                        && let Some(stored) = self.stored_everywhere(cluster, key.0, req.order_id).await?
                    {
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
    pub(super) async fn archived(&self, key: OrderKey, order_id: &str) -> Result<Archived, EngineError> {
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
    pub(crate) fn forget_released(&self) -> usize {
        let cutoff = self.released_cutoff();
        let forgotten = self.ledger.forget(|slot| matches!(slot.state, SlotState::Released { at, .. } if at < cutoff));
        for key in &forgotten {
            self.forgotten.insert(*key);
        }
        forgotten.len()
    }

    /// Forgets released redemptions as they pass the retention, until `stop`.
    pub(crate) async fn run_forgetting(self: Arc<Self>, stop: CancellationToken) {
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
    pub(super) fn released_cutoff(&self) -> i64 {
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
        let ready =
            if slot.foreign && self.mode().shares() { until + crate::engine::cluster::FOREIGN_GRACE_MS } else { until };
        if due < until || self.clock.now().timestamp_millis() < ready {
            return Ok(false);
        }
        if self.changed_in_postgres(&slot) {
            return self.change_in_postgres(key, slot, true).await.map_err(EngineError::Cluster);
        }
        if let Some(group) = self.groups.of(key.1).filter(|g| !g.taking && g.members.len() > 1) {
            return self.expire_set(key.1, &group.members, until).await;
        }
        self.give_back(key, slot, ReleaseCause::Expired).await
    }

    /// Gives back every hold of a held set due at `until` as one journal record, as its
    /// release would be; true if this call did.
    async fn expire_set(&self, order: IdKey, members: &[CouponId], until: i64) -> Result<bool, EngineError> {
        let held = members.iter().filter_map(|&coupon| {
            let key = (coupon, order);
            self.ledger.slot(key).filter(|s| s.state == SlotState::Held { until }).map(|slot| (key, slot))
        });
        let Some(claimed) = self.claim_all(held, i64::MIN) else { return Ok(false) };
        if claimed.is_empty() {
            return Ok(false);
        }
        if let Err(err) = self.may_change_in_journal() {
            self.unclaim(&claimed);
            return Err(err);
        }
        let now = self.clock.now();
        let events = claimed
            .iter()
            .map(|(key, slot)| {
                let (id, rev, coupon_id) = (slot.id, slot.rev + 1, key.0);
                Event::Released(Released { id, rev, coupon_id, at: now, cause: ReleaseCause::Expired })
            })
            .collect();
        if let Err(err) = self.journal.append(&Event::Together { events }.encode()).await {
            self.unclaim(&claimed);
            return Err(err.into());
        }
        for (key, slot) in claimed {
            self.given_back(key, slot, slot.rev + 1, ReleaseCause::Expired, now);
        }
        self.set_released(order);
        Ok(true)
    }

    /// Journals the release of `slot` and gives its uses back; false if the slot changed
    /// before it could be claimed.
    pub(super) async fn give_back(&self, key: OrderKey, slot: Slot, cause: ReleaseCause) -> Result<bool, EngineError> {
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
        self.given_back(key, slot, rev, cause, now);
        self.set_released(key.1);
        Ok(true)
    }

    /// The release of `slot` (claimed `Changing`) is journalled at `rev`: it turns
    /// `Released` and its limits get its uses back.
    pub(super) fn given_back(&self, key: OrderKey, slot: Slot, rev: u32, cause: ReleaseCause, now: DateTime<Utc>) {
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
    }

    /// After a use of `order` was given back: a set whose every use is given back is no
    /// longer the order's (its codes may be taken again, one at a time or as another set).
    pub(super) fn set_released(&self, order: IdKey) {
        let Some(group) = self.groups.of(order).filter(|g| !g.taking) else { return };
        let released =
            |coupon| self.ledger.slot((coupon, order)).is_none_or(|s| matches!(s.state, SlotState::Released { .. }));
        if group.members.iter().all(|&coupon| released(coupon)) {
            self.groups.remove(order, group.id);
        }
    }

    pub(super) async fn wait_settled(&self, key: OrderKey, until: Instant) -> Result<(), EngineError> {
        let left = until.saturating_duration_since(Instant::now());
        self.ledger.settled(key, left).await.map(drop).map_err(|()| EngineError::Busy)
    }

    /// Gives back every hold whose deadline has passed; returns how many. Used at start-up,
    /// before serving, and by [`Engine::run_deadlines`].
    pub(crate) async fn expire_due(&self) -> usize {
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
    pub(crate) async fn run_deadlines(self: Arc<Self>, stop: CancellationToken) {
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
}

/// What the archive said of a forgotten order.
pub(super) enum Archived {
    /// Nothing: a new order.
    Unknown,
    /// A released hold, at this revision: the order is free again.
    FreeAfter(u32),
    /// A redemption: the order is spent.
    Spent,
}
