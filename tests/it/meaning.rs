//! A log that decodes but means something impossible never takes the server down: `import`
//! refuses such an export before a store exists, `verify --deep` finds it in a store, `serve`
//! refuses only that shop (naming the position and the reason) and serves the others, and
//! amounts with more than two decimal places do not decode. The domain bounds the parcels,
//! returns and refunds of an order.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use emporium::domain::limits::{REFUNDS_PER_ORDER_MAX, RETURNS_PER_ORDER_MAX, SHIPMENTS_PER_ORDER_MAX};
use emporium::domain::rejection::OrderPart;
use emporium::engine::{CommandError, Engine, EngineConfig, ManualClock, Request};
use emporium::log::layout;
use emporium::log::record::{self, Envelope, Hash};
use emporium::log::store::{AppendBatch, EventStore, MemoryStore, SledStore};
use emporium::{CommandId, CompactString, Condition, Event, Rejection, ShopId, State, Timestamp, rehearsal::demo};
use rust_decimal::Decimal;
use rust_decimal::dec;
use serde_json::{Map, Value, json};

use crate::http::Server;
use crate::support::{
    at, emporium, inspect, list, pay, place, receive, receive_return, refund, request_return, ship, temp_dir,
};

fn shop(id: &str) -> ShopId {
    ShopId::new(id).expect("a valid shop id")
}

/// `events` as a log records them: positions from 1, streams and their versions counted.
fn envelopes(events: Vec<Event>) -> Vec<Envelope> {
    let mut versions: HashMap<CompactString, u64> = HashMap::new();
    let mut envelopes = Vec::with_capacity(events.len());
    for (index, event) in events.into_iter().enumerate() {
        let stream = record::stream_of(&event);
        let version = versions.entry(stream.clone()).or_insert(0);
        *version += 1;
        envelopes.push(Envelope {
            position: index as u64 + 1,
            stream,
            stream_version: *version,
            recorded_at: at(index as u64),
            command_id: CommandId::new(&format!("cmd-{index}")).expect("an id"),
            fingerprint: [7; 16],
            correlation_id: format!("cmd-{index}").into(),
            actor: "tester".into(),
            event,
        });
    }
    envelopes
}

/// Writes `events` straight into a new shop `id` of the store in `data`, as no engine would.
async fn write_shop(data: &Path, id: &str, events: Vec<Event>) {
    let store = SledStore::open(&layout::log_dir(data)).expect("the store opens");
    store.create_shop(&shop(id)).await.expect("created");
    let batch = AppendBatch { expected_last: 0, events: envelopes(events), rejections: Vec::new() };
    store.append(&shop(id), &batch).await.expect("appended");
}

fn listed(sku: &str, price: Decimal) -> Event {
    Event::ProductListed {
        sku: sku.into(),
        title: format!("Product {sku}"),
        category: "misc".to_owned(),
        price,
        weight_g: 100,
        low_stock_threshold: 1,
    }
}

/// A receipt of every unit a `u64` counts: it would take the shelf past any bound.
fn huge_receipt(sku: &str) -> Event {
    Event::StockReceived {
        sku: sku.into(),
        quantity: u64::MAX,
        unit_cost: dec!(0.00),
        value: dec!(0.00),
        supplier_ref: "PO-9".to_owned(),
    }
}

/// The scripted shop day, exported by the library.
async fn shop_day_export() -> String {
    let (_, events) = demo::run(&demo::shop_day()).expect("the day runs");
    let store = MemoryStore::new();
    store.create_shop(&ShopId::main()).await.expect("created");
    let batch = AppendBatch { expected_last: 0, events: envelopes(events), rejections: Vec::new() };
    store.append(&ShopId::main(), &batch).await.expect("appended");
    let mut bytes = Vec::new();
    emporium::log::transfer::export(&store, &mut bytes, |_| ()).await.expect("exports");
    String::from_utf8(bytes).expect("UTF-8")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The one-shop export `text` with its event lines edited by `edit`, then renumbered, its
/// streams and stream versions counted again and its hash chain recomputed, as whoever forges
/// an export would: every structural check passes.
fn forge(text: &str, edit: impl FnOnce(&mut Vec<Map<String, Value>>)) -> String {
    let parse = |line: &str| serde_json::from_str::<Map<String, Value>>(line).expect("a JSON object");
    let mut lines: Vec<Map<String, Value>> = text.lines().map(parse).collect();
    lines.pop();
    let header = lines.remove(0);
    edit(&mut lines);
    let shop = shop(header["shop"].as_str().expect("a shop"));
    let mut previous: Hash = record::genesis_hash(&shop);
    let mut versions: HashMap<CompactString, u64> = HashMap::new();
    let mut out = vec![json!({"shop": shop.as_str(), "events": lines.len()}).to_string()];
    for (index, line) in lines.iter_mut().enumerate() {
        let event: Event = serde_json::from_value(line["event"].clone()).expect("an event");
        let stream = record::stream_of(&event);
        let version = versions.entry(stream.clone()).or_insert(0);
        *version += 1;
        line.insert("position".to_owned(), json!(index + 1));
        line.insert("stream".to_owned(), json!(stream.as_str()));
        line.insert("stream_version".to_owned(), json!(*version));
        line.insert("type".to_owned(), json!(event.kind()));
        let envelope = Envelope {
            position: index as u64 + 1,
            stream,
            stream_version: *version,
            recorded_at: Timestamp(line["recorded_at"].as_u64().expect("a time")),
            command_id: CommandId::new(line["command_id"].as_str().expect("an id")).expect("an id"),
            fingerprint: [7; 16],
            correlation_id: line["correlation_id"].as_str().expect("an id").into(),
            actor: line["actor"].as_str().expect("an actor").into(),
            event,
        };
        line.insert("fingerprint".to_owned(), json!(hex(&[7; 16])));
        previous = record::encode_record(&envelope, &previous, &mut Vec::new()).expect("encodes");
        line.insert("hash".to_owned(), json!(hex(&previous)));
        out.push(Value::Object(line.clone()).to_string());
    }
    out.push(json!({"shops": 1, "events": lines.len()}).to_string());
    out.join("\n") + "\n"
}

/// The index among the event lines of the first of type `kind`.
fn first_of(lines: &[Map<String, Value>], kind: &str) -> usize {
    lines.iter().position(|line| line["type"] == kind).unwrap_or_else(|| panic!("no {kind}"))
}

#[tokio::test]
async fn import_refuses_an_export_whose_events_do_not_fit_and_creates_no_store() {
    let text = shop_day_export().await;
    let dir = temp_dir();
    type Edit = Box<dyn FnOnce(&mut Vec<Map<String, Value>>)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "a paid-order event removed",
            Box::new(|l| drop(l.remove(first_of(l, "order_paid")))),
            "shop main, position 14: the event does not fit the shop: order A-1001 ships while not paid and open",
        ),
        (
            "200 of 100 units shipped",
            Box::new(|l| {
                let parcel = first_of(l, "shipment_dispatched");
                l[parcel]["event"]["shipment_dispatched"]["lines"][0]["quantity"] = json!(200);
            }),
            "shop main, position 15: the event does not fit the shop: 200 units of TEA-001 where order A-1001 ships at most 2",
        ),
        (
            "an unknown SKU",
            Box::new(|l| l[3]["event"]["stock_received"]["sku"] = json!("GHOST-9")),
            "shop main, position 4: the event does not fit the shop: SKU GHOST-9 is unknown",
        ),
        (
            "a receipt of u64::MAX units",
            Box::new(|l| l[3]["event"]["stock_received"]["quantity"] = json!(u64::MAX)),
            "shop main, position 4: the event does not fit the shop: a receipt of 18446744073709551615 units takes TEA-001 past",
        ),
        (
            "a duplicate placement",
            Box::new(|l| {
                let placed = first_of(l, "order_placed");
                let copy = l[placed].clone();
                l.insert(placed + 1, copy);
            }),
            "shop main, position 10: the event does not fit the shop: order A-1001 is placed twice",
        ),
        (
            "an amount with three decimal places",
            Box::new(|l| {
                let paid = first_of(l, "order_paid");
                l[paid]["event"]["order_paid"]["amount"] = json!("438.005");
            }),
            "shop main, position 12: the event does not fit the shop: order_paid records the amount 438.005",
        ),
    ];
    for (index, (name, edit, expected)) in cases.into_iter().enumerate() {
        let forged = forge(&text, edit);
        let file = dir.path().join(format!("forged-{index}.jsonl"));
        std::fs::write(&file, &forged).expect("written");
        let target = dir.path().join(format!("target-{index}"));
        let (ok, out, err) = emporium(&["import", file.to_str().expect("UTF-8")], &target);
        assert!(!ok, "{name}: imported: {out}");
        assert!(err.contains(expected), "{name}: expected {expected:?}\n got {err:?}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(!target.exists(), "{name}: the refused import created {}", target.display());
    }
    // The same forging without an edit gives an export that imports: the refusals above are
    // the edits', not the forging's.
    let untouched = dir.path().join("untouched.jsonl");
    std::fs::write(&untouched, forge(&text, |_| ())).expect("written");
    let target = dir.path().join("target-untouched");
    let (ok, out, err) = emporium(&["import", untouched.to_str().expect("UTF-8")], &target);
    assert!(ok && out.starts_with("shop main: 21 events imported"), "{out}{err}");
}

#[tokio::test]
async fn verify_deep_replays_each_shop_and_reports_the_first_event_that_does_not_fit() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let (ok, _, err) = emporium(&["demo"], &data);
    assert!(ok, "{err}");
    write_shop(&data, "bad", vec![listed("TEA-9", dec!(10.00)), huge_receipt("TEA-9")]).await;

    let (ok, out, err) = emporium(&["verify"], &data);
    assert!(ok, "the chain of every shop is intact: {out}{err}");
    let (ok, out, err) = emporium(&["verify", "--deep"], &data);
    assert!(!ok, "{out}");
    assert!(out.contains("shop main: 21 events, chain intact"), "{out}");
    assert!(
        out.contains(
            "shop bad: FAILED at position 2: the event does not fit the shop: a receipt of 18446744073709551615 units takes TEA-9 past"
        ),
        "{out}"
    );
    assert!(err.contains("verification failed: shop bad at position 2") && !err.contains("panicked"), "{err}");
}

/// A data directory with a valid shop (`main`), a shop whose log holds a receipt past every
/// bound (`bad`) and one whose log holds a price with three decimal places (`cents`).
async fn data_with_bad_shops(data: &Path) {
    let (ok, _, err) = emporium(&["demo"], data);
    assert!(ok, "{err}");
    write_shop(data, "bad", vec![listed("TEA-9", dec!(10.00)), huge_receipt("TEA-9")]).await;
    write_shop(data, "cents", vec![listed("TEA-8", dec!(10.005))]).await;
}

#[tokio::test]
async fn serve_refuses_only_the_shops_whose_logs_do_not_fit_naming_position_and_reason() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    data_with_bad_shops(&data).await;
    let server = Server::start(&data, false);
    let client = server.client();

    let balance = client.get("/v1/shops/main/ledger/trial-balance");
    assert_eq!((balance.status, balance.json()["total"].clone()), (200, json!("0.00")));
    let product = json!({"sku": "MUG-1", "title": "Mug", "category": "teaware", "price": "9.90",
        "weight_g": 300, "low_stock_threshold": 1});
    let headers = [("content-type", "application/json"), ("idempotency-key", "mug-1")];
    let listed = client.send("POST", "/v1/shops/main/products", &headers, product.to_string().as_bytes());
    assert_eq!(listed.status, 201, "the valid shop takes commands: {}", listed.json());

    let refused = client.send("POST", "/v1/shops/bad/products", &headers, product.to_string().as_bytes());
    assert_eq!((refused.status, refused.code()), (503, "shop_unavailable".to_owned()), "{}", refused.json());
    let message = refused.json()["error"]["message"].as_str().unwrap_or("").to_owned();
    assert!(
        message.contains("position 2")
            && message.contains("the event does not fit the shop: a receipt of 18446744073709551615 units takes TEA-9"),
        "{message}"
    );
    let read = client.get("/v1/shops/bad/stock/TEA-9");
    assert_eq!(read.status, 503, "{}", read.json());

    // A recorded amount with three decimal places does not decode: the shop is refused, and
    // its trial balance is an answer, not a dropped connection.
    let balance = client.get("/v1/shops/cents/ledger/trial-balance");
    assert_eq!((balance.status, balance.code()), (503, "shop_unavailable".to_owned()));
    let message = balance.json()["error"]["message"].as_str().unwrap_or("").to_owned();
    assert!(message.contains("position 1") && message.contains("10.005"), "{message}");
    let stock = client.get("/v1/shops/main/stock/TEA-001");
    assert_eq!(stock.status, 200, "the valid shop is still served");
}

/// A paid order of `units` units of one SKU, all on the shelf.
fn paid_order(state: &mut State, order_id: &str, units: u64) -> Decimal {
    let now = at(0);
    state.execute(now, &list("S-1", dec!(1.00))).expect("listed");
    state.execute(now, &receive("S-1", units, dec!(0.50))).expect("received");
    state.execute(now, &place(order_id, &[("S-1", units)])).expect("placed");
    let total = Decimal::from(units);
    state.execute(now, &pay(order_id, total)).expect("paid");
    total
}

fn limit_reached(order_id: &str, part: OrderPart, max: usize) -> Rejection {
    Rejection::OrderLimitReached { order_id: order_id.into(), part, max: max as u64 }
}

#[tokio::test]
async fn the_parcel_after_the_last_an_order_may_have_is_refused_and_appends_nothing() {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(at(0)));
    let engine = Engine::open(store.clone(), clock, EngineConfig::default()).await.expect("opens");
    let main = ShopId::main();
    engine.create_shop(&main).await.expect("created");
    let units = SHIPMENTS_PER_ORDER_MAX as u64 + 1;
    let run = |command| engine.execute(&main, Request::new("tester", command));
    run(list("S-1", dec!(1.00))).await.expect("listed");
    run(receive("S-1", units, dec!(0.50))).await.expect("received");
    run(place("O-1", &[("S-1", units)])).await.expect("placed");
    run(pay("O-1", Decimal::from(units))).await.expect("paid");
    for parcel in 0..SHIPMENTS_PER_ORDER_MAX {
        run(ship("O-1", &format!("P-{parcel}"), &[("S-1", 1)])).await.expect("shipped");
    }
    let end = store.last_position(&main).await.expect("readable");
    let refused = run(ship("O-1", "P-LAST", &[("S-1", 1)])).await;
    let expected = limit_reached("O-1", OrderPart::Parcels, SHIPMENTS_PER_ORDER_MAX);
    assert!(matches!(&refused, Err(CommandError::Rejected(r)) if *r == expected), "{refused:?}");
    assert_eq!(expected.code(), "order_limit_reached");
    assert_eq!(store.last_position(&main).await, Ok(end), "nothing appended");
    engine.close().await;
}

#[test]
fn returns_and_refunds_per_order_are_bounded_and_the_next_changes_nothing() {
    let mut state = State::new();
    let units = RETURNS_PER_ORDER_MAX as u64 + 1;
    paid_order(&mut state, "O-1", units);
    state.execute(at(1), &ship("O-1", "P-1", &[("S-1", units)])).expect("shipped");
    for index in 0..RETURNS_PER_ORDER_MAX {
        state.execute(at(2), &request_return("O-1", &format!("R-{index}"), &[("S-1", 1)])).expect("requested");
    }
    let before = state.clone();
    let refused = state.execute(at(3), &request_return("O-1", "R-LAST", &[("S-1", 1)]));
    assert_eq!(refused, Err(limit_reached("O-1", OrderPart::Returns, RETURNS_PER_ORDER_MAX)));
    assert!(state == before, "a refused return changes nothing");

    let returned = vec![inspect("S-1", 1, Condition::Resellable)];
    state.execute(at(4), &receive_return("O-1", "R-0", returned)).expect("received");
    for index in 0..REFUNDS_PER_ORDER_MAX {
        state.execute(at(5), &refund("O-1", &format!("RF-{index}"), dec!(0.01), None)).expect("refunded");
    }
    let before = state.clone();
    let refused = state.execute(at(6), &refund("O-1", "RF-LAST", dec!(0.01), None));
    assert_eq!(refused, Err(limit_reached("O-1", OrderPart::Refunds, REFUNDS_PER_ORDER_MAX)));
    assert!(state == before, "a refused refund changes nothing");
}

/// `State::try_apply` answers every impossible event with an `Unfit` and leaves a
/// well-formed log's fold exactly as `apply` does.
#[test]
fn try_apply_refuses_impossible_events_and_folds_possible_ones_as_apply_does() {
    let (expected, events) = demo::run(&demo::shop_day()).expect("the day runs");
    let mut state = State::new();
    for event in &events {
        state.try_apply(event).expect("a decided event fits");
    }
    assert!(state == expected, "the same state as apply");

    let paid = events.iter().position(|e| e.kind() == "order_paid").expect("a payment");
    let unfit = |events: &[Event]| {
        let mut state = State::new();
        events.iter().find_map(|event| state.try_apply(event).err()).map(|unfit| unfit.reason)
    };
    let mut without_payment = events.clone();
    without_payment.remove(paid);
    assert!(unfit(&without_payment).is_some_and(|r| r.contains("paid twice") || r.contains("not paid")));
    let mut twice = events[..9].to_vec();
    twice.push(events[8].clone());
    assert_eq!(unfit(&twice).as_deref(), Some("order A-1001 is placed twice"));
    let orphan = vec![events[paid].clone()];
    assert_eq!(unfit(&orphan).as_deref(), Some("order A-1001 is unknown"));
    assert_eq!(unfit(&[listed("S", dec!(1.001))]).map(|r| r.contains("1.001")), Some(true));
}
