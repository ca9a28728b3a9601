//! The cart in an answer (API.md §9): the totals with shipping, and each line's discount, its
//! units as runs of equal discounts, and which code gave what; amounts written exactly in the
//! request's currency.

use serde::Serialize;

use crate::domain::allocation::{self, Run};
use crate::domain::cart::CartRequest;
use crate::domain::cart_discount::Taken;
use crate::domain::currency::Amount;
use crate::http::response::amount;

/// A validate answer with §9's fields: `valid`, `code` and `reason` first, as today.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CartAnswer<'a> {
    pub valid: bool,
    pub code: &'a str,
    pub reason: Option<&'static str>,
    #[serde(flatten)]
    pub cart: CartParts<'a>,
}

/// §9's additions to an answer (validate, redeem, hold): the totals with shipping and, with
/// items, each line's split.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CartParts<'a> {
    pub currency: &'a str,
    #[serde(serialize_with = "amount")]
    pub discount: Amount,
    #[serde(serialize_with = "amount")]
    pub final_amount: Amount,
    #[serde(serialize_with = "amount")]
    pub shipping_discount: Amount,
    #[serde(serialize_with = "amount")]
    pub shipping_total: Amount,
    #[serde(serialize_with = "amount")]
    pub grand_total: Amount,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<LineAnswer<'a>>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LineAnswer<'a> {
    pub line_id: &'a str,
    #[serde(serialize_with = "amount")]
    pub subtotal: Amount,
    #[serde(serialize_with = "amount")]
    pub discount: Amount,
    #[serde(serialize_with = "amount")]
    pub total: Amount,
    pub units: Vec<UnitsAnswer>,
    pub allocations: Vec<AllocationAnswer<'a>>,
}

#[derive(Debug, Serialize)]
pub struct UnitsAnswer {
    pub count: u32,
    #[serde(serialize_with = "amount")]
    pub discount: Amount,
}

#[derive(Debug, Serialize)]
pub struct AllocationAnswer<'a> {
    pub code: &'a str,
    #[serde(serialize_with = "amount")]
    pub discount: Amount,
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
        taken: Option<&Taken>,
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
        taken: Option<&Taken>,
    ) -> Self {
        let currency = request.currency;
        let shipping = request.cart.shipping.unwrap_or(0);
        let shipping_discount = taken.map_or(0, |t| t.shipping);
        let final_amount = order_value.saturating_sub(discount);
        let lines = request.has_items.then(|| {
            request
                .cart
                .lines
                .iter()
                .enumerate()
                .map(|(i, line)| {
                    let units: Vec<Run> =
                        taken.and_then(|t| t.lines.get(i).cloned()).unwrap_or_else(|| vec![Run::new(line.quantity, 0)]);
                    let off = allocation::sum(&units);
                    LineAnswer {
                        line_id: &line.line_id,
                        subtotal: currency.amount(line.subtotal()),
                        discount: currency.amount(off),
                        total: currency.amount(line.subtotal() - off),
                        units: units
                            .iter()
                            .map(|run| UnitsAnswer { count: run.count, discount: currency.amount(run.amount) })
                            .collect(),
                        allocations: if off > 0 {
                            vec![AllocationAnswer { code, discount: currency.amount(off) }]
                        } else {
                            Vec::new()
                        },
                    }
                })
                .collect()
        });
        CartParts {
            currency: request.currency.code(),
            discount: currency.amount(discount),
            final_amount: currency.amount(final_amount),
            shipping_discount: currency.amount(shipping_discount),
            shipping_total: currency.amount(shipping),
            grand_total: currency.amount(final_amount + shipping - shipping_discount),
            lines,
        }
    }
}
