//! `emporium demo`: the scripted shop day ([`crate::rehearsal::demo`]) through the engine on
//! sled, on a manual clock that each command sets to its time, then a table of the stock
//! and one of the orders. Every command has a fixed id, so running it again on the same
//! data answers each one from the log and changes nothing.

use std::path::PathBuf;
use std::sync::Arc;

use crate::State;
use crate::cli::shared::{CliError, DATA_DEFAULT, engine_config, open_store, out, out_raw};
use crate::domain::ids::{CommandId, ShopId};
use crate::engine::{CommandError, Engine, EngineConfig, ManualClock, Request};
use crate::rehearsal::demo;

/// The flags of `emporium demo`.
#[derive(clap::Args)]
pub struct Args {
    /// The data directory.
    #[arg(long, default_value = DATA_DEFAULT)]
    pub data: PathBuf,
}

/// Runs the shop day and prints where the shop stands.
pub async fn run(args: Args) -> Result<(), CliError> {
    let Args { data } = args;
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
                return Err(format!("command {} of the shop day was rejected: {rejection}", index + 1).into());
            }
            Err(error) => return Err(error.to_string().into()),
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
    Ok(out_raw!("{report}")?)
}

/// The stock of every product and every order, as two tables.
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
