//! The pure domain: coupons, campaigns, money, identities, the rules and the events they
//! produce. No I/O, no async, no clock: `now` is always a parameter.

pub mod allocation;
pub mod batch;
pub mod campaign;
pub mod cart;
pub mod cart_discount;
pub mod coupon;
pub mod currency;
pub mod event;
pub mod identity;
pub mod money;
pub mod rules;
