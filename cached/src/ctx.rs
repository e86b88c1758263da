//! What every thread of cached shares ([`Ctx`]): the configuration, the stats slot, the
//! cache, the document root or the sites' upstream servers, the queue of background
//! refreshes and the mapped segment pools. `receiver::run` builds it once; the sources and
//! the request path below the receiver take it by reference. It calls nothing above it.

use crate::cache::Cache;
use crate::published::{Published, Streaming};
use crate::refresh::Refreshes;
use crate::stored::Stored;
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
        self.cfg().max_object_size.min(self.cfg().capacity)
    }

    /// Stores `obj` under `primary` (its `Vary` picks the variant), counting evictions.
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
        let evicted = self.cache.insert(primary, &req.headers, Arc::clone(&obj));
        Counters::add(&self.counters().evictions, evicted);
        match (&self.arena, ticket, streamed) {
            (Some(a), _, Some(s)) => {
                a.finish(s);
            }
            (Some(a), Some(ticket), None) => {
                a.publish(ticket, &self.cfg(), primary, req, &obj, self.counters())
            }
            _ => {}
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

    /// Drops every variant stored under `primary`, here and in the arena (every worker
    /// misses it from now on); `true` if anything was there.
    pub fn remove(&self, primary: &str) -> bool {
        let published = self.arena.as_ref().is_some_and(|a| a.remove(primary));
        let removed = self.cache.remove_all(primary);
        self.publish_store_gauges();
        removed || published
    }

    pub fn publish_store_gauges(&self) {
        let (n, bytes) = self.cache.usage();
        // cached has a single stats slot, so its gauges are plain stores.
        self.counters().stored_objects.store(n, Ordering::Relaxed);
        self.counters().stored_bytes.store(bytes, Ordering::Relaxed);
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
