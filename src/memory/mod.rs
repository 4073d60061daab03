//! Memory: how a shop's many orders are kept, in memory or out of it.
//!
//! A promotion day places millions of orders; the domain only asks for them by id. This layer
//! keeps the newest as values and the rest encoded ([`pack`], [`tiered`]), moves encoded ones
//! to an unnamed scratch file ([`spill`]) when asked, and packs the maps of millions into fixed
//! chunks ([`packed`]). None of it is a fact: it changes memory, never what a state holds.

pub mod pack;
pub mod packed;
pub mod spill;
pub mod tiered;
