//! A campaign: one offer whose cap, money budget and per-customer limit are shared by all of
//! its coupons and bulk codes.

use chrono::{DateTime, Utc};

use crate::domain::coupon::{CampaignId, Status};
use crate::domain::money::Cents;

/// Longest campaign name.
pub const MAX_NAME_LEN: usize = 100;

/// A campaign definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    pub id: CampaignId,
    pub name: Box<str>,
    pub status: Status,
    /// Live redemptions and holds allowed across every code; `None` is unlimited.
    pub usage_limit: Option<u32>,
    /// Live redemptions and holds one user may have across every code.
    pub per_user_limit: Option<u32>,
    /// The most the live discounts may add up to; `None` is unlimited.
    pub budget: Option<Cents>,
    pub valid_from: Option<DateTime<Utc>>,
    pub valid_until: Option<DateTime<Utc>>,
    pub version: i64,
}

/// Why a campaign definition is impossible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CampaignError {
    #[error("name must be 1 to 100 characters without control characters")]
    InvalidName,
    #[error("validFrom must be before validUntil")]
    EmptyValidityWindow,
}

/// Whether a campaign name may be stored.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.trim().is_empty()
        && name.trim() == name
        && name.chars().count() <= MAX_NAME_LEN
        && !name.chars().any(char::is_control)
}

impl Campaign {
    /// An active campaign with this name and no limit, budget or window.
    pub fn new(id: CampaignId, name: &str) -> Campaign {
        Campaign {
            id,
            name: name.into(),
            status: Status::Active,
            usage_limit: None,
            per_user_limit: None,
            budget: None,
            valid_from: None,
            valid_until: None,
            version: 1,
        }
    }

    /// Checks the invariants the database also enforces.
    pub fn check(&self) -> Result<(), CampaignError> {
        if !is_valid_name(&self.name) {
            return Err(CampaignError::InvalidName);
        }
        if let (Some(from), Some(until)) = (self.valid_from, self.valid_until)
            && from >= until
        {
            return Err(CampaignError::EmptyValidityWindow);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for (name, ok) in [
            ("Black Friday 2026", true),
            ("é", true),
            ("", false),
            ("  ", false),
            (" padded", false),
            ("tab\there", false),
            (&"x".repeat(100), true),
            (&"x".repeat(101), false),
        ] {
            assert_eq!(is_valid_name(name), ok, "{name:?}");
        }
    }
}
