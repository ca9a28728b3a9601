//! The allocations of uses taken with a cart, kept to answer their replays (API.md §10's
//! storage): in memory for `idempotency.cart_cache_secs` within `cart_cache_bytes`, then read
//! back from PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::domain::cart_discount::Taken;

/// A time- and size-bounded cache of allocations by redemption id.
#[derive(Debug)]
pub(crate) struct Allocations {
    cache: moka::sync::Cache<Uuid, Arc<Taken>>,
}

impl Allocations {
    pub(crate) fn new(ttl: Duration, bytes: u64) -> Allocations {
        let cache = moka::sync::Cache::builder()
            .max_capacity(bytes)
            .weigher(|_: &Uuid, taken: &Arc<Taken>| weight(taken))
            .time_to_live(ttl)
            .build();
        Allocations { cache }
    }

    /// Keeps what the use `id` took.
    pub(crate) fn keep(&self, id: Uuid, taken: Arc<Taken>) {
        self.cache.insert(id, taken);
    }

    /// What the use `id` took, if it is still kept.
    pub(crate) fn get(&self, id: Uuid) -> Option<Arc<Taken>> {
        self.cache.get(&id)
    }
}

/// An allocation's memory, estimated: the entry, each line's vector, each run.
fn weight(taken: &Taken) -> u32 {
    let runs: usize = taken.lines.iter().map(Vec::len).sum();
    u32::try_from(96 + taken.lines.len() * 24 + runs * 16).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::allocation::Run;

    #[test]
    fn keeps_within_its_bytes_and_its_time() {
        let taken = |lines: usize| Arc::new(Taken { lines: vec![vec![Run::new(1, 5)]; lines], shipping: 0 });
        // Room for about two allocations of 20 lines (96 + 20 × 40 = 896 bytes each).
        let kept = Allocations::new(Duration::from_secs(60), 2_000);
        for n in 0..10u128 {
            kept.keep(Uuid::from_u128(n), taken(20));
        }
        kept.cache.run_pending_tasks();
        assert!(kept.cache.weighted_size() <= 2_000, "{}", kept.cache.weighted_size());
        assert!((0..10u128).filter(|n| kept.get(Uuid::from_u128(*n)).is_some()).count() <= 2);
        let brief = Allocations::new(Duration::from_millis(30), 1 << 20);
        brief.keep(Uuid::nil(), taken(1));
        assert!(brief.get(Uuid::nil()).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(brief.get(Uuid::nil()).is_none(), "gone after its time");
    }
}
