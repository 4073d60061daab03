//! A shop's writer: the pipeline from the queue to the log. It takes up to
//! `batch_commands_max` queued commands, decides each against the state ([`decide_one`]:
//! the remembered outcome of a known id, or the rules, then the state applies the events),
//! and appends the batch in a task of its own ([`Writer::launch`]) while it decides the next
//! ([`Open`], [`InFlight`]). A batch opens with the expiries due (the tick), which an idle
//! shop also records every `tick_interval_ms`. Answers wait in [`Pending`] until their batch is durable; a
//! failed append answers them `Unavailable`, and the writer heals ([`Healing`]): it answers
//! every command `Unavailable` while it retries, with a backoff, to heal the store and
//! rebuild the state from the log. Durable
//! batches go to the follower ([`crate::engine::handover`]), and every `every_events` the
//! writer encodes an engine snapshot that a blocking task writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use compact_str::CompactString;
use emporium_snapshots::Snapshot;
use tokio::sync::{mpsc, oneshot};

use crate::domain::command::Command;
use crate::domain::ids::{CommandId, ShopId, Timestamp};
use crate::engine::Engine;
use crate::engine::api::{Accepted, CommandError, EngineStats, Positions, Request, ShopHealth};
use crate::engine::clock::Clock;
use crate::engine::config::{ENGINE_SNAPSHOT_SCHEMA, EngineConfig, snapshot_bytes_expected};
use crate::engine::follower::SpillHealth;
use crate::engine::handover::Handover;
use crate::engine::idempotency::{Known, Outcome};
use crate::engine::recovery::Core;
use crate::engine::remembered::GENERATIONS;
use crate::log::record::{Envelope, Fingerprint, fingerprint, stream_of};
use crate::log::store::{AppendBatch, EventStore, RejectionRecord, StoreError};
use crate::memory::State;

/// Where a command's answer goes.
type Reply = oneshot::Sender<Result<Accepted, CommandError>>;

/// A read of the shop's state, run by its writer between two batches; it must not panic.
pub(super) type Reader = Box<dyn FnOnce(&State) + Send>;

/// What the engine queues for a shop's writer.
pub(super) enum Job {
    /// A command to decide, and where its answer goes.
    Execute(Request, Reply),
    /// A read of the state as of every command answered.
    Read(Reader),
}

/// Most ticks before one batch; each records at most `EXPIRIES_PER_TICK_MAX` expiries, and
/// the next batch records the rest.
const TICKS_PER_BATCH_MAX: usize = 16;

/// The first wait before healing a failed shop; each failed attempt doubles it.
const HEAL_BACKOFF_FIRST_MS: u64 = 100;

/// The longest wait between two attempts to heal a failed shop.
const HEAL_BACKOFF_MAX_MS: u64 = 5_000;

/// A shop whose store failed, until it heals: why, and when it tries next.
struct Healing {
    reason: String,
    /// The wait before the next attempt after this one.
    backoff: Duration,
    next_at: tokio::time::Instant,
    /// Whether its log failed verification: then it stops trying.
    quarantined: bool,
}

/// An answer waiting for its batch to be durable.
struct Pending {
    reply: Reply,
    answer: Result<Accepted, CommandError>,
}

/// A shop's writer: decides its commands, one batch at a time, and answers them once
/// their batch is durable.
pub(super) struct Writer {
    shop: ShopId,
    stats: Arc<EngineStats>,
    /// Published after every durable batch.
    log_position: Arc<AtomicU64>,
    /// Published after every batch.
    orders_spilled: Arc<AtomicU64>,
    store: Arc<dyn EventStore>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    /// `None` while the shop heals.
    core: Option<Core>,
    /// Set while the shop heals.
    healing: Option<Healing>,
    /// What the engine reports of the shop, and refuses its commands with while it heals.
    health: Arc<std::sync::Mutex<ShopHealth>>,
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

/// What an append task gives back: the batch, and where the log ends or why it failed.
type Appended = (AppendBatch, Result<u64, StoreError>);

/// The batch being decided: its events and rejections so far, and the answers they wait for.
struct Open {
    batch: AppendBatch,
    pending: Vec<Pending>,
    /// Commands decided into it, expiries included.
    commands: usize,
}

/// A batch being appended by its own task while the writer decides the next one.
struct InFlight {
    task: tokio::task::JoinHandle<Appended>,
    /// The answers of its commands, sent once it is durable.
    pending: Vec<Pending>,
    /// Where the log ends after it.
    last: u64,
    /// When it was handed to the store, by the monotonic clock (for the stats only).
    launched: std::time::Instant,
}

impl Writer {
    /// The writer of `shop`, recovered to `core`, that hands the batches it makes durable to
    /// the shop's follower through `durable` and `handover`.
    pub(super) fn new(
        engine: &Engine,
        shop: &ShopId,
        core: Core,
        durable: mpsc::Sender<Arc<Vec<Envelope>>>,
        handover: Arc<Handover>,
    ) -> Writer {
        // Ahead of the snapshot it started from (or of nothing), a shop snapshots at close.
        let last_snapshot = core.resumed_from.unwrap_or(0);
        Writer {
            stats: engine.stats.clone(),
            log_position: Arc::new(AtomicU64::new(core.last_position)),
            orders_spilled: Arc::new(AtomicU64::new(core.state.orders_spilled() as u64)),
            shop: shop.clone(),
            store: engine.store.clone(),
            clock: engine.clock.clone(),
            config: engine.config.clone(),
            core: Some(core),
            healing: None,
            health: Arc::new(std::sync::Mutex::new(ShopHealth::Serving)),
            generated: 0,
            last_snapshot,
            saving: None,
            image_bytes_last: 0,
            spill_health: SpillHealth::default(),
            in_flight: None,
            open: None,
            durable,
            handover,
        }
    }

    /// Where the writer publishes the last position it made durable, and how many orders it
    /// keeps in the spill.
    pub(super) fn published(&self) -> (Arc<AtomicU64>, Arc<AtomicU64>) {
        (self.log_position.clone(), self.orders_spilled.clone())
    }

    /// The shop's health, which the writer publishes.
    pub(super) fn health(&self) -> Arc<std::sync::Mutex<ShopHealth>> {
        self.health.clone()
    }

    fn set_health(&self, health: ShopHealth) {
        *self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = health;
    }

    /// Serves the shop's queue until it closes, then makes everything durable and snapshots.
    pub(super) async fn run(mut self, mut receiver: mpsc::Receiver<Job>) {
        let tick = Duration::from_millis(self.config.tick_interval_ms.max(1));
        loop {
            if self.healing.is_some() {
                if self.heal_or_refuse(&mut receiver).await.is_break() {
                    break;
                }
                continue;
            }
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

    /// Runs `read` on the state, which the writer made durable first. With no state (the
    /// shop heals) the reader is dropped, and its caller is answered that the shop is
    /// unavailable.
    fn read(&self, read: Reader) {
        if let Some(core) = &self.core {
            read(&core.state);
        }
    }

    fn unavailable(&self, reason: &str) -> CommandError {
        CommandError::Unavailable { shop: self.shop.clone(), reason: reason.to_owned() }
    }

    /// Decides `jobs` into the open batch, opening one (with the expiries due now) if needed.
    fn decide(&mut self, jobs: Vec<(Request, Reply)>) {
        let Some(core) = self.core.as_mut() else {
            let reason = self.healing.as_ref().map_or("the shop is healing", |healing| healing.reason.as_str());
            for (_, reply) in jobs {
                let _ =
                    reply.send(Err(CommandError::Unavailable { shop: self.shop.clone(), reason: reason.to_owned() }));
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
                self.open.insert(Open { batch, pending: Vec::new(), commands: ticks })
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
        let Some(Open { batch, pending, commands, .. }) = self.open.take() else { return };
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
            self.in_flight = Some(InFlight { task, pending, last, launched });
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
        // The refusals forgotten for their bound leave the store too, off the writer's path.
        if let Some(bounds) = self.core.as_mut().and_then(|core| core.idempotency.store_should_forget()) {
            crate::engine::idempotency::forget_in_store(&self.store, &self.shop, bounds);
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
        let Some(InFlight { pending, last, launched, .. }) = self.in_flight.take() else { return true };
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
        self.fail(reason);
        false
    }

    /// Starts healing after a failed append: drops the state, refuses commands, and logs
    /// the failure once.
    fn fail(&mut self, reason: String) {
        tracing::error!(shop = %self.shop, %reason, "the shop's store failed; refusing commands while it heals");
        self.core = None;
        self.set_health(ShopHealth::Healing { reason: reason.clone(), since: self.clock.now(), last_attempt: None });
        let backoff = Duration::from_millis(HEAL_BACKOFF_FIRST_MS);
        let next_at = tokio::time::Instant::now() + backoff;
        self.healing = Some(Healing { reason, backoff, next_at, quarantined: false });
    }

    /// While the shop heals: answers the commands that reach the writer `Unavailable`, and
    /// tries to heal when the backoff has passed. Breaks when the queue closes.
    async fn heal_or_refuse(&mut self, receiver: &mut mpsc::Receiver<Job>) -> std::ops::ControlFlow<()> {
        let Some(healing) = self.healing.as_ref() else { return std::ops::ControlFlow::Continue(()) };
        let (next_at, quarantined) = (healing.next_at, healing.quarantined);
        tokio::select! {
            job = receiver.recv() => match job {
                None => return std::ops::ControlFlow::Break(()),
                Some(Job::Execute(_, reply)) => {
                    let _ = reply.send(Err(self.unavailable(&healing.reason)));
                }
                // Dropped: its caller is answered that the shop is unavailable.
                Some(Job::Read(_)) => {}
            },
            () = tokio::time::sleep_until(next_at), if !quarantined => self.try_heal().await,
        }
        std::ops::ControlFlow::Continue(())
    }

    /// One attempt to heal: the store, then the state rebuilt from the log, verified. On
    /// success the shop serves again; a log that fails verification quarantines it; any
    /// other failure waits twice as long (at most `HEAL_BACKOFF_MAX_MS`) for the next.
    async fn try_heal(&mut self) {
        let recovered = match self.store.heal().await {
            Ok(()) => Core::recover(&self.store, &self.shop, &self.config, self.clock.now()).await,
            Err(error) => Err(error),
        };
        let Some(healing) = self.healing.as_mut() else { return };
        match recovered {
            Ok(core) => {
                tracing::info!(shop = %self.shop, position = core.last_position, cause = %healing.reason, "the shop healed and serves again");
                self.log_position.store(core.last_position, Ordering::Release);
                self.core = Some(core);
                self.healing = None;
                self.set_health(ShopHealth::Serving);
            }
            Err(StoreError::Corrupt { corruption, .. }) => {
                let reason = corruption.to_string();
                tracing::error!(shop = %self.shop, %reason, "the shop's log fails verification; it is quarantined");
                healing.quarantined = true;
                healing.reason = reason.clone();
                self.set_health(ShopHealth::Quarantined { reason });
            }
            Err(error) => {
                healing.backoff = (healing.backoff * 2).min(Duration::from_millis(HEAL_BACKOFF_MAX_MS));
                healing.next_at = tokio::time::Instant::now() + healing.backoff;
                let mut health = self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let ShopHealth::Healing { last_attempt, .. } = &mut *health {
                    *last_attempt = Some(error.to_string());
                }
            }
        }
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

/// The answer to a command id remembered as `known`: its outcome again when `fingerprint`
/// says it is the same command, a conflict when not.
fn replayed(known: &Known, command_id: CommandId, fingerprint: Fingerprint) -> Result<Accepted, CommandError> {
    if known.fingerprint != fingerprint {
        return Err(CommandError::IdempotencyConflict { command_id });
    }
    match &known.outcome {
        Outcome::Appended { first, more } => {
            let positions = Some(Positions { first: *first, last: first + u64::from(*more) });
            Ok(Accepted { command_id, positions, replayed: true, events: Vec::new() })
        }
        Outcome::Unchanged => Ok(Accepted { command_id, positions: None, replayed: true, events: Vec::new() }),
        Outcome::Rejected(rejection) => Err(CommandError::Rejected((**rejection).clone())),
    }
}

/// Decides one request into `batch`: its events, which the state applies, or its rejection;
/// and remembers its outcome.
fn decide_one(
    core: &mut Core,
    shop: &ShopId,
    batch: &mut AppendBatch,
    now: Timestamp,
    request: Request,
) -> Result<Accepted, CommandError> {
    let Request { command_id, correlation_id, actor, command } = request;
    let Some(command_id) = command_id else { unreachable!("every request has an id by now") };
    let fingerprint = fingerprint(&command);
    if let Some(known) = core.idempotency.get(&command_id) {
        return replayed(known, command_id, fingerprint);
    }
    // The shell's part: what the command may read comes back from the spill first, so that
    // deciding and applying never do IO. A failed read changes nothing and is not remembered.
    if let Err(error) = core.state.load_for(now, &command) {
        let reason = format!("an order could not be read back from the spill: {error}");
        return Err(CommandError::Unavailable { shop: shop.clone(), reason });
    }
    let events = match crate::domain::decide::decide(&core.state, now, &command) {
        Ok(events) => events,
        Err(rejection) => {
            batch.rejections.push(RejectionRecord {
                command_id: command_id.clone(),
                fingerprint,
                rejection: rejection.clone(),
                recorded_at: now,
            });
            let known = Known { fingerprint, outcome: Outcome::Rejected(core.shared_shortages.share(&rejection)) };
            core.idempotency.remember_new(now, command_id, known);
            return Err(CommandError::Rejected(rejection));
        }
    };
    // Once per command, inline when short: every event's envelope clones them.
    let correlation_id = CompactString::from(correlation_id.as_deref().unwrap_or(command_id.as_str()));
    let actor = CompactString::from(actor.as_str());
    let first = core.last_position + 1;
    for event in &events {
        let order_version = core.state.apply(event);
        let stream = stream_of(event);
        let stream_version = core.count_stream(&stream, event, order_version);
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
            event: event.clone(),
        });
    }
    core.last_recorded_at = now;
    let positions = (core.last_position >= first).then_some(Positions { first, last: core.last_position });
    let known = Known { fingerprint, outcome: Outcome::accepted(positions) };
    core.idempotency.remember_new(now, command_id.clone(), known);
    Ok(Accepted { command_id, positions, replayed: false, events })
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
