//! Customers (客户): how often and how much each buyer bought.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::domain::event::Event;
use crate::domain::ids::{CustomerId, OrderId, Timestamp};
use crate::log::record::Envelope;
use crate::memory::packed::PackedMap;

/// One buyer's record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerStats {
    /// Orders placed.
    pub orders: u64,
    /// Orders paid.
    pub paid_orders: u64,
    /// Paid less refunded.
    pub total_spent: Decimal,
    /// When the first order was placed.
    pub first_order_at: Option<Timestamp>,
    /// When the last order was placed.
    pub last_order_at: Option<Timestamp>,
}

impl CustomerStats {
    /// Paid for two orders or more (复购).
    pub fn repeat_buyer(&self) -> bool {
        self.paid_orders >= 2
    }
}

/// The customers projection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customers {
    /// Packed maps: a busy day has a record for most of a million buyers, and a buyer for
    /// every order.
    customers: PackedMap<CustomerId, CustomerStats>,
    buyer_of: PackedMap<OrderId, CustomerId>,
}

impl Customers {
    /// No customers yet.
    pub fn new() -> Customers {
        Customers::default()
    }

    /// A customer's record.
    pub fn customer(&self, customer_id: &CustomerId) -> Option<&CustomerStats> {
        self.customers.get(customer_id)
    }

    /// Every customer, in no particular order.
    pub fn all(&self) -> impl Iterator<Item = (&CustomerId, &CustomerStats)> {
        self.customers.iter()
    }

    fn of_order(&mut self, order_id: &OrderId) -> Option<&mut CustomerStats> {
        let customer_id = self.buyer_of.get(order_id)?;
        self.customers.get_mut(customer_id)
    }
}

impl emporium_projections::Projection for Customers {
    type Fact = Envelope;

    fn name(&self) -> &'static str {
        "customers"
    }

    fn apply(&mut self, envelope: &Envelope) {
        match &envelope.event {
            Event::OrderPlaced { order_id, customer_id, placed_at, .. } => {
                self.buyer_of.insert(order_id.clone(), customer_id.clone());
                // Clone the id only for a new buyer: most orders on a busy day are not.
                let stats = self.customers.get_or_insert_with(customer_id, CustomerStats::default);
                stats.orders += 1;
                stats.first_order_at.get_or_insert(*placed_at);
                stats.last_order_at = Some(*placed_at);
            }
            Event::OrderPaid { order_id, amount, .. } => {
                if let Some(stats) = self.of_order(order_id) {
                    stats.paid_orders += 1;
                    stats.total_spent += *amount;
                }
            }
            Event::RefundIssued { order_id, amount, .. } => {
                if let Some(stats) = self.of_order(order_id) {
                    stats.total_spent -= *amount;
                }
            }
            _ => {}
        }
    }

    fn encode(&self) -> Result<Vec<u8>, emporium_projections::EncodeError> {
        super::encode(self)
    }
}
