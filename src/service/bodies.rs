//! The command bodies: one strict struct a command, each followed by its conversion into the
//! domain's command.
//!
//! A body is what a command's route reads (less the fields its path fills in) and what a
//! batch item carries besides its `type`. Every body refuses unknown fields, takes money as a
//! decimal string ([`Money`]) and has an optional `command_id`. A conversion only moves
//! fields: the domain validates every one of them (ids' lengths, quantities, prices) when it
//! decides. The command table (`table.rs`) names each body's command, route and resource.

use schemars::JsonSchema;
use serde::Deserialize;

use super::wire::Money;
use crate::domain::command::{AdjustmentReason, Command, Condition, Inspection, Line, Party};

/// A SKU and a number of units.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LineBody {
    /// The SKU.
    pub sku: String,
    /// Units, 1 to 10,000.
    pub quantity: u64,
}

/// Units of one returned SKU found in one condition.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InspectionBody {
    /// The SKU.
    pub sku: String,
    /// Units.
    pub quantity: u64,
    /// `resellable` or `damaged`.
    pub condition: ConditionBody,
}

/// What an inspection found.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum ConditionBody {
    Resellable,
    Damaged,
}

/// Why a stocktake differs.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum ReasonBody {
    Loss,
    Damage,
    Found,
    Count,
}

/// Who asks for a cancellation.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum PartyBody {
    Buyer,
    Shop,
}

/// Declares one command body: a strict struct with an optional `command_id`.
macro_rules! body {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Makes a retry safe; the `Idempotency-Key` header does the same.
            #[serde(default)]
            pub command_id: Option<String>,
            $($(#[$fdoc])* pub $field: $ty,)*
        }
    };
}

body!(
    /// List a new product.
    ListProductBody {
        /// The new SKU: letters, digits, '.', '_', '-', at most 64.
        sku: String,
        /// 1 to 200 characters.
        title: String,
        /// 1 to 64 characters.
        category: String,
        /// Greater than zero.
        price: Money,
        /// Grams per unit.
        weight_g: u64,
        /// Available units at or below this are low stock.
        low_stock_threshold: u64,
    }
);

impl From<ListProductBody> for Command {
    fn from(b: ListProductBody) -> Command {
        Command::ListProduct {
            sku: b.sku.as_str().into(),
            title: b.title,
            category: b.category,
            price: b.price.0,
            weight_g: b.weight_g,
            low_stock_threshold: b.low_stock_threshold,
        }
    }
}

body!(
    /// Change the price of later orders.
    ChangePriceBody {
        /// From the path.
        sku: String,
        /// Greater than zero.
        price: Money,
    }
);

impl From<ChangePriceBody> for Command {
    fn from(b: ChangePriceBody) -> Command {
        Command::ChangePrice { sku: b.sku.as_str().into(), price: b.price.0 }
    }
}

body!(
    /// Stop selling a product.
    DelistBody {
        /// From the path.
        sku: String,
    }
);

impl From<DelistBody> for Command {
    fn from(b: DelistBody) -> Command {
        Command::DelistProduct { sku: b.sku.as_str().into() }
    }
}

body!(
    /// Sell a delisted product again.
    RelistBody {
        /// From the path.
        sku: String,
    }
);

impl From<RelistBody> for Command {
    fn from(b: RelistBody) -> Command {
        Command::RelistProduct { sku: b.sku.as_str().into() }
    }
}

body!(
    /// Receive stock from a supplier.
    ReceiveStockBody {
        /// From the path.
        sku: String,
        /// Units received.
        quantity: u64,
        /// Cost of one unit.
        unit_cost: Money,
        /// The supplier's delivery note.
        supplier_ref: String,
    }
);

impl From<ReceiveStockBody> for Command {
    fn from(b: ReceiveStockBody) -> Command {
        Command::ReceiveStock {
            sku: b.sku.as_str().into(),
            quantity: b.quantity,
            unit_cost: b.unit_cost.0,
            supplier_ref: b.supplier_ref,
        }
    }
}

body!(
    /// Record a count of the shelf.
    StocktakeBody {
        /// From the path.
        sku: String,
        /// Units counted.
        counted: u64,
        /// Why the count differs.
        reason: ReasonBody,
    }
);

impl From<StocktakeBody> for Command {
    fn from(b: StocktakeBody) -> Command {
        Command::Stocktake { sku: b.sku.as_str().into(), counted: b.counted, reason: b.reason.into() }
    }
}

body!(
    /// Hold stock for a checkout, all lines or none.
    ReserveBody {
        /// Chosen by the caller.
        reservation_id: String,
        /// 1 to 100 lines.
        lines: Vec<LineBody>,
        /// Time to live; 15 minutes when absent.
        #[serde(default)]
        ttl_ms: Option<u64>,
    }
);

impl From<ReserveBody> for Command {
    fn from(b: ReserveBody) -> Command {
        Command::ReserveStock {
            reservation_id: b.reservation_id.as_str().into(),
            lines: lines(b.lines),
            ttl_ms: b.ttl_ms,
        }
    }
}

body!(
    /// Release a checkout hold.
    ReleaseBody {
        /// From the path.
        reservation_id: String,
    }
);

impl From<ReleaseBody> for Command {
    fn from(b: ReleaseBody) -> Command {
        Command::ReleaseReservation { reservation_id: b.reservation_id.as_str().into() }
    }
}

body!(
    /// Place an order at the current prices.
    PlaceOrderBody {
        /// Chosen by the caller.
        order_id: String,
        /// The buyer.
        customer_id: String,
        /// 1 to 100 lines.
        lines: Vec<LineBody>,
        /// Destination region.
        region: String,
        /// A checkout hold this order takes over.
        #[serde(default)]
        reservation_id: Option<String>,
    }
);

impl From<PlaceOrderBody> for Command {
    fn from(b: PlaceOrderBody) -> Command {
        Command::PlaceOrder {
            order_id: b.order_id.as_str().into(),
            customer_id: b.customer_id.as_str().into(),
            lines: lines(b.lines),
            region: b.region,
            reservation_id: b.reservation_id.as_deref().map(Into::into),
        }
    }
}

body!(
    /// Pay an order in full.
    PayBody {
        /// From the path.
        order_id: String,
        /// The payment provider's id.
        payment_id: String,
        /// The amount due.
        amount: Money,
    }
);

impl From<PayBody> for Command {
    fn from(b: PayBody) -> Command {
        Command::Pay {
            order_id: b.order_id.as_str().into(),
            payment_id: b.payment_id.as_str().into(),
            amount: b.amount.0,
        }
    }
}

body!(
    /// Cancel an order before it ships.
    CancelBody {
        /// From the path.
        order_id: String,
        /// `buyer` or `shop`.
        by: PartyBody,
        /// Why.
        reason: String,
    }
);

impl From<CancelBody> for Command {
    fn from(b: CancelBody) -> Command {
        Command::Cancel { order_id: b.order_id.as_str().into(), by: b.by.into(), reason: b.reason }
    }
}

body!(
    /// Ship a parcel of a paid order.
    ShipBody {
        /// From the path.
        order_id: String,
        /// Unique within the order.
        shipment_id: String,
        /// The carrier.
        carrier: String,
        /// The tracking number.
        tracking_number: String,
        /// Units per SKU in the parcel.
        lines: Vec<LineBody>,
    }
);

impl From<ShipBody> for Command {
    fn from(b: ShipBody) -> Command {
        Command::Ship {
            order_id: b.order_id.as_str().into(),
            shipment_id: b.shipment_id.as_str().into(),
            carrier: b.carrier,
            tracking_number: b.tracking_number,
            lines: lines(b.lines),
        }
    }
}

body!(
    /// Confirm that a parcel arrived.
    DeliveryBody {
        /// From the path.
        order_id: String,
        /// From the path.
        shipment_id: String,
    }
);

impl From<DeliveryBody> for Command {
    fn from(b: DeliveryBody) -> Command {
        Command::ConfirmDelivery { order_id: b.order_id.as_str().into(), shipment_id: b.shipment_id.as_str().into() }
    }
}

body!(
    /// Ask to return shipped units.
    ReturnBody {
        /// From the path.
        order_id: String,
        /// Unique within the order.
        return_id: String,
        /// Units per SKU.
        lines: Vec<LineBody>,
        /// Why.
        reason: String,
    }
);

impl From<ReturnBody> for Command {
    fn from(b: ReturnBody) -> Command {
        Command::RequestReturn {
            order_id: b.order_id.as_str().into(),
            return_id: b.return_id.as_str().into(),
            lines: lines(b.lines),
            reason: b.reason,
        }
    }
}

body!(
    /// Record the inspection of a returned parcel.
    ReturnReceiptBody {
        /// From the path.
        order_id: String,
        /// From the path.
        return_id: String,
        /// Every requested unit, each in one condition.
        inspections: Vec<InspectionBody>,
    }
);

impl From<ReturnReceiptBody> for Command {
    fn from(b: ReturnReceiptBody) -> Command {
        Command::ReceiveReturn {
            order_id: b.order_id.as_str().into(),
            return_id: b.return_id.as_str().into(),
            inspections: b.inspections.into_iter().map(Inspection::from).collect(),
        }
    }
}

body!(
    /// Give money back.
    RefundBody {
        /// From the path.
        order_id: String,
        /// Unique within the order.
        refund_id: String,
        /// At most paid minus refunded.
        amount: Money,
        /// The return this refund is for.
        #[serde(default)]
        return_id: Option<String>,
    }
);

impl From<RefundBody> for Command {
    fn from(b: RefundBody) -> Command {
        Command::Refund {
            order_id: b.order_id.as_str().into(),
            refund_id: b.refund_id.as_str().into(),
            amount: b.amount.0,
            return_id: b.return_id.as_deref().map(Into::into),
        }
    }
}

fn lines(lines: Vec<LineBody>) -> Vec<Line> {
    lines.into_iter().map(|l| Line { sku: l.sku.as_str().into(), quantity: l.quantity }).collect()
}

impl From<InspectionBody> for Inspection {
    fn from(i: InspectionBody) -> Inspection {
        Inspection { sku: i.sku.as_str().into(), quantity: i.quantity, condition: i.condition.into() }
    }
}

impl From<ConditionBody> for Condition {
    fn from(condition: ConditionBody) -> Condition {
        match condition {
            ConditionBody::Resellable => Condition::Resellable,
            ConditionBody::Damaged => Condition::Damaged,
        }
    }
}

impl From<ReasonBody> for AdjustmentReason {
    fn from(reason: ReasonBody) -> AdjustmentReason {
        match reason {
            ReasonBody::Loss => AdjustmentReason::Loss,
            ReasonBody::Damage => AdjustmentReason::Damage,
            ReasonBody::Found => AdjustmentReason::Found,
            ReasonBody::Count => AdjustmentReason::Count,
        }
    }
}

impl From<PartyBody> for Party {
    fn from(party: PartyBody) -> Party {
        match party {
            PartyBody::Buyer => Party::Buyer,
            PartyBody::Shop => Party::Shop,
        }
    }
}
