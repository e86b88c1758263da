//! Starting, probing and stopping one `cached` + `proxy` pair, and checking what they leave.
//!
//! Processes are identified only by the pids spawned here (the proxy master; its workers are
//! read from `/proc/<master>/task/<master>/children`). Each child gets `PR_SET_PDEATHSIG`, so a
//! killed stress run does not leave daemons behind. Logs go to one file per daemon.

use crate::http::Client;
use std::fs::{self, File};
use std::io;
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
        cmd.arg("--instance").arg(&self.instance);
        cmd.arg("--root").arg(self.root);
        spawn(cmd, self.log_dir, log)
    }

    fn spawn_proxy(&self, addr: SocketAddr, log: &Path) -> Result<Child, String> {
        let mut cmd = Command::new(self.bin_dir.join("proxy"));
        cmd.arg("--instance").arg(&self.instance);
        cmd.arg("--listen").arg(addr.to_string());
        cmd.arg("--workers").arg(self.workers.to_string());
        cmd.arg("--segments").arg(self.segments.to_string());
        cmd.arg("--segment-size").arg(self.segment_size.to_string());
        spawn(cmd, self.log_dir, log)
    }
}

/// Spawns `cmd` in `cwd` (so no stray `shmproxy.toml` is picked up) with output to `log`.
fn spawn(mut cmd: Command, cwd: &Path, log: &Path) -> Result<Child, String> {
    let out = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
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

/// Whether the proxy's log says its port was taken (then another port is tried).
fn port_taken(log: &Path) -> bool {
    fs::read_to_string(log).is_ok_and(|t| t.contains("in use"))
}

/// A port that was free a moment ago.
fn free_port() -> io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

impl Daemons {
    /// Polls until the proxy answers its stats and a file comes through (not 503).
    fn wait_ready(&mut self, probe: &str) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut client = Client::new(self.addr, Duration::from_secs(2));
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            self.check_alive()?;
            match ready_step(&mut client, probe) {
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
fn ready_step(client: &mut Client, probe: &str) -> Result<bool, String> {
    let (status, _) = client
        .get_body("/__shmproxy/stats")
        .map_err(|e| format!("stats: {e}"))?;
    if status != 200 {
        return Err(format!("stats answered {status}"));
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
    let prefix = format!("{instance}.");
    let names: Vec<String> = fs::read_dir("/dev/shm")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
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
