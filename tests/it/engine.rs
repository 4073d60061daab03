//! The engine: group commit, idempotency, one writer per shop, time, storage failures.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use emporium::engine::{Accepted, CommandError, Engine, EngineConfig, ManualClock, Positions, Request};
use emporium::log::record::{Envelope, Hash};
use emporium::log::store::{
    AppendBatch, EventStore, MemoryStore, RejectionRecord, SledStore, StoreError, VerifyReport,
};
use emporium::{CommandId, Event, OrderStatus, Rejection, ShopId, Shortage, State, rehearsal::demo};
use rust_decimal::dec;

use crate::support::*;

async fn open(store: Arc<dyn EventStore>, clock: Arc<ManualClock>) -> Arc<Engine> {
    let engine = Engine::open(store, clock, EngineConfig::default()).await.expect("opens");
    engine.create_shop(&ShopId::main()).await.expect("created");
    Arc::new(engine)
}

async fn close(engine: Arc<Engine>) {
    Arc::into_inner(engine).expect("no other users").close().await;
}

fn id(text: &str) -> CommandId {
    CommandId::new(text).expect("a valid command id")
}

/// Every event of the shop, replayed into a fresh state.
async fn replay(store: &dyn EventStore, shop: &ShopId) -> (State, Vec<Envelope>) {
    let envelopes = store.read_from(shop, 0, usize::MAX).await.expect("readable");
    let mut state = State::new();
    for envelope in &envelopes {
        state.apply(&envelope.event);
    }
    (state, envelopes)
}

#[tokio::test]
async fn the_shop_day_through_the_engine_is_the_shop_day_of_the_core() {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(demo::DAY_START));
    let engine = open(store.clone(), clock.clone()).await;
    let shop = ShopId::main();
    for (at, command) in demo::shop_day() {
        clock.set(at);
        engine.execute(&shop, Request::new("tester", command)).await.expect("accepted");
    }
    let (core_state, core_events) = demo::run(&demo::shop_day()).expect("the day runs");
    let engine_state = engine.read(&shop, State::clone).await.expect("readable");
    assert_eq!(engine_state, core_state);
    let (replayed, envelopes) = replay(store.as_ref(), &shop).await;
    assert_eq!(replayed, core_state);
    assert_eq!(envelopes.iter().map(|e| e.event.clone()).collect::<Vec<_>>(), core_events);
    assert!(envelopes.iter().zip(1..).all(|(e, position)| e.position == position), "gap-free from 1");
    let order_stream: Vec<(u64, &str)> =
        envelopes.iter().filter(|e| e.stream == "order-A-1001").map(|e| (e.stream_version, e.event.kind())).collect();
    assert_eq!(order_stream[0], (1, "order_placed"));
    assert!(order_stream.iter().zip(1..).all(|((version, _), expected)| *version == expected));
    let from_store = store.read_stream(&shop, "order-A-1001", 0, 100).await.expect("readable");
    assert_eq!(from_store.len(), order_stream.len());
    assert!(envelopes.iter().all(|e| e.recorded_at >= demo::DAY_START && e.actor == "tester"));
}

#[tokio::test]
async fn known_command_ids_answer_as_before_also_after_a_restart() {
    let dir = temp_dir();
    let clock = Arc::new(ManualClock::new(demo::DAY_START));
    let shop = ShopId::main();
    let listing = Request::new("tester", list("S1", dec!(5.00))).with_id(id("list-1"));
    let stock = Request::new("tester", receive("S1", 3, dec!(2.00))).with_id(id("receive-1"));
    let too_many = Request::new("tester", place("O-1", &[("S1", 4)])).with_id(id("order-1"));
    let (first_listing, first_rejection) = {
        let engine = open(Arc::new(SledStore::open(dir.path()).expect("opens")), clock.clone()).await;
        let listed = engine.execute(&shop, listing.clone()).await;
        let listed_events = match &listed {
            Ok(accepted) => accepted.events.clone(),
            Err(error) => panic!("listing refused: {error}"),
        };
        assert!(matches!(listed_events.as_slice(), [Event::ProductListed { .. }]));
        assert_eq!(
            listed,
            Ok(Accepted {
                command_id: id("list-1"),
                positions: Some(Positions { first: 1, last: 1 }),
                replayed: false,
                events: listed_events,
            })
        );
        engine.execute(&shop, stock.clone()).await.expect("accepted");
        let rejected = engine.execute(&shop, too_many.clone()).await;
        let expected =
            Rejection::InsufficientStock { shortages: vec![Shortage { sku: "S1".into(), requested: 4, available: 3 }] };
        assert_eq!(rejected, Err(CommandError::Rejected(expected)));
        close(engine).await;
        (listed, rejected)
    };

    let store = Arc::new(SledStore::open(dir.path()).expect("reopens"));
    let engine = open(store.clone(), clock.clone()).await;
    let again = engine.execute(&shop, listing.clone()).await.expect("accepted before");
    assert!(again.events.is_empty(), "a replayed answer leaves the events in the log");
    let first_listing = first_listing.map(|accepted| Accepted { events: Vec::new(), ..accepted });
    assert_eq!(Ok(Accepted { replayed: false, ..again.clone() }), first_listing);
    assert!(again.replayed);
    assert_eq!(engine.execute(&shop, too_many.clone()).await, first_rejection);
    // Stock arrives: the same id still answers with its original rejection, not a new decision.
    engine.execute(&shop, Request::new("tester", receive("S1", 10, dec!(2.00)))).await.expect("accepted");
    assert_eq!(engine.execute(&shop, too_many.clone()).await, first_rejection);
    assert_eq!(store.last_position(&shop).await, Ok(3), "answers from memory append nothing");

    let other_command = Request::new("tester", list("S2", dec!(5.00))).with_id(id("list-1"));
    assert_eq!(
        engine.execute(&shop, other_command).await,
        Err(CommandError::IdempotencyConflict { command_id: id("list-1") })
    );
    let other_order = Request::new("tester", place("O-1", &[("S1", 1)])).with_id(id("order-1"));
    assert_eq!(
        engine.execute(&shop, other_order).await,
        Err(CommandError::IdempotencyConflict { command_id: id("order-1") })
    );

    // The same new id sent twice at once: one decision, two identical answers.
    let twice = Request::new("tester", place("O-2", &[("S1", 1)])).with_id(id("order-2"));
    let answers = submit_all(&engine, &shop, vec![twice.clone(), twice], 2).await;
    let positions: Vec<_> = answers.iter().map(|a| a.as_ref().map(|a| a.positions)).collect();
    assert_eq!(positions[0], positions[1]);
    assert_eq!(answers.iter().filter(|a| matches!(a, Ok(a) if a.replayed)).count(), 1);
    assert_eq!(store.last_position(&shop).await, Ok(4));
}

/// An id is remembered for the window, also when rebuilt from the log after a restart, and
/// forgotten at most an eighth of the window later, when it runs as a new command.
#[tokio::test]
async fn command_ids_are_forgotten_after_the_window_and_not_before() {
    const WINDOW_MS: u64 = 80 * MINUTE_MS;
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(demo::DAY_START));
    let config = EngineConfig { idempotency_window_ms: WINDOW_MS, ..EngineConfig::default() };
    let shop = ShopId::main();
    let start = |store: Arc<dyn EventStore>| {
        let (clock, config) = (clock.clone(), config.clone());
        async move { Engine::open(store, clock, config).await.expect("opens") }
    };
    let engine = start(store.clone()).await;
    engine.create_shop(&shop).await.expect("created");
    engine.execute(&shop, Request::new("tester", list("S1", dec!(5.00)))).await.expect("listed");
    let receive_one = Request::new("tester", receive("S1", 1, dec!(2.00))).with_id(id("receive-1"));
    async fn replayed(engine: &Engine, request: &Request) -> Result<bool, CommandError> {
        engine.execute(&ShopId::main(), request.clone()).await.map(|accepted| accepted.replayed)
    }
    assert_eq!(replayed(&engine, &receive_one).await, Ok(false));
    // A command of two events: a paid order cancelled, and refunded with it.
    for command in [place("O-1", &[("S1", 1)]), pay("O-1", dec!(5.00))] {
        engine.execute(&shop, Request::new("tester", command)).await.expect("accepted");
    }
    let cancel_one = Request::new("tester", cancel("O-1")).with_id(id("cancel-1"));
    let cancelled = engine.execute(&shop, cancel_one.clone()).await.map(|accepted| accepted.positions);
    assert_eq!(cancelled, Ok(Some(Positions { first: 5, last: 6 })));
    clock.advance_ms(WINDOW_MS);
    assert_eq!(replayed(&engine, &receive_one).await, Ok(true), "remembered for the whole window");
    engine.close().await;

    let engine = start(store.clone()).await;
    clock.advance_ms(WINDOW_MS / 8 - 1);
    assert_eq!(replayed(&engine, &receive_one).await, Ok(true), "rebuilt from the log, kept up to an eighth longer");
    let again = engine.execute(&shop, cancel_one.clone()).await.map(|accepted| (accepted.replayed, accepted.positions));
    assert_eq!(
        again,
        Ok((true, Some(Positions { first: 5, last: 6 }))),
        "both events' positions, rebuilt from the log"
    );
    clock.advance_ms(1);
    assert_eq!(replayed(&engine, &receive_one).await, Ok(false), "forgotten: it ran again");
    let on_hand = engine.read(&shop, |state: &State| state.product(&"S1".into()).map(|p| p.stock.on_hand)).await;
    assert_eq!(on_hand, Ok(Some(2)));
    assert_eq!(store.last_position(&shop).await, Ok(7));
    engine.close().await;
}

#[tokio::test]
async fn sixty_four_tasks_race_for_a_hundred_units_and_exactly_a_hundred_win() {
    let dir = temp_dir();
    let store = Arc::new(SledStore::open(dir.path()).expect("opens"));
    let engine = open(store.clone(), Arc::new(ManualClock::new(demo::DAY_START))).await;
    let shop = ShopId::main();
    for command in [list("HOT", dec!(99.00)), receive("HOT", 100, dec!(40.00))] {
        engine.execute(&shop, Request::new("tester", command)).await.expect("accepted");
    }
    let orders = (0..10_000).map(|i| Request::new("buyer", place(&format!("O-{i}"), &[("HOT", 1)]))).collect();
    let answers = submit_all(&engine, &shop, orders, 64).await;

    let accepted = answers.iter().filter(|a| a.is_ok()).count();
    let sold_out =
        Rejection::InsufficientStock { shortages: vec![Shortage { sku: "HOT".into(), requested: 1, available: 0 }] };
    let refused = answers.iter().filter(|a| **a == Err(CommandError::Rejected(sold_out.clone()))).count();
    assert_eq!((accepted, refused), (100, 9_900));

    let state = engine.read(&shop, State::clone).await.expect("readable");
    state.check_invariants();
    let stock = &state.product(&"HOT".into()).expect("listed").stock;
    assert_eq!((stock.on_hand, stock.reserved, stock.available()), (100, 100, 0));
    assert_eq!(state.orders().count(), 100);
    let (replayed, envelopes) = replay(store.as_ref(), &shop).await;
    assert_eq!(replayed, state);
    assert_eq!(envelopes.len(), 102);
}

/// A spill file that an ended process left named in the spill directory is removed when an
/// engine opens there; other files stay.
#[tokio::test]
async fn opening_removes_spill_files_left_by_ended_processes() {
    let dir = temp_dir();
    let left = dir.path().join(format!(".spill-{}-7", std::process::id().wrapping_add(1)));
    let kept = dir.path().join("notes.txt");
    for path in [&left, &kept] {
        std::fs::write(path, b"left behind").expect("written");
    }
    let config = EngineConfig { spill_dir: Some(dir.path().to_path_buf()), ..EngineConfig::default() };
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::open(store, Arc::new(ManualClock::new(demo::DAY_START)), config).await.expect("opens");
    engine.create_shop(&ShopId::main()).await.expect("created");
    engine.execute(&ShopId::main(), Request::new("tester", list("TEA", dec!(10.00)))).await.expect("accepted");
    assert!(!left.exists(), "the leftover is gone");
    assert!(kept.exists(), "other files stay");
    let names: Vec<_> = std::fs::read_dir(dir.path()).expect("listed").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("notes.txt")], "the engine's own spills have no names");
}

/// With one order in memory the others live in the spill: commands on them are decided
/// after the writer loads them back, and readers reach them through `State::order`, which
/// reads a spilled order back rather than panic.
#[tokio::test]
async fn spilled_orders_are_decided_and_read_back() {
    let store = Arc::new(MemoryStore::new());
    let config = EngineConfig { orders_hot_max: 1, spill_dir: Some(std::env::temp_dir()), ..EngineConfig::default() };
    let engine = Engine::open(store.clone(), Arc::new(ManualClock::new(demo::DAY_START)), config).await.expect("opens");
    let shop = ShopId::main();
    engine.create_shop(&shop).await.expect("created");
    for command in [list("TEA", dec!(10.00)), receive("TEA", 50, dec!(4.00))] {
        engine.execute(&shop, Request::new("tester", command)).await.expect("accepted");
    }
    for order in ["O-1", "O-2", "O-3"] {
        engine.execute(&shop, Request::new("buyer", place(order, &[("TEA", 2)]))).await.expect("accepted");
    }
    let spilled = engine.read(&shop, |state: &State| state.orders_spilled()).await.expect("served");
    assert_eq!(spilled, 2, "every order but the last changed is out of memory");
    let total = engine.read(&shop, |state: &State| state.order(&"O-1".into()).map(|o| o.map(|o| o.total)));
    assert_eq!(total.await.expect("served").expect("read back"), Some(dec!(20.00)));
    // Deciding on a spilled order: the writer loads it first.
    engine.execute(&shop, Request::new("buyer", pay("O-1", dec!(20.00)))).await.expect("accepted");
    let again = engine.execute(&shop, Request::new("buyer", place("O-2", &[("TEA", 1)]))).await;
    assert!(matches!(again, Err(CommandError::Rejected(Rejection::OrderExists { .. }))), "{again:?}");
    let statuses = engine.read(&shop, |state: &State| {
        state.orders().map(|o| o.map(|o| (o.id.to_string(), o.status()))).collect::<Result<Vec<_>, _>>()
    });
    let mut statuses = statuses.await.expect("served").expect("read back");
    statuses.sort_by(|a, b| a.0.cmp(&b.0));
    let expected =
        [("O-1", OrderStatus::Paid), ("O-2", OrderStatus::AwaitingPayment), ("O-3", OrderStatus::AwaitingPayment)];
    assert_eq!(statuses, expected.map(|(id, status)| (id.to_owned(), status)));
    let (replayed, _) = replay(store.as_ref(), &shop).await;
    let live = engine.read(&shop, State::clone).await.expect("served");
    assert_eq!(live, replayed, "the live state, spilled, equals the log replayed in memory");
}

#[tokio::test]
async fn deadlines_pass_by_the_engine_clock() {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(demo::DAY_START));
    let engine = open(store.clone(), clock.clone()).await;
    let shop = ShopId::main();
    for command in [
        list("S1", dec!(5.00)),
        receive("S1", 10, dec!(2.00)),
        place("O-1", &[("S1", 4)]),
        reserve("R-1", &[("S1", 6)], Some(10 * MINUTE_MS)),
    ] {
        engine.execute(&shop, Request::new("tester", command)).await.expect("accepted");
    }
    let available = |state: &State| state.product(&"S1".into()).map(|p| p.stock.available());
    assert_eq!(engine.read(&shop, available).await, Ok(Some(0)));

    clock.advance_ms(10 * MINUTE_MS - 1);
    engine.tick(&shop).await.expect("ticks");
    assert_eq!(engine.read(&shop, available).await, Ok(Some(0)), "a millisecond early, nothing expires");
    clock.advance_ms(1);
    engine.tick(&shop).await.expect("ticks");
    assert_eq!(engine.read(&shop, available).await, Ok(Some(6)), "the hold expired");

    // The next command after the payment deadline first records the expiry, so the stock
    // it frees is available to that command.
    clock.advance_ms(21 * MINUTE_MS);
    engine.execute(&shop, Request::new("tester", place("O-2", &[("S1", 10)]))).await.expect("accepted");
    let statuses = engine
        .read(&shop, |state: &State| {
            ["O-1", "O-2"].map(|id| state.order(&id.into()).expect("in memory").map(|o| o.status()))
        })
        .await
        .expect("readable");
    assert_eq!(statuses, [Some(OrderStatus::Expired), Some(OrderStatus::AwaitingPayment)]);
    let (_, envelopes) = replay(store.as_ref(), &shop).await;
    let recorded = |kind: &str| envelopes.iter().find(|e| e.event.kind() == kind).expect("recorded").clone();
    let (hold, order) = (recorded("reservation_expired"), recorded("order_expired"));
    assert_eq!(hold.recorded_at.0, demo::DAY_START.0 + 10 * MINUTE_MS);
    assert_eq!(order.recorded_at.0, demo::DAY_START.0 + 31 * MINUTE_MS);
    assert!(hold.actor == "engine" && order.actor == "engine");
    let second_order = envelopes.iter().find(|e| e.stream == "order-O-2").expect("placed");
    assert_eq!(
        order.position + 1,
        second_order.position,
        "the expiry is recorded just before the order it frees stock for"
    );
}

/// A memory store a test can steer: appends fail while `failing` is set, and wait at
/// `gate` (after notifying `entered`) when it was made gated.
struct TestStore {
    inner: MemoryStore,
    failing: AtomicBool,
    entered: tokio::sync::Notify,
    gate: Option<tokio::sync::Semaphore>,
}

impl TestStore {
    fn new(gated: bool) -> TestStore {
        TestStore {
            inner: MemoryStore::new(),
            failing: AtomicBool::new(false),
            entered: tokio::sync::Notify::new(),
            gate: gated.then(|| tokio::sync::Semaphore::new(0)),
        }
    }
}

#[async_trait]
impl EventStore for TestStore {
    async fn shops(&self) -> Result<Vec<ShopId>, StoreError> {
        self.inner.shops().await
    }
    async fn create_shop(&self, shop: &ShopId) -> Result<(), StoreError> {
        self.inner.create_shop(shop).await
    }
    async fn append(&self, shop: &ShopId, batch: &AppendBatch) -> Result<u64, StoreError> {
        self.entered.notify_one();
        if let Some(gate) = &self.gate {
            let _permit = gate.acquire().await.map_err(|e| StoreError::Io(e.to_string()))?;
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Io("disk full".to_owned()));
        }
        self.inner.append(shop, batch).await
    }
    async fn read_from(&self, shop: &ShopId, after: u64, limit: usize) -> Result<Vec<Envelope>, StoreError> {
        self.inner.read_from(shop, after, limit).await
    }
    async fn read_stream(&self, shop: &ShopId, s: &str, after: u64, limit: usize) -> Result<Vec<Envelope>, StoreError> {
        self.inner.read_stream(shop, s, after, limit).await
    }
    async fn last_position(&self, shop: &ShopId) -> Result<u64, StoreError> {
        self.inner.last_position(shop).await
    }
    async fn wait_for(&self, shop: &ShopId, after: u64, timeout: Duration) -> Result<u64, StoreError> {
        self.inner.wait_for(shop, after, timeout).await
    }
    async fn rejections(&self, shop: &ShopId) -> Result<Vec<RejectionRecord>, StoreError> {
        self.inner.rejections(shop).await
    }
    async fn verify_after(&self, shop: &ShopId, after: u64, anchor: Hash) -> Result<VerifyReport, StoreError> {
        self.inner.verify_after(shop, after, anchor).await
    }
    async fn read_verified(
        &self,
        shop: &ShopId,
        after: u64,
        anchor: Hash,
        limit: usize,
    ) -> Result<(Vec<Envelope>, Hash), StoreError> {
        self.inner.read_verified(shop, after, anchor, limit).await
    }
    async fn head(&self, shop: &ShopId) -> Result<(u64, Hash), StoreError> {
        self.inner.head(shop).await
    }
}

#[tokio::test]
async fn a_failed_append_acknowledges_nothing_and_the_shop_recovers_from_its_log() {
    let store = Arc::new(TestStore::new(false));
    let engine = open(store.clone(), Arc::new(ManualClock::new(demo::DAY_START))).await;
    let shop = ShopId::main();
    for command in [list("S1", dec!(5.00)), receive("S1", 10, dec!(2.00))] {
        engine.execute(&shop, Request::new("tester", command)).await.expect("accepted");
    }
    let before = engine.read(&shop, State::clone).await.expect("readable");

    store.failing.store(true, Ordering::SeqCst);
    let order = Request::new("tester", place("O-1", &[("S1", 4)])).with_id(id("order-1"));
    let failed = engine.execute(&shop, order.clone()).await;
    assert!(matches!(failed, Err(CommandError::Unavailable { ref reason, .. }) if reason.contains("disk full")));
    // The shop heals (this store has nothing to heal), its state rebuilt from the log.
    assert_eq!(read_once_healed(&engine, &shop).await, before, "nothing decided survives");

    store.failing.store(false, Ordering::SeqCst);
    let retried = engine.execute(&shop, order).await.expect("accepted on retry");
    assert_eq!((retried.positions, retried.replayed), (Some(Positions { first: 3, last: 3 }), false));
    assert_eq!(store.last_position(&shop).await, Ok(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_heals_once_the_disk_is_back_and_a_retry_then_lands_once() {
    let parent = temp_dir();
    let (dir, moved) = (parent.path().join("db"), parent.path().join("moved"));
    let clock = Arc::new(ManualClock::new(demo::DAY_START));
    let engine = open(Arc::new(SledStore::open(&dir).expect("opens")), clock.clone()).await;
    let shop = ShopId::main();
    for command in [list("S1", dec!(5.00)), receive("S1", 10, dec!(2.00))] {
        engine.execute(&shop, Request::new("tester", command)).await.expect("accepted");
    }

    // The directory vanishes under the open database: the sync cannot list it, so it fails.
    std::fs::rename(&dir, &moved).expect("moved");
    let order = Request::new("tester", place("O-1", &[("S1", 4)])).with_id(id("order-1"));
    let failed = engine.execute(&shop, order.clone()).await;
    assert!(matches!(failed, Err(CommandError::Unavailable { ref reason, .. }) if reason.contains("a sync failed")));
    std::fs::rename(&moved, &dir).expect("moved back");
    // The shop heals without a restart: the store opens its database again from the disk,
    // where the batch whose sync failed may be found, durable from then on; the retry
    // lands exactly once either way.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let retried = loop {
        match engine.execute(&shop, order.clone()).await {
            Err(CommandError::Unavailable { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answer => break answer.expect("accepted once healed"),
        }
    };
    assert_eq!(retried.positions.map(|p| p.first), Some(3));
    close(engine).await;

    // Reopened, the database holds the order once, and the retry is answered as it was.
    let engine = open(Arc::new(SledStore::open(&dir).expect("reopens")), clock).await;
    let again = engine.execute(&shop, order).await.expect("accepted on retry");
    assert_eq!((again.positions.map(|p| p.first), again.replayed), (Some(3), true));
    let (state, envelopes) = replay(engine.store().as_ref(), &shop).await;
    assert_eq!(envelopes.iter().filter(|e| e.event.kind() == "order_placed").count(), 1);
    assert_eq!(engine.read(&shop, State::clone).await.expect("readable"), state);
    close(engine).await;
}

/// The shop's state once it serves again after a failure, polled for at most 10 s.
async fn read_once_healed(engine: &Engine, shop: &ShopId) -> State {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match engine.read(shop, State::clone).await {
            Err(CommandError::Unavailable { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answer => return answer.expect("readable once healed"),
        }
    }
}

#[tokio::test]
async fn unknown_shops_and_bad_requests_are_refused_before_deciding() {
    let engine = open(Arc::new(MemoryStore::new()), Arc::new(ManualClock::new(demo::DAY_START))).await;
    let nowhere = ShopId::new("nowhere").expect("valid");
    let listing = Request::new("tester", list("S1", dec!(5.00)));
    assert_eq!(engine.execute(&nowhere, listing.clone()).await, Err(CommandError::UnknownShop(nowhere)));
    let nameless = Request { actor: String::new(), ..listing.clone() };
    assert!(matches!(engine.execute(&ShopId::main(), nameless).await, Err(CommandError::InvalidRequest(_))));
    assert!(ShopId::new("Main").is_err() && ShopId::new("").is_err() && ShopId::new(&"a".repeat(65)).is_err());
    assert!(CommandId::new(&"c".repeat(129)).is_err() && CommandId::new("a b").is_err());
    assert_eq!(engine.store().last_position(&ShopId::main()).await, Ok(0));
}

#[tokio::test]
async fn a_full_queue_answers_overloaded_at_once_and_loses_nothing_queued() {
    let store = Arc::new(TestStore::new(true));
    // One batch appending, one being decided behind it (of one command), one place queued.
    let config = EngineConfig { queue_commands_max: 1, batch_commands_max: 1, ..EngineConfig::default() };
    let engine = Engine::open(store.clone(), Arc::new(ManualClock::new(demo::DAY_START)), config).await.expect("opens");
    let engine = Arc::new(engine);
    let shop = ShopId::main();
    engine.create_shop(&shop).await.expect("created");
    let send = |sku: &str| {
        let (engine, shop, sku) = (engine.clone(), shop.clone(), sku.to_owned());
        tokio::spawn(async move { engine.execute(&shop, Request::new("tester", list(&sku, dec!(1.00)))).await })
    };
    // The first command is appending, held at the store's gate.
    let first = send("S1");
    store.entered.notified().await;
    // Of four more, at most two find room (the batch behind it and the queue); the others
    // are told at once that the shop is overloaded, while the gate is still closed.
    let others: Vec<_> = ["S2", "S3", "S4", "S5"].into_iter().map(send).collect();
    while others.iter().filter(|other| other.is_finished()).count() < 2 {
        tokio::task::yield_now().await;
    }
    store.gate.as_ref().expect("gated").add_permits(10);
    assert!(first.await.expect("answered").is_ok());
    let mut kept = vec!["S1".to_owned()];
    let mut refused = 0;
    for (sku, other) in ["S2", "S3", "S4", "S5"].into_iter().zip(others) {
        match other.await.expect("answered") {
            Ok(_) => kept.push(sku.to_owned()),
            Err(error) => {
                assert_eq!(error, CommandError::Overloaded(shop.clone()));
                refused += 1;
            }
        }
    }
    assert!((2..=3).contains(&refused), "{refused} refused");
    // Nothing that found room was lost, and nothing refused was recorded.
    let listed = engine.read(&shop, |s: &State| s.products().map(|p| p.sku.to_string()).collect::<Vec<_>>()).await;
    assert_eq!(listed, Ok(kept));
}

#[tokio::test]
async fn an_idle_shop_records_expiries_by_itself() {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(demo::DAY_START));
    let config = EngineConfig { tick_interval_ms: 5, ..EngineConfig::default() };
    let engine = Engine::open(store.clone(), clock.clone(), config).await.expect("opens");
    let shop = ShopId::main();
    engine.create_shop(&shop).await.expect("created");
    for command in [list("S1", dec!(5.00)), receive("S1", 10, dec!(2.00)), place("O-1", &[("S1", 4)])] {
        engine.execute(&shop, Request::new("tester", command)).await.expect("accepted");
    }
    clock.advance_ms(30 * MINUTE_MS);
    // No command arrives: the writer's own tick must record the expiry.
    let reached = store.wait_for(&shop, 3, Duration::from_secs(30)).await.expect("waited");
    assert_eq!(reached, 4);
    let expired = store.read_from(&shop, 3, 1).await.expect("readable");
    assert_eq!(
        expired.iter().map(|e| (e.event.kind(), e.actor.as_str())).collect::<Vec<_>>(),
        [("order_expired", "engine")]
    );
    // Idle ticks go on (every 5 ms) without counting as group commits: three commands and
    // one expiry are four batches.
    let after = store.wait_for(&shop, 4, Duration::from_millis(100)).await.expect("waited");
    assert_eq!(after, 4, "nothing more was due");
    assert_eq!(engine.stats().batch_commands.count(), 4);
    assert_eq!(engine.stats().batch_events.count(), 4);
    // Each of them was appended and timed.
    assert_eq!(engine.stats().group_commit_s.count(), 4);
    assert!(engine.stats().group_commit_s.sum() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_shop_queue_is_answered_503_with_retry_after_over_http() {
    use emporium::service::{self, App, ServiceConfig, Tokens};

    let store = Arc::new(TestStore::new(true));
    let config = EngineConfig { queue_commands_max: 1, batch_commands_max: 1, ..EngineConfig::default() };
    let clock = Arc::new(ManualClock::new(demo::DAY_START));
    let engine = Arc::new(Engine::open(store.clone(), clock, config).await.expect("opens"));
    let shop = ShopId::main();
    engine.create_shop(&shop).await.expect("created");
    let app = App::new(engine.clone(), Tokens::none(), ServiceConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let client = crate::http::Client { address: listener.local_addr().expect("address"), token: None };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(service::serve(listener, app, async {
        let _ = stopped.await;
    }));
    let post = |client: &crate::http::Client, sku: &str| {
        let client = client.clone();
        let body = serde_json::json!({"sku": sku, "title": "T", "category": "c", "price": "1.00", "weight_g": 1,
            "low_stock_threshold": 0});
        tokio::task::spawn_blocking(move || client.post("/v1/shops/main/products", &body))
    };
    // The first command is held inside the store's append; one more can be decided behind
    // it and one can wait in the queue (one place); the rest are refused at once.
    let first = post(&client, "Q-0");
    store.entered.notified().await;
    let others: Vec<_> = (1..=4).map(|n| post(&client, &format!("Q-{n}"))).collect();
    while others.iter().filter(|other| other.is_finished()).count() < 2 {
        tokio::task::yield_now().await;
    }
    // Whatever finished while the gate was closed was refused.
    let finished_early: Vec<bool> = others.iter().map(|other| other.is_finished()).collect();
    store.gate.as_ref().expect("gated").add_permits(10);
    assert_eq!(first.await.expect("ran").status, 201);
    let (mut refused, mut accepted) = (0, 0);
    for (other, early) in others.into_iter().zip(finished_early) {
        let response = other.await.expect("request ran");
        if response.status == 201 {
            assert!(!early, "an accepted command waited for the gate");
            accepted += 1;
            continue;
        }
        assert_eq!(response.status, 503, "{}", String::from_utf8_lossy(&response.body));
        assert_eq!(response.code(), "overloaded");
        assert_eq!(response.header("retry-after"), Some("1"));
        refused += 1;
    }
    assert!((2..=3).contains(&refused) && refused + accepted == 4, "{refused} refused, {accepted} accepted");
    assert_eq!(store.last_position(&shop).await.expect("position"), 1 + accepted, "refused commands appended nothing");
    let _ = stop.send(());
    server.await.expect("server task").expect("served");
    engine.close().await;
}
