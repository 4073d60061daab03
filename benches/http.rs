//! HTTP round trips against the real service, in process, over loopback.
//!
//! Run: `cargo bench --bench http`. The setup opens an engine on sled in a temporary
//! directory (on the filesystem of `std::env::temp_dir()`), with the system clock and
//! snapshots as `emporium serve` has them, serves it on 127.0.0.1 with no tokens (open
//! access), creates a shop, lists one product and receives 10,000,000 units of it. One
//! keep-alive connection with a minimal HTTP/1.1 client then measures, one request at a time:
//! - `http/healthz`: `GET /healthz`, the cost of HTTP itself;
//! - `http/place_order`: `POST /v1/shops/{shop}/orders` placing a one-line order with a new
//!   order id each time: parsed, decided, appended, flushed and fsynced before the answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use emporium::engine::{Engine, EngineConfig, SnapshotConfig, SystemClock};
use emporium::layout;
use emporium::service::{self, App, ServiceConfig, Tokens};
use emporium::store::SledStore;
use serde_json::json;
use tokio::net::TcpStream;

/// The allocator the `emporium` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SHOP: &str = "bench";
const SKU: &str = "SKU-HTTP-1";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime")
}

/// A status and a body.
struct Response {
    status: u16,
    body: Vec<u8>,
}

impl Response {
    fn success(self, what: &str) -> Response {
        assert!((200..300).contains(&self.status), "{what}: {} {}", self.status, String::from_utf8_lossy(&self.body));
        self
    }
}

/// One keep-alive HTTP/1.1 connection. Tokio's `io-util` is not enabled, so it reads and
/// writes with the socket's readiness and `try_read` / `try_write`.
struct Connection {
    stream: TcpStream,
    host: String,
    /// Bytes read and not yet consumed.
    buffer: Vec<u8>,
}

impl Connection {
    async fn open(address: SocketAddr) -> Connection {
        let stream = TcpStream::connect(address).await.expect("connects");
        stream.set_nodelay(true).expect("no delay");
        Connection { stream, host: address.to_string(), buffer: Vec::with_capacity(16 * 1024) }
    }

    /// The bytes of a request.
    fn request(&self, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
        let content_type = if body.is_empty() { "" } else { "content-type: application/json\r\n" };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\n{content_type}content-length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    /// Sends a request and reads its response.
    async fn round_trip(&mut self, request: &[u8]) -> Response {
        let mut rest = request;
        while !rest.is_empty() {
            self.stream.writable().await.expect("writable");
            match self.stream.try_write(rest) {
                Ok(written) => rest = &rest[written..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("write failed: {e}"),
            }
        }
        self.response().await
    }

    /// Reads the status line and headers, then exactly content-length body bytes.
    async fn response(&mut self) -> Response {
        let head_end = loop {
            if let Some(at) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            self.fill().await;
        };
        let head = std::str::from_utf8(&self.buffer[..head_end]).expect("an ASCII head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("a status line");
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("a status line, not {status_line:?}"));
        let content_length: usize = lines
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .map(|(_, value)| value.trim().parse().expect("a content length"))
            .unwrap_or_else(|| panic!("no content-length in {head:?}"));
        let end = head_end + 4 + content_length;
        while self.buffer.len() < end {
            self.fill().await;
        }
        let body = self.buffer[head_end + 4..end].to_vec();
        self.buffer.drain(..end);
        Response { status, body }
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 8192];
        loop {
            self.stream.readable().await.expect("readable");
            match self.stream.try_read(&mut chunk) {
                Ok(0) => panic!("the server closed the connection"),
                Ok(read) => {
                    self.buffer.extend_from_slice(&chunk[..read]);
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }
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

        let mut connection = Connection::open(address).await;
        let shop = connection.request("PUT", &format!("/v1/shops/{SHOP}"), b"");
        connection.round_trip(&shop).await.success("PUT shop");
        let listing = json!({
            "sku": SKU,
            "title": "Bench product",
            "category": "bench",
            "price": "19.90",
            "weight_g": 300,
            "low_stock_threshold": 10,
        });
        let listing = connection.request("POST", &format!("/v1/shops/{SHOP}/products"), listing.to_string().as_bytes());
        connection.round_trip(&listing).await.success("POST product");
        let receipt = json!({"quantity": 10_000_000, "unit_cost": "8.50", "supplier_ref": "PO-1"});
        let receipts = format!("/v1/shops/{SHOP}/products/{SKU}/receipts");
        let receipt = connection.request("POST", &receipts, receipt.to_string().as_bytes());
        connection.round_trip(&receipt).await.success("POST receipt");
        (engine, stop, server, connection)
    });

    let mut group = c.benchmark_group("http");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(1));
    let healthz = connection.request("GET", "/healthz", b"");
    group.bench_function("healthz", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iterations {
                    connection.round_trip(&healthz).await.success("GET /healthz");
                }
                started.elapsed()
            })
        })
    });
    let orders_path = format!("/v1/shops/{SHOP}/orders");
    let mut next = 0u64;
    group.bench_function("place_order", |b| {
        b.iter_custom(|iterations| {
            let requests: Vec<Vec<u8>> =
                (next..next + iterations).map(|n| connection.request("POST", &orders_path, &order_body(n))).collect();
            next += iterations;
            runtime.block_on(async {
                let started = Instant::now();
                for request in &requests {
                    connection.round_trip(request).await.success("POST order");
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
