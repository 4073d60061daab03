//! The HTTP service end to end: the real binary on a random loopback port.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use emporium::domain::command::{AdjustmentReason, Condition, Party};
use emporium::log::store::{EventStore, SledStore};
use emporium::{Command, Event, ShopId, log::layout, rehearsal::demo};
use serde_json::{Value, json};

use crate::http::{ADMIN, AUDITOR, Client, Follower, OPERATOR, Response, Server};
use crate::support::temp_dir;

const SHOP: &str = "/v1/shops/main";

fn lines_json(lines: &[emporium::Line]) -> Value {
    lines.iter().map(|l| json!({"sku": l.sku.as_str(), "quantity": l.quantity})).collect()
}

/// The route and body that send `command`.
fn http_of(command: &Command) -> (&'static str, String, Value) {
    match command {
        Command::ListProduct { sku, title, category, price, weight_g, low_stock_threshold } => (
            "POST",
            format!("{SHOP}/products"),
            json!({"sku": sku.as_str(), "title": title, "category": category, "price": price.to_string(),
                "weight_g": weight_g, "low_stock_threshold": low_stock_threshold}),
        ),
        Command::ReceiveStock { sku, quantity, unit_cost, supplier_ref } => (
            "POST",
            format!("{SHOP}/products/{sku}/receipts"),
            json!({"quantity": quantity, "unit_cost": unit_cost.to_string(), "supplier_ref": supplier_ref}),
        ),
        Command::Stocktake { sku, counted, reason } => {
            let reason = match reason {
                AdjustmentReason::Loss => "loss",
                AdjustmentReason::Damage => "damage",
                AdjustmentReason::Found => "found",
                AdjustmentReason::Count => "count",
            };
            ("POST", format!("{SHOP}/products/{sku}/stocktakes"), json!({"counted": counted, "reason": reason}))
        }
        Command::PlaceOrder { order_id, customer_id, lines, region, reservation_id } => {
            let mut body = json!({"order_id": order_id.as_str(), "customer_id": customer_id.as_str(),
                "lines": lines_json(lines), "region": region});
            if let Some(hold) = reservation_id {
                body["reservation_id"] = json!(hold.as_str());
            }
            ("POST", format!("{SHOP}/orders"), body)
        }
        Command::Pay { order_id, payment_id, amount } => (
            "POST",
            format!("{SHOP}/orders/{order_id}/payments"),
            json!({"payment_id": payment_id.as_str(), "amount": amount.to_string()}),
        ),
        Command::Cancel { order_id, by, reason } => {
            let by = if *by == Party::Buyer { "buyer" } else { "shop" };
            ("POST", format!("{SHOP}/orders/{order_id}/cancel"), json!({"by": by, "reason": reason}))
        }
        Command::Ship { order_id, shipment_id, carrier, tracking_number, lines } => (
            "POST",
            format!("{SHOP}/orders/{order_id}/shipments"),
            json!({"shipment_id": shipment_id.as_str(), "carrier": carrier, "tracking_number": tracking_number,
                "lines": lines_json(lines)}),
        ),
        Command::ConfirmDelivery { order_id, shipment_id } => {
            ("POST", format!("{SHOP}/orders/{order_id}/shipments/{shipment_id}/delivery"), json!({}))
        }
        Command::RequestReturn { order_id, return_id, lines, reason } => (
            "POST",
            format!("{SHOP}/orders/{order_id}/returns"),
            json!({"return_id": return_id.as_str(), "lines": lines_json(lines), "reason": reason}),
        ),
        Command::ReceiveReturn { order_id, return_id, inspections } => {
            let inspections: Vec<Value> = inspections
                .iter()
                .map(|i| {
                    let condition = if i.condition == Condition::Resellable { "resellable" } else { "damaged" };
                    json!({"sku": i.sku.as_str(), "quantity": i.quantity, "condition": condition})
                })
                .collect();
            (
                "POST",
                format!("{SHOP}/orders/{order_id}/returns/{return_id}/receipt"),
                json!({"inspections": inspections}),
            )
        }
        Command::Refund { order_id, refund_id, amount, return_id } => {
            let mut body = json!({"refund_id": refund_id.as_str(), "amount": amount.to_string()});
            if let Some(return_id) = return_id {
                body["return_id"] = json!(return_id.as_str());
            }
            ("POST", format!("{SHOP}/orders/{order_id}/refunds"), body)
        }
        other => panic!("the shop day does not send {other:?}"),
    }
}

fn send_json(client: &Client, method: &str, path: &str, key: Option<&str>, body: &Value) -> Response {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(key) = key {
        headers.push(("idempotency-key", key));
    }
    client.send(method, path, &headers, body.to_string().as_bytes())
}

/// The last position of the shop's log, through the API.
fn log_end(client: &Client) -> u64 {
    let mut after = 0;
    loop {
        let page = client.get(&format!("{SHOP}/events?after={after}&limit=1000"));
        assert_eq!(page.status, 200, "{}", String::from_utf8_lossy(&page.body));
        let next = page.json()["next_after"].as_u64().expect("next_after");
        if next == after {
            return after;
        }
        after = next;
    }
}

#[test]
fn the_shop_day_runs_over_http_and_every_read_agrees_with_the_core() {
    let dir = temp_dir();
    // One order in memory as a value: the others are spilled after every batch, so deciding
    // on them and reading them back over HTTP both meet spilled orders.
    let server = Server::start_with(&dir.path().join("data"), false, &["--orders-hot-max", "1"]);
    let client = server.client();
    let script = demo::shop_day();
    let (state, expected_events) = demo::run(&script).expect("the day runs in the core");

    let mut kinds = Vec::new();
    let mut end = 0;
    for (index, (_, command)) in script.iter().enumerate() {
        let (method, path, body) = http_of(command);
        let key = format!("day-{index}");
        let response = send_json(&client, method, &path, Some(&key), &body);
        assert!(matches!(response.status, 200 | 201), "{path}: {} {}", response.status, response.json());
        let receipt = response.json();
        assert_eq!(receipt["command_id"], key.as_str());
        assert_eq!(receipt["positions"]["first"], end + 1, "{path}");
        end = receipt["positions"]["last"].as_u64().expect("last");
        let events = receipt["events"].as_array().expect("events");
        assert_eq!(events.len() as u64, end - receipt["positions"]["first"].as_u64().expect("first") + 1);
        kinds.extend(events.iter().map(|e| e["type"].as_str().expect("type").to_owned()));
        if response.status == 201 {
            assert!(response.header("location").is_some_and(|l| l.starts_with("/v1/shops/main/")));
        }
    }
    let expected_kinds: Vec<String> = expected_events.iter().map(|e| e.kind().to_owned()).collect();
    assert_eq!(kinds, expected_kinds);
    assert_eq!(log_end(&client), end);

    // A retry of any command gets the same status and body.
    let (method, path, body) = http_of(&script[8].1);
    let again = send_json(&client, method, &path, Some("day-8"), &body);
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["command_id"], "day-8");
    assert_eq!(log_end(&client), end, "a retry appends nothing");

    for order in state.orders().map(|order| order.expect("in memory")) {
        let response = client.get(&format!("{SHOP}/orders/{}", order.id));
        assert_eq!(response.status, 200);
        let got = response.json();
        assert_eq!(got["status"], json!(order.status()), "{}", order.id);
        assert_eq!(got["total"], json!(order.total));
        assert_eq!(got["paid"], json!(order.paid()));
        assert_eq!(got["refunded"], json!(order.refunded));
        let history = client.get(&format!("{SHOP}/orders/{}/history", order.id)).json();
        let events_of_order = expected_events
            .iter()
            .filter(|e| matches!(e.subject(), emporium::domain::event::Subject::Order(id) if *id == order.id))
            .count();
        assert_eq!(history["history"].as_array().map(Vec::len), Some(events_of_order), "{}", order.id);
        assert_eq!(history["as_of_position"], end);
    }
    let unknown = client.get(&format!("{SHOP}/orders/NOPE-1/history"));
    assert_eq!((unknown.status, unknown.json()["error"]["code"].clone()), (404, json!("unknown_order")));
    let nowhere = client.get("/v1/shops/nowhere/orders/A-1001/history");
    assert_eq!((nowhere.status, nowhere.json()["error"]["code"].clone()), (404, json!("unknown_shop")));
    for product in state.products() {
        let stock = client.get(&format!("{SHOP}/stock/{}", product.sku)).json();
        assert_eq!(stock["stock"]["on_hand"], product.stock.on_hand, "{}", product.sku);
        assert_eq!(stock["stock"]["reserved"], product.stock.reserved, "{}", product.sku);
        assert_eq!(stock["stock"]["available"], product.stock.available(), "{}", product.sku);
    }
    let balance = client.get(&format!("{SHOP}/ledger/trial-balance")).json();
    assert_eq!(balance["total"], "0.00");
    let cash = balance["accounts"].as_array().expect("accounts").iter().find(|a| a["account"] == "cash").cloned();
    let payments: rust_decimal::Decimal =
        state.orders().map(|o| o.expect("in memory")).map(|o| o.paid() - o.refunded).sum();
    assert_eq!(cash.map(|c| c["balance"].clone()), Some(json!(payments)));
    let customer = client.get(&format!("{SHOP}/customers/C-88")).json();
    assert_eq!(customer["stats"]["paid_orders"], 1);
    let summary = client.get(&format!("{SHOP}/analytics/summary")).json();
    assert_eq!(summary["summary"]["orders"], 2, "{summary}");
    let series = client.get(&format!("{SHOP}/analytics/series?bucket=day"));
    assert_eq!(series.status, 200);
    let journal = client.get(&format!("{SHOP}/ledger/journal?after=0&limit=3")).json();
    assert_eq!(journal["entries"].as_array().map(Vec::len), Some(3));
    let low = client.get(&format!("{SHOP}/stock?low=true")).json();
    assert!(low["stock"].as_array().expect("levels").iter().all(|l| l["low_stock"] == true));

    let metrics = String::from_utf8(client.get("/metrics").body).expect("text");
    assert!(metrics.contains("emporium_commands_total{kind=\"place_order\",outcome=\"accepted\"} 3"), "{metrics}");
    assert!(metrics.contains(&format!("emporium_log_position{{shop=\"main\"}} {end}")), "{metrics}");
    // Three orders, one of them in memory: the orders read above came back from the spill.
    assert!(metrics.contains("emporium_orders_spilled{shop=\"main\"} 2"), "{metrics}");
    assert!(metrics.contains("emporium_group_commit_commands_count"));
    assert!(metrics.contains("emporium_group_commit_seconds_count"));
    let openapi = client.get("/v1/openapi.json").json();
    assert!(openapi["paths"]["/v1/shops/{shop}/orders/{order_id}/payments"]["post"].is_object());
    assert_eq!(client.get("/healthz").json()["status"], "ok");
}

/// The binary turns transparent huge pages off for itself (`emporium::cli::process`): with them, the
/// allocator's returned pages were faulted back in 2 MiB at a time.
#[test]
fn the_server_runs_without_transparent_huge_pages() {
    let dir = temp_dir();
    let server = Server::start(&dir.path().join("data"), false);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).expect("the server's status");
    let line = status.lines().find(|l| l.starts_with("THP_enabled:")).expect("Linux 5.0 or later reports THP_enabled");
    assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
}

#[test]
fn a_batch_answers_each_command_on_its_own() {
    let dir = temp_dir();
    let server = Server::start(&dir.path().join("data"), false);
    let client = server.client();
    let batch = json!({"commands": [
        {"type": "list_product", "command_id": "b-1", "sku": "B-1", "title": "Batch", "category": "misc",
         "price": "10.00", "weight_g": 1, "low_stock_threshold": 0},
        {"type": "receive_stock", "command_id": "b-2", "sku": "B-1", "quantity": 5, "unit_cost": "4.00", "supplier_ref": "PO"},
        {"type": "place_order", "order_id": "BO-1", "customer_id": "C", "region": "r",
         "lines": [{"sku": "B-1", "quantity": 9}]},
        {"type": "place_order", "order_id": "BO-2", "customer_id": "C", "region": "r",
         "lines": [{"sku": "B-1", "quantity": 2}], "coupon": "X"},
        {"type": "teleport"},
        {"type": "place_order", "command_id": "b-6", "order_id": "BO-3", "customer_id": "C", "region": "r",
         "lines": [{"sku": "B-1", "quantity": 2}]}
    ]});
    let response = client.post(&format!("{SHOP}/commands"), &batch);
    assert_eq!(response.status, 200);
    let body = response.json();
    let results = body["results"].as_array().expect("results");
    let statuses: Vec<u64> = results.iter().map(|r| r["status"].as_u64().expect("status")).collect();
    assert_eq!(statuses, [201, 200, 409, 400, 400, 201]);
    assert_eq!(results[2]["error"]["code"], "insufficient_stock");
    assert_eq!(results[3]["error"]["code"], "invalid_body");
    assert_eq!(results[5]["receipt"]["positions"]["first"], 3);
    let again = client.post(&format!("{SHOP}/commands"), &batch).json();
    assert_eq!(again["results"][5], body["results"][5], "a repeated batch item gets the same answer");
    assert_eq!(log_end(&client), 3);
}

/// One hostile request: what it sends and the status and code it must get.
struct Hostile {
    name: &'static str,
    method: &'static str,
    path: String,
    token: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn hostile(
    name: &'static str,
    method: &'static str,
    path: &str,
    body: &str,
    status: u16,
    code: &'static str,
) -> Hostile {
    Hostile {
        name,
        method,
        path: format!("{SHOP}{path}"),
        token: Some(OPERATOR),
        headers: vec![("content-type", "application/json".to_owned())],
        body: body.as_bytes().to_vec(),
        status,
        code,
    }
}

impl Hostile {
    fn token(mut self, token: Option<&'static str>) -> Hostile {
        self.token = token;
        self
    }
    fn header(mut self, name: &'static str, value: &str) -> Hostile {
        self.headers.push((name, value.to_owned()));
        self
    }
    fn raw_path(mut self, path: &str) -> Hostile {
        self.path = path.to_owned();
        self
    }
}

fn order_body(order_id: &str, quantity: &str) -> String {
    format!(
        r#"{{"order_id": "{order_id}", "customer_id": "C-1", "region": "zhejiang",
            "lines": [{{"sku": "TEA-1", "quantity": {quantity}}}]}}"#
    )
}

/// A token for the shop `second` only.
const OTHER_SHOP: &str = "other-shop-token-0123456789";

#[test]
fn hostile_requests_get_their_documented_status_and_change_nothing() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let tokens = data.with_extension("hostile-tokens");
    let text = format!(
        "admin root {ADMIN}\noperator shop {OPERATOR}\nauditor books {AUDITOR}\noperator other {OTHER_SHOP} shops=second\n"
    );
    std::fs::write(&tokens, text).expect("tokens written");
    let server = Server::start_with(&data, false, &["--tokens", tokens.to_str().expect("a UTF-8 path")]);
    let operator = server.client().with_token(OPERATOR);
    let setup = [
        (
            format!("{SHOP}/products"),
            r#"{"sku": "TEA-1", "title": "Tea", "category": "tea", "price": "19.90",
            "weight_g": 100, "low_stock_threshold": 1}"#
                .to_owned(),
        ),
        (
            format!("{SHOP}/products/TEA-1/receipts"),
            r#"{"quantity": 10, "unit_cost": "8.00", "supplier_ref": "PO"}"#.to_owned(),
        ),
        (format!("{SHOP}/orders"), order_body("O-1", "1")),
        (format!("{SHOP}/orders"), order_body("O-2", "1")),
        (format!("{SHOP}/orders/O-2/payments"), r#"{"payment_id": "P-2", "amount": "19.90"}"#.to_owned()),
    ];
    for (path, body) in &setup {
        let response = operator.send("POST", path, &[("content-type", "application/json")], body.as_bytes());
        assert!(matches!(response.status, 200 | 201), "{path}: {}", response.json());
    }
    let keyed = operator.send(
        "POST",
        &format!("{SHOP}/orders"),
        &[("content-type", "application/json"), ("idempotency-key", "key-1")],
        order_body("O-3", "1").as_bytes(),
    );
    assert_eq!(keyed.status, 201);
    let end = log_end(&operator);

    let long_id = "X".repeat(65);
    let huge =
        format!(r#"{{"order_id": "O-9", "customer_id": "C-1", "region": "{}", "lines": []}}"#, "x".repeat(2 << 20));
    let many: Vec<Value> = (0..1001).map(|i| json!({"type": "delist_product", "sku": format!("S-{i}")})).collect();
    let many = json!({"commands": many}).to_string();
    let max = u64::MAX;
    let cases = vec![
        // Repeated keys, at any depth of any body.
        hostile(
            "a repeated quantity",
            "POST",
            "/orders",
            &order_body("O-9", "1, \"quantity\": 5"),
            400,
            "duplicate_key",
        ),
        hostile(
            "a repeated order id",
            "POST",
            "/orders",
            r#"{"order_id": "O-9", "order_id": "O-8", "customer_id": "C", "region": "r", "lines": []}"#,
            400,
            "duplicate_key",
        ),
        hostile(
            "a repeated amount",
            "POST",
            "/orders/O-1/payments",
            r#"{"payment_id": "P", "amount": "19.90", "amount": "0.01"}"#,
            400,
            "duplicate_key",
        ),
        hostile(
            "a repeated price",
            "POST",
            "/products/TEA-1/price",
            r#"{"price": "29.90", "price": "0.01"}"#,
            400,
            "duplicate_key",
        ),
        hostile(
            "a repeated received quantity",
            "POST",
            "/products/TEA-1/receipts",
            r#"{"quantity": 1, "unit_cost": "8.00", "supplier_ref": "PO", "quantity": 100}"#,
            400,
            "duplicate_key",
        ),
        hostile(
            "a repeated SKU in a parcel",
            "POST",
            "/orders/O-2/shipments",
            r#"{"shipment_id": "S-9", "carrier": "SF", "tracking_number": "SF9",
            "lines": [{"sku": "TEA-1", "sku": "TEA-2", "quantity": 1}]}"#,
            400,
            "duplicate_key",
        ),
        hostile(
            "a repeated command_id",
            "POST",
            "/orders/O-1/payments",
            r#"{"command_id": "a", "command_id": "b", "payment_id": "P", "amount": "19.90"}"#,
            400,
            "duplicate_key",
        ),
        hostile(
            "a repeated key in a batch item",
            "POST",
            "/commands",
            r#"{"commands": [{"type": "receive_stock", "sku": "TEA-1", "quantity": 1, "quantity": 9,
            "unit_cost": "8.00", "supplier_ref": "PO"}]}"#,
            400,
            "duplicate_key",
        ),
        hostile(
            "a repeated type in a batch item",
            "POST",
            "/commands",
            r#"{"commands": [{"type": "delist_product", "type": "list_product", "sku": "TEA-1"}]}"#,
            400,
            "duplicate_key",
        ),
        hostile(
            "a repeated commands list",
            "POST",
            "/commands",
            r#"{"commands": [], "commands": [{"type": "delist_product", "sku": "TEA-1"}]}"#,
            400,
            "duplicate_key",
        ),
        // A repeated Idempotency-Key header, the same or another value.
        hostile(
            "a repeated Idempotency-Key",
            "POST",
            "/orders",
            &order_body("O-9", "1"),
            400,
            "invalid_idempotency_key",
        )
        .header("idempotency-key", "k-9")
        .header("idempotency-key", "k-8"),
        hostile(
            "an Idempotency-Key given twice alike",
            "POST",
            "/orders/O-1/payments",
            r#"{"payment_id": "P", "amount": "19.90"}"#,
            400,
            "invalid_idempotency_key",
        )
        .header("idempotency-key", "k-9")
        .header("idempotency-key", "k-9"),
        // An order's history: bad cursors and limits, and an unknown order.
        hostile("a zero history page", "GET", "/orders/O-1/history?limit=0", "", 400, "invalid_query"),
        hostile("a history page over 1,000", "GET", "/orders/O-1/history?limit=1001", "", 400, "invalid_query"),
        hostile("a negative history cursor", "GET", "/orders/O-1/history?after=-1", "", 400, "invalid_query"),
        hostile("a word for a history cursor", "GET", "/orders/O-1/history?after=last", "", 400, "invalid_query"),
        hostile(
            "a history cursor over u64",
            "GET",
            "/orders/O-1/history?after=18446744073709551616",
            "",
            400,
            "invalid_query",
        ),
        hostile("an unknown history parameter", "GET", "/orders/O-1/history?sort=desc", "", 400, "invalid_query"),
        hostile("the history of an unknown order", "GET", "/orders/O-404/history?limit=5", "", 404, "unknown_order"),
        // Series at the end of time, and too long.
        hostile(
            "a series of the last milliseconds",
            "GET",
            &format!("/analytics/series?from={}&to={max}", max - 5),
            "",
            400,
            "invalid_query",
        ),
        hostile(
            "a daily series to the end of time",
            "GET",
            &format!("/analytics/series?bucket=day&to={max}"),
            "",
            400,
            "invalid_query",
        ),
        hostile("a series past u64", "GET", "/analytics/series?to=18446744073709551616", "", 400, "invalid_query"),
        hostile(
            "a series of 10,000 hours",
            "GET",
            "/analytics/series?bucket=hour&from=0&to=36000000000",
            "",
            400,
            "invalid_query",
        ),
        hostile("a page of events over 1,000", "GET", "/events?limit=1001", "", 400, "invalid_query"),
        // A token for another shop: 403, whether or not the shop exists, and nothing appended.
        hostile("another shop's token places an order", "POST", "/orders", &order_body("O-9", "1"), 403, "forbidden")
            .token(Some(OTHER_SHOP)),
        hostile(
            "another shop's token changes a price",
            "POST",
            "/products/TEA-1/price",
            r#"{"price": "0.01"}"#,
            403,
            "forbidden",
        )
        .token(Some(OTHER_SHOP)),
        hostile(
            "another shop's token sends a batch",
            "POST",
            "/commands",
            r#"{"commands": [{"type": "delist_product", "sku": "TEA-1"}]}"#,
            403,
            "forbidden",
        )
        .token(Some(OTHER_SHOP)),
        hostile("another shop's token reads stock", "GET", "/stock/TEA-1", "", 403, "forbidden")
            .token(Some(OTHER_SHOP)),
        hostile("another shop's token reads a history", "GET", "/orders/O-1/history", "", 403, "forbidden")
            .token(Some(OTHER_SHOP)),
        hostile("another shop's token reads the events", "GET", "/events", "", 403, "forbidden")
            .token(Some(OTHER_SHOP)),
        hostile("another shop's token follows the events", "GET", "/events/stream", "", 403, "forbidden")
            .token(Some(OTHER_SHOP)),
        hostile("another shop's token reads the metrics", "GET", "", "", 403, "forbidden")
            .token(Some(OTHER_SHOP))
            .raw_path("/metrics"),
        hostile("a shop token reads an unknown shop", "GET", "", "", 403, "forbidden")
            .token(Some(OTHER_SHOP))
            .raw_path("/v1/shops/nowhere/stock"),
        hostile("malformed JSON", "POST", "/orders", r#"{"order_id": "#, 400, "malformed_json"),
        hostile("not an object", "POST", "/orders", "[1, 2]", 400, "invalid_body"),
        hostile("a string quantity", "POST", "/orders", &order_body("O-9", "\"2\""), 400, "invalid_body"),
        hostile("zero quantity", "POST", "/orders", &order_body("O-9", "0"), 400, "invalid_input"),
        hostile("negative quantity", "POST", "/orders", &order_body("O-9", "-1"), 400, "invalid_body"),
        hostile("huge quantity", "POST", "/orders", &order_body("O-9", "1e30"), 400, "invalid_body"),
        hostile(
            "quantity over u64",
            "POST",
            "/orders",
            &order_body("O-9", "18446744073709551616"),
            400,
            "invalid_body",
        ),
        hostile("quantity over the line limit", "POST", "/orders", &order_body("O-9", "10001"), 400, "invalid_input"),
        hostile("a fractional quantity", "POST", "/orders", &order_body("O-9", "1.5"), 400, "invalid_body"),
        hostile(
            "3-decimal money",
            "POST",
            "/orders/O-1/payments",
            r#"{"payment_id": "P", "amount": "19.900"}"#,
            400,
            "invalid_body",
        ),
        hostile(
            "float money",
            "POST",
            "/orders/O-1/payments",
            r#"{"payment_id": "P", "amount": 19.9}"#,
            400,
            "invalid_body",
        ),
        hostile("money with an exponent", "POST", "/products/TEA-1/price", r#"{"price": "1e2"}"#, 400, "invalid_body"),
        hostile("zero price", "POST", "/products/TEA-1/price", r#"{"price": "0"}"#, 400, "invalid_input"),
        hostile("negative price", "POST", "/products/TEA-1/price", r#"{"price": "-1.00"}"#, 400, "invalid_input"),
        hostile("huge price", "POST", "/products/TEA-1/price", r#"{"price": "99999999999.00"}"#, 400, "invalid_input"),
        hostile(
            "unknown field",
            "POST",
            "/orders",
            r#"{"order_id": "O-9", "customer_id": "C", "region": "r",
            "lines": [{"sku": "TEA-1", "quantity": 1}], "coupon": "FREE"}"#,
            400,
            "invalid_body",
        ),
        hostile(
            "unknown field in a line",
            "POST",
            "/orders",
            r#"{"order_id": "O-9", "customer_id": "C", "region": "r",
            "lines": [{"sku": "TEA-1", "quantity": 1, "discount": "5"}]}"#,
            400,
            "invalid_body",
        ),
        hostile("missing field", "POST", "/orders/O-1/payments", r#"{"payment_id": "P"}"#, 400, "invalid_body"),
        hostile("overlong order id", "POST", "/orders", &order_body(&long_id, "1"), 400, "invalid_input"),
        hostile("overlong SKU in the path", "POST", &format!("/products/{long_id}/delist"), "", 400, "invalid_input"),
        hostile("a control character in an id", "POST", "/orders", &order_body("O\\u0000", "1"), 400, "invalid_input"),
        hostile(
            "a control character in a title",
            "POST",
            "/products",
            r#"{"sku": "S-9", "title": "Tea\u0007",
            "category": "tea", "price": "1.00", "weight_g": 1, "low_stock_threshold": 0}"#,
            400,
            "invalid_input",
        ),
        hostile(
            "a control character in the path",
            "POST",
            "/orders/O%001/payments",
            r#"{"payment_id": "P", "amount": "19.90"}"#,
            400,
            "invalid_input",
        ),
        hostile(
            "a path trick in an id",
            "POST",
            "/orders/..%2F..%2Fetc/payments",
            r#"{"payment_id": "P", "amount": "19.90"}"#,
            400,
            "invalid_input",
        ),
        hostile("a path trick in the shop", "POST", "", &order_body("O-9", "1"), 400, "invalid_shop")
            .raw_path("/v1/shops/..%2Fmain/orders"),
        hostile("an upper-case shop", "POST", "", &order_body("O-9", "1"), 400, "invalid_shop")
            .raw_path("/v1/shops/MAIN/orders"),
        hostile("an unknown shop", "POST", "", &order_body("O-9", "1"), 404, "unknown_shop")
            .raw_path("/v1/shops/nowhere/orders"),
        hostile("a 2 MiB body", "POST", "/orders", &huge, 413, "body_too_large"),
        hostile("a batch over 1,000", "POST", "/commands", &many, 400, "invalid_batch"),
        hostile("an empty batch", "POST", "/commands", r#"{"commands": []}"#, 400, "invalid_batch"),
        hostile("no token", "POST", "/orders", &order_body("O-9", "1"), 401, "unauthorized").token(None),
        hostile("a wrong token", "POST", "/orders", &order_body("O-9", "1"), 401, "unauthorized")
            .token(Some("not-a-token-at-all-123")),
        hostile("not a bearer token", "GET", "/stock/TEA-1", "", 401, "unauthorized")
            .token(None)
            .header("authorization", "Basic YWRtaW46YWRtaW4="),
        hostile("the auditor posts a command", "POST", "/orders", &order_body("O-9", "1"), 403, "forbidden")
            .token(Some(AUDITOR)),
        hostile("an operator creates a shop", "PUT", "", "", 403, "forbidden").raw_path("/v1/shops/second"),
        hostile(
            "ship before pay",
            "POST",
            "/orders/O-1/shipments",
            r#"{"shipment_id": "S-1", "carrier": "SF",
            "tracking_number": "SF1", "lines": [{"sku": "TEA-1", "quantity": 1}]}"#,
            409,
            "order_not_paid",
        ),
        hostile(
            "refund over paid",
            "POST",
            "/orders/O-2/refunds",
            r#"{"refund_id": "R-1", "amount": "20.00"}"#,
            409,
            "refund_exceeds_paid",
        ),
        hostile(
            "pay the wrong amount",
            "POST",
            "/orders/O-1/payments",
            r#"{"payment_id": "P", "amount": "1.00"}"#,
            409,
            "amount_mismatch",
        ),
        hostile("more than the stock", "POST", "/orders", &order_body("O-9", "100"), 409, "insufficient_stock"),
        hostile(
            "list a listed SKU",
            "POST",
            "/products",
            r#"{"sku": "TEA-1", "title": "Tea", "category": "tea",
            "price": "1.00", "weight_g": 1, "low_stock_threshold": 0}"#,
            409,
            "product_already_listed",
        ),
        hostile(
            "an unknown SKU",
            "POST",
            "/orders",
            r#"{"order_id": "O-9", "customer_id": "C", "region": "r",
            "lines": [{"sku": "NOPE", "quantity": 1}]}"#,
            404,
            "unknown_sku",
        ),
        hostile(
            "pay an unknown order",
            "POST",
            "/orders/O-404/payments",
            r#"{"payment_id": "P", "amount": "1.00"}"#,
            404,
            "unknown_order",
        ),
        hostile(
            "deliver an unknown parcel",
            "POST",
            "/orders/O-2/shipments/S-404/delivery",
            "",
            404,
            "unknown_shipment",
        ),
        hostile(
            "receive an unknown return",
            "POST",
            "/orders/O-2/returns/R-404/receipt",
            r#"{"inspections": [{"sku": "TEA-1", "quantity": 1, "condition": "damaged"}]}"#,
            404,
            "unknown_return",
        ),
        hostile(
            "an idempotency key with another body",
            "POST",
            "/orders",
            &order_body("O-4", "1"),
            409,
            "idempotency_conflict",
        )
        .header("idempotency-key", "key-1"),
        hostile(
            "key and command_id differ",
            "POST",
            "/orders/O-1/payments",
            r#"{"command_id": "a", "payment_id": "P", "amount": "19.90"}"#,
            400,
            "idempotency_key_mismatch",
        )
        .header("idempotency-key", "b"),
        hostile(
            "an overlong idempotency key",
            "POST",
            "/orders/O-1/payments",
            r#"{"payment_id": "P", "amount": "19.90"}"#,
            400,
            "invalid_idempotency_key",
        )
        .header("idempotency-key", &"k".repeat(200)),
        hostile(
            "a path field in the body",
            "POST",
            "/orders/O-1/payments",
            r#"{"order_id": "O-2", "payment_id": "P", "amount": "19.90"}"#,
            400,
            "invalid_body",
        ),
        hostile(
            "an unknown party",
            "POST",
            "/orders/O-1/cancel",
            r#"{"by": "alien", "reason": "no"}"#,
            400,
            "invalid_body",
        ),
        hostile("a zero page", "GET", "/events?limit=0", "", 400, "invalid_query"),
        hostile("a word for a position", "GET", "/events?after=abc", "", 400, "invalid_query"),
        hostile("an unknown query parameter", "GET", "/ledger/journal?after=0&sort=desc", "", 400, "invalid_query"),
        hostile("a bogus Last-Event-ID", "GET", "/events/stream", "", 400, "invalid_last_event_id")
            .header("last-event-id", "yesterday"),
        hostile("an unknown order", "GET", "/orders/O-404", "", 404, "unknown_order"),
        hostile("a bad SKU", "GET", "/stock/TEA%20ONE", "", 400, "invalid_input"),
        hostile("an unknown route", "GET", "/warehouses", "", 404, "not_found"),
        hostile("a wrong method", "PUT", "/orders", "", 405, "method_not_allowed"),
        // Heads the server cannot read: answered by hyper itself, with the error shape.
        hostile("a header over 64 KiB", "GET", "/stock/TEA-1", "", 431, "header_too_large")
            .header("x-padding", &"p".repeat(70_000)),
        hostile("a URI over 8 KiB", "GET", &format!("/stock/TEA-1?{}", "q".repeat(9000)), "", 414, "uri_too_long"),
        hostile("a control byte in the path", "GET", "/stock/TEA\u{1}1", "", 400, "malformed_request"),
    ];
    assert!(cases.len() >= 80, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let client = match case.token {
            Some(token) => operator.with_token(token),
            None => Client { address: operator.address, token: None },
        };
        let headers: Vec<(&str, &str)> = case.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let response = client.send(case.method, &case.path, &headers, &case.body);
        let got = (response.status, response.code());
        if got != (case.status, case.code.to_owned()) {
            failures.push(format!(
                "{}: got {got:?}, want ({}, {:?}): {}",
                case.name,
                case.status,
                case.code,
                String::from_utf8_lossy(&response.body)
            ));
        }
        let error = response.json();
        let message = error["error"]["message"].as_str().unwrap_or("");
        if message.is_empty() || !error["error"]["details"].is_object() {
            failures.push(format!("{}: not the error shape: {error}", case.name));
        }
        if response.status == 503 || (response.status >= 500) {
            failures.push(format!("{}: a 5xx for a caller's mistake", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(log_end(&operator), end, "no hostile request appended anything");
    let auditor = operator.with_token(AUDITOR);
    assert_eq!(auditor.get(&format!("{SHOP}/ledger/trial-balance")).status, 200, "the auditor reads");
    assert_eq!(server.client().with_token(ADMIN).send("PUT", "/v1/shops/second", &[], b"").status, 201);
}

#[test]
fn an_event_follower_that_reconnects_gets_every_event_once_in_order() {
    let dir = temp_dir();
    let server = Server::start(&dir.path().join("data"), false);
    let client = server.client();
    let list = json!({"sku": "F-1", "title": "Feed", "category": "misc", "price": "1.00", "weight_g": 1,
        "low_stock_threshold": 0});
    assert_eq!(client.post(&format!("{SHOP}/products"), &list).status, 201);
    let receive = json!({"quantity": 100000, "unit_cost": "0.50", "supplier_ref": "PO"});
    assert_eq!(client.post(&format!("{SHOP}/products/F-1/receipts"), &receive).status, 200);
    let orders = 120;
    let writer = {
        let client = client.clone();
        std::thread::spawn(move || {
            for n in 0..orders {
                let body = json!({"order_id": format!("F-{n}"), "customer_id": "C", "region": "r",
                    "lines": [{"sku": "F-1", "quantity": 1}]});
                assert_eq!(client.post(&format!("{SHOP}/orders"), &body).status, 201);
            }
        })
    };
    let end = 2 + orders;
    let mut seen = Vec::new();
    let mut follower = Follower::connect(&client, &format!("{SHOP}/events/stream"), None);
    for _ in 0..25 {
        seen.push(follower.next());
    }
    drop(follower);
    let mut last = seen.last().map(|(id, _)| *id);
    // Reconnect a few times while the log grows, each time from the last id seen.
    while last != Some(end) {
        let mut follower = Follower::connect(&client, &format!("{SHOP}/events/stream"), last);
        for _ in 0..17 {
            let event = follower.next();
            last = Some(event.0);
            seen.push(event);
            if last == Some(end) {
                break;
            }
        }
    }
    writer.join().expect("the writer finished");
    let ids: Vec<u64> = seen.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (1..=end).collect::<Vec<u64>>(), "every event once, in order");
    for (id, data) in &seen {
        assert_eq!(data["position"], *id);
    }
    assert_eq!(seen[0].1["type"], "product_listed");
}

#[test]
fn sigterm_under_load_keeps_every_acknowledged_command() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let server = Server::start(&data, false);
    let client = server.client();
    let list = json!({"sku": "T-1", "title": "Term", "category": "misc", "price": "1.00", "weight_g": 1,
        "low_stock_threshold": 0});
    assert_eq!(client.post(&format!("{SHOP}/products"), &list).status, 201);
    let receive = json!({"quantity": 1000000, "unit_cost": "0.50", "supplier_ref": "PO"});
    assert_eq!(client.post(&format!("{SHOP}/products/T-1/receipts"), &receive).status, 200);

    let acknowledged: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let (client, acknowledged) = (client.clone(), acknowledged.clone());
            std::thread::spawn(move || {
                for n in 0.. {
                    let id = format!("W{worker}-{n}");
                    let body = json!({"order_id": id, "customer_id": "C", "region": "r",
                        "lines": [{"sku": "T-1", "quantity": 1}]});
                    let sent = client.try_send(
                        "POST",
                        &format!("{SHOP}/orders"),
                        &[("content-type", "application/json"), ("idempotency-key", &id)],
                        body.to_string().as_bytes(),
                    );
                    match sent {
                        Ok(response) if response.status == 201 => {
                            let position = response.json()["positions"]["first"].as_u64().expect("position");
                            acknowledged.lock().expect("lock").push((id, position));
                        }
                        // A refused connection or a closed one: the server is stopping.
                        Ok(_) | Err(_) => return,
                    }
                }
            })
        })
        .collect();
    // Let the load run until a good number of orders were acknowledged, then stop the server.
    while acknowledged.lock().expect("lock").len() < 300 {
        assert!(!workers.iter().all(|w| w.is_finished()), "the load stopped before the server was told to");
        std::thread::yield_now();
    }
    server.terminate();
    for worker in workers {
        worker.join().expect("worker");
    }
    let (exited_cleanly, said) = server.wait();
    assert!(exited_cleanly, "the server exits 0 on SIGTERM");
    assert!(said.contains("stopped"), "{said}");

    let acknowledged = acknowledged.lock().expect("lock").clone();
    let store = SledStore::open(&layout::log_dir(&data)).expect("the store reopens");
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let shop = ShopId::main();
    let events = runtime.block_on(store.read_from(&shop, 0, 1_000_000)).expect("reads");
    let placed: BTreeSet<(String, u64)> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::OrderPlaced { order_id, .. } => Some((order_id.as_str().to_owned(), e.position)),
            _ => None,
        })
        .collect();
    for (id, position) in &acknowledged {
        assert!(placed.contains(&(id.clone(), *position)), "acknowledged order {id} at {position} is in the log");
    }
    assert!(acknowledged.len() >= 300);
}
