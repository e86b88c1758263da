//! One request from its segment, top to bottom: read and validate the request head, route
//! it (the site its `Host` names, or the file its target names), decide its cache phase
//! (`phase::decide`), and carry the phase out: answer from the stored object (`answer`),
//! fetch and relay (`fill`), revalidate (`revalidate`), or stream a file. Also `PURGE`.
//! Called by the receiver's worker threads; it calls nothing above it.

use crate::answer::{self, meta};
use crate::ctx::Ctx;
use crate::error::SourceError;
use crate::fill::{self, Followed};
use crate::phase::{self, CachePhase, Check, Mode};
use crate::respond;
use crate::revalidate;
use crate::source::disk::{self, Resolved};
use crate::source::origin;
use crate::stored::{Body, Stored};
use crate::upstream::Upstreams;
use common::cache_policy as policy;
use common::http::CacheOutcome;
use common::pool::Lease;
use common::protocol::{read_head, BodyLen, RequestHead};
use common::stats::Counters;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
        Some(ups) => from_origin(ctx, ups, lease, &req),
        None => from_disk(ctx, lease, &req),
    }
}

/// `PURGE`: drops every stored variant of the request target, here and in the arena, and with
/// `cached.purge_forward` at the origin too (200 when either had it).
pub fn purge(ctx: &Ctx, lease: &mut Lease) -> io::Result<()> {
    let req = request_head(ctx, lease)?;
    respond::drain(lease)?;
    let key = match &ctx.upstreams {
        Some(_) => origin::site_of(ctx, &req).map(|i| origin::cache_key(&ctx.cfg().sites[i], &req)),
        None => disk::cache_key(ctx, &req.target),
    };
    // The origin first: a miss here between the two would refill from its old copy.
    let upstream_had = ctx.cfg().purge_forward && forward_purge(ctx, &req);
    let removed = key.is_some_and(|k| ctx.remove(&k)) | upstream_had;
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

/// Sends the PURGE on to the request's site (counted); whether the origin had the object. A
/// failure is counted and logged, and the purge here goes on.
fn forward_purge(ctx: &Ctx, req: &RequestHead) -> bool {
    let Some(site) = (ctx.upstreams.as_ref())
        .zip(origin::site_of(ctx, req))
        .map(|(ups, i)| ups.site(i))
    else {
        return false;
    };
    Counters::inc(&ctx.counters().purges_forwarded);
    match origin::forward_purge(req, site) {
        Ok(had) => had,
        Err(e) => {
            Counters::inc(&ctx.counters().purge_forward_failures);
            log::warn!(
                "site {}: PURGE {} not forwarded: {e}",
                site.site.name,
                req.target
            );
            false
        }
    }
}

/// Origin mode: each request belongs to the site its `Host` names (`421` when none does).
/// GET and HEAD go through the cache (RFC 9111); other methods, and requests with a body,
/// pass through. A truncated body is never stored and aborts every transfer that carried it.
fn from_origin(ctx: &Ctx, ups: &Upstreams, lease: &mut Lease, req: &RequestHead) -> io::Result<()> {
    let head_only = req.method == "HEAD";
    let Some(index) = origin::site_of(ctx, req) else {
        Counters::inc(&ctx.counters().misdirected_requests);
        respond::drain(lease)?;
        return respond::error(
            lease,
            421,
            "no site of this proxy serves this host",
            head_only,
        );
    };
    let site = ups.site(index);
    let primary = origin::cache_key(&site.site, req);
    let phase = phase::decide(
        ctx,
        req,
        &primary,
        &Check::Origin { site: index },
        Mode::Client,
    );
    if !matches!(phase, CachePhase::Pass) {
        // A passed request's body, if any, is forwarded instead.
        respond::drain(lease)?;
    }
    let c = ctx.counters();
    let stale = |obj: &Stored, lease: &mut Lease| {
        Counters::inc(&c.l2_stale);
        answer::stored(
            ctx,
            lease,
            req,
            obj,
            meta(site.index, CacheOutcome::Stale, 0),
        )
    };
    match phase {
        CachePhase::Pass => fill::pass(ctx, lease, req, site),
        CachePhase::Hit(obj) => {
            Counters::inc(&c.l2_hits);
            answer::stored(
                ctx,
                lease,
                req,
                &obj,
                meta(site.index, CacheOutcome::Hit, 0),
            )
        }
        CachePhase::Piece(piece) => {
            Counters::inc(&c.l2_hits);
            answer::piece(ctx, lease, &piece)
        }
        CachePhase::StaleAllowed(obj) => stale(&obj, lease),
        CachePhase::StaleWhileRevalidate(obj) => {
            Counters::inc(&c.stale_while_revalidate);
            stale(&obj, lease)
        }
        CachePhase::Revalidate {
            obj,
            stale_if_error,
        } => revalidate::foreground(ctx, lease, req, site, &primary, &obj, stale_if_error),
        CachePhase::Uncached(why) => respond::error(lease, 504, why, head_only),
        CachePhase::Miss => {
            Counters::inc(&c.l2_misses);
            fill::fetch(ctx, lease, req, site, None)
        }
        CachePhase::Lead(lead) => {
            Counters::inc(&c.l2_misses);
            fill::fetch(ctx, lease, req, site, Some(lead))
        }
        CachePhase::Follow(follower) => {
            Counters::inc(&c.l2_misses);
            // `follow` takes the follower and leaves the fill before a Pass fetches alone.
            match fill::follow(ctx, lease, req, follower, site.index, &primary)? {
                Followed::Served => Ok(()),
                Followed::Pass => fill::fetch(ctx, lease, req, site, None),
            }
        }
    }
}

/// Disk mode: GET and HEAD of files under the document root, kept in the cache up to
/// `max_object_size` and checked against size, mtime and inode on each hit (and published in
/// the arena with that identity, which the workers check in turn: `published_file`); larger
/// files stream from disk.
fn from_disk(ctx: &Ctx, lease: &mut Lease, req: &RequestHead) -> io::Result<()> {
    respond::drain(lease)?;
    let head_only = req.method == "HEAD";
    if req.method != "GET" && !head_only {
        let body = b"405 Method Not Allowed: the document root serves GET and HEAD\n";
        let headers = vec![
            ("Allow".to_string(), b"GET, HEAD".to_vec()),
            (
                "Content-Type".to_string(),
                b"text/plain; charset=utf-8".to_vec(),
            ),
        ];
        return respond::full(lease, 405, CacheOutcome::Error, headers, body, false);
    }
    let failed = |lease: &mut Lease, e: SourceError| {
        respond::failure(lease, ctx.counters(), respond::NO_SITE, &e, head_only)
    };
    // Taken first: a PURGE from here on keeps this answer out of the arena.
    let ticket = ctx.arena_ticket();
    let (path, meta) = match disk::resolve(ctx, &req.target) {
        Ok(Resolved::File(p, m)) => (p, m),
        Ok(Resolved::Redirect(location)) => {
            let headers = vec![
                ("Location".to_string(), location.into_bytes()),
                (
                    "Content-Type".to_string(),
                    b"text/plain; charset=utf-8".to_vec(),
                ),
            ];
            return respond::full(
                lease,
                301,
                CacheOutcome::Pass,
                headers,
                b"moved to the directory\n",
                head_only,
            );
        }
        Err(e) => return failed(lease, e),
    };
    let key = disk::key_of(&path);
    let len = meta.len();
    let check = Check::File {
        validity: disk::validity(&meta),
        len,
    };
    let phase = phase::decide(ctx, req, &key, &check, Mode::Client);
    let c = ctx.counters();
    // The workers serve the file from the arena from now on, if the target names it plainly
    // (a hit here: it is not in the arena, or not for this request's key).
    let publish = |obj: &Stored| {
        if let Some(p) = disk::publishable(ctx, &req.target, &path) {
            ctx.publish_file(ticket, &key, p, req, obj);
        }
    };
    if let CachePhase::Hit(obj) = &phase {
        Counters::inc(&c.l2_hits);
        answer::stored(ctx, lease, req, obj, respond::Meta::of(CacheOutcome::Hit))?;
        publish(obj);
        return Ok(());
    }
    Counters::inc(&c.l2_misses);
    Counters::inc(&c.disk_reads);
    let headers = disk::entity_headers(&path, &meta);
    if let CachePhase::Miss = phase {
        let body = match disk::read(&path, len) {
            Ok(b) => b,
            Err(e) => return failed(lease, e),
        };
        let Check::File { validity, .. } = check else {
            unreachable!("a file's check")
        };
        let obj = Arc::new(Stored {
            status: 200,
            headers: headers.into(),
            body: Body::owned(body),
            validity,
            response_time: SystemTime::now(),
            initial_age: Duration::ZERO,
        });
        answer::stored(ctx, lease, req, &obj, respond::Meta::of(CacheOutcome::Miss))?;
        ctx.store(&key, req, Arc::clone(&obj));
        publish(&obj);
        return Ok(());
    }
    // Too large to store (`Pass`): answered from the file itself.
    let mut file = match disk::open(&path) {
        Ok(f) => f,
        Err(e) => return failed(lease, e),
    };
    if policy::not_modified(&req.headers, &headers) {
        let keep = headers
            .into_iter()
            .filter(|(k, _)| k != "Content-Type")
            .collect();
        return respond::full(lease, 304, CacheOutcome::Pass, keep, b"", head_only);
    }
    if head_only {
        return respond::full_head_len(lease, CacheOutcome::Pass, headers, len);
    }
    let meta = respond::Meta::of(CacheOutcome::Pass);
    respond::head(lease, 200, BodyLen::Exact(len), meta, headers)?;
    disk::copy(lease, &mut file, len)
}
