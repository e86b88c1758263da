//! Idle keep-alive connections do not hold threads: 2,000 idle connections stay open to a proxy
//! with only 2 × 4 request threads while another client's requests are answered promptly.
//! Nor do blocked requests hold up the rest: while requests wait on a slow origin and clients
//! stop reading big answers, the worker's one poller hands its turn on and hits flow.
//! And a burst of connections larger than a busy worker's channel holds waits in the master
//! instead of being dropped; a burst of new connections is accepted whole, while a lone
//! client's connections are accepted at once.

use crate::origin::{Origin, Route};
use shmproxy_tests::client::{request_bytes, Conn, Expect};
use shmproxy_tests::harness::{
    pattern, poll_until, raise_nofile_limit, send_signal, with_deadline, write_file, Instance,
};
use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

const IDLE: usize = 2000;
/// Of which this many were used for one request first, then left idle.
const USED_THEN_IDLE: usize = 200;
/// "Promptly": the bound this test holds every request of the second client to.
const PROMPT: Duration = Duration::from_secs(1);

fn connect_retry(addr: std::net::SocketAddr) -> TcpStream {
    let mut last = None;
    for _ in 0..50 {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => return s,
            Err(e) => {
                last = Some(e);
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
    panic!("connect {addr}: {last:?}");
}

#[test]
fn idle_connections_do_not_block_other_clients() {
    with_deadline(Duration::from_secs(180), || {
        let limit = raise_nofile_limit();
        assert!(
            limit > (IDLE + 200) as u64,
            "RLIMIT_NOFILE {limit} too low for {IDLE} connections"
        );
        let root = tempfile::tempdir().unwrap();
        write_file(root.path(), "hello.txt", b"hello, world\n");
        let inst = Instance::builder()
            .root(root.path())
            .workers(2)
            .threads(4)
            .start();
        let addr = inst.addr();

        let mut used = Vec::with_capacity(USED_THEN_IDLE);
        for i in 0..USED_THEN_IDLE {
            let mut c = Conn::connect(addr);
            let r = c.get("/hello.txt");
            assert_eq!(r.status, 200, "warm-up request {i}");
            used.push(c);
        }
        let mut silent = Vec::with_capacity(IDLE - USED_THEN_IDLE);
        for _ in USED_THEN_IDLE..IDLE {
            silent.push(connect_retry(addr));
        }
        // The master has handed them all to workers.
        poll_until(
            Duration::from_secs(20),
            "every connection open in a worker",
            || {
                let open = inst.stats()["proxy"]["connections_active"].as_u64();
                open.is_some_and(|n| n >= IDLE as u64).then_some(())
            },
        );

        // Fresh connections.
        for i in 0..25 {
            let t0 = Instant::now();
            let r = inst.get("/hello.txt");
            let took = t0.elapsed();
            assert_eq!(r.status, 200, "request {i} on a new connection");
            assert_eq!(r.body, b"hello, world\n");
            assert!(
                took < PROMPT,
                "request {i} on a new connection took {took:?} with {IDLE} idle connections open"
            );
        }
        // One keep-alive connection.
        let mut c = Conn::connect(addr);
        for i in 0..25 {
            let t0 = Instant::now();
            let r = c.get("/hello.txt");
            let took = t0.elapsed();
            assert_eq!(r.status, 200, "keep-alive request {i}");
            assert!(
                took < PROMPT,
                "keep-alive request {i} took {took:?} with {IDLE} idle connections open"
            );
        }

        // The idle connections were really open and are still served.
        for i in (0..USED_THEN_IDLE).step_by(20) {
            let r = used[i].get("/hello.txt");
            assert_eq!(r.status, 200, "second request on used connection {i}");
        }
        for i in (0..silent.len()).step_by(180) {
            let mut conn = silent[i].try_clone().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            std::io::Write::write_all(
                &mut conn,
                &request_bytes("GET", "/hello.txt", &[("Connection", "close")], b""),
            )
            .unwrap();
            let mut text = Vec::new();
            std::io::Read::read_to_end(&mut conn, &mut text)
                .unwrap_or_else(|e| panic!("silent connection {i}: {e}"));
            assert!(
                text.starts_with(b"HTTP/1.1 200") && text.ends_with(b"hello, world\n"),
                "silent connection {i} answered {:?}",
                String::from_utf8_lossy(&text)
            );
        }
        drop(silent);
        drop(used);
    });
}

#[test]
fn requests_waiting_on_the_origin_or_on_clients_do_not_hold_up_others() {
    with_deadline(Duration::from_secs(120), || {
        const SLOW: usize = 3;
        const STALLED: usize = 2;
        let origin = Origin::start();
        origin.route(
            "/slow",
            Route::ok(b"slow\n".to_vec()).delay(Duration::from_secs(4)),
        );
        origin.route(
            "/big",
            Route::ok(pattern(16 << 20, 7)).header("Cache-Control", "max-age=60"),
        );
        origin.route(
            "/hot",
            Route::ok(b"hot\n".to_vec()).header("Cache-Control", "max-age=60"),
        );
        // Stored, so the worker answers it from the arena.
        origin.route(
            "/mid",
            Route::ok(pattern(1 << 20, 8)).header("Cache-Control", "max-age=60"),
        );
        // One worker, one poller, and just enough threads for the blocked requests (one
        // more stalled client, on arena hits) plus two.
        let inst = Instance::builder()
            .origin(&origin.url())
            .workers(1)
            .threads((SLOW + STALLED + 1 + 2) as u32)
            .start();
        assert_eq!(inst.get("/hot").status, 200);
        assert_eq!(inst.get("/big").status, 200);
        for _ in 0..2 {
            assert_eq!(inst.get("/mid").status, 200);
        }

        let addr = inst.addr();
        let slow: Vec<_> = (0..SLOW)
            .map(|_| thread::spawn(move || Conn::connect(addr).get("/slow").status))
            .collect();
        // Clients that ask for 16 MiB and never read: the threads answering them block on
        // full socket buffers until the send timeout.
        let stalled: Vec<TcpStream> = (0..STALLED)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(&request_bytes("GET", "/big", &[], b""))
                    .unwrap();
                s
            })
            .collect();
        // And one that pipelines arena hits of 1 MiB and never reads: its thread writes whole
        // answers until the socket is full, then must hand its turn on before it waits.
        let arena_hits = || inst.stats()["proxy"]["arena_hits"].as_u64().unwrap();
        let hits_before = arena_hits();
        let mut stalled_hits = TcpStream::connect(addr).unwrap();
        let pipelined: Vec<u8> = (0..32)
            .flat_map(|_| request_bytes("GET", "/mid", &[], b""))
            .collect();
        stalled_hits.write_all(&pipelined).unwrap();
        poll_until(Duration::from_secs(5), "the first pipelined hits", || {
            (arena_hits() - hits_before >= 2).then_some(())
        });
        // The subject: given time, a thread that does not wait on the full socket would answer
        // all 32.
        thread::sleep(Duration::from_millis(300));
        let answered = arena_hits() - hits_before;
        assert!(
            (2..32).contains(&answered),
            "{answered} of the 32 pipelined 1 MiB hits were answered to a client that reads \
             nothing: its thread should be waiting on a full socket"
        );

        let t_start = Instant::now();
        let mut c = Conn::connect(addr);
        for i in 0..40 {
            let t0 = Instant::now();
            let r = if i % 2 == 0 {
                c.get("/hot")
            } else {
                inst.get("/hot")
            };
            let took = t0.elapsed();
            assert_eq!(r.status, 200, "hit {i}: {}", r.describe());
            assert_eq!(r.body, b"hot\n");
            assert!(
                took < PROMPT,
                "hit {i} took {took:?} while others were blocked"
            );
        }
        // The hits really overlapped the blocked requests.
        assert!(
            slow.iter().all(|h| !h.is_finished()),
            "a slow request finished before the hits were done ({:?})",
            t_start.elapsed()
        );
        for h in slow {
            assert_eq!(h.join().unwrap(), 200, "slow request");
        }
        drop(stalled);
        drop(stalled_hits);
    });
}

#[test]
fn a_burst_beyond_a_busy_workers_channel_waits_in_the_master_and_is_answered() {
    with_deadline(Duration::from_secs(120), || {
        // A worker's channel holds what fits in its send buffer (about 200 KiB, of which each
        // message of up to 32 connections takes about 1 KiB); with its only thread busy and
        // connections arriving one by one, 2,000 overflow it.
        const BURST: usize = 2000;
        let limit = raise_nofile_limit();
        assert!(limit > (2 * BURST + 100) as u64, "RLIMIT_NOFILE {limit}");
        let origin = Origin::start();
        // Long enough that the burst is in (2,000 connects) while the thread still waits, even
        // on a loaded 2-core machine (2 s was seen to pass before the channel filled).
        origin.route(
            "/slow",
            Route::ok(b"slow\n".to_vec()).delay(Duration::from_secs(5)),
        );
        origin.route(
            "/hot",
            Route::ok(b"hot\n".to_vec()).header("Cache-Control", "max-age=60"),
        );
        // Connections arriving one by one, each in a message of its own: no accept coalescing.
        let cfg = tempfile::tempdir().unwrap();
        let cfg_file = cfg.path().join("proxy.toml");
        std::fs::write(&cfg_file, "[proxy]\naccept_coalesce_us = 0\n").unwrap();
        let inst = Instance::builder()
            .origin(&origin.url())
            .workers(1)
            .threads(1)
            .proxy_arg("--config")
            .proxy_arg(cfg_file.to_str().unwrap())
            .start();
        assert_eq!(inst.get("/hot").status, 200);
        let addr = inst.addr();
        // The worker's one thread waits on the origin: nobody reads the channel meanwhile.
        let slow = thread::spawn(move || Conn::connect(addr).get("/slow").status);
        poll_until(Duration::from_secs(5), "/slow reaching the origin", || {
            (origin.count("/slow") == 1).then_some(())
        });
        let burst: Vec<TcpStream> = (0..BURST)
            .map(|_| {
                let mut s = connect_retry(addr);
                s.write_all(&request_bytes(
                    "GET",
                    "/hot",
                    &[("Connection", "close")],
                    b"",
                ))
                .unwrap();
                s
            })
            .collect();
        for (i, mut s) in burst.into_iter().enumerate() {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut text = Vec::new();
            std::io::Read::read_to_end(&mut s, &mut text)
                .unwrap_or_else(|e| panic!("burst connection {i}: {e}"));
            assert!(
                text.starts_with(b"HTTP/1.1 200") && text.ends_with(b"hot\n"),
                "burst connection {i} answered {:?}",
                String::from_utf8_lossy(&text)
            );
        }
        assert_eq!(slow.join().unwrap(), 200, "slow request");
        let stats = inst.stats();
        assert!(
            stats["proxy"]["channel_full"].as_u64().unwrap() > 0,
            "the burst never found the channel full: the test proves nothing\n{stats}"
        );
        assert_eq!(stats["proxy"]["connections_waiting"].as_u64(), Some(0));
    });
}

#[test]
fn a_burst_of_new_connections_is_accepted_whole_and_a_lone_client_never_waits() {
    with_deadline(Duration::from_secs(60), || {
        let root = tempfile::tempdir().unwrap();
        write_file(root.path(), "hello.txt", b"hello, world\n");
        let inst = Instance::builder().root(root.path()).start();
        let addr = inst.addr();
        let coalesced = || inst.stats()["proxy"]["accepts_coalesced"].as_u64().unwrap();
        let one_new_connection = |what: &str| {
            let r = Conn::connect(addr).get("/hello.txt");
            assert_eq!(r.status, 200, "{what}: {}", r.describe());
        };
        for i in 0..5 {
            one_new_connection(&format!("lone request {i}"));
        }
        assert_eq!(coalesced(), 0, "one client at a time never waits");

        // With the master stopped, 20 connections queue in the listen backlog: its next
        // wake-up finds them all, which starts coalescing.
        let master = inst.proxy_pid().expect("proxy running");
        assert!(send_signal(master, libc::SIGSTOP));
        let burst: Vec<Conn> = (0..20)
            .map(|_| {
                let mut c = Conn::connect(addr);
                c.send(&request_bytes("GET", "/hello.txt", &[], b""));
                c
            })
            .collect();
        assert!(send_signal(master, libc::SIGCONT));
        for (i, mut c) in burst.into_iter().enumerate() {
            let r = c.read_response(Expect::Body).unwrap();
            assert_eq!(r.status, 200, "burst connection {i}: {}", r.describe());
        }
        // The next wake-up waits for more, finds one, and ends coalescing.
        one_new_connection("first request after the burst");
        assert_eq!(coalesced(), 1);
        for i in 0..5 {
            one_new_connection(&format!("lone request {i} after the burst"));
        }
        assert_eq!(coalesced(), 1, "a lone client never waits");
    });
}
