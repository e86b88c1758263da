//! The access log (issue 14, acceptance 6): Combined Log Format exactly by default, every line
//! matched by a standard CLF regex anchored at both ends, the bytes field the body's length;
//! a line on disk within a bounded time after its answer, with nothing else happening; lines
//! in completion order; `json` lines that parse as JSON; a field list of variables.
//!
//! [`parse_clf`] is shared with the other tests that read the log (observability, sites).

use regex::Regex;
use serde_json::Value;
use shmproxy_tests::client;
use shmproxy_tests::harness::{self, poll_until, with_deadline, Instance};
use std::path::Path;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(120);

/// The Combined Log Format, anchored at both ends (the form the issue names).
pub const CLF: &str = r#"^\S+ \S+ \S+ \[[^\]]+\] "[^"]*" \d{3} (\d+|-) "[^"]*" "[^"]*"$"#;
/// The same, with a group around every field.
const CLF_FIELDS: &str =
    r#"^(\S+) (\S+) (\S+) \[([^\]]+)\] "([^"]*)" (\d{3}) (\d+|-) "([^"]*)" "([^"]*)"$"#;

/// One access log line in the Combined Log Format.
#[derive(Debug)]
pub struct ClfLine {
    pub remote_addr: String,
    pub time: String,
    pub request: String,
    pub status: u16,
    /// `None` for `-`.
    pub bytes: Option<u64>,
    pub referer: String,
    pub user_agent: String,
}

/// Parses `line` (no newline) as the Combined Log Format, or says why not.
pub fn parse_clf(line: &str) -> Result<ClfLine, String> {
    static RES: OnceLock<(Regex, Regex)> = OnceLock::new();
    let (plain, fields) =
        RES.get_or_init(|| (Regex::new(CLF).unwrap(), Regex::new(CLF_FIELDS).unwrap()));
    if !plain.is_match(line) {
        return Err(format!("not Combined Log Format: {line:?}"));
    }
    let c = fields
        .captures(line)
        .ok_or_else(|| format!("the field regex disagrees: {line:?}"))?;
    if c[2] != *"-" || c[3] != *"-" {
        return Err(format!("remote_user/ident are not '-': {line:?}"));
    }
    Ok(ClfLine {
        remote_addr: c[1].to_string(),
        time: c[4].to_string(),
        request: c[5].to_string(),
        status: c[6].parse().unwrap(),
        bytes: c[7].parse().ok(),
        referer: c[8].to_string(),
        user_agent: c[9].to_string(),
    })
}

pub fn read_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits (at most `limit`) for a line containing `needle`; returns it and how long it took.
fn wait_line(log: &Path, needle: &str, limit: Duration) -> (String, Duration) {
    let t0 = Instant::now();
    let line = poll_until(limit, &format!("a log line with {needle}"), || {
        read_lines(log).into_iter().find(|l| l.contains(needle))
    });
    (line, t0.elapsed())
}

fn docroot() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    harness::write_file(d.path(), "eighteen.txt", b"eighteen bytes ok\n");
    harness::write_file(d.path(), "big.bin", &harness::pattern(300_000, 7));
    d
}

fn start(root: &Path, log: &Path, format: Option<&str>) -> Instance {
    let mut b = Instance::builder()
        .root(root)
        .proxy_arg("--access-log")
        .proxy_arg(log.to_str().unwrap());
    if let Some(f) = format {
        b = b.proxy_arg("--access-log-format").proxy_arg(f);
    }
    b.start()
}

#[test]
fn accesslog_parser_matches_clf_only() {
    let good =
        "127.0.0.1 - - [22/Nov/2026:08:01:42 +0000] \"GET /a HTTP/1.1\" 200 18 \"-\" \"curl/8.5\"";
    let p = parse_clf(good).unwrap();
    assert_eq!(
        (p.status, p.bytes, p.request.as_str()),
        (200, Some(18), "GET /a HTTP/1.1")
    );
    for bad in [
        // shmproxy's former line: extra fields after the user agent.
        "127.0.0.1 - - [22/Nov/2026:08:01:42 +0000] \"GET /a HTTP/1.1\" 200 18 \"-\" \"ua\" HIT - 42 -",
        &good[..good.len() - 1],
        &format!(" {good}"),
        &format!("{good}\r"),
        "127.0.0.1 - - [22/Nov/2026:08:01:42 +0000] \"GET /a HTTP/1.1\" 200 18 \"-\" \"u\"a\"",
        "127.0.0.1 - - [22/Nov/2026:08:01:42 +0000] \"GET /a HTTP/1.1\" 20 18 \"-\" \"ua\"",
        "127.0.0.1 - - 22/Nov/2026:08:01:42 +0000 \"GET /a HTTP/1.1\" 200 18 \"-\" \"ua\"",
    ] {
        assert!(parse_clf(bad).is_err(), "{bad}");
    }
}

/// The default line is Combined Log Format, bytes = body length (not head + body); a lone
/// line is on disk within 300 ms of its answer.
#[test]
fn accesslog_default_is_combined_with_body_bytes_and_prompt() {
    with_deadline(DEADLINE, || {
        let root = docroot();
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("access.log");
        let inst = start(root.path(), &log, None);
        let addr = inst.addr();
        let mut c = client::Conn::connect(addr);
        // (target, method, body length the client got)
        let mut want: Vec<(String, &str, usize)> = Vec::new();
        let ua = "e2e \"quoted\" \\ \u{e9}";
        for (i, (method, target)) in [
            ("GET", "/eighteen.txt"),
            ("GET", "/eighteen.txt"),
            ("HEAD", "/eighteen.txt"),
            ("GET", "/missing.txt"),
            ("GET", "/big.bin"),
            ("GET", "/__shmproxy/stats"),
        ]
        .into_iter()
        .enumerate()
        {
            let target = format!("{target}?n={i}");
            let r = c.request(
                method,
                &target,
                &[("User-Agent", ua), ("Referer", "http://ref.test/p?q=\"x\"")],
                b"",
            );
            assert!(r.status == 200 || r.status == 404, "{}", r.describe());
            if method == "GET" && target.starts_with("/eighteen") {
                assert_eq!(r.body.len(), 18);
            }
            // The timing bound: one line, nothing else happening, counted from the answer.
            let (_, took) = wait_line(&log, &format!("?n={i} "), Duration::from_millis(300));
            assert!(took <= Duration::from_millis(300), "line after {took:?}");
            want.push((target, method, r.body.len()));
        }
        // The harness's own requests (readiness, stats) are in the log too.
        let lines: Vec<String> = read_lines(&log)
            .into_iter()
            .filter(|l| l.contains("?n="))
            .collect();
        assert_eq!(lines.len(), want.len(), "{lines:#?}");
        for (l, (target, method, body_len)) in lines.iter().zip(&want) {
            let p = parse_clf(l).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(p.request, format!("{method} {target} HTTP/1.1"), "{l}");
            assert_eq!(p.bytes, Some(*body_len as u64), "bytes = body length: {l}");
            assert_eq!(p.remote_addr, "127.0.0.1");
            assert_eq!(p.user_agent, "e2e \\x22quoted\\x22 \\x5C \\xC3\\xA9", "{l}");
            assert_eq!(p.referer, "http://ref.test/p?q=\\x22x\\x22", "{l}");
            assert!(p.time.ends_with(" +0000") && p.time.len() == 26, "{l}");
        }
        assert_eq!(
            parse_clf(&lines[0]).unwrap().bytes,
            Some(18),
            "18-byte body"
        );
        assert_eq!(
            parse_clf(&lines[2]).unwrap().bytes,
            Some(0),
            "HEAD: no body"
        );
        let s = inst.stats();
        assert_eq!(s["proxy"]["access_log_rotations"].as_u64(), Some(0));
        assert_eq!(s["proxy"]["access_log_dropped"].as_u64(), Some(0));
    });
}

/// Lines come out in the order the answers completed: each client's requests, sent one after
/// the other, appear in order (a client's connection stays on one worker).
#[test]
fn accesslog_lines_in_completion_order() {
    with_deadline(DEADLINE, || {
        let root = docroot();
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("access.log");
        let inst = start(root.path(), &log, None);
        const CLIENTS: usize = 8;
        const PER_CLIENT: usize = 40;
        let addr = inst.addr();
        thread::scope(|sc| {
            for c in 0..CLIENTS {
                sc.spawn(move || {
                    let mut conn = client::Conn::connect(addr);
                    for i in 0..PER_CLIENT {
                        let target = if i % 5 == 4 {
                            "big.bin"
                        } else {
                            "eighteen.txt"
                        };
                        let r = conn.get(&format!("/{target}?c={c}&i={i}"));
                        assert_eq!(r.status, 200, "{}", r.describe());
                    }
                });
            }
        });
        let lines = poll_until(Duration::from_secs(5), "every line", || {
            let l: Vec<String> = read_lines(&log)
                .into_iter()
                .filter(|l| l.contains("?c="))
                .collect();
            (l.len() >= CLIENTS * PER_CLIENT).then_some(l)
        });
        assert_eq!(lines.len(), CLIENTS * PER_CLIENT);
        let mut next = [0usize; CLIENTS];
        for l in &lines {
            let p = parse_clf(l).unwrap_or_else(|e| panic!("{e}"));
            let q = p
                .request
                .split('?')
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            let (c, i) = q.split_once('&').unwrap();
            let c: usize = c.trim_start_matches("c=").parse().unwrap();
            let i: usize = i.trim_start_matches("i=").parse().unwrap();
            assert_eq!(i, next[c], "client {c}'s lines out of order at {l}");
            next[c] += 1;
            let want = if i % 5 == 4 { 300_000 } else { 18 };
            assert_eq!(p.bytes, Some(want), "{l}");
        }
    });
}

/// `json`: every line is one JSON object with the documented members and types.
#[test]
fn accesslog_json_lines_parse() {
    with_deadline(DEADLINE, || {
        let root = docroot();
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("access.log");
        let inst = start(root.path(), &log, Some("json"));
        let mut c = inst.conn();
        let ua = "json \"ua\" \\ \u{e9}";
        let r = c.request("GET", "/eighteen.txt?j=1", &[("User-Agent", ua)], b"");
        assert_eq!(r.status, 200);
        let r = c.request("GET", "/missing?j=2", &[("User-Agent", ua)], b"");
        assert_eq!(r.status, 404);
        let missing_len = r.body.len() as u64;
        let (_, took) = wait_line(&log, "j=2", Duration::from_millis(300));
        assert!(took <= Duration::from_millis(300), "line after {took:?}");
        let lines: Vec<String> = read_lines(&log)
            .into_iter()
            .filter(|l| l.contains("?j="))
            .collect();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        for l in read_lines(&log) {
            let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert!(v.is_object(), "{l}");
        }
        let v: Vec<Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        for (v, (uri, status, body)) in v.iter().zip([
            ("/eighteen.txt?j=1", 200, 18),
            ("/missing?j=2", 404, missing_len),
        ]) {
            assert!(v.is_object(), "{v}");
            assert_eq!(v["request_uri"], uri, "{v}");
            assert_eq!(v["request_method"], "GET", "{v}");
            assert_eq!(v["request"], format!("GET {uri} HTTP/1.1"), "{v}");
            assert_eq!(v["status"], status, "{v}");
            assert_eq!(v["body_bytes_sent"], body, "{v}");
            assert!(v["bytes_sent"].as_u64().unwrap() > body, "{v}");
            assert_eq!(v["http_user_agent"], ua, "escaped and read back: {v}");
            assert_eq!(v["http_referer"], Value::Null, "{v}");
            assert_eq!(v["remote_user"], Value::Null, "{v}");
            assert_eq!(v["remote_addr"], "127.0.0.1", "{v}");
            assert_eq!(v["upstream_status"], Value::Null, "disk mode: {v}");
            assert_eq!(v["site"], Value::Null, "disk mode: {v}");
            assert!(v["request_time"].as_f64().is_some_and(|t| t >= 0.0), "{v}");
            assert!(v["cache"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
            let t = v["time_iso8601"].as_str().unwrap();
            assert!(t.len() == 25 && t.ends_with("+00:00"), "{v}");
        }
    });
}

/// A field list writes the variables it names, with its own text between them.
#[test]
fn accesslog_field_list() {
    with_deadline(DEADLINE, || {
        let root = docroot();
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("access.log");
        let inst = start(
            root.path(),
            &log,
            Some("$remote_addr $status $body_bytes_sent $cache $upstream_status $request_time $site <$request_uri>"),
        );
        let mut c = inst.conn();
        assert_eq!(c.get("/eighteen.txt?f=1").status, 200);
        assert_eq!(c.get("/eighteen.txt?f=2").status, 200);
        let (line, _) = wait_line(&log, "f=2", Duration::from_secs(2));
        let re = Regex::new(
            r"^127\.0\.0\.1 200 18 (HIT|MISS|PASS|COLLAPSED) - \d+\.\d{6} - </eighteen\.txt\?f=2>$",
        )
        .unwrap();
        assert!(re.is_match(&line), "{line}");
        assert_eq!(
            read_lines(&log)
                .iter()
                .filter(|l| l.contains("?f="))
                .count(),
            2
        );
    });
}

/// `proxy --check` reads the format: a field list with an unknown variable is an error that
/// names the file, line, column and key (exit 2); `cached --check` accepts the key too.
#[test]
fn accesslog_check_validates_the_format() {
    let dir = tempfile::tempdir().unwrap();
    let run = |bin: &str, body: &str| {
        let file = dir.path().join("f.toml");
        std::fs::write(
            &file,
            format!(
                "instance = \"t{}-alcheck\"\n[proxy]\n{body}\n[cached]\nroot = \"{}\"\n",
                std::process::id(),
                dir.path().display()
            ),
        )
        .unwrap();
        std::process::Command::new(harness::bin_path(bin))
            .args(["--check", "--config", file.to_str().unwrap()])
            .env(harness::CONFIG_ENV, "")
            .output()
            .unwrap()
    };
    let out = run("proxy", "access_log_format = \"$status $nope\"");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("f.toml:3:21: proxy.access_log_format: unknown variable $nope"),
        "{err}"
    );
    for bin in ["proxy", "cached"] {
        for ok in [
            "access_log_format = \"json\"",
            "access_log_format = \"$remote_addr $status $body_bytes_sent $cache $upstream_status $request_time $site\"",
        ] {
            let out = run(bin, ok);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{bin} {ok}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
