//! `emporium drill`, hidden: the durability drill the crash test runs. It opens the engine
//! on sled, lists one product with a billion units in stock, then has `--tasks` submitters
//! place and pay orders, printing every acknowledged command as
//! `ack <command id> <first position> <last position>` the moment its receipt arrives. The
//! test kills it at random moments and checks that every command it saw acknowledged is in
//! the log; left alone, it stops after `--commands` per submitter or `--seconds`.

use std::path::PathBuf;
use std::sync::Arc;

use rust_decimal::Decimal;
use tokio::time::Instant;

use crate::Command;
use crate::cli::shared::{CliError, engine_config, open_store, out};
use crate::domain::command::Line;
use crate::domain::ids::{CommandId, ShopId};
use crate::engine::{Engine, Request, SystemClock};

/// The flags of `emporium drill`.
#[derive(clap::Args)]
pub struct Args {
    /// The data directory.
    #[arg(long)]
    pub data: PathBuf,
    /// Prefix of this run's command ids, unique per run.
    #[arg(long)]
    pub tag: String,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 16)]
    pub tasks: usize,
    /// Most commands per submitter.
    #[arg(long, default_value_t = 10_000)]
    pub commands: usize,
    /// Longest run, in seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
}

/// The price of the drill's product, which every order pays.
fn price() -> Decimal {
    Decimal::new(1990, 2)
}

/// Runs the drill until every submitter is done or the time is up.
pub async fn run(args: Args) -> Result<(), CliError> {
    let Args { data, tag, tasks, commands, seconds } = args;
    let store = open_store(&data)?;
    let engine =
        Arc::new(Engine::open(store, Arc::new(SystemClock), engine_config(&data)).await.map_err(|e| e.to_string())?);
    let shop = ShopId::main();
    engine.create_shop(&shop).await.map_err(|e| e.to_string())?;
    set_up(&engine, &shop).await?;
    let deadline = Instant::now() + std::time::Duration::from_secs(seconds);
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (engine, shop, tag) = (engine.clone(), shop.clone(), tag.clone());
        handles.push(tokio::spawn(async move { submit(&engine, &shop, &tag, task, commands, deadline).await }));
    }
    let mut finished = Ok(());
    for handle in handles {
        let done = handle.await.map_err(|e| e.to_string()).and_then(|submitted| submitted);
        finished = finished.and(done);
    }
    // Every acknowledged command is durable already; closing lets each writer finish and
    // the witness record where the log ends.
    engine.close().await;
    Ok(finished?)
}

/// Lists the drill's product and receives its stock, under command ids that are the same
/// in every run.
async fn set_up(engine: &Engine, shop: &ShopId) -> Result<(), String> {
    let setup = [
        (
            "drill-list",
            Command::ListProduct {
                sku: "DRILL".into(),
                title: "Drill product".to_owned(),
                category: "drill".to_owned(),
                price: price(),
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
        engine.execute(shop, Request::new("drill", command).with_id(command_id)).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Submitter `task`: places and pays up to `commands` orders until `deadline`, printing
/// each acknowledgement.
async fn submit(
    engine: &Engine,
    shop: &ShopId,
    tag: &str,
    task: usize,
    commands: usize,
    deadline: Instant,
) -> Result<(), String> {
    for n in 0..commands {
        if Instant::now() >= deadline {
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
            Command::Pay { order_id: order_id.as_str().into(), payment_id: "P".into(), amount: price() },
        ];
        for (step, command) in steps.into_iter().enumerate() {
            let command_id = CommandId::new(&format!("{order_id}-{step}")).map_err(|e| e.to_string())?;
            let receipt = engine.execute(shop, Request::new("drill", command).with_id(command_id)).await;
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
}
