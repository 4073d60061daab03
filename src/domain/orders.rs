//! Where a shop's orders live, as the domain sees it: the [`Orders`] trait.
//!
//! A promotion day places millions of orders, and most of them are not touched again for
//! hours. How they are kept (as values, encoded, or out of memory) is not the domain's
//! business: [`State`](crate::domain::state::State) holds its orders in any `Orders` and asks
//! for them by id. The memory layer's tiered store implements it; the rules and the fold
//! are the same whichever store holds the orders.
//!
//! The contract, before the code:
//! - **Reads never panic.** [`Orders::get`] and [`Orders::iter`] reach every order the store
//!   holds, wherever it is kept; an order the store could not read back is an
//!   [`Unreadable`], never a panic and never a missing order.
//! - **Changes are facts already decided.** [`Orders::insert`] and [`Orders::change`] are
//!   called by `apply` only, for events `decide` produced or that `try_apply` found to fit
//!   ([`crate::domain::fit`]); they cannot fail. Changing an
//!   order the store keeps out of reach is a broken precondition (the shell brings back what
//!   a command may touch before deciding it, and a fold replays into memory).
//! - **Equal folds are equal stores.** Two stores that were given the same orders and
//!   changes compare, iterate and read the same, however each keeps them.

use std::borrow::Cow;
use std::fmt;

use crate::domain::event::Event;
use crate::domain::ids::OrderId;
use crate::domain::state::Order;

/// An order the store holds but could not read back (its copy out of memory failed to read
/// or decode). Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    /// The order asked for.
    pub order_id: OrderId,
    /// What went wrong, for the operator.
    pub reason: String,
}

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "order {} could not be read back: {}", self.order_id, self.reason)
    }
}

impl std::error::Error for Unreadable {}

/// Where a shop's orders live. See the module documentation for the contract.
pub trait Orders {
    /// The order `id`: `Ok(None)` when there is none, borrowed or a copy as the store keeps it.
    fn get(&self, id: &OrderId) -> Result<Option<Cow<'_, Order>>, Unreadable>;

    /// Whether an order has this id, wherever it is kept.
    fn contains(&self, id: &OrderId) -> bool;

    /// Orders in all.
    fn len(&self) -> usize;

    /// Whether there are no orders.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a newly placed order; returns whether one with its id was already there.
    fn insert(&mut self, order: Order) -> bool;

    /// Changes the order `id` with `change` and returns what it returned; `None` (and
    /// `change` is not called) when there is no such order.
    fn change<R>(&mut self, id: &OrderId, change: impl FnOnce(&mut Order) -> R) -> Option<R>;

    /// Applies `event`, which changes only its order ([`Order::apply_change`]), counts it in
    /// the order's stream version and returns the version; `None` when there is no such
    /// order. As [`Orders::change`] with `apply_change` then [`Order::count_event`], except
    /// that a store may keep the event beside an encoded order rather than decode it, as long
    /// as every later read sees it applied.
    fn change_by(&mut self, id: &OrderId, event: &Event) -> Option<u64>;

    /// Reads the order `id` where it is kept, changing nothing, so that a change to it soon
    /// after finds it cached; returns a byte of what was read (0 when it is not in memory),
    /// so that the read is not optimised away.
    fn prefetch(&self, id: &OrderId) -> u8;

    /// Every order, in no particular order; an order that could not be read back is an item
    /// of its own, and iteration goes on after it.
    fn iter(&self) -> impl Iterator<Item = Result<Cow<'_, Order>, Unreadable>>;
}
