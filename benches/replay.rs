//! Replay and start-up on a log of more than a million events.
//!
//! Run: `cargo bench --bench replay`. The setup writes a generated day of 300,000 orders
//! (about 1.07 million events) to a sled store in a temporary directory, then measures:
//! - `replay/state`: folding every event into the domain state (events/s) with
//!   `State::apply_all`, reading ahead as recovery does; freeing the state afterwards is
//!   not timed;
//! - `replay/state_all_hot`: the same with every order kept as a value (no bound on the
//!   hot tier, so nothing is frozen or thawed): what the tiering costs replay, and the
//!   ceiling a larger hot tier would approach at the price of memory;
//! - `replay/views`: folding every event into all five views (events/s), likewise;
//! - `open/full_replay`: `Engine::open` with no snapshot: verify and replay the whole log
//!   into the state;
//! - `open/full_replay_and_views`: the same, and until the views (which fold the log behind
//!   the engine, reading it again) have folded all of it;
//! - `open/from_snapshot`: `Engine::open` from the engine snapshot taken at the end of the
//!   log: verify and replay only what follows it (nothing, here).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use emporium::engine::{Engine, EngineConfig, ManualClock, SnapshotConfig};
use emporium::log::record::Envelope;
use emporium::log::store::{AppendBatch, EventStore, SledStore};
use emporium::rehearsal::sim::{self, DayConfig};
use emporium::views::Views;
use emporium::{ShopId, State, rehearsal::demo};
use emporium_projections::AsOf;

/// The allocator the `emporium` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ORDERS: u64 = 300_000;
const APPEND_BATCH_EVENTS: usize = 8192;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime")
}

/// Decides a generated day directly (no engine) and appends its events in large batches.
async fn write_log(store: &SledStore, shop: &ShopId) -> Vec<Envelope> {
    let envelopes = sim::day_envelopes(&DayConfig::new(ORDERS, 42, demo::DAY_START), "bench");
    for batch in envelopes.chunks(APPEND_BATCH_EVENTS) {
        let expected_last = batch[0].position - 1;
        let batch = AppendBatch { expected_last, events: batch.to_vec(), rejections: Vec::new() };
        store.append(shop, &batch).await.expect("appended");
    }
    envelopes
}

fn config(data: &Path, snapshots: bool) -> EngineConfig {
    let snapshots = snapshots.then(|| SnapshotConfig::new(emporium::log::layout::snapshot_dir(data)));
    EngineConfig { snapshots, ..EngineConfig::default() }
}

/// A restart just after the generated day: the clock shows the time of its last event, so
/// the commands of its last 24 hours are within the idempotency window, as they would be.
fn restart_clock(envelopes: &[Envelope]) -> Arc<ManualClock> {
    Arc::new(ManualClock::new(envelopes.last().map_or(demo::DAY_START, |e| e.recorded_at)))
}

/// Opens the engine on the log in `data` and returns how long `Engine::open` took, or with
/// `views` until the views had folded the whole log too; then closes it.
async fn open_once(data: &Path, snapshots: bool, views: bool, clock: Arc<ManualClock>) -> Duration {
    let store = Arc::new(SledStore::open(&emporium::log::layout::log_dir(data)).expect("opens"));
    let last = store.last_position(&ShopId::main()).await.expect("readable");
    let started = Instant::now();
    let engine = Engine::open(store, clock, config(data, snapshots)).await.expect("opens");
    if views {
        let reached = engine.views_reach(&ShopId::main(), last, Duration::from_secs(600)).await;
        assert_eq!(reached, Ok(last), "the views folded the log");
    }
    let took = started.elapsed();
    assert_eq!(engine.recovered_from(&ShopId::main()).is_some(), snapshots, "started as intended");
    engine.close().await;
    took
}

fn replay(c: &mut Criterion) {
    emporium::cli::process::disable_transparent_huge_pages().expect("huge pages off, as the binary has them");
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let shop = ShopId::main();
    let envelopes = runtime.block_on(async {
        let store = SledStore::open(&emporium::log::layout::log_dir(dir.path())).expect("opens");
        write_log(&store, &shop).await
    });
    let events = envelopes.len() as u64;
    assert!(events >= 1_000_000, "{events} events");
    eprintln!("log of {events} events written");
    // One full start with snapshots on: it replays everything and snapshots the end at close.
    runtime.block_on(async {
        let store = Arc::new(SledStore::open(&emporium::log::layout::log_dir(dir.path())).expect("opens"));
        Engine::open(store, restart_clock(&envelopes), config(dir.path(), true)).await.expect("opens").close().await;
    });

    let mut group = c.benchmark_group("replay");
    group.sample_size(10).measurement_time(Duration::from_secs(20)).throughput(Throughput::Elements(events));
    // Replay builds a state that is then kept; freeing it afterwards (a fifth of the time
    // with `iter`) is not replay, so it is left out of the timing.
    group.bench_function("state", |b| {
        b.iter_with_large_drop(|| {
            let mut state = State::new();
            state.apply_all(envelopes.iter().map(|envelope| &envelope.event));
            state
        })
    });
    group.bench_function("state_all_hot", |b| {
        b.iter_with_large_drop(|| {
            let mut state = State::new();
            state.set_orders_hot_max(usize::MAX);
            state.apply_all(envelopes.iter().map(|envelope| &envelope.event));
            assert_eq!(state.orders_frozen(), 0, "nothing frozen");
            state
        })
    });
    group.bench_function("views", |b| {
        b.iter_with_large_drop(|| {
            let mut views = Views::new();
            views.catch_up(&envelopes, AsOf::End).expect("gap-free");
            views
        })
    });
    group.finish();

    let mut group = c.benchmark_group("open");
    group.sample_size(10).measurement_time(Duration::from_secs(30));
    let starts =
        [("full_replay", false, false), ("full_replay_and_views", false, true), ("from_snapshot", true, false)];
    for (name, snapshots, views) in starts {
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                let clock = || restart_clock(&envelopes);
                (0..iterations).map(|_| runtime.block_on(open_once(dir.path(), snapshots, views, clock()))).sum()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, replay);
criterion_main!(benches);
