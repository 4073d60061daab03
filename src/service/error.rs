//! Errors as the service answers them: `{"error": {"code", "message", "details"}}`.
//!
//! Statuses: 400 malformed or invalid request (`duplicate_key` for a key repeated in a
//! body, `invalid_idempotency_key` for a repeated header too), 401 missing or bad token,
//! 403 role not allowed or a shop the token may not use, 404 unknown shop, order, SKU,
//! shipment, return or reservation, 409 refused by the current state or an idempotency
//! conflict, 413 body too large, 429 `shop_limit_reached` when creating a shop past the
//! server's limit, 503 (with `Retry-After`) when a shop's queue is full, a shop is healing
//! or quarantined, or too many event streams are open. Only a failure of the server itself
//! is another 5xx.
//!
//! The server's own limits ([`super::server`]): 400 `malformed_request` (a request head
//! that cannot be read, such as a control byte in the path), 408 `body_timeout`, 414
//! `uri_too_long`, 431 `header_too_large`, 503 `too_many_connections` (with `Retry-After`),
//! and 500 `internal_error` when a request handler panicked (a bug, logged).
//!
//! One writer: every error answer, a batch's error results included, is an [`ErrorBody`]
//! serialized, either borrowed from an [`ApiError`] ([`ApiError::wire`]) or written straight
//! from a refusal by the shop's rules ([`ErrorBody::refusal`]); the same type describes the
//! shape in the API description. A refusal's status is [`rejection_status`], its code the
//! rejection's own.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::domain::rejection::Rejection;
use crate::engine::CommandError;

/// An error answer.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable snake_case code.
    pub code: &'static str,
    /// A sentence for a person.
    pub message: String,
    /// Machine-readable particulars; an object.
    pub details: Value,
}

/// The error body, for the API description.
//
// The same type is what every answer writes: it borrows an `ApiError`'s fields
// (`ApiError::wire`) or a rejection (`ErrorBody::refusal`), so the description and the
// answers cannot drift apart.
#[derive(Serialize, JsonSchema)]
pub struct ErrorBody<'a> {
    /// The error.
    pub error: ErrorFields<'a>,
}

/// The fields of an error.
#[derive(Serialize, JsonSchema)]
pub struct ErrorFields<'a> {
    /// A stable snake_case code such as `insufficient_stock`.
    code: &'a str,
    /// A sentence for a person.
    #[schemars(with = "String")]
    message: Message<'a>,
    /// Particulars: the field, the SKU, the amounts.
    #[schemars(with = "Map<String, Value>")]
    details: Details<'a>,
}

/// An error's message: a sentence already written, or a rejection's, capitalized as it is
/// formatted.
enum Message<'a> {
    Text(&'a str),
    Refusal(&'a Rejection),
}

impl Serialize for Message<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Message::Text(text) => serializer.serialize_str(text),
            Message::Refusal(rejection) => Sentence(rejection).serialize(serializer),
        }
    }
}

/// An error's details: a tree already built, or a rejection's fields. Most refusals on a
/// promotion day are `insufficient_stock`, whose details are written straight; the rarer
/// ones go through the tree.
enum Details<'a> {
    Tree(&'a Value),
    Refusal(&'a Rejection),
}

impl Serialize for Details<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        match self {
            Details::Tree(tree) => tree.serialize(serializer),
            Details::Refusal(Rejection::InsufficientStock { shortages }) => {
                let mut details = serializer.serialize_struct("InsufficientStock", 1)?;
                details.serialize_field("shortages", shortages)?;
                details.end()
            }
            Details::Refusal(other) => rejection_details(other).serialize(serializer),
        }
    }
}

impl ErrorBody<'_> {
    /// A refusal by the shop's rules, written straight from the rejection: no message
    /// string or details tree is built first.
    pub fn refusal(rejection: &Rejection) -> ErrorBody<'_> {
        let (message, details) = (Message::Refusal(rejection), Details::Refusal(rejection));
        ErrorBody { error: ErrorFields { code: rejection.code(), message, details } }
    }

    /// The body as a tree, for a batch's results.
    pub fn tree(&self) -> Value {
        // Cannot fail: every part serializes to JSON, and every key is a string.
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl ApiError {
    /// An error without details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), details: json!({}) }
    }

    /// The same error with details.
    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = details;
        self
    }

    /// 400 for a request the service cannot read.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 503 for a store that failed underneath a request.
    pub fn storage(error: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", sentence(&error.to_string()))
    }

    /// A shop creation refused: 429 `shop_limit_reached` when the engine serves its limit
    /// of shops (nothing was created), else 503 for a store that failed.
    pub fn from_open(error: crate::engine::OpenError) -> ApiError {
        match error {
            crate::engine::OpenError::ShopLimitReached { shops_max } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "shop_limit_reached",
                format!("The server serves {shops_max} shops, its limit; no shop was created."),
            )
            .with_details(json!({"shops_max": shops_max})),
            error => ApiError::storage(error),
        }
    }

    /// The JSON body as a tree, for a batch's results: [`ApiError::wire`] serialized.
    pub fn into_body(self) -> Value {
        self.wire().tree()
    }

    /// The JSON body, borrowed, to serialize straight into a response: no tree between.
    pub fn wire(&self) -> ErrorBody<'_> {
        let (message, details) = (Message::Text(&self.message), Details::Tree(&self.details));
        ErrorBody { error: ErrorFields { code: self.code, message, details } }
    }

    /// A refusal by the shop's rules as an error, for a read that checks an id the way a
    /// command does: its message and details are what [`ErrorBody::refusal`] writes.
    pub fn from_rejection(rejection: &Rejection) -> ApiError {
        ApiError {
            status: rejection_status(rejection),
            code: rejection.code(),
            message: Sentence(rejection).to_string(),
            details: serde_json::to_value(Details::Refusal(rejection)).unwrap_or_else(|_| json!({})),
        }
    }
}

/// The status of a refusal by the shop's rules.
pub fn rejection_status(rejection: &Rejection) -> StatusCode {
    match rejection {
        Rejection::InvalidInput { .. } => StatusCode::BAD_REQUEST,
        Rejection::UnknownSku { .. }
        | Rejection::UnknownReservation { .. }
        | Rejection::UnknownOrder { .. }
        | Rejection::UnknownShipment { .. }
        | Rejection::UnknownReturn { .. } => StatusCode::NOT_FOUND,
        _ => StatusCode::CONFLICT,
    }
}

/// A refusal's details as a tree: the rejection serializes as `{"Variant": {fields}}`, and
/// its fields are the details.
fn rejection_details(rejection: &Rejection) -> Value {
    match serde_json::to_value(rejection) {
        Ok(Value::Object(map)) => map.into_iter().next().map_or(json!({}), |(_, fields)| fields),
        _ => json!({}),
    }
}

/// Starts a message with a capital letter and ends it with a full stop.
pub fn sentence(text: &str) -> String {
    Sentence(text).to_string()
}

/// What [`sentence`] makes of a text, written as it is formatted: no string in between.
struct Sentence<T>(T);

impl<T: std::fmt::Display> std::fmt::Display for Sentence<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        /// Passes text on with its first letter in capitals, and remembers its last one.
        struct Capitalized<'a, 'b> {
            out: &'a mut std::fmt::Formatter<'b>,
            last: Option<char>,
        }
        impl std::fmt::Write for Capitalized<'_, '_> {
            fn write_str(&mut self, text: &str) -> std::fmt::Result {
                let Some(last) = text.chars().next_back() else { return Ok(()) };
                let mut chars = text.chars();
                if self.last.is_none()
                    && let Some(first) = chars.next()
                {
                    for upper in first.to_uppercase() {
                        self.out.write_char(upper)?;
                    }
                }
                self.last = Some(last);
                self.out.write_str(chars.as_str())
            }
        }
        let mut capitalized = Capitalized { out: f, last: None };
        std::fmt::Write::write_fmt(&mut capitalized, format_args!("{}", self.0))?;
        if capitalized.last != Some('.') { f.write_str(".") } else { Ok(()) }
    }
}

impl<T: std::fmt::Display> Serialize for Sentence<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> ApiError {
        match &error {
            CommandError::Rejected(rejection) => ApiError::from_rejection(rejection),
            CommandError::IdempotencyConflict { command_id } => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                format!("The idempotency key {command_id} was used for a different request."),
            )
            .with_details(json!({"command_id": command_id.as_str()})),
            CommandError::InvalidRequest(reason) => ApiError::bad_request("invalid_request", sentence(reason)),
            CommandError::UnknownShop(shop) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_shop", format!("There is no shop {shop}."))
                    .with_details(json!({"shop": shop.as_str()}))
            }
            CommandError::Overloaded(shop) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!("Shop {shop} has too many commands waiting; retry shortly."),
            ),
            CommandError::Unavailable { shop, reason } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shop_unavailable",
                format!("Shop {shop} cannot take commands: {reason}."),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.wire())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::{CommandId, ShopId, Sku};
    use crate::domain::rejection::{Field, Shortage};
    use rust_decimal::Decimal;

    /// What a single command's answer writes straight is the tree a batch's result holds.
    #[test]
    fn an_error_written_straight_reads_as_its_tree() {
        let check = |error: ApiError, expected: Value| {
            let straight: Value = serde_json::to_value(error.wire()).expect("serializes");
            assert_eq!(straight, error.clone().into_body());
            assert_eq!(error.into_body(), expected);
        };
        let sku = Sku::from("SKU-1");
        let short = Rejection::InsufficientStock { shortages: vec![Shortage { sku, requested: 3, available: 1 }] };
        check(
            ApiError::from_rejection(&short),
            json!({"error": {"code": "insufficient_stock", "message": ApiError::from_rejection(&short).message,
                   "details": {"shortages": [{"sku": "SKU-1", "requested": 3, "available": 1}]}}}),
        );
        let shop = ShopId::new("main").expect("a shop");
        check(
            ApiError::from(CommandError::UnknownShop(shop)),
            json!({"error": {"code": "unknown_shop", "message": "There is no shop main.", "details": {"shop": "main"}}}),
        );
        let command_id = CommandId::new("c-1").expect("an id");
        let conflict = ApiError::from(CommandError::IdempotencyConflict { command_id });
        assert_eq!(conflict.status, StatusCode::CONFLICT);
        check(
            conflict,
            json!({"error": {"code": "idempotency_conflict",
                   "message": "The idempotency key c-1 was used for a different request.",
                   "details": {"command_id": "c-1"}}}),
        );
        check(
            ApiError::bad_request("bad_json", "no"),
            json!({"error": {"code": "bad_json", "message": "no", "details": {}}}),
        );
    }

    /// A refusal written straight from its rejection reads as the error built from it.
    #[test]
    fn a_refusal_written_straight_reads_as_its_error() {
        let check = |rejection: Rejection, message: &str| {
            let error = ApiError::from_rejection(&rejection);
            assert_eq!(error.message, message);
            assert_eq!(rejection_status(&rejection), error.status);
            let straight: Value = serde_json::to_value(ErrorBody::refusal(&rejection)).expect("serializes");
            assert_eq!(straight, error.into_body(), "{rejection:?}");
        };
        let short = |sku: &str, requested, available| Shortage { sku: Sku::from(sku), requested, available };
        check(
            Rejection::InsufficientStock { shortages: vec![short("SKU-1", 3, 1), short("SKU-2", 1, 0)] },
            "Not enough stock: SKU-1 requested 3, available 1; SKU-2 requested 1, available 0.",
        );
        check(Rejection::UnknownSku { sku: Sku::from("SKU-9") }, "SKU SKU-9 is unknown.");
        check(
            Rejection::AmountMismatch {
                order_id: "O-1".into(),
                due: Decimal::new(25600, 2),
                offered: Decimal::new(2560, 1),
            },
            "Order O-1 is due 256.00, not 256.0.",
        );
        check(Rejection::invalid(Field::Quantity, "must be at least 1."), "Invalid Quantity: must be at least 1.");
        check(Rejection::invalid(Field::Region, "élan"), "Invalid Region: élan.");
    }

    #[test]
    fn a_sentence_starts_with_a_capital_and_ends_with_a_full_stop() {
        let check = |text: &str, expected: &str| assert_eq!(sentence(text), expected, "{text:?}");
        check("", ".");
        check(".", ".");
        check("a", "A.");
        check("ßig deal", "SSig deal.");
        check("éclair.", "Éclair.");
        check("Done", "Done.");
    }
}
