//! The witness: where each shop's log ended, kept outside the log.
//!
//! A log can only vouch for what it holds: cut back (a restored older copy, a truncated
//! file), it still verifies, and a shop recovered from it would serve an older state and
//! write new events over the gap. So the engine keeps, in a small file beside the log
//! (`<data>/witness`), the last durable position of each shop and the hash of its record,
//! and refuses a shop whose log ends before it or carries another record there.
//!
//! Guarantees:
//! - **At least every second, and at close.** A task of its own writes the witness when a
//!   shop's published position moved ([`WITNESS_INTERVAL_MS`]), taking each position and
//!   hash from the store's head, which is durable before the commands of its batch are
//!   answered; at close, once every writer has finished, it writes it once more.
//! - **Atomic.** The file is written under a temporary name, fsynced, renamed into place,
//!   and its directory fsynced: it is the old witness or the new one, never a mix, and it
//!   is written only after the log it vouches for is durable, so a crash never leaves a
//!   witness ahead of the log.
//! - **Never backwards.** A witnessed position only grows; a shop refused at open keeps
//!   its entry, so that a later start refuses it again.
//! - **Checked.** The file ends with a CRC32 of what precedes it; a witness that fails it,
//!   or does not parse, stops the engine from opening, naming the file.
//!
//! The format, one line each: `emporium witness 1`, then `<shop> <position> <hash hex>` per
//! shop in order, then `crc32 <8 hex digits>`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::domain::ids::ShopId;
use crate::log::record::{Corruption, Hash};
use crate::log::store::{EventStore, StoreError};

/// How often the witness task looks for positions that moved, in milliseconds.
pub const WITNESS_INTERVAL_MS: u64 = 1000;

/// The first line of a witness file.
const HEADER: &str = "emporium witness 1";

/// Most shops a witness file may name when read: far above any shop limit, a bound on
/// what a damaged file can make the engine allocate.
const WITNESS_SHOPS_MAX: usize = 1_000_000;

/// Where a shop's log was witnessed to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Witnessed {
    /// The last durable position.
    pub position: u64,
    /// The hash of its record (the genesis hash at position 0).
    pub hash: Hash,
}

/// How a shop's log stands against its witness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// No witness names the shop.
    Unwitnessed,
    /// The log reaches the witnessed position and carries the witnessed record there.
    Agrees(Witnessed),
    /// The log ends before the witnessed position.
    Shorter {
        /// The witnessed position.
        witnessed: u64,
        /// Where the log ends.
        actual: u64,
    },
    /// The record at the witnessed position is not the one witnessed.
    Differs {
        /// The witnessed position.
        witnessed: u64,
    },
}

impl Standing {
    /// Why the shop must not be served, or `None` when it may be.
    pub fn refusal(&self) -> Option<String> {
        match self {
            Standing::Unwitnessed | Standing::Agrees(_) => None,
            Standing::Shorter { witnessed, actual } => Some(format!(
                "the log ends at position {actual}, before its witnessed position {witnessed}: it was cut back \
                 or restored from an older copy; the shop is refused and nothing is written until the log is restored"
            )),
            Standing::Differs { witnessed } => Some(format!(
                "the record at the witnessed position {witnessed} is not the one witnessed: the log was replaced; \
                 the shop is refused and nothing is written until the log is restored"
            )),
        }
    }

    /// The refusal as the store's corruption error, which the engine refuses a shop for.
    pub fn into_error(self, shop: &ShopId) -> Result<(), StoreError> {
        let position = match &self {
            Standing::Shorter { actual, .. } => actual.saturating_add(1),
            Standing::Differs { witnessed } => *witnessed,
            Standing::Unwitnessed | Standing::Agrees(_) => return Ok(()),
        };
        let reason = self.refusal().unwrap_or_default();
        Err(StoreError::Corrupt { shop: shop.clone(), corruption: Corruption { position, reason } })
    }
}

/// Compares `shop`'s log in `store` with `witnessed`: its end, then the record at the
/// witnessed position and the chain after it (a second or so of writes).
pub async fn compare(
    store: &dyn EventStore,
    shop: &ShopId,
    witnessed: Option<Witnessed>,
) -> Result<Standing, StoreError> {
    let Some(witnessed) = witnessed else { return Ok(Standing::Unwitnessed) };
    let actual = store.last_position(shop).await?;
    if actual < witnessed.position {
        return Ok(Standing::Shorter { witnessed: witnessed.position, actual });
    }
    if witnessed.position == 0 {
        return Ok(if witnessed.hash == crate::log::record::genesis_hash(shop) {
            Standing::Agrees(witnessed)
        } else {
            Standing::Differs { witnessed: 0 }
        });
    }
    match store.verify_after(shop, witnessed.position, witnessed.hash).await {
        Ok(_) => Ok(Standing::Agrees(witnessed)),
        Err(StoreError::Corrupt { corruption, .. }) if corruption.position == witnessed.position => {
            Ok(Standing::Differs { witnessed: witnessed.position })
        }
        Err(error) => Err(error),
    }
}

/// Reads the witness file at `path`: no file is no witness.
pub fn read(path: &Path) -> Result<BTreeMap<ShopId, Witnessed>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => decode(&text).map_err(|e| format!("the witness {} is damaged: {e}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(error) => Err(format!("cannot read the witness {}: {error}", path.display())),
    }
}

fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Hash> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut hash = [0; 32];
    for (index, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16).ok()?;
    }
    Some(hash)
}

fn encode(entries: &BTreeMap<ShopId, Witnessed>) -> String {
    let mut text = format!("{HEADER}\n");
    for (shop, witnessed) in entries {
        text += &format!("{shop} {} {}\n", witnessed.position, hex(&witnessed.hash));
    }
    let crc = crc32fast::hash(text.as_bytes());
    text + &format!("crc32 {crc:08x}\n")
}

fn decode(text: &str) -> Result<BTreeMap<ShopId, Witnessed>, String> {
    let body_end = text.trim_end_matches('\n').rfind('\n').map_or(0, |at| at + 1);
    let (body, last) = text.split_at(body_end);
    let stored = last.trim_end().strip_prefix("crc32 ").and_then(|crc| u32::from_str_radix(crc, 16).ok());
    if stored != Some(crc32fast::hash(body.as_bytes())) {
        return Err("its checksum does not match (or its last line is not one)".to_owned());
    }
    let mut lines = body.lines();
    if lines.next() != Some(HEADER) {
        return Err(format!("its first line is not {HEADER:?}"));
    }
    let mut entries = BTreeMap::new();
    for (index, line) in lines.enumerate() {
        let bad = || format!("line {} is not `<shop> <position> <hash>`", index + 2);
        if entries.len() >= WITNESS_SHOPS_MAX {
            return Err(format!("it names more than {WITNESS_SHOPS_MAX} shops"));
        }
        let mut words = line.split(' ');
        let (Some(shop), Some(position), Some(hash), None) = (words.next(), words.next(), words.next(), words.next())
        else {
            return Err(bad());
        };
        let shop = ShopId::new(shop).map_err(|_| bad())?;
        let position = position.parse().map_err(|_| bad())?;
        let hash = unhex(hash).ok_or_else(bad)?;
        entries.insert(shop, Witnessed { position, hash });
    }
    Ok(entries)
}

/// Writes `bytes` to `path` atomically and durably: a temporary file beside it, fsynced,
/// renamed over it, and the directory fsynced.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.tmp"));
    let written = std::fs::File::create(&temporary).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(error) = written.and_then(|()| std::fs::rename(&temporary, path)) {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// The engine's witness: the file, what it holds, and the shops whose positions it follows.
pub(super) struct Witness {
    path: PathBuf,
    /// What the file holds (or will once written), shops refused at open included.
    entries: Mutex<BTreeMap<ShopId, Witnessed>>,
    /// The served shops and where their writers publish their durable positions.
    watched: Mutex<Vec<(ShopId, Arc<AtomicU64>)>>,
    /// One write at a time: the periodic one and the one at close share a temporary name.
    writing: tokio::sync::Mutex<()>,
}

impl Witness {
    /// The witness kept at `path`, as the file there says (none when there is no file).
    pub(super) fn open(path: &Path) -> Result<Witness, StoreError> {
        let entries = read(path).map_err(|e| {
            StoreError::Io(format!("{e}; move it away to serve the logs as they are, without their witness"))
        })?;
        Ok(Witness {
            path: path.to_path_buf(),
            entries: Mutex::new(entries),
            watched: Mutex::new(Vec::new()),
            writing: tokio::sync::Mutex::new(()),
        })
    }

    /// Where the file says `shop`'s log ended.
    pub(super) fn witnessed(&self, shop: &ShopId) -> Option<Witnessed> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).get(shop).copied()
    }

    /// Every shop the file names.
    pub(super) fn shops(&self) -> Vec<ShopId> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }

    /// Follows `shop`, served, whose writer publishes its durable position in `position`.
    pub(super) fn watch(&self, shop: &ShopId, position: Arc<AtomicU64>) {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner).push((shop.clone(), position));
    }

    /// Takes the store's head of every watched shop whose position moved (or that the file
    /// does not name yet) and, if any changed, writes the file. A failure is logged; the
    /// next round tries again.
    pub(super) async fn write(&self, store: &dyn EventStore) {
        let _writing = self.writing.lock().await;
        let watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut changed = false;
        for (shop, published) in watched {
            let known = self.witnessed(&shop);
            if known.is_some_and(|known| known.position >= published.load(Ordering::Acquire)) {
                continue;
            }
            let Ok((position, hash)) = store.head(&shop).await else { continue };
            if known.is_some_and(|known| known.position >= position) {
                continue;
            }
            self.entries.lock().unwrap_or_else(PoisonError::into_inner).insert(shop, Witnessed { position, hash });
            changed = true;
        }
        if !changed {
            return;
        }
        let text = encode(&self.entries.lock().unwrap_or_else(PoisonError::into_inner));
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || write_atomically(&path, text.as_bytes())).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(path = %self.path.display(), %error, "the witness was not written"),
            Err(error) => tracing::warn!(path = %self.path.display(), %error, "the witness write did not finish"),
        }
    }

    /// Writes the witness every [`WITNESS_INTERVAL_MS`] until `shutdown` says so.
    pub(super) async fn run(
        self: Arc<Self>,
        store: Arc<dyn EventStore>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let interval = Duration::from_millis(WITNESS_INTERVAL_MS);
        while !*shutdown.borrow() {
            tokio::select! {
                _ = tokio::time::sleep(interval) => self.write(store.as_ref()).await,
                changed = shutdown.changed() => if changed.is_err() { break },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> BTreeMap<ShopId, Witnessed> {
        let mut entries = BTreeMap::new();
        entries.insert(ShopId::main(), Witnessed { position: 149_851, hash: [7; 32] });
        entries.insert(ShopId::new("b-2").expect("an id"), Witnessed { position: 0, hash: [0xab; 32] });
        entries
    }

    #[test]
    fn a_witness_reads_back_what_was_written_and_refuses_a_changed_byte() {
        let text = encode(&entries());
        assert_eq!(decode(&text), Ok(entries()));
        assert!(text.starts_with("emporium witness 1\nb-2 0 abab"), "{text}");
        let changed = text.replacen("149851", "149850", 1);
        assert!(decode(&changed).is_err_and(|e| e.contains("checksum")));
        assert!(decode("").is_err());
        assert!(decode(&text[..text.len() - 3]).is_err());
        let empty = encode(&BTreeMap::new());
        assert_eq!(decode(&empty), Ok(BTreeMap::new()));
    }

    #[test]
    fn a_witness_is_written_atomically_and_missing_means_none() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("witness");
        assert_eq!(read(&path), Ok(BTreeMap::new()));
        write_atomically(&path, encode(&entries()).as_bytes()).expect("written");
        assert_eq!(read(&path), Ok(entries()));
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).expect("listed").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("witness")], "no temporary file is left");
        std::fs::write(&path, b"garbage").expect("written");
        assert!(read(&path).is_err_and(|e| e.contains("damaged") && e.contains("witness")));
    }
}
