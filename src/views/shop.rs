//! Stock levels: the products and checkout holds of the domain state, folded from the log
//! by the same rules as the writer's state ([`State::apply_stock`]), with the sales history
//! that stock questions need (days of cover, slow movers).
//!
//! The view keeps no orders: of each open order not yet shipped in full it keeps only what
//! the order holds back, and of the rest only running totals of money paid and refunded.
//! An order's own questions are the writer's state's to answer.
//!
//! "Now" for these questions is the time of the last event folded, never a clock, so a view
//! built as of a past point answers as the shop stood then.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::domain::event::Event;
use crate::domain::idmap::IdMap;
use crate::domain::ids::{Sku, Timestamp};
use crate::domain::state::{Holds, Product};
use crate::log::record::Envelope;
use crate::memory::State;

/// Milliseconds in a day.
pub const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Days of sales that days-of-cover averages over.
pub const COVER_WINDOW_DAYS: u64 = 7;

/// Default days without a sale after which stock on hand is a slow mover (滞销).
pub const SLOW_MOVER_DAYS_DEFAULT: u64 = 30;

/// One SKU's stock as staff see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLevel {
    /// The SKU.
    pub sku: Sku,
    /// Units on the shelf by the books.
    pub on_hand: u64,
    /// Units held for checkouts and open orders.
    pub reserved: u64,
    /// Units that can be sold now.
    pub available: u64,
    /// Reserved units the shelf cannot cover, after a stocktake.
    pub shortfall: u64,
    /// Value of the units on hand at moving average cost.
    pub inventory_value: Decimal,
    /// Average cost of one unit on hand, to 4 places; `None` with nothing on hand.
    pub unit_cost: Option<Decimal>,
    /// Available at or below the product's threshold: time to reorder (补货).
    pub low_stock: bool,
    /// Available units divided by average daily units sold over the last 7 days, to one
    /// place; `None` when nothing sold.
    pub days_of_cover: Option<Decimal>,
    /// Something on hand and nothing sold for the slow-mover period.
    pub slow_mover: bool,
}

/// Stock with sales history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShopView {
    /// Products and checkout holds; never an order.
    state: State,
    /// What each open order not yet shipped in full keeps back.
    #[serde(serialize_with = "crate::domain::idmap::sorted_map")]
    holds: Holds,
    /// Money ever paid for orders.
    paid: Decimal,
    /// Money ever refunded.
    refunded: Decimal,
    /// Units paid per SKU per day (day number since the epoch).
    daily_units: BTreeMap<(Sku, u64), u64>,
    /// The last payment of each SKU, or its listing when never sold.
    #[serde(serialize_with = "crate::domain::idmap::sorted_map")]
    last_sale_at: IdMap<Sku, Timestamp>,
    now: Timestamp,
}

impl ShopView {
    /// An empty view.
    pub fn new() -> ShopView {
        ShopView::default()
    }

    /// Every product with its stock, by SKU, as of the last event folded.
    pub fn products(&self) -> impl Iterator<Item = &Product> {
        self.state.products()
    }

    /// What each open order not yet shipped in full keeps back, per SKU.
    pub fn holds(&self) -> &Holds {
        &self.holds
    }

    /// Money ever paid for orders.
    pub fn paid(&self) -> Decimal {
        self.paid
    }

    /// Money ever refunded.
    pub fn refunded(&self) -> Decimal {
        self.refunded
    }

    /// Whether this view's products, holds and money totals are what the writer's `state`
    /// at the same position gives; the first difference otherwise.
    pub fn matches(&self, state: &State) -> Result<(), String> {
        let mut theirs = state.products();
        for product in self.state.products() {
            match theirs.next() {
                Some(their) if their == product => {}
                Some(their) => {
                    return Err(format!("product {} is {product:?} here, {their:?} in the state", product.sku));
                }
                None => return Err(format!("product {} is not in the state", product.sku)),
            }
        }
        if let Some(their) = theirs.next() {
            return Err(format!("product {} is missing here", their.sku));
        }
        let (mut held, mut paid, mut refunded) = (0, Decimal::ZERO, Decimal::ZERO);
        // Read back one by one: a writer's state may keep orders in its spill.
        for order in state.orders() {
            let order = order.map_err(|error| format!("an order could not be read back: {error}"))?;
            paid += order.paid();
            refunded += order.refunded;
            let expected: Vec<(Sku, u64)> = order.held().map(|(sku, quantity)| (sku.clone(), quantity)).collect();
            if expected.iter().all(|(_, quantity)| *quantity == 0) {
                continue;
            }
            held += 1;
            if self.holds.get(&order.id) != Some(&expected) {
                return Err(format!(
                    "order {} holds {:?} here, {expected:?} in the state",
                    order.id,
                    self.holds.get(&order.id)
                ));
            }
        }
        if held != self.holds.len() {
            return Err(format!("{} orders hold stock here, {held} in the state", self.holds.len()));
        }
        if (paid, refunded) != (self.paid, self.refunded) {
            return Err(format!(
                "paid {} and refunded {} here, {paid} and {refunded} in the state",
                self.paid, self.refunded
            ));
        }
        Ok(())
    }

    /// Checks the stock invariants, reserved units against holds included; panics naming
    /// the first broken one.
    pub fn check_invariants(&self) {
        self.state.check_stock_invariants(&self.holds);
    }

    /// The time of the last event folded.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// The stock level of `sku`; `slow_mover_days` sets the slow-mover period.
    pub fn stock(&self, sku: &Sku, slow_mover_days: u64) -> Option<StockLevel> {
        let product = self.state.product(sku)?;
        let stock = &product.stock;
        let unit_cost = (stock.on_hand > 0).then(|| (stock.value / Decimal::from(stock.on_hand)).round_dp(4));
        let today = self.now.0 / DAY_MS;
        let first_day = (today + 1).saturating_sub(COVER_WINDOW_DAYS);
        let sold: u64 = self.daily_units.range((sku.clone(), first_day)..=(sku.clone(), today)).map(|(_, u)| *u).sum();
        let days_of_cover = (sold > 0).then(|| {
            (Decimal::from(stock.available()) * Decimal::from(COVER_WINDOW_DAYS) / Decimal::from(sold)).round_dp(1)
        });
        let quiet_since = self.last_sale_at.get(sku).copied().unwrap_or_default();
        let slow_mover =
            stock.on_hand > 0 && self.now.0.saturating_sub(quiet_since.0) >= slow_mover_days.saturating_mul(DAY_MS);
        Some(StockLevel {
            sku: sku.clone(),
            on_hand: stock.on_hand,
            reserved: stock.reserved,
            available: stock.available(),
            shortfall: stock.shortfall(),
            inventory_value: stock.value,
            unit_cost,
            low_stock: stock.available() <= product.low_stock_threshold,
            days_of_cover,
            slow_mover,
        })
    }

    /// Every SKU's stock level, by SKU.
    pub fn stock_levels(&self, slow_mover_days: u64) -> Vec<StockLevel> {
        self.state.products().filter_map(|p| self.stock(&p.sku, slow_mover_days)).collect()
    }
}

impl emporium_projections::Projection for ShopView {
    type Fact = Envelope;

    fn name(&self) -> &'static str {
        "shop"
    }

    fn apply(&mut self, envelope: &Envelope) {
        self.state.apply_stock(&envelope.event, &mut self.holds);
        self.now = self.now.max(envelope.recorded_at);
        match &envelope.event {
            Event::ProductListed { sku, .. } => {
                self.last_sale_at.insert(sku.clone(), envelope.recorded_at);
            }
            Event::OrderPaid { order_id, amount, .. } => {
                self.paid += *amount;
                let day = envelope.recorded_at.0 / DAY_MS;
                // A paid order was open and had shipped nothing, so it holds every unit it ordered.
                let Some(held) = self.holds.get(order_id) else { panic!("order {order_id} paid but holds nothing") };
                for (sku, quantity) in held {
                    *self.daily_units.entry((sku.clone(), day)).or_insert(0) += *quantity;
                    // Every SKU sold was listed, so it has an entry: no key to clone.
                    let Some(last_sale_at) = self.last_sale_at.get_mut(sku) else {
                        panic!("SKU {sku} sold but never listed");
                    };
                    *last_sale_at = envelope.recorded_at;
                }
            }
            Event::RefundIssued { amount, .. } => self.refunded += *amount,
            _ => {}
        }
    }

    fn encode(&self) -> Result<Vec<u8>, emporium_projections::EncodeError> {
        super::encode(self)
    }
}
