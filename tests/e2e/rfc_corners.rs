//! Issue 12, the corners of RFC 9110/9111 and RFC 9213 that cross the daemons: what is
//! stored (any final status with explicit freshness, a bodyless 204, never a 1xx), 1xx
//! forwarded to HTTP/1.1 clients as they come, dates in
//! every form, `If-Modified-Since` against `Date`, a `HEAD` 200 updating the stored `GET`,
//! qualified `no-cache`/`private`, and `CDN-Cache-Control` with its config keys. The pure
//! rules have unit tests in `common/src/cache_policy.rs` and `common/src/http.rs`.

use crate::origin::{Origin, Route};
use common::http::http_date;
use shmproxy_tests::client::{self, Conn};
use shmproxy_tests::harness::{with_deadline, Instance};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

const LIMIT: Duration = Duration::from_secs(120);

fn instance(origin: &Origin) -> Instance {
    Instance::builder().origin(&origin.url()).start()
}

fn get(inst: &Instance, target: &str, headers: &[(&str, &str)]) -> client::Response {
    client::fetch(inst.addr(), "GET", target, headers, b"")
}

fn x_cache(r: &client::Response) -> &str {
    r.header("x-cache").unwrap_or("-")
}

#[test]
fn issue_12_a_bodyless_204_and_any_final_status_with_freshness_are_stored() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = instance(&origin);
        origin.route(
            "/nc",
            Route::ok("")
                .status(204)
                .header("Cache-Control", "max-age=60")
                .header("X-Mark", "m"),
        );
        origin.route(
            "/teapot",
            Route::ok("short and stout")
                .status(418)
                .header("Cache-Control", "max-age=60"),
        );
        // Two requests on one connection: a stored 204 must be framed without a body, or
        // the second answer would be read as part of the first.
        let mut c = Conn::connect(inst.addr());
        let first = c.get("/nc");
        let second = c.get("/nc");
        for r in [&first, &second] {
            assert_eq!(r.status, 204, "{}", r.describe());
            assert!(r.body.is_empty(), "{}", r.describe());
            assert!(r.header("content-length").is_none(), "{}", r.describe());
            assert_eq!(r.header("x-mark"), Some("m"));
        }
        assert_eq!(x_cache(&second), "HIT", "{}", second.describe());
        let after = c.get("/teapot");
        assert_eq!(after.status, 418, "the connection still frames answers");
        let again = get(&inst, "/teapot", &[]);
        assert_eq!(again.body, b"short and stout");
        assert_eq!(x_cache(&again), "HIT", "{}", again.describe());
        assert_eq!(origin.count("/nc"), 1);
        assert_eq!(origin.count("/teapot"), 1);
    });
}

#[test]
fn issue_12_must_understand_overrides_no_store_for_understood_statuses_only() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = instance(&origin);
        let cc = "max-age=60, must-understand, no-store";
        origin.route("/mu", Route::ok("ok").header("Cache-Control", cc));
        origin.route(
            "/mu-odd",
            Route::ok("odd").status(299).header("Cache-Control", cc),
        );
        for path in ["/mu", "/mu-odd"] {
            get(&inst, path, &[]);
            get(&inst, path, &[]);
        }
        assert_eq!(origin.count("/mu"), 1, "200 is understood: stored");
        assert_eq!(origin.count("/mu-odd"), 2, "299 is not: never stored");
    });
}

#[test]
fn issue_12_dates_in_every_form_and_an_invalid_expires_is_expired() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = instance(&origin);
        let now = SystemTime::now();
        let date = http_date(now);
        // An hour ahead, as RFC 850 and asctime dates and in lower case.
        let ahead = http_date(now + Duration::from_secs(3600));
        let (wd, rest) = ahead.split_once(", ").unwrap();
        let d: Vec<&str> = rest.split(' ').collect(); // dd Mon yyyy hh:mm:ss GMT
        let full_day = match wd {
            "Mon" => "Monday",
            "Tue" => "Tuesday",
            "Wed" => "Wednesday",
            "Thu" => "Thursday",
            "Fri" => "Friday",
            "Sat" => "Saturday",
            _ => "Sunday",
        };
        let rfc850 = format!("{full_day}, {}-{}-{} {} GMT", d[0], d[1], &d[2][2..], d[3]);
        let day: u32 = d[0].parse().unwrap();
        let asctime = format!("{wd} {} {day:>2} {} {}", d[1], d[3], d[2]);
        let lower = ahead.to_ascii_lowercase();
        let cases = [
            ("/rfc850", rfc850.as_str(), true),
            ("/asctime", asctime.as_str(), true),
            ("/lower", lower.as_str(), true),
            // No comma after the day name: invalid, so already expired (RFC 9111 §5.3).
            ("/nocomma", "Thu 18 Aug 2050 02:01:18 GMT", false),
        ];
        for (path, expires, stored) in cases {
            origin.route(
                path,
                Route::ok("d")
                    .header("Date", &date)
                    .header("Expires", expires),
            );
            get(&inst, path, &[]);
            let second = get(&inst, path, &[]);
            assert_eq!(
                origin.count(path),
                if stored { 1 } else { 2 },
                "{path}: Expires {expires:?}: {}",
                second.describe()
            );
        }
    });
}

#[test]
fn issue_12_if_modified_since_is_compared_with_date_without_last_modified() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = instance(&origin);
        let now = SystemTime::now();
        origin.route(
            "/dated",
            Route::ok("body")
                .header("Date", &http_date(now))
                .header("Cache-Control", "max-age=60"),
        );
        assert_eq!(get(&inst, "/dated", &[]).status, 200);
        let later = http_date(now + Duration::from_secs(5));
        let r = get(&inst, "/dated", &[("If-Modified-Since", &later)]);
        assert_eq!(r.status, 304, "{}", r.describe());
        let earlier = http_date(now - Duration::from_secs(3600));
        let r = get(&inst, "/dated", &[("If-Modified-Since", &earlier)]);
        assert_eq!(r.status, 200, "{}", r.describe());
        assert_eq!(r.body, b"body");
        assert_eq!(origin.count("/dated"), 1);
    });
}

#[test]
fn issue_12_a_head_200_freshens_the_stored_get_or_drops_it() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = instance(&origin);
        // Stored, stale at once: the HEAD goes to the origin.
        for path in ["/same", "/changed"] {
            origin.route(
                path,
                Route::ok("old")
                    .header("ETag", "\"v1\"")
                    .header("Cache-Control", "max-age=0"),
            );
            assert_eq!(get(&inst, path, &[]).body, b"old");
        }
        // Same validator: the HEAD's fields (a lifetime, a new field) update the stored GET.
        origin.route(
            "/same",
            Route::ok("old")
                .header("ETag", "\"v1\"")
                .header("Cache-Control", "max-age=60")
                .header("X-New", "1"),
        );
        let head = client::fetch(inst.addr(), "HEAD", "/same", &[], b"");
        assert_eq!(head.status, 200, "{}", head.describe());
        let r = get(&inst, "/same", &[]);
        assert_eq!(r.body, b"old");
        assert_eq!(x_cache(&r), "HIT", "{}", r.describe());
        assert_eq!(r.header("x-new"), Some("1"), "{}", r.describe());
        let gets = |path: &str| {
            origin
                .requests_for(path)
                .iter()
                .filter(|q| q.method == "GET")
                .count()
        };
        assert_eq!(gets("/same"), 1, "the GET was never fetched again");
        // Another validator: the stored GET is dropped, so the next GET is a plain miss
        // (no If-None-Match with the old tag).
        origin.route(
            "/changed",
            Route::ok("new")
                .header("ETag", "\"v2\"")
                .header("Cache-Control", "max-age=60"),
        );
        let head = client::fetch(inst.addr(), "HEAD", "/changed", &[], b"");
        assert_eq!(head.status, 200, "{}", head.describe());
        let r = get(&inst, "/changed", &[]);
        assert_eq!(r.body, b"new");
        let last = origin.requests_for("/changed").pop().unwrap();
        assert_eq!(last.method, "GET");
        assert_eq!(
            last.header("if-none-match"),
            None,
            "the stale GET was still stored and revalidated"
        );
    });
}

#[test]
fn issue_12_qualified_no_cache_and_private_store_the_answer_without_their_fields() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = instance(&origin);
        origin.route(
            "/q",
            Route::ok("shared part")
                .header(
                    "Cache-Control",
                    "max-age=60, no-cache=\"Set-Cookie\", private=\"X-Foo\"",
                )
                .header("Set-Cookie", "session=first")
                .header("X-Foo", "mine")
                .header("X-Keep", "k"),
        );
        let first = get(&inst, "/q", &[]);
        assert_eq!(first.header("set-cookie"), Some("session=first"));
        assert_eq!(first.header("x-foo"), Some("mine"));
        for _ in 0..2 {
            let r = get(&inst, "/q", &[]);
            assert_eq!(x_cache(&r), "HIT", "{}", r.describe());
            assert_eq!(r.body, b"shared part");
            assert_eq!(r.header("x-keep"), Some("k"));
            assert!(r.header("set-cookie").is_none(), "{}", r.describe());
            assert!(r.header("x-foo").is_none(), "{}", r.describe());
        }
        assert_eq!(origin.count("/q"), 1);
    });
}

#[test]
fn issue_12_cdn_cache_control_rules_this_cache_and_is_passed_on_by_default() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = instance(&origin);
        // Browsers may not store it; this cache may, for a minute.
        origin.route(
            "/cdn",
            Route::ok("edge")
                .header("Cache-Control", "no-store")
                .header("CDN-Cache-Control", "max-age=60"),
        );
        // And the other way round.
        origin.route(
            "/browser-only",
            Route::ok("b")
                .header("Cache-Control", "max-age=60")
                .header("CDN-Cache-Control", "no-store"),
        );
        for path in ["/cdn", "/browser-only"] {
            get(&inst, path, &[]);
        }
        let r = get(&inst, "/cdn", &[]);
        assert_eq!(x_cache(&r), "HIT", "{}", r.describe());
        assert_eq!(r.header("cdn-cache-control"), Some("max-age=60"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        get(&inst, "/browser-only", &[]);
        assert_eq!(origin.count("/cdn"), 1);
        assert_eq!(origin.count("/browser-only"), 2);
    });
}

#[test]
fn issue_12_targeted_fields_follow_the_config_and_are_stripped_on_request() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("targeted.toml");
        std::fs::write(
            &cfg,
            "[cached]\ntargeted_cache_control = [\"Surrogate-Control\", \"CDN-Cache-Control\"]\nstrip_targeted = true\n",
        )
        .unwrap();
        let inst = Instance::builder()
            .origin(&origin.url())
            .cached_arg("--config")
            .cached_arg(cfg.to_str().unwrap())
            .start();
        origin.route(
            "/s",
            Route::ok("s")
                .header("Cache-Control", "private")
                .header("CDN-Cache-Control", "no-store")
                .header("Surrogate-Control", "max-age=60"),
        );
        let first = get(&inst, "/s", &[]);
        let second = get(&inst, "/s", &[]);
        assert_eq!(x_cache(&second), "HIT", "{}", second.describe());
        for r in [&first, &second] {
            assert!(r.header("surrogate-control").is_none(), "{}", r.describe());
            assert!(r.header("cdn-cache-control").is_none(), "{}", r.describe());
            assert_eq!(r.header("cache-control"), Some("private"));
        }
        assert_eq!(origin.count("/s"), 1);
    });
}

/// A `103` is never stored or mistaken for the answer, and an interim answer with no final
/// one after it is a 502 (forwarding itself: the next test).
#[test]
fn issue_12_a_103_before_the_answer_is_never_stored_and_the_answer_arrives() {
    with_deadline(LIMIT, || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let count = count.clone();
                thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                    let mut buf = Vec::new();
                    let mut b = [0u8; 4096];
                    while client::find(&buf, b"\r\n\r\n").is_none() {
                        match conn.read(&mut b) {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&b[..k]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf);
                    // The harness's readiness probe is not ours to count.
                    let n = if head.starts_with("GET /__e2e_ready ") {
                        0
                    } else {
                        count.fetch_add(1, Ordering::SeqCst)
                    };
                    let mut out = String::from(
                        "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\
                         Cache-Control: max-age=600\r\n\r\n",
                    );
                    if head.starts_with("GET /only-hints ") {
                        // An interim answer and then nothing: no answer at all.
                        let _ = conn.write_all(out.as_bytes());
                        return;
                    }
                    out.push_str(&format!(
                        "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nX-N: {n}\r\n\
                         Content-Length: 5\r\nConnection: close\r\n\r\nhello"
                    ));
                    let _ = conn.write_all(out.as_bytes());
                });
            }
        });
        let inst = Instance::builder()
            .origin(&format!("http://{addr}"))
            .start();
        let first = get(&inst, "/page", &[]);
        assert_eq!(first.status, 200, "{}", first.describe());
        assert_eq!(first.body, b"hello");
        let second = get(&inst, "/page", &[]);
        assert_eq!(second.status, 200, "{}", second.describe());
        assert_eq!(second.body, b"hello");
        assert_eq!(x_cache(&second), "HIT", "the final answer is stored");
        assert!(
            second.header("link").is_none(),
            "the 103's fields stayed out"
        );
        assert_eq!(served.load(Ordering::SeqCst), 1);
        // Only an interim answer, then a close: an error, and nothing stored.
        for _ in 0..2 {
            let r = get(&inst, "/only-hints", &[]);
            assert_eq!(r.status, 502, "{}", r.describe());
        }
        // Each reached the origin (cached may retry an idempotent request once).
        assert!(served.load(Ordering::SeqCst) >= 3);
    });
}

/// RFC 9111 §3.3-3.4: a 206 is stored as a piece; a later range inside it is a hit; a
/// piece that touches it combines, and once the pieces hold the whole body, full and range
/// requests are hits of the complete answer.
#[test]
fn issue_12_partial_answers_are_stored_and_combined() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = instance(&origin);
        let piece = |range: &str, body: &str| {
            Route::ok(body.to_string())
                .status(206)
                .header("Content-Range", range)
                .header("ETag", "\"p1\"")
                .header("Cache-Control", "max-age=60")
        };
        origin.route("/r", piece("bytes 0-4/10", "01234"));
        let r = get(&inst, "/r", &[("Range", "bytes=0-4")]);
        assert_eq!((r.status, r.body.as_slice()), (206, &b"01234"[..]));
        let r = get(&inst, "/r", &[("Range", "bytes=1-3")]);
        assert_eq!(r.status, 206, "{}", r.describe());
        assert_eq!(r.body, b"123");
        assert_eq!(r.header("content-range"), Some("bytes 1-3/10"));
        assert_eq!(x_cache(&r), "HIT", "{}", r.describe());
        assert_eq!(origin.count("/r"), 1);
        // A range the piece does not hold goes to the origin; the two pieces combine.
        origin.route("/r", piece("bytes 5-9/10", "56789"));
        let r = get(&inst, "/r", &[("Range", "bytes=5-9")]);
        assert_eq!((r.status, r.body.as_slice()), (206, &b"56789"[..]));
        assert_eq!(origin.count("/r"), 2);
        let full = get(&inst, "/r", &[]);
        assert_eq!(full.status, 200, "{}", full.describe());
        assert_eq!(full.body, b"0123456789");
        assert_eq!(x_cache(&full), "HIT", "{}", full.describe());
        let r = get(&inst, "/r", &[("Range", "bytes=2-7")]);
        assert_eq!((r.status, r.body.as_slice()), (206, &b"234567"[..]));
        assert_eq!(origin.count("/r"), 2);
        // A piece of another representation (another ETag) is not combined with it.
        origin.route("/s", piece("bytes 0-4/10", "abcde"));
        get(&inst, "/s", &[("Range", "bytes=0-4")]);
        origin.route(
            "/s",
            Route::ok("fghij")
                .status(206)
                .header("Content-Range", "bytes 5-9/10")
                .header("ETag", "\"p2\"")
                .header("Cache-Control", "max-age=60"),
        );
        get(&inst, "/s", &[("Range", "bytes=5-9")]);
        let full = get(&inst, "/s", &[]);
        assert_ne!(x_cache(&full), "HIT", "{}", full.describe());
    });
}

/// RFC 9111 §3.4 with pieces that do not touch when they come: each is kept (a range inside
/// either is a hit), and the piece that fills the gap combines all three into the complete
/// answer; a piece of a new representation makes the old pieces go.
#[test]
fn issue_12_disjoint_pieces_are_kept_side_by_side_and_combine_when_the_gap_fills() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = instance(&origin);
        let piece = |range: &str, body: &str, tag: &str| {
            Route::ok(body.to_string())
                .status(206)
                .header("Content-Range", range)
                .header("ETag", tag)
                .header("Cache-Control", "max-age=60")
        };
        let fetch = |path: &str, range: &str| {
            let r = get(&inst, path, &[("Range", range)]);
            assert_eq!(r.status, 206, "{path} {range}: {}", r.describe());
            r
        };
        origin.route("/d", piece("bytes 0-2/10", "012", "\"v1\""));
        fetch("/d", "bytes=0-2");
        origin.route("/d", piece("bytes 6-9/10", "6789", "\"v1\""));
        fetch("/d", "bytes=6-9");
        assert_eq!(origin.count("/d"), 2);
        for (range, body) in [("bytes=0-1", "01"), ("bytes=7-9", "789")] {
            let r = fetch("/d", range);
            assert_eq!((x_cache(&r), r.text().as_str()), ("HIT", body), "{range}");
        }
        assert_eq!(origin.count("/d"), 2, "both pieces were kept");
        origin.route("/d", piece("bytes 3-5/10", "345", "\"v1\""));
        fetch("/d", "bytes=3-5");
        let full = get(&inst, "/d", &[]);
        assert_eq!(
            (full.status, x_cache(&full), full.text().as_str()),
            (200, "HIT", "0123456789"),
            "{}",
            full.describe()
        );
        assert_eq!(origin.count("/d"), 3);

        // A new representation: its piece replaces the old ones.
        origin.route("/e", piece("bytes 0-2/10", "abc", "\"v1\""));
        fetch("/e", "bytes=0-2");
        origin.route("/e", piece("bytes 5-6/10", "XY", "\"v2\""));
        fetch("/e", "bytes=5-6");
        let old = get(&inst, "/e", &[("Range", "bytes=0-2")]);
        assert_ne!(
            x_cache(&old),
            "HIT",
            "the v1 piece went: {}",
            old.describe()
        );
        let r = fetch("/e", "bytes=5-6");
        assert_eq!((x_cache(&r), r.text().as_str()), ("HIT", "XY"));
    });
}

/// An origin that answers `/hints` with `102` and `103` at once and its final answer
/// `delay` later; the time the final answer was sent is recorded.
fn hints_origin(delay: Duration) -> (SocketAddr, Arc<std::sync::Mutex<Vec<std::time::Instant>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let finals = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sent = finals.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let sent = sent.clone();
            thread::spawn(move || loop {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                let mut buf = Vec::new();
                let mut b = [0u8; 4096];
                while client::find(&buf, b"\r\n\r\n").is_none() {
                    match conn.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&b[..k]),
                    }
                }
                if !String::from_utf8_lossy(&buf).starts_with("GET /hints ") {
                    let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                    continue;
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 102 Processing\r\n\r\n\
                      HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\
                      Connection: X-Hop\r\nX-Hop: 1\r\n\r\n",
                );
                thread::sleep(delay);
                sent.lock().unwrap().push(std::time::Instant::now());
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\nhello",
                );
            });
        }
    });
    (addr, finals)
}

/// What a client reads for one request: every byte until the connection closes, and when
/// the first interim head was complete.
fn read_all(addr: SocketAddr, request: &str) -> (String, Option<std::time::Instant>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut first_interim = None;
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(k) => got.extend_from_slice(&b[..k]),
        }
        if first_interim.is_none()
            && got.starts_with(b"HTTP/1.1 1")
            && client::find(&got, b"\r\n\r\n").is_some()
        {
            first_interim = Some(std::time::Instant::now());
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), first_interim)
}

/// RFC 9110 §15.2: a proxy forwards 1xx answers. The origin's `102` and `103` reach an
/// HTTP/1.1 client as they come, before the origin sends its final answer, without their
/// hop-by-hop fields and with our `Via`; an HTTP/1.0 client gets none (counted); the final
/// answer is stored without them, and its hits carry none.
#[test]
fn issue_12_interim_answers_reach_http11_clients_before_the_final_answer() {
    with_deadline(LIMIT, || {
        let (addr, finals) = hints_origin(Duration::from_millis(800));
        let inst = Instance::builder()
            .origin(&format!("http://{addr}"))
            .start();
        let (got, interim_at) = read_all(
            inst.addr(),
            "GET /hints HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        );
        let heads: Vec<&str> = got.split("\r\n\r\n").collect();
        assert!(heads.len() >= 4, "{got}");
        assert!(heads[0].starts_with("HTTP/1.1 102 Processing\r\n"), "{got}");
        assert!(
            heads[1].starts_with("HTTP/1.1 103 Early Hints\r\n"),
            "{got}"
        );
        assert!(
            heads[1].contains("\r\nLink: </s.css>; rel=preload"),
            "{got}"
        );
        assert!(heads[1].contains("\r\nVia: 1.1 "), "{got}");
        assert!(
            !heads[1].to_ascii_lowercase().contains("x-hop"),
            "hop-by-hop: {got}"
        );
        assert!(heads[2].starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(
            !heads[2].contains("Link:"),
            "the final answer is the origin's own: {got}"
        );
        assert_eq!(heads[3], "hello", "{got}");
        let final_sent = finals.lock().unwrap()[0];
        assert!(
            interim_at.expect("an interim head") < final_sent,
            "the 103 came before the origin sent its final answer"
        );

        let (old, _) = read_all(inst.addr(), "GET /hints HTTP/1.0\r\nHost: b.test\r\n\r\n");
        assert!(
            old.starts_with("HTTP/1.1 200 OK\r\n"),
            "no 1xx to HTTP/1.0: {old}"
        );
        let (hit, _) = read_all(
            inst.addr(),
            "GET /hints HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        );
        assert!(hit.starts_with("HTTP/1.1 200 OK\r\n"), "{hit}");
        assert!(hit.contains("X-Cache: HIT"), "{hit}");
        let stats = inst.stats();
        assert_eq!(stats["proxy"]["interim_forwarded"].as_u64(), Some(2));
        assert_eq!(stats["proxy"]["interim_dropped"].as_u64(), Some(2));
        assert_eq!(stats["cached"]["upstream_interim"].as_u64(), Some(4));
    });
}
