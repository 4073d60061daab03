//! The durable log: fencing, checksums and the hash chain, verification, the CLI.

use std::path::Path;
use std::sync::Arc;

use emporium::engine::{CommandError, Engine, EngineConfig, ManualClock, Request};
use emporium::log::record::{Envelope, RECORD_OVERHEAD_BYTES};
use emporium::log::store::{AppendBatch, EventStore, MemoryStore, SledStore, StoreError};
use emporium::{CommandId, Event, ShopId, Sku, rehearsal::demo::DAY_START};
use rust_decimal::dec;

use crate::support::*;

fn envelope(position: u64) -> Envelope {
    Envelope {
        position,
        stream: "sku-S1".into(),
        stream_version: position,
        recorded_at: DAY_START,
        command_id: CommandId::generated("fence", position),
        fingerprint: [0; 16],
        correlation_id: "c".into(),
        actor: "tester".into(),
        event: Event::ProductDelisted { sku: Sku::from("S1") },
    }
}

/// Appends `batch` the way the engine's writer does: `append_blocking` on a blocking thread.
async fn append_blocking(store: &Arc<dyn EventStore>, shop: &ShopId, batch: AppendBatch) -> Result<u64, StoreError> {
    let (store, shop, runtime) = (store.clone(), shop.clone(), tokio::runtime::Handle::current());
    tokio::task::spawn_blocking(move || store.append_blocking(&runtime, &shop, &batch)).await.expect("the append")
}

async fn check_fence(store: Arc<dyn EventStore>) {
    let shop = ShopId::main();
    let batch = || AppendBatch { expected_last: 0, events: vec![envelope(1)], rejections: vec![] };
    assert_eq!(store.append(&shop, &batch()).await, Ok(1));
    let conflict = Err(StoreError::Conflict { shop: shop.clone(), expected: 0, actual: 1 });
    assert_eq!(store.append(&shop, &batch()).await, conflict);
    // Appending from a blocking thread is fenced the same way.
    assert_eq!(append_blocking(&store, &shop, batch()).await, conflict);
    assert_eq!(store.last_position(&shop).await, Ok(1));
    assert_eq!(store.read_from(&shop, 0, 10).await.map(|e| e.len()), Ok(1));
    assert_eq!(store.verify(&shop).await.map(|r| r.events), Ok(1));
}

#[tokio::test]
async fn a_second_writer_is_fenced_off() {
    check_fence(Arc::new(MemoryStore::new())).await;
    let dir = temp_dir();
    check_fence(Arc::new(SledStore::open(dir.path()).expect("opens"))).await;
}

/// Writes a small shop log (a product, stock, `orders` orders and their payments) to a
/// sled store in `dir` through the engine, from many tasks so batches hold many commands.
async fn write_shop_log(dir: &Path, orders: usize, tasks: usize) -> u64 {
    let store = Arc::new(SledStore::open(dir).expect("opens"));
    let engine = Arc::new(
        Engine::open(store.clone(), Arc::new(ManualClock::new(DAY_START)), EngineConfig::default())
            .await
            .expect("opens"),
    );
    let shop = ShopId::main();
    engine.create_shop(&shop).await.expect("created");
    for command in [list("S1", dec!(9.90)), receive("S1", 1_000_000, dec!(3.10))] {
        engine.execute(&shop, Request::new("tester", command)).await.expect("accepted");
    }
    let place_all = (0..orders).map(|i| Request::new("tester", place(&format!("O-{i}"), &[("S1", 1)]))).collect();
    assert!(submit_all(&engine, &shop, place_all, tasks).await.iter().all(Result::is_ok));
    let pay_all = (0..orders).map(|i| Request::new("tester", pay(&format!("O-{i}"), dec!(9.90)))).collect();
    assert!(submit_all(&engine, &shop, pay_all, tasks).await.iter().all(Result::is_ok));
    let last = store.last_position(&shop).await.expect("readable");
    assert_eq!(last, 2 + 2 * orders as u64);
    Arc::into_inner(engine).expect("no other users").close().await;
    last
}

/// Every record in the raw sled tree: (position, chunk key, offset in the chunk, length).
fn raw_records(dir: &Path) -> Vec<(u64, Vec<u8>, usize, usize)> {
    let db = raw_db(dir);
    let tree = db.open_tree("shop/main").expect("the shop's tree");
    let mut records = Vec::new();
    for entry in tree.scan_prefix([b'e']) {
        let (key, value) = entry.expect("readable");
        let mut position = u64::from_be_bytes(key[1..9].try_into().expect("a chunk key"));
        let mut offset = 0;
        while offset < value.len() {
            let body_len = u32::from_le_bytes(value[offset..offset + 4].try_into().expect("a length")) as usize;
            let length = body_len + RECORD_OVERHEAD_BYTES;
            records.push((position, key.to_vec(), offset, length));
            offset += length;
            position += 1;
        }
    }
    records
}

/// The raw sled database, once the last store on it has let go of its lock.
fn raw_db(dir: &Path) -> sled::Db {
    let timeout = std::time::Duration::from_millis(emporium::log::store::LOCK_WAIT_MS);
    assert!(emporium::log::store::wait_until_unlocked(dir, timeout).expect("lockable"), "the database is still open");
    sled::Config::new().path(dir).segment_size(emporium::log::store::SEGMENT_BYTES).open().expect("raw open")
}

fn flip_byte(dir: &Path, key: &[u8], offset: usize) {
    let db = raw_db(dir);
    let tree = db.open_tree("shop/main").expect("the shop's tree");
    let mut value = tree.get(key).expect("readable").expect("present").to_vec();
    value[offset] ^= 0xFF;
    tree.insert(key, value).expect("written");
    db.flush().expect("flushed");
}

async fn verify_error_position(dir: &Path) -> Option<u64> {
    let store = SledStore::open(dir).expect("opens even when corrupt");
    match store.verify(&ShopId::main()).await {
        Ok(_) => None,
        Err(StoreError::Corrupt { corruption, .. }) => Some(corruption.position),
        Err(other) => panic!("verification failed otherwise: {other}"),
    }
}

#[tokio::test]
async fn flipping_any_byte_of_a_record_fails_verification_at_that_record() {
    let dir = temp_dir();
    let last = write_shop_log(dir.path(), 300, 32).await;
    let records = raw_records(dir.path());
    assert_eq!(records.len() as u64, last);
    assert!(records.iter().map(|r| &r.1).collect::<std::collections::BTreeSet<_>>().len() > 1, "several chunks");
    assert_eq!(verify_error_position(dir.path()).await, None);

    let mut sample: Vec<usize> = (0..records.len()).step_by(47).collect();
    sample.extend([1, records.len() - 1]);
    for index in sample {
        let (position, key, start, length) = &records[index];
        let body_len = length - RECORD_OVERHEAD_BYTES;
        // The length, the format byte, the header, the middle and end of the body, the
        // checksum, the first and last byte of the hash.
        let offsets = [0, 3, 4, 6, 4 + body_len / 2, 3 + body_len, 4 + body_len, 8 + body_len, length - 1];
        for offset in offsets {
            flip_byte(dir.path(), key, start + offset);
            let found = verify_error_position(dir.path()).await;
            assert_eq!(found, Some(*position), "flipped byte {offset} of the record at {position}");
            flip_byte(dir.path(), key, start + offset);
        }
    }
    assert_eq!(verify_error_position(dir.path()).await, None, "restored, the log verifies again");
}

#[tokio::test]
async fn a_clean_log_of_a_hundred_thousand_events_verifies() {
    let dir = temp_dir();
    let last = write_shop_log(dir.path(), 50_000, 512).await;
    assert!(last >= 100_000);
    let store = SledStore::open(dir.path()).expect("opens");
    let report = store.verify(&ShopId::main()).await.expect("intact");
    assert_eq!(report.events, last);
    let tail = store.read_from(&ShopId::main(), last - 3, 10).await.expect("readable");
    assert_eq!(tail.iter().map(|e| e.position).collect::<Vec<_>>(), vec![last - 2, last - 1, last]);
}

#[tokio::test]
async fn a_corrupt_shop_is_refused_naming_the_position_and_the_others_are_served() {
    let dir = temp_dir();
    write_shop_log(dir.path(), 20, 4).await;
    let records = raw_records(dir.path());
    let (position, key, start, length) = records[17].clone();
    flip_byte(dir.path(), &key, start + length / 2);

    let store = Arc::new(SledStore::open(dir.path()).expect("opens"));
    let engine =
        Engine::open(store, Arc::new(ManualClock::new(DAY_START)), EngineConfig::default()).await.expect("opens");
    let main = engine.execute(&ShopId::main(), Request::new("tester", list("S2", dec!(1)))).await;
    match main {
        Err(CommandError::Unavailable { reason, .. }) => {
            assert!(reason.contains(&format!("position {position}")), "{reason}")
        }
        other => panic!("expected the shop to be refused, got {other:?}"),
    }
    let other = ShopId::new("other").expect("valid");
    engine.create_shop(&other).await.expect("created");
    assert!(engine.execute(&other, Request::new("tester", list("S2", dec!(1)))).await.is_ok());
}

/// Recovery decodes the next pages of the log while it folds this one: a log of several
/// pages opens to the state its events fold to, and a record broken pages into it refuses
/// the shop at that record.
#[tokio::test]
async fn a_log_of_many_pages_opens_to_its_state_and_a_break_pages_in_is_refused_there() {
    let dir = temp_dir();
    let last = write_shop_log(dir.path(), 7_000, 64).await;
    assert!(last > 3 * 4096, "{last} events: more than three recovery pages");
    let shop = ShopId::main();
    let open = |store: Arc<SledStore>| async {
        Engine::open(store, Arc::new(ManualClock::new(DAY_START)), EngineConfig::default()).await.expect("opens")
    };
    {
        let store = Arc::new(SledStore::open(dir.path()).expect("opens"));
        let events = store.read_from(&shop, 0, usize::MAX).await.expect("readable");
        assert_eq!(events.len() as u64, last);
        let mut folded = emporium::State::new();
        for envelope in &events {
            folded.apply(&envelope.event);
        }
        let engine = open(store).await;
        let recovered = engine.read(&shop, |state| state.clone()).await.expect("served");
        assert_eq!(recovered.orders().count(), 7_000);
        assert!(recovered == folded, "the recovered state is the log folded");
        engine.close().await;
    }

    let (position, key, start, length) = raw_records(dir.path())[12_345].clone();
    assert_eq!(position, 12_346);
    flip_byte(dir.path(), &key, start + length / 2);
    let engine = open(Arc::new(SledStore::open(dir.path()).expect("opens"))).await;
    match engine.read(&shop, |state| state.orders().count()).await {
        Err(CommandError::Unavailable { reason, .. }) => {
            assert!(reason.contains(&format!("position {position}")), "{reason}")
        }
        other => panic!("expected the shop to be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn opening_from_zero_refuses_a_broken_chain_that_every_checksum_passes() {
    let dir = temp_dir();
    write_shop_log(dir.path(), 20, 4).await;
    let (position, key, start, length) = raw_records(dir.path())[9].clone();
    // The last byte of the record's stored hash: outside the body, so its checksum holds.
    flip_byte(dir.path(), &key, start + length - 1);
    let store = Arc::new(SledStore::open(dir.path()).expect("opens"));
    assert_eq!(store.read_from(&ShopId::main(), 0, 100).await.map(|e| e.len() as u64 >= position), Ok(true));

    let engine =
        Engine::open(store, Arc::new(ManualClock::new(DAY_START)), EngineConfig::default()).await.expect("opens");
    match engine.execute(&ShopId::main(), Request::new("tester", list("S2", dec!(1)))).await {
        Err(CommandError::Unavailable { reason, .. }) => {
            assert!(reason.contains(&format!("position {position}")) && reason.contains("chain"), "{reason}")
        }
        other => panic!("expected the shop to be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn the_verify_command_exits_non_zero_naming_shop_and_position() {
    let dir = temp_dir();
    let log = emporium::log::layout::log_dir(dir.path());
    write_shop_log(&log, 10, 2).await;
    let verify = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_emporium"))
            .args(["verify", "--data"])
            .arg(dir.path())
            .output()
            .expect("runs")
    };
    let clean = verify();
    assert!(clean.status.success(), "{}", String::from_utf8_lossy(&clean.stderr));
    assert!(String::from_utf8_lossy(&clean.stdout).contains("shop main: 22 events, chain intact"));

    let records = raw_records(&log);
    let (position, key, start, _) = records[9].clone();
    flip_byte(&log, &key, start + 10);
    let broken = verify();
    assert!(!broken.status.success());
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(stderr.contains(&format!("shop main at position {position}")), "{stderr}");
}

/// `tests/fixtures/shop-log-v1.bin` holds the first 14 events of the shop day as the code
/// wrote them before `order_cancelled` went to schema v2. Today's code must read them.
#[test]
fn records_stored_under_an_older_schema_decode_into_todays_events() {
    use emporium::log::record::{Check, decode_records, genesis_hash, schema_version};
    use emporium::{Party, rehearsal::demo};

    let bytes = include_bytes!("../fixtures/shop-log-v1.bin");
    let (stored, _) = decode_records(bytes, 1, genesis_hash(&ShopId::main()), Check::Chain).expect("v1 decodes");
    assert_eq!(stored.len(), 14);
    assert_eq!(schema_version("order_cancelled"), Some(2), "the fixture predates the change");
    let (_, today) = demo::run(&demo::shop_day()).expect("the day runs");
    for (old, new) in stored.iter().zip(&today) {
        match (&old.event, new) {
            (
                Event::OrderCancelled { order_id, by: None, reason, cancelled_at },
                Event::OrderCancelled { by: Some(Party::Buyer), .. },
            ) => {
                let upcast = Event::OrderCancelled {
                    order_id: order_id.clone(),
                    by: Some(Party::Buyer),
                    reason: reason.clone(),
                    cancelled_at: *cancelled_at,
                };
                assert_eq!(&upcast, new);
            }
            _ => assert_eq!(&old.event, new),
        }
    }
    assert_eq!(stored.last().map(|e| e.event.kind()), Some("order_cancelled"));
}

/// What every backend must do, checked the same way on each.
async fn check_store(store: Arc<dyn EventStore>) {
    use emporium::log::store::RejectionRecord;
    use std::time::Duration;

    let shop = ShopId::new("conformance").expect("valid");
    store.create_shop(&shop).await.expect("created");
    assert_eq!(store.last_position(&shop).await, Ok(0));
    let mut envelopes: Vec<Envelope> = (1..=300).map(envelope).collect();
    for e in &mut envelopes {
        // Two streams, versions gap-free within each.
        e.stream = format!("sku-S{}", e.position % 2).into();
        e.stream_version = e.position.div_ceil(2);
    }
    let waiter = {
        let store = store.clone();
        let shop = shop.clone();
        tokio::spawn(async move { store.wait_for(&shop, 0, Duration::from_secs(30)).await })
    };
    let rejection = RejectionRecord {
        command_id: CommandId::generated("rejected", 1),
        fingerprint: [3; 16],
        rejection: emporium::Rejection::UnknownSku { sku: "S9".into() },
        recorded_at: DAY_START,
    };
    let first =
        AppendBatch { expected_last: 0, events: envelopes[..100].to_vec(), rejections: vec![rejection.clone()] };
    assert_eq!(store.append(&shop, &first).await, Ok(100));
    let woke_at = waiter.await.expect("the waiter").expect("waited");
    assert!(woke_at >= 100, "a waiter wakes on append, at {woke_at}");
    // The second batch is appended the way the engine's writer does, from a blocking thread.
    let second = AppendBatch { expected_last: 100, events: envelopes[100..].to_vec(), rejections: vec![] };
    assert_eq!(append_blocking(&store, &shop, second).await, Ok(300));
    assert_eq!(store.wait_for(&shop, 100, Duration::from_secs(30)).await, Ok(300));
    // A batch of rejections alone appends no event, and every rejection is kept in order.
    let later = |n| RejectionRecord { command_id: CommandId::generated("rejected", n), ..rejection.clone() };
    let refusals = AppendBatch { expected_last: 300, events: vec![], rejections: vec![later(2), later(3)] };
    assert_eq!(store.append(&shop, &refusals).await, Ok(300));

    // Reading pages from any position returns exactly the events after it.
    for after in [0u64, 1, 99, 100, 250, 299, 300] {
        let page = store.read_from(&shop, after, 64).await.expect("readable");
        let expected: Vec<u64> = (after + 1..=300).take(64).collect();
        assert_eq!(page.iter().map(|e| e.position).collect::<Vec<_>>(), expected, "after {after}");
        assert!(page.iter().all(|e| *e == envelopes[e.position as usize - 1]));
    }
    let odd = store.read_stream(&shop, "sku-S1", 10, 5).await.expect("readable");
    assert_eq!(
        odd.iter().map(|e| (e.stream_version, e.position)).collect::<Vec<_>>(),
        [(11, 21), (12, 23), (13, 25), (14, 27), (15, 29)]
    );
    assert_eq!(store.read_stream(&shop, "sku-S0", 149, 10).await.map(|e| e.len()), Ok(1));
    assert_eq!(store.read_stream(&shop, "sku-S7", 0, 10).await.map(|e| e.len()), Ok(0));
    // Waiting past the end times out with the current end.
    assert_eq!(store.wait_for(&shop, 300, Duration::from_millis(20)).await, Ok(300));
    assert_eq!(store.rejections(&shop).await, Ok(vec![rejection.clone(), later(2), later(3)]));
    assert_eq!(store.verify(&shop).await.map(|r| r.events), Ok(300));
    // Read with the chain checked, page by page, the log is the same as read plainly; each
    // page's hash anchors the next, and the last is the head's.
    let (mut verified, mut hash) = (Vec::new(), emporium::log::record::genesis_hash(&shop));
    for _ in 0..300 {
        let after = verified.len() as u64;
        let (page, next) = store.read_verified(&shop, after, hash, 64).await.expect("verified");
        if page.is_empty() {
            assert_eq!(next, hash, "nothing read, nothing moves");
            break;
        }
        assert!(page.len() >= 64 || after + page.len() as u64 == 300, "a short page only at the end");
        verified.extend(page);
        hash = next;
    }
    assert_eq!(verified, envelopes);
    assert_eq!(store.head(&shop).await.map(|(_, head)| head), Ok(hash));
    // An anchor that is not the record's hash is refused, naming the record.
    let wrong = store.read_verified(&shop, 100, [7; 32], 64).await;
    assert!(
        matches!(wrong, Err(StoreError::Corrupt { ref corruption, .. }) if corruption.position == 100),
        "{wrong:?}"
    );
    assert!(store.shops().await.expect("listed").contains(&shop));
}

#[tokio::test]
async fn both_backends_keep_the_same_guarantees() {
    check_store(Arc::new(MemoryStore::new())).await;
    let dir = temp_dir();
    check_store(Arc::new(SledStore::open(dir.path()).expect("opens"))).await;
    // Reopened, the sled store finds the log's end and its stream index again.
    let store = SledStore::open(dir.path()).expect("reopens");
    let shop = ShopId::new("conformance").expect("valid");
    assert_eq!(store.last_position(&shop).await, Ok(300));
    assert_eq!(store.read_stream(&shop, "sku-S1", 149, 10).await.map(|e| e.len()), Ok(1));
    // Its rejections are all found again, and the next ones are added after them.
    let found = store.rejections(&shop).await.expect("read");
    assert_eq!(found.len(), 3);
    let mut fourth = found[0].clone();
    fourth.command_id = CommandId::generated("rejected", 4);
    let batch = AppendBatch { expected_last: 300, events: vec![], rejections: vec![fourth.clone()] };
    assert_eq!(store.append(&shop, &batch).await, Ok(300));
    let mut expected = found;
    expected.push(fourth);
    assert_eq!(store.rejections(&shop).await, Ok(expected));
}

#[test]
fn a_database_held_open_is_refused_with_a_clear_error() {
    let dir = temp_dir();
    let _held = SledStore::open(dir.path()).expect("opens");
    match SledStore::open(dir.path()) {
        Err(StoreError::Io(message)) => assert!(message.contains("is open elsewhere"), "{message}"),
        Err(other) => panic!("refused otherwise: {other}"),
        Ok(_) => panic!("a second store opened the same database"),
    }
}

/// A database made with sled's default segment size (as before the store chose its own)
/// keeps it: the store opens it, appends and reads back; a new one gets the store's size.
#[tokio::test]
async fn a_database_made_with_another_segment_size_still_opens() {
    let segment_size = |dir: &Path| {
        let conf = std::fs::read(dir.join("conf")).expect("sled's conf");
        String::from_utf8_lossy(&conf).lines().find_map(|l| l.strip_prefix("segment_size: ").map(str::to_owned))
    };
    let old = temp_dir();
    sled::Config::new().path(old.path()).segment_size(512 * 1024).open().expect("made").flush().expect("flushed");
    let store = SledStore::open(old.path()).expect("opens an older database");
    let shop = ShopId::new("older").expect("valid");
    store.create_shop(&shop).await.expect("created");
    let batch = AppendBatch { expected_last: 0, events: vec![envelope(1)], rejections: vec![] };
    assert_eq!(store.append(&shop, &batch).await, Ok(1));
    assert_eq!(store.read_from(&shop, 0, 10).await.map(|e| e.len()), Ok(1));
    assert_eq!(segment_size(old.path()).as_deref(), Some("524288"));

    let new = temp_dir();
    drop(SledStore::open(new.path()).expect("opens"));
    assert_eq!(segment_size(new.path()), Some(emporium::log::store::SEGMENT_BYTES.to_string()));
}
