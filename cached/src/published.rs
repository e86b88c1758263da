//! The cache as the workers see it: every complete stored origin answer is also published
//! in the shared arena (`common::arena`, owned here), with the metadata a worker needs to
//! serve it as a fresh hit itself (`common::hit`); PURGE and invalidation remove it there,
//! which every worker sees at once. The arena is the only copy of a published body: `publish`
//! returns where it put it ([`ArenaBody`]) and `Ctx::store` drops cached's own copy for it;
//! [`Published::read`] copies a body back out through our pin (for what `cached` itself
//! serves: stale and revalidated answers, ranges of them, refreshes), and tells a record the
//! ring has evicted or a newer answer replaced (the stored head is then a miss). After
//! `TRIM_IDLE` without a store, the pages of the arena's free space are given back
//! ([`Published::trim_if_idle`], from cached's housekeeping). The arena outlives this
//! process: a restarted `cached` adopts it (what it held stays served), and workers keep
//! serving fresh hits from it while `cached` is down. Called by `Ctx::store` and
//! `Ctx::remove`; nothing else writes the arena.

use crate::stored::{ArenaBody, Body, Stored, Validity};
use common::arena::{self, ArenaConfig, ArenaOwner, ArenaReader, Lookup, Pinned, Start};
use common::config::{CachedConfig, SetCookie};
use common::hit::{self, Meta, Object};
use common::http::header;
use common::protocol::RequestHead;
use common::stats::Counters;
use common::Names;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// A reservation as an `io::Write` (what `Body::write_range` copies into).
struct ReservationWriter<'a>(&'a mut arena::Reservation);

impl std::io::Write for ReservationWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(self.0.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Room in a record for the key and the metadata besides a body of `max_object_size`.
const HEAD_ALLOWANCE: u64 = 64 << 10;
/// Pin rows: every worker of two masters at once (an upgrade), the most workers each, and
/// this process. A constant, so a change of `proxy.workers` keeps the arena adoptable.
const PIN_ROWS: u32 = 2 * 64 + 2;

pub struct Published {
    /// The owner, and the number of removals so far: a publish that a removal overtook
    /// (it was stored before a PURGE ran, and copied after) is dropped.
    owner: Mutex<(ArenaOwner, u64)>,
    /// Our own pin row, to read the `Vary` stubs.
    reader: ArenaReader,
    /// When the last reservation was made (`process::monotonic_ms`), and whether the free
    /// space was given back since.
    last_reserve: AtomicU64,
    trimmed: AtomicBool,
}

/// How long the arena goes without a store before its free space gives its pages back.
pub const TRIM_IDLE: Duration = Duration::from_secs(5);

/// The arena geometry for `cfg`: capacity as configured, records up to `max_object_size`
/// plus head room (never more than a ring allows). `None`: too small for an arena.
pub fn geometry(cfg: &CachedConfig) -> Option<ArenaConfig> {
    let quarter = cfg.capacity / 4 / arena::ALIGN * arena::ALIGN;
    let max_record = (cfg.max_object_size.min(cfg.capacity) + HEAD_ALLOWANCE).min(quarter);
    let geo = ArenaConfig::for_capacity(cfg.capacity, max_record, PIN_ROWS, arena::MAX_PIN_SLOTS);
    geo.check().ok().map(|()| geo)
}

fn lock(m: &Mutex<(ArenaOwner, u64)>) -> MutexGuard<'_, (ArenaOwner, u64)> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The arena key of a primary cache key of origin mode (`SITE http://HOST TARGET`) and the
/// site's name; `None` for other keys (files are checked against the disk on every hit,
/// which only `cached` can do).
fn split(primary: &str) -> Option<(&str, &str)> {
    let (site, key) = primary.split_once(' ')?;
    key.starts_with("http://").then_some((site, key))
}

impl Published {
    /// Adopts the arena a previous `cached` left, or creates one; `None` (logged) when the
    /// capacity is too small for one or it cannot be mapped: then every hit goes through
    /// `cached`.
    pub fn open(names: &Names, cfg: &CachedConfig, counters: &Counters) -> Option<Published> {
        let geo = geometry(cfg)?;
        let (owner, start) = match ArenaOwner::open_or_adopt(names, geo) {
            Ok(o) => o,
            Err(e) => {
                log::warn!("no cache arena ({}): {e}", names.arena);
                return None;
            }
        };
        match start {
            Start::Cold(why) => log::info!("cache arena {} started cold: {why}", names.arena),
            Start::Adopted(a) => {
                log::info!(
                    "cache arena {} adopted: {} objects, {} bytes kept, {} dropped, {} unfinished fills freed",
                    names.arena,
                    a.objects,
                    a.bytes,
                    a.dropped,
                    a.abandoned_fills
                );
                Counters::inc(&counters.arena_adoptions);
            }
        }
        let reader = match owner.arena().attach() {
            Ok(r) => r,
            Err(e) => {
                log::warn!("cache arena {}: {e}", names.arena);
                return None;
            }
        };
        Some(Published {
            owner: Mutex::new((owner, 0)),
            reader,
            last_reserve: AtomicU64::new(common::process::monotonic_ms()),
            trimmed: AtomicBool::new(false),
        })
    }

    /// What to pass to [`Published::publish`] for an answer about to be stored: taken
    /// before, it tells whether anything was removed since.
    pub fn ticket(&self) -> u64 {
        lock(&self.owner).1
    }

    /// Publishes the stored answer `obj` of `primary` for `req`, unless something was
    /// removed since `ticket` (the answer may predate a PURGE): files, pieces (`206`) and
    /// answers larger than a record are not (they stay served by `cached`). A refusal of
    /// the arena (too large, or its space held by pins) is counted, and whatever the arena
    /// held under the key goes: it must not outlive the answer that replaced it here.
    /// Returns where the arena keeps the body now (`None`: not published; a body that was
    /// itself in the arena and is gone is not either).
    pub fn publish(
        &self,
        ticket: u64,
        cfg: &CachedConfig,
        primary: &str,
        req: &RequestHead,
        obj: &Stored,
        counters: &Counters,
    ) -> Option<ArenaBody> {
        let (site, key) = split(primary)?;
        let Validity::Http {
            lifetime,
            must_revalidate,
            no_cache,
            ..
        } = obj.validity
        else {
            return None;
        };
        if obj.status == 206 {
            return None;
        }
        // A refreshed head over a body the arena holds: the bytes come out of the old record,
        // pinned (by the request that refreshed it, or here) until they are copied.
        let pinned_here;
        let from = match &obj.body {
            Body::Arena(a) => {
                pinned_here = Body::Pinned(Arc::new(self.pin(a)?), a.clone());
                &pinned_here
            }
            b => b,
        };
        let body_len = from.len();
        let mut headers = obj.headers.clone();
        if cfg.strip_targeted {
            common::cache_policy::strip_fields(&mut headers, &cfg.targeted_cache_control);
        }
        let vary = common::cache_policy::all_tokens(&obj.headers, "vary");
        // As `answer::stored` grants: only answers everyone may reuse as they are.
        let show_ttl = !no_cache
            && obj.status == 200
            && vary.is_empty()
            && (cfg.set_cookie == SetCookie::Store || header(&obj.headers, "set-cookie").is_none());
        let meta = Meta::Object(Object {
            status: obj.status,
            headers,
            response_time: obj.response_time,
            initial_age: obj.initial_age,
            lifetime,
            must_revalidate,
            no_cache,
            show_ttl,
            site: site.to_string(),
        })
        .encode();
        let mut guard = lock(&self.owner);
        if guard.1 != ticket {
            return None;
        }
        let owner = &mut guard.0;
        let full_key = if vary.is_empty() {
            key.to_string()
        } else {
            match self.stub(owner, key, &vary) {
                Some(stub) => hit::variant_key(key, stub, &vary, &req.headers),
                None => {
                    // No stub: the URL's variants (and any object under its key) go.
                    owner.remove(key.as_bytes());
                    Counters::inc(&counters.arena_refused);
                    return None;
                }
            }
        };
        self.last_reserve
            .store(common::process::monotonic_ms(), Ordering::Relaxed);
        self.trimmed.store(false, Ordering::Relaxed);
        let mut res = match owner.reserve(full_key.as_bytes(), &meta, body_len) {
            Ok(r) => r,
            Err(e) => {
                log::debug!("not published in the arena: {e}");
                owner.remove(full_key.as_bytes());
                Counters::inc(&counters.arena_refused);
                return None;
            }
        };
        // The copy runs without the lock: other publishes and removals go on meanwhile.
        drop(guard);
        match from.bytes() {
            Some(bytes) => {
                res.write(bytes);
            }
            None => from
                .write_range(&mut ReservationWriter(&mut res), 0, body_len)
                .ok()?,
        }
        let mut guard = lock(&self.owner);
        if guard.1 != ticket {
            // Removed meanwhile: dropping the reservation frees it.
            return None;
        }
        if let Err(e) = guard.0.publish(res) {
            log::warn!("arena publish failed: {e}");
            guard.0.remove(full_key.as_bytes());
            return None;
        }
        // Still under the lock, so nothing replaced it yet: the record just published.
        let (len, sum) = guard.0.body_of(full_key.as_bytes())?;
        Some(ArenaBody {
            key: full_key,
            len,
            sum,
        })
    }

    /// Pins the record `at` names, if the arena still holds that body (not evicted, not
    /// replaced by another answer): it stays intact until the pin drops.
    pub fn pin(&self, at: &ArenaBody) -> Option<Pinned> {
        match self.reader.lookup(at.key.as_bytes()) {
            Lookup::Hit(p) if p.body_len() == at.len && p.body_sum() == at.sum => Some(p),
            _ => None,
        }
    }

    /// Which of `bodies` the arena still holds (nothing is copied or marked accessed).
    pub fn holds(&self, bodies: &[&ArenaBody]) -> Vec<bool> {
        let guard = lock(&self.owner);
        bodies
            .iter()
            .map(|at| guard.0.body_of(at.key.as_bytes()) == Some((at.len, at.sum)))
            .collect()
    }

    /// The generation of the `Vary` stub of `key` naming `vary`, published now if there is
    /// none or it names other fields (which makes the variants stored under it unreachable).
    fn stub(&self, owner: &mut ArenaOwner, key: &str, vary: &[String]) -> Option<u64> {
        if let Lookup::Hit(p) = self.reader.lookup(key.as_bytes()) {
            if Meta::decode(&p.meta()).is_ok_and(|m| m == Meta::Vary(vary.to_vec())) {
                return Some(p.generation());
            }
        }
        let meta = Meta::Vary(vary.to_vec()).encode();
        let res = owner.reserve(key.as_bytes(), &meta, 0).ok()?;
        owner.publish(res).ok()
    }

    /// Once the arena has gone `TRIM_IDLE` without a store, gives its free space's pages
    /// back (`ArenaOwner::trim_free`; once per idle period), counted in `counters`.
    pub fn trim_if_idle(&self, counters: &Counters) {
        let idle = common::process::monotonic_ms()
            .saturating_sub(self.last_reserve.load(Ordering::Relaxed));
        if idle < TRIM_IDLE.as_millis() as u64 || self.trimmed.load(Ordering::Relaxed) {
            return;
        }
        let mut guard = lock(&self.owner);
        self.trimmed.store(true, Ordering::Relaxed);
        let given = guard.0.trim_free();
        Counters::add(&counters.arena_trimmed_bytes, given);
    }

    /// Removes what is published for `primary` (an object, or the `Vary` stub that leads to
    /// every variant); `true` if there was something.
    pub fn remove(&self, primary: &str) -> bool {
        let Some((_, key)) = split(primary) else {
            return false;
        };
        let mut guard = lock(&self.owner);
        guard.1 += 1;
        guard.0.remove(key.as_bytes())
    }

    /// Our own pin row, for tests that look at what the workers see.
    #[cfg(test)]
    pub fn reader_for_test(&self) -> &ArenaReader {
        &self.reader
    }

    #[cfg(test)]
    fn live_objects(&self) -> u64 {
        lock(&self.owner).0.usage().live_objects
    }

    /// The arena's gauges and counters, into cached's stats slot (a single slot: stores).
    pub fn publish_gauges(&self, counters: &Counters) {
        let u = lock(&self.owner).0.usage();
        counters
            .arena_objects
            .store(u.live_objects, Ordering::Relaxed);
        counters.arena_bytes.store(u.live_bytes, Ordering::Relaxed);
        counters
            .arena_evictions
            .store(u.evictions + u.bucket_evictions, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primary_keys_split_into_site_and_arena_key() {
        assert_eq!(
            split("shop http://a.test/x?y"),
            Some(("shop", "http://a.test/x?y"))
        );
        assert_eq!(split("file:/srv/a b"), None);
        assert_eq!(split("file:/srv/a"), None);
    }

    #[test]
    fn a_publish_overtaken_by_a_removal_is_dropped_and_removal_reaches_every_variant() {
        use common::protocol::BodyLen;
        use common::stats::StatsRegion;
        let tag = format!("t{}-published", std::process::id());
        let flags = [("cached.capacity", "4m"), ("cached.max_object_size", "64k")]
            .map(|(k, v)| (k.to_string(), v.to_string()));
        let cfg = CachedConfig::load(None, &flags).unwrap();
        let stats = StatsRegion::create(&format!("/{tag}.stats"), 1).unwrap();
        let counters = stats.slot(0);
        let p = Published::open(&Names::for_instance(&tag), &cfg, counters).unwrap();
        let req = |user: &str| RequestHead {
            method: "GET".into(),
            target: "/x".into(),
            version: 11,
            client: "127.0.0.1".into(),
            body: BodyLen::None,
            headers: vec![("X-User".into(), user.as_bytes().to_vec())],
        };
        let obj = |vary: bool| {
            let headers = if vary {
                vec![("Vary".into(), b"X-User".to_vec())]
            } else {
                vec![]
            };
            crate::stored::fresh_for_test(headers, b"body")
        };
        let primary = "s http://a.test/x";
        let live = || p.live_objects();
        // Stored, then a PURGE, then the copy: the copy must not be published.
        let ticket = p.ticket();
        assert!(!p.remove(primary));
        p.publish(ticket, &cfg, primary, &req("a"), &obj(false), counters);
        assert_eq!(live(), 0);
        p.publish(p.ticket(), &cfg, primary, &req("a"), &obj(false), counters);
        assert_eq!(live(), 1);
        // Two variants behind one stub (which replaced the object): one removal hides all.
        p.publish(p.ticket(), &cfg, primary, &req("a"), &obj(true), counters);
        p.publish(p.ticket(), &cfg, primary, &req("b"), &obj(true), counters);
        assert_eq!(live(), 3, "the stub and two variants");
        assert!(p.remove(primary));
        let key = hit::key("a.test", "/x");
        assert!(matches!(p.reader.lookup(key.as_bytes()), Lookup::Miss));
        assert_eq!(counters.arena_refused.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_geometry_follows_capacity_and_object_size() {
        let cfg = CachedConfig::load(None, &[]).unwrap();
        let g = geometry(&cfg).expect("the defaults have an arena");
        assert!(g.capacity <= cfg.capacity && g.capacity > cfg.capacity - (1 << 20));
        assert!(g.max_record >= cfg.max_object_size + 4096);
        let flags = |c: &str, m: &str| {
            vec![
                ("cached.capacity".to_string(), c.to_string()),
                ("cached.max_object_size".to_string(), m.to_string()),
            ]
        };
        let small = CachedConfig::load(None, &flags("1m", "8m")).unwrap();
        let g = geometry(&small).expect("records shrink to a quarter");
        assert!(g.max_record <= small.capacity / 4);
        assert!(geometry(&CachedConfig::load(None, &flags("0", "1m")).unwrap()).is_none());
    }
}
