//! A cart as the rules judge it (API.md §9): lines with quantities and unit prices in minor
//! units of the request's currency, shipping, and which lines a coupon's scope makes eligible.

use compact_str::CompactString;
use sha2::{Digest, Sha256};

use crate::domain::allocation::Run;
use crate::domain::currency::Currency;

/// One line of a cart, as sent. Ids are kept inline (no allocation) up to 24 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub line_id: CompactString,
    pub product_id: CompactString,
    pub variant_id: Option<CompactString>,
    pub category_ids: Vec<CompactString>,
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

    /// An order sent without items, as several codes are stacked on it (§10): its value as
    /// one discountable unit, and its shipping. An order code takes from it exactly what it
    /// takes from the order value alone (§9: "with items and no scope, D equals the §3 result").
    pub fn whole_order(order_value: u64, shipping: Option<u64>) -> Cart {
        let line = Line {
            line_id: CompactString::default(),
            product_id: CompactString::default(),
            variant_id: None,
            category_ids: Vec::new(),
            quantity: 1,
            unit_price: order_value,
            on_sale: false,
            discountable: true,
        };
        Cart { lines: vec![line], shipping }
    }
}

/// What a request says of money beyond `orderValue` (API.md §9): its currency, and its
/// cart. Present when the request used any of §9's fields; its answer then carries them too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartRequest {
    pub currency: Currency,
    pub cart: Cart,
    /// Whether `items` were sent (a request may send only a currency or shipping).
    pub has_items: bool,
}

/// A set of product, variant or category ids, sorted once when a coupon is loaded so that a
/// line is judged by binary search, without allocating.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdSet(Box<[Box<str>]>);

impl IdSet {
    pub fn new(ids: impl IntoIterator<Item = impl Into<Box<str>>>) -> IdSet {
        let mut ids: Vec<Box<str>> = ids.into_iter().map(Into::into).collect();
        ids.sort_unstable();
        ids.dedup();
        IdSet(ids.into_boxed_slice())
    }

    pub fn contains(&self, id: &str) -> bool {
        self.0.binary_search_by(|x| (**x).cmp(id)).is_ok()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ids, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|id| &**id)
    }
}

impl CartRequest {
    /// The SHA-256 of what the request says of money, normalised: its currency, every field
    /// of every line in order, its shipping, each length-prefixed. A replay of a use must send
    /// the same (`coupon_usage.items_hash`); the same on every instance and every build.
    pub fn items_hash(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        let number = |hash: &mut Sha256, n: u64| hash.update(n.to_le_bytes());
        let text = |hash: &mut Sha256, text: &str| {
            hash.update((text.len() as u64).to_le_bytes());
            hash.update(text.as_bytes());
        };
        text(&mut hash, self.currency.code());
        number(&mut hash, u64::from(self.has_items));
        for line in &self.cart.lines {
            text(&mut hash, &line.line_id);
            text(&mut hash, &line.product_id);
            match &line.variant_id {
                Some(variant) => text(&mut hash, variant),
                None => number(&mut hash, u64::MAX),
            }
            number(&mut hash, line.category_ids.len() as u64);
            for category in &line.category_ids {
                text(&mut hash, category);
            }
            number(&mut hash, u64::from(line.quantity));
            number(&mut hash, line.unit_price);
            number(&mut hash, u64::from(line.on_sale) | u64::from(line.discountable) << 1);
        }
        number(&mut hash, self.cart.shipping.map_or(u64::MAX, |s| s));
        hash.finalize().into()
    }

    /// A request without §9's fields, as the rules judge it for a coupon that needs them:
    /// the default currency, no items, no shipping.
    pub fn plain(currency: Currency) -> CartRequest {
        CartRequest { currency, cart: Cart::default(), has_items: false }
    }
}

/// Which lines a coupon applies to. Empty include lists include every line; exclusion wins.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scope {
    pub include_products: IdSet,
    pub include_variants: IdSet,
    pub include_categories: IdSet,
    pub exclude_products: IdSet,
    pub exclude_variants: IdSet,
    pub exclude_categories: IdSet,
    pub exclude_on_sale: bool,
}

impl Scope {
    /// Whether `line` is eligible under this scope (a non-discountable line never is).
    pub fn admits(&self, line: &Line) -> bool {
        let variant = line.variant_id.as_deref();
        let included = (self.include_products.is_empty()
            && self.include_variants.is_empty()
            && self.include_categories.is_empty())
            || self.include_products.contains(&line.product_id)
            || variant.is_some_and(|v| self.include_variants.contains(v))
            || line.category_ids.iter().any(|c| self.include_categories.contains(c));
        let excluded = self.exclude_products.contains(&line.product_id)
            || variant.is_some_and(|v| self.exclude_variants.contains(v))
            || line.category_ids.iter().any(|c| self.exclude_categories.contains(c))
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
            product_id: format!("p-{id}").into(),
            variant_id: None,
            category_ids: Vec::new(),
            quantity,
            unit_price,
            on_sale: false,
            discountable: true,
        }
    }

    #[test]
    fn the_items_hash_changes_with_any_field_and_nothing_else() {
        let eur = Currency::parse("EUR").unwrap();
        let request =
            |lines: Vec<Line>, shipping| CartRequest { currency: eur, cart: Cart { lines, shipping }, has_items: true };
        let base = request(vec![line("1", 2, 500), line("2", 1, 300)], Some(499));
        assert_eq!(base.items_hash(), base.items_hash());
        // The pinned value: a change of the function is a change of every stored replay check.
        assert_eq!(base.items_hash()[..4], [216, 63, 161, 143]);
        let mut variants = vec![
            request(vec![line("1", 2, 500), line("2", 1, 300)], None),
            request(vec![line("1", 2, 500), line("2", 1, 301)], Some(499)),
            request(vec![line("1", 3, 500), line("2", 1, 300)], Some(499)),
            request(vec![line("2", 1, 300), line("1", 2, 500)], Some(499)),
            request(vec![line("1", 2, 500)], Some(499)),
            CartRequest { currency: Currency::parse("USD").unwrap(), ..base.clone() },
            CartRequest { has_items: false, ..base.clone() },
        ];
        let mut on_sale = base.clone();
        on_sale.cart.lines[0].on_sale = true;
        let mut category = base.clone();
        category.cart.lines[1].category_ids = vec!["a".into()];
        let mut variant = base.clone();
        variant.cart.lines[1].variant_id = Some("v".into());
        variants.extend([on_sale, category, variant]);
        for other in &variants {
            assert_ne!(other.items_hash(), base.items_hash(), "{other:?}");
        }
    }

    #[test]
    fn a_scope_includes_by_any_list_and_exclusion_wins() {
        let shirt = Line {
            variant_id: Some("v-M".into()),
            category_ids: vec!["shirts".into(), "summer".into()],
            ..line("1", 1, 100)
        };
        let ids = |xs: &[&str]| IdSet::new(xs.iter().copied());
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
