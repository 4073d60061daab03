//! Checkout holds (锁库存): reserving stock for a checkout and releasing it.
//!
//! A hold reserves 1 to [`LINES_MAX`](crate::domain::limits::LINES_MAX) lines, the lines of
//! one SKU summed into one, for a time to live of 1 ms to [`RESERVATION_TTL_MS_MAX`]: the
//! policy's default when the caller names none. Its id is chosen by the caller and used
//! once: a hold that ended still owns it. It holds all its lines or none: every SKU must be
//! listed, carry no unresolved stocktake shortfall, and have the units available (on hand
//! less reserved); a refusal names every SKU that is short at once.
//!
//! An active hold ends in one of three ways: the caller releases it, an order placed with it
//! takes its units over, or its time runs out. Only an active hold can be released.

use std::collections::BTreeMap;

use crate::domain::command::Line;
use crate::domain::decide::{active_reservation, check_availability, check_quantity, later, merge_lines};
use crate::domain::event::Event;
use crate::domain::ids::{ReservationId, Timestamp};
use crate::domain::limits::RESERVATION_TTL_MS_MAX;
use crate::domain::orders::Orders;
use crate::domain::rejection::{Field, Rejection};
use crate::domain::state::{Deadline, Reservation, ReservationStatus, State, add, resolve_shortfall};

/// Decides `Command::ReserveStock`.
pub(crate) fn decide_reserve<O: Orders>(
    state: &State<O>,
    now: Timestamp,
    reservation_id: &ReservationId,
    lines: &[Line],
    ttl_ms: Option<u64>,
) -> Result<Vec<Event>, Rejection> {
    reservation_id.check()?;
    let lines = merge_lines(lines)?;
    let ttl_ms = ttl_ms.unwrap_or(state.policy().reservation_ttl_ms_default);
    check_quantity(Field::TtlMs, ttl_ms, RESERVATION_TTL_MS_MAX)?;
    let expires_at = later(now, ttl_ms, Field::TtlMs)?;
    if state.reservation(reservation_id).is_some() {
        return Err(Rejection::ReservationExists { reservation_id: reservation_id.clone() });
    }
    check_availability(state, &lines, &BTreeMap::new())?;
    Ok(vec![Event::StockReserved { reservation_id: reservation_id.clone(), lines, expires_at }])
}

/// Decides `Command::ReleaseReservation`.
pub(crate) fn decide_release<O: Orders>(
    state: &State<O>,
    reservation_id: &ReservationId,
) -> Result<Vec<Event>, Rejection> {
    reservation_id.check()?;
    active_reservation(state, reservation_id)?;
    Ok(vec![Event::ReservationReleased { reservation_id: reservation_id.clone() }])
}

// Applying the holds' events (`StockReserved`, `ReservationReleased`) belongs below, next to
// the rules that decide them.

// What the area's events do to the state: `apply`, beside the rules that decide them.

/// Applies a checkout hold's event: taken, released, or expired (which time decides,
/// [`crate::domain::time`]).
pub(crate) fn apply<O: Orders>(state: &mut State<O>, event: &Event) {
    match event {
        Event::StockReserved { reservation_id, lines, expires_at } => {
            for line in lines {
                let stock = &mut state.product_mut(&line.sku).stock;
                stock.reserved = add(stock.reserved, line.quantity);
            }
            let reservation = Reservation {
                id: reservation_id.clone(),
                lines: lines.clone(),
                expires_at: *expires_at,
                status: ReservationStatus::Active,
            };
            assert!(state.reservations.insert(reservation_id.clone(), reservation).is_none());
            state.deadlines.insert((*expires_at, Deadline::Reservation(reservation_id.clone())));
        }
        Event::ReservationReleased { reservation_id } => {
            for sku in state.end_reservation(reservation_id, ReservationStatus::Released) {
                resolve_shortfall(&mut state.product_mut(&sku).stock);
            }
        }
        Event::ReservationExpired { reservation_id, .. } => {
            for sku in state.end_reservation(reservation_id, ReservationStatus::Expired) {
                resolve_shortfall(&mut state.product_mut(&sku).stock);
            }
        }
        other => unreachable!("{} is not a checkout hold's event", other.kind()),
    }
}
