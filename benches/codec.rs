//! Encoding and decoding log records, and the JSON a client sees, with no IO.
//!
//! Run: `cargo bench --bench codec`. The setup decides a generated day of 1,000 orders (about
//! 5,200 events: listings, receipts, orders, payments, shipments, returns, refunds) and wraps
//! its events in envelopes the way the engine does. Then it measures, over the whole batch:
//! - `codec/encode`: `log::encode_record` of every envelope, chained from the shop's genesis
//!   hash, into one reused buffer (framing, postcard, CRC32, BLAKE3);
//! - `codec/decode_chain`: `log::decode_records` of those bytes verifying the hash chain, as
//!   opening the engine does;
//! - `codec/decode_checksum`: the same verifying checksums only, as every read does;
//! - `codec/json`: `serde_json::to_vec` of each envelope's `EventLine`, as the feed sends it.
//!
//! And over every order of that day once its events are applied (the `frozen` group, per
//! order), the encoding the tiered state keeps orders in when they leave the hot tier:
//! - `frozen/pack`: `pack::pack` into one reused buffer, as freezing does;
//! - `frozen/unpack`: `pack::unpack` back to an owned order, as thawing does;
//! - `frozen/postcard_round_trip`: postcard through serde both ways, the encoding frozen
//!   orders had before `pack`, for comparison with the sum of the two above.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use emporium::domain::state::Order;
use emporium::log::record::{self, Check, Envelope};
use emporium::rehearsal::sim::{self, DayConfig};
use emporium::service::wire::EventLine;
use emporium::{ShopId, State, memory::pack, rehearsal::demo};

/// The allocator the `emporium` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ORDERS: u64 = 1_000;

/// A generated day decided directly (no engine), its events wrapped as the engine would.
fn envelopes() -> Vec<Envelope> {
    sim::day_envelopes(&DayConfig::new(ORDERS, 42, demo::DAY_START), "storefront")
}

fn encode_all(envelopes: &[Envelope], genesis: &record::Hash, out: &mut Vec<u8>) -> record::Hash {
    out.clear();
    let mut previous = *genesis;
    for envelope in envelopes {
        previous = record::encode_record(envelope, &previous, out).expect("encodes");
    }
    previous
}

fn codec(c: &mut Criterion) {
    emporium::cli::process::disable_transparent_huge_pages().expect("huge pages off, as the binary has them");
    let envelopes = envelopes();
    let events = envelopes.len() as u64;
    let genesis = record::genesis_hash(&ShopId::main());
    let mut bytes = Vec::new();
    let head = encode_all(&envelopes, &genesis, &mut bytes);
    let (decoded, decoded_head) = record::decode_records(&bytes, 1, genesis, Check::Chain).expect("intact");
    assert!(decoded == envelopes && decoded_head == head, "records round-trip");
    let json_bytes: usize = envelopes
        .iter()
        .map(|envelope| serde_json::to_vec(&EventLine::from(envelope)).expect("serialises").len())
        .sum();
    eprintln!(
        "{events} events; records {} bytes ({} a record), JSON lines {json_bytes} bytes ({} an event)",
        bytes.len(),
        bytes.len() as u64 / events,
        json_bytes as u64 / events
    );

    let mut group = c.benchmark_group("codec");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(events));
    group.bench_function("encode", |b| {
        let mut out = Vec::with_capacity(bytes.len());
        b.iter(|| encode_all(&envelopes, &genesis, &mut out))
    });
    for (name, check) in [("decode_chain", Check::Chain), ("decode_checksum", Check::Checksum)] {
        group.bench_function(name, |b| b.iter(|| record::decode_records(&bytes, 1, genesis, check).expect("intact")));
    }
    group.bench_function("json", |b| {
        b.iter(|| {
            envelopes
                .iter()
                .map(|envelope| serde_json::to_vec(&EventLine::from(envelope)).expect("serialises").len())
                .sum::<usize>()
        })
    });
    group.finish();

    let mut state = State::new();
    for envelope in &envelopes {
        state.apply(&envelope.event);
    }
    let orders: Vec<Order> = state.orders().map(|order| order.expect("in memory").into_owned()).collect();
    let mut scratch = Vec::new();
    let packed: Vec<Box<[u8]>> = orders.iter().map(|order| pack::pack(order, &mut scratch)).collect();
    let packed_bytes: usize = packed.iter().map(|bytes| bytes.len()).sum();
    let postcard_bytes: usize = orders.iter().map(|order| postcard::to_allocvec(order).expect("encodes").len()).sum();
    eprintln!(
        "{} orders: packed {} bytes an order, postcard {}",
        orders.len(),
        packed_bytes / orders.len(),
        postcard_bytes / orders.len()
    );
    let mut group = c.benchmark_group("frozen");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(orders.len() as u64));
    group.bench_function("pack", |b| {
        b.iter(|| orders.iter().map(|order| pack::pack(order, &mut scratch).len()).sum::<usize>())
    });
    group.bench_function("unpack", |b| {
        b.iter(|| packed.iter().map(|bytes| pack::unpack::<Order>(bytes).expect("unpacks").lines.len()).sum::<usize>())
    });
    group.bench_function("postcard_round_trip", |b| {
        b.iter(|| {
            orders
                .iter()
                .map(|order| {
                    let bytes = postcard::to_allocvec(order).expect("encodes").into_boxed_slice();
                    postcard::from_bytes::<Order>(&bytes).expect("decodes").lines.len()
                })
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
