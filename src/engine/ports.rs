//! What the engine needs from the outside, as traits: `db/` implements them against
//! PostgreSQL, tests and benches with something smaller.

use std::fmt::Debug;

use crate::domain::event::Validated;

/// Where validation events go (the write-behind queue to `validation_logs`). Must never
/// wait: it is called on the request path.
pub trait ValidationSink: Send + Sync + Debug {
    fn record(&self, event: Validated);
}

/// Everything the engine needs from outside.
#[derive(Debug, Clone)]
pub struct Ports {
    pub validations: std::sync::Arc<dyn ValidationSink>,
    pub archive: std::sync::Arc<dyn UsageArchive>,
}

impl Ports {
    /// Ports that keep and know nothing (benches, tests).
    pub fn none() -> Ports {
        Ports { validations: std::sync::Arc::new(NoValidationLog), archive: std::sync::Arc::new(NoArchive) }
    }
}

/// A sink that keeps nothing (benches, tests that do not look at the log).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoValidationLog;

impl ValidationSink for NoValidationLog {
    fn record(&self, _event: Validated) {}
}

/// What PostgreSQL says of an order the ledger has forgotten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedOrder {
    pub user_id: String,
    pub rev: u32,
    pub released: bool,
    /// It was a hold (released: the order is free again).
    pub hold: bool,
}

/// The archive could not be asked.
#[derive(Debug, thiserror::Error)]
#[error("the usage archive is unavailable: {0}")]
pub struct ArchiveError(pub String);

/// An order's answer from the archive.
pub type ArchiveAnswer<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<ArchivedOrder>, ArchiveError>> + Send + 'a>>;

/// Where forgotten orders are looked up (`coupon_usage`). Asked only when the forgotten-order
/// filter says "maybe": rarely, and never on the validate path.
pub trait UsageArchive: Send + Sync + Debug {
    fn order<'a>(&'a self, coupon_id: crate::domain::coupon::CouponId, order_id: &'a str) -> ArchiveAnswer<'a>;
}

/// An archive that holds nothing (tests and benches that forget nothing).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoArchive;

impl UsageArchive for NoArchive {
    fn order<'a>(&'a self, _coupon_id: crate::domain::coupon::CouponId, _order_id: &'a str) -> ArchiveAnswer<'a> {
        Box::pin(std::future::ready(Ok(None)))
    }
}
