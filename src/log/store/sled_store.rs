//! The embedded default: every shop log in one sled database.
//!
//! On disk, each shop is a sled tree named `shop/<id>` holding, by key prefix:
//! - `e` + first position (u64 big-endian): a chunk of consecutive records (see
//!   [`crate::log::record`]) of at most 64 KiB. One group commit writes one chunk or a few, so the
//!   cost per event is a share of one sled value, not a sled key.
//! - `q` + group number (u64 big-endian): the rejections one group commit remembered, as one
//!   value (`crc32 u32 LE | postcard(Vec<RejectionRecord>)`): a promotion day refuses more
//!   orders than it accepts, and one sled key per refusal cost more than the events' chunks.
//!   The oldest groups are removed when the engine forgets their refusals for its bound
//!   (`forget_rejections`).
//! - `r` + command id: a remembered rejection written by earlier versions, one per key
//!   (`crc32 u32 LE | postcard(RejectionRecord)`); still read, no longer written.
//! - `s` + stream + `0x00` + stream version (u64 big-endian): the position of that event.
//!   This index is derived from the chunks, written lazily when a stream is read, and its
//!   high-water mark is `h`. It is never on the acknowledgement path and is rebuilt from
//!   the chunks if lost.
//!
//! Durability: an append is one atomic `apply_batch` on the shop's tree, then `flush`, then
//! `fsync` (`File::sync_all`) of the database files and directories: the log file `db`
//! each time, every other file and directory whenever it is new or changed since its last
//! fsync (see `Syncer`). sled's `flush` alone uses `sync_file_range`, which flushes neither
//! the device cache nor file metadata; the fsyncs do. Only then does `append` return.
//!
//! A failed write or sync fails the store: what reached the disk is then unknown (the
//! kernel may drop pages it could not write, and a later fsync would report success), while
//! sled already holds the batch in memory (or, when its own write failed, refuses every
//! later one). So every later append is refused, naming the failure, until the store heals
//! ([`EventStore::heal`]): every handle on the database is dropped, the cached pages of its
//! files are dropped too, and the database is opened again, reading the files back from the
//! disk; every file and directory is fsynced; and every shop's log end is read back and
//! checked: a log that ends before its last acknowledged position refuses to heal. A batch
//! whose sync failed may be found on disk then: it is durable from that moment, and the
//! engine rebuilds its state from the log as it is. Meanwhile reads stop at the last durable
//! position, so nothing reads a batch that was never acknowledged.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::ids::ShopId;
use crate::log::record::{self, Envelope, Hash};

use super::chunks::{self, Head, ShopLog};
use super::{AppendBatch, EventStore, RejectionRecord, StoreError, VerifyReport};

const CHUNK: u8 = b'e';
const REJECTION: u8 = b'r';
const REJECTION_GROUP: u8 = b'q';
const STREAM: u8 = b's';
const INDEX_HIGH_WATER: u8 = b'h';
const TREE_PREFIX: &str = "shop/";

/// Chunks of a shop's log, read in order.
type Chunks = Box<dyn Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + Send>;

/// Shop logs in a sled database directory.
pub struct SledStore {
    /// `None` while the store heals and the database is being opened again.
    db: std::sync::RwLock<Option<sled::Db>>,
    dir: PathBuf,
    syncer: Arc<Mutex<Syncer>>,
    /// Set by the first failed write or sync: until the store heals, every append is
    /// refused with it.
    sync_failed: Arc<Mutex<Option<StoreError>>>,
    shops: Mutex<BTreeMap<ShopId, Arc<Shop>>>,
    /// Serialises healing.
    healing: tokio::sync::Mutex<()>,
}

struct Shop {
    /// `None` while the store heals.
    tree: std::sync::RwLock<Option<sled::Tree>>,
    log: ShopLog,
    /// Set when the log's end could not be read at open: appends are refused.
    broken: Mutex<Option<StoreError>>,
    /// Serialises catching the stream index up.
    index: tokio::sync::Mutex<()>,
    /// The number the next group of rejections is stored under; taken under the head lock.
    rejection_group_next: std::sync::atomic::AtomicU64,
}

fn io_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Io(error.to_string())
}

fn reopening() -> StoreError {
    StoreError::Io("the database is being opened again after a failure".to_owned())
}

impl Shop {
    /// The shop's sled tree; an error while the store heals.
    fn tree(&self) -> Result<sled::Tree, StoreError> {
        self.tree.read().unwrap_or_else(PoisonError::into_inner).clone().ok_or_else(reopening)
    }

    /// Why the shop's log takes no appends, if it does not.
    fn broken(&self) -> Option<StoreError> {
        self.broken.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Where a shop's log ends as its tree holds it: the head (the empty log's, with the error,
/// when the last chunk does not decode) and the number of the next rejection group.
fn read_end(shop_id: &ShopId, tree: &sled::Tree) -> Result<(Head, Option<StoreError>, u64), StoreError> {
    let last = tree.range(chunk_key(0)..=chunk_key(u64::MAX)).next_back().transpose().map_err(io_error)?;
    let last = match last {
        Some((key, value)) => Some((position_of_key(&key)?, value.to_vec())),
        None => None,
    };
    // A log whose end does not decode still opens, so that verification can name the
    // first bad record; it takes no appends.
    let (head, broken) = match chunks::head_of(shop_id, last) {
        Ok(head) => (head, None),
        Err(error) => (chunks::Head { last_position: 0, hash: record::genesis_hash(shop_id) }, Some(error)),
    };
    let last_group = tree.scan_prefix([REJECTION_GROUP]).next_back().transpose().map_err(io_error)?;
    let rejection_group_next = match last_group {
        Some((key, _)) => {
            position_of_key(&key)?.checked_add(1).ok_or_else(|| io_error("rejection groups exhausted"))?
        }
        None => 0,
    };
    Ok((head, broken, rejection_group_next))
}

/// Opens the sled database in `dir`, with the segment size it was created with.
fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    let segment_bytes = persisted_segment_bytes(dir).map_err(io_error)?.unwrap_or(SEGMENT_BYTES);
    let config = sled::Config::new().path(dir).cache_capacity(CACHE_BYTES).segment_size(segment_bytes);
    config.open().map_err(|e| {
        let file = dir.join(LOG_FILE);
        StoreError::Io(format!("sled cannot read its database file {} (damaged or cut short?): {e}", file.display()))
    })
}

/// Asks the kernel to drop the cached pages of the database's top-level files, so that
/// opening it again reads what the disk holds rather than pages that could not be written
/// (which the kernel may keep, marked clean, after a failed writeback). Only advice: a
/// failure leaves the cache as it is.
fn drop_cached_pages(dir: &Path) {
    use std::os::fd::AsRawFd;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|kind| kind.is_file())
            && let Ok(file) = File::open(entry.path())
        {
            // SAFETY: the descriptor is open for the call; the advice reads no memory.
            let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
    }
}

/// A key of one prefix byte and a number, big-endian so that keys sort by number.
fn numbered_key(prefix: u8, number: u64) -> [u8; 9] {
    let mut key = [prefix; 9];
    key[1..].copy_from_slice(&number.to_be_bytes());
    key
}

fn chunk_key(position: u64) -> [u8; 9] {
    numbered_key(CHUNK, position)
}

/// The number of a [`numbered_key`].
fn position_of_key(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] =
        key.get(1..9).and_then(|b| b.try_into().ok()).ok_or_else(|| io_error("malformed numbered key"))?;
    Ok(u64::from_be_bytes(bytes))
}

fn stream_key(stream: &str, version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 10);
    key.push(STREAM);
    key.extend_from_slice(stream.as_bytes());
    key.push(0);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// sled's page cache. The log is written once and read back mostly at its end (the views
/// follow it, recovery reads it once), so a small cache loses little; sled's default of
/// 1 GiB would be most of a rehearsal's memory.
pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// The size of sled's log segments in a new database.
///
/// sled writes a tree node as a separate blob file once it outgrows a quarter of a segment,
/// and a leaf of sixteen 64 KiB chunks does. With sled's default of 512 KiB, a promotion
/// day created a blob file every other group commit, each to be fsynced with its directory
/// and listed again on every sync. At 8 MiB a node never becomes a blob. sled cannot
/// change the size of an existing database, so one created with another size keeps it.
pub const SEGMENT_BYTES: usize = 8 << 20;

/// The segment size recorded in the `conf` file of an existing database in `dir`; `None`
/// for a new database.
fn persisted_segment_bytes(dir: &Path) -> io::Result<Option<usize>> {
    let conf = match std::fs::read(dir.join("conf")) {
        Ok(conf) => conf,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    // Text lines (`segment_size: N`, ...) then a checksum, which sled itself checks.
    let text = String::from_utf8_lossy(&conf);
    let value = text.lines().find_map(|line| line.strip_prefix("segment_size: "));
    match value.map(str::parse::<usize>) {
        Some(Ok(bytes)) => Ok(Some(bytes)),
        // Let sled open it and report what is wrong with it.
        Some(Err(_)) | None => Ok(None),
    }
}

/// The length of the header sled begins each log segment with.
const SEGMENT_HEADER_BYTES: usize = 20;

/// How long [`SledStore::open`] waits for the database's lock to be released.
pub const LOCK_WAIT_MS: u64 = 2_000;

impl SledStore {
    /// Opens (creating if needed) the database in `dir` and finds where every shop log ends.
    ///
    /// sled locks the database file while it is open and releases the lock from background
    /// work shortly after the last handle is dropped, so a store closed and reopened in one
    /// process may find it still held: `open` waits up to [`LOCK_WAIT_MS`] for the lock, then
    /// fails, naming the directory, if another process (or a store still open) holds it.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
        if !wait_until_unlocked(dir, Duration::from_millis(LOCK_WAIT_MS)).map_err(io_error)? {
            return Err(StoreError::Io(format!(
                "the database in {} is open elsewhere (its lock was held for {LOCK_WAIT_MS} ms)",
                dir.display()
            )));
        }
        if Self::exists(dir) {
            Self::check_files(dir)?;
        }
        let db = open_db(dir)?;
        let syncer = Arc::new(Mutex::new(Syncer::new(dir, Arc::default())));
        let names = db.tree_names();
        let store = SledStore {
            db: std::sync::RwLock::new(Some(db)),
            dir: dir.to_path_buf(),
            syncer,
            sync_failed: Arc::new(Mutex::new(None)),
            shops: Mutex::new(BTreeMap::new()),
            healing: tokio::sync::Mutex::new(()),
        };
        for name in names {
            let Some(id) = std::str::from_utf8(&name).ok().and_then(|n| n.strip_prefix(TREE_PREFIX)) else {
                continue;
            };
            let shop_id = ShopId::new(id).map_err(io_error)?;
            store.open_shop(&shop_id)?;
        }
        Ok(store)
    }

    /// Whether `dir` holds a database: sled writes its `conf` file when it creates one. Lets
    /// a caller that only reads refuse a directory that [`open`](Self::open) would create a
    /// database in.
    pub fn exists(dir: &Path) -> bool {
        dir.join("conf").is_file()
    }

    /// Checks, reading only, that the files of the database in `dir` are sled's: a `conf`
    /// whose checksum holds, and a log file `db` that is empty or holds a segment header
    /// whose checksum holds, at a multiple of the segment size. sled would take any other
    /// `db` for an empty database and write over it; [`open`](Self::open) refuses it
    /// instead, naming the file, and leaves its bytes as they are.
    pub fn check_files(dir: &Path) -> Result<(), StoreError> {
        let conf_path = dir.join("conf");
        let not_sled = |path: &Path, why: String| {
            StoreError::Io(format!("{} is not a file of a sled database: {why}; it is left as it is", path.display()))
        };
        let conf = std::fs::read(&conf_path)
            .map_err(|e| StoreError::Io(format!("cannot read {}: {e}", conf_path.display())))?;
        let crc_holds = conf.len() > 8 && {
            let (text, crc) = conf.split_at(conf.len() - 4);
            crc32fast::hash(text).to_le_bytes() == crc
        };
        if !crc_holds {
            return Err(not_sled(&conf_path, "its checksum does not hold".to_owned()));
        }
        let segment_bytes = persisted_segment_bytes(dir)
            .map_err(io_error)?
            .filter(|bytes| *bytes >= SEGMENT_HEADER_BYTES)
            .ok_or_else(|| not_sled(&conf_path, "it records no segment size".to_owned()))?;
        let log_path = dir.join(LOG_FILE);
        let file = match File::open(&log_path) {
            Ok(file) => file,
            // sled creates it: a database whose log was never written holds nothing.
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(StoreError::Io(format!("cannot read {}: {error}", log_path.display()))),
        };
        let length =
            file.metadata().map_err(|e| StoreError::Io(format!("cannot read {}: {e}", log_path.display())))?.len();
        if length == 0 {
            return Ok(());
        }
        let mut offset: u64 = 0;
        while offset.saturating_add(SEGMENT_HEADER_BYTES as u64) <= length {
            let mut header = [0; SEGMENT_HEADER_BYTES];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut header, offset)
                .map_err(|e| StoreError::Io(format!("cannot read {}: {e}", log_path.display())))?;
            // sled's segment header: !crc32 (u32 LE) of the 16 bytes after it (two LSNs).
            let stored = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) ^ 0xFFFF_FFFF;
            if stored == crc32fast::hash(&header[4..]) {
                return Ok(());
            }
            offset = offset.saturating_add(segment_bytes as u64);
        }
        Err(not_sled(&log_path, format!("none of its {length} bytes begins a segment")))
    }

    /// What an append writes after `head`: the sled batch (chunks and the rejection group),
    /// the new head, and the rejection group's number. Checks the fence; writes nothing.
    fn prepare(
        &self,
        shop_id: &ShopId,
        shop: &Shop,
        head: &Head,
        batch: &AppendBatch,
    ) -> Result<(sled::Batch, Head, Option<u64>), StoreError> {
        if let Some(error) = shop.broken().or_else(|| self.failure()) {
            return Err(error);
        }
        let (chunks, new_head) = chunks::encode_batch(shop_id, head, batch.expected_last, &batch.events)?;
        let mut write = sled::Batch::default();
        for (first, bytes) in chunks {
            write.insert(&chunk_key(first), bytes);
        }
        let group = if batch.rejections.is_empty() {
            None
        } else {
            let group = shop.rejection_group_next.load(std::sync::atomic::Ordering::Acquire);
            write.insert(&numbered_key(REJECTION_GROUP, group), encode_rejections(&batch.rejections)?);
            Some(group)
        };
        Ok((write, new_head, group))
    }

    /// Moves the head (held locked by the caller) past a batch that is durable.
    fn advance(shop: &Shop, head: &mut Head, new_head: Head, group: Option<u64>) -> Result<u64, StoreError> {
        *head = new_head;
        if let Some(group) = group {
            let next = group.checked_add(1).ok_or_else(|| io_error("rejection groups exhausted"))?;
            shop.rejection_group_next.store(next, std::sync::atomic::Ordering::Release);
        }
        shop.log.last_position.send_replace(head.last_position);
        Ok(head.last_position)
    }

    /// Heals a failed store (see the module documentation): drops every handle on the
    /// database, opens it again from the disk, fsyncs every file and directory, and reads
    /// every shop's end back, refusing a log that ends before its last acknowledged
    /// position. Holds every shop's head meanwhile, so no append runs.
    async fn reopen(&self) -> Result<(), StoreError> {
        let _healing = self.healing.lock().await;
        let Some(cause) = self.failure() else { return Ok(()) };
        let shops: Vec<(ShopId, Arc<Shop>)> = {
            let shops = self.shops.lock().unwrap_or_else(PoisonError::into_inner);
            shops.iter().map(|(id, shop)| (id.clone(), shop.clone())).collect()
        };
        let mut heads = Vec::with_capacity(shops.len());
        for (_, shop) in &shops {
            heads.push(shop.log.head.lock().await);
        }
        // Every handle on the old database goes, so that sled releases its lock.
        for (_, shop) in &shops {
            *shop.tree.write().unwrap_or_else(PoisonError::into_inner) = None;
        }
        let old = self.db.write().unwrap_or_else(PoisonError::into_inner).take();
        let dir = self.dir.clone();
        let injected = self.syncer.lock().unwrap_or_else(PoisonError::into_inner).injected.clone();
        let opened = tokio::task::spawn_blocking(move || {
            drop(old);
            // A database gone from its directory is not created anew in its place.
            if !SledStore::exists(&dir) {
                return Err(io_error(format!("healing: there is no database in {}", dir.display())));
            }
            if !wait_until_unlocked(&dir, Duration::from_millis(LOCK_WAIT_MS)).map_err(io_error)? {
                return Err(io_error("healing: the old database still holds its lock"));
            }
            drop_cached_pages(&dir);
            let db = open_db(&dir)?;
            let mut syncer = Syncer::new(&dir, injected);
            syncer.sync(&db).map_err(|error| io_error(format!("healing: a sync failed: {error}")))?;
            Ok((db, syncer))
        });
        let (db, syncer) =
            opened.await.map_err(io_error)?.map_err(|error| io_error(format!("{error} (after \"{cause}\")")))?;
        let mut reopened = Vec::with_capacity(shops.len());
        for ((shop_id, _), head) in shops.iter().zip(&heads) {
            let tree = db.open_tree(format!("{TREE_PREFIX}{shop_id}")).map_err(io_error)?;
            let end = read_end(shop_id, &tree)?;
            if end.1.is_none() && end.0.last_position < head.last_position {
                return Err(io_error(format!(
                    "healing: the log of shop {shop_id} ends at {}, before its acknowledged position {}",
                    end.0.last_position, head.last_position
                )));
            }
            reopened.push((tree, end));
        }
        for (((_, shop), head), (tree, (new_head, broken, group_next))) in shops.iter().zip(&mut heads).zip(reopened) {
            shop.log.last_position.send_replace(new_head.last_position);
            **head = new_head;
            shop.rejection_group_next.store(group_next, std::sync::atomic::Ordering::Release);
            *shop.broken.lock().unwrap_or_else(PoisonError::into_inner) = broken;
            *shop.tree.write().unwrap_or_else(PoisonError::into_inner) = Some(tree);
        }
        *self.syncer.lock().unwrap_or_else(PoisonError::into_inner) = syncer;
        *self.db.write().unwrap_or_else(PoisonError::into_inner) = Some(db);
        *self.sync_failed.lock().unwrap_or_else(PoisonError::into_inner) = None;
        Ok(())
    }

    /// For tests of failures: while `failure` is set, every sync (of an append, of a shop's
    /// creation, of healing) does its work and then fails with it, as a sync whose outcome
    /// is unknown does. `None` ends it.
    #[doc(hidden)]
    pub fn inject_sync_failure(&self, failure: Option<&str>) {
        let syncer = self.syncer.lock().unwrap_or_else(PoisonError::into_inner);
        *syncer.injected.lock().unwrap_or_else(PoisonError::into_inner) = failure.map(str::to_owned);
    }

    /// The database directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The database; an error while the store heals.
    fn db(&self) -> Result<sled::Db, StoreError> {
        self.db.read().unwrap_or_else(PoisonError::into_inner).clone().ok_or_else(reopening)
    }

    /// The failure that refuses appends until the store heals, if any.
    fn failure(&self) -> Option<StoreError> {
        self.sync_failed.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn open_shop(&self, shop_id: &ShopId) -> Result<Arc<Shop>, StoreError> {
        let mut shops = self.shops.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(shop) = shops.get(shop_id) {
            return Ok(shop.clone());
        }
        let tree = self.db()?.open_tree(format!("{TREE_PREFIX}{shop_id}")).map_err(io_error)?;
        let (head, broken, rejection_group_next) = read_end(shop_id, &tree)?;
        let shop = Arc::new(Shop {
            tree: std::sync::RwLock::new(Some(tree)),
            log: ShopLog::new(head),
            broken: Mutex::new(broken),
            index: tokio::sync::Mutex::new(()),
            rejection_group_next: std::sync::atomic::AtomicU64::new(rejection_group_next),
        });
        shops.insert(shop_id.clone(), shop.clone());
        Ok(shop)
    }

    fn shop(&self, shop_id: &ShopId) -> Option<Arc<Shop>> {
        self.shops.lock().unwrap_or_else(PoisonError::into_inner).get(shop_id).cloned()
    }

    /// The chunks of `shop_id` from the one holding position `from` to the durable end (see
    /// [`SledStore::shop_chunks_from`]); none for a shop with no log.
    fn chunks_from(&self, shop_id: &ShopId, from: u64) -> Chunks {
        match self.shop(shop_id) {
            Some(shop) => Self::shop_chunks_from(&shop, from),
            None => Box::new(std::iter::empty()),
        }
    }

    /// Chunks from the one holding position `from` to the durable end. A batch whose sync
    /// failed stays in sled's memory past that end, and is never read. A shop whose end
    /// could not be read at open is read to its last chunk, so verification finds where.
    fn shop_chunks_from(shop: &Shop, from: u64) -> Chunks {
        let durable = if shop.broken().is_some() { u64::MAX } else { *shop.log.last_position.borrow() };
        let tree = match shop.tree() {
            Ok(tree) => tree,
            Err(error) => return Box::new(std::iter::once(Err(error))),
        };
        let start = tree
            .range(chunk_key(0)..=chunk_key(from))
            .next_back()
            .and_then(Result::ok)
            .and_then(|(key, _)| position_of_key(&key).ok())
            .unwrap_or(from);
        Box::new(
            tree.range(chunk_key(start)..=chunk_key(u64::MAX))
                .map(|entry| {
                    entry.map_err(io_error).and_then(|(key, value)| Ok((position_of_key(&key)?, value.to_vec())))
                })
                .take_while(move |chunk| !matches!(chunk, Ok((first, _)) if *first > durable)),
        )
    }

    /// Brings the stream index up to the end of the log.
    async fn catch_up_index(&self, shop_id: &ShopId, shop: &Shop) -> Result<(), StoreError> {
        let _guard = shop.index.lock().await;
        let tree = shop.tree()?;
        let high_water = match tree.get([INDEX_HIGH_WATER]).map_err(io_error)? {
            Some(bytes) => position_of_key(&[&[INDEX_HIGH_WATER][..], &bytes].concat())?,
            None => 0,
        };
        let last = *shop.log.last_position.borrow();
        let mut indexed = high_water;
        while indexed < last {
            let envelopes = self.read_from(shop_id, indexed, 4096).await?;
            let Some(tail) = envelopes.last() else { break };
            let mut batch = sled::Batch::default();
            for envelope in &envelopes {
                batch.insert(stream_key(&envelope.stream, envelope.stream_version), &envelope.position.to_be_bytes());
            }
            indexed = tail.position;
            batch.insert(&[INDEX_HIGH_WATER], &indexed.to_be_bytes());
            tree.apply_batch(batch).map_err(io_error)?;
        }
        Ok(())
    }
}

/// Waits until nothing holds the lock sled takes on `dir/db` (an exclusive `flock`), at most
/// `timeout`. Returns whether the lock is free; a database not created yet is free.
pub fn wait_until_unlocked(dir: &Path, timeout: Duration) -> io::Result<bool> {
    let file = match File::open(dir.join("db")) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(error) => return Err(error),
    };
    let started = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => {
                file.unlock()?;
                return Ok(true);
            }
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
            Err(std::fs::TryLockError::Error(error)) => return Err(error),
        }
    }
}

/// Makes what sled wrote durable: `flush`, then fsync.
///
/// sled writes its log to `db`, large values to write-once files in `blobs/`, and keeps
/// `conf` and snapshot files beside them (sled 0.34.7 writes `conf` once, when it creates
/// the database; a snapshot under a `.generating` name, renamed when complete; a blob under
/// a new name; and only `db` in place). Every commit fsyncs `db`, through a handle kept
/// open. The directories are listed only when they may have changed: when the inode, length
/// or modification time of the database directory or of `blobs` differs from when they were
/// last listed, or when that modification time is within `RACY_WINDOW` of now (a
/// modification time has a coarse clock, so a change in the same tick as the last listing
/// may leave it unchanged; once the window has passed, any later change moves it). A
/// listing fsyncs every top-level file that is new or whose inode, length or modification
/// time differ from when it was last fsynced, the directory when its entries (names and
/// inodes) differ from its last fsync, and likewise every blob file, with the `blobs`
/// directory when one is new. While a file such a listing fsynced was modified within the
/// racy window, every commit lists again (sled may still be writing it). Steady commits cost sled's write, its
/// `sync_file_range`, one fsync and two `statx`.
///
/// An fsync of a file with nothing to write still costs a flush of the device's cache
/// (about 0.5 ms on a virtual disk), and an unchanged `conf` took the most of any fsync of
/// a commit.
struct Syncer {
    dir: PathBuf,
    /// A failure every sync reports, after syncing, while it is set
    /// ([`SledStore::inject_sync_failure`]); shared by the syncers of one store.
    injected: Arc<Mutex<Option<String>>>,
    /// The log file `db`, kept open, and its inode.
    log: Option<(File, u64)>,
    /// Blob files as they were when last fsynced.
    synced_blobs: HashMap<OsString, FileStamp>,
    /// The newest modification time of a file a listing fsynced (the log aside).
    changed_last: Option<std::time::SystemTime>,
    /// Top-level files but `db` as they were when last fsynced.
    synced_files: HashMap<OsString, FileStamp>,
    /// The top-level entries as of the last fsync of the directory.
    synced_entries: Option<BTreeSet<(OsString, u64)>>,
    /// The stamps of the database directory and of `blobs` (if any) when last listed.
    listed: Option<(FileStamp, Option<FileStamp>)>,
    /// Listings so far.
    listings: u64,
    /// How recent a directory's modification time makes it listed whatever its stamp.
    racy_window: Duration,
}

/// See [`Syncer`]: a directory modified this recently is listed, whatever its stamp says.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// What tells a file changed: inode, length, modification time.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    length_bytes: u64,
    modified: Option<std::time::SystemTime>,
}

impl FileStamp {
    fn of(metadata: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp { inode: metadata.ino(), length_bytes: metadata.len(), modified: metadata.modified().ok() }
    }

    /// The stamp of the directory at `path`; `None` when there is none.
    fn of_dir(path: &Path) -> io::Result<Option<FileStamp>> {
        match std::fs::metadata(path) {
            Ok(metadata) => Ok(Some(FileStamp::of(&metadata))),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Whether it was modified less than `window` ago (or its time is unknown or ahead).
    fn is_recent(&self, window: Duration) -> bool {
        if window.is_zero() {
            return false;
        }
        let Some(modified) = self.modified else { return true };
        std::time::SystemTime::now().duration_since(modified).map_or(true, |age| age < window)
    }
}

/// The file sled appends its log to: fsynced on every commit.
const LOG_FILE: &str = "db";

impl Syncer {
    fn new(dir: &Path, injected: Arc<Mutex<Option<String>>>) -> Syncer {
        Syncer {
            dir: dir.to_path_buf(),
            injected,
            log: None,
            synced_blobs: HashMap::new(),
            changed_last: None,
            synced_files: HashMap::new(),
            synced_entries: None,
            listed: None,
            listings: 0,
            racy_window: RACY_WINDOW,
        }
    }

    /// Whether a top-level file must be fsynced: the log always, any other file when new
    /// or changed since its last fsync.
    fn file_needs_sync(&self, name: &std::ffi::OsStr, stamp: FileStamp) -> bool {
        name == LOG_FILE || self.synced_files.get(name) != Some(&stamp)
    }

    /// Whether the directories must be listed: never listed, changed since, or recently
    /// modified (see [`Syncer`]).
    fn must_list(&self, top: Option<FileStamp>, blobs: Option<FileStamp>) -> bool {
        let window = self.racy_window;
        let changed = FileStamp { inode: 0, length_bytes: 0, modified: self.changed_last };
        if self.changed_last.is_some() && changed.is_recent(window) {
            return true;
        }
        match (&self.listed, top) {
            (Some((listed_top, listed_blobs)), Some(top)) => {
                top != *listed_top
                    || blobs != *listed_blobs
                    || top.is_recent(window)
                    || blobs.is_some_and(|blobs| blobs.is_recent(window))
            }
            _ => true,
        }
    }

    fn sync(&mut self, db: &sled::Db) -> io::Result<()> {
        db.flush().map_err(io::Error::other)?;
        // The stamps are taken before listing: a change after them moves them (or falls in
        // the racy window), and the next commit lists again.
        let top = FileStamp::of_dir(&self.dir)?;
        let blobs = FileStamp::of_dir(&self.dir.join("blobs"))?;
        if self.must_list(top, blobs) {
            self.sync_blobs()?;
            self.sync_top_level()?;
            self.listings += 1;
            self.listed = top.map(|top| (top, blobs));
        }
        let log = match self.log.take() {
            Some(log) => log,
            None => {
                let file = File::open(self.dir.join(LOG_FILE))?;
                let inode = FileStamp::of(&file.metadata()?).inode;
                (file, inode)
            }
        };
        let synced = log.0.sync_all();
        self.log = Some(log);
        synced?;
        match self.injected.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            Some(failure) => Err(io::Error::other(failure.clone())),
            None => Ok(()),
        }
    }

    /// Fsyncs the blob files that are new or changed since their last fsync (sled writes a
    /// blob once, but may still be writing it when it is first seen), and then the `blobs`
    /// directory when one was new.
    fn sync_blobs(&mut self) -> io::Result<()> {
        let blobs = self.dir.join("blobs");
        let mut new_blobs = false;
        let mut present = HashSet::new();
        for entry in std::fs::read_dir(&blobs).into_iter().flatten() {
            let entry = entry?;
            let name = entry.file_name();
            let stamp = match entry.metadata() {
                Ok(metadata) => FileStamp::of(&metadata),
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            present.insert(name.clone());
            let synced = self.synced_blobs.get(&name);
            if synced == Some(&stamp) {
                continue;
            }
            new_blobs |= synced.is_none_or(|synced| synced.inode != stamp.inode);
            if skip_vanished(File::open(entry.path()).and_then(|file| file.sync_all()))? {
                self.note_change(stamp);
                self.synced_blobs.insert(name, stamp);
            }
        }
        if new_blobs {
            File::open(&blobs)?.sync_all()?;
        }
        // Forget blobs sled has since removed, so the map does not grow without bound.
        self.synced_blobs.retain(|name, _| present.contains(name));
        Ok(())
    }

    /// Remembers the newest modification time of a file fsynced by a listing: while it is
    /// within the racy window, every commit lists again, so a file still being written when
    /// it was fsynced is fsynced again.
    fn note_change(&mut self, stamp: FileStamp) {
        let modified = stamp.modified.unwrap_or_else(std::time::SystemTime::now);
        self.changed_last = Some(self.changed_last.map_or(modified, |last| last.max(modified)));
    }

    /// Fsyncs the top-level files that are new or changed, then the directory if its
    /// entries changed; (re)opens the log's handle when its inode is new.
    fn sync_top_level(&mut self) -> io::Result<()> {
        let mut entries = BTreeSet::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let metadata = match entry.metadata() {
                Ok(metadata) => metadata,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            let stamp = FileStamp::of(&metadata);
            entries.insert((name.clone(), stamp.inode));
            if !metadata.is_file() {
                continue;
            }
            if name == LOG_FILE {
                if self.log.as_ref().is_none_or(|(_, inode)| *inode != stamp.inode) {
                    self.log = Some((File::open(entry.path())?, stamp.inode));
                }
                continue;
            }
            // The stamp is taken before the fsync: a write after it changes the stamp, and
            // the next listing fsyncs the file again.
            if self.file_needs_sync(&name, stamp)
                && skip_vanished(File::open(entry.path()).and_then(|file| file.sync_all()))?
            {
                self.note_change(stamp);
                self.synced_files.insert(name, stamp);
            }
        }
        if self.synced_entries.as_ref() != Some(&entries) {
            File::open(&self.dir)?.sync_all()?;
            // Forget files sled has since removed, so the map does not grow without bound.
            self.synced_files.retain(|name, stamp| entries.contains(&(name.clone(), stamp.inode)));
            self.synced_entries = Some(entries);
        }
        Ok(())
    }
}

/// Writes one append's sled batch and makes it durable. Blocks. The first failed write or
/// sync is kept in `failed`, which refuses every later append until the store heals.
fn write_and_sync(
    tree: &sled::Tree,
    write: sled::Batch,
    db: &sled::Db,
    syncer: &Mutex<Syncer>,
    failed: &Mutex<Option<StoreError>>,
) -> Result<(), StoreError> {
    let what = match tree.apply_batch(write) {
        Ok(()) => match syncer.lock().unwrap_or_else(PoisonError::into_inner).sync(db) {
            Ok(()) => return Ok(()),
            Err(error) => format!("a sync failed, appends are refused until the store heals: {error}"),
        },
        Err(error) => format!("a write failed, appends are refused until the store heals: {error}"),
    };
    Err(failed.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(io_error(what)).clone())
}

/// sled removes old snapshot and blob files in the background: a file that vanished between
/// listing and opening has nothing left to sync. Returns whether the file was synced.
fn skip_vanished(synced: io::Result<()>) -> io::Result<bool> {
    match synced {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error),
    }
}

fn encode_rejections(records: &[RejectionRecord]) -> Result<Vec<u8>, StoreError> {
    // Room for the CRC first, filled in once the body is written.
    let mut bytes = postcard::to_extend(records, vec![0; 4]).map_err(io_error)?;
    let crc = crc32fast::hash(&bytes[4..]).to_le_bytes();
    bytes[..4].copy_from_slice(&crc);
    Ok(bytes)
}

/// How many records a group of rejections holds: the length that begins its postcard body.
fn group_records(value: &[u8]) -> Result<usize, StoreError> {
    let body = value.get(4..).ok_or_else(|| io_error("short rejection record"))?;
    let (records, _) = postcard::take_from_bytes::<u64>(body).map_err(io_error)?;
    usize::try_from(records).map_err(io_error)
}

/// A value's body, once its leading CRC32 matches.
fn checked_body(bytes: &[u8]) -> Result<&[u8], StoreError> {
    let (crc, body) = bytes.split_at_checked(4).ok_or_else(|| io_error("short rejection record"))?;
    if crc != crc32fast::hash(body).to_le_bytes() {
        return Err(io_error("rejection record fails its checksum"));
    }
    Ok(body)
}

#[async_trait]
impl EventStore for SledStore {
    async fn shops(&self) -> Result<Vec<ShopId>, StoreError> {
        Ok(self.shops.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect())
    }

    async fn create_shop(&self, shop_id: &ShopId) -> Result<(), StoreError> {
        if let Some(error) = self.failure() {
            return Err(error);
        }
        self.open_shop(shop_id)?;
        let (db, syncer) = (self.db()?, self.syncer.clone());
        tokio::task::spawn_blocking(move || syncer.lock().unwrap_or_else(PoisonError::into_inner).sync(&db))
            .await
            .map_err(io_error)?
            .map_err(io_error)
    }

    async fn append(&self, shop_id: &ShopId, batch: &AppendBatch) -> Result<u64, StoreError> {
        let shop = self.open_shop(shop_id)?;
        let mut head = shop.log.head.lock().await;
        let (write, new_head, group) = self.prepare(shop_id, &shop, &head, batch)?;
        let (tree, db, syncer, failed) = (shop.tree()?, self.db()?, self.syncer.clone(), self.sync_failed.clone());
        let written = tokio::task::spawn_blocking(move || write_and_sync(&tree, write, &db, &syncer, &failed)).await;
        written.map_err(io_error)??;
        Self::advance(&shop, &mut head, new_head, group)
    }

    fn append_blocking(
        &self,
        _runtime: &tokio::runtime::Handle,
        shop_id: &ShopId,
        batch: &AppendBatch,
    ) -> Result<u64, StoreError> {
        let shop = self.open_shop(shop_id)?;
        let mut head = shop.log.head.blocking_lock();
        let (write, new_head, group) = self.prepare(shop_id, &shop, &head, batch)?;
        write_and_sync(&shop.tree()?, write, &self.db()?, &self.syncer, &self.sync_failed)?;
        Self::advance(&shop, &mut head, new_head, group)
    }

    async fn read_from(&self, shop_id: &ShopId, after: u64, limit: usize) -> Result<Vec<Envelope>, StoreError> {
        chunks::collect_after(shop_id, self.chunks_from(shop_id, after + 1), after, limit)
    }

    async fn read_stream(
        &self,
        shop_id: &ShopId,
        stream: &str,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, StoreError> {
        let Some(shop) = self.shop(shop_id) else { return Ok(Vec::new()) };
        self.catch_up_index(shop_id, &shop).await?;
        let from = stream_key(stream, after_version.saturating_add(1));
        let to = stream_key(stream, u64::MAX);
        let mut out = Vec::new();
        for entry in shop.tree()?.range(from..=to).take(limit) {
            let (_, value) = entry.map_err(io_error)?;
            let position = position_of_key(&[&[STREAM][..], &value].concat())?;
            out.extend(self.read_from(shop_id, position - 1, 1).await?);
        }
        Ok(out)
    }

    async fn last_position(&self, shop_id: &ShopId) -> Result<u64, StoreError> {
        Ok(self.shop(shop_id).map_or(0, |shop| *shop.log.last_position.borrow()))
    }

    async fn wait_for(&self, shop_id: &ShopId, after: u64, timeout: Duration) -> Result<u64, StoreError> {
        let shop = self.open_shop(shop_id)?;
        Ok(chunks::wait_for(&shop.log, after, timeout).await)
    }

    async fn rejections(&self, shop_id: &ShopId) -> Result<Vec<RejectionRecord>, StoreError> {
        let Some(shop) = self.shop(shop_id) else { return Ok(Vec::new()) };
        let mut records = Vec::new();
        let tree = shop.tree()?;
        for entry in tree.scan_prefix([REJECTION]) {
            let (_, value) = entry.map_err(io_error)?;
            records.push(postcard::from_bytes(checked_body(&value)?).map_err(io_error)?);
        }
        for entry in tree.scan_prefix([REJECTION_GROUP]) {
            let (_, value) = entry.map_err(io_error)?;
            let group: Vec<RejectionRecord> = postcard::from_bytes(checked_body(&value)?).map_err(io_error)?;
            records.extend(group);
        }
        Ok(records)
    }

    /// Walks the groups newest first, reading only each value's length and its record count
    /// (the first varint of its body), to the first group past the bounds; removes it and
    /// every older group (and every record of the earlier one-per-key form) in one batch.
    async fn forget_rejections(
        &self,
        shop_id: &ShopId,
        keep_records: usize,
        keep_bytes: usize,
    ) -> Result<u64, StoreError> {
        let Some(shop) = self.shop(shop_id) else { return Ok(0) };
        let tree = shop.tree()?;
        let (mut kept, mut bytes, mut newest_forgotten) = (0, 0, None);
        for entry in tree.scan_prefix([REJECTION_GROUP]).rev() {
            let (key, value) = entry.map_err(io_error)?;
            if kept >= keep_records || bytes >= keep_bytes {
                newest_forgotten = Some(key);
                break;
            }
            kept += group_records(&value)?;
            bytes += value.len();
        }
        let Some(newest_forgotten) = newest_forgotten else { return Ok(0) };
        let (mut forget, mut forgotten) = (sled::Batch::default(), 0);
        for entry in tree.range(&numbered_key(REJECTION_GROUP, 0)[..]..=&newest_forgotten[..]) {
            let (key, value) = entry.map_err(io_error)?;
            forgotten += group_records(&value)? as u64;
            forget.remove(key);
        }
        for entry in tree.scan_prefix([REJECTION]) {
            forget.remove(entry.map_err(io_error)?.0);
            forgotten += 1;
        }
        tree.apply_batch(forget).map_err(io_error)?;
        Ok(forgotten)
    }

    async fn verify_after(&self, shop_id: &ShopId, after: u64, anchor: Hash) -> Result<VerifyReport, StoreError> {
        let (report, _) = chunks::verify_chunks(shop_id, self.chunks_from(shop_id, after.max(1)), after, anchor)?;
        Ok(report)
    }

    async fn read_verified(
        &self,
        shop_id: &ShopId,
        after: u64,
        anchor: Hash,
        limit: usize,
    ) -> Result<(Vec<Envelope>, Hash), StoreError> {
        chunks::read_verified(shop_id, self.chunks_from(shop_id, after.max(1)), after, anchor, limit)
    }

    async fn heal(&self) -> Result<(), StoreError> {
        if self.failure().is_none() {
            return Ok(());
        }
        self.reopen().await
    }

    async fn remove_empty_shop(&self, shop_id: &ShopId) -> Result<bool, StoreError> {
        let Some(shop) = self.shop(shop_id) else { return Ok(true) };
        let head = shop.log.head.lock().await;
        let tree = shop.tree()?;
        if head.last_position > 0 || !tree.is_empty() {
            return Ok(false);
        }
        self.shops.lock().unwrap_or_else(PoisonError::into_inner).remove(shop_id);
        let db = self.db()?;
        db.drop_tree(format!("{TREE_PREFIX}{shop_id}")).map_err(io_error)?;
        let syncer = self.syncer.clone();
        tokio::task::spawn_blocking(move || syncer.lock().unwrap_or_else(PoisonError::into_inner).sync(&db))
            .await
            .map_err(io_error)?
            .map_err(io_error)?;
        Ok(true)
    }

    async fn head(&self, shop_id: &ShopId) -> Result<(u64, Hash), StoreError> {
        match self.shop(shop_id) {
            Some(shop) => {
                if let Some(error) = shop.broken() {
                    return Err(error);
                }
                let head = shop.log.head.lock().await;
                Ok((head.last_position, head.hash))
            }
            None => Ok((0, record::genesis_hash(shop_id))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::io::Write;

    use super::*;

    #[test]
    fn the_syncer_fsyncs_the_log_always_and_other_files_when_new_or_changed() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db = sled::Config::new().path(dir.path()).open().expect("sled opens");
        let mut syncer = Syncer::new(dir.path(), Arc::default());
        syncer.sync(&db).expect("synced");
        let stamp = |name: &str| FileStamp::of(&std::fs::metadata(dir.path().join(name)).expect("exists"));
        assert!(!syncer.file_needs_sync(OsStr::new("conf"), stamp("conf")), "conf is synced and unchanged");
        assert!(syncer.file_needs_sync(OsStr::new(LOG_FILE), stamp(LOG_FILE)), "the log, every time");

        std::fs::write(dir.path().join("extra"), b"one").expect("written");
        assert!(syncer.file_needs_sync(OsStr::new("extra"), stamp("extra")), "a new file");
        syncer.sync(&db).expect("synced");
        assert!(!syncer.file_needs_sync(OsStr::new("extra"), stamp("extra")));
        let listed = syncer.synced_entries.clone().expect("the directory was synced");
        assert!(listed.contains(&(OsString::from("extra"), stamp("extra").inode)), "{listed:?}");

        let mut file = std::fs::OpenOptions::new().append(true).open(dir.path().join("extra")).expect("opens");
        file.write_all(b" two").expect("written");
        assert!(syncer.file_needs_sync(OsStr::new("extra"), stamp("extra")), "a longer file");
        syncer.sync(&db).expect("synced");
        std::fs::remove_file(dir.path().join("extra")).expect("removed");
        syncer.sync(&db).expect("synced");
        assert!(!syncer.synced_files.contains_key(OsStr::new("extra")), "a removed file is forgotten");
        assert!(!syncer.synced_entries.expect("synced").iter().any(|(name, _)| name == "extra"));
    }

    /// Steady commits fsync the log through the handle kept open and list nothing; a file
    /// sled (or anyone) creates changes the directory's stamp, and the next commit lists it
    /// and fsyncs it; a directory modified within the racy window is listed every commit.
    #[test]
    fn the_syncer_lists_the_directories_only_when_they_may_have_changed() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db = sled::Config::new().path(dir.path()).open().expect("sled opens");
        let mut syncer = Syncer::new(dir.path(), Arc::default());
        syncer.racy_window = Duration::ZERO;
        syncer.sync(&db).expect("synced");
        assert_eq!(syncer.listings, 1, "the first commit lists");
        assert!(syncer.log.is_some(), "the log's handle is kept");
        for _ in 0..3 {
            db.insert(b"key", b"value").expect("inserted");
            syncer.sync(&db).expect("synced");
        }
        assert_eq!(syncer.listings, 1, "nothing created: nothing listed");

        std::fs::write(dir.path().join("snap.new"), b"snapshot").expect("written");
        // The directory's modification time in the future: changed, whatever the clock's tick.
        let later = std::time::SystemTime::now() + Duration::from_secs(60);
        File::open(dir.path()).expect("the directory").set_modified(later).expect("touched");
        syncer.sync(&db).expect("synced");
        assert_eq!(syncer.listings, 2, "a new file: listed");
        assert!(syncer.synced_files.contains_key(OsStr::new("snap.new")), "and fsynced");
        assert!(syncer.synced_entries.as_ref().expect("synced").iter().any(|(name, _)| name == "snap.new"));
        syncer.sync(&db).expect("synced");
        assert_eq!(syncer.listings, 2, "listed once");

        syncer.racy_window = RACY_WINDOW;
        syncer.sync(&db).expect("synced");
        assert_eq!(syncer.listings, 3, "a directory modified recently (here: ahead of the clock) is listed");
    }

    #[test]
    fn an_injected_sync_failure_fails_every_sync_until_cleared() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db = sled::Config::new().path(dir.path()).open().expect("sled opens");
        let injected = Arc::new(Mutex::new(Some("No space left on device (os error 28)".to_owned())));
        let mut syncer = Syncer::new(dir.path(), injected.clone());
        let failed = syncer.sync(&db).expect_err("fails while injected");
        assert!(failed.to_string().contains("No space left"), "{failed}");
        *injected.lock().expect("unpoisoned") = None;
        syncer.sync(&db).expect("synced once cleared");
    }
}
