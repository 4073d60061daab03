//! One entry of an order's history, for people: when, who, which command and what happened.
//!
//! Histories are not a view. The log already keeps every order's events in order (its
//! stream index), so a history is read from the store when asked for
//! ([`crate::store::order_history`]) and each event rendered here; nothing is kept in memory
//! per order for it.

use serde::{Deserialize, Serialize};

use crate::ids::{CommandId, Timestamp};
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

impl TimelineEntry {
    /// The entry of one event.
    pub fn of(envelope: &Envelope) -> TimelineEntry {
        TimelineEntry {
            position: envelope.position,
            recorded_at: envelope.recorded_at,
            kind: envelope.event.kind().to_owned(),
            actor: envelope.actor.clone(),
            command_id: envelope.command_id.clone(),
            summary: super::describe(&envelope.event),
        }
    }
}
