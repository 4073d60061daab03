//! The domain: a shop's rules and facts, pure.
//!
//! Nothing here does IO, reads a clock, draws a random number or knows where an order is
//! kept: the time of a command is an input, every decided price, cost and time is recorded in
//! the events, and [`State`](state::State) reaches its orders through the [`Orders`](orders::Orders) trait that the
//! memory layer implements.
//!
//! - [`ids`], [`money`], [`limits`]: identifiers and their syntax, exact amounts, every bound;
//! - [`command`] (what callers ask), [`event`] (the facts), [`rejection`] (typed refusals);
//! - [`state`]: the state of one shop and its invariants; [`fit`]: folding a log that is not
//!   known to come from `decide` (`State::try_apply`, [`fit::Unfit`]);
//! - [`decide`](mod@decide): the rules, `decide(&State, now, &Command) -> Result<Vec<Event>, Rejection>`,
//!   dispatched to one module per area of the shop: [`catalog`], [`stock`], [`holds`],
//!   [`sales`], [`fulfilment`], [`after_sales`], [`time`].

pub mod after_sales;
pub mod catalog;
pub mod command;
pub mod decide;
pub mod event;
pub mod fit;
pub mod fulfilment;
pub mod holds;
pub mod idmap;
pub mod ids;
pub mod limits;
pub mod money;
pub mod orders;
pub mod rejection;
pub mod sales;
pub mod state;
pub mod stock;
pub mod time;

pub use decide::decide;
