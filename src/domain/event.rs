//! Events: facts that a decision recorded.
//!
//! An event records everything that was decided, including prices, discounts, costs and
//! times, so that applying it never re-runs a business rule and never reads a clock.
//! Events are append-only: a later fact may undo the effect of an earlier one (a
//! cancellation, a refund), never erase it.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::domain::command::{AdjustmentReason, Condition, Line, Party};
use crate::domain::ids::{
    CustomerId, OrderId, PaymentId, RefundId, ReservationId, ReturnId, ShipmentId, Sku, Timestamp,
};

/// Where a discount came from. Promotions and coupons are recorded here when they apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscountSource {
    /// A promotion (限时折扣, 满减, 秒杀), by id.
    Promotion(String),
    /// A coupon (优惠券), by code.
    Coupon(String),
}

/// One discount applied to one order line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discount {
    /// Where it came from.
    pub source: DiscountSource,
    /// Money taken off the line.
    pub amount: Decimal,
}

/// An order line as priced when the order was placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedLine {
    /// The SKU.
    pub sku: Sku,
    /// Units ordered.
    pub quantity: u64,
    /// The catalog price of one unit at the time.
    pub unit_price: Decimal,
    /// Discounts, each with its source.
    pub discounts: Vec<Discount>,
    /// `unit_price * quantity - discounts`.
    pub net_amount: Decimal,
}

/// Units of one SKU that left the shelf, with their cost of goods.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostedLine {
    /// The SKU.
    pub sku: Sku,
    /// Units.
    pub quantity: u64,
    /// Their cost at moving average cost.
    pub cost: Decimal,
}

/// Returned units of one SKU in one condition, with the cost they left at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectedLine {
    /// The SKU.
    pub sku: Sku,
    /// Units.
    pub quantity: u64,
    /// Resellable units go back to stock; damaged ones are written off.
    pub condition: Condition,
    /// The cost these units were shipped at.
    pub cost: Decimal,
}

/// What part of an order a refund share pays back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundTarget {
    /// An order line.
    Line(Sku),
    /// The shipping fee.
    Shipping,
}

/// One share of a refund.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundShare {
    /// What it pays back.
    pub target: RefundTarget,
    /// How much.
    pub amount: Decimal,
}

/// A fact recorded by a shop.
///
/// The order of the variants and of their fields is part of the stored format: new
/// variants go at the end, and a changed variant gets a new schema version and an upcaster
/// (see [`crate::log::record`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Event {
    ProductListed {
        sku: Sku,
        title: String,
        category: String,
        price: Decimal,
        weight_g: u64,
        low_stock_threshold: u64,
    },
    PriceChanged {
        sku: Sku,
        old_price: Decimal,
        new_price: Decimal,
    },
    ProductDelisted {
        sku: Sku,
    },
    ProductRelisted {
        sku: Sku,
    },
    /// `value` is `quantity * unit_cost`.
    StockReceived {
        sku: Sku,
        quantity: u64,
        unit_cost: Decimal,
        value: Decimal,
        supplier_ref: String,
    },
    /// `delta` units and `value_delta` money were added (negative: removed). `shortfall`
    /// is how many reserved units the shelf cannot cover.
    StockCounted {
        sku: Sku,
        counted: u64,
        previous_on_hand: u64,
        delta: i64,
        value_delta: Decimal,
        reason: AdjustmentReason,
        shortfall: u64,
    },
    StockReserved {
        reservation_id: ReservationId,
        lines: Vec<Line>,
        expires_at: Timestamp,
    },
    ReservationReleased {
        reservation_id: ReservationId,
    },
    ReservationExpired {
        reservation_id: ReservationId,
        expired_at: Timestamp,
    },
    /// The order reserved every line's units; a consumed reservation's holds were
    /// released in the same step.
    OrderPlaced {
        order_id: OrderId,
        customer_id: CustomerId,
        region: String,
        lines: Vec<PricedLine>,
        shipping_fee: Decimal,
        total: Decimal,
        placed_at: Timestamp,
        payment_due_by: Timestamp,
        reservation_id: Option<ReservationId>,
    },
    OrderPaid {
        order_id: OrderId,
        payment_id: PaymentId,
        amount: Decimal,
        paid_at: Timestamp,
    },
    /// Unshipped units return to sale. A paid order's refund follows as [`Event::RefundIssued`].
    /// Schema v2 added `by`; events stored under v1 read as `by: None` (not recorded).
    OrderCancelled {
        order_id: OrderId,
        by: Option<Party>,
        reason: String,
        cancelled_at: Timestamp,
    },
    OrderExpired {
        order_id: OrderId,
        expired_at: Timestamp,
    },
    /// The units left on hand and reserved together, at moving average cost.
    ShipmentDispatched {
        order_id: OrderId,
        shipment_id: ShipmentId,
        carrier: String,
        tracking_number: String,
        lines: Vec<CostedLine>,
        shipped_at: Timestamp,
    },
    ShipmentDelivered {
        order_id: OrderId,
        shipment_id: ShipmentId,
        delivered_at: Timestamp,
    },
    ReturnRequested {
        order_id: OrderId,
        return_id: ReturnId,
        lines: Vec<Line>,
        reason: String,
        requested_at: Timestamp,
    },
    ReturnReceived {
        order_id: OrderId,
        return_id: ReturnId,
        lines: Vec<InspectedLine>,
        received_at: Timestamp,
    },
    /// `allocation` spreads `amount` over the order's lines and shipping fee.
    RefundIssued {
        order_id: OrderId,
        refund_id: RefundId,
        amount: Decimal,
        return_id: Option<ReturnId>,
        allocation: Vec<RefundShare>,
        refunded_at: Timestamp,
    },
}

/// The one entity an event is about: it names the event's stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject<'e> {
    /// A product and its stock.
    Sku(&'e Sku),
    /// A checkout hold.
    Reservation(&'e ReservationId),
    /// An order, with its payments, parcels, returns and refunds.
    Order(&'e OrderId),
}

impl Event {
    /// The entity the event is about.
    pub fn subject(&self) -> Subject<'_> {
        match self {
            Event::ProductListed { sku, .. }
            | Event::PriceChanged { sku, .. }
            | Event::ProductDelisted { sku }
            | Event::ProductRelisted { sku }
            | Event::StockReceived { sku, .. }
            | Event::StockCounted { sku, .. } => Subject::Sku(sku),
            Event::StockReserved { reservation_id, .. }
            | Event::ReservationReleased { reservation_id }
            | Event::ReservationExpired { reservation_id, .. } => Subject::Reservation(reservation_id),
            Event::OrderPlaced { order_id, .. }
            | Event::OrderPaid { order_id, .. }
            | Event::OrderCancelled { order_id, .. }
            | Event::OrderExpired { order_id, .. }
            | Event::ShipmentDispatched { order_id, .. }
            | Event::ShipmentDelivered { order_id, .. }
            | Event::ReturnRequested { order_id, .. }
            | Event::ReturnReceived { order_id, .. }
            | Event::RefundIssued { order_id, .. } => Subject::Order(order_id),
        }
    }

    /// The event's type name, stable across releases.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::ProductListed { .. } => "product_listed",
            Event::PriceChanged { .. } => "price_changed",
            Event::ProductDelisted { .. } => "product_delisted",
            Event::ProductRelisted { .. } => "product_relisted",
            Event::StockReceived { .. } => "stock_received",
            Event::StockCounted { .. } => "stock_counted",
            Event::StockReserved { .. } => "stock_reserved",
            Event::ReservationReleased { .. } => "reservation_released",
            Event::ReservationExpired { .. } => "reservation_expired",
            Event::OrderPlaced { .. } => "order_placed",
            Event::OrderPaid { .. } => "order_paid",
            Event::OrderCancelled { .. } => "order_cancelled",
            Event::OrderExpired { .. } => "order_expired",
            Event::ShipmentDispatched { .. } => "shipment_dispatched",
            Event::ShipmentDelivered { .. } => "shipment_delivered",
            Event::ReturnRequested { .. } => "return_requested",
            Event::ReturnReceived { .. } => "return_received",
            Event::RefundIssued { .. } => "refund_issued",
        }
    }

    /// The first amount the event records that no decision records: one with more than
    /// [`MONEY_SCALE`](crate::domain::money::MONEY_SCALE) decimal places, or beyond
    /// [`RECORDED_AMOUNT_MAX`](crate::domain::money::RECORDED_AMOUNT_MAX) either way. Decoding
    /// refuses such an event: the money arithmetic that folds it assumes neither.
    pub fn amount_out_of_form(&self) -> Option<Decimal> {
        let mut amounts: Vec<&Decimal> = Vec::new();
        match self {
            Event::ProductListed { price, .. } => amounts.push(price),
            Event::PriceChanged { old_price, new_price, .. } => amounts.extend([old_price, new_price]),
            Event::StockReceived { unit_cost, value, .. } => amounts.extend([unit_cost, value]),
            Event::StockCounted { value_delta, .. } => amounts.push(value_delta),
            Event::OrderPlaced { lines, shipping_fee, total, .. } => {
                amounts.extend([shipping_fee, total]);
                for line in lines {
                    amounts.extend([&line.unit_price, &line.net_amount]);
                    amounts.extend(line.discounts.iter().map(|discount| &discount.amount));
                }
            }
            Event::OrderPaid { amount, .. } => amounts.push(amount),
            Event::ShipmentDispatched { lines, .. } => amounts.extend(lines.iter().map(|line| &line.cost)),
            Event::ReturnReceived { lines, .. } => amounts.extend(lines.iter().map(|line| &line.cost)),
            Event::RefundIssued { amount, allocation, .. } => {
                amounts.push(amount);
                amounts.extend(allocation.iter().map(|share| &share.amount));
            }
            Event::ProductDelisted { .. }
            | Event::ProductRelisted { .. }
            | Event::StockReserved { .. }
            | Event::ReservationReleased { .. }
            | Event::ReservationExpired { .. }
            | Event::OrderCancelled { .. }
            | Event::OrderExpired { .. }
            | Event::ShipmentDelivered { .. }
            | Event::ReturnRequested { .. } => {}
        }
        amounts.into_iter().copied().find(|amount| !crate::domain::money::is_recordable(*amount))
    }
}
