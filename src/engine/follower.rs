//! A shop's follower: keeps its views up to date by folding its log, and snapshots them.
//! It folds the batches the writer hands over once durable ([`crate::engine::handover`]),
//! and reads from the store whatever those miss: the log before the writer started, and
//! the batches not handed over because the follower lagged. The writer never waits for it.
//! Opening the engine never waits for it either: it restores the newest usable view
//! snapshot itself, after the engine opened.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use emporium_snapshots::{Snapshot, SnapshotStore};
use tokio::sync::{mpsc, watch};

use crate::domain::ids::ShopId;
use crate::engine::api::OpenError;
use crate::engine::config::{EngineConfig, VIEWS_SNAPSHOT_SCHEMA, snapshot_bytes_expected};
use crate::engine::handover::Handover;
use crate::log::record::Envelope;
use crate::log::store::{EventStore, StoreError};
use crate::memory::spill::Spill;
use crate::views::Views;

/// Keeps a shop's views up to date by following its log, and snapshots them.
pub(super) struct Follower {
    shop: ShopId,
    store: Arc<dyn EventStore>,
    /// Durable batches from the writer, in log order; some may be missing (see `Writer::durable`).
    handed: mpsc::Receiver<Arc<Vec<Envelope>>>,
    handover: Arc<Handover>,
    /// A handed batch that starts after the checkpoint: the gap is read from the store first.
    held: Option<Arc<Vec<Envelope>>>,
    /// Whether the writer may still hand batches over.
    handed_open: bool,
    /// The shop's views, which readers share.
    pub(super) views: Arc<RwLock<Views>>,
    /// The last position the views folded, which readers may wait for.
    pub(super) checkpoint: watch::Sender<u64>,
    /// Where view snapshots go, and every how many events.
    snapshots: Option<(SnapshotStore, u64)>,
    /// The position of the last view snapshot (or of the one restored).
    last_snapshot: u64,
    /// The size of the last view snapshot, to reserve for the next.
    snapshot_bytes_last: usize,
    /// Whether spilling the ledger fails.
    spill_health: SpillHealth,
    /// Where the ledger spills what it keeps encoded; None keeps it in memory.
    spill_dir: Option<PathBuf>,
    /// While reading the store fails: the wait before the next attempt.
    read_backoff: Option<Duration>,
}

/// The first wait after a failed read of the store; each failure in a row doubles it.
const READ_BACKOFF_FIRST_MS: u64 = 100;

/// The longest wait between two reads of a store that fails.
const READ_BACKOFF_MAX_MS: u64 = 5_000;

/// Whether a spill's last move failed, so that a failing spill (a full disk, say) is
/// logged when it starts failing and when it works again, not after every batch. What did
/// not move stays in memory, which is correct, only larger, and the next batch tries again.
#[derive(Default)]
pub(super) struct SpillHealth(AtomicBool);

impl SpillHealth {
    /// Logs the `result` of spilling `what` of `shop` when it differs from the last one's
    /// (the first is taken to have worked); returns whether it logged.
    pub(super) fn note<T>(&self, shop: &ShopId, what: &str, result: &std::io::Result<T>) -> bool {
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

/// What a follower's read of the store gave.
enum Read {
    /// Events after the checkpoint, to fold.
    Page(Vec<Envelope>),
    /// Nothing yet: look again.
    Nothing,
    /// The engine is gone: the follower stops.
    Stop,
}

impl Follower {
    /// A follower with empty views; [`Follower::run`] first restores the newest usable view
    /// snapshot, so opening the engine never waits for the views.
    pub(super) async fn start(
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
            read_backoff: None,
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

    /// Follows the log until the engine shuts down, then snapshots the views.
    pub(super) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.restore().await;
        // The views are restored or empty: from here on, the ledger spills after every fold.
        self.attach_spill();
        loop {
            if *shutdown.borrow() {
                let checkpoint = *self.checkpoint.borrow();
                self.snapshot(checkpoint, 1).await;
                return;
            }
            let at = *self.checkpoint.borrow();
            // A handed batch that continues the views is folded as it is; one that starts
            // later waits while the gap is read from the store; one already folded is dropped.
            let continues = |batch: &Vec<Envelope>| batch.first().is_some_and(|e| e.position <= at + 1);
            let folded = match self.next_handed(at) {
                Some(batch) if continues(&batch) => {
                    let start = batch.iter().position(|e| e.position == at + 1).unwrap_or(batch.len());
                    self.fold(&batch[start..])
                }
                None if self.handed_open && at >= self.handover.unhanded_through.load(Ordering::Acquire) => {
                    // Whatever follows will be handed over, or the writer says it was not.
                    match self.wait_for_writer(&mut shutdown).await {
                        ControlFlow::Continue(()) => continue,
                        ControlFlow::Break(()) => return,
                    }
                }
                later => match self.read_store(at, later, &mut shutdown).await {
                    Read::Page(page) => self.fold(&page),
                    Read::Nothing => continue,
                    Read::Stop => return,
                },
            };
            if self.publish(folded).await.is_break() {
                return;
            }
        }
    }

    /// Gives the views a spill of their own in the spill directory, if there is one; without
    /// one (or when it cannot be made), they stay in memory.
    fn attach_spill(&self) {
        let Some(dir) = &self.spill_dir else { return };
        match Spill::create_in(dir) {
            Ok(spill) => {
                let mut views = self.views.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                views.attach_spill(Arc::new(spill));
            }
            Err(error) => tracing::warn!(shop = %self.shop, %error, "no spill for the views; they stay in memory"),
        }
    }

    /// The next handed batch that reaches past `at`: the one held, or the next in the queue.
    /// A batch already folded is dropped.
    fn next_handed(&mut self, at: u64) -> Option<Arc<Vec<Envelope>>> {
        let handed = match self.held.take() {
            Some(batch) => Some(batch),
            None => self.handed.try_recv().ok().inspect(|batch| self.handover.took(batch)),
        };
        handed.filter(|batch| batch.last().is_some_and(|e| e.position > at))
    }

    /// Waits for the writer's next batch, its notice that one was not handed over, or
    /// shutdown; breaks when the engine is gone.
    async fn wait_for_writer(&mut self, shutdown: &mut watch::Receiver<bool>) -> ControlFlow<()> {
        tokio::select! {
            batch = self.handed.recv() => self.received(batch),
            _ = self.handover.skipped.notified() => {}
            changed = shutdown.changed() => {
                if changed.is_err() {
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// Reads from the store what follows `at`, holding the handed batch `later` (if any)
    /// meanwhile. With nothing to read and no batch held, waits for the writer, the log or
    /// shutdown.
    async fn read_store(
        &mut self,
        at: u64,
        later: Option<Arc<Vec<Envelope>>>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Read {
        let limit = self.read_limit(at, later.as_deref());
        self.held = later;
        let page = match self.store.read_from(&self.shop, at, limit).await {
            Ok(page) => {
                if self.read_backoff.take().is_some() {
                    tracing::info!(shop = %self.shop, "views follow the log again");
                }
                page
            }
            Err(error) => return self.read_failed(&error, shutdown).await,
        };
        if !page.is_empty() {
            return Read::Page(page);
        }
        if self.held.is_none() {
            tokio::select! {
                batch = self.handed.recv(), if self.handed_open => self.received(batch),
                _ = self.store.wait_for(&self.shop, at, Duration::from_secs(1)) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        // The engine is gone without closing: nothing more comes.
                        return Read::Stop;
                    }
                }
            }
        }
        Read::Nothing
    }

    /// After a failed read of the store (while it heals, say): logs it when reads start
    /// failing, and waits before the next, 100 ms at first and twice as long after each
    /// failure in a row, up to 5 s; stops on shutdown.
    async fn read_failed(&mut self, error: &StoreError, shutdown: &mut watch::Receiver<bool>) -> Read {
        let backoff = match self.read_backoff {
            None => {
                tracing::error!(shop = %self.shop, %error, "views cannot read the log; retrying");
                Duration::from_millis(READ_BACKOFF_FIRST_MS)
            }
            Some(backoff) => (backoff * 2).min(Duration::from_millis(READ_BACKOFF_MAX_MS)),
        };
        self.read_backoff = Some(backoff);
        tokio::select! {
            () = tokio::time::sleep(backoff) => Read::Nothing,
            changed = shutdown.changed() => if changed.is_err() { Read::Stop } else { Read::Nothing },
        }
    }

    /// Most events to read from the store after `at`, at most a page: only the gap before a
    /// held batch `later`, whose events are in memory; with none, no further than what will
    /// not be handed over.
    fn read_limit(&self, at: u64, later: Option<&Vec<Envelope>>) -> usize {
        let gap = match later.and_then(|batch| batch.first()) {
            Some(first) => Some(first.position - at - 1),
            None if self.handed_open => {
                Some(self.handover.unhanded_through.load(Ordering::Acquire).saturating_sub(at)).filter(|gap| *gap > 0)
            }
            None => None,
        };
        let limit = gap.map_or(FOLLOW_PAGE_EVENTS, |gap| usize::try_from(gap).unwrap_or(usize::MAX));
        limit.min(FOLLOW_PAGE_EVENTS)
    }

    /// Publishes the checkpoint a fold reached, and snapshots the views when one is due;
    /// breaks when the fold failed.
    async fn publish(&mut self, folded: Result<u64, String>) -> ControlFlow<()> {
        match folded {
            Ok(checkpoint) => {
                self.checkpoint.send_replace(checkpoint);
                let every = self.snapshots.as_ref().map_or(u64::MAX, |(_, every)| *every);
                self.snapshot(checkpoint, every).await;
                ControlFlow::Continue(())
            }
            Err(error) => {
                tracing::error!(shop = %self.shop, %error, "views stopped following the log");
                ControlFlow::Break(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::handover::HANDED_BATCHES_MAX;
    use crate::log::store::{AppendBatch, MemoryStore};
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
