//! What passing time does: expiring checkout holds and unpaid orders.
//!
//! Time passes only when a caller says so: the engine sends `ExpireDue` on its ticks, with
//! the time of the tick. Every active hold whose time to live ends at or before that time
//! expires, and so does every unpaid, open order whose payment time limit does, earliest
//! deadline first and at most [`EXPIRIES_PER_TICK_MAX`] in one decision (a later tick
//! records the rest). An expired hold gives its units back; an expired order gives back
//! the units it reserved and is closed. `ExpireDue` is never refused: with nothing due it
//! decides no events.
//!
//! Until its expiry is recorded a hold or an order stays active for every other rule, with
//! two exceptions that read the time themselves: an order cannot be paid once its payment
//! time limit is reached, nor placed with a hold once the hold's time to live is.

use crate::domain::event::Event;
use crate::domain::ids::Timestamp;
use crate::domain::limits::EXPIRIES_PER_TICK_MAX;
use crate::domain::orders::Orders;
use crate::domain::rejection::Rejection;
use crate::domain::state::{Deadline, State};

/// Decides `Command::ExpireDue`.
pub(crate) fn decide_expire_due<O: Orders>(state: &State<O>, now: Timestamp) -> Result<Vec<Event>, Rejection> {
    Ok(state
        .due(now, EXPIRIES_PER_TICK_MAX)
        .map(|(_, deadline)| match deadline {
            Deadline::Reservation(reservation_id) => {
                Event::ReservationExpired { reservation_id: reservation_id.clone(), expired_at: now }
            }
            Deadline::Payment(order_id) => Event::OrderExpired { order_id: order_id.clone(), expired_at: now },
        })
        .collect())
}

// Applying time's events (`ReservationExpired`, `OrderExpired`) belongs below, next to the
// rule that decides them.
