//! emporium-snapshots: the snapshot store.
//!
//! A snapshot is a versioned, checksummed image of some state and the log position it
//! reflects, so that start-up replays only the tail of a log. This crate knows nothing
//! about shops: it stores bytes that its callers encode (`emporium` uses this crate, never
//! the reverse).
//!
//! # Guarantees
//!
//! - **Durable when [`SnapshotStore::save`] returns `Ok`.** The file's contents are fsynced
//!   before it is renamed into place, and the directory is fsynced after the rename, so a
//!   crash or power loss after `save` returns cannot lose the snapshot.
//! - **Written in pieces.** The state is written 8 MiB at a time, each piece synced before
//!   the next, so that saving a large snapshot does not hold up other syncs on the disk.
//! - **Atomic.** A snapshot appears under its final name whole or not at all: it is
//!   written to a temporary file in the same directory and renamed over the final name.
//!   Saving at a position that already has a file replaces that file atomically; a crash
//!   mid-save leaves the old file (or none) and, at worst, a temporary file that is ignored.
//! - **Corrupt files are never trusted.** Every file is checked (magic, format version,
//!   exact length, checksum, position against its name) before it is returned. A truncated,
//!   corrupt or foreign file is skipped and reported in [`Loaded::skipped`], and loading
//!   falls back to the next older one. No file content can make the store panic or allocate
//!   more than the file's size.
//! - **Schema versions never mix.** A load asks for one schema version and only returns a
//!   snapshot written with exactly that version; the others are skipped, and the caller
//!   rebuilds from the log.
//! - **Bounded.** After each save only the newest `keep` snapshot files (by position) are
//!   kept. Temporary files neither count toward `keep` nor are deleted by it.
//!
//! Not guaranteed: a failed `save` may leave the previous files in place and a temporary
//! file behind; an `Err` from `save` after the rename (directory fsync or pruning) means the
//! new snapshot may already be in place. One writer per directory is expected; concurrent
//! readers are safe (they see each file either before or after a rename, never half of it).
//!
//! # File format
//!
//! All integers are little-endian.
//!
//! | offset | size        | field                                   |
//! |--------|-------------|-----------------------------------------|
//! | 0      | 8           | magic `b"EMPSNAP\0"`                    |
//! | 8      | 2           | format version, `u16` (= 1)             |
//! | 10     | 4           | schema version of the writer, `u32`     |
//! | 14     | 8           | log position the state reflects, `u64`  |
//! | 22     | 8           | `state_len`, `u64`                      |
//! | 30     | `state_len` | state bytes, opaque to this crate       |
//! | 30 + `state_len` | 4 | CRC32 (IEEE) of every byte before it, `u32` |
//!
//! A file is valid only if its length is exactly `30 + state_len + 4`. Snapshot files are
//! named `snapshot-{position:020}.snap`, so that name order is position order; temporary
//! files are named `.snapshot-{position:020}.tmp-{pid}-{counter}` and, like every other
//! name, are ignored by [`SnapshotStore::list`] and the loads.

#![deny(missing_docs)]

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const MAGIC: [u8; 8] = *b"EMPSNAP\0";
const FORMAT_VERSION: u16 = 1;

const OFFSET_FORMAT_VERSION: usize = 8;
const OFFSET_SCHEMA_VERSION: usize = 10;
const OFFSET_POSITION: usize = 14;
const OFFSET_STATE_LEN: usize = 22;
const HEADER_SIZE_BYTES: usize = 30;
const CHECKSUM_SIZE_BYTES: usize = 4;

const NAME_PREFIX: &str = "snapshot-";
const NAME_SUFFIX: &str = ".snap";
const NAME_POSITION_DIGITS: usize = 20;

const _: () = assert!(OFFSET_STATE_LEN + 8 == HEADER_SIZE_BYTES);
const _: () = assert!(u64::MAX.ilog10() + 1 == NAME_POSITION_DIGITS as u32);

/// Makes temporary file names unique within the process, across stores.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// An image of some state and where in the log it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The log position the state reflects: every fact up to and including it is folded in.
    pub position: u64,
    /// The schema version of the code that encoded `state`.
    pub schema_version: u32,
    /// The encoded state, opaque to this crate.
    pub state: Vec<u8>,
}

/// The result of a load: the snapshot found, if any, and the files passed over on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The newest valid snapshot of the requested schema version (within the bound), if any.
    pub snapshot: Option<Snapshot>,
    /// The files examined and rejected before it, newest first. Callers log them as warnings.
    pub skipped: Vec<Skipped>,
}

/// A snapshot file that a load examined and did not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why it was not used.
    pub reason: SkipReason,
}

/// Why a snapshot file was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The file is shorter than its header (or its header's `state_len`) requires.
    Truncated,
    /// The file is longer than its header's `state_len` allows.
    TrailingBytes,
    /// The file does not start with the snapshot magic.
    BadMagic,
    /// The file has a format version this build cannot read.
    UnknownFormat(u16),
    /// The checksum does not match the contents.
    ChecksumMismatch,
    /// The file is valid but was written with this schema version, not the one requested.
    OtherSchemaVersion(u32),
    /// The position in the header differs from the position in the file name.
    PositionMismatch,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Truncated => f.write_str("the file is shorter than its header requires, so it was cut off"),
            SkipReason::TrailingBytes => f.write_str("the file is longer than its header allows, so it is corrupt"),
            SkipReason::BadMagic => f.write_str("the file does not start with the snapshot magic bytes"),
            SkipReason::UnknownFormat(version) => {
                write!(f, "the file has format version {version}, which this build cannot read")
            }
            SkipReason::ChecksumMismatch => f.write_str("the checksum does not match the contents, so it is corrupt"),
            SkipReason::OtherSchemaVersion(version) => {
                write!(f, "the snapshot was written with schema version {version}, not the one requested")
            }
            SkipReason::PositionMismatch => {
                f.write_str("the position in the header differs from the position in the file name")
            }
        }
    }
}

/// A directory of snapshot files, keeping the newest `keep` of them.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
    keep: usize,
}

impl SnapshotStore {
    /// Opens the store in `dir`, creating the directory if needed. `keep` is how many of
    /// the newest snapshot files each [`save`](Self::save) leaves in place.
    ///
    /// # Panics
    ///
    /// If `keep` is zero: a store that keeps nothing is a programming error.
    pub fn open(dir: &Path, keep: usize) -> io::Result<SnapshotStore> {
        assert!(keep >= 1, "a snapshot store must keep at least one snapshot");
        fs::create_dir_all(dir)?;
        // Make the directory's own entry durable, in case it was just created.
        sync_dir(dir)?;
        if let Some(parent) = dir.parent() {
            sync_dir(if parent.as_os_str().is_empty() { Path::new(".") } else { parent })?;
        }
        Ok(SnapshotStore { dir: dir.to_path_buf(), keep })
    }

    /// The directory holding the snapshot files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many of the newest snapshot files each save leaves in place.
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// Writes `snapshot` atomically and durably, replacing any file at the same position,
    /// then deletes all but the newest `keep` snapshot files (by position). Returns the
    /// final path.
    ///
    /// The write goes to a temporary file in the same directory, which is written whole,
    /// fsynced, renamed to the final name; then the directory is fsynced. A snapshot older
    /// than the `keep` newest already present is deleted again by the pruning, so the
    /// returned path then no longer exists.
    pub fn save(&self, snapshot: &Snapshot) -> io::Result<PathBuf> {
        let final_path = self.dir.join(file_name(snapshot.position));
        let counter = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp_name = format!(".{NAME_PREFIX}{:020}.tmp-{}-{counter}", snapshot.position, std::process::id());
        let temp_path = self.dir.join(temp_name);

        let written = write_synced(&temp_path, snapshot).and_then(|()| fs::rename(&temp_path, &final_path));
        if let Err(error) = written {
            // Best effort: a leftover temporary file is ignored by every reader anyway, and
            // the write error is the one worth reporting.
            let _ = fs::remove_file(&temp_path);
            return Err(error);
        }
        sync_dir(&self.dir)?;
        self.prune()?;
        Ok(final_path)
    }

    /// The newest valid snapshot written with exactly `schema_version`, and the newer files
    /// that were skipped on the way, with the reason.
    pub fn load_newest(&self, schema_version: u32) -> io::Result<Loaded> {
        self.load_newest_at_most(schema_version, u64::MAX)
    }

    /// The newest valid snapshot written with exactly `schema_version` whose position is at
    /// most `max_position`, and the files within the bound that were skipped on the way.
    /// Files above the bound are not examined and not reported.
    pub fn load_newest_at_most(&self, schema_version: u32, max_position: u64) -> io::Result<Loaded> {
        let mut skipped = Vec::new();
        for (path, name_position) in self.list()?.into_iter().rev() {
            if name_position > max_position {
                continue;
            }
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                // Pruned by a save between listing and reading: it was older anyway.
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            match decode(bytes, name_position) {
                Ok(snapshot) if snapshot.schema_version == schema_version => {
                    debug_assert!(snapshot.position <= max_position);
                    return Ok(Loaded { snapshot: Some(snapshot), skipped });
                }
                Ok(snapshot) => {
                    skipped.push(Skipped { path, reason: SkipReason::OtherSchemaVersion(snapshot.schema_version) })
                }
                Err(reason) => skipped.push(Skipped { path, reason }),
            }
        }
        Ok(Loaded { snapshot: None, skipped })
    }

    /// The snapshot files present, oldest first, with the position in their name. Their
    /// contents are not checked; temporary files and other names are left out.
    pub fn list(&self) -> io::Result<Vec<(PathBuf, u64)>> {
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(position) = entry.file_name().to_str().and_then(parse_file_name) else {
                continue;
            };
            if entry.file_type()?.is_dir() {
                continue;
            }
            files.push((entry.path(), position));
        }
        files.sort_unstable_by_key(|&(_, position)| position);
        // One name per position, so positions are strictly increasing.
        debug_assert!(files.windows(2).all(|pair| pair[0].1 < pair[1].1));
        Ok(files)
    }

    /// Deletes all but the newest `keep` snapshot files.
    fn prune(&self) -> io::Result<()> {
        let files = self.list()?;
        let excess_count = files.len().saturating_sub(self.keep);
        for (path, _) in &files[..excess_count] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        if excess_count > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// The final file name of the snapshot at `position`.
fn file_name(position: u64) -> String {
    format!("{NAME_PREFIX}{position:020}{NAME_SUFFIX}")
}

/// The position in a snapshot file name, or `None` if `name` is not one.
fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(NAME_PREFIX)?.strip_suffix(NAME_SUFFIX)?;
    if digits.len() != NAME_POSITION_DIGITS || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    // Twenty digits can exceed u64::MAX: such a name is not one this crate writes.
    digits.parse().ok()
}

fn encode_header(snapshot: &Snapshot) -> [u8; HEADER_SIZE_BYTES] {
    let mut header = [0u8; HEADER_SIZE_BYTES];
    header[..OFFSET_FORMAT_VERSION].copy_from_slice(&MAGIC);
    header[OFFSET_FORMAT_VERSION..OFFSET_SCHEMA_VERSION].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[OFFSET_SCHEMA_VERSION..OFFSET_POSITION].copy_from_slice(&snapshot.schema_version.to_le_bytes());
    header[OFFSET_POSITION..OFFSET_STATE_LEN].copy_from_slice(&snapshot.position.to_le_bytes());
    header[OFFSET_STATE_LEN..].copy_from_slice(&(snapshot.state.len() as u64).to_le_bytes());
    header
}

/// A snapshot's state is written this much at a time, each piece synced before the next.
const WRITE_PIECE_BYTES: usize = 8 << 20;

/// Creates `path` (which must not exist), writes the encoded snapshot, and fsyncs it.
fn write_synced(path: &Path, snapshot: &Snapshot) -> io::Result<()> {
    write_synced_in_pieces(path, snapshot, WRITE_PIECE_BYTES)
}

/// [`write_synced`], `piece_bytes` of state at a time, each piece synced: a large snapshot
/// never leaves hundreds of megabytes dirty for one final sync to push out at once, which
/// anything else syncing on the same disk (a log) would wait behind.
fn write_synced_in_pieces(path: &Path, snapshot: &Snapshot, piece_bytes: usize) -> io::Result<()> {
    assert!(piece_bytes > 0, "pieces hold something");
    let header = encode_header(snapshot);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header);
    hasher.update(&snapshot.state);
    let checksum = hasher.finalize();

    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(&header)?;
    for piece in snapshot.state.chunks(piece_bytes) {
        file.write_all(piece)?;
        file.sync_data()?;
    }
    file.write_all(&checksum.to_le_bytes())?;
    file.sync_all()
}

fn le_bytes<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[offset..offset + N]);
    out
}

/// Checks and decodes a whole snapshot file named for `name_position`. The schema version
/// is not checked here: that is the caller's choice.
fn decode(mut bytes: Vec<u8>, name_position: u64) -> Result<Snapshot, SkipReason> {
    let file_size_bytes = bytes.len();
    let magic_size_bytes = file_size_bytes.min(MAGIC.len());
    if bytes[..magic_size_bytes] != MAGIC[..magic_size_bytes] {
        return Err(SkipReason::BadMagic);
    }
    if file_size_bytes < OFFSET_SCHEMA_VERSION {
        return Err(SkipReason::Truncated);
    }
    let format_version = u16::from_le_bytes(le_bytes(&bytes, OFFSET_FORMAT_VERSION));
    if format_version != FORMAT_VERSION {
        return Err(SkipReason::UnknownFormat(format_version));
    }
    if file_size_bytes < HEADER_SIZE_BYTES {
        return Err(SkipReason::Truncated);
    }
    let schema_version = u32::from_le_bytes(le_bytes(&bytes, OFFSET_SCHEMA_VERSION));
    let position = u64::from_le_bytes(le_bytes(&bytes, OFFSET_POSITION));
    let state_len = u64::from_le_bytes(le_bytes(&bytes, OFFSET_STATE_LEN));

    // Compare in u64, before trusting state_len with anything: it may be huge.
    let body_size_bytes = (file_size_bytes - HEADER_SIZE_BYTES) as u64;
    let Some(expected_body_size_bytes) = state_len.checked_add(CHECKSUM_SIZE_BYTES as u64) else {
        return Err(SkipReason::Truncated);
    };
    if expected_body_size_bytes > body_size_bytes {
        return Err(SkipReason::Truncated);
    }
    if expected_body_size_bytes < body_size_bytes {
        return Err(SkipReason::TrailingBytes);
    }
    let checksum_offset = file_size_bytes - CHECKSUM_SIZE_BYTES;
    debug_assert_eq!(checksum_offset as u64, HEADER_SIZE_BYTES as u64 + state_len);
    let checksum = u32::from_le_bytes(le_bytes(&bytes, checksum_offset));
    if crc32fast::hash(&bytes[..checksum_offset]) != checksum {
        return Err(SkipReason::ChecksumMismatch);
    }
    if position != name_position {
        return Err(SkipReason::PositionMismatch);
    }

    bytes.truncate(checksum_offset);
    bytes.drain(..HEADER_SIZE_BYTES);
    Ok(Snapshot { position, schema_version, state: bytes })
}

/// Makes the directory's entries (creations, renames, removals) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        // Directories cannot be opened for fsync here; renames are durable per the OS.
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    fn store(keep: usize) -> (TempDir, SnapshotStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), keep).unwrap();
        (dir, store)
    }

    fn snap(position: u64, schema_version: u32, state: &[u8]) -> Snapshot {
        Snapshot { position, schema_version, state: state.to_vec() }
    }

    fn positions(store: &SnapshotStore) -> Vec<u64> {
        store.list().unwrap().into_iter().map(|(_, position)| position).collect()
    }

    fn state_for(position: u64) -> Vec<u8> {
        (0..16u8).map(|i| i.wrapping_mul(31).wrapping_add(position as u8)).collect()
    }

    /// A store holding a valid snapshot at 10 and another at 20 (schema 1), and the path of 20.
    fn two_snapshots() -> (TempDir, SnapshotStore, PathBuf) {
        let (dir, store) = store(5);
        store.save(&snap(10, 1, &state_for(10))).unwrap();
        let newest = store.save(&snap(20, 1, &state_for(20))).unwrap();
        (dir, store, newest)
    }

    fn dir_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }

    #[test]
    fn round_trip() {
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let cases =
            [snap(0, 0, b""), snap(1, 1, b"x"), snap(42, 7, b"some opaque state"), snap(u64::MAX, u32::MAX, &big)];
        for snapshot in cases {
            let (dir, store) = store(1);
            let path = store.save(&snapshot).unwrap();
            assert_eq!(path, dir.path().join(format!("snapshot-{:020}.snap", snapshot.position)));
            let size_bytes = fs::metadata(&path).unwrap().len();
            assert_eq!(size_bytes, (HEADER_SIZE_BYTES + snapshot.state.len() + CHECKSUM_SIZE_BYTES) as u64);
            let loaded = store.load_newest(snapshot.schema_version).unwrap();
            assert_eq!(loaded, Loaded { snapshot: Some(snapshot.clone()), skipped: vec![] });
            // Nothing but the final file is left behind.
            assert_eq!(dir_names(dir.path()), vec![file_name(snapshot.position)]);
        }
    }

    #[test]
    fn a_file_written_in_pieces_is_the_file_written_at_once() {
        let state: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let snapshot = snap(7, 3, &state);
        let dir = tempfile::tempdir().unwrap();
        let whole = dir.path().join("whole");
        write_synced_in_pieces(&whole, &snapshot, usize::MAX).unwrap();
        for piece_bytes in [1, 999, 4096, 10_000, 10_001] {
            let path = dir.path().join(format!("pieces-{piece_bytes}"));
            write_synced_in_pieces(&path, &snapshot, piece_bytes).unwrap();
            assert_eq!(fs::read(&path).unwrap(), fs::read(&whole).unwrap(), "pieces of {piece_bytes}");
        }
    }

    #[test]
    fn file_layout_is_the_documented_one() {
        let (_dir, store) = store(1);
        let path = store.save(&snap(0x0102_0304_0506_0708, 0x0A0B_0C0D, b"hi")).unwrap();
        let bytes = fs::read(path).unwrap();
        let mut expected = Vec::new();
        expected.extend_from_slice(b"EMPSNAP\0");
        expected.extend_from_slice(&[1, 0]);
        expected.extend_from_slice(&[0x0D, 0x0C, 0x0B, 0x0A]);
        expected.extend_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1]);
        expected.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(b"hi");
        let checksum = crc32fast::hash(&expected);
        expected.extend_from_slice(&checksum.to_le_bytes());
        assert_eq!(bytes, expected);
    }

    #[test]
    fn keeps_the_newest_n() {
        let cases: [(usize, &[u64], &[u64]); 5] = [
            (2, &[10, 20, 30, 40], &[30, 40]),
            (1, &[10, 20, 30, 40], &[40]),
            (4, &[10, 20, 30, 40], &[10, 20, 30, 40]),
            (2, &[40, 10, 30, 20], &[30, 40]),
            // A save below the kept ones is pruned straight away.
            (2, &[30, 40, 10], &[30, 40]),
        ];
        for (keep, saved, remaining) in cases {
            let (_dir, store) = store(keep);
            for &position in saved {
                store.save(&snap(position, 1, &state_for(position))).unwrap();
            }
            assert_eq!(positions(&store), remaining, "keep {keep}, saved {saved:?}");
            let newest = *remaining.last().unwrap();
            let loaded = store.load_newest(1).unwrap();
            assert_eq!(loaded.snapshot, Some(snap(newest, 1, &state_for(newest))));
            assert!(loaded.skipped.is_empty());
        }
    }

    #[test]
    fn saving_at_an_existing_position_replaces_the_file() {
        let (dir, store) = store(3);
        store.save(&snap(10, 1, b"old")).unwrap();
        store.save(&snap(10, 1, b"new and longer")).unwrap();
        assert_eq!(positions(&store), vec![10]);
        assert_eq!(store.load_newest(1).unwrap().snapshot, Some(snap(10, 1, b"new and longer")));
        assert_eq!(dir_names(dir.path()), vec![file_name(10)]);
    }

    #[test]
    fn truncated_newest_falls_back_to_the_older() {
        let total_size_bytes = HEADER_SIZE_BYTES + 16 + CHECKSUM_SIZE_BYTES;
        let cut_sizes_bytes = [
            0,
            3,                                      // inside the magic
            9,                                      // inside the format version
            12,                                     // inside the schema version
            HEADER_SIZE_BYTES - 1,                  // inside state_len
            HEADER_SIZE_BYTES,                      // header only
            HEADER_SIZE_BYTES + 5,                  // inside the state
            total_size_bytes - CHECKSUM_SIZE_BYTES, // checksum missing
            total_size_bytes - 1,                   // checksum cut
        ];
        for cut_size_bytes in cut_sizes_bytes {
            let (_dir, store, newest) = two_snapshots();
            assert_eq!(fs::metadata(&newest).unwrap().len(), total_size_bytes as u64);
            OpenOptions::new().write(true).open(&newest).unwrap().set_len(cut_size_bytes as u64).unwrap();
            let loaded = store.load_newest(1).unwrap();
            assert_eq!(loaded.snapshot, Some(snap(10, 1, &state_for(10))), "cut at {cut_size_bytes}");
            assert_eq!(loaded.skipped, vec![Skipped { path: newest, reason: SkipReason::Truncated }]);
        }
    }

    #[test]
    fn bit_flip_in_the_newest_is_never_trusted() {
        let total_size_bytes = HEADER_SIZE_BYTES + 16 + CHECKSUM_SIZE_BYTES;
        let cases: [(usize, u8, SkipReason); 12] = [
            (0, 0x01, SkipReason::BadMagic),
            (7, 0x80, SkipReason::BadMagic),
            (OFFSET_FORMAT_VERSION, 0x01, SkipReason::UnknownFormat(0)),
            (OFFSET_FORMAT_VERSION + 1, 0x80, SkipReason::UnknownFormat(0x8001)),
            (OFFSET_SCHEMA_VERSION, 0x01, SkipReason::ChecksumMismatch),
            (OFFSET_POSITION, 0x01, SkipReason::ChecksumMismatch),
            (OFFSET_POSITION + 7, 0x80, SkipReason::ChecksumMismatch),
            // state_len 16 becomes 17: longer than the file.
            (OFFSET_STATE_LEN, 0x01, SkipReason::Truncated),
            // state_len 16 becomes 0: shorter than the file.
            (OFFSET_STATE_LEN, 0x10, SkipReason::TrailingBytes),
            // state_len becomes ~2^63: rejected without allocating it.
            (OFFSET_STATE_LEN + 7, 0x80, SkipReason::Truncated),
            (HEADER_SIZE_BYTES + 3, 0x04, SkipReason::ChecksumMismatch),
            (total_size_bytes - 1, 0x80, SkipReason::ChecksumMismatch),
        ];
        for (offset, mask, reason) in cases {
            let (_dir, store, newest) = two_snapshots();
            let mut bytes = fs::read(&newest).unwrap();
            assert_eq!(bytes.len(), total_size_bytes);
            bytes[offset] ^= mask;
            fs::write(&newest, &bytes).unwrap();
            let loaded = store.load_newest(1).unwrap();
            assert_eq!(loaded.snapshot, Some(snap(10, 1, &state_for(10))), "flip at {offset}");
            assert_eq!(loaded.skipped, vec![Skipped { path: newest, reason }], "flip at {offset}");
        }
    }

    #[test]
    fn trailing_bytes_are_not_trusted() {
        let (_dir, store, newest) = two_snapshots();
        let mut bytes = fs::read(&newest).unwrap();
        bytes.push(0);
        fs::write(&newest, &bytes).unwrap();
        let loaded = store.load_newest(1).unwrap();
        assert_eq!(loaded.snapshot.map(|s| s.position), Some(10));
        assert_eq!(loaded.skipped, vec![Skipped { path: newest, reason: SkipReason::TrailingBytes }]);
    }

    #[test]
    fn a_file_under_another_position_name_is_not_trusted() {
        let (dir, store, newest) = two_snapshots();
        let renamed = dir.path().join(file_name(30));
        fs::copy(&newest, &renamed).unwrap();
        let loaded = store.load_newest(1).unwrap();
        assert_eq!(loaded.snapshot, Some(snap(20, 1, &state_for(20))));
        assert_eq!(loaded.skipped, vec![Skipped { path: renamed, reason: SkipReason::PositionMismatch }]);
    }

    #[test]
    fn other_schema_versions_are_skipped() {
        let (_dir, store) = store(5);
        let older = store.save(&snap(10, 1, b"v1")).unwrap();
        let newer = store.save(&snap(20, 2, b"v2")).unwrap();

        let loaded = store.load_newest(1).unwrap();
        assert_eq!(loaded.snapshot, Some(snap(10, 1, b"v1")));
        assert_eq!(loaded.skipped, vec![Skipped { path: newer.clone(), reason: SkipReason::OtherSchemaVersion(2) }]);

        let loaded = store.load_newest(2).unwrap();
        assert_eq!(loaded, Loaded { snapshot: Some(snap(20, 2, b"v2")), skipped: vec![] });

        let loaded = store.load_newest(3).unwrap();
        assert_eq!(loaded.snapshot, None);
        assert_eq!(
            loaded.skipped,
            vec![
                Skipped { path: newer, reason: SkipReason::OtherSchemaVersion(2) },
                Skipped { path: older, reason: SkipReason::OtherSchemaVersion(1) },
            ]
        );
    }

    #[test]
    fn temporary_and_foreign_files_are_ignored() {
        let (dir, store) = store(2);
        store.save(&snap(10, 1, &state_for(10))).unwrap();
        let newest = store.save(&snap(20, 1, &state_for(20))).unwrap();

        // A leftover temporary file holding a perfectly valid, newer snapshot.
        let temp = dir.path().join(format!(".snapshot-{:020}.tmp-1-1", 30u64));
        fs::copy(&newest, &temp).unwrap();
        let half_written = dir.path().join(format!(".snapshot-{:020}.tmp-1-2", 40u64));
        fs::write(&half_written, b"EMPSNAP").unwrap();
        let foreign = [
            dir.path().join("notes.txt"),
            dir.path().join("snapshot-30.snap"),
            dir.path().join("snapshot-99999999999999999999.snap"),
            dir.path().join(format!("snapshot-{:020}.snap.bak", 50u64)),
        ];
        for path in &foreign {
            fs::write(path, b"junk").unwrap();
        }
        fs::create_dir(dir.path().join(file_name(60))).unwrap();

        assert_eq!(positions(&store), vec![10, 20]);
        let loaded = store.load_newest(1).unwrap();
        assert_eq!(loaded, Loaded { snapshot: Some(snap(20, 1, &state_for(20))), skipped: vec![] });

        // Saving with keep = 2 prunes real snapshots only: the temporary files neither count
        // nor get deleted.
        store.save(&snap(25, 1, &state_for(25))).unwrap();
        assert_eq!(positions(&store), vec![20, 25]);
        assert!(temp.exists() && half_written.exists());
        assert!(foreign.iter().all(|path| path.exists()));
    }

    #[test]
    fn load_newest_at_most_respects_the_bound() {
        let (_dir, store) = store(5);
        for position in [10, 20, 30] {
            store.save(&snap(position, 1, &state_for(position))).unwrap();
        }
        let cases: [(u64, Option<u64>); 8] = [
            (0, None),
            (9, None),
            (10, Some(10)),
            (19, Some(10)),
            (20, Some(20)),
            (25, Some(20)),
            (30, Some(30)),
            (u64::MAX, Some(30)),
        ];
        for (max_position, expected) in cases {
            let loaded = store.load_newest_at_most(1, max_position).unwrap();
            let expected = expected.map(|position| snap(position, 1, &state_for(position)));
            assert_eq!(loaded, Loaded { snapshot: expected, skipped: vec![] }, "bound {max_position}");
        }

        // A corrupt file within the bound is skipped and reported; one above it is not looked at.
        let path_20 = store.dir().join(file_name(20));
        let path_30 = store.dir().join(file_name(30));
        fs::write(&path_20, b"garbage").unwrap();
        fs::write(&path_30, b"garbage").unwrap();
        let loaded = store.load_newest_at_most(1, 25).unwrap();
        assert_eq!(loaded.snapshot, Some(snap(10, 1, &state_for(10))));
        assert_eq!(loaded.skipped, vec![Skipped { path: path_20, reason: SkipReason::BadMagic }]);
    }

    #[test]
    fn empty_directory_loads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a").join("b");
        let store = SnapshotStore::open(&nested, 3).unwrap();
        assert!(nested.is_dir());
        assert_eq!(store.list().unwrap(), vec![]);
        assert_eq!(store.load_newest(1).unwrap(), Loaded { snapshot: None, skipped: vec![] });
        assert_eq!(store.load_newest_at_most(1, 0).unwrap(), Loaded { snapshot: None, skipped: vec![] });
    }

    #[test]
    #[should_panic(expected = "at least one")]
    fn keep_zero_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _ = SnapshotStore::open(dir.path(), 0);
    }

    #[test]
    fn file_names_parse_back() {
        for position in [0, 1, 10, u64::MAX] {
            assert_eq!(parse_file_name(&file_name(position)), Some(position));
        }
        for name in ["snapshot-1.snap", "snapshot-+0000000000000000001.snap", "snapshot-00000000000000000001.tmp"] {
            assert_eq!(parse_file_name(name), None, "{name}");
        }
    }

    #[test]
    fn skip_reasons_read_as_distinct_sentences() {
        let reasons = [
            SkipReason::Truncated,
            SkipReason::TrailingBytes,
            SkipReason::BadMagic,
            SkipReason::UnknownFormat(9),
            SkipReason::ChecksumMismatch,
            SkipReason::OtherSchemaVersion(4),
            SkipReason::PositionMismatch,
        ];
        let texts: Vec<String> = reasons.iter().map(ToString::to_string).collect();
        for (index, text) in texts.iter().enumerate() {
            assert!(text.starts_with("the "), "{text}");
            assert!(!texts[..index].contains(text), "{text} repeats");
        }
        assert!(texts[3].contains('9') && texts[5].contains('4'));
    }
}
