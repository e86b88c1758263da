//! Issue 13, shmproxy as a cluster node. On loopback, with the ordinary harness: the node's
//! name in `Via`, `X-Served-By`, `Cache-Status` and the stats; `/__shmproxy/health` (200, 503
//! with its reason, 403 from an address outside `stats_allow`); the drain of a graceful stop;
//! `508 Loop Detected`; a shield tier (two edges whose origin is one shield: collapsing at the
//! shield, two tiers in `Cache-Status`, `Age` honoured, `purge_forward`). Behind HAProxy in
//! network namespaces: [`netns`].

mod netns;

use crate::origin::{Origin, Route};
use shmproxy_tests::client::{self, Conn, Response};
use shmproxy_tests::harness::{self, poll_until, with_deadline, Instance};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(90);

/// An instance named `node` (both daemons), forwarding to `origin`, with extra cached config.
fn node(name: &str, origin: &str, cached_toml: &str) -> Instance {
    let mut b = Instance::builder()
        .origin(origin)
        .proxy_arg("--node")
        .proxy_arg(name)
        .cached_arg("--node")
        .cached_arg(name);
    if !cached_toml.is_empty() {
        b = b.config_toml(cached_toml);
    }
    b.start()
}

fn url(inst: &Instance) -> String {
    format!("http://{}", inst.addr())
}

/// Every value of `name`, joined as one list (RFC 9110 §5.3).
fn list(r: &Response, name: &str) -> String {
    r.header_all(name).join(", ")
}

fn proxy_counter(inst: &Instance, name: &str) -> u64 {
    inst.stats()["proxy"][name].as_u64().unwrap_or(0)
}

/// `GET /__shmproxy/health` from 127.0.0.1.
fn health(addr: SocketAddr) -> Response {
    client::get(addr, "/__shmproxy/health")
}

#[test]
fn issue_13_node_names_the_pair_and_health_follows_cached() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        origin.route("/a", Route::ok("a").header("Cache-Control", "max-age=60"));
        let mut inst = node("e2e-n1", &origin.url(), "");
        let r = inst.get("/a");
        assert_eq!(r.status, 200, "{}", r.describe());
        assert_eq!(list(&r, "via"), "1.1 e2e-n1 (shmproxy)", "{}", r.describe());
        assert_eq!(r.header("x-served-by"), Some("e2e-n1"));
        assert!(
            list(&r, "cache-status").starts_with("shmproxy-e2e-n1; fwd=uri-miss"),
            "{}",
            r.describe()
        );
        let seen = origin.requests_for("/a");
        assert_eq!(seen[0].header_all("via"), ["1.1 e2e-n1 (shmproxy)"]);
        assert_eq!(inst.stats()["node"], "e2e-n1");
        let m = inst.get("/__shmproxy/metrics").text();
        assert!(m.contains("node=\"e2e-n1\""), "shmproxy_info: {m}");
        let h = health(inst.addr());
        assert_eq!((h.status, h.text().as_str()), (200, "ok\n"));
        assert_eq!(list(&h, "cache-status"), "shmproxy-e2e-n1; fwd=bypass");
        inst.stop_cached();
        let h = health(inst.addr());
        assert_eq!(h.status, 503, "{}", h.describe());
        assert!(h.text().contains("cached is not running"), "{}", h.text());
        inst.start_cached();
        poll_until(Duration::from_secs(10), "health 200 again", || {
            (health(inst.addr()).status == 200).then_some(())
        });
    });
}

#[test]
fn issue_13_a_request_that_comes_round_a_loop_gets_508() {
    with_deadline(LIMIT, || {
        // A shield misconfigured to use its own address as its origin.
        let mut inst = Instance::builder()
            .proxy_arg("--node")
            .proxy_arg("loopy")
            .cached_arg("--node")
            .cached_arg("loopy")
            .build();
        inst.set_config_toml(&format!("[cached]\norigin = \"{}\"\n", url(&inst)));
        inst.spawn_cached();
        inst.start_proxy();
        inst.wait_cached_ready();
        let r = inst.get("/round");
        assert_eq!(r.status, 508, "{}", r.describe());
        assert!(proxy_counter(&inst, "loops_refused") >= 1);
        // Another node's Via is no loop; this node's, in any case and list position, is.
        let other = client::fetch(
            inst.addr(),
            "GET",
            "/__shmproxy/health",
            &[("Via", "1.1 edge9 (shmproxy)")],
            b"",
        );
        assert_eq!(other.status, 200, "{}", other.describe());
        let named = client::fetch(
            inst.addr(),
            "GET",
            "/x",
            &[("Via", "1.0 a, 1.1 LOOPY (shmproxy)")],
            b"",
        );
        assert_eq!(named.status, 508, "{}", named.describe());
        assert_eq!(named.header("x-served-by"), Some("loopy"));
    });
}

/// A connection to `to` from the local address `from` (another loopback address).
fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    use nix::sys::socket::{connect, SockaddrIn};
    let fd = harness::bound_socket(SocketAddrV4::new(from.into(), 0));
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 expected")
    };
    connect(fd.as_raw_fd(), &SockaddrIn::from(to)).expect("connect");
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(client::IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(client::IO_TIMEOUT)).unwrap();
    stream
}

#[test]
fn issue_13_health_is_refused_outside_stats_allow() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        let inst = Instance::builder()
            .origin(&origin.url())
            .proxy_arg("--stats-allow")
            .proxy_arg("127.0.0.1/32")
            .start();
        assert_eq!(health(inst.addr()).status, 200);
        let mut c = Conn::from_stream(connect_from([127, 0, 0, 2], inst.addr()));
        let r = c.request("GET", "/__shmproxy/health", &[("Connection", "close")], b"");
        assert_eq!(r.status, 403, "{}", r.describe());
    });
}

#[test]
fn issue_13_sigterm_drains_with_health_503_while_serving() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        origin.route("/d", Route::ok("d"));
        let drain = Duration::from_millis(1500);
        let mut inst = Instance::builder()
            .origin(&origin.url())
            .proxy_arg("--drain-ms")
            .proxy_arg(&drain.as_millis().to_string())
            .start();
        let mut keep = inst.conn();
        assert_eq!(keep.get("/d").status, 200);
        let t0 = Instant::now();
        inst.signal_proxy(libc::SIGTERM);
        let h = poll_until(Duration::from_secs(1), "health 503 after SIGTERM", || {
            let h = health(inst.addr());
            (h.status == 503).then_some(h)
        });
        assert!(h.text().contains("draining"), "{}", h.text());
        assert_eq!(proxy_counter(&inst, "draining"), 1);
        // Still serving, on new connections and on kept ones.
        assert_eq!(inst.get("/d").status, 200);
        assert_eq!(keep.get("/d").status, 200);
        let st = inst
            .wait_proxy_exit(drain + Duration::from_secs(6))
            .expect("the proxy exits after its drain");
        assert!(st.success(), "{st:?}");
        assert!(t0.elapsed() >= drain, "exited after {:?}", t0.elapsed());
    });
}

#[test]
fn issue_13_a_shield_tier_collapses_two_edges_and_shows_two_tiers() {
    with_deadline(LIMIT, || {
        let origin = Origin::start();
        origin.route(
            "/obj",
            Route::ok("object")
                .header("Cache-Control", "max-age=60")
                .delay(Duration::from_millis(400)),
        );
        let shield = node("shield", &origin.url(), "");
        let forward = "[cached]\npurge_forward = true\n";
        let e1 = node("e1", &url(&shield), forward);
        let e2 = node("e2", &url(&shield), forward);
        // Both edges miss at the same moment: the shield fetches once.
        let go = Arc::new(Barrier::new(2));
        let fetches: Vec<_> = [e1.addr(), e2.addr()]
            .into_iter()
            .map(|a| {
                let go = go.clone();
                thread::spawn(move || {
                    go.wait();
                    client::get(a, "/obj")
                })
            })
            .collect();
        let answers: Vec<Response> = fetches.into_iter().map(|t| t.join().unwrap()).collect();
        for (r, edge) in answers.iter().zip(["e1", "e2"]) {
            assert_eq!(
                (r.status, r.body.as_slice()),
                (200, &b"object"[..]),
                "{}",
                r.describe()
            );
            let cs = list(r, "cache-status");
            let (s, e) = (
                cs.find("shmproxy-shield;"),
                cs.find(&format!("shmproxy-{edge};")),
            );
            assert!(s.is_some() && e.is_some() && s < e, "{edge}: {cs}");
            assert!(cs.ends_with("stored"), "{edge}: the edge stored it: {cs}");
            assert!(
                list(r, "via").contains("shield") && list(r, "via").contains(edge),
                "{}",
                r.describe()
            );
        }
        assert_eq!(origin.count("/obj"), 1, "the origin sees the object once");
        let shield_requests = origin.requests_for("/obj");
        let via = shield_requests[0].header_all("via").join(", ");
        assert!(
            via.contains("(shmproxy)") && via.contains("shield"),
            "{via}"
        );
        // A later hit at an edge: its Age counts from the shield's, both tiers named.
        thread::sleep(Duration::from_millis(1100));
        let hit = e1.get("/obj");
        // Each tier appends to X-Cache and X-Served-By (the shield's came stored with it).
        assert_eq!(
            hit.header_all("x-cache").last(),
            Some(&"HIT"),
            "{}",
            hit.describe()
        );
        assert_eq!(hit.header_all("x-served-by"), ["shield", "e1"]);
        let age: u64 = hit.header("age").and_then(|a| a.parse().ok()).unwrap_or(0);
        assert!(age >= 1, "{}", hit.describe());
        let cs = list(&hit, "cache-status");
        assert!(
            cs.contains("shmproxy-shield;") && cs.contains("shmproxy-e1; hit"),
            "{cs}"
        );

        // RFC 9111 §4.2.3: the Age an upper tier sends counts. 90 s of 100 s used: fresh,
        // with an Age of at least 90 at both tiers; 100 of 100: stale on arrival at each.
        origin.route(
            "/aged90",
            Route::ok("x")
                .header("Cache-Control", "max-age=100")
                .header("Age", "90"),
        );
        origin.route(
            "/aged100",
            Route::ok("y")
                .header("Cache-Control", "max-age=100")
                .header("Age", "100"),
        );
        for _ in 0..2 {
            let r = e1.get("/aged90");
            let age: u64 = r.header("age").and_then(|a| a.parse().ok()).unwrap_or(0);
            assert!(age >= 90, "{}", r.describe());
            e1.get("/aged100");
        }
        assert_eq!(origin.count("/aged90"), 1);
        assert_eq!(
            origin.count("/aged100"),
            2,
            "a stale answer is not served as fresh"
        );

        // PURGE at an edge with purge_forward reaches the shield: its next fetch misses.
        let p = client::fetch(e1.addr(), "PURGE", "/obj", &[], b"");
        assert_eq!(p.status, 200, "{}", p.describe());
        assert_eq!(e1.cached_counter("purges_forwarded"), Some(1));
        let again = shield.get("/obj");
        assert_eq!(again.status, 200);
        assert_eq!(
            origin.count("/obj"),
            2,
            "the shield fetched it again after the purge"
        );
        drop((e1, e2));
    });
}
