//! The API description, `GET /v1/openapi.json`, generated from the command table (each
//! command's route, summary and body schema) and the body types: a command or a field added
//! in code appears here without anyone writing it. The reads, being few and without bodies,
//! are listed here by hand, with their query parameters.

use axum::response::{IntoResponse, Response};
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::error::ErrorBody;
use super::table::{ROUTES, Route, Verb};
use super::wire::{BatchBody, Receipt};

/// A read route: path below the shop, summary, query parameters.
struct ReadRoute {
    path: &'static str,
    summary: &'static str,
    query: &'static [(&'static str, &'static str)],
}

const READS: &[ReadRoute] = &[
    ReadRoute { path: "/orders/{order_id}", summary: "An order as the engine knows it now", query: &[] },
    ReadRoute {
        path: "/orders/{order_id}/history",
        summary: "A page of an order's history, oldest first; next_after and more lead to the next page",
        query: &[
            ("after", "a log position: entries after it (the last page's next_after); default 0"),
            ("limit", "1 to 1000 entries, default 100"),
        ],
    },
    ReadRoute { path: "/stock/{sku}", summary: "One SKU's stock level", query: &[] },
    ReadRoute { path: "/stock", summary: "Every SKU's stock level", query: &[("low", "true: only low stock")] },
    ReadRoute { path: "/ledger/trial-balance", summary: "Every account's balance; they sum to zero", query: &[] },
    ReadRoute {
        path: "/ledger/journal",
        summary: "Journal entries after a position",
        query: &[("after", "a log position"), ("limit", "1 to 1000, default 100")],
    },
    ReadRoute {
        path: "/analytics/summary",
        summary: "GMV, orders, rates and top sellers of a range",
        query: &[("from", "ms since the epoch or RFC 3339"), ("to", "ms since the epoch or RFC 3339")],
    },
    ReadRoute {
        path: "/analytics/series",
        summary: "The summary per hour or day",
        query: &[
            ("bucket", "hour or day"),
            ("from", "start, ms since the epoch or RFC 3339"),
            ("to", "end, at most the last whole hour or day a u64 of ms holds; at most 1000 buckets"),
        ],
    },
    ReadRoute { path: "/customers/{customer_id}", summary: "One buyer's record", query: &[] },
    ReadRoute {
        path: "/events",
        summary: "A page of the shop log",
        query: &[("after", "a log position"), ("limit", "1 to 1000, default 100")],
    },
    ReadRoute {
        path: "/events/stream",
        summary: "Server-Sent Events following the log; resume with Last-Event-ID",
        query: &[("after", "a log position, when no Last-Event-ID is sent")],
    },
    ReadRoute {
        path: "/verify",
        summary: "The log verified (checksums, hash chain) and compared with its witness, as `emporium verify` does",
        query: &[],
    },
];

/// The named schema `reference` points to, without the fields the path supplies.
fn request_schema(reference: &Value, definitions: &Map<String, Value>, path_fields: &[String]) -> Value {
    let name = reference.get("$ref").and_then(Value::as_str).and_then(|r| r.rsplit('/').next()).unwrap_or("");
    let mut schema = definitions.get(name).cloned().unwrap_or_else(|| reference.clone());
    if let Some(Value::Object(properties)) = schema.get_mut("properties") {
        properties.retain(|field, _| !path_fields.contains(field));
    }
    if let Some(Value::Array(required)) = schema.get_mut("required") {
        required.retain(|field| !path_fields.iter().any(|p| field.as_str() == Some(p)));
    }
    schema
}

fn path_fields(path: &str) -> Vec<String> {
    path.split('/').filter_map(|part| part.strip_prefix('{')?.strip_suffix('}')).map(str::to_owned).collect()
}

fn parameters(path: &str, query: &[(&str, &str)]) -> Vec<Value> {
    let mut parameters: Vec<Value> = path_fields(path)
        .into_iter()
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    for (name, description) in query {
        parameters.push(json!({"name": name, "in": "query", "required": false, "description": description,
            "schema": {"type": "string"}}));
    }
    parameters
}

fn errors() -> Value {
    let error = json!({"description": "An error", "content": {"application/json": {"schema":
        {"$ref": "#/components/schemas/ErrorBody"}}}});
    let mut responses = Map::new();
    for status in ["400", "401", "403", "404", "409", "413", "503"] {
        responses.insert(status.to_owned(), error.clone());
    }
    Value::Object(responses)
}

/// Every path below a shop starts with this.
const PREFIX: &str = "/v1/shops/{shop}";

/// The whole description.
pub fn build() -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let receipt = generator.subschema_for::<Receipt>().to_value();
    generator.subschema_for::<ErrorBody>();
    let batch = generator.subschema_for::<BatchBody>().to_value();
    let bodies: Vec<Value> = ROUTES.iter().map(|route| (route.schema)(&mut generator).to_value()).collect();
    let definitions = generator.take_definitions(true);
    let mut paths = Map::new();
    for (route, reference) in ROUTES.iter().zip(bodies) {
        let body = request_schema(&reference, &definitions, &path_fields(route.path));
        paths.insert(format!("{PREFIX}{}", route.path), command(route, body, &receipt));
    }
    paths.insert(
        format!("{PREFIX}/commands"),
        json!({"post": {"operationId": "batch", "summary": "Up to 1,000 commands, each answered on its own",
            "tags": ["commands"], "parameters": parameters(PREFIX, &[]), "security": [{"bearer": []}],
            "requestBody": {"required": true, "content": {"application/json": {"schema": batch}}},
            "responses": errors()}}),
    );
    for read in READS {
        let path = format!("{PREFIX}{}", read.path);
        let item = query(read, &path);
        paths.insert(path, item);
    }
    others(&mut paths);
    json!({
        "openapi": "3.0.3",
        "info": {"title": "emporium", "version": env!("CARGO_PKG_VERSION"),
            "description": "Orders, stock, shipments, returns and refunds of online shops. Money is a decimal \
                string with at most 2 places; unknown fields are refused."},
        "paths": paths,
        "components": {"schemas": definitions,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    })
}

/// A command route's path item: its one operation, taking `body` and answering `receipt`.
fn command(route: &Route, body: Value, receipt: &Value) -> Value {
    let mut responses = errors();
    let success = json!({"description": "The command's receipt: its positions, events and resource",
        "content": {"application/json": {"schema": receipt}}});
    if let Value::Object(map) = &mut responses {
        map.insert("200".to_owned(), success.clone());
        map.insert("201".to_owned(), success);
    }
    let mut parameters = parameters(&format!("{PREFIX}{}", route.path), &[]);
    parameters.push(json!({"name": "Idempotency-Key", "in": "header", "required": false,
        "description": "Makes a retry safe: the same key returns the same status and body",
        "schema": {"type": "string", "maxLength": 128}}));
    let operation = json!({
        "operationId": route.kind,
        "summary": route.summary,
        "tags": ["commands"],
        "parameters": parameters,
        "responses": responses,
        "security": [{"bearer": []}],
        "requestBody": {"required": route.method == Verb::Post, "content": {"application/json": {"schema": body}}},
    });
    let method = match route.method {
        Verb::Post => "post",
        Verb::Delete => "delete",
    };
    json!({ method: operation })
}

/// A read route's path item.
fn query(read: &ReadRoute, path: &str) -> Value {
    let mut responses = errors();
    if let Value::Object(map) = &mut responses {
        let content = if read.path.ends_with("/stream") { "text/event-stream" } else { "application/json" };
        map.insert("200".to_owned(), json!({"description": read.summary, "content": {content: {}}}));
    }
    json!({"get": {"summary": read.summary, "tags": ["queries"], "parameters": parameters(path, read.query),
        "security": [{"bearer": []}], "responses": responses}})
}

/// The paths outside a shop's commands and reads: the shops, health and metrics.
fn others(paths: &mut Map<String, Value>) {
    paths.insert(
        "/v1/shops".to_owned(),
        json!({"get": {"summary": "Every shop", "tags": ["shops"],
        "security": [{"bearer": []}], "responses": {"200": {"description": "The shops"}}}}),
    );
    paths.insert(
        PREFIX.to_owned(),
        json!({"put": {"summary": "Create a shop (admin)", "tags": ["shops"],
        "parameters": parameters(PREFIX, &[]), "security": [{"bearer": []}],
        "responses": {"200": {"description": "It existed"}, "201": {"description": "Created"}}}}),
    );
    paths.insert(
        "/healthz".to_owned(),
        json!({"get": {"summary": "Liveness", "responses":
        {"200": {"description": "ok"}}}}),
    );
    paths.insert(
        "/metrics".to_owned(),
        json!({"get": {"summary": "Prometheus metrics",
        "security": [{"bearer": []}], "responses": {"200": {"description": "text/plain metrics"}}}}),
    );
}

/// `GET /v1/openapi.json`.
pub async fn document() -> Response {
    axum::Json(build()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_route_is_described_with_its_body_less_the_path_fields() {
        let document = build();
        for route in ROUTES {
            let path = format!("/v1/shops/{{shop}}{}", route.path);
            let method = if route.method == Verb::Post { "post" } else { "delete" };
            let operation = &document["paths"][&path][method];
            assert_eq!(operation["operationId"], route.kind, "{path}");
            let body = &operation["requestBody"]["content"]["application/json"]["schema"];
            let properties = body["properties"].as_object().expect("an object body");
            assert!(properties.contains_key("command_id"), "{path}");
            for field in path_fields(route.path) {
                assert!(!properties.contains_key(&field), "{path} still lists {field}");
            }
        }
        let pay = &document["paths"]["/v1/shops/{shop}/orders/{order_id}/payments"]["post"];
        let amount = &pay["requestBody"]["content"]["application/json"]["schema"]["properties"]["amount"];
        let money = if amount["$ref"].is_null() { &amount["allOf"][0]["$ref"] } else { &amount["$ref"] };
        assert_eq!(money, "#/components/schemas/Money", "{pay:#}");
        assert_eq!(document["components"]["schemas"]["Money"]["type"], "string");
    }
}
