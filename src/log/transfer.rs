//! Moving every shop log of a store out as JSON Lines, and into a fresh store again.
//!
//! Guarantees, before the format:
//! - [`export`] writes every event of every shop of a store, shops in sorted order, each shop's
//!   log from position 1 to where it ended when the shop's turn came. Each event line carries
//!   the hash its record gets when the events are appended again: the BLAKE3 chain of
//!   [`record::encode_record`] from [`record::genesis_hash`] of the shop.
//! - [`import`] writes into a store only if no shop of it holds an event, and only after a
//!   first pass over the whole export found nothing wrong: every line parses, has exactly the
//!   keys of its kind, positions run gap-free from 1 in each shop, streams and stream versions
//!   are the ones the store assigns, the event is written exactly as this version writes it,
//!   and every line's hash is the one recomputed from the chain. Any problem is an
//!   [`ImportError`] naming the line, the shop and the position, and nothing is written.
//! - The second pass appends in batches of at most [`BATCH_EVENTS`], and accepts each batch
//!   only if its last hash is the one the first pass computed there, so a source that changes
//!   between the passes stops the import ([`ImportError::Incomplete`] says how much was
//!   written). After each shop, the store's head must be the hash on its last line.
//! - An export imported into a fresh store gives the same envelopes, position for position.
//!   The head hash is the source's head too, unless the source holds records stored under an
//!   older schema version: those are exported as today's events, and re-encoded under
//!   today's schema they chain to a different (equally verifiable) head.
//! - The hash chain catches damage and edits that did not recompute it. It is not a
//!   signature: whoever can edit an export can recompute every hash in it.
//! - The first pass also replays every shop's events through [`State::try_apply`]: an export
//!   whose hash chain is intact but whose events do not fit (an order shipped that was never
//!   paid, more shipped than ordered, an unknown SKU, a receipt past the most on hand, an order
//!   placed twice, an amount with more than two decimal places) is refused with
//!   [`Problem::Unfit`] naming the line, shop, position and reason, and nothing is written.
//!   [`check_export`] runs that pass alone, before any store is opened; [`replay_check`]
//!   replays a stored log the same way (`verify --deep`).
//! - Bad input is an error, never a panic; lines are bounded ([`LINE_BYTES_MAX`]), and an event
//!   whose record would not fit a log ([`record::RECORD_BODY_BYTES_MAX`]) is refused.
//!
//! # Format
//!
//! UTF-8 text, one JSON object per line, each line ending in `\n`. There are three kinds of
//! line, told apart by their keys:
//!
//! - A **shop header** before the shop's events, also for a shop without events:
//!   `{"shop":"main","events":21}`: the shop id and how many event lines follow.
//! - An **event**, with exactly these keys, in this order:
//!   `shop`, `position`, `stream`, `stream_version`, `recorded_at` (milliseconds since the
//!   Unix epoch), `command_id`, `fingerprint` (32 lowercase hex digits), `correlation_id`,
//!   `actor`, `type` (the event type, [`Event::kind`]), `schema_version`
//!   ([`record::schema_version`] of the type), `event` (the [`Event`] as serde writes it: an
//!   object with one key, the type, holding the fields; money is a decimal string such as
//!   `"438.00"`) and `hash` (64 lowercase hex digits).
//! - The **end line**, last: `{"shops":1,"events":21}`, how many shops and events the export
//!   holds. An export without it is truncated and is refused.
//!
//! A line with `position` is an event, else a line with `shop` is a shop header, else it is the
//! end line.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::domain::event::Event;
use crate::domain::ids::{CommandId, ShopId, Timestamp};
use crate::log::record::{self, Envelope, Hash, RECORD_BODY_BYTES_MAX};
use crate::log::store::{AppendBatch, EventStore, StoreError};
use crate::memory::State;

/// Most events read from the store at once when exporting.
pub const PAGE_EVENTS: usize = 65_536;

/// Most events appended at once when importing.
pub const BATCH_EVENTS: usize = 4_096;

/// Longest line an import reads, in bytes, newline excluded.
pub const LINE_BYTES_MAX: usize = 16 * RECORD_BODY_BYTES_MAX;

/// How often, in events, a transfer reports progress.
const PROGRESS_EVERY: u64 = 4_096;

const EVENT_KEYS: [&str; 13] = [
    "shop",
    "position",
    "stream",
    "stream_version",
    "recorded_at",
    "command_id",
    "fingerprint",
    "correlation_id",
    "actor",
    "type",
    "schema_version",
    "event",
    "hash",
];
const SHOP_KEYS: [&str; 2] = ["shop", "events"];
const END_KEYS: [&str; 2] = ["shops", "events"];

/// What a transfer is doing when it reports progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Writing a shop's events out.
    Export,
    /// Import, first pass: reading and checking a shop's lines.
    Check,
    /// Import, second pass: appending a shop's events to the store.
    Write,
}

/// Where a transfer is: reported when a shop starts (`done` = 0), as its events go through,
/// and when it is done (`done` = `total`).
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    /// What is being done.
    pub phase: Phase,
    /// The shop.
    pub shop: &'a ShopId,
    /// Events of the shop through so far.
    pub done: u64,
    /// Events of the shop.
    pub total: u64,
}

/// One shop that was exported or imported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShopSummary {
    /// The shop.
    pub shop: ShopId,
    /// Its events.
    pub events: u64,
    /// The hash of its last record, as chained by [`record::encode_record`]; the genesis hash
    /// when it has no events.
    pub head: Hash,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The destination refused the bytes (a closed pipe, a full disk).
    #[error("cannot write the export: {0}")]
    Write(#[source] io::Error),
    /// The store returned something other than the next position.
    #[error("shop {shop}: the store returned {found} where position {expected} comes next")]
    Gap {
        /// The shop.
        shop: ShopId,
        /// The position expected.
        expected: u64,
        /// What came instead (`nothing`, or a position).
        found: String,
    },
    /// A line could not be encoded.
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// The line: a shop's header, an event of a shop, the end line.
        what: String,
        /// Why.
        reason: String,
    },
}

/// Where in an export a problem is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The line, from 1.
    pub line: u64,
    /// The shop whose part of the export it is in, once known.
    pub shop: Option<ShopId>,
    /// The position the line holds or, when that cannot be read, the one it should hold.
    pub position: Option<u64>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}", self.line)?;
        if let Some(shop) = &self.shop {
            write!(f, ", shop {shop}")?;
        }
        if let Some(position) = self.position {
            write!(f, ", position {position}")?;
        }
        Ok(())
    }
}

/// What is wrong with a line of an export.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The line is longer than [`LINE_BYTES_MAX`].
    #[error("the line is longer than {LINE_BYTES_MAX} bytes")]
    TooLong,
    /// An empty line.
    #[error("an empty line")]
    Empty,
    /// Not a JSON object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// A key that no line of its kind has.
    #[error("unknown key `{0}`")]
    UnknownKey(String),
    /// A key is missing or has a value of the wrong type.
    #[error("{0}")]
    Malformed(String),
    /// The shop id is not a valid one.
    #[error("invalid shop id: {0}")]
    BadShopId(String),
    /// A second header for a shop.
    #[error("shop {0} appears twice")]
    ShopRepeated(ShopId),
    /// An event line before any shop header.
    #[error("an event before any shop header")]
    EventOutsideShop,
    /// An event of another shop than the header's.
    #[error("an event of shop {found} among the events of shop {expected}")]
    WrongShop {
        /// The shop of the header.
        expected: ShopId,
        /// The shop the line names.
        found: String,
    },
    /// The line's position is not the next one.
    #[error("position {found} where position {expected} comes next")]
    Gap {
        /// The next position.
        expected: u64,
        /// The line's.
        found: u64,
    },
    /// More events than the header declared.
    #[error("more events than the {declared} its shop header declares")]
    TooManyEvents {
        /// What the header declared.
        declared: u64,
    },
    /// Fewer events than the header declared.
    #[error("shop {shop} declares {declared} events, but {found} follow")]
    TooFewEvents {
        /// The shop.
        shop: ShopId,
        /// What its header declared.
        declared: u64,
        /// Event lines that followed.
        found: u64,
    },
    /// The event does not read as an [`Event`].
    #[error("the event does not read: {0}")]
    BadEvent(String),
    /// The event reads, but is not written the way this version writes it.
    #[error("`{0}` is not as this version writes the event (an unknown or missing key, or a value in another form)")]
    NotCanonical(String),
    /// `type` is not the event's type.
    #[error("type {declared} for an event of type {actual}")]
    TypeMismatch {
        /// The line's `type`.
        declared: String,
        /// The event's type.
        actual: String,
    },
    /// `schema_version` is not the event type's current one.
    #[error("schema version {found} where {kind} is at version {expected}")]
    SchemaVersion {
        /// The event type.
        kind: String,
        /// Its current version.
        expected: u16,
        /// The line's.
        found: u16,
    },
    /// `stream` is not the stream the event belongs to.
    #[error("stream {found} for an event of stream {expected}")]
    StreamMismatch {
        /// The event's stream.
        expected: String,
        /// The line's.
        found: String,
    },
    /// The stream version is not the next one of its stream.
    #[error("version {found} of stream {stream}, where version {expected} comes next")]
    StreamVersion {
        /// The stream.
        stream: String,
        /// Its next version.
        expected: u64,
        /// The line's.
        found: u64,
    },
    /// A hex field of the wrong length or with other characters than `0-9 a-f`.
    #[error("`{key}` must be {digits} lowercase hex digits")]
    BadHex {
        /// The key.
        key: &'static str,
        /// Digits it must have.
        digits: usize,
    },
    /// The event's record would be larger than a log takes.
    #[error("the event's record would take {0} bytes, more than a log takes")]
    TooLarge(usize),
    /// The event cannot be encoded.
    #[error("the event cannot be encoded: {0}")]
    Encode(String),
    /// The line's hash is not the recomputed chain.
    #[error("hash {found} is not the chain's {expected}: this line, or an earlier line of the shop, was changed")]
    HashMismatch {
        /// The hash recomputed from the chain.
        expected: String,
        /// The line's.
        found: String,
    },
    /// The end line counts something else than the export holds.
    #[error("the end line counts {shops} shops and {events} events, the export holds {found_shops} and {found_events}")]
    EndMismatch {
        /// Shops counted by the end line.
        shops: u64,
        /// Events counted by the end line.
        events: u64,
        /// Shops in the export.
        found_shops: u64,
        /// Events in the export.
        found_events: u64,
    },
    /// A line after the end line.
    #[error("a line after the end line")]
    AfterEnd,
    /// The export stops before its end line.
    #[error("the export ends without its end line: it is truncated")]
    Truncated,
    /// The line differs from what the first pass read there.
    #[error("the line differs from what the check read: the export changed during the import")]
    Changed,
    /// The event is well formed but does not fit its shop as the events before it left it
    /// (an order shipped unpaid, more units shipped than ordered, an unknown SKU, a second
    /// placement): [`State::try_apply`] says why.
    #[error("the event does not fit the shop: {0}")]
    Unfit(String),
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The export could not be opened or read.
    #[error("cannot read the export: {0}")]
    Read(#[source] io::Error),
    /// A line of the export is wrong.
    #[error("{at}: {problem}")]
    Invalid {
        /// Where.
        at: Location,
        /// What.
        problem: Problem,
    },
    /// The target store already holds events.
    #[error("the target store is not empty (shop {shop} has {events} events): import only into a fresh store")]
    NotEmpty {
        /// A shop with events.
        shop: ShopId,
        /// How many.
        events: u64,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// After a shop's events were appended, the store's head is not the export's last hash.
    #[error("shop {shop}: the store's head is position {position}, hash {found}; the export ends at hash {expected}")]
    HeadMismatch {
        /// The shop.
        shop: ShopId,
        /// The store's last position.
        position: u64,
        /// The hash of the export's last line (hex).
        expected: String,
        /// The store's head hash (hex).
        found: String,
    },
    /// The second pass failed after writing: the target holds part of the export.
    #[error(
        "the import stopped after creating {shops} shops and writing {events} events, so the target is \
         incomplete (remove it and import again): {cause}"
    )]
    Incomplete {
        /// Shops created.
        shops: u64,
        /// Events written.
        events: u64,
        /// What stopped it.
        cause: Box<ImportError>,
    },
}

/// An event line as written.
#[derive(Serialize)]
struct EventLineOut<'a> {
    shop: &'a ShopId,
    position: u64,
    stream: &'a str,
    stream_version: u64,
    recorded_at: u64,
    command_id: &'a CommandId,
    fingerprint: String,
    correlation_id: &'a str,
    actor: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    schema_version: u16,
    event: &'a Event,
    hash: String,
}

/// An event line as read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLineIn {
    shop: String,
    position: u64,
    stream: String,
    stream_version: u64,
    recorded_at: u64,
    command_id: CommandId,
    fingerprint: String,
    correlation_id: String,
    actor: String,
    #[serde(rename = "type")]
    kind: String,
    schema_version: u16,
    event: Value,
    hash: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShopLine {
    shop: String,
    events: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndLine {
    shops: u64,
    events: u64,
}

/// Writes every event of every shop of `store` to `out` as JSON Lines (see the module
/// documentation for the format), reporting to `progress` as it goes (`|_| ()` for nothing).
///
/// Returns what was exported, shop by shop. Writes are buffered and flushed before
/// returning; a failed write is [`ExportError::Write`].
pub async fn export<W: Write>(
    store: &dyn EventStore,
    out: W,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<Vec<ShopSummary>, ExportError> {
    let mut out = io::BufWriter::with_capacity(1 << 16, out);
    let mut shops = store.shops().await?;
    shops.sort();
    let mut line = Vec::new();
    let mut record = Vec::new();
    let mut summaries = Vec::with_capacity(shops.len());
    for shop in shops {
        let last = store.last_position(&shop).await?;
        let encode = |reason: String, position| {
            let what = format!("the event of shop {shop} at position {position}");
            ExportError::Encode { what, reason }
        };
        write_line(&mut out, &mut line, &ShopLine { shop: shop.as_str().to_owned(), events: last }).map_err(|e| {
            e.into_export(|reason| ExportError::Encode { what: format!("the header of shop {shop}"), reason })
        })?;
        progress(Progress { phase: Phase::Export, shop: &shop, done: 0, total: last });
        let mut head = record::genesis_hash(&shop);
        let mut position = 0;
        while position < last {
            let limit = usize::try_from(last - position).unwrap_or(usize::MAX).min(PAGE_EVENTS);
            let page = store.read_from(&shop, position, limit).await?;
            if page.is_empty() {
                return Err(ExportError::Gap { shop, expected: position + 1, found: "nothing".to_owned() });
            }
            for envelope in page.iter().take(limit) {
                if envelope.position != position + 1 {
                    let found = format!("position {}", envelope.position);
                    return Err(ExportError::Gap { shop, expected: position + 1, found });
                }
                position = envelope.position;
                let kind = envelope.event.kind();
                let schema_version = record::schema_version(kind)
                    .ok_or_else(|| encode(format!("event type {kind} has no schema version"), position))?;
                record.clear();
                head =
                    record::encode_record(envelope, &head, &mut record).map_err(|e| encode(e.to_string(), position))?;
                let event_line = EventLineOut {
                    shop: &shop,
                    position,
                    stream: &envelope.stream,
                    stream_version: envelope.stream_version,
                    recorded_at: envelope.recorded_at.0,
                    command_id: &envelope.command_id,
                    fingerprint: hex(&envelope.fingerprint),
                    correlation_id: &envelope.correlation_id,
                    actor: &envelope.actor,
                    kind,
                    schema_version,
                    event: &envelope.event,
                    hash: hex(&head),
                };
                write_line(&mut out, &mut line, &event_line).map_err(|e| e.into_export(|r| encode(r, position)))?;
                if position.is_multiple_of(PROGRESS_EVERY) || position == last {
                    progress(Progress { phase: Phase::Export, shop: &shop, done: position, total: last });
                }
            }
        }
        summaries.push(ShopSummary { shop, events: last, head });
    }
    let events = summaries.iter().map(|s| s.events).sum();
    write_line(&mut out, &mut line, &EndLine { shops: summaries.len() as u64, events })
        .map_err(|e| e.into_export(|reason| ExportError::Encode { what: "the end line".to_owned(), reason }))?;
    out.flush().map_err(ExportError::Write)?;
    Ok(summaries)
}

/// Why a line could not be written.
enum LineError {
    Encode(String),
    Write(io::Error),
}

impl LineError {
    fn into_export(self, encode: impl FnOnce(String) -> ExportError) -> ExportError {
        match self {
            LineError::Encode(reason) => encode(reason),
            LineError::Write(error) => ExportError::Write(error),
        }
    }
}

/// Serializes `value` into `buffer` first, so that an IO error is never taken for an encoding
/// error, then writes it and a newline.
fn write_line<W: Write, T: Serialize>(out: &mut W, buffer: &mut Vec<u8>, value: &T) -> Result<(), LineError> {
    buffer.clear();
    serde_json::to_writer(&mut *buffer, value).map_err(|e| LineError::Encode(e.to_string()))?;
    buffer.push(b'\n');
    out.write_all(buffer).map_err(LineError::Write)
}

/// Imports the export in the file at `path` into `store`; see [`import`].
pub async fn import_file(
    store: &dyn EventStore,
    path: &Path,
    progress: impl FnMut(Progress<'_>),
) -> Result<Vec<ShopSummary>, ImportError> {
    import(store, || std::fs::File::open(path).map(io::BufReader::new), progress).await
}

/// Imports an export into `store`, which must not hold any event.
///
/// `open` is called twice and must give the same bytes both times: the first pass checks the
/// whole export and writes nothing; the second appends it. Reports to `progress` as it goes
/// (`|_| ()` for nothing). Returns what was imported, shop by shop, in the export's order.
pub async fn import<R: BufRead>(
    store: &dyn EventStore,
    open: impl Fn() -> io::Result<R>,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<Vec<ShopSummary>, ImportError> {
    ensure_empty(store).await?;
    let checked = check_export(open().map_err(ImportError::Read)?, &mut progress)?;
    import_checked(store, open, &checked, progress).await
}

/// An export that passed the first pass of [`import`] ([`check_export`]): what the second
/// pass must find again.
pub struct CheckedExport {
    plan: Vec<Planned>,
}

/// The first pass of [`import`] on its own, touching no store: checks every line of the
/// export and replays every shop's events through [`State::try_apply`], so that an export
/// whose events do not fit (a paid order's payment removed, more shipped than ordered, an
/// unknown SKU) is refused before a store is even opened.
pub fn check_export<R: BufRead>(
    reader: R,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<CheckedExport, ImportError> {
    check(reader, &mut progress).map(|plan| CheckedExport { plan })
}

/// The second pass of [`import`]: appends to `store`, which must not hold any event, the
/// export that `open` gives, which must be the one [`check_export`] checked.
pub async fn import_checked<R: BufRead>(
    store: &dyn EventStore,
    open: impl Fn() -> io::Result<R>,
    checked: &CheckedExport,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<Vec<ShopSummary>, ImportError> {
    let plan = &checked.plan;
    ensure_empty(store).await?;
    let mut written = Written::default();
    match write(store, open, plan, &mut written, &mut progress).await {
        Ok(summaries) => Ok(summaries),
        Err(cause) if written.shops == 0 && written.events == 0 => Err(cause),
        Err(cause) => {
            Err(ImportError::Incomplete { shops: written.shops, events: written.events, cause: Box::new(cause) })
        }
    }
}

async fn ensure_empty(store: &dyn EventStore) -> Result<(), ImportError> {
    for shop in store.shops().await? {
        let events = store.last_position(&shop).await?;
        if events > 0 {
            return Err(ImportError::NotEmpty { shop, events });
        }
    }
    Ok(())
}

/// What the first pass found of one shop.
struct Planned {
    shop: ShopId,
    events: u64,
    /// The hash at the end of each batch the second pass appends.
    batch_heads: Vec<Hash>,
}

/// What the second pass has written so far.
#[derive(Default)]
struct Written {
    shops: u64,
    events: u64,
}

/// The first pass: checks every line and returns what the second pass must find.
fn check<R: BufRead>(reader: R, progress: &mut impl FnMut(Progress<'_>)) -> Result<Vec<Planned>, ImportError> {
    let mut lines = Lines::new(reader);
    let mut checker = Checker::default();
    let mut plan: Vec<Planned> = Vec::new();
    // The shop being read, folded as far as its lines go: one shop's state at a time.
    let mut state = State::new();
    while let Some((number, bytes)) = lines.next()? {
        match checker.line(number, bytes)? {
            Item::Shop { shop, events } => {
                progress(Progress { phase: Phase::Check, shop: &shop, done: 0, total: events });
                plan.push(Planned { shop, events, batch_heads: Vec::new() });
                state = State::new();
            }
            Item::Event { envelope, hash, last_of_shop } => {
                // The checker only yields events after their shop's header.
                let Some(planned) = plan.last_mut() else { continue };
                if let Err(unfit) = state.try_apply(&envelope.event) {
                    let at =
                        Location { line: number, shop: Some(planned.shop.clone()), position: Some(envelope.position) };
                    return Err(ImportError::Invalid { at, problem: Problem::Unfit(unfit.reason) });
                }
                if last_of_shop || envelope.position.is_multiple_of(BATCH_EVENTS as u64) {
                    planned.batch_heads.push(hash);
                }
                if last_of_shop || envelope.position.is_multiple_of(PROGRESS_EVERY) {
                    let (shop, total) = (&planned.shop, planned.events);
                    progress(Progress { phase: Phase::Check, shop, done: envelope.position, total });
                }
            }
            Item::End => {}
        }
    }
    checker.finish(lines.number)?;
    Ok(plan)
}

/// The second pass: checks every line again, and appends batch by batch what the first pass
/// checked.
async fn write<R: BufRead>(
    store: &dyn EventStore,
    open: impl Fn() -> io::Result<R>,
    plan: &[Planned],
    written: &mut Written,
    progress: &mut impl FnMut(Progress<'_>),
) -> Result<Vec<ShopSummary>, ImportError> {
    let mut lines = Lines::new(open().map_err(ImportError::Read)?);
    let mut checker = Checker::default();
    let mut summaries = Vec::with_capacity(plan.len());
    let mut batch: Vec<Envelope> = Vec::with_capacity(BATCH_EVENTS);
    let mut batches = 0;
    while let Some((number, bytes)) = lines.next()? {
        let item = checker.line(number, bytes)?;
        let changed = |position| ImportError::Invalid {
            at: Location { line: number, shop: checker.shop().cloned(), position },
            problem: Problem::Changed,
        };
        match item {
            Item::Shop { shop, events } => {
                let planned = plan.get(written.shops as usize);
                if planned.map(|p| (&p.shop, p.events)) != Some((&shop, events)) {
                    return Err(changed(None));
                }
                store.create_shop(&shop).await?;
                written.shops += 1;
                batches = 0;
                progress(Progress { phase: Phase::Write, shop: &shop, done: 0, total: events });
                if events == 0 {
                    let head = record::genesis_hash(&shop);
                    check_head(store, &shop, 0, head).await?;
                    summaries.push(ShopSummary { shop, events, head });
                }
            }
            Item::Event { envelope, hash, last_of_shop } => {
                let position = envelope.position;
                batch.push(*envelope);
                if !last_of_shop && batch.len() < BATCH_EVENTS {
                    continue;
                }
                // The checker yields events only after their shop's header, which was planned.
                let planned = (written.shops as usize).checked_sub(1).and_then(|index| plan.get(index));
                let Some(planned) = planned else { return Err(changed(Some(position))) };
                if planned.batch_heads.get(batches) != Some(&hash) {
                    return Err(changed(Some(position)));
                }
                batches += 1;
                let events = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_EVENTS));
                let count = events.len() as u64;
                let expected_last = position - count;
                store.append(&planned.shop, &AppendBatch { expected_last, events, rejections: Vec::new() }).await?;
                written.events += count;
                let (shop, total) = (&planned.shop, planned.events);
                progress(Progress { phase: Phase::Write, shop, done: position, total });
                if last_of_shop {
                    check_head(store, shop, position, hash).await?;
                    summaries.push(ShopSummary { shop: shop.clone(), events: position, head: hash });
                }
            }
            Item::End => {}
        }
    }
    checker.finish(lines.number)?;
    if summaries.len() != plan.len() {
        let at = Location { line: lines.number, shop: None, position: None };
        return Err(ImportError::Invalid { at, problem: Problem::Changed });
    }
    Ok(summaries)
}

async fn check_head(store: &dyn EventStore, shop: &ShopId, events: u64, expected: Hash) -> Result<(), ImportError> {
    let (position, found) = store.head(shop).await?;
    if (position, found) != (events, expected) {
        let (expected, found) = (hex(&expected), hex(&found));
        return Err(ImportError::HeadMismatch { shop: shop.clone(), position, expected, found });
    }
    Ok(())
}

/// Replays `shop`'s log in `store` from its first event through [`State::try_apply`], as
/// recovery does, reading [`PAGE_EVENTS`] at a time (each record's checksum is checked; the
/// chain is [`EventStore::verify`]'s part), and checks each event's stream and stream
/// version; returns how many events the log holds. The first event that does not fit is
/// [`StoreError::Corrupt`] at its position, naming why: what `verify --deep` reports, and what
/// would make the engine refuse the shop. Holds one shop's state in memory.
pub async fn replay_check(store: &dyn EventStore, shop: &ShopId) -> Result<u64, StoreError> {
    let mut state = State::new();
    let mut streams: HashMap<compact_str::CompactString, u64> = HashMap::new();
    let mut after = 0;
    loop {
        let page = store.read_from(shop, after, PAGE_EVENTS).await?;
        if page.is_empty() {
            return Ok(after);
        }
        for envelope in &page {
            let corrupt = |reason: String| {
                let corruption = record::Corruption { position: envelope.position, reason };
                StoreError::Corrupt { shop: shop.clone(), corruption }
            };
            if envelope.position != after + 1 {
                return Err(corrupt(format!("position {} follows position {after}", envelope.position)));
            }
            let stream = record::stream_of(&envelope.event);
            if envelope.stream != stream {
                return Err(corrupt(format!("stream {} for an event of stream {stream}", envelope.stream)));
            }
            let fitted = state.try_apply(&envelope.event);
            let order_version = fitted.map_err(|unfit| corrupt(format!("the event does not fit the shop: {unfit}")))?;
            let version = order_version.unwrap_or_else(|| {
                let counted = streams.entry(stream).or_insert(0);
                *counted += 1;
                *counted
            });
            if version != envelope.stream_version {
                let found = envelope.stream_version;
                return Err(corrupt(format!(
                    "version {found} of stream {}, where {version} comes next",
                    envelope.stream
                )));
            }
            after = envelope.position;
        }
    }
}

/// The lines of an export, each at most [`LINE_BYTES_MAX`] bytes read.
struct Lines<R> {
    reader: R,
    buffer: Vec<u8>,
    number: u64,
}

impl<R: BufRead> Lines<R> {
    fn new(reader: R) -> Lines<R> {
        Lines { reader, buffer: Vec::new(), number: 0 }
    }

    /// The next line's number and bytes without the newline; a line longer than the limit
    /// comes back cut at one byte past it.
    fn next(&mut self) -> Result<Option<(u64, &[u8])>, ImportError> {
        self.buffer.clear();
        let limit = LINE_BYTES_MAX as u64 + 1;
        let read = (&mut self.reader).take(limit).read_until(b'\n', &mut self.buffer).map_err(ImportError::Read)?;
        if read == 0 {
            return Ok(None);
        }
        self.number += 1;
        if self.buffer.last() == Some(&b'\n') {
            self.buffer.pop();
        }
        Ok(Some((self.number, &self.buffer)))
    }
}

/// A checked line.
enum Item {
    Shop { shop: ShopId, events: u64 },
    Event { envelope: Box<Envelope>, hash: Hash, last_of_shop: bool },
    End,
}

/// The shop whose lines are being read.
struct Cursor {
    shop: ShopId,
    declared: u64,
    position: u64,
    head: Hash,
    streams: HashMap<compact_str::CompactString, u64>,
}

/// Checks lines one after another; both passes use it.
#[derive(Default)]
struct Checker {
    cursor: Option<Cursor>,
    seen: BTreeSet<ShopId>,
    events: u64,
    ended: bool,
    record: Vec<u8>,
}

impl Checker {
    fn shop(&self) -> Option<&ShopId> {
        self.cursor.as_ref().map(|c| &c.shop)
    }

    fn fail(&self, line: u64, position: Option<u64>, problem: Problem) -> ImportError {
        ImportError::Invalid { at: Location { line, shop: self.shop().cloned(), position }, problem }
    }

    /// The position the next event line of the current shop should hold, if one should come.
    fn next_position(&self) -> Option<u64> {
        self.cursor.as_ref().filter(|c| c.position < c.declared).map(|c| c.position + 1)
    }

    fn line(&mut self, number: u64, bytes: &[u8]) -> Result<Item, ImportError> {
        let expected = self.next_position();
        if self.ended {
            return Err(self.fail(number, None, Problem::AfterEnd));
        }
        if bytes.len() > LINE_BYTES_MAX {
            return Err(self.fail(number, expected, Problem::TooLong));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(self.fail(number, expected, Problem::Empty));
        }
        let map: Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| self.fail(number, expected, Problem::NotJson(e.to_string())))?;
        if map.contains_key("position") {
            self.event(number, map)
        } else if map.contains_key("shop") {
            self.header(number, map)
        } else {
            self.end(number, map)
        }
    }

    /// Parses `map` as a `T` that has exactly `keys`.
    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        number: u64,
        position: Option<u64>,
        keys: &[&str],
        map: Map<String, Value>,
    ) -> Result<T, ImportError> {
        if let Some(key) = map.keys().find(|k| !keys.contains(&k.as_str())) {
            return Err(self.fail(number, position, Problem::UnknownKey(key.clone())));
        }
        serde_json::from_value(Value::Object(map))
            .map_err(|e| self.fail(number, position, Problem::Malformed(e.to_string())))
    }

    /// Checks that the current shop got all its events.
    fn close_shop(&self, number: u64) -> Result<(), ImportError> {
        match &self.cursor {
            Some(c) if c.position < c.declared => {
                let problem = Problem::TooFewEvents { shop: c.shop.clone(), declared: c.declared, found: c.position };
                Err(self.fail(number, None, problem))
            }
            _ => Ok(()),
        }
    }

    fn header(&mut self, number: u64, map: Map<String, Value>) -> Result<Item, ImportError> {
        let header: ShopLine = self.parse(number, None, &SHOP_KEYS, map)?;
        self.close_shop(number)?;
        self.cursor = None;
        let shop = ShopId::new(&header.shop).map_err(|e| self.fail(number, None, Problem::BadShopId(e)))?;
        if !self.seen.insert(shop.clone()) {
            return Err(self.fail(number, None, Problem::ShopRepeated(shop)));
        }
        let head = record::genesis_hash(&shop);
        let cursor = Cursor { shop: shop.clone(), declared: header.events, position: 0, head, streams: HashMap::new() };
        self.cursor = Some(cursor);
        Ok(Item::Shop { shop, events: header.events })
    }

    fn end(&mut self, number: u64, map: Map<String, Value>) -> Result<Item, ImportError> {
        let end: EndLine = self.parse(number, None, &END_KEYS, map)?;
        self.close_shop(number)?;
        self.cursor = None;
        let (found_shops, found_events) = (self.seen.len() as u64, self.events);
        if (end.shops, end.events) != (found_shops, found_events) {
            let problem = Problem::EndMismatch { shops: end.shops, events: end.events, found_shops, found_events };
            return Err(self.fail(number, None, problem));
        }
        self.ended = true;
        Ok(Item::End)
    }

    fn event(&mut self, number: u64, map: Map<String, Value>) -> Result<Item, ImportError> {
        let at = map.get("position").and_then(Value::as_u64).or(self.next_position());
        let line: EventLineIn = self.parse(number, at, &EVENT_KEYS, map)?;
        let fail = |this: &Checker, problem| Err(this.fail(number, Some(line.position), problem));
        let Some(cursor) = &self.cursor else { return fail(self, Problem::EventOutsideShop) };
        if line.shop != cursor.shop.as_str() {
            return fail(self, Problem::WrongShop { expected: cursor.shop.clone(), found: line.shop.clone() });
        }
        if cursor.position == cursor.declared {
            return fail(self, Problem::TooManyEvents { declared: cursor.declared });
        }
        if line.position != cursor.position + 1 {
            return fail(self, Problem::Gap { expected: cursor.position + 1, found: line.position });
        }
        let event = match Event::deserialize(&line.event) {
            Ok(event) => event,
            Err(error) => return fail(self, Problem::BadEvent(error.to_string())),
        };
        let canonical = match serde_json::to_value(&event) {
            Ok(canonical) => canonical,
            Err(error) => return fail(self, Problem::Encode(error.to_string())),
        };
        if let Some(path) = difference(&line.event, &canonical, "event".to_owned()) {
            return fail(self, Problem::NotCanonical(path));
        }
        let kind = event.kind();
        if line.kind != kind {
            return fail(self, Problem::TypeMismatch { declared: line.kind.clone(), actual: kind.to_owned() });
        }
        let schema_version = record::schema_version(kind).unwrap_or(0);
        if line.schema_version != schema_version {
            let found = line.schema_version;
            return fail(self, Problem::SchemaVersion { kind: kind.to_owned(), expected: schema_version, found });
        }
        let stream = record::stream_of(&event);
        if line.stream != stream {
            return fail(
                self,
                Problem::StreamMismatch { expected: stream.as_str().to_owned(), found: line.stream.clone() },
            );
        }
        let stream_version = cursor.streams.get(&stream).map_or(1, |v| v + 1);
        if line.stream_version != stream_version {
            let found = line.stream_version;
            return fail(
                self,
                Problem::StreamVersion { stream: stream.as_str().to_owned(), expected: stream_version, found },
            );
        }
        let Some(fingerprint) = from_hex::<16>(&line.fingerprint) else {
            return fail(self, Problem::BadHex { key: "fingerprint", digits: 32 });
        };
        let Some(hash) = from_hex::<32>(&line.hash) else {
            return fail(self, Problem::BadHex { key: "hash", digits: 64 });
        };
        let envelope = Envelope {
            position: line.position,
            stream,
            stream_version,
            recorded_at: Timestamp(line.recorded_at),
            command_id: line.command_id,
            fingerprint,
            correlation_id: line.correlation_id.into(),
            actor: line.actor.into(),
            event,
        };
        let position = envelope.position;
        let fail = |this: &Checker, problem| Err(this.fail(number, Some(position), problem));
        match crate::log::record::record_body_len(&envelope) {
            Ok(bytes) if bytes > RECORD_BODY_BYTES_MAX => return fail(self, Problem::TooLarge(bytes)),
            Ok(_) => {}
            Err(error) => return fail(self, Problem::Encode(error.to_string())),
        }
        self.record.clear();
        let computed = match record::encode_record(&envelope, &cursor.head, &mut self.record) {
            Ok(computed) => computed,
            Err(error) => return fail(self, Problem::Encode(error.to_string())),
        };
        if computed != hash {
            return fail(self, Problem::HashMismatch { expected: hex(&computed), found: hex(&hash) });
        }
        self.events += 1;
        let Some(cursor) = &mut self.cursor else { return fail(self, Problem::EventOutsideShop) };
        cursor.position = position;
        cursor.head = computed;
        cursor.streams.insert(envelope.stream.clone(), stream_version);
        let last_of_shop = cursor.position == cursor.declared;
        Ok(Item::Event { envelope: Box::new(envelope), hash, last_of_shop })
    }

    /// At the end of the input, `last_line` being the number of the last line read.
    fn finish(&self, last_line: u64) -> Result<(), ImportError> {
        if self.ended {
            return Ok(());
        }
        Err(self.fail(last_line + 1, self.next_position(), Problem::Truncated))
    }
}

/// The path of the first place where `input` differs from `canonical`, if any.
fn difference(input: &Value, canonical: &Value, path: String) -> Option<String> {
    match (input, canonical) {
        (Value::Object(input), Value::Object(canonical)) => {
            for (key, value) in input {
                let path = format!("{path}.{key}");
                match canonical.get(key) {
                    None => return Some(path),
                    Some(expected) => {
                        if let Some(path) = difference(value, expected, path) {
                            return Some(path);
                        }
                    }
                }
            }
            canonical.keys().find(|key| !input.contains_key(*key)).map(|key| format!("{path}.{key}"))
        }
        (Value::Array(input), Value::Array(canonical)) if input.len() == canonical.len() => input
            .iter()
            .zip(canonical)
            .enumerate()
            .find_map(|(index, (value, expected))| difference(value, expected, format!("{path}[{index}]"))),
        _ => (input != canonical).then_some(path),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if text.len() != 2 * N {
        return None;
    }
    let mut bytes = [0; N];
    for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_other_text() {
        let bytes: [u8; 4] = [0x00, 0x7f, 0xa5, 0xff];
        assert_eq!(hex(&bytes), "007fa5ff");
        assert_eq!(from_hex::<4>("007fa5ff"), Some(bytes));
        assert_eq!(from_hex::<4>("007FA5FF"), None, "uppercase");
        assert_eq!(from_hex::<4>("007fa5f"), None, "too short");
        assert_eq!(from_hex::<4>("007fa5fg"), None, "not hex");
        assert_eq!(from_hex::<2>("é1"), None, "not ascii");
    }

    #[test]
    fn difference_names_the_first_path_that_differs() {
        let canonical = serde_json::json!({"a": {"b": [1, {"c": "x"}]}, "d": null});
        assert_eq!(difference(&canonical, &canonical, "e".into()), None);
        let extra = serde_json::json!({"a": {"b": [1, {"c": "x", "z": 1}]}, "d": null});
        assert_eq!(difference(&extra, &canonical, "e".into()).as_deref(), Some("e.a.b[1].z"));
        let missing = serde_json::json!({"a": {"b": [1, {"c": "x"}]}});
        assert_eq!(difference(&missing, &canonical, "e".into()).as_deref(), Some("e.d"));
        let other = serde_json::json!({"a": {"b": [1, {"c": "y"}]}, "d": null});
        assert_eq!(difference(&other, &canonical, "e".into()).as_deref(), Some("e.a.b[1].c"));
    }
}
