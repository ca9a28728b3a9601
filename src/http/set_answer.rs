//! The answer to a redeem or hold of several codes (API.md §10): the codes, the totals, each
//! use taken, the codes rejected and skipped, and with items each line's split.

use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};

use crate::domain::cart::CartRequest;
use crate::domain::event::GroupCode;
use crate::domain::rules::Reason;
use crate::engine::SetReceipt;
use crate::http::cart_answer::{Money, write_totals};
use crate::http::response::rfc3339;
use crate::http::stack_answer::{CodeLines, CodeReason};

/// `{"redeemed"|"held": true, "orderId", "holdGroupId"?, "codes", totals, "redemptions"|"holds",
/// "rejected", "skipped", "expiresAt"?, "hold"?, "lines"?}`.
#[derive(Debug)]
pub struct SetAnswer<'a> {
    /// A hold (else a redeem).
    pub hold: bool,
    pub order_id: &'a str,
    /// The request's §9 fields, or a plain request in the default currency.
    pub request: &'a CartRequest,
    /// Minor units.
    pub order_value: u64,
    pub receipt: &'a SetReceipt,
}

impl SetAnswer<'_> {
    /// About how many bytes the answer takes.
    pub fn size_hint(&self) -> usize {
        512 + 160 * self.receipt.codes.len() + 256 * self.request.cart.lines.len()
    }
}

impl Serialize for SetAnswer<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = self.receipt;
        let mut out = serializer.serialize_struct("SetAnswer", 16)?;
        out.serialize_field(if self.hold { "held" } else { "redeemed" }, &true)?;
        out.serialize_field("orderId", self.order_id)?;
        if self.hold {
            out.serialize_field("holdGroupId", &r.group)?;
        }
        let codes: Vec<&str> = r.codes.iter().map(|c| c.code.as_str()).collect();
        out.serialize_field("codes", &codes)?;
        let discount: u64 = r.uses.iter().map(|u| u.discount.get()).sum();
        let shipping: u64 = r.uses.iter().map(|u| u.shipping_discount.get()).sum();
        write_totals(&mut out, self.request, discount, self.order_value.saturating_sub(discount), shipping)?;
        out.serialize_field(if self.hold { "holds" } else { "redemptions" }, &Uses(self))?;
        out.serialize_field("rejected", &Refusals { codes: &r.codes, skipped: false })?;
        out.serialize_field("skipped", &Refusals { codes: &r.codes, skipped: true })?;
        if let Some(expires_at) = r.expires_at {
            out.serialize_field("expiresAt", &rfc3339(expires_at))?;
        }
        if let Some(fate) = r.hold {
            out.serialize_field("hold", fate.as_str())?;
        }
        if self.request.has_items {
            let codes = r.uses.iter().filter_map(|u| Some((u.code.as_str(), &**u.taken.as_ref()?))).collect();
            out.serialize_field("lines", &CodeLines { request: self.request, codes })?;
        }
        out.end()
    }
}

/// `redemptions` or `holds`: `{"code", "redemptionId"|"holdId", "discount", "shippingDiscount"}`.
struct Uses<'s, 'a>(&'s SetAnswer<'a>);

impl Serialize for Uses<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let answer = self.0;
        let currency = answer.request.currency;
        let mut out = serializer.serialize_seq(Some(answer.receipt.uses.len()))?;
        for u in &answer.receipt.uses {
            out.serialize_element(&UseEntry {
                code: &u.code,
                hold: answer.hold,
                id: u.id,
                discount: Money(currency.amount(u.discount.get())),
                shipping_discount: Money(currency.amount(u.shipping_discount.get())),
            })?;
        }
        out.end()
    }
}

struct UseEntry<'a> {
    code: &'a str,
    /// Its id is a `holdId` (else a `redemptionId`).
    hold: bool,
    id: uuid::Uuid,
    discount: Money,
    shipping_discount: Money,
}

impl Serialize for UseEntry<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("UseEntry", 4)?;
        out.serialize_field("code", self.code)?;
        out.serialize_field(if self.hold { "holdId" } else { "redemptionId" }, &self.id)?;
        out.serialize_field("discount", &self.discount)?;
        out.serialize_field("shippingDiscount", &self.shipping_discount)?;
        out.end()
    }
}

/// `rejected` (every code not taken for a reason other than `NO_EFFECT`) or `skipped`.
pub(crate) struct Refusals<'a> {
    pub(crate) codes: &'a [GroupCode],
    pub(crate) skipped: bool,
}

impl Serialize for Refusals<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_seq(None)?;
        for code in self.codes {
            let Some(reason) = code.reason else { continue };
            if (reason == Reason::NoEffect) == self.skipped {
                out.serialize_element(&CodeReason { code: &code.code, reason: reason.as_str() })?;
            }
        }
        out.end()
    }
}

/// A set refused by its codes (422): `{"redeemed"|"held": false, "rejected", "skipped"}`.
#[derive(Debug)]
pub struct SetRejected<'a> {
    pub hold: bool,
    pub codes: &'a [GroupCode],
}

impl Serialize for SetRejected<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("SetRejected", 3)?;
        out.serialize_field(if self.hold { "held" } else { "redeemed" }, &false)?;
        out.serialize_field("rejected", &Refusals { codes: self.codes, skipped: false })?;
        out.serialize_field("skipped", &Refusals { codes: self.codes, skipped: true })?;
        out.end()
    }
}

/// A set refused `503 QUOTA_UNAVAILABLE` for one of its codes:
/// `{"redeemed"|"held": false, "reason", "code"}`.
#[derive(Debug)]
pub struct SetUnavailable<'a> {
    hold: bool,
    code: &'a str,
}

impl<'a> SetUnavailable<'a> {
    pub fn new(hold: bool, code: &'a str) -> SetUnavailable<'a> {
        SetUnavailable { hold, code }
    }
}

impl Serialize for SetUnavailable<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("SetUnavailable", 3)?;
        out.serialize_field(if self.hold { "held" } else { "redeemed" }, &false)?;
        out.serialize_field("reason", "QUOTA_UNAVAILABLE")?;
        out.serialize_field("code", self.code)?;
        out.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_unavailable_for_one_code_names_it() {
        let body = serde_json::to_string(&SetUnavailable::new(false, "TEN")).unwrap();
        assert_eq!(body, r#"{"redeemed":false,"reason":"QUOTA_UNAVAILABLE","code":"TEN"}"#);
        let body = serde_json::to_string(&SetUnavailable::new(true, "TEN")).unwrap();
        assert!(body.starts_with(r#"{"held":false"#), "{body}");
    }
}
