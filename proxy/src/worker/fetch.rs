//! The segment client: one request through `cached`. Lease a segment, ring the doorbell,
//! write the request head and body into the segment, then stream the answer to the client
//! chunk by chunk. Every failure before the first response byte becomes a clear status
//! (503 cached absent or pool exhausted, 504 cached too slow, 502 bad answer); a failure
//! after it closes the connection, so a client never mistakes a short body for a whole one.

use super::conn::{self, Conn, Scratch};
use super::Worker;
use common::http::{self, CacheOutcome};
use common::mq::Doorbells;
use common::pool::AcquireError;
use common::process::ProcId;
use common::protocol::{read_head, BodyLen, Doorbell, Kind, RequestHead, ResponseHead};
use common::request::{ClientBody, Request};
use common::stats::{Counters, StatsRegion};
use common::Names;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How long a doorbell may wait for room in the queue.
const RING_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the liveness of `cached` is re-checked.
const RECHECK: Duration = Duration::from_millis(100);

/// The worker's view of `cached`: who it is (pid + start time, from its stats region), its
/// queue and its stats region (for the names of its sites), rediscovered lazily after it
/// restarts.
pub struct CachedLink {
    names: Names,
    state: Mutex<Link>,
}

#[derive(Default)]
struct Link {
    peer: Option<Peer>,
    checked: Option<Instant>,
}

/// A live cached as a worker reaches it.
#[derive(Clone)]
pub struct Peer {
    pub id: ProcId,
    pub queue: Arc<Doorbells>,
    /// Its stats region: the site table an answer's `site` index points into.
    pub stats: Arc<StatsRegion>,
}

impl CachedLink {
    pub fn new(names: &Names) -> CachedLink {
        CachedLink {
            names: names.clone(),
            state: Mutex::new(Link::default()),
        }
    }

    /// The live cached, or `None` if it is not running.
    pub fn current(&self) -> Option<Peer> {
        let mut link = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // A live peer is trusted for RECHECK; an absent one is looked for on every request,
        // so a restarted cached is used at once.
        if link.peer.is_some() && link.checked.is_some_and(|t| t.elapsed() < RECHECK) {
            return link.peer.clone();
        }
        link.checked = Some(Instant::now());
        if link.peer.as_ref().is_some_and(|p| p.id.alive()) {
            return link.peer.clone();
        }
        link.peer = StatsRegion::open(&self.names.stats_cached)
            .ok()
            .filter(|r| r.owner().alive())
            .and_then(|stats| {
                Doorbells::open(&self.names.queue).ok().map(|q| Peer {
                    id: stats.owner(),
                    queue: Arc::new(q),
                    stats: Arc::new(stats),
                })
            });
        link.peer.clone()
    }

    /// Forgets the current peer (after a failed ring), so the next request looks again.
    fn forget(&self) {
        let mut link = self.state.lock().unwrap_or_else(|e| e.into_inner());
        link.peer = None;
        link.checked = None;
    }
}

/// Runs one request through cached; returns whether the connection may continue.
pub fn exchange(
    w: &Worker,
    conn: &mut Conn,
    req: &Request,
    kind: Kind,
    scratch: &mut Scratch,
) -> bool {
    let cfg = &w.shared.cfg;
    // A request whose body we do not read must end the connection.
    let can_continue = req.body == ClientBody::None;
    let head = RequestHead {
        method: req.method.clone(),
        target: req.target.clone(),
        version: req.version,
        client: conn.peer().to_string(),
        body: req.body.framing(),
        headers: forwarded_headers(w, conn, req),
    }
    .encode();
    if head.len() > w.shared.pool.segment_size() {
        let (status, msg) = if req.target.len() * 2 > w.shared.pool.segment_size() {
            (414, "request target too long for a segment")
        } else {
            (431, "request head too large for a segment")
        };
        w.counters().rejected(status, msg);
        conn::send_simple(w, conn, status, msg);
        return false;
    }
    let Some(peer) = w.cached.current() else {
        Counters::inc(&w.counters().cached_unavailable);
        conn::send_simple(w, conn, 503, "cached is not running; retry shortly");
        return can_continue && req.keep_alive;
    };
    let epoch = w.shared.pool.invalidations();
    let request_id = w.next_request_id.fetch_add(1, Ordering::Relaxed);
    let waited = Instant::now();
    let acquired = w.shared.pool.acquire(cfg.pool_wait, request_id);
    Counters::add(
        &w.counters().pool_acquire_wait_us,
        waited.elapsed().as_micros() as u64,
    );
    let mut lease = match acquired {
        Ok(l) => l,
        Err(AcquireError::TimedOut(_)) | Err(AcquireError::Sem(_)) => {
            Counters::inc(&w.counters().pool_acquire_timeouts);
            conn::send_simple(w, conn, 503, "no free shared-memory segment in time");
            return can_continue && req.keep_alive;
        }
    };
    Counters::inc(&w.counters().pool_acquires);
    lease.set_peer(Some(peer.id));
    lease.set_timeout(cfg.cached_timeout);
    let bell = Doorbell {
        kind,
        index: lease.index(),
        generation: lease.generation(),
        request_id,
        pool_id: w.shared.pool.id(),
    };
    if let Err(e) = peer.queue.send(&bell.encode(), RING_TIMEOUT) {
        log::warn!("ringing cached: {e}");
        w.cached.forget();
        Counters::inc(&w.counters().cached_unavailable);
        conn::send_simple(w, conn, 503, "cached is not answering; retry shortly");
        return false;
    }

    // Request: head, then body straight from the client. A failure on the cached side is
    // told apart from one on the client side: nothing has been answered yet, so the client
    // gets a status for the former.
    let mut cached_failed = false;
    let sent = lease
        .write_all(&head)
        .map_err(|e| (true, e))
        .and_then(|()| {
            if req.expect_continue && req.body != ClientBody::None {
                conn.write_all_timeout(w, b"HTTP/1.1 100 Continue\r\n\r\n", cfg.send_timeout)
                    .map_err(|e| (false, e))?;
            }
            let lease = &mut lease;
            conn::read_body(w, conn, req.body, &mut scratch.io, |chunk| {
                lease.write_all(chunk).inspect_err(|_| cached_failed = true)
            })
            .map_err(|e| (cached_failed, e))?;
            lease.finish().map_err(|e| (true, e))
        });
    if let Err((on_cached_side, e)) = sent {
        Counters::inc(&w.counters().transfers_aborted);
        if on_cached_side {
            cached_failure(w, conn, &e);
        } else {
            conn::body_failure(w, conn, &e);
        }
        return false;
    }

    // Answer: head, then the body chunk by chunk.
    let answer = match read_head(&mut lease).and_then(|raw| {
        ResponseHead::decode(&raw).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }) {
        Ok(h) => h,
        Err(e) => {
            Counters::inc(&w.counters().transfers_aborted);
            cached_failure(w, conn, &e);
            return false;
        }
    };
    let head_request = req.method == "HEAD";
    let mut keep = req.keep_alive;
    let chunked = answer.body == BodyLen::Unknown && !head_request;
    if chunked && req.version == 10 {
        keep = false; // HTTP/1.0: the body ends when the connection closes
    }
    let mut out = Vec::with_capacity(512);
    write_head(
        w,
        &mut out,
        &answer,
        &req.method,
        req.version,
        keep,
        chunked && req.version == 11,
    );
    conn.reply.head_bytes = out.len() as u64;
    conn.reply.upstream_status = answer.upstream_status;
    // The region of the cached that answered names its site (for the access log).
    conn.reply.site = peer.stats.site_name(answer.site).map(Arc::from);
    let outcome = CacheOutcome::from_u8(answer.outcome).unwrap_or(CacheOutcome::Pass);
    // The site's row counts what cached answered for it (L1 hits count in `l1_hits`).
    peer.stats
        .site_answered(answer.site, outcome, answer.status);
    conn.answered(w, answer.status, outcome);
    let mut l1_body = match answer.body {
        BodyLen::Exact(n)
            if answer.l1_ttl_ms > 0
                && answer.status == 200
                && req.method == "GET"
                && w.l1.accepts(n as usize)
                && super::l1::eligible(&req.method, &req.headers) =>
        {
            Some(Vec::with_capacity(n as usize))
        }
        _ => None,
    };
    let result = stream_body(
        w,
        conn,
        &mut lease,
        &answer,
        head_request,
        chunked && req.version == 11,
        out,
        scratch,
        l1_body.as_mut(),
    );
    match result {
        Ok(()) if lease.peer_finished() => {
            lease.complete();
            if let Some(body) = l1_body {
                remember(w, epoch, req, &answer, body, conn.reply.site.clone());
            }
            keep
        }
        Ok(()) => false,
        Err(e) => {
            Counters::inc(&w.counters().transfers_aborted);
            if e.kind() == io::ErrorKind::TimedOut && conn::ClientWait::of(&e).is_none() {
                Counters::inc(&w.counters().timeouts_send);
            }
            if e.kind() == io::ErrorKind::InvalidData {
                // A chunk that failed validation: never passed on, always worth a look.
                Counters::inc(&w.counters().messages_rejected);
                log::warn!("response aborted: {e}");
            } else {
                log::debug!("response aborted: {e}");
            }
            false
        }
    }
}

/// The request's fields as cached gets them: a client's `X-Forwarded-*`/`Forwarded` are
/// kept only from a `trusted_proxies` peer (cached adds its own from the connection).
fn forwarded_headers(w: &Worker, conn: &Conn, req: &Request) -> Vec<(String, Vec<u8>)> {
    let is_forwarding = |k: &str| {
        common::request::FORWARDING
            .iter()
            .any(|f| k.eq_ignore_ascii_case(f))
    };
    if !req.headers.iter().any(|(k, _)| is_forwarding(k)) {
        return req.headers.clone();
    }
    let trusted = conn.stream.peer_addr().is_ok_and(|a| {
        w.shared
            .cfg
            .trusted_proxies
            .iter()
            .any(|n| n.contains(a.ip()))
    });
    if trusted {
        return req.headers.clone();
    }
    Counters::inc(&w.counters().forwarding_headers_dropped);
    req.headers
        .iter()
        .filter(|(k, _)| !is_forwarding(k))
        .cloned()
        .collect()
}

fn write_head(
    w: &Worker,
    out: &mut Vec<u8>,
    answer: &ResponseHead,
    method: &str,
    version: u8,
    keep: bool,
    chunked: bool,
) {
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        answer.status,
        http::reason(answer.status)
    );
    let mut has_date = false;
    // RFC 9211 §2: the members of caches nearer the origin come first, ours last.
    let mut upstream_status = Vec::new();
    for (k, v) in &answer.headers {
        if k.eq_ignore_ascii_case("cache-status") {
            if !upstream_status.is_empty() {
                upstream_status.extend_from_slice(b", ");
            }
            upstream_status.extend_from_slice(v);
            continue;
        }
        has_date |= k.eq_ignore_ascii_case("date");
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    if !has_date {
        let _ = write!(out, "Date: {}\r\n", http::http_date(SystemTime::now()));
    }
    match answer.body {
        BodyLen::Exact(n) => {
            let _ = write!(out, "Content-Length: {n}\r\n");
        }
        BodyLen::Unknown if chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        _ => {}
    }
    let outcome = CacheOutcome::from_u8(answer.outcome).unwrap_or(CacheOutcome::Pass);
    // A hit's remaining freshness is what the worker may keep it for (when it may).
    let ttl = (outcome == CacheOutcome::Hit && answer.l1_ttl_ms > 0)
        .then_some(u64::from(answer.l1_ttl_ms) / 1000);
    let node = super::tier::fields(
        w,
        outcome,
        method,
        answer.upstream_status,
        ttl,
        "",
        &upstream_status,
    );
    out.extend_from_slice(node.as_bytes());
    match (version, keep) {
        (10, true) => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        (11, false) | (10, false) => out.extend_from_slice(b"Connection: close\r\n"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// Sends the head (already in `out`) and the body, checking the length cached announced.
#[allow(clippy::too_many_arguments)]
fn stream_body(
    w: &Worker,
    conn: &mut Conn,
    lease: &mut common::pool::Lease,
    answer: &ResponseHead,
    head_request: bool,
    chunked: bool,
    mut out: Vec<u8>,
    scratch: &mut Scratch,
    mut collect: Option<&mut Vec<u8>>,
) -> io::Result<()> {
    let mut total = 0u64;
    // Once the head is out, a plain body goes from the segment to the socket directly.
    let direct = !chunked && collect.is_none() && !head_request;
    loop {
        if direct && out.is_empty() {
            match lease.send_to(conn.stream.as_fd()) {
                Ok(0) => break,
                Ok(n) => {
                    total += n as u64;
                    conn.account(w, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.wait_writable(w, w.shared.cfg.send_timeout)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        let n = lease.read(&mut scratch.io)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if let Some(c) = collect.as_mut() {
            c.extend_from_slice(&scratch.io[..n]);
        }
        if head_request {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "body in an answer to HEAD",
            ));
        }
        if chunked {
            let _ = write!(out, "{n:x}\r\n");
            out.extend_from_slice(&scratch.io[..n]);
            out.extend_from_slice(b"\r\n");
        } else if out.is_empty() {
            conn.send(w, &scratch.io[..n])?;
            continue;
        } else {
            out.extend_from_slice(&scratch.io[..n]);
        }
        conn.send(w, &out)?;
        out.clear();
    }
    if let BodyLen::Exact(n) = answer.body {
        if n != total {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "body length differs from Content-Length",
            ));
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        conn.send(w, &out)?;
    }
    Ok(())
}

/// Keeps a complete answer in the worker's L1 for the lifetime cached granted.
fn remember(
    w: &Worker,
    epoch: u64,
    req: &Request,
    answer: &ResponseHead,
    body: Vec<u8>,
    site: Option<Arc<str>>,
) {
    let mut fixed = Vec::with_capacity(256);
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
        fixed.extend_from_slice(k.as_bytes());
        fixed.extend_from_slice(b": ");
        fixed.extend_from_slice(v);
        fixed.extend_from_slice(b"\r\n");
    }
    if !has_date {
        let _ = write!(fixed, "Date: {}\r\n", http::http_date(SystemTime::now()));
    }
    let ttl = Duration::from_millis(u64::from(answer.l1_ttl_ms));
    w.l1.insert(
        epoch,
        super::l1::key(&req.host, &req.target),
        answer.status,
        fixed,
        body,
        age,
        ttl,
        site,
    );
}

/// Answers a transfer that failed on the cached side before any response byte was sent.
fn cached_failure(w: &Worker, conn: &mut Conn, e: &io::Error) {
    let (status, msg) = match e.kind() {
        io::ErrorKind::TimedOut => {
            Counters::inc(&w.counters().cached_timeouts);
            (504, "cached did not answer in time")
        }
        io::ErrorKind::InvalidData => {
            Counters::inc(&w.counters().messages_rejected);
            (502, "invalid answer from cached")
        }
        _ => (503, "cached went away; retry shortly"),
    };
    conn::send_simple(w, conn, status, msg);
}
