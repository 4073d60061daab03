//! The shop log's record format: envelopes, framing, checksums and the hash chain.
//!
//! Guarantees, before the code:
//! - Every stored event is one *record*. A record is framed as
//!   `body_len: u32 LE | body | crc32: u32 LE | hash: [u8; 32]`, where `crc32` covers the body
//!   and `hash = BLAKE3(previous record's hash | body)`. The first record of a shop chains from
//!   `BLAKE3("emporium shop log v1" | shop id)`, so a log copied into another shop fails too.
//! - The checksum is verified on every read. The chain is verified when a shop is opened and by
//!   `emporium verify`: any edit, deletion or reordering of records breaks it at the first
//!   record affected, and verification names that record's position.
//! - The body is `format version: u8 | postcard(header) | postcard(event)`. postcard has a
//!   documented, stable wire format. The header carries the event's type name and schema
//!   version; an event stored under an older schema version is decoded into today's type by
//!   [`upcast`] (see [`SCHEMA_VERSIONS`]).
//! - A body decodes only to an event whose amounts a decision could record (at most two
//!   decimal places, within range: [`Event::amount_out_of_form`]); any other is a corrupt
//!   record at its position, like one that does not decode.
//!
//! Encoding happens only here, at the edge between the engine and a store.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::domain::event::{Event, Subject};
use crate::domain::ids::{CommandId, ShopId, Timestamp};

/// The version of the body layout. Bumped when the header changes shape.
pub const RECORD_FORMAT_VERSION: u8 = 1;

/// Bytes of framing around a body: length, checksum, hash.
pub const RECORD_OVERHEAD_BYTES: usize = 4 + 4 + 32;

/// Largest body accepted when reading; anything longer is corruption.
pub const RECORD_BODY_BYTES_MAX: usize = 1 << 20;

/// A link of the hash chain.
pub type Hash = [u8; 32];

/// A fingerprint of a command, to tell a retry from a different command with the same id.
pub type Fingerprint = [u8; 16];

/// An event with everything the log knows about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Position in its shop's log: gap-free, from 1.
    pub position: u64,
    /// The stream it belongs to: `order-<id>`, `sku-<sku>` or `reservation-<id>`.
    pub stream: CompactString,
    /// Version within the stream: gap-free, from 1.
    pub stream_version: u64,
    /// When the engine recorded it, by the engine clock.
    pub recorded_at: Timestamp,
    /// The command that produced it.
    pub command_id: CommandId,
    /// That command's fingerprint.
    pub fingerprint: Fingerprint,
    /// Groups the commands of one business transaction; the command id when not given.
    pub correlation_id: CompactString,
    /// Who sent the command.
    pub actor: CompactString,
    /// The fact.
    pub event: Event,
}

impl emporium_projections::Fact for Envelope {
    fn position(&self) -> u64 {
        self.position
    }

    fn recorded_at_ms(&self) -> u64 {
        self.recorded_at.0
    }
}

/// What is stored before the payload. Field order is part of the format. Texts are `S` and
/// the command id `C`: borrowed when writing (every string encodes the same, owned or not),
/// owned when reading.
#[derive(Serialize, Deserialize)]
struct Header<S, C> {
    position: u64,
    stream: S,
    stream_version: u64,
    kind: S,
    schema_version: u16,
    recorded_at: Timestamp,
    command_id: C,
    fingerprint: Fingerprint,
    correlation_id: S,
    actor: S,
}

/// The current schema version of every event type. An event type's version goes up by one
/// whenever its payload changes shape; [`upcast`] reads every older version.
pub const SCHEMA_VERSIONS: &[(&str, u16)] = &[
    ("product_listed", 1),
    ("price_changed", 1),
    ("product_delisted", 1),
    ("product_relisted", 1),
    ("stock_received", 1),
    ("stock_counted", 1),
    ("stock_reserved", 1),
    ("reservation_released", 1),
    ("reservation_expired", 1),
    ("order_placed", 1),
    ("order_paid", 1),
    ("order_cancelled", 2),
    ("order_expired", 1),
    ("shipment_dispatched", 1),
    ("shipment_delivered", 1),
    ("return_requested", 1),
    ("return_received", 1),
    ("refund_issued", 1),
];

/// The current schema version of an event type.
pub fn schema_version(kind: &str) -> Option<u16> {
    SCHEMA_VERSIONS.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
}

/// The stream an event belongs to: `sku-<sku>`, `reservation-<id>` or `order-<id>`.
pub fn stream_of(event: &Event) -> CompactString {
    match event.subject() {
        Subject::Sku(sku) => compact_str::format_compact!("sku-{sku}"),
        Subject::Reservation(reservation_id) => reservation_stream(reservation_id),
        Subject::Order(order_id) => order_stream(order_id),
    }
}

/// The stream of an order's events.
pub fn order_stream(order_id: &crate::domain::ids::OrderId) -> CompactString {
    compact_str::format_compact!("order-{order_id}")
}

/// The stream of a checkout hold's events.
pub fn reservation_stream(reservation_id: &crate::domain::ids::ReservationId) -> CompactString {
    compact_str::format_compact!("reservation-{reservation_id}")
}

/// The hash the first record of `shop` chains from.
pub fn genesis_hash(shop: &ShopId) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"emporium shop log v1");
    hasher.update(shop.as_str().as_bytes());
    *hasher.finalize().as_bytes()
}

/// The fingerprint of a command's canonical encoding.
pub fn fingerprint<T: Serialize>(command: &T) -> Fingerprint {
    thread_local! {
        /// Reused for every fingerprint on the thread: the writer takes one per command.
        static ENCODED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    /// A command encoding longer than this is not kept for reuse.
    const KEPT_BYTES_MAX: usize = 64 * 1024;
    let mut fingerprint = [0u8; 16];
    ENCODED.with(|encoded| {
        let mut buffer = encoded.take();
        buffer.clear();
        // Commands are plain data; encoding them cannot fail. Should it ever, every such
        // command shares the zero fingerprint and a reused id reads as a retry.
        if let Ok(bytes) = postcard::to_extend(command, buffer) {
            fingerprint.copy_from_slice(&blake3::hash(&bytes).as_bytes()[..16]);
            if bytes.capacity() <= KEPT_BYTES_MAX {
                encoded.replace(bytes);
            }
        }
    });
    fingerprint
}

fn header(envelope: &Envelope) -> Header<&str, &CommandId> {
    let kind = envelope.event.kind();
    Header {
        position: envelope.position,
        stream: &envelope.stream,
        stream_version: envelope.stream_version,
        kind,
        schema_version: schema_version(kind).unwrap_or(0),
        recorded_at: envelope.recorded_at,
        command_id: &envelope.command_id,
        fingerprint: envelope.fingerprint,
        correlation_id: &envelope.correlation_id,
        actor: &envelope.actor,
    }
}

/// The length of the body [`encode_record`] writes for `envelope`, without writing it.
///
/// `encode_record` asserts that a body fits in [`RECORD_BODY_BYTES_MAX`]: events the engine
/// decided always do (every field is bounded), so only an envelope built from outside input
/// needs to be measured first.
pub fn record_body_len(envelope: &Envelope) -> Result<usize, postcard::Error> {
    use postcard::ser_flavors::Size;
    let header_len = postcard::serialize_with_flavor(&header(envelope), Size::default())?;
    let event_len = postcard::serialize_with_flavor(&envelope.event, Size::default())?;
    Ok(1 + header_len + event_len)
}

/// Appends the record of `envelope` to `out`, chained from `previous`; returns its hash.
pub fn encode_record(envelope: &Envelope, previous: &Hash, out: &mut Vec<u8>) -> Result<Hash, postcard::Error> {
    let header = header(envelope);
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(RECORD_FORMAT_VERSION);
    let out_taken = std::mem::take(out);
    let out_taken = postcard::to_extend(&header, out_taken)?;
    let out_taken = postcard::to_extend(&envelope.event, out_taken)?;
    *out = out_taken;
    let body_len = out.len() - start - 4;
    assert!(body_len <= RECORD_BODY_BYTES_MAX, "record body of {body_len} bytes");
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    let body = &out[start + 4..];
    let crc = crc32fast::hash(body);
    let hash = chain(previous, body);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&hash);
    Ok(hash)
}

fn chain(previous: &Hash, body: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(previous);
    hasher.update(body);
    *hasher.finalize().as_bytes()
}

/// A record that fails verification, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("corrupt record at position {position}: {reason}")]
pub struct Corruption {
    /// The position of the first record that fails.
    pub position: u64,
    /// What failed.
    pub reason: String,
}

/// How much of a record to check when decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Framing, checksum and decoding: every read does this.
    Checksum,
    /// All of the above and the hash chain from the given previous hash.
    Chain,
    /// Checksums up to position `n`, whose stored hash must be the given one (a trusted
    /// anchor, such as a snapshot's head), then the chain from it.
    ChainAfter(u64),
}

/// Decodes consecutive records from `bytes`, the first expected at `first_position`.
///
/// `previous` is the hash of the record before the first; with [`Check::Chain`] each record's
/// hash must extend it. Returns the envelopes and the hash of the last record.
pub fn decode_records(
    bytes: &[u8],
    first_position: u64,
    previous: Hash,
    check: Check,
) -> Result<(Vec<Envelope>, Hash), Corruption> {
    let mut envelopes = Vec::new();
    let (_, last) = decode_records_into(bytes, first_position, previous, check, 0, &mut envelopes)?;
    Ok((envelopes, last))
}

/// [`decode_records`], appending to `out` the envelopes after position `keep_after` (those
/// before it are checked all the same): how pages are read without moving what each chunk
/// decoded. Returns how many records there were and the hash of the last; on corruption,
/// `out` may hold some of the records before it.
pub fn decode_records_into(
    bytes: &[u8],
    first_position: u64,
    previous: Hash,
    check: Check,
    keep_after: u64,
    out: &mut Vec<Envelope>,
) -> Result<(u64, Hash), Corruption> {
    let anchor = previous;
    let mut previous = previous;
    let mut rest = bytes;
    let mut position = first_position;
    while !rest.is_empty() {
        let corrupt = |reason: String| Corruption { position, reason };
        if rest.len() < RECORD_OVERHEAD_BYTES {
            return Err(corrupt(format!("{} trailing bytes are not a record", rest.len())));
        }
        let body_len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if body_len > RECORD_BODY_BYTES_MAX || rest.len() < RECORD_OVERHEAD_BYTES + body_len {
            return Err(corrupt(format!("record length {body_len} overruns the stored bytes")));
        }
        let body = &rest[4..4 + body_len];
        let crc_at = 4 + body_len;
        let stored_crc = u32::from_le_bytes([rest[crc_at], rest[crc_at + 1], rest[crc_at + 2], rest[crc_at + 3]]);
        if crc32fast::hash(body) != stored_crc {
            return Err(corrupt("checksum mismatch".to_owned()));
        }
        let stored_hash: &[u8] = &rest[crc_at + 4..crc_at + 4 + 32];
        let hash = chain(&previous, body);
        let chained = match check {
            Check::Checksum => false,
            Check::Chain => true,
            Check::ChainAfter(n) => position > n,
        };
        if chained && stored_hash != hash {
            return Err(corrupt("hash chain broken".to_owned()));
        }
        if check == Check::ChainAfter(position) && stored_hash != anchor {
            return Err(corrupt("the record's hash is not the trusted one (the log changed)".to_owned()));
        }
        let envelope = decode_body(body).map_err(corrupt)?;
        if envelope.position != position {
            return Err(corrupt(format!("record says position {}", envelope.position)));
        }
        if position > keep_after {
            out.push(envelope);
        }
        previous = if chained { hash } else { stored_hash.try_into().unwrap_or(hash) };
        rest = &rest[RECORD_OVERHEAD_BYTES + body_len..];
        position += 1;
    }
    Ok((position - first_position, previous))
}

fn decode_body(body: &[u8]) -> Result<Envelope, String> {
    let Some((&format, rest)) = body.split_first() else { return Err("empty body".to_owned()) };
    if format != RECORD_FORMAT_VERSION {
        return Err(format!("unknown record format {format}"));
    }
    let (header, payload) = postcard::take_from_bytes::<Header<CompactString, CommandId>>(rest)
        .map_err(|e| format!("header does not decode: {e}"))?;
    let current = schema_version(&header.kind).ok_or_else(|| format!("unknown event type {}", header.kind))?;
    let event = if header.schema_version == current {
        let (event, trailing) =
            postcard::take_from_bytes::<Event>(payload).map_err(|e| format!("payload does not decode: {e}"))?;
        if !trailing.is_empty() {
            return Err(format!("{} bytes after the payload", trailing.len()));
        }
        event
    } else {
        upcast::decode(&header.kind, header.schema_version, payload)?
    };
    if event.kind() != header.kind {
        return Err(format!("header says {}, payload is {}", header.kind, event.kind()));
    }
    if let Some(amount) = event.amount_out_of_form() {
        return Err(format!("{} records the amount {amount}, which no decision records", event.kind()));
    }
    Ok(Envelope {
        position: header.position,
        stream: header.stream,
        stream_version: header.stream_version,
        recorded_at: header.recorded_at,
        command_id: header.command_id,
        fingerprint: header.fingerprint,
        correlation_id: header.correlation_id,
        actor: header.actor,
        event,
    })
}

/// Reading events stored under older schema versions into today's types.
///
/// A payload is the postcard encoding of an [`Event`]: the variant's index as a varint,
/// then its fields in order. An upcaster reads the index, decodes the old fields into a
/// struct shaped as the variant was, and builds today's variant from it. Every change so far:
/// - `order_cancelled` v1 → v2: `by` (who asked) was added; v1 events did not record it
///   and read as `by: None`.
pub mod upcast {
    use serde::Deserialize;

    use crate::domain::event::Event;
    use crate::domain::ids::{OrderId, Timestamp};

    /// `Event::OrderCancelled` as schema v1 stored it.
    #[derive(Deserialize)]
    struct OrderCancelledV1 {
        order_id: OrderId,
        reason: String,
        cancelled_at: Timestamp,
    }

    /// Decodes a payload of `kind` stored under schema `version`, older than the current one.
    pub fn decode(kind: &str, version: u16, payload: &[u8]) -> Result<Event, String> {
        let (_variant, fields) =
            postcard::take_from_bytes::<u32>(payload).map_err(|e| format!("payload does not decode: {e}"))?;
        let old = |e: postcard::Error| format!("{kind} v{version} payload does not decode: {e}");
        match (kind, version) {
            ("order_cancelled", 1) => {
                let v1: OrderCancelledV1 = postcard::from_bytes(fields).map_err(old)?;
                Ok(Event::OrderCancelled {
                    order_id: v1.order_id,
                    by: None,
                    reason: v1.reason,
                    cancelled_at: v1.cancelled_at,
                })
            }
            _ => Err(format!("no upcaster for {kind} version {version}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::Sku;

    fn envelope(position: u64) -> Envelope {
        Envelope {
            position,
            stream: "sku-S1".into(),
            stream_version: position,
            recorded_at: Timestamp(1_000 + position),
            command_id: CommandId::generated("t", position),
            fingerprint: [7; 16],
            correlation_id: "c".into(),
            actor: "tester".into(),
            event: Event::ProductDelisted { sku: Sku::from("S1") },
        }
    }

    #[test]
    fn records_round_trip_and_chain() {
        let shop = ShopId::main();
        let genesis = genesis_hash(&shop);
        let mut bytes = Vec::new();
        let mut hash = genesis;
        for position in 1..=3 {
            hash = encode_record(&envelope(position), &hash, &mut bytes).expect("encodes");
        }
        let body_len = record_body_len(&envelope(1)).expect("measured");
        assert_eq!(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize, body_len);
        let (decoded, last) = decode_records(&bytes, 1, genesis, Check::Chain).expect("decodes");
        assert_eq!(decoded, (1..=3).map(envelope).collect::<Vec<_>>());
        assert_eq!(last, hash);
        assert_ne!(genesis, genesis_hash(&ShopId::new("other").expect("valid")));
        let wrong_start = decode_records(&bytes, 1, genesis_hash(&ShopId::new("other").expect("valid")), Check::Chain);
        assert_eq!(wrong_start.map_err(|c| c.position), Err(1));
    }

    #[test]
    fn every_event_type_has_a_schema_version() {
        assert_eq!(SCHEMA_VERSIONS.len(), 18);
        let mut kinds: Vec<_> = SCHEMA_VERSIONS.iter().map(|(k, _)| *k).collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), SCHEMA_VERSIONS.len());
    }
}
