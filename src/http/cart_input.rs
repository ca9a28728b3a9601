//! A cart in a validate, redeem or hold body (API.md §9): `currency`, `items`, `shipping`,
//! and `orderValue` derived from the items or checked against them, every amount in minor
//! units of the currency, every refusal naming its field.

use std::borrow::Cow;
use std::collections::HashSet;

use compact_str::CompactString;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::domain::cart::{Cart, CartRequest, Line};
use crate::domain::currency::Currency;
use crate::domain::money::{Cents, MoneyError, parse_minor};
use crate::http::error::ApiError;
use crate::http::request::optional_string;

const MAX_LINE_ID: usize = 64;
const MAX_PRODUCT_ID: usize = 128;
const MAX_CATEGORIES: usize = 20;
const MAX_QUANTITY: u32 = 10_000;

/// What a body says of money and carts, raw.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCart<'a> {
    pub currency: Option<&'a RawValue>,
    pub items: Option<&'a RawValue>,
    pub shipping: Option<&'a RawValue>,
    pub order_value: Option<&'a RawValue>,
}

/// The limits a body's §9 and §10 fields are checked against.
#[derive(Debug, Clone, Copy)]
pub struct CartLimits {
    pub default_currency: Currency,
    pub max_lines: usize,
    /// The most codes `codes` may name (`stacking.max_codes`).
    pub max_codes: usize,
    /// The largest body with items (`http.max_body_bytes_cart`).
    pub max_body_bytes: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
struct RawLine<'a> {
    #[serde(borrow)]
    line_id: Option<&'a RawValue>,
    #[serde(borrow)]
    product_id: Option<&'a RawValue>,
    #[serde(borrow)]
    variant_id: Option<&'a RawValue>,
    #[serde(borrow)]
    category_ids: Option<&'a RawValue>,
    #[serde(borrow)]
    quantity: Option<&'a RawValue>,
    #[serde(borrow)]
    unit_price: Option<&'a RawValue>,
    #[serde(borrow)]
    on_sale: Option<&'a RawValue>,
    #[serde(borrow)]
    discountable: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawShipping<'a> {
    #[serde(borrow)]
    amount: Option<&'a RawValue>,
    #[serde(borrow)]
    method_id: Option<&'a RawValue>,
}

impl<'a> RawCart<'a> {
    /// Whether the body used any of §9's fields: its answer then carries §9's fields too.
    pub fn used(&self) -> bool {
        [self.currency, self.items, self.shipping].iter().any(|f| f.is_some_and(|v| v.get() != "null"))
    }

    /// The order value, and the cart if §9's fields were used. `body_len` is refused past
    /// 16 KiB unless the body has items.
    pub fn parse(self, limits: CartLimits, body_len: usize) -> Result<(Cents, Option<CartRequest>), ApiError> {
        let has_items = self.items.is_some_and(|v| v.get() != "null");
        if !has_items && body_len > crate::http::routes::MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge { limit: crate::http::routes::MAX_BODY_BYTES });
        }
        if !self.used() {
            let raw =
                self.order_value.filter(|v| v.get() != "null").ok_or(ApiError::MissingField { field: "orderValue" })?;
            let value = Cents::parse_json_number(raw.get())
                .map_err(|err| ApiError::InvalidField { field: "orderValue", problem: err.to_string() })?;
            return Ok((value, None));
        }
        let currency = match optional_string(self.currency, "currency")? {
            None => limits.default_currency,
            Some(code) => Currency::parse(&code).ok_or_else(|| ApiError::InvalidField {
                field: "currency",
                problem: "must be an ISO 4217 code with 0, 2 or 3 decimals (EUR, JPY, KWD)".into(),
            })?,
        };
        let decimals = currency.decimals();
        let lines = match self.items.filter(|v| v.get() != "null") {
            None => Vec::new(),
            Some(raw) => lines(raw, decimals, limits.max_lines)?,
        };
        let shipping = match self.shipping.filter(|v| v.get() != "null") {
            None => None,
            Some(raw) => Some(shipping(raw, decimals)?),
        };
        let cart = Cart { lines, shipping };
        let sent = order_value(self.order_value, decimals)?;
        let value = if has_items {
            let derived = cart.order_value();
            if sent.is_some_and(|sent| sent != derived) {
                return Err(ApiError::InvalidField {
                    field: "orderValue",
                    problem: format!("must equal the items' total, {}", currency.amount(derived)),
                });
            }
            derived
        } else {
            sent.ok_or(ApiError::MissingField { field: "orderValue" })?
        };
        let value = Cents::new(value)
            .map_err(|err| ApiError::InvalidField { field: "orderValue", problem: err.to_string() })?;
        Ok((value, Some(CartRequest { currency, cart, has_items })))
    }
}

fn order_value(raw: Option<&RawValue>, decimals: u8) -> Result<Option<u64>, ApiError> {
    let Some(raw) = raw.filter(|v| v.get() != "null") else { return Ok(None) };
    amount(raw, "orderValue", decimals).map(Some)
}

fn amount(raw: &RawValue, field: &'static str, decimals: u8) -> Result<u64, ApiError> {
    parse_minor(raw.get(), decimals)
        .map_err(|err: MoneyError| ApiError::InvalidField { field, problem: err.to_string() })
}

/// A line as the fast path reads it: one pass, strings borrowed unless escaped.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
struct TypedLine<'a> {
    #[serde(borrow)]
    line_id: Cow<'a, str>,
    #[serde(borrow)]
    product_id: Cow<'a, str>,
    #[serde(borrow, default)]
    variant_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    category_ids: Option<Vec<Cow<'a, str>>>,
    quantity: u32,
    #[serde(borrow)]
    unit_price: &'a RawValue,
    #[serde(default)]
    on_sale: Option<bool>,
    #[serde(default)]
    discountable: Option<bool>,
}

/// Whether an id may be kept: 1 to `max` characters, none a control character.
fn acceptable_id(id: &str, max: usize) -> bool {
    !id.is_empty() && id.chars().count() <= max && !id.chars().any(char::is_control)
}

/// The lines of `items`. A body a shop sends is read in one pass; anything that pass does not
/// accept is read again field by field, which names what is wrong (and refuses exactly what
/// the one pass does not accept).
fn lines(raw: &RawValue, decimals: u8, max_lines: usize) -> Result<Vec<Line>, ApiError> {
    match serde_json::from_str::<Vec<TypedLine<'_>>>(raw.get())
        .ok()
        .and_then(|typed| accept(typed, decimals, max_lines))
    {
        Some(lines) => Ok(lines),
        None => lines_field_by_field(raw, decimals, max_lines),
    }
}

/// The lines, if every one is acceptable as it is (`None`: the slow path says why not).
fn accept(typed: Vec<TypedLine<'_>>, decimals: u8, max_lines: usize) -> Option<Vec<Line>> {
    if typed.is_empty() || typed.len() > max_lines {
        return None;
    }
    let mut lines: Vec<Line> = Vec::with_capacity(typed.len());
    for line in typed {
        let categories = line.category_ids.unwrap_or_default();
        let ok = acceptable_id(&line.line_id, MAX_LINE_ID)
            && acceptable_id(&line.product_id, MAX_PRODUCT_ID)
            && line.variant_id.as_deref().is_none_or(|v| acceptable_id(v, MAX_PRODUCT_ID))
            && categories.len() <= MAX_CATEGORIES
            && categories.iter().all(|c| acceptable_id(c, MAX_PRODUCT_ID))
            && (1..=MAX_QUANTITY).contains(&line.quantity)
            && !lines.iter().any(|l| l.line_id == *line.line_id);
        if !ok {
            return None;
        }
        lines.push(Line {
            line_id: CompactString::from(line.line_id),
            product_id: CompactString::from(line.product_id),
            variant_id: line.variant_id.map(CompactString::from),
            category_ids: categories.into_iter().map(CompactString::from).collect(),
            quantity: line.quantity,
            unit_price: parse_minor(line.unit_price.get(), decimals).ok()?,
            on_sale: line.on_sale.unwrap_or(false),
            discountable: line.discountable.unwrap_or(true),
        });
    }
    within_total(&lines, decimals).then_some(lines)
}

/// Whether the items' total is within the largest amount.
fn within_total(lines: &[Line], decimals: u8) -> bool {
    let total = lines.iter().try_fold(0u64, |sum, l| sum.checked_add(l.subtotal()));
    total.is_some_and(|t| t <= crate::domain::money::max_minor(decimals))
}

fn lines_field_by_field(raw: &RawValue, decimals: u8, max_lines: usize) -> Result<Vec<Line>, ApiError> {
    let invalid = |problem: String| ApiError::InvalidField { field: "items", problem };
    let raw_lines: Vec<&RawValue> =
        serde_json::from_str(raw.get()).map_err(|_| invalid("must be an array of line objects".into()))?;
    if raw_lines.is_empty() || raw_lines.len() > max_lines {
        return Err(invalid(format!("must have 1 to {max_lines} lines")));
    }
    let mut seen = HashSet::with_capacity(raw_lines.len());
    let mut lines = Vec::with_capacity(raw_lines.len());
    for (n, raw_line) in raw_lines.into_iter().enumerate() {
        let at = |problem: &str| invalid(format!("line {}: {problem}", n + 1));
        let fields: RawLine<'_> = serde_json::from_str(raw_line.get()).map_err(|err| at(&format!("{err}")))?;
        let text = |raw: Option<&RawValue>,
                    name: &str,
                    max: usize,
                    required: bool|
         -> Result<Option<CompactString>, ApiError> {
            let value = optional_string(raw, "items").map_err(|_| at(&format!("{name} must be a string")))?;
            match value {
                None if required => Err(at(&format!("{name} is required"))),
                None => Ok(None),
                Some(v) if !acceptable_id(&v, max) => {
                    Err(at(&format!("{name} must be 1 to {max} characters without control characters")))
                }
                Some(v) => Ok(Some(CompactString::from(v))),
            }
        };
        let line_id = text(fields.line_id, "lineId", MAX_LINE_ID, true)?.unwrap_or_default();
        if !seen.insert(line_id.clone()) {
            return Err(at("lineId is repeated"));
        }
        let product_id = text(fields.product_id, "productId", MAX_PRODUCT_ID, true)?.unwrap_or_default();
        let variant_id = text(fields.variant_id, "variantId", MAX_PRODUCT_ID, false)?;
        let category_ids: Vec<CompactString> = match fields.category_ids.filter(|v| v.get() != "null") {
            None => Vec::new(),
            Some(raw) => {
                let ids: Vec<&RawValue> =
                    serde_json::from_str(raw.get()).map_err(|_| at("categoryIds must be an array of strings"))?;
                if ids.len() > MAX_CATEGORIES {
                    return Err(at(&format!("categoryIds may have at most {MAX_CATEGORIES} ids")));
                }
                ids.into_iter()
                    .map(|id| text(Some(id), "categoryIds", MAX_PRODUCT_ID, true).map(Option::unwrap_or_default))
                    .collect::<Result<_, _>>()?
            }
        };
        let quantity = fields
            .quantity
            .and_then(|q| q.get().parse::<u32>().ok())
            .filter(|q| (1..=MAX_QUANTITY).contains(q))
            .ok_or_else(|| at(&format!("quantity must be a whole number from 1 to {MAX_QUANTITY}")))?;
        let unit_price = match fields.unit_price.filter(|v| v.get() != "null") {
            None => return Err(at("unitPrice is required")),
            Some(raw) => parse_minor(raw.get(), decimals).map_err(|err| at(&format!("unitPrice {err}")))?,
        };
        let flag = |raw: Option<&RawValue>, name: &str, default: bool| match raw.map(RawValue::get) {
            None | Some("null") => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(_) => Err(at(&format!("{name} must be true or false"))),
        };
        lines.push(Line {
            line_id,
            product_id,
            variant_id,
            category_ids,
            quantity,
            unit_price,
            on_sale: flag(fields.on_sale, "onSale", false)?,
            discountable: flag(fields.discountable, "discountable", true)?,
        });
    }
    if !within_total(&lines, decimals) {
        return Err(invalid("the items' total must not exceed 1000000000".into()));
    }
    Ok(lines)
}

fn shipping(raw: &RawValue, decimals: u8) -> Result<u64, ApiError> {
    let fields: RawShipping<'_> = serde_json::from_str(raw.get())
        .map_err(|_| ApiError::InvalidField { field: "shipping", problem: "must be an object".into() })?;
    optional_string(fields.method_id, "shipping")?;
    let raw = fields.amount.filter(|v| v.get() != "null").ok_or(ApiError::MissingField { field: "shipping" })?;
    amount(raw, "shipping", decimals)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> CartLimits {
        CartLimits {
            default_currency: Currency::parse("EUR").unwrap(),
            max_lines: 3,
            max_codes: 5,
            max_body_bytes: 64 * 1024,
        }
    }

    fn parse(body: &str) -> Result<(Cents, Option<CartRequest>), ApiError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Body<'a> {
            #[serde(borrow)]
            currency: Option<&'a RawValue>,
            #[serde(borrow)]
            items: Option<&'a RawValue>,
            #[serde(borrow)]
            shipping: Option<&'a RawValue>,
            #[serde(borrow)]
            order_value: Option<&'a RawValue>,
        }
        let b: Body<'_> = serde_json::from_str(body).unwrap();
        RawCart { currency: b.currency, items: b.items, shipping: b.shipping, order_value: b.order_value }
            .parse(limits(), body.len())
    }

    #[test]
    fn a_cart_gives_the_order_value_in_minor_units() {
        let (value, cart) = parse(
            r#"{"items":[{"lineId":"1","productId":"p","quantity":3,"unitPrice":20.00,"categoryIds":["shirts"]},
                         {"lineId":"2","productId":"q","quantity":1,"unitPrice":15,"discountable":false}],
                "shipping":{"amount":4.99,"methodId":"std"}}"#,
        )
        .unwrap();
        assert_eq!(value, Cents::new(7500).unwrap());
        let cart = cart.unwrap();
        assert_eq!((cart.currency.code(), cart.has_items, cart.cart.shipping), ("EUR", true, Some(499)));
        assert_eq!(cart.cart.lines[0].category_ids, ["shirts"]);
        assert!(!cart.cart.lines[1].discountable);
        let (value, cart) =
            parse(r#"{"currency":"JPY","items":[{"lineId":"a","productId":"p","quantity":2,"unitPrice":1000}]}"#)
                .unwrap();
        assert_eq!((value.get(), cart.unwrap().currency.decimals()), (2000, 0));
        let (value, cart) = parse(r#"{"orderValue":12.5}"#).unwrap();
        assert_eq!((value.get(), cart), (1250, None), "no cart field: as today");
        let (_, cart) = parse(r#"{"orderValue":12.5,"currency":"EUR"}"#).unwrap();
        assert!(cart.is_some_and(|c| !c.has_items), "a currency alone asks for the cart answer");
    }

    #[test]
    fn every_refusal_names_its_field() {
        let item = |fields: &str| {
            format!(r#"{{"items":[{{"lineId":"1","productId":"p","quantity":1,"unitPrice":1{fields}}}]}}"#)
        };
        let cases: Vec<(String, &str)> = vec![
            (r#"{"currency":"XYZ","orderValue":1}"#.into(), "currency"),
            (r#"{"currency":"eur","orderValue":1}"#.into(), "currency"),
            (r#"{"currency":"JPY","orderValue":1.5}"#.into(), "orderValue"),
            (r#"{"items":[]}"#.into(), "items"),
            (r#"{"items":{}}"#.into(), "items"),
            (r#"{"items":[{},{},{},{}]}"#.into(), "items"),
            (item(r#","quantity":0"#), "items"),
            (item(r#","lineId":"1""#), "items"),
            (r#"{"items":[{"productId":"p","quantity":1,"unitPrice":1}]}"#.into(), "items"),
            (r#"{"items":[{"lineId":"1","productId":"p","quantity":1.5,"unitPrice":1}]}"#.into(), "items"),
            (r#"{"items":[{"lineId":"1","productId":"p","quantity":10001,"unitPrice":1}]}"#.into(), "items"),
            (r#"{"items":[{"lineId":"1","productId":"p","quantity":1,"unitPrice":-1}]}"#.into(), "items"),
            (r#"{"items":[{"lineId":"1","productId":"p","quantity":1,"unitPrice":1.001}]}"#.into(), "items"),
            (r#"{"items":[{"lineId":"1","productId":"p","quantity":1}]}"#.into(), "items"),
            (r#"{"items":[{"lineId":"1","productId":"p","quantity":1,"unitPrice":1,"onSale":"yes"}]}"#.into(), "items"),
            (r#"{"items":[{"lineId":"1","productId":"p","quantity":1,"unitPrice":1,"colour":"red"}]}"#.into(), "items"),
            (r#"{"items":[{"lineId":"1","productId":"","quantity":1,"unitPrice":1}]}"#.into(), "items"),
            (
                r#"{"items":[{"lineId":"1","productId":"p","quantity":1,"unitPrice":1,"categoryIds":"x"}]}"#.into(),
                "items",
            ),
            (
                r#"{"items":[{"lineId":"1","productId":"p","quantity":2,"unitPrice":1}],"orderValue":3}"#.into(),
                "orderValue",
            ),
            (r#"{"items":[{"lineId":"1","productId":"p","quantity":10000,"unitPrice":1000000}]}"#.into(), "items"),
            (r#"{"currency":"EUR","shipping":{"amount":-1},"orderValue":1}"#.into(), "shipping"),
            (r#"{"currency":"EUR","shipping":{},"orderValue":1}"#.into(), "shipping"),
            (r#"{"currency":"EUR"}"#.into(), "orderValue"),
        ];
        for (body, field) in cases {
            let err = parse(&body).expect_err(&body);
            let got = match &err {
                ApiError::InvalidField { field, .. } | ApiError::MissingField { field } => *field,
                other => panic!("{body}: {other:?}"),
            };
            assert_eq!(got, field, "{body}: {err:?}");
        }
    }

    /// JSON numbers, and a few things that are not numbers.
    const NUMBER: &str = "-?(0|[1-9][0-9]{0,12})(\\.[0-9]{1,4})?([eE][-+]?[0-9]{1,3})?|null|true|\"7\"|\\[1\\]";

    proptest::proptest! {
        /// Whatever a line's fields hold, the parser answers (a cart or a 4xx), never panics,
        /// and a cart it accepts is within the bounds.
        #[test]
        fn any_line_is_parsed_or_refused(
            quantity in NUMBER,
            price in NUMBER,
            id in "\\PC{0,70}",
            categories in proptest::collection::vec("\\PC{0,5}", 0..25),
        ) {
            let line = json_line(&id, &quantity, &price, &categories);
            let body = format!(r#"{{"items":[{line}]}}"#);
            // Bodies that are not JSON are refused before a cart is looked at.
            proptest::prop_assume!(serde_json::from_str::<serde_json::Value>(&body).is_ok());
            if let Ok((value, Some(cart))) = parse(&body) {
                let only = &cart.cart.lines[0];
                proptest::prop_assert!((1..=MAX_QUANTITY).contains(&only.quantity));
                proptest::prop_assert!(only.category_ids.len() <= MAX_CATEGORIES);
                proptest::prop_assert_eq!(value.get(), only.subtotal());
            }
        }
    }

    fn json_line(id: &str, quantity: &str, price: &str, categories: &[String]) -> String {
        let text = |s: &str| serde_json::to_string(s).unwrap();
        format!(
            r#"{{"lineId":{},"productId":"p","quantity":{},"unitPrice":{},"categoryIds":{}}}"#,
            text(id),
            quantity,
            price,
            serde_json::to_string(categories).unwrap()
        )
    }

    /// The one-pass read accepts exactly what the field-by-field read accepts, with the same
    /// lines.
    #[test]
    fn both_reads_of_the_lines_agree() {
        let line = |fields: &str| format!(r#"{{"lineId":"1","productId":"p","quantity":2,"unitPrice":1.5{fields}}}"#);
        let cases = [
            format!("[{}]", line("")),
            format!("[{}]", line(r#","variantId":"v","categoryIds":["a","b"],"onSale":true,"discountable":false"#)),
            format!("[{}]", line(r#","variantId":null,"categoryIds":null,"onSale":null"#)),
            format!("[{}]", line(r#","variantId":"""#)),
            format!("[{}]", line(r#","categoryIds":[null]"#)),
            format!("[{}]", line(r#","categoryIds":[""]"#)),
            format!("[{}]", line(r#","onSale":"true""#)),
            format!("[{}]", line(r#","colour":"red""#)),
            format!("[{},{}]", line(""), line("")),
            format!("[{}]", line(r#","lineId":"2""#)),
            r#"[{"lineId":"1","productId":"p","quantity":1.0,"unitPrice":1}]"#.into(),
            r#"[{"lineId":"1","productId":"p","quantity":"1","unitPrice":1}]"#.into(),
            r#"[{"lineId":"1","productId":"p","quantity":0,"unitPrice":1}]"#.into(),
            r#"[{"lineId":"1","productId":"p","quantity":1,"unitPrice":null}]"#.into(),
            r#"[{"lineId":"1","productId":"p","quantity":1,"unitPrice":1.234}]"#.into(),
            r#"[{"lineId":"1","productId":"p","quantity":1}]"#.into(),
            r#"[{"lineId":"a\u0000","productId":"p","quantity":1,"unitPrice":1}]"#.into(),
            r#"[{"lineId":"\u00e9t\u00e9","productId":"p","quantity":1,"unitPrice":1}]"#.into(),
            r#"[{"lineId":1,"productId":"p","quantity":1,"unitPrice":1}]"#.into(),
            r#"[{"lineId":"1","productId":"p","quantity":10000,"unitPrice":1000000000}]"#.into(),
            "[]".into(),
            "[1]".into(),
        ];
        for items in cases {
            let raw = RawValue::from_string(items.clone()).unwrap();
            let fast = lines(&raw, 2, 3).map_err(|e| e.code());
            let slow = lines_field_by_field(&raw, 2, 3).map_err(|e| e.code());
            assert_eq!(fast, slow, "{items}");
        }
    }

    #[test]
    fn only_a_body_with_items_may_pass_16_kib() {
        let padding = "x".repeat(20_000);
        let plain = format!(r#"{{"orderValue":1,"pad":"{padding}"}}"#);
        assert!(matches!(parse(&plain), Err(ApiError::PayloadTooLarge { .. })));
        let cart =
            format!(r#"{{"items":[{{"lineId":"1","productId":"p","quantity":1,"unitPrice":1}}],"pad":"{padding}"}}"#);
        assert!(parse(&cart).is_ok());
    }
}
