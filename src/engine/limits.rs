//! The chain of limits a use must pass. Each thing that can refuse a use is one [`Limit`];
//! [`take`] runs them in a fixed order and, on a refusal, gives back what the earlier ones
//! took, so no count is ever left raised by a refused use. Adding a limit is one more type
//! and one more entry in [`Limits::chain`]; the others do not change.

use crate::domain::coupon::{BatchId, CampaignId, CouponId};
use crate::domain::money::Cents;
use crate::domain::rules::Reason;
use crate::engine::ledger::{Counted, Ended, IdKey, Ledger, OrderKey, Slot, SlotState, Take, Tally};

/// What one use takes: who, of what, for how much.
#[derive(Debug, Clone, Copy)]
pub struct Use {
    pub key: OrderKey,
    pub user: IdKey,
    pub coupon: CouponId,
    pub code: Option<(BatchId, u32)>,
    /// The campaign whose use and budget it takes (none for a zero discount).
    pub campaign: Option<CampaignId>,
    pub discount: Cents,
    pub hold: bool,
    /// Which per-user counts it takes (only where a per-user limit exists).
    pub counted: Counted,
}

impl Use {
    /// The use a remembered slot took, to give it back.
    pub(crate) fn of_slot(key: OrderKey, coupon: CouponId, slot: &Slot) -> Use {
        Use {
            key,
            user: slot.user,
            coupon,
            code: slot.code(),
            campaign: slot.campaign(),
            discount: slot.discount,
            hold: slot.is_hold(),
            counted: slot.counted,
        }
    }
}

/// Why a limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A rule's limit is reached.
    Rule(Reason),
    /// The user holds too many uses already.
    TooManyHolds,
    /// The order already has a slot for this coupon.
    OrderTaken(Slot),
}

/// One thing that can refuse a use.
pub trait Limit {
    /// Takes what `u` needs, or refuses and takes nothing.
    fn take(&self, ledger: &Ledger, u: &Use) -> Result<(), Refusal>;
    /// Gives back what [`Limit::take`] took for `u`.
    fn give_back(&self, ledger: &Ledger, u: &Use);
}

/// Takes every limit of `chain` in order; on a refusal, gives back the earlier ones.
pub fn take(chain: &[&dyn Limit], ledger: &Ledger, u: &Use) -> Result<(), Refusal> {
    for (idx, limit) in chain.iter().enumerate() {
        if let Err(refusal) = limit.take(ledger, u) {
            give_back(&chain[..idx], ledger, u);
            return Err(refusal);
        }
    }
    Ok(())
}

/// Gives back every limit of `chain`, last first.
pub(crate) fn give_back(chain: &[&dyn Limit], ledger: &Ledger, u: &Use) {
    for limit in chain.iter().rev() {
        limit.give_back(ledger, u);
    }
}

/// One redemption per order: claims the order's slot. A released hold leaves the order free.
#[derive(Debug)]
pub struct OrderOnce {
    /// What to remember, in its `Taking` state.
    pub slot: Slot,
}

impl Limit for OrderOnce {
    fn take(&self, ledger: &Ledger, u: &Use) -> Result<(), Refusal> {
        ledger.update(u.key, |current| match current {
            Some(slot) if !matches!(slot.state, SlotState::Released { ended, .. } if !ended.order_spent()) => {
                (Some(slot), Err(Refusal::OrderTaken(slot)))
            }
            Some(released) => {
                let rev = released.rev + 1;
                (Some(Slot { rev, ..self.slot }), Ok(()))
            }
            None => (Some(self.slot), Ok(())),
        })
    }

    fn give_back(&self, ledger: &Ledger, u: &Use) {
        // Only a claim still being taken is undone: by then nothing else can have changed it.
        ledger.update(u.key, |current| match current {
            Some(slot) if matches!(slot.state, SlotState::Taking { .. }) && slot.rev == 1 => (None, ()),
            Some(slot) if matches!(slot.state, SlotState::Taking { .. }) => {
                let released = SlotState::Released { at: 0, ended: Ended::CancelledHold };
                (Some(Slot { rev: slot.rev - 1, state: released, ..slot }), ())
            }
            other => (other, ()),
        });
    }
}

/// At most so many live holds per user, across every coupon (anti-hoarding); a coupon's
/// live holds are counted with them, for the admin read.
#[derive(Debug)]
pub struct UserHolds(pub Option<u32>);

impl Limit for UserHolds {
    fn take(&self, ledger: &Ledger, u: &Use) -> Result<(), Refusal> {
        if !u.hold {
            return Ok(());
        }
        if !ledger.take(Tally::UserHolds(u.user), Take::one(self.0)) {
            return Err(Refusal::TooManyHolds);
        }
        ledger.take(Tally::CouponHolds(u.coupon), Take::one(None));
        Ok(())
    }

    fn give_back(&self, ledger: &Ledger, u: &Use) {
        if u.hold {
            ledger.give_back(Tally::UserHolds(u.user), 1, Cents::ZERO);
            ledger.give_back(Tally::CouponHolds(u.coupon), 1, Cents::ZERO);
        }
    }
}

/// A bulk code's own uses.
#[derive(Debug)]
pub struct CodeUses(pub Option<u32>);

impl Limit for CodeUses {
    fn take(&self, ledger: &Ledger, u: &Use) -> Result<(), Refusal> {
        match u.code {
            Some((batch, index)) if !ledger.take(Tally::Code(batch, index), Take::one(self.0)) => {
                Err(Refusal::Rule(Reason::UsageLimitReached))
            }
            _ => Ok(()),
        }
    }

    fn give_back(&self, ledger: &Ledger, u: &Use) {
        if let Some((batch, index)) = u.code {
            ledger.give_back(Tally::Code(batch, index), 1, Cents::ZERO);
        }
    }
}

/// A coupon's `usage_limit`.
#[derive(Debug)]
pub struct CouponTotal(pub Option<u32>);

impl Limit for CouponTotal {
    fn take(&self, ledger: &Ledger, u: &Use) -> Result<(), Refusal> {
        refuse_unless(ledger.take(Tally::Coupon(u.coupon), Take::one(self.0)), Reason::UsageLimitReached)
    }

    fn give_back(&self, ledger: &Ledger, u: &Use) {
        ledger.give_back(Tally::Coupon(u.coupon), 1, Cents::ZERO);
    }
}

/// A coupon's `per_user_limit`.
#[derive(Debug)]
pub struct CouponPerUser(pub Option<u32>);

impl Limit for CouponPerUser {
    fn take(&self, ledger: &Ledger, u: &Use) -> Result<(), Refusal> {
        if !u.counted.coupon_user {
            return Ok(());
        }
        let taken = ledger.take(Tally::UserCoupon(u.coupon, u.user), Take::one(self.0));
        refuse_unless(taken, Reason::UserUsageLimitReached)
    }

    fn give_back(&self, ledger: &Ledger, u: &Use) {
        if u.counted.coupon_user {
            ledger.give_back(Tally::UserCoupon(u.coupon, u.user), 1, Cents::ZERO);
        }
    }
}

/// A campaign's shared cap.
#[derive(Debug)]
pub struct CampaignCap(pub Option<u32>);

impl Limit for CampaignCap {
    fn take(&self, ledger: &Ledger, u: &Use) -> Result<(), Refusal> {
        match u.campaign {
            Some(id) => {
                refuse_unless(ledger.take(Tally::Campaign(id), Take::one(self.0)), Reason::CampaignLimitReached)
            }
            None => Ok(()),
        }
    }

    fn give_back(&self, ledger: &Ledger, u: &Use) {
        if let Some(id) = u.campaign {
            ledger.give_back(Tally::Campaign(id), 1, Cents::ZERO);
        }
    }
}

/// A campaign's per-customer limit.
#[derive(Debug)]
pub struct CampaignPerUser(pub Option<u32>);

impl Limit for CampaignPerUser {
    fn take(&self, ledger: &Ledger, u: &Use) -> Result<(), Refusal> {
        match u.campaign.filter(|_| u.counted.campaign_user) {
            Some(id) => refuse_unless(
                ledger.take(Tally::UserCampaign(id, u.user), Take::one(self.0)),
                Reason::CampaignUserLimitReached,
            ),
            None => Ok(()),
        }
    }

    fn give_back(&self, ledger: &Ledger, u: &Use) {
        if let Some(id) = u.campaign.filter(|_| u.counted.campaign_user) {
            ledger.give_back(Tally::UserCampaign(id, u.user), 1, Cents::ZERO);
        }
    }
}

/// A campaign's money budget: the live discounts, this one included, stay within it. It
/// moves money only; the use is the cap's.
#[derive(Debug)]
pub struct CampaignBudget(pub Option<Cents>);

impl Limit for CampaignBudget {
    fn take(&self, ledger: &Ledger, u: &Use) -> Result<(), Refusal> {
        match u.campaign {
            Some(id) => refuse_unless(
                ledger.take(Tally::Campaign(id), Take::money(u.discount, self.0)),
                Reason::CampaignBudgetExhausted,
            ),
            None => Ok(()),
        }
    }

    fn give_back(&self, ledger: &Ledger, u: &Use) {
        if let Some(id) = u.campaign {
            ledger.give_back(Tally::Campaign(id), 0, u.discount);
        }
    }
}

fn refuse_unless(taken: bool, reason: Reason) -> Result<(), Refusal> {
    if taken { Ok(()) } else { Err(Refusal::Rule(reason)) }
}

/// Every limit, with the caps of the definitions a use is checked against.
#[derive(Debug)]
pub struct Limits {
    pub order: OrderOnce,
    pub holds: UserHolds,
    pub code: CodeUses,
    pub total: CouponTotal,
    pub per_user: CouponPerUser,
    pub campaign: CampaignCap,
    pub campaign_user: CampaignPerUser,
    pub budget: CampaignBudget,
}

impl Limits {
    /// The whole chain, in order: the order's claim first, so that a concurrent duplicate
    /// of the same order never takes a use.
    pub(crate) fn chain(&self) -> [&dyn Limit; 8] {
        [
            &self.order,
            &self.holds,
            &self.code,
            &self.total,
            &self.per_user,
            &self.campaign,
            &self.campaign_user,
            &self.budget,
        ]
    }
}

/// The limits that count uses, without caps: what a release or an expiry gives back. The
/// order's claim is not among them: a released slot stays, in its released state.
pub fn counting() -> [&'static dyn Limit; 7] {
    [
        &UserHolds(None),
        &CodeUses(None),
        &CouponTotal(None),
        &CouponPerUser(None),
        &CampaignCap(None),
        &CampaignPerUser(None),
        &CampaignBudget(None),
    ]
}

/// What confirming a hold gives back: the hold's place among the user's live holds.
pub(crate) fn hold_only() -> [&'static dyn Limit; 1] {
    [&UserHolds(None)]
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::engine::ledger::Count;

    fn cents(n: u64) -> Cents {
        Cents::new(n).unwrap()
    }

    fn slot(user: IdKey, discount: u64) -> Slot {
        Slot {
            id: Uuid::nil(),
            rev: 1,
            user,
            order_value: cents(10_000),
            discount: cents(discount),
            code: None,
            campaign: std::num::NonZeroI64::new(3),
            counted: Counted { coupon_user: true, campaign_user: true },
            foreign: false,
            state: SlotState::Taking { hold: false },
        }
    }

    fn a_use(ledger: &Ledger, order: &str, user: IdKey, discount: u64) -> Use {
        Use {
            key: (1, ledger.id_key(order)),
            user,
            coupon: 1,
            code: Some((5, 0)),
            campaign: Some(3),
            discount: cents(discount),
            hold: false,
            counted: Counted { coupon_user: true, campaign_user: true },
        }
    }

    fn limits(user: IdKey, discount: u64, caps: [Option<u32>; 5], budget: Option<u64>) -> Limits {
        Limits {
            order: OrderOnce { slot: slot(user, discount) },
            holds: UserHolds(Some(3)),
            code: CodeUses(caps[0]),
            total: CouponTotal(caps[1]),
            per_user: CouponPerUser(caps[2]),
            campaign: CampaignCap(caps[3]),
            campaign_user: CampaignPerUser(caps[4]),
            budget: CampaignBudget(budget.map(cents)),
        }
    }

    fn snapshot(ledger: &Ledger, user: IdKey) -> [Count; 5] {
        [
            ledger.count(Tally::Code(5, 0)),
            ledger.count(Tally::Coupon(1)),
            ledger.count(Tally::UserCoupon(1, user)),
            ledger.count(Tally::Campaign(3)),
            ledger.count(Tally::UserCampaign(3, user)),
        ]
    }

    #[test]
    fn each_refusal_undoes_every_earlier_step() {
        use Reason::*;
        // Which limit refuses, and with what.
        for (caps, budget, expected) in [
            ([Some(0), None, None, None, None], None, Refusal::Rule(UsageLimitReached)),
            ([None, Some(0), None, None, None], None, Refusal::Rule(UsageLimitReached)),
            ([None, None, Some(0), None, None], None, Refusal::Rule(UserUsageLimitReached)),
            ([None, None, None, Some(0), None], None, Refusal::Rule(CampaignLimitReached)),
            ([None, None, None, None, Some(0)], None, Refusal::Rule(CampaignUserLimitReached)),
            ([None; 5], Some(99), Refusal::Rule(CampaignBudgetExhausted)),
        ] {
            let ledger = Ledger::default();
            let u = a_use(&ledger, "o-1", 7, 100);
            let limits = limits(7, 100, caps, budget);
            assert_eq!(take(&limits.chain(), &ledger, &u), Err(expected), "{caps:?} {budget:?}");
            assert_eq!(snapshot(&ledger, 7), [Count::default(); 5], "{expected:?} left a count raised");
            assert_eq!(ledger.slot(u.key), None, "{expected:?} left the order claimed");
            assert_eq!(ledger.tally_count(), 0);
        }
    }

    #[test]
    fn a_use_and_its_release_move_every_count_once() {
        let ledger = Ledger::default();
        let u = a_use(&ledger, "o-1", 7, 250);
        let limits = limits(7, 250, [Some(1), Some(5), Some(2), Some(5), Some(2)], Some(1_000));
        take(&limits.chain(), &ledger, &u).unwrap();
        let one = Count { live: 1, spent: 0 };
        assert_eq!(snapshot(&ledger, 7), [one, one, one, Count { live: 1, spent: 250 }, one]);
        // The same order again is refused by its claim, and takes nothing.
        let again = take(&limits.chain(), &ledger, &u);
        assert!(matches!(again, Err(Refusal::OrderTaken(_))));
        assert_eq!(snapshot(&ledger, 7)[1], one);
        give_back(&counting(), &ledger, &u);
        assert_eq!(snapshot(&ledger, 7), [Count::default(); 5]);
    }

    #[test]
    fn holds_count_per_user_across_coupons() {
        let ledger = Ledger::default();
        for n in 0..3 {
            let u = Use { hold: true, ..a_use(&ledger, &format!("o-{n}"), 7, 0) };
            assert_eq!(UserHolds(Some(3)).take(&ledger, &u), Ok(()));
        }
        let fourth = Use { hold: true, ..a_use(&ledger, "o-3", 7, 0) };
        assert_eq!(UserHolds(Some(3)).take(&ledger, &fourth), Err(Refusal::TooManyHolds));
        let other_user = Use { hold: true, user: 8, ..fourth };
        assert_eq!(UserHolds(Some(3)).take(&ledger, &other_user), Ok(()));
        assert_eq!(
            ledger.count(Tally::CouponHolds(fourth.coupon)).live,
            4,
            "the coupon counts the holds of both users"
        );
        let redemption = Use { hold: false, ..fourth };
        assert_eq!(UserHolds(Some(3)).take(&ledger, &redemption), Ok(()), "redemptions are not holds");
    }

    #[test]
    fn a_released_hold_frees_its_order_and_a_refusal_restores_it() {
        let ledger = Ledger::default();
        let u = a_use(&ledger, "o-1", 7, 0);
        let released = Slot { rev: 3, state: SlotState::Released { at: 5, ended: Ended::CancelledHold }, ..slot(7, 0) };
        ledger.update(u.key, |_| (Some(released), ()));
        let limits = limits(7, 0, [None, Some(0), None, None, None], None);
        assert_eq!(take(&limits.chain(), &ledger, &u), Err(Refusal::Rule(Reason::UsageLimitReached)));
        let restored = ledger.slot(u.key).unwrap();
        assert_eq!(
            (restored.rev, matches!(restored.state, SlotState::Released { ended: Ended::CancelledHold, .. })),
            (3, true)
        );
        let spent = Slot { state: SlotState::Released { at: 5, ended: Ended::Redemption }, ..released };
        ledger.update(u.key, |_| (Some(spent), ()));
        assert!(matches!(take(&limits.chain(), &ledger, &u), Err(Refusal::OrderTaken(_))));
    }
}
