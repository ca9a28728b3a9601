//! Live usage of one coupon: lock-free counters that outlive every catalog snapshot, and the
//! reservation steps that keep redemptions within the limits under any concurrency.

use std::sync::atomic::{AtomicU32, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use uuid::Uuid;

use crate::domain::money::Cents;
use crate::domain::rules::{Reason, Usage};

/// Where a redemption is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedemptionState {
    /// Reserved in memory, not yet durable: its journal append is in flight.
    Pending,
    /// Durable and counting against the limits.
    Live,
    /// A release is in flight.
    Releasing,
    /// Given back; no longer counts, but the order id stays used.
    Released,
}

/// A redemption of a coupon by an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redemption {
    pub id: Uuid,
    pub user_id: Box<str>,
    pub order_value: Cents,
    pub discount: Cents,
    pub state: RedemptionState,
}

impl Redemption {
    /// `order_value − discount`.
    pub fn final_amount(&self) -> Cents {
        self.order_value.saturating_sub(self.discount)
    }
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveError {
    Limit(Reason),
    /// The order already holds a redemption of this coupon.
    OrderTaken(Redemption),
}

/// Why a release could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseError {
    NotFound,
    /// Already released (the caller answers "released" again).
    AlreadyReleased,
    /// A redeem or release of this order is in flight; ask again shortly.
    Busy,
}

/// The limits a reservation must stay within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub total: Option<u32>,
    pub per_user: Option<u32>,
}

/// The redemptions of one coupon: a live total, a live count per user, every order.
///
/// Invariant: outside a reservation or release in flight, `total` equals the number of
/// `Live` entries in `orders` plus `Pending` ones, and `by_user` counts the same per user.
/// Counts only ever exceed the durable state transiently (a pending reservation), never
/// fall below it, so a limit can never be overrun.
#[derive(Debug, Default)]
pub struct CouponUsage {
    total: AtomicU32,
    by_user: DashMap<Box<str>, u32, ahash::RandomState>,
    orders: DashMap<Box<str>, Redemption, ahash::RandomState>,
}

impl CouponUsage {
    /// Records a redemption read from PostgreSQL at start-up, live or released.
    pub fn record_loaded(&self, order_id: &str, redemption: Redemption) {
        let live = redemption.state == RedemptionState::Live;
        let user_id = redemption.user_id.clone();
        if self.orders.insert(order_id.into(), redemption).is_none() && live {
            *self.by_user.entry(user_id).or_insert(0) += 1;
            self.total.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The redemption held by `order_id`, if any.
    pub fn redemption(&self, order_id: &str) -> Option<Redemption> {
        self.orders.get(order_id).map(|entry| entry.value().clone())
    }

    /// Takes one use for `order_id` atomically: claims the order, then a place below the
    /// total limit, then one below the user's limit; a failure undoes the earlier steps.
    /// The redemption is `Pending` until [`CouponUsage::confirm`].
    pub fn reserve(&self, order_id: &str, redemption: Redemption, limits: Limits) -> Result<(), ReserveError> {
        let user_id = redemption.user_id.clone();
        match self.orders.entry(order_id.into()) {
            Entry::Occupied(taken) => return Err(ReserveError::OrderTaken(taken.get().clone())),
            Entry::Vacant(vacant) => {
                vacant.insert(Redemption { state: RedemptionState::Pending, ..redemption });
            }
        }
        let took_total = match limits.total {
            // Compare-and-swap: never "load, check, add", where two racers both pass.
            Some(limit) => {
                self.total.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            }
            None => Ok(self.total.fetch_add(1, Ordering::AcqRel)),
        };
        if took_total.is_err() {
            self.orders.remove(order_id);
            return Err(ReserveError::Limit(Reason::UsageLimitReached));
        }
        // The entry holds this user's shard lock, so check-and-increment is atomic.
        let mut count = self.by_user.entry(user_id).or_insert(0);
        if limits.per_user.is_some_and(|limit| *count >= limit) {
            drop(count);
            self.total.fetch_sub(1, Ordering::AcqRel);
            self.orders.remove(order_id);
            return Err(ReserveError::Limit(Reason::UserUsageLimitReached));
        }
        *count += 1;
        Ok(())
    }

    /// The reservation of `order_id` is durable: it becomes `Live`.
    pub fn confirm(&self, order_id: &str) {
        if let Some(mut entry) = self.orders.get_mut(order_id) {
            entry.state = RedemptionState::Live;
        }
    }

    /// The reservation of `order_id` could not be made durable: give everything back.
    pub fn cancel(&self, order_id: &str) {
        if let Some((_, redemption)) = self.orders.remove_if(order_id, |_, r| r.state == RedemptionState::Pending) {
            self.forget_use(&redemption.user_id);
        }
    }

    /// Marks a live redemption as being released and returns it. The counts are only
    /// lowered by [`CouponUsage::finish_release`], once the release is durable, so a
    /// failed release can never have let another redemption through.
    pub fn begin_release(&self, order_id: &str) -> Result<Redemption, ReleaseError> {
        let mut entry = self.orders.get_mut(order_id).ok_or(ReleaseError::NotFound)?;
        match entry.state {
            RedemptionState::Live => {
                entry.state = RedemptionState::Releasing;
                Ok(entry.clone())
            }
            RedemptionState::Released => Err(ReleaseError::AlreadyReleased),
            RedemptionState::Pending | RedemptionState::Releasing => Err(ReleaseError::Busy),
        }
    }

    /// The release of `order_id` is durable: the use is given back.
    pub fn finish_release(&self, order_id: &str) {
        let user_id = match self.orders.get_mut(order_id) {
            Some(mut entry) if entry.state == RedemptionState::Releasing => {
                entry.state = RedemptionState::Released;
                entry.user_id.clone()
            }
            _ => return,
        };
        self.forget_use(&user_id);
    }

    /// The release of `order_id` could not be made durable: it stays live.
    pub fn abort_release(&self, order_id: &str) {
        if let Some(mut entry) = self.orders.get_mut(order_id)
            && entry.state == RedemptionState::Releasing
        {
            entry.state = RedemptionState::Live;
        }
    }

    fn forget_use(&self, user_id: &str) {
        self.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(mut count) = self.by_user.get_mut(user_id) {
            *count = count.saturating_sub(1);
        }
    }
}

impl Usage for CouponUsage {
    fn total(&self) -> u32 {
        self.total.load(Ordering::Acquire)
    }

    fn by_user(&self, user_id: &str) -> u32 {
        self.by_user.get(user_id).map_or(0, |count| *count)
    }

    /// Any redemption, released ones included: an order id redeems a coupon once in its life.
    fn has_order(&self, order_id: &str) -> bool {
        self.orders.contains_key(order_id)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn redemption(user: &str) -> Redemption {
        Redemption {
            id: Uuid::new_v4(),
            user_id: user.into(),
            order_value: Cents::new(1000).unwrap(),
            discount: Cents::new(100).unwrap(),
            state: RedemptionState::Pending,
        }
    }

    const NO_LIMITS: Limits = Limits { total: None, per_user: None };

    #[test]
    fn reserve_confirm_release_round_trip() {
        let usage = CouponUsage::default();
        usage.reserve("o1", redemption("u1"), NO_LIMITS).unwrap();
        assert_eq!((usage.total(), usage.by_user("u1")), (1, 1));
        assert_eq!(usage.redemption("o1").unwrap().state, RedemptionState::Pending);
        assert_eq!(usage.begin_release("o1"), Err(ReleaseError::Busy), "pending cannot be released");
        usage.confirm("o1");
        let taken = usage.reserve("o1", redemption("u2"), NO_LIMITS).unwrap_err();
        assert!(matches!(taken, ReserveError::OrderTaken(r) if &*r.user_id == "u1"));
        let held = usage.begin_release("o1").unwrap();
        assert_eq!(&*held.user_id, "u1");
        assert_eq!(usage.total(), 1, "counts drop only once the release is durable");
        usage.finish_release("o1");
        assert_eq!((usage.total(), usage.by_user("u1")), (0, 0));
        assert_eq!(usage.begin_release("o1"), Err(ReleaseError::AlreadyReleased));
        assert!(usage.has_order("o1"), "a released order id stays used");
        assert_eq!(usage.begin_release("o9"), Err(ReleaseError::NotFound));
    }

    #[test]
    fn failures_undo_every_step() {
        let usage = CouponUsage::default();
        let limits = Limits { total: Some(2), per_user: Some(1) };
        usage.reserve("o1", redemption("u1"), limits).unwrap();
        assert_eq!(
            usage.reserve("o2", redemption("u1"), limits),
            Err(ReserveError::Limit(Reason::UserUsageLimitReached))
        );
        assert_eq!((usage.total(), usage.by_user("u1"), usage.has_order("o2")), (1, 1, false));
        usage.reserve("o3", redemption("u2"), limits).unwrap();
        assert_eq!(usage.reserve("o4", redemption("u3"), limits), Err(ReserveError::Limit(Reason::UsageLimitReached)));
        assert_eq!((usage.total(), usage.by_user("u3"), usage.has_order("o4")), (2, 0, false));
        usage.cancel("o3");
        assert_eq!((usage.total(), usage.by_user("u2"), usage.has_order("o3")), (1, 0, false));
        usage.confirm("o1");
        usage.begin_release("o1").unwrap();
        usage.abort_release("o1");
        assert_eq!(usage.redemption("o1").unwrap().state, RedemptionState::Live);
        assert_eq!(usage.total(), 1);
    }

    #[test]
    fn concurrent_buyers_never_exceed_the_limits() {
        for _ in 0..20 {
            let usage = Arc::new(CouponUsage::default());
            let won = Arc::new(AtomicUsize::new(0));
            let limits = Limits { total: Some(50), per_user: Some(3) };
            let threads: Vec<_> = (0..8)
                .map(|t| {
                    let (usage, won) = (usage.clone(), won.clone());
                    std::thread::spawn(move || {
                        for n in 0..100 {
                            let user = format!("u{}", n % 20);
                            if usage.reserve(&format!("t{t}-o{n}"), redemption(&user), limits).is_ok() {
                                won.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            for thread in threads {
                thread.join().unwrap();
            }
            assert_eq!(won.load(Ordering::Relaxed), 50);
            assert_eq!(usage.total(), 50);
            let per_user_max = (0..20).map(|u| usage.by_user(&format!("u{u}"))).max().unwrap();
            assert!(per_user_max <= 3);
            assert_eq!((0..20).map(|u| usage.by_user(&format!("u{u}"))).sum::<u32>(), 50);
        }
    }
}
