//! A stale stored answer and the origin: revalidation for a client (a `304` refreshes the
//! stored answer, anything else is relayed as a miss, and a failing origin gets the stale
//! answer served instead where `phase` allowed it: `stale-if-error`, `grace`), and the
//! background refreshes of stale-while-revalidate, run on the `cd-refresh` threads after
//! deciding their phase again with `phase::decide` (an answer refreshed or replaced
//! meanwhile needs no refresh).

use crate::answer::{self, meta};
use crate::ctx::Ctx;
use crate::fill;
use crate::phase::{self, CachePhase, Check, Mode};
use crate::refresh::Refresh;
use crate::source::origin::{self, end_to_end};
use crate::store::{clone_meta, merged_304, read_storable, store_refreshed};
use crate::stored::Stored;
use crate::upstream::SiteUp;
use common::cache_policy as policy;
use common::config::SetCookie;
use common::http::{CacheOutcome, Headers};
use common::pool::Lease;
use common::protocol::RequestHead;
use common::stats::Counters;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A stale stored answer: ask the origin whether it changed (RFC 9111 §4.3), or, without
/// validators, fetch it anew. When the origin fails or answers 500/502/503/504, the stale
/// answer is served instead when `stale_if_error` (`phase` found that `stale-if-error` or
/// `grace` allows it, RFC 5861 §4).
pub fn foreground(
    ctx: &Ctx,
    lease: &mut Lease,
    req: &RequestHead,
    origin: &SiteUp,
    primary: &str,
    obj: &Arc<Stored>,
    stale_if_error: bool,
) -> io::Result<()> {
    let extra = origin::validators(obj);
    let conditional = !extra.is_empty();
    let answer = match origin::send(Some(lease), req, origin, &extra) {
        Ok(a) if policy::is_origin_error(a.response.status().as_u16()) && stale_if_error => {
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
        Err(e) if stale_if_error && e.origin_failed() => {
            return serve_stale_on_error(ctx, lease, req, origin, obj, &e.to_string(), 0);
        }
        Err(e) => return fill::fail(ctx, lease, req, origin, &e),
    };
    if !conditional || answer.response.status().as_u16() != 304 {
        Counters::inc(&ctx.counters().l2_misses);
        return fill::relay(ctx, lease, req, answer, None, CacheOutcome::Miss);
    }
    let request_time = answer.request_time;
    Counters::inc(&ctx.counters().l2_revalidated);
    let response_time = SystemTime::now();
    let mut fresh = end_to_end(answer.response.headers(), true);
    let times = (request_time, response_time);
    let headers = merged_304(obj, &fresh);
    let once = |headers: Headers| Stored {
        headers: headers.into(),
        body: obj.body.clone(),
        response_time,
        initial_age: Duration::ZERO,
        ..clone_meta(obj)
    };
    if common::http::header(&fresh, "set-cookie").is_some()
        && ctx.cfg().set_cookie != SetCookie::Store
    {
        // The 304's cookie is this client's: it gets the refreshed answer with it once;
        // "strip" refreshes the stored answer without it, "pass" leaves it as it was.
        if ctx.cfg().set_cookie == SetCookie::Pass {
            Counters::inc(&ctx.counters().set_cookie_passed);
        } else {
            Counters::inc(&ctx.counters().set_cookie_stripped);
            fresh.retain(|(k, _)| !k.eq_ignore_ascii_case("set-cookie"));
            let stripped = merged_304(obj, &fresh);
            store_refreshed(ctx, primary, req, obj, stripped, &fresh, times);
        }
        let once = once(headers);
        return answer::stored(
            ctx,
            lease,
            req,
            &once,
            meta(origin.index, CacheOutcome::Revalidated, 304),
        );
    }
    match store_refreshed(ctx, primary, req, obj, headers.clone(), &fresh, times) {
        Some(refreshed) => answer::stored(
            ctx,
            lease,
            req,
            &refreshed,
            meta(origin.index, CacheOutcome::Revalidated, 304),
        ),
        None => {
            let once = once(headers);
            answer::stored(
                ctx,
                lease,
                req,
                &once,
                meta(origin.index, CacheOutcome::Revalidated, 304),
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
    answer::stored(
        ctx,
        lease,
        req,
        obj,
        meta(site.index, CacheOutcome::Stale, status),
    )
}

/// Runs one background refresh (on a `cd-refresh` thread), if its phase is still to
/// revalidate: a 304 refreshes the stored answer, a new storable answer replaces it, an
/// origin error leaves it (it is served while its windows last), anything else removes it
/// so the next request asks the origin.
pub fn in_background(ctx: &Ctx, job: &Refresh) {
    let Some(ups) = ctx.upstreams.as_ref() else {
        return;
    };
    let site = ups.site(job.site);
    let check = Check::Origin { site: job.site };
    let obj = match phase::decide(ctx, &job.req, &job.primary, &check, Mode::Refresh) {
        CachePhase::Revalidate { obj, .. } => obj,
        // Refreshed or replaced since it was queued, or gone: nothing to refresh.
        _ => return,
    };
    let extra = origin::validators(&obj);
    Counters::inc(&ctx.counters().background_refreshes);
    let failed = |why: &str| {
        Counters::inc(&ctx.counters().background_refresh_failures);
        log::warn!(
            "site {}: background refresh of {} failed: {why}",
            site.site.name,
            job.req.target
        );
    };
    let answer = match origin::send(None, &job.req, site, &extra) {
        Ok(a) => a,
        Err(e) => return failed(&e.to_string()),
    };
    let status = answer.response.status().as_u16();
    if policy::is_origin_error(status) {
        return failed(&format!("status {status}"));
    }
    let response_time = SystemTime::now();
    let times = (answer.request_time, response_time);
    if status == 304 && !extra.is_empty() {
        let mut fresh = end_to_end(answer.response.headers(), true);
        if common::http::header(&fresh, "set-cookie").is_some()
            && ctx.cfg().set_cookie != SetCookie::Store
        {
            // Nobody receives this 304: its cookie is nobody's to keep.
            fresh.retain(|(k, _)| !k.eq_ignore_ascii_case("set-cookie"));
        }
        let headers = merged_304(&obj, &fresh);
        store_refreshed(ctx, &job.primary, &job.req, &obj, headers, &fresh, times);
        return;
    }
    match read_storable(ctx, &job.req, answer, response_time) {
        Some(obj) => ctx.store(&job.primary, &job.req, Arc::new(obj)),
        None => {
            ctx.remove(&job.primary);
        }
    }
}
