//! One client connection: reading and validating HTTP/1.1 request heads (keep-alive,
//! pipelining), request bodies (Content-Length or chunked), and writing answers with
//! bounded waits. The socket is non-blocking; every wait is a `poll` with a timeout.

use super::{fetch, status, Worker};
use common::protocol::BodyLen;
use common::stats::Counters;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// Longest request line (method, target, version) before 414.
const MAX_REQUEST_LINE: usize = 8192;

pub struct Conn {
    pub stream: TcpStream,
    pub token: u64,
    /// Bytes read and not yet consumed (the start of the next request, pipelined ones).
    pub buf: Vec<u8>,
    pub last_active: Instant,
    /// Set while a request head is incomplete (header timeout).
    pub head_started: Option<Instant>,
    pub peer: String,
}

pub enum Next {
    Park,
    Close,
}

/// Per-thread buffers, reused across requests.
pub struct Scratch {
    pub io: Vec<u8>,
}

impl Scratch {
    pub fn new(segment_size: usize) -> Scratch {
        Scratch {
            io: vec![0u8; segment_size.clamp(16 << 10, 256 << 10)],
        }
    }
}

impl Conn {
    pub fn new(stream: TcpStream, token: u64) -> Conn {
        let peer = stream
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|_| "-".into());
        Conn {
            stream,
            token,
            buf: Vec::new(),
            last_active: Instant::now(),
            head_started: None,
            peer,
        }
    }

    pub fn peer_is_loopback(&self) -> bool {
        self.stream
            .peer_addr()
            .map(|a| a.ip().is_loopback())
            .unwrap_or(false)
    }

    fn wait(&self, flags: PollFlags, timeout: Duration) -> io::Result<()> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(self.stream.as_fd(), flags)];
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) => Err(io::Error::new(io::ErrorKind::TimedOut, "client too slow")),
            Ok(_) | Err(nix::Error::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes everything, waiting at most `timeout` for the client each time it stalls.
    pub fn write_all_timeout(&mut self, mut data: &[u8], timeout: Duration) -> io::Result<()> {
        while !data.is_empty() {
            match self.stream.write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(PollFlags::POLLOUT, timeout)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads some bytes (buffered ones first), waiting at most `timeout`. `Ok(0)` = EOF.
    pub fn read_timeout(&mut self, out: &mut [u8], timeout: Duration) -> io::Result<usize> {
        if !self.buf.is_empty() {
            let n = out.len().min(self.buf.len());
            out[..n].copy_from_slice(&self.buf[..n]);
            self.buf.drain(..n);
            return Ok(n);
        }
        loop {
            match self.stream.read(out) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(PollFlags::POLLIN, timeout)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A parsed, validated request head.
pub struct Request {
    pub method: String,
    pub target: String,
    /// 10 or 11.
    pub version: u8,
    /// End-to-end headers in order (hop-by-hop removed).
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: ClientBody,
    pub keep_alive: bool,
    pub expect_continue: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientBody {
    None,
    Length(u64),
    Chunked,
}

impl ClientBody {
    pub fn framing(self) -> BodyLen {
        match self {
            ClientBody::None => BodyLen::None,
            ClientBody::Length(n) => BodyLen::Exact(n),
            ClientBody::Chunked => BodyLen::Unknown,
        }
    }
}

enum Parsed {
    Complete(Request, usize),
    Partial,
    Error(u16, &'static str),
}

fn parse_head(w: &Worker, buf: &[u8]) -> Parsed {
    let cfg = &w.shared.cfg;
    let line_end = buf.iter().position(|&b| b == b'\n');
    if line_end.map_or(buf.len(), |i| i) > MAX_REQUEST_LINE {
        return Parsed::Error(414, "request line too long");
    }
    let mut headers = vec![httparse::EMPTY_HEADER; cfg.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > cfg.max_header_bytes {
                Parsed::Error(431, "request head too large")
            } else {
                Parsed::Partial
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Error(431, "too many header fields")
        }
        Err(_) => return Parsed::Error(400, "malformed request"),
    };
    if head_len > cfg.max_header_bytes {
        return Parsed::Error(431, "request head too large");
    }
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default().to_string();
    let version = if req.version == Some(0) { 10 } else { 11 };
    if !(target.starts_with('/') || (target == "*" && method == "OPTIONS")) {
        return Parsed::Error(
            400,
            "only origin-form request targets are accepted (this is not an open proxy)",
        );
    }
    let mut connection = Vec::new();
    let mut lengths = Vec::new();
    let mut te: Option<Vec<String>> = None;
    let mut has_host = false;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            connection.extend(common::http::tokens(h.value));
        } else if name.eq_ignore_ascii_case("content-length") {
            lengths.push(h.value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            te.get_or_insert_with(Vec::new)
                .extend(common::http::tokens(h.value));
        } else if name.eq_ignore_ascii_case("host") {
            has_host = true;
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        }
        if h.value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
            return Parsed::Error(400, "control character in a header value");
        }
    }
    if version == 11 && !has_host {
        return Parsed::Error(400, "HTTP/1.1 request without Host");
    }
    let body = match (te, lengths.as_slice()) {
        (Some(_), [_, ..]) => {
            return Parsed::Error(400, "both Content-Length and Transfer-Encoding")
        }
        (Some(codings), []) if codings == ["chunked"] => ClientBody::Chunked,
        (Some(_), []) => return Parsed::Error(400, "unsupported Transfer-Encoding (only chunked)"),
        (None, []) => ClientBody::None,
        (None, [first, rest @ ..]) => {
            if rest.iter().any(|v| v != first) {
                return Parsed::Error(400, "conflicting Content-Length values");
            }
            let s = std::str::from_utf8(first).unwrap_or("");
            match s.parse::<u64>() {
                Ok(0) => ClientBody::None,
                Ok(n) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                    ClientBody::Length(n)
                }
                _ => return Parsed::Error(400, "invalid Content-Length"),
            }
        }
    };
    let keep_alive = if version == 11 {
        !connection.iter().any(|t| t == "close")
    } else {
        connection.iter().any(|t| t == "keep-alive")
    };
    let headers = req
        .headers
        .iter()
        .filter(|h| {
            !common::http::is_hop_by_hop(h.name, &connection)
                && !h.name.eq_ignore_ascii_case("expect")
        })
        .map(|h| (h.name.to_string(), h.value.to_vec()))
        .collect();
    Parsed::Complete(
        Request {
            method,
            target,
            version,
            headers,
            body,
            keep_alive,
            expect_continue,
        },
        head_len,
    )
}

/// Serves every complete request buffered or readable now; parks when the socket has
/// nothing more, closes on EOF, error or `Connection: close`.
pub fn serve_ready(w: &Worker, conn: &mut Conn, scratch: &mut Scratch) -> Next {
    let mut tmp = [0u8; 16 << 10];
    loop {
        if !conn.buf.is_empty() {
            match parse_head(w, &conn.buf) {
                Parsed::Complete(req, head_len) => {
                    conn.buf.drain(..head_len);
                    conn.head_started = None;
                    let started = Instant::now();
                    Counters::inc(&w.counters().requests);
                    let keep = handle(w, conn, req, scratch);
                    w.counters().latency(started.elapsed().as_micros() as u64);
                    conn.last_active = Instant::now();
                    if !keep {
                        return Next::Close;
                    }
                    continue;
                }
                Parsed::Partial => {}
                Parsed::Error(status, msg) => {
                    Counters::inc(&w.counters().bad_requests);
                    send_simple(w, conn, status, msg);
                    return Next::Close;
                }
            }
        }
        match conn.stream.read(&mut tmp) {
            Ok(0) => return Next::Close,
            Ok(n) => {
                Counters::add(&w.counters().bytes_in, n as u64);
                if conn.head_started.is_none() {
                    conn.head_started = Some(Instant::now());
                }
                conn.buf.extend_from_slice(&tmp[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if conn.buf.is_empty() {
                    conn.head_started = None;
                }
                return Next::Park;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Next::Close,
        }
    }
}

/// Answers one request; returns whether the connection may serve another.
fn handle(w: &Worker, conn: &mut Conn, req: Request, scratch: &mut Scratch) -> bool {
    if let ClientBody::Length(n) = req.body {
        if n > w.shared.cfg.max_body_bytes {
            send_simple(w, conn, 413, "request body too large");
            return false;
        }
    }
    if req.target.starts_with("/__shmproxy/") && req.method == "GET"
        || req.method == "HEAD" && req.target.starts_with("/__shmproxy/")
    {
        return status::serve(w, conn, &req);
    }
    let kind = if req.method == "PURGE" {
        if !conn.peer_is_loopback() {
            send_simple(w, conn, 403, "PURGE is allowed from loopback only");
            return req.body == ClientBody::None && req.keep_alive;
        }
        common::protocol::Kind::Purge
    } else {
        common::protocol::Kind::Request
    };
    fetch::exchange(w, conn, &req, kind, scratch)
}

/// Writes a complete small answer produced by the proxy itself (errors, 408, 503, ...).
pub fn send_simple(w: &Worker, conn: &mut Conn, status: u16, msg: &str) {
    let body = format!("{status} {}: {msg}\n", common::http::reason(status));
    let head = format!(
        "HTTP/1.1 {status} {}\r\nDate: {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nX-Cache: ERROR\r\nConnection: close\r\n\r\n",
        common::http::reason(status),
        common::http::http_date(std::time::SystemTime::now()),
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    w.counters().status(status);
    if conn
        .write_all_timeout(&out, w.shared.cfg.send_timeout)
        .is_ok()
    {
        Counters::add(&w.counters().bytes_out, out.len() as u64);
    }
}

/// Reads a request body from the client and hands its bytes to `sink`, de-chunking a
/// chunked body. Bounded by `max_body_bytes` and the send timeout per wait.
pub fn read_body(
    w: &Worker,
    conn: &mut Conn,
    body: ClientBody,
    buf: &mut [u8],
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let timeout = w.shared.cfg.send_timeout;
    match body {
        ClientBody::None => Ok(()),
        ClientBody::Length(mut left) => {
            while left > 0 {
                let want = buf.len().min(left as usize);
                let n = conn.read_timeout(&mut buf[..want], timeout)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                sink(&buf[..n])?;
                left -= n as u64;
            }
            Ok(())
        }
        ClientBody::Chunked => {
            let mut total = 0u64;
            loop {
                let line = read_line(conn, timeout)?;
                let size_part = line.split(|&b| b == b';').next().unwrap_or(&[]);
                let size_str = std::str::from_utf8(size_part)
                    .map_err(|_| bad("chunk size"))?
                    .trim_end_matches([' ', '\t']);
                if size_str.is_empty()
                    || size_str.len() > 15
                    || !size_str.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(bad("chunk size"));
                }
                let mut left = u64::from_str_radix(size_str, 16).map_err(|_| bad("chunk size"))?;
                if left == 0 {
                    // Trailers (discarded) up to the empty line.
                    while !read_line(conn, timeout)?.is_empty() {}
                    return Ok(());
                }
                total += left;
                if total > w.shared.cfg.max_body_bytes {
                    return Err(bad("body too large"));
                }
                while left > 0 {
                    let want = buf.len().min(left as usize);
                    let n = conn.read_timeout(&mut buf[..want], timeout)?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    sink(&buf[..n])?;
                    left -= n as u64;
                }
                if !read_line(conn, timeout)?.is_empty() {
                    return Err(bad("chunk not followed by CRLF"));
                }
            }
        }
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("invalid chunked body: {what}"),
    )
}

/// Reads one CRLF-terminated line (without the CRLF), at most 4 KiB.
fn read_line(conn: &mut Conn, timeout: Duration) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    loop {
        if conn.buf.is_empty() {
            let mut tmp = [0u8; 16 << 10];
            let n = conn.read_timeout(&mut tmp, timeout)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            conn.buf.extend_from_slice(&tmp[..n]);
        }
        if let Some(i) = conn.buf.iter().position(|&b| b == b'\n') {
            line.extend(conn.buf.drain(..=i));
            line.pop();
            if line.pop() != Some(b'\r') {
                return Err(bad("bare LF"));
            }
            return Ok(line);
        }
        line.append(&mut conn.buf);
        if line.len() > 4096 {
            return Err(bad("line too long"));
        }
    }
}
