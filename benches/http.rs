//! HTTP round trips against the real service, in process, over loopback.
//!
//! Run: `cargo bench --bench http`. The setup opens an engine on sled in a temporary
//! directory (on the filesystem of `std::env::temp_dir()`), with the system clock and
//! snapshots as `emporium serve` has them, serves it on 127.0.0.1 with no tokens (open
//! access), creates a shop, lists one product and receives 10,000,000 units of it. One
//! keep-alive connection (the load generator's HTTP/1.1 client) then measures, one request
//! at a time:
//! - `http/healthz`: `GET /healthz`, the cost of HTTP itself;
//! - `http/place_order`: `POST /v1/shops/{shop}/orders` placing a one-line order with a new
//!   order id each time: parsed, decided, appended, flushed and fsynced before the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use emporium::engine::{Engine, EngineConfig, SnapshotConfig, SystemClock};
use emporium::log::layout;
use emporium::log::store::SledStore;
use emporium::rehearsal::loadgen::Connection;
use emporium::service::{self, App, ServiceConfig, Tokens};
use serde_json::json;

/// The allocator the `emporium` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SHOP: &str = "bench";
const SKU: &str = "SKU-HTTP-1";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime")
}

/// Sends a request on `connection` and requires a 2xx answer.
async fn success(connection: &mut Connection, method: &str, path: &str, body: Option<&[u8]>) {
    let (status, answer) = connection.request(method, path, None, body).await.expect("answered");
    assert!((200..300).contains(&status), "{method} {path}: {status} {}", String::from_utf8_lossy(answer));
}

fn order_body(n: u64) -> Vec<u8> {
    let body = json!({
        "order_id": format!("H-{n:010}"),
        "customer_id": format!("B-{:07}", n % 1_000_000),
        "lines": [{"sku": SKU, "quantity": 1}],
        "region": "zhejiang",
    });
    body.to_string().into_bytes()
}

fn http(c: &mut Criterion) {
    emporium::cli::process::disable_transparent_huge_pages().expect("huge pages off, as the binary has them");
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (engine, stop, server, mut connection) = runtime.block_on(async {
        let store = Arc::new(SledStore::open(&layout::log_dir(dir.path())).expect("opens"));
        let config = EngineConfig {
            snapshots: Some(SnapshotConfig::new(layout::snapshot_dir(dir.path()))),
            ..EngineConfig::default()
        };
        let engine = Arc::new(Engine::open(store, Arc::new(SystemClock), config).await.expect("opens"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("an address");
        let app = App::new(engine.clone(), Tokens::none(), ServiceConfig::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(service::serve(listener, app, async move {
            let _ = stopped.await;
        }));

        let mut connection = Connection::open(&address.to_string(), None).await.expect("connects");
        success(&mut connection, "PUT", &format!("/v1/shops/{SHOP}"), None).await;
        let listing = json!({
            "sku": SKU,
            "title": "Bench product",
            "category": "bench",
            "price": "19.90",
            "weight_g": 300,
            "low_stock_threshold": 10,
        });
        success(&mut connection, "POST", &format!("/v1/shops/{SHOP}/products"), Some(listing.to_string().as_bytes()))
            .await;
        let receipt = json!({"quantity": 10_000_000, "unit_cost": "8.50", "supplier_ref": "PO-1"});
        let receipts = format!("/v1/shops/{SHOP}/products/{SKU}/receipts");
        success(&mut connection, "POST", &receipts, Some(receipt.to_string().as_bytes())).await;
        (engine, stop, server, connection)
    });

    let mut group = c.benchmark_group("http");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(1));
    group.bench_function("healthz", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iterations {
                    success(&mut connection, "GET", "/healthz", None).await;
                }
                started.elapsed()
            })
        })
    });
    let orders_path = format!("/v1/shops/{SHOP}/orders");
    let mut next = 0u64;
    group.bench_function("place_order", |b| {
        b.iter_custom(|iterations| {
            let bodies: Vec<Vec<u8>> = (next..next + iterations).map(order_body).collect();
            next += iterations;
            runtime.block_on(async {
                let started = Instant::now();
                for body in &bodies {
                    success(&mut connection, "POST", &orders_path, Some(body)).await;
                }
                started.elapsed()
            })
        })
    });
    group.finish();
    eprintln!("{next} orders placed over HTTP");

    drop(connection);
    runtime.block_on(async {
        let _ = stop.send(());
        server.await.expect("the server task").expect("the server stops cleanly");
        engine.close().await;
    });
}

criterion_group!(benches, http);
criterion_main!(benches);
