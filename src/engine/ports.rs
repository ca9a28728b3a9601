//! What the engine needs from the outside, as traits: `db/` implements them against
//! PostgreSQL, tests and benches with something smaller.

use std::fmt::Debug;

use crate::domain::event::Validated;

/// Where validation events go (the write-behind queue to `validation_logs`). Must never
/// wait: it is called on the request path.
pub trait ValidationSink: Send + Sync + Debug {
    fn record(&self, event: Validated);
}

/// A sink that keeps nothing (benches, tests that do not look at the log).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoValidationLog;

impl ValidationSink for NoValidationLog {
    fn record(&self, _event: Validated) {}
}
