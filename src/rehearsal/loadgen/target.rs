//! Where a rehearsal sends its commands: an engine in this process, or a running server.
//!
//! A [`Link`] is one submitter's way in: a handle on the engine, or one HTTP/1.1 keep-alive
//! connection that carries one command per request (the way a storefront sends them).
//! Either way a command comes back [`Answer::Accepted`], [`Answer::Refused`] by the shop's
//! rules, or fails; only the first two are outcomes a rehearsal counts.

use std::sync::Arc;

use serde_json::{Value, json};

use rust_decimal::Decimal;

use crate::domain::command::{Command, Line};
use crate::domain::ids::{CommandId, CustomerId, OrderId, PaymentId, ShopId};
use crate::domain::rejection::Rejection;
use crate::engine::{CommandError, Engine, Request};

use super::RunClock;
use super::http::Connection;

/// Where a rehearsal sends its commands.
#[derive(Clone)]
pub enum Target {
    /// An engine in this process; the run moves its clock.
    InProcess {
        /// The engine.
        engine: Arc<Engine>,
        /// Its clock.
        clock: Arc<RunClock>,
    },
    /// A running `emporium serve`; its clock is the server's.
    Http {
        /// `host:port`.
        address: String,
        /// A bearer token with the admin role, when the server asks for tokens.
        token: Option<String>,
    },
}

impl Target {
    /// Parses `inprocess` or `http://host:port`; the engine is opened by the caller.
    pub fn parse_address(text: &str) -> Result<Option<String>, String> {
        if text == "inprocess" {
            return Ok(None);
        }
        let Some(rest) = text.strip_prefix("http://") else {
            return Err(format!("--target takes `inprocess` or `http://HOST:PORT`, not {text:?}"));
        };
        let address = rest.trim_end_matches('/');
        let valid = !address.is_empty()
            && !address.contains('/')
            && address.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid {
            return Err(format!("--target http://HOST:PORT: {text:?} names no host and port"));
        }
        Ok(Some(address.to_owned()))
    }

    /// One way in for one submitter.
    pub async fn link(&self) -> Result<Link, String> {
        match self {
            Target::InProcess { engine, .. } => Ok(Link::Engine(engine.clone())),
            Target::Http { address, token } => Ok(Link::Http(Connection::open(address, token.as_deref()).await?)),
        }
    }
}

/// How the shop answered a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Accepted and durable; it recorded this many events (none when a retry repeated it).
    Accepted {
        /// Events recorded.
        events: u64,
    },
    /// Refused by the shop's rules; nothing changed.
    Refused {
        /// The rejection's stable code.
        code: String,
        /// SKUs it named as short of stock.
        short_skus: Vec<String>,
    },
}

/// One submitter's way in.
pub enum Link {
    /// Straight to the engine.
    Engine(Arc<Engine>),
    /// One keep-alive HTTP/1.1 connection.
    Http(Connection),
}

impl Link {
    /// Sends `command` with command id `id` as `actor`, and waits for its durable answer.
    pub async fn send(&mut self, shop: &ShopId, id: &str, actor: &str, command: Command) -> Result<Answer, String> {
        match self {
            Link::Engine(engine) => {
                let command_id = CommandId::new(id).map_err(|e| format!("command id {id}: {e}"))?;
                let request = Request::new(actor, command).with_id(command_id);
                match engine.execute(shop, request).await {
                    Ok(accepted) => Ok(Answer::Accepted { events: accepted.events.len() as u64 }),
                    Err(CommandError::Rejected(rejection)) => Ok(refused(&rejection)),
                    Err(error) => Err(format!("{id}: {error}")),
                }
            }
            Link::Http(connection) => {
                let (path, body) = route(&command).ok_or_else(|| format!("{id}: no route for this command"))?;
                let path = format!("/v1/shops/{shop}{path}");
                let body = serde_json::to_vec(&body).map_err(|e| format!("{id}: {e}"))?;
                let (status, answer) = connection.request("POST", &path, Some(id), Some(&body)).await?;
                // Read into the few fields a run counts, not into a tree of the whole answer.
                let not_json = |e| not_json(&path, status, e);
                match status {
                    200 | 201 => {
                        let receipt: ReceiptEvents = serde_json::from_slice(answer).map_err(not_json)?;
                        Ok(Answer::Accepted { events: receipt.events.len() as u64 })
                    }
                    // Refused by the shop's rules; any other status is a failure of the run.
                    409 => {
                        let refusal: Refusal = serde_json::from_slice(answer).map_err(not_json)?;
                        let shortages = refusal.error.details.map(|d| d.shortages).unwrap_or_default();
                        let short_skus = shortages.into_iter().map(|s| s.sku).collect();
                        Ok(Answer::Refused { code: refusal.error.code, short_skus })
                    }
                    status => Err(format!("{id}: {status} {}", String::from_utf8_lossy(answer))),
                }
            }
        }
    }

    /// An HTTP request without a body on this connection: its status and JSON answer
    /// (`null` when empty). Only for HTTP links; commands go through [`Link::send`].
    pub async fn http(&mut self, method: &str, path: &str) -> Result<(u16, Value), String> {
        let Link::Http(connection) = self else {
            return Err("an in-process target has no HTTP".to_owned());
        };
        let (status, answer) = connection.request(method, path, None, None).await?;
        let value = if answer.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(answer).map_err(|e| not_json(path, status, e))?
        };
        Ok((status, value))
    }

    /// `GET path`, which must answer 200.
    pub async fn get(&mut self, path: &str) -> Result<Value, String> {
        match self.http("GET", path).await? {
            (200, value) => Ok(value),
            (status, value) => Err(format!("GET {path}: {status} {value}")),
        }
    }
}

fn not_json(path: &str, status: u16, error: serde_json::Error) -> String {
    format!("{path}: {status} with a body that is not JSON: {error}")
}

/// The part of a receipt a run reads: how many events it recorded.
#[derive(serde::Deserialize)]
struct ReceiptEvents {
    events: Vec<serde::de::IgnoredAny>,
}

/// The part of a refusal a run reads: its code and the SKUs short of stock.
#[derive(serde::Deserialize)]
struct Refusal {
    error: RefusalError,
}

#[derive(serde::Deserialize)]
struct RefusalError {
    code: String,
    /// `null` or absent for refusals that name nothing.
    #[serde(default)]
    details: Option<RefusalDetails>,
}

#[derive(serde::Deserialize)]
struct RefusalDetails {
    #[serde(default)]
    shortages: Vec<ShortSku>,
}

#[derive(serde::Deserialize)]
struct ShortSku {
    sku: String,
}

fn refused(rejection: &Rejection) -> Answer {
    let short_skus = match rejection {
        Rejection::InsufficientStock { shortages } => shortages.iter().map(|s| s.sku.as_str().to_owned()).collect(),
        _ => Vec::new(),
    };
    Answer::Refused { code: rejection.code().to_owned(), short_skus }
}

/// A request body. The hot routes (placing and paying an order) are written straight from
/// the command; the others, sent once per order at most, go through a JSON value.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Body<'a> {
    Place {
        order_id: &'a OrderId,
        customer_id: &'a CustomerId,
        /// Each `{"sku", "quantity"}`.
        lines: &'a [Line],
        region: &'a str,
    },
    Pay {
        payment_id: &'a PaymentId,
        /// A string, as every amount on the wire (the decimal's `serde-str` form).
        amount: &'a Decimal,
    },
    Value(Value),
}

/// The route and body of each command a rehearsal sends; `None` for the others.
fn route(command: &Command) -> Option<(String, Body<'_>)> {
    Some(match command {
        Command::ListProduct { sku, title, category, price, weight_g, low_stock_threshold } => (
            "/products".to_owned(),
            Body::Value(json!({"sku": sku, "title": title, "category": category, "price": price,
                   "weight_g": weight_g, "low_stock_threshold": low_stock_threshold})),
        ),
        Command::ReceiveStock { sku, quantity, unit_cost, supplier_ref } => (
            format!("/products/{sku}/receipts"),
            Body::Value(json!({"quantity": quantity, "unit_cost": unit_cost, "supplier_ref": supplier_ref})),
        ),
        Command::PlaceOrder { order_id, customer_id, lines, region, reservation_id: None } => {
            ("/orders".to_owned(), Body::Place { order_id, customer_id, lines, region })
        }
        Command::Pay { order_id, payment_id, amount } => {
            (format!("/orders/{order_id}/payments"), Body::Pay { payment_id, amount })
        }
        Command::Ship { order_id, shipment_id, carrier, tracking_number, lines } => (
            format!("/orders/{order_id}/shipments"),
            Body::Value(json!({"shipment_id": shipment_id, "carrier": carrier,
                   "tracking_number": tracking_number, "lines": lines})),
        ),
        Command::ConfirmDelivery { order_id, shipment_id } => {
            (format!("/orders/{order_id}/shipments/{shipment_id}/delivery"), Body::Value(json!({})))
        }
        Command::RequestReturn { order_id, return_id, lines, reason } => (
            format!("/orders/{order_id}/returns"),
            Body::Value(json!({"return_id": return_id, "lines": lines, "reason": reason})),
        ),
        // Each inspection as `{"sku", "quantity", "condition"}`, the condition in snake_case.
        Command::ReceiveReturn { order_id, return_id, inspections } => (
            format!("/orders/{order_id}/returns/{return_id}/receipt"),
            Body::Value(json!({"inspections": inspections})),
        ),
        Command::Refund { order_id, refund_id, amount, return_id } => (
            format!("/orders/{order_id}/refunds"),
            Body::Value(json!({"refund_id": refund_id, "amount": amount, "return_id": return_id})),
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_inprocess_or_an_http_address() {
        let check = |text: &str, expected: Result<Option<&str>, &str>| {
            let parsed = Target::parse_address(text);
            match (parsed, expected) {
                (Ok(address), Ok(want)) => assert_eq!(address.as_deref(), want, "{text}"),
                (Err(error), Err(part)) => assert!(error.contains(part), "{text}: {error}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        };
        check("inprocess", Ok(None));
        check("http://127.0.0.1:8080", Ok(Some("127.0.0.1:8080")));
        check("http://localhost:80/", Ok(Some("localhost:80")));
        check("https://127.0.0.1:8080", Err("inprocess"));
        check("http://127.0.0.1", Err("no host and port"));
        check("http://:80", Err("no host and port"));
        check("http://h:80/v1", Err("no host and port"));
        check("127.0.0.1:80", Err("inprocess"));
    }
}
