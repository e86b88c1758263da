//! HTTPS origins (issue 10, acceptance 1 and 2): bodies of every size arrive byte-identical
//! through a TLS origin, as misses then as hits, and stream; a bad certificate or a plain server
//! behind an `https://` URL answers `502` quickly, says why in cached's log and counts
//! `upstream_tls_errors`; TLS upstream connections are reused.
//!
//! The origin is [`Origin::start_tls`] with a certificate from a [`TestCa`] made at test time;
//! cached trusts the CA through `--tls-ca-file`.

use crate::origin::{Origin, Route};
use crate::tls::{TestCa, TestCert};
use shmproxy_tests::client::{self, Conn};
use shmproxy_tests::harness::{
    assert_same_body, pattern, poll_until, sha256_hex, with_deadline, Instance,
};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const LIMIT: Duration = Duration::from_secs(120);

/// cached's `connect_timeout_ms` in the failure tests, and the slack allowed on top of it.
const CONNECT_TIMEOUT_MS: u64 = 1000;
const MARGIN: Duration = Duration::from_secs(2);

/// An instance in front of `origin_url`, trusting `ca` (if any) through `--tls-ca-file`.
fn tls_instance(origin_url: &str, ca: Option<&Path>, extra: &[&str]) -> Instance {
    let mut b = Instance::builder().origin(origin_url).config_toml(&format!(
        "[cached]\nconnect_timeout_ms = {CONNECT_TIMEOUT_MS}\n"
    ));
    if let Some(p) = ca {
        b = b
            .cached_arg("--tls-ca-file")
            .cached_arg(p.to_str().unwrap());
    }
    for a in extra {
        b = b.cached_arg(a);
    }
    b.start()
}

fn x_cache(r: &client::Response) -> &str {
    r.header("x-cache").unwrap_or("(none)")
}

/// Acceptance 1: 0 B … 50 MiB through an HTTPS origin, byte-identical, misses then hits.
#[test]
fn sites_tls_bodies_arrive_identical_as_misses_then_hits() {
    with_deadline(Duration::from_secs(300), || {
        let ca = TestCa::new();
        let origin = Origin::start_tls(&ca.leaf_valid(&["localhost"]));
        let sizes = [0, 1, KIB, 64 * KIB, MIB, 50 * MIB];
        let objs: Vec<(String, Vec<u8>)> = sizes
            .iter()
            .map(|&n| {
                let path = format!("/tls/{n}.bin");
                let body = pattern(n, 0x715 ^ n as u64);
                origin.route(
                    &path,
                    Route::ok(body.clone()).header("Cache-Control", "max-age=300"),
                );
                (path, body)
            })
            .collect();
        // 50 MiB must be storable to come back as a hit.
        let inst = tls_instance(
            &origin.url(),
            Some(ca.pem_path()),
            &["--max-object-size", "67108864", "--capacity", "268435456"],
        );
        let mut conn = inst.conn();
        for (round, want) in [(0, "MISS"), (1, "HIT")] {
            for (path, body) in &objs {
                let what = format!("{path} ({} bytes) round {round}", body.len());
                let r = conn.get(path);
                assert_eq!(r.status, 200, "{what}: {}", r.describe());
                assert_eq!(x_cache(&r), want, "{what}: {}", r.describe());
                assert_same_body(&r.body, body, &what);
            }
        }
        for (path, _) in &objs {
            assert_eq!(origin.count(path), 1, "{path}: fetched once over TLS");
        }
        drop(conn);
        inst.assert_pool_idle();
    });
}

/// Acceptance 1: a trickled body streams through a TLS origin: the first bytes reach the
/// client while the origin is still sending.
#[test]
fn sites_tls_trickled_body_streams_before_the_origin_finishes() {
    with_deadline(LIMIT, || {
        let ca = TestCa::new();
        let origin = Origin::start_tls(&ca.leaf_valid(&["localhost"]));
        // 1 MiB in 16 pieces 150 ms apart: the origin sends its last piece ≥ 2.25 s after
        // the head.
        let body = pattern(MIB, 0x5106);
        let pieces = 16;
        let pause = Duration::from_millis(150);
        origin.route(
            "/slow",
            Route::ok(body.clone())
                .header("Cache-Control", "max-age=60")
                .trickle(body.len() / pieces, pause),
        );
        let inst = tls_instance(&origin.url(), Some(ca.pem_path()), &[]);
        let mut c = Conn::connect(inst.addr());
        c.set_read_timeout(Duration::from_secs(30));
        let start = Instant::now();
        c.send(&client::request_bytes(
            "GET",
            "/slow",
            &[("Connection", "close")],
            b"",
        ));
        let mut stream = c.stream().try_clone().unwrap();
        let mut got = c.buffered().to_vec();
        let mut first_body_at = None;
        let mut buf = vec![0u8; 64 * KIB];
        loop {
            if first_body_at.is_none() {
                if let Some(i) = client::find(&got, b"\r\n\r\n") {
                    if got.len() > i + 4 {
                        first_body_at = Some(start.elapsed());
                    }
                }
            }
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("reading /slow: {e}"),
            }
        }
        let total = start.elapsed();
        let i = client::find(&got, b"\r\n\r\n").expect("a response head");
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got[..i])
        );
        assert_eq!(sha256_hex(&got[i + 4..]), sha256_hex(&body), "body intact");
        let origin_done = pause * (pieces as u32 - 1);
        let first = first_body_at.expect("some body arrived");
        assert!(
            total >= origin_done,
            "the origin trickles for {origin_done:?}, yet all came in {total:?}"
        );
        assert!(
            first < origin_done,
            "first body byte after {first:?}; the origin was still sending until ~{origin_done:?}"
        );
    });
}

/// One failing TLS origin: the client gets 502 within the connect timeout (plus a margin),
/// cached's log names the site (`default`, from `--origin`) and one of `reasons`, and
/// `upstream_tls_errors` rises.
fn assert_tls_failure(what: &str, origin: &Origin, url: &str, ca: Option<&Path>, reasons: &[&str]) {
    origin.route("/secret", Route::ok("must not arrive"));
    let inst = tls_instance(url, ca, &[]);
    let before = inst
        .cached_counter("upstream_tls_errors")
        .unwrap_or_else(|| {
            panic!(
                "{what}: stats.cached.upstream_tls_errors missing in {}",
                inst.stats()
            )
        });
    let t0 = Instant::now();
    let r = client::get(inst.addr(), "/secret");
    let took = t0.elapsed();
    assert_eq!(r.status, 502, "{what}: {}", r.describe());
    let bound = Duration::from_millis(CONNECT_TIMEOUT_MS) + MARGIN;
    assert!(took < bound, "{what}: 502 after {took:?}, want < {bound:?}");
    assert_eq!(
        origin.count("/secret"),
        0,
        "{what}: nothing reached the origin"
    );
    poll_until(
        Duration::from_secs(5),
        &format!("{what}: upstream_tls_errors above {before}"),
        || (inst.cached_counter("upstream_tls_errors").unwrap_or(0) > before).then_some(()),
    );
    let line = poll_until(
        Duration::from_secs(5),
        &format!("{what}: a cached log line naming the site and one of {reasons:?}"),
        || {
            inst.cached_log()
                .lines()
                .find(|l| {
                    let l = l.to_ascii_lowercase();
                    l.contains("default") && reasons.iter().any(|w| l.contains(w))
                })
                .map(str::to_string)
        },
    );
    eprintln!("{what}: cached logged: {line}");
}

#[test]
fn sites_tls_untrusted_certificate_gives_502() {
    with_deadline(LIMIT, || {
        let origin = Origin::start_tls(&TestCert::self_signed(&["localhost"]));
        assert_tls_failure(
            "self-signed certificate, no --tls-ca-file",
            &origin,
            &origin.url(),
            None,
            &[
                "unknownissuer",
                "unknown issuer",
                "untrusted",
                "not trusted",
                "self-signed",
                "self signed",
            ],
        );
    });
}

#[test]
fn sites_tls_name_mismatch_gives_502() {
    with_deadline(LIMIT, || {
        let ca = TestCa::new();
        let origin = Origin::start_tls(&ca.leaf_valid(&["other.test"]));
        assert_tls_failure(
            "certificate for other.test at localhost",
            &origin,
            &origin.url(),
            Some(ca.pem_path()),
            &[
                "not valid for name",
                "notvalidforname",
                "name mismatch",
                "does not match",
            ],
        );
    });
}

#[test]
fn sites_tls_expired_certificate_gives_502() {
    with_deadline(LIMIT, || {
        let ca = TestCa::new();
        let origin = Origin::start_tls(&ca.leaf(&["localhost"], (2001, 1, 1), (2002, 1, 1)));
        assert_tls_failure(
            "certificate expired in 2002",
            &origin,
            &origin.url(),
            Some(ca.pem_path()),
            &["expired"],
        );
    });
}

#[test]
fn sites_tls_plain_http_server_behind_https_url_gives_502() {
    with_deadline(LIMIT, || {
        let ca = TestCa::new();
        // A plain origin (it answers the ClientHello with a plain `400`) behind https://.
        let origin = Origin::builder().url_host("localhost").start();
        let url = origin.url().replacen("http://", "https://", 1);
        assert!(url.starts_with("https://localhost:"), "{url}");
        assert_tls_failure(
            "plain HTTP behind https://",
            &origin,
            &url,
            Some(ca.pem_path()),
            &[
                "corrupt",
                "invalidcontenttype",
                "invalid content type",
                "not tls",
                "handshake",
            ],
        );
    });
}

/// A server that accepts TCP connections behind an `https://` URL and never says a word: the
/// handshake must still end within the connect timeout.
#[test]
fn sites_tls_silent_server_behind_https_url_gives_an_error_within_the_connect_timeout() {
    with_deadline(LIMIT, || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let holder = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut held = Vec::new();
                let until = Instant::now() + Duration::from_secs(60);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < until {
                    match listener.accept() {
                        Ok((c, _)) => held.push(c),
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
                held.len()
            })
        };
        let ca = TestCa::new();
        let inst = tls_instance(
            &format!("https://localhost:{port}"),
            Some(ca.pem_path()),
            &[],
        );
        let t0 = Instant::now();
        let r = client::get(inst.addr(), "/silent");
        let took = t0.elapsed();
        assert!(
            r.status == 502 || r.status == 504,
            "a silent TLS server: {}",
            r.describe()
        );
        let bound = Duration::from_millis(CONNECT_TIMEOUT_MS) * 2 + MARGIN;
        assert!(
            took < bound,
            "answered after {took:?}: the handshake is not bounded by the connect timeout \
             (want < {bound:?}, one retry allowed)"
        );
        drop(inst);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(holder.join().unwrap() >= 1, "cached connected");
    });
}

/// `n` sequential 1 KiB misses on one client connection; returns (requests/s, TCP connections
/// the origin accepted meanwhile).
fn misses(inst: &Instance, origin: &Origin, n: usize) -> (f64, usize) {
    let mut conn = inst.conn();
    // One request first, so the ready probe's connection state does not count.
    let r = conn.get("/pool?warm");
    assert_eq!(r.status, 200, "{}", r.describe());
    let accepted = origin.accepted();
    let t0 = Instant::now();
    for i in 0..n {
        let r = conn.get(&format!("/pool?i={i}"));
        assert_eq!(r.status, 200, "miss {i}: {}", r.describe());
        assert_eq!(x_cache(&r), "MISS", "miss {i}: {}", r.describe());
        assert_eq!(r.body.len(), KIB);
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    (rate, origin.accepted() - accepted)
}

/// Acceptance 2: TLS upstream connections are pooled: 50 sequential misses use a few TCP
/// connections, not 50. Prints the miss rate against a plain and a TLS origin (for the note).
#[test]
fn sites_tls_connections_are_pooled_and_reused() {
    with_deadline(LIMIT, || {
        const N: usize = 50;
        let ca = TestCa::new();
        let tls = Origin::start_tls(&ca.leaf_valid(&["localhost"]));
        let plain = Origin::start();
        for o in [&tls, &plain] {
            o.route(
                "/pool",
                Route::ok(pattern(KIB, 7)).header("Cache-Control", "max-age=60"),
            );
        }
        let inst = tls_instance(&tls.url(), Some(ca.pem_path()), &[]);
        let (tls_rate, tls_conns) = misses(&inst, &tls, N);
        drop(inst);
        let inst = tls_instance(&plain.url(), None, &[]);
        let (plain_rate, plain_conns) = misses(&inst, &plain, N);
        drop(inst);
        eprintln!(
            "1 KiB misses, sequential: plain {plain_rate:.0} req/s over {plain_conns} connections, TLS {tls_rate:.0} req/s over {tls_conns} connections"
        );
        assert!(
            tls_conns <= 3,
            "{N} sequential misses opened {tls_conns} TLS connections (want ≤ 3)"
        );
        assert!(
            plain_conns <= 3,
            "{N} sequential misses opened {plain_conns} plain connections (want ≤ 3)"
        );
    });
}
