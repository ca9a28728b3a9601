//! §9's objects the service keeps, in their one JSON shape: a coupon's `scope`, `buyXGetY` and
//! `currencyOptions` (what the admin API takes and shows, and the `scope`, `bxgy` and
//! `currency_options` columns keep), and a use's allocation over lines and units (the
//! `coupon_usage.allocation` column). Numbers are exact decimals, never floats.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::domain::allocation::{self, Run};
use crate::domain::cart::{Cart, IdSet, Scope};
use crate::domain::cart_discount::{BuyXGetY, Selection, Taken};
use crate::domain::coupon::CurrencyOption;
use crate::domain::currency::Currency;
use crate::domain::money::{Percent, parse_minor};

/// Most ids in one list of a scope.
pub const MAX_SCOPE_IDS: usize = 10_000;
/// Longest id in a scope (as long as a `productId`).
pub const MAX_SCOPE_ID_LEN: usize = 128;

/// Why a field's JSON is refused: which field, and what is wrong, in words for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct FieldError {
    pub field: &'static str,
    pub problem: String,
}

fn refused(field: &'static str, problem: impl Into<String>) -> FieldError {
    FieldError { field, problem: problem.into() }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ScopeJson {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    include_products: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    include_variants: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    include_categories: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    exclude_products: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    exclude_variants: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    exclude_categories: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    exclude_on_sale: bool,
}

impl ScopeJson {
    fn into_scope(self, field: &'static str) -> Result<Scope, FieldError> {
        let ids = |list: Vec<String>| {
            if list.len() > MAX_SCOPE_IDS {
                return Err(refused(field, format!("lists hold at most {MAX_SCOPE_IDS} ids")));
            }
            if list.iter().any(|id| id.is_empty() || id.chars().count() > MAX_SCOPE_ID_LEN) {
                return Err(refused(field, format!("ids are 1 to {MAX_SCOPE_ID_LEN} characters")));
            }
            Ok(IdSet::new(list))
        };
        Ok(Scope {
            include_products: ids(self.include_products)?,
            include_variants: ids(self.include_variants)?,
            include_categories: ids(self.include_categories)?,
            exclude_products: ids(self.exclude_products)?,
            exclude_variants: ids(self.exclude_variants)?,
            exclude_categories: ids(self.exclude_categories)?,
            exclude_on_sale: self.exclude_on_sale,
        })
    }

    fn of(scope: &Scope) -> ScopeJson {
        let list = |set: &IdSet| set.iter().map(str::to_owned).collect();
        ScopeJson {
            include_products: list(&scope.include_products),
            include_variants: list(&scope.include_variants),
            include_categories: list(&scope.include_categories),
            exclude_products: list(&scope.exclude_products),
            exclude_variants: list(&scope.exclude_variants),
            exclude_categories: list(&scope.exclude_categories),
            exclude_on_sale: scope.exclude_on_sale,
        }
    }
}

/// Parses a `scope` object.
pub fn parse_scope(json: &str) -> Result<Scope, FieldError> {
    let parsed: ScopeJson = object(json).map_err(|_| {
        refused(
            "scope",
            "must be an object of includeProducts, includeVariants, includeCategories, excludeProducts, \
             excludeVariants, excludeCategories (arrays of ids) and excludeOnSale",
        )
    })?;
    parsed.into_scope("scope")
}

/// A scope as JSON.
pub fn scope_json(scope: &Scope) -> String {
    serde_json::to_string(&ScopeJson::of(scope)).unwrap_or_default()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BuyXGetYIn<'a> {
    buy_quantity: u32,
    get_quantity: u32,
    #[serde(borrow, default)]
    get_percent: Option<&'a RawValue>,
    #[serde(default)]
    get_scope: Option<ScopeJson>,
    #[serde(default)]
    max_applications: Option<u32>,
    #[serde(default)]
    selection: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BuyXGetYOut {
    buy_quantity: u32,
    get_quantity: u32,
    get_percent: Box<RawValue>,
    get_scope: Option<ScopeJson>,
    max_applications: Option<u32>,
    selection: &'static str,
}

/// Parses a `buyXGetY` object (`getPercent` 100 and `selection` cheapest when absent).
pub fn parse_buy_x_get_y(json: &str) -> Result<BuyXGetY, FieldError> {
    const FIELD: &str = "buyXGetY";
    let parsed: BuyXGetYIn<'_> = object(json).map_err(|_| {
        refused(
            FIELD,
            "must be an object with buyQuantity and getQuantity (whole numbers), and optionally getPercent, \
             getScope, maxApplications and selection",
        )
    })?;
    let get_percent = match parsed.get_percent {
        None => Percent::from_hundredths(10_000),
        Some(raw) => parse_minor(raw.get(), 2).ok().and_then(Percent::from_hundredths),
    }
    .ok_or_else(|| refused(FIELD, "getPercent must be greater than 0 and at most 100, with at most 2 decimals"))?;
    let selection = match parsed.selection.as_deref() {
        None => Selection::Cheapest,
        Some(text) => {
            Selection::parse(text).ok_or_else(|| refused(FIELD, "selection must be cheapest or most_expensive"))?
        }
    };
    Ok(BuyXGetY {
        buy: parsed.buy_quantity,
        get: parsed.get_quantity,
        get_percent,
        get_scope: parsed.get_scope.map(|s| s.into_scope(FIELD).map(Arc::new)).transpose()?,
        max_applications: parsed.max_applications,
        selection,
    })
}

/// Buy-X-get-Y's terms as JSON.
pub fn buy_x_get_y_json(offer: &BuyXGetY) -> String {
    let out = BuyXGetYOut {
        buy_quantity: offer.buy,
        get_quantity: offer.get,
        get_percent: number(offer.get_percent.to_string()),
        get_scope: offer.get_scope.as_deref().map(ScopeJson::of),
        max_applications: offer.max_applications,
        selection: offer.selection.as_str(),
    };
    serde_json::to_string(&out).unwrap_or_default()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OptionIn<'a> {
    #[serde(borrow, default)]
    discount_value: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_discount: Option<&'a RawValue>,
    #[serde(borrow, default)]
    min_order_value: Option<&'a RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OptionOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    discount_value: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_discount: Option<Box<RawValue>>,
    min_order_value: Box<RawValue>,
}

/// Parses a `currencyOptions` object: ISO 4217 codes to each currency's amounts, in its
/// decimals. At most one option per currency (JSON keys are unique here).
pub fn parse_currency_options(json: &str) -> Result<Vec<CurrencyOption>, FieldError> {
    const FIELD: &str = "currencyOptions";
    let parsed: BTreeMap<String, OptionIn<'_>> = object(json).map_err(|_| {
        refused(FIELD, "must be an object of currency codes, each with discountValue, maxDiscount and minOrderValue")
    })?;
    parsed
        .into_iter()
        .map(|(code, option)| {
            let currency = Currency::parse(&code)
                .ok_or_else(|| refused(FIELD, format!("{code} is not a currency with 0, 2 or 3 decimals")))?;
            let amount = |raw: Option<&RawValue>, name: &str| {
                raw.filter(|raw| raw.get() != "null")
                    .map(|raw| parse_minor(raw.get(), currency.decimals()))
                    .transpose()
                    .map_err(|err| refused(FIELD, format!("{code}.{name} {err}")))
            };
            Ok(CurrencyOption {
                currency,
                value: amount(option.discount_value, "discountValue")?,
                cap: amount(option.max_discount, "maxDiscount")?,
                min_order_value: amount(option.min_order_value, "minOrderValue")?.unwrap_or(0),
            })
        })
        .collect()
}

/// Currency options as JSON, amounts in each currency's decimals.
pub fn currency_options_json(options: &[CurrencyOption]) -> String {
    let out: BTreeMap<&str, OptionOut> = options
        .iter()
        .map(|o| {
            let amount = |minor: u64| number(o.currency.amount(minor).to_string());
            (
                o.currency.code(),
                OptionOut {
                    discount_value: o.value.map(amount),
                    max_discount: o.cap.map(amount),
                    min_order_value: amount(o.min_order_value),
                },
            )
        })
        .collect();
    serde_json::to_string(&out).unwrap_or_default()
}

/// Parses a JSON object (serde would take a struct from an array too).
fn object<'a, T: Deserialize<'a>>(json: &'a str) -> Result<T, ()> {
    if !json.trim_start().starts_with('{') {
        return Err(());
    }
    serde_json::from_str(json).map_err(|_| ())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AllocationLine<'a> {
    line_id: &'a str,
    discount: Box<RawValue>,
    units: Vec<AllocationUnits>,
}

#[derive(Serialize)]
struct AllocationUnits {
    count: u32,
    discount: Box<RawValue>,
}

/// What a code took from each line, and from its units in unit order as runs, in major units
/// of `currency`: `[{"lineId", "discount", "units": [{"count", "discount"}]}]`.
pub fn allocation_json(cart: &Cart, taken: &Taken, currency: Currency) -> String {
    let amount = |minor: u64| number(currency.amount(minor).to_string());
    let lines: Vec<AllocationLine<'_>> = cart
        .lines
        .iter()
        .zip(&taken.lines)
        .map(|(line, runs)| AllocationLine {
            line_id: &line.line_id,
            discount: amount(allocation::sum(runs)),
            units: runs.iter().map(|run| AllocationUnits { count: run.count, discount: amount(run.amount) }).collect(),
        })
        .collect();
    serde_json::to_string(&lines).unwrap_or_default()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AllocationLineIn<'a> {
    #[serde(borrow)]
    units: Vec<AllocationUnitsIn<'a>>,
}

#[derive(Deserialize)]
struct AllocationUnitsIn<'a> {
    count: u32,
    #[serde(borrow)]
    discount: &'a RawValue,
}

/// The inverse of [`allocation_json`]: each line's runs in minor units of `currency`.
pub fn parse_allocation(json: &str, currency: Currency) -> Result<Vec<Vec<Run>>, FieldError> {
    let bad = || refused("allocation", "is not an allocation this service wrote");
    let lines: Vec<AllocationLineIn<'_>> = serde_json::from_str(json).map_err(|_| bad())?;
    lines
        .into_iter()
        .map(|line| {
            line.units
                .into_iter()
                .map(|u| Ok(Run::new(u.count, parse_minor(u.discount.get(), currency.decimals()).map_err(|_| bad())?)))
                .collect()
        })
        .collect()
}

/// A JSON number from its exact text.
fn number(text: String) -> Box<RawValue> {
    RawValue::from_string(text).unwrap_or_else(|_| RawValue::from_string("0".into()).expect("a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_sorted_and_refuse_what_they_cannot_hold() {
        let scope = parse_scope(r#"{"includeCategories":["shirts","hats","shirts"],"excludeOnSale":true}"#).unwrap();
        assert!(scope.include_categories.contains("hats") && scope.exclude_on_sale);
        assert_eq!(scope_json(&scope), r#"{"includeCategories":["hats","shirts"],"excludeOnSale":true}"#);
        assert_eq!(parse_scope(&scope_json(&scope)), Ok(scope));
        for bad in [
            r#"{"includeShirts":["a"]}"#,
            r#"{"includeProducts":"a"}"#,
            r#"{"includeProducts":[""]}"#,
            "[]",
            &format!(r#"{{"excludeVariants":["{}"]}}"#, "v".repeat(129)),
        ] {
            assert_eq!(parse_scope(bad).map_err(|e| e.field), Err("scope"), "{bad}");
        }
    }

    #[test]
    fn buy_x_get_y_defaults_and_round_trips() {
        let offer = parse_buy_x_get_y(r#"{"buyQuantity":2,"getQuantity":1}"#).unwrap();
        assert_eq!((offer.buy, offer.get, offer.selection), (2, 1, Selection::Cheapest));
        assert_eq!(offer.get_percent, Percent::from_hundredths(10_000).unwrap());
        let full = r#"{"buyQuantity":3,"getQuantity":2,"getPercent":12.5,"getScope":{"includeProducts":["p-1"]},"maxApplications":4,"selection":"most_expensive"}"#;
        let parsed = parse_buy_x_get_y(full).unwrap();
        assert_eq!(buy_x_get_y_json(&parsed), full);
        for bad in [
            r#"{"buyQuantity":2}"#,
            r#"{"buyQuantity":2,"getQuantity":1,"getPercent":0}"#,
            r#"{"buyQuantity":2,"getQuantity":1,"getPercent":100.001}"#,
            r#"{"buyQuantity":2,"getQuantity":1,"selection":"random"}"#,
            r#"{"buyQuantity":-1,"getQuantity":1}"#,
        ] {
            assert_eq!(parse_buy_x_get_y(bad).map_err(|e| e.field), Err("buyXGetY"), "{bad}");
        }
    }

    #[test]
    fn an_allocation_names_each_line_and_its_runs() {
        use crate::domain::cart::tests::line;
        let cart = Cart { lines: vec![line("a", 2, 1999), line("b", 1, 500)], shipping: None };
        let taken = Taken { lines: vec![vec![Run::new(1, 121), Run::new(1, 120)], vec![Run::new(1, 0)]], shipping: 0 };
        let eur = Currency::parse("EUR").unwrap();
        let json = allocation_json(&cart, &taken, eur);
        assert_eq!(parse_allocation(&json, eur), Ok(taken.lines));
        assert_eq!(
            json,
            r#"[{"lineId":"a","discount":2.41,"units":[{"count":1,"discount":1.21},{"count":1,"discount":1.2}]},{"lineId":"b","discount":0,"units":[{"count":1,"discount":0}]}]"#
        );
    }

    #[test]
    fn currency_options_keep_each_currencys_decimals() {
        let options = parse_currency_options(
            r#"{"USD":{"discountValue":12,"maxDiscount":60.5,"minOrderValue":50},"JPY":{"discountValue":1500},"KWD":{"discountValue":3.125}}"#,
        )
        .unwrap();
        let by = |code: &str| options.iter().find(|o| o.currency.code() == code).unwrap();
        assert_eq!((by("USD").value, by("USD").cap, by("USD").min_order_value), (Some(1200), Some(6050), 5000));
        assert_eq!((by("JPY").value, by("KWD").value), (Some(1500), Some(3125)));
        assert_eq!(
            currency_options_json(&options),
            r#"{"JPY":{"discountValue":1500,"minOrderValue":0},"KWD":{"discountValue":3.125,"minOrderValue":0},"USD":{"discountValue":12,"maxDiscount":60.5,"minOrderValue":50}}"#
        );
        for bad in [
            r#"{"XYZ":{"discountValue":1}}"#,
            r#"{"JPY":{"discountValue":1.5}}"#,
            r#"{"USD":{"discountValue":-1}}"#,
            r#"{"USD":{"amount":1}}"#,
            r#"{"USD":5}"#,
        ] {
            assert_eq!(parse_currency_options(bad).map_err(|e| e.field), Err("currencyOptions"), "{bad}");
        }
    }
}
