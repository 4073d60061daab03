//! Stock levels and order status: the domain state itself, folded from the log, with the
//! sales history that stock questions need (days of cover, slow movers).
//!
//! "Now" for these questions is the time of the last event folded, never a clock, so a view
//! built as of a past point answers as the shop stood then.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::idmap::IdMap;
use crate::ids::{Sku, Timestamp};
use crate::log::Envelope;
use crate::state::State;

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

/// The domain state with sales history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShopView {
    state: State,
    /// Units paid per SKU per day (day number since the epoch).
    daily_units: BTreeMap<(Sku, u64), u64>,
    /// The last payment of each SKU, or its listing when never sold.
    #[serde(serialize_with = "crate::idmap::sorted_map")]
    last_sale_at: IdMap<Sku, Timestamp>,
    now: Timestamp,
}

impl ShopView {
    /// An empty view.
    pub fn new() -> ShopView {
        ShopView::default()
    }

    /// The shop's state as of the last event folded.
    pub fn state(&self) -> &State {
        &self.state
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
        self.state.apply(&envelope.event);
        self.now = self.now.max(envelope.recorded_at);
        match &envelope.event {
            Event::ProductListed { sku, .. } => {
                self.last_sale_at.insert(sku.clone(), envelope.recorded_at);
            }
            Event::OrderPaid { order_id, .. } => {
                let day = envelope.recorded_at.0 / DAY_MS;
                if let Some(order) = self.state.order(order_id) {
                    for line in &order.lines {
                        *self.daily_units.entry((line.sku.clone(), day)).or_insert(0) += line.quantity;
                        // Every SKU sold was listed, so it has an entry: no key to clone.
                        let Some(last_sale_at) = self.last_sale_at.get_mut(&line.sku) else {
                            panic!("SKU {} sold but never listed", line.sku);
                        };
                        *last_sale_at = envelope.recorded_at;
                    }
                }
            }
            _ => {}
        }
    }

    fn encode(&self) -> Vec<u8> {
        super::encode(self)
    }
}
