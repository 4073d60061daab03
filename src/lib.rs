//! emporium: an event-sourced order and inventory engine for online shops.
//!
//! The heart is a pure decision core:
//!
//! - [`decide()`] checks a [`Command`] against a shop's [`State`] at a given time and either
//!   rejects it with a typed [`Rejection`] (nothing changes) or turns it into [`Event`]s;
//! - [`State::apply`] folds one event into the state; replaying a shop's events in order
//!   rebuilds its state exactly, without re-running a rule or reading a clock.
//!
//! Nothing in the core does IO. The time of a command is an input ([`Timestamp`]), and every
//! time, price, cost and refund allocation that was decided is recorded in the events.
//! Money is [`rust_decimal::Decimal`] in [`money::CURRENCY`](domain::money::CURRENCY) with two
//! decimal places; quantities are `u64` with the bounds in [`limits`](domain::limits).
//!
//! Module map: [`ids`](domain::ids) (identifiers and their syntax), [`money`](domain::money)
//! (checks and exact splitting), [`limits`](domain::limits), [`command`](domain::command),
//! [`event`](domain::event), [`rejection`](domain::rejection), [`state`](domain::state) (state,
//! `apply`, invariants), [`decide`](mod@domain::decide) (the rules), [`demo`](rehearsal::demo)
//! (a scripted shop day).

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
pub use domain::rejection::{Field, Rejection, Shortage};
pub use domain::state::{Order, OrderStatus, Policy, Product, RefundState, ReturnState, State, Stock};
