//! Who and what a request is about: user and order ids as the API accepts them, and the
//! deterministic id of a redemption.

use uuid::Uuid;

use crate::domain::coupon::CouponId;

/// Longest user or order id, in characters, after trimming.
pub const MAX_ID_LEN: usize = 128;

/// Why an id is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most 128 characters")]
    TooLong,
    #[error("must not contain control characters")]
    Control,
}

/// A user or order id as it is compared everywhere: surrounding whitespace removed, then
/// taken exactly (`"carol "` is `"carol"`; `"CAROL"` is someone else).
pub(crate) fn normalize_id(raw: &str) -> Result<&str, IdError> {
    check_text(raw.trim(), MAX_ID_LEN)
}

/// Text of 1 to `max_chars` characters without control characters, as it is.
pub(crate) fn check_text(text: &str, max_chars: usize) -> Result<&str, IdError> {
    if text.is_empty() {
        return Err(IdError::Empty);
    }
    if text.chars().any(char::is_control) {
        return Err(IdError::Control);
    }
    if text.len() > max_chars && text.chars().count() > max_chars {
        return Err(IdError::TooLong);
    }
    Ok(text)
}

/// The namespace of redemption ids (UUIDv5).
const REDEMPTIONS: Uuid = Uuid::from_u128(0x6f1c_2d4e_8a3b_4c5d_9e0f_1a2b_3c4d_5e6f);

/// The id of the redemption (or hold) of `order_id` on `coupon_id`: the same on every
/// instance, so that a retry anywhere converges on one redemption.
pub fn redemption_id(coupon_id: CouponId, order_id: &str) -> Uuid {
    let mut name = Vec::with_capacity(order_id.len() + 21);
    name.extend_from_slice(coupon_id.to_string().as_bytes());
    name.push(b'/');
    name.extend_from_slice(order_id.as_bytes());
    Uuid::new_v5(&REDEMPTIONS, &name)
}

/// The namespace of the ids of sets of codes (UUIDv5).
const GROUPS: Uuid = Uuid::from_u128(0x2b7e_9a41_c6d0_4f83_a15e_7d2c_90b4_3e61);

/// The id of the set of `codes` (normalised, in any order) on `order_id` (API.md §10): the
/// same for every retry of the same set, on every instance; another set, another id.
pub fn group_id(order_id: &str, codes: &[impl AsRef<str>]) -> Uuid {
    let mut sorted: Vec<&str> = codes.iter().map(AsRef::as_ref).collect();
    sorted.sort_unstable();
    let mut name = Vec::with_capacity(order_id.len() + sorted.iter().map(|c| c.len() + 1).sum::<usize>());
    name.extend_from_slice(order_id.as_bytes());
    for code in sorted {
        // Codes and order ids hold no control characters: a newline is part of neither.
        name.push(b'\n');
        name.extend_from_slice(code.as_bytes());
    }
    Uuid::new_v5(&GROUPS, &name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_has_one_id_whatever_the_order_of_its_codes() {
        let id = group_id("ord-1", &["A", "B"]);
        assert_eq!(group_id("ord-1", &["B", "A"]), id);
        for other in [group_id("ord-1", &["A"]), group_id("ord-1", &["A", "C"]), group_id("ord-2", &["A", "B"])] {
            assert_ne!(other, id);
        }
        // The separator keeps "A"+"B" apart from "AB".
        assert_ne!(group_id("ord-1", &["AB"]), group_id("ord-1", &["A", "B"]));
    }

    #[test]
    fn ids_are_trimmed_and_checked() {
        for (raw, expected) in [
            ("carol", Ok("carol")),
            ("  carol \t", Ok("carol")),
            ("CAROL", Ok("CAROL")),
            ("ユーザー", Ok("ユーザー")),
            ("", Err(IdError::Empty)),
            ("   ", Err(IdError::Empty)),
            ("a\u{0}b", Err(IdError::Control)),
            ("a\u{1b}[31m", Err(IdError::Control)),
            ("a\u{85}b", Err(IdError::Control)),
        ] {
            assert_eq!(normalize_id(raw), expected, "{raw:?}");
        }
        assert_eq!(normalize_id(&"é".repeat(128)).map(str::len), Ok(256));
        assert_eq!(normalize_id(&"é".repeat(129)), Err(IdError::TooLong));
        assert_eq!(normalize_id(&format!(" {} ", "x".repeat(128))).map(str::len), Ok(128));
    }

    #[test]
    fn redemption_ids_are_deterministic_and_distinct() {
        assert_eq!(redemption_id(1, "ord-1"), redemption_id(1, "ord-1"));
        assert_ne!(redemption_id(1, "ord-1"), redemption_id(2, "ord-1"));
        assert_ne!(redemption_id(1, "ord-1"), redemption_id(1, "ord-2"));
        // The separator keeps (1, "2/x") and (12, "/x") apart.
        assert_ne!(redemption_id(1, "2/x"), redemption_id(12, "/x"));
        assert_eq!(redemption_id(1, "ord-1").get_version_num(), 5);
    }
}
