//! What of an origin answer is kept, and keeping it: the shared copy of a storable answer
//! (qualified fields out, `Set-Cookie` as `cached.set_cookie` says), an answer read whole
//! for storing, a stored answer refreshed by a `304` or a matching `HEAD` (RFC 9111 §4.3.4,
//! §4.3.5), and `206` pieces combined (§3.4). Called by `fill` and `revalidate`; it writes
//! nothing to a segment.

use crate::ctx::Ctx;
use crate::source::origin::{cache_key, declared_length, end_to_end, site_of};
use crate::stored::{Body, Fields, Stored, Validity};
use crate::upstream::Answer;
use common::cache_policy as policy;
use common::config::SetCookie;
use common::http::Headers;
use common::protocol::RequestHead;
use common::stats::Counters;
use std::io::Read;
use std::sync::Arc;
use std::time::SystemTime;

/// Whether an answer with `status` and `headers` to `req` (sent as `method`) may be stored,
/// and how (`policy::storable` under this instance's heuristic floor and targeted fields).
pub fn storable(
    ctx: &Ctx,
    method: &str,
    req: &RequestHead,
    status: u16,
    headers: &Headers,
    response_time: SystemTime,
) -> Option<policy::Storable> {
    let cfg = ctx.cfg();
    policy::storable(
        method,
        &req.headers,
        status,
        headers,
        response_time,
        cfg.heuristic_floor,
        &cfg.targeted_cache_control,
    )
}

/// The copy of a storable answer's fields that collapsed followers get and the store keeps:
/// without the fields a qualified `private`/`no-cache` names, and with its `Set-Cookie` as
/// `cached.set_cookie` says (counted). `None`: the answer may not be shared after all
/// (`set_cookie = "pass"`).
pub fn shared_copy(ctx: &Ctx, headers: &Headers, s: &policy::Storable) -> Option<Headers> {
    let mut shared = headers.clone();
    policy::strip_fields(&mut shared, &s.strip);
    if common::http::header(&shared, "set-cookie").is_some() {
        match ctx.cfg().set_cookie {
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
pub fn read_storable(
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
    let s = storable(ctx, "GET", req, status, &headers, response_time)?;
    // Nobody receives this answer now: only the shared copy is kept.
    let mut headers = shared_copy(ctx, &headers, &s)?;
    let limit = ctx.store_limit();
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
        headers: headers.into(),
        body: Body::owned(bytes),
        validity: Validity::http(&s),
        response_time,
        initial_age,
    })
}

/// The stored answer's fields updated by a 304's (RFC 9111 §4.3.4), without `Age`.
pub fn merged_304(obj: &Stored, fresh: &Headers) -> Headers {
    let mut headers = obj.headers.to_vec();
    policy::update_from_304(&mut headers, fresh);
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case("age"));
    headers
}

/// Stores `obj` refreshed by a 304 with the merged `headers`, or removes the entry when the
/// merged answer may no longer be stored. `times`: when the request went, when the 304 came.
pub fn store_refreshed(
    ctx: &Ctx,
    primary: &str,
    req: &RequestHead,
    obj: &Stored,
    headers: Headers,
    fresh: &Headers,
    (request_time, response_time): (SystemTime, SystemTime),
) -> Option<Arc<Stored>> {
    let Some(s) = storable(ctx, "GET", req, obj.status, &headers, response_time) else {
        ctx.remove(primary);
        return None;
    };
    let refreshed = Arc::new(Stored {
        status: obj.status,
        initial_age: policy::initial_age(fresh, request_time, response_time),
        headers: headers.into(),
        body: obj.body.clone(),
        validity: Validity::http(&s),
        response_time,
    });
    ctx.store(primary, req, Arc::clone(&refreshed));
    Some(refreshed)
}

/// Stores a `206` piece (RFC 9111 §3.4), combined with every stored piece of the same
/// representation it touches or overlaps (and, grown, with those it then touches); pieces of
/// another representation go, and past `MAX_PIECES` the smallest. Once the pieces hold the
/// whole body, the result is stored as the complete `200` (later full and range requests
/// are hits).
pub fn piece(ctx: &Ctx, primary: &str, req: &RequestHead, mut obj: Stored) {
    let Some((_, _, len)) = policy::content_range(&obj.headers.to_vec()) else {
        return;
    };
    let limit = ctx.store_limit();
    let mut others = ctx.cache.pieces(&ctx.cache.full_key(primary, &req.headers));
    loop {
        let before = others.len();
        others.retain(|(key, old)| {
            if !policy::same_representation(&old.headers.to_vec(), &obj.headers.to_vec()) {
                ctx.cache.remove_piece(key);
                return false;
            }
            let combined = match (old.body.bytes(), obj.body.bytes()) {
                (Some(a), Some(b)) => {
                    policy::combine((&old.headers.to_vec(), a), (&obj.headers.to_vec(), b))
                }
                _ => None,
            }
            .filter(|(_, b)| b.len() as u64 <= limit);
            let Some((first, body)) = combined else {
                return true;
            };
            let last = first + body.len() as u64 - 1;
            obj.headers.edit(|h| {
                h.retain(|(k, _)| !k.eq_ignore_ascii_case("content-range"));
                h.push((
                    "Content-Range".into(),
                    format!("bytes {first}-{last}/{len}").into_bytes(),
                ));
            });
            obj.body = Body::owned(body);
            ctx.cache.remove_piece(key);
            false
        });
        if others.len() == before {
            break;
        }
    }
    if others.len() >= crate::cache::MAX_PIECES {
        if let Some((key, _)) = others.iter().min_by_key(|(_, o)| o.body.len()) {
            ctx.cache.remove_piece(key);
        }
    }
    if let Some((0, last, len)) = policy::content_range(&obj.headers.to_vec()) {
        if last + 1 == len {
            obj.status = 200;
            obj.headers
                .edit(|h| h.retain(|(k, _)| !k.eq_ignore_ascii_case("content-range")));
        }
    }
    ctx.store(primary, req, Arc::new(obj));
}

/// A `200` to a `HEAD` we sent (RFC 9111 §4.3.5): the stored `GET` answer the request
/// would have been served updates its fields from it when the validators match (as a 304
/// would), and is dropped (here and in the arena) when they differ.
pub fn freshen_from_head(
    ctx: &Ctx,
    req: &RequestHead,
    head: &Headers,
    times: (SystemTime, SystemTime),
) {
    let site = &ctx.cfg().sites[site_of(ctx, req).expect("a routed request")];
    let primary = cache_key(site, req);
    let Some(obj) = ctx.stored(&ctx.cache.full_key(&primary, &req.headers)) else {
        return;
    };
    if policy::head_matches(&obj.headers.to_vec(), obj.body.len(), head) {
        let merged = merged_304(&obj, head);
        store_refreshed(ctx, &primary, req, &obj, merged, head, times);
    } else {
        ctx.remove(&primary);
    }
}

pub fn clone_meta(obj: &Stored) -> Stored {
    Stored {
        status: obj.status,
        headers: Fields::default(),
        body: Body::default(),
        validity: obj.validity.clone(),
        response_time: obj.response_time,
        initial_age: obj.initial_age,
    }
}
