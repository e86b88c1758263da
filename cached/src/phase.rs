//! The cache phase of one request, decided here and nowhere else (as pingora's
//! `CachePhase`): from the request, the stored entry and the table of fills in progress,
//! [`decide`] says whether the request passes, is a hit, may take a stale answer (as it is,
//! while a background refresh runs, or when the origin fails), must revalidate, leads a
//! fill, follows one, or misses without one. `serve` carries the phase out; the sources only
//! fetch what it asks for. Background refreshes (`revalidate::in_background`) decide with
//! the same function in [`Mode::Refresh`].
//!
//! Deciding may change the fill table (a leader registers its fill, a follower joins one)
//! and the refresh queue (a stale-while-revalidate answer queues its refresh), and marks
//! the entries it looked at as recently used; nothing else.

use crate::cache::{FillLead, FillRole, Follower};
use crate::ctx::Ctx;
use crate::refresh::Refresh;
use crate::stored::{Stored, Validity};
use common::cache_policy::{self as policy, RangeAnswer, RequestRules, Use};
use common::protocol::{BodyLen, RequestHead};
use std::sync::Arc;
use std::time::SystemTime;

/// What the request's answer comes from.
pub enum CachePhase<'c> {
    /// Neither looked up nor stored: a method other than GET and HEAD, a request with a
    /// body (the body may select the answer), a file too large to store.
    Pass,
    /// A fresh stored answer.
    Hit(Arc<Stored>),
    /// A fresh stored piece (`206`) holds the whole range asked for.
    Piece(Piece),
    /// A stale stored answer the request accepts as it is (`max-stale`).
    StaleAllowed(Arc<Stored>),
    /// A stale stored answer, served at once while one refresh runs in the background
    /// (`stale-while-revalidate`; the refresh is queued).
    StaleWhileRevalidate(Arc<Stored>),
    /// A stale stored answer: ask the origin whether it changed. `stale_if_error`: the
    /// stale answer may go out instead when the origin fails (`stale-if-error`, `grace`).
    Revalidate {
        obj: Arc<Stored>,
        stale_if_error: bool,
    },
    /// `only-if-cached` and nothing usable is stored: `504` (the text says which case).
    Uncached(&'static str),
    /// Fetch without sharing: a HEAD, a range, a full waiting list, a file read alone.
    /// What comes back may still be stored.
    Miss,
    /// Fetch and share what arrives with the requests that follow this fill.
    Lead(FillLead<'c>),
    /// Follow another request's fill as it arrives.
    Follow(Follower),
}

/// A range answered from a stored piece: bytes `from..=to` of a body of `len` bytes,
/// found at `offset` in the piece's body.
pub struct Piece {
    pub obj: Arc<Stored>,
    pub from: u64,
    pub to: u64,
    pub len: u64,
    pub offset: u64,
}

/// What the stored entry is checked against.
pub enum Check {
    /// An origin answer of site `site` (index in the configuration): RFC 9111 freshness.
    Origin { site: usize },
    /// A file as it is on disk now: served while size, mtime and inode match; larger than
    /// `max_object_size` it is never stored.
    File { validity: Validity, len: u64 },
}

/// Who asks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A client's request.
    Client,
    /// A background refresh of the stored answer (it neither passes, nor joins fills, nor
    /// queues refreshes, nor takes a stale answer: stale means revalidate).
    Refresh,
}

/// The phase of `req`, whose primary cache key is `primary`.
pub fn decide<'c>(
    ctx: &'c Ctx,
    req: &RequestHead,
    primary: &str,
    check: &Check,
    mode: Mode,
) -> CachePhase<'c> {
    match check {
        Check::File { validity, len } => {
            let stored = ctx.cache.get(primary).filter(|o| o.validity == *validity);
            match stored {
                Some(obj) => CachePhase::Hit(obj),
                None if *len <= ctx.store_limit() => CachePhase::Miss,
                None => CachePhase::Pass,
            }
        }
        Check::Origin { site } => decide_origin(ctx, req, primary, *site, mode),
    }
}

fn decide_origin<'c>(
    ctx: &'c Ctx,
    req: &RequestHead,
    primary: &str,
    site: usize,
    mode: Mode,
) -> CachePhase<'c> {
    let client = mode == Mode::Client;
    if client && ((req.method != "GET" && req.method != "HEAD") || req.body != BodyLen::None) {
        return CachePhase::Pass;
    }
    let rules = RequestRules::of(&req.headers);
    let key = ctx.cache.full_key(primary, &req.headers);
    let now = SystemTime::now();
    // Past its stale windows and `keep`, a stored answer is as good as gone.
    let stored = ctx.stored(&key).and_then(|obj| {
        let s = obj.staleness(now)?;
        let cfg = ctx.cfg();
        let keep = (cfg.keep)
            .max(cfg.grace)
            .max(s.stale_while_revalidate)
            .max(s.stale_if_error);
        (s.stale_by <= keep).then_some((obj, s))
    });
    if let Some((obj, staleness)) = stored {
        let usable = obj.usable(now, &rules).expect("origin answers are Http");
        return match usable {
            Use::Fresh => CachePhase::Hit(obj),
            _ if !client => CachePhase::Revalidate {
                obj,
                stale_if_error: false,
            },
            Use::StaleAllowed => CachePhase::StaleAllowed(obj),
            Use::Revalidate if rules.only_if_cached => {
                CachePhase::Uncached("stored answer is stale (only-if-cached)")
            }
            Use::Revalidate
                if staleness.while_revalidating(&rules)
                    && refresh_in_background(ctx, site, req, primary, &key) =>
            {
                CachePhase::StaleWhileRevalidate(obj)
            }
            Use::Revalidate => CachePhase::Revalidate {
                obj,
                stale_if_error: staleness.on_error(ctx.cfg().grace),
            },
        };
    }
    if !client {
        return CachePhase::Miss;
    }
    if rules.only_if_cached {
        return CachePhase::Uncached("not in cache (only-if-cached)");
    }
    if req.method == "GET" {
        if let Some(piece) = stored_piece(ctx, req, &key, &rules, now) {
            return CachePhase::Piece(piece);
        }
    }
    // HEAD and Range misses go upstream as they are and are not shared (a partial or empty
    // answer must not poison the cache); only a plain GET may lead or join a fill.
    if req.method == "HEAD" || req.header("range").is_some() {
        return CachePhase::Miss;
    }
    match ctx.cache.join_fill(&key, &req.headers) {
        FillRole::Leader(lead) => CachePhase::Lead(lead),
        FillRole::Waiter(fill) => CachePhase::Follow(fill),
        FillRole::Alone => CachePhase::Miss,
    }
}

/// Queues one background refresh of the answer stored at `key` (stale-while-revalidate),
/// unless one for `key` already runs. False when none could start (the queue is full): the
/// request revalidates in the foreground instead.
fn refresh_in_background(
    ctx: &Ctx,
    site: usize,
    req: &RequestHead,
    primary: &str,
    key: &str,
) -> bool {
    let mut req = req.clone();
    // The refresh asks about our copy, not the client's: its own conditions and range go.
    req.headers.retain(|(k, _)| {
        !common::http::CONDITIONAL
            .iter()
            .any(|c| k.eq_ignore_ascii_case(c))
    });
    ctx.refreshes.start(Refresh {
        site,
        req,
        primary: primary.to_string(),
        key: key.to_string(),
    })
}

/// A fresh stored piece (RFC 9111 §3.4) that holds the whole range asked for (of those the
/// variant keeps), unless a
/// conditional asks for more than a piece can answer.
fn stored_piece(
    ctx: &Ctx,
    req: &RequestHead,
    key: &str,
    rules: &RequestRules,
    now: SystemTime,
) -> Option<Piece> {
    let conditional = [
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
    ];
    if req.header("range").is_none() || conditional.iter().any(|h| req.header(h).is_some()) {
        return None;
    }
    ctx.cache.pieces(key).into_iter().find_map(|(_, obj)| {
        if obj.usable(now, rules) != Some(Use::Fresh) {
            return None;
        }
        let stored = obj.headers.to_vec();
        let (first, last, len) = policy::content_range(&stored)?;
        match policy::range(&req.headers, &stored, len) {
            RangeAnswer::Partial(from, to) if from >= first && to <= last => Some(Piece {
                obj,
                from,
                to,
                len,
                offset: from - first,
            }),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::config::CachedConfig;
    use common::stats::StatsRegion;
    use common::Names;
    use std::path::PathBuf;
    use std::time::Duration;

    /// A context of its own (its stats region is unlinked when it drops), with `grace_ms`.
    fn ctx(grace_ms: &str, n: u32) -> Ctx {
        let flags = vec![("cached.grace_ms".to_string(), grace_ms.to_string())];
        let cfg = CachedConfig::load(None, &flags).unwrap();
        let name = format!("/t{}-phase{n}.stats", std::process::id());
        let stats = Arc::new(StatsRegion::create(&name, 1).unwrap());
        Ctx::new(
            cfg,
            Names::for_instance("unused"),
            stats,
            PathBuf::new(),
            None,
        )
    }

    fn head(method: &str, headers: &[(&str, &str)]) -> RequestHead {
        crate::stored::request_for_test(method, "/a", headers)
    }

    /// An origin answer received `age` seconds ago, fresh for `lifetime`, allowing
    /// `swr` seconds of stale-while-revalidate.
    fn answer(age: u64, lifetime: u64, swr: u64) -> Arc<Stored> {
        Arc::new(Stored {
            status: 200,
            headers: vec![("ETag".to_string(), b"\"1\"".to_vec())].into(),
            body: crate::stored::Body::owned(b"body".to_vec()),
            validity: Validity::Http {
                lifetime: Duration::from_secs(lifetime),
                must_revalidate: false,
                no_cache: false,
                stale_while_revalidate: Duration::from_secs(swr),
                stale_if_error: Duration::ZERO,
            },
            response_time: SystemTime::now() - Duration::from_secs(age),
            initial_age: Duration::ZERO,
        })
    }

    const SITE: Check = Check::Origin { site: 0 };

    fn client<'c>(ctx: &'c Ctx, req: &RequestHead) -> CachePhase<'c> {
        decide(ctx, req, "k", &SITE, Mode::Client)
    }

    #[test]
    fn unsafe_methods_and_bodies_pass() {
        let ctx = ctx("0", 1);
        assert!(matches!(client(&ctx, &head("POST", &[])), CachePhase::Pass));
        let mut get = head("GET", &[]);
        get.body = BodyLen::Exact(3);
        assert!(matches!(client(&ctx, &get), CachePhase::Pass));
    }

    #[test]
    fn a_miss_leads_a_fill_the_next_follows_and_head_or_range_go_alone() {
        let ctx = ctx("0", 2);
        let get = head("GET", &[]);
        let CachePhase::Lead(_lead) = client(&ctx, &get) else {
            panic!("the first miss leads")
        };
        assert!(matches!(client(&ctx, &get), CachePhase::Follow(_)));
        assert!(matches!(client(&ctx, &head("HEAD", &[])), CachePhase::Miss));
        let range = head("GET", &[("Range", "bytes=0-1")]);
        assert!(matches!(client(&ctx, &range), CachePhase::Miss));
        let cached_only = head("GET", &[("Cache-Control", "only-if-cached")]);
        assert!(matches!(
            client(&ctx, &cached_only),
            CachePhase::Uncached(_)
        ));
    }

    #[test]
    fn a_stored_answer_is_a_hit_while_fresh_then_revalidated() {
        let ctx = ctx("0", 3);
        let get = head("GET", &[]);
        ctx.cache.insert("k", &get.headers, answer(10, 60, 0));
        assert!(matches!(client(&ctx, &get), CachePhase::Hit(_)));
        ctx.cache.insert("k", &get.headers, answer(70, 60, 0));
        assert!(matches!(
            client(&ctx, &get),
            CachePhase::Revalidate {
                stale_if_error: false,
                ..
            }
        ));
        let tolerant = head("GET", &[("Cache-Control", "max-stale=60")]);
        assert!(matches!(
            client(&ctx, &tolerant),
            CachePhase::StaleAllowed(_)
        ));
        let cached_only = head("GET", &[("Cache-Control", "only-if-cached")]);
        assert!(matches!(
            client(&ctx, &cached_only),
            CachePhase::Uncached(_)
        ));
    }

    #[test]
    fn grace_lets_a_stale_answer_stand_in_for_a_failing_origin() {
        let ctx = ctx("60000", 4);
        let get = head("GET", &[]);
        ctx.cache.insert("k", &get.headers, answer(70, 60, 0));
        assert!(matches!(
            client(&ctx, &get),
            CachePhase::Revalidate {
                stale_if_error: true,
                ..
            }
        ));
    }

    #[test]
    fn stale_while_revalidate_queues_one_refresh_which_decides_again() {
        let ctx = ctx("0", 5);
        let get = head("GET", &[("If-None-Match", "\"0\"")]);
        ctx.cache.insert("k", &get.headers, answer(70, 60, 30));
        assert!(matches!(
            client(&ctx, &get),
            CachePhase::StaleWhileRevalidate(_)
        ));
        // A second request finds the refresh queued: stale at once, no second job.
        assert!(matches!(
            client(&ctx, &get),
            CachePhase::StaleWhileRevalidate(_)
        ));
        let (job, taken) = ctx.refreshes.next(Duration::ZERO).expect("one job");
        assert!(ctx.refreshes.next(Duration::ZERO).is_none(), "only one");
        assert!(
            job.req.header("if-none-match").is_none(),
            "the client's own conditions go"
        );
        let refresh = |ctx| decide(ctx, &job.req, &job.primary, &SITE, Mode::Refresh);
        assert!(matches!(
            refresh(&ctx),
            CachePhase::Revalidate {
                stale_if_error: false,
                ..
            }
        ));
        // Refreshed meanwhile: the refresh has nothing to do, and joins no fill when gone.
        ctx.cache.insert("k", &get.headers, answer(0, 60, 30));
        assert!(matches!(refresh(&ctx), CachePhase::Hit(_)));
        ctx.cache.remove_all("k");
        assert!(matches!(refresh(&ctx), CachePhase::Miss));
        assert!(matches!(
            client(&ctx, &head("GET", &[])),
            CachePhase::Lead(_)
        ));
        drop(taken);
    }

    #[test]
    fn a_file_is_a_hit_while_unchanged_and_passes_when_too_large_to_store() {
        let ctx = ctx("0", 6);
        let get = head("GET", &[]);
        let validity = Validity::File {
            len: 4,
            mtime_ns: 1,
            ino: 2,
        };
        let mut stored = Arc::into_inner(answer(0, 0, 0)).unwrap();
        stored.validity = validity.clone();
        ctx.cache.insert("file:/a", &get.headers, Arc::new(stored));
        let file = |validity, len| Check::File { validity, len };
        let phase = |check: &Check| decide(&ctx, &get, "file:/a", check, Mode::Client);
        assert!(matches!(phase(&file(validity, 4)), CachePhase::Hit(_)));
        let changed = Validity::File {
            len: 4,
            mtime_ns: 9,
            ino: 2,
        };
        assert!(matches!(phase(&file(changed.clone(), 4)), CachePhase::Miss));
        let huge = ctx.store_limit() + 1;
        assert!(matches!(phase(&file(changed, huge)), CachePhase::Pass));
    }
}
