//! PostgreSQL's side of the cluster, in memory, for the simulation: the rows of
//! `coupon_usage`, `quotas`, `quota_leases` and `quota_instances`, and what the SQL functions
//! of the migrations do to them (`quota_grant`, `quota_return`, `quota_settle`,
//! `quota_apply`, `claim_use`, `change_use`, `quota_begin_epoch`, `quota_mode`,
//! `quota_take_alone`, `quota_release_alone`) and what the shipper's transaction does with a
//! batch of journal events (`db::shipper`). Every call is one atomic step; the fault it
//! meets (none, failed before committing, or committed with its answer lost) is drawn by the
//! simulation before the call.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::coupon::{CampaignId, CouponId};
use crate::domain::event::{Event, Funding, GroupMark, Spent};
use crate::domain::money::Cents;
use crate::domain::rules::Reason;
use crate::engine::StoredUse;
use crate::engine::ports::Scope;
use crate::engine::ports::{Changed, ClaimOutcome, ClaimRequest, Grant, ModeFacts, SetClaim, StoredRow};

/// A `coupon_usage` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Row {
    pub(super) id: Uuid,
    pub(super) rev: u32,
    pub(super) coupon: CouponId,
    pub(super) user: String,
    pub(super) order: String,
    pub(super) value: Cents,
    pub(super) discount: Cents,
    pub(super) hold_until: Option<DateTime<Utc>>,
    pub(super) released_at: Option<DateTime<Utc>>,
    pub(super) campaign: Option<CampaignId>,
    pub(super) instance: String,
    /// The change sequence the feed follows.
    pub(super) seq: u64,
    /// For a use taken with other codes of its order.
    pub(super) set: Option<GroupMark>,
}

impl Row {
    pub(super) fn live(&self) -> bool {
        self.released_at.is_none()
    }
}

#[derive(Debug, Clone, Default)]
struct Quota {
    limit: u64,
    used: i64,
    held: u64,
}

#[derive(Debug, Clone, Default)]
struct Lease {
    held: u64,
    return_seq: u64,
    return_units: u64,
    grant_seq: u64,
    grant_units: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InstanceState {
    Live,
    /// Begun while another instance decided alone.
    Waiting,
    Stopped,
    WrittenOff,
}

/// The limited totals of a coupon: its own, and its campaign's (`None` where unlimited).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Limits {
    pub(super) coupon: Option<u64>,
    pub(super) campaign: Option<CampaignId>,
    pub(super) campaign_uses: Option<u64>,
    pub(super) campaign_cents: Option<u64>,
}

/// The database.
#[derive(Debug, Default, Clone)]
pub(super) struct Pg {
    pub(super) up: bool,
    pub(super) rows: BTreeMap<Uuid, Row>,
    quotas: HashMap<Scope, Quota>,
    leases: BTreeMap<(Scope, String, i64), Lease>,
    pub(super) instances: BTreeMap<String, (i64, InstanceState)>,
    /// Each coupon's limits, as `coupons` and `campaigns` say.
    pub(super) limits: HashMap<CouponId, Limits>,
    seq: u64,
    /// Units counted without a lease to pay for them (`quota_overrun_total`).
    pub(super) overrun: u64,
    /// Orders two users took on two instances (`order_conflicts`).
    pub(super) conflicts: u64,
    /// What each overrun was, to read a failure.
    pub(super) overrun_notes: Vec<String>,
    /// `journal_shipped`: how far each journal directory has shipped.
    shipped: HashMap<String, i64>,
    /// `quota_stamps.shipped_through`, by instance: the epoch and the time.
    shipped_through: HashMap<String, (i64, Option<DateTime<Utc>>)>,
    /// `claim_spends`: the claims that spent lease units, by (instance, epoch, id, instant).
    claim_spends: std::collections::BTreeSet<(String, i64, Uuid, DateTime<Utc>)>,
    /// `quota_alone`: the instance (and epoch) deciding alone.
    pub(super) alone: Option<(String, i64)>,
    /// Every order one of whose uses the shipper dropped (a newer row was there).
    pub(super) dropped: std::collections::BTreeSet<(CouponId, String)>,
}

impl Pg {
    pub(super) fn new() -> Pg {
        Pg { up: true, ..Pg::default() }
    }

    /// A coupon with these limits (its campaign's too): the `quotas` rows the triggers make.
    pub(super) fn define(&mut self, coupon: CouponId, limits: Limits) {
        if let Some(limit) = limits.coupon {
            self.quotas.insert(Scope::CouponUses(coupon), Quota { limit, ..Quota::default() });
        }
        if let Some(campaign) = limits.campaign {
            if let Some(limit) = limits.campaign_uses {
                self.quotas.entry(Scope::CampaignUses(campaign)).or_insert(Quota { limit, ..Quota::default() });
            }
            if let Some(limit) = limits.campaign_cents {
                self.quotas.entry(Scope::CampaignCents(campaign)).or_insert(Quota { limit, ..Quota::default() });
            }
        }
        self.limits.insert(coupon, limits);
    }

    fn live_epoch(&self, instance: &str, epoch: i64) -> bool {
        self.instances.get(instance) == Some(&(epoch, InstanceState::Live))
    }

    /// `quota_begin_epoch`: a new epoch of `instance`, waiting while another decides alone.
    pub(super) fn begin_epoch(&mut self, instance: &str) -> (i64, InstanceState) {
        let state = match &self.alone {
            Some((holder, _)) if holder != instance => InstanceState::Waiting,
            _ => InstanceState::Live,
        };
        let entry = self.instances.entry(instance.to_owned()).or_insert((0, state));
        entry.0 += 1;
        entry.1 = state;
        *entry
    }

    fn others(&self, instance: &str) -> bool {
        self.instances
            .iter()
            .any(|(who, (_, state))| who != instance && matches!(state, InstanceState::Live | InstanceState::Waiting))
    }

    /// `quota_mode`.
    pub(super) fn mode(&self, instance: &str, epoch: i64) -> ModeFacts {
        ModeFacts { live: self.live_epoch(instance, epoch), others: self.others(instance), alone: self.alone.clone() }
    }

    /// `quota_take_alone`.
    pub(super) fn take_alone(&mut self, instance: &str, epoch: i64) -> Option<i64> {
        if !self.live_epoch(instance, epoch)
            || self.others(instance)
            || self.alone.as_ref().is_some_and(|(holder, _)| holder != instance)
        {
            return None;
        }
        self.settle(instance, epoch);
        self.alone = Some((instance.to_owned(), epoch));
        Some(i64::try_from(self.seq).unwrap_or(i64::MAX))
    }

    /// `quota_release_alone`.
    pub(super) fn release_alone(&mut self, instance: &str) {
        if self.alone.as_ref().is_some_and(|(holder, _)| holder == instance) {
            self.alone = None;
        }
        if self.alone.is_none() {
            for (_, state) in self.instances.values_mut() {
                if *state == InstanceState::Waiting {
                    *state = InstanceState::Live;
                }
            }
        }
    }

    /// `stop`: a clean stop, everything shipped.
    pub(super) fn stop(&mut self, instance: &str, epoch: i64) {
        self.settle(instance, epoch);
        if let Some(entry) = self.instances.get_mut(instance).filter(|(e, _)| *e == epoch) {
            entry.1 = InstanceState::Stopped;
        }
        self.release_alone(instance);
    }

    /// `settle` at a start: the last run's leases, and its right to decide alone.
    pub(super) fn settle_last_run(&mut self, instance: &str, epoch: i64) {
        self.settle(instance, epoch);
        if self.alone.as_ref().is_some_and(|(holder, e)| holder == instance && *e <= epoch) {
            self.release_alone(instance);
        }
    }

    /// The heartbeat's stamp: false if the instance's epoch is not live or waiting; else
    /// `through` is kept (the latest of this epoch's).
    pub(super) fn stamp(&mut self, instance: &str, epoch: i64, through: Option<DateTime<Utc>>) -> bool {
        let stampable = matches!(
            self.instances.get(instance),
            Some(&(e, InstanceState::Live | InstanceState::Waiting)) if e == epoch
        );
        if stampable {
            let kept = self.shipped_through.entry(instance.to_owned()).or_insert((epoch, None));
            *kept = if kept.0 == epoch { (epoch, kept.1.max(through)) } else { (epoch, through) };
        }
        stampable
    }

    /// Whether every other live or waiting instance has shipped through `since`.
    pub(super) fn shipped_everywhere(&self, instance: &str, since: DateTime<Utc>) -> bool {
        self.instances.iter().filter(|(who, _)| *who != instance).all(|(who, &(epoch, state))| {
            !matches!(state, InstanceState::Live | InstanceState::Waiting)
                || matches!(self.shipped_through.get(who), Some(&(e, Some(at))) if e == epoch && at >= since)
        })
    }

    /// `quota_settle`: what the leases of `instance` up to `epoch` hold goes back.
    pub(super) fn settle(&mut self, instance: &str, epoch: i64) -> u64 {
        let mut total = 0;
        for ((scope, who, e), lease) in &mut self.leases {
            if who == instance && *e <= epoch && lease.held > 0 {
                if let Some(q) = self.quotas.get_mut(scope) {
                    q.held -= lease.held;
                }
                total += lease.held;
                lease.held = 0;
            }
        }
        total
    }

    /// `write_off`: fenced (a new epoch, written off) and settled.
    pub(super) fn write_off(&mut self, instance: &str) -> u64 {
        let Some(&(epoch, _)) = self.instances.get(instance) else { return 0 };
        self.instances.insert(instance.to_owned(), (epoch + 1, InstanceState::WrittenOff));
        let units = self.settle(instance, epoch + 1);
        self.release_alone(instance);
        units
    }

    /// `quota_grant`, numbered.
    pub(super) fn grant(&mut self, scope: Scope, instance: &str, epoch: i64, want: u64, need: u64, seq: u64) -> Grant {
        if !self.live_epoch(instance, epoch) {
            return Grant { granted: 0, held_elsewhere: 0, fenced: true };
        }
        let Some(q) = self.quotas.get(&scope).cloned() else {
            return Grant { granted: 0, held_elsewhere: 0, fenced: false };
        };
        let mut own = 0;
        let mut holders = 0u64;
        for ((s, who, e), lease) in &self.leases {
            if *s != scope {
                continue;
            }
            if who == instance && *e == epoch {
                own += lease.held;
            } else if lease.held > 0 {
                holders += 1;
            }
        }
        let key = (scope, instance.to_owned(), epoch);
        if let Some(lease) = self.leases.get(&key).filter(|l| l.grant_seq >= seq) {
            return Grant { granted: lease.grant_units, held_elsewhere: q.held - own, fenced: false };
        }
        let used = u64::try_from(q.used).unwrap_or(0);
        let free = q.limit.saturating_sub(used + q.held);
        let k = want.min(free.div_ceil(2 * (holders + 1)).max(need)).min(free);
        if k > 0 {
            self.quotas.get_mut(&scope).expect("quota").held += k;
            let lease = self.leases.entry(key).or_default();
            lease.held += k;
            lease.grant_seq = seq;
            lease.grant_units = k;
        } else if let Some(lease) = self.leases.get_mut(&key) {
            lease.grant_seq = seq;
            lease.grant_units = 0;
        }
        Grant { granted: k, held_elsewhere: q.held - own, fenced: false }
    }

    /// `quota_return`, numbered.
    pub(super) fn give_back(&mut self, scope: Scope, instance: &str, epoch: i64, units: u64, seq: u64) -> u64 {
        let Some(lease) = self.leases.get_mut(&(scope, instance.to_owned(), epoch)) else { return 0 };
        if lease.return_seq >= seq {
            return lease.return_units;
        }
        let n = lease.held.min(units);
        lease.held -= n;
        lease.return_seq = seq;
        lease.return_units = n;
        if let Some(q) = self.quotas.get_mut(&scope) {
            q.held -= n;
        }
        n
    }

    /// `quota_refund`: the shipper's unnumbered return.
    fn refund(&mut self, scope: Scope, instance: &str, epoch: i64, units: u64) {
        if let Some(lease) = self.leases.get_mut(&(scope, instance.to_owned(), epoch)) {
            let n = lease.held.min(units);
            lease.held -= n;
            if let Some(q) = self.quotas.get_mut(&scope) {
                q.held -= n;
            }
        }
    }

    /// `quota_apply` for one scope: `used` moves; `spent` units leave the paying lease.
    fn apply(&mut self, scope: Scope, used: i64, spent: u64, payer: Option<(&str, i64)>) {
        let Some(q) = self.quotas.get(&scope) else { return };
        let _ = q;
        let mut paid = 0;
        if spent > 0 {
            if let Some((instance, epoch)) = payer
                && let Some(lease) = self.leases.get_mut(&(scope, instance.to_owned(), epoch))
            {
                paid = lease.held.min(spent);
                lease.held -= paid;
            }
            if spent > paid {
                self.overrun_notes.push(format!("{scope:?} spent {spent} paid {paid} by {payer:?}"));
            }
            self.overrun += spent - paid;
        }
        let q = self.quotas.get_mut(&scope).expect("quota");
        q.used += used;
        q.held -= paid;
    }

    /// What one row counts in, with the units a funding spent on each.
    fn scopes(
        &self,
        coupon: CouponId,
        campaign: Option<CampaignId>,
        discount: Cents,
        spent: Spent,
    ) -> Vec<(Scope, i64, u64)> {
        let mut out = vec![(Scope::CouponUses(coupon), 1, spent.coupon)];
        if let Some(campaign) = campaign {
            out.push((Scope::CampaignUses(campaign), 1, spent.campaign));
            out.push((Scope::CampaignCents(campaign), discount.get() as i64, spent.cents));
        }
        out
    }

    fn count_row(&mut self, row: &Row, sign: i64, funding: Option<&Funding>) {
        let spent = funding.map(|f| f.spent).unwrap_or_default();
        for (scope, used, units) in self.scopes(row.coupon, row.campaign, row.discount, spent) {
            let units = if sign > 0 { units } else { 0 };
            self.apply(scope, sign * used, units, funding.map(|f| (f.instance.as_str(), f.epoch)));
        }
    }

    /// A row PostgreSQL already has (written before the test began), counted in the quotas.
    pub(super) fn store(&mut self, stored: &StoredUse, campaign: Option<CampaignId>) {
        let seq = self.next_seq();
        let row = Row {
            id: stored.id,
            rev: stored.rev,
            coupon: stored.coupon_id,
            user: stored.user_id.clone(),
            order: stored.order_id.clone(),
            value: stored.order_value,
            discount: stored.discount,
            hold_until: stored.hold_until,
            released_at: stored.released_at,
            campaign,
            instance: "before".into(),
            seq,
            set: None,
        };
        if row.live() {
            for (scope, used, _) in self.scopes(row.coupon, row.campaign, row.discount, Spent::default()) {
                if let Some(q) = self.quotas.get_mut(&scope) {
                    q.used += used;
                }
            }
        }
        self.rows.insert(row.id, row);
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// `claim_use`.
    /// `claim_set`: each claim as `claim_use` takes it, all in or (the first not taken stops
    /// the set) none, as the function's subtransaction rolls back.
    pub(super) fn claim_set(
        &mut self,
        claims: &[ClaimRequest<'_>],
        group: &GroupMark,
        instance: &str,
        epoch: i64,
    ) -> SetClaim {
        let before = self.clone();
        let mut revs = Vec::with_capacity(claims.len());
        for (index, claim) in claims.iter().enumerate() {
            match self.claim(claim, instance, epoch) {
                ClaimOutcome::Taken { rev } => revs.push(rev),
                outcome => {
                    *self = before;
                    return SetClaim::Stopped { index, outcome };
                }
            }
        }
        for claim in claims {
            if let Some(row) = self.rows.get_mut(&claim.id) {
                row.set = Some(group.clone());
            }
        }
        SetClaim::Taken(revs)
    }

    pub(super) fn claim(&mut self, req: &ClaimRequest<'_>, instance: &str, epoch: i64) -> ClaimOutcome {
        if !self.live_epoch(instance, epoch) {
            return ClaimOutcome::Fenced;
        }
        let mut rev = req.rev;
        if let Some(cur) = self.rows.get(&req.id) {
            if cur.live() || cur.hold_until.is_none() {
                return ClaimOutcome::Exists(stored_row(cur));
            }
            rev = rev.max(cur.rev + 1);
        }
        let live = |f: &dyn Fn(&Row) -> bool| self.rows.values().filter(|r| r.live() && f(r)).count() as u32;
        if let Some(limit) = req.user_limit
            && live(&|r| r.coupon == req.coupon_id && r.user == req.user_id) >= limit
        {
            return ClaimOutcome::Refused(Reason::UserUsageLimitReached);
        }
        if let (Some(limit), Some(campaign)) = (req.campaign_user_limit, req.campaign)
            && live(&|r| r.campaign == Some(campaign) && r.user == req.user_id) >= limit
        {
            return ClaimOutcome::Refused(Reason::CampaignUserLimitReached);
        }
        if let (Some(_), Some(max)) = (req.hold_until, req.max_holds)
            && live(&|r| r.user == req.user_id && r.hold_until.is_some()) >= max
        {
            return ClaimOutcome::TooManyHolds;
        }
        let seq = self.next_seq();
        let row = Row {
            id: req.id,
            rev,
            coupon: req.coupon_id,
            user: req.user_id.to_owned(),
            order: req.order_id.to_owned(),
            value: req.order_value,
            discount: req.discount,
            hold_until: req.hold_until,
            released_at: None,
            campaign: req.campaign,
            instance: instance.to_owned(),
            seq,
            set: None,
        };
        let funding = Funding { instance: instance.to_owned(), epoch, spent: req.spent };
        self.count_row(&row, 1, Some(&funding));
        if !req.spent.is_empty() {
            self.claim_spends.insert((instance.to_owned(), epoch, req.id, req.at));
        }
        self.rows.insert(req.id, row);
        ClaimOutcome::Taken { rev }
    }

    /// `change_use`.
    pub(super) fn change(&mut self, id: Uuid, rev: u32, release: bool, at: DateTime<Utc>) -> Option<Changed> {
        let cur = self.rows.get(&id)?.clone();
        if cur.rev != rev || !cur.live() || (!release && cur.hold_until.is_none_or(|until| until <= at)) {
            return Some(Changed {
                changed: false,
                rev: cur.rev,
                hold: cur.hold_until.is_some(),
                released: !cur.live(),
            });
        }
        let seq = self.next_seq();
        let row = self.rows.get_mut(&id).expect("row");
        row.rev = rev + 1;
        row.seq = seq;
        if release {
            row.released_at = Some(at);
            let row = row.clone();
            self.count_row(&row, -1, None);
            Some(Changed { changed: true, rev: rev + 1, hold: row.hold_until.is_some(), released: true })
        } else {
            row.hold_until = None;
            Some(Changed { changed: true, rev: rev + 1, hold: false, released: false })
        }
    }

    /// The shipper's transaction for a batch of one instance's journal events (with their
    /// positions in the journal of directory `dir`). Answers the orders whose use did not
    /// land, for the instance to read again.
    pub(super) fn ship(&mut self, dir: &str, instance: &str, events: &[(i64, Event)]) -> Vec<(CouponId, String)> {
        let mut dropped = Vec::new();
        let done = self.shipped.get(dir).copied();
        let Some(&(last, _)) = events.last() else { return dropped };
        let is_fresh = |position: i64| done.is_none_or(|done| position > done);
        let again = events.iter().filter(|(position, _)| !is_fresh(*position));
        let fresh = events.iter().filter(|(position, _)| is_fresh(*position));
        for (_, event) in again {
            for change in event.changes() {
                if let Event::Redeemed(r) = change {
                    dropped.push((r.coupon_id, r.order_id.clone()));
                }
            }
        }
        // A record's changes kept together land in this one transaction, as the shipper's do.
        let fresh: Vec<&Event> = fresh.flat_map(|(_, e)| e.changes()).collect();
        let entry = self.shipped.entry(dir.to_owned()).or_insert(last);
        *entry = (*entry).max(last);
        for event in fresh {
            match event {
                Event::Redeemed(r) => {
                    let old = self.rows.get(&r.id).cloned();
                    let inserted = old.as_ref().is_none_or(|o| o.rev < r.rev);
                    if inserted {
                        if let Some(old) = old.as_ref().filter(|o| o.live()) {
                            self.count_row(old, -1, None);
                        }
                        let seq = self.next_seq();
                        let row = Row {
                            id: r.id,
                            rev: r.rev,
                            coupon: r.coupon_id,
                            user: r.user_id.clone(),
                            order: r.order_id.clone(),
                            value: r.order_value,
                            discount: r.discount,
                            hold_until: r.hold_until,
                            released_at: None,
                            campaign: r.campaign,
                            instance: instance.to_owned(),
                            seq,
                            set: r.group.clone(),
                        };
                        self.count_row(&row, 1, r.funded_by.as_ref());
                        self.rows.insert(r.id, row);
                    } else {
                        dropped.push((r.coupon_id, r.order_id.clone()));
                        self.dropped.insert((r.coupon_id, r.order_id.clone()));
                        if let Some(f) = &r.funded_by {
                            for (scope, _, units) in self.scopes(r.coupon_id, r.campaign, r.discount, f.spent) {
                                if units > 0 {
                                    self.refund(scope, &f.instance, f.epoch, units);
                                }
                            }
                        }
                        match old {
                            Some(old) if old.user != r.user_id => self.conflicts += 1,
                            Some(old) if old.hold_until.is_some() && old.live() && r.hold_until.is_none() => {
                                let seq = self.next_seq();
                                let row = self.rows.get_mut(&r.id).expect("row");
                                row.hold_until = None;
                                row.rev += 1;
                                row.seq = seq;
                            }
                            _ => {}
                        }
                    }
                }
                Event::Confirmed(c) => {
                    let seq = self.next_seq();
                    if let Some(row) = self.rows.get_mut(&c.id).filter(|row| row.rev < c.rev) {
                        row.hold_until = None;
                        row.rev = c.rev;
                        row.seq = seq;
                    }
                }
                Event::Released(r) => {
                    let seq = self.next_seq();
                    if let Some(row) = self.rows.get_mut(&r.id).filter(|row| row.rev < r.rev) {
                        let was_live = row.live();
                        row.released_at = Some(r.at);
                        row.rev = r.rev;
                        row.seq = seq;
                        let row = row.clone();
                        if was_live {
                            self.count_row(&row, -1, None);
                        }
                    }
                }
                Event::Validated(_) | Event::Together { .. } => {}
            }
        }
        dropped
    }

    /// The rows changed after `after` in the feed's order, and the last sequence.
    pub(super) fn feed(&self, after: u64) -> (Vec<StoredUse>, u64) {
        let mut rows: Vec<&Row> = self.rows.values().filter(|r| r.seq > after).collect();
        rows.sort_by_key(|r| r.seq);
        let last = rows.last().map_or(after, |r| r.seq);
        (rows.into_iter().map(stored_use).collect(), last)
    }

    /// Whether `instance`'s claim of `id` at `at` committed having spent units.
    pub(super) fn claim_spent(&self, instance: &str, epoch: i64, id: Uuid, at: DateTime<Utc>) -> bool {
        self.claim_spends.contains(&(instance.to_owned(), epoch, id, at))
    }

    /// The row of `(coupon, order)`, if any.
    pub(super) fn stored(&self, coupon: CouponId, order: &str) -> Option<StoredUse> {
        self.rows.values().find(|r| r.coupon == coupon && r.order == order).map(stored_use)
    }

    /// Every row, as a start-up load reads them.
    pub(super) fn all_uses(&self) -> Vec<StoredUse> {
        self.rows.values().map(stored_use).collect()
    }

    /// The quotas and the leases holding units, to read a failure.
    pub(super) fn books(&self) -> String {
        let quotas: Vec<String> =
            self.quotas.iter().map(|(s, q)| format!("{s:?}: used {} held {}", q.used, q.held)).collect();
        let leases: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, l)| l.held > 0)
            .map(|((s, who, e), l)| format!("{s:?} {who}#{e}: {}", l.held))
            .collect();
        let rows: Vec<String> = self
            .rows
            .values()
            .map(|r| {
                let state = if !r.live() {
                    "released"
                } else if r.hold_until.is_some() {
                    "held"
                } else {
                    "live"
                };
                format!("{}/{}/{}@{} rev{} {state}", r.coupon, r.order, r.user, r.instance, r.rev)
            })
            .collect();
        format!("quotas [{}]; leases holding [{}]; rows [{}]", quotas.join(", "), leases.join(", "), rows.join(", "))
    }

    /// What the quotas must be, from the rows and the leases: `used` = the live rows'
    /// contribution, `held` = Σ the leases', `used + held ≤ limit`. A broken one, said.
    pub(super) fn quota_books_balance(&self) -> Result<(), String> {
        for (scope, q) in &self.quotas {
            let used: i64 = self
                .rows
                .values()
                .filter(|r| r.live())
                .map(|r| match scope {
                    Scope::CouponUses(c) => i64::from(r.coupon == *c),
                    Scope::CampaignUses(c) => i64::from(r.campaign == Some(*c)),
                    Scope::CampaignCents(c) if r.campaign == Some(*c) => r.discount.get() as i64,
                    Scope::CampaignCents(_) => 0,
                })
                .sum();
            let held: u64 = self.leases.iter().filter(|((s, _, _), _)| s == scope).map(|(_, l)| l.held).sum();
            if used != q.used || held != q.held {
                return Err(format!(
                    "{scope:?}: used {} (rows say {used}), held {} (leases say {held})",
                    q.used, q.held
                ));
            }
        }
        Ok(())
    }
}

fn stored_row(row: &Row) -> StoredRow {
    StoredRow {
        rev: row.rev,
        user_id: row.user.clone(),
        order_value: row.value,
        discount: row.discount,
        hold_until: row.hold_until,
        released: !row.live(),
        cart: crate::engine::ledger::CartMark::default(),
    }
}

fn stored_use(row: &Row) -> StoredUse {
    StoredUse {
        id: row.id,
        rev: row.rev,
        coupon_id: row.coupon,
        code: None,
        user_id: row.user.clone(),
        order_id: row.order.clone(),
        order_value: row.value,
        discount: row.discount,
        hold_until: row.hold_until,
        released_at: row.released_at,
        made_by: Some(row.instance.clone()),
        cart: crate::engine::ledger::CartMark::default(),
        group: row.set.clone(),
    }
}
