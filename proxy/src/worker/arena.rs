//! The worker's view of the shared cache arena (`common::arena`, written by `cached`): a
//! fresh hit is looked up and pinned here, decided by the same rules `cached` applies
//! (`common::hit`, `common::cache_policy`), and answered by `respond::arena_hit` straight
//! from shared memory, with no message to `cached`, which may even be down. Anything else
//! (not stored, stale, a failed precondition, credentials, no pin slot, no arena)
//! goes to `cached` as before. A file of the document root (disk mode) is served only while
//! a `stat` of its path finds the file `cached` read (`hit::FileId::matches`): changed or
//! gone, it is a miss, and `cached` reads it again. The arena is opened on first use and
//! again when it was unlinked (it is then `closed`: the instance stops, or `cached` replaced
//! it) or while there is none (at most every [`RETRY_MS`]); a `cached` that stops while the
//! master runs keeps it open.
//!
//! A record still being filled (`cached` exposes a fill of a declared length as it arrives) is
//! found the same way and answered by streaming its body as it is committed
//! (`respond::arena_hit`); a collapsed waiter that `cached` sends here ([`ArenaView::follow`],
//! the wire answer `ResponseHead::follow`) is answered alike, its segment already free.

use common::arena::{Arena, ArenaReader, Fill, Lookup, Pinned};
use common::cache_policy::RequestRules;
use common::hit::{self, Meta, Object};
use common::protocol::FollowArena;
use common::request::Request;
use common::stats::Counters;
use common::Names;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// Shortest and longest nap of a worker waiting for a fill's record to appear.
const NAP_MIN: Duration = Duration::from_micros(500);
const NAP_MAX: Duration = Duration::from_millis(5);

/// How often a worker without an arena looks for one.
const RETRY_MS: u64 = 200;

pub struct ArenaView {
    names: Names,
    reader: RwLock<Option<Arc<ArenaReader>>>,
    /// Monotonic ms before which no open is tried again.
    next_try: AtomicU64,
}

/// A fresh hit: the pinned record (its body stays intact while this lives), the answer it
/// gives the request, and the site that stored it (for the access log).
pub struct Hit {
    pub pinned: Pinned,
    pub answer: hit::Answer,
    pub site: String,
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
        let counter = match &found {
            Some(h) if h.pinned.fill() != Fill::Complete => &counters.arena_streams,
            Some(_) => &counters.arena_hits,
            None => &counters.arena_misses,
        };
        Counters::inc(counter);
        found
    }

    /// The record `cached` told a collapsed waiter to follow (or a newer object of its key),
    /// pinned, with the answer it gives `req`; `None` if it is gone (its fill failed, it was
    /// removed or replaced by something else). No freshness check: it is the answer of the
    /// fill the request joined in `cached`, as a waiter there would get it (`cached` sends no
    /// conditional request here, so the answer is the whole object).
    pub fn follow(&self, counters: &Counters, req: &Request, f: &FollowArena) -> Option<Hit> {
        let found = self.followed(counters, req, f);
        Self::count(counters, found.as_ref());
        found
    }

    /// Waits (naps of at most [`NAP_MAX`], until `until`) for the record of a fill `cached` said
    /// has none yet to appear under `key`, and follows it (counted as [`ArenaView::follow`]).
    /// Unlike a pointer to a record, this one names none: what is found must be fresh for the
    /// request (an older copy of the key that is not is never taken for the fill's).
    pub fn await_record(
        &self,
        counters: &Counters,
        req: &Request,
        key: &str,
        until: Instant,
    ) -> Option<Hit> {
        let mut nap = NAP_MIN;
        loop {
            let found = self
                .reader()
                .and_then(|r| match decoded(&r, counters, key)? {
                    (p, Meta::Object(o)) => answer(counters, p, o, req),
                    _ => None,
                });
            if let Some(h) = found {
                Self::count(counters, Some(&h));
                return Some(h);
            }
            let left = until.saturating_duration_since(Instant::now());
            if key.is_empty() || left.is_zero() {
                return None;
            }
            std::thread::sleep(nap.min(left));
            nap = (nap * 2).min(NAP_MAX);
        }
    }

    fn followed(&self, counters: &Counters, req: &Request, f: &FollowArena) -> Option<Hit> {
        let r = self.reader()?;
        match decoded(&r, counters, &f.key) {
            Some((p, Meta::Object(o)))
                if p.generation() >= f.generation
                    && o.file.as_ref().is_none_or(|f| f.matches()) =>
            {
                let age = o.age(SystemTime::now());
                o.answer(age, p.body_len(), &req.headers).map(|answer| Hit {
                    answer,
                    pinned: p,
                    site: o.site,
                })
            }
            _ => None,
        }
    }

    /// Counts a followed record: a stream, a hit (complete by now), or a miss.
    fn count(counters: &Counters, found: Option<&Hit>) {
        let counter = match found {
            Some(h) if h.pinned.fill() != Fill::Complete => &counters.arena_streams,
            Some(_) => &counters.arena_hits,
            None => &counters.arena_follow_misses,
        };
        Counters::inc(counter);
    }
}

/// The object a request selects (through the `Vary` stub of its URL, if there is one), if
/// it is fresh for the request, and what it answers.
fn find(r: &ArenaReader, counters: &Counters, req: &Request) -> Option<Hit> {
    let key = hit::key(&req.host, &req.target);
    let (pinned, object) = match decoded(r, counters, &key)? {
        (p, Meta::Object(o)) => (p, o),
        (stub, Meta::Vary(names)) => {
            // cached keys variants by the fields as forwarded to it, which may lack the
            // client's `X-Forwarded-*` (see `fetch`): such a variant is cached's to pick.
            if names
                .iter()
                .any(|n| common::request::FORWARDING.contains(&n.as_str()))
            {
                return None;
            }
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
    answer(counters, pinned, object, req)
}

/// The answer the pinned `object` gives `req`, if it is fresh for it (a file: if the file on
/// disk is still the one read, else it is counted and `cached` reads it again).
fn answer(counters: &Counters, pinned: Pinned, object: Object, req: &Request) -> Option<Hit> {
    let now = SystemTime::now();
    if !object.fresh(now, &RequestRules::of(&req.headers)) {
        return None;
    }
    if object.file.as_ref().is_some_and(|f| !f.matches()) {
        Counters::inc(&counters.arena_file_changes);
        return None;
    }
    Some(Hit {
        answer: object.answer(object.age(now), pinned.body_len(), &req.headers)?,
        pinned,
        site: object.site,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use common::arena::{ArenaConfig, ArenaOwner};
    use common::request::{parse_head, Limits, Parsed};
    use common::stats::StatsRegion;
    use std::time::Duration;

    /// A 1 MiB arena of instance `t<pid>-<name>` (its tag), the stats region a worker counts
    /// in, and a worker's view of the arena.
    fn small_arena(name: &str) -> (String, ArenaOwner, StatsRegion, ArenaView) {
        let tag = format!("t{}-{name}", std::process::id());
        let names = Names::for_instance(&tag);
        let cfg = ArenaConfig::for_capacity(1 << 20, 64 << 10, 4, 16);
        let (owner, _) = ArenaOwner::open_or_adopt(&names, cfg).unwrap();
        let stats = StatsRegion::create(&format!("/{tag}.stats"), 1).unwrap();
        (tag, owner, stats, ArenaView::new(&names))
    }

    fn request(lines: &str) -> Request {
        let limits = Limits {
            max_header_bytes: 16384,
            max_headers: 100,
        };
        let head = format!("GET {lines}\r\n\r\n").replace('|', "\r\n");
        match parse_head(&limits, head.as_bytes()) {
            Parsed::Complete(r, _) => r,
            _ => panic!("not a request: {head:?}"),
        }
    }

    fn object(body: &str, age: u64) -> Vec<u8> {
        Meta::Object(Object {
            status: 200,
            headers: vec![("X-Body".into(), body.as_bytes().to_vec())],
            response_time: SystemTime::now() - Duration::from_secs(age),
            initial_age: Duration::ZERO,
            lifetime: Duration::from_secs(60),
            must_revalidate: false,
            no_cache: false,
            show_ttl: true,
            site: "s".into(),
            file: None,
        })
        .encode()
    }

    fn publish(owner: &mut ArenaOwner, key: &str, meta: &[u8], body: &[u8]) -> u64 {
        let mut res = owner
            .reserve(key.as_bytes(), meta, body.len() as u64)
            .unwrap();
        res.write(body);
        owner.publish(res).unwrap()
    }

    fn body(h: &Hit) -> Vec<u8> {
        let mut b = vec![0; h.pinned.body_len() as usize];
        h.pinned.read_body(0, &mut b);
        b
    }

    #[test]
    fn records_being_filled_are_found_and_followed_and_counted_as_streams() {
        let (_, mut owner, stats, view) = small_arena("wstream");
        let counters = stats.slot(0);
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let key = hit::key("a.test", "/f");
        let mut res = owner.reserve(key.as_bytes(), &object("f", 0), 10).unwrap();
        owner.expose(&mut res);
        res.write(b"hello");
        let req = request("/f HTTP/1.1|Host: a.test");
        let h = view
            .fresh_hit(counters, &req)
            .expect("a record being filled");
        assert_eq!(h.pinned.fill(), Fill::Partial(5));
        assert_eq!(body(&h)[..5], *b"hello");
        assert_eq!(
            (get(&counters.arena_streams), get(&counters.arena_hits)),
            (1, 0)
        );
        drop(h);
        // What cached names for a collapsed waiter; a newer generation than the record's is not it.
        let f = FollowArena {
            key: key.clone(),
            generation: res.generation(),
        };
        assert!(view.follow(counters, &req, &f).is_some());
        let later = FollowArena {
            generation: res.generation() + 1,
            ..f.clone()
        };
        assert!(view.follow(counters, &req, &later).is_none());
        assert_eq!(get(&counters.arena_follow_misses), 1);
        res.write(b"world");
        owner.publish(res).unwrap();
        let h = view.follow(counters, &req, &f).expect("published in place");
        assert_eq!(
            (h.pinned.fill(), body(&h)),
            (Fill::Complete, b"helloworld".to_vec())
        );
        assert_eq!(get(&counters.arena_hits), 1);
        drop(h);
        // An abandoned fill is gone for lookups and followers alike.
        let key = hit::key("a.test", "/g");
        let mut res = owner.reserve(key.as_bytes(), &object("g", 0), 10).unwrap();
        owner.expose(&mut res);
        let f = FollowArena {
            key,
            generation: res.generation(),
        };
        drop(res);
        let req = request("/g HTTP/1.1|Host: a.test");
        assert!(view.fresh_hit(counters, &req).is_none());
        assert!(view.follow(counters, &req, &f).is_none());
        // Waiting for a fill that has no record yet: a stale older copy is not taken for it,
        // the fill's record is, once it is exposed.
        let key = hit::key("a.test", "/h");
        publish(&mut owner, &key, &object("old", 61), b"old");
        let req = request("/h HTTP/1.1|Host: a.test");
        let soon = || Instant::now() + Duration::from_millis(20);
        assert!(view.await_record(counters, &req, &key, soon()).is_none());
        let mut res = owner.reserve(key.as_bytes(), &object("h", 0), 3).unwrap();
        owner.expose(&mut res);
        let h = view
            .await_record(counters, &req, &key, soon())
            .expect("the fill's record");
        assert_eq!(h.pinned.generation(), res.generation());
    }

    #[test]
    fn hits_follow_vary_stubs_and_freshness_and_corrupt_metadata_is_a_counted_miss() {
        let (tag, mut owner, stats, view) = small_arena("warena");
        let counters = stats.slot(0);
        let hit = |target: &str| view.fresh_hit(counters, &request(target));

        publish(
            &mut owner,
            &hit::key("a.test", "/o"),
            &object("o", 0),
            b"plain",
        );
        let h = hit("/o HTTP/1.1|Host: a.test").expect("a fresh object");
        assert_eq!((body(&h), h.site.as_str()), (b"plain".to_vec(), "s"));
        assert!(
            hit("/o HTTP/1.1|Host: b.test").is_none(),
            "another host's key"
        );
        publish(
            &mut owner,
            &hit::key("a.test", "/aged"),
            &object("a", 5),
            b"aged",
        );
        assert!(hit("/aged HTTP/1.1|Host: a.test").is_some());
        assert!(
            hit("/aged HTTP/1.1|Host: a.test|Cache-Control: max-age=3").is_none(),
            "older than the request accepts"
        );
        publish(
            &mut owner,
            &hit::key("a.test", "/stale"),
            &object("s", 61),
            b"old",
        );
        assert!(
            hit("/stale HTTP/1.1|Host: a.test").is_none(),
            "stale: cached's"
        );
        let h = hit("/o HTTP/1.1|Host: a.test|If-None-Match: *").expect("answered here");
        assert_eq!((h.answer.status, h.answer.body), (304, None));
        assert!(
            hit("/o HTTP/1.1|Host: a.test|If-Match: \"x\"").is_none(),
            "412: cached's"
        );
        let h = hit("/o HTTP/1.1|Host: a.test|Range: bytes=1-2").expect("a range, here");
        assert_eq!((h.answer.status, h.answer.body), (206, Some(1..3)));
        assert!(hit("/o HTTP/1.1|Host: a.test|Authorization: Basic eDp5").is_none());

        // A file: served while the file on disk is the one read, a counted miss after.
        let dir = std::env::temp_dir().join(format!("{tag}-files"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = std::fs::canonicalize(&dir).unwrap().join("f.txt");
        std::fs::write(&path, b"file").unwrap();
        let m = std::fs::metadata(&path).unwrap();
        let file = Object {
            file: Some(hit::FileId {
                path: path.to_string_lossy().into_owned(),
                len: m.len(),
                mtime_ns: hit::FileId::mtime_ns(&m),
                ino: std::os::unix::fs::MetadataExt::ino(&m),
            }),
            ..match Meta::decode(&object("f", 0)).unwrap() {
                Meta::Object(o) => o,
                Meta::Vary(_) => unreachable!(),
            }
        };
        let meta = Meta::Object(file).encode();
        publish(&mut owner, &hit::key("a.test", "/f.txt"), &meta, b"file");
        let h = hit("/f.txt HTTP/1.1|Host: a.test").expect("the file, unchanged");
        assert!(h.answer.fields.iter().all(|(k, _)| k != "Age"));
        drop(h);
        std::fs::write(&path, b"changed").unwrap();
        let changes = counters.arena_file_changes.load(Ordering::Relaxed);
        assert!(hit("/f.txt HTTP/1.1|Host: a.test").is_none());
        assert_eq!(
            counters.arena_file_changes.load(Ordering::Relaxed),
            changes + 1
        );
        std::fs::remove_dir_all(&dir).unwrap();

        let key = hit::key("a.test", "/v");
        let vary = vec!["x-user".to_string()];
        let stub = publish(&mut owner, &key, &Meta::Vary(vary.clone()).encode(), b"");
        let alice = [("X-User".to_string(), b"alice".to_vec())];
        let variant = hit::variant_key(&key, stub, &vary, &alice);
        publish(&mut owner, &variant, &object("alice", 0), b"for alice");
        let h = hit("/v HTTP/1.1|Host: a.test|X-User: alice").expect("alice's variant");
        assert_eq!(body(&h), b"for alice");
        drop(h);
        assert!(hit("/v HTTP/1.1|Host: a.test|X-User: bob").is_none());
        assert!(hit("/v HTTP/1.1|Host: a.test").is_none());
        // A new stub (other fields, or after a PURGE) hides the old variants at once.
        publish(&mut owner, &key, &Meta::Vary(vary.clone()).encode(), b"");
        assert!(hit("/v HTTP/1.1|Host: a.test|X-User: alice").is_none());
        // Variants by a forwarding field are cached's to pick.
        let key = hit::key("a.test", "/xff");
        let xff = vec!["x-forwarded-for".to_string()];
        let stub = publish(&mut owner, &key, &Meta::Vary(xff.clone()).encode(), b"");
        let fields = [("X-Forwarded-For".to_string(), b"1.2.3.4".to_vec())];
        let variant = hit::variant_key(&key, stub, &xff, &fields);
        publish(&mut owner, &variant, &object("x", 0), b"x");
        assert!(hit("/xff HTTP/1.1|Host: a.test|X-Forwarded-For: 1.2.3.4").is_none());

        let bad = counters.arena_bad_meta.load(Ordering::Relaxed);
        publish(
            &mut owner,
            &hit::key("a.test", "/bad"),
            b"not metadata",
            b"x",
        );
        assert!(hit("/bad HTTP/1.1|Host: a.test").is_none());
        assert_eq!(counters.arena_bad_meta.load(Ordering::Relaxed), bad + 1);
        assert!(counters.arena_hits.load(Ordering::Relaxed) >= 2);

        // Removed (PURGE): no worker finds it any more.
        assert!(owner.remove(hit::key("a.test", "/o").as_bytes()));
        assert!(hit("/o HTTP/1.1|Host: a.test").is_none());
        // The owner stopped: the view lets go of the closed arena.
        drop(owner);
        assert!(hit("/aged HTTP/1.1|Host: a.test").is_none());
        assert!(view.reader().is_none());
    }
}
