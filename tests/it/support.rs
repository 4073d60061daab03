//! What the tests share: command builders, time, temporary stores, concurrent submission.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use emporium::domain::command::{Inspection, Line};
use emporium::engine::{Accepted, CommandError, Engine, ManualClock, Request};
use emporium::log::record::Envelope;
use emporium::log::store::EventStore;
use emporium::rehearsal::demo::DAY_START;
use emporium::{Command, Condition, ShopId, State, Timestamp, rehearsal::sim};
use rust_decimal::Decimal;

pub const MINUTE_MS: u64 = 60_000;

pub fn at(minutes: u64) -> Timestamp {
    Timestamp(DAY_START.0 + minutes * MINUTE_MS)
}

pub fn list(sku: &str, price: Decimal) -> Command {
    Command::ListProduct {
        sku: sku.into(),
        title: format!("Product {sku}"),
        category: "misc".to_owned(),
        price,
        weight_g: 100,
        low_stock_threshold: 3,
    }
}

pub fn receive(sku: &str, quantity: u64, unit_cost: Decimal) -> Command {
    Command::ReceiveStock { sku: sku.into(), quantity, unit_cost, supplier_ref: "PO-1".to_owned() }
}

pub fn lines(lines: &[(&str, u64)]) -> Vec<Line> {
    lines.iter().map(|(sku, quantity)| Line::new(sku, *quantity)).collect()
}

pub fn place(order_id: &str, order_lines: &[(&str, u64)]) -> Command {
    place_with(order_id, order_lines, None)
}

pub fn place_with(order_id: &str, order_lines: &[(&str, u64)], reservation_id: Option<&str>) -> Command {
    Command::PlaceOrder {
        order_id: order_id.into(),
        customer_id: "C-1".into(),
        lines: lines(order_lines),
        region: "zhejiang".to_owned(),
        reservation_id: reservation_id.map(Into::into),
    }
}

pub fn reserve(reservation_id: &str, reserve_lines: &[(&str, u64)], ttl_ms: Option<u64>) -> Command {
    Command::ReserveStock { reservation_id: reservation_id.into(), lines: lines(reserve_lines), ttl_ms }
}

pub fn pay(order_id: &str, amount: Decimal) -> Command {
    Command::Pay { order_id: order_id.into(), payment_id: format!("PAY-{order_id}").as_str().into(), amount }
}

pub fn ship(order_id: &str, shipment_id: &str, ship_lines: &[(&str, u64)]) -> Command {
    Command::Ship {
        order_id: order_id.into(),
        shipment_id: shipment_id.into(),
        carrier: "ZTO".to_owned(),
        tracking_number: "ZTO123".to_owned(),
        lines: lines(ship_lines),
    }
}

pub fn cancel(order_id: &str) -> Command {
    Command::Cancel { order_id: order_id.into(), by: emporium::Party::Buyer, reason: "buyer asked".to_owned() }
}

pub fn request_return(order_id: &str, return_id: &str, return_lines: &[(&str, u64)]) -> Command {
    Command::RequestReturn {
        order_id: order_id.into(),
        return_id: return_id.into(),
        lines: lines(return_lines),
        reason: "did not fit".to_owned(),
    }
}

pub fn inspect(sku: &str, quantity: u64, condition: Condition) -> Inspection {
    Inspection { sku: sku.into(), quantity, condition }
}

pub fn receive_return(order_id: &str, return_id: &str, inspections: Vec<Inspection>) -> Command {
    Command::ReceiveReturn { order_id: order_id.into(), return_id: return_id.into(), inspections }
}

pub fn refund(order_id: &str, refund_id: &str, amount: Decimal, return_id: Option<&str>) -> Command {
    Command::Refund {
        order_id: order_id.into(),
        refund_id: refund_id.into(),
        amount,
        return_id: return_id.map(Into::into),
    }
}

/// A fresh temporary directory, removed when dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("emporium-test-").tempdir().expect("a temporary directory")
}

/// Submits every request to `shop` from `tasks` concurrent tasks (request `i` goes to task
/// `i % tasks`, which sends its share one at a time) and returns the answers in request order.
pub async fn submit_all(
    engine: &Arc<Engine>,
    shop: &ShopId,
    requests: Vec<Request>,
    tasks: usize,
) -> Vec<Result<Accepted, CommandError>> {
    let count = requests.len();
    let mut shares: Vec<Vec<(usize, Request)>> = (0..tasks).map(|_| Vec::new()).collect();
    for (index, request) in requests.into_iter().enumerate() {
        shares[index % tasks].push((index, request));
    }
    let mut handles = Vec::with_capacity(tasks);
    for share in shares {
        let engine = engine.clone();
        let shop = shop.clone();
        handles.push(tokio::spawn(async move {
            let mut answers = Vec::with_capacity(share.len());
            for (index, request) in share {
                answers.push((index, engine.execute(&shop, request).await));
            }
            answers
        }));
    }
    let mut answers: Vec<Option<Result<Accepted, CommandError>>> = (0..count).map(|_| None).collect();
    for handle in handles {
        for (index, answer) in handle.await.expect("a submitting task") {
            answers[index] = Some(answer);
        }
    }
    answers.into_iter().map(|a| a.expect("every request answered")).collect()
}

/// Runs commands in order through the engine at their times, pricing generated payments
/// and refunds against the state first. Returns (accepted, rejected).
pub async fn drive(
    engine: &Engine,
    shop: &ShopId,
    clock: &ManualClock,
    commands: Vec<(Timestamp, Command)>,
) -> (u64, u64) {
    let (mut accepted, mut rejected) = (0, 0);
    for (at, command) in commands {
        clock.set(at);
        let command = match command {
            Command::Pay { .. } | Command::Refund { .. } => {
                engine.read(shop, move |state: &State| sim::price(state, command)).await.expect("served")
            }
            other => other,
        };
        match engine.execute(shop, Request::new("tester", command)).await {
            Ok(_) => accepted += 1,
            Err(CommandError::Rejected(_)) => rejected += 1,
            Err(other) => panic!("the engine failed: {other}"),
        }
    }
    (accepted, rejected)
}

/// Runs the `emporium` binary with `args` and `--data <data>`: (success, stdout, stderr).
pub fn emporium(args: &[&str], data: &Path) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_emporium"))
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .expect("runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs `emporium` like [`emporium`] with its standard output a pipe whose reader is gone
/// (`emporium ... | head -1`): (success, stderr).
pub fn emporium_into_closed_pipe(args: &[&str], data: &Path) -> (bool, String) {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_emporium"))
        .args(args)
        .arg("--data")
        .arg(data)
        .stdout(writer)
        .output()
        .expect("runs");
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Every event of `shop`, read page by page.
pub async fn all_events(store: &dyn EventStore, shop: &ShopId) -> Vec<Envelope> {
    let mut events = Vec::new();
    loop {
        let page = store.read_from(shop, events.len() as u64, 65_536).await.expect("readable");
        if page.is_empty() {
            return events;
        }
        events.extend(page);
    }
}
