//! emporium-snapshots: the snapshot store.
//!
//! A snapshot is a versioned, checksummed image of some state and the log position it
//! reflects, so that start-up replays only the tail of a log. This crate knows nothing
//! about shops: it stores bytes that its callers encode.
//!
//! The store arrives with the read side; this crate exists now so that the workspace
//! and its one-way dependencies (`emporium` uses this crate, never the reverse) are fixed
//! from the start.

#![deny(missing_docs)]
