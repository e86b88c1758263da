//! Serving stale (issue 12): stale-while-revalidate answers at once and refreshes in the
//! background, once per key (RFC 5861 §3); stale-if-error and the operator's `grace` answer
//! with the stored copy when the origin fails (RFC 5861 §4, RFC 9111 §4.2.4), except where
//! must-revalidate or no-cache forbid it; `keep` bounds how long an expired answer is kept
//! for a conditional refresh.

use crate::origin::{Origin, Route};
use shmproxy_tests::client;
use shmproxy_tests::harness::{poll_until, with_deadline, Instance};
use std::thread;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(90);

fn get(inst: &Instance, target: &str) -> client::Response {
    client::fetch(inst.addr(), "GET", target, &[], b"")
}

fn x_cache(r: &client::Response) -> &str {
    r.header("x-cache").unwrap_or("-")
}

fn counter(inst: &Instance, name: &str) -> u64 {
    inst.cached_counter(name)
        .unwrap_or_else(|| panic!("stats: cached.{name} missing"))
}

/// An instance in front of `origin` with extra `[cached]` keys.
fn with_keys(origin: &str, keys: &str) -> Instance {
    Instance::builder()
        .config_toml(&format!("[cached]\norigin = \"{origin}\"\n{keys}\n"))
        .start()
}

/// Waits until the stored answer is past its 1-second lifetime (time is the subject: there
/// is nothing to poll).
fn expire() {
    thread::sleep(Duration::from_millis(1300));
}

#[test]
fn stale_while_revalidate_answers_at_once_and_refreshes_once_in_the_background() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = Instance::builder().origin(&origin.url()).start();
        let route = |gen: &str, max_age: u32| {
            Route::ok(format!("gen {gen}"))
                .header(
                    "Cache-Control",
                    &format!("max-age={max_age}, stale-while-revalidate=30"),
                )
                .header("ETag", &format!("\"{gen}\""))
        };
        origin.route("/swr", route("1", 1));
        assert_eq!(get(&inst, "/swr").text(), "gen 1");
        expire();
        // The refresh takes 1.5 s at the origin: no client may wait for it.
        origin.route("/swr", route("2", 60).delay(Duration::from_millis(1500)));
        let started = Instant::now();
        let answers: Vec<_> = (0..8)
            .map(|_| {
                let addr = inst.addr();
                thread::spawn(move || client::fetch(addr, "GET", "/swr", &[], b""))
            })
            .collect();
        for a in answers {
            let r = a.join().unwrap();
            assert_eq!((r.status, x_cache(&r)), (200, "STALE"), "{}", r.describe());
            assert_eq!(r.text(), "gen 1");
        }
        assert!(
            started.elapsed() < Duration::from_millis(1200),
            "stale answers waited for the origin: {:?}",
            started.elapsed()
        );
        // One background request however many clients, conditional on our copy.
        poll_until(Duration::from_secs(10), "the background refresh", || {
            (counter(&inst, "background_refreshes") >= 1 && origin.count("/swr") == 2).then_some(())
        });
        // The subject: no second refresh comes, however long the clients keep asking.
        thread::sleep(Duration::from_millis(1700));
        assert_eq!(origin.count("/swr"), 2, "one refresh for the key");
        assert_eq!(
            origin.requests_for("/swr")[1].header("if-none-match"),
            Some("\"1\"")
        );
        assert!(counter(&inst, "stale_while_revalidate") >= 8);
        // Fresh again with the new answer.
        let r = get(&inst, "/swr");
        assert_eq!((x_cache(&r), r.text().as_str()), ("HIT", "gen 2"));

        // Past the window the request waits for the origin as before.
        origin.route(
            "/short",
            Route::ok("old").header("Cache-Control", "max-age=1, stale-while-revalidate=1"),
        );
        get(&inst, "/short");
        thread::sleep(Duration::from_millis(2300)); // the subject: past max-age and the window
        origin.route(
            "/short",
            Route::ok("new").header("Cache-Control", "max-age=60"),
        );
        let r = get(&inst, "/short");
        assert_eq!((x_cache(&r), r.text().as_str()), ("MISS", "new"));
    });
}

#[test]
fn stale_if_error_serves_the_stored_answer_when_the_origin_fails() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = Instance::builder().origin(&origin.url()).start();
        // With and without a validator; each origin error status in turn.
        for (path, etag) in [("/sie-v", Some("\"v\"")), ("/sie", None)] {
            let mut ok =
                Route::ok("stored").header("Cache-Control", "max-age=1, stale-if-error=60");
            if let Some(e) = etag {
                ok = ok.header("ETag", e);
            }
            origin.route(path, ok);
            assert_eq!(get(&inst, path).text(), "stored");
            expire();
            for status in [500, 502, 503, 504] {
                origin.route(path, Route::ok("down").status(status));
                let r = get(&inst, path);
                assert_eq!(
                    (r.status, x_cache(&r), r.text().as_str()),
                    (200, "STALE", "stored"),
                    "{path} with the origin answering {status}: {}",
                    r.describe()
                );
            }
        }
        assert!(counter(&inst, "stale_if_error") >= 8);
        // A 404 is an answer, not a failure: it goes to the client.
        origin.route("/sie", Route::ok("gone").status(404));
        assert_eq!(get(&inst, "/sie").status, 404);

        // must-revalidate and no-cache forbid it.
        for (path, cc) in [
            ("/mr", "max-age=1, must-revalidate, stale-if-error=60"),
            ("/nc", "no-cache, stale-if-error=60"),
            ("/sm", "s-maxage=1, stale-if-error=60"),
        ] {
            origin.route(
                path,
                Route::ok("x")
                    .header("Cache-Control", cc)
                    .header("ETag", "\"x\""),
            );
            get(&inst, path);
            expire();
            origin.route(path, Route::ok("down").status(503));
            assert_eq!(get(&inst, path).status, 503, "{path}");
        }
    });
}

#[test]
fn a_refusing_or_silent_origin_is_covered_by_stale_if_error_and_by_grace() {
    with_deadline(LIMIT, || {
        // No idle connection outlives the wait for expiry, so a stopped origin refuses.
        let keys = "upstream_idle_ms = 1\nread_timeout_ms = 500";
        for grace in [false, true] {
            let origin = Origin::start();
            origin.route(
                "/g",
                Route::ok("graced").header("Cache-Control", "max-age=1"),
            );
            origin.route(
                "/e",
                Route::ok("sie").header("Cache-Control", "max-age=1, stale-if-error=60"),
            );
            origin.route(
                "/slow",
                Route::ok("slow").header("Cache-Control", "max-age=1"),
            );
            let extra = if grace { "\ngrace_ms = 60000" } else { "" };
            let inst = with_keys(&origin.url(), &format!("{keys}{extra}"));
            for p in ["/g", "/e", "/slow"] {
                assert_eq!(get(&inst, p).status, 200);
            }
            expire();
            // Silent: the origin takes longer than read_timeout_ms.
            origin.route("/slow", Route::ok("late").delay(Duration::from_secs(3)));
            let r = get(&inst, "/slow");
            match grace {
                true => assert_eq!((r.status, x_cache(&r)), (200, "STALE"), "{}", r.describe()),
                false => assert_eq!(r.status, 504, "no grace: the timeout shows"),
            }
            // Refusing: the origin is gone.
            let addr = origin.addr();
            drop(origin);
            poll_until(
                Duration::from_secs(5),
                "the origin to stop listening",
                || std::net::TcpStream::connect(addr).is_err().then_some(()),
            );
            let e = get(&inst, "/e");
            assert_eq!(
                (e.status, x_cache(&e), e.text().as_str()),
                (200, "STALE", "sie"),
                "{}",
                e.describe()
            );
            let g = get(&inst, "/g");
            match grace {
                true => assert_eq!(
                    (g.status, x_cache(&g), g.text().as_str()),
                    (200, "STALE", "graced")
                ),
                false => assert_eq!(g.status, 502, "no grace: the outage shows"),
            }
        }
    });
}

#[test]
fn keep_bounds_how_long_an_expired_answer_waits_for_a_conditional_refresh() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let route = Route::ok("k")
            .header("Cache-Control", "max-age=1")
            .header("ETag", "\"k\"");
        origin.route("/k", route);
        // Default keep (a day): the expired answer is revalidated with If-None-Match.
        let inst = Instance::builder().origin(&origin.url()).start();
        get(&inst, "/k");
        expire();
        get(&inst, "/k");
        assert_eq!(
            origin.requests_for("/k")[1].header("if-none-match"),
            Some("\"k\"")
        );
        drop(inst);
        // keep = 200 ms: 300 ms past expiry it is gone, and the request is a plain miss.
        let inst = with_keys(&origin.url(), "keep_ms = 200");
        get(&inst, "/k");
        expire();
        let r = get(&inst, "/k");
        assert_eq!(x_cache(&r), "MISS");
        let reqs = origin.requests_for("/k");
        assert!(
            reqs.last().unwrap().header("if-none-match").is_none(),
            "{:?}",
            reqs.last()
        );
    });
}
