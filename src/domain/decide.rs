//! The rules: `decide(&State, now, &Command) -> Result<Vec<Event>, Rejection>`.
//!
//! Each command is first validated on its own (syntax, bounds, money scale), then
//! checked against the state. Either every check passes and the command becomes events,
//! or the first failing check becomes a typed [`Rejection`] and nothing is produced.
//! `decide` is pure: it reads the state and the time it is given, nothing else.
//!
//! The rules live with the area of the shop they govern, each area's module opening with
//! an overview of them: [`catalog`] (listing, price changes, delisting, relisting),
//! [`stock`] (receipts, stocktakes), [`holds`] (checkout holds), [`sales`] (placing,
//! paying, cancelling orders), [`fulfilment`] (shipping, delivery), [`after_sales`] (returns,
//! refunds) and [`time`] (expiring holds and unpaid orders). [`decide`] checks what is common
//! to the areas and hands each command to its area. This module keeps what several areas
//! share: field checks, merging lines, availability, reading products, holds and orders
//! (every read of an order by id goes through one function, `known_order`), and spreading
//! a refund.

use std::borrow::Cow;
use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::domain::after_sales;
use crate::domain::catalog;
use crate::domain::command::{Command, Line};
use crate::domain::event::{Event, RefundShare, RefundTarget};
use crate::domain::fulfilment;
use crate::domain::holds;
use crate::domain::ids::{OrderId, ReservationId, ReturnId, Sku, Timestamp};
use crate::domain::limits::*;
use crate::domain::money;
use crate::domain::orders::Orders;
use crate::domain::rejection::{Field, Rejection, Shortage};
use crate::domain::sales;
use crate::domain::state::{Order, OrderLine, Product, Reservation, ReservationStatus, Return, State};
use crate::domain::stock;
use crate::domain::time;

pub use crate::domain::sales::CANCELLATION_REFUND_ID;

/// Decides `command` at time `now` against `state`.
///
/// The order id a command names is checked here, first, for every area; the rest of the
/// command is decided by the rules of its area.
pub fn decide<O: Orders>(state: &State<O>, now: Timestamp, command: &Command) -> Result<Vec<Event>, Rejection> {
    if let Some(order_id) = command.order_id() {
        order_id.check()?;
    }
    match command {
        Command::ListProduct { sku, title, category, price, weight_g, low_stock_threshold } => {
            catalog::decide_list(state, sku, title, category, *price, *weight_g, *low_stock_threshold)
        }
        Command::ChangePrice { sku, price } => catalog::decide_change_price(state, sku, *price),
        Command::DelistProduct { sku } => catalog::decide_delist(state, sku),
        Command::RelistProduct { sku } => catalog::decide_relist(state, sku),
        Command::ReceiveStock { sku, quantity, unit_cost, supplier_ref } => {
            stock::decide_receive(state, sku, *quantity, *unit_cost, supplier_ref)
        }
        Command::Stocktake { sku, counted, reason } => stock::decide_stocktake(state, sku, *counted, *reason),
        Command::ReserveStock { reservation_id, lines, ttl_ms } => {
            holds::decide_reserve(state, now, reservation_id, lines, *ttl_ms)
        }
        Command::ReleaseReservation { reservation_id } => holds::decide_release(state, reservation_id),
        Command::PlaceOrder { order_id, customer_id, lines, region, reservation_id } => {
            sales::decide_place(state, now, order_id, customer_id, lines, region, reservation_id.as_ref())
        }
        Command::Pay { order_id, payment_id, amount } => sales::decide_pay(state, now, order_id, payment_id, *amount),
        Command::Cancel { order_id, by, reason } => sales::decide_cancel(state, now, order_id, *by, reason),
        Command::Ship { order_id, shipment_id, carrier, tracking_number, lines } => {
            fulfilment::decide_ship(state, now, order_id, shipment_id, carrier, tracking_number, lines)
        }
        Command::ConfirmDelivery { order_id, shipment_id } => {
            fulfilment::decide_confirm_delivery(state, now, order_id, shipment_id)
        }
        Command::RequestReturn { order_id, return_id, lines, reason } => {
            after_sales::decide_request_return(state, now, order_id, return_id, lines, reason)
        }
        Command::ReceiveReturn { order_id, return_id, inspections } => {
            after_sales::decide_receive_return(state, now, order_id, return_id, inspections)
        }
        Command::Refund { order_id, refund_id, amount, return_id } => {
            after_sales::decide_refund(state, now, order_id, refund_id, *amount, return_id.as_ref())
        }
        Command::ExpireDue => time::decide_expire_due(state, now),
    }
}

/// Spreads a refund by largest remainder over what it pays back: the returned units of
/// `return_id`'s lines when given, otherwise everything still refundable, lines and
/// shipping fee alike. Precondition: `amount` is at most the targets' total.
pub(crate) fn allocate_refund(order: &Order, amount: Decimal, return_id: Option<&ReturnId>) -> Vec<RefundShare> {
    let request = return_id.and_then(|id| order.returns.iter().find(|r| &r.id == id));
    let targets = refund_targets(order, request);
    let weights: Vec<Decimal> = targets.iter().map(|(_, w)| *w).collect();
    let parts = money::allocate(amount, &weights);
    targets
        .into_iter()
        .zip(parts)
        .filter(|(_, part)| !part.is_zero())
        .map(|((target, _), amount)| RefundShare { target, amount })
        .collect()
}

/// What a refund may pay back, and how much of each. For a return: each returned line's
/// price of the returned units less what earlier refunds for the same return paid on it,
/// and at most what that line has left unrefunded.
pub(crate) fn refund_targets(order: &Order, request: Option<&Return>) -> Vec<(RefundTarget, Decimal)> {
    let remaining = |line: &OrderLine| line.net_amount - line.refunded;
    match request {
        Some(request) => request
            .lines
            .iter()
            .filter_map(|returned| {
                let line = order.line(&returned.sku)?;
                let value = money::share(line.net_amount, returned.quantity, line.quantity);
                let open = (value - order.refunded_for_return(&request.id, &line.sku)).max(Decimal::ZERO);
                Some((RefundTarget::Line(line.sku.clone()), money::normalize(open.min(remaining(line)))))
            })
            .collect(),
        None => {
            let mut targets: Vec<_> =
                order.lines.iter().map(|l| (RefundTarget::Line(l.sku.clone()), remaining(l))).collect();
            targets.push((RefundTarget::Shipping, order.shipping_fee - order.shipping_refunded));
            targets
        }
    }
}

/// Checks that `value` is at most `max`.
pub(crate) fn check_at_most(field: Field, value: u64, max: u64) -> Result<(), Rejection> {
    if value > max {
        return Err(Rejection::invalid(field, format!("must be at most {max}")));
    }
    Ok(())
}

/// Checks that `value` is 1 to `max`.
pub(crate) fn check_quantity(field: Field, value: u64, max: u64) -> Result<(), Rejection> {
    if value == 0 || value > max {
        return Err(Rejection::invalid(field, format!("must be 1 to {max}")));
    }
    Ok(())
}

/// `duration_ms` after `now`, refused as an invalid `field` past the end of time.
pub(crate) fn later(now: Timestamp, duration_ms: u64, field: Field) -> Result<Timestamp, Rejection> {
    now.checked_add_ms(duration_ms).ok_or_else(|| Rejection::invalid(field, "deadline is past the end of time"))
}

/// Checks 1 to [`LINES_MAX`] lines of 1 to [`LINE_QUANTITY_MAX`] units each and sums
/// the lines of each SKU into one, in the order SKUs first appear.
pub(crate) fn merge_lines(lines: &[Line]) -> Result<Vec<Line>, Rejection> {
    if lines.is_empty() || lines.len() > LINES_MAX {
        return Err(Rejection::invalid(Field::Lines, format!("must be 1 to {LINES_MAX} lines")));
    }
    let mut merged: Vec<Line> = Vec::with_capacity(lines.len());
    for line in lines {
        line.sku.check()?;
        check_quantity(Field::Quantity, line.quantity, LINE_QUANTITY_MAX)?;
        match merged.iter_mut().find(|m| m.sku == line.sku) {
            // At most LINES_MAX * LINE_QUANTITY_MAX units: cannot overflow.
            Some(m) => m.quantity += line.quantity,
            None => merged.push(line.clone()),
        }
    }
    Ok(merged)
}

/// Every line's SKU is listed, not short, and has enough available, counting `held`
/// units that a consumed reservation gives back. Reports every short SKU at once.
pub(crate) fn check_availability<O: Orders>(
    state: &State<O>,
    lines: &[Line],
    held: &BTreeMap<&Sku, u64>,
) -> Result<(), Rejection> {
    let mut shortages = Vec::new();
    for line in lines {
        let stock = &listed_product(state, &line.sku)?.stock;
        let held = held.get(&line.sku).copied().unwrap_or(0);
        if stock.shortfall_recorded && line.quantity > held {
            return Err(Rejection::StockShortfall { sku: line.sku.clone(), shortfall: stock.shortfall() });
        }
        let available = stock.available() + held;
        if line.quantity > available {
            shortages.push(Shortage { sku: line.sku.clone(), requested: line.quantity, available });
        }
    }
    if shortages.is_empty() { Ok(()) } else { Err(Rejection::InsufficientStock { shortages }) }
}

/// The product of `sku`, listed or not.
pub(crate) fn known_product<'s, O: Orders>(state: &'s State<O>, sku: &Sku) -> Result<&'s Product, Rejection> {
    state.product(sku).ok_or_else(|| Rejection::UnknownSku { sku: sku.clone() })
}

/// The product of `sku`, if it is listed.
pub(crate) fn listed_product<'s, O: Orders>(state: &'s State<O>, sku: &Sku) -> Result<&'s Product, Rejection> {
    let product = known_product(state, sku)?;
    if !product.listed {
        return Err(Rejection::ProductDelisted { sku: sku.clone() });
    }
    Ok(product)
}

/// The hold `reservation_id`, if it is active.
pub(crate) fn active_reservation<'s, O: Orders>(
    state: &'s State<O>,
    reservation_id: &ReservationId,
) -> Result<&'s Reservation, Rejection> {
    let Some(reservation) = state.reservation(reservation_id) else {
        return Err(Rejection::UnknownReservation { reservation_id: reservation_id.clone() });
    };
    if reservation.status != ReservationStatus::Active {
        return Err(Rejection::ReservationNotActive {
            reservation_id: reservation_id.clone(),
            status: reservation.status,
        });
    }
    Ok(reservation)
}

/// The order `order_id`, the one way the rules read an order. The shell brings back every
/// order a command may touch before deciding it ([`State::orders_touched_by`]), so the store
/// reads it from memory and cannot fail: a failure is a broken precondition.
pub(crate) fn known_order<'s, O: Orders>(state: &'s State<O>, order_id: &OrderId) -> Result<Cow<'s, Order>, Rejection> {
    match state.order(order_id) {
        Ok(Some(order)) => Ok(order),
        Ok(None) => Err(Rejection::UnknownOrder { order_id: order_id.clone() }),
        Err(error) => panic!("an order a command touches is brought back before deciding: {error}"),
    }
}

/// The order `order_id`, if it is neither cancelled nor expired.
pub(crate) fn open_order<'s, O: Orders>(state: &'s State<O>, order_id: &OrderId) -> Result<Cow<'s, Order>, Rejection> {
    let order = known_order(state, order_id)?;
    if order.closure.is_some() {
        return Err(Rejection::OrderClosed { order_id: order_id.clone(), status: order.status() });
    }
    Ok(order)
}

/// The line of `sku` in `order`.
pub(crate) fn order_line_of<'o>(order: &'o Order, sku: &Sku) -> Result<&'o OrderLine, Rejection> {
    order.line(sku).ok_or_else(|| Rejection::SkuNotInOrder { order_id: order.id.clone(), sku: sku.clone() })
}

impl<O: Orders> State<O> {
    /// Decides `command` and applies its events: what an engine does with each command.
    /// On rejection the state is untouched.
    pub fn execute(&mut self, now: Timestamp, command: &Command) -> Result<Vec<Event>, Rejection> {
        let events = decide(self, now, command)?;
        for event in &events {
            self.apply(event);
        }
        Ok(events)
    }
}
