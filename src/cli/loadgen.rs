//! `emporium loadgen`: the `double11` promotion-day rehearsal ([`crate::rehearsal::loadgen`])
//! against an engine embedded on sled in this process (on a fresh store, temporary unless
//! `--data` keeps it) or against a running `emporium serve` over HTTP. It checks the flags,
//! opens the target, shows the orders answered on a progress bar, then prints the report:
//! throughput, latency, refusals, what became of the orders, the checks (no SKU oversold,
//! every accepted order holding its lines, the ledger balancing, a replay from zero equal to
//! the live state), the machine and the memory. `--json` and `--report` also write it as
//! JSON and as an SVG chart. A failed check exits non-zero.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::shared::{CliError, engine_config, open_store, out, progress_bar};
use crate::domain::ids::ShopId;
use crate::engine::Engine;
use crate::log::store::EventStore;
use crate::rehearsal::demo;
use crate::rehearsal::loadgen::{self as rehearsal, Report, RunClock, RunOptions, Scenario, Stop, Target};

/// The flags of `emporium loadgen`.
#[derive(clap::Args)]
pub struct Args {
    /// `inprocess`, or `http://HOST:PORT` of a running `emporium serve` (one keep-alive
    /// connection per submitter, one order per request).
    #[arg(long, default_value = "inprocess")]
    pub target: String,
    /// Over HTTP: a bearer token with the admin role, if the server asks for tokens
    /// (else EMPORIUM_TOKEN, if set).
    #[arg(long)]
    pub token: Option<String>,
    /// The shop to create and rehearse on; it must not hold events yet.
    #[arg(long, default_value = "double11")]
    pub shop: String,
    /// Orders to place.
    #[arg(long, conflicts_with = "duration")]
    pub orders: Option<u64>,
    /// Seconds to place orders for, instead of a number of orders.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 512)]
    pub concurrency: usize,
    /// The seed every order derives from.
    #[arg(long, default_value_t = 11)]
    pub seed: u64,
    /// In-process: keep the store here (a fresh directory) instead of a temporary one.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw orders/s and p99 latency over time into this SVG file.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

impl Args {
    /// Whether the rehearsal runs against a server over HTTP (a valid `http://` target).
    ///
    /// It then runs on one thread: it shares the machine with the server it measures, and
    /// its submitters only wait on sockets, so a second worker would only add wake-ups and
    /// stealing between the two.
    pub fn over_http(&self) -> bool {
        matches!(Target::parse_address(&self.target), Ok(Some(_)))
    }
}

/// The engine of an in-process rehearsal, and its data directory (removed afterwards when
/// `temporary`).
struct InProcess {
    engine: Arc<Engine>,
    data: PathBuf,
    temporary: bool,
}

/// Runs the rehearsal and prints its report.
pub async fn run(args: Args) -> Result<(), CliError> {
    let Args { target, token, shop, orders, duration, concurrency, seed, data, json, report: svg } = args;
    let address = Target::parse_address(&target)?;
    let shop = ShopId::new(&shop).map_err(|e| format!("--shop: {e}"))?;
    if address.is_some() && data.is_some() {
        return Err("--data keeps an in-process store; over HTTP the server keeps its own".into());
    }
    if concurrency == 0 || concurrency > 100_000 {
        return Err("--concurrency takes 1 to 100000".into());
    }
    let stop = stop(orders, duration)?;
    let (target, title, in_process) = match address {
        Some(address) => {
            let title = format!("emporium loadgen, double11 over HTTP to {address}, seed {seed}");
            let token = token.or_else(|| std::env::var("EMPORIUM_TOKEN").ok());
            (Target::Http { address, token }, title, None)
        }
        None => open_in_process(data, seed).await?,
    };
    let answered = Arc::new(AtomicU64::new(0));
    let options = RunOptions { scenario: Scenario::double11(seed), stop, concurrency, answered: answered.clone() };
    let (bar, ticker) = show_progress(stop, answered);
    let report = rehearsal::run(target, shop, &options).await;
    ticker.abort();
    bar.finish_and_clear();
    if let Some(InProcess { engine, data, temporary }) = in_process {
        engine.close().await;
        drop(engine);
        if temporary {
            let _ = std::fs::remove_dir_all(&data);
        }
    }
    let report = report?;
    print_report(&report)?;
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = svg {
        rehearsal::draw(&report, &title, &path)?;
    }
    if report.checks_passed {
        Ok(out!("every check passed")?)
    } else {
        Err(format!("checks failed: {}", report.failures.join("; ")).into())
    }
}

/// When to stop placing orders: after `--orders`, after `--duration`, or after 100,000.
fn stop(orders: Option<u64>, duration: Option<u64>) -> Result<Stop, String> {
    Ok(match (orders, duration) {
        (Some(orders), _) if orders == 0 || orders > rehearsal::ORDERS_MAX => {
            return Err(format!("--orders takes 1 to {}", rehearsal::ORDERS_MAX));
        }
        (Some(orders), _) => Stop::Orders(orders),
        (None, Some(seconds)) => Stop::Duration(std::time::Duration::from_secs(seconds.max(1))),
        (None, None) => Stop::Orders(100_000),
    })
}

/// An engine on a fresh store in `data` (else in a temporary directory): the target of an
/// in-process rehearsal, its title and what to close afterwards. A day of a million orders
/// spans a day of engine time.
async fn open_in_process(data: Option<PathBuf>, seed: u64) -> Result<(Target, String, Option<InProcess>), String> {
    let (data, temporary) = match data {
        Some(data) => (data, false),
        None => {
            let name = format!("emporium-loadgen-{}-{seed}", std::process::id());
            (std::env::temp_dir().join(name), true)
        }
    };
    let store = open_store(&data)?;
    if !store.shops().await.map_err(|e| e.to_string())?.is_empty() {
        return Err(format!("{} already holds shops: a rehearsal needs a fresh data directory", data.display()));
    }
    let clock = Arc::new(RunClock::new(demo::DAY_START, 86));
    let engine = Arc::new(Engine::open(store, clock.clone(), engine_config(&data)).await.map_err(|e| e.to_string())?);
    let in_process = InProcess { engine: engine.clone(), data, temporary };
    let title = format!("emporium loadgen, double11 in-process, seed {seed}");
    Ok((Target::InProcess { engine, clock }, title, Some(in_process)))
}

/// A progress bar of the orders `answered`, and the task that moves it twice a second
/// (abort it when the run ends).
fn show_progress(stop: Stop, answered: Arc<AtomicU64>) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let length = match stop {
        Stop::Orders(orders) => orders,
        Stop::Duration(_) => 0,
    };
    let bar = progress_bar(length, "placing orders".to_owned());
    if let Ok(style) = ProgressStyle::with_template("[{bar:40}] {pos}/{len} orders, {msg}, {elapsed}") {
        bar.set_style(style.progress_chars("=> "));
    }
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(std::time::Duration::from_millis(500));
            let started = std::time::Instant::now();
            loop {
                interval.tick().await;
                let done = answered.load(Ordering::Relaxed);
                bar.set_position(done);
                bar.set_message(format!("{:.0} orders/s", done as f64 / started.elapsed().as_secs_f64().max(1e-3)));
            }
        })
    };
    (bar, ticker)
}

/// Prints the report: orders, latency, refusals, what became of the orders, the checks,
/// group commits and CPU when measured, then the machine and the memory.
fn print_report(report: &Report) -> Result<(), String> {
    out!(
        "orders: {} accepted, {} refused in {:.1} s: {:.0} orders/s ({:.0} accepted/s), {:.0} events/s",
        report.accepted,
        report.refused,
        report.order_phase_s,
        report.orders_per_s,
        report.accepted_per_s,
        report.events_per_s
    )?;
    out!(
        "latency of placing an order: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        report.p50_ms,
        report.p90_ms,
        report.p99_ms,
        report.p999_ms,
        report.max_ms
    )?;
    let refusals: Vec<String> = report.refusals.iter().map(|(code, n)| format!("{code} {n}")).collect();
    out!("refusals: {}", if refusals.is_empty() { "none".to_owned() } else { refusals.join(", ") })?;
    out!(
        "paid {}, expired {}, shipped and delivered {}, returned and refunded {} (tail {:.1} s); {} SKUs sold out",
        report.paid,
        report.expired,
        report.shipped,
        report.returned,
        report.tail_s,
        report.sold_out_skus
    )?;
    out!(
        "checks: oversold SKUs {}, orders not holding their lines {}, trial balance {}, replay equals live state: {}",
        report.oversold_skus,
        report.mismatched_orders,
        report.trial_balance,
        report.replay_matches
    )?;
    if let (Some(count), Some(commands), Some(ms)) =
        (report.group_commits, report.group_commit_commands_mean, report.group_commit_ms_mean)
    {
        out!("group commits in the order phase: {count}, {commands:.0} commands and {ms:.2} ms to durable on average")?;
    }
    if let Some(cpu_us) = report.cpu_us_per_order {
        out!("CPU per order answered in the order phase: {cpu_us:.1} µs (this process, user and system)")?;
    }
    print_machine(report)
}

/// Prints the machine (and its CPU split over the order phase, when measured) and the
/// resident memory.
fn print_machine(report: &Report) -> Result<(), String> {
    let model = report.cpu_model.as_deref().unwrap_or("an unnamed processor");
    match report.order_phase_machine_cpu {
        Some(cpu) => out!(
            "machine: {model}, {} cores; in the order phase {:.0}% user, {:.0}% system, {:.0}% idle, {:.0}% waiting for the disk, {:.0}% stolen",
            report.cores,
            cpu.user * 100.0,
            cpu.system * 100.0,
            cpu.idle * 100.0,
            cpu.iowait * 100.0,
            cpu.steal * 100.0
        )?,
        None => out!("machine: {model}, {} cores", report.cores)?,
    }
    out!(
        "resident memory {:.0} MiB before the checks, {:.0} MiB at peak",
        report.rss_before_checks_mb,
        report.peak_rss_mb
    )
}
