//! Signals (issue 14): every signal an operator or a tool may send leaves both daemons alive
//! and serving, each answered as `common::signals` says (SIGHUP reload, SIGUSR1 reopen, the
//! others logged and ignored, SIGPIPE ignored); SIGTERM and SIGQUIT stop them with nothing
//! left in /dev/shm or the mqueue namespace, even when SIGTERM reaches a proxy master that
//! is still starting.

use shmproxy_tests::harness::{describe_status, poll_until, with_deadline, write_file, Instance};
use std::os::unix::process::ExitStatusExt;
use std::thread;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

/// Signals sent to each daemon, with the log line each must produce (`None`: ignored
/// silently, SIGPIPE).
fn expected(daemon: &str, sig: i32) -> Option<&'static str> {
    match (daemon, sig) {
        ("proxy", libc::SIGHUP) => Some("SIGHUP: configuration reloaded"),
        ("cached", libc::SIGHUP) => Some("SIGHUP: configuration re-read: unchanged"),
        ("proxy", libc::SIGUSR1) => Some("SIGUSR1: workers reopen their access logs"),
        ("cached", libc::SIGUSR1) => Some("SIGUSR1: cached writes no log file"),
        (_, libc::SIGUSR2) => Some("SIGUSR2: ignored"),
        (_, libc::SIGALRM) => Some("SIGALRM: ignored"),
        _ => None,
    }
}

/// A request that needs both daemons: a file neither has served yet (no hit anywhere).
#[track_caller]
fn assert_serving(inst: &Instance, round: usize, what: &str) {
    let body = format!("round {round}");
    let r = inst.get(&format!("/f{round}.txt"));
    assert_eq!(
        (r.status, r.text()),
        (200, body),
        "after {what}\n{}",
        inst.logs()
    );
}

#[test]
fn issue_14_each_signal_leaves_both_daemons_serving_then_sigterm_leaves_nothing() {
    with_deadline(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        let signals = [
            (libc::SIGHUP, "SIGHUP"),
            (libc::SIGUSR1, "SIGUSR1"),
            (libc::SIGUSR2, "SIGUSR2"),
            (libc::SIGPIPE, "SIGPIPE"),
            (libc::SIGALRM, "SIGALRM"),
        ];
        for round in 0..=2 * signals.len() {
            write_file(
                dir.path(),
                &format!("f{round}.txt"),
                format!("round {round}").as_bytes(),
            );
        }
        let mut inst = Instance::builder().root(dir.path()).start();
        assert_serving(&inst, 0, "start");
        let mut round = 0;
        for daemon in ["proxy", "cached"] {
            for (sig, name) in signals {
                round += 1;
                let before = inst
                    .last_log(daemon)
                    .matches(expected(daemon, sig).unwrap_or("\0"))
                    .count();
                match daemon {
                    "proxy" => inst.signal_proxy(sig),
                    _ => inst.signal_cached(sig),
                }
                let what = format!("{name} to {daemon}");
                if let Some(line) = expected(daemon, sig) {
                    // The line proves the signal was taken and answered, not just not yet
                    // delivered.
                    poll_until(
                        Duration::from_secs(10),
                        &format!("{daemon} to log {line:?}"),
                        || (inst.last_log(daemon).matches(line).count() > before).then_some(()),
                    );
                } else {
                    // No line to wait for: the subject is that nothing happens meanwhile.
                    thread::sleep(Duration::from_millis(100));
                }
                assert!(
                    inst.proxy_alive(),
                    "proxy died after {what}\n{}",
                    inst.logs()
                );
                assert!(
                    inst.cached_alive(),
                    "cached died after {what}\n{}",
                    inst.logs()
                );
                assert_serving(&inst, round, &what);
            }
        }
        inst.stop_proxy();
        inst.stop_cached();
        assert_eq!(inst.shm_objects(), Vec::<String>::new(), "left in /dev/shm");
        assert!(!inst.mq_exists(), "the request queue is left");
    });
}

#[test]
fn issue_14_sigquit_stops_both_daemons_gracefully() {
    with_deadline(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), "f1.txt", b"round 1");
        let mut inst = Instance::builder().root(dir.path()).start();
        assert_serving(&inst, 1, "start");
        inst.signal_proxy(libc::SIGQUIT);
        inst.signal_cached(libc::SIGQUIT);
        for (what, st) in [
            ("proxy", inst.wait_proxy_exit(Duration::from_secs(5))),
            ("cached", inst.wait_cached_exit(Duration::from_secs(5))),
        ] {
            let st = st.unwrap_or_else(|| panic!("{what} still runs 5 s after SIGQUIT"));
            assert!(
                st.success(),
                "{what}: {}\n{}",
                describe_status(&st),
                inst.logs()
            );
        }
        assert_eq!(inst.shm_objects(), Vec::<String>::new(), "left in /dev/shm");
        assert!(!inst.mq_exists(), "the request queue is left");
    });
}

/// A SIGTERM that reaches the proxy master while it starts (0–20 ms after the spawn): the
/// master may die before its handlers exist (then it created nothing) or stop gracefully, but
/// never leaves its pool or stats region behind.
#[test]
fn issue_14_sigterm_while_the_proxy_starts_leaves_nothing() {
    with_deadline(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        let (mut graceful, mut early) = (0, 0);
        for i in 0..33u64 {
            let delay = Duration::from_micros((i % 11) * 2000);
            let mut inst = Instance::builder().root(dir.path()).workers(1).build();
            inst.spawn_proxy();
            thread::sleep(delay); // the subject: SIGTERM at every moment of the start-up
            inst.signal_proxy(libc::SIGTERM);
            let st = inst
                .wait_proxy_exit(Duration::from_secs(5))
                .unwrap_or_else(|| {
                    panic!("try {i}: proxy runs 5 s after SIGTERM\n{}", inst.logs())
                });
            match (st.code(), st.signal()) {
                (Some(0), _) => graceful += 1,
                (None, Some(libc::SIGTERM)) => early += 1,
                _ => panic!(
                    "try {i} ({delay:?}): proxy {}\n{}",
                    describe_status(&st),
                    inst.logs()
                ),
            }
            // Workers a graceful stop forked are gone once their master exited (it reaps them).
            let left = inst.shm_objects();
            assert!(
                left.is_empty() && !inst.mq_exists(),
                "try {i}: SIGTERM {delay:?} after the spawn left {left:?} ({})\n{}",
                describe_status(&st),
                inst.logs()
            );
        }
        eprintln!("SIGTERM during start: {graceful} graceful stops, {early} before the handlers");
    });
}

/// SIGHUP makes cached re-read its file: a broken file is logged and the running
/// configuration kept (cached serves on), a changed key is named as needing a restart.
#[test]
fn issue_14_cached_sighup_survives_a_broken_file_and_names_changed_keys() {
    with_deadline(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        for round in 1..=3 {
            write_file(
                dir.path(),
                &format!("f{round}.txt"),
                format!("round {round}").as_bytes(),
            );
        }
        let conf = tempfile::tempdir().unwrap();
        let file = conf.path().join("cached.toml");
        std::fs::write(&file, "[cached]\ncapacity = 1000000\n").unwrap();
        let inst = Instance::builder()
            .root(dir.path())
            .cached_arg("--config")
            .cached_arg(file.to_str().unwrap())
            .start();
        assert_serving(&inst, 1, "start");
        let wait_log = |line: &str| {
            poll_until(
                Duration::from_secs(10),
                &format!("cached to log {line:?}"),
                || inst.last_log("cached").contains(line).then_some(()),
            )
        };
        std::fs::write(&file, "[cached]\ncapacity = \"lots\"\n").unwrap();
        inst.signal_cached(libc::SIGHUP);
        wait_log("keeping the running configuration");
        assert_serving(&inst, 2, "SIGHUP with a broken file");
        std::fs::write(&file, "[cached]\ncapacity = 2000000\n").unwrap();
        inst.signal_cached(libc::SIGHUP);
        wait_log("SIGHUP: cached.capacity changed; restart cached to apply it");
        assert_serving(&inst, 3, "SIGHUP with a changed key");
    });
}

/// SIGHUP applies to a running cached the keys that decide how answers are stored and served
/// (here `cached.set_cookie`: "pass" → "strip"), names those that need a restart (here
/// `cached.capacity`), and keeps the cache warm: an object stored before stays a hit.
#[test]
fn issue_14_cached_sighup_applies_live_keys_and_keeps_the_cache_warm() {
    use crate::origin::{Origin, Route};
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        origin.route(
            "/sc",
            Route::ok("session\n")
                .header("Cache-Control", "max-age=60")
                .header("Set-Cookie", "sid=1"),
        );
        origin.route(
            "/warm",
            Route::ok("warm\n").header("Cache-Control", "max-age=60"),
        );
        let conf = tempfile::tempdir().unwrap();
        let file = conf.path().join("cached.toml");
        std::fs::write(&file, "[cached]\nset_cookie = \"pass\"\n").unwrap();
        let inst = Instance::builder()
            .origin(&origin.url())
            .cached_arg("--config")
            .cached_arg(file.to_str().unwrap())
            .start();
        let get = |target: &str| {
            let r = inst.get(target);
            assert_eq!(r.status, 200, "{target}: {}", r.describe());
            r
        };
        for _ in 0..2 {
            assert_eq!(get("/sc").header("set-cookie"), Some("sid=1"));
        }
        assert_eq!(origin.count("/sc"), 2, "pass: every request fetches");
        get("/warm");
        get("/warm");
        assert_eq!(origin.count("/warm"), 1);

        std::fs::write(
            &file,
            "[cached]\nset_cookie = \"strip\"\ncapacity = \"128MiB\"\n",
        )
        .unwrap();
        inst.signal_cached(libc::SIGHUP);
        poll_until(
            Duration::from_secs(10),
            "cached to apply the reload",
            || {
                let log = inst.last_log("cached");
                (log.contains("SIGHUP: applied cached.set_cookie")
                    && log.contains("SIGHUP: cached.capacity changed; restart cached to apply it"))
                .then_some(())
            },
        );
        let first = get("/sc");
        assert_eq!(
            first.header("set-cookie"),
            Some("sid=1"),
            "its own answer keeps it"
        );
        let again = get("/sc");
        assert_eq!(
            (again.header("set-cookie"), again.text()),
            (None, "session\n".to_string()),
            "strip: stored and shared without the cookie\n{}",
            inst.logs()
        );
        assert_eq!(origin.count("/sc"), 3, "the fourth request was a hit");
        assert_eq!(get("/warm").text(), "warm\n");
        assert_eq!(origin.count("/warm"), 1, "the cache stayed warm");
    });
}
