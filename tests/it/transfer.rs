//! Export to JSON Lines and import into a fresh store: the same envelopes and heads come
//! back, and an export that was damaged anywhere is refused before anything is written.

use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;

use emporium::engine::{Engine, EngineConfig, ManualClock};
use emporium::log::record::genesis_hash;
use emporium::log::store::{AppendBatch, EventStore, MemoryStore, SledStore, VerifyReport};
use emporium::log::transfer::{self, BATCH_EVENTS, ImportError, Phase};
use emporium::rehearsal::sim::{self, DayConfig};
use emporium::{ShopId, Timestamp, rehearsal::demo};
use serde_json::Value;

use crate::support::{all_events, drive, emporium, emporium_into_closed_pipe, temp_dir};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

fn shop(id: &str) -> ShopId {
    ShopId::new(id).expect("a valid shop id")
}

/// `main` runs the scripted shop day, `outlet` a generated day of more than one import batch,
/// and `empty` is created without events.
async fn populate(store: Arc<dyn EventStore>) {
    let clock = Arc::new(ManualClock::new(demo::DAY_START));
    let engine = Engine::open(store, clock.clone(), EngineConfig::default()).await.expect("opens");
    for id in ["main", "outlet", "empty"] {
        engine.create_shop(&shop(id)).await.expect("created");
    }
    assert_eq!(drive(&engine, &shop("main"), &clock, demo::shop_day()).await, (21, 0));
    let later = Timestamp(demo::DAY_START.0 + 7 * DAY_MS);
    drive(&engine, &shop("outlet"), &clock, sim::generate_day(&DayConfig::new(2_000, 3, later))).await;
    engine.close().await;
}

/// The scripted shop day alone, exported.
async fn shop_day_export() -> String {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(demo::DAY_START));
    let engine = Engine::open(store.clone(), clock.clone(), EngineConfig::default()).await.expect("opens");
    engine.create_shop(&ShopId::main()).await.expect("created");
    assert_eq!(drive(&engine, &ShopId::main(), &clock, demo::shop_day()).await, (21, 0));
    engine.close().await;
    let mut bytes = Vec::new();
    transfer::export(store.as_ref(), &mut bytes, |_| ()).await.expect("exports");
    String::from_utf8(bytes).expect("UTF-8")
}

/// Events in every shop of `store`, shop by shop.
async fn event_counts(store: &dyn EventStore) -> Vec<(ShopId, u64)> {
    let mut counts = Vec::new();
    for shop in store.shops().await.expect("listed") {
        let events = store.last_position(&shop).await.expect("readable");
        counts.push((shop, events));
    }
    counts
}

#[tokio::test]
async fn an_export_imports_into_a_fresh_store_with_the_same_envelopes_and_heads() {
    let dir = temp_dir();
    let source = Arc::new(SledStore::open(&dir.path().join("source")).expect("opens"));
    populate(source.clone()).await;

    let mut bytes = Vec::new();
    let mut reported = Vec::new();
    let exported = transfer::export(source.as_ref(), &mut bytes, |p| reported.push((p.phase, p.shop.clone(), p.done)))
        .await
        .expect("exports");
    let shops: Vec<&str> = exported.iter().map(|s| s.shop.as_str()).collect();
    assert_eq!(shops, ["empty", "main", "outlet"], "sorted");
    let outlet_events = exported[2].events;
    assert!(outlet_events > BATCH_EVENTS as u64, "the outlet takes more than one batch: {outlet_events}");
    assert!(reported.contains(&(Phase::Export, shop("outlet"), outlet_events)), "{reported:?}");

    let target = SledStore::open(&dir.path().join("target")).expect("opens");
    let mut written = Vec::new();
    let imported = transfer::import(
        &target,
        || Ok(bytes.as_slice()),
        |p| {
            if p.phase == Phase::Write {
                written.push((p.shop.clone(), p.done));
            }
        },
    )
    .await
    .expect("imports");
    assert_eq!(imported, exported);
    let outlet_batches = written.iter().filter(|(s, done)| s.as_str() == "outlet" && *done > 0).count();
    assert_eq!(outlet_batches, (outlet_events as usize).div_ceil(BATCH_EVENTS), "{written:?}");

    assert_eq!(target.shops().await, source.shops().await);
    for summary in &exported {
        let shop = &summary.shop;
        assert_eq!(all_events(&target, shop).await, all_events(source.as_ref(), shop).await, "shop {shop}");
        let head = source.head(shop).await.expect("readable");
        assert_eq!(head, (summary.events, summary.head), "the export ends at the source's head, shop {shop}");
        assert_eq!(target.head(shop).await, Ok(head), "shop {shop}");
        assert_eq!(target.verify(shop).await, Ok(VerifyReport { events: head.0, head: head.1 }), "shop {shop}");
    }
    assert_eq!(exported[0].head, genesis_hash(&shop("empty")));

    let mut again = Vec::new();
    transfer::export(&target, &mut again, |_| ()).await.expect("exports");
    assert!(again == bytes, "exporting the imported store gives the same bytes");
}

#[tokio::test]
async fn the_lines_are_a_header_per_shop_the_events_and_an_end_line() {
    let text = shop_day_export().await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 21 + 1);
    assert!(text.ends_with('\n'));
    assert_eq!(lines[0], r#"{"shop":"main","events":21}"#);
    assert_eq!(lines[22], r#"{"shops":1,"events":21}"#);
    assert!(
        lines[1].starts_with(
            r#"{"shop":"main","position":1,"stream":"sku-TEA-001","stream_version":1,"recorded_at":1794387600000,"command_id":""#
        ),
        "{}",
        lines[1]
    );
    let first: serde_json::Map<String, Value> = serde_json::from_str(lines[1]).expect("JSON");
    let keys: Vec<&str> = first.keys().map(String::as_str).collect();
    let mut expected = [
        "shop",
        "position",
        "stream",
        "stream_version",
        "recorded_at",
        "command_id",
        "fingerprint",
        "correlation_id",
        "actor",
        "type",
        "schema_version",
        "event",
        "hash",
    ];
    expected.sort();
    assert_eq!(keys, expected);
    assert_eq!(first["type"], "product_listed");
    assert_eq!(first["schema_version"], 1);
    assert_eq!(first["event"]["product_listed"]["price"], "128.00", "money is a decimal string");
    let hex = |v: &Value, digits: usize| {
        v.as_str()
            .is_some_and(|s| s.len() == digits && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    };
    assert!(hex(&first["fingerprint"], 32) && hex(&first["hash"], 64), "{first:?}");
    let paid = lines.iter().find(|l| l.contains(r#""type":"order_paid""#)).expect("a payment");
    assert!(paid.contains(r#""amount":"438.00""#), "{paid}");
}

/// Imports `input` into `target` and checks that it is refused with an error starting with
/// `expected`, and that the target holds the same events as before.
async fn check(input: &str, target: &MemoryStore, expected: &str) {
    let before = event_counts(target).await;
    let error = transfer::import(target, || Ok(input.as_bytes()), |_| ()).await.expect_err("refused").to_string();
    assert!(error.starts_with(expected), "expected {expected:?}\n     got {error:?}");
    assert_eq!(event_counts(target).await, before, "nothing written");
}

#[tokio::test]
async fn a_damaged_export_is_refused_naming_the_line_and_nothing_is_written() {
    let text = shop_day_export().await;
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    // Line 1 is the header, so the event at position p is on line p + 1.
    let paid = lines.iter().position(|l| l.contains(r#""type":"order_paid""#)).expect("a payment");
    let edit = |edit: &dyn Fn(&mut Vec<String>)| {
        let mut lines = lines.clone();
        edit(&mut lines);
        lines.join("\n") + "\n"
    };
    let cases: Vec<(&str, String, String)> = vec![
        (
            "one amount changed",
            edit(&|l| l[paid] = l[paid].replace(r#""amount":"438.00""#, r#""amount":"438.01""#)),
            format!("line {}, shop main, position {paid}: hash ", paid + 1),
        ),
        (
            "a gap in positions",
            edit(&|l| drop(l.remove(5))),
            "line 6, shop main, position 6: position 6 where position 5 comes next".to_owned(),
        ),
        (
            "a line twice",
            edit(&|l| l.insert(4, l[3].clone())),
            "line 5, shop main, position 3: position 3 where position 4 comes next".to_owned(),
        ),
        (
            "an unknown key",
            edit(&|l| l[3] = l[3].replacen('{', r#"{"note":"hi","#, 1)),
            "line 4, shop main, position 3: unknown key `note`".to_owned(),
        ),
        (
            "an unknown key inside the event",
            edit(&|l| l[2] = l[2].replace(r#""weight_g":200"#, r#""weight_g":200,"colour":"green""#)),
            "line 3, shop main, position 2: `event.product_listed.colour` is not as this version writes the event"
                .to_owned(),
        ),
        (
            "malformed JSON",
            edit(&|l| {
                let half = l[7].len() / 2;
                l[7].truncate(half)
            }),
            "line 8, shop main, position 7: not a JSON object: EOF while parsing".to_owned(),
        ),
        (
            "a missing key",
            edit(&|l| l[9] = l[9].replace(r#""actor":"tester","#, "")),
            "line 10, shop main, position 9: missing field `actor`".to_owned(),
        ),
        (
            "the end line cut off",
            edit(&|l| drop(l.pop())),
            "line 23, shop main: the export ends without its end line: it is truncated".to_owned(),
        ),
        (
            "an event cut off the end",
            edit(&|l| drop(l.remove(21))),
            "line 22, shop main: shop main declares 21 events, but 20 follow".to_owned(),
        ),
        ("an empty file", String::new(), "line 1: the export ends without its end line".to_owned()),
        ("a line after the end", edit(&|l| l.push(l[1].clone())), "line 24: a line after the end line".to_owned()),
    ];
    for (name, input, expected) in cases {
        eprintln!("case: {name}");
        check(&input, &MemoryStore::new(), &expected).await;
    }

    let used = MemoryStore::new();
    transfer::import(&used, || Ok(text.as_bytes()), |_| ()).await.expect("imports");
    check(&text, &used, "the target store is not empty (shop main has 21 events)").await;
}

/// The second pass appends only what the first checked: an export that changes in between
/// stops the import at the batch that changed, and says the target is incomplete.
#[tokio::test]
async fn an_export_that_changes_between_the_passes_stops_at_the_changed_batch() {
    let source = Arc::new(MemoryStore::new());
    populate(source.clone()).await;
    let mut bytes = Vec::new();
    transfer::export(source.as_ref(), &mut bytes, |_| ()).await.expect("exports");
    let text = String::from_utf8(bytes).expect("UTF-8");
    // A valid export of its own, the same as the first up to the outlet's second batch: the
    // first pass checks the one, the second pass reads the other.
    let altered = MemoryStore::new();
    for shop in source.shops().await.expect("listed") {
        altered.create_shop(&shop).await.expect("created");
        let mut events = all_events(source.as_ref(), &shop).await;
        if shop.as_str() == "outlet" {
            events[BATCH_EVENTS + 9].actor = "someone else".into();
        }
        if !events.is_empty() {
            altered
                .append(&shop, &AppendBatch { expected_last: 0, events, rejections: vec![] })
                .await
                .expect("appended");
        }
    }
    let mut changed = Vec::new();
    transfer::export(&altered, &mut changed, |_| ()).await.expect("exports");
    let changed = String::from_utf8(changed).expect("UTF-8");
    assert_ne!(changed, text);
    let calls = Cell::new(0);
    let target = MemoryStore::new();
    let error = transfer::import(
        &target,
        || {
            calls.set(calls.get() + 1);
            Ok(if calls.get() == 1 { text.as_bytes() } else { changed.as_bytes() })
        },
        |_| (),
    )
    .await
    .expect_err("stopped");
    let ImportError::Incomplete { events, cause, .. } = &error else { panic!("{error}") };
    let main_events = 21;
    assert_eq!(*events, main_events + BATCH_EVENTS as u64, "{error}");
    assert!(cause.to_string().contains("the export changed during the import"), "{error}");
    assert_eq!(target.last_position(&shop("outlet")).await, Ok(BATCH_EVENTS as u64));
}

#[test]
fn export_import_and_verify_from_the_command_line() {
    let dir = temp_dir();
    let (source, target, file) = (dir.path().join("source"), dir.path().join("target"), dir.path().join("day.jsonl"));
    let run = |args: &[&str], data: &Path| emporium(args, data);
    let (ok, _, err) = run(&["demo"], &source);
    assert!(ok, "{err}");

    let file_arg = file.to_str().expect("a UTF-8 path");
    let (ok, out, err) = run(&["export", "--format", "jsonl", "--output", file_arg], &source);
    assert!(ok, "{err}");
    assert!(out.contains("shop main: 21 events, head ") && out.contains("exported 21 events of 1 shop to "), "{out}");
    assert_eq!(err, "", "no progress bar is drawn when standard error is not a terminal");
    let exported = std::fs::read_to_string(&file).expect("written");
    assert_eq!(exported.lines().count(), 23);
    assert!(!dir.path().join(".day.jsonl.partial").exists());

    let (ok, out, err) = run(&["import", file_arg], &target);
    assert!(ok, "{err}");
    assert_eq!(err, "");
    assert!(out.starts_with("shop main: 21 events imported, chain intact, head "), "{out}");
    let head = |text: &str| text.lines().find_map(|l| l.split("head ").nth(1).map(str::to_owned)).expect("a head");
    let imported_head = head(&out);

    let (ok, verified, err) = run(&["verify"], &target);
    assert!(ok, "{err}");
    assert_eq!(verified.trim_end(), format!("shop main: 21 events, chain intact, head {imported_head}"));
    let (_, verified_source, _) = run(&["verify"], &source);
    assert_eq!(head(&verified_source), imported_head, "the imported log chains to the source's head");

    let (ok, to_stdout, err) = run(&["export", "--format", "jsonl"], &target);
    assert!(ok, "{err}");
    assert_eq!(to_stdout, exported, "the imported store exports the same bytes");
    let (ok, out, err) = run(&["replay"], &target);
    assert!(ok && out.contains("rebuilt 21 events from zero"), "{err}");
    assert_eq!(err, "", "no progress bar on replay either");

    let (ok, _, err) = run(&["import", file_arg], &target);
    assert!(!ok && err.contains("the target store is not empty (shop main has 21 events)"), "{err}");
    let tampered = dir.path().join("tampered.jsonl");
    std::fs::write(&tampered, exported.replacen(r#""amount":"438.00""#, r#""amount":"43.80""#, 1)).expect("written");
    let fresh = dir.path().join("fresh");
    let (ok, _, err) = run(&["import", tampered.to_str().expect("a UTF-8 path")], &fresh);
    assert!(!ok && err.contains(", shop main, position 12: hash ") && !err.contains("panicked"), "{err}");
    assert!(!fresh.exists(), "a refused import creates no store");

    let (ok, _, err) = run(&["export", "--format", "csv"], &source);
    assert!(!ok && err.contains("invalid value 'csv'"), "{err}");
    let (ok, _, err) = run(&["export", "--format", "jsonl"], &dir.path().join("nowhere"));
    assert!(!ok && err.contains("no data directory"), "{err}");
}

/// The subcommands that only read refuse a path that holds no store, and create nothing
/// there: neither a missing data directory nor a database in an empty one.
#[test]
fn reading_subcommands_refuse_a_path_without_a_store_and_create_nothing() {
    let dir = temp_dir();
    let (missing, empty) = (dir.path().join("missing"), dir.path().join("empty"));
    std::fs::create_dir(&empty).expect("created");
    let reads: [&[&str]; 4] =
        [&["verify"], &["replay"], &["audit", "--order", "A-1"], &["export", "--format", "jsonl"]];
    for args in reads {
        let (ok, out, err) = emporium(args, &missing);
        assert!(!ok && out.is_empty() && err.contains("no data directory at "), "{args:?}: {err}");
        assert!(!missing.exists(), "{args:?} created the data directory");
        let (ok, out, err) = emporium(args, &empty);
        assert!(!ok && out.is_empty() && err.contains("no store in "), "{args:?}: {err}");
        let created: Vec<_> = std::fs::read_dir(&empty).expect("listed").collect();
        assert!(created.is_empty(), "{args:?} wrote into the empty directory: {created:?}");
    }
}

/// `emporium export | head -1`: the closed pipe is an error, never a panic.
#[test]
fn an_export_to_a_closed_pipe_is_an_error_not_a_panic() {
    let dir = temp_dir();
    assert!(emporium(&["demo"], dir.path()).0);
    let (ok, stderr) = emporium_into_closed_pipe(&["export", "--format", "jsonl"], dir.path());
    assert!(!ok);
    assert!(stderr.contains("cannot write to standard output") && !stderr.contains("panicked"), "{stderr}");
}
