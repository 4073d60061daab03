//! Whether an event fits a state: folding a log that is not known to come from `decide`.
//!
//! [`State::apply`] is total for the events [`crate::decide()`] produced against the same
//! state and asserts the rest, since there an event that does not fit is a broken invariant.
//! A log read back from disk at start-up, an export being imported or a store audited with
//! `verify --deep` may hold anything that decodes: an event about an order never placed, a
//! parcel of more units than were ordered, a receipt that overflows the shelf, a second
//! placement of one order. [`State::try_apply`] folds such a log without trusting it:
//!
//! - every amount the event records is recordable ([`Event::amount_out_of_form`]: at most two
//!   decimal places, within [`RECORDED_AMOUNT_MAX`]);
//! - reading only, it checks that the event fits: what it names exists (and what it creates
//!   does not yet), the entity is in a state the event can follow (an order paid before it
//!   ships, a hold active before it ends), the counts stay within the domain's limits (parcels,
//!   returns and refunds per order, units on hand), and no arithmetic overflows. An order the
//!   event changes is changed on a copy first, and the copy must keep every order invariant
//!   ([`crate::domain::state`]);
//! - then it applies the event, as `apply` does, and checks the stock invariants of every
//!   product the event touched.
//!
//! An event that does not fit is an [`Unfit`] naming why, and nothing panics. A state that
//! returned an `Unfit` may be left partly changed (by the last step) and is to be dropped:
//! recovery refuses the shop, import refuses the export, `verify --deep` reports it.

use std::borrow::Cow;
use std::collections::BTreeSet;

use rust_decimal::Decimal;

use crate::domain::command::{Condition, Line};
use crate::domain::event::{CostedLine, Event, InspectedLine, PricedLine, RefundTarget};
use crate::domain::ids::{OrderId, ReservationId, Sku};
use crate::domain::limits::{LINES_MAX, ON_HAND_MAX, ORDER_LINE_UNITS_MAX};
use crate::domain::money::{MONEY_SCALE, RECORDED_AMOUNT_MAX};
use crate::domain::orders::Orders;
use crate::domain::rejection::OrderPart;
use crate::domain::state::{Deadline, Order, Payment, Product, ReservationStatus, State, order_fault, stock_fault};

/// An event that does not fit the state it was applied to, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Unfit {
    /// Why, for the operator: the entity and what is wrong with the event.
    pub reason: String,
}

fn unfit(reason: impl Into<String>) -> Unfit {
    Unfit { reason: reason.into() }
}

/// Returns an [`Unfit`] from the enclosing function unless `condition` holds.
macro_rules! fits {
    ($condition:expr, $($reason:tt)+) => {
        if !$condition {
            return Err(unfit(format!($($reason)+)));
        }
    };
}

impl<O: Orders> State<O> {
    /// Applies `event` if it fits the state, as [`State::apply`] does, and returns what
    /// `apply` returns; else an [`Unfit`] naming why (see the module documentation), and
    /// the state is to be dropped.
    pub fn try_apply(&mut self, event: &Event) -> Result<Option<u64>, Unfit> {
        if let Some(amount) = event.amount_out_of_form() {
            return Err(unfit(format!(
                "{} records the amount {amount}: more than {MONEY_SCALE} decimal places or beyond {RECORDED_AMOUNT_MAX}",
                event.kind()
            )));
        }
        let touched = self.fit(event)?;
        let version = self.fold(event);
        for sku in &touched {
            if let Some(product) = self.products.get(sku) {
                stock_fault(product).map_err(unfit)?;
            }
        }
        Ok(version)
    }

    /// Whether `event` fits, reading only; the SKUs whose stock it changes.
    fn fit(&self, event: &Event) -> Result<Vec<Sku>, Unfit> {
        match event {
            Event::ProductListed { sku, price, .. } => {
                fits!(!self.products.contains_key(sku), "SKU {sku} is listed twice");
                fits!(*price > Decimal::ZERO, "SKU {sku} is listed at {price}, not above zero");
                Ok(Vec::new())
            }
            Event::PriceChanged { sku, new_price, .. } => {
                self.known(sku)?;
                fits!(*new_price > Decimal::ZERO, "SKU {sku} is repriced to {new_price}, not above zero");
                Ok(Vec::new())
            }
            Event::ProductDelisted { sku } | Event::ProductRelisted { sku } => self.known(sku).map(|_| Vec::new()),
            Event::StockReceived { .. } | Event::StockCounted { .. } => self.fit_stock(event),
            Event::StockReserved { reservation_id, lines, .. } => {
                fits!(!self.reservations.contains_key(reservation_id), "reservation {reservation_id} is taken twice");
                self.units_reserved(lines.iter().map(|line| (&line.sku, line.quantity)), None)
            }
            Event::ReservationReleased { reservation_id } | Event::ReservationExpired { reservation_id, .. } => {
                self.active_reservation(reservation_id)
            }
            Event::OrderPlaced { order_id, lines, reservation_id, .. } => {
                self.fit_placed(event, order_id, lines, reservation_id.as_ref())
            }
            Event::OrderPaid { order_id, payment_id, amount, paid_at } => {
                let mut order = self.open_order(order_id)?.into_owned();
                fits!(order.payment.is_none(), "order {order_id} is paid twice");
                self.payment_due(&order)?;
                order.payment = Some(Payment { id: payment_id.clone(), amount: *amount, paid_at: *paid_at });
                order_fault(&order).map_err(unfit)?;
                Ok(Vec::new())
            }
            Event::OrderCancelled { order_id, .. } | Event::OrderExpired { order_id, .. } => {
                let order = self.open_order(order_id)?;
                if matches!(event, Event::OrderExpired { .. }) {
                    fits!(order.payment.is_none(), "paid order {order_id} expires");
                }
                if order.payment.is_none() {
                    self.payment_due(&order)?;
                }
                let held: Vec<(&Sku, u64)> = order.held().collect();
                self.units_released(held.iter().copied())
            }
            Event::ShipmentDispatched { .. }
            | Event::ShipmentDelivered { .. }
            | Event::ReturnRequested { .. }
            | Event::ReturnReceived { .. }
            | Event::RefundIssued { .. } => self.fit_change(event),
        }
    }

    /// Whether a receipt or a stocktake fits; the SKU it touches.
    fn fit_stock(&self, event: &Event) -> Result<Vec<Sku>, Unfit> {
        match event {
            Event::StockReceived { sku, quantity, unit_cost, value, .. } => {
                let stock = &self.known(sku)?.stock;
                let on_hand = stock.on_hand.checked_add(*quantity).filter(|units| *units <= ON_HAND_MAX);
                fits!(on_hand.is_some(), "a receipt of {quantity} units takes {sku} past {ON_HAND_MAX} on hand");
                fits!(stock.received.checked_add(*quantity).is_some(), "units received of {sku} overflow");
                fits!(
                    !unit_cost.is_sign_negative() && !value.is_sign_negative(),
                    "a receipt of {sku} at a negative cost"
                );
                fits!(stock.value.checked_add(*value).is_some(), "the value of {sku} overflows");
                fits!(stock.value_received.checked_add(*value).is_some(), "the value received of {sku} overflows");
                Ok(vec![sku.clone()])
            }
            Event::StockCounted { sku, counted, previous_on_hand, delta, value_delta, shortfall, .. } => {
                let stock = &self.known(sku)?.stock;
                fits!(
                    stock.on_hand == *previous_on_hand,
                    "a stocktake of {sku} found {previous_on_hand} on the books, which hold {}",
                    stock.on_hand
                );
                fits!(*counted <= ON_HAND_MAX, "a stocktake of {sku} counted {counted}, past {ON_HAND_MAX}");
                let moved = i128::from(*counted) - i128::from(*previous_on_hand);
                fits!(moved == i128::from(*delta), "a stocktake of {sku} records a difference of {delta}, not {moved}");
                fits!(stock.adjusted.checked_add(*delta).is_some(), "adjustments of {sku} overflow");
                fits!(stock.value.checked_add(*value_delta).is_some(), "the value of {sku} overflows");
                fits!(
                    stock.value_adjusted.checked_add(*value_delta).is_some(),
                    "the value adjusted of {sku} overflows"
                );
                let short = stock.reserved.saturating_sub(*counted);
                fits!(*shortfall == short, "a stocktake of {sku} records a shortfall of {shortfall}, not {short}");
                Ok(vec![sku.clone()])
            }
            other => Err(unfit(format!("{} is not a stock event", other.kind()))),
        }
    }

    fn known(&self, sku: &Sku) -> Result<&Product, Unfit> {
        self.products.get(sku).ok_or_else(|| unfit(format!("SKU {sku} is unknown")))
    }

    fn order_of(&self, order_id: &OrderId) -> Result<Cow<'_, Order>, Unfit> {
        match self.orders.get(order_id) {
            Ok(Some(order)) => Ok(order),
            Ok(None) => Err(unfit(format!("order {order_id} is unknown"))),
            Err(unreadable) => Err(unfit(unreadable.to_string())),
        }
    }

    fn open_order(&self, order_id: &OrderId) -> Result<Cow<'_, Order>, Unfit> {
        let order = self.order_of(order_id)?;
        fits!(order.closure.is_none(), "order {order_id} is closed already");
        Ok(order)
    }

    /// An open, unpaid order's payment deadline is kept.
    fn payment_due(&self, order: &Order) -> Result<(), Unfit> {
        let due = (order.payment_due_by, Deadline::Payment(order.id.clone()));
        fits!(self.deadlines.contains(&due), "order {} has no payment deadline", order.id);
        Ok(())
    }

    /// The active hold `reservation_id` ends: it exists, is active, has its deadline and
    /// its units are reserved. The SKUs it touches.
    fn active_reservation(&self, reservation_id: &ReservationId) -> Result<Vec<Sku>, Unfit> {
        let Some(reservation) = self.reservations.get(reservation_id) else {
            return Err(unfit(format!("reservation {reservation_id} is unknown")));
        };
        fits!(
            reservation.status == ReservationStatus::Active,
            "reservation {reservation_id} is {:?}, not active",
            reservation.status
        );
        let due = (reservation.expires_at, Deadline::Reservation(reservation_id.clone()));
        fits!(self.deadlines.contains(&due), "reservation {reservation_id} has no deadline");
        self.units_released(reservation.lines.iter().map(|line| (&line.sku, line.quantity)))
    }

    /// Units reserved again: every SKU known, once per event, and within bounds. `released`
    /// is what a consumed hold gives back in the same event. The SKUs touched.
    fn units_reserved<'a>(
        &self,
        lines: impl ExactSizeIterator<Item = (&'a Sku, u64)>,
        released: Option<&[Line]>,
    ) -> Result<Vec<Sku>, Unfit> {
        fits!((1..=LINES_MAX).contains(&lines.len()), "{} lines, where 1 to {LINES_MAX} are recorded", lines.len());
        let mut touched: Vec<Sku> = released.unwrap_or_default().iter().map(|line| line.sku.clone()).collect();
        let mut seen = BTreeSet::new();
        for (sku, quantity) in lines {
            fits!(seen.insert(sku), "SKU {sku} is on two lines");
            fits!((1..=ORDER_LINE_UNITS_MAX).contains(&quantity), "{quantity} units of {sku} on a line");
            let stock = &self.known(sku)?.stock;
            let back = released.unwrap_or_default().iter().filter(|l| &l.sku == sku).map(|l| l.quantity).sum::<u64>();
            let reserved = stock.reserved.checked_sub(back).and_then(|units| units.checked_add(quantity));
            fits!(reserved.is_some(), "units reserved of {sku} overflow");
            touched.push(sku.clone());
        }
        Ok(touched)
    }

    /// Units that return to sale: every SKU known and holding them reserved.
    fn units_released<'a>(&self, lines: impl Iterator<Item = (&'a Sku, u64)>) -> Result<Vec<Sku>, Unfit> {
        let mut touched = Vec::new();
        for (sku, quantity) in lines {
            let stock = &self.known(sku)?.stock;
            fits!(
                stock.reserved >= quantity,
                "{quantity} units of {sku} return to sale, {} are reserved",
                stock.reserved
            );
            touched.push(sku.clone());
        }
        Ok(touched)
    }

    fn fit_placed(
        &self,
        event: &Event,
        order_id: &OrderId,
        lines: &[PricedLine],
        reservation_id: Option<&ReservationId>,
    ) -> Result<Vec<Sku>, Unfit> {
        fits!(!self.orders.contains(order_id), "order {order_id} is placed twice");
        let released = match reservation_id {
            Some(reservation_id) => {
                self.active_reservation(reservation_id)?;
                self.reservations.get(reservation_id).map(|reservation| &reservation.lines[..])
            }
            None => None,
        };
        let touched = self.units_reserved(lines.iter().map(|line| (&line.sku, line.quantity)), released)?;
        let Some(order) = crate::domain::sales::placed_order(event) else { return Err(unfit("not an order placed")) };
        fits!(
            lines.iter().all(|line| !line.net_amount.is_sign_negative()),
            "order {order_id} has a line of negative amount"
        );
        order_fault(&order).map_err(unfit)?;
        Ok(touched)
    }

    /// An event that changes only its order (and, for parcels and returns received, stock):
    /// it fits the order, and the order changed by it on a copy keeps its invariants.
    fn fit_change(&self, event: &Event) -> Result<Vec<Sku>, Unfit> {
        let crate::domain::event::Subject::Order(order_id) = event.subject() else {
            return Err(unfit(format!("{} is not about an order", event.kind())));
        };
        let order = self.order_of(order_id)?;
        fit_order_change(&order, event)?;
        let touched = match event {
            Event::ShipmentDispatched { lines, .. } => self.fit_shipped(lines)?,
            Event::ReturnReceived { lines, .. } => self.fit_returned(lines)?,
            _ => Vec::new(),
        };
        let mut changed = order.into_owned();
        changed.apply_change(event);
        order_fault(&changed).map_err(unfit)?;
        Ok(touched)
    }

    /// A parcel's units leave the shelf and the reservation.
    fn fit_shipped(&self, lines: &[CostedLine]) -> Result<Vec<Sku>, Unfit> {
        let mut touched = Vec::with_capacity(lines.len());
        for line in lines {
            let (sku, quantity) = (&line.sku, line.quantity);
            let stock = &self.known(sku)?.stock;
            fits!(stock.on_hand >= quantity, "a parcel of {quantity} units of {sku}, {} on hand", stock.on_hand);
            fits!(stock.reserved >= quantity, "a parcel of {quantity} units of {sku}, {} reserved", stock.reserved);
            fits!(stock.shipped.checked_add(quantity).is_some(), "units shipped of {sku} overflow");
            fits!(stock.value.checked_sub(line.cost).is_some(), "the value of {sku} overflows");
            fits!(stock.value_shipped.checked_add(line.cost).is_some(), "the value shipped of {sku} overflows");
            touched.push(sku.clone());
        }
        Ok(touched)
    }

    /// Returned units come back on the shelf or are written off.
    fn fit_returned(&self, lines: &[InspectedLine]) -> Result<Vec<Sku>, Unfit> {
        let mut touched = Vec::with_capacity(lines.len());
        for line in lines {
            let (sku, quantity) = (&line.sku, line.quantity);
            let stock = &self.known(sku)?.stock;
            fits!(!line.cost.is_sign_negative(), "a return of {sku} at a negative cost");
            match line.condition {
                Condition::Resellable => {
                    let on_hand = stock.on_hand.checked_add(quantity).filter(|units| *units <= ON_HAND_MAX);
                    fits!(on_hand.is_some(), "a return of {quantity} units takes {sku} past {ON_HAND_MAX} on hand");
                    fits!(stock.restocked.checked_add(quantity).is_some(), "units restocked of {sku} overflow");
                    fits!(stock.value.checked_add(line.cost).is_some(), "the value of {sku} overflows");
                    fits!(stock.value_restocked.checked_add(line.cost).is_some(), "the value of {sku} overflows");
                }
                Condition::Damaged => {
                    fits!(stock.written_off.checked_add(quantity).is_some(), "units written off of {sku} overflow");
                    fits!(stock.value_written_off.checked_add(line.cost).is_some(), "the value of {sku} overflows");
                }
            }
            touched.push(sku.clone());
        }
        Ok(touched)
    }
}

/// Whether `event`, which changes only its order, can be applied to `order` by
/// [`Order::apply_change`] without a broken precondition: every id it names, every SKU on
/// the order, counts within bounds.
fn fit_order_change(order: &Order, event: &Event) -> Result<(), Unfit> {
    let id = &order.id;
    match event {
        Event::ShipmentDispatched { shipment_id, lines, .. } => {
            fits!(order.payment.is_some() && order.closure.is_none(), "order {id} ships while not paid and open");
            fits!(
                order.shipments.len() < OrderPart::Parcels.max(),
                "order {id} ships more than {} parcels",
                OrderPart::Parcels.max()
            );
            fits!(
                order.shipments.iter().all(|s| &s.id != shipment_id),
                "shipment {shipment_id} of order {id} ships twice"
            );
            order_lines(
                order,
                lines.iter().map(|line| (&line.sku, line.quantity)),
                |line| line.quantity - line.shipped,
                "ships",
            )
        }
        Event::ShipmentDelivered { shipment_id, .. } => {
            let shipment = order.shipments.iter().find(|s| &s.id == shipment_id);
            let Some(shipment) = shipment else {
                return Err(unfit(format!("shipment {shipment_id} of order {id} is unknown")));
            };
            fits!(shipment.delivered_at.is_none(), "shipment {shipment_id} of order {id} is delivered twice");
            Ok(())
        }
        Event::ReturnRequested { .. } | Event::ReturnReceived { .. } | Event::RefundIssued { .. } => {
            fit_after_sale(order, event)
        }
        other => Err(unfit(format!("{} changes more than its order", other.kind()))),
    }
}

/// `lines` of an event about `order`: 1 to [`LINES_MAX`], each SKU once and on the order,
/// each at most what `left` says the order line has left for what the event does.
fn order_lines<'a>(
    order: &Order,
    lines: impl ExactSizeIterator<Item = (&'a Sku, u64)>,
    left: impl Fn(&crate::domain::state::OrderLine) -> u64,
    does: &str,
) -> Result<(), Unfit> {
    let id = &order.id;
    fits!((1..=LINES_MAX).contains(&lines.len()), "{} lines, where 1 to {LINES_MAX} are recorded", lines.len());
    let mut seen = BTreeSet::new();
    for (sku, quantity) in lines {
        fits!(seen.insert(sku), "SKU {sku} is on two lines");
        let Some(line) = order.line(sku) else { return Err(unfit(format!("SKU {sku} is not in order {id}"))) };
        // The order keeps its invariants (shipped <= ordered, asked back <= shipped), so
        // `left` does not underflow.
        let left = left(line);
        fits!(quantity >= 1 && quantity <= left, "{quantity} units of {sku} where order {id} {does} at most {left}");
    }
    Ok(())
}

/// [`fit_order_change`] for a return requested or received and a refund issued.
fn fit_after_sale(order: &Order, event: &Event) -> Result<(), Unfit> {
    let id = &order.id;
    match event {
        Event::ReturnRequested { return_id, lines, .. } => {
            fits!(
                order.returns.len() < OrderPart::Returns.max(),
                "order {id} has more than {} returns",
                OrderPart::Returns.max()
            );
            fits!(
                order.returns.iter().all(|r| &r.id != return_id),
                "return {return_id} of order {id} is requested twice"
            );
            order_lines(
                order,
                lines.iter().map(|line| (&line.sku, line.quantity)),
                |line| line.shipped - line.return_requested,
                "is asked back",
            )
        }
        Event::ReturnReceived { return_id, lines, .. } => {
            let request = order.returns.iter().find(|r| &r.id == return_id);
            let Some(request) = request else {
                return Err(unfit(format!("return {return_id} of order {id} is unknown")));
            };
            fits!(request.received_at.is_none(), "return {return_id} of order {id} is received twice");
            fits!(
                (1..=2 * LINES_MAX).contains(&lines.len()),
                "return {return_id} of order {id} inspects {} lines",
                lines.len()
            );
            for line in lines {
                let Some(order_line) = order.line(&line.sku) else {
                    return Err(unfit(format!("SKU {} is not in order {id}", line.sku)));
                };
                let returned = order_line.returned.checked_add(line.quantity);
                fits!(
                    returned.is_some_and(|units| units <= order_line.return_requested),
                    "order {id} receives back more of {} than was asked back",
                    line.sku
                );
            }
            Ok(())
        }
        Event::RefundIssued { .. } => fit_refund(order, event),
        other => Err(unfit(format!("{} is not an after-sales event", other.kind()))),
    }
}

/// [`fit_order_change`] for a refund issued.
fn fit_refund(order: &Order, event: &Event) -> Result<(), Unfit> {
    let id = &order.id;
    match event {
        Event::RefundIssued { refund_id, return_id, allocation, amount, .. } => {
            fits!(order.payment.is_some(), "order {id} is refunded unpaid");
            fits!(
                order.refunds.len() < OrderPart::Refunds.max(),
                "order {id} has more than {} refunds",
                OrderPart::Refunds.max()
            );
            fits!(order.refunds.iter().all(|r| &r.id != refund_id), "refund {refund_id} of order {id} is issued twice");
            fits!(*amount > Decimal::ZERO, "refund {refund_id} of order {id} pays back {amount}");
            if let Some(return_id) = return_id {
                fits!(
                    order.returns.iter().any(|r| &r.id == return_id),
                    "refund {refund_id} names return {return_id}, unknown to order {id}"
                );
            }
            fits!(
                allocation.len() <= LINES_MAX + 1,
                "refund {refund_id} of order {id} has {} shares",
                allocation.len()
            );
            for share in allocation {
                fits!(!share.amount.is_sign_negative(), "refund {refund_id} of order {id} has a negative share");
                if let RefundTarget::Line(sku) = &share.target {
                    fits!(order.line(sku).is_some(), "SKU {sku} is not in order {id}");
                }
            }
            Ok(())
        }
        other => Err(unfit(format!("{} is not a refund", other.kind()))),
    }
}
