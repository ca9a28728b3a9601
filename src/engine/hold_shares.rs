//! How much of a limited coupon's or campaign's remaining uses and budget one caller may hold
//! (API.md §8): a share (`protection.hold_share_percent`) of what is left, per address for
//! anonymous callers and per user for the shop's backend. Fifty holds from one address can no
//! longer take a fifty-use coupon, nor one hold on a big cart a campaign's whole budget.
//!
//! A caller's holds are the orders it held, each counted while its slot is a hold (held, or
//! being taken): a hold confirmed, released or expired stops counting by itself, with no hook
//! in those paths. A hold asked for within the last second counts too, so that concurrent
//! asks of one caller cannot all pass before any of them is taken.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::domain::coupon::{CampaignId, CouponId};
use crate::engine::ledger::OrderKey;

/// Callers remembered at most: past this, a new caller's hold of a limited pool is refused
/// until holds end (memory stays bounded whatever addresses an attacker rotates through).
const MAX_CALLERS: usize = 1 << 20;
/// How long a hold asked for counts before its slot shows it (ms).
const IN_FLIGHT_MS: i64 = 1_000;

/// What a hold counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Pool {
    Coupon(CouponId),
    Campaign(CampaignId),
}

/// One pool a hold would take from: what is left of it now, and what the hold takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ask {
    pub pool: Pool,
    /// Uses left under its limit (none: no limit on uses).
    pub uses_left: Option<u64>,
    /// Cents left of its budget (none: no budget).
    pub cents_left: Option<u64>,
    /// The hold's discount, charged to a budget.
    pub cents: u64,
}

/// A hold a caller asked for.
#[derive(Debug, Clone, Copy)]
struct Asked {
    order: OrderKey,
    pools: [Option<Pool>; 2],
    cents: u64,
    at: i64,
}

/// The holds of each caller, to bound their share.
#[derive(Debug)]
pub(crate) struct HoldShares {
    /// Percent of what is left one caller may hold; 0 turns the bound off.
    percent: u64,
    callers: Mutex<HashMap<u64, Vec<Asked>>>,
}

impl HoldShares {
    pub(crate) fn new(percent: u32) -> HoldShares {
        HoldShares { percent: u64::from(percent), callers: Mutex::default() }
    }

    /// Whether `caller` may hold `order` of every pool of `asks` at `now_ms`, `is_hold` saying
    /// which of its earlier orders are holds still; if so, the ask is remembered. A caller may
    /// hold `percent` of what a pool had left before its own holds: at least one use, never
    /// more than that share of a budget.
    pub(crate) fn admit(
        &self,
        caller: u64,
        order: OrderKey,
        asks: &[Ask],
        now_ms: i64,
        is_hold: impl Fn(OrderKey) -> bool,
    ) -> bool {
        if self.percent == 0 || asks.is_empty() {
            return true;
        }
        let mut callers = self.callers.lock().expect("hold shares");
        if !callers.contains_key(&caller) && callers.len() >= MAX_CALLERS {
            callers.retain(|_, asked| {
                asked.retain(|a| now_ms - a.at < IN_FLIGHT_MS || is_hold(a.order));
                !asked.is_empty()
            });
            if callers.len() >= MAX_CALLERS {
                return false;
            }
        }
        let asked = callers.entry(caller).or_default();
        asked.retain(|a| a.order != order && (now_ms - a.at < IN_FLIGHT_MS || is_hold(a.order)));
        let share = |left: u64, mine: u64| (left + mine) * self.percent / 100;
        for ask in asks {
            let mine = asked.iter().filter(|a| a.pools.contains(&Some(ask.pool)));
            let (uses, cents) = mine.fold((0, 0), |(n, c), a| (n + 1, c + a.cents));
            if ask.uses_left.is_some_and(|left| uses + 1 > share(left, uses).max(1)) {
                return false;
            }
            if ask.cents_left.is_some_and(|left| cents + ask.cents > share(left, cents)) {
                return false;
            }
        }
        let mut pools = [None; 2];
        for (slot, ask) in pools.iter_mut().zip(asks) {
            *slot = Some(ask.pool);
        }
        let cents = asks.iter().map(|a| a.cents).max().unwrap_or(0);
        asked.push(Asked { order, pools, cents, at: now_ms });
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn uses(pool: Pool, left: u64) -> Ask {
        Ask { pool, uses_left: Some(left), cents_left: None, cents: 0 }
    }

    #[test]
    fn a_caller_holds_a_share_of_what_is_left() {
        let shares = HoldShares::new(10);
        let coupon = Pool::Coupon(1);
        let all = |_| true;
        // 50 uses left: 10 % is 5 holds for one caller, the pool shrinking as it takes them.
        let taken = (0..50).take_while(|n| shares.admit(7, (1, *n), &[uses(coupon, 50 - n)], 0, all)).count();
        assert_eq!(taken, 5);
        // Another caller has its own share; a small pool still allows one hold each.
        assert!(shares.admit(8, (1, 100), &[uses(coupon, 45)], 0, all));
        assert!(shares.admit(9, (2, 1), &[uses(Pool::Coupon(2), 3)], 0, all));
        assert!(!shares.admit(9, (2, 2), &[uses(Pool::Coupon(2), 2)], 0, all));
        // The same order asked again is one hold, not two.
        assert!(shares.admit(9, (2, 1), &[uses(Pool::Coupon(2), 2)], 0, all));
    }

    #[test]
    fn a_hold_that_ended_stops_counting() {
        let shares = HoldShares::new(10);
        let ended: HashSet<OrderKey> = [(1, 1)].into();
        let is_hold = |order| !ended.contains(&order);
        assert!(shares.admit(1, (1, 1), &[uses(Pool::Coupon(1), 1)], 0, is_hold));
        // Asked within the second: still counted, whatever its slot says.
        assert!(!shares.admit(1, (1, 2), &[uses(Pool::Coupon(1), 1)], 500, is_hold));
        // Released meanwhile: the caller may hold again.
        assert!(shares.admit(1, (1, 2), &[uses(Pool::Coupon(1), 1)], 1_500, is_hold));
    }

    #[test]
    fn a_budget_is_never_held_past_the_share() {
        let shares = HoldShares::new(10);
        let all = |_| true;
        // 1,000.00 left: a tenth is 100.00, whatever the caller's holds took of it meanwhile.
        let budget = |cents, left| Ask { pool: Pool::Campaign(3), uses_left: None, cents_left: Some(left), cents };
        assert!(
            !shares.admit(1, (1, 1), &[budget(10_001, 100_000)], 0, all),
            "one big cart takes no more than a tenth"
        );
        assert!(shares.admit(1, (1, 1), &[budget(6_000, 100_000)], 0, all));
        assert!(!shares.admit(1, (1, 2), &[budget(4_001, 94_000)], 0, all));
        assert!(shares.admit(1, (1, 2), &[budget(4_000, 94_000)], 0, all));
        // A refusal by any pool remembers nothing.
        let both = [uses(Pool::Coupon(4), 100), budget(1, 90_000)];
        assert!(!shares.admit(1, (4, 1), &both, 0, all));
        assert!(shares.admit(1, (4, 1), &[uses(Pool::Coupon(4), 100)], 0, all));
    }

    #[test]
    fn off_at_zero_percent() {
        let shares = HoldShares::new(0);
        assert!((0..100).all(|n| shares.admit(1, (1, n), &[uses(Pool::Coupon(1), 1)], 0, |_| true)));
    }
}
