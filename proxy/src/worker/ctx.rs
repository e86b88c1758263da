//! What serving a request may use of its worker process: the objects the master shared
//! (config, pool, stats), the worker's counters slot, its link to cached, its L1 and its
//! limits. Never the scheduler (epoll, parked connections, poll permits): a request that
//! may block says so through `conn::Blocking`. Built once per worker by `worker::run`.

use super::l1;
use super::link::CachedLink;
use crate::shared::Shared;
use common::request::{Limits, Request};
use common::stats::Counters;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;

pub struct Ctx<'a> {
    pub shared: &'a Shared,
    /// 1-based; also the worker's stats slot.
    pub index: usize,
    /// Exec threads waiting on a slow client now (at most `client_wait_threads`).
    pub slow_waits: AtomicUsize,
    /// Set once the worker drains: every answer closes its connection.
    pub draining: AtomicBool,
    pub cached: CachedLink,
    pub l1: l1::L1,
    pub limits: Limits,
    pub next_request_id: AtomicU64,
}

impl Ctx<'_> {
    pub fn new(shared: &Shared, index: usize) -> Ctx<'_> {
        let cfg = &shared.cfg;
        Ctx {
            shared,
            index,
            slow_waits: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            cached: CachedLink::new(&shared.names),
            l1: l1::L1::new(cfg.l1_capacity, cfg.l1_max_object_size),
            limits: Limits {
                max_header_bytes: cfg.max_header_bytes,
                max_headers: cfg.max_headers,
            },
            next_request_id: AtomicU64::new((index as u64) << 48),
        }
    }

    pub fn counters(&self) -> &Counters {
        self.shared.stats.slot(self.index)
    }

    /// A fresh stored answer for `req` that the worker may send without cached (counted as
    /// an L1 hit or miss), or `None`. Today the worker's L1, after dropping it if anything
    /// was invalidated.
    pub fn fresh_hit(&self, req: &Request) -> Option<Arc<l1::Entry>> {
        if self.shared.cfg.l1_capacity == 0 || !l1::eligible(&req.method, &req.headers) {
            return None;
        }
        if self.l1.sync_epoch(self.shared.pool.invalidations()) {
            Counters::inc(&self.counters().l1_flushes);
        }
        let hit = self.l1.get(&l1::key(&req.host, &req.target));
        let counter = if hit.is_some() {
            &self.counters().l1_hits
        } else {
            &self.counters().l1_misses
        };
        Counters::inc(counter);
        hit
    }
}
