//! The invariants over a history of answers, checked as the history grows and at its end;
//! one checker for the deterministic simulation (`src/sim`) and the real fault campaign
//! (`loadgen fault-campaign`):
//! (a) at no moment do the uses certainly live (acknowledged, not since given up or due)
//!     exceed a limit or a budget; (b) every acknowledged redemption, release and hold ends in
//!     the final rows as acknowledged, once (ids are one per `(coupon, order)`); (c) after the
//!     faults heal, every limited total sells out to exactly its limit (checked by the driver);
//!     (d) a "limit reached" while capacity was provably free is a false refusal, counted, and
//!     so is a `404` to the release of an acknowledged use (a failure unless two users took
//!     that order of a coupon without claims: an order conflict); (e) a set of codes (API.md
//!     §10) ends whole: every use it took in the final rows, all live or none.

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::coupon::{CampaignId, CouponId};

/// What the checker knows of a coupon.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub coupon: CouponId,
    pub limit: Option<u64>,
    pub per_user: Option<u64>,
    pub campaign: Option<CampaignId>,
    pub campaign_uses: Option<u64>,
    pub campaign_cents: Option<u64>,
    pub discount_cents: u64,
    /// Whether its uses are claimed in PostgreSQL (any limit): then one order is one use
    /// across instances; without (no limit at all), an order taken on two instances before
    /// either learned of the other is the order conflict API.md §6 allows.
    pub claimed: bool,
}

/// A use as it ends in PostgreSQL, once every fault healed and every journal shipped.
#[derive(Debug, Clone)]
pub struct FinalUse {
    pub coupon: CouponId,
    pub order: String,
    pub user: String,
    pub live: bool,
    /// Still a hold (never confirmed): live only if its deadline has not passed.
    pub held: bool,
    /// For a use taken with other codes of its order (API.md §10): its set.
    pub set: Option<SetMark>,
}

/// The set of codes a final use belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetMark {
    /// `coupon_usage.group_id`.
    pub id: uuid::Uuid,
    /// How many uses the set took (its codes without a reason in `group_codes`).
    pub taken: usize,
}

/// What an answer said of a use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Taken (201) or confirmed: live, a hold until its deadline (ms).
    Taken { hold_until: Option<i64> },
    /// A replay (200): the first answer again. It says the use was taken, not that it is
    /// still live: an instance that has not yet seen a release made elsewhere replays it.
    Replayed { hold_until: Option<i64> },
    /// Refused by a limit or rule: whatever it was before, it is not live now (a confirm
    /// refused after the hold's deadline found it expired).
    Refused { limit: bool },
    /// Given back (200 on a release, a first or a repeat).
    Released,
    /// `404` to a release.
    NotFound,
    /// `503`, or the engine failed: it may or may not have happened.
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Certain {
    /// Live for sure until the deadline (ms, minus the clocks' spread) if a hold.
    Live {
        hold_until: Option<i64>,
    },
    NotLive,
    Unknown,
}

#[derive(Debug, Clone)]
struct Order {
    coupon: CouponId,
    user: String,
    certain: Certain,
    /// Might be live (for false refusals): an attempt not known to have failed.
    maybe: bool,
    /// The last acknowledged answer, and whether an attempt of unknown outcome followed it.
    last_acked: Option<Answer>,
    uncertain_after: bool,
    /// Acknowledged by an instance whose disk was then lost (written off) before shipping.
    lost: bool,
    /// Whether a release of it was ever asked for (whatever the answer).
    release_asked: bool,
    /// Whether another user than the first asked about it.
    contested: bool,
    /// The instance that gave the last acknowledgement, and every instance asked about it.
    acked_by: String,
    asked_on: BTreeSet<String>,
}

/// (e): a set of codes is never in part: every use it took is in the final rows, and all of
/// them are live or none (a set is taken, confirmed and released whole).
fn check_sets(rows: &[FinalUse]) -> Result<(), String> {
    let mut sets: BTreeMap<uuid::Uuid, (usize, Vec<&FinalUse>)> = BTreeMap::new();
    for row in rows {
        if let Some(set) = row.set {
            sets.entry(set.id).or_insert((set.taken, Vec::new())).1.push(row);
        }
    }
    for (id, (taken, members)) in sets {
        if members.len() != taken {
            return Err(format!("set {id} ended with {} of its {taken} uses: {members:?}", members.len()));
        }
        if members.iter().any(|m| (m.live, m.held) != (members[0].live, members[0].held)) {
            return Err(format!("set {id} ended live in part: {members:?}"));
        }
    }
    Ok(())
}

/// What a history showed, beyond pass or fail.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub answers: u64,
    pub acknowledged: u64,
    pub limit_refusals: u64,
    pub false_refusals: u64,
    pub false_not_found: u64,
    /// Orders of coupons without claims, asked about on two instances that decided without
    /// seeing each other's use, whose final row is not what the last acknowledgement said
    /// (the order conflicts of README's "Known limits").
    pub order_conflicts: u64,
    /// Sets of codes in the final rows, each checked whole.
    pub sets: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.answers += o.answers;
        self.acknowledged += o.acknowledged;
        self.limit_refusals += o.limit_refusals;
        self.false_refusals += o.false_refusals;
        self.false_not_found += o.false_not_found;
        self.order_conflicts += o.order_conflicts;
        self.sets += o.sets;
    }
}

/// The history so far, folded into what each order certainly or maybe is.
#[derive(Debug)]
pub struct Checker {
    shapes: BTreeMap<CouponId, Shape>,
    orders: BTreeMap<(CouponId, String), Order>,
    /// The orders of limited coupons last known certainly live (some may have reached their
    /// hold's deadline since), and the orders that may be live: the limit checks look only
    /// at these, so that a long history checks in time proportional to its length.
    certain: BTreeSet<(CouponId, String)>,
    maybe: BTreeSet<(CouponId, String)>,
    /// How far apart the instances' clocks may be, in ms: a hold is certainly live only
    /// until its deadline less this.
    spread_ms: i64,
    pub counts: Counts,
    /// Limit checks that failed only with orders that may be order conflicts in them: each
    /// must hold at the end once the orders proved conflicts are left out, or it stands.
    suspects: Vec<Violation>,
    /// Orders one of whose uses the shipper dropped (another row of the order was newer).
    dropped: BTreeSet<(CouponId, String)>,
    /// The first `404` to the release of a use certainly live.
    wrong_not_found: Option<String>,
}

/// A limit exceeded, as seen: what it says, the limit, and the live orders with what each
/// counts in it.
#[derive(Debug, Clone)]
struct Violation {
    what: String,
    limit: u64,
    live: Vec<((CouponId, String), u64)>,
}

impl Checker {
    pub fn new(shapes: &[Shape], spread_ms: i64) -> Checker {
        Checker {
            shapes: shapes.iter().map(|s| (s.coupon, *s)).collect(),
            orders: BTreeMap::new(),
            certain: BTreeSet::new(),
            maybe: BTreeSet::new(),
            spread_ms,
            counts: Counts::default(),
            suspects: Vec::new(),
            dropped: BTreeSet::new(),
            wrong_not_found: None,
        }
    }

    /// Records an answer about `(coupon, order)` by `user`, given by `instance`; `releasing`
    /// if it answers a release (whose `503` may have released it). Answers are recorded in
    /// the order they took effect; [`Checker::check_limits`] then says whether the uses
    /// certainly live at that moment fit every limit.
    pub fn record(
        &mut self,
        instance: &str,
        coupon: CouponId,
        order: &str,
        user: &str,
        answer: Answer,
        releasing: bool,
    ) {
        self.counts.answers += 1;
        if matches!(answer, Answer::Refused { limit: true }) {
            self.counts.limit_refusals += 1;
            if self.provably_free(coupon, user) {
                self.counts.false_refusals += 1;
            }
        }
        let key = (coupon, order.to_owned());
        let entry = self.orders.entry(key.clone()).or_insert_with(|| Order {
            coupon,
            user: user.to_owned(),
            certain: Certain::NotLive,
            maybe: false,
            last_acked: None,
            uncertain_after: false,
            lost: false,
            release_asked: false,
            contested: false,
            acked_by: String::new(),
            asked_on: BTreeSet::new(),
        });
        if releasing {
            entry.release_asked = true;
        }
        let same_user = entry.user == user;
        entry.contested |= !same_user;
        entry.asked_on.insert(instance.to_owned());
        let answer = match answer {
            // A replay repeats the first answer: news only about an order never acknowledged
            // (its first attempt's answer was lost) and never asked to be released (an
            // instance that has not seen a release replays the use as it knew it).
            Answer::Replayed { hold_until } if entry.last_acked.is_none() && !entry.release_asked => {
                Answer::Taken { hold_until }
            }
            Answer::Replayed { .. } => return,
            other => other,
        };
        match answer {
            Answer::Replayed { .. } => unreachable!("turned into Taken above"),
            Answer::Taken { hold_until } => {
                self.counts.acknowledged += 1;
                entry.acked_by = instance.to_owned();
                entry.certain = Certain::Live { hold_until };
                entry.maybe = true;
                entry.last_acked = Some(answer);
                entry.uncertain_after = false;
                entry.lost = false;
            }
            Answer::Released => {
                self.counts.acknowledged += 1;
                entry.acked_by = instance.to_owned();
                entry.certain = Certain::NotLive;
                entry.maybe = false;
                entry.last_acked = Some(answer);
                entry.uncertain_after = false;
                entry.lost = false;
            }
            Answer::Refused { .. } => {
                entry.certain = Certain::NotLive;
                entry.maybe = false;
            }
            Answer::NotFound => {
                if matches!(entry.certain, Certain::Live { .. }) && same_user {
                    // The use exists, and on every instance PostgreSQL or the shipping says
                    // so before a `404`: claimed, its row was in before its answer; journalled
                    // (no limit at all), the others wait for its instance's shipping. Only an
                    // order two users took on two instances (a conflict) may be answered so.
                    self.counts.false_not_found += 1;
                    let conflict = entry.contested && self.shapes.get(&coupon).is_some_and(|s| !s.claimed);
                    if !conflict {
                        let what = format!("coupon {coupon} order {order}: 404 from {instance} for a live use");
                        self.wrong_not_found.get_or_insert(what);
                    }
                }
            }
            Answer::Unavailable => {
                entry.certain = Certain::Unknown;
                entry.maybe = true;
                entry.uncertain_after = true;
            }
        }
        self.index(key);
    }

    /// Puts `key` in the indexes its order's state says it belongs to, and out of the others.
    fn index(&mut self, key: (CouponId, String)) {
        let Some(order) = self.orders.get(&key) else { return };
        let limited = self.shapes.get(&key.0).is_some_and(|s| {
            s.limit.is_some() || s.per_user.is_some() || s.campaign_uses.is_some() || s.campaign_cents.is_some()
        });
        // An order under no limit at all weighs in no limit check nor in any false refusal.
        let (certain, maybe) =
            (limited && matches!(order.certain, Certain::Live { .. }), limited && (order.maybe || order.lost));
        if certain {
            self.certain.insert(key.clone());
        } else {
            self.certain.remove(&key);
        }
        if maybe {
            self.maybe.insert(key);
        } else {
            self.maybe.remove(&key);
        }
    }

    /// The orders whose acknowledgements were journalled by an instance whose disk is lost
    /// before they shipped: the operator's write-off gave them up.
    pub fn lose(&mut self, orders: &[(CouponId, String)]) {
        for key in orders {
            if let Some(order) = self.orders.get_mut(key) {
                order.lost = true;
                order.certain = Certain::Unknown;
                self.index(key.clone());
            }
        }
    }

    fn certainly_live(&self, order: &Order, now: i64) -> bool {
        match order.certain {
            Certain::Live { hold_until: None } => true,
            Certain::Live { hold_until: Some(until) } => now < until - self.spread_ms,
            Certain::NotLive | Certain::Unknown => false,
        }
    }

    /// Whether every limit `coupon` draws on had room for one more use by `user` for sure:
    /// the uses that may be live leave at least one unit of each.
    fn provably_free(&self, coupon: CouponId, user: &str) -> bool {
        let Some(shape) = self.shapes.get(&coupon) else { return false };
        let maybe: Vec<&Order> = self.maybe.iter().filter_map(|key| self.orders.get(key)).collect();
        let count = |f: &dyn Fn(&Order) -> bool| maybe.iter().filter(|o| f(o)).count() as u64;
        let within = |limit: Option<u64>, used: u64, need: u64| limit.is_none_or(|l| used + need <= l);
        let campaign = |o: &Order| {
            self.shapes.get(&o.coupon).is_some_and(|s| s.campaign.is_some() && s.campaign == shape.campaign)
        };
        let cents: u64 = maybe.iter().filter(|o| campaign(o)).map(|o| self.shapes[&o.coupon].discount_cents).sum();
        within(shape.limit, count(&|o| o.coupon == coupon), 1)
            && within(shape.per_user, count(&|o| o.coupon == coupon && o.user == user), 1)
            && within(shape.campaign_uses, count(&campaign), 1)
            && within(shape.campaign_cents, cents, shape.discount_cents)
    }

    /// Whether an order may be an order conflict: a coupon without claims, asked about on
    /// more than one instance (each may have decided without knowing the other's use).
    fn may_conflict(&self, order: &Order) -> bool {
        order.asked_on.len() > 1 && self.shapes.get(&order.coupon).is_some_and(|s| !s.claimed)
    }

    /// (a): the uses certainly live now fit every limit. Where they do not, but do without
    /// the orders that may be conflicts, those become suspects, each to be proved a conflict
    /// at the end (`check_final`).
    pub fn check_limits(&mut self, now: i64) -> Result<(), String> {
        if let Some(what) = self.wrong_not_found.take() {
            return Err(what);
        }
        // Holds past their deadline (less the clocks' spread) are no longer certainly live.
        let due: Vec<(CouponId, String)> = self
            .certain
            .iter()
            .filter(|key| self.orders.get(*key).is_none_or(|o| !self.certainly_live(o, now)))
            .cloned()
            .collect();
        for key in due {
            self.certain.remove(&key);
        }
        let Err(violation) = self.limits_hold(now, false) else { return Ok(()) };
        self.limits_hold(now, true).map_err(|_| violation.what.clone())?;
        self.suspects.push(violation);
        Ok(())
    }

    /// `Err` says what is exceeded.
    fn limits_hold(&self, now: i64, without_possible_conflicts: bool) -> Result<(), Violation> {
        let keyed: Vec<(&(CouponId, String), &Order)> = self
            .certain
            .iter()
            .filter_map(|key| Some((key, self.orders.get(key)?)))
            .filter(|(_, o)| self.certainly_live(o, now) && !(without_possible_conflicts && self.may_conflict(o)))
            .collect();
        let violation = |what: String, limit: u64, counts: &dyn Fn(&Order) -> u64| Violation {
            what,
            limit,
            live: keyed.iter().filter(|(_, o)| counts(o) > 0).map(|(k, o)| ((*k).clone(), counts(o))).collect(),
        };
        let in_campaign = |o: &Order, campaign| self.shapes[&o.coupon].campaign == Some(campaign);
        let live: Vec<&Order> = keyed.iter().map(|(_, o)| *o).collect();
        for shape in self.shapes.values() {
            let of_coupon: Vec<&&Order> = live.iter().filter(|o| o.coupon == shape.coupon).collect();
            if let Some(limit) = shape.limit
                && of_coupon.len() as u64 > limit
            {
                let what = format!("coupon {} oversold: {} live for a limit of {limit}", shape.coupon, of_coupon.len());
                return Err(violation(what, limit, &|o| u64::from(o.coupon == shape.coupon)));
            }
            if let Some(limit) = shape.per_user {
                let mut by_user: BTreeMap<&str, u64> = BTreeMap::new();
                for o in &of_coupon {
                    *by_user.entry(o.user.as_str()).or_default() += 1;
                }
                if let Some((user, n)) = by_user.iter().find(|(_, n)| **n > limit) {
                    let what =
                        format!("coupon {}: user {user} has {n} live for a per-user limit of {limit}", shape.coupon);
                    let user = (*user).to_owned();
                    return Err(violation(what, limit, &|o| u64::from(o.coupon == shape.coupon && o.user == user)));
                }
            }
            if let Some(campaign) = shape.campaign {
                let of_campaign: Vec<&&Order> =
                    live.iter().filter(|o| self.shapes[&o.coupon].campaign == Some(campaign)).collect();
                if let Some(limit) = shape.campaign_uses
                    && of_campaign.len() as u64 > limit
                {
                    let what = format!("campaign {campaign} oversold: {} live for a cap of {limit}", of_campaign.len());
                    return Err(violation(what, limit, &|o| u64::from(in_campaign(o, campaign))));
                }
                if let Some(budget) = shape.campaign_cents {
                    let cents: u64 = of_campaign.iter().map(|o| self.shapes[&o.coupon].discount_cents).sum();
                    if cents > budget {
                        let what = format!("campaign {campaign} over budget: {cents} cents live for {budget}");
                        let cents_of = |o: &Order| {
                            if in_campaign(o, campaign) { self.shapes[&o.coupon].discount_cents } else { 0 }
                        };
                        return Err(violation(what, budget, &cents_of));
                    }
                }
            }
        }
        Ok(())
    }

    /// (b): every acknowledged answer stands in the final rows (after every fault healed,
    /// every journal shipped and every deadline passed).
    pub fn check_final(&mut self, rows: &[FinalUse], dropped: &BTreeSet<(CouponId, String)>) -> Result<(), String> {
        self.dropped.clone_from(dropped);
        check_sets(rows)?;
        self.counts.sets = rows.iter().filter_map(|r| r.set.map(|s| s.id)).collect::<BTreeSet<_>>().len() as u64;
        let by_order: BTreeMap<(CouponId, &str), &FinalUse> =
            rows.iter().map(|r| ((r.coupon, r.order.as_str()), r)).collect();
        if by_order.len() != rows.len() {
            return Err("two rows for one (coupon, order)".into());
        }
        // An order conflict, proved: an order that may be one (a coupon without claims,
        // asked about on two instances) one of whose uses the shipper dropped, or whose final
        // row is not what its last acknowledgement said.
        let mut conflicts = BTreeSet::new();
        let mut lost_to_conflicts = 0;
        let mut mismatches = Vec::new();
        for (key, order) in &self.orders {
            let (coupon, order_id) = key;
            if order.lost {
                continue;
            }
            let row = by_order.get(&(*coupon, order_id.as_str()));
            let holds = order.uncertain_after
                || match order.last_acked {
                    Some(Answer::Taken { hold_until: None }) => {
                        row.is_some_and(|row| row.live && !row.held && row.user == order.user)
                    }
                    Some(Answer::Taken { hold_until: Some(_) }) => row.is_some(),
                    Some(Answer::Released) => row.is_some_and(|row| !row.live),
                    _ => true,
                };
            if self.may_conflict(order) && (!holds || self.dropped.contains(key)) {
                conflicts.insert(key.clone());
                if !holds {
                    lost_to_conflicts += 1;
                }
            } else if !holds {
                let what = format!("coupon {coupon} order {order_id} (acknowledged by {})", order.acked_by);
                mismatches.push(format!("{what}: acknowledged as {:?}, ended as {row:?}", order.last_acked));
            }
        }
        if let Some(mismatch) = mismatches.into_iter().next() {
            return Err(mismatch);
        }
        for violation in &self.suspects {
            let counted: u64 = violation.live.iter().filter(|(key, _)| !conflicts.contains(key)).map(|(_, n)| n).sum();
            if counted > violation.limit {
                return Err(format!("{} (and still {counted} without the order conflicts)", violation.what));
            }
        }
        self.counts.order_conflicts += lost_to_conflicts;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(coupon: CouponId, set: Option<(u128, usize)>, live: bool) -> FinalUse {
        FinalUse {
            coupon,
            order: "o".into(),
            user: "u".into(),
            live,
            held: false,
            set: set.map(|(id, taken)| SetMark { id: uuid::Uuid::from_u128(id), taken }),
        }
    }

    #[test]
    fn a_set_ends_whole_or_the_check_says_which() {
        let cases: Vec<(Vec<FinalUse>, Option<&str>)> = vec![
            (vec![row(1, Some((7, 2)), true), row(2, Some((7, 2)), true)], None),
            (vec![row(1, Some((7, 2)), false), row(2, Some((7, 2)), false), row(3, None, true)], None),
            (vec![row(1, Some((7, 1)), true)], None),
            (vec![row(1, Some((7, 2)), true)], Some("ended with 1 of its 2 uses")),
            (vec![row(1, Some((7, 2)), true), row(2, Some((7, 2)), false)], Some("live in part")),
            (vec![row(1, Some((7, 2)), true), row(2, Some((8, 2)), true)], Some("ended with 1 of its 2")),
        ];
        for (rows, failure) in cases {
            match (check_sets(&rows), failure) {
                (Ok(()), None) => {}
                (Err(err), Some(expected)) => assert!(err.contains(expected), "{err}"),
                (got, _) => panic!("{rows:?}: {got:?}, expected {failure:?}"),
            }
        }
    }
}
