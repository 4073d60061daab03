//! The real `emporium serve` binary on a random loopback port, and a raw HTTP/1.1 client
//! that sends exactly the bytes a test asks for (bad JSON, control characters, huge bodies).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub const ADMIN: &str = "admin-token-0123456789";
pub const OPERATOR: &str = "operator-token-0123456789";
pub const AUDITOR: &str = "auditor-token-0123456789";

/// A running server; killed when dropped unless it already exited.
pub struct Server {
    pub child: Child,
    pub address: SocketAddr,
    pub stdout: BufReader<ChildStdout>,
}

impl Server {
    /// Starts `emporium serve` on `data`; with `tokens`, writes the three test tokens to a file.
    pub fn start(data: &Path, tokens: bool) -> Server {
        Server::start_with(data, tokens, &[])
    }

    /// [`Server::start`] with more arguments for `serve`.
    pub fn start_with(data: &Path, tokens: bool, args: &[&str]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_emporium"));
        command.args(["serve", "--listen", "127.0.0.1:0", "--data"]).arg(data).args(args);
        command.env_remove("EMPORIUM_TOKENS");
        if tokens {
            let file = data.with_extension("tokens");
            let text =
                format!("# test tokens\nadmin root {ADMIN}\noperator shop {OPERATOR}\nauditor books {AUDITOR}\n");
            std::fs::write(&file, text).expect("tokens written");
            command.arg("--tokens").arg(&file);
        }
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("the server starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("the server announces its address");
        let address = announced_address(&line);
        Server { child, address, stdout }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the server to exit; returns whether it exited 0 and what it printed after start.
    pub fn wait(mut self) -> (bool, String) {
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).expect("stdout read");
        let status = self.child.wait().expect("waits");
        (status.success(), rest)
    }

    pub fn client(&self) -> Client {
        Client { address: self.address, token: None }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The error code of an error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or("").to_owned()
    }
}

/// Sends requests, one connection each.
#[derive(Clone)]
pub struct Client {
    pub address: SocketAddr,
    pub token: Option<String>,
}

impl Client {
    pub fn with_token(&self, token: &str) -> Client {
        Client { address: self.address, token: Some(token.to_owned()) }
    }

    pub fn get(&self, path: &str) -> Response {
        self.send("GET", path, &[], b"")
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.send("POST", path, &[("content-type", "application/json")], body.to_string().as_bytes())
    }

    /// Sends one request with exactly these headers and body bytes.
    pub fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.try_send(method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn try_send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut stream = TcpStream::connect(self.address)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n", self.address);
        if let Some(token) = &self.token {
            request += &format!("authorization: Bearer {token}\r\n");
        }
        for (name, value) in headers {
            request += &format!("{name}: {value}\r\n");
        }
        request += &format!("content-length: {}\r\n\r\n", body.len());
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        // The server may answer (413) and close before reading a huge body: a failed write is
        // not an error as long as a response comes back.
        let _ = stream.write_all(&bytes);
        let mut raw = Vec::new();
        let read = stream.read_to_end(&mut raw);
        if raw.is_empty() {
            read?;
            return Err(std::io::Error::other("no response"));
        }
        parse(&raw)
    }
}

fn parse(raw: &[u8]) -> std::io::Result<Response> {
    let bad = |what: &str| std::io::Error::other(format!("bad response: {what}"));
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad(status_line))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body).ok_or_else(|| bad("chunked body"))?;
    }
    Ok(Response { status, headers, body })
}

fn dechunk(mut bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = bytes.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&bytes[..line_end]).ok()?.trim(), 16).ok()?;
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(bytes.get(..size)?);
        bytes = bytes.get(size + 2..)?;
    }
}

/// A Server-Sent Events follower over one connection.
pub struct Follower {
    reader: BufReader<TcpStream>,
    /// Bytes of the event stream not yet consumed (after de-chunking).
    pending: Vec<u8>,
}

impl Follower {
    pub fn connect(client: &Client, path: &str, last_event_id: Option<u64>) -> Follower {
        let mut stream = TcpStream::connect(client.address).expect("connects");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let mut request = format!("GET {path} HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\n", client.address);
        if let Some(token) = &client.token {
            request += &format!("authorization: Bearer {token}\r\n");
        }
        if let Some(id) = last_event_id {
            request += &format!("last-event-id: {id}\r\n");
        }
        request += "\r\n";
        stream.write_all(request.as_bytes()).expect("request sent");
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).expect("status line");
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        loop {
            line.clear();
            reader.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
        }
        Follower { reader, pending: Vec::new() }
    }

    fn fill(&mut self) {
        // The stream is chunked: read one chunk.
        let mut size_line = String::new();
        self.reader.read_line(&mut size_line).expect("chunk size");
        let size = usize::from_str_radix(size_line.trim(), 16).expect("a chunk size");
        let mut chunk = vec![0; size + 2];
        self.reader.read_exact(&mut chunk).expect("chunk");
        self.pending.extend_from_slice(&chunk[..size]);
    }

    /// The next event's id and data, skipping keep-alive comments.
    pub fn next(&mut self) -> (u64, Value) {
        loop {
            if let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.pending.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("utf-8");
                let (mut id, mut data) = (None, String::new());
                for line in text.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        id = value.trim().parse().ok();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data += value.trim_start();
                    }
                }
                if let Some(id) = id {
                    return (id, serde_json::from_str(&data).expect("JSON data"));
                }
                continue;
            }
            self.fill();
        }
    }
}

/// The address a starting `emporium serve` announces on its first line of output.
pub fn announced_address(line: &str) -> std::net::SocketAddr {
    line.split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|address| address.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}
