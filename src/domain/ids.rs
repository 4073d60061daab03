//! Identifiers and short texts that cross the boundary of the domain.
//!
//! Every identifier is a thin newtype over a `CompactString`: up to 24 bytes live inline,
//! without an allocation of their own, and every id a shop uses in practice is that short
//! (order and customer numbers, SKUs, generated command ids). A promotion day clones ids
//! into events, envelopes, the state and every view, millions of times; inline, a clone is
//! a copy of 24 bytes and a comparison touches no other memory. They serialize exactly as
//! strings, so logs, snapshots and state hashes are unchanged. Constructing one never validates:
//! commands arrive from callers, and [`crate::decide()`] is the single place that checks
//! them (see [`Limits`](crate::domain::limits)). Events only ever hold values that passed.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::domain::rejection::{Field, Rejection};

/// Milliseconds since the Unix epoch, as read from the engine clock.
///
/// The domain never reads a clock: every decision takes the time as an input, and
/// every time that matters afterwards is recorded in an event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// This time plus `duration_ms`, or `None` past the end of representable time.
    pub fn checked_add_ms(self, duration_ms: u64) -> Option<Timestamp> {
        self.0.checked_add(duration_ms).map(Timestamp)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $field:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub CompactString);

        impl $name {
            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Checks the identifier's syntax (see [`check_identifier`]).
            pub fn check(&self) -> Result<(), Rejection> {
                check_identifier($field, &self.0)
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                $name(CompactString::from(text))
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> Self {
                $name(CompactString::from(text))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }
    };
}

identifier!(
    /// A stock keeping unit: one sellable product.
    Sku,
    Field::Sku
);
identifier!(
    /// An order, chosen by the caller, unique within a shop.
    OrderId,
    Field::OrderId
);
identifier!(
    /// A checkout hold on stock, chosen by the caller, unique within a shop.
    ReservationId,
    Field::ReservationId
);
identifier!(
    /// A buyer.
    CustomerId,
    Field::CustomerId
);
identifier!(
    /// A payment, as named by the payment provider.
    PaymentId,
    Field::PaymentId
);
identifier!(
    /// One parcel of an order, unique within the order.
    ShipmentId,
    Field::ShipmentId
);
identifier!(
    /// One return request of an order, unique within the order.
    ReturnId,
    Field::ReturnId
);
identifier!(
    /// One refund of an order, unique within the order.
    RefundId,
    Field::RefundId
);

/// A shop: a partition with its own log and exactly one writer. The default is `main`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShopId(String);

/// Longest shop id, in characters.
pub const SHOP_ID_LENGTH_MAX: usize = 64;

impl ShopId {
    /// The default shop.
    pub const DEFAULT: &'static str = "main";

    /// A shop id: 1 to 64 characters of `a-z 0-9 -`.
    pub fn new(text: &str) -> Result<ShopId, String> {
        if text.is_empty() || text.len() > SHOP_ID_LENGTH_MAX {
            return Err(format!("a shop id must be 1 to {SHOP_ID_LENGTH_MAX} characters long"));
        }
        if !text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            return Err("a shop id may contain only a-z, 0-9 and '-'".to_owned());
        }
        Ok(ShopId(text.to_owned()))
    }

    /// The default shop, `main`.
    pub fn main() -> ShopId {
        ShopId(ShopId::DEFAULT.to_owned())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ShopId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for ShopId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// Names one command for idempotency: executing a known id again returns the original
/// outcome. Chosen by the caller or generated; 1 to 128 characters, no control characters.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommandId(CompactString);

/// Longest command id, in characters.
pub const COMMAND_ID_LENGTH_MAX: usize = 128;

impl CommandId {
    /// A command id a caller chose.
    pub fn new(text: &str) -> Result<CommandId, String> {
        let length = text.chars().count();
        if length == 0 || length > COMMAND_ID_LENGTH_MAX {
            return Err(format!("a command id must be 1 to {COMMAND_ID_LENGTH_MAX} characters long"));
        }
        if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("a command id must not contain spaces or control characters".to_owned());
        }
        Ok(CommandId(CompactString::from(text)))
    }

    /// A generated id, unique within a process run and across runs of one shop: `prefix`
    /// names its source and `sequence` is unique within it.
    pub fn generated(prefix: &str, sequence: u64) -> CommandId {
        CommandId(compact_str::format_compact!("{prefix}-{sequence:016x}"))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// Longest identifier, in characters.
pub const IDENTIFIER_LENGTH_MAX: usize = 64;

/// Identifiers are 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
///
/// The alphabet keeps identifiers safe in URLs, file names, stream names and logs.
pub fn check_identifier(field: Field, text: &str) -> Result<(), Rejection> {
    if text.is_empty() || text.len() > IDENTIFIER_LENGTH_MAX {
        return Err(Rejection::invalid(field, format!("must be 1 to {IDENTIFIER_LENGTH_MAX} characters long")));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !text.chars().all(allowed) {
        return Err(Rejection::invalid(field, "may contain only letters A-Z and a-z, digits, '.', '_' and '-'"));
    }
    Ok(())
}

/// Free text written by people (titles, reasons, carrier names): 1 to `length_max`
/// characters, not blank, no control characters.
pub fn check_text(field: Field, text: &str, length_max: usize) -> Result<(), Rejection> {
    let length = text.chars().count();
    if length == 0 || length > length_max {
        return Err(Rejection::invalid(field, format!("must be 1 to {length_max} characters long")));
    }
    if text.trim().is_empty() {
        return Err(Rejection::invalid(field, "must not be blank"));
    }
    if text.chars().any(char::is_control) {
        return Err(Rejection::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        let ok = |t: &str| check_identifier(Field::Sku, t).is_ok();
        assert!(ok("TEA-001"));
        assert!(ok("a.b_c-9"));
        assert!(ok(&"x".repeat(64)));
        assert!(!ok(""));
        assert!(!ok(&"x".repeat(65)));
        assert!(!ok("tea 1"));
        assert!(!ok("../etc"));
        assert!(!ok("茶"));
        assert!(!ok("a\nb"));
    }

    #[test]
    fn texts() {
        let ok = |t: &str| check_text(Field::Title, t, 5).is_ok();
        assert!(ok("绿茶"));
        assert!(ok("12345"));
        assert!(!ok("123456"));
        assert!(!ok(""));
        assert!(!ok("   "));
        assert!(!ok("a\tb"));
    }
}
