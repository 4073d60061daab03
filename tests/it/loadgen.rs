//! The promotion-day rehearsal guards its own correctness checks.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use emporium::engine::{Engine, EngineConfig};
use emporium::log::store::SledStore;
use emporium::rehearsal::loadgen::{self, RunClock, RunOptions, Scenario, Stop, Target};
use emporium::{ShopId, rehearsal::demo};

use crate::http::{ADMIN, Server};
use crate::support::temp_dir;

/// A small shop: few SKUs, so the hot ones sell out within a few thousand orders.
fn small(seed: u64) -> Scenario {
    Scenario { skus: 200, hot_skus: 10, hot_stock: 60, ..Scenario::double11(seed) }
}

async fn rehearse(stop: Stop, concurrency: usize, seed: u64) -> loadgen::Report {
    let dir = temp_dir();
    let store = Arc::new(SledStore::open(dir.path()).expect("opens"));
    let clock = Arc::new(RunClock::new(demo::DAY_START, 86));
    let engine = Arc::new(Engine::open(store, clock.clone(), EngineConfig::default()).await.expect("opens"));
    let options = RunOptions { scenario: small(seed), stop, concurrency, answered: Arc::new(AtomicU64::new(0)) };
    let target = Target::InProcess { engine: engine.clone(), clock };
    let report =
        loadgen::run(target, ShopId::new("double11").expect("shop"), &options).await.expect("the rehearsal runs");
    engine.close().await;
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_rehearsal_in_process_passes_its_checks() {
    let report = rehearse(Stop::Orders(3000), 64, 7).await;
    assert!(report.checks_passed, "{:?}", report.failures);
    assert_eq!(report.accepted + report.refused, 3000);
    assert_eq!((report.oversold_skus, report.mismatched_orders), (0, 0));
    assert!(report.trial_balance.is_zero() && report.replay_matches);
    assert!(report.refusals.get("insufficient_stock").is_some_and(|n| *n > 0), "the hot SKUs sold out");
    assert!(report.expired > 0 && report.returned > 0, "{report:?}");
    assert_eq!(report.paid, report.shipped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_rehearses_the_same_day() {
    let first = rehearse(Stop::Orders(400), 1, 9).await;
    let second = rehearse(Stop::Orders(400), 1, 9).await;
    assert!(first.checks_passed && second.checks_passed);
    let outcome = |r: &loadgen::Report| (r.accepted, r.refusals.clone(), r.paid, r.expired, r.returned);
    assert_eq!(outcome(&first), outcome(&second));
    let other = rehearse(Stop::Orders(400), 1, 10).await;
    assert_ne!(outcome(&first), outcome(&other));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rehearsal_by_duration_stops_placing_orders_when_the_time_is_up() {
    let report = rehearse(Stop::Duration(std::time::Duration::from_millis(300)), 8, 3).await;
    assert!(report.checks_passed, "{:?}", report.failures);
    // It returns at all: without the deadline it would go on to 100,000,000 orders.
    assert!(report.accepted + report.refused > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_rehearsal_over_http_passes_its_checks() {
    let dir = temp_dir();
    let server = Server::start(&dir.path().join("data"), true);
    let target = Target::Http { address: server.address.to_string(), token: Some(ADMIN.to_owned()) };
    let options = RunOptions {
        scenario: small(7),
        stop: Stop::Orders(1500),
        concurrency: 16,
        answered: Arc::new(AtomicU64::new(0)),
    };
    let report = loadgen::run(target.clone(), ShopId::new("double11").expect("shop"), &options)
        .await
        .expect("the rehearsal runs");
    assert!(report.checks_passed, "{:?}", report.failures);
    assert_eq!(report.accepted + report.refused, 1500);
    assert_eq!((report.oversold_skus, report.mismatched_orders), (0, 0));
    // The server's live stock and books equal a replay of its feed from zero.
    assert!(report.trial_balance.is_zero() && report.replay_matches);
    assert!(report.refusals.get("insufficient_stock").is_some_and(|n| *n > 0), "the hot SKUs sold out");
    assert!(report.returned > 0 && report.paid == report.shipped, "{report:?}");
    assert_eq!(report.group_commits, None, "the engine's batches are the server's, not seen here");

    // A second rehearsal on a shop that already has events is refused before it sends an order.
    let again = loadgen::run(target, ShopId::new("double11").expect("shop"), &options).await;
    assert!(again.is_err_and(|e| e.contains("already has events")));
    server.terminate();
    assert!(server.wait().0, "the server stops cleanly");
}

/// The command line: a small in-process rehearsal keeps its store where `--data` says (it
/// verifies afterwards), writes the JSON report with its checks and draws the SVG report;
/// `--data` with an HTTP target is refused before anything is sent.
#[test]
fn the_command_line_writes_its_reports_and_keeps_the_store() {
    let dir = temp_dir();
    let (data, json, svg) = (dir.path().join("data"), dir.path().join("out.json"), dir.path().join("out.svg"));
    let (json_arg, svg_arg) = (json.to_string_lossy().into_owned(), svg.to_string_lossy().into_owned());
    let args =
        ["loadgen", "--orders", "300", "--concurrency", "8", "--seed", "5", "--json", &json_arg, "--report", &svg_arg];
    let (ok, stdout, stderr) = crate::support::emporium(&args, &data);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("every check passed"), "{stdout}");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).expect("JSON");
    assert_eq!(report["checks_passed"], serde_json::json!(true), "{report}");
    let answered = report["accepted"].as_u64().expect("accepted") + report["refused"].as_u64().expect("refused");
    assert_eq!(answered, 300, "{report}");
    for key in [
        "orders_per_s",
        "events_per_s",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "oversold_skus",
        "peak_rss_mb",
        "rss_before_checks_mb",
        "cpu_us_per_order",
    ] {
        assert!(report[key].is_number(), "{key} in {report}");
    }
    let (before, peak) = (report["rss_before_checks_mb"].as_f64(), report["peak_rss_mb"].as_f64());
    assert!(report["group_commits"].as_u64().is_some_and(|n| n > 0), "{report}");
    let commands = report["group_commit_commands_mean"].as_f64().expect("in-process");
    assert!(commands >= 1.0, "{report}");
    assert!(report["group_commit_ms_mean"].as_f64().is_some_and(|ms| ms > 0.0), "{report}");
    assert!(before.is_some_and(|b| b > 0.0) && before <= peak, "{report}");
    // The report names its machine and how busy the machine's cores were while orders were
    // placed: a phase of 300 synced orders spans many of the kernel's 10 ms ticks.
    assert!(report["cores"].as_u64().is_some_and(|n| n >= 1), "{report}");
    assert!(stdout.contains("machine: "), "{stdout}");
    if cfg!(target_os = "linux") {
        let cpu = &report["order_phase_machine_cpu"];
        let shares: Vec<f64> = ["user", "system", "idle", "iowait", "steal"]
            .iter()
            .map(|key| cpu[key].as_f64().unwrap_or_else(|| panic!("{key} in {report}")))
            .collect();
        assert!(shares.iter().all(|share| (0.0..=1.0).contains(share)), "{report}");
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{report}");
        assert!(shares[2] < 1.0, "a core was busy placing orders: {report}");
        assert!(report["cpu_model"].is_string(), "{report}");
    }

    let drawn = std::fs::read_to_string(&svg).expect("the SVG report");
    assert!(drawn.trim_start().starts_with("<svg") && drawn.trim_end().ends_with("</svg>"), "{drawn}");
    assert!(drawn.contains("<polyline") || drawn.contains("<path"), "a series is drawn: {drawn}");

    let (ok, stdout, stderr) = crate::support::emporium(&["verify"], &data);
    assert!(ok, "the kept store verifies: {stdout}\n{stderr}");

    let elsewhere = dir.path().join("unused");
    let (ok, _, stderr) =
        crate::support::emporium(&["loadgen", "--orders", "10", "--target", "http://127.0.0.1:9"], &elsewhere);
    assert!(!ok, "--data with an HTTP target is refused");
    assert!(stderr.contains("--data"), "{stderr}");
    assert!(!elsewhere.exists(), "nothing was written");
}
