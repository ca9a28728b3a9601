//! Several codes on one order (API.md §10): each code judged alone on the request as sent
//! (step 1, the rules), then stacked (steps 2–5, `domain::stack`), then `mode`'s verdict
//! (step 6). Read-only, like a validate of one code; one validation-log row per code.

use std::borrow::Cow;

use crate::domain::cart::{Cart, CartRequest};
use crate::domain::cart_discount::{Class, Taken, Terms};
use crate::domain::coupon::CouponId;
use crate::domain::money::Cents;
use crate::domain::rules::{self, Attempt, Decision, Reason};
use crate::domain::stack::{self, Classes, CombinedCap, Mode, Passed, Select};
use chrono::{DateTime, Utc};

use crate::engine::catalog::{Catalog, Found};
use crate::engine::{Asked, Caller, Engine, offer};

/// A validate request naming several codes, well-formed.
#[derive(Debug, Clone, Copy)]
pub struct StackRequest<'a> {
    /// Normalised and distinct, in request order.
    pub codes: &'a [Cow<'a, str>],
    pub user_id: &'a str,
    pub order_value: Cents,
    pub order_id: Option<&'a str>,
    /// API.md §9's fields, when sent.
    pub cart: Option<&'a CartRequest>,
    pub mode: Mode,
    pub select: Select,
    /// `maxTotalDiscount`, in minor units of the request's currency.
    pub max_total: Option<u64>,
}

/// What became of one code of a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Taken with the others, and it takes something off.
    Applied,
    /// Taken with the others with nothing left to take off: `NO_EFFECT`, no use, no budget.
    Skipped,
    /// Refused alone (a rule's reason), or not taken with the others (`NOT_COMBINABLE`).
    Rejected(Reason),
}

/// One code of a stack, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackedCode {
    /// Normalised.
    pub code: String,
    pub coupon_id: Option<CouponId>,
    pub fate: Fate,
}

/// A code that applies, with what it takes after the combined cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Its place in the request's `codes`.
    pub position: usize,
    pub class: Class,
    /// Off each line and unit (an order without items: its value as one line) and shipping.
    pub taken: Taken,
}

/// The answer to a validate of several codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackedValidation {
    /// `all`: no code refused; `partial`: some code not refused.
    pub valid: bool,
    /// Every code, in request order.
    pub codes: Vec<StackedCode>,
    /// The codes that apply, in the order they applied; none when the stack is not valid.
    pub applied: Vec<Applied>,
}

impl StackedValidation {
    /// Off the merchandise, every applied code together.
    pub fn merchandise(&self) -> u64 {
        self.applied.iter().map(|a| a.taken.merchandise()).sum()
    }

    /// Off shipping, every applied code together.
    pub fn shipping(&self) -> u64 {
        self.applied.iter().map(|a| a.taken.shipping).sum()
    }
}

/// A code that passed alone, with what stacking needs of it.
struct Candidate {
    position: usize,
    terms: Terms,
    priority: i32,
    combines_with: Classes,
}

impl Engine {
    /// Validates several codes on one order (read-only) and logs a row per code: its reason,
    /// or what it takes off the merchandise in the stack (whatever `mode` makes of the
    /// others).
    pub fn validate_stack(&self, req: &StackRequest<'_>, caller: &Caller) -> StackedValidation {
        self.metrics.stack_size.record(req.codes.len() as f64);
        let now = self.clock.now();
        let mut judged = self.judge_stack(&self.catalog.load(), req, &[], now);
        let asked = Asked { user_id: req.user_id, order_id: req.order_id, order_value: req.order_value, caller, now };
        for (position, code) in judged.codes.iter().enumerate() {
            let (reason, discount) = match code.fate {
                Fate::Rejected(reason) => (Some(reason), 0),
                Fate::Skipped => (Some(Reason::NoEffect), 0),
                Fate::Applied => {
                    let taken = judged.applied.iter().find(|a| a.position == position).map(|a| &a.taken);
                    (None, taken.map_or(0, Taken::merchandise))
                }
            };
            let discount = Cents::new(discount).unwrap_or(req.order_value);
            self.log_validation(&asked, &code.code, code.coupon_id, reason, discount);
        }
        if !judged.valid {
            judged.applied.clear();
        }
        judged
    }

    /// §10 steps 1–6 without a log: each code judged alone, the stack of those that pass, and
    /// `mode`'s verdict; `applied` as the stack has it even when the verdict is not valid.
    /// `refused` are codes (by position) refused since they were judged: a limit ran out while
    /// taking them; they are rejected with that reason.
    pub(super) fn judge_stack(
        &self,
        catalog: &Catalog,
        req: &StackRequest<'_>,
        refused: &[(usize, Reason)],
        now: DateTime<Utc>,
    ) -> StackedValidation {
        let default_currency = self.settings.default_currency;
        let attempt = Attempt {
            user_id: req.user_id,
            order_value: req.order_value,
            order_id: req.order_id,
            cart: req.cart,
            default_currency,
        };
        let plain;
        let priced_on = match req.cart {
            Some(cart) => cart,
            None => {
                plain = CartRequest::plain(default_currency);
                &plain
            }
        };
        let mut codes = Vec::with_capacity(req.codes.len());
        let mut candidates = Vec::with_capacity(req.codes.len());
        for (position, code) in req.codes.iter().enumerate() {
            let found = catalog.find(code);
            // An order takes a coupon once: a second code of the same coupon (two bulk codes of
            // one batch) cannot be used with the first.
            let twice = |f: Found<'_>| codes.iter().any(|c: &StackedCode| c.coupon_id == Some(f.coupon().id));
            let verdict = match (found, refused.iter().find(|(p, _)| *p == position)) {
                (_, Some((_, reason))) => Err(*reason),
                (None, None) => Err(Reason::CouponNotFound),
                (Some(found), None) if twice(found) => Err(Reason::OrderAlreadyRedeemed),
                (Some(found), None) => {
                    let offer = offer(catalog, found, req.user_id);
                    let view = self.view(&offer, found, req.user_id, req.order_id);
                    match rules::decide(&offer, &view, &attempt, now).0 {
                        Decision::Rejected(reason) => Err(reason),
                        Decision::Valid { .. } => {
                            rules::stack_terms(&offer, priced_on, default_currency).map(|terms| (terms, found.coupon()))
                        }
                    }
                }
            };
            let fate = match verdict {
                Ok((terms, coupon)) => {
                    let (priority, combines_with) = (coupon.priority, coupon.combines_with);
                    candidates.push(Candidate { position, terms, priority, combines_with });
                    Fate::Applied
                }
                Err(reason) => Fate::Rejected(reason),
            };
            codes.push(StackedCode { code: code.to_string(), coupon_id: found.map(|f| f.coupon().id), fate });
        }

        let whole;
        let cart = match req.cart {
            Some(request) if request.has_items => &request.cart,
            _ => {
                whole = Cart::whole_order(req.order_value.get(), req.cart.and_then(|c| c.cart.shipping));
                &whole
            }
        };
        let passed: Vec<Passed<'_>> = candidates
            .iter()
            .map(|c| Passed {
                position: c.position,
                terms: &c.terms,
                priority: c.priority,
                combines_with: c.combines_with,
            })
            .collect();
        let cap = CombinedCap {
            order_value: req.order_value.get(),
            max_total: req.max_total,
            max_total_percent: self.settings.max_total_percent,
        };
        let stacked = stack::stack(cart, &passed, req.select, &cap);
        for &position in &stacked.not_combinable {
            codes[position].fate = Fate::Rejected(Reason::NotCombinable);
        }
        for &position in &stacked.no_effect {
            codes[position].fate = Fate::Skipped;
        }
        let class = |position: usize| {
            candidates.iter().find(|c| c.position == position).map(|c| c.terms.class()).expect("an applied code passed")
        };
        let applied: Vec<Applied> = stacked
            .applied
            .into_iter()
            .map(|(position, taken)| Applied { position, class: class(position), taken })
            .collect();
        let refused = codes.iter().filter(|c| matches!(c.fate, Fate::Rejected(_))).count();
        let valid = match req.mode {
            Mode::All => refused == 0,
            Mode::Partial => refused < codes.len(),
        };
        StackedValidation { valid, codes, applied }
    }
}
