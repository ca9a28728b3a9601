//! Batches of bulk codes as the rules see them: how large, what a generated code looks like,
//! how much randomness it must carry, and the codes themselves from a random source. No I/O:
//! the randomness is a parameter.

use std::collections::HashSet;

use rand::RngCore;

use crate::domain::coupon::{MAX_CODE_LEN, is_valid_code, normalize_code};

/// The characters of a generated code's random part: digits and upper-case letters without
/// the look-alikes 0/O and 1/I, in ASCII order (so numbers and codes sort alike). 32 of them:
/// five bits a character.
pub const ALPHABET: &[u8; 32] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";
const BITS_PER_CHAR: u32 = 5;
/// Most codes in one batch.
pub const MAX_CODES: u32 = 10_000_000;
/// Bits of randomness each generated code carries beyond those that number the batch: with
/// `count` codes among `2^(bits)` possible, one guess finds a code with probability at most
/// `2^-MIN_SPARE_BITS`.
pub const MIN_SPARE_BITS: f64 = 30.0;
/// Longest random part: 25 characters (125 bits) fit a `u128`.
pub const MAX_RANDOM_LEN: usize = 25;
/// Most duplicates an import refusal lists.
pub const MAX_LISTED_DUPLICATES: usize = 100;

/// Why a batch cannot be made as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("must be from 1 to {MAX_CODES}")]
    Count,
    #[error("must not be empty: a batch's codes start with a prefix of their own")]
    EmptyPrefix,
    #[error("must be printable ASCII characters without spaces, leaving room for the random part")]
    Prefix,
    #[error(
        "must be at least {min} (for {MIN_SPARE_BITS} bits of randomness beyond the count) and at most {MAX_RANDOM_LEN}"
    )]
    Length { min: usize },
    #[error("code {index} is not 1 to 64 printable ASCII characters without spaces")]
    Code { index: usize },
    #[error("holds the same code more than once")]
    Duplicates(Vec<String>),
}

/// What to generate: `count` codes, each `prefix` followed by `length` random characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateSpec {
    pub count: u32,
    /// Normalised (upper-case).
    pub prefix: String,
    pub length: usize,
}

impl GenerateSpec {
    /// Checks a request; `length` defaults to the shortest that carries enough randomness.
    pub fn new(count: u64, prefix: &str, length: Option<u64>) -> Result<GenerateSpec, BatchError> {
        let count = u32::try_from(count).ok().filter(|c| (1..=MAX_CODES).contains(c)).ok_or(BatchError::Count)?;
        let prefix = normalize_code(prefix).into_owned();
        let min = min_length(count);
        let length = match length {
            None => min,
            Some(length) => usize::try_from(length).unwrap_or(usize::MAX),
        };
        if !(min..=MAX_RANDOM_LEN).contains(&length) {
            return Err(BatchError::Length { min });
        }
        if prefix.is_empty() {
            return Err(BatchError::EmptyPrefix);
        }
        // The prefix alone is checked as a code would be.
        if !is_valid_code(&prefix) || prefix.len() + length > MAX_CODE_LEN {
            return Err(BatchError::Prefix);
        }
        Ok(GenerateSpec { count, prefix, length })
    }

    /// Generates the codes' random parts: `count` distinct numbers below `32^length`, in
    /// ascending order (the order of their codes).
    pub fn generate(&self, rng: &mut impl RngCore) -> Vec<u128> {
        let space = 1u128 << (BITS_PER_CHAR as usize * self.length);
        let draw = |rng: &mut dyn RngCore| {
            let value = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
            // A power of two: masking is exact, no modulo bias.
            value & (space - 1)
        };
        let count = self.count as usize;
        let mut values: Vec<u128> = (0..count).map(|_| draw(rng)).collect();
        loop {
            values.sort_unstable();
            values.dedup();
            if values.len() == count {
                return values;
            }
            // Rare (a birthday collision); draw the missing ones and sort again.
            let missing = count - values.len();
            values.extend((0..missing).map(|_| draw(rng)));
        }
    }

    /// Writes code `value` (prefix and random part) into `out`.
    pub fn write_code(&self, value: u128, out: &mut String) {
        out.push_str(&self.prefix);
        for place in (0..self.length).rev() {
            let digit = (value >> (BITS_PER_CHAR as usize * place)) & 31;
            out.push(char::from(ALPHABET[digit as usize]));
        }
    }
}

/// The shortest random part that leaves [`MIN_SPARE_BITS`] of randomness beyond `count`.
pub(crate) fn min_length(count: u32) -> usize {
    let needed = MIN_SPARE_BITS + f64::from(count.max(1)).log2();
    (needed / f64::from(BITS_PER_CHAR)).ceil() as usize
}

/// Checks imported codes: each normalised and valid, 1 to [`MAX_CODES`] of them, none twice.
pub(crate) fn check_import(codes: Vec<String>) -> Result<Vec<String>, BatchError> {
    if codes.is_empty() || codes.len() > MAX_CODES as usize {
        return Err(BatchError::Count);
    }
    let mut seen = HashSet::with_capacity(codes.len());
    let mut duplicates = Vec::new();
    let mut normalised = Vec::with_capacity(codes.len());
    for (index, code) in codes.into_iter().enumerate() {
        let code = normalize_code(&code).into_owned();
        if !is_valid_code(&code) {
            return Err(BatchError::Code { index });
        }
        if !seen.insert(code.clone()) && duplicates.len() < MAX_LISTED_DUPLICATES && !duplicates.contains(&code) {
            duplicates.push(code.clone());
        }
        normalised.push(code);
    }
    if duplicates.is_empty() { Ok(normalised) } else { Err(BatchError::Duplicates(duplicates)) }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn the_alphabet_has_no_look_alikes_and_sorts_like_its_numbers() {
        assert_eq!(ALPHABET.len(), 1 << BITS_PER_CHAR);
        for look_alike in [b'0', b'O', b'1', b'I'] {
            assert!(!ALPHABET.contains(&look_alike));
        }
        assert!(ALPHABET.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn lengths_carry_thirty_bits_beyond_the_count() {
        for (count, min) in [(1, 6), (1_000, 8), (100_000, 10), (1_000_000, 10), (10_000_000, 11)] {
            assert_eq!(min_length(count), min, "{count}");
            let bits = (min as f64) * 5.0 - f64::from(count).log2();
            assert!(bits >= MIN_SPARE_BITS && bits - 5.0 < MIN_SPARE_BITS, "{count}: {bits}");
        }
    }

    #[test]
    fn requests_are_checked() {
        let ok = GenerateSpec::new(1_000_000, "bf26-", Some(10)).unwrap();
        assert_eq!((ok.count, ok.prefix.as_str(), ok.length), (1_000_000, "BF26-", 10));
        assert_eq!(GenerateSpec::new(1_000_000, "BF26-", None).unwrap().length, 10);
        for (count, prefix, length, expected) in [
            (0, "P-", None, BatchError::Count),
            (10_000_001, "P-", None, BatchError::Count),
            (1_000_000, "P-", Some(9), BatchError::Length { min: 10 }),
            (10, "P-", Some(26), BatchError::Length { min: 7 }),
            (10, "", None, BatchError::EmptyPrefix),
            (10, "  ", None, BatchError::EmptyPrefix),
            (10, "P -", None, BatchError::Prefix),
            (10, "P\u{7}", None, BatchError::Prefix),
            (10, "é", None, BatchError::Prefix),
            (10, &"P".repeat(60), None, BatchError::Prefix),
        ] {
            assert_eq!(
                GenerateSpec::new(count, prefix, length),
                Err(expected.clone()),
                "{count} {prefix:?} {length:?}"
            );
        }
    }

    #[test]
    fn generated_codes_are_distinct_sorted_and_of_the_shape() {
        let spec = GenerateSpec::new(20_000, "X-", Some(9)).unwrap();
        let values = spec.generate(&mut ChaCha8Rng::seed_from_u64(7));
        assert_eq!(values.len(), 20_000);
        assert!(values.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
        let mut previous = String::new();
        for value in values.iter().step_by(97) {
            let mut code = String::new();
            spec.write_code(*value, &mut code);
            assert_eq!(code.len(), 11);
            assert!(code.starts_with("X-") && code[2..].bytes().all(|b| ALPHABET.contains(&b)), "{code}");
            assert!(code > previous, "codes sort as their numbers");
            previous = code;
        }
    }

    #[test]
    fn collisions_are_drawn_again() {
        // 32^6 ≈ 10^9 values; at 60,000 codes a birthday collision is near certain.
        let spec = GenerateSpec { count: 60_000, prefix: String::new(), length: 6 };
        let values = spec.generate(&mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(values.len(), 60_000);
        assert!(values.windows(2).all(|w| w[0] < w[1]));
        assert!(values.iter().all(|v| *v < 1 << 30));
    }

    #[test]
    fn imports_are_normalised_and_refused_whole() {
        assert_eq!(check_import(vec![" a1 ".into(), "B2".into()]).unwrap(), vec!["A1", "B2"]);
        assert_eq!(check_import(vec![]), Err(BatchError::Count));
        assert_eq!(check_import(vec!["OK".into(), "BAD CODE".into()]), Err(BatchError::Code { index: 1 }));
        assert_eq!(check_import(vec!["TAB\tX".into()]), Err(BatchError::Code { index: 0 }));
        assert_eq!(
            check_import(vec!["A".into(), "a".into(), "B".into(), "A".into(), "B".into()]),
            Err(BatchError::Duplicates(vec!["A".into(), "B".into()]))
        );
    }
}
