//! Admin campaign and batch bodies: camelCase JSON to a checked [`Campaign`] (or a patch of
//! one) and to a batch request (its codes' source and its rule), every refusal naming its
//! field.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use crate::db::batches::Source;
use crate::domain::batch::{self, BatchError, GenerateSpec};
use crate::domain::campaign::{Campaign, CampaignError};
use crate::domain::coupon::{Coupon, CouponKind, Status};
use crate::domain::money::Cents;
use crate::http::coupon_input::{CouponPatch, TERM_FIELDS, limit, money, not_null, nullable, status, timestamp};
use crate::http::error::ApiError;
use crate::http::request::{Fields, optional_string, parse_object};

/// The fields of a campaign create or patch. Outer `None`: not given; inner `None`: null.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CampaignPatch {
    pub name: Option<String>,
    pub status: Option<Status>,
    pub usage_limit: Option<Option<u32>>,
    pub per_user_limit: Option<Option<u32>>,
    pub budget: Option<Option<Cents>>,
    pub valid_from: Option<Option<DateTime<Utc>>>,
    pub valid_until: Option<Option<DateTime<Utc>>>,
}

const CAMPAIGN_FIELDS: [&str; 7] =
    ["name", "status", "usageLimit", "perUserLimit", "budget", "validFrom", "validUntil"];

impl CampaignPatch {
    /// Parses a body; unknown and duplicated fields are refused.
    pub fn parse(body: &[u8]) -> Result<CampaignPatch, ApiError> {
        let fields: Fields<'_> = parse_object(body)?;
        fields.only(&CAMPAIGN_FIELDS)?;
        let get = |name: &str| fields.get(name);
        Ok(CampaignPatch {
            name: not_null(get("name"), "name", |raw| {
                Ok(optional_string(Some(raw), "name")?.unwrap_or_default().into_owned())
            })?,
            status: not_null(get("status"), "status", |raw| status(raw, "status"))?,
            usage_limit: nullable(get("usageLimit"), |raw| limit(raw, "usageLimit"))?,
            per_user_limit: nullable(get("perUserLimit"), |raw| limit(raw, "perUserLimit"))?,
            budget: nullable(get("budget"), |raw| money(raw, "budget"))?,
            valid_from: nullable(get("validFrom"), |raw| timestamp(raw, "validFrom"))?,
            valid_until: nullable(get("validUntil"), |raw| timestamp(raw, "validUntil"))?,
        })
    }

    /// A new campaign: `name` is required, `status` defaults to active, the rest to none.
    pub(crate) fn into_new_campaign(self) -> Result<Campaign, ApiError> {
        let name = self.name.clone().ok_or(ApiError::MissingField { field: "name" })?;
        self.apply_to(&Campaign { version: 0, ..Campaign::new(0, &name) })
    }

    /// `campaign` with the given fields changed, checked.
    pub(crate) fn apply_to(&self, campaign: &Campaign) -> Result<Campaign, ApiError> {
        let next = Campaign {
            id: campaign.id,
            name: self.name.clone().map_or_else(|| campaign.name.clone(), Into::into),
            status: self.status.unwrap_or(campaign.status),
            usage_limit: self.usage_limit.unwrap_or(campaign.usage_limit),
            per_user_limit: self.per_user_limit.unwrap_or(campaign.per_user_limit),
            budget: self.budget.unwrap_or(campaign.budget),
            valid_from: self.valid_from.unwrap_or(campaign.valid_from),
            valid_until: self.valid_until.unwrap_or(campaign.valid_until),
            version: campaign.version,
        };
        next.check().map_err(|err| {
            let field = match err {
                CampaignError::InvalidName => "name",
                CampaignError::EmptyValidityWindow => "validUntil",
            };
            ApiError::InvalidField { field, problem: err.to_string() }
        })?;
        Ok(next)
    }
}

/// A checked `POST /admin/campaigns/{name}/batches` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRequest {
    pub source: Source,
    /// The terms every code of the batch shares (its code is set when the batch is claimed).
    pub rule: Coupon,
    pub uses_per_code: u32,
}

/// A batch's own fields; its rule takes a coupon's terms ([`TERM_FIELDS`]) too.
const BATCH_FIELDS: [&str; 5] = ["count", "prefix", "length", "codes", "usesPerCode"];

/// Most uses one code may allow (the `code_batches_uses_range` constraint).
const MAX_USES_PER_CODE: u64 = 1_000_000;

impl BatchRequest {
    /// Parses a generate body (`count`) or an import body (`codes`) with the rule's fields.
    pub fn parse(body: &[u8]) -> Result<BatchRequest, ApiError> {
        let fields: Fields<'_> = parse_object(body)?;
        let known: Vec<&str> = BATCH_FIELDS.iter().chain(&TERM_FIELDS).copied().collect();
        fields.only(&known)?;
        let get = |name: &str| fields.get(name).filter(|raw| raw.get() != "null");
        let source = match (get("count"), get("codes")) {
            (Some(_), Some(_)) => {
                return Err(ApiError::InvalidField { field: "codes", problem: "cannot be given with count".into() });
            }
            (None, None) => return Err(ApiError::MissingField { field: "count" }),
            (Some(count), None) => {
                let count = whole(count, "count")?;
                let prefix = optional_string(get("prefix"), "prefix")?.unwrap_or_default();
                let length = get("length").map(|raw| whole(raw, "length")).transpose()?;
                Source::Generated(GenerateSpec::new(count, &prefix, length).map_err(batch_error)?)
            }
            (None, Some(codes)) => {
                for generated_only in ["prefix", "length"] {
                    if get(generated_only).is_some() {
                        return Err(ApiError::InvalidField {
                            field: if generated_only == "prefix" { "prefix" } else { "length" },
                            problem: "only applies to generated codes".into(),
                        });
                    }
                }
                let codes: Vec<String> = serde_json::from_str(codes.get()).map_err(|_| ApiError::InvalidField {
                    field: "codes",
                    problem: "must be an array of strings".into(),
                })?;
                Source::Imported(batch::check_import(codes).map_err(batch_error)?)
            }
        };
        let terms = CouponPatch {
            code: Some("~BATCH".into()),
            kind: Some(CouponKind::TimeSpecific),
            ..CouponPatch::from_fields(&fields)?
        };
        let rule = terms.into_new_coupon()?;
        let uses_per_code = match get("usesPerCode") {
            None => 1,
            Some(raw) => {
                whole(raw, "usesPerCode").ok().filter(|n| (1..=MAX_USES_PER_CODE).contains(n)).ok_or_else(|| {
                    ApiError::InvalidField {
                        field: "usesPerCode",
                        problem: format!("must be a whole number from 1 to {MAX_USES_PER_CODE}"),
                    }
                })? as u32
            }
        };
        Ok(BatchRequest { source, rule, uses_per_code })
    }
}

fn whole(raw: &RawValue, field: &'static str) -> Result<u64, ApiError> {
    raw.get().parse().map_err(|_| ApiError::InvalidField { field, problem: "must be a whole number".into() })
}

fn batch_error(err: BatchError) -> ApiError {
    let field = match &err {
        BatchError::Count => "count",
        BatchError::Prefix | BatchError::EmptyPrefix => "prefix",
        BatchError::Length { .. } => "length",
        BatchError::Code { .. } => "codes",
        BatchError::Duplicates(codes) => return ApiError::DuplicateCodes { codes: codes.clone() },
    };
    ApiError::InvalidField { field, problem: err.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(err: &ApiError) -> Option<&'static str> {
        match err {
            ApiError::MissingField { field } | ApiError::InvalidField { field, .. } => Some(*field),
            _ => None,
        }
    }

    #[test]
    fn campaigns_are_checked() {
        let created = CampaignPatch::parse(
            br#"{"name":"Black Friday","usageLimit":100,"perUserLimit":1,"budget":2500.5,
                "validFrom":"2026-11-27T00:00:00Z","validUntil":"2026-11-30T00:00:00Z"}"#,
        )
        .unwrap()
        .into_new_campaign()
        .unwrap();
        assert_eq!(&*created.name, "Black Friday");
        assert_eq!((created.usage_limit, created.per_user_limit), (Some(100), Some(1)));
        assert_eq!(created.budget, Some(Cents::new(250_050).unwrap()));
        assert_eq!(created.status, Status::Active);
        for (body, field) in [
            (r#"{"budget":10}"#, "name"),
            (r#"{"name":""}"#, "name"),
            (r#"{"name":" x"}"#, "name"),
            (r#"{"name":"x","budget":-1}"#, "budget"),
            (r#"{"name":"x","budget":1.001}"#, "budget"),
            (r#"{"name":"x","usageLimit":-1}"#, "usageLimit"),
            (r#"{"name":"x","status":"paused"}"#, "status"),
            (r#"{"name":"x","validFrom":"2026-02-01T00:00:00Z","validUntil":"2026-01-01T00:00:00Z"}"#, "validUntil"),
        ] {
            let err = CampaignPatch::parse(body.as_bytes()).and_then(CampaignPatch::into_new_campaign).unwrap_err();
            assert_eq!(field_of(&err), Some(field), "{body}: {err}");
        }
        assert_eq!(CampaignPatch::parse(br#"{"name":"x","colour":1}"#).unwrap_err().code(), "INVALID_JSON");
        let patched =
            CampaignPatch::parse(br#"{"budget":null,"status":"inactive"}"#).unwrap().apply_to(&created).unwrap();
        assert_eq!((patched.budget, patched.status, patched.usage_limit), (None, Status::Inactive, Some(100)));
    }

    #[test]
    fn batch_bodies_generate_or_import() {
        let generate = BatchRequest::parse(
            br#"{"count":1000,"prefix":"bf26-","length":10,"discountType":"fixed","discountValue":5,"usesPerCode":2}"#,
        )
        .unwrap();
        assert_eq!(
            generate.source,
            Source::Generated(GenerateSpec { count: 1000, prefix: "BF26-".into(), length: 10 })
        );
        assert_eq!(
            (&generate.rule.discount, generate.uses_per_code),
            (&crate::domain::coupon::Discount::Fixed(Cents::new(500).unwrap()), 2)
        );
        // A rule takes a coupon's cart terms too.
        let scoped = BatchRequest::parse(
            br#"{"count":10,"prefix":"S-","discountType":"percentage","discountValue":20,"target":"items",
                 "scope":{"includeCategories":["shirts"]},"minQuantity":2}"#,
        )
        .unwrap();
        assert!(scoped.rule.scope.as_ref().is_some_and(|s| s.include_categories.contains("shirts")));
        assert_eq!(scoped.rule.min_quantity, Some(2));
        let import =
            BatchRequest::parse(br#"{"codes":["a1","B2"],"discountType":"percentage","discountValue":10}"#).unwrap();
        assert_eq!(import.source, Source::Imported(vec!["A1".into(), "B2".into()]));
        assert_eq!(import.uses_per_code, 1);
        let rule = r#""discountType":"fixed","discountValue":5"#;
        for (body, field) in [
            (format!("{{{rule}}}"), Some("count")),
            (format!(r#"{{"count":0,{rule}}}"#), Some("count")),
            (format!(r#"{{"count":10000001,{rule}}}"#), Some("count")),
            (format!(r#"{{"count":-5,{rule}}}"#), Some("count")),
            (format!(r#"{{"count":1000000,"length":6,{rule}}}"#), Some("length")),
            (format!(r#"{{"count":10,"prefix":"A B",{rule}}}"#), Some("prefix")),
            (format!(r#"{{"count":10,"codes":["A"],{rule}}}"#), Some("codes")),
            (format!(r#"{{"codes":[],{rule}}}"#), Some("count")),
            (format!(r#"{{"codes":"A",{rule}}}"#), Some("codes")),
            (format!(r#"{{"codes":["OK","BAD\u0007"],{rule}}}"#), Some("codes")),
            (format!(r#"{{"codes":["A"],"prefix":"P",{rule}}}"#), Some("prefix")),
            (format!(r#"{{"count":10,"prefix":"P-",{rule},"usesPerCode":0}}"#), Some("usesPerCode")),
            (format!(r#"{{"count":10,{rule}}}"#), Some("prefix")),
            (format!(r#"{{"count":10,"prefix":"P-",{rule},"scope":{{"includeColours":[]}}}}"#), Some("scope")),
            (format!(r#"{{"count":10,"prefix":"P-",{rule},"userId":"u1"}}"#), None),
            (r#"{"count":10,"prefix":"P-","discountType":"fixed"}"#.into(), Some("discountValue")),
            (
                r#"{"count":10,"prefix":"P-","discountType":"percentage","discountValue":101}"#.into(),
                Some("discountValue"),
            ),
            (
                format!(
                    r#"{{"count":10,"prefix":"P-",{rule},"validFrom":"2026-02-01T00:00:00Z","validUntil":"2026-01-01T00:00:00Z"}}"#
                ),
                Some("validUntil"),
            ),
        ] {
            let err = BatchRequest::parse(body.as_bytes()).unwrap_err();
            assert_eq!(field_of(&err), field, "{body}: {err}");
        }
        let duplicates = BatchRequest::parse(format!(r#"{{"codes":["A","a","B"],{rule}}}"#).as_bytes()).unwrap_err();
        assert_eq!(duplicates, ApiError::DuplicateCodes { codes: vec!["A".into()] });
    }
}
