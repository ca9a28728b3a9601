//! The cart in an answer (API.md §9): the totals with shipping, and each line's discount, its
//! units as runs of equal discounts, and which code gave what; amounts written exactly in the
//! request's currency. Written field by field as the serializer asks, never built as a tree
//! first: a 20-line answer is some 3 KB, and its lines cost no allocation of their own.

use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};

use crate::domain::allocation::{self, Run};
use crate::domain::cart::{CartRequest, Line};
use crate::domain::cart_discount::Taken;
use crate::domain::currency::{Amount, Currency};
use crate::http::response;

/// A validate answer with §9's fields: `valid`, `code` and `reason` first, as today.
#[derive(Debug)]
pub struct CartAnswer<'a> {
    pub valid: bool,
    pub code: &'a str,
    pub reason: Option<&'static str>,
    pub cart: CartParts<'a>,
}

/// §9's additions to an answer (validate, redeem, hold): the totals with shipping and, with
/// items, each line's split.
#[derive(Debug)]
pub struct CartParts<'a> {
    request: &'a CartRequest,
    code: &'a str,
    discount: u64,
    final_amount: u64,
    shipping_discount: u64,
    taken: Option<&'a Taken>,
}

impl<'a> CartAnswer<'a> {
    /// The answer for `request` when `code` took `discount` (and `taken`, line by line) off an
    /// order of `order_value` minor units, or was refused for `reason`.
    pub fn new(
        request: &'a CartRequest,
        code: &'a str,
        reason: Option<&'static str>,
        order_value: u64,
        discount: u64,
        taken: Option<&'a Taken>,
    ) -> Self {
        CartAnswer {
            valid: reason.is_none(),
            code,
            reason,
            cart: CartParts::new(request, code, order_value, discount, taken),
        }
    }
}

impl<'a> CartParts<'a> {
    /// The parts for `request` when `code` took `discount` off the merchandise (and `taken`,
    /// line by line and from shipping) of an order of `order_value` minor units.
    pub fn new(
        request: &'a CartRequest,
        code: &'a str,
        order_value: u64,
        discount: u64,
        taken: Option<&'a Taken>,
    ) -> Self {
        CartParts {
            request,
            code,
            discount,
            final_amount: order_value.saturating_sub(discount),
            shipping_discount: taken.map_or(0, |t| t.shipping),
            taken,
        }
    }

    /// Every field, in the contract's order, into a struct being written.
    fn write<S: SerializeStruct>(&self, out: &mut S) -> Result<(), S::Error> {
        write_totals(out, self.request, self.discount, self.final_amount, self.shipping_discount)?;
        if self.request.has_items {
            out.serialize_field("lines", &Lines(self))?;
        }
        Ok(())
    }

    /// About how many bytes the answer takes.
    pub fn size_hint(&self) -> usize {
        256 + 192 * self.request.cart.lines.len()
    }

    /// Fields [`CartParts::write`] writes.
    fn len(&self) -> usize {
        6 + usize::from(self.request.has_items)
    }
}

impl Serialize for CartAnswer<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("CartAnswer", 3 + self.cart.len())?;
        out.serialize_field("valid", &self.valid)?;
        out.serialize_field("code", self.code)?;
        out.serialize_field("reason", &self.reason)?;
        self.cart.write(&mut out)?;
        out.end()
    }
}

impl Serialize for CartParts<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("CartParts", self.len())?;
        self.write(&mut out)?;
        out.end()
    }
}

/// `currency` and the totals with shipping, in the contract's order: five money fields.
pub(crate) fn write_totals<S: SerializeStruct>(
    out: &mut S,
    request: &CartRequest,
    discount: u64,
    final_amount: u64,
    shipping_discount: u64,
) -> Result<(), S::Error> {
    let currency = request.currency;
    // What shipping costs once discounted (§10's example: 4.99 off 4.99 leaves 0).
    let shipping_total = request.cart.shipping.unwrap_or(0).saturating_sub(shipping_discount);
    let money = |minor| Money(currency.amount(minor));
    out.serialize_field("currency", currency.code())?;
    out.serialize_field("discount", &money(discount))?;
    out.serialize_field("finalAmount", &money(final_amount))?;
    out.serialize_field("shippingDiscount", &money(shipping_discount))?;
    out.serialize_field("shippingTotal", &money(shipping_total))?;
    out.serialize_field("grandTotal", &money(final_amount + shipping_total))
}

/// An amount written as the exact JSON number of its major units.
pub(crate) struct Money(pub(crate) Amount);

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        response::amount(&self.0, serializer)
    }
}

/// `lines`: each line's subtotal, discount, total, units and allocations.
struct Lines<'p, 'a>(&'p CartParts<'a>);

impl Serialize for Lines<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let parts = self.0;
        let lines = &parts.request.cart.lines;
        let mut out = serializer.serialize_seq(Some(lines.len()))?;
        let currency = parts.request.currency;
        for (i, line) in lines.iter().enumerate() {
            let none = [Run::new(line.quantity, 0)];
            let units: &[Run] = parts.taken.and_then(|t| t.lines.get(i)).map_or(&none, Vec::as_slice);
            let off = allocation::sum(units);
            // Only a code that gave the line more than 0.
            let given = (off > 0).then(|| Allocation { code: parts.code, discount: Money(currency.amount(off)) });
            out.serialize_element(&LineAnswer { line, units, allocations: given.as_slice(), currency })?;
        }
        out.end()
    }
}

pub(crate) struct LineAnswer<'a> {
    pub(crate) line: &'a Line,
    /// Every code's discount of each unit together, in runs.
    pub(crate) units: &'a [Run],
    pub(crate) allocations: &'a [Allocation<'a>],
    pub(crate) currency: Currency,
}

impl Serialize for LineAnswer<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let money = |minor| Money(self.currency.amount(minor));
        let (subtotal, off) = (self.line.subtotal(), allocation::sum(self.units));
        let mut out = serializer.serialize_struct("LineAnswer", 6)?;
        out.serialize_field("lineId", self.line.line_id.as_str())?;
        out.serialize_field("subtotal", &money(subtotal))?;
        out.serialize_field("discount", &money(off))?;
        out.serialize_field("total", &money(subtotal - off))?;
        out.serialize_field("units", &Units { runs: self.units, currency: self.currency })?;
        out.serialize_field("allocations", self.allocations)?;
        out.end()
    }
}

struct Units<'a> {
    runs: &'a [Run],
    currency: Currency,
}

impl Serialize for Units<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_seq(Some(self.runs.len()))?;
        for run in self.runs {
            out.serialize_element(&UnitsAnswer {
                count: run.count,
                discount: Money(self.currency.amount(run.amount)),
            })?;
        }
        out.end()
    }
}

#[derive(Serialize)]
struct UnitsAnswer {
    count: u32,
    discount: Money,
}

/// What one code gave a line.
#[derive(Serialize)]
pub(crate) struct Allocation<'a> {
    pub(crate) code: &'a str,
    pub(crate) discount: Money,
}
