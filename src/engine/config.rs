//! How the engine is configured: batching, queues, the idempotency window, ticks, the
//! policy, the orders kept in memory, where spills go ([`EngineConfig`]), and where and how
//! often snapshots are taken ([`SnapshotConfig`]), with the schema versions of the two kinds
//! of snapshot.

use std::path::PathBuf;

use emporium_snapshots::SnapshotStore;

use crate::domain::ids::ShopId;
use crate::domain::state::Policy;

/// Where and how often the engine snapshots each shop's state and views.
///
/// Snapshots live in `dir/<shop>/engine` and `dir/<shop>/views`. With them, opening a shop
/// reads the newest valid snapshot and the log after it, and verifies the log's chain from
/// the snapshot's position on (the part before it was verified when the snapshot was taken;
/// `emporium verify` checks it all). Without them, opening replays and verifies everything.
#[derive(Clone, Debug)]
pub struct SnapshotConfig {
    /// The directory.
    pub dir: PathBuf,
    /// Events between two snapshots of the same kind.
    pub every_events: u64,
    /// Snapshots kept per shop and kind.
    pub keep: usize,
}

impl SnapshotConfig {
    /// Snapshots in `dir` every 1,000,000 events, keeping 3.
    pub fn new(dir: PathBuf) -> SnapshotConfig {
        SnapshotConfig { dir, every_events: 1_000_000, keep: 3 }
    }

    /// The store of `shop`'s snapshots of `kind` (`engine` or `views`).
    pub(super) fn store(&self, shop: &ShopId, kind: &str) -> std::io::Result<SnapshotStore> {
        SnapshotStore::open(&self.dir.join(shop.as_str()).join(kind), self.keep)
    }
}

/// The schema version of the engine's state snapshots: bumped whenever the shape of
/// [`State`](crate::memory::State), of the remembered command ids or of the frozen
/// orders' encoding ([`crate::memory::pack`], and the changes appended to it,
/// `state::append_change`) changes, so older snapshots are ignored.
pub const ENGINE_SNAPSHOT_SCHEMA: u32 = 8;

/// The schema version of view snapshots: bumped whenever a view's shape changes.
pub const VIEWS_SNAPSHOT_SCHEMA: u32 = 5;

/// How the engine batches, queues and remembers.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Most commands decided and synced together.
    pub batch_commands_max: usize,
    /// Most commands waiting for a shop's writer.
    pub queue_commands_max: usize,
    /// How long command ids are remembered, in engine time.
    pub idempotency_window_ms: u64,
    /// Most refused commands a shop remembers: 100,000 by default. Part of the idempotency
    /// contract: a refusal is answered the same on retry (also after a restart) while it is
    /// within the window and among the newest `remembered_refusals_max` refusals of its shop
    /// (and within [`EngineConfig::remembered_refusals_bytes_max`]); an older one may be
    /// forgotten, oldest first, and then a retry runs as a new command. Accepted commands are
    /// not bounded this way: their events are in the log.
    pub remembered_refusals_max: usize,
    /// Most bytes of refused commands a shop remembers, each counted as its id, its refusal
    /// encoded and about 100 bytes of bookkeeping: 16 MiB by default. Beyond it the oldest
    /// are forgotten, as beyond [`EngineConfig::remembered_refusals_max`].
    pub remembered_refusals_bytes_max: usize,
    /// How often an idle shop checks for expired holds and orders.
    pub tick_interval_ms: u64,
    /// The rules' defaults for new shops.
    pub policy: Policy,
    /// Snapshots of state and views; none by default.
    pub snapshots: Option<SnapshotConfig>,
    /// Most orders a shop's writer keeps as values; the rest are kept encoded and decoded
    /// when a command names them
    /// ([`State::set_orders_hot_max`](crate::memory::State::set_orders_hot_max)).
    pub orders_hot_max: usize,
    /// Where a shop's writer spills the orders it keeps encoded, out of memory
    /// ([`crate::memory::spill`]): a scratch file per shop, unnamed, never synced, rebuilt on every
    /// recovery, and opened only when the first order leaves memory. None keeps them in memory.
    pub spill_dir: Option<PathBuf>,
    /// Most shops the engine serves; creating one more is refused
    /// ([`OpenError::ShopLimitReached`](crate::engine::OpenError::ShopLimitReached)) and
    /// creates nothing. Shops found in the store at open are all served, even past it.
    /// Default [`SHOPS_MAX_DEFAULT`].
    pub shops_max: usize,
    /// The file where the engine keeps each shop's last durable position and hash, outside
    /// the log ([`crate::engine::witness`]), and refuses a shop whose log ends before it.
    /// None (the default) keeps no witness.
    pub witness: Option<PathBuf>,
}

/// The default of [`EngineConfig::shops_max`]: 1,000 shops. A shop holds a writer and a
/// follower, its state and views in memory, and no file descriptor until it spills.
pub const SHOPS_MAX_DEFAULT: usize = 1_000;

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            batch_commands_max: 4096,
            queue_commands_max: 65_536,
            idempotency_window_ms: 24 * 60 * 60 * 1000,
            remembered_refusals_max: 100_000,
            remembered_refusals_bytes_max: 16 << 20,
            tick_interval_ms: 1000,
            policy: Policy::default(),
            snapshots: None,
            orders_hot_max: crate::memory::tiered::HOT_DEFAULT_MAX,
            spill_dir: None,
            shops_max: SHOPS_MAX_DEFAULT,
            witness: None,
        }
    }
}

/// Room to reserve for a snapshot whose last one took `last_bytes`: twice as much, for what
/// was added since (a promotion day's image grows by half between two), and nothing before
/// the first. Room never written to is address space, not resident memory.
pub(super) fn snapshot_bytes_expected(last_bytes: usize) -> usize {
    last_bytes.saturating_mul(2)
}
