//! The one parser of request bodies: a command's body on its route, a batch, and each of the
//! batch's items, all read the same strict way.
//!
//! - **Strict.** A body is a JSON object (an empty body is an empty object) read into its
//!   strict struct: unknown fields are refused, money is a decimal string with at most two
//!   places (`wire::Money`), and a field the path fills in, or a `type` on a route, may not be
//!   repeated in the body. Ids are read as they come; the domain refuses an overlong one.
//! - **Refusals.** A body that is not JSON is `malformed_json`; JSON that is not an object, or
//!   not the command's fields, is `invalid_body`, with serde's reason as a sentence. Both 400.
//! - **Straight where it reads the same.** On a route whose path names only the shop, the
//!   body is first read straight into its struct (no JSON tree in between). Only if that
//!   fails does the checked path run, which explains what is wrong, or accepts what the
//!   straight read refuses (a repeated field, of which the last counts): whatever the
//!   straight read accepts, the checked path reads the same, as a test here checks.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::error::{ApiError, sentence};
use super::table::{Route, WireCommand};
use super::wire::BatchBody;

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

/// Reads a strict `T` from a JSON object; what `T` refuses is `invalid_body`.
fn strict<T: DeserializeOwned>(fields: Map<String, Value>) -> Result<T, ApiError> {
    serde_json::from_value(Value::Object(fields)).map_err(|e| invalid_body(sentence(&e.to_string())))
}

/// The command of `route` from a request's body, the path's parameters filled in.
pub fn command(route: &Route, body: &[u8], params: &[(String, String)]) -> Result<WireCommand, ApiError> {
    // Straight from the body only where the path fills in nothing.
    let straight = match route.straight {
        Some(read) if params.is_empty() => read(body),
        _ => None,
    };
    match straight {
        Some(command) => Ok(command),
        None => checked(object(body)?, route.kind, params),
    }
}

/// The command `B` read straight from `body` when the body is an object of exactly `B`'s
/// fields, each once; `None` otherwise, with no reason: the checked path then explains what
/// is wrong, or accepts what this refuses.
pub fn straight<B: DeserializeOwned + Into<WireCommand>>(body: &[u8]) -> Option<WireCommand> {
    // A struct also reads from a JSON array; the checked path takes only objects.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<B>(body).ok().map(Into::into)
}

/// A command from a batch item or a route body with its path parameters filled in.
fn checked(mut fields: Map<String, Value>, kind: &str, params: &[(String, String)]) -> Result<WireCommand, ApiError> {
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
    strict(fields)
}

/// A batch's body: its commands, each still a JSON value, for [`item`] to read on its own.
pub fn batch(body: &[u8]) -> Result<Vec<Value>, ApiError> {
    strict::<BatchBody>(object(body)?).map(|batch| batch.commands)
}

/// One command of a batch, `{"type": "<command>", ...its body}`; what is wrong with it is
/// its own answer, not the batch's.
pub fn item(item: Value) -> Result<WireCommand, ApiError> {
    let Value::Object(mut fields) = item else { return Err(invalid_body("Every command must be a JSON object.")) };
    let kind = match fields.remove("type") {
        Some(Value::String(kind)) => kind,
        _ => return Err(invalid_body("Every command needs a type, such as \"place_order\".")),
    };
    checked(fields, &kind, &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::table::ROUTES;

    #[test]
    fn path_parameters_fill_the_body_and_may_not_be_repeated_in_it() {
        let params = vec![("order_id".to_owned(), "O-1".to_owned())];
        let body = object(br#"{"payment_id": "P-1", "amount": "19.90"}"#).expect("object");
        let command = checked(body, "pay", &params).expect("parses");
        assert_eq!(command.resource().id, "O-1");
        let body = object(br#"{"order_id": "O-2", "payment_id": "P-1", "amount": "19.90"}"#).expect("object");
        let error = checked(body, "pay", &params).expect_err("refused");
        assert_eq!(error.code, "invalid_body");
        assert_eq!(object(b"  ").expect("empty is an object").len(), 0);
        assert_eq!(object(b"[1]").expect_err("not an object").code, "invalid_body");
        assert_eq!(object(b"{").expect_err("malformed").code, "malformed_json");
    }

    /// The body read straight, and through the checked path, for a route without path
    /// parameters: `expected` is what both give, or `None` where only the checked path reads it.
    fn check(kind: &str, body: &str, expected: Option<&str>) {
        let route = ROUTES.iter().find(|route| route.kind == kind).expect("a route");
        let direct = route.straight.and_then(|read| read(body.as_bytes())).map(|c| format!("{c:?}"));
        let checked = object(body.as_bytes()).and_then(|fields| checked(fields, kind, &[]));
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
            let error = checked(fields, route.kind, &[]).expect_err("missing fields");
            assert!(!error.message.contains("unknown variant"), "{}: {}", route.kind, error.message);
        }
    }
}
