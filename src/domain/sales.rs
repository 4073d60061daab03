//! Sales: placing orders, paying them and cancelling them.
//!
//! An order's id is chosen by the caller and is unique within the shop, closed orders
//! included. An order has 1 to [`LINES_MAX`](crate::domain::limits::LINES_MAX) lines (the
//! lines of one SKU summed into one order line) and a destination region, and reserves all
//! its units at once, on the same terms as a checkout hold. Placed with a hold, the order
//! takes the hold over: the hold must be active and its time to live not run out, even when
//! no expiry has recorded that yet, and its units count as available to the order. Each
//! line is priced at the product's current price, without discounts; shipping is free. The
//! order must be paid within the policy's payment time limit, counted from its placing.
//!
//! Paying takes exactly the amount due, once, before the time limit: an order that is
//! closed, already paid or past its time limit cannot be paid.
//!
//! Either party may cancel an order until its first parcel ships. Cancelling a paid order
//! refunds in the same decision everything not yet refunded, under the refund id
//! [`CANCELLATION_REFUND_ID`], spread over the lines and the shipping fee as a refund
//! without a return is.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::domain::command::{Line, Party};
use crate::domain::decide::{
    active_reservation, allocate_refund, check_availability, known_order, known_product, later, merge_lines, open_order,
};
use crate::domain::event::{Event, PricedLine};
use crate::domain::ids::{CustomerId, OrderId, PaymentId, RefundId, ReservationId, Timestamp, check_text};
use crate::domain::limits::{LABEL_LENGTH_MAX, REASON_LENGTH_MAX};
use crate::domain::money::{self, PAYMENT_AMOUNT_MAX, Sign};
use crate::domain::orders::Orders;
use crate::domain::rejection::{Field, OrderPart, Rejection};
use crate::domain::state::{Closure, Deadline, Order, OrderStatus, Payment, State, order_line};

/// The refund id recorded when cancelling a paid order refunds it in full.
pub const CANCELLATION_REFUND_ID: &str = "cancellation";

/// Decides `Command::PlaceOrder`. [`decide`](super::decide::decide) has checked `order_id`.
pub(crate) fn decide_place<O: Orders>(
    state: &State<O>,
    now: Timestamp,
    order_id: &OrderId,
    customer_id: &CustomerId,
    lines: &[Line],
    region: &str,
    reservation_id: Option<&ReservationId>,
) -> Result<Vec<Event>, Rejection> {
    debug_assert!(order_id.check().is_ok(), "decide checks the order id first");
    customer_id.check()?;
    let lines = merge_lines(lines)?;
    check_text(Field::Region, region, LABEL_LENGTH_MAX)?;
    if let Some(reservation_id) = reservation_id {
        reservation_id.check()?;
    }
    let payment_due_by = later(now, state.policy().payment_ttl_ms, Field::OrderId)?;
    if state.has_order(order_id) {
        return Err(Rejection::OrderExists { order_id: order_id.clone() });
    }
    let mut held = BTreeMap::new();
    if let Some(reservation_id) = reservation_id {
        let reservation = active_reservation(state, reservation_id)?;
        if now >= reservation.expires_at {
            return Err(Rejection::ReservationExpired { reservation_id: reservation_id.clone() });
        }
        held.extend(reservation.lines.iter().map(|l| (&l.sku, l.quantity)));
    }
    check_availability(state, &lines, &held)?;
    let (priced, total) = price_lines(state, lines)?;
    let shipping_fee = money::normalize(Decimal::ZERO);
    Ok(vec![Event::OrderPlaced {
        order_id: order_id.clone(),
        customer_id: customer_id.clone(),
        region: region.to_owned(),
        lines: priced,
        shipping_fee,
        total: total + shipping_fee,
        placed_at: now,
        payment_due_by,
        reservation_id: reservation_id.cloned(),
    }])
}

/// Prices `lines` at their products' current prices: the priced lines, in the same order,
/// and the sum of their net amounts.
fn price_lines<O: Orders>(state: &State<O>, lines: Vec<Line>) -> Result<(Vec<PricedLine>, Decimal), Rejection> {
    let mut priced = Vec::with_capacity(lines.len());
    let mut total = Decimal::ZERO;
    for line in lines {
        let unit_price = known_product(state, &line.sku)?.price;
        let net_amount = unit_price * Decimal::from(line.quantity);
        total += net_amount;
        priced.push(PricedLine {
            sku: line.sku,
            quantity: line.quantity,
            unit_price,
            discounts: Vec::new(),
            net_amount,
        });
    }
    Ok((priced, total))
}

/// Decides `Command::Pay`. [`decide`](super::decide::decide) has checked `order_id`.
pub(crate) fn decide_pay<O: Orders>(
    state: &State<O>,
    now: Timestamp,
    order_id: &OrderId,
    payment_id: &PaymentId,
    amount: Decimal,
) -> Result<Vec<Event>, Rejection> {
    debug_assert!(order_id.check().is_ok(), "decide checks the order id first");
    payment_id.check()?;
    let amount = money::check_amount(Field::Amount, amount, Sign::Positive, PAYMENT_AMOUNT_MAX)?;
    let order = known_order(state, order_id)?;
    let status = order.status();
    if status != OrderStatus::AwaitingPayment {
        return Err(Rejection::OrderNotAwaitingPayment { order_id: order_id.clone(), status });
    }
    if now >= order.payment_due_by {
        return Err(Rejection::PaymentDeadlinePassed { order_id: order_id.clone() });
    }
    if amount != order.amount_due() {
        return Err(Rejection::AmountMismatch { order_id: order_id.clone(), due: order.amount_due(), offered: amount });
    }
    Ok(vec![Event::OrderPaid { order_id: order_id.clone(), payment_id: payment_id.clone(), amount, paid_at: now }])
}

/// Decides `Command::Cancel`. [`decide`](super::decide::decide) has checked `order_id`.
pub(crate) fn decide_cancel<O: Orders>(
    state: &State<O>,
    now: Timestamp,
    order_id: &OrderId,
    by: Party,
    reason: &str,
) -> Result<Vec<Event>, Rejection> {
    debug_assert!(order_id.check().is_ok(), "decide checks the order id first");
    check_text(Field::Reason, reason, REASON_LENGTH_MAX)?;
    let order = open_order(state, order_id)?;
    if !order.shipments.is_empty() {
        return Err(Rejection::AlreadyShipped { order_id: order_id.clone() });
    }
    let mut events = vec![Event::OrderCancelled {
        order_id: order_id.clone(),
        by: Some(by),
        reason: reason.to_owned(),
        cancelled_at: now,
    }];
    let refundable = order.refundable();
    if refundable > Decimal::ZERO {
        OrderPart::Refunds.check(order_id, order.refunds.len())?;
        events.push(Event::RefundIssued {
            order_id: order_id.clone(),
            refund_id: RefundId::from(CANCELLATION_REFUND_ID),
            amount: refundable,
            return_id: None,
            allocation: allocate_refund(&order, refundable, None),
            refunded_at: now,
        });
    }
    Ok(events)
}

// Applying the sales' events (`OrderPlaced`, `OrderPaid`, `OrderCancelled`) belongs below,
// next to the rules that decide them.

// What the area's events do to the state: `apply`, beside the rules that decide them.

/// Applies an order's event of sales: placed, paid, cancelled, or expired unpaid (which
/// time decides, [`crate::domain::time`]). Returns the order stream's version after it.
pub(crate) fn apply<O: Orders>(state: &mut State<O>, event: &Event) -> u64 {
    match event {
        Event::OrderPlaced { order_id, lines, payment_due_by, reservation_id, .. } => {
            state.stock_placed(reservation_id.as_ref(), lines);
            let Some(order) = placed_order(event) else { unreachable!("an order placed places an order") };
            assert!(!state.orders.insert(order), "order {order_id} placed twice");
            state.deadlines.insert((*payment_due_by, Deadline::Payment(order_id.clone())));
            1
        }
        Event::OrderPaid { order_id, payment_id, amount, paid_at } => {
            let (due_by, version) = state.change_order(order_id, |order| {
                assert!(order.payment.is_none() && order.closure.is_none());
                order.payment = Some(Payment { id: payment_id.clone(), amount: *amount, paid_at: *paid_at });
                order.payment_due_by
            });
            assert!(state.deadlines.remove(&(due_by, Deadline::Payment(order_id.clone()))));
            version
        }
        Event::OrderCancelled { order_id, by, reason, cancelled_at } => {
            let closure = Closure::Cancelled { by: *by, reason: reason.clone(), at: *cancelled_at };
            state.close_order(order_id, closure)
        }
        Event::OrderExpired { order_id, expired_at } => {
            state.close_order(order_id, Closure::Expired { at: *expired_at })
        }
        other => unreachable!("{} is not an order's event of sales", other.kind()),
    }
}

/// The order an [`Event::OrderPlaced`] places, as applying it adds it; `None` for any other
/// event.
pub(crate) fn placed_order(event: &Event) -> Option<Order> {
    let Event::OrderPlaced {
        order_id,
        customer_id,
        region,
        lines,
        shipping_fee,
        total,
        placed_at,
        payment_due_by,
        reservation_id,
    } = event
    else {
        return None;
    };
    Some(Order {
        id: order_id.clone(),
        customer_id: customer_id.clone(),
        region: region.as_str().into(),
        placed_at: *placed_at,
        payment_due_by: *payment_due_by,
        reservation_id: reservation_id.clone(),
        lines: lines.iter().map(order_line).collect(),
        shipping_fee: *shipping_fee,
        shipping_refunded: Decimal::ZERO,
        total: *total,
        payment: None,
        refunded: Decimal::ZERO,
        shipments: Vec::new(),
        returns: Vec::new(),
        refunds: Vec::new(),
        closure: None,
        stream_version: 1,
    })
}
