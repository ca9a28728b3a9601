//! Live usage of one coupon: lock-free counters that outlive every catalog snapshot.

use std::sync::atomic::{AtomicU32, Ordering};

use dashmap::DashMap;
use uuid::Uuid;

use crate::domain::money::Cents;
use crate::domain::rules::Usage;

/// A live (unreleased) redemption of a coupon by an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redemption {
    pub id: Uuid,
    pub user_id: Box<str>,
    pub discount: Cents,
    pub final_amount: Cents,
}

/// The live redemptions of one coupon: a total, a count per user and the orders.
///
/// Invariant: `total` equals the number of entries in `orders` and the sum of `by_user`
/// whenever no redemption is being recorded.
#[derive(Debug, Default)]
pub struct CouponUsage {
    total: AtomicU32,
    by_user: DashMap<Box<str>, u32, ahash::RandomState>,
    orders: DashMap<Box<str>, Redemption, ahash::RandomState>,
}

impl CouponUsage {
    /// Records a redemption known to be live, as read from PostgreSQL at start-up.
    pub fn record_loaded(&self, order_id: &str, redemption: Redemption) {
        let user_id = redemption.user_id.clone();
        if self.orders.insert(order_id.into(), redemption).is_none() {
            *self.by_user.entry(user_id).or_insert(0) += 1;
            self.total.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The redemption held by `order_id`, if any.
    pub fn redemption(&self, order_id: &str) -> Option<Redemption> {
        self.orders.get(order_id).map(|entry| entry.value().clone())
    }
}

impl Usage for CouponUsage {
    fn total(&self) -> u32 {
        self.total.load(Ordering::Acquire)
    }

    fn by_user(&self, user_id: &str) -> u32 {
        self.by_user.get(user_id).map_or(0, |count| *count)
    }

    fn has_order(&self, order_id: &str) -> bool {
        self.orders.contains_key(order_id)
    }
}
