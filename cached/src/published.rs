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
//! process, crashed or stopped gracefully while the proxy master runs (dropping the owner
//! lets go of it; it is unlinked only when no master is alive, see `common::arena`,
//! Lifetime): a restarted `cached` adopts it (what it held stays served), and workers keep
//! serving fresh hits from it while `cached` is down. A fill of a declared length may be
//! published while it arrives ([`Published::begin`], then [`Streaming::write`] per piece and
//! [`Published::finish`] once stored): its record is exposed as it is written, workers stream
//! it, and the fill's collapsed waiters are sent there. Files of the document root are
//! published apart (`published_file`, [`Published::publish_file`]). Called by `Ctx::store`,
//! `Ctx::remove`, `Ctx::publish_file` and `fill::relay`; nothing else writes the arena.

#[path = "published_file.rs"]
mod file;

use crate::stored::{ArenaBody, Body, Stored, Validity};
use common::arena::{
    self, ArenaConfig, ArenaOwner, ArenaReader, Lookup, Pinned, Reservation, Start,
};
use common::config::{CachedConfig, SetCookie};
use common::hit::{self, Meta, Object};
use common::http::header;
use common::protocol::{FollowArena, RequestHead};
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
    /// The arena keys of the files published (`published_file`).
    files: file::Files,
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

/// The arena key of `primary` (see [`split`]).
pub fn arena_key(primary: &str) -> Option<&str> {
    split(primary).map(|(_, key)| key)
}

/// The arena key of a primary cache key of origin mode (`SITE http://HOST TARGET`) and the
/// site's name; `None` for other keys (files are published apart, under the keys of the
/// requests that named them: `published_file`).
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
            files: file::Files::default(),
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
    /// removed since `ticket` (the answer may predate a PURGE): pieces (`206`) and answers
    /// larger than a record are not (they stay served by `cached`), files go through
    /// [`Published::publish_file`]. A refusal of
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
        let headers = obj.headers.to_vec();
        let head = Head {
            status: obj.status,
            headers: &headers,
            validity: &obj.validity,
            response_time: obj.response_time,
            initial_age: obj.initial_age,
        };
        let (meta, vary) = head.meta(cfg, site)?;
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

    /// Starts publishing a fill's answer while it arrives: reserves its record (a body of
    /// `body_len`, the declared length) and exposes it, so workers find it at once and stream
    /// it as [`Streaming::write`] commits its bytes (the fill's collapsed waiters are told to
    /// follow it). `None` — the answer is published the ordinary way once stored, if at all —
    /// for what the arena does not keep (files, pieces, answers with `Vary`, larger than a
    /// record) or when its space is held.
    pub fn begin(
        &self,
        cfg: &CachedConfig,
        primary: &str,
        head: &Head<'_>,
        body_len: u64,
    ) -> Option<Streaming> {
        let (site, key) = split(primary)?;
        let (meta, vary) = head.meta(cfg, site)?;
        if !vary.is_empty() {
            return None;
        }
        let mut guard = lock(&self.owner);
        self.last_reserve
            .store(common::process::monotonic_ms(), Ordering::Relaxed);
        self.trimmed.store(false, Ordering::Relaxed);
        let mut res = guard.0.reserve(key.as_bytes(), &meta, body_len).ok()?;
        guard.0.expose(&mut res);
        Some(Streaming {
            res,
            key: key.to_string(),
        })
    }

    /// Ends a streamed fill that was stored: its record becomes an ordinary object in place,
    /// and where the arena keeps its body is returned (as [`Published::publish`] does). Not
    /// if it was removed or replaced meanwhile (a PURGE during the fill), nor if its body is
    /// incomplete (it is abandoned: readers stop).
    pub fn finish(&self, s: Streaming) -> Option<ArenaBody> {
        let mut guard = lock(&self.owner);
        if let Err(e) = guard.0.publish(s.res) {
            log::debug!("streamed fill of {} not published: {e}", s.key);
            return None;
        }
        // Still under the lock, so nothing replaced it yet: the record just published.
        let (len, sum) = guard.0.body_of(s.key.as_bytes())?;
        Some(ArenaBody {
            key: s.key,
            len,
            sum,
        })
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
        let mut guard = lock(&self.owner);
        guard.1 += 1;
        let Some((_, key)) = split(primary) else {
            return self.remove_file(&mut guard.0, primary);
        };
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

/// What the arena's metadata of an answer is made of (a stored answer's, or a fill's head).
pub struct Head<'a> {
    pub status: u16,
    pub headers: &'a [(String, Vec<u8>)],
    pub validity: &'a Validity,
    pub response_time: std::time::SystemTime,
    pub initial_age: std::time::Duration,
}

impl Head<'_> {
    /// The encoded metadata for site `site`, and the fields the answer varies on; `None` for
    /// what the arena does not keep (pieces, answers without HTTP freshness).
    fn meta(&self, cfg: &CachedConfig, site: &str) -> Option<(Vec<u8>, Vec<String>)> {
        let Validity::Http {
            lifetime,
            must_revalidate,
            no_cache,
            ..
        } = *self.validity
        else {
            return None;
        };
        if self.status == 206 {
            return None;
        }
        let mut headers = self.headers.to_vec();
        if cfg.strip_targeted {
            common::cache_policy::strip_fields(&mut headers, &cfg.targeted_cache_control);
        }
        let vary = common::cache_policy::all_tokens(self.headers, "vary");
        // As `answer::stored` grants: only answers everyone may reuse as they are.
        let show_ttl = !no_cache
            && self.status == 200
            && vary.is_empty()
            && (cfg.set_cookie == SetCookie::Store || header(self.headers, "set-cookie").is_none());
        let meta = Meta::Object(Object {
            status: self.status,
            headers,
            response_time: self.response_time,
            initial_age: self.initial_age,
            lifetime,
            must_revalidate,
            no_cache,
            show_ttl,
            site: site.to_string(),
            file: None,
        })
        .encode();
        Some((meta, vary))
    }
}

/// A fill being published as it arrives ([`Published::begin`]); dropping it unfinished
/// abandons its record (the workers streaming it stop, short of the declared length).
pub struct Streaming {
    res: Reservation,
    key: String,
}

impl Streaming {
    /// What a collapsed waiter is told to follow.
    pub fn follow(&self) -> FollowArena {
        FollowArena {
            key: self.key.clone(),
            generation: self.res.generation(),
        }
    }

    /// Commits body bytes as they arrive (those past the declared length are not kept: the
    /// fill fails then anyway).
    pub fn write(&mut self, chunk: &[u8]) {
        self.res.write(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::stats::StatsRegion;

    /// The arena of a 4 MiB cache for objects up to 64 KiB, of instance `t<pid>-<name>`, with
    /// the stats region its counters live in.
    fn small_arena(name: &str) -> (CachedConfig, StatsRegion, Published) {
        let tag = format!("t{}-{name}", std::process::id());
        let flags = [("cached.capacity", "4m"), ("cached.max_object_size", "64k")]
            .map(|(k, v)| (k.to_string(), v.to_string()));
        let cfg = CachedConfig::load(None, &flags).unwrap();
        let stats = StatsRegion::create(&format!("/{tag}.stats"), 1).unwrap();
        let p = Published::open(&Names::for_instance(&tag), &cfg, stats.slot(0)).unwrap();
        (cfg, stats, p)
    }

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
        let (cfg, stats, p) = small_arena("published");
        let counters = stats.slot(0);
        let req = |user: &str| crate::stored::request_for_test("GET", "/x", &[("X-User", user)]);
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
    fn a_streamed_fill_is_readable_while_it_arrives_and_published_in_place_unless_purged() {
        use common::arena::Fill;
        let (cfg, _stats, p) = small_arena("pubstream");
        let obj = crate::stored::fresh_for_test(vec![], b"");
        fn head<'a>(obj: &'a Stored, headers: &'a [(String, Vec<u8>)]) -> Head<'a> {
            Head {
                status: 200,
                headers,
                validity: &obj.validity,
                response_time: obj.response_time,
                initial_age: obj.initial_age,
            }
        }
        let vary = vec![("Vary".to_string(), b"X-User".to_vec())];
        let primary = "s http://a.test/s";
        let key = hit::key("a.test", "/s");
        let mut s = p
            .begin(&cfg, primary, &head(&obj, &[]), 8)
            .expect("streamed");
        assert_eq!(s.follow().key, key);
        s.write(b"half");
        let Lookup::Hit(pin) = p.reader.lookup(key.as_bytes()) else {
            panic!("exposed at once")
        };
        assert_eq!(pin.fill(), Fill::Partial(4));
        assert_eq!(pin.generation(), s.follow().generation);
        s.write(b"done");
        assert!(p.finish(s).is_some());
        assert_eq!(pin.fill(), Fill::Complete);
        assert_eq!(p.live_objects(), 1);
        drop(pin);
        // A PURGE during the fill: nothing is published.
        let mut s = p.begin(&cfg, primary, &head(&obj, &[]), 4).unwrap();
        assert!(p.remove(primary));
        s.write(b"late");
        assert!(p.finish(s).is_none());
        assert_eq!(p.live_objects(), 0);
        assert!(matches!(p.reader.lookup(key.as_bytes()), Lookup::Miss));
        // Files, and answers with Vary (their variants need a stub), are not streamed.
        assert!(p.begin(&cfg, "file:/srv/x", &head(&obj, &[]), 4).is_none());
        assert!(p.begin(&cfg, primary, &head(&obj, &vary), 4).is_none());
        // An abandoned fill (dropped unfinished) leaves nothing behind.
        let s = p.begin(&cfg, primary, &head(&obj, &[]), 4).unwrap();
        drop(s);
        assert!(matches!(p.reader.lookup(key.as_bytes()), Lookup::Miss));
        assert_eq!(p.live_objects(), 0);
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
