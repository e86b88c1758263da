//! The one writer of response heads: the status line, `Date`, `Connection`, `Age` and the
//! fields that name this node (`Via`, `X-Served-By`, `X-Cache`, `Cache-Status`:
//! [`Head::tier`]), for every kind of answer a worker gives (one from cached, a fresh hit from
//! the arena, the proxy's own endpoints, its simple error answers). Each answer's head is
//! recorded on the connection ([`Conn::answered`]) where it is made. Called by `route` and
//! `fetch`; it only writes through `conn`.

use super::arena::Hit;
use super::conn::{ClientError, Conn, Io};
use common::arena::{Fill, Pinned};
use common::http::{self, CacheOutcome};
use common::node;
use common::protocol::{BodyLen, ResponseHead};
use common::request::Request;
use common::stats::Counters;
use std::fmt::Display;
use std::io::{self, Write as _};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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

    /// The fields that name the node `name` in every answer: `Via` (RFC 9110 §7.6.3),
    /// `X-Served-By`, `X-Cache` and the `Cache-Status` field, whose members are `upstream`'s
    /// (those of the caches nearer the origin, a shield's, comma-separated; empty: none) and
    /// then ours, last (RFC 9211 §2), which `member` makes from our cache name. The fields
    /// of the same names that a shield sent are among the answer's own, before these.
    fn tier(
        &mut self,
        name: &str,
        outcome: CacheOutcome,
        upstream: &[u8],
        member: impl FnOnce(&str) -> String,
    ) {
        self.field("Via", node::via(11, name));
        self.field("X-Served-By", name);
        self.field("X-Cache", outcome.as_str());
        self.0.extend_from_slice(b"Cache-Status: ");
        if !upstream.is_empty() {
            self.0.extend_from_slice(upstream);
            self.0.extend_from_slice(b", ");
        }
        self.0
            .extend_from_slice(member(&node::cache_name(name)).as_bytes());
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

    /// A stored or relayed answer's fields (our `Date` if it has none); returns its
    /// `Cache-Status` entries (of caches nearer the origin) for [`Head::cache`].
    fn fields(&mut self, headers: &[(String, Vec<u8>)]) -> Vec<u8> {
        let mut has_date = false;
        let mut upstream_status = Vec::new();
        for (k, v) in headers {
            if k.eq_ignore_ascii_case("cache-status") {
                if !upstream_status.is_empty() {
                    upstream_status.extend_from_slice(b", ");
                }
                upstream_status.extend_from_slice(v);
                continue;
            }
            has_date |= k.eq_ignore_ascii_case("date");
            self.raw(k, v);
        }
        if !has_date {
            self.date_now();
        }
        upstream_status
    }

    fn end(mut self) -> Vec<u8> {
        self.0.extend_from_slice(b"\r\n");
        self.0
    }
}

/// A complete small answer made by the proxy itself (errors, 408, 503, …); it always says
/// `Connection: close`.
pub fn simple(io: &Io, conn: &mut Conn, status: u16, msg: &str) {
    let out = simple_bytes(&io.cfg.node, io.counters, conn, status, msg);
    let _ = conn.send(io, &out);
}

/// The same without waiting: what the socket takes at once, for the control thread. `node`:
/// this node's name (`node`).
pub fn simple_nowait(node: &str, counters: &Counters, conn: &mut Conn, status: u16, msg: &str) {
    let out = simple_bytes(node, counters, conn, status, msg);
    conn.send_nowait(counters, &out);
}

/// The bytes of a small answer (`Connection: close`), recorded as answered.
fn simple_bytes(
    node: &str,
    counters: &Counters,
    conn: &mut Conn,
    status: u16,
    msg: &str,
) -> Vec<u8> {
    let body = format!("{status} {}: {msg}\n", http::reason(status));
    let mut h = Head::new(status, body.len());
    h.date_now();
    h.field("Content-Type", "text/plain; charset=utf-8");
    h.field("Content-Length", body.len());
    let outcome = CacheOutcome::Error;
    h.tier(node, outcome, b"", |cache| {
        outcome.cache_status(cache, "", 0, None)
    });
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
    h.tier(&io.cfg.node, outcome, b"", |cache| {
        outcome.cache_status(cache, &req.method, 0, None)
    });
    h.connection(req.version, keep);
    let mut out = h.end();
    conn.answered(io.counters, status, outcome, out.len());
    if req.method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    conn.send(io, &out).is_ok() && keep
}

/// Answers a fresh hit from the shared arena (no segment, no cached): the head as cached
/// writes it for a hit, the body from shared memory; returns whether the connection may
/// continue. The pin is held for the send only. A record still being filled is answered as a
/// collapsed request: its head at once, its body as it is committed ([`stream_body`]).
pub fn arena_hit(io: &Io, conn: &mut Conn, req: &Request, hit: Hit) -> bool {
    let Hit {
        pinned,
        answer,
        site,
    } = hit;
    let streaming = pinned.fill() != Fill::Complete;
    let outcome = if streaming {
        CacheOutcome::Collapsed
    } else {
        CacheOutcome::Hit
    };
    // A 204 or 304 has no body and announces none; the length of a HEAD's answer is one of
    // its fields (before our `Date`): as cached frames them. A range's bytes are a span of
    // the stored body.
    let framed = answer.body.is_some();
    let span = answer.body.clone().unwrap_or(0..0);
    let len = span.end - span.start;
    let head_only = req.method == "HEAD";
    let mut fields = answer.fields;
    if framed && head_only {
        fields.push(("Content-Length".into(), len.to_string().into_bytes()));
    }
    let mut h = Head::new(answer.status, 256);
    let upstream = h.fields(&fields);
    if framed && !head_only {
        h.field("Content-Length", len);
    }
    let ttl = if streaming { None } else { answer.ttl };
    h.tier(&io.cfg.node, outcome, &upstream, |cache| {
        outcome.cache_status(cache, &req.method, 0, ttl) + "; detail=arena"
    });
    h.connection(req.version, req.keep_alive);
    let out = h.end();
    conn.answered(io.counters, answer.status, outcome, out.len());
    conn.reply.site = (!site.is_empty()).then(|| Arc::from(site.as_str()));
    let body = if head_only { 0..0 } else { span };
    let body_len = body.end - body.start;
    if body_len >= LARGE_ANSWER as u64 {
        conn.raise_send_buffer();
    }
    if streaming {
        // Waiting for the fill: let other threads serve the connections this one took.
        io.blocking.will_block();
    }
    // The head leaves with the first body bytes, in one packet where they fit: a head on its
    // own costs the client a wake-up (measured on 1 MiB hits, wrk -c64: p99 34-56 ms
    // against 50-69 ms with the head sent apart). The body goes from the arena, never
    // copied here first (the working-set row, 4 KiB at random keys, wrk -c64, alternating
    // with the build that copied bodies up to 16 KiB behind the head, 11 runs each: median
    // 62.1k req/s p99 2.26 ms against 56.0k, 2.75 ms). The last answer of a connection
    // waits for the FIN, to leave with it in one segment.
    let mut body = body;
    if pinned.splices(body.start, body.end) {
        Counters::inc(&io.counters.arena_spliced);
    }
    let closing = !req.keep_alive && !streaming;
    let head_sent =
        match pinned.send_head_and_body(conn.stream.as_fd(), &out, body.start, body.end, closing) {
            Ok(n) => {
                conn.account(io.counters, n);
                body.start += n.saturating_sub(out.len()) as u64;
                n.min(out.len())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                0
            }
            Err(_) => return false,
        };
    conn.send(io, &out[head_sent..]).is_ok()
        && stream_body(io, conn, &pinned, body)
        && req.keep_alive
}

/// Shortest and longest pause of a reader waiting for a fill to commit more bytes.
const NAP_MIN: Duration = Duration::from_micros(200);
const NAP_MAX: Duration = Duration::from_millis(5);

/// Sends the bytes `body` of `pinned` straight from the arena. Of a record still being filled it
/// sends what is committed and waits for more (short naps, doubling up to [`NAP_MAX`]); it
/// gives up, and the connection closes short of the announced length, when the fill is
/// abandoned or commits nothing for `cached_timeout`.
fn stream_body(io: &Io, conn: &mut Conn, pinned: &Pinned, body: std::ops::Range<u64>) -> bool {
    let mut sent = body.start;
    let mut nap = NAP_MIN;
    let mut stalled: Option<Instant> = None;
    while sent < body.end {
        match pinned.send_body(conn.stream.as_fd(), sent, body.end) {
            Ok(0) => {
                match pinned.fill() {
                    Fill::Complete => continue,
                    Fill::Partial(c) if c > sent => continue,
                    Fill::Partial(_) => {}
                    Fill::Abandoned => {
                        Counters::inc(&io.counters.arena_stream_aborts);
                        return false;
                    }
                }
                let since = *stalled.get_or_insert_with(Instant::now);
                if since.elapsed() >= io.cfg.cached_timeout {
                    Counters::inc(&io.counters.arena_stream_aborts);
                    return false;
                }
                std::thread::sleep(nap);
                nap = (nap * 2).min(NAP_MAX);
            }
            Ok(n) => {
                sent += n as u64;
                conn.account(io.counters, n);
                stalled = None;
                nap = NAP_MIN;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if conn.wait_writable(io).is_err() {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// The head of an answer from cached, recorded as answered: its fields (our `Date` if it
/// has none), the framing (`Content-Length`, or `Transfer-Encoding: chunked` when
/// `chunked`), then ours. `keep`: the connection continues after it.
pub fn from_cached(
    io: &Io,
    conn: &mut Conn,
    answer: &ResponseHead,
    outcome: CacheOutcome,
    req: &Request,
    keep: bool,
    chunked: bool,
) -> Vec<u8> {
    let mut h = Head::new(answer.status, 256);
    let upstream_status = h.fields(&answer.headers);
    match answer.body {
        BodyLen::Exact(n) => h.field("Content-Length", n),
        BodyLen::Unknown if chunked => h.field("Transfer-Encoding", "chunked"),
        _ => {}
    }
    // A reusable hit shows its remaining freshness.
    let ttl = (outcome == CacheOutcome::Hit && answer.ttl_ms > 0)
        .then_some(u64::from(answer.ttl_ms) / 1000);
    h.tier(&io.cfg.node, outcome, &upstream_status, |cache| {
        outcome.cache_status(cache, &req.method, answer.upstream_status, ttl)
    });
    h.connection(req.version, keep);
    let out = h.end();
    conn.answered(io.counters, answer.status, outcome, out.len());
    out
}

/// An interim answer (`1xx`) that cached relayed from the origin ahead of the final one: its
/// fields and our `Via`, sent at once to an HTTP/1.1 client; an HTTP/1.0 client never gets
/// one (RFC 9110 §15.2), it is counted as dropped. It is not the answer: nothing is recorded.
pub fn interim(
    io: &Io,
    conn: &mut Conn,
    req: &Request,
    answer: &ResponseHead,
) -> Result<(), ClientError> {
    if req.version != 11 {
        Counters::inc(&io.counters.interim_dropped);
        return Ok(());
    }
    let mut h = Head::new(answer.status, 64 * answer.headers.len());
    for (k, v) in &answer.headers {
        h.raw(k, v);
    }
    h.field("Via", node::via(11, &io.cfg.node));
    Counters::inc(&io.counters.interim_forwarded);
    conn.write_all_timeout(io, &h.end(), io.cfg.send_timeout)
}

/// Sends the `100 Continue` a client waits for before it sends its body.
pub fn send_continue(io: &Io, conn: &mut Conn) -> Result<(), ClientError> {
    conn.write_all_timeout(io, CONTINUE, io.cfg.send_timeout)
}
