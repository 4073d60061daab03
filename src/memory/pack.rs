//! A compact binary encoding for the values a [`crate::memory::tiered::TieredMap`] keeps frozen and
//! the blocks a [`crate::memory::tiered::BlockLog`] seals.
//!
//! Guarantees:
//! - [`unpack`] gives back exactly the value [`pack`] was given, down to each amount's scale
//!   and the sign of a zero, or a typed [`PackError`]: never a panic, whatever the bytes.
//! - A value's bytes are read to their end: trailing bytes are an error, as are truncated
//!   ones, unknown variant tags, text that is not UTF-8 and amounts `Decimal` cannot hold.
//! - The format is private to one build. Frozen entries live in memory, in the scratch
//!   spill, and in engine snapshots, whose schema version changes when this format does;
//!   sealed blocks live in memory and in the spill only. Events and view snapshots never
//!   use it.
//!
//! Why not postcard through serde, as the log does: the log's amounts serialize as text
//! (`rust_decimal`'s `serde-str`), and a promotion day's replay freezes and thaws each
//! order several times. Here an amount is a sign-and-scale byte and its mantissa as
//! varints, fields are written in declaration order with no framing, and the encoder
//! writes into a buffer the caller reuses.
//!
//! Integers are LEB128 varints; a length is a varint that may not exceed the bytes left,
//! so corrupt input never asks for a large allocation.

use std::fmt;

use compact_str::CompactString;
use rust_decimal::Decimal;

use crate::domain::command::{Condition, Line, Party};
use crate::domain::event::{CostedLine, Discount, DiscountSource, InspectedLine, RefundShare, RefundTarget};
use crate::domain::ids::{
    CustomerId, OrderId, PaymentId, RefundId, ReservationId, ReturnId, ShipmentId, Sku, Timestamp,
};
use crate::domain::state::{Closure, Order, OrderLine, Payment, Refund, Return, Shipment};

/// Why bytes do not unpack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackError {
    /// The bytes end inside a value.
    Truncated,
    /// A varint is longer than its type allows or overflows it.
    Varint,
    /// A length exceeds the bytes that follow it.
    Length,
    /// An enum's tag names no variant.
    Tag(&'static str, u8),
    /// Text is not UTF-8.
    Utf8,
    /// An amount's scale or mantissa is out of `Decimal`'s range.
    Decimal,
    /// Bytes follow the value.
    Trailing(usize),
}

impl fmt::Display for PackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackError::Truncated => f.write_str("the bytes end inside a value"),
            PackError::Varint => f.write_str("a varint overflows its type"),
            PackError::Length => f.write_str("a length exceeds the bytes left"),
            PackError::Tag(what, tag) => write!(f, "tag {tag} names no {what}"),
            PackError::Utf8 => f.write_str("text is not UTF-8"),
            PackError::Decimal => f.write_str("an amount is out of range"),
            PackError::Trailing(count) => write!(f, "{count} bytes follow the value"),
        }
    }
}

impl std::error::Error for PackError {}

/// Bytes being unpacked, read from the front.
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// `bytes` to be read from the front.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    /// The bytes not read yet.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.bytes
    }

    /// The next byte.
    pub(crate) fn byte(&mut self) -> Result<u8, PackError> {
        let (&first, rest) = self.bytes.split_first().ok_or(PackError::Truncated)?;
        self.bytes = rest;
        Ok(first)
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], PackError> {
        if count > self.bytes.len() {
            return Err(PackError::Truncated);
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(taken)
    }

    /// The next LEB128 varint.
    #[inline(always)]
    pub(crate) fn varint(&mut self) -> Result<u64, PackError> {
        // Most integers (counts, lengths, small amounts' high parts) take one byte.
        match self.bytes.split_first() {
            Some((&first, rest)) if first < 0x80 => {
                self.bytes = rest;
                Ok(u64::from(first))
            }
            _ => self.varint_long(),
        }
    }

    #[cold]
    fn varint_long(&mut self) -> Result<u64, PackError> {
        let mut value = 0u64;
        // A u64 takes at most 10 groups of 7 bits; the tenth holds one bit.
        for group in 0..10u32 {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7f);
            if group == 9 && bits > 1 {
                return Err(PackError::Varint);
            }
            value |= bits << (7 * group);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(PackError::Varint)
    }

    /// A length, at most the bytes left: every element takes at least one byte.
    fn length(&mut self) -> Result<usize, PackError> {
        let length = usize::try_from(self.varint()?).map_err(|_| PackError::Length)?;
        if length > self.bytes.len() {
            return Err(PackError::Length);
        }
        Ok(length)
    }

    fn text(&mut self) -> Result<&'a str, PackError> {
        let length = self.length()?;
        std::str::from_utf8(self.take(length)?).map_err(|_| PackError::Utf8)
    }
}

/// Appends `value` as a LEB128 varint.
#[inline]
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

/// A value with a compact encoding. See the module documentation.
pub trait Pack: Sized {
    /// Appends the encoding of `self` to `out`.
    fn pack(&self, out: &mut Vec<u8>);

    /// Reads one value from the front of `input`.
    fn unpack(input: &mut Reader<'_>) -> Result<Self, PackError>;
}

/// A value a [`crate::memory::tiered::TieredMap`] keeps frozen: its encoding, which its type may
/// follow with changes appended while it was frozen (see [`crate::domain::state::Order`]).
pub trait Entry: Pack + Clone {
    /// The value a frozen entry's bytes hold. By default exactly [`unpack`]: the entry is
    /// the value's encoding and nothing after it.
    fn thaw(bytes: &[u8]) -> Result<Self, PackError> {
        unpack(bytes)
    }
}

/// For the tiered maps' tests.
#[cfg(test)]
impl Entry for u64 {}
impl<T: Pack + Clone> Entry for Vec<T> {}

/// `value` encoded, built in `scratch` (cleared first, kept for the next call) so that the
/// result is allocated once, at its size.
pub fn pack<T: Pack>(value: &T, scratch: &mut Vec<u8>) -> Box<[u8]> {
    scratch.clear();
    value.pack(scratch);
    Box::from(&scratch[..])
}

/// The value `bytes` encode, all of them.
pub fn unpack<T: Pack>(bytes: &[u8]) -> Result<T, PackError> {
    let mut input = Reader { bytes };
    let value = T::unpack(&mut input)?;
    match input.bytes.len() {
        0 => Ok(value),
        count => Err(PackError::Trailing(count)),
    }
}

impl Pack for u64 {
    fn pack(&self, out: &mut Vec<u8>) {
        put_varint(out, *self);
    }

    fn unpack(input: &mut Reader<'_>) -> Result<Self, PackError> {
        input.varint()
    }
}

impl Pack for bool {
    fn pack(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }

    fn unpack(input: &mut Reader<'_>) -> Result<Self, PackError> {
        match input.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(PackError::Tag("bool", tag)),
        }
    }
}

impl Pack for Timestamp {
    fn pack(&self, out: &mut Vec<u8>) {
        put_varint(out, self.0);
    }

    fn unpack(input: &mut Reader<'_>) -> Result<Self, PackError> {
        input.varint().map(Timestamp)
    }
}

/// The sign-and-scale byte's sign bit; the scale (at most 28) is in the low bits.
const DECIMAL_NEGATIVE: u8 = 0x80;

impl Pack for Decimal {
    /// A byte of sign and scale, then the 96-bit mantissa's magnitude as its low 64 bits
    /// and its high 32 bits, each a varint (one byte for any amount a shop has).
    fn pack(&self, out: &mut Vec<u8>) {
        // The raw parts: flags (scale in the third byte, sign in the top bit), then the
        // mantissa's low, middle and high 32 bits, little-endian.
        let raw = self.serialize();
        let word = |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        let scale = raw[2];
        debug_assert_eq!(u32::from(scale), self.scale());
        out.push(scale | (raw[3] & DECIMAL_NEGATIVE));
        put_varint(out, u64::from(word(4)) | (u64::from(word(8)) << 32));
        put_varint(out, u64::from(word(12)));
    }

    fn unpack(input: &mut Reader<'_>) -> Result<Self, PackError> {
        let flags = input.byte()?;
        let scale = u32::from(flags & !DECIMAL_NEGATIVE);
        let low = input.varint()?;
        let high = u32::try_from(input.varint()?).map_err(|_| PackError::Decimal)?;
        if scale > Decimal::MAX_SCALE {
            return Err(PackError::Decimal);
        }
        let mut amount = Decimal::from_parts(low as u32, (low >> 32) as u32, high, false, scale);
        // Set apart: `from_parts` drops the sign of a zero.
        amount.set_sign_negative(flags & DECIMAL_NEGATIVE != 0);
        Ok(amount)
    }
}

impl Pack for String {
    fn pack(&self, out: &mut Vec<u8>) {
        put_text(out, self);
    }

    fn unpack(input: &mut Reader<'_>) -> Result<Self, PackError> {
        input.text().map(str::to_owned)
    }
}

impl Pack for CompactString {
    fn pack(&self, out: &mut Vec<u8>) {
        put_text(out, self);
    }

    fn unpack(input: &mut Reader<'_>) -> Result<Self, PackError> {
        input.text().map(CompactString::from)
    }
}

impl<T: Pack> Pack for Option<T> {
    fn pack(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                value.pack(out);
            }
        }
    }

    fn unpack(input: &mut Reader<'_>) -> Result<Self, PackError> {
        match input.byte()? {
            0 => Ok(None),
            1 => T::unpack(input).map(Some),
            tag => Err(PackError::Tag("option", tag)),
        }
    }
}

impl<T: Pack> Pack for Vec<T> {
    fn pack(&self, out: &mut Vec<u8>) {
        put_varint(out, self.len() as u64);
        for item in self {
            item.pack(out);
        }
    }

    fn unpack(input: &mut Reader<'_>) -> Result<Self, PackError> {
        let length = input.length()?;
        let mut items = Vec::with_capacity(length);
        for _ in 0..length {
            items.push(T::unpack(input)?);
        }
        Ok(items)
    }
}

impl<A: Pack, B: Pack> Pack for (A, B) {
    fn pack(&self, out: &mut Vec<u8>) {
        self.0.pack(out);
        self.1.pack(out);
    }

    fn unpack(input: &mut Reader<'_>) -> Result<Self, PackError> {
        Ok((A::unpack(input)?, B::unpack(input)?))
    }
}

/// Packs a struct as its fields in the order given. Every field must be named: unpacking
/// builds the struct with exactly these fields, so one left out does not compile.
macro_rules! pack_struct {
    ($name:ident { $($field:ident),+ $(,)? }) => {
        impl $crate::memory::pack::Pack for $name {
            fn pack(&self, out: &mut Vec<u8>) {
                $($crate::memory::pack::Pack::pack(&self.$field, out);)+
            }

            fn unpack(input: &mut $crate::memory::pack::Reader<'_>) -> Result<Self, $crate::memory::pack::PackError> {
                Ok($name { $($field: $crate::memory::pack::Pack::unpack(input)?),+ })
            }
        }
    };
}
pub(crate) use pack_struct;

/// Packs identifiers as their text.
macro_rules! pack_identifiers {
    ($($name:ident),+) => {
        $(impl Pack for $name {
            fn pack(&self, out: &mut Vec<u8>) {
                put_text(out, &self.0);
            }

            fn unpack(input: &mut Reader<'_>) -> Result<Self, PackError> {
                input.text().map($name::from)
            }
        })+
    };
}

pack_identifiers!(Sku, OrderId, CustomerId, PaymentId, RefundId, ReservationId, ReturnId, ShipmentId);

/// Packs a fieldless enum as one byte per variant, numbered in the order given.
macro_rules! pack_unit_enum {
    ($name:ident { $($variant:ident),+ }) => {
        impl Pack for $name {
            fn pack(&self, out: &mut Vec<u8>) {
                let variants = [$($name::$variant),+];
                match variants.iter().position(|v| v == self) {
                    Some(tag) => out.push(tag as u8),
                    None => unreachable!("every variant is listed"),
                }
            }

            fn unpack(input: &mut Reader<'_>) -> Result<Self, PackError> {
                let variants = [$($name::$variant),+];
                let tag = input.byte()?;
                variants.get(usize::from(tag)).copied().ok_or(PackError::Tag(stringify!($name), tag))
            }
        }
    };
}

pack_unit_enum!(Party { Buyer, Shop });
pack_unit_enum!(Condition { Resellable, Damaged });

impl Pack for DiscountSource {
    fn pack(&self, out: &mut Vec<u8>) {
        let (tag, text) = match self {
            DiscountSource::Promotion(text) => (0, text),
            DiscountSource::Coupon(text) => (1, text),
        };
        out.push(tag);
        put_text(out, text);
    }

    fn unpack(input: &mut Reader<'_>) -> Result<Self, PackError> {
        match input.byte()? {
            0 => String::unpack(input).map(DiscountSource::Promotion),
            1 => String::unpack(input).map(DiscountSource::Coupon),
            tag => Err(PackError::Tag("discount source", tag)),
        }
    }
}

impl Pack for RefundTarget {
    fn pack(&self, out: &mut Vec<u8>) {
        match self {
            RefundTarget::Line(sku) => {
                out.push(0);
                sku.pack(out);
            }
            RefundTarget::Shipping => out.push(1),
        }
    }

    fn unpack(input: &mut Reader<'_>) -> Result<Self, PackError> {
        match input.byte()? {
            0 => Sku::unpack(input).map(RefundTarget::Line),
            1 => Ok(RefundTarget::Shipping),
            tag => Err(PackError::Tag("refund target", tag)),
        }
    }
}

impl Pack for Closure {
    fn pack(&self, out: &mut Vec<u8>) {
        match self {
            Closure::Cancelled { by, reason, at } => {
                out.push(0);
                by.pack(out);
                reason.pack(out);
                at.pack(out);
            }
            Closure::Expired { at } => {
                out.push(1);
                at.pack(out);
            }
        }
    }

    fn unpack(input: &mut Reader<'_>) -> Result<Self, PackError> {
        match input.byte()? {
            0 => Ok(Closure::Cancelled {
                by: Pack::unpack(input)?,
                reason: Pack::unpack(input)?,
                at: Pack::unpack(input)?,
            }),
            1 => Ok(Closure::Expired { at: Pack::unpack(input)? }),
            tag => Err(PackError::Tag("closure", tag)),
        }
    }
}

pack_struct!(Line { sku, quantity });
pack_struct!(Discount { source, amount });
pack_struct!(CostedLine { sku, quantity, cost });
pack_struct!(InspectedLine { sku, quantity, condition, cost });
pack_struct!(RefundShare { target, amount });
pack_struct!(OrderLine {
    sku,
    quantity,
    unit_price,
    discounts,
    net_amount,
    shipped,
    shipped_cost,
    return_requested,
    returned,
    returned_cost,
    refunded
});
pack_struct!(Payment { id, amount, paid_at });
pack_struct!(Shipment { id, carrier, tracking_number, lines, shipped_at, delivered_at });
pack_struct!(Return { id, lines, reason, requested_at, received_at, inspected });
pack_struct!(Refund { id, amount, return_id, allocation, refunded_at });
// The stream version first: an order frozen with changes appended is rewritten from it
// (`state::append_change`), so that reading the version needs no decoding.
pack_struct!(Order {
    stream_version,
    id,
    customer_id,
    region,
    placed_at,
    payment_due_by,
    reservation_id,
    lines,
    shipping_fee,
    shipping_refunded,
    total,
    payment,
    refunded,
    shipments,
    returns,
    refunds,
    closure
});

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use super::*;
    use crate::rehearsal::sim::{self, DayConfig};

    /// Packs `value`, checks the bytes are `expected` where given, and that they unpack
    /// to an equal value and, amounts aside, an identical one (same `Debug`).
    fn check<T: Pack + PartialEq + Debug>(value: T, expected: Option<&[u8]>) {
        let bytes = pack(&value, &mut Vec::new());
        if let Some(expected) = expected {
            assert_eq!(&bytes[..], expected, "{value:?}");
        }
        let back: T = unpack(&bytes).unwrap_or_else(|e| panic!("{value:?} does not unpack: {e}"));
        assert_eq!(back, value);
        assert_eq!(format!("{back:?}"), format!("{value:?}"), "unpacked as it was, to the scale");
        // Every proper prefix fails, and so does one byte more.
        for end in 0..bytes.len() {
            assert!(unpack::<T>(&bytes[..end]).is_err(), "{value:?} from {end} of {} bytes", bytes.len());
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(unpack::<T>(&longer), Err(PackError::Trailing(1)));
    }

    #[test]
    fn integers_are_varints() {
        check(0u64, Some(&[0]));
        check(127u64, Some(&[127]));
        check(128u64, Some(&[0x80, 1]));
        check(300u64, Some(&[0xac, 2]));
        check(u64::MAX, Some(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1]));
        check(true, Some(&[1]));
        check(Timestamp(1_700_000_000_000), None);
        // Past 64 bits, and longer than ten groups.
        assert_eq!(unpack::<u64>(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2]), Err(PackError::Varint));
        assert_eq!(unpack::<u64>(&[0x80; 11]), Err(PackError::Varint));
        assert_eq!(unpack::<bool>(&[2]), Err(PackError::Tag("bool", 2)));
    }

    #[test]
    fn amounts_keep_their_scale_and_sign() {
        check(Decimal::new(12_345, 2), Some(&[2, 0xb9, 0x60, 0]));
        check(Decimal::ZERO, Some(&[0, 0, 0]));
        check(Decimal::new(0, 2), Some(&[2, 0, 0]));
        let mut negative_zero = Decimal::new(0, 2);
        negative_zero.set_sign_negative(true);
        assert!(negative_zero.is_sign_negative());
        check(negative_zero, Some(&[0x82, 0, 0]));
        check(Decimal::new(-5, 1), Some(&[0x81, 5, 0]));
        check(Decimal::MAX, None);
        check(Decimal::MIN, None);
        check(Decimal::from_parts(1, 0, 0, false, 28), None);
        check(crate::domain::money::PAYMENT_AMOUNT_MAX, None);
        assert_eq!(unpack::<Decimal>(&[29, 1, 0]), Err(PackError::Decimal), "scale past 28");
        assert_eq!(unpack::<Decimal>(&[0, 1, 0x80, 0x80, 0x80, 0x80, 0x10]), Err(PackError::Decimal), "past 96 bits");
    }

    #[test]
    fn text_and_collections() {
        check(String::new(), Some(&[0]));
        check("双十一".to_owned(), None);
        check(Sku::from("SKU-1"), Some(&[5, b'S', b'K', b'U', b'-', b'1']));
        check(Some(OrderId::from("O-1")), None);
        check(None::<OrderId>, Some(&[0]));
        check(vec![1u64, 2, 300], Some(&[3, 1, 2, 0xac, 2]));
        check((Sku::from("A"), 7u64), None);
        check(Party::Shop, Some(&[1]));
        check(Condition::Damaged, Some(&[1]));
        check(RefundTarget::Shipping, Some(&[1]));
        check(RefundTarget::Line(Sku::from("A")), Some(&[0, 1, b'A']));
        check(DiscountSource::Promotion("P".to_owned()), Some(&[0, 1, b'P']));
        check(DiscountSource::Coupon("C".to_owned()), Some(&[1, 1, b'C']));
        check(Closure::Cancelled { by: None, reason: "r".to_owned(), at: Timestamp(5) }, Some(&[0, 0, 1, b'r', 5]));
        check(Closure::Expired { at: Timestamp(5) }, Some(&[1, 5]));
        assert_eq!(unpack::<String>(&[2, 0xff, 0xfe]), Err(PackError::Utf8));
        assert_eq!(
            unpack::<Vec<u64>>(&[0xff, 0xff, 0xff, 0xff, 0x0f, 1]),
            Err(PackError::Length),
            "no huge allocation"
        );
        assert_eq!(unpack::<Party>(&[2]), Err(PackError::Tag("Party", 2)));
        assert_eq!(unpack::<Closure>(&[7]), Err(PackError::Tag("closure", 7)));
        assert_eq!(unpack::<Option<u64>>(&[3]), Err(PackError::Tag("option", 3)));
    }

    /// Every order of a generated day of 3,000: paid, shipped, delivered, returned,
    /// refunded, cancelled and expired ones.
    fn day_orders() -> Vec<Order> {
        let mut state = crate::memory::State::new();
        for envelope in sim::day_envelopes(&DayConfig::new(3_000, 7, crate::rehearsal::demo::DAY_START), "test") {
            state.apply(&envelope.event);
        }
        let orders: Vec<Order> = state.orders().map(|order| order.expect("in memory").into_owned()).collect();
        assert!(orders.len() > 2_500, "{} orders", orders.len());
        orders
    }

    #[test]
    fn every_order_of_a_day_round_trips() {
        let orders = day_orders();
        let with = |f: fn(&Order) -> bool| orders.iter().filter(|o| f(o)).count();
        assert!(with(|o| !o.refunds.is_empty()) > 0 && with(|o| !o.returns.is_empty()) > 0);
        assert!(with(|o| o.closure.is_some()) > 0 && with(|o| o.shipments.len() > 1) > 0);
        let mut scratch = Vec::new();
        for order in orders {
            let bytes = pack(&order, &mut scratch);
            assert_eq!(unpack::<Order>(&bytes).as_ref(), Ok(&order));
        }
    }

    /// No byte string unpacks with a panic: every byte of a packed order (one returned,
    /// inspected and refunded), changed to every value, gives an order or an error.
    #[test]
    fn corrupt_bytes_are_errors() {
        let Some(order) = day_orders()
            .into_iter()
            .find(|o| o.returns.iter().any(|r| !r.inspected.is_empty()) && !o.refunds.is_empty())
        else {
            panic!("the day has a returned and refunded order");
        };
        check(order.clone(), None);
        let bytes = pack(&order, &mut Vec::new());
        let mut errors = 0;
        for at in 0..bytes.len() {
            for value in 0..=u8::MAX {
                let mut changed = bytes.to_vec();
                changed[at] = value;
                errors += usize::from(unpack::<Order>(&changed).is_err());
            }
        }
        assert!(errors > 0);
    }
}
