//! The daemon harness of the e2e tests and the stress tool: starts the real `proxy` and
//! `cached` binaries as one isolated instance.
//!
//! Owns: unique instance names (`t{pid}-{n}`, or the caller's), free ports, the child
//! processes (spawned from one long-lived thread with `PR_SET_PDEATHSIG`, so they die with the
//! test process), their stderr (one file per spawn in the instance's directory, printed when a
//! test fails), readiness polling that watches the children, bounded waits ([`poll`],
//! [`poll_until`]) and the per-test watchdog ([`with_deadline`]).
//!
//! Dropping an [`Instance`] stops both daemons with SIGTERM, by pid, and (unless the test is
//! already panicking) asserts the contract: both exit with status 0 within 5 s, the proxy's
//! worker processes are gone too, nothing named `/dev/shm/<name>.*` remains and the request
//! queue `/<name>.req` is unlinked. Leftovers are removed after being reported.
//! [`Instance::stop`] does the same and returns the breaches instead (the stress tool reports
//! them); the `try_` methods return errors where the e2e ones panic.
//!
//! It never kills anything by name, only the pids it spawned (and their descendants).

use crate::client::{self, Conn, Response};
use nix::errno::Errno;
use nix::mqueue::{mq_close, mq_open, mq_unlink, MQ_OFlag, MqdT};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// The daemons' variable naming their configuration file when there is no `--config`; the
/// harness sets it empty (built-in defaults, never /etc/shmproxy/shmproxy.toml).
pub const CONFIG_ENV: &str = "SHMPROXY_CONFIG";

/// How long a daemon may take to exit after SIGTERM/SIGINT (contract).
pub const EXIT_BOUND: Duration = Duration::from_secs(5);
/// How long start-up may take before the harness gives up (generous: debug builds on 2 busy
/// cores, tests in parallel, the stress tool's load running).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// A restarted proxy whose port is still held (by a dying worker of its predecessor) is
/// started again this many times, [`RESTART_PAUSE`] apart.
const RESTART_ATTEMPTS: usize = 50;
const RESTART_PAUSE: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------

/// `target/<profile>/<name>`, found from the test executable (`target/<profile>/deps/e2e-…`).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test exe has a parent");
    let dir = if deps.ends_with("deps") {
        deps.parent().expect("deps has a parent")
    } else {
        deps
    };
    let p = dir.join(name);
    if !p.is_file() {
        panic!(
            "{} not found: run `cargo build --workspace --bins` first",
            p.display()
        );
    }
    p
}

// ---------------------------------------------------------------------------------------------
// Spawning: one long-lived thread forks every daemon, so PR_SET_PDEATHSIG (which fires when the
// *thread* that forked exits) only fires when the whole test process goes away.
// ---------------------------------------------------------------------------------------------

type SpawnReq = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnReq>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnReq>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnReq>();
        thread::Builder::new()
            .name("e2e-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the spawner thread");
        Mutex::new(tx)
    })
}

fn spawn_child(mut cmd: Command) -> io::Result<Child> {
    // SAFETY: the closure runs in the forked child before exec and only calls `prctl` and
    // `getppid` (through nix's thin wrappers), both async-signal-safe; it touches no memory
    // shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            // SIGTERM, not SIGKILL: a daemon orphaned by a dying test process still gets the
            // chance to unlink its IPC objects.
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
            if nix::unistd::getppid().as_raw() == 1 {
                return Err(io::Error::other("test process already gone"));
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap()
        .send((cmd, tx))
        .expect("spawner thread alive");
    rx.recv().expect("spawner reply")
}

/// Spawns `cmd` as the daemons are spawned (dies with the test process) and puts it under the
/// current watchdog scope by `label`, for children a test runs itself (e.g. through `ip netns
/// exec`). The caller stops it; the watchdog kills it if the test hangs.
pub fn spawn_tracked(cmd: Command, label: &str) -> io::Result<Child> {
    let child = spawn_child(cmd)?;
    live().lock().unwrap().push((
        SCOPE.with(|s| s.get()),
        label.to_string(),
        child.id() as i32,
    ));
    Ok(child)
}

/// Removes what instance `name` left in /dev/shm and its request queue (after a SIGKILL).
pub fn remove_ipc(name: &str) {
    remove_ipc_leftovers(name);
}

// ---------------------------------------------------------------------------------------------
// Watchdog
// ---------------------------------------------------------------------------------------------

thread_local! {
    static SCOPE: Cell<u64> = const { Cell::new(0) };
}

/// Live daemons by watchdog scope: (scope, instance name, pid).
fn live() -> &'static Mutex<Vec<(u64, String, i32)>> {
    static LIVE: OnceLock<Mutex<Vec<(u64, String, i32)>>> = OnceLock::new();
    LIVE.get_or_init(|| Mutex::new(Vec::new()))
}

/// Runs `body` in its own thread and fails the test if it has not finished within `limit`.
/// On timeout, the daemons of every [`Instance`] built inside `body` are killed (with their
/// workers) and their IPC objects removed, so a hung test does not leak processes.
pub fn with_deadline<F: FnOnce() + Send + 'static>(limit: Duration, body: F) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let scope = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = thread::current()
        .name()
        .unwrap_or("e2e-body")
        .chars()
        .take(60)
        .collect::<String>();
    let (tx, rx) = mpsc::channel::<()>();
    let handle = thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            SCOPE.with(|s| s.set(scope));
            body();
            let _ = tx.send(());
        })
        .expect("spawn the test body");
    match rx.recv_timeout(limit) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let victims: Vec<(String, i32)> = live()
                .lock()
                .unwrap()
                .iter()
                .filter(|(s, _, _)| *s == scope)
                .map(|(_, n, p)| (n.clone(), *p))
                .collect();
            let mut names = Vec::new();
            for (n, pid) in &victims {
                kill_tree(*pid, libc::SIGKILL);
                names.push(n.clone());
            }
            thread::sleep(Duration::from_millis(100));
            names.sort();
            names.dedup();
            for n in &names {
                remove_ipc_leftovers(n);
            }
            panic!("watchdog: {name} did not finish within {limit:?}; killed daemons {victims:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Sends `sig` to `pid`. Returns false if the process does not exist.
pub fn send_signal(pid: i32, sig: i32) -> bool {
    let sig = Signal::try_from(sig).unwrap_or_else(|e| panic!("signal {sig}: {e}"));
    nix::sys::signal::kill(Pid::from_raw(pid), sig).is_ok()
}

/// Pids whose parent is `pid`, recursively (read from /proc).
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut parent_of: HashMap<i32, i32> = HashMap::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Some((ppid, _)) = proc_stat(p) {
                parent_of.insert(p, ppid);
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (&c, &pp) in &parent_of {
            if pp == p && !out.contains(&c) {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

/// (ppid, state) of a process, from /proc/PID/stat.
fn proc_stat(pid: i32) -> Option<(i32, char)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((ppid, state))
}

/// Whether `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    matches!(proc_stat(pid), Some((_, st)) if st != 'Z' && st != 'X')
}

/// Direct children of `pid` that are running (for the proxy master: its workers), sorted.
pub fn children(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&p| pid_alive(p))
        .collect();
    v.sort_unstable();
    v
}

/// `kill -9` of `pid` if it is still a running child of `parent`: the process is pinned with a
/// pidfd first and its parent checked through /proc, so a recycled pid is never signalled.
/// `Ok(false)` if it is no longer a running child of `parent`.
pub fn kill_child_of(parent: i32, pid: i32) -> Result<bool, String> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
    // (Neither std nor nix wraps pidfd_open.)
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(false),
            _ => Err(format!("pidfd_open({pid}): {e}")),
        };
    }
    // SAFETY: `fd` is the descriptor pidfd_open just returned; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // The pidfd names the process that had `pid` when it was opened; if that process is our
    // child, /proc/<pid> describes it as long as it has not been reaped, and once it has been,
    // the signal below fails with ESRCH instead of reaching a newcomer.
    if !(proc_stat(pid).is_some_and(|(ppid, _)| ppid == parent) && pid_alive(pid)) {
        return Ok(false);
    }
    // SAFETY: `fd` is the pidfd opened above; a null siginfo is allowed; no other memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ESRCH) => Ok(false),
        _ => Err(format!("pidfd_send_signal({pid}): {e}")),
    }
}

/// Sends `sig` to `pid` and all its descendants (children first collected, then signalled).
fn kill_tree(pid: i32, sig: i32) {
    let kids = descendants(pid);
    send_signal(pid, sig);
    for k in kids {
        send_signal(k, sig);
    }
}

/// Waits for `child` to exit, at most `limit`; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Describes an exit status ("exit 0", "signal 9").
pub fn describe_status(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => format!("{st:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// IPC objects
// ---------------------------------------------------------------------------------------------

/// Entries of /dev/shm that belong to instance `name` (`<name>.*`).
pub fn shm_objects(name: &str) -> Vec<String> {
    let prefix = format!("{name}.");
    let mut v: Vec<String> = fs::read_dir("/dev/shm")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The request queue's name of instance `name`.
pub fn mq_name(name: &str) -> String {
    format!("/{name}.req")
}

/// Opens instance `name`'s request queue read-only, without taking a message.
pub fn mq_open_existing(name: &str) -> nix::Result<MqdT> {
    mq_open(
        mq_name(name).as_str(),
        MQ_OFlag::O_RDONLY | MQ_OFlag::O_NONBLOCK,
        Mode::empty(),
        None,
    )
}

/// Whether the POSIX message queue `/<name>.req` exists (it cannot be listed: /dev/mqueue is
/// not mounted, so it is probed by name).
pub fn mq_exists(name: &str) -> bool {
    match mq_open_existing(name) {
        Ok(q) => {
            let _ = mq_close(q);
            true
        }
        Err(e) => e != Errno::ENOENT,
    }
}

/// Removes whatever IPC objects instance `name` left behind.
fn remove_ipc_leftovers(name: &str) {
    for f in shm_objects(name) {
        let _ = fs::remove_file(Path::new("/dev/shm").join(f));
    }
    let _ = mq_unlink(mq_name(name).as_str());
}

// ---------------------------------------------------------------------------------------------
// Misc helpers
// ---------------------------------------------------------------------------------------------

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A port on 127.0.0.1 held by a TCP socket that is bound but never listens, so connecting to
/// it is refused. Unlike a port that was free a moment ago, nobody else can bind it while this
/// lives: the socket lacks `SO_REUSEADDR`, which Linux requires of both sockets to share a port.
pub struct ClosedPort {
    /// Held only to keep the port bound; closed on drop.
    _fd: std::os::fd::OwnedFd,
    port: u16,
}

impl Default for ClosedPort {
    fn default() -> ClosedPort {
        ClosedPort::new()
    }
}

/// A TCP socket bound to `addr` that neither listens nor connects yet (e.g. to connect from
/// a chosen source address).
pub fn bound_socket(addr: std::net::SocketAddrV4) -> OwnedFd {
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    bind(fd.as_raw_fd(), &SockaddrIn::from(addr)).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    fd
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        use nix::sys::socket::{getsockname, SockaddrIn};
        let fd = bound_socket(std::net::SocketAddrV4::new([127, 0, 0, 1].into(), 0));
        let port = getsockname::<SockaddrIn>(fd.as_raw_fd())
            .expect("getsockname")
            .port();
        ClosedPort { _fd: fd, port }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Raises the soft RLIMIT_NOFILE of the test process to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit").0
}

/// Deterministic pseudo-random bytes (xorshift64*), different for each `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(0xD1B5_4A32_D192_ED03)
        | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Asserts `got == want`, reporting lengths, hashes and the first differing offset.
#[track_caller]
pub fn assert_same_body(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: body differs: got {} bytes (sha256 {}), want {} bytes (sha256 {}); first difference at offset {first}",
        got.len(),
        sha256_hex(got),
        want.len(),
        sha256_hex(want)
    );
}

/// Writes `bytes` to `root/rel`, creating parent directories.
pub fn write_file(root: &Path, rel: &str, bytes: &[u8]) -> PathBuf {
    let p = root.join(rel.trim_start_matches('/'));
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(&p, bytes).unwrap();
    p
}

/// Polls `cond` every 20 ms until it holds (`true`) or `limit` has passed (`false`), for a
/// wait whose failure the caller reports with its own assertion.
pub fn poll(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `limit` with `what`.
#[track_caller]
pub fn poll_until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let mut got = None;
    if poll(limit, || {
        got = f();
        got.is_some()
    }) {
        if let Some(v) = got {
            return v;
        }
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

// ---------------------------------------------------------------------------------------------
// Instance
// ---------------------------------------------------------------------------------------------

/// The segment pool as `/__shmproxy/stats` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub segments: u64,
    pub segment_size: u64,
    pub free: u64,
    pub in_use: u64,
    pub quarantined: u64,
}

/// Configuration of an [`Instance`]; `Instance::builder()` starts one.
#[derive(Debug, Clone)]
pub struct Builder {
    root: Option<PathBuf>,
    /// `cached --origin`, once per server.
    origins: Vec<String>,
    /// Text of a TOML file given to cached as `--config` (written into the instance's dir).
    config: Option<String>,
    segments: u32,
    segment_size: usize,
    workers: u32,
    /// `proxy --threads`; `None` leaves the daemon's default.
    threads: Option<u32>,
    /// `cached --threads`; `None` leaves the daemon's default.
    cached_threads: Option<u32>,
    proxy_extra: Vec<String>,
    cached_extra: Vec<String>,
    /// Environment variables set for both daemons.
    env: Vec<(String, String)>,
    /// The instance name instead of `t{pid}-{n}`.
    name: Option<String>,
    /// A directory of the caller's for the logs (kept) instead of a temporary one.
    dir: Option<PathBuf>,
    /// Where `proxy` and `cached` are instead of next to the running executable.
    bin_dir: Option<PathBuf>,
    /// Fetched through the proxy to tell that cached is ready, and the status that says so
    /// (`None`: anything but 503).
    probe: (String, Option<u16>),
    scope: u64,
}

impl Builder {
    /// Serve files from `dir`.
    pub fn root(mut self, dir: &Path) -> Builder {
        self.root = Some(dir.to_path_buf());
        self
    }

    /// Forward to `url` instead of serving a root.
    pub fn origin(mut self, url: &str) -> Builder {
        self.origins = vec![url.to_string()];
        self
    }

    /// Forward to several servers of the default site: `--origin` once per URL.
    pub fn origins(mut self, urls: &[String]) -> Builder {
        self.origins = urls.to_vec();
        self
    }

    /// Gives cached `--config FILE` with `text` (e.g. `[[site]]` tables, `[cached]` keys); with
    /// it, neither `.root()` nor `.origin()` is needed. The proxy does not get it.
    pub fn config_toml(mut self, text: &str) -> Builder {
        self.config = Some(text.to_string());
        self
    }

    pub fn segments(mut self, n: u32) -> Builder {
        self.segments = n;
        self
    }

    pub fn segment_size(mut self, n: usize) -> Builder {
        self.segment_size = n;
        self
    }

    pub fn workers(mut self, n: u32) -> Builder {
        self.workers = n;
        self
    }

    /// `proxy --threads`.
    pub fn threads(mut self, n: u32) -> Builder {
        self.threads = Some(n);
        self
    }

    /// `cached --threads`.
    pub fn cached_threads(mut self, n: u32) -> Builder {
        self.cached_threads = Some(n);
        self
    }

    /// No `--threads` for either daemon: their own defaults (the stress tool's load).
    pub fn default_threads(mut self) -> Builder {
        (self.threads, self.cached_threads) = (None, None);
        self
    }

    /// Names the instance `name` instead of `t{pid}-{n}` (it must be unique on the machine).
    pub fn name(mut self, name: &str) -> Builder {
        self.name = Some(name.to_string());
        self
    }

    /// Keeps the logs (and the daemons' cwd) in `dir`, created if missing and never removed,
    /// instead of a temporary directory.
    pub fn dir(mut self, dir: &Path) -> Builder {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Runs `proxy` and `cached` from `dir` instead of the running executable's directory.
    pub fn bin_dir(mut self, dir: &Path) -> Builder {
        self.bin_dir = Some(dir.to_path_buf());
        self
    }

    /// Tells that cached is ready when `GET target` through the proxy answers 200 (by default
    /// `/__e2e_ready` answered by anything but 503).
    pub fn probe(mut self, target: &str) -> Builder {
        self.probe = (target.to_string(), Some(200));
        self
    }

    pub fn proxy_arg(mut self, a: &str) -> Builder {
        self.proxy_extra.push(a.to_string());
        self
    }

    pub fn cached_arg(mut self, a: &str) -> Builder {
        self.cached_extra.push(a.to_string());
        self
    }

    /// Sets an environment variable for both daemons.
    pub fn env(mut self, name: &str, value: &str) -> Builder {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// An instance with nothing started yet.
    pub fn build(self) -> Instance {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = self.name.clone().unwrap_or_else(|| {
            format!(
                "t{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed) + 1
            )
        });
        let (path, dir) = match &self.dir {
            Some(d) => {
                fs::create_dir_all(d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix(&format!("shmproxy-e2e-{name}-"))
                    .tempdir()
                    .expect("tempdir");
                (t.path().to_path_buf(), Some(t))
            }
        };
        let port = free_port();
        Instance {
            name,
            port,
            path,
            dir,
            cfg: self,
            proxy: None,
            cached: None,
            spawns: 0,
            stopped: false,
        }
    }

    /// Starts cached, then the proxy, and waits until both are ready.
    pub fn start(self) -> Instance {
        let mut i = self.build();
        i.spawn_cached();
        i.start_proxy();
        i.wait_cached_ready();
        i
    }

    /// [`Builder::start`] that reports a failed start instead of panicking; what was started
    /// is stopped again (and its leftovers removed) before the error returns.
    pub fn try_start(self) -> Result<Instance, String> {
        let mut i = self.build();
        i.spawn_cached();
        match i.try_start_proxy().and_then(|()| i.try_wait_cached_ready()) {
            Ok(()) => Ok(i),
            Err(e) => {
                let problems = i.stop();
                Err(if problems.is_empty() {
                    e
                } else {
                    format!("{e}; then: {}", problems.join("; "))
                })
            }
        }
    }
}

/// One running (or partly running) pair of daemons with its own instance name and port.
pub struct Instance {
    pub name: String,
    port: u16,
    /// Scratch directory: logs, cwd of the daemons. Kept when a test fails.
    path: PathBuf,
    dir: Option<tempfile::TempDir>,
    cfg: Builder,
    proxy: Option<Child>,
    cached: Option<Child>,
    spawns: u32,
    /// [`Instance::stop`] ran: the drop has nothing left to do.
    stopped: bool,
}

impl Instance {
    /// Defaults: 8 segments of 64 KiB, 2 workers of 4 threads, cached with 8 threads.
    pub fn builder() -> Builder {
        Builder {
            root: None,
            origins: Vec::new(),
            config: None,
            segments: 8,
            segment_size: 64 * 1024,
            workers: 2,
            threads: Some(4),
            cached_threads: Some(8),
            proxy_extra: Vec::new(),
            cached_extra: Vec::new(),
            env: Vec::new(),
            name: None,
            dir: None,
            bin_dir: None,
            probe: ("/__e2e_ready".into(), None),
            scope: SCOPE.with(|s| s.get()),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn segment_size(&self) -> usize {
        self.cfg.segment_size
    }

    pub fn segments(&self) -> u32 {
        self.cfg.segments
    }

    /// The instance's scratch directory (logs; cwd of the daemons).
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// A new keep-alive connection to the proxy.
    pub fn conn(&self) -> Conn {
        Conn::connect(self.addr())
    }

    /// `GET target` on a fresh connection.
    pub fn get(&self, target: &str) -> Response {
        client::get(self.addr(), target)
    }

    fn proxy_args(&self) -> Vec<String> {
        let c = &self.cfg;
        let mut a = vec![
            "--instance".into(),
            self.name.clone(),
            "--listen".into(),
            self.addr().to_string(),
            "--workers".into(),
            c.workers.to_string(),
            "--segments".into(),
            c.segments.to_string(),
            "--segment-size".into(),
            c.segment_size.to_string(),
        ];
        if let Some(n) = c.threads {
            a.extend(["--threads".into(), n.to_string()]);
        }
        a.extend(c.proxy_extra.iter().cloned());
        a
    }

    fn cached_args(&self) -> Vec<String> {
        let c = &self.cfg;
        let mut a = vec!["--instance".into(), self.name.clone()];
        if let Some(n) = c.cached_threads {
            a.extend(["--threads".into(), n.to_string()]);
        }
        if let Some(text) = &c.config {
            let p = self
                .dir()
                .join(format!("cached-{:02}.toml", self.spawns + 1));
            fs::write(&p, text).expect("write cached's config file");
            a.extend(["--config".into(), p.display().to_string()]);
        }
        match (c.origins.is_empty(), &c.root) {
            (false, _) => {
                for o in &c.origins {
                    a.extend(["--origin".into(), o.clone()]);
                }
            }
            (true, Some(r)) => a.extend(["--root".into(), r.display().to_string()]),
            (true, None) if c.config.is_some() => {}
            (true, None) => panic!("Instance: give .root(dir), .origin(url) or .config_toml(text)"),
        }
        a.extend(c.cached_extra.iter().cloned());
        a
    }

    /// Replaces cached's config file text for its next start (e.g. a restart with fewer
    /// servers).
    pub fn set_config_toml(&mut self, text: &str) {
        self.cfg.config = Some(text.to_string());
    }

    fn spawn(&mut self, bin: &str, args: Vec<String>) -> Child {
        self.spawns += 1;
        let log = self.dir().join(format!("{:02}-{bin}.stderr", self.spawns));
        let err = fs::File::create(&log).expect("create log file");
        let exe = match &self.cfg.bin_dir {
            Some(d) => d.join(bin),
            None => bin_path(bin),
        };
        let mut cmd = Command::new(exe);
        cmd.args(&args)
            // Without `--config` a daemon would read /etc/shmproxy/shmproxy.toml: never in a
            // test (a test that wants a file passes `--config` or sets this itself).
            .env(CONFIG_ENV, "")
            .envs(self.cfg.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(err.try_clone().unwrap())
            .stderr(err);
        let child = spawn_child(cmd).unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        live()
            .lock()
            .unwrap()
            .push((self.cfg.scope, self.name.clone(), child.id() as i32));
        child
    }

    fn forget(pid: u32) {
        live().lock().unwrap().retain(|(_, _, p)| *p != pid as i32);
    }

    /// Starts `cached` without waiting for it.
    pub fn spawn_cached(&mut self) {
        assert!(self.cached.is_none(), "cached already running");
        let args = self.cached_args();
        self.cached = Some(self.spawn("cached", args));
    }

    /// Starts the proxy without waiting for it.
    pub fn spawn_proxy(&mut self) {
        assert!(self.proxy.is_none(), "proxy already running");
        let args = self.proxy_args();
        self.proxy = Some(self.spawn("proxy", args));
    }

    /// Starts the proxy and waits until it is ready (retrying on another port if the one picked
    /// was taken meanwhile).
    pub fn start_proxy(&mut self) {
        if let Err(msg) = self.try_start_proxy() {
            panic!("{msg}\n{}", self.logs());
        }
    }

    fn try_start_proxy(&mut self) -> Result<(), String> {
        for attempt in 0..3 {
            self.spawn_proxy();
            match self.try_wait_proxy_ready() {
                Ok(()) => return Ok(()),
                Err(_) if attempt < 2 && self.port_taken() => {
                    self.reap_proxy();
                    self.port = free_port();
                }
                Err(msg) => return Err(msg),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Whether the latest proxy has exited saying its port is in use.
    fn port_taken(&mut self) -> bool {
        let log = self.last_log("proxy");
        !self.proxy_alive() && (log.contains("in use") || log.contains("EADDRINUSE"))
    }

    /// Reaps an exited proxy and clears its slot.
    fn reap_proxy(&mut self) {
        if let Some(mut c) = self.proxy.take() {
            let _ = c.wait();
            Instance::forget(c.id());
        }
    }

    /// Starts a new proxy master on the same port (clients keep their address) after the old
    /// one was stopped or killed and reaped, and waits until requests reach cached again.
    /// Starts it again while its log says the port is still taken (a dying worker of the old
    /// master may hold it for a moment).
    pub fn try_restart_proxy(&mut self) -> Result<(), String> {
        for attempt in 1..=RESTART_ATTEMPTS {
            self.spawn_proxy();
            match self.try_wait_ready() {
                Ok(()) => return Ok(()),
                Err(_) if attempt < RESTART_ATTEMPTS && self.port_taken() => {
                    self.reap_proxy();
                    thread::sleep(RESTART_PAUSE);
                }
                Err(e) => return Err(format!("restarted proxy: {e}")),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Starts cached and waits until requests through the proxy reach it.
    pub fn start_cached(&mut self) {
        self.spawn_cached();
        self.wait_cached_ready();
    }

    /// Waits for the proxy's readiness: TCP connect works and `/__shmproxy/stats` answers 200.
    pub fn wait_proxy_ready(&mut self) {
        if let Err(msg) = self.try_wait_proxy_ready() {
            panic!("{msg}\n{}", self.logs());
        }
    }

    /// Waits until the proxy serves its stats and requests through it reach cached.
    pub fn try_wait_ready(&mut self) -> Result<(), String> {
        self.try_wait_proxy_ready()?;
        self.try_wait_cached_ready()
    }

    fn try_wait_proxy_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last;
        loop {
            let child = self.proxy.as_mut().expect("proxy not started");
            if let Ok(Some(st)) = child.try_wait() {
                Instance::forget(child.id());
                return Err(format!(
                    "proxy of {} exited during start-up: {}",
                    self.name,
                    describe_status(&st)
                ));
            }
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
                match client::raw(
                    self.addr(),
                    b"GET /__shmproxy/stats HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n",
                ) {
                    Ok(r) if r.status == 200 => {
                        // Another instance's proxy may have taken the port between
                        // `free_port` and our bind: only our own instance's stats count.
                        let v: serde_json::Value =
                            serde_json::from_slice(&r.body).unwrap_or_default();
                        match v["instance"].as_str() {
                            Some(n) if n == self.name => return Ok(()),
                            Some(n) => last = format!("the port answers for instance {n}"),
                            None => last = format!("stats without an instance: {}", r.text()),
                        }
                    }
                    Ok(r) => last = format!("stats answered {}", r.status),
                    Err(e) => last = format!("stats: {e}"),
                }
            } else {
                last = "connect refused".into();
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "proxy of {} not ready within {READY_TIMEOUT:?} (last: {last})",
                    self.name
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until a request through the proxy is answered by cached (anything but 503),
    /// checking that neither daemon has exited.
    pub fn wait_cached_ready(&mut self) {
        if let Err(msg) = self.try_wait_cached_ready() {
            panic!("{msg}\n{}", self.logs());
        }
    }

    fn try_wait_cached_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let (target, want) = self.cfg.probe.clone();
        let request = format!("GET {target} HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n");
        let mut last;
        loop {
            for (what, child) in [("cached", &mut self.cached), ("proxy", &mut self.proxy)] {
                let Some(c) = child.as_mut() else {
                    return Err(format!("{what} of {} is not running", self.name));
                };
                if let Ok(Some(st)) = c.try_wait() {
                    Instance::forget(c.id());
                    *child = None;
                    return Err(format!(
                        "{what} of {} exited while waiting for cached: {}",
                        self.name,
                        describe_status(&st),
                    ));
                }
            }
            match client::raw(self.addr(), request.as_bytes()) {
                Ok(r) if want.map_or(r.status != 503, |w| r.status == w) => return Ok(()),
                Ok(r) => last = format!("{target} answered {}", r.status),
                Err(e) => last = format!("{target}: {e}"),
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "cached of {} not reachable through the proxy within {READY_TIMEOUT:?} (last: {last})",
                    self.name,
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails if either daemon is not running (it exited on its own, say).
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.exited().into_iter().next() {
            Some((what, how)) => Err(format!("{what} exited early: {how}")),
            None => Ok(()),
        }
    }

    /// The daemons that are not running, with how they ended (a slot already cleared says
    /// "not running").
    pub fn exited(&mut self) -> Vec<(&'static str, String)> {
        let mut gone = Vec::new();
        for (what, slot) in [("proxy", &mut self.proxy), ("cached", &mut self.cached)] {
            match slot.as_mut().map(Child::try_wait) {
                None => gone.push((what, "not running".to_string())),
                Some(Ok(Some(st))) => gone.push((what, describe_status(&st))),
                Some(_) => {}
            }
        }
        gone
    }

    /// The proxy master's running workers, sorted.
    pub fn workers(&self) -> Vec<i32> {
        self.proxy_pid().map(children).unwrap_or_default()
    }

    pub fn proxy_pid(&self) -> Option<i32> {
        self.proxy.as_ref().map(|c| c.id() as i32)
    }

    pub fn cached_pid(&self) -> Option<i32> {
        self.cached.as_ref().map(|c| c.id() as i32)
    }

    /// Whether the proxy master is still running (reaps it if it exited).
    pub fn proxy_alive(&mut self) -> bool {
        Instance::alive(&mut self.proxy)
    }

    pub fn cached_alive(&mut self) -> bool {
        Instance::alive(&mut self.cached)
    }

    fn alive(slot: &mut Option<Child>) -> bool {
        match slot {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends `sig` to the proxy master.
    pub fn signal_proxy(&self, sig: i32) {
        let pid = self.proxy_pid().expect("proxy not running");
        assert!(send_signal(pid, sig), "kill({pid}, {sig}) failed");
    }

    pub fn signal_cached(&self, sig: i32) {
        let pid = self.cached_pid().expect("cached not running");
        assert!(send_signal(pid, sig), "kill({pid}, {sig}) failed");
    }

    /// Waits at most `limit` for the proxy master to exit; on exit the slot is cleared.
    pub fn wait_proxy_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        Instance::wait_slot(&mut self.proxy, limit)
    }

    pub fn wait_cached_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        Instance::wait_slot(&mut self.cached, limit)
    }

    fn wait_slot(slot: &mut Option<Child>, limit: Duration) -> Option<ExitStatus> {
        let child = slot.as_mut().expect("not running");
        let st = wait_timeout(child, limit)?;
        Instance::forget(child.id());
        *slot = None;
        Some(st)
    }

    /// SIGTERM to cached; asserts it exits with status 0 within 5 s.
    pub fn stop_cached(&mut self) {
        self.signal_cached(libc::SIGTERM);
        match self.wait_cached_exit(EXIT_BOUND) {
            Some(st) if st.success() => {}
            Some(st) => panic!(
                "cached exited with {} after SIGTERM\n{}",
                describe_status(&st),
                self.logs()
            ),
            None => panic!(
                "cached still running {EXIT_BOUND:?} after SIGTERM\n{}",
                self.logs()
            ),
        }
    }

    /// SIGTERM to the proxy master; asserts it (and its workers) exit with status 0 within 5 s.
    pub fn stop_proxy(&mut self) {
        let pid = self.proxy_pid().expect("proxy not running");
        let workers = descendants(pid);
        let t0 = Instant::now();
        self.signal_proxy(libc::SIGTERM);
        match self.wait_proxy_exit(EXIT_BOUND) {
            Some(st) if st.success() => {}
            Some(st) => panic!(
                "proxy exited with {} after SIGTERM\n{}",
                describe_status(&st),
                self.logs()
            ),
            None => panic!(
                "proxy still running {EXIT_BOUND:?} after SIGTERM\n{}",
                self.logs()
            ),
        }
        let left = EXIT_BOUND.saturating_sub(t0.elapsed());
        let survivors = wait_pids_gone(&workers, left);
        assert!(
            survivors.is_empty(),
            "proxy workers {survivors:?} outlived their master"
        );
    }

    /// SIGKILL to cached (no cleanup by the daemon), reaped.
    pub fn kill_cached(&mut self) {
        self.signal_cached(libc::SIGKILL);
        assert!(self.wait_cached_exit(EXIT_BOUND).is_some());
    }

    /// SIGKILL to the proxy master and its workers, reaped.
    pub fn kill_proxy(&mut self) {
        let pid = self.proxy_pid().expect("proxy not running");
        kill_tree(pid, libc::SIGKILL);
        assert!(self.wait_proxy_exit(EXIT_BOUND).is_some());
    }

    /// `kill -9` of the proxy master alone (its workers are left to notice), reaped; returns
    /// the workers it had just before.
    pub fn kill_proxy_master(&mut self) -> Result<Vec<i32>, String> {
        let workers = self.workers();
        Instance::kill_slot("proxy", &mut self.proxy)?;
        Ok(workers)
    }

    /// `kill -9` of cached, reaped; an error if it had already exited.
    pub fn try_kill_cached(&mut self) -> Result<(), String> {
        Instance::kill_slot("cached", &mut self.cached)
    }

    fn kill_slot(what: &str, slot: &mut Option<Child>) -> Result<(), String> {
        let child = slot
            .as_mut()
            .ok_or_else(|| format!("{what} is not running"))?;
        match child.try_wait() {
            Ok(None) => {
                // A child not reaped yet: its pid cannot name another process.
                child.kill().map_err(|e| format!("kill -9 {what}: {e}"))?;
                child.wait().map_err(|e| format!("reaping {what}: {e}"))?;
            }
            Ok(Some(st)) => {
                return Err(format!(
                    "{what} had already exited: {}",
                    describe_status(&st)
                ))
            }
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
        Instance::forget(child.id());
        *slot = None;
        Ok(())
    }

    /// `/__shmproxy/stats` as JSON.
    pub fn stats(&self) -> serde_json::Value {
        self.try_stats().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The counters as `proxy stats --json` reads them from shared memory (no connection to
    /// the proxy, so no request or open connection of its own shows in them), or why not.
    pub fn shm_stats(&self) -> Result<serde_json::Value, String> {
        let out = Command::new(bin_path("proxy"))
            .args(["stats", "--instance", &self.name, "--json"])
            .output()
            .map_err(|e| format!("proxy stats: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("proxy stats --json: {e}"))
    }

    /// `/__shmproxy/stats` as JSON, or why not.
    pub fn try_stats(&self) -> Result<serde_json::Value, String> {
        let r = client::raw(
            self.addr(),
            b"GET /__shmproxy/stats HTTP/1.1\r\nHost: e2e.test\r\nConnection: close\r\n\r\n",
        )
        .map_err(|e| format!("GET /__shmproxy/stats: {e}"))?;
        if r.status != 200 {
            return Err(format!("stats: {}", r.describe()));
        }
        serde_json::from_slice(&r.body)
            .map_err(|e| format!("stats is not JSON ({e}): {}", r.text()))
    }

    /// A counter of the cached region of the stats (`stats.cached.NAME`), if present.
    pub fn cached_counter(&self, name: &str) -> Option<u64> {
        self.stats()["cached"][name].as_u64()
    }

    /// The per-site table of the stats: `sites` at the top level or in the cached region.
    pub fn sites(&self) -> Vec<serde_json::Value> {
        let s = self.stats();
        s["sites"]
            .as_array()
            .or_else(|| s["cached"]["sites"].as_array())
            .cloned()
            .unwrap_or_else(|| panic!("stats: no `sites` array in {s}"))
    }

    /// The upstream servers of the stats: the flat `servers` array (each row naming its `site`),
    /// at the top level or in the cached region, else every `sites[].servers` row.
    pub fn servers(&self) -> Vec<serde_json::Value> {
        let s = self.stats();
        if let Some(v) = s["servers"]
            .as_array()
            .or_else(|| s["cached"]["servers"].as_array())
        {
            return v.clone();
        }
        let sites = s["sites"]
            .as_array()
            .or_else(|| s["cached"]["sites"].as_array())
            .unwrap_or_else(|| panic!("stats: neither `servers` nor `sites` in {s}"));
        sites
            .iter()
            .flat_map(|site| site["servers"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Everything cached wrote to stderr, over all its starts.
    pub fn cached_log(&self) -> String {
        self.log_files()
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with("-cached.stderr"))
            .filter_map(|p| fs::read_to_string(p).ok())
            .collect()
    }

    pub fn pool(&self) -> PoolStats {
        self.try_pool().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The pool figures of the stats, or why not.
    pub fn try_pool(&self) -> Result<PoolStats, String> {
        let s = self.try_stats()?;
        let p = &s["pool"];
        let f = |k: &str| {
            p[k].as_u64()
                .ok_or_else(|| format!("stats: pool.{k} missing in {s}"))
        };
        Ok(PoolStats {
            segments: f("segments")?,
            segment_size: f("segment_size")?,
            free: f("free")?,
            in_use: f("in_use")?,
            quarantined: f("quarantined")?,
        })
    }

    /// Reads the pool until `done` holds or `limit` has passed; returns the last figures
    /// (whether `done` holds for them is the caller's to check).
    pub fn settle_pool(
        &self,
        limit: Duration,
        done: impl Fn(&PoolStats) -> bool,
    ) -> Result<PoolStats, String> {
        let deadline = Instant::now() + limit;
        loop {
            let p = self.try_pool()?;
            if done(&p) || Instant::now() >= deadline {
                return Ok(p);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts the pool has the configured shape and, within 5 s of the last transfer, every
    /// segment is free again (contract: when idle, free == segments).
    #[track_caller]
    pub fn assert_pool_idle(&self) {
        let want = (self.cfg.segments as u64, self.cfg.segment_size as u64);
        let p = self
            .settle_pool(Duration::from_secs(5), |p| {
                (p.segments, p.segment_size) != want || (p.free == p.segments && p.in_use == 0)
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (p.segments, p.segment_size),
            want,
            "pool shape differs from the flags"
        );
        assert!(
            p.free == p.segments && p.in_use == 0,
            "pool not idle 5 s after the last transfer: {p:?}"
        );
    }

    /// /dev/shm entries of this instance.
    pub fn shm_objects(&self) -> Vec<String> {
        shm_objects(&self.name)
    }

    pub fn mq_exists(&self) -> bool {
        mq_exists(&self.name)
    }

    fn log_files(&self) -> Vec<PathBuf> {
        log_files(self.dir())
    }

    /// The stderr file of the latest spawn of `bin` ("proxy" or "cached").
    pub fn last_log_path(&self, bin: &str) -> Option<PathBuf> {
        self.log_files()
            .into_iter()
            .rfind(|p| p.to_string_lossy().ends_with(&format!("-{bin}.stderr")))
    }

    /// The stderr of the latest spawn of `bin` ("proxy" or "cached").
    pub fn last_log(&self, bin: &str) -> String {
        self.last_log_path(bin)
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// The tail of every daemon's stderr, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = format!("---- logs of instance {} ----\n", self.name);
        for p in self.log_files() {
            let text = fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(40);
            out.push_str(&format!(
                "== {} ({} lines) ==\n",
                p.file_name().unwrap().to_string_lossy(),
                lines.len()
            ));
            for l in &lines[from..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// The daemons' stderr files in an instance directory (`NN-proxy.stderr`, `NN-cached.stderr`,
/// one per spawn), in spawn order.
pub fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "stderr"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits until none of `pids` is alive; returns the survivors.
pub fn wait_pids_gone(pids: &[i32], limit: Duration) -> Vec<i32> {
    let deadline = Instant::now() + limit;
    loop {
        let alive: Vec<i32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

impl Instance {
    /// Stops both daemons as the drop does (SIGTERM, at most 5 s, then SIGKILL; the workers
    /// must follow; IPC leftovers reported and removed) and returns every breach of that
    /// contract instead of panicking. The logs stay where they are.
    pub fn stop(mut self) -> Vec<String> {
        self.stopped = true;
        self.teardown()
    }

    fn teardown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let workers = self.proxy_pid().map(descendants).unwrap_or_default();
        let t0 = Instant::now();
        for child in [&mut self.proxy, &mut self.cached].into_iter().flatten() {
            // Only a child not reaped yet may be signalled: a reaped pid may name another
            // process.
            if let Ok(None) = child.try_wait() {
                send_signal(child.id() as i32, libc::SIGTERM);
            }
        }
        for (what, slot) in [("proxy", &mut self.proxy), ("cached", &mut self.cached)] {
            let Some(child) = slot.as_mut() else { continue };
            let left = EXIT_BOUND.saturating_sub(t0.elapsed());
            match wait_timeout(child, left) {
                Some(st) if st.success() => {}
                Some(st) => problems.push(format!(
                    "{what} exited with {} after SIGTERM",
                    describe_status(&st)
                )),
                None => {
                    problems.push(format!(
                        "{what} still running {EXIT_BOUND:?} after SIGTERM: killed"
                    ));
                    kill_tree(child.id() as i32, libc::SIGKILL);
                    let _ = child.wait();
                }
            }
            Instance::forget(child.id());
            *slot = None;
        }
        let left = EXIT_BOUND.saturating_sub(t0.elapsed());
        let survivors = wait_pids_gone(&workers, left.max(Duration::from_millis(100)));
        if !survivors.is_empty() {
            problems.push(format!(
                "proxy workers {survivors:?} outlived their master: killed"
            ));
            for p in survivors {
                send_signal(p, libc::SIGKILL);
            }
        }
        let shm = self.shm_objects();
        if !shm.is_empty() {
            problems.push(format!("left behind in /dev/shm: {shm:?}"));
        }
        if self.mq_exists() {
            problems.push(format!("message queue /{}.req not unlinked", self.name));
        }
        remove_ipc_leftovers(&self.name);
        problems
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let problems = self.teardown();
        if thread::panicking() {
            // Keep the logs for diagnosis and show them next to the test's own failure.
            if let Some(d) = self.dir.take() {
                let _ = d.keep();
            }
            eprintln!(
                "{}\n(logs kept in {}; teardown: {problems:?})",
                self.logs(),
                self.path.display()
            );
        } else if !problems.is_empty() {
            if let Some(d) = self.dir.take() {
                let _ = d.keep();
            }
            panic!(
                "instance {} teardown: {}\n{}\n(logs kept in {})",
                self.name,
                problems.join("; "),
                self.logs(),
                self.path.display()
            );
        }
    }
}
