//! Bodies of every awkward size arrive byte-identical, from disk and from an origin, through
//! pools of one segment and of many, with segments of 4 KiB, 64 KiB and 1 MiB.
//!
//! Sizes: 0, 1, seg−1, seg, seg+1, 10·seg+7, and 50 MiB in a few combinations (it is slow in a
//! debug build). Each object is fetched twice on one keep-alive connection (the second time it
//! may come from the cache), and the pool must be all free afterwards.

use crate::origin::{Framing, Origin, Route};
use shmproxy_tests::client::Conn;
use shmproxy_tests::harness::{assert_same_body, pattern, with_deadline, write_file, Instance};
use std::time::Duration;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const BIG: usize = 50 * MIB;

#[derive(Clone, Copy, Debug)]
enum Src {
    Disk,
    Origin,
}

/// An object to fetch: its path and expected bytes.
struct Obj {
    path: String,
    body: Vec<u8>,
    /// Fetch only in the first round (the 50 MiB object).
    once: bool,
}

fn sizes(seg: usize, big: bool) -> Vec<usize> {
    let mut v = vec![0, 1, seg - 1, seg, seg + 1, 10 * seg + 7];
    if big {
        v.push(BIG);
    }
    v
}

fn run(src: Src, seg: usize, segments: u32, big: bool) {
    with_deadline(Duration::from_secs(240), move || {
        let seed = (seg as u64) << 16 | segments as u64;
        let root = tempfile::tempdir().unwrap();
        let origin = Origin::start();
        let mut objs = Vec::new();
        for n in sizes(seg, big) {
            let body = pattern(n, seed ^ n as u64);
            let path = format!("/f/{n}.bin");
            match src {
                Src::Disk => {
                    write_file(root.path(), &path, &body);
                }
                Src::Origin => {
                    origin.route(&path, Route::ok(body.clone()));
                    if n != BIG {
                        // The same bytes with no length known in advance.
                        let cpath = format!("/chunked/{n}.bin");
                        let cbody = pattern(n, seed ^ n as u64 ^ 0xc);
                        origin.route(&cpath, Route::ok(cbody.clone()).framing(Framing::Chunked));
                        objs.push(Obj {
                            path: cpath,
                            body: cbody,
                            once: false,
                        });
                    }
                    if n == 10 * seg + 7 {
                        let epath = format!("/eof/{n}.bin");
                        let ebody = pattern(n, seed ^ n as u64 ^ 0xe);
                        origin.route(&epath, Route::ok(ebody.clone()).framing(Framing::Close));
                        objs.push(Obj {
                            path: epath,
                            body: ebody,
                            once: false,
                        });
                    }
                }
            }
            objs.push(Obj {
                path,
                body,
                once: n == BIG,
            });
        }
        objs.sort_by_key(|o| o.body.len());
        let b = Instance::builder().segments(segments).segment_size(seg);
        let b = match src {
            Src::Disk => b.root(root.path()),
            Src::Origin => b.origin(&origin.url()),
        };
        let inst = b.start();
        let mut conn = inst.conn();
        for round in 0..2 {
            for o in objs.iter().filter(|o| round == 0 || !o.once) {
                let what = format!(
                    "{src:?} {} ({} bytes) round {round}, pool {segments} x {seg}",
                    o.path,
                    o.body.len()
                );
                let r = conn.get(&o.path);
                assert_eq!(r.status, 200, "{what}: {}", r.describe());
                if let Some(cl) = r.content_length() {
                    assert_eq!(cl, o.body.len() as u64, "{what}: Content-Length");
                } else {
                    assert!(
                        matches!(src, Src::Origin),
                        "{what}: a disk file must have a Content-Length: {}",
                        r.describe()
                    );
                }
                assert!(r.header("x-cache").is_some(), "{what}: no X-Cache");
                assert_same_body(&r.body, &o.body, &what);
            }
        }
        drop(conn);
        if segments > 1 {
            // Several transfers at once, each through its own segment.
            let objs = std::sync::Arc::new(objs);
            let threads: Vec<_> = (0..4)
                .map(|t| {
                    let objs = objs.clone();
                    let addr = inst.addr();
                    std::thread::spawn(move || {
                        let mut c = Conn::connect(addr);
                        for o in objs.iter().filter(|o| !o.once).cycle().skip(t).take(12) {
                            let r = c.get(&o.path);
                            assert_eq!(r.status, 200, "parallel {}: {}", o.path, r.describe());
                            assert_same_body(&r.body, &o.body, &format!("parallel {}", o.path));
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().expect("parallel client");
            }
        }
        inst.assert_pool_idle();
    });
}

#[test]
fn disk_4k_one_segment() {
    run(Src::Disk, 4 * KIB, 1, false);
}

#[test]
fn disk_4k_many_segments_with_50mib() {
    run(Src::Disk, 4 * KIB, 16, true);
}

#[test]
fn disk_64k_one_segment() {
    run(Src::Disk, 64 * KIB, 1, false);
}

#[test]
fn disk_64k_many_segments() {
    run(Src::Disk, 64 * KIB, 16, false);
}

#[test]
fn disk_1m_one_segment_with_50mib() {
    run(Src::Disk, MIB, 1, true);
}

#[test]
fn disk_1m_many_segments() {
    run(Src::Disk, MIB, 16, false);
}

#[test]
fn origin_4k_one_segment_with_50mib() {
    run(Src::Origin, 4 * KIB, 1, true);
}

#[test]
fn origin_4k_many_segments() {
    run(Src::Origin, 4 * KIB, 16, false);
}

#[test]
fn origin_64k_one_segment() {
    run(Src::Origin, 64 * KIB, 1, false);
}

#[test]
fn origin_64k_many_segments() {
    run(Src::Origin, 64 * KIB, 16, false);
}

#[test]
fn origin_1m_one_segment() {
    run(Src::Origin, MIB, 1, false);
}

#[test]
fn origin_1m_many_segments_with_50mib() {
    run(Src::Origin, MIB, 16, true);
}
