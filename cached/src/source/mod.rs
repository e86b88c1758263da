//! Serving one request from its segment: read and validate the request head, then answer
//! from the cache, the document root ([`disk`]) or the origin ([`origin`]).

pub mod disk;
pub mod origin;

use crate::lru::{Stored, Validity};
use crate::policy::{self, RangeAnswer};
use crate::receiver::Ctx;
use crate::respond;
use common::http::CacheOutcome;
use common::pool::Lease;
use common::protocol::{read_head, RequestHead};
use common::stats::Counters;
use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

/// Longest L1 lifetime a worker is granted.
const L1_MAX_TTL: Duration = Duration::from_secs(3600);

fn request_head(ctx: &Ctx, lease: &mut Lease) -> io::Result<RequestHead> {
    let raw = read_head(lease)?;
    RequestHead::decode(&raw).map_err(|e| {
        Counters::inc(&ctx.counters().messages_rejected);
        log::warn!("rejected a request head: {e}");
        io::Error::new(io::ErrorKind::InvalidData, e)
    })
}

pub fn serve(ctx: &Ctx, lease: &mut Lease) -> io::Result<()> {
    let req = request_head(ctx, lease)?;
    common::supervise::test_panic(&req.target, "cached");
    match &ctx.upstreams {
        Some(_) => origin::serve(ctx, lease, &req),
        None => disk::serve(ctx, lease, &req),
    }
}

/// `PURGE`: drops every stored variant of the request target, here and in every L1, and with
/// `cached.purge_forward` at the origin too (200 when either had it).
pub fn purge(ctx: &Ctx, lease: &mut Lease) -> io::Result<()> {
    let req = request_head(ctx, lease)?;
    respond::drain(lease)?;
    let key = match &ctx.upstreams {
        Some(_) => origin::site_of(ctx, &req).map(|i| origin::cache_key(&ctx.cfg.sites[i], &req)),
        None => disk::cache_key(ctx, &req.target),
    };
    // The origin first: a miss here between the two would refill from its old copy.
    let upstream_had = ctx.cfg.purge_forward && origin::forward_purge(ctx, &req) == Some(true);
    let removed = key.is_some_and(|k| ctx.cache.remove_all(&k)) | upstream_had;
    ctx.invalidated();
    publish_store_gauges(ctx);
    if removed {
        respond::full(
            lease,
            200,
            CacheOutcome::Internal,
            vec![("Content-Type".into(), b"text/plain; charset=utf-8".to_vec())],
            b"purged\n",
            false,
        )
    } else {
        respond::error(lease, 404, "not in cache", false)
    }
}

/// Stores `obj` under `primary` (its `Vary` picks the variant), counting evictions.
pub fn store(ctx: &Ctx, primary: &str, req: &RequestHead, obj: std::sync::Arc<Stored>) {
    let evicted = ctx.cache.insert(primary, &req.headers, obj);
    Counters::add(&ctx.counters().evictions, evicted);
    publish_store_gauges(ctx);
}

pub fn publish_store_gauges(ctx: &Ctx) {
    let (n, bytes) = ctx.cache.usage();
    // cached has a single stats slot, so its gauges are plain stores.
    ctx.counters().stored_objects.store(n, Ordering::Relaxed);
    ctx.counters().stored_bytes.store(bytes, Ordering::Relaxed);
}

/// Answers a request from a stored object: `Age`, client conditionals (304/412), `Range`
/// (206/416), HEAD; grants the worker an L1 lifetime when the answer may be reused as is.
pub fn serve_stored(
    ctx: &Ctx,
    lease: &mut Lease,
    req: &RequestHead,
    obj: &Stored,
    meta: respond::Meta,
) -> io::Result<()> {
    let head_only = req.method == "HEAD";
    let now = SystemTime::now();
    let mut headers = origin::downstream(ctx, obj.headers.clone());
    let l1_ttl = match &obj.validity {
        Validity::Http {
            lifetime, no_cache, ..
        } => {
            let age = obj.age(now);
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case("age"));
            headers.push(("Age".into(), age.as_secs().to_string().into_bytes()));
            // An answer that carries a Set-Cookie is never kept in a worker's L1 unless the
            // operator chose to share cookies (`set_cookie = "store"`).
            let shareable = !no_cache
                && obj.status == 200
                && policy::header(&obj.headers, "vary").is_none()
                && (ctx.cfg.set_cookie == common::config::SetCookie::Store
                    || policy::header(&obj.headers, "set-cookie").is_none());
            if shareable {
                lifetime.saturating_sub(age)
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
    let l1_ms = if conditional || meta.outcome == CacheOutcome::Stale {
        0
    } else {
        l1_ttl.min(L1_MAX_TTL).as_millis() as u32
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
        respond::Meta {
            l1_ttl_ms: l1_ms,
            ..meta
        },
        headers,
        &obj.body,
        head_only,
    )
}
