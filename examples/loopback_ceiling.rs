//! The most orders a second this machine can answer over loopback HTTP when answering
//! costs nothing: the ceiling under `loadgen --target http://...`.
//!
//! A server and the load generator's own client share the machine as in a rehearsal over
//! HTTP, but the server does no shop work: every request gets the same 201 answer, the size
//! of a placed order's receipt. What is left is the kernel's loopback TCP, the runtime and
//! (with `axum`) the HTTP stack `emporium serve` runs on. The gap between this and a real
//! rehearsal is what emporium itself costs per request.
//!
//! ```text
//! cargo run --release --example loopback_ceiling -- [raw|axum] [seconds] [connections]
//! ```
//!
//! `raw` answers from a loop over the socket (a request is read whole, framed by its
//! `content-length`); `axum` answers from an axum route served by `axum::serve`, as
//! `emporium serve` does. The server runs on tokio's multi-thread runtime (one worker per
//! core), the client on one thread with `connections` keep-alive connections (default 512,
//! the load generator's default), one request at a time on each.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use emporium::rehearsal::loadgen::{Connection, CpuTicks};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A placed order's request body, as the load generator sends it (117 bytes).
const ORDER_BODY: &[u8] = br#"{"order_id":"D11-000752349","customer_id":"B-0056617","lines":[{"sku":"D11-01298","quantity":1}],"region":"zhejiang"}"#;

/// The answer's body: about the size of a placed order's receipt.
const RECEIPT_BYTES: usize = 600;

/// Largest request head or body the raw server reads, in bytes.
const REQUEST_BYTES_MAX: usize = 16 * 1024;

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "raw".to_owned());
    let seconds: u64 = args.next().map_or(Ok(10), |s| s.parse()).map_err(|e| format!("seconds: {e}"))?;
    let connections: usize = args.next().map_or(Ok(512), |s| s.parse()).map_err(|e| format!("connections: {e}"))?;
    if !(1..=3600).contains(&seconds) || !(1..=10_000).contains(&connections) {
        return Err("seconds in 1..=3600, connections in 1..=10000".to_owned());
    }
    let server = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let listener =
        server.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).map_err(|e| format!("binding: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?.to_string();
    let receipt = Arc::new(vec![b'x'; RECEIPT_BYTES]);
    match mode.as_str() {
        "raw" => {
            server.spawn(serve_raw(listener, receipt));
        }
        "axum" => {
            let router = axum::Router::new().route(
                "/v1/shops/{shop}/orders",
                axum::routing::post(move |_body: axum::body::Bytes| {
                    let receipt = Arc::clone(&receipt);
                    async move {
                        (
                            axum::http::StatusCode::CREATED,
                            [(axum::http::header::CONTENT_TYPE, "application/json")],
                            receipt.as_slice().to_vec(),
                        )
                    }
                }),
            );
            server.spawn(async move { axum::serve(listener, router).await });
        }
        other => return Err(format!("mode {other}: raw or axum")),
    }

    let client = std::thread::spawn(move || -> Result<(u64, Duration, Duration), String> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let cpu_before = thread_cpu();
        let (answered, elapsed) = runtime.block_on(drive(address, seconds, connections))?;
        Ok((answered, elapsed, thread_cpu().saturating_sub(cpu_before)))
    });
    let cpu_before = CpuTicks::now();
    let (answered, elapsed, client_cpu) = client.join().map_err(|_| "the client panicked".to_owned())??;
    let shares = cpu_before.zip(CpuTicks::now()).and_then(|(before, after)| after.shares_since(&before));
    let per_s = answered as f64 / elapsed.as_secs_f64();
    println!(
        "{mode}: {answered} requests in {:.1} s over {connections} connections: {per_s:.0} requests/s",
        elapsed.as_secs_f64()
    );
    if answered > 0 {
        // The client's CPU also holds opening its connections, a few milliseconds of it.
        let client_us = client_cpu.as_secs_f64() * 1e6 / answered as f64;
        println!("the client's CPU per request: {client_us:.1} µs (its thread, user and system)");
    }
    if let Some(shares) = shares {
        println!(
            "machine: {:.0}% user, {:.0}% system, {:.0}% idle",
            shares.user * 100.0,
            shares.system * 100.0,
            shares.idle * 100.0
        );
    }
    Ok(())
}

/// The CPU time the calling thread has used, user and system.
fn thread_cpu() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the call to write.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if status != 0 {
        return Duration::ZERO;
    }
    Duration::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0))
}

/// Opens `connections` connections and sends place-order requests on each, one at a time,
/// for `seconds`; returns how many were answered and how long that took.
async fn drive(address: String, seconds: u64, connections: usize) -> Result<(u64, Duration), String> {
    let answered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut opened = Vec::with_capacity(connections);
    for _ in 0..connections {
        opened.push(Connection::open(&address, None).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for (index, mut connection) in opened.into_iter().enumerate() {
        let answered = Arc::clone(&answered);
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let key = format!("place-{index}");
            while !stop.load(Ordering::Relaxed) {
                let (status, _) =
                    connection.request("POST", "/v1/shops/double11/orders", Some(&key), Some(ORDER_BODY)).await?;
                if status != 201 {
                    return Err(format!("answered {status}"));
                }
                answered.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let count = answered.load(Ordering::Relaxed);
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok((count, elapsed))
}

/// Answers every request on every connection with `receipt`.
async fn serve_raw(listener: tokio::net::TcpListener, receipt: Arc<Vec<u8>>) {
    let head =
        format!("HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", receipt.len());
    let mut answer = head.into_bytes();
    answer.extend_from_slice(&receipt);
    let answer = Arc::new(answer);
    while let Ok((stream, _)) = listener.accept().await {
        let answer = Arc::clone(&answer);
        tokio::spawn(async move {
            if let Err(error) = answer_each(stream, &answer).await {
                eprintln!("a connection ended: {error}");
            }
        });
    }
}

/// Reads requests off `stream` one by one and writes `answer` for each, until it closes.
async fn answer_each(mut stream: tokio::net::TcpStream, answer: &[u8]) -> Result<(), String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut buffer = vec![0u8; REQUEST_BYTES_MAX];
    let mut filled = 0;
    loop {
        // Everything of the next request read so far is buffer[..filled].
        let length = loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut request = httparse::Request::new(&mut headers);
            if let httparse::Status::Complete(head) = request.parse(&buffer[..filled]).map_err(|e| e.to_string())? {
                let body: usize = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                    .unwrap_or(0);
                if head + body <= filled {
                    break head + body;
                }
            }
            if filled == buffer.len() {
                return Err("a request over the buffer".to_owned());
            }
            let read = stream.read(&mut buffer[filled..]).await.map_err(|e| e.to_string())?;
            if read == 0 {
                return Ok(());
            }
            filled += read;
        };
        stream.write_all(answer).await.map_err(|e| e.to_string())?;
        buffer.copy_within(length..filled, 0);
        filled -= length;
    }
}
