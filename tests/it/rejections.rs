//! Every rejection, data-driven: one shop in many situations, one command per case, the
//! exact typed rejection expected, and the state unchanged afterwards.

use emporium::domain::command::{AdjustmentReason, Condition};
use emporium::domain::limits::{COUNTED_QUANTITY_MAX, ON_HAND_MAX, RECEIPT_QUANTITY_MAX};
use emporium::domain::state::{OrderStatus, ReservationStatus};
use emporium::{Command, Field, Rejection, Shortage, State};
use rust_decimal::dec;

use crate::support::*;

/// A shop in every situation the cases need. Times are minutes after `DAY_START`.
///
/// - S1 10.00 (100 in), S2 25.50 (20 in), S3 delisted, S4 short by 3 after a stocktake.
/// - R-ACTIVE holds 2 of S1 for 24 h; R-USED was released.
/// - O-EXPIRED expired; O-UNPAID awaits payment until minute 50; O-PAID is paid;
///   O-SHIPPED is paid and partially shipped (P-1), with return R-2 requested;
///   O-DONE was shipped, delivered, returned and refunded 10.00 (RF-1);
///   O-CANCELLED was cancelled; O-SHORT holds 8 of S4 and is paid.
fn shop() -> State {
    let script: Vec<(u64, Command)> = vec![
        (0, list("S1", dec!(10.00))),
        (0, list("S2", dec!(25.50))),
        (0, list("S3", dec!(5.00))),
        (0, list("S4", dec!(7.00))),
        (0, receive("S1", 100, dec!(4.00))),
        (0, receive("S2", 20, dec!(10.00))),
        (0, receive("S3", 5, dec!(1.00))),
        (0, receive("S4", 10, dec!(2.00))),
        (0, Command::DelistProduct { sku: "S3".into() }),
        (0, place("O-EXPIRED", &[("S1", 1)])),
        (1, reserve("R-ACTIVE", &[("S1", 2)], Some(24 * 60 * MINUTE_MS))),
        (1, reserve("R-USED", &[("S1", 1)], None)),
        (1, Command::ReleaseReservation { reservation_id: "R-USED".into() }),
        (2, place("O-SHORT", &[("S4", 8)])),
        (2, pay("O-SHORT", dec!(56.00))),
        (3, Command::Stocktake { sku: "S4".into(), counted: 5, reason: AdjustmentReason::Loss }),
        (4, place("O-PAID", &[("S1", 2), ("S2", 1)])),
        (4, pay("O-PAID", dec!(45.50))),
        (5, place("O-SHIPPED", &[("S1", 3), ("S2", 2)])),
        (5, pay("O-SHIPPED", dec!(81.00))),
        (6, ship("O-SHIPPED", "P-1", &[("S1", 1)])),
        (6, request_return("O-SHIPPED", "R-2", &[("S1", 1)])),
        (7, place("O-DONE", &[("S1", 2)])),
        (7, pay("O-DONE", dec!(20.00))),
        (8, ship("O-DONE", "P-1", &[("S1", 2)])),
        (9, Command::ConfirmDelivery { order_id: "O-DONE".into(), shipment_id: "P-1".into() }),
        (10, request_return("O-DONE", "R-1", &[("S1", 1)])),
        (11, receive_return("O-DONE", "R-1", vec![inspect("S1", 1, Condition::Resellable)])),
        (12, refund("O-DONE", "RF-1", dec!(10.00), Some("R-1"))),
        (13, place("O-CANCELLED", &[("S1", 1)])),
        (13, cancel("O-CANCELLED")),
        (20, place("O-UNPAID", &[("S1", 1)])),
        (31, Command::ExpireDue),
    ];
    let mut state = State::new();
    for (minute, command) in script {
        if let Err(rejection) = state.execute(at(minute), &command) {
            panic!("setting up the shop: {command:?} was rejected: {rejection}");
        }
    }
    state.check_invariants();
    state
}

/// A listing of S9 with the given title, category and weight.
fn listing(title: &str, category: &str, weight_g: u64) -> Command {
    Command::ListProduct {
        sku: "S9".into(),
        title: title.to_owned(),
        category: category.to_owned(),
        price: dec!(1),
        weight_g,
        low_stock_threshold: 1,
    }
}

/// Runs `command` at minute `minute` on a copy of the shop: it must be rejected exactly
/// as `expected`, and the shop must be exactly as it was.
fn check(shop: &State, minute: u64, command: Command, expected: Rejection) {
    let mut state = shop.clone();
    let outcome = state.execute(at(minute), &command);
    assert_eq!(outcome, Err(expected), "command: {command:?}");
    assert_eq!(&state, shop, "a rejected command changed the state: {command:?}");
}

fn invalid(field: Field, reason: &str) -> Rejection {
    Rejection::invalid(field, reason)
}

#[test]
fn every_rejection_changes_nothing() {
    let shop = shop();
    let id_chars = "may contain only letters A-Z and a-z, digits, '.', '_' and '-'";
    let id_length = "must be 1 to 64 characters long";
    let lines_count = "must be 1 to 100 lines";
    let line_quantity = "must be 1 to 10000";
    let three_places = "has more than 2 decimal places; CNY amounts are never rounded";
    let long = "x".repeat(65);
    let too_many_lines: Vec<(&str, u64)> = vec![("S1", 1); 101];
    let now = 35;
    let cases: Vec<(u64, Command, Rejection)> = vec![
        // Catalog.
        (now, list("bad sku", dec!(1)), invalid(Field::Sku, id_chars)),
        (now, list(&long, dec!(1)), invalid(Field::Sku, id_length)),
        (now, list("../S9", dec!(1)), invalid(Field::Sku, id_chars)),
        (now, listing("", "misc", 1), invalid(Field::Title, "must be 1 to 200 characters long")),
        (now, listing(&"t".repeat(201), "misc", 1), invalid(Field::Title, "must be 1 to 200 characters long")),
        (now, listing("tea\u{7}", "misc", 1), invalid(Field::Title, "must not contain control characters")),
        (now, listing("tea", " ", 1), invalid(Field::Category, "must not be blank")),
        (now, listing("tea", "misc", 1_000_001), invalid(Field::WeightG, "must be at most 1000000")),
        (now, list("S9", dec!(0)), invalid(Field::Price, "must be greater than zero")),
        (now, list("S9", dec!(-3.00)), invalid(Field::Price, "must be greater than zero")),
        (now, list("S9", dec!(9.999)), invalid(Field::Price, three_places)),
        (now, list("S9", dec!(100000000.01)), invalid(Field::Price, "must be at most 100000000.00")),
        (now, list("S1", dec!(1)), Rejection::ProductAlreadyListed { sku: "S1".into() }),
        (now, Command::ChangePrice { sku: "S9".into(), price: dec!(1) }, Rejection::UnknownSku { sku: "S9".into() }),
        (
            now,
            Command::ChangePrice { sku: "S1".into(), price: dec!(10) },
            Rejection::PriceUnchanged { sku: "S1".into(), price: dec!(10.00) },
        ),
        (now, Command::ChangePrice { sku: "S1".into(), price: dec!(0.001) }, invalid(Field::Price, three_places)),
        (now, Command::DelistProduct { sku: "S3".into() }, Rejection::ProductDelisted { sku: "S3".into() }),
        (now, Command::RelistProduct { sku: "S1".into() }, Rejection::ProductNotDelisted { sku: "S1".into() }),
        (now, Command::RelistProduct { sku: "S9".into() }, Rejection::UnknownSku { sku: "S9".into() }),
        // Stock.
        (now, receive("S1", 0, dec!(1)), invalid(Field::Quantity, "must be 1 to 1000000000")),
        (now, receive("S1", RECEIPT_QUANTITY_MAX + 1, dec!(1)), invalid(Field::Quantity, "must be 1 to 1000000000")),
        (now, receive("S1", 1, dec!(1.005)), invalid(Field::UnitCost, three_places)),
        (now, receive("S1", 1, dec!(-1)), invalid(Field::UnitCost, "must not be negative")),
        (now, receive("S9", 1, dec!(1)), Rejection::UnknownSku { sku: "S9".into() }),
        (
            now,
            Command::ReceiveStock { sku: "S1".into(), quantity: 1, unit_cost: dec!(1), supplier_ref: "\n".to_owned() },
            invalid(Field::SupplierRef, "must not be blank"),
        ),
        (
            now,
            Command::Stocktake { sku: "S9".into(), counted: 1, reason: AdjustmentReason::Found },
            Rejection::UnknownSku { sku: "S9".into() },
        ),
        (
            now,
            Command::Stocktake { sku: "S1".into(), counted: COUNTED_QUANTITY_MAX + 1, reason: AdjustmentReason::Found },
            invalid(Field::Counted, "must be at most 1000000000000"),
        ),
        // Checkout holds.
        (now, reserve("R-9", &[("S1", 1)], Some(0)), invalid(Field::TtlMs, "must be 1 to 86400000")),
        (now, reserve("R-9", &[("S1", 1)], Some(86_400_001)), invalid(Field::TtlMs, "must be 1 to 86400000")),
        (now, reserve("R-9", &[], None), invalid(Field::Lines, lines_count)),
        (now, reserve("R-9", &too_many_lines, None), invalid(Field::Lines, lines_count)),
        (now, reserve("R-9", &[("S1", 0)], None), invalid(Field::Quantity, line_quantity)),
        (now, reserve("R-9", &[("S1", 10_001)], None), invalid(Field::Quantity, line_quantity)),
        (now, reserve("R 9", &[("S1", 1)], None), invalid(Field::ReservationId, id_chars)),
        (
            now,
            reserve("R-ACTIVE", &[("S1", 1)], None),
            Rejection::ReservationExists { reservation_id: "R-ACTIVE".into() },
        ),
        (now, reserve("R-USED", &[("S1", 1)], None), Rejection::ReservationExists { reservation_id: "R-USED".into() }),
        (now, reserve("R-9", &[("S3", 1)], None), Rejection::ProductDelisted { sku: "S3".into() }),
        (now, reserve("R-9", &[("S9", 1)], None), Rejection::UnknownSku { sku: "S9".into() }),
        (now, reserve("R-9", &[("S4", 1)], None), Rejection::StockShortfall { sku: "S4".into(), shortfall: 3 }),
        (
            now,
            // S1: 100 + 1 returned - 3 shipped = 98 on hand; held: 2 (R-ACTIVE) + 2 (O-PAID)
            // + 2 (O-SHIPPED) + 1 (O-UNPAID) = 7; 91 available. S2: 20 - 3 held.
            reserve("R-9", &[("S1", 50), ("S2", 1), ("S1", 42), ("S2", 17)], None),
            Rejection::InsufficientStock {
                shortages: vec![
                    Shortage { sku: "S1".into(), requested: 92, available: 91 },
                    Shortage { sku: "S2".into(), requested: 18, available: 17 },
                ],
            },
        ),
        (
            now,
            Command::ReleaseReservation { reservation_id: "R-9".into() },
            Rejection::UnknownReservation { reservation_id: "R-9".into() },
        ),
        (
            now,
            Command::ReleaseReservation { reservation_id: "R-USED".into() },
            Rejection::ReservationNotActive { reservation_id: "R-USED".into(), status: ReservationStatus::Released },
        ),
        // Orders.
        (now, place("O-UNPAID", &[("S1", 1)]), Rejection::OrderExists { order_id: "O-UNPAID".into() }),
        (now, place("O/9", &[("S1", 1)]), invalid(Field::OrderId, id_chars)),
        (now, place("O-9", &[]), invalid(Field::Lines, lines_count)),
        (now, place("O-9", &too_many_lines), invalid(Field::Lines, lines_count)),
        (now, place("O-9", &[("S1", 10_001)]), invalid(Field::Quantity, line_quantity)),
        (now, place("O-9", &[("S2", 0)]), invalid(Field::Quantity, line_quantity)),
        (now, place("O-9", &[("S9", 1)]), Rejection::UnknownSku { sku: "S9".into() }),
        (now, place("O-9", &[("S3", 1)]), Rejection::ProductDelisted { sku: "S3".into() }),
        (now, place("O-9", &[("S4", 1)]), Rejection::StockShortfall { sku: "S4".into(), shortfall: 3 }),
        (
            now,
            place("O-9", &[("S2", 9), ("S1", 1), ("S2", 9)]),
            Rejection::InsufficientStock {
                shortages: vec![Shortage { sku: "S2".into(), requested: 18, available: 17 }],
            },
        ),
        (
            now,
            // The consumed hold's 2 units count as available to this order: 93, not 91.
            place_with("O-9", &[("S1", 94)], Some("R-ACTIVE")),
            Rejection::InsufficientStock {
                shortages: vec![Shortage { sku: "S1".into(), requested: 94, available: 93 }],
            },
        ),
        (
            now,
            place_with("O-9", &[("S1", 1)], Some("R-9")),
            Rejection::UnknownReservation { reservation_id: "R-9".into() },
        ),
        (
            now,
            place_with("O-9", &[("S1", 1)], Some("R-USED")),
            Rejection::ReservationNotActive { reservation_id: "R-USED".into(), status: ReservationStatus::Released },
        ),
        (
            25 * 60,
            place_with("O-9", &[("S1", 1)], Some("R-ACTIVE")),
            Rejection::ReservationExpired { reservation_id: "R-ACTIVE".into() },
        ),
        (
            now,
            Command::PlaceOrder {
                order_id: "O-9".into(),
                customer_id: "".into(),
                lines: lines(&[("S1", 1)]),
                region: "zhejiang".to_owned(),
                reservation_id: None,
            },
            invalid(Field::CustomerId, id_length),
        ),
        (
            now,
            Command::PlaceOrder {
                order_id: "O-9".into(),
                customer_id: "C-1".into(),
                lines: lines(&[("S1", 1)]),
                region: "   ".to_owned(),
                reservation_id: None,
            },
            invalid(Field::Region, "must not be blank"),
        ),
        // Payment.
        (now, pay("O-9", dec!(10.00)), Rejection::UnknownOrder { order_id: "O-9".into() }),
        (
            now,
            pay("O-PAID", dec!(45.50)),
            Rejection::OrderNotAwaitingPayment { order_id: "O-PAID".into(), status: OrderStatus::Paid },
        ),
        (
            now,
            pay("O-EXPIRED", dec!(10.00)),
            Rejection::OrderNotAwaitingPayment { order_id: "O-EXPIRED".into(), status: OrderStatus::Expired },
        ),
        (
            now,
            pay("O-CANCELLED", dec!(10.00)),
            Rejection::OrderNotAwaitingPayment { order_id: "O-CANCELLED".into(), status: OrderStatus::Cancelled },
        ),
        (
            now,
            pay("O-UNPAID", dec!(9.99)),
            Rejection::AmountMismatch { order_id: "O-UNPAID".into(), due: dec!(10.00), offered: dec!(9.99) },
        ),
        (50, pay("O-UNPAID", dec!(10.00)), Rejection::PaymentDeadlinePassed { order_id: "O-UNPAID".into() }),
        (now, pay("O-UNPAID", dec!(10.001)), invalid(Field::Amount, three_places)),
        (now, pay("O-UNPAID", dec!(0)), invalid(Field::Amount, "must be greater than zero")),
        // Cancellation.
        (now, cancel("O-SHIPPED"), Rejection::AlreadyShipped { order_id: "O-SHIPPED".into() }),
        (now, cancel("O-DONE"), Rejection::AlreadyShipped { order_id: "O-DONE".into() }),
        (
            now,
            cancel("O-CANCELLED"),
            Rejection::OrderClosed { order_id: "O-CANCELLED".into(), status: OrderStatus::Cancelled },
        ),
        (
            now,
            cancel("O-EXPIRED"),
            Rejection::OrderClosed { order_id: "O-EXPIRED".into(), status: OrderStatus::Expired },
        ),
        (
            now,
            Command::Cancel { order_id: "O-PAID".into(), by: emporium::Party::Shop, reason: String::new() },
            invalid(Field::Reason, "must be 1 to 500 characters long"),
        ),
        // Shipping.
        (
            now,
            ship("O-UNPAID", "P-9", &[("S1", 1)]),
            Rejection::OrderNotPaid { order_id: "O-UNPAID".into(), status: OrderStatus::AwaitingPayment },
        ),
        (
            now,
            ship("O-CANCELLED", "P-9", &[("S1", 1)]),
            Rejection::OrderClosed { order_id: "O-CANCELLED".into(), status: OrderStatus::Cancelled },
        ),
        (now, ship("O-SHIPPED", "P-1", &[("S1", 1)]), Rejection::ShipmentExists { shipment_id: "P-1".into() }),
        (
            now,
            ship("O-SHIPPED", "P-2", &[("S1", 2), ("S1", 1)]),
            Rejection::ShipExceedsOrdered { sku: "S1".into(), requested: 3, remaining: 2 },
        ),
        (
            now,
            ship("O-DONE", "P-2", &[("S1", 1)]),
            Rejection::ShipExceedsOrdered { sku: "S1".into(), requested: 1, remaining: 0 },
        ),
        (
            now,
            ship("O-PAID", "P-1", &[("S4", 1)]),
            Rejection::SkuNotInOrder { order_id: "O-PAID".into(), sku: "S4".into() },
        ),
        (
            now,
            ship("O-SHORT", "P-1", &[("S4", 6)]),
            Rejection::InsufficientOnHand { sku: "S4".into(), requested: 6, on_hand: 5 },
        ),
        (
            now,
            Command::Ship {
                order_id: "O-PAID".into(),
                shipment_id: "P-1".into(),
                carrier: "ZTO".to_owned(),
                tracking_number: "ZTO 123".to_owned(),
                lines: lines(&[("S1", 1)]),
            },
            invalid(Field::TrackingNumber, id_chars),
        ),
        (
            now,
            Command::Ship {
                order_id: "O-PAID".into(),
                shipment_id: "P-1".into(),
                carrier: "c".repeat(65),
                tracking_number: "ZTO123".to_owned(),
                lines: lines(&[("S1", 1)]),
            },
            invalid(Field::Carrier, "must be 1 to 64 characters long"),
        ),
        (now, ship("O-9", "P-1", &[("S1", 1)]), Rejection::UnknownOrder { order_id: "O-9".into() }),
        // Delivery.
        (
            now,
            Command::ConfirmDelivery { order_id: "O-SHIPPED".into(), shipment_id: "P-9".into() },
            Rejection::UnknownShipment { shipment_id: "P-9".into() },
        ),
        (
            now,
            Command::ConfirmDelivery { order_id: "O-DONE".into(), shipment_id: "P-1".into() },
            Rejection::AlreadyDelivered { shipment_id: "P-1".into() },
        ),
        // Returns.
        (
            now,
            request_return("O-DONE", "R-3", &[("S1", 2)]),
            Rejection::ReturnExceedsShipped { sku: "S1".into(), requested: 2, returnable: 1 },
        ),
        (
            now,
            request_return("O-SHIPPED", "R-3", &[("S1", 1)]),
            Rejection::ReturnExceedsShipped { sku: "S1".into(), requested: 1, returnable: 0 },
        ),
        (
            now,
            request_return("O-PAID", "R-3", &[("S2", 1)]),
            Rejection::ReturnExceedsShipped { sku: "S2".into(), requested: 1, returnable: 0 },
        ),
        (now, request_return("O-DONE", "R-1", &[("S1", 1)]), Rejection::ReturnExists { return_id: "R-1".into() }),
        (
            now,
            request_return("O-DONE", "R-3", &[("S2", 1)]),
            Rejection::SkuNotInOrder { order_id: "O-DONE".into(), sku: "S2".into() },
        ),
        (
            now,
            receive_return("O-DONE", "R-9", vec![inspect("S1", 1, Condition::Damaged)]),
            Rejection::UnknownReturn { return_id: "R-9".into() },
        ),
        (
            now,
            receive_return("O-DONE", "R-1", vec![inspect("S1", 1, Condition::Damaged)]),
            Rejection::ReturnAlreadyReceived { return_id: "R-1".into() },
        ),
        (
            now,
            receive_return(
                "O-SHIPPED",
                "R-2",
                vec![inspect("S1", 1, Condition::Damaged), inspect("S1", 1, Condition::Resellable)],
            ),
            Rejection::InspectionMismatch { sku: "S1".into(), expected: 1, inspected: 2 },
        ),
        (
            now,
            receive_return(
                "O-SHIPPED",
                "R-2",
                vec![inspect("S1", 1, Condition::Damaged), inspect("S2", 1, Condition::Resellable)],
            ),
            Rejection::InspectionMismatch { sku: "S2".into(), expected: 0, inspected: 1 },
        ),
        (now, receive_return("O-SHIPPED", "R-2", vec![]), invalid(Field::Lines, "must be 1 to 200 inspections")),
        // Refunds.
        (
            now,
            refund("O-DONE", "RF-2", dec!(10.01), None),
            Rejection::RefundExceedsPaid { requested: dec!(10.01), refundable: dec!(10.00) },
        ),
        (now, refund("O-DONE", "RF-1", dec!(1), None), Rejection::RefundExists { refund_id: "RF-1".into() }),
        (
            now,
            refund("O-UNPAID", "RF-1", dec!(1), None),
            Rejection::OrderNotPaid { order_id: "O-UNPAID".into(), status: OrderStatus::AwaitingPayment },
        ),
        (
            now,
            refund("O-DONE", "RF-2", dec!(0.01), Some("R-1")),
            Rejection::RefundExceedsReturned { requested: dec!(0.01), refundable: dec!(0.00) },
        ),
        (
            now,
            // One of three units of S1 (30.00) is being returned: at most 10.00 for it.
            refund("O-SHIPPED", "RF-1", dec!(10.01), Some("R-2")),
            Rejection::RefundExceedsReturned { requested: dec!(10.01), refundable: dec!(10.00) },
        ),
        (now, refund("O-DONE", "RF-2", dec!(1), Some("R-9")), Rejection::UnknownReturn { return_id: "R-9".into() }),
        (now, refund("O-DONE", "RF-2", dec!(0), None), invalid(Field::Amount, "must be greater than zero")),
        (now, refund("O-DONE", "RF-2", dec!(0.015), None), invalid(Field::Amount, three_places)),
    ];
    for (minute, command, expected) in cases {
        check(&shop, minute, command, expected);
    }
}

#[test]
fn stock_limit() {
    let mut shop = shop();
    let counted = Command::Stocktake { sku: "S1".into(), counted: ON_HAND_MAX, reason: AdjustmentReason::Found };
    assert!(shop.execute(at(40), &counted).is_ok());
    shop.check_invariants();
    check(&shop, 41, receive("S1", 1, dec!(1)), Rejection::StockLimitExceeded { sku: "S1".into(), max: ON_HAND_MAX });
}

#[test]
fn rejection_codes_are_snake_case_and_distinct() {
    let samples = [
        Rejection::invalid(Field::Sku, "x"),
        Rejection::InsufficientStock { shortages: vec![] },
        Rejection::RefundExceedsPaid { requested: dec!(1), refundable: dec!(0) },
        Rejection::AlreadyShipped { order_id: "O".into() },
        Rejection::OrderNotPaid { order_id: "O".into(), status: OrderStatus::AwaitingPayment },
    ];
    let codes: Vec<&str> = samples.iter().map(Rejection::code).collect();
    assert_eq!(
        codes,
        ["invalid_input", "insufficient_stock", "refund_exceeds_paid", "already_shipped", "order_not_paid"]
    );
}

#[test]
fn a_shop_sets_its_own_payment_time_limit() {
    use emporium::Policy;
    assert!(State::with_policy(Policy { payment_ttl_ms: 0, ..Policy::default() }).is_none());
    let policy = Policy { payment_ttl_ms: 10 * MINUTE_MS, reservation_ttl_ms_default: 5 * MINUTE_MS };
    let mut shop = State::with_policy(policy).expect("a valid policy");
    for command in [list("S1", dec!(10.00)), receive("S1", 5, dec!(4.00)), place("O-1", &[("S1", 1)])] {
        shop.execute(at(0), &command).expect("accepted");
    }
    let events = shop.execute(at(0), &reserve("R-1", &[("S1", 1)], None)).expect("accepted");
    assert!(matches!(&events[..], [emporium::Event::StockReserved { expires_at, .. }] if *expires_at == at(5)));
    check(&shop, 10, pay("O-1", dec!(10.00)), Rejection::PaymentDeadlinePassed { order_id: "O-1".into() });
    let expired: Vec<&str> =
        shop.execute(at(10), &Command::ExpireDue).expect("tick").iter().map(|e| e.kind()).collect();
    assert_eq!(expired, ["reservation_expired", "order_expired"]);
}
