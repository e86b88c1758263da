//! Fills streamed through the shared arena (issue 11, acceptance 4): a fill whose answer is
//! storable and has a declared length is exposed in the arena while it arrives, so collapsed
//! waiters do not each hold a segment — `cached` tells them to follow the arena record and
//! frees their segment at once, and later requests find the record in the arena themselves.
//! A fill that fails mid-body ends every streaming reader's answer short, and leaves nothing
//! behind.

use crate::origin::{Framing, Origin, Route};
use shmproxy_tests::client::{self, Conn, Expect};
use shmproxy_tests::harness::{pattern, poll_until, sha256_hex, with_deadline, Instance};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

fn counter(inst: &Instance, section: &str, name: &str) -> u64 {
    inst.stats()[section][name]
        .as_u64()
        .unwrap_or_else(|| panic!("stats: {section}.{name} missing"))
}

/// One client: sends a GET of `target` once `barrier` lets it, reads to the end (the request
/// says `Connection: close`); returns what it read and when the first body byte came.
fn herd_client(
    addr: std::net::SocketAddr,
    target: &'static str,
    barrier: Arc<Barrier>,
) -> (Vec<u8>, Option<Instant>) {
    let (got, first_body_at, _) = client::herd_get(addr, target, &barrier);
    (got, first_body_at)
}

#[test]
fn issue_11_a_hundred_collapsed_waiters_stream_one_fill_through_eight_segments() {
    herd(Duration::from_millis(300), "/herd4m");
}

/// The origin's head comes later than a segment may be waited for (`proxy.pool_wait_ms`,
/// 1 s): waiters give their segments back before the head and find the fill in the arena.
#[test]
fn issue_11_a_hundred_waiters_of_a_slow_head_through_eight_segments() {
    herd(Duration::from_millis(1500), "/slowhead4m");
}

/// 100 clients at once for one cold 4 MiB object through a pool of 8 segments; the origin's
/// head comes after `head`, then the body over ~1.9 s.
fn herd(head: Duration, target: &'static str) {
    with_deadline(T, move || {
        let origin = Origin::start();
        let inst = Instance::builder()
            .origin(&origin.url())
            .workers(2)
            .threads(128)
            .segments(8)
            .start();
        // 4 MiB in 20 pieces 100 ms apart after the head: the origin is still sending ~1.9 s
        // after it.
        let body = pattern(4 << 20, 11);
        let pieces = 20;
        origin.route(
            target,
            Route::ok(body.clone())
                .header("Cache-Control", "max-age=60")
                .delay(head)
                .trickle(body.len() / pieces, Duration::from_millis(100)),
        );
        let clients = 100;
        let barrier = Arc::new(Barrier::new(clients));
        let start = Instant::now();
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let (addr, barrier) = (inst.addr(), barrier.clone());
                thread::spawn(move || herd_client(addr, target, barrier))
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let origin_finished = start + head + Duration::from_millis((pieces as u64 - 1) * 100);
        assert_eq!(origin.count(target), 1, "one origin fetch");
        let want = sha256_hex(&body);
        let mut statuses = std::collections::BTreeMap::new();
        let mut late = 0;
        let mut wrong = 0;
        for (got, first) in &results {
            let i = client::find(got, b"\r\n\r\n").expect("a response head");
            let status = String::from_utf8_lossy(&got[9..12]).to_string();
            *statuses.entry(status.clone()).or_insert(0) += 1;
            if status == "200" && sha256_hex(&got[i + 4..]) != want {
                wrong += 1;
            }
            if first.is_none_or(|f| f >= origin_finished) {
                late += 1;
            }
        }
        assert_eq!(
            statuses.get("200"),
            Some(&clients),
            "statuses of {clients} clients: {statuses:?}"
        );
        assert_eq!(wrong, 0, "bodies that failed the checksum");
        assert_eq!(
            late, 0,
            "clients whose first body byte came after the origin finished"
        );
        eprintln!(
            "head after {head:?}: arena_streams {} arena_hits {} arena_follows {} \
             arena_early_follows {} collapsed {} follow_misses {} pool_acquires {}",
            counter(&inst, "proxy", "arena_streams"),
            counter(&inst, "proxy", "arena_hits"),
            counter(&inst, "cached", "arena_follows"),
            counter(&inst, "cached", "arena_early_follows"),
            counter(&inst, "cached", "collapsed"),
            counter(&inst, "proxy", "arena_follow_misses"),
            counter(&inst, "proxy", "pool_acquires"),
        );
        assert!(
            counter(&inst, "proxy", "arena_streams") > 0,
            "some answers streamed from the arena"
        );
        assert_eq!(counter(&inst, "cached", "fills_streamed"), 1);
        // The record is now an ordinary object: a hit from the arena, no new fetch.
        let r = inst.get(target);
        assert!(r.body == body && r.header("x-cache") == Some("HIT"));
        assert_eq!(origin.count(target), 1);
        inst.assert_pool_idle();
    });
}

#[test]
fn issue_11_an_origin_failing_mid_body_cuts_every_streaming_reader_short_and_leaks_nothing() {
    with_deadline(T, || {
        let origin = Origin::start();
        let inst = Instance::builder()
            .origin(&origin.url())
            .workers(2)
            .threads(64)
            .segments(8)
            .start();
        // Announces 4 MiB, sends 1 MiB over ~1 s, then closes.
        let body = pattern(1 << 20, 12);
        origin.route(
            "/cut4m",
            Route::ok(body.clone())
                .header("Cache-Control", "max-age=60")
                .header("Content-Length", &(4u64 << 20).to_string())
                .framing(Framing::Close)
                .delay(Duration::from_millis(200))
                .trickle(64 << 10, Duration::from_millis(60)),
        );
        let clients = 30;
        let barrier = Arc::new(Barrier::new(clients));
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let (addr, barrier) = (inst.addr(), barrier.clone());
                thread::spawn(move || {
                    let mut c = Conn::connect(addr);
                    c.set_read_timeout(Duration::from_secs(30));
                    barrier.wait();
                    c.send(&client::request_bytes("GET", "/cut4m", &[], b""));
                    c.read_response(Expect::Body)
                })
            })
            .collect();
        for h in handles {
            // Closed before the announced length, or refused: never a complete answer.
            if let Ok(r) = h.join().unwrap() {
                assert!(
                    r.status != 200,
                    "a truncated body was delivered as complete: {}",
                    r.describe()
                );
            }
        }
        assert_eq!(origin.count("/cut4m"), 1, "the waiters collapsed");
        assert!(counter(&inst, "cached", "fills_streamed") >= 1);
        assert!(
            counter(&inst, "proxy", "arena_stream_aborts") >= 1,
            "streaming readers were cut short"
        );
        // Nothing of the failed fill is stored or published, and its space is reused.
        origin.route(
            "/cut4m",
            Route::ok("whole").header("Cache-Control", "max-age=60"),
        );
        let r = inst.get("/cut4m");
        assert_eq!(r.body, b"whole", "nothing was stored from the failed fill");
        poll_until(
            Duration::from_secs(10),
            "the new answer in the arena",
            || {
                let r = inst.get("/cut4m");
                r.header("cache-status")
                    .is_some_and(|s| s.contains("detail=arena"))
                    .then_some(())
            },
        );
        assert_eq!(counter(&inst, "cached", "arena_objects"), 1);
        inst.assert_pool_idle();
    });
}
