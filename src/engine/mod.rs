//! The engine: owns every shop's state in memory, takes commands from many callers, and
//! acknowledges each one only when its events are durable.
//!
//! Guarantees, before the code:
//! - **One writer per shop.** Each shop has one writer task that decides commands in arrival
//!   order against the shop's state. Shops are independent partitions.
//! - **Group commit, pipelined.** The writer takes up to `batch_commands_max` queued
//!   commands, decides them one by one, and appends all their events and rejections as one
//!   atomic batch, synced once, by a task of its own. While that batch syncs, the commands
//!   that arrive are decided into the next batch, which is appended as soon as the first is
//!   durable: at most one batch appending and one being decided. Every command is answered
//!   only once its batch is durable, batches in order.
//! - **Acknowledged means durable.** No answer, accepted or rejected, leaves the writer
//!   before the batch holding it is durable. If the store fails, every command of the batch,
//!   and of the batch decided behind it, gets [`CommandError::Unavailable`] and the shop's
//!   state is rebuilt from its log. A read first makes everything decided durable.
//! - **Idempotency.** A command id seen within `idempotency_window_ms` of engine time returns
//!   its original outcome (the same positions, or the same rejection) without appending, also
//!   after a restart: accepted ids are rebuilt from the log, rejected ones from the store's
//!   rejection records. The same id with a different command is
//!   [`CommandError::IdempotencyConflict`]. Older ids are forgotten, at most an eighth of the
//!   window later, and then run as new commands.
//! - **Time.** Every decision takes its time from the engine [`Clock`], never earlier than
//!   the last recorded time. Before deciding a batch, and when a shop has been idle for
//!   `tick_interval_ms`, the writer records every hold and unpaid order whose deadline has
//!   passed (the tick), as commands of its own.
//! - **Bounded.** Every queue has a limit: a full shop queue answers
//!   [`CommandError::Overloaded`] at once.
//! - **Views follow.** Each shop's follower folds the log into its views: the batches the
//!   writer hands over once durable, and from the store whatever those miss. The writer
//!   never waits for it.

pub mod metrics;
pub mod remembered;

use compact_str::CompactString;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use emporium_snapshots::{Snapshot, SnapshotStore};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::domain::command::Command;
use crate::domain::event::{Event, Subject};
use crate::domain::idmap::IdMap;
use crate::domain::ids::{CommandId, OrderId, ShopId, Timestamp};
use crate::domain::rejection::{Rejection, Shortage};
use crate::domain::state::Policy;
use crate::engine::metrics::Histogram;
use crate::engine::remembered::{GENERATIONS, Remembered};
use crate::log::record::{Envelope, Fingerprint, Hash, fingerprint, stream_of};
use crate::log::store::{AppendBatch, EventStore, RejectionRecord, StoreError};
use crate::memory::State;
use crate::memory::spill::Spill;
use crate::views::Views;

/// Reads the engine's time.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timestamp(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to; for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock showing `now`.
    pub fn new(now: Timestamp) -> ManualClock {
        ManualClock(AtomicU64::new(now.0))
    }

    /// Moves the clock to `now`.
    pub fn set(&self, now: Timestamp) {
        self.0.store(now.0, Ordering::SeqCst);
    }

    /// Moves the clock forward by `duration_ms`.
    pub fn advance_ms(&self, duration_ms: u64) {
        self.0.fetch_add(duration_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

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

    fn store(&self, shop: &ShopId, kind: &str) -> std::io::Result<SnapshotStore> {
        SnapshotStore::open(&self.dir.join(shop.as_str()).join(kind), self.keep)
    }
}

/// The schema version of the engine's state snapshots: bumped whenever the shape of
/// [`State`], of the remembered command ids or of the frozen orders' encoding
/// ([`crate::memory::pack`], and the changes appended to it, `state::append_change`) changes, so
/// older snapshots are ignored.
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
    /// How often an idle shop checks for expired holds and orders.
    pub tick_interval_ms: u64,
    /// The rules' defaults for new shops.
    pub policy: Policy,
    /// Snapshots of state and views; none by default.
    pub snapshots: Option<SnapshotConfig>,
    /// Most orders a shop's writer keeps as values; the rest are kept encoded and decoded
    /// when a command names them ([`State::set_orders_hot_max`]).
    pub orders_hot_max: usize,
    /// Where a shop's writer spills the orders it keeps encoded, out of memory
    /// ([`crate::memory::spill`]): a scratch file per shop, unnamed, never synced, rebuilt on every
    /// recovery. None keeps them in memory.
    pub spill_dir: Option<PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            batch_commands_max: 4096,
            queue_commands_max: 65_536,
            idempotency_window_ms: 24 * 60 * 60 * 1000,
            tick_interval_ms: 1000,
            policy: Policy::default(),
            snapshots: None,
            orders_hot_max: crate::memory::tiered::HOT_DEFAULT_MAX,
            spill_dir: None,
        }
    }
}

/// A command with what the log records about its sending.
#[derive(Clone, Debug)]
pub struct Request {
    /// For idempotency; generated when absent.
    pub command_id: Option<CommandId>,
    /// Groups commands of one business transaction; the command id when absent.
    pub correlation_id: Option<String>,
    /// Who sends it: a user, a token's name, a system.
    pub actor: String,
    /// What to do.
    pub command: Command,
}

/// Longest actor or correlation id, in characters.
pub const LABEL_LENGTH_MAX: usize = 128;

impl Request {
    /// A request from `actor` with a generated command id.
    pub fn new(actor: &str, command: Command) -> Request {
        Request { command_id: None, correlation_id: None, actor: actor.to_owned(), command }
    }

    /// The same request with a caller-chosen command id.
    pub fn with_id(mut self, command_id: CommandId) -> Request {
        self.command_id = Some(command_id);
        self
    }
}

/// The positions of an accepted command's events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Positions {
    /// The first event's position.
    pub first: u64,
    /// The last event's position.
    pub last: u64,
}

/// An accepted command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Its id.
    pub command_id: CommandId,
    /// Where its events are; `None` when it produced none.
    pub positions: Option<Positions>,
    /// Whether this answer repeats an earlier execution of the same id.
    pub replayed: bool,
    /// The events it recorded, at `positions`; empty when `replayed` (they are in the log).
    pub events: Vec<Event>,
}

/// Why a command was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The shop's rules refused it; nothing changed. Repeats keep this answer.
    #[error("rejected: {0}")]
    Rejected(Rejection),
    /// The id names another command.
    #[error("command id {command_id} was used for a different command")]
    IdempotencyConflict {
        /// The id.
        command_id: CommandId,
    },
    /// The request itself is malformed (actor, correlation id).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No such shop.
    #[error("unknown shop {0}")]
    UnknownShop(ShopId),
    /// The shop's queue is full; try again shortly.
    #[error("shop {0} is overloaded")]
    Overloaded(ShopId),
    /// The shop cannot take commands: its storage failed or its log failed verification.
    #[error("shop {shop} is unavailable: {reason}")]
    Unavailable {
        /// The shop.
        shop: ShopId,
        /// Why.
        reason: String,
    },
}

/// Why the engine could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Reply = oneshot::Sender<Result<Accepted, CommandError>>;
type Reader = Box<dyn FnOnce(&State) + Send>;

enum Job {
    Execute(Request, Reply),
    Read(Reader),
}

enum ShopEntry {
    Serving {
        sender: mpsc::Sender<Job>,
        views: Arc<RwLock<Views>>,
        views_at: watch::Receiver<u64>,
        log_position: Arc<AtomicU64>,
        orders_spilled: Arc<AtomicU64>,
    },
    Refused(String),
}

/// What the engine counts while it runs.
#[derive(Debug)]
pub struct EngineStats {
    /// Commands per group commit (expiries recorded by the tick included).
    pub batch_commands: Histogram,
    /// Events appended per group commit.
    pub batch_events: Histogram,
    /// Seconds from handing a batch to the store until its append returned (durable, or
    /// failed), waiting to be scheduled included.
    pub group_commit_s: Histogram,
}

/// Where one shop stands, for monitoring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShopProgress {
    /// The shop.
    pub shop: ShopId,
    /// The last position its writer made durable (or recovered to).
    pub log_position: u64,
    /// The last position its views folded.
    pub views_position: u64,
    /// Orders its writer keeps out of memory, in the spill, as of the last batch.
    pub orders_spilled: u64,
}

/// The engine. Cheap to share behind an `Arc`.
pub struct Engine {
    store: Arc<dyn EventStore>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    shops: RwLock<HashMap<ShopId, ShopEntry>>,
    stats: Arc<EngineStats>,
    writers: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    shutdown: watch::Sender<bool>,
    recovered_from: std::sync::Mutex<HashMap<ShopId, Option<u64>>>,
}

impl Engine {
    /// Recovers every shop from its log and starts its writer. A shop whose log fails
    /// verification is refused (its commands get [`CommandError::Unavailable`] naming the
    /// first bad position); the others are served. Must run inside a tokio runtime.
    pub async fn open(
        store: Arc<dyn EventStore>,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
    ) -> Result<Engine, OpenError> {
        assert!(config.batch_commands_max > 0 && config.queue_commands_max > 0);
        let engine = Engine {
            store: store.clone(),
            clock,
            config,
            shops: RwLock::new(HashMap::new()),
            stats: Arc::new(EngineStats {
                batch_commands: Histogram::new(crate::engine::metrics::BATCH_BOUNDS),
                batch_events: Histogram::new(crate::engine::metrics::EVENT_BATCH_BOUNDS),
                group_commit_s: Histogram::new(crate::engine::metrics::LATENCY_BOUNDS_S),
            }),
            writers: std::sync::Mutex::new(Vec::new()),
            shutdown: watch::channel(false).0,
            recovered_from: std::sync::Mutex::new(HashMap::new()),
        };
        if let Some(dir) = &engine.config.spill_dir {
            // Spills of processes that ended before removing their names; a failure to
            // list or remove them costs disk only, and the spills made below still work.
            match Spill::remove_leftovers(dir) {
                Ok(0) => {}
                Ok(removed) => {
                    tracing::info!(removed, dir = %dir.display(), "removed spill files left by ended processes")
                }
                Err(error) => {
                    tracing::warn!(%error, dir = %dir.display(), "could not remove spill files left by ended processes")
                }
            }
        }
        for shop in store.shops().await? {
            engine.start(&shop).await?;
        }
        Ok(engine)
    }

    async fn start(&self, shop: &ShopId) -> Result<(), OpenError> {
        let entry = match Core::recover(&self.store, shop, &self.config, self.clock.now()).await {
            Ok(core) => {
                self.recovered_from
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(shop.clone(), core.resumed_from);
                let (sender, receiver) = mpsc::channel(self.config.queue_commands_max);
                let (durable, handed) = mpsc::channel(HANDED_BATCHES_MAX);
                // Ahead of the snapshot it started from (or of nothing), a shop snapshots at close.
                let last_snapshot = core.resumed_from.unwrap_or(0);
                let log_position = Arc::new(AtomicU64::new(core.last_position));
                let orders_spilled = Arc::new(AtomicU64::new(core.state.orders_spilled() as u64));
                let handover = Handover::new(core.last_position);
                let writer = Writer {
                    stats: self.stats.clone(),
                    log_position: log_position.clone(),
                    orders_spilled: orders_spilled.clone(),
                    shop: shop.clone(),
                    store: self.store.clone(),
                    clock: self.clock.clone(),
                    config: self.config.clone(),
                    core: Some(core),
                    generated: 0,
                    last_snapshot,
                    saving: None,
                    image_bytes_last: 0,
                    spill_health: SpillHealth::default(),
                    in_flight: None,
                    open: None,
                    durable,
                    handover: handover.clone(),
                };
                let follower = Follower::start(shop, self.store.clone(), &self.config, handed, handover).await?;
                let (views, views_at) = (follower.views.clone(), follower.checkpoint.subscribe());
                let mut writers = self.writers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                writers.push(tokio::spawn(writer.run(receiver)));
                writers.push(tokio::spawn(follower.run(self.shutdown.subscribe())));
                ShopEntry::Serving { sender, views, views_at, log_position, orders_spilled }
            }
            Err(StoreError::Corrupt { corruption, .. }) => ShopEntry::Refused(corruption.to_string()),
            Err(error) => return Err(error.into()),
        };
        self.shops.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(shop.clone(), entry);
        Ok(())
    }

    /// Creates a shop with an empty log, or does nothing if it exists.
    pub async fn create_shop(&self, shop: &ShopId) -> Result<(), OpenError> {
        if self.shops.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(shop) {
            return Ok(());
        }
        self.store.create_shop(shop).await?;
        self.start(shop).await
    }

    /// Every shop, served or refused.
    pub fn shops(&self) -> Vec<ShopId> {
        let mut shops: Vec<ShopId> =
            self.shops.read().unwrap_or_else(std::sync::PoisonError::into_inner).keys().cloned().collect();
        shops.sort();
        shops
    }

    fn sender(&self, shop: &ShopId) -> Result<mpsc::Sender<Job>, CommandError> {
        match self.shops.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(shop) {
            Some(ShopEntry::Serving { sender, .. }) => Ok(sender.clone()),
            Some(ShopEntry::Refused(reason)) => {
                Err(CommandError::Unavailable { shop: shop.clone(), reason: reason.clone() })
            }
            None => Err(CommandError::UnknownShop(shop.clone())),
        }
    }

    fn enqueue(&self, shop: &ShopId, job: Job) -> Result<(), CommandError> {
        let sender = self.sender(shop)?;
        sender.try_send(job).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => CommandError::Overloaded(shop.clone()),
            mpsc::error::TrySendError::Closed(_) => {
                CommandError::Unavailable { shop: shop.clone(), reason: "the shop's writer stopped".to_owned() }
            }
        })
    }

    /// Executes one command and answers once its outcome is durable.
    pub async fn execute(&self, shop: &ShopId, request: Request) -> Result<Accepted, CommandError> {
        check_label("actor", &request.actor)?;
        if let Some(correlation_id) = &request.correlation_id {
            check_label("correlation id", correlation_id)?;
        }
        let (reply, answer) = oneshot::channel();
        self.enqueue(shop, Job::Execute(request, reply))?;
        answer.await.unwrap_or_else(|_| {
            Err(CommandError::Unavailable { shop: shop.clone(), reason: "the shop's writer stopped".to_owned() })
        })
    }

    /// Records every expired hold and unpaid order of `shop` now.
    pub async fn tick(&self, shop: &ShopId) -> Result<Accepted, CommandError> {
        self.execute(shop, Request::new("engine", Command::ExpireDue)).await
    }

    /// Runs `read` on the shop's state as of every command answered so far.
    pub async fn read<R: Send + 'static>(
        &self,
        shop: &ShopId,
        read: impl FnOnce(&State) -> R + Send + 'static,
    ) -> Result<R, CommandError> {
        let (reply, answer) = oneshot::channel();
        let reader: Reader = Box::new(move |state| {
            let _ = reply.send(read(state));
        });
        self.enqueue(shop, Job::Read(reader))?;
        answer.await.map_err(|_| CommandError::Unavailable {
            shop: shop.clone(),
            reason: "the shop's writer stopped, or the read panicked".to_owned(),
        })
    }

    /// The position of the engine snapshot a shop's state was recovered from when the
    /// engine opened it; `None` when it replayed its whole log (or is unknown).
    pub fn recovered_from(&self, shop: &ShopId) -> Option<u64> {
        self.recovered_from.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(shop).copied().flatten()
    }

    /// What the engine counted so far.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Where every served shop stands, sorted by shop.
    pub fn progress(&self) -> Vec<ShopProgress> {
        let shops = self.shops.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut progress: Vec<ShopProgress> = shops
            .iter()
            .filter_map(|(shop, entry)| match entry {
                ShopEntry::Serving { views_at, log_position, orders_spilled, .. } => Some(ShopProgress {
                    shop: shop.clone(),
                    log_position: log_position.load(Ordering::Acquire),
                    views_position: *views_at.borrow(),
                    orders_spilled: orders_spilled.load(Ordering::Acquire),
                }),
                ShopEntry::Refused(_) => None,
            })
            .collect();
        progress.sort_by(|a, b| a.shop.cmp(&b.shop));
        progress
    }

    /// The store the engine writes to.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    fn views_of(&self, shop: &ShopId) -> Result<(Arc<RwLock<Views>>, watch::Receiver<u64>), CommandError> {
        match self.shops.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(shop) {
            Some(ShopEntry::Serving { views, views_at, .. }) => Ok((views.clone(), views_at.clone())),
            Some(ShopEntry::Refused(reason)) => {
                Err(CommandError::Unavailable { shop: shop.clone(), reason: reason.clone() })
            }
            None => Err(CommandError::UnknownShop(shop.clone())),
        }
    }

    /// Runs `read` on the shop's live views, which follow the log and may lag it briefly;
    /// [`Engine::views_reach`] waits for a position first.
    pub fn views<R>(&self, shop: &ShopId, read: impl FnOnce(&Views) -> R) -> Result<R, CommandError> {
        let (views, _) = self.views_of(shop)?;
        let views = views.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(read(&views))
    }

    /// Waits until the shop's views have folded `position`, at most `timeout`; returns the
    /// position they reached.
    pub async fn views_reach(&self, shop: &ShopId, position: u64, timeout: Duration) -> Result<u64, CommandError> {
        let (_, mut at) = self.views_of(shop)?;
        let reached = tokio::time::timeout(timeout, at.wait_for(|at| *at >= position)).await;
        let reached = reached.ok().and_then(Result::ok).map(|at| *at);
        Ok(reached.unwrap_or_else(|| *at.borrow()))
    }

    /// Stops taking commands, lets every writer finish what is queued, and waits for them.
    pub async fn close(&self) {
        self.shutdown.send_replace(true);
        self.shops.write().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        let writers = std::mem::take(&mut *self.writers.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for writer in writers {
            let _ = writer.await;
        }
    }
}

fn check_label(what: &str, text: &str) -> Result<(), CommandError> {
    let length = text.chars().count();
    if length == 0 || length > LABEL_LENGTH_MAX || text.chars().any(char::is_control) {
        return Err(CommandError::InvalidRequest(format!(
            "{what} must be 1 to {LABEL_LENGTH_MAX} characters without control characters"
        )));
    }
    Ok(())
}

/// What happened to a remembered command, in 16 bytes: millions are remembered.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Outcome {
    /// Accepted, its events at positions `first` to `first + more`.
    Appended { first: u64, more: u32 },
    /// Accepted, and nothing appended.
    Unchanged,
    /// Behind a pointer: most remembered commands were accepted. Shared between the
    /// commands refused for the same shortages ([`SharedShortages`]).
    Rejected(Arc<Rejection>),
}

impl Outcome {
    fn accepted(positions: Option<Positions>) -> Outcome {
        match positions {
            Some(Positions { first, last }) => Outcome::Appended { first, more: events_after(first, last) },
            None => Outcome::Unchanged,
        }
    }
}

/// How many events a command appended after its first: far fewer than `u32::MAX`, since a
/// batch holds a bounded number of commands of a bounded number of lines.
fn events_after(first: u64, last: u64) -> u32 {
    assert!(first <= last, "positions in order");
    u32::try_from(last - first).unwrap_or_else(|_| panic!("one command appended positions {first} to {last}"))
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Known {
    fingerprint: Fingerprint,
    outcome: Outcome,
}

const _: () = assert!(std::mem::size_of::<Known>() == 32, "a remembered command's outcome stays small");

/// Remembered command ids, forgotten after the window (in generations: see [`Remembered`]).
type Idempotency = Remembered<CommandId, Known>;

/// How many distinct shortages [`SharedShortages`] keeps before it starts afresh.
const SHARED_SHORTAGES_MAX: usize = 4_096;

/// One remembered refusal per distinct shortage. On a sold-out day most orders are refused
/// because one of a few hot SKUs has nothing left, and a day of them is remembered: shared,
/// they cost a pointer each instead of two allocations.
///
/// Only [`Rejection::InsufficientStock`] is shared: its fields are ids and integers, so
/// rejections that compare equal also read and serialize the same (two equal decimals may
/// not). Bounded: once full it is cleared, which costs sharing, never correctness.
#[derive(Default)]
struct SharedShortages {
    by_shortages: IdMap<Vec<Shortage>, Arc<Rejection>>,
}

impl SharedShortages {
    /// `rejection` behind a pointer, the one shared with equal refusals where there is one.
    fn share(&mut self, rejection: &Rejection) -> Arc<Rejection> {
        let Rejection::InsufficientStock { shortages } = rejection else {
            return Arc::new(rejection.clone());
        };
        if let Some(shared) = self.by_shortages.get(shortages) {
            debug_assert_eq!(**shared, *rejection);
            return Arc::clone(shared);
        }
        if self.by_shortages.len() >= SHARED_SHORTAGES_MAX {
            self.by_shortages.clear();
        }
        let shared = Arc::new(rejection.clone());
        self.by_shortages.insert(shortages.clone(), Arc::clone(&shared));
        assert!(self.by_shortages.len() <= SHARED_SHORTAGES_MAX);
        shared
    }
}

/// A shop's in-memory side, rebuilt from its log.
struct Core {
    state: State,
    /// The versions of SKU and checkout-hold streams; an order counts its own stream's
    /// ([`crate::domain::state::Order::stream_version`]), so this does not grow with the orders.
    stream_versions: IdMap<CompactString, u64>,
    idempotency: Idempotency,
    /// What the remembered refusals share.
    shared_shortages: SharedShortages,
    last_position: u64,
    last_recorded_at: Timestamp,
    /// The snapshot position this core was recovered from.
    resumed_from: Option<u64>,
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
    /// The image, appended to `buffer` (reserved for the size expected, so that it does not
    /// grow by doubling).
    fn encode_image(&self, head: Hash, buffer: Vec<u8>) -> Result<Vec<u8>, postcard::Error> {
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

    async fn recover(
        store: &Arc<dyn EventStore>,
        shop: &ShopId,
        config: &EngineConfig,
        now: Timestamp,
    ) -> Result<Core, StoreError> {
        if !config.policy.is_valid() {
            return Err(StoreError::Io("the engine's policy is out of bounds".to_owned()));
        }
        let resumed = match &config.snapshots {
            Some(snapshots) => Core::from_snapshot(store.as_ref(), shop, snapshots, config.idempotency_window_ms).await,
            None => None,
        };
        let (mut core, tail) = match resumed {
            Some((core, events)) => (core, Tail::Verified { events }),
            None => {
                let core = Core {
                    state: State::new(),
                    stream_versions: IdMap::default(),
                    idempotency: Idempotency::new(config.idempotency_window_ms),
                    shared_shortages: SharedShortages::default(),
                    last_position: 0,
                    last_recorded_at: Timestamp(0),
                    resumed_from: None,
                };
                (core, Tail::Verify { anchor: crate::log::record::genesis_hash(shop) })
            }
        };
        // The policy in force is the engine's, however the state was rebuilt.
        core.state.set_policy(config.policy);
        core.state.set_orders_hot_max(config.orders_hot_max);
        let horizon = Timestamp(now.0.saturating_sub(config.idempotency_window_ms));
        let verified_events = match tail {
            Tail::Verified { events } => Some(events),
            Tail::Verify { .. } => None,
        };
        let mut pages = read_ahead(store.clone(), shop.clone(), core.last_position, tail);
        while let Some(page) = pages.recv().await {
            let page = page?;
            assert!(!page.is_empty(), "the reader sends no empty page");
            for (index, envelope) in page.iter().enumerate() {
                if index % crate::domain::state::PREFETCH_EVENTS == 0 {
                    core.state.prefetch(page[index..].iter().map(|envelope| &envelope.event));
                }
                assert_eq!(envelope.position, core.last_position + 1, "recovery reads the log in order");
                let order_version = core.state.apply(&envelope.event);
                let version = match envelope.event.subject() {
                    Subject::Order(_) => order_version,
                    Subject::Sku(_) | Subject::Reservation(_) => {
                        let version = core.stream_versions.entry(envelope.stream.clone()).or_insert(0);
                        *version += 1;
                        Some(*version)
                    }
                };
                assert_eq!(version, Some(envelope.stream_version), "stream {} out of order", envelope.stream);
                core.last_position = envelope.position;
                core.last_recorded_at = core.last_recorded_at.max(envelope.recorded_at);
                if envelope.recorded_at >= horizon {
                    // A command's events are consecutive: extend its range, or start one.
                    let started = Known {
                        fingerprint: envelope.fingerprint,
                        outcome: Outcome::Appended { first: envelope.position, more: 0 },
                    };
                    match core.idempotency.get_mut(&envelope.command_id) {
                        Some(Known { outcome: Outcome::Appended { first, more }, .. }) => {
                            *more = events_after(*first, envelope.position);
                        }
                        // From a snapshot: what the id did before it was forgotten and used again.
                        Some(stale) => *stale = started,
                        None => {
                            core.idempotency.remember_new(envelope.recorded_at, envelope.command_id.clone(), started)
                        }
                    }
                }
            }
        }
        if let Some(events) = verified_events {
            assert_eq!(core.last_position, events, "the log changed while recovering");
        }
        let mut rejections = store.rejections(shop).await?;
        rejections.sort_by_key(|r| r.recorded_at);
        for record in rejections {
            if record.recorded_at >= horizon {
                let outcome = Outcome::Rejected(core.shared_shortages.share(&record.rejection));
                let known = Known { fingerprint: record.fingerprint, outcome };
                core.idempotency.remember(record.recorded_at, record.command_id, known);
            }
        }
        if let Some(dir) = &config.spill_dir {
            // Recovery folds in memory; from here on the writer spills after every batch.
            let spill = Spill::create_in(dir).map_err(|e| StoreError::Io(format!("the order spill: {e}")))?;
            core.state.attach_orders_spill(Arc::new(spill));
            let spilled = core.state.spill_orders().map_err(|e| StoreError::Io(format!("the order spill: {e}")))?;
            tracing::info!(shop = %shop, spilled, "orders kept encoded moved to the spill");
        }
        Ok(core)
    }
}

/// Most ticks before one batch; each records at most `EXPIRIES_PER_TICK_MAX` expiries, and
/// the next batch records the rest.
const TICKS_PER_BATCH_MAX: usize = 16;

/// An answer waiting for its batch to be durable.
struct Pending {
    reply: Reply,
    answer: Result<Accepted, CommandError>,
}

struct Writer {
    shop: ShopId,
    stats: Arc<EngineStats>,
    /// Published after every durable batch.
    log_position: Arc<AtomicU64>,
    /// Published after every batch.
    orders_spilled: Arc<AtomicU64>,
    store: Arc<dyn EventStore>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    /// `None` once the shop failed and could not be recovered.
    core: Option<Core>,
    generated: u64,
    /// The position of the last engine snapshot (or of recovery).
    last_snapshot: u64,
    /// The engine snapshot being written, at most one.
    saving: Option<tokio::task::JoinHandle<()>>,
    /// The size of the last engine snapshot's image, to reserve for the next.
    image_bytes_last: usize,
    /// Whether spilling the orders fails.
    spill_health: SpillHealth,
    /// The batch being appended, whose answers wait for it; at most one.
    in_flight: Option<InFlight>,
    /// The batch being decided while another is appended.
    open: Option<Open>,
    /// Durable batches for the views, so they need not read back and decode what was just
    /// written. When the follower lags and this is full, a batch is not handed over, the
    /// writer says so in `handover`, and the follower reads it from the store instead.
    durable: mpsc::Sender<Arc<Vec<Envelope>>>,
    handover: Arc<Handover>,
}

/// Durable batches waiting for a shop's follower, at most.
const HANDED_BATCHES_MAX: usize = 1024;

/// Events in the batches waiting for a shop's follower, at most.
const HANDED_EVENTS_MAX: usize = 131_072;

/// What the writer and the follower of a shop share about the batches handed over.
///
/// Every durable batch is either handed over or counted in `unhanded_through`, and the
/// writer does one or the other after the store reports the batch durable. So a follower
/// whose checkpoint has reached `unhanded_through` waits for the next batch from the
/// writer (or a `skipped` notice) instead of reading the store.
struct Handover {
    /// Events handed over and not yet taken by the follower.
    events_queued: std::sync::atomic::AtomicUsize,
    /// The last position that will not be handed over: the log's end when the writer
    /// started, or the end of a batch that was not handed over or whose append failed.
    unhanded_through: AtomicU64,
    /// Wakes a waiting follower when `unhanded_through` moves.
    skipped: tokio::sync::Notify,
}

impl Handover {
    fn new(log_end: u64) -> Arc<Handover> {
        Arc::new(Handover {
            events_queued: std::sync::atomic::AtomicUsize::new(0),
            unhanded_through: AtomicU64::new(log_end),
            skipped: tokio::sync::Notify::new(),
        })
    }

    /// Hands a durable batch ending at `last` to the follower or, when the queue is full or
    /// closed, tells it to read the batch from the store. Returns whether it was handed.
    fn hand_over(&self, sender: &mpsc::Sender<Arc<Vec<Envelope>>>, events: Vec<Envelope>, last: u64) -> bool {
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
    fn skip_through(&self, last: u64) {
        self.unhanded_through.fetch_max(last, Ordering::AcqRel);
        self.skipped.notify_one();
    }

    /// The follower took `batch` from the queue.
    fn took(&self, batch: &[Envelope]) {
        self.events_queued.fetch_sub(batch.len(), Ordering::AcqRel);
    }
}

/// What an append task gives back: the batch, and where the log ends or why it failed.
type Appended = (AppendBatch, Result<u64, StoreError>);

/// The batch being decided: its events and rejections so far, and the answers they wait for.
struct Open {
    batch: AppendBatch,
    pending: Vec<Pending>,
    /// Commands decided into it, expiries included.
    commands: usize,
    /// The time it was opened at.
    now: Timestamp,
}

/// A batch being appended by its own task while the writer decides the next one.
struct InFlight {
    task: tokio::task::JoinHandle<Appended>,
    /// The answers of its commands, sent once it is durable.
    pending: Vec<Pending>,
    /// Where the log ends after it.
    last: u64,
    /// The time it was decided at.
    now: Timestamp,
    /// When it was handed to the store, by the monotonic clock (for the stats only).
    launched: std::time::Instant,
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::Receiver<Job>) {
        let tick = Duration::from_millis(self.config.tick_interval_ms.max(1));
        loop {
            // While a batch syncs, the commands that arrive meanwhile are decided into the
            // next one (up to its limit), which is appended as soon as the first is durable.
            let room = self.config.batch_commands_max.saturating_sub(self.open.as_ref().map_or(0, |o| o.commands));
            let next = match self.in_flight.as_mut() {
                Some(in_flight) if room > 0 => tokio::select! {
                    job = receiver.recv() => Ok(job),
                    done = &mut in_flight.task => Err(done),
                },
                Some(in_flight) => Err((&mut in_flight.task).await),
                None if self.open.is_some() => {
                    self.launch().await;
                    continue;
                }
                None => match tokio::time::timeout(tick, receiver.recv()).await {
                    Ok(job) => Ok(job),
                    Err(_) => {
                        self.decide(Vec::new());
                        self.launch().await;
                        continue;
                    }
                },
            };
            let first = match next {
                Ok(job) => job,
                Err(done) => {
                    if self.finish(done).await {
                        self.launch().await;
                    }
                    continue;
                }
            };
            let Some(first) = first else {
                // Closing: a snapshot of where the shop stands makes the next start short.
                self.flush().await;
                self.snapshot(1).await;
                self.wait_for_saving().await;
                break;
            };
            let mut jobs: Vec<(Request, Reply)> = Vec::new();
            let mut read = None;
            match first {
                Job::Read(reader) => read = Some(reader),
                Job::Execute(request, reply) => jobs.push((request, reply)),
            }
            while read.is_none() && jobs.len() < room.max(1) {
                match receiver.try_recv() {
                    Ok(Job::Execute(request, reply)) => jobs.push((request, reply)),
                    Ok(Job::Read(reader)) => read = Some(reader),
                    Err(_) => break,
                }
            }
            if !jobs.is_empty() {
                self.decide(jobs);
            }
            if let Some(reader) = read {
                // Reads see only durable decisions: everything decided before one is synced first.
                self.flush().await;
                self.read(reader);
            }
        }
    }

    fn read(&self, read: Reader) {
        if let Some(core) = &self.core {
            // A reader only sees the state, so one that panics (say, it reached a spilled
            // order through `State::order` rather than `State::fetch_order`) leaves it whole:
            // its caller is answered that the read failed, and the writer goes on.
            let state = &core.state;
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(state))).is_err() {
                tracing::error!(shop = %self.shop, "a read of the shop's state panicked; the writer goes on");
            }
        }
    }

    fn unavailable(&self, reason: &str) -> CommandError {
        CommandError::Unavailable { shop: self.shop.clone(), reason: reason.to_owned() }
    }

    /// Decides `jobs` into the open batch, opening one (with the expiries due now) if needed.
    fn decide(&mut self, jobs: Vec<(Request, Reply)>) {
        let Some(core) = self.core.as_mut() else {
            for (_, reply) in jobs {
                let _ = reply.send(Err(CommandError::Unavailable {
                    shop: self.shop.clone(),
                    reason: "the shop failed and could not be recovered".to_owned(),
                }));
            }
            return;
        };
        let now = self.clock.now().max(core.last_recorded_at);
        let open = match self.open.as_mut() {
            Some(open) => open,
            None => {
                core.idempotency.forget_before(Timestamp(now.0.saturating_sub(self.config.idempotency_window_ms)));
                // Every id was remembered at or before `now`, and what is left ends after the horizon.
                assert!(core.idempotency.generations() as u64 <= GENERATIONS + 2, "idempotency generations bounded");
                let mut batch = AppendBatch { expected_last: core.last_position, ..AppendBatch::default() };
                // The tick: expiries due now are recorded before anything else is decided.
                let mut ticks = 0;
                while core.state.due(now, 1).next().is_some() && ticks < TICKS_PER_BATCH_MAX {
                    ticks += 1;
                    let command_id = CommandId::generated("expire", core.last_position + batch.events.len() as u64 + 1);
                    let request = Request::new("engine", Command::ExpireDue).with_id(command_id);
                    let _ = decide_one(core, &self.shop, &mut batch, now, request);
                }
                self.open.insert(Open { batch, pending: Vec::new(), commands: ticks, now })
            }
        };
        for (request, reply) in jobs {
            let request = match request.command_id {
                Some(_) => request,
                None => {
                    self.generated += 1;
                    let id = CommandId::generated(&generated_prefix(), self.generated);
                    request.with_id(id)
                }
            };
            let answer = decide_one(core, &self.shop, &mut open.batch, now, request);
            open.pending.push(Pending { reply, answer });
            open.commands += 1;
        }
    }

    /// Appends the open batch in a task of its own; its commands are answered when it is
    /// durable ([`Writer::finish`]). Only with no batch in flight: batches append in order.
    async fn launch(&mut self) {
        assert!(self.in_flight.is_none(), "one batch in flight at most");
        let Some(Open { batch, pending, commands, now }) = self.open.take() else { return };
        let Some(core) = self.core.as_ref() else { return };
        let last = core.last_position;
        assert_eq!(last, batch.expected_last + batch.events.len() as u64, "the batch ends where the state does");
        // An idle tick that found nothing due is not a group commit.
        if commands > 0 {
            self.stats.batch_commands.record(commands as f64);
            self.stats.batch_events.record(batch.events.len() as f64);
        }
        if batch.events.is_empty() && batch.rejections.is_empty() {
            for p in pending {
                let _ = p.reply.send(p.answer);
            }
        } else {
            let (store, shop) = (self.store.clone(), self.shop.clone());
            // One hand-off to a blocking thread, which appends and syncs, and one back.
            let runtime = tokio::runtime::Handle::current();
            let task = tokio::task::spawn_blocking(move || {
                let result = store.append_blocking(&runtime, &shop, &batch);
                (batch, result)
            });
            let launched = std::time::Instant::now();
            self.in_flight = Some(InFlight { task, pending, last, now, launched });
        }
        // While the batch syncs: the orders this batch froze leave memory. A failure keeps
        // them in memory, which is correct, only larger, and the next batch tries again.
        if let Some(core) = self.core.as_mut() {
            let spilled = core.state.spill_orders();
            self.spill_health.note(&self.shop, "the orders", &spilled);
            if let Ok(spilled) = spilled {
                self.orders_spilled.store(spilled as u64, Ordering::Release);
            }
        }
        let every = self.config.snapshots.as_ref().map_or(u64::MAX, |c| c.every_events.max(1));
        // While one is being written the next waits: settling for it now would only stop
        // the pipeline, batch after batch.
        if last >= self.last_snapshot.saturating_add(every) && !self.saving() {
            self.settle().await;
            self.snapshot(every).await;
        }
    }

    /// Makes everything decided so far durable and answered.
    async fn flush(&mut self) {
        if self.settle().await {
            self.launch().await;
            self.settle().await;
        }
    }

    /// Waits for the batch in flight, if any, and answers its commands; false when it failed
    /// (every command of it was answered `Unavailable` and the state rebuilt from the log).
    async fn settle(&mut self) -> bool {
        let Some(in_flight) = self.in_flight.as_mut() else { return true };
        let done = (&mut in_flight.task).await;
        self.finish(done).await
    }

    /// Answers the commands of the batch in flight, which just finished appending.
    async fn finish(&mut self, done: Result<Appended, tokio::task::JoinError>) -> bool {
        let Some(InFlight { pending, last, now, launched, .. }) = self.in_flight.take() else { return true };
        self.stats.group_commit_s.record(launched.elapsed().as_secs_f64());
        let reason = match done {
            Ok((batch, Ok(appended))) => {
                assert_eq!(appended, last, "the store ends where the batch does");
                self.log_position.store(appended, Ordering::Release);
                for p in pending {
                    let _ = p.reply.send(p.answer);
                }
                if !batch.events.is_empty() {
                    self.handover.hand_over(&self.durable, batch.events, last);
                }
                return true;
            }
            Ok((_, Err(error))) => format!("storage failed, the batch was not written: {error}"),
            Err(error) => format!("storage failed, the append did not finish: {error}"),
        };
        for p in pending {
            let _ = p.reply.send(Err(self.unavailable(&reason)));
        }
        // Some of it may be in the store: the follower reads that far from the store.
        self.handover.skip_through(last);
        // The open batch was decided on top of the failed one: none of it can stand.
        if let Some(open) = self.open.take() {
            for p in open.pending {
                let _ = p.reply.send(Err(self.unavailable("storage failed, an earlier batch was not written")));
            }
        }
        self.core = Core::recover(&self.store, &self.shop, &self.config, now).await.ok();
        false
    }

    /// Whether an engine snapshot is still being written.
    fn saving(&self) -> bool {
        self.saving.as_ref().is_some_and(|saving| !saving.is_finished())
    }

    /// Takes an engine snapshot when at least `min_events` events passed since the last one.
    /// The writer only encodes it; a blocking task writes and syncs the file while the
    /// writer goes on deciding, after the one before it (if any) is written. A failed
    /// snapshot is only a slower next start: it is logged, never fatal.
    async fn snapshot(&mut self, min_events: u64) {
        let (Some(core), Some(config)) = (self.core.as_ref(), self.config.snapshots.as_ref()) else { return };
        if core.last_position < self.last_snapshot.saturating_add(min_events) {
            return;
        }
        let position = core.last_position;
        let started = std::time::Instant::now();
        let encoded = async {
            let (head_position, head) = self.store.head(&self.shop).await.map_err(|e| e.to_string())?;
            if head_position != position {
                return Err(format!("the log ends at {head_position}, not {position}"));
            }
            let buffer = Vec::with_capacity(snapshot_bytes_expected(self.image_bytes_last));
            let state = core.encode_image(head, buffer).map_err(|e| e.to_string())?;
            let snapshots = config.store(&self.shop, "engine").map_err(|e| e.to_string())?;
            // Only where the spilled orders are: they are read back and written after the
            // image, off the writer.
            let spilled = core.state.spilled_orders();
            Ok((snapshots, Snapshot { position, schema_version: ENGINE_SNAPSHOT_SCHEMA, state }, spilled))
        }
        .await;
        let (snapshots, mut snapshot, spilled) = match encoded {
            Ok(encoded) => encoded,
            Err(error) => {
                tracing::warn!(shop = %self.shop, position, %error, "engine snapshot not written");
                return;
            }
        };
        let encode_ms = started.elapsed().as_millis() as u64;
        self.image_bytes_last = snapshot.state.len();
        self.wait_for_saving().await;
        let shop = self.shop.clone();
        self.saving = Some(tokio::task::spawn_blocking(move || {
            // Each spilled order's bytes and a key of at most a few dozen bytes.
            snapshot.state.reserve(spilled.entry_bytes() + spilled.len() * 48);
            let saved = postcard::to_extend(&spilled, std::mem::take(&mut snapshot.state))
                .map_err(|e| format!("the spilled orders: {e}"))
                .and_then(|state| {
                    snapshot.state = state;
                    snapshots.save(&snapshot).map_err(|e| e.to_string())
                });
            let bytes = snapshot.state.len();
            match saved {
                Ok(_) => {
                    tracing::info!(shop = %shop, position, bytes, encode_ms, total_ms = started.elapsed().as_millis() as u64, "engine snapshot written")
                }
                Err(error) => tracing::warn!(shop = %shop, position, %error, "engine snapshot not written"),
            }
        }));
        // The next is due `every_events` after this one, whether or not its write succeeds.
        self.last_snapshot = position;
    }

    /// Waits until the snapshot being written, if any, is written or has failed.
    async fn wait_for_saving(&mut self) {
        if let Some(saving) = self.saving.take()
            && let Err(error) = saving.await
        {
            tracing::warn!(shop = %self.shop, %error, "engine snapshot write did not finish");
        }
    }
}

/// Keeps a shop's views up to date by following its log, and snapshots them.
struct Follower {
    shop: ShopId,
    store: Arc<dyn EventStore>,
    /// Durable batches from the writer, in log order; some may be missing (see `Writer::durable`).
    handed: mpsc::Receiver<Arc<Vec<Envelope>>>,
    handover: Arc<Handover>,
    /// A handed batch that starts after the checkpoint: the gap is read from the store first.
    held: Option<Arc<Vec<Envelope>>>,
    /// Whether the writer may still hand batches over.
    handed_open: bool,
    views: Arc<RwLock<Views>>,
    checkpoint: watch::Sender<u64>,
    snapshots: Option<(SnapshotStore, u64)>,
    last_snapshot: u64,
    /// The size of the last view snapshot, to reserve for the next.
    snapshot_bytes_last: usize,
    /// Whether spilling the ledger fails.
    spill_health: SpillHealth,
    /// Where the ledger spills what it keeps encoded; None keeps it in memory.
    spill_dir: Option<PathBuf>,
}

/// Whether a spill's last move failed, so that a failing spill (a full disk, say) is
/// logged when it starts failing and when it works again, not after every batch. What did
/// not move stays in memory, which is correct, only larger, and the next batch tries again.
#[derive(Default)]
struct SpillHealth(AtomicBool);

impl SpillHealth {
    /// Logs the `result` of spilling `what` of `shop` when it differs from the last one's
    /// (the first is taken to have worked); returns whether it logged.
    fn note<T>(&self, shop: &ShopId, what: &str, result: &std::io::Result<T>) -> bool {
        let failed = result.is_err();
        if self.0.swap(failed, Ordering::Relaxed) == failed {
            return false;
        }
        match result {
            Err(error) => tracing::warn!(shop = %shop, %error, "{what} could not be spilled; they stay in memory"),
            Ok(_) => tracing::info!(shop = %shop, "{what} are spilled again"),
        }
        true
    }
}

/// Events a follower folds at once; readers wait at most for one page.
const FOLLOW_PAGE_EVENTS: usize = 4096;

impl Follower {
    /// A follower with empty views; [`Follower::run`] first restores the newest usable view
    /// snapshot, so opening the engine never waits for the views.
    async fn start(
        shop: &ShopId,
        store: Arc<dyn EventStore>,
        config: &EngineConfig,
        handed: mpsc::Receiver<Arc<Vec<Envelope>>>,
        handover: Arc<Handover>,
    ) -> Result<Follower, OpenError> {
        let snapshots = match &config.snapshots {
            Some(c) => {
                let snapshot_store = c.store(shop, "views").map_err(|e| StoreError::Io(e.to_string()))?;
                Some((snapshot_store, c.every_events.max(1)))
            }
            None => None,
        };
        Ok(Follower {
            shop: shop.clone(),
            store,
            handed,
            handover,
            held: None,
            handed_open: true,
            views: Arc::new(RwLock::new(Views::new())),
            checkpoint: watch::channel(0).0,
            snapshots,
            last_snapshot: 0,
            snapshot_bytes_last: 0,
            spill_health: SpillHealth::default(),
            spill_dir: config.spill_dir.clone(),
        })
    }

    /// Replaces the empty views with the newest usable view snapshot, if any.
    async fn restore(&mut self) {
        let Some((snapshot_store, _)) = &self.snapshots else { return };
        let shop = &self.shop;
        let last = match self.store.last_position(shop).await {
            Ok(last) => last,
            Err(error) => {
                tracing::warn!(shop = %shop, %error, "view snapshots not read; rebuilding");
                return;
            }
        };
        let snapshot_store = snapshot_store.clone();
        let loaded =
            tokio::task::spawn_blocking(move || snapshot_store.load_newest_at_most(VIEWS_SNAPSHOT_SCHEMA, last))
                .await
                .map_err(|e| e.to_string())
                .and_then(|loaded| loaded.map_err(|e| e.to_string()));
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::warn!(shop = %shop, %error, "view snapshots unreadable; rebuilding");
                return;
            }
        };
        for skipped in &loaded.skipped {
            tracing::warn!(shop = %shop, path = %skipped.path.display(), reason = %skipped.reason, "view snapshot skipped");
        }
        let Some(snapshot) = loaded.snapshot else { return };
        match Views::decode(&snapshot.state, snapshot.position) {
            Some(restored) => {
                *self.views.write().unwrap_or_else(std::sync::PoisonError::into_inner) = restored;
                self.last_snapshot = snapshot.position;
                self.checkpoint.send_replace(snapshot.position);
            }
            None => {
                tracing::warn!(shop = %shop, position = snapshot.position, "view snapshot does not decode; rebuilding")
            }
        }
    }

    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.restore().await;
        if let Some(dir) = &self.spill_dir {
            // The views are restored or empty: from here on, the ledger spills after every fold.
            match Spill::create_in(dir) {
                Ok(spill) => {
                    let mut views = self.views.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                    views.attach_spill(Arc::new(spill));
                }
                Err(error) => tracing::warn!(shop = %self.shop, %error, "no spill for the views; they stay in memory"),
            }
        }
        loop {
            if *shutdown.borrow() {
                let checkpoint = *self.checkpoint.borrow();
                self.snapshot(checkpoint, 1).await;
                return;
            }
            let at = *self.checkpoint.borrow();
            // A handed batch that continues the views is folded as it is; one that starts
            // later waits while the gap is read from the store; one already folded is dropped.
            let handed = match self.held.take() {
                Some(batch) => Some(batch),
                None => self.handed.try_recv().ok().inspect(|batch| self.handover.took(batch)),
            };
            let handed = handed.filter(|batch| batch.last().is_some_and(|e| e.position > at));
            let continues = |batch: &Vec<Envelope>| batch.first().is_some_and(|e| e.position <= at + 1);
            let folded = match handed {
                Some(batch) if continues(&batch) => {
                    let start = batch.iter().position(|e| e.position == at + 1).unwrap_or(batch.len());
                    self.fold(&batch[start..])
                }
                None if self.handed_open && at >= self.handover.unhanded_through.load(Ordering::Acquire) => {
                    // Whatever follows will be handed over, or the writer says it was not.
                    tokio::select! {
                        batch = self.handed.recv() => self.received(batch),
                        _ = self.handover.skipped.notified() => {}
                        changed = shutdown.changed() => {
                            if changed.is_err() {
                                return;
                            }
                        }
                    }
                    continue;
                }
                later => {
                    // Read only the gap before a held batch: the batch itself is in memory.
                    let gap = match later.as_ref().and_then(|batch| batch.first()) {
                        Some(first) => Some(first.position - at - 1),
                        // Read no further than what will not be handed over.
                        None if self.handed_open => {
                            Some(self.handover.unhanded_through.load(Ordering::Acquire).saturating_sub(at))
                                .filter(|gap| *gap > 0)
                        }
                        None => None,
                    };
                    let limit = gap.map_or(FOLLOW_PAGE_EVENTS, |gap| usize::try_from(gap).unwrap_or(usize::MAX));
                    self.held = later;
                    let page = match self.store.read_from(&self.shop, at, limit.min(FOLLOW_PAGE_EVENTS)).await {
                        Ok(page) => page,
                        Err(error) => {
                            tracing::error!(shop = %self.shop, %error, "views stopped following the log");
                            return;
                        }
                    };
                    if page.is_empty() {
                        if self.held.is_none() {
                            tokio::select! {
                                batch = self.handed.recv(), if self.handed_open => self.received(batch),
                                _ = self.store.wait_for(&self.shop, at, Duration::from_secs(1)) => {}
                                changed = shutdown.changed() => {
                                    if changed.is_err() {
                                        // The engine is gone without closing: nothing more comes.
                                        return;
                                    }
                                }
                            }
                        }
                        continue;
                    }
                    self.fold(&page)
                }
            };
            match folded {
                Ok(checkpoint) => {
                    self.checkpoint.send_replace(checkpoint);
                    let every = self.snapshots.as_ref().map_or(u64::MAX, |(_, every)| *every);
                    self.snapshot(checkpoint, every).await;
                }
                Err(error) => {
                    tracing::error!(shop = %self.shop, %error, "views stopped following the log");
                    return;
                }
            }
        }
    }

    /// Holds a batch the writer handed over, or notes that it will hand over no more.
    fn received(&mut self, batch: Option<Arc<Vec<Envelope>>>) {
        match batch {
            Some(batch) => {
                self.handover.took(&batch);
                self.held = Some(batch);
            }
            None => self.handed_open = false,
        }
    }

    /// Folds `envelopes`, which continue the views, and returns the new checkpoint. What the
    /// fold touches comes back from the spill first, and what it froze goes out after.
    fn fold(&self, envelopes: &[Envelope]) -> Result<u64, String> {
        let mut views = self.views.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        views.load_for(envelopes).map_err(|e| format!("the ledger's books could not be read back: {e}"))?;
        let checkpoint = views.catch_up(envelopes, emporium_projections::AsOf::End).map(|_| views.checkpoint());
        self.spill_health.note(&self.shop, "the ledger's books and journal", &views.spill());
        checkpoint.map_err(|gap| gap.to_string())
    }

    /// Writes a view snapshot when at least `min_events` events were folded since the last.
    async fn snapshot(&mut self, checkpoint: u64, min_events: u64) {
        let Some((snapshots, _)) = &self.snapshots else { return };
        if checkpoint < self.last_snapshot.saturating_add(min_events) {
            return;
        }
        let buffer = Vec::with_capacity(snapshot_bytes_expected(self.snapshot_bytes_last));
        let encoded = self.views.read().unwrap_or_else(std::sync::PoisonError::into_inner).encode(buffer);
        let state = match encoded {
            Ok(state) => state,
            Err(error) => {
                tracing::warn!(shop = %self.shop, checkpoint, %error, "view snapshot not written");
                return;
            }
        };
        self.snapshot_bytes_last = state.len();
        let snapshot = Snapshot { position: checkpoint, schema_version: VIEWS_SNAPSHOT_SCHEMA, state };
        let snapshots = snapshots.clone();
        match tokio::task::spawn_blocking(move || snapshots.save(&snapshot)).await {
            Ok(Ok(_)) => self.last_snapshot = checkpoint,
            Ok(Err(error)) => tracing::warn!(shop = %self.shop, checkpoint, %error, "view snapshot not written"),
            Err(error) => tracing::warn!(shop = %self.shop, checkpoint, %error, "view snapshot not written"),
        }
    }
}

/// Room to reserve for a snapshot whose last one took `last_bytes`: twice as much, for what
/// was added since (a promotion day's image grows by half between two), and nothing before
/// the first. Room never written to is address space, not resident memory.
fn snapshot_bytes_expected(last_bytes: usize) -> usize {
    last_bytes.saturating_mul(2)
}

/// The stream and stream version of each of `events`, which the state has just applied.
/// An order's stream counts in the order itself ([`crate::domain::state::Order::stream_version`]),
/// now at its last event here: earlier events of the same order get their version by
/// counting back. Other streams (SKUs, checkout holds) count in `core.stream_versions`.
fn stream_versions(core: &mut Core, events: &[Event]) -> Vec<(CompactString, u64)> {
    let mut versions = vec![0; events.len()];
    // Events of each order after the one at hand, in this command: none when there is one
    // event, as for most commands, so the map is only built for the others.
    let mut later: IdMap<&OrderId, u64> = IdMap::default();
    for (index, event) in events.iter().enumerate().rev() {
        if let Subject::Order(order_id) = event.subject() {
            let Ok(Some(order)) = core.state.order(order_id) else {
                panic!("an applied event's order {order_id} exists")
            };
            let after = match events.len() {
                1 => 0,
                _ => {
                    let after = later.entry(order_id).or_insert(0);
                    *after += 1;
                    *after - 1
                }
            };
            assert!(order.stream_version > after, "order {order_id} counts every event applied");
            versions[index] = order.stream_version - after;
        }
    }
    let streams = events.iter().zip(versions).map(|(event, version)| {
        let stream = stream_of(event);
        if matches!(event.subject(), Subject::Order(_)) {
            return (stream, version);
        }
        let counted = match core.stream_versions.get_mut(&stream) {
            Some(counted) => counted,
            None => core.stream_versions.entry(stream.clone()).or_insert(0),
        };
        *counted += 1;
        (stream, *counted)
    });
    streams.collect()
}

/// Decides one request into `batch`: its events, or its rejection, and remembers its outcome.
fn decide_one(
    core: &mut Core,
    shop: &ShopId,
    batch: &mut AppendBatch,
    now: Timestamp,
    request: Request,
) -> Result<Accepted, CommandError> {
    let Some(command_id) = request.command_id else { unreachable!("every request has an id by now") };
    let fingerprint = fingerprint(&request.command);
    if let Some(known) = core.idempotency.get(&command_id) {
        if known.fingerprint != fingerprint {
            return Err(CommandError::IdempotencyConflict { command_id });
        }
        return match &known.outcome {
            Outcome::Appended { first, more } => {
                let positions = Some(Positions { first: *first, last: first + u64::from(*more) });
                Ok(Accepted { command_id, positions, replayed: true, events: Vec::new() })
            }
            Outcome::Unchanged => Ok(Accepted { command_id, positions: None, replayed: true, events: Vec::new() }),
            Outcome::Rejected(rejection) => Err(CommandError::Rejected((**rejection).clone())),
        };
    }
    // The shell's part: what the command may read comes back from the spill first, so that
    // deciding and applying never do IO. A failed read changes nothing and is not remembered.
    if let Err(error) = core.state.load_for(now, &request.command) {
        let reason = format!("an order could not be read back from the spill: {error}");
        return Err(CommandError::Unavailable { shop: shop.clone(), reason });
    }
    match core.state.execute(now, &request.command) {
        Ok(events) => {
            // Once per command, inline when short: every event's envelope clones them.
            let correlation_id = CompactString::from(request.correlation_id.as_deref().unwrap_or(command_id.as_str()));
            let actor = CompactString::from(request.actor.as_str());
            let first = core.last_position + 1;
            let streams = stream_versions(core, &events);
            for (event, (stream, stream_version)) in events.iter().cloned().zip(streams) {
                core.last_position += 1;
                batch.events.push(Envelope {
                    position: core.last_position,
                    stream,
                    stream_version,
                    recorded_at: now,
                    command_id: command_id.clone(),
                    fingerprint,
                    correlation_id: correlation_id.clone(),
                    actor: actor.clone(),
                    event,
                });
            }
            core.last_recorded_at = now;
            let positions = (core.last_position >= first).then_some(Positions { first, last: core.last_position });
            let known = Known { fingerprint, outcome: Outcome::accepted(positions) };
            core.idempotency.remember_new(now, command_id.clone(), known);
            Ok(Accepted { command_id, positions, replayed: false, events })
        }
        Err(rejection) => {
            batch.rejections.push(RejectionRecord {
                command_id: command_id.clone(),
                fingerprint,
                rejection: rejection.clone(),
                recorded_at: now,
            });
            let known = Known { fingerprint, outcome: Outcome::Rejected(core.shared_shortages.share(&rejection)) };
            core.idempotency.remember_new(now, command_id, known);
            Err(CommandError::Rejected(rejection))
        }
    }
}

/// A prefix unique to this process run, for generated command ids.
fn generated_prefix() -> String {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PREFIX
        .get_or_init(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            format!("gen-{nanos:x}-{:x}", std::process::id())
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::store::MemoryStore;
    use crate::rehearsal::sim::{self, DayConfig};

    /// A generated day's events as envelopes, in batches of 50.
    fn batches() -> Vec<Vec<Envelope>> {
        let envelopes = sim::day_envelopes(&DayConfig::new(60, 5, crate::rehearsal::demo::DAY_START), "t");
        envelopes.chunks(50).map(<[Envelope]>::to_vec).collect()
    }

    /// The follower folds exactly the log, whichever durable batches the writer handed
    /// over, and reads from the store only the batches it did not: a batch that continues
    /// the views is folded as handed, a gap before one is read from the store, and batches
    /// already folded are skipped.
    #[tokio::test]
    async fn the_views_fold_the_log_reading_only_what_was_not_handed_over() {
        // `handed`: the batches handed over as they are appended, the rest skipped;
        // `again`: batches handed over once more afterwards, out of order.
        let check = |handed: &[usize], again: &[usize]| {
            let (handed, again) = (handed.to_vec(), again.to_vec());
            async move {
                let shop = ShopId::new("s").expect("shop");
                let store = Arc::new(MemoryStore::new());
                store.create_shop(&shop).await.expect("created");
                let batches = batches();
                assert!(batches.len() > 8, "{} batches", batches.len());
                let (durable, receiver) = mpsc::channel(HANDED_BATCHES_MAX);
                let handover = Handover::new(0);
                let (mut expected, mut skipped_events) = (Views::new(), 0);
                for (index, batch) in batches.iter().enumerate() {
                    let append = AppendBatch {
                        expected_last: batch[0].position - 1,
                        events: batch.clone(),
                        rejections: Vec::new(),
                    };
                    let last = store.append(&shop, &append).await.expect("appended");
                    expected.catch_up(batch, emporium_projections::AsOf::End).expect("folds");
                    if handed.contains(&index) {
                        assert!(handover.hand_over(&durable, batch.clone(), last), "room");
                    } else {
                        handover.skip_through(last);
                        skipped_events += batch.len();
                    }
                }
                for index in &again {
                    let last = batches[*index].last().map_or(0, |e| e.position);
                    assert!(handover.hand_over(&durable, batches[*index].clone(), last), "room");
                }
                let dyn_store: Arc<dyn EventStore> = store.clone();
                let follower = Follower::start(&shop, dyn_store, &EngineConfig::default(), receiver, handover.clone())
                    .await
                    .expect("starts");
                let (views, mut at) = (follower.views.clone(), follower.checkpoint.subscribe());
                let (stop, stopping) = watch::channel(false);
                let running = tokio::spawn(follower.run(stopping));
                let end = store.last_position(&shop).await.expect("end");
                at.wait_for(|at| *at >= end).await.expect("the views reach the end");
                stop.send_replace(true);
                running.await.expect("stops");
                drop(durable);
                let views = views.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                assert_eq!(views.checkpoint(), end, "handed {handed:?}");
                assert_eq!(views.hashes(), expected.hashes(), "handed {handed:?}");
                assert_eq!(store.events_read(), skipped_events, "events read from the store, handed {handed:?}");
            }
        };
        let every: Vec<usize> = (0..batches().len()).collect();
        check(&[], &[]).await;
        // Everything from memory: nothing is read back.
        check(&every, &[]).await;
        // Gaps: the first batches were not handed, nor the fifth, nor the last ones.
        check(&[2, 3, 5, 6], &[]).await;
        // Handed again, out of order: batches already folded are dropped.
        check(&every, &[1, 0, 3, 2, 8]).await;
    }

    /// Refusals for equal shortages share one allocation; any other refusal, or a different
    /// shortage, gets its own; and the table never holds more than its bound.
    #[test]
    fn refusals_for_the_same_shortage_are_remembered_once() {
        let short = |sku: &str, requested: u64| Rejection::InsufficientStock {
            shortages: vec![Shortage { sku: sku.into(), requested, available: 0 }],
        };
        let mut shared = SharedShortages::default();
        let (first, again) = (shared.share(&short("HOT", 1)), shared.share(&short("HOT", 1)));
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(*first, short("HOT", 1));
        let other = shared.share(&short("HOT", 2));
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(*other, short("HOT", 2));
        let unknown = Rejection::UnknownOrder { order_id: "O-1".into() };
        let (one, two) = (shared.share(&unknown), shared.share(&unknown));
        assert!(!Arc::ptr_eq(&one, &two), "only shortages are shared");
        assert_eq!((*one == unknown, shared.by_shortages.len()), (true, 2));
        for requested in 0..SHARED_SHORTAGES_MAX as u64 + 10 {
            assert_eq!(*shared.share(&short("COLD", requested)), short("COLD", requested));
            assert!(shared.by_shortages.len() <= SHARED_SHORTAGES_MAX);
        }
    }

    /// A spill that keeps failing is logged once when it starts and once when it works
    /// again, not after every batch.
    #[test]
    fn a_failing_spill_is_logged_when_it_starts_and_when_it_ends() {
        let health = SpillHealth::default();
        let (worked, failed) = (Ok(()), Err(std::io::Error::other("disk full")));
        let results = [&worked, &failed, &failed, &failed, &worked, &worked, &failed];
        let logged: Vec<bool> = results.iter().map(|result| health.note(&ShopId::main(), "orders", result)).collect();
        assert_eq!(logged, [false, true, false, false, true, false, true]);
    }
}
