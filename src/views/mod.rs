//! The read side: projections of a shop log that staff, auditors and storefronts query.
//!
//! Every view is an [`emporium_projections::Projection`] of [`Envelope`]s: derived from the
//! log alone, rebuilt from zero at will, queryable as of any past position or time, and
//! hashed deterministically so that two builds can be compared. Views never append events and
//! never read a clock: "now", where a question needs it, is the time of the last event folded.
//!
//! - [`ShopView`] (`shop`): stock levels, without a copy of the orders;
//! - [`Ledger`] (`ledger`): the double-entry books;
//! - [`Analytics`] (`analytics`): figures by hour and day;
//! - [`Customers`] (`customers`): buyers' records;
//! - [`Histories`] (`histories`): where each order's events are in the log, so that its
//!   history is read back from the log at once and [`TimelineEntry`] renders it.

mod analytics;
mod customers;
mod ledger;
mod shop;
mod timeline;

use std::io;
use std::sync::Arc;

use emporium_projections::{AsOf, EncodeError, Gap, Projection, Runner, StateHash};
use serde::Serialize;

pub use analytics::{Analytics, Bucket, HOUR_MS, LATE_SHIPMENT_MS_DEFAULT, Summary, TOP_SELLERS_MAX};
pub use customers::{CustomerStats, Customers};
pub use ledger::{Account, JournalEntry, Ledger};
pub use shop::{COVER_WINDOW_DAYS, DAY_MS, SLOW_MOVER_DAYS_DEFAULT, ShopView, StockLevel};
pub use timeline::{Histories, HistoryPage, TimelineEntry};

use crate::domain::event::Event;
use crate::log::record::Envelope;
use crate::memory::spill::Spill;

/// The canonical encoding of a view's state: postcard of ordered maps and vectors only.
pub(crate) fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, EncodeError> {
    encode_into(state, Vec::new())
}

/// [`encode`], appended to `buffer`: one reserved for the size expected does not grow by
/// doubling, which would hold the old buffer and one twice its size at once. Views hold
/// plain data, so it fails only when the ledger's spilled part cannot be read back.
pub(crate) fn encode_into<T: Serialize>(state: &T, buffer: Vec<u8>) -> Result<Vec<u8>, EncodeError> {
    postcard::to_extend(state, buffer).map_err(|error| EncodeError(error.to_string()))
}

/// Facts from which [`Views::catch_up`] folds on two threads: a page read while catching up
/// is; a batch handed over while following usually is not, as starting a thread would cost
/// more than it saves.
pub const PARALLEL_FOLD_FACTS_MIN: usize = 2048;

/// Every view of one shop, folded together.
pub struct Views {
    /// Stock.
    pub shop: Runner<ShopView>,
    /// The books.
    pub ledger: Runner<Ledger>,
    /// Figures by hour and day.
    pub analytics: Runner<Analytics>,
    /// Buyers.
    pub customers: Runner<Customers>,
    /// Where each order's events are.
    pub histories: Runner<Histories>,
}

impl Default for Views {
    fn default() -> Views {
        Views::new()
    }
}

impl Views {
    /// Empty views.
    pub fn new() -> Views {
        Views {
            shop: Runner::new(ShopView::new()),
            ledger: Runner::new(Ledger::new()),
            analytics: Runner::new(Analytics::new()),
            customers: Runner::new(Customers::new()),
            histories: Runner::new(Histories::new()),
        }
    }

    /// Folds facts into every view until one is past `as_of`; returns whether `as_of` was
    /// reached. From [`PARALLEL_FOLD_FACTS_MIN`] facts on, the shop view and the ledger fold
    /// on this thread while the other three fold on a second one (the split that takes
    /// about as long on each); the views end the same either way. At a gap in the facts,
    /// every view stops before it.
    pub fn catch_up<'f, F>(&mut self, facts: F, as_of: AsOf) -> Result<bool, Gap>
    where
        F: IntoIterator<Item = &'f Envelope> + Clone + Send,
    {
        let Views { shop, ledger, analytics, customers, histories } = self;
        // At a gap, every view folds up to it (they all see the same facts) and then stops.
        let mut fold_mine = move |facts: F| -> Result<bool, Gap> {
            let reached = shop.catch_up(facts.clone(), as_of).map(|progress| progress.reached_as_of);
            ledger.catch_up(facts, as_of)?;
            reached
        };
        let mut fold_others = move |facts: F| -> Result<(), Gap> {
            let folded = [
                analytics.catch_up(facts.clone(), as_of).map(drop),
                customers.catch_up(facts.clone(), as_of).map(drop),
                histories.catch_up(facts, as_of).map(drop),
            ];
            folded.into_iter().collect()
        };
        if facts.clone().into_iter().size_hint().0 < PARALLEL_FOLD_FACTS_MIN {
            let reached = fold_mine(facts.clone());
            fold_others(facts)?;
            return reached;
        }
        std::thread::scope(|scope| {
            let others = facts.clone();
            let others = scope.spawn(move || fold_others(others));
            let reached = fold_mine(facts);
            match others.join() {
                Ok(folded) => folded?,
                Err(panic) => std::panic::resume_unwind(panic),
            }
            reached
        })
    }

    /// Every view's name and state hash.
    pub fn hashes(&self) -> Result<Vec<(&'static str, StateHash)>, EncodeError> {
        Ok(vec![
            (self.shop.projection().name(), self.shop.state_hash()?),
            (self.ledger.projection().name(), self.ledger.state_hash()?),
            (self.analytics.projection().name(), self.analytics.state_hash()?),
            (self.customers.projection().name(), self.customers.state_hash()?),
            (self.histories.projection().name(), self.histories.state_hash()?),
        ])
    }

    /// Lets the ledger move the books and journal blocks it keeps encoded to `spill`
    /// ([`Views::spill`]); the other views are small beside it.
    pub fn attach_spill(&mut self, spill: Arc<Spill>) {
        self.ledger.projection_mut().attach_spill(spill);
    }

    /// Brings back into memory what folding `facts` may read or change: the books of the
    /// orders they are about. The shell calls it before [`Views::catch_up`], so folding never
    /// reads the spill. On failure the views hold the same state.
    pub fn load_for(&mut self, facts: &[Envelope]) -> io::Result<()> {
        self.ledger.projection_mut().load_for(facts)
    }

    /// Moves what the ledger keeps encoded in memory to the spill, if one is attached.
    /// On failure it stays in memory and nothing changes.
    pub fn spill(&mut self) -> io::Result<()> {
        self.ledger.projection_mut().spill()
    }

    /// The last position folded (the same for every view).
    pub fn checkpoint(&self) -> u64 {
        self.shop.checkpoint()
    }

    /// Every view's state in one canonical encoding, for a snapshot, appended to `buffer`
    /// (reserve it for the size expected).
    pub fn encode(&self, buffer: Vec<u8>) -> Result<Vec<u8>, EncodeError> {
        encode_into(
            &(
                self.shop.projection(),
                self.ledger.projection(),
                self.analytics.projection(),
                self.customers.projection(),
                self.histories.projection(),
            ),
            buffer,
        )
    }

    /// Views from [`Views::encode`]'s bytes, as folded up to `checkpoint`; `None` when the
    /// bytes do not decode.
    pub fn decode(bytes: &[u8], checkpoint: u64) -> Option<Views> {
        let (shop, ledger, analytics, customers, histories): (ShopView, Ledger, Analytics, Customers, Histories) =
            postcard::from_bytes(bytes).ok()?;
        Some(Views {
            shop: Runner::resume(shop, checkpoint),
            ledger: Runner::resume(ledger, checkpoint),
            analytics: Runner::resume(analytics, checkpoint),
            customers: Runner::resume(customers, checkpoint),
            histories: Runner::resume(histories, checkpoint),
        })
    }
}

/// One line about an event, for people.
pub fn describe(event: &Event) -> String {
    match event {
        Event::ProductListed { sku, title, price, .. } => format!("listed {sku} \"{title}\" at {price}"),
        Event::PriceChanged { sku, old_price, new_price } => format!("price of {sku} {old_price} -> {new_price}"),
        Event::ProductDelisted { sku } => format!("delisted {sku}"),
        Event::ProductRelisted { sku } => format!("relisted {sku}"),
        Event::StockReceived { sku, quantity, unit_cost, supplier_ref, .. } => {
            format!("received {quantity} of {sku} at {unit_cost} ({supplier_ref})")
        }
        Event::StockCounted { sku, counted, delta, reason, shortfall, .. } => {
            format!(
                "counted {counted} of {sku} ({delta:+}, {reason:?}){}",
                if *shortfall > 0 { format!(", short by {shortfall}") } else { String::new() }
            )
        }
        Event::StockReserved { reservation_id, lines, expires_at } => {
            format!(
                "hold {reservation_id}: {} until {}",
                lines_text(lines.iter().map(|l| (&l.sku, l.quantity))),
                expires_at
            )
        }
        Event::ReservationReleased { reservation_id } => format!("hold {reservation_id} released"),
        Event::ReservationExpired { reservation_id, .. } => format!("hold {reservation_id} expired"),
        Event::OrderPlaced { order_id, customer_id, lines, total, region, reservation_id, .. } => format!(
            "order {order_id} placed by {customer_id} to {region}: {}, total {total}{}",
            lines_text(lines.iter().map(|l| (&l.sku, l.quantity))),
            reservation_id.as_ref().map(|r| format!(", taking over hold {r}")).unwrap_or_default()
        ),
        Event::OrderPaid { amount, payment_id, .. } => format!("paid {amount} ({payment_id})"),
        Event::OrderCancelled { by, reason, .. } => match by {
            Some(by) => format!("cancelled by {by:?}: {reason}"),
            None => format!("cancelled: {reason}"),
        },
        Event::OrderExpired { .. } => "expired unpaid".to_owned(),
        Event::ShipmentDispatched { shipment_id, carrier, tracking_number, lines, .. } => format!(
            "parcel {shipment_id} shipped by {carrier} ({tracking_number}): {}",
            lines_text(lines.iter().map(|l| (&l.sku, l.quantity)))
        ),
        Event::ShipmentDelivered { shipment_id, .. } => format!("parcel {shipment_id} delivered"),
        Event::ReturnRequested { return_id, lines, reason, .. } => {
            format!(
                "return {return_id} requested: {} ({reason})",
                lines_text(lines.iter().map(|l| (&l.sku, l.quantity)))
            )
        }
        Event::ReturnReceived { return_id, lines, .. } => {
            let parts: Vec<String> =
                lines.iter().map(|l| format!("{} x{} {:?}", l.sku, l.quantity, l.condition)).collect();
            format!("return {return_id} received: {}", parts.join(", "))
        }
        Event::RefundIssued { refund_id, amount, return_id, .. } => format!(
            "refunded {amount} ({refund_id}){}",
            return_id.as_ref().map(|r| format!(" for return {r}")).unwrap_or_default()
        ),
    }
}

fn lines_text<'l>(lines: impl Iterator<Item = (&'l crate::domain::ids::Sku, u64)>) -> String {
    lines.map(|(sku, quantity)| format!("{sku} x{quantity}")).collect::<Vec<_>>().join(", ")
}
