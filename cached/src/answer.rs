//! Answers from a stored object, written into the segment: `Age`, the client's
//! conditionals (`304`/`412`), `Range` (`206`/`416`) over stored bodies and pieces, HEAD,
//! and the remaining freshness a reusable hit shows. Whether the stored object may serve at all was
//! decided by `phase`; this module only writes the answer, and fetches nothing.

use crate::ctx::Ctx;
use crate::phase::Piece;
use crate::respond;
use crate::stored::{Stored, Validity};
use common::cache_policy::{self as policy, RangeAnswer};
use common::http::CacheOutcome;
use common::http::Headers;
use common::pool::Lease;
use common::protocol::RequestHead;
use std::io;
use std::time::{Duration, SystemTime};

/// What the worker is told of an answer for `site`.
pub fn meta(site: u16, outcome: CacheOutcome, upstream_status: u16) -> respond::Meta {
    respond::Meta {
        upstream_status,
        site,
        ..respond::Meta::of(outcome)
    }
}

/// The fields of an answer as sent downstream: without the targeted fields (RFC 9213)
/// when the operator asks (`cached.strip_targeted`).
pub fn downstream(ctx: &Ctx, mut headers: Headers) -> Headers {
    if ctx.cfg.strip_targeted {
        policy::strip_fields(&mut headers, &ctx.cfg.targeted_cache_control);
    }
    headers
}

/// Answers a request from a stored object: `Age`, client conditionals (304/412), `Range`
/// (206/416), HEAD; shows the remaining freshness when the answer may be reused as is.
pub fn stored(
    ctx: &Ctx,
    lease: &mut Lease,
    req: &RequestHead,
    obj: &Stored,
    meta: respond::Meta,
) -> io::Result<()> {
    let head_only = req.method == "HEAD";
    let now = SystemTime::now();
    let mut headers = downstream(ctx, obj.headers.clone());
    let ttl = match &obj.validity {
        Validity::Http {
            lifetime, no_cache, ..
        } => {
            let age = obj.age(now);
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case("age"));
            headers.push(("Age".into(), age.as_secs().to_string().into_bytes()));
            // An answer that carries a Set-Cookie is not announced as reusable unless the
            // operator chose to share cookies (`set_cookie = "store"`); `published` grants
            // the same to the arena's hits.
            let shareable = !no_cache
                && obj.status == 200
                && common::http::header(&obj.headers, "vary").is_none()
                && (ctx.cfg.set_cookie == common::config::SetCookie::Store
                    || common::http::header(&obj.headers, "set-cookie").is_none());
            if shareable {
                common::hit::remaining(*lifetime, age)
            } else {
                Duration::ZERO
            }
        }
        Validity::File { .. } => ctx.cfg.revalidate,
    };
    if policy::precondition_failed(&req.headers, &obj.headers) {
        return respond::error(lease, 412, "precondition failed", head_only);
    }
    if policy::not_modified(&req.headers, &obj.headers) {
        headers.retain(|(k, _)| !k.to_ascii_lowercase().starts_with("content-"));
        return respond::full_meta(lease, 304, meta, headers, b"", head_only);
    }
    let conditional = common::http::CONDITIONAL
        .iter()
        .any(|h| req.header(h).is_some());
    let ttl_ms = if conditional || meta.outcome == CacheOutcome::Stale {
        0
    } else {
        ttl.as_millis() as u32
    };
    if obj.status == 200 {
        // We answer ranges of stored objects ourselves, whatever the origin said.
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case("accept-ranges"));
        headers.push(("Accept-Ranges".into(), b"bytes".to_vec()));
        let len = obj.body.len() as u64;
        match policy::range(&req.headers, &obj.headers, len) {
            RangeAnswer::Full => {}
            RangeAnswer::Partial(first, last) => {
                headers.push((
                    "Content-Range".into(),
                    format!("bytes {first}-{last}/{len}").into_bytes(),
                ));
                return respond::full_meta(
                    lease,
                    206,
                    meta,
                    headers,
                    &obj.body[first as usize..=last as usize],
                    head_only,
                );
            }
            RangeAnswer::Unsatisfiable => {
                let headers = vec![(
                    "Content-Range".to_string(),
                    format!("bytes */{len}").into_bytes(),
                )];
                return respond::full_meta(lease, 416, meta, headers, b"", head_only);
            }
        }
    }
    respond::full_meta(
        lease,
        obj.status,
        respond::Meta { ttl_ms, ..meta },
        headers,
        &obj.body,
        head_only,
    )
}

/// A range answered from a stored piece (`phase` found it fresh and holding the range).
pub fn piece(ctx: &Ctx, lease: &mut Lease, p: &Piece) -> io::Result<()> {
    let obj = &p.obj;
    let age = obj.age(SystemTime::now());
    let mut headers = downstream(ctx, obj.headers.clone());
    headers.retain(|(k, _)| {
        !k.eq_ignore_ascii_case("age") && !k.eq_ignore_ascii_case("content-range")
    });
    headers.push(("Age".into(), age.as_secs().to_string().into_bytes()));
    headers.push((
        "Content-Range".into(),
        format!("bytes {}-{}/{}", p.from, p.to, p.len).into_bytes(),
    ));
    let body = &obj.body[p.offset as usize..=(p.offset + p.to - p.from) as usize];
    respond::full(lease, 206, CacheOutcome::Hit, headers, body, false)
}
