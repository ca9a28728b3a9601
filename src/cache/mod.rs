//! The in-memory source of every answer: an arc-swapped [`Catalog`] and the usage beside it.
//!
//! Invariant: a coupon's [`CouponUsage`] is created once per id and shared by every catalog
//! snapshot that holds that id, so publishing a new snapshot never loses or resets a count.

pub mod catalog;
pub mod usage;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// A live redemption as loaded from PostgreSQL at start-up.
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

    /// Replaces every coupon definition at once, keeping each id's live usage.
    pub fn replace_all(&self, coupons: Vec<Coupon>) {
        let entries: Vec<_> = coupons.into_iter().map(|coupon| self.entry_for(coupon)).collect();
        self.catalog.store(Arc::new(Catalog::from_entries(entries)));
    }

    /// Records the live redemptions read at start-up. Call once, before serving.
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
                discount: Cents::ZERO,
                final_amount: Cents::ZERO,
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
