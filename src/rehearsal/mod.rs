//! Rehearsal: shop days made up on purpose, to show, test and measure the engine.
//!
//! - [`demo`]: the scripted shop day the binary prints and the tests assert;
//! - [`sim`]: seeded generated shop days for tests and benches;
//! - [`loadgen`]: the `double11` promotion-day load generator, in-process or over HTTP.

pub mod demo;
pub mod loadgen;
pub mod sim;
