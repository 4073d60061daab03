//! The scripted shop day, end to end: every event it records and the state it ends in.

use emporium::rehearsal::demo::{self, DAY_START};
use emporium::{Event, OrderId, OrderStatus, RefundState, ReturnState, Sku, State};
use expect_test::expect;
use rust_decimal::dec;

fn render(events: &[Event]) -> String {
    events.iter().map(|e| format!("{e:?}\n")).collect()
}

#[test]
fn events_of_the_day() {
    let (_, events) = demo::run(&demo::shop_day()).expect("the shop day runs");
    expect![[r#"
        ProductListed { sku: "TEA-001", title: "West Lake Longjing green tea, 250 g", category: "tea", price: 128.00, weight_g: 300, low_stock_threshold: 10 }
        ProductListed { sku: "CUP-002", title: "Celadon tea cup", category: "teaware", price: 45.50, weight_g: 200, low_stock_threshold: 5 }
        ProductListed { sku: "POT-003", title: "Yixing clay teapot", category: "teaware", price: 268.00, weight_g: 600, low_stock_threshold: 2 }
        StockReceived { sku: "TEA-001", quantity: 100, unit_cost: 52.30, value: 5230.00, supplier_ref: "PO-1101" }
        StockReceived { sku: "TEA-001", quantity: 50, unit_cost: 55.10, value: 2755.00, supplier_ref: "PO-1102" }
        StockReceived { sku: "CUP-002", quantity: 40, unit_cost: 12.35, value: 494.00, supplier_ref: "PO-1103" }
        StockReceived { sku: "POT-003", quantity: 10, unit_cost: 96.00, value: 960.00, supplier_ref: "PO-1104" }
        StockCounted { sku: "CUP-002", counted: 39, previous_on_hand: 40, delta: -1, value_delta: -12.35, reason: Damage, shortfall: 0 }
        OrderPlaced { order_id: "A-1001", customer_id: "C-88", region: "zhejiang", lines: [PricedLine { sku: "TEA-001", quantity: 2, unit_price: 128.00, discounts: [], net_amount: 256.00 }, PricedLine { sku: "CUP-002", quantity: 4, unit_price: 45.50, discounts: [], net_amount: 182.00 }], shipping_fee: 0.00, total: 438.00, placed_at: Timestamp(1794389400000), payment_due_by: Timestamp(1794391200000), reservation_id: None }
        OrderPlaced { order_id: "A-1002", customer_id: "C-89", region: "shanghai", lines: [PricedLine { sku: "POT-003", quantity: 1, unit_price: 268.00, discounts: [], net_amount: 268.00 }, PricedLine { sku: "TEA-001", quantity: 1, unit_price: 128.00, discounts: [], net_amount: 128.00 }], shipping_fee: 0.00, total: 396.00, placed_at: Timestamp(1794389460000), payment_due_by: Timestamp(1794391260000), reservation_id: None }
        OrderPlaced { order_id: "A-1003", customer_id: "C-90", region: "xinjiang", lines: [PricedLine { sku: "CUP-002", quantity: 3, unit_price: 45.50, discounts: [], net_amount: 136.50 }], shipping_fee: 0.00, total: 136.50, placed_at: Timestamp(1794389520000), payment_due_by: Timestamp(1794391320000), reservation_id: None }
        OrderPaid { order_id: "A-1001", payment_id: "PAY-1", amount: 438.00, paid_at: Timestamp(1794389700000) }
        OrderPaid { order_id: "A-1002", payment_id: "PAY-2", amount: 396.00, paid_at: Timestamp(1794389760000) }
        OrderCancelled { order_id: "A-1003", by: Some(Buyer), reason: "buyer changed their mind", cancelled_at: Timestamp(1794390000000) }
        ShipmentDispatched { order_id: "A-1001", shipment_id: "PKG-1", carrier: "SF Express", tracking_number: "SF1001", lines: [CostedLine { sku: "TEA-001", quantity: 2, cost: 106.47 }, CostedLine { sku: "CUP-002", quantity: 2, cost: 24.70 }], shipped_at: Timestamp(1794394800000) }
        ShipmentDispatched { order_id: "A-1001", shipment_id: "PKG-2", carrier: "SF Express", tracking_number: "SF1002", lines: [CostedLine { sku: "CUP-002", quantity: 2, cost: 24.70 }], shipped_at: Timestamp(1794398400000) }
        ShipmentDelivered { order_id: "A-1001", shipment_id: "PKG-1", delivered_at: Timestamp(1794474000000) }
        ShipmentDelivered { order_id: "A-1001", shipment_id: "PKG-2", delivered_at: Timestamp(1794477600000) }
        ReturnRequested { order_id: "A-1001", return_id: "RET-1", lines: [Line { sku: "TEA-001", quantity: 1 }, Line { sku: "CUP-002", quantity: 1 }], reason: "one tin too many; a cup arrived chipped", requested_at: Timestamp(1794483600000) }
        ReturnReceived { order_id: "A-1001", return_id: "RET-1", lines: [InspectedLine { sku: "TEA-001", quantity: 1, condition: Resellable, cost: 53.24 }, InspectedLine { sku: "CUP-002", quantity: 1, condition: Damaged, cost: 12.35 }], received_at: Timestamp(1794627600000) }
        RefundIssued { order_id: "A-1001", refund_id: "RF-1", amount: 173.50, return_id: Some("RET-1"), allocation: [RefundShare { target: Line("TEA-001"), amount: 128.00 }, RefundShare { target: Line("CUP-002"), amount: 45.50 }], refunded_at: Timestamp(1794628200000) }
    "#]]
    .assert_eq(&render(&events));
}

#[test]
fn state_at_the_end_of_the_day() {
    let (state, events) = demo::run(&demo::shop_day()).expect("the shop day runs");
    state.check_invariants();

    // (sku, on hand, reserved, available, inventory value)
    let stock: Vec<(String, u64, u64, u64, String)> = state
        .products()
        .map(|p| {
            let s = &p.stock;
            (p.sku.to_string(), s.on_hand, s.reserved, s.available(), s.value.to_string())
        })
        .collect();
    let stock_expected =
        [("CUP-002", 35, 0, 35, "432.25"), ("POT-003", 10, 1, 9, "960.00"), ("TEA-001", 149, 1, 148, "7931.77")];
    let stock_expected: Vec<_> =
        stock_expected.iter().map(|(s, h, r, a, v)| (s.to_string(), *h, *r, *a, v.to_string())).collect();
    assert_eq!(stock, stock_expected);

    // What left and what stays equals what came in, to the cent.
    let tea = &state.product(&Sku::from("TEA-001")).expect("listed").stock;
    assert_eq!(tea.value_received, dec!(7985.00));
    assert_eq!(tea.value_received - tea.value_shipped + tea.value_restocked, tea.value);
    let cup = &state.product(&Sku::from("CUP-002")).expect("listed").stock;
    assert_eq!((cup.written_off, cup.value_written_off), (1, dec!(12.35)));

    let order = |id: &str| state.order(&OrderId::from(id)).expect("in memory").expect("order exists");
    let a = order("A-1001");
    assert_eq!(a.status(), OrderStatus::Delivered);
    assert_eq!((a.total, a.paid(), a.refunded), (dec!(438.00), dec!(438.00), dec!(173.50)));
    assert_eq!((a.return_state(), a.refund_state()), (ReturnState::Received, RefundState::Partial));
    let lines: Vec<_> =
        a.lines.iter().map(|l| (l.sku.as_str(), l.quantity, l.shipped, l.returned, l.refunded)).collect();
    assert_eq!(lines, vec![("TEA-001", 2, 2, 1, dec!(128.00)), ("CUP-002", 4, 4, 1, dec!(45.50))]);
    // Shipments, returns and refunds hold no room for more than they have: an order keeps
    // one or two, and room for four of each was most of a shipped order's memory.
    let room = (a.shipments.capacity(), a.returns.capacity(), a.refunds.capacity());
    assert_eq!(room, (a.shipments.len(), a.returns.len(), a.refunds.len()));
    assert_eq!(room, (2, 1, 1));
    let b = order("A-1002");
    assert_eq!(b.status(), OrderStatus::Paid);
    assert_eq!((b.total, b.paid(), b.refunded), (dec!(396.00), dec!(396.00), dec!(0)));
    let c = order("A-1003");
    assert_eq!(c.status(), OrderStatus::Cancelled);
    assert_eq!((c.total, c.paid(), c.amount_due()), (dec!(136.50), dec!(0), dec!(0)));

    // Replaying the events rebuilds exactly this state.
    let mut replayed = State::new();
    for event in &events {
        replayed.apply(event);
    }
    assert_eq!(replayed, state);
    assert!(demo::shop_day().iter().all(|(at, _)| *at >= DAY_START));
}
