//! `emporium export`: every event of every shop as JSON Lines ([`crate::log::transfer`]),
//! each with its hash in the shop's chain, to standard output or to `--output`. A file is
//! written beside its destination under a hidden partial name, synced and renamed into
//! place only when complete, so a failed export leaves no partial file under the name asked
//! for; a summary of the shops and their heads follows on standard output. Nothing in the
//! data directory changes: the store read is a private copy.

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use indicatif::ProgressBar;

use crate::cli::shared::{CliError, DATA_DEFAULT, follow, hex, open_existing_store, out, progress_bar};
use crate::log::store::SledStore;
use crate::log::transfer::{self, ExportError, ShopSummary};

/// The flags of `emporium export`.
#[derive(clap::Args)]
pub struct Args {
    /// The format: JSON Lines.
    #[arg(long, value_enum)]
    pub format: Format,
    /// The data directory.
    #[arg(long, default_value = DATA_DEFAULT)]
    pub data: PathBuf,
    /// Where to write; standard output when not given.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// Formats of `emporium export`.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// JSON Lines: one object per line.
    Jsonl,
}

/// Exports every shop log.
pub async fn run(args: Args) -> Result<(), CliError> {
    let Args { format, data, output } = args;
    let Format::Jsonl = format;
    let store = open_existing_store(&data, "while it runs, read the events from it: GET /v1/shops/{shop}/events")?;
    let bar = progress_bar(0, String::new());
    let Some(path) = output else {
        let exported = transfer::export(store.as_ref(), std::io::stdout().lock(), follow(&bar)).await;
        bar.finish_and_clear();
        return exported.map(drop).map_err(|e| match e {
            ExportError::Write(e) => format!("cannot write to standard output: {e}").into(),
            e => e.to_string().into(),
        });
    };
    let shops = export_to_file(&store, &path, &bar).await?;
    for shop in &shops {
        out!("shop {}: {} events, head {}", shop.shop, shop.events, hex(&shop.head))?;
    }
    let events: u64 = shops.iter().map(|s| s.events).sum();
    let count = if shops.len() == 1 { "1 shop".to_owned() } else { format!("{} shops", shops.len()) };
    Ok(out!("exported {events} events of {count} to {}", path.display())?)
}

/// Exports into `path`, showing progress on `bar`: written next to it and renamed into
/// place once complete and synced, so a failed export never leaves a partial file under the
/// name asked for.
async fn export_to_file(store: &SledStore, path: &Path, bar: &ProgressBar) -> Result<Vec<ShopSummary>, String> {
    let name = path.file_name().ok_or_else(|| format!("--output {} does not name a file", path.display()))?;
    let partial = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    let exported = async {
        let mut file =
            std::fs::File::create(&partial).map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
        let shops = transfer::export(store, &mut file, follow(bar)).await.map_err(|e| match e {
            ExportError::Write(e) => format!("cannot write {}: {e}", partial.display()),
            e => e.to_string(),
        })?;
        file.sync_all().map_err(|e| format!("cannot sync {}: {e}", partial.display()))?;
        std::fs::rename(&partial, path)
            .map_err(|e| format!("cannot rename {} to {}: {e}", partial.display(), path.display()))?;
        Ok::<_, String>(shops)
    }
    .await;
    bar.finish_and_clear();
    if exported.is_err() {
        // Best effort: the error that matters is the one being returned.
        let _ = std::fs::remove_file(&partial);
    }
    exported
}
