//! A validate answer naming several codes (API.md §10): the codes, the totals, the codes that
//! applied (in the order they applied), those rejected and those skipped, and each line's
//! split with every code's part of it.

use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};

use crate::domain::allocation::{self, Run};
use crate::domain::cart::CartRequest;
use crate::domain::cart_discount::Taken;
use crate::domain::currency::Currency;
use crate::domain::rules::Reason;
use crate::engine::{Fate, StackedValidation};
use crate::http::cart_answer::{Allocation, LineAnswer, Money, write_totals};

/// `{"valid", "codes", currency and totals, "applied", "rejected", "skipped", "lines"?}`.
#[derive(Debug)]
pub struct StackAnswer<'a> {
    /// The request's §9 fields, or a plain request in the default currency.
    pub request: &'a CartRequest,
    /// Minor units.
    pub order_value: u64,
    pub validation: &'a StackedValidation,
}

impl StackAnswer<'_> {
    /// About how many bytes the answer takes.
    pub fn size_hint(&self) -> usize {
        384 + 96 * self.validation.codes.len() + 256 * self.request.cart.lines.len()
    }
}

impl Serialize for StackAnswer<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let v = self.validation;
        let has_lines = self.request.has_items;
        let mut out = serializer.serialize_struct("StackAnswer", 11 + usize::from(has_lines))?;
        out.serialize_field("valid", &v.valid)?;
        let codes: Vec<&str> = v.codes.iter().map(|c| c.code.as_str()).collect();
        out.serialize_field("codes", &codes)?;
        let discount = v.merchandise();
        write_totals(&mut out, self.request, discount, self.order_value.saturating_sub(discount), v.shipping())?;
        out.serialize_field("applied", &AppliedCodes(self))?;
        out.serialize_field("rejected", &Refused { answer: self, skipped: false })?;
        out.serialize_field("skipped", &Refused { answer: self, skipped: true })?;
        if has_lines {
            let codes = v.applied.iter().map(|a| (v.codes[a.position].code.as_str(), &a.taken)).collect();
            out.serialize_field("lines", &CodeLines { request: self.request, codes })?;
        }
        out.end()
    }
}

/// `applied`: `{"code", "class", "discount", "shippingDiscount"}` in the order of application.
struct AppliedCodes<'s, 'a>(&'s StackAnswer<'a>);

impl Serialize for AppliedCodes<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let answer = self.0;
        let currency = answer.request.currency;
        let mut out = serializer.serialize_seq(Some(answer.validation.applied.len()))?;
        for applied in &answer.validation.applied {
            out.serialize_element(&AppliedCode {
                code: &answer.validation.codes[applied.position].code,
                class: applied.class.as_str(),
                discount: Money(currency.amount(applied.taken.merchandise())),
                shipping_discount: Money(currency.amount(applied.taken.shipping)),
            })?;
        }
        out.end()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AppliedCode<'a> {
    code: &'a str,
    class: &'static str,
    discount: Money,
    shipping_discount: Money,
}

/// `rejected` (every code refused, in request order) or `skipped` (codes with no effect, in
/// a valid stack): `{"code", "reason"}`.
struct Refused<'s, 'a> {
    answer: &'s StackAnswer<'a>,
    skipped: bool,
}

impl Serialize for Refused<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let v = self.answer.validation;
        let reason = |fate: Fate| match (fate, self.skipped) {
            (Fate::Rejected(reason), false) => Some(reason),
            (Fate::Skipped, true) if v.valid => Some(Reason::NoEffect),
            _ => None,
        };
        let mut out = serializer.serialize_seq(None)?;
        for code in &v.codes {
            if let Some(reason) = reason(code.fate) {
                out.serialize_element(&CodeReason { code: &code.code, reason: reason.as_str() })?;
            }
        }
        out.end()
    }
}

/// A code and why it was not taken: an entry of `rejected` or `skipped`.
#[derive(Serialize)]
pub(crate) struct CodeReason<'a> {
    pub(crate) code: &'a str,
    pub(crate) reason: &'static str,
}

/// `lines`: each line with every code's discount of each unit together, and each code's part
/// of it (those that gave the line more than 0), in the order given.
pub(crate) struct CodeLines<'a> {
    pub(crate) request: &'a CartRequest,
    pub(crate) codes: Vec<(&'a str, &'a Taken)>,
}

impl Serialize for CodeLines<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let currency: Currency = self.request.currency;
        let lines = &self.request.cart.lines;
        let mut out = serializer.serialize_seq(Some(lines.len()))?;
        for (i, line) in lines.iter().enumerate() {
            let mut units = vec![Run::new(line.quantity, 0)];
            let mut allocations = Vec::new();
            for (code, taken) in &self.codes {
                let Some(runs) = taken.lines.get(i) else { continue };
                let off = allocation::sum(runs);
                if off > 0 {
                    units = allocation::plus(&units, runs);
                    allocations.push(Allocation { code, discount: Money(currency.amount(off)) });
                }
            }
            out.serialize_element(&LineAnswer { line, units: &units, allocations: &allocations, currency })?;
        }
        out.end()
    }
}
