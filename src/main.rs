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

async fn drill(data: PathBuf, tag: String, tasks: usize, commands: usize, seconds: u64) -> Result<(), String> {
    use emporium::Command;
    use emporium::command::Line;
    use rust_decimal::Decimal;

    let store = open_store(&data)?;
    let engine = Arc::new(
        Engine::open(store, Arc::new(emporium::engine::SystemClock), EngineConfig::default())
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
                            println!("ack {} {first} {last}", receipt.command_id);
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
