//! Routing of the requests of one ready connection, each top to bottom: take the next head
//! (`conn`), refuse one that came round a loop of caches (its `Via` names this node), then
//! the proxy's own endpoints under `/__shmproxy/` (`status`), a fresh hit (from the shared
//! arena, `arena`), PURGE's permission, and everything else through
//! cached (`fetch`); answers are written by `respond`, failures answered here from
//! [`FetchError::count`], and every request ends in the access log. Called by the worker's
//! exec threads; it never touches the scheduler except through the `conn::Blocking` hook.

use super::accesslog;
use super::conn::{BodyError, ClientError, Conn, Head, Io, Next, Scratch};
use super::ctx::Ctx;
use super::error::FetchError;
use super::fetch;
use super::respond;
use super::status;
use common::http::header;
use common::protocol::Kind;
use common::request::{ClientBody, Request};
use common::stats::Counters;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

/// Serves every complete request buffered or readable now; parks when the socket has
/// nothing more, closes on EOF, error or `Connection: close`.
pub fn serve_ready(cx: &Ctx, io: &Io, conn: &mut Conn, scratch: &mut Scratch) -> Next {
    loop {
        let mut req = match conn.next_head(io.counters, &cx.limits, &mut scratch.read) {
            Head::Request(req) => req,
            Head::Invalid(why) => {
                fail(io, conn, &FetchError::Rejected(why));
                return Next::Close;
            }
            Head::Park => return Next::Park,
            Head::Close => return Next::Close,
        };
        if cx.draining.load(Ordering::Relaxed) {
            req.keep_alive = false;
        }
        let started = Instant::now();
        Counters::inc(&io.counters.requests);
        // Every path either reads the body (forwarding, `discard_body`) or ends the
        // connection: never is an unread body parsed as the next request.
        let keep = handle(cx, io, conn, &req, scratch) && !conn.body_unread;
        let took = started.elapsed();
        io.counters.latency(took.as_micros() as u64);
        log(cx, conn, &req, took);
        conn.last_active = Instant::now();
        if !keep {
            return Next::Close;
        }
    }
}

/// Answers one request; returns whether the connection may serve another.
fn handle(cx: &Ctx, io: &Io, conn: &mut Conn, req: &Request, scratch: &mut Scratch) -> bool {
    common::supervise::test_panic(&req.target, "proxy");
    if let ClientBody::Length(n) = req.body {
        if n > cx.shared.cfg.max_body_bytes {
            fail(io, conn, &FetchError::Client(ClientError::BodyTooLarge));
            return false;
        }
    }
    if looped(cx, req) {
        fail(io, conn, &FetchError::Loop);
        return false;
    }
    if req.target.starts_with("/__shmproxy/") && (req.method == "GET" || req.method == "HEAD") {
        return discard_body(io, conn, req, scratch) && status::serve(cx, io, conn, req);
    }
    if let Some(hit) = cx.arena.fresh_hit(cx.counters(), req) {
        return discard_body(io, conn, req, scratch) && respond::arena_hit(io, conn, req, hit);
    }
    // Everything below may block (on cached or on the client): let other threads serve the
    // connections this one took events for.
    io.blocking.will_block();
    let kind = if req.method == "PURGE" {
        if !status::allowed(cx, conn) {
            // A simple answer always closes: the body (unread) goes with the connection.
            respond::simple(
                io,
                conn,
                403,
                "PURGE is allowed from the stats_allow addresses only",
            );
            return false;
        }
        Kind::Purge
    } else {
        Kind::Request
    };
    match fetch::exchange(cx, io, conn, req, kind, scratch) {
        Ok(keep) => keep,
        Err(e) => fail(io, conn, &e) && e.keeps_connection() && req.keep_alive,
    }
}

/// Has the request passed this node before (a `Via` member names it)? A shield whose origin
/// is its own edge would otherwise forward it round and round.
fn looped(cx: &Ctx, req: &Request) -> bool {
    let vias = req
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("via"))
        .map(|(_, v)| v.as_slice());
    common::node::loop_detected(vias, &cx.shared.cfg.node)
}

/// Counts a failure and, if nothing was answered yet, answers it; returns whether the
/// connection is still usable (nothing was sent that ends it).
fn fail(io: &Io, conn: &mut Conn, e: &FetchError) -> bool {
    let answered = conn.reply.status != 0;
    match e {
        FetchError::RingFailed(_) | FetchError::BadAnswer(_) => log::warn!("{e}"),
        _ if answered => log::debug!("response aborted: {e}"),
        _ => {}
    }
    match e.count(io.counters) {
        Some((status, why)) if !answered => {
            respond::simple(io, conn, status, why);
            true
        }
        _ => false,
    }
}

/// Before an answer the proxy makes itself (an arena hit, its own endpoints): reads the request's
/// body and throws it away, so the connection can serve the next request. Bounded by
/// `max_body_bytes` and by `send_timeout` for the whole body; a body that fails either, or
/// is malformed, gets its status and the connection closes (`false`). A client that waits
/// for `100 Continue` gets it first (it would not send the body otherwise).
fn discard_body(io: &Io, conn: &mut Conn, req: &Request, scratch: &mut Scratch) -> bool {
    if !conn.body_unread {
        return true;
    }
    let buffered = matches!(req.body, ClientBody::Length(n) if conn.buf.len() as u64 >= n);
    if !buffered {
        // Reading it may block on the client: let other threads serve what this one took.
        io.blocking.will_block();
    }
    if req.expect_continue && respond::send_continue(io, conn).is_err() {
        return false;
    }
    let deadline = Instant::now() + io.cfg.send_timeout;
    let mut buf = std::mem::take(&mut scratch.io);
    let read = conn.read_body(io, req.body, &mut buf, |_| {
        if Instant::now() > deadline {
            Err(ClientError::TimedOut)
        } else {
            Ok(())
        }
    });
    scratch.io = buf;
    match read {
        Ok(()) => {
            Counters::inc(&io.counters.request_bodies_discarded);
            true
        }
        Err(BodyError::Client(e) | BodyError::Sink(e)) => {
            fail(io, conn, &FetchError::Client(e));
            false
        }
    }
}

/// The access log's record of the request and its answer.
fn log(cx: &Ctx, conn: &Conn, req: &Request, took: Duration) {
    let r = &conn.reply;
    accesslog::record(cx.shared, cx.index, &req.method, r.outcome, || {
        accesslog::Entry {
            peer: conn.peer(),
            method: &req.method,
            target: &req.target,
            version: req.version,
            host: &req.host,
            status: r.status,
            body_bytes: r.body_bytes(),
            bytes: r.bytes,
            referer: header(&req.headers, "referer"),
            user_agent: header(&req.headers, "user-agent"),
            cache: r.outcome.as_str(),
            upstream_status: r.upstream_status,
            took,
            site: r.site.as_deref(),
            node: &cx.shared.cfg.node,
            now: SystemTime::now(),
        }
    });
}
