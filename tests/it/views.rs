//! The read side: views with exact values, determinism across rebuilds, as-of queries,
//! and snapshots that fail.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use emporium::engine::{ENGINE_SNAPSHOT_SCHEMA, Engine, EngineConfig, ManualClock, Request, SnapshotConfig};
use emporium::log::record::Envelope;
use emporium::log::store::{AppendBatch, EventStore, MemoryStore, SledStore};
use emporium::rehearsal::sim::{self, DayConfig};
use emporium::views::{
    Account, HOUR_MS, LATE_SHIPMENT_MS_DEFAULT, PARALLEL_FOLD_FACTS_MIN, SLOW_MOVER_DAYS_DEFAULT, TimelineEntry, Views,
};
use emporium::{OrderId, ShopId, State, Timestamp, rehearsal::demo};
use emporium_projections::{AsOf, Gap};
use emporium_snapshots::{Snapshot, SnapshotStore};
use rust_decimal::{Decimal, dec};

use crate::support::{all_events, drive, emporium, emporium_into_closed_pipe, temp_dir};

fn rebuilt(events: &[Envelope], as_of: AsOf) -> Views {
    let mut views = Views::new();
    views.catch_up(events, as_of).expect("gap-free");
    views
}

/// A generated day of 2,000 orders (seed 5) driven through an engine on a memory store, and
/// its log.
async fn generated_day_2000() -> (Arc<MemoryStore>, Engine, Vec<Envelope>) {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(demo::DAY_START));
    let engine = open(store.clone(), clock.clone(), None).await;
    let shop = ShopId::main();
    drive(&engine, &shop, &clock, sim::generate_day(&DayConfig::new(2_000, 5, demo::DAY_START))).await;
    let events = all_events(store.as_ref(), &shop).await;
    (store, engine, events)
}

async fn open(store: Arc<dyn EventStore>, clock: Arc<ManualClock>, snapshots: Option<SnapshotConfig>) -> Engine {
    // Few orders as values, and the rest spilled out of memory after every batch: deciding,
    // snapshots and recovery all meet encoded and spilled orders.
    let spill_dir = Some(std::env::temp_dir());
    let config = EngineConfig { snapshots, orders_hot_max: 64, spill_dir, ..EngineConfig::default() };
    let engine = Engine::open(store, clock, config).await.expect("opens");
    engine.create_shop(&ShopId::main()).await.expect("created");
    engine
}

#[tokio::test]
async fn the_views_of_the_shop_day_hold_the_expected_figures() {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(demo::DAY_START));
    let engine = open(store.clone(), clock.clone(), None).await;
    let shop = ShopId::main();
    assert_eq!(drive(&engine, &shop, &clock, demo::shop_day()).await, (21, 0));
    let last = store.last_position(&shop).await.expect("readable");
    assert_eq!(engine.views_reach(&shop, last, Duration::from_secs(10)).await, Ok(last));

    engine
        .views(&shop, |views| {
            let tea = views.shop.projection().stock(&"TEA-001".into(), SLOW_MOVER_DAYS_DEFAULT).expect("listed");
            assert_eq!((tea.on_hand, tea.reserved, tea.available, tea.shortfall), (149, 1, 148, 0));
            assert_eq!((tea.inventory_value, tea.unit_cost), (dec!(7931.77), Some(dec!(53.2334))));
            // 3 units paid within the last 7 days: 148 available cover 148 * 7 / 3 days.
            assert_eq!((tea.low_stock, tea.days_of_cover, tea.slow_mover), (false, Some(dec!(345.3)), false));
            // The teapot last sold at minute 36; the view's time is 2.8 days later.
            let pot = |days| views.shop.projection().stock(&"POT-003".into(), days).expect("listed");
            assert_eq!((pot(2).available, pot(2).low_stock, pot(2).slow_mover), (9, false, true));
            assert!(!pot(3).slow_mover && !pot(SLOW_MOVER_DAYS_DEFAULT).slow_mover);

            let ledger = views.ledger.projection();
            let expected = [
                (Account::Cash, dec!(660.50)),
                (Account::Inventory, dec!(9324.02)),
                (Account::AccountsPayable, dec!(-9439.00)),
                (Account::CustomerDeposits, dec!(-396.00)),
                (Account::SalesRevenue, dec!(-438.00)),
                (Account::ShippingRevenue, dec!(0)),
                (Account::Discounts, dec!(0)),
                (Account::SalesReturns, dec!(173.50)),
                (Account::CostOfGoodsSold, dec!(90.28)),
                (Account::Shrinkage, dec!(24.70)),
            ];
            assert_eq!(ledger.trial_balance(), expected);
            assert_eq!(ledger.check(views.shop.projection()), Ok(()));
            assert_eq!(
                ledger.journal().count(),
                11,
                "4 receipts, a stocktake, 2 payments, 2 parcels, a return, a refund"
            );
            // The journal keeps millions of entries: none holds room for postings it lacks.
            let room: Vec<(usize, usize)> = ledger
                .journal()
                .map(|e| e.expect("in memory"))
                .map(|e| (e.postings.capacity(), e.postings.len()))
                .collect();
            assert!(room.iter().all(|(capacity, len)| capacity == len), "{room:?}");

            let day = views.analytics.projection().summary(
                demo::DAY_START,
                Timestamp(demo::DAY_START.0 + 96 * HOUR_MS),
                LATE_SHIPMENT_MS_DEFAULT,
            );
            assert_eq!((day.gmv, day.net_sales, day.orders, day.units), (dec!(834.00), dec!(660.50), 2, 8));
            assert_eq!(day.average_order_value, Some(dec!(417.00)));
            assert_eq!(
                (day.refund_rate, day.return_rate, day.repurchase_rate),
                (Some(dec!(0.5)), Some(dec!(0.3333)), Some(dec!(0)))
            );
            let top: Vec<(&str, u64)> = day.top_by_units.iter().map(|(s, u)| (s.as_str(), *u)).collect();
            assert_eq!(top, [("CUP-002", 4), ("TEA-001", 3), ("POT-003", 1)]);
            assert_eq!((day.ship_time_p50_ms, day.late_shipments), (Some(85 * 60_000), 0));
            let hours = views.analytics.projection().series(
                emporium::views::Bucket::Hour,
                demo::DAY_START,
                Timestamp(demo::DAY_START.0 + 3 * HOUR_MS),
                LATE_SHIPMENT_MS_DEFAULT,
                100,
            );
            assert_eq!(hours.iter().map(|h| h.orders).collect::<Vec<_>>(), [2, 0, 0]);

            let buyer = views.customers.projection().customer(&"C-88".into()).expect("known");
            assert_eq!(
                (buyer.orders, buyer.paid_orders, buyer.total_spent, buyer.repeat_buyer()),
                (1, 1, dec!(264.50), false)
            );
        })
        .expect("served");

    // An order's history comes from the log's stream index, not from a view.
    let history = emporium::log::store::order_history(store.as_ref(), &shop, &OrderId::from("A-1001"), last)
        .await
        .expect("readable")
        .expect("placed");
    let timeline: Vec<TimelineEntry> = history.iter().map(TimelineEntry::of).collect();
    let kinds: Vec<&str> = timeline.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "order_placed",
            "order_paid",
            "shipment_dispatched",
            "shipment_dispatched",
            "shipment_delivered",
            "shipment_delivered",
            "return_requested",
            "return_received",
            "refund_issued"
        ]
    );
    assert_eq!(timeline[1].summary, "paid 438.00 (PAY-1)");
    assert!(timeline.iter().all(|e| e.actor == "tester"));
    let unknown = emporium::log::store::order_history(store.as_ref(), &shop, &OrderId::from("A-9999"), last).await;
    assert_eq!(unknown.expect("readable"), None);
    let placed_at = timeline[0].position;
    let before =
        emporium::log::store::order_history(store.as_ref(), &shop, &OrderId::from("A-1001"), placed_at - 1).await;
    assert_eq!(before.expect("readable"), None, "not yet placed as of the position before");
}

#[tokio::test]
async fn a_generated_day_rebuilds_identically_from_zero_from_a_snapshot_and_live() {
    let dir = temp_dir();
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(demo::DAY_START));
    let snapshots = SnapshotConfig { dir: dir.path().to_path_buf(), every_events: 100_000, keep: 2 };
    let engine = open(store.clone(), clock.clone(), Some(snapshots)).await;
    let shop = ShopId::main();
    let day = sim::generate_day(&DayConfig::new(100_000, 11, demo::DAY_START));
    let (accepted, rejected) = drive(&engine, &shop, &clock, day).await;
    assert!(accepted > 300_000 && rejected > 0, "accepted {accepted}, rejected {rejected}");
    let events = all_events(store.as_ref(), &shop).await;
    let last = events.len() as u64;
    let kinds: std::collections::BTreeSet<&str> = events.iter().map(|e| e.event.kind()).collect();
    for kind in ["order_expired", "order_cancelled", "shipment_dispatched", "return_received", "refund_issued"] {
        assert!(kinds.contains(kind), "the day has no {kind}");
    }

    let zero = rebuilt(&events, AsOf::End);
    assert_eq!(zero.ledger.projection().check(zero.shop.projection()), Ok(()));
    let live_state = engine.read(&shop, State::clone).await.expect("served");
    assert!(live_state.orders_frozen() > live_state.orders_len() * 9 / 10, "most orders are kept encoded");
    assert!(live_state.orders_spilled() > live_state.orders_len() * 8 / 10, "most orders are out of memory");
    zero.shop.projection().check_invariants();
    assert_eq!(zero.shop.projection().matches(&live_state), Ok(()));
    assert!(zero.shop.projection().holds().len() < live_state.orders_len() / 2, "the view keeps no settled order");
    // A view one shipment short of the state does not match it.
    let Some(shipped) = events.iter().rposition(|e| e.event.kind() == "shipment_dispatched") else {
        panic!("the day ships")
    };
    let short = rebuilt(&events[..shipped], AsOf::End);
    assert!(short.shop.projection().matches(&live_state).is_err(), "a view behind the state differs from it");

    assert_eq!(engine.views_reach(&shop, last, Duration::from_secs(60)).await, Ok(last));
    let live = engine.views(&shop, |views| views.hashes().expect("hashed")).expect("served");
    assert_eq!(live, zero.hashes().expect("hashed"), "live catch-up");
    // The live ledger folded the day with books and journal blocks moving out of memory.
    let (books, blocks) = engine.views(&shop, |views| views.ledger.projection().spilled()).expect("served");
    assert!(books > 10_000 && blocks > 100, "spilled {books} books and {blocks} journal blocks");

    let view_snapshots = SnapshotStore::open(&dir.path().join("main").join("views"), 2).expect("opens");
    let loaded = view_snapshots.load_newest(emporium::engine::VIEWS_SNAPSHOT_SCHEMA).expect("readable");
    let snapshot = loaded.snapshot.expect("the follower took snapshots");
    assert!(snapshot.position >= 100_000 && snapshot.position < last, "a snapshot with a tail after it");
    let mut resumed = Views::decode(&snapshot.state, snapshot.position).expect("decodes");
    resumed.catch_up(&events[snapshot.position as usize..], AsOf::End).expect("gap-free");
    assert_eq!(resumed.hashes().expect("hashed"), zero.hashes().expect("hashed"), "snapshot and tail");
}

/// The histories view keeps, for every order and as of any position, exactly the positions
/// that the store's stream index reads for its history.
#[tokio::test]
async fn the_histories_view_agrees_with_the_stream_index() {
    let (store, engine, events) = generated_day_2000().await;
    let shop = ShopId::main();
    let last = events.len() as u64;
    let orders: Vec<OrderId> = engine
        .read(&shop, |state| state.orders().map(|o| o.expect("read back").id.clone()).collect())
        .await
        .expect("served");
    assert!(orders.len() > 1_000, "{} orders", orders.len());
    for through in [last / 2, last] {
        let views = rebuilt(&events, AsOf::Position(through));
        let mut placed = 0;
        for order_id in &orders {
            let stored =
                emporium::log::store::order_history(store.as_ref(), &shop, order_id, through).await.expect("readable");
            let stored: Option<Vec<u64>> = stored.map(|events| events.iter().map(|e| e.position).collect());
            let kept = views.histories.projection().positions(order_id);
            assert_eq!(kept, stored, "order {order_id} as of {through}");
            placed += usize::from(kept.is_some());
        }
        assert!(placed > 0 && (through < last) == (placed < orders.len()), "{placed} placed as of {through}");
    }
}

/// From `PARALLEL_FOLD_FACTS_MIN` facts, the shop view and the ledger fold on one thread
/// and the other views on another; piece by piece below it, all fold on one. The views end the same, and
/// at a gap every view stops before it and names it.
#[tokio::test]
async fn views_folded_on_two_threads_equal_views_folded_on_one() {
    let (_, _, events) = generated_day_2000().await;
    assert!(events.len() > 2 * PARALLEL_FOLD_FACTS_MIN, "{} events", events.len());
    let whole = rebuilt(&events, AsOf::End);
    let mut pieces = Views::new();
    for piece in events.chunks(PARALLEL_FOLD_FACTS_MIN - 1) {
        pieces.catch_up(piece, AsOf::End).expect("gap-free");
    }
    assert_eq!(whole.checkpoint(), events.len() as u64);
    assert_eq!(whole.hashes().expect("hashed"), pieces.hashes().expect("hashed"));

    // One thread, then two.
    for (facts, missing) in [(PARALLEL_FOLD_FACTS_MIN - 1, 1_001), (events.len(), 3_001)] {
        let with_gap: Vec<&Envelope> = events[..facts].iter().filter(|e| e.position != missing).collect();
        let mut gapped = Views::new();
        let gap = gapped.catch_up(with_gap.iter().copied(), AsOf::End);
        assert_eq!(gap, Err(Gap { expected: missing, found: missing + 1 }));
        assert_eq!(
            gapped.hashes().expect("hashed"),
            rebuilt(&events[..missing as usize - 1], AsOf::End).hashes().expect("hashed"),
            "{facts} facts"
        );
    }
}

#[tokio::test]
async fn a_view_as_of_a_position_or_time_is_the_view_of_the_log_cut_there() {
    let (_, _, events) = generated_day_2000().await;
    let shop = ShopId::main();
    let last = events.len() as u64;
    for position in [1, 100, last / 3, last / 2, last - 1, last] {
        let as_of = rebuilt(&events, AsOf::Position(position));
        let cut_store = MemoryStore::new();
        let cut = events[..position as usize].to_vec();
        cut_store
            .append(&shop, &AppendBatch { expected_last: 0, events: cut, rejections: vec![] })
            .await
            .expect("appended");
        let from_cut = rebuilt(&all_events(&cut_store, &shop).await, AsOf::End);
        assert_eq!(as_of.checkpoint(), position);
        assert_eq!(as_of.hashes().expect("hashed"), from_cut.hashes().expect("hashed"), "as of position {position}");

        let at = events[position as usize - 1].recorded_at;
        let through = events.iter().take_while(|e| e.recorded_at <= at).count();
        let by_time = rebuilt(&events, AsOf::TimeMs(at.0));
        assert_eq!(
            by_time.hashes().expect("hashed"),
            rebuilt(&events[..through], AsOf::End).hashes().expect("hashed"),
            "as of time {at}"
        );
    }
}

fn snapshot_files(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    SnapshotStore::open(&dir.join("main").join("engine"), 3).expect("opens").list().expect("listed")
}

#[tokio::test]
async fn a_truncated_a_flipped_and_an_old_snapshot_are_each_passed_over() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let snapshots = SnapshotConfig { dir: dir.path().join("snapshots"), every_events: 2_000, keep: 3 };
    let clock = Arc::new(ManualClock::new(demo::DAY_START));
    let shop = ShopId::main();
    {
        let store = Arc::new(SledStore::open(&data).expect("opens"));
        let engine = open(store, clock.clone(), Some(snapshots.clone())).await;
        drive(&engine, &shop, &clock, sim::generate_day(&DayConfig::new(2_000, 7, demo::DAY_START))).await;
        engine.close().await;
    }
    let files = snapshot_files(&snapshots.dir);
    assert_eq!(files.len(), 3, "{files:?}");
    let reopen = || async {
        let store = Arc::new(SledStore::open(&data).expect("reopens"));
        let expected = {
            let mut state = State::new();
            for envelope in all_events(store.as_ref(), &shop).await {
                state.apply(&envelope.event);
            }
            state
        };
        let engine = open(store.clone(), clock.clone(), Some(snapshots.clone())).await;
        let state = engine.read(&shop, State::clone).await.expect("served");
        assert_eq!(state, expected, "recovered state");
        let from = engine.recovered_from(&shop);
        engine.close().await;
        from
    };
    // Closing snapshots the end of the log, so the newest file is at the last position.
    let last = {
        let store = SledStore::open(&data).expect("opens");
        store.last_position(&shop).await.expect("readable")
    };
    assert_eq!(files[2].1, last, "the engine snapshotted the end of the log when it closed");
    assert_eq!(reopen().await, Some(last), "the newest snapshot when all are sound");
    // Every reopen that started from an older snapshot writes the end one again at close.
    let truncate = |path: &Path| {
        let bytes = std::fs::read(path).expect("readable");
        std::fs::write(path, &bytes[..bytes.len() / 2]).expect("truncated");
    };
    let flip = |path: &Path| {
        let mut bytes = std::fs::read(path).expect("readable");
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        std::fs::write(path, bytes).expect("flipped");
    };
    truncate(&files[2].0);
    assert_eq!(reopen().await, Some(files[1].1), "a truncated snapshot is passed over");
    assert_eq!(snapshot_files(&snapshots.dir), files, "and rewritten at close");
    flip(&files[2].0);
    flip(&files[1].0);
    assert_eq!(reopen().await, Some(files[0].1), "bit-flipped snapshots are passed over");

    let engine_snapshots = SnapshotStore::open(&snapshots.dir.join("main").join("engine"), 3).expect("opens");
    for (path, position) in &files {
        let bytes = std::fs::read(path).expect("readable");
        let old = Snapshot { position: *position, schema_version: ENGINE_SNAPSHOT_SCHEMA - 1, state: bytes };
        engine_snapshots.save(&old).expect("saved");
    }
    assert_eq!(reopen().await, None, "snapshots of an older schema are ignored and the log replayed");
    assert_eq!(reopen().await, Some(last), "which the engine snapshotted again at close");
}

#[test]
fn refunds_and_cash_reconcile_in_a_generated_day() {
    let mut state = State::new();
    let day = sim::generate_day(&DayConfig::new(3_000, 3, demo::DAY_START));
    let (mut paid, mut refunded) = (Decimal::ZERO, Decimal::ZERO);
    for (at, command) in day {
        let command = sim::price(&state, command);
        if let Ok(events) = state.execute(at, &command) {
            for event in events {
                match event {
                    emporium::Event::OrderPaid { amount, .. } => paid += amount,
                    emporium::Event::RefundIssued { amount, .. } => refunded += amount,
                    _ => {}
                }
            }
        }
    }
    state.check_invariants();
    let orders_paid: Decimal = state.orders().map(|o| o.expect("in memory").paid()).sum();
    let orders_refunded: Decimal = state.orders().map(|o| o.expect("in memory").refunded).sum();
    assert_eq!((orders_paid, orders_refunded), (paid, refunded));
    assert!(refunded > Decimal::ZERO && paid > refunded);
}

#[test]
fn replay_and_audit_from_the_command_line() {
    let dir = temp_dir();
    let (ok, out, err) = emporium(&["demo"], dir.path());
    assert!(ok, "{err}");
    assert!(out.contains("21 commands executed"), "{out}");

    let (ok, out, err) = emporium(&["replay", "--check"], dir.path());
    assert!(ok, "{err}");
    assert!(out.contains("rebuilt 21 events from zero") && out.contains("every build agrees"), "{out}");
    for name in ["shop", "ledger", "analytics", "customers"] {
        assert!(out.lines().any(|l| l.trim_start().starts_with(name)), "{name} has no hash: {out}");
    }
    let (ok, by_position, _) = emporium(&["replay", "--as-of", "14"], dir.path());
    let (ok_time, by_time, _) = emporium(&["replay", "--as-of", "2026-11-11T09:40:00Z"], dir.path());
    assert!(ok && ok_time && by_position.contains("as of position 14"));
    let hashes = |out: &str| out.lines().filter(|l| l.starts_with("    ")).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(hashes(&by_position), hashes(&by_time), "09:40 is when position 14 was recorded");
    let (ok, _, err) = emporium(&["replay", "--as-of", "yesterday"], dir.path());
    assert!(!ok && err.contains("--as-of takes a log position or an RFC 3339 time"), "{err}");

    let (ok, out, err) = emporium(&["audit", "--order", "A-1001"], dir.path());
    assert!(ok, "{err}");
    assert!(out.starts_with("order A-1001 in shop main: 9 events"), "{out}");
    assert!(out.contains("2026-11-11T09:35:00.000Z") && out.contains("paid 438.00 (PAY-1)"), "{out}");
    let (ok, _, err) = emporium(&["audit", "--order", "A-9999"], dir.path());
    assert!(!ok && err.contains("has no order A-9999"), "{err}");
}

/// A reader that goes away (`emporium replay | head -1`) gets an error, never a panic.
#[test]
fn a_closed_standard_output_is_an_error_not_a_panic() {
    let dir = temp_dir();
    assert!(emporium(&["demo"], dir.path()).0);
    let (ok, stderr) = emporium_into_closed_pipe(&["replay"], dir.path());
    assert!(!ok);
    assert!(stderr.contains("cannot write to standard output") && !stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn the_policy_in_force_is_the_engines_also_after_a_snapshot() {
    use emporium::Policy;
    let dir = temp_dir();
    let snapshots = SnapshotConfig { dir: dir.path().join("snapshots"), every_events: 1_000, keep: 2 };
    let store: Arc<dyn EventStore> = Arc::new(SledStore::open(&dir.path().join("log")).expect("opens"));
    let clock = Arc::new(ManualClock::new(demo::DAY_START));
    let shop = ShopId::main();
    let engine = open(store.clone(), clock.clone(), Some(snapshots.clone())).await;
    assert_eq!(drive(&engine, &shop, &clock, demo::shop_day()).await, (21, 0));
    engine.close().await;

    let five_minutes = Policy { payment_ttl_ms: 5 * 60_000, ..Policy::default() };
    let config = EngineConfig { snapshots: Some(snapshots), policy: five_minutes, ..EngineConfig::default() };
    let engine = Engine::open(store, clock.clone(), config).await.expect("reopens");
    assert!(engine.recovered_from(&shop).is_some(), "started from the snapshot taken at close");
    let order = crate::support::place("O-NEW", &[("TEA-001", 1)]);
    engine.execute(&shop, Request::new("tester", order)).await.expect("accepted");
    let due = engine
        .read(&shop, |state: &State| {
            state.order(&"O-NEW".into()).expect("in memory").map(|o| (o.placed_at, o.payment_due_by))
        })
        .await
        .expect("served")
        .expect("placed");
    assert_eq!(due.1.0 - due.0.0, 5 * 60_000, "the reopened engine's payment time limit applies");
}

/// An order placed from a checkout hold begins its history with the hold's events, as of
/// any position; a later hold of the same SKU stays out of it.
#[tokio::test]
async fn an_order_placed_from_a_hold_starts_its_history_with_the_hold() {
    use crate::support::{list, place, place_with, receive, reserve};
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(demo::DAY_START));
    let engine = open(store.clone(), clock, None).await;
    let shop = ShopId::main();
    for command in [
        list("S1", dec!(5.00)),
        receive("S1", 10, dec!(2.00)),
        reserve("R-1", &[("S1", 2)], None),
        place("O-0", &[("S1", 1)]),
        place_with("O-1", &[("S1", 2)], Some("R-1")),
        reserve("R-2", &[("S1", 1)], None),
    ] {
        engine.execute(&shop, Request::new("tester", command)).await.expect("accepted");
    }
    let last = store.last_position(&shop).await.expect("readable");
    let history = |through| {
        let store = store.clone();
        let shop = shop.clone();
        async move {
            let events = emporium::log::store::order_history(store.as_ref(), &shop, &OrderId::from("O-1"), through)
                .await
                .expect("readable");
            events.map(|events| events.iter().map(|e| (e.position, e.event.kind())).collect::<Vec<_>>())
        }
    };
    assert_eq!(history(last).await, Some(vec![(3, "stock_reserved"), (5, "order_placed")]));
    assert_eq!(history(4).await, None, "not placed as of position 4");

    // The histories view keeps the same positions, and the route reads them back.
    engine.views_reach(&shop, last, Duration::from_secs(10)).await.expect("caught up");
    let kept = engine.views(&shop, |views| views.histories.projection().positions(&OrderId::from("O-1")));
    assert_eq!(kept.expect("served"), Some(vec![3, 5]));
    let read = emporium::log::store::read_positions(store.as_ref(), &shop, &[3, 5]).await.expect("readable");
    assert_eq!(
        read.iter().map(|e| (e.position, e.event.kind())).collect::<Vec<_>>(),
        [(3, "stock_reserved"), (5, "order_placed")]
    );
    let past_end = emporium::log::store::read_positions(store.as_ref(), &shop, &[last + 1]).await;
    assert!(matches!(past_end, Err(emporium::log::store::StoreError::Corrupt { .. })), "{past_end:?}");
}
