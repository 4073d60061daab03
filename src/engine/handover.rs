//! The hand-over of durable batches from a shop's writer to its follower, so that the views
//! need not read back and decode what was just written. It is bounded: when the follower
//! lags, a batch is not handed over and the follower reads it from the store instead
//! ([`Handover`] says which).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::log::record::Envelope;

/// Durable batches waiting for a shop's follower, at most.
pub(super) const HANDED_BATCHES_MAX: usize = 1024;

/// Events in the batches waiting for a shop's follower, at most.
const HANDED_EVENTS_MAX: usize = 131_072;

/// What the writer and the follower of a shop share about the batches handed over.
///
/// Every durable batch is either handed over or counted in `unhanded_through`, and the
/// writer does one or the other after the store reports the batch durable. So a follower
/// whose checkpoint has reached `unhanded_through` waits for the next batch from the
/// writer (or a `skipped` notice) instead of reading the store.
pub(super) struct Handover {
    /// Events handed over and not yet taken by the follower.
    events_queued: std::sync::atomic::AtomicUsize,
    /// The last position that will not be handed over: the log's end when the writer
    /// started, or the end of a batch that was not handed over or whose append failed.
    pub(super) unhanded_through: AtomicU64,
    /// Wakes a waiting follower when `unhanded_through` moves.
    pub(super) skipped: tokio::sync::Notify,
}

impl Handover {
    /// A hand-over whose follower reads from the store through `log_end`, where the log
    /// ends when the writer starts.
    pub(super) fn new(log_end: u64) -> Arc<Handover> {
        Arc::new(Handover {
            events_queued: std::sync::atomic::AtomicUsize::new(0),
            unhanded_through: AtomicU64::new(log_end),
            skipped: tokio::sync::Notify::new(),
        })
    }

    /// Hands a durable batch ending at `last` to the follower or, when the queue is full or
    /// closed, tells it to read the batch from the store. Returns whether it was handed.
    pub(super) fn hand_over(
        &self,
        sender: &mpsc::Sender<Arc<Vec<Envelope>>>,
        events: Vec<Envelope>,
        last: u64,
    ) -> bool {
        let count = events.len();
        // One batch larger than the limit still goes, alone.
        let queued = self.events_queued.fetch_add(count, Ordering::AcqRel);
        let room = queued == 0 || queued.saturating_add(count) <= HANDED_EVENTS_MAX;
        if room && sender.try_send(Arc::new(events)).is_ok() {
            return true;
        }
        self.events_queued.fetch_sub(count, Ordering::AcqRel);
        self.skip_through(last);
        false
    }

    /// Batches through `last` are to be read from the store.
    pub(super) fn skip_through(&self, last: u64) {
        self.unhanded_through.fetch_max(last, Ordering::AcqRel);
        self.skipped.notify_one();
    }

    /// The follower took `batch` from the queue.
    pub(super) fn took(&self, batch: &[Envelope]) {
        self.events_queued.fetch_sub(batch.len(), Ordering::AcqRel);
    }
}
