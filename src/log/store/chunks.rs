//! What both backends share: a shop log is a sequence of *chunks*, each holding whole,
//! consecutive records and keyed by the position of its first record. A batch becomes one or
//! more chunks of at most [`CHUNK_BYTES_MAX`] bytes.

use tokio::sync::watch;

use crate::domain::ids::ShopId;
use crate::log::record::{self, Check, Envelope, Hash};

use super::{StoreError, VerifyReport};

/// Largest chunk written. Bigger batches are split; one record may exceed it alone.
pub const CHUNK_BYTES_MAX: usize = 64 * 1024;

/// Where a shop log ends.
#[derive(Clone, Debug)]
pub struct Head {
    /// The last position; 0 when empty.
    pub last_position: u64,
    /// The hash of the last record; the genesis hash when empty.
    pub hash: Hash,
}

/// The in-memory side of one shop log in either backend.
pub struct ShopLog {
    /// Where the log ends.
    pub head: tokio::sync::Mutex<Head>,
    /// Publishes the last position to waiters.
    pub last_position: watch::Sender<u64>,
}

impl ShopLog {
    /// A log that ends at `head`.
    pub fn new(head: Head) -> ShopLog {
        let (sender, _) = watch::channel(head.last_position);
        ShopLog { head: tokio::sync::Mutex::new(head), last_position: sender }
    }
}

/// A chunk: the position of its first record and the records' bytes.
pub type Chunk = (u64, Vec<u8>);

/// Checks the fence and encodes `events` into chunks after `head`; returns the chunks and
/// the new head. Nothing is written.
pub fn encode_batch(
    shop: &ShopId,
    head: &Head,
    expected_last: u64,
    events: &[Envelope],
) -> Result<(Vec<Chunk>, Head), StoreError> {
    if head.last_position != expected_last {
        return Err(StoreError::Conflict { shop: shop.clone(), expected: expected_last, actual: head.last_position });
    }
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut hash = head.hash;
    for (index, envelope) in events.iter().enumerate() {
        let position = expected_last + 1 + index as u64;
        assert_eq!(envelope.position, position, "batch positions must follow the log");
        match chunks.last_mut() {
            Some((_, bytes)) if bytes.len() < CHUNK_BYTES_MAX => {}
            _ => chunks.push((position, Vec::with_capacity(CHUNK_BYTES_MAX.min(events.len() * 256)))),
        }
        let Some((_, bytes)) = chunks.last_mut() else { unreachable!("a chunk was just pushed") };
        hash = record::encode_record(envelope, &hash, bytes).map_err(|e| StoreError::Io(format!("encoding: {e}")))?;
    }
    Ok((chunks, Head { last_position: expected_last + events.len() as u64, hash }))
}

/// Most events a page reserves room for before it is read: a page of at most this many
/// (plus the rest of its last chunk) is read without growing; a larger one grows as it goes.
const PAGE_EVENTS_RESERVED_MAX: usize = 8192;

/// Records a chunk holds beyond a page's limit, at most, in all but rare cases: a chunk is
/// [`CHUNK_BYTES_MAX`] bytes and a record rarely less than a hundred.
const CHUNK_EVENTS_SLACK: usize = 1024;

fn page_with_room(limit: usize) -> Vec<Envelope> {
    Vec::with_capacity(limit.min(PAGE_EVENTS_RESERVED_MAX) + CHUNK_EVENTS_SLACK)
}

/// Decodes the events after `after` from chunks that start with the chunk holding `after + 1`.
pub fn collect_after(
    shop: &ShopId,
    chunks: impl Iterator<Item = Result<Chunk, StoreError>>,
    after: u64,
    limit: usize,
) -> Result<Vec<Envelope>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut out = page_with_room(limit);
    for chunk in chunks {
        let (first, bytes) = chunk?;
        record::decode_records_into(&bytes, first, [0; 32], Check::Checksum, after, &mut out)
            .map_err(|corruption| StoreError::Corrupt { shop: shop.clone(), corruption })?;
        if out.len() >= limit {
            out.truncate(limit);
            break;
        }
    }
    Ok(out)
}

/// Verifies chunks in order: checksums and positions throughout, and the hash chain after
/// position `after`, anchored at `anchor` (the stored hash of the record at `after`; the
/// genesis hash when `after` is 0). `chunks` starts with the chunk holding `after` (or the
/// first chunk).
pub fn verify_chunks(
    shop: &ShopId,
    chunks: impl Iterator<Item = Result<Chunk, StoreError>>,
    after: u64,
    anchor: Hash,
) -> Result<(VerifyReport, Head), StoreError> {
    check_chunks(shop, chunks, after, anchor, None)
}

/// What [`verify_chunks`] checks, returning the events after `after` as it goes: at least
/// `limit` of them when that many follow (whole chunks, so a few more), with the hash of the
/// last one returned (`anchor` when none follow), which anchors the next page.
pub fn read_verified(
    shop: &ShopId,
    chunks: impl Iterator<Item = Result<Chunk, StoreError>>,
    after: u64,
    anchor: Hash,
    limit: usize,
) -> Result<(Vec<Envelope>, Hash), StoreError> {
    let mut out = page_with_room(limit);
    let (_, head) = check_chunks(shop, chunks, after, anchor, Some((&mut out, limit)))?;
    assert!(out.last().is_none_or(|e| e.position == head.last_position), "the page ends where its hash does");
    Ok((out, head.hash))
}

/// Checks chunks as [`verify_chunks`] says. With a page, appends the envelopes after
/// `after` to it and stops after the chunk that brings it to its limit; without one, keeps
/// nothing and checks to the end. The head is that of the last chunk checked.
fn check_chunks(
    shop: &ShopId,
    chunks: impl Iterator<Item = Result<Chunk, StoreError>>,
    after: u64,
    anchor: Hash,
    mut page: Option<(&mut Vec<Envelope>, usize)>,
) -> Result<(VerifyReport, Head), StoreError> {
    let corrupt = |position: u64, reason: String| StoreError::Corrupt {
        shop: shop.clone(),
        corruption: record::Corruption { position, reason },
    };
    let check = if after == 0 { Check::Chain } else { Check::ChainAfter(after) };
    let mut hash = anchor;
    let mut next: Option<u64> = None;
    for chunk in chunks {
        let (first, bytes) = chunk?;
        match next {
            Some(expected) if first != expected => {
                return Err(corrupt(expected, format!("next stored chunk starts at {first}")));
            }
            None if first != 1 && first > after => {
                return Err(corrupt(after.max(1), format!("the first chunk read starts at {first}")));
            }
            _ => {}
        }
        // Verifying alone keeps nothing: every record is decoded and checked, none pushed.
        let mut nothing = Vec::new();
        let (keep_after, out) = match &mut page {
            Some((out, _)) => (after, &mut **out),
            None => (u64::MAX, &mut nothing),
        };
        let (records, last) = record::decode_records_into(&bytes, first, hash, check, keep_after, out)
            .map_err(|corruption| StoreError::Corrupt { shop: shop.clone(), corruption })?;
        debug_assert!(nothing.is_empty());
        if records == 0 {
            return Err(corrupt(first, "empty chunk".to_owned()));
        }
        next = Some(first + records);
        hash = last;
        if page.as_ref().is_some_and(|(out, limit)| out.len() >= *limit) {
            break;
        }
    }
    let events = next.map_or(0, |n| n - 1);
    if events < after {
        return Err(corrupt(events + 1, format!("the log ends at {events}, before the trusted position {after}")));
    }
    Ok((VerifyReport { events, head: hash }, Head { last_position: events, hash }))
}

/// The head of a log whose last chunk is `last`: read with checksums only.
pub fn head_of(shop: &ShopId, last: Option<Chunk>) -> Result<Head, StoreError> {
    let Some((first, bytes)) = last else { return Ok(Head { last_position: 0, hash: record::genesis_hash(shop) }) };
    let (envelopes, hash) = record::decode_records(&bytes, first, [0; 32], Check::Checksum)
        .map_err(|corruption| StoreError::Corrupt { shop: shop.clone(), corruption })?;
    Ok(Head { last_position: first + envelopes.len() as u64 - 1, hash })
}

/// Waits on `log` until its last position passes `after` or `timeout` passes.
pub async fn wait_for(log: &ShopLog, after: u64, timeout: std::time::Duration) -> u64 {
    let mut receiver = log.last_position.subscribe();
    let reached = tokio::time::timeout(timeout, receiver.wait_for(|last| *last > after)).await;
    let reached = reached.ok().and_then(Result::ok).map(|last| *last);
    reached.unwrap_or_else(|| *log.last_position.borrow())
}
