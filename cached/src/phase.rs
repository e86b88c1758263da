//! The cache phase of one request, decided here and nowhere else (as pingora's
//! `CachePhase`): from the request, the stored entry and the table of fills in progress,
//! [`decide`] says whether the request passes, is a hit, may take a stale answer (as it is,
//! while a background refresh runs, or when the origin fails), must revalidate, leads a
//! fill, follows one, or misses without one. `serve` carries the phase out; the sources only
//! fetch what it asks for. Background refreshes (`revalidate::in_background`) decide with
//! the same function in [`Mode::Refresh`].
//!
//! Deciding may change the fill table (a leader registers its fill, a follower joins one)
//! and the refresh queue (a stale-while-revalidate answer queues its refresh); nothing else.

use crate::cache::{partial_key, FillLead, FillRole, Follower};
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
                None if *len <= store_limit(ctx) => CachePhase::Miss,
                None => CachePhase::Pass,
            }
        }
        Check::Origin { site } => decide_origin(ctx, req, primary, *site, mode),
    }
}

/// The largest body that may be stored.
pub fn store_limit(ctx: &Ctx) -> u64 {
    ctx.cfg.max_object_size.min(ctx.cfg.capacity)
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
    let stored = ctx.cache.get(&key).and_then(|obj| {
        let s = obj.staleness(now)?;
        let keep = (ctx.cfg.keep)
            .max(ctx.cfg.grace)
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
                stale_if_error: staleness.on_error(ctx.cfg.grace),
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

/// A fresh stored piece (RFC 9111 §3.4) that holds the whole range asked for, unless a
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
    let obj = ctx.cache.get(&partial_key(key))?;
    if obj.usable(now, rules) != Some(Use::Fresh) {
        return None;
    }
    let (first, last, len) = policy::content_range(&obj.headers)?;
    match policy::range(&req.headers, &obj.headers, len) {
        RangeAnswer::Partial(from, to) if from >= first && to <= last => Some(Piece {
            obj,
            from,
            to,
            len,
            offset: from - first,
        }),
        _ => None,
    }
}
