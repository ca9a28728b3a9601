//! Bulk codes: millions of single-use codes kept in a compact index, not as coupon rows.
//!
//! Each batch keeps its codes in one byte arena (a generated batch only the random part,
//! since every code shares the prefix and length), and one open-addressing table of `u32`
//! maps a code's hash to its global position. An unused code costs its random part plus
//! about 6 bytes of table; its uses live in the ledger and only once it is used.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::domain::coupon::{BatchId, CouponId};

/// Largest load of the table before it grows.
const MAX_LOAD: f64 = 0.7;

/// A bulk code found in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeRef {
    pub batch: BatchId,
    /// The coupon holding the batch's rule.
    pub rule: CouponId,
    /// The code's position in its batch.
    pub index: u32,
    /// Live uses each code allows.
    pub uses_per_code: u32,
}

/// The codes of one batch.
#[derive(Debug)]
pub struct BatchCodes {
    pub id: BatchId,
    pub rule: CouponId,
    pub uses_per_code: u32,
    store: Store,
    /// Codes handed to a user (`assign-next`); only such codes have an entry.
    assigned: RwLock<HashMap<u32, Box<str>, ahash::RandomState>>,
    /// Whether `assigned` has an entry: validations of a batch nobody assigns from skip its lock.
    any_assigned: AtomicBool,
}

#[derive(Debug)]
enum Store {
    /// Every code is `prefix` followed by `width` bytes.
    Fixed { prefix: Box<str>, width: usize, bytes: Box<[u8]> },
    /// Codes of any length: code `i` is `bytes[ends[i-1]..ends[i]]`.
    Varied { bytes: Box<[u8]>, ends: Box<[u32]> },
}

/// Collects the codes of a batch, in order.
#[derive(Debug)]
pub struct BatchBuilder {
    id: BatchId,
    rule: CouponId,
    uses_per_code: u32,
    prefix: Option<(Box<str>, usize)>,
    bytes: Vec<u8>,
    ends: Vec<u32>,
}

impl BatchBuilder {
    /// A batch whose codes are all `prefix` + `width` characters, stored as the random part
    /// only; codes that do not fit that shape switch the batch to variable storage.
    pub fn new(id: BatchId, rule: CouponId, uses_per_code: u32, shape: Option<(&str, usize)>) -> BatchBuilder {
        BatchBuilder {
            id,
            rule,
            uses_per_code,
            prefix: shape.map(|(p, w)| (p.into(), w)),
            bytes: Vec::new(),
            ends: Vec::new(),
        }
    }

    /// Adds the next code (normalised).
    pub fn push(&mut self, code: &str) {
        if let Some((prefix, width)) = &self.prefix {
            match code.strip_prefix(&**prefix).filter(|rest| rest.len() == *width) {
                Some(rest) => {
                    self.bytes.extend_from_slice(rest.as_bytes());
                    return;
                }
                None => self.switch_to_varied(),
            }
        }
        self.bytes.extend_from_slice(code.as_bytes());
        self.ends.push(u32::try_from(self.bytes.len()).expect("a batch holds under 4 GiB of codes"));
    }

    /// Codes so far.
    pub fn len(&self) -> usize {
        match &self.prefix {
            Some((_, width)) => self.bytes.len() / width.max(&1),
            None => self.ends.len(),
        }
    }

    /// Whether no code was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn switch_to_varied(&mut self) {
        let Some((prefix, width)) = self.prefix.take() else { return };
        let suffixes = std::mem::take(&mut self.bytes);
        for suffix in suffixes.chunks(width.max(1)) {
            self.bytes.extend_from_slice(prefix.as_bytes());
            self.bytes.extend_from_slice(suffix);
            self.ends.push(u32::try_from(self.bytes.len()).expect("a batch holds under 4 GiB of codes"));
        }
    }

    pub fn build(self) -> BatchCodes {
        let store = match self.prefix {
            Some((prefix, width)) => Store::Fixed { prefix, width, bytes: self.bytes.into_boxed_slice() },
            None => Store::Varied { bytes: self.bytes.into_boxed_slice(), ends: self.ends.into_boxed_slice() },
        };
        BatchCodes {
            id: self.id,
            rule: self.rule,
            uses_per_code: self.uses_per_code,
            store,
            assigned: RwLock::default(),
            any_assigned: AtomicBool::new(false),
        }
    }
}

impl BatchCodes {
    /// Number of codes.
    pub fn len(&self) -> usize {
        match &self.store {
            Store::Fixed { width, bytes, .. } => bytes.len() / (*width).max(1),
            Store::Varied { ends, .. } => ends.len(),
        }
    }

    /// Whether the batch has no code.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether code `index` is `code`.
    fn is(&self, index: usize, code: &str) -> bool {
        match &self.store {
            Store::Fixed { prefix, width, bytes } => code
                .strip_prefix(&**prefix)
                .is_some_and(|rest| rest.as_bytes() == &bytes[index * width..(index + 1) * width]),
            Store::Varied { bytes, ends } => {
                let start = if index == 0 { 0 } else { ends[index - 1] as usize };
                &bytes[start..ends[index] as usize] == code.as_bytes()
            }
        }
    }

    /// Code `index`, written into `out`.
    pub fn write_code(&self, index: usize, out: &mut String) {
        match &self.store {
            Store::Fixed { prefix, width, bytes } => {
                out.push_str(prefix);
                out.push_str(std::str::from_utf8(&bytes[index * width..(index + 1) * width]).unwrap_or_default());
            }
            Store::Varied { bytes, ends } => {
                let start = if index == 0 { 0 } else { ends[index - 1] as usize };
                out.push_str(std::str::from_utf8(&bytes[start..ends[index] as usize]).unwrap_or_default());
            }
        }
    }

    /// The user code `index` was handed to, if any.
    pub fn assigned_to(&self, index: u32) -> Option<Box<str>> {
        self.assigned.read().expect("assignments").get(&index).cloned()
    }

    /// Whether code `index` was handed to someone other than `user_id`.
    pub(crate) fn assigned_elsewhere(&self, index: u32, user_id: &str) -> bool {
        self.any_assigned.load(Ordering::Acquire)
            && self.assigned.read().expect("assignments").get(&index).is_some_and(|owner| &**owner != user_id)
    }

    /// Records that code `index` was handed to `user_id`.
    pub fn assign(&self, index: u32, user_id: &str) {
        self.assigned.write().expect("assignments").insert(index, user_id.into());
        self.any_assigned.store(true, Ordering::Release);
    }

    /// The shape every code of a generated batch has: its prefix and its whole length.
    fn shape(&self) -> Option<(&str, usize)> {
        match &self.store {
            Store::Fixed { prefix, width, .. } => Some((prefix, prefix.len() + width)),
            Store::Varied { .. } => None,
        }
    }

    /// Heap bytes held for the codes (not counting assignments).
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        match &self.store {
            Store::Fixed { prefix, bytes, .. } => prefix.len() + bytes.len(),
            Store::Varied { bytes, ends } => bytes.len() + ends.len() * 4,
        }
    }
}

/// Every bulk code, across batches.
#[derive(Debug, Default)]
pub struct CodeIndex {
    /// Sorted by `bases`.
    batches: Vec<Arc<BatchCodes>>,
    /// Global position of each batch's first code.
    bases: Vec<u32>,
    /// Open addressing, linear probing: 0 is empty, else a global position + 1.
    table: Box<[u32]>,
    /// The prefixes of generated batches, by the whole length of their codes. PostgreSQL
    /// reserves these shapes (no coupon may take one), so a code of such a shape is looked
    /// up here only.
    prefixes_by_length: Box<[Vec<Box<str>>]>,
    total: usize,
}

impl CodeIndex {
    /// Indexes `batches`; `hash` must be the catalog's code hash.
    pub fn build(batches: Vec<Arc<BatchCodes>>, hash: impl Fn(&str) -> u64) -> CodeIndex {
        let total: usize = batches.iter().map(|b| b.len()).sum();
        assert!(total < u32::MAX as usize, "at most 4 billion bulk codes");
        let slots = ((total as f64 / MAX_LOAD) as usize + 1).next_power_of_two().max(16);
        let mut table = vec![0u32; if total == 0 { 0 } else { slots }].into_boxed_slice();
        let mut bases = Vec::with_capacity(batches.len());
        let mut base = 0u32;
        let mut code = String::new();
        for batch in &batches {
            bases.push(base);
            for index in 0..batch.len() {
                code.clear();
                batch.write_code(index, &mut code);
                let mut slot = hash(&code) as usize & (table.len() - 1);
                while table[slot] != 0 {
                    slot = (slot + 1) & (table.len() - 1);
                }
                table[slot] = base + index as u32 + 1;
            }
            base += batch.len() as u32;
        }
        let mut prefixes_by_length: Vec<Vec<Box<str>>> = Vec::new();
        for (prefix, length) in batches.iter().filter_map(|b| b.shape()) {
            if prefixes_by_length.len() <= length {
                prefixes_by_length.resize(length + 1, Vec::new());
            }
            if !prefixes_by_length[length].iter().any(|p| **p == *prefix) {
                prefixes_by_length[length].push(prefix.into());
            }
        }
        CodeIndex { batches, bases, table, prefixes_by_length: prefixes_by_length.into_boxed_slice(), total }
    }

    /// Whether `code` has the shape of a generated batch's codes, which no coupon may have.
    pub(crate) fn in_generated_shape(&self, code: &str) -> bool {
        self.prefixes_by_length.get(code.len()).is_some_and(|prefixes| prefixes.iter().any(|p| code.starts_with(&**p)))
    }

    /// The code and its batch, if it is a bulk code; `hash` is its catalog hash.
    pub fn find(&self, code: &str, hash: u64) -> Option<(CodeRef, &BatchCodes)> {
        if self.table.is_empty() {
            return None;
        }
        let mask = self.table.len() - 1;
        let mut slot = hash as usize & mask;
        loop {
            let entry = self.table[slot];
            if entry == 0 {
                return None;
            }
            let position = entry - 1;
            let batch_idx = self.bases.partition_point(|base| *base <= position) - 1;
            let batch = &self.batches[batch_idx];
            let index = position - self.bases[batch_idx];
            if batch.is(index as usize, code) {
                let found = CodeRef { batch: batch.id, rule: batch.rule, index, uses_per_code: batch.uses_per_code };
                return Some((found, batch));
            }
            slot = (slot + 1) & mask;
        }
    }

    /// The batch with this id.
    pub fn batch(&self, id: BatchId) -> Option<&Arc<BatchCodes>> {
        self.batches.iter().find(|b| b.id == id)
    }

    /// Every batch.
    pub fn batches(&self) -> &[Arc<BatchCodes>] {
        &self.batches
    }

    /// Number of codes.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether there is no bulk code.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher() -> impl Fn(&str) -> u64 {
        let state = ahash::RandomState::with_seeds(1, 2, 3, 4);
        move |code| state.hash_one(code)
    }

    fn batch(id: BatchId, shape: Option<(&str, usize)>, codes: &[&str]) -> Arc<BatchCodes> {
        let mut builder = BatchBuilder::new(id, 100 + id, 1, shape);
        for code in codes {
            builder.push(code);
        }
        Arc::new(builder.build())
    }

    #[test]
    fn finds_codes_across_fixed_and_varied_batches() {
        let hash = hasher();
        let generated = batch(1, Some(("BF-", 4)), &["BF-AAAA", "BF-AAAB", "BF-ZZZZ"]);
        let imported = batch(2, None, &["X", "LONGER-CODE-1", "BF-AAAC"]);
        let index = CodeIndex::build(vec![generated.clone(), imported], &hash);
        assert_eq!(index.len(), 6);
        for (code, batch, position) in [
            ("BF-AAAA", 1, 0),
            ("BF-AAAB", 1, 1),
            ("BF-ZZZZ", 1, 2),
            ("X", 2, 0),
            ("LONGER-CODE-1", 2, 1),
            ("BF-AAAC", 2, 2),
        ] {
            let (found, _) = index.find(code, hash(code)).unwrap_or_else(|| panic!("{code}"));
            assert_eq!((found.batch, found.rule, found.index), (batch, 100 + batch, position), "{code}");
        }
        for missing in ["BF-AAAD", "BF-AAA", "BF-AAAAA", "", "Y", "LONGER-CODE-2"] {
            assert!(index.find(missing, hash(missing)).is_none(), "{missing}");
        }
        for (code, reserved) in [("BF-QQQQ", true), ("BF-QQQ", false), ("BG-QQQQ", false), ("LONGER-CODE-1", false)] {
            assert_eq!(index.in_generated_shape(code), reserved, "{code}");
        }
        let mut text = String::new();
        generated.write_code(2, &mut text);
        assert_eq!(text, "BF-ZZZZ");
        assert_eq!(generated.heap_bytes(), 3 + 12, "the prefix once, four bytes a code");
    }

    #[test]
    fn a_code_off_the_shape_switches_the_batch_to_varied_storage() {
        let hash = hasher();
        let mixed = batch(1, Some(("P-", 2)), &["P-AB", "P-CD", "Q-EF", "P-GHI"]);
        let index = CodeIndex::build(vec![mixed], &hash);
        for (position, code) in ["P-AB", "P-CD", "Q-EF", "P-GHI"].into_iter().enumerate() {
            assert_eq!(index.find(code, hash(code)).map(|(c, _)| c.index), Some(position as u32), "{code}");
        }
    }

    #[test]
    fn many_codes_and_colliding_hashes() {
        // A hash that sends everything to a few slots still finds every code.
        let poor = |code: &str| code.len() as u64;
        let codes: Vec<String> = (0..2_000).map(|n| format!("C{n:05}")).collect();
        let refs: Vec<&str> = codes.iter().map(String::as_str).collect();
        let index = CodeIndex::build(vec![batch(1, Some(("C", 5)), &refs)], poor);
        assert!(
            refs.iter()
                .enumerate()
                .all(|(n, code)| index.find(code, poor(code)).map(|(c, _)| c.index) == Some(n as u32))
        );
        assert!(index.find("C99999", poor("C99999")).is_none());
    }

    #[test]
    fn assignments() {
        let codes = batch(1, None, &["A", "B"]);
        assert!(!codes.assigned_elsewhere(0, "u1"));
        codes.assign(0, "u1");
        assert!(!codes.assigned_elsewhere(0, "u1"));
        assert!(codes.assigned_elsewhere(0, "u2"));
        assert!(!codes.assigned_elsewhere(1, "u2"));
        assert_eq!(codes.assigned_to(0).as_deref(), Some("u1"));
    }

    #[test]
    fn an_empty_index_finds_nothing() {
        let index = CodeIndex::build(Vec::new(), hasher());
        assert!(index.is_empty());
        assert!(index.find("A", 1).is_none());
    }
}
