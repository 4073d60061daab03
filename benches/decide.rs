//! Deciding commands against a realistic shop state, with no IO: the pure rule check a
//! shop's writer runs for every command before anything is appended.
//!
//! Run: `cargo bench --bench decide`. The setup lists 5,000 products priced and ranked the
//! way the `double11` scenario does (Zipf popularity; the 100 hottest with 5,000 units, the
//! rest with 10,000,000), then executes the first 20,000 orders `loadgen::plan` plans, all at
//! one instant: about 18,000 are placed (the hottest SKU sells out) and 90% of those are paid.
//! It then measures `emporium::domain::decide` (which reads the state and never changes it), one
//! command per iteration, cycling through 1,024 prepared commands of each kind:
//! - `decide/place_order`: an order of 1 to 3 lines that is accepted;
//! - `decide/pay`: paying one of the existing unpaid orders in full;
//! - `decide/place_order_refused`: an order refused for insufficient stock of a sold-out SKU.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use emporium::rehearsal::loadgen::{self, OrderPlan, Scenario, Zipf};
use emporium::{Command, Line, Order, OrderStatus, Rejection, State, Timestamp, decide, rehearsal::demo};
use rust_decimal::Decimal;

/// The allocator the `emporium` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SKUS: u64 = 5_000;
const EXISTING_ORDERS: u64 = 20_000;
const PREPARED: usize = 1_024;
/// Every order is placed and every command decided at this instant, well before any
/// payment time limit runs out.
const NOW: Timestamp = Timestamp(demo::DAY_START.0 + 60 * 60 * 1000);

fn place(plan: &OrderPlan) -> Command {
    Command::PlaceOrder {
        order_id: plan.order_id.as_str().into(),
        customer_id: plan.customer_id.as_str().into(),
        lines: plan.lines.iter().map(|&(rank, units)| Line::new(&loadgen::sku_of(rank), units)).collect(),
        region: "zhejiang".to_owned(),
        reservation_id: None,
    }
}

fn pay(order: &Order) -> Command {
    Command::Pay {
        order_id: order.id.clone(),
        payment_id: format!("PAY-{}", order.id.as_str()).as_str().into(),
        amount: order.amount_due(),
    }
}

/// The catalog, its stock and the existing orders.
fn shop(scenario: &Scenario, zipf: &Zipf) -> State {
    let mut state = State::new();
    for rank in 0..scenario.skus {
        let sku = loadgen::sku_of(rank);
        let listing = Command::ListProduct {
            sku: sku.as_str().into(),
            title: format!("Product {rank}"),
            category: format!("category-{}", rank % 20),
            price: loadgen::price_of(rank),
            weight_g: 300,
            low_stock_threshold: 10,
        };
        let receipt = Command::ReceiveStock {
            sku: sku.as_str().into(),
            quantity: if rank < scenario.hot_skus { scenario.hot_stock } else { scenario.cold_stock },
            unit_cost: (loadgen::price_of(rank) * Decimal::new(4, 1)).round_dp(2),
            supplier_ref: format!("PO-{rank}"),
        };
        for command in [listing, receipt] {
            state.execute(demo::DAY_START, &command).expect("the catalog is accepted");
        }
    }
    for n in 0..EXISTING_ORDERS {
        let plan = loadgen::plan(scenario, zipf, n);
        if state.execute(NOW, &place(&plan)).is_ok() && plan.pays {
            let order = state.order(&plan.order_id.as_str().into()).expect("read").expect("placed");
            let payment = pay(&order);
            state.execute(NOW, &payment).expect("the payment is accepted");
        }
    }
    state
}

fn deciding(c: &mut Criterion) {
    emporium::cli::process::disable_transparent_huge_pages().expect("huge pages off, as the binary has them");
    let scenario = Scenario { skus: SKUS, ..Scenario::double11(42) };
    let zipf = Zipf::new(scenario.skus, scenario.zipf_s);
    let state = shop(&scenario, &zipf);

    // Orders planned after the existing ones, sorted by how the state decides them.
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    for n in EXISTING_ORDERS.. {
        if accepted.len() >= PREPARED && refused.len() >= PREPARED {
            break;
        }
        let command = place(&loadgen::plan(&scenario, &zipf, n));
        match decide(&state, NOW, &command) {
            Ok(_) if accepted.len() < PREPARED => accepted.push(command),
            Err(Rejection::InsufficientStock { .. }) if refused.len() < PREPARED => refused.push(command),
            Ok(_) | Err(Rejection::InsufficientStock { .. }) => {}
            Err(other) => panic!("an unexpected rejection: {other:?}"),
        }
    }
    let payments: Vec<Command> = state
        .orders()
        .map(|order| order.expect("in memory"))
        .filter(|order| order.status() == OrderStatus::AwaitingPayment)
        .take(PREPARED)
        .map(|order| pay(&order))
        .collect();
    assert_eq!(payments.len(), PREPARED, "enough unpaid orders");
    for command in &payments {
        decide(&state, NOW, command).expect("the payment is accepted");
    }
    let sold_out = state.products().filter(|p| p.stock.available() == 0).count();
    eprintln!("state: {} products ({sold_out} sold out), {} orders", state.products().count(), state.orders().count());

    let mut group = c.benchmark_group("decide");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    for (name, commands) in [("place_order", &accepted), ("pay", &payments), ("place_order_refused", &refused)] {
        group.bench_function(name, |b| {
            let mut commands = commands.iter().cycle();
            b.iter(|| decide(black_box(&state), NOW, commands.next().expect("cycles")))
        });
    }
    group.finish();
}

criterion_group!(benches, deciding);
criterion_main!(benches);
