//! The numbers the manuals watch (数据分析), by hour and by day.
//!
//! Facts land in hourly buckets by the time they were recorded; a day, or any range, sums its
//! hours. Definitions:
//! - GMV: money paid, at payment time; net sales: GMV less refunds, at refund time;
//! - orders and units: paid orders and their units; average order value (客单价): GMV / orders;
//! - refund rate: orders refunded for the first time / orders paid;
//! - return rate: units received back / units shipped;
//! - repurchase rate (复购率): of the customers who paid in the range, the share who had paid
//!   before (earlier in the range or any time before it);
//! - top sellers: by units and by net revenue of paid order lines;
//! - shipping time: from payment to an order's first parcel (p50, p95, nearest rank), and late
//!   shipments: first parcels later than the given limit after payment (48 hours by default).

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::domain::event::Event;
use crate::domain::idmap::{IdMap, IdSet, shrink_if_sparse};
use crate::domain::ids::{CustomerId, OrderId, Sku, Timestamp};
use crate::log::record::Envelope;

/// Milliseconds in an hour.
pub const HOUR_MS: u64 = 60 * 60 * 1000;

/// Default limit after payment past which a first parcel is late: 48 hours.
pub const LATE_SHIPMENT_MS_DEFAULT: u64 = 48 * HOUR_MS;

/// How many top sellers a summary lists.
pub const TOP_SELLERS_MAX: usize = 10;

/// A bucket size for series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    /// One hour.
    Hour,
    /// One day (UTC).
    Day,
}

impl Bucket {
    /// The bucket's length.
    pub fn ms(self) -> u64 {
        match self {
            Bucket::Hour => HOUR_MS,
            Bucket::Day => 24 * HOUR_MS,
        }
    }

    /// The latest end a series of these buckets may have: the end of the last whole bucket
    /// whose end a `u64` of milliseconds holds.
    pub fn series_end_max(self) -> Timestamp {
        Timestamp(u64::MAX / self.ms() * self.ms())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Hour {
    gmv: Decimal,
    refunded: Decimal,
    paid_orders: u64,
    units: u64,
    refunded_orders: u64,
    shipped_units: u64,
    returned_units: u64,
    /// Paying customers, and whether they had paid before.
    payers: Vec<(CustomerId, bool)>,
    /// Units and net revenue per SKU.
    sellers: BTreeMap<Sku, (u64, Decimal)>,
    /// Payment to first parcel, per order first shipped in this hour.
    ship_delays_ms: Vec<u64>,
}

/// The figures of a range of time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Summary {
    /// Start, inclusive.
    pub from: Timestamp,
    /// End, exclusive.
    pub to: Timestamp,
    pub gmv: Decimal,
    pub net_sales: Decimal,
    pub orders: u64,
    pub units: u64,
    pub average_order_value: Option<Decimal>,
    pub refund_rate: Option<Decimal>,
    pub return_rate: Option<Decimal>,
    pub repurchase_rate: Option<Decimal>,
    pub top_by_units: Vec<(Sku, u64)>,
    pub top_by_revenue: Vec<(Sku, Decimal)>,
    pub ship_time_p50_ms: Option<u64>,
    pub ship_time_p95_ms: Option<u64>,
    pub late_shipments: u64,
}

/// An order's lines as analytics keeps them until it is paid: SKU, units, net amount.
type PlacedLines = Vec<(Sku, u64, Decimal)>;

/// The analytics projection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Analytics {
    hours: BTreeMap<u64, Hour>,
    /// Per open order: buyer and lines (SKU, units, net amount), until it is paid.
    #[serde(serialize_with = "crate::domain::idmap::sorted_map")]
    placed: IdMap<OrderId, (CustomerId, PlacedLines)>,
    /// Per paid order not yet shipped: when it was paid.
    #[serde(serialize_with = "crate::domain::idmap::sorted_map")]
    awaiting_shipment: IdMap<OrderId, Timestamp>,
    #[serde(serialize_with = "crate::domain::idmap::sorted_set")]
    refunded_orders: IdSet<OrderId>,
    #[serde(serialize_with = "crate::domain::idmap::sorted_set")]
    payers: IdSet<CustomerId>,
}

fn ratio(part: u64, whole: u64) -> Option<Decimal> {
    (whole > 0).then(|| (Decimal::from(part) / Decimal::from(whole)).round_dp(4))
}

fn nearest_rank(sorted: &[u64], percent: u64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (percent * sorted.len() as u64).div_ceil(100).max(1);
    sorted.get(rank as usize - 1).copied()
}

impl Analytics {
    /// No figures yet.
    pub fn new() -> Analytics {
        Analytics::default()
    }

    fn hour(&mut self, at: Timestamp) -> &mut Hour {
        self.hours.entry(at.0 / HOUR_MS).or_default()
    }

    /// The figures of `[from, to)`; first parcels later than `late_after_ms` after payment
    /// count as late.
    pub fn summary(&self, from: Timestamp, to: Timestamp, late_after_ms: u64) -> Summary {
        let first_hour = from.0.div_ceil(HOUR_MS);
        let end_hour = to.0 / HOUR_MS;
        let mut s = Summary {
            from,
            to,
            gmv: Decimal::ZERO,
            net_sales: Decimal::ZERO,
            orders: 0,
            units: 0,
            average_order_value: None,
            refund_rate: None,
            return_rate: None,
            repurchase_rate: None,
            top_by_units: Vec::new(),
            top_by_revenue: Vec::new(),
            ship_time_p50_ms: None,
            ship_time_p95_ms: None,
            late_shipments: 0,
        };
        let (mut refunded, mut refunded_orders, mut shipped, mut returned) = (Decimal::ZERO, 0, 0, 0);
        let mut payers: BTreeMap<&CustomerId, bool> = BTreeMap::new();
        let mut sellers: BTreeMap<&Sku, (u64, Decimal)> = BTreeMap::new();
        let mut delays: Vec<u64> = Vec::new();
        for (_, hour) in self.hours.range(first_hour..end_hour.max(first_hour)) {
            s.gmv += hour.gmv;
            refunded += hour.refunded;
            s.orders += hour.paid_orders;
            s.units += hour.units;
            refunded_orders += hour.refunded_orders;
            shipped += hour.shipped_units;
            returned += hour.returned_units;
            for (customer, repeat) in &hour.payers {
                *payers.entry(customer).or_insert(false) |= *repeat;
            }
            for (sku, (units, revenue)) in &hour.sellers {
                let seller = sellers.entry(sku).or_insert((0, Decimal::ZERO));
                seller.0 += units;
                seller.1 += revenue;
            }
            delays.extend(&hour.ship_delays_ms);
        }
        s.net_sales = s.gmv - refunded;
        s.average_order_value = (s.orders > 0).then(|| (s.gmv / Decimal::from(s.orders)).round_dp(2));
        s.refund_rate = ratio(refunded_orders, s.orders);
        s.return_rate = ratio(returned, shipped);
        s.repurchase_rate = ratio(payers.values().filter(|repeat| **repeat).count() as u64, payers.len() as u64);
        let mut by_units: Vec<(Sku, u64)> = sellers.iter().map(|(sku, (u, _))| ((*sku).clone(), *u)).collect();
        by_units.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        by_units.truncate(TOP_SELLERS_MAX);
        let mut by_revenue: Vec<(Sku, Decimal)> = sellers.iter().map(|(sku, (_, r))| ((*sku).clone(), *r)).collect();
        by_revenue.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        by_revenue.truncate(TOP_SELLERS_MAX);
        s.top_by_units = by_units;
        s.top_by_revenue = by_revenue;
        delays.sort_unstable();
        s.ship_time_p50_ms = nearest_rank(&delays, 50);
        s.ship_time_p95_ms = nearest_rank(&delays, 95);
        s.late_shipments = delays.iter().filter(|d| **d > late_after_ms).count() as u64;
        s
    }

    /// One summary per bucket in `[from, to)`, at most `buckets_max` buckets. A bucket whose
    /// end a `u64` of milliseconds cannot hold ends the series (see [`Bucket::series_end_max`]):
    /// bucket starts never wrap around.
    pub fn series(
        &self,
        bucket: Bucket,
        from: Timestamp,
        to: Timestamp,
        late_after_ms: u64,
        buckets_max: usize,
    ) -> Vec<Summary> {
        let size = bucket.ms();
        let mut start = from.0 / size * size;
        let mut out = Vec::new();
        while start < to.0 && out.len() < buckets_max {
            let Some(end) = start.checked_add(size) else { break };
            out.push(self.summary(Timestamp(start), Timestamp(end), late_after_ms));
            start = end;
        }
        out
    }
}

impl emporium_projections::Projection for Analytics {
    type Fact = Envelope;

    fn name(&self) -> &'static str {
        "analytics"
    }

    fn apply(&mut self, envelope: &Envelope) {
        let at = envelope.recorded_at;
        match &envelope.event {
            Event::OrderPlaced { order_id, customer_id, lines, .. } => {
                let lines = lines.iter().map(|l| (l.sku.clone(), l.quantity, l.net_amount)).collect();
                self.placed.insert(order_id.clone(), (customer_id.clone(), lines));
            }
            Event::OrderCancelled { order_id, .. } | Event::OrderExpired { order_id, .. } => {
                self.placed.remove(order_id);
                self.awaiting_shipment.remove(order_id);
                shrink_if_sparse(&mut self.placed);
                shrink_if_sparse(&mut self.awaiting_shipment);
            }
            Event::OrderPaid { order_id, amount, paid_at, .. } => {
                let Some((customer_id, lines)) = self.placed.remove(order_id) else { return };
                shrink_if_sparse(&mut self.placed);
                let repeat = !self.payers.insert(customer_id.clone());
                self.awaiting_shipment.insert(order_id.clone(), *paid_at);
                let hour = self.hour(at);
                hour.gmv += *amount;
                hour.paid_orders += 1;
                hour.payers.push((customer_id, repeat));
                for (sku, units, net) in lines {
                    hour.units += units;
                    let seller = hour.sellers.entry(sku).or_insert((0, Decimal::ZERO));
                    seller.0 += units;
                    seller.1 += net;
                }
            }
            Event::ShipmentDispatched { order_id, lines, .. } => {
                let paid_at = self.awaiting_shipment.remove(order_id);
                shrink_if_sparse(&mut self.awaiting_shipment);
                let hour = self.hour(at);
                hour.shipped_units += lines.iter().map(|l| l.quantity).sum::<u64>();
                if let Some(paid_at) = paid_at {
                    hour.ship_delays_ms.push(at.0.saturating_sub(paid_at.0));
                }
            }
            Event::ReturnReceived { lines, .. } => {
                self.hour(at).returned_units += lines.iter().map(|l| l.quantity).sum::<u64>();
            }
            Event::RefundIssued { order_id, amount, .. } => {
                let first = self.refunded_orders.insert(order_id.clone());
                let hour = self.hour(at);
                hour.refunded += *amount;
                hour.refunded_orders += u64::from(first);
            }
            _ => {}
        }
    }

    fn encode(&self) -> Result<Vec<u8>, emporium_projections::EncodeError> {
        super::encode(self)
    }
}
