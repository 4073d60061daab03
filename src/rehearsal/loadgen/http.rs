//! One keep-alive HTTP/1.1 connection to a server, spoken directly.
//!
//! A rehearsal over HTTP shares the machine with the server it measures, so its client must
//! cost little: a request is written from one reused buffer, and an answer is read into
//! another and parsed in place. There is no connection task and no channel between the
//! submitter and its socket.
//!
//! What it speaks: one request at a time (no pipelining), answers framed by
//! `content-length`. An answer without one (chunked, or read to the close) is an error, as
//! is a head over [`HEAD_BYTES_MAX`] or a body over [`BODY_BYTES_MAX`]; `emporium serve`
//! frames every answer a rehearsal asks for by length.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest head (status line and headers) read, in bytes.
pub const HEAD_BYTES_MAX: usize = 64 * 1024;

/// Largest body read, in bytes (a page of 1,000 events is well under).
pub const BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Most headers an answer may carry.
const HEADERS_MAX: usize = 32;

/// Bytes asked of the socket per read.
const READ_BYTES: usize = 16 * 1024;

/// One keep-alive connection.
pub struct Connection {
    stream: TcpStream,
    /// `host:port`, the `Host` header.
    host: String,
    /// The `Authorization` header's value, when the server asks for a token.
    authorization: Option<String>,
    /// The request being written; reused.
    request: Vec<u8>,
    /// The answer being read: its first `filled` bytes.
    received: Vec<u8>,
    filled: usize,
}

/// An answer: its status and where its body lies in the connection's buffer.
struct Framed {
    status: u16,
    body_start: usize,
    body_end: usize,
}

impl Connection {
    /// Connects to `address` (`host:port`); `token` is sent as a bearer token.
    pub async fn open(address: &str, token: Option<&str>) -> Result<Connection, String> {
        let stream = TcpStream::connect(address).await.map_err(|e| format!("cannot connect to {address}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| format!("{address}: {e}"))?;
        Ok(Connection {
            stream,
            host: address.to_owned(),
            authorization: token.map(|t| format!("Bearer {t}")),
            request: Vec::with_capacity(1024),
            received: vec![0; READ_BYTES],
            filled: 0,
        })
    }

    /// Sends `method path` with `body` (JSON, when given) and reads the answer: its status
    /// and its body, which lives until the next request.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        idempotency_key: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<(u16, &[u8]), String> {
        self.write_head(method, path, idempotency_key, body);
        if let Some(body) = body {
            self.request.extend_from_slice(body);
        }
        self.send().await.map_err(|e| format!("{method} {path}: {e}"))?;
        let framed = self.receive().await.map_err(|e| format!("{method} {path}: {e}"))?;
        Ok((framed.status, &self.received[framed.body_start..framed.body_end]))
    }

    fn write_head(&mut self, method: &str, path: &str, idempotency_key: Option<&str>, body: Option<&[u8]>) {
        let request = &mut self.request;
        request.clear();
        for part in [method, " ", path, " HTTP/1.1\r\nhost: ", &self.host, "\r\n"] {
            request.extend_from_slice(part.as_bytes());
        }
        if let Some(authorization) = &self.authorization {
            for part in ["authorization: ", authorization, "\r\n"] {
                request.extend_from_slice(part.as_bytes());
            }
        }
        if let Some(key) = idempotency_key {
            for part in ["idempotency-key: ", key, "\r\n"] {
                request.extend_from_slice(part.as_bytes());
            }
        }
        if body.is_some() {
            request.extend_from_slice(b"content-type: application/json\r\n");
        }
        let length = body.map_or(0, <[u8]>::len);
        request.extend_from_slice(format!("content-length: {length}\r\n\r\n").as_bytes());
    }

    /// Writes the whole request.
    async fn send(&mut self) -> Result<(), String> {
        self.stream.write_all(&self.request).await.map_err(|e| format!("writing: {e}"))
    }

    /// Reads one answer into `received`, which then holds it and nothing else.
    async fn receive(&mut self) -> Result<Framed, String> {
        // The last answer is consumed by now; a server that sent more than it framed is
        // caught below, not carried into this answer.
        self.filled = 0;
        let (status, head_len, body_len) = loop {
            if let Some(head) = parse_head(&self.received[..self.filled])? {
                break head;
            }
            if self.filled > HEAD_BYTES_MAX {
                return Err(format!("an answer's head is over {HEAD_BYTES_MAX} bytes"));
            }
            self.fill(0).await?;
        };
        let end = head_len + body_len;
        while self.filled < end {
            self.fill(end).await?;
        }
        if self.filled > end {
            return Err(format!("the server sent {} bytes after its answer", self.filled - end));
        }
        Ok(Framed { status, body_start: head_len, body_end: end })
    }

    /// Reads what the socket has, at least one byte, with room for `want` bytes in all.
    async fn fill(&mut self, want: usize) -> Result<(), String> {
        // Grown, and so zeroed, only when an answer is bigger than any before.
        let room = want.max(self.filled + READ_BYTES);
        if self.received.len() < room {
            self.received.resize(room, 0);
        }
        // `read`, not `readable` and `try_read`: after a read that did not fill the buffer it
        // waits for the socket's next event instead of asking the kernel again first.
        match self.stream.read(&mut self.received[self.filled..]).await {
            Ok(0) => Err("the server closed the connection".to_owned()),
            Ok(n) => {
                self.filled += n;
                Ok(())
            }
            Err(e) => Err(format!("reading: {e}")),
        }
    }
}

/// The status, head length and body length of the answer at the start of `bytes`, or
/// `None` while its head is incomplete.
fn parse_head(bytes: &[u8]) -> Result<Option<(u16, usize, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("an answer that is not HTTP/1.1: {e}")),
    };
    let status = response.code.ok_or("an answer without a status")?;
    let mut body_len = None;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("a chunked answer, which a rehearsal does not read".to_owned());
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            let len = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| format!("content-length {:?} is not a length", String::from_utf8_lossy(header.value)))?;
            if body_len.is_some_and(|earlier| earlier != len) {
                return Err("two different content-lengths".to_owned());
            }
            body_len = Some(len);
        }
    }
    // No body by definition: informational, 204 and 304 answers.
    let bodiless = (100..200).contains(&status) || status == 204 || status == 304;
    let body_len = match body_len {
        Some(len) => len,
        None if bodiless => 0,
        None => return Err(format!("a {status} answer without a content-length")),
    };
    if body_len > BODY_BYTES_MAX {
        return Err(format!("an answer of {body_len} bytes, over {BODY_BYTES_MAX}"));
    }
    Ok(Some((status, head_len, body_len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_framed_by_its_content_length() {
        let check =
            |bytes: &[u8], expected: Result<Option<(u16, usize, usize)>, &str>| match (parse_head(bytes), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{:?}", String::from_utf8_lossy(bytes)),
                (Err(error), Err(part)) => assert!(error.contains(part), "{error}"),
                (got, want) => panic!("{:?}: got {got:?}, want {want:?}", String::from_utf8_lossy(bytes)),
            };
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        check(ok, Ok(Some((200, ok.len() - 2, 2))));
        check(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n", Ok(None));
        // The head is complete before its body arrives.
        let conflict = b"HTTP/1.1 409 Conflict\r\nContent-Length:  7 \r\n\r\n";
        check(conflict, Ok(Some((409, conflict.len(), 7))));
        let no_content = b"HTTP/1.1 204 No Content\r\n\r\n";
        check(no_content, Ok(Some((204, no_content.len(), 0))));
        check(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", Err("chunked"));
        check(b"HTTP/1.1 200 OK\r\n\r\n", Err("without a content-length"));
        check(b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", Err("is not a length"));
        check(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n", Err("two different"));
        check(b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999\r\n\r\n", Err("over"));
        check(b"SMTP ready\r\n\r\n", Err("not HTTP/1.1"));
    }

    /// A one-connection server on `listener`: for each request it reads, it checks the
    /// bytes and writes the answer paired with it, in two writes; then it closes.
    fn serve(listener: std::net::TcpListener, exchanges: Vec<(String, &'static [u8])>) -> std::thread::JoinHandle<()> {
        use std::io::{Read, Write};
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accepts");
            for (request, answer) in exchanges {
                let mut got = vec![0; request.len()];
                stream.read_exact(&mut got).expect("reads the request");
                assert_eq!(String::from_utf8_lossy(&got), request);
                let (first, second) = answer.split_at(answer.len() / 2);
                stream.write_all(first).expect("writes");
                stream.flush().expect("flushes");
                stream.write_all(second).expect("writes");
            }
        })
    }

    #[test]
    fn a_connection_writes_whole_requests_and_reads_framed_answers() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let address = listener.local_addr().expect("an address").to_string();
        let head = |line: &str, extra: &str| {
            format!("{line} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer t0k\r\n{extra}")
        };
        let exchanges: Vec<(String, &'static [u8])> = vec![
            (
                head(
                    "POST /v1/shops/s/orders",
                    "idempotency-key: place-1\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
                ),
                b"HTTP/1.1 201 Created\r\ncontent-length: 13\r\n\r\n{\"events\":[]}",
            ),
            (head("GET /healthz", "content-length: 0\r\n\r\n"), b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA"),
        ];
        let server = serve(listener, exchanges);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async {
            let mut connection = Connection::open(&address, Some("t0k")).await.expect("connects");
            let (status, body) =
                connection.request("POST", "/v1/shops/s/orders", Some("place-1"), Some(b"{}")).await.expect("answered");
            assert_eq!((status, body), (201, &b"{\"events\":[]}"[..]));
            // More than the answer framed is an error, not the start of the next answer.
            let error = connection.request("GET", "/healthz", None, None).await.expect_err("over-long");
            assert!(error.contains("bytes after its answer"), "{error}");
            // The server has closed.
            let error = connection.request("GET", "/healthz", None, None).await.expect_err("closed");
            assert!(error.starts_with("GET /healthz: "), "{error}");
        });
        server.join().expect("the server checked every request");
    }
}
