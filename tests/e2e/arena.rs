//! Hits from the shared cache arena (issue 11): a worker answers a fresh hit from the arena
//! `cached` publishes in, without a message to `cached` — so fresh hits outlive a `kill -9`
//! or a SIGTERM of `cached`, and a restarted `cached` adopts what the arena holds (the arena
//! goes with the last daemon out, in either order); a worker killed while it
//! sends a hit has its pins released by the master, so its space is reused; `Vary` variants
//! are told apart; a PURGE is seen by every worker at once; ranges are answered there as
//! cached answers them; files of the document root are served from it while unchanged on
//! disk.

use crate::origin::{Origin, Route};
use shmproxy_tests::client::{self, request_bytes, Response};
use shmproxy_tests::harness::{
    pattern, poll_until, sha256_hex, with_deadline, write_file, Instance,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

fn counter(inst: &Instance, section: &str, name: &str) -> u64 {
    inst.stats()[section][name]
        .as_u64()
        .unwrap_or_else(|| panic!("stats: {section}.{name} missing"))
}

fn get_as(inst: &Instance, target: &str, headers: &[(&str, &str)]) -> Response {
    client::fetch(inst.addr(), "GET", target, headers, b"")
}

/// Waits until the answer to `target` with `headers` is published: `cached` copies it into
/// the arena after it answered and stored it (requests meanwhile are hits in `cached`).
fn until_published_as(inst: &Instance, target: &str, headers: &[(&str, &str)]) {
    poll_until(Duration::from_secs(10), "the object in the arena", || {
        let r = get_as(inst, target, headers);
        r.header("cache-status")
            .is_some_and(|s| s.contains("detail=arena"))
            .then_some(())
    });
}

fn until_published(inst: &Instance, target: &str) {
    until_published_as(inst, target, &[]);
}

/// A hit the worker answered from the arena itself.
#[track_caller]
fn assert_arena_hit(r: &Response, body: &[u8]) {
    assert_eq!(
        (r.status, r.header("x-cache")),
        (200, Some("HIT")),
        "{}",
        r.describe()
    );
    assert!(
        r.header("cache-status")
            .is_some_and(|s| s.starts_with("shmproxy-")
                && s.contains("; hit")
                && s.contains("detail=arena")),
        "not answered from the arena: {}",
        r.describe()
    );
    assert!(r.body == body, "wrong body: {}", r.describe());
}

#[test]
fn fresh_hits_outlive_a_killed_cached_and_its_successor_adopts_them() {
    with_deadline(T, || {
        let origin = Origin::start();
        origin.route(
            "/kept",
            Route::ok("kept\n").header("Cache-Control", "max-age=600"),
        );
        let mut inst = Instance::builder().origin(&origin.url()).workers(2).start();
        assert_eq!(inst.get("/kept").header("x-cache"), Some("MISS"));
        until_published(&inst, "/kept");

        inst.kill_cached();
        // Fresh connections: both workers answer, neither asks cached.
        for _ in 0..10 {
            assert_arena_hit(&inst.get("/kept"), b"kept\n");
        }
        // What is not stored still needs cached.
        let r = inst.get("/never-stored");
        assert_eq!(r.status, 503, "{}", r.describe());

        inst.start_cached();
        assert_eq!(counter(&inst, "cached", "arena_adoptions"), 1);
        for _ in 0..4 {
            assert_arena_hit(&inst.get("/kept"), b"kept\n");
        }
        assert_eq!(
            origin.count("/kept"),
            1,
            "stored before the kill: no new fetch"
        );
        // The successor knows the adopted object: a PURGE removes it from the arena.
        let p = client::fetch(inst.addr(), "PURGE", "/kept", &[], b"");
        assert_eq!(p.status, 200, "{}", p.describe());
        assert_eq!(inst.get("/kept").header("x-cache"), Some("MISS"));
        assert_eq!(origin.count("/kept"), 2);
    });
}

/// Acceptance 3 under load: clients hammer fresh hits on keep-alive connections while
/// `cached` is killed and restarted; none of them gets anything but the stored answer, misses
/// get 503 meanwhile, and nothing is fetched again.
#[test]
fn fresh_hits_under_load_are_answered_while_cached_is_killed_and_restarted() {
    with_deadline(T, || {
        let origin = Origin::start();
        let paths: Vec<String> = (0..8).map(|i| format!("/load-{i}")).collect();
        let bodies: Vec<Vec<u8>> = (0..8).map(|i| pattern(1000 + 3000 * i, i as u64)).collect();
        for (p, b) in paths.iter().zip(&bodies) {
            origin.route(
                p,
                Route::ok(b.clone()).header("Cache-Control", "max-age=600"),
            );
        }
        let mut inst = Instance::builder().origin(&origin.url()).workers(2).start();
        for p in &paths {
            assert_eq!(inst.get(p).status, 200);
            until_published(&inst, p);
        }
        let addr = inst.addr();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let answered = std::sync::atomic::AtomicU64::new(0);
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        thread::scope(|s| {
            for t in 0..4 {
                let (paths, bodies, stop, answered) = (&paths, &bodies, &stop, &answered);
                s.spawn(move || {
                    let mut c = client::Conn::connect(addr);
                    let mut n = t;
                    while !stop.load(relaxed) {
                        let r = c.get(&paths[n % paths.len()]);
                        assert_eq!(r.status, 200, "a fresh hit under load: {}", r.describe());
                        assert!(r.body == bodies[n % paths.len()], "wrong body");
                        answered.fetch_add(1, relaxed);
                        n += 1;
                    }
                });
            }
            thread::sleep(Duration::from_millis(300));
            inst.kill_cached();
            let at_kill = answered.load(relaxed);
            for i in 0..5 {
                let r = inst.get(&format!("/miss-{i}"));
                assert_eq!(
                    r.status,
                    503,
                    "a miss while cached is down: {}",
                    r.describe()
                );
            }
            thread::sleep(Duration::from_millis(500));
            let down = answered.load(relaxed) - at_kill;
            inst.start_cached();
            thread::sleep(Duration::from_millis(300));
            stop.store(true, relaxed);
            assert!(
                down > 100,
                "only {down} fresh hits answered while cached was down"
            );
        });
        assert_eq!(counter(&inst, "cached", "arena_adoptions"), 1);
        for p in &paths {
            assert_eq!(origin.count(p), 1, "{p}: fetched again");
        }
        assert_eq!(inst.get("/load-0").header("x-cache"), Some("HIT"));
    });
}

/// A graceful stop of `cached` while the master runs keeps the arena for its successor.
#[test]
fn fresh_hits_outlive_a_stopped_cached_and_its_successor_adopts_them() {
    with_deadline(T, || {
        let origin = Origin::start();
        for p in ["/a", "/b"] {
            origin.route(
                p,
                Route::ok("kept\n").header("Cache-Control", "max-age=600"),
            );
        }
        let mut inst = Instance::builder().origin(&origin.url()).workers(2).start();
        for p in ["/a", "/b"] {
            assert_eq!(inst.get(p).header("x-cache"), Some("MISS"));
            until_published(&inst, p);
        }

        inst.stop_cached();
        assert!(
            inst.shm_objects().iter().any(|n| n.ends_with(".arena")),
            "the arena went with cached: {:?}",
            inst.shm_objects()
        );
        for _ in 0..10 {
            for p in ["/a", "/b"] {
                assert_arena_hit(&inst.get(p), b"kept\n");
            }
        }
        let r = inst.get("/never-stored");
        assert_eq!(r.status, 503, "{}", r.describe());

        inst.start_cached();
        assert_eq!(counter(&inst, "cached", "arena_adoptions"), 1);
        for p in ["/a", "/b"] {
            assert_arena_hit(&inst.get(p), b"kept\n");
            assert_eq!(
                origin.count(p),
                1,
                "{p} stored before the stop: no new fetch"
            );
        }
    });
}

/// Whatever order the instance stops in, the arena goes with the last one out.
#[test]
fn the_arena_goes_with_the_last_daemon_out_in_either_order() {
    with_deadline(T, || {
        let origin = Origin::start();
        origin.route(
            "/o",
            Route::ok("o\n").header("Cache-Control", "max-age=600"),
        );
        let arena = |inst: &Instance| inst.shm_objects().iter().any(|n| n.ends_with(".arena"));
        let stored = |inst: &mut Instance| {
            inst.get("/o");
            until_published(inst, "/o");
        };

        // cached, then the master.
        let mut inst = Instance::builder().origin(&origin.url()).start();
        stored(&mut inst);
        inst.stop_cached();
        assert!(arena(&inst), "kept while the master runs");
        inst.stop_proxy();
        assert_eq!(
            inst.shm_objects(),
            Vec::<String>::new(),
            "cached, then master"
        );

        // The master, then cached.
        let mut inst = Instance::builder().origin(&origin.url()).start();
        stored(&mut inst);
        inst.stop_proxy();
        assert!(arena(&inst), "owned by the running cached");
        inst.stop_cached();
        assert_eq!(
            inst.shm_objects(),
            Vec::<String>::new(),
            "master, then cached"
        );

        // cached crashed, then the master.
        let mut inst = Instance::builder().origin(&origin.url()).start();
        stored(&mut inst);
        inst.kill_cached();
        inst.stop_proxy();
        assert!(
            !arena(&inst),
            "cached killed, then master: {:?}",
            inst.shm_objects()
        );
        // Its stats region and request queue stay (as after any kill -9 of cached).
        shmproxy_tests::harness::remove_ipc(&inst.name);

        // cached stopped, the master stopped, a lone cached that adopts and stops.
        let mut inst = Instance::builder().origin(&origin.url()).start();
        stored(&mut inst);
        inst.stop_cached();
        inst.start_cached();
        inst.stop_proxy();
        assert!(arena(&inst), "owned by the restarted cached");
        inst.stop_cached();
        assert_eq!(
            inst.shm_objects(),
            Vec::<String>::new(),
            "restarted cached last"
        );
    });
}

#[test]
fn a_worker_killed_while_sending_a_hit_has_its_pins_released_and_the_space_reused() {
    with_deadline(T, || {
        let origin = Origin::start();
        let max_age = ("Cache-Control", "max-age=600");
        // Larger than the socket buffers of both ends: the send stalls with the object pinned.
        let big = pattern(15 << 20, 3);
        origin.route("/big", Route::ok(big.clone()).header(max_age.0, max_age.1));
        // Six of them outgrow the ring even with the purged object's space reclaimed.
        let fill = pattern(12 << 20, 4);
        for i in 0..6 {
            origin.route(
                &format!("/fill-{i}"),
                Route::ok(fill.clone()).header(max_age.0, max_age.1),
            );
        }
        // One ring of 64 MiB: the first object stored is at its head, and every later one
        // needs its space once it is gone.
        let inst = Instance::builder()
            .origin(&origin.url())
            .workers(1)
            .cached_arg("--capacity")
            .cached_arg(&(64u64 << 20).to_string())
            .cached_arg("--max-object-size")
            .cached_arg(&(16u64 << 20).to_string())
            .start();
        assert_eq!(inst.get("/big").status, 200);
        until_published(&inst, "/big");
        assert_arena_hit(&inst.get("/big"), &big);

        for round in 0..3 {
            let released = counter(&inst, "proxy", "arena_pins_released");
            let mut s = TcpStream::connect(inst.addr()).unwrap();
            s.write_all(&request_bytes("GET", "/big", &[], b""))
                .unwrap();
            let mut head = [0u8; 4096];
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            assert!(s.read(&mut head).unwrap() > 0, "round {round}: no answer");
            // The reader stops reading: the worker's send fills the buffers and waits.
            thread::sleep(Duration::from_millis(500));
            let worker = inst.workers()[0];
            assert!(shmproxy_tests::harness::send_signal(worker, libc::SIGKILL));
            poll_until(
                Duration::from_secs(10),
                "the master releasing the dead worker's pin",
                || {
                    // While the replacement starts, the stats may not answer.
                    let now = inst.try_stats().ok()?["proxy"]["arena_pins_released"].as_u64()?;
                    (now > released).then_some(())
                },
            );
            drop(s);
            poll_until(Duration::from_secs(10), "a replacement worker", || {
                (inst.workers().len() == 1 && !inst.workers().contains(&worker)).then_some(())
            });
            let r = inst.get("/big");
            assert_eq!(sha256_hex(&r.body), sha256_hex(&big), "round {round}");
        }

        // Its space is not leaked: once purged, the objects that follow reclaim it.
        let p = client::fetch(inst.addr(), "PURGE", "/big", &[], b"");
        assert_eq!(p.status, 200, "{}", p.describe());
        for i in 0..6 {
            let path = format!("/fill-{i}");
            assert_eq!(inst.get(&path).status, 200);
            until_published(&inst, &path);
            assert_arena_hit(&inst.get(&path), &fill);
        }
        assert_eq!(
            counter(&inst, "cached", "arena_refused"),
            0,
            "a publish found the arena's space held"
        );
        assert!(counter(&inst, "cached", "arena_evictions") >= 1);
    });
}

#[test]
fn vary_variants_come_from_the_arena_each_to_its_own_requests() {
    with_deadline(T, || {
        let origin = Origin::start();
        let route = |user: &str| {
            Route::ok(format!("for {user}"))
                .header("Cache-Control", "max-age=600")
                .header("Vary", "X-User")
        };
        let inst = Instance::builder().origin(&origin.url()).workers(2).start();
        origin.route("/me", route("alice"));
        assert_eq!(
            get_as(&inst, "/me", &[("X-User", "alice")]).body,
            b"for alice"
        );
        origin.route("/me", route("bob"));
        assert_eq!(get_as(&inst, "/me", &[("X-User", "bob")]).body, b"for bob");
        until_published_as(&inst, "/me", &[("X-User", "alice")]);
        until_published_as(&inst, "/me", &[("X-User", "bob")]);
        for _ in 0..6 {
            assert_arena_hit(&get_as(&inst, "/me", &[("X-User", "alice")]), b"for alice");
            assert_arena_hit(&get_as(&inst, "/me", &[("X-User", "bob")]), b"for bob");
        }
        assert_eq!(origin.count("/me"), 2);
        // The origin's next answer goes to `headers`' request, fetched (a MISS), never
        // someone else's stored variant.
        let fetched = |user: &str, headers: &[(&str, &str)]| {
            origin.route("/me", route(user));
            let r = get_as(&inst, "/me", headers);
            assert_eq!(
                (r.body.as_slice(), r.header("x-cache")),
                (format!("for {user}").as_bytes(), Some("MISS")),
                "{}",
                r.describe()
            );
        };
        // Another user, and none at all, are other variants.
        fetched("carol", &[("X-User", "carol")]);
        fetched("nobody", &[]);
        assert_eq!(origin.count("/me"), 4);
        // A PURGE of the URL reaches every variant.
        let p = client::fetch(inst.addr(), "PURGE", "/me", &[], b"");
        assert_eq!(p.status, 200, "{}", p.describe());
        fetched("alice again", &[("X-User", "alice")]);
        fetched("bob again", &[("X-User", "bob")]);
    });
}

#[test]
fn a_purge_is_seen_by_every_worker_at_once() {
    with_deadline(T, || {
        let origin = Origin::start();
        let route = |v: &str| Route::ok(v.to_string()).header("Cache-Control", "max-age=600");
        origin.route("/p", route("v1"));
        let inst = Instance::builder().origin(&origin.url()).workers(2).start();
        assert_eq!(inst.get("/p").body, b"v1");
        until_published(&inst, "/p");
        // Fresh connections reach both workers.
        for _ in 0..6 {
            assert_arena_hit(&inst.get("/p"), b"v1");
        }
        origin.route("/p", route("v2"));
        let p = client::fetch(inst.addr(), "PURGE", "/p", &[], b"");
        assert_eq!(p.status, 200, "{}", p.describe());
        // No worker answers the purged object again, not even once.
        let r = inst.get("/p");
        assert_eq!(
            (r.body.as_slice(), r.header("x-cache")),
            (&b"v2"[..], Some("MISS"))
        );
        until_published(&inst, "/p");
        for _ in 0..6 {
            assert_arena_hit(&inst.get("/p"), b"v2");
        }
        assert_eq!(origin.count("/p"), 2);
    });
}

/// The fields of an answer in order, with the values that change from one answer to the next
/// (`Date`, `Age`) blanked and `Cache-Status` without what tells the two paths apart.
fn comparable(r: &Response) -> Vec<(String, String)> {
    r.headers
        .iter()
        .map(|(k, v)| {
            let v = match k.to_ascii_lowercase().as_str() {
                "date" | "age" => String::new(),
                "cache-status" => without_ttl(&v.replace("; detail=arena", "")),
                _ => v.clone(),
            };
            (k.to_ascii_lowercase(), v)
        })
        .collect()
}

/// `v` with its `; ttl=N` parameters as `; ttl` (the seconds left may differ by one).
fn without_ttl(v: &str) -> String {
    let mut out = v.to_string();
    let mut from = 0;
    while let Some(at) = out[from..].find("; ttl=").map(|i| from + i) {
        let end = out[at + 6..]
            .find(|c: char| !c.is_ascii_digit())
            .map_or(out.len(), |n| at + 6 + n);
        out.replace_range(at..end, "; ttl");
        from = at + 5;
    }
    out
}

#[test]
fn an_arena_hit_has_the_head_cached_writes_for_the_same_hit() {
    with_deadline(T, || {
        let origin = Origin::start();
        origin.route(
            "/h",
            Route::ok("same head")
                .header("Cache-Control", "max-age=600")
                .header("ETag", "\"v1\"")
                .header("X-Custom", "kept")
                .header("Cache-Status", "origin-cache; hit"),
        );
        let inst = Instance::builder().origin(&origin.url()).start();
        assert_eq!(inst.get("/h").status, 200);
        until_published(&inst, "/h");
        let conditions: [&[(&str, &str)]; 4] = [
            &[],
            &[("If-None-Match", "\"v1\"")],
            &[("If-None-Match", "\"other\"")],
            &[("If-Modified-Since", "Fri, 01 Jan 2100 00:00:00 GMT")],
        ];
        for (method, cond) in ["GET", "HEAD"]
            .into_iter()
            .flat_map(|m| conditions.iter().map(move |c| (m, *c)))
        {
            let arena = client::fetch(inst.addr(), method, "/h", cond, b"");
            // Credentials: cached answers the same hit itself.
            let mut with_credentials = cond.to_vec();
            with_credentials.push(("Authorization", "Basic eDp5"));
            let from_cached = client::fetch(inst.addr(), method, "/h", &with_credentials, b"");
            assert!(
                arena
                    .header("cache-status")
                    .is_some_and(|s| s.contains("detail=arena")),
                "{}",
                arena.describe()
            );
            assert!(
                from_cached
                    .header("cache-status")
                    .is_some_and(|s| !s.contains("detail=arena")),
                "{}",
                from_cached.describe()
            );
            assert_eq!(
                comparable(&arena),
                comparable(&from_cached),
                "{method} {cond:?}: arena\n{}\ncached\n{}",
                arena.describe(),
                from_cached.describe()
            );
            assert_eq!(arena.body, from_cached.body);
        }
        assert_eq!(origin.count("/h"), 1);
    });
}

#[test]
fn a_refetched_answer_replaces_the_arena_copy_even_when_it_cannot_be_published() {
    with_deadline(T, || {
        let origin = Origin::start();
        let route = |body: Vec<u8>| Route::ok(body).header("Cache-Control", "max-age=600");
        origin.route("/r", route(b"v1".to_vec()));
        // Records of at most a quarter of the capacity: 256 KiB.
        let inst = Instance::builder()
            .origin(&origin.url())
            .cached_arg("--capacity")
            .cached_arg(&(1u64 << 20).to_string())
            .start();
        assert_eq!(inst.get("/r").body, b"v1");
        until_published(&inst, "/r");
        assert_arena_hit(&inst.get("/r"), b"v1");
        let no_cache = [("Cache-Control", "no-cache")];
        // A client's no-cache makes cached fetch and store the answer again.
        origin.route("/r", route(b"v2".to_vec()));
        assert_eq!(get_as(&inst, "/r", &no_cache).body, b"v2");
        until_published(&inst, "/r");
        assert_arena_hit(&inst.get("/r"), b"v2");
        // Stored by cached, too large for the arena: the arena's copy must not stand in.
        let large = pattern(600 << 10, 5);
        origin.route("/r", route(large.clone()));
        assert!(get_as(&inst, "/r", &no_cache).body == large);
        // cached drops the arena's copy right after it stored the new answer.
        let r = poll_until(Duration::from_secs(5), "the older copy gone", || {
            let r = inst.get("/r");
            (r.body == large).then_some(r)
        });
        assert_eq!(r.header("x-cache"), Some("HIT"), "{}", r.describe());
        assert_eq!(origin.count("/r"), 3);
        assert!(counter(&inst, "cached", "arena_refused") >= 1);
    });
}

/// Range requests on a fresh arena object: the worker answers them itself (counted as arena
/// hits, `detail=arena`) with the head and body bytes cached gives the same request — a
/// `206` of one range (small ones copied, large ones sent from the arena), a `416` past the
/// end, the whole answer for several ranges or an `If-Range` that does not match, GET and
/// HEAD alike.
#[test]
fn ranges_of_an_arena_object_are_answered_there_as_cached_answers_them() {
    with_deadline(T, || {
        let origin = Origin::start();
        let body = pattern(150 << 10, 7);
        let lm = "Wed, 21 Oct 2015 07:28:00 GMT";
        origin.route(
            "/rng",
            Route::ok(body.clone())
                .header("Cache-Control", "max-age=600")
                .header("ETag", "\"r1\"")
                .header("Last-Modified", lm),
        );
        let inst = Instance::builder().origin(&origin.url()).start();
        assert_eq!(inst.get("/rng").status, 200);
        until_published(&inst, "/rng");
        let len = body.len();
        // The request's fields, the status, and the bytes of the body a GET gets.
        type Case<'a> = (Vec<(&'a str, &'a str)>, u16, Option<std::ops::Range<usize>>);
        let cases: Vec<Case> = vec![
            (vec![("Range", "bytes=0-9")], 206, Some(0..10)),
            (vec![("Range", "bytes=100000-")], 206, Some(100_000..len)),
            (
                vec![("Range", "bytes=-70000")],
                206,
                Some(len - 70_000..len),
            ),
            (vec![("Range", "bytes=5-999999")], 206, Some(5..len)),
            (vec![("Range", "bytes=200000-")], 416, None),
            (vec![("Range", "bytes=0-1,5-6")], 200, Some(0..len)),
            (
                vec![("Range", "bytes=10-19"), ("If-Range", "\"r1\"")],
                206,
                Some(10..20),
            ),
            (
                vec![("Range", "bytes=10-19"), ("If-Range", "\"r0\"")],
                200,
                Some(0..len),
            ),
            (
                vec![("Range", "bytes=10-19"), ("If-Range", lm)],
                206,
                Some(10..20),
            ),
            (
                vec![
                    ("Range", "bytes=10-19"),
                    ("If-Range", "Thu, 22 Oct 2015 07:28:00 GMT"),
                ],
                200,
                Some(0..len),
            ),
            (
                vec![("Range", "bytes=0-9"), ("If-None-Match", "\"r1\"")],
                304,
                None,
            ),
        ];
        for method in ["GET", "HEAD"] {
            for (fields, status, span) in &cases {
                let hits = counter(&inst, "proxy", "arena_hits");
                let arena = client::fetch(inst.addr(), method, "/rng", fields, b"");
                assert_eq!(
                    counter(&inst, "proxy", "arena_hits"),
                    hits + 1,
                    "{method} {fields:?}: not an arena hit: {}",
                    arena.describe()
                );
                let mut with_credentials = fields.clone();
                with_credentials.push(("Authorization", "Basic eDp5"));
                let from_cached =
                    client::fetch(inst.addr(), method, "/rng", &with_credentials, b"");
                let what = format!(
                    "{method} {fields:?}: arena\n{}\ncached\n{}",
                    arena.describe(),
                    from_cached.describe()
                );
                assert!(
                    arena
                        .header("cache-status")
                        .is_some_and(|s| s.contains("detail=arena")),
                    "{what}"
                );
                assert!(
                    from_cached
                        .header("cache-status")
                        .is_some_and(|s| !s.contains("detail=arena")),
                    "{what}"
                );
                assert_eq!(
                    (arena.status, from_cached.status),
                    (*status, *status),
                    "{what}"
                );
                assert_eq!(comparable(&arena), comparable(&from_cached), "{what}");
                let want = match (method, span) {
                    ("GET", Some(s)) => &body[s.clone()],
                    _ => &[][..],
                };
                assert!(arena.body == want, "{what}");
                assert!(from_cached.body == want, "{what}");
            }
        }
        assert_eq!(origin.count("/rng"), 1);
    });
}

/// The same request answered from the arena and by cached (with credentials, which only
/// cached answers): both as expected of each path, and alike.
#[track_caller]
fn assert_like_cached(inst: &Instance, method: &str, target: &str, fields: &[(&str, &str)]) {
    let arena = client::fetch(inst.addr(), method, target, fields, b"");
    let mut with_credentials = fields.to_vec();
    with_credentials.push(("Authorization", "Basic eDp5"));
    let from_cached = client::fetch(inst.addr(), method, target, &with_credentials, b"");
    let what = format!(
        "{method} {target} {fields:?}: arena\n{}\ncached\n{}",
        arena.describe(),
        from_cached.describe()
    );
    assert!(
        arena
            .header("cache-status")
            .is_some_and(|s| s.contains("detail=arena")),
        "{what}"
    );
    assert!(
        from_cached
            .header("cache-status")
            .is_some_and(|s| !s.contains("detail=arena")),
        "{what}"
    );
    assert_eq!(arena.status, from_cached.status, "{what}");
    assert_eq!(comparable(&arena), comparable(&from_cached), "{what}");
    assert!(arena.body == from_cached.body, "{what}");
}

/// Disk mode: a file cached served is published in the arena and served there (counted as
/// arena hits, with cached's head, ranges too) while the file on disk is the one read; a
/// rewrite of another size, or of the same size with another mtime, is never served stale,
/// a PURGE removes it, and a deleted file is a 404.
#[test]
fn files_of_the_document_root_are_served_from_the_arena_only_while_unchanged() {
    with_deadline(T, || {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "page.txt", b"version one");
        let big = pattern(150 << 10, 3);
        write_file(dir.path(), "d/big.bin", &big);
        let inst = Instance::builder().root(dir.path()).start();
        assert_eq!(inst.get("/page.txt").body, b"version one");
        until_published(&inst, "/page.txt");
        let hits = counter(&inst, "proxy", "arena_hits");
        let r = inst.get("/page.txt");
        assert_arena_hit(&r, b"version one");
        assert_eq!(r.header("age"), None, "a file has no Age: {}", r.describe());
        assert_eq!(counter(&inst, "proxy", "arena_hits"), hits + 1);
        let etag = r.header("etag").expect("ETag").to_string();
        for method in ["GET", "HEAD"] {
            assert_like_cached(&inst, method, "/page.txt", &[]);
            assert_like_cached(&inst, method, "/page.txt", &[("If-None-Match", &etag)]);
            assert_like_cached(&inst, method, "/page.txt", &[("Range", "bytes=8-")]);
            assert_like_cached(&inst, method, "/page.txt", &[("Range", "bytes=99-")]);
        }
        inst.get("/d/big.bin");
        until_published(&inst, "/d/big.bin");
        assert_arena_hit(&inst.get("/d/big.bin"), &big);
        assert_like_cached(&inst, "GET", "/d/big.bin", &[("Range", "bytes=1000-")]);
        // A PURGE of the file removes its arena copies too.
        let p = client::fetch(inst.addr(), "PURGE", "/d/big.bin", &[], b"");
        assert_eq!(p.status, 200, "{}", p.describe());
        let r = inst.get("/d/big.bin");
        assert!(
            r.body == big
                && r.header("cache-status")
                    .is_some_and(|s| !s.contains("detail=arena")),
            "{}",
            r.describe()
        );

        // Another size: the next request has the new content.
        let changes = counter(&inst, "proxy", "arena_file_changes");
        std::fs::write(&path, b"version two, longer").unwrap();
        assert_eq!(inst.get("/page.txt").body, b"version two, longer");
        assert_eq!(counter(&inst, "proxy", "arena_file_changes"), changes + 1);
        until_published(&inst, "/page.txt");
        assert_arena_hit(&inst.get("/page.txt"), b"version two, longer");
        // The same size and inode, another mtime.
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, b"version 2o, LONGER").unwrap();
        std::fs::write(&path, b"version 3o, longer!").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime + Duration::from_millis(1500))
            .unwrap();
        let r = inst.get("/page.txt");
        assert_eq!(r.body, b"version 3o, longer!", "{}", r.describe());
        until_published(&inst, "/page.txt");
        assert_arena_hit(&inst.get("/page.txt"), b"version 3o, longer!");
        // Gone: a 404, never the arena's copy.
        std::fs::remove_file(&path).unwrap();
        for _ in 0..3 {
            let r = inst.get("/page.txt");
            assert_eq!(r.status, 404, "{}", r.describe());
        }
        assert!(counter(&inst, "proxy", "arena_file_changes") >= changes + 3);
    });
}

/// Disk mode: what a target names other than plainly — a directory's index file, its
/// redirect, percent-encoding, dot or empty segments — is never published under that
/// target's key: cached answers it every time (as it answers it).
#[test]
fn only_targets_that_name_a_file_plainly_are_served_from_the_arena() {
    with_deadline(T, || {
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), "a b.txt", b"spaced");
        write_file(dir.path(), "sub/index.html", b"<p>index</p>");
        write_file(dir.path(), "sub/x.txt", b"x");
        std::os::unix::fs::symlink(dir.path().join("sub/x.txt"), dir.path().join("link.txt"))
            .unwrap();
        let inst = Instance::builder().root(dir.path()).start();
        let cases: [(&str, u16, &[u8]); 7] = [
            ("/sub/", 200, b"<p>index</p>"),
            ("/sub", 301, b"moved to the directory\n"),
            ("/a%20b.txt", 200, b"spaced"),
            ("/sub/./x.txt", 200, b"x"),
            ("//sub/x.txt", 200, b"x"),
            ("/sub/x.txt/", 200, b"x"),
            ("/link.txt", 200, b"x"),
        ];
        for _ in 0..3 {
            for (target, status, body) in cases {
                let r = inst.get(target);
                assert_eq!(r.status, status, "{target}: {}", r.describe());
                assert!(r.body == body, "{target}: {}", r.describe());
                assert!(
                    r.header("cache-status")
                        .is_some_and(|s| !s.contains("detail=arena")),
                    "{target}: {}",
                    r.describe()
                );
            }
        }
        // The plain name of the same file is.
        inst.get("/sub/x.txt");
        until_published(&inst, "/sub/x.txt");
    });
}

/// `cached` keeps one copy of a body: once the arena holds it, cached's entry keeps only the
/// head (`stored_body_bytes` stays 0 while `arena_bytes` grows by every object), and what
/// `cached` itself still serves from such an entry — a revalidated answer, a range of it, a
/// `304` refresh that is published again, a stale answer when the origin fails — reads the
/// body back from the arena.
#[test]
fn cached_keeps_no_copy_of_what_the_arena_holds_and_still_serves_ranges_304s_and_stale() {
    with_deadline(T, || {
        let origin = Origin::start();
        const N: usize = 24;
        const SIZE: usize = 64 << 10;
        let body = |i: usize| pattern(SIZE, i as u64);
        let route = |i: usize, cc: &str| {
            Route::ok(body(i))
                .header("Cache-Control", cc)
                .header("ETag", &format!("\"m{i}\""))
                .header("X-Gen", "1")
        };
        for i in 0..N {
            let cc = if i == 0 {
                "max-age=1, stale-if-error=60"
            } else {
                "max-age=600"
            };
            origin.route(&format!("/m{i}"), route(i, cc));
        }
        let inst = Instance::builder().origin(&origin.url()).start();
        for i in 0..N {
            let target = format!("/m{i}");
            assert!(inst.get(&target).body == body(i));
        }
        for i in 1..N {
            until_published(&inst, &format!("/m{i}"));
        }
        let arena_bytes = counter(&inst, "cached", "arena_bytes");
        assert!(
            arena_bytes >= (N * SIZE) as u64,
            "arena holds {arena_bytes}"
        );
        assert_eq!(counter(&inst, "cached", "stored_body_bytes"), 0);
        let charged = counter(&inst, "cached", "stored_bytes");
        assert!(charged < (N * 2048) as u64, "cached is charged {charged} B");

        // The client asks for revalidation: cached sends a conditional, the origin's 304
        // refreshes the head, and the body comes out of the arena, whole or as a range.
        let reval = [("Cache-Control", "max-age=0")];
        let not_modified = |i: usize, gen: &str| {
            Route::ok("")
                .status(304)
                .header("Cache-Control", "max-age=600")
                .header("ETag", &format!("\"m{i}\""))
                .header("X-Gen", gen)
        };
        origin.route("/m1", not_modified(1, "2"));
        let r = get_as(&inst, "/m1", &reval);
        assert_eq!(
            (r.status, r.header("x-cache")),
            (200, Some("REVALIDATED")),
            "{}",
            r.describe()
        );
        assert!(r.body == body(1), "the body read back from the arena");
        assert_eq!(r.header("x-gen"), Some("2"));
        // The refreshed head is what the workers now serve, over the same bytes.
        let r = poll_until(
            Duration::from_secs(10),
            "the refreshed head in the arena",
            || {
                let r = inst.get("/m1");
                (r.header("x-gen") == Some("2")).then_some(r)
            },
        );
        assert_arena_hit(&r, &body(1));
        origin.route("/m2", not_modified(2, "2"));
        let mut ranged = reval.to_vec();
        ranged.push(("Range", "bytes=1000-1999"));
        let r = get_as(&inst, "/m2", &ranged);
        assert_eq!(r.status, 206, "{}", r.describe());
        assert_eq!(r.header("content-range"), Some("bytes 1000-1999/65536"));
        assert!(r.body == body(2)[1000..2000]);
        assert_eq!(
            origin.requests_for("/m2")[1].header("if-none-match"),
            Some("\"m2\"")
        );

        // Stale, and the origin fails: the stored answer is served from the arena's bytes.
        thread::sleep(Duration::from_millis(1300));
        origin.route("/m0", Route::ok("down").status(503));
        let r = inst.get("/m0");
        assert_eq!(
            (r.status, r.header("x-cache")),
            (200, Some("STALE")),
            "{}",
            r.describe()
        );
        assert!(r.body == body(0));

        assert_eq!(counter(&inst, "cached", "stored_body_bytes"), 0);
        assert_eq!(counter(&inst, "cached", "arena_lost"), 0);
        assert_eq!(origin.count("/m3"), 1);
    });
}

/// Large hits leave by page reference (`sendfile` from the arena's file, `arena_spliced`): a
/// client that has not read its answer yet still gets the bytes it asked for after the
/// object was evicted and its space written over by others, lap after lap; ranges of such an
/// object that start and end inside pages come exact.
#[test]
fn large_hits_sent_by_reference_keep_their_bytes_while_their_space_is_reused() {
    with_deadline(T, || {
        let origin = Origin::start();
        // Over the 32 KiB from which pages go by reference, and small enough to sit whole in
        // the sockets' buffers while nobody reads (CI's default buffer limits included).
        let len = 300_001;
        for i in 0..32u64 {
            origin.route(
                &format!("/big{i}"),
                Route::ok(pattern(len, i)).header("Cache-Control", "max-age=600"),
            );
        }
        // One ring of 4 MiB: 32 such objects wrap it twice.
        let inst = Instance::builder()
            .origin(&origin.url())
            .cached_arg("--capacity")
            .cached_arg(&(4u64 << 20).to_string())
            .start();
        assert_eq!(inst.get("/big0").status, 200);
        until_published(&inst, "/big0");
        let spliced = counter(&inst, "proxy", "arena_spliced");
        // Asked for, not read.
        let mut held = client::Conn::connect(inst.addr());
        held.send(&request_bytes("GET", "/big0", &[], b""));
        poll_until(Duration::from_secs(10), "the held answer sent", || {
            (counter(&inst, "proxy", "arena_spliced") > spliced).then_some(())
        });
        let evicted = counter(&inst, "cached", "arena_evictions");
        for i in 1..32u64 {
            let target = format!("/big{i}");
            assert!(inst.get(&target).body == pattern(len, i));
            until_published(&inst, &target);
        }
        assert!(
            counter(&inst, "cached", "arena_evictions") >= evicted + 16,
            "the arena wrapped"
        );
        held.set_read_timeout(Duration::from_secs(10));
        let r = held.read_response(client::Expect::Body).unwrap();
        assert_arena_hit(&r, &pattern(len, 0));
        // Ranges that start and end inside pages, of an object sent by reference.
        let body = pattern(len, 31);
        for (from, to) in [
            (4095usize, 290_000usize),
            (1, len - 2),
            (8192, 8192 + 4096 * 40),
        ] {
            let range = format!("bytes={from}-{to}");
            let r = get_as(&inst, "/big31", &[("Range", range.as_str())]);
            assert_eq!(r.status, 206, "{}", r.describe());
            assert!(r.body[..] == body[from..=to], "{range}: {}", r.describe());
        }
        assert!(counter(&inst, "proxy", "arena_spliced") >= spliced + 4);
    });
}
