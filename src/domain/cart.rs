//! A cart as the rules judge it (API.md §9): lines with quantities and unit prices in minor
//! units of the request's currency, shipping, and which lines a coupon's scope makes eligible.

use crate::domain::allocation::Run;
use crate::domain::currency::Currency;

/// One line of a cart, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub line_id: String,
    pub product_id: String,
    pub variant_id: Option<String>,
    pub category_ids: Vec<String>,
    pub quantity: u32,
    /// Minor units.
    pub unit_price: u64,
    pub on_sale: bool,
    /// `false`: never discounted, never counted.
    pub discountable: bool,
}

impl Line {
    /// quantity × unitPrice.
    pub fn subtotal(&self) -> u64 {
        u64::from(self.quantity) * self.unit_price
    }
}

/// A cart: its lines in request order and its shipping amount (minor units), if sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cart {
    pub lines: Vec<Line>,
    pub shipping: Option<u64>,
}

impl Cart {
    /// Σ quantity × unitPrice: the `orderValue` the items make.
    pub fn order_value(&self) -> u64 {
        self.lines.iter().map(Line::subtotal).sum()
    }
}

/// What a request says of money beyond `orderValue` (API.md §9): its currency, and its
/// cart. Present when the request used any of §9's fields; its answer then carries them too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartRequest {
    pub currency: Currency,
    /// The currency of every coupon that names none (`money.default_currency`).
    pub default_currency: Currency,
    pub cart: Cart,
    /// Whether `items` were sent (a request may send only a currency or shipping).
    pub has_items: bool,
}

/// Which lines a coupon applies to. Empty include lists include every line; exclusion wins.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scope {
    pub include_products: Vec<String>,
    pub include_variants: Vec<String>,
    pub include_categories: Vec<String>,
    pub exclude_products: Vec<String>,
    pub exclude_variants: Vec<String>,
    pub exclude_categories: Vec<String>,
    pub exclude_on_sale: bool,
}

impl Scope {
    /// Whether `line` is eligible under this scope (a non-discountable line never is).
    pub fn admits(&self, line: &Line) -> bool {
        let has = |list: &[String], id: &str| list.iter().any(|x| x == id);
        let variant = line.variant_id.as_deref();
        let included = (self.include_products.is_empty()
            && self.include_variants.is_empty()
            && self.include_categories.is_empty())
            || has(&self.include_products, &line.product_id)
            || variant.is_some_and(|v| has(&self.include_variants, v))
            || line.category_ids.iter().any(|c| has(&self.include_categories, c));
        let excluded = has(&self.exclude_products, &line.product_id)
            || variant.is_some_and(|v| has(&self.exclude_variants, v))
            || line.category_ids.iter().any(|c| has(&self.exclude_categories, c))
            || (self.exclude_on_sale && line.on_sale);
        line.discountable && included && !excluded
    }
}

/// Whether `line` is eligible under `scope` (none: every discountable line).
pub fn eligible(scope: Option<&Scope>, line: &Line) -> bool {
    scope.map_or(line.discountable, |s| s.admits(line))
}

/// The running amounts of a cart while codes apply (§9 step 1): each line's units as runs,
/// and shipping. Codes only ever lower them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub lines: Vec<Vec<Run>>,
    pub shipping: u64,
}

impl Running {
    /// Every unit at its unit price; shipping at its amount.
    pub fn of(cart: &Cart) -> Running {
        Running {
            lines: cart.lines.iter().map(|l| vec![Run::new(l.quantity, l.unit_price)]).collect(),
            shipping: cart.shipping.unwrap_or(0),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A discountable line of product `p-<id>`, for the cart tests.
    pub(crate) fn line(id: &str, quantity: u32, unit_price: u64) -> Line {
        Line {
            line_id: id.into(),
            product_id: format!("p-{id}"),
            variant_id: None,
            category_ids: Vec::new(),
            quantity,
            unit_price,
            on_sale: false,
            discountable: true,
        }
    }

    #[test]
    fn a_scope_includes_by_any_list_and_exclusion_wins() {
        let shirt = Line {
            variant_id: Some("v-M".into()),
            category_ids: vec!["shirts".into(), "summer".into()],
            ..line("1", 1, 100)
        };
        let ids = |xs: &[&str]| xs.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        let cases: &[(Scope, bool)] = &[
            (Scope::default(), true),
            (Scope { include_categories: ids(&["shirts"]), ..Scope::default() }, true),
            (Scope { include_categories: ids(&["socks"]), ..Scope::default() }, false),
            (Scope { include_products: ids(&["p-1"]), ..Scope::default() }, true),
            (Scope { include_variants: ids(&["v-M"]), ..Scope::default() }, true),
            (Scope { include_variants: ids(&["v-L"]), ..Scope::default() }, false),
            (
                Scope {
                    include_categories: ids(&["shirts"]),
                    exclude_categories: ids(&["summer"]),
                    ..Scope::default()
                },
                false,
            ),
            (Scope { exclude_products: ids(&["p-1"]), ..Scope::default() }, false),
            (Scope { exclude_variants: ids(&["v-M"]), ..Scope::default() }, false),
            (Scope { exclude_on_sale: true, ..Scope::default() }, true),
            // Ids compare exactly.
            (Scope { include_categories: ids(&["Shirts"]), ..Scope::default() }, false),
        ];
        for (scope, admitted) in cases {
            assert_eq!(scope.admits(&shirt), *admitted, "{scope:?}");
        }
        let on_sale = Line { on_sale: true, ..shirt.clone() };
        assert!(!Scope { exclude_on_sale: true, ..Scope::default() }.admits(&on_sale));
        let not_discountable = Line { discountable: false, ..shirt };
        assert!(!Scope::default().admits(&not_discountable));
        assert!(!eligible(None, &not_discountable));
    }
}
