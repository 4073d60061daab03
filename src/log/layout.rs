//! The layout of a data directory: the sled log in `log/`, snapshots in `snapshots/`.

use std::path::{Path, PathBuf};

/// Where the sled database (every shop log) lives.
pub fn log_dir(data: &Path) -> PathBuf {
    data.join("log")
}

/// Where engine and view snapshots live, one directory per shop and kind.
pub fn snapshot_dir(data: &Path) -> PathBuf {
    data.join("snapshots")
}
