//! Orders whose uses were taken as a set of codes (API.md §10): which set each order holds,
//! for the set's replays and release, and for the rule that an order's code set is fixed at
//! its first redeem. An order taken one code at a time has no entry; nor has one whose set was
//! released whole.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use uuid::Uuid;

use crate::domain::coupon::CouponId;
use crate::domain::event::GroupCode;
use crate::engine::ledger::IdKey;

/// The set an order holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    /// [`crate::domain::identity::group_id`] of the order and the codes the request named.
    pub id: Uuid,
    pub user: IdKey,
    /// A request is taking it now: others wait for it to settle.
    pub taking: bool,
    /// The coupons whose uses it took, in ascending id order.
    pub members: Vec<CouponId>,
    /// Every code the request named, in its order, with what became of it.
    pub codes: Vec<GroupCode>,
}

/// The sets, by order.
#[derive(Debug, Default)]
pub(crate) struct Groups {
    orders: Mutex<HashMap<IdKey, Group, ahash::RandomState>>,
    /// Entries, so that an order taken one code at a time looks only at a counter while there
    /// are none.
    len: AtomicUsize,
}

impl Groups {
    /// The set `order` holds, if any.
    pub(crate) fn of(&self, order: IdKey) -> Option<Group> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.orders.lock().expect("groups").get(&order).cloned()
    }

    /// Starts taking `group` for `order`; the set the order holds already, if it has one.
    pub(crate) fn begin(&self, order: IdKey, id: Uuid, user: IdKey) -> Result<(), Group> {
        let mut orders = self.orders.lock().expect("groups");
        if let Some(existing) = orders.get(&order) {
            return Err(existing.clone());
        }
        orders.insert(order, Group { id, user, taking: true, members: Vec::new(), codes: Vec::new() });
        self.len.store(orders.len(), Ordering::Release);
        Ok(())
    }

    /// The set being taken for `order` is recorded: these are its members and codes.
    pub(crate) fn settle(&self, order: IdKey, members: Vec<CouponId>, codes: Vec<GroupCode>) {
        if let Some(group) = self.orders.lock().expect("groups").get_mut(&order) {
            *group = Group { taking: false, members, codes, ..group.clone() };
        }
    }

    /// A set known from PostgreSQL (at start-up): `member` is one of its uses.
    pub(crate) fn load(&self, order: IdKey, id: Uuid, user: IdKey, member: CouponId, codes: &[GroupCode]) {
        let mut orders = self.orders.lock().expect("groups");
        let group = orders.entry(order).or_insert_with(|| Group {
            id,
            user,
            taking: false,
            members: Vec::new(),
            codes: codes.to_vec(),
        });
        if group.id == id
            && let Err(at) = group.members.binary_search(&member)
        {
            group.members.insert(at, member);
        }
        self.len.store(orders.len(), Ordering::Release);
    }

    /// `order` holds no set any more (taking it failed, or it was released whole); only the
    /// set `id` is removed.
    pub(crate) fn remove(&self, order: IdKey, id: Uuid) {
        let mut orders = self.orders.lock().expect("groups");
        if orders.get(&order).is_some_and(|g| g.id == id) {
            orders.remove(&order);
            self.len.store(orders.len(), Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_holds_one_set_and_removing_another_changes_nothing() {
        let groups = Groups::default();
        let (order, user): (IdKey, IdKey) = (1, 2);
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(groups.of(order), None);
        groups.begin(order, a, user).unwrap();
        let taking = groups.begin(order, b, user).unwrap_err();
        assert!(taking.taking && taking.id == a);
        groups.settle(order, vec![3, 5], vec![GroupCode { code: "X".into(), reason: None }]);
        assert_eq!(groups.of(order).map(|g| (g.taking, g.members)), Some((false, vec![3, 5])));
        groups.remove(order, b);
        assert!(groups.of(order).is_some(), "another set's removal");
        groups.remove(order, a);
        assert_eq!(groups.of(order), None);
        groups.load(order, b, user, 9, &[]);
        groups.load(order, b, user, 4, &[]);
        assert_eq!(groups.of(order).map(|g| g.members), Some(vec![4, 9]));
    }
}
