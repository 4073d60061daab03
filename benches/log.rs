//! Durable throughput: appending to the sled log by batch size, and commands through the
//! engine with group commit. Every measured append is flushed and fsynced.
//!
//! Run: `cargo bench --bench log`. The store lives in a temporary directory on the
//! filesystem of `std::env::temp_dir()` (set TMPDIR to measure another disk).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use emporium::domain::command::Line;
use emporium::engine::{Engine, EngineConfig, ManualClock, Request};
use emporium::log::record::Envelope;
use emporium::log::store::{AppendBatch, EventStore, SledStore};
use emporium::{Command, CommandId, Event, ShopId, Timestamp};
use rust_decimal::Decimal;

/// The allocator the `emporium` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime")
}

/// An order payment: a typical small event (about 200 bytes encoded with its envelope).
fn paid(position: u64) -> Envelope {
    Envelope {
        position,
        stream: format!("order-O-{position:010}").into(),
        stream_version: 2,
        recorded_at: Timestamp(1_794_387_600_000 + position),
        command_id: CommandId::generated("bench", position),
        fingerprint: [9; 16],
        correlation_id: format!("checkout-{position:010}").into(),
        actor: "storefront".into(),
        event: Event::OrderPaid {
            order_id: format!("O-{position:010}").as_str().into(),
            payment_id: format!("PAY-{position:012}").as_str().into(),
            amount: Decimal::new(12_990, 2),
            paid_at: Timestamp(1_794_387_600_000 + position),
        },
    }
}

fn append_by_batch_size(c: &mut Criterion) {
    emporium::cli::process::disable_transparent_huge_pages().expect("huge pages off, as the binary has them");
    let runtime = runtime();
    let mut group = c.benchmark_group("append_synced");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    for batch_events in [1u64, 64, 1024, 4096] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = SledStore::open(dir.path()).expect("opens");
        let shop = ShopId::main();
        let mut last = 0u64;
        group.throughput(Throughput::Elements(batch_events));
        group.bench_with_input(BenchmarkId::from_parameter(batch_events), &batch_events, |b, &batch_events| {
            b.iter_custom(|iterations| {
                let batches: Vec<AppendBatch> = (0..iterations)
                    .map(|i| AppendBatch {
                        expected_last: last + i * batch_events,
                        events: (1..=batch_events).map(|k| paid(last + i * batch_events + k)).collect(),
                        rejections: Vec::new(),
                    })
                    .collect();
                let started = Instant::now();
                runtime.block_on(async {
                    for batch in batches {
                        store.append(&shop, &batch).await.expect("appended");
                    }
                });
                last += iterations * batch_events;
                started.elapsed()
            })
        });
    }
    group.finish();
}

fn orders_with_group_commit(c: &mut Criterion) {
    emporium::cli::process::disable_transparent_huge_pages().expect("huge pages off, as the binary has them");
    let runtime = runtime();
    let mut group = c.benchmark_group("orders_group_commit");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    let orders_per_iteration = 20_000u64;
    for submitters in [64usize, 512] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let shop = ShopId::main();
        let engine = runtime.block_on(async {
            let store = Arc::new(SledStore::open(dir.path()).expect("opens"));
            let clock = Arc::new(ManualClock::new(Timestamp(1_794_387_600_000)));
            let engine = Arc::new(Engine::open(store, clock, EngineConfig::default()).await.expect("opens"));
            engine.create_shop(&shop).await.expect("created");
            for sku in 0..100 {
                let sku = format!("SKU-{sku:03}");
                let listing = Command::ListProduct {
                    sku: sku.as_str().into(),
                    title: format!("Product {sku}"),
                    category: "bench".to_owned(),
                    price: Decimal::new(4_990, 2),
                    weight_g: 300,
                    low_stock_threshold: 10,
                };
                let stock = Command::ReceiveStock {
                    sku: sku.as_str().into(),
                    quantity: 1_000_000_000,
                    unit_cost: Decimal::new(2_000, 2),
                    supplier_ref: "PO".to_owned(),
                };
                for command in [listing, stock] {
                    engine.execute(&shop, Request::new("bench", command)).await.expect("accepted");
                }
            }
            engine
        });
        let mut next = 0u64;
        group.throughput(Throughput::Elements(orders_per_iteration));
        group.bench_with_input(BenchmarkId::new("submitters", submitters), &submitters, |b, &submitters| {
            b.iter_custom(|iterations| {
                let total = iterations * orders_per_iteration;
                let first = next;
                next += total;
                let started = Instant::now();
                runtime.block_on(async {
                    let mut handles = Vec::with_capacity(submitters);
                    for task in 0..submitters as u64 {
                        let (engine, shop) = (engine.clone(), shop.clone());
                        handles.push(tokio::spawn(async move {
                            let mut n = first + task;
                            while n < first + total {
                                let order = Command::PlaceOrder {
                                    order_id: format!("O-{n}").as_str().into(),
                                    customer_id: format!("C-{}", n % 1_000_000).as_str().into(),
                                    lines: vec![Line::new(&format!("SKU-{:03}", n % 100), 1 + n % 2)],
                                    region: "zhejiang".to_owned(),
                                    reservation_id: None,
                                };
                                engine.execute(&shop, Request::new("bench", order)).await.expect("accepted");
                                n += submitters as u64;
                            }
                        }));
                    }
                    for handle in handles {
                        handle.await.expect("a submitter");
                    }
                });
                started.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, append_by_batch_size, orders_with_group_commit);
criterion_main!(benches);
