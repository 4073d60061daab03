//! The state of one shop, rebuilt by applying events in order.
//!
//! [`State::apply`] is total for every event that [`crate::decide()`] produced against the
//! same state: it never fails, never reads a clock and never re-runs a business rule. An
//! event that does not fit the state (an unknown order, stock going negative) can only come
//! from a bug or a tampered log, and is a broken invariant: `apply` asserts it. One
//! exception in time, not in kind: a store that keeps an order encoded may keep an event
//! that changes only that order beside it ([`Orders::change_by`]), and then its assertions
//! run when the order is next decoded (at once in debug builds and tests).
//!
//! A log that did not come from this engine's `decide` (one read back at start-up, an
//! import, `verify --deep`) is folded with [`State::try_apply`] instead
//! ([`crate::domain::fit`]): it checks first that the event fits, and returns an
//! [`Unfit`](crate::domain::fit::Unfit) naming why it does not rather than panicking.
//!
//! The state holds its orders in any [`Orders`] store: the memory layer's keeps the newest
//! as values and the rest encoded or out of memory, and the rules do not see the difference.
//!
//! After every applied event the invariants of the entities it touched are checked in
//! debug builds and tests ([`State::check_invariants`] checks all of them):
//! - reserved <= on hand, unless a stocktake recorded a shortfall that is not yet resolved;
//! - on hand = received + adjustments + restocked returns - shipped, and the same for value;
//! - inventory value >= 0, and 0 when nothing is on hand;
//! - per order line shipped <= ordered and returned <= return requested <= shipped;
//! - refunded <= paid, per order and per line; refunds for a return <= the returned units' price;
//! - reserved = what active holds and open orders keep back (checked by `check_invariants`).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use compact_str::CompactString;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::domain::command::{Command, Condition, Line, Party};
use crate::domain::event::{
    CostedLine, Discount, Event, InspectedLine, PricedLine, RefundShare, RefundTarget, Subject,
};
use crate::domain::idmap::IdMap;
use crate::domain::ids::{
    CustomerId, OrderId, PaymentId, RefundId, ReservationId, ReturnId, ShipmentId, Sku, Timestamp,
};
use crate::domain::limits::EXPIRIES_PER_TICK_MAX;
use crate::domain::orders::{Orders, Unreadable};

/// Stock of one SKU. Available = on hand - reserved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stock {
    /// Units on the shelf, as far as the books know.
    pub on_hand: u64,
    /// Units held for checkouts and open orders.
    pub reserved: u64,
    /// Value of the units on hand at moving average cost.
    pub value: Decimal,
    /// Unit cost of the latest receipt; values units found when nothing is on hand.
    pub last_unit_cost: Decimal,
    /// A stocktake counted fewer units than are reserved and that is not yet resolved.
    pub shortfall_recorded: bool,
    /// Units ever received from suppliers.
    pub received: u64,
    /// Net units added by stocktakes.
    pub adjusted: i64,
    /// Units returned in resellable condition.
    pub restocked: u64,
    /// Units shipped.
    pub shipped: u64,
    /// Returned units written off as damaged (they were no longer on hand).
    pub written_off: u64,
    /// Value ever received.
    pub value_received: Decimal,
    /// Net value added by stocktakes.
    pub value_adjusted: Decimal,
    /// Value of resellable returns.
    pub value_restocked: Decimal,
    /// Cost of goods shipped.
    pub value_shipped: Decimal,
    /// Cost of returned units written off.
    pub value_written_off: Decimal,
}

impl Stock {
    /// Units that can be reserved now.
    pub fn available(&self) -> u64 {
        self.on_hand.saturating_sub(self.reserved)
    }

    /// Reserved units the shelf cannot cover.
    pub fn shortfall(&self) -> u64 {
        self.reserved.saturating_sub(self.on_hand)
    }
}

/// A product in the catalog with its stock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Product {
    pub sku: Sku,
    pub title: String,
    pub category: String,
    pub price: Decimal,
    pub weight_g: u64,
    pub low_stock_threshold: u64,
    /// Delisted products cannot be ordered or reserved.
    pub listed: bool,
    pub stock: Stock,
}

/// Where a checkout hold stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    /// Holding stock.
    Active,
    /// Released by the caller.
    Released,
    /// Its time to live ran out.
    Expired,
    /// Taken over by an order.
    Consumed,
}

/// A checkout hold (锁库存).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Reservation {
    pub id: ReservationId,
    /// One line per SKU.
    pub lines: Vec<Line>,
    pub expires_at: Timestamp,
    pub status: ReservationStatus,
}

/// The status of an order, derived from its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Placed, stock reserved, not yet paid.
    AwaitingPayment,
    /// Paid, nothing shipped yet.
    Paid,
    /// Some units shipped.
    PartiallyShipped,
    /// Every unit shipped, not every parcel delivered.
    Shipped,
    /// Every unit shipped and every parcel delivered.
    Delivered,
    /// Cancelled before its first shipment.
    Cancelled,
    /// Not paid within the payment time limit.
    Expired,
}

/// Where an order's returns stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReturnState {
    /// No return requested.
    None,
    /// A requested return has not arrived yet.
    Requested,
    /// Every requested return was received.
    Received,
}

/// Where an order's refunds stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundState {
    /// Nothing refunded.
    None,
    /// Some of what was paid was refunded.
    Partial,
    /// Everything paid was refunded.
    Full,
}

/// One line of an order, one per SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct OrderLine {
    pub sku: Sku,
    pub quantity: u64,
    pub unit_price: Decimal,
    pub discounts: Vec<Discount>,
    pub net_amount: Decimal,
    pub shipped: u64,
    /// Cost of goods of the shipped units.
    pub shipped_cost: Decimal,
    /// Units asked back by return requests, received or not.
    pub return_requested: u64,
    /// Units received back.
    pub returned: u64,
    /// Cost of the units received back.
    pub returned_cost: Decimal,
    /// Money refunded against this line.
    pub refunded: Decimal,
}

/// A payment received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Payment {
    pub id: PaymentId,
    pub amount: Decimal,
    pub paid_at: Timestamp,
}

/// A parcel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Shipment {
    pub id: ShipmentId,
    pub carrier: CompactString,
    pub tracking_number: CompactString,
    pub lines: Vec<CostedLine>,
    pub shipped_at: Timestamp,
    pub delivered_at: Option<Timestamp>,
}

/// A return request and, once it arrived, its inspection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Return {
    pub id: ReturnId,
    pub lines: Vec<Line>,
    pub reason: String,
    pub requested_at: Timestamp,
    pub received_at: Option<Timestamp>,
    pub inspected: Vec<InspectedLine>,
}

/// A refund given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Refund {
    pub id: RefundId,
    pub amount: Decimal,
    pub return_id: Option<ReturnId>,
    pub allocation: Vec<RefundShare>,
    pub refunded_at: Timestamp,
}

/// How an order closed before completing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum Closure {
    Cancelled { by: Option<Party>, reason: String, at: Timestamp },
    Expired { at: Timestamp },
}

/// An order and everything that happened to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Order {
    pub id: OrderId,
    pub customer_id: CustomerId,
    /// Short text, kept inline: no allocation when the order is thawed or cloned.
    pub region: CompactString,
    pub placed_at: Timestamp,
    pub payment_due_by: Timestamp,
    pub reservation_id: Option<ReservationId>,
    pub lines: Vec<OrderLine>,
    pub shipping_fee: Decimal,
    pub shipping_refunded: Decimal,
    pub total: Decimal,
    pub payment: Option<Payment>,
    pub refunded: Decimal,
    pub shipments: Vec<Shipment>,
    pub returns: Vec<Return>,
    pub refunds: Vec<Refund>,
    pub closure: Option<Closure>,
    /// Events recorded about it so far: the version of its stream in the log. Kept here so
    /// that the engine needs no map of every order's stream besides the orders.
    pub stream_version: u64,
}

impl Order {
    /// The status, derived from what happened.
    pub fn status(&self) -> OrderStatus {
        match &self.closure {
            Some(Closure::Cancelled { .. }) => return OrderStatus::Cancelled,
            Some(Closure::Expired { .. }) => return OrderStatus::Expired,
            None => {}
        }
        if self.payment.is_none() {
            return OrderStatus::AwaitingPayment;
        }
        let shipped: u64 = self.lines.iter().map(|l| l.shipped).sum();
        let ordered: u64 = self.lines.iter().map(|l| l.quantity).sum();
        if shipped == 0 {
            OrderStatus::Paid
        } else if shipped < ordered {
            OrderStatus::PartiallyShipped
        } else if self.shipments.iter().all(|s| s.delivered_at.is_some()) {
            OrderStatus::Delivered
        } else {
            OrderStatus::Shipped
        }
    }

    /// Where its returns stand.
    pub fn return_state(&self) -> ReturnState {
        if self.returns.is_empty() {
            ReturnState::None
        } else if self.returns.iter().any(|r| r.received_at.is_none()) {
            ReturnState::Requested
        } else {
            ReturnState::Received
        }
    }

    /// Where its refunds stand.
    pub fn refund_state(&self) -> RefundState {
        if self.refunded.is_zero() {
            RefundState::None
        } else if self.refunded == self.paid() {
            RefundState::Full
        } else {
            RefundState::Partial
        }
    }

    /// Money received.
    pub fn paid(&self) -> Decimal {
        self.payment.as_ref().map_or(Decimal::ZERO, |p| p.amount)
    }

    /// Money still to be paid; zero once paid or closed.
    pub fn amount_due(&self) -> Decimal {
        if self.closure.is_some() || self.payment.is_some() { Decimal::ZERO } else { self.total }
    }

    /// Money paid and not yet refunded.
    pub fn refundable(&self) -> Decimal {
        self.paid() - self.refunded
    }

    /// Money refunds tied to return `return_id` paid back on the line of `sku`.
    pub fn refunded_for_return(&self, return_id: &ReturnId, sku: &Sku) -> Decimal {
        self.refunds
            .iter()
            .filter(|r| r.return_id.as_ref() == Some(return_id))
            .flat_map(|r| &r.allocation)
            .filter(|share| matches!(&share.target, RefundTarget::Line(s) if s == sku))
            .map(|share| share.amount)
            .sum()
    }

    /// The line of `sku`.
    pub fn line(&self, sku: &Sku) -> Option<&OrderLine> {
        self.lines.iter().find(|l| &l.sku == sku)
    }

    /// Units of each line still held in stock for this order: unshipped units of an open order.
    pub fn held(&self) -> impl Iterator<Item = (&Sku, u64)> {
        let open = self.closure.is_none();
        self.lines.iter().filter(move |_| open).map(|l| (&l.sku, l.quantity - l.shipped))
    }

    /// What an event that changes only its order does to it, the stream version aside: the one
    /// definition, whichever store keeps the order and however ([`Orders::change_by`]), made
    /// of its area's part (`change_order` in [`crate::domain::fulfilment`] and
    /// [`crate::domain::after_sales`]). Panics for any other event, and where
    /// the order does not fit the event (a broken invariant, as in [`State::apply`]).
    pub fn apply_change(&mut self, event: &Event) {
        match event {
            Event::ShipmentDispatched { .. } | Event::ShipmentDelivered { .. } => {
                crate::domain::fulfilment::change_order(self, event);
            }
            Event::ReturnRequested { .. } | Event::ReturnReceived { .. } | Event::RefundIssued { .. } => {
                crate::domain::after_sales::change_order(self, event);
            }
            other => unreachable!("{} changes more than its order", other.kind()),
        }
    }

    /// Counts one more event in the order's stream and returns its version now.
    pub fn count_event(&mut self) -> u64 {
        let Some(version) = self.stream_version.checked_add(1) else {
            panic!("order {} has more events than a u64 counts", self.id)
        };
        self.stream_version = version;
        version
    }

    pub(super) fn line_mut(&mut self, sku: &Sku) -> &mut OrderLine {
        let Some(line) = self.lines.iter_mut().find(|l| &l.sku == sku) else {
            panic!("event names SKU {sku} that order {} does not have", self.id);
        };
        line
    }
}

/// A moment at which something expires unless it happened first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Deadline {
    /// A checkout hold's time to live.
    Reservation(ReservationId),
    /// An order's payment time limit.
    Payment(OrderId),
}

/// A shop's own settings for the rules that have a default.
///
/// The policy shapes decisions only: every deadline it produces is recorded in the events,
/// so replaying a log under another policy rebuilds the same entities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// How long an order may stay unpaid before it expires (1 ms to 7 days).
    pub payment_ttl_ms: u64,
    /// Time to live of a checkout hold that does not name one (1 ms to 24 hours).
    pub reservation_ttl_ms_default: u64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            payment_ttl_ms: crate::domain::limits::PAYMENT_TTL_MS_DEFAULT,
            reservation_ttl_ms_default: crate::domain::limits::RESERVATION_TTL_MS_DEFAULT,
        }
    }
}

impl Policy {
    /// Whether both durations are within their bounds.
    pub fn is_valid(&self) -> bool {
        (1..=crate::domain::limits::PAYMENT_TTL_MS_MAX).contains(&self.payment_ttl_ms)
            && (1..=crate::domain::limits::RESERVATION_TTL_MS_MAX).contains(&self.reservation_ttl_ms_default)
    }
}

/// Events whose orders a fold reads ahead at a time ([`State::prefetch`]). A few more than
/// the memory fetches a core keeps in flight; more gains little, and the orders read must
/// still be cached when their events are applied.
pub const PREFETCH_EVENTS: usize = 16;

/// What each open order not yet shipped in full keeps back, per SKU ([`Order::held`]):
/// all that a stock-only fold ([`State::apply_stock`]) keeps of the orders.
pub type Holds = IdMap<OrderId, Vec<(Sku, u64)>>;

/// The state of one shop, its orders kept in `O` ([`Orders`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State<O> {
    /// A setting, not a fact: never part of a snapshot or a state hash. Whoever restores a
    /// state sets the policy in force.
    #[serde(skip)]
    pub(super) policy: Policy,
    /// Looked up once or more per line of every command and event: hashed, not ordered.
    #[serde(serialize_with = "crate::domain::idmap::sorted_map")]
    pub(super) products: IdMap<Sku, Product>,
    #[serde(serialize_with = "crate::domain::idmap::sorted_map")]
    pub(super) reservations: IdMap<ReservationId, Reservation>,
    /// Every order: the store decides how each is kept, and how the orders serialize.
    pub(super) orders: O,
    pub(super) deadlines: BTreeSet<(Timestamp, Deadline)>,
}

impl<O: Orders + Default> State<O> {
    /// An empty shop with the default policy.
    pub fn new() -> State<O> {
        State::default()
    }

    /// An empty shop with `policy`, or `None` when the policy is out of bounds.
    pub fn with_policy(policy: Policy) -> Option<State<O>> {
        policy.is_valid().then(|| State { policy, ..State::default() })
    }
}

impl<O: Orders> State<O> {
    /// Puts `policy` in force. Precondition: it is within bounds ([`Policy::is_valid`]).
    pub(crate) fn set_policy(&mut self, policy: Policy) {
        assert!(policy.is_valid(), "policy out of bounds: {policy:?}");
        self.policy = policy;
    }

    /// The shop's policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// A product by SKU.
    pub fn product(&self, sku: &Sku) -> Option<&Product> {
        self.products.get(sku)
    }

    /// Every product, by SKU (sorted on each call: for reports and checks, not for deciding).
    pub fn products(&self) -> impl Iterator<Item = &Product> {
        let mut products: Vec<&Product> = self.products.values().collect();
        products.sort_unstable_by(|a, b| a.sku.cmp(&b.sku));
        products.into_iter()
    }

    /// A checkout hold by id.
    pub fn reservation(&self, id: &ReservationId) -> Option<&Reservation> {
        self.reservations.get(id)
    }

    /// An order by id, wherever its store keeps it: borrowed when it is held as a value,
    /// else a copy. Never panics: an order the store could not read back is an error.
    pub fn order(&self, id: &OrderId) -> Result<Option<Cow<'_, Order>>, Unreadable> {
        self.orders.get(id)
    }

    /// Whether an order has this id, wherever it is kept.
    pub fn has_order(&self, id: &OrderId) -> bool {
        self.orders.contains(id)
    }

    /// Every order, in no particular order; an order that could not be read back is an item
    /// of its own.
    pub fn orders(&self) -> impl Iterator<Item = Result<Cow<'_, Order>, Unreadable>> {
        self.orders.iter()
    }

    /// Orders in all.
    pub fn orders_len(&self) -> usize {
        self.orders.len()
    }

    /// Where the orders are kept, for the layer that keeps them.
    pub fn order_store(&self) -> &O {
        &self.orders
    }

    /// Where the orders are kept, for the layer that keeps them to change how (never which
    /// orders, or what they hold: only `apply` changes those).
    pub(crate) fn order_store_mut(&mut self) -> &mut O {
        &mut self.orders
    }

    /// The orders that deciding `command` at `now` may read or change: the order it names,
    /// or for [`Command::ExpireDue`] the unpaid orders due. A shell that keeps orders out of
    /// memory brings these back before deciding, so that deciding and applying do no IO.
    pub fn orders_touched_by(&self, now: Timestamp, command: &Command) -> Vec<OrderId> {
        if let Command::ExpireDue = command {
            return self
                .due(now, EXPIRIES_PER_TICK_MAX)
                .filter_map(|(_, deadline)| match deadline {
                    Deadline::Payment(order_id) => Some(order_id.clone()),
                    Deadline::Reservation(_) => None,
                })
                .collect();
        }
        command.order_id().into_iter().cloned().collect()
    }

    /// Deadlines at or before `now`, earliest first, at most `limit`.
    pub fn due(&self, now: Timestamp, limit: usize) -> impl Iterator<Item = &(Timestamp, Deadline)> {
        self.deadlines.iter().take_while(move |(at, _)| *at <= now).take(limit)
    }

    /// Reads the orders `events` are about, and the parts of the events held apart from
    /// them (the lines of a placed order or a parcel, a parcel's carrier and tracking
    /// number), without changing anything, so that applying the events next finds those in
    /// the cache. A fold over a long log waits on memory more than it computes: each event
    /// reaches an order that is rarely cached (a hash table's slot, then the order's value
    /// or encoded bytes), and events held in memory a while are scattered over it too.
    /// Reading what the next [`PREFETCH_EVENTS`] reach first, independently of each other,
    /// lets those fetches overlap. Folding calls it on each run of that many events, then
    /// applies them.
    pub fn prefetch<'e>(&self, events: impl IntoIterator<Item = &'e Event>) {
        let mut peeked = 0u8;
        for event in events.into_iter().take(PREFETCH_EVENTS) {
            if let Subject::Order(order_id) = event.subject() {
                // A byte of what was read, so that the reads are not left out as unused.
                peeked = peeked.wrapping_add(self.orders.prefetch(order_id));
            }
            let first = |text: &str| text.as_bytes().first().copied().unwrap_or(0);
            let parts = match event {
                Event::OrderPlaced { lines, .. } => lines.first().map_or(0, |line| first(line.sku.as_str())),
                Event::ShipmentDispatched { carrier, tracking_number, lines, .. } => {
                    first(carrier) ^ first(tracking_number) ^ lines.first().map_or(0, |line| first(line.sku.as_str()))
                }
                _ => 0,
            };
            peeked = peeked.wrapping_add(parts);
        }
        std::hint::black_box(peeked);
    }

    /// Applies `events` in order, as [`State::apply`] one by one does, reading ahead
    /// ([`State::prefetch`]).
    pub fn apply_all<'e>(&mut self, events: impl IntoIterator<Item = &'e Event>) {
        let mut events = events.into_iter();
        let mut run: Vec<&Event> = Vec::with_capacity(PREFETCH_EVENTS);
        loop {
            run.clear();
            run.extend(events.by_ref().take(PREFETCH_EVENTS));
            if run.is_empty() {
                return;
            }
            self.prefetch(run.iter().copied());
            for event in &run {
                self.apply(event);
            }
        }
    }

    /// Applies one event (see the module documentation for what it assumes) and returns,
    /// for an event about an order, the version of the order's stream it brought the order
    /// to (its events so far), so that whoever records or checks the stream never reads the
    /// order back, which for an order kept encoded would decode it.
    pub fn apply(&mut self, event: &Event) -> Option<u64> {
        let version = self.fold(event);
        if cfg!(debug_assertions) {
            self.check_touched(event);
        }
        version
    }

    /// [`State::apply`] without its checks in debug builds: what applying does, and all it
    /// does, for [`State::try_apply`] too.
    pub(super) fn fold(&mut self, event: &Event) -> Option<u64> {
        let version = match event {
            Event::ProductListed { .. }
            | Event::PriceChanged { .. }
            | Event::ProductDelisted { .. }
            | Event::ProductRelisted { .. } => {
                crate::domain::catalog::apply(self, event);
                None
            }
            Event::StockReceived { .. } | Event::StockCounted { .. } => {
                crate::domain::stock::apply(self, event);
                None
            }
            Event::StockReserved { .. } | Event::ReservationReleased { .. } | Event::ReservationExpired { .. } => {
                crate::domain::holds::apply(self, event);
                None
            }
            Event::OrderPlaced { .. }
            | Event::OrderPaid { .. }
            | Event::OrderCancelled { .. }
            | Event::OrderExpired { .. } => Some(crate::domain::sales::apply(self, event)),
            Event::ShipmentDispatched { .. } | Event::ShipmentDelivered { .. } => {
                Some(crate::domain::fulfilment::apply(self, event))
            }
            Event::ReturnRequested { .. } | Event::ReturnReceived { .. } | Event::RefundIssued { .. } => {
                Some(crate::domain::after_sales::apply(self, event))
            }
        };
        debug_assert_eq!(version.is_some(), matches!(event.subject(), Subject::Order(_)), "a version for an order");
        version
    }

    pub(super) fn product_mut(&mut self, sku: &Sku) -> &mut Product {
        let Some(product) = self.products.get_mut(sku) else {
            panic!("event names unknown SKU {sku}");
        };
        product
    }

    /// Applies `change` to the order `order_id`, counts the event in the order's stream
    /// version, and returns what `change` returned and the version after it.
    pub(super) fn change_order<R>(&mut self, order_id: &OrderId, change: impl FnOnce(&mut Order) -> R) -> (R, u64) {
        let changed = self.orders.change(order_id, |order| {
            let changed = change(order);
            (changed, order.count_event())
        });
        let Some(changed) = changed else { panic!("event names unknown order {order_id}") };
        changed
    }

    /// Applies an event that changes only its order ([`Order::apply_change`]) and returns
    /// the order's stream version after it. The store may keep the event beside an order it
    /// keeps encoded rather than decode it ([`Orders::change_by`]): on a promotion day an
    /// order's later events (shipping hours to days after payment, delivery after that, a
    /// return after delivery) come when it has long been encoded.
    pub(super) fn change_order_by(&mut self, order_id: &OrderId, event: &Event) -> u64 {
        let Some(version) = self.orders.change_by(order_id, event) else {
            panic!("event names unknown order {order_id}")
        };
        version
    }

    /// Ends an active hold: its units return to sale. Returns the SKUs it held; the caller
    /// resolves their shortfalls once the event's whole effect is applied.
    pub(super) fn end_reservation(&mut self, reservation_id: &ReservationId, status: ReservationStatus) -> Vec<Sku> {
        assert_ne!(status, ReservationStatus::Active);
        let Some(reservation) = self.reservations.get_mut(reservation_id) else {
            panic!("event names unknown reservation {reservation_id}");
        };
        assert_eq!(reservation.status, ReservationStatus::Active, "reservation {reservation_id} ended twice");
        reservation.status = status;
        let due = (reservation.expires_at, Deadline::Reservation(reservation_id.clone()));
        let lines = reservation.lines.clone();
        assert!(self.deadlines.remove(&due));
        for line in &lines {
            let stock = &mut self.product_mut(&line.sku).stock;
            stock.reserved = sub(stock.reserved, line.quantity);
        }
        lines.into_iter().map(|line| line.sku).collect()
    }

    /// Closes an open order: its unshipped units return to sale. Returns the order's stream
    /// version after it.
    pub(super) fn close_order(&mut self, order_id: &OrderId, closure: Closure) -> u64 {
        let ((held, unpaid_due), version) = self.change_order(order_id, |order| {
            assert!(order.closure.is_none(), "order {order_id} closed twice");
            if matches!(closure, Closure::Expired { .. }) {
                assert!(order.payment.is_none(), "paid order {order_id} expired");
            }
            let held: Vec<(Sku, u64)> = order.held().map(|(sku, q)| (sku.clone(), q)).collect();
            let unpaid_due = order.payment.is_none().then_some(order.payment_due_by);
            order.closure = Some(closure);
            (held, unpaid_due)
        });
        if let Some(due_by) = unpaid_due {
            assert!(self.deadlines.remove(&(due_by, Deadline::Payment(order_id.clone()))));
        }
        self.stock_released(&held);
        version
    }

    // The stock effects of order events, shared by `apply` and `apply_stock`, so the shop
    // view's stock cannot drift from the writer's.

    /// An order placed: its hold (if any) consumed and its lines reserved.
    pub(super) fn stock_placed(&mut self, reservation_id: Option<&ReservationId>, lines: &[PricedLine]) {
        // The hold's units and the order's are one net change: a recorded shortfall is
        // only resolved once both are applied.
        let released = match reservation_id {
            Some(reservation_id) => self.end_reservation(reservation_id, ReservationStatus::Consumed),
            None => Vec::new(),
        };
        for line in lines {
            let stock = &mut self.product_mut(&line.sku).stock;
            stock.reserved = add(stock.reserved, line.quantity);
        }
        for sku in released.iter().chain(lines.iter().map(|l| &l.sku)) {
            resolve_shortfall(&mut self.product_mut(sku).stock);
        }
    }

    /// An order closed: what it held returns to sale.
    pub(super) fn stock_released(&mut self, held: &[(Sku, u64)]) {
        for (sku, quantity) in held {
            let stock = &mut self.product_mut(sku).stock;
            stock.reserved = sub(stock.reserved, *quantity);
            resolve_shortfall(stock);
        }
    }

    /// A parcel left: its units leave the shelf and the reservation, at their recorded cost.
    pub(super) fn stock_shipped(&mut self, lines: &[CostedLine]) {
        for line in lines {
            let stock = &mut self.product_mut(&line.sku).stock;
            stock.on_hand = sub(stock.on_hand, line.quantity);
            stock.reserved = sub(stock.reserved, line.quantity);
            stock.shipped = add(stock.shipped, line.quantity);
            stock.value -= line.cost;
            stock.value_shipped += line.cost;
            resolve_shortfall(stock);
        }
    }

    /// A return inspected: resellable units back on the shelf, damaged ones written off.
    pub(super) fn stock_returned(&mut self, lines: &[InspectedLine]) {
        for line in lines {
            let stock = &mut self.product_mut(&line.sku).stock;
            match line.condition {
                Condition::Resellable => {
                    stock.on_hand = add(stock.on_hand, line.quantity);
                    stock.restocked = add(stock.restocked, line.quantity);
                    stock.value += line.cost;
                    stock.value_restocked += line.cost;
                    resolve_shortfall(stock);
                }
                Condition::Damaged => {
                    stock.written_off = add(stock.written_off, line.quantity);
                    stock.value_written_off += line.cost;
                }
            }
        }
    }

    /// Applies the stock effects of `event` to a state that keeps no orders, with `holds`
    /// standing in for them: what each open order not yet shipped in full keeps back, as
    /// [`Order::held`] gives it. Products and checkout holds end as [`State::apply`] leaves
    /// them; events that change only an order (paid, delivered, return requested, refunded)
    /// change nothing here. This is the shop view's fold: stock levels without a second
    /// copy of every order.
    pub fn apply_stock(&mut self, event: &Event, holds: &mut Holds) {
        assert!(self.orders.is_empty(), "a stock-only fold keeps no orders");
        match event {
            Event::OrderPlaced { order_id, lines, reservation_id, .. } => {
                self.stock_placed(reservation_id.as_ref(), lines);
                self.check_stock_of(lines.iter().map(|line| &line.sku));
                let held = lines.iter().map(|line| (line.sku.clone(), line.quantity)).collect();
                assert!(holds.insert(order_id.clone(), held).is_none(), "order {order_id} placed twice");
            }
            Event::OrderCancelled { order_id, .. } | Event::OrderExpired { order_id, .. } => {
                let Some(held) = holds.remove(order_id) else {
                    panic!("closing order {order_id}, which holds nothing")
                };
                crate::domain::idmap::shrink_if_sparse(holds);
                self.stock_released(&held);
                self.check_stock_of(held.iter().map(|(sku, _)| sku));
            }
            Event::ShipmentDispatched { order_id, lines, .. } => {
                self.stock_shipped(lines);
                self.check_stock_of(lines.iter().map(|line| &line.sku));
                let Some(held) = holds.get_mut(order_id) else {
                    panic!("shipping order {order_id}, which holds nothing")
                };
                for line in lines {
                    let Some((_, quantity)) = held.iter_mut().find(|(sku, _)| sku == &line.sku) else {
                        panic!("shipping SKU {} that order {order_id} does not hold", line.sku);
                    };
                    *quantity = sub(*quantity, line.quantity);
                }
                if held.iter().all(|(_, quantity)| *quantity == 0) {
                    holds.remove(order_id);
                    crate::domain::idmap::shrink_if_sparse(holds);
                }
            }
            Event::ReturnReceived { lines, .. } => {
                self.stock_returned(lines);
                self.check_stock_of(lines.iter().map(|line| &line.sku));
            }
            Event::OrderPaid { .. }
            | Event::ShipmentDelivered { .. }
            | Event::ReturnRequested { .. }
            | Event::RefundIssued { .. } => {}
            Event::ProductListed { .. }
            | Event::PriceChanged { .. }
            | Event::ProductDelisted { .. }
            | Event::ProductRelisted { .. }
            | Event::StockReceived { .. }
            | Event::StockCounted { .. }
            | Event::StockReserved { .. }
            | Event::ReservationReleased { .. }
            | Event::ReservationExpired { .. } => {
                self.apply(event);
            }
        }
    }

    /// In debug builds and tests, checks the stock invariants of `skus`.
    fn check_stock_of<'a>(&self, skus: impl Iterator<Item = &'a Sku>) {
        if cfg!(debug_assertions) {
            for sku in skus {
                if let Some(product) = self.products.get(sku) {
                    check_stock(product);
                }
            }
        }
    }

    /// Checks the invariants of a stock-only fold ([`State::apply_stock`]): every product's,
    /// and reserved = what active checkout holds and `holds` keep back.
    pub fn check_stock_invariants(&self, holds: &Holds) {
        assert!(self.orders.is_empty(), "a stock-only fold keeps no orders");
        for product in self.products.values() {
            check_stock(product);
        }
        for (order_id, lines) in holds {
            assert!(lines.iter().any(|(_, quantity)| *quantity > 0), "order {order_id} is held but holds nothing");
        }
        self.check_reserved(holds.values().flatten().map(|(sku, quantity)| (sku, *quantity)));
    }

    /// Checks that every product's reserved units are what active checkout holds keep back
    /// plus `orders_hold`, the units open orders keep back.
    fn check_reserved<'a>(&'a self, orders_hold: impl Iterator<Item = (&'a Sku, u64)>) {
        let mut held: BTreeMap<&Sku, u64> = BTreeMap::new();
        for reservation in self.reservations.values().filter(|r| r.status == ReservationStatus::Active) {
            for line in &reservation.lines {
                *held.entry(&line.sku).or_default() += line.quantity;
            }
        }
        for (sku, quantity) in orders_hold {
            *held.entry(sku).or_default() += quantity;
        }
        for product in self.products.values() {
            let expected = held.get(&product.sku).copied().unwrap_or(0);
            assert_eq!(
                product.stock.reserved, expected,
                "reserved units of {} are not what holds keep back",
                product.sku
            );
        }
    }

    /// Checks the invariants of what `event` touched.
    fn check_touched(&self, event: &Event) {
        let mut skus: Vec<&Sku> = Vec::new();
        let mut order_id = None;
        match event.subject() {
            Subject::Sku(sku) => skus.push(sku),
            Subject::Reservation(reservation_id) => {
                if let Some(r) = self.reservations.get(reservation_id) {
                    skus.extend(r.lines.iter().map(|l| &l.sku));
                }
            }
            Subject::Order(id) => order_id = Some(id),
        }
        let order = order_id.map(|id| match self.orders.get(id) {
            Ok(order) => order,
            Err(error) => panic!("an order just changed is in memory: {error}"),
        });
        if let Some(order) = order.flatten() {
            check_order(&order);
            self.check_stock_of(order.lines.iter().map(|l| &l.sku));
        }
        self.check_stock_of(skus.into_iter());
    }

    /// Checks every invariant of the whole shop; panics naming the first broken one.
    pub fn check_invariants(&self) {
        for product in self.products.values() {
            check_stock(product);
        }
        for reservation in self.reservations.values().filter(|r| r.status == ReservationStatus::Active) {
            let due = (reservation.expires_at, Deadline::Reservation(reservation.id.clone()));
            assert!(self.deadlines.contains(&due), "active reservation {} has no deadline", reservation.id);
        }
        // One pass: orders kept encoded are decoded once each.
        let (mut held, mut awaiting) = (Vec::new(), 0);
        for order in self.orders.iter() {
            let order = order.unwrap_or_else(|error| panic!("checking every order: {error}"));
            check_order(&order);
            let unpaid = order.payment.is_none() && order.closure.is_none();
            let due = (order.payment_due_by, Deadline::Payment(order.id.clone()));
            assert_eq!(self.deadlines.contains(&due), unpaid, "payment deadline of order {}", order.id);
            awaiting += usize::from(unpaid);
            held.extend(order.held().map(|(sku, quantity)| (sku.clone(), quantity)));
        }
        self.check_reserved(held.iter().map(|(sku, quantity)| (sku, *quantity)));
        let active = self.reservations.values().filter(|r| r.status == ReservationStatus::Active).count();
        assert_eq!(self.deadlines.len(), active + awaiting, "stale deadlines");
    }
}

pub(super) fn order_line(line: &PricedLine) -> OrderLine {
    OrderLine {
        sku: line.sku.clone(),
        quantity: line.quantity,
        unit_price: line.unit_price,
        discounts: line.discounts.clone(),
        net_amount: line.net_amount,
        shipped: 0,
        shipped_cost: Decimal::ZERO,
        return_requested: 0,
        returned: 0,
        returned_cost: Decimal::ZERO,
        refunded: Decimal::ZERO,
    }
}

/// A recorded shortfall ends once the shelf covers every reserved unit again.
pub(super) fn resolve_shortfall(stock: &mut Stock) {
    if stock.reserved <= stock.on_hand {
        stock.shortfall_recorded = false;
    }
}

pub(super) fn add(a: u64, b: u64) -> u64 {
    a.checked_add(b).unwrap_or_else(|| panic!("quantity overflow: {a} + {b}"))
}

pub(super) fn sub(a: u64, b: u64) -> u64 {
    a.checked_sub(b).unwrap_or_else(|| panic!("quantity underflow: {a} - {b}"))
}

fn check_stock(product: &Product) {
    if let Err(fault) = stock_fault(product) {
        panic!("{fault}");
    }
}

fn check_order(order: &Order) {
    if let Err(fault) = order_fault(order) {
        panic!("{fault}");
    }
}

/// Returns `Err(message)` from the enclosing function unless `condition` holds.
macro_rules! ensure {
    ($condition:expr, $($message:tt)+) => {
        if !$condition {
            return Err(format!($($message)+));
        }
    };
}

/// The first stock invariant (see the module documentation) `product` breaks, if any; the
/// arithmetic is checked, so any stock, however it came about, gets an answer.
pub(super) fn stock_fault(product: &Product) -> Result<(), String> {
    let sku = &product.sku;
    let s = &product.stock;
    ensure!(
        s.reserved <= s.on_hand || s.shortfall_recorded,
        "{sku}: reserved {} exceeds on hand {} with no recorded shortfall",
        s.reserved,
        s.on_hand
    );
    ensure!(s.on_hand <= crate::domain::limits::ON_HAND_MAX, "{sku}: on hand over the limit");
    let units = i128::from(s.received) + i128::from(s.adjusted) + i128::from(s.restocked) - i128::from(s.shipped);
    ensure!(units == i128::from(s.on_hand), "{sku}: stock is not conserved");
    let value = s
        .value_received
        .checked_add(s.value_adjusted)
        .and_then(|v| v.checked_add(s.value_restocked))
        .and_then(|v| v.checked_sub(s.value_shipped));
    ensure!(value == Some(s.value), "{sku}: inventory value is not conserved");
    ensure!(!s.value.is_sign_negative() || s.value.is_zero(), "{sku}: negative inventory value {}", s.value);
    ensure!(s.on_hand > 0 || s.value.is_zero(), "{sku}: value {} with nothing on hand", s.value);
    ensure!(product.price > Decimal::ZERO, "{sku}: price {} is not above zero", product.price);
    Ok(())
}

/// The first order invariant (see the module documentation) `order` breaks, if any. Its
/// amounts are those of recordable events ([`Event::amount_out_of_form`]) and its line
/// quantities at most [`ORDER_LINE_UNITS_MAX`](crate::domain::limits::ORDER_LINE_UNITS_MAX),
/// so its sums cannot overflow; the one product that could is checked.
pub(super) fn order_fault(order: &Order) -> Result<(), String> {
    let id = &order.id;
    let (mut net_total, mut line_refunds) = (Decimal::ZERO, Decimal::ZERO);
    for line in &order.lines {
        ensure!(line.quantity > 0, "{id}/{}: a line of no units", line.sku);
        ensure!(line.shipped <= line.quantity, "{id}/{}: shipped more than ordered", line.sku);
        ensure!(line.return_requested <= line.shipped, "{id}/{}: return requested beyond shipped", line.sku);
        ensure!(line.returned <= line.return_requested, "{id}/{}: returned more than requested", line.sku);
        ensure!(line.returned_cost <= line.shipped_cost, "{id}/{}: returned cost beyond shipped", line.sku);
        ensure!(line.refunded <= line.net_amount, "{id}/{}: refunded beyond the line", line.sku);
        let discounts: Decimal = line.discounts.iter().map(|d| d.amount).sum();
        let gross = line.unit_price.checked_mul(Decimal::from(line.quantity));
        ensure!(
            gross.map(|g| g - discounts) == Some(line.net_amount),
            "{id}/{}: net amount is not price times units less discounts",
            line.sku
        );
        net_total += line.net_amount;
        line_refunds += line.refunded;
    }
    ensure!(net_total + order.shipping_fee == order.total, "{id}: total is not the sum of its lines");
    ensure!(order.shipping_refunded <= order.shipping_fee, "{id}: shipping refunded beyond the fee");
    ensure!(line_refunds + order.shipping_refunded == order.refunded, "{id}: refund allocation");
    ensure!(order.refunded <= order.paid(), "{id}: refunded {} exceeds paid {}", order.refunded, order.paid());
    let refunds: Decimal = order.refunds.iter().map(|r| r.amount).sum();
    ensure!(refunds == order.refunded, "{id}: refunds do not add up to what was refunded");
    for request in &order.returns {
        for returned in &request.lines {
            let Some(line) = order.line(&returned.sku) else { return Err(format!("{id}: return of a SKU it lacks")) };
            ensure!(returned.quantity <= line.quantity, "{id}: return {} of more than ordered", request.id);
            ensure!(!line.net_amount.is_sign_negative(), "{id}/{}: negative net amount", line.sku);
            let value = crate::domain::money::share(line.net_amount, returned.quantity, line.quantity);
            let refunded = order.refunded_for_return(&request.id, &returned.sku);
            ensure!(refunded <= value, "{id}: return {} refunded {refunded} beyond its value {value}", request.id);
        }
    }
    if order.payment.is_none() {
        ensure!(order.shipments.is_empty(), "{id}: shipped unpaid");
    }
    if let Some(payment) = &order.payment {
        ensure!(payment.amount == order.total, "{id}: paid other than the total");
    }
    Ok(())
}

/// Pushes `item`, growing `items` by one place at a time: an order holds one or two
/// shipments, returns and refunds, and a first `push` would make room for four (about 480
/// bytes of shipments per order shipped once, in the state and again in the shop view).
pub(super) fn push_exact<T>(items: &mut Vec<T>, item: T) {
    items.reserve_exact(1);
    items.push(item);
}
