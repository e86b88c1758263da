//! Starting, probing and stopping one `cached` + `proxy` pair, and checking what they leave.
//!
//! Processes are identified only by the pids spawned here (the proxy master; its workers are
//! read from `/proc/<master>/task/<master>/children`). Each child gets `PR_SET_PDEATHSIG`, so a
//! killed stress run does not leave daemons behind. Logs go to one file per daemon; a daemon
//! restarted by the chaos mode appends to its predecessor's file after a marker line.

use shmproxy_tests::client::Client;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long start-up may take (debug builds on a busy 2-core machine are slow).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Poll interval for readiness and exits.
const POLL: Duration = Duration::from_millis(20);
/// How long each daemon may take to exit after SIGTERM (contract).
const EXIT_BOUND: Duration = Duration::from_secs(5);
/// Ports that turned out to be taken are retried this many times.
const START_ATTEMPTS: usize = 3;
/// A restarted proxy whose port is still taken is retried this many times (100 ms apart).
const RESTART_ATTEMPTS: usize = 50;

/// What to start.
pub struct Setup<'a> {
    pub bin_dir: &'a Path,
    pub instance: String,
    pub root: &'a Path,
    pub log_dir: &'a Path,
    pub workers: u32,
    pub segments: u64,
    pub segment_size: u64,
    /// An existing file, fetched to decide that `cached` is ready.
    pub probe: &'a str,
}

/// A running pair.
pub struct Daemons {
    pub instance: String,
    pub addr: SocketAddr,
    pub logs: Vec<PathBuf>,
    proxy: Child,
    cached: Child,
}

/// The pool figures of `GET /__shmproxy/stats`.
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolStats {
    pub segments: u64,
    pub free: u64,
    pub in_use: u64,
    pub quarantined: u64,
}

impl Setup<'_> {
    /// Starts `cached` then `proxy` and waits until both are ready.
    pub fn start(&self) -> Result<Daemons, String> {
        let cached_log = self.log_dir.join(format!("{}.cached.log", self.instance));
        let mut cached = self.spawn_cached(&cached_log)?;
        let mut last_err = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let proxy_log = self
                .log_dir
                .join(format!("{}.proxy.{attempt}.log", self.instance));
            let addr = free_port().map_err(|e| format!("no free port: {e}"))?;
            let proxy = self.spawn_proxy(addr, &proxy_log)?;
            let mut d = Daemons {
                instance: self.instance.clone(),
                addr,
                logs: vec![cached_log.clone(), proxy_log],
                proxy,
                cached,
            };
            match d.wait_ready(self.probe) {
                Ok(()) => return Ok(d),
                Err(e)
                    if attempt < START_ATTEMPTS && d.proxy_exited() && port_taken(&d.logs[1]) =>
                {
                    last_err = e; // most likely the port was taken meanwhile: retry
                    let _ = d.proxy.wait();
                    cached = d.cached;
                }
                Err(e) => {
                    let _ = d.stop();
                    return Err(e);
                }
            }
        }
        Err(last_err)
    }

    fn spawn_cached(&self, log: &Path) -> Result<Child, String> {
        let mut cmd = Command::new(self.bin_dir.join("cached"));
        cmd.env("SHMPROXY_CONFIG", ""); // never /etc/shmproxy/shmproxy.toml
        cmd.arg("--instance").arg(&self.instance);
        cmd.arg("--root").arg(self.root);
        spawn(cmd, self.log_dir, log)
    }

    fn spawn_proxy(&self, addr: SocketAddr, log: &Path) -> Result<Child, String> {
        let mut cmd = Command::new(self.bin_dir.join("proxy"));
        cmd.env("SHMPROXY_CONFIG", ""); // never /etc/shmproxy/shmproxy.toml
        cmd.arg("--instance").arg(&self.instance);
        cmd.arg("--listen").arg(addr.to_string());
        cmd.arg("--workers").arg(self.workers.to_string());
        cmd.arg("--segments").arg(self.segments.to_string());
        cmd.arg("--segment-size").arg(self.segment_size.to_string());
        spawn(cmd, self.log_dir, log)
    }
}

/// Spawns `cmd` in `cwd` (so no stray `shmproxy.toml` is picked up) with output appended to
/// `log`.
fn spawn(mut cmd: Command, cwd: &Path, log: &Path) -> Result<Child, String> {
    let out = open_log(log)?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    cmd.current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: the closure runs in the forked child before exec and only calls `prctl`, which is
    // async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))
}

fn open_log(log: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))
}

/// Whether the proxy's log says its port was taken (then another port is tried).
fn port_taken(log: &Path) -> bool {
    port_taken_since(log, 0)
}

/// Whether the part of `log` after byte `offset` says the port was taken.
fn port_taken_since(log: &Path, offset: u64) -> bool {
    fs::read(log).is_ok_and(|t| {
        let tail = t.get(offset as usize..).unwrap_or_default();
        String::from_utf8_lossy(tail).contains("in use")
    })
}

/// The current length of `log` (0 if it does not exist).
fn log_len(log: &Path) -> u64 {
    fs::metadata(log).map_or(0, |m| m.len())
}

/// Appends a marker line to `log` (before a restarted daemon writes to it).
fn mark_log(log: &Path, what: &str) {
    if let Ok(mut f) = open_log(log) {
        let _ = writeln!(f, "----- stress: {what} -----");
    }
}

/// A port that was free a moment ago.
fn free_port() -> io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

impl Daemons {
    /// Polls until the proxy answers its stats and a file comes through (not 503).
    pub fn wait_ready(&mut self, probe: &str) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut client = Client::new(self.addr, Duration::from_secs(2));
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            self.check_alive()?;
            match ready_step(&mut client, &self.instance, probe) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last = e,
            }
            thread::sleep(POLL);
        }
        Err(format!(
            "daemons not ready within {READY_TIMEOUT:?} (last: {last})"
        ))
    }

    fn proxy_exited(&mut self) -> bool {
        matches!(self.proxy.try_wait(), Ok(Some(_)))
    }

    /// Fails if either daemon has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        for (name, child) in [("proxy", &mut self.proxy), ("cached", &mut self.cached)] {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("{name} exited early: {}", describe(status)));
            }
        }
        Ok(())
    }

    /// Which daemons have exited (e.g. crashed on their own), with how.
    pub fn exited(&mut self) -> Vec<(&'static str, String)> {
        let mut gone = Vec::new();
        for (name, child) in [("proxy", &mut self.proxy), ("cached", &mut self.cached)] {
            if let Ok(Some(status)) = child.try_wait() {
                gone.push((name, describe(status)));
            }
        }
        gone
    }

    /// The pid of the running proxy master.
    pub fn master_pid(&self) -> u32 {
        self.proxy.id()
    }

    /// The proxy master's live worker processes.
    pub fn workers(&self) -> Vec<u32> {
        let mut w: Vec<u32> = children_of(self.proxy.id())
            .into_iter()
            .filter(|&p| is_running(p))
            .collect();
        w.sort_unstable();
        w
    }

    /// `kill -9` of the proxy master, reaped; returns the workers it had just before.
    pub fn kill_master(&mut self) -> Result<Vec<u32>, String> {
        let workers = self.workers();
        kill_and_reap("proxy", &mut self.proxy)?;
        Ok(workers)
    }

    /// `kill -9` of `cached`, reaped.
    pub fn kill_cached(&mut self) -> Result<(), String> {
        kill_and_reap("cached", &mut self.cached)
    }

    /// Starts a new `cached` of the same instance (its log appended to the old one's). The
    /// old one must have been reaped.
    pub fn restart_cached(&mut self, setup: &Setup, why: &str) -> Result<(), String> {
        let log = self.logs[0].clone();
        mark_log(&log, why);
        self.cached = setup.spawn_cached(&log)?;
        Ok(())
    }

    /// Starts a new proxy master of the same instance on the same port and waits until it
    /// serves `probe`; retries while its log says the port is still taken (a dying worker of
    /// the old master may hold it for a moment). The old master must have been reaped.
    pub fn restart_proxy(&mut self, setup: &Setup, why: &str, probe: &str) -> Result<(), String> {
        let log = self.logs[1].clone();
        let mut attempt = 1;
        loop {
            let offset = log_len(&log);
            mark_log(&log, &format!("{why} (attempt {attempt})"));
            self.proxy = setup.spawn_proxy(self.addr, &log)?;
            match self.wait_ready(probe) {
                Ok(()) => return Ok(()),
                Err(_)
                    if attempt < RESTART_ATTEMPTS
                        && self.proxy_exited()
                        && port_taken_since(&log, offset) =>
                {
                    let _ = self.proxy.wait();
                    attempt += 1;
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(format!("restarted proxy: {e}")),
            }
        }
    }

    /// Reads the pool figures once.
    pub fn pool_stats(&self) -> Result<PoolStats, String> {
        let mut client = Client::new(self.addr, Duration::from_secs(5));
        let (status, body) = client
            .get_body("/__shmproxy/stats")
            .map_err(|e| format!("GET /__shmproxy/stats: {e}"))?;
        if status != 200 {
            return Err(format!("GET /__shmproxy/stats answered {status}"));
        }
        parse_pool(&body)
    }

    /// Waits up to `settle` for every segment to be free; returns the last figures.
    pub fn settled_pool(&self, settle: Duration) -> Result<PoolStats, String> {
        let deadline = Instant::now() + settle;
        loop {
            let stats = self.pool_stats()?;
            if stats.free == stats.segments || Instant::now() >= deadline {
                return Ok(stats);
            }
            thread::sleep(POLL);
        }
    }

    /// SIGTERMs both daemons, waits for them (SIGKILL after the bound) and returns every problem
    /// seen: a slow or non-zero exit, a surviving worker, an IPC object left behind.
    pub fn stop(mut self) -> Vec<String> {
        let workers = children_of(self.proxy.id());
        let mut problems = Vec::new();
        for (name, child) in [("proxy", &mut self.proxy), ("cached", &mut self.cached)] {
            // Only a child not reaped yet may be signalled: a reaped pid may name another process.
            if let Ok(None) = child.try_wait() {
                signal(child.id(), libc::SIGTERM);
            }
            if let Err(e) = wait_exit(name, child) {
                problems.push(e);
            }
        }
        problems.extend(surviving(&workers));
        problems.extend(leaks(&self.instance));
        problems
    }
}

/// One readiness probe: `Ok(true)` when both daemons answer.
fn ready_step(client: &mut Client, instance: &str, probe: &str) -> Result<bool, String> {
    let (status, body) = client
        .get_body("/__shmproxy/stats")
        .map_err(|e| format!("stats: {e}"))?;
    if status != 200 {
        return Err(format!("stats answered {status}"));
    }
    // Another instance's proxy may have taken the port between `free_port` and our bind.
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("stats is not JSON: {e}"))?;
    if json["instance"].as_str() != Some(instance) {
        return Err(format!(
            "the port answers for instance {}",
            json["instance"]
        ));
    }
    let (status, _) = client
        .get_body(probe)
        .map_err(|e| format!("{probe}: {e}"))?;
    match status {
        200 => Ok(true),
        503 => Ok(false),
        s => Err(format!("{probe} answered {s}")),
    }
}

/// Extracts `pool.{segments,free,in_use,quarantined}` from the stats JSON.
fn parse_pool(body: &[u8]) -> Result<PoolStats, String> {
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("stats is not JSON: {e}"))?;
    let pool = &json["pool"];
    let field = |name: &str| {
        pool[name]
            .as_u64()
            .ok_or_else(|| format!("stats JSON has no numeric pool.{name}"))
    };
    Ok(PoolStats {
        segments: field("segments")?,
        free: field("free")?,
        in_use: pool["in_use"].as_u64().unwrap_or(0),
        quarantined: pool["quarantined"].as_u64().unwrap_or(0),
    })
}

/// `kill -9` of a child not reaped yet, then reaps it.
fn kill_and_reap(name: &str, child: &mut Child) -> Result<(), String> {
    match child.try_wait() {
        Ok(None) => {
            // A child not reaped yet: its pid cannot name another process.
            child.kill().map_err(|e| format!("kill -9 {name}: {e}"))?;
            child
                .wait()
                .map_err(|e| format!("reaping {name}: {e}"))
                .map(drop)
        }
        Ok(Some(status)) => Err(format!("{name} had already exited: {}", describe(status))),
        Err(e) => Err(format!("waiting for {name}: {e}")),
    }
}

/// `kill -9` of `pid` if it is still a running child of `parent`: the process is pinned with a
/// pidfd first and its parent checked through /proc, so a recycled pid is never signalled.
/// `Ok(false)` if it is no longer a running child of `parent`.
pub fn kill_child_of(parent: u32, pid: u32) -> Result<bool, String> {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return Ok(false);
    };
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(false),
            _ => Err(format!("pidfd_open({pid}): {e}")),
        };
    }
    let fd = fd as libc::c_int;
    // The pidfd names the process that had `pid` when it was opened; if that process is our
    // child, /proc/<pid> describes it as long as it has not been reaped, and once it has been,
    // the signal below fails with ESRCH instead of reaching a newcomer.
    let result = if parent_of(pid) == Some(parent) && is_running(pid) {
        // SAFETY: `fd` is the pidfd opened above; a null siginfo is allowed; no other memory.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r == 0 {
            Ok(true)
        } else {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ESRCH) => Ok(false),
                _ => Err(format!("pidfd_send_signal({pid}): {e}")),
            }
        }
    } else {
        Ok(false)
    };
    // SAFETY: `fd` is ours and closed exactly once.
    unsafe {
        libc::close(fd);
    }
    result
}

/// The parent pid of `pid` from /proc.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Waits up to `bound` for every pid of `pids` to be gone (or a zombie); returns those left.
pub fn wait_gone(pids: &[u32], bound: Duration) -> Vec<u32> {
    let deadline = Instant::now() + bound;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&p| is_running(p)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// The `/dev/shm` names that start with `<instance>.`.
pub fn shm_names(instance: &str) -> Vec<String> {
    let prefix = format!("{instance}.");
    let mut names: Vec<String> = fs::read_dir("/dev/shm")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Sends `sig` to `pid` (one of ours).
fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: `kill` has no memory-safety preconditions; `pid` is a child we spawned and have
    // not reaped yet, so it cannot name another process.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Waits for `child` to exit within the bound (SIGKILL after it); a slow or failed exit is an
/// error.
fn wait_exit(name: &str, child: &mut Child) -> Result<(), String> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{name} exited with {}", describe(status))),
            Ok(None) if start.elapsed() > EXIT_BOUND => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{name} did not exit within {EXIT_BOUND:?} of SIGTERM (killed)"
                ));
            }
            Ok(None) => thread::sleep(POLL),
            Err(e) => return Err(format!("waiting for {name}: {e}")),
        }
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => status.to_string(),
    }
}

/// Direct children of `pid` (the proxy's workers).
fn children_of(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Workers still alive (not gone, not a zombie) a bound after their master exited.
fn surviving(workers: &[u32]) -> Vec<String> {
    let deadline = Instant::now() + EXIT_BOUND;
    loop {
        let alive: Vec<u32> = workers.iter().copied().filter(|&p| is_running(p)).collect();
        if alive.is_empty() {
            return Vec::new();
        }
        if Instant::now() >= deadline {
            return vec![format!(
                "proxy workers still running after the master exited: {alive:?}"
            )];
        }
        thread::sleep(POLL);
    }
}

fn is_running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// IPC objects of `instance` that still exist — `/dev/shm/<instance>.*` and the queue — each
/// reported, then removed (they are this run's own).
pub fn leaks(instance: &str) -> Vec<String> {
    let names = shm_names(instance);
    let mut found = Vec::new();
    for name in names {
        found.push(format!("leaked /dev/shm/{name}"));
        let _ = fs::remove_file(Path::new("/dev/shm").join(name));
    }
    let queue = format!("/{instance}.req");
    if remove_queue(&queue) {
        found.push(format!("leaked message queue {queue}"));
    }
    found
}

/// Unlinks the POSIX message queue `name`; whether it existed.
fn remove_queue(name: &str) -> bool {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::mq_unlink(cname.as_ptr()) == 0 }
}
