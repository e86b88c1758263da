//! The exchange with `cached` for one request: lease a segment, ring the doorbell, write
//! the request head and body into the segment, then stream the answer to the client chunk
//! by chunk — or, when `cached` says the answer is a fill it streams into the shared arena
//! (a collapsed waiter's: `ResponseHead::follow`), free the segment at once and stream the
//! record from the arena (`respond::arena_hit`); a pointer to a fill with no record yet
//! (generation 0) means: look for it in the arena a while, then ask again, all within
//! `cached_timeout`. Every failure is a [`FetchError`] for
//! `route` to answer: before the first
//! response byte a clear status (503 cached absent or pool exhausted, 504 cached too slow,
//! 502 bad answer); after it the connection closes, so a client never mistakes a short body
//! for a whole one.

use super::conn::{BodyError, Conn, Io, Scratch};
use super::ctx::Ctx;
use super::error::FetchError;
use super::link::Peer;
use super::respond;
use common::pool::{AcquireError, Lease};
use common::protocol::{
    read_head, BodyLen, Doorbell, FollowArena, Kind, RequestHead, ResponseHead,
};
use common::request::{ClientBody, RejectReason, Request};
use common::stats::Counters;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a doorbell may wait for room in the queue.
const RING_TIMEOUT: Duration = Duration::from_secs(1);

/// How cached answered.
enum Answered {
    /// Relayed to the client: whether the connection may continue.
    Relayed(bool),
    /// Follow this arena record (the segment is already free).
    Follow(FollowArena),
}

/// Runs one request through cached; `Ok`: whether the connection may continue.
pub fn exchange(
    cx: &Ctx,
    io: &Io,
    conn: &mut Conn,
    req: &Request,
    kind: Kind,
    scratch: &mut Scratch,
) -> Result<bool, FetchError> {
    let cfg = &cx.shared.cfg;
    let deadline = Instant::now() + cfg.cached_timeout;
    let mut pool_wait = cfg.pool_wait;
    // After a pointer to a fill not in the arena yet: its key, and how long we look there
    // before asking cached again (doubling up to `RECHECK_MAX`); while we wait for it, a pool
    // timeout is only a reason to look again.
    let mut waiting: Option<String> = None;
    let mut look = RECHECK_MIN / 2;
    let mut gone = 0;
    loop {
        let f = match exchange_once(cx, io, conn, req, kind, pool_wait, scratch) {
            Ok(Answered::Relayed(keep)) => return Ok(keep),
            Ok(Answered::Follow(f)) => Some(f),
            Err(FetchError::PoolTimeout) if waiting.is_some() && Instant::now() < deadline => None,
            Err(e) => return Err(e),
        };
        // Only bodiless requests join fills: asking again never needs the body twice.
        if req.body != ClientBody::None {
            return Err(FetchError::BadAnswer(
                "an arena pointer for a request with a body".into(),
            ));
        }
        let key = match f {
            Some(f) if f.generation != 0 => {
                if let Some(hit) = cx.arena.follow(cx.counters(), req, &f) {
                    return Ok(respond::arena_hit(io, conn, req, hit));
                }
                // The record went between cached's answer and our lookup (its fill failed,
                // it was replaced or removed): ask once more, and do not follow a second
                // pointer that leads nowhere.
                gone += 1;
                if gone == 2 {
                    return Err(FetchError::BadAnswer(
                        "the arena record to follow is gone".into(),
                    ));
                }
                continue;
            }
            Some(f) => f.key,
            None => waiting.take().unwrap_or_default(),
        };
        // The fill has no record yet (its head is slow and segments run short): look for it
        // in the arena a while, then ask cached again (it may have failed, or not be
        // streamed), with a pool wait no longer than the look.
        look = (look * 2).min(RECHECK_MAX);
        pool_wait = cfg.pool_wait.min(look);
        let look_until = deadline.min(Instant::now() + look);
        if let Some(hit) = cx.arena.await_record(cx.counters(), req, &key, look_until) {
            return Ok(respond::arena_hit(io, conn, req, hit));
        }
        if Instant::now() >= deadline {
            return Err(FetchError::CachedTimeout);
        }
        waiting = Some(key);
    }
}

/// Shortest and longest look in the arena for a fill's record before asking cached again.
const RECHECK_MIN: Duration = Duration::from_millis(50);
const RECHECK_MAX: Duration = Duration::from_millis(500);

/// One leased exchange with cached (a segment within `pool_wait`).
#[allow(clippy::too_many_arguments)]
fn exchange_once(
    cx: &Ctx,
    io: &Io,
    conn: &mut Conn,
    req: &Request,
    kind: Kind,
    pool_wait: Duration,
    scratch: &mut Scratch,
) -> Result<Answered, FetchError> {
    let cfg = &cx.shared.cfg;
    let pool = &cx.shared.pool;
    let head = RequestHead {
        method: req.method.clone(),
        target: req.target.clone(),
        version: req.version,
        client: conn.peer().to_string(),
        body: req.body.framing(),
        headers: forwarded_headers(cx, conn, req),
    }
    .encode();
    if head.len() > pool.segment_size() {
        return Err(FetchError::Rejected(
            if req.target.len() * 2 > pool.segment_size() {
                RejectReason::TargetTooLongForSegment
            } else {
                RejectReason::HeadTooLargeForSegment
            },
        ));
    }
    let peer = cx.cached.current().ok_or(FetchError::CachedAbsent)?;
    let request_id = cx.next_request_id.fetch_add(1, Ordering::Relaxed);
    let waited = Instant::now();
    let acquired = pool.acquire(pool_wait, request_id);
    Counters::add(
        &cx.counters().pool_acquire_wait_us,
        waited.elapsed().as_micros() as u64,
    );
    let mut lease = match acquired {
        Ok(lease) => lease,
        // Timed out or the semaphore failed: either way no segment in time.
        Err(AcquireError::TimedOut(_) | AcquireError::Sem(_)) => {
            return Err(FetchError::PoolTimeout)
        }
    };
    Counters::inc(&cx.counters().pool_acquires);
    lease.set_peer(Some(peer.id));
    lease.set_timeout(cfg.cached_timeout);
    let bell = Doorbell {
        kind,
        index: lease.index(),
        generation: lease.generation(),
        request_id,
        pool_id: pool.id(),
    };
    if let Err(e) = peer.queue.send(&bell.encode(), RING_TIMEOUT) {
        cx.cached.forget();
        return Err(FetchError::RingFailed(e));
    }
    let mut t = Transfer { lease, peer };
    let done = send_request(io, conn, req, &head, &mut t.lease, scratch)
        .and_then(|()| relay_answer(io, conn, req, &mut t, scratch));
    if done.is_err() {
        Counters::inc(&cx.counters().transfers_aborted);
    }
    done
}

/// The request into the segment: its head, then its body straight from the client.
fn send_request(
    io: &Io,
    conn: &mut Conn,
    req: &Request,
    head: &[u8],
    lease: &mut Lease,
    scratch: &mut Scratch,
) -> Result<(), FetchError> {
    lease.write_all(head).map_err(FetchError::from_lease)?;
    if req.expect_continue && req.body != ClientBody::None {
        respond::send_continue(io, conn)?;
    }
    conn.read_body(io, req.body, &mut scratch.io, |chunk| {
        lease.write_all(chunk)
    })
    .map_err(|e| match e {
        BodyError::Client(e) => FetchError::Client(e),
        BodyError::Sink(e) => FetchError::from_lease(e),
    })?;
    lease.finish().map_err(FetchError::from_lease)
}

/// One leased exchange with cached.
struct Transfer<'p> {
    lease: Lease<'p>,
    /// The cached that was rung (its stats region names the answer's site).
    peer: Peer,
}

/// cached's answer to the client: its head, then the body chunk by chunk.
fn relay_answer(
    io: &Io,
    conn: &mut Conn,
    req: &Request,
    t: &mut Transfer,
    scratch: &mut Scratch,
) -> Result<Answered, FetchError> {
    // Interim answers (`1xx`) the origin sent come first, each a head of its own.
    let answer = loop {
        let raw = read_head(&mut t.lease).map_err(FetchError::from_lease)?;
        let answer =
            ResponseHead::decode(&raw).map_err(|e| FetchError::BadAnswer(e.to_string()))?;
        if !(100..200).contains(&answer.status) {
            break answer;
        }
        respond::interim(io, conn, req, &answer)?;
    };
    if let Some(f) = answer.follow {
        // Nothing follows the head: the segment is done with.
        if t.lease
            .read(&mut scratch.io)
            .map_err(FetchError::from_lease)?
            != 0
        {
            return Err(FetchError::BadAnswer(
                "a body after an arena pointer".into(),
            ));
        }
        if t.lease.peer_finished() {
            t.lease.complete();
        }
        return Ok(Answered::Follow(f));
    }
    let head_request = req.method == "HEAD";
    let mut keep = req.keep_alive;
    let chunked = answer.body == BodyLen::Unknown && !head_request;
    if chunked && req.version == 10 {
        keep = false; // HTTP/1.0: the body ends when the connection closes
    }
    let chunked = chunked && req.version == 11;
    let outcome = answer.outcome;
    let out = respond::from_cached(io, conn, &answer, outcome, req, keep, chunked);
    conn.reply.upstream_status = answer.upstream_status;
    // The region of the cached that answered names its site (for the access log).
    conn.reply.site = t.peer.stats.site_name(answer.site).map(Arc::from);
    // The site's row counts what cached answered for it (arena hits count in `arena_hits`).
    t.peer
        .stats
        .site_answered(answer.site, outcome, answer.status);
    let body = Body {
        len: answer.body,
        head_request,
        chunked,
    };
    stream_body(io, conn, &mut t.lease, body, out, scratch)?;
    if !t.lease.peer_finished() {
        return Ok(Answered::Relayed(false));
    }
    t.lease.complete();
    Ok(Answered::Relayed(keep))
}

/// The request's fields as cached gets them: a client's `X-Forwarded-*`/`Forwarded` are
/// kept only from a `trusted_proxies` peer (cached adds its own from the connection).
fn forwarded_headers(cx: &Ctx, conn: &Conn, req: &Request) -> Vec<(String, Vec<u8>)> {
    let is_forwarding = |k: &str| {
        common::request::FORWARDING
            .iter()
            .any(|f| k.eq_ignore_ascii_case(f))
    };
    if !req.headers.iter().any(|(k, _)| is_forwarding(k)) {
        return req.headers.clone();
    }
    let trusted = conn.stream.peer_addr().is_ok_and(|a| {
        cx.shared
            .cfg
            .trusted_proxies
            .iter()
            .any(|n| n.contains(a.ip()))
    });
    if trusted {
        return req.headers.clone();
    }
    Counters::inc(&cx.counters().forwarding_headers_dropped);
    req.headers
        .iter()
        .filter(|(k, _)| !is_forwarding(k))
        .cloned()
        .collect()
}

/// How the answer's body goes to the client.
#[derive(Clone, Copy)]
struct Body {
    /// What cached announced.
    len: BodyLen,
    /// The request was HEAD: no body may come.
    head_request: bool,
    /// Sent with chunked framing (HTTP/1.1, length unknown).
    chunked: bool,
}

/// Sends the head (already in `out`) and the body, checking the length cached announced.
fn stream_body(
    io: &Io,
    conn: &mut Conn,
    lease: &mut Lease,
    body: Body,
    mut out: Vec<u8>,
    scratch: &mut Scratch,
) -> Result<(), FetchError> {
    let mut total = 0u64;
    // Once the head is out, a plain body goes from the segment to the socket directly.
    let direct = !body.chunked && !body.head_request;
    loop {
        if direct && out.is_empty() {
            match lease.send_to(conn.stream.as_fd()) {
                Ok(0) => break,
                Ok(n) => {
                    total += n as u64;
                    conn.account(io.counters, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.wait_writable(io)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The socket's errors are the kernel's (errno); the lease's are its own.
                Err(e) if e.raw_os_error().is_some() => return Err(FetchError::Client(e.into())),
                Err(e) => return Err(FetchError::from_lease(e)),
            }
            continue;
        }
        let n = lease
            .read(&mut scratch.io)
            .map_err(FetchError::from_lease)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if body.head_request {
            return Err(FetchError::BadAnswer("body in an answer to HEAD".into()));
        }
        if body.chunked {
            let _ = write!(out, "{n:x}\r\n");
            out.extend_from_slice(&scratch.io[..n]);
            out.extend_from_slice(b"\r\n");
        } else if out.is_empty() {
            conn.send(io, &scratch.io[..n])?;
            continue;
        } else {
            out.extend_from_slice(&scratch.io[..n]);
        }
        conn.send(io, &out)?;
        out.clear();
    }
    if let BodyLen::Exact(n) = body.len {
        if n != total {
            return Err(FetchError::ShortBody);
        }
    }
    if body.chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        conn.send(io, &out)?;
    }
    Ok(())
}
