//! Several servers per site and upstream keep-alive (issue 10, acceptance 4 and 5):
//! round-robin spreads distinct keys, uri-hash is sticky and consistent, a dead server costs no
//! errors, active health checks take a server out and back, and an origin that closes idle
//! connections after exactly 1 s never turns into an error.
//!
//! Stats shape (the stats branch): a `servers` array (top level; nested `sites[].servers` is
//! read too) with `url` (the server's URL, matched here by `:PORT`) and `state` (`"up"` /
//! `"down"`); the cached counter `upstream_retries`.

use crate::origin::{Origin, Route};
use shmproxy_tests::client::{self, Conn};
use shmproxy_tests::harness::{pattern, poll_until, with_deadline, ClosedPort, Instance};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);

/// One default site (no `hosts`) over `origins`, with extra keys.
fn default_site(origins: &[String], extra: &str) -> String {
    let list: Vec<String> = origins.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "[[site]]\nname = \"pool\"\norigins = [{}]\n{extra}\n",
        list.join(", ")
    )
}

/// `state` of the server whose `url` has port `port` (any site), if the stats list it.
fn server_state(inst: &Instance, port: u16) -> Option<String> {
    let suffix = format!(":{port}");
    inst.servers().iter().find_map(|s| {
        let url = s["url"].as_str()?.trim_end_matches('/');
        let authority = url.split("://").nth(1).unwrap_or(url);
        let authority = authority.split('/').next().unwrap_or_default();
        authority
            .ends_with(&suffix)
            .then(|| s["state"].as_str().unwrap_or("(no state)").to_string())
    })
}

#[track_caller]
fn wait_state(inst: &Instance, port: u16, want: &str, within: Duration) {
    poll_until(within, &format!("server :{port} in state {want:?}"), || {
        (server_state(inst, port).as_deref() == Some(want)).then_some(())
    });
}

/// `GET target` on `conn`, asserting 200; the body as text.
#[track_caller]
fn get_ok(conn: &mut Conn, target: &str) -> String {
    let r = conn.get(target);
    assert_eq!(r.status, 200, "{target}: {}", r.describe());
    r.text()
}

/// Acceptance 4: round-robin spreads 100 distinct keys over two servers (30–70 each).
#[test]
fn sites_balance_round_robin_spreads_distinct_keys() {
    with_deadline(LIMIT, || {
        let servers = [Origin::start(), Origin::start()];
        for s in &servers {
            s.route("/rr", Route::ok("rr").header("Cache-Control", "max-age=60"));
        }
        let urls: Vec<String> = servers.iter().map(Origin::url).collect();
        let inst = Instance::builder()
            .config_toml(&default_site(&urls, "balance = \"round-robin\""))
            .start();
        let mut conn = inst.conn();
        for k in 0..100 {
            get_ok(&mut conn, &format!("/rr?k={k}"));
        }
        let counts: Vec<usize> = servers.iter().map(|s| s.count("/rr")).collect();
        assert_eq!(counts.iter().sum::<usize>(), 100, "{counts:?}");
        for (i, c) in counts.iter().enumerate() {
            assert!(
                (30..=70).contains(c),
                "server {i} got {c} of 100 keys: {counts:?}"
            );
        }
    });
}

/// Which server (by its body) answered each of `keys`.
fn owners(conn: &mut Conn, keys: usize) -> Vec<String> {
    (0..keys)
        .map(|k| get_ok(conn, &format!("/h?k={k}")))
        .collect()
}

/// Acceptance 4: uri-hash sends a key to the same server every time, and removing one of
/// three servers moves only the keys it had.
#[test]
fn sites_balance_uri_hash_is_sticky_and_consistent() {
    with_deadline(LIMIT, || {
        const KEYS: usize = 60;
        let servers = [Origin::start(), Origin::start(), Origin::start()];
        for (i, s) in servers.iter().enumerate() {
            s.route(
                "/h",
                Route::ok(format!("server{i}")).header("Cache-Control", "no-store"),
            );
        }
        let urls: Vec<String> = servers.iter().map(Origin::url).collect();
        let mut inst = Instance::builder()
            .config_toml(&default_site(&urls, "balance = \"uri-hash\""))
            .start();
        let mut conn = inst.conn();
        let before = owners(&mut conn, KEYS);
        for (k, owner) in before.iter().enumerate().take(5) {
            for _ in 0..20 {
                let got = get_ok(&mut conn, &format!("/h?k={k}"));
                assert_eq!(&got, owner, "key {k} moved between tries");
            }
        }
        let mut per: HashMap<&str, usize> = HashMap::new();
        for o in &before {
            *per.entry(o.as_str()).or_default() += 1;
        }
        assert_eq!(per.len(), 3, "{KEYS} keys over 3 servers: {per:?}");
        drop(conn);

        // Without server2: its keys move, nobody else's does.
        inst.stop_cached();
        inst.set_config_toml(&default_site(&urls[..2], "balance = \"uri-hash\""));
        inst.start_cached();
        let gone = servers[2].count("/h");
        let mut conn = inst.conn();
        let after = owners(&mut conn, KEYS);
        for (k, (was, now)) in before.iter().zip(&after).enumerate() {
            if was == "server2" {
                assert_ne!(now, "server2", "key {k}");
            } else {
                assert_eq!(
                    now, was,
                    "key {k} moved from {was} though its server stayed"
                );
            }
        }
        assert_eq!(
            servers[2].count("/h"),
            gone,
            "the removed server got no requests"
        );
    });
}

/// Acceptance 4: one of two servers refuses connections: 1,000 GET/HEAD requests see no
/// error (a failed connect is retried on the other server), and the dead one is marked down.
#[test]
fn sites_balance_dead_server_costs_no_errors() {
    with_deadline(LIMIT, || {
        let dead = ClosedPort::new();
        let live = Origin::start();
        live.route("/d", Route::ok("live").header("Cache-Control", "no-store"));
        let urls = [format!("http://127.0.0.1:{}", dead.port()), live.url()];
        let inst = Instance::builder()
            .config_toml(&default_site(&urls, ""))
            .start();
        let mut conn = inst.conn();
        let mut errors = Vec::new();
        for i in 0..1000 {
            let method = if i % 2 == 0 { "GET" } else { "HEAD" };
            let r = conn.request(method, &format!("/d?i={i}"), &[], b"");
            let ok = r.status == 200 && (method == "HEAD" || r.body == b"live");
            if !ok {
                errors.push(format!("{method} #{i}: {}", r.describe()));
            }
        }
        assert!(
            errors.is_empty(),
            "{} of 1000 failed, first: {:?}",
            errors.len(),
            &errors[..errors.len().min(3)]
        );
        assert_eq!(
            live.count("/d"),
            1000,
            "every request reached the live server once"
        );
        wait_state(&inst, dead.port(), "down", Duration::from_secs(5));
        assert_eq!(
            server_state(&inst, live.port()).as_deref(),
            Some("up"),
            "the live server"
        );
    });
}

/// Acceptance 4: with active health checks (200 ms, rise 2, fall 2), a server whose
/// `/healthz` answers 503 is taken out (its request count stops rising, stats say "down")
/// and comes back once it answers 200 again.
#[test]
fn sites_balance_health_check_takes_a_server_out_and_back() {
    with_deadline(LIMIT, || {
        let servers = [Origin::start(), Origin::start()];
        for s in &servers {
            s.route("/healthz", Route::ok("ok"));
            s.route("/w", Route::ok("w").header("Cache-Control", "no-store"));
        }
        let urls: Vec<String> = servers.iter().map(Origin::url).collect();
        let health = "health = { path = \"/healthz\", interval_ms = 200, timeout_ms = 200, rise = 2, fall = 2 }";
        let inst = Instance::builder()
            .config_toml(&default_site(&urls, health))
            .start();
        let (a, b) = (&servers[0], &servers[1]);
        poll_until(
            Duration::from_secs(5),
            "health checks on both servers",
            || (a.count("/healthz") >= 2 && b.count("/healthz") >= 2).then_some(()),
        );
        wait_state(&inst, a.port(), "up", Duration::from_secs(5));
        wait_state(&inst, b.port(), "up", Duration::from_secs(5));
        let mut conn = inst.conn();
        for i in 0..20 {
            get_ok(&mut conn, &format!("/w?warm={i}"));
        }
        assert!(
            a.count("/w") > 0 && b.count("/w") > 0,
            "both serve while healthy: {} / {}",
            a.count("/w"),
            b.count("/w")
        );

        b.route("/healthz", Route::ok("sick").status(503));
        wait_state(&inst, b.port(), "down", Duration::from_secs(5));
        let (a0, b0) = (a.count("/w"), b.count("/w"));
        for i in 0..40 {
            get_ok(&mut conn, &format!("/w?out={i}"));
        }
        assert_eq!(b.count("/w"), b0, "a server marked down gets no requests");
        assert_eq!(a.count("/w"), a0 + 40);

        b.route("/healthz", Route::ok("ok again"));
        wait_state(&inst, b.port(), "up", Duration::from_secs(5));
        for i in 0..40 {
            get_ok(&mut conn, &format!("/w?back={i}"));
        }
        assert!(
            b.count("/w") >= b0 + 10,
            "back up, it serves again: {} of 40",
            b.count("/w") - b0
        );
    });
}

/// Acceptance 5: 60 requests spaced 0.9–1.1 s apart (so each finds the upstream connection
/// idle for about the origin's limit) through an origin that closes idle connections after
/// exactly 1 s, with a request that comes in the last 50 ms before that taken as in flight
/// (reset: about one request in four lands there); each goes upstream (`no-store`) and none
/// fails.
fn keep_alive_run(advertise: bool) {
    with_deadline(Duration::from_secs(100), move || {
        const N: usize = 60;
        // A request sent less than 50 ms before the origin's deadline counts as in flight
        // when the timer fires (as over a real link): it is reset, not answered.
        let mut b = Origin::builder()
            .idle_close(Duration::from_millis(1000))
            .in_flight(Duration::from_millis(50));
        if advertise {
            b = b.advertise_keep_alive(1);
        }
        let origin = b.start();
        origin.route(
            "/ka",
            Route::ok("fresh").header("Cache-Control", "no-store"),
        );
        let inst = Instance::builder().origin(&origin.url()).start();
        // Spacings 900..=1100 ms, fixed for the test.
        let noise = pattern(2 * N, 0x6b61);
        let mut at = Instant::now();
        let mut failures = Vec::new();
        for i in 0..N {
            let r = client::get(inst.addr(), &format!("/ka?i={i}"));
            if r.status != 200 || r.body != b"fresh" {
                failures.push(format!("#{i}: {}", r.describe()));
            }
            if i + 1 < N {
                let v = u16::from_le_bytes([noise[2 * i], noise[2 * i + 1]]);
                at += Duration::from_millis(900 + u64::from(v) % 201);
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {N} requests failed (advertised: {advertise}): {failures:?}",
            failures.len()
        );
        assert_eq!(
            origin.count("/ka"),
            N,
            "each request reached the origin once"
        );
        let retries = inst.cached_counter("upstream_retries");
        assert!(
            retries.is_some(),
            "stats.cached.upstream_retries missing in {}",
            inst.stats()
        );
        eprintln!(
            "keep-alive (advertised: {advertise}): {N} requests over {} connections, upstream_retries {}",
            origin.accepted(),
            retries.unwrap()
        );
    });
}

#[test]
fn sites_balance_keep_alive_idle_close_after_1s_costs_no_errors() {
    keep_alive_run(false);
}

#[test]
fn sites_balance_keep_alive_advertised_timeout_costs_no_errors() {
    keep_alive_run(true);
}
