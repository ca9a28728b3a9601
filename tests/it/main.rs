//! Integration tests: the real service against a real PostgreSQL (DATABASE_URL), one fresh
//! database per test, HTTP on an ephemeral port.

// Helpers are `pub` for the sibling test modules; this binary exports nothing.
#![allow(unreachable_pub)]

mod admin;
mod alone;
mod campaigns;
mod carts;
mod cluster;
mod cut_off;
mod durability;
mod full_disk;
mod helpers;
mod holds;
mod hostile;
mod input;
mod lifecycle;
mod live_cache;
mod operations;
mod redeem;
mod seed;
mod stacking;
mod trust;
mod validate;
mod validation_log;
