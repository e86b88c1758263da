//! Carrying out a fetch from the origin: relaying its answer into the segment as it
//! arrives, leading a fill (sharing the answer with the requests that follow it, and
//! storing it when the rules allow), following another request's fill, and passing a
//! request through (with the invalidation a successful unsafe method causes). A fill that
//! will be stored and shared, of a declared length, is also written into the shared arena
//! as it arrives (`published::Streaming`), and its followers tell their workers to stream it
//! from there instead of copying it into their segments; a follower waiting for a slow head
//! while the pool runs short gives its segment back at once with a pointer to a record not
//! there yet (generation 0: the worker looks in the arena, then asks again). What to do was
//! decided by `phase`;
//! the request itself is sent by `source::origin`.

use crate::answer;
use crate::cache::{FillLead, Follower, Progress};
use crate::ctx::Ctx;
use crate::error::SourceError;
use crate::published;
use crate::respond;
use crate::source::origin::{self, cache_key, declared_length, end_to_end, host_key};
use crate::store;
use crate::stored::{Body, Stored, Validity};
use crate::upstream::{Answer, SiteUp};
use common::cache_policy as policy;
use common::http::CacheOutcome;
use common::pool::Lease;
use common::protocol::{BodyLen, FollowArena, RequestHead};
use common::stats::Counters;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use ureq::http;

/// Largest piece a collapsed waiter copies at once.
const FOLLOW_CHUNK: usize = 256 << 10;
/// How often a waiter for a fill's head checks whether the pool runs short.
const HEAD_SLICE: Duration = Duration::from_millis(10);

/// A request that is neither looked up nor stored: sent with its body, if any (a GET or
/// HEAD with a body passes too, and its body is forwarded instead of drained: a drained
/// body left the upstream request announcing bytes it never had).
pub fn pass(ctx: &Ctx, lease: &mut Lease, req: &RequestHead, site: &SiteUp) -> io::Result<()> {
    Counters::inc(&ctx.counters().passes);
    let sent = origin::send(Some(lease), req, site, &[]);
    respond::drain(lease)?;
    let answer = match sent {
        Ok(a) => a,
        Err(e) => return fail(ctx, lease, req, site, &e),
    };
    let status = answer.response.status().as_u16();
    if origin::is_unsafe(&req.method) && (200..400).contains(&status) {
        invalidate(ctx, req, answer.response.headers(), site);
    }
    relay(ctx, lease, req, answer, None, CacheOutcome::Pass)
}

/// The origin could not give an answer to relay: the error answer, counted.
pub fn fail(
    ctx: &Ctx,
    lease: &mut Lease,
    req: &RequestHead,
    site: &SiteUp,
    e: &SourceError,
) -> io::Result<()> {
    respond::failure(lease, ctx.counters(), site.index, e, req.method == "HEAD")
}

/// A miss: fetch and relay; a `lead` shares what arrives with the fill's followers.
pub fn fetch(
    ctx: &Ctx,
    lease: &mut Lease,
    req: &RequestHead,
    site: &SiteUp,
    lead: Option<FillLead>,
) -> io::Result<()> {
    match origin::send(Some(lease), req, site, &[]) {
        Ok(answer) => relay(ctx, lease, req, answer, lead, CacheOutcome::Miss),
        Err(e) => fail(ctx, lease, req, site, &e),
    }
}

/// After a successful unsafe method: drop the target and its Location/Content-Location
/// (same site only: a URL on one of its servers, on the client's host, or a path), here
/// and in the arena.
fn invalidate(ctx: &Ctx, req: &RequestHead, headers: &http::HeaderMap, site: &SiteUp) {
    ctx.remove(&cache_key(&site.site, req));
    let host = req.header("host").unwrap_or_default();
    let client = String::from_utf8_lossy(host);
    let mut bases: Vec<String> = vec![format!("http://{client}"), format!("https://{client}")];
    for server in &site.servers {
        let o = &server.origin;
        bases.push(o.to_string());
        bases.push(format!(
            "{}://{}{}",
            o.scheme.as_str(),
            o.host_header(),
            o.prefix
        ));
    }
    for h in ["location", "content-location"] {
        if let Some(v) = headers.get(h).and_then(|v| v.to_str().ok()) {
            let target = bases
                .iter()
                .find_map(|b| v.strip_prefix(b.as_str()))
                .unwrap_or(v);
            if target.starts_with('/') {
                ctx.remove(&host_key(&site.site, host, target));
            }
        }
    }
}

pub fn relay(
    ctx: &Ctx,
    lease: &mut Lease,
    req: &RequestHead,
    answer: Answer,
    mut lead: Option<FillLead>,
    outcome: CacheOutcome,
) -> io::Result<()> {
    // `_busy` counts the server's request in flight until the body is relayed.
    let Answer {
        response,
        request_time,
        busy: _busy,
        site,
    } = answer;
    // `source::origin::send` refused any framing we could not relay.
    let (parts, body) = response.into_parts();
    let status = parts.status.as_u16();
    let response_time = SystemTime::now();
    let declared = declared_length(&parts.headers);
    let head_only = req.method == "HEAD";
    let no_body = head_only || common::http::bodiless(status);
    let headers = end_to_end(&parts.headers, head_only);
    if head_only && status == 200 && outcome != CacheOutcome::Pass {
        store::freshen_from_head(ctx, req, &headers, (request_time, response_time));
    }
    let framing = match (no_body, declared) {
        (true, _) => BodyLen::None,
        (false, Some(n)) => BodyLen::Exact(n),
        (false, None) => BodyLen::Unknown,
    };
    let limit = ctx.store_limit();
    // What an unstored fill keeps for followers that lag behind the leader.
    let window = limit.min(usize::MAX as u64) as usize;
    // A 204 has no body by definition, and is stored as such (RFC 9111 §3).
    // A range request's 206 is stored as a piece to combine (RFC 9111 §3.4); its other
    // answers are not stored, nor a 206 we did not ask for.
    let mut storable = if outcome == CacheOutcome::Pass
        || (req.header("range").is_some() != (status == 206))
        || (no_body && status != 204)
    {
        None
    } else {
        store::storable(ctx, &req.method, req, status, &headers, response_time)
            .filter(|_| declared.is_none_or(|n| n <= limit))
    };
    // What followers get and the store keeps (the first client's own answer keeps all).
    let shared = match storable
        .as_ref()
        .map(|s| store::shared_copy(ctx, &headers, s))
    {
        Some(Some(shared)) => shared,
        Some(None) => {
            storable = None;
            headers.clone()
        }
        None => headers.clone(),
    };
    let initial_age = policy::initial_age(&headers, request_time, response_time);
    // A shared fill of a declared length is exposed in the arena as it arrives: workers
    // stream it from there, and its waiters send them there instead of holding a segment.
    let mut streaming = match (&storable, &lead, framing, &ctx.arena) {
        (Some(s), Some(_), BodyLen::Exact(n), Some(arena)) => {
            let mut stored_headers = shared.clone();
            stored_headers.retain(|(k, _)| !k.eq_ignore_ascii_case("age"));
            let head = published::Head {
                status,
                headers: &stored_headers,
                validity: &Validity::http(s),
                response_time,
                initial_age,
            };
            let site = &ctx.cfg().sites[origin::site_of(ctx, req).expect("a routed request")];
            arena.begin(&ctx.cfg(), &cache_key(site, req), &head, n)
        }
        _ => None,
    };
    if storable.is_none() {
        // Not shareable: followers fetch on their own, and we buffer nothing for them.
        if let Some(mut l) = lead.take() {
            l.pass();
        }
    } else if let Some(l) = &lead {
        if let Some(s) = &streaming {
            Counters::inc(&ctx.counters().fills_streamed);
            l.streams_in_arena(s.follow());
        }
        l.head(status, answer::downstream(ctx, shared.clone()), framing);
    }
    let ttl = match &storable {
        // Our answer keeps fields the shared copy lacks (a Set-Cookie, qualified fields):
        // it is not announced as reusable by others.
        Some(s) if !s.strip.is_empty() || shared.len() != headers.len() => Duration::ZERO,
        Some(s)
            if !s.no_cache && status == 200 && common::http::header(&headers, "vary").is_none() =>
        {
            common::hit::remaining(s.lifetime, initial_age)
        }
        _ => Duration::ZERO,
    };
    let outcome = if storable.is_some() || outcome != CacheOutcome::Miss {
        outcome
    } else {
        CacheOutcome::Pass
    };
    // Our own client may go away; as long as others follow the fill we keep fetching.
    let meta = respond::Meta {
        outcome,
        ttl_ms: ttl.as_millis() as u32,
        upstream_status: status,
        site,
    };
    let mut own = respond::head(
        lease,
        status,
        framing,
        meta,
        answer::downstream(ctx, headers.clone()),
    );
    let mut keep: Option<Vec<u8>> = storable
        .as_ref()
        .map(|_| Vec::with_capacity(declared.unwrap_or(0) as usize));
    if !no_body {
        let mut reader = body.into_reader();
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let cut = SourceError::Truncated(format!("after {total} bytes: {e}"));
                    cut.answer(ctx.counters()); // counted; the head is out, so the transfer aborts
                    log::warn!("origin body for {}: {cut}", req.target);
                    return Err(e); // drops the lead: followers abort too
                }
            };
            let chunk = &buf[..n];
            total += n as u64;
            if declared.is_some_and(|d| total > d) {
                // More than announced: the record cannot hold it (the fill fails below).
                streaming = None;
            }
            if let Some(s) = streaming.as_mut() {
                s.write(chunk);
            }
            if keep.is_some() && total > limit {
                // Too large to store: it streams on through a bounded window.
                keep = None;
                if let Some(l) = &lead {
                    l.unstored(window);
                }
            }
            if let Some(l) = &lead {
                l.bytes(chunk, window);
            }
            if own.is_ok() {
                // Stream on, except the last bytes of a known length: they wait for the
                // fill to finish and the object to be stored, so a client that has its
                // whole body and asks again finds it stored.
                let last = declared == Some(total);
                own = lease
                    .write_all(chunk)
                    .and_then(|()| if last { Ok(()) } else { lease.flush() });
            }
            if own.is_err() {
                // Our client is gone: go on only for followers, at the pace of the fastest
                // (those streaming from the arena are not counted: a streamed fill goes on).
                let followers = match &lead {
                    Some(l) => l.pace(window, ctx.cfg().read_timeout),
                    None => 0,
                };
                if followers == 0 && streaming.is_none() {
                    return own;
                }
            }
            if let Some(k) = keep.as_mut() {
                k.extend_from_slice(chunk);
            }
        }
        if declared.is_some_and(|d| d != total) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "origin body shorter than its Content-Length",
            ));
        }
    }
    if let Some(l) = lead {
        l.finish();
    }
    if let (Some(s), Some(body)) = (storable, keep) {
        let mut headers = shared;
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case("age"));
        let obj = Stored {
            status,
            headers: headers.into(),
            body: Body::owned(body),
            validity: Validity::http(&s),
            response_time,
            initial_age,
        };
        let site = &ctx.cfg().sites[origin::site_of(ctx, req).expect("a routed request")];
        if status == 206 {
            store::piece(ctx, &cache_key(site, req), req, obj);
        } else {
            ctx.store_streamed(&cache_key(site, req), req, Arc::new(obj), streaming.take());
        }
    }
    // A streamed fill not stored after all is abandoned here (its readers stop).
    drop(streaming);
    own?;
    lease.finish()
}

/// Do the pool's free segments run short (a quarter or less left)? Then waiters for a slow
/// head give theirs back instead of holding it until the head comes.
fn pool_short(lease: &Lease) -> bool {
    let pool = lease.pool();
    pool.free_count() <= (pool.segments() / 4) as i32
}

pub enum Followed {
    Served,
    /// The leader's answer may not be shared: fetch alone.
    Pass,
}

/// Streams another request's fill as it arrives. The follower leaves the fill when this
/// returns, whatever the outcome.
pub fn follow(
    ctx: &Ctx,
    lease: &mut Lease,
    req: &RequestHead,
    fill: Follower,
    site: u16,
    primary: &str,
) -> io::Result<Followed> {
    let wait = ctx.cfg().read_timeout;
    // The fill may be streamed in the arena: the worker may be sent there (see below).
    let conditional = common::http::CONDITIONAL
        .iter()
        .any(|c| req.header(c).is_some());
    let pointer = (!conditional && common::hit::answerable(&req.method, &req.headers))
        .then(|| ctx.arena.as_ref().and(published::arena_key(primary)))
        .flatten();
    let deadline = std::time::Instant::now() + wait;
    let (status, headers, framing) = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let slice = if pointer.is_some() {
            left.min(HEAD_SLICE)
        } else {
            left
        };
        match fill.next(true, 0, 0, slice) {
            Progress::Head(s, h, b) => break (s, h, b),
            Progress::Pass => return Ok(Followed::Pass),
            // Waited `slice` for the head (with `want_head`, only a timeout fails).
            Progress::Failed if !left.is_zero() => {
                if let Some(key) = pointer.filter(|_| pool_short(lease)) {
                    // Segments run short while the origin's head is slow: ours goes back
                    // to the pool, and the worker looks for the fill's record in the arena
                    // (generation 0: not there yet) and asks again after a while.
                    Counters::inc(&ctx.counters().arena_early_follows);
                    let meta = respond::Meta {
                        site,
                        ..respond::Meta::of(CacheOutcome::Collapsed)
                    };
                    let follow = FollowArena {
                        key: key.to_string(),
                        generation: 0,
                    };
                    respond::follow_arena(lease, meta, follow)?;
                    return Ok(Followed::Served);
                }
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the fill we followed failed",
                ))
            }
        }
    };
    // The answer varies on request fields: it is ours only if ours select the same
    // variant as the leader's (its Vary was not known when we joined).
    let vary = policy::all_tokens(&headers, "vary");
    if !vary.is_empty()
        && policy::vary_key(&vary, &req.headers) != policy::vary_key(&vary, fill.leader_req())
    {
        return Ok(Followed::Pass);
    }
    Counters::inc(&ctx.counters().collapsed);
    // The leader's origin answer, shared: its status is the upstream status here too.
    let meta = respond::Meta {
        upstream_status: status,
        site,
        ..respond::Meta::of(CacheOutcome::Collapsed)
    };
    // The fill is in the arena: the worker streams it from there (the answer of the fill,
    // as here), and the segment is free at once. Conditional requests stay here, where the
    // answer to every precondition is known.
    if let Some(follow) = fill.arena().filter(|_| pointer.is_some()) {
        Counters::inc(&ctx.counters().arena_follows);
        respond::follow_arena(lease, meta, follow)?;
        return Ok(Followed::Served);
    }
    respond::head(lease, status, framing, meta, headers)?;
    let mut offset = 0u64;
    loop {
        match fill.next(false, offset, FOLLOW_CHUNK, wait) {
            Progress::Bytes(b) => {
                lease.write_all(&b)?;
                lease.flush()?;
                offset += b.len() as u64;
            }
            Progress::Done => break,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the fill we followed failed (or we fell behind it)",
                ))
            }
        }
    }
    lease.finish()?;
    Ok(Followed::Served)
}
