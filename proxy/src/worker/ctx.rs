//! What serving a request may use of its worker process: the objects the master shared
//! (config, pool, stats), the worker's counters slot, its link to cached, its view of the
//! cache arena and its limits. Never the scheduler (epoll, parked connections, poll permits): a request that
//! may block says so through `conn::Blocking`. Built once per worker by `worker::run`.

use super::arena::ArenaView;
use super::link::CachedLink;
use crate::shared::Shared;
use common::request::Limits;
use common::stats::Counters;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

pub struct Ctx<'a> {
    pub shared: &'a Shared,
    /// 1-based; also the worker's stats slot.
    pub index: usize,
    /// Exec threads waiting on a slow client now (at most `client_wait_threads`).
    pub slow_waits: AtomicUsize,
    /// Set once the worker drains: every answer closes its connection.
    pub draining: AtomicBool,
    pub cached: CachedLink,
    /// Fresh hits, served from the shared arena.
    pub arena: ArenaView,
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
            arena: ArenaView::new(&shared.names),
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
}
