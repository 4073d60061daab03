//! The `emporium` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use emporium::domain::ids::{CommandId, ShopId};
use emporium::engine::{CommandError, Engine, EngineConfig, ManualClock, Request, SnapshotConfig};
use emporium::log::layout;
use emporium::log::store::{EventStore, SledStore, StoreError};
use emporium::log::transfer::{self, ExportError, Phase};
use emporium::service::{self, App, ServiceConfig, Tokens};
use emporium::views::Views;
use emporium::{State, rehearsal::demo};
use emporium_projections::AsOf;
use emporium_snapshots::SnapshotStore;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// mimalloc instead of the system allocator: the engine, the views and the load generator
/// allocate and free small strings and vectors for every command and event, and glibc's
/// allocator took a fifth of a rehearsal's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "emporium", version, about = "An event-sourced order and inventory engine for online shops")]
struct Cli {
    #[command(subcommand)]
    command: Option<Action>,
}

#[derive(Subcommand)]
enum Action {
    /// Serve the HTTP/JSON API on the data directory until SIGTERM or Ctrl-C, then finish
    /// and sync the requests in flight and exit 0 (the default). Creates the shop `main` if
    /// it is missing.
    Serve {
        /// The data directory.
        #[arg(long, default_value = "./emporium-data")]
        data: PathBuf,
        /// The address to listen on; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// A file of bearer tokens, one `role name token` per line (roles: admin, operator,
        /// auditor). Without it, tokens come from EMPORIUM_TOKENS (`role:name:token,...`); with
        /// neither, there is no authentication and only a loopback address is allowed.
        #[arg(long)]
        tokens: Option<PathBuf>,
        /// Most orders each shop's writer keeps in memory as values. Older ones are kept
        /// encoded and moved out of memory to an unnamed scratch file in the data directory.
        #[arg(long, default_value_t = emporium::memory::tiered::HOT_DEFAULT_MAX)]
        orders_hot_max: usize,
    },
    /// Run the scripted shop day through the engine on sled and print stock and orders.
    /// Running it again on the same data answers every command from the log.
    Demo {
        /// The data directory.
        #[arg(long, default_value = "./emporium-data")]
        data: PathBuf,
    },
    /// Check the checksums and hash chain of every shop log; exit non-zero naming the shop
    /// and the first bad position if any fails.
    Verify {
        /// The data directory.
        #[arg(long, default_value = "./emporium-data")]
        data: PathBuf,
    },
    /// Rebuild every view of every shop from zero and print each one's state hash; with
    /// `--check`, also compare them with the snapshotted views (and, without `--as-of`, with
    /// the live views an engine builds), exiting non-zero on any difference.
    Replay {
        /// The data directory.
        #[arg(long, default_value = "./emporium-data")]
        data: PathBuf,
        /// Build as of a log position (a number) or a time (RFC 3339, e.g. 2026-11-11T12:00:00Z).
        #[arg(long)]
        as_of: Option<String>,
        /// Compare with the snapshotted and live views.
        #[arg(long)]
        check: bool,
    },
    /// Print the full history of one order as a timeline.
    Audit {
        /// The data directory.
        #[arg(long, default_value = "./emporium-data")]
        data: PathBuf,
        /// The shop.
        #[arg(long, default_value = "main")]
        shop: String,
        /// The order.
        #[arg(long)]
        order: String,
    },
    /// Write every event of every shop as JSON Lines, each with its hash in the shop's chain:
    /// a header line before each shop's events, an end line counting them all.
    Export {
        /// The format: JSON Lines.
        #[arg(long, value_enum)]
        format: Format,
        /// The data directory.
        #[arg(long, default_value = "./emporium-data")]
        data: PathBuf,
        /// Where to write; standard output when not given.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Rebuild a fresh store from an export. The whole export is checked first (positions,
    /// streams, the hash chain) and nothing is written unless every line passes.
    Import {
        /// The export to read.
        file: PathBuf,
        /// The data directory; its log must hold no events.
        #[arg(long, default_value = "./emporium-data")]
        data: PathBuf,
    },
    /// Rehearse a promotion day: the `double11` scenario against an engine embedded on sled
    /// (every order synced before it is acknowledged) or a running server, then check that no
    /// SKU was oversold, every accepted order holds its lines, the ledger balances and a replay
    /// from zero equals the live state. Exits non-zero when a check fails.
    Loadgen {
        /// `inprocess`, or `http://HOST:PORT` of a running `emporium serve` (one keep-alive
        /// connection per submitter, one order per request).
        #[arg(long, default_value = "inprocess")]
        target: String,
        /// Over HTTP: a bearer token with the admin role, if the server asks for tokens
        /// (else EMPORIUM_TOKEN, if set).
        #[arg(long)]
        token: Option<String>,
        /// The shop to create and rehearse on; it must not hold events yet.
        #[arg(long, default_value = "double11")]
        shop: String,
        /// Orders to place.
        #[arg(long, conflicts_with = "duration")]
        orders: Option<u64>,
        /// Seconds to place orders for, instead of a number of orders.
        #[arg(long)]
        duration: Option<u64>,
        /// Concurrent submitters.
        #[arg(long, default_value_t = 512)]
        concurrency: usize,
        /// The seed every order derives from.
        #[arg(long, default_value_t = 11)]
        seed: u64,
        /// In-process: keep the store here (a fresh directory) instead of a temporary one.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Draw orders/s and p99 latency over time into this SVG file.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Durability drill: run the engine on sled under load and print every acknowledged
    /// command as `ack <command id> <first position> <last position>`. Used by the crash
    /// test, which kills it at random moments; stops by itself after `--commands` or `--seconds`.
    #[command(hide = true)]
    Drill {
        /// The data directory.
        #[arg(long)]
        data: PathBuf,
        /// Prefix of this run's command ids, unique per run.
        #[arg(long)]
        tag: String,
        /// Concurrent submitters.
        #[arg(long, default_value_t = 16)]
        tasks: usize,
        /// Most commands per submitter.
        #[arg(long, default_value_t = 10_000)]
        commands: usize,
        /// Longest run, in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

/// Formats of `emporium export`.
#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// JSON Lines: one object per line.
    Jsonl,
}

/// Writes a line to standard output; a closed pipe or full disk is an error, never a panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*).map_err(|e| format!("cannot write to standard output: {e}"))
    }};
}

/// [`out!`] without the newline.
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout(), $($arg)*).map_err(|e| format!("cannot write to standard output: {e}"))
    }};
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr; RUST_LOG sets the level (warnings by default).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(colour).with_writer(std::io::stderr).init();
    // Huge pages off, before the engine allocates (`emporium::cli::process` says why).
    if let Err(error) = emporium::cli::process::disable_transparent_huge_pages() {
        tracing::warn!("transparent huge pages stay on: {error}");
    }
    let action = cli.command.unwrap_or(Action::Serve {
        data: PathBuf::from("./emporium-data"),
        listen: "127.0.0.1:8080".to_owned(),
        tokens: None,
        orders_hot_max: emporium::memory::tiered::HOT_DEFAULT_MAX,
    });
    // A rehearsal over HTTP runs on one thread: it shares the machine with the server it
    // measures, and its submitters only wait on sockets, so a second worker would only add
    // wake-ups and stealing between the two.
    let over_http = |target: &str| matches!(emporium::rehearsal::loadgen::Target::parse_address(target), Ok(Some(_)));
    let one_thread = matches!(&action, Action::Loadgen { target, .. } if over_http(target));
    let mut builder = if one_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match action {
        Action::Serve { data, listen, tokens, orders_hot_max } => {
            runtime.block_on(serve(data, listen, tokens, orders_hot_max))
        }
        Action::Demo { data } => runtime.block_on(run_demo(data)),
        Action::Verify { data } => runtime.block_on(verify(data)),
        Action::Replay { data, as_of, check } => runtime.block_on(replay(data, as_of, check)),
        Action::Audit { data, shop, order } => runtime.block_on(audit(data, shop, order)),
        Action::Export { format, data, output } => runtime.block_on(export(format, data, output)),
        Action::Import { file, data } => runtime.block_on(import(file, data)),
        Action::Loadgen { target, token, shop, orders, duration, concurrency, seed, data, json, report } => {
            let options =
                LoadgenOptions { target, token, shop, orders, duration, concurrency, seed, data, json, report };
            runtime.block_on(loadgen(options))
        }
        Action::Drill { data, tag, tasks, commands, seconds } => {
            runtime.block_on(drill(data, tag, tasks, commands, seconds))
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The tokens from `--tokens`, else from EMPORIUM_TOKENS, else none.
fn load_tokens(file: Option<&std::path::Path>) -> Result<Tokens, String> {
    if let Some(file) = file {
        let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        return Tokens::parse_file(&text).map_err(|e| format!("{}: {e}", file.display()));
    }
    match std::env::var("EMPORIUM_TOKENS") {
        Ok(text) => Tokens::parse_env(&text).map_err(|e| format!("EMPORIUM_TOKENS: {e}")),
        Err(std::env::VarError::NotPresent) => Ok(Tokens::none()),
        Err(error) => Err(format!("EMPORIUM_TOKENS: {error}")),
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn stop_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

async fn serve(data: PathBuf, listen: String, tokens: Option<PathBuf>, orders_hot_max: usize) -> Result<(), String> {
    let address: std::net::SocketAddr =
        listen.parse().map_err(|e| format!("--listen takes an address such as 127.0.0.1:8080, not {listen:?}: {e}"))?;
    let tokens = load_tokens(tokens.as_deref())?;
    if tokens.is_empty() && !address.ip().is_loopback() {
        return Err(format!(
            "no tokens are configured, so the server only listens on a loopback address, not {address}; \
             give --tokens FILE or EMPORIUM_TOKENS"
        ));
    }
    let store = open_store(&data)?;
    let config = EngineConfig { orders_hot_max, ..engine_config(&data) };
    let engine =
        Engine::open(store, Arc::new(emporium::engine::SystemClock), config).await.map_err(|e| e.to_string())?;
    let engine = Arc::new(engine);
    engine.create_shop(&ShopId::main()).await.map_err(|e| e.to_string())?;
    let listener =
        tokio::net::TcpListener::bind(address).await.map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    if tokens.is_empty() {
        eprintln!("warning: no tokens configured: no authentication, serving on loopback only");
    }
    out!("emporium listening on http://{bound} (data in {})", data.display())?;
    let app = App::new(engine.clone(), tokens, ServiceConfig::default());
    let served = service::serve(listener, app, stop_signal()).await;
    tracing::info!("stopping: requests in flight are answered; closing the engine");
    engine.close().await;
    served.map_err(|e| format!("the server failed: {e}"))?;
    out!("emporium stopped; every acknowledged command is durable")
}

fn open_store(data: &std::path::Path) -> Result<Arc<SledStore>, String> {
    let log = layout::log_dir(data);
    SledStore::open(&log).map(Arc::new).map_err(|e| format!("cannot open the store in {}: {e}", log.display()))
}

fn engine_config(data: &std::path::Path) -> EngineConfig {
    EngineConfig {
        snapshots: Some(SnapshotConfig::new(layout::snapshot_dir(data))),
        // Orders not changed for a while leave memory for an unnamed scratch file here.
        spill_dir: Some(data.to_path_buf()),
        ..EngineConfig::default()
    }
}

async fn run_demo(data: PathBuf) -> Result<(), String> {
    let store = open_store(&data)?;
    let script = demo::shop_day();
    let clock = Arc::new(ManualClock::new(demo::DAY_START));
    // The day spans three days of engine time: remember its command ids for 30 days so that
    // running it again is answered from the log.
    let config = EngineConfig { idempotency_window_ms: 30 * 24 * 60 * 60 * 1000, ..engine_config(&data) };
    let engine = Engine::open(store, clock.clone(), config).await.map_err(|e| e.to_string())?;
    let shop = ShopId::main();
    engine.create_shop(&shop).await.map_err(|e| e.to_string())?;
    let (mut accepted, mut replayed) = (0, 0);
    for (index, (at, command)) in script.into_iter().enumerate() {
        clock.set(at);
        let command_id = CommandId::generated("demo", index as u64 + 1);
        let request = Request::new("demo", command).with_id(command_id);
        match engine.execute(&shop, request).await {
            Ok(receipt) if receipt.replayed => replayed += 1,
            Ok(_) => accepted += 1,
            Err(CommandError::Rejected(rejection)) => {
                return Err(format!("command {} of the shop day was rejected: {rejection}", index + 1));
            }
            Err(error) => return Err(error.to_string()),
        }
    }
    let last = engine.store().last_position(&shop).await.map_err(|e| e.to_string())?;
    let report = engine.read(&shop, report).await.map_err(|e| e.to_string())??;
    // Closed before printing, so a reader that stops early cannot cut the close short.
    engine.close().await;
    out!(
        "Shop day in {}: {accepted} commands executed, {replayed} answered from the log; log ends at {last}",
        data.display()
    )?;
    out_raw!("{report}")
}

fn report(state: &State) -> Result<String, String> {
    let mut out = String::from("\n");
    out += &format!(
        "{:<10} {:>8} {:>9} {:>10} {:>9} {:>12}  listed\n",
        "SKU", "on hand", "reserved", "available", "shortfall", "value"
    );
    for product in state.products() {
        let s = &product.stock;
        out += &format!(
            "{:<10} {:>8} {:>9} {:>10} {:>9} {:>12.2}  {}\n",
            product.sku,
            s.on_hand,
            s.reserved,
            s.available(),
            s.shortfall(),
            s.value,
            if product.listed { "yes" } else { "no" }
        );
    }
    out += &format!(
        "\n{:<8} {:<8} {:<18} {:>9} {:>9} {:>9}  returns    refunds\n",
        "order", "customer", "status", "total", "paid", "refunded"
    );
    // Read back one by one: the engine's writer may keep orders in its spill.
    let orders: Result<Vec<_>, _> = state.orders().collect();
    let mut orders = orders.map_err(|e| format!("an order could not be read back from the spill: {e}"))?;
    orders.sort_by(|a, b| a.id.cmp(&b.id));
    for order in orders {
        out += &format!(
            "{:<8} {:<8} {:<18} {:>9.2} {:>9.2} {:>9.2}  {:<10} {:?}\n",
            order.id,
            order.customer_id,
            format!("{:?}", order.status()),
            order.total,
            order.paid(),
            order.refunded,
            format!("{:?}", order.return_state()),
            order.refund_state()
        );
    }
    Ok(out)
}

async fn verify(data: PathBuf) -> Result<(), String> {
    if !data.exists() {
        return Err(format!("no data directory at {}", data.display()));
    }
    let store = open_store(&data)?;
    let mut failed = Vec::new();
    for shop in store.shops().await.map_err(|e| e.to_string())? {
        match store.verify(&shop).await {
            Ok(report) => out!("shop {shop}: {} events, chain intact, head {}", report.events, hex(&report.head))?,
            Err(StoreError::Corrupt { corruption, .. }) => {
                out!("shop {shop}: FAILED at position {}: {}", corruption.position, corruption.reason)?;
                failed.push(format!("shop {shop} at position {}", corruption.position));
            }
            Err(error) => return Err(format!("shop {shop}: {error}")),
        }
    }
    if failed.is_empty() { Ok(()) } else { Err(format!("verification failed: {}", failed.join(", "))) }
}

async fn drill(data: PathBuf, tag: String, tasks: usize, commands: usize, seconds: u64) -> Result<(), String> {
    use emporium::Command;
    use emporium::domain::command::Line;
    use rust_decimal::Decimal;

    let store = open_store(&data)?;
    let engine = Arc::new(
        Engine::open(store, Arc::new(emporium::engine::SystemClock), engine_config(&data))
            .await
            .map_err(|e| e.to_string())?,
    );
    let shop = ShopId::main();
    engine.create_shop(&shop).await.map_err(|e| e.to_string())?;
    let price = Decimal::new(1990, 2);
    let setup = [
        (
            "drill-list",
            Command::ListProduct {
                sku: "DRILL".into(),
                title: "Drill product".to_owned(),
                category: "drill".to_owned(),
                price,
                weight_g: 100,
                low_stock_threshold: 0,
            },
        ),
        (
            "drill-receive",
            Command::ReceiveStock {
                sku: "DRILL".into(),
                quantity: 1_000_000_000,
                unit_cost: Decimal::new(500, 2),
                supplier_ref: "DRILL".to_owned(),
            },
        ),
    ];
    for (id, command) in setup {
        let command_id = CommandId::new(id).map_err(|e| e.to_string())?;
        engine.execute(&shop, Request::new("drill", command).with_id(command_id)).await.map_err(|e| e.to_string())?;
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (engine, shop, tag) = (engine.clone(), shop.clone(), tag.clone());
        handles.push(tokio::spawn(async move {
            for n in 0..commands {
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                let order_id = format!("{tag}-{task}-{n}");
                let steps = [
                    Command::PlaceOrder {
                        order_id: order_id.as_str().into(),
                        customer_id: "C-1".into(),
                        lines: vec![Line::new("DRILL", 1)],
                        region: "drill".to_owned(),
                        reservation_id: None,
                    },
                    Command::Pay { order_id: order_id.as_str().into(), payment_id: "P".into(), amount: price },
                ];
                for (step, command) in steps.into_iter().enumerate() {
                    let command_id = CommandId::new(&format!("{order_id}-{step}")).map_err(|e| e.to_string())?;
                    let receipt = engine.execute(&shop, Request::new("drill", command).with_id(command_id)).await;
                    match receipt {
                        Ok(receipt) => {
                            let (first, last) = receipt.positions.map_or((0, 0), |p| (p.first, p.last));
                            out!("ack {} {first} {last}", receipt.command_id)?;
                        }
                        Err(error) => return Err(error.to_string()),
                    }
                }
            }
            Ok(())
        }));
    }
    for handle in handles {
        handle.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// What `emporium loadgen` was asked.
struct LoadgenOptions {
    target: String,
    token: Option<String>,
    shop: String,
    orders: Option<u64>,
    duration: Option<u64>,
    concurrency: usize,
    seed: u64,
    data: Option<PathBuf>,
    json: Option<PathBuf>,
    report: Option<PathBuf>,
}

async fn loadgen(options: LoadgenOptions) -> Result<(), String> {
    use emporium::rehearsal::loadgen::{self, RunClock, RunOptions, Scenario, Stop, Target};

    let LoadgenOptions { target, token, shop, orders, duration, concurrency, seed, data, json, report } = options;
    let address = Target::parse_address(&target)?;
    let shop = ShopId::new(&shop).map_err(|e| format!("--shop: {e}"))?;
    if address.is_some() && data.is_some() {
        return Err("--data keeps an in-process store; over HTTP the server keeps its own".to_owned());
    }
    let svg = report;

    if concurrency == 0 || concurrency > 100_000 {
        return Err("--concurrency takes 1 to 100000".to_owned());
    }
    let stop = match (orders, duration) {
        (Some(orders), _) if orders == 0 || orders > loadgen::ORDERS_MAX => {
            return Err(format!("--orders takes 1 to {}", loadgen::ORDERS_MAX));
        }
        (Some(orders), _) => Stop::Orders(orders),
        (None, Some(seconds)) => Stop::Duration(std::time::Duration::from_secs(seconds.max(1))),
        (None, None) => Stop::Orders(100_000),
    };
    // In-process: an engine on a fresh store; a day of a million orders spans a day of engine time.
    let mut in_process = None;
    let (target, title) = match address {
        Some(address) => {
            let title = format!("emporium loadgen, double11 over HTTP to {address}, seed {seed}");
            let token = token.or_else(|| std::env::var("EMPORIUM_TOKEN").ok());
            (Target::Http { address, token }, title)
        }
        None => {
            let (data, temporary) = match data {
                Some(data) => (data, false),
                None => {
                    let name = format!("emporium-loadgen-{}-{seed}", std::process::id());
                    (std::env::temp_dir().join(name), true)
                }
            };
            let store = open_store(&data)?;
            if !store.shops().await.map_err(|e| e.to_string())?.is_empty() {
                return Err(format!(
                    "{} already holds shops: a rehearsal needs a fresh data directory",
                    data.display()
                ));
            }
            let clock = Arc::new(RunClock::new(demo::DAY_START, 86));
            let engine =
                Arc::new(Engine::open(store, clock.clone(), engine_config(&data)).await.map_err(|e| e.to_string())?);
            in_process = Some((engine.clone(), data, temporary));
            (Target::InProcess { engine, clock }, format!("emporium loadgen, double11 in-process, seed {seed}"))
        }
    };
    let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let options = RunOptions { scenario: Scenario::double11(seed), stop, concurrency, answered: answered.clone() };
    let bar = progress_bar(
        match stop {
            Stop::Orders(orders) => orders,
            Stop::Duration(_) => 0,
        },
        "placing orders".to_owned(),
    );
    if let Ok(style) = ProgressStyle::with_template("[{bar:40}] {pos}/{len} orders, {msg}, {elapsed}") {
        bar.set_style(style.progress_chars("=> "));
    }
    let ticker = {
        let (bar, answered) = (bar.clone(), answered.clone());
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(std::time::Duration::from_millis(500));
            let started = std::time::Instant::now();
            loop {
                interval.tick().await;
                let done = answered.load(std::sync::atomic::Ordering::Relaxed);
                bar.set_position(done);
                bar.set_message(format!("{:.0} orders/s", done as f64 / started.elapsed().as_secs_f64().max(1e-3)));
            }
        })
    };
    let report = loadgen::run(target, shop, &options).await;
    ticker.abort();
    bar.finish_and_clear();
    if let Some((engine, data, temporary)) = in_process {
        engine.close().await;
        drop(engine);
        if temporary {
            let _ = std::fs::remove_dir_all(&data);
        }
    }
    let report = report?;
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
    )?;
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = svg {
        loadgen::draw(&report, &title, &path)?;
    }
    if report.checks_passed {
        out!("every check passed")
    } else {
        Err(format!("checks failed: {}", report.failures.join("; ")))
    }
}

/// `--as-of`: a position, or an RFC 3339 time.
fn parse_as_of(text: Option<&str>) -> Result<AsOf, String> {
    let Some(text) = text else { return Ok(AsOf::End) };
    if let Ok(position) = text.parse::<u64>() {
        return Ok(AsOf::Position(position));
    }
    let time = humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("--as-of takes a log position or an RFC 3339 time, not {text:?}: {e}"))?;
    let ms = time.duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?.as_millis();
    Ok(AsOf::TimeMs(u64::try_from(ms).unwrap_or(u64::MAX)))
}

/// Builds every view of `shop` from the log as of `as_of`, page by page, moving `bar` along.
async fn rebuild(
    store: &dyn EventStore,
    shop: &ShopId,
    views: &mut Views,
    as_of: AsOf,
    bar: &ProgressBar,
) -> Result<(), String> {
    loop {
        let page = store.read_from(shop, views.checkpoint(), 65_536).await.map_err(|e| e.to_string())?;
        let done = page.is_empty() || views.catch_up(&page, as_of).map_err(|e| e.to_string())?;
        bar.set_position(views.checkpoint());
        if done {
            return Ok(());
        }
    }
}

fn print_hashes(label: &str, views: &Views) -> Result<(), String> {
    out!("  {label} (as of position {}):", views.checkpoint())?;
    for (name, hash) in views.hashes().map_err(|e| e.to_string())? {
        out!("    {name:<10} {hash}")?;
    }
    Ok(())
}

async fn replay(data: PathBuf, as_of: Option<String>, check: bool) -> Result<(), String> {
    let as_of = parse_as_of(as_of.as_deref())?;
    let store = open_store(&data)?;
    let mut differences = Vec::new();
    let mut rebuilt: Vec<(ShopId, Views)> = Vec::new();
    for shop in store.shops().await.map_err(|e| e.to_string())? {
        let last = store.last_position(&shop).await.map_err(|e| e.to_string())?;
        let bar = progress_bar(last, format!("replaying shop {shop}"));
        let started = std::time::Instant::now();
        let mut views = Views::new();
        rebuild(store.as_ref(), &shop, &mut views, as_of, &bar).await?;
        bar.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        out!(
            "shop {shop}: rebuilt {} events from zero in {:.3} s ({:.0} events/s)",
            views.checkpoint(),
            seconds,
            views.checkpoint() as f64 / seconds.max(1e-9)
        )?;
        print_hashes("from zero", &views)?;
        if let Err(broken) = views.ledger.projection().check(views.shop.projection()) {
            differences.push(format!("shop {shop}: the ledger does not hold: {broken}"));
        }
        if check {
            let snapshots = SnapshotStore::open(&layout::snapshot_dir(&data).join(shop.as_str()).join("views"), 3)
                .map_err(|e| e.to_string())?;
            let loaded = snapshots
                .load_newest_at_most(emporium::engine::VIEWS_SNAPSHOT_SCHEMA, views.checkpoint())
                .map_err(|e| e.to_string())?;
            for skipped in &loaded.skipped {
                out!("  warning: snapshot {} skipped: {}", skipped.path.display(), skipped.reason)?;
            }
            match loaded.snapshot.and_then(|s| Views::decode(&s.state, s.position).map(|v| (s.position, v))) {
                Some((position, mut resumed)) => {
                    let bar = progress_bar(last, format!("replaying shop {shop} from the snapshot at {position}"));
                    bar.set_position(position);
                    rebuild(store.as_ref(), &shop, &mut resumed, as_of, &bar).await?;
                    bar.finish_and_clear();
                    print_hashes(&format!("from the snapshot at {position} and the tail"), &resumed)?;
                    if resumed.hashes().map_err(|e| e.to_string())? != views.hashes().map_err(|e| e.to_string())? {
                        differences.push(format!("shop {shop}: the snapshotted views differ"));
                    }
                }
                None => out!("  no usable view snapshot to compare")?,
            }
        }
        rebuilt.push((shop, views));
    }
    if check && as_of == AsOf::End {
        let clock = Arc::new(emporium::engine::SystemClock);
        let engine = Engine::open(store.clone(), clock, engine_config(&data)).await.map_err(|e| e.to_string())?;
        for (shop, views) in &rebuilt {
            let reached = engine.views_reach(shop, views.checkpoint(), std::time::Duration::from_secs(600)).await;
            let live = engine.views(shop, |live| (live.checkpoint(), live.hashes())).map_err(|e| e.to_string())?;
            let live = (live.0, live.1.map_err(|e| e.to_string())?);
            out!("shop {shop}: live views reached {}", reached.map_err(|e| e.to_string())?)?;
            if live.1 != views.hashes().map_err(|e| e.to_string())? {
                differences.push(format!("shop {shop}: the live views differ (at position {})", live.0));
            }
        }
        engine.close().await;
    }
    if differences.is_empty() {
        out!("{}", if check { "every build agrees" } else { "rebuilt" })?;
        Ok(())
    } else {
        Err(differences.join("; "))
    }
}

/// A progress bar of `length` events on standard error. Hidden when standard error is not a
/// terminal, so that nothing is drawn into a file or a pipe; cleared when dropped.
fn progress_bar(length: u64, message: String) -> ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr())
        .with_finish(indicatif::ProgressFinish::AndClear);
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} events, {per_sec}, {eta} left") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar
}

/// Shows a transfer's progress on `bar`, restarting it for each shop.
fn follow(bar: &ProgressBar) -> impl FnMut(transfer::Progress<'_>) + '_ {
    move |progress| {
        if progress.done == 0 {
            let doing = match progress.phase {
                Phase::Export => "exporting",
                Phase::Check => "checking",
                Phase::Write => "importing",
            };
            bar.reset();
            bar.set_length(progress.total);
            bar.set_message(format!("{doing} shop {}", progress.shop));
        }
        bar.set_position(progress.done);
    }
}

async fn export(format: Format, data: PathBuf, output: Option<PathBuf>) -> Result<(), String> {
    let Format::Jsonl = format;
    if !data.exists() {
        return Err(format!("no data directory at {}", data.display()));
    }
    let store = open_store(&data)?;
    let bar = progress_bar(0, String::new());
    let Some(path) = output else {
        let exported = transfer::export(store.as_ref(), std::io::stdout().lock(), follow(&bar)).await;
        bar.finish_and_clear();
        return exported.map(drop).map_err(|e| match e {
            ExportError::Write(e) => format!("cannot write to standard output: {e}"),
            e => e.to_string(),
        });
    };
    // Written next to the destination and renamed into place once complete and synced, so a
    // failed export never leaves a partial file under the name asked for.
    let name = path.file_name().ok_or_else(|| format!("--output {} does not name a file", path.display()))?;
    let partial = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    let exported = async {
        let mut file =
            std::fs::File::create(&partial).map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
        let shops = transfer::export(store.as_ref(), &mut file, follow(&bar)).await.map_err(|e| match e {
            ExportError::Write(e) => format!("cannot write {}: {e}", partial.display()),
            e => e.to_string(),
        })?;
        file.sync_all().map_err(|e| format!("cannot sync {}: {e}", partial.display()))?;
        std::fs::rename(&partial, &path)
            .map_err(|e| format!("cannot rename {} to {}: {e}", partial.display(), path.display()))?;
        Ok::<_, String>(shops)
    }
    .await;
    bar.finish_and_clear();
    let shops = match exported {
        Ok(shops) => shops,
        Err(message) => {
            // Best effort: the error that matters is the one being returned.
            let _ = std::fs::remove_file(&partial);
            return Err(message);
        }
    };
    for shop in &shops {
        out!("shop {}: {} events, head {}", shop.shop, shop.events, hex(&shop.head))?;
    }
    let events: u64 = shops.iter().map(|s| s.events).sum();
    let count = if shops.len() == 1 { "1 shop".to_owned() } else { format!("{} shops", shops.len()) };
    out!("exported {events} events of {count} to {}", path.display())
}

async fn import(file: PathBuf, data: PathBuf) -> Result<(), String> {
    // Checked before the store is opened, so a mistyped name creates no data directory.
    std::fs::File::open(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let store = open_store(&data)?;
    let bar = progress_bar(0, String::new());
    let imported = transfer::import_file(store.as_ref(), &file, follow(&bar)).await;
    bar.finish_and_clear();
    for shop in imported.map_err(|e| format!("{}: {e}", file.display()))? {
        out!("shop {}: {} events imported, chain intact, head {}", shop.shop, shop.events, hex(&shop.head))?;
    }
    Ok(())
}

async fn audit(data: PathBuf, shop: String, order: String) -> Result<(), String> {
    let shop = ShopId::new(&shop)?;
    let order_id = emporium::OrderId::from(order.as_str());
    order_id.check().map_err(|e| e.to_string())?;
    let store = open_store(&data)?;
    let end = store.last_position(&shop).await.map_err(|e| e.to_string())?;
    let history = emporium::log::store::order_history(store.as_ref(), &shop, &order_id, end).await;
    let Some(events) = history.map_err(|e| e.to_string())? else {
        return Err(format!("shop {shop} has no order {order_id}"));
    };
    out!("order {order_id} in shop {shop}: {} events", events.len())?;
    for envelope in &events {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(envelope.recorded_at.0);
        out!(
            "{:>8}  {}  {:<10} {:<28} {}",
            envelope.position,
            humantime::format_rfc3339_millis(at),
            envelope.actor,
            envelope.command_id,
            emporium::views::describe(&envelope.event)
        )?;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
