//! What every thread of cached shares ([`Ctx`]): the configuration, the stats slot, the
//! cache, the document root or the sites' upstream servers, the queue of background
//! refreshes and the mapped segment pools. `store` keeps one copy of a body (the arena's,
//! once published) and `stored` reads it back for the request path. `receiver::run` builds
//! it once; the sources and the request path below the receiver take it by reference. It
//! calls nothing above it.

use crate::cache::Cache;
use crate::published::{Published, Streaming};
use crate::refresh::Refreshes;
use crate::stored::{Body, Stored};
use crate::upstream::Upstreams;
use common::config::reload::Reload;
use common::config::CachedConfig;
use common::pool::Pool;
use common::protocol::{Doorbell, RequestHead};
use common::stats::{Counters, StatsRegion};
use common::Names;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

/// Pools kept mapped (the current one and those of masters still draining).
const KEEP_POOLS: usize = 4;
/// Least recently used arena-backed heads checked per store (`Cache::sweep`), so heads of
/// records the arena evicted do not pile up (one that has not been reached yet weighs only
/// its head, and a lookup drops it too).
const SWEEP: usize = 4;

/// Everything the threads of cached share.
pub struct Ctx {
    /// The running configuration; a SIGHUP replaces it (`reload`), so each use takes it anew.
    cfg: RwLock<Arc<CachedConfig>>,
    pub names: Names,
    pub stats: Arc<StatsRegion>,
    pub cache: Cache,
    /// Canonical document root (disk mode).
    pub root: PathBuf,
    /// The sites' origin servers (origin mode).
    pub upstreams: Option<Arc<Upstreams>>,
    /// Background refreshes of stale answers.
    pub refreshes: Refreshes,
    /// Mapped pools, newest first.
    pools: Mutex<Vec<Arc<Pool>>>,
    /// The shared arena the workers serve fresh hits from (`None`: every hit comes here).
    pub arena: Option<Published>,
}

impl Ctx {
    pub fn new(
        cfg: CachedConfig,
        names: Names,
        stats: Arc<StatsRegion>,
        root: PathBuf,
        upstreams: Option<Arc<Upstreams>>,
    ) -> Ctx {
        Ctx {
            cache: Cache::new(cfg.capacity, cfg.max_waiters),
            names,
            stats,
            root,
            upstreams,
            refreshes: Refreshes::default(),
            pools: Mutex::new(Vec::new()),
            arena: None,
            cfg: RwLock::new(Arc::new(cfg)),
        }
    }

    /// The same, publishing what it stores in the instance's arena (adopted if one is left).
    pub fn with_arena(mut self) -> Ctx {
        self.arena = Published::open(&self.names, &self.cfg(), self.counters());
        self.publish_store_gauges();
        self
    }
}

impl Ctx {
    /// The running configuration.
    pub fn cfg(&self) -> Arc<CachedConfig> {
        Arc::clone(&self.cfg.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Runs with `new` from now on, as far as it may change while running (see
    /// `CachedConfig::reloaded`); says what changed.
    pub fn reload(&self, new: &CachedConfig) -> Reload {
        let mut cfg = self.cfg.write().unwrap_or_else(|e| e.into_inner());
        let r = cfg.reloaded(new);
        *cfg = Arc::new(r.config.clone());
        r
    }

    pub fn counters(&self) -> &Counters {
        self.stats.slot(0)
    }

    /// The largest body that may be stored.
    pub fn store_limit(&self) -> u64 {
        let cfg = self.cfg();
        cfg.max_object_size.min(cfg.capacity)
    }

    /// Stores `obj` under `primary` (its `Vary` picks the variant), counting evictions.
    /// Once the arena holds its body, the entry here keeps only the head (one copy).
    pub fn store(&self, primary: &str, req: &RequestHead, obj: Arc<Stored>) {
        self.store_streamed(primary, req, obj, None);
    }

    /// The same for a fill that was `streamed` into the arena as it arrived: its record is
    /// published in place instead of a copy.
    pub fn store_streamed(
        &self,
        primary: &str,
        req: &RequestHead,
        obj: Arc<Stored>,
        streamed: Option<Streaming>,
    ) {
        // Stored here first: requests that come while the arena copy is made are hits here.
        let ticket = self.arena.as_ref().map(Published::ticket);
        // A pinned body (a refresh of what a request pinned) is kept as its reference: a pin
        // lives only as long as the request; the publish below copies from the pin.
        let kept = match &obj.body {
            Body::Pinned(..) => Arc::new(obj.with_body(obj.body.unpinned())),
            _ => Arc::clone(&obj),
        };
        let (evicted, key) = self.cache.insert(primary, &req.headers, Arc::clone(&kept));
        Counters::add(&self.counters().evictions, evicted);
        if let Some(a) = &self.arena {
            let body = match (ticket, streamed) {
                (_, Some(s)) => a.finish(s),
                (Some(ticket), None) => {
                    a.publish(ticket, &self.cfg(), primary, req, &obj, self.counters())
                }
                (None, None) => None,
            };
            if let Some(body) = body {
                self.cache.to_arena(&key, &kept, body);
            }
            let lost = self.cache.sweep(SWEEP, |bodies| a.holds(bodies));
            Counters::add(&self.counters().arena_lost, lost);
        }
        self.publish_store_gauges();
    }

    /// What to pass to [`Ctx::publish_file`], taken before the file's stored copy is looked
    /// up or read: it tells whether anything was removed (a PURGE) since.
    pub fn arena_ticket(&self) -> Option<u64> {
        self.arena.as_ref().map(Published::ticket)
    }

    /// Publishes the file `obj` stored under `primary` (read from the canonical `path`) in
    /// the arena for the request `req` that named it plainly (`disk::publishable`), unless a
    /// removal came after `ticket` ([`Ctx::arena_ticket`]).
    pub fn publish_file(
        &self,
        ticket: Option<u64>,
        primary: &str,
        path: &str,
        req: &RequestHead,
        obj: &Stored,
    ) {
        if let (Some(a), Some(t)) = (&self.arena, ticket) {
            a.publish_file(t, &self.cfg(), primary, path, req, obj, self.counters());
            self.publish_store_gauges();
        }
    }

    /// The answer stored at `full_key`, its body pinned in the arena if it is kept there
    /// (until the caller drops it): what serving, revalidating, refreshing and combining
    /// work on. A body the arena let go (evicted, or replaced) makes the entry a miss: it is
    /// dropped and counted (one the arena holds but we could not pin, every pin slot of
    /// ours being taken, is only a miss this time).
    pub fn stored(&self, full_key: &str) -> Option<Arc<Stored>> {
        let obj = self.cache.get(full_key)?;
        let Body::Arena(at) = &obj.body else {
            return Some(obj);
        };
        let a = self.arena.as_ref()?;
        match a.pin(at) {
            Some(p) => Some(Arc::new(
                obj.with_body(Body::Pinned(Arc::new(p), at.clone())),
            )),
            None => {
                if !a.holds(&[at])[0] && self.cache.remove_if(full_key, &obj) {
                    Counters::inc(&self.counters().arena_lost);
                    self.publish_store_gauges();
                }
                None
            }
        }
    }

    /// Drops every variant stored under `primary`, here and in the arena (every worker
    /// misses it from now on); `true` if anything was there.
    pub fn remove(&self, primary: &str) -> bool {
        let published = self.arena.as_ref().is_some_and(|a| a.remove(primary));
        let removed = self.cache.remove_all(primary);
        self.publish_store_gauges();
        removed || published
    }

    pub fn publish_store_gauges(&self) {
        let (n, bytes, owned) = self.cache.usage();
        // cached has a single stats slot, so its gauges are plain stores.
        self.counters().stored_objects.store(n, Ordering::Relaxed);
        self.counters().stored_bytes.store(bytes, Ordering::Relaxed);
        self.counters()
            .stored_body_bytes
            .store(owned, Ordering::Relaxed);
        if let Some(a) = &self.arena {
            a.publish_gauges(self.counters());
        }
    }

    /// The pool the doorbell refers to, mapped on first use. A few recent pools stay mapped,
    /// so the draining workers of a master that handed over (upgrade) still get answers.
    pub fn pool_for(&self, bell: &Doorbell) -> Option<Arc<Pool>> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pools.iter().find(|p| p.id() == bell.pool_id) {
            return Some(p.clone());
        }
        match Pool::open(&self.names) {
            Ok(p) if p.id() == bell.pool_id => {
                log::info!(
                    "mapped segment pool {} ({} × {} bytes)",
                    self.names.pool,
                    p.segments(),
                    p.segment_size()
                );
                let p = Arc::new(p);
                pools.insert(0, p.clone());
                pools.truncate(KEEP_POOLS);
                Some(p)
            }
            Ok(_) => None,
            Err(e) => {
                log::warn!("cannot map the segment pool: {e}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stored::fresh_for_test;
    use common::arena::Lookup;
    use common::hit::Meta;
    use std::time::SystemTime;

    /// A context with an arena of its own (unlinked, like its stats region, when it drops).
    fn ctx(n: u32, capacity: &str) -> Ctx {
        let tag = format!("t{}-ctx{n}", std::process::id());
        let flags = [
            ("cached.capacity", capacity),
            ("cached.max_object_size", "64k"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let cfg = CachedConfig::load(None, &flags).unwrap();
        let stats = Arc::new(StatsRegion::create(&format!("/{tag}.stats"), 1).unwrap());
        Ctx::new(cfg, Names::for_instance(&tag), stats, PathBuf::new(), None).with_arena()
    }

    fn get(target: &str, headers: &[(&str, &str)]) -> RequestHead {
        crate::stored::request_for_test("GET", target, headers)
    }

    /// The bytes of `b` (from `from`, `len` of them) as an answer copies them out.
    fn range(b: &Body, from: u64, len: u64) -> Vec<u8> {
        let mut v = Vec::new();
        b.write_range(&mut v, from, len).unwrap();
        v
    }

    fn all(b: &Body) -> Vec<u8> {
        range(b, 0, b.len())
    }

    fn body(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    fn arena_head(ctx: &Ctx, key: &str) -> Option<Vec<(String, Vec<u8>)>> {
        let reader = ctx.arena.as_ref()?.reader_for_test();
        let Lookup::Hit(p) = reader.lookup(key.as_bytes()) else {
            return None;
        };
        match Meta::decode(&p.meta()).ok()? {
            Meta::Object(o) => Some(o.headers),
            Meta::Vary(_) => None,
        }
    }

    fn gauge(ctx: &Ctx, f: impl Fn(&Counters) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(ctx.counters()).load(Ordering::Relaxed)
    }

    #[test]
    fn a_published_body_is_kept_once_and_read_back_whole_for_hits_and_ranges() {
        let ctx = ctx(1, "4m");
        let req = get("/x", &[]);
        let bytes = body(40_000, 1);
        let obj = Arc::new(fresh_for_test(vec![], &bytes));
        ctx.store("s http://a.test/x", &req, obj);
        let kept = ctx.cache.get("s http://a.test/x").unwrap();
        assert!(matches!(kept.body, Body::Arena(_)), "only the head is here");
        assert_eq!(kept.body.len(), 40_000);
        let (_, charged, owned) = ctx.cache.usage();
        assert_eq!(owned, 0);
        assert!(charged < 1000, "charged {charged}: the head only");
        assert_eq!(gauge(&ctx, |c| &c.stored_body_bytes), 0);
        assert!(gauge(&ctx, |c| &c.arena_bytes) > 40_000);
        // What the request path gets: the body pinned, whole or a range copied out of it.
        let served = ctx.stored("s http://a.test/x").unwrap();
        assert!(matches!(served.body, Body::Pinned(..)));
        assert!(all(&served.body) == bytes);
        assert_eq!(range(&served.body, 1000, 1000), &bytes[1000..2000]);
        assert!(served.body.write_range(&mut Vec::new(), 39_999, 2).is_err());
        drop(served);
        // Pieces and answers the arena cannot take keep their bytes here.
        let mut piece = fresh_for_test(
            vec![("Content-Range".into(), b"bytes 0-9/100".to_vec())],
            &bytes[..10],
        );
        piece.status = 206;
        ctx.store("s http://a.test/p", &get("/p", &[]), Arc::new(piece));
        let big = Arc::new(fresh_for_test(vec![], &body(200_000, 2)));
        ctx.store("s http://a.test/big", &get("/big", &[]), big);
        assert_eq!(ctx.cache.usage().2, 200_010);
        assert!(ctx.stored("s http://a.test/big").is_some());
        assert_eq!(gauge(&ctx, |c| &c.arena_lost), 0);
    }

    #[test]
    fn a_refreshed_head_is_republished_over_the_same_body_and_vary_variants_stay_apart() {
        let ctx = ctx(2, "4m");
        let req = get("/x", &[]);
        let primary = "s http://a.test/x";
        let bytes = body(10_000, 3);
        let old = fresh_for_test(vec![("ETag".into(), b"\"1\"".to_vec())], &bytes);
        ctx.store(primary, &req, Arc::new(old));
        // A 304 refresh of the served copy (owned bytes), as `revalidate` stores it.
        let served = ctx.stored(primary).unwrap();
        let merged = vec![
            ("ETag".into(), b"\"1\"".to_vec()),
            ("X-Fresh".into(), b"1".to_vec()),
        ];
        let now = SystemTime::now();
        crate::store::store_refreshed(&ctx, primary, &req, &served, merged, &vec![], (now, now))
            .unwrap();
        let key = common::hit::key("a.test", "/x");
        let head = arena_head(&ctx, &key).expect("republished");
        assert!(common::http::header(&head, "x-fresh").is_some());
        // A refresh of the head alone (its body still in the arena, as `freshen_from_head`
        // could pass it): the bytes are copied from the old record into the new one.
        let kept = ctx.cache.get(primary).unwrap();
        assert!(matches!(kept.body, Body::Arena(_)), "a pin is never kept");
        drop(served);
        let mut again = kept.with_body(kept.body.clone());
        again
            .headers
            .edit(|h| h.push(("X-Again".into(), b"1".to_vec())));
        ctx.store(primary, &req, Arc::new(again));
        let head = arena_head(&ctx, &key).unwrap();
        assert!(common::http::header(&head, "x-again").is_some());
        assert!(all(&ctx.stored(primary).unwrap().body) == bytes);
        assert_eq!(ctx.cache.usage().2, 0);
        // Two variants of one URL: each head reads its own body back.
        let vary = || vec![("Vary".into(), b"X-User".to_vec())];
        let (a, b) = (get("/v", &[("X-User", "a")]), get("/v", &[("X-User", "b")]));
        let primary = "s http://a.test/v";
        ctx.store(primary, &a, Arc::new(fresh_for_test(vary(), b"for a")));
        ctx.store(primary, &b, Arc::new(fresh_for_test(vary(), b"for b")));
        for (r, want) in [(&a, &b"for a"[..]), (&b, &b"for b"[..])] {
            let full = ctx.cache.full_key(primary, &r.headers);
            assert!(matches!(ctx.cache.get(&full).unwrap().body, Body::Arena(_)));
            assert_eq!(all(&ctx.stored(&full).unwrap().body), want);
        }
        assert_eq!(gauge(&ctx, |c| &c.arena_lost), 0);
    }

    #[test]
    fn a_body_the_arena_let_go_is_a_miss_dropped_and_counted() {
        let ctx = ctx(3, "1m");
        let primary = "s http://a.test/gone";
        ctx.store(
            primary,
            &get("/gone", &[]),
            Arc::new(fresh_for_test(vec![], b"x")),
        );
        // Removed from the arena behind the entry's back (as an eviction does).
        assert!(ctx.arena.as_ref().unwrap().remove(primary));
        assert!(ctx.cache.get(primary).is_some());
        assert!(ctx.stored(primary).is_none());
        assert!(ctx.cache.get(primary).is_none(), "dropped");
        assert_eq!(gauge(&ctx, |c| &c.arena_lost), 1);
        // Replaced under the same key by other bytes: the old head must not read them.
        let req = get("/r", &[]);
        let primary = "s http://a.test/r";
        ctx.store(primary, &req, Arc::new(fresh_for_test(vec![], b"old")));
        let old = ctx.cache.get(primary).unwrap();
        ctx.store(primary, &req, Arc::new(fresh_for_test(vec![], b"new")));
        ctx.cache.insert(primary, &req.headers, Arc::clone(&old));
        assert!(ctx.stored(primary).is_none());
        assert_eq!(gauge(&ctx, |c| &c.arena_lost), 2);
        // Far more than the arena holds: it evicts, the sweep drops the heads of what it
        // evicted, and every head left reads its own bytes back.
        for i in 0..400u32 {
            let target = format!("/o{i}");
            let obj = fresh_for_test(vec![], &body(8_000, i as u8));
            ctx.store(
                &format!("s http://a.test{target}"),
                &get(&target, &[]),
                Arc::new(obj),
            );
        }
        let lost = gauge(&ctx, |c| &c.arena_lost);
        assert!(lost > 100, "the sweep dropped {lost}");
        let (objects, _, owned) = ctx.cache.usage();
        assert_eq!(owned, 0);
        let arena = gauge(&ctx, |c| &c.arena_objects);
        assert!(objects <= arena + 40, "{objects} heads for {arena} objects");
        let mut hits = 0;
        for i in 0..400u32 {
            if let Some(o) = ctx.stored(&format!("s http://a.test/o{i}")) {
                assert!(all(&o.body) == body(8_000, i as u8));
                hits += 1;
            }
        }
        assert!(hits > 50 && hits < 400, "{hits} of 400 still held");
    }
}
