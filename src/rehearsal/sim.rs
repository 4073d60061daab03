//! Generated shop days: a seeded, reproducible stream of commands for tests, benchmarks and
//! rehearsals. The same configuration gives the same commands, in time order.
//!
//! A day lists `skus` products and stocks them (a few hot SKUs with too little stock, so
//! late orders for them are refused), then places `orders` orders of 1 to 3 lines spread
//! over the day. About 90% are paid within minutes, the rest expire; about 3% are cancelled
//! (some after payment, refunding them); paid orders ship in one parcel or two, are
//! delivered, and about 3% come back, received resellable or damaged and refunded; about 1%
//! get a refund without a return.

use rust_decimal::Decimal;

use crate::domain::command::{AdjustmentReason, Command, Condition, Inspection, Line, Party};
use crate::domain::ids::{CommandId, Timestamp};
use crate::log::record::{Envelope, fingerprint, stream_of};

/// What to generate.
#[derive(Clone, Debug)]
pub struct DayConfig {
    /// Orders placed over the day.
    pub orders: u64,
    /// Products listed.
    pub skus: u64,
    /// Distinct buyers drawn from.
    pub customers: u64,
    /// The seed.
    pub seed: u64,
    /// When the day starts.
    pub start: Timestamp,
}

impl DayConfig {
    /// A day of `orders` orders over 500 SKUs and 20,000 buyers.
    pub fn new(orders: u64, seed: u64, start: Timestamp) -> DayConfig {
        DayConfig { orders, skus: 500, customers: 20_000, seed, start }
    }
}

/// SplitMix64: small, fast, good enough for workloads; not for secrets.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        self.next_u64() % bound
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 24 * 60 * MINUTE_MS;

fn sku(index: u64) -> String {
    format!("SKU-{index:05}")
}

/// The day's commands with the time each one arrives, in time order.
pub fn generate_day(config: &DayConfig) -> Vec<(Timestamp, Command)> {
    assert!(config.skus > 0 && config.customers > 0);
    let mut rng = Rng::new(config.seed);
    let mut timed: Vec<(u64, u64, Command)> = Vec::new();
    let mut sequence = 0u64;
    let mut push = |at: u64, command: Command, timed: &mut Vec<(u64, u64, Command)>| {
        sequence += 1;
        timed.push((at, sequence, command));
    };
    let start = config.start.0;
    let hot_skus = (config.skus / 50).max(1);
    for index in 0..config.skus {
        let price = Decimal::new(990 + (rng.below(500) as i64) * 100, 2);
        let listing = Command::ListProduct {
            sku: sku(index).as_str().into(),
            title: format!("Product {index}"),
            category: format!("category-{}", index % 20),
            price,
            weight_g: 100 + rng.below(2000),
            low_stock_threshold: 10,
        };
        push(start, listing, &mut timed);
        let quantity = if index < hot_skus { 20 } else { config.orders * 4 / config.skus + 50 };
        let receipt = Command::ReceiveStock {
            sku: sku(index).as_str().into(),
            quantity,
            unit_cost: Decimal::new(300 + rng.below(500) as i64, 2),
            supplier_ref: format!("PO-{index}"),
        };
        push(start + 1, receipt, &mut timed);
    }
    for n in 0..config.orders {
        let placed = start + MINUTE_MS + rng.below(DAY_MS);
        let order_id = format!("O-{n:08}");
        let mut lines: Vec<Line> = Vec::new();
        for _ in 0..1 + rng.below(3) {
            // Skewed popularity: low SKU numbers (the hot ones first) sell most.
            let index = rng.below(config.skus).min(rng.below(config.skus));
            lines.push(Line::new(&sku(index), 1 + rng.below(2)));
        }
        let customer = format!("C-{}", rng.below(config.customers));
        let place = Command::PlaceOrder {
            order_id: order_id.as_str().into(),
            customer_id: customer.as_str().into(),
            lines: lines.clone(),
            region: format!("region-{}", rng.below(31)),
            reservation_id: None,
        };
        push(placed, place, &mut timed);
        let pays = rng.chance(90);
        let paid = placed + MINUTE_MS + rng.below(10 * MINUTE_MS);
        if pays {
            push(paid, pay_marker(&order_id), &mut timed);
        }
        if rng.chance(3) {
            let at = if pays { paid + rng.below(60 * MINUTE_MS) } else { placed + rng.below(20 * MINUTE_MS) };
            let cancel = Command::Cancel {
                order_id: order_id.as_str().into(),
                by: if rng.chance(70) { Party::Buyer } else { Party::Shop },
                reason: "changed their mind".to_owned(),
            };
            push(at, cancel, &mut timed);
            continue;
        }
        if !pays {
            continue;
        }
        let first_ship = paid + 30 * MINUTE_MS + rng.below(60 * 60 * MINUTE_MS);
        let parcels: Vec<Vec<Line>> = if lines.len() > 1 && rng.chance(40) {
            let (a, b) = lines.split_at(1);
            vec![a.to_vec(), b.to_vec()]
        } else {
            vec![lines.clone()]
        };
        let mut shipped_at = first_ship;
        for (k, parcel) in parcels.iter().enumerate() {
            let shipment_id = format!("P{k}");
            let ship = Command::Ship {
                order_id: order_id.as_str().into(),
                shipment_id: shipment_id.as_str().into(),
                carrier: "SF Express".to_owned(),
                tracking_number: format!("SF{n:08}{k}"),
                lines: parcel.clone(),
            };
            push(shipped_at, ship, &mut timed);
            let delivery = Command::ConfirmDelivery {
                order_id: order_id.as_str().into(),
                shipment_id: shipment_id.as_str().into(),
            };
            push(shipped_at + DAY_MS + rng.below(2 * DAY_MS), delivery, &mut timed);
            shipped_at += 2 * 60 * MINUTE_MS;
        }
        let returned_at = shipped_at + 4 * DAY_MS;
        if rng.chance(3) {
            let line = lines[0].clone();
            let request = Command::RequestReturn {
                order_id: order_id.as_str().into(),
                return_id: "R1".into(),
                lines: vec![Line { sku: line.sku.clone(), quantity: 1 }],
                reason: "not as described".to_owned(),
            };
            push(returned_at, request, &mut timed);
            let condition = if rng.chance(70) { Condition::Resellable } else { Condition::Damaged };
            let receive = Command::ReceiveReturn {
                order_id: order_id.as_str().into(),
                return_id: "R1".into(),
                inspections: vec![Inspection { sku: line.sku.clone(), quantity: 1, condition }],
            };
            push(returned_at + 2 * DAY_MS, receive, &mut timed);
            push(returned_at + 2 * DAY_MS + MINUTE_MS, refund_marker(&order_id, "F1", Some("R1")), &mut timed);
        } else if rng.chance(1) {
            push(returned_at, refund_marker(&order_id, "F1", None), &mut timed);
        }
    }
    // A stocktake of every hot SKU at the end of the day.
    for index in 0..hot_skus {
        let count = Command::Stocktake { sku: sku(index).as_str().into(), counted: 0, reason: AdjustmentReason::Count };
        push(start + DAY_MS + 60 * MINUTE_MS, count, &mut timed);
    }
    timed.sort_by_key(|(at, sequence, _)| (*at, *sequence));
    timed.into_iter().map(|(at, _, command)| (Timestamp(at), command)).collect()
}

/// Payments and refunds name amounts the generator cannot know (prices are decided by the
/// engine): it emits them with a zero amount, and [`price`] fills them in against the state
/// just before they are executed.
fn pay_marker(order_id: &str) -> Command {
    Command::Pay {
        order_id: order_id.into(),
        payment_id: format!("PAY-{order_id}").as_str().into(),
        amount: Decimal::ZERO,
    }
}

fn refund_marker(order_id: &str, refund_id: &str, return_id: Option<&str>) -> Command {
    Command::Refund {
        order_id: order_id.into(),
        refund_id: refund_id.into(),
        amount: Decimal::ZERO,
        return_id: return_id.map(Into::into),
    }
}

/// The order, read back from the spill if the state keeps it there; one that cannot be read
/// is priced as an unknown order is, and the engine then decides on the real one.
fn order_of<'s>(
    state: &'s crate::memory::State,
    order_id: &crate::domain::ids::OrderId,
) -> Option<std::borrow::Cow<'s, crate::domain::state::Order>> {
    state.order(order_id).ok().flatten()
}

/// Fills in the amount of a generated payment (the order's total) or refund (the price of
/// the returned unit, or a tenth of what is refundable) from `state`; other commands are
/// returned unchanged.
pub fn price(state: &crate::memory::State, command: Command) -> Command {
    match command {
        Command::Pay { order_id, payment_id, amount } if amount.is_zero() => {
            let amount = order_of(state, &order_id).map_or(Decimal::ONE, |o| o.total);
            Command::Pay { order_id, payment_id, amount }
        }
        Command::Refund { order_id, refund_id, amount, return_id } if amount.is_zero() => {
            let amount = order_of(state, &order_id).map_or(Decimal::ONE, |order| match &return_id {
                Some(_) => order
                    .lines
                    .first()
                    .map_or(Decimal::ONE, |l| crate::domain::money::share(l.net_amount, 1, l.quantity)),
                None => crate::domain::money::normalize((order.refundable() / Decimal::TEN).round_dp(2))
                    .max(Decimal::new(1, 2)),
            });
            Command::Refund { order_id, refund_id, amount, return_id }
        }
        other => other,
    }
}

/// A generated day decided against a fresh state (refused commands dropped) and wrapped in
/// envelopes the way the engine wraps them: positions from 1, stream versions, one command
/// id per command, sent by `actor`. For tests and benches that need a realistic log.
pub fn day_envelopes(config: &DayConfig, actor: &str) -> Vec<Envelope> {
    let mut state = crate::memory::State::new();
    let mut versions: std::collections::HashMap<compact_str::CompactString, u64> = std::collections::HashMap::new();
    let mut envelopes = Vec::new();
    for (index, (at, command)) in generate_day(config).into_iter().enumerate() {
        let command = price(&state, command);
        let Ok(events) = state.execute(at, &command) else { continue };
        let command_id = CommandId::generated(actor, index as u64);
        for event in events {
            let stream = stream_of(&event);
            let version = versions.entry(stream.clone()).or_insert(0);
            *version += 1;
            envelopes.push(Envelope {
                position: envelopes.len() as u64 + 1,
                stream,
                stream_version: *version,
                recorded_at: at,
                command_id: command_id.clone(),
                fingerprint: fingerprint(&command),
                correlation_id: command_id.as_str().into(),
                actor: actor.into(),
                event,
            });
        }
    }
    envelopes
}
