//! The pure domain: coupons, campaigns, money, identities, the rules and the events they
//! produce. No I/O, no async, no clock: `now` is always a parameter.

/// The database and API spellings of the small enums, one table each.
macro_rules! spelled {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The database and API spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }

            /// Parses the database and API spelling.
            pub fn parse(text: &str) -> Option<$ty> {
                match text { $($text => Some($ty::$variant),)+ _ => None }
            }
        }
    };
}

pub mod allocation;
pub mod batch;
pub mod campaign;
pub mod cart;
pub mod cart_discount;
pub mod cart_fields;
pub mod coupon;
pub mod currency;
pub mod event;
pub mod identity;
pub mod money;
pub mod rules;
pub mod stack;
