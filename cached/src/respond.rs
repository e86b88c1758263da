//! Writing answers into a segment: the response head, then the body, then LAST; and the
//! one writer of error answers (a source's failures through [`SourceError::answer`]).

use crate::error::SourceError;
use common::http::CacheOutcome;
use common::pool::Lease;
use common::protocol::{BodyLen, FollowArena, ResponseHead};
use common::stats::Counters;
pub use common::stats::NO_SITE;
use std::io::{self, Read, Write};

use common::http::Headers;

/// What the worker is told besides status and headers.
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    pub outcome: CacheOutcome,
    /// The remaining freshness its `Cache-Status` shows (0: none; see `ResponseHead`).
    pub ttl_ms: u32,
    /// The origin's status when it took part in the answer (0: it did not).
    pub upstream_status: u16,
    /// Row of the site that answered in the stats region's site table ([`NO_SITE`]: none);
    /// the worker logs that site's name.
    pub site: u16,
}

impl Meta {
    pub fn of(outcome: CacheOutcome) -> Meta {
        Meta {
            outcome,
            ttl_ms: 0,
            upstream_status: 0,
            site: NO_SITE,
        }
    }
}

pub fn head(
    lease: &mut Lease,
    status: u16,
    body: BodyLen,
    meta: Meta,
    headers: Headers,
) -> io::Result<()> {
    let h = ResponseHead {
        status,
        body,
        outcome: meta.outcome,
        ttl_ms: meta.ttl_ms,
        upstream_status: meta.upstream_status,
        site: meta.site,
        follow: None,
        headers,
    };
    lease.write_all(&h.encode())
}

/// An interim answer (`1xx`) ahead of the final one: a head of its own, with no body,
/// posted at once so the worker sends it on while the origin is still working.
pub fn interim(lease: &mut Lease, status: u16, headers: &Headers) -> io::Result<()> {
    head(
        lease,
        status,
        BodyLen::None,
        Meta::of(CacheOutcome::Miss),
        headers.clone(),
    )?;
    lease.flush()
}

/// Tells a collapsed waiter's worker to stream the fill from its arena record instead (no
/// body follows; the worker frees the segment at once).
pub fn follow_arena(lease: &mut Lease, meta: Meta, follow: FollowArena) -> io::Result<()> {
    let h = ResponseHead {
        status: 200,
        body: BodyLen::None,
        outcome: meta.outcome,
        ttl_ms: 0,
        upstream_status: meta.upstream_status,
        site: meta.site,
        follow: Some(follow),
        headers: Vec::new(),
    };
    lease.write_all(&h.encode())?;
    lease.finish()
}

/// A complete answer with an in-memory body (`head_only`: HEAD, the length is announced
/// in a `Content-Length` header instead).
pub fn full(
    lease: &mut Lease,
    status: u16,
    outcome: CacheOutcome,
    headers: Headers,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    full_meta(lease, status, Meta::of(outcome), headers, body, head_only)
}

pub fn full_meta(
    lease: &mut Lease,
    status: u16,
    meta: Meta,
    headers: Headers,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let len = body.len() as u64;
    full_with(lease, status, meta, headers, len, head_only, |l| {
        l.write_all(body)
    })
}

/// A complete answer of `len` body bytes that `body` writes (a stored body wherever it is
/// kept: `stored::Body::write_range`).
pub fn full_with(
    lease: &mut Lease,
    status: u16,
    meta: Meta,
    mut headers: Headers,
    len: u64,
    head_only: bool,
    body: impl FnOnce(&mut Lease) -> io::Result<()>,
) -> io::Result<()> {
    let no_body = common::http::bodiless(status);
    let framing = if head_only {
        if !no_body {
            headers.push(("Content-Length".into(), len.to_string().into_bytes()));
        }
        BodyLen::None
    } else if no_body {
        BodyLen::None
    } else {
        BodyLen::Exact(len)
    };
    head(lease, status, framing, meta, headers)?;
    if framing != BodyLen::None {
        body(lease)?;
    }
    lease.finish()
}

/// An error produced by cached itself, with a short plain-text body.
pub fn error(lease: &mut Lease, status: u16, msg: &str, head_only: bool) -> io::Result<()> {
    error_for(lease, NO_SITE, status, msg, head_only)
}

/// The same on behalf of site row `site` (the access log names it; e.g. a 502 or 504 when
/// the site's origin servers fail).
pub fn error_for(
    lease: &mut Lease,
    site: u16,
    status: u16,
    msg: &str,
    head_only: bool,
) -> io::Result<()> {
    let body = format!("{status} {}: {msg}\n", common::http::reason(status));
    let headers = vec![(
        "Content-Type".to_string(),
        b"text/plain; charset=utf-8".to_vec(),
    )];
    let meta = Meta {
        site,
        ..Meta::of(CacheOutcome::Error)
    };
    full_meta(lease, status, meta, headers, body.as_bytes(), head_only)
}

/// A source's failure on behalf of site row `site`: [`SourceError::answer`] counts it and
/// gives the status and the text.
pub fn failure(
    lease: &mut Lease,
    counters: &Counters,
    site: u16,
    e: &SourceError,
    head_only: bool,
) -> io::Result<()> {
    let (status, text) = e.answer(counters);
    error_for(lease, site, status, text, head_only)
}

/// Reads and discards the rest of the request stream (the protocol requires draining it
/// before answering). Bounded by the lease's timeouts.
pub fn drain(lease: &mut Lease) -> io::Result<u64> {
    let mut buf = [0u8; 8192];
    let mut n = 0u64;
    loop {
        match lease.read(&mut buf)? {
            0 => return Ok(n),
            k => n += k as u64,
        }
    }
}

/// A HEAD answer for a body we do not hold in memory.
pub fn full_head_len(
    lease: &mut Lease,
    outcome: CacheOutcome,
    mut headers: Headers,
    len: u64,
) -> io::Result<()> {
    headers.push(("Content-Length".into(), len.to_string().into_bytes()));
    head(lease, 200, BodyLen::None, Meta::of(outcome), headers)?;
    lease.finish()
}
