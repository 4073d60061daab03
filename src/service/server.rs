//! Serving HTTP/1.1 with limits: our own accept loop over hyper, so that a client can hold
//! neither a descriptor nor the shutdown for longer than the limits say.
//!
//! Guarantees, before the code (every limit is a field of [`ServiceConfig`] with its
//! default there, and a flag of `emporium serve`):
//! - **Connections are capped.** At most `connections_max` connections are served at once.
//!   One accepted over the cap is answered `503 too_many_connections` with `Retry-After: 1`
//!   and closed; at most [`REFUSALS_MAX`] such answers are in progress at once, and beyond
//!   them a connection is closed at once. So the server holds at most `connections_max +
//!   REFUSALS_MAX` sockets, whatever clients do. When accepting fails (no descriptor left,
//!   say), the loop waits 100 ms before it tries again and logs at most once a second.
//! - **Timeouts.** A connection's request head (its first, or the next one once a byte of
//!   it arrived) must be complete within `header_read_timeout_ms`; a connection waiting for
//!   its next request is closed after `idle_timeout_ms`; a request body must arrive within
//!   `body_read_timeout_ms` of its head, else the request is answered `408 body_timeout`.
//!   A request being answered (an event stream, say) has no time limit here. The timeouts
//!   are kept by a watchdog per connection rather than by hyper: hyper's header-read timer
//!   starts when it waits for a head, so it would also be the idle timeout.
//! - **Bounded shutdown.** When the shutdown future completes the loop stops accepting,
//!   closes at once every connection that is not answering a request (idle, or in the middle
//!   of a head), lets the requests in flight finish (their connections close after the
//!   answer) for up to `shutdown_grace_ms`, then closes what remains and returns.
//! - **Every error answer has the error shape.** hyper answers a request head it cannot
//!   read by itself, with an empty body: 400 (a byte not allowed in the path or a header, a
//!   malformed line), 414 (a URI over 65,534 bytes) and 431 (a head over
//!   `header_bytes_max` bytes or over 100 fields). The connection's writer recognizes those
//!   automatic answers, whose first lines are exactly `HTTP/1.1 <status>
//!   <reason>\r\nconnection: close\r\ncontent-length: 0\r\n`, and writes in their place the
//!   same status with a body `{"error": {"code": "malformed_request" | "uri_too_long" |
//!   "header_too_large", ...}}`. This is robust because hyper writes such an answer whole,
//!   as the last thing on the connection, and nothing else the server writes can look like
//!   it: hyper is told to write each answer as one flat buffer, the service's answers never
//!   carry a `connection` header of their own (it is removed), and a body is JSON or text
//!   without a carriage return. (At worst an empty 400, 414 or 431 of the service would get
//!   the error shape too.) The service itself answers a URI over `uri_bytes_max` bytes with
//!   `414 uri_too_long`, before routing.
//! - **A panic is a 500.** A request handler that panics is answered `500 internal_error`
//!   with the error shape, and the panic is logged at error level with the request's method
//!   and path; the connection stays usable. It is still a bug to fix. (A panic while an
//!   answer's body is being streamed, after its head was written, closes the connection.)
//! - **Error answers arrive.** A connection the server closes while the client may still be
//!   sending (after an error answer, a timeout) is closed gently: the server shuts its
//!   writing side and reads and discards what still comes, for at most [`LINGER_MS`] and
//!   [`LINGER_BYTES`], so that the client reads the answer rather than a reset.

use std::any::Any;
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Sleep;

use super::ServiceConfig;
use super::error::ApiError;

/// Most connections being answered `503 too_many_connections` at once; beyond them a
/// connection over the cap is closed without an answer.
pub const REFUSALS_MAX: usize = 64;
/// How long a closed connection's remaining input is read and discarded, at most.
pub const LINGER_MS: u64 = 2000;
/// How many bytes of a closed connection's remaining input are read and discarded, at most.
pub const LINGER_BYTES: usize = 1 << 20;
/// How long accepting waits after it failed (out of descriptors, say).
const ACCEPT_PAUSE_MS: u64 = 100;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What every connection shares.
struct Shared {
    router: TowerToHyperService<Router>,
    builder: http1::Builder,
    config: ServiceConfig,
}

/// Serves `router` on `listener` with the limits of `config` until `shutdown` completes,
/// then shuts down within `config.shutdown_grace_ms` (see the module's guarantees).
pub async fn run(
    listener: TcpListener,
    router: Router,
    config: &ServiceConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let mut builder = http1::Builder::new();
    // The timeouts are the watchdog's; one flat buffer per answer is what the writer reads.
    builder.header_read_timeout(None).max_header_size(config.header_bytes_max).writev(false);
    let shared = Arc::new(Shared { router: TowerToHyperService::new(router), builder, config: config.clone() });
    let permits = Arc::new(Semaphore::new(config.connections_max.max(1)));
    let refusals = Arc::new(Semaphore::new(REFUSALS_MAX));
    let (closing, closing_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut failures = AcceptFailures::default();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => report(joined),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tasks.spawn(connection(stream, permit, shared.clone(), closing_rx.clone()));
                    }
                    Err(_) => {
                        if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                            tasks.spawn(refuse(stream, refusal));
                        }
                    }
                },
                Err(error) => failures.pause(error).await,
            },
        }
    }
    drop(listener);
    closing.send_replace(true);
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let drained = tokio::time::timeout(grace, async {
        while let Some(joined) = tasks.join_next().await {
            report(joined);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("{} connections were still open after the shutdown grace; closing them", tasks.len());
        tasks.shutdown().await;
    }
    Ok(())
}

/// Logs a connection task that panicked (a bug: handlers' panics are caught).
fn report(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined
        && error.is_panic()
    {
        tracing::error!("a connection task panicked: {error}");
    }
}

/// Accept failures: each pauses accepting; they are logged at most once a second.
#[derive(Default)]
struct AcceptFailures {
    logged: Option<Instant>,
}

impl AcceptFailures {
    async fn pause(&mut self, error: io::Error) {
        if self.logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            tracing::error!("cannot accept a connection: {error}; pausing accepts for {ACCEPT_PAUSE_MS} ms");
            self.logged = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(ACCEPT_PAUSE_MS)).await;
    }
}

/// Answers a connection over the cap with 503 and closes it gently.
async fn refuse(mut stream: TcpStream, refusal: OwnedSemaphorePermit) {
    let error = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_connections",
        "The server has as many connections open as it serves; retry shortly.",
    );
    let body = serde_json::to_vec(&error.wire()).unwrap_or_default();
    let mut answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    let linger = Duration::from_millis(LINGER_MS);
    if let Ok(Ok(())) = tokio::time::timeout(linger, stream.write_all(&answer)).await {
        linger_close(stream).await;
    }
    drop(refusal);
}

/// Shuts the writing side and discards what the client still sends, within the lingering
/// bounds, so that the client reads what was written rather than a reset.
async fn linger_close(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut buffer = [0u8; 4096];
    let mut discarded = 0;
    let _ = tokio::time::timeout(Duration::from_millis(LINGER_MS), async {
        while discarded < LINGER_BYTES {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => discarded += read,
            }
        }
    })
    .await;
}

/// Why the watchdog stopped serving a connection.
#[derive(Debug, PartialEq)]
enum Ended {
    /// hyper finished with it (the client closed, or asked to, or sent what hyper refused).
    Done,
    /// A timeout passed.
    TimedOut(Phase),
    /// The server is shutting down and the connection was answering no request.
    Closed,
}

/// Serves one connection under the watchdog, then closes it.
async fn connection(
    stream: TcpStream,
    permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    mut closing: watch::Receiver<bool>,
) {
    let clock = Arc::new(Clock::new());
    let io = TokioIo::new(Guarded::new(stream, clock.clone(), shared.config.header_bytes_max));
    let handler = Handler { shared: shared.clone(), clock: clock.clone() };
    let mut conn = shared.builder.serve_connection(io, handler);
    let ended = watch_connection(&mut conn, &clock, &shared.config, &mut closing).await;
    if let Ended::TimedOut(phase) = ended {
        tracing::debug!("closing a connection: the {phase:?} timeout passed");
    }
    // At shutdown a connection closes at once; else it lingers unless the client closed it.
    if !*closing.borrow() {
        let guarded = conn.into_parts().io.into_inner();
        if !guarded.read_eof {
            linger_close(guarded.stream).await;
        }
    }
    drop(permit);
}

/// Polls `conn` until it is done, a timeout passes or the shutdown closes it.
async fn watch_connection(
    conn: &mut http1::Connection<TokioIo<Guarded>, Handler>,
    clock: &Clock,
    config: &ServiceConfig,
    closing: &mut watch::Receiver<bool>,
) -> Ended {
    let header = Duration::from_millis(config.header_read_timeout_ms);
    let idle = Duration::from_millis(config.idle_timeout_ms);
    let mut shutting = false;
    loop {
        let now = Instant::now();
        let (phase, since) = clock.get();
        if shutting && phase != Phase::Busy {
            return Ended::Closed;
        }
        let deadline = match phase {
            Phase::Head => Some(since + header),
            Phase::Idle => Some(since + idle),
            Phase::Busy => None,
        };
        if deadline.is_some_and(|deadline| deadline <= now) {
            return Ended::TimedOut(phase);
        }
        // Wake at the deadline, or sooner: a phase may change to one with a sooner deadline.
        let wake = deadline.unwrap_or(now + header.min(idle)).min(now + header.min(idle));
        tokio::select! {
            biased;
            result = &mut *conn => {
                if let Err(error) = result {
                    tracing::debug!("a connection ended: {error}");
                }
                return Ended::Done;
            }
            _ = closing.changed(), if !shutting => {
                shutting = true;
                Pin::new(&mut *conn).graceful_shutdown();
            }
            () = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// What a connection is doing, for its watchdog.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// Waiting for a request head to be complete: from the connection's start, or from the
    /// first byte of a next request.
    Head = 0,
    /// Reading a request's body or answering it.
    Busy = 1,
    /// Waiting for the next request.
    Idle = 2,
}

/// A connection's phase and since when, in one atomic word: the phase in the top two bits,
/// milliseconds since the connection's start in the others.
struct Clock {
    start: Instant,
    word: AtomicU64,
}

impl Clock {
    const SHIFT: u32 = 62;

    fn new() -> Clock {
        Clock { start: Instant::now(), word: AtomicU64::new(0) }
    }

    fn set(&self, phase: Phase) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX) & ((1 << Self::SHIFT) - 1);
        self.word.store(((phase as u64) << Self::SHIFT) | ms, Ordering::Relaxed);
    }

    fn phase(&self) -> Phase {
        match self.word.load(Ordering::Relaxed) >> Self::SHIFT {
            0 => Phase::Head,
            1 => Phase::Busy,
            _ => Phase::Idle,
        }
    }

    fn get(&self) -> (Phase, Instant) {
        let word = self.word.load(Ordering::Relaxed);
        let since = self.start + Duration::from_millis(word & ((1 << Self::SHIFT) - 1));
        (self.phase(), since)
    }
}

/// The connection's socket as hyper reads and writes it: reading marks the start of a next
/// request's head, and writing puts the error shape into hyper's automatic answers.
struct Guarded {
    stream: TcpStream,
    clock: Arc<Clock>,
    header_bytes_max: usize,
    read_eof: bool,
    replacement: Option<Replacement>,
}

/// An automatic answer being written in place of hyper's: the bytes, how many are written,
/// and how many of hyper's they stand for.
struct Replacement {
    bytes: Vec<u8>,
    written: usize,
    consumed: usize,
}

impl Guarded {
    fn new(stream: TcpStream, clock: Arc<Clock>, header_bytes_max: usize) -> Guarded {
        Guarded { stream, clock, header_bytes_max, read_eof: false, replacement: None }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        if buf.filled().len() == before {
            this.read_eof = true;
        } else if this.clock.phase() == Phase::Idle {
            this.clock.set(Phase::Head);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replacement.is_none() {
            match find_automatic(buf) {
                None => return Pin::new(&mut this.stream).poll_write(cx, buf),
                Some((at, _, _)) if at > 0 => return Pin::new(&mut this.stream).poll_write(cx, &buf[..at]),
                Some((_, status, prefix)) => {
                    let Some(end) = find(buf, b"\r\n\r\n").map(|end| end + 4) else {
                        return Pin::new(&mut this.stream).poll_write(cx, buf);
                    };
                    let bytes = automatic_answer(status, &buf[prefix..end], this.header_bytes_max);
                    this.replacement = Some(Replacement { bytes, written: 0, consumed: end });
                }
            }
        }
        let Some(replacement) = this.replacement.as_mut() else { return Poll::Ready(Ok(0)) };
        while replacement.written < replacement.bytes.len() {
            let rest = &replacement.bytes[replacement.written..];
            match ready!(Pin::new(&mut this.stream).poll_write(cx, rest))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                written => replacement.written += written,
            }
        }
        let consumed = replacement.consumed;
        this.replacement = None;
        Poll::Ready(Ok(consumed))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The first lines of hyper's automatic answers, by status.
const AUTOMATIC: [(u16, &[u8]); 3] = [
    (400, b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n"),
    (414, b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\n"),
    (431, b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n"),
];

/// Where the first automatic answer in `bytes` starts, its status and the length of its
/// first lines.
fn find_automatic(bytes: &[u8]) -> Option<(usize, u16, usize)> {
    let mut from = 0;
    while let Some(at) = find(&bytes[from..], b"HTTP/1.1 4").map(|at| from + at) {
        for (status, prefix) in AUTOMATIC {
            if bytes[at..].starts_with(prefix) {
                return Some((at, status, prefix.len()));
            }
        }
        from = at + 1;
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// The answer written in place of hyper's automatic one: its status, the error shape, and
/// hyper's remaining header lines (`rest`, its date and the blank line).
fn automatic_answer(status: u16, rest: &[u8], header_bytes_max: usize) -> Vec<u8> {
    let error = match status {
        414 => ApiError::new(StatusCode::URI_TOO_LONG, "uri_too_long", "The request's URI is too long."),
        431 => ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header_too_large",
            format!("The request's head is larger than {header_bytes_max} bytes or has more than 100 fields."),
        )
        .with_details(serde_json::json!({"limit_bytes": header_bytes_max, "fields_max": 100})),
        _ => ApiError::bad_request(
            "malformed_request",
            "The request's start line or header fields cannot be read: a byte not allowed in the path \
             or a header, or a malformed line.",
        ),
    };
    let body = serde_json::to_vec(&error.wire()).unwrap_or_default();
    let reason = error.status.canonical_reason().unwrap_or("");
    let mut answer = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(rest);
    answer.extend_from_slice(&body);
    answer
}

/// The service hyper calls for each request head: checks the URI's length, times the body,
/// routes, and turns a panic into a 500.
#[derive(Clone)]
struct Handler {
    shared: Arc<Shared>,
    clock: Arc<Clock>,
}

type Answer = hyper::Response<Tracked>;

impl hyper::service::Service<Request<Incoming>> for Handler {
    type Response = Answer;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, std::convert::Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.clock.set(Phase::Busy);
        let clock = self.clock.clone();
        let config = &self.shared.config;
        let uri_bytes = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
        if uri_bytes > config.uri_bytes_max {
            let limit = config.uri_bytes_max;
            let error = ApiError::new(
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                format!("The request's URI is longer than {limit} bytes."),
            )
            .with_details(serde_json::json!({"limit_bytes": limit}));
            return Box::pin(std::future::ready(Ok(finish(error.into_response(), clock))));
        }
        let timed_out = Arc::new(AtomicBool::new(false));
        let body_timeout = Duration::from_millis(config.body_read_timeout_ms);
        let request = request.map(|body| Timed::new(body, body_timeout, timed_out.clone()));
        let (method, path) = (request.method().clone(), request.uri().path().to_owned());
        let routed = hyper::service::Service::call(&self.shared.router, request);
        Box::pin(async move {
            let mut response = match AssertUnwindSafe(routed).catch_unwind().await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(panic) => {
                    tracing::error!(
                        "the handler of {method} {path} panicked: {}; answered 500",
                        panic_message(&*panic)
                    );
                    internal_error().into_response()
                }
            };
            if timed_out.load(Ordering::Relaxed) {
                let limit = body_timeout.as_millis();
                response = ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!("The request body did not arrive within {limit} ms of its head."),
                )
                .with_details(serde_json::json!({"limit_ms": limit}))
                .into_response();
                response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
                return Ok(finish_keeping_connection_header(response, clock));
            }
            Ok(finish(response, clock))
        })
    }
}

/// The 500 a panicking handler is answered with.
fn internal_error() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "The server failed while answering this request; the failure is logged.",
    )
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str)).unwrap_or("")
}

/// An answer as hyper writes it: without a `connection` header of the service's (see the
/// module's guarantees), its body telling the watchdog when it is written.
fn finish(mut response: Response, clock: Arc<Clock>) -> Answer {
    response.headers_mut().remove(header::CONNECTION);
    finish_keeping_connection_header(response, clock)
}

/// [`finish`] for an answer whose `connection: close` is the server's own (after a body
/// timeout, the rest of the body may still come: the connection cannot be reused).
fn finish_keeping_connection_header(response: Response, clock: Arc<Clock>) -> Answer {
    response.map(|body| Tracked { body, clock })
}

/// A request body that fails once `body_read_timeout_ms` passed since its head.
struct Timed {
    body: Incoming,
    deadline: Option<Pin<Box<Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

impl Timed {
    fn new(body: Incoming, timeout: Duration, timed_out: Arc<AtomicBool>) -> Timed {
        let deadline = (!body.is_end_stream()).then(|| Box::pin(tokio::time::sleep(timeout)));
        Timed { body, deadline, timed_out }
    }
}

/// The error of a request body that did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimeout;

impl Body for Timed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(BoxError::from)));
        }
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An answer's body that, once written (dropped), marks its connection idle.
struct Tracked {
    body: axum::body::Body,
    clock: Arc<Clock>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.clock.set(Phase::Idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server of `router` with `config`, and the sender that stops it.
    async fn start(router: Router, config: ServiceConfig) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("an address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            run(listener, router, &config, async move {
                let _ = stopped.await;
            })
            .await
        });
        (address, stop)
    }

    /// Sends `request` on a new connection and reads until the server closes it.
    async fn exchange(address: std::net::SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(address).await.expect("connects");
        stream.write_all(request).await.expect("sent");
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the server closes the connection");
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn a_panicking_handler_is_answered_500_with_the_error_shape() {
        async fn panics() -> &'static str {
            panic!("a test handler panics")
        }
        let router = Router::new().route("/panic", get(panics)).route("/ok", get(|| async { "fine" }));
        let (address, stop) = start(router, ServiceConfig::default()).await;
        // Two requests on one connection: the panic neither drops it nor the next answer.
        let answer = exchange(
            address,
            b"GET /panic HTTP/1.1\r\nhost: x\r\n\r\nGET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 500 Internal Server Error\r\n"), "{answer}");
        assert!(answer.contains(r#"{"error":{"code":"internal_error","message":"#), "{answer}");
        let second = answer.find("HTTP/1.1 200 OK").expect("the second request is answered");
        assert!(answer[second..].ends_with("fine"), "{answer}");
        let _ = stop.send(());
    }

    #[tokio::test]
    async fn hypers_automatic_answers_get_the_error_shape() {
        let router = Router::new().route("/ok", get(|| async { "fine" }));
        let config = ServiceConfig { header_bytes_max: 1024, ..ServiceConfig::default() };
        let (address, stop) = start(router, config).await;
        let big = format!("GET /ok HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(4000));
        let answer = exchange(address, big.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{answer}");
        assert!(answer.contains(r#"{"error":{"code":"header_too_large""#), "{answer}");
        let answer = exchange(address, b"GET /o\x01k HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
        assert!(answer.contains(r#""code":"malformed_request""#), "{answer}");
        // After a good answer on the same connection, a bad head is still recognized.
        let answer = exchange(address, b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\nGET /o\x01k HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.contains("fine"), "{answer}");
        assert!(answer.contains("\r\n\r\n{\"error\":{\"code\":\"malformed_request\""), "{answer}");
        let _ = stop.send(());
    }

    #[test]
    fn an_automatic_answer_is_found_behind_another_answers_tail() {
        let tail = b"{\"a\":\"HTTP/1.1 400 Bad Request\"}";
        let automatic = b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: D\r\n\r\n";
        assert_eq!(find_automatic(tail), None);
        let both = [&tail[..], &automatic[..]].concat();
        assert_eq!(find_automatic(&both), Some((tail.len(), 414, AUTOMATIC[1].1.len())));
        let answer = String::from_utf8(automatic_answer(414, b"date: D\r\n\r\n", 1)).expect("text");
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n") && head.ends_with("\r\ndate: D"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let error: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(error["error"]["code"], "uri_too_long");
    }
}
