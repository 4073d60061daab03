//! Memory: how a shop's many orders are kept, in memory or out of it.
//!
//! A promotion day places millions of orders; the domain only asks for them by id. This layer
//! keeps the newest as values and the rest encoded ([`pack`], [`tiered`]), moves encoded ones
//! to an unnamed scratch file ([`spill`]) when asked, and packs the maps of millions into fixed
//! chunks ([`packed`]). None of it is a fact: it changes memory, never what a state holds.
//!
//! [`orders`] is where they meet the domain: [`TieredOrders`] implements the domain's
//! [`Orders`](crate::domain::orders::Orders), and [`State`] is a shop's state with its orders
//! kept there, with the settings this layer adds (tiering, spilling, loading back).

pub mod orders;
pub mod pack;
pub mod packed;
pub mod spill;
pub mod tiered;

pub use orders::{State, TieredOrders};
