//! HTTP caching (issue 3): storage rules, freshness, validation, Vary, Range, invalidation,
//! purge, request collapsing with stream-through, pass-through of large objects, hits from
//! the shared arena, disk revalidation and `X-Cache`. Each test scripts the in-process origin
//! and counts the requests it receives.

use crate::origin::{Framing, Origin, Route};
use shmproxy_tests::client::{self, Conn, Expect};
use shmproxy_tests::harness::{pattern, sha256_hex, with_deadline, write_file, Instance};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);

fn instance(origin: &Origin) -> Instance {
    Instance::builder().origin(&origin.url()).start()
}

fn get_with(inst: &Instance, target: &str, headers: &[(&str, &str)]) -> client::Response {
    client::fetch(inst.addr(), "GET", target, headers, b"")
}

fn x_cache(r: &client::Response) -> String {
    r.header("x-cache").unwrap_or("-").to_string()
}

/// Counter from the stats JSON (`proxy` or `cached` section).
fn counter(inst: &Instance, section: &str, name: &str) -> u64 {
    inst.stats()[section][name]
        .as_u64()
        .unwrap_or_else(|| panic!("stats: {section}.{name} missing"))
}

#[test]
fn only_storable_answers_are_stored() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = instance(&origin);
        // (path, scripted answer, request headers, stored?)
        type Case<'a> = (&'a str, Route, &'a [(&'a str, &'a str)], bool);
        let cases: &[Case] = &[
            (
                "/fresh",
                Route::ok("a").header("Cache-Control", "max-age=60"),
                &[],
                true,
            ),
            (
                "/nostore",
                Route::ok("a").header("Cache-Control", "max-age=60, no-store"),
                &[],
                false,
            ),
            (
                "/private",
                Route::ok("a").header("Cache-Control", "private, max-age=60"),
                &[],
                false,
            ),
            (
                "/varystar",
                Route::ok("a")
                    .header("Cache-Control", "max-age=60")
                    .header("Vary", "*"),
                &[],
                false,
            ),
            ("/noinfo", Route::ok("a"), &[], false),
            (
                "/auth",
                Route::ok("a").header("Cache-Control", "max-age=60"),
                &[("Authorization", "Basic eDp5")],
                false,
            ),
            (
                "/authpublic",
                Route::ok("a").header("Cache-Control", "public, max-age=60"),
                &[("Authorization", "Basic eDp5")],
                true,
            ),
            (
                "/hop",
                Route::ok("a")
                    .header("Cache-Control", "max-age=60")
                    .header("Connection", "X-Secret")
                    .header("X-Secret", "s"),
                &[],
                true,
            ),
        ];
        for (path, route, headers, stored) in cases {
            origin.route(path, route.clone());
            let first = get_with(&inst, path, headers);
            let second = get_with(&inst, path, headers);
            assert_eq!(first.body, b"a", "{path}");
            assert_eq!(second.body, b"a", "{path}");
            let fetched = origin.count(path);
            assert_eq!(
                fetched,
                if *stored { 1 } else { 2 },
                "{path}: origin saw {fetched} requests"
            );
            if *stored {
                assert_eq!(x_cache(&second), "HIT", "{path}");
            }
            assert!(
                second.header("x-secret").is_none() && first.header("x-secret").is_none(),
                "{path}: header named in Connection leaked"
            );
        }
    });
}

#[test]
fn freshness_comes_from_s_maxage_then_max_age_then_expires_and_counts_age() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = instance(&origin);
        // s-maxage=0 wins over max-age=60: stale at once, so the origin is asked again.
        origin.route(
            "/s",
            Route::ok("s")
                .header("Cache-Control", "max-age=60, s-maxage=0")
                .header("ETag", "\"s\""),
        );
        // An Age of 100 from upstream exhausts max-age=50.
        origin.route(
            "/aged",
            Route::ok("g")
                .header("Cache-Control", "max-age=50")
                .header("Age", "100"),
        );
        // An invalid Expires means already expired.
        origin.route(
            "/badexp",
            Route::ok("e")
                .header("Expires", "0")
                .header("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        let date = common_date(0);
        let expires = common_date(60);
        origin.route(
            "/exp",
            Route::ok("x")
                .header("Date", &date)
                .header("Expires", &expires),
        );
        for (path, expected_fetches) in [("/s", 2), ("/aged", 2), ("/badexp", 2), ("/exp", 1)] {
            get_with(&inst, path, &[]);
            get_with(&inst, path, &[]);
            assert_eq!(origin.count(path), expected_fetches, "{path}");
        }
        // Age is generated on cached answers and grows.
        origin.route(
            "/age",
            Route::ok("y")
                .header("Cache-Control", "max-age=60")
                .header("Age", "7"),
        );
        get_with(&inst, "/age", &[]);
        let hit = get_with(&inst, "/age", &[]);
        let age: u64 = hit.header("age").expect("Age on a hit").parse().unwrap();
        assert!((7..60).contains(&age), "age {age}");
    });
}

/// An IMF-fixdate `offset` seconds from now.
fn common_date(offset: i64) -> String {
    let now = std::time::SystemTime::now();
    let t = if offset >= 0 {
        now + Duration::from_secs(offset as u64)
    } else {
        now - Duration::from_secs(offset.unsigned_abs())
    };
    common::http::http_date(t)
}

#[test]
fn request_cache_control_is_honoured() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = instance(&origin);
        origin.route("/r", Route::ok("r").header("Cache-Control", "max-age=60"));
        get_with(&inst, "/r", &[]);
        assert_eq!(x_cache(&get_with(&inst, "/r", &[])), "HIT");
        assert_eq!(origin.count("/r"), 1);
        get_with(&inst, "/r", &[("Cache-Control", "no-cache")]);
        assert_eq!(origin.count("/r"), 2, "no-cache goes to the origin");
        get_with(&inst, "/r", &[("Pragma", "no-cache")]);
        assert_eq!(origin.count("/r"), 3, "Pragma: no-cache goes to the origin");
        get_with(&inst, "/r", &[("Cache-Control", "max-age=0")]);
        assert_eq!(origin.count("/r"), 4, "max-age=0 goes to the origin");
        get_with(&inst, "/r", &[("Cache-Control", "min-fresh=3600")]);
        assert_eq!(
            origin.count("/r"),
            5,
            "min-fresh beyond the lifetime goes to the origin"
        );
        let r = get_with(&inst, "/never", &[("Cache-Control", "only-if-cached")]);
        assert_eq!(r.status, 504, "{}", r.describe());
        assert_eq!(origin.count("/never"), 0);
        let r = get_with(&inst, "/r", &[("Cache-Control", "only-if-cached")]);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"r"[..]));
        // max-stale lets a stale answer through without asking the origin.
        origin.route("/st", Route::ok("st").header("Cache-Control", "max-age=1"));
        get_with(&inst, "/st", &[]);
        thread::sleep(Duration::from_millis(2100)); // the subject: max-age=1 runs out
        let r = get_with(&inst, "/st", &[("Cache-Control", "max-stale=60")]);
        assert_eq!(
            (x_cache(&r).as_str(), origin.count("/st")),
            ("STALE", 1),
            "{}",
            r.describe()
        );
    });
}

#[test]
fn stale_answers_are_revalidated_and_a_304_refreshes_them() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = instance(&origin);
        let body = pattern(5000, 3);
        origin.route(
            "/v",
            Route::ok(body.clone())
                .header("Cache-Control", "max-age=0")
                .header("ETag", "\"v1\"")
                .header("X-Gen", "1"),
        );
        let first = get_with(&inst, "/v", &[]);
        assert_eq!(first.body, body);
        origin.route(
            "/v",
            Route::ok("")
                .status(304)
                .header("Cache-Control", "max-age=60")
                .header("ETag", "\"v1\"")
                .header("X-Gen", "2"),
        );
        let second = get_with(&inst, "/v", &[]);
        assert_eq!(second.status, 200);
        assert_eq!(x_cache(&second), "REVALIDATED", "{}", second.describe());
        assert_eq!(second.body, body, "the stored body is served after a 304");
        assert_eq!(
            second.header("x-gen"),
            Some("2"),
            "a 304 updates the stored headers"
        );
        assert_eq!(second.content_length(), Some(body.len() as u64));
        let reval = origin.requests_for("/v");
        assert_eq!(reval.len(), 2);
        assert_eq!(reval[1].header("if-none-match"), Some("\"v1\""));
        let third = get_with(&inst, "/v", &[]);
        assert_eq!(
            (x_cache(&third).as_str(), origin.count("/v")),
            ("HIT", 2),
            "fresh after the 304"
        );
        // Client conditionals are answered from the cache.
        let c = get_with(&inst, "/v", &[("If-None-Match", "W/\"v1\"")]);
        assert_eq!(c.status, 304, "{}", c.describe());
        assert!(c.body.is_empty());
        let c = get_with(&inst, "/v", &[("If-None-Match", "\"other\"")]);
        assert_eq!(c.status, 200);
        assert_eq!(origin.count("/v"), 2);
        // must-revalidate: a stale answer is never served when the origin fails.
        origin.route(
            "/mr",
            Route::ok("m")
                .header("Cache-Control", "max-age=1, must-revalidate")
                .header("ETag", "\"m\""),
        );
        get_with(&inst, "/mr", &[]);
        thread::sleep(Duration::from_millis(2100)); // the subject: max-age=1 runs out
        origin.route("/mr", Route::ok("down").status(503));
        let r = get_with(&inst, "/mr", &[("Cache-Control", "max-stale=60")]);
        assert_eq!(r.status, 503, "{}", r.describe());
    });
}

#[test]
fn vary_keeps_variants_side_by_side() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = instance(&origin);
        let route = |b: &str| {
            Route::ok(b.to_string())
                .header("Cache-Control", "max-age=60")
                .header("Vary", "Accept-Language")
                .header("Vary", "Accept-Encoding")
        };
        origin.route("/lang", route("english"));
        let en = [("Accept-Language", "en"), ("Accept-Encoding", "gzip")];
        let fr = [("Accept-Language", "fr"), ("Accept-Encoding", "gzip")];
        assert_eq!(get_with(&inst, "/lang", &en).body, b"english");
        origin.route("/lang", route("francais"));
        assert_eq!(get_with(&inst, "/lang", &fr).body, b"francais");
        // Normalised: whitespace around the values does not make new variants (their bytes
        // do, case included: issue 16 — a lowercased key served one token's answer to another).
        let en_again = [("Accept-Language", "en "), ("Accept-Encoding", " gzip")];
        let r = get_with(&inst, "/lang", &en_again);
        assert_eq!(
            (r.body.as_slice(), x_cache(&r).as_str()),
            (&b"english"[..], "HIT")
        );
        let r = get_with(&inst, "/lang", &fr);
        assert_eq!(
            (r.body.as_slice(), x_cache(&r).as_str()),
            (&b"francais"[..], "HIT")
        );
        assert_eq!(origin.count("/lang"), 2);
        get_with(&inst, "/lang", &[("Accept-Language", "de")]);
        assert_eq!(origin.count("/lang"), 3, "a new variant goes to the origin");
    });
}

#[test]
fn ranges_are_served_from_stored_objects_and_a_range_miss_does_not_poison() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = instance(&origin);
        let body = pattern(10_000, 9);
        origin.route(
            "/big",
            Route::ok(body.clone())
                .header("Cache-Control", "max-age=60")
                .header("Accept-Ranges", "none"),
        );
        // A range request on a miss goes upstream as is and stores nothing.
        let r = get_with(&inst, "/big", &[("Range", "bytes=0-9")]);
        assert_eq!(
            origin.requests_for("/big")[0].header("range"),
            Some("bytes=0-9")
        );
        assert_eq!(
            r.body, body,
            "the scripted origin ignores Range: the whole body comes back"
        );
        let full = get_with(&inst, "/big", &[]);
        assert_eq!(full.body, body);
        assert_eq!(origin.count("/big"), 2, "the range miss was not stored");
        let hit = get_with(&inst, "/big", &[]);
        assert_eq!(
            hit.header_all("accept-ranges"),
            vec!["bytes"],
            "a stored object is ranged by us: one Accept-Ranges, ours\n{}",
            hit.describe()
        );
        let r = get_with(&inst, "/big", &[("Range", "bytes=100-199")]);
        assert_eq!(r.status, 206, "{}", r.describe());
        assert_eq!(r.header("content-range"), Some("bytes 100-199/10000"));
        assert_eq!(r.body, &body[100..200]);
        let r = get_with(&inst, "/big", &[("Range", "bytes=-5")]);
        assert_eq!((r.status, r.body.as_slice()), (206, &body[9995..]));
        let r = get_with(&inst, "/big", &[("Range", "bytes=20000-")]);
        assert_eq!(r.status, 416);
        assert_eq!(r.header("content-range"), Some("bytes */10000"));
        let r = get_with(&inst, "/big", &[("Range", "bytes=0-1,5-6")]);
        assert_eq!(
            (r.status, r.body.len()),
            (200, body.len()),
            "multi-range answers the whole body"
        );
        assert_eq!(origin.count("/big"), 2);
    });
}

#[test]
fn unsafe_methods_and_purge_invalidate() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = instance(&origin);
        origin.route(
            "/doc",
            Route::ok("doc").header("Cache-Control", "max-age=60"),
        );
        origin.route(
            "/other",
            Route::ok("other").header("Cache-Control", "max-age=60"),
        );
        origin.route(
            "/form",
            Route::ok("posted").status(201).header("Location", "/other"),
        );
        for p in ["/doc", "/other", "/doc", "/other"] {
            get_with(&inst, p, &[]);
        }
        assert_eq!((origin.count("/doc"), origin.count("/other")), (1, 1));
        origin.route(
            "/doc",
            Route::ok("doc").header("Cache-Control", "max-age=60"),
        );
        let r = client::fetch(inst.addr(), "PUT", "/doc", &[], b"new");
        assert_eq!(r.status, 200);
        get_with(&inst, "/doc", &[]);
        assert_eq!(
            origin.count("/doc"),
            3,
            "PUT reached the origin and invalidated /doc"
        );
        let r = client::fetch(inst.addr(), "POST", "/form", &[], b"x=1");
        assert_eq!(r.status, 201);
        get_with(&inst, "/other", &[]);
        assert_eq!(
            origin.count("/other"),
            2,
            "Location of a successful POST was invalidated"
        );
        // A failed unsafe request invalidates nothing.
        origin.route("/doc", Route::ok("no").status(500));
        client::fetch(inst.addr(), "DELETE", "/doc", &[], b"");
        origin.route(
            "/doc",
            Route::ok("doc").header("Cache-Control", "max-age=60"),
        );
        get_with(&inst, "/doc", &[]);
        assert_eq!(
            origin.count("/doc"),
            4,
            "DELETE answered 500: /doc stays stored"
        );
        let purged = client::fetch(inst.addr(), "PURGE", "/doc", &[], b"");
        assert_eq!(purged.status, 200, "{}", purged.describe());
        let again = client::fetch(inst.addr(), "PURGE", "/doc", &[], b"");
        assert_eq!(again.status, 404);
        let r = get_with(&inst, "/doc", &[]);
        assert_eq!(x_cache(&r), "MISS");
        assert_eq!(origin.count("/doc"), 5);
    });
}

#[test]
fn concurrent_cold_requests_collapse_and_stream_before_the_origin_finishes() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = Instance::builder()
            .origin(&origin.url())
            .workers(2)
            .threads(128)
            .segments(256)
            .segment_size(64 << 10)
            .cached_threads(300)
            .start();
        // 0.5 s before the head, then 2 MiB in 16 pieces, 100 ms apart: the origin is
        // still sending ~1.6 s after the head.
        let body = pattern(2 << 20, 77);
        let piece = body.len() / 16;
        origin.route(
            "/herd",
            Route::ok(body.clone())
                .header("Cache-Control", "max-age=60")
                .delay(Duration::from_millis(500))
                .trickle(piece, Duration::from_millis(100)),
        );
        let clients = 200;
        let barrier = Arc::new(Barrier::new(clients));
        let start = Instant::now();
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let (addr, barrier) = (inst.addr(), barrier.clone());
                thread::spawn(move || {
                    let (got, first_body_at, err) = client::herd_get(addr, "/herd", &barrier);
                    if let Some(e) = err {
                        panic!("reading: {e}");
                    }
                    (got, first_body_at.expect("some body arrived"))
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let all_done = Instant::now();
        assert_eq!(
            origin.count("/herd"),
            1,
            "200 cold requests make one origin fetch"
        );
        let want = sha256_hex(&body);
        let origin_finished = start + Duration::from_millis(500 + 15 * 100);
        for (got, first) in &results {
            let i = client::find(got, b"\r\n\r\n").unwrap();
            assert!(
                got.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&got[..i])
            );
            assert_eq!(sha256_hex(&got[i + 4..]), want, "body verified");
            assert!(
                *first < origin_finished,
                "first body byte {:?} after start; origin finished at ~{:?}",
                *first - start,
                origin_finished - start
            );
        }
        assert!(all_done > origin_finished);
        assert!(counter(&inst, "cached", "collapsed") > 0);
    });
}

#[test]
fn an_origin_failure_mid_body_aborts_every_waiter_and_stores_nothing() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = Instance::builder()
            .origin(&origin.url())
            .threads(32)
            .segments(64)
            .start();
        let body = pattern(600_000, 5);
        // Announces more than it sends, then closes: a truncated body.
        origin.route(
            "/cut",
            Route::ok(body.clone())
                .header("Cache-Control", "max-age=60")
                .header("Content-Length", "900000")
                .framing(Framing::Close)
                .delay(Duration::from_millis(300))
                .trickle(100_000, Duration::from_millis(50)),
        );
        let handles: Vec<_> = (0..10)
            .map(|_| {
                let addr = inst.addr();
                thread::spawn(move || {
                    let mut c = Conn::connect(addr);
                    c.send(&client::request_bytes("GET", "/cut", &[], b""));
                    c.read_response(Expect::Body)
                })
            })
            .collect();
        for h in handles {
            // Closed before the announced length is what we want.
            if let Ok(r) = h.join().unwrap() {
                panic!(
                    "a truncated body was delivered as complete: {}",
                    r.describe()
                );
            }
        }
        origin.route(
            "/cut",
            Route::ok("whole").header("Cache-Control", "max-age=60"),
        );
        let r = get_with(&inst, "/cut", &[]);
        assert_eq!(r.body, b"whole", "nothing was stored from the failed fill");
        inst.assert_pool_idle();
    });
}

#[test]
fn large_objects_stream_through_unstored_with_flat_memory() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = Instance::builder()
            .origin(&origin.url())
            .cached_arg("--max-object-size")
            .cached_arg("1048576")
            .start();
        let body = pattern(256 << 20, 1);
        origin.route(
            "/huge",
            Route::ok(body.clone()).header("Cache-Control", "max-age=60"),
        );
        let mut c = Conn::connect(inst.addr());
        c.set_read_timeout(Duration::from_secs(60));
        let r = c.get("/huge");
        assert_eq!(r.body.len(), body.len());
        assert!(r.body == body);
        drop(r);
        get_with(&inst, "/huge", &[]);
        assert_eq!(
            origin.count("/huge"),
            2,
            "larger than max_object_size: not stored"
        );
        let proxy = inst.proxy_pid().unwrap();
        let mut pids = shmproxy_tests::harness::descendants(proxy);
        pids.extend([proxy, inst.cached_pid().unwrap()]);
        for pid in pids {
            let hwm = peak_rss_kib(pid);
            assert!(
                hwm < 96 * 1024,
                "pid {pid} peaked at {hwm} KiB while 256 MiB streamed through"
            );
        }
    });
}

fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn hot_objects_come_from_the_arena_within_their_lifetime() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = Instance::builder().origin(&origin.url()).workers(1).start();
        origin.route(
            "/hot",
            Route::ok("hot").header("Cache-Control", "max-age=2"),
        );
        let mut c = inst.conn();
        assert_eq!(x_cache(&c.get("/hot")), "MISS");
        // cached publishes it in the arena right after it answered.
        shmproxy_tests::harness::poll_until(Duration::from_secs(5), "/hot in the arena", || {
            let r = c.get("/hot");
            r.header("cache-status")
                .is_some_and(|s| s.ends_with("; detail=arena"))
                .then_some(())
        });
        let before = counter(&inst, "proxy", "arena_hits");
        for _ in 0..20 {
            let r = c.get("/hot");
            assert_eq!(
                (r.body.as_slice(), x_cache(&r).as_str()),
                (&b"hot"[..], "HIT")
            );
            assert!(r
                .header("cache-status")
                .unwrap()
                .ends_with("; detail=arena"));
        }
        assert!(
            counter(&inst, "proxy", "arena_hits") >= before + 20,
            "answered from the arena"
        );
        assert_eq!(
            counter(&inst, "cached", "l2_hits"),
            0,
            "without reaching cached"
        );
        // Never past freshness (the subject: the time runs out).
        thread::sleep(Duration::from_millis(2200));
        c.get("/hot");
        assert_eq!(origin.count("/hot"), 2);
        // Purges reach the arena.
        let p = client::fetch(inst.addr(), "PURGE", "/hot", &[], b"");
        assert_eq!(p.status, 200);
        c.get("/hot");
        assert_eq!(origin.count("/hot"), 3);
    });
}

#[test]
fn disk_objects_are_validated_and_refreshed_when_the_file_changes() {
    with_deadline(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), "page.txt", b"version one");
        let inst = Instance::builder().root(dir.path()).start();
        let a = inst.get("/page.txt");
        let etag = a.header("etag").expect("ETag").to_string();
        assert!(a.header("last-modified").is_some());
        let nm = get_with(&inst, "/page.txt", &[("If-None-Match", &etag)]);
        assert_eq!(nm.status, 304);
        let r = get_with(&inst, "/page.txt", &[("Range", "bytes=8-10")]);
        assert_eq!((r.status, r.body.as_slice()), (206, &b"one"[..]));
        thread::sleep(Duration::from_millis(20)); // a later mtime than the first version's
        write_file(dir.path(), "page.txt", b"version two!");
        thread::sleep(Duration::from_millis(1200)); // the default revalidation interval is 1 s
        let b = inst.get("/page.txt");
        assert_eq!(b.body, b"version two!");
        assert_ne!(b.header("etag").unwrap(), etag);
    });
}

#[test]
fn cache_status_accompanies_every_answer_with_ours_last() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = instance(&origin);
        // The node defaults to the host name; RFC 9211 §2: ours is the last member.
        let me = common::node::cache_name(&common::node::default_name());
        let cs = |r: &client::Response| r.header_all("cache-status").join(", ").replace(&me, "ME");
        origin.route(
            "/cs",
            Route::ok("a")
                .header("Cache-Control", "max-age=60")
                .header("Cache-Status", "origin-cache; hit"),
        );
        let miss = get_with(&inst, "/cs", &[]);
        assert_eq!(
            cs(&miss),
            "origin-cache; hit, ME; fwd=uri-miss; fwd-status=200; stored"
        );
        let hit = get_with(&inst, "/cs", &[]);
        assert!(
            cs(&hit).starts_with("origin-cache; hit, ME; hit; ttl="),
            "{}",
            cs(&hit)
        );
        let post = client::fetch(inst.addr(), "POST", "/echo", &[], b"x");
        assert_eq!(cs(&post), "ME; fwd=method; fwd-status=200");
        origin.route(
            "/rv",
            Route::ok("r")
                .header("Cache-Control", "max-age=0")
                .header("ETag", "\"r\""),
        );
        get_with(&inst, "/rv", &[]);
        origin.route("/rv", Route::ok("").status(304).header("ETag", "\"r\""));
        let rv = get_with(&inst, "/rv", &[]);
        assert_eq!(cs(&rv), "ME; fwd=stale; fwd-status=304");
        origin.route(
            "/se",
            Route::ok("s").header("Cache-Control", "max-age=1, stale-if-error=60"),
        );
        get_with(&inst, "/se", &[]);
        thread::sleep(Duration::from_millis(1300)); // the subject: max-age=1 runs out
        origin.route("/se", Route::ok("down").status(503));
        let se = get_with(&inst, "/se", &[]);
        assert_eq!(
            cs(&se),
            "ME; fwd=stale; fwd-status=503; detail=stale-if-error"
        );
        let stats = get_with(&inst, "/__shmproxy/stats", &[]);
        assert_eq!(cs(&stats), "ME; fwd=bypass");
        let none = get_with(&inst, "/nothing-here", &[]);
        assert_eq!(cs(&none), "ME; fwd=uri-miss; fwd-status=404");
    });
}
