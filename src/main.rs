//! The `emporium` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use emporium::engine::{CommandError, Engine, EngineConfig, ManualClock, Request};
use emporium::ids::{CommandId, ShopId};
use emporium::store::{EventStore, SledStore, StoreError};
use emporium::{State, demo};

#[derive(Parser)]
#[command(name = "emporium", version, about = "An event-sourced order and inventory engine for online shops")]
struct Cli {
    #[command(subcommand)]
    command: Option<Action>,
}

#[derive(Subcommand)]
enum Action {
    /// Run the scripted shop day through the engine on sled and print stock and orders
    /// (the default). Running it again on the same data answers every command from the log.
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let action = cli.command.unwrap_or(Action::Demo { data: PathBuf::from("./emporium-data") });
    let outcome = match action {
        Action::Demo { data } => runtime.block_on(run_demo(data)),
        Action::Verify { data } => runtime.block_on(verify(data)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn open_store(data: &std::path::Path) -> Result<Arc<SledStore>, String> {
    SledStore::open(data).map(Arc::new).map_err(|e| format!("cannot open the store in {}: {e}", data.display()))
}

async fn run_demo(data: PathBuf) -> Result<(), String> {
    let store = open_store(&data)?;
    let script = demo::shop_day();
    let clock = Arc::new(ManualClock::new(demo::DAY_START));
    // The day spans three days of engine time: remember its command ids for 30 days so that
    // running it again is answered from the log.
    let config = EngineConfig { idempotency_window_ms: 30 * 24 * 60 * 60 * 1000, ..EngineConfig::default() };
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
    println!(
        "Shop day in {}: {accepted} commands executed, {replayed} answered from the log; log ends at {last}",
        data.display()
    );
    let report = engine.read(&shop, report).await.map_err(|e| e.to_string())?;
    print!("{report}");
    engine.close().await;
    Ok(())
}

fn report(state: &State) -> String {
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
    let mut orders: Vec<_> = state.orders().collect();
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
    out
}

async fn verify(data: PathBuf) -> Result<(), String> {
    if !data.exists() {
        return Err(format!("no data directory at {}", data.display()));
    }
    let store = open_store(&data)?;
    let mut failed = Vec::new();
    for shop in store.shops().await.map_err(|e| e.to_string())? {
        match store.verify(&shop).await {
            Ok(report) => println!("shop {shop}: {} events, chain intact, head {}", report.events, hex(&report.head)),
            Err(StoreError::Corrupt { corruption, .. }) => {
                println!("shop {shop}: FAILED at position {}: {}", corruption.position, corruption.reason);
                failed.push(format!("shop {shop} at position {}", corruption.position));
            }
            Err(error) => return Err(format!("shop {shop}: {error}")),
        }
    }
    if failed.is_empty() { Ok(()) } else { Err(format!("verification failed: {}", failed.join(", "))) }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
