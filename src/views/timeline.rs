//! Order histories: where in the log each order's events are, and one entry of a history
//! rendered for people (when, who, which command and what happened).
//!
//! The view keeps positions only, a few integers per order; the events themselves are read
//! back from the log when a history is asked for. The store's stream index holds the same
//! facts, but sled builds it lazily, so the first read after a busy day would wait for
//! hundreds of thousands of events to be indexed; these positions are at hand at once.
//!
//! An order placed from a checkout hold begins its history with the hold's events, exactly
//! as [`crate::store::order_history`] reads them from the stream index. A hold's positions
//! are kept only while the hold is active: an order can take over no other.

use serde::{Deserialize, Serialize};

use crate::event::{Event, Subject};
use crate::idmap::IdMap;
use crate::ids::{CommandId, OrderId, ReservationId, Timestamp};
use crate::log::Envelope;

/// The positions of every order's events, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histories {
    #[serde(serialize_with = "crate::idmap::sorted_map")]
    orders: IdMap<OrderId, Vec<u64>>,
    /// Active holds' positions, until an order takes them over or they end.
    #[serde(serialize_with = "crate::idmap::sorted_map")]
    holds: IdMap<ReservationId, Vec<u64>>,
}

impl Histories {
    /// No histories yet.
    pub fn new() -> Histories {
        Histories::default()
    }

    /// The positions of an order's history, oldest first: the hold it took over, then its
    /// own events. `None` for an order not placed.
    pub fn positions(&self, order_id: &OrderId) -> Option<&[u64]> {
        self.orders.get(order_id).map(Vec::as_slice)
    }
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
                positions.push(position);
                let earlier = self.orders.insert(order_id.clone(), positions);
                assert!(earlier.is_none(), "order {order_id} placed twice");
            }
            (Event::StockReserved { reservation_id, .. }, _) => {
                self.holds.insert(reservation_id.clone(), vec![position]);
            }
            (Event::ReservationReleased { reservation_id } | Event::ReservationExpired { reservation_id, .. }, _) => {
                self.holds.remove(reservation_id);
            }
            (_, Subject::Order(order_id)) => {
                let Some(positions) = self.orders.get_mut(order_id) else {
                    panic!("order {order_id} has events but was never placed");
                };
                assert!(positions.last().is_some_and(|last| *last < position), "a history runs in log order");
                positions.push(position);
            }
            (_, Subject::Reservation(_) | Subject::Sku(_)) => {}
        }
    }

    fn encode(&self) -> Vec<u8> {
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
