//! Serving one request from its segment: read and validate the request head, then answer
//! from the LRU, the document root ([`disk`]) or the origin ([`origin`]).

pub mod disk;
pub mod origin;

use crate::receiver::Ctx;
use crate::respond;
use common::pool::Lease;
use common::protocol::{read_head, RequestHead};
use common::stats::Counters;
use std::io;
use std::sync::atomic::Ordering;

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
    match &ctx.cfg.origin {
        Some(origin) => origin::serve(ctx, lease, &req, origin),
        None => disk::serve(ctx, lease, &req),
    }
}

/// `PURGE`: drops the stored object named by the request target.
pub fn purge(ctx: &Ctx, lease: &mut Lease) -> io::Result<()> {
    let req = request_head(ctx, lease)?;
    respond::drain(lease)?;
    let key = match &ctx.cfg.origin {
        Some(_) => Some(origin::cache_key(&req.target)),
        None => disk::cache_key(ctx, &req.target),
    };
    let removed = key.is_some_and(|k| ctx.lru.lock().unwrap_or_else(|e| e.into_inner()).remove(&k));
    publish_store_gauges(ctx);
    if removed {
        respond::full(
            lease,
            200,
            common::http::CacheOutcome::Internal,
            vec![],
            b"purged\n",
            false,
        )
    } else {
        respond::error(lease, 404, "not in cache", false)
    }
}

/// Stores `obj`, counting evictions and updating the stored-size gauges.
pub fn store(ctx: &Ctx, key: String, obj: std::sync::Arc<crate::lru::Stored>) {
    let evicted = ctx
        .lru
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, obj);
    if let Some(n) = evicted {
        Counters::add(&ctx.counters().evictions, n);
    }
    publish_store_gauges(ctx);
}

pub fn publish_store_gauges(ctx: &Ctx) {
    let (n, bytes) = {
        let lru = ctx.lru.lock().unwrap_or_else(|e| e.into_inner());
        (lru.len() as u64, lru.used())
    };
    // cached has a single stats slot, so its gauges are plain stores.
    ctx.counters().stored_objects.store(n, Ordering::Relaxed);
    ctx.counters().stored_bytes.store(bytes, Ordering::Relaxed);
}
