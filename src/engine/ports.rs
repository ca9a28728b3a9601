//! What the engine needs from the outside, as traits: `db/` implements them against
//! PostgreSQL, tests and benches with something smaller.

use std::fmt::Debug;

use crate::domain::coupon::{CampaignId, CouponId};
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

/// An order's use as stored, from the archive.
pub type StoredAnswer<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Option<crate::engine::StoredUse>, ArchiveError>> + Send + 'a>,
>;

/// Where forgotten orders are looked up (`coupon_usage`). Asked only when the forgotten-order
/// filter says "maybe", or when a claim's outcome is in doubt: rarely, and never on the
/// validate path.
pub trait UsageArchive: Send + Sync + Debug {
    fn order<'a>(&'a self, coupon_id: crate::domain::coupon::CouponId, order_id: &'a str) -> ArchiveAnswer<'a>;
    /// The order's row whole, if it has one.
    fn stored<'a>(&'a self, coupon_id: crate::domain::coupon::CouponId, order_id: &'a str) -> StoredAnswer<'a>;
    /// The allocation JSON of the use with this id (`coupon_usage.allocation`), if it is
    /// stored and was taken with a cart. An archive of uses without carts has none.
    fn allocation(&self, _id: uuid::Uuid) -> AllocationAnswer<'_> {
        Box::pin(std::future::ready(Ok(None)))
    }
}

/// A use's stored allocation, from the archive.
pub type AllocationAnswer<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<String>, ArchiveError>> + Send + 'a>>;

/// An archive that holds nothing (tests and benches that forget nothing).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoArchive;

impl UsageArchive for NoArchive {
    fn order<'a>(&'a self, _coupon_id: crate::domain::coupon::CouponId, _order_id: &'a str) -> ArchiveAnswer<'a> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn stored<'a>(&'a self, _coupon_id: crate::domain::coupon::CouponId, _order_id: &'a str) -> StoredAnswer<'a> {
        Box::pin(std::future::ready(Ok(None)))
    }
}

/// PostgreSQL could not be asked (unreachable, or it failed): the caller answers 503.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the cluster's database is unavailable: {0}")]
pub struct PortError(pub String);

/// An answer of the [`ClusterPort`].
pub type PortAnswer<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, PortError>> + Send + 'a>>;

/// What a lease grant said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Units added to this instance's lease.
    pub granted: u64,
    /// Units other instances' leases hold (unspent, or spent and not yet shipped).
    pub held_elsewhere: u64,
    /// This instance's epoch is no longer the live one: it must not spend.
    pub fenced: bool,
}

/// A use PostgreSQL decides (per-user limits, a bulk code's uses, a user's live holds): the
/// row to insert, the limits to check against the live rows, the lease units it spends.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    pub id: uuid::Uuid,
    pub rev: u32,
    pub coupon_id: crate::domain::coupon::CouponId,
    pub code: Option<&'a str>,
    pub user_id: &'a str,
    pub order_id: &'a str,
    pub order_value: crate::domain::money::Cents,
    pub discount: crate::domain::money::Cents,
    pub at: chrono::DateTime<chrono::Utc>,
    pub hold_until: Option<chrono::DateTime<chrono::Utc>>,
    pub campaign: Option<crate::domain::coupon::CampaignId>,
    pub user_limit: Option<u32>,
    pub campaign_user_limit: Option<u32>,
    pub code_limit: Option<u32>,
    pub max_holds: Option<u32>,
    pub spent: crate::domain::event::Spent,
    /// For a use taken with §9's fields.
    pub cart: Option<&'a crate::domain::event::CartUse>,
}

/// What a change found: `None` if the row does not exist.
pub type ChangeAnswer = Option<Changed>;

/// What PostgreSQL decided of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The row is in, at this revision.
    Taken {
        rev: u32,
    },
    /// The order already has a row (a replay, another user's, or a spent order).
    Exists(StoredRow),
    /// A limit counted in PostgreSQL is reached.
    Refused(crate::domain::rules::Reason),
    TooManyHolds,
    /// This instance's epoch is no longer live.
    Fenced,
}

/// What PostgreSQL decided of a set's claims (API.md §10): all taken, or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetClaim {
    /// Every row is in, at these revisions (in the claims' order).
    Taken(Vec<u32>),
    /// The claim at `index` was not taken (for `outcome`), so none was.
    Stopped { index: usize, outcome: ClaimOutcome },
}

/// A `coupon_usage` row as a claim or a change found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    pub rev: u32,
    pub user_id: String,
    pub order_value: crate::domain::money::Cents,
    pub discount: crate::domain::money::Cents,
    pub hold_until: Option<chrono::DateTime<chrono::Utc>>,
    pub released: bool,
    /// For a use taken with §9's fields.
    pub cart: crate::engine::ledger::CartMark,
}

/// What a change of another instance's use found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    /// Whether this call changed it (else the row had moved on).
    pub changed: bool,
    pub rev: u32,
    pub hold: bool,
    pub released: bool,
}

/// What PostgreSQL says of who decides (`engine::alone`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeFacts {
    /// This instance's epoch is live (not waiting for the one deciding alone, not fenced).
    pub live: bool,
    /// Another instance is live or waiting.
    pub others: bool,
    /// The instance and epoch deciding alone, if one does.
    pub alone: Option<(String, i64)>,
}

/// What the engine needs from PostgreSQL when several instances share it: lease grants
/// and returns for totals, claims for the limits only PostgreSQL can count, and changes of
/// uses another instance made. Never called on the validate path.
pub trait ClusterPort: Send + Sync + Debug {
    /// Asks for up to `want` units of `scope` (at least `need` if that many are free), as
    /// its grant number `seq` (one after the other per scope). Asked again with the same
    /// number (its answer was lost), it answers what the first call granted, never granting
    /// twice.
    fn grant(&self, scope: Scope, want: u64, need: u64, seq: u64) -> PortAnswer<'_, Grant>;
    /// Gives back up to `units` of this instance's lease of `scope`, as its return number
    /// `seq` (one after the other per scope); answers how many went. Asked again with the same
    /// number (its answer was lost), it answers what the first call did, never applying twice.
    fn give_back(&self, scope: Scope, units: u64, seq: u64) -> PortAnswer<'_, u64>;
    /// Inserts the row of a use if PostgreSQL's counts allow it.
    fn claim<'a>(&'a self, req: &'a ClaimRequest<'a>) -> PortAnswer<'a, ClaimOutcome>;
    /// Inserts the rows of a set's uses, marked with `group`, if PostgreSQL's counts allow
    /// every one of them; else none (one transaction).
    fn claim_set<'a>(
        &'a self,
        claims: &'a [ClaimRequest<'a>],
        group: &'a crate::domain::event::GroupMark,
    ) -> PortAnswer<'a, SetClaim>;
    /// Confirms (a hold) or releases the use `id` if it is still at revision `rev`.
    fn change(&self, id: uuid::Uuid, rev: u32, release: bool) -> PortAnswer<'_, ChangeAnswer>;
    /// Whether this instance's claim of `id` made at `at` committed having spent lease
    /// units (its note in `claim_spends`).
    fn claim_spent(&self, id: uuid::Uuid, at: chrono::DateTime<chrono::Utc>) -> PortAnswer<'_, bool>;
    /// Forgets the notes of this instance's claims made before `before`.
    fn forget_claims_before(&self, before: chrono::DateTime<chrono::Utc>) -> PortAnswer<'_, ()>;
    /// Who decides now.
    fn mode(&self) -> PortAnswer<'_, ModeFacts>;
    /// Takes the right to decide alone, if no other instance is live or waiting, settling
    /// this instance's leases; answers the feed position every use so far has, or `None`.
    /// Asked again (its answer lost), it answers the same way.
    fn take_alone(&self, alone_timeout: std::time::Duration) -> PortAnswer<'_, Option<i64>>;
    /// Gives the right to decide alone up (if held), letting waiting instances decide.
    fn release_alone(&self) -> PortAnswer<'_, ()>;
    /// Whether every other live or waiting instance has shipped every use it acknowledged
    /// before `since` (PostgreSQL's clock now, if `None`), and the time that was asked
    /// about: once it has, a use not in PostgreSQL was never acknowledged anywhere.
    fn shipped_everywhere(
        &self,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> PortAnswer<'_, (chrono::DateTime<chrono::Utc>, bool)>;
}

/// A limited total that instances lease blocks of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// A coupon's `usage_limit`, in uses.
    CouponUses(CouponId),
    /// A campaign's `usage_limit`, in uses.
    CampaignUses(CampaignId),
    /// A campaign's `budget`, in cents.
    CampaignCents(CampaignId),
}

impl Scope {
    /// The `quotas.kind` of PostgreSQL.
    pub fn kind(self) -> i16 {
        match self {
            Scope::CouponUses(_) => 1,
            Scope::CampaignUses(_) => 2,
            Scope::CampaignCents(_) => 3,
        }
    }

    /// The coupon or campaign.
    pub fn id(self) -> i64 {
        match self {
            Scope::CouponUses(id) | Scope::CampaignUses(id) | Scope::CampaignCents(id) => id,
        }
    }

    /// The scope of a `quotas` row.
    pub(crate) fn from_row(kind: i16, id: i64) -> Option<Scope> {
        match kind {
            1 => Some(Scope::CouponUses(id)),
            2 => Some(Scope::CampaignUses(id)),
            3 => Some(Scope::CampaignCents(id)),
            _ => None,
        }
    }
}
