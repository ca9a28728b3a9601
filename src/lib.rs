//! coupon-engine: coupon validation and redemption answered from memory, with PostgreSQL
//! behind it.
//!
//! # Layout, in reading order
//! - [`domain`]: coupons, campaigns, money, identities, the rules and the events they
//!   produce; no I/O, no clock.
//! - [`engine`]: the use cases (validate, redeem, hold, release, expire) over the catalog of
//!   definitions, the ledger of uses and the journal.
//! - [`journal`]: the local durable log: framed records, group-commit fsync, checkpoint.
//! - [`db`]: PostgreSQL: loading, the change listener, shipping the journal, the validation
//!   log, admin reads and writes, seeding.
//! - [`http`]: the hyper server, the route table, request parsing and JSON responses.
//! - [`metrics`]: the Prometheus registry and its pre-registered handles.
//! - [`history`]: the invariants over a history of answers, which the simulation and the
//!   fault campaign check.
//! - [`app`]: assembly and the start-up and shutdown order.
//! - [`config`], [`telemetry`], [`backoff`], [`seed`]: settings, logging, retry delays, the
//!   reference data set.

pub mod app;
pub(crate) mod backoff;
pub mod config;
pub mod db;
pub mod domain;
pub mod engine;
pub mod history;
pub mod http;
pub mod journal;
pub mod metrics;
pub mod seed;
#[cfg(test)]
mod sim;
pub mod telemetry;
