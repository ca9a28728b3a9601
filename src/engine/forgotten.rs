//! Orders the ledger no longer remembers: a fixed-size Bloom filter of the keys of released
//! redemptions past their retention. "Not in the filter" is certain: the order never had a
//! released redemption here. "Maybe" sends the engine to PostgreSQL (through its archive
//! port) for that one order. The filter never grows; past its capacity, "maybe" only gets
//! more frequent (more lookups), never wrong.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::ledger::OrderKey;

/// Bits per key: a 1% false-positive rate at capacity.
const BITS_PER_KEY: u64 = 10;
/// Bits set per key.
const PROBES: u64 = 7;

/// The filter.
#[derive(Debug)]
pub struct Forgotten {
    words: Box<[AtomicU64]>,
    inserted: AtomicU64,
}

impl Forgotten {
    /// A filter for `capacity` keys at about 1% false positives (10 bits a key).
    pub fn with_capacity(capacity: u64) -> Forgotten {
        let words = (capacity.max(1) * BITS_PER_KEY).div_ceil(64);
        Forgotten { words: (0..words).map(|_| AtomicU64::new(0)).collect(), inserted: AtomicU64::new(0) }
    }

    /// Adds `key`.
    pub fn insert(&self, key: OrderKey) {
        for bit in self.bits(key) {
            self.words[(bit / 64) as usize].fetch_or(1 << (bit % 64), Ordering::Relaxed);
        }
        self.inserted.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether `key` may have been added (false: it certainly was not).
    pub(crate) fn may_contain(&self, key: OrderKey) -> bool {
        self.inserted.load(Ordering::Relaxed) > 0
            && self
                .bits(key)
                .all(|bit| self.words[(bit / 64) as usize].load(Ordering::Relaxed) & (1 << (bit % 64)) != 0)
    }

    /// Keys added so far.
    pub fn len(&self) -> u64 {
        self.inserted.load(Ordering::Relaxed)
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The filter's size.
    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }

    /// The bits of `key`: double hashing over two mixes of the key (its order part is
    /// already a keyed hash).
    fn bits(&self, (coupon, order): OrderKey) -> impl Iterator<Item = u64> + use<> {
        let total = self.words.len() as u64 * 64;
        let first = mix(order ^ (coupon as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let second = mix(first) | 1;
        (0..PROBES).map(move |i| first.wrapping_add(i.wrapping_mul(second)) % total)
    }
}

/// splitmix64's finaliser.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_keys_are_always_found_and_others_rarely() {
        let filter = Forgotten::with_capacity(100_000);
        assert!(!filter.may_contain((1, 7)), "an empty filter contains nothing");
        for n in 0..100_000u64 {
            filter.insert((n as i64 % 97, mix(n)));
        }
        assert!((0..100_000u64).all(|n| filter.may_contain((n as i64 % 97, mix(n)))), "no false negative");
        let false_positives = (100_000..200_000u64).filter(|n| filter.may_contain((*n as i64 % 97, mix(*n)))).count();
        assert!(false_positives < 2_000, "{false_positives} false positives in 100,000 at capacity");
        assert_eq!((filter.len(), filter.bytes()), (100_000, 125_000));
    }
}
