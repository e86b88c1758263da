//! `stress --chaos`: `kill -9` under load, and proof that no client ever gets a wrong byte.
//!
//! One pool shape (by default 16 × 64 KiB), one `cached` + `proxy` pair, C clients (half on
//! keep-alive connections, half opening a fresh connection per request with
//! `Connection: close`) fetching files of 0 B to 4 MiB, the files straddling the segment size
//! and a missing file. Meanwhile the main thread repeatedly `kill -9`s a random victim and
//! restores what it killed before the next kill:
//!
//! - a proxy **worker** (a running child of the master, pinned by a pidfd before the signal):
//!   the master replaces it by itself; we wait until it has its full worker count again;
//! - **cached**: reaped, left down for a random moment (the proxy answers 503), then started
//!   again with the same instance name;
//! - the proxy **master**: reaped; its workers must exit on their own (`PR_SET_PDEATHSIG`) and
//!   are waited for, as they hold the listening port; then a new master is started with the
//!   same instance name and port, which replaces the stale shared-memory objects.
//!
//! With `--origin` the same files come from an origin server (`origin.rs`, `max-age=3600`)
//! instead of a document root, so `cached` stores them in the shared arena and the workers
//! answer their hits from there (kills of `cached` then leave the arena for its successor to
//! adopt); answers served from it are counted (`Cache-Status: …; detail=arena`).
//!
//! After each recovery the pair must serve a probe file again (200). A monitor thread lists
//! `/dev/shm` every few milliseconds: only `<instance>.arena`, `<instance>.pool`,
//! `<instance>.stats.proxy` and `<instance>.stats.cached` may ever exist there.
//!
//! Every response that claims to be complete — a 200 whose declared Content-Length (or chunked
//! framing) was received in full, or a 404 — is checked: 200 only for existing files with the
//! right length and SHA-256, 404 only for the missing file with the same body as before the
//! first kill. Anything else complete is a *mismatch*, and so is a malformed response (foreign
//! bytes where a head should be). A response cut short — a refused or closed connection, a
//! body shorter than its Content-Length, a timeout, a 502/503/504 or other 5xx — is *aborted*:
//! what a kill is allowed to cause. Other statuses are *unexpected* (a bug, not a kill).
//!
//! After the last kill: the load stops, every file is fetched once more (each must be right),
//! the pool must settle to all segments free with none in use or quarantined, with `--origin`
//! the arena must pass an audit from outside (rings, checksums, index and counters agree) with
//! no pin slot in use and no fill in progress, and after a
//! SIGTERM to both daemons (exit status 0 each, no surviving worker) nothing of the instance
//! may remain in `/dev/shm` or the mqueue namespace. Any mismatch, unexpected status, crash,
//! failed recovery or leak fails the run (exit 1).

use crate::files::{self, Doc, SplitMix64};
use crate::progress::Progress;
use crate::{human_size, pool_text, print_tail, Opts, Shape, WorkDir};
use sha2::{Digest, Sha256};
use shmproxy_tests::client::Client;
use shmproxy_tests::harness::{self, Instance, PoolStats};
use std::fmt;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// How long the master may take to replace a killed worker (its crash-loop backoff reaches
/// 5 s when workers keep dying within a second of their start).
const WORKER_REPLACE_BOUND: Duration = Duration::from_secs(15);
/// How long the workers of a killed master may take to exit (contract: promptly).
const ORPHAN_EXIT_BOUND: Duration = Duration::from_secs(10);
/// How often the monitor lists `/dev/shm`.
const SHM_POLL: Duration = Duration::from_millis(10);
/// A client pauses this long after an aborted request (a daemon is probably down).
const ABORT_PAUSE: Duration = Duration::from_millis(20);
/// Distinct failure messages kept for the report.
const MAX_MESSAGES: usize = 20;

/// Who gets `kill -9`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Victim {
    Worker,
    Cached,
    Master,
}

impl Victim {
    pub const ALL: [Victim; 3] = [Victim::Worker, Victim::Cached, Victim::Master];

    fn index(self) -> usize {
        self as usize
    }

    fn parse(s: &str) -> Result<Victim, String> {
        match s {
            "worker" | "workers" => Ok(Victim::Worker),
            "cached" => Ok(Victim::Cached),
            "master" | "proxy" => Ok(Victim::Master),
            _ => Err(format!("unknown victim {s:?} (use worker, cached, master)")),
        }
    }
}

impl fmt::Display for Victim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Victim::Worker => "worker",
            Victim::Cached => "cached",
            Victim::Master => "master",
        })
    }
}

/// `worker,cached,master` or with weights, `worker=2,cached=1,master=1`.
pub fn parse_victims(s: &str) -> Result<Vec<(Victim, u32)>, String> {
    let mut out: Vec<(Victim, u32)> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = match part.split_once('=') {
            Some((n, w)) => (
                n.trim(),
                w.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("bad weight in {part:?}"))?,
            ),
            None => (part, 1),
        };
        let victim = Victim::parse(name)?;
        if out.iter().any(|(v, _)| *v == victim) {
            return Err(format!("victim {victim} given twice"));
        }
        out.push((victim, weight));
    }
    if out.iter().all(|&(_, w)| w == 0) {
        return Err(format!("no victim to kill in {s:?}"));
    }
    Ok(out)
}

/// The chaos mode's defaults (`--chaos`, `--chaos --short`); options override them.
pub struct ChaosMode {
    pub shape: Shape,
    pub kills: u64,
    pub interval: Duration,
    pub clients: usize,
    pub settle: Duration,
    pub timeout: Duration,
    pub max_time: Option<Duration>,
}

const KIB: u64 = 1024;

/// The operators' run: ≥ 100 kills (about 2–3 minutes in release).
pub const LONG: ChaosMode = ChaosMode {
    shape: Shape {
        segments: 16,
        segment_size: 64 * KIB,
    },
    kills: 120,
    interval: Duration::from_millis(400),
    clients: 16,
    settle: Duration::from_secs(10),
    timeout: Duration::from_secs(20),
    max_time: None,
};

/// The test suite's run: 15 kills, well under a minute in a debug build.
pub const SHORT: ChaosMode = ChaosMode {
    shape: Shape {
        segments: 16,
        segment_size: 64 * KIB,
    },
    kills: 15,
    interval: Duration::from_millis(250),
    clients: 16,
    settle: Duration::from_secs(10),
    timeout: Duration::from_secs(20),
    max_time: Some(Duration::from_secs(100)),
};

/// What `--chaos` and its options decided.
#[derive(Debug)]
pub struct ChaosOpts {
    pub shape: Shape,
    pub kills: u64,
    /// Mean pause between a recovery and the next kill (jittered 0.5×..1.5×); `cached` also
    /// stays down for a random 0..interval.
    pub interval: Duration,
    pub victims: Vec<(Victim, u32)>,
    /// How long the pool may take to come back entirely free after the load.
    pub settle: Duration,
    /// `--origin`: the files come from an origin server, so hits are served from the arena.
    pub origin: bool,
}

// ---------------------------------------------------------------------------------------------
// Shared counters
// ---------------------------------------------------------------------------------------------

/// Why a request did not complete (what a kill may cause).
#[derive(Clone, Copy, Debug)]
enum Abort {
    Refused,
    Closed,
    TimedOut,
    Status(u16),
    Other,
}

/// What one response amounted to.
enum Verdict {
    /// Complete and right (body bytes).
    Good(u64),
    /// Complete-looking but wrong: the invariant broken.
    Mismatch(String),
    /// Cut short by a kill.
    Aborted(Abort, Option<String>),
    /// A complete answer with a status no kill explains.
    Unexpected(String),
}

/// Counters of the clients, the kills and the monitor, read by the progress line.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    completed: AtomicU64,
    bytes: AtomicU64,
    mismatches: AtomicU64,
    unexpected: AtomicU64,
    refused: AtomicU64,
    closed: AtomicU64,
    timed_out: AtomicU64,
    s502: AtomicU64,
    s503: AtomicU64,
    s504: AtomicU64,
    other_5xx: AtomicU64,
    other_abort: AtomicU64,
    kills: [AtomicU64; 3],
    shm_checks: AtomicU64,
    /// Right answers served from the arena (`Cache-Status: …; detail=arena`).
    arena_hits: AtomicU64,
    /// Distinct messages (mismatches first in importance, then the rest) and their counts.
    messages: Mutex<Vec<(String, u64)>>,
    /// `/dev/shm` names seen that are not the live instance's three objects.
    shm_violations: Mutex<Vec<String>>,
}

impl Tally {
    fn aborted(&self) -> u64 {
        [
            &self.refused,
            &self.closed,
            &self.timed_out,
            &self.s502,
            &self.s503,
            &self.s504,
            &self.other_5xx,
            &self.other_abort,
        ]
        .iter()
        .map(|c| c.load(Relaxed))
        .sum()
    }

    fn kills(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.kills[i].load(Relaxed))
    }

    fn total_kills(&self) -> u64 {
        self.kills().iter().sum()
    }

    /// Counts a verdict; whether the client should pause (a daemon is probably down).
    fn count(&self, verdict: Verdict) -> bool {
        match verdict {
            Verdict::Good(bytes) => {
                self.completed.fetch_add(1, Relaxed);
                self.bytes.fetch_add(bytes, Relaxed);
                false
            }
            Verdict::Mismatch(msg) => {
                self.completed.fetch_add(1, Relaxed);
                self.mismatches.fetch_add(1, Relaxed);
                self.note(format!("MISMATCH: {msg}"));
                false
            }
            Verdict::Unexpected(msg) => {
                self.unexpected.fetch_add(1, Relaxed);
                self.note(format!("unexpected: {msg}"));
                false
            }
            Verdict::Aborted(why, msg) => {
                let counter = match why {
                    Abort::Refused => &self.refused,
                    Abort::Closed => &self.closed,
                    Abort::TimedOut => &self.timed_out,
                    Abort::Status(502) => &self.s502,
                    Abort::Status(503) => &self.s503,
                    Abort::Status(504) => &self.s504,
                    Abort::Status(_) => &self.other_5xx,
                    Abort::Other => &self.other_abort,
                };
                counter.fetch_add(1, Relaxed);
                if let Some(msg) = msg {
                    self.note(format!("aborted: {msg}"));
                }
                true
            }
        }
    }

    fn note(&self, msg: String) {
        let Ok(mut messages) = self.messages.lock() else {
            return;
        };
        if let Some((_, n)) = messages.iter_mut().find(|(m, _)| *m == msg) {
            *n += 1;
        } else if messages.len() < MAX_MESSAGES {
            messages.push((msg, 1));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// What the clients fetch and how they judge it.
struct Load<'a> {
    addr: SocketAddr,
    docs: &'a [Doc],
    timeout: Duration,
    seed: u64,
    /// SHA-256 of the missing file's 404 body, learned before the first kill.
    not_found_sha: Option<[u8; 32]>,
}

/// One client until `stop`: even ids keep their connection alive, odd ids open a fresh one
/// per request.
fn client_loop(id: usize, load: &Load, tally: &Tally, stop: &AtomicBool) {
    let mut rng = SplitMix64(load.seed ^ (id as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut client = Client::new(load.addr, load.timeout);
    if id % 2 == 1 {
        client = client.closing();
    }
    let total_weight: u64 = load.docs.iter().map(|d| u64::from(d.weight)).sum();
    while !stop.load(Relaxed) {
        let ticket = tally.requests.fetch_add(1, Relaxed);
        let doc = crate::load::pick(load.docs, ticket, total_weight, &mut rng);
        if tally.count(fetch_once(
            &mut client,
            doc,
            load.not_found_sha,
            &tally.arena_hits,
        )) {
            thread::sleep(ABORT_PAUSE);
        }
    }
}

/// One GET of `doc`, judged.
/// One GET of `doc`, judged; a right answer a worker served from the arena (its
/// `Cache-Status` says `detail=arena`) is counted in `arena_hits`.
fn fetch_once(
    client: &mut Client,
    doc: &Doc,
    not_found_sha: Option<[u8; 32]>,
    arena_hits: &AtomicU64,
) -> Verdict {
    let mut hasher = Sha256::new();
    match client.get(&doc.url, &mut |chunk| hasher.update(chunk)) {
        Ok((head, len)) => {
            let v = judge(
                doc,
                head.status,
                len,
                hasher.finalize().into(),
                not_found_sha,
            );
            let from_arena = shmproxy_tests::client::header(&head.headers, "cache-status")
                .is_some_and(|c| c.contains("detail=arena"));
            if from_arena && matches!(v, Verdict::Good(_)) {
                arena_hits.fetch_add(1, Relaxed);
            }
            v
        }
        Err(e) => {
            let what = format!("GET {}: {e}", doc.url);
            match e.kind() {
                ErrorKind::ConnectionRefused => Verdict::Aborted(Abort::Refused, None),
                ErrorKind::UnexpectedEof
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::NotConnected => Verdict::Aborted(Abort::Closed, None),
                ErrorKind::TimedOut | ErrorKind::WouldBlock => {
                    Verdict::Aborted(Abort::TimedOut, Some(format!("{what} (timed out)")))
                }
                // A head that does not parse, a bad chunk: bytes that are not this answer.
                ErrorKind::InvalidData => Verdict::Mismatch(format!("malformed response: {what}")),
                _ => Verdict::Aborted(Abort::Other, Some(what)),
            }
        }
    }
}

/// Judges a complete response (head and the whole body its framing declared).
fn judge(
    doc: &Doc,
    status: u16,
    len: u64,
    sha: [u8; 32],
    not_found_sha: Option<[u8; 32]>,
) -> Verdict {
    match status {
        200 | 404 if status != doc.status => Verdict::Mismatch(format!(
            "GET {}: status {status}, expected {} ({len} bytes)",
            doc.url, doc.status
        )),
        404 if not_found_sha.is_some_and(|want| want != sha) => Verdict::Mismatch(format!(
            "GET {}: 404 body ({len} bytes) differs from the one before the chaos",
            doc.url
        )),
        404 => Verdict::Good(len),
        200 if len != doc.len => Verdict::Mismatch(format!(
            "GET {}: complete 200 of {len} bytes, expected {}",
            doc.url, doc.len
        )),
        200 if sha != doc.sha256 => Verdict::Mismatch(format!(
            "GET {}: SHA-256 differs (right length {len})",
            doc.url
        )),
        200 => Verdict::Good(len),
        500..=599 => Verdict::Aborted(Abort::Status(status), None),
        _ => Verdict::Unexpected(format!("GET {}: status {status}", doc.url)),
    }
}

// ---------------------------------------------------------------------------------------------
// The killer
// ---------------------------------------------------------------------------------------------

/// The pair under fire and how to restore it.
struct Chaos<'a> {
    daemons: Instance,
    opts: &'a ChaosOpts,
    workers: usize,
    rng: SplitMix64,
    /// Workers alive after the last recovery: any of them gone before the next kill died on
    /// its own.
    known_workers: Vec<i32>,
    /// Recovery time of every kill.
    recoveries: Vec<(Victim, Duration)>,
    problems: Vec<String>,
}

impl Chaos<'_> {
    /// Kills until `opts.kills` or the deadline; stops at the first failed recovery.
    fn run(&mut self, tally: &Tally, deadline: Option<Instant>) {
        let mut order = self.first_round();
        self.known_workers = self.daemons.workers();
        for n in 1..=self.opts.kills {
            let pause = self.jitter(self.opts.interval);
            if deadline.is_some_and(|d| Instant::now() + pause >= d) {
                self.problems.push(format!(
                    "--max-time is up after {} of {} kills",
                    n - 1,
                    self.opts.kills
                ));
                return;
            }
            thread::sleep(pause);
            if let Err(e) = self.check_health() {
                self.problems.push(format!("before kill #{n}: {e}"));
                return;
            }
            let victim = if order.is_empty() {
                self.draw()
            } else {
                order.remove(0)
            };
            let started = Instant::now();
            let result = match victim {
                Victim::Worker => self.kill_worker(n, tally),
                Victim::Cached => self.kill_cached(n, tally),
                Victim::Master => self.kill_master(n, tally),
            };
            if let Err(e) = result {
                self.problems.push(format!("kill #{n} ({victim}): {e}"));
                return;
            }
            self.recoveries.push((victim, started.elapsed()));
            self.known_workers = self.daemons.workers();
            if let Err(e) = self.check_pool_size() {
                self.problems
                    .push(format!("after kill #{n} ({victim}): {e}"));
                return;
            }
        }
    }

    /// Every victim kind with a weight, once each, in random order.
    fn first_round(&mut self) -> Vec<Victim> {
        let mut kinds: Vec<Victim> = self
            .opts
            .victims
            .iter()
            .filter(|&&(_, w)| w > 0)
            .map(|&(v, _)| v)
            .collect();
        for i in (1..kinds.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            kinds.swap(i, j);
        }
        kinds
    }

    /// A victim drawn by weight.
    fn draw(&mut self) -> Victim {
        let total: u64 = self.opts.victims.iter().map(|&(_, w)| u64::from(w)).sum();
        let mut r = self.rng.below(total);
        for &(victim, w) in &self.opts.victims {
            if r < u64::from(w) {
                return victim;
            }
            r -= u64::from(w);
        }
        self.opts.victims[0].0
    }

    /// `base` × a random factor in 0.5..1.5.
    fn jitter(&mut self, base: Duration) -> Duration {
        base.mul_f64(0.5 + self.rng.below(1000) as f64 / 1000.0)
    }

    /// Nothing died that we did not kill.
    fn check_health(&mut self) -> Result<(), String> {
        let exited = self.daemons.exited();
        if !exited.is_empty() {
            let what: Vec<String> = exited
                .iter()
                .map(|(name, how)| format!("{name} exited on its own ({how})"))
                .collect();
            return Err(what.join(", "));
        }
        let now = self.daemons.workers();
        let lost: Vec<i32> = self
            .known_workers
            .iter()
            .copied()
            .filter(|w| !now.contains(w))
            .collect();
        if !lost.is_empty() {
            return Err(format!(
                "proxy worker(s) {lost:?} died without being killed"
            ));
        }
        Ok(())
    }

    /// The pool still has its configured size (it never shrinks).
    fn check_pool_size(&self) -> Result<(), String> {
        let pool = self.daemons.try_pool()?;
        if pool.segments != self.opts.shape.segments {
            return Err(format!(
                "the pool has {} segments, expected {}",
                pool.segments, self.opts.shape.segments
            ));
        }
        Ok(())
    }

    fn kill_worker(&mut self, n: u64, tally: &Tally) -> Result<(), String> {
        let master = self
            .daemons
            .proxy_pid()
            .ok_or("the proxy master is not running")?;
        let workers = self.daemons.workers();
        if workers.is_empty() {
            return Err("the master has no worker to kill".into());
        }
        let pid = workers[self.rng.below(workers.len() as u64) as usize];
        if !harness::kill_child_of(master, pid)? {
            return Err(format!("worker {pid} vanished before its kill"));
        }
        tally.kills[Victim::Worker.index()].fetch_add(1, Relaxed);
        // The master reaps it, reclaims its segments and forks a replacement.
        let deadline = Instant::now() + WORKER_REPLACE_BOUND;
        loop {
            let now = self.daemons.workers();
            if now.len() >= self.workers && !now.contains(&pid) {
                break;
            }
            if let Some((name, how)) = self.daemons.exited().into_iter().next() {
                return Err(format!(
                    "{name} exited ({how}) after the kill of worker {pid}"
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "worker {pid} not replaced within {WORKER_REPLACE_BOUND:?} (workers now {now:?})"
                ));
            }
            thread::sleep(Duration::from_millis(5));
        }
        self.daemons
            .try_wait_ready()
            .map_err(|e| format!("after the kill of worker {pid} (kill #{n}): {e}"))
    }

    fn kill_cached(&mut self, n: u64, tally: &Tally) -> Result<(), String> {
        self.daemons.try_kill_cached()?;
        tally.kills[Victim::Cached.index()].fetch_add(1, Relaxed);
        // Stay down a moment (the subject: the proxy must answer 503 meanwhile, then
        // reconnect by itself).
        let down = self.jitter(self.opts.interval) / 2;
        thread::sleep(down);
        self.daemons.spawn_cached();
        self.daemons
            .try_wait_ready()
            .map_err(|e| format!("restarted cached (kill #{n}): {e}"))
    }

    fn kill_master(&mut self, n: u64, tally: &Tally) -> Result<(), String> {
        let workers = self.daemons.kill_proxy_master()?;
        tally.kills[Victim::Master.index()].fetch_add(1, Relaxed);
        // Its workers must follow it (PR_SET_PDEATHSIG); they hold the port until they go.
        let left = harness::wait_pids_gone(&workers, ORPHAN_EXIT_BOUND);
        if !left.is_empty() {
            return Err(format!(
                "workers {left:?} of the killed master still running {ORPHAN_EXIT_BOUND:?} later"
            ));
        }
        self.daemons
            .try_restart_proxy()
            .map_err(|e| format!("kill #{n}: {e}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Monitor and progress
// ---------------------------------------------------------------------------------------------

/// Lists `/dev/shm` every [`SHM_POLL`] (only the instance's four objects may exist) and
/// refreshes the progress line, until `stop`.
fn monitor(instance: &str, kills: u64, tally: &Tally, stop: &AtomicBool, start: Instant) {
    let allowed =
        [".arena", ".pool", ".stats.proxy", ".stats.cached"].map(|s| format!("{instance}{s}"));
    let every = Duration::from_millis(250);
    let mut progress = Progress::new(Some(kills), "kills");
    let mut next = Instant::now() + every;
    while !stop.load(Relaxed) {
        for name in harness::shm_objects(instance) {
            if !allowed.contains(&name) {
                if let Ok(mut v) = tally.shm_violations.lock() {
                    if !v.contains(&name) {
                        v.push(name);
                    }
                }
            }
        }
        tally.shm_checks.fetch_add(1, Relaxed);
        thread::sleep(SHM_POLL);
        if Instant::now() < next {
            continue;
        }
        next += every;
        let [w, c, m] = tally.kills();
        let detail = progress_detail(tally, start);
        let plain = || format!("chaos: {}/{kills} kills {detail}", w + c + m);
        progress.update("chaos:", w + c + m, detail.clone(), plain);
    }
    progress.finish();
}

fn progress_detail(tally: &Tally, start: Instant) -> String {
    let [w, c, m] = tally.kills();
    format!(
        "(worker {w}, cached {c}, master {m}), {} requests, {} completed, {} aborted, \
         {} mismatches, {:.0} s",
        tally.requests.load(Relaxed),
        tally.completed.load(Relaxed),
        tally.aborted(),
        tally.mismatches.load(Relaxed),
        start.elapsed().as_secs_f64()
    )
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// Everything checked after the kills.
#[derive(Default)]
struct After {
    final_pass: Option<usize>,
    pool: Option<PoolStats>,
    settled_in: Option<Duration>,
    /// `--origin`: what the arena audit found, and the arena hits of the run.
    arena: Option<String>,
    problems: Vec<String>,
}

/// Runs the chaos mode; `Ok(false)` if anything failed.
pub fn run(opts: &Opts, chaos: &ChaosOpts) -> Result<bool, String> {
    crate::check_bins(&opts.bin_dir)?;
    let work = WorkDir::create()?;
    let shape = chaos.shape;
    eprintln!(
        "stress: chaos: generating the document root in {}",
        work.root.display()
    );
    let docs = files::chaos_docs(&work.root, shape.segment_size)
        .map_err(|e| format!("writing files: {e}"))?;
    let probe = crate::probe_url(&docs);
    let instance = format!("chaos{}", std::process::id());
    let dir = work.logs.join(&instance);
    let started = Instant::now();
    let origin = match chaos.origin {
        true => Some(crate::origin::FileOrigin::start(&work.root)?),
        false => None,
    };
    let mut builder = crate::instance_builder(opts, &work, shape, &instance, &dir).probe(probe);
    if let Some(o) = &origin {
        builder = builder.origin(&o.url());
    }
    let daemons = match builder.try_start() {
        Ok(d) => d,
        Err(e) => {
            println!("chaos: FAILED to start the daemons: {e}");
            for log in crate::last_logs(&dir) {
                print_tail(&log);
            }
            work.finish(false, opts.keep);
            return Ok(false);
        }
    };
    let mut before = Vec::new();
    let not_found_sha = match learn_not_found(daemons.addr(), &docs, opts.timeout) {
        Ok(sha) => sha,
        Err(e) => {
            before.push(format!("before the chaos: {e}"));
            None
        }
    };
    let load = Load {
        addr: daemons.addr(),
        docs: &docs,
        timeout: opts.timeout,
        seed: opts.seed,
        not_found_sha,
    };
    let tally = Tally::default();
    let deadline = opts.max_time.map(|t| started + t);
    let mut killer = Chaos {
        daemons,
        opts: chaos,
        workers: opts.workers as usize,
        rng: SplitMix64(opts.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xc4a05),
        known_workers: Vec::new(),
        recoveries: Vec::new(),
        problems: before,
    };
    let stop_clients = AtomicBool::new(false);
    let stop_monitor = AtomicBool::new(false);
    let load_started = Instant::now();
    thread::scope(|s| {
        let monitor =
            s.spawn(|| monitor(&instance, chaos.kills, &tally, &stop_monitor, load_started));
        let clients: Vec<_> = (0..opts.clients)
            .map(|id| {
                let (load, tally, stop) = (&load, &tally, &stop_clients);
                s.spawn(move || client_loop(id, load, tally, stop))
            })
            .collect();
        // Kills and restarts happen on this thread (the harness forks every daemon from one
        // long-lived thread of its own, so their PR_SET_PDEATHSIG does not depend on this one).
        if killer.problems.is_empty() {
            killer.run(&tally, deadline);
        }
        stop_clients.store(true, Relaxed);
        for c in clients {
            c.join().expect("client thread panicked");
        }
        stop_monitor.store(true, Relaxed);
        monitor.join().expect("monitor thread panicked");
    });
    let load_time = load_started.elapsed();
    let Chaos {
        daemons,
        recoveries,
        problems,
        ..
    } = killer;
    let arena_hits = tally.arena_hits.load(Relaxed);
    let after = settle_and_stop(
        daemons,
        &docs,
        chaos,
        opts,
        (&instance, arena_hits),
        not_found_sha,
    );
    let report = Report {
        chaos,
        files: docs.len(),
        opts,
        tally: &tally,
        recoveries: &recoveries,
        problems: &problems,
        after: &after,
        load_time,
        total_time: started.elapsed(),
    };
    let ok = report.print();
    if !ok {
        for log in crate::last_logs(&dir) {
            print_tail(&log);
        }
    }
    work.finish(ok, opts.keep);
    Ok(ok)
}

/// The missing file's 404 body hash, before any kill (the reference for every later 404).
fn learn_not_found(
    addr: SocketAddr,
    docs: &[Doc],
    timeout: Duration,
) -> Result<Option<[u8; 32]>, String> {
    let Some(doc) = docs.iter().find(|d| d.status == 404) else {
        return Ok(None);
    };
    let mut client = Client::new(addr, timeout);
    let mut hasher = Sha256::new();
    let (head, _) = client
        .get(&doc.url, &mut |c| hasher.update(c))
        .map_err(|e| format!("GET {}: {e}", doc.url))?;
    if head.status != 404 {
        return Err(format!(
            "GET {}: status {}, expected 404",
            doc.url, head.status
        ));
    }
    Ok(Some(hasher.finalize().into()))
}

/// After the last kill: every file once more (each must be right), the pool entirely free
/// within the settle time, only the live instance's objects in `/dev/shm`, then SIGTERM and
/// nothing left.
fn settle_and_stop(
    mut daemons: Instance,
    docs: &[Doc],
    chaos: &ChaosOpts,
    opts: &Opts,
    (instance, arena_hits): (&str, u64),
    not_found_sha: Option<[u8; 32]>,
) -> After {
    let mut after = After::default();
    let exited = daemons.exited();
    for (name, how) in &exited {
        after
            .problems
            .push(format!("{name} is not running after the chaos ({how})"));
    }
    if exited.is_empty() {
        let mut client = Client::new(daemons.addr(), opts.timeout);
        let mut good = 0;
        for doc in docs {
            match fetch_once(&mut client, doc, not_found_sha, &AtomicU64::new(0)) {
                Verdict::Good(_) => good += 1,
                Verdict::Mismatch(m) => after.problems.push(format!("final pass: MISMATCH: {m}")),
                Verdict::Unexpected(m) => after.problems.push(format!("final pass: {m}")),
                Verdict::Aborted(why, m) => after.problems.push(format!(
                    "final pass: GET {} aborted ({why:?}{})",
                    doc.url,
                    m.map(|m| format!(": {m}")).unwrap_or_default()
                )),
            }
        }
        after.final_pass = Some(good);
        let start = Instant::now();
        let idle = |p: &PoolStats| p.free == p.segments && p.in_use == 0 && p.quarantined == 0;
        match daemons.settle_pool(chaos.settle, idle) {
            Ok(p) => {
                after.pool = Some(p);
                after.settled_in = idle(&p).then(|| start.elapsed());
            }
            Err(e) => after.problems.push(format!("pool stats: {e}")),
        }
        match after.pool {
            Some(p) if after.settled_in.is_none() => after.problems.push(format!(
                "the pool did not settle within {:?}: {}/{} free, {} in use, {} quarantined",
                chaos.settle, p.free, p.segments, p.in_use, p.quarantined
            )),
            Some(p) if p.segments != chaos.shape.segments => after.problems.push(format!(
                "the pool has {} segments, expected {}",
                p.segments, chaos.shape.segments
            )),
            _ => {}
        }
        if chaos.origin {
            check_arena(instance, arena_hits, &mut after);
        }
        let names = harness::shm_objects(instance);
        let expected: Vec<String> = [".arena", ".pool", ".stats.cached", ".stats.proxy"]
            .iter()
            .map(|s| format!("{instance}{s}"))
            .collect();
        if names != expected {
            after.problems.push(format!(
                "/dev/shm after the chaos holds {names:?}, expected exactly {expected:?}"
            ));
        }
    }
    after.problems.extend(daemons.stop());
    after
}

/// `--origin`: the arena, audited from outside once the load is over (rings, checksums, index
/// and counters agree), holds no pin and no fill in progress, and hits were served from it.
fn check_arena(instance: &str, hits: u64, after: &mut After) {
    if hits == 0 {
        after
            .problems
            .push("no hit was served from the arena".into());
    }
    let arena = match common::arena::Arena::open(&common::Names::for_instance(instance)) {
        Ok(a) => a,
        Err(e) => {
            after.problems.push(format!("arena: {e}"));
            return;
        }
    };
    // A publish of the final pass may still be under way: a few tries.
    let mut audit = arena.audit();
    for _ in 0..20 {
        if audit.as_ref().is_ok_and(|a| a.writing_bytes == 0) && arena.pins_held() == 0 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
        audit = arena.audit();
    }
    let pins = arena.pins_held();
    match audit {
        Ok(a) => {
            after.arena = Some(format!(
                "{} objects, {} live, {} garbage, {} being filled, {pins} pin slots in use; {hits} verified answers of the run served from it",
                a.live_objects,
                human_size(a.live_bytes),
                human_size(a.garbage_bytes),
                human_size(a.writing_bytes)
            ));
            if a.writing_bytes != 0 || pins != 0 {
                after.problems.push(format!(
                    "the arena is not idle after the load: {a:?}, {pins} pin slots in use"
                ));
            }
        }
        Err(e) => after.problems.push(format!("arena audit: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

struct Report<'a> {
    chaos: &'a ChaosOpts,
    /// Files in the mix (the missing one included).
    files: usize,
    opts: &'a Opts,
    tally: &'a Tally,
    recoveries: &'a [(Victim, Duration)],
    problems: &'a [String],
    after: &'a After,
    load_time: Duration,
    total_time: Duration,
}

impl Report<'_> {
    /// Prints the report and the summary line; whether the run passed.
    fn print(&self) -> bool {
        let t = self.tally;
        let [w, c, m] = t.kills();
        let kills = t.total_kills();
        let mismatches = t.mismatches.load(Relaxed);
        let unexpected = t.unexpected.load(Relaxed);
        let shm_violations = t
            .shm_violations
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        let pool_ok = self.after.settled_in.is_some()
            && self
                .after
                .pool
                .is_some_and(|p| p.segments == self.chaos.shape.segments);
        let ok = mismatches == 0
            && unexpected == 0
            && kills == self.chaos.kills
            && t.completed.load(Relaxed) > 0
            && self.problems.is_empty()
            && self.after.problems.is_empty()
            && shm_violations.is_empty()
            && pool_ok;
        let shape = self.chaos.shape;
        let keepalive = self.opts.clients.div_ceil(2);
        println!(
            "chaos: pool {} x {}, {} workers, {} clients ({keepalive} keep-alive, {} fresh \
             connections), {} files 0 B..4 MiB + a missing one: {}",
            shape.segments,
            human_size(shape.segment_size),
            self.opts.workers,
            self.opts.clients,
            self.opts.clients - keepalive,
            self.files - 1,
            if ok { "OK" } else { "FAILED" }
        );
        println!(
            "  kills {kills} of {}: worker {w}, cached {c}, master {m}; recovery {}",
            self.chaos.kills,
            self.recovery_text()
        );
        println!(
            "  requests {}: completed {} ({:.1} MiB verified), aborted {}, mismatches {mismatches}, \
             unexpected {unexpected}",
            t.requests.load(Relaxed),
            t.completed.load(Relaxed),
            t.bytes.load(Relaxed) as f64 / (1024.0 * 1024.0),
            t.aborted()
        );
        println!(
            "  aborted: refused {}, closed early {}, timed out {}, 503 {}, 502 {}, 504 {}, \
             other 5xx {}, other {}",
            t.refused.load(Relaxed),
            t.closed.load(Relaxed),
            t.timed_out.load(Relaxed),
            t.s503.load(Relaxed),
            t.s502.load(Relaxed),
            t.s504.load(Relaxed),
            t.other_5xx.load(Relaxed),
            t.other_abort.load(Relaxed)
        );
        println!(
            "  after: final pass {} files right; pool {}{}",
            self.after
                .final_pass
                .map_or("not run".into(), |n| format!("{n}/{}", self.files)),
            pool_text(self.after.pool),
            self.after.settled_in.map_or(String::new(), |d| format!(
                " (settled in {:.2} s)",
                d.as_secs_f64()
            ))
        );
        if let Some(a) = &self.after.arena {
            println!("  arena: {a}");
        }
        println!(
            "  /dev/shm: {} checks during the run, {}",
            t.shm_checks.load(Relaxed),
            if shm_violations.is_empty() {
                "only the live instance's objects".to_string()
            } else {
                format!("FOREIGN OBJECTS {shm_violations:?}")
            }
        );
        for (msg, n) in t.messages.lock().map(|v| v.clone()).unwrap_or_default() {
            match n {
                1 => println!("  ! {msg}"),
                n => println!("  ! {msg} ({n} times)"),
            }
        }
        for msg in self.problems.iter().chain(&self.after.problems) {
            println!("  ! {msg}");
        }
        let leaks = self
            .after
            .problems
            .iter()
            .filter(|p| p.starts_with("leaked"))
            .count();
        println!(
            "chaos summary: kills {kills} (worker {w}, cached {c}, master {m}), requests {}, \
             completed {}, aborted {}, mismatches {mismatches}, pool {}, leaks {leaks}, \
             {:.1} s (load {:.1} s): {}",
            t.requests.load(Relaxed),
            t.completed.load(Relaxed),
            t.aborted(),
            self.after.pool.map_or("unknown".into(), |p| format!(
                "{}/{} free (in use {}, quarantined {})",
                p.free, p.segments, p.in_use, p.quarantined
            )),
            self.total_time.as_secs_f64(),
            self.load_time.as_secs_f64(),
            if ok { "OK" } else { "FAILED" }
        );
        ok
    }

    /// p50 / max recovery time per kind.
    fn recovery_text(&self) -> String {
        let parts: Vec<String> = Victim::ALL
            .iter()
            .filter_map(|&v| {
                let mut d: Vec<Duration> = self
                    .recoveries
                    .iter()
                    .filter(|(k, _)| *k == v)
                    .map(|&(_, d)| d)
                    .collect();
                if d.is_empty() {
                    return None;
                }
                d.sort_unstable();
                Some(format!(
                    "{v} p50 {:.2} s max {:.2} s",
                    d[(d.len() - 1) / 2].as_secs_f64(),
                    d[d.len() - 1].as_secs_f64()
                ))
            })
            .collect();
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn victims_parse() {
        assert_eq!(
            parse_victims("worker,cached,master").unwrap(),
            vec![
                (Victim::Worker, 1),
                (Victim::Cached, 1),
                (Victim::Master, 1)
            ]
        );
        assert_eq!(
            parse_victims("worker=3, master=1").unwrap(),
            vec![(Victim::Worker, 3), (Victim::Master, 1)]
        );
        assert!(parse_victims("worker,worker").is_err());
        assert!(parse_victims("nobody").is_err());
        assert!(parse_victims("cached=0").is_err());
        assert!(parse_victims("worker=x").is_err());
    }

    fn doc(status: u16, body: &[u8]) -> Doc {
        Doc {
            url: "/x".into(),
            status,
            len: body.len() as u64,
            sha256: Sha256::digest(body).into(),
            weight: 1,
        }
    }

    #[test]
    fn complete_answers_are_judged_and_cut_ones_are_aborted() {
        let d = doc(200, b"hello");
        let sha = |b: &[u8]| -> [u8; 32] { Sha256::digest(b).into() };
        assert!(matches!(
            judge(&d, 200, 5, sha(b"hello"), None),
            Verdict::Good(5)
        ));
        assert!(matches!(
            judge(&d, 200, 5, sha(b"hellO"), None),
            Verdict::Mismatch(_)
        ));
        assert!(matches!(
            judge(&d, 200, 4, sha(b"hell"), None),
            Verdict::Mismatch(_)
        ));
        assert!(matches!(
            judge(&d, 404, 9, sha(b"not found"), None),
            Verdict::Mismatch(_)
        ));
        assert!(matches!(
            judge(&d, 503, 3, sha(b"503"), None),
            Verdict::Aborted(Abort::Status(503), _)
        ));
        assert!(matches!(
            judge(&d, 400, 0, sha(b""), None),
            Verdict::Unexpected(_)
        ));
        let missing = doc(404, b"");
        let page = sha(b"not here");
        assert!(matches!(
            judge(&missing, 404, 8, page, Some(page)),
            Verdict::Good(_)
        ));
        assert!(matches!(
            judge(&missing, 404, 8, sha(b"other!!!"), Some(page)),
            Verdict::Mismatch(_)
        ));
        assert!(matches!(
            judge(&missing, 200, 5, sha(b"hello"), None),
            Verdict::Mismatch(_)
        ));
    }
}
