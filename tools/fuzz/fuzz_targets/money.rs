//! Money text: never a panic; an accepted amount is in range and prints back to itself.
#![no_main]

use coupon_engine::domain::money::{Cents, MAX_CENTS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(amount) = Cents::parse_json_number(text) {
        assert!(amount.get() <= MAX_CENTS);
        assert_eq!(Cents::parse_json_number(&amount.to_string()), Ok(amount));
        // What serde_json accepts as a number it must also parse as one.
        assert!(serde_json_number(text));
    }
});

/// Whether `text` is a JSON number by the grammar (checked without floats).
fn serde_json_number(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut idx = usize::from(bytes.first() == Some(&b'-'));
    let digits = |idx: &mut usize| {
        let start = *idx;
        while *idx < bytes.len() && bytes[*idx].is_ascii_digit() {
            *idx += 1;
        }
        *idx - start
    };
    let int_start = idx;
    if digits(&mut idx) == 0 || (bytes[int_start] == b'0' && idx - int_start > 1) {
        return false;
    }
    if bytes.get(idx) == Some(&b'.') {
        idx += 1;
        if digits(&mut idx) == 0 {
            return false;
        }
    }
    if matches!(bytes.get(idx), Some(b'e' | b'E')) {
        idx += 1;
        if matches!(bytes.get(idx), Some(b'+' | b'-')) {
            idx += 1;
        }
        if digits(&mut idx) == 0 {
            return false;
        }
    }
    idx == bytes.len()
}
