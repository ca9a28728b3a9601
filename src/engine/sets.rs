//! A set of codes on one order (API.md §10): redeemed or held all or nothing through the one
//! limit chain, in ascending coupon-id order behind one undo, then recorded whole: deciding
//! alone as one journal record, among instances by one claim in PostgreSQL (`claim_set`);
//! replayed whole, confirmed and released whole. Among instances a set is redeemed, not held,
//! and released whole by the instance that took it (elsewhere, one code at a time): holding or
//! confirming a set there, or releasing another instance's, is `503`.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::cart::CartRequest;
use crate::domain::cart_discount::Taken;
use crate::domain::cart_fields;
use crate::domain::coupon::CouponId;
use crate::domain::event::{Confirmed, Event, GroupCode, GroupMark, ReleaseCause, Released};
use crate::domain::identity::group_id;
use crate::domain::money::Cents;
use crate::domain::rules::Reason;
use crate::domain::stack::{Mode, Select};
use crate::engine::cluster::{self, Cluster};
use crate::engine::groups::Group;
use crate::engine::ledger::{CartMark, IdKey, OrderKey, Slot, SlotState, fingerprint};
use crate::engine::limits::{self, Use};
use crate::engine::ports::{ClaimOutcome, ClaimRequest, SetClaim};
use crate::engine::release::Archived;
use crate::engine::take::Reserved;
use crate::engine::{
    Engine, EngineError, Fate, HoldFate, Refused, StackRequest, StackedValidation, UseKind, UseOutcome, UseRequest,
    alone, millis, offer,
};

/// How long a request waits between looks at a set another request is taking.
const SET_POLL: Duration = Duration::from_millis(2);

/// A redeem or hold naming several codes, well-formed.
#[derive(Debug, Clone, Copy)]
pub struct SetRequest<'a> {
    /// Normalised and distinct, in request order.
    pub codes: &'a [Cow<'a, str>],
    pub user_id: &'a str,
    pub order_id: &'a str,
    pub order_value: Cents,
    /// API.md §9's fields, when sent.
    pub cart: Option<&'a CartRequest>,
    pub mode: Mode,
    pub select: Select,
    /// `maxTotalDiscount`, in minor units of the request's currency.
    pub max_total: Option<u64>,
    /// As [`UseRequest::anonymous_from`].
    pub anonymous_from: Option<IpAddr>,
}

impl<'a> SetRequest<'a> {
    /// The stack it asks for. The order is not judged by the rules: claiming it is the first
    /// link of each use's chain.
    fn stack(&self) -> StackRequest<'a> {
        StackRequest {
            codes: self.codes,
            user_id: self.user_id,
            order_value: self.order_value,
            order_id: None,
            cart: self.cart,
            mode: self.mode,
            select: self.select,
            max_total: self.max_total,
        }
    }

    /// One code's use of it.
    fn use_of(&self, code: &'a str) -> UseRequest<'a> {
        UseRequest {
            code,
            user_id: self.user_id,
            order_id: self.order_id,
            order_value: self.order_value,
            cart: self.cart,
            anonymous_from: self.anonymous_from,
        }
    }
}

/// One use of a set, as the client is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetUse {
    pub code: String,
    pub id: Uuid,
    /// Off the merchandise.
    pub discount: Cents,
    pub shipping_discount: Cents,
    /// What it took from each line and unit (a request with items).
    pub taken: Option<Arc<Taken>>,
}

/// A set taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetReceipt {
    /// `coupon_usage.group_id`; a hold's `holdGroupId`.
    pub group: Uuid,
    /// Every code named, in request order: taken (no reason), or why not.
    pub codes: Vec<GroupCode>,
    /// The uses taken, in request order.
    pub uses: Vec<SetUse>,
    /// For a hold.
    pub expires_at: Option<DateTime<Utc>>,
    /// What became of the order's held set: confirmed by this redeem, or expired first.
    pub hold: Option<HoldFate>,
}

/// The answer to a redeem or hold of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetOutcome {
    /// Taken now (201).
    Taken(SetReceipt),
    /// The same set again (200).
    Replayed(SetReceipt),
    /// A redeem turned the order's held set into redemptions (201).
    Confirmed(SetReceipt),
    /// `all`: a code was rejected (422; also when a limit ran out while taking); `partial`:
    /// every code was. Every code with what became of it; nothing taken.
    Rejected(Vec<GroupCode>),
    /// 409, 429 or 503, for the set as a whole.
    Refused(Refused),
    /// The units this code's use needs cannot be had now (503 `QUOTA_UNAVAILABLE` naming it):
    /// held by other instances, in doubt, or PostgreSQL unreachable. Nothing taken.
    Unavailable(String),
}

impl SetOutcome {
    /// The metric label.
    fn label(&self) -> &'static str {
        match self {
            SetOutcome::Taken(_) => "redeemed",
            SetOutcome::Replayed(_) => "replayed",
            SetOutcome::Confirmed(_) => "confirmed",
            // The first code refused for a reason of its own (a `Rejected` set has one).
            SetOutcome::Rejected(codes) => {
                let refused = codes.iter().find_map(|c| c.reason.filter(|r| *r != Reason::NoEffect));
                refused.unwrap_or(Reason::NoEffect).as_str()
            }
            SetOutcome::Refused(refused) => refused.as_str(),
            SetOutcome::Unavailable(_) => Refused::QuotaUnavailable.as_str(),
        }
    }
}

/// A release naming several codes of an order, or all of them.
#[derive(Debug, Clone, Copy)]
pub struct SetReleaseRequest<'a> {
    pub order_id: &'a str,
    /// Normalised; `None`: every code the order's set took (`allCodes`).
    pub codes: Option<&'a [Cow<'a, str>]>,
    /// When given, it must be the redeemer's.
    pub user_id: Option<&'a str>,
}

/// The answer to a release of several codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetReleaseOutcome {
    /// Every code listed is released now or was before (200).
    Released { codes: Vec<String> },
    /// These codes were never taken by the order (404); nothing changed.
    NotFound { codes: Vec<String> },
}

/// What a fresh take of a set came to.
enum Fresh {
    Answer(SetOutcome),
    /// Something changed meanwhile: look again.
    Again,
    /// Another instance has the user's use of this coupon on the order (in PostgreSQL).
    Exists(CouponId),
}

/// What a set's claim among instances came to.
enum Claimed {
    Answer(SetOutcome),
    /// As [`Fresh::Exists`].
    Exists(CouponId),
    /// The use of the code at this position was refused by a limit: `all` answers 422,
    /// `partial` stacks again without it.
    Refused(usize, Reason),
}

/// What a look at the order's set found.
enum Look {
    Answer(SetOutcome),
    /// Something changed meanwhile: look again.
    Again,
    /// Its holds expired: take the set afresh.
    Expired,
}

impl Engine {
    /// Redeems a set of codes for one order: all or nothing (API.md §10).
    pub async fn redeem_set(&self, req: &SetRequest<'_>) -> Result<SetOutcome, EngineError> {
        let outcome = self.take_set(req, UseKind::Redeem).await?;
        self.metrics.stack_size.record(req.codes.len() as f64);
        self.metrics.redemptions.inc(outcome.label());
        Ok(outcome)
    }

    /// Holds a set of codes for one order until `ttl` passes: all or nothing.
    pub async fn hold_set(&self, req: &SetRequest<'_>, ttl: Duration) -> Result<SetOutcome, EngineError> {
        let outcome = self.take_set(req, UseKind::Hold { ttl }).await?;
        self.metrics.stack_size.record(req.codes.len() as f64);
        self.metrics.holds.inc(match &outcome {
            SetOutcome::Taken(_) => "held",
            other => other.label(),
        });
        Ok(outcome)
    }

    async fn take_set(&self, req: &SetRequest<'_>, kind: UseKind) -> Result<SetOutcome, EngineError> {
        let _decisions = self.decisions.read().await;
        // Among instances a set is redeemed (claimed in PostgreSQL as a whole), not held: a
        // held set's confirmation and release would have to go through PostgreSQL whole too.
        let sharing_hold = self.mode().shares() && matches!(kind, UseKind::Hold { .. });
        if self.mode().lags() || sharing_hold {
            return Ok(SetOutcome::Refused(Refused::QuotaUnavailable));
        }
        let group = group_id(req.order_id, req.codes);
        let order = self.ledger.id_key(req.order_id);
        let user = self.ledger.id_key(req.user_id);
        let until = Instant::now() + self.settings.settle_timeout;
        let mut hold = None;
        let mut looked_up = false;
        loop {
            match self.groups.begin(order, group, user) {
                Ok(()) => {}
                Err(held) if held.taking => {
                    if Instant::now() >= until {
                        return Err(EngineError::Busy);
                    }
                    tokio::time::sleep(SET_POLL).await;
                    continue;
                }
                Err(held) if held.user != user => return Ok(SetOutcome::Refused(Refused::OrderTaken)),
                Err(held) if held.id != group => return Ok(SetOutcome::Refused(Refused::IdempotencyMismatch)),
                Err(held) => match self.look_at_set(&held, order, req, kind, until).await? {
                    Look::Answer(outcome) => return Ok(outcome),
                    Look::Again => continue,
                    Look::Expired => {
                        hold = Some(HoldFate::Expired);
                        continue;
                    }
                },
            }
            match self.take_set_fresh(group, order, user, req, kind, until).await {
                Ok(Fresh::Answer(SetOutcome::Taken(receipt))) => {
                    return Ok(SetOutcome::Taken(SetReceipt { hold, ..receipt }));
                }
                Ok(Fresh::Answer(outcome)) => {
                    self.groups.remove(order, group);
                    return Ok(outcome);
                }
                // A use of the order was settling: look again.
                Ok(Fresh::Again) => self.groups.remove(order, group),
                // Another instance has the user's use of this order: read it (and its set, if
                // it is one) from PostgreSQL, then look again; once only.
                Ok(Fresh::Exists(coupon)) => {
                    self.groups.remove(order, group);
                    let stored = match self.cluster() {
                        Some(cluster) if !looked_up => self.stored_everywhere(cluster, coupon, req.order_id).await?,
                        _ => None,
                    };
                    let Some(stored) = stored else { return Ok(SetOutcome::Refused(Refused::IdempotencyMismatch)) };
                    looked_up = true;
                    self.merge_uses([stored]);
                }
                Err(err) => {
                    self.groups.remove(order, group);
                    return Err(err);
                }
            }
        }
    }

    /// Takes the set for an order that holds none: the stack, then each applied code's
    /// chain in ascending coupon-id order (a refusal gives back all; `partial` stacks again
    /// without the refused code), then one journal record. `None`: look again.
    async fn take_set_fresh(
        &self,
        group: Uuid,
        order: IdKey,
        user: IdKey,
        req: &SetRequest<'_>,
        kind: UseKind,
        until: Instant,
    ) -> Result<Fresh, EngineError> {
        let catalog = self.catalog.load_full();
        let now = self.clock.now();
        // The order's uses of these codes taken one at a time stand in its way; a released
        // hold's revision goes on.
        let mut prior_revs: Vec<(CouponId, u32)> = Vec::new();
        for code in req.codes {
            let Some(found) = catalog.find(code) else { continue };
            let key = (found.coupon().id, order);
            self.settle_doubt(key).await?;
            let prior = match self.ledger.slot(key) {
                Some(slot) if slot.is_settling() => {
                    self.wait_settled(key, until).await?;
                    return Ok(Fresh::Again);
                }
                Some(slot) => match slot.state {
                    SlotState::Held { until: due } if due <= now.timestamp_millis() => {
                        self.expire(key, due).await?;
                        return Ok(Fresh::Again);
                    }
                    SlotState::Released { ended, .. } if !ended.order_spent() => slot.rev,
                    SlotState::Released { .. } => return Ok(Fresh::Answer(SetOutcome::Refused(Refused::OrderTaken))),
                    _ if slot.user != user => return Ok(Fresh::Answer(SetOutcome::Refused(Refused::OrderTaken))),
                    _ => return Ok(Fresh::Answer(SetOutcome::Refused(Refused::IdempotencyMismatch))),
                },
                None => match self.archived(key, req.order_id).await? {
                    Archived::Unknown => 0,
                    Archived::FreeAfter(rev) => rev,
                    Archived::Spent => return Ok(Fresh::Answer(SetOutcome::Refused(Refused::OrderTaken))),
                },
            };
            prior_revs.push((key.0, prior));
        }
        let stack = req.stack();
        let uses: Vec<UseRequest<'_>> = req.codes.iter().map(|code| req.use_of(code)).collect();
        let mut refused: Vec<(usize, Reason)> = Vec::new();
        loop {
            let judged = self.judge_stack(&catalog, &stack, &refused, now);
            if !judged.valid {
                return Ok(Fresh::Answer(SetOutcome::Rejected(group_codes(&judged))));
            }
            let mut order_of_take: Vec<(CouponId, usize)> = judged
                .applied
                .iter()
                .enumerate()
                .map(|(i, a)| (judged.codes[a.position].coupon_id.expect("an applied code was found"), i))
                .collect();
            order_of_take.sort_unstable();
            let mut reserved: Vec<(usize, Reserved<'_>)> = Vec::with_capacity(order_of_take.len());
            let mut stopped = None;
            for (coupon_id, i) in order_of_take {
                let applied = &judged.applied[i];
                let found = catalog.find(&req.codes[applied.position]).expect("judged on this catalog");
                let offer = offer(&catalog, found, req.user_id);
                let prior = prior_revs.iter().find(|(c, _)| *c == coupon_id).map_or(0, |(_, rev)| *rev);
                let discount = Cents::new(applied.taken.merchandise()).unwrap_or(req.order_value);
                // A request without items was stacked on its value as one unit: only shipping's
                // part of that is the use's to keep.
                let taken = match req.cart {
                    None => None,
                    Some(cart) if cart.has_items => Some(applied.taken.clone()),
                    Some(_) => Some(Taken { lines: Vec::new(), shipping: applied.taken.shipping }),
                };
                let key = (coupon_id, order);
                match self.reserve(found, &offer, key, user, &uses[applied.position], kind, now, prior, discount, taken)
                {
                    Ok(taken) => reserved.push((applied.position, taken)),
                    Err(Some(UseOutcome::Refused(Refused::Rule(reason)))) => {
                        stopped = Some(Err((applied.position, reason)));
                        break;
                    }
                    Err(Some(UseOutcome::Refused(Refused::QuotaUnavailable))) => {
                        let code = judged.codes[applied.position].code.clone();
                        return Ok(Fresh::Answer(SetOutcome::Unavailable(code)));
                    }
                    Err(Some(UseOutcome::Refused(refusal))) => {
                        stopped = Some(Ok(refusal));
                        break;
                    }
                    // Another request took the order's use of this code meanwhile.
                    Err(_) => {
                        stopped = Some(Ok(Refused::IdempotencyMismatch));
                        break;
                    }
                }
            }
            let sharing = reserved.first().and_then(|(_, r)| r.sharing);
            let code = match (stopped, sharing) {
                (None, None) => return self.record_set(group, order, req, reserved, &judged).await.map(Fresh::Answer),
                (None, Some(cluster)) => match self.claim_set(cluster, group, order, user, reserved, &judged).await? {
                    Claimed::Answer(outcome) => return Ok(Fresh::Answer(outcome)),
                    Claimed::Exists(coupon) => return Ok(Fresh::Exists(coupon)),
                    Claimed::Refused(position, reason) => (position, reason),
                },
                (Some(Ok(refusal)), _) => return Ok(Fresh::Answer(SetOutcome::Refused(refusal))),
                (Some(Err(code)), _) => code,
            };
            // What was taken is given back (dropped with `reserved`) before the stack is judged
            // again.
            refused.push(code);
        }
    }

    /// Among instances: spends the set's lease units and claims every use in PostgreSQL in
    /// one statement (`claim_set`), all or none; commits them once it answers.
    async fn claim_set(
        &self,
        cluster: &Cluster,
        group: Uuid,
        order: IdKey,
        user: IdKey,
        reserved: Vec<(usize, Reserved<'_>)>,
        judged: &StackedValidation,
    ) -> Result<Claimed, EngineError> {
        let mut news = Vec::with_capacity(reserved.len());
        let mut taking = Vec::with_capacity(reserved.len());
        for (position, r) in reserved {
            news.push((position, r.new, r.rev));
            taking.push((r.reservation, r.totals));
        }
        let mut spent = Vec::with_capacity(taking.len());
        let mut reservations = Vec::with_capacity(taking.len());
        for (i, (mut reservation, totals)) in taking.into_iter().enumerate() {
            match self.spend_leases(cluster, &totals).await {
                Ok(units) => spent.push(units),
                Err(cluster::Short::Limit(reason)) => return Ok(Claimed::Refused(news[i].0, reason)),
                Err(cluster::Short::Unavailable) => {
                    let code = judged.codes[news[i].0].code.clone();
                    return Ok(Claimed::Answer(SetOutcome::Unavailable(code)));
                }
            }
            reservation.leased(cluster, totals);
            reservations.push(reservation);
        }
        let codes = group_codes(judged);
        let mark = GroupMark { id: group, codes: codes.clone() };
        let max_holds = self.settings.max_active_holds_per_user;
        let claims: Vec<ClaimRequest<'_>> =
            news.iter().zip(&spent).map(|((_, new, rev), spent)| new.claim(*rev, *spent, max_holds)).collect();
        self.metrics.quota.waits.inc("claim");
        // As for one use: a release of this instance's own, still in its journal, may be what
        // makes room, and PostgreSQL counts only what it has.
        let unshipped = self.journal.backlog() > 0;
        let mut outcome = cluster.port.claim_set(&claims, &mark).await;
        let counted = |o: &Result<SetClaim, _>| {
            matches!(o, Ok(SetClaim::Stopped { outcome: ClaimOutcome::Refused(_) | ClaimOutcome::TooManyHolds, .. }))
        };
        if counted(&outcome) && unshipped {
            self.journal.wait_shipped(self.settings.settle_timeout).await;
            outcome = cluster.port.claim_set(&claims, &mark).await;
        }
        let refused = |r| Ok(Claimed::Answer(SetOutcome::Refused(r)));
        match outcome {
            Ok(SetClaim::Taken(revs)) => {
                drop(claims);
                let mut uses = Vec::with_capacity(news.len());
                let mut members = Vec::with_capacity(news.len());
                for (((position, new, _), rev), reservation) in news.iter().zip(revs).zip(reservations) {
                    reservation.commit();
                    members.push(new.coupon_id);
                    let UseOutcome::Taken(receipt) = self.settle_taken(new, rev) else { unreachable!("a use taken") };
                    uses.push((*position, receipt));
                }
                members.sort_unstable();
                self.groups.settle(order, members, codes.clone());
                uses.sort_by_key(|(position, _)| *position);
                let expires_at = uses.first().and_then(|(_, r)| r.expires_at);
                let uses = uses
                    .into_iter()
                    .map(|(position, r)| SetUse {
                        code: judged.codes[position].code.clone(),
                        id: r.id,
                        discount: r.discount,
                        shipping_discount: r.shipping_discount,
                        taken: r.taken,
                    })
                    .collect();
                Ok(Claimed::Answer(SetOutcome::Taken(SetReceipt { group, codes, uses, expires_at, hold: None })))
            }
            Ok(SetClaim::Stopped { index, outcome }) => {
                drop(reservations);
                match outcome {
                    ClaimOutcome::Refused(reason) => Ok(Claimed::Refused(news[index].0, reason)),
                    ClaimOutcome::TooManyHolds => refused(Refused::TooManyHolds),
                    ClaimOutcome::Fenced | ClaimOutcome::Taken { .. } => refused(Refused::QuotaUnavailable),
                    // Another instance's use of the order. The same user's: most likely this
                    // very set, taken there a moment ago, which the caller reads back.
                    ClaimOutcome::Exists(row) if self.ledger.id_key(&row.user_id) == user => {
                        Ok(Claimed::Exists(news[index].1.coupon_id))
                    }
                    ClaimOutcome::Exists(_) => refused(Refused::OrderTaken),
                }
            }
            Err(err) => {
                // It may have committed, all of it: each use's lease units wait with its doubt.
                tracing::debug!(error = %err, "a set's claim could not be made, or its answer was lost");
                for ((_, new, _), (claim, mut reservation)) in news.iter().zip(claims.iter().zip(reservations)) {
                    let totals = reservation.keep_leases();
                    self.doubtful.add(new.key, claim, &totals);
                }
                refused(Refused::QuotaUnavailable)
            }
        }
    }

    /// Journals the set's uses as one record and commits them; answers the set.
    async fn record_set(
        &self,
        group: Uuid,
        order: IdKey,
        req: &SetRequest<'_>,
        mut reserved: Vec<(usize, Reserved<'_>)>,
        judged: &StackedValidation,
    ) -> Result<SetOutcome, EngineError> {
        let codes = group_codes(judged);
        let mark = GroupMark { id: group, codes: codes.clone() };
        let events =
            reserved.iter().map(|(_, r)| Event::Redeemed(r.new.record(r.rev, None, Some(mark.clone())))).collect();
        self.journal.append(&Event::Together { events }.encode()).await?;
        reserved.sort_by_key(|(position, _)| *position);
        let mut members = Vec::with_capacity(reserved.len());
        let mut uses = Vec::with_capacity(reserved.len());
        let mut expires_at = None;
        for (position, Reserved { reservation, new, rev, .. }) in reserved {
            reservation.commit();
            members.push(new.coupon_id);
            let UseOutcome::Taken(receipt) = self.settle_taken(&new, rev) else { unreachable!("a use taken") };
            expires_at = receipt.expires_at;
            uses.push(SetUse {
                code: req.codes[position].to_string(),
                id: receipt.id,
                discount: receipt.discount,
                shipping_discount: receipt.shipping_discount,
                taken: receipt.taken,
            });
        }
        members.sort_unstable();
        self.groups.settle(order, members, codes.clone());
        Ok(SetOutcome::Taken(SetReceipt { group, codes, uses, expires_at, hold: None }))
    }

    /// The order holds this set already: a replay, the confirmation of its holds, or, once
    /// they expired, nothing.
    async fn look_at_set(
        &self,
        held: &Group,
        order: IdKey,
        req: &SetRequest<'_>,
        kind: UseKind,
        until: Instant,
    ) -> Result<Look, EngineError> {
        let now = self.clock.now().timestamp_millis();
        let fingerprint = req.cart.and_then(|cart| fingerprint(&cart.items_hash()));
        let mut slots: Vec<(OrderKey, Slot, CartMark)> = Vec::with_capacity(held.members.len());
        for &coupon in &held.members {
            let key = (coupon, order);
            let Some((slot, cart)) = self.ledger.slot_with_cart(key) else {
                return Ok(Look::Answer(SetOutcome::Refused(Refused::IdempotencyMismatch)));
            };
            if slot.is_settling() {
                self.wait_settled(key, until).await?;
                return Ok(Look::Again);
            }
            slots.push((key, slot, cart));
        }
        let expired: Vec<(OrderKey, i64)> = slots
            .iter()
            .filter_map(|(key, slot, _)| match slot.state {
                SlotState::Held { until } if until <= now => Some((*key, until)),
                _ => None,
            })
            .collect();
        if !expired.is_empty() {
            for (key, due) in expired {
                self.expire(key, due).await?;
            }
            return Ok(if self.groups.of(order).is_some() { Look::Again } else { Look::Expired });
        }
        let same =
            slots.iter().all(|(_, slot, cart)| slot.order_value == req.order_value && cart.fingerprint == fingerprint);
        let live = slots.iter().all(|(_, slot, _)| slot.state == SlotState::Live);
        let on_hold = slots.iter().all(|(_, slot, _)| matches!(slot.state, SlotState::Held { .. }));
        // What the set took of a cart's lines may have to come from PostgreSQL: while it cannot
        // say, `QUOTA_UNAVAILABLE` (the client asks again), as for one code's replay.
        let unavailable = SetOutcome::Refused(Refused::QuotaUnavailable);
        let outcome = match kind {
            _ if !same => SetOutcome::Refused(Refused::IdempotencyMismatch),
            UseKind::Redeem if live => {
                self.set_receipt(held, &slots, req, None).await.map_or(unavailable, SetOutcome::Replayed)
            }
            UseKind::Hold { .. } if on_hold => {
                let expires_at = slots.first().and_then(|(_, slot, _)| slot.state.deadline()).and_then(millis);
                self.set_receipt(held, &slots, req, expires_at).await.map_or(unavailable, SetOutcome::Replayed)
            }
            // Among instances a held set's uses change through PostgreSQL, one at a time: its
            // confirmation waits for an instance deciding alone.
            UseKind::Redeem if on_hold && self.mode() != alone::Mode::Alone => {
                SetOutcome::Refused(Refused::QuotaUnavailable)
            }
            UseKind::Redeem if on_hold => {
                if !self.confirm_set(&slots).await? {
                    return Ok(Look::Again);
                }
                let slots: Vec<_> = slots
                    .into_iter()
                    .map(|(key, slot, cart)| (key, Slot { state: SlotState::Live, ..slot }, cart))
                    .collect();
                match self.set_receipt(held, &slots, req, None).await {
                    Some(receipt) => SetOutcome::Confirmed(SetReceipt { hold: Some(HoldFate::Confirmed), ..receipt }),
                    None => unavailable,
                }
            }
            // A hold of a redeemed set, or a set given back in part.
            _ => SetOutcome::Refused(Refused::OrderTaken),
        };
        Ok(Look::Answer(outcome))
    }

    /// The receipt of a set the order holds, from its uses (what each took of a cart's
    /// lines from memory, else from PostgreSQL); `None` while PostgreSQL cannot say.
    async fn set_receipt(
        &self,
        held: &Group,
        slots: &[(OrderKey, Slot, CartMark)],
        req: &SetRequest<'_>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Option<SetReceipt> {
        let catalog = self.catalog.load();
        let mut uses = Vec::with_capacity(slots.len());
        for code in held.codes.iter().filter(|c| c.reason.is_none()) {
            let coupon = catalog.find(&code.code).map(|found| found.coupon().id);
            let Some((_, slot, cart)) = slots.iter().find(|(key, _, _)| Some(key.0) == coupon) else { continue };
            let taken = match req.cart.filter(|c| c.has_items) {
                None => None,
                Some(request) => Some(self.allocation_of(slot.id, cart.shipping, request).await?),
            };
            let discount = slot.discount.saturating_sub(cart.shipping);
            uses.push(SetUse {
                code: code.code.clone(),
                id: slot.id,
                discount,
                shipping_discount: cart.shipping,
                taken,
            });
        }
        Some(SetReceipt { group: held.id, codes: held.codes.clone(), uses, expires_at, hold: None })
    }

    /// Turns every hold of a set into a redemption, as one journal record; false if one of
    /// them changed first (nothing is confirmed then: the caller looks again).
    async fn confirm_set(&self, slots: &[(OrderKey, Slot, CartMark)]) -> Result<bool, EngineError> {
        let now = self.clock.now();
        let Some(claimed) = self.claim_all(slots.iter().map(|(key, slot, _)| (*key, *slot)), now.timestamp_millis())
        else {
            return Ok(false);
        };
        let events = claimed
            .iter()
            .map(|(_, slot)| Event::Confirmed(Confirmed { id: slot.id, rev: slot.rev + 1, at: now }))
            .collect();
        if let Err(err) = self.may_change_in_journal() {
            self.unclaim(&claimed);
            return Err(err);
        }
        if let Err(err) = self.journal.append(&Event::Together { events }.encode()).await {
            self.unclaim(&claimed);
            return Err(err.into());
        }
        for (key, held) in &claimed {
            self.ledger
                .update(*key, |current| (current.map(|s| Slot { rev: held.rev + 1, state: SlotState::Live, ..s }), ()));
            limits::give_back(&limits::hold_only(), &self.ledger, &Use::of_slot(*key, key.0, held));
            self.live_holds.fetch_sub(1, Ordering::Relaxed);
            self.metrics.holds.inc("confirmed");
        }
        Ok(true)
    }

    /// Claims every slot (`Changing`) if each is still as given (a hold before its deadline
    /// at `now`); none if one is not.
    pub(super) fn claim_all(
        &self,
        slots: impl Iterator<Item = (OrderKey, Slot)>,
        now: i64,
    ) -> Option<Vec<(OrderKey, Slot)>> {
        let mut claimed: Vec<(OrderKey, Slot)> = Vec::new();
        for (key, seen) in slots {
            let ok = self.ledger.update(key, |current| match current {
                Some(slot) if slot == seen && seen.state.deadline().is_none_or(|until| now < until) => {
                    (Some(Slot { state: SlotState::Changing, ..slot }), true)
                }
                other => (other, false),
            });
            if !ok {
                self.unclaim(&claimed);
                return None;
            }
            claimed.push((key, seen));
        }
        Some(claimed)
    }

    /// Puts claimed slots back as they were.
    pub(super) fn unclaim(&self, claimed: &[(OrderKey, Slot)]) {
        for (key, slot) in claimed {
            self.ledger.update(*key, |current| (current.map(|s| Slot { state: slot.state, ..s }), ()));
        }
    }

    /// Releases several codes of an order, or every code of its set, as one journal record:
    /// all of them, or (a code the order never took) none.
    pub async fn release_set(&self, req: &SetReleaseRequest<'_>) -> Result<SetReleaseOutcome, EngineError> {
        let _decisions = self.decisions.read().await;
        if self.mode().lags() {
            let lags = "what this instance knows may lag behind the one deciding alone";
            return Err(crate::engine::ports::PortError(lags.into()).into());
        }
        let order = self.ledger.id_key(req.order_id);
        let user = req.user_id.map(|u| self.ledger.id_key(u));
        let until = Instant::now() + self.settings.settle_timeout;
        let mut asked = false;
        let outcome = loop {
            let group = self.groups.of(order);
            let codes: Vec<String> = match req.codes {
                Some(codes) => codes.iter().map(|c| c.to_string()).collect(),
                None => match &group {
                    Some(group) => group.codes.iter().filter(|c| c.reason.is_none()).map(|c| c.code.clone()).collect(),
                    None => break SetReleaseOutcome::NotFound { codes: Vec::new() },
                },
            };
            match self.release_codes(order, user, &codes, req.order_id, until, &mut asked).await? {
                Some(outcome) => break outcome,
                None => continue,
            }
        };
        self.metrics.releases.inc(match &outcome {
            SetReleaseOutcome::Released { .. } => "released",
            SetReleaseOutcome::NotFound { .. } => "not_found",
        });
        Ok(outcome)
    }

    /// One attempt at releasing `codes` of `order`; `None`: something changed, look again.
    /// `asked`: PostgreSQL was asked about a use this ledger did not know (once a release).
    async fn release_codes(
        &self,
        order: IdKey,
        user: Option<IdKey>,
        codes: &[String],
        order_id: &str,
        until: Instant,
        asked: &mut bool,
    ) -> Result<Option<SetReleaseOutcome>, EngineError> {
        let catalog = self.catalog.load();
        let now = self.clock.now();
        let mut missing = Vec::new();
        let mut live: Vec<(OrderKey, Slot)> = Vec::new();
        for code in codes {
            let Some(found) = catalog.find(code) else {
                missing.push(code.clone());
                continue;
            };
            let key = (found.coupon().id, order);
            match self.ledger.slot(key) {
                Some(slot) if user.is_some_and(|u| u != slot.user) => missing.push(code.clone()),
                Some(slot) if slot.is_settling() => {
                    self.wait_settled(key, until).await?;
                    return Ok(None);
                }
                Some(Slot { state: SlotState::Held { until: due }, .. }) if due <= now.timestamp_millis() => {
                    self.expire(key, due).await?;
                }
                Some(Slot { state: SlotState::Released { .. }, .. }) => {}
                // Among instances, a use another instance took (or a hold) changes through
                // PostgreSQL, one at a time: such a set is released by the instance that took
                // it, or code by code.
                Some(slot) if self.changed_in_postgres(&slot) => {
                    let elsewhere = "this set's uses change through PostgreSQL: release it where it was taken, \
                                     or one code at a time";
                    return Err(crate::engine::ports::PortError(elsewhere.into()).into());
                }
                Some(slot) => live.push((key, slot)),
                // Among instances, a use made elsewhere may not have reached this ledger yet:
                // PostgreSQL (once every instance has shipped) says, as for one code's release.
                None if self.mode().shares() && !*asked => {
                    *asked = true;
                    if let Some(cluster) = self.cluster()
                        && let Some(stored) = self.stored_everywhere(cluster, key.0, order_id).await?
                    {
                        self.merge_uses([stored]);
                    }
                    return Ok(None);
                }
                None => match self.archived(key, order_id).await? {
                    Archived::Unknown => missing.push(code.clone()),
                    Archived::FreeAfter(_) | Archived::Spent => {}
                },
            }
        }
        if !missing.is_empty() {
            return Ok(Some(SetReleaseOutcome::NotFound { codes: missing }));
        }
        if !live.is_empty() {
            let Some(claimed) = self.claim_all(live.into_iter(), i64::MIN) else { return Ok(None) };
            if let Err(err) = self.may_change_in_journal() {
                self.unclaim(&claimed);
                return Err(err);
            }
            let events = claimed
                .iter()
                .map(|(key, slot)| {
                    let (id, rev, coupon_id) = (slot.id, slot.rev + 1, key.0);
                    Event::Released(Released { id, rev, coupon_id, at: now, cause: ReleaseCause::Cancelled })
                })
                .collect();
            if let Err(err) = self.journal.append(&Event::Together { events }.encode()).await {
                self.unclaim(&claimed);
                return Err(err.into());
            }
            for (key, slot) in claimed {
                self.given_back(key, slot, slot.rev + 1, ReleaseCause::Cancelled, now);
            }
            self.set_released(order);
        }
        Ok(Some(SetReleaseOutcome::Released { codes: codes.to_vec() }))
    }

    /// What the use `id` took of a cart's lines: from memory, else from PostgreSQL.
    async fn allocation_of(&self, id: Uuid, shipping: Cents, request: &CartRequest) -> Option<Arc<Taken>> {
        if let Some(taken) = self.allocations.get(id) {
            return Some(taken);
        }
        let json = self.ports.archive.allocation(id).await.ok()??;
        let lines = cart_fields::parse_allocation(&json, request.currency).ok()?;
        let taken = Arc::new(Taken { lines, shipping: shipping.get() });
        self.allocations.keep(id, Arc::clone(&taken));
        Some(taken)
    }
}

/// Every code a stack judged, with what became of it: taken (no reason), skipped
/// (`NO_EFFECT`) or rejected.
fn group_codes(judged: &StackedValidation) -> Vec<GroupCode> {
    judged
        .codes
        .iter()
        .map(|c| GroupCode {
            code: c.code.clone(),
            reason: match c.fate {
                Fate::Applied => None,
                Fate::Skipped => Some(Reason::NoEffect),
                Fate::Rejected(reason) => Some(reason),
            },
        })
        .collect()
}
