//! After sales: returns (退货), their inspection (质检), and refunds (退款).
//!
//! The buyer may ask to return shipped units, under a return id new within the order and
//! with a reason: per SKU at most what shipped less what earlier returns already asked for.
//! An order takes at most [`RETURNS_PER_ORDER_MAX`](crate::domain::limits::RETURNS_PER_ORDER_MAX)
//! returns and [`REFUNDS_PER_ORDER_MAX`](crate::domain::limits::REFUNDS_PER_ORDER_MAX) refunds.
//!
//! A requested return is received once, when its parcel arrives and is inspected. The
//! inspection accounts for every requested unit and nothing else, each unit either
//! resellable (back on the shelf) or damaged (written off); the same SKU may come back
//! partly in each condition. Each returned unit is costed at the average cost of its line's
//! shipped units not yet returned, so that a line's returns never cost more than it
//! shipped.
//!
//! A refund pays back part or all of what a paid order has not yet had refunded, under a
//! refund id new within the order. A refund for a return pays back at most the price of its
//! returned units less what earlier refunds for that return paid, and is spread over the
//! return's lines; a refund without a return is spread over every line and the shipping
//! fee. Either way the amount is split by largest remainder, in proportion to what each
//! part may still pay back. A return need not be received to be refunded.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::domain::command::{Condition, Inspection, Line};
use crate::domain::decide::{allocate_refund, check_quantity, known_order, merge_lines, order_line_of, refund_targets};
use crate::domain::event::{Event, InspectedLine, RefundTarget};
use crate::domain::ids::{OrderId, RefundId, ReturnId, Sku, Timestamp, check_text};
use crate::domain::limits::{LINE_QUANTITY_MAX, LINES_MAX, REASON_LENGTH_MAX};
use crate::domain::money::{self, PAYMENT_AMOUNT_MAX, Sign};
use crate::domain::orders::Orders;
use crate::domain::rejection::{Field, OrderPart, Rejection};
use crate::domain::state::{Order, Refund, Return, State, add, push_exact};

/// Decides `Command::RequestReturn`. [`decide`](super::decide::decide) has checked `order_id`.
pub(crate) fn decide_request_return<O: Orders>(
    state: &State<O>,
    now: Timestamp,
    order_id: &OrderId,
    return_id: &ReturnId,
    lines: &[Line],
    reason: &str,
) -> Result<Vec<Event>, Rejection> {
    debug_assert!(order_id.check().is_ok(), "decide checks the order id first");
    return_id.check()?;
    let lines = merge_lines(lines)?;
    check_text(Field::Reason, reason, REASON_LENGTH_MAX)?;
    let order = known_order(state, order_id)?;
    if order.returns.iter().any(|r| &r.id == return_id) {
        return Err(Rejection::ReturnExists { return_id: return_id.clone() });
    }
    OrderPart::Returns.check(order_id, order.returns.len())?;
    for line in &lines {
        let order_line = order_line_of(&order, &line.sku)?;
        let returnable = order_line.shipped - order_line.return_requested;
        if line.quantity > returnable {
            return Err(Rejection::ReturnExceedsShipped {
                sku: line.sku.clone(),
                requested: line.quantity,
                returnable,
            });
        }
    }
    Ok(vec![Event::ReturnRequested {
        order_id: order_id.clone(),
        return_id: return_id.clone(),
        lines,
        reason: reason.to_owned(),
        requested_at: now,
    }])
}

/// Decides `Command::ReceiveReturn`. [`decide`](super::decide::decide) has checked `order_id`.
pub(crate) fn decide_receive_return<O: Orders>(
    state: &State<O>,
    now: Timestamp,
    order_id: &OrderId,
    return_id: &ReturnId,
    inspections: &[Inspection],
) -> Result<Vec<Event>, Rejection> {
    debug_assert!(order_id.check().is_ok(), "decide checks the order id first");
    return_id.check()?;
    let inspections = merge_inspections(inspections)?;
    let order = known_order(state, order_id)?;
    let Some(request) = order.returns.iter().find(|r| &r.id == return_id) else {
        return Err(Rejection::UnknownReturn { return_id: return_id.clone() });
    };
    if request.received_at.is_some() {
        return Err(Rejection::ReturnAlreadyReceived { return_id: return_id.clone() });
    }
    check_inspections(request, &inspections)?;
    let lines = cost_inspections(&order, &inspections)?;
    Ok(vec![Event::ReturnReceived {
        order_id: order_id.clone(),
        return_id: return_id.clone(),
        lines,
        received_at: now,
    }])
}

/// Like [`merge_lines`] for inspections: one entry per SKU and condition.
fn merge_inspections(inspections: &[Inspection]) -> Result<Vec<Inspection>, Rejection> {
    let inspections_max = 2 * LINES_MAX;
    if inspections.is_empty() || inspections.len() > inspections_max {
        return Err(Rejection::invalid(Field::Lines, format!("must be 1 to {inspections_max} inspections")));
    }
    let mut merged: Vec<Inspection> = Vec::with_capacity(inspections.len());
    for inspection in inspections {
        inspection.sku.check()?;
        check_quantity(Field::Quantity, inspection.quantity, LINE_QUANTITY_MAX)?;
        match merged.iter_mut().find(|m| m.sku == inspection.sku && m.condition == inspection.condition) {
            Some(m) => m.quantity += inspection.quantity,
            None => merged.push(inspection.clone()),
        }
    }
    // Resellable before damaged within a SKU keeps the event's order independent of input order.
    merged.sort_by_key(|i| (i.condition == Condition::Damaged) as u8);
    Ok(merged)
}

/// Checks that `inspections` account for exactly the units `request` asked to return: first
/// that every inspected SKU was requested, then, in the request's order, that each requested
/// line's units were all inspected.
fn check_inspections(request: &Return, inspections: &[Inspection]) -> Result<(), Rejection> {
    let mut inspected_per_sku: BTreeMap<&Sku, u64> = BTreeMap::new();
    for inspection in inspections {
        *inspected_per_sku.entry(&inspection.sku).or_default() += inspection.quantity;
    }
    for (sku, inspected) in &inspected_per_sku {
        if !request.lines.iter().any(|l| &l.sku == *sku) {
            return Err(Rejection::InspectionMismatch { sku: (*sku).clone(), expected: 0, inspected: *inspected });
        }
    }
    for line in &request.lines {
        let inspected = inspected_per_sku.get(&line.sku).copied().unwrap_or(0);
        if inspected != line.quantity {
            return Err(Rejection::InspectionMismatch { sku: line.sku.clone(), expected: line.quantity, inspected });
        }
    }
    Ok(())
}

/// Costs each of `inspections`, in order: each returned unit comes back at the average cost
/// of the line's shipped units not yet returned (counting those that earlier inspections of
/// the same SKU take back), so the line's returns never add up to more than it shipped.
fn cost_inspections(order: &Order, inspections: &[Inspection]) -> Result<Vec<InspectedLine>, Rejection> {
    let mut returned: BTreeMap<&Sku, (u64, Decimal)> = BTreeMap::new();
    let mut lines = Vec::with_capacity(inspections.len());
    for inspection in inspections {
        let order_line = order_line_of(order, &inspection.sku)?;
        let (units, cost) = returned.entry(&inspection.sku).or_insert((order_line.returned, order_line.returned_cost));
        let line_cost = money::share(order_line.shipped_cost - *cost, inspection.quantity, order_line.shipped - *units);
        *units += inspection.quantity;
        *cost += line_cost;
        lines.push(InspectedLine {
            sku: inspection.sku.clone(),
            quantity: inspection.quantity,
            condition: inspection.condition,
            cost: line_cost,
        });
    }
    Ok(lines)
}

/// Decides `Command::Refund`. [`decide`](super::decide::decide) has checked `order_id`.
pub(crate) fn decide_refund<O: Orders>(
    state: &State<O>,
    now: Timestamp,
    order_id: &OrderId,
    refund_id: &RefundId,
    amount: Decimal,
    return_id: Option<&ReturnId>,
) -> Result<Vec<Event>, Rejection> {
    debug_assert!(order_id.check().is_ok(), "decide checks the order id first");
    refund_id.check()?;
    let amount = money::check_amount(Field::Amount, amount, Sign::Positive, PAYMENT_AMOUNT_MAX)?;
    if let Some(return_id) = return_id {
        return_id.check()?;
    }
    let order = known_order(state, order_id)?;
    if order.refunds.iter().any(|r| &r.id == refund_id) {
        return Err(Rejection::RefundExists { refund_id: refund_id.clone() });
    }
    OrderPart::Refunds.check(order_id, order.refunds.len())?;
    if order.payment.is_none() {
        return Err(Rejection::OrderNotPaid { order_id: order_id.clone(), status: order.status() });
    }
    if amount > order.refundable() {
        return Err(Rejection::RefundExceedsPaid { requested: amount, refundable: order.refundable() });
    }
    if let Some(return_id) = return_id {
        let Some(request) = order.returns.iter().find(|r| &r.id == return_id) else {
            return Err(Rejection::UnknownReturn { return_id: return_id.clone() });
        };
        let refundable: Decimal = refund_targets(&order, Some(request)).iter().map(|(_, w)| *w).sum();
        if amount > refundable {
            return Err(Rejection::RefundExceedsReturned { requested: amount, refundable });
        }
    }
    let allocation = allocate_refund(&order, amount, return_id);
    Ok(vec![Event::RefundIssued {
        order_id: order_id.clone(),
        refund_id: refund_id.clone(),
        amount,
        return_id: return_id.cloned(),
        allocation,
        refunded_at: now,
    }])
}

// Applying after sales' events (`ReturnRequested`, `ReturnReceived`, `RefundIssued`, the
// last also decided by a cancellation) belongs below, next to the rules that decide them.

// What the area's events do to the state: `apply`, beside the rules that decide them.

/// Applies an after-sales event: a return requested or received, a refund issued. Returns
/// the order stream's version after it.
pub(crate) fn apply<O: Orders>(state: &mut State<O>, event: &Event) -> u64 {
    match event {
        Event::ReturnRequested { order_id, .. } => state.change_order_by(order_id, event),
        Event::ReturnReceived { order_id, lines, .. } => {
            let version = state.change_order_by(order_id, event);
            state.stock_returned(lines);
            version
        }
        Event::RefundIssued { order_id, .. } => state.change_order_by(order_id, event),
        other => unreachable!("{} is not an after-sales event", other.kind()),
    }
}

/// What an after-sales event does to its order ([`Order::apply_change`]).
pub(crate) fn change_order(order: &mut Order, event: &Event) {
    match event {
        Event::ReturnRequested { return_id, lines, reason, requested_at, .. } => {
            for line in lines {
                let order_line = order.line_mut(&line.sku);
                order_line.return_requested = add(order_line.return_requested, line.quantity);
            }
            push_exact(
                &mut order.returns,
                Return {
                    id: return_id.clone(),
                    lines: lines.clone(),
                    reason: reason.clone(),
                    requested_at: *requested_at,
                    received_at: None,
                    inspected: Vec::new(),
                },
            );
        }
        Event::ReturnReceived { return_id, lines, received_at, .. } => {
            for line in lines {
                let order_line = order.line_mut(&line.sku);
                order_line.returned = add(order_line.returned, line.quantity);
                order_line.returned_cost += line.cost;
            }
            let Some(request) = order.returns.iter_mut().find(|r| &r.id == return_id) else {
                panic!("receipt of unknown return {return_id}");
            };
            assert!(request.received_at.is_none());
            request.received_at = Some(*received_at);
            request.inspected = lines.clone();
        }
        Event::RefundIssued { refund_id, amount, return_id, allocation, refunded_at, .. } => {
            order.refunded += *amount;
            for share in allocation {
                match &share.target {
                    RefundTarget::Line(sku) => order.line_mut(sku).refunded += share.amount,
                    RefundTarget::Shipping => order.shipping_refunded += share.amount,
                }
            }
            push_exact(
                &mut order.refunds,
                Refund {
                    id: refund_id.clone(),
                    amount: *amount,
                    return_id: return_id.clone(),
                    allocation: allocation.clone(),
                    refunded_at: *refunded_at,
                },
            );
        }
        other => unreachable!("{} is not an after-sales event", other.kind()),
    }
}
