//! emporium: an event-sourced order and inventory engine for online shops.
//!
//! The heart is a pure decision core, [`domain`]:
//!
//! - [`decide()`] checks a [`Command`] against a shop's state at a given time and either
//!   rejects it with a typed [`Rejection`] (nothing changes) or turns it into [`Event`]s;
//! - [`State::apply`](domain::state::State::apply) folds one event into the state; replaying a
//!   shop's events in order rebuilds its state exactly, without re-running a rule or reading
//!   a clock.
//!
//! Nothing in the core does IO. The time of a command is an input ([`Timestamp`]), and every
//! time, price, cost and refund allocation that was decided is recorded in the events.
//! Money is [`rust_decimal::Decimal`] in [`domain::money::CURRENCY`] with two decimal places;
//! quantities are `u64` with the bounds in [`domain::limits`].
//!
//! The layers, each a folder, each using only those before it:
//!
//! 1. [`domain`]: ids, money, limits, commands, events, rejections, the state and the rules;
//! 2. [`memory`]: how millions of orders are kept (encoded, tiered, spilled); [`State`] is the
//!    domain's state with its orders kept there;
//! 3. [`log`]: the record format, the event stores (sled, memory), export and import;
//! 4. [`views`]: the read side (stock, ledger, analytics, customers, order histories);
//! 5. [`engine`]: shop writers, group commit, idempotency, recovery, snapshots, the follower;
//! 6. [`service`]: the HTTP/JSON API;
//! 7. [`rehearsal`]: the scripted demo, generated days and the promotion-day load generator;
//! 8. [`cli`]: what the `emporium` binary does.

#![deny(missing_docs)]

pub mod cli;
pub mod domain;
pub mod engine;
pub mod log;
pub mod memory;
pub mod rehearsal;
pub mod service;
pub mod views;

/// The inline string of identifiers and envelope texts, so embedders can name it without
/// depending on `compact_str` themselves.
pub use compact_str::CompactString;
pub use domain::command::{AdjustmentReason, Command, Condition, Inspection, Line, Party};
pub use domain::decide::decide;
pub use domain::event::Event;
pub use domain::ids::{
    CommandId, CustomerId, OrderId, PaymentId, RefundId, ReservationId, ReturnId, ShipmentId, ShopId, Sku, Timestamp,
};
pub use domain::orders::{Orders, Unreadable};
pub use domain::rejection::{Field, Rejection, Shortage};
pub use domain::state::{Order, OrderStatus, Policy, Product, RefundState, ReturnState, Stock};
pub use memory::State;
