//! What several subcommands share: the error they end with, writing to standard output,
//! opening the store of a data directory (to write, or only to read what is there), the
//! engine's settings on it, the runtime, and the progress bars drawn on standard error.
//!
//! The subcommands that only read a store (`verify`, `replay`, `audit`, `export`) open it
//! with [`open_existing_store`], which refuses a path holding no store instead of creating
//! one there; those that write (`serve`, `demo`, `import`, `loadgen`, `drill`) use
//! [`open_store`].

use std::path::Path;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::{EngineConfig, SnapshotConfig};
use crate::log::layout;
use crate::log::store::SledStore;
use crate::log::transfer::{self, Phase};

/// The data directory when `--data` is not given, for the subcommands that default it
/// (all but `loadgen` and `drill`).
pub const DATA_DEFAULT: &str = "./emporium-data";

/// Why a subcommand failed: the message the binary prints after `error: `, exiting non-zero.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(String);

impl From<String> for CliError {
    fn from(message: String) -> CliError {
        CliError(message)
    }
}

impl From<&str> for CliError {
    fn from(message: &str) -> CliError {
        CliError(message.to_owned())
    }
}

/// Writes a line to standard output; a closed pipe or full disk is an error, never a panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*).map_err(|e| format!("cannot write to standard output: {e}"))
    }};
}
pub(crate) use out;

/// [`out!`] without the newline.
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout(), $($arg)*).map_err(|e| format!("cannot write to standard output: {e}"))
    }};
}
pub(crate) use out_raw;

/// The runtime a subcommand runs on: one thread when `one_thread`, else one worker a core.
pub fn runtime(one_thread: bool) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if one_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build()
}

/// Opens the store in `data`, creating the directory and an empty store if there is none.
pub fn open_store(data: &Path) -> Result<Arc<SledStore>, String> {
    let log = layout::log_dir(data);
    SledStore::open(&log).map(Arc::new).map_err(|e| format!("cannot open the store in {}: {e}", log.display()))
}

/// Opens the store in `data` for a subcommand that only reads it: a path that holds no
/// store is an error, and nothing is created there.
pub fn open_existing_store(data: &Path) -> Result<Arc<SledStore>, String> {
    if !data.exists() {
        return Err(format!("no data directory at {}", data.display()));
    }
    if !SledStore::exists(&layout::log_dir(data)) {
        return Err(format!("no store in {}", data.display()));
    }
    open_store(data)
}

/// The engine's settings on the data directory `data`: snapshots in it, and its scratch file.
pub fn engine_config(data: &Path) -> EngineConfig {
    EngineConfig {
        snapshots: Some(SnapshotConfig::new(layout::snapshot_dir(data))),
        // Orders not changed for a while leave memory for an unnamed scratch file here.
        spill_dir: Some(data.to_path_buf()),
        ..EngineConfig::default()
    }
}

/// A progress bar of `length` events on standard error. Hidden when standard error is not a
/// terminal, so that nothing is drawn into a file or a pipe; cleared when dropped.
pub fn progress_bar(length: u64, message: String) -> ProgressBar {
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
pub fn follow(bar: &ProgressBar) -> impl FnMut(transfer::Progress<'_>) + '_ {
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

/// `bytes` in lower-case hexadecimal, two digits a byte (a chain's head).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
