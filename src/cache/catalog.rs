//! An immutable snapshot of every coupon, indexed by normalised code and by id.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cache::usage::CouponUsage;
use crate::domain::coupon::{Coupon, CouponId};

/// A coupon definition together with the live usage it shares with every other snapshot.
#[derive(Debug)]
pub struct CatalogEntry {
    pub coupon: Coupon,
    pub usage: Arc<CouponUsage>,
}

/// Every coupon known to the service at one moment. Never changed once published.
#[derive(Debug, Default)]
pub struct Catalog {
    by_code: HashMap<Box<str>, Arc<CatalogEntry>, ahash::RandomState>,
    by_id: HashMap<CouponId, Arc<CatalogEntry>, ahash::RandomState>,
}

impl Catalog {
    /// Builds a catalog from entries; a later entry with the same id or code wins.
    pub fn from_entries(entries: impl IntoIterator<Item = Arc<CatalogEntry>>) -> Catalog {
        let mut catalog = Catalog::default();
        for entry in entries {
            catalog.insert(entry);
        }
        catalog
    }

    /// The entry for a normalised code.
    pub fn get(&self, code: &str) -> Option<&Arc<CatalogEntry>> {
        self.by_code.get(code)
    }

    /// The entry for a coupon id.
    pub fn get_by_id(&self, id: CouponId) -> Option<&Arc<CatalogEntry>> {
        self.by_id.get(&id)
    }

    /// Number of coupons.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are no coupons.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every entry, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &Arc<CatalogEntry>> {
        self.by_id.values()
    }

    /// A copy of this catalog with `upserts` put in and `deletes` taken out.
    ///
    /// A copy costs one `Arc` clone per coupon, which is what lets readers keep using the
    /// old snapshot undisturbed while the new one is built.
    pub fn with_changes(&self, upserts: Vec<Arc<CatalogEntry>>, deletes: &[CouponId]) -> Catalog {
        let mut next = Catalog { by_code: self.by_code.clone(), by_id: self.by_id.clone() };
        for id in deletes {
            next.remove(*id);
        }
        for entry in upserts {
            next.insert(entry);
        }
        next
    }

    fn insert(&mut self, entry: Arc<CatalogEntry>) {
        // A code can move from one id to another (rename, delete + re-create), and an id can
        // change its code: drop whatever either key pointed at before.
        self.remove(entry.coupon.id);
        if let Some(previous) = self.by_code.remove(&entry.coupon.code) {
            self.by_id.remove(&previous.coupon.id);
        }
        self.by_code.insert(entry.coupon.code.clone(), entry.clone());
        self.by_id.insert(entry.coupon.id, entry);
    }

    fn remove(&mut self, id: CouponId) {
        if let Some(previous) = self.by_id.remove(&id) {
            self.by_code.remove(&previous.coupon.code);
        }
    }
}
