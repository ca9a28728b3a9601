//! The ledger of uses: who redeemed or holds what, and the counts the limits are checked
//! against: this instance's own uses as they happen (PostgreSQL lags them by the journal),
//! the other instances' as they reach PostgreSQL. Alone, it is the authority for the limits;
//! among instances the totals are the quota leases' (`engine::leases`).
//!
//! It costs nothing until used: a coupon nobody redeemed has no entry here at all. Ids are
//! kept as 64-bit keyed hashes, never as text (PostgreSQL keeps the text), so a remembered
//! redemption costs the same ~100 bytes whatever the length of its order and user ids.
//!
//! Locks: every map is split into shards behind short `std` mutexes (no `.await` is ever
//! held across one); a check-and-change of one count happens under its shard's lock.
//!
//! A slot's life ([`SlotState`]); every change is one `Ledger::update` under the shard lock,
//! and only `Taking` and `Changing` wait on a record (a journal append or a PostgreSQL call):
//!
//! | from | event | to | where |
//! | --- | --- | --- | --- |
//! | (none), or `Released` of a hold | the limit chain takes a new use | `Taking` | `take.rs` (`OrderOnce`) |
//! | `Taking` | recorded (journal appended, or claimed) | `Held` / `Live` | `take.rs` `settle_taken` |
//! | `Taking` | not recorded (refused, failed) | removed, or back as it was | `take.rs` `Reservation` drop |
//! | `Held` | confirm, before the deadline | `Changing` → `Live` | `take.rs` `confirm`, `cluster.rs` `change_in_postgres` |
//! | `Held` / `Live` | release | `Changing` → `Released { CancelledHold / Redemption }` | `release.rs` `give_back`, `cluster.rs` |
//! | `Held` | deadline passed | `Changing` → `Released { ExpiredHold }` | `release.rs` `expire`, `cluster.rs` |
//! | `Changing` | the record failed | back to what it was | the same functions |
//! | any settled state | a newer revision from PostgreSQL (the feed) | that revision's state | `cluster.rs` `merge_uses` |
//! | `Released` | `ledger.released_retention` passed | forgotten (the filter keeps the order) | `release.rs` `forget_released` |

use std::hash::Hash;
use std::num::{NonZeroI64, NonZeroU32, NonZeroU64};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use uuid::Uuid;

use crate::domain::coupon::{BatchId, CampaignId, CouponId};
use crate::domain::event::CartUse;
use crate::domain::money::Cents;

/// Shards per map; a power of two.
const SHARDS: usize = 64;

/// A user or order id as the ledger knows it: a keyed hash of its text.
pub type IdKey = u64;
/// One redemption per order and coupon: the coupon (a batch's rule for a bulk code) and the
/// order.
pub type OrderKey = (CouponId, IdKey);

/// What a count is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tally {
    /// Live uses of a coupon (a batch's rule counts every code of the batch).
    Coupon(CouponId),
    /// Live uses of one bulk code.
    Code(BatchId, u32),
    /// Live uses, and their discounts, of a campaign.
    Campaign(CampaignId),
    /// A user's live uses of a coupon.
    UserCoupon(CouponId, IdKey),
    /// A user's live uses in a campaign.
    UserCampaign(CampaignId, IdKey),
    /// A user's live holds, across every coupon.
    UserHolds(IdKey),
    /// A coupon's live holds (a batch's rule counts every code of the batch).
    CouponHolds(CouponId),
}

/// A count: live uses and, for a campaign, the sum of their discounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Count {
    pub live: u32,
    pub spent: u64,
}

/// What one [`Ledger::take`] adds, and the bounds it must stay within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    pub uses: u32,
    pub limit: Option<u32>,
    pub spent: Cents,
    pub budget: Option<Cents>,
}

impl Take {
    /// One use, within `limit`.
    pub fn one(limit: Option<u32>) -> Take {
        Take { uses: 1, limit, spent: Cents::ZERO, budget: None }
    }

    /// Money only, within `budget`.
    pub fn money(spent: Cents, budget: Option<Cents>) -> Take {
        Take { uses: 0, limit: None, spent, budget }
    }
}

/// Where a redemption is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Its uses are taken; the journal append that makes it a redemption (or a hold) is in
    /// flight.
    Taking { hold: bool },
    /// A durable hold, given back by itself at the deadline (ms since the epoch).
    Held { until: i64 },
    /// A durable redemption.
    Live,
    /// A confirmation or release is in flight; the uses are still taken.
    Changing,
    /// Given back at `at` (ms since the epoch).
    Released { at: i64, ended: Ended },
}

impl SlotState {
    /// A hold's deadline.
    pub fn deadline(self) -> Option<i64> {
        match self {
            SlotState::Held { until } => Some(until),
            _ => None,
        }
    }

    /// Whether two states say the same of a use (a release's instant, and whether a hold
    /// expired or was cancelled, aside). A released redemption and a released hold differ:
    /// one leaves the order spent, the other free.
    pub(crate) fn same_kind(self, other: SlotState) -> bool {
        match (self, other) {
            (SlotState::Held { until: a }, SlotState::Held { until: b }) => a == b,
            (SlotState::Live, SlotState::Live) => true,
            (SlotState::Released { ended: a, .. }, SlotState::Released { ended: b, .. }) => {
                a.order_spent() == b.order_spent()
            }
            _ => false,
        }
    }
}

/// What a released slot was, and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A released redemption: its order id stays spent.
    Redemption,
    /// A hold cancelled by a release: the order is free again.
    CancelledHold,
    /// A hold that reached its deadline: the order is free again.
    ExpiredHold,
}

impl Ended {
    /// Whether the order may not take this coupon again.
    pub(crate) fn order_spent(self) -> bool {
        self == Ended::Redemption
    }
}

/// One redemption or hold, as the ledger remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub id: Uuid,
    /// Bumped by every event of this redemption (see `domain::event`).
    pub rev: u32,
    pub user: IdKey,
    pub order_value: Cents,
    pub discount: Cents,
    /// The bulk code used, as (batch, position) ([`code_slot`]).
    pub code: Option<(NonZeroU32, u32)>,
    /// The campaign whose use and budget this took (none for a zero discount).
    pub campaign: Option<NonZeroI64>,
    /// Which per-user counts it took.
    pub counted: Counted,
    /// Made by another instance: changed only through PostgreSQL, never from the journal.
    pub foreign: bool,
    pub state: SlotState,
}

/// What a use taken with §9's fields (API.md §9) adds to its slot: the request's
/// fingerprint, which a replay must match, and what came off shipping (part of `discount`,
/// the code's effect, but not of the order's final amount). Kept beside the slots, only for
/// such uses, so that every other use keeps its ~100 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CartMark {
    pub fingerprint: Option<NonZeroU64>,
    pub shipping: Cents,
}

impl CartMark {
    /// A use's mark, from its record.
    pub fn of(cart: Option<&CartUse>) -> CartMark {
        cart.map_or(CartMark::default(), |c| CartMark {
            fingerprint: fingerprint(&c.items_hash),
            shipping: Cents::new(c.shipping_discount).unwrap_or(Cents::ZERO),
        })
    }
}

/// The part of an items hash the ledger keeps: its first 8 bytes (a replay with another cart
/// passing for the same is a 2^-64 chance).
pub fn fingerprint(items_hash: &[u8]) -> Option<NonZeroU64> {
    let head: [u8; 8] = items_hash.get(..8)?.try_into().ok()?;
    Some(NonZeroU64::new(u64::from_le_bytes(head)).unwrap_or(NonZeroU64::MIN))
}

/// The per-user counts a use took. They are kept only where a per-user limit exists (a
/// count nobody checks would cost every redemption a map entry); a limit set later is
/// back-filled from the slots ([`Ledger::count_users`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counted {
    pub coupon_user: bool,
    pub campaign_user: bool,
}

/// A bulk code as a slot keeps it: batch ids are counted from 1 and stay far below 2^32.
pub(crate) fn code_slot((batch, index): (BatchId, u32)) -> (NonZeroU32, u32) {
    let batch = u32::try_from(batch).ok().and_then(NonZeroU32::new).expect("batch ids are in 1..2^32");
    (batch, index)
}

impl Slot {
    /// The bulk code used, as the ledger's tallies name it.
    pub fn code(&self) -> Option<(BatchId, u32)> {
        self.code.map(|(batch, index)| (BatchId::from(batch.get()), index))
    }

    /// The campaign whose use this took.
    pub fn campaign(&self) -> Option<CampaignId> {
        self.campaign.map(NonZeroI64::get)
    }
}

impl Slot {
    /// Whether the slot's uses are taken (it counts against the limits).
    pub fn counts(&self) -> bool {
        !matches!(self.state, SlotState::Released { .. })
    }

    /// Whether a journal append about it is in flight.
    pub(crate) fn is_settling(&self) -> bool {
        matches!(self.state, SlotState::Taking { .. } | SlotState::Changing)
    }

    /// Whether it is or was a hold (not confirmed).
    pub(crate) fn is_hold(&self) -> bool {
        matches!(self.state, SlotState::Held { .. } | SlotState::Taking { hold: true })
    }
}

/// One shard's map: its entries dense in one vector, and a table of their indices. A
/// `HashMap` spreads entries over twice the buckets it needs right after it grows, and moving
/// them touches every page: measured from outside (`tools/rss-slope`), a remembered
/// redemption cost 240–262 resident bytes that way and 191–212 like this (API.md §8's budget
/// is 256), for an extra step per lookup. Forgetting leaves room that is used again
/// (`remembering_and_forgetting_round_after_round_keeps_the_same_capacity`).
type ShardMap<K, V> = indexmap::IndexMap<K, V, ahash::RandomState>;

/// A map split over shards.
#[derive(Debug)]
struct Shards<K, V> {
    shards: Box<[Mutex<ShardMap<K, V>>]>,
    hasher: ahash::RandomState,
}

impl<K: Hash + Eq, V> Shards<K, V> {
    fn new() -> Shards<K, V> {
        Shards { shards: (0..SHARDS).map(|_| Mutex::default()).collect(), hasher: ahash::RandomState::new() }
    }

    fn index(&self, key: &K) -> usize {
        (self.hasher.hash_one(key) >> 58) as usize % SHARDS
    }

    /// Runs `f` on the map holding `key`, under its lock.
    fn with<R>(&self, key: &K, f: impl FnOnce(&mut ShardMap<K, V>) -> R) -> R {
        f(&mut self.shards[self.index(key)].lock().expect("ledger shard"))
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().expect("ledger shard").len()).sum()
    }
}

/// Every use this instance knows of.
#[derive(Debug)]
pub struct Ledger {
    keys: ahash::RandomState,
    tallies: Shards<Tally, Count>,
    orders: Shards<OrderKey, Slot>,
    /// The marks of the slots of uses taken with a cart. Locked only inside the lock of the
    /// slot's order shard, so a slot and its mark always change together.
    carts: Shards<OrderKey, CartMark>,
    /// One per order shard: woken whenever a slot of that shard stops settling.
    settled: Box<[Notify]>,
}

impl Default for Ledger {
    fn default() -> Ledger {
        Ledger {
            keys: ahash::RandomState::new(),
            tallies: Shards::new(),
            orders: Shards::new(),
            carts: Shards::new(),
            settled: (0..SHARDS).map(|_| Notify::new()).collect(),
        }
    }
}

impl Ledger {
    /// The key of a user or order id (already normalised).
    pub(crate) fn id_key(&self, id: &str) -> IdKey {
        self.keys.hash_one(id)
    }

    /// The count of `tally`.
    pub fn count(&self, tally: Tally) -> Count {
        self.tallies.with(&tally, |map| map.get(&tally).copied().unwrap_or_default())
    }

    /// Adds `take.uses` uses and `take.spent` to `tally` if that keeps the uses within
    /// `take.limit` and the sum within `take.budget`; in one step, so two racers cannot both
    /// pass.
    pub fn take(&self, tally: Tally, take: Take) -> bool {
        self.tallies.with(&tally, |map| {
            let count = map.entry(tally).or_default();
            let live = count.live.saturating_add(take.uses);
            let spent = count.spent.saturating_add(take.spent.get());
            let over_limit = take.uses > 0 && take.limit.is_some_and(|limit| live > limit);
            let over_budget = take.spent > Cents::ZERO && take.budget.is_some_and(|budget| spent > budget.get());
            if over_limit || over_budget {
                if *count == Count::default() {
                    map.swap_remove(&tally);
                }
                return false;
            }
            *count = Count { live, spent };
            true
        })
    }

    /// Gives back `uses` uses and `spent` of `tally`.
    pub(crate) fn give_back(&self, tally: Tally, uses: u32, spent: Cents) {
        self.tallies.with(&tally, |map| {
            if let Some(count) = map.get_mut(&tally) {
                count.live = count.live.saturating_sub(uses);
                count.spent = count.spent.saturating_sub(spent.get());
                if *count == Count::default() {
                    map.swap_remove(&tally);
                }
            }
        });
    }

    /// The slot of `key`, if any.
    pub fn slot(&self, key: OrderKey) -> Option<Slot> {
        self.orders.with(&key, |map| map.get(&key).copied())
    }

    /// The slot of `key` with its cart mark (the default one for a use without a cart).
    pub(crate) fn slot_with_cart(&self, key: OrderKey) -> Option<(Slot, CartMark)> {
        self.orders.with(&key, |map| {
            let slot = map.get(&key).copied()?;
            Some((slot, self.carts.with(&key, |carts| carts.get(&key).copied().unwrap_or_default())))
        })
    }

    /// Sets the cart mark of the slot of `key` (if it has one): the default mark removes it.
    pub(crate) fn mark(&self, key: OrderKey, mark: CartMark) {
        self.orders.with(&key, |map| {
            if map.contains_key(&key) {
                self.carts.with(&key, |carts| match mark == CartMark::default() {
                    true => carts.swap_remove(&key),
                    false => carts.insert(key, mark),
                });
            }
        });
    }

    /// Whether `key` holds a slot that spends its order id: a live or held use, or a released
    /// redemption.
    pub(crate) fn order_taken(&self, key: OrderKey) -> bool {
        self.slot(key)
            .is_some_and(|slot| !matches!(slot.state, SlotState::Released { ended, .. } if !ended.order_spent()))
    }

    /// Changes the slot of `key` under its shard's lock: `f` gets the slot (or `None`) and
    /// returns what to store (`None` removes it) and a result. Waiters are woken when a slot
    /// stops settling.
    pub fn update<R>(&self, key: OrderKey, f: impl FnOnce(Option<Slot>) -> (Option<Slot>, R)) -> R {
        self.update_marked(key, None, f)
    }

    /// [`Ledger::update`]; when `f` stores another slot than it was given and `mark` is set,
    /// that slot's cart mark becomes `mark`, under the same lock. A removed slot's mark goes
    /// with it.
    pub(crate) fn update_marked<R>(
        &self,
        key: OrderKey,
        mark: Option<CartMark>,
        f: impl FnOnce(Option<Slot>) -> (Option<Slot>, R),
    ) -> R {
        let (was_settling, now_settling, result) = self.orders.with(&key, |map| {
            let current = map.get(&key).copied();
            let (next, result) = f(current);
            let was = current.is_some_and(|s| s.is_settling());
            let now = next.is_some_and(|s| s.is_settling());
            match next {
                Some(slot) => {
                    if let Some(mark) = mark.filter(|_| current != Some(slot)) {
                        self.carts.with(&key, |carts| match mark == CartMark::default() {
                            true => carts.swap_remove(&key),
                            false => carts.insert(key, mark),
                        });
                    }
                    map.insert(key, slot);
                }
                None => {
                    if map.swap_remove(&key).is_some() {
                        self.carts.with(&key, |carts| carts.swap_remove(&key));
                    }
                }
            }
            (was, now, result)
        });
        if was_settling && !now_settling {
            self.settled[self.orders.index(&key)].notify_waiters();
        }
        result
    }

    /// The slot of `key` once it is not settling, waiting at most `within` (`Err` on timeout).
    pub(crate) async fn settled(&self, key: OrderKey, within: Duration) -> Result<Option<Slot>, ()> {
        let notify = &self.settled[self.orders.index(&key)];
        let wait = async {
            loop {
                let woken = notify.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                match self.slot(key) {
                    Some(slot) if slot.is_settling() => woken.await,
                    other => return other,
                }
            }
        };
        tokio::time::timeout(within, wait).await.map_err(|_| ())
    }

    /// Removes the slots `f` says to forget (released ones past their retention); returns
    /// their keys.
    pub(crate) fn forget(&self, mut f: impl FnMut(&Slot) -> bool) -> Vec<OrderKey> {
        let mut forgotten = Vec::new();
        for shard in self.orders.shards.iter() {
            let mut shard = shard.lock().expect("ledger shard");
            let first = forgotten.len();
            shard.retain(|key, slot| {
                let forget = f(slot);
                if forget {
                    forgotten.push(*key);
                }
                !forget
            });
            for key in &forgotten[first..] {
                self.carts.with(key, |carts| carts.swap_remove(key));
            }
        }
        forgotten
    }

    /// Number of remembered redemptions and holds (released ones included).
    pub fn remembered(&self) -> usize {
        self.orders.len()
    }

    /// Takes the per-user counts the slots have not taken but now need (a per-user limit set
    /// after they were taken): `needs(coupon, campaign)` says which. Returns how many slots
    /// were counted.
    pub(crate) fn count_users(&self, needs: impl Fn(CouponId, Option<CampaignId>) -> Counted) -> usize {
        let mut counted = 0;
        for shard in self.orders.shards.iter() {
            // Lock order: an order shard, then tally shards; nothing takes them the other way.
            for ((coupon, _), slot) in shard.lock().expect("ledger shard").iter_mut() {
                if slot.counts() && self.count_user(*coupon, slot, needs(*coupon, slot.campaign())) {
                    counted += 1;
                }
            }
        }
        counted
    }

    /// Takes what `slot` now needs of `needed` and has not taken; true if it took any.
    fn count_user(&self, coupon: CouponId, slot: &mut Slot, needed: Counted) -> bool {
        let mut took = false;
        if needed.coupon_user && !slot.counted.coupon_user {
            self.take(Tally::UserCoupon(coupon, slot.user), Take::one(None));
            slot.counted.coupon_user = true;
            took = true;
        }
        if let Some(campaign) = slot.campaign().filter(|_| needed.campaign_user && !slot.counted.campaign_user) {
            self.take(Tally::UserCampaign(campaign, slot.user), Take::one(None));
            slot.counted.campaign_user = true;
            took = true;
        }
        took
    }

    /// [`Ledger::count_users`] for one slot.
    pub(crate) fn count_user_of(&self, key: OrderKey, needed: Counted) {
        let mut shard = self.orders.shards[self.orders.index(&key)].lock().expect("ledger shard");
        if let Some(slot) = shard.get_mut(&key).filter(|s| s.counts()) {
            self.count_user(key.0, slot, needed);
        }
    }

    /// Number of coupons with a live use.
    pub(crate) fn coupons_in_use(&self) -> usize {
        self.tallies
            .shards
            .iter()
            .map(|s| s.lock().expect("ledger shard").keys().filter(|t| matches!(t, Tally::Coupon(_))).count())
            .sum()
    }

    /// Number of counts held.
    #[cfg(test)]
    pub(crate) fn tally_count(&self) -> usize {
        self.tallies.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn cents(n: u64) -> Cents {
        Cents::new(n).unwrap()
    }

    #[test]
    fn takes_within_limits_and_budgets_and_forgets_zero_counts() {
        let ledger = Ledger::default();
        let tally = Tally::Campaign(1);
        let both = |spent| Take { uses: 1, limit: Some(2), spent: cents(spent), budget: Some(cents(500)) };
        assert!(ledger.take(tally, both(300)));
        assert!(!ledger.take(tally, both(300)), "600 > 500");
        assert!(ledger.take(tally, both(200)), "exactly the budget");
        assert!(!ledger.take(tally, Take::one(Some(2))), "the cap");
        assert!(ledger.take(tally, Take::money(Cents::ZERO, Some(cents(500)))), "nothing more is within any budget");
        assert_eq!(ledger.count(tally), Count { live: 2, spent: 500 });
        ledger.give_back(tally, 1, cents(300));
        ledger.give_back(tally, 1, cents(200));
        assert_eq!(ledger.count(tally), Count::default());
        assert_eq!(ledger.tally_count(), 0, "a count back at zero costs nothing");
        assert!(!ledger.take(Tally::Coupon(1), Take::one(Some(0))));
        assert_eq!(ledger.tally_count(), 0, "a refused take leaves nothing behind");
    }

    #[test]
    fn a_remembered_redemption_is_small_whatever_its_ids() {
        // Key and slot, stored densely with an 8-byte hash; the index table adds 8 bytes and a
        // control byte a bucket, at most 16/7 buckets an entry right after it grew:
        // 104 + 9 × 16/7 < 125 resident bytes (tools/rss-slope measures ~200 with everything).
        let entry = std::mem::size_of::<(OrderKey, Slot)>();
        assert!(entry <= 96, "{entry} bytes");
        let ledger = Ledger::default();
        let (short, long) = (ledger.id_key("o"), ledger.id_key(&"o".repeat(128)));
        assert_ne!(short, long);
        assert_eq!(std::mem::size_of_val(&short), 8);
    }

    #[test]
    fn concurrent_takes_never_pass_a_limit() {
        for _ in 0..20 {
            let ledger = Arc::new(Ledger::default());
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let ledger = ledger.clone();
                    std::thread::spawn(move || {
                        (0..100).filter(|_| ledger.take(Tally::Coupon(7), Take::one(Some(50)))).count()
                    })
                })
                .collect();
            let won: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
            assert_eq!(won, 50);
            assert_eq!(ledger.count(Tally::Coupon(7)).live, 50);
        }
    }

    /// A redemption being taken.
    fn taking() -> Slot {
        Slot {
            id: Uuid::nil(),
            rev: 1,
            user: 9,
            order_value: cents(1),
            discount: Cents::ZERO,
            code: None,
            campaign: None,
            counted: Counted::default(),
            foreign: false,
            state: SlotState::Taking { hold: false },
        }
    }

    #[tokio::test]
    async fn waiters_wake_when_a_slot_settles() {
        let ledger = Arc::new(Ledger::default());
        let key = (1, ledger.id_key("o"));
        let slot = taking();
        ledger.update(key, |_| (Some(slot), ()));
        assert_eq!(ledger.settled(key, Duration::from_millis(20)).await, Err(()));
        let waiter = tokio::spawn({
            let ledger = ledger.clone();
            async move { ledger.settled(key, Duration::from_secs(5)).await }
        });
        tokio::task::yield_now().await;
        ledger.update(key, |s| (s.map(|s| Slot { state: SlotState::Live, ..s }), ()));
        assert_eq!(waiter.await.unwrap().unwrap().map(|s| s.state), Some(SlotState::Live));
    }

    #[test]
    fn remembering_and_forgetting_round_after_round_keeps_the_same_capacity() {
        let ledger = Ledger::default();
        let slot = taking();
        let capacity = |ledger: &Ledger| -> usize {
            ledger.orders.shards.iter().map(|s| s.lock().expect("ledger shard").capacity()).sum()
        };
        let mut capacities = Vec::new();
        for round in 0..4u64 {
            for n in 0..10_000u64 {
                let key = (1, ledger.id_key(&format!("o{round}-{n}")));
                ledger.update(key, |_| (Some(slot), ()));
                ledger.update(key, |s| (s.map(|s| Slot { state: SlotState::Live, ..s }), ()));
                let released = SlotState::Released { at: 1, ended: Ended::Redemption };
                ledger.update(key, |s| (s.map(|s| Slot { state: released, ..s }), ()));
            }
            capacities.push(capacity(&ledger));
            assert_eq!(ledger.forget(|_| true).len(), 10_000);
        }
        assert!(capacities.windows(2).all(|w| w[0] == w[1]), "forgotten slots' room is used again: {capacities:?}");
    }
}
