//! Issue 16, class 1 and acceptance 1: no input — request, origin answer or file — can panic,
//! kill or wedge a thread.
//! - 256 requests with a far-future `If-Modified-Since` (and `If-Unmodified-Since`, `If-Range`)
//!   on a stored object, in origin and in document-root mode: every one answered at once, and
//!   cached fully functional afterwards (on b768006 each one killed a cached thread, and once
//!   they were all gone every request waited 30 s for a 504);
//! - an origin answering with a year-400000000000 `Expires`, `Last-Modified` or `Date` (and an
//!   `Age` of u64::MAX seconds): answered, never a dead thread;
//! - supervision: a request that panics (debug builds panic on purpose for the target named by
//!   `SHMPROXY_TEST_PANIC`) costs that request only, in cached and in a proxy worker; the
//!   threads go on, `request_panics` counts it, `threads_restarted` is exported, and the pool
//!   gets every segment back.

use crate::origin::{Origin, Route};
use shmproxy_tests::client::Conn;
use shmproxy_tests::harness::{with_deadline, write_file, Instance};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);
const FAR: &str = "Sun, 06 Nov 400000000000 08:49:37 GMT";
const LM: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
/// Far below cached's 30 s timeout: an answer later than this means a thread was lost.
const PROMPT: Duration = Duration::from_secs(5);

/// A `u64` counter of `/__shmproxy/stats` (`daemon` is "proxy" or "cached").
fn counter(inst: &Instance, daemon: &str, key: &str) -> u64 {
    let s = inst.stats();
    s[daemon][key]
        .as_u64()
        .unwrap_or_else(|| panic!("stats: {daemon}.{key} missing in {s}"))
}

/// Sends `n` GETs of `target` with `headers` over a few keep-alive connections; each must
/// be answered with one of `ok` within [`PROMPT`].
#[track_caller]
fn hammer(inst: &Instance, target: &str, headers: &[(&str, &str)], n: usize, ok: &[u16]) {
    let mut conns: Vec<Conn> = (0..4).map(|_| inst.conn()).collect();
    for i in 0..n {
        let c = &mut conns[i % 4];
        c.set_read_timeout(PROMPT);
        let t = Instant::now();
        c.send(&shmproxy_tests::client::request_bytes(
            "GET", target, headers, b"",
        ));
        let r = c
            .read_response(shmproxy_tests::client::Expect::Body)
            .unwrap_or_else(|e| {
                panic!(
                    "request {i} of {target} {headers:?}: no answer within {PROMPT:?} ({e}): \
                     a cached thread was lost\n{}",
                    inst.logs()
                )
            });
        assert!(
            ok.contains(&r.status),
            "request {i} of {target} {headers:?}: {}",
            r.describe()
        );
        assert!(t.elapsed() < PROMPT, "request {i} took {:?}", t.elapsed());
        if r.connection_has("close") {
            conns[i % 4] = inst.conn();
        }
    }
}

/// After the attack: a stored object, a new miss and the stats endpoint all answer at once,
/// both daemons alive, no thread panicked.
#[track_caller]
fn fully_functional(inst: &mut Instance, stored: &str, stored_body: &[u8], fresh: &str) {
    assert!(inst.cached_alive(), "cached died\n{}", inst.logs());
    assert!(inst.proxy_alive(), "proxy died\n{}", inst.logs());
    let t = Instant::now();
    let r = inst.get(stored);
    assert_eq!(r.status, 200, "{stored}: {}", r.describe());
    assert_eq!(r.body, stored_body);
    let r = inst.get(fresh);
    assert!(
        r.status == 200 || r.status == 404,
        "{fresh}: {}",
        r.describe()
    );
    assert!(
        t.elapsed() < PROMPT,
        "normal requests took {:?}",
        t.elapsed()
    );
    assert_eq!(counter(inst, "cached", "request_panics"), 0);
    assert_eq!(counter(inst, "cached", "threads_restarted"), 0);
    assert_eq!(counter(inst, "proxy", "request_panics"), 0);
    inst.assert_pool_idle();
}

/// The reproduction of the issue, origin mode: 256 × far-future `If-Modified-Since`, then
/// the same with `If-Unmodified-Since` and with `If-Range`, on a cached URL.
#[test]
fn far_future_conditionals_on_a_stored_answer_cost_nothing() {
    with_deadline(T, || {
        let origin = Origin::start();
        origin.route(
            "/x",
            Route::ok("stored body")
                .header("Cache-Control", "max-age=600")
                .header("Last-Modified", LM),
        );
        origin.route(
            "/y",
            Route::ok("fresh").header("Cache-Control", "max-age=600"),
        );
        let mut inst = Instance::builder()
            .origin(&origin.url())
            .cached_threads(2)
            .start();
        let r = inst.get("/x");
        assert_eq!(r.status, 200, "{}", r.describe());
        // The invalid (out of range) date is ignored: the plain answer.
        hammer(&inst, "/x", &[("If-Modified-Since", FAR)], 256, &[200]);
        hammer(&inst, "/x", &[("If-Unmodified-Since", FAR)], 256, &[200]);
        hammer(
            &inst,
            "/x",
            &[("Range", "bytes=0-1"), ("If-Range", FAR)],
            256,
            &[200],
        );
        // A valid date still works as before.
        hammer(&inst, "/x", &[("If-Modified-Since", LM)], 4, &[304]);
        fully_functional(&mut inst, "/x", b"stored body", "/y");
        assert_eq!(origin.count("/x"), 1, "/x stayed stored");
    });
}

/// The same attack in document-root mode (the file's Last-Modified against the client's date).
#[test]
fn far_future_conditionals_in_document_root_mode_cost_nothing() {
    with_deadline(T, || {
        let root = tempfile::tempdir().unwrap();
        write_file(root.path(), "a.txt", b"file body\n");
        write_file(root.path(), "b.txt", b"other\n");
        let mut inst = Instance::builder()
            .root(root.path())
            .cached_threads(2)
            .start();
        assert_eq!(inst.get("/a.txt").status, 200);
        hammer(&inst, "/a.txt", &[("If-Modified-Since", FAR)], 256, &[200]);
        hammer(
            &inst,
            "/a.txt",
            &[("If-Unmodified-Since", FAR)],
            256,
            &[200],
        );
        hammer(
            &inst,
            "/a.txt",
            &[("Range", "bytes=0-1"), ("If-Range", FAR)],
            256,
            &[200],
        );
        fully_functional(&mut inst, "/a.txt", b"file body\n", "/b.txt");
    });
}

/// An origin whose `Expires`, `Last-Modified` or `Date` names the year 400000000000, or whose
/// `Age` is u64::MAX seconds: every answer relayed, cached stays whole.
#[test]
fn origin_dates_and_ages_out_of_range_cost_nothing() {
    with_deadline(T, || {
        let origin = Origin::start();
        origin.route("/expires", Route::ok("e").header("Expires", FAR));
        origin.route(
            "/expires-date",
            Route::ok("ed").header("Expires", LM).header("Date", FAR),
        );
        origin.route("/lm", Route::ok("l").header("Last-Modified", FAR));
        origin.route(
            "/lm-date",
            Route::ok("ld")
                .header("Last-Modified", LM)
                .header("Date", FAR),
        );
        origin.route(
            "/date",
            Route::ok("d")
                .header("Cache-Control", "max-age=600")
                .header("Date", FAR),
        );
        origin.route(
            "/age",
            Route::ok("a")
                .header("Cache-Control", "max-age=18446744073709551615")
                .header("Age", "18446744073709551615"),
        );
        origin.route(
            "/ok",
            Route::ok("fine").header("Cache-Control", "max-age=600"),
        );
        let mut inst = Instance::builder()
            .origin(&origin.url())
            .cached_threads(2)
            .start();
        for (path, body) in [
            ("/expires", "e"),
            ("/expires-date", "ed"),
            ("/lm", "l"),
            ("/lm-date", "ld"),
            ("/date", "d"),
            ("/age", "a"),
        ] {
            for i in 0..16 {
                // Distinct targets: each one a miss that runs the storage rules.
                let target = format!("{path}?n={i}");
                let t = Instant::now();
                let r = inst.get(&target);
                assert_eq!(r.status, 200, "{target}: {}", r.describe());
                assert_eq!(r.body, body.as_bytes(), "{target}");
                assert!(
                    t.elapsed() < PROMPT,
                    "{target} took {:?}\n{}",
                    t.elapsed(),
                    inst.logs()
                );
                // And again: served stored or fetched anew, never a dead thread.
                let r = inst.get(&target);
                assert_eq!(r.status, 200, "{target} again: {}", r.describe());
            }
        }
        fully_functional(&mut inst, "/ok", b"fine", "/ok?other");
    });
}

/// Supervision: a request whose handling panics costs that request only, in cached (with a
/// single thread, so a lost thread would stop everything) and in a proxy worker; the panics
/// are counted, `threads_restarted` is exported by both daemons (JSON and Prometheus), and
/// every segment comes back.
#[test]
fn a_panicking_request_costs_only_itself_and_is_counted() {
    with_deadline(T, || {
        let root = tempfile::tempdir().unwrap();
        write_file(root.path(), "ok.txt", b"ok\n");
        let mut inst = Instance::builder()
            .root(root.path())
            .cached_threads(1)
            .workers(1)
            .threads(2)
            .env("SHMPROXY_TEST_PANIC", "/__test-panic-")
            .start();
        for key in ["request_panics", "threads_restarted"] {
            assert_eq!(counter(&inst, "cached", key), 0, "cached.{key}");
            assert_eq!(counter(&inst, "proxy", key), 0, "proxy.{key}");
        }
        let metrics = inst.get("/__shmproxy/metrics").text();
        for name in [
            "shmproxy_proxy_threads_restarted_total",
            "shmproxy_cached_threads_restarted_total",
            "shmproxy_proxy_request_panics_total",
            "shmproxy_cached_request_panics_total",
        ] {
            assert!(metrics.contains(name), "{name} missing from the metrics");
        }
        for i in 0..5 {
            let t = Instant::now();
            let r = inst.get("/__test-panic-cached");
            assert!(r.status >= 500, "panic {i} in cached: {}", r.describe());
            assert!(t.elapsed() < PROMPT, "panic {i} took {:?}", t.elapsed());
            let r = inst.get("/ok.txt");
            assert_eq!(r.status, 200, "after panic {i} in cached: {}", r.describe());
        }
        assert_eq!(counter(&inst, "cached", "request_panics"), 5);
        for i in 0..5 {
            let mut c = inst.conn();
            c.set_read_timeout(PROMPT);
            c.send(b"GET /__test-panic-proxy HTTP/1.1\r\nHost: x\r\n\r\n");
            match c.read_response(shmproxy_tests::client::Expect::Body) {
                Ok(r) => assert_eq!(r.status, 500, "panic {i} in the proxy: {}", r.describe()),
                Err(e) => panic!("panic {i} in the proxy: no answer ({e})"),
            }
            c.wait_closed(PROMPT).expect("closed after the 500");
            // Both exec threads of the only worker still serve.
            for _ in 0..4 {
                let r = inst.get("/ok.txt");
                assert_eq!(
                    r.status,
                    200,
                    "after panic {i} in the proxy: {}",
                    r.describe()
                );
            }
        }
        assert_eq!(counter(&inst, "proxy", "request_panics"), 5);
        assert_eq!(
            counter(&inst, "proxy", "worker_restarts"),
            0,
            "no worker died"
        );
        assert!(inst.cached_alive() && inst.proxy_alive());
        inst.assert_pool_idle();
    });
}
