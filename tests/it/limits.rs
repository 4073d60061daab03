//! The server's limits, through the real binary: a flood of idle connections at a low
//! descriptor limit, a head that never ends, a body that never ends, an idle keep-alive
//! connection, a shutdown with a stalled client, the connection cap, and the error shape of
//! the answers hyper writes by itself.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http::{Client, Response, Server};
use crate::support::temp_dir;

/// Starts `emporium serve` on `data` with `args`, under a limit of `descriptors` open files
/// (soft and hard) when given; no tokens.
fn start(data: &Path, args: &[&str], descriptors: Option<u32>) -> Server {
    let binary = env!("CARGO_BIN_EXE_emporium");
    let mut command = match descriptors {
        Some(limit) => {
            let mut command = Command::new("sh");
            command.arg("-c").arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\"")).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    command.args(["serve", "--listen", "127.0.0.1:0", "--data"]).arg(data).args(args);
    command.env_remove("EMPORIUM_TOKENS");
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("the server starts");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("the server announces its address");
    let address = crate::http::announced_address(&line);
    Server { child, address, stdout }
}

/// Sends `bytes` on a new connection and reads the answer until the server closes it.
fn exchange(address: SocketAddr, bytes: &[u8]) -> (u16, Value) {
    let mut stream = TcpStream::connect(address).expect("connects");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("a timeout");
    let _ = stream.write_all(bytes);
    let mut raw = Vec::new();
    let read = stream.read_to_end(&mut raw);
    assert!(read.is_ok() && !raw.is_empty(), "an answer, then the end: {read:?}");
    let (status, body) = status_and_body(&raw);
    let body = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {raw:?}"));
    (status, body)
}

/// The status and the body of one answer with a content-length.
fn status_and_body(raw: &[u8]) -> (u16, &[u8]) {
    let text = String::from_utf8_lossy(raw);
    let (head, _) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {text:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    let length: usize = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    let start = head.len() + 4;
    (status, &raw[start..start + length])
}

/// Asserts the error shape with `code`.
fn assert_error(answer: &(u16, Value), status: u16, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"]["code"], code, "{}", answer.1);
    assert!(answer.1["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", answer.1);
    assert!(answer.1["error"]["details"].is_object(), "{}", answer.1);
}

/// How long until the server closes `stream` (EOF or reset); panics after `within`.
fn closed_after(stream: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    stream.set_read_timeout(Some(within)).expect("a timeout");
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server did not close the connection within {within:?}: {e}"),
    }
    started.elapsed()
}

/// Reads one answer with a content-length from a kept-alive connection: its status and body.
fn read_answer(stream: &mut TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("an answer's head");
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse().ok())
        .expect("a content-length");
    let mut body = vec![0; length];
    stream.read_exact(&mut body).expect("the body");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Lists a product and receives stock in `shop`.
fn stock_shop(client: &Client, shop: &str) {
    let list = json!({"sku": "TEA-1", "title": "Tea", "category": "tea", "price": "2.00", "weight_g": 1,
        "low_stock_threshold": 0});
    assert_eq!(client.post(&format!("/v1/shops/{shop}/products"), &list).status, 201);
    let receive = json!({"quantity": 1000, "unit_cost": "1.00", "supplier_ref": "PO"});
    assert_eq!(client.post(&format!("/v1/shops/{shop}/products/TEA-1/receipts"), &receive).status, 200);
}

fn place(client: &Client, shop: &str, order_id: &str) -> std::io::Result<Response> {
    let body =
        json!({"order_id": order_id, "customer_id": "C", "region": "r", "lines": [{"sku": "TEA-1", "quantity": 1}]});
    let headers = [("content-type", "application/json")];
    client.try_send("POST", &format!("/v1/shops/{shop}/orders"), &headers, body.to_string().as_bytes())
}

/// Raises this test process's own limit of open files, to hold the flood's sockets.
fn raise_own_descriptor_limit(wanted: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read or write one rlimit each.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_cur.max(wanted.min(limit.rlim_max));
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(limit.rlim_cur >= wanted, "this test needs {wanted} open files; the hard limit is {}", limit.rlim_max);
}

/// The soft limit of open files of process `pid`, from /proc.
fn open_files_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc/<pid>/limits");
    let line = limits.lines().find(|line| line.starts_with("Max open files")).expect("a line of open files");
    line.split_whitespace().nth(3).and_then(|soft| soft.parse().ok()).expect("a soft limit")
}

#[test]
fn a_flood_of_idle_connections_at_1024_descriptors_poisons_no_shop() {
    raise_own_descriptor_limit(4096);
    let dir = temp_dir();
    let server = start(&dir.path().join("data"), &[], Some(1024));
    let pid = server.child.id();
    assert_eq!(open_files_limit(pid), 1024, "the server runs at 1,024 descriptors");
    let client = server.client();
    assert_eq!(client.send("PUT", "/v1/shops/second", &[], b"").status, 201);
    let shops = ["main", "second"];
    for shop in shops {
        stock_shop(&client, shop);
        assert_eq!(place(&client, shop, "O-1").expect("answered").status, 201);
    }
    // A customer's kept-alive connection, then the flood.
    let mut customer = TcpStream::connect(server.address).expect("connects");
    customer.set_read_timeout(Some(Duration::from_secs(30))).expect("a timeout");
    let body =
        json!({"order_id": "O-2", "customer_id": "C", "region": "r", "lines": [{"sku": "TEA-1", "quantity": 1}]});
    let order = format!(
        "POST /v1/shops/main/orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.to_string().len()
    );
    customer.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").expect("sent");
    assert_eq!(read_answer(&mut customer).0, 200);
    let flood: Vec<TcpStream> = (0..1100).filter_map(|_| TcpStream::connect(server.address).ok()).collect();
    assert!(flood.len() >= 1000, "the flood connects: {}", flood.len());
    // Once the server holds the flood (as many connections as it takes), a command on the
    // customer's connection is acknowledged: descriptors are left for the store.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(format!("/proc/{pid}/fd")).map(|fds| fds.count()).unwrap_or(0) < 700 {
        assert!(Instant::now() < deadline, "the server does not take the flood");
        std::thread::sleep(Duration::from_millis(20));
    }
    customer.write_all(order.as_bytes()).expect("sent");
    let (status, answer) = read_answer(&mut customer);
    assert_eq!(status, 201, "a command during the flood: {answer}");
    drop(flood);
    // The flood is over: every shop takes commands, and nothing acknowledged is lost.
    let deadline = Instant::now() + Duration::from_secs(30);
    for shop in shops {
        loop {
            match place(&client, shop, "O-3") {
                Ok(response) if matches!(response.status, 200 | 201) => break,
                other => assert!(Instant::now() < deadline, "{shop} does not take commands: {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(client.get(&format!("/v1/shops/{shop}/stock/TEA-1")).status, 200);
        let orders: &[&str] = if shop == "main" { &["O-1", "O-2", "O-3"] } else { &["O-1", "O-3"] };
        for order in orders {
            let response = client.get(&format!("/v1/shops/{shop}/orders/{order}"));
            assert_eq!(response.status, 200, "{shop} {order}: {}", response.json());
        }
    }
    let health = client.get("/healthz");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
}

#[test]
fn a_head_that_never_ends_is_closed_after_the_header_read_timeout() {
    let dir = temp_dir();
    let server = start(&dir.path().join("data"), &["--header-read-timeout-ms", "500"], None);
    let mut stalled = TcpStream::connect(server.address).expect("connects");
    stalled.write_all(b"GET /healthz HTTP/1.1\r\nHo").expect("sent");
    let mut silent = TcpStream::connect(server.address).expect("connects");
    let took = closed_after(&mut stalled, Duration::from_secs(10));
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");
    let took = closed_after(&mut silent, Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "a connection that sends nothing is closed too: {took:?}");
    assert_eq!(server.client().get("/healthz").status, 200);
}

#[test]
fn a_body_that_never_ends_is_answered_408() {
    let dir = temp_dir();
    let server = start(&dir.path().join("data"), &["--body-read-timeout-ms", "500"], None);
    let started = Instant::now();
    let head = "POST /v1/shops/main/orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                content-length: 100\r\n\r\n{\"order_id\"";
    let answer = exchange(server.address, head.as_bytes());
    assert_error(&answer, 408, "body_timeout");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(server.client().get("/healthz").status, 200);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let dir = temp_dir();
    let server = start(&dir.path().join("data"), &["--idle-timeout-ms", "500"], None);
    let mut stream = TcpStream::connect(server.address).expect("connects");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("a timeout");
    for _ in 0..2 {
        stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").expect("sent");
        assert_eq!(read_answer(&mut stream).0, 200, "the connection is kept alive between requests");
    }
    let took = closed_after(&mut stream, Duration::from_secs(8));
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn after_sigterm_a_stalled_client_does_not_keep_the_server_up() {
    let dir = temp_dir();
    let server = start(&dir.path().join("data"), &["--shutdown-grace-ms", "1000"], None);
    let mut stalled = TcpStream::connect(server.address).expect("connects");
    stalled.write_all(b"GET /healthz HTTP/1.1\r\nHo").expect("sent");
    let mut kept = TcpStream::connect(server.address).expect("connects");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").expect("sent");
    kept.set_read_timeout(Some(Duration::from_secs(10))).expect("a timeout");
    assert_eq!(read_answer(&mut kept).0, 200);
    let mut server = server;
    server.terminate();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("waits") {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(6), "the server is still up after the grace and a margin");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    closed_after(&mut stalled, Duration::from_secs(1));
    closed_after(&mut kept, Duration::from_secs(1));
}

#[test]
fn a_connection_over_the_cap_is_answered_503_and_the_cap_frees_up() {
    let dir = temp_dir();
    let server = start(&dir.path().join("data"), &["--connections-max", "2"], None);
    let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(server.address).expect("connects")).collect();
    // Once the two are accepted, a third is refused with the error shape.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = exchange(server.address, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        if answer.0 == 503 {
            assert_error(&answer, 503, "too_many_connections");
            break;
        }
        assert!(Instant::now() < deadline, "the cap does not hold: {}", answer.1);
    }
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.client().try_send("GET", "/healthz", &[], b"").map(|r| r.status).ok() != Some(200) {
        assert!(Instant::now() < deadline, "the cap does not free up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_answers_to_heads_that_cannot_be_read_have_the_error_shape() {
    let dir = temp_dir();
    let server = start(&dir.path().join("data"), &[], None);
    let big = format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "b".repeat(70_000));
    assert_error(&exchange(server.address, big.as_bytes()), 431, "header_too_large");
    let many: String = (0..120).map(|i| format!("x-{i}: v\r\n")).collect();
    let many = format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{many}\r\n");
    assert_error(&exchange(server.address, many.as_bytes()), 431, "header_too_large");
    let long = format!("GET /v1/shops/main/stock?{} HTTP/1.1\r\nconnection: close\r\n\r\n", "q".repeat(9000));
    assert_error(&exchange(server.address, long.as_bytes()), 414, "uri_too_long");
    let bad = b"GET /v1/shops/main/stock/TEA\x011 HTTP/1.1\r\nhost: x\r\n\r\n";
    assert_error(&exchange(server.address, bad), 400, "malformed_request");
    let bad = b"GET /v1/shops/main/stock HTTP/1.1\r\nho\x01st: x\r\n\r\n";
    assert_error(&exchange(server.address, bad), 400, "malformed_request");
    assert_eq!(server.client().get("/healthz").status, 200);
}
