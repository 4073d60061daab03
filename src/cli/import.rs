//! `emporium import`: rebuilds a fresh store from an export ([`crate::log::transfer`]). The
//! whole file is checked first (positions, streams, the hash chain, and every shop's events
//! replayed to see that they fit), before the store is opened: an export that fails creates
//! no store and appends nothing. A store that already holds events is refused. Prints each
//! imported shop with its events and the chain's head.

use std::path::PathBuf;

use crate::cli::shared::{CliError, DATA_DEFAULT, follow, hex, open_store, out, progress_bar};
use crate::log::transfer;

/// The flags of `emporium import`.
#[derive(clap::Args)]
pub struct Args {
    /// The export to read.
    pub file: PathBuf,
    /// The data directory; its log must hold no events.
    #[arg(long, default_value = DATA_DEFAULT)]
    pub data: PathBuf,
}

/// Imports the export into the store of the data directory.
pub async fn run(args: Args) -> Result<(), CliError> {
    let Args { file, data } = args;
    // Checked before the store is opened, so a mistyped name or a bad export creates no
    // data directory.
    let open = || std::fs::File::open(&file).map(std::io::BufReader::new);
    let reader = open().map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let bar = progress_bar(0, String::new());
    let checked = transfer::check_export(reader, follow(&bar));
    let checked = checked.inspect_err(|_| bar.finish_and_clear()).map_err(|e| format!("{}: {e}", file.display()))?;
    let store = open_store(&data).inspect_err(|_| bar.finish_and_clear())?;
    let imported = transfer::import_checked(store.as_ref(), open, &checked, follow(&bar)).await;
    bar.finish_and_clear();
    for shop in imported.map_err(|e| format!("{}: {e}", file.display()))? {
        out!("shop {}: {} events imported, chain intact, head {}", shop.shop, shop.events, hex(&shop.head))?;
    }
    Ok(())
}
