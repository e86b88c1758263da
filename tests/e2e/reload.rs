//! Operations on a live pair (issue 4): SIGHUP reloads replace the workers without failing
//! a request, and a new `proxy --upgrade` takes the listening socket over from the running
//! master with no refused connection.

use shmproxy_tests::client::{self, Conn, Expect};
use shmproxy_tests::harness::{
    bin_path, descendants, free_port, pid_alive, poll_until, send_signal, wait_pids_gone,
    wait_timeout, with_deadline, write_file, Instance, CONFIG_ENV,
};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

/// Load: `clients` threads, half on fresh connections, half on keep-alive ones (which
/// reconnect when an answer says `Connection: close`), until `stop`. Returns (ok, failed).
/// `ok` counts the good answers as they come (for waiting on progress).
fn load(
    addr: std::net::SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
) -> thread::JoinHandle<(u64, Vec<String>)> {
    thread::spawn(move || {
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                let (stop, ok) = (stop.clone(), ok.clone());
                thread::spawn(move || {
                    let mut failures = Vec::new();
                    let mut conn: Option<Conn> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let keep_alive = i % 2 == 0;
                        let result = if keep_alive {
                            let c = conn.get_or_insert_with(|| Conn::connect(addr));
                            c.try_send(&client::request_bytes("GET", "/page.txt", &[], b""))
                                .and_then(|()| c.read_response(Expect::Body))
                        } else {
                            Conn::try_connect(addr).and_then(|mut c| {
                                c.try_send(&client::request_bytes(
                                    "GET",
                                    "/page.txt",
                                    &[("Connection", "close")],
                                    b"",
                                ))?;
                                c.read_response(Expect::Body)
                            })
                        };
                        match result {
                            Ok(r) if r.status == 200 && r.body == b"steady" => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                if r.connection_has("close") {
                                    conn = None;
                                }
                            }
                            Ok(r) => failures.push(format!("status {}: {}", r.status, r.text())),
                            Err(e) => {
                                failures.push(format!("{e}"));
                                conn = None;
                            }
                        }
                    }
                    failures
                })
            })
            .collect();
        let failures: Vec<String> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        (ok.load(Ordering::Relaxed), failures)
    })
}

#[test]
fn twenty_reloads_under_load_fail_no_request() {
    with_deadline(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), "page.txt", b"steady");
        let inst = Instance::builder().root(dir.path()).workers(2).start();
        let master = inst.proxy_pid().unwrap();
        let before = descendants(master);
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let running = load(inst.addr(), 8, stop.clone(), served.clone());
        let reloads = || inst.stats()["proxy"]["reloads"].as_u64().unwrap();
        for n in 0..20 {
            // Requests between two reloads (the subject: reloads under load), then the reload.
            wait_served(&served, 8, &format!("requests before reload {n}"));
            let before = reloads();
            assert!(send_signal(master, libc::SIGHUP));
            poll_until(RELOAD_DONE, &format!("reload {n} counted"), || {
                (reloads() > before).then_some(())
            });
        }
        wait_served(&served, 16, "requests after the last reload");
        stop_load(&stop, running, "reloads");
        assert!(pid_alive(master), "the master survives reloads");
        let reloads = inst.stats()["proxy"]["reloads"].as_u64().unwrap();
        assert!(reloads >= 10, "reload counter {reloads}");
        // Every original worker was replaced (and the retired ones are gone).
        let left = wait_pids_gone(&before, Duration::from_secs(10));
        assert!(left.is_empty(), "retired workers {left:?} still running");
        // The last retired workers finish draining too (within their 4 s drain): two remain.
        poll_until(Duration::from_secs(10), "two workers left", || {
            (descendants(master).len() == 2).then_some(())
        });
        inst.assert_pool_idle();
    });
}

#[test]
fn a_new_binary_takes_the_listener_over_without_refusing_a_connection() {
    with_deadline(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), "page.txt", b"steady");
        let mut inst = Instance::builder().root(dir.path()).workers(2).start();
        let old_master = inst.proxy_pid().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let running = load(inst.addr(), 8, stop.clone(), served.clone());
        wait_served(&served, 16, "requests to the old master");
        let listen = inst.addr().to_string();
        let mut new = upgrade(
            &inst,
            &["--listen", &listen, "--workers", "2"],
            &[("SHMPROXY_LOG", "debug")],
        );
        wait_handover(&mut inst);
        wait_served(&served, 16, "requests to the new master alone");
        stop_load(&stop, running, "the upgrade");
        assert!(!pid_alive(old_master));
        let r = client::get(inst.addr(), "/page.txt");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"steady"[..]));
        assert!(
            descendants(new.0.id() as i32).len() == 2,
            "the new master runs its workers"
        );
        inst.assert_pool_idle();
        // Stop the new master ourselves: the harness only knows the old one.
        assert!(send_signal(new.0.id() as i32, libc::SIGTERM));
        let st = new.0.wait().unwrap();
        assert!(st.success(), "new master: {st:?}");
    });
}

#[test]
fn every_listen_address_is_served_and_all_are_handed_over() {
    with_deadline(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), "page.txt", b"both");
        // The harness gives `--listen 127.0.0.1:PORT`; a second --listen adds an address.
        let second: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut inst = Instance::builder()
            .root(dir.path())
            .proxy_arg("--listen")
            .proxy_arg(&format!("localhost:{}", second.port()))
            .start();
        for addr in [inst.addr(), second] {
            let r = client::get(addr, "/page.txt");
            assert_eq!((r.status, r.body.as_slice()), (200, &b"both"[..]), "{addr}");
        }
        let mut new = upgrade(&inst, &["--workers", "1"], &[]);
        wait_handover(&mut inst);
        for addr in [inst.addr(), second] {
            let r = client::get(addr, "/page.txt");
            assert_eq!((r.status, r.body.as_slice()), (200, &b"both"[..]), "{addr}");
        }
        assert!(send_signal(new.0.id() as i32, libc::SIGTERM));
        let st = new.0.wait().unwrap();
        assert!(st.success(), "new master: {st:?}");
    });
}

/// How long one SIGHUP may take to show in the reload counter.
const RELOAD_DONE: Duration = Duration::from_secs(10);

/// Starts `proxy --upgrade` for `inst`'s instance and pool with `args` and `env` (its
/// stderr in the instance's directory). The returned guard stops it even when an assertion
/// fails (the harness only knows the old master); it drops before `inst`, whose teardown
/// checks for leftovers.
fn upgrade(inst: &Instance, args: &[&str], env: &[(&str, &str)]) -> Stop {
    let new = Command::new(bin_path("proxy"))
        .env(CONFIG_ENV, "")
        .envs(env.iter().copied())
        .args(["--instance", &inst.name, "--upgrade"])
        .args([
            "--segments",
            &inst.segments().to_string(),
            "--segment-size",
            &inst.segment_size().to_string(),
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(inst.dir().join("upgraded-proxy.stderr")).unwrap())
        .spawn()
        .unwrap();
    Stop(new)
}

/// The old master hands over, drains and exits 0.
fn wait_handover(inst: &mut Instance) {
    let status = inst
        .wait_proxy_exit(Duration::from_secs(10))
        .expect("old master exits after the handover");
    assert!(status.success(), "old master: {status:?}");
}

/// Stops the load and asserts that no request failed `during` and more than 20 succeeded.
fn stop_load(stop: &AtomicBool, running: thread::JoinHandle<(u64, Vec<String>)>, during: &str) {
    stop.store(true, Ordering::Relaxed);
    let (ok, failures) = running.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests during {during}, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 20, "only {ok} requests completed");
}

/// Waits until `n` more good answers than now have come in.
fn wait_served(served: &AtomicU64, n: u64, what: &str) {
    let from = served.load(Ordering::Relaxed);
    poll_until(Duration::from_secs(10), what, || {
        (served.load(Ordering::Relaxed) >= from + n).then_some(())
    });
}

/// Stops a process this test started: SIGTERM, up to 5 s, then SIGKILL.
struct Stop(std::process::Child);

impl Drop for Stop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            send_signal(self.0.id() as i32, libc::SIGTERM);
            let _ = wait_timeout(&mut self.0, Duration::from_secs(5));
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
