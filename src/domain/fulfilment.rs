//! Fulfilment: shipping parcels (发货) and confirming their delivery (确认收货).
//!
//! A parcel ships from an order that is open and paid, under a shipment id new within the
//! order, with a carrier and a tracking number, and holds units of the order's SKUs: per SKU
//! at most what the order still has to ship, and at most what is on hand. An order may ship
//! in as many parcels as it takes, up to
//! [`SHIPMENTS_PER_ORDER_MAX`](crate::domain::limits::SHIPMENTS_PER_ORDER_MAX). Each line of a
//! parcel is costed at the moving average cost of the units on hand, which the parcel takes
//! off the stock's value. Once a parcel has shipped the order can no longer be cancelled.
//!
//! A parcel of the order is delivered once; the order is delivered when everything it
//! ordered has shipped and every parcel has arrived.

use crate::domain::command::Line;
use crate::domain::decide::{known_order, known_product, merge_lines, open_order, order_line_of};
use crate::domain::event::{CostedLine, Event};
use crate::domain::ids::{OrderId, ShipmentId, Timestamp, check_identifier, check_text};
use crate::domain::limits::LABEL_LENGTH_MAX;
use crate::domain::money;
use crate::domain::orders::Orders;
use crate::domain::rejection::{Field, OrderPart, Rejection};
use crate::domain::state::{Order, Shipment, State, add, push_exact};

/// Decides `Command::Ship`. [`decide`](super::decide::decide) has checked `order_id`.
pub(crate) fn decide_ship<O: Orders>(
    state: &State<O>,
    now: Timestamp,
    order_id: &OrderId,
    shipment_id: &ShipmentId,
    carrier: &str,
    tracking_number: &str,
    lines: &[Line],
) -> Result<Vec<Event>, Rejection> {
    debug_assert!(order_id.check().is_ok(), "decide checks the order id first");
    shipment_id.check()?;
    check_text(Field::Carrier, carrier, LABEL_LENGTH_MAX)?;
    check_identifier(Field::TrackingNumber, tracking_number)?;
    let lines = merge_lines(lines)?;
    let order = open_order(state, order_id)?;
    if order.payment.is_none() {
        return Err(Rejection::OrderNotPaid { order_id: order_id.clone(), status: order.status() });
    }
    if order.shipments.iter().any(|s| &s.id == shipment_id) {
        return Err(Rejection::ShipmentExists { shipment_id: shipment_id.clone() });
    }
    OrderPart::Parcels.check(order_id, order.shipments.len())?;
    let costed = cost_parcel(state, &order, lines)?;
    Ok(vec![Event::ShipmentDispatched {
        order_id: order_id.clone(),
        shipment_id: shipment_id.clone(),
        carrier: carrier.to_owned(),
        tracking_number: tracking_number.to_owned(),
        lines: costed,
        shipped_at: now,
    }])
}

/// Checks each of a parcel's `lines`, in order, against what `order` has left to ship and
/// what is on hand, and costs it at the moving average cost of the units on hand.
fn cost_parcel<O: Orders>(state: &State<O>, order: &Order, lines: Vec<Line>) -> Result<Vec<CostedLine>, Rejection> {
    let mut costed = Vec::with_capacity(lines.len());
    for line in lines {
        let order_line = order_line_of(order, &line.sku)?;
        let remaining = order_line.quantity - order_line.shipped;
        if line.quantity > remaining {
            return Err(Rejection::ShipExceedsOrdered { sku: line.sku, requested: line.quantity, remaining });
        }
        let stock = &known_product(state, &line.sku)?.stock;
        if line.quantity > stock.on_hand {
            return Err(Rejection::InsufficientOnHand {
                sku: line.sku,
                requested: line.quantity,
                on_hand: stock.on_hand,
            });
        }
        let cost = money::share(stock.value, line.quantity, stock.on_hand);
        costed.push(CostedLine { sku: line.sku, quantity: line.quantity, cost });
    }
    Ok(costed)
}

/// Decides `Command::ConfirmDelivery`. [`decide`](super::decide::decide) has checked `order_id`.
pub(crate) fn decide_confirm_delivery<O: Orders>(
    state: &State<O>,
    now: Timestamp,
    order_id: &OrderId,
    shipment_id: &ShipmentId,
) -> Result<Vec<Event>, Rejection> {
    debug_assert!(order_id.check().is_ok(), "decide checks the order id first");
    shipment_id.check()?;
    let order = known_order(state, order_id)?;
    let Some(shipment) = order.shipments.iter().find(|s| &s.id == shipment_id) else {
        return Err(Rejection::UnknownShipment { shipment_id: shipment_id.clone() });
    };
    if shipment.delivered_at.is_some() {
        return Err(Rejection::AlreadyDelivered { shipment_id: shipment_id.clone() });
    }
    Ok(vec![Event::ShipmentDelivered {
        order_id: order_id.clone(),
        shipment_id: shipment_id.clone(),
        delivered_at: now,
    }])
}

// Applying fulfilment's events (`ShipmentDispatched`, `ShipmentDelivered`) belongs below,
// next to the rules that decide them.

// What the area's events do to the state: `apply`, beside the rules that decide them.

/// Applies a parcel's event: shipped, or delivered. Returns the order stream's version
/// after it.
pub(crate) fn apply<O: Orders>(state: &mut State<O>, event: &Event) -> u64 {
    match event {
        Event::ShipmentDispatched { order_id, lines, .. } => {
            state.stock_shipped(lines);
            state.change_order_by(order_id, event)
        }
        Event::ShipmentDelivered { order_id, .. } => state.change_order_by(order_id, event),
        other => unreachable!("{} is not a parcel's event", other.kind()),
    }
}

/// What a parcel's event does to its order ([`Order::apply_change`]).
pub(crate) fn change_order(order: &mut Order, event: &Event) {
    match event {
        Event::ShipmentDispatched { shipment_id, carrier, tracking_number, lines, shipped_at, .. } => {
            assert!(order.payment.is_some() && order.closure.is_none());
            for line in lines {
                let order_line = order.line_mut(&line.sku);
                order_line.shipped = add(order_line.shipped, line.quantity);
                order_line.shipped_cost += line.cost;
            }
            push_exact(
                &mut order.shipments,
                Shipment {
                    id: shipment_id.clone(),
                    carrier: carrier.as_str().into(),
                    tracking_number: tracking_number.as_str().into(),
                    lines: lines.clone(),
                    shipped_at: *shipped_at,
                    delivered_at: None,
                },
            );
        }
        Event::ShipmentDelivered { shipment_id, delivered_at, .. } => {
            let Some(shipment) = order.shipments.iter_mut().find(|s| &s.id == shipment_id) else {
                panic!("delivery of unknown shipment {shipment_id}");
            };
            assert!(shipment.delivered_at.is_none());
            shipment.delivered_at = Some(*delivered_at);
        }
        other => unreachable!("{} is not a parcel's event", other.kind()),
    }
}
