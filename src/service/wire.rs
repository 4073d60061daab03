//! The JSON the service reads and writes: request bodies, money, receipts and event lines.
//!
//! Request bodies are strict: unknown fields are refused, money is a decimal string with at
//! most two places, quantities are non-negative integers. Every command body has the same
//! shape in a batch (with its `type`) as on its own route (where the path supplies the ids).

use std::borrow::Cow;
use std::str::FromStr;

use rust_decimal::Decimal;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize};

use crate::domain::command::{AdjustmentReason, Command, Condition, Inspection, Line, Party};
use crate::domain::event::Event;
use crate::domain::money::MONEY_SCALE;
use crate::log::record::Envelope;

/// An amount of money as it travels: a JSON string such as `"19.90"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Money(pub Decimal);

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Money, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Money;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("money as a decimal string such as \"19.90\" (not a JSON number)")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Money, E> {
                parse_money(text).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Parses money written as `-?digits(.digits)?` with at most two decimal places.
pub fn parse_money(text: &str) -> Result<Money, String> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let well_formed = !whole.is_empty()
        && whole.len() <= 20
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit())
        && !(digits.contains('.') && fraction.is_empty());
    if !well_formed {
        return Err(format!("money must be a decimal string such as \"19.90\", not {text:?}"));
    }
    if fraction.len() > MONEY_SCALE as usize {
        return Err(format!("money has at most {MONEY_SCALE} decimal places, {text:?} has {}", fraction.len()));
    }
    Decimal::from_str(text).map(Money).map_err(|e| format!("money {text:?} is out of range: {e}"))
}

impl JsonSchema for Money {
    fn schema_name() -> Cow<'static, str> {
        "Money".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^-?[0-9]{1,20}(\\.[0-9]{1,2})?$",
            "description": "An amount in CNY as a decimal string with at most 2 places.",
            "examples": ["19.90"]
        })
    }
}

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
body!(
    /// Change the price of later orders.
    ChangePriceBody {
        /// From the path.
        sku: String,
        /// Greater than zero.
        price: Money,
    }
);
body!(
    /// Stop selling a product.
    DelistBody {
        /// From the path.
        sku: String,
    }
);
body!(
    /// Sell a delisted product again.
    RelistBody {
        /// From the path.
        sku: String,
    }
);
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
body!(
    /// Release a checkout hold.
    ReleaseBody {
        /// From the path.
        reservation_id: String,
    }
);
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
body!(
    /// Confirm that a parcel arrived.
    DeliveryBody {
        /// From the path.
        order_id: String,
        /// From the path.
        shipment_id: String,
    }
);
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

/// A command as a batch item carries it: its `type` and its body.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum WireCommand {
    ListProduct(ListProductBody),
    ChangePrice(ChangePriceBody),
    DelistProduct(DelistBody),
    RelistProduct(RelistBody),
    ReceiveStock(ReceiveStockBody),
    Stocktake(StocktakeBody),
    ReserveStock(ReserveBody),
    ReleaseReservation(ReleaseBody),
    PlaceOrder(PlaceOrderBody),
    Pay(PayBody),
    Cancel(CancelBody),
    Ship(ShipBody),
    ConfirmDelivery(DeliveryBody),
    RequestReturn(ReturnBody),
    ReceiveReturn(ReturnReceiptBody),
    Refund(RefundBody),
}

fn lines(lines: Vec<LineBody>) -> Vec<Line> {
    lines.into_iter().map(|l| Line { sku: l.sku.as_str().into(), quantity: l.quantity }).collect()
}

/// Where a command's resource lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ResourceRef {
    /// `product`, `reservation` or `order`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Its id.
    pub id: String,
    /// Where to read it, relative to the shop.
    pub href: String,
}

impl WireCommand {
    /// The command of a route whose path names only the shop, read straight from `body`
    /// (no JSON tree in between) when the body is an object of exactly that command's
    /// fields, each once; `None` otherwise, with no reason: the checked path (a JSON object,
    /// the route's `type` added) then explains what is wrong, or accepts what this refuses.
    pub fn from_body(kind: &str, body: &[u8]) -> Option<WireCommand> {
        // A struct also reads from a JSON array; the checked path takes only objects.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return None;
        }
        match kind {
            "list_product" => serde_json::from_slice(body).ok().map(WireCommand::ListProduct),
            "reserve_stock" => serde_json::from_slice(body).ok().map(WireCommand::ReserveStock),
            "place_order" => serde_json::from_slice(body).ok().map(WireCommand::PlaceOrder),
            _ => None,
        }
    }

    /// The command's snake_case name, as in a batch's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            WireCommand::ListProduct(_) => "list_product",
            WireCommand::ChangePrice(_) => "change_price",
            WireCommand::DelistProduct(_) => "delist_product",
            WireCommand::RelistProduct(_) => "relist_product",
            WireCommand::ReceiveStock(_) => "receive_stock",
            WireCommand::Stocktake(_) => "stocktake",
            WireCommand::ReserveStock(_) => "reserve_stock",
            WireCommand::ReleaseReservation(_) => "release_reservation",
            WireCommand::PlaceOrder(_) => "place_order",
            WireCommand::Pay(_) => "pay",
            WireCommand::Cancel(_) => "cancel",
            WireCommand::Ship(_) => "ship",
            WireCommand::ConfirmDelivery(_) => "confirm_delivery",
            WireCommand::RequestReturn(_) => "request_return",
            WireCommand::ReceiveReturn(_) => "receive_return",
            WireCommand::Refund(_) => "refund",
        }
    }

    /// Whether the command creates a resource of its own (answered 201).
    pub fn creates(&self) -> bool {
        matches!(
            self,
            WireCommand::ListProduct(_)
                | WireCommand::ReserveStock(_)
                | WireCommand::PlaceOrder(_)
                | WireCommand::Ship(_)
                | WireCommand::RequestReturn(_)
                | WireCommand::Refund(_)
        )
    }

    /// The command id from the body.
    pub fn command_id(&self) -> Option<&str> {
        let id = match self {
            WireCommand::ListProduct(b) => &b.command_id,
            WireCommand::ChangePrice(b) => &b.command_id,
            WireCommand::DelistProduct(b) => &b.command_id,
            WireCommand::RelistProduct(b) => &b.command_id,
            WireCommand::ReceiveStock(b) => &b.command_id,
            WireCommand::Stocktake(b) => &b.command_id,
            WireCommand::ReserveStock(b) => &b.command_id,
            WireCommand::ReleaseReservation(b) => &b.command_id,
            WireCommand::PlaceOrder(b) => &b.command_id,
            WireCommand::Pay(b) => &b.command_id,
            WireCommand::Cancel(b) => &b.command_id,
            WireCommand::Ship(b) => &b.command_id,
            WireCommand::ConfirmDelivery(b) => &b.command_id,
            WireCommand::RequestReturn(b) => &b.command_id,
            WireCommand::ReceiveReturn(b) => &b.command_id,
            WireCommand::Refund(b) => &b.command_id,
        };
        id.as_deref()
    }

    /// The resource the command acts on.
    pub fn resource(&self) -> ResourceRef {
        let (kind, id) = match self {
            WireCommand::ListProduct(b) => ("product", &b.sku),
            WireCommand::ChangePrice(b) => ("product", &b.sku),
            WireCommand::DelistProduct(b) => ("product", &b.sku),
            WireCommand::RelistProduct(b) => ("product", &b.sku),
            WireCommand::ReceiveStock(b) => ("product", &b.sku),
            WireCommand::Stocktake(b) => ("product", &b.sku),
            WireCommand::ReserveStock(b) => ("reservation", &b.reservation_id),
            WireCommand::ReleaseReservation(b) => ("reservation", &b.reservation_id),
            WireCommand::PlaceOrder(b) => ("order", &b.order_id),
            WireCommand::Pay(b) => ("order", &b.order_id),
            WireCommand::Cancel(b) => ("order", &b.order_id),
            WireCommand::Ship(b) => ("order", &b.order_id),
            WireCommand::ConfirmDelivery(b) => ("order", &b.order_id),
            WireCommand::RequestReturn(b) => ("order", &b.order_id),
            WireCommand::ReceiveReturn(b) => ("order", &b.order_id),
            WireCommand::Refund(b) => ("order", &b.order_id),
        };
        let href = match kind {
            "product" => format!("stock/{id}"),
            "order" => format!("orders/{id}"),
            _ => format!("reservations/{id}"),
        };
        ResourceRef { kind, id: id.clone(), href }
    }

    /// The domain command; the domain validates every field.
    pub fn into_command(self) -> Command {
        match self {
            WireCommand::ListProduct(b) => Command::ListProduct {
                sku: b.sku.as_str().into(),
                title: b.title,
                category: b.category,
                price: b.price.0,
                weight_g: b.weight_g,
                low_stock_threshold: b.low_stock_threshold,
            },
            WireCommand::ChangePrice(b) => Command::ChangePrice { sku: b.sku.as_str().into(), price: b.price.0 },
            WireCommand::DelistProduct(b) => Command::DelistProduct { sku: b.sku.as_str().into() },
            WireCommand::RelistProduct(b) => Command::RelistProduct { sku: b.sku.as_str().into() },
            WireCommand::ReceiveStock(b) => Command::ReceiveStock {
                sku: b.sku.as_str().into(),
                quantity: b.quantity,
                unit_cost: b.unit_cost.0,
                supplier_ref: b.supplier_ref,
            },
            WireCommand::Stocktake(b) => Command::Stocktake {
                sku: b.sku.as_str().into(),
                counted: b.counted,
                reason: match b.reason {
                    ReasonBody::Loss => AdjustmentReason::Loss,
                    ReasonBody::Damage => AdjustmentReason::Damage,
                    ReasonBody::Found => AdjustmentReason::Found,
                    ReasonBody::Count => AdjustmentReason::Count,
                },
            },
            WireCommand::ReserveStock(b) => Command::ReserveStock {
                reservation_id: b.reservation_id.as_str().into(),
                lines: lines(b.lines),
                ttl_ms: b.ttl_ms,
            },
            WireCommand::ReleaseReservation(b) => {
                Command::ReleaseReservation { reservation_id: b.reservation_id.as_str().into() }
            }
            WireCommand::PlaceOrder(b) => Command::PlaceOrder {
                order_id: b.order_id.as_str().into(),
                customer_id: b.customer_id.as_str().into(),
                lines: lines(b.lines),
                region: b.region,
                reservation_id: b.reservation_id.as_deref().map(Into::into),
            },
            WireCommand::Pay(b) => Command::Pay {
                order_id: b.order_id.as_str().into(),
                payment_id: b.payment_id.as_str().into(),
                amount: b.amount.0,
            },
            WireCommand::Cancel(b) => Command::Cancel {
                order_id: b.order_id.as_str().into(),
                by: match b.by {
                    PartyBody::Buyer => Party::Buyer,
                    PartyBody::Shop => Party::Shop,
                },
                reason: b.reason,
            },
            WireCommand::Ship(b) => Command::Ship {
                order_id: b.order_id.as_str().into(),
                shipment_id: b.shipment_id.as_str().into(),
                carrier: b.carrier,
                tracking_number: b.tracking_number,
                lines: lines(b.lines),
            },
            WireCommand::ConfirmDelivery(b) => Command::ConfirmDelivery {
                order_id: b.order_id.as_str().into(),
                shipment_id: b.shipment_id.as_str().into(),
            },
            WireCommand::RequestReturn(b) => Command::RequestReturn {
                order_id: b.order_id.as_str().into(),
                return_id: b.return_id.as_str().into(),
                lines: lines(b.lines),
                reason: b.reason,
            },
            WireCommand::ReceiveReturn(b) => Command::ReceiveReturn {
                order_id: b.order_id.as_str().into(),
                return_id: b.return_id.as_str().into(),
                inspections: b
                    .inspections
                    .into_iter()
                    .map(|i| Inspection {
                        sku: i.sku.as_str().into(),
                        quantity: i.quantity,
                        condition: match i.condition {
                            ConditionBody::Resellable => Condition::Resellable,
                            ConditionBody::Damaged => Condition::Damaged,
                        },
                    })
                    .collect(),
            },
            WireCommand::Refund(b) => Command::Refund {
                order_id: b.order_id.as_str().into(),
                refund_id: b.refund_id.as_str().into(),
                amount: b.amount.0,
                return_id: b.return_id.as_deref().map(Into::into),
            },
        }
    }
}

/// One event of a receipt: its position, type and the fact.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct ReceiptEvent {
    /// Its position in the shop log.
    pub position: u64,
    /// The event type, e.g. `order_placed`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The fact, as `{"<type>": {fields}}`.
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub event: Event,
}

/// The answer to an accepted command. Retrying with the same command id returns the same
/// receipt, also after a restart: every field comes from the log.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Receipt {
    /// The command's id, given or generated.
    pub command_id: String,
    /// The first and last position of its events; `null` when it recorded none.
    pub positions: Option<PositionsBody>,
    /// What it recorded.
    pub events: Vec<ReceiptEvent>,
    /// The resource it acted on.
    pub resource: ResourceRef,
}

/// A range of log positions.
#[derive(Clone, Copy, Debug, Serialize, JsonSchema)]
pub struct PositionsBody {
    /// First position, inclusive.
    pub first: u64,
    /// Last position, inclusive.
    pub last: u64,
}

/// An event as the feed, the history and the export-free reads show it.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct EventLine {
    /// Position in the shop log, from 1.
    pub position: u64,
    /// `order-<id>`, `sku-<sku>` or `reservation-<id>`.
    pub stream: String,
    /// Version within the stream, from 1.
    pub stream_version: u64,
    /// Engine time, milliseconds since the epoch.
    pub recorded_at: u64,
    /// The command that recorded it.
    pub command_id: String,
    /// The business transaction.
    pub correlation_id: String,
    /// Who sent the command.
    pub actor: String,
    /// The event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The fact.
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub event: Event,
}

impl From<&Envelope> for EventLine {
    fn from(envelope: &Envelope) -> EventLine {
        EventLine {
            position: envelope.position,
            stream: envelope.stream.as_str().to_owned(),
            stream_version: envelope.stream_version,
            recorded_at: envelope.recorded_at.0,
            command_id: envelope.command_id.as_str().to_owned(),
            correlation_id: envelope.correlation_id.as_str().to_owned(),
            actor: envelope.actor.as_str().to_owned(),
            kind: envelope.event.kind().to_owned(),
            event: envelope.event.clone(),
        }
    }
}

/// A batch of commands.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// 1 to 1,000 commands, each `{"type": "<command>", ...its body}`, run in order.
    #[schemars(with = "Vec<WireCommand>")]
    pub commands: Vec<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_a_string_with_at_most_two_places() {
        let check = |json: &str, expected: Result<&str, &str>| {
            let parsed: Result<Money, _> = serde_json::from_str(json);
            match (parsed, expected) {
                (Ok(money), Ok(text)) => assert_eq!(money.0.to_string(), text, "{json}"),
                (Err(error), Err(part)) => assert!(error.to_string().contains(part), "{json}: {error}"),
                (got, want) => panic!("{json}: got {got:?}, want {want:?}"),
            }
        };
        check(r#""19.90""#, Ok("19.90"));
        check(r#""0""#, Ok("0"));
        check(r#""-5.5""#, Ok("-5.5"));
        check(r#""19.999""#, Err("at most 2 decimal places"));
        check(r#""19.900""#, Err("at most 2 decimal places"));
        check("19.9", Err("not a JSON number"));
        check("20", Err("not a JSON number"));
        check(r#""1e3""#, Err("decimal string"));
        check(r#""19.""#, Err("decimal string"));
        check(r#"" 19.90""#, Err("decimal string"));
        check(r#""+1""#, Err("decimal string"));
        check(r#""""#, Err("decimal string"));
        check(r#""99999999999999999999999999999""#, Err("decimal string"));
    }

    #[test]
    fn a_batch_item_is_a_tagged_body_and_refuses_unknown_fields() {
        let item = serde_json::json!({"type": "pay", "order_id": "O-1", "payment_id": "P-1", "amount": "19.90"});
        let parsed: WireCommand = serde_json::from_value(item).expect("parses");
        assert_eq!(parsed.kind(), "pay");
        let extra = serde_json::json!({"type": "pay", "order_id": "O-1", "payment_id": "P", "amount": "1", "x": 1});
        let error = serde_json::from_value::<WireCommand>(extra).expect_err("refused");
        assert!(error.to_string().contains("unknown field `x`"), "{error}");
    }
}
