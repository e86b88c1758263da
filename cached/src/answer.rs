//! Answers from a stored object, written into the segment: `Age`, the client's
//! conditionals (`304`/`412`), `Range` (`206`/`416`) over stored bodies and pieces, HEAD,
//! and the remaining freshness a reusable hit shows. Whether the stored object may serve at
//! all was decided by `phase`; this module only writes the answer, and fetches nothing.
//! Bodies are copied from wherever they are kept (`stored::Body::write_range`): only the
//! bytes sent, straight from a pinned arena record into the segment.

use crate::ctx::Ctx;
use crate::phase::Piece;
use crate::respond;
use crate::stored::{Stored, Validity};
use common::cache_policy as policy;
use common::hit::{Ranged, Reuse};
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
    let cfg = ctx.cfg();
    if cfg.strip_targeted {
        policy::strip_fields(&mut headers, &cfg.targeted_cache_control);
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
    let cfg = ctx.cfg();
    let stored = obj.headers.to_vec();
    let headers = downstream(ctx, stored.clone());
    let (age, ttl) = match &obj.validity {
        Validity::Http {
            lifetime, no_cache, ..
        } => {
            let age = obj.age(now);
            // An answer that carries a Set-Cookie is not announced as reusable unless the
            // operator chose to share cookies (`set_cookie = "store"`); `published` grants
            // the same to the arena's hits.
            let shareable = !no_cache
                && obj.status == 200
                && common::http::header(&stored, "vary").is_none()
                && (cfg.set_cookie == common::config::SetCookie::Store
                    || common::http::header(&stored, "set-cookie").is_none());
            let ttl = if shareable {
                common::hit::remaining(*lifetime, age)
            } else {
                Duration::ZERO
            };
            (Some(age), ttl)
        }
        Validity::File { .. } => (None, cfg.revalidate),
    };
    let (headers, conditional) =
        match common::hit::reuse(obj.status, &stored, headers, age, &req.headers) {
            Reuse::PreconditionFailed => {
                return respond::error(lease, 412, "precondition failed", head_only)
            }
            Reuse::NotModified(headers) => {
                return respond::full_meta(lease, 304, meta, headers, b"", head_only)
            }
            Reuse::Whole {
                fields,
                conditional,
            } => (fields, conditional),
        };
    let ttl_ms = if conditional || meta.outcome == CacheOutcome::Stale {
        0
    } else {
        ttl.as_millis() as u32
    };
    // `reuse` announced `Accept-Ranges: bytes` for a `200`: ranges of stored objects are
    // ours, answered by the rule the workers apply to the arena's.
    let len = obj.body.len();
    let headers = match common::hit::ranged(obj.status, &stored, headers, len, &req.headers) {
        Ranged::Whole(fields) => fields,
        Ranged::Part {
            fields,
            first,
            last,
        } => {
            let n = last - first + 1;
            return respond::full_with(lease, 206, meta, fields, n, head_only, |l| {
                obj.body.write_range(l, first, n)
            });
        }
        Ranged::Unsatisfiable(fields) => {
            return respond::full_meta(lease, 416, meta, fields, b"", head_only)
        }
    };
    // Copied from wherever the body is kept (a pinned arena record: `Ctx::stored`).
    respond::full_with(
        lease,
        obj.status,
        respond::Meta { ttl_ms, ..meta },
        headers,
        len,
        head_only,
        |l| obj.body.write_range(l, 0, len),
    )
}

/// A range answered from a stored piece (`phase` found it fresh and holding the range).
pub fn piece(ctx: &Ctx, lease: &mut Lease, p: &Piece) -> io::Result<()> {
    let obj = &p.obj;
    let age = obj.age(SystemTime::now());
    let mut headers = downstream(ctx, obj.headers.to_vec());
    headers.retain(|(k, _)| {
        !k.eq_ignore_ascii_case("age") && !k.eq_ignore_ascii_case("content-range")
    });
    headers.push(("Age".into(), age.as_secs().to_string().into_bytes()));
    headers.push((
        "Content-Range".into(),
        format!("bytes {}-{}/{}", p.from, p.to, p.len).into_bytes(),
    ));
    let n = p.to - p.from + 1;
    respond::full_with(
        lease,
        206,
        respond::Meta::of(CacheOutcome::Hit),
        headers,
        n,
        false,
        |l| obj.body.write_range(l, p.offset, n),
    )
}
