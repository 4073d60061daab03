//! A scripted shop day: three products, three orders, parcels, a return and a refund.
//!
//! The binary runs it to show what the engine does; the integration tests assert every
//! event it produces. Times are fixed, so the day is the same on every run.

use rust_decimal::Decimal;

use crate::domain::command::{AdjustmentReason, Command, Condition, Inspection, Line, Party};
use crate::domain::event::Event;
use crate::domain::ids::Timestamp;
use crate::domain::rejection::Rejection;
use crate::memory::State;

/// 2026-11-11T09:00:00Z, when the day starts.
pub const DAY_START: Timestamp = Timestamp(1_794_387_600_000);

const MINUTE_MS: u64 = 60 * 1000;

fn at(minutes: u64) -> Timestamp {
    Timestamp(DAY_START.0 + minutes * MINUTE_MS)
}

fn money(cents: i64) -> Decimal {
    Decimal::new(cents, 2)
}

fn list(sku: &str, title: &str, category: &str, price_cents: i64, weight_g: u64, threshold: u64) -> Command {
    Command::ListProduct {
        sku: sku.into(),
        title: title.to_owned(),
        category: category.to_owned(),
        price: money(price_cents),
        weight_g,
        low_stock_threshold: threshold,
    }
}

fn receive(sku: &str, quantity: u64, unit_cost_cents: i64, supplier_ref: &str) -> Command {
    Command::ReceiveStock {
        sku: sku.into(),
        quantity,
        unit_cost: money(unit_cost_cents),
        supplier_ref: supplier_ref.to_owned(),
    }
}

fn place(order_id: &str, customer_id: &str, region: &str, lines: &[(&str, u64)]) -> Command {
    Command::PlaceOrder {
        order_id: order_id.into(),
        customer_id: customer_id.into(),
        lines: lines.iter().map(|(sku, q)| Line::new(sku, *q)).collect(),
        region: region.to_owned(),
        reservation_id: None,
    }
}

fn ship(order_id: &str, shipment_id: &str, tracking_number: &str, lines: &[(&str, u64)]) -> Command {
    Command::Ship {
        order_id: order_id.into(),
        shipment_id: shipment_id.into(),
        carrier: "SF Express".to_owned(),
        tracking_number: tracking_number.to_owned(),
        lines: lines.iter().map(|(sku, q)| Line::new(sku, *q)).collect(),
    }
}

/// The day's commands with the time each one arrives.
pub fn shop_day() -> Vec<(Timestamp, Command)> {
    vec![
        (at(0), list("TEA-001", "West Lake Longjing green tea, 250 g", "tea", 12800, 300, 10)),
        (at(1), list("CUP-002", "Celadon tea cup", "teaware", 4550, 200, 5)),
        (at(2), list("POT-003", "Yixing clay teapot", "teaware", 26800, 600, 2)),
        (at(5), receive("TEA-001", 100, 5230, "PO-1101")),
        (at(6), receive("TEA-001", 50, 5510, "PO-1102")),
        (at(7), receive("CUP-002", 40, 1235, "PO-1103")),
        (at(8), receive("POT-003", 10, 9600, "PO-1104")),
        (at(9), Command::Stocktake { sku: "CUP-002".into(), counted: 39, reason: AdjustmentReason::Damage }),
        (at(30), place("A-1001", "C-88", "zhejiang", &[("TEA-001", 2), ("CUP-002", 2), ("CUP-002", 2)])),
        (at(31), place("A-1002", "C-89", "shanghai", &[("POT-003", 1), ("TEA-001", 1)])),
        (at(32), place("A-1003", "C-90", "xinjiang", &[("CUP-002", 3)])),
        (at(35), Command::Pay { order_id: "A-1001".into(), payment_id: "PAY-1".into(), amount: money(43800) }),
        (at(36), Command::Pay { order_id: "A-1002".into(), payment_id: "PAY-2".into(), amount: money(39600) }),
        (
            at(40),
            Command::Cancel {
                order_id: "A-1003".into(),
                by: Party::Buyer,
                reason: "buyer changed their mind".to_owned(),
            },
        ),
        (at(120), ship("A-1001", "PKG-1", "SF1001", &[("TEA-001", 2), ("CUP-002", 2)])),
        (at(180), ship("A-1001", "PKG-2", "SF1002", &[("CUP-002", 2)])),
        (at(1440), Command::ConfirmDelivery { order_id: "A-1001".into(), shipment_id: "PKG-1".into() }),
        (at(1500), Command::ConfirmDelivery { order_id: "A-1001".into(), shipment_id: "PKG-2".into() }),
        (
            at(1600),
            Command::RequestReturn {
                order_id: "A-1001".into(),
                return_id: "RET-1".into(),
                lines: vec![Line::new("TEA-001", 1), Line::new("CUP-002", 1)],
                reason: "one tin too many; a cup arrived chipped".to_owned(),
            },
        ),
        (
            at(4000),
            Command::ReceiveReturn {
                order_id: "A-1001".into(),
                return_id: "RET-1".into(),
                inspections: vec![
                    Inspection { sku: "TEA-001".into(), quantity: 1, condition: Condition::Resellable },
                    Inspection { sku: "CUP-002".into(), quantity: 1, condition: Condition::Damaged },
                ],
            },
        ),
        (
            at(4010),
            Command::Refund {
                order_id: "A-1001".into(),
                refund_id: "RF-1".into(),
                amount: money(17350),
                return_id: Some("RET-1".into()),
            },
        ),
    ]
}

/// Runs a script from an empty shop: the final state and every event, or the index of
/// the first command that was rejected and why.
pub fn run(script: &[(Timestamp, Command)]) -> Result<(State, Vec<Event>), (usize, Rejection)> {
    let mut state = State::new();
    let mut events = Vec::new();
    for (index, (now, command)) in script.iter().enumerate() {
        let decided = state.execute(*now, command).map_err(|rejection| (index, rejection))?;
        events.extend(decided);
    }
    Ok((state, events))
}
