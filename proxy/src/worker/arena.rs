//! The worker's view of the shared cache arena (`common::arena`, written by `cached`): a
//! fresh hit is looked up and pinned here, decided by the same rules `cached` applies
//! (`common::hit`, `common::cache_policy`), and answered by `respond::arena_hit` straight
//! from shared memory, with no message to `cached`, which may even be down. Anything else
//! (not stored, stale, conditionals, ranges, credentials, no pin slot, no arena) goes to
//! `cached` as before. The arena is opened on first use and again when its owner stopped
//! (it is then `closed`) or while there is none (at most every [`RETRY_MS`]).

use common::arena::{Arena, ArenaReader, Lookup, Pinned};
use common::cache_policy::RequestRules;
use common::hit::{self, Meta, Object};
use common::request::Request;
use common::stats::Counters;
use common::Names;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// How often a worker without an arena looks for one.
const RETRY_MS: u64 = 200;

pub struct ArenaView {
    names: Names,
    reader: RwLock<Option<Arc<ArenaReader>>>,
    /// Monotonic ms before which no open is tried again.
    next_try: AtomicU64,
}

/// A fresh hit: the pinned record (its body stays intact while this lives) and its answer.
pub struct Hit {
    pub pinned: Pinned,
    pub object: Object,
}

impl ArenaView {
    pub fn new(names: &Names) -> ArenaView {
        ArenaView {
            names: names.clone(),
            reader: RwLock::new(None),
            next_try: AtomicU64::new(0),
        }
    }

    /// The reader of the current arena, opened (again) if there is none or it closed.
    fn reader(&self) -> Option<Arc<ArenaReader>> {
        if let Some(r) = &*self.reader.read().unwrap_or_else(|e| e.into_inner()) {
            if !r.is_closed() {
                return Some(Arc::clone(r));
            }
        }
        let now = common::process::monotonic_ms();
        let next = self.next_try.load(Ordering::Relaxed);
        if now < next
            || self
                .next_try
                .compare_exchange(next, now + RETRY_MS, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        let mut slot = self.reader.write().unwrap_or_else(|e| e.into_inner());
        let opened = Arena::open(&self.names).map_err(|e| e.to_string());
        *slot = match opened.and_then(|a| a.attach().map_err(|e| e.to_string())) {
            Ok(r) if !r.is_closed() => Some(Arc::new(r)),
            Ok(_) => None,
            Err(e) => {
                log::debug!("no cache arena yet: {e}");
                None
            }
        };
        slot.clone()
    }

    /// The fresh stored answer for `req`, pinned, or `None` (counted as an arena hit or
    /// miss for the requests an arena may answer at all).
    pub fn fresh_hit(&self, counters: &Counters, req: &Request) -> Option<Hit> {
        if !hit::answerable(&req.method, &req.headers) {
            return None;
        }
        let found = self.reader().and_then(|r| find(&r, counters, req));
        let counter = if found.is_some() {
            &counters.arena_hits
        } else {
            &counters.arena_misses
        };
        Counters::inc(counter);
        found
    }
}

/// The object a request selects (through the `Vary` stub of its URL, if there is one), if
/// it is fresh for the request.
fn find(r: &ArenaReader, counters: &Counters, req: &Request) -> Option<Hit> {
    let key = hit::key(&req.host, &req.target);
    let (pinned, object) = match decoded(r, counters, &key)? {
        (p, Meta::Object(o)) => (p, o),
        (stub, Meta::Vary(names)) => {
            let variant = hit::variant_key(&key, stub.generation(), &names, &req.headers);
            drop(stub);
            match decoded(r, counters, &variant)? {
                (p, Meta::Object(o)) => (p, o),
                (_, Meta::Vary(_)) => {
                    // A stub under a variant's key: never written so.
                    Counters::inc(&counters.arena_bad_meta);
                    return None;
                }
            }
        }
    };
    object
        .fresh(SystemTime::now(), &RequestRules::of(&req.headers))
        .then_some(Hit { pinned, object })
}

/// The object under `key`, pinned, with its metadata decoded (a corrupt one is counted).
fn decoded(r: &ArenaReader, counters: &Counters, key: &str) -> Option<(Pinned, Meta)> {
    let Lookup::Hit(p) = r.lookup(key.as_bytes()) else {
        return None;
    };
    match Meta::decode(&p.meta()) {
        Ok(m) => Some((p, m)),
        Err(e) => {
            log::warn!("arena object {key:?}: {e}");
            Counters::inc(&counters.arena_bad_meta);
            None
        }
    }
}
