//! Admin coupon bodies: never a panic; an accepted coupon passes the schema's own checks.
#![no_main]

use coupon_engine::http::coupon_input::CouponPatch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(patch) = CouponPatch::parse(data)
        && let Ok(coupon) = patch.into_new_coupon()
    {
        assert!(coupon.check().is_ok());
    }
});
