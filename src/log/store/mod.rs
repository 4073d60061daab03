//! Where shop logs are kept: the [`EventStore`] trait and its backends.
//!
//! Guarantees every backend gives:
//! - **Atomic batches.** [`EventStore::append`] stores all of a batch's events and rejection
//!   records, or none of them.
//! - **Durable on return.** When `append` returns `Ok`, the batch is on stable storage
//!   (for sled: flushed, then every file of the database fsynced).
//! - **One writer per shop.** `append` names the position it expects the log to end at; if the
//!   log ends elsewhere, the append fails with [`StoreError::Conflict`] and writes nothing, so a
//!   second writer can never interleave with the first.
//! - **Failures heal.** A failed append leaves the store refusing appends, naming the
//!   failure, until [`EventStore::heal`] succeeds: it brings the store back from what the
//!   disk holds (for sled: the database opened again and read back), checks that no log ends
//!   before its last acknowledged position, and leaves every log's end where the disk has
//!   it. A batch whose append failed may be found there: it is durable from then on.
//! - **Checked reads.** Every record read is checked against its checksum; [`EventStore::verify`]
//!   also checks the hash chain from the first record.
//!
//! What the trait does not ask for: appending to several streams atomically as anything but
//! one shop log. A backend that only has per-stream atomic appends (EventStoreDB) keeps each
//! shop log as one stream and the per-entity streams as an index.

mod chunks;
mod memory;
mod sled_store;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::ids::{CommandId, ShopId, Timestamp};
use crate::domain::rejection::Rejection;
use crate::log::record::{Corruption, Envelope, Fingerprint, Hash};

pub use memory::MemoryStore;
pub use sled_store::{LOCK_WAIT_MS, SEGMENT_BYTES, SledStore, wait_until_unlocked};

/// A rejected command, remembered so that a retry gets the same answer after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectionRecord {
    /// The command.
    pub command_id: CommandId,
    /// Its fingerprint.
    pub fingerprint: Fingerprint,
    /// Why it was rejected.
    pub rejection: Rejection,
    /// When, by the engine clock.
    pub recorded_at: Timestamp,
}

/// What one group commit writes.
#[derive(Clone, Debug, Default)]
pub struct AppendBatch {
    /// The position the log must end at for this batch to be written.
    pub expected_last: u64,
    /// Events at `expected_last + 1`, `+ 2`, ...
    pub events: Vec<Envelope>,
    /// Rejections of commands in the same batch.
    pub rejections: Vec<RejectionRecord>,
}

/// The result of verifying one shop log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events checked.
    pub events: u64,
    /// The hash of the last record (the head of the chain).
    pub head: Hash,
}

/// Why a store operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended first, or the batch was built on a stale log.
    #[error("shop {shop}: expected the log to end at {expected}, it ends at {actual}")]
    Conflict {
        /// The shop.
        shop: ShopId,
        /// What the batch expected.
        expected: u64,
        /// Where the log ends.
        actual: u64,
    },
    /// Stored bytes fail their checks.
    #[error("shop {shop}: {corruption}")]
    Corrupt {
        /// The shop.
        shop: ShopId,
        /// The first bad record.
        corruption: Corruption,
    },
    /// The storage failed.
    #[error("storage: {0}")]
    Io(String),
}

/// Storage of shop logs. See the module documentation for the guarantees.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Every shop with a log.
    async fn shops(&self) -> Result<Vec<ShopId>, StoreError>;

    /// Creates an empty log for `shop`, durably; does nothing if it exists.
    async fn create_shop(&self, shop: &ShopId) -> Result<(), StoreError>;

    /// Appends a batch atomically and durably, if the log ends at `batch.expected_last`.
    /// Returns the new last position.
    /// The batch stays the caller's: the engine hands its events on to the views once durable.
    async fn append(&self, shop: &ShopId, batch: &AppendBatch) -> Result<u64, StoreError>;

    /// [`EventStore::append`] from a thread that may block (the blocking pool, never a
    /// runtime worker), with the same guarantees. The engine's writer appends this way: one
    /// hand-off to a blocking thread and one back, where an async append whose IO blocks
    /// underneath takes a task and a blocking thread of its own. By default, `append` on
    /// `runtime`.
    fn append_blocking(
        &self,
        runtime: &tokio::runtime::Handle,
        shop: &ShopId,
        batch: &AppendBatch,
    ) -> Result<u64, StoreError> {
        runtime.block_on(self.append(shop, batch))
    }

    /// Up to `limit` events after position `after`, in order.
    async fn read_from(&self, shop: &ShopId, after: u64, limit: usize) -> Result<Vec<Envelope>, StoreError>;

    /// Up to `limit` events of one stream after stream version `after_version`, in order.
    async fn read_stream(
        &self,
        shop: &ShopId,
        stream: &str,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, StoreError>;

    /// The position of the last event; 0 for an empty log.
    async fn last_position(&self, shop: &ShopId) -> Result<u64, StoreError>;

    /// Waits until the log extends past `after` or `timeout` passes; returns the last position.
    async fn wait_for(&self, shop: &ShopId, after: u64, timeout: Duration) -> Result<u64, StoreError>;

    /// Every remembered rejection of the shop.
    async fn rejections(&self, shop: &ShopId) -> Result<Vec<RejectionRecord>, StoreError>;

    /// Forgets the shop's oldest rejection records, keeping at least its newest
    /// `keep_records`, or its newest records of `keep_bytes` encoded bytes, whichever is
    /// fewer (a backend may keep a few more, to forget whole groups). Returns how many it
    /// forgot. Need not be durable: records forgotten and then found again after a crash are
    /// bounded again by whoever reads them. By default nothing is forgotten.
    async fn forget_rejections(
        &self,
        shop: &ShopId,
        keep_records: usize,
        keep_bytes: usize,
    ) -> Result<u64, StoreError> {
        let _ = (shop, keep_records, keep_bytes);
        Ok(0)
    }

    /// Checks every record's checksum and the hash chain from the first record.
    async fn verify(&self, shop: &ShopId) -> Result<VerifyReport, StoreError> {
        self.verify_after(shop, 0, crate::log::record::genesis_hash(shop)).await
    }

    /// Checks checksums throughout, that the record at `after` carries `anchor` as its hash,
    /// and the hash chain from there: how a shop resumed from a snapshot taken at `after`
    /// verifies its log without reading the chain before it.
    async fn verify_after(&self, shop: &ShopId, after: u64, anchor: Hash) -> Result<VerifyReport, StoreError>;

    /// Events after `after`, checked as [`EventStore::verify_after`] checks the log (the
    /// record at `after` carrying `anchor`, the genesis hash when `after` is 0, and the chain
    /// from there): at least `limit` of them when that many follow (a backend may return a
    /// few more, to finish what it read), with the hash of the last one returned (`anchor`
    /// when none follow), which anchors the next page. Recovery reads the log once this way,
    /// instead of verifying it and then reading it.
    async fn read_verified(
        &self,
        shop: &ShopId,
        after: u64,
        anchor: Hash,
        limit: usize,
    ) -> Result<(Vec<Envelope>, Hash), StoreError>;

    /// The last position and the hash of its record (the genesis hash for an empty log).
    async fn head(&self, shop: &ShopId) -> Result<(u64, Hash), StoreError>;

    /// After a failed append: brings the store back from what the disk holds, so that it
    /// takes appends again (see the module documentation). Does nothing when nothing
    /// failed; fails, changing nothing durable, while the cause lasts. By default, nothing
    /// to heal.
    async fn heal(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Removes `shop`'s log if it holds nothing (no event, no rejection): how a shop whose
    /// creation failed halfway is taken back. Returns whether the shop is gone (true also
    /// when it did not exist). By default, removes nothing.
    async fn remove_empty_shop(&self, shop: &ShopId) -> Result<bool, StoreError> {
        let _ = shop;
        Ok(false)
    }
}

/// The events at `positions`, in the order given: how a history whose positions a view
/// keeps ([`crate::views::Histories`]) is read back. A position past the log's end is an
/// error: the positions came from the log.
pub async fn read_positions(
    store: &dyn EventStore,
    shop: &ShopId,
    positions: &[u64],
) -> Result<Vec<Envelope>, StoreError> {
    let mut events = Vec::with_capacity(positions.len());
    for &position in positions {
        assert!(position > 0, "positions start at 1");
        let mut read = store.read_from(shop, position - 1, 1).await?;
        match read.pop() {
            Some(envelope) if envelope.position == position && read.is_empty() => events.push(envelope),
            _ => {
                let corruption = Corruption { position, reason: "no event at a position a view recorded".to_owned() };
                return Err(StoreError::Corrupt { shop: shop.clone(), corruption });
            }
        }
    }
    Ok(events)
}

/// Most events an order's history holds: an order's commands are bounded by its lines, so a
/// real order has far fewer; a history is cut here rather than read without end.
pub const ORDER_HISTORY_EVENTS_MAX: usize = 10_000;

/// An order's history up to position `through`, oldest first: the events of the checkout
/// hold it took over, then its own, read through the store's stream index: what
/// `emporium audit` reads, with no views at hand. `None` when the order was not placed by
/// `through`.
pub async fn order_history(
    store: &dyn EventStore,
    shop: &ShopId,
    order_id: &crate::domain::ids::OrderId,
    through: u64,
) -> Result<Option<Vec<Envelope>>, StoreError> {
    let mut events =
        store.read_stream(shop, &crate::log::record::order_stream(order_id), 0, ORDER_HISTORY_EVENTS_MAX).await?;
    events.retain(|envelope| envelope.position <= through);
    let Some(first) = events.first() else { return Ok(None) };
    assert!(matches!(first.event, crate::domain::event::Event::OrderPlaced { .. }), "order {order_id} begins unplaced");
    if let crate::domain::event::Event::OrderPlaced { reservation_id: Some(hold), .. } = &first.event {
        let mut history =
            store.read_stream(shop, &crate::log::record::reservation_stream(hold), 0, ORDER_HISTORY_EVENTS_MAX).await?;
        // The hold's own events all come before the order took it over.
        history.retain(|envelope| envelope.position < first.position);
        history.append(&mut events);
        events = history;
    }
    assert!(events.windows(2).all(|pair| pair[0].position < pair[1].position), "a history runs in log order");
    Ok(Some(events))
}
