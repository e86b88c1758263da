//! The e2e harness: starts the real `proxy` and `cached` binaries as one isolated instance.
//!
//! Owns: unique instance names (`t{pid}-{n}`), free ports, the child processes (spawned from one
//! long-lived thread with `PR_SET_PDEATHSIG`, so they die with the test process), their stderr
//! (one file per spawn in the instance's temp dir, printed when a test fails), readiness polling
//! that watches the child, and the per-test watchdog ([`with_deadline`]).
//!
//! Dropping an [`Instance`] stops both daemons with SIGTERM, by pid, and (unless the test is
//! already panicking) asserts the contract: both exit with status 0 within 5 s, the proxy's
//! worker processes are gone too, nothing named `/dev/shm/<name>.*` remains and the request
//! queue `/<name>.req` is unlinked. Leftovers are removed after being reported.
//!
//! It never kills anything by name, only the pids it spawned (and their descendants).

// A shared harness: not every test file uses every helper.
#![allow(dead_code)]

use crate::client::{self, Conn, Response};
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
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
/// How long start-up may take before the harness gives up (generous: CI has 2 cores and runs
/// tests in parallel).
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

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
    // `getppid`, both async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            // SIGTERM, not SIGKILL: a daemon orphaned by a dying test process still gets the
            // chance to unlink its IPC objects.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() == 1 {
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
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is a positive pid we spawned.
    unsafe { libc::kill(pid, sig) == 0 }
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

/// Sends `sig` to `pid` and all its descendants (children first collected, then signalled).
fn kill_tree(pid: i32, sig: i32) {
    let kids = descendants(pid);
    send_signal(pid, sig);
    for k in kids {
        send_signal(k, sig);
    }
}

/// Waits for `child` to exit, at most `limit`.
fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
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

fn mq_name(name: &str) -> std::ffi::CString {
    std::ffi::CString::new(format!("/{name}.req")).unwrap()
}

/// Whether the POSIX message queue `/<name>.req` exists (it cannot be listed: /dev/mqueue is
/// not mounted, so it is probed by name).
pub fn mq_exists(name: &str) -> bool {
    let n = mq_name(name);
    // SAFETY: `n` is a valid NUL-terminated string that outlives the call; O_RDONLY without
    // O_CREAT takes no variadic arguments.
    let fd = unsafe { libc::mq_open(n.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) };
    if fd < 0 {
        return io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT);
    }
    // SAFETY: `fd` is the descriptor mq_open just returned, closed once.
    unsafe { libc::mq_close(fd) };
    true
}

/// Removes whatever IPC objects instance `name` left behind.
fn remove_ipc_leftovers(name: &str) {
    for f in shm_objects(name) {
        let _ = fs::remove_file(Path::new("/dev/shm").join(f));
    }
    let n = mq_name(name);
    // SAFETY: `n` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::mq_unlink(n.as_ptr()) };
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

impl ClosedPort {
    pub fn new() -> ClosedPort {
        use nix::sys::socket::{
            bind, getsockname, socket, AddressFamily, SockFlag, SockType, SockaddrIn,
        };
        use std::os::fd::AsRawFd;
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).expect("bind 127.0.0.1:0");
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
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid, writable rlimit for the duration of the call.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    if rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: `rl` is a valid rlimit; raising the soft limit up to the hard one is allowed.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) };
        // SAFETY: as above.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    }
    rl.rlim_cur
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

/// Polls `f` every 20 ms until it returns `Some`, or panics after `limit` with `what`.
#[track_caller]
pub fn poll_until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Instance
// ---------------------------------------------------------------------------------------------

/// The segment pool as `/__shmproxy/stats` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    threads: u32,
    cached_threads: u32,
    proxy_extra: Vec<String>,
    cached_extra: Vec<String>,
    /// Environment variables set for both daemons.
    env: Vec<(String, String)>,
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
        self.threads = n;
        self
    }

    /// `cached --threads`.
    pub fn cached_threads(mut self, n: u32) -> Builder {
        self.cached_threads = n;
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
        let name = format!(
            "t{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed) + 1
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("shmproxy-e2e-{name}-"))
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        Instance {
            name,
            port,
            path: dir.path().to_path_buf(),
            dir: Some(dir),
            cfg: self,
            proxy: None,
            cached: None,
            spawns: 0,
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
            threads: 4,
            cached_threads: 8,
            proxy_extra: Vec::new(),
            cached_extra: Vec::new(),
            env: Vec::new(),
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
            "--threads".into(),
            c.threads.to_string(),
            "--segments".into(),
            c.segments.to_string(),
            "--segment-size".into(),
            c.segment_size.to_string(),
        ];
        a.extend(c.proxy_extra.iter().cloned());
        a
    }

    fn cached_args(&self) -> Vec<String> {
        let c = &self.cfg;
        let mut a = vec![
            "--instance".into(),
            self.name.clone(),
            "--threads".into(),
            c.cached_threads.to_string(),
        ];
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
        let mut cmd = Command::new(bin_path(bin));
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
        for attempt in 0..3 {
            self.spawn_proxy();
            match self.try_wait_proxy_ready() {
                Ok(()) => return,
                Err(msg) => {
                    let log = self.last_log("proxy");
                    let in_use = log.contains("in use") || log.contains("EADDRINUSE");
                    if in_use && attempt < 2 {
                        self.proxy = None;
                        self.port = free_port();
                        continue;
                    }
                    panic!("{msg}\n{}", self.logs());
                }
            }
        }
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

    fn try_wait_proxy_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let own = format!("{{\"instance\":\"{}\"", self.name);
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
                    // Another instance's proxy may have taken the port between `free_port`
                    // and our bind: only our own instance's stats count as ready.
                    Ok(r) if r.status == 200 && r.text().contains(&own) => return Ok(()),
                    Ok(r) if r.status == 200 => {
                        last = "the port answers for another instance".into()
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
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last;
        loop {
            let mut exited = None;
            for (what, child) in [("cached", &mut self.cached), ("proxy", &mut self.proxy)] {
                let c = child
                    .as_mut()
                    .unwrap_or_else(|| panic!("{what} not started"));
                if let Ok(Some(st)) = c.try_wait() {
                    Instance::forget(c.id());
                    *child = None;
                    exited = Some((what, st));
                }
            }
            if let Some((what, st)) = exited {
                panic!(
                    "{what} of {} exited while waiting for cached: {}\n{}",
                    self.name,
                    describe_status(&st),
                    self.logs()
                );
            }
            match client::raw(
                self.addr(),
                b"GET /__e2e_ready HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n",
            ) {
                Ok(r) if r.status != 503 => return,
                Ok(r) => last = format!("answered {}", r.status),
                Err(e) => last = format!("{e}"),
            }
            if Instant::now() >= deadline {
                panic!(
                    "cached of {} not reachable through the proxy within {READY_TIMEOUT:?} (last: {last})\n{}",
                    self.name,
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
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

    /// `/__shmproxy/stats` as JSON.
    pub fn stats(&self) -> serde_json::Value {
        let r = self.get("/__shmproxy/stats");
        assert_eq!(r.status, 200, "stats: {}", r.describe());
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("stats is not JSON ({e}): {}", r.text()))
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
        let s = self.stats();
        let p = &s["pool"];
        let f = |k: &str| {
            p[k].as_u64()
                .unwrap_or_else(|| panic!("stats: pool.{k} missing in {s}"))
        };
        PoolStats {
            segments: f("segments"),
            segment_size: f("segment_size"),
            free: f("free"),
            in_use: f("in_use"),
            quarantined: f("quarantined"),
        }
    }

    /// Asserts the pool has the configured shape and, within 5 s of the last transfer, every
    /// segment is free again (contract: when idle, free == segments).
    #[track_caller]
    pub fn assert_pool_idle(&self) {
        let want = (self.cfg.segments as u64, self.cfg.segment_size as u64);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let p = self.pool();
            assert_eq!(
                (p.segments, p.segment_size),
                want,
                "pool shape differs from the flags"
            );
            if p.free == p.segments && p.in_use == 0 {
                return;
            }
            if Instant::now() >= deadline {
                panic!("pool not idle 5 s after the last transfer: {p:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// /dev/shm entries of this instance.
    pub fn shm_objects(&self) -> Vec<String> {
        shm_objects(&self.name)
    }

    pub fn mq_exists(&self) -> bool {
        mq_exists(&self.name)
    }

    fn log_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.dir())
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

    /// The stderr of the latest spawn of `bin` ("proxy" or "cached").
    pub fn last_log(&self, bin: &str) -> String {
        self.log_files()
            .into_iter()
            .rfind(|p| p.to_string_lossy().ends_with(&format!("-{bin}.stderr")))
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

/// Waits until none of `pids` is alive; returns the survivors.
fn wait_pids_gone(pids: &[i32], limit: Duration) -> Vec<i32> {
    let deadline = Instant::now() + limit;
    loop {
        let alive: Vec<i32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let mut problems = Vec::new();
        let workers = self.proxy_pid().map(descendants).unwrap_or_default();
        let t0 = Instant::now();
        for pid in [self.proxy_pid(), self.cached_pid()].into_iter().flatten() {
            send_signal(pid, libc::SIGTERM);
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
