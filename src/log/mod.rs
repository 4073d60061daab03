//! The log: how a shop's events are recorded and kept.
//!
//! - [`record`]: the record format (envelopes, framing, checksums, the hash chain, schema
//!   versions and upcasters);
//! - [`store`]: the [`EventStore`](store::EventStore) trait, its guarantees and its backends (sled, memory);
//! - [`transfer`]: export of shop logs as JSON Lines and import into an empty store;
//! - [`layout`]: what a data directory holds.

pub mod layout;
pub mod record;
pub mod store;
pub mod transfer;
