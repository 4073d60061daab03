//! Every order's history: each event that touched it, including the checkout hold it took
//! over, with when, who and which command.

use serde::{Deserialize, Serialize};

use crate::event::{Event, Subject};
use crate::idmap::IdMap;
use crate::ids::{CommandId, OrderId, ReservationId, Timestamp};
use crate::log::Envelope;

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

/// The timelines projection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timelines {
    #[serde(serialize_with = "crate::idmap::sorted_map")]
    orders: IdMap<OrderId, Vec<TimelineEntry>>,
    #[serde(serialize_with = "crate::idmap::sorted_map")]
    holds: IdMap<ReservationId, Vec<TimelineEntry>>,
}

impl Timelines {
    /// No history yet.
    pub fn new() -> Timelines {
        Timelines::default()
    }

    /// The history of an order, oldest first.
    pub fn order(&self, order_id: &OrderId) -> Option<&[TimelineEntry]> {
        self.orders.get(order_id).map(Vec::as_slice)
    }
}

impl emporium_projections::Projection for Timelines {
    type Fact = Envelope;

    fn name(&self) -> &'static str {
        "timelines"
    }

    fn apply(&mut self, envelope: &Envelope) {
        // Built only for the events a timeline keeps: stock events are none of them.
        let entry = || TimelineEntry {
            position: envelope.position,
            recorded_at: envelope.recorded_at,
            kind: envelope.event.kind().to_owned(),
            actor: envelope.actor.clone(),
            command_id: envelope.command_id.clone(),
            summary: super::describe(&envelope.event),
        };
        match envelope.event.subject() {
            Subject::Sku(_) => {}
            Subject::Reservation(reservation_id) => {
                self.holds.entry(reservation_id.clone()).or_default().push(entry());
            }
            Subject::Order(order_id) => {
                let timeline = self.orders.entry(order_id.clone()).or_default();
                if let Event::OrderPlaced { reservation_id: Some(reservation_id), .. } = &envelope.event {
                    // The hold's history becomes the start of the order's; the hold is done.
                    timeline.extend(self.holds.remove(reservation_id).unwrap_or_default());
                }
                timeline.push(entry());
            }
        }
    }

    fn encode(&self) -> Vec<u8> {
        super::encode(self)
    }
}
