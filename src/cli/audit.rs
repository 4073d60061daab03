//! `emporium audit`: the full history of one order, read from its shop's log through the
//! stream index, printed as a timeline: position, time, actor, command id and a line saying
//! what happened. An order the shop never had is an error. It changes nothing in the data
//! directory: it reads a private copy of the store (reading a history writes the stream
//! index).

use std::path::PathBuf;

use crate::OrderId;
use crate::cli::shared::{CliError, DATA_DEFAULT, open_existing_store, out};
use crate::domain::ids::ShopId;
use crate::log::store::{EventStore, order_history};

/// The flags of `emporium audit`.
#[derive(clap::Args)]
pub struct Args {
    /// The data directory.
    #[arg(long, default_value = DATA_DEFAULT)]
    pub data: PathBuf,
    /// The shop.
    #[arg(long, default_value = "main")]
    pub shop: String,
    /// The order.
    #[arg(long)]
    pub order: String,
}

/// Prints the order's timeline.
pub async fn run(args: Args) -> Result<(), CliError> {
    let Args { data, shop, order } = args;
    let shop = ShopId::new(&shop)?;
    let order_id = OrderId::from(order.as_str());
    order_id.check().map_err(|e| e.to_string())?;
    let store = open_existing_store(
        &data,
        "while it runs, read the history from it: GET /v1/shops/{shop}/orders/{order_id}/history",
    )?;
    let end = store.last_position(&shop).await.map_err(|e| e.to_string())?;
    let history = order_history(store.as_ref(), &shop, &order_id, end).await;
    let Some(events) = history.map_err(|e| e.to_string())? else {
        return Err(format!("shop {shop} has no order {order_id}").into());
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
            crate::views::describe(&envelope.event)
        )?;
    }
    Ok(())
}
