//! Issue 16, the origin side: a faulty or hostile origin, and requests that used to make
//! `cached` misbehave on a miss, cost one request — never `cached`'s memory or CPU, another
//! user's data, or the cache.
//!
//! The origin here is a raw socket ([`RawOrigin`]): each test writes exactly the bytes it
//! wants (conflicting framing, a 101, an endless body), which the scriptable origin of
//! `origin.rs` cannot.

// Some helpers serve only some tests.
#![allow(dead_code)]

use crate::client::{self, Conn};
use crate::harness::{with_deadline, Instance};
use crate::origin::{Origin, Route};
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);

/// What a raw origin does with one request: gets the request head (text up to the blank
/// line) and the connection, writes whatever it likes.
type Handler = dyn Fn(&str, &mut TcpStream) -> io::Result<()> + Send + Sync;

/// A raw-socket origin: one thread per connection, one request per connection (it closes
/// after the handler returns).
struct RawOrigin {
    addr: SocketAddr,
    state: Arc<RawState>,
}

#[derive(Default)]
struct RawState {
    /// Request heads in arrival order.
    heads: Mutex<Vec<String>>,
    /// Connections whose handler has returned (the write failed or it finished).
    ended: AtomicUsize,
    stop: AtomicBool,
}

impl RawOrigin {
    fn start(
        handler: impl Fn(&str, &mut TcpStream) -> io::Result<()> + Send + Sync + 'static,
    ) -> RawOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("raw origin: bind");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(RawState::default());
        let handler: Arc<Handler> = Arc::new(handler);
        let st = state.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let (st, handler) = (st.clone(), handler.clone());
                thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                    let _ = conn.set_write_timeout(Some(Duration::from_secs(30)));
                    let Some(head) = read_head(&mut conn) else {
                        return;
                    };
                    st.heads.lock().unwrap().push(head.clone());
                    let _ = handler(&head, &mut conn);
                    st.ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        RawOrigin { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn heads(&self) -> Vec<String> {
        self.state.heads.lock().unwrap().clone()
    }

    fn ended(&self) -> usize {
        self.state.ended.load(Ordering::SeqCst)
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Reads a request head and, when it announces one, its Content-Length body.
fn read_head(conn: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    let end = loop {
        if let Some(i) = client::find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut b) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut have = buf.len() - end;
    while have < len {
        match conn.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => have += n,
        }
    }
    Some(head)
}

fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// VmRSS of a process, in bytes.
fn rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Class 4: a GET or HEAD with a body on a miss was answered after 30 s (504) while a
/// `cached` thread spun at 100 %: the body was drained, then the upstream request promised
/// its Content-Length and ureq called the empty reader without end. Now the body goes to the
/// origin, the answer comes at once, the connection goes on, and `cached` stays idle.
#[test]
fn a_get_or_head_with_a_body_on_a_miss_is_answered_at_once_without_a_spin() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        origin.route(
            "/plain",
            Route::ok("plain\n").header("Cache-Control", "max-age=60"),
        );
        let inst = Instance::builder().origin(&origin.url()).start();
        let pid = inst.cached_pid().expect("cached pid");
        let before = cpu_ticks(pid);
        let body = [b'b'; 100];
        for method in ["GET", "HEAD"] {
            let mut c = Conn::connect(inst.addr());
            c.set_read_timeout(Duration::from_secs(5));
            let t = Instant::now();
            let r = c.request(method, &format!("/echo/{method}"), &[], &body);
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "{method} with a body took {:?}",
                t.elapsed()
            );
            assert_eq!(r.status, 200, "{method} with a body: {}", r.describe());
            if method == "GET" {
                let echo: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(echo["body_len"], 100, "the body reached the origin");
            }
            let next = c.get("/plain");
            assert_eq!(next.status, 200, "the next request on the connection");
            assert_eq!(next.body, b"plain\n");
        }
        // A few hundred milliseconds of work at most (a spin burns 100 ticks a second).
        let used = cpu_ticks(pid) - before;
        assert!(used < 50, "cached used {used} ticks of CPU");
    });
}
