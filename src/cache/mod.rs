//! The in-memory source of every answer: an arc-swapped [`Catalog`] and the usage beside it.
//!
//! Invariant: a coupon's [`CouponUsage`] is created once per id and shared by every catalog
//! snapshot that holds that id, so publishing a new snapshot never loses or resets a count.

pub mod catalog;
pub mod usage;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use dashmap::DashMap;

use crate::cache::catalog::{Catalog, CatalogEntry};
use crate::cache::usage::{CouponUsage, Redemption};
use crate::domain::coupon::{Coupon, CouponId, normalize_code};
use crate::domain::rules::{self, Attempt, Decision, Reason};

/// The result of validating one request against the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validation {
    /// The coupon the code named, if any.
    pub coupon_id: Option<CouponId>,
    pub decision: Decision,
}

/// A redemption as loaded from PostgreSQL at start-up.
#[derive(Debug, Clone)]
pub struct LoadedRedemption {
    pub coupon_id: CouponId,
    pub order_id: Box<str>,
    pub redemption: Redemption,
}

/// The catalog and the usage counters. Cheap to share behind an `Arc`; readers never lock.
#[derive(Debug, Default)]
pub struct Cache {
    catalog: ArcSwap<Catalog>,
    usage: DashMap<CouponId, Arc<CouponUsage>, ahash::RandomState>,
    ready: AtomicBool,
    /// Held by whoever is reading PostgreSQL to publish a new snapshot (the refresher, an
    /// admin reload), so that an older read can never be published over a newer one.
    writer: tokio::sync::Mutex<()>,
    reloads: AtomicU64,
    last_reload_ms: AtomicI64,
}

impl Cache {
    /// An empty cache that is not ready.
    pub fn new() -> Cache {
        Cache::default()
    }

    /// Validates an attempt to use `code` (as the client sent it) at `now`.
    pub fn validate(&self, code: &str, attempt: &Attempt<'_>, now: DateTime<Utc>) -> Validation {
        let code = normalize_code(code);
        let catalog = self.catalog.load();
        match catalog.get(&code) {
            Some(entry) => Validation {
                coupon_id: Some(entry.coupon.id),
                decision: rules::validate(&entry.coupon, &*entry.usage, attempt, now),
            },
            None => Validation { coupon_id: None, decision: Decision::Rejected(Reason::CouponNotFound) },
        }
    }

    /// The current snapshot. Hold it briefly: it pins the snapshot's memory.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    /// Number of coupons in the current snapshot.
    pub fn coupon_count(&self) -> usize {
        self.catalog.load().len()
    }

    /// Whether the start-up load has finished.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Marks the start-up load as finished.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// The lock a writer holds from reading PostgreSQL until its snapshot is published.
    pub fn writer(&self) -> &tokio::sync::Mutex<()> {
        &self.writer
    }

    /// Replaces every coupon definition at once, keeping each id's live usage.
    pub fn replace_all(&self, coupons: Vec<Coupon>) {
        let entries: Vec<_> = coupons.into_iter().map(|coupon| self.entry_for(coupon)).collect();
        self.catalog.store(Arc::new(Catalog::from_entries(entries)));
        self.reloads.fetch_add(1, Ordering::Relaxed);
        self.last_reload_ms.store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// Publishes the current state of the coupons with `ids`: `fetched` holds those that
    /// still exist; the others were deleted. A fetched row older than the cached one is
    /// ignored. Returns how many coupons changed.
    pub fn apply_changes(&self, ids: &[CouponId], fetched: Vec<Coupon>) -> usize {
        let current = self.catalog.load_full();
        let deleted: Vec<CouponId> = ids
            .iter()
            .copied()
            .filter(|id| current.get_by_id(*id).is_some() && !fetched.iter().any(|c| c.id == *id))
            .collect();
        let upserts: Vec<_> = fetched
            .into_iter()
            .filter(|coupon| current.get_by_id(coupon.id).is_none_or(|cached| cached.coupon.version <= coupon.version))
            .filter(|coupon| current.get_by_id(coupon.id).is_none_or(|cached| cached.coupon != *coupon))
            .map(|coupon| self.entry_for(coupon))
            .collect();
        let changed = upserts.len() + deleted.len();
        if changed > 0 {
            self.catalog.store(Arc::new(current.with_changes(upserts, &deleted)));
        }
        changed
    }

    /// Full reloads so far, the start-up load included.
    pub fn reload_count(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// When the last full reload was published.
    pub fn last_reload_at(&self) -> Option<DateTime<Utc>> {
        match self.last_reload_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => DateTime::from_timestamp_millis(ms),
        }
    }

    /// Number of coupons with a usage record (live or once live).
    pub fn usage_count(&self) -> usize {
        self.usage.len()
    }

    /// Records the redemptions read at start-up. Call once, before serving.
    pub fn load_usage(&self, redemptions: Vec<LoadedRedemption>) {
        for loaded in redemptions {
            self.usage_for(loaded.coupon_id).record_loaded(&loaded.order_id, loaded.redemption);
        }
    }

    /// The live usage of a coupon id, created empty on first use.
    pub fn usage_for(&self, id: CouponId) -> Arc<CouponUsage> {
        self.usage.entry(id).or_default().clone()
    }

    fn entry_for(&self, coupon: Coupon) -> Arc<CatalogEntry> {
        let usage = self.usage_for(coupon.id);
        Arc::new(CatalogEntry { coupon, usage })
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::cache::usage::RedemptionState;
    use crate::domain::coupon::{CouponKind, CouponStatus, Discount};
    use crate::domain::money::Cents;

    fn coupon(id: CouponId, code: &str, usage_limit: Option<u32>) -> Coupon {
        Coupon {
            id,
            code: code.into(),
            kind: CouponKind::TimeSpecific,
            status: CouponStatus::Active,
            discount: Discount::Fixed(Cents::new(500).unwrap()),
            min_order_value: Cents::ZERO,
            usage_limit,
            per_user_limit: None,
            user_id: None,
            valid_from: None,
            valid_until: None,
            version: 1,
        }
    }

    fn attempt() -> Attempt<'static> {
        Attempt { user_id: "user_0000001", order_value: Cents::new(10_000).unwrap(), order_id: None }
    }

    fn loaded(coupon_id: CouponId, order: &str) -> LoadedRedemption {
        LoadedRedemption {
            coupon_id,
            order_id: order.into(),
            redemption: Redemption {
                id: Uuid::new_v4(),
                user_id: "user_0000009".into(),
                order_value: Cents::ZERO,
                discount: Cents::ZERO,
                state: RedemptionState::Live,
            },
        }
    }

    #[test]
    fn lookups_ignore_case_and_surrounding_space() {
        let cache = Cache::new();
        cache.replace_all(vec![coupon(1, "SAVE10", None)]);
        for code in ["SAVE10", "save10", "  SaVe10 "] {
            assert_eq!(cache.validate(code, &attempt(), Utc::now()).coupon_id, Some(1), "{code:?}");
        }
        let missing = cache.validate("SAVE11", &attempt(), Utc::now());
        assert_eq!(missing, Validation { coupon_id: None, decision: Decision::Rejected(Reason::CouponNotFound) });
    }

    #[test]
    fn a_reload_keeps_live_usage() {
        let cache = Cache::new();
        cache.replace_all(vec![coupon(1, "LIMITED", Some(2))]);
        cache.load_usage(vec![loaded(1, "ord-1"), loaded(1, "ord-2")]);
        let before = cache.validate("LIMITED", &attempt(), Utc::now()).decision;
        assert_eq!(before, Decision::Rejected(Reason::UsageLimitReached));

        cache.replace_all(vec![coupon(1, "LIMITED", Some(3)), coupon(2, "OTHER", None)]);
        let after = cache.validate("LIMITED", &attempt(), Utc::now()).decision;
        assert!(matches!(after, Decision::Valid { .. }), "{after:?}");
        cache.replace_all(vec![coupon(1, "LIMITED", Some(2))]);
        let again = cache.validate("LIMITED", &attempt(), Utc::now()).decision;
        assert_eq!(again, Decision::Rejected(Reason::UsageLimitReached));
        assert_eq!(cache.coupon_count(), 1);
    }

    #[test]
    fn changes_apply_by_version_and_deletes_follow_missing_rows() {
        let cache = Cache::new();
        let mut v2 = coupon(1, "A", None);
        v2.version = 2;
        cache.replace_all(vec![v2.clone(), coupon(2, "B", None)]);
        let mut stale = coupon(1, "A", Some(1));
        stale.version = 1;
        assert_eq!(cache.apply_changes(&[1], vec![stale]), 0, "an older version is ignored");
        assert_eq!(cache.apply_changes(&[1], vec![v2]), 0, "the same row changes nothing");
        let mut v3 = coupon(1, "A2", None);
        v3.version = 3;
        assert_eq!(cache.apply_changes(&[1, 2, 99], vec![v3, coupon(3, "C", None)]), 3);
        let catalog = cache.catalog();
        assert_eq!(catalog.get("A2").map(|e| e.coupon.version), Some(3));
        assert!(catalog.get("A").is_none() && catalog.get("B").is_none());
        assert!(catalog.get("C").is_some());
        assert_eq!(cache.reload_count(), 1);
    }

    #[test]
    fn a_duplicate_loaded_order_counts_once() {
        let cache = Cache::new();
        cache.load_usage(vec![loaded(1, "ord-1"), loaded(1, "ord-1")]);
        let usage = cache.usage_for(1);
        assert_eq!(rules::Usage::total(&*usage), 1);
        assert_eq!(rules::Usage::by_user(&*usage, "user_0000009"), 1);
    }

    #[test]
    fn catalog_changes_follow_codes_and_ids() {
        let cache = Cache::new();
        cache.replace_all(vec![coupon(1, "OLD", None), coupon(2, "KEEP", None)]);
        let catalog = cache.catalog();
        let renamed = cache.entry_for(coupon(1, "NEW", None));
        let next = catalog.with_changes(vec![renamed], &[2]);
        assert!(next.get("OLD").is_none());
        assert_eq!(next.get("NEW").map(|e| e.coupon.id), Some(1));
        assert!(next.get("KEEP").is_none() && next.get_by_id(2).is_none());
        assert_eq!(next.len(), 1);
        // The snapshot that was published is untouched.
        assert_eq!(catalog.len(), 2);
        assert!(catalog.get("OLD").is_some());
    }
}
