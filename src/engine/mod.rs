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
//!   and of the batch decided behind it, gets [`CommandError::Unavailable`]. A read first
//!   makes everything decided durable.
//! - **Failures heal.** A shop whose store failed is [`ShopHealth::Healing`]: its commands
//!   get [`CommandError::Unavailable`] at once while its writer retries, 100 ms after the
//!   failure and then twice as long each time up to 5 s, to heal the store
//!   ([`EventStore::heal`]) and rebuild the shop's state from its log, verified; then it
//!   serves again. The failure and the healing are logged once each, at error and info
//!   level. A shop whose log fails verification is [`ShopHealth::Quarantined`]; the others
//!   are served. [`Engine::health`] reports every shop's.
//! - **Bounded shops.** At most `shops_max` shops; creating one more is refused and
//!   creates nothing, and so does a creation that fails.
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
//!
//! The files, from the outside in:
//! - this one: the [`Engine`] facade, which opens the shops, routes requests to their
//!   writers, and reads their views;
//! - `api`: what callers exchange with it ([`Request`], [`Accepted`], [`CommandError`],
//!   [`EngineStats`], [`ShopProgress`]);
//! - `clock`: the engine's time ([`Clock`], [`SystemClock`], [`ManualClock`]);
//! - `config`: [`EngineConfig`], [`SnapshotConfig`] and the snapshot schema versions;
//! - `writer`: a shop's writer, the pipeline from its queue to its log: deciding, group
//!   commit, answers, ticks and engine snapshots;
//! - `idempotency`: the command ids remembered and their outcomes;
//! - `recovery`: a shop's in-memory side rebuilt from a snapshot and the log, and the
//!   snapshot's image of it;
//! - `handover`: the durable batches the writer hands to the follower;
//! - `follower`: a shop's follower, which folds the log into its views and snapshots them;
//! - [`remembered`]: ids kept in generations of engine time; [`metrics`]: counters and
//!   histograms;
//! - [`witness`]: where each shop's log ended, kept outside the log, and the refusal of a
//!   log that ends before it.

mod api;
mod clock;
mod config;
mod follower;
mod handover;
mod idempotency;
pub mod metrics;
mod recovery;
pub mod remembered;
pub mod witness;
mod writer;

pub use api::{
    Accepted, CommandError, EngineStats, LABEL_LENGTH_MAX, OpenError, Positions, Request, ShopHealth, ShopProgress,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{ENGINE_SNAPSHOT_SCHEMA, EngineConfig, SHOPS_MAX_DEFAULT, SnapshotConfig, VIEWS_SNAPSHOT_SCHEMA};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::domain::command::Command;
use crate::domain::ids::ShopId;
use crate::engine::api::check_label;
use crate::engine::follower::Follower;
use crate::engine::handover::{HANDED_BATCHES_MAX, Handover};
use crate::engine::metrics::Histogram;
use crate::engine::recovery::Core;
use crate::engine::writer::{Job, Reader, Writer};
use crate::log::store::{EventStore, StoreError};
use crate::memory::State;
use crate::memory::spill::Spill;
use crate::views::Views;

/// A shop as the engine routes to it: served by its writer and follower, or refused.
enum ShopEntry {
    Serving {
        sender: mpsc::Sender<Job>,
        views: Arc<RwLock<Views>>,
        views_at: watch::Receiver<u64>,
        log_position: Arc<AtomicU64>,
        orders_spilled: Arc<AtomicU64>,
        /// What its writer publishes: serving, or healing.
        health: Arc<std::sync::Mutex<ShopHealth>>,
    },
    Refused(String),
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
    /// Held while a shop is created.
    creating: tokio::sync::Mutex<()>,
    witness: Option<Arc<witness::Witness>>,
    witness_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Engine {
    /// Recovers every shop from its log and starts its writer. A shop whose log fails
    /// verification, or ends before its witness ([`witness`]), is refused (its commands get
    /// [`CommandError::Unavailable`] naming the position); the others are served. Must run
    /// inside a tokio runtime.
    pub async fn open(
        store: Arc<dyn EventStore>,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
    ) -> Result<Engine, OpenError> {
        assert!(config.batch_commands_max > 0 && config.queue_commands_max > 0);
        let witness = match &config.witness {
            Some(path) => Some(Arc::new(witness::Witness::open(path)?)),
            None => None,
        };
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
            creating: tokio::sync::Mutex::new(()),
            witness,
            witness_task: std::sync::Mutex::new(None),
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
        let mut shops = store.shops().await?;
        // A witnessed shop whose log is gone is started too, and refused.
        shops.extend(engine.witness.iter().flat_map(|w| w.shops()));
        shops.sort();
        shops.dedup();
        for shop in shops {
            engine.start(&shop).await?;
        }
        if let Some(witness) = &engine.witness {
            let task = tokio::spawn(witness.clone().run(store, engine.shutdown.subscribe()));
            *engine.witness_task.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(task);
        }
        Ok(engine)
    }

    async fn start(&self, shop: &ShopId) -> Result<(), OpenError> {
        let recovered = match Core::recover(&self.store, shop, &self.config, self.clock.now()).await {
            Ok(core) => self.vouch(shop).await.map(|()| core),
            Err(error) => Err(error),
        };
        let entry = match recovered {
            Ok(core) => {
                self.recovered_from
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(shop.clone(), core.resumed_from);
                let (sender, receiver) = mpsc::channel(self.config.queue_commands_max);
                let (durable, handed) = mpsc::channel(HANDED_BATCHES_MAX);
                let handover = Handover::new(core.last_position);
                let writer = Writer::new(self, shop, core, durable, handover.clone());
                let (log_position, orders_spilled) = writer.published();
                let health = writer.health();
                if let Some(witness) = &self.witness {
                    witness.watch(shop, log_position.clone());
                }
                let follower = Follower::start(shop, self.store.clone(), &self.config, handed, handover).await?;
                let (views, views_at) = (follower.views.clone(), follower.checkpoint.subscribe());
                let mut writers = self.writers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                writers.push(tokio::spawn(writer.run(receiver)));
                writers.push(tokio::spawn(follower.run(self.shutdown.subscribe())));
                ShopEntry::Serving { sender, views, views_at, log_position, orders_spilled, health }
            }
            Err(StoreError::Corrupt { corruption, .. }) => ShopEntry::Refused(corruption.to_string()),
            Err(error) => return Err(error.into()),
        };
        self.shops.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(shop.clone(), entry);
        Ok(())
    }

    /// Whether `shop`'s log reaches where the witness says it ended, with the record
    /// witnessed there; a [`StoreError::Corrupt`] naming both positions when not.
    async fn vouch(&self, shop: &ShopId) -> Result<(), StoreError> {
        let witnessed = self.witnessed(shop);
        witness::compare(self.store.as_ref(), shop, witnessed).await?.into_error(shop)
    }

    /// Where the witness says `shop`'s log ended when the engine opened it, or since;
    /// `None` without a witness or a shop it names.
    pub fn witnessed(&self, shop: &ShopId) -> Option<witness::Witnessed> {
        self.witness.as_ref().and_then(|w| w.witnessed(shop))
    }

    /// Creates a shop with an empty log, or does nothing if it exists. Refused, creating
    /// nothing, when the engine serves `shops_max` shops already. A creation that fails
    /// takes back what it made of the shop, so that a shop either exists (and is served) or
    /// does not; only when that too fails (the store down) may it be found at the next start.
    pub async fn create_shop(&self, shop: &ShopId) -> Result<(), OpenError> {
        // One creation at a time: the limit is checked against shops that exist.
        let _creating = self.creating.lock().await;
        {
            let shops = self.shops.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if shops.contains_key(shop) {
                return Ok(());
            }
            if shops.len() >= self.config.shops_max {
                return Err(OpenError::ShopLimitReached { shops_max: self.config.shops_max });
            }
        }
        let created = match self.store.create_shop(shop).await {
            Ok(()) => self.start(shop).await,
            Err(error) => Err(error.into()),
        };
        if let Err(error) = &created {
            self.shops.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(shop);
            match self.store.remove_empty_shop(shop).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(shop = %shop, %error, "a shop whose creation failed could not be taken back")
                }
                Err(removal) => {
                    tracing::warn!(shop = %shop, %error, %removal, "a shop whose creation failed could not be taken back")
                }
            }
        }
        created
    }

    /// Every shop's health: serving, healing (since when, and why), or quarantined (why).
    pub fn health(&self) -> std::collections::BTreeMap<ShopId, ShopHealth> {
        let shops = self.shops.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        shops
            .iter()
            .map(|(shop, entry)| {
                let health = match entry {
                    ShopEntry::Serving { health, .. } => {
                        health.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
                    }
                    ShopEntry::Refused(reason) => ShopHealth::Quarantined { reason: reason.clone() },
                };
                (shop.clone(), health)
            })
            .collect()
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
            Some(ShopEntry::Serving { sender, health, .. }) => {
                match &*health.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
                    ShopHealth::Serving => Ok(sender.clone()),
                    ShopHealth::Healing { reason, .. } | ShopHealth::Quarantined { reason } => {
                        Err(CommandError::Unavailable { shop: shop.clone(), reason: reason.clone() })
                    }
                }
            }
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
        answer.await.unwrap_or_else(|_| Err(self.stopped(shop)))
    }

    /// Why a shop's writer dropped a job: it heals (or is quarantined), or it stopped.
    fn stopped(&self, shop: &ShopId) -> CommandError {
        let reason = match self.health().remove(shop) {
            Some(ShopHealth::Healing { reason, .. } | ShopHealth::Quarantined { reason }) => reason,
            _ => "the shop's writer stopped".to_owned(),
        };
        CommandError::Unavailable { shop: shop.clone(), reason }
    }

    /// Records every expired hold and unpaid order of `shop` now.
    pub async fn tick(&self, shop: &ShopId) -> Result<Accepted, CommandError> {
        self.execute(shop, Request::new("engine", Command::ExpireDue)).await
    }

    /// Runs `read` on the shop's state as of every command answered so far. It runs on the
    /// shop's writer, between two batches: it should be short, and must not panic (a panic
    /// would stop the writer).
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
        answer.await.map_err(|_| self.stopped(shop))
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
        // Every writer has finished: the witness takes where each log ends now.
        if let Some(witness) = &self.witness {
            let task = self.witness_task.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            if let Some(task) = task {
                let _ = task.await;
            }
            witness.write(self.store.as_ref()).await;
        }
    }
}
