//! The layout of a data directory: the sled log in `log/`, snapshots in `snapshots/`, and
//! the witness of where each shop's log ended in `witness`.

use std::path::{Path, PathBuf};

/// Where the sled database (every shop log) lives.
pub fn log_dir(data: &Path) -> PathBuf {
    data.join("log")
}

/// Where engine and view snapshots live, one directory per shop and kind.
pub fn snapshot_dir(data: &Path) -> PathBuf {
    data.join("snapshots")
}

/// Where the engine keeps the witness of each shop's log end, beside the log and outside
/// it: a cut log cannot take it along.
pub fn witness_path(data: &Path) -> PathBuf {
    data.join("witness")
}
