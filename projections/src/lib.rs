//! emporium-projections: the projection engine.
//!
//! A projection folds an ordered log of events into a read model (stock levels, order
//! status, a ledger, analytics). This crate knows nothing about shops: it is generic over
//! the event type, and it never appends events and never reads a clock.
//!
//! The engine arrives with the read side; this crate exists now so that the workspace
//! and its one-way dependencies (`emporium` uses this crate, never the reverse) are fixed
//! from the start.

#![deny(missing_docs)]
