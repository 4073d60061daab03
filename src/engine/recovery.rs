//! Recovery: a shop's in-memory side ([`Core`]: its state, stream versions and remembered
//! command ids) rebuilt from the newest usable engine snapshot and the log after it, or from
//! the whole log, verified as it is read; and the engine snapshot's image of it
//! ([`CoreImage`]).

use std::path::Path;
use std::sync::Arc;

use compact_str::CompactString;
use tokio::sync::mpsc;

use crate::domain::event::{Event, Subject};
use crate::domain::idmap::IdMap;
use crate::domain::ids::{CommandId, OrderId, ShopId, Timestamp};
use crate::engine::config::{ENGINE_SNAPSHOT_SCHEMA, EngineConfig, SnapshotConfig};
use crate::engine::idempotency::{Idempotency, Known, Outcome, SharedShortages, events_after};
use crate::log::record::{Corruption, Envelope, Hash};
use crate::log::store::{EventStore, StoreError};
use crate::memory::State;
use crate::memory::spill::Spill;

/// A shop's in-memory side, rebuilt from its log.
pub(super) struct Core {
    /// The shop's state.
    pub(super) state: State,
    /// The versions of SKU and checkout-hold streams; an order counts its own stream's
    /// ([`crate::domain::state::Order::stream_version`]), so this does not grow with the orders.
    pub(super) stream_versions: IdMap<CompactString, u64>,
    /// The command ids remembered.
    pub(super) idempotency: Idempotency,
    /// What the remembered refusals share.
    pub(super) shared_shortages: SharedShortages,
    /// The last position decided (durable, or in a batch being appended).
    pub(super) last_position: u64,
    /// The time of the last decision, which the next is never earlier than.
    pub(super) last_recorded_at: Timestamp,
    /// The snapshot position this core was recovered from.
    pub(super) resumed_from: Option<u64>,
}

/// How recovery reads the log after where it starts.
enum Tail {
    /// From zero: verified as it is read, in one pass; `anchor` is the hash of the record
    /// before the next page.
    Verify { anchor: Hash },
    /// From a snapshot: the tail was verified against the snapshot's head, through
    /// `events`, and is read with checksums.
    Verified { events: u64 },
}

/// Events read per page while recovering.
const RECOVERY_PAGE_EVENTS: usize = 4096;

/// Pages read ahead of the one recovery is folding.
const RECOVERY_PAGES_AHEAD_MAX: usize = 2;

/// Reads (and with [`Tail::Verify`], verifies) the log after `after` page by page on a
/// blocking thread, at most [`RECOVERY_PAGES_AHEAD_MAX`] pages ahead of the receiver: on two
/// cores, decoding the next page overlaps folding this one. The channel closes after the
/// last page or the first error; the reader stops when the receiver is dropped.
fn read_ahead(
    store: Arc<dyn EventStore>,
    shop: ShopId,
    after: u64,
    mut tail: Tail,
) -> mpsc::Receiver<Result<Vec<Envelope>, StoreError>> {
    let (sender, receiver) = mpsc::channel(RECOVERY_PAGES_AHEAD_MAX);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut after = after;
        loop {
            let page = runtime.block_on(async {
                match &mut tail {
                    Tail::Verify { anchor } => {
                        let (page, next) = store.read_verified(&shop, after, *anchor, RECOVERY_PAGE_EVENTS).await?;
                        *anchor = next;
                        Ok(page)
                    }
                    Tail::Verified { .. } => store.read_from(&shop, after, RECOVERY_PAGE_EVENTS).await,
                }
            });
            match page {
                Ok(page) => {
                    let Some(last) = page.last().map(|envelope| envelope.position) else { return };
                    assert!(last > after, "a page reads forward");
                    if sender.blocking_send(Ok(page)).is_err() {
                        return;
                    }
                    after = last;
                }
                Err(error) => {
                    let _ = sender.blocking_send(Err(error));
                    return;
                }
            }
        }
    });
    receiver
}

/// What an engine snapshot holds, as a tuple (postcard encodes it like a struct): the state,
/// stream versions, remembered commands oldest first, the last recorded time, and the hash
/// of the record at the snapshot's position.
type CoreImage = (State, IdMap<CompactString, u64>, Vec<(Timestamp, CommandId, Known)>, Timestamp, Hash);

impl Core {
    /// Counts `event`, which the state has just applied, in its `stream`, and returns the
    /// stream's version after it: the writer records it, recovery checks the log's against
    /// it. An order counts its own stream ([`crate::domain::state::Order::stream_version`]):
    /// `order_version` is what applying the event returned ([`State::apply`]), so no order
    /// is read back. Other streams (SKUs, checkout holds) count in `stream_versions`.
    pub(super) fn count_stream(&mut self, stream: &CompactString, event: &Event, order_version: Option<u64>) -> u64 {
        if let Subject::Order(order_id) = event.subject() {
            let Some(version) = order_version else {
                panic!("applying an event of order {order_id} counts its stream")
            };
            assert!(version > 0, "order {order_id} counts every event applied");
            return version;
        }
        debug_assert!(order_version.is_none(), "only an event about an order has an order's stream version");
        let counted = match self.stream_versions.get_mut(stream) {
            Some(counted) => counted,
            None => self.stream_versions.entry(stream.clone()).or_insert(0),
        };
        *counted += 1;
        *counted
    }

    /// The image, appended to `buffer` (reserved for the size expected, so that it does not
    /// grow by doubling).
    pub(super) fn encode_image(&self, head: Hash, buffer: Vec<u8>) -> Result<Vec<u8>, postcard::Error> {
        // Neither the orders nor the stream versions are sorted: an engine snapshot is read
        // back, never compared or hashed.
        let known: Vec<(Timestamp, &CommandId, &Known)> = self.idempotency.iter().collect();
        postcard::to_extend(&(&self.state, &self.stream_versions, known, self.last_recorded_at, head), buffer)
    }

    fn from_image(image: CoreImage, position: u64, window_ms: u64) -> Core {
        let (state, streams, known, last_recorded_at, _) = image;
        let mut idempotency = Idempotency::new(window_ms);
        // A snapshot holds each refusal apart; they are shared again as they are read.
        let mut shared_shortages = SharedShortages::default();
        for (at, command_id, mut entry) in known {
            if let Outcome::Rejected(rejection) = &mut entry.outcome {
                *rejection = shared_shortages.share(rejection);
            }
            idempotency.remember_new(at, command_id, entry);
        }
        Core {
            state,
            stream_versions: streams,
            idempotency,
            shared_shortages,
            last_position: position,
            last_recorded_at,
            resumed_from: Some(position),
        }
    }

    /// The newest usable engine snapshot of `shop`: decoded, and its log still carrying the
    /// snapshot's head at its position. Unusable ones are skipped with a warning.
    async fn from_snapshot(
        store: &dyn EventStore,
        shop: &ShopId,
        config: &SnapshotConfig,
        window_ms: u64,
    ) -> Option<(Core, u64)> {
        let snapshots = config.store(shop, "engine").ok()?;
        let loaded = snapshots.load_newest(ENGINE_SNAPSHOT_SCHEMA).ok()?;
        for skipped in &loaded.skipped {
            tracing::warn!(shop = %shop, path = %skipped.path.display(), reason = %skipped.reason, "engine snapshot skipped");
        }
        let snapshot = loaded.snapshot?;
        // The image, then the orders that were spilled when it was taken.
        let decoded = postcard::take_from_bytes::<CoreImage>(&snapshot.state).and_then(|(image, rest)| {
            let spilled: Vec<(OrderId, Vec<u8>)> = postcard::from_bytes(rest)?;
            Ok((image, spilled))
        });
        let restored = decoded.map_err(|e| e.to_string()).and_then(|(mut image, spilled)| {
            let spilled = spilled.into_iter().map(|(id, bytes)| (id, bytes.into_boxed_slice())).collect();
            image.0.restore_orders(spilled).map(|()| image).map_err(str::to_owned)
        });
        let image = match restored {
            Ok(image) => image,
            Err(error) => {
                tracing::warn!(shop = %shop, position = snapshot.position, %error, "engine snapshot does not decode; replaying the log");
                return None;
            }
        };
        match store.verify_after(shop, snapshot.position, image.4).await {
            Ok(report) => Some((Core::from_image(image, snapshot.position, window_ms), report.events)),
            Err(error) => {
                tracing::warn!(shop = %shop, position = snapshot.position, %error, "engine snapshot does not fit the log; replaying it");
                None
            }
        }
    }

    /// Rebuilds `shop`'s core as of the end of its log, at engine time `now`: from the newest
    /// usable engine snapshot and the log after it, or from the whole log, verified as it is
    /// read. The commands recorded within the idempotency window before `now` are remembered;
    /// with a spill directory, the orders kept encoded then move to a spill of their own.
    pub(super) async fn recover(
        store: &Arc<dyn EventStore>,
        shop: &ShopId,
        config: &EngineConfig,
        now: Timestamp,
    ) -> Result<Core, StoreError> {
        if !config.policy.is_valid() {
            return Err(StoreError::Io("the engine's policy is out of bounds".to_owned()));
        }
        let (mut core, tail) = Core::starting_point(store.as_ref(), shop, config).await;
        core.idempotency.bound_refusals(config.remembered_refusals_max, config.remembered_refusals_bytes_max);
        let horizon = Timestamp(now.0.saturating_sub(config.idempotency_window_ms));
        core.replay_tail(store, shop, tail, horizon).await?;
        core.remember_rejections(store.as_ref(), shop, horizon).await?;
        if let Some(dir) = &config.spill_dir {
            core.spill_to(dir, shop)?;
        }
        Ok(core)
    }

    /// Where recovery starts, with the engine's policy in force: the newest usable engine
    /// snapshot and its verified tail, or nothing and the whole log, to verify.
    async fn starting_point(store: &dyn EventStore, shop: &ShopId, config: &EngineConfig) -> (Core, Tail) {
        let resumed = match &config.snapshots {
            Some(snapshots) => Core::from_snapshot(store, shop, snapshots, config.idempotency_window_ms).await,
            None => None,
        };
        let (mut core, tail) = match resumed {
            Some((core, events)) => (core, Tail::Verified { events }),
            None => {
                let core = Core::empty(config.idempotency_window_ms);
                (core, Tail::Verify { anchor: crate::log::record::genesis_hash(shop) })
            }
        };
        // The policy in force is the engine's, however the state was rebuilt.
        core.state.set_policy(config.policy);
        core.state.set_orders_hot_max(config.orders_hot_max);
        (core, tail)
    }

    /// The core of a shop before its log's first event, remembering ids for `window_ms`.
    fn empty(window_ms: u64) -> Core {
        Core {
            state: State::new(),
            stream_versions: IdMap::default(),
            idempotency: Idempotency::new(window_ms),
            shared_shortages: SharedShortages::default(),
            last_position: 0,
            last_recorded_at: Timestamp(0),
            resumed_from: None,
        }
    }

    /// Folds the log after the core's last position, read as `tail` says, and remembers the
    /// commands recorded from `horizon` on.
    async fn replay_tail(
        &mut self,
        store: &Arc<dyn EventStore>,
        shop: &ShopId,
        tail: Tail,
        horizon: Timestamp,
    ) -> Result<(), StoreError> {
        let verified_events = match tail {
            Tail::Verified { events } => Some(events),
            Tail::Verify { .. } => None,
        };
        let mut pages = read_ahead(store.clone(), shop.clone(), self.last_position, tail);
        while let Some(page) = pages.recv().await {
            let page = page?;
            assert!(!page.is_empty(), "the reader sends no empty page");
            for (index, envelope) in page.iter().enumerate() {
                if index % crate::domain::state::PREFETCH_EVENTS == 0 {
                    self.state.prefetch(page[index..].iter().map(|envelope| &envelope.event));
                }
                self.replay(shop, envelope, horizon)?;
            }
        }
        if let Some(events) = verified_events {
            assert_eq!(self.last_position, events, "the log changed while recovering");
        }
        Ok(())
    }

    /// Folds the log's next envelope, checking that it fits the state
    /// ([`State::try_apply`]) and its stream's version, and remembers its command when it
    /// was recorded from `horizon` on. An envelope that does not fit is
    /// [`StoreError::Corrupt`] at its position, naming why: the shop is refused.
    fn replay(&mut self, shop: &ShopId, envelope: &Envelope, horizon: Timestamp) -> Result<(), StoreError> {
        let unfit = |reason: String| {
            let position = envelope.position;
            tracing::error!(shop = %shop, position, %reason, "an event of the log does not fit the shop; the shop is refused");
            let reason = format!("the event does not fit the shop: {reason}");
            StoreError::Corrupt { shop: shop.clone(), corruption: Corruption { position, reason } }
        };
        if envelope.position != self.last_position + 1 {
            return Err(unfit(format!("it follows position {}", self.last_position)));
        }
        let order_version = self.state.try_apply(&envelope.event).map_err(|e| unfit(e.reason))?;
        let version = self.count_stream(&envelope.stream, &envelope.event, order_version);
        if version != envelope.stream_version {
            let stream = &envelope.stream;
            return Err(unfit(format!(
                "version {} of stream {stream}, where {version} comes next",
                envelope.stream_version
            )));
        }
        self.last_position = envelope.position;
        self.last_recorded_at = self.last_recorded_at.max(envelope.recorded_at);
        if envelope.recorded_at >= horizon {
            self.remember_appended(envelope);
        }
        Ok(())
    }

    /// Remembers that `envelope`'s command appended it. A command's events are consecutive:
    /// this extends its range, or starts one.
    fn remember_appended(&mut self, envelope: &Envelope) {
        let started = Known {
            fingerprint: envelope.fingerprint,
            outcome: Outcome::Appended { first: envelope.position, more: 0 },
        };
        match self.idempotency.get_mut(&envelope.command_id) {
            Some(Known { outcome: Outcome::Appended { first, more }, .. }) => {
                *more = events_after(*first, envelope.position);
            }
            // From a snapshot: what the id did before it was forgotten and used again.
            Some(stale) => *stale = started,
            None => self.idempotency.remember_new(envelope.recorded_at, envelope.command_id.clone(), started),
        }
    }

    /// Remembers the refusals the store recorded for `shop` from `horizon` on, oldest first.
    async fn remember_rejections(
        &mut self,
        store: &dyn EventStore,
        shop: &ShopId,
        horizon: Timestamp,
    ) -> Result<(), StoreError> {
        let mut rejections = store.rejections(shop).await?;
        rejections.sort_by_key(|r| r.recorded_at);
        for record in rejections {
            if record.recorded_at >= horizon {
                let outcome = Outcome::Rejected(self.shared_shortages.share(&record.rejection));
                let known = Known { fingerprint: record.fingerprint, outcome };
                self.idempotency.remember(record.recorded_at, record.command_id, known);
            }
        }
        Ok(())
    }

    /// Moves the orders kept encoded to a new spill in `dir`. Recovery folds in memory; from
    /// here on the writer spills after every batch.
    fn spill_to(&mut self, dir: &Path, shop: &ShopId) -> Result<(), StoreError> {
        let spill = Spill::create_in(dir).map_err(|e| StoreError::Io(format!("the order spill: {e}")))?;
        self.state.attach_orders_spill(Arc::new(spill));
        // The spill opens its file only now, if an order leaves memory; a failure keeps the
        // orders in memory, which is correct, only larger, and the writer's next batch
        // tries again.
        match self.state.spill_orders() {
            Ok(0) => {}
            Ok(spilled) => tracing::info!(shop = %shop, spilled, "orders kept encoded moved to the spill"),
            Err(error) => {
                tracing::warn!(shop = %shop, %error, "orders kept encoded could not be spilled; they stay in memory")
            }
        }
        Ok(())
    }
}
