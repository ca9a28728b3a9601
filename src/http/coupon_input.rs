//! Admin coupon bodies: camelCase JSON to a patch over a domain [`Coupon`], exactly checked.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use crate::domain::cart::Scope;
use crate::domain::cart_discount::{BuyXGetY, Target};
use crate::domain::cart_fields::{self, FieldError};
use crate::domain::coupon::{
    Allocation, Coupon, CouponError, CouponKind, CurrencyOption, Discount, DiscountType, MinOrderBasis, Status,
    normalize_code,
};
use crate::domain::currency::Currency;
use crate::domain::money::Cents;
use crate::domain::stack::Classes;
use crate::http::error::ApiError;
use crate::http::request::{Fields, id, optional_string, parse_object};

/// The fields of an admin create or patch. Outer `None`: not given; inner `None`: JSON null.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CouponPatch {
    pub code: Option<String>,
    pub kind: Option<CouponKind>,
    pub status: Option<Status>,
    pub discount_type: Option<DiscountType>,
    /// In hundredths: of a percent for a percentage, of the currency for a fixed amount.
    pub discount_value: Option<u64>,
    pub max_discount: Option<Option<Cents>>,
    pub min_order_value: Option<Cents>,
    pub usage_limit: Option<Option<u32>>,
    pub per_user_limit: Option<Option<u32>>,
    pub user_id: Option<Option<String>>,
    pub valid_from: Option<Option<DateTime<Utc>>>,
    pub valid_until: Option<Option<DateTime<Utc>>>,
    /// The campaign's name.
    pub campaign: Option<Option<String>>,
    pub target: Option<Target>,
    pub scope: Option<Option<Scope>>,
    pub min_quantity: Option<Option<u32>>,
    pub min_order_basis: Option<MinOrderBasis>,
    pub allocation: Option<Allocation>,
    pub buy_x_get_y: Option<Option<BuyXGetY>>,
    pub currency: Option<Option<Currency>>,
    pub currency_options: Option<Option<Vec<CurrencyOption>>>,
    pub priority: Option<i32>,
    pub combines_with: Option<Classes>,
}

/// The fields of a coupon's terms: what a batch's rule takes too.
pub(crate) const TERM_FIELDS: [&str; 16] = [
    "discountType",
    "discountValue",
    "maxDiscount",
    "minOrderValue",
    "validFrom",
    "validUntil",
    "target",
    "scope",
    "minQuantity",
    "minOrderBasis",
    "allocation",
    "buyXGetY",
    "currency",
    "currencyOptions",
    "priority",
    "combinesWith",
];

/// The fields of a coupon beyond its terms.
const OWN_FIELDS: [&str; 7] = ["code", "type", "status", "usageLimit", "perUserLimit", "userId", "campaign"];

impl CouponPatch {
    /// Parses a body; unknown and duplicated fields are refused.
    pub fn parse(body: &[u8]) -> Result<CouponPatch, ApiError> {
        let fields: Fields<'_> = parse_object(body)?;
        let known: Vec<&str> = OWN_FIELDS.iter().chain(&TERM_FIELDS).copied().collect();
        fields.only(&known)?;
        CouponPatch::from_fields(&fields)
    }

    /// Reads whichever of a coupon's fields `fields` has (the caller refuses the others).
    pub(crate) fn from_fields(fields: &Fields<'_>) -> Result<CouponPatch, ApiError> {
        let get = |name: &str| fields.get(name);
        Ok(CouponPatch {
            code: not_null(get("code"), "code", |raw| {
                let code = optional_string(Some(raw), "code")?.unwrap_or_default();
                Ok(normalize_code(&code).into_owned())
            })?,
            kind: not_null(get("type"), "type", |raw| {
                keyword(raw, "type", CouponKind::parse, "user_specific or time_specific")
            })?,
            status: not_null(get("status"), "status", |raw| status(raw, "status"))?,
            discount_type: not_null(get("discountType"), "discountType", |raw| {
                keyword(
                    raw,
                    "discountType",
                    DiscountType::parse,
                    "percentage, fixed, fixed_price, buy_x_get_y or free_shipping",
                )
            })?,
            discount_value: not_null(get("discountValue"), "discountValue", |raw| {
                money(raw, "discountValue").map(Cents::get)
            })?,
            max_discount: nullable(get("maxDiscount"), |raw| money(raw, "maxDiscount"))?,
            min_order_value: not_null(get("minOrderValue"), "minOrderValue", |raw| money(raw, "minOrderValue"))?,
            usage_limit: nullable(get("usageLimit"), |raw| limit(raw, "usageLimit"))?,
            per_user_limit: nullable(get("perUserLimit"), |raw| limit(raw, "perUserLimit"))?,
            user_id: nullable(get("userId"), |raw| Ok(id(Some(raw), "userId")?.unwrap_or_default().into_owned()))?,
            valid_from: nullable(get("validFrom"), |raw| timestamp(raw, "validFrom"))?,
            valid_until: nullable(get("validUntil"), |raw| timestamp(raw, "validUntil"))?,
            campaign: nullable(get("campaign"), |raw| {
                let name = optional_string(Some(raw), "campaign")?.unwrap_or_default().into_owned();
                // A name no campaign can have names none (and PostgreSQL refuses text with NUL).
                if !crate::domain::campaign::is_valid_name(&name) {
                    let problem = "must be a campaign's name: 1 to 100 characters without control characters".into();
                    return Err(ApiError::InvalidField { field: "campaign", problem });
                }
                Ok(name)
            })?,
            target: not_null(get("target"), "target", |raw| {
                keyword(raw, "target", Target::parse, "order, items or shipping")
            })?,
            scope: nullable(get("scope"), |raw| cart_fields::parse_scope(raw.get()).map_err(field_error))?,
            min_quantity: nullable(get("minQuantity"), |raw| limit(raw, "minQuantity"))?,
            min_order_basis: not_null(get("minOrderBasis"), "minOrderBasis", |raw| {
                keyword(raw, "minOrderBasis", MinOrderBasis::parse, "order or eligible")
            })?,
            allocation: not_null(get("allocation"), "allocation", |raw| {
                keyword(raw, "allocation", Allocation::parse, "across or each")
            })?,
            buy_x_get_y: nullable(get("buyXGetY"), |raw| {
                cart_fields::parse_buy_x_get_y(raw.get()).map_err(field_error)
            })?,
            currency: nullable(get("currency"), |raw| {
                keyword(raw, "currency", Currency::parse, "an ISO 4217 code with 0, 2 or 3 decimals")
            })?,
            currency_options: nullable(get("currencyOptions"), |raw| {
                cart_fields::parse_currency_options(raw.get()).map_err(field_error)
            })?,
            priority: not_null(get("priority"), "priority", |raw| {
                raw.get().parse().map_err(|_| ApiError::InvalidField {
                    field: "priority",
                    problem: "must be a whole number from -1000000 to 1000000".into(),
                })
            })?,
            combines_with: not_null(get("combinesWith"), "combinesWith", |raw| {
                let names: Vec<&str> = serde_json::from_str(raw.get()).map_err(|_| ApiError::InvalidField {
                    field: "combinesWith",
                    problem: "must be a list of classes: item, order, shipping".into(),
                })?;
                Classes::parse(names).map_err(|problem| ApiError::InvalidField { field: "combinesWith", problem })
            })?,
        })
    }

    /// A new coupon from a create body: `code`, `type`, `discountType` and `discountValue`
    /// are required (`discountValue` 0 when the type has none: `buy_x_get_y`,
    /// `free_shipping`); `status` defaults to active, `minOrderValue` to 0, the rest to null
    /// or to §9's defaults. The campaign, named by `campaign`, is resolved by the caller.
    pub fn into_new_coupon(self) -> Result<Coupon, ApiError> {
        let code = self.code.clone().ok_or(ApiError::MissingField { field: "code" })?;
        let kind = self.kind.ok_or(ApiError::MissingField { field: "type" })?;
        let discount_type = self.discount_type.ok_or(ApiError::MissingField { field: "discountType" })?;
        let valueless = matches!(discount_type, DiscountType::BuyXGetY | DiscountType::FreeShipping);
        if self.discount_value.is_none() && !valueless {
            return Err(ApiError::MissingField { field: "discountValue" });
        }
        if discount_type == DiscountType::BuyXGetY && self.buy_x_get_y.as_ref().is_none_or(Option::is_none) {
            return Err(ApiError::MissingField { field: "buyXGetY" });
        }
        // A placeholder the patch replaces: every field of the terms comes from the body.
        let base = Coupon { version: 0, ..Coupon::new(0, &code, kind, Discount::Fixed(Cents::ZERO)) };
        self.apply_to(&base)
    }

    /// `coupon` with the given fields changed, checked as the schema would. The campaign
    /// is left as it is: the caller resolves `campaign` to an id. A change of `discountType`
    /// drops what only the old type had (`allocation`, `buyXGetY`) unless the body sets it.
    pub(crate) fn apply_to(&self, coupon: &Coupon) -> Result<Coupon, ApiError> {
        let (current_type, current_value, current_cap) = coupon.discount.parts();
        let discount_type = self.discount_type.unwrap_or(current_type);
        let same_type = discount_type == current_type;
        let allocation =
            self.allocation.unwrap_or(if same_type { coupon.discount.allocation() } else { Allocation::Across });
        let current_bxgy = coupon.discount.buy_x_get_y().filter(|_| same_type).cloned();
        let value = match discount_type {
            DiscountType::BuyXGetY | DiscountType::FreeShipping => self.discount_value.unwrap_or(0),
            _ => self.discount_value.unwrap_or(current_value),
        };
        if matches!(discount_type, DiscountType::BuyXGetY | DiscountType::FreeShipping) && value != 0 {
            return Err(ApiError::InvalidField {
                field: "discountValue",
                problem: format!("must be 0 for {} (its terms are elsewhere)", discount_type.as_str()),
            });
        }
        let discount = Discount::from_parts(
            discount_type,
            value,
            self.max_discount.unwrap_or(current_cap),
            allocation,
            self.buy_x_get_y.clone().unwrap_or(current_bxgy),
        )
        .map_err(coupon_error)?;
        let next = Coupon {
            id: coupon.id,
            code: self.code.clone().map_or_else(|| coupon.code.clone(), Into::into),
            kind: self.kind.unwrap_or(coupon.kind),
            status: self.status.unwrap_or(coupon.status),
            discount,
            min_order_value: self.min_order_value.unwrap_or(coupon.min_order_value),
            usage_limit: self.usage_limit.unwrap_or(coupon.usage_limit),
            per_user_limit: self.per_user_limit.unwrap_or(coupon.per_user_limit),
            user_id: self.user_id.clone().map_or_else(|| coupon.user_id.clone(), |u| u.map(Into::into)),
            valid_from: self.valid_from.unwrap_or(coupon.valid_from),
            valid_until: self.valid_until.unwrap_or(coupon.valid_until),
            campaign_id: coupon.campaign_id,
            batch_id: coupon.batch_id,
            target: self.target.unwrap_or(coupon.target),
            scope: self.scope.clone().map_or_else(|| coupon.scope.clone(), |s| s.map(Arc::new)),
            min_quantity: self.min_quantity.unwrap_or(coupon.min_quantity),
            min_order_basis: self.min_order_basis.unwrap_or(coupon.min_order_basis),
            currency: self.currency.unwrap_or(coupon.currency),
            currency_options: self
                .currency_options
                .clone()
                .map_or_else(|| coupon.currency_options.clone(), |o| o.map(Into::into)),
            priority: self.priority.unwrap_or(coupon.priority),
            combines_with: self.combines_with.unwrap_or(coupon.combines_with),
            version: coupon.version,
        };
        next.check().map_err(coupon_error)?;
        Ok(next)
    }
}

/// The JSON field each impossible-coupon error is about.
pub(crate) fn coupon_error(err: CouponError) -> ApiError {
    let field = match err {
        CouponError::InvalidCode | CouponError::ReservedCode => "code",
        CouponError::PercentageOutOfRange | CouponError::AmountOutOfRange => "discountValue",
        CouponError::CapOnFixedDiscount => "maxDiscount",
        CouponError::EmptyValidityWindow => "validUntil",
        CouponError::UserSpecificWithoutUser => "userId",
        CouponError::AllocationNotFixed => "allocation",
        CouponError::BuyXGetYMismatch | CouponError::BuyXGetYQuantity => "buyXGetY",
        CouponError::TargetContradictsType => "target",
        CouponError::MinQuantityOutOfRange => "minQuantity",
        CouponError::PriorityOutOfRange => "priority",
        CouponError::FractionInWholeCurrency => "currency",
        CouponError::OwnCurrencyOption | CouponError::OptionValueMismatch => "currencyOptions",
    };
    ApiError::InvalidField { field, problem: err.to_string() }
}

fn field_error(err: FieldError) -> ApiError {
    ApiError::InvalidField { field: err.field, problem: err.problem }
}

pub(crate) fn not_null<T>(
    raw: Option<&RawValue>,
    field: &'static str,
    parse: impl FnOnce(&RawValue) -> Result<T, ApiError>,
) -> Result<Option<T>, ApiError> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Err(ApiError::InvalidField { field, problem: "must not be null".into() }),
        Some(raw) => parse(raw).map(Some),
    }
}

pub(crate) fn nullable<T>(
    raw: Option<&RawValue>,
    parse: impl FnOnce(&RawValue) -> Result<T, ApiError>,
) -> Result<Option<Option<T>>, ApiError> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(Some(None)),
        Some(raw) => parse(raw).map(|v| Some(Some(v))),
    }
}

fn keyword<T>(
    raw: &RawValue,
    field: &'static str,
    parse: fn(&str) -> Option<T>,
    expected: &str,
) -> Result<T, ApiError> {
    let text = optional_string(Some(raw), field)?.unwrap_or_default();
    parse(&text).ok_or_else(|| ApiError::InvalidField { field, problem: format!("must be {expected}") })
}

pub(crate) fn status(raw: &RawValue, field: &'static str) -> Result<Status, ApiError> {
    keyword(raw, field, Status::parse, "active, inactive or expired")
}

pub(crate) fn money(raw: &RawValue, field: &'static str) -> Result<Cents, ApiError> {
    Cents::parse_json_number(raw.get()).map_err(|err| ApiError::InvalidField { field, problem: err.to_string() })
}

pub(crate) fn limit(raw: &RawValue, field: &'static str) -> Result<u32, ApiError> {
    let problem = || ApiError::InvalidField { field, problem: "must be a whole number from 0 to 2147483647".into() };
    let value: u64 = raw.get().parse().map_err(|_| problem())?;
    u32::try_from(value).ok().filter(|v| i32::try_from(*v).is_ok()).ok_or_else(problem)
}

pub(crate) fn timestamp(raw: &RawValue, field: &'static str) -> Result<DateTime<Utc>, ApiError> {
    let text = optional_string(Some(raw), field)?.unwrap_or_default();
    DateTime::parse_from_rfc3339(&text).map(|t| t.with_timezone(&Utc)).map_err(|_| ApiError::InvalidField {
        field,
        problem: "must be an RFC 3339 time such as 2026-01-31T23:59:59Z".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::cart_discount::Class;
    use crate::domain::money::Percent;

    fn create(body: &str) -> Result<Coupon, ApiError> {
        CouponPatch::parse(body.as_bytes())?.into_new_coupon()
    }

    #[test]
    fn creates_with_defaults_and_exact_values() {
        let coupon = create(
            r#"{"code":" summer25 ","type":"time_specific","discountType":"percentage","discountValue":12.5,
                "maxDiscount":50,"validFrom":"2026-01-01T00:00:00Z","validUntil":"2026-02-01T00:00:00+01:00"}"#,
        )
        .unwrap();
        assert_eq!(&*coupon.code, "SUMMER25");
        assert_eq!(coupon.status, Status::Active);
        let rate = Percent::from_hundredths(1250).unwrap();
        assert_eq!(coupon.discount, Discount::Percentage { rate, cap: Some(Cents::new(5000).unwrap()) });
        assert_eq!(coupon.min_order_value, Cents::ZERO);
        assert_eq!(coupon.valid_until.unwrap().to_rfc3339(), "2026-01-31T23:00:00+00:00");
    }

    #[test]
    fn impossible_coupons_name_their_field() {
        let base = r#""code":"X","type":"time_specific","discountType":"percentage""#;
        for (body, code, field) in [
            (format!(r#"{{{base},"discountValue":150}}"#), "INVALID_FIELD", Some("discountValue")),
            (format!(r#"{{{base},"discountValue":0}}"#), "INVALID_FIELD", Some("discountValue")),
            (format!(r#"{{{base},"discountValue":10.001}}"#), "INVALID_FIELD", Some("discountValue")),
            (format!(r#"{{{base},"discountValue":-1}}"#), "INVALID_FIELD", Some("discountValue")),
            (format!(r#"{{{base}}}"#), "MISSING_FIELD", Some("discountValue")),
            (format!(r#"{{{base},"discountValue":5,"usageLimit":-1}}"#), "INVALID_FIELD", Some("usageLimit")),
            (format!(r#"{{{base},"discountValue":5,"usageLimit":1.5}}"#), "INVALID_FIELD", Some("usageLimit")),
            (format!(r#"{{{base},"discountValue":5,"usageLimit":3000000000}}"#), "INVALID_FIELD", Some("usageLimit")),
            (format!(r#"{{{base},"discountValue":5,"status":"paused"}}"#), "INVALID_FIELD", Some("status")),
            (format!(r#"{{{base},"discountValue":5,"status":null}}"#), "INVALID_FIELD", Some("status")),
            (format!(r#"{{{base},"discountValue":5,"validFrom":"tomorrow"}}"#), "INVALID_FIELD", Some("validFrom")),
            (
                format!(
                    r#"{{{base},"discountValue":5,"validFrom":"2026-02-01T00:00:00Z","validUntil":"2026-01-01T00:00:00Z"}}"#
                ),
                "INVALID_FIELD",
                Some("validUntil"),
            ),
            (format!(r#"{{{base},"discountValue":5,"colour":"red"}}"#), "INVALID_JSON", None),
            (format!(r#"{{{base},"discountValue":5,"discountValue":6}}"#), "INVALID_JSON", None),
            (
                r#"{"code":"X","type":"user_specific","discountType":"fixed","discountValue":5}"#.into(),
                "INVALID_FIELD",
                Some("userId"),
            ),
            (
                r#"{"code":"X","type":"time_specific","discountType":"fixed","discountValue":5,"maxDiscount":1}"#
                    .into(),
                "INVALID_FIELD",
                Some("maxDiscount"),
            ),
            (
                r#"{"code":"BAD CODE","type":"time_specific","discountType":"fixed","discountValue":5}"#.into(),
                "INVALID_FIELD",
                Some("code"),
            ),
            (
                r#"{"code":"","type":"time_specific","discountType":"fixed","discountValue":5}"#.into(),
                "INVALID_FIELD",
                Some("code"),
            ),
        ] {
            let err = create(&body).expect_err(&body);
            let got_field = match &err {
                ApiError::MissingField { field } | ApiError::InvalidField { field, .. } => Some(*field),
                _ => None,
            };
            assert_eq!((err.code(), got_field), (code, field), "{body}: {err}");
        }
    }

    #[test]
    fn patches_change_only_what_they_name() {
        let coupon =
            create(r#"{"code":"A","type":"time_specific","discountType":"fixed","discountValue":5,"usageLimit":3}"#)
                .unwrap();
        let patched =
            CouponPatch::parse(br#"{"status":"inactive","usageLimit":null}"#).unwrap().apply_to(&coupon).unwrap();
        assert_eq!(patched.status, Status::Inactive);
        assert_eq!(patched.usage_limit, None);
        assert_eq!((&patched.discount, &*patched.code), (&coupon.discount, "A"));
        let to_percent = CouponPatch::parse(br#"{"discountType":"percentage","discountValue":100}"#).unwrap();
        let full = Percent::from_hundredths(10_000).unwrap();
        assert_eq!(to_percent.apply_to(&coupon).unwrap().discount, Discount::Percentage { rate: full, cap: None });
    }

    /// Schemathesis found a campaign name holding NUL answered 500 (PostgreSQL refuses such
    /// text): a name no campaign can have is refused as the field it is.
    #[test]
    fn a_campaign_name_no_campaign_can_have_is_refused() {
        let long = format!("\"{}\"", "n".repeat(101));
        for name in [r#""a\u0000""#, r#""""#, r#""\u0007x""#, long.as_str()] {
            let body = format!(r#"{{"campaign":{name}}}"#);
            let err = CouponPatch::parse(body.as_bytes()).unwrap_err();
            assert!(matches!(err, ApiError::InvalidField { field: "campaign", .. }), "{name}: {err:?}");
        }
        assert!(CouponPatch::parse(br#"{"campaign":"Black Friday"}"#).is_ok());
        assert!(CouponPatch::parse(br#"{"campaign":null}"#).is_ok());
    }

    #[test]
    fn cart_fields_are_taken_and_checked() {
        let coupon = create(
            r#"{"code":"B2G1","type":"time_specific","discountType":"buy_x_get_y",
                "buyXGetY":{"buyQuantity":2,"getQuantity":1},"scope":{"includeCategories":["shirts"]},
                "minQuantity":3,"minOrderBasis":"eligible","currency":"USD",
                "currencyOptions":{"EUR":{"minOrderValue":10}}}"#,
        )
        .unwrap();
        assert_eq!(coupon.discount.buy_x_get_y().map(|b| (b.buy, b.get)), Some((2, 1)));
        assert_eq!((coupon.min_quantity, coupon.min_order_basis), (Some(3), MinOrderBasis::Eligible));
        assert_eq!(coupon.currency.map(|c| c.code().to_owned()), Some("USD".to_owned()));
        assert_eq!(coupon.currency_options.as_deref().map(<[_]>::len), Some(1));
        // Changing the type drops buy-X-get-Y's terms; a fixed amount each unit keeps `each`.
        let each = CouponPatch::parse(
            br#"{"discountType":"fixed","discountValue":2,"allocation":"each","currencyOptions":null}"#,
        )
        .unwrap()
        .apply_to(&coupon)
        .unwrap();
        assert_eq!(each.discount, Discount::FixedEach { value: Cents::new(200).unwrap(), cap: None });
        let base = r#""code":"X","type":"time_specific""#;
        for (body, code, field) in [
            (format!(r#"{{{base},"discountType":"buy_x_get_y"}}"#), "MISSING_FIELD", "buyXGetY"),
            (format!(r#"{{{base},"discountType":"fixed"}}"#), "MISSING_FIELD", "discountValue"),
            (
                format!(r#"{{{base},"discountType":"free_shipping","discountValue":5}}"#),
                "INVALID_FIELD",
                "discountValue",
            ),
            (format!(r#"{{{base},"discountType":"bogo","discountValue":5}}"#), "INVALID_FIELD", "discountType"),
            (
                format!(r#"{{{base},"discountType":"percentage","discountValue":5,"allocation":"each"}}"#),
                "INVALID_FIELD",
                "allocation",
            ),
            (
                format!(r#"{{{base},"discountType":"fixed_price","discountValue":5,"target":"shipping"}}"#),
                "INVALID_FIELD",
                "target",
            ),
            (
                format!(r#"{{{base},"discountType":"fixed","discountValue":5,"minQuantity":0}}"#),
                "INVALID_FIELD",
                "minQuantity",
            ),
            (
                format!(r#"{{{base},"discountType":"fixed","discountValue":5.5,"currency":"JPY"}}"#),
                "INVALID_FIELD",
                "currency",
            ),
            (
                format!(r#"{{{base},"discountType":"fixed","discountValue":5,"currency":"XXX"}}"#),
                "INVALID_FIELD",
                "currency",
            ),
            (
                format!(r#"{{{base},"discountType":"fixed","discountValue":5,"currencyOptions":{{"USD":{{}}}}}}"#),
                "INVALID_FIELD",
                "currencyOptions",
            ),
            (
                format!(
                    r#"{{{base},"discountType":"percentage","discountValue":5,"currencyOptions":{{"USD":{{"discountValue":5}}}}}}"#
                ),
                "INVALID_FIELD",
                "currencyOptions",
            ),
            (
                format!(
                    r#"{{{base},"discountType":"fixed","discountValue":5,"currency":"USD","currencyOptions":{{"USD":{{"discountValue":5}}}}}}"#
                ),
                "INVALID_FIELD",
                "currencyOptions",
            ),
        ] {
            let err = create(&body).expect_err(&body);
            let got_field = match &err {
                ApiError::MissingField { field } | ApiError::InvalidField { field, .. } => Some(*field),
                _ => None,
            };
            assert_eq!((err.code(), got_field), (code, Some(field)), "{body}: {err}");
        }
    }

    #[test]
    fn priority_and_combines_with_are_taken_and_checked() {
        let base = r#""code":"X","type":"time_specific","discountType":"percentage","discountValue":5"#;
        let coupon = create(&format!(r#"{{{base}}}"#)).unwrap();
        assert_eq!((coupon.priority, coupon.combines_with), (0, Classes::NONE), "alone by default");
        let coupon = create(&format!(r#"{{{base},"priority":-7,"combinesWith":["shipping","item","item"]}}"#)).unwrap();
        assert_eq!(coupon.priority, -7);
        assert_eq!(coupon.combines_with.iter().map(Class::as_str).collect::<Vec<_>>(), ["item", "shipping"]);
        let cleared = CouponPatch::parse(br#"{"combinesWith":[]}"#).unwrap().apply_to(&coupon).unwrap();
        assert_eq!((cleared.priority, cleared.combines_with), (-7, Classes::NONE));
        for (extra, field) in [
            (r#""priority":1000001"#, "priority"),
            (r#""priority":1.5"#, "priority"),
            (r#""priority":null"#, "priority"),
            (r#""combinesWith":["orders"]"#, "combinesWith"),
            (r#""combinesWith":"order""#, "combinesWith"),
            (r#""combinesWith":[1]"#, "combinesWith"),
        ] {
            let body = format!(r#"{{{base},{extra}}}"#);
            let err = create(&body).expect_err(&body);
            assert!(matches!(err, ApiError::InvalidField { field: f, .. } if f == field), "{body}: {err}");
        }
    }
}
