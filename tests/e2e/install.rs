//! Installing and checking (issue 14): `--version`, `--check` (validates, starts nothing),
//! how the configuration file is found without `--config`, and the systemd units of
//! `contrib/` (`systemd-analyze verify`, where it exists).

use shmproxy_tests::harness::{bin_path, shm_objects, CONFIG_ENV};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

/// Runs `bin ARGS` to completion with `SHMPROXY_CONFIG` set to `config_env` (never unset: an
/// unset one would read /etc/shmproxy/shmproxy.toml).
fn run(bin: &str, args: &[&str], config_env: &str) -> Output {
    Command::new(bin_path(bin))
        .args(args)
        .env(CONFIG_ENV, config_env)
        .output()
        .unwrap_or_else(|e| panic!("run {bin}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn issue_14_version_names_the_release_and_the_commit() {
    for bin in ["proxy", "cached"] {
        let out = run(bin, &["--version"], "");
        assert!(
            out.status.success(),
            "{bin} --version: {}",
            text(&out.stderr)
        );
        let line = text(&out.stdout);
        let want = format!("{bin} {} (git ", env!("CARGO_PKG_VERSION"));
        let commit = line
            .trim_end()
            .strip_prefix(&want)
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{bin} --version printed {line:?}"));
        assert!(
            commit == "unknown"
                || (commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
            "{bin} --version: commit {commit:?}"
        );
    }
}

#[test]
fn issue_14_check_validates_the_file_and_flags_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let instance = format!("t{}-check", std::process::id());
    let file = dir.path().join("site.toml");
    std::fs::write(
        &file,
        format!(
            "instance = \"{instance}\"\n[proxy]\nworkers = 1\n[cached]\nroot = \"{}\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    // The port is taken: --check must not try to bind it.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = busy.local_addr().unwrap().to_string();
    for (bin, args) in [
        ("proxy", vec!["--check", "--config", f, "--listen", &listen]),
        ("cached", vec!["--check", "--config", f]),
    ] {
        let out = run(bin, &args, "");
        assert!(
            out.status.success(),
            "{bin} {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert_eq!(
            text(&out.stdout),
            format!("configuration OK: {f}\n"),
            "{bin}"
        );
    }
    assert_eq!(
        shm_objects(&instance),
        Vec::<String>::new(),
        "--check created IPC objects"
    );
    assert!(
        !shmproxy_tests::harness::mq_exists(&instance),
        "--check created the queue"
    );

    let missing = dir.path().join("missing");
    let bad_root = format!("--root={}", missing.display());
    for (bin, args, want) in [
        (
            "proxy",
            vec!["--check", "--config", f, "--workers", "0"],
            "--workers",
        ),
        (
            "proxy",
            vec!["--check", "--config", "/nonexistent/shmproxy.toml"],
            "/nonexistent/shmproxy.toml",
        ),
        (
            "cached",
            vec!["--check", "--config", f, &bad_root],
            "document root",
        ),
    ] {
        let out = run(bin, &args, "");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{bin} {args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(want),
            "{bin} {args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            out.stdout.is_empty(),
            "{bin} {args:?} printed {}",
            text(&out.stdout)
        );
    }
}

#[test]
fn issue_14_without_config_the_variable_names_the_file_or_none() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("env.toml");
    std::fs::write(&file, "[proxy]\nworkers = 3\n").unwrap();
    let f = file.to_str().unwrap();
    let out = run("proxy", &["--check"], f);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("configuration OK: {f} (from {CONFIG_ENV})\n")
    );
    let out = run("proxy", &["--check"], "");
    assert_eq!(
        text(&out.stdout),
        format!("configuration OK: built-in defaults ({CONFIG_ENV} is empty)\n")
    );
    // A file named by the variable must exist, like one given with --config.
    let out = run("cached", &["--check"], "/nonexistent/shmproxy.toml");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
}

/// `systemd-analyze verify` on `contrib/systemd/*.service`, with `/usr/local/bin/` pointed at
/// the freshly built binaries (verify wants the commands to exist). Any warning fails.
#[test]
fn issue_14_systemd_units_verify() {
    let probe = Command::new("systemd-analyze").arg("--version").output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED issue_14_systemd_units_verify: systemd-analyze is not installed");
        return;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd");
    let bins = bin_path("proxy").parent().unwrap().to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        let name = e.file_name().into_string().unwrap();
        if !name.ends_with(".service") {
            continue;
        }
        let unit = std::fs::read_to_string(e.path()).unwrap();
        assert!(
            unit.contains("Type=notify") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
            "{name}"
        );
        let local = unit.replace("/usr/local/bin/", &format!("{}/", bins.display()));
        let p = dir.path().join(&name);
        std::fs::write(&p, local).unwrap();
        units.push(p);
    }
    assert_eq!(units.len(), 2, "contrib/systemd holds the two units");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Readiness as a `Type=notify` unit sees it: a datagram socket stands in for systemd's
/// `NOTIFY_SOCKET`. Each daemon sends READY=1 once it serves, RELOADING=1 then READY=1 on
/// SIGHUP, and STOPPING=1 on SIGTERM.
#[test]
fn issue_14_readiness_reaches_the_notify_socket() {
    use shmproxy_tests::harness::{with_deadline, write_file, Instance};
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};
    with_deadline(Duration::from_secs(60), || {
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), "a.txt", b"a");
        let sock_path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut got: Vec<String> = Vec::new();
        // Collects datagrams until one contains `want` (and `status`), at most 10 s.
        let wait_for = |want: &str, status: &str, got: &mut Vec<String>| {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut buf = [0u8; 4096];
            loop {
                if got.iter().any(|m| m.contains(want) && m.contains(status)) {
                    return;
                }
                assert!(Instant::now() < deadline, "no {want} ({status}) in {got:?}");
                if let Ok(n) = sock.recv(&mut buf) {
                    got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        };
        let mut inst = Instance::builder()
            .root(dir.path())
            .env("NOTIFY_SOCKET", sock_path.to_str().unwrap())
            .start();
        wait_for("READY=1", "STATUS=listening on", &mut got);
        wait_for("READY=1", "STATUS=instance", &mut got);
        got.clear();
        inst.signal_proxy(libc::SIGHUP);
        inst.signal_cached(libc::SIGHUP);
        wait_for("RELOADING=1", "MONOTONIC_USEC=", &mut got);
        wait_for("READY=1", "STATUS=reloaded", &mut got);
        wait_for("READY=1", "STATUS=instance", &mut got);
        assert_eq!(inst.get("/a.txt").status, 200);
        got.clear();
        inst.stop_proxy();
        inst.stop_cached();
        // Both have exited: their datagrams are queued; read them all.
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let stopping = got.iter().filter(|m| m.contains("STOPPING=1")).count();
        assert_eq!(stopping, 2, "{got:?}");
    });
}
