//! A campaign's standing as this instance counts it, and the rules on it that no request
//! decides: when it is exhausted, and which change of its limits would fall below its usage.

use crate::domain::campaign::Campaign;
use crate::domain::money::Cents;
use crate::engine::Engine;
use crate::engine::ledger::Tally;

/// What a campaign has used and has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CampaignStanding {
    pub used: u32,
    pub spent: Cents,
    pub remaining_uses: Option<u32>,
    pub remaining_budget: Option<Cents>,
    /// Its cap or its budget is reached: every further use is refused.
    pub exhausted: bool,
}

impl CampaignStanding {
    fn of(campaign: &Campaign, used: u32, spent: u64) -> CampaignStanding {
        let spent = Cents::new(spent).unwrap_or(Cents::ZERO);
        CampaignStanding {
            used,
            spent,
            remaining_uses: campaign.usage_limit.map(|limit| limit.saturating_sub(used)),
            remaining_budget: campaign.budget.map(|budget| budget.saturating_sub(spent)),
            exhausted: campaign.usage_limit.is_some_and(|limit| used >= limit)
                || campaign.budget.is_some_and(|budget| spent >= budget),
        }
    }
}

/// A change refused: `field` would be below what is `used` already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BelowUsage {
    /// The contract's name of the field.
    pub field: &'static str,
    pub used: String,
}

impl Engine {
    /// Live uses and discounts of `campaign`, and what is left of its limits.
    pub(crate) fn campaign_standing(&self, campaign: &Campaign) -> CampaignStanding {
        let count = self.ledger.count(Tally::Campaign(campaign.id));
        CampaignStanding::of(campaign, count.live, count.spent)
    }

    /// Whether `next` (a campaign's new definition) keeps its cap and budget at or above
    /// what it has used: lowering them below that is refused, never applied.
    pub(crate) fn check_campaign_change(&self, next: &Campaign) -> Result<(), BelowUsage> {
        let standing = self.campaign_standing(next);
        if next.usage_limit.is_some_and(|limit| limit < standing.used) {
            return Err(BelowUsage { field: "usageLimit", used: standing.used.to_string() });
        }
        if next.budget.is_some_and(|budget| budget < standing.spent) {
            return Err(BelowUsage { field: "budget", used: standing.spent.to_string() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campaign(limit: Option<u32>, budget: Option<u64>) -> Campaign {
        let mut c = Campaign::new(1, "c");
        c.usage_limit = limit;
        c.budget = budget.map(|b| Cents::new(b).unwrap());
        c
    }

    #[test]
    fn standing_says_what_is_left_and_when_it_is_exhausted() {
        // (limit, budget, used, spent) → (remaining uses, remaining cents, exhausted)
        type Case = (Option<u32>, Option<u64>, u32, u64, Option<u32>, Option<u64>, bool);
        let cases: [Case; 7] = [
            (None, None, 5, 500, None, None, false),
            (Some(10), None, 9, 0, Some(1), None, false),
            (Some(10), None, 10, 0, Some(0), None, true),
            (Some(10), None, 12, 0, Some(0), None, true),
            (None, Some(1_000), 3, 999, None, Some(1), false),
            (None, Some(1_000), 3, 1_000, None, Some(0), true),
            (Some(10), Some(1_000), 10, 10, Some(0), Some(990), true),
        ];
        for (limit, budget, used, spent, uses_left, cents_left, exhausted) in cases {
            let s = CampaignStanding::of(&campaign(limit, budget), used, spent);
            assert_eq!(s.remaining_uses, uses_left, "{limit:?} {budget:?} {used} {spent}");
            assert_eq!(s.remaining_budget.map(Cents::get), cents_left, "{limit:?} {budget:?} {used} {spent}");
            assert_eq!(s.exhausted, exhausted, "{limit:?} {budget:?} {used} {spent}");
        }
    }
}
