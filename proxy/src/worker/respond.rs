//! The one writer of response heads: the status line, `Date`, `Connection`, `Via`, `Age`,
//! `X-Cache` and `Cache-Status`, for every kind of answer a worker gives (one from cached,
//! an L1 hit, the proxy's own endpoints, its simple error answers). Each answer's head is
//! recorded on the connection ([`Conn::answered`]) where it is made. Called by `route` and
//! `fetch`; it only writes through `conn`.

use super::conn::{ClientError, Conn, Io};
use super::l1;
use common::http::{self, CacheOutcome};
use common::protocol::{BodyLen, ResponseHead};
use common::request::Request;
use common::stats::Counters;
use std::fmt::Display;
use std::io::Write as _;
use std::time::SystemTime;

/// The interim answer to `Expect: 100-continue`, before the client sends its body.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Answers of this size or more go to a socket with a raised send buffer.
const LARGE_ANSWER: usize = 256 << 10;

/// A response head being written, field by field.
struct Head(Vec<u8>);

impl Head {
    fn new(status: u16, capacity: usize) -> Head {
        let mut out = Vec::with_capacity(capacity + 256);
        let _ = write!(out, "HTTP/1.1 {status} {}\r\n", http::reason(status));
        Head(out)
    }

    fn field(&mut self, name: &str, value: impl Display) {
        let _ = write!(self.0, "{name}: {value}\r\n");
    }

    /// Field lines as they came (`name: value`), e.g. the origin's.
    fn raw(&mut self, name: &str, value: &[u8]) {
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(b": ");
        self.0.extend_from_slice(value);
        self.0.extend_from_slice(b"\r\n");
    }

    fn date_now(&mut self) {
        self.field("Date", http::http_date(SystemTime::now()));
    }

    fn via(&mut self) {
        self.field("Via", "1.1 shmproxy");
    }

    /// `X-Cache` and `Cache-Status` (RFC 9211: ours first, then `upstream`, the entries of
    /// caches nearer the origin, each preceded by `, `).
    fn cache(&mut self, outcome: CacheOutcome, cache_status: &str, upstream: &[u8]) {
        self.field("X-Cache", outcome.as_str());
        let _ = write!(self.0, "Cache-Status: {cache_status}");
        self.0.extend_from_slice(upstream);
        self.0.extend_from_slice(b"\r\n");
    }

    /// `Connection` where the version's default is not what happens (HTTP/1.0 keeps the
    /// connection only if told, HTTP/1.1 closes it only if told).
    fn connection(&mut self, version: u8, keep: bool) {
        match (version, keep) {
            (10, true) => self.field("Connection", "keep-alive"),
            (_, false) => self.field("Connection", "close"),
            _ => {}
        }
    }

    fn end(mut self) -> Vec<u8> {
        self.0.extend_from_slice(b"\r\n");
        self.0
    }
}

/// A complete small answer made by the proxy itself (errors, 408, 503, …); it always says
/// `Connection: close`.
pub fn simple(io: &Io, conn: &mut Conn, status: u16, msg: &str) {
    let out = simple_bytes(io.counters, conn, status, msg);
    let _ = conn.send(io, &out);
}

/// The same without waiting: what the socket takes at once, for the control thread.
pub fn simple_nowait(counters: &Counters, conn: &mut Conn, status: u16, msg: &str) {
    let out = simple_bytes(counters, conn, status, msg);
    conn.send_nowait(counters, &out);
}

/// The bytes of a small answer (`Connection: close`), recorded as answered.
fn simple_bytes(counters: &Counters, conn: &mut Conn, status: u16, msg: &str) -> Vec<u8> {
    let body = format!("{status} {}: {msg}\n", http::reason(status));
    let mut h = Head::new(status, body.len());
    h.date_now();
    h.field("Content-Type", "text/plain; charset=utf-8");
    h.field("Content-Length", body.len());
    let outcome = CacheOutcome::Error;
    h.cache(outcome, &outcome.cache_status("", 0, None), b"");
    h.connection(11, false);
    let mut out = h.end();
    conn.answered(counters, status, outcome, out.len());
    out.extend_from_slice(body.as_bytes());
    out
}

/// An answer of the proxy's own endpoints (`/__shmproxy/…`); returns whether the
/// connection may continue.
pub fn internal(
    io: &Io,
    conn: &mut Conn,
    req: &Request,
    status: u16,
    content_type: &str,
    body: &str,
) -> bool {
    let keep = req.keep_alive;
    let outcome = CacheOutcome::Internal;
    let mut h = Head::new(status, body.len());
    h.date_now();
    h.field("Content-Type", content_type);
    h.field("Cache-Control", "no-store");
    h.field("Content-Length", body.len());
    h.cache(outcome, &outcome.cache_status(&req.method, 0, None), b"");
    h.connection(req.version, keep);
    let mut out = h.end();
    conn.answered(io.counters, status, outcome, out.len());
    if req.method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    conn.send(io, &out).is_ok() && keep
}

/// Answers a fresh hit from the worker's L1 (no segment, no cached); returns whether the
/// connection may continue.
pub fn hit(io: &Io, conn: &mut Conn, req: &Request, e: &l1::Entry) -> bool {
    let outcome = CacheOutcome::Hit;
    let mut h = Head::new(e.status, e.fixed_headers.len());
    h.0.extend_from_slice(&e.fixed_headers);
    h.field("Age", e.age());
    h.field("Content-Length", e.body.len());
    h.via();
    let status = outcome.cache_status(&req.method, 0, Some(e.ttl_secs())) + "; detail=l1";
    h.cache(outcome, &status, b"");
    h.connection(req.version, req.keep_alive);
    let out = h.end();
    conn.answered(io.counters, e.status, outcome, out.len());
    conn.reply.site = e.site.clone();
    let body = if req.method == "HEAD" {
        &[][..]
    } else {
        &e.body[..]
    };
    if body.len() >= LARGE_ANSWER {
        conn.raise_send_buffer();
    }
    conn.send2(io, &out, body, !req.keep_alive).is_ok() && req.keep_alive
}

/// The head of an answer from cached, recorded as answered: its fields (our `Date` if it
/// has none), the framing (`Content-Length`, or `Transfer-Encoding: chunked` when
/// `chunked`), then ours. `keep`: the connection continues after it.
pub fn from_cached(
    counters: &Counters,
    conn: &mut Conn,
    answer: &ResponseHead,
    outcome: CacheOutcome,
    req: &Request,
    keep: bool,
    chunked: bool,
) -> Vec<u8> {
    let mut h = Head::new(answer.status, 256);
    let mut has_date = false;
    let mut upstream_status = Vec::new();
    for (k, v) in &answer.headers {
        if k.eq_ignore_ascii_case("cache-status") {
            upstream_status.extend_from_slice(b", ");
            upstream_status.extend_from_slice(v);
            continue;
        }
        has_date |= k.eq_ignore_ascii_case("date");
        h.raw(k, v);
    }
    if !has_date {
        h.date_now();
    }
    match answer.body {
        BodyLen::Exact(n) => h.field("Content-Length", n),
        BodyLen::Unknown if chunked => h.field("Transfer-Encoding", "chunked"),
        _ => {}
    }
    h.via();
    // A hit's remaining freshness is what the worker may keep it for (when it may).
    let ttl = (outcome == CacheOutcome::Hit && answer.l1_ttl_ms > 0)
        .then_some(u64::from(answer.l1_ttl_ms) / 1000);
    let status = outcome.cache_status(&req.method, answer.upstream_status, ttl);
    h.cache(outcome, &status, &upstream_status);
    h.connection(req.version, keep);
    let out = h.end();
    conn.answered(counters, answer.status, outcome, out.len());
    out
}

/// The fields of an answer as the L1 keeps them (everything but `Age`, which it returns,
/// with our `Date` if it has none).
pub fn stored_fields(answer: &ResponseHead) -> (Vec<u8>, u64) {
    let mut h = Head(Vec::with_capacity(256));
    let mut age = 0;
    let mut has_date = false;
    for (k, v) in &answer.headers {
        if k.eq_ignore_ascii_case("age") {
            age = std::str::from_utf8(v)
                .ok()
                .and_then(|a| a.trim().parse().ok())
                .unwrap_or(0);
            continue;
        }
        has_date |= k.eq_ignore_ascii_case("date");
        h.raw(k, v);
    }
    if !has_date {
        h.date_now();
    }
    (h.0, age)
}

/// Sends the `100 Continue` a client waits for before it sends its body.
pub fn send_continue(io: &Io, conn: &mut Conn) -> Result<(), ClientError> {
    conn.write_all_timeout(io, CONTINUE, io.cfg.send_timeout)
}
