//! Bad input: malformed request lines (400), header blocks over 16 KiB (431), request heads that
//! do not fit a segment (414/431), and paths that try to leave the document root (`..`,
//! `%2e%2e`, `%2f`, NUL, symlinks), which must never serve the outside file. After every case
//! both daemons are alive and still serve.

use shmproxy_tests::client::{self, Conn, Expect};
use shmproxy_tests::harness::{with_deadline, write_file, Instance};
use std::os::unix::fs::symlink;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

fn site() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "index.html", b"<h1>index</h1>\n");
    write_file(root.path(), "hello.txt", b"hello, world\n");
    root
}

/// Both daemons alive, and a normal request on a new connection is served.
#[track_caller]
fn still_serving(inst: &mut Instance, after: &str) {
    assert!(
        inst.proxy_alive(),
        "proxy died after {after}\n{}",
        inst.logs()
    );
    assert!(
        inst.cached_alive(),
        "cached died after {after}\n{}",
        inst.logs()
    );
    let r = inst.get("/hello.txt");
    assert_eq!(r.status, 200, "after {after}: {}", r.describe());
    assert_eq!(r.body, b"hello, world\n", "after {after}");
    // A path never requested before goes all the way to cached (no cache can answer it).
    static N: AtomicU64 = AtomicU64::new(0);
    let fresh = format!("/never-requested-{}", N.fetch_add(1, Ordering::Relaxed));
    let r = inst.get(&fresh);
    assert_eq!(r.status, 404, "after {after}: {fresh}: {}", r.describe());
}

/// Sends raw bytes on a new connection and returns the status of the answer.
#[track_caller]
fn status_of(inst: &Instance, raw: &[u8]) -> u16 {
    let what = String::from_utf8_lossy(&raw[..raw.len().min(80)]).into_owned();
    let r = client::raw(inst.addr(), raw).unwrap_or_else(|e| panic!("no answer to {what:?}: {e}"));
    r.status
}

#[test]
fn malformed_request_line_is_400() {
    with_deadline(T, || {
        let root = site();
        let mut inst = Instance::builder().root(root.path()).start();
        let cases: &[&[u8]] = &[
            b"HELLO\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET /hello.txt\r\nHost: x\r\n\r\n",
            b"GET /hello.txt HTTP/1.1 trailing\r\nHost: x\r\n\r\n",
            b"GET /hello.txt FTP/1.1\r\nHost: x\r\n\r\n",
            b"G(T /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        ];
        for raw in cases {
            let what = String::from_utf8_lossy(raw).into_owned();
            assert_eq!(status_of(&inst, raw), 400, "{what:?}");
            still_serving(&mut inst, &format!("{what:?}"));
        }
        // A bad request after a good one on the same connection.
        let mut c = inst.conn();
        assert_eq!(c.get("/hello.txt").status, 200);
        c.send(b"NONSENSE\r\n\r\n");
        let r = c
            .read_response(Expect::Body)
            .expect("answer to the bad request");
        assert_eq!(r.status, 400);
        still_serving(&mut inst, "a bad request on a used connection");
    });
}

/// A request with `n` headers of `len` value bytes each.
fn with_headers(n: usize, len: usize) -> Vec<u8> {
    let mut h = String::from("GET /hello.txt HTTP/1.1\r\nHost: x\r\n");
    for i in 0..n {
        h.push_str(&format!("X-Filler-{i:03}: {}\r\n", "v".repeat(len)));
    }
    h.push_str("\r\n");
    h.into_bytes()
}

#[test]
fn header_block_over_16k_is_431() {
    with_deadline(T, || {
        let root = site();
        let mut inst = Instance::builder().root(root.path()).start();
        // Control: a 12 KiB header block is fine.
        let ok = with_headers(12, 1000);
        assert!(ok.len() < 13 * 1024);
        assert_eq!(status_of(&inst, &ok), 200, "12 KiB of headers");
        // 20 KiB of headers in many fields.
        let many = with_headers(20, 1000);
        assert!(many.len() > 16 * 1024);
        assert_eq!(status_of(&inst, &many), 431, "20 KiB in 20 headers");
        still_serving(&mut inst, "20 KiB of headers");
        // One field of 17 KiB.
        let one = with_headers(1, 17 * 1024);
        assert_eq!(status_of(&inst, &one), 431, "one 17 KiB header");
        still_serving(&mut inst, "a 17 KiB header");
    });
}

#[test]
fn request_head_larger_than_a_segment_is_414_or_431() {
    with_deadline(T, || {
        let root = site();
        let mut inst = Instance::builder()
            .root(root.path())
            .segment_size(4096)
            .segments(2)
            .start();
        // Control: a 1 KiB URL fits the 4 KiB segment (the file does not exist).
        let r = inst.get(&format!("/{}", "a".repeat(1024)));
        assert_eq!(r.status, 404, "1 KiB URL: {}", r.describe());
        let url = format!("/{}", "a".repeat(6 * 1024));
        let r = inst.get(&url);
        assert!(
            r.status == 414 || r.status == 431,
            "6 KiB URL with 4 KiB segments: {}",
            r.describe()
        );
        still_serving(&mut inst, "a 6 KiB URL");
        // A query string counts too.
        let r = inst.get(&format!("/hello.txt?{}", "q".repeat(6 * 1024)));
        assert!(
            r.status == 414 || r.status == 431,
            "6 KiB query with 4 KiB segments: {}",
            r.describe()
        );
        still_serving(&mut inst, "a 6 KiB query");
        inst.assert_pool_idle();
    });
}

#[test]
fn paths_never_escape_the_root() {
    with_deadline(T, || {
        // base/secret.txt is outside base/root, the document root.
        let base = tempfile::tempdir().unwrap();
        let marker = format!("TOP-SECRET-{}-{:?}", std::process::id(), base.path());
        let secret = write_file(base.path(), "secret.txt", marker.as_bytes());
        write_file(base.path(), "secretdir/inner.txt", marker.as_bytes());
        let root = base.path().join("root");
        write_file(&root, "hello.txt", b"hello, world\n");
        write_file(&root, "sub/file.txt", b"sub file\n");
        symlink("../secret.txt", root.join("rel-link.txt")).unwrap();
        symlink(&secret, root.join("abs-link.txt")).unwrap();
        symlink(base.path(), root.join("dir-link")).unwrap();
        symlink("../secretdir", root.join("sub/up-dir")).unwrap();
        let mut inst = Instance::builder().root(&root).start();
        // Control: the root itself is served.
        assert_eq!(inst.get("/sub/file.txt").body, b"sub file\n");

        let targets = [
            "/../secret.txt",
            "/../../secret.txt",
            "/sub/../../secret.txt",
            "/./../secret.txt",
            "/%2e%2e/secret.txt",
            "/%2E%2E/secret.txt",
            "/sub/%2e%2e/%2e%2e/secret.txt",
            "/.%2e/secret.txt",
            "/%2e./secret.txt",
            "/..%2fsecret.txt",
            "/%2e%2e%2fsecret.txt",
            "/sub%2f..%2f..%2fsecret.txt",
            "/sub/..%2F..%2Fsecret.txt",
            "/%2e%2e%2f%2e%2e%2fsecret.txt",
            "/%252e%252e/secret.txt",
            "/..%5csecret.txt",
            "/../secret.txt%00",
            "/../secret.txt%00.html",
            "/%00/../secret.txt",
            "/hello.txt%00",
            "/rel-link.txt",
            "/abs-link.txt",
            "/dir-link/secret.txt",
            "/dir-link/root/../secret.txt",
            "/sub/up-dir/inner.txt",
            "//../secret.txt",
            "/sub//../../secret.txt",
        ];
        for t in targets {
            let r = inst.get(t);
            assert!(
                !r.text().contains(&marker),
                "{t} served the file outside the root: {}",
                r.describe()
            );
            assert!(
                matches!(r.status, 400 | 403 | 404),
                "{t}: expected 400, 403 or 404: {}",
                r.describe()
            );
            still_serving(&mut inst, t);
        }
        // A raw NUL byte and an absolute path in the request line.
        for raw in [
            &b"GET /../secret.txt\0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
            &b"GET /hello.txt\0/../../secret.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                [..],
            format!(
                "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                secret.display()
            )
            .as_bytes(),
        ] {
            let what = String::from_utf8_lossy(raw).into_owned();
            let mut c = Conn::connect(inst.addr());
            c.send(raw);
            if let Ok(r) = c.read_response(Expect::Body) {
                assert!(
                    !r.text().contains(&marker),
                    "{what:?} served the file outside the root"
                );
                assert!((400..500).contains(&r.status), "{what:?}: {}", r.describe());
            }
            still_serving(&mut inst, &what);
        }
    });
}
