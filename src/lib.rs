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
//! Money is [`rust_decimal::Decimal`] in [`money::CURRENCY`] with two decimal places;
//! quantities are `u64` with the bounds in [`limits`].
//!
//! Module map: [`ids`] (identifiers and their syntax), [`money`] (checks and exact
//! splitting), [`limits`], [`command`], [`event`], [`rejection`], [`state`] (state, `apply`,
//! invariants), [`decide`](mod@decide) (the rules), [`demo`] (a scripted shop day).

#![deny(missing_docs)]

pub mod command;
pub mod decide;
pub mod demo;
pub mod engine;
pub mod event;
pub mod idmap;
pub mod ids;
pub mod layout;
pub mod limits;
pub mod loadgen;
pub mod log;
pub mod metrics;
pub mod money;
pub mod pack;
pub mod packed;
pub mod process;
pub mod rejection;
pub mod remembered;
pub mod service;
pub mod sim;
pub mod spill;
pub mod state;
pub mod store;
pub mod tiered;
pub mod transfer;
pub mod views;

pub use command::{AdjustmentReason, Command, Condition, Inspection, Line, Party};
/// The inline string of identifiers and envelope texts, so embedders can name it without
/// depending on `compact_str` themselves.
pub use compact_str::CompactString;
pub use decide::decide;
pub use event::Event;
pub use ids::{
    CommandId, CustomerId, OrderId, PaymentId, RefundId, ReservationId, ReturnId, ShipmentId, ShopId, Sku, Timestamp,
};
pub use rejection::{Field, Rejection, Shortage};
pub use state::{Order, OrderStatus, Policy, Product, RefundState, ReturnState, State, Stock};
