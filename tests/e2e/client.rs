//! A small blocking HTTP/1.1 client over `std::net::TcpStream`, for the e2e tests.
//!
//! It never normalises what it sends: tests write raw bytes (bad request lines, `..`, `%00`) and
//! read back exactly one response at a time, framed by `Content-Length`, `chunked` or the close
//! of the connection. Keep-alive and pipelining are the caller's business: send several requests,
//! then call [`Conn::read_response`] once per request. Every read and write has a timeout, so a
//! silent server fails the test instead of hanging it.

// A shared harness: not every test file uses every helper.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

/// Read and write timeout of a connection unless the test sets another.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    /// e.g. `HTTP/1.1`.
    pub version: String,
    pub status: u16,
    pub reason: String,
    /// Header fields in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// `Content-Length` parsed, if present.
    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length").map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad Content-Length {v:?}"))
        })
    }

    /// Whether a `Connection` header lists `token`.
    pub fn connection_has(&self, token: &str) -> bool {
        self.header_all("connection")
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The body as (lossy) text, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A short description for assertion messages (status, headers, start of the body).
    pub fn describe(&self) -> String {
        let mut s = format!("{} {} {}\n", self.version, self.status, self.reason);
        for (n, v) in &self.headers {
            s.push_str(&format!("{n}: {v}\n"));
        }
        let shown = &self.body[..self.body.len().min(300)];
        s.push_str(&format!(
            "[body {} bytes] {}",
            self.body.len(),
            String::from_utf8_lossy(shown)
        ));
        s
    }
}

/// How the body of the response to read is framed by the request that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The response to a GET-like request: body per headers.
    Body,
    /// The response to a HEAD: headers only, whatever `Content-Length` says.
    NoBody,
}

/// A client connection with its own read buffer.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

impl Conn {
    /// Connects with [`IO_TIMEOUT`] for reads and writes. Panics on failure.
    pub fn connect(addr: SocketAddr) -> Conn {
        Conn::try_connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    pub fn try_connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
            pos: 0,
        })
    }

    /// Wraps a stream connected elsewhere (from another source address, or in another
    /// network namespace), with the timeouts of [`Conn::try_connect`].
    pub fn from_stream(stream: TcpStream) -> Conn {
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: Vec::new(),
            pos: 0,
        }
    }

    pub fn set_read_timeout(&self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).unwrap();
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes raw bytes, panicking on error.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write: {e}"));
    }

    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends a request built by [`request_bytes`] and reads its response.
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.send(&request_bytes(method, target, headers, body));
        let expect = if method.eq_ignore_ascii_case("HEAD") {
            Expect::NoBody
        } else {
            Expect::Body
        };
        self.read_response(expect)
            .unwrap_or_else(|e| panic!("{method} {target}: reading the response: {e}"))
    }

    /// `GET target` on this connection (keep-alive).
    pub fn get(&mut self, target: &str) -> Response {
        self.request("GET", target, &[], b"")
    }

    /// Reads one response. `1xx` interim responses are skipped.
    pub fn read_response(&mut self, expect: Expect) -> io::Result<Response> {
        loop {
            let r = self.read_one(expect)?;
            if (100..200).contains(&r.status) && r.status != 101 {
                continue;
            }
            return Ok(r);
        }
    }

    fn read_one(&mut self, expect: Expect) -> io::Result<Response> {
        let head_end = loop {
            if let Some(i) = find(&self.buf[self.pos..], b"\r\n\r\n") {
                break self.pos + i + 4;
            }
            if self.buf.len() - self.pos > 1 << 20 {
                return Err(io::Error::other("response head over 1 MiB"));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a complete response head ({} bytes: {:?})",
                        self.buf.len() - self.pos,
                        String::from_utf8_lossy(&self.buf[self.pos..])
                    ),
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[self.pos..head_end - 4]).into_owned();
        self.pos = head_end;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_string();
        let status = parts
            .next()
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|_| version.starts_with("HTTP/"))
            .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
        let reason = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        for line in lines {
            let (n, v) = line
                .split_once(':')
                .ok_or_else(|| io::Error::other(format!("bad header line {line:?}")))?;
            headers.push((n.to_string(), v.trim().to_string()));
        }
        let mut resp = Response {
            version,
            status,
            reason,
            headers,
            body: Vec::new(),
            chunked: false,
        };
        let no_body = expect == Expect::NoBody
            || (100..200).contains(&status)
            || status == 204
            || status == 304;
        if no_body {
            return Ok(resp);
        }
        let te = resp
            .header("transfer-encoding")
            .map(str::to_ascii_lowercase);
        if te.as_deref().is_some_and(|t| t.trim().ends_with("chunked")) {
            resp.chunked = true;
            resp.body = self.read_chunked()?;
        } else if let Some(n) = resp.content_length() {
            resp.body = self.read_exact_n(n as usize)?;
        } else {
            resp.body = self.read_to_close()?;
        }
        Ok(resp)
    }

    /// Reads more bytes into the buffer; returns how many (0 = EOF).
    fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > (1 << 20) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + 256 * 1024, 0);
        let n = loop {
            match self.stream.read(&mut self.buf[old..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e);
                }
            }
        };
        self.buf.truncate(old + n);
        Ok(n)
    }

    fn read_exact_n(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.pos == self.buf.len() && self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("body truncated: got {} of {n} bytes", out.len()),
                ));
            }
            let take = (n - out.len()).min(self.buf.len() - self.pos);
            out.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
        }
        Ok(out)
    }

    fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf[self.pos..], b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[self.pos..self.pos + i]).into_owned();
                self.pos += i + 2;
                return Ok(line);
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside chunked framing",
                ));
            }
        }
    }

    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let line = self.read_line()?;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| io::Error::other(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                // Trailers, then the empty line.
                while !self.read_line()?.is_empty() {}
                return Ok(out);
            }
            out.extend_from_slice(&self.read_exact_n(size)?);
            let crlf = self.read_exact_n(2)?;
            if crlf != b"\r\n" {
                return Err(io::Error::other("chunk not followed by CRLF"));
            }
        }
    }

    fn read_to_close(&mut self) -> io::Result<Vec<u8>> {
        let mut out = self.buf[self.pos..].to_vec();
        self.pos = self.buf.len();
        let mut tmp = vec![0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(0) => return Ok(out),
                Ok(n) => out.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(out),
                Err(e) => return Err(e),
            }
        }
    }

    /// Bytes received but not consumed by a response (e.g. a body after a HEAD response).
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Reads for up to `within`: returns the bytes that arrived (plus unconsumed buffered ones)
    /// and whether the peer closed the connection.
    pub fn drain(&mut self, within: Duration) -> (Vec<u8>, bool) {
        self.stream.set_read_timeout(Some(within)).unwrap();
        let mut extra = self.buf[self.pos..].to_vec();
        self.pos = self.buf.len();
        let mut tmp = [0u8; 4096];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(0) => return (extra, true),
                Ok(n) => extra.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (extra, true),
                Err(_) => return (extra, false),
            }
        }
    }

    /// Waits up to `within` for the peer to close. `Ok(extra)` = closed, with the bytes that came
    /// before the close; `Err` = still open after `within`.
    pub fn wait_closed(&mut self, within: Duration) -> Result<Vec<u8>, String> {
        match self.drain(within) {
            (extra, true) => Ok(extra),
            (extra, false) => Err(format!(
                "still open after {within:?} ({} extra bytes)",
                extra.len()
            )),
        }
    }

    /// Half-closes the write side.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// Builds a request: request line, `Host` (unless given), the headers, a `Content-Length` when
/// there is a body and neither `Content-Length` nor `Transfer-Encoding` was given, and the body
/// verbatim (already chunk-encoded if the caller chose chunked).
pub fn request_bytes(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
    let has = |n: &str| headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(n));
    if !has("host") {
        out.extend_from_slice(b"Host: e2e.test\r\n");
    }
    for (n, v) in headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    if !body.is_empty() && !has("content-length") && !has("transfer-encoding") {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Encodes `body` as chunked transfer coding, cutting it into pieces of the given sizes in turn.
pub fn chunk_encode(body: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].max(1).min(rest.len());
        i += 1;
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// One request on a fresh connection that asks to close afterwards.
pub fn fetch(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut h: Vec<(&str, &str)> = headers.to_vec();
    h.push(("Connection", "close"));
    Conn::connect(addr).request(method, target, &h, body)
}

/// `GET target` on a fresh connection.
pub fn get(addr: SocketAddr, target: &str) -> Response {
    fetch(addr, "GET", target, &[], b"")
}

/// Sends raw bytes on a fresh connection and reads one response.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> io::Result<Response> {
    let mut c = Conn::try_connect(addr)?;
    c.try_send(bytes)?;
    c.read_response(Expect::Body)
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}
