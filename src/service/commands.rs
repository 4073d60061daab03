//! Command routes: one per command, and `/commands` for batches.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::error::{ApiError, ErrorBody, rejection_status, sentence};
use super::wire::{BatchBody, PositionsBody, Receipt, ReceiptEvent, ResourceRef, WireCommand};
use super::{Access, App, AppState, Params, read_body, record, shop_and_params};
use crate::domain::ids::{CommandId, ShopId};
use crate::domain::rejection::Rejection;
use crate::engine::{Accepted, CommandError, Request};

/// The HTTP method of a command route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// POST.
    Post,
    /// DELETE.
    Delete,
}

/// A command route: path parameters are named after the body fields they fill.
#[derive(Debug)]
pub struct Route {
    /// The method.
    pub method: Verb,
    /// The path below `/v1/shops/{shop}`.
    pub path: &'static str,
    /// The command's `type`.
    pub kind: &'static str,
    /// What it does, for the API description.
    pub summary: &'static str,
}

const fn post(path: &'static str, kind: &'static str, summary: &'static str) -> Route {
    Route { method: Verb::Post, path, kind, summary }
}

/// Every command route.
pub static ROUTES: &[Route] = &[
    post("/products", "list_product", "List a new product"),
    post("/products/{sku}/price", "change_price", "Change the price of later orders"),
    post("/products/{sku}/delist", "delist_product", "Stop selling a product"),
    post("/products/{sku}/relist", "relist_product", "Sell a delisted product again"),
    post("/products/{sku}/receipts", "receive_stock", "Receive stock from a supplier"),
    post("/products/{sku}/stocktakes", "stocktake", "Record a count of the shelf"),
    post("/reservations", "reserve_stock", "Hold stock for a checkout, all lines or none"),
    Route {
        method: Verb::Delete,
        path: "/reservations/{reservation_id}",
        kind: "release_reservation",
        summary: "Release a checkout hold",
    },
    post("/orders", "place_order", "Place an order at the current prices"),
    post("/orders/{order_id}/payments", "pay", "Pay an order in full"),
    post("/orders/{order_id}/cancel", "cancel", "Cancel an order before it ships; a paid order is refunded"),
    post("/orders/{order_id}/shipments", "ship", "Ship a parcel of a paid order"),
    post("/orders/{order_id}/shipments/{shipment_id}/delivery", "confirm_delivery", "Confirm a parcel arrived"),
    post("/orders/{order_id}/returns", "request_return", "Ask to return shipped units"),
    post("/orders/{order_id}/returns/{return_id}/receipt", "receive_return", "Record a returned parcel's inspection"),
    post("/orders/{order_id}/refunds", "refund", "Give money back, with or without a return"),
];

/// The name of the header that makes a retry safe.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn invalid_body(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_body", message)
}

/// Parses a body into a JSON object; an empty body is an empty object.
fn object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("malformed_json", sentence(&format!("the body is not valid JSON: {e}"))))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(invalid_body("The body must be a JSON object.")),
    }
}

/// A command from a batch item or a route body with its path parameters filled in.
fn parse_command(
    mut fields: Map<String, Value>,
    kind: &str,
    params: &[(String, String)],
) -> Result<WireCommand, ApiError> {
    for (name, value) in params {
        if fields.contains_key(name) {
            return Err(invalid_body(format!("The field {name} comes from the path; leave it out of the body.")));
        }
        fields.insert(name.clone(), Value::String(value.clone()));
    }
    if fields.contains_key("type") {
        return Err(invalid_body("The field type comes from the route; leave it out of the body."));
    }
    fields.insert("type".to_owned(), Value::String(kind.to_owned()));
    serde_json::from_value(Value::Object(fields)).map_err(|e| invalid_body(sentence(&e.to_string())))
}

/// The command id: the `Idempotency-Key` header or the body's `command_id`, which must agree.
fn command_id(headers: &HeaderMap, body_id: Option<&str>) -> Result<Option<CommandId>, ApiError> {
    let header = match headers.get(IDEMPOTENCY_KEY) {
        Some(value) => Some(value.to_str().map_err(|_| {
            ApiError::bad_request("invalid_idempotency_key", "The Idempotency-Key header must be printable ASCII.")
        })?),
        None => None,
    };
    let id = match (header, body_id) {
        (Some(header), Some(body)) if header != body => {
            return Err(ApiError::bad_request(
                "idempotency_key_mismatch",
                "The Idempotency-Key header and the body's command_id differ.",
            ));
        }
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => return Ok(None),
    };
    CommandId::new(id).map(Some).map_err(|reason| {
        ApiError::bad_request("invalid_idempotency_key", sentence(&format!("invalid idempotency key: {reason}")))
    })
}

/// A receipt, from the engine's answer or, for a repeat, from the log.
async fn receipt(app: &App, shop: &ShopId, resource: ResourceRef, accepted: Accepted) -> Result<Receipt, ApiError> {
    let events: Vec<ReceiptEvent> = match accepted.positions {
        None => Vec::new(),
        Some(positions) if accepted.replayed => {
            let count = usize::try_from(positions.last - positions.first + 1).unwrap_or(usize::MAX);
            let envelopes =
                app.engine.store().read_from(shop, positions.first - 1, count).await.map_err(ApiError::storage)?;
            envelopes
                .into_iter()
                .filter(|e| e.command_id == accepted.command_id)
                .map(|e| ReceiptEvent { position: e.position, kind: e.event.kind(), event: e.event })
                .collect()
        }
        Some(positions) => (positions.first..)
            .zip(accepted.events)
            .map(|(position, event)| ReceiptEvent { position, kind: event.kind(), event })
            .collect(),
    };
    Ok(Receipt {
        command_id: accepted.command_id.as_str().to_owned(),
        positions: accepted.positions.map(|p| PositionsBody { first: p.first, last: p.last }),
        events,
        resource,
    })
}

/// The body of one command's answer: a receipt, serialized straight to the response on the
/// single-command routes (no JSON tree in between), or an error.
enum AnswerBody {
    Receipt(Box<Receipt>),
    /// A refusal by the shop's rules, written straight from the rejection.
    Refused(Rejection),
    Error(ApiError),
}

impl AnswerBody {
    /// The body as a JSON tree, for a batch's results.
    fn into_value(self) -> Value {
        match self {
            AnswerBody::Receipt(receipt) => {
                serde_json::to_value(&receipt).unwrap_or_else(|e| json!({"error": e.to_string()}))
            }
            AnswerBody::Refused(rejection) => ErrorBody::refusal(&rejection).tree(),
            AnswerBody::Error(error) => error.into_body(),
        }
    }

    fn into_response(self, status: StatusCode) -> Response {
        match self {
            AnswerBody::Receipt(receipt) => (status, axum::Json(receipt)).into_response(),
            AnswerBody::Refused(rejection) => (status, axum::Json(ErrorBody::refusal(&rejection))).into_response(),
            AnswerBody::Error(error) => (status, axum::Json(error.wire())).into_response(),
        }
    }
}

/// Runs one parsed command; the answer's status, body and whether it repeats an earlier one.
async fn run(
    app: &App,
    shop: &ShopId,
    actor: &str,
    command: WireCommand,
    id: Option<CommandId>,
) -> (StatusCode, AnswerBody, &'static str) {
    let (created, resource) = (command.creates(), command.resource());
    let request =
        Request { command_id: id, correlation_id: None, actor: actor.to_owned(), command: command.into_command() };
    match app.engine.execute(shop, request).await {
        Ok(accepted) => {
            let replayed = accepted.replayed;
            match receipt(app, shop, resource, accepted).await {
                Ok(receipt) => {
                    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
                    let body = AnswerBody::Receipt(Box::new(receipt));
                    (status, body, if replayed { "replayed" } else { "accepted" })
                }
                Err(error) => (error.status, AnswerBody::Error(error), "unavailable"),
            }
        }
        Err(error) => {
            let outcome = match &error {
                CommandError::Rejected(_) => "rejected",
                CommandError::IdempotencyConflict { .. } => "idempotency_conflict",
                CommandError::InvalidRequest(_) => "invalid",
                CommandError::UnknownShop(_) => "unknown_shop",
                CommandError::Overloaded(_) => "overloaded",
                CommandError::Unavailable { .. } => "unavailable",
            };
            match error {
                // Written straight from the rejection, not through an `ApiError`.
                CommandError::Rejected(rejection) => {
                    (rejection_status(&rejection), AnswerBody::Refused(rejection), outcome)
                }
                error => {
                    let error = ApiError::from(error);
                    (error.status, AnswerBody::Error(error), outcome)
                }
            }
        }
    }
}

/// A command route.
pub async fn single(
    State(app): AppState,
    route: &'static Route,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let answer = async {
        let principal = app.authorize(&headers, Access::Command)?;
        let (shop, params) = shop_and_params(params)?;
        let bytes = read_body(&headers, body, app.config.body_bytes_max).await?;
        // Straight from the body only where the path fills in nothing.
        let straight = if params.is_empty() { WireCommand::from_body(route.kind, &bytes) } else { None };
        let command = match straight {
            Some(command) => command,
            None => parse_command(object(&bytes)?, route.kind, &params)?,
        };
        let id = command_id(&headers, command.command_id())?;
        let (status, body, outcome) = run(&app, &shop, &principal.name, command, id).await;
        Ok::<_, ApiError>((shop, status, body, outcome))
    }
    .await;
    match answer {
        Ok((shop, status, body, outcome)) => {
            record(&app, route.kind, outcome, started);
            // A created resource is where its receipt says it is.
            let location = match &body {
                AnswerBody::Receipt(receipt) if status == StatusCode::CREATED => {
                    HeaderValue::from_str(&format!("/v1/shops/{shop}/{}", receipt.resource.href)).ok()
                }
                _ => None,
            };
            let mut response = body.into_response(status);
            if let Some(location) = location {
                response.headers_mut().insert(header::LOCATION, location);
            }
            if outcome == "replayed" {
                response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            if status == StatusCode::SERVICE_UNAVAILABLE {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            response
        }
        Err(error) => {
            let outcome = match error.status {
                StatusCode::UNAUTHORIZED => "unauthorized",
                StatusCode::FORBIDDEN => "forbidden",
                StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                _ => "invalid",
            };
            record(&app, route.kind, outcome, started);
            error.into_response()
        }
    }
}

/// `/commands`: up to `batch_commands_max` commands, each answered on its own, in order.
pub async fn batch(State(app): AppState, params: Params, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let started = Instant::now();
    let principal = app.authorize(&headers, Access::Command)?;
    let (shop, _) = shop_and_params(params)?;
    if headers.contains_key(IDEMPOTENCY_KEY) {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "A batch takes no Idempotency-Key header; give each command its own command_id.",
        ));
    }
    let bytes = read_body(&headers, body, app.config.body_bytes_max).await?;
    let batch: BatchBody =
        serde_json::from_value(Value::Object(object(&bytes)?)).map_err(|e| invalid_body(sentence(&e.to_string())))?;
    let items = batch.commands;
    let max = app.config.batch_commands_max;
    if items.is_empty() || items.len() > max {
        return Err(ApiError::bad_request(
            "invalid_batch",
            format!("A batch holds 1 to {max} commands, not {}.", items.len()),
        )
        .with_details(json!({"limit": max, "commands": items.len()})));
    }
    // Parse every item first, then submit them all at once so they share group commits.
    let parsed: Vec<_> = items.into_iter().map(batch_item).collect();
    let runs = parsed.into_iter().map(|item| run_item(&app, &shop, &principal.name, item, started));
    let results: Vec<Value> = futures_util::future::join_all(runs).await.into_iter().map(batch_result).collect();
    Ok(axum::Json(json!({"results": results})).into_response())
}

/// One item of a batch, read, with its command id.
fn batch_item(item: Value) -> Result<(WireCommand, Option<CommandId>), ApiError> {
    let Value::Object(mut fields) = item else { return Err(invalid_body("Every command must be a JSON object.")) };
    let kind = match fields.remove("type") {
        Some(Value::String(kind)) => kind,
        _ => return Err(invalid_body("Every command needs a type, such as \"place_order\".")),
    };
    let command = parse_command(fields, &kind, &[])?;
    let id = command_id(&HeaderMap::new(), command.command_id())?;
    Ok((command, id))
}

/// Runs one item of a batch, or answers what was wrong with it; its status and body.
async fn run_item(
    app: &App,
    shop: &ShopId,
    actor: &str,
    item: Result<(WireCommand, Option<CommandId>), ApiError>,
    started: Instant,
) -> (StatusCode, Value) {
    match item {
        Ok((command, id)) => {
            let kind = command.kind();
            let (status, body, outcome) = run(app, shop, actor, command, id).await;
            record(app, kind, outcome, started);
            (status, body.into_value())
        }
        Err(error) => {
            record(app, "unknown", "invalid", started);
            (error.status, error.into_body())
        }
    }
}

/// One result of a batch: its status, and its receipt or its error's fields.
fn batch_result((status, body): (StatusCode, Value)) -> Value {
    let mut result = Map::new();
    result.insert("status".to_owned(), json!(status.as_u16()));
    if let Value::Object(fields) = body {
        if fields.contains_key("error") {
            result.extend(fields);
        } else {
            result.insert("receipt".to_owned(), Value::Object(fields));
        }
    }
    Value::Object(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_parameters_fill_the_body_and_may_not_be_repeated_in_it() {
        let params = vec![("order_id".to_owned(), "O-1".to_owned())];
        let body = object(br#"{"payment_id": "P-1", "amount": "19.90"}"#).expect("object");
        let command = parse_command(body, "pay", &params).expect("parses");
        assert_eq!(command.resource().id, "O-1");
        let body = object(br#"{"order_id": "O-2", "payment_id": "P-1", "amount": "19.90"}"#).expect("object");
        let error = parse_command(body, "pay", &params).expect_err("refused");
        assert_eq!(error.code, "invalid_body");
        assert_eq!(object(b"  ").expect("empty is an object").len(), 0);
        assert_eq!(object(b"[1]").expect_err("not an object").code, "invalid_body");
        assert_eq!(object(b"{").expect_err("malformed").code, "malformed_json");
    }

    /// The body read straight, and through the checked path, for a route without path
    /// parameters: `expected` is what both give, or `None` where only the checked path reads it.
    fn check(kind: &str, body: &str, expected: Option<&str>) {
        let direct = WireCommand::from_body(kind, body.as_bytes()).map(|c| format!("{c:?}"));
        let checked = object(body.as_bytes()).and_then(|fields| parse_command(fields, kind, &[]));
        let checked = checked.map(|c| format!("{c:?}")).map_err(|e| e.code);
        match (&direct, expected) {
            // Whatever is read straight is exactly what the checked path reads.
            (Some(direct), Some(expected)) => {
                assert!(direct.contains(expected), "{kind} {body}: {direct}");
                assert_eq!(checked.as_ref(), Ok(direct), "{kind} {body}");
            }
            (None, None) => {}
            _ => panic!("{kind} {body}: read straight as {direct:?}, expected {expected:?} (checked: {checked:?})"),
        }
    }

    #[test]
    fn a_body_read_straight_is_what_the_checked_path_reads() {
        let order =
            r#"{"order_id": "O-1", "customer_id": "C-1", "region": "zj", "lines": [{"sku": "S-1", "quantity": 2}]}"#;
        check("place_order", order, Some(r#"PlaceOrder(PlaceOrderBody { command_id: None, order_id: "O-1""#));
        let with_id =
            r#" {"command_id": "k-1", "order_id": "O-1", "customer_id": "C-1", "region": "zj", "lines": []} "#;
        check("place_order", with_id, Some(r#"command_id: Some("k-1")"#));
        let product = r#"{"sku": "S-1", "title": "Tea", "category": "tea", "price": "9.90", "weight_g": 100, "low_stock_threshold": 5}"#;
        check("list_product", product, Some("ListProduct(ListProductBody"));
        let hold = r#"{"reservation_id": "R-1", "lines": [{"sku": "S-1", "quantity": 1}], "ttl_ms": 60000}"#;
        check("reserve_stock", hold, Some("ReserveStock(ReserveBody"));
        // Left to the checked path, which explains or, for repeated fields, takes the last.
        check("place_order", r#"{"type": "place_order", "order_id": "O-1"}"#, None);
        check("place_order", r#"["O-1", "C-1", [], "zj", null]"#, None);
        check(
            "place_order",
            r#"{"order_id": "O-1", "order_id": "O-2", "customer_id": "C-1", "region": "zj", "lines": []}"#,
            None,
        );
        check("place_order", "", None);
        check("place_order", r#"{"order_id": "O-1"} trailing"#, None);
        check("pay", r#"{"order_id": "O-1", "payment_id": "P-1", "amount": "1.00"}"#, None);
    }

    #[test]
    fn every_route_names_a_command_type() {
        for route in ROUTES {
            let fields = Map::new();
            let error = parse_command(fields, route.kind, &[]).expect_err("missing fields");
            assert!(!error.message.contains("unknown variant"), "{}: {}", route.kind, error.message);
        }
    }
}
