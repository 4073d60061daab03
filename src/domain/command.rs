//! Commands: what callers ask a shop to do.
//!
//! A command is a request, not a fact. It holds raw caller input; [`crate::decide()`]
//! validates every field before it looks at the state.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::domain::ids::{CustomerId, OrderId, PaymentId, RefundId, ReservationId, ReturnId, ShipmentId, Sku};

/// A SKU and a number of units, as a caller sends it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The SKU.
    pub sku: Sku,
    /// Units.
    pub quantity: u64,
}

impl Line {
    /// A line of `quantity` units of `sku`.
    pub fn new(sku: &str, quantity: u64) -> Line {
        Line { sku: Sku::from(sku), quantity }
    }
}

/// Why a stocktake's count differs from the books.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdjustmentReason {
    /// Units went missing.
    Loss,
    /// Units were found damaged and taken off the shelf.
    Damage,
    /// Units were found that the books did not know.
    Found,
    /// A routine count; the books may or may not agree.
    Count,
}

/// What the inspection of a returned parcel found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Back on the shelf, at the cost it left at.
    Resellable,
    /// Written off.
    Damaged,
}

/// Units of one returned SKU in one condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspection {
    /// The SKU.
    pub sku: Sku,
    /// Units found in this condition.
    pub quantity: u64,
    /// What the inspection found.
    pub condition: Condition,
}

/// Who asked for something.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Party {
    /// The buyer.
    Buyer,
    /// The shop's staff.
    Shop,
}

/// A request to a shop. See the variants for the rules each one is decided by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// List a new product (上架).
    ListProduct {
        /// The new SKU.
        sku: Sku,
        /// 1 to 200 characters.
        title: String,
        /// 1 to 64 characters.
        category: String,
        /// Greater than zero.
        price: Decimal,
        /// Shipping weight of one unit.
        weight_g: u64,
        /// Available stock at or below this is low.
        low_stock_threshold: u64,
    },
    /// Change the price of later orders.
    ChangePrice {
        /// The SKU.
        sku: Sku,
        /// Greater than zero.
        price: Decimal,
    },
    /// Stop selling a product (下架). Its stock and open orders are untouched.
    DelistProduct {
        /// The SKU.
        sku: Sku,
    },
    /// Sell a delisted product again.
    RelistProduct {
        /// The SKU.
        sku: Sku,
    },
    /// Receive stock from a supplier (采购入库), valued at moving average cost.
    ReceiveStock {
        /// The SKU.
        sku: Sku,
        /// Units received, greater than zero.
        quantity: u64,
        /// Cost of one unit, zero or more.
        unit_cost: Decimal,
        /// The supplier's delivery note or purchase order.
        supplier_ref: String,
    },
    /// Record a count of the shelf (库存盘点); the difference becomes an adjustment.
    Stocktake {
        /// The SKU.
        sku: Sku,
        /// Units on the shelf.
        counted: u64,
        /// Why the count differs, if it does.
        reason: AdjustmentReason,
    },
    /// Hold stock for a checkout (锁库存): all lines or none.
    ReserveStock {
        /// Chosen by the caller.
        reservation_id: ReservationId,
        /// 1 to 100 lines; lines of one SKU are summed.
        lines: Vec<Line>,
        /// Time to live; 15 minutes when absent, at most 24 hours.
        ttl_ms: Option<u64>,
    },
    /// Release a checkout hold.
    ReleaseReservation {
        /// The hold.
        reservation_id: ReservationId,
    },
    /// Place an order at the current prices, reserving all its stock at once.
    PlaceOrder {
        /// Chosen by the caller, unique within the shop.
        order_id: OrderId,
        /// The buyer.
        customer_id: CustomerId,
        /// 1 to 100 lines; lines of one SKU are summed into one order line.
        lines: Vec<Line>,
        /// Destination region (province), 1 to 64 characters.
        region: String,
        /// A checkout hold whose stock this order takes over.
        reservation_id: Option<ReservationId>,
    },
    /// Pay an order in full.
    Pay {
        /// The order.
        order_id: OrderId,
        /// The payment provider's id.
        payment_id: PaymentId,
        /// Must equal the amount due.
        amount: Decimal,
    },
    /// Cancel an order before its first shipment. A paid order is refunded in full.
    Cancel {
        /// The order.
        order_id: OrderId,
        /// Who asked: platforms count buyer and shop cancellations apart.
        by: Party,
        /// Why, 1 to 500 characters.
        reason: String,
    },
    /// Ship a parcel (发货) of a paid order.
    Ship {
        /// The order.
        order_id: OrderId,
        /// Unique within the order.
        shipment_id: ShipmentId,
        /// The carrier (快递公司).
        carrier: String,
        /// The tracking number (物流单号).
        tracking_number: String,
        /// Units per SKU in the parcel.
        lines: Vec<Line>,
    },
    /// Confirm that a parcel arrived (确认收货).
    ConfirmDelivery {
        /// The order.
        order_id: OrderId,
        /// The parcel.
        shipment_id: ShipmentId,
    },
    /// The buyer asks to return shipped units (退货).
    RequestReturn {
        /// The order.
        order_id: OrderId,
        /// Unique within the order.
        return_id: ReturnId,
        /// Units per SKU, at most shipped minus already returned.
        lines: Vec<Line>,
        /// Why, 1 to 500 characters.
        reason: String,
    },
    /// The returned parcel arrived and was inspected (质检).
    ReceiveReturn {
        /// The order.
        order_id: OrderId,
        /// The return.
        return_id: ReturnId,
        /// Every requested unit, each in one condition.
        inspections: Vec<Inspection>,
    },
    /// Give money back (退款), with or without a return.
    Refund {
        /// The order.
        order_id: OrderId,
        /// Unique within the order.
        refund_id: RefundId,
        /// Greater than zero, at most paid minus refunded.
        amount: Decimal,
        /// The return this refund is for, if any.
        return_id: Option<ReturnId>,
    },
    /// Record every hold and unpaid order whose deadline is at or before now.
    ExpireDue,
}

impl Command {
    /// The order the command names, if it names one.
    pub fn order_id(&self) -> Option<&OrderId> {
        match self {
            Command::PlaceOrder { order_id, .. }
            | Command::Pay { order_id, .. }
            | Command::Cancel { order_id, .. }
            | Command::Ship { order_id, .. }
            | Command::ConfirmDelivery { order_id, .. }
            | Command::RequestReturn { order_id, .. }
            | Command::ReceiveReturn { order_id, .. }
            | Command::Refund { order_id, .. } => Some(order_id),
            Command::ListProduct { .. }
            | Command::ChangePrice { .. }
            | Command::DelistProduct { .. }
            | Command::RelistProduct { .. }
            | Command::ReceiveStock { .. }
            | Command::Stocktake { .. }
            | Command::ReserveStock { .. }
            | Command::ReleaseReservation { .. }
            | Command::ExpireDue => None,
        }
    }
}
