//! Hostile requests (issue 16, classes 2, 8, 10 and 11 on the front side): a request body is
//! always read or the connection closed, whatever answers it (CL.0 smuggling on arena hits, HEAD,
//! `Expect: 100-continue`, chunked GET, a PURGE hidden in a body, the stats endpoints); the
//! request parser follows RFC 9112 §6–7 byte for byte (Unicode whitespace after `chunked`,
//! chunk extensions, trailers, `Transfer-Encoding` in HTTP/1.0, `_` aliases of framing
//! fields); `Host` is validated and part of the cache key; client-supplied forwarding fields
//! are replaced; a directory redirect is never protocol-relative.

use crate::origin::{Origin, Route};
use shmproxy_tests::client::{self, Conn, Expect};
use shmproxy_tests::harness::{poll_until, with_deadline, write_file, Instance};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

/// An origin serving `/hot` (cacheable, so it is published in the arena) and the proxy in
/// front of it with one worker, `/hot` already stored.
fn hot() -> (Origin, Instance) {
    let origin = Origin::start();
    origin.route(
        "/hot",
        Route::ok("hot").header("Cache-Control", "max-age=60"),
    );
    let inst = Instance::builder().origin(&origin.url()).workers(1).start();
    let mut c = inst.conn();
    assert_eq!(c.get("/hot").status, 200);
    // cached publishes it in the arena right after it answered.
    poll_until(Duration::from_secs(5), "GET /hot from the arena", || {
        let r = c.get("/hot");
        assert_eq!(r.header("x-cache"), Some("HIT"), "{}", r.describe());
        let hits = inst.stats()["proxy"]["arena_hits"].as_u64().unwrap();
        (hits >= 1).then_some(())
    });
    (origin, inst)
}

/// A request line and Host, as a body: what a CL.0 attack smuggles.
fn smuggled(method: &str, path: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: e2e.test\r\n\r\n")
}

/// Sends `raw` on one connection, reads the answer (`expect`), then a plain `GET /hot` on the
/// same connection: it must be the next answer (the body was not parsed as a request).
#[track_caller]
fn then_hot(inst: &Instance, raw: &[u8], expect: Expect) {
    let mut c = inst.conn();
    c.send(raw);
    let first = c.read_response(expect).expect("answer to the request");
    assert!(first.status < 400, "{}", first.describe());
    c.send(b"GET /hot HTTP/1.1\r\nHost: e2e.test\r\n\r\n");
    let next = c
        .read_response(Expect::Body)
        .expect("answer to the next request on the connection");
    assert_eq!(
        (next.status, next.body.as_slice()),
        (200, &b"hot"[..]),
        "the next answer is the one to GET /hot: {}",
        next.describe()
    );
}

#[test]
fn a_body_on_an_arena_hit_is_never_parsed_as_the_next_request() {
    with_deadline(T, || {
        let (origin, inst) = hot();
        let body = smuggled("GET", "/smuggled-by-body");
        let req = format!(
            "GET /hot HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        then_hot(&inst, req.as_bytes(), Expect::Body);
        // HEAD.
        let req = format!(
            "HEAD /hot HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        then_hot(&inst, req.as_bytes(), Expect::NoBody);
        // Expect: 100-continue, the body sent at once (the 100 is skipped by the client).
        let req = format!(
            "GET /hot HTTP/1.1\r\nHost: e2e.test\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        then_hot(&inst, req.as_bytes(), Expect::Body);
        // A chunked GET.
        let req = format!(
            "GET /hot HTTP/1.1\r\nHost: e2e.test\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        then_hot(&inst, req.as_bytes(), Expect::Body);
        assert_eq!(
            origin.count("/smuggled-by-body"),
            0,
            "a body reached the origin as a request"
        );
        assert!(inst.stats()["proxy"]["request_bodies_discarded"].as_u64() >= Some(4));
    });
}

#[test]
fn a_purge_hidden_in_a_body_never_runs() {
    with_deadline(T, || {
        let (origin, inst) = hot();
        let body = smuggled("PURGE", "/hot");
        let req = format!(
            "GET /hot HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        then_hot(&inst, req.as_bytes(), Expect::Body);
        let r = inst.get("/hot");
        assert_eq!(r.header("x-cache"), Some("HIT"), "{}", r.describe());
        assert_eq!(origin.count("/hot"), 1, "/hot was purged by a body");
        assert_eq!(inst.stats()["proxy"]["requests_purge"].as_u64(), Some(0));
    });
}

#[test]
fn a_body_to_a_stats_endpoint_is_read_not_run() {
    with_deadline(T, || {
        let (origin, inst) = hot();
        let body = smuggled("GET", "/smuggled-by-stats");
        let req = format!(
            "GET /__shmproxy/stats HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        then_hot(&inst, req.as_bytes(), Expect::Body);
        assert_eq!(origin.count("/smuggled-by-stats"), 0);
    });
}

/// Sends `raw` on a new connection; the status of the answer and whether the connection was
/// closed after it.
fn answer_and_close(inst: &Instance, raw: &[u8]) -> (u16, bool) {
    let mut c = inst.conn();
    c.send(raw);
    let r = c.read_response(Expect::Body).expect("an answer");
    c.set_read_timeout(Duration::from_secs(3));
    let mut b = [0u8; 1];
    let closed = matches!(c.stream().read(&mut b), Ok(0) | Err(_));
    (r.status, closed)
}

#[test]
fn framing_is_parsed_byte_exact() {
    with_deadline(T, || {
        let origin = Origin::start();
        let inst = Instance::builder().origin(&origin.url()).start();
        let chunked = |te: &[u8], body: &[u8]| {
            let mut r = b"POST /echo HTTP/1.1\r\nHost: e2e.test\r\nTransfer-Encoding: ".to_vec();
            r.extend_from_slice(te);
            r.extend_from_slice(b"\r\n\r\n");
            r.extend_from_slice(body);
            r
        };
        // A plain chunked body is fine.
        let ok = chunked(
            b"chunked",
            b"5;name=\"v a\";x\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
        );
        assert_eq!(answer_and_close(&inst, &ok).0, 200);
        for (what, raw) in [
            (
                "chunked + U+00A0",
                chunked(b"chunked\xc2\xa0", b"5\r\nhello\r\n0\r\n\r\n"),
            ),
            (
                "chunked + U+2000",
                chunked(b"chunked\xe2\x80\x80", b"5\r\nhello\r\n0\r\n\r\n"),
            ),
            (
                "a request line after the last chunk",
                chunked(
                    b"chunked",
                    b"5\r\nhello\r\n0\r\nGET /smuggled-trailer HTTP/1.1\r\nHost: e2e.test\r\n\r\n",
                ),
            ),
            (
                "bare CR in a chunk extension",
                chunked(b"chunked", b"5;a\rb\r\nhello\r\n0\r\n\r\n"),
            ),
            (
                "NUL in a chunk extension",
                chunked(b"chunked", b"5;a=\0\r\nhello\r\n0\r\n\r\n"),
            ),
            (
                "Transfer_Encoding",
                b"POST /echo HTTP/1.1\r\nHost: e2e.test\r\nTransfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello"
                    .to_vec(),
            ),
            (
                "Content_Length",
                b"POST /echo HTTP/1.1\r\nHost: e2e.test\r\nContent_Length: 5\r\n\r\nhello".to_vec(),
            ),
        ] {
            let (status, closed) = answer_and_close(&inst, &raw);
            assert!(
                (400..=501).contains(&status) && status != 404,
                "{what}: {status}"
            );
            assert!(closed, "{what}: the connection stays open after {status}");
        }
        // Transfer-Encoding in HTTP/1.0 never keeps the connection.
        let (_, closed) = answer_and_close(
            &inst,
            b"POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        );
        assert!(closed, "HTTP/1.0 + Transfer-Encoding kept alive");
        assert_eq!(origin.count("/smuggled-trailer"), 0);
        // A `_` alias of another hop-by-hop or forwarding field is not forwarded.
        let r = client::fetch(
            inst.addr(),
            "GET",
            "/echo",
            &[("X_Forwarded_For", "6.6.6.6"), ("Proxy_Connection", "x")],
            b"",
        );
        assert_eq!(r.status, 200);
        let got = origin.requests_for("/echo");
        let last = got.last().unwrap();
        assert!(
            last.header("x_forwarded_for").is_none() && last.header("proxy_connection").is_none(),
            "{:?}",
            last.headers
        );
    });
}

#[test]
fn host_is_validated() {
    with_deadline(T, || {
        let origin = Origin::start();
        let inst = Instance::builder().origin(&origin.url()).start();
        for host in ["", "a b", "evil.test/x?", "x:8o", "a@b"] {
            let raw = format!("GET /echo HTTP/1.1\r\nHost: {host}\r\n\r\n");
            let (status, _) = answer_and_close(&inst, raw.as_bytes());
            assert_eq!(status, 400, "Host: {host:?}");
        }
        let (status, _) = answer_and_close(&inst, b"GET /echo HTTP/1.1\r\n\r\n");
        assert_eq!(status, 400, "HTTP/1.1 without Host");
        let (status, _) = answer_and_close(
            &inst,
            b"GET /echo HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        );
        assert_eq!(status, 400, "two Hosts");
        assert_eq!(origin.count("/echo"), 0);
    });
}

/// An origin that answers every request with the `X-Forwarded-Host` it got, cacheable, and
/// records the hosts `/page` was fetched for.
fn reflecting_origin() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            let log = log.clone();
            thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                loop {
                    let mut host = String::new();
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((n, v)) = h.split_once(':') {
                            if n.eq_ignore_ascii_case("x-forwarded-host") {
                                host = v.trim().to_string();
                            }
                        }
                    }
                    if line.split(' ').nth(1) == Some("/page") {
                        log.lock().unwrap().push(host.clone());
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: {}\r\n\r\n{host}",
                        host.len()
                    );
                    if w.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[test]
fn the_host_is_part_of_the_cache_key() {
    with_deadline(T, || {
        let (addr, seen) = reflecting_origin();
        let inst = Instance::builder()
            .origin(&format!("http://{addr}"))
            .workers(1)
            .start();
        let mut c = inst.conn();
        let get = |c: &mut Conn, host: &str| {
            let r = c.request("GET", "/page", &[("Host", host)], b"");
            assert_eq!(r.status, 200, "{}", r.describe());
            r.text()
        };
        // Each a few times: stored by cached, then hits from the arena.
        for _ in 0..3 {
            assert_eq!(get(&mut c, "site.test"), "site.test");
            assert_eq!(get(&mut c, "evil.test"), "evil.test");
            // Normalised: case and the default port do not make another entry.
            assert_eq!(get(&mut c, "SITE.test:80"), "site.test");
        }
        let fetched = seen.lock().unwrap().clone();
        assert_eq!(fetched.len(), 2, "one fetch per host: {fetched:?}");
        // An absolute-form target's authority is the host.
        let r = c.request(
            "GET",
            "http://evil.test/page",
            &[("Host", "evil.test")],
            b"",
        );
        assert_eq!(r.text(), "evil.test");
        // PURGE of one host's entry leaves the other.
        let p = client::fetch(inst.addr(), "PURGE", "/page", &[("Host", "evil.test")], b"");
        assert_eq!(p.status, 200);
        assert_eq!(get(&mut c, "site.test"), "site.test");
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert_eq!(get(&mut c, "evil.test"), "evil.test");
        assert_eq!(seen.lock().unwrap().len(), 3);
    });
}

#[test]
fn client_forwarding_headers_are_replaced_unless_trusted() {
    with_deadline(T, || {
        let origin = Origin::start();
        let spoof: &[(&str, &str)] = &[
            ("Host", "site.test"),
            ("X-Forwarded-Host", "evil.test"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("Forwarded", "for=6.6.6.6;host=evil.test"),
        ];
        let inst = Instance::builder().origin(&origin.url()).start();
        assert_eq!(
            client::fetch(inst.addr(), "GET", "/echo", spoof, b"").status,
            200
        );
        let got = origin.requests_for("/echo");
        let r = got.last().unwrap();
        assert_eq!(
            r.header_all("x-forwarded-host"),
            ["site.test"],
            "{:?}",
            r.headers
        );
        assert_eq!(
            r.header_all("x-forwarded-for"),
            ["127.0.0.1"],
            "{:?}",
            r.headers
        );
        // The client's "https" is replaced by what it really used.
        assert_eq!(
            r.header_all("x-forwarded-proto"),
            ["http"],
            "{:?}",
            r.headers
        );
        assert!(r.header("forwarded").is_none(), "{:?}", r.headers);
        assert!(inst.stats()["proxy"]["forwarding_headers_dropped"].as_u64() >= Some(1));
        drop(inst);

        // A trusted front end's are kept (and the peer appended to X-Forwarded-For).
        let inst = Instance::builder()
            .origin(&origin.url())
            .proxy_arg("--trusted-proxies")
            .proxy_arg("127.0.0.0/8")
            .start();
        assert_eq!(
            client::fetch(inst.addr(), "GET", "/echo", spoof, b"").status,
            200
        );
        let got = origin.requests_for("/echo");
        let r = got.last().unwrap();
        assert_eq!(
            r.header_all("x-forwarded-host"),
            ["evil.test"],
            "{:?}",
            r.headers
        );
        assert_eq!(
            r.header_all("x-forwarded-for"),
            ["6.6.6.6, 127.0.0.1"],
            "{:?}",
            r.headers
        );
        assert_eq!(r.header("x-forwarded-proto"), Some("https"));
        assert!(r.header("forwarded").is_some());
    });
}

#[test]
fn a_directory_redirect_is_never_protocol_relative() {
    with_deadline(T, || {
        let root = tempfile::tempdir().unwrap();
        write_file(root.path(), "www.evil.test/index.html", b"dir\n");
        write_file(root.path(), "sub/index.html", b"sub\n");
        let inst = Instance::builder().root(root.path()).start();
        let r = inst.get("/sub");
        assert_eq!((r.status, r.header("location")), (301, Some("/sub/")));
        for target in ["//www.evil.test", "///www.evil.test", "//www.evil.test?q"] {
            let r = inst.get(target);
            let loc = r.header("location").unwrap_or("");
            assert!(
                r.status != 301 || (loc.starts_with('/') && !loc.starts_with("//")),
                "{target}: {} Location {loc:?}",
                r.status
            );
            assert!(
                !loc.starts_with("//") && !loc.starts_with("/\\"),
                "{target}: {loc}"
            );
        }
    });
}
