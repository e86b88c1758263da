//! Issue 5, "see inside": the stats JSON, the Prometheus text (checked by `promtool`), the
//! `proxy stats` command reading shared memory, the access log (intact lines under 64 clients,
//! rotation, SIGUSR1 reopen, flushed within a second) and the dashboard, rendered by real
//! headless Chromium while traffic flows. Counters must add up exactly after concurrent load.
//!
//! Needs `promtool` (Debian `prometheus`), `chromium` and `tmux` on the PATH; `scripts/test.sh`
//! installs them.

use crate::accesslog::{parse_clf as parse_line, read_lines};
use serde_json::Value;
use shmproxy_tests::client;
use shmproxy_tests::harness::{self, with_deadline, Instance};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(120);

fn docroot() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    harness::write_file(d.path(), "small.txt", &harness::pattern(100, 1));
    harness::write_file(d.path(), "mid.bin", &harness::pattern(20_000, 2));
    d
}

// ---------------------------------------------------------------------------------------------
// A byte-exact client: the counters test needs the exact number of bytes on the wire.
// ---------------------------------------------------------------------------------------------

struct Exchange {
    status: u16,
    x_cache: String,
    /// Bytes received (head and body).
    wire: u64,
    close: bool,
    body: Vec<u8>,
}

/// Sends `req` on `s` and reads one response framed by Content-Length (every answer of the
/// proxy to these requests has one).
fn exchange(s: &mut TcpStream, req: &[u8], head_only: bool) -> Exchange {
    s.write_all(req).expect("write request");
    let mut buf = Vec::with_capacity(4096);
    let mut tmp = [0u8; 16 << 10];
    let head_len = loop {
        if let Some(i) = client::find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut tmp).expect("read response head");
        assert!(n > 0, "connection closed before a response head");
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let mut len = None;
    let mut x_cache = String::new();
    let mut close = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.to_ascii_lowercase().as_str() {
            "content-length" => len = Some(v.parse::<usize>().unwrap()),
            "x-cache" => x_cache = v.to_string(),
            "connection" => close |= v.eq_ignore_ascii_case("close"),
            "transfer-encoding" => panic!("unexpected chunked answer: {head}"),
            _ => {}
        }
    }
    let body_len = if head_only || status == 304 || status == 204 {
        0
    } else {
        len.unwrap_or_else(|| panic!("no Content-Length in {head}"))
    };
    while buf.len() < head_len + body_len {
        let n = s.read(&mut tmp).expect("read response body");
        assert!(n > 0, "connection closed inside a body");
        buf.extend_from_slice(&tmp[..n]);
    }
    assert_eq!(buf.len(), head_len + body_len, "bytes after the response");
    Exchange {
        status,
        x_cache,
        wire: buf.len() as u64,
        close,
        body: buf[head_len..].to_vec(),
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

const STATS_REQ: &[u8] =
    b"GET /__shmproxy/stats HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n";

/// One stats request on its own connection: (JSON, response bytes on the wire).
fn stats_exact(addr: SocketAddr) -> (Value, u64) {
    let e = exchange(&mut connect(addr), STATS_REQ, false);
    assert_eq!(e.status, 200);
    (serde_json::from_slice(&e.body).expect("stats JSON"), e.wire)
}

/// Polls the stats until every earlier request is answered in the counters. A request is
/// counted in `requests` when its head is read, and by method, outcome, status, bytes and
/// latency once answered, so a poll's own request is the one not yet answered in its
/// snapshot. Returns the last snapshot, the wire bytes of the last poll, the number of polls,
/// and the wire bytes of the polls before the last one (answered in the last snapshot).
fn settled_stats(addr: SocketAddr) -> (Value, u64, u64, u64) {
    let mut earlier_wire = 0u64;
    let mut polls = 0u64;
    loop {
        let (s, wire) = stats_exact(addr);
        polls += 1;
        let px = &s["proxy"];
        let answered = u(px, &["requests"]) - 1;
        if sum_fields(px, "requests_") == answered
            && sum_fields(px, "outcome_") == answered
            && sum_fields(px, "responses_") == answered
            && u(px, &["latency_count"]) == answered
        {
            return (s, wire, polls, earlier_wire);
        }
        assert!(polls < 100, "counters never settled: {s}");
        earlier_wire += wire;
        thread::sleep(Duration::from_millis(20));
    }
}

fn u(v: &Value, path: &[&str]) -> u64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_u64()
        .unwrap_or_else(|| panic!("{} missing or not a number in {v}", path.join(".")))
}

fn sum_fields(proxy: &Value, prefix: &str) -> u64 {
    proxy
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v.as_u64().unwrap())
        .sum()
}

/// Acceptance 7: after N requests from M concurrent clients every counter adds up exactly.
#[test]
fn observability_counters_add_up_exactly_under_concurrency() {
    with_deadline(DEADLINE, || {
        let root = docroot();
        let inst = Instance::builder().root(root.path()).start();
        let addr = inst.addr();
        const CLIENTS: u64 = 8;
        const PER_CLIENT: u64 = 36;
        // Settled like `after` below: what came before (the harness's readiness probe) is
        // answered in the counters, so only this poll's own late fields fall in the deltas.
        let (before, before_wire, _, _) = settled_stats(addr);

        #[derive(Default)]
        struct Seen {
            methods: HashMap<&'static str, u64>,
            classes: HashMap<u16, u64>,
            outcomes: HashMap<String, u64>,
            sent: u64,
            received: u64,
        }
        let seen: Vec<Seen> = thread::scope(|sc| {
            let handles: Vec<_> = (0..CLIENTS)
                .map(|c| {
                    sc.spawn(move || {
                        let mut seen = Seen::default();
                        let mut s = connect(addr);
                        for i in 0..PER_CLIENT {
                            let missing = format!("/missing-{c}-{i}.txt");
                            let (method, target, body): (&'static str, &str, &[u8]) = match i % 6 {
                                0 => ("GET", "/small.txt", b""),
                                1 => ("GET", "/mid.bin", b""),
                                2 => ("HEAD", "/small.txt", b""),
                                3 => ("GET", &missing, b""),
                                4 => ("POST", "/small.txt", b"x=1"),
                                _ => ("BREW", "/small.txt", b""),
                            };
                            let req = client::request_bytes(method, target, &[], body);
                            let e = exchange(&mut s, &req, method == "HEAD");
                            assert!(!e.x_cache.is_empty(), "{method} {target}: no X-Cache");
                            seen.sent += req.len() as u64;
                            seen.received += e.wire;
                            *seen.methods.entry(method).or_default() += 1;
                            *seen.classes.entry(e.status / 100).or_default() += 1;
                            *seen.outcomes.entry(e.x_cache.clone()).or_default() += 1;
                            if e.close {
                                s = connect(addr);
                            }
                        }
                        seen
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let n = CLIENTS * PER_CLIENT;
        let total = |f: &dyn Fn(&Seen) -> u64| seen.iter().map(f).sum::<u64>();
        let method = |m: &str| total(&|s| s.methods.get(m).copied().unwrap_or(0));
        let class = |c: u16| total(&|s| s.classes.get(&c).copied().unwrap_or(0));
        let outcome = |o: &str| total(&|s| s.outcomes.get(o).copied().unwrap_or(0));

        let (after, _, p, polls_wire) = settled_stats(addr);
        let (b, a) = (&before["proxy"], &after["proxy"]);
        let d = |k: &str| u(a, &[k]) - u(b, &[k]);
        assert_eq!(d("requests"), n + p, "requests");
        assert_eq!(
            d("requests_get"),
            method("GET") + p,
            "GET (stats polls included)"
        );
        assert_eq!(d("requests_head"), method("HEAD"));
        assert_eq!(d("requests_post"), method("POST"));
        assert_eq!(d("requests_other"), method("BREW"));
        for (c, k) in [
            (1u16, "responses_1xx"),
            (3, "responses_3xx"),
            (4, "responses_4xx"),
            (5, "responses_5xx"),
        ] {
            assert_eq!(d(k), class(c), "{k}");
        }
        assert_eq!(d("responses_2xx"), class(2) + p, "responses_2xx");
        for (o, k) in [
            ("HIT", "outcome_hit"),
            ("MISS", "outcome_miss"),
            ("PASS", "outcome_pass"),
            ("STALE", "outcome_stale"),
            ("REVALIDATED", "outcome_revalidated"),
            ("COLLAPSED", "outcome_collapsed"),
            ("ERROR", "outcome_error"),
        ] {
            assert_eq!(d(k), outcome(o), "{k}");
        }
        assert_eq!(d("outcome_internal"), outcome("INTERNAL") + p);
        assert_eq!(d("latency_count"), n + p, "histogram count");
        assert_eq!(
            d("bytes_out"),
            total(&|s| s.received) + before_wire + polls_wire,
            "bytes_out must equal what the clients received"
        );
        assert_eq!(
            d("bytes_in"),
            total(&|s| s.sent) + p * STATS_REQ.len() as u64,
            "bytes_in must equal what the clients sent"
        );
        assert_eq!(d("bad_requests"), 0);
        // Per-worker slots add up to the total.
        let per_worker: u64 = after["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| u(w, &["requests"]))
            .sum();
        assert_eq!(per_worker, u(a, &["requests"]));
        assert!(after["cached"].is_object(), "cached is running: {after}");
        inst.assert_pool_idle();
    });
}

// ---------------------------------------------------------------------------------------------
// Prometheus text and the JSON
// ---------------------------------------------------------------------------------------------

/// Samples of a Prometheus text body: `name{labels}` → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse::<f64>().unwrap())
        })
        .collect()
}

fn promtool() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("promtool");
        if p.is_file() {
            return p;
        }
    }
    panic!("promtool not found: install Debian's `prometheus` package (scripts/test.sh does)");
}

/// Acceptance 2: `/__shmproxy/metrics` passes `promtool check metrics` (the reference parser
/// and its lint: HELP, TYPE, names, units) and agrees with the JSON.
#[test]
fn observability_metrics_pass_promtool_and_agree_with_json() {
    with_deadline(DEADLINE, || {
        let root = docroot();
        let inst = Instance::builder().root(root.path()).start();
        let mut c = inst.conn();
        for _ in 0..5 {
            assert_eq!(c.get("/small.txt").status, 200);
            assert_eq!(c.get("/nope.txt").status, 404);
        }
        let json = inst.stats();
        let r = inst.get("/__shmproxy/metrics");
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let text = r.text();
        promtool_check(&text);
        // The info metric names the instance in a label Prometheus does not set itself.
        let info = text
            .lines()
            .find(|l| l.starts_with("shmproxy_info{"))
            .expect("shmproxy_info sample");
        assert!(
            info.starts_with("shmproxy_info{name=\"") && info.contains(",version=\""),
            "{info}"
        );
        assert!(
            !text.contains("instance="),
            "`instance` is Prometheus' own label"
        );
        // Every family has HELP and TYPE before its samples (promtool lints HELP; TYPE here).
        let mut typed: Vec<&str> = Vec::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                typed.push(rest.split(' ').next().unwrap());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(
                    typed.iter().any(|t| name == *t
                        || ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name.strip_suffix(s) == Some(t))),
                    "sample before its # TYPE: {l}"
                );
            }
        }
        assert!(text.contains("# HELP shmproxy_proxy_requests_total "));
        let s = samples(&text);
        let get = |k: &str| *s.get(k).unwrap_or_else(|| panic!("no sample {k}:\n{text}"));
        // The metrics request itself was counted before rendering; the stats one was answered.
        assert_eq!(
            get("shmproxy_proxy_requests_total") as u64,
            u(&json, &["proxy", "requests"]) + 1
        );
        assert_eq!(
            get("shmproxy_pool_segments") as u64,
            u(&json, &["pool", "segments"])
        );
        assert_eq!(get("shmproxy_cached_up"), 1.0);
        assert!(get("shmproxy_proxy_requests_by_method_total{method=\"GET\"}") >= 10.0);
        assert!(get("shmproxy_proxy_responses_by_class_total{class=\"4xx\"}") >= 5.0);
        let count = get("shmproxy_proxy_request_duration_seconds_count");
        assert_eq!(
            get("shmproxy_proxy_request_duration_seconds_bucket{le=\"+Inf\"}"),
            count
        );
        assert!(count >= 11.0);
        let by_state: f64 = ["free", "in_use", "quarantined"]
            .iter()
            .map(|st| {
                get(&format!(
                    "shmproxy_pool_segments_by_state{{state=\"{st}\"}}"
                ))
            })
            .sum();
        assert_eq!(by_state, get("shmproxy_pool_segments"));
    });
}

/// Runs `promtool check metrics` on `text`; panics with its complaint.
fn promtool_check(text: &str) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n---- metrics ----\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 10: the table of sites and servers in cached's stats region reaches the JSON, the
/// Prometheus text (valid for promtool, labels escaped) and `proxy stats`. The test plays
/// cached's upstream code: it maps the live cached's region and publishes rows into it.
#[test]
fn observability_sites_and_servers_reach_json_metrics_and_proxy_stats() {
    use common::stats::StatsRegion;
    with_deadline(DEADLINE, || {
        let root = docroot();
        let inst = Instance::builder().root(root.path()).start();
        let before = inst.stats();
        assert_eq!(
            before["sites"],
            serde_json::json!([]),
            "disk mode: no sites"
        );
        assert_eq!(before["servers"], serde_json::json!([]));
        assert!(!inst
            .get("/__shmproxy/metrics")
            .text()
            .contains("shmproxy_upstream_up"));

        let names = common::Names::for_instance(&inst.name);
        let region = StatsRegion::open(&names.stats_cached).expect("cached's stats region");
        region.site(0).unwrap().publish("shop");
        region.site(1).unwrap().publish("blog \"b\"");
        region.server(0).unwrap().publish(0, "https://10.0.0.1");
        region
            .server(1)
            .unwrap()
            .publish(0, "https://10.0.0.2:8443");
        region
            .server(2)
            .unwrap()
            .publish(1, "http://[::1]:8080/blog");
        let shop = region.site(0).unwrap();
        for _ in 0..3 {
            shop.answered(common::http::CacheOutcome::Miss, 200);
        }
        shop.answered(common::http::CacheOutcome::Error, 502);
        let down = region.server(1).unwrap();
        drop(down.request());
        down.request().failed();
        assert!(down.set_up(false));
        let busy = region.server(2).unwrap().request();

        let s = inst.stats();
        let sites = s["sites"].as_array().expect("sites array");
        assert_eq!(sites.len(), 2, "{s}");
        assert_eq!(sites[0]["name"], "shop");
        assert_eq!(u(&sites[0], &["requests"]), 4);
        assert_eq!(u(&sites[0], &["misses"]), 3);
        assert_eq!(u(&sites[0], &["errors"]), 1);
        assert_eq!(sites[1]["name"], "blog \"b\"");
        let servers = s["servers"].as_array().expect("servers array");
        assert_eq!(servers.len(), 3);
        assert_eq!(servers[1]["url"], "https://10.0.0.2:8443");
        assert_eq!(servers[1]["site"], "shop");
        assert_eq!(servers[1]["state"], "down");
        assert_eq!(servers[0]["state"], "up");
        assert_eq!(u(&servers[1], &["requests"]), 2);
        assert_eq!(u(&servers[1], &["failures"]), 1);
        assert_eq!(u(&servers[1], &["down_events"]), 1);
        assert_eq!(u(&servers[2], &["in_flight"]), 1);
        assert_eq!(servers[2]["site"], "blog \"b\"");

        let text = inst.get("/__shmproxy/metrics").text();
        promtool_check(&text);
        let m = samples(&text);
        let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no sample {k}:\n{text}"));
        assert_eq!(get("shmproxy_site_requests_total{site=\"shop\"}"), 4.0);
        assert_eq!(
            get("shmproxy_site_errors_total{site=\"blog \\\"b\\\"\"}"),
            0.0
        );
        assert_eq!(
            get("shmproxy_upstream_up{site=\"shop\",server=\"https://10.0.0.2:8443\"}"),
            0.0
        );
        assert_eq!(
            get("shmproxy_upstream_up{site=\"shop\",server=\"https://10.0.0.1\"}"),
            1.0
        );
        assert_eq!(
            get("shmproxy_upstream_in_flight{site=\"blog \\\"b\\\"\",server=\"http://[::1]:8080/blog\"}"),
            1.0
        );
        assert_eq!(get("shmproxy_cached_upstream_tls_errors_total"), 0.0);

        let out = Command::new(harness::bin_path("proxy"))
            .args(["stats", "--instance", &inst.name])
            .output()
            .unwrap();
        assert!(out.status.success());
        let screen = String::from_utf8_lossy(&out.stdout);
        let line = screen
            .lines()
            .find(|l| l.contains("https://10.0.0.2:8443"))
            .unwrap_or_else(|| panic!("no server line:\n{screen}"));
        assert!(line.contains("shop") && line.contains("DOWN"), "{line}");
        assert!(
            screen
                .lines()
                .any(|l| l.contains("shop") && l.contains(" 4 ")),
            "{screen}"
        );
        drop(busy);
    });
}

/// Connects to `addr` from source address `from` (another loopback address).
fn connect_from(from: std::net::Ipv4Addr, addr: SocketAddr) -> TcpStream {
    use nix::sys::socket::{connect, SockaddrIn};
    use std::os::fd::AsRawFd;
    let SocketAddr::V4(to) = addr else {
        panic!("IPv4 only")
    };
    let fd = harness::bound_socket(std::net::SocketAddrV4::new(from, 0));
    connect(fd.as_raw_fd(), &SockaddrIn::from(to)).unwrap_or_else(|e| panic!("connect: {e}"));
    let stream = TcpStream::from(fd);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// `stats_allow` decides who reads `/__shmproxy/`; others get 403 and nothing else.
#[test]
fn observability_endpoints_answer_only_allowed_addresses() {
    with_deadline(DEADLINE, || {
        let root = docroot();
        let inst = Instance::builder()
            .root(root.path())
            .proxy_arg("--stats-allow")
            .proxy_arg("127.0.0.1/32")
            .start();
        let other = std::net::Ipv4Addr::new(127, 0, 0, 2);
        for path in ["/__shmproxy/stats", "/__shmproxy/metrics", "/__shmproxy/"] {
            let req = format!("GET {path} HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n");
            let e = exchange(&mut connect_from(other, inst.addr()), req.as_bytes(), false);
            assert_eq!(e.status, 403, "{path} from {other}");
            assert!(!String::from_utf8_lossy(&e.body).contains("requests"));
            let e = exchange(&mut connect(inst.addr()), req.as_bytes(), false);
            assert_eq!(e.status, 200, "{path} from 127.0.0.1");
            assert_eq!(e.x_cache, "INTERNAL");
        }
        // Ordinary traffic from that address is unaffected.
        let e = exchange(
            &mut connect_from(other, inst.addr()),
            b"GET /small.txt HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n",
            false,
        );
        assert_eq!(e.status, 200);
        // PURGE follows the same list (issue 3: 403 from elsewhere).
        let purge = b"PURGE /small.txt HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n";
        let e = exchange(&mut connect_from(other, inst.addr()), purge, false);
        assert_eq!(e.status, 403, "PURGE from {other}");
        let e = exchange(&mut connect(inst.addr()), purge, false);
        assert_eq!(e.status, 200, "PURGE of a stored object from 127.0.0.1");
        let r = inst.get("/__shmproxy/nothing-here");
        assert_eq!(r.status, 404);
    });
}

// ---------------------------------------------------------------------------------------------
// `proxy stats`
// ---------------------------------------------------------------------------------------------

/// Acceptance 3: `proxy stats` reads shared memory (no HTTP): JSON equal to the endpoint's,
/// a text table, `--watch` redrawing with rates; a missing instance is an error.
#[test]
fn observability_stats_command_reads_shared_memory() {
    with_deadline(DEADLINE, || {
        let root = docroot();
        let inst = Instance::builder().root(root.path()).start();
        let mut c = inst.conn();
        for _ in 0..7 {
            assert_eq!(c.get("/small.txt").status, 200);
        }
        let proxy = harness::bin_path("proxy");
        // A request is counted by method once answered, which can be after its client has
        // read the answer: take the HTTP snapshot when every earlier request shows in it.
        let (http, ..) = settled_stats(inst.addr());
        let read_shm = || inst.shm_stats().unwrap_or_else(|e| panic!("{e}"));
        // No request happened in between: the command itself sends none. The stats request
        // counted itself in `requests` and `bytes_in` before answering, and by method once
        // answered, so the shared-memory read waits for that one count and no more.
        let want_get = u(&http, &["proxy", "requests_get"]) + 1;
        let shm = harness::poll_until(Duration::from_secs(5), "the stats GET counted", || {
            let shm = read_shm();
            (u(&shm, &["proxy", "requests_get"]) >= want_get).then_some(shm)
        });
        for (k, extra) in [
            ("requests", 0),
            ("bytes_in", 0),
            ("connections_accepted", 0),
            ("requests_get", 1),
        ] {
            assert_eq!(
                u(&shm, &["proxy", k]),
                u(&http, &["proxy", k]) + extra,
                "{k}"
            );
        }
        assert_eq!(shm["pool"]["segments"], http["pool"]["segments"]);
        assert_eq!(shm["cached"]["cached_pid"], http["cached"]["cached_pid"]);

        let out = Command::new(&proxy)
            .args(["stats", "--instance", &inst.name])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        let line = text
            .lines()
            .find(|l| l.starts_with("proxy.requests "))
            .unwrap_or_else(|| panic!("no proxy.requests line:\n{text}"));
        assert_eq!(
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap(),
            u(&shm, &["proxy", "requests"])
        );
        assert!(text.contains("cached: running"), "{text}");
        assert!(text.contains("cached.l2_hits"), "{text}");

        // --watch: several frames, each redrawn in place, rates after the first.
        let mut w = Command::new(&proxy)
            .args([
                "stats",
                "--instance",
                &inst.name,
                "--watch",
                "--interval",
                "200",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = w.stdout.take().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = {
            let seen = seen.clone();
            thread::spawn(move || {
                let mut tmp = [0u8; 4096];
                while let Ok(n @ 1..) = stdout.read(&mut tmp) {
                    seen.lock().unwrap().extend_from_slice(&tmp[..n]);
                }
            })
        };
        // Traffic until three frames, with rates, have been drawn.
        harness::poll_until(
            Duration::from_secs(15),
            "three --watch frames with rates",
            || {
                assert_eq!(c.get("/small.txt").status, 200);
                let all = String::from_utf8_lossy(&seen.lock().unwrap()).to_string();
                (all.matches("\x1b[H\x1b[2J").count() >= 3 && all.contains("RATE/s")).then_some(())
            },
        );
        harness::send_signal(w.id() as i32, libc::SIGTERM);
        let _ = w.wait();
        reader.join().unwrap();
        let all = String::from_utf8_lossy(&seen.lock().unwrap()).to_string();
        let frames = all.matches("\x1b[H\x1b[2J").count();
        assert!(frames >= 3, "{frames} frames:\n{all}");
        assert!(all.contains("RATE/s"), "no rates in --watch:\n{all}");

        let out = Command::new(&proxy)
            .args(["stats", "--instance", "no-such-instance-e2e"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no live proxy"));
    });
}

/// A private tmux server (its own socket in a temporary directory), killed on drop.
struct Tmux {
    dir: tempfile::TempDir,
}

impl Tmux {
    fn new() -> Tmux {
        if Command::new("tmux").arg("-V").output().is_err() {
            panic!("tmux not found: install Debian's `tmux` package (scripts/test.sh does)");
        }
        Tmux {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn run(&self, args: &[&str]) -> String {
        let sock = self.dir.path().join("sock");
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&sock)
            .args(["-f", "/dev/null"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pane's visible screen, one string per row.
    fn screen(&self) -> Vec<String> {
        self.run(&["capture-pane", "-p", "-t", "w"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn wait_for(&self, what: &str, mut ok: impl FnMut(&[String]) -> bool) -> Vec<String> {
        let mut last = Vec::new();
        if harness::poll(Duration::from_secs(15), || {
            last = self.screen();
            ok(&last)
        }) {
            return last;
        }
        panic!("{what}: not on screen after 15 s:\n{}", last.join("\n"));
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(self.dir.path().join("sock"))
            .arg("kill-server")
            .stderr(Stdio::null())
            .status();
    }
}

/// Issue 14, acceptance 7: `proxy stats --watch` on a real 80×24 terminal (tmux): the summary
/// block on top, the changed counters under it, everything within 80 columns and 24 rows; it
/// follows a resize, scrolls with PgDn, and `q` quits with status 0 and the terminal restored.
#[test]
fn observability_stats_watch_fits_an_80x24_terminal() {
    with_deadline(DEADLINE, || {
        let root = docroot();
        let inst = Instance::builder().root(root.path()).workers(2).start();
        let mut c = inst.conn();
        for _ in 0..5 {
            assert_eq!(c.get("/small.txt").status, 200);
        }
        let tmux = Tmux::new();
        let cmd = format!(
            "'{}' stats --instance {} --watch --interval 200; echo watch-exited-$?; sleep 60",
            harness::bin_path("proxy").display(),
            inst.name
        );
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "w",
            "-x",
            "80",
            "-y",
            "24",
            "-e",
            "TERM=xterm",
            &cmd,
        ]);
        // Traffic between refreshes, so `proxy.requests` is among the changed counters.
        let screen = tmux.wait_for("the summary and a changed proxy.requests", |s| {
            assert_eq!(c.get("/small.txt").status, 200);
            thread::sleep(Duration::from_millis(50));
            // A frame after the first: rates over the last refresh.
            s.iter().any(|l| l.contains("proxy.requests"))
                && s.iter()
                    .any(|l| l.contains("hit ratio") && !l.contains("–/s"))
        });
        let text = screen.join("\n");
        assert!(screen.len() <= 24, "{} rows:\n{text}", screen.len());
        for l in &screen {
            assert!(l.chars().count() <= 80, "row wider than 80 columns: {l:?}");
        }
        assert!(screen[0].starts_with("shmproxy "), "{text}");
        assert!(screen[0].contains(&inst.name), "{text}");
        assert!(screen[0].contains("cached up (pid"), "{text}");
        let row = |needle: &str| {
            screen
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{needle:?} not on screen:\n{text}"))
        };
        let header = row("CHANGED COUNTER");
        for needle in [
            "/s · hit ratio ",
            "latency p50 ≤ ",
            " p99 ≤ ",
            "free, ",
            " in use, ",
            " quarantined",
            "workers 2 ",
        ] {
            assert!(
                row(needle) < header,
                "{needle:?} is not in the summary above the counters:\n{text}"
            );
        }
        assert!(row("proxy.requests") > header, "{text}");
        assert!(
            row("q quits") == 23,
            "the footer is not on the last row:\n{text}"
        );

        // A smaller terminal, with traffic flowing so that more counters change than fit: the
        // footer moves to the last row, the summary stays on top, PgDn scrolls the counters.
        let stop = Arc::new(AtomicBool::new(false));
        let traffic = {
            let stop = stop.clone();
            let addr = inst.addr();
            thread::spawn(move || {
                let mut c = client::Conn::connect(addr);
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(c.get("/small.txt").status, 200);
                    assert_eq!(c.get("/missing-e2e").status, 404);
                    thread::sleep(Duration::from_millis(10));
                }
            })
        };
        tmux.run(&["resize-window", "-t", "w", "-x", "60", "-y", "12"]);
        // The footer's "first-last of total" range.
        let range = |s: &[String]| -> Option<(usize, usize, usize)> {
            let f = s.get(11)?;
            let (r, rest) = f.split_once(" of ")?;
            let (a, b) = r.split_once('-')?;
            let n = rest.split(' ').next()?;
            Some((a.parse().ok()?, b.parse().ok()?, n.parse().ok()?))
        };
        let small = tmux.wait_for("more changed counters than rows at 60×12", |s| {
            s.len() <= 12 && range(s).is_some_and(|(a, b, n)| a == 1 && n > b)
        });
        let small_text = small.join("\n");
        assert!(small[0].starts_with("shmproxy "), "{small_text}");
        assert!(small[1].contains("hit ratio"), "{small_text}");
        assert!(
            small.iter().all(|l| l.chars().count() <= 60),
            "{small_text}"
        );
        let scrolled = tmux.wait_for("the counters scrolled by PgDn", |s| {
            let r = range(s);
            if r.is_some_and(|(a, _, _)| a == 1) {
                tmux.run(&["send-keys", "-t", "w", "PageDown"]);
            }
            r.is_some_and(|(a, _, _)| a > 1)
        });
        assert!(
            scrolled[0].starts_with("shmproxy "),
            "{}",
            scrolled.join("\n")
        );
        stop.store(true, Ordering::Relaxed);
        traffic.join().unwrap();

        tmux.run(&["send-keys", "-t", "w", "q"]);
        let after = tmux.wait_for("the exit status after q", |s| {
            s.iter().any(|l| l.contains("watch-exited-"))
        });
        let text = after.join("\n");
        assert!(text.contains("watch-exited-0"), "{text}");
        assert!(
            !text.contains("CHANGED COUNTER"),
            "the alternate screen was not left:\n{text}"
        );

        // Ctrl-C quits the same way (raw mode turns it into a key, not a signal).
        let cmd = cmd.replace("watch-exited-", "again-exited-");
        tmux.run(&["respawn-pane", "-k", "-t", "w", &cmd]);
        tmux.wait_for("the summary again", |s| {
            s.iter().any(|l| l.contains("hit ratio"))
        });
        tmux.run(&["send-keys", "-t", "w", "C-c"]);
        let after = tmux.wait_for("the exit status after Ctrl-C", |s| {
            s.iter().any(|l| l.contains("again-exited-"))
        });
        assert!(
            after.join("\n").contains("again-exited-0"),
            "{}",
            after.join("\n")
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Access log
// ---------------------------------------------------------------------------------------------

// The line format's parser is in `accesslog.rs` (issue 14: Combined Log Format by default).

/// Acceptance 4: 64 concurrent clients, every line whole and parseable, each request once.
#[test]
fn observability_access_log_lines_are_whole_under_64_clients() {
    with_deadline(DEADLINE, || {
        let root = docroot();
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("access.log");
        // Enough segments for every executing request: this test is about the log, not
        // about pool exhaustion (which answers 503 after pool_wait on a busy machine).
        let inst = Instance::builder()
            .root(root.path())
            .threads(8)
            .segments(32)
            .proxy_arg("--access-log")
            .proxy_arg(log.to_str().unwrap())
            .start();
        const CLIENTS: usize = 64;
        const PER_CLIENT: usize = 10;
        let addr = inst.addr();
        thread::scope(|sc| {
            for c in 0..CLIENTS {
                sc.spawn(move || {
                    let mut conn = client::Conn::connect(addr);
                    let ua = format!("e2e \"c{c}\" \u{e9}");
                    for i in 0..PER_CLIENT {
                        let target = if i % 2 == 0 {
                            format!("/small.txt?c={c}&i={i}")
                        } else {
                            format!("/mid.bin?c={c}&i={i}")
                        };
                        let r = conn.request(
                            "GET",
                            &target,
                            &[("User-Agent", &ua), ("Referer", "http://r.test/x")],
                            b"",
                        );
                        assert!(r.status == 200 || r.status == 404, "{}", r.describe());
                    }
                });
            }
        });
        let want = CLIENTS * PER_CLIENT;
        // Flushed by the workers on their own (≤ 0.5 s), not by a stop.
        let lines =
            harness::poll_until(Duration::from_secs(10), "every request in the log", || {
                let lines = read_lines(&log);
                (lines.iter().filter(|l| l.contains("?c=")).count() >= want).then_some(lines)
            });
        let mut seen: HashMap<String, usize> = HashMap::new();
        for l in &lines {
            let p = parse_line(l).unwrap_or_else(|e| panic!("torn or malformed line: {e}"));
            if !p.request.contains("?c=") {
                continue;
            }
            *seen.entry(p.request.clone()).or_default() += 1;
            let c: usize = p
                .request
                .split("?c=")
                .nth(1)
                .unwrap()
                .split('&')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(
                p.user_agent,
                format!("e2e \\x22c{c}\\x22 \\xC3\\xA9"),
                "{l}"
            );
            assert!(p.status == 200 || p.status == 404, "{l}");
            assert_eq!(p.referer, "http://r.test/x", "{l}");
        }
        assert_eq!(seen.len(), want, "distinct requests logged");
        assert!(seen.values().all(|&n| n == 1), "a request logged twice");
        let s = inst.stats();
        assert_eq!(u(&s, &["proxy", "access_log_dropped"]), 0);
        assert!(u(&s, &["proxy", "access_log_lines"]) >= want as u64);
    });
}

/// Acceptance 4: rotation by size keeping N generations; SIGUSR1 to the master reopens the
/// log (logrotate's `create` mode); a line reaches the file within a second without a stop.
#[test]
fn observability_access_log_rotates_and_reopens_on_sigusr1() {
    with_deadline(DEADLINE, || {
        let root = docroot();
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("access.log");
        let cfg = logdir.path().join("proxy.toml");
        std::fs::write(
            &cfg,
            format!(
                "[proxy]\naccess_log = \"{}\"\naccess_log_max_bytes = 2048\naccess_log_keep = 2\n",
                log.display()
            ),
        )
        .unwrap();
        let inst = Instance::builder()
            .root(root.path())
            .proxy_arg("--config")
            .proxy_arg(cfg.to_str().unwrap())
            .start();
        let mut c = inst.conn();
        let lines = || u(&inst.stats(), &["proxy", "access_log_lines"]);
        for round in 0..6 {
            let before = lines();
            for i in 0..24 {
                assert_eq!(
                    c.get(&format!("/small.txt?round={round}&i={i}")).status,
                    200
                );
            }
            // One flush per round.
            harness::poll_until(
                Duration::from_secs(5),
                &format!("round {round} written"),
                || (lines() >= before + 24).then_some(()),
            );
        }
        let gen = |n: u32| PathBuf::from(format!("{}.{n}", log.display()));
        harness::poll_until(Duration::from_secs(5), "three rotations", || {
            (u(&inst.stats(), &["proxy", "access_log_rotations"]) >= 3).then_some(())
        });
        assert!(
            gen(1).is_file() && gen(2).is_file(),
            "FILE.1 and FILE.2 kept"
        );
        assert!(
            !gen(3).exists(),
            "only access_log_keep = 2 generations are kept"
        );
        for p in [gen(1), gen(2)] {
            let size = std::fs::metadata(&p).unwrap().len();
            assert!(
                size >= 2048,
                "{} rotated at {size} bytes, before the limit",
                p.display()
            );
            for l in read_lines(&p) {
                parse_line(&l).unwrap();
            }
        }
        // logrotate: move the file away, then SIGUSR1 to the master.
        let moved = logdir.path().join("moved.log");
        std::fs::rename(&log, &moved).unwrap();
        inst.signal_proxy(libc::SIGUSR1);
        harness::poll_until(Duration::from_secs(5), "log_reopens = 1", || {
            (u(&inst.stats(), &["proxy", "log_reopens"]) == 1).then_some(())
        });
        let t0 = Instant::now();
        harness::poll_until(Duration::from_secs(5), "access.log recreated", || {
            log.is_file().then_some(())
        });
        assert_eq!(c.get("/small.txt?after-reopen").status, 200);
        harness::poll_until(
            Duration::from_secs(3),
            "the new line in the new file",
            || {
                read_lines(&log)
                    .iter()
                    .any(|l| l.contains("after-reopen"))
                    .then_some(())
            },
        );
        assert!(t0.elapsed() < Duration::from_secs(3));
        assert!(!read_lines(&moved)
            .iter()
            .any(|l| l.contains("after-reopen")));
        // Flushed within a second, with nothing else happening.
        let t0 = Instant::now();
        assert_eq!(c.get("/small.txt?lonely").status, 200);
        harness::poll_until(Duration::from_millis(1500), "a lone line flushed", || {
            read_lines(&log)
                .iter()
                .any(|l| l.contains("lonely"))
                .then_some(())
        });
        assert!(t0.elapsed() <= Duration::from_millis(1500));
        for l in read_lines(&log) {
            parse_line(&l).unwrap();
        }
        assert_eq!(u(&inst.stats(), &["proxy", "access_log_dropped"]), 0);
    });
}

// ---------------------------------------------------------------------------------------------
// Dashboard in headless Chromium (Chrome DevTools Protocol over --remote-debugging-pipe)
// ---------------------------------------------------------------------------------------------

fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::var("PATH").unwrap_or_default().split(':') {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("chromium not found: install Debian's `chromium` package (scripts/test.sh does)");
}

/// A headless Chromium driven over the DevTools pipe (fd 3: commands in, fd 4: replies out,
/// NUL-terminated JSON), one page attached in flat mode.
struct Browser {
    child: std::process::Child,
    to: std::fs::File,
    from: std::sync::mpsc::Receiver<Value>,
    next: u64,
    session: String,
    _profile: tempfile::TempDir,
}

fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe2")
}

impl Browser {
    fn launch() -> Browser {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let profile = tempfile::tempdir().unwrap();
        let (cmd_r, cmd_w) = pipe();
        let (out_r, out_w) = pipe();
        let (cr, ow) = (cmd_r.as_raw_fd(), out_w.as_raw_fd());
        let mut cmd = Command::new(chromium());
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-pipe",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--mute-audio",
            "--password-store=basic",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: runs in the child before exec and only calls async-signal-safe functions
        // (fcntl, dup2, prctl, through nix's thin wrappers) on fds that exist in the child:
        // `cr` and `ow` stay open in the parent until the spawn has returned, and the copies
        // are plain ints borrowed only for the call.
        unsafe {
            cmd.pre_exec(move || {
                use nix::fcntl::{fcntl, FcntlArg};
                use std::os::fd::{BorrowedFd, IntoRawFd};
                // Move both ends out of the way first (they could already be 3 or 4).
                let a = fcntl(BorrowedFd::borrow_raw(cr), FcntlArg::F_DUPFD_CLOEXEC(10))?;
                let b = fcntl(BorrowedFd::borrow_raw(ow), FcntlArg::F_DUPFD_CLOEXEC(10))?;
                // Fds 3 and 4 must survive the exec: their owners are released, never dropped.
                let _ = nix::unistd::dup2_raw(BorrowedFd::borrow_raw(a), 3)?.into_raw_fd();
                let _ = nix::unistd::dup2_raw(BorrowedFd::borrow_raw(b), 4)?.into_raw_fd();
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start chromium");
        drop((cmd_r, out_w));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut out = std::fs::File::from(out_r);
        thread::spawn(move || {
            let mut buf = Vec::new();
            let mut tmp = [0u8; 64 << 10];
            loop {
                let n = match out.read(&mut tmp) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&tmp[..n]);
                while let Some(i) = buf.iter().position(|&b| b == 0) {
                    let msg: Vec<u8> = buf.drain(..=i).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&msg[..msg.len() - 1]) {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            to: std::fs::File::from(cmd_w),
            from: rx,
            next: 1,
            session: String::new(),
            _profile: profile,
        };
        // The first command waits for Chromium to be up: on two loaded cores (the whole
        // suite in parallel) that has taken more than 30 s.
        let target = b.call_within(
            "Target.createTarget",
            serde_json::json!({"url": "about:blank"}),
            Duration::from_secs(100),
        );
        let id = target["targetId"].as_str().unwrap().to_string();
        let attached = b.call(
            "Target.attachToTarget",
            serde_json::json!({"targetId": id, "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b
    }

    /// Sends a command (to the page once attached) and waits for its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.call_within(method, params, Duration::from_secs(30))
    }

    /// The same with its own bound (a loaded machine starts Chromium slowly).
    fn call_within(&mut self, method: &str, params: Value, limit: Duration) -> Value {
        let id = self.next;
        self.next += 1;
        let mut msg = serde_json::json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = Value::String(self.session.clone());
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("chromium did not answer {method}"));
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page (awaiting a promise) and returns its JSON value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            serde_json::json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            serde_json::json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        );
    }

    fn screenshot(&mut self, path: &Path) {
        let r = self.call(
            "Page.captureScreenshot",
            serde_json::json!({"format": "png"}),
        );
        let png = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            r["data"].as_str().unwrap(),
        )
        .expect("a base64 screenshot");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let mut bytes =
            serde_json::to_vec(&serde_json::json!({"id": 0, "method": "Browser.close"})).unwrap();
        bytes.push(0);
        let _ = self.to.write_all(&bytes);
        if harness::wait_timeout(&mut self.child, Duration::from_secs(5)).is_some() {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `target/` of this build (the test binary lives in `target/<profile>/deps/`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
        .map(Path::to_path_buf)
        .unwrap_or_else(|| exe.parent().unwrap().to_path_buf())
}

/// The rendered request counter, as a number (the text, digits only).
fn rendered_requests(b: &mut Browser) -> u64 {
    let text = b.eval("(document.getElementById('requests') || {}).textContent || ''");
    let digits: String = text
        .as_str()
        .unwrap_or("")
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap_or(0)
}

/// Acceptance 5 and 6: the dashboard in real headless Chromium while traffic flows.
#[test]
fn observability_dashboard_renders_live_in_chromium() {
    with_deadline(DEADLINE * 2, || {
        let root = docroot();
        let inst = Instance::builder().root(root.path()).segments(12).start();
        let addr = inst.addr();
        // Rows of sites and servers, as cached's upstream code publishes them.
        let region =
            common::stats::StatsRegion::open(&common::Names::for_instance(&inst.name).stats_cached)
                .expect("cached's stats region");
        region.site(0).unwrap().publish("www.example.com");
        region
            .server(0)
            .unwrap()
            .publish(0, "https://origin-a.internal.example.com:8443/prefix");
        region
            .server(1)
            .unwrap()
            .publish(0, "https://origin-b.internal.example.com:8443/prefix");
        assert!(region.server(1).unwrap().set_up(false));
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let traffic = {
            let (stop, sent) = (stop.clone(), sent.clone());
            thread::spawn(move || {
                let mut c = client::Conn::connect(addr);
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(c.get("/small.txt").status, 200);
                    assert_eq!(c.get("/mid.bin").status, 200);
                    sent.fetch_add(2, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(15));
                }
            })
        };
        let mut b = Browser::launch();
        b.viewport(1280, 800, false);
        b.call(
            "Page.navigate",
            serde_json::json!({"url": format!("http://{addr}/__shmproxy/")}),
        );
        harness::poll_until(
            Duration::from_secs(20),
            "the dashboard's first rendering",
            || (rendered_requests(&mut b) > 0).then_some(()),
        );
        let first = rendered_requests(&mut b);
        let sent_then = sent.load(Ordering::Relaxed);
        let mut second = first;
        let rose = harness::poll(Duration::from_secs(10), || {
            second = rendered_requests(&mut b);
            second > first
        });
        assert!(
            rose,
            "the rendered counter did not increase ({first} → {second}) while {} requests were sent",
            sent.load(Ordering::Relaxed) - sent_then
        );
        // Issue 14, acceptance 8: the last-5-minutes charts are SVG paths drawn from the page's
        // ring of samples; with traffic flowing they hold more than one point and move.
        let charts = |b: &mut Browser| -> Value {
            b.eval(
                "JSON.stringify([...document.querySelectorAll('#history .chart')].map(f => \
                 ({id: f.id, points: +f.dataset.points, \
                   d: [...f.querySelectorAll('path')].map(p => p.getAttribute('d')).join('|')})))",
            )
        };
        let parse = |v: Value| -> Vec<Value> { serde_json::from_str(v.as_str().unwrap()).unwrap() };
        let samples =
            |b: &mut Browser| b.eval("+document.getElementById('history').dataset.samples");
        let before = parse(charts(&mut b));
        let ids: Vec<&str> = before.iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert_eq!(
            ids,
            [
                "chart-rate",
                "chart-hit",
                "chart-latency",
                "chart-origin",
                "chart-pool"
            ]
        );
        let samples_then = samples(&mut b).as_u64().unwrap();
        assert!(samples_then >= 1, "no samples after {first} requests");
        // Two more updates (bounded wait: a loaded machine slows the page's timer).
        let (after, samples_now) = harness::poll_until(
            Duration::from_secs(20),
            "two more samples in the charts",
            || {
                let n = samples(&mut b).as_u64().unwrap();
                (n >= samples_then + 2).then(|| (parse(charts(&mut b)), n))
            },
        );
        let js_samples = b.eval("window.shmproxyDashboard.samples.length");
        assert!(js_samples.as_u64().unwrap() >= samples_now);
        for (was, now) in before.iter().zip(&after) {
            let id = now["id"].as_str().unwrap();
            if id == "chart-origin" {
                continue; // disk mode: cached makes no origin requests, so no point to draw
            }
            let points = now["points"].as_u64().unwrap();
            assert!(points > 1, "{id}: {points} points: {now}");
            let d = now["d"].as_str().unwrap();
            assert!(d.starts_with('M') && d.contains('L'), "{id}: path {d:?}");
            assert_ne!(was["d"], now["d"], "{id}: the chart did not move");
        }
        let widths = b.eval(
            "[...document.querySelectorAll('#history svg')].every(s => s.getBoundingClientRect().width > 100)",
        );
        assert_eq!(widths, Value::Bool(true), "the chart SVGs are laid out");

        // One cell per segment, states drawn from the JSON's pool.states.
        let cells = b.eval("document.querySelectorAll('#pool-grid .cell').length");
        assert_eq!(cells.as_u64(), Some(12), "pool grid cells");
        assert_eq!(u(&inst.stats(), &["pool", "segments"]), 12);
        let overflow = b.eval("document.documentElement.scrollWidth - window.innerWidth");
        assert!(
            overflow.as_i64().unwrap() <= 0,
            "horizontal overflow at 1280×800: {overflow}"
        );
        for id in ["rate", "hit-ratio", "p50", "p99", "bytes-out"] {
            let t = b.eval(&format!("document.getElementById('{id}').textContent"));
            assert_ne!(t.as_str(), Some("–"), "#{id} not rendered");
        }
        assert_eq!(
            b.eval("document.getElementById('cached-state').textContent.startsWith('up')"),
            Value::Bool(true)
        );
        assert_eq!(
            b.eval("document.getElementById('upstreams').hidden"),
            Value::Bool(false),
            "the sites and servers panel is shown"
        );
        assert_eq!(
            b.eval("document.querySelector('#sites td').textContent"),
            Value::from("www.example.com")
        );
        assert_eq!(
            b.eval(
                "[...document.querySelectorAll('#servers tr')].map(r => r.dataset.state).join()"
            ),
            Value::from("up,down")
        );
        let shots = target_dir();
        b.screenshot(&shots.join("dashboard-1280x800.png"));

        // Agreement with the JSON, exactly: stop the traffic and the page's timer, render once
        // more, then ask the endpoint, whose own request is the only one in between.
        stop.store(true, Ordering::Relaxed);
        traffic.join().unwrap();
        b.eval("window.shmproxyDashboard.stop()");
        b.eval("window.shmproxyDashboard.refresh().then(() => true)");
        let rendered = rendered_requests(&mut b);
        let data_value = b.eval("document.getElementById('requests').dataset.value");
        assert_eq!(data_value.as_str(), Some(rendered.to_string().as_str()));
        let json = inst.stats();
        assert_eq!(
            u(&json, &["proxy", "requests"]),
            rendered + 1,
            "rendered {rendered}, JSON {} (its own request included)",
            u(&json, &["proxy", "requests"])
        );
        assert!(rendered >= sent.load(Ordering::Relaxed));

        // Phone width: one column, nothing wider than the screen.
        b.eval("window.shmproxyDashboard.start()");
        b.viewport(390, 844, true);
        // The layout follows the new width (charts redraw on resize).
        let mut overflow = serde_json::Value::Null;
        harness::poll(Duration::from_secs(5), || {
            overflow = b.eval("document.documentElement.scrollWidth - window.innerWidth");
            overflow.as_i64().is_some_and(|o| o <= 0)
        });
        assert!(
            overflow.as_i64().unwrap() <= 0,
            "horizontal overflow at phone width: {overflow}"
        );
        b.screenshot(&shots.join("dashboard-phone.png"));
    });
}
