//! Order histories: where in the log each order's events are, and one entry of a history
//! rendered for people (when, who, which command and what happened).
//!
//! The view keeps positions only, a few integers per order; the events themselves are read
//! back from the log when a history is asked for, a page at a time ([`Histories::page`]). The store's stream index holds the same
//! facts, but sled builds it lazily, so the first read after a busy day would wait for
//! hundreds of thousands of events to be indexed; these positions are at hand at once.
//!
//! An order placed from a checkout hold begins its history with the hold's events, exactly
//! as [`crate::log::store::order_history`] reads them from the stream index. A hold's positions
//! are kept only while the hold is active: an order can take over no other.
//!
//! An order's positions are kept as varints of the gaps between them (a [`Trail`]): a
//! busy day's history is a handful of positions a few thousand apart, about 15 bytes in
//! all, where a vector of `u64` took 72 with its heap block. They serialize as the
//! vector did, so view snapshots and hashes are unchanged.

use std::fmt;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain::event::{Event, Subject};
use crate::domain::idmap::IdMap;
use crate::domain::ids::{CommandId, OrderId, ReservationId, Timestamp};
use crate::log::record::Envelope;
use crate::memory::packed::PackedMap;

/// The positions of every order's events, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histories {
    /// Packed: a position trail for every order ever placed.
    orders: PackedMap<OrderId, Trail>,
    /// Active holds' positions, until an order takes them over or they end.
    #[serde(serialize_with = "crate::domain::idmap::sorted_map")]
    holds: IdMap<ReservationId, Vec<u64>>,
}

impl Histories {
    /// No histories yet.
    pub fn new() -> Histories {
        Histories::default()
    }

    /// The positions of an order's history, oldest first: the hold it took over, then its
    /// own events. `None` for an order not placed.
    pub fn positions(&self, order_id: &OrderId) -> Option<Vec<u64>> {
        self.orders.get(order_id).map(Trail::positions)
    }

    /// A page of an order's history: the first `limit` positions after position `after`,
    /// oldest first, and whether more follow. `None` for an order not placed. The work is
    /// one pass over the order's trail (a few bytes a position) and `limit` positions kept.
    pub fn page(&self, order_id: &OrderId, after: u64, limit: usize) -> Option<HistoryPage> {
        let trail = self.orders.get(order_id)?;
        let mut later = trail.iter().skip_while(|position| *position <= after);
        let positions: Vec<u64> = later.by_ref().take(limit).collect();
        let more = later.next().is_some();
        Some(HistoryPage { positions, more })
    }
}

/// A page of an order's history ([`Histories::page`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPage {
    /// The page's positions, oldest first.
    pub positions: Vec<u64>,
    /// Whether later positions follow the page's last.
    pub more: bool,
}

impl emporium_projections::Projection for Histories {
    type Fact = Envelope;

    fn name(&self) -> &'static str {
        "histories"
    }

    fn apply(&mut self, envelope: &Envelope) {
        let position = envelope.position;
        match (&envelope.event, envelope.event.subject()) {
            (Event::OrderPlaced { order_id, reservation_id, .. }, _) => {
                let mut positions =
                    reservation_id.as_ref().and_then(|hold| self.holds.remove(hold)).unwrap_or_default();
                crate::domain::idmap::shrink_if_sparse(&mut self.holds);
                positions.push(position);
                let earlier = self.orders.insert(order_id.clone(), Trail::of(&positions));
                assert!(earlier.is_none(), "order {order_id} placed twice");
            }
            (Event::StockReserved { reservation_id, .. }, _) => {
                self.holds.insert(reservation_id.clone(), vec![position]);
            }
            (Event::ReservationReleased { reservation_id } | Event::ReservationExpired { reservation_id, .. }, _) => {
                self.holds.remove(reservation_id);
                crate::domain::idmap::shrink_if_sparse(&mut self.holds);
            }
            (_, Subject::Order(order_id)) => {
                let Some(positions) = self.orders.get_mut(order_id) else {
                    panic!("order {order_id} has events but was never placed");
                };
                positions.push(position);
            }
            (_, Subject::Reservation(_) | Subject::Sku(_)) => {}
        }
    }

    fn encode(&self) -> Result<Vec<u8>, emporium_projections::EncodeError> {
        super::encode(self)
    }
}

/// One event in an order's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// The event's position in the shop log.
    pub position: u64,
    /// When it was recorded.
    pub recorded_at: Timestamp,
    /// The event's type name.
    pub kind: String,
    /// Who sent the command.
    pub actor: String,
    /// The command.
    pub command_id: CommandId,
    /// What happened, for people.
    pub summary: String,
}

impl TimelineEntry {
    /// The entry of one event.
    pub fn of(envelope: &Envelope) -> TimelineEntry {
        TimelineEntry {
            position: envelope.position,
            recorded_at: envelope.recorded_at,
            kind: envelope.event.kind().to_owned(),
            actor: envelope.actor.as_str().to_owned(),
            command_id: envelope.command_id.clone(),
            summary: super::describe(&envelope.event),
        }
    }
}

/// Increasing positions, each kept as a LEB128 varint of its gap from the one before (the
/// first from zero). Pure and bounded: a position takes at most ten bytes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Trail(Box<[u8]>);

/// Most bytes of one varint-encoded `u64`.
const VARINT_BYTES_MAX: usize = 10;

impl Trail {
    /// The trail of `positions`, which must increase strictly.
    pub fn of(positions: &[u64]) -> Trail {
        let mut trail = Trail::default();
        for &position in positions {
            trail.push(position);
        }
        trail
    }

    /// Every position, oldest first.
    pub fn positions(&self) -> Vec<u64> {
        self.iter().collect()
    }

    /// The last position.
    pub fn last(&self) -> Option<u64> {
        self.iter().last()
    }

    /// Every position, oldest first, decoded as it is reached: no allocation.
    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let (mut bytes, mut last) = (self.0.iter(), 0u64);
        std::iter::from_fn(move || {
            let (mut gap, mut shift) = (0u64, 0u32);
            for byte in bytes.by_ref() {
                gap |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    last += gap;
                    return Some(last);
                }
                shift += 7;
            }
            assert_eq!(shift, 0, "a trail ends at the end of a varint");
            None
        })
    }

    /// Appends `position`, which must be above the last one.
    pub fn push(&mut self, position: u64) {
        let last = self.last().unwrap_or(0);
        assert!(position > last || (self.0.is_empty() && position == 0), "a history runs in log order");
        let (mut gap, mut varint, mut varint_len) = (position - last, [0u8; VARINT_BYTES_MAX], 0);
        loop {
            let low = (gap & 0x7f) as u8;
            gap >>= 7;
            varint[varint_len] = if gap == 0 { low } else { low | 0x80 };
            varint_len += 1;
            if gap == 0 {
                break;
            }
        }
        // Exactly the room needed, so the boxed slice takes the vector's block as it is.
        let mut bytes = Vec::with_capacity(self.0.len() + varint_len);
        bytes.extend_from_slice(&self.0);
        bytes.extend_from_slice(&varint[..varint_len]);
        self.0 = bytes.into_boxed_slice();
    }
}

impl fmt::Debug for Trail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Trail {
    /// As the vector of positions it holds.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.positions().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Trail {
    /// From a vector of strictly increasing positions; refuses any other.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Positions;

        impl<'de> Visitor<'de> for Positions {
            type Value = Trail;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("increasing positions")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Trail, A::Error> {
                let mut positions: Vec<u64> = Vec::new();
                while let Some(position) = access.next_element::<u64>()? {
                    if positions.last().is_some_and(|last| *last >= position) {
                        return Err(serde::de::Error::custom("positions out of order"));
                    }
                    positions.push(position);
                }
                Ok(Trail::of(&positions))
            }
        }

        deserializer.deserialize_seq(Positions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trail of `positions` gives them back, and serializes exactly as their vector.
    fn check(positions: &[u64]) {
        let trail = Trail::of(positions);
        assert_eq!(trail.positions(), positions);
        assert_eq!(trail.last(), positions.last().copied());
        let bytes = postcard::to_allocvec(&trail).expect("encodes");
        assert_eq!(bytes, postcard::to_allocvec(&positions.to_vec()).expect("encodes"), "as a vector");
        let back: Trail = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(back, trail);
    }

    #[test]
    fn a_trail_is_its_positions() {
        check(&[]);
        check(&[1]);
        check(&[0, 1]);
        check(&[5, 127, 128, 16_383, 16_384, 1 << 40, u64::MAX - 1, u64::MAX]);
        check(&[3_000_001, 3_000_950, 7_500_000, 7_500_001]);
    }

    #[test]
    fn a_history_reads_page_by_page() {
        let mut histories = Histories::new();
        let order: OrderId = "O-1".into();
        histories.orders.insert(order.clone(), Trail::of(&[3, 7, 9, 200, 201]));
        let page = |after, limit| histories.page(&order, after, limit).expect("placed");
        assert_eq!(page(0, 2), HistoryPage { positions: vec![3, 7], more: true });
        assert_eq!(page(7, 2), HistoryPage { positions: vec![9, 200], more: true });
        assert_eq!(page(200, 2), HistoryPage { positions: vec![201], more: false });
        assert_eq!(page(8, 3), HistoryPage { positions: vec![9, 200, 201], more: false });
        assert_eq!(page(201, 5), HistoryPage { positions: vec![], more: false });
        assert_eq!(histories.page(&"O-2".into(), 0, 5), None);
    }

    #[test]
    fn positions_out_of_order_are_refused_when_read() {
        let bytes = postcard::to_allocvec(&vec![5u64, 5]).expect("encodes");
        assert!(postcard::from_bytes::<Trail>(&bytes).is_err());
    }

    #[test]
    #[should_panic(expected = "a history runs in log order")]
    fn a_position_not_above_the_last_is_a_broken_invariant() {
        Trail::of(&[9, 4]);
    }
}
