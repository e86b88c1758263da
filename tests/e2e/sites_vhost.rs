//! Virtual hosts and forwarding (issue 10, acceptance 3 and 6): `[[site]]`s chosen by `Host`,
//! each cached separately and purged by `Host`; `421` for a host no site serves (without a
//! default site); the site named in the access log and in `/__shmproxy/stats`; the
//! `X-Forwarded-*`, `Via` and `Host` fields the origin sees; `Location` passed unchanged.
//!
//! Stats shape (the stats branch): a top-level `sites` array whose rows have a `name` (also
//! looked for inside `cached`: see [`Instance::sites`]); the access log line, given a format
//! that ends with `$site`, ends with the site's name.

use crate::origin::{Origin, Route};
use serde_json::Value;
use shmproxy_tests::client::{self, Response};
use shmproxy_tests::harness::{poll_until, with_deadline, Instance};
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

/// `method target` with `Host: host` on a fresh connection.
fn req(inst: &Instance, method: &str, host: &str, target: &str) -> Response {
    client::fetch(inst.addr(), method, target, &[("Host", host)], b"")
}

fn x_cache(r: &Response) -> &str {
    r.header("x-cache").unwrap_or("(none)")
}

/// A `[[site]]` table.
fn site(name: &str, hosts: &[&str], origins: &[String], extra: &str) -> String {
    let q = |v: &[&str]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let origins: Vec<&str> = origins.iter().map(String::as_str).collect();
    format!(
        "[[site]]\nname = {name:?}\nhosts = [{}]\norigins = [{}]\n{extra}\n",
        q(hosts),
        q(&origins)
    )
}

fn read_log(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn site_names(inst: &Instance) -> Vec<String> {
    inst.sites()
        .iter()
        .map(|s| {
            s["name"]
                .as_str()
                .unwrap_or_else(|| panic!("stats: a site without a name: {s}"))
                .to_string()
        })
        .collect()
}

/// Acceptance 3: two sites, two origins, one path: each `Host` gets its own body, cached
/// separately; `PURGE` with `Host: a.test` removes only a.test's copy; an unknown host gets
/// `421` (no default site); access log and stats name the sites.
#[test]
fn sites_vhost_two_sites_cache_and_purge_separately() {
    with_deadline(LIMIT, || {
        let a = Origin::start();
        let b = Origin::start();
        a.route(
            "/same",
            Route::ok("body of site a").header("Cache-Control", "max-age=300"),
        );
        b.route(
            "/same",
            Route::ok("body of site b").header("Cache-Control", "max-age=300"),
        );
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("access.log");
        let cfg = site("site-a", &["a.test"], &[a.url()], "")
            + &site("site-b", &["b.test"], &[b.url()], "");
        let inst = Instance::builder()
            .config_toml(&cfg)
            .proxy_arg("--access-log")
            .proxy_arg(log.to_str().unwrap())
            // The combined line, then the site (not in the default format).
            .proxy_arg("--access-log-format")
            .proxy_arg(concat!(
                "$remote_addr - $remote_user [$time_local] \"$request\" $status ",
                "$body_bytes_sent \"$http_referer\" \"$http_user_agent\" $site"
            ))
            .start();
        let get = |host: &str| req(&inst, "GET", host, "/same");
        let check = |host: &str, body: &str, cache: &str| {
            let r = get(host);
            assert_eq!(r.status, 200, "{host}: {}", r.describe());
            assert_eq!(r.text(), body, "{host}: {}", r.describe());
            assert_eq!(x_cache(&r), cache, "{host}: {}", r.describe());
        };
        check("a.test", "body of site a", "MISS");
        check("b.test", "body of site b", "MISS");
        check("a.test", "body of site a", "HIT");
        check("b.test", "body of site b", "HIT");
        assert_eq!(
            (a.count("/same"), b.count("/same")),
            (1, 1),
            "one fetch per site"
        );

        let p = req(&inst, "PURGE", "a.test", "/same");
        assert_eq!(p.status, 200, "PURGE a.test: {}", p.describe());
        check("b.test", "body of site b", "HIT");
        check("a.test", "body of site a", "MISS");
        assert_eq!(
            (a.count("/same"), b.count("/same")),
            (2, 1),
            "PURGE with Host a.test removed only a.test's copy"
        );

        let r = get("c.test");
        assert_eq!(r.status, 421, "no site serves c.test: {}", r.describe());
        assert_eq!((a.count("/same"), b.count("/same")), (2, 1));

        let names = site_names(&inst);
        for want in ["site-a", "site-b"] {
            assert!(
                names.iter().any(|n| n == want),
                "stats sites {names:?} lack {want}"
            );
        }

        // 3 GETs per site (and the 421 for c.test, which names no site), a PURGE for
        // site-a. Each worker writes its lines in order, but two workers' lines interleave:
        // wait for the 7 GET lines, not for a count that one site's lines can make up.
        let lines = poll_until(
            Duration::from_secs(10),
            "7 GET /same lines in the access log",
            || {
                let l = read_log(&log);
                (l.iter().filter(|l| l.contains("\"GET /same ")).count() >= 7).then_some(l)
            },
        );
        let gets: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("\"GET /same "))
            .collect();
        let count = |name: &str| gets.iter().filter(|l| l.contains(name)).count();
        assert_eq!(
            (count("site-a"), count("site-b"), gets.len()),
            (3, 3, 7),
            "each access log line names its site: {gets:#?}"
        );
    });
}

/// A host no site lists goes to the default site (one without `hosts`) when there is one.
#[test]
fn sites_vhost_unknown_host_goes_to_the_default_site() {
    with_deadline(LIMIT, || {
        let a = Origin::start();
        let d = Origin::start();
        a.route("/same", Route::ok("body of site a"));
        d.route("/same", Route::ok("body of the default site"));
        let cfg = site("site-a", &["a.test"], &[a.url()], "")
            + &format!("[[site]]\nname = \"fallback\"\norigins = [{:?}]\n", d.url());
        let inst = Instance::builder().config_toml(&cfg).start();
        let r = req(&inst, "GET", "c.test", "/same");
        assert_eq!(r.status, 200, "{}", r.describe());
        assert_eq!(r.text(), "body of the default site");
        let r = req(&inst, "GET", "a.test", "/same");
        assert_eq!(r.text(), "body of site a", "{}", r.describe());
        assert_eq!((a.count("/same"), d.count("/same")), (1, 1));
        let names = site_names(&inst);
        assert!(
            names.iter().any(|n| n == "fallback"),
            "stats sites {names:?} lack the default site"
        );
    });
}

/// The header fields of an `/echo` answer.
fn echoed(r: &Response) -> Vec<(String, String)> {
    assert_eq!(r.status, 200, "{}", r.describe());
    let v: Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("/echo answer is not JSON ({e}): {}", r.text()));
    v["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap().to_string(),
                h[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every value of `name` the origin received.
fn all<'a>(h: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    h.iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The single value of `name` the origin received.
#[track_caller]
fn one<'a>(h: &'a [(String, String)], name: &str, what: &str) -> &'a str {
    match all(h, name).as_slice() {
        [v] => v,
        other => panic!("{what}: want one {name}, got {other:?} in {h:?}"),
    }
}

/// The forwarding fields a reverse proxy adds for a client at 127.0.0.1 that asked for
/// `client_host` over plain HTTP.
#[track_caller]
fn assert_forwarding(h: &[(String, String)], client_host: &str, what: &str) {
    let xff = one(h, "x-forwarded-for", what);
    let last = xff.rsplit(',').next().unwrap().trim();
    assert_eq!(last, "127.0.0.1", "{what}: X-Forwarded-For {xff:?}");
    assert_eq!(one(h, "x-forwarded-proto", what), "http", "{what}");
    assert_eq!(one(h, "x-forwarded-host", what), client_host, "{what}");
    let via = one(h, "via", what);
    assert!(via.starts_with("1.1 "), "{what}: Via {via:?}");
}

/// Acceptance 6: `X-Forwarded-For`/`-Proto`/`-Host` and `Via` as a reverse proxy sets them;
/// `Host` upstream per `host_header` ("client", "origin", a literal name); a `302`'s `Location`
/// passes unchanged.
#[test]
fn sites_vhost_forwarding_headers_and_host_header() {
    with_deadline(LIMIT, || {
        let o = Origin::start();
        o.route(
            "/moved",
            Route::ok("")
                .status(302)
                .header("Location", "http://elsewhere/x"),
        );
        let urls = [o.url()];
        let cfg = site(
            "keep-client",
            &["c.test"],
            &urls,
            "host_header = \"client\"",
        ) + &site("to-origin", &["o.test"], &urls, "host_header = \"origin\"")
            + &site(
                "literal",
                &["n.test"],
                &urls,
                "host_header = \"backend.internal\"",
            )
            + &site("unset", &["d.test"], &urls, "");
        let inst = Instance::builder().config_toml(&cfg).start();
        let authority = format!("127.0.0.1:{}", o.port());
        for (host, want) in [
            ("c.test", "c.test"),
            ("o.test", authority.as_str()),
            ("n.test", "backend.internal"),
            // Default for a site with hosts: the client's.
            ("d.test", "d.test"),
        ] {
            let what = format!("Host {host}");
            let h = echoed(&req(&inst, "GET", host, &format!("/echo/{host}")));
            assert_eq!(one(&h, "host", &what), want, "{what}: Host sent upstream");
            assert_forwarding(&h, host, &what);
        }
        let r = req(&inst, "GET", "c.test", "/moved");
        assert_eq!(r.status, 302, "{}", r.describe());
        assert_eq!(r.header("location"), Some("http://elsewhere/x"));
    });
}

/// The default site of `--origin` sends the server's own `host:port` as `Host` (default
/// `host_header = "origin"`) and the client's in `X-Forwarded-Host`.
#[test]
fn sites_vhost_default_site_sends_the_origin_host() {
    with_deadline(LIMIT, || {
        let o = Origin::start();
        let inst = Instance::builder().origin(&o.url()).start();
        let h = echoed(&req(&inst, "GET", "front.test", "/echo/default"));
        let what = "--origin default site";
        assert_eq!(
            one(&h, "host", what),
            format!("127.0.0.1:{}", o.port()),
            "{what}"
        );
        assert_forwarding(&h, "front.test", what);
    });
}
