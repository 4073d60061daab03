//! A scratch file for the coldest tier of a [`crate::memory::tiered::TieredMap`]: encoded entries
//! that have not changed for a while move here, and only where each one is stays in memory.
//!
//! Guarantees:
//! - The file is this process's own: it is created under a name no other file has and
//!   removed from its directory at once, so nothing else opens it and the system reclaims it
//!   when the process ends, however it ends.
//! - The file is created lazily, by the first append: a spill nothing leaves memory for holds
//!   no file descriptor. A failure to create it fails that append (and the next tries again).
//! - Records are only ever appended: a [`Spot`] handed out stays readable, with the same
//!   bytes, for as long as the `Spill` lives. Nothing is rewritten in place.
//! - Nothing is synced. The file is not durable and need not be: everything in it can be
//!   rebuilt from the event log, and a process that restarts makes a new one.
//! - A process that ends between creating its spill and removing the name leaves a file
//!   named `.spill-PID-N`. [`Spill::remove_leftovers`] removes those of other processes, and
//!   a new spill that meets one of its own name (a process before it had the same id)
//!   takes its place.
//! - Appending and reading take `&self`, so one spill can be shared behind an `Arc`; each
//!   append reserves its range first, so concurrent appends never overlap.
//!
//! Every read and write is fallible and reports its `io::Error`: the caller (the engine's
//! shell, never the pure core) decides what a failure means.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of a [`Spot`] that hold the offset: a spill holds at most 1 TiB.
const OFFSET_BITS: u32 = 40;

/// The largest file a spill grows to.
pub const SPILL_BYTES_MAX: u64 = 1 << OFFSET_BITS;

/// The largest record a spill takes (16 MiB less one byte); a larger one stays in memory.
pub const RECORD_BYTES_MAX: usize = (1 << (64 - OFFSET_BITS)) - 1;

/// Most bytes an append gathers before it writes them: a first spill after recovery moves
/// every encoded order at once, and must not copy them all into one buffer.
const WRITE_BYTES_MAX: usize = 8 << 20;

/// How every spill file's name begins; then the process id, a dash and a serial.
const SPILL_PREFIX: &str = ".spill-";

fn own_prefix() -> String {
    format!("{SPILL_PREFIX}{}-", std::process::id())
}

/// Removes `path`'s name; one already gone is as good.
fn forget_name(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        removed => removed,
    }
}

/// Where a record is in a spill: its offset and length packed in 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spot(u64);

impl Spot {
    fn new(offset: u64, len: usize) -> Spot {
        assert!(offset < SPILL_BYTES_MAX, "a spot's offset fits its bits");
        assert!(len <= RECORD_BYTES_MAX, "a spot's length fits its bits");
        Spot(offset | ((len as u64) << OFFSET_BITS))
    }

    /// Where the record starts.
    pub fn offset(self) -> u64 {
        self.0 & (SPILL_BYTES_MAX - 1)
    }

    /// The record's length in bytes.
    pub fn len(self) -> usize {
        (self.0 >> OFFSET_BITS) as usize
    }

    /// Whether the record is empty.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

/// An append-only scratch file. See the module documentation.
#[derive(Debug)]
pub struct Spill {
    /// Where the file is created, by the first append.
    dir: std::path::PathBuf,
    /// The file, once created.
    file: std::sync::OnceLock<File>,
    /// Held while the file is created.
    creating: std::sync::Mutex<()>,
    /// Bytes reserved so far: the next record starts here.
    end_bytes: AtomicU64,
}

impl Spill {
    /// A new, empty spill in `dir`. Its file is created, and removed from `dir` at once,
    /// by the first append; until then the spill holds no file descriptor.
    pub fn create_in(dir: &Path) -> io::Result<Spill> {
        Ok(Spill {
            dir: dir.to_path_buf(),
            file: std::sync::OnceLock::new(),
            creating: std::sync::Mutex::new(()),
            end_bytes: AtomicU64::new(0),
        })
    }

    /// The file, created in `dir` under a fresh name and removed at once if not yet.
    fn file(&self) -> io::Result<&File> {
        if let Some(file) = self.file.get() {
            return Ok(file);
        }
        let _creating = self.creating.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(file) = self.file.get() {
            return Ok(file);
        }
        static CREATED: AtomicU64 = AtomicU64::new(0);
        let serial = CREATED.fetch_add(1, Ordering::Relaxed);
        let file = Spill::create_named(&self.dir.join(format!("{}{serial}", own_prefix())))?;
        Ok(self.file.get_or_init(|| file))
    }

    /// A new, empty file at `path`, already removed. A file already there can only be
    /// left by an earlier process with this one's id (this process numbers its own), so it
    /// is removed and created anew, once.
    fn create_named(path: &Path) -> io::Result<File> {
        let create = || OpenOptions::new().read(true).write(true).create_new(true).open(path);
        let file = match create() {
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                forget_name(path)?;
                create()?
            }
            opened => opened?,
        };
        forget_name(path)?;
        Ok(file)
    }

    /// Whether the spill's file has been created (by a first append).
    pub fn has_file(&self) -> bool {
        self.file.get().is_some()
    }

    /// Removes the spill files other processes left in `dir` when they ended before
    /// removing their names; returns how many. A spill in use has no name, so none is
    /// touched, and one that another process is creating in `dir` only loses, a moment
    /// early, the name it was about to remove itself.
    pub fn remove_leftovers(dir: &Path) -> io::Result<usize> {
        let own = own_prefix();
        let mut removed = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(SPILL_PREFIX) && !name.starts_with(&own) && entry.file_type()?.is_file() {
                forget_name(&entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Bytes written so far, reclaimable or not.
    pub fn len_bytes(&self) -> u64 {
        self.end_bytes.load(Ordering::Acquire)
    }

    /// Appends `records`, written in pieces of at most 8 MiB (one write for a batch's worth),
    /// and returns where each one is, in order. On failure nothing handed out refers to the
    /// range: the records are not in the spill.
    pub fn append<'r>(&self, records: impl Iterator<Item = &'r [u8]> + Clone) -> io::Result<Vec<Spot>> {
        self.append_in_pieces(records, WRITE_BYTES_MAX)
    }

    fn append_in_pieces<'r>(
        &self,
        records: impl Iterator<Item = &'r [u8]> + Clone,
        piece_bytes_max: usize,
    ) -> io::Result<Vec<Spot>> {
        let total_bytes = records.clone().try_fold(0u64, |total, record| {
            (record.len() <= RECORD_BYTES_MAX).then(|| total.checked_add(record.len() as u64)).flatten()
        });
        let Some(total_bytes) = total_bytes else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a record is larger than a spill takes"));
        };
        if total_bytes == 0 {
            // Nothing to write: the spots of empty records, and no file needed.
            let at = self.len_bytes();
            return Ok(records.map(|_| Spot::new(at.min(SPILL_BYTES_MAX - 1), 0)).collect());
        }
        let file = self.file()?;
        let start = self.end_bytes.fetch_add(total_bytes, Ordering::AcqRel);
        if start.checked_add(total_bytes).is_none_or(|end| end > SPILL_BYTES_MAX) {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "the spill file is full"));
        }
        let mut buffer = Vec::with_capacity((total_bytes as usize).min(piece_bytes_max));
        let (mut spots, mut written) = (Vec::new(), start);
        for record in records {
            if !buffer.is_empty() && buffer.len() + record.len() > piece_bytes_max {
                file.write_all_at(&buffer, written)?;
                written += buffer.len() as u64;
                buffer.clear();
            }
            spots.push(Spot::new(written + buffer.len() as u64, record.len()));
            buffer.extend_from_slice(record);
        }
        file.write_all_at(&buffer, written)?;
        written += buffer.len() as u64;
        assert_eq!(written - start, total_bytes, "every record written in its range");
        Ok(spots)
    }

    /// The bytes of the record at `spot`.
    pub fn read(&self, spot: Spot) -> io::Result<Vec<u8>> {
        let end = spot.offset().checked_add(spot.len() as u64);
        if end.is_none_or(|end| end > self.len_bytes()) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a spot past the spill's end"));
        }
        let mut bytes = vec![0; spot.len()];
        if bytes.is_empty() {
            return Ok(bytes);
        }
        self.file()?.read_exact_at(&mut bytes, spot.offset())?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_as_written_and_the_file_has_no_name() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let spill = Spill::create_in(dir.path()).expect("spill");
        assert!(!spill.has_file(), "no file before the first append");
        assert!(spill.append(std::iter::empty()).expect("nothing appended").is_empty());
        assert!(!spill.has_file(), "nothing written, no file");
        let records: Vec<Vec<u8>> = (0..50u8).map(|n| vec![n; usize::from(n) * 7]).collect();
        let first = spill.append(records[..20].iter().map(Vec::as_slice)).expect("appended");
        assert!(spill.has_file(), "created by the first append");
        assert_eq!(std::fs::read_dir(dir.path()).expect("listed").count(), 0, "removed from its directory");
        let second = spill.append(records[20..].iter().map(Vec::as_slice)).expect("appended");
        let spots: Vec<Spot> = first.into_iter().chain(second).collect();
        assert_eq!(spots.len(), records.len());
        for (spot, record) in spots.iter().zip(&records) {
            assert_eq!(&spill.read(*spot).expect("read"), record);
        }
        let total: usize = records.iter().map(Vec::len).sum();
        assert_eq!(spill.len_bytes(), total as u64);
        assert!(spill.read(Spot::new(total as u64, 1)).is_err(), "nothing past the end");
    }

    /// Names left by ended processes go, whoever they were; other files stay; a leftover
    /// with this process's own name is replaced by the new spill.
    #[test]
    fn leftover_spill_files_are_removed_or_replaced() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let other = dir.path().join(format!("{SPILL_PREFIX}{}-3", std::process::id().wrapping_add(1)));
        let own = dir.path().join(format!("{}{}", own_prefix(), u64::MAX));
        let unrelated = dir.path().join("spill-notes.txt");
        for path in [&other, &own, &unrelated] {
            std::fs::write(path, b"left").expect("written");
        }
        assert_eq!(Spill::remove_leftovers(dir.path()).expect("listed"), 1);
        assert!(!other.exists() && own.exists() && unrelated.exists());
        let file = Spill::create_named(&own).expect("created over the leftover");
        assert!(!own.exists(), "the new spill has no name either");
        assert_eq!(file.metadata().expect("metadata").len(), 0);
        assert_eq!(Spill::remove_leftovers(dir.path()).expect("listed"), 0);
    }

    #[test]
    fn records_written_in_pieces_read_back_as_written() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let records: Vec<Vec<u8>> = (0..40u8).map(|n| vec![n; usize::from(n % 7) * 5 + 1]).collect();
        for piece_bytes_max in [1, 6, 31, 64, 10_000] {
            let spill = Spill::create_in(dir.path()).expect("spill");
            spill.append(std::iter::once(&b"before"[..])).expect("appended");
            let spots = spill.append_in_pieces(records.iter().map(Vec::as_slice), piece_bytes_max).expect("appended");
            for (spot, record) in spots.iter().zip(&records) {
                assert_eq!(&spill.read(*spot).expect("read"), record, "pieces of {piece_bytes_max}");
            }
            let total: usize = records.iter().map(Vec::len).sum::<usize>() + 6;
            assert_eq!(spill.len_bytes(), total as u64);
        }
    }

    #[test]
    fn a_spot_packs_offset_and_length() {
        for (offset, len) in [(0, 0), (1, 1), (SPILL_BYTES_MAX - 1, RECORD_BYTES_MAX), (12_345, 678)] {
            let spot = Spot::new(offset, len);
            assert_eq!((spot.offset(), spot.len()), (offset, len));
        }
    }
}
