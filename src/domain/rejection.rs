//! Why a command was refused.
//!
//! A rejection is a value, not a failure of the system: the command was understood and
//! the shop's rules said no. A rejected command changes nothing. Every variant has a
//! stable snake_case [`code`](Rejection::code) for machines and a sentence for people.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::domain::ids::{OrderId, RefundId, ReservationId, ReturnId, ShipmentId, Sku};
use crate::domain::state::{OrderStatus, ReservationStatus};

/// The field of a command that failed validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Field {
    Sku,
    Title,
    Category,
    Price,
    WeightG,
    LowStockThreshold,
    Quantity,
    UnitCost,
    SupplierRef,
    Counted,
    ReservationId,
    TtlMs,
    Lines,
    OrderId,
    CustomerId,
    Region,
    PaymentId,
    Amount,
    Reason,
    ShipmentId,
    Carrier,
    TrackingNumber,
    ReturnId,
    RefundId,
}

/// One SKU that an order or reservation asked more of than is available.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shortage {
    /// The SKU.
    pub sku: Sku,
    /// Units asked for, summed over the lines of the command.
    pub requested: u64,
    /// Units available to this command.
    pub available: u64,
}

/// Why a command was refused. Nothing was appended and nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum Rejection {
    #[error("invalid {field:?}: {reason}")]
    InvalidInput { field: Field, reason: String },
    #[error("SKU {sku} is already listed")]
    ProductAlreadyListed { sku: Sku },
    #[error("SKU {sku} is unknown")]
    UnknownSku { sku: Sku },
    #[error("SKU {sku} is delisted")]
    ProductDelisted { sku: Sku },
    #[error("SKU {sku} is listed, not delisted")]
    ProductNotDelisted { sku: Sku },
    #[error("the price of {sku} is already {price}")]
    PriceUnchanged { sku: Sku, price: Decimal },
    #[error("stock on hand of {sku} would exceed {max} units")]
    StockLimitExceeded { sku: Sku, max: u64 },
    #[error("not enough stock: {}", describe_shortages(.shortages))]
    InsufficientStock { shortages: Vec<Shortage> },
    #[error("SKU {sku} is short by {shortfall} units after a stocktake; no new reservations until it is resolved")]
    StockShortfall { sku: Sku, shortfall: u64 },
    #[error("reservation {reservation_id} already exists")]
    ReservationExists { reservation_id: ReservationId },
    #[error("reservation {reservation_id} is unknown")]
    UnknownReservation { reservation_id: ReservationId },
    #[error("reservation {reservation_id} is {status:?}, not active")]
    ReservationNotActive { reservation_id: ReservationId, status: ReservationStatus },
    #[error("reservation {reservation_id} expired")]
    ReservationExpired { reservation_id: ReservationId },
    #[error("order {order_id} already exists")]
    OrderExists { order_id: OrderId },
    #[error("order {order_id} is unknown")]
    UnknownOrder { order_id: OrderId },
    #[error("order {order_id} is {status:?}, not awaiting payment")]
    OrderNotAwaitingPayment { order_id: OrderId, status: OrderStatus },
    #[error("the payment time limit of order {order_id} has passed")]
    PaymentDeadlinePassed { order_id: OrderId },
    #[error("order {order_id} is due {due}, not {offered}")]
    AmountMismatch { order_id: OrderId, due: Decimal, offered: Decimal },
    #[error("order {order_id} is {status:?}: only paid orders can do that")]
    OrderNotPaid { order_id: OrderId, status: OrderStatus },
    #[error("order {order_id} has shipments already")]
    AlreadyShipped { order_id: OrderId },
    #[error("order {order_id} is {status:?} and closed")]
    OrderClosed { order_id: OrderId, status: OrderStatus },
    #[error("SKU {sku} is not in order {order_id}")]
    SkuNotInOrder { order_id: OrderId, sku: Sku },
    #[error("shipment {shipment_id} already exists")]
    ShipmentExists { shipment_id: ShipmentId },
    #[error("shipment {shipment_id} is unknown")]
    UnknownShipment { shipment_id: ShipmentId },
    #[error("shipment {shipment_id} is already delivered")]
    AlreadyDelivered { shipment_id: ShipmentId },
    #[error("cannot ship {requested} of {sku}: {remaining} remain unshipped")]
    ShipExceedsOrdered { sku: Sku, requested: u64, remaining: u64 },
    #[error("cannot ship {requested} of {sku}: only {on_hand} on the shelf")]
    InsufficientOnHand { sku: Sku, requested: u64, on_hand: u64 },
    #[error("return {return_id} already exists")]
    ReturnExists { return_id: ReturnId },
    #[error("return {return_id} is unknown")]
    UnknownReturn { return_id: ReturnId },
    #[error("return {return_id} was already received")]
    ReturnAlreadyReceived { return_id: ReturnId },
    #[error("cannot return {requested} of {sku}: {returnable} are returnable")]
    ReturnExceedsShipped { sku: Sku, requested: u64, returnable: u64 },
    #[error("return of {sku}: {expected} units were requested, {inspected} inspected")]
    InspectionMismatch { sku: Sku, expected: u64, inspected: u64 },
    #[error("refund {refund_id} already exists")]
    RefundExists { refund_id: RefundId },
    #[error("refund of {requested} exceeds the {refundable} paid and not yet refunded")]
    RefundExceedsPaid { requested: Decimal, refundable: Decimal },
    #[error("refund of {requested} exceeds the {refundable} not yet refunded on the returned lines")]
    RefundExceedsReturned { requested: Decimal, refundable: Decimal },
    /// The order already has the most parcels, returns or refunds an order may have
    /// ([`crate::domain::limits`]).
    #[error("order {order_id} already has {max} {part}, the most an order may have")]
    OrderLimitReached { order_id: OrderId, part: OrderPart, max: u64 },
}

/// A part of an order whose count is bounded ([`Rejection::OrderLimitReached`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderPart {
    /// Shipments ([`SHIPMENTS_PER_ORDER_MAX`](crate::domain::limits::SHIPMENTS_PER_ORDER_MAX)).
    Parcels,
    /// Return requests ([`RETURNS_PER_ORDER_MAX`](crate::domain::limits::RETURNS_PER_ORDER_MAX)).
    Returns,
    /// Refunds ([`REFUNDS_PER_ORDER_MAX`](crate::domain::limits::REFUNDS_PER_ORDER_MAX)).
    Refunds,
}

impl OrderPart {
    /// The most an order may have of this part.
    pub fn max(self) -> usize {
        match self {
            OrderPart::Parcels => crate::domain::limits::SHIPMENTS_PER_ORDER_MAX,
            OrderPart::Returns => crate::domain::limits::RETURNS_PER_ORDER_MAX,
            OrderPart::Refunds => crate::domain::limits::REFUNDS_PER_ORDER_MAX,
        }
    }

    /// Refuses one more of this part when `order` has `count` of it already.
    pub fn check(self, order_id: &OrderId, count: usize) -> Result<(), Rejection> {
        if count >= self.max() {
            return Err(Rejection::OrderLimitReached {
                order_id: order_id.clone(),
                part: self,
                max: self.max() as u64,
            });
        }
        Ok(())
    }
}

impl std::fmt::Display for OrderPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OrderPart::Parcels => "parcels",
            OrderPart::Returns => "returns",
            OrderPart::Refunds => "refunds",
        })
    }
}

fn describe_shortages(shortages: &[Shortage]) -> String {
    let parts: Vec<String> =
        shortages.iter().map(|s| format!("{} requested {}, available {}", s.sku, s.requested, s.available)).collect();
    parts.join("; ")
}

impl Rejection {
    /// An input that failed validation.
    pub fn invalid(field: Field, reason: impl Into<String>) -> Rejection {
        Rejection::InvalidInput { field, reason: reason.into() }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::InvalidInput { .. } => "invalid_input",
            Rejection::ProductAlreadyListed { .. } => "product_already_listed",
            Rejection::UnknownSku { .. } => "unknown_sku",
            Rejection::ProductDelisted { .. } => "product_delisted",
            Rejection::ProductNotDelisted { .. } => "product_not_delisted",
            Rejection::PriceUnchanged { .. } => "price_unchanged",
            Rejection::StockLimitExceeded { .. } => "stock_limit_exceeded",
            Rejection::InsufficientStock { .. } => "insufficient_stock",
            Rejection::StockShortfall { .. } => "stock_shortfall",
            Rejection::ReservationExists { .. } => "reservation_exists",
            Rejection::UnknownReservation { .. } => "unknown_reservation",
            Rejection::ReservationNotActive { .. } => "reservation_not_active",
            Rejection::ReservationExpired { .. } => "reservation_expired",
            Rejection::OrderExists { .. } => "order_exists",
            Rejection::UnknownOrder { .. } => "unknown_order",
            Rejection::OrderNotAwaitingPayment { .. } => "order_not_awaiting_payment",
            Rejection::PaymentDeadlinePassed { .. } => "payment_deadline_passed",
            Rejection::AmountMismatch { .. } => "amount_mismatch",
            Rejection::OrderNotPaid { .. } => "order_not_paid",
            Rejection::AlreadyShipped { .. } => "already_shipped",
            Rejection::OrderClosed { .. } => "order_closed",
            Rejection::SkuNotInOrder { .. } => "sku_not_in_order",
            Rejection::ShipmentExists { .. } => "shipment_exists",
            Rejection::UnknownShipment { .. } => "unknown_shipment",
            Rejection::AlreadyDelivered { .. } => "already_delivered",
            Rejection::ShipExceedsOrdered { .. } => "ship_exceeds_ordered",
            Rejection::InsufficientOnHand { .. } => "insufficient_on_hand",
            Rejection::ReturnExists { .. } => "return_exists",
            Rejection::UnknownReturn { .. } => "unknown_return",
            Rejection::ReturnAlreadyReceived { .. } => "return_already_received",
            Rejection::ReturnExceedsShipped { .. } => "return_exceeds_shipped",
            Rejection::InspectionMismatch { .. } => "inspection_mismatch",
            Rejection::RefundExists { .. } => "refund_exists",
            Rejection::RefundExceedsPaid { .. } => "refund_exceeds_paid",
            Rejection::RefundExceedsReturned { .. } => "refund_exceeds_returned",
            Rejection::OrderLimitReached { .. } => "order_limit_reached",
        }
    }
}
