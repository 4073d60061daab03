//! The one parser of request bodies: a command's body on its route, a batch, and each of the
//! batch's items, all read the same strict way.
//!
//! - **Strict.** A body is a JSON object (an empty body is an empty object) read into its
//!   strict struct: unknown fields are refused, money is a decimal string with at most two
//!   places (`wire::Money`), and a field the path fills in, or a `type` on a route, may not be
//!   repeated in the body. Ids are read as they come; the domain refuses an overlong one.
//! - **Refusals.** A body that is not JSON is `malformed_json`; JSON that is not an object, or
//!   not the command's fields, is `invalid_body`, with serde's reason as a sentence. Both 400.
//! - **No repeated keys.** A key repeated in any object of a body, at any depth (a line of an
//!   order, an item of a batch), is `duplicate_key` (400): JSON does not say which of two
//!   values counts, so neither does.
//! - **Straight where it reads the same.** On a route whose path names only the shop, the
//!   body is first read straight into its struct (no JSON tree in between). Only if that
//!   fails does the checked path run, which explains what is wrong: whatever the straight
//!   read accepts, the checked path reads the same, as a test here checks (serde's derived
//!   structs refuse a repeated field, and the checked path's tree refuses every repeated key).

use serde::de::{DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::error::{ApiError, sentence};
use super::table::{Route, WireCommand};
use super::wire::BatchBody;

fn invalid_body(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_body", message)
}

/// The marker that begins the message of a repeated key, to tell it from malformed JSON.
const DUPLICATE_KEY: &str = "duplicate key ";

/// A JSON tree read like [`Value`], except that an object repeating a key is an error.
struct Unique(Value);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Unique, D::Error> {
        deserializer.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(UniqueVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Unique(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if fields.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("{DUPLICATE_KEY}{key:?}")));
            }
            let Unique(value) = map.next_value()?;
            fields.insert(key, value);
        }
        Ok(Value::Object(fields))
    }
}

/// Parses a body into a JSON object; an empty body is an empty object. A key repeated in
/// any object of it is refused.
fn object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let Unique(value) = serde_json::from_slice(bytes).map_err(|e| {
        let text = e.to_string();
        match text.strip_prefix(DUPLICATE_KEY) {
            Some(rest) => ApiError::bad_request(
                "duplicate_key",
                sentence(&format!("the body repeats the key {rest}; each key may appear once in an object")),
            ),
            None => ApiError::bad_request("malformed_json", sentence(&format!("the body is not valid JSON: {e}"))),
        }
    })?;
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
        // Left to the checked path, which explains what is wrong.
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
    fn a_repeated_key_at_any_depth_is_refused() {
        for body in [
            r#"{"order_id": "O-1", "order_id": "O-2"}"#,
            r#"{"lines": [{"sku": "S-1", "quantity": 1, "quantity": 5}]}"#,
            r#"{"commands": [{"type": "pay", "amount": "1.00", "amount": "9.00"}]}"#,
        ] {
            let error = object(body.as_bytes()).expect_err(body);
            assert_eq!((error.status.as_u16(), error.code), (400, "duplicate_key"), "{body}: {}", error.message);
        }
        let fine = object(br#"{"a": {"k": 1}, "b": {"k": [1, 2.5, null, true, "x"]}}"#).expect("no repeat");
        assert_eq!(Value::Object(fine), serde_json::json!({"a": {"k": 1}, "b": {"k": [1, 2.5, null, true, "x"]}}));
        assert_eq!(object(b"{\"a\": 1,}").expect_err("malformed").code, "malformed_json");
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
