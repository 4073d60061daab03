//! The command routes: one a command (the table's [`ROUTES`](super::table::ROUTES)), and
//! `/commands` for batches.
//!
//! A command is authorized, its body read (by `parse`), its command id taken from the
//! `Idempotency-Key` header or the body, and it is run on the engine; the answer is a receipt
//! (200, or 201 with a `Location` when it created a resource), a refusal by the shop's rules,
//! or another error. A batch reads every item first and submits them all at once, so they
//! share group commits; each item is answered on its own, in order.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::error::{ApiError, ErrorBody, rejection_status, sentence};
use super::parse;
use super::table::{Route, WireCommand};
use super::wire::{PositionsBody, Receipt, ReceiptEvent, ResourceRef};
use super::{Access, App, AppState, Params, read_body, record, shop_and_params};
use crate::domain::ids::{CommandId, ShopId};
use crate::domain::rejection::Rejection;
use crate::engine::{Accepted, CommandError, Request};

/// The name of the header that makes a retry safe.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The command id: the `Idempotency-Key` header or the body's `command_id`, which must agree.
/// The header may be given once: a repeated one is refused, since which copy counts is
/// anybody's guess.
fn command_id(headers: &HeaderMap, body_id: Option<&str>) -> Result<Option<CommandId>, ApiError> {
    if headers.get_all(IDEMPOTENCY_KEY).iter().nth(1).is_some() {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "The Idempotency-Key header is given more than once; give it once.",
        ));
    }
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
        principal.may_use(&shop)?;
        let bytes = read_body(&headers, body, app.config.body_bytes_max).await?;
        let command = parse::command(route, &bytes, &params)?;
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
    principal.may_use(&shop)?;
    if headers.contains_key(IDEMPOTENCY_KEY) {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "A batch takes no Idempotency-Key header; give each command its own command_id.",
        ));
    }
    let bytes = read_body(&headers, body, app.config.body_bytes_max).await?;
    let items = parse::batch(&bytes)?;
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
    let command = parse::item(item)?;
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
