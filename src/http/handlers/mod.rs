//! Route handlers, by audience: the public coupon routes, operations, and the admin API.

pub mod admin;
pub mod campaigns;
pub mod instances;
pub mod ops;
pub mod public;
