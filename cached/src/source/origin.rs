//! Origin mode: each request belongs to the site its `Host` names (`421` when none does)
//! and goes to one of the site's servers through [`crate::upstream`]. Answers stream
//! through the segment as they arrive.
//!
//! GET and HEAD go through the cache (RFC 9111, rules in `policy`): a fresh stored answer
//! is served; a stale one is revalidated with its validators (a 304 refreshes it); a miss
//! becomes a fill that concurrent requests for the same key follow (one upstream fetch,
//! every client streaming as bytes arrive). Other methods pass through, and a successful
//! unsafe one invalidates the target and its `Location`/`Content-Location`. A truncated
//! body is never stored and aborts every transfer that carried it.

use crate::cache::{FillLead, FillRole, Progress};
use crate::lru::{Stored, Validity};
use crate::policy::{self, RequestRules, Use};
use crate::receiver::Ctx;
use crate::respond::{self, Headers};
use crate::upstream::{Answer, Failure, Outgoing, SendBody, SiteUp};
use common::config::{SetCookie, Site};
use common::http::{self as httpx, CacheOutcome};
use common::pool::Lease;
use common::protocol::{BodyLen, RequestHead};
use common::stats::Counters;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use ureq::http;

/// Largest piece a collapsed waiter copies at once.
const FOLLOW_CHUNK: usize = 256 << 10;

/// The site a request belongs to (by its `Host`), as an index into the sites; `None`:
/// no site serves that host.
pub fn site_of(ctx: &Ctx, req: &RequestHead) -> Option<usize> {
    let site = ctx.cfg.site_for(req.header("host").unwrap_or_default())?;
    ctx.cfg.sites.iter().position(|s| std::ptr::eq(s, site))
}

/// The primary cache key of a request in origin mode: its site, the normalised host the
/// proxy forwards in `Host` (lowercase, default port dropped), then the target. An origin
/// that reflects `Host` thus never has one host's answer served for another.
pub fn cache_key(site: &Site, req: &RequestHead) -> String {
    host_key(site, req.header("host").unwrap_or_default(), &req.target)
}

fn host_key(site: &Site, host: &[u8], target: &str) -> String {
    format!(
        "{} http://{}{target}",
        site.name,
        String::from_utf8_lossy(host)
    )
}

/// What the worker is told of an answer for `site`.
fn meta(site: &SiteUp, outcome: CacheOutcome, upstream_status: u16) -> respond::Meta {
    respond::Meta {
        upstream_status,
        site: site.index,
        ..respond::Meta::of(outcome)
    }
}

fn is_unsafe(method: &str) -> bool {
    !matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE")
}

pub fn serve(ctx: &Ctx, lease: &mut Lease, req: &RequestHead) -> io::Result<()> {
    let ups = ctx.upstreams.as_ref().expect("origin mode has upstreams");
    let Some(site) = site_of(ctx, req).map(|i| ups.site(i)) else {
        Counters::inc(&ctx.counters().misdirected_requests);
        respond::drain(lease)?;
        return respond::error(
            lease,
            421,
            "no site of this proxy serves this host",
            req.method == "HEAD",
        );
    };
    let origin = site;
    // A GET or HEAD with a body passes too, body and all: the body may select the answer, so
    // it is neither looked up nor stored, and the body is forwarded instead of drained (a
    // drained body left the upstream request announcing bytes it never had).
    if (req.method != "GET" && req.method != "HEAD") || req.body != BodyLen::None {
        Counters::inc(&ctx.counters().passes);
        let sent = upstream(Some(lease), req, origin, &[]);
        respond::drain(lease)?;
        let response = match sent {
            Ok(r) => r,
            Err(e) => return upstream_error(ctx, lease, origin, e, false),
        };
        if is_unsafe(&req.method) && (200..400).contains(&response.response.status().as_u16()) {
            invalidate(ctx, req, response.response.headers(), origin);
        }
        return relay(ctx, lease, req, response, None, CacheOutcome::Pass);
    }
    respond::drain(lease)?;
    let primary = cache_key(&site.site, req);
    let rules = RequestRules::of(&req.headers);
    let key = ctx.cache.full_key(&primary, &req.headers);
    let now = SystemTime::now();
    // Past its stale windows and `keep`, a stored answer is as good as gone.
    let stored = ctx.cache.get(&key).and_then(|obj| {
        let s = obj.staleness(now)?;
        let keep = (ctx.cfg.keep)
            .max(ctx.cfg.grace)
            .max(s.stale_while_revalidate)
            .max(s.stale_if_error);
        (s.stale_by <= keep).then_some((obj, s))
    });
    if let Some((obj, staleness)) = stored {
        let usable = obj.usable(now, &rules).expect("origin objects are Http");
        let outcome = match usable {
            Use::Fresh => {
                Counters::inc(&ctx.counters().l2_hits);
                CacheOutcome::Hit
            }
            Use::StaleAllowed => {
                Counters::inc(&ctx.counters().l2_stale);
                CacheOutcome::Stale
            }
            Use::Revalidate if rules.only_if_cached => {
                return respond::error(
                    lease,
                    504,
                    "stored answer is stale (only-if-cached)",
                    req.method == "HEAD",
                )
            }
            Use::Revalidate
                if staleness.while_revalidating(&rules)
                    && refresh_in_background(ctx, site, req, &primary, &key, &obj) =>
            {
                Counters::inc(&ctx.counters().stale_while_revalidate);
                Counters::inc(&ctx.counters().l2_stale);
                CacheOutcome::Stale
            }
            Use::Revalidate => {
                return revalidate(ctx, lease, req, origin, &primary, &obj, staleness)
            }
        };
        return super::serve_stored(ctx, lease, req, &obj, meta(site, outcome, 0));
    }
    if rules.only_if_cached {
        return respond::error(
            lease,
            504,
            "not in cache (only-if-cached)",
            req.method == "HEAD",
        );
    }
    if req.method == "GET" && serve_piece(ctx, lease, req, &key, &rules)? {
        return Ok(());
    }
    Counters::inc(&ctx.counters().l2_misses);
    // HEAD and Range misses go upstream as they are and are not stored (a partial or empty
    // answer must not poison the cache); only a plain GET may lead or join a fill.
    if req.method == "HEAD" || req.header("range").is_some() {
        return fetch(ctx, lease, req, origin, None);
    }
    match ctx.cache.join_fill(&key, &req.headers) {
        FillRole::Leader(lead) => fetch(ctx, lease, req, origin, Some(lead)),
        FillRole::Alone => fetch(ctx, lease, req, origin, None),
        FillRole::Waiter(fill) => {
            // `follow` takes the follower and leaves the fill before a Pass fetches alone.
            match follow(ctx, lease, req, fill, site.index)? {
                Followed::Served => Ok(()),
                Followed::Pass => fetch(ctx, lease, req, origin, None),
            }
        }
    }
}

fn fetch(
    ctx: &Ctx,
    lease: &mut Lease,
    req: &RequestHead,
    origin: &SiteUp,
    lead: Option<FillLead>,
) -> io::Result<()> {
    match upstream(Some(lease), req, origin, &[]) {
        Ok(answer) => relay(ctx, lease, req, answer, lead, CacheOutcome::Miss),
        Err(e) => upstream_error(ctx, lease, origin, e, req.method == "HEAD"),
    }
}

/// Sends a PURGE on to a server of the request's site (`cached.purge_forward`: an edge purges
/// its shield too). `Some(true)`: the server had the object (2xx); `Some(false)`: it answered
/// otherwise; `None`: it could not be reached (counted, logged).
pub fn forward_purge(ctx: &Ctx, req: &RequestHead) -> Option<bool> {
    let ups = ctx.upstreams.as_ref()?;
    let site = ups.site(site_of(ctx, req)?);
    Counters::inc(&ctx.counters().purges_forwarded);
    match upstream(None, req, site, &[]) {
        Ok(mut answer) => {
            let _ = answer
                .response
                .body_mut()
                .with_config()
                .limit(64 << 10)
                .read_to_vec();
            Some(answer.response.status().is_success())
        }
        Err(e) => {
            Counters::inc(&ctx.counters().purge_forward_failures);
            log::warn!(
                "site {}: PURGE {} not forwarded: {e}",
                site.site.name,
                req.target
            );
            None
        }
    }
}

/// Sends the request to a server of the site (with its body from the segment, if any),
/// as a reverse proxy forwards it: `X-Forwarded-For` gets the client appended,
/// `X-Forwarded-Host` and `X-Forwarded-Proto` say what the client asked for (a trusted
/// front end's own are passed on instead: the proxy drops any other client's), `Via` names
/// us, and `Host` follows the site's `host_header`. `extra` fields replace the client's of
/// the same name (the validators of a revalidation).
fn upstream<'u>(
    lease: Option<&mut Lease>,
    req: &RequestHead,
    site: &'u SiteUp,
    extra: &[(&str, Vec<u8>)],
) -> Result<Answer<'u>, Failure> {
    let mut headers: Headers = Vec::with_capacity(req.headers.len() + 4);
    let mut xff: Option<Vec<u8>> = None;
    let replaced = |name: &str| extra.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let client_host = req.header("host").unwrap_or_default();
    for (name, value) in &req.headers {
        let lower = name.to_ascii_lowercase();
        if replaced(&lower) {
            continue;
        }
        match lower.as_str() {
            "host" | "content-length" => {}
            "x-forwarded-for" => xff = Some(value.clone()),
            _ => headers.push((name.clone(), value.clone())),
        }
    }
    if req.header("x-forwarded-host").is_none() {
        headers.push(("X-Forwarded-Host".into(), client_host.to_vec()));
    }
    if req.header("x-forwarded-proto").is_none() {
        headers.push(("X-Forwarded-Proto".into(), b"http".to_vec()));
    }
    for (k, v) in extra {
        headers.push((k.to_string(), v.clone()));
    }
    let mut xff = xff
        .map(|mut v| {
            v.extend_from_slice(b", ");
            v
        })
        .unwrap_or_default();
    xff.extend_from_slice(req.client.as_bytes());
    headers.push(("X-Forwarded-For".into(), xff));
    headers.push((
        "Via".into(),
        common::node::via(req.version, &site.node).into_bytes(),
    ));
    let primary = cache_key(&site.site, req);
    let out = Outgoing {
        method: &req.method,
        target: &req.target,
        headers,
        client_host,
        key: &primary,
    };
    match req.body {
        BodyLen::None => site.send(&out, None),
        declared => {
            let left = match declared {
                BodyLen::Exact(n) => Some(n),
                _ => None,
            };
            let Some(lease) = lease else {
                return Err(Failure::Protocol(
                    "a request body without its segment".into(),
                ));
            };
            let mut body = BodyFromSegment { lease, left };
            let body = SendBody {
                reader: &mut body,
                len: left,
            };
            site.send(&out, Some(body))
        }
    }
}

/// The request body, read from the segment. A body of known length that ends early (or
/// runs long) is an error: ureq, promised `Content-Length` bytes, would otherwise call a
/// reader at its end again and again without waiting (a spin until the send timeout).
struct BodyFromSegment<'a, 'p> {
    lease: &'a mut Lease<'p>,
    /// Bytes still owed by a body of known length.
    left: Option<u64>,
}

impl Read for BodyFromSegment<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(left) = self.left else {
            return self.lease.read(buf);
        };
        if left == 0 {
            // Whatever follows the announced length is not part of this body.
            return match self.lease.read(&mut [0u8; 1])? {
                0 => Ok(0),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "request body longer than its Content-Length",
                )),
            };
        }
        let want = buf.len().min(left.min(usize::MAX as u64) as usize);
        match self.lease.read(&mut buf[..want])? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "request body shorter than its Content-Length",
            )),
            n => {
                self.left = Some(left - n as u64);
                Ok(n)
            }
        }
    }
}

fn upstream_error(
    ctx: &Ctx,
    lease: &mut Lease,
    site: &SiteUp,
    e: Failure,
    head_only: bool,
) -> io::Result<()> {
    let status = e.status();
    let why = if status == 504 {
        Counters::inc(&ctx.counters().upstream_timeouts);
        "the origin did not answer in time"
    } else {
        Counters::inc(&ctx.counters().upstream_errors);
        "the origin could not be reached or answered badly"
    };
    respond::error_for(lease, site.index, status, why, head_only)
}

/// After a successful unsafe method: drop the target and its Location/Content-Location
/// (same site only: a URL on one of its servers, on the client's host, or a path), in L2
/// and, through the pool's counter, in every L1.
fn invalidate(ctx: &Ctx, req: &RequestHead, headers: &http::HeaderMap, site: &SiteUp) {
    ctx.cache.remove_all(&cache_key(&site.site, req));
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
                ctx.cache.remove_all(&host_key(&site.site, host, target));
            }
        }
    }
    ctx.invalidated();
    super::publish_store_gauges(ctx);
}

/// Why an origin answer cannot be relayed: its framing is one we cannot reproduce exactly
/// (RFC 9112 §6.1-6.3, §7), so whatever we told the client, the bytes that follow could be
/// read as something else. `None`: fine. ureq takes any `chunked` element as chunked and
/// keeps the fields as received, so the check runs on the raw fields.
fn bad_framing(
    status: http::StatusCode,
    version: http::Version,
    headers: &http::HeaderMap,
) -> Option<&'static str> {
    let status = status.as_u16();
    // ureq consumes 100 and the other interim answers itself; what is left is a 101 we
    // never asked for (we send no Upgrade), or a final status outside 2xx-5xx.
    if status < 200 {
        return Some("an interim (1xx) answer we did not ask for");
    }
    if status > 599 {
        return Some("a status outside 100-599");
    }
    let te: Vec<&[u8]> = headers
        .get_all("transfer-encoding")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let cl: Vec<&[u8]> = headers
        .get_all("content-length")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if !te.is_empty() {
        if !cl.is_empty() {
            return Some("both Transfer-Encoding and Content-Length");
        }
        if version == http::Version::HTTP_10 {
            return Some("Transfer-Encoding in an HTTP/1.0 answer");
        }
        if te.len() != 1 || !trim_ows(te[0]).eq_ignore_ascii_case(b"chunked") {
            return Some("a Transfer-Encoding other than chunked");
        }
    }
    match cl.as_slice() {
        [] => {}
        [v] if !trim_ows(v).is_empty() && trim_ows(v).iter().all(u8::is_ascii_digit) => {
            if std::str::from_utf8(trim_ows(v))
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .is_none()
            {
                return Some("a Content-Length out of range");
            }
        }
        [_] => return Some("an invalid Content-Length"),
        _ => return Some("more than one Content-Length"),
    }
    None
}

/// The `Content-Length` an answer announces (one valid value: `bad_framing` checked it).
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// A field name that is a framing or hop-by-hop name once `_` reads as `-`
/// (`Transfer_Encoding`): some servers and CGI gateways treat the two alike, so such a
/// field is never relayed beside the real framing.
fn framing_alias(name: &str) -> bool {
    name.contains('_') && {
        let dashed = name.replace('_', "-");
        dashed.eq_ignore_ascii_case("content-length")
            || dashed.eq_ignore_ascii_case("transfer-encoding")
            || httpx::is_hop_by_hop(&dashed, &[])
    }
}

/// An origin answer that failed [`bad_framing`]: 502, counted, never stored; a fill it led
/// is passed, so its waiters ask on their own. Dropping the unread body closes the
/// connection (it is never reused).
fn refuse_framing(
    ctx: &Ctx,
    lease: &mut Lease,
    req: &RequestHead,
    why: &str,
    lead: Option<FillLead>,
    site: u16,
) -> io::Result<()> {
    Counters::inc(&ctx.counters().upstream_bad_framing);
    Counters::inc(&ctx.counters().upstream_errors);
    log::warn!("origin answer for {} refused: {why}", req.target);
    if let Some(mut l) = lead {
        l.pass();
    }
    respond::error_for(
        lease,
        site,
        502,
        "the origin answered with framing that cannot be relayed",
        req.method == "HEAD",
    )
}

/// End-to-end headers of an upstream answer (hop-by-hop and framing removed; a HEAD
/// answer keeps its Content-Length as metadata).
fn end_to_end(headers: &http::HeaderMap, head_only: bool) -> Headers {
    let connection: Vec<String> = headers
        .get_all("connection")
        .iter()
        .flat_map(|v| httpx::tokens(v.as_bytes()))
        .collect();
    headers
        .iter()
        .filter(|(name, _)| {
            !httpx::is_hop_by_hop(name.as_str(), &connection)
                && !framing_alias(name.as_str())
                && (name.as_str() != "content-length" || head_only)
        })
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect()
}

fn relay(
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
    let (parts, body) = response.into_parts();
    if let Some(why) = bad_framing(parts.status, parts.version, &parts.headers) {
        return refuse_framing(ctx, lease, req, why, lead, site);
    }
    let status = parts.status.as_u16();
    let response_time = SystemTime::now();
    let declared = declared_length(&parts.headers);
    let head_only = req.method == "HEAD";
    let no_body = head_only || status == 204 || status == 304 || (100..200).contains(&status);
    let headers = end_to_end(&parts.headers, head_only);
    if head_only && status == 200 && outcome != CacheOutcome::Pass {
        freshen_from_head(ctx, req, &headers, (request_time, response_time));
    }
    let framing = match (no_body, declared) {
        (true, _) => BodyLen::None,
        (false, Some(n)) => BodyLen::Exact(n),
        (false, None) => BodyLen::Unknown,
    };
    let limit = ctx.cfg.max_object_size.min(ctx.cfg.capacity);
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
        policy::storable(
            &req.method,
            &req.headers,
            status,
            &headers,
            response_time,
            ctx.cfg.heuristic_floor,
            &ctx.cfg.targeted_cache_control,
        )
        .filter(|_| declared.is_none_or(|n| n <= limit))
    };
    // What followers get and the store keeps (the first client's own answer keeps all).
    let shared = match storable.as_ref().map(|s| shared_copy(ctx, &headers, s)) {
        Some(Some(shared)) => shared,
        Some(None) => {
            storable = None;
            headers.clone()
        }
        None => headers.clone(),
    };
    if storable.is_none() {
        // Not shareable: followers fetch on their own, and we buffer nothing for them.
        if let Some(mut l) = lead.take() {
            l.pass();
        }
    } else if let Some(l) = &lead {
        l.head(status, downstream(ctx, shared.clone()), framing);
    }
    let initial_age = policy::initial_age(&headers, request_time, response_time);
    let l1_ttl = match &storable {
        // Our answer keeps fields the shared copy lacks (a Set-Cookie, qualified fields):
        // a worker's L1 must not give it to others.
        Some(s) if !s.strip.is_empty() || shared.len() != headers.len() => Duration::ZERO,
        Some(s) if !s.no_cache && status == 200 && policy::header(&headers, "vary").is_none() => {
            s.lifetime.saturating_sub(initial_age)
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
        l1_ttl_ms: l1_ttl.as_millis().min(3_600_000) as u32,
        upstream_status: status,
        site,
    };
    let mut own = respond::head(
        lease,
        status,
        framing,
        meta,
        downstream(ctx, headers.clone()),
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
                    Counters::inc(&ctx.counters().upstream_errors);
                    log::warn!(
                        "origin body for {} failed after {total} bytes: {e}",
                        req.target
                    );
                    return Err(e); // drops the lead: followers abort too
                }
            };
            let chunk = &buf[..n];
            total += n as u64;
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
                // Our client is gone: go on only for followers, at the pace of the fastest.
                let followers = match &lead {
                    Some(l) => l.pace(window, ctx.cfg.read_timeout),
                    None => 0,
                };
                if followers == 0 {
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
            headers,
            body: Arc::new(body),
            validity: Validity::http(&s),
            response_time,
            initial_age,
        };
        let site = &ctx.cfg.sites[site_of(ctx, req).expect("a routed request")];
        if status == 206 {
            store_piece(ctx, &cache_key(site, req), req, obj);
        } else {
            super::store(ctx, &cache_key(site, req), req, Arc::new(obj));
        }
    }
    own?;
    lease.finish()
}

/// The fields of an answer as sent downstream: without the targeted fields (RFC 9213)
/// when the operator asks (`cached.strip_targeted`).
pub fn downstream(ctx: &Ctx, mut headers: Headers) -> Headers {
    if ctx.cfg.strip_targeted {
        policy::strip_fields(&mut headers, &ctx.cfg.targeted_cache_control);
    }
    headers
}

enum Followed {
    Served,
    /// The leader's answer may not be shared: fetch alone.
    Pass,
}

/// Streams another request's fill as it arrives. The follower leaves the fill when this
/// returns, whatever the outcome.
fn follow(
    ctx: &Ctx,
    lease: &mut Lease,
    req: &RequestHead,
    fill: crate::cache::Follower,
    site: u16,
) -> io::Result<Followed> {
    let wait = ctx.cfg.read_timeout;
    let (status, headers, framing) = match fill.next(true, 0, 0, wait) {
        Progress::Head(s, h, b) => (s, h, b),
        Progress::Pass => return Ok(Followed::Pass),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the fill we followed failed",
            ))
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

/// The conditional fields that ask whether `obj` changed (none without validators).
fn validators(obj: &Stored) -> Vec<(&'static str, Vec<u8>)> {
    let mut v = Vec::new();
    if let Some(etag) = policy::header(&obj.headers, "etag") {
        v.push(("If-None-Match", etag.to_vec()));
    }
    if let Some(lm) = policy::header(&obj.headers, "last-modified") {
        v.push(("If-Modified-Since", lm.to_vec()));
    }
    v
}

/// A stale stored answer: ask the origin whether it changed (RFC 9111 §4.3), or, without
/// validators, fetch it anew. When the origin fails or answers 500/502/503/504, the stale
/// answer is served instead where `stale-if-error` or `grace` allows it (RFC 5861 §4).
fn revalidate(
    ctx: &Ctx,
    lease: &mut Lease,
    req: &RequestHead,
    origin: &SiteUp,
    primary: &str,
    obj: &Arc<Stored>,
    staleness: policy::Staleness,
) -> io::Result<()> {
    let extra = validators(obj);
    let conditional = !extra.is_empty();
    let answer = match upstream(Some(lease), req, origin, &extra) {
        Ok(a)
            if policy::is_origin_error(a.response.status().as_u16())
                && staleness.on_error(ctx.cfg.grace) =>
        {
            let status = a.response.status().as_u16();
            return serve_stale_on_error(
                ctx,
                lease,
                req,
                origin,
                obj,
                &format!("status {status}"),
                status,
            );
        }
        Ok(a) => a,
        Err(e) if staleness.on_error(ctx.cfg.grace) => {
            return serve_stale_on_error(ctx, lease, req, origin, obj, &e.to_string(), 0);
        }
        Err(e) => return upstream_error(ctx, lease, origin, e, req.method == "HEAD"),
    };
    let response = &answer.response;
    if let Some(why) = bad_framing(response.status(), response.version(), response.headers()) {
        return refuse_framing(ctx, lease, req, why, None, origin.index);
    }
    if !conditional || response.status().as_u16() != 304 {
        Counters::inc(&ctx.counters().l2_misses);
        return relay(ctx, lease, req, answer, None, CacheOutcome::Miss);
    }
    let request_time = answer.request_time;
    Counters::inc(&ctx.counters().l2_revalidated);
    let response_time = SystemTime::now();
    let mut fresh = end_to_end(answer.response.headers(), true);
    let times = (request_time, response_time);
    let headers = merged_304(obj, &fresh);
    let once = |headers| Stored {
        headers,
        body: Arc::clone(&obj.body),
        response_time,
        initial_age: Duration::ZERO,
        ..clone_meta(obj)
    };
    if policy::header(&fresh, "set-cookie").is_some() && ctx.cfg.set_cookie != SetCookie::Store {
        // The 304's cookie is this client's: it gets the refreshed answer with it once;
        // "strip" refreshes the stored answer without it, "pass" leaves it as it was.
        if ctx.cfg.set_cookie == SetCookie::Pass {
            Counters::inc(&ctx.counters().set_cookie_passed);
        } else {
            Counters::inc(&ctx.counters().set_cookie_stripped);
            fresh.retain(|(k, _)| !k.eq_ignore_ascii_case("set-cookie"));
            let stripped = merged_304(obj, &fresh);
            store_refreshed(ctx, primary, req, obj, stripped, &fresh, times);
        }
        let once = once(headers);
        return super::serve_stored(
            ctx,
            lease,
            req,
            &once,
            meta(origin, CacheOutcome::Revalidated, 304),
        );
    }
    match store_refreshed(ctx, primary, req, obj, headers.clone(), &fresh, times) {
        Some(refreshed) => super::serve_stored(
            ctx,
            lease,
            req,
            &refreshed,
            meta(origin, CacheOutcome::Revalidated, 304),
        ),
        None => {
            let once = once(headers);
            super::serve_stored(
                ctx,
                lease,
                req,
                &once,
                meta(origin, CacheOutcome::Revalidated, 304),
            )
        }
    }
}

/// The origin failed (`why`; `status` when it answered with an error status): the stale
/// stored answer goes out instead.
fn serve_stale_on_error(
    ctx: &Ctx,
    lease: &mut Lease,
    req: &RequestHead,
    site: &SiteUp,
    obj: &Stored,
    why: &str,
    status: u16,
) -> io::Result<()> {
    log::warn!(
        "site {}: origin failed for {} ({why}); serving the stale stored answer",
        site.site.name,
        req.target
    );
    Counters::inc(&ctx.counters().stale_if_error);
    Counters::inc(&ctx.counters().l2_stale);
    super::serve_stored(
        ctx,
        lease,
        req,
        obj,
        meta(site, CacheOutcome::Stale, status),
    )
}

/// Starts one background refresh of `obj` (stale-while-revalidate), unless one for `key`
/// already runs. False when none could start (the queue is full): the caller revalidates
/// in the foreground instead.
fn refresh_in_background(
    ctx: &Ctx,
    site: &SiteUp,
    req: &RequestHead,
    primary: &str,
    key: &str,
    obj: &Arc<Stored>,
) -> bool {
    let mut req = req.clone();
    // The refresh asks about our copy, not the client's: its own conditions and range go.
    req.headers.retain(|(k, _)| {
        ![
            "if-none-match",
            "if-modified-since",
            "if-match",
            "if-unmodified-since",
            "if-range",
            "range",
        ]
        .iter()
        .any(|c| k.eq_ignore_ascii_case(c))
    });
    ctx.refreshes.start(crate::refresh::Refresh {
        site: usize::from(site.index),
        req,
        primary: primary.to_string(),
        key: key.to_string(),
        obj: Arc::clone(obj),
    })
}

/// Runs one background refresh (on a `cd-refresh` thread): a 304 refreshes the stored
/// answer, a new storable answer replaces it, an origin error leaves it (it is served while
/// its windows last), anything else removes it so the next request asks the origin.
pub fn refresh(ctx: &Ctx, job: &crate::refresh::Refresh) {
    let Some(ups) = ctx.upstreams.as_ref() else {
        return;
    };
    let site = ups.site(job.site);
    let extra = validators(&job.obj);
    Counters::inc(&ctx.counters().background_refreshes);
    let failed = |why: &str| {
        Counters::inc(&ctx.counters().background_refresh_failures);
        log::warn!(
            "site {}: background refresh of {} failed: {why}",
            site.site.name,
            job.req.target
        );
    };
    let answer = match upstream(None, &job.req, site, &extra) {
        Ok(a) => a,
        Err(e) => return failed(&e.to_string()),
    };
    let status = answer.response.status().as_u16();
    let response = &answer.response;
    if let Some(why) = bad_framing(response.status(), response.version(), response.headers()) {
        return failed(why);
    }
    if policy::is_origin_error(status) {
        return failed(&format!("status {status}"));
    }
    let response_time = SystemTime::now();
    let times = (answer.request_time, response_time);
    if status == 304 && !extra.is_empty() {
        let mut fresh = end_to_end(answer.response.headers(), true);
        if policy::header(&fresh, "set-cookie").is_some() && ctx.cfg.set_cookie != SetCookie::Store
        {
            // Nobody receives this 304: its cookie is nobody's to keep.
            fresh.retain(|(k, _)| !k.eq_ignore_ascii_case("set-cookie"));
        }
        let headers = merged_304(&job.obj, &fresh);
        store_refreshed(
            ctx,
            &job.primary,
            &job.req,
            &job.obj,
            headers,
            &fresh,
            times,
        );
        return;
    }
    match read_storable(ctx, &job.req, answer, response_time) {
        Some(obj) => super::store(ctx, &job.primary, &job.req, Arc::new(obj)),
        None => {
            ctx.cache.remove_all(&job.primary);
            super::publish_store_gauges(ctx);
        }
    }
}

/// The copy of a storable answer's fields that collapsed followers get and the store keeps:
/// without the fields a qualified `private`/`no-cache` names, and with its `Set-Cookie` as
/// `cached.set_cookie` says (counted). `None`: the answer may not be shared after all
/// (`set_cookie = "pass"`).
fn shared_copy(ctx: &Ctx, headers: &Headers, s: &policy::Storable) -> Option<Headers> {
    let mut shared = headers.clone();
    policy::strip_fields(&mut shared, &s.strip);
    if policy::header(&shared, "set-cookie").is_some() {
        match ctx.cfg.set_cookie {
            SetCookie::Store => {}
            SetCookie::Pass => {
                Counters::inc(&ctx.counters().set_cookie_passed);
                return None;
            }
            SetCookie::Strip => {
                Counters::inc(&ctx.counters().set_cookie_stripped);
                shared.retain(|(k, _)| !k.eq_ignore_ascii_case("set-cookie"));
            }
        }
    }
    Some(shared)
}

/// An origin answer read whole into a stored object, if it may be stored (its Set-Cookie
/// as `cached.set_cookie` says, at most `max_object_size`, complete).
fn read_storable(
    ctx: &Ctx,
    req: &RequestHead,
    answer: Answer,
    response_time: SystemTime,
) -> Option<Stored> {
    let Answer {
        response,
        request_time,
        busy: _busy,
        ..
    } = answer;
    let (parts, body) = response.into_parts();
    let status = parts.status.as_u16();
    let headers = end_to_end(&parts.headers, false);
    let s = policy::storable(
        "GET",
        &req.headers,
        status,
        &headers,
        response_time,
        ctx.cfg.heuristic_floor,
        &ctx.cfg.targeted_cache_control,
    )?;
    // Nobody receives this answer now: only the shared copy is kept.
    let mut headers = shared_copy(ctx, &headers, &s)?;
    let limit = ctx.cfg.max_object_size.min(ctx.cfg.capacity);
    let declared = declared_length(&parts.headers);
    let mut bytes = Vec::new();
    body.into_reader()
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .ok()?;
    let len = bytes.len() as u64;
    if len > limit || declared.is_some_and(|d| d != len) {
        return None;
    }
    let initial_age = policy::initial_age(&headers, request_time, response_time);
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case("age"));
    Some(Stored {
        status,
        headers,
        body: Arc::new(bytes),
        validity: Validity::http(&s),
        response_time,
        initial_age,
    })
}

/// The stored answer's fields updated by a 304's (RFC 9111 §4.3.4), without `Age`.
fn merged_304(obj: &Stored, fresh: &Headers) -> Headers {
    let mut headers = obj.headers.clone();
    policy::update_from_304(&mut headers, fresh);
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case("age"));
    headers
}

/// Stores `obj` refreshed by a 304 with the merged `headers`, or removes the entry when the
/// merged answer may no longer be stored. `times`: when the request went, when the 304 came.
fn store_refreshed(
    ctx: &Ctx,
    primary: &str,
    req: &RequestHead,
    obj: &Stored,
    headers: Headers,
    fresh: &Headers,
    (request_time, response_time): (SystemTime, SystemTime),
) -> Option<Arc<Stored>> {
    let Some(s) = policy::storable(
        "GET",
        &req.headers,
        obj.status,
        &headers,
        response_time,
        ctx.cfg.heuristic_floor,
        &ctx.cfg.targeted_cache_control,
    ) else {
        ctx.cache.remove_all(primary);
        return None;
    };
    let refreshed = Arc::new(Stored {
        status: obj.status,
        initial_age: policy::initial_age(fresh, request_time, response_time),
        headers,
        body: Arc::clone(&obj.body),
        validity: Validity::http(&s),
        response_time,
    });
    super::store(ctx, primary, req, Arc::clone(&refreshed));
    Some(refreshed)
}

/// A range request answered from a stored, fresh piece (RFC 9111 §3.4) when the piece
/// holds the whole range; `false`: it does not (or a conditional asks for more), go on.
fn serve_piece(
    ctx: &Ctx,
    lease: &mut Lease,
    req: &RequestHead,
    key: &str,
    rules: &RequestRules,
) -> io::Result<bool> {
    let conditional = [
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
    ];
    if req.header("range").is_none() || conditional.iter().any(|h| req.header(h).is_some()) {
        return Ok(false);
    }
    let Some(obj) = ctx.cache.get(&crate::cache::partial_key(key)) else {
        return Ok(false);
    };
    let now = SystemTime::now();
    if obj.usable(now, rules) != Some(Use::Fresh) {
        return Ok(false);
    }
    let age = obj.age(now);
    let Some((first, last, len)) = policy::content_range(&obj.headers) else {
        return Ok(false);
    };
    let (a, b) = match policy::range(&req.headers, &obj.headers, len) {
        policy::RangeAnswer::Partial(a, b) if a >= first && b <= last => (a, b),
        _ => return Ok(false),
    };
    Counters::inc(&ctx.counters().l2_hits);
    let mut headers = downstream(ctx, obj.headers.clone());
    headers.retain(|(k, _)| {
        !k.eq_ignore_ascii_case("age") && !k.eq_ignore_ascii_case("content-range")
    });
    headers.push(("Age".into(), age.as_secs().to_string().into_bytes()));
    headers.push((
        "Content-Range".into(),
        format!("bytes {a}-{b}/{len}").into_bytes(),
    ));
    let body = &obj.body[(a - first) as usize..=(b - first) as usize];
    respond::full(lease, 206, CacheOutcome::Hit, headers, body, false)?;
    Ok(true)
}

/// Stores a `206` piece, combined with the stored piece of the same representation when
/// they touch or overlap (RFC 9111 §3.4); once the pieces hold the whole body, the result
/// is stored as the complete `200` (later full and range requests are hits).
fn store_piece(ctx: &Ctx, primary: &str, req: &RequestHead, mut obj: Stored) {
    let key = crate::cache::partial_key(&ctx.cache.full_key(primary, &req.headers));
    if let Some(old) = ctx.cache.get(&key) {
        let combined = policy::combine((&old.headers, &old.body), (&obj.headers, &obj.body));
        let limit = ctx.cfg.max_object_size.min(ctx.cfg.capacity);
        if let (Some((first, body)), Some((_, _, len))) = (
            combined.filter(|(_, b)| b.len() as u64 <= limit),
            policy::content_range(&obj.headers),
        ) {
            let last = first + body.len() as u64 - 1;
            obj.headers
                .retain(|(k, _)| !k.eq_ignore_ascii_case("content-range"));
            obj.headers.push((
                "Content-Range".into(),
                format!("bytes {first}-{last}/{len}").into_bytes(),
            ));
            obj.body = Arc::new(body);
        }
    }
    if let Some((0, last, len)) = policy::content_range(&obj.headers) {
        if last + 1 == len {
            obj.status = 200;
            obj.headers
                .retain(|(k, _)| !k.eq_ignore_ascii_case("content-range"));
        }
    }
    super::store(ctx, primary, req, Arc::new(obj));
}

/// A `200` to a `HEAD` we sent (RFC 9111 §4.3.5): the stored `GET` answer the request
/// would have been served updates its fields from it when the validators match (as a 304
/// would), and is dropped (here and in every L1) when they differ.
fn freshen_from_head(
    ctx: &Ctx,
    req: &RequestHead,
    head: &Headers,
    times: (SystemTime, SystemTime),
) {
    let site = &ctx.cfg.sites[site_of(ctx, req).expect("a routed request")];
    let primary = cache_key(site, req);
    let Some(obj) = ctx.cache.get(&ctx.cache.full_key(&primary, &req.headers)) else {
        return;
    };
    if policy::head_matches(&obj.headers, obj.body.len() as u64, head) {
        let merged = merged_304(&obj, head);
        store_refreshed(ctx, &primary, req, &obj, merged, head, times);
    } else {
        ctx.cache.remove_all(&primary);
        ctx.invalidated();
        super::publish_store_gauges(ctx);
    }
}

fn clone_meta(obj: &Stored) -> Stored {
    Stored {
        status: obj.status,
        headers: Vec::new(),
        body: Arc::default(),
        validity: obj.validity.clone(),
        response_time: obj.response_time,
        initial_age: obj.initial_age,
    }
}
