//! What several subcommands share: the error they end with, writing to standard output,
//! opening the store of a data directory (to write, or only to read what is there), the
//! engine's settings on it, the runtime, and the progress bars drawn on standard error.
//!
//! The subcommands that only read a store (`verify`, `replay`, `audit`, `export`) open it
//! with [`open_existing_store`], which refuses a path holding no store instead of creating
//! one there, refuses files that are not sled's, and reads a private copy, so that nothing
//! in the data directory changes; those that write (`serve`, `demo`, `import`, `loadgen`,
//! `drill`) use [`open_store`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::{EngineConfig, SnapshotConfig};
use crate::log::layout;
use crate::log::store::{LOCK_WAIT_MS, SledStore};
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

/// A private copy of a data directory's store, which a subcommand that only reads opens
/// instead of the store itself: sled writes to its files whenever it opens them (it grows
/// the log file to a whole segment and writes a snapshot of its own), and reading an
/// order's history writes the stream index. The copy is removed when this is dropped.
pub struct ReadCopy {
    /// The store opened on the copy.
    pub store: Arc<SledStore>,
    /// The copy; dropped after the store.
    copy: TempDir,
}

impl std::ops::Deref for ReadCopy {
    type Target = Arc<SledStore>;

    fn deref(&self) -> &Arc<SledStore> {
        &self.store
    }
}

impl ReadCopy {
    /// The data directory of the copy: `log/` as copied, and whatever else is copied in.
    pub fn data(&self) -> &Path {
        &self.copy.0
    }
}

/// A directory removed when dropped, once nothing holds the database lock in it.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        // sled releases its lock from background work shortly after the store is dropped.
        let log = layout::log_dir(&self.0);
        let _ = crate::log::store::wait_until_unlocked(&log, std::time::Duration::from_millis(LOCK_WAIT_MS));
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies the files and directories under `from` into `to`, which must not exist: at
/// most `depth_max` levels deep.
fn copy_tree(from: &Path, to: &Path, depth_max: usize) -> Result<(), String> {
    std::fs::create_dir(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    let entries = std::fs::read_dir(from).map_err(|e| format!("cannot list {}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", from.display()))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(|e| format!("cannot read {}: {e}", source.display()))?;
        if kind.is_dir() && depth_max > 0 {
            copy_tree(&source, &target, depth_max - 1)?;
        } else if kind.is_file() {
            std::fs::copy(&source, &target)
                .map_err(|e| format!("cannot copy {} to {}: {e}", source.display(), target.display()))?;
        }
    }
    Ok(())
}

/// Opens the store in `data` for a subcommand that only reads it, changing nothing there:
/// a path that holds no store, or files that are not sled's, are an error, and the store
/// read is a private copy in the temporary directory (`TMPDIR`), made while a shared lock
/// keeps a server from opening the store. While a server holds it, the error says so and
/// points to `while_served`, how to do the same through the server.
pub fn open_existing_store(data: &Path, while_served: &str) -> Result<ReadCopy, String> {
    if !data.is_dir() {
        return Err(format!("no data directory at {}", data.display()));
    }
    let log = layout::log_dir(data);
    if !SledStore::exists(&log) {
        return Err(format!("no store in {}", data.display()));
    }
    SledStore::check_files(&log).map_err(|e| format!("cannot read the store in {}: {e}", log.display()))?;
    let db = log.join("db");
    // The lock sled takes is exclusive: a shared one keeps a server out while copying.
    let lock = std::fs::File::open(&db).map_err(|e| format!("cannot read {}: {e}", db.display()))?;
    let started = std::time::Instant::now();
    loop {
        match lock.try_lock_shared() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed().as_millis() < u128::from(LOCK_WAIT_MS) => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(format!(
                    "the store in {} is in use, by `emporium serve` or another process: {while_served}",
                    data.display()
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(format!("cannot lock {}: {e}", db.display())),
        }
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let copy = TempDir(std::env::temp_dir().join(format!("emporium-read-{}-{nanos:x}", std::process::id())));
    std::fs::create_dir(&copy.0).map_err(|e| format!("cannot create {}: {e}", copy.0.display()))?;
    copy_tree(&log, &layout::log_dir(&copy.0), 2).map_err(|e| {
        format!("cannot copy the store to read it unchanged ({e}); set TMPDIR to a directory with room")
    })?;
    drop(lock);
    let store =
        open_store(&copy.0).map_err(|e| e.replace(&copy.0.display().to_string(), &data.display().to_string()))?;
    Ok(ReadCopy { store, copy })
}

/// Copies the snapshots of `data` into `read`'s copy, for an engine opened on the copy.
pub fn copy_snapshots(data: &Path, read: &ReadCopy) -> Result<(), String> {
    let snapshots = layout::snapshot_dir(data);
    if !snapshots.is_dir() {
        return Ok(());
    }
    copy_tree(&snapshots, &layout::snapshot_dir(read.data()), 3).map_err(|e| {
        format!("cannot copy the snapshots to read them unchanged ({e}); set TMPDIR to a directory with room")
    })
}

/// The engine's settings on the data directory `data`: snapshots in it, and its scratch file.
pub fn engine_config(data: &Path) -> EngineConfig {
    EngineConfig {
        snapshots: Some(SnapshotConfig::new(layout::snapshot_dir(data))),
        // Orders not changed for a while leave memory for an unnamed scratch file here.
        spill_dir: Some(data.to_path_buf()),
        witness: Some(layout::witness_path(data)),
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
