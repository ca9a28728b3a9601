//! Every coupon and campaign definition at one moment, and the store that publishes them.
//!
//! A [`Catalog`] is immutable once published. Coupons are split over [`SHARDS`] shards by
//! the hash of their code (and indexed again by id), so a change copies only the shards it
//! touches: editing one coupon among a million copies a few thousand, not a million.
//! Readers never lock: one `ArcSwap` load, one shard, one probe. A coupon lives in its
//! shard's table itself, its code inline, so that finding it at a million coupons costs two
//! cache misses rather than four.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use chrono::{DateTime, Utc};
use hashbrown::HashTable;

use crate::domain::campaign::Campaign;
use crate::domain::coupon::{CampaignId, Coupon, CouponId};
use crate::engine::codes::{BatchCodes, CodeIndex, CodeRef};

/// Shards per index; a power of two.
pub const SHARDS: usize = 256;

/// Coupons by code.
type ByCode = HashTable<Coupon>;
/// The code hash of every coupon by id; a batch's rule (no code of its own) is kept whole.
type ById = HashMap<CouponId, Indexed, ahash::RandomState>;

/// Where a coupon is found from its id.
#[derive(Debug, Clone)]
enum Indexed {
    /// In the code tables, under this hash.
    ByCode(u64),
    /// A batch's rule, reached through its batch's codes.
    Rule(Arc<Coupon>),
}

/// What a code names.
#[derive(Debug, Clone, Copy)]
pub enum Found<'a> {
    /// A coupon with that code.
    Coupon(&'a Coupon),
    /// A bulk code, with its batch and the batch's rule.
    Code { rule: &'a Coupon, code: CodeRef, batch: &'a BatchCodes },
}

impl<'a> Found<'a> {
    /// The coupon whose rule applies: the coupon itself, or the batch's rule.
    pub fn coupon(&self) -> &'a Coupon {
        match self {
            Found::Coupon(coupon) => coupon,
            Found::Code { rule, .. } => rule,
        }
    }
}

/// Every definition known to the service at one moment. Never changed once published.
#[derive(Debug, Clone)]
pub struct Catalog {
    by_code: Arc<[Arc<ByCode>]>,
    by_id: Arc<[Arc<ById>]>,
    campaigns: Arc<HashMap<CampaignId, Arc<Campaign>, ahash::RandomState>>,
    codes: Arc<CodeIndex>,
    hasher: ahash::RandomState,
    coupons: usize,
}

/// Coupons to put in (or replace) and ids to take out.
#[derive(Debug, Default)]
pub struct CouponChanges {
    pub upserts: Vec<Coupon>,
    pub deleted: Vec<CouponId>,
}

impl Catalog {
    fn empty(hasher: ahash::RandomState) -> Catalog {
        Catalog {
            by_code: (0..SHARDS).map(|_| Arc::new(ByCode::new())).collect(),
            by_id: (0..SHARDS).map(|_| Arc::new(ById::default())).collect(),
            campaigns: Arc::default(),
            codes: Arc::new(CodeIndex::default()),
            hasher,
            coupons: 0,
        }
    }

    /// What `code` (normalised) names, if anything. A coupon's own code wins over a bulk
    /// code, although the database keeps the two apart.
    pub fn find(&self, code: &str) -> Option<Found<'_>> {
        let hash = self.hasher.hash_one(code);
        if !self.codes.in_generated_shape(code) {
            let shard = &self.by_code[shard_of(hash)];
            if let Some(coupon) = shard.find(hash, |c| &*c.code == code) {
                return Some(Found::Coupon(coupon));
            }
        }
        let (code, batch) = self.codes.find(code, hash)?;
        let rule = self.coupon_by_id(code.rule)?;
        Some(Found::Code { rule, code, batch })
    }

    /// The coupon with this id (batch rules included).
    pub(crate) fn coupon_by_id(&self, id: CouponId) -> Option<&Coupon> {
        match self.by_id[shard_of(self.hasher.hash_one(id))].get(&id)? {
            Indexed::ByCode(hash) => self.by_code[shard_of(*hash)].find(*hash, |c| c.id == id),
            Indexed::Rule(rule) => Some(rule),
        }
    }

    /// The campaign with this id.
    pub fn campaign(&self, id: CampaignId) -> Option<&Arc<Campaign>> {
        self.campaigns.get(&id)
    }

    /// Every campaign.
    pub fn campaigns(&self) -> impl Iterator<Item = &Arc<Campaign>> {
        self.campaigns.values()
    }

    /// The bulk codes.
    pub fn codes(&self) -> &CodeIndex {
        &self.codes
    }

    /// Number of coupons, batch rules included.
    pub(crate) fn coupon_count(&self) -> usize {
        self.coupons
    }

    /// A copy with `changes` applied; a row older than the cached one is ignored. Returns
    /// the copy and how many coupons changed.
    fn with_coupon_changes(&self, changes: CouponChanges) -> (Catalog, usize) {
        let mut next = self.clone();
        let mut by_code: Vec<Option<ByCode>> = vec![None; SHARDS];
        let mut by_id: Vec<Option<ById>> = vec![None; SHARDS];
        let mut changed = 0;
        let mut edit = Edit { catalog: self, by_code: &mut by_code, by_id: &mut by_id, coupons: &mut next.coupons };
        let fetched: std::collections::HashSet<CouponId> = changes.upserts.iter().map(|c| c.id).collect();
        for id in changes.deleted.into_iter().filter(|id| !fetched.contains(id)) {
            changed += usize::from(edit.remove(id).is_some());
        }
        for coupon in changes.upserts {
            let current = edit.get(coupon.id);
            if current.is_some_and(|cached| cached.version > coupon.version || cached == coupon) {
                continue;
            }
            edit.remove(coupon.id);
            edit.insert(coupon);
            changed += 1;
        }
        next.by_code = self.by_code.iter().zip(by_code).map(|(o, n)| n.map_or_else(|| o.clone(), Arc::new)).collect();
        next.by_id = self.by_id.iter().zip(by_id).map(|(o, n)| n.map_or_else(|| o.clone(), Arc::new)).collect();
        (next, changed)
    }
}

/// Copy-on-write access to the shards of a catalog being changed.
struct Edit<'a> {
    catalog: &'a Catalog,
    by_code: &'a mut [Option<ByCode>],
    by_id: &'a mut [Option<ById>],
    coupons: &'a mut usize,
}

impl Edit<'_> {
    fn id_shard(&mut self, id: CouponId) -> &mut ById {
        let idx = shard_of(self.catalog.hasher.hash_one(id));
        self.by_id[idx].get_or_insert_with(|| (*self.catalog.by_id[idx]).clone())
    }

    fn code_shard(&mut self, hash: u64) -> &mut ByCode {
        let idx = shard_of(hash);
        self.by_code[idx].get_or_insert_with(|| (*self.catalog.by_code[idx]).clone())
    }

    fn get(&mut self, id: CouponId) -> Option<Coupon> {
        match self.id_shard(id).get(&id)?.clone() {
            Indexed::ByCode(hash) => self.code_shard(hash).find(hash, |c| c.id == id).cloned(),
            Indexed::Rule(rule) => Some((*rule).clone()),
        }
    }

    fn remove(&mut self, id: CouponId) -> Option<()> {
        let previous = self.id_shard(id).remove(&id)?;
        *self.coupons -= 1;
        if let Indexed::ByCode(hash) = previous
            && let Ok(entry) = self.code_shard(hash).find_entry(hash, |c| c.id == id)
        {
            entry.remove();
        }
        Some(())
    }

    /// Puts `coupon` in. A code can move from one id to another (rename, delete and
    /// re-create in one transaction): whatever held the code before is dropped.
    fn insert(&mut self, coupon: Coupon) {
        let id = coupon.id;
        if coupon.batch_id.is_some() {
            self.id_shard(id).insert(id, Indexed::Rule(Arc::new(coupon)));
        } else {
            let hasher = self.catalog.hasher.clone();
            let hash = hasher.hash_one(&*coupon.code);
            let shard = self.code_shard(hash);
            let holder = shard.find_entry(hash, |c| c.code == coupon.code).ok().map(|entry| entry.remove().0.id);
            shard.insert_unique(hash, coupon, |c| hasher.hash_one(&*c.code));
            if let Some(holder) = holder {
                self.id_shard(holder).remove(&holder);
                *self.coupons -= 1;
            }
            self.id_shard(id).insert(id, Indexed::ByCode(hash));
        }
        *self.coupons += 1;
    }
}

fn shard_of(hash: u64) -> usize {
    // The high bits: the tables inside a shard use the low ones.
    (hash >> 56) as usize % SHARDS
}

/// The published catalog, the lock that orders publishers, and readiness.
#[derive(Debug)]
pub struct CatalogStore {
    current: ArcSwap<Catalog>,
    writer: tokio::sync::Mutex<()>,
    /// Bumped on every publish, so that a writer can wait until its change is served.
    generation: tokio::sync::watch::Sender<u64>,
    ready: AtomicBool,
    reloads: AtomicU64,
    last_reload_ms: AtomicI64,
}

/// The right to publish: held from reading PostgreSQL until the result is published, so an
/// older read is never published over a newer one. Readers never take it.
#[derive(Debug)]
pub struct Publisher<'a> {
    store: &'a CatalogStore,
    _lock: tokio::sync::MutexGuard<'a, ()>,
    /// Set when a publish gave an existing coupon or campaign a per-user limit it lacked:
    /// the ledger must then count the uses taken without one ([`Publisher::added_user_limits`]).
    added_user_limits: AtomicBool,
}

impl Default for CatalogStore {
    fn default() -> CatalogStore {
        CatalogStore {
            current: ArcSwap::from_pointee(Catalog::empty(ahash::RandomState::new())),
            writer: tokio::sync::Mutex::new(()),
            generation: tokio::sync::watch::channel(0).0,
            ready: AtomicBool::new(false),
            reloads: AtomicU64::new(0),
            last_reload_ms: AtomicI64::new(0),
        }
    }
}

impl CatalogStore {
    /// The current catalog. Hold it briefly: it pins the snapshot's memory.
    pub fn load(&self) -> Guard<Arc<Catalog>> {
        self.current.load()
    }

    /// The current catalog, to hold across an await.
    pub(crate) fn load_full(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    /// Waits for the right to publish.
    pub async fn publisher(&self) -> Publisher<'_> {
        Publisher { store: self, _lock: self.writer.lock().await, added_user_limits: AtomicBool::new(false) }
    }

    /// Whether the start-up load has finished.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Marks the start-up load as finished.
    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Full reloads so far, the start-up load included.
    pub(crate) fn reload_count(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// When the last full reload was published.
    pub(crate) fn last_reload_at(&self) -> Option<DateTime<Utc>> {
        match self.last_reload_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => DateTime::from_timestamp_millis(ms),
        }
    }

    /// Waits, at most `within`, until the catalog holds coupon `id` at `version` or newer.
    pub(crate) async fn wait_for_coupon(&self, id: CouponId, version: i64, within: Duration) -> bool {
        self.wait_until(within, |catalog| catalog.coupon_by_id(id).is_some_and(|c| c.version >= version)).await
    }

    /// Waits, at most `within`, until the catalog holds campaign `id` at `version` or newer.
    pub(crate) async fn wait_for_campaign(&self, id: CampaignId, version: i64, within: Duration) -> bool {
        self.wait_until(within, |catalog| catalog.campaign(id).is_some_and(|c| c.version >= version)).await
    }

    /// Waits, at most `within`, until `check` holds of the published catalog.
    pub async fn wait_until(&self, within: Duration, check: impl Fn(&Catalog) -> bool) -> bool {
        let mut generations = self.generation.subscribe();
        let wait = async {
            loop {
                if check(&self.load()) {
                    return;
                }
                if generations.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(within, wait).await.is_ok() && check(&self.load())
    }

    fn store(&self, catalog: Catalog) {
        self.current.store(Arc::new(catalog));
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Publisher<'_> {
    /// The catalog as published now.
    pub(crate) fn current(&self) -> Arc<Catalog> {
        self.store.current.load_full()
    }

    /// Whether a publish through this publisher gave an existing coupon or campaign a
    /// per-user limit it did not have.
    pub(crate) fn added_user_limits(&self) -> bool {
        self.added_user_limits.load(Ordering::Relaxed)
    }

    fn note_user_limits(&self, added: bool) {
        if added {
            self.added_user_limits.store(true, Ordering::Relaxed);
        }
    }

    /// Replaces every definition at once.
    pub fn replace_all(&self, coupons: Vec<Coupon>, campaigns: Vec<Campaign>, batches: Vec<Arc<BatchCodes>>) {
        let old = self.current();
        self.note_user_limits(
            coupons.iter().any(|c| adds_user_limit(old.coupon_by_id(c.id).map(|o| o.per_user_limit), c.per_user_limit))
                || campaigns
                    .iter()
                    .any(|c| adds_user_limit(old.campaign(c.id).map(|o| o.per_user_limit), c.per_user_limit)),
        );
        let hasher = old.hasher.clone();
        let mut empty = Catalog::empty(hasher.clone());
        empty.campaigns = Arc::new(campaigns.into_iter().map(|c| (c.id, Arc::new(c))).collect());
        empty.codes = Arc::new(CodeIndex::build(batches, |code| hasher.hash_one(code)));
        let (catalog, _) = empty.with_coupon_changes(CouponChanges { upserts: coupons, deleted: Vec::new() });
        self.store.store(catalog);
        self.store.reloads.fetch_add(1, Ordering::Relaxed);
        self.store.last_reload_ms.store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// Publishes the current state of the coupons with the changed ids; returns how many
    /// changed.
    pub(crate) fn apply_coupons(&self, changes: CouponChanges) -> usize {
        let current = self.current();
        self.note_user_limits(
            changes
                .upserts
                .iter()
                .any(|c| adds_user_limit(current.coupon_by_id(c.id).map(|o| o.per_user_limit), c.per_user_limit)),
        );
        let (catalog, changed) = current.with_coupon_changes(changes);
        if changed > 0 {
            self.store.store(catalog);
        }
        changed
    }

    /// Publishes the current state of campaigns: `fetched` holds those of `ids` that exist.
    pub(crate) fn apply_campaigns(&self, ids: &[CampaignId], fetched: Vec<Campaign>) -> usize {
        let mut next = (*self.current()).clone();
        let mut campaigns = (*next.campaigns).clone();
        let mut changed = 0;
        for id in ids {
            if !fetched.iter().any(|c| c.id == *id) {
                changed += usize::from(campaigns.remove(id).is_some());
            }
        }
        for campaign in fetched {
            let cached = campaigns.get(&campaign.id);
            if cached.is_some_and(|c| c.version > campaign.version || **c == campaign) {
                continue;
            }
            self.note_user_limits(adds_user_limit(cached.map(|c| c.per_user_limit), campaign.per_user_limit));
            campaigns.insert(campaign.id, Arc::new(campaign));
            changed += 1;
        }
        if changed > 0 {
            next.campaigns = Arc::new(campaigns);
            self.store.store(next);
        }
        changed
    }

    /// Publishes a new set of bulk code batches.
    pub(crate) fn replace_batches(&self, batches: Vec<Arc<BatchCodes>>) {
        let mut next = (*self.current()).clone();
        let hasher = next.hasher.clone();
        next.codes = Arc::new(CodeIndex::build(batches, |code| hasher.hash_one(code)));
        self.store.store(next);
    }
}

/// Whether a definition that was `before` (`None`: not known) now has a per-user limit it
/// lacked. A definition not known before has no uses: ids are never reused.
fn adds_user_limit(before: Option<Option<u32>>, after: Option<u32>) -> bool {
    matches!(before, Some(None)) && after.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::coupon::{CouponKind, Discount};
    use crate::domain::money::Cents;

    fn coupon(id: CouponId, code: &str) -> Coupon {
        Coupon::new(id, code, CouponKind::TimeSpecific, Discount::Fixed(Cents::new(500).unwrap()))
    }

    fn versioned(id: CouponId, code: &str, version: i64) -> Coupon {
        Coupon { version, ..coupon(id, code) }
    }

    async fn store_with(coupons: Vec<Coupon>) -> CatalogStore {
        let store = CatalogStore::default();
        store.publisher().await.replace_all(coupons, Vec::new(), Vec::new());
        store
    }

    fn id_of(store: &CatalogStore, code: &str) -> Option<CouponId> {
        store.load().find(code).map(|found| found.coupon().id)
    }

    #[tokio::test]
    async fn changes_apply_by_version_and_deletes() {
        let store = store_with(vec![versioned(1, "A", 2), coupon(2, "B")]).await;
        let publisher = store.publisher().await;
        let stale = CouponChanges { upserts: vec![versioned(1, "STALE", 1)], deleted: vec![] };
        assert_eq!(publisher.apply_coupons(stale), 0, "an older version is ignored");
        let same = CouponChanges { upserts: vec![versioned(1, "A", 2)], deleted: vec![] };
        assert_eq!(publisher.apply_coupons(same), 0, "the same row changes nothing");
        let changes = CouponChanges { upserts: vec![versioned(1, "A2", 3), coupon(3, "C")], deleted: vec![2, 99] };
        assert_eq!(publisher.apply_coupons(changes), 3);
        drop(publisher);
        assert_eq!(
            (id_of(&store, "A2"), id_of(&store, "A"), id_of(&store, "B"), id_of(&store, "C")),
            (Some(1), None, None, Some(3))
        );
        assert_eq!(store.load().coupon_count(), 2);
        assert_eq!(store.reload_count(), 1);
    }

    #[tokio::test]
    async fn a_code_moving_between_ids_follows_the_newest_row() {
        let store = store_with(vec![coupon(1, "OLD"), coupon(2, "KEEP")]).await;
        let before = store.load_full();
        let publisher = store.publisher().await;
        // Row 1 is renamed, and a new row 3 takes the old code, in one change.
        let changes = CouponChanges { upserts: vec![versioned(1, "NEW", 2), coupon(3, "OLD")], deleted: vec![] };
        assert_eq!(publisher.apply_coupons(changes), 2);
        // Row 3 takes row 2's code: row 2 is gone from both indexes.
        assert_eq!(publisher.apply_coupons(CouponChanges { upserts: vec![coupon(3, "KEEP")], deleted: vec![] }), 1);
        drop(publisher);
        let now = store.load();
        assert_eq!((id_of(&store, "NEW"), id_of(&store, "KEEP"), id_of(&store, "OLD")), (Some(1), Some(3), None));
        assert!(now.coupon_by_id(2).is_none());
        assert_eq!(now.coupon_count(), 2);
        // The snapshot that was published before is untouched.
        assert_eq!(before.find("OLD").map(|f| f.coupon().id), Some(1));
        assert_eq!(before.coupon_count(), 2);
    }

    #[tokio::test]
    async fn batch_rules_are_reached_by_id_only() {
        let rule = Coupon { batch_id: Some(4), ..coupon(9, "~BATCH-4") };
        let store = store_with(vec![rule]).await;
        assert!(store.load().find("~BATCH-4").is_none());
        assert!(store.load().coupon_by_id(9).is_some());
    }

    #[tokio::test]
    async fn writers_wait_for_a_version() {
        let store = Arc::new(store_with(vec![coupon(1, "A")]).await);
        assert!(store.wait_for_coupon(1, 1, Duration::from_millis(10)).await);
        assert!(!store.wait_for_coupon(1, 2, Duration::from_millis(10)).await);
        let waiter = tokio::spawn({
            let store = store.clone();
            async move { store.wait_for_coupon(1, 2, Duration::from_secs(5)).await }
        });
        tokio::task::yield_now().await;
        store.publisher().await.apply_coupons(CouponChanges { upserts: vec![versioned(1, "A", 2)], deleted: vec![] });
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn many_coupons_spread_over_every_shard() {
        let store = store_with((0..10_000).map(|n| coupon(n, &format!("C{n}"))).collect()).await;
        let catalog = store.load();
        assert!(catalog.by_code.iter().all(|shard| !shard.is_empty()));
        assert!((0..10_000).all(|n| catalog.find(&format!("C{n}")).is_some_and(|f| f.coupon().id == n)));
    }
}
