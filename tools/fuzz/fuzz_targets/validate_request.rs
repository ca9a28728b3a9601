//! Request bodies, carts included: any bytes give a checked request or an error, never a
//! panic, and an accepted request always meets the input rules.
#![no_main]

use coupon_engine::domain::coupon::MAX_CODE_LEN;
use coupon_engine::domain::identity::MAX_ID_LEN;
use coupon_engine::domain::currency::Currency;
use coupon_engine::http::cart_input::CartLimits;
use coupon_engine::http::request::{Codes, ReleaseBody, ReleaseCodes, UseBody, ValidateBody};
use libfuzzer_sys::fuzz_target;

fn well_formed(text: &str, max: usize) -> bool {
    !text.is_empty() && text.chars().count() <= max && !text.chars().any(char::is_control)
}

fuzz_target!(|data: &[u8]| {
    let limits = CartLimits {
        default_currency: Currency::parse("EUR").expect("EUR"),
        max_lines: 100,
        max_codes: 5,
        max_body_bytes: 64 << 10,
    };
    if let Ok(request) = ValidateBody::parse(data, limits) {
        let codes: Vec<&str> = match &request.codes {
            Codes::One(code) => vec![code],
            Codes::Several(several) => {
                assert!((1..=5).contains(&several.codes.len()));
                several.codes.iter().map(|c| &**c).collect()
            }
        };
        for (i, code) in codes.iter().enumerate() {
            assert!(well_formed(code, MAX_CODE_LEN));
            assert_eq!(code.trim(), *code);
            assert!(!code.bytes().any(|b| b.is_ascii_lowercase()));
            assert!(!codes[..i].contains(code), "codes are distinct");
        }
        assert!(well_formed(&request.user_id, MAX_ID_LEN));
        assert_eq!(request.user_id.trim(), request.user_id);
        assert!(request.order_id.as_deref().is_none_or(|o| well_formed(o, MAX_ID_LEN)));
        assert!(request.order_value.get() <= coupon_engine::domain::money::MAX_CENTS);
        if let Some(cart) = &request.cart
            && cart.has_items
        {
            assert!((1..=100).contains(&cart.cart.lines.len()));
            assert!(cart.cart.lines.iter().all(|l| (1..=10_000).contains(&l.quantity)));
            assert_eq!(cart.cart.order_value(), request.order_value.get());
        }
    }
    if let Ok(request) = UseBody::parse(data, 3600, limits) {
        assert!(well_formed(&request.order_id, MAX_ID_LEN));
        assert!(request.ttl_seconds.is_none_or(|ttl| (1..=3600).contains(&ttl)));
    }
    if let Ok(request) = ReleaseBody::parse(data, 5) {
        assert!(well_formed(&request.order_id, MAX_ID_LEN));
        match &request.codes {
            ReleaseCodes::One(code) => assert!(well_formed(code, MAX_CODE_LEN)),
            ReleaseCodes::Several(codes) => {
                assert!((1..=5).contains(&codes.len()) && codes.iter().all(|c| well_formed(c, MAX_CODE_LEN)))
            }
            ReleaseCodes::All => {}
        }
    }
});
