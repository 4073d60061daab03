//! The JSON the service reads and writes: money, the command bodies, receipts and event lines.
//!
//! Request bodies are strict: unknown fields are refused, money is a decimal string with at
//! most two places, quantities are non-negative integers. Every command body has the same
//! shape in a batch (with its `type`) as on its own route (where the path supplies the ids).
//! The bodies themselves are declared in `bodies.rs` and [`WireCommand`] in the command table
//! (`table.rs`); both are re-exported here, so that `wire::PayBody` and the like keep their
//! paths.

use std::borrow::Cow;
use std::str::FromStr;

use rust_decimal::Decimal;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize};

use crate::domain::event::Event;
use crate::domain::money::MONEY_SCALE;
use crate::log::record::Envelope;

pub use super::bodies::{
    CancelBody, ChangePriceBody, ConditionBody, DelistBody, DeliveryBody, InspectionBody, LineBody, ListProductBody,
    PartyBody, PayBody, PlaceOrderBody, ReasonBody, ReceiveStockBody, RefundBody, ReleaseBody, RelistBody, ReserveBody,
    ReturnBody, ReturnReceiptBody, ShipBody, StocktakeBody,
};
pub use super::table::WireCommand;

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
