//! coupon-engine: coupon validation answered from memory, with PostgreSQL behind it.
//!
//! # Layout, in reading order
//! - [`domain`]: pure rules, money and discount maths; no I/O, no clock.
//! - [`cache`]: the arc-swapped catalog of coupons and the live usage counters beside it.
//! - [`db`]: PostgreSQL: pool, migrations, loading, seeding, the validation-log write-behind.
//! - [`http`]: the hyper server, router, request parsing and JSON responses.
//! - [`metrics`]: the Prometheus registry and its pre-registered handles.
//! - [`app`]: assembly and the start-up and shutdown order.
//! - [`config`], [`telemetry`]: settings and logging.

pub mod app;
pub mod cache;
pub mod config;
pub mod db;
pub mod domain;
pub mod http;
pub mod journal;
pub mod metrics;
pub mod telemetry;
