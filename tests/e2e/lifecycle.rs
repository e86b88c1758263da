//! Start order, `cached` absent / restarted, graceful stop on SIGTERM and SIGINT, and two
//! instances side by side.

use crate::origin::{Origin, Route};
use shmproxy_tests::client::{self, Conn};
use shmproxy_tests::harness::{
    descendants, describe_status, pattern, pid_alive, poll_until, shm_objects, with_deadline,
    write_file, Instance, EXIT_BOUND, READY_TIMEOUT,
};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(90);
/// Contract: while cached is absent the proxy answers 503 within a second.
const ABSENT_BOUND: Duration = Duration::from_secs(1);

fn site(tag: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    write_file(
        root.path(),
        "hello.txt",
        format!("hello from {tag}\n").as_bytes(),
    );
    root
}

/// A path no test has requested yet: nothing can hold an answer for it.
fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("/{prefix}-{}.txt", N.fetch_add(1, Ordering::Relaxed))
}

/// GET of a never-requested path on a fresh connection; asserts 503 within the bound.
#[track_caller]
/// Waits until cached, started alone, is up: its request queue and stats region exist.
fn wait_cached_up(inst: &mut Instance) {
    poll_until(
        READY_TIMEOUT,
        "cached's request queue and stats region",
        || {
            assert!(inst.cached_alive(), "cached exited:\n{}", inst.logs());
            let stats = inst
                .shm_objects()
                .iter()
                .any(|o| o.ends_with(".stats.cached"));
            (stats && inst.mq_exists()).then_some(())
        },
    );
}

fn assert_503_quickly(inst: &Instance, what: &str) {
    let t0 = Instant::now();
    let r = inst.get(&unique("absent"));
    let took = t0.elapsed();
    assert_eq!(r.status, 503, "{what}: {}", r.describe());
    assert!(took < ABSENT_BOUND, "{what}: 503 took {took:?}");
}

/// Writes a new file under `root` and polls (new connection each time) until the proxy serves it
/// with status 200: proof that cached answers, since no cache can hold a file never requested.
#[track_caller]
fn wait_serving(inst: &Instance, root: &Path, what: &str) {
    let path = unique("fresh");
    let body = format!("{what} {path}\n");
    write_file(root, &path, body.as_bytes());
    poll_until(Duration::from_secs(15), what, || {
        let r = inst.get(&path);
        match r.status {
            200 => {
                assert_eq!(r.text(), body, "{what}");
                Some(())
            }
            503 => None,
            s => panic!("{what}: answered {s}: {}", r.describe()),
        }
    });
}

#[test]
fn proxy_first_then_cached() {
    with_deadline(T, || {
        let root = site("a");
        let mut inst = Instance::builder().root(root.path()).build();
        inst.start_proxy();
        for i in 0..5 {
            assert_503_quickly(&inst, &format!("request {i} before cached starts"));
        }
        // A keep-alive connection keeps getting 503s, each within the bound.
        let mut c = inst.conn();
        for i in 0..3 {
            let t0 = Instant::now();
            let r = c.get(&unique("absent"));
            assert_eq!(r.status, 503, "keep-alive request {i}: {}", r.describe());
            assert!(t0.elapsed() < ABSENT_BOUND, "503 took {:?}", t0.elapsed());
            if r.connection_has("close") {
                c = inst.conn();
            }
        }
        let proxy_pid = inst.proxy_pid();
        inst.spawn_cached();
        wait_serving(&inst, root.path(), "cached started after the proxy");
        assert!(inst.proxy_alive(), "proxy died");
        assert_eq!(inst.proxy_pid(), proxy_pid, "proxy was restarted");
    });
}

#[test]
fn cached_first_then_proxy() {
    with_deadline(T, || {
        let root = site("b");
        let mut inst = Instance::builder().root(root.path()).build();
        inst.spawn_cached();
        // cached comes up alone (it cannot be reached without a proxy): its queue and stats.
        wait_cached_up(&mut inst);
        assert!(
            inst.cached_alive(),
            "cached exited without a proxy:\n{}",
            inst.logs()
        );
        inst.start_proxy();
        wait_serving(&inst, root.path(), "proxy started after cached");
        let r = inst.get("/hello.txt");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "hello from b\n");
    });
}

#[test]
fn cached_restart_with_sigterm() {
    with_deadline(T, || {
        let root = site("c");
        let mut inst = Instance::builder().root(root.path()).start();
        let mut keep = inst.conn();
        assert_eq!(keep.get("/hello.txt").status, 200);
        let proxy_pid = inst.proxy_pid();

        inst.stop_cached();
        let left = shm_objects(&inst.name);
        assert!(
            !left.iter().any(|n| n.ends_with(".stats.cached")),
            "cached stopped but left {left:?}"
        );
        assert!(!inst.mq_exists(), "cached stopped but its queue remains");
        for i in 0..3 {
            assert_503_quickly(&inst, &format!("request {i} after cached stopped"));
        }
        // The connection opened before the stop is answered too.
        let t0 = Instant::now();
        let r = keep.get(&unique("absent"));
        assert_eq!(r.status, 503, "old keep-alive connection: {}", r.describe());
        assert!(t0.elapsed() < ABSENT_BOUND, "503 took {:?}", t0.elapsed());

        inst.spawn_cached();
        wait_serving(&inst, root.path(), "cached restarted");
        assert_eq!(inst.proxy_pid(), proxy_pid);
        assert!(inst.proxy_alive());
        // Twice: the proxy does not have to be poked again.
        inst.stop_cached();
        assert_503_quickly(&inst, "after the second stop");
        inst.spawn_cached();
        wait_serving(&inst, root.path(), "cached restarted twice");
        inst.assert_pool_idle();
    });
}

#[test]
fn requests_right_after_cached_is_killed_get_503() {
    with_deadline(T, || {
        let root = site("k");
        let mut inst = Instance::builder().root(root.path()).start();
        assert_eq!(inst.get("/hello.txt").status, 200);
        // kill -9: cached cannot unlink its queue or say goodbye; the proxy must notice.
        inst.kill_cached();
        for i in 0..5 {
            assert_503_quickly(&inst, &format!("request {i} right after kill -9 of cached"));
        }
        // A killed cached leaves its queue and stats region; the next cached replaces them (and
        // the teardown then finds nothing left).
        inst.spawn_cached();
        inst.wait_cached_ready();
    });
}

#[test]
fn cached_restart_after_sigkill() {
    with_deadline(T, || {
        let root = site("d");
        let mut inst = Instance::builder().root(root.path()).start();
        assert_eq!(inst.get("/hello.txt").status, 200);
        inst.kill_cached();
        // The new cached finds the stale queue and stats region of the dead one.
        inst.spawn_cached();
        wait_serving(&inst, root.path(), "cached restarted after kill -9");
        assert!(inst.proxy_alive());
        inst.assert_pool_idle();
    });
}

/// Sends `sig` to both daemons of a serving instance and checks the clean exit.
fn stop_both_with(sig: i32) {
    let root = site("e");
    let mut inst = Instance::builder().root(root.path()).start();
    assert_eq!(inst.get("/hello.txt").status, 200);
    assert!(
        !inst.shm_objects().is_empty(),
        "no /dev/shm objects while running?"
    );
    assert!(inst.mq_exists(), "no request queue while running?");
    let workers = descendants(inst.proxy_pid().unwrap());
    assert!(
        !workers.is_empty(),
        "the proxy master has no worker processes"
    );

    let t0 = Instant::now();
    inst.signal_proxy(sig);
    inst.signal_cached(sig);
    let p = inst.wait_proxy_exit(EXIT_BOUND);
    let c = inst.wait_cached_exit(EXIT_BOUND.saturating_sub(t0.elapsed()));
    let took = t0.elapsed();
    let p = p.unwrap_or_else(|| panic!("proxy still running after signal {sig}\n{}", inst.logs()));
    let c = c.unwrap_or_else(|| panic!("cached still running after signal {sig}\n{}", inst.logs()));
    assert!(
        p.success() && c.success(),
        "signal {sig}: proxy {}, cached {}\n{}",
        describe_status(&p),
        describe_status(&c),
        inst.logs()
    );
    assert!(took < EXIT_BOUND, "exit took {took:?}");
    for w in &workers {
        assert!(!pid_alive(*w), "worker {w} outlived the master");
    }
    assert_eq!(inst.shm_objects(), Vec::<String>::new(), "left in /dev/shm");
    assert!(!inst.mq_exists(), "request queue not unlinked");
}

#[test]
fn each_daemon_alone_stops_cleanly() {
    with_deadline(T, || {
        let root = site("f");
        // The proxy without ever having seen a cached.
        let mut inst = Instance::builder().root(root.path()).build();
        inst.start_proxy();
        assert_503_quickly(&inst, "proxy alone");
        inst.stop_proxy();
        assert_eq!(inst.shm_objects(), Vec::<String>::new(), "proxy alone left");
        // cached without ever having seen a proxy.
        inst.spawn_cached();
        wait_cached_up(&mut inst);
        assert!(inst.cached_alive(), "cached exited alone:\n{}", inst.logs());
        inst.stop_cached();
        assert_eq!(
            inst.shm_objects(),
            Vec::<String>::new(),
            "cached alone left"
        );
        assert!(!inst.mq_exists(), "cached alone left its queue");
    });
}

#[test]
fn sigterm_stops_both_cleanly() {
    with_deadline(T, || stop_both_with(libc::SIGTERM));
}

#[test]
fn sigint_stops_both_cleanly() {
    with_deadline(T, || stop_both_with(libc::SIGINT));
}

#[test]
fn sigterm_lets_an_in_flight_request_finish() {
    with_deadline(T, || {
        let origin = Origin::start();
        let body = pattern(64 * 1024, 5);
        // About 1.6 s of trickling.
        origin.route(
            "/slow",
            Route::ok(body.clone()).trickle(4096, Duration::from_millis(100)),
        );
        let mut inst = Instance::builder().origin(&origin.url()).start();
        let addr = inst.addr();
        let client = thread::spawn(move || client::get(addr, "/slow"));
        poll_until(
            Duration::from_secs(5),
            "the request reaching the origin",
            || (origin.count("/slow") == 1).then_some(()),
        );
        poll_until(
            Duration::from_secs(5),
            "the answer crossing the pool",
            || (inst.pool().in_use > 0).then_some(()),
        );
        let t0 = Instant::now();
        inst.signal_proxy(libc::SIGTERM);
        inst.signal_cached(libc::SIGTERM);
        let r = client.join().expect("client thread");
        assert_eq!(r.status, 200, "{}", r.describe());
        shmproxy_tests::harness::assert_same_body(&r.body, &body, "in-flight /slow");
        let p = inst.wait_proxy_exit(EXIT_BOUND);
        let c = inst.wait_cached_exit(EXIT_BOUND.saturating_sub(t0.elapsed()));
        assert!(
            p.is_some_and(|s| s.success()) && c.is_some_and(|s| s.success()),
            "after the in-flight request: proxy {p:?}, cached {c:?} (within {EXIT_BOUND:?})\n{}",
            inst.logs()
        );
        assert_eq!(inst.shm_objects(), Vec::<String>::new());
        assert!(!inst.mq_exists());
    });
}

#[test]
fn two_instances_side_by_side() {
    with_deadline(T, || {
        let ra = site("instance A");
        let rb = site("instance B");
        let mut a = Instance::builder()
            .root(ra.path())
            .segments(3)
            .segment_size(4096)
            .start();
        let b = Instance::builder()
            .root(rb.path())
            .segments(5)
            .segment_size(8192)
            .start();
        assert_ne!(a.name, b.name);
        let mut ca = a.conn();
        let mut cb = b.conn();
        for _ in 0..20 {
            assert_eq!(ca.get("/hello.txt").text(), "hello from instance A\n");
            assert_eq!(cb.get("/hello.txt").text(), "hello from instance B\n");
        }
        assert_eq!((a.pool().segments, a.pool().segment_size), (3, 4096));
        assert_eq!((b.pool().segments, b.pool().segment_size), (5, 8192));
        drop(ca);

        a.stop_proxy();
        a.stop_cached();
        assert_eq!(a.shm_objects(), Vec::<String>::new());
        assert!(!a.mq_exists());
        // B is untouched.
        assert!(!b.shm_objects().is_empty());
        assert!(b.mq_exists());
        for _ in 0..5 {
            assert_eq!(cb.get("/hello.txt").text(), "hello from instance B\n");
        }
        // Through B's cached (a file never requested, so no cache holds it).
        let path = unique("b-after-a");
        write_file(rb.path(), &path, b"B still serves\n");
        let mut fresh = Conn::connect(b.addr());
        let r = fresh.get(&path);
        assert_eq!(r.status, 200, "{}", r.describe());
        assert_eq!(r.text(), "B still serves\n");
    });
}
