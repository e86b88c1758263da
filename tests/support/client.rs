//! The one blocking HTTP/1.1 client of the tests, over `std::net::TcpStream`.
//!
//! It never normalises what it sends: tests write raw bytes (bad request lines, `..`, `%00`) and
//! read back exactly one response at a time, framed by `Content-Length`, `chunked` or the close
//! of the connection; the head is parsed by `httparse`, and anything that does not parse is an
//! `InvalidData` error (the stress tool's chaos mode counts those as foreign bytes). A [`Conn`]
//! collects the body ([`Conn::read_response`]) or streams it into a sink
//! ([`Conn::read_response_into`]); [`Client`] is the stress tool's reconnecting keep-alive GET
//! client on top of it. Keep-alive and pipelining on a [`Conn`] are the caller's business: send
//! several requests, then read one response per request. Every read and write has a timeout,
//! so a silent server fails the test instead of hanging it.

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

/// The first value of header `name` (case-insensitive) in a field list.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    header_all(headers, name).into_iter().next()
}

/// Every value of header `name` (case-insensitive) in a field list, in order.
pub fn header_all<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        header_all(&self.headers, name)
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

/// The status line and header fields of one response, and how its body is framed.
#[derive(Debug, Clone)]
pub struct Head {
    /// e.g. `HTTP/1.1`.
    pub version: String,
    pub status: u16,
    pub reason: String,
    /// Header fields in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    /// `Content-Length`, if given (two different values are an error).
    pub content_length: Option<u64>,
    /// The last transfer coding is `chunked`.
    pub chunked: bool,
    /// The server closes after this response (`Connection: close`, or HTTP/1.0 without
    /// `keep-alive`).
    pub close: bool,
}

impl Head {
    /// Whether a body follows this head, given the request that caused it.
    pub fn has_body(&self, expect: Expect) -> bool {
        !(expect == Expect::NoBody
            || (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304)
    }

    /// Whether the body is framed by `Content-Length` or chunked coding (else it runs to the
    /// close of the connection).
    pub fn framed(&self) -> bool {
        self.chunked || self.content_length.is_some()
    }
}

/// Most header fields a response may carry before the client calls it malformed.
const MAX_HEADERS: usize = 512;
/// Largest response head accepted.
const MAX_HEAD: usize = 1 << 20;
/// The least free room in the read buffer before a read (it grows when a head needs more).
const READ_ROOM: usize = 64 * 1024;

/// A malformed response: bytes that are not the answer asked for.
fn malformed(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Parses a complete head (status line and fields, without the final empty line).
fn parse_head(bytes: &[u8]) -> io::Result<Head> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut fields);
    let quoted = || String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
    // httparse wants the empty line that ends the head.
    let mut with_end = bytes.to_vec();
    with_end.extend_from_slice(b"\r\n\r\n");
    match r.parse(&with_end) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(malformed(format!("incomplete head {:?}", quoted())))
        }
        Err(e) => {
            return Err(malformed(format!(
                "bad response head ({e}): {:?}",
                quoted()
            )))
        }
    }
    let minor = r.version.unwrap_or(1);
    let mut head = Head {
        version: format!("HTTP/1.{minor}"),
        status: r.code.unwrap_or_default(),
        reason: r.reason.unwrap_or_default().to_string(),
        headers: Vec::with_capacity(r.headers.len()),
        content_length: None,
        chunked: false,
        close: minor == 0,
    };
    for f in r.headers.iter() {
        let value = String::from_utf8_lossy(f.value).trim().to_string();
        if f.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse()
                .map_err(|_| malformed(format!("bad Content-Length {value:?}")))?;
            if head.content_length.is_some_and(|old| old != n) {
                return Err(malformed("conflicting Content-Length headers".into()));
            }
            head.content_length = Some(n);
        } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().trim().ends_with("chunked");
        } else if f.name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                head.close = true;
            } else if v.contains("keep-alive") {
                head.close = false;
            }
        }
        head.headers.push((f.name.to_string(), value));
    }
    Ok(head)
}

/// A client connection with its own read buffer.
pub struct Conn {
    stream: TcpStream,
    /// Received bytes are `buf[pos..end]`; the rest is room for the next read.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl Conn {
    /// Connects with [`IO_TIMEOUT`] for reads and writes. Panics on failure.
    pub fn connect(addr: SocketAddr) -> Conn {
        Conn::try_connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    pub fn try_connect(addr: SocketAddr) -> io::Result<Conn> {
        Conn::open(addr, Duration::from_secs(5), IO_TIMEOUT)
    }

    /// Wraps a connected stream as it is (its timeouts are the caller's).
    pub fn from_stream(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: vec![0; 4 * READ_ROOM],
            pos: 0,
            end: 0,
        }
    }

    /// Connects within `connect`, with `io` as the timeout of every read and write.
    pub fn open(addr: SocketAddr, connect: Duration, io: Duration) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, connect)?;
        stream.set_read_timeout(Some(io))?;
        stream.set_write_timeout(Some(io))?;
        stream.set_nodelay(true)?;
        Ok(Conn::from_stream(stream))
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

    /// Reads one response with its body collected. `1xx` interim responses are skipped.
    pub fn read_response(&mut self, expect: Expect) -> io::Result<Response> {
        let mut body = Vec::new();
        let head = self.read_response_into(expect, &mut |b| body.extend_from_slice(b))?;
        Ok(Response {
            version: head.version,
            status: head.status,
            reason: head.reason,
            headers: head.headers,
            body,
            chunked: head.chunked,
        })
    }

    /// Reads one response, feeding its body to `sink` as it arrives. `1xx` interim responses
    /// (but `101`) are skipped.
    pub fn read_response_into(
        &mut self,
        expect: Expect,
        sink: &mut dyn FnMut(&[u8]),
    ) -> io::Result<Head> {
        loop {
            let head = self.read_head()?;
            if (100..200).contains(&head.status) && head.status != 101 {
                continue;
            }
            self.read_body_into(&head, expect, sink)?;
            return Ok(head);
        }
    }

    /// Reads the next response head.
    pub fn read_head(&mut self) -> io::Result<Head> {
        let head_end = loop {
            if let Some(i) = find(self.buffered(), b"\r\n\r\n") {
                break self.pos + i;
            }
            if self.end - self.pos > MAX_HEAD {
                return Err(malformed(format!("response head over {MAX_HEAD} bytes")));
            }
            if self.fill()? == 0 {
                let what = if self.pos == self.end {
                    "before the answer".to_string()
                } else {
                    format!(
                        "before a complete response head ({} bytes: {:?})",
                        self.end - self.pos,
                        String::from_utf8_lossy(self.buffered())
                    )
                };
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed {what}"),
                ));
            }
        };
        let head = parse_head(&self.buf[self.pos..head_end]);
        self.pos = head_end + 4;
        head
    }

    /// Reads the body `head` frames (none for a HEAD, 1xx, 204 or 304) into `sink`; returns
    /// its length.
    pub fn read_body_into(
        &mut self,
        head: &Head,
        expect: Expect,
        sink: &mut dyn FnMut(&[u8]),
    ) -> io::Result<u64> {
        if !head.has_body(expect) {
            Ok(0)
        } else if head.chunked {
            self.read_chunked(sink)
        } else if let Some(n) = head.content_length {
            self.read_exact_into(n, sink)?;
            Ok(n)
        } else {
            self.read_to_close(sink)
        }
    }

    /// Reads more bytes into the buffer; returns how many (0 = EOF).
    fn fill(&mut self) -> io::Result<usize> {
        if self.pos == self.end {
            (self.pos, self.end) = (0, 0);
        }
        if self.buf.len() - self.end < READ_ROOM {
            self.buf.copy_within(self.pos..self.end, 0);
            (self.pos, self.end) = (0, self.end - self.pos);
            if self.buf.len() - self.end < READ_ROOM {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        loop {
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn read_exact_into(&mut self, n: u64, sink: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        let mut left = n;
        while left > 0 {
            if self.pos == self.end && self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("body truncated: got {} of {n} bytes", n - left),
                ));
            }
            let take = (self.end - self.pos).min(usize::try_from(left).unwrap_or(usize::MAX));
            sink(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            left -= take as u64;
        }
        Ok(())
    }

    /// The next CRLF-terminated line, CRLF included.
    fn read_line(&mut self) -> io::Result<&[u8]> {
        loop {
            if let Some(i) = find(self.buffered(), b"\r\n") {
                let line = &self.buf[self.pos..self.pos + i + 2];
                self.pos += i + 2;
                return Ok(line);
            }
            if self.end - self.pos > MAX_HEAD {
                return Err(malformed(format!(
                    "chunked framing line over {MAX_HEAD} bytes"
                )));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside chunked framing",
                ));
            }
        }
    }

    fn read_chunked(&mut self, sink: &mut dyn FnMut(&[u8])) -> io::Result<u64> {
        let mut total = 0;
        loop {
            let line = self.read_line()?;
            let size = match httparse::parse_chunk_size(line) {
                Ok(httparse::Status::Complete((_, size))) => size,
                _ => {
                    return Err(malformed(format!(
                        "bad chunk size line {:?}",
                        String::from_utf8_lossy(line)
                    )))
                }
            };
            if size == 0 {
                // Trailers, then the empty line.
                while self.read_line()? != b"\r\n" {}
                return Ok(total);
            }
            self.read_exact_into(size, sink)?;
            total += size;
            if self.read_line()? != b"\r\n" {
                return Err(malformed("chunk not followed by CRLF".into()));
            }
        }
    }

    fn read_to_close(&mut self, sink: &mut dyn FnMut(&[u8])) -> io::Result<u64> {
        let mut total = 0;
        loop {
            if self.pos < self.end {
                sink(self.buffered());
                total += (self.end - self.pos) as u64;
                self.pos = self.end;
            }
            match self.fill() {
                Ok(0) => return Ok(total),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(total),
                Err(e) => return Err(e),
            }
        }
    }

    /// Bytes received but not consumed by a response (e.g. a body after a HEAD response).
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    /// Reads for up to `within`: returns the bytes that arrived (plus unconsumed buffered ones)
    /// and whether the peer closed the connection.
    pub fn drain(&mut self, within: Duration) -> (Vec<u8>, bool) {
        self.stream.set_read_timeout(Some(within)).unwrap();
        let mut extra = self.buffered().to_vec();
        self.pos = self.end;
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

/// Keep-alive `GET`s to one address, the connection opened on demand and dropped after any
/// error or a response that closes it; bodies are streamed into a sink (so a 16 MiB body is
/// hashed, not buffered). Unlike [`Conn`], it is strict about keep-alive: a response that
/// keeps the connection open without framing its body is an error. Used by the stress tool.
pub struct Client {
    addr: SocketAddr,
    timeout: Duration,
    /// Ask for `Connection: close` (one request per connection).
    close: bool,
    conn: Option<Conn>,
}

impl Client {
    /// `timeout` bounds the connect and every read and write.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Client {
            addr,
            timeout,
            close: false,
            conn: None,
        }
    }

    /// Makes every request ask for `Connection: close`, so each one opens a fresh connection.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// `GET path`, feeding the body to `sink`; returns the head and the body length.
    pub fn get(&mut self, path: &str, sink: &mut dyn FnMut(&[u8])) -> io::Result<(Head, u64)> {
        let result = self.exchange(path, sink);
        match &result {
            Ok((head, _)) if !head.close && !self.close => {}
            _ => self.conn = None,
        }
        result
    }

    /// `GET path` collecting the body (for small answers such as the stats JSON).
    pub fn get_body(&mut self, path: &str) -> io::Result<(u16, Vec<u8>)> {
        let mut body = Vec::new();
        let (head, _) = self.get(path, &mut |b| body.extend_from_slice(b))?;
        Ok((head.status, body))
    }

    fn exchange(&mut self, path: &str, sink: &mut dyn FnMut(&[u8])) -> io::Result<(Head, u64)> {
        let mut headers = vec![("Host", "stress"), ("User-Agent", "shmproxy-stress")];
        if self.close {
            headers.push(("Connection", "close"));
        }
        let conn = match &mut self.conn {
            Some(c) => c,
            None => self
                .conn
                .insert(Conn::open(self.addr, self.timeout, self.timeout)?),
        };
        conn.try_send(&request_bytes("GET", path, &headers, b""))?;
        let head = loop {
            let head = conn.read_head()?;
            if !(100..200).contains(&head.status) {
                break head;
            }
        };
        if head.has_body(Expect::Body) && !head.framed() && !head.close {
            return Err(malformed(
                "keep-alive answer without Content-Length or chunked framing".into(),
            ));
        }
        let len = conn.read_body_into(&head, Expect::Body, sink)?;
        Ok((head, len))
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

/// One client of a herd: connects, waits for `barrier`, sends a GET of `target` with
/// `Connection: close` and reads to the end. Returns what it read, when the first body byte
/// came, and the read error that ended it early, if any.
pub fn herd_get(
    addr: SocketAddr,
    target: &str,
    barrier: &std::sync::Barrier,
) -> (Vec<u8>, Option<std::time::Instant>, Option<io::Error>) {
    let mut c = Conn::connect(addr);
    c.set_read_timeout(Duration::from_secs(30));
    barrier.wait();
    c.send(&request_bytes(
        "GET",
        target,
        &[("Connection", "close")],
        b"",
    ));
    let mut stream = c.stream().try_clone().unwrap();
    let mut got = c.buffered().to_vec();
    let mut first_body_at = None;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if first_body_at.is_none() {
            if let Some(i) = find(&got, b"\r\n\r\n") {
                if got.len() > i + 4 {
                    first_body_at = Some(std::time::Instant::now());
                }
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => return (got, first_body_at, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, first_body_at, Some(e)),
        }
    }
}
