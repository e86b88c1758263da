//! HTTP/1.1 behaviour through the proxy: keep-alive, pipelining, HEAD, HTTP/1.0,
//! `Connection: close`, 404, disk metadata (`Content-Type`, `Date`, `Last-Modified`, `ETag`),
//! directory index, header forwarding to the origin (hop-by-hop removed, `X-Forwarded-For` and
//! `Via` added) and request bodies (`Content-Length` and chunked) for unsafe methods.

use crate::origin::{unhex, Origin, Route};
use shmproxy_tests::client::{chunk_encode, request_bytes, Expect};
use shmproxy_tests::harness::{
    assert_same_body, pattern, sha256_hex, with_deadline, write_file, Instance,
};
use std::fs;
use std::time::{Duration, SystemTime};

const T: Duration = Duration::from_secs(60);

/// A doc root with a few files of distinct content.
fn site() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "index.html", b"<h1>root index</h1>\n");
    write_file(root.path(), "hello.txt", b"hello, world\n");
    write_file(root.path(), "dir/index.html", b"<p>dir index</p>\n");
    write_file(root.path(), "dir/other.txt", b"other\n");
    for i in 0..20u64 {
        let n = [0, 1, 100, 5000, 70_000][i as usize % 5] + i as usize;
        write_file(root.path(), &format!("p/{i}.bin"), &pattern(n, 1000 + i));
    }
    root
}

#[test]
fn keepalive_1000_requests_on_one_connection() {
    with_deadline(T, || {
        let root = site();
        let inst = Instance::builder().root(root.path()).start();
        let mut c = inst.conn();
        let small = b"hello, world\n".to_vec();
        let mid = fs::read(root.path().join("p/3.bin")).unwrap();
        for i in 0..1000 {
            let (path, want) = if i % 10 == 9 {
                ("/p/3.bin", &mid)
            } else {
                ("/hello.txt", &small)
            };
            let r = c.get(path);
            assert_eq!(r.status, 200, "request {i}: {}", r.describe());
            assert!(
                !r.connection_has("close"),
                "request {i}: server closes a keep-alive connection"
            );
            assert_same_body(&r.body, want, &format!("request {i} {path}"));
        }
    });
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    with_deadline(T, || {
        let root = site();
        // Small segments: several of the pipelined bodies span many chunks.
        let inst = Instance::builder()
            .root(root.path())
            .segment_size(4096)
            .segments(4)
            .start();
        let mut c = inst.conn();
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for i in 0..20u64 {
            let path = format!("/p/{i}.bin");
            wire.extend(request_bytes("GET", &path, &[], b""));
            expected.push((
                path.clone(),
                200,
                fs::read(root.path().join(&path[1..])).unwrap(),
            ));
            if i == 7 {
                wire.extend(request_bytes("GET", "/missing-in-the-middle", &[], b""));
                expected.push(("/missing-in-the-middle".into(), 404, Vec::new()));
            }
            if i == 12 {
                wire.extend(request_bytes("HEAD", "/p/4.bin", &[], b""));
                expected.push(("HEAD /p/4.bin".into(), 200, Vec::new()));
            }
        }
        // One write: every request is in the proxy's buffer before the first answer.
        c.send(&wire);
        for (path, status, body) in &expected {
            let expect = if path.starts_with("HEAD") {
                Expect::NoBody
            } else {
                Expect::Body
            };
            let r = c
                .read_response(expect)
                .unwrap_or_else(|e| panic!("pipelined {path}: {e}"));
            assert_eq!(r.status, *status, "pipelined {path}: {}", r.describe());
            if *status == 200 && expect == Expect::Body {
                assert_same_body(&r.body, body, &format!("pipelined {path}"));
            }
            if path.starts_with("HEAD") {
                let n = fs::metadata(root.path().join("p/4.bin")).unwrap().len();
                assert_eq!(r.content_length(), Some(n), "pipelined HEAD length");
            }
        }
        // Nothing extra after the last answer.
        let (extra, _) = c.drain(Duration::from_millis(300));
        assert!(
            extra.is_empty(),
            "{} extra bytes after the pipelined answers",
            extra.len()
        );
    });
}

#[test]
fn head_has_length_and_no_body() {
    with_deadline(T, || {
        let root = site();
        let inst = Instance::builder().root(root.path()).start();
        let body = fs::read(root.path().join("p/4.bin")).unwrap();
        let mut c = inst.conn();
        let h = c.request("HEAD", "/p/4.bin", &[], b"");
        assert_eq!(h.status, 200, "{}", h.describe());
        assert_eq!(
            h.content_length(),
            Some(body.len() as u64),
            "HEAD Content-Length"
        );
        // If the proxy had sent a body after the HEAD answer, the next answer would not parse.
        let g = c.get("/hello.txt");
        assert_eq!(g.status, 200, "GET after HEAD: {}", g.describe());
        assert_eq!(g.body, b"hello, world\n");
        // And on a closing connection: nothing but the head arrives.
        let mut c = inst.conn();
        c.send(&request_bytes(
            "HEAD",
            "/p/4.bin",
            &[("Connection", "close")],
            b"",
        ));
        let h = c.read_response(Expect::NoBody).unwrap();
        assert_eq!(h.status, 200);
        let extra = c
            .wait_closed(Duration::from_secs(5))
            .expect("Connection: close after HEAD");
        assert!(
            extra.is_empty(),
            "{} body bytes after a HEAD answer",
            extra.len()
        );
        // HEAD of a missing file.
        let mut c = inst.conn();
        let h = c.request("HEAD", "/nope.txt", &[], b"");
        assert_eq!(h.status, 404);
    });
}

#[test]
fn head_through_the_origin_has_length_and_no_body() {
    with_deadline(T, || {
        let origin = Origin::start();
        let body = pattern(10_000, 42);
        origin.route("/obj", Route::ok(body.clone()));
        let inst = Instance::builder().origin(&origin.url()).start();
        let mut c = inst.conn();
        let h = c.request("HEAD", "/obj", &[], b"");
        assert_eq!(h.status, 200, "{}", h.describe());
        assert_eq!(h.content_length(), Some(10_000), "{}", h.describe());
        let g = c.get("/obj");
        assert_eq!(g.status, 200, "GET after HEAD: {}", g.describe());
        assert_same_body(&g.body, &body, "GET /obj after HEAD");
        let h = c.request("HEAD", "/obj", &[], b"");
        assert_eq!(
            h.content_length(),
            Some(10_000),
            "second HEAD: {}",
            h.describe()
        );
        let (extra, _) = c.drain(Duration::from_millis(300));
        assert!(
            extra.is_empty(),
            "{} bytes after a HEAD answer",
            extra.len()
        );
    });
}

#[test]
fn http10_request_is_answered_and_closed() {
    with_deadline(T, || {
        let root = site();
        let inst = Instance::builder().root(root.path()).start();
        let mut c = inst.conn();
        c.send(b"GET /hello.txt HTTP/1.0\r\n\r\n");
        let r = c.read_response(Expect::Body).unwrap();
        assert_eq!(r.status, 200, "{}", r.describe());
        assert!(r.version.starts_with("HTTP/1."), "{}", r.version);
        assert_eq!(r.body, b"hello, world\n");
        c.wait_closed(Duration::from_secs(5))
            .expect("HTTP/1.0 without keep-alive must be closed after the answer");
        // With a Host header and a larger body too.
        let big = fs::read(root.path().join("p/4.bin")).unwrap();
        let mut c = inst.conn();
        c.send(b"GET /p/4.bin HTTP/1.0\r\nHost: x\r\n\r\n");
        let r = c.read_response(Expect::Body).unwrap();
        assert_eq!(r.status, 200);
        assert_same_body(&r.body, &big, "HTTP/1.0 /p/4.bin");
        c.wait_closed(Duration::from_secs(5))
            .expect("HTTP/1.0 closed");
    });
}

#[test]
fn connection_close_closes() {
    with_deadline(T, || {
        let root = site();
        let inst = Instance::builder().root(root.path()).start();
        let mut c = inst.conn();
        let r = c.get("/hello.txt");
        assert_eq!(r.status, 200);
        let r = c.request("GET", "/hello.txt", &[("Connection", "close")], b"");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello, world\n");
        c.wait_closed(Duration::from_secs(5))
            .expect("connection open after Connection: close");
    });
}

#[test]
fn missing_file_is_404() {
    with_deadline(T, || {
        let root = site();
        let inst = Instance::builder().root(root.path()).start();
        let mut c = inst.conn();
        for p in [
            "/nope.txt",
            "/dir/nope.html",
            "/no/such/dir/",
            "/hello.txt/x",
        ] {
            let r = c.get(p);
            assert_eq!(r.status, 404, "{p}: {}", r.describe());
            assert!(r.header("x-cache").is_some(), "{p}: no X-Cache");
        }
        // The connection still works after the 404s.
        assert_eq!(c.get("/hello.txt").status, 200);
    });
}

#[test]
fn content_type_by_extension() {
    with_deadline(T, || {
        let root = tempfile::tempdir().unwrap();
        let cases: &[(&str, &[&str])] = &[
            ("a.html", &["text/html"]),
            ("a.css", &["text/css"]),
            ("a.js", &["text/javascript", "application/javascript"]),
            ("a.json", &["application/json"]),
            ("a.png", &["image/png"]),
            ("a.txt", &["text/plain"]),
        ];
        for (f, _) in cases {
            write_file(root.path(), f, format!("content of {f}").as_bytes());
        }
        let inst = Instance::builder().root(root.path()).start();
        let mut c = inst.conn();
        for (f, types) in cases {
            let r = c.get(&format!("/{f}"));
            assert_eq!(r.status, 200, "{f}");
            let ct = r
                .header("content-type")
                .unwrap_or_else(|| panic!("{f}: no Content-Type"));
            let media = ct.split(';').next().unwrap().trim().to_ascii_lowercase();
            assert!(types.contains(&media.as_str()), "{f}: Content-Type {ct:?}");
        }
    });
}

#[test]
fn disk_files_carry_date_last_modified_etag() {
    with_deadline(T, || {
        let root = site();
        let p = root.path().join("hello.txt");
        // 2001-09-09 01:46:40 UTC.
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let inst = Instance::builder().root(root.path()).start();
        let r = inst.get("/hello.txt");
        assert_eq!(r.status, 200);
        assert_eq!(r.content_length(), Some(13));
        assert_eq!(
            r.header("last-modified"),
            Some("Sun, 09 Sep 2001 01:46:40 GMT"),
            "{}",
            r.describe()
        );
        let date = r.header("date").expect("no Date");
        assert!(is_imf_fixdate(date), "Date {date:?} is not an IMF-fixdate");
        assert!(date.contains("20"), "Date {date:?}");
        let etag = r.header("etag").expect("no ETag");
        let opaque = etag.strip_prefix("W/").unwrap_or(etag);
        assert!(
            opaque.len() >= 3 && opaque.starts_with('"') && opaque.ends_with('"'),
            "ETag {etag:?} is not a quoted entity-tag"
        );
        // Two different files have different tags.
        let other = inst.get("/dir/other.txt");
        assert_ne!(other.header("etag"), Some(etag), "same ETag for two files");
    });
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`.
fn is_imf_fixdate(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 29
        && ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"].contains(&&s[..3])
        && &s[3..5] == ", "
        && s.ends_with(" GMT")
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[12..16].iter().all(u8::is_ascii_digit)
        && b[17..19].iter().all(u8::is_ascii_digit)
        && b[20..22].iter().all(u8::is_ascii_digit)
        && b[23..25].iter().all(u8::is_ascii_digit)
}

#[test]
fn directory_serves_index_html() {
    with_deadline(T, || {
        let root = site();
        let inst = Instance::builder().root(root.path()).start();
        let mut c = inst.conn();
        let r = c.get("/");
        assert_eq!(r.status, 200, "/: {}", r.describe());
        assert_eq!(r.body, b"<h1>root index</h1>\n");
        let r = c.get("/dir/");
        assert_eq!(r.status, 200, "/dir/: {}", r.describe());
        assert_eq!(r.body, b"<p>dir index</p>\n");
        let media = r.header("content-type").unwrap_or_default();
        assert!(
            media.starts_with("text/html"),
            "/dir/ Content-Type {media:?}"
        );
        // Without the slash: the index, or a redirect to the slash form.
        let r = c.get("/dir");
        match r.status {
            200 => assert_eq!(r.body, b"<p>dir index</p>\n"),
            301 | 302 | 307 | 308 => {
                let loc = r.header("location").unwrap_or_default();
                assert!(loc.ends_with("/dir/"), "/dir redirects to {loc:?}");
            }
            s => panic!("/dir answered {s}: {}", r.describe()),
        }
    });
}

/// Hop-by-hop request headers a proxy must not forward.
const HOP: &[&str] = &[
    "x-foo",
    "keep-alive",
    "te",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
];

#[test]
fn origin_gets_client_headers_minus_hop_by_hop() {
    with_deadline(T, || {
        let origin = Origin::start();
        origin.route(
            "/page",
            Route::ok("page body").header("X-From-Origin", "yes"),
        );
        let inst = Instance::builder().origin(&origin.url()).start();
        let mut c = inst.conn();
        let r = c.request(
            "GET",
            "/echo/h?q=1",
            &[
                ("User-Agent", "e2e-agent/1.0"),
                ("Accept", "text/plain"),
                ("X-Custom", "custom value 42"),
                ("X-Multi", "one"),
                ("X-Multi", "two"),
                ("Connection", "keep-alive, X-Foo"),
                ("X-Foo", "hop-by-hop by Connection"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Upgrade", "websocket"),
                ("Proxy-Authorization", "Basic c2VjcmV0OnNlY3JldA=="),
                ("Proxy-Connection", "keep-alive"),
            ],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.describe());
        let got = origin.requests_for("/echo/h");
        assert_eq!(got.len(), 1, "the origin saw {} requests", got.len());
        let req = &got[0];
        assert_eq!(req.method, "GET");
        assert_eq!(req.target, "/echo/h?q=1", "target rewritten");
        assert_eq!(req.header("user-agent"), Some("e2e-agent/1.0"));
        assert_eq!(req.header("accept"), Some("text/plain"));
        assert_eq!(req.header("x-custom"), Some("custom value 42"));
        let multi: Vec<String> = req
            .header_all("x-multi")
            .iter()
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_string())
            .collect();
        assert_eq!(multi, ["one", "two"], "X-Multi values");
        for h in HOP {
            assert!(
                req.header(h).is_none(),
                "hop-by-hop header {h} reached the origin: {:?}",
                req.headers
            );
        }
        for v in req.header_all("connection") {
            assert!(
                !v.to_ascii_lowercase().contains("x-foo"),
                "Connection: {v} forwarded"
            );
        }
        let xff = req.header("x-forwarded-for").expect("no X-Forwarded-For");
        assert!(xff.contains("127.0.0.1"), "X-Forwarded-For {xff:?}");
        let via = req.header_all("via").join(", ");
        assert!(
            via.to_ascii_lowercase().contains("shmproxy"),
            "Via {via:?} does not name shmproxy"
        );
        // The echo answer came back, too.
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("echo JSON");
        assert_eq!(v["target"], "/echo/h?q=1");
        // And the origin's own response headers reach the client.
        let r = c.get("/page");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"page body");
        assert_eq!(r.header("x-from-origin"), Some("yes"));
        assert!(r.header("x-cache").is_some(), "no X-Cache");
    });
}

/// Sends `method` with `body` to `/echo/<tag>` framed as asked, checks what the origin received
/// and what came back.
fn body_roundtrip(inst: &Instance, origin: &Origin, method: &str, body: &[u8], chunked: bool) {
    let tag = format!(
        "/echo/{}-{}-{}",
        method.to_ascii_lowercase(),
        body.len(),
        if chunked { "chunked" } else { "length" }
    );
    let what = format!("{method} {tag}");
    let mut c = inst.conn();
    let r = if chunked {
        let wire = chunk_encode(body, &[1, 7, 4096, 100, 65536, 3]);
        c.request(
            method,
            &tag,
            &[
                ("Transfer-Encoding", "chunked"),
                ("Content-Type", "application/octet-stream"),
            ],
            &wire,
        )
    } else {
        c.request(
            method,
            &tag,
            &[
                ("Content-Length", &body.len().to_string()),
                ("Content-Type", "application/octet-stream"),
            ],
            body,
        )
    };
    assert_eq!(r.status, 200, "{what}: {}", r.describe());
    let got = origin.requests_for(&tag);
    assert_eq!(got.len(), 1, "{what}: origin saw {} requests", got.len());
    let req = &got[0];
    assert_eq!(req.method, method, "{what}: method at the origin");
    assert!(
        !(req.header("content-length").is_some() && req.header("transfer-encoding").is_some()),
        "{what}: origin got both Content-Length and Transfer-Encoding"
    );
    assert_same_body(&req.body, body, &format!("{what}: body at the origin"));
    assert_eq!(
        req.header("content-type"),
        Some("application/octet-stream"),
        "{what}"
    );
    // The origin's answer (which embeds the body it saw) comes back intact.
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{what}: answer is not the echo JSON ({e})"));
    assert_eq!(v["method"], method, "{what}");
    assert_eq!(v["body_len"], body.len(), "{what}");
    let echoed = unhex(v["body_hex"].as_str().unwrap());
    assert_eq!(sha256_hex(&echoed), sha256_hex(body), "{what}: echoed body");
    // The connection stays usable.
    let r = c.request("GET", "/echo/after", &[], b"");
    assert_eq!(r.status, 200, "{what}: request after the body");
}

#[test]
fn request_bodies_reach_the_origin_intact() {
    with_deadline(Duration::from_secs(120), || {
        let origin = Origin::start();
        let seg = 4096;
        let inst = Instance::builder()
            .origin(&origin.url())
            .segment_size(seg)
            .segments(4)
            .start();
        let small = b"name=value&x=1".to_vec();
        let large = pattern(25 * seg + 13, 77); // many segments' worth
        for method in ["POST", "PUT", "DELETE"] {
            for chunked in [false, true] {
                body_roundtrip(&inst, &origin, method, &small, chunked);
                body_roundtrip(&inst, &origin, method, &large, chunked);
            }
        }
        // An empty POST.
        body_roundtrip(&inst, &origin, "POST", b"", false);
        inst.assert_pool_idle();
    });
}

#[test]
fn unsafe_methods_are_not_answered_from_cache() {
    with_deadline(T, || {
        let origin = Origin::start();
        let inst = Instance::builder().origin(&origin.url()).start();
        let mut c = inst.conn();
        for i in 0..3 {
            let r = c.request("POST", "/echo/post-twice", &[], b"same body");
            assert_eq!(r.status, 200, "POST {i}");
        }
        assert_eq!(
            origin.count("/echo/post-twice"),
            3,
            "every POST reaches the origin"
        );
    });
}

#[test]
fn other_methods_reach_the_origin() {
    with_deadline(T, || {
        let origin = Origin::start();
        let inst = Instance::builder().origin(&origin.url()).start();
        let mut c = inst.conn();
        for (m, body) in [
            ("OPTIONS", &b""[..]),
            ("PATCH", &b"{\"op\":\"replace\"}"[..]),
            ("PROPFIND", &b"<propfind/>"[..]),
        ] {
            let path = format!("/echo/m-{}", m.to_ascii_lowercase());
            let r = c.request(m, &path, &[], body);
            assert_eq!(r.status, 200, "{m}: {}", r.describe());
            let got = origin.requests_for(&path);
            assert_eq!(got.len(), 1, "{m} reached the origin {} times", got.len());
            assert_eq!(got[0].method, m);
            assert_eq!(got[0].body, body, "{m} body");
        }
    });
}

/// A request head as large as `proxy.max_header_bytes` allows reaches the origin whole: a
/// field line of 200 KiB (the limit raised to 256 KiB) is forwarded, not refused by a
/// fixed-size buffer on the way to the origin.
#[test]
fn a_field_line_as_long_as_max_header_bytes_allows_reaches_the_origin() {
    with_deadline(T, || {
        let origin = Origin::start();
        origin.route("/long", Route::ok("ok").header("Cache-Control", "no-store"));
        // One file for both daemons, as an operator writes it.
        let toml = "[proxy]\nmax_header_bytes = \"256KiB\"\n".to_string();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shmproxy.toml");
        fs::write(&file, &toml).unwrap();
        let inst = Instance::builder()
            .origin(&origin.url())
            .segment_size(1 << 20)
            .config_toml(&toml)
            .proxy_arg("--config")
            .proxy_arg(file.to_str().unwrap())
            .start();
        let cookie = "c".repeat(200 << 10);
        let mut c = inst.conn();
        let r = c.request("GET", "/long", &[("Cookie", &cookie)], b"");
        assert_eq!(r.status, 200, "{}", r.describe());
        let seen = origin.requests_for("/long");
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].header("cookie").map(str::len), Some(cookie.len()));
    });
}
