//! The pure domain: coupons, money and the validation rules. No I/O, no async, no clock.

pub mod coupon;
pub mod money;
pub mod rules;
